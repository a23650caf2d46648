//! VNF processes as the ground floor knows them: signals, state, reaping,
//! and the pidfd a watcher waits on. Every signal the control plane sends
//! goes through [`signal`] (the one call to `kill(2)`).

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::RuntimeError;

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
