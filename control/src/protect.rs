//! The State Synchronizer of one VNF: the checkpoint protocol (Hold/Release
//! in the SFF process, through [`SffClient`], plus CRIU and the state
//! database) and recovery by mechanism (0R, 1R-AS).
//!
//! # Checkpoint (what the image includes is what the VNF consumed)
//!
//! 1. `BeginCheckpoint`: the SFF stops delivering to the VNF.
//! 2. Wait until the VNF's packet socket has nothing queued
//!    (`/proc/<pid>/net/packet`, column `Rmem`): it has read every frame it
//!    was given.
//! 3. Stop the VNF (SIGSTOP). From now on it cannot consume or emit.
//!    Whatever it read is in its memory, whatever it emitted is on its way to
//!    the SFF; wait [`OUTPUT_SETTLE`] for those frames to arrive, and check
//!    the socket is still empty (a frame still on the wire at step 2 may
//!    have landed; a socket queue is not part of the image): if not, resume
//!    and go back to step 2.
//! 4. `Quiesced`: the SFF records the mark — inputs delivered (all
//!    consumed), outputs counted (all emitted before the stop). A frame the
//!    VNF was in the middle of is consumed and its outputs not yet emitted:
//!    both sides of the mark agree, because the image holds the half-done
//!    work and the VNF will emit those outputs next, whether it resumes or
//!    is restored.
//! 5. CRIU dump (`leave_running`) through a `criu swrk` worker started
//!    ahead of time, then SIGCONT and `CheckpointDumped`: delivery resumes.
//!    The delivery pause ends here.
//! 6. The image is compressed, hashed and synced into the [`Store`], then
//!    `CheckpointDone`: held packets before the mark are released. Any error
//!    on the way: `CheckpointFailed`, SIGCONT; nothing is released.
//!
//! # Recovery
//!
//! `Failure` (the SFF stops the hop, bumps its epoch and names the committed
//! checkpoint), bring the VNF back, `Restored` (the SFF replays every held
//! packet after the mark, in order).
//!
//! - [`Mechanism::NoReplica`] (0R): a new instance: read the checkpoint from
//!   the store, check it (a corrupt one is never restored), unpack it, start
//!   `criu swrk`, restore.
//! - [`Mechanism::ActiveStandby`] (1R-AS): the standby is prepared in
//!   advance: a `criu swrk` process already running with the VNF's namespace
//!   in hand, and the latest committed image already checked and unpacked.
//!   On failure it imports the image at once.
//!
//! Before the first checkpoint there is no image: the command starts afresh
//! and every held packet is replayed from the start.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nham_dataplane::hold::{CheckpointId, RestorePlan};
use nham_sff::remote::{FailOverOutcome, SffClient};
use thiserror::Error;

pub use crate::plan::Mechanism;
use crate::vsm::criu::{self, Swrk};

mod checkpoint;
mod recovery;
use crate::vsm::database::{Store, StoreError};

/// How long a stopped VNF's last outputs get to reach the SFF.
pub const OUTPUT_SETTLE: Duration = Duration::from_millis(3);
/// How long a VNF gets to drain its socket before the checkpoint is given up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// Errors of the protocol.
#[derive(Debug, Error)]
pub enum ProtectError {
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
    /// Signalling or starting the process failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// Something else about the process failed.
    #[error("process: {0}")]
    Process(String),
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
        reason: Box<ProtectError>,
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

/// Bytes queued on the packet sockets of process `pid`'s network namespace
/// (`/proc/<pid>/net/packet`, column Rmem).
pub fn packet_rmem(pid: u32) -> Result<u64, ProtectError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/packet"))
        .map_err(|e| ProtectError::Process(format!("/proc/{pid}/net/packet: {e}")))?;
    Ok(text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(6)?.parse::<u64>().ok())
        .sum())
}

/// Whether process `pid` maps a socket (`socket:[inode]` in
/// `/proc/<pid>/maps`): a packet socket's ring, whose frames the queue
/// column of `/proc/<pid>/net/packet` does not show.
pub fn has_ring(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .is_ok_and(|m| m.lines().any(|l| l.contains("socket:[")))
}

use crate::runtime::process::{is_alive, is_stopped, kill_and_reap};
use crate::runtime::{RuntimeError, Spawn};

fn signal(pid: u32, s: nix::sys::signal::Signal) -> Result<(), ProtectError> {
    Ok(crate::runtime::process::signal(pid, s)?)
}

/// An MR-AA member other than member 0: its namespace (its `eth0` has
/// member 0's interface index, so images restore in any member's place)
/// and process.
#[derive(Debug, Clone)]
pub struct MemberSlot {
    /// Its namespace file.
    pub netns: PathBuf,
    /// Its process, while it runs.
    pub pid: Option<u32>,
    /// The SFF's end of its link (filler for a ring's realignment).
    pub sff_iface: Option<String>,
    /// Its working directory (its own: see `chain::VnfRuntime::cwd`).
    pub cwd: Option<PathBuf>,
}

/// Nice value of CRIU work off the service path (MR-AA dumps and member
/// restores, 1R-AA replica refreshes).
const BACKGROUND_NICE: i32 = 10;

/// Nice value of a recovery on the service path.
const URGENT_NICE: i32 = -10;

/// Runs the calling thread (and what it starts) at another nice value
/// until dropped (Linux: the value is per thread).
struct Niceness(Option<i32>);

impl Niceness {
    fn for_this_thread(nice: i32) -> Self {
        let before = rustix::process::getpriority_process(None).ok();
        match rustix::process::setpriority_process(None, nice) {
            Ok(()) => Self(before),
            Err(_) => Self(None),
        }
    }
}

impl Drop for Niceness {
    fn drop(&mut self) {
        if let Some(n) = self.0 {
            let _ = rustix::process::setpriority_process(None, n);
        }
    }
}

/// A 1R-AA replica's place: its namespace (its `eth0` has the primary's
/// interface index), the SFF's end of its link, and the stopped copy
/// restored there from checkpoint `image`.
#[derive(Debug)]
struct Replica {
    netns: PathBuf,
    sff_iface: String,
    /// The stopped copy, replaced by a worker thread (a CRIU restore takes
    /// tens of ms: the agent lock is not held meanwhile, so a failure fails
    /// over at once, to the copy there is).
    copies: Arc<std::sync::Mutex<Copies>>,
    worker: Option<std::thread::JoinHandle<()>>,
}

/// The replica's current copy, and a generation that a failover bumps so
/// that a refresh finishing later throws its copy away.
#[derive(Debug, Default)]
struct Copies {
    current: Option<(u32, CheckpointId)>,
    generation: u64,
}

/// Kills a stopped copy (our child: reaped here).
/// Restores the images in `dir` into namespace `netns` (through `swrk`,
/// or a new `criu swrk`), stopped as it was dumped, and puts the kernel's
/// position in each of its receive rings back where the checkpoint found
/// it ([`crate::vsm::ring`]: filler sent on `iface`, the SFF's end of the
/// link the process comes back behind).
fn restore_stopped(
    swrk: Option<Swrk>,
    dir: &Path,
    netns: &Path,
    iface: Option<&str>,
) -> Result<u32, ProtectError> {
    let positions = crate::vsm::ring::load(dir)?;
    let (pid, _) = criu::restore(swrk, dir, netns)?;
    if !positions.is_empty() {
        match crate::vsm::ring::realign(pid, &positions, iface) {
            Ok(r) => tracing::info!(
                pid,
                rings = r.rings,
                filler = r.filler,
                "receive rings realigned in {:?}",
                r.took
            ),
            Err(e) => {
                kill_and_reap(pid);
                return Err(e.into());
            }
        }
    }
    Ok(pid)
}

/// Whether a restore failed because the checkpoint itself is unusable
/// (corrupt or gone): the one case where the older checkpoint is restored
/// instead and this one deleted. Anything else (an I/O error, CRIU) fails
/// the recovery and keeps the checkpoint, to be tried again.
fn unusable(e: &ProtectError) -> bool {
    matches!(
        e,
        ProtectError::Store(StoreError::Corrupt { .. } | StoreError::Missing { .. })
    )
}

fn fallback_failed(newest: String, older: CheckpointId, e: ProtectError) -> ProtectError {
    ProtectError::FallbackFailed {
        newest,
        older,
        reason: Box::new(e),
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.discard();
    }
}

impl Replica {
    fn lock(&self) -> std::sync::MutexGuard<'_, Copies> {
        self.copies
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Waits for a refresh under way, then kills the copy.
    fn discard(&mut self) {
        if let Some(w) = self.worker.take() {
            let _ = w.join();
        }
        let mut c = self.lock();
        c.generation += 1;
        if let Some((pid, _)) = c.current.take() {
            kill_and_reap(pid);
        }
    }

    /// Restores checkpoint `id` (its images in `dir`, which the worker
    /// removes) as the new copy, on a thread of its own; the old copy stays
    /// until the new one is ready.
    /// The receiver returned hears (a disconnection) when the worker is
    /// done.
    fn refresh(&mut self, id: CheckpointId, dir: PathBuf) -> std::sync::mpsc::Receiver<()> {
        if let Some(w) = self.worker.take() {
            tracing::debug!("replica refresh: waiting for the one before");
            let _ = w.join();
        }
        let (copies, netns, iface) = (
            self.copies.clone(),
            self.netns.clone(),
            self.sff_iface.clone(),
        );
        let generation = self.lock().generation;
        let (done, finished) = std::sync::mpsc::channel::<()>();
        self.worker = std::thread::Builder::new()
            .name("nham-replica".into())
            .spawn(move || {
                let _done = done;
                // Background work: the chain (and recoveries) come first.
                let _background = Niceness::for_this_thread(BACKGROUND_NICE);
                // A failover since this refresh was asked for made the
                // replica's namespace (and link) the VNF's own: nothing is
                // restored there (its ring realignment would send filler
                // frames to the live VNF).
                let stale = || {
                    copies
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .generation
                        != generation
                };
                if stale() {
                    let _ = std::fs::remove_dir_all(&dir);
                    return;
                }
                let restored = restore_stopped(None, &dir, &netns, Some(&iface));
                let _ = std::fs::remove_dir_all(&dir);
                let mut c = copies
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match restored {
                    Ok(pid) if c.generation == generation => {
                        if let Some((old, _)) = c.current.replace((pid, id)) {
                            kill_and_reap(old);
                        }
                    }
                    // A failover happened meanwhile: this copy is for a
                    // namespace that is the VNF's own now.
                    Ok(pid) => kill_and_reap(pid),
                    Err(e) => tracing::warn!("restoring the 1R-AA replica: {e}"),
                }
            })
            .ok();
        finished
    }

    /// Takes the current copy (if it still runs) and the checkpoint it
    /// holds; any refresh under way is made obsolete.
    fn take_current(&mut self) -> Option<(u32, CheckpointId)> {
        let mut c = self.lock();
        c.generation += 1;
        match c.current.take() {
            Some((pid, id)) if is_alive(pid) => Some((pid, id)),
            Some((pid, _)) => {
                kill_and_reap(pid);
                None
            }
            None => None,
        }
    }
}

/// What a 1R-AA failover attempt came to.
enum FailOver {
    /// The replica took over.
    Done(RecoveryStats),
    /// It could not; the SFF's plan if the hop was marked failed.
    Refused(Option<RestorePlan>),
}

/// A 1R-AS standby: a `criu swrk` with the VNF's namespace, and the image of
/// checkpoint `id`, checked and unpacked in `dir`.
#[derive(Debug)]
struct Standby {
    swrk: Option<Swrk>,
    staged: Option<(CheckpointId, PathBuf)>,
}

/// Where one VNF's checkpoints go in the store, and its scratch space.
#[derive(Debug, Clone)]
pub struct StoreSlot {
    /// The state database.
    pub store: Arc<Store>,
    /// Chain name (store key).
    pub chain: String,
    /// VNF name (store key).
    pub vnf: String,
    /// Scratch directory for images being dumped or restored (tmpfs is best).
    pub scratch: PathBuf,
}

/// One protected VNF.
#[derive(Debug)]
pub struct ProtectedVnf {
    /// Its hop in the SFF's chain.
    pub hop: usize,
    /// Its process.
    pub pid: u32,
    /// Its network namespace file.
    pub netns: PathBuf,
    /// How its command starts afresh (no checkpoint yet, or none
    /// protected): as it was first started, in the place given then.
    start: Spawn,
    slot: StoreSlot,
    mechanism: Mechanism,
    /// A `criu swrk` ready for the next dump.
    dump_worker: Option<Swrk>,
    standby: Standby,
    /// The SFF's end of the VNF's link, in the caller's namespace, and its
    /// transmit drops when the restore point was made.
    link: Option<(String, u64)>,
    /// No longer the VNF's agent: it neither checkpoints nor recovers.
    retired: bool,
    /// The 1R-AA replica's place, when the VNF has one.
    replica: Option<Replica>,
    /// Hears when the replica refresh the last commit started is done.
    refreshing: Option<std::sync::mpsc::Receiver<()>>,
    /// The kernel's view of the VNF's sockets (opened at the first
    /// checkpoint): a checkpoint is refused once they dropped input.
    diag: Option<(PathBuf, nham_netns::sockdiag::SockDiag)>,
    /// MR-AA members 1 to M-1 (member 0 is `pid` in `netns`).
    members: Vec<MemberSlot>,
}

/// What a checkpoint took.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointStats {
    /// The checkpoint.
    pub id: CheckpointId,
    /// Delivery paused (begin to dumped).
    pub pause: Duration,
    /// Waiting for the VNF to drain its socket (begin to SIGSTOP).
    pub drain: Duration,
    /// The VNF stopped (SIGSTOP to SIGCONT).
    pub frozen: Duration,
    /// CRIU's dump, within `frozen`.
    pub dump: Duration,
    /// Begin to durable and released.
    pub total: Duration,
    /// Image bytes (CRIU's).
    pub size: u64,
    /// Bytes in the store (compressed).
    pub stored: u64,
    /// Packets released.
    pub released: u64,
}

/// A checkpoint dumped, not durable yet (see [`ProtectedVnf::dump`]).
#[derive(Debug)]
pub struct Dumped {
    id: CheckpointId,
    hop: usize,
    dir: PathBuf,
    slot: StoreSlot,
    link_now: Option<u64>,
    started: Instant,
    pause: Duration,
    drain: Duration,
    frozen: Duration,
    dump: Duration,
    size: u64,
}

/// A checkpoint durable in the store, not committed yet.
#[derive(Debug)]
pub struct Stored {
    dumped: Dumped,
    stored: u64,
}

impl Dumped {
    /// Compresses the image into the store (step 6's first half). On
    /// failure the checkpoint is aborted in the SFF.
    pub fn store(self, sff: &SffClient) -> Result<Stored, ProtectError> {
        let s = &self.slot;
        match s.store.put(&s.chain, &s.vnf, self.id, &self.dir) {
            Ok(meta) => Ok(Stored {
                stored: meta.stored_bytes,
                dumped: self,
            }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&self.dir);
                let _ = sff.checkpoint_failed(self.hop, self.id);
                Err(e.into())
            }
        }
    }
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

impl ProtectedVnf {
    /// A VNF at `hop`, running as `pid`, started as `start` says (in its
    /// namespace), checkpointed into `slot`.
    pub fn new(
        hop: usize,
        pid: u32,
        start: Spawn,
        slot: StoreSlot,
        mechanism: Mechanism,
    ) -> Result<Self, ProtectError> {
        std::fs::create_dir_all(&slot.scratch).map_err(|e| {
            ProtectError::Process(format!("creating {}: {e}", slot.scratch.display()))
        })?;
        let netns = start.netns.clone();
        let mut v = Self {
            hop,
            pid,
            dump_worker: Swrk::spawn(&netns).ok(),
            netns,
            start,
            slot,
            mechanism: Mechanism::NoReplica,
            standby: Standby {
                swrk: None,
                staged: None,
            },
            link: None,
            diag: None,
            retired: false,
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

    /// Watches the SFF's end of the VNF's link, `iface` (in the caller's
    /// network namespace): a checkpoint is refused while frames sent to the
    /// VNF have been lost on it since the restore point.
    pub fn watch_link(&mut self, iface: &str) -> Result<(), ProtectError> {
        let dropped = nham_netns::tx_dropped(iface)
            .map_err(|e| ProtectError::Process(format!("{iface}: {e}")))?;
        self.link = Some((iface.to_string(), dropped));
        Ok(())
    }

    /// Gives the VNF a place for a 1R-AA replica: namespace file `netns`
    /// (whose `eth0` has the primary's interface index) behind the SFF's
    /// interface `sff_iface` (the hop's standby port).
    pub fn with_replica(mut self, netns: &Path, sff_iface: &str) -> Self {
        self.replica = Some(Replica {
            netns: netns.to_path_buf(),
            sff_iface: sff_iface.to_string(),
            copies: Arc::default(),
            worker: None,
        });
        self
    }

    /// Gives the VNF MR-AA members 1 to M-1 (running, in their places).
    pub fn with_members(mut self, members: Vec<MemberSlot>) -> Self {
        self.members = members;
        self
    }

    /// Gives the VNF a 1R-AA replica place at runtime (see
    /// [`with_replica`](Self::with_replica)).
    pub fn set_replica(&mut self, netns: &Path, sff_iface: &str) {
        if self.replica.is_none() {
            self.replica = Some(Replica {
                netns: netns.to_path_buf(),
                sff_iface: sff_iface.to_string(),
                copies: Arc::default(),
                worker: None,
            });
        }
    }

    /// Keeps MR-AA members 1 to `keep` (a smaller member count at
    /// runtime; the SFF's members change with it). None kept: an MR-AA
    /// agent protects by 0R until told otherwise.
    pub fn keep_members(&mut self, keep: usize) {
        self.members.truncate(keep);
        if self.members.is_empty() && self.mechanism == Mechanism::MultiActive {
            self.mechanism = Mechanism::NoReplica;
        }
    }

    /// Adds MR-AA members after the others (a larger member count at
    /// runtime), in their places, with no process yet: each is restored
    /// by [`recover_member`](Self::recover_member).
    pub fn add_members(&mut self, members: impl IntoIterator<Item = MemberSlot>) {
        self.members.extend(members);
    }

    /// MR-AA member `k`'s process (member 0: the VNF's).
    pub fn member_pid(&self, k: usize) -> Option<u32> {
        match k {
            0 => Some(self.pid),
            _ => self.members.get(k - 1).and_then(|m| m.pid),
        }
    }

    /// Takes this agent off its VNF (the VNF is no longer protected, or
    /// another agent takes over): later calls do nothing.
    pub fn retire(&mut self) {
        self.retired = true;
    }

    /// The mechanism.
    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// Changes the mechanism: a 1R-AS standby is prepared now (from the
    /// latest checkpoint in the store, if any), a 0R VNF lets it go.
    pub fn set_mechanism(&mut self, m: Mechanism) -> Result<(), ProtectError> {
        // MR-AA is a VNF with members (their places and SFF ports made
        // first, see `set_members`); any other mechanism one without.
        if (m == Mechanism::MultiActive) == self.members.is_empty() {
            return Err(ProtectError::Unready(if m == Mechanism::MultiActive {
                "MR-AA needs its members' places and SFF ports first"
            } else {
                "a VNF with MR-AA members is protected by MR-AA until they are removed"
            }));
        }
        if m == Mechanism::ActiveActive && self.replica.is_none() {
            return Err(ProtectError::Unready(
                "1R-AA needs a replica namespace and standby port first",
            ));
        }
        if m != Mechanism::ActiveActive {
            if let Some(r) = self.replica.as_mut() {
                r.discard();
            }
        }
        self.mechanism = m;
        match m {
            Mechanism::NoReplica | Mechanism::ActiveActive | Mechanism::MultiActive => {
                self.standby.swrk = None;
                if let Some((_, dir)) = self.standby.staged.take() {
                    let _ = std::fs::remove_dir_all(dir);
                }
            }
            Mechanism::ActiveStandby => {
                if self.standby.swrk.is_none() {
                    self.standby.swrk = Some(Swrk::spawn(&self.netns)?);
                }
                if self.standby.staged.is_none() {
                    let s = &self.slot;
                    if let Some(meta) = s.store.list(&s.chain, &s.vnf)?.pop() {
                        let dir = s.scratch.join("standby");
                        s.store.unpack(&meta, &dir)?;
                        self.standby.staged = Some((meta.id, dir));
                    }
                }
            }
        }
        Ok(())
    }

    /// After a recovery: the link's drops are counted from now on (what it
    /// dropped before is replayed or caught up), so that a checkpoint
    /// refuses only a loss on the new incarnation's link.
    fn restart_link_count(&mut self) {
        if let Some((iface, base)) = self.link.as_mut() {
            if let Ok(now) = nham_netns::tx_dropped(iface) {
                *base = now;
            }
        }
    }
}

/// Removes what a dump cut short may have left in process `pid`'s working
/// directory: CRIU's parasite mounts a proc for the VNF's PID namespace on
/// `<cwd>/proc.crtools` for the dump and removes it after; a left-over one
/// makes every later dump fail ("Can't get proc fd").
fn clear_stale_proc_dir(pid: u32) {
    let Ok(cwd) = std::fs::read_link(format!("/proc/{pid}/cwd")) else {
        return;
    };
    let stale = cwd.join("proc.crtools");
    if stale.exists() {
        let _ = nix::mount::umount2(&stale, nix::mount::MntFlags::MNT_DETACH);
        if let Err(e) = std::fs::remove_dir(&stale) {
            tracing::warn!("removing {}: {e}", stale.display());
        }
    }
}

impl Drop for ProtectedVnf {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.slot.scratch);
    }
}
