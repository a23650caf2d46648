//! [`ExitWatch`]: the exit of a watched process the moment it happens.
//!
//! A VNF killed by SIGKILL reaches its pidfd only after `do_exit` has closed
//! its files, and closing a packet socket waits for an RCU grace period:
//! 10 to 15 ms on a quiet host, which every crash's detection paid. The BPF
//! program `src/bpf/exit.bpf.c` runs on the `sched_process_exit` tracepoint
//! (attached as `tp_btf`, so no tracefs is needed), before `exit_files`,
//! and reports the exit of the last thread of every watched thread group
//! through a ring buffer, with the kernel's `CLOCK_MONOTONIC` time of it.
//! The pidfd stays the authority (and the fallback where BPF is not
//! available): this is the early word.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use libbpf_rs::{Link, MapCore, MapFlags, MapHandle, Object, ObjectBuilder, RingBufferBuilder};

use crate::EbpfError;

const OBJECT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/exit.bpf.o"));
const PROGRAM: &str = "nham_exit";

/// One exit, as the kernel reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The thread group (process) that exited.
    pub pid: u32,
    /// When its last thread ran `do_exit` (our clock).
    pub at: Instant,
}

/// Parses one ring-buffer record (`struct exit_event`: tgid, pid, ns).
fn parse(data: &[u8]) -> Option<(u32, u64)> {
    let tgid = u32::from_ne_bytes(data.get(0..4)?.try_into().ok()?);
    let ns = u64::from_ne_bytes(data.get(8..16)?.try_into().ok()?);
    Some((tgid, ns))
}

/// `CLOCK_MONOTONIC` now, in ns (the clock of `bpf_ktime_get_ns`).
fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// The exit watch: the program attached, the set of watched pids, and a
/// thread that hands each exit to a callback. Detached when dropped.
#[derive(Debug)]
pub struct ExitWatch {
    _object: Object,
    _link: Link,
    watched: MapHandle,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ExitWatch {
    /// Loads and attaches the program; `on_exit` is called (on a thread
    /// of the watch's own) for every exit of a watched process.
    pub fn start(mut on_exit: impl FnMut(Exit) + Send + 'static) -> Result<Self, EbpfError> {
        let open = ObjectBuilder::default()
            .open_memory(OBJECT)
            .map_err(EbpfError::Load)?;
        let object = open.load().map_err(EbpfError::Load)?;
        let link = object
            .progs_mut()
            .find(|p| p.name() == PROGRAM)
            .ok_or(EbpfError::Missing("program nham_exit"))?
            .attach()
            .map_err(EbpfError::AttachTracepoint)?;
        let handle = |name: &'static str| {
            let map = object
                .maps()
                .find(|m| m.name() == name)
                .ok_or(EbpfError::Missing(name))?;
            MapHandle::try_from(&map).map_err(EbpfError::Load)
        };
        let watched = handle("watched")?;
        let exits = handle("exits")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("nham-exit-watch".into())
            .spawn(move || {
                let mut builder = RingBufferBuilder::new();
                let added = builder
                    .add(&exits, move |data: &[u8]| {
                        if let Some((pid, ns)) = parse(data) {
                            let ago = Duration::from_nanos(monotonic_ns().saturating_sub(ns));
                            let now = Instant::now();
                            on_exit(Exit {
                                pid,
                                at: now.checked_sub(ago).unwrap_or(now),
                            });
                        }
                        0
                    })
                    .is_ok();
                let Ok(ring) = builder.build() else {
                    return;
                };
                if !added {
                    return;
                }
                while !stopping.load(Ordering::Relaxed) {
                    let _ = ring.poll(Duration::from_millis(100));
                }
            })
            .map_err(|e| EbpfError::Thread(e.to_string()))?;
        Ok(Self {
            _object: object,
            _link: link,
            watched,
            stop,
            thread: Some(thread),
        })
    }

    /// Reports the exit of process `pid` from now on.
    pub fn watch(&self, pid: u32) -> Result<(), EbpfError> {
        self.watched
            .update(&pid.to_ne_bytes(), &[1u8], MapFlags::ANY)
            .map_err(EbpfError::Load)
    }

    /// No longer reports process `pid`.
    pub fn unwatch(&self, pid: u32) {
        let _ = self.watched.delete(&pid.to_ne_bytes());
    }

    /// The watched map's fd (for diagnostics).
    pub fn map_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.watched.as_fd()
    }
}

impl Drop for ExitWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_parses_and_a_short_one_does_not() {
        let mut r = Vec::new();
        r.extend_from_slice(&42u32.to_ne_bytes());
        r.extend_from_slice(&43u32.to_ne_bytes());
        r.extend_from_slice(&7u64.to_ne_bytes());
        assert_eq!(parse(&r), Some((42, 7)));
        assert_eq!(parse(&r[..12]), None);
    }

    /// The real thing: a child killed with SIGKILL is reported, before its
    /// pidfd says so.
    #[test]
    fn a_killed_child_is_reported_at_once() {
        let (tx, rx) = std::sync::mpsc::channel();
        let watch = ExitWatch::start(move |e| {
            let _ = tx.send(e);
        })
        .expect("loading the exit watch (root, BTF)");
        let mut child = std::process::Command::new("sleep")
            .arg("600")
            .spawn()
            .unwrap();
        watch.watch(child.id()).unwrap();
        let killed = Instant::now();
        child.kill().unwrap();
        let e = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("exit reported");
        assert_eq!(e.pid, child.id());
        assert!(e.at >= killed - Duration::from_millis(1));
        assert!(e.at.duration_since(killed) < Duration::from_secs(1));
        let _ = child.wait();
        watch.unwatch(e.pid);
    }
}
