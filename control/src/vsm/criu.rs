//! Checkpoint and restore of one VNF process through CRIU's RPC
//! (`criu swrk`, CRIU >= 4.2, installed by `scripts/setup.sh`).
//!
//! Each operation talks to a `criu swrk` child over a `SOCK_SEQPACKET`
//! socket pair: one `criu_req` message in, one `criu_resp` out (messages of
//! `proto/criu/rpc.proto`, vendored from CRIU). A [`Swrk`] can be started
//! ahead of time, so a dump or a restore does not wait for `criu` to start:
//! this is how a 1R-AS standby is kept ready.
//!
//! A VNF lives in a network namespace of its own that NHAM keeps. The
//! `criu swrk` process runs *in that namespace* (it is started from a thread
//! that entered it): the VNF then shares CRIU's network namespace, so CRIU
//! neither dumps nor recreates a namespace, and restores the VNF's sockets
//! into the namespace it runs in. (Run from the host's namespace with the
//! VNF's as `--external`, CRIU still dumps the host's whole conntrack table
//! on every dump: 10 ms idle, several times that under load.)
//! `network_lock = SKIP`: the SFF already stopped delivering, and locking
//! would touch the namespace's firewall. Restored processes are our
//! children (`rst_sibling`), so the daemon watches and reaps them like the
//! ones it started.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use command_fds::{CommandFdExt, FdMapping};
use prost::Message;
use thiserror::Error;

/// CRIU's RPC messages (`proto/criu/rpc.proto`).
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod rpc {
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

/// Errors of CRIU runs.
#[derive(Debug, Error)]
pub enum CriuError {
    /// `criu` could not be started.
    #[error("starting criu swrk: {0}")]
    Spawn(#[source] std::io::Error),
    /// A file, directory or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// CRIU's answer could not be decoded.
    #[error("criu answered something that is not a criu_resp: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The process being dumped died during the dump, and CRIU did not
    /// answer: it was stopped (see [`Watch`]).
    #[error("criu dump: process {pid} died during the dump and criu did not give up on it: criu was killed")]
    TargetDied {
        /// The process dumped.
        pid: u32,
    },
    /// CRIU did not answer in time: it was killed.
    #[error("criu {action}: no answer in {after:?}: criu was killed")]
    TimedOut {
        /// dump or restore.
        action: &'static str,
        /// How long it was given.
        after: Duration,
    },
    /// CRIU reported failure; the text is its message and the end of its log.
    #[error("criu {action} failed: {log}")]
    Failed {
        /// dump or restore.
        action: &'static str,
        /// The last error lines of its log.
        log: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CriuError {
    let what = what.into();
    move |source| CriuError::Io { what, source }
}

/// How long a dump may take before CRIU is taken for hung and killed (a
/// process of gigabytes dumps in seconds; the VNFs here in milliseconds).
pub const DUMP_DEADLINE: Duration = Duration::from_secs(30);

/// How long CRIU is given to give up on a process that died during its
/// dump before it is killed. The VNF's recovery waits for its agent, which
/// the dump holds: in a Fig. 5b run a VNF killed during its own dump was
/// running again 15-220 ms later than the others, most of it this grace
/// at 200 ms. (CRIU notices a dead target within milliseconds, its
/// parasite's socket reset; the grace is for the rest of its cleanup.)
const DIED_GRACE: Duration = Duration::from_millis(50);

/// How often a request under way looks at what it [`Watch`]es.
const WATCH_EVERY: Duration = Duration::from_millis(10);

/// What a request waits on besides CRIU's answer, so that a CRIU that
/// never answers cannot hold the VNF's agent (and its recovery) for ever.
/// CRIU 4.2 can wait for ever for a process killed while its parasite is
/// inside ("Waiting for <pid> to trap" after "Failed to read ack:
/// Connection reset by peer"): seen in CI when the Failure Detector killed
/// a cut-off VNF during its checkpoint (its recovery then waited for the
/// agent for ever), and in about 1 of 80 dumps of a process SIGKILLed at a
/// moment swept across its dump (the test below). Killing CRIU lets go of
/// the dead process (it is reaped) and fails the dump.
#[derive(Debug, Clone, Copy)]
struct Watch {
    action: &'static str,
    /// The process dumped.
    target: Option<u32>,
    /// When CRIU is taken for hung.
    deadline: Option<(Instant, Duration)>,
}

impl Watch {
    /// Nothing but the answer.
    fn none(action: &'static str) -> Self {
        Self {
            action,
            target: None,
            deadline: None,
        }
    }

    /// Waits until `sock` is readable, or says why the wait is abandoned.
    fn readable(&self, sock: &OwnedFd) -> Result<(), CriuError> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let every = Timespec {
            tv_sec: 0,
            tv_nsec: WATCH_EVERY.as_nanos() as i64,
        };
        let mut died_at = None;
        loop {
            let mut fds = [PollFd::new(sock, PollFlags::IN)];
            let timeout = (self.target.is_some() || self.deadline.is_some()).then_some(&every);
            match poll(&mut fds, timeout) {
                Ok(n) if n > 0 => return Ok(()),
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(io("waiting for criu swrk")(e.into())),
            }
            let now = Instant::now();
            if let Some(pid) = self.target {
                if dead(pid) {
                    if now.duration_since(*died_at.get_or_insert(now)) >= DIED_GRACE {
                        return Err(CriuError::TargetDied { pid });
                    }
                } else {
                    died_at = None;
                }
            }
            if let Some((at, after)) = self.deadline {
                if now >= at {
                    return Err(CriuError::TimedOut {
                        action: self.action,
                        after,
                    });
                }
            }
        }
    }
}

/// Whether process `pid` is dead: every thread of it a zombie (reaped
/// only once CRIU lets go) or gone. (A leader that ended with
/// `pthread_exit` is a zombie while its other threads run: alive.) Only
/// the root of a dumped tree is watched; a child's death is left to the
/// deadline.
fn dead(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return true;
    };
    tasks.flatten().all(|t| {
        let tid = t.file_name().to_str().and_then(|s| s.parse().ok());
        tid.and_then(nham_netns::process_state)
            .is_none_or(|(s, _)| matches!(s, 'Z' | 'X'))
    })
}

/// The fd number of the RPC socket in the `criu swrk` child.
const SOCK_FD: i32 = 3;
/// Largest message CRIU sends back.
const MAX_MSG: usize = 64 * 1024;

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    let pick = if lines.is_empty() {
        text.lines().rev().take(3).collect::<Vec<_>>()
    } else {
        lines.into_iter().rev().take(3).collect()
    };
    pick.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// A `criu swrk` process waiting for one request.
#[derive(Debug)]
pub struct Swrk {
    /// (Taken by the one request it serves, or by its drop.)
    child: Option<Child>,
    sock: OwnedFd,
}

impl Drop for Swrk {
    /// One never asked: killed and reaped (off the caller's thread), not
    /// left a zombie.
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
    }
}

impl Swrk {
    /// Runs the worker at nice value `nice` (MR-AA: its dumps are
    /// background work, the other members serve meanwhile).
    pub fn renice(&self, nice: i32) {
        let id = self.child.as_ref().map_or(0, Child::id);
        if let Some(pid) = rustix::process::Pid::from_raw(id as i32) {
            let _ = rustix::process::setpriority_process(Some(pid), nice);
        }
    }

    /// Starts `criu swrk` in the network namespace `netns` (the VNF's).
    pub fn spawn(netns: &Path) -> Result<Self, CriuError> {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let (ours, theirs) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .map_err(|e| io("socketpair for criu swrk")(e.into()))?;
        // A child inherits the network namespace of the thread that forks
        // it: fork from a thread that entered the VNF's.
        let child = nham_netns::run_in(netns, move || -> Result<Child, CriuError> {
            let mut cmd = Command::new("criu");
            cmd.arg("swrk")
                .arg(SOCK_FD.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                // Its errors go to the log file each request names.
                .stderr(Stdio::null());
            cmd.fd_mappings(vec![FdMapping {
                parent_fd: theirs,
                child_fd: SOCK_FD,
            }])
            .map_err(|e| CriuError::Io {
                what: "mapping fds for criu swrk".into(),
                source: std::io::Error::other(e.to_string()),
            })?;
            // `cmd` holds the child's end; it closes when `cmd` goes.
            cmd.spawn().map_err(CriuError::Spawn)
        })
        .map_err(|e| CriuError::Spawn(std::io::Error::other(e.to_string())))??;
        Ok(Self {
            child: Some(child),
            sock: ours,
        })
    }

    /// Sends `req` and returns CRIU's answer, unless `watch` gives up on
    /// it first (CRIU is then killed); the `criu swrk` process ends (it is
    /// reaped on a thread of its own, off the caller's path).
    fn call(mut self, req: &rpc::CriuReq, watch: Watch) -> Result<rpc::CriuResp, CriuError> {
        let Some(mut child) = self.child.take() else {
            return Err(CriuError::Io {
                what: "criu swrk".into(),
                source: std::io::Error::other("asked twice"),
            });
        };
        let result = exchange(&self.sock, req, watch);
        if matches!(
            result,
            Err(CriuError::TargetDied { .. } | CriuError::TimedOut { .. })
        ) {
            tracing::warn!(
                "{}",
                result
                    .as_ref()
                    .err()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            );
            let _ = child.kill();
        }
        drop(self);
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        result
    }
}

fn exchange(sock: &OwnedFd, req: &rpc::CriuReq, watch: Watch) -> Result<rpc::CriuResp, CriuError> {
    use rustix::net::{recv, send, RecvFlags, SendFlags};
    send(sock.as_fd(), &req.encode_to_vec(), SendFlags::empty())
        .map_err(|e| io("sending to criu swrk")(e.into()))?;
    let mut buf = vec![0u8; MAX_MSG];
    loop {
        watch.readable(sock)?;
        let (n, _) = recv(sock.as_fd(), &mut buf[..], RecvFlags::empty())
            .map_err(|e| io("receiving from criu swrk")(e.into()))?;
        if n == 0 {
            return Err(CriuError::Io {
                what: "criu swrk".into(),
                source: std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "closed the socket without an answer",
                ),
            });
        }
        let resp = rpc::CriuResp::decode(&buf[..n])?;
        if resp.r#type() == rpc::CriuReqType::Notify {
            // We ask for no scripts, but a notification must be answered.
            let ack = rpc::CriuReq {
                r#type: rpc::CriuReqType::Notify as i32,
                notify_success: Some(true),
                ..Default::default()
            };
            send(sock.as_fd(), &ack.encode_to_vec(), SendFlags::empty())
                .map_err(|e| io("answering criu swrk")(e.into()))?;
            continue;
        }
        return Ok(resp);
    }
}

fn failed(action: &'static str, resp: &rpc::CriuResp, log: &Path) -> CriuError {
    let mut text = tail(log);
    if let Some(msg) = resp.cr_errmsg.as_deref().filter(|m| !m.is_empty()) {
        text = format!("{msg} | {text}");
    }
    CriuError::Failed { action, log: text }
}

/// Sends one `action` request (`dump` or `restore`) for the images in
/// `images` through `swrk` (or a new `criu swrk` in `netns`), with `opts`
/// on top of the common ones; a failure carries CRIU's message and log.
fn request(
    swrk: Option<Swrk>,
    netns: &Path,
    kind: rpc::CriuReqType,
    images: &Path,
    opts: rpc::CriuOpts,
) -> Result<rpc::CriuResp, CriuError> {
    let watch = match kind {
        rpc::CriuReqType::Dump => Watch {
            action: "dump",
            target: opts.pid.map(|p| p as u32),
            deadline: Some((Instant::now() + DUMP_DEADLINE, DUMP_DEADLINE)),
        },
        // A restore brings a process back; killing CRIU half-way would
        // leave one half restored. Not watched.
        _ => Watch::none("restore"),
    };
    let action = watch.action;
    let log_file = format!("{action}.log");
    let swrk = match swrk {
        Some(s) => s,
        None => Swrk::spawn(netns)?,
    };
    let resp = swrk.call(
        &rpc::CriuReq {
            r#type: kind as i32,
            opts: Some(rpc::CriuOpts {
                images_dir_fd: -1,
                images_dir: Some(images.display().to_string()),
                log_level: Some(2),
                log_file: Some(log_file.clone()),
                // The daemon puts each VNF in its cgroup itself (after a
                // restore too): CRIU walking every cgroup hierarchy on each dump
                // and restore cost ~12 ms per dump and ~20 ms per recovery on a
                // hybrid v1/v2 host.
                manage_cgroups_mode: Some(rpc::CriuCgMode::Ignore as i32),
                ..opts
            }),
            ..Default::default()
        },
        watch,
    )?;
    if !resp.success {
        return Err(failed(action, &resp, &images.join(log_file)));
    }
    Ok(resp)
}

/// What a dump took.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DumpReport {
    /// Wall time of the dump (the process is frozen for part of it).
    pub duration: Duration,
    /// Bytes of image files.
    pub size: u64,
}

/// Dumps process `pid` (and its children) into `images`, leaving it
/// running, through `swrk` (or a new `criu swrk` when `None`); `netns` is
/// the file of its network namespace.
pub fn dump(
    swrk: Option<Swrk>,
    pid: u32,
    netns: &Path,
    images: &Path,
) -> Result<DumpReport, CriuError> {
    std::fs::create_dir_all(images).map_err(io(format!("creating {}", images.display())))?;
    clear_stale_proc_dir(pid);
    let started = Instant::now();
    let opts = rpc::CriuOpts {
        pid: Some(pid as i32),
        leave_running: Some(true),
        network_lock: Some(rpc::CriuNetworkLockMethod::Skip as i32),
        ..Default::default()
    };
    request(swrk, netns, rpc::CriuReqType::Dump, images, opts)?;
    let duration = started.elapsed();
    let size = std::fs::read_dir(images)
        .map_err(io(format!("listing {}", images.display())))?
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum();
    Ok(DumpReport { duration, size })
}

/// Restores the process in `images` into the network namespace the
/// `swrk` runs in (or `netns`, through a new `criu swrk`); the process
/// becomes a child of ours. Returns its pid and the time taken.
pub fn restore(
    swrk: Option<Swrk>,
    images: &Path,
    netns: &Path,
) -> Result<(u32, Duration), CriuError> {
    let started = Instant::now();
    let opts = rpc::CriuOpts {
        rst_sibling: Some(true),
        ..Default::default()
    };
    let resp = request(swrk, netns, rpc::CriuReqType::Restore, images, opts)?;
    let duration = started.elapsed();
    let pid = resp
        .restore
        .map(|r| r.pid)
        .filter(|&p| p > 0)
        .ok_or(CriuError::Failed {
            action: "restore",
            log: "criu answered success without a pid".into(),
        })?;
    Ok((pid as u32, duration))
}

/// Removes what a dump cut short may have left in process `pid`'s working
/// directory: CRIU's parasite mounts a proc for the VNF's PID namespace on
/// `<cwd>/proc.crtools` for the dump and removes it after; a left-over one
/// makes every later dump fail ("Can't get proc fd"): seen on a host
/// whose dump was cut short by a failure, for every later incarnation of
/// that VNF placed there (a hosted VNF's working directory is its
/// chain's and name's, for its restores elsewhere).
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

#[cfg(test)]
mod tests {
    use super::*;
    use nham_netns::{unique_name, Netns};

    #[test]
    fn a_parasite_s_left_over_proc_dir_is_cleared_before_a_dump() {
        let dir = std::env::temp_dir().join(unique_name("nham-cwd-"));
        let stale = dir.join("proc.crtools");
        std::fs::create_dir_all(&stale).unwrap();
        let mut child = Command::new("sleep")
            .arg("60")
            .current_dir(&dir)
            .spawn()
            .unwrap();
        clear_stale_proc_dir(child.id());
        let gone = !stale.exists();
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(gone, "{} is left", stale.display());
    }

    #[test]
    fn a_process_in_its_own_netns_dumps_and_restores_over_rpc() {
        nham_netns::sweep_stale();
        let ns = Netns::create(&unique_name("nhcr")).unwrap();
        // One process, no children (a child would keep its pid busy after
        // the parent is killed, and restore needs the same pids free).
        let dir = std::env::temp_dir().join(unique_name("nham-criu-"));
        std::fs::create_dir_all(&dir).unwrap();
        let child = ns
            .run(|| {
                Command::new("setsid")
                    .args(["sleep", "600"])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            })
            .unwrap()
            .unwrap();
        let mut child = Guard(child);
        std::thread::sleep(Duration::from_millis(100));
        let images = dir.join("ckpt");
        // A worker started ahead of time, as the daemon keeps them.
        let warm = Swrk::spawn(&ns.path()).unwrap();
        let d = dump(Some(warm), child.0.id(), &ns.path(), &images).expect("dump");
        assert!(d.size > 0);
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let standby = Swrk::spawn(&ns.path()).unwrap();
        let (pid, took) = restore(Some(standby), &images, &ns.path()).expect("restore");
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "restored process runs"
        );
        let (_, ppid) = nham_netns::process_state(pid).unwrap();
        assert_eq!(
            ppid,
            std::process::id(),
            "restored as our child (rst_sibling)"
        );
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .unwrap()
                .ino(),
            std::fs::metadata(ns.path()).unwrap().ino(),
            "restored into the VNF's namespace"
        );
        eprintln!(
            "dump {:?} ({} bytes), restore {:?}",
            d.duration, d.size, took
        );
        crate::runtime::process::kill_and_reap(pid);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The ground 1R-AA stands on: a VNF with a packet socket, pid 1 of its
    /// own PID namespace, is dumped while it runs, and its image restored
    /// into a second namespace whose `eth0` has the primary's interface
    /// index, next to the running original: no pid clash, the socket bound.
    #[test]
    fn a_replica_restores_next_to_the_running_vnf_in_a_second_namespace() {
        nham_netns::sweep_stale();
        let primary = Netns::create(&unique_name("nhcp")).unwrap();
        let replica = Netns::create(&unique_name("nhcq")).unwrap();
        let tag = std::process::id() % 100_000;
        let (_, eth0) = nham_netns::veth_pair_here(&format!("crp{tag}"), &primary, "eth0").unwrap();
        let (_, reth0) = nham_netns::veth_pair_here_with_index(
            &format!("crq{tag}"),
            &replica,
            "eth0",
            eth0.ifindex,
        )
        .unwrap();
        assert_eq!(reth0.ifindex, eth0.ifindex);
        let script = "import socket,time\n\
                      s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW,socket.htons(0x894F))\n\
                      s.bind(('eth0',0))\n\
                      time.sleep(600)\n";
        let child = primary
            .run(move || {
                crate::runtime::own_pid_namespace_for_children()?;
                Command::new("setsid")
                    .args(["python3", "-c", script])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
            })
            .unwrap()
            .unwrap();
        let mut child = Guard(child);
        let pid = child.0.id();
        crate::runtime::wait_for_packet_socket(pid, &["python3".into()]).unwrap();
        let dir = std::env::temp_dir().join(unique_name("nham-criu-"));
        let images = dir.join("ckpt");
        dump(None, pid, &primary.path(), &images).expect("dump");
        let (copy, took) = restore(None, &images, &replica.path()).expect("restore");
        let alive = |p: u32| nham_netns::pid_in(p, &primary.path());
        assert!(alive(pid), "the original runs on");
        assert!(
            nham_netns::pid_in(copy, &replica.path()),
            "the copy runs in the second namespace"
        );
        let sockets = std::fs::read_to_string(format!("/proc/{copy}/net/packet")).unwrap();
        assert_eq!(sockets.lines().count(), 2, "its packet socket: {sockets}");
        eprintln!("replica restored beside the original in {took:?}");
        crate::runtime::process::kill_and_reap(copy);
        child.0.kill().unwrap();
        child.0.wait().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_failed_dump_says_why() {
        let dir = std::env::temp_dir().join(unique_name("nham-criu-"));
        // No such process: CRIU must refuse and the error must carry its words.
        let e = dump(None, 999_999_999, Path::new("/proc/self/ns/net"), &dir).unwrap_err();
        assert!(matches!(e, CriuError::Failed { .. }), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The wait for CRIU's answer (a socket nobody writes to here) gives
    /// up on a dumped process that died (a zombie CRIU would not let go
    /// of), and on a deadline; it does not give up on a live process.
    #[test]
    fn a_dump_is_not_waited_for_once_its_process_died_or_its_time_is_up() {
        use rustix::net::{socketpair, AddressFamily, SocketFlags, SocketType};
        let (ours, _criu) = socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let mut child = Guard(Command::new("sleep").arg("30").spawn().unwrap());
        let pid = child.0.id();
        let watch = |deadline: Duration| Watch {
            action: "dump",
            target: Some(pid),
            deadline: Some((Instant::now() + deadline, deadline)),
        };
        // Alive: only the deadline ends the wait.
        let started = Instant::now();
        let e = watch(Duration::from_millis(300))
            .readable(&ours)
            .unwrap_err();
        assert!(
            matches!(e, CriuError::TimedOut { action: "dump", .. }),
            "{e}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        // Killed and not reaped (as under CRIU's ptrace): given up on after
        // the grace, long before the deadline.
        child.0.kill().unwrap();
        let started = Instant::now();
        let e = watch(Duration::from_secs(30)).readable(&ours).unwrap_err();
        assert!(
            matches!(e, CriuError::TargetDied { pid: p } if p == pid),
            "{e}"
        );
        let took = started.elapsed();
        assert!(
            took >= DIED_GRACE && took < Duration::from_secs(5),
            "{took:?}"
        );
        assert!(e.to_string().contains(&pid.to_string()), "{e}");
        // A process whose main thread ended while another runs: its leader
        // is a zombie, the process is alive.
        let mut half = Guard(
            Command::new("python3")
                .args([
                    "-c",
                    "import threading,time,ctypes\n\
                     threading.Thread(target=time.sleep,args=(30,)).start()\n\
                     ctypes.CDLL(None).pthread_exit(None)\n",
                ])
                .spawn()
                .unwrap(),
        );
        let pid = half.0.id();
        let deadline = Instant::now() + Duration::from_secs(5);
        while nham_netns::process_state(pid).map(|(s, _)| s) != Some('Z') {
            assert!(Instant::now() < deadline, "its main thread never ended");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!dead(pid), "a zombie leader with a live thread is alive");
        half.0.kill().unwrap();
        half.0.wait().unwrap();
        assert!(dead(pid));
    }

    /// The case [`Watch`] is for, with real CRIU: a stopped, multi-threaded
    /// process SIGKILLed at a moment swept across its dump. Every dump ends
    /// (done, failed, or given up on) within the grace and a margin, and
    /// the killed process can be reaped after it.
    #[test]
    fn a_process_killed_during_its_dump_never_holds_the_dump() {
        nham_netns::sweep_stale();
        let ns = Netns::create(&unique_name("nhck")).unwrap();
        let dir = std::env::temp_dir().join(unique_name("nham-criu-"));
        let script = "import threading,time\n\
                      [threading.Thread(target=time.sleep,args=(600,)).start() for _ in range(4)]\n\
                      time.sleep(600)\n";
        let mut outcomes = std::collections::BTreeMap::<String, u32>::new();
        for i in 0..80u64 {
            let child = ns
                .run(|| {
                    Command::new("setsid")
                        .args(["python3", "-c", script])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .spawn()
                })
                .unwrap()
                .unwrap();
            let mut child = Guard(child);
            let pid = child.0.id();
            std::thread::sleep(Duration::from_millis(150));
            crate::runtime::process::signal(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
            let images = dir.join(format!("ckpt-{i}"));
            let netns = ns.path();
            let started = Instant::now();
            let dumping = std::thread::spawn(move || dump(None, pid, &netns, &images));
            std::thread::sleep(Duration::from_micros(i * 300));
            child.0.kill().unwrap();
            let killed = Instant::now();
            let r = dumping.join().unwrap();
            let after_kill = killed.elapsed();
            assert!(
                after_kill < DIED_GRACE + Duration::from_secs(5),
                "round {i}: the dump ended {after_kill:?} after its process was killed \
                 ({:?} after it began): {r:?}",
                started.elapsed()
            );
            let what = match r {
                Ok(_) => "dumped".to_string(),
                Err(CriuError::Failed { .. }) => "failed".to_string(),
                Err(CriuError::TargetDied { .. }) => "given up on".to_string(),
                Err(e) => e.to_string(),
            };
            *outcomes.entry(what).or_default() += 1;
            child.0.wait().unwrap();
        }
        eprintln!("dumps of a process killed during them: {outcomes:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Kills the child if the test panics.
    struct Guard(Child);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
