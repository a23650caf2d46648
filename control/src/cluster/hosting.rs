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
//! - **Its working directory and log** are
//!   `/run/nham/hosted/<owner>/<chain>/<vnf>` and `vnf.log` there: the same
//!   paths on every host, for CRIU restores open files and the working
//!   directory by path (the host that restores makes them first).
//! - **A standby** (1R-AS there): the place of the next incarnation made
//!   ahead (its namespace and tunnel end, `eth0` under the index the VNF's
//!   checkpoints need), with the latest committed checkpoint the owner
//!   staged there unpacked and a `criu swrk` waiting in the namespace. On
//!   the primary's failure the owner activates it: restored at once,
//!   stopped, then run as any hosted VNF (nothing to transfer, unpack or
//!   make then).
//! - **A restart of this `nhamd`** kills what it hosted (its namespaces
//!   carry this daemon's prefix and are swept at start): the owner sees
//!   its `WatchVnf` fail, and the VNF as failed.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
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
    /// That incarnation was stopped here already.
    #[error("{0} was stopped here already")]
    Stopped(String),
    /// The host asked was judged down (before or while it was asked):
    /// what it was asked is lost with it.
    #[error("host {0} was judged down")]
    HostDown(String),
    /// A standby has not the checkpoint asked for staged.
    #[error("standby {key}: checkpoint {wanted} asked for, {staged:?} staged")]
    NotStaged {
        /// Which standby.
        key: String,
        /// The checkpoint asked for.
        wanted: u64,
        /// The one staged there.
        staged: Option<u64>,
    },
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
    /// A checkpoint could not be restored (a corrupt one is never handed
    /// to CRIU).
    #[error("restoring a hosted VNF: {0}")]
    Restore(#[source] crate::vsm::SyncError),
    /// A step of the checkpoint protocol failed here.
    #[error("checkpointing a hosted VNF: {0}")]
    Checkpoint(String),
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
    /// The interface index of its `eth0`.
    pub ifindex: u32,
}

/// A checkpoint file, with its index entry, as it goes between hosts.
#[derive(Debug, Clone)]
pub struct Image {
    /// Its index entry (hash, sizes).
    pub meta: crate::vsm::database::CheckpointMeta,
    /// The file's bytes.
    pub file: Vec<u8>,
}

/// What the owner asks to restore (or to stage on a standby).
#[derive(Debug, Clone)]
pub struct RestoreRequest {
    /// The new incarnation.
    pub key: HostedKey,
    /// The owner's underlay address.
    pub owner_underlay: Ipv4Addr,
    /// The index its `eth0` had when dumped (CRIU restores a packet
    /// socket bound by index).
    pub ifindex: u32,
    /// The checkpoint.
    pub image: Image,
}

/// What the kernel says of a hosted VNF's sockets and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Bytes queued on its packet sockets.
    pub rmem: u64,
    /// Whether it is stopped.
    pub stopped: bool,
    /// Frames its receiving sockets dropped.
    pub input_dropped: u64,
}

#[derive(Debug)]
struct Hosted {
    netns: Netns,
    process: Process,
    /// Where its dumps go here.
    scratch: PathBuf,
    /// The moment it exited (Unix ns), once it has.
    exited: watch::Receiver<Option<u64>>,
    cgroup: Option<Cgroup>,
}

/// A standby: the place of an incarnation not started yet, and the
/// checkpoint staged for it.
#[derive(Debug)]
struct Standby {
    netns: Netns,
    eth0: nham_netns::VethEnd,
    /// The staged checkpoints (id, where unpacked), oldest first: the
    /// newest and the one before (its owner may not know of the newest
    /// yet when its VNF fails).
    staged: Vec<(u64, PathBuf)>,
    /// A `criu swrk` waiting in its namespace.
    swrk: Option<crate::vsm::criu::Swrk>,
}

impl Standby {
    /// Removes its staged image; its worker, namespace and tunnel end go
    /// with it.
    fn discard(self) {
        for (_, dir) in &self.staged {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Where hosted VNFs' working directories and logs are, the same on
/// every host.
pub const HOSTED_DIR: &str = "/run/nham/hosted";

/// The VNFs this host runs for others.
#[derive(Debug)]
pub struct VnfHost {
    underlay: Ipv4Addr,
    /// The names of hosted VNFs' namespaces start so.
    prefix: String,
    /// Scratch space for their dumps and restores.
    dir: PathBuf,
    /// Where their cgroups go (`None`: no cgroup2 hierarchy).
    cgroups: Option<PathBuf>,
    hosted: Mutex<BTreeMap<HostedKey, Hosted>>,
    standbys: Mutex<BTreeMap<HostedKey, Standby>>,
    /// Incarnations stopped here, newest last (at most [`STOPPED_KEPT`]):
    /// a request to make one of them that arrives after its stop (a late
    /// stream, an owner's call that timed out) is refused, not obeyed —
    /// nobody would own what it made.
    stopped: Mutex<std::collections::VecDeque<HostedKey>>,
}

/// How many stopped incarnations a host remembers.
const STOPPED_KEPT: usize = 4096;

impl VnfHost {
    /// Hosts VNFs on underlay address `underlay`, in namespaces named
    /// `prefix…`, with scratch space (dumps, restores) under `dir`, cgroups
    /// under `cgroups`. What a previous daemon hosted under `prefix` is
    /// killed and removed now (its owners have judged it failed).
    pub fn new(
        underlay: Ipv4Addr,
        prefix: String,
        dir: PathBuf,
        cgroups: Option<PathBuf>,
    ) -> Arc<Self> {
        let swept = nham_netns::sweep_prefix(&prefix, |_| false);
        if swept > 0 {
            tracing::warn!(
                swept,
                "removed the VNFs a previous nhamd hosted for other hosts"
            );
        }
        if let Some(c) = &cgroups {
            crate::runtime::cgroup::remove_tree(c);
        }
        // Their dumps and staged images.
        let _ = std::fs::remove_dir_all(dir.join("scratch"));
        Arc::new(Self {
            underlay,
            prefix,
            dir,
            cgroups,
            hosted: Mutex::new(BTreeMap::new()),
            standbys: Mutex::new(BTreeMap::new()),
            stopped: Mutex::new(std::collections::VecDeque::new()),
        })
    }

    fn stopped(&self) -> std::sync::MutexGuard<'_, std::collections::VecDeque<HostedKey>> {
        self.stopped.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether incarnation `key` was stopped here.
    fn was_stopped(&self, key: &HostedKey) -> bool {
        self.stopped().contains(key)
    }

    fn standbys(&self) -> std::sync::MutexGuard<'_, BTreeMap<HostedKey, Standby>> {
        self.standbys.lock().unwrap_or_else(PoisonError::into_inner)
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
        if r.command.is_empty() {
            return Err(HostingError::Invalid(format!("{key}: no command")));
        }
        let (id, netns, eth0) = self.place(&key, r.owner_underlay, None)?;
        let (cwd, cgroup) = self.work_place(&key, &id)?;
        let spawn = Spawn {
            vnf: key.vnf.clone(),
            command: r.command.clone(),
            argv: crate::runtime::vnf_argv(&r.command, netns.name()),
            env: r.env,
            netns: netns.path(),
            netns_name: netns.name().to_string(),
            log: cwd.join("vnf.log"),
            cwd,
            cgroup: cgroup.as_ref().map(|c| c.path().to_path_buf()),
            cgroup_v1: Vec::new(),
            identity: Default::default(),
        };
        let pid = spawn.run()?;
        self.adopt(key, pid, netns, eth0, cgroup)
    }

    /// Its working directory (and scratch) and cgroup, made.
    fn work_place(
        &self,
        key: &HostedKey,
        id: &str,
    ) -> Result<(PathBuf, Option<Cgroup>), HostingError> {
        let cwd = Path::new(HOSTED_DIR)
            .join(&key.owner)
            .join(&key.chain)
            .join(&key.vnf);
        std::fs::create_dir_all(&cwd).map_err(RuntimeError::io(cwd.display()))?;
        // (There before a restore: CRIU reopens it by path.)
        let log = cwd.join("vnf.log");
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(RuntimeError::io(log.display()))?;
        let cgroup = self.cgroups.as_ref().and_then(|d| {
            Cgroup::create(&d.join(id))
                .map_err(|e| tracing::warn!(%key, "no cgroup: {e}"))
                .ok()
        });
        Ok((cwd, cgroup))
    }

    /// Takes `pid` (started or restored in `netns`) as hosted VNF `key`,
    /// watched until it exits.
    fn adopt(
        &self,
        key: HostedKey,
        pid: u32,
        netns: Netns,
        eth0: nham_netns::VethEnd,
        cgroup: Option<Cgroup>,
    ) -> Result<Running, HostingError> {
        // Not adopted (it went already, or no pidfd): it does not run on
        // unwatched.
        let process = Process::open(pid).inspect_err(|_| {
            crate::runtime::process::kill_and_reap(pid);
        })?;
        if let Some(cg) = &cgroup {
            if let Err(e) = cg.add(pid) {
                tracing::warn!(%key, "{e}");
            }
        }
        let pidfd = process
            .watch_fd()
            .inspect_err(|_| process.kill_and_reap())?;
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
            ifindex: eth0.ifindex,
        };
        let scratch = self
            .dir
            .join("scratch")
            .join(format!("{}-{}", key.owner, key.vni));
        tracing::info!(%key, pid, netns = running.netns, "hosting a VNF");
        let stopped_key = key.clone();
        self.hosted().insert(
            key,
            Hosted {
                netns,
                process,
                scratch,
                exited,
                cgroup,
            },
        );
        // Its stop came while it was started or restored (a stop is
        // recorded before it looks for what to stop): it goes now.
        if self.was_stopped(&stopped_key) {
            let _ = self.stop(&stopped_key);
            return Err(HostingError::Stopped(stopped_key.to_string()));
        }
        Ok(running)
    }

    /// The namespace of a new incarnation `key` (checked free), with this
    /// host's end of its tunnel as `eth0` (under index `ifindex` if
    /// given).
    fn place(
        &self,
        key: &HostedKey,
        owner_underlay: Ipv4Addr,
        ifindex: Option<u32>,
    ) -> Result<(String, Netns, nham_netns::VethEnd), HostingError> {
        for (what, name) in [
            ("owner host", &key.owner),
            ("chain", &key.chain),
            ("vnf", &key.vnf),
        ] {
            crate::plan::name(what, name).map_err(|e| HostingError::Invalid(e.to_string()))?;
        }
        if self.was_stopped(key) {
            return Err(HostingError::Stopped(key.to_string()));
        }
        let taken = (self.hosted().keys())
            .chain(self.standbys().keys())
            .find(|k| k.vni == key.vni)
            .cloned();
        if let Some(other) = taken {
            return Err(HostingError::Exists(format!(
                "VNI {} is taken here by {other}",
                key.vni
            )));
        }
        let id = namespace_id(key);
        let netns = Netns::create(&format!("{}{id}", self.prefix)).map_err(|source| {
            HostingError::Netns {
                vnf: key.to_string(),
                source,
            }
        })?;
        let tunnel = Tunnel {
            vni: key.vni,
            local: self.underlay,
            remote: owner_underlay,
        };
        let eth0 = tunnel_into(tunnel, None, &netns, VNF_IFACE, ifindex).map_err(|source| {
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
        Ok((id, netns, eth0))
    }

    /// The hosted VNF `key`'s pid, namespace file and scratch directory.
    fn target(&self, key: &HostedKey) -> Result<(u32, PathBuf, PathBuf), HostingError> {
        let hosted = self.hosted();
        let h = hosted
            .get(key)
            .ok_or_else(|| HostingError::Missing(key.to_string()))?;
        Ok((h.process.pid(), h.netns.path(), h.scratch.clone()))
    }

    /// What its sockets hold and dropped, and whether it is stopped.
    pub fn probe(&self, key: &HostedKey) -> Result<Probe, HostingError> {
        let (pid, netns, _) = self.target(key)?;
        let rmem = crate::vsm::checkpointer::packet_rmem(pid)
            .map_err(|e| HostingError::Checkpoint(format!("{key}: {e}")))?;
        let input_dropped = nham_netns::sockdiag::SockDiag::open(&netns)
            .and_then(|mut d| d.packet_sockets())
            .map(|s| nham_netns::sockdiag::VnfSockets::of_process(&s, pid).drops)
            .unwrap_or(0);
        Ok(Probe {
            rmem,
            stopped: crate::runtime::process::is_stopped(pid),
            input_dropped,
        })
    }

    /// Sends `signal` (SIGSTOP or SIGCONT) to it.
    pub fn signal(
        &self,
        key: &HostedKey,
        signal: nix::sys::signal::Signal,
    ) -> Result<(), HostingError> {
        let hosted = self.hosted();
        let h = hosted
            .get(key)
            .ok_or_else(|| HostingError::Missing(key.to_string()))?;
        Ok(h.process.signal(signal)?)
    }

    /// Dumps it (stopped by its owner) with CRIU into this host's scratch
    /// as checkpoint `id`; returns CRIU's report.
    pub fn dump(
        &self,
        key: &HostedKey,
        id: u64,
    ) -> Result<crate::vsm::criu::DumpReport, HostingError> {
        let (pid, netns, scratch) = self.target(key)?;
        let dir = scratch.join(format!("ckpt-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        // (No receive ring positions are saved: a VNF reading through a
        // ring is not checkpointed on another host yet.)
        let report = crate::vsm::criu::dump(None, pid, &netns, &dir)
            .map_err(|e| HostingError::Checkpoint(format!("{key}: dump {id}: {e}")));
        if report.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        report
    }

    /// Checkpoint `id` of it as a checkpoint file (removed here once
    /// packed).
    pub fn fetch(&self, key: &HostedKey, id: u64) -> Result<Image, HostingError> {
        let (_, _, scratch) = self.target(key)?;
        let dir = scratch.join(format!("ckpt-{id}"));
        let packed = crate::vsm::database::pack(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        let (file, image_bytes) =
            packed.map_err(|e| HostingError::Checkpoint(format!("{key}: image {id}: {e}")))?;
        let meta = crate::vsm::database::CheckpointMeta {
            format: crate::vsm::database::FORMAT_VERSION,
            chain: key.chain.clone(),
            vnf: key.vnf.clone(),
            id,
            created_unix_ms: unix_nanos() / 1_000_000,
            image_bytes,
            stored_bytes: file.len() as u64,
            blake3: blake3::hash(&file[crate::vsm::database::HEADER..])
                .to_hex()
                .to_string(),
            file: String::new(),
        };
        Ok(Image { meta, file })
    }

    /// Restores a checkpoint as a new incarnation, stopped (its owner
    /// resumes it once the SFF replays): checked, unpacked, restored by
    /// CRIU in a new place whose `eth0` has the index it had.
    pub fn restore(&self, r: RestoreRequest) -> Result<Running, HostingError> {
        let t0 = std::time::Instant::now();
        let (id, netns, eth0) = self.place(&r.key, r.owner_underlay, Some(r.ifindex))?;
        let (_, cgroup) = self.work_place(&r.key, &id)?;
        let placed = t0.elapsed();
        let dir = self
            .dir
            .join("scratch")
            .join(format!("restore-{}-{}", r.key.owner, r.key.vni));
        let mut unpacked = None;
        let restored = crate::vsm::database::unpack_file(&r.image.meta, &r.image.file, &dir)
            .map_err(crate::vsm::SyncError::from)
            .and_then(|()| {
                unpacked = Some(t0.elapsed());
                crate::vsm::checkpointer::restore_stopped(None, &dir, &netns.path(), None)
            });
        let _ = std::fs::remove_dir_all(&dir);
        let pid = restored.map_err(HostingError::Restore)?;
        tracing::debug!(
            key = %r.key,
            ?placed,
            ?unpacked,
            restored = ?t0.elapsed(),
            "restored (times from the request)"
        );
        self.adopt(r.key, pid, netns, eth0, cgroup)
    }

    /// Stages checkpoint `r.image` on standby `r.key`: checked and
    /// unpacked there, and a `criu swrk` started in its namespace if none
    /// waits. Its place (namespace, tunnel end, `eth0` under `r.ifindex`)
    /// is made by the first stage (`create`); a later one for a standby
    /// not here is NOT_FOUND (stopped meanwhile: not made again). The
    /// checkpoint before stays staged too; older ones go, and an older
    /// checkpoint than the newest staged is refused. Returns its place
    /// (pid 0: nothing runs yet).
    pub fn stage(&self, r: RestoreRequest, create: bool) -> Result<Running, HostingError> {
        let id = r.image.meta.id;
        let made = if self.standbys().contains_key(&r.key) {
            None
        } else if create {
            let (_, netns, eth0) = self.place(&r.key, r.owner_underlay, Some(r.ifindex))?;
            Some(Standby {
                netns,
                eth0,
                staged: Vec::new(),
                swrk: None,
            })
        } else {
            return Err(HostingError::Missing(format!("standby {}", r.key)));
        };
        let (netns_path, dir, wants_worker) = {
            let mut standbys = self.standbys();
            let sb = match made {
                Some(sb) => standbys.entry(r.key.clone()).or_insert(sb),
                None => standbys
                    .get_mut(&r.key)
                    .ok_or_else(|| HostingError::Missing(format!("standby {}", r.key)))?,
            };
            if let Some(&(newest, _)) = sb.staged.last() {
                if id <= newest {
                    return Err(HostingError::NotStaged {
                        key: format!("{} (staging)", r.key),
                        wanted: id,
                        staged: Some(newest),
                    });
                }
            }
            let dir = self
                .dir
                .join("scratch")
                .join(format!("standby-{}-{}-{id}", r.key.owner, r.key.vni));
            (sb.netns.path(), dir, sb.swrk.is_none())
        };
        // Unpacked without the lock (seconds, for a large image).
        let _ = std::fs::remove_dir_all(&dir);
        let ready = crate::vsm::database::unpack_file(&r.image.meta, &r.image.file, &dir)
            .map_err(|e| HostingError::Restore(e.into()))
            .and_then(|()| {
                wants_worker
                    .then(|| crate::vsm::criu::Swrk::spawn(&netns_path))
                    .transpose()
                    .map_err(|e| HostingError::Restore(e.into()))
            });
        let swrk = match ready {
            Ok(swrk) => swrk,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut standbys = self.standbys();
        let Some(sb) = standbys.get_mut(&r.key) else {
            // Stopped meanwhile.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(HostingError::Missing(format!("standby {}", r.key)));
        };
        if sb.staged.last().is_some_and(|&(newest, _)| id <= newest) {
            // A newer one was staged meanwhile.
            let _ = std::fs::remove_dir_all(&dir);
            return Err(HostingError::NotStaged {
                key: format!("{} (staging)", r.key),
                wanted: id,
                staged: sb.staged.last().map(|&(i, _)| i),
            });
        }
        sb.staged.push((id, dir));
        while sb.staged.len() > 2 {
            let (_, old) = sb.staged.remove(0);
            let _ = std::fs::remove_dir_all(old);
        }
        if sb.swrk.is_none() {
            sb.swrk = swrk;
        }
        tracing::debug!(key = %r.key, id, "checkpoint staged on a standby");
        Ok(Running {
            pid: 0,
            mac: sb.eth0.mac,
            netns: sb.netns.name().to_string(),
            ifindex: sb.eth0.ifindex,
        })
    }

    /// Restores standby `key` from its staged checkpoint `id`, stopped
    /// (its owner resumes it once the SFF replays), and hosts it from now
    /// on. A standby without `id` staged is left as it is: the owner
    /// restores elsewhere. A stop of `key` while it is restored kills it
    /// once it is.
    pub fn activate(&self, key: &HostedKey, id: u64) -> Result<Running, HostingError> {
        let sb = {
            let mut standbys = self.standbys();
            let sb = standbys
                .get(key)
                .ok_or_else(|| HostingError::Missing(format!("standby {key}")))?;
            if !sb.staged.iter().any(|&(i, _)| i == id) {
                return Err(HostingError::NotStaged {
                    key: key.to_string(),
                    wanted: id,
                    staged: sb.staged.last().map(|&(i, _)| i),
                });
            }
            standbys
                .remove(key)
                .ok_or_else(|| HostingError::Missing(format!("standby {key}")))?
        };
        let Standby {
            netns,
            eth0,
            staged,
            swrk,
        } = sb;
        let dir = staged
            .iter()
            .find(|&&(i, _)| i == id)
            .map(|(_, d)| d.clone())
            .unwrap_or_default();
        let restored = self
            .work_place(key, &namespace_id(key))
            .and_then(|(_, cgroup)| {
                crate::vsm::checkpointer::restore_stopped(swrk, &dir, &netns.path(), None)
                    .map(|pid| (pid, cgroup))
                    .map_err(HostingError::Restore)
            });
        // The staged images go; the place goes on as the hosted VNF's.
        for (_, d) in &staged {
            let _ = std::fs::remove_dir_all(d);
        }
        let (pid, cgroup) = restored?;
        self.adopt(key.clone(), pid, netns, eth0, cgroup)
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
        // Recorded first: what is being made for it meanwhile sees it.
        {
            let mut stopped = self.stopped();
            if !stopped.contains(key) {
                stopped.push_back(key.clone());
                if stopped.len() > STOPPED_KEPT {
                    stopped.pop_front();
                }
            }
        }
        let standby = self.standbys().remove(key);
        if let Some(sb) = standby {
            tracing::info!(%key, "no longer keeping a standby");
            sb.discard();
            return Ok(());
        }
        let h = self
            .hosted()
            .remove(key)
            .ok_or_else(|| HostingError::Missing(key.to_string()))?;
        Self::remove(key, h);
        Ok(())
    }

    fn remove(key: &HostedKey, mut h: Hosted) {
        h.process.kill_and_reap();
        // Dumps never fetched (the owner gave the checkpoint up).
        let _ = std::fs::remove_dir_all(&h.scratch);
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
        let standbys = std::mem::take(&mut *self.standbys());
        standbys.into_values().for_each(Standby::discard);
        let all = std::mem::take(&mut *self.hosted());
        for (key, h) in all {
            Self::remove(&key, h);
        }
    }
}

/// The id of incarnation `key`'s namespace and cgroup here: one per
/// incarnation, a short, fixed-length name.
fn namespace_id(key: &HostedKey) -> String {
    blake3::hash(key.to_string().as_bytes()).to_hex()[..12].to_string()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(vni: u32) -> HostedKey {
        HostedKey {
            owner: "sff".into(),
            chain: "c".into(),
            vnf: "v".into(),
            vni,
        }
    }

    /// A stop that arrives before what it stops (the owner's call timed
    /// out, its stream came late) is remembered: the incarnation is never
    /// made afterwards, by any request. (Refused before any namespace is
    /// made.)
    #[test]
    fn an_incarnation_stopped_before_it_was_made_is_never_made() {
        let dir = std::env::temp_dir().join(nham_netns::unique_name("nham-hosting-"));
        let host = VnfHost::new(
            Ipv4Addr::LOCALHOST,
            nham_netns::unique_name("nhamt-"),
            dir.clone(),
            None,
        );
        assert!(matches!(host.stop(&key(7)), Err(HostingError::Missing(_))));
        let run = host.run(RunRequest {
            key: key(7),
            owner_underlay: Ipv4Addr::LOCALHOST,
            command: vec!["true".into()],
            env: BTreeMap::new(),
        });
        assert!(matches!(run, Err(HostingError::Stopped(_))), "{run:?}");
        let image = Image {
            meta: crate::vsm::database::CheckpointMeta {
                format: crate::vsm::database::FORMAT_VERSION,
                chain: "c".into(),
                vnf: "v".into(),
                id: 1,
                created_unix_ms: 0,
                image_bytes: 0,
                stored_bytes: 0,
                blake3: String::new(),
                file: String::new(),
            },
            file: Vec::new(),
        };
        let request = RestoreRequest {
            key: key(7),
            owner_underlay: Ipv4Addr::LOCALHOST,
            ifindex: 2,
            image,
        };
        let staged = host.stage(request.clone(), true);
        assert!(
            matches!(staged, Err(HostingError::Stopped(_))),
            "{staged:?}"
        );
        // A later stage of a standby that is not here makes nothing.
        let request = RestoreRequest {
            key: key(8),
            ..request
        };
        let staged = host.stage(request, false);
        assert!(
            matches!(staged, Err(HostingError::Missing(_))),
            "{staged:?}"
        );
        assert!(matches!(
            host.activate(&key(8), 1),
            Err(HostingError::Missing(_))
        ));
        let _ = std::fs::remove_dir_all(dir);
    }
}
