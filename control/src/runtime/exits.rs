//! Early word of a VNF's exit: the kernel's `sched_process_exit`
//! tracepoint, through [`nham_ebpf::exit::ExitWatch`], before the exit
//! reaches the pidfd (which waits for the VNF's sockets to be released, an
//! RCU grace period: 10 to 15 ms). The pidfd stays the authority: each
//! watcher waits on both, and where BPF cannot be loaded (no BTF, no
//! privilege) on the pidfd alone.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use nham_ebpf::exit::ExitWatch;

/// One watched process's early word: an eventfd the watch writes, and when
/// the process exited.
#[derive(Debug)]
pub struct Early {
    fd: OwnedFd,
    /// When it exited (the kernel's time) and when the daemon heard.
    at: Mutex<Option<(Instant, Instant)>>,
}

/// The fd that becomes readable when the exit is reported.
impl AsFd for Early {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Early {
    /// When the process exited and when the daemon heard of it, once
    /// reported.
    pub fn at(&self) -> Option<(Instant, Instant)> {
        *self.at.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

type Waiting = Arc<Mutex<HashMap<u32, Arc<Early>>>>;

/// The exit watch and the processes waited on.
#[derive(Debug)]
pub struct EarlyExits {
    watch: Option<ExitWatch>,
    waiting: Waiting,
}

impl EarlyExits {
    /// Loads the BPF exit watch; without it (logged), only pidfds tell.
    /// `NHAM_EXIT_WATCH=off` leaves it out.
    pub fn start() -> Self {
        let waiting: Waiting = Arc::default();
        if std::env::var("NHAM_EXIT_WATCH").is_ok_and(|v| v == "off") {
            tracing::info!("NHAM_EXIT_WATCH=off: VNF exits are seen through pidfds only");
            return Self {
                watch: None,
                waiting,
            };
        }
        let w = waiting.clone();
        let watch = ExitWatch::start(move |e| {
            let early = w
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&e.pid);
            if let Some(early) = early {
                let heard = Instant::now();
                *early.at.lock().unwrap_or_else(PoisonError::into_inner) = Some((e.at, heard));
                let _ = rustix::io::write(&early.fd, &1u64.to_ne_bytes());
            }
        });
        let watch = match watch {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(
                    "no early exit detection (sched_process_exit BPF): {e}; VNF exits are seen through pidfds only, 10 to 15 ms later"
                );
                None
            }
        };
        Self { watch, waiting }
    }

    /// Whether exits are reported early.
    pub fn active(&self) -> bool {
        self.watch.is_some()
    }

    /// Reports the exit of process `pid` from now on (`None` without the
    /// watch).
    pub fn watch(&self, pid: u32) -> Option<Arc<Early>> {
        let watch = self.watch.as_ref()?;
        let fd = rustix::event::eventfd(
            0,
            rustix::event::EventfdFlags::CLOEXEC | rustix::event::EventfdFlags::NONBLOCK,
        )
        .ok()?;
        let early = Arc::new(Early {
            fd,
            at: Mutex::new(None),
        });
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(pid, early.clone());
        if let Err(e) = watch.watch(pid) {
            tracing::warn!(pid, "watching its exit: {e}");
            self.forget(pid);
            return None;
        }
        Some(early)
    }

    /// No longer waits on process `pid`.
    pub fn forget(&self, pid: u32) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&pid);
        if let Some(w) = &self.watch {
            w.unwatch(pid);
        }
    }
}

/// The pid a pidfd refers to (`Pid:` in `/proc/self/fdinfo/<fd>`).
pub fn pid_of(pidfd: &OwnedFd) -> Option<u32> {
    use std::os::fd::AsRawFd;
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd())).ok()?;
    info.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|p| p.trim().parse::<i64>().ok())
        .filter(|&p| p > 0)
        .map(|p| p as u32)
}
