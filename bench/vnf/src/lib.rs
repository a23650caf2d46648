//! NHAM's sample VNFs: stateful, deterministic, NSH-aware network functions
//! used to test and measure NHAM. Each is a FIFO function of its input
//! stream, so a failure-free reference run ([`reference`]) tells exactly
//! what a chain of them must output.
//!
//! - [`Kind::Monitor`]: per-flow packet and byte counters; forwards all.
//! - [`Kind::Firewall`]: a connection is opened by a packet from inside
//!   (source in 10.0.0.0/8); a packet from outside passes only if it answers
//!   an open connection, otherwise it is dropped (the drop is state).
//! - [`Kind::Nat`]: source NAT of inside traffic to 198.51.100.1, ports
//!   allocated deterministically (20000, 20001, … in order of first sight);
//!   replies to allocated ports are translated back.
//! - [`Kind::Emitter`]: every third packet of a flow is sent twice.
//! - [`Kind::NatRandom`]: the NAT with a random port per new flow; the one
//!   sample that is *not* deterministic.
//!
//! [`nsh_step`] is what the `nham-vnf` process does per frame: check the NSH
//! header, apply the function to the inner frame, and send each output with
//! the same NSH header and SI decremented ("The Service Index MUST be
//! decremented by a value of 1 by Service Functions", RFC 8300 section 2.3).
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use nham_dataplane::classifier::FlowKey;
use nham_dataplane::nsh::{self, NshPacket};
use serde::{Deserialize, Serialize};

/// The sample VNF behaviours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Per-flow counters.
    Monitor,
    /// Stateful firewall.
    Firewall,
    /// Source NAT with deterministic ports.
    Nat,
    /// Sends every third packet of a flow twice.
    Emitter,
    /// Source NAT like [`Kind::Nat`], but each new flow gets a random port:
    /// not deterministic, so a replay can differ from the original run (to
    /// show NHAM detecting that).
    #[serde(rename = "nat-random")]
    NatRandom,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "monitor" => Ok(Self::Monitor),
            "firewall" => Ok(Self::Firewall),
            "nat" => Ok(Self::Nat),
            "emitter" => Ok(Self::Emitter),
            "nat-random" => Ok(Self::NatRandom),
            other => Err(format!(
                "unknown VNF kind {other:?} (monitor, firewall, nat, emitter, nat-random)"
            )),
        }
    }
}

impl Kind {
    /// All kinds, in chain order used by the demos.
    pub const ALL: [Kind; 4] = [Kind::Monitor, Kind::Firewall, Kind::Nat, Kind::Emitter];

    /// Its name on the command line (`--kind`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Monitor => "monitor",
            Self::Firewall => "firewall",
            Self::Nat => "nat",
            Self::Emitter => "emitter",
            Self::NatRandom => "nat-random",
        }
    }

    /// Whether the same input always gives the same output and state.
    pub fn is_deterministic(self) -> bool {
        self != Self::NatRandom
    }
}

/// A random port in 1024..=65535 (collisions between flows are possible and
/// left alone: this sample exists to be non-deterministic, not to be a NAT
/// one would deploy).
fn random_port() -> u16 {
    use std::hash::{BuildHasher, Hasher};
    // The clock makes it differ between a run and its replay: a generator
    // kept in memory alone (RandomState's keys) would be restored by CRIU
    // with the rest of the process, and replay the same numbers.
    let mut h = std::hash::RandomState::new().build_hasher();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    h.write_u128(now);
    1024 + (h.finish() % (65536 - 1024)) as u16
}

/// Per-flow counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Packets.
    pub packets: u64,
    /// Bytes (inner frames).
    pub bytes: u64,
}

/// The whole state of a sample VNF, as it dumps it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Which VNF.
    pub kind: Option<Kind>,
    /// Per-flow counters (all kinds count).
    pub flows: BTreeMap<String, Counters>,
    /// Firewall: open connections (inside -> outside keys).
    pub connections: BTreeMap<String, u64>,
    /// Firewall: packets dropped.
    pub dropped: u64,
    /// NAT: inside (address:port) -> allocated public port.
    pub nat: BTreeMap<String, u16>,
    /// Frames that were not valid NSH or not IP inside.
    pub invalid: u64,
}

const NAT_PUBLIC: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const NAT_FIRST_PORT: u16 = 20000;

fn inside(a: IpAddr) -> bool {
    matches!(a, IpAddr::V4(v4) if v4.octets()[0] == 10)
}

fn key(k: &FlowKey) -> String {
    format!(
        "{}:{}>{}:{}/{}",
        k.src, k.src_port, k.dst, k.dst_port, k.proto
    )
}

fn reverse_key(k: &FlowKey) -> String {
    format!(
        "{}:{}>{}:{}/{}",
        k.dst, k.dst_port, k.src, k.src_port, k.proto
    )
}

/// Recomputes the IPv4 header checksum of the packet at `ip`.
fn fix_ipv4_checksum(frame: &mut [u8], ip: usize) {
    let ihl = usize::from(frame[ip] & 0x0F) * 4;
    frame[ip + 10] = 0;
    frame[ip + 11] = 0;
    let mut sum = 0u32;
    for c in frame[ip..ip + ihl].chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    frame[ip + 10..ip + 12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
}

/// Offset of the IPv4 header in an Ethernet frame (untagged or one VLAN tag).
fn ipv4_offset(frame: &[u8]) -> Option<usize> {
    match u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]) {
        0x0800 => Some(14),
        0x8100 | 0x88A8 if frame.get(16..18) == Some(&[0x08, 0x00]) => Some(18),
        _ => None,
    }
}

impl State {
    /// A fresh state for `kind`.
    pub fn new(kind: Kind) -> Self {
        Self {
            kind: Some(kind),
            ..Self::default()
        }
    }

    /// Applies one inner Ethernet frame; appends the outputs to `out`.
    pub fn process(&mut self, frame: &[u8], out: &mut Vec<Vec<u8>>) {
        let Some(kind) = self.kind else { return };
        let Ok(k) = FlowKey::from_ethernet(frame) else {
            self.invalid += 1;
            return;
        };
        let c = self.flows.entry(key(&k)).or_default();
        c.packets += 1;
        c.bytes += frame.len() as u64;
        let count = c.packets;
        match kind {
            Kind::Monitor => out.push(frame.to_vec()),
            Kind::Emitter => {
                out.push(frame.to_vec());
                if count % 3 == 0 {
                    out.push(frame.to_vec());
                }
            }
            Kind::Firewall => {
                if inside(k.src) {
                    *self.connections.entry(key(&k)).or_default() += 1;
                    out.push(frame.to_vec());
                } else if let Some(n) = self.connections.get_mut(&reverse_key(&k)) {
                    *n += 1;
                    out.push(frame.to_vec());
                } else {
                    self.dropped += 1;
                }
            }
            Kind::Nat | Kind::NatRandom => {
                let mut f = frame.to_vec();
                if let (Some(ip), IpAddr::V4(_)) = (ipv4_offset(&f), k.src) {
                    let l4 = ip + usize::from(f[ip] & 0x0F) * 4;
                    let ports = matches!(k.proto, 6 | 17) && f.len() >= l4 + 4;
                    if inside(k.src) && ports {
                        let inside_key = format!("{}:{}/{}", k.src, k.src_port, k.proto);
                        let port = match self.nat.get(&inside_key) {
                            Some(&p) => p,
                            None => {
                                let p = if kind == Kind::NatRandom {
                                    random_port()
                                } else {
                                    NAT_FIRST_PORT.wrapping_add(self.nat.len() as u16)
                                };
                                self.nat.insert(inside_key, p);
                                p
                            }
                        };
                        f[ip + 12..ip + 16].copy_from_slice(&NAT_PUBLIC.octets());
                        f[l4..l4 + 2].copy_from_slice(&port.to_be_bytes());
                        if k.proto == 17 && f.len() >= l4 + 8 {
                            f[l4 + 6..l4 + 8].fill(0); // UDP checksum: none
                        }
                        fix_ipv4_checksum(&mut f, ip);
                    } else if k.dst == IpAddr::V4(NAT_PUBLIC) && ports {
                        let found = self
                            .nat
                            .iter()
                            .find(|(_, &p)| p == k.dst_port)
                            .map(|(s, _)| s.clone());
                        if let Some(orig) = found {
                            if let Some((addr, rest)) = orig.split_once(':') {
                                let a: Ipv4Addr = addr.parse().unwrap_or(NAT_PUBLIC);
                                let p: u16 = rest
                                    .split('/')
                                    .next()
                                    .and_then(|p| p.parse().ok())
                                    .unwrap_or(0);
                                f[ip + 16..ip + 20].copy_from_slice(&a.octets());
                                f[l4 + 2..l4 + 4].copy_from_slice(&p.to_be_bytes());
                                if k.proto == 17 && f.len() >= l4 + 8 {
                                    f[l4 + 6..l4 + 8].fill(0);
                                }
                                fix_ipv4_checksum(&mut f, ip);
                            }
                        }
                    }
                }
                out.push(f);
            }
        }
    }
}

/// What the VNF process does with one frame from its interface: returns the
/// frames to send back. Frames that are not NSH with an Ethernet payload are
/// counted in `state.invalid` and produce nothing.
pub fn nsh_step(state: &mut State, frame: &[u8], scratch: &mut Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    const ETH: usize = 14;
    let valid =
        frame.len() > ETH && u16::from_be_bytes([frame[12], frame[13]]) == nsh::ETHERTYPE_NSH;
    let Some(packet) = valid
        .then(|| NshPacket::new_checked(&frame[ETH..]).ok())
        .flatten()
    else {
        state.invalid += 1;
        return Vec::new();
    };
    if packet.next_protocol() != nsh::NextProtocol::Ethernet {
        state.invalid += 1;
        return Vec::new();
    }
    let header_end = ETH + packet.header_len();
    let si = packet.si();
    scratch.clear();
    state.process(&frame[header_end..], scratch);
    scratch
        .drain(..)
        .map(|inner| {
            let mut out = Vec::with_capacity(header_end + inner.len());
            // Back to the sender: swap the MAC addresses.
            out.extend_from_slice(&frame[6..12]);
            out.extend_from_slice(&frame[0..6]);
            out.extend_from_slice(&frame[12..header_end]);
            NshPacket::new_unchecked(&mut out[ETH..header_end]).set_si(si.wrapping_sub(1));
            out.extend_from_slice(&inner);
            out
        })
        .collect()
}

/// A failure-free run of a chain of VNFs over `input` (inner frames):
/// the frames the sink must receive, in order, and each VNF's final state.
pub fn reference(kinds: &[Kind], input: &[Vec<u8>]) -> (Vec<Vec<u8>>, Vec<State>) {
    let mut stream = input.to_vec();
    let mut states = Vec::new();
    for &k in kinds {
        let mut s = State::new(k);
        let mut next = Vec::with_capacity(stream.len());
        for f in &stream {
            s.process(f, &mut next);
        }
        stream = next;
        states.push(s);
    }
    (stream, states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let b = PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .udp(sport, dport);
        let mut v = Vec::new();
        b.write(&mut v, &[1, 2, 3]).unwrap();
        v
    }

    #[test]
    fn firewall_needs_an_inside_opener() {
        let mut s = State::new(Kind::Firewall);
        let mut out = Vec::new();
        s.process(&udp([192, 0, 2, 1], [10, 0, 0, 1], 53, 4000), &mut out);
        assert_eq!((out.len(), s.dropped), (0, 1));
        s.process(&udp([10, 0, 0, 1], [192, 0, 2, 1], 4000, 53), &mut out);
        s.process(&udp([192, 0, 2, 1], [10, 0, 0, 1], 53, 4000), &mut out);
        assert_eq!((out.len(), s.dropped), (2, 1));
    }

    #[test]
    fn nat_allocates_in_order_and_translates_back() {
        let mut s = State::new(Kind::Nat);
        let mut out = Vec::new();
        s.process(&udp([10, 0, 0, 1], [192, 0, 2, 1], 4000, 53), &mut out);
        s.process(&udp([10, 0, 0, 2], [192, 0, 2, 1], 4000, 53), &mut out);
        let k = FlowKey::from_ethernet(&out[1]).unwrap();
        assert_eq!((k.src, k.src_port), (IpAddr::V4(NAT_PUBLIC), 20001));
        s.process(&udp([192, 0, 2, 1], [198, 51, 100, 1], 53, 20001), &mut out);
        let k = FlowKey::from_ethernet(&out[2]).unwrap();
        assert_eq!(
            (k.dst, k.dst_port),
            (IpAddr::V4([10, 0, 0, 2].into()), 4000)
        );
        // The rewritten header still has a valid checksum.
        let ip = etherparse::Ipv4HeaderSlice::from_slice(&out[2][14..]).unwrap();
        assert_eq!(ip.header_checksum(), ip.to_header().calc_header_checksum());
    }

    #[test]
    fn emitter_doubles_every_third() {
        let (out, _) = reference(
            &[Kind::Emitter],
            &vec![udp([10, 0, 0, 1], [1, 1, 1, 1], 1, 2); 6],
        );
        assert_eq!(out.len(), 8);
    }

    #[test]
    fn nsh_step_decrements_si_and_keeps_metadata() {
        let inner = udp([10, 0, 0, 1], [192, 0, 2, 1], 4000, 53);
        let mut frame = vec![0u8; 14 + 24 + inner.len()];
        let meta = nsh::NhamMetadata { seq: 9, epoch: 2 };
        let n =
            nham_dataplane::classifier::encapsulate(&mut frame, [1; 6], [2; 6], 5, meta, &inner)
                .unwrap();
        let mut s = State::new(Kind::Monitor);
        let out = nsh_step(&mut s, &frame[..n], &mut Vec::new());
        assert_eq!(out.len(), 1);
        let p = NshPacket::new_checked(&out[0][14..]).unwrap();
        assert_eq!((p.si(), p.spi(), p.nham_metadata()), (254, 5, Some(meta)));
        assert_eq!(&out[0][0..6], &[2; 6]);
        assert!(nsh_step(&mut s, &inner, &mut Vec::new()).is_empty());
        assert_eq!(s.invalid, 1);
    }
}
