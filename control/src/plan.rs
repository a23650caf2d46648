//! The daemon's own types for what a chain is to be: what
//! [`validate`](crate::validate) makes of a `ChainSpec`, and what every
//! layer below the API works with (no API type below the API).

use std::collections::BTreeMap;

use nham_dataplane::classifier::Rule;

use crate::error::ControlError;

/// How a protected VNF is brought back (a VNF not protected has none:
/// `MECHANISM_NONE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Mechanism {
    /// 0R: a new instance, restored from the store.
    NoReplica,
    /// 1R-AS: a standby prepared in advance imports the latest image.
    ActiveStandby,
    /// 1R-AA: an active replica, restored (and kept stopped) from every
    /// committed checkpoint in a namespace of its own behind the hop's
    /// standby port; failover is a switch of port, SIGCONT and the replay.
    ActiveActive,
    /// MR-AA: M members, all active, each in a namespace of its own behind
    /// a member port of the hop; the SFF feeds them the same input and
    /// passes on the first copy of each output. Member 0 is the one
    /// checkpointed. A failed member is restored from the restore point and
    /// catches up; the others serve meanwhile.
    MultiActive,
}

impl Mechanism {
    /// Its name in the paper's words.
    pub fn name(self) -> &'static str {
        match self {
            Self::NoReplica => "0R",
            Self::ActiveStandby => "1R-AS",
            Self::ActiveActive => "1R-AA",
            Self::MultiActive => "MR-AA",
        }
    }
}

/// A VNF's identity on this daemon: its chain's name and its own, unique
/// in the chain (the names the API, the events, the state database and
/// the logs use). Shown as `chain/vnf`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VnfId {
    /// The chain's name.
    pub chain: String,
    /// The VNF's name in it.
    pub vnf: String,
}

impl VnfId {
    /// VNF `vnf` of chain `chain`.
    pub fn new(chain: &str, vnf: &str) -> Self {
        Self {
            chain: chain.to_string(),
            vnf: vnf.to_string(),
        }
    }
}

impl std::fmt::Display for VnfId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.chain, self.vnf)
    }
}

/// A validated VNF.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VnfPlan {
    /// Name, unique in the chain.
    pub name: String,
    /// argv, placeholders not yet replaced.
    pub command: Vec<String>,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
    /// Resilience mechanism (`None`: not protected, `MECHANISM_NONE`).
    pub mechanism: Option<Mechanism>,
    /// Checkpoint period (`None`: the daemon's default).
    pub checkpoint_interval: Option<std::time::Duration>,
    /// MR-AA: members (M, 2 to 8; 3 when not given). 1 otherwise.
    pub replicas: u32,
    /// The cluster host it runs on (`None`: the chain's owner, this host).
    #[serde(default)]
    pub host: Option<String>,
    /// Who it runs as and its only capabilities (a record of an older
    /// nhamd: root, with the default net_raw and sys_admin).
    #[serde(default)]
    pub identity: crate::runtime::identity::Identity,
    /// Its cgroup's limits.
    #[serde(default)]
    pub limits: crate::runtime::cgroup::Limits,
}

/// MR-AA members when the spec does not say.
pub const DEFAULT_REPLICAS: u32 = 3;

/// A validated chain. What the daemon keeps of a chain's spec, and what
/// its state database records for a restarted daemon (as JSON).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainPlan {
    /// Name.
    pub name: String,
    /// SPI.
    pub spi: u32,
    /// VNFs in order.
    pub vnfs: Vec<VnfPlan>,
    /// Classifier rules, all for this SPI.
    pub rules: Vec<Rule>,
    /// Ingress interface.
    pub ingress: String,
    /// Egress interface.
    pub egress: String,
}

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// SIGKILL.
    Crash,
    /// SIGSTOP.
    Hang,
    /// The VNF's link set down.
    CutOff,
}

/// MR-AA members (member 0 included) for `replicas` as asked (0: the
/// default); 1 for any other mechanism.
pub fn replicas(m: Option<Mechanism>, replicas: u32) -> Result<u32, String> {
    match (m, replicas) {
        (Some(Mechanism::MultiActive), 0) => Ok(DEFAULT_REPLICAS),
        (Some(Mechanism::MultiActive), r) if (2..=8).contains(&r) => Ok(r),
        (Some(Mechanism::MultiActive), r) => Err(format!("replicas {r} must be 2 to 8")),
        _ => Ok(1),
    }
}

/// Checks a chain or VNF name: 1 to 32 of `[a-z0-9-]`, not starting or
/// ending with `-`.
pub fn name(field: &str, value: &str) -> Result<(), ControlError> {
    let ok_chars = value
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if value.is_empty()
        || value.len() > 32
        || !ok_chars
        || value.starts_with('-')
        || value.ends_with('-')
    {
        return Err(ControlError::InvalidArgument(format!(
            "{field} {value:?} is not a valid name: use 1 to 32 characters a-z, 0-9 and '-', not at either end"
        )));
    }
    Ok(())
}
