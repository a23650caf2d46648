//! The checkpoint protocol and 0R recovery for one VNF, tying CRIU to the
//! Hold/Release core in the SFF thread (through [`nham_sff::Command`]).
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
//! 5. `criu dump --leave-running`, then SIGCONT.
//! 6. `CheckpointDone`: held packets before the mark are released. Any
//!    error on the way: `CheckpointFailed`, SIGCONT; nothing is released.
//!
//! # Recovery (0R)
//!
//! `Failure` (the SFF stops the hop and names the checkpoint), restore the
//! image into the VNF's namespace (or start the command afresh when there is
//! no checkpoint yet), `Restored` (the SFF replays every held packet after
//! the mark, in order).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nham_dataplane::hold::CheckpointId;
use nham_sff::{Command as SffCommand, SffHandle};
use thiserror::Error;

use crate::criu;

/// How long a stopped VNF's last outputs get to reach the SFF.
pub const OUTPUT_SETTLE: Duration = Duration::from_millis(3);
/// How long a VNF gets to drain its socket before the checkpoint is given up.
pub const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

/// Errors of the protocol.
#[derive(Debug, Error)]
pub enum ProtectError {
    /// The SFF refused or is gone.
    #[error("SFF: {0}")]
    Sff(String),
    /// CRIU failed.
    #[error(transparent)]
    Criu(#[from] criu::CriuError),
    /// The VNF did not drain its socket in time.
    #[error("VNF {pid} still had {rmem} bytes queued after {DRAIN_TIMEOUT:?}")]
    NotDrained {
        /// Process.
        pid: u32,
        /// Bytes queued.
        rmem: u64,
    },
    /// Signalling or starting the process failed.
    #[error("process: {0}")]
    Process(String),
}

fn sff_err(e: impl std::fmt::Display) -> ProtectError {
    ProtectError::Sff(e.to_string())
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

fn signal(pid: u32, s: nix::sys::signal::Signal) -> Result<(), ProtectError> {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), s)
        .map_err(|e| ProtectError::Process(format!("{s} to {pid}: {e}")))
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
    /// Where its images go (one directory per checkpoint).
    pub images: PathBuf,
    /// Its command, to start it afresh when no checkpoint exists yet.
    pub command: Vec<String>,
    /// Committed images by checkpoint id (only the latest is kept).
    committed: BTreeMap<CheckpointId, PathBuf>,
}

/// What a checkpoint took.
#[derive(Debug, Clone, Copy)]
pub struct CheckpointStats {
    /// The checkpoint.
    pub id: CheckpointId,
    /// Delivery paused (begin to done).
    pub pause: Duration,
    /// The VNF stopped (SIGSTOP to SIGCONT).
    pub frozen: Duration,
    /// Image bytes.
    pub size: u64,
    /// Packets released.
    pub released: u64,
}

/// What a recovery took.
#[derive(Debug, Clone, Copy)]
pub struct RecoveryStats {
    /// From the call to the VNF running again (replay starting).
    pub duration: Duration,
    /// Packets to be delivered again.
    pub replay: u64,
    /// Whether an image was restored (false: started afresh).
    pub restored: bool,
}

impl ProtectedVnf {
    /// A VNF at `hop`, running as `pid` in `netns`.
    pub fn new(hop: usize, pid: u32, netns: &Path, images: &Path, command: Vec<String>) -> Self {
        Self {
            hop,
            pid,
            netns: netns.to_path_buf(),
            images: images.to_path_buf(),
            command,
            committed: BTreeMap::new(),
        }
    }

    /// Runs the checkpoint protocol once.
    pub fn checkpoint(&mut self, sff: &SffHandle) -> Result<CheckpointStats, ProtectError> {
        let started = Instant::now();
        let hop = self.hop;
        let id = sff
            .command(|reply| SffCommand::BeginCheckpoint { hop, reply })
            .map_err(sff_err)?
            .map_err(sff_err)?;
        let fail = |sff: &SffHandle, e: ProtectError| {
            let _ = sff.command(|reply| SffCommand::CheckpointFailed { hop, id, reply });
            e
        };
        // 2. Drained? 3. Stop it; let its last outputs arrive; still
        // drained? (A frame the SFF sent just before step 1 may land in the
        // socket after a first look: its queue is not in the image, so it
        // must be empty while the VNF is stopped.)
        let resume = |pid| signal(pid, nix::sys::signal::Signal::SIGCONT);
        let frozen_at = loop {
            let rmem = packet_rmem(self.pid).map_err(|e| fail(sff, e))?;
            if rmem == 0 {
                signal(self.pid, nix::sys::signal::Signal::SIGSTOP).map_err(|e| fail(sff, e))?;
                let at = Instant::now();
                std::thread::sleep(OUTPUT_SETTLE);
                match packet_rmem(self.pid) {
                    Ok(0) => break at,
                    Ok(_) => {
                        let _ = resume(self.pid);
                    }
                    Err(e) => {
                        let _ = resume(self.pid);
                        return Err(fail(sff, e));
                    }
                }
            } else if started.elapsed() > DRAIN_TIMEOUT {
                return Err(fail(
                    sff,
                    ProtectError::NotDrained {
                        pid: self.pid,
                        rmem,
                    },
                ));
            } else {
                std::thread::sleep(Duration::from_micros(200));
            }
        };
        // 4. Mark.
        if let Err(e) = sff
            .command(|reply| SffCommand::Quiesced { hop, id, reply })
            .map_err(sff_err)
            .and_then(|r| r.map_err(sff_err))
        {
            let _ = resume(self.pid);
            return Err(fail(sff, e));
        }
        // 5. Dump, resume.
        let dir = self.images.join(format!("ckpt-{id}"));
        let dumped = criu::dump(None, self.pid, &self.netns, &dir);
        let _ = resume(self.pid);
        let frozen = frozen_at.elapsed();
        let report = match dumped {
            Ok(r) => r,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(fail(sff, e.into()));
            }
        };
        // 6. Commit and release.
        let done = sff
            .command(|reply| SffCommand::CheckpointDone { hop, id, reply })
            .map_err(sff_err)?
            .map_err(sff_err)?;
        for (_, old) in std::mem::take(&mut self.committed) {
            let _ = std::fs::remove_dir_all(old);
        }
        self.committed.insert(id, dir);
        Ok(CheckpointStats {
            id,
            pause: started.elapsed(),
            frozen,
            size: report.size,
            released: done.released,
        })
    }

    /// The VNF process is gone: restore it (0R) and let the SFF replay.
    pub fn recover(&mut self, sff: &SffHandle) -> Result<RecoveryStats, ProtectError> {
        let started = Instant::now();
        let hop = self.hop;
        let plan = sff
            .command(|reply| SffCommand::Failure { hop, reply })
            .map_err(sff_err)?;
        let image = plan
            .checkpoint
            .and_then(|id| self.committed.get(&id).cloned());
        let restored = image.is_some();
        self.pid = match image {
            Some(dir) => {
                let pid = criu::restore(None, &dir, &self.netns)?.0;
                // It was dumped while stopped (step 3) and comes back stopped.
                signal(pid, nix::sys::signal::Signal::SIGCONT)?;
                pid
            }
            None => self.start_fresh()?,
        };
        let r = sff
            .command(|reply| SffCommand::Restored { hop, reply })
            .map_err(sff_err)?
            .map_err(sff_err)?;
        Ok(RecoveryStats {
            duration: started.elapsed(),
            replay: r.replay,
            restored,
        })
    }

    fn start_fresh(&self) -> Result<u32, ProtectError> {
        let f = std::fs::File::open(&self.netns)
            .map_err(|e| ProtectError::Process(format!("{}: {e}", self.netns.display())))?;
        let argv = self.command.clone();
        let child = std::thread::spawn(move || -> std::io::Result<std::process::Child> {
            nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(std::io::Error::from)?;
            Command::new(&argv[0])
                .args(&argv[1..])
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
        })
        .join()
        .map_err(|_| ProtectError::Process("spawn thread panicked".into()))?
        .map_err(|e| ProtectError::Process(format!("starting {:?}: {e}", self.command)))?;
        let pid = child.id();
        // Replay must not start before the VNF has its socket open, or the
        // first frames would go nowhere: wait for a packet socket to appear
        // in its namespace.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let sockets = std::fs::read_to_string(format!("/proc/{pid}/net/packet"))
                .map(|t| t.lines().count().saturating_sub(1))
                .unwrap_or(0);
            if sockets > 0 {
                return Ok(pid);
            }
            if Instant::now() > deadline {
                return Err(ProtectError::Process(format!(
                    "{:?} opened no packet socket in 5 s",
                    self.command
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
