//! VNF processes as the ground floor knows them: signals, state, reaping,
//! and the pidfd a watcher waits on. A VNF (or MR-AA member) the daemon
//! runs is held as a [`Process`]: its pid and a pidfd opened once, through
//! which it is signalled, so a pid the kernel reused once the process was
//! reaped is never signalled by mistake. Processes known only by pid (a
//! CRIU restore's result before it is adopted, a dump's target) go through
//! [`signal`], the one call to `kill(2)`.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::RuntimeError;

/// A process the daemon holds: its pid and a pidfd (shared by clones).
#[derive(Debug, Clone)]
pub struct Process {
    pid: u32,
    fd: Arc<OwnedFd>,
}

impl Process {
    /// Opens process `pid` (it must exist: a zombie not yet reaped counts).
    pub fn open(pid: u32) -> Result<Self, RuntimeError> {
        Ok(Self {
            pid,
            fd: Arc::new(pidfd(pid)?),
        })
    }

    /// Its pid (for `/proc`, CRIU and logs; never for a signal).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A pidfd of its own for a watcher (readable once the process exits).
    pub fn watch_fd(&self) -> Result<OwnedFd, RuntimeError> {
        self.fd.try_clone().map_err(RuntimeError::io(format!(
            "duplicating the pidfd of {}",
            self.pid
        )))
    }

    /// Sends `sig` through its pidfd: once the process is gone (reaped),
    /// this fails with ESRCH and no other process is touched.
    pub fn signal(&self, sig: Signal) -> Result<(), RuntimeError> {
        let named = rustix::process::Signal::from_named_raw(sig as i32);
        let sent = match named {
            Some(s) => rustix::process::pidfd_send_signal(&*self.fd, s).map_err(Into::into),
            None => Err(std::io::Error::from_raw_os_error(nix::libc::EINVAL)),
        };
        sent.map_err(|e: std::io::Error| RuntimeError::Signal {
            signal: sig,
            pid: self.pid,
            source: nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        })
    }

    /// SIGKILLs it and reaps it (ours: a child, or CRIU's restore's).
    pub fn kill_and_reap(&self) {
        let _ = self.signal(Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(Pid::from_raw(self.pid as i32), None);
    }

    /// Its scheduler state (see [`state`]).
    pub fn state(&self) -> Option<char> {
        state(self.pid)
    }

    /// Stops it (SIGSTOP) and waits up to `timeout` until it no longer
    /// runs; see [`stop_and_wait`].
    pub async fn stop_and_wait(&self, timeout: Duration) -> bool {
        let _ = self.signal(Signal::SIGSTOP);
        wait_stopped(self.pid, timeout).await
    }
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: Signal) -> Result<(), RuntimeError> {
    nix::sys::signal::kill(Pid::from_raw(pid as i32), sig).map_err(|source| RuntimeError::Signal {
        signal: sig,
        pid,
        source,
    })
}

/// SIGKILLs process `pid` (ours: a child) and reaps it.
pub fn kill_and_reap(pid: u32) {
    let _ = signal(pid, Signal::SIGKILL);
    let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as i32), None);
}

/// Its scheduler state (`/proc/<pid>/stat`: `R`, `S`, `T` stopped...),
/// `None` once it is gone.
pub fn state(pid: u32) -> Option<char> {
    nham_netns::process_state(pid).map(|(s, _)| s)
}

/// Exists and is not a zombie.
pub fn is_alive(pid: u32) -> bool {
    !matches!(state(pid), None | Some('Z' | 'X'))
}

/// Stopped by a signal (`T`).
pub fn is_stopped(pid: u32) -> bool {
    state(pid) == Some('T')
}

/// Stops `pid` (SIGSTOP) and waits up to `timeout` until it no longer
/// runs (stopped, or gone); returns whether it stopped in time.
pub async fn stop_and_wait(pid: u32, timeout: Duration) -> bool {
    let _ = signal(pid, Signal::SIGSTOP);
    wait_stopped(pid, timeout).await
}

async fn wait_stopped(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match state(pid) {
            Some('T' | 't' | 'Z' | 'X') | None => return true,
            _ if Instant::now() >= deadline => return false,
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// A pidfd for `pid`: readable once it exits.
pub fn pidfd(pid: u32) -> Result<OwnedFd, RuntimeError> {
    let p = rustix::process::Pid::from_raw(pid as i32).ok_or(RuntimeError::NoPid)?;
    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
        .map_err(|e| RuntimeError::io(format!("pidfd_open({pid})"))(e.into()))
}

/// Nice value of CRIU work off the service path (MR-AA dumps and member
/// restores, 1R-AA replica refreshes).
pub const BACKGROUND_NICE: i32 = 10;

/// Nice value of a recovery on the service path.
pub const URGENT_NICE: i32 = -10;

/// Runs the calling thread (and what it starts) at another nice value
/// until dropped (Linux: the value is per thread).
#[derive(Debug)]
pub struct Niceness(Option<i32>);

impl Niceness {
    /// The calling thread at `nice` from now on (unchanged if the kernel
    /// refuses).
    pub fn for_this_thread(nice: i32) -> Self {
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
