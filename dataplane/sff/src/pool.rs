//! Fixed-size packet buffers for the SFF: one contiguous arena of slots
//! addressed by `u32` handles, so that Hold/Release buffers move 4-byte
//! handles, never bytes.
//!
//! Invariants: a handle is either on the free list or owned by exactly one
//! place (a `BufferRx` entry, a `BufferTx` entry, or an egress burst);
//! `alloc` on an empty pool returns `None` and callers size their bursts by
//! [`Pool::available`] first, so the SFF never has to drop for lack of a
//! buffer once it took a frame off a ring.

/// Bytes per slot: the largest frame the SFF handles plus NSH headroom.
pub const SLOT: usize = 2048;

/// The packet buffers of one SFF.
#[derive(Debug)]
pub struct Pool {
    bytes: Vec<u8>,
    lens: Vec<u16>,
    free: Vec<u32>,
    /// Per slot, whether it is handed out (an O(1) double-free check; a
    /// search of the free list made every release O(slots)).
    in_use: Vec<bool>,
}

impl Pool {
    /// A pool of `slots` buffers, all free.
    pub fn new(slots: usize) -> Self {
        Self {
            bytes: vec![0; slots * SLOT],
            lens: vec![0; slots],
            free: (0..slots as u32).rev().collect(),
            in_use: vec![false; slots],
        }
    }

    /// Free slots.
    pub fn available(&self) -> usize {
        self.free.len()
    }

    /// Total slots.
    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    /// Adds `slots` free buffers; the handles of the others stay valid.
    pub fn grow(&mut self, slots: usize) {
        let old = self.capacity();
        self.bytes.resize((old + slots) * SLOT, 0);
        self.lens.resize(old + slots, 0);
        self.in_use.resize(old + slots, false);
        self.free.extend((old..old + slots).rev().map(|s| s as u32));
    }

    /// Takes a free slot.
    pub fn alloc(&mut self) -> Option<u32> {
        let slot = self.free.pop()?;
        self.in_use[slot as usize] = true;
        Some(slot)
    }

    /// Returns a slot to the pool.
    pub fn release(&mut self, slot: u32) {
        let used = std::mem::replace(&mut self.in_use[slot as usize], false);
        debug_assert!(used, "double free of slot {slot}");
        if used {
            self.free.push(slot);
        }
    }

    /// The frame in `slot`.
    pub fn frame(&self, slot: u32) -> &[u8] {
        let start = slot as usize * SLOT;
        &self.bytes[start..start + usize::from(self.lens[slot as usize])]
    }

    /// The whole buffer of `slot`, to write a frame into; set its length
    /// with [`set_len`](Self::set_len).
    pub fn buffer_mut(&mut self, slot: u32) -> &mut [u8] {
        let start = slot as usize * SLOT;
        &mut self.bytes[start..start + SLOT]
    }

    /// Sets the frame length of `slot`.
    pub fn set_len(&mut self, slot: u32, len: usize) {
        self.lens[slot as usize] = len.min(SLOT) as u16;
    }

    /// The frame in `slot`, mutable.
    pub fn frame_mut(&mut self, slot: u32) -> &mut [u8] {
        let start = slot as usize * SLOT;
        let len = usize::from(self.lens[slot as usize]);
        &mut self.bytes[start..start + len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_write_release() {
        let mut p = Pool::new(2);
        let a = p.alloc().unwrap();
        let b = p.alloc().unwrap();
        assert_eq!(p.alloc(), None);
        p.buffer_mut(a)[..3].copy_from_slice(b"abc");
        p.set_len(a, 3);
        assert_eq!(p.frame(a), b"abc");
        p.release(b);
        assert_eq!(p.available(), 1);
        assert_eq!(p.alloc(), Some(b));
        p.grow(2);
        assert_eq!((p.capacity(), p.available()), (4, 2));
        assert_eq!(p.frame(a), b"abc", "a slot handed out keeps its frame");
        let (c, d) = (p.alloc().unwrap(), p.alloc().unwrap());
        assert!(c >= 2 && d >= 2 && c != d);
        assert_eq!(p.alloc(), None);
    }
}
