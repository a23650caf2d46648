//! The Hold/Release core: what the SFF keeps for each VNF, when it lets go,
//! and what it replays after a failure. No I/O: every method is an event fed
//! in (`handle_*`) or a question asked (`poll_*`), with time passed in.
//!
//! # Per hop
//!
//! A [`Hop`] is one VNF's place on the chain. It owns:
//!
//! - a [`BufferRx`]: packets for the VNF. Each gets a hop-local *input index*
//!   (0, 1, 2, ...). Packets are *pending* until delivered and *held* from
//!   delivery until a checkpoint that includes them commits; only then are
//!   they released. Capacity counts both; when full, [`Hop::handle_input`]
//!   hands the packet back ([`Backpressure`]) and nothing is dropped.
//! - a [`BufferTx`]: what the VNF sent back, waiting to move on. Each output
//!   of the VNF gets a hop-local *output index* in the order the VNF emitted
//!   it. A deterministic FIFO VNF restored to a checkpoint taken after it had
//!   emitted `k` outputs emits output `k` next, so an output whose index is
//!   below the number already accepted is a replay and is suppressed
//!   (docs/design.md invariant 3). Using the output index rather than the chain
//!   sequence number keeps this exact when a VNF drops packets or emits
//!   several per input.
//!
//! # What a checkpoint includes
//!
//! docs/design.md rejects the paper's rule ("release up to the last packet seen in
//! buffer_tx"): a packet the VNF consumed and dropped never appears in
//! buffer_tx, yet the checkpoint holds its effect. NHAM defines the content
//! of a checkpoint by what the VNF *consumed* before it was frozen:
//!
//! 1. [`Hop::begin_checkpoint`]: stop delivering (phase `Draining`).
//! 2. The I/O layer waits until the VNF has consumed everything delivered and
//!    every output it made has reached the SFF, then reports
//!    [`Hop::handle_quiesced`]. The core records the [`Mark`]: inputs
//!    consumed and outputs emitted at that instant. The VNF is frozen and
//!    dumped (phase `Dumping`).
//! 3. Optionally [`Hop::handle_dumped`]: the image is taken and the VNF runs
//!    again, but the image is not durable yet (it is being compressed and
//!    stored; phase `Storing`). Delivery resumes: packets delivered now are
//!    after the mark and stay held; nothing is released.
//! 4. [`Hop::handle_checkpoint_complete`]: the image is durable. Held packets
//!    below the mark are released; the mark becomes the restore point;
//!    delivery resumes. A failed dump or store
//!    ([`Hop::handle_checkpoint_failed`]) or a VNF failure meanwhile releases
//!    nothing.
//!
//! [`ReleaseRule::LastEmitted`] implements the paper's rule only so that the
//! model tests can show it losing exactly-once; never use it in production.
//!
//! # Failure and recovery
//!
//! [`Hop::handle_failure`] stops delivery and forwarding for the hop (chain
//! state `recovering`, docs/design.md invariant 4), aborts any checkpoint, bumps
//! the hop's *epoch* and names the checkpoint to restore. Outputs still in
//! flight from the failed incarnation carry the old epoch and are discarded
//! as stale: everything they could contain after the restore point will be
//! produced again by the replay. [`Hop::handle_restored`] rewinds delivery to
//! the mark's input index and the output counter to its output index, so
//! every held packet after the checkpoint is delivered again, in order
//! (invariant 2).
//!
//! # MR-AA members
//!
//! A hop may have M *members* ([`Hop::set_members`]): copies of its VNF, fed
//! the same ordered input, each numbering its own outputs. The first copy of
//! each output index moves on; later ones are duplicates (or `Divergent`).
//! A member's failure ([`Hop::handle_member_failed`]) stops nothing while
//! another member is alive; it is restored from the committed (or fallback)
//! checkpoint and *catches up* ([`Hop::poll_catch_up`]): it is sent the held
//! packets from that checkpoint's mark until it reaches the others, then is
//! live again. A checkpoint dumps member 0 and pauses *only it*: it is
//! [`MemberState::Paused`] (sent nothing) while it drains and is dumped,
//! the others go on serving, and after the dump it catches up like a
//! restored member. The mark is member 0's (its cursor and output count);
//! the members are deterministic copies, so it is the mark of any member
//! restored from that image. Release never passes what a catching-up member
//! still needs. Only when the last member fails does the hop fail and
//! recover as any other.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;

/// Identifies a checkpoint of one hop; increasing, never reused.
pub type CheckpointId = u64;

/// Misuse of the state machine by the caller (an I/O layer bug or a race it
/// must handle, such as a dump finishing after the VNF failed).
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum HoldError {
    /// A checkpoint is already under way.
    #[error("checkpoint {0} is already in progress")]
    CheckpointInProgress(CheckpointId),
    /// The hop is recovering; it cannot be checkpointed.
    #[error("the hop is recovering")]
    Recovering,
    /// The hop is running; there is nothing to restore.
    #[error("the hop is not recovering")]
    NotRecovering,
    /// The event names a checkpoint that is not the one in this phase.
    #[error("checkpoint {0} is not in the phase this event needs")]
    WrongCheckpoint(CheckpointId),
    /// A chain needs at least one hop.
    #[error("a chain needs at least one hop")]
    EmptyChain,
    /// A capacity of zero would block the chain forever.
    #[error("buffer capacity must be at least 1")]
    ZeroCapacity,
    /// An output of the VNF arrived while it was frozen for checkpoint
    /// `id`: it was emitted before the freeze but reached the SFF after the
    /// mark was taken, so the mark undercounts the outputs the image has
    /// already made. The checkpoint must fail (a restore from it would
    /// renumber the next output onto this one and suppress it).
    #[error("an output of the VNF arrived after checkpoint {0}'s mark: the mark is wrong")]
    OutputAfterMark(CheckpointId),
    /// No such member, or it is in the wrong state for the event.
    #[error("member {0} does not exist or is not in a state for this")]
    NoMember(usize),
    /// Members are set before anything is delivered.
    #[error("members must be set before the first delivery")]
    MembersAfterStart,
    /// The member is not live now (failed, catching up after a restore, or
    /// paused for a checkpoint): the event needs it live.
    #[error("member {0} is not live now (failed, catching up or paused): try again")]
    MemberNotLive(usize),
}

impl HoldError {
    /// The refusal ends by itself (a checkpoint finishes, a member catches
    /// up, a recovery ends): the same event may be accepted later. Every other error is
    /// final for that event.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::CheckpointInProgress(_) | Self::MemberNotLive(_) | Self::Recovering
        )
    }
}

/// A packet handed back because the buffer it was meant for is full. The
/// caller keeps it (upstream buffer, NIC ring) and tries again later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backpressure<P>(pub P);

/// Which rule decides what a checkpoint includes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum ReleaseRule {
    /// NHAM's rule: everything the VNF consumed before it was frozen.
    #[default]
    Consumed,
    /// The paper's rule: up to the last packet seen in buffer_tx. Wrong for
    /// VNFs that drop packets; kept only to demonstrate that in tests.
    LastEmitted,
}

/// Sizing and policy of one hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HopConfig {
    /// Packets `buffer_rx` can hold, pending and held together.
    pub rx_capacity: usize,
    /// Delivery to the VNF pauses while `buffer_tx` holds this many packets
    /// (outputs already in flight are still accepted, so the buffer may
    /// exceed it by the VNF's in-flight outputs; `tx_peak` shows by how much).
    pub tx_capacity: usize,
    /// What a checkpoint includes.
    pub release_rule: ReleaseRule,
    /// Keep the checkpoint before the committed one restorable too: packets
    /// are released only up to *its* mark, so that a committed image found
    /// corrupt at restore time can be replaced by the older one, with a
    /// longer replay. Costs the packets of one more checkpoint interval.
    #[serde(default)]
    pub keep_fallback: bool,
}

impl Default for HopConfig {
    fn default() -> Self {
        Self {
            rx_capacity: 4096,
            tx_capacity: 1024,
            release_rule: ReleaseRule::Consumed,
            keep_fallback: false,
        }
    }
}

/// The packets for one VNF, pending and held, in input-index order.
#[derive(Debug, Clone)]
pub struct BufferRx<P> {
    entries: VecDeque<(u64, P)>,
    /// Input index of `entries[0]`.
    base: u64,
    /// Input index of the next packet to deliver.
    next_deliver: u64,
    capacity: usize,
    /// Sequence number of the packet at input index `base - 1`, the last
    /// one released: a mark taken with nothing delivered since still names
    /// it as the last input consumed (a VNF frozen mid-input across two
    /// checkpoints finishes it after a restore from the second).
    released_last: Option<u64>,
}

impl<P> BufferRx<P> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity),
            base: 0,
            next_deliver: 0,
            capacity,
            released_last: None,
        }
    }

    /// Packets in the buffer, pending and held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the buffer holds nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True when one more packet would be refused.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    /// Delivered and not yet released.
    pub fn held(&self) -> usize {
        (self.next_deliver - self.base) as usize
    }

    /// Not yet delivered (or to be delivered again).
    pub fn pending(&self) -> usize {
        self.entries.len() - self.held()
    }

    /// Input index of the oldest packet still in the buffer.
    pub fn base(&self) -> u64 {
        self.base
    }

    /// Input index of the next packet to deliver.
    pub fn next_deliver(&self) -> u64 {
        self.next_deliver
    }

    fn end(&self) -> u64 {
        self.base + self.entries.len() as u64
    }

    #[inline]
    fn push(&mut self, seq: u64, packet: P) -> Result<(), Backpressure<P>> {
        if self.is_full() {
            return Err(Backpressure(packet));
        }
        self.entries.push_back((seq, packet));
        Ok(())
    }

    fn release_before(&mut self, index: u64, mut release: impl FnMut(P)) -> u64 {
        let index = index.min(self.next_deliver);
        let n = index.saturating_sub(self.base);
        for (seq, p) in self.entries.drain(..n as usize) {
            self.released_last = Some(seq);
            release(p);
        }
        self.base += n;
        n
    }

    /// Sequence number of the input at index `index`, held or the last one
    /// released.
    fn seq_at(&self, index: u64) -> Option<u64> {
        if index.checked_add(1) == Some(self.base) {
            return self.released_last;
        }
        let i = index.checked_sub(self.base)?;
        self.entries.get(i as usize).map(|(seq, _)| *seq)
    }

    /// Input index just past the delivered packets whose sequence number is
    /// at most `seq` (the paper's rule).
    fn index_after_seq(&self, seq: Option<u64>) -> u64 {
        let Some(seq) = seq else { return self.base };
        let delivered = self.held();
        let n = self
            .entries
            .iter()
            .take(delivered)
            .take_while(|(s, _)| *s <= seq)
            .count();
        self.base + n as u64
    }
}

/// What one VNF sent back, in output-index order, waiting to move on.
#[derive(Debug, Clone)]
pub struct BufferTx<P> {
    entries: VecDeque<(u64, P)>,
    /// Output index the current incarnation's next output gets.
    next_output: u64,
    /// Outputs with an index below this were accepted (queued or passed on).
    accepted: u64,
    capacity: usize,
    last_output_seq: Option<u64>,
    peak: usize,
    /// Digest of each accepted output from index `digest_base` on: those a
    /// restore may make the VNF emit again (everything from the committed
    /// mark), to tell a replay that differs from the original.
    digests: VecDeque<u64>,
    digest_base: u64,
}

impl<P> BufferTx<P> {
    fn new(capacity: usize) -> Self {
        Self {
            entries: VecDeque::with_capacity(capacity * 2),
            next_output: 0,
            accepted: 0,
            capacity,
            last_output_seq: None,
            peak: 0,
            digests: VecDeque::new(),
            digest_base: 0,
        }
    }

    /// Forgets the digests of outputs below `index` (no restore can make the
    /// VNF emit them again).
    fn trim_digests(&mut self, index: u64) {
        let n = index
            .saturating_sub(self.digest_base)
            .min(self.digests.len() as u64);
        self.digests.drain(..n as usize);
        self.digest_base += n;
    }

    /// Packets waiting to move on.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Outputs accepted from this hop so far (the duplicate-suppression mark).
    pub fn accepted(&self) -> u64 {
        self.accepted
    }

    /// The most packets this buffer has held at once.
    pub fn peak(&self) -> usize {
        self.peak
    }
}

/// Whether the hop's VNF is serving traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HopState {
    /// Traffic flows through the hop.
    Running,
    /// The VNF failed; it is being brought back. Nothing is delivered to it
    /// and nothing advances past it.
    Recovering {
        /// When the failure was handled.
        since: Instant,
    },
}

/// The position in a VNF's input and output streams a checkpoint captures.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Default, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Mark {
    /// Inputs with an index below this were consumed before the freeze.
    pub consumed: u64,
    /// Outputs with an index below this were emitted before the freeze.
    pub emitted: u64,
    /// The epoch the VNF ran in when frozen.
    #[serde(default)]
    pub epoch: u32,
    /// Sequence number of the last output emitted before the freeze.
    #[serde(default)]
    pub answered: Option<u64>,
    /// Sequence number of the last input consumed before the freeze. The
    /// inputs after `answered` up to this one were read and not answered
    /// when the VNF was frozen: work in the middle, held by the image. A
    /// VNF restored from it answers them first, stamped with `epoch`.
    #[serde(default)]
    pub last_consumed: Option<u64>,
}

impl Mark {
    /// Whether an output stamped `epoch` answering input `seq` finishes
    /// the work this mark froze in the middle: the inputs from the last
    /// answered (a VNF frozen between two outputs of one input emits the
    /// rest after the restore) to the last consumed, in the mark's epoch.
    pub fn covers(&self, epoch: u32, seq: u64) -> bool {
        epoch == self.epoch
            && self.answered.is_none_or(|a| seq >= a)
            && self.last_consumed.is_some_and(|l| seq <= l)
    }
}

/// A committed checkpoint: the restore point of a hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommittedCheckpoint {
    /// Its identifier.
    pub id: CheckpointId,
    /// What it includes.
    pub mark: Mark,
}

/// The checkpoint protocol's phase for one hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointPhase {
    /// No checkpoint under way.
    Idle,
    /// Delivery stopped; waiting for the VNF to consume what it was given.
    Draining {
        /// The checkpoint.
        id: CheckpointId,
        /// When it began.
        started: Instant,
    },
    /// The VNF is frozen and being dumped; `mark` is what the image includes.
    Dumping {
        /// The checkpoint.
        id: CheckpointId,
        /// When it began.
        started: Instant,
        /// What it includes.
        mark: Mark,
    },
    /// The image is taken and the VNF runs again; the image is being made
    /// durable. Delivery goes on; nothing is released until it completes.
    Storing {
        /// The checkpoint.
        id: CheckpointId,
        /// When it began.
        started: Instant,
        /// What it includes.
        mark: Mark,
    },
}

impl CheckpointPhase {
    /// Whether delivery to the VNF is stopped by this phase.
    #[inline]
    pub fn blocks_delivery(&self) -> bool {
        matches!(self, Self::Draining { .. } | Self::Dumping { .. })
    }

    /// The checkpoint under way, if any.
    pub fn id(&self) -> Option<CheckpointId> {
        match *self {
            Self::Idle => None,
            Self::Draining { id, .. } | Self::Dumping { id, .. } | Self::Storing { id, .. } => {
                Some(id)
            }
        }
    }
}

/// What a delivery hands the I/O layer: send this packet to the VNF,
/// stamped with this epoch.
#[derive(Debug)]
pub struct Delivery<'a, P> {
    /// Per-chain sequence number.
    pub seq: u64,
    /// Epoch to stamp (the VNF copies it to its outputs).
    pub epoch: u32,
    /// Hop-local input index.
    pub index: u64,
    /// True if this packet was delivered before (a replay).
    pub replay: bool,
    /// The packet.
    pub packet: &'a P,
}

/// What became of an output the VNF sent back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputDisposition {
    /// New output; queued in `buffer_tx`.
    Accepted,
    /// A replay of an output already accepted; suppressed.
    Duplicate,
    /// From an incarnation that has since failed; discarded.
    Stale,
    /// A replay of an output already accepted, but different from it: the
    /// VNF is not deterministic. Suppressed like a duplicate (the first copy
    /// stands; a second, different one is never passed on) and counted.
    Divergent,
}

/// Frames a catching-up MR-AA member may be sent in one turn at least
/// (see [`Hop::catch_up_turns`]).
pub const CATCH_UP_TURN: usize = 8;

/// Where one MR-AA member stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberState {
    /// Gets every delivery; its outputs count.
    Live,
    /// Restored from a checkpoint; being sent the held packets from input
    /// index `cursor` on, until it reaches the others.
    CatchingUp {
        /// Input index of the next packet to send it.
        cursor: u64,
    },
    /// Member 0 during a checkpoint (draining, dumped): nothing is sent to
    /// it; it resumes from input index `cursor`.
    Paused {
        /// Input index of the next packet to send it.
        cursor: u64,
    },
    /// Failed: nothing is sent to it; its outputs are stale.
    Failed,
}

#[derive(Debug, Clone, Copy)]
struct Member {
    state: MemberState,
    /// Output index its next output gets.
    next_output: u64,
    /// Restored from a mark with work in the middle: as
    /// [`Hop::unfinished`], for this member.
    unfinished: Option<Mark>,
    /// Sequence number of its last output (a mark's `answered`).
    last_output_seq: Option<u64>,
}

/// What a member's failure did to its hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberFailure {
    /// Another member is alive: the hop goes on; restore this one and let
    /// it catch up.
    Continues,
    /// It was the last: the hop failed (as [`Hop::handle_failure`]).
    HopFailed(RestorePlan),
}

/// What to restore after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RestorePlan {
    /// The checkpoint to restore; `None` means the VNF's initial state.
    pub checkpoint: Option<CheckpointId>,
    /// An older checkpoint that may be restored instead if `checkpoint`'s
    /// image turns out unusable (see [`HopConfig::keep_fallback`]).
    #[serde(default)]
    pub fallback: Option<CheckpointId>,
    /// The epoch the restored incarnation runs in.
    pub epoch: u32,
}

impl RestorePlan {
    /// Whether a copy of the VNF restored from checkpoint `to` (`None`:
    /// the initial state) may take over the hop: the hop keeps the packets
    /// since it, so the replay makes it whole (the 1R-AA failover's
    /// admission). The restore point does, and so does its fallback.
    pub fn restores(&self, to: Option<CheckpointId>) -> bool {
        to == self.checkpoint || (to.is_some() && to == self.fallback)
    }
}

/// Outcome of a committed checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CheckpointReport {
    /// The checkpoint.
    pub id: CheckpointId,
    /// The checkpoint restorable besides it (its fallback): with `id`, the
    /// only images that must be kept.
    #[serde(default)]
    pub fallback: Option<CheckpointId>,
    /// Packets released from `buffer_rx`.
    pub released: u64,
    /// Time delivery was paused (begin to complete).
    pub pause: Duration,
}

/// Outcome of a completed recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryReport {
    /// Packets that will be delivered again.
    pub replay: u64,
    /// Failure handled to restored.
    pub duration: Duration,
}

/// Counters of one hop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HopStats {
    /// Packets delivered to the VNF, replays included.
    pub delivered: u64,
    /// Of which replays.
    pub redelivered: u64,
    /// Outputs accepted into `buffer_tx`.
    pub accepted: u64,
    /// Replayed outputs suppressed.
    pub duplicates: u64,
    /// Of the replayed outputs, those that differed from the original
    /// (non-determinism); suppressed too.
    pub divergent: u64,
    /// Outputs of failed incarnations discarded.
    pub stale: u64,
    /// Packets released from `buffer_rx`.
    pub released: u64,
    /// Packets refused because `buffer_rx` was full.
    pub rx_backpressure: u64,
    /// Checkpoints committed.
    pub checkpoints: u64,
    /// Checkpoints that failed or were aborted.
    pub checkpoint_failures: u64,
    /// Failures handled.
    pub failures: u64,
    /// Recoveries completed.
    pub recoveries: u64,
}

/// One VNF's place on the chain: its buffers, checkpoint protocol and
/// recovery state.
#[derive(Debug, Clone)]
pub struct Hop<P> {
    rx: BufferRx<P>,
    tx: BufferTx<P>,
    state: HopState,
    phase: CheckpointPhase,
    committed: Option<CommittedCheckpoint>,
    /// The checkpoint committed before `committed`, still restorable
    /// ([`HopConfig::keep_fallback`]).
    fallback: Option<CommittedCheckpoint>,
    keep_fallback: bool,
    epoch: u32,
    next_checkpoint: CheckpointId,
    delivered_high: u64,
    rule: ReleaseRule,
    stats: HopStats,
    /// An output arrived while the VNF was frozen for the checkpoint under
    /// way (see [`HoldError::OutputAfterMark`]).
    late_output: bool,
    /// MR-AA members (empty: one VNF, numbered by `tx.next_output`).
    members: Vec<Member>,
    /// Restored from a mark with work in the middle (see
    /// [`Mark::last_consumed`]): outputs stamped with the mark's epoch that
    /// answer those inputs are the restored incarnation's, until its first
    /// output in the current epoch.
    unfinished: Option<Mark>,
}

impl<P> Hop<P> {
    /// A hop whose VNF starts in its initial state, running.
    pub fn new(config: HopConfig) -> Result<Self, HoldError> {
        if config.rx_capacity == 0 || config.tx_capacity == 0 {
            return Err(HoldError::ZeroCapacity);
        }
        Ok(Self {
            rx: BufferRx::new(config.rx_capacity),
            tx: BufferTx::new(config.tx_capacity),
            state: HopState::Running,
            phase: CheckpointPhase::Idle,
            committed: None,
            fallback: None,
            keep_fallback: config.keep_fallback,
            epoch: 0,
            next_checkpoint: 1,
            delivered_high: 0,
            rule: config.release_rule,
            stats: HopStats::default(),
            late_output: false,
            members: Vec::new(),
            unfinished: None,
        })
    }

    /// Makes this an MR-AA hop of `m` members, all live and in their
    /// initial state (`m` < 2: an ordinary hop). Only before the first
    /// delivery.
    pub fn set_members(&mut self, m: usize) -> Result<(), HoldError> {
        if self.delivered_high > 0 || self.tx.next_output > 0 {
            return Err(HoldError::MembersAfterStart);
        }
        let member = Member {
            state: MemberState::Live,
            next_output: 0,
            unfinished: None,
            last_output_seq: None,
        };
        self.members = if m >= 2 { vec![member; m] } else { Vec::new() };
        Ok(())
    }

    /// Changes a running hop's members (a mechanism change at runtime, to,
    /// from or within MR-AA). From an ordinary hop, its VNF becomes member
    /// 0 and its output stream goes on as member 0's; members added are
    /// `Failed` until restored ([`handle_member_restored`](Self::handle_member_restored):
    /// from the restore point, then they catch up); the last members are
    /// the ones removed, and what they still send is stale. `m` < 2: an
    /// ordinary hop again, member 0 (which must be live) its VNF, its
    /// output stream going on as the VNF's. Only while the hop runs with
    /// no checkpoint under way, and never leaving no member alive.
    pub fn resize_members(&mut self, m: usize) -> Result<(), HoldError> {
        if !matches!(self.state, HopState::Running) {
            return Err(HoldError::Recovering);
        }
        if let Some(id) = self.phase.id() {
            return Err(HoldError::CheckpointInProgress(id));
        }
        let m = if m < 2 { 0 } else { m };
        if m == self.members.len() {
            return Ok(());
        }
        if m == 0 {
            let first = self.members[0];
            if first.state != MemberState::Live {
                return Err(HoldError::MemberNotLive(0));
            }
            self.tx.next_output = first.next_output;
            self.tx.last_output_seq = first.last_output_seq;
            self.unfinished = first.unfinished;
            self.members.clear();
            return Ok(());
        }
        if m < self.members.len() && !self.members[..m].iter().any(Self::member_alive) {
            return Err(HoldError::MemberNotLive(m));
        }
        if self.members.is_empty() {
            self.members.push(Member {
                state: MemberState::Live,
                next_output: self.tx.next_output,
                unfinished: self.unfinished.take(),
                last_output_seq: self.tx.last_output_seq,
            });
        }
        self.members.resize(
            m,
            Member {
                state: MemberState::Failed,
                next_output: 0,
                unfinished: None,
                last_output_seq: None,
            },
        );
        Ok(())
    }

    /// Whether the checkpoint under way stops delivery to the hop: for an
    /// ordinary hop while it drains and is dumped; for an MR-AA hop never
    /// (only member 0 is paused).
    fn delivery_paused(&self) -> bool {
        self.members.is_empty() && self.phase.blocks_delivery()
    }

    /// MR-AA members (none for an ordinary hop).
    pub fn members(&self) -> impl ExactSizeIterator<Item = MemberState> + '_ {
        self.members.iter().map(|m| m.state)
    }

    /// Member `k`'s state.
    pub fn member(&self, k: usize) -> Option<MemberState> {
        self.members.get(k).map(|m| m.state)
    }

    fn member_alive(m: &Member) -> bool {
        !matches!(m.state, MemberState::Failed)
    }

    /// Member `k` failed. The hop goes on while another member is alive;
    /// after the last, the hop fails.
    pub fn handle_member_failed(
        &mut self,
        k: usize,
        now: Instant,
    ) -> Result<MemberFailure, HoldError> {
        let m = self.members.get_mut(k).ok_or(HoldError::NoMember(k))?;
        m.state = MemberState::Failed;
        // Member 0 is the one a checkpoint dumps: it is void.
        if k == 0 && !matches!(self.phase, CheckpointPhase::Idle) {
            self.phase = CheckpointPhase::Idle;
            self.stats.checkpoint_failures += 1;
        }
        if self.members.iter().any(Self::member_alive) {
            Ok(MemberFailure::Continues)
        } else {
            Ok(MemberFailure::HopFailed(self.handle_failure(now)))
        }
    }

    /// Member `k` (failed) runs again, restored from checkpoint `from`
    /// (the committed one or the fallback; `None`: the initial state, only
    /// while nothing was released). If the hop had failed, it recovers
    /// with this member (as [`handle_restored_from`](Self::handle_restored_from));
    /// otherwise the member catches up from `from`'s mark.
    pub fn handle_member_restored(
        &mut self,
        k: usize,
        from: Option<CheckpointId>,
        now: Instant,
    ) -> Result<RecoveryReport, HoldError> {
        match self.members.get(k) {
            Some(m) if m.state == MemberState::Failed => {}
            _ => return Err(HoldError::NoMember(k)),
        }
        if matches!(self.state, HopState::Recovering { .. }) {
            let report = self.handle_restored_from(from, now)?;
            self.members[k] = Member {
                state: MemberState::Live,
                next_output: self.tx.next_output,
                unfinished: self.unfinished,
                last_output_seq: self.tx.last_output_seq,
            };
            return Ok(report);
        }
        let mark = match from {
            None if self.rx.base == 0 && self.tx.digest_base == 0 => Mark::default(),
            None => return Err(HoldError::WrongCheckpoint(0)),
            Some(id) => [self.committed, self.fallback]
                .into_iter()
                .flatten()
                .find(|c| c.id == id && c.id != 0)
                .map(|c| c.mark)
                .ok_or(HoldError::WrongCheckpoint(id))?,
        };
        if mark.consumed < self.rx.base {
            return Err(HoldError::WrongCheckpoint(from.unwrap_or(0)));
        }
        let state = if mark.consumed >= self.rx.next_deliver {
            MemberState::Live
        } else {
            MemberState::CatchingUp {
                cursor: mark.consumed,
            }
        };
        self.members[k] = Member {
            state,
            next_output: mark.emitted,
            unfinished: (mark.epoch != self.epoch && mark.last_consumed.is_some()).then_some(mark),
            last_output_seq: mark.answered,
        };
        self.stats.recoveries += 1;
        Ok(RecoveryReport {
            replay: self.rx.next_deliver - mark.consumed,
            duration: Duration::ZERO,
        })
    }

    /// Which catching-up members get a turn this round, and how many
    /// frames each may be sent (`(member, max)` for
    /// [`poll_catch_up`](Self::poll_catch_up)). Every round, and more than
    /// the live members were given (`live_delivered`): twice that, at
    /// least [`CATCH_UP_TURN`]. Release never passes a member still
    /// catching up, so one that only got the rounds the live members left
    /// idle fell further behind under steady load until the hold was full
    /// and the ingress dropped. Offered up to twice the live rate, it gains
    /// on them as far as its flow window and the CPU let it (live members
    /// held back by their own windows leave it room).
    pub fn catch_up_turns(
        &self,
        live_delivered: usize,
    ) -> impl Iterator<Item = (usize, usize)> + '_ {
        let max = live_delivered.saturating_mul(2).max(CATCH_UP_TURN);
        self.members
            .iter()
            .enumerate()
            .filter(|(_, m)| matches!(m.state, MemberState::CatchingUp { .. }))
            .map(move |(k, _)| (k, max))
    }

    /// Sends catching-up member `k` up to `max` of the packets it missed,
    /// in order, calling `deliver` for each; once it has them all it is
    /// live (and gets every delivery from then on). Returns how many.
    pub fn poll_catch_up(
        &mut self,
        k: usize,
        max: usize,
        mut deliver: impl FnMut(Delivery<'_, P>),
    ) -> usize {
        if !matches!(self.state, HopState::Running) || self.delivery_paused() {
            return 0;
        }
        let Some(MemberState::CatchingUp { cursor }) = self.member(k) else {
            return 0;
        };
        let n = max.min((self.rx.next_deliver - cursor) as usize);
        let start = (cursor - self.rx.base) as usize;
        for (i, (seq, packet)) in self.rx.entries.range(start..start + n).enumerate() {
            deliver(Delivery {
                seq: *seq,
                epoch: self.epoch,
                index: cursor + i as u64,
                replay: true,
                packet,
            });
        }
        let cursor = cursor + n as u64;
        self.members[k].state = if cursor >= self.rx.next_deliver {
            MemberState::Live
        } else {
            MemberState::CatchingUp { cursor }
        };
        self.stats.redelivered += n as u64;
        self.stats.delivered += n as u64;
        n
    }

    /// Member `k` sent a packet back (see
    /// [`handle_output_with`](Self::handle_output_with)); it is numbered
    /// in the member's own output stream.
    pub fn handle_member_output(
        &mut self,
        k: usize,
        epoch: u32,
        seq: u64,
        digest: u64,
        packet: impl FnOnce() -> P,
    ) -> OutputDisposition {
        let alive = self.members.get(k).is_some_and(Self::member_alive);
        // A restored member finishing the input its image was frozen in
        // (in that input's epoch) is as a restored VNF is: not stale.
        let unfinished = self
            .members
            .get(k)
            .and_then(|m| m.unfinished)
            .is_some_and(|m| m.covers(epoch, seq));
        if !alive
            || (epoch != self.epoch && !unfinished)
            || !matches!(self.state, HopState::Running)
        {
            self.stats.stale += 1;
            return OutputDisposition::Stale;
        }
        if epoch == self.epoch {
            self.members[k].unfinished = None;
        }
        self.members[k].last_output_seq = Some(seq);
        let index = self.members[k].next_output;
        self.members[k].next_output += 1;
        self.tx.next_output = self.tx.next_output.max(index + 1);
        // Only member 0 is frozen for a checkpoint: an output of its after
        // the mark makes the mark wrong; the others' are business as usual.
        if k == 0 && matches!(self.phase, CheckpointPhase::Dumping { .. }) {
            self.late_output = true;
        }
        self.accept_output(index, seq, digest, packet)
    }

    /// The packets for the VNF.
    pub fn rx(&self) -> &BufferRx<P> {
        &self.rx
    }

    /// What the VNF sent back.
    pub fn tx(&self) -> &BufferTx<P> {
        &self.tx
    }

    /// Running or recovering.
    pub fn state(&self) -> HopState {
        self.state
    }

    /// The checkpoint protocol's phase.
    pub fn checkpoint_phase(&self) -> CheckpointPhase {
        self.phase
    }

    /// The restore point (`None`: the initial state).
    pub fn committed(&self) -> Option<CommittedCheckpoint> {
        self.committed
    }

    /// The older restorable checkpoint, when one is kept
    /// ([`HopConfig::keep_fallback`]).
    pub fn fallback(&self) -> Option<CommittedCheckpoint> {
        self.fallback
    }

    /// The current incarnation's epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Counters.
    pub fn stats(&self) -> HopStats {
        self.stats
    }

    /// A packet arrives for this hop's VNF (from the classifier or the
    /// previous hop). Refused, and handed back, when `buffer_rx` is full.
    #[inline]
    pub fn handle_input(&mut self, seq: u64, packet: P) -> Result<(), Backpressure<P>> {
        let r = self.rx.push(seq, packet);
        if r.is_err() {
            self.stats.rx_backpressure += 1;
        }
        r
    }

    /// True when [`handle_input`](Self::handle_input) would accept a packet.
    pub fn can_accept_input(&self) -> bool {
        !self.rx.is_full()
    }

    /// The next packet to send to the VNF, if the hop may deliver now: it is
    /// running, no checkpoint is draining or dumping, and `buffer_tx` has
    /// room. The packet stays held in `buffer_rx`.
    pub fn poll_delivery(&mut self) -> Option<Delivery<'_, P>> {
        if !matches!(self.state, HopState::Running)
            || self.delivery_paused()
            || (!self.members.is_empty()
                && !self.members.iter().any(|m| m.state == MemberState::Live))
            || self.tx.entries.len() >= self.tx.capacity
            || self.rx.next_deliver >= self.rx.end()
        {
            return None;
        }
        let index = self.rx.next_deliver;
        self.rx.next_deliver += 1;
        let replay = index < self.delivered_high;
        if replay {
            self.stats.redelivered += 1;
        } else {
            self.delivered_high = index + 1;
        }
        self.stats.delivered += 1;
        let (seq, packet) = &self.rx.entries[(index - self.rx.base) as usize];
        Some(Delivery {
            seq: *seq,
            epoch: self.epoch,
            index,
            replay,
            packet,
        })
    }
    /// The packets the next [`poll_delivery_burst`](Self::poll_delivery_burst)
    /// would deliver first, in order, without delivering them (the SFF
    /// sizes a burst by what the VNF's socket can take).
    pub fn peek_delivery(&self) -> impl Iterator<Item = &P> + '_ {
        let start =
            (self.rx.next_deliver.saturating_sub(self.rx.base) as usize).min(self.rx.entries.len());
        self.rx.entries.range(start..).map(|(_, p)| p)
    }

    /// The packets the next [`poll_catch_up`](Self::poll_catch_up) of
    /// member `k` would deliver first, in order (none unless it catches up).
    pub fn peek_catch_up(&self, k: usize) -> impl Iterator<Item = &P> + '_ {
        let start = match self.member(k) {
            Some(MemberState::CatchingUp { cursor }) => {
                cursor.saturating_sub(self.rx.base) as usize
            }
            _ => self.rx.entries.len(),
        }
        .min(self.rx.entries.len());
        self.rx.entries.range(start..).map(|(_, p)| p)
    }

    /// Delivers up to `max` packets at once (the burst form of
    /// [`poll_delivery`](Self::poll_delivery), with the same conditions),
    /// calling `deliver` for each in order; returns how many.
    #[inline]
    pub fn poll_delivery_burst(
        &mut self,
        max: usize,
        mut deliver: impl FnMut(Delivery<'_, P>),
    ) -> usize {
        if !matches!(self.state, HopState::Running) || self.delivery_paused() {
            return 0;
        }
        // MR-AA: a delivery goes to every live member; with none live (one
        // catching up), the packets wait for it.
        if !self.members.is_empty() && !self.members.iter().any(|m| m.state == MemberState::Live) {
            return 0;
        }
        let tx_room = self.tx.capacity.saturating_sub(self.tx.entries.len());
        let pending = (self.rx.end() - self.rx.next_deliver) as usize;
        let n = max.min(tx_room).min(pending);
        let first = self.rx.next_deliver;
        let start = (first - self.rx.base) as usize;
        let epoch = self.epoch;
        let high = self.delivered_high;
        for (k, (seq, packet)) in self.rx.entries.range(start..start + n).enumerate() {
            let index = first + k as u64;
            deliver(Delivery {
                seq: *seq,
                epoch,
                index,
                replay: index < high,
                packet,
            });
        }
        let end = first + n as u64;
        self.rx.next_deliver = end;
        self.stats.delivered += n as u64;
        self.stats.redelivered += high.min(end).saturating_sub(first);
        self.delivered_high = high.max(end);
        n
    }

    /// The VNF sent a packet back, stamped with `epoch` and chain sequence
    /// number `seq` (as copied from the input that caused it).
    #[inline]
    pub fn handle_output(&mut self, epoch: u32, seq: u64, packet: P) -> OutputDisposition {
        self.handle_output_with(epoch, seq, 0, || packet)
    }

    /// [`handle_output`](Self::handle_output) that builds the packet only if
    /// it is accepted (the SFF copies a frame out of its rx ring only then),
    /// with `digest`, a hash of the output's content: a replayed output whose
    /// digest differs from the original's is [`OutputDisposition::Divergent`].
    #[inline]
    pub fn handle_output_with(
        &mut self,
        epoch: u32,
        seq: u64,
        digest: u64,
        packet: impl FnOnce() -> P,
    ) -> OutputDisposition {
        // An output of the failed incarnation (an older epoch) is stale,
        // unless it is the restored one finishing the input its image was
        // frozen in (before its first output in this epoch).
        // (The answered input itself is in the range: a VNF frozen between
        // two outputs of one input emits the rest after the restore.)
        let unfinished = self.unfinished.is_some_and(|m| m.covers(epoch, seq));
        if (epoch != self.epoch && !unfinished) || !matches!(self.state, HopState::Running) {
            self.stats.stale += 1;
            return OutputDisposition::Stale;
        }
        if epoch == self.epoch {
            self.unfinished = None;
        }
        let index = self.tx.next_output;
        self.tx.next_output += 1;
        self.accept_output(index, seq, digest, packet)
    }

    /// The output numbered `index` in its VNF's (or member's) stream: the
    /// first copy of an index moves on, later ones are duplicates.
    #[inline]
    fn accept_output(
        &mut self,
        index: u64,
        seq: u64,
        digest: u64,
        packet: impl FnOnce() -> P,
    ) -> OutputDisposition {
        if self.members.is_empty() && matches!(self.phase, CheckpointPhase::Dumping { .. }) {
            self.late_output = true;
        }
        self.tx.last_output_seq = Some(seq);
        // docs/design.md invariant 3: only outputs past the last one accepted from
        // this hop move on; replays of earlier ones stop here.
        if index < self.tx.accepted {
            self.stats.duplicates += 1;
            let original = index
                .checked_sub(self.tx.digest_base)
                .and_then(|i| self.tx.digests.get(i as usize));
            if original.is_some_and(|&d| d != digest) {
                self.stats.divergent += 1;
                return OutputDisposition::Divergent;
            }
            return OutputDisposition::Duplicate;
        }
        self.tx.accepted = index + 1;
        self.tx.digests.push_back(digest);
        self.tx.entries.push_back((seq, packet()));
        self.tx.peak = self.tx.peak.max(self.tx.entries.len());
        self.stats.accepted += 1;
        OutputDisposition::Accepted
    }

    /// The next output that may move on, without taking it. `None` while the
    /// hop is recovering (invariant 4) or when nothing waits.
    pub fn peek_forward(&self) -> Option<(u64, &P)> {
        if !matches!(self.state, HopState::Running) {
            return None;
        }
        self.tx.entries.front().map(|(s, p)| (*s, p))
    }

    /// Takes the output [`peek_forward`](Self::peek_forward) showed.
    #[inline]
    pub fn poll_forward(&mut self) -> Option<(u64, P)> {
        if !matches!(self.state, HopState::Running) {
            return None;
        }
        self.tx.entries.pop_front()
    }

    /// Starts a checkpoint: delivery stops until it completes or fails.
    pub fn begin_checkpoint(&mut self, now: Instant) -> Result<CheckpointId, HoldError> {
        if !matches!(self.state, HopState::Running) {
            return Err(HoldError::Recovering);
        }
        if let Some(id) = self.phase.id() {
            return Err(HoldError::CheckpointInProgress(id));
        }
        // MR-AA: member 0 is the one dumped; only it pauses, where it is.
        if let Some(m) = self.members.first_mut() {
            let cursor = match m.state {
                MemberState::Live => self.rx.next_deliver,
                MemberState::CatchingUp { cursor } => cursor,
                MemberState::Paused { .. } | MemberState::Failed => {
                    return Err(HoldError::MemberNotLive(0));
                }
            };
            m.state = MemberState::Paused { cursor };
        }
        let id = self.next_checkpoint;
        self.next_checkpoint += 1;
        self.phase = CheckpointPhase::Draining { id, started: now };
        self.late_output = false;
        Ok(id)
    }

    /// The I/O layer saw the VNF consume everything delivered to it and
    /// received every output it made: freeze and dump now. Returns what the
    /// image will include.
    pub fn handle_quiesced(&mut self, id: CheckpointId) -> Result<Mark, HoldError> {
        let CheckpointPhase::Draining {
            id: current,
            started,
        } = self.phase
        else {
            return Err(HoldError::WrongCheckpoint(id));
        };
        if current != id {
            return Err(HoldError::WrongCheckpoint(id));
        }
        // MR-AA: member 0's own position.
        if let Some(m) = self.members.first() {
            let MemberState::Paused { cursor } = m.state else {
                return Err(HoldError::NoMember(0));
            };
            // (The same work-in-the-middle range as a single VNF's.)
            let last_consumed = cursor.checked_sub(1).and_then(|i| self.rx.seq_at(i));
            let mark = Mark {
                consumed: cursor,
                emitted: m.next_output,
                epoch: Self::frozen_epoch(self.epoch, m.unfinished, last_consumed),
                answered: m.last_output_seq,
                last_consumed,
            };
            self.phase = CheckpointPhase::Dumping { id, started, mark };
            return Ok(mark);
        }
        let consumed = match self.rule {
            ReleaseRule::Consumed => self.rx.next_deliver,
            ReleaseRule::LastEmitted => self.rx.index_after_seq(self.tx.last_output_seq),
        };
        let last_consumed = consumed.checked_sub(1).and_then(|i| self.rx.seq_at(i));
        let mark = Mark {
            consumed,
            emitted: self.tx.next_output,
            epoch: Self::frozen_epoch(self.epoch, self.unfinished, last_consumed),
            answered: self.tx.last_output_seq,
            last_consumed,
        };
        self.phase = CheckpointPhase::Dumping { id, started, mark };
        Ok(mark)
    }

    /// The epoch a checkpoint's mark gives the work the VNF holds when it
    /// is frozen: a VNF restored with an input in hand (`unfinished`, from
    /// an older epoch) that has not answered it yet, nor read anything
    /// newer (`last_consumed` within it), still holds that input as it was
    /// delivered, stamped with the older epoch: its answer, after a
    /// restore from this checkpoint, carries that epoch. Otherwise the
    /// current one. (With the current epoch, the answer to the input in
    /// hand was taken for stale after a second restore: a packet lost at
    /// the sink on an ordinary hop, and an MR-AA member's outputs numbered
    /// one too low, counted as divergent.)
    fn frozen_epoch(current: u32, unfinished: Option<Mark>, last_consumed: Option<u64>) -> u32 {
        unfinished
            .filter(|u| u.last_consumed >= last_consumed)
            .map_or(current, |u| u.epoch)
    }

    /// The image of checkpoint `id` is taken and the VNF runs again, but the
    /// image is not durable yet: delivery resumes, nothing is released.
    pub fn handle_dumped(&mut self, id: CheckpointId) -> Result<Mark, HoldError> {
        match self.phase {
            CheckpointPhase::Dumping {
                id: current,
                started,
                mark,
            } if current == id => {
                if self.late_output {
                    return Err(HoldError::OutputAfterMark(id));
                }
                self.phase = CheckpointPhase::Storing { id, started, mark };
                self.resume_member_0();
                Ok(mark)
            }
            _ => Err(HoldError::WrongCheckpoint(id)),
        }
    }

    /// The image of checkpoint `id` is durable: release what it includes and
    /// make it the restore point.
    pub fn handle_checkpoint_complete(
        &mut self,
        id: CheckpointId,
        now: Instant,
    ) -> Result<CheckpointReport, HoldError> {
        self.handle_checkpoint_complete_with(id, now, drop)
    }

    /// [`handle_checkpoint_complete`](Self::handle_checkpoint_complete),
    /// handing each released packet to `release` (to free its buffer).
    pub fn handle_checkpoint_complete_with(
        &mut self,
        id: CheckpointId,
        now: Instant,
        release: impl FnMut(P),
    ) -> Result<CheckpointReport, HoldError> {
        let (CheckpointPhase::Dumping {
            id: current,
            started,
            mark,
        }
        | CheckpointPhase::Storing {
            id: current,
            started,
            mark,
        }) = self.phase
        else {
            return Err(HoldError::WrongCheckpoint(id));
        };
        if current != id {
            return Err(HoldError::WrongCheckpoint(id));
        }
        if self.late_output && matches!(self.phase, CheckpointPhase::Dumping { .. }) {
            return Err(HoldError::OutputAfterMark(id));
        }
        self.resume_member_0();
        // docs/design.md invariant 1: a packet is released only once a checkpoint
        // is known to include its effect — with a fallback kept, only once
        // the older restorable checkpoint includes it.
        let new = CommittedCheckpoint { id, mark };
        let release_to = if self.keep_fallback {
            // (Id 0 is the restore point of an unprotected hop, not an image.)
            self.fallback = self.committed.filter(|c| c.id != 0);
            self.fallback.map(|c| c.mark).unwrap_or(Mark {
                consumed: self.rx.base,
                emitted: self.tx.digest_base,
                ..Mark::default()
            })
        } else {
            mark
        };
        // Never what a catching-up member still needs (or its digests).
        let (mut consumed, mut emitted) = (release_to.consumed, release_to.emitted);
        for m in &self.members {
            if let MemberState::CatchingUp { cursor } = m.state {
                consumed = consumed.min(cursor);
                emitted = emitted.min(m.next_output);
            }
        }
        let released = self.rx.release_before(consumed, release);
        self.tx.trim_digests(emitted);
        self.stats.released += released;
        self.stats.checkpoints += 1;
        self.committed = Some(new);
        self.phase = CheckpointPhase::Idle;
        Ok(CheckpointReport {
            id,
            fallback: self.fallback.map(|c| c.id),
            released,
            pause: now.saturating_duration_since(started),
        })
    }

    /// For a hop whose VNF is *not protected* (no checkpoints): releases
    /// every delivered packet at once, handing each to `release`. Every
    /// delivery becomes the restore point, so a restart of such a VNF
    /// resumes with whatever state it has and replays nothing: no
    /// exactly-once guarantee, by choice of the operator.
    pub fn release_delivered(&mut self, release: impl FnMut(P)) -> u64 {
        if !matches!(self.phase, CheckpointPhase::Idle) {
            return 0;
        }
        let released = self.rx.release_before(self.rx.next_deliver, release);
        self.tx.trim_digests(self.tx.next_output);
        self.stats.released += released;
        self.fallback = None;
        // The restore point follows the outputs too: an output that came
        // after the last delivery's release (a VNF answers a moment after
        // it reads) is not expected again from the next incarnation.
        let moved = self.committed.is_some_and(|c| {
            (c.mark.consumed, c.mark.emitted) != (self.rx.next_deliver, self.tx.next_output)
        });
        if released > 0 || moved {
            self.committed = Some(CommittedCheckpoint {
                id: 0,
                mark: Mark {
                    consumed: self.rx.next_deliver,
                    emitted: self.tx.next_output,
                    epoch: self.epoch,
                    ..Mark::default()
                },
            });
        }
        released
    }

    /// MR-AA: member 0, paused for a checkpoint, catches up from where it
    /// stopped.
    fn resume_member_0(&mut self) {
        if let Some(m) = self.members.first_mut() {
            if let MemberState::Paused { cursor } = m.state {
                m.state = if cursor >= self.rx.next_deliver {
                    MemberState::Live
                } else {
                    MemberState::CatchingUp { cursor }
                };
            }
        }
    }

    /// Checkpoint `id` failed (dump error, storage error): nothing is
    /// released, the previous restore point stays, delivery resumes.
    pub fn handle_checkpoint_failed(&mut self, id: CheckpointId) -> Result<(), HoldError> {
        match self.phase.id() {
            Some(current) if current == id => {
                self.resume_member_0();
                self.phase = CheckpointPhase::Idle;
                self.stats.checkpoint_failures += 1;
                Ok(())
            }
            _ => Err(HoldError::WrongCheckpoint(id)),
        }
    }

    /// The VNF failed (crashed, hung or cut off). Stops the hop, aborts any
    /// checkpoint, and says what to restore. Calling it again while
    /// recovering (a failure during recovery) is allowed and returns the same
    /// restore point with a new epoch.
    pub fn handle_failure(&mut self, now: Instant) -> RestorePlan {
        if !matches!(self.phase, CheckpointPhase::Idle) {
            self.phase = CheckpointPhase::Idle;
            self.stats.checkpoint_failures += 1;
        }
        if matches!(self.state, HopState::Running) {
            self.state = HopState::Recovering { since: now };
        }
        for m in &mut self.members {
            m.state = MemberState::Failed;
        }
        self.epoch = self.epoch.wrapping_add(1);
        self.unfinished = None;
        self.stats.failures += 1;
        RestorePlan {
            checkpoint: self.committed.map(|c| c.id),
            fallback: self.fallback.map(|c| c.id),
            epoch: self.epoch,
        }
    }

    /// The VNF runs again, restored from checkpoint `from`: the committed
    /// one (as [`handle_restored`](Self::handle_restored)), or the fallback
    /// the [`RestorePlan`] named (the committed image was unusable; the
    /// fallback becomes the restore point and more is replayed).
    pub fn handle_restored_from(
        &mut self,
        from: Option<CheckpointId>,
        now: Instant,
    ) -> Result<RecoveryReport, HoldError> {
        if !matches!(self.state, HopState::Recovering { .. }) {
            return Err(HoldError::NotRecovering);
        }
        if from != self.committed.map(|c| c.id) {
            match self.fallback {
                Some(f) if Some(f.id) == from => {
                    self.committed = Some(f);
                    self.fallback = None;
                }
                _ => return Err(HoldError::WrongCheckpoint(from.unwrap_or(0))),
            }
        }
        self.handle_restored(now)
    }

    /// The VNF runs again from the restore point. Every held packet after it
    /// will be delivered again, in order (invariant 2).
    pub fn handle_restored(&mut self, now: Instant) -> Result<RecoveryReport, HoldError> {
        let HopState::Recovering { since } = self.state else {
            return Err(HoldError::NotRecovering);
        };
        let mark = self.committed.map(|c| c.mark).unwrap_or_default();
        debug_assert!(mark.consumed >= self.rx.base);
        self.rx.next_deliver = mark.consumed.max(self.rx.base);
        self.tx.next_output = mark.emitted;
        self.unfinished =
            (mark.epoch != self.epoch && mark.last_consumed.is_some()).then_some(mark);
        // The last output before the freeze is the restored VNF's last one.
        self.tx.last_output_seq = mark.answered;
        self.state = HopState::Running;
        self.stats.recoveries += 1;
        Ok(RecoveryReport {
            replay: self.rx.end() - self.rx.next_deliver,
            duration: now.saturating_duration_since(since),
        })
    }
}

/// Whether the whole chain is serving traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainState {
    /// Every hop is running.
    Running,
    /// These hops are recovering.
    Recovering(Vec<usize>),
}

/// What [`Chain::poll_advance`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Advance {
    /// A packet moved to the next hop.
    Moved,
    /// The next hop's `buffer_rx` is full (backpressure).
    Blocked,
    /// Nothing to move (empty, or the hop is recovering).
    Idle,
}

/// A Service Function Path: its sequence numbers and its hops in order.
#[derive(Debug, Clone)]
pub struct Chain<P> {
    spi: u32,
    next_seq: u64,
    hops: Vec<Hop<P>>,
}

impl<P> Chain<P> {
    /// A chain of `hops` VNFs, each configured alike.
    pub fn new(spi: u32, hops: usize, config: HopConfig) -> Result<Self, HoldError> {
        if hops == 0 {
            return Err(HoldError::EmptyChain);
        }
        Ok(Self {
            spi,
            next_seq: 0,
            hops: (0..hops)
                .map(|_| Hop::new(config))
                .collect::<Result<_, _>>()?,
        })
    }

    /// The chain's SPI.
    pub fn spi(&self) -> u32 {
        self.spi
    }

    /// The sequence number the next admitted packet gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Number of hops.
    pub fn len(&self) -> usize {
        self.hops.len()
    }

    /// Never true: a chain has at least one hop.
    pub fn is_empty(&self) -> bool {
        self.hops.is_empty()
    }

    /// Hop `i`.
    pub fn hop(&self, i: usize) -> &Hop<P> {
        &self.hops[i]
    }

    /// Hop `i`, to feed it events.
    pub fn hop_mut(&mut self, i: usize) -> &mut Hop<P> {
        &mut self.hops[i]
    }

    /// All hops.
    pub fn hops(&self) -> &[Hop<P>] {
        &self.hops
    }

    /// Running, or which hops are recovering.
    pub fn state(&self) -> ChainState {
        let recovering: Vec<usize> = self
            .hops
            .iter()
            .enumerate()
            .filter(|(_, h)| matches!(h.state, HopState::Recovering { .. }))
            .map(|(i, _)| i)
            .collect();
        if recovering.is_empty() {
            ChainState::Running
        } else {
            ChainState::Recovering(recovering)
        }
    }

    /// Admits a classified packet: assigns the next sequence number, lets
    /// `make` build the packet with it (for example, write the NSH header),
    /// and holds it in the first hop's `buffer_rx`. When that buffer is full
    /// nothing is assigned and `Err(())` tells the caller to keep the frame
    /// and retry (backpressure; the frame is not dropped here).
    #[allow(clippy::result_unit_err)]
    #[inline]
    pub fn try_ingress(&mut self, make: impl FnOnce(u64) -> P) -> Result<u64, ()> {
        let first = &mut self.hops[0];
        if !first.can_accept_input() {
            first.stats.rx_backpressure += 1;
            return Err(());
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let accepted = first.handle_input(seq, make(seq));
        debug_assert!(accepted.is_ok());
        Ok(seq)
    }

    /// Moves one output of hop `i` into hop `i + 1`'s `buffer_rx`. For the
    /// last hop use [`poll_egress`](Self::poll_egress).
    pub fn poll_advance(&mut self, i: usize) -> Advance {
        if i + 1 >= self.hops.len() {
            return Advance::Idle;
        }
        let (left, right) = self.hops.split_at_mut(i + 1);
        let (from, to) = (&mut left[i], &mut right[0]);
        if from.peek_forward().is_none() {
            return Advance::Idle;
        }
        if !to.can_accept_input() {
            to.stats.rx_backpressure += 1;
            return Advance::Blocked;
        }
        match from.poll_forward() {
            Some((seq, packet)) => {
                let accepted = to.handle_input(seq, packet);
                debug_assert!(accepted.is_ok());
                Advance::Moved
            }
            None => Advance::Idle,
        }
    }

    /// Moves up to `max` outputs of hop `i` into hop `i + 1`'s `buffer_rx`,
    /// as many as it has room for; returns how many moved. The burst form of
    /// [`poll_advance`](Self::poll_advance).
    #[inline]
    pub fn poll_advance_burst(&mut self, i: usize, max: usize) -> usize {
        if i + 1 >= self.hops.len() {
            return 0;
        }
        let (left, right) = self.hops.split_at_mut(i + 1);
        let (from, to) = (&mut left[i], &mut right[0]);
        if !matches!(from.state, HopState::Running) {
            return 0;
        }
        let room = to.rx.capacity - to.rx.entries.len();
        let n = max.min(from.tx.entries.len()).min(room);
        if n < max.min(from.tx.entries.len()) {
            to.stats.rx_backpressure += 1;
        }
        to.rx.entries.extend(from.tx.entries.drain(..n));
        n
    }

    /// Takes the next packet leaving the chain (output of the last hop).
    #[inline]
    pub fn poll_egress(&mut self) -> Option<(u64, P)> {
        self.hops.last_mut().and_then(Hop::poll_forward)
    }
}

#[cfg(test)]
mod members_model;

#[cfg(test)]
mod tests {
    use super::*;

    fn hop() -> Hop<u32> {
        Hop::new(HopConfig {
            rx_capacity: 4,
            tx_capacity: 4,
            release_rule: ReleaseRule::Consumed,
            keep_fallback: false,
        })
        .unwrap()
    }

    fn deliver(h: &mut Hop<u32>) -> Option<(u64, u32, u32)> {
        h.poll_delivery().map(|d| (d.seq, d.epoch, *d.packet))
    }

    /// What a caller may try again (it ends by itself) is told apart from
    /// what it may not: a second checkpoint while one is under way and a
    /// member count change while the members kept are not live are
    /// transient; a restore of a running hop is not.
    #[test]
    fn refusals_that_end_by_themselves_say_so() {
        let t = Instant::now();
        let mut h = hop();
        h.begin_checkpoint(t).unwrap();
        let e = h.begin_checkpoint(t).unwrap_err();
        assert!(
            matches!(e, HoldError::CheckpointInProgress(_)) && e.is_transient(),
            "{e}"
        );
        let e = h.resize_members(3).unwrap_err();
        assert!(e.is_transient(), "{e}");
        // MR-AA: member 1 is added failed (until restored); member 0 fails
        // too: the hop recovers, which ends by itself.
        let mut h = hop();
        h.resize_members(2).unwrap();
        h.handle_member_failed(0, t).unwrap();
        let e = h.resize_members(1).unwrap_err();
        assert_eq!(e, HoldError::Recovering);
        assert!(e.is_transient());
        assert!(HoldError::MemberNotLive(0).is_transient());
        assert!(!HoldError::NoMember(5).is_transient());
        let e = hop().handle_restored_from(None, t).unwrap_err();
        assert!(!e.is_transient(), "{e}");
    }

    /// The 1R-AA admission: a replica restored from the restore point or
    /// its fallback may take over; from anything older (its packets
    /// released) or newer (not committed), never.
    #[test]
    fn a_replica_takes_over_only_from_a_checkpoint_the_hop_can_replay_from() {
        let plan = |checkpoint, fallback| RestorePlan {
            checkpoint,
            fallback,
            epoch: 1,
        };
        assert!(plan(None, None).restores(None));
        assert!(!plan(None, None).restores(Some(1)));
        assert!(plan(Some(4), Some(3)).restores(Some(4)));
        assert!(plan(Some(4), Some(3)).restores(Some(3)));
        assert!(!plan(Some(4), Some(3)).restores(Some(2)));
        assert!(!plan(Some(4), Some(3)).restores(Some(5)));
        assert!(
            !plan(Some(4), None).restores(None),
            "the initial state is released"
        );
    }

    #[test]
    fn backpressure_hands_packet_back() {
        let mut h = hop();
        for i in 0..4 {
            h.handle_input(i, i as u32).unwrap();
        }
        assert_eq!(h.handle_input(4, 4), Err(Backpressure(4)));
        assert_eq!(h.stats().rx_backpressure, 1);
    }

    #[test]
    fn a_fallback_checkpoint_stays_restorable() {
        let t = Instant::now();
        let mut h = Hop::new(HopConfig {
            rx_capacity: 16,
            tx_capacity: 16,
            keep_fallback: true,
            ..HopConfig::default()
        })
        .unwrap();
        let step = |h: &mut Hop<u32>, seq: u64| {
            h.handle_input(seq, seq as u32).unwrap();
            h.poll_delivery().unwrap();
            h.handle_output(h.epoch(), seq, seq as u32);
            while h.poll_forward().is_some() {}
        };
        let checkpoint = |h: &mut Hop<u32>| {
            let id = h.begin_checkpoint(t).unwrap();
            h.handle_quiesced(id).unwrap();
            h.handle_dumped(id).unwrap();
            h.handle_checkpoint_complete(id, t).unwrap();
            id
        };
        step(&mut h, 0);
        step(&mut h, 1);
        let first = checkpoint(&mut h);
        assert_eq!(
            h.rx().held(),
            2,
            "nothing released before a fallback exists"
        );
        step(&mut h, 2);
        let second = checkpoint(&mut h);
        assert_eq!(
            h.rx().held(),
            1,
            "released up to the first checkpoint's mark"
        );
        step(&mut h, 3);
        let plan = h.handle_failure(t);
        assert_eq!(
            (plan.checkpoint, plan.fallback),
            (Some(second), Some(first))
        );
        // The second image is corrupt: restore the first, replay from its mark.
        let r = h.handle_restored_from(Some(first), t).unwrap();
        assert_eq!(r.replay, 2);
        assert_eq!(h.committed().map(|c| c.id), Some(first));
        assert_eq!(h.handle_failure(t).fallback, None);
        assert_eq!(
            h.handle_restored_from(Some(second), t),
            Err(HoldError::WrongCheckpoint(second))
        );
    }

    #[test]
    fn an_output_arriving_while_frozen_fails_the_checkpoint() {
        let t = Instant::now();
        let mut h = hop();
        h.handle_input(0, 0).unwrap();
        h.poll_delivery().unwrap();
        let id = h.begin_checkpoint(t).unwrap();
        let mark = h.handle_quiesced(id).unwrap();
        assert_eq!(mark.emitted, 0);
        // Emitted before the freeze, arrived after the mark.
        assert_eq!(h.handle_output(0, 0, 100), OutputDisposition::Accepted);
        assert_eq!(h.handle_dumped(id), Err(HoldError::OutputAfterMark(id)));
        h.handle_checkpoint_failed(id).unwrap();
        assert_eq!(h.committed(), None, "nothing committed, nothing released");
        assert_eq!(h.rx().held(), 1);
        // The next checkpoint counts it.
        let id = h.begin_checkpoint(t).unwrap();
        assert_eq!(h.handle_quiesced(id).unwrap().emitted, 1);
        h.handle_dumped(id).unwrap();
        h.handle_checkpoint_complete(id, t).unwrap();
        assert_eq!(h.rx().held(), 0);
    }

    #[test]
    fn a_replay_that_differs_is_divergent_and_suppressed() {
        let t = Instant::now();
        let mut h = hop();
        for seq in 0..3 {
            h.handle_input(seq, seq as u32).unwrap();
            h.poll_delivery().unwrap();
            let d = h.handle_output_with(0, seq, 100 + seq, || seq as u32);
            assert_eq!(d, OutputDisposition::Accepted);
        }
        // Checkpoint after the first input and output.
        let id = h.begin_checkpoint(t).unwrap();
        // (marks come from the quiesced VNF: here everything is consumed)
        h.handle_quiesced(id).unwrap();
        h.handle_checkpoint_complete(id, t).unwrap();
        h.handle_input(3, 3).unwrap();
        h.poll_delivery().unwrap();
        assert_eq!(
            h.handle_output_with(0, 3, 103, || 3),
            OutputDisposition::Accepted
        );
        while h.poll_forward().is_some() {}
        let plan = h.handle_failure(t);
        h.handle_restored(t).unwrap();
        // The restored VNF emits output 3 again, differently.
        h.poll_delivery().unwrap();
        assert_eq!(
            h.handle_output_with(plan.epoch, 3, 999, || 3),
            OutputDisposition::Divergent
        );
        assert_eq!((h.stats().duplicates, h.stats().divergent), (1, 1));
        // Digests before the committed mark are gone: nothing kept forever.
        assert_eq!(h.tx.digest_base, 3);
        assert_eq!(h.tx.digests.len(), 1);
    }

    /// Issue 12's breach. A VNF frozen for a checkpoint in the middle of an
    /// input (read, answer not sent yet) holds that half-done work in its
    /// image; resumed, it answers after the dump (not late: the checkpoint
    /// commits). Restored from that image after a failure, it answers again,
    /// first thing: with the epoch the input was delivered in. That answer
    /// must count as the restored incarnation's first output (a duplicate
    /// of the one already forwarded), not be discarded as stale: otherwise
    /// its numbering is one behind, every replayed output "differs" (taken
    /// for non-determinism), and past the replay one output is lost and
    /// another forwarded twice.
    #[test]
    fn a_restored_vnf_finishes_the_input_it_was_frozen_in() {
        let t = Instant::now();
        let mut h = Hop::new(HopConfig {
            rx_capacity: 16,
            tx_capacity: 16,
            ..HopConfig::default()
        })
        .unwrap();
        let out = |h: &mut Hop<u32>, epoch: u32, seq: u64| {
            h.handle_output_with(epoch, seq, 100 + seq, || seq as u32)
        };
        for seq in 0..3 {
            h.handle_input(seq, seq as u32).unwrap();
        }
        // Inputs 0 and 1 answered; input 2 read, and the VNF frozen in it.
        for _ in 0..3 {
            h.poll_delivery().unwrap();
        }
        assert_eq!(out(&mut h, 0, 0), OutputDisposition::Accepted);
        assert_eq!(out(&mut h, 0, 1), OutputDisposition::Accepted);
        let id = h.begin_checkpoint(t).unwrap();
        h.handle_quiesced(id).unwrap();
        h.handle_dumped(id).unwrap();
        // Resumed: it answers input 2 (after the dump, so not late).
        assert_eq!(out(&mut h, 0, 2), OutputDisposition::Accepted);
        h.handle_checkpoint_complete(id, t).unwrap();
        for seq in 3..5 {
            h.handle_input(seq, seq as u32).unwrap();
            h.poll_delivery().unwrap();
            assert_eq!(out(&mut h, 0, seq), OutputDisposition::Accepted);
        }
        while h.poll_forward().is_some() {}
        let plan = h.handle_failure(t);
        h.handle_restored_from(Some(id), t).unwrap();
        // The restored copy finishes input 2 (old epoch), then the replay.
        assert_eq!(out(&mut h, 0, 2), OutputDisposition::Duplicate);
        for seq in 3..5 {
            assert_eq!(
                h.poll_delivery().map(|d| d.seq),
                Some(seq),
                "replayed in order"
            );
            assert_eq!(
                out(&mut h, plan.epoch, seq),
                OutputDisposition::Duplicate,
                "{seq}"
            );
        }
        assert_eq!(h.stats().divergent, 0);
        // New input goes on as new output.
        h.handle_input(5, 5).unwrap();
        h.poll_delivery().unwrap();
        assert_eq!(out(&mut h, plan.epoch, 5), OutputDisposition::Accepted);
        let forwarded: Vec<u64> = std::iter::from_fn(|| h.poll_forward().map(|(s, _)| s)).collect();
        assert_eq!(forwarded, vec![5]);
        // A straggler of the dead incarnation (an answer to an input after
        // the mark, in the old epoch) is still stale.
        assert_eq!(out(&mut h, 0, 4), OutputDisposition::Stale);
    }

    #[test]
    fn held_until_checkpoint_completes() {
        let t = Instant::now();
        let mut h = hop();
        h.handle_input(0, 10).unwrap();
        h.handle_input(1, 11).unwrap();
        assert_eq!(deliver(&mut h), Some((0, 0, 10)));
        assert_eq!(h.rx().held(), 1);
        let id = h.begin_checkpoint(t).unwrap();
        assert!(h.poll_delivery().is_none(), "no delivery while draining");
        let mark = h.handle_quiesced(id).unwrap();
        assert_eq!(
            mark,
            Mark {
                consumed: 1,
                emitted: 0,
                epoch: 0,
                answered: None,
                last_consumed: Some(0),
            }
        );
        assert_eq!(
            h.rx().len(),
            2,
            "nothing released before the image is durable"
        );
        let r = h
            .handle_checkpoint_complete(id, t + Duration::from_millis(5))
            .unwrap();
        assert_eq!(r.released, 1);
        assert_eq!(r.pause, Duration::from_millis(5));
        assert_eq!(h.rx().len(), 1);
        assert_eq!(deliver(&mut h), Some((1, 0, 11)));
    }

    #[test]
    fn failure_replays_from_checkpoint_and_suppresses_duplicates() {
        let t = Instant::now();
        let mut h = hop();
        for i in 0..3 {
            h.handle_input(i, i as u32).unwrap();
        }
        // Deliver and echo packet 0, checkpoint, then deliver and echo 1.
        deliver(&mut h).unwrap();
        assert_eq!(h.handle_output(0, 0, 100), OutputDisposition::Accepted);
        let id = h.begin_checkpoint(t).unwrap();
        h.handle_quiesced(id).unwrap();
        h.handle_checkpoint_complete(id, t).unwrap();
        deliver(&mut h).unwrap();
        assert_eq!(h.handle_output(0, 1, 101), OutputDisposition::Accepted);
        deliver(&mut h).unwrap(); // 2 delivered, lost in the crash
        let plan = h.handle_failure(t);
        assert_eq!(
            plan,
            RestorePlan {
                checkpoint: Some(id),
                fallback: None,
                epoch: 1
            }
        );
        assert!(
            h.peek_forward().is_none(),
            "nothing advances while recovering"
        );
        assert!(h.poll_delivery().is_none());
        assert_eq!(h.handle_output(0, 2, 102), OutputDisposition::Stale);
        let r = h.handle_restored(t + Duration::from_millis(3)).unwrap();
        assert_eq!(r.replay, 2);
        let d = h.poll_delivery().unwrap();
        assert_eq!((d.seq, d.epoch, d.replay), (1, 1, true));
        assert_eq!(h.handle_output(1, 1, 101), OutputDisposition::Duplicate);
        let d = h.poll_delivery().unwrap();
        assert_eq!((d.seq, d.replay), (2, true));
        assert_eq!(h.handle_output(1, 2, 102), OutputDisposition::Accepted);
        let out: Vec<_> = std::iter::from_fn(|| h.poll_forward()).collect();
        assert_eq!(out, vec![(0, 100), (1, 101), (2, 102)]);
    }

    /// An unprotected hop whose VNF is placed again (a new incarnation
    /// behind a new port, started afresh): what was delivered is the
    /// restore point, nothing is replayed, and the new incarnation's first
    /// output is a new one, not taken for a duplicate of the last output
    /// of the one before.
    #[test]
    fn an_unprotected_hop_placed_again_takes_the_new_incarnation_s_outputs_as_new() {
        let t = Instant::now();
        let mut h = hop();
        for i in 0..2 {
            h.handle_input(i, i as u32).unwrap();
        }
        deliver(&mut h).unwrap();
        // Released as delivered, answered a moment later.
        assert_eq!(h.release_delivered(|_| {}), 1);
        assert_eq!(h.handle_output(0, 0, 100), OutputDisposition::Accepted);
        deliver(&mut h).unwrap();
        assert_eq!(h.handle_output(0, 1, 101), OutputDisposition::Accepted);
        h.release_delivered(|_| {});
        let plan = h.handle_failure(t);
        assert_eq!(plan.checkpoint, Some(0));
        let r = h.handle_restored_from(Some(0), t).unwrap();
        assert_eq!(r.replay, 0);
        h.handle_input(2, 2).unwrap();
        let d = h.poll_delivery().unwrap();
        assert_eq!((d.seq, d.replay), (2, false));
        assert_eq!(h.handle_output(1, 2, 102), OutputDisposition::Accepted);
        let out: Vec<_> = std::iter::from_fn(|| h.poll_forward()).collect();
        assert_eq!(out, vec![(0, 100), (1, 101), (2, 102)]);
    }

    #[test]
    fn failure_during_checkpoint_releases_nothing() {
        let t = Instant::now();
        let mut h = hop();
        h.handle_input(0, 0).unwrap();
        deliver(&mut h).unwrap();
        let id = h.begin_checkpoint(t).unwrap();
        h.handle_quiesced(id).unwrap();
        h.handle_failure(t);
        assert_eq!(
            h.handle_checkpoint_complete(id, t),
            Err(HoldError::WrongCheckpoint(id))
        );
        assert_eq!(h.rx().len(), 1);
        h.handle_restored(t).unwrap();
        assert!(h.poll_delivery().unwrap().replay);
    }

    #[test]
    fn misuse_is_refused() {
        let t = Instant::now();
        let mut h = hop();
        assert_eq!(h.handle_restored(t), Err(HoldError::NotRecovering));
        let id = h.begin_checkpoint(t).unwrap();
        assert_eq!(
            h.begin_checkpoint(t),
            Err(HoldError::CheckpointInProgress(id))
        );
        assert_eq!(
            h.handle_checkpoint_complete(id, t),
            Err(HoldError::WrongCheckpoint(id))
        );
        h.handle_checkpoint_failed(id).unwrap();
        h.handle_failure(t);
        assert_eq!(h.begin_checkpoint(t), Err(HoldError::Recovering));
        assert!(Hop::<u8>::new(HopConfig {
            rx_capacity: 0,
            ..HopConfig::default()
        })
        .is_err());
        assert!(Chain::<u8>::new(1, 0, HopConfig::default()).is_err());
    }

    #[test]
    fn chain_moves_packets_and_blocks_on_full_hop() {
        let mut c: Chain<u32> = Chain::new(
            1,
            2,
            HopConfig {
                rx_capacity: 1,
                tx_capacity: 4,
                ..HopConfig::default()
            },
        )
        .unwrap();
        assert_eq!(c.try_ingress(|s| s as u32), Ok(0));
        assert_eq!(c.try_ingress(|s| s as u32), Err(()));
        let d = c
            .hop_mut(0)
            .poll_delivery()
            .map(|d| (d.epoch, d.seq, *d.packet))
            .unwrap();
        c.hop_mut(0).handle_output(d.0, d.1, d.2);
        c.hop_mut(0).handle_output(d.0, d.1, d.2 + 1); // a VNF that emits two
        assert_eq!(c.poll_advance(0), Advance::Moved);
        assert_eq!(c.poll_advance(0), Advance::Blocked);
        assert_eq!(c.state(), ChainState::Running);
        c.hop_mut(1).handle_failure(Instant::now());
        assert_eq!(c.state(), ChainState::Recovering(vec![1]));
    }
}
