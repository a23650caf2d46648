//! A chain's VNF on another host of the cluster (issue 14): the owner
//! (this host) keeps the SFF and every hop's buffers; the VNF runs in a
//! place its host's `nhamd` makes ([`crate::cluster::hosting`]), reached
//! through a VXLAN tunnel whose end here is the hop's SFF port.
//!
//! Each incarnation gets a tunnel of its own (a fresh VNI, never reused by
//! this `nhamd`): a new incarnation is attached as the hop's standby port
//! and the SFF fails the hop over to it, so what an old incarnation still
//! sends arrives on a port that is no longer the hop's and is never
//! accepted (fenced, counted). Its agent checkpoints it through its host
//! ([`RemoteTarget`]); the daemon recovers it by its mechanism
//! (`service::remote_vnfs`, `service::remote_members`).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use nham_netns::tunnel::{tunnel_here, Tunnel};
use nham_sff::PortSpec;

use crate::cluster::hosting::{HostedKey, RunRequest};
use crate::cluster::Cluster;
use crate::error::ControlError;
use crate::plan::VnfPlan;

/// Where a VNF on another host is reached for its checkpoints: its
/// current incarnation, moved on by each placement ([`RemoteTarget::set`]),
/// so the agent that checkpoints it never talks to one replaced.
#[derive(Debug)]
pub struct RemoteTarget {
    cluster: Arc<Cluster>,
    at: std::sync::Mutex<(String, HostedKey)>,
    /// This host's end of its tunnel (the link its agent watches).
    device: std::sync::Mutex<String>,
}

impl RemoteTarget {
    /// `vnf`, reached through `cluster`.
    pub fn new(cluster: Arc<Cluster>, vnf: &RemoteVnf) -> Arc<Self> {
        Arc::new(Self {
            cluster,
            at: std::sync::Mutex::new((vnf.host.clone(), vnf.key.clone())),
            device: std::sync::Mutex::new(vnf.device.clone()),
        })
    }

    /// From now on, `vnf`.
    pub fn set(&self, vnf: &RemoteVnf) {
        *self.lock() = (vnf.host.clone(), vnf.key.clone());
        *self
            .device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = vnf.device.clone();
    }

    /// The SFF's end of the current incarnation's tunnel.
    pub fn device(&self) -> String {
        self.device
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (String, HostedKey)> {
        self.at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn now(&self) -> (String, HostedKey) {
        self.lock().clone()
    }
}

fn sync_error(e: crate::cluster::hosting::HostingError) -> crate::vsm::SyncError {
    match e {
        crate::cluster::hosting::HostingError::HostDown(host) => {
            crate::vsm::SyncError::HostDown(host)
        }
        e => crate::vsm::SyncError::Process(e.to_string()),
    }
}

impl crate::vsm::checkpointer::RemoteVnfOps for RemoteTarget {
    fn probe(&self) -> Result<(u64, bool, u64), crate::vsm::SyncError> {
        let (host, key) = self.now();
        let p = self.cluster.probe_vnf(&host, &key).map_err(sync_error)?;
        Ok((p.rmem, p.stopped, p.input_dropped))
    }

    fn signal(&self, stop: bool) -> Result<(), crate::vsm::SyncError> {
        let (host, key) = self.now();
        let signal = if stop {
            nix::sys::signal::Signal::SIGSTOP
        } else {
            nix::sys::signal::Signal::SIGCONT
        };
        self.cluster
            .signal_vnf(&host, &key, signal)
            .map_err(sync_error)
    }

    fn dump(
        &self,
        id: nham_dataplane::hold::CheckpointId,
    ) -> Result<crate::vsm::criu::DumpReport, crate::vsm::SyncError> {
        let (host, key) = self.now();
        self.cluster.dump_vnf(&host, &key, id).map_err(sync_error)
    }

    fn pin(&self) -> Arc<dyn crate::vsm::checkpointer::RemoteVnfOps> {
        Arc::new(Self {
            cluster: self.cluster.clone(),
            at: std::sync::Mutex::new(self.now()),
            device: std::sync::Mutex::new(self.device()),
        })
    }

    fn fetch(
        &self,
        id: nham_dataplane::hold::CheckpointId,
        dir: &std::path::Path,
    ) -> Result<(), crate::vsm::SyncError> {
        let (host, key) = self.now();
        let image = self
            .cluster
            .fetch_image(&host, &key, id)
            .map_err(sync_error)?;
        let m = &image.meta;
        if (m.chain.as_str(), m.vnf.as_str(), m.id) != (key.chain.as_str(), key.vnf.as_str(), id) {
            return Err(crate::vsm::SyncError::Process(format!(
                "host {host} sent checkpoint {}/{} {} for {}/{} {id}",
                m.chain, m.vnf, m.id, key.chain, key.vnf
            )));
        }
        Ok(crate::vsm::database::unpack_file(m, &image.file, dir)?)
    }
}

/// The live hosts of the cluster other than this one and those in
/// `except`, in name order from the first after `except[0]` (so that what
/// each host's failure moves spreads over the others).
pub fn live_hosts(cluster: &Cluster, except: &[&str]) -> Vec<String> {
    let mut live: Vec<String> = cluster
        .hosts()
        .hosts
        .into_iter()
        .filter(|h| !h.this_host && h.liveness == crate::cluster::membership::Liveness::Alive)
        .map(|h| h.record.name)
        .filter(|n| !except.contains(&n.as_str()))
        .collect();
    live.sort();
    if let Some(first) = except.first() {
        let after = live.iter().position(|n| n.as_str() > *first).unwrap_or(0);
        live.rotate_left(after);
    }
    live
}

/// Hosts for `n` MR-AA members of a VNF whose other members run on
/// `taken` (member 0's first): live hosts other than those, one each in
/// turn while there are any (members on as many different hosts as there
/// are); where there are fewer, again from the first, and where there are
/// none, `taken`'s first (the members share a host rather than not run).
pub fn member_hosts(cluster: &Cluster, taken: &[&str], n: usize) -> Vec<String> {
    let free = live_hosts(cluster, taken);
    if free.is_empty() {
        return taken
            .first()
            .map_or_else(Vec::new, |h| vec![h.to_string(); n]);
    }
    free.iter().cycle().take(n).cloned().collect()
}

/// Tries at most this many VNIs in a row before giving up.
const VNI_TRIES: usize = 8;

/// A VNF incarnation running on another host.
#[derive(Debug)]
pub struct RemoteVnf {
    cluster: Arc<Cluster>,
    /// Its host.
    pub host: String,
    /// Which incarnation (owner, chain, VNF, VNI).
    pub key: HostedKey,
    /// Its pid there.
    pub pid: u32,
    /// Its namespace there.
    pub netns: String,
    /// This host's end of its tunnel (the SFF's port while it is current).
    pub device: String,
    /// The interface index of its `eth0` (a restored incarnation keeps
    /// the first one's: CRIU restores a packet socket bound by index).
    pub ifindex: u32,
}

/// How a new incarnation starts.
#[derive(Debug)]
pub enum Start {
    /// Its command, afresh.
    Fresh,
    /// Restored from a checkpoint, stopped (resumed once the SFF replays),
    /// its `eth0` under index `ifindex`.
    Restore {
        /// The index.
        ifindex: u32,
        /// The checkpoint.
        image: crate::cluster::hosting::Image,
    },
    /// A standby (1R-AS): its place made and the checkpoint staged there,
    /// nothing run (pid 0) until it is activated.
    Standby {
        /// The index its `eth0` gets.
        ifindex: u32,
        /// The checkpoint staged.
        image: crate::cluster::hosting::Image,
    },
}

impl Drop for RemoteVnf {
    fn drop(&mut self) {
        self.stop();
    }
}

impl RemoteVnf {
    /// The cluster it was placed through.
    pub fn cluster(&self) -> &Arc<Cluster> {
        &self.cluster
    }

    /// A standby (1R-AS): restores it on its host from its staged
    /// checkpoint `id`, stopped; from then on it is the incarnation.
    /// Blocking.
    pub fn activate(&mut self, id: nham_dataplane::hold::CheckpointId) -> Result<(), ControlError> {
        let running = self.cluster.activate_standby(&self.host, &self.key, id)?;
        self.pid = running.pid;
        self.netns = running.netns;
        Ok(())
    }

    /// Asks its host to stop it, on a thread left to finish by itself (its
    /// host may be cut off: the call then waits for its timeout); this
    /// end of the tunnel stays.
    pub fn stop_hosted(&self) {
        let (cluster, host, key) = (self.cluster.clone(), self.host.clone(), self.key.clone());
        std::thread::spawn(move || {
            if let Err(e) = cluster.stop_vnf(&host, &key) {
                tracing::debug!(%key, "stopping it on {host}: {e}");
            }
        });
    }

    /// Asks its host to stop it (best effort: the host may be gone) and
    /// deletes this end of its tunnel. On a thread of its own: it may be
    /// dropped on an async thread, and the peer call blocks.
    fn stop(&self) {
        let (cluster, host, key, device) = (
            self.cluster.clone(),
            self.host.clone(),
            self.key.clone(),
            self.device.clone(),
        );
        let _ = std::thread::spawn(move || {
            if let Err(e) = cluster.stop_vnf(&host, &key) {
                tracing::debug!(%key, "stopping it on {host}: {e}");
            }
            if let Err(e) = nham_netns::delete_link(&device) {
                tracing::debug!(device, "{e}");
            }
        })
        .join();
    }
}

/// 1R-AS: stages checkpoint `image` on standby `key` on host `host`
/// (its `eth0` under `ifindex`), replacing the one staged before.
/// Blocking.
pub fn stage(
    cluster: &Cluster,
    host: &str,
    key: &HostedKey,
    ifindex: u32,
    image: crate::cluster::hosting::Image,
) -> Result<(), ControlError> {
    let owner_underlay = ipv4(cluster.underlay(), "this host's")?;
    cluster.stage_standby(
        host,
        crate::cluster::hosting::RestoreRequest {
            key: key.clone(),
            owner_underlay,
            ifindex,
            image,
        },
        false,
    )?;
    Ok(())
}

fn ipv4(a: IpAddr, whose: &str) -> Result<Ipv4Addr, ControlError> {
    match a {
        IpAddr::V4(a) => Ok(a),
        IpAddr::V6(a) => Err(ControlError::FailedPrecondition(format!(
            "{whose} underlay address {a}: tunnels to VNFs on other hosts are VXLAN over IPv4"
        ))),
    }
}

/// Places a new incarnation of VNF `v` of chain `chain` on host `host`:
/// a tunnel with a fresh VNI (its end here made in the calling thread's
/// namespace, the SFF's), the VNF started there at the other end. Returns
/// it and the SFF's port for it. Blocking (a VNF may take seconds to
/// listen): call it off the async threads.
pub fn place(
    cluster: &Arc<Cluster>,
    host: &str,
    chain: &str,
    v: &VnfPlan,
    start: &Start,
) -> Result<(RemoteVnf, PortSpec), ControlError> {
    if host == cluster.name() {
        return Err(ControlError::InvalidArgument(format!(
            "VNF {} on host {host}: that is the chain's own host (leave host empty)",
            v.name
        )));
    }
    let local = ipv4(cluster.underlay(), "this host's")?;
    let remote = ipv4(cluster.underlay_of(host)?, &format!("host {host}'s"))?;
    let mut taken = Vec::new();
    for _ in 0..VNI_TRIES {
        let vni = cluster.next_vni();
        let device = format!("nt{vni:06x}");
        let tunnel = Tunnel { vni, local, remote };
        let here = match tunnel_here(&device, tunnel) {
            Ok(h) => h,
            Err(e) if e.to_string().contains("File exists") => {
                taken.push(vni);
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let key = HostedKey {
            owner: cluster.name().to_string(),
            chain: chain.to_string(),
            vnf: v.name.clone(),
            vni,
        };
        let started = match start {
            Start::Fresh => cluster.run_vnf(
                host,
                RunRequest {
                    key: key.clone(),
                    owner_underlay: local,
                    command: v.command.clone(),
                    env: v.env.clone(),
                },
            ),
            Start::Restore { ifindex, image } | Start::Standby { ifindex, image } => {
                let r = crate::cluster::hosting::RestoreRequest {
                    key: key.clone(),
                    owner_underlay: local,
                    ifindex: *ifindex,
                    image: image.clone(),
                };
                if matches!(start, Start::Standby { .. }) {
                    cluster.stage_standby(host, r, true)
                } else {
                    cluster.restore_vnf(host, r)
                }
            }
        };
        match started {
            Ok(running) => {
                let port = PortSpec {
                    iface: device.clone(),
                    ifindex: here.ifindex,
                    mac: here.mac,
                    peer_mac: running.mac,
                };
                tracing::info!(%key, host, pid = running.pid, "VNF placed on another host");
                let remote = RemoteVnf {
                    cluster: cluster.clone(),
                    host: host.to_string(),
                    key,
                    pid: running.pid,
                    netns: running.netns,
                    device,
                    ifindex: running.ifindex,
                };
                return Ok((remote, port));
            }
            Err(e) => {
                let _ = nham_netns::delete_link(&device);
                if e.vni_taken() {
                    taken.push(vni);
                    continue;
                }
                // It may have started there anyway (an answer lost, a
                // timeout): its host is asked to stop it, off this thread.
                let (cluster, host) = (cluster.clone(), host.to_string());
                std::thread::spawn(move || {
                    let _ = cluster.stop_vnf(&host, &key);
                });
                return Err(e.into());
            }
        }
    }
    Err(ControlError::FailedPrecondition(format!(
        "VNF {} on host {host}: VNIs {taken:?} were all taken",
        v.name
    )))
}
