//! Hosting VNFs for other hosts (issue 14, item 1): a chain's owner keeps
//! its SFF, with every hop's BufferRx/BufferTx, and asks the `nhamd` of
//! another host to run one of the chain's VNFs there
//! (`PeerService.RunVnf`). This module is that other host's side.
//!
//! - **Its place**: a network namespace of its own whose `eth0` is this
//!   host's end of a VXLAN tunnel to the owner's underlay address (the
//!   tunnel's UDP socket stays in this host's namespace, on the underlay;
//!   see `nham_netns::tunnel`). The owner makes the other end, the SFF's
//!   port.
//! - **Fencing**: one VNI per incarnation, chosen by the owner and never
//!   reused by it; the key of a hosted VNF is (owner, chain, VNF, VNI), so
//!   an old incarnation and its successor are never confused here, and
//!   what the old one still sends after the owner moved on arrives at an
//!   SFF port that is no longer the hop's (fenced in the data path).
//! - **Its life**: started as the owner starts a local VNF
//!   ([`Spawn`](crate::runtime::spawn::Spawn): under `setsid`, pid 1 of a
//!   PID namespace of its own, in a cgroup, answered once it listens on a
//!   packet socket). A thread per VNF waits on its pidfd and keeps the
//!   moment it exited (this host's clock) for `WatchVnf`.
//! - **A restart of this `nhamd`** kills what it hosted (its namespaces
//!   carry this daemon's prefix and are swept at start): the owner sees
//!   its `WatchVnf` fail, and the VNF as failed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use nham_netns::tunnel::{tunnel_into, Tunnel};
use nham_netns::Netns;
use thiserror::Error;
use tokio::sync::watch;

use crate::runtime::cgroup::Cgroup;
use crate::runtime::process::Process;
use crate::runtime::spawn::Spawn;
use crate::runtime::{RuntimeError, VNF_IFACE};

/// Errors of hosting a VNF for another host.
#[derive(Debug, Error)]
pub enum HostingError {
    /// The request makes no sense.
    #[error("hosting a VNF: {0}")]
    Invalid(String),
    /// That VNI (or that incarnation) is taken here.
    #[error("hosting a VNF: {0}")]
    Exists(String),
    /// No such hosted VNF.
    #[error("no hosted VNF {0}")]
    Missing(String),
    /// Its namespace or tunnel could not be made.
    #[error("hosting VNF {vnf}: {source}")]
    Netns {
        /// Which.
        vnf: String,
        /// Why.
        #[source]
        source: nham_netns::NetnsError,
    },
    /// It could not be started.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The host asked to run it said no, or could not be asked.
    #[error("host {host}: {code:?}: {why}")]
    Peer {
        /// Which host.
        host: String,
        /// Its answer's code (`Unavailable` when there was none).
        code: tonic::Code,
        /// What it said.
        why: String,
    },
}

impl HostingError {
    /// Whether the VNI was taken (the owner tries the next one).
    pub fn vni_taken(&self) -> bool {
        matches!(self, Self::Exists(_))
            || matches!(self, Self::Peer { code, .. } if *code == tonic::Code::AlreadyExists)
    }
}

/// One incarnation of a VNF hosted for another host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct HostedKey {
    /// The chain's owner (the host whose SFF reaches it).
    pub owner: String,
    /// The chain.
    pub chain: String,
    /// The VNF.
    pub vnf: String,
    /// Its tunnel's VNI (the incarnation).
    pub vni: u32,
}

impl std::fmt::Display for HostedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}/{} of host {} (VNI {})",
            self.chain, self.vnf, self.owner, self.vni
        )
    }
}

/// What the owner asks to run.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Which incarnation.
    pub key: HostedKey,
    /// The owner's underlay address.
    pub owner_underlay: Ipv4Addr,
    /// Its command line (`{netns}` still to be replaced here).
    pub command: Vec<String>,
    /// Its environment, on top of this daemon's.
    pub env: BTreeMap<String, String>,
}

/// A hosted VNF that runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Running {
    /// Its pid here.
    pub pid: u32,
    /// Its `eth0`'s MAC address.
    pub mac: [u8; 6],
    /// Its namespace's name here.
    pub netns: String,
}

#[derive(Debug)]
struct Hosted {
    netns: Netns,
    process: Process,
    /// The moment it exited (Unix ns), once it has.
    exited: watch::Receiver<Option<u64>>,
    cgroup: Option<Cgroup>,
}

/// The VNFs this host runs for others.
#[derive(Debug)]
pub struct VnfHost {
    underlay: Ipv4Addr,
    /// The names of hosted VNFs' namespaces start so.
    prefix: String,
    /// Their logs and working directories.
    dir: PathBuf,
    /// Where their cgroups go (`None`: no cgroup2 hierarchy).
    cgroups: Option<PathBuf>,
    hosted: Mutex<BTreeMap<HostedKey, Hosted>>,
}

impl VnfHost {
    /// Hosts VNFs on underlay address `underlay`, in namespaces named
    /// `prefix…`, with logs and working directories under `dir`, cgroups
    /// under `cgroups`. What a previous daemon hosted under `prefix` is
    /// killed and removed now (its owners have judged it failed).
    pub fn new(
        underlay: Ipv4Addr,
        prefix: String,
        dir: PathBuf,
        cgroups: Option<PathBuf>,
    ) -> Arc<Self> {
        let swept = nham_netns::sweep_prefix(&prefix, &Default::default());
        if swept > 0 {
            tracing::warn!(
                swept,
                "removed the VNFs a previous nhamd hosted for other hosts"
            );
        }
        if let Some(c) = &cgroups {
            crate::runtime::cgroup::remove_tree(c);
        }
        Arc::new(Self {
            underlay,
            prefix,
            dir,
            cgroups,
            hosted: Mutex::new(BTreeMap::new()),
        })
    }

    fn hosted(&self) -> std::sync::MutexGuard<'_, BTreeMap<HostedKey, Hosted>> {
        self.hosted.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How many VNFs run here for other hosts.
    pub fn count(&self) -> usize {
        self.hosted().len()
    }

    /// Makes the VNF's place and starts it (blocks until it listens, or
    /// says why it did not start: seconds, for some VNFs).
    pub fn run(&self, r: RunRequest) -> Result<Running, HostingError> {
        let key = r.key.clone();
        for (what, name) in [
            ("owner host", &key.owner),
            ("chain", &key.chain),
            ("vnf", &key.vnf),
        ] {
            crate::plan::name(what, name).map_err(|e| HostingError::Invalid(e.to_string()))?;
        }
        if r.command.is_empty() {
            return Err(HostingError::Invalid(format!("{key}: no command")));
        }
        if let Some(other) = self.hosted().keys().find(|k| k.vni == key.vni) {
            return Err(HostingError::Exists(format!(
                "VNI {} is taken here by {other}",
                key.vni
            )));
        }
        // One namespace per incarnation: a short, fixed-length name.
        let id = blake3::hash(key.to_string().as_bytes()).to_hex()[..12].to_string();
        let netns = Netns::create(&format!("{}{id}", self.prefix)).map_err(|source| {
            HostingError::Netns {
                vnf: key.to_string(),
                source,
            }
        })?;
        let tunnel = Tunnel {
            vni: key.vni,
            local: self.underlay,
            remote: r.owner_underlay,
        };
        let eth0 = tunnel_into(tunnel, None, &netns, VNF_IFACE, None).map_err(|source| {
            // A VNI that another device of this namespace has.
            if source.to_string().contains("File exists") {
                HostingError::Exists(format!("VNI {} is taken here: {source}", key.vni))
            } else {
                HostingError::Netns {
                    vnf: key.to_string(),
                    source,
                }
            }
        })?;
        let cwd = self.dir.join(&key.owner).join(&key.chain).join(&key.vnf);
        std::fs::create_dir_all(&cwd).map_err(RuntimeError::io(cwd.display()))?;
        let cgroup = self.cgroups.as_ref().and_then(|d| {
            Cgroup::create(&d.join(&id))
                .map_err(|e| tracing::warn!(%key, "no cgroup: {e}"))
                .ok()
        });
        let spawn = Spawn {
            vnf: key.vnf.clone(),
            command: r.command.clone(),
            argv: crate::runtime::vnf_argv(&r.command, netns.name()),
            env: r.env,
            netns: netns.path(),
            netns_name: netns.name().to_string(),
            log: cwd.join(format!("{}.log", key.vni)),
            cwd,
            cgroup: cgroup.as_ref().map(|c| c.path().to_path_buf()),
        };
        let pid = spawn.run()?;
        let process = Process::open(pid)?;
        let pidfd = process.watch_fd()?;
        let (tx, exited) = watch::channel(None);
        std::thread::Builder::new()
            .name(format!("hosted-{}", key.vni))
            .spawn(move || {
                wait_readable(&pidfd);
                let _ = tx.send(Some(unix_nanos()));
                crate::runtime::reap(&pidfd);
            })
            .map_err(RuntimeError::io("starting a hosted VNF's exit watch"))?;
        let running = Running {
            pid,
            mac: eth0.mac,
            netns: netns.name().to_string(),
        };
        tracing::info!(%key, pid, netns = running.netns, "hosting a VNF");
        self.hosted().insert(
            key,
            Hosted {
                netns,
                process,
                exited,
                cgroup,
            },
        );
        Ok(running)
    }

    /// When the hosted VNF `key` exited (Unix ns), waiting until it has.
    pub async fn exited(&self, key: &HostedKey) -> Result<u64, HostingError> {
        let mut rx = self
            .hosted()
            .get(key)
            .map(|h| h.exited.clone())
            .ok_or_else(|| HostingError::Missing(key.to_string()))?;
        let at = rx
            .wait_for(Option::is_some)
            .await
            .map(|v| v.unwrap_or_default());
        // The watch thread ends only once it has said.
        Ok(at.unwrap_or_else(|_| unix_nanos()))
    }

    /// Kills the hosted VNF `key` and removes its place.
    pub fn stop(&self, key: &HostedKey) -> Result<(), HostingError> {
        let h = self
            .hosted()
            .remove(key)
            .ok_or_else(|| HostingError::Missing(key.to_string()))?;
        Self::remove(key, h);
        Ok(())
    }

    fn remove(key: &HostedKey, mut h: Hosted) {
        h.process.kill_and_reap();
        // Anything it forked.
        nham_netns::kill_processes_in(&h.netns.path());
        if let Some(c) = h.cgroup.as_mut() {
            let _ = c.remove();
        }
        tracing::info!(%key, "no longer hosting");
        // The namespace (and the tunnel end in it) goes with `h.netns`.
    }

    /// Kills everything hosted here (this daemon stops).
    pub fn stop_all(&self) {
        let all = std::mem::take(&mut *self.hosted());
        for (key, h) in all {
            Self::remove(&key, h);
        }
    }
}

/// Blocks until `fd` (a pidfd) is readable: its process exited.
fn wait_readable(fd: &std::os::fd::OwnedFd) {
    use rustix::event::{poll, PollFd, PollFlags};
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    while !matches!(poll(&mut fds, None), Ok(n) if n > 0) {}
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}
