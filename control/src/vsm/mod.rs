//! The VNF State Manager: what a VNF's state is kept with.
//!
//! - [`synchronizer`]: the checkpoint protocol of one VNF up to the dump
//!   as a state machine (drain, stop, settle, check, mark, dump, resume,
//!   report), time passed in, no I/O;
//! - [`checkpointer`]: its driver for one VNF (the SFF, signals, CRIU,
//!   the store), the checks that refuse a checkpoint which would count
//!   lost input as consumed, and a stored image restored into a place;
//! - [`database`]: the VNF State Database (redb index, zstd images with a
//!   format version and checksum);
//! - [`criu`]: dump and restore of one VNF process through CRIU's RPC
//!   (`criu swrk`);
//! - [`ring`]: VNFs reading through a `TPACKET_V3` ring: drained before a
//!   checkpoint, the kernel's position in the ring realigned after a
//!   restore.

pub mod checkpointer;
pub mod criu;
pub mod database;
mod error;
pub mod ring;
pub mod synchronizer;

pub use error::SyncError;
