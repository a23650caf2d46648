//! What a chain's owner keeps in etcd about each of its chains (issue 14,
//! item 1): under `/nham/v1/chains/<chain>`, bound to the owner's lease
//! (gone with the owner, whose chains are lost with it for now), a
//! [`ChainView`]: who owns it and where its API is, and per VNF where it
//! runs, where its replica, standby or members are, and which hosts keep
//! its last committed checkpoint. Written as placement changes and
//! checkpoints commit, never waited on by the data path; read by any host
//! to tell a caller which `nhamd` owns a chain.

use serde::{Deserialize, Serialize};

/// Where the chain records are in etcd.
pub const CHAINS_PREFIX: &str = "/nham/v1/chains/";

/// A chain as its owner publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainView {
    /// The host that owns it (its SFF and every hop's buffers).
    pub owner: String,
    /// The owner's API, as it registered it.
    pub api: String,
    /// Its service path identifier.
    pub spi: u32,
    /// Its VNFs, in chain order.
    pub vnfs: Vec<VnfView>,
}

/// One VNF of a [`ChainView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnfView {
    /// Its name.
    pub name: String,
    /// Its mechanism (`0R`, `1R-AS`, `1R-AA`, `MR-AA`, or `none`).
    pub mechanism: String,
    /// The host it runs on.
    pub host: String,
    /// The host of its 1R-AA replica or its standby (1R-AS, 0R), if any.
    #[serde(default)]
    pub replica_host: Option<String>,
    /// MR-AA: the hosts of members 1 to M-1.
    #[serde(default)]
    pub member_hosts: Vec<String>,
    /// Its last committed checkpoint (its restore point), if any.
    #[serde(default)]
    pub committed: Option<u64>,
    /// The hosts that keep that checkpoint (the owner, and the host its
    /// copy went to).
    #[serde(default)]
    pub kept_on: Vec<String>,
}
