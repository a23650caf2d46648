//! The one error of the VNF State Manager's drivers, shared with the
//! Replica Manager one floor up (`fms::replica_manager`): it lives low so
//! that the two never import each other.

use nham_dataplane::hold::CheckpointId;
use thiserror::Error;

use super::checkpointer::DRAIN_TIMEOUT;
use super::criu;
use super::database::StoreError;
use crate::runtime::RuntimeError;

/// Errors of a VNF's checkpoints and recoveries (shared by the State
/// Synchronizer here and the Replica Manager in `fms`, which imports it).
#[derive(Debug, Error)]
pub enum SyncError {
    /// The SFF refused or is gone.
    #[error(transparent)]
    Sff(#[from] nham_sff::remote::RemoteError),
    /// CRIU failed.
    #[error(transparent)]
    Criu(#[from] criu::CriuError),
    /// The state database failed, or the checkpoint is corrupt.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The VNF did not drain its socket in time.
    #[error("VNF {pid} still had {rmem} bytes queued after {DRAIN_TIMEOUT:?}")]
    NotDrained {
        /// Process.
        pid: u32,
        /// Bytes queued.
        rmem: u64,
    },
    /// Frames for the VNF were still leaving the SFF's tx ring at every
    /// mark until the drain timeout.
    #[error("VNF {pid}: frames for it were still leaving the SFF after {DRAIN_TIMEOUT:?}")]
    InTransit {
        /// Process.
        pid: u32,
    },
    /// A frame reached the VNF's socket after the mark, while it was
    /// stopped for the dump: no image holds it, so the checkpoint failed.
    #[error("VNF {pid}: {rmem} bytes reached its socket during the dump, after the mark: checkpoint not kept")]
    LandedDuringDump {
        /// Process.
        pid: u32,
        /// Bytes queued after the dump.
        rmem: u64,
    },
    /// Signalling or starting the process failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Something else about the process failed.
    #[error("process: {0}")]
    Process(String),
    /// The VNF's host (another) was judged down: nothing more is asked of
    /// it there.
    #[error("its host {0} was judged down")]
    HostDown(String),
    /// No other host took a copy of the checkpoint: it is not committed
    /// (nothing released).
    #[error("checkpoint {id} not copied to another host: {why}")]
    NotCopied {
        /// The checkpoint.
        id: u64,
        /// Why not.
        why: String,
    },
    /// A receive ring of the VNF could not be read or realigned.
    #[error(transparent)]
    Ring(#[from] crate::vsm::ring::RingError),
    /// Frames sent to the VNF were lost on its link since the last
    /// checkpoint (it was cut off): a checkpoint now would count them as
    /// consumed. The VNF must be recovered, which replays them.
    #[error("{dropped} frames to the VNF were lost on its link (carrier {carrier}) since the last checkpoint: it must be recovered")]
    LinkLoss {
        /// Frames dropped since the last checkpoint.
        dropped: u64,
        /// Carrier now.
        carrier: bool,
    },
    /// The kernel dropped frames sent to the VNF at its full socket since
    /// it was started or restored: it missed input, and a checkpoint now
    /// would count that input as consumed. The VNF must be recovered (from
    /// the last checkpoint, taken before the drop), which replays it.
    #[error("the VNF's socket dropped {dropped} frames sent to it since it was started or restored: it must be recovered")]
    InputDropped {
        /// Frames dropped.
        dropped: u64,
    },
    /// The newest checkpoint was unusable and the older one could not be
    /// restored either: both reasons.
    #[error("{newest}; the older checkpoint {older} could not be restored either: {reason}")]
    FallbackFailed {
        /// Why the newest was given up.
        newest: String,
        /// The older checkpoint.
        older: CheckpointId,
        /// Why it failed too.
        reason: Box<SyncError>,
    },
    /// The agent was taken off its VNF.
    #[error("this agent no longer protects the VNF")]
    Retired,
    /// Someone else stopped the VNF (it is hung, as far as the chain can
    /// tell): it is not checkpointed, and not resumed either.
    #[error("VNF {0} is stopped by someone else: not checkpointed")]
    Stopped(u32),
    /// The mechanism asked for needs something the VNF does not have yet.
    #[error("{0}")]
    Unready(&'static str),
}
