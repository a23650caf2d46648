//! A running chain as the daemon keeps it: its VNFs (places, processes,
//! Failure Recovery, State Synchronizer agent), its SFF, and the record a
//! restarted daemon re-attaches to.
//!
//! Built from the ground floor ([`crate::runtime`]: namespaces, links,
//! processes, the SFF process). Every VNF process is watched through a
//! pidfd: its exit is seen the moment it happens. A protected VNF has a
//! [`ProtectedVnf`] agent (its State Synchronizer and Replica Manager).
//! What runs for a chain (SFF pid and socket, namespaces, VNF pids) is
//! written to the state database as a [`ChainRecord`]; a restarted daemon
//! [re-attaches](ChainRuntime::reattach) to it.
//!
//! Invariant: dropping a [`ChainRuntime`] stops the SFF, kills and reaps
//! every VNF process and deletes every namespace (and so every veth) it made
//! — unless it was [detached](ChainRuntime::detach), in which case all of
//! them keep running for the next daemon.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nham_netns::{unique_name, Netns};
use nham_sff::remote::SffClient;
use nham_sff::PhaseStatus;
use serde::{Deserialize, Serialize};

use crate::error::ControlError;
use crate::fms::recovery::{Counters, FailureRecovery, Phase};
use crate::fms::replica_manager::ProtectedVnf;
use crate::plan::Mechanism;
use crate::plan::{ChainPlan, VnfPlan};
use crate::runtime::cgroup::Cgroup;
use crate::runtime::{
    make_link, make_place, port_spec, process, sff_config, spawn_sff, vnf_argv, ChainPorts, Place,
    SffOptions, SffProcess, Spawn, VNF_IFACE,
};
use crate::vsm::checkpointer::StoreSlot;
use crate::vsm::database::Store;

mod reattach;
pub mod remote;

pub use remote::RemoteVnf;

/// A protected VNF's agent, shared by its checkpoint schedule and recovery.
pub type Agent = Arc<Mutex<ProtectedVnf>>;

/// A VNF as the daemon reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct VnfStatus {
    /// Its name.
    pub name: String,
    /// Its process's phase.
    pub phase: Phase,
    /// Its process, while it runs.
    pub pid: Option<u32>,
    /// Its namespace's name.
    pub netns: String,
    /// How it is protected (none: not).
    pub mechanism: Option<Mechanism>,
    /// Failures of its process and its MR-AA members.
    pub failures: u64,
    /// Their recoveries.
    pub recoveries: u64,
    /// Checkpoints taken.
    pub checkpoints: u64,
    /// MR-AA members 1 to M-1's processes.
    pub member_pids: Vec<Option<u32>>,
    /// The host it runs on (`None`: this one).
    pub host: Option<String>,
    /// On another host: the host of its 1R-AA replica or 1R-AS standby.
    pub replica_host: Option<String>,
    /// MR-AA on other hosts: the hosts of members 1 to M-1 (empty: they
    /// run on this one).
    pub member_hosts: Vec<String>,
}

/// A chain as the daemon reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ChainStatus {
    /// Every VNF runs (none failed or recovering).
    pub running: bool,
    /// Its VNFs, in order.
    pub vnfs: Vec<VnfStatus>,
}

/// One VNF's runtime.
#[derive(Debug)]
pub struct VnfRuntime {
    /// Its plan.
    pub plan: VnfPlan,
    /// Its namespace (`None`: it runs on another host, see `remote`).
    pub netns: Option<Netns>,
    /// Where it runs when on another host of the cluster.
    pub remote: Option<RemoteVnf>,
    /// The incarnation before, on another host: its tunnel end is the
    /// hop's standby port until the next placement replaces it.
    pub remote_previous: Option<RemoteVnf>,
    /// Where its agent reaches it on another host (its current
    /// incarnation).
    pub remote_target: Option<Arc<remote::RemoteTarget>>,
    /// 1R-AA on another host: its replica, a stopped copy restored from
    /// each committed checkpoint on a host other than its own, behind the
    /// hop's standby port (`None` until the first checkpoint, and after a
    /// failover until the next). 1R-AS there: its standby, the place of its
    /// next incarnation on such a host with the checkpoint staged, nothing
    /// run (pid 0) until it fails.
    pub remote_replica: Option<(RemoteVnf, nham_dataplane::hold::CheckpointId)>,
    /// The process, while it runs (started by us or restored as our child).
    pub process: Option<process::Process>,
    /// Its command line, placeholders replaced, as it is started.
    pub argv: Vec<String>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// Its working directory, its own: CRIU's parasite makes a scratch
    /// directory (`proc.crtools`) in the working directory of a process it
    /// dumps in a PID namespace of its own, so VNFs dumped at the same time
    /// must not share one. Under the state directory, so it outlives the
    /// daemon (a restore needs it).
    pub cwd: PathBuf,
    /// Its State Synchronizer, when protected.
    pub agent: Option<Agent>,
    /// Checkpoints taken.
    pub checkpoints: u64,
    /// The last checkpoint committed (its restore point), if any.
    pub last_committed: Option<nham_dataplane::hold::CheckpointId>,
    /// The SFF's end of its veth (in the daemon's namespace).
    pub sff_iface: String,
    /// Its Failure Recovery: phase, incarnation, counters.
    pub recovery: FailureRecovery,
    /// Its cgroup (none where the host has no cgroup2 hierarchy).
    pub cgroup: Option<Cgroup>,
    /// The place of its 1R-AA replica (made when the chain is created with
    /// 1R-AA for it): a namespace whose `eth0` has the index of the VNF's,
    /// behind the hop's standby port. Swaps with `netns` on failover.
    pub replica: Option<ReplicaPlace>,
    /// MR-AA members 1 to M-1 (member 0 is this VNF's process and place).
    pub members: Vec<MemberPlace>,
    /// MR-AA on other hosts: members 1 to M-1 (member 0 is `remote`),
    /// each on a host of its own where there are enough.
    pub remote_members: Vec<RemoteMember>,
    /// MR-AA on other hosts: held while a member is restored (one at a
    /// time per VNF, as an agent restores local members one at a time).
    pub member_turn: Arc<Mutex<()>>,
    /// On another host: held while the hop's standby port changes (a new
    /// replica or standby attached) and while the VNF recovers (which
    /// fails over to it), so the two never cross.
    pub standby_turn: Arc<tokio::sync::Mutex<()>>,
    /// On another host: the incarnation whose failure was announced
    /// (`FailureDetected`, at once) and whose recovery waits for the
    /// standby turn; a second report of the same failure (its watch and
    /// its host judged down) is not announced again.
    pub failure_announced: Option<u64>,
}

/// An MR-AA member (1 or more) of a VNF on another host.
#[derive(Debug)]
pub struct RemoteMember {
    /// Its current incarnation (`None` while none runs).
    pub remote: Option<RemoteVnf>,
    /// The incarnation before (stopped once its host is heard again, if
    /// it was cut off).
    pub previous: Option<RemoteVnf>,
    /// Its Failure Recovery.
    pub recovery: FailureRecovery,
}

/// Where an MR-AA member other than member 0 runs, and its process.
#[derive(Debug)]
pub struct MemberPlace {
    /// Its namespace (its `eth0` has member 0's interface index).
    pub netns: Netns,
    /// The SFF's end of its link (a member port of the hop).
    pub sff_iface: String,
    /// Its process, while it runs.
    pub process: Option<process::Process>,
    /// Its working directory.
    pub cwd: PathBuf,
    /// Its Failure Recovery.
    pub recovery: FailureRecovery,
}

impl MemberPlace {
    /// Its process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(process::Process::pid)
    }

    /// Where it is, as the work on it needs to know.
    pub fn place(&self) -> Place {
        Place {
            netns: self.netns.path(),
            sff_iface: self.sff_iface.clone(),
            cwd: self.cwd.clone(),
        }
    }

    /// A place with no process yet; `incarnation` its first watcher's
    /// number less one.
    pub fn new(netns: Netns, sff_iface: String, cwd: PathBuf, incarnation: u64) -> Self {
        Self {
            netns,
            sff_iface,
            process: None,
            cwd,
            recovery: FailureRecovery::new(incarnation),
        }
    }
}

/// What a new agent of VNF `v` (at `hop` of chain `chain`, scratch under
/// `work`) needs, taken from its runtime (quickly: under the registry) to
/// build it without (it starts a CRIU worker).
pub fn new_agent(
    v: &VnfRuntime,
    pid: Option<u32>,
    hop: usize,
    mechanism: Mechanism,
    state: &StateOptions,
    chain: &str,
    work: &Path,
) -> Result<NewAgent, ControlError> {
    let pid = pid.or(v.pid()).ok_or_else(|| {
        ControlError::FailedPrecondition(format!("VNF {} is not running", v.plan.name))
    })?;
    Ok(NewAgent {
        hop,
        pid,
        start: v.spawn_here()?,
        slot: StoreSlot {
            store: state.store.clone(),
            chain: chain.to_string(),
            vnf: v.plan.name.clone(),
            // Its own: a retired agent removes its scratch when it goes.
            scratch: work.join(unique_name(&v.plan.name)),
            copies: state.copies.clone(),
        },
        mechanism,
        sff_iface: v.sff_iface.clone(),
        replica: v
            .replica
            .as_ref()
            .map(|r| (r.netns.path(), r.sff_iface.clone())),
        members: v.member_places(),
    })
}

/// See [`new_agent`].
#[derive(Debug)]
pub struct NewAgent {
    hop: usize,
    pid: u32,
    start: Spawn,
    slot: StoreSlot,
    mechanism: Mechanism,
    sff_iface: String,
    replica: Option<(PathBuf, String)>,
    members: Vec<Place>,
}

impl NewAgent {
    /// The agent, watching the VNF's link, with its replica place and
    /// members, protecting by its mechanism.
    pub fn build(self) -> Result<ProtectedVnf, ControlError> {
        let aa = self.mechanism == Mechanism::ActiveActive;
        // 1R-AA once the replica's place is known.
        let first = if aa {
            Mechanism::NoReplica
        } else {
            self.mechanism
        };
        let mut a = ProtectedVnf::new(self.hop, self.pid, self.start, self.slot, first)?;
        a.watch_link(&self.sff_iface)?;
        if let Some((netns, iface)) = &self.replica {
            a = a.with_replica(netns, iface);
        }
        let mut a = a.with_members(self.members);
        if aa {
            a.set_mechanism(self.mechanism)?;
        }
        Ok(a)
    }
}

/// Where a 1R-AA replica runs.
#[derive(Debug)]
pub struct ReplicaPlace {
    /// Its namespace.
    pub netns: Netns,
    /// The SFF's end of its link (the hop's standby port).
    pub sff_iface: String,
}

impl VnfRuntime {
    /// Its status.
    pub fn status(&self) -> VnfStatus {
        VnfStatus {
            name: self.plan.name.clone(),
            phase: self.phase(),
            // (A VNF on another host: its pid there.)
            pid: self.pid().or(self.remote.as_ref().map(|r| r.pid)),
            netns: self.netns_name().to_string(),
            mechanism: self.plan.mechanism,
            failures: self.counted(|c| c.failures),
            recoveries: self.counted(|c| c.recoveries),
            checkpoints: self.checkpoints,
            member_pids: (self.members.iter().map(MemberPlace::pid))
                .chain(self.remote_members.iter().map(|m| {
                    (m.recovery.phase() == Phase::Running)
                        .then(|| m.remote.as_ref().map(|r| r.pid))
                        .flatten()
                }))
                .collect(),
            host: self.remote.as_ref().map(|r| r.host.clone()),
            replica_host: self.remote_replica.as_ref().map(|(r, _)| r.host.clone()),
            member_hosts: (self.remote_members.iter())
                .map(|m| {
                    m.remote
                        .as_ref()
                        .map(|r| r.host.clone())
                        .unwrap_or_default()
                })
                .collect(),
        }
    }

    /// Its namespace, on this host.
    pub fn local_netns(&self) -> Result<&Netns, ControlError> {
        self.netns.as_ref().ok_or_else(|| {
            ControlError::FailedPrecondition(format!(
                "VNF {} runs on host {}: not in reach of this host's processes",
                self.plan.name,
                self.remote.as_ref().map_or("?", |r| r.host.as_str())
            ))
        })
    }

    /// Its namespace's name (on its host).
    pub fn netns_name(&self) -> &str {
        match (&self.netns, &self.remote) {
            (Some(n), _) => n.name(),
            (None, Some(r)) => &r.netns,
            (None, None) => "",
        }
    }

    /// Its phase (of its own process: MR-AA members failing leave the VNF
    /// running).
    pub fn phase(&self) -> Phase {
        self.recovery.phase()
    }

    /// A counter of its own process's and its MR-AA members' recoveries,
    /// summed.
    pub fn counted(&self, f: impl Fn(&Counters) -> u64) -> u64 {
        f(self.recovery.counters())
            + self
                .members
                .iter()
                .map(|m| f(m.recovery.counters()))
                .sum::<u64>()
            + self
                .remote_members
                .iter()
                .map(|m| f(m.recovery.counters()))
                .sum::<u64>()
    }

    /// The Failure Recovery of member `k` (0: the VNF's own process).
    pub fn recovery_of(&mut self, k: usize) -> Option<&mut FailureRecovery> {
        match k {
            0 => Some(&mut self.recovery),
            k => self.members.get_mut(k - 1).map(|m| &mut m.recovery),
        }
    }

    /// Starts the VNF's command in its namespace, waits until it listens on
    /// a packet socket, and returns a pidfd to watch.
    pub fn start(&mut self) -> Result<OwnedFd, ControlError> {
        let pid = self.spawn_in(self.local_netns()?, &self.cwd)?;
        self.adopt(pid)
    }

    /// Starts MR-AA member `k` (1 or more) afresh in its place; returns a
    /// pidfd to watch.
    pub fn start_member(&mut self, k: usize) -> Result<OwnedFd, ControlError> {
        let m = self.members.get(k - 1).ok_or_else(|| {
            ControlError::NotFound(format!("VNF {} has no MR-AA member {k}", self.plan.name))
        })?;
        let pid = self.spawn_in(&m.netns, &m.cwd)?;
        self.adopt_member(k, pid)
    }

    /// Takes `pid` as MR-AA member `k`'s process (1 or more).
    pub fn adopt_member(&mut self, k: usize, pid: u32) -> Result<OwnedFd, ControlError> {
        let p = process::Process::open(pid)?;
        let pidfd = p.watch_fd()?;
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.add_tree(pid) {
                tracing::warn!(vnf = self.plan.name, "{e}");
            }
        }
        let m = self.members.get_mut(k - 1).ok_or_else(|| {
            ControlError::NotFound(format!("VNF {} has no MR-AA member {k}", self.plan.name))
        })?;
        m.process = Some(p);
        m.recovery.handle_started();
        Ok(pidfd)
    }

    /// Starts the VNF's command in `netns` with working directory `cwd`,
    /// waits until it listens on a packet socket; returns its pid.
    fn spawn_in(&self, netns: &Netns, cwd: &Path) -> Result<u32, ControlError> {
        Ok(self.spawn(netns, cwd).run()?)
    }

    /// What starting the VNF's command in `netns` (working directory
    /// `cwd`) takes, apart from the VNF's record: the start waits until the
    /// VNF listens (seconds, for some), and nothing shared may be held
    /// meanwhile.
    pub fn spawn(&self, netns: &Netns, cwd: &Path) -> Spawn {
        Spawn {
            vnf: self.plan.name.clone(),
            command: self.plan.command.clone(),
            argv: self.argv.clone(),
            env: self.plan.env.clone(),
            netns: netns.path(),
            netns_name: netns.name().to_string(),
            cwd: cwd.to_path_buf(),
            log: self.log.clone(),
            cgroup: self.cgroup.as_ref().map(|c| c.path().to_path_buf()),
            cgroup_v1: self
                .cgroup
                .as_ref()
                .map(|c| c.v1_groups().to_vec())
                .unwrap_or_default(),
            identity: self.plan.identity.clone(),
        }
    }

    /// [`spawn`](Self::spawn) in the VNF's own place.
    pub fn spawn_here(&self) -> Result<Spawn, ControlError> {
        Ok(self.spawn(self.local_netns()?, &self.cwd))
    }

    /// Brings the VNF's link up (a failed VNF may have been cut off; the
    /// one brought back needs its link).
    pub fn reconnect(&self) -> Result<(), ControlError> {
        self.local_netns()?
            .run(|| nham_netns::set_up(VNF_IFACE))??;
        Ok(())
    }

    /// Takes `pid` (started, or restored with its sockets) as the VNF's
    /// process; returns a pidfd to watch.
    pub fn adopt(&mut self, pid: u32) -> Result<OwnedFd, ControlError> {
        let p = process::Process::open(pid)?;
        let pidfd = p.watch_fd()?;
        if let Some(cg) = &self.cgroup {
            if let Err(e) = cg.add_tree(pid) {
                tracing::warn!(vnf = self.plan.name, "{e}");
            }
        }
        self.process = Some(p);
        self.recovery.handle_started();
        Ok(pidfd)
    }

    /// After a 1R-AA failover: the replica's namespace and link are the
    /// VNF's now, and the old ones the replica's.
    pub fn swap_replica(&mut self) {
        if let (Some(r), Some(netns)) = (self.replica.as_mut(), self.netns.as_mut()) {
            std::mem::swap(netns, &mut r.netns);
            std::mem::swap(&mut self.sff_iface, &mut r.sff_iface);
        }
    }

    /// The places of its MR-AA members 1 to M-1.
    pub fn member_places(&self) -> Vec<Place> {
        self.members.iter().map(MemberPlace::place).collect()
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), ControlError> {
        let p = self.process.as_ref().ok_or_else(|| {
            ControlError::FailedPrecondition(format!("VNF {} is not running", self.plan.name))
        })?;
        Ok(p.signal(signal)?)
    }

    /// Its process's pid, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(process::Process::pid)
    }
}

impl Drop for VnfRuntime {
    fn drop(&mut self) {
        self.agent = None;
        let members = self.members.iter_mut().filter_map(|m| m.process.take());
        for p in self.process.take().into_iter().chain(members) {
            p.kill_and_reap();
        }
    }
}

/// What runs for a chain, as the state database keeps it for a restarted
/// daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainRecord {
    /// The daemon's number for the chain (interface and namespace names).
    pub id: u32,
    /// The SFF process.
    pub sff_pid: u32,
    /// Its control socket.
    pub sff_socket: PathBuf,
    /// The VNFs, in chain order.
    pub vnfs: Vec<VnfRecord>,
}

/// One VNF of a [`ChainRecord`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VnfRecord {
    /// Its name.
    pub name: String,
    /// Its network namespace.
    pub netns: String,
    /// The SFF's end of its link.
    pub sff_iface: String,
    /// Its process when the record was written.
    pub pid: Option<u32>,
    /// Its command line as started.
    pub argv: Vec<String>,
    /// Its log file.
    pub log: PathBuf,
    /// Counters, carried over.
    pub failures: u64,
    /// See `failures`.
    pub recoveries: u64,
    /// See `failures`.
    pub checkpoints: u64,
    /// 1R-AA: the replica's namespace.
    #[serde(default)]
    pub replica_netns: Option<String>,
    /// 1R-AA: the SFF's end of the replica's link.
    #[serde(default)]
    pub replica_sff_iface: Option<String>,
    /// MR-AA: members 1 to M-1.
    #[serde(default)]
    pub members: Vec<MemberRecord>,
}

/// The name of MR-AA member `k`'s working directory, beside its VNF's.
pub fn member_dir(vnf: &str, k: usize) -> String {
    format!("{vnf}.m{k}")
}

/// Where an MR-AA member ran, for a restarted daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberRecord {
    /// Its network namespace.
    pub netns: String,
    /// The SFF's end of its link (a member port of the hop).
    pub sff_iface: String,
    /// Its process when the record was written.
    pub pid: Option<u32>,
}

/// A chain with its VNFs and SFF.
#[derive(Debug)]
pub struct ChainRuntime {
    /// The daemon's number for it.
    pub id: u32,
    /// Its plan.
    pub plan: ChainPlan,
    /// VNFs in order.
    pub vnfs: Vec<VnfRuntime>,
    /// The SFF's control client (dropped before the VNFs go).
    pub sff: Option<Arc<SffClient>>,
    /// The SFF process.
    pub sff_process: Option<SffProcess>,
    /// Where this chain's VNF logs and scratch images live.
    pub work: PathBuf,
    /// Left running on drop, for the next daemon.
    detached: bool,
    /// MR-AA members started with the chain, (hop, member, pidfd), for the
    /// daemon to watch (taken by it).
    pub member_pidfds: Vec<(usize, usize, OwnedFd)>,
    /// MR-AA members (hop, member) found dead by a re-attach, to recover.
    pub lost_members: Vec<(usize, usize)>,
}

/// Where the daemon keeps state, and how it watches VNFs.
#[derive(Debug, Clone)]
pub struct StateOptions {
    /// How often the Failure Detector probes each VNF for hangs and
    /// cut-offs.
    pub probe_interval: Duration,
    /// Consecutive bad probes that make a failure.
    pub probe_threshold: u32,
    /// The state database.
    pub store: Arc<Store>,
    /// VNF logs (`<dir>/<chain>/<vnf>.log`).
    pub logs: PathBuf,
    /// Scratch space for images being dumped and restored (tmpfs is best).
    pub scratch: PathBuf,
    /// Checkpoint period for VNFs that do not set one.
    pub checkpoint_interval: Duration,
    /// Checkpoint dumps (CRIU's freeze and dump) under way at once on this
    /// host; others wait their turn, so checkpoint work never takes every
    /// core from the chains (see [`default_checkpoint_concurrency`]). The
    /// store and commit after a dump go on outside the turns (one
    /// checkpoint per VNF at a time). With N protected VNFs a VNF's
    /// checkpoints come every interval or every N / concurrency dumps,
    /// whichever is longer: size the hold for that.
    pub checkpoint_concurrency: usize,
    /// Where each checkpoint's second copy goes, when this host is in a
    /// cluster (`None`: this host only).
    pub copies: Option<Arc<dyn crate::vsm::checkpointer::OffHostCopy>>,
    /// The cluster, when this host is in one (VNFs on other hosts).
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// One checkpoint at a time per two cores (at least one).
pub fn default_checkpoint_concurrency() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl StateOptions {
    /// The prefix of this daemon's namespace names: the same for every run
    /// on one state database (so a restarted daemon finds its namespaces),
    /// different between databases (so daemons do not collide).
    pub fn netns_prefix(&self) -> String {
        format!("nhamd-{}-", state_tag(self.store.dir()))
    }

    /// How the names of the namespaces this daemon makes for VNFs it runs
    /// for other hosts begin (`cluster::hosting`): within
    /// [`netns_prefix`](Self::netns_prefix) (a lab's `fail_host` finds a
    /// host's everything so), but never a chain's own (those go on with a
    /// hex chain id, never `x`). Sweeping this daemon's own chains leaves
    /// them to the hosting side.
    pub fn hosted_netns_prefix(&self) -> String {
        format!("{}x", self.netns_prefix())
    }

    /// Where this daemon's cgroups go (`None`: no cgroup2 hierarchy).
    pub fn cgroup_dir(&self) -> Option<PathBuf> {
        Some(crate::runtime::cgroup::cgroup2_root()?.join(cgroup_name(self.store.dir())))
    }

    /// Chain `chain`'s SFF's cgroup (`None`: no cgroup2 hierarchy): `_sff`
    /// beside its VNFs' groups (no VNF is named so: names have no `_`).
    /// The SFF is out of `nhamd`'s own group, so that stopping `nhamd`'s
    /// unit (systemd kills what is left in the unit's group) leaves it
    /// forwarding and holding for the next `nhamd`.
    pub fn sff_cgroup(&self, chain: &str) -> Option<PathBuf> {
        Some(self.cgroup_dir()?.join(chain).join("_sff"))
    }

    /// VNF `vnf` of chain `chain`'s cgroup, made if need be; `None` (with a
    /// warning) where there is no cgroup2 hierarchy or it cannot be made.
    fn vnf_cgroup(
        &self,
        chain: &str,
        vnf: &str,
        limits: &crate::runtime::cgroup::Limits,
    ) -> Result<Option<Cgroup>, ControlError> {
        let Some(root) = crate::runtime::cgroup::cgroup2_root() else {
            if !limits.is_none() {
                return Err(ControlError::FailedPrecondition(format!(
                    "VNF {chain}/{vnf} has limits, and this host has no cgroup2 hierarchy"
                )));
            }
            return Ok(None);
        };
        let rel = PathBuf::from(cgroup_name(self.store.dir()))
            .join(chain)
            .join(vnf);
        match Cgroup::create_limited(&root, &rel, limits) {
            Ok(g) => Ok(Some(g)),
            // Without limits, a VNF outside a group of its own still runs
            // (as on a host without cgroup2); with them, it does not.
            Err(e) if limits.is_none() => {
                tracing::warn!(chain, vnf, "no cgroup: {e}");
                Ok(None)
            }
            Err(e) => Err(ControlError::FailedPrecondition(format!(
                "VNF {chain}/{vnf}: its limits cannot be set: {e}"
            ))),
        }
    }

    /// VNF `vnf` of chain `chain`'s working directory, made if need be.
    pub fn vnf_cwd(&self, chain: &str, vnf: &str) -> Result<PathBuf, ControlError> {
        let dir = self.store.dir().join("run").join(chain).join(vnf);
        std::fs::create_dir_all(&dir).map_err(ControlError::io(dir.display()))?;
        Ok(dir)
    }

    /// Where chain `id`'s SFF listens.
    fn sff_socket(&self, id: u32) -> PathBuf {
        self.store.dir().join("sff").join(format!("{id:x}.sock"))
    }
}

/// A short name for the state database in `dir` (8 hex digits of a hash of
/// its path): the same for every daemon run on it.
pub fn state_tag(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    blake3::hash(dir.as_os_str().as_encoded_bytes()).to_hex()[..8].to_string()
}

/// The name of the cgroup (under the cgroup2 root) of the daemon whose
/// state database is in `dir`: `nham-<state tag>`.
pub fn cgroup_name(dir: &Path) -> String {
    format!("nham-{}", state_tag(dir))
}

/// Sweeps what a daemon on the state directory `dir` left behind (killed,
/// or stopped keeping its chains): every process in its cgroups killed,
/// the groups removed, and its namespaces deleted. For test labs that end.
pub fn sweep_daemon(dir: &Path) {
    if let Some(root) = crate::runtime::cgroup::cgroup2_root() {
        crate::runtime::cgroup::kill_tree(&root.join(cgroup_name(dir)));
    }
    nham_netns::sweep_prefix(&format!("nhamd-{}-", state_tag(dir)), |_| false);
}

impl ChainRuntime {
    /// Builds namespaces and links, starts the VNFs (returning their pidfds,
    /// in order) and the SFF process. `id` makes interface and namespace
    /// names unique per daemon.
    pub fn start(
        id: u32,
        plan: ChainPlan,
        sff: &SffOptions,
        state: &StateOptions,
    ) -> Result<(Self, Vec<Option<OwnedFd>>), ControlError> {
        // The chain's own interfaces first: nothing is built for a chain
        // whose ingress or egress is not there.
        let (ingress, egress) = (
            port_spec(&plan.ingress, "ingress")?,
            port_spec(&plan.egress, "egress")?,
        );
        let mut vnfs = Vec::new();
        let mut hops = Vec::new();
        let mut standby = Vec::new();
        let mut members = Vec::new();
        let work = state.scratch.join(&plan.name);
        let logs = state.logs.join(&plan.name);
        for dir in [&work, &logs] {
            std::fs::create_dir_all(dir).map_err(ControlError::io(dir.display()))?;
        }
        let prefix = state.netns_prefix();
        for (i, v) in plan.vnfs.iter().enumerate() {
            if let Some(host) = &v.host {
                let cluster = state.cluster.as_ref().ok_or_else(|| {
                    ControlError::FailedPrecondition(format!(
                        "VNF {} names host {host}: this nhamd is not in a cluster",
                        v.name
                    ))
                })?;
                let (remote, port) =
                    remote::place(cluster, host, &plan.name, v, &remote::Start::Fresh)?;
                let sff_iface = port.iface.clone();
                hops.push(port);
                standby.push(None);
                // MR-AA: members 1 to M-1 on other hosts than member 0's
                // (as many different ones as there are), all afresh.
                let mut remote_members = Vec::new();
                let mut member_ports = Vec::new();
                if v.mechanism == Some(Mechanism::MultiActive) {
                    let wanted = (v.replicas as usize).saturating_sub(1);
                    for h in remote::member_hosts(cluster, &[host.as_str()], wanted) {
                        let (m, port) =
                            remote::place(cluster, &h, &plan.name, v, &remote::Start::Fresh)?;
                        member_ports.push(port);
                        let mut recovery = FailureRecovery::new(0);
                        recovery.handle_started();
                        remote_members.push(RemoteMember {
                            remote: Some(m),
                            previous: None,
                            recovery,
                        });
                    }
                }
                members.push(member_ports);
                let mut recovery = FailureRecovery::new(0);
                recovery.handle_started();
                vnfs.push(VnfRuntime {
                    plan: v.clone(),
                    netns: None,
                    remote_target: Some(remote::RemoteTarget::new(cluster.clone(), &remote)),
                    remote_replica: None,
                    remote: Some(remote),
                    remote_previous: None,
                    process: None,
                    argv: Vec::new(),
                    log: logs.join(format!("{}.log", v.name)),
                    cwd: state.vnf_cwd(&plan.name, &v.name)?,
                    cgroup: None,
                    replica: None,
                    members: Vec::new(),
                    remote_members,
                    member_turn: Arc::default(),
                    standby_turn: Arc::default(),
                    failure_announced: None,
                    agent: None,
                    checkpoints: 0,
                    last_committed: None,
                    sff_iface,
                    recovery,
                });
                continue;
            }
            let netns = Netns::create(&format!("{prefix}{id:x}-{i}"))?;
            let (here, vnf_ifindex) = make_link(None, &format!("n{id:x}v{i}"), &netns, None)?;
            let sff_iface = here.iface.clone();
            hops.push(here);
            // 1R-AA: the replica's place, its eth0 under the same index.
            let replica = if v.mechanism == Some(Mechanism::ActiveActive) {
                let (rns, port) = make_place(
                    &format!("{prefix}{id:x}-{i}r"),
                    &format!("n{id:x}r{i}"),
                    vnf_ifindex,
                )?;
                let sff_iface = port.iface.clone();
                standby.push(Some(port));
                Some(ReplicaPlace {
                    netns: rns,
                    sff_iface,
                })
            } else {
                standby.push(None);
                None
            };
            // MR-AA: members 1 to M-1, each in a place like the replica's.
            let mut places = Vec::new();
            let mut member_ports = Vec::new();
            for k in 1..v.replicas as usize {
                let (mns, port) = make_place(
                    &format!("{prefix}{id:x}-{i}m{k}"),
                    &format!("n{id:x}m{i}k{k}"),
                    vnf_ifindex,
                )?;
                let cwd = state.vnf_cwd(&plan.name, &member_dir(&v.name, k))?;
                places.push(MemberPlace::new(mns, port.iface.clone(), cwd, 0));
                member_ports.push(port);
            }
            members.push(member_ports);
            let argv = vnf_argv(&v.command, netns.name());
            vnfs.push(VnfRuntime {
                plan: v.clone(),
                netns: Some(netns),
                remote: None,
                remote_previous: None,
                remote_target: None,
                remote_replica: None,
                process: None,
                argv,
                log: logs.join(format!("{}.log", v.name)),
                cwd: state.vnf_cwd(&plan.name, &v.name)?,
                cgroup: state.vnf_cgroup(&plan.name, &v.name, &v.limits)?,
                replica,
                members: places,
                remote_members: Vec::new(),
                member_turn: Arc::default(),
                standby_turn: Arc::default(),
                failure_announced: None,
                agent: None,
                checkpoints: 0,
                last_committed: None,
                sff_iface,
                recovery: FailureRecovery::new(0),
            });
        }
        let mut runtime = Self {
            id,
            plan,
            vnfs,
            sff: None,
            sff_process: None,
            work,
            detached: false,
            member_pidfds: Vec::new(),
            lost_members: Vec::new(),
        };
        // (VNFs on other hosts run already; their hosts watch them.)
        let pidfds = runtime
            .vnfs
            .iter_mut()
            .map(|v| v.remote.is_none().then(|| v.start()).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        // MR-AA members start with member 0, all in the initial state.
        let mut member_pidfds = Vec::new();
        for (i, v) in runtime.vnfs.iter_mut().enumerate() {
            for k in 1..=v.members.len() {
                member_pidfds.push((i, k, v.start_member(k)?));
            }
        }
        runtime.member_pidfds = member_pidfds;
        let protect = runtime
            .vnfs
            .iter()
            .map(|v| v.plan.mechanism.is_some())
            .collect();
        let ports = ChainPorts {
            ingress,
            egress,
            hops,
            standby,
            members,
        };
        let (rules, spi) = (runtime.plan.rules.clone(), runtime.plan.spi);
        let config = sff_config(ports, rules, spi, protect, sff);
        let socket = state.sff_socket(id);
        let process = spawn_sff(
            sff,
            &config,
            &socket,
            &logs.join("sff.log"),
            state.sff_cgroup(&runtime.plan.name).as_deref(),
        )?;
        runtime.sff_process = Some(process);
        runtime.sff = Some(Arc::new(
            SffClient::connect(&socket).map_err(ControlError::from)?,
        ));
        for hop in 0..runtime.vnfs.len() {
            let m = runtime.vnfs[hop].plan.mechanism;
            runtime.protect(hop, m, state)?;
        }
        Ok((runtime, pidfds))
    }

    /// What runs for this chain, for the state database.
    pub fn record(&self) -> Option<ChainRecord> {
        let p = self.sff_process.as_ref()?;
        Some(ChainRecord {
            id: self.id,
            sff_pid: p.pid,
            sff_socket: p.socket.clone(),
            vnfs: self
                .vnfs
                .iter()
                .map(|v| VnfRecord {
                    name: v.plan.name.clone(),
                    netns: v
                        .netns
                        .as_ref()
                        .map(|n| n.name().to_string())
                        .unwrap_or_default(),
                    sff_iface: v.sff_iface.clone(),
                    pid: v.pid(),
                    argv: v.argv.clone(),
                    log: v.log.clone(),
                    failures: v.counted(|c| c.failures),
                    recoveries: v.counted(|c| c.recoveries),
                    checkpoints: v.checkpoints,
                    replica_netns: v.replica.as_ref().map(|r| r.netns.name().to_string()),
                    replica_sff_iface: v.replica.as_ref().map(|r| r.sff_iface.clone()),
                    members: v
                        .members
                        .iter()
                        .map(|m| MemberRecord {
                            netns: m.netns.name().to_string(),
                            sff_iface: m.sff_iface.clone(),
                            pid: m.pid(),
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    /// Leaves the SFF, the VNFs and the namespaces running when this is
    /// dropped, for a restarted daemon to attach to.
    pub fn detach(&mut self) {
        self.detached = true;
    }

    /// Gives VNF `hop` mechanism `m` as the chain starts (or is attached
    /// to again): makes, changes or drops its agent and tells the SFF
    /// whether to hold its packets. Its places (replica, members) must be
    /// there; a change at runtime makes them (`service::mechanism`).
    pub fn protect(
        &mut self,
        hop: usize,
        wanted: Option<Mechanism>,
        state: &StateOptions,
    ) -> Result<(), ControlError> {
        self.protect_as(hop, wanted, state, None)
    }

    /// [`protect`](Self::protect), a new agent protecting process `pid`
    /// (`None`: the VNF's; a dead VNF's last pid for a restarted daemon's
    /// agent, which restores its image under that pid: CRIU keeps pids).
    pub fn protect_as(
        &mut self,
        hop: usize,
        wanted: Option<Mechanism>,
        state: &StateOptions,
        pid: Option<u32>,
    ) -> Result<(), ControlError> {
        let has_members =
            !self.vnfs[hop].members.is_empty() || !self.vnfs[hop].remote_members.is_empty();
        let remote = self.vnfs[hop].remote_target.is_some();
        if (wanted == Some(Mechanism::MultiActive)) != has_members {
            return Err(ControlError::FailedPrecondition(format!(
                "VNF {:?}: MR-AA needs its members' places and SFF ports, and only MR-AA has them",
                self.vnfs[hop].plan.name
            )));
        }
        if wanted == Some(Mechanism::ActiveActive) && self.vnfs[hop].replica.is_none() && !remote {
            return Err(ControlError::FailedPrecondition(format!(
                "VNF {:?} has no replica namespace and standby port, which 1R-AA needs",
                self.vnfs[hop].plan.name
            )));
        }
        let sff = self.sff.clone().ok_or_else(|| {
            ControlError::FailedPrecondition("the chain's SFF is not running".into())
        })?;
        let chain = self.plan.name.clone();
        let v = &mut self.vnfs[hop];
        match (wanted, v.agent.clone()) {
            (None, None) => {
                sff.set_protected(hop, false).map_err(ControlError::from)?;
            }
            (None, Some(agent)) => {
                // A checkpoint under way finishes its dump first (it holds
                // the agent); one being stored aborts at its commit (a
                // retired agent tells the SFF), within its turn, so a new
                // agent's first checkpoint finds the hop idle.
                agent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .retire();
                v.agent = None;
                sff.set_protected(hop, false).map_err(ControlError::from)?;
            }
            (Some(mech), Some(agent)) => agent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .set_mechanism(mech)
                .map_err(ControlError::from)?,
            (Some(_), None) if v.remote_target.is_some() => {
                let target = v
                    .remote_target
                    .clone()
                    .ok_or(ControlError::Panicked("target"))?;
                // (1R-AA and 1R-AS there: this agent checkpoints; the
                // daemon keeps the replica or standby on another host,
                // `service::remote_vnfs`. MR-AA: it checkpoints member
                // 0, which the SFF alone pauses; the daemon restores a
                // lost member from the restore point, on a live host.)
                let slot = StoreSlot {
                    store: state.store.clone(),
                    chain: chain.clone(),
                    vnf: v.plan.name.clone(),
                    scratch: self.work.join(unique_name(&v.plan.name)),
                    copies: state.copies.clone(),
                };
                let mut agent = ProtectedVnf::new_remote(hop, target, slot)?;
                agent.watch_link(&v.sff_iface)?;
                sff.set_protected(hop, true).map_err(ControlError::from)?;
                v.agent = Some(Arc::new(Mutex::new(agent)));
            }
            (Some(mech), None) => {
                let agent = new_agent(v, pid, hop, mech, state, &chain, &self.work)?.build()?;
                sff.set_protected(hop, true).map_err(ControlError::from)?;
                v.agent = Some(Arc::new(Mutex::new(agent)));
            }
        }
        v.plan.mechanism = wanted;
        Ok(())
    }

    /// Names for a place made at runtime beside hop `hop`'s VNF (`what`:
    /// `r` a replica, `m` a member): its namespace and the SFF's end of its
    /// link, unique on the host (a removed place's names may linger while
    /// the kernel takes its namespace down).
    pub fn place_names(&self, state: &StateOptions, hop: usize, what: char) -> (String, String) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let n = (NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) ^ clock) & 0xffff;
        let id = self.id;
        (
            format!("{}{id:x}-{hop}{what}{n:04x}", state.netns_prefix()),
            format!("n{id:x}{what}{hop}x{n:04x}"),
        )
    }

    /// The chain as it is now: its plan with each VNF's own (a mechanism
    /// changed at runtime included). What `GetChain` shows and what a
    /// restarted daemon is recorded to run.
    pub fn current_plan(&self) -> ChainPlan {
        ChainPlan {
            vnfs: self.vnfs.iter().map(|v| v.plan.clone()).collect(),
            ..self.plan.clone()
        }
    }

    /// The chain's status.
    pub fn status(&self) -> ChainStatus {
        ChainStatus {
            running: self.vnfs.iter().all(|v| v.phase() == Phase::Running),
            vnfs: self.vnfs.iter().map(VnfRuntime::status).collect(),
        }
    }

    /// The index of the VNF called `name`.
    pub fn vnf_index(&self, name: &str) -> Result<usize, ControlError> {
        self.vnfs
            .iter()
            .position(|v| v.plan.name == name)
            .ok_or_else(|| {
                ControlError::NotFound(format!("chain {:?} has no VNF {name:?}", self.plan.name))
            })
    }

    /// The VNF called `name`.
    pub fn vnf_mut(&mut self, name: &str) -> Result<&mut VnfRuntime, ControlError> {
        let chain = self.plan.name.clone();
        self.vnfs
            .iter_mut()
            .find(|v| v.plan.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("chain {chain:?} has no VNF {name:?}")))
    }

    /// Environment of VNFs, for tests: name -> namespace.
    pub fn namespaces(&self) -> BTreeMap<String, String> {
        self.vnfs
            .iter()
            .map(|v| (v.plan.name.clone(), v.netns_name().to_string()))
            .collect()
    }
}

/// Stops what an earlier daemon left for a chain it could not be attached
/// to: its SFF process (if that still runs `nham-sff`), every process in its
/// namespaces, the namespaces.
pub fn tear_down_record(record: &ChainRecord) {
    let comm =
        std::fs::read_to_string(format!("/proc/{}/comm", record.sff_pid)).unwrap_or_default();
    if comm.trim() == "nham-sff" {
        let mut p = SffProcess::adopt(record.sff_pid, record.sff_socket.clone());
        let client = SffClient::connect(&record.sff_socket).ok();
        p.stop(client.as_ref(), Duration::from_secs(2));
    }
    for v in record.vnfs.iter().filter(|v| !v.netns.is_empty()) {
        if let Ok(ns) = Netns::adopt(&v.netns) {
            nham_netns::kill_processes_in(&ns.path());
        }
    }
}

impl Drop for ChainRuntime {
    fn drop(&mut self) {
        // Agents first (their CRIU workers go with them).
        for v in &mut self.vnfs {
            v.agent = None;
        }
        if self.detached {
            for v in &mut self.vnfs {
                v.process = None;
                if let Some(n) = v.netns.as_mut() {
                    n.keep();
                }
                if let Some(c) = v.cgroup.as_mut() {
                    c.keep();
                }
                if let Some(r) = v.replica.as_mut() {
                    r.netns.keep();
                }
                for m in &mut v.members {
                    m.process = None;
                    m.netns.keep();
                }
            }
            return;
        }
        // Then the SFF (it holds the ports on the VNF links), then the VNFs
        // (with their cgroups) and namespaces.
        let client = self.sff.take();
        if let Some(p) = self.sff_process.as_mut() {
            p.stop(client.as_deref(), Duration::from_secs(3));
        }
        let cgroups = self
            .vnfs
            .iter()
            .find_map(|v| Some(v.cgroup.as_ref()?.path().parent()?.to_path_buf()));
        let cwds = self
            .vnfs
            .first()
            .and_then(|v| v.cwd.parent())
            .map(Path::to_path_buf);
        self.vnfs.clear();
        if let Some(dir) = cwds {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(dir) = cgroups {
            crate::runtime::cgroup::remove_tree(&dir);
            // The daemon's own group, if this was its last chain.
            if let Some(daemon) = dir.parent() {
                let _ = std::fs::remove_dir(daemon);
            }
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}
