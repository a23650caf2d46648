//! Metrics an Alertmanager can use, in Prometheus' text format
//! (`prometheus-client`), served on `/metrics` by `nhamd --metrics-listen`.
//!
//! Two kinds:
//! - from the daemon's events, as they happen ([`Metrics::observe`]):
//!   failures by cause and mechanism, recoveries and their failures,
//!   detection and recovery times, checkpoints, their pauses and sizes,
//!   non-determinism, frames VNFs' sockets dropped;
//! - read at each scrape ([`Metrics::refresh`]): every VNF's state and the
//!   age of its last checkpoint (the recovery point), each hop's held
//!   packets against what it may hold, each chain's data-path drops by
//!   reason, whether the daemon serves (`nham_up`).
//!
//! Names follow Prometheus' conventions: `nham_` first, `_total` on
//! counters, base units in the name (`_seconds`, `_bytes`). Causes are
//! kept to their kind ("process exited", "its host was judged down"), not
//! the host they name: a label's values stay few.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::service::events::{Event, VnfEvent};

/// A VNF.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VnfLabels {
    /// Its chain.
    pub chain: String,
    /// Its name.
    pub vnf: String,
}

/// A VNF and its mechanism.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MechanismLabels {
    /// Its chain.
    pub chain: String,
    /// Its name.
    pub vnf: String,
    /// Its mechanism (`none`, `0r`, `1r-as`, `1r-aa`, `mr-aa`).
    pub mechanism: String,
}

/// A failure of a VNF, by cause.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    /// Its chain.
    pub chain: String,
    /// Its name.
    pub vnf: String,
    /// Its mechanism.
    pub mechanism: String,
    /// The kind of cause.
    pub cause: String,
}

/// A VNF in a state.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabels {
    /// Its chain.
    pub chain: String,
    /// Its name.
    pub vnf: String,
    /// The state (`running`, `recovering`, `failed`, ...).
    pub state: String,
}

/// Frames a chain's data path dropped, by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// The chain.
    pub chain: String,
    /// Why.
    pub reason: String,
}

/// A chain.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ChainLabels {
    /// Its name.
    pub chain: String,
}

/// Build information (`nham_build_info`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// What one scrape reads of the daemon (see [`Metrics::refresh`]).
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Per chain: whether every VNF runs, its VNFs (name, state), held
    /// packets per hop and what each may hold, data-path drops by reason.
    pub chains: Vec<ChainSnapshot>,
    /// Whether the state database and every chain's SFF answer.
    pub serving: bool,
}

/// One chain, as a scrape reads it.
#[derive(Debug, Clone, Default)]
pub struct ChainSnapshot {
    /// Its name.
    pub name: String,
    /// Its VNFs.
    pub vnfs: Vec<VnfSnapshot>,
    /// Per hop (VNF name): packets held and the most it may hold.
    pub held: Vec<(String, u64, u64)>,
    /// Data-path drops by reason (counters since the SFF started).
    pub drops: Vec<(&'static str, u64)>,
}

/// One VNF, as a scrape reads it.
#[derive(Debug, Clone, Default)]
pub struct VnfSnapshot {
    /// Its name.
    pub name: String,
    /// Its mechanism (`none`, `0r`, ...).
    pub mechanism: String,
    /// Its state (one of [`STATES`]).
    pub state: String,
    /// Its checkpoint period, if it is checkpointed.
    pub checkpoint_interval: Option<Duration>,
}

/// The daemon's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    failures: Family<FailureLabels, Counter>,
    recoveries: Family<MechanismLabels, Counter>,
    recovery_failures: Family<MechanismLabels, Counter>,
    detection: Family<MechanismLabels, Histogram>,
    recovery: Family<MechanismLabels, Histogram>,
    checkpoints: Family<VnfLabels, Counter>,
    checkpoint_failures: Family<VnfLabels, Counter>,
    checkpoint_pause: Family<VnfLabels, Histogram>,
    checkpoint_size: Family<VnfLabels, Gauge>,
    checkpoint_age: Family<VnfLabels, FloatGauge>,
    checkpoint_interval: Family<VnfLabels, FloatGauge>,
    nondeterministic: Family<VnfLabels, Counter>,
    input_dropped: Family<VnfLabels, Counter>,
    vnf_state: Family<StateLabels, Gauge>,
    chain_running: Family<ChainLabels, Gauge>,
    held: Family<VnfLabels, Gauge>,
    hold_capacity: Family<VnfLabels, Gauge>,
    drops: Family<DropLabels, Gauge>,
    up: Gauge,
    /// When each VNF's last checkpoint was committed.
    last_checkpoint: Mutex<BTreeMap<(String, String), SystemTime>>,
    /// Each VNF's mechanism, as last read (events do not carry it).
    mechanisms: Mutex<BTreeMap<(String, String), String>>,
}

/// The states a VNF is shown in (one gauge each, 1 for its state).
pub const STATES: &[&str] = &["starting", "running", "failed", "recovering"];

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("nham");
        // 1 ms to about 33 s, doubling.
        let times = || Histogram::new(exponential_buckets(0.001, 2.0, 16));
        let failures = Family::default();
        registry.register(
            "vnf_failures",
            "Failures of VNFs (and MR-AA members), by cause",
            failures.clone(),
        );
        let recoveries = Family::default();
        registry.register(
            "vnf_recoveries",
            "Recoveries finished, the VNF running again",
            recoveries.clone(),
        );
        let recovery_failures = Family::default();
        registry.register(
            "vnf_recovery_failures",
            "Recoveries that failed (tried again later)",
            recovery_failures.clone(),
        );
        let detection = Family::<MechanismLabels, Histogram>::new_with_constructor(times);
        registry.register_with_unit(
            "failure_detection",
            "From a VNF's failure to its detection",
            Unit::Seconds,
            detection.clone(),
        );
        let recovery = Family::<MechanismLabels, Histogram>::new_with_constructor(times);
        registry.register_with_unit(
            "recovery",
            "From a failure's detection to the VNF running again",
            Unit::Seconds,
            recovery.clone(),
        );
        let checkpoints = Family::default();
        registry.register("checkpoints", "Checkpoints committed", checkpoints.clone());
        let checkpoint_failures = Family::default();
        registry.register(
            "checkpoint_failures",
            "Checkpoints that failed (nothing released on their account)",
            checkpoint_failures.clone(),
        );
        let checkpoint_pause = Family::<VnfLabels, Histogram>::new_with_constructor(times);
        registry.register_with_unit(
            "checkpoint_pause",
            "How long a checkpoint held a VNF's input back",
            Unit::Seconds,
            checkpoint_pause.clone(),
        );
        let checkpoint_size = Family::default();
        registry.register_with_unit(
            "checkpoint_size",
            "The size of a VNF's last committed checkpoint (its image)",
            Unit::Bytes,
            checkpoint_size.clone(),
        );
        let checkpoint_age = Family::default();
        registry.register_with_unit(
            "checkpoint_age",
            "Since a VNF's last committed checkpoint (its recovery point), at the scrape",
            Unit::Seconds,
            checkpoint_age.clone(),
        );
        let checkpoint_interval = Family::default();
        registry.register_with_unit(
            "checkpoint_interval",
            "A checkpointed VNF's checkpoint period",
            Unit::Seconds,
            checkpoint_interval.clone(),
        );
        let nondeterministic = Family::default();
        registry.register(
            "nondeterministic_outputs",
            "Replayed outputs that differed from the originals",
            nondeterministic.clone(),
        );
        let input_dropped = Family::default();
        registry.register(
            "vnf_input_dropped_frames",
            "Frames the kernel dropped at a VNF's full socket (each repaired by a recovery)",
            input_dropped.clone(),
        );
        let vnf_state = Family::default();
        registry.register(
            "vnf_state",
            "1 for the state each VNF is in, 0 for the others",
            vnf_state.clone(),
        );
        let chain_running = Family::default();
        registry.register(
            "chain_running",
            "1 when every VNF of the chain runs",
            chain_running.clone(),
        );
        let held = Family::default();
        registry.register(
            "hold_packets",
            "Packets a hop holds until a checkpoint of its VNF includes them",
            held.clone(),
        );
        let hold_capacity = Family::default();
        registry.register(
            "hold_capacity_packets",
            "The most packets a hop may hold",
            hold_capacity.clone(),
        );
        let drops = Family::default();
        registry.register(
            "datapath_dropped_frames",
            "Frames a chain's data path dropped, by reason, since its SFF started",
            drops.clone(),
        );
        let up = Gauge::default();
        registry.register(
            "up",
            "1 while the state database and every chain's SFF answer",
            up.clone(),
        );
        // (A gauge at 1, not an OpenMetrics info: Prometheus' text format,
        // which promtool checks, knows no info type.)
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_string(),
            })
            .set(1);
        registry.register("build_info", "The nhamd build (1)", build);
        Self {
            registry,
            failures,
            recoveries,
            recovery_failures,
            detection,
            recovery,
            checkpoints,
            checkpoint_failures,
            checkpoint_pause,
            checkpoint_size,
            checkpoint_age,
            checkpoint_interval,
            nondeterministic,
            input_dropped,
            vnf_state,
            chain_running,
            held,
            hold_capacity,
            drops,
            up,
            last_checkpoint: Mutex::default(),
            mechanisms: Mutex::default(),
        }
    }

    fn mechanism(&self, chain: &str, vnf: &str) -> String {
        (self
            .mechanisms
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
        .get(&(chain.to_string(), vnf.to_string()))
        .cloned()
        .unwrap_or_else(|| "unknown".into())
    }

    /// Takes in event `e`, whose VNF has mechanism `mechanism` (if known:
    /// else the one last read by [`Metrics::refresh`]).
    pub fn observe(&self, e: &VnfEvent, mechanism: Option<&str>) {
        let vnf = || VnfLabels {
            chain: e.chain.clone(),
            vnf: e.vnf.clone(),
        };
        let mechanism = mechanism.map_or_else(|| self.mechanism(&e.chain, &e.vnf), str::to_string);
        let with_mechanism = || MechanismLabels {
            chain: e.chain.clone(),
            vnf: e.vnf.clone(),
            mechanism: mechanism.clone(),
        };
        match &e.event {
            Event::FailureDetected {
                cause,
                detection_ms,
            } => {
                self.failures
                    .get_or_create(&FailureLabels {
                        chain: e.chain.clone(),
                        vnf: e.vnf.clone(),
                        mechanism: mechanism.clone(),
                        cause: cause_kind(cause),
                    })
                    .inc();
                self.detection
                    .get_or_create(&with_mechanism())
                    .observe(detection_ms / 1e3);
            }
            Event::RecoveryFinished { recovery_ms, .. } => {
                self.recoveries.get_or_create(&with_mechanism()).inc();
                self.recovery
                    .get_or_create(&with_mechanism())
                    .observe(recovery_ms / 1e3);
            }
            Event::RecoveryFailed { .. } => {
                self.recovery_failures
                    .get_or_create(&with_mechanism())
                    .inc();
            }
            Event::CheckpointTaken(c) => {
                self.checkpoints.get_or_create(&vnf()).inc();
                self.checkpoint_pause
                    .get_or_create(&vnf())
                    .observe(c.pause.as_secs_f64());
                self.checkpoint_size
                    .get_or_create(&vnf())
                    .set(i64::try_from(c.size).unwrap_or(i64::MAX));
                let at = SystemTime::UNIX_EPOCH + Duration::from_nanos(e.time_unix_nanos);
                (self
                    .last_checkpoint
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner))
                .insert((e.chain.clone(), e.vnf.clone()), at);
            }
            Event::CheckpointFailed { .. } => {
                self.checkpoint_failures.get_or_create(&vnf()).inc();
            }
            Event::NonDeterminismDetected { outputs, .. } => {
                self.nondeterministic.get_or_create(&vnf()).inc_by(*outputs);
            }
            Event::VnfInputDropped { frames, .. } => {
                self.input_dropped.get_or_create(&vnf()).inc_by(*frames);
            }
            Event::ChainDeleted => {
                (self
                    .last_checkpoint
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner))
                .retain(|(chain, _), _| *chain != e.chain);
            }
            Event::ChainCreated | Event::RecoveryStarted | Event::HostChanged { .. } => {}
        }
    }

    /// Sets what is read at a scrape from `s`, at `now`; the chains gone
    /// since the last scrape disappear from the gauges.
    pub fn refresh(&self, s: &Snapshot, now: SystemTime) {
        self.up.set(i64::from(s.serving));
        for family in [&self.held, &self.hold_capacity] {
            family.clear();
        }
        self.vnf_state.clear();
        self.chain_running.clear();
        self.drops.clear();
        self.checkpoint_age.clear();
        self.checkpoint_interval.clear();
        let last = self
            .last_checkpoint
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut mechanisms = BTreeMap::new();
        for c in &s.chains {
            let all_running = c.vnfs.iter().all(|v| v.state == "running");
            self.chain_running
                .get_or_create(&ChainLabels {
                    chain: c.name.clone(),
                })
                .set(i64::from(all_running));
            for v in &c.vnfs {
                let (vnf, state) = (&v.name, &v.state);
                let labels = VnfLabels {
                    chain: c.name.clone(),
                    vnf: vnf.clone(),
                };
                mechanisms.insert((c.name.clone(), vnf.clone()), v.mechanism.clone());
                if let Some(i) = v.checkpoint_interval {
                    self.checkpoint_interval
                        .get_or_create(&labels)
                        .set(i.as_secs_f64());
                }
                for s in STATES {
                    self.vnf_state
                        .get_or_create(&StateLabels {
                            chain: c.name.clone(),
                            vnf: vnf.clone(),
                            state: s.to_string(),
                        })
                        .set(i64::from(*s == state));
                }
                if let Some(at) = last.get(&(c.name.clone(), vnf.clone())) {
                    let age = now.duration_since(*at).unwrap_or_default();
                    self.checkpoint_age
                        .get_or_create(&labels)
                        .set(age.as_secs_f64());
                }
            }
            for (vnf, held, capacity) in &c.held {
                let l = VnfLabels {
                    chain: c.name.clone(),
                    vnf: vnf.clone(),
                };
                self.held
                    .get_or_create(&l)
                    .set(i64::try_from(*held).unwrap_or(i64::MAX));
                self.hold_capacity
                    .get_or_create(&l)
                    .set(i64::try_from(*capacity).unwrap_or(i64::MAX));
            }
            for (reason, n) in &c.drops {
                self.drops
                    .get_or_create(&DropLabels {
                        chain: c.name.clone(),
                        reason: reason.to_string(),
                    })
                    .set(i64::try_from(*n).unwrap_or(i64::MAX));
            }
        }
        *self
            .mechanisms
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = mechanisms;
    }

    /// Everything, in the OpenMetrics text format (what Prometheus asks
    /// for first).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // (Writing to a String does not fail.)
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Everything, in Prometheus' own text format (0.0.4: what `promtool
    /// check metrics` and older scrapers read).
    pub fn encode_prometheus(&self) -> String {
        to_prometheus_text(&self.encode())
    }
}

/// OpenMetrics text as Prometheus' text format 0.0.4: a counter family is
/// named as its samples are (`…_total`) in its `HELP` and `TYPE` lines, and
/// the lines 0.0.4 does not know (`# UNIT`, `# EOF`) go. (The only
/// differences for the types used here: counter, gauge, histogram.)
pub fn to_prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = (openmetrics.lines())
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// The kind of a failure's cause, without what it names: "process exited",
/// "its host was judged down (on host h0)" → "its host was judged down",
/// "member 2: process exited" → "process exited".
pub fn cause_kind(cause: &str) -> String {
    let cause = cause.split_once(": ").map_or(cause, |(_, rest)| rest);
    let cause = cause.split_once(" (").map_or(cause, |(kind, _)| kind);
    cause.trim().to_string()
}

/// Shared.
pub type SharedMetrics = Arc<Metrics>;

#[cfg(test)]
mod tests {
    use super::*;

    fn event(vnf: &str, event: Event) -> VnfEvent {
        VnfEvent {
            id: 0,
            time_unix_nanos: 1_000_000_000,
            chain: "web".into(),
            vnf: vnf.into(),
            event,
        }
    }

    #[test]
    fn events_and_scrapes_become_metrics_with_conventional_names() {
        let m = Metrics::new();
        m.refresh(
            &Snapshot {
                serving: true,
                chains: vec![ChainSnapshot {
                    name: "web".into(),
                    vnfs: vec![VnfSnapshot {
                        name: "fw".into(),
                        mechanism: "1r-aa".into(),
                        state: "running".into(),
                        checkpoint_interval: Some(Duration::from_millis(400)),
                    }],
                    held: vec![("fw".into(), 12, 8192)],
                    drops: vec![("malformed_ingress", 3)],
                }],
            },
            SystemTime::UNIX_EPOCH + Duration::from_secs(3),
        );
        m.observe(
            &event(
                "fw",
                Event::FailureDetected {
                    cause: "its host was judged down (on host h0)".into(),
                    detection_ms: 47.0,
                },
            ),
            None,
        );
        m.observe(
            &event(
                "fw",
                Event::NonDeterminismDetected {
                    outputs: 2,
                    total: 2,
                },
            ),
            None,
        );
        let text = m.encode();
        for want in [
            r#"nham_vnf_failures_total{chain="web",vnf="fw",mechanism="1r-aa",cause="its host was judged down"} 1"#,
            r#"nham_failure_detection_seconds_bucket{le="0.064",chain="web",vnf="fw",mechanism="1r-aa"} 1"#,
            r#"nham_hold_packets{chain="web",vnf="fw"} 12"#,
            r#"nham_hold_capacity_packets{chain="web",vnf="fw"} 8192"#,
            r#"nham_vnf_state{chain="web",vnf="fw",state="running"} 1"#,
            r#"nham_vnf_state{chain="web",vnf="fw",state="failed"} 0"#,
            r#"nham_datapath_dropped_frames{chain="web",reason="malformed_ingress"} 3"#,
            r#"nham_nondeterministic_outputs_total{chain="web",vnf="fw"} 2"#,
            r#"nham_up 1"#,
            r#"nham_checkpoint_interval_seconds{chain="web",vnf="fw"} 0.4"#,
            r#"nham_build_info{version=""#,
        ] {
            assert!(text.contains(want), "{want} not in\n{text}");
        }
        assert_eq!(cause_kind("member 2: process exited"), "process exited");
        let plain = m.encode_prometheus();
        assert!(
            plain.contains("# HELP nham_vnf_failures_total Failures"),
            "{plain}"
        );
        assert!(
            plain.contains("# TYPE nham_vnf_failures_total counter"),
            "{plain}"
        );
        assert!(plain.contains("# TYPE nham_up gauge"), "{plain}");
        assert!(
            !plain.contains("# EOF") && !plain.contains("# UNIT"),
            "{plain}"
        );
    }
}
