//! One VNF's checkpoints as its State Synchronizer takes them: the driver
//! of [`Checkpointing`](super::synchronizer::Checkpointing) (Hold/Release in
//! the SFF process through [`SffClient`], signals, CRIU, the state
//! database), the checks that refuse a checkpoint which would count lost
//! input as consumed, and the restore of a stored image into a place. What
//! a commit hands on, and recovery by mechanism, are the Replica Manager's
//! (`fms::replica_manager`).
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
//!    The SFF refuses the mark for now if frames delivered before the
//!    checkpoint began are still in the VNF's port's tx ring (it sends
//!    them then, into the stopped VNF's socket): resume, back to step 2.
//! 5. CRIU dump (`leave_running`) through a `criu swrk` worker started
//!    ahead of time; one more look, the VNF still stopped: a frame that
//!    landed in its socket after the mark is in no image though the mark
//!    counts it, and fails the checkpoint. Then SIGCONT and
//!    `CheckpointDumped`: delivery resumes. The delivery pause ends here.
//! 6. The image is compressed, hashed and synced into the [`Store`], then
//!    `CheckpointDone`: held packets before the mark are released. Any error
//!    on the way: `CheckpointFailed`, SIGCONT; nothing is released.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nham_dataplane::hold::CheckpointId;
use nham_sff::remote::SffClient;

use super::criu::{self, Swrk};
use super::database::{CheckpointMeta, Store, StoreError};
use super::error::SyncError;
use super::synchronizer::{CommitStep, Committing, Done};
use crate::runtime::process::{
    is_stopped, kill_and_reap, signal as raw_signal, Niceness, BACKGROUND_NICE,
};

/// How long a stopped VNF's last outputs get to reach the SFF.
pub const OUTPUT_SETTLE: Duration = Duration::from_millis(3);
/// How long a VNF gets to drain its socket before the checkpoint is given up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

fn signal(pid: u32, s: nix::sys::signal::Signal) -> Result<(), SyncError> {
    Ok(raw_signal(pid, s)?)
}

/// Bytes queued on the packet sockets of process `pid`'s network namespace
/// (`/proc/<pid>/net/packet`, column Rmem).
pub fn packet_rmem(pid: u32) -> Result<u64, SyncError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/net/packet"))
        .map_err(|e| SyncError::Process(format!("/proc/{pid}/net/packet: {e}")))?;
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

/// Where a checkpoint's second copy goes: another host (the cluster of
/// `crate::cluster`). A checkpoint counts as committed, and the packets it
/// includes are released, only once a copy is durable there.
pub trait OffHostCopy: Send + Sync + std::fmt::Debug {
    /// Copies checkpoint `meta`, stored here in `file`, to another host,
    /// durable there before it returns; names the host. Blocks (called on
    /// a checkpoint's blocking thread).
    fn copy(&self, meta: &CheckpointMeta, file: &Path) -> Result<String, String>;
}

/// A VNF on another host, as its checkpoints reach it: the steps of the
/// checkpoint protocol that happen where the VNF runs, done there by its
/// host (`cluster::hosting`); the protocol itself stays with the SFF's
/// owner. Blocking calls, each with a timeout.
pub trait RemoteVnfOps: Send + Sync + std::fmt::Debug {
    /// What its sockets hold, whether it is stopped, what its sockets
    /// dropped.
    fn probe(&self) -> Result<(u64, bool, u64), SyncError>;
    /// SIGSTOP (`stop`) or SIGCONT.
    fn signal(&self, stop: bool) -> Result<(), SyncError>;
    /// A CRIU dump of it (stopped), kept there as checkpoint `id`.
    fn dump(&self, id: CheckpointId) -> Result<criu::DumpReport, SyncError>;
    /// Checkpoint `id`'s images, checked, unpacked into `dir` here.
    fn fetch(&self, id: CheckpointId, dir: &Path) -> Result<(), SyncError>;
    /// The incarnation reached now, from now on (this one may be moved on
    /// to the next placement; the one returned is not).
    fn pin(&self) -> Arc<dyn RemoteVnfOps>;
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
    /// Where each checkpoint's second copy goes (`None`: this host only).
    pub copies: Option<Arc<dyn OffHostCopy>>,
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
    /// Copying it to another host (zero when kept on this host only),
    /// within `total`.
    pub copy: Duration,
}

/// A checkpoint dumped, not durable yet (see [`Checkpointer::dump`]).
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

/// A checkpoint durable in the store (and on another host, if the slot
/// says so), not committed yet.
#[derive(Debug)]
pub struct Stored {
    dumped: Dumped,
    stored: u64,
    copy: Duration,
    machine: Committing<SyncError>,
}

impl Dumped {
    /// Compresses the image into the store, then copies it to another host
    /// when the slot has [`StoreSlot::copies`] (step 6's first half), as
    /// [`Committing`] decides. On failure of either the checkpoint is
    /// aborted in the SFF (nothing released) and its image removed.
    pub fn store(self, sff: &SffClient) -> Result<Stored, SyncError> {
        let s = self.slot.clone();
        let mut machine = Committing::new(self.id, s.copies.is_some());
        let (mut meta, mut copy) = (None, Duration::ZERO);
        loop {
            match machine.poll() {
                CommitStep::Store => {
                    let put = s.store.put(&s.chain, &s.vnf, self.id, &self.dir);
                    machine.handle_stored(put.map(|m| meta = Some(m)).map_err(SyncError::from));
                }
                CommitStep::Copy => {
                    let started = Instant::now();
                    let copied = match (&s.copies, &meta) {
                        (Some(c), Some(m)) => c.copy(m, &s.store.file_of(m)).map(drop),
                        _ => Err("nothing to copy".to_string()),
                    };
                    copy = started.elapsed();
                    let id = self.id;
                    machine.handle_copied(copied.map_err(|why| SyncError::NotCopied { id, why }));
                }
                CommitStep::Commit => {
                    return Ok(Stored {
                        stored: meta.map_or(0, |m| m.stored_bytes),
                        copy,
                        dumped: self,
                        machine,
                    })
                }
                end => return Err(self.end_uncommitted(sff, end)),
            }
        }
    }

    /// Carries out an end that is no commit (see [`CommitStep::Aborted`]);
    /// returns why.
    fn end_uncommitted(&self, sff: &SffClient, end: CommitStep<SyncError>) -> SyncError {
        let _ = std::fs::remove_dir_all(&self.dir);
        let CommitStep::Aborted {
            unstore,
            tell_sff,
            why,
        } = end
        else {
            return SyncError::Retired;
        };
        let s = &self.slot;
        if unstore {
            let _ = s.store.remove_checkpoint(&s.chain, &s.vnf, self.id);
        }
        if tell_sff {
            let _ = sff.checkpoint_failed(self.hop, self.id);
        }
        why.unwrap_or(SyncError::Retired)
    }
}

/// A committed checkpoint: its figures, and its image, unpacked, for the
/// Replica Manager to hand to a standby or replica (or remove).
#[derive(Debug)]
pub struct Committed {
    /// What it took.
    pub stats: CheckpointStats,
    /// The image's directory (the caller's now).
    pub dir: PathBuf,
    /// When the checkpoint began (its `total` ends when the caller is
    /// done with the image).
    pub started: Instant,
}

/// The checkpoints of one VNF: where it runs, where its images go, the CRIU
/// worker of its next dump, and what its link and sockets lost.
#[derive(Debug)]
pub struct Checkpointer {
    /// Its hop in the SFF's chain.
    pub hop: usize,
    /// Its process.
    pub pid: u32,
    /// Its network namespace file.
    pub netns: PathBuf,
    /// Where its images go.
    pub slot: StoreSlot,
    /// A `criu swrk` ready for the next dump.
    pub dump_worker: Option<Swrk>,
    /// The SFF's end of the VNF's link, in the caller's namespace, and its
    /// transmit drops when the restore point was made.
    pub link: Option<(String, u64)>,
    /// No longer the VNF's: it neither checkpoints nor recovers.
    pub retired: bool,
    /// The kernel's view of the VNF's sockets (opened at the first
    /// checkpoint): a checkpoint is refused once they dropped input.
    diag: Option<(PathBuf, nham_netns::sockdiag::SockDiag)>,
    /// The VNF runs on another host: its steps are done there.
    remote: Option<Arc<dyn RemoteVnfOps>>,
}

impl Checkpointer {
    /// The checkpoints of the VNF at `hop`, running as `pid` in namespace
    /// `netns`, into `slot` (its scratch directory made now).
    pub fn new(hop: usize, pid: u32, netns: PathBuf, slot: StoreSlot) -> Result<Self, SyncError> {
        std::fs::create_dir_all(&slot.scratch)
            .map_err(|e| SyncError::Process(format!("creating {}: {e}", slot.scratch.display())))?;
        Ok(Self {
            hop,
            pid,
            dump_worker: Swrk::spawn(&netns).ok(),
            netns,
            slot,
            link: None,
            retired: false,
            diag: None,
            remote: None,
        })
    }

    /// The checkpoints of the VNF at `hop` that runs on another host
    /// (`remote` reaches it), into `slot` (its scratch directory made now).
    pub fn new_remote(
        hop: usize,
        remote: Arc<dyn RemoteVnfOps>,
        slot: StoreSlot,
    ) -> Result<Self, SyncError> {
        std::fs::create_dir_all(&slot.scratch)
            .map_err(|e| SyncError::Process(format!("creating {}: {e}", slot.scratch.display())))?;
        Ok(Self {
            hop,
            pid: 0,
            dump_worker: None,
            netns: PathBuf::new(),
            slot,
            link: None,
            retired: false,
            diag: None,
            remote: Some(remote),
        })
    }

    /// Watches the SFF's end of the VNF's link, `iface` (in the caller's
    /// network namespace): a checkpoint is refused while frames sent to the
    /// VNF have been lost on it since the restore point.
    pub fn watch_link(&mut self, iface: &str) -> Result<(), SyncError> {
        let dropped = nham_netns::tx_dropped(iface)
            .map_err(|e| SyncError::Process(format!("{iface}: {e}")))?;
        self.link = Some((iface.to_string(), dropped));
        Ok(())
    }

    /// The SFF's end of the VNF's link, when watched.
    pub fn link_iface(&self) -> Option<&str> {
        self.link.as_ref().map(|(i, _)| i.as_str())
    }

    /// After a recovery: the link's drops are counted from now on (what it
    /// dropped before is replayed or caught up), so that a checkpoint
    /// refuses only a loss on the new incarnation's link.
    pub fn restart_link_count(&mut self) {
        if let Some((iface, base)) = self.link.as_mut() {
            if let Ok(now) = nham_netns::tx_dropped(iface) {
                *base = now;
            }
        }
    }

    /// The CRIU worker of the next dump, started ahead of time in the VNF's
    /// (possibly new) namespace.
    pub fn prepare(&mut self) {
        if self.dump_worker.is_none() && self.remote.is_none() {
            self.dump_worker = Swrk::spawn(&self.netns).ok();
        }
    }

    /// Restores checkpoint `id` from the store into namespace `netns`
    /// (stopped, as it was dumped), checked before anything is handed to
    /// CRIU; `iface`: the SFF's end of the link it comes back behind.
    pub fn restore_in(
        &self,
        id: CheckpointId,
        netns: &Path,
        iface: Option<&str>,
    ) -> Result<u32, SyncError> {
        let s = &self.slot;
        let meta = s
            .store
            .get(&s.chain, &s.vnf, id)?
            .ok_or(StoreError::Missing {
                chain: s.chain.clone(),
                vnf: s.vnf.clone(),
                id,
            })?;
        // Members restore at once: each its own unpacked copy.
        let dir = s
            .scratch
            .join(nham_netns::unique_name(&format!("restore-{id}-")));
        s.store.unpack(&meta, &dir)?;
        let r = restore_stopped(None, &dir, netns, iface);
        let _ = std::fs::remove_dir_all(&dir);
        r
    }

    /// `Some(now)` if the link lost nothing since the restore point.
    fn link_intact(&self) -> Result<Option<u64>, SyncError> {
        let Some((iface, base)) = &self.link else {
            return Ok(None);
        };
        let err = |e: nham_netns::NetnsError| SyncError::Process(format!("{iface}: {e}"));
        let dropped = nham_netns::tx_dropped(iface).map_err(err)?;
        let carrier = nham_netns::has_carrier(iface).map_err(err)?;
        if dropped != *base || !carrier {
            return Err(SyncError::LinkLoss {
                dropped: dropped.saturating_sub(*base),
                carrier,
            });
        }
        Ok(Some(dropped))
    }

    /// `Ok` if the VNF's receiving sockets dropped nothing (or the kernel
    /// cannot say: then the data-path probes are the only watch).
    fn input_intact(&mut self) -> Result<(), SyncError> {
        if let Some(r) = &self.remote {
            let (_, _, dropped) = r.probe()?;
            if dropped > 0 {
                return Err(SyncError::InputDropped { dropped });
            }
            return Ok(());
        }
        let Some(s) = self.packet_sockets() else {
            return Ok(());
        };
        let dropped = nham_netns::sockdiag::VnfSockets::of_process(&s, self.pid).drops;
        if dropped > 0 {
            return Err(SyncError::InputDropped { dropped });
        }
        Ok(())
    }

    /// The packet sockets of the VNF's namespace, from sock_diag (`None`
    /// when the kernel cannot be asked).
    fn packet_sockets(&mut self) -> Option<Vec<nham_netns::sockdiag::PacketSocket>> {
        // A 1R-AA failover moves the VNF to its replica's namespace.
        if self.diag.as_ref().is_none_or(|(p, _)| *p != self.netns) {
            self.diag = nham_netns::sockdiag::SockDiag::open(&self.netns)
                .ok()
                .map(|d| (self.netns.clone(), d));
        }
        let (_, diag) = self.diag.as_mut()?;
        match diag.packet_sockets() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!("sock_diag: {e}");
                self.diag = None;
                None
            }
        }
    }

    /// The VNF's `TPACKET_V3` receive rings, mapped for this checkpoint
    /// (not kept: the mapping holds the socket open).
    fn rings(&mut self) -> Result<Option<crate::vsm::ring::VnfRings>, SyncError> {
        // (A VNF on another host is not read through a mapped ring.)
        if self.remote.is_some() {
            return Ok(None);
        }
        let Some(sockets) = self.packet_sockets() else {
            return Ok(None);
        };
        if !sockets.iter().any(|s| s.rx_ring.is_some()) {
            return Ok(None);
        }
        let rings = crate::vsm::ring::VnfRings::of(self.pid, &sockets)?;
        Ok((!rings.is_empty()).then_some(rings))
    }

    /// Steps 1 to 5 of the checkpoint protocol: stop delivery, let the VNF
    /// drain, freeze, mark, dump, thaw; delivery resumes. The image is not
    /// durable yet: [`Dumped::store`] makes it so, without this agent (so a
    /// failure meanwhile is not kept waiting), then [`commit`](Self::commit).
    /// `background`: the VNF's other MR-AA members serve meanwhile, so the
    /// dump must not take the CPU from them.
    pub fn dump(&mut self, sff: &SffClient, background: bool) -> Result<Dumped, SyncError> {
        if self.retired {
            return Err(SyncError::Retired);
        }
        let started = Instant::now();
        let id = sff.begin_checkpoint(self.hop).map_err(SyncError::Sff)?;
        // A VNF on another host: the incarnation current as the checkpoint
        // begins is the one stopped, dumped and resumed throughout, though
        // a new one is placed meanwhile (MR-AA member 0 restored: the SFF
        // voided this checkpoint when the old one failed, and only the new
        // one is current once the SFF may begin another).
        let moving = self.remote.clone();
        self.remote = moving.as_ref().map(|r| r.pin());
        let dumped = self.dump_begun(sff, background, id, started);
        self.remote = moving;
        dumped
    }

    /// [`dump`](Self::dump) once checkpoint `id` has begun.
    fn dump_begun(
        &mut self,
        sff: &SffClient,
        background: bool,
        id: CheckpointId,
        started: Instant,
    ) -> Result<Dumped, SyncError> {
        use crate::vsm::synchronizer::{Checkpointing, Failure, Look, Step};
        use nix::sys::signal::Signal;
        let (hop, pid) = (self.hop, self.pid);
        let dir = self.slot.scratch.join(format!("ckpt-{id}"));
        // The protocol's decisions are the machine's; this loop does what
        // it says. (MR-AA: member 0 is the one dumped, and the SFF pauses
        // only it; the other members go on serving.)
        let mut m = Checkpointing::new(
            started,
            OUTPUT_SETTLE,
            DRAIN_TIMEOUT,
            Duration::from_micros(200),
        );
        // A VNF reading through a ring: what waits there is not in rmem.
        let mut rings = None;
        match self.rings() {
            Ok(Some(r)) if r.losing() => {
                m.handle_look(started, Err(SyncError::InputDropped { dropped: 1 }));
            }
            Ok(r) => rings = r,
            Err(e) => m.handle_look(started, Err(e)),
        }
        let mut link_now = None;
        let mut report = None;
        let (frozen, resumed) = loop {
            match m.poll(Instant::now()) {
                Step::Look => {
                    let look = match &self.remote {
                        Some(r) => r.probe().map(|(rmem, stopped, _)| Look {
                            rmem,
                            ring_unread: false,
                            stopped,
                        }),
                        None => packet_rmem(pid).map(|rmem| Look {
                            rmem,
                            ring_unread: rings.as_ref().is_some_and(|r| r.unread()),
                            stopped: is_stopped(pid),
                        }),
                    };
                    m.handle_look(Instant::now(), look);
                }
                Step::Sleep(d) => std::thread::sleep(d),
                Step::Stop => {
                    let stopped = match &self.remote {
                        Some(r) => r.signal(true),
                        None => signal(pid, Signal::SIGSTOP),
                    };
                    m.handle_stop(Instant::now(), stopped)
                }
                // Every frame delivered must have reached the VNF's state:
                // one lost on its link (cut off) or dropped at its full
                // socket would be counted as consumed. (Its sockets were
                // opened by this incarnation: any drop is one since the
                // restore point.)
                Step::CheckIntact => {
                    let intact = self
                        .link_intact()
                        .map(|d| link_now = d)
                        .and_then(|()| self.input_intact());
                    m.handle_intact(intact);
                }
                Step::Mark => match sff.quiesced(hop, id) {
                    Err(nham_sff::remote::RemoteError::Busy(why)) => {
                        tracing::debug!(hop, pid, "mark refused for now: {why}");
                        m.handle_mark_in_transit(Instant::now());
                    }
                    r => m.handle_mark(r.map(drop).map_err(SyncError::Sff)),
                },
                // With the worker started ahead of time.
                Step::Dump if self.remote.is_some() => {
                    let dumped = self
                        .remote
                        .as_ref()
                        .map_or_else(|| Err(SyncError::Retired), |r| r.dump(id));
                    m.handle_dump(dumped.map(|r| report = Some(r)));
                }
                Step::Dump => {
                    // MR-AA: the others serve meanwhile: the dump is
                    // background work and must not take the CPU from them.
                    let _background = background.then(|| {
                        if let Some(w) = &self.dump_worker {
                            w.renice(BACKGROUND_NICE);
                        }
                        Niceness::for_this_thread(BACKGROUND_NICE)
                    });
                    let _ = std::fs::remove_dir_all(&dir);
                    // Where the kernel is in each ring (the restore puts it
                    // back there); the mapping goes before the dump.
                    let had_rings = rings.is_some();
                    let positions = rings.take().map(|r| r.positions()).unwrap_or_default();
                    let dumped = criu::dump(self.dump_worker.take(), pid, &self.netns, &dir)
                        .map_err(SyncError::from)
                        .and_then(|r| Ok(crate::vsm::ring::save(&dir, &positions).map(|()| r)?));
                    // Mapped again for the look after the dump: a frame
                    // that landed in a ring meanwhile is not in rmem.
                    if had_rings && dumped.is_ok() {
                        rings = self.rings().ok().flatten();
                    }
                    m.handle_dump(dumped.map(|r| report = Some(r)));
                }
                Step::Resume => match &self.remote {
                    Some(r) => resume_remote(r.as_ref()),
                    None => {
                        let _ = signal(pid, Signal::SIGCONT);
                    }
                },
                Step::Report => {
                    m.handle_report(
                        sff.checkpoint_dumped(hop, id)
                            .map(drop)
                            .map_err(SyncError::Sff),
                    );
                }
                Step::Done { frozen, resumed } => break (frozen, resumed),
                Step::Fail(why) => {
                    // A stop sent to a VNF on another host may have landed
                    // though its answer was lost: it is resumed in any case.
                    if let Some(r) = &self.remote {
                        resume_remote(r.as_ref());
                    }
                    let _ = std::fs::remove_dir_all(&dir);
                    let _ = sff.checkpoint_failed(hop, id);
                    return Err(match why {
                        Failure::NotDrained { rmem } => SyncError::NotDrained { pid, rmem },
                        Failure::InTransit => SyncError::InTransit { pid },
                        Failure::LandedDuringDump { rmem } => {
                            SyncError::LandedDuringDump { pid, rmem }
                        }
                        Failure::Stopped => SyncError::Stopped(pid),
                        Failure::Step(e) => e,
                        Failure::Ended => SyncError::Process("checkpoint protocol ended".into()),
                    });
                }
            }
        };
        let report = report.ok_or_else(|| SyncError::Process("dumped without a report".into()))?;
        let pause = started.elapsed();
        match &self.remote {
            // Its images come here, off the pause (the VNF runs again).
            Some(r) => {
                if let Err(e) = r.fetch(id, &dir) {
                    let _ = std::fs::remove_dir_all(&dir);
                    let _ = sff.checkpoint_failed(hop, id);
                    return Err(e);
                }
            }
            // The next dump's worker starts now, off the pause.
            None => self.dump_worker = Swrk::spawn(&self.netns).ok(),
        }
        Ok(Dumped {
            id,
            hop,
            dir,
            slot: self.slot.clone(),
            link_now,
            started,
            pause,
            drain: frozen.duration_since(started),
            frozen: resumed.duration_since(frozen),
            dump: report.duration,
            size: report.size,
        })
    }

    /// Step 6: the image is durable; release what it includes. Fails if
    /// the VNF failed meanwhile (the SFF aborted the checkpoint): the image
    /// is then never restored. The unpacked image is handed back with the
    /// figures, for the standby or replica to take (or to be removed).
    pub fn commit(&mut self, sff: &SffClient, stored: Stored) -> Result<Committed, SyncError> {
        let Stored {
            dumped,
            stored,
            copy,
            mut machine,
        } = stored;
        let mut released = 0;
        // Its agent changed meanwhile (unprotected, moved): the SFF's hop
        // is not asked, and must not wait for this checkpoint for ever.
        let done = if self.retired || dumped.hop != self.hop {
            Done::Retired
        } else {
            match sff.checkpoint_done(dumped.hop, dumped.id) {
                Ok(d) => {
                    released = d.released;
                    Done::Released {
                        fallback: d.fallback,
                    }
                }
                Err(e @ nham_sff::remote::RemoteError::Refused(_)) => {
                    Done::Refused(SyncError::Sff(e))
                }
                Err(e) => Done::Lost(SyncError::Sff(e)),
            }
        };
        machine.handle_done(done);
        let keep = match machine.poll() {
            CommitStep::Committed { keep } => keep,
            end => return Err(dumped.end_uncommitted(sff, end)),
        };
        let s = &self.slot;
        let _ = s.store.retain(&s.chain, &s.vnf, &keep);
        if let (Some((_, base)), Some(now)) = (self.link.as_mut(), dumped.link_now) {
            *base = now;
        }
        let Dumped {
            id, dir, started, ..
        } = dumped;
        let stats = CheckpointStats {
            id,
            pause: dumped.pause,
            drain: dumped.drain,
            frozen: dumped.frozen,
            dump: dumped.dump,
            total: started.elapsed(),
            size: dumped.size,
            stored,
            released,
            copy,
        };
        Ok(Committed {
            stats,
            dir,
            started,
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.slot.scratch);
    }
}

/// Restores the images in `dir` into namespace `netns` (through `swrk`,
/// or a new `criu swrk`), stopped as it was dumped, and puts the kernel's
/// position in each of its receive rings back where the checkpoint found
/// it ([`crate::vsm::ring`]: filler sent on `iface`, the SFF's end of the
/// link the process comes back behind).
pub fn restore_stopped(
    swrk: Option<Swrk>,
    dir: &Path,
    netns: &Path,
    iface: Option<&str>,
) -> Result<u32, SyncError> {
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

/// Resumes a VNF on another host, trying three times (a lost answer must
/// not leave it stopped for good; a resumed VNF ignores another SIGCONT).
fn resume_remote(r: &dyn RemoteVnfOps) {
    for _ in 0..3 {
        match r.signal(false) {
            Ok(()) => return,
            // (Its recovery elsewhere is under way.)
            Err(e @ SyncError::HostDown(_)) => {
                return tracing::debug!("not resuming a VNF on another host: {e}")
            }
            Err(e) => tracing::warn!("resuming a VNF on another host: {e}"),
        }
    }
}
