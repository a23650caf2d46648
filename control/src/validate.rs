//! Checks requests and turns them into the daemon's own types. Every
//! refusal is a [`ControlError::InvalidArgument`] naming the field and why.

use std::collections::BTreeSet;

use ipnet::IpNet;
use nham_dataplane::classifier::Rule;

use crate::api;
use crate::error::ControlError;
pub use crate::plan::{name, replicas, ChainPlan, Fault, Mechanism, VnfPlan, DEFAULT_REPLICAS};

/// Most VNFs a chain may have.
pub const MAX_VNFS: usize = 8;

/// The mechanism an API value names (`None`: `MECHANISM_NONE`); the
/// refusal says why.
pub fn mechanism(m: i32) -> Result<Option<Mechanism>, String> {
    match api::Mechanism::try_from(m) {
        Ok(api::Mechanism::None) => Ok(None),
        Ok(api::Mechanism::Mechanism0r) => Ok(Some(Mechanism::NoReplica)),
        Ok(api::Mechanism::Mechanism1rAs) => Ok(Some(Mechanism::ActiveStandby)),
        Ok(api::Mechanism::Mechanism1rAa) => Ok(Some(Mechanism::ActiveActive)),
        Ok(api::Mechanism::MrAa) => Ok(Some(Mechanism::MultiActive)),
        Ok(api::Mechanism::Unspecified) => {
            Err("must be set (MECHANISM_NONE, _0R, _1R_AS, _1R_AA or _MR_AA)".into())
        }
        Err(_) => Err(format!("{m} is unknown")),
    }
}

/// The API's name for `m`.
pub fn api_mechanism(m: Option<Mechanism>) -> api::Mechanism {
    match m {
        None => api::Mechanism::None,
        Some(Mechanism::NoReplica) => api::Mechanism::Mechanism0r,
        Some(Mechanism::ActiveStandby) => api::Mechanism::Mechanism1rAs,
        Some(Mechanism::ActiveActive) => api::Mechanism::Mechanism1rAa,
        Some(Mechanism::MultiActive) => api::Mechanism::MrAa,
    }
}

/// A fault to inject, from the API's enum; `FAULT_UNSPECIFIED` is
/// refused.
pub fn fault(f: i32) -> Result<Fault, ControlError> {
    match api::Fault::try_from(f) {
        Ok(api::Fault::Crash) => Ok(Fault::Crash),
        Ok(api::Fault::Hang) => Ok(Fault::Hang),
        Ok(api::Fault::CutOff) => Ok(Fault::CutOff),
        _ => Err(invalid(
            "fault must be FAULT_CRASH, FAULT_HANG or FAULT_CUT_OFF",
        )),
    }
}

fn invalid(msg: impl Into<String>) -> ControlError {
    ControlError::InvalidArgument(msg.into())
}

fn interface(field: &str, value: &str) -> Result<(), ControlError> {
    if value.is_empty() || value.len() > 15 || value.contains(['/', ' ', '\0']) {
        return Err(invalid(format!(
            "{field} {value:?} is not a valid interface name (1 to 15 characters, no '/' or spaces)"
        )));
    }
    Ok(())
}

fn port_range(
    field: &str,
    min: u32,
    max: u32,
) -> Result<Option<std::ops::RangeInclusive<u16>>, ControlError> {
    if min == 0 && max == 0 {
        return Ok(None);
    }
    if max > 65535 || min > max {
        return Err(invalid(format!(
            "{field}: port range {min}..={max} is invalid (0 to 65535, min <= max; 0..0 = any)"
        )));
    }
    Ok(Some(min as u16..=max as u16))
}

fn prefix(field: &str, value: &str) -> Result<Option<IpNet>, ControlError> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse::<IpNet>()
        .or_else(|_| value.parse::<std::net::IpAddr>().map(IpNet::from))
        .map(Some)
        .map_err(|_| {
            invalid(format!(
                "{field} {value:?} is not an IP prefix (like 10.0.0.0/8)"
            ))
        })
}

/// VNF `i`'s host, as its spec names it (`None`: the owner's).
fn remote_host(i: usize, host: &str) -> Result<Option<String>, ControlError> {
    if host.is_empty() {
        return Ok(None);
    }
    name(&format!("spec.vnfs[{i}].host"), host)?;
    Ok(Some(host.to_string()))
}

/// Whether a VNF running as `identity` can be protected on this host:
/// CRIU checkpoints another user's process only with `CAP_SYS_RESOURCE`.
pub fn checkpointable(
    what: &str,
    identity: &crate::runtime::identity::Identity,
) -> Result<(), ControlError> {
    if !identity.checkpointable() {
        return Err(ControlError::FailedPrecondition(format!(
            "{what} keeps only the capabilities {:?}: a checkpoint of it needs {} too (CRIU's \
             code runs in the VNF and mounts a /proc of its PID namespace); add it, or leave \
             the VNF unprotected",
            identity.capabilities,
            crate::runtime::identity::CHECKPOINT_CAPABILITY
        )));
    }
    if identity.is_root() || crate::runtime::identity::can_checkpoint_other_users() {
        return Ok(());
    }
    Err(ControlError::FailedPrecondition(format!(
        "{what} runs as uid {:?} gid {:?}: CRIU can checkpoint another user's process only \
         with CAP_SYS_RESOURCE, which nhamd's root does not have on this host (a sandbox?); \
         run it as root with only the capabilities it needs, or unprotected",
        identity.uid, identity.gid
    )))
}

/// A VNF's limits, checked (`None` fields: no limit).
fn limits(
    i: usize,
    l: Option<&api::ResourceLimits>,
) -> Result<crate::runtime::cgroup::Limits, ControlError> {
    let Some(l) = l else {
        return Ok(Default::default());
    };
    if l.memory_max_bytes != 0 && l.memory_max_bytes < 1 << 20 {
        return Err(invalid(format!(
            "spec.vnfs[{i}].limits.memory_max_bytes {} must be 0 (none) or at least 1 MiB",
            l.memory_max_bytes
        )));
    }
    if l.cpu_max_millicpus != 0 && !(10..=64_000).contains(&l.cpu_max_millicpus) {
        return Err(invalid(format!(
            "spec.vnfs[{i}].limits.cpu_max_millicpus {} must be 0 (none) or 10 to 64000",
            l.cpu_max_millicpus
        )));
    }
    Ok(crate::runtime::cgroup::Limits {
        memory_max: (l.memory_max_bytes != 0).then_some(l.memory_max_bytes),
        cpu_max_millicpus: (l.cpu_max_millicpus != 0).then_some(l.cpu_max_millicpus),
        pids_max: (l.pids_max != 0).then_some(l.pids_max),
    })
}

/// Validates a chain specification.
pub fn chain(spec: Option<&api::ChainSpec>) -> Result<ChainPlan, ControlError> {
    let spec = spec.ok_or_else(|| invalid("spec is required"))?;
    name("spec.name", &spec.name)?;
    if spec.spi == 0 || spec.spi > 0x00FF_FFFF {
        return Err(invalid(format!(
            "spec.spi {} must be 1 to 16777215 (24 bits)",
            spec.spi
        )));
    }
    if spec.vnfs.is_empty() || spec.vnfs.len() > MAX_VNFS {
        return Err(invalid(format!(
            "spec.vnfs has {} entries; a chain has 1 to {MAX_VNFS} VNFs",
            spec.vnfs.len()
        )));
    }
    let mut seen = BTreeSet::new();
    let mut vnfs = Vec::new();
    for (i, v) in spec.vnfs.iter().enumerate() {
        name(&format!("spec.vnfs[{i}].name"), &v.name)?;
        if !seen.insert(v.name.clone()) {
            return Err(invalid(format!(
                "spec.vnfs[{i}].name {:?} is used twice",
                v.name
            )));
        }
        if v.command.is_empty() || v.command[0].is_empty() {
            return Err(invalid(format!("spec.vnfs[{i}].command is empty")));
        }
        let mechanism = mechanism(v.mechanism)
            .map_err(|why| invalid(format!("spec.vnfs[{i}].mechanism {why}")))?;
        replicas(mechanism, v.replicas).map_err(|why| invalid(format!("spec.vnfs[{i}].{why}")))?;
        if v.checkpoint_interval_ms != 0 && !(10..=3_600_000).contains(&v.checkpoint_interval_ms) {
            return Err(invalid(format!(
                "spec.vnfs[{i}].checkpoint_interval_ms {} must be 0 (daemon default) or 10 to 3600000",
                v.checkpoint_interval_ms
            )));
        }
        let identity =
            crate::runtime::identity::Identity::resolve(&v.user, &v.group, &v.capabilities)
                .map_err(|e| invalid(format!("spec.vnfs[{i}]: {e}")))?;
        let limits = limits(i, v.limits.as_ref())?;
        if !v.host.is_empty()
            && (!identity.is_root() || !limits.is_none() || !v.capabilities.is_empty())
        {
            return Err(invalid(format!(
                "spec.vnfs[{i}]: a VNF on another host runs as root with net_raw and sys_admin and \
                 no limits (user, group, capabilities and limits are for VNFs on the chain's own \
                 host, for now)"
            )));
        }
        if mechanism.is_some() {
            checkpointable(&format!("spec.vnfs[{i}]"), &identity)?;
        }
        vnfs.push(VnfPlan {
            name: v.name.clone(),
            command: v.command.clone(),
            env: v.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            mechanism,
            checkpoint_interval: (v.checkpoint_interval_ms != 0)
                .then(|| std::time::Duration::from_millis(v.checkpoint_interval_ms.into())),
            replicas: replicas(mechanism, v.replicas).unwrap_or(1),
            host: remote_host(i, &v.host)?,
            identity,
            limits,
        });
    }
    if spec.rules.is_empty() {
        return Err(invalid(
            "spec.rules is empty: at least one classifier rule selects the chain's traffic",
        ));
    }
    if spec.rules.len() > nham_ebpf::MAX_RULES {
        return Err(invalid(format!(
            "spec.rules has {} rules: the ingress's XDP filter holds at most {}",
            spec.rules.len(),
            nham_ebpf::MAX_RULES
        )));
    }
    let mut rules = Vec::new();
    for (i, r) in spec.rules.iter().enumerate() {
        if r.protocol > 255 {
            return Err(invalid(format!(
                "spec.rules[{i}].protocol {} is not an IP protocol number",
                r.protocol
            )));
        }
        rules.push(Rule {
            src: prefix(&format!("spec.rules[{i}].src_prefix"), &r.src_prefix)?,
            dst: prefix(&format!("spec.rules[{i}].dst_prefix"), &r.dst_prefix)?,
            proto: (r.protocol != 0).then_some(r.protocol as u8),
            src_ports: port_range(
                &format!("spec.rules[{i}] source ports"),
                r.src_port_min,
                r.src_port_max,
            )?,
            dst_ports: port_range(
                &format!("spec.rules[{i}] destination ports"),
                r.dst_port_min,
                r.dst_port_max,
            )?,
            spi: spec.spi,
        });
    }
    interface("spec.ingress_interface", &spec.ingress_interface)?;
    interface("spec.egress_interface", &spec.egress_interface)?;
    if spec.ingress_interface == spec.egress_interface {
        return Err(invalid(
            "spec.ingress_interface and spec.egress_interface must differ",
        ));
    }
    Ok(ChainPlan {
        name: spec.name.clone(),
        spi: spec.spi,
        vnfs,
        rules,
        ingress: spec.ingress_interface.clone(),
        egress: spec.egress_interface.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn more_rules_than_the_xdp_filter_holds_are_refused() {
        let mut spec = good();
        let rule = spec.rules.first().cloned().unwrap_or_default();
        spec.rules = vec![rule; nham_ebpf::MAX_RULES + 1];
        let e = format!("{:?}", chain(Some(&spec)).unwrap_err());
        assert!(e.contains("at most 64"), "{e}");
    }

    fn good() -> api::ChainSpec {
        api::ChainSpec {
            name: "web".into(),
            spi: 10,
            vnfs: vec![api::VnfSpec {
                name: "fw".into(),
                command: vec!["/bin/true".into()],
                mechanism: api::Mechanism::None as i32,
                ..Default::default()
            }],
            rules: vec![api::ClassifierRule {
                protocol: 17,
                ..Default::default()
            }],
            ingress_interface: "in0".into(),
            egress_interface: "out0".into(),
        }
    }

    fn reason(spec: api::ChainSpec) -> String {
        match chain(Some(&spec)) {
            Err(ControlError::InvalidArgument(r)) => r,
            other => panic!("expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_good_spec() {
        let plan = chain(Some(&good())).unwrap();
        assert_eq!(plan.rules[0].proto, Some(17));
        assert_eq!(plan.rules[0].spi, 10);
    }

    #[test]
    fn refusals_say_why() {
        assert!(
            matches!(chain(None), Err(ControlError::InvalidArgument(r)) if r.contains("spec is required"))
        );
        let mut s = good();
        s.name = "Bad Name".into();
        assert!(reason(s).contains("spec.name"));
        let mut s = good();
        s.spi = 1 << 24;
        assert!(reason(s).contains("24 bits"));
        let mut s = good();
        s.vnfs.clear();
        assert!(reason(s).contains("1 to 8 VNFs"));
        let mut s = good();
        s.vnfs.push(s.vnfs[0].clone());
        assert!(reason(s).contains("used twice"));
        let mut s = good();
        s.vnfs[0].command.clear();
        assert!(reason(s).contains("command is empty"));
        let mut s = good();
        s.vnfs[0].mechanism = 0;
        assert!(reason(s).contains("mechanism must be set"));
        let mut s = good();
        s.vnfs[0].mechanism = 99;
        assert!(reason(s).contains("unknown"));
        let mut s = good();
        s.rules[0].src_prefix = "10.0.0.0/33".into();
        assert!(reason(s).contains("src_prefix"));
        let mut s = good();
        s.rules[0].dst_port_min = 10;
        s.rules[0].dst_port_max = 5;
        assert!(reason(s).contains("destination ports"));
        let mut s = good();
        s.rules.clear();
        assert!(reason(s).contains("rules is empty"));
        let mut s = good();
        s.egress_interface = "in0".into();
        assert!(reason(s).contains("must differ"));
        let mut s = good();
        s.ingress_interface = "a-very-long-interface".into();
        assert!(reason(s).contains("ingress_interface"));
    }
}
