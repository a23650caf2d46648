//! The daemon's own types as `nham.v1` messages: the one place they are
//! encoded (the driver below speaks in its own words).

use super as api;
use crate::chain::{ChainStatus, VnfStatus};
use crate::fms::recovery::Phase;
use crate::plan::{ChainPlan, Mechanism};
use crate::service::events::{Event, VnfEvent};
use crate::service::ChainStats;

impl From<VnfEvent> for api::WatchEventsResponse {
    fn from(e: VnfEvent) -> Self {
        use api::watch_events_response::Event as E;
        let ms = |d: std::time::Duration| d.as_secs_f64() * 1e3;
        let event = match e.event {
            Event::ChainCreated => E::ChainCreated(api::ChainCreated {}),
            Event::ChainDeleted => E::ChainDeleted(api::ChainDeleted {}),
            Event::FailureDetected {
                cause,
                detection_ms,
            } => E::FailureDetected(api::FailureDetected {
                cause,
                detection_ms,
            }),
            Event::RecoveryStarted => E::RecoveryStarted(api::RecoveryStarted {}),
            Event::RecoveryFinished {
                stats,
                recovery_ms,
                running_unix_nanos,
            } => E::RecoveryFinished(api::RecoveryFinished {
                recovery_ms,
                running_unix_nanos,
                replayed: stats.replay,
                restored: stats.restored,
                checkpoint_id: stats.checkpoint.unwrap_or(0),
                fallback_reason: stats.fallback_reason.unwrap_or_default(),
                switched: stats.switched,
            }),
            Event::RecoveryFailed { reason } => E::RecoveryFailed(api::RecoveryFailed { reason }),
            Event::CheckpointTaken(c) => E::CheckpointTaken(api::CheckpointTaken {
                checkpoint_id: c.id,
                size_bytes: c.size,
                pause_ms: ms(c.pause),
                stored_bytes: c.stored,
                released: c.released,
                drain_ms: ms(c.drain),
                frozen_ms: ms(c.frozen),
                dump_ms: ms(c.dump),
                copy_ms: ms(c.copy),
            }),
            Event::CheckpointFailed { reason } => {
                E::CheckpointFailed(api::CheckpointFailed { reason })
            }
            Event::NonDeterminismDetected { outputs, total } => {
                E::NonDeterminismDetected(api::NonDeterminismDetected { outputs, total })
            }
            Event::VnfInputDropped {
                member,
                frames,
                budget_bytes,
            } => E::VnfInputDropped(api::VnfInputDropped {
                member,
                frames,
                budget_bytes,
            }),
            Event::HostChanged {
                host,
                liveness,
                left,
                detection_ms,
            } => E::HostChanged(api::HostChanged {
                host,
                state: if left {
                    api::HostState::Left
                } else {
                    host_state(liveness)
                } as i32,
                left,
                detection_ms,
            }),
        };
        Self {
            id: e.id,
            time_unix_nanos: e.time_unix_nanos,
            chain: e.chain,
            vnf: e.vnf,
            event: Some(event),
        }
    }
}

/// A VNF's phase as the API names it.
pub fn vnf_state(p: Phase) -> api::VnfState {
    match p {
        Phase::Starting => api::VnfState::Unspecified,
        Phase::Running => api::VnfState::Running,
        Phase::Failed => api::VnfState::Failed,
        Phase::Recovering => api::VnfState::Recovering,
    }
}

impl From<VnfStatus> for api::VnfStatus {
    fn from(v: VnfStatus) -> Self {
        Self {
            name: v.name,
            state: vnf_state(v.phase) as i32,
            pid: v.pid.unwrap_or(0),
            netns: v.netns,
            mechanism: crate::validate::api_mechanism(v.mechanism) as i32,
            failures: v.failures,
            recoveries: v.recoveries,
            checkpoints: v.checkpoints,
            member_pids: v.member_pids.iter().map(|p| p.unwrap_or(0)).collect(),
            host: v.host.unwrap_or_default(),
            replica_host: v.replica_host.unwrap_or_default(),
            member_hosts: v.member_hosts,
        }
    }
}

/// Chain `spec` (as it was given) with its status.
pub fn chain(spec: api::ChainSpec, c: ChainStatus) -> api::Chain {
    let state = if c.running {
        api::ChainState::Running
    } else {
        api::ChainState::Recovering
    };
    api::Chain {
        spec: Some(spec),
        state: state as i32,
        vnfs: c.vnfs.into_iter().map(api::VnfStatus::from).collect(),
    }
}

/// The spec of a chain as the daemon holds it: what it was created with,
/// validated and normalised (prefixes in CIDR form, MR-AA's default
/// member count filled in), with any mechanism changed since.
pub fn spec(plan: &ChainPlan) -> api::ChainSpec {
    let ports = |r: &Option<std::ops::RangeInclusive<u16>>| {
        r.as_ref()
            .map_or((0, 0), |r| (u32::from(*r.start()), u32::from(*r.end())))
    };
    let prefix = |p: &Option<ipnet::IpNet>| p.map(|p| p.to_string()).unwrap_or_default();
    api::ChainSpec {
        name: plan.name.clone(),
        spi: plan.spi,
        vnfs: (plan.vnfs.iter())
            .map(|v| api::VnfSpec {
                name: v.name.clone(),
                command: v.command.clone(),
                env: v.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
                mechanism: crate::validate::api_mechanism(v.mechanism) as i32,
                replicas: if v.mechanism == Some(Mechanism::MultiActive) {
                    v.replicas
                } else {
                    0
                },
                checkpoint_interval_ms: v
                    .checkpoint_interval
                    .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
                host: v.host.clone().unwrap_or_default(),
                // Resolved: numbers, as this host knows them.
                user: v.identity.uid.map(|u| u.to_string()).unwrap_or_default(),
                group: v.identity.gid.map(|g| g.to_string()).unwrap_or_default(),
                capabilities: v.identity.capabilities.clone(),
                limits: (!v.limits.is_none()).then(|| api::ResourceLimits {
                    memory_max_bytes: v.limits.memory_max.unwrap_or(0),
                    cpu_max_millicpus: v.limits.cpu_max_millicpus.unwrap_or(0),
                    pids_max: v.limits.pids_max.unwrap_or(0),
                }),
            })
            .collect(),
        rules: (plan.rules.iter())
            .map(|r| {
                let (src_port_min, src_port_max) = ports(&r.src_ports);
                let (dst_port_min, dst_port_max) = ports(&r.dst_ports);
                api::ClassifierRule {
                    src_prefix: prefix(&r.src),
                    dst_prefix: prefix(&r.dst),
                    protocol: r.proto.map_or(0, u32::from),
                    src_port_min,
                    src_port_max,
                    dst_port_min,
                    dst_port_max,
                }
            })
            .collect(),
        ingress_interface: plan.ingress.clone(),
        egress_interface: plan.egress.clone(),
    }
}

/// A chain's counters as `GetStats` answers them.
pub fn stats(c: ChainStats) -> api::GetStatsResponse {
    let s = c.sff;
    api::GetStatsResponse {
        ingress: s.ingress,
        classified: s.classified,
        classifier_miss: s.classifier_miss,
        delivered: s.delivered,
        egress: s.egress,
        duplicates_suppressed: s.duplicates,
        stale_discarded: s.stale,
        fenced: s.fenced,
        tx_kicks: s.tx_kicks,
        marks_in_transit: s.mark_in_transit,
        malformed: s.malformed_ingress + s.malformed_from_vnf + s.si_mismatch + s.ttl_expired,
        nondeterministic_outputs: s.divergent,
        ingress_overflow: s.ingress_kernel_drops,
        vnf_outputs_lost: s.vnf_output_kernel_drops + s.pool_exhausted,
        vnf_input_dropped: c.vnf_input_dropped,
    }
}

/// A host's liveness as `nham.v1` names it.
pub fn host_state(l: crate::cluster::membership::Liveness) -> api::HostState {
    use crate::cluster::membership::Liveness;
    match l {
        Liveness::Joining => api::HostState::Joining,
        Liveness::Alive => api::HostState::Alive,
        Liveness::Down { .. } => api::HostState::Down,
        Liveness::Leaving => api::HostState::Leaving,
    }
}

/// What `ListHosts` answers.
/// The hosts as `v` shows them, with where this daemon's chains run
/// (`placed`: host name to `chain/vnf`s).
pub fn hosts(
    v: crate::cluster::HostsView,
    mut placed: std::collections::BTreeMap<String, Vec<String>>,
) -> api::ListHostsResponse {
    api::ListHostsResponse {
        hosts: v
            .hosts
            .into_iter()
            .map(|h| api::Host {
                vnfs: placed.remove(&h.record.name).unwrap_or_default(),
                name: h.record.name,
                api: h.record.api,
                heartbeat: h.record.heartbeat.to_string(),
                state: host_state(h.liveness) as i32,
                last_heard_ms_ago: h.last_heard_ago.map(|d| d.as_secs_f64() * 1e3),
                this_host: h.this_host,
                incarnation: h.incarnation,
            })
            .collect(),
        etcd_reachable: v.etcd_error.is_none(),
        etcd_error: v.etcd_error.unwrap_or_default(),
    }
}

/// Checkpoint `m` of host `origin` as a header (what precedes its file
/// between hosts).
pub fn checkpoint_header(
    origin: &str,
    m: &crate::vsm::database::CheckpointMeta,
) -> api::CheckpointHeader {
    api::CheckpointHeader {
        origin: origin.to_string(),
        chain: m.chain.clone(),
        vnf: m.vnf.clone(),
        id: m.id,
        format: m.format,
        created_unix_ms: m.created_unix_ms,
        image_bytes: m.image_bytes,
        stored_bytes: m.stored_bytes,
        blake3: m.blake3.clone(),
    }
}

/// A checkpoint's index entry from its header (its file not named: the
/// receiver's store says where it goes).
pub fn checkpoint_meta(h: api::CheckpointHeader) -> crate::vsm::database::CheckpointMeta {
    crate::vsm::database::CheckpointMeta {
        format: h.format,
        chain: h.chain,
        vnf: h.vnf,
        id: h.id,
        created_unix_ms: h.created_unix_ms,
        image_bytes: h.image_bytes,
        stored_bytes: h.stored_bytes,
        blake3: h.blake3,
        file: String::new(),
    }
}
