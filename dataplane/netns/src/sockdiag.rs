//! What the kernel says about the packet sockets of a network namespace,
//! through `NETLINK_SOCK_DIAG` (`packet_diag`, as `ss -0 -m` reads them):
//! each socket's protocol, interface, receive buffer (`SK_MEMINFO_RCVBUF`),
//! bytes queued (`SK_MEMINFO_RMEM_ALLOC`), frames the kernel dropped because
//! that buffer was full (`SK_MEMINFO_DROPS`) and, for `PACKET_RX_RING`
//! sockets, the ring's shape.
//!
//! A VNF is a program someone else wrote: NHAM learns from here how much a
//! VNF's socket can hold (so the SFF never sends it more) and whether it
//! lost input anyway (so that loss is repaired by recovery, never taken for
//! consumed input).
//!
//! A netlink socket answers for the namespace it was created in, so
//! [`SockDiag::open`] creates it from a thread inside the namespace; the
//! socket can then be asked from any thread, as often as needed.
//!
//! The reply is parsed as a checked view: [`parse_dump`] never panics on
//! any input (fuzzed in the tests) and skips attributes it does not know.

use std::os::fd::OwnedFd;
use std::path::Path;

use nix::sys::socket::{
    recv, send, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType,
};

use crate::NetnsError;

/// `SOCK_DIAG_BY_FAMILY` (linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `NLM_F_REQUEST | NLM_F_DUMP`.
const DUMP_REQUEST: u16 = 0x1 | 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const AF_PACKET: u8 = 17;
/// `PACKET_SHOW_INFO | PACKET_SHOW_RING_CFG | PACKET_SHOW_MEMINFO`
/// (linux/packet_diag.h).
const SHOW: u32 = 0x1 | 0x4 | 0x10;
const PACKET_DIAG_INFO: u16 = 0;
const PACKET_DIAG_RX_RING: u16 = 2;
const PACKET_DIAG_MEMINFO: u16 = 6;
/// Indices into the `SK_MEMINFO_*` array (linux/sock_diag.h).
const SK_MEMINFO_RMEM_ALLOC: usize = 0;
const SK_MEMINFO_RCVBUF: usize = 1;
const SK_MEMINFO_DROPS: usize = 8;
/// `ETH_P_ALL`, in host order as `pdiag_num` carries it.
pub const ETH_P_ALL: u16 = 0x0003;

/// An `AF_PACKET` receive ring (`PACKET_RX_RING`): frames land in it, not
/// in the socket's receive queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ring {
    /// Bytes per block.
    pub block_size: u32,
    /// Blocks.
    pub block_nr: u32,
    /// Bytes per frame slot (TPACKET_V1/V2; V3 packs frames in blocks).
    pub frame_size: u32,
    /// Frame slots.
    pub frame_nr: u32,
}

impl Ring {
    /// Bytes of the whole ring.
    pub fn bytes(&self) -> u64 {
        u64::from(self.block_size) * u64::from(self.block_nr)
    }
}

/// One packet socket, as the kernel describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PacketSocket {
    /// Inode (as in `/proc/<pid>/fd` and `ss`).
    pub inode: u32,
    /// Protocol it is bound to, host order (0: receives nothing;
    /// [`ETH_P_ALL`]: every frame, the host's own outgoing ones included).
    pub protocol: u16,
    /// Interface it is bound to (0: every interface).
    pub ifindex: u32,
    /// TPACKET version (0: V1 or a plain socket).
    pub version: u32,
    /// Receive buffer, bytes (`sk_rcvbuf`: twice what `SO_RCVBUF` asked).
    pub rcvbuf: u32,
    /// Bytes queued now (the kernel's charge: each frame's `truesize`).
    pub rmem: u32,
    /// Frames dropped because the receive buffer was full.
    pub drops: u32,
    /// The receive ring, if it has one.
    pub rx_ring: Option<Ring>,
}

impl PacketSocket {
    /// Whether frames reach it at all: bound to a protocol (a socket
    /// opened with protocol 0 only sends).
    pub fn receives(&self) -> bool {
        self.protocol != 0
    }

    /// Whether it may receive the namespace's outgoing frames (bound to
    /// `ETH_P_ALL`): those sent through *another* socket are charged to it
    /// until read. Never its own: "Never send packets back to the socket
    /// they originated from" (`dev_queue_xmit_nit`, net/core/dev.c, which
    /// skips the hook whose `af_packet_priv` is the frame's `skb->sk`; a
    /// packet socket's frames are allocated with `sock_alloc_send_pskb` on
    /// it). See [`VnfSockets::of_namespace`].
    pub fn sees_outgoing(&self) -> bool {
        self.protocol == ETH_P_ALL
    }
}

/// Errors of a reply that is not what the kernel sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A header or message runs past the end of the reply.
    #[error("sock_diag reply truncated at byte {0}")]
    Truncated(usize),
    /// The kernel answered with an error.
    #[error("sock_diag request refused: errno {0}")]
    Errno(i32),
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn align4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

/// Parses one datagram of a `packet_diag` dump: the sockets it describes,
/// and whether the dump is complete (`NLMSG_DONE` seen).
pub fn parse_dump(buf: &[u8]) -> Result<(Vec<PacketSocket>, bool), ParseError> {
    let mut sockets = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32_at(buf, at).ok_or(ParseError::Truncated(at))? as usize;
        let kind = u16_at(buf, at + 4).ok_or(ParseError::Truncated(at))?;
        if len < 16 || at.saturating_add(len) > buf.len() {
            return Err(ParseError::Truncated(at));
        }
        let msg = &buf[at + 16..at + len];
        match kind {
            NLMSG_DONE => return Ok((sockets, true)),
            NLMSG_ERROR => {
                let errno = u32_at(msg, 0).ok_or(ParseError::Truncated(at + 16))? as i32;
                if errno != 0 {
                    return Err(ParseError::Errno(-errno));
                }
            }
            SOCK_DIAG_BY_FAMILY => sockets.push(parse_socket(msg, at + 16)?),
            _ => {}
        }
        at += align4(len);
    }
    Ok((sockets, false))
}

/// `struct packet_diag_msg` (16 bytes) and its attributes.
fn parse_socket(msg: &[u8], offset: usize) -> Result<PacketSocket, ParseError> {
    let truncated = |at: usize| ParseError::Truncated(offset + at);
    let mut s = PacketSocket {
        protocol: u16_at(msg, 2).ok_or(truncated(2))?,
        inode: u32_at(msg, 4).ok_or(truncated(4))?,
        ..PacketSocket::default()
    };
    let mut at = 16;
    while at + 4 <= msg.len() {
        let len = usize::from(u16_at(msg, at).ok_or(truncated(at))?);
        let kind = u16_at(msg, at + 2).ok_or(truncated(at))? & 0x3fff;
        if len < 4 || at + len > msg.len() {
            return Err(truncated(at));
        }
        let payload = &msg[at + 4..at + len];
        let word = |i: usize| u32_at(payload, 4 * i);
        match kind {
            PACKET_DIAG_INFO => {
                s.ifindex = word(0).unwrap_or(0);
                s.version = word(1).unwrap_or(0);
            }
            PACKET_DIAG_MEMINFO => {
                s.rmem = word(SK_MEMINFO_RMEM_ALLOC).unwrap_or(0);
                s.rcvbuf = word(SK_MEMINFO_RCVBUF).unwrap_or(0);
                s.drops = word(SK_MEMINFO_DROPS).unwrap_or(0);
            }
            PACKET_DIAG_RX_RING => {
                s.rx_ring = Some(Ring {
                    block_size: word(0).unwrap_or(0),
                    block_nr: word(1).unwrap_or(0),
                    frame_size: word(2).unwrap_or(0),
                    frame_nr: word(3).unwrap_or(0),
                });
            }
            _ => {}
        }
        at += align4(len);
    }
    Ok(s)
}

/// The dump request: `nlmsghdr` + `struct packet_diag_req`.
fn request(seq: u32) -> [u8; 36] {
    let mut r = [0u8; 36];
    r[0..4].copy_from_slice(&36u32.to_ne_bytes());
    r[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r[6..8].copy_from_slice(&DUMP_REQUEST.to_ne_bytes());
    r[8..12].copy_from_slice(&seq.to_ne_bytes());
    r[16] = AF_PACKET;
    // sdiag_protocol 0, pad, pdiag_ino 0 (all), then pdiag_show.
    r[24..28].copy_from_slice(&SHOW.to_ne_bytes());
    // pdiag_cookie: none (0xffffffff twice would mean "no cookie" too; zero
    // with ino 0 asks for every socket).
    r
}

/// A `NETLINK_SOCK_DIAG` socket of one network namespace.
#[derive(Debug)]
pub struct SockDiag {
    fd: OwnedFd,
    seq: u32,
}

impl SockDiag {
    /// Opens one for the namespace of `netns` (a namespace file such as
    /// `/run/netns/<name>` or `/proc/<pid>/ns/net`).
    pub fn open(netns: &Path) -> Result<Self, NetnsError> {
        crate::run_in(netns, Self::open_here)?
    }

    /// Opens one for the calling thread's namespace.
    pub fn open_here() -> Result<Self, NetnsError> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(|e| NetnsError::Sys {
            what: "opening a NETLINK_SOCK_DIAG socket".into(),
            source: e.into(),
        })?;
        Ok(Self { fd, seq: 0 })
    }

    /// Every packet socket of the namespace, now.
    pub fn packet_sockets(&mut self) -> Result<Vec<PacketSocket>, NetnsError> {
        use std::os::fd::AsRawFd;
        let sys = |what: &str| {
            let what = what.to_string();
            move |e: nix::Error| NetnsError::Sys {
                what,
                source: e.into(),
            }
        };
        self.seq = self.seq.wrapping_add(1);
        send(self.fd.as_raw_fd(), &request(self.seq), MsgFlags::empty())
            .map_err(sys("sending a packet_diag request"))?;
        let mut sockets = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(sys("reading a packet_diag reply"))?;
            let (more, done) = parse_dump(&buf[..n])
                .map_err(|e| NetnsError::Netlink(format!("packet_diag: {e}")))?;
            sockets.extend(more);
            if done || n == 0 {
                return Ok(sockets);
            }
        }
    }
}

/// The processes holding socket `inode` open, with their command names
/// (a scan of `/proc/*/fd`: for diagnostics, not for a hot path).
pub fn socket_owners(inode: u32) -> Vec<(u32, String)> {
    let want = format!("socket:[{inode}]");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut owners = Vec::new();
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()))
        {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            let state = crate::process_state(pid).map_or('?', |(s, _)| s);
            owners.push((pid, format!("{} ({state})", comm.trim())));
        }
    }
    owners
}

/// The inodes of the sockets process `pid` and its descendants hold open
/// (`/proc/<pid>/fd`, and `/proc/<pid>/task/*/children` down the tree).
/// Sockets of the namespace held by no process of the VNF (one a CRIU
/// restore is making for a replica, say) are not the VNF's.
pub fn socket_inodes_of(pid: u32) -> std::collections::BTreeSet<u32> {
    let mut inodes = std::collections::BTreeSet::new();
    for p in crate::process_tree(pid) {
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{p}/fd")) {
            for fd in fds.flatten() {
                let Ok(link) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let inode = link
                    .to_str()
                    .and_then(|l| l.strip_prefix("socket:["))
                    .and_then(|l| l.strip_suffix(']'))
                    .and_then(|n| n.parse().ok());
                if let Some(i) = inode {
                    inodes.insert(i);
                }
            }
        }
    }
    inodes
}

/// Sockets of families other than packet in process `pid`'s network
/// namespace (`/proc/<pid>/net/{tcp,tcp6,udp,udp6,udplite,udplite6,raw,raw6,icmp,icmp6}`,
/// their entries past the header): each may send through the VNF's link.
/// `None` if one that exists could not be read.
pub fn inet_sockets(pid: u32) -> Option<usize> {
    let mut n = 0;
    for table in [
        "tcp", "tcp6", "udp", "udp6", "udplite", "udplite6", "raw", "raw6", "icmp", "icmp6",
    ] {
        match std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            Ok(text) => {
                n += text
                    .lines()
                    .skip(1)
                    .filter(|l| !l.trim().is_empty())
                    .count()
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(_) => return None,
        }
    }
    Some(n)
}

/// What a VNF's receiving packet sockets add up to, for flow control and
/// loss detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VnfSockets {
    /// Receiving sockets seen.
    pub sockets: usize,
    /// The smallest receive capacity among them, bytes: a ring's size for a
    /// ring socket, else its receive buffer. Every receiving socket gets a
    /// copy of each frame, so the smallest decides.
    pub capacity: u64,
    /// Whether that smallest one is a ring (frames cost their aligned
    /// length in it, not a kernel buffer's truesize).
    pub ring: bool,
    /// Frames its rings hold at most, if any has one: a TPACKET_V1/V2
    /// ring's frame slots; half a TPACKET_V3 ring's blocks (a block may be
    /// handed to the VNF, by timeout, holding a single frame), a quarter
    /// when bound to `ETH_P_ALL` (its outputs' copies take blocks too).
    pub max_frames: Option<usize>,
    /// Whether any of them also receives the VNF's own outgoing frames:
    /// bound to `ETH_P_ALL` while some *other* socket may send (see
    /// [`VnfSockets::of_namespace`]).
    pub sees_outgoing: bool,
    /// Frames dropped at a full buffer, summed over them.
    pub drops: u64,
    /// Bytes queued, summed over them.
    pub rmem: u64,
}

impl VnfSockets {
    /// Sums up the receiving sockets among `sockets` that process `pid`
    /// (or a descendant) holds; all of them if none is found held (the
    /// process's fds could not be read).
    /// Whether its receiving sockets see its outputs is decided as
    /// [`of_namespace`](Self::of_namespace) says, with the namespace's
    /// other sockets read from `/proc/<pid>/net` (all of them senders
    /// when unreadable).
    pub fn of_process(sockets: &[PacketSocket], pid: u32) -> Self {
        let held = socket_inodes_of(pid);
        let mine: Vec<PacketSocket> = sockets
            .iter()
            .filter(|s| held.contains(&s.inode))
            .copied()
            .collect();
        let others_send = mine.is_empty() || inet_sockets(pid).is_none_or(|n| n > 0);
        Self::of_namespace(
            if mine.is_empty() { sockets } else { &mine },
            sockets.len(),
            others_send,
        )
    }

    /// Sums up the receiving sockets among `sockets`, as if any other
    /// socket might send (the most a socket bound to `ETH_P_ALL` can be
    /// charged).
    pub fn of(sockets: &[PacketSocket]) -> Self {
        Self::of_namespace(sockets, usize::MAX, true)
    }

    /// Sums up the receiving sockets among `sockets` (the VNF's), in a
    /// namespace with `in_namespace` packet sockets in all and, if
    /// `inet_send`, sockets of other families (UDP, TCP, raw IP) that may
    /// send. A socket bound to `ETH_P_ALL` is charged the VNF's outputs
    /// only if they may leave through another socket: the namespace has
    /// more than one packet socket (a second one, whatever its protocol,
    /// may send; members of one fanout group, sockets with
    /// `PACKET_IGNORE_OUTGOING` and senders bypassing the qdisc are not
    /// told apart by `sock_diag`, so they count as senders: the safe
    /// side), or `inet_send`. A VNF reading and writing through its one
    /// packet socket, as the sample and conformance VNFs do, is never
    /// charged its own outputs, and gets the whole window.
    pub fn of_namespace(sockets: &[PacketSocket], in_namespace: usize, inet_send: bool) -> Self {
        let others_send = in_namespace > 1 || inet_send;
        let mut v = Self::default();
        for s in sockets.iter().filter(|s| s.receives()) {
            let (cap, ring) = match s.rx_ring {
                Some(r) if r.bytes() > 0 => {
                    // With ETH_P_ALL the VNF's output copies take blocks
                    // too: half as many inputs.
                    let frames = if s.version >= 2 {
                        (r.block_nr
                            / if s.sees_outgoing() && others_send {
                                4
                            } else {
                                2
                            })
                        .max(1)
                    } else {
                        r.frame_nr.max(1)
                    } as usize;
                    v.max_frames = Some(v.max_frames.map_or(frames, |m| m.min(frames)));
                    (r.bytes(), true)
                }
                _ => (u64::from(s.rcvbuf), false),
            };
            if v.sockets == 0 || cap < v.capacity {
                v.capacity = cap;
                v.ring = ring;
            }
            v.sockets += 1;
            v.sees_outgoing |= s.sees_outgoing() && others_send;
            v.drops += u64::from(s.drops);
            v.rmem += u64::from(s.rmem);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = 16 + body.len();
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0u8; 10]);
        m.extend_from_slice(body);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn attr(kind: u16, words: &[u32]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + 4 * words.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&kind.to_ne_bytes());
        for w in words {
            a.extend_from_slice(&w.to_ne_bytes());
        }
        a
    }

    #[test]
    fn a_socket_with_meminfo_parses() {
        let mut body = vec![AF_PACKET, 3];
        body.extend_from_slice(&ETH_P_ALL.to_ne_bytes());
        body.extend_from_slice(&4242u32.to_ne_bytes());
        body.extend_from_slice(&[0u8; 8]);
        body.extend(attr(PACKET_DIAG_INFO, &[7, 0, 0, 0, 0, 0]));
        body.extend(attr(
            PACKET_DIAG_MEMINFO,
            &[1280, 212_992, 0, 212_992, 0, 0, 0, 0, 308],
        ));
        let mut buf = message(SOCK_DIAG_BY_FAMILY, &body);
        buf.extend(message(NLMSG_DONE, &[0u8; 4]));
        let (sockets, done) = parse_dump(&buf).unwrap();
        assert!(done);
        assert_eq!(
            sockets,
            vec![PacketSocket {
                inode: 4242,
                protocol: ETH_P_ALL,
                ifindex: 7,
                version: 0,
                rcvbuf: 212_992,
                rmem: 1280,
                drops: 308,
                rx_ring: None,
            }]
        );
        let v = VnfSockets::of(&sockets);
        assert_eq!((v.capacity, v.drops, v.sees_outgoing), (212_992, 308, true));
        // Alone in its namespace, it sends through itself: no copies.
        let v = VnfSockets::of_namespace(&sockets, 1, false);
        assert_eq!((v.capacity, v.sees_outgoing), (212_992, false));
        // Another packet socket, or a UDP socket, may send: copies.
        assert!(VnfSockets::of_namespace(&sockets, 2, false).sees_outgoing);
        assert!(VnfSockets::of_namespace(&sockets, 1, true).sees_outgoing);
    }

    #[test]
    fn an_error_reply_is_an_error() {
        let buf = message(NLMSG_ERROR, &(-22i32).to_ne_bytes());
        assert_eq!(parse_dump(&buf), Err(ParseError::Errno(22)));
    }

    #[test]
    fn the_smallest_receiving_socket_decides_and_senders_do_not_count() {
        let s = |protocol, rcvbuf, drops| PacketSocket {
            protocol,
            rcvbuf,
            drops,
            ..PacketSocket::default()
        };
        let v = VnfSockets::of(&[s(0x894f, 131_072, 1), s(0, 1000, 9), s(3, 212_992, 2)]);
        assert_eq!((v.sockets, v.capacity, v.drops), (2, 131_072, 3));
    }

    #[test]
    fn parsing_never_panics() {
        bolero::check!().for_each(|bytes: &[u8]| {
            let _ = parse_dump(bytes);
        });
    }

    /// The real thing: a socket opened here shows up with its buffer.
    #[test]
    fn a_live_socket_is_seen() {
        let ns = crate::Netns::create(&crate::unique_name("diag")).unwrap();
        let (sockets, inode) = ns
            .run(|| {
                let s = socket(
                    AddressFamily::Packet,
                    SockType::Raw,
                    SockFlag::SOCK_CLOEXEC,
                    SockProtocol::EthAll,
                )
                .unwrap();
                let inode = {
                    use std::os::fd::AsRawFd;
                    std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
                        .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                        .unwrap()
                };
                let mut diag = SockDiag::open_here().unwrap();
                let sockets = diag.packet_sockets().unwrap();
                drop(s);
                (sockets, inode)
            })
            .unwrap();
        let s = sockets
            .iter()
            .find(|s| u64::from(s.inode) == inode)
            .expect("our socket listed");
        assert_eq!(s.protocol, ETH_P_ALL);
        assert!(s.rcvbuf > 0);
        assert_eq!(s.drops, 0);
    }
}
