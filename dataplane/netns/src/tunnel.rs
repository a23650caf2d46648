//! Tunnels between hosts: how an SFF reaches a VNF that runs on another
//! host. A hop's link is a VXLAN device (RFC 7348) at each end instead of a
//! veth pair: the SFF's end in its own namespace, the VNF's end moved into
//! the VNF's namespace as its `eth0`, while the tunnel's UDP socket stays
//! in the namespace where the device was made (the host's, on the
//! underlay). Ethernet frames carrying NSH travel inside, as RFC 8300
//! allows ("Ethernet + NSH" within a transport encapsulation), so neither
//! the VNF (it still reads Ethernet + NSH on `eth0`) nor the SFF (its
//! AF_XDP port binds to the device as to a veth, XDP in generic mode)
//! changes.
//!
//! The fencing contract: each incarnation of a hop's link gets a VNI of
//! its own, never reused for the hop, and the SFF reads only the hop's
//! current port, so what an old incarnation still sends (a partitioned
//! host runs on) arrives on a port that is not current and is never
//! accepted (the fencing is in the data path, not in a lease). The lab
//! (`Lab::across_hosts`) gives each hop one VNI and a standby port its own;
//! allocating VNIs per incarnation in `nhamd` comes with placing VNFs on
//! other hosts (not built yet).

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;

use rtnetlink::{LinkUnspec, LinkVxlan};

use crate::{get_link, link, netlink, set_up, sys, with_netlink, Netns, NetnsError};
use crate::{VethEnd, MTU};

/// The IANA port of VXLAN (RFC 7348, section 5: "Destination Port: IANA
/// has assigned the value 4789 for the VXLAN UDP port").
pub const VXLAN_PORT: u16 = 4789;

/// What a tunnel adds to each frame on the underlay: outer Ethernet (14),
/// IPv4 (20), UDP (8) and VXLAN (8) headers.
pub const TUNNEL_OVERHEAD: u32 = 50;

/// The MTU an underlay link needs so that a tunnel carries frames of
/// [`MTU`] without fragments.
pub const UNDERLAY_MTU: u32 = MTU + TUNNEL_OVERHEAD;

/// One end of a tunnel: its VNI and the underlay addresses of both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunnel {
    /// The VXLAN Network Identifier (24 bits): one per incarnation of a
    /// hop's link.
    pub vni: u32,
    /// This end's underlay address.
    pub local: Ipv4Addr,
    /// The other end's.
    pub remote: Ipv4Addr,
}

impl Tunnel {
    /// The other end of the same tunnel.
    pub fn reversed(self) -> Self {
        Self {
            local: self.remote,
            remote: self.local,
            ..self
        }
    }

    /// `e`, naming the tunnel device it is about (a VNI already taken in
    /// a namespace shows as "File exists").
    fn error(self, name: &str, e: NetnsError) -> NetnsError {
        NetnsError::Netlink(format!(
            "tunnel device {name} (VNI {}, {} -> {}): {e}",
            self.vni, self.local, self.remote
        ))
    }

    fn device(
        self,
        name: &str,
        index: Option<u32>,
        into: Option<std::os::fd::RawFd>,
    ) -> rtnetlink::packet_route::link::LinkMessage {
        // Every frame goes to the one remote end (no learning, no
        // flooding elsewhere), checksummed on the underlay.
        let mut b = LinkVxlan::new(name, self.vni)
            .local(self.local)
            .remote(self.remote)
            .port(VXLAN_PORT)
            .learning(false)
            .udp_csum(true)
            .mtu(MTU);
        if let Some(i) = index {
            b = b.index(i);
        }
        if let Some(fd) = into {
            b = b.setns_by_fd(fd);
        }
        b.build()
    }
}

/// Makes tunnel device `name` for `tunnel` in the calling thread's
/// namespace, MTU [`MTU`], up.
pub fn tunnel_here(name: &str, tunnel: Tunnel) -> Result<VethEnd, NetnsError> {
    check_vni(tunnel.vni)?;
    let msg = tunnel.device(name, None, None);
    with_netlink(|h| async move { h.link().add(msg).execute().await.map_err(netlink) })
        .map_err(|e| tunnel.error(name, e))?;
    set_up(name)?;
    link(name)
}

/// Makes a tunnel device for `tunnel` in namespace `from` (`None`: the
/// calling thread's), where its UDP socket stays, on the underlay, and
/// moves it into `into` as `name` (a VNF's `eth0`), up; with interface
/// index `index` if given (free in both namespaces: CRIU restores a packet
/// socket bound by index).
pub fn tunnel_into(
    tunnel: Tunnel,
    from: Option<&Netns>,
    into: &Netns,
    name: &str,
    index: Option<u32>,
) -> Result<VethEnd, NetnsError> {
    check_vni(tunnel.vni)?;
    if name.len() > 15 {
        return Err(NetnsError::NameTooLong(name.to_string()));
    }
    // Made straight into `into` (IFLA_NET_NS_FD) from `from`, whose
    // namespace the VXLAN socket keeps (the kernel's `src_net`): the index
    // need only be free in `into`. Under a temporary name, renamed there.
    let tmp = format!("nht{}", tunnel.vni);
    let path = into.path();
    let make = {
        let tmp = tmp.clone();
        move || {
            let target = File::open(&path).map_err(sys(format!("opening {}", path.display())))?;
            let msg = tunnel.device(&tmp, index, Some(target.as_raw_fd()));
            with_netlink(|h| async move { h.link().add(msg).execute().await.map_err(netlink) })
        }
    };
    crate::run_in_or_here(from, make).map_err(|e| tunnel.error(&tmp, e))?;
    crate::adopt_moved(into, &tmp, name).map_err(|e| tunnel.error(name, e))
}

fn check_vni(vni: u32) -> Result<(), NetnsError> {
    if vni == 0 || vni >= 1 << 24 {
        return Err(NetnsError::Netlink(format!(
            "VNI {vni} is not in 1..2^24 (RFC 7348: a 24-bit VXLAN Network Identifier)"
        )));
    }
    Ok(())
}

/// Sets the MTU of interface `name` of the calling thread's namespace (an
/// underlay link: [`UNDERLAY_MTU`]).
pub fn set_mtu(name: &str, mtu: u32) -> Result<(), NetnsError> {
    let index = get_link(name)?.header.index;
    crate::set_link(LinkUnspec::new_with_index(index).mtu(mtu).build())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{unique_name, veth_pair, Netns};

    /// Two hosts on an underlay veth; a tunnel between them whose far end
    /// is moved into a third namespace (a VNF's) as `eth0`: a frame sent
    /// on one end arrives on the other, and the far end's UDP socket stays
    /// on its host (the VNF's namespace has no underlay address).
    #[test]
    fn a_tunnel_end_moved_into_a_vnf_namespace_carries_frames() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "this test needs root (CI runs as root)"
        );
        let a = Netns::create(&unique_name("nhta")).unwrap();
        let b = Netns::create(&unique_name("nhtb")).unwrap();
        let vnf = Netns::create(&unique_name("nhtv")).unwrap();
        veth_pair(&a, "ul0", &b, "ul0").unwrap();
        let (la, lb) = (Ipv4Addr::new(10, 78, 0, 1), Ipv4Addr::new(10, 78, 0, 2));
        for (ns, addr) in [(&a, la), (&b, lb)] {
            ns.run(move || {
                set_mtu("ul0", UNDERLAY_MTU)?;
                crate::add_address("ul0", addr.into(), 24)
            })
            .unwrap()
            .unwrap();
        }
        let t = Tunnel {
            vni: 4242,
            local: la,
            remote: lb,
        };
        let near = a.run(move || tunnel_here("v0", t)).unwrap().unwrap();
        let far = tunnel_into(t.reversed(), Some(&b), &vnf, "eth0", Some(77)).unwrap();
        assert_eq!((far.name.as_str(), far.ifindex), ("eth0", 77));
        assert_ne!(near.mac, [0; 6]);
        assert!(
            b.run(|| link("eth0")).unwrap().is_err(),
            "moved away from b"
        );
        // A datagram to an address behind a's end: its ARP request (a
        // broadcast frame) arrives at the VNF's eth0 through the tunnel.
        let before = vnf.run(|| crate::link_counters("eth0")).unwrap().unwrap();
        a.run(|| -> std::io::Result<()> {
            crate::add_address("v0", Ipv4Addr::new(192, 168, 77, 1).into(), 24)
                .map_err(std::io::Error::other)?;
            let s = std::net::UdpSocket::bind("192.168.77.1:0")?;
            s.send_to(b"x", "192.168.77.2:9")?;
            Ok(())
        })
        .unwrap()
        .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let now = vnf.run(|| crate::link_counters("eth0")).unwrap().unwrap();
            if now.rx_packets > before.rx_packets {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no frame arrived");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let bad = Tunnel { vni: 1 << 24, ..t };
        assert!(
            a.run(move || tunnel_here("v1", bad)).unwrap().is_err(),
            "a VNI out of range is refused"
        );
    }
}
