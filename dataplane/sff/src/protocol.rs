//! The SFF's control protocol: one [`Request`] and one [`Response`] enum,
//! carried by the in-process channel ([`crate::Command`]) and, as JSON
//! lines, by the socket of an SFF process ([`crate::remote`]). The SFF
//! thread carries out each request between two forwarding rounds
//! (`Engine::execute`) and answers at once, except a VNF's failure
//! (`Failure`, `MemberFailed`, `FailOver`): that answer waits until what
//! was on its way to the failed VNF has left its port, while the rounds go
//! on.

use nham_dataplane::hold::{
    CheckpointId, CheckpointReport, Mark, MemberFailure, RecoveryReport, RestorePlan,
};
use serde::{Deserialize, Serialize};

use crate::{HopStatus, SffStats};

/// The version of this protocol. Raise it with any change to [`Request`]
/// or [`Response`] that an SFF of the previous version would misread.
pub const PROTOCOL_VERSION: u32 = 3;

/// What a client asks of the SFF. Hops are numbered from 0 in chain order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Request {
    /// The first message on a connection: the client's protocol version.
    Hello {
        version: u32,
    },
    BeginCheckpoint {
        hop: usize,
    },
    Quiesced {
        hop: usize,
        id: CheckpointId,
    },
    CheckpointDumped {
        hop: usize,
        id: CheckpointId,
    },
    CheckpointDone {
        hop: usize,
        id: CheckpointId,
    },
    CheckpointFailed {
        hop: usize,
        id: CheckpointId,
    },
    Failure {
        hop: usize,
    },
    Restored {
        hop: usize,
        from: Option<CheckpointId>,
    },
    /// Every frame sent to a VNF's (member's) port before send index
    /// `sent` has been read.
    SocketRead {
        hop: usize,
        member: usize,
        sent: u64,
    },
    /// What a VNF's (member's) socket can hold, as measured.
    SetCapacity {
        hop: usize,
        member: usize,
        capacity: nham_dataplane::window::VnfCapacity,
    },
    SetProtected {
        hop: usize,
        protected: bool,
    },
    /// 1R-AA failover in one exchange: the hop's VNF failed
    /// (`Failure`); if the SFF kept the packets since checkpoint `to` (the
    /// replica's; `None`: the initial state), the standby port becomes the
    /// hop's port and the replica, restored from `to`, gets the replay
    /// (`Restored`). Otherwise the hop stays failed and the answer carries
    /// its plan.
    FailOver {
        hop: usize,
        to: Option<CheckpointId>,
    },
    /// Open the port `spec` ahead, for an `AttachStandby` of the hop to
    /// come (it then only swaps it in): opening it takes tens of ms that
    /// the attach, and what waits for it, no longer spend. A port prepared
    /// before for the hop and not attached is closed. (Added within
    /// version 3, as `ReplaceMember`: an SFF from before it refuses it,
    /// and the attach opens the port itself.)
    PrepareStandby {
        hop: usize,
        spec: crate::PortSpec,
    },
    /// Open a standby port for the hop.
    AttachStandby {
        hop: usize,
        spec: crate::PortSpec,
    },
    /// The hop keeps members 1 to `keep` and adds members behind `add`
    /// (see [`Command::SetMembers`]).
    SetMembers {
        hop: usize,
        keep: usize,
        add: Vec<crate::PortSpec>,
    },
    /// An MR-AA member failed.
    MemberFailed {
        hop: usize,
        member: usize,
    },
    /// MR-AA member `member` (0: the hop's own port) of the hop, failed,
    /// comes back behind a new port (a new incarnation on another host,
    /// behind a tunnel of its own): the failed one's port is closed and
    /// `spec` takes its place. Refused unless the member is failed (its
    /// port may still be in use). (Added within version 3: an SFF from
    /// before it refuses it as a request it cannot read, and a running
    /// chain's SFF stays reachable by an upgraded `nhamd`.)
    ReplaceMember {
        hop: usize,
        member: usize,
        spec: crate::PortSpec,
    },
    /// An MR-AA member was restored from `from`.
    MemberRestored {
        hop: usize,
        member: usize,
        from: Option<CheckpointId>,
    },
    /// Counters.
    Stats,
    /// The process and every hop's state.
    Status,
    /// Stop forwarding and exit.
    Shutdown,
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Response {
    /// The server's protocol version (the connection is closed after it
    /// when it is not the client's).
    Hello {
        version: u32,
    },
    Checkpoint(CheckpointId),
    Mark(Mark),
    Done(CheckpointReport),
    Plan(RestorePlan),
    FailOver(FailOverOutcome),
    MemberFailure(MemberFailure),
    Recovered(RecoveryReport),
    Count(u64),
    Capacity(nham_dataplane::window::VnfCapacity),
    Stats(SffStats),
    Status(SffStatus),
    Ok,
    /// Refused, and why.
    Refused(String),
    /// Refused for now, and why: the hop is busy with something that ends
    /// by itself (a checkpoint under way, a member catching up; see
    /// `HoldError::is_transient`). The same request may succeed later.
    Busy(String),
}

/// What [`Request::FailOver`] did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FailOverOutcome {
    /// The hop runs on the replica's port; the report of its replay.
    Switched(RecoveryReport),
    /// The hop failed and stays failed: restore by `plan` instead.
    NotSwitched {
        /// What to restore (the answer to `Failure`).
        plan: RestorePlan,
        /// Why the replica could not take over.
        why: String,
    },
}

/// A running SFF process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SffStatus {
    /// Its process id.
    pub pid: u32,
    /// Each hop's state, in chain order.
    pub hops: Vec<HopStatus>,
}
