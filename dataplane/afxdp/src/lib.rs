//! AF_XDP ports: the one place in NHAM where `unsafe` code lives.
//!
//! A [`Port`] is one AF_XDP socket bound to one interface queue, with a UMEM
//! of its own. Its frames are split in two pools: receive frames cycle
//! between the fill ring and the rx ring, transmit frames between a free
//! list, the tx ring and the completion ring. The safe API hides that cycle:
//!
//! - [`Port::recv_burst`] hands each received frame to a closure as `&[u8]`
//!   and returns the frames to the fill ring before it returns;
//! - [`Port::send_burst`] lets a closure write up to N frames into free
//!   transmit frames and queues them; [`Port::reclaim`] takes completed ones
//!   back.
//!
//! Data is copied in and out (on veth AF_XDP runs in copy mode anyway), so no
//! UMEM frame ever escapes this module and the invariants xsk-rs asks of its
//! callers are kept here: a descriptor given to the fill or tx ring is not
//! touched again until the rx or completion ring returns it, and descriptors
//! are only used with the UMEM that created them.
//!
//! The XDP program that steers frames to the socket is loaded separately
//! (crate `nham-ebpf`); sockets are created with
//! `XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD` and register their fd there.
#![deny(unsafe_code)]

pub mod packet_ring;

use std::num::NonZeroU32;
use std::os::fd::{AsRawFd, BorrowedFd};

use thiserror::Error;
use xsk_rs::config::{
    BindFlags, FrameSize, Interface, LibxdpFlags, QueueSize, SocketConfig, UmemConfig,
};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, Socket, TxQueue, Umem};

/// Errors of opening and driving a port.
#[derive(Debug, Error)]
pub enum AfXdpError {
    /// A configuration value xsk-rs refuses.
    #[error("invalid AF_XDP configuration: {0}")]
    Config(String),
    /// The UMEM could not be created.
    #[error("creating the UMEM: {0}")]
    Umem(String),
    /// The socket could not be created or bound.
    #[error("binding an AF_XDP socket to {iface} queue {queue}: {reason}")]
    Socket {
        /// Interface name.
        iface: String,
        /// Queue.
        queue: u32,
        /// Why.
        reason: String,
    },
    /// The interface name is not valid.
    #[error("invalid interface name {0:?}")]
    Interface(String),
    /// A syscall on the socket failed.
    #[error("AF_XDP I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// Sizing of a port. Ring sizes must be powers of two.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct PortConfig {
    /// Frames for receiving (given to the fill ring).
    pub rx_frames: u32,
    /// Frames for transmitting.
    pub tx_frames: u32,
    /// Size of one frame (2048 or 4096).
    pub frame_size: u32,
    /// Size of the rx and tx rings.
    pub ring_size: u32,
}

impl Default for PortConfig {
    fn default() -> Self {
        Self {
            rx_frames: 2048,
            tx_frames: 2048,
            frame_size: 2048,
            ring_size: 2048,
        }
    }
}

/// Counters of a port.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub rx_frames: u64,
    /// Frames queued for transmission.
    pub tx_frames: u64,
    /// Transmissions refused because no free frame or ring slot was left.
    pub tx_full: u64,
    /// Frames the kernel finished sending (back on the completion ring).
    pub tx_completed: u64,
    /// Wakeups for frames left in the tx ring (see
    /// [`Port::kick_if_stalled`]).
    pub tx_kicks: u64,
}

/// One AF_XDP socket on one interface queue, with its own UMEM.
pub struct Port {
    iface: String,
    queue: u32,
    umem: Umem,
    fq: FillQueue,
    cq: CompQueue,
    tx: TxQueue,
    rx: RxQueue,
    /// Transmit frames not in flight.
    free_tx: Vec<FrameDesc>,
    /// All transmit frames of this port.
    tx_total: usize,
    /// Scratch for descriptors coming back from the rx or completion ring.
    scratch: Vec<FrameDesc>,
    frame_size: usize,
    stats: PortStats,
    /// Bound in zero-copy mode (the driver works on the UMEM itself);
    /// else in copy mode.
    zero_copy: bool,
    /// For [`Port::kick_if_stalled`]: `stats.tx_completed` when it last
    /// looked, when that last grew (or it first looked), and when it last
    /// asked the kernel.
    stall_check: (u64, Option<std::time::Instant>, Option<std::time::Instant>),
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("iface", &self.iface)
            .field("queue", &self.queue)
            .field("stats", &self.stats)
            .finish()
    }
}

fn queue_size(n: u32) -> Result<QueueSize, AfXdpError> {
    QueueSize::new(n).map_err(|e| AfXdpError::Config(format!("queue size {n}: {e}")))
}

impl Port {
    /// Creates the UMEM and binds a socket to `iface` queue `queue` (in the
    /// calling thread's network namespace). The bind names no mode, so the
    /// kernel tries zero-copy first and falls back to copy mode where the
    /// driver has no zero-copy support (veth); [`Port::zero_copy`] says
    /// which it got (`XDP_OPTIONS`). The XDP program is not loaded:
    /// register [`Port::fd`] in an XSKMAP.
    pub fn open(iface: &str, queue: u32, config: PortConfig) -> Result<Self, AfXdpError> {
        let frames = config.rx_frames + config.tx_frames;
        // The fill ring must be larger than the frames given to it, or
        // produce() sometimes returns 0 (measured).
        let fill = (config.rx_frames * 2).next_power_of_two();
        let umem_config = UmemConfig::builder()
            .frame_size(
                FrameSize::new(config.frame_size)
                    .map_err(|e| AfXdpError::Config(format!("frame size: {e}")))?,
            )
            .fill_queue_size(queue_size(fill)?)
            .comp_queue_size(queue_size(config.tx_frames.next_power_of_two())?)
            .build()
            .map_err(|e| AfXdpError::Config(e.to_string()))?;
        let count = NonZeroU32::new(frames).ok_or(AfXdpError::Config("no frames".into()))?;
        let (umem, mut descs) =
            Umem::new(umem_config, count, false).map_err(|e| AfXdpError::Umem(e.to_string()))?;
        let socket_config = SocketConfig::builder()
            .rx_queue_size(queue_size(config.ring_size)?)
            .tx_queue_size(queue_size(config.ring_size)?)
            .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
            .bind_flags(BindFlags::XDP_USE_NEED_WAKEUP)
            .build();
        let name: Interface = iface
            .parse()
            .map_err(|_| AfXdpError::Interface(iface.to_string()))?;
        // SAFETY: this UMEM is new and owned by this port alone, so no other
        // socket shares it or is bound to this (interface, queue) pair from
        // it; INHIBIT_PROG_LOAD is set as xsk-rs requires for sharing.
        #[allow(unsafe_code)]
        let (tx, rx, rings) =
            unsafe { Socket::new(socket_config, &umem, &name, queue) }.map_err(|e| {
                AfXdpError::Socket {
                    iface: iface.to_string(),
                    queue,
                    reason: e.to_string(),
                }
            })?;
        let (mut fq, cq) = rings.ok_or_else(|| AfXdpError::Socket {
            iface: iface.to_string(),
            queue,
            reason: "no fill/completion rings returned for a fresh UMEM".into(),
        })?;
        let free_tx = descs.split_off(config.rx_frames as usize);
        // SAFETY: these descriptors come from this UMEM and are not in any
        // ring yet; from now on they belong to the kernel until the rx ring
        // returns them.
        #[allow(unsafe_code)]
        let filled = unsafe { fq.produce(&descs) };
        if filled != descs.len() {
            return Err(AfXdpError::Config(format!(
                "fill ring took {filled} of {} frames",
                descs.len()
            )));
        }
        let burst = config.ring_size as usize;
        let port = Self {
            iface: iface.to_string(),
            queue,
            umem,
            fq,
            cq,
            tx,
            rx,
            tx_total: free_tx.len(),
            free_tx,
            scratch: descs,
            frame_size: config.frame_size as usize,
            stats: PortStats::default(),
            zero_copy: false,
            stall_check: (0, None, None),
        }
        .with_scratch(burst);
        // libxdp opens the socket without close-on-exec: a process started
        // meanwhile by this one (a VNF, CRIU) would inherit it, and CRIU
        // cannot dump a process holding an AF_XDP socket.
        rustix::io::fcntl_setfd(port.fd(), rustix::io::FdFlags::CLOEXEC).map_err(|e| {
            AfXdpError::Socket {
                iface: iface.to_string(),
                queue,
                reason: format!("close-on-exec: {e}"),
            }
        })?;
        let mut port = port;
        port.zero_copy = rustix::net::sockopt::xdp_options(port.fd())
            .map_err(|e| AfXdpError::Socket {
                iface: iface.to_string(),
                queue,
                reason: format!("XDP_OPTIONS: {e}"),
            })?
            .contains(rustix::net::xdp::XdpOptionsFlags::XDP_OPTIONS_ZEROCOPY);
        Ok(port)
    }

    fn with_scratch(mut self, n: usize) -> Self {
        // Descriptors used as output slots by consume(); their contents are
        // overwritten by the rings, so any value will do.
        let filler = self
            .scratch
            .first()
            .copied()
            .or_else(|| self.free_tx.first().copied());
        self.scratch.clear();
        if let Some(d) = filler {
            self.scratch.resize(n, d);
        }
        self
    }

    /// The socket's file descriptor, for the XSKMAP.
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: the fd belongs to the socket held by `self.rx`, which
        // lives as long as the returned borrow.
        #[allow(unsafe_code)]
        unsafe {
            BorrowedFd::borrow_raw(self.rx.fd().as_raw_fd())
        }
    }

    /// Whether it is bound in zero-copy mode (else copy mode).
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// Interface name.
    pub fn iface(&self) -> &str {
        &self.iface
    }

    /// Counters.
    pub fn stats(&self) -> PortStats {
        self.stats
    }

    /// Largest frame this port can send.
    pub fn max_frame(&self) -> usize {
        self.frame_size - 256
    }

    /// Receives up to `max` frames, calling `f` on each in arrival order,
    /// and gives the frames back to the kernel. Returns how many.
    pub fn recv_burst(&mut self, max: usize, mut f: impl FnMut(&[u8])) -> usize {
        let max = max.min(self.scratch.len());
        // SAFETY: `scratch` slots are outputs; consume() fills the first
        // `n` with descriptors of this port's UMEM that the kernel has
        // finished writing.
        #[allow(unsafe_code)]
        let n = unsafe { self.rx.consume(&mut self.scratch[..max]) };
        if n == 0 {
            if self.fq.needs_wakeup() {
                let _ = self.fq.wakeup(self.rx.fd_mut(), 0);
            }
            return 0;
        }
        for desc in &self.scratch[..n] {
            // SAFETY: the descriptor was just returned by the rx ring of
            // this UMEM and is not in any ring until we give it back below.
            #[allow(unsafe_code)]
            let data = unsafe { self.umem.data(desc) };
            f(data.contents());
        }
        self.stats.rx_frames += n as u64;
        // Give the frames back to the fill ring; it is sized to hold every
        // receive frame, so this always takes all of them.
        let mut given = 0;
        while given < n {
            // SAFETY: these descriptors came from this UMEM's rx ring above
            // and are no longer read.
            #[allow(unsafe_code)]
            let k = unsafe { self.fq.produce(&self.scratch[given..n]) };
            given += k;
            if k == 0 {
                std::hint::spin_loop();
            }
        }
        n
    }

    /// Takes completed transmit frames back into the free list.
    pub fn reclaim(&mut self) -> usize {
        let mut total = 0;
        loop {
            let max = self.scratch.len();
            // SAFETY: outputs only; the completion ring returns descriptors
            // of this UMEM the kernel has finished sending.
            #[allow(unsafe_code)]
            let n = unsafe { self.cq.consume(&mut self.scratch[..max]) };
            if n == 0 {
                return total;
            }
            self.free_tx.extend_from_slice(&self.scratch[..n]);
            self.stats.tx_completed += n as u64;
            total += n;
        }
    }

    /// Frames handed to the kernel for sending and not yet completed: in
    /// the tx ring (a driver that could not send them keeps them there for
    /// the next wakeup) or awaiting completion. Reclaims first.
    pub fn tx_outstanding(&mut self) -> usize {
        self.reclaim();
        self.tx_total - self.free_tx.len()
    }

    /// Asks the kernel to send what waits in the tx ring now (even when it
    /// did not ask for a wakeup), then reclaims; returns what is still
    /// outstanding.
    pub fn kick_tx(&mut self) -> usize {
        let _ = self.tx.wakeup();
        self.tx_outstanding()
    }

    /// Frames wait to be sent, none completed for `every`, nor was the
    /// kernel asked in the last `every`: asks it again (returns whether it
    /// did). In copy mode the kernel sends what the tx ring
    /// holds only when woken, a batch at a time; a driver that cannot send
    /// (a veth stops its queue while its peer's ring is full) leaves the
    /// frames in the ring, and nothing else wakes the kernel for them when
    /// no new frame is sent: they would stay there for ever. Call it every
    /// round; `now` is the caller's clock.
    pub fn kick_if_stalled(&mut self, now: std::time::Instant, every: std::time::Duration) -> bool {
        let outstanding = self.tx_outstanding();
        let (seen, progress, last_kick) = &mut self.stall_check;
        // Nothing waiting counts as progress: frames queued after an idle
        // spell get their `every` too.
        if *seen != self.stats.tx_completed || progress.is_none() || outstanding == 0 {
            *seen = self.stats.tx_completed;
            *progress = Some(now);
        }
        let quiet_for = |t: &Option<std::time::Instant>| {
            t.is_none_or(|t| now.saturating_duration_since(t) >= every)
        };
        let stalled = outstanding > 0 && quiet_for(progress) && quiet_for(last_kick);
        if stalled {
            *last_kick = Some(now);
            // The kernel sends a batch (32) per wakeup: enough wakeups for
            // what waits, at most 8 (a port whose peer stays full costs 8
            // calls a millisecond).
            for _ in 0..outstanding.div_ceil(32).min(8) {
                let _ = self.tx.wakeup();
                self.stats.tx_kicks += 1;
            }
        }
        stalled
    }

    /// Frames that can be sent right now.
    pub fn tx_room(&mut self) -> usize {
        self.free_tx.len()
    }

    /// Sends up to `n` frames: `write(i, buf)` fills frame `i` and returns
    /// its length (0 to skip it). Returns how many were queued. Frames
    /// that find no free slot are not written: check [`tx_room`](Self::tx_room).
    pub fn send_burst(
        &mut self,
        n: usize,
        mut write: impl FnMut(usize, &mut [u8]) -> usize,
    ) -> usize {
        if self.free_tx.len() < n {
            self.reclaim();
        }
        let avail = n.min(self.free_tx.len());
        if avail < n {
            self.stats.tx_full += 1;
        }
        let start = self.free_tx.len() - avail;
        let cap = self.max_frame();
        let mut ready = 0;
        for i in 0..avail {
            let mut desc = self.free_tx[start + ready];
            // SAFETY: the descriptor is on this UMEM's free list, in no ring.
            #[allow(unsafe_code)]
            let mut data = unsafe { self.umem.data_mut(&mut desc) };
            data.cursor().set_pos(cap);
            let len = write(i, &mut data.contents_mut()[..cap]).min(cap);
            data.cursor().set_pos(len);
            if len == 0 {
                continue;
            }
            self.free_tx[start + ready] = desc;
            ready += 1;
        }
        // SAFETY: free_tx[start .. start + ready] are this UMEM's frames,
        // written above; after produce() they belong to the kernel until
        // the completion ring returns them.
        #[allow(unsafe_code)]
        let queued = unsafe { self.tx.produce(&self.free_tx[start..start + ready]) };
        // Those the ring took leave the free list; the rest stay on it.
        self.free_tx.drain(start..start + queued);
        if queued < ready {
            self.stats.tx_full += 1;
        }
        if queued > 0 && self.tx.needs_wakeup() {
            // In copy mode the kernel sends one batch (32 frames) per
            // wakeup and leaves the rest in the ring: enough wakeups for
            // this burst, and one for what an earlier one left. (Frames
            // left behind wait for the next burst on this port, or for
            // `kick_if_stalled`: a paused VNF would get them only after
            // its checkpoint's last look.)
            let wakeups = if self.zero_copy {
                1
            } else {
                let waiting = self.tx_total - self.free_tx.len();
                waiting.div_ceil(32).min(queued.div_ceil(32) + 1)
            };
            for _ in 0..wakeups {
                let _ = self.tx.wakeup();
            }
        }
        self.stats.tx_frames += queued as u64;
        queued
    }

    /// Frames the kernel dropped on this socket's receive side (rx ring
    /// full, or no fill-ring frame): a receiver too slow for its traffic.
    pub fn kernel_rx_drops(&self) -> u64 {
        self.rx
            .fd()
            .xdp_statistics()
            .map_or(0, |s| s.rx_dropped() + s.rx_ring_full())
    }

    /// Waits up to `timeout_ms` for frames to arrive.
    pub fn wait_rx(&mut self, timeout_ms: i32) -> Result<bool, AfXdpError> {
        Ok(self.rx.poll(timeout_ms)?)
    }
}
