//! VNFs that read through a `TPACKET_V3` receive ring (`PACKET_RX_RING`),
//! as libpcap-style capture code does.
//!
//! Two things differ from a socket's receive queue:
//! - frames waiting in the ring are not in the socket's `rmem`, so "drained"
//!   before a checkpoint also means every block is back with the kernel and
//!   the block it fills holds nothing ([`unread`]);
//! - CRIU restores the ring's shape, not its content nor the kernel's
//!   position in it: the kernel starts again at block 0 while the restored
//!   program waits at the block it had reached. Frames would land where the
//!   program does not look (it reads them a whole ring later, out of order,
//!   or never). So the checkpoint records the block the kernel was filling
//!   ([`RingPosition`], in the image directory), and after a restore, while
//!   the VNF is still stopped, NHAM sends filler frames down the VNF's link
//!   and hands each block they fill back to the kernel, until the kernel
//!   fills the recorded block again, empty ([`step`], [`realign`]). The VNF
//!   never sees a filler frame.
//!
//! Decisions are plain functions over block headers ([`step`]); the I/O is
//! [`VnfRings`] (the mapped rings) and [`realign`]'s driver loop.

use std::path::Path;
use std::time::{Duration, Instant};

use nham_afxdp::packet_ring::{Block, RxRing};
use nham_netns::sockdiag::PacketSocket;

/// The file in a checkpoint's image directory that records its rings.
pub const RINGS_FILE: &str = "nham-rings.json";

/// Errors of finding, reading or realigning a VNF's rings.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// The VNF's socket could not be duplicated (`pidfd_getfd`).
    #[error("duplicating fd {fd} of process {pid}: {reason}")]
    Duplicate {
        /// Process.
        pid: u32,
        /// Its fd.
        fd: i32,
        /// Why.
        reason: String,
    },
    /// The ring could not be mapped.
    #[error(transparent)]
    Map(#[from] nham_afxdp::packet_ring::RingError),
    /// The record in the image directory could not be read or written.
    #[error("{path}: {reason}")]
    Record {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Filler frames could not be sent on the VNF's link.
    #[error("sending filler frames on {iface}: {reason}")]
    Filler {
        /// The SFF's end of the link.
        iface: String,
        /// Why.
        reason: String,
    },
    /// A ring of a version whose position cannot be put back (TPACKET_V1
    /// or V2: a checkpoint of it would lose what its slots held).
    #[error("fd {fd} of process {pid} reads through a TPACKET_V{} ring: only TPACKET_V3 rings are supported", version + 1)]
    Unsupported {
        /// Process.
        pid: u32,
        /// Its fd.
        fd: i32,
        /// `PACKET_DIAG_INFO`'s version (0: V1, 1: V2).
        version: u32,
    },
    /// The kernel's position did not come back to the recorded block.
    #[error(
        "ring of fd {fd}: the kernel did not reach block {block} in {waited:?} (at block {at})"
    )]
    Stuck {
        /// The VNF's fd.
        fd: i32,
        /// The recorded block.
        block: usize,
        /// Where the kernel is.
        at: usize,
        /// How long it was tried.
        waited: Duration,
    },
}

/// Where the kernel was in one ring when a checkpoint froze the VNF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RingPosition {
    /// The socket's fd in the VNF's process (CRIU restores fds in place).
    pub fd: i32,
    /// Bytes per block.
    pub block_size: u32,
    /// Blocks.
    pub block_nr: u32,
    /// The block the kernel was filling (the one the program reads next).
    pub block: usize,
}

/// The block the kernel fills: the last one it opened (highest sequence
/// number). A fresh ring has opened block 0 only.
pub fn active(blocks: &[Block]) -> usize {
    blocks
        .iter()
        .enumerate()
        .max_by_key(|(i, b)| (b.seq, std::cmp::Reverse(*i)))
        .map_or(0, |(i, _)| i)
}

/// Whether the ring holds frames the program has not read: a block handed
/// to it and not given back, or frames in the block the kernel fills (it
/// hands that over when full or when its timer expires).
pub fn unread(blocks: &[Block]) -> bool {
    blocks.iter().any(|b| b.user) || blocks.get(active(blocks)).is_some_and(|b| b.num_pkts > 0)
}

/// What the realignment does next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The kernel fills the recorded block, which is empty: done.
    Done,
    /// Hand these blocks (filled with filler) back to the kernel.
    GiveBack(Vec<usize>),
    /// Send this many filler frames.
    Fill(usize),
    /// The block before the recorded one holds filler: wait for the
    /// kernel's block timer to hand it over (the kernel then opens the
    /// recorded one, empty).
    WaitRetire,
}

/// The next step towards the kernel filling block `target`, empty, from
/// `blocks` (the VNF stopped: nothing else reads the ring). `batch`:
/// filler frames that fit in half a block (a batch crosses at most one
/// block boundary). A block is closed when a frame no longer fits in it
/// (the frame opens the next) or by the timer (only a block holding a
/// frame): so filler goes in until the block before `target` holds some,
/// and its timer closes it.
pub fn step(blocks: &[Block], target: usize, batch: usize) -> Step {
    let n = blocks.len();
    if n == 0 {
        return Step::Done;
    }
    let target = target % n;
    let back: Vec<usize> = (0..n).filter(|&i| blocks[i].user).collect();
    if !back.is_empty() {
        return Step::GiveBack(back);
    }
    let a = active(blocks);
    let before_target = (a + 1) % n == target;
    match (a == target, blocks[a].num_pkts) {
        (true, 0) => Step::Done,
        // Filler landed in the recorded block (or the ring came back with
        // a frame in it): go round once more.
        (true, _) => Step::Fill(1),
        (false, 0) if before_target => Step::Fill(1),
        (false, _) if before_target => Step::WaitRetire,
        (false, _) => {
            // Blocks from `a` to the one before `target`: a batch may
            // close `a` and open the next, never more.
            let distance = (target + n - a) % n;
            Step::Fill(if distance >= 3 { batch.max(1) } else { 1 })
        }
    }
}

/// A VNF's `TPACKET_V3` receive rings, mapped (the ones its own process
/// holds; a ring of a child process is not followed).
#[derive(Debug)]
pub struct VnfRings {
    pid: u32,
    rings: Vec<(RingPosition, RxRing)>,
}

/// `PACKET_DIAG_INFO`'s version of a `TPACKET_V3` socket.
const TPACKET_V3: u32 = 2;

/// The fds of process `pid` and the socket inodes they hold.
fn socket_fds(pid: u32) -> Vec<(i32, u32)> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            let inode = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((fd, inode))
        })
        .collect()
}

/// Duplicates fd `fd` of process `pid` into ours.
fn duplicate(pid: u32, fd: i32) -> Result<std::os::fd::OwnedFd, RingError> {
    let err = |e: rustix::io::Errno| RingError::Duplicate {
        pid,
        fd,
        reason: e.to_string(),
    };
    let p = rustix::process::Pid::from_raw(pid as i32).ok_or(RingError::Duplicate {
        pid,
        fd,
        reason: "not a pid".into(),
    })?;
    let pidfd =
        rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).map_err(err)?;
    rustix::process::pidfd_getfd(&pidfd, fd, rustix::process::PidfdGetfdFlags::empty()).map_err(err)
}

impl VnfRings {
    /// The rings of process `pid` among `sockets` (its namespace's packet
    /// sockets, from sock_diag), mapped.
    pub fn of(pid: u32, sockets: &[PacketSocket]) -> Result<Self, RingError> {
        let mut rings = Vec::new();
        for (fd, inode) in socket_fds(pid) {
            let Some(s) = sockets.iter().find(|s| s.inode == inode) else {
                continue;
            };
            let Some(r) = s.rx_ring.filter(|r| r.bytes() > 0) else {
                continue;
            };
            if s.version != TPACKET_V3 {
                return Err(RingError::Unsupported {
                    pid,
                    fd,
                    version: s.version,
                });
            }
            if rings
                .iter()
                .any(|(p, _): &(RingPosition, RxRing)| p.fd == fd)
            {
                continue;
            }
            let ring = RxRing::map(duplicate(pid, fd)?, r.block_size, r.block_nr)?;
            let position = RingPosition {
                fd,
                block_size: r.block_size,
                block_nr: r.block_nr,
                block: 0,
            };
            rings.push((position, ring));
        }
        Ok(Self { pid, rings })
    }

    /// The process whose rings these are.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether it has any.
    pub fn is_empty(&self) -> bool {
        self.rings.is_empty()
    }

    /// Whether any ring holds frames the VNF has not read.
    pub fn unread(&self) -> bool {
        self.rings.iter().any(|(_, r)| unread(&r.blocks()))
    }

    /// Whether a block handed to the VNF says the ring lost frames
    /// (`TP_STATUS_LOSING`; the kernel's count of them is the VNF's to
    /// read, so this is all NHAM can see of a ring's drops).
    pub fn losing(&self) -> bool {
        self.rings
            .iter()
            .any(|(_, r)| r.blocks().iter().any(|b| b.losing))
    }

    /// Bytes of the blocks handed to the VNF and not given back yet.
    pub fn handed_over(&self) -> u64 {
        self.rings
            .iter()
            .map(|(p, r)| {
                r.blocks().iter().filter(|b| b.user).count() as u64 * u64::from(p.block_size)
            })
            .sum()
    }

    /// Where the kernel is in each ring now.
    pub fn positions(&self) -> Vec<RingPosition> {
        self.rings
            .iter()
            .map(|(p, r)| RingPosition {
                block: active(&r.blocks()),
                ..*p
            })
            .collect()
    }
}

/// Records `positions` in image directory `dir` (nothing when empty).
pub fn save(dir: &Path, positions: &[RingPosition]) -> Result<(), RingError> {
    if positions.is_empty() {
        return Ok(());
    }
    let path = dir.join(RINGS_FILE);
    let err = |reason: String| RingError::Record {
        path: path.display().to_string(),
        reason,
    };
    let text = serde_json::to_vec(positions).map_err(|e| err(e.to_string()))?;
    std::fs::write(&path, text).map_err(|e| err(e.to_string()))
}

/// The positions recorded in image directory `dir` (none if it has no
/// record: a VNF without rings).
pub fn load(dir: &Path) -> Result<Vec<RingPosition>, RingError> {
    let path = dir.join(RINGS_FILE);
    let err = |reason: String| RingError::Record {
        path: path.display().to_string(),
        reason,
    };
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(err(e.to_string())),
    }
}

/// Filler frames on the SFF's end of a VNF's link: NSH frames (what every
/// VNF socket receives) with an invalid base header (version 3, length 0),
/// to the broadcast address.
pub struct Filler {
    iface: String,
    tx: Box<dyn pnet_datalink::DataLinkSender>,
    frame: Vec<u8>,
}

impl Filler {
    /// Filler frame length.
    pub const LEN: usize = 1024;

    /// Opens a packet socket on `iface` (in our namespace).
    pub fn open(iface: &str) -> Result<Self, RingError> {
        let err = |reason: String| RingError::Filler {
            iface: iface.to_string(),
            reason,
        };
        let ni = pnet_datalink::interfaces()
            .into_iter()
            .find(|i| i.name == iface)
            .ok_or_else(|| err("no such interface".into()))?;
        let config = pnet_datalink::Config {
            read_buffer_size: 4096,
            ..Default::default()
        };
        let tx = match pnet_datalink::channel(&ni, config) {
            Ok(pnet_datalink::Channel::Ethernet(tx, _)) => tx,
            Ok(_) => return Err(err("not an Ethernet interface".into())),
            Err(e) => return Err(err(e.to_string())),
        };
        let mut frame = vec![0u8; Self::LEN];
        frame[..6].fill(0xff);
        frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0]);
        frame[12..14].copy_from_slice(&0x894Fu16.to_be_bytes());
        frame[14] = 0xC0; // NSH version 3: not one RFC 8300 defines
        Ok(Self {
            iface: iface.to_string(),
            tx,
            frame,
        })
    }

    /// Sends `n` filler frames.
    pub fn send(&mut self, n: usize) -> Result<(), RingError> {
        for _ in 0..n {
            match self.tx.send_to(&self.frame, None) {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    return Err(RingError::Filler {
                        iface: self.iface.clone(),
                        reason: e.to_string(),
                    })
                }
                None => {
                    return Err(RingError::Filler {
                        iface: self.iface.clone(),
                        reason: "no buffer to send from".into(),
                    })
                }
            }
        }
        Ok(())
    }
}

/// What a realignment took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Realigned {
    /// Rings realigned.
    pub rings: usize,
    /// Filler frames sent.
    pub filler: usize,
    /// Time taken.
    pub took: Duration,
}

/// How long one ring's realignment may take (block timers included).
const REALIGN_TIMEOUT: Duration = Duration::from_secs(3);

/// Brings the kernel's position in each ring of restored process `pid`
/// (stopped) back to the one recorded at its checkpoint, sending filler
/// on `iface` (the SFF's end of its link; opened only if needed).
pub fn realign(
    pid: u32,
    positions: &[RingPosition],
    iface: Option<&str>,
) -> Result<Realigned, RingError> {
    let started = Instant::now();
    let mut done = Realigned::default();
    let mut filler: Option<Filler> = None;
    for p in positions {
        let ring = RxRing::map(duplicate(pid, p.fd)?, p.block_size, p.block_nr)?;
        let batch = (p.block_size as usize / 2 / (Filler::LEN + 128)).clamp(1, 64);
        let t0 = Instant::now();
        loop {
            let blocks = ring.blocks();
            let s = step(&blocks, p.block, batch);
            if s == Step::Done {
                break;
            }
            if t0.elapsed() > REALIGN_TIMEOUT {
                return Err(RingError::Stuck {
                    fd: p.fd,
                    block: p.block,
                    at: active(&blocks),
                    waited: t0.elapsed(),
                });
            }
            match s {
                Step::Done => {}
                Step::GiveBack(v) => v.into_iter().for_each(|i| ring.give_back(i)),
                Step::Fill(k) => {
                    let f = match filler.as_mut() {
                        Some(f) => f,
                        None => filler.insert(Filler::open(iface.ok_or_else(|| {
                            RingError::Filler {
                                iface: "(none)".into(),
                                reason: "the VNF's link is not known".into(),
                            }
                        })?)?),
                    };
                    f.send(k)?;
                    done.filler += k;
                    // Until they landed (veth delivers on a softirq).
                    let before: u64 = blocks.iter().map(|b| u64::from(b.num_pkts)).sum();
                    let (seq_before, a_before) =
                        (blocks.iter().map(|b| b.seq).max(), active(&blocks));
                    let wait = Instant::now();
                    while wait.elapsed() < Duration::from_millis(20) {
                        let now = ring.blocks();
                        let sum: u64 = now.iter().map(|b| u64::from(b.num_pkts)).sum();
                        if sum != before
                            || now.iter().map(|b| b.seq).max() != seq_before
                            || active(&now) != a_before
                        {
                            break;
                        }
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                Step::WaitRetire => std::thread::sleep(Duration::from_micros(500)),
            }
        }
        done.rings += 1;
    }
    done.took = started.elapsed();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model of the kernel's TPACKET_V3 filling (af_packet.c): frames go
    /// into the open block while they fit; the next frame closes it (hands
    /// it to the user) and opens the next, if that one is the kernel's;
    /// the timer closes a block that holds a frame.
    #[derive(Debug, Clone)]
    struct Kernel {
        blocks: Vec<Block>,
        fill: Vec<usize>,
        open: Option<usize>,
        next_seq: u64,
        per_block: usize,
    }

    impl Kernel {
        fn new(n: usize, per_block: usize) -> Self {
            let mut k = Self {
                blocks: vec![Block::default(); n],
                fill: vec![0; n],
                open: None,
                next_seq: 1,
                per_block,
            };
            k.open_block(0);
            k
        }
        fn open_block(&mut self, i: usize) {
            if self.blocks[i].user {
                self.open = None;
                return;
            }
            self.blocks[i] = Block {
                user: false,
                losing: false,
                num_pkts: 0,
                seq: self.next_seq,
            };
            self.next_seq += 1;
            self.fill[i] = 0;
            self.open = Some(i);
        }
        fn close(&mut self, i: usize) {
            self.blocks[i].user = true;
            self.open_block((i + 1) % self.blocks.len());
        }
        fn frame(&mut self) {
            let Some(i) = self.open else { return };
            if self.fill[i] == self.per_block {
                self.close(i);
                let Some(j) = self.open else { return };
                self.fill[j] = 1;
                self.blocks[j].num_pkts = 1;
            } else {
                self.fill[i] += 1;
                self.blocks[i].num_pkts += 1;
            }
        }
        fn timer(&mut self) {
            if let Some(i) = self.open {
                if self.blocks[i].num_pkts > 0 {
                    self.close(i);
                }
            }
        }
    }

    fn drive(n: usize, per_block: usize, target: usize) -> usize {
        let mut k = Kernel::new(n, per_block);
        let batch = (per_block / 2).max(1);
        for steps in 0..100_000 {
            match step(&k.blocks, target, batch) {
                Step::Done => return steps,
                Step::GiveBack(v) => {
                    for i in v {
                        k.blocks[i].user = false;
                        if k.open.is_none() {
                            k.open_block(i);
                        }
                    }
                }
                Step::Fill(m) => (0..m).for_each(|_| k.frame()),
                Step::WaitRetire => k.timer(),
            }
        }
        panic!("no realignment to block {target} of {n}: {k:?}");
    }

    #[test]
    fn every_target_of_every_ring_is_reached_empty() {
        for n in [1, 2, 3, 4, 8, 32] {
            for per_block in [1, 2, 3, 40] {
                for target in 0..n {
                    drive(n, per_block, target);
                }
            }
        }
    }

    #[test]
    fn a_fresh_ring_at_its_recorded_block_needs_nothing() {
        let k = Kernel::new(8, 4);
        assert_eq!(step(&k.blocks, 0, 2), Step::Done);
        assert!(!unread(&k.blocks));
    }

    #[test]
    fn frames_in_the_open_block_or_a_users_block_are_unread() {
        let mut k = Kernel::new(4, 4);
        k.frame();
        assert!(unread(&k.blocks));
        k.timer();
        assert!(k.blocks[0].user);
        assert_eq!(active(&k.blocks), 1);
        assert!(unread(&k.blocks));
        k.blocks[0].user = false;
        assert!(!unread(&k.blocks));
    }

    proptest::proptest! {
        /// Whatever traffic and timers did to the ring, the realignment
        /// ends with the kernel filling the target block, empty, and no
        /// block with the user.
        #[test]
        fn realignment_from_any_state(n in 1usize..12, per_block in 1usize..6, ops in proptest::collection::vec(0u8..3, 0..80), target in 0usize..12) {
            let mut k = Kernel::new(n, per_block);
            for op in ops {
                match op {
                    0 => k.frame(),
                    1 => k.timer(),
                    _ => {
                        for i in 0..n {
                            if k.blocks[i].user {
                                k.blocks[i].user = false;
                                if k.open.is_none() { k.open_block(i); }
                                break;
                            }
                        }
                    }
                }
            }
            let target = target % n;
            let batch = (per_block / 2).max(1);
            let mut done = false;
            for _ in 0..100_000 {
                match step(&k.blocks, target, batch) {
                    Step::Done => { done = true; break; }
                    Step::GiveBack(v) => for i in v {
                        k.blocks[i].user = false;
                        if k.open.is_none() { k.open_block(i); }
                    },
                    Step::Fill(m) => (0..m).for_each(|_| k.frame()),
                    Step::WaitRetire => k.timer(),
                }
            }
            proptest::prop_assert!(done);
            proptest::prop_assert_eq!(k.open, Some(target));
            proptest::prop_assert_eq!(k.blocks[target].num_pkts, 0);
            proptest::prop_assert!(!k.blocks.iter().any(|b| b.user));
        }
    }
}
