//! Network namespaces and veth links for NHAM topologies, made through
//! rtnetlink (no `ip` commands).
//!
//! - [`Netns`] is a named network namespace (`/run/netns/<name>`) that is
//!   deleted when the value is dropped, also during a panic's unwinding, so a
//!   failing test leaves nothing behind. Names come from [`unique_name`], so
//!   parallel tests never collide.
//! - [`veth_pair`] joins two namespaces with a veth pair that has exactly one
//!   rx and one tx queue on each side (with more, frames can land on a queue
//!   no AF_XDP socket serves) and brings both ends and `lo` up.
//! - [`Netns::run`] runs a closure on a thread that has entered the
//!   namespace; [`Netns::enter`] moves the calling thread. Namespace
//!   membership is per thread, so the rest of the process is untouched.
//!
//! - [`tunnel`] makes a hop's link between hosts: a VXLAN device at each
//!   end, the far one moved into the VNF's namespace as its `eth0`.
//!
//! Interface names live inside their namespace, so they only need to be
//! unique within it.
#![forbid(unsafe_code)]

pub mod sockdiag;
pub mod tunnel;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use futures::TryStreamExt;
use nix::sched::{setns, CloneFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::{LinkUnspec, LinkVeth, NetworkNamespace};
use thiserror::Error;

/// Errors of namespace and link management.
#[derive(Debug, Error)]
pub enum NetnsError {
    /// A netlink request failed.
    #[error("netlink: {0}")]
    Netlink(String),
    /// A system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A link was not found after creation.
    #[error("link {0} not found")]
    NoLink(String),
    /// An interface name longer than the kernel's 15 characters.
    #[error("interface name {0:?} is longer than 15 characters")]
    NameTooLong(String),
    /// The worker thread panicked.
    #[error("worker thread in namespace {0} panicked")]
    Panicked(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NetnsError {
    let what = what.into();
    move |source| NetnsError::Sys { what, source }
}

fn netlink(e: impl std::fmt::Display) -> NetnsError {
    NetnsError::Netlink(e.to_string())
}

/// A name unique to this process and call: `<prefix><pid>x<n>`, or
/// `<prefix>-<pid>x<n>` when the prefix ends in a digit (`nhv1-1234x5`,
/// not `nhv11234x5`, which [`sweep_stale`] would read as pid 11234's).
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let dash = if prefix.ends_with(|c: char| c.is_ascii_digit()) {
        "-"
    } else {
        ""
    };
    format!(
        "{prefix}{dash}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

fn block_on<T>(
    fut: impl std::future::Future<Output = Result<T, NetnsError>>,
) -> Result<T, NetnsError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(sys("starting a tokio runtime"))?
        .block_on(fut)
}

/// Deletes namespaces made by [`unique_name`] (`<prefix><pid>x<n>`, prefix
/// starting with `nh`) whose process no longer exists: what a killed test,
/// benchmark or daemon could not remove itself. Processes still running in
/// such a namespace (VNFs orphaned by a killed daemon) are killed first.
/// Returns how many namespaces were deleted.
pub fn sweep_stale() -> usize {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return 0;
    };
    let mut removed = 0;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = unique_name_pid(&name) else {
            continue;
        };
        if pid == std::process::id() {
            continue;
        }
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            kill_processes_in(&entry.path());
            drop(Netns { name, kept: false });
            removed += 1;
        }
    }
    removed
}

/// The pid in a name made by [`unique_name`] with a prefix of `nh` and
/// letters (`nhc1234x5`), or letters and a digit (`nhv1-1234x5`), or
/// `None` for any other name.
fn unique_name_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix("nh")?;
    // `<letters><digit>-<pid>x<n>` (a prefix ending in a digit), else
    // `<letters><pid>x<n>`.
    let rest = match rest.rsplit_once('-') {
        Some((before, after)) if before.ends_with(|c: char| c.is_ascii_digit()) => after,
        _ => rest.trim_start_matches(|c: char| c.is_ascii_lowercase()),
    };
    let (pid, n) = rest.split_once('x')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(pid) || !digits(n) {
        return None;
    }
    pid.parse().ok()
}

/// Deletes every namespace whose name starts with `prefix` and is not
/// one to `keep`, killing the processes still running in it first: what a daemon
/// that names its namespaces after its state (not its pid) left behind.
pub fn sweep_prefix(prefix: &str, keep: impl Fn(&str) -> bool) -> usize {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return 0;
    };
    let mut removed = 0;
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if name.starts_with(prefix) && !keep(&name) {
            kill_processes_in(&entry.path());
            drop(Netns { name, kept: false });
            removed += 1;
        }
    }
    removed
}

/// Whether process `pid` exists, is not a zombie, and runs in the network
/// namespace bound at `ns`.
pub fn pid_in(pid: u32, ns: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(ns).map(|m| (m.dev(), m.ino())) else {
        return false;
    };
    let same = std::fs::metadata(format!("/proc/{pid}/ns/net"))
        .map(|m| (m.dev(), m.ino()) == target)
        .unwrap_or(false);
    same && process_state(pid).is_some_and(|(state, _)| state != 'Z')
}

/// Process `pid`'s state letter and parent pid from `/proc/<pid>/stat`
/// (`None`: no such process). The command name may hold spaces and
/// parentheses, so the fields are read after the last `)`.
pub fn process_state(pid: u32) -> Option<(char, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some((state, ppid))
}

/// Process `pid` and its descendants, parents first, from
/// `/proc/<pid>/task/*/children` down the tree (at most 4096: a runaway
/// fork tree is not walked for ever). A process gone meanwhile is skipped.
pub fn process_tree(pid: u32) -> Vec<u32> {
    let mut tree = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if !seen.insert(p) || seen.len() > 4096 {
            continue;
        }
        tree.push(p);
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children =
                    std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                todo.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    tree
}

/// SIGKILLs every process whose network namespace is the one bound at `ns`.
pub fn kill_processes_in(ns: &std::path::Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = std::fs::metadata(ns).map(|m| (m.dev(), m.ino())) else {
        return;
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let same = std::fs::metadata(p.path().join("ns/net"))
            .map(|m| (m.dev(), m.ino()) == target)
            .unwrap_or(false);
        if same {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    /// Left in place on drop (see [`Netns::keep`]).
    kept: bool,
}

impl Netns {
    /// Creates `/run/netns/<name>` (like `ip netns add`).
    pub fn create(name: &str) -> Result<Self, NetnsError> {
        let name = name.to_string();
        // NetworkNamespace::add forks; do it from a fresh thread so the
        // caller's thread state does not matter.
        let n = name.clone();
        std::thread::spawn(move || {
            block_on(async { NetworkNamespace::add(n).await.map_err(netlink) })
        })
        .join()
        .map_err(|_| NetnsError::Panicked(name.clone()))??;
        let ns = Self { name, kept: false };
        ns.run(|| {
            // No IPv6 autoconfiguration chatter (router solicitations, MLD)
            // on test links: only the traffic the test sends is on the wire.
            for conf in ["all", "default"] {
                let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
            }
            set_up("lo")
        })??;
        Ok(ns)
    }

    /// Takes the existing namespace `/run/netns/<name>` (made by an earlier
    /// run of this program) as this one: deleted on drop like one made here.
    pub fn adopt(name: &str) -> Result<Self, NetnsError> {
        let ns = Self {
            name: name.to_string(),
            kept: false,
        };
        std::fs::metadata(ns.path()).map_err(sys(format!("opening {}", ns.path().display())))?;
        Ok(ns)
    }

    /// Leaves the namespace in place when this value is dropped (what runs
    /// in it outlives this process).
    pub fn keep(&mut self) {
        self.kept = true;
    }

    /// Undoes [`Netns::keep`]: deleted on drop again.
    pub fn unkeep(&mut self) {
        self.kept = false;
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file.
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// Moves the calling thread into this namespace.
    pub fn enter(&self) -> Result<(), NetnsError> {
        enter(&self.path())
    }

    /// Runs `f` on a new thread inside this namespace and returns its result.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, NetnsError> {
        run_in(&self.path(), f)
    }
}

/// Moves the calling thread into the network namespace whose file is
/// `netns` (for good: a thread that is to serve there).
pub fn enter(netns: &Path) -> Result<(), NetnsError> {
    let file = File::open(netns).map_err(sys(format!("opening {}", netns.display())))?;
    setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Sys {
        what: format!("entering namespace {}", netns.display()),
        source: e.into(),
    })
}

/// Runs `f` on a new thread inside the network namespace whose file is
/// `netns` (`/run/netns/<name>`, or `/proc/<pid>/ns/net`), and returns its
/// result. The one place a thread enters a namespace to act there: a
/// process `f` starts is born in it.
pub fn run_in<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, NetnsError> {
    let path = netns.to_path_buf();
    let name = path.display().to_string();
    std::thread::spawn(move || {
        enter(&path)?;
        Ok(f())
    })
    .join()
    .map_err(|_| NetnsError::Panicked(name))?
}

impl Drop for Netns {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            block_on(async { NetworkNamespace::del(name).await.map_err(netlink) })
        })
        .join();
    }
}

/// One end of a veth pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethEnd {
    /// The namespace it lives in.
    pub netns: String,
    /// Interface name.
    pub name: String,
    /// Interface index (in its namespace).
    pub ifindex: u32,
    /// MAC address.
    pub mac: [u8; 6],
}

async fn link_by_name(handle: &rtnetlink::Handle, name: &str) -> Result<LinkMessage, NetnsError> {
    handle
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
        .map_err(netlink)?
        .ok_or_else(|| NetnsError::NoLink(name.to_string()))
}

fn describe(netns: &str, name: &str, msg: &LinkMessage) -> VethEnd {
    let mac = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) if m.len() == 6 => Some([m[0], m[1], m[2], m[3], m[4], m[5]]),
            _ => None,
        })
        .unwrap_or_default();
    VethEnd {
        netns: netns.to_string(),
        name: name.to_string(),
        ifindex: msg.header.index,
        mac,
    }
}

/// Runs `request` with an rtnetlink handle of the calling thread's
/// namespace, to completion.
fn with_netlink<T, F>(request: impl FnOnce(rtnetlink::Handle) -> F) -> Result<T, NetnsError>
where
    F: std::future::Future<Output = Result<T, NetnsError>>,
{
    block_on(async move {
        let (conn, handle, _) = rtnetlink::new_connection().map_err(sys("netlink socket"))?;
        tokio::spawn(conn);
        request(handle).await
    })
}

/// Changes a link of the calling thread's namespace as `msg` says.
fn set_link(msg: LinkMessage) -> Result<(), NetnsError> {
    with_netlink(|h| async move { h.link().set(msg).execute().await.map_err(netlink) })
}

/// The link message of interface `name` in the calling thread's namespace.
fn get_link(name: &str) -> Result<LinkMessage, NetnsError> {
    let name = name.to_string();
    with_netlink(|h| async move { link_by_name(&h, &name).await })
}

/// Sets interface index `index` of the calling thread's namespace up or down.
fn set_state(index: u32, up: bool) -> Result<(), NetnsError> {
    let msg = LinkUnspec::new_with_index(index);
    set_link(if up { msg.up() } else { msg.down() }.build())
}

/// Renames interface `index` of the calling thread's namespace (it must be
/// down).
fn rename(index: u32, name: &str) -> Result<(), NetnsError> {
    set_link(
        LinkUnspec::new_with_index(index)
            .name(name.to_string())
            .build(),
    )
}

/// Brings interface `name` of the calling thread's namespace up.
pub fn set_up(name: &str) -> Result<(), NetnsError> {
    set_state(get_link(name)?.header.index, true)
}

/// Sets interface `name` of the calling thread's namespace down (to cut a
/// VNF off the network in fault drills).
pub fn set_down(name: &str) -> Result<(), NetnsError> {
    set_state(get_link(name)?.header.index, false)
}

/// The number of rx and tx queues of interface `name` in the calling
/// thread's namespace.
pub fn queue_counts(name: &str) -> Result<(u32, u32), NetnsError> {
    let link = get_link(name)?;
    let (mut rx, mut tx) = (0, 0);
    for a in &link.attributes {
        match a {
            LinkAttribute::NumRxQueues(n) => rx = *n,
            LinkAttribute::NumTxQueues(n) => tx = *n,
            _ => {}
        }
    }
    Ok((rx, tx))
}

/// Whether interface `name` of the calling thread's namespace has carrier
/// (for a veth: both ends are up). Not callable from inside a tokio runtime.
pub fn has_carrier(name: &str) -> Result<bool, NetnsError> {
    Ok(get_link(name)?
        .attributes
        .iter()
        .any(|a| matches!(a, LinkAttribute::Carrier(c) if *c != 0)))
}

/// Receive queues of interface `name` of the calling thread's namespace
/// (1 when the kernel does not say). Not callable from inside a tokio
/// runtime.
pub fn rx_queues(name: &str) -> Result<u32, NetnsError> {
    Ok(get_link(name)?
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::NumRxQueues(n) => Some(*n),
            _ => None,
        })
        .unwrap_or(1)
        .max(1))
}

/// Whether interface `name` of the calling thread's namespace is
/// operationally up (the kernel's link watcher has seen its carrier: only
/// then does it transmit again after a carrier loss). Not callable from
/// inside a tokio runtime.
pub fn is_oper_up(name: &str) -> Result<bool, NetnsError> {
    Ok(get_link(name)?.attributes.iter().any(|a| {
        matches!(
            a,
            LinkAttribute::OperState(rtnetlink::packet_route::link::State::Up)
        )
    }))
}

/// Frames interface `name` of the calling thread's namespace dropped on
/// transmit (`tx_dropped`; a veth drops what it sends while its peer is
/// down). Not callable from inside a tokio runtime.
pub fn tx_dropped(name: &str) -> Result<u64, NetnsError> {
    Ok(get_link(name)?
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(s.tx_dropped),
            _ => None,
        })
        .unwrap_or(0))
}

/// Packet counters of interface `name` in the calling thread's namespace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkCounters {
    /// Frames received.
    pub rx_packets: u64,
    /// Frames dropped on receive.
    pub rx_dropped: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Frames dropped on send.
    pub tx_dropped: u64,
}

/// [`LinkCounters`] of interface `name` (the kernel's 64-bit statistics).
pub fn link_counters(name: &str) -> Result<LinkCounters, NetnsError> {
    Ok(get_link(name)?
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Stats64(s) => Some(LinkCounters {
                rx_packets: s.rx_packets,
                rx_dropped: s.rx_dropped,
                tx_packets: s.tx_packets,
                tx_dropped: s.tx_dropped,
            }),
            _ => None,
        })
        .unwrap_or_default())
}

/// Deletes interface `name` of the calling thread's namespace (a tunnel
/// end no longer used).
pub fn delete_link(name: &str) -> Result<(), NetnsError> {
    let index = get_link(name)?.header.index;
    with_netlink(|h| async move { h.link().del(index).execute().await.map_err(netlink) })
}

/// Index and MAC of interface `name` in the calling thread's namespace.
pub fn link(name: &str) -> Result<VethEnd, NetnsError> {
    Ok(describe("", name, &get_link(name)?))
}

/// MTU of the veths [`veth_pair`] makes: room for NSH (24 bytes) and an
/// outer Ethernet header around a full 1500-byte frame, well under the
/// limit native XDP on veth accepts (about 3.5 KB).
pub const MTU: u32 = 1600;

/// Creates a veth pair `a_name` (in `a`) <-> `b_name` (in `b`), one rx and
/// one tx queue each, MTU [`MTU`], both up.
pub fn veth_pair(
    a: &Netns,
    a_name: &str,
    b: &Netns,
    b_name: &str,
) -> Result<(VethEnd, VethEnd), NetnsError> {
    veth_pair_in(Some(a), a_name, b, b_name, None)
}

/// [`veth_pair`] whose first end stays in the calling thread's namespace
/// (a daemon's own namespace, for instance).
pub fn veth_pair_here(
    a_name: &str,
    b: &Netns,
    b_name: &str,
) -> Result<(VethEnd, VethEnd), NetnsError> {
    veth_pair_in(None, a_name, b, b_name, None)
}

/// [`veth_pair_here`] whose end in `b` gets interface index `b_index`
/// (free in both namespaces). A replica of a VNF needs its `eth0` under the
/// primary's index: CRIU restores a packet socket bound by index.
pub fn veth_pair_here_with_index(
    a_name: &str,
    b: &Netns,
    b_name: &str,
    b_index: u32,
) -> Result<(VethEnd, VethEnd), NetnsError> {
    veth_pair_in(None, a_name, b, b_name, Some(b_index))
}

/// A veth pair: `a_name` in `a` (`None`: the calling thread's namespace),
/// `b_name` in `b`, under index `b_index` when given.
pub fn veth_pair_in(
    a: Option<&Netns>,
    a_name: &str,
    b: &Netns,
    b_name: &str,
    b_index: Option<u32>,
) -> Result<(VethEnd, VethEnd), NetnsError> {
    veth_pair_queues(a, a_name, b, b_name, b_index, 1)
}

/// [`veth_pair_in`] with `queues` receive and transmit queues on each end
/// (a multi-queue NIC's stand-in: a frame sent on one end's transmit queue
/// q arrives on the other's receive queue q).
pub fn veth_pair_queues(
    a: Option<&Netns>,
    a_name: &str,
    b: &Netns,
    b_name: &str,
    b_index: Option<u32>,
    queues: u32,
) -> Result<(VethEnd, VethEnd), NetnsError> {
    for n in [a_name, b_name] {
        if n.len() > 15 {
            return Err(NetnsError::NameTooLong(n.to_string()));
        }
    }
    // The peer is made in `a`'s namespace and moved to `b`: under a
    // temporary name, since `b_name` (a VNF's `eth0`) may well exist in
    // `a`'s (the host's own `eth0`); it is renamed once in `b`.
    static TMP: AtomicU32 = AtomicU32::new(0);
    let tmp = format!(
        "nhp{}x{}",
        std::process::id() % 100_000,
        TMP.fetch_add(1, Ordering::Relaxed) % 1000
    );
    let (an, bn) = (a_name.to_string(), tmp.clone());
    let b_path = b.path();
    let a_ns = a.map_or_else(String::new, |a| a.name().to_string());
    let make_a = move || {
        let (an_async, bn) = (an.clone(), bn);
        block_on(async move {
            let (an, bn) = (an_async, bn);
            let (conn, handle, _) = rtnetlink::new_connection().map_err(sys("netlink socket"))?;
            tokio::spawn(conn);
            let queues = [
                LinkAttribute::NumRxQueues(queues.max(1)),
                LinkAttribute::NumTxQueues(queues.max(1)),
            ];
            // The kernel takes the peer's index only when the device's own
            // is given too: one far above those the kernel hands out, and
            // another if that one is taken (several peers with the same
            // index, each in its own namespace, have several own ends here).
            static OWN: AtomicU32 = AtomicU32::new(0);
            let mut attempts = 0;
            loop {
                let own_index = b_index.map(|i| {
                    i.saturating_add(1 << 24)
                        .saturating_add(OWN.fetch_add(1, Ordering::Relaxed) % (1 << 20))
                });
                let mut peer = LinkUnspec::new_with_name(&bn).mtu(MTU);
                if let Some(i) = b_index {
                    peer = peer.index(i);
                }
                for q in queues.iter().cloned() {
                    peer = peer.append_extra_attribute(q);
                }
                let mut veth = LinkVeth::new(&an, &bn)
                    .mtu(MTU)
                    .set_info_data(InfoData::Veth(InfoVeth::Peer(peer.build())));
                if let Some(i) = own_index {
                    veth = veth.index(i);
                }
                for q in queues.iter().cloned() {
                    veth = veth.append_extra_attribute(q);
                }
                match handle.link().add(veth.build()).execute().await {
                    Ok(()) => break,
                    Err(e)
                        if b_index.is_some()
                            && attempts < 16
                            && e.to_string().contains("File exists") =>
                    {
                        attempts += 1;
                    }
                    Err(e) => return Err(netlink(e)),
                }
            }
            let peer = link_by_name(&handle, &bn).await?;
            let b_file =
                File::open(&b_path).map_err(sys(format!("opening {}", b_path.display())))?;
            handle
                .link()
                .set(
                    LinkUnspec::new_with_index(peer.header.index)
                        .setns_by_fd(b_file.as_raw_fd())
                        .build(),
                )
                .execute()
                .await
                .map_err(netlink)?;
            Ok::<(), NetnsError>(())
        })?;
        // Out of the runtime: these helpers run their own.
        set_up(&an)?;
        Ok(VethEnd {
            netns: a_ns,
            ..link(&an)?
        })
    };
    let a_end = run_in_or_here(a, make_a)?;
    let b_end = adopt_moved(b, &tmp, b_name)?;
    Ok((a_end, b_end))
}

/// Runs `f` in namespace `ns`, or (`None`) on a thread of the calling
/// thread's namespace.
fn run_in_or_here<T: Send + 'static>(
    ns: Option<&Netns>,
    f: impl FnOnce() -> Result<T, NetnsError> + Send + 'static,
) -> Result<T, NetnsError> {
    match ns {
        Some(ns) => ns.run(f)?,
        // A new thread inherits the calling thread's namespace.
        None => std::thread::spawn(f)
            .join()
            .map_err(|_| NetnsError::Panicked("current".into()))?,
    }
}

/// Renames link `tmp`, just moved into `ns`, to `name` there and brings it
/// up.
fn adopt_moved(ns: &Netns, tmp: &str, name: &str) -> Result<VethEnd, NetnsError> {
    let (tmp, name) = (tmp.to_string(), name.to_string());
    let label = ns.name().to_string();
    ns.run(move || -> Result<VethEnd, NetnsError> {
        rename(get_link(&tmp)?.header.index, &name)?;
        set_up(&name)?;
        Ok(VethEnd {
            netns: label,
            ..link(&name)?
        })
    })?
}

/// Makes a bridge `name` in the calling thread's namespace, up (the
/// underlay of a lab of hosts).
pub fn bridge_here(name: &str) -> Result<(), NetnsError> {
    let msg = rtnetlink::LinkBridge::new(name).up().build();
    with_netlink(|h| async move { h.link().add(msg).execute().await.map_err(netlink) })
}

/// Puts interface `port` of the calling thread's namespace into bridge
/// `bridge` (of the same namespace).
pub fn set_bridge_port(port: &str, bridge: &str) -> Result<(), NetnsError> {
    let (port, bridge) = (get_link(port)?.header.index, get_link(bridge)?.header.index);
    set_link(LinkUnspec::new_with_index(port).controller(bridge).build())
}

/// Gives interface `name` of the calling thread's namespace the address
/// `addr`/`prefix`.
pub fn add_address(name: &str, addr: std::net::IpAddr, prefix: u8) -> Result<(), NetnsError> {
    let index = get_link(name)?.header.index;
    with_netlink(|h| async move {
        let request = h.address().add(index, addr, prefix);
        request.execute().await.map_err(netlink)
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn sweep_kills_what_runs_in_a_stale_namespace_and_deletes_it() {
        // A pid that no longer exists names the namespace as a dead run's.
        let mut dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        dead.wait().unwrap();
        let ns = Netns::create(&format!("nhst{dead_pid}x0")).unwrap();
        let path = ns.path();
        let mut orphan = ns
            .run(|| std::process::Command::new("sleep").arg("600").spawn())
            .unwrap()
            .unwrap();
        // The sweep deletes it; our value must not delete it again.
        std::mem::forget(ns);
        assert!(sweep_stale() >= 1);
        let status = orphan.wait().unwrap();
        assert!(!status.success(), "the orphan was killed: {status:?}");
        assert!(!path.exists(), "the namespace is gone");
    }

    use super::*;

    #[test]
    fn a_prefix_ending_in_a_digit_never_names_another_pid() {
        let name = unique_name("nhv1");
        let pid = std::process::id();
        assert!(name.starts_with(&format!("nhv1-{pid}x")), "{name}");
        assert_eq!(unique_name_pid(&name), Some(pid));
        assert_eq!(unique_name_pid(&unique_name("nhsff")), Some(pid));
        assert_eq!(unique_name_pid("nhv11234x5"), Some(11234), "older names");
        assert_eq!(unique_name_pid("nhamd-web"), None);
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn namespaces_and_veth_are_made_and_removed() {
        assert!(is_root(), "this test needs root (CI runs as root)");
        let a_name = unique_name("nhta");
        let path;
        {
            let a = Netns::create(&a_name).unwrap();
            let b = Netns::create(&unique_name("nhtb")).unwrap();
            path = a.path();
            assert!(path.exists());
            let (ea, eb) = veth_pair(&a, "left", &b, "right").unwrap();
            assert_eq!(ea.name, "left");
            assert_eq!(eb.netns, b.name());
            assert_ne!(ea.mac, [0; 6]);
            // The peer lives in b with one queue each way; a cannot see it.
            assert_eq!(b.run(|| queue_counts("right")).unwrap().unwrap(), (1, 1));
            assert_eq!(a.run(|| queue_counts("left")).unwrap().unwrap(), (1, 1));
            assert!(a.run(|| queue_counts("right")).unwrap().is_err());
            b.run(|| set_down("right")).unwrap().unwrap();
        }
        assert!(!path.exists(), "namespace file removed on drop");
    }

    /// The host has an `eth0` of its own; a VNF's `eth0` must still be made
    /// from the host's namespace.
    #[test]
    fn the_peer_name_may_exist_where_the_pair_is_made() {
        assert!(is_root(), "this test needs root (CI runs as root)");
        let a = Netns::create(&unique_name("nhta")).unwrap();
        let b = Netns::create(&unique_name("nhtb")).unwrap();
        let c = Netns::create(&unique_name("nhtc")).unwrap();
        // "eth0" exists in a (as on a host): one end of another pair.
        veth_pair(&a, "eth0", &c, "other").unwrap();
        let (_, eb) = veth_pair(&a, "left", &b, "eth0").unwrap();
        assert_eq!(eb.name, "eth0");
        assert_eq!(b.run(|| queue_counts("eth0")).unwrap().unwrap(), (1, 1));
        assert!(
            a.run(|| link("eth0")).unwrap().is_ok(),
            "a's own eth0 untouched"
        );
    }
}
