//! What each VNF's sockets can hold and whether they lost input: read from
//! the kernel (`nham_netns::sockdiag`, as `ss -0 -m` does) on every probe,
//! told to the SFF when it changes (so it never has more in flight to a VNF
//! than its socket holds, replays included), and halved for a VNF whose
//! socket dropped input anyway (its frames cost more than the model says).
//!
//! Decisions are plain functions and a map ([`SocketWatch`]); the probe
//! task does the I/O.

use std::collections::BTreeMap;
use std::path::Path;

use nham_dataplane::window::{VnfCapacity, MAX_FRAMES};
use nham_netns::sockdiag::{SockDiag, VnfSockets};

/// The capacity the SFF works with for sockets `s`, halved `halvings`
/// times (after drops).
pub fn vnf_capacity(s: &VnfSockets, halvings: u32) -> VnfCapacity {
    let mut c = VnfCapacity {
        bytes: s.capacity,
        outgoing_copies: s.sees_outgoing,
        ring: s.ring,
        max_frames: s.max_frames.unwrap_or(MAX_FRAMES).min(MAX_FRAMES),
    };
    for _ in 0..halvings.min(16) {
        c = c.halved();
    }
    c
}

/// A probe target: VNF name and MR-AA member (0: the VNF's own process).
type Key = (String, usize);

/// Per VNF (and member): its namespace's sock_diag socket, the capacity
/// last told to the SFF, and how often it was halved.
#[derive(Debug, Default)]
pub struct SocketWatch {
    diags: BTreeMap<Key, (std::path::PathBuf, SockDiag)>,
    sent: BTreeMap<Key, VnfCapacity>,
    halvings: BTreeMap<Key, u32>,
    /// Frames the SFF had sent to each port at the last probe.
    sent_then: BTreeMap<Key, u64>,
    /// The VNF's receive rings, mapped (frames waiting there are not in
    /// `rmem`); remapped when the process changes.
    rings: BTreeMap<Key, crate::vsm::ring::VnfRings>,
}

impl SocketWatch {
    /// The receiving sockets of `vnf` (member `k`, process `pid`) in
    /// namespace `netns`, now: those its processes hold (a socket a CRIU
    /// restore is making there for a replica is not its); `None` if the
    /// kernel could not be asked, or it has no socket that receives yet.
    pub fn sockets(&mut self, vnf: &str, k: usize, pid: u32, netns: &Path) -> Option<VnfSockets> {
        let key = (vnf.to_string(), k);
        if self.diags.get(&key).is_none_or(|(p, _)| p != netns) {
            match SockDiag::open(netns) {
                Ok(d) => {
                    self.diags.insert(key.clone(), (netns.to_path_buf(), d));
                }
                Err(e) => {
                    tracing::debug!(vnf, k, "sock_diag in {}: {e}", netns.display());
                    return None;
                }
            }
        }
        let (_, diag) = self.diags.get_mut(&key)?;
        match diag.packet_sockets() {
            Ok(s) => {
                self.map_rings(&key, pid, &s);
                Some(VnfSockets::of_process(&s, pid)).filter(|v| v.sockets > 0)
            }
            Err(e) => {
                tracing::debug!(vnf, k, "sock_diag: {e}");
                self.diags.remove(&key);
                None
            }
        }
    }

    fn map_rings(&mut self, key: &Key, pid: u32, sockets: &[nham_netns::sockdiag::PacketSocket]) {
        if !sockets.iter().any(|s| s.rx_ring.is_some()) {
            self.rings.remove(key);
            return;
        }
        if self.rings.get(key).is_some_and(|r| r.pid() == pid) {
            return;
        }
        // The old mapping (a dead incarnation's socket) goes first.
        self.rings.remove(key);
        match crate::vsm::ring::VnfRings::of(pid, sockets) {
            Ok(r) if !r.is_empty() => {
                self.rings.insert(key.clone(), r);
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(vnf = key.0, k = key.1, "mapping its rings: {e}"),
        }
    }

    /// Frames waiting in `vnf`'s (member `k`'s) receive rings: whether any
    /// are unread, and the bytes of blocks handed to it and not given back
    /// (its queue, as far as a hang is concerned: frames in the block the
    /// kernel still fills are not the VNF's to read yet).
    pub fn ring_queue(&self, vnf: &str, k: usize) -> (bool, u64) {
        self.rings
            .get(&(vnf.to_string(), k))
            .map_or((false, 0), |r| (r.unread(), r.handed_over()))
    }

    /// Whether `vnf`'s (member `k`'s) rings show lost frames.
    pub fn ring_losing(&self, vnf: &str, k: usize) -> bool {
        self.rings
            .get(&(vnf.to_string(), k))
            .is_some_and(|r| r.losing())
    }

    /// The receiving sockets of `vnf` (member `k`) one by one, each with
    /// the processes holding it (for the log when one dropped input).
    pub fn describe(&mut self, vnf: &str, k: usize) -> String {
        let Some((_, diag)) = self.diags.get_mut(&(vnf.to_string(), k)) else {
            return String::new();
        };
        let Ok(sockets) = diag.packet_sockets() else {
            return String::new();
        };
        sockets
            .iter()
            .filter(|s| s.receives())
            .map(|s| {
                format!(
                    "[inode {} proto {:#06x} rcvbuf {} rmem {} drops {} held by {:?}]",
                    s.inode,
                    s.protocol,
                    s.rcvbuf,
                    s.rmem,
                    s.drops,
                    nham_netns::sockdiag::socket_owners(s.inode)
                )
            })
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The SFF had sent `sent_now` frames to `vnf` (member `k`) at this
    /// probe, whose sockets hold nothing now if `empty`: the send index
    /// before which every frame has been read (those sent up to the last
    /// probe, long enough ago to have reached the socket), to tell the SFF.
    pub fn read_upto(&mut self, vnf: &str, k: usize, sent_now: u64, empty: bool) -> Option<u64> {
        let then = self.sent_then.insert((vnf.to_string(), k), sent_now);
        then.filter(|&t| empty && t > 0 && t <= sent_now)
    }

    /// What to tell the SFF about `vnf` (member `k`) whose sockets are `s`:
    /// `Some` when it differs from what it was told last.
    pub fn learned(&mut self, vnf: &str, k: usize, s: &VnfSockets) -> Option<VnfCapacity> {
        let key = (vnf.to_string(), k);
        let c = vnf_capacity(s, self.halvings.get(&key).copied().unwrap_or(0));
        (self.sent.get(&key) != Some(&c)).then_some(c)
    }

    /// The SFF was told `c` for `vnf` (member `k`).
    pub fn told(&mut self, vnf: &str, k: usize, c: VnfCapacity) {
        self.sent.insert((vnf.to_string(), k), c);
    }

    /// The budget (bytes of kernel charge in flight) the SFF was last told
    /// for `vnf` (member `k`); the default's if none.
    pub fn told_budget(&self, vnf: &str, k: usize) -> u64 {
        self.sent
            .get(&(vnf.to_string(), k))
            .copied()
            .unwrap_or_default()
            .budget()
    }

    /// `vnf` (member `k`) dropped input with sockets `s`: from now on it
    /// gets half as much; the capacity to tell the SFF at once.
    pub fn dropped(&mut self, vnf: &str, k: usize, s: &VnfSockets) -> VnfCapacity {
        let key = (vnf.to_string(), k);
        let h = self.halvings.entry(key).or_insert(0);
        *h += 1;
        vnf_capacity(s, *h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sockets(capacity: u64) -> VnfSockets {
        VnfSockets {
            sockets: 1,
            capacity,
            sees_outgoing: true,
            ..VnfSockets::default()
        }
    }

    #[test]
    fn told_once_until_it_changes_and_halved_after_a_drop() {
        let mut w = SocketWatch::default();
        let s = sockets(212_992);
        let c = w.learned("fw", 0, &s).expect("new");
        assert_eq!(c.bytes, 212_992);
        w.told("fw", 0, c);
        assert_eq!(w.learned("fw", 0, &s), None);
        let half = w.dropped("fw", 0, &s);
        assert_eq!(half.bytes, 106_496);
        assert_eq!(w.learned("fw", 0, &s), Some(half));
        w.told("fw", 0, half);
        assert_eq!(w.learned("fw", 0, &s), None);
        // Another member keeps its own.
        assert_eq!(w.learned("fw", 1, &s).map(|c| c.bytes), Some(212_992));
    }
}
