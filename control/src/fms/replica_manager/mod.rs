//! The Replica Manager of one protected VNF: what its mechanism keeps ready
//! besides the store's images, what a committed checkpoint is handed to,
//! and how the VNF comes back when its process is gone. One module per
//! mechanism, each owning its places and copies:
//!
//! - [`no_replica`] (0R): a new instance restored from the store (checked:
//!   a corrupt image is never restored); what 1R-AS and a refused 1R-AA
//!   failover come down to as well;
//! - [`active_standby`] (1R-AS): a `criu swrk` already running with the
//!   VNF's namespace in hand and the latest committed image checked and
//!   unpacked: on failure it imports the image at once;
//! - [`active_active`] (1R-AA): a stopped copy restored from each commit in
//!   a replica namespace behind the hop's standby port: on failure it
//!   resumes and the SFF switches to it;
//! - [`multi_active`] (MR-AA): members 1 to M-1 in places of their own; a
//!   failed member is restored from the restore point and catches up while
//!   the others serve.
//!
//! The checkpoints themselves are the State Synchronizer's
//! ([`Checkpointer`], in `vsm`). Recovery: `Failure` (the SFF stops the
//! hop, bumps its epoch and names the committed checkpoint), bring the VNF
//! back, `Restored` (the SFF replays every held packet after the mark, in
//! order). Before the first checkpoint there is no image: the command
//! starts afresh and every held packet is replayed from the start.
//!
//! One fallback policy for VNFs and members ([`unusable`]): only an image
//! that is corrupt or gone is given up for the older one the SFF kept
//! packets for; any other error keeps it, to be tried again.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nham_dataplane::hold::CheckpointId;
use nham_sff::remote::SffClient;

pub use crate::plan::Mechanism;
use crate::runtime::process::{Niceness, URGENT_NICE};
use crate::runtime::Spawn;
use crate::vsm::checkpointer::{CheckpointStats, Checkpointer, Committed, StoreSlot, Stored};
use crate::vsm::database::StoreError;
use crate::vsm::SyncError;

pub mod active_active;
pub mod active_standby;
pub mod multi_active;
pub mod no_replica;

use active_active::{FailOver, Replica};
use active_standby::Standby;

/// One protected VNF: its checkpoints and what its mechanism keeps ready.
#[derive(Debug)]
pub struct ProtectedVnf {
    /// How its command starts afresh (no checkpoint yet, or none
    /// protected): as it was first started, in the place given then.
    /// How it is started afresh (`None`: it runs on another host, whose
    /// placement is the daemon's).
    start: Option<Spawn>,
    mechanism: Mechanism,
    standby: Standby,
    /// The 1R-AA replica's place, when the VNF has one.
    replica: Option<Replica>,
    /// Hears when the replica refresh the last commit started is done.
    refreshing: Option<std::sync::mpsc::Receiver<()>>,
    /// MR-AA members 1 to M-1 (member 0 is the VNF's process and place).
    members: Vec<crate::runtime::Place>,
    /// Its checkpoints (and where it runs now). Last: dropped after the
    /// replica's worker is joined, as it removes the scratch directory the
    /// worker restores from.
    sync: Checkpointer,
}

/// What a recovery took.
#[derive(Debug, Clone, Default)]
pub struct RecoveryStats {
    /// From the call to the VNF running again (replay starting).
    pub duration: Duration,
    /// When the VNF ran again (the end of the failover path; what follows
    /// is bookkeeping).
    pub resumed_at: Option<Instant>,
    /// Packets to be delivered again.
    pub replay: u64,
    /// Whether an image was restored (false: started afresh).
    pub restored: bool,
    /// Its new process.
    pub pid: u32,
    /// The checkpoint restored.
    pub checkpoint: Option<CheckpointId>,
    /// Why the committed checkpoint was not used, when an older one was.
    pub fallback_reason: Option<String>,
    /// 1R-AA: the VNF now runs in its replica's namespace, behind the port
    /// that was the standby (the two swapped roles).
    pub switched: bool,
}

impl RecoveryStats {
    /// From `detected` to the VNF running again (now, if not known).
    pub fn since(&self, detected: Instant) -> Duration {
        self.resumed_at.map_or_else(
            || detected.elapsed(),
            |t| t.saturating_duration_since(detected),
        )
    }
}

/// Whether a restore failed because the checkpoint itself is unusable
/// (corrupt or gone): the one case where the older checkpoint is restored
/// instead and this one deleted. Anything else (an I/O error, CRIU) fails
/// the recovery and keeps the checkpoint, to be tried again.
pub fn unusable(e: &SyncError) -> bool {
    matches!(
        e,
        SyncError::Store(StoreError::Corrupt { .. } | StoreError::Missing { .. })
    )
}

/// Restores checkpoint `id` with `restore`, or, when that image is
/// [`unusable`] and the SFF kept packets for an `older` one, deletes it and
/// restores the older: the restored checkpoint, and why the newest was
/// given up.
fn restore_or_fall_back(
    slot: &StoreSlot,
    id: CheckpointId,
    older: Option<CheckpointId>,
    mut restore: impl FnMut(CheckpointId) -> Result<u32, SyncError>,
) -> Result<(u32, CheckpointId, Option<String>), SyncError> {
    match (restore(id), older) {
        (Ok(pid), _) => Ok((pid, id, None)),
        (Err(e), Some(older)) if unusable(&e) => {
            let _ = slot.store.remove_checkpoint(&slot.chain, &slot.vnf, id);
            let newest = e.to_string();
            match restore(older) {
                Ok(pid) => Ok((pid, older, Some(newest))),
                Err(e) => Err(SyncError::FallbackFailed {
                    newest,
                    older,
                    reason: Box::new(e),
                }),
            }
        }
        (Err(e), _) => Err(e),
    }
}

impl ProtectedVnf {
    /// A VNF at `hop`, running as `pid`, started as `start` says (in its
    /// namespace), checkpointed into `slot`.
    pub fn new(
        hop: usize,
        pid: u32,
        start: Spawn,
        slot: StoreSlot,
        mechanism: Mechanism,
    ) -> Result<Self, SyncError> {
        let sync = Checkpointer::new(hop, pid, start.netns.clone(), slot)?;
        let mut v = Self {
            sync,
            start: Some(start),
            mechanism: Mechanism::NoReplica,
            standby: Standby::default(),
            replica: None,
            refreshing: None,
            members: Vec::new(),
        };
        if mechanism == Mechanism::MultiActive {
            // Its members are given next (`with_members`).
            v.mechanism = mechanism;
        } else {
            v.set_mechanism(mechanism)?;
        }
        Ok(v)
    }

    /// A 0R agent of the VNF at `hop` that runs on another host (`remote`
    /// reaches it there), checkpointed into `slot`. Its recovery is a new
    /// placement (the daemon's): this agent checkpoints.
    pub fn new_remote(
        hop: usize,
        remote: Arc<dyn crate::vsm::checkpointer::RemoteVnfOps>,
        slot: StoreSlot,
    ) -> Result<Self, SyncError> {
        Ok(Self {
            sync: Checkpointer::new_remote(hop, remote, slot)?,
            start: None,
            mechanism: Mechanism::NoReplica,
            standby: Standby::default(),
            replica: None,
            refreshing: None,
            members: Vec::new(),
        })
    }

    /// Its hop in the SFF's chain.
    pub fn hop(&self) -> usize {
        self.sync.hop
    }

    /// Its process (MR-AA: member 0's).
    pub fn pid(&self) -> u32 {
        self.sync.pid
    }

    /// Watches the SFF's end of the VNF's link (see
    /// [`Checkpointer::watch_link`]).
    pub fn watch_link(&mut self, iface: &str) -> Result<(), SyncError> {
        self.sync.watch_link(iface)
    }

    /// Takes this agent off its VNF (the VNF is no longer protected, or
    /// another agent takes over): later calls do nothing.
    pub fn retire(&mut self) {
        self.sync.retired = true;
    }

    /// The mechanism.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Changes the mechanism: a 1R-AS standby is prepared now (from the
    /// latest checkpoint in the store, if any), a 1R-AA replica's copy goes
    /// when 1R-AA does.
    pub fn set_mechanism(&mut self, m: Mechanism) -> Result<(), SyncError> {
        // MR-AA is a VNF with members (their places and SFF ports made
        // first, see `set_members`); any other mechanism one without.
        if (m == Mechanism::MultiActive) == self.members.is_empty() {
            return Err(SyncError::Unready(if m == Mechanism::MultiActive {
                "MR-AA needs its members' places and SFF ports first"
            } else {
                "a VNF with MR-AA members is protected by MR-AA until they are removed"
            }));
        }
        if m == Mechanism::ActiveActive && self.replica.is_none() {
            return Err(SyncError::Unready(
                "1R-AA needs a replica namespace and standby port first",
            ));
        }
        if m != Mechanism::ActiveActive {
            if let Some(r) = self.replica.as_mut() {
                r.discard();
            }
        }
        self.mechanism = m;
        if m == Mechanism::ActiveStandby {
            self.standby.ready(&self.sync)
        } else {
            self.standby.let_go();
            Ok(())
        }
    }

    /// Runs the checkpoint protocol once: [`dump`](Self::dump),
    /// [`Dumped::store`](crate::vsm::checkpointer::Dumped::store),
    /// [`commit`](Self::commit).
    pub fn checkpoint(&mut self, sff: &SffClient) -> Result<CheckpointStats, SyncError> {
        let dumped = self.dump(sff)?;
        let stored = dumped.store(sff)?;
        self.commit(sff, stored)
    }

    /// Steps 1 to 5 of the checkpoint protocol (see
    /// [`Checkpointer::dump`]). MR-AA: member 0 is the one dumped, and the
    /// SFF pauses only it; the others go on serving, so the dump is
    /// background work.
    pub fn dump(&mut self, sff: &SffClient) -> Result<crate::vsm::checkpointer::Dumped, SyncError> {
        self.sync
            .dump(sff, self.mechanism == Mechanism::MultiActive)
    }

    /// Step 6 (see [`Checkpointer::commit`]), then the image goes where the
    /// mechanism wants it: the standby takes the image it will import, the
    /// replica is restored from it; 0R and MR-AA keep only the store's copy
    /// (MR-AA members are restored from the store when one fails).
    pub fn commit(
        &mut self,
        sff: &SffClient,
        stored: Stored,
    ) -> Result<CheckpointStats, SyncError> {
        let Committed {
            mut stats,
            dir,
            started,
        } = self.sync.commit(sff, stored)?;
        match (self.mechanism, self.replica.as_mut()) {
            (Mechanism::ActiveStandby, _) => self.standby.stage(&self.sync, stats.id, dir)?,
            (Mechanism::ActiveActive, Some(r)) => self.refreshing = Some(r.refresh(stats.id, dir)),
            _ => {
                let _ = std::fs::remove_dir_all(&dir);
            }
        }
        stats.total = started.elapsed();
        Ok(stats)
    }

    /// After a commit: what hears when the 1R-AA replica restored from it
    /// is ready (or failed), to wait for without the agent lock.
    pub fn replica_refresh(&mut self) -> Option<std::sync::mpsc::Receiver<()>> {
        self.refreshing.take()
    }

    /// The VNF process is gone: bring it back by its mechanism and let the
    /// SFF replay.
    pub fn recover(&mut self, sff: &SffClient) -> Result<RecoveryStats, SyncError> {
        if self.sync.retired {
            return Err(SyncError::Retired);
        }
        // The recovery path (and the CRIU restore it starts) before VNFs
        // and background CRIU work; CRIU gives the restored process its own
        // nice value back.
        let _urgent = Niceness::for_this_thread(URGENT_NICE);
        self.standby.hurry();
        if self.mechanism == Mechanism::MultiActive {
            return self.recover_member(sff, 0);
        }
        let started = Instant::now();
        let mut plan = None;
        if self.mechanism == Mechanism::ActiveActive {
            match self.fail_over(sff, started)? {
                FailOver::Done(stats) => return Ok(stats),
                FailOver::Refused(p) => plan = p,
            }
        }
        self.restore_from_store(sff, started, plan)
    }

    /// After a recovery, off its path: the CRIU workers the next checkpoint
    /// and (1R-AS) the next failure want, started ahead of time in the
    /// VNF's (possibly new) namespace.
    pub fn prepare(&mut self) {
        self.sync.prepare();
        if self.mechanism == Mechanism::ActiveStandby {
            self.standby.prepare(&self.sync.netns);
        }
    }

    /// Restores checkpoint `id`: from the standby when it holds that image,
    /// else from the store.
    fn restore(&mut self, id: CheckpointId) -> Result<u32, SyncError> {
        if self.mechanism == Mechanism::ActiveStandby {
            if let Some(pid) = self.standby.restore(&self.sync, id) {
                return pid;
            }
        }
        self.sync
            .restore_in(id, &self.sync.netns, self.sync.link_iface())
    }

    /// Starts the command afresh in namespace `netns` (running), as it was
    /// first started (environment, log, cgroup), in working directory
    /// `cwd` (an MR-AA member's own) or the VNF's.
    fn start_fresh_in(&self, netns: &Path, cwd: Option<&Path>) -> Result<u32, SyncError> {
        let mut start = self
            .start
            .clone()
            .ok_or(SyncError::Unready(
                "a VNF on another host is started there, not by its agent",
            ))?
            .placed(netns);
        if let Some(dir) = cwd {
            start.cwd = dir.to_path_buf();
        }
        Ok(start.run()?)
    }
}
