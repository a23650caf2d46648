//! The Classifier: maps an incoming Ethernet frame to a Service Function Path
//! and encapsulates it in NSH.
//!
//! RFC 7665 section 4.1: "An initial classification occurs at the ingress to
//! the SFC-enabled domain. The granularity of the initial classification is
//! determined by the capabilities of the classifier and the SFC policy
//! requirements." NHAM classifies on the 5-tuple: rules are checked in order,
//! the first match names the SPI; no match is a classifier miss (counted and
//! passed back to the caller, never an error).
//!
//! Invariants: [`Classifier::classify`] never panics on any bytes; a frame
//! that is not Ethernet/IP is [`ClassifyError::Malformed`], not a miss.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use ipnet::IpNet;
use thiserror::Error;

use crate::nsh::{self, NextProtocol, NhamMetadata};

/// Errors of classification and encapsulation.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum ClassifyError {
    /// The frame could not be parsed as Ethernet + IPv4/IPv6.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A rule names an SPI wider than 24 bits.
    #[error("SPI {0} does not fit in 24 bits")]
    SpiRange(u32),
    /// The output buffer cannot hold the NSH header and the frame.
    #[error("encapsulation needs {need} bytes, buffer has {have}")]
    BufferTooSmall {
        /// Bytes needed.
        need: usize,
        /// Bytes available.
        have: usize,
    },
}

/// IP protocol numbers the classifier names.
pub mod proto {
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
}

/// The 5-tuple of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Source port (0 when the protocol has none).
    pub src_port: u16,
    /// Destination port (0 when the protocol has none).
    pub dst_port: u16,
}

impl FlowKey {
    /// Extracts the 5-tuple from an Ethernet frame (VLAN tags allowed).
    ///
    /// The common case (untagged or single-tagged IPv4, unfragmented, a
    /// complete UDP or TCP header) takes a fast path that reads fixed
    /// offsets; everything else goes through etherparse. The fuzz target
    /// `ethernet_frame` asserts that both agree wherever the fast path
    /// answers.
    #[inline]
    pub fn from_ethernet(frame: &[u8]) -> Result<Self, ClassifyError> {
        match Self::from_ethernet_fast(frame) {
            Some(key) => Ok(key),
            None => Self::from_ethernet_general(frame),
        }
    }

    /// The fast path: `None` means "not the common case", not "malformed".
    #[inline]
    pub fn from_ethernet_fast(frame: &[u8]) -> Option<Self> {
        let be16 = |at: usize| {
            frame
                .get(at..at + 2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
        };
        let mut ip = 14;
        let mut ethertype = be16(12)?;
        if ethertype == 0x8100 || ethertype == 0x88A8 {
            ethertype = be16(16)?;
            ip = 18;
        }
        if ethertype != 0x0800 {
            return None;
        }
        let h = frame.get(ip..ip + 20)?;
        let ihl = usize::from(h[0] & 0x0F) * 4;
        let total = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let fragmented = u16::from_be_bytes([h[6], h[7]]) & 0x3FFF != 0;
        if h[0] >> 4 != 4 || ihl < 20 || total < ihl || ip + total > frame.len() || fragmented {
            return None;
        }
        let proto = h[9];
        let l4 = ip + ihl;
        let l4_len = total - ihl;
        let ports = |min: usize| {
            (l4_len >= min).then(|| (be16(l4).unwrap_or(0), be16(l4 + 2).unwrap_or(0)))
        };
        let (src_port, dst_port) = match proto {
            proto::UDP => {
                let udp_len = usize::from(be16(l4 + 4)?);
                if udp_len < 8 || udp_len > l4_len {
                    return None;
                }
                ports(8)?
            }
            proto::TCP => {
                let offset = usize::from(frame.get(l4 + 12)? >> 4) * 4;
                if offset < 20 {
                    return None;
                }
                ports(offset)?
            }
            _ => return None,
        };
        Some(Self {
            src: IpAddr::V4([h[12], h[13], h[14], h[15]].into()),
            dst: IpAddr::V4([h[16], h[17], h[18], h[19]].into()),
            proto,
            src_port,
            dst_port,
        })
    }

    /// The general path, through etherparse.
    #[inline(never)]
    pub fn from_ethernet_general(frame: &[u8]) -> Result<Self, ClassifyError> {
        let sliced = SlicedPacket::from_ethernet(frame)
            .map_err(|e| ClassifyError::Malformed(e.to_string()))?;
        let (src, dst, proto) = match &sliced.net {
            Some(NetSlice::Ipv4(ip)) => {
                let h = ip.header();
                (
                    IpAddr::V4(h.source_addr()),
                    IpAddr::V4(h.destination_addr()),
                    h.protocol().0,
                )
            }
            Some(NetSlice::Ipv6(ip)) => {
                let h = ip.header();
                (
                    IpAddr::V6(h.source_addr()),
                    IpAddr::V6(h.destination_addr()),
                    ip.payload().ip_number.0,
                )
            }
            _ => return Err(ClassifyError::Malformed("not an IP packet".into())),
        };
        let (src_port, dst_port) = match &sliced.transport {
            Some(TransportSlice::Udp(u)) => (u.source_port(), u.destination_port()),
            Some(TransportSlice::Tcp(t)) => (t.source_port(), t.destination_port()),
            _ => (0, 0),
        };
        Ok(Self {
            src,
            dst,
            proto,
            src_port,
            dst_port,
        })
    }
}

/// One classification rule; `None` fields match anything.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Rule {
    /// Source prefix.
    pub src: Option<IpNet>,
    /// Destination prefix.
    pub dst: Option<IpNet>,
    /// IP protocol.
    pub proto: Option<u8>,
    /// Source port range.
    pub src_ports: Option<RangeInclusive<u16>>,
    /// Destination port range.
    pub dst_ports: Option<RangeInclusive<u16>>,
    /// The SFP this traffic enters.
    pub spi: u32,
}

impl Rule {
    /// A rule that sends every IP packet to `spi`.
    pub fn any(spi: u32) -> Self {
        Self {
            src: None,
            dst: None,
            proto: None,
            src_ports: None,
            dst_ports: None,
            spi,
        }
    }
}

/// A prefix as integers, so that matching is a mask and a compare.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prefix {
    Any,
    V4 { net: u32, mask: u32 },
    V6 { net: u128, mask: u128 },
}

impl Prefix {
    fn new(net: Option<IpNet>) -> Self {
        match net {
            None => Self::Any,
            Some(IpNet::V4(n)) => Self::V4 {
                net: u32::from(n.network()),
                mask: u32::from(n.netmask()),
            },
            Some(IpNet::V6(n)) => Self::V6 {
                net: u128::from(n.network()),
                mask: u128::from(n.netmask()),
            },
        }
    }

    fn contains(self, addr: IpAddr) -> bool {
        match (self, addr) {
            (Self::Any, _) => true,
            (Self::V4 { net, mask }, IpAddr::V4(a)) => u32::from(a) & mask == net,
            (Self::V6 { net, mask }, IpAddr::V6(a)) => u128::from(a) & mask == net,
            _ => false,
        }
    }
}

/// A rule compiled for matching: prefixes as integers, absent fields as
/// ranges that match everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CompiledRule {
    src: Prefix,
    dst: Prefix,
    proto: Option<u8>,
    src_ports: (u16, u16),
    dst_ports: (u16, u16),
    spi: u32,
}

impl CompiledRule {
    fn new(r: &Rule) -> Self {
        let range = |p: &Option<RangeInclusive<u16>>| {
            p.as_ref().map_or((0, u16::MAX), |r| (*r.start(), *r.end()))
        };
        Self {
            src: Prefix::new(r.src),
            dst: Prefix::new(r.dst),
            proto: r.proto,
            src_ports: range(&r.src_ports),
            dst_ports: range(&r.dst_ports),
            spi: r.spi,
        }
    }

    fn matches(&self, k: &FlowKey) -> bool {
        self.proto.is_none_or(|p| p == k.proto)
            && (self.dst_ports.0..=self.dst_ports.1).contains(&k.dst_port)
            && (self.src_ports.0..=self.src_ports.1).contains(&k.src_port)
            && self.src.contains(k.src)
            && self.dst.contains(k.dst)
    }
}

/// Counters of the classifier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClassifierStats {
    /// Frames that matched a rule.
    pub matched: u64,
    /// Well-formed frames that matched no rule.
    pub missed: u64,
    /// Frames that could not be parsed.
    pub malformed: u64,
}

/// An ordered list of rules; the first match wins.
#[derive(Debug, Clone, Default)]
pub struct Classifier {
    rules: Vec<CompiledRule>,
    stats: ClassifierStats,
}

impl Classifier {
    /// Builds a classifier, refusing SPIs wider than 24 bits.
    pub fn new(rules: Vec<Rule>) -> Result<Self, ClassifyError> {
        if let Some(r) = rules.iter().find(|r| r.spi > 0x00FF_FFFF) {
            return Err(ClassifyError::SpiRange(r.spi));
        }
        Ok(Self {
            rules: rules.iter().map(CompiledRule::new).collect(),
            stats: ClassifierStats::default(),
        })
    }

    /// The SPI for this frame, `Ok(None)` on a miss.
    #[inline]
    pub fn classify(&mut self, frame: &[u8]) -> Result<Option<u32>, ClassifyError> {
        let key = match FlowKey::from_ethernet(frame) {
            Ok(k) => k,
            Err(e) => {
                self.stats.malformed += 1;
                return Err(e);
            }
        };
        match self.rules.iter().find(|r| r.matches(&key)) {
            Some(r) => {
                self.stats.matched += 1;
                Ok(Some(r.spi))
            }
            None => {
                self.stats.missed += 1;
                Ok(None)
            }
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> ClassifierStats {
        self.stats
    }
}

/// Encapsulates `inner` (a whole Ethernet frame) as
/// `outer Ethernet | NSH (NHAM header) | inner` into `out`, returning the
/// length written. "The initial classifier for a given SFP SHOULD set the SI
/// to 255" (RFC 8300 section 2.3); the TTL is the RFC default of 63.
pub fn encapsulate(
    out: &mut [u8],
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    spi: u32,
    meta: NhamMetadata,
    inner: &[u8],
) -> Result<usize, ClassifyError> {
    const ETH: usize = 14;
    let need = ETH + nsh::NHAM_HEADER_LEN + inner.len();
    if out.len() < need {
        return Err(ClassifyError::BufferTooSmall {
            need,
            have: out.len(),
        });
    }
    out[0..6].copy_from_slice(&dst_mac);
    out[6..12].copy_from_slice(&src_mac);
    out[12..14].copy_from_slice(&nsh::ETHERTYPE_NSH.to_be_bytes());
    nsh::emit_nham_header(
        &mut out[ETH..],
        spi,
        nsh::DEFAULT_INITIAL_SI,
        nsh::DEFAULT_TTL,
        NextProtocol::Ethernet,
        meta,
    )
    .map_err(|_| ClassifyError::SpiRange(spi))?;
    out[ETH + nsh::NHAM_HEADER_LEN..need].copy_from_slice(inner);
    Ok(need)
}

/// Removes the outer Ethernet and NSH headers of an encapsulated frame and
/// returns the inner frame. Used at the egress of the SFC domain.
#[inline]
pub fn decapsulate(frame: &[u8]) -> Result<(nsh::NshPacket<&[u8]>, &[u8]), nsh::Error> {
    let ethertype = frame.get(12..14).ok_or(nsh::Error::Truncated {
        need: 14,
        have: frame.len(),
    })?;
    let ethertype = u16::from_be_bytes([ethertype[0], ethertype[1]]);
    if ethertype != nsh::ETHERTYPE_NSH {
        return Err(nsh::Error::NotNsh(ethertype));
    }
    let packet = nsh::NshPacket::new_checked(&frame[14..])?;
    let inner = &frame[14 + packet.header_len()..];
    Ok((packet, inner))
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp_frame(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
        let builder = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, dst, 64)
            .udp(sport, dport);
        let payload = [0xAB; 18];
        let mut out = Vec::with_capacity(builder.size(payload.len()));
        builder.write(&mut out, &payload).unwrap();
        out
    }

    #[test]
    fn first_matching_rule_wins() {
        let mut c = Classifier::new(vec![
            Rule {
                dst_ports: Some(53..=53),
                proto: Some(proto::UDP),
                ..Rule::any(10)
            },
            Rule {
                src: Some("10.0.0.0/8".parse().unwrap()),
                ..Rule::any(20)
            },
        ])
        .unwrap();
        assert_eq!(
            c.classify(&udp_frame([1, 2, 3, 4], [5, 6, 7, 8], 1000, 53)),
            Ok(Some(10))
        );
        assert_eq!(
            c.classify(&udp_frame([10, 2, 3, 4], [5, 6, 7, 8], 1000, 80)),
            Ok(Some(20))
        );
        assert_eq!(
            c.classify(&udp_frame([11, 2, 3, 4], [5, 6, 7, 8], 1000, 80)),
            Ok(None)
        );
        assert!(c.classify(&[0u8; 10]).is_err());
        assert_eq!(
            c.stats(),
            ClassifierStats {
                matched: 2,
                missed: 1,
                malformed: 1
            }
        );
    }

    proptest::proptest! {
        /// Fast and general 5-tuple extraction agree on valid frames and on
        /// frames with a few bytes corrupted anywhere.
        #[test]
        fn fast_path_agrees_with_etherparse(
            src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, tcp: bool, vlan: bool,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            flips in proptest::collection::vec((0usize..80, proptest::prelude::any::<u8>()), 0..3),
            cut in 0usize..100,
        ) {
            let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            let ip = if vlan {
                eth.single_vlan(7.try_into().unwrap()).ipv4(src, dst, 64)
            } else {
                eth.ipv4(src, dst, 64)
            };
            let mut frame = Vec::new();
            if tcp {
                let b = ip.tcp(sport, dport, 1, 1000);
                b.write(&mut frame, &payload).unwrap();
            } else {
                let b = ip.udp(sport, dport);
                b.write(&mut frame, &payload).unwrap();
            }
            let clean = FlowKey::from_ethernet_fast(&frame);
            proptest::prop_assert!(clean.is_some());
            proptest::prop_assert_eq!(FlowKey::from_ethernet_general(&frame), Ok(clean.unwrap()));
            for (at, v) in flips {
                if let Some(b) = frame.get_mut(at) {
                    *b = v;
                }
            }
            frame.truncate(frame.len().saturating_sub(cut % 8));
            if let Some(fast) = FlowKey::from_ethernet_fast(&frame) {
                proptest::prop_assert_eq!(FlowKey::from_ethernet_general(&frame), Ok(fast));
            }
        }
    }

    #[test]
    fn spi_range_checked() {
        assert_eq!(
            Classifier::new(vec![Rule::any(1 << 24)]).unwrap_err(),
            ClassifyError::SpiRange(1 << 24)
        );
    }

    #[test]
    fn encap_decap_round_trip() {
        let inner = udp_frame([1, 1, 1, 1], [2, 2, 2, 2], 1, 2);
        let mut buf = [0u8; 256];
        let meta = NhamMetadata { seq: 42, epoch: 3 };
        let n = encapsulate(&mut buf, [0xff; 6], [2; 6], 99, meta, &inner).unwrap();
        let (nsh, got) = decapsulate(&buf[..n]).unwrap();
        assert_eq!(got, &inner[..]);
        assert_eq!(nsh.spi(), 99);
        assert_eq!(nsh.si(), 255);
        assert_eq!(nsh.nham_metadata(), Some(meta));
    }
}
