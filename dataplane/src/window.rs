//! Flow control towards one VNF: never more unanswered data in flight to it
//! than its socket can hold. I/O-free: the SFF feeds it what it sent and
//! what came back; it says how many of the next frames may go.
//!
//! A VNF is a program someone else wrote, with Linux's default socket
//! buffer (212,992 bytes of `sk_rcvbuf`) or whatever it chose. The kernel
//! charges each queued frame its `truesize` (the frame's buffer, rounded up
//! to a kmalloc size, plus `struct skb_shared_info` and `struct sk_buff`),
//! not its length, and drops what comes once the charge reaches the buffer
//! (`packet_rcv`: `if (atomic_read(&sk->sk_rmem_alloc) >= sk->sk_rcvbuf)
//! goto drop_n_acct;`). A socket bound to `ETH_P_ALL` is also charged a
//! copy of every frame the VNF sends through *another* socket (never one
//! sent through itself: `dev_queue_xmit_nit` skips the frame's own socket),
//! until the VNF reads it; the control plane tells which VNFs may
//! (`nham_netns::sockdiag::VnfSockets::of_namespace`). So the window
//! is counted in those bytes: [`VnfCapacity::frame_cost`] is a frame's
//! charge (twice for a socket that sees the VNF's outputs), and the frames
//! in flight never cost more than [`VnfCapacity::budget`].
//!
//! Why that suffices for `ETH_P_ALL`: an output copy not yet read sits
//! behind inputs that were queued when it was sent, so at most one window
//! of copies is queued besides one window of inputs; charging each input
//! for its output's copy covers both, and the budget leaves one frame's
//! charge of slack (and a quarter of the buffer for the kernel's own
//! frames, such as IPv6 neighbour discovery, that land in the same queue).
//!
//! A frame is answered when the VNF's output for it (or a later one; VNFs
//! are FIFO) comes back. A VNF that drops packets never answers them: those
//! leave the window once the VNF was silent for a while *and* its sockets
//! were seen empty after they were sent ([`FlowWindow::release_read`]):
//! silence alone is no proof that a slow or descheduled VNF read anything.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Frames in flight at most, whatever their size (a VNF's ring of frame
/// slots holds this many; a socket whose buffer would allow more still gets
/// no more than this).
pub const MAX_FRAMES: usize = 512;

/// What one VNF socket can hold, as the kernel reports it
/// (`nham_netns::sockdiag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VnfCapacity {
    /// Receive capacity in bytes: `sk_rcvbuf`, or the ring's size.
    pub bytes: u64,
    /// The socket also receives the VNF's own outgoing frames (`ETH_P_ALL`).
    pub outgoing_copies: bool,
    /// Frames land in a `PACKET_RX_RING` (charged their aligned length,
    /// not a buffer's truesize).
    pub ring: bool,
    /// Frames at most (a ring's slots or blocks; [`MAX_FRAMES`] otherwise).
    pub max_frames: usize,
}

impl Default for VnfCapacity {
    /// A VNF not measured yet: Linux's default receive buffer, bound to
    /// `ETH_P_ALL` (the most a plain VNF's socket is charged).
    fn default() -> Self {
        Self {
            bytes: 212_992,
            outgoing_copies: true,
            ring: false,
            max_frames: MAX_FRAMES,
        }
    }
}

/// `struct skb_shared_info`, cache-aligned, on x86_64 (6.x).
const SHINFO: u64 = 320;
/// `struct sk_buff`, cache-aligned.
const SKB: u64 = 256;
/// Headroom the sender reserves (`NET_SKB_PAD`, AF_XDP's copy mode).
const HEADROOM: u64 = 64;
/// A `TPACKET_V3` frame's header and alignment in a ring.
const RING_HEADER: u64 = 96;

impl VnfCapacity {
    /// What one frame of `len` bytes is charged, in bytes, while in flight:
    /// its kernel buffer (a power of two at least the frame, headroom and
    /// shared info, as kmalloc rounds it) plus the `sk_buff`; or in a ring,
    /// its 16-byte-aligned slot. Doubled when the socket also holds a copy
    /// of the VNF's output.
    pub fn frame_cost(&self, len: usize) -> u64 {
        let len = len as u64;
        let one = if self.ring {
            (len + RING_HEADER + 15) & !15
        } else {
            (len + HEADROOM + SHINFO).next_power_of_two() + SKB
        };
        if self.outgoing_copies {
            2 * one
        } else {
            one
        }
    }

    /// Bytes the frames in flight may cost: three quarters of the capacity
    /// (the rest for frames of the kernel's own), less one frame's slack.
    pub fn budget(&self) -> u64 {
        (self.bytes / 4 * 3).saturating_sub(self.frame_cost(1514))
    }

    /// Half of this one (after the VNF's socket dropped input anyway: it
    /// costs more than the model says), never below one frame.
    pub fn halved(&self) -> Self {
        Self {
            bytes: (self.bytes / 2).max(4 * self.frame_cost(1514)),
            max_frames: (self.max_frames / 2).max(1),
            ..*self
        }
    }
}

/// The frames in flight to one VNF port: sequence numbers and charges.
#[derive(Debug, Clone, Default)]
pub struct FlowWindow {
    capacity: VnfCapacity,
    /// Sequence number, charge and send index of each frame in flight.
    in_flight: VecDeque<(u64, u64, u64)>,
    bytes: u64,
    /// Frames sent on this port so far.
    sent: u64,
    /// Since when the VNF has been quiet: the moment it was last heard
    /// from, or a burst went into an empty window.
    quiet_since: Option<Instant>,
}

impl FlowWindow {
    /// An empty window for a socket of `capacity`.
    pub fn new(capacity: VnfCapacity) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// The capacity it works with.
    pub fn capacity(&self) -> VnfCapacity {
        self.capacity
    }

    /// Uses `capacity` from now on (what is in flight stays counted).
    pub fn set_capacity(&mut self, capacity: VnfCapacity) {
        self.capacity = capacity;
    }

    /// Frames in flight.
    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    /// Nothing in flight.
    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// Bytes the frames in flight are charged.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// How many of the next frames, of lengths `lens` in order, may be sent
    /// now. At least one when nothing is in flight, so a budget smaller
    /// than one frame still moves (the VNF reads it before the next).
    pub fn admit(&self, lens: impl IntoIterator<Item = usize>) -> usize {
        let budget = self.capacity.budget();
        let room = self
            .capacity
            .max_frames
            .max(1)
            .saturating_sub(self.in_flight.len());
        let mut bytes = self.bytes;
        let mut n = 0;
        for len in lens.into_iter().take(room) {
            bytes += self.capacity.frame_cost(len);
            if bytes > budget && !(n == 0 && self.in_flight.is_empty()) {
                break;
            }
            n += 1;
        }
        n
    }

    /// A frame with sequence number `seq` and length `len` was sent.
    pub fn on_sent(&mut self, seq: u64, len: usize) {
        let cost = self.capacity.frame_cost(len);
        self.in_flight.push_back((seq, cost, self.sent));
        self.sent += 1;
        self.bytes += cost;
    }

    /// Frames sent on this port so far (a restored window counts on from
    /// the one it was copied from).
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The VNF answered every frame up to `seq`.
    pub fn on_answered(&mut self, seq: u64) {
        while let Some(&(s, cost, _)) = self.in_flight.front() {
            if s > seq {
                break;
            }
            self.in_flight.pop_front();
            self.bytes -= cost;
        }
    }

    /// The VNF has read every frame sent before send index `sent` (its
    /// sockets were seen empty after they were sent), and sent nothing back
    /// for a while: those it did not answer it dropped, and leave.
    pub fn release_read(&mut self, sent: u64) {
        while let Some(&(_, cost, i)) = self.in_flight.front() {
            if i >= sent {
                break;
            }
            self.in_flight.pop_front();
            self.bytes -= cost;
        }
    }

    /// Takes `current`'s place: its capacity, and its send count goes on
    /// (what this one holds was sent before).
    pub fn carry_on(&mut self, current: &FlowWindow) {
        self.capacity = current.capacity;
        self.sent = self.sent.max(current.sent);
    }

    /// A burst goes out at `now`: into an empty window, the VNF's silence
    /// is counted from now.
    pub fn on_burst(&mut self, now: Instant) {
        if self.in_flight.is_empty() {
            self.quiet_since = Some(now);
        }
    }

    /// The VNF was heard from at `now` (it sent something back, or it was
    /// just restored): its silence starts again.
    pub fn on_heard(&mut self, now: Instant) {
        self.quiet_since = Some(now);
    }

    /// The VNF sent nothing this round, at `now`. Quiet for longer than
    /// `timeout` (and its output ring seen empty: this is asked only
    /// then), the frames it did not answer were dropped: those sent before
    /// send index `read` (when the sockets were last seen empty after
    /// them, see [`release_read`](Self::release_read)) leave, or all of
    /// them when `read` is not known. Returns whether it was quiet that
    /// long.
    pub fn poll_silence(&mut self, now: Instant, timeout: Duration, read: Option<u64>) -> bool {
        let quiet = self
            .quiet_since
            .is_some_and(|t| now.saturating_duration_since(t) > timeout);
        if quiet {
            match read {
                Some(sent) => self.release_read(sent),
                None => self.clear(),
            }
        }
        quiet
    }

    /// Nothing is in flight any more (silence, a failure, a new socket).
    pub fn clear(&mut self) {
        self.in_flight.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn linux_default_buffer_holds_far_fewer_than_512_frames() {
        let w = FlowWindow::new(VnfCapacity::default());
        let n = w.admit(std::iter::repeat_n(128, 1000));
        // 128 B frames cost 768 B, twice for ETH_P_ALL: about 100.
        assert!((50..=120).contains(&n), "{n}");
        let bound = VnfCapacity {
            outgoing_copies: false,
            ..VnfCapacity::default()
        };
        assert!(FlowWindow::new(bound).admit(std::iter::repeat_n(128, 1000)) > n);
    }

    #[test]
    fn silence_counts_from_the_first_burst_into_an_empty_window_or_the_last_answer() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let timeout = ms(10);
        let mut w = FlowWindow::new(VnfCapacity::default());
        // Never sent to: never silent.
        assert!(!w.poll_silence(t0 + ms(100), timeout, None));
        w.on_burst(t0);
        w.on_sent(1, 64);
        w.on_sent(2, 64);
        // A second burst into a busy window does not restart the clock.
        w.on_burst(t0 + ms(8));
        w.on_sent(3, 64);
        assert!(!w.poll_silence(t0 + ms(10), timeout, Some(0)));
        // Quiet past the timeout: only what was seen read leaves.
        assert!(w.poll_silence(t0 + ms(11), timeout, Some(2)));
        assert_eq!(w.len(), 1);
        // Heard from: quiet again only `timeout` later.
        w.on_heard(t0 + ms(11));
        assert!(!w.poll_silence(t0 + ms(20), timeout, None));
        assert!(w.poll_silence(t0 + ms(22), timeout, None));
        assert!(w.is_empty());
    }

    #[test]
    fn a_tiny_buffer_still_moves_one_frame_at_a_time() {
        let mut w = FlowWindow::new(VnfCapacity {
            bytes: 100,
            ..VnfCapacity::default()
        });
        assert_eq!(w.admit([1500, 1500]), 1);
        w.on_sent(1, 1500);
        assert_eq!(w.admit([64]), 0);
        w.on_answered(1);
        assert_eq!(w.admit([64]), 1);
    }

    #[test]
    fn a_ring_is_bounded_by_its_slots() {
        let w = FlowWindow::new(VnfCapacity {
            bytes: 1 << 20,
            outgoing_copies: false,
            ring: true,
            max_frames: 8,
        });
        assert_eq!(w.admit(std::iter::repeat_n(64, 100)), 8);
    }

    proptest! {
        /// Against a reference: the charge in flight is the sum of the
        /// costs of the frames sent and not answered, and it never exceeds
        /// the budget except for a lone frame.
        #[test]
        fn charge_matches_reference(ops in proptest::collection::vec((0u8..3, 1usize..2000), 1..300)) {
            let cap = VnfCapacity { bytes: 64 * 1024, ..VnfCapacity::default() };
            let mut w = FlowWindow::new(cap);
            let mut model: VecDeque<(u64, usize)> = VecDeque::new();
            let mut next = 0u64;
            for (op, x) in ops {
                match op {
                    0 => {
                        if w.admit([x]) == 1 {
                            w.on_sent(next, x);
                            model.push_back((next, x));
                            next += 1;
                        }
                    }
                    1 => {
                        let upto = next.saturating_sub(x as u64 % 5);
                        w.on_answered(upto);
                        model.retain(|&(s, _)| s > upto);
                    }
                    // Sequence numbers are send indices here.
                    2 if x % 3 == 0 => {
                        let upto = next.saturating_sub(x as u64 % 7);
                        w.release_read(upto);
                        model.retain(|&(s, _)| s >= upto);
                    }
                    _ => {
                        if x % 17 == 0 {
                            w.clear();
                            model.clear();
                        }
                    }
                }
                let want: u64 = model.iter().map(|&(_, l)| cap.frame_cost(l)).sum();
                prop_assert_eq!(w.bytes(), want);
                prop_assert_eq!(w.len(), model.len());
                prop_assert!(w.len() <= 1 || w.bytes() <= cap.budget());
            }
        }
    }
}
