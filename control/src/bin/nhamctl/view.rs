//! What `nhamctl` prints: the API's answers as views with names (not enum
//! numbers), printed as a table for people or as JSON or YAML for scripts
//! (`-o`). The JSON and YAML keys are part of nhamctl's interface: fields
//! are only ever added.

use nham_control::api;
use serde::Serialize;

/// How answers are printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Output {
    /// Aligned columns, for people.
    #[default]
    Table,
    /// JSON (one document; `watch`: one object per line).
    Json,
    /// YAML.
    Yaml,
}

/// A chain.
#[derive(Debug, Serialize)]
pub(crate) struct ChainView {
    pub(crate) name: String,
    pub(crate) spi: u32,
    pub(crate) state: String,
    pub(crate) ingress: String,
    pub(crate) egress: String,
    pub(crate) vnfs: Vec<VnfView>,
}

/// A VNF of a chain.
#[derive(Debug, Serialize)]
pub(crate) struct VnfView {
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) mechanism: String,
    /// Empty: the host that answered.
    pub(crate) host: String,
    pub(crate) pid: u32,
    pub(crate) failures: u64,
    pub(crate) recoveries: u64,
    pub(crate) checkpoints: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub(crate) replica_host: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) member_pids: Vec<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) member_hosts: Vec<String>,
}

/// `MECHANISM_1R_AA` → `1r-aa`, as `create` and `set-mechanism` take it.
pub(crate) fn mechanism_name(m: i32) -> String {
    match api::Mechanism::try_from(m) {
        Ok(api::Mechanism::None) => "none",
        Ok(api::Mechanism::Mechanism0r) => "0r",
        Ok(api::Mechanism::Mechanism1rAs) => "1r-as",
        Ok(api::Mechanism::Mechanism1rAa) => "1r-aa",
        Ok(api::Mechanism::MrAa) => "mr-aa",
        _ => "unknown",
    }
    .to_string()
}

fn short(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

impl From<api::VnfStatus> for VnfView {
    fn from(v: api::VnfStatus) -> Self {
        Self {
            state: api::VnfState::try_from(v.state)
                .map_or("unknown".into(), |s| short(s.as_str_name(), "VNF_STATE_")),
            mechanism: mechanism_name(v.mechanism),
            name: v.name,
            host: v.host,
            pid: v.pid,
            failures: v.failures,
            recoveries: v.recoveries,
            checkpoints: v.checkpoints,
            replica_host: v.replica_host,
            member_pids: v.member_pids,
            member_hosts: v.member_hosts,
        }
    }
}

impl From<api::Chain> for ChainView {
    fn from(c: api::Chain) -> Self {
        let spec = c.spec.unwrap_or_default();
        Self {
            name: spec.name,
            spi: spec.spi,
            state: api::ChainState::try_from(c.state)
                .map_or("unknown".into(), |s| short(s.as_str_name(), "CHAIN_STATE_")),
            ingress: spec.ingress_interface,
            egress: spec.egress_interface,
            vnfs: c.vnfs.into_iter().map(VnfView::from).collect(),
        }
    }
}

/// A host of the cluster.
#[derive(Debug, Serialize)]
pub(crate) struct HostView {
    pub(crate) name: String,
    pub(crate) state: String,
    pub(crate) this_host: bool,
    pub(crate) last_heard_ms_ago: Option<f64>,
    pub(crate) api: String,
    pub(crate) heartbeat: String,
    pub(crate) vnfs: Vec<String>,
}

impl From<api::Host> for HostView {
    fn from(h: api::Host) -> Self {
        Self {
            state: api::HostState::try_from(h.state)
                .map_or("unknown".into(), |s| short(s.as_str_name(), "HOST_STATE_")),
            name: h.name,
            this_host: h.this_host,
            last_heard_ms_ago: h.last_heard_ms_ago,
            api: h.api,
            heartbeat: h.heartbeat,
            vnfs: h.vnfs,
        }
    }
}

/// Prints `value` as JSON or YAML; `false` for a table (the caller's).
pub(crate) fn print_doc<T: Serialize>(output: Output, value: &T) -> anyhow::Result<bool> {
    match output {
        Output::Json => println!("{}", serde_json::to_string_pretty(value)?),
        Output::Yaml => print!("{}", serde_norway::to_string(value)?),
        Output::Table => return Ok(false),
    }
    Ok(true)
}

/// Rows as aligned columns under `header`.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut l = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(cell);
            } else {
                l.push_str(&format!("{cell:<w$}  "));
            }
        }
        l.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push('\n');
        out.push_str(&line(row.clone()));
    }
    out
}

/// Chains as a table: one line per VNF, the chain's on its first.
pub(crate) fn chains_table(chains: &[ChainView]) -> String {
    let dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut rows = Vec::new();
    for c in chains {
        for (i, v) in c.vnfs.iter().enumerate() {
            let (name, spi, state) = if i == 0 {
                (c.name.clone(), c.spi.to_string(), c.state.clone())
            } else {
                (String::new(), String::new(), String::new())
            };
            rows.push(vec![
                name,
                spi,
                state,
                v.name.clone(),
                v.mechanism.clone(),
                v.state.clone(),
                dash(&v.host),
                v.pid.to_string(),
                v.failures.to_string(),
                v.recoveries.to_string(),
                v.checkpoints.to_string(),
                dash(&v.replica_host),
            ]);
        }
    }
    table(
        &[
            "CHAIN",
            "SPI",
            "STATE",
            "VNF",
            "MECHANISM",
            "VNF STATE",
            "HOST",
            "PID",
            "FAILURES",
            "RECOVERIES",
            "CHECKPOINTS",
            "REPLICA HOST",
        ],
        &rows,
    )
}

/// An event as one line for people: its time (UTC, ms), chain/VNF, kind
/// and what it says.
pub(crate) fn event_line(e: &api::WatchEventsResponse) -> String {
    use api::watch_events_response::Event;
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(e.time_unix_nanos as i64)
        .format("%Y-%m-%dT%H:%M:%S%.3fZ");
    let who = if e.vnf.is_empty() {
        e.chain.clone()
    } else {
        format!("{}/{}", e.chain, e.vnf)
    };
    let what = match &e.event {
        Some(Event::FailureDetected(f)) => {
            format!("failure detected: {} ({:.1} ms)", f.cause, f.detection_ms)
        }
        Some(Event::RecoveryStarted(_)) => "recovery started".into(),
        Some(Event::RecoveryFinished(r)) => format!(
            "recovered in {:.1} ms: checkpoint {}, {} replayed{}",
            r.recovery_ms,
            r.checkpoint_id,
            r.replayed,
            if r.fallback_reason.is_empty() {
                String::new()
            } else {
                format!(", fallback: {}", r.fallback_reason)
            }
        ),
        Some(Event::RecoveryFailed(r)) => format!("recovery failed: {}", r.reason),
        Some(Event::CheckpointTaken(c)) => format!(
            "checkpoint {}: {} bytes, paused {:.1} ms, {} released",
            c.checkpoint_id, c.size_bytes, c.pause_ms, c.released
        ),
        Some(Event::CheckpointFailed(c)) => format!("checkpoint failed: {}", c.reason),
        Some(Event::ChainCreated(_)) => "chain created".into(),
        Some(Event::ChainDeleted(_)) => "chain deleted".into(),
        Some(Event::NonDeterminismDetected(n)) => format!(
            "non-determinism: {} replayed outputs differed ({} in all)",
            n.outputs, n.total
        ),
        Some(Event::VnfInputDropped(d)) => format!(
            "its socket dropped {} frames (member {}); {} bytes in flight allowed now",
            d.frames, d.member, d.budget_bytes
        ),
        Some(Event::HostChanged(h)) => format!(
            "host {} is {}{}",
            h.host,
            api::HostState::try_from(h.state)
                .map_or("unknown".into(), |s| short(s.as_str_name(), "HOST_STATE_")),
            if h.left { " (left the cluster)" } else { "" }
        ),
        None => "(an event this nhamctl does not know)".into(),
    };
    format!("{time}  #{:<6} {who:<24}  {what}", e.id)
}

/// An event as one JSON line: `time` (RFC 3339), `time_unix_nanos`,
/// `chain`, `vnf`, and `event`: `{kind: {fields}}` as in `nham.v1`.
pub(crate) fn event_json(e: &api::WatchEventsResponse) -> anyhow::Result<String> {
    let time = chrono::DateTime::<chrono::Utc>::from_timestamp_nanos(e.time_unix_nanos as i64)
        .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    let mut v = serde_json::to_value(e)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("time".into(), serde_json::Value::String(time));
    }
    Ok(serde_json::to_string(&v)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_views_name_states() {
        let t = table(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(t, "A    BB\nxxx  y");
        let v = VnfView::from(api::VnfStatus {
            name: "fw".into(),
            state: api::VnfState::Recovering as i32,
            mechanism: api::Mechanism::Mechanism1rAa as i32,
            ..Default::default()
        });
        assert_eq!(
            (v.state.as_str(), v.mechanism.as_str()),
            ("recovering", "1r-aa")
        );
        let e = api::WatchEventsResponse {
            id: 7,
            time_unix_nanos: 1_700_000_000_123_000_000,
            chain: "web".into(),
            vnf: "fw".into(),
            event: Some(api::watch_events_response::Event::FailureDetected(
                api::FailureDetected {
                    cause: "process exited".into(),
                    detection_ms: 0.5,
                },
            )),
        };
        assert_eq!(
            event_line(&e),
            "2023-11-14T22:13:20.123Z  #7      web/fw                    failure detected: process exited (0.5 ms)"
        );
        let j: serde_json::Value = serde_json::from_str(&event_json(&e).unwrap()).unwrap();
        assert_eq!(j["event"]["failure_detected"]["cause"], "process exited");
        assert_eq!(j["time"], "2023-11-14T22:13:20.123000000Z");
    }
}
