//! What the daemon tells its watchers, in its own words: one [`VnfEvent`]
//! per thing that happened to a chain or one of its VNFs. The API layer
//! encodes them (`nham.v1` `WatchEventsResponse`, in `api::encode`).

use crate::fms::replica_manager::RecoveryStats;
use crate::vsm::checkpointer::CheckpointStats;

/// An event of chain `chain` (and VNF `vnf`, empty for the chain's own).
#[derive(Debug, Clone)]
pub struct VnfEvent {
    /// Its number: 1, 2, ... in the order the daemon sent them (0 until
    /// it is sent), for a watcher to resume after a disconnect.
    pub id: u64,
    /// When, in nanoseconds since the Unix epoch.
    pub time_unix_nanos: u64,
    /// The chain.
    pub chain: String,
    /// The VNF, if the event is one of a VNF.
    pub vnf: String,
    /// What happened.
    pub event: Event,
}

/// What happened.
#[derive(Debug, Clone)]
pub enum Event {
    /// The chain was created.
    ChainCreated,
    /// The chain was deleted.
    ChainDeleted,
    /// A failure was detected: why, and how long after the fault (or the
    /// process's exit).
    FailureDetected {
        /// The cause, as logs name it.
        cause: String,
        /// From the fault (or exit) to the detection.
        detection_ms: f64,
    },
    /// The recovery of a failure began.
    RecoveryStarted,
    /// A recovery finished: what it did, and how long from the failure to
    /// the VNF running again.
    RecoveryFinished {
        /// What the Replica Manager did.
        stats: RecoveryStats,
        /// From the failure to the VNF running again.
        recovery_ms: f64,
        /// When it ran again (ns since the Unix epoch; 0: not known).
        running_unix_nanos: u64,
    },
    /// A recovery failed.
    RecoveryFailed {
        /// Why.
        reason: String,
    },
    /// A checkpoint was committed.
    CheckpointTaken(CheckpointStats),
    /// A checkpoint failed (nothing released on its account).
    CheckpointFailed {
        /// Why.
        reason: String,
    },
    /// Replayed outputs differed from the originals.
    NonDeterminismDetected {
        /// New ones.
        outputs: u64,
        /// All so far.
        total: u64,
    },
    /// The kernel dropped frames at a VNF's full socket.
    VnfInputDropped {
        /// The MR-AA member (0: the VNF's own process).
        member: u32,
        /// Frames dropped.
        frames: u64,
        /// Kernel charge in flight to it allowed from now on.
        budget_bytes: u64,
    },
    /// A host of the cluster was judged down, heard again, or left.
    HostChanged {
        /// Its name.
        host: String,
        /// What it is now (`Joining` once it left).
        liveness: crate::cluster::membership::Liveness,
        /// Its registration is gone.
        left: bool,
        /// For a host judged down: from when it was last heard.
        detection_ms: f64,
    },
}
