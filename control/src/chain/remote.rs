//! A chain's VNF on another host of the cluster (issue 14): the owner
//! (this host) keeps the SFF and every hop's buffers; the VNF runs in a
//! place its host's `nhamd` makes ([`crate::cluster::hosting`]), reached
//! through a VXLAN tunnel whose end here is the hop's SFF port.
//!
//! Each incarnation gets a tunnel of its own (a fresh VNI, never reused by
//! this `nhamd`): a new incarnation is attached as the hop's standby port
//! and the SFF fails the hop over to it, so what an old incarnation still
//! sends arrives on a port that is no longer the hop's and is never
//! accepted (fenced, counted). For now such a VNF runs unprotected: it
//! comes back afresh (its state is not checkpointed yet).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use nham_netns::tunnel::{tunnel_here, Tunnel};
use nham_sff::PortSpec;

use crate::cluster::hosting::{HostedKey, RunRequest};
use crate::cluster::Cluster;
use crate::error::ControlError;
use crate::plan::VnfPlan;

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
        let request = RunRequest {
            key: key.clone(),
            owner_underlay: local,
            command: v.command.clone(),
            env: v.env.clone(),
        };
        match cluster.run_vnf(host, request) {
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
                };
                return Ok((remote, port));
            }
            Err(e) => {
                let _ = nham_netns::delete_link(&device);
                if e.vni_taken() {
                    taken.push(vni);
                    continue;
                }
                return Err(e.into());
            }
        }
    }
    Err(ControlError::FailedPrecondition(format!(
        "VNF {} on host {host}: VNIs {taken:?} were all taken",
        v.name
    )))
}
