//! The ground floor: VNF processes, their namespaces and links, cgroups,
//! and the SFF process.
//!
//! Each VNF gets a network namespace of its own and a veth pair whose other
//! end stays in the daemon's namespace, where the SFF serves it. A VNF's
//! command starts in its namespace by forking from a thread that entered it
//! with `setns` (nsenter-style: no extra mount namespace, so CRIU can dump
//! it later), as pid 1 of a PID namespace of its own, under `setsid` (CRIU
//! dumps trees whose root leads its own session), with stdout and stderr on
//! a log file (CRIU restores files, not pipes to the daemon): see
//! [`Spawn`]. The SFF runs as a process of its own (`nham-sff`, see
//! [`nham_sff::remote`]), so the packets it holds outlive the daemon: see
//! [`spawn_sff`].
//!
//! Nothing here decides or protects: this floor owns no agent and imports
//! nothing above it (no `fms`, `vsm`, `api` or driver); its
//! errors are its own ([`RuntimeError`]). What runs for a chain is put
//! together one floor up, in [`crate::chain`].

use std::os::fd::OwnedFd;

use nham_netns::Netns;
use nham_sff::PortSpec;
use thiserror::Error;

pub mod cgroup;
pub mod exits;
pub mod identity;
pub mod logs;
pub mod process;
mod sff;
pub mod spawn;

pub use sff::{
    join_cgroup, port_spec, sff_config, spawn_sff, ChainPorts, SffOptions, SffProcess,
    DEFAULT_HOLD_PACKETS, DEFAULT_SFF_NICE,
};
pub use spawn::{own_pid_namespace_for_children, wait_for_packet_socket, Spawn, START_TIMEOUT};

/// Errors of the ground floor.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// A namespace or link could not be made or used.
    #[error("network setup: {0}")]
    Netns(#[from] nham_netns::NetnsError),
    /// A file or system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// A signal could not be sent.
    #[error("{signal} to {pid}: {source}")]
    Signal {
        /// The signal.
        signal: nix::sys::signal::Signal,
        /// To whom.
        pid: u32,
        /// Why not.
        #[source]
        source: nix::errno::Errno,
    },
    /// A process numbered 0 was named.
    #[error("process has pid 0")]
    NoPid,
    /// A VNF command did not start: it exited first, or opened no packet
    /// socket in time.
    #[error("{what} did not start: {why}")]
    NotStarted {
        /// The VNF or command.
        what: String,
        /// Why, with the end of its log where there is one.
        why: String,
    },
    /// An interface a chain needs is not usable.
    #[error("the {role} interface {iface:?} is not usable in nhamd's network namespace: {source}")]
    Interface {
        /// ingress or egress.
        role: &'static str,
        /// Its name.
        iface: String,
        /// Why not.
        #[source]
        source: nham_netns::NetnsError,
    },
    /// The SFF process did not start.
    #[error("starting the SFF: {0}")]
    Sff(String),
}

impl RuntimeError {
    /// An [`Io`](Self::Io) error about `what`.
    pub fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.to_string();
        move |source| Self::Io { what, source }
    }
}

/// Where a VNF process (or a replica or member of it) runs, as the work
/// on it needs to know: its namespace file, the SFF's end of its link, its
/// working directory. (The namespace itself is owned where it was made.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// Its namespace file.
    pub netns: std::path::PathBuf,
    /// The SFF's end of its link, in the daemon's namespace.
    pub sff_iface: String,
    /// Its working directory (its own: CRIU's parasite makes a scratch
    /// directory in the working directory of a process it dumps).
    pub cwd: std::path::PathBuf,
}

/// Makes a VNF's link: a veth whose end `iface` is the SFF's port, in the
/// SFF's namespace (`sff`, or the calling thread's), and whose other end is
/// `eth0` in `vnf` (under index `ifindex` when given: a replica's or
/// member's, the VNF's own index, as CRIU restores a packet socket bound by
/// index). Returns the SFF's port and the index of `eth0`. The one way a
/// chain's hop, replica or member is linked, for `nhamd` and the bench lab
/// alike.
pub fn make_link(
    sff: Option<&Netns>,
    iface: &str,
    vnf: &Netns,
    ifindex: Option<u32>,
) -> Result<(PortSpec, u32), RuntimeError> {
    let (here, there) = nham_netns::veth_pair_in(sff, iface, vnf, VNF_IFACE, ifindex)?;
    let port = PortSpec {
        iface: here.name,
        ifindex: here.ifindex,
        mac: here.mac,
        peer_mac: there.mac,
    };
    Ok((port, there.ifindex))
}

/// A VNF's command line as it is started: under `setsid` (which execs in
/// place, same pid: the VNF leads a session of its own, as CRIU wants of
/// the root of a tree it dumps), with `{iface}` and `{netns}` replaced by
/// its interface and its namespace's name.
pub fn vnf_argv(command: &[String], netns_name: &str) -> Vec<String> {
    std::iter::once("setsid".to_string())
        .chain(command.iter().map(|a| {
            a.replace("{iface}", VNF_IFACE)
                .replace("{netns}", netns_name)
        }))
        .collect()
}

/// Makes a place beside a VNF for a 1R-AA replica or an MR-AA member:
/// namespace `ns_name`, whose `eth0` has index `ifindex` (the VNF's: CRIU
/// restores a packet socket bound by index), linked to `iface` in the
/// daemon's namespace. Returns it and the SFF's port on `iface`.
pub fn make_place(
    ns_name: &str,
    iface: &str,
    ifindex: u32,
) -> Result<(Netns, PortSpec), RuntimeError> {
    let ns = Netns::create(ns_name)?;
    let (port, _) = make_link(None, iface, &ns, Some(ifindex))?;
    Ok((ns, port))
}

/// Reaps the process of `pidfd` once it has exited (blocks until then).
pub fn reap(pidfd: &OwnedFd) {
    use std::os::fd::AsFd;
    loop {
        match rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            // Reaped, or not ours to reap (ECHILD).
            _ => return,
        }
    }
}

/// The VNF's interface name inside its namespace.
pub const VNF_IFACE: &str = "eth0";
