//! A view of another process's `TPACKET_V3` receive ring (`PACKET_RX_RING`
//! on an `AF_PACKET` socket), mapped from a duplicate of its socket: the
//! pages are the same, so NHAM sees what the VNF sees.
//!
//! CRIU restores such a socket's ring *shape*, not its content or the
//! kernel's position in it (the kernel starts again at block 0, while the
//! restored program goes on waiting at the block it had reached). NHAM
//! uses this view to see whether the VNF read everything before a
//! checkpoint freezes it, which block the kernel fills then, and, after a
//! restore, to hand blocks it filled with filler back to the kernel until
//! the kernel's position is the program's again. The decisions are made
//! elsewhere (`nham_control::vsm::ring`); this module only reads and writes
//! block headers.
//!
//! The block header (`struct tpacket_block_desc`, linux/if_packet.h):
//! `version` (u32), `offset_to_priv` (u32), then `struct tpacket_hdr_v1`:
//! `block_status` (u32, byte 8), `num_pkts` (u32, byte 12),
//! `offset_to_first_pkt`, `blk_len`, `seq_num` (u64, byte 24). The
//! kernel's packet_mmap documentation: "the user has to [...] set
//! block_status to TP_STATUS_KERNEL once he has finished processing"; a
//! block is the user's while `block_status & TP_STATUS_USER`.
#![allow(unsafe_code)]

use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// `TP_STATUS_USER`: the block is the program's to read.
pub const TP_STATUS_USER: u32 = 1;
/// `TP_STATUS_KERNEL`: the block is the kernel's to fill.
pub const TP_STATUS_KERNEL: u32 = 0;
/// `TP_STATUS_LOSING`: set on blocks the kernel hands over while its drop
/// counter (`tp_drops`, which only `PACKET_STATISTICS` reads and resets) is
/// not zero: the ring was full and a frame was lost.
pub const TP_STATUS_LOSING: u32 = 4;

const BLOCK_STATUS: usize = 8;
const NUM_PKTS: usize = 12;
const SEQ_NUM: usize = 24;
const BLOCK_HEADER: usize = 32;

/// Errors of mapping a ring.
#[derive(Debug, thiserror::Error)]
pub enum RingError {
    /// Geometry the kernel would not have accepted.
    #[error("ring of {block_nr} blocks of {block_size} bytes cannot be mapped")]
    Geometry {
        /// Bytes per block.
        block_size: u32,
        /// Blocks.
        block_nr: u32,
    },
    /// `mmap` refused.
    #[error("mapping the ring: {0}")]
    Map(std::io::Error),
}

/// One block's header, as read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Block {
    /// The program's to read (`TP_STATUS_USER`).
    pub user: bool,
    /// Handed over while the ring was losing frames (`TP_STATUS_LOSING`).
    pub losing: bool,
    /// Frames in it.
    pub num_pkts: u32,
    /// The kernel's sequence number of its last opening (1, 2, ...; 0:
    /// never opened since the ring was made).
    pub seq: u64,
}

/// A mapped `TPACKET_V3` receive ring.
#[derive(Debug)]
pub struct RxRing {
    map: NonNull<u8>,
    len: usize,
    block_size: usize,
    block_nr: usize,
    _socket: OwnedFd,
}

// SAFETY: the mapping is plain shared memory owned by this value; every
// access goes through atomics.
unsafe impl Send for RxRing {}
// SAFETY: as for Send: `&RxRing` only reads and writes through atomics.
unsafe impl Sync for RxRing {}

impl RxRing {
    /// Maps the receive ring of `socket` (a duplicate of the VNF's socket,
    /// `pidfd_getfd(2)`), whose geometry sock_diag reported.
    pub fn map(socket: OwnedFd, block_size: u32, block_nr: u32) -> Result<Self, RingError> {
        let geometry = RingError::Geometry {
            block_size,
            block_nr,
        };
        let (bs, nr) = (block_size as usize, block_nr as usize);
        if bs < BLOCK_HEADER || bs % 8 != 0 || nr == 0 {
            return Err(geometry);
        }
        let len = bs.checked_mul(nr).ok_or(geometry)?;
        // SAFETY: a fresh shared mapping of the socket's ring, of exactly
        // the ring's size (the kernel refuses any other), at an address the
        // kernel picks: it aliases no Rust object. It is unmapped in Drop.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                rustix::mm::ProtFlags::READ | rustix::mm::ProtFlags::WRITE,
                rustix::mm::MapFlags::SHARED,
                &socket,
                0,
            )
        }
        .map_err(|e| RingError::Map(e.into()))?;
        let map = NonNull::new(ptr.cast::<u8>()).ok_or(RingError::Map(std::io::Error::other(
            "mmap returned a null pointer",
        )))?;
        Ok(Self {
            map,
            len,
            block_size: bs,
            block_nr: nr,
            _socket: socket,
        })
    }

    /// Blocks in the ring.
    pub fn block_nr(&self) -> usize {
        self.block_nr
    }

    fn word32(&self, block: usize, offset: usize) -> &AtomicU32 {
        assert!(block < self.block_nr);
        // SAFETY: `block * block_size + offset + 4 <= len` (offset < 32 <=
        // block_size), 4-aligned (block_size is a multiple of 8, the map
        // page-aligned); the kernel and the VNF access these words
        // concurrently, as atomics do; the reference does not outlive
        // `self`, which keeps the mapping.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(block * self.block_size + offset)
                .cast::<AtomicU32>()
        }
    }

    fn word64(&self, block: usize, offset: usize) -> &AtomicU64 {
        assert!(block < self.block_nr);
        // SAFETY: as in `word32`, with `offset` 8-aligned.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(block * self.block_size + offset)
                .cast::<AtomicU64>()
        }
    }

    /// Every block's header, in ring order.
    pub fn blocks(&self) -> Vec<Block> {
        (0..self.block_nr)
            .map(|i| {
                let status = self.word32(i, BLOCK_STATUS).load(Ordering::Acquire);
                Block {
                    user: status & TP_STATUS_USER != 0,
                    losing: status & TP_STATUS_USER != 0 && status & TP_STATUS_LOSING != 0,
                    num_pkts: self.word32(i, NUM_PKTS).load(Ordering::Acquire),
                    seq: self.word64(i, SEQ_NUM).load(Ordering::Acquire),
                }
            })
            .collect()
    }

    /// Hands block `i` back to the kernel, unread (only for a block NHAM
    /// filled itself, while the VNF is stopped).
    pub fn give_back(&self, i: usize) {
        self.word32(i, BLOCK_STATUS)
            .store(TP_STATUS_KERNEL, Ordering::Release);
    }
}

impl Drop for RxRing {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, of `len` bytes; no reference
        // into it outlives `&self` borrows, which end before drop.
        let _ = unsafe { rustix::mm::munmap(self.map.as_ptr().cast(), self.len) };
    }
}
