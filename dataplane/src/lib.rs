//! NHAM data plane.
//!
//! This crate owns everything that touches packets and decides their fate,
//! without doing any I/O itself:
//!
//! - [`nsh`]: the RFC 8300 Network Service Header as a checked view over
//!   bytes ([`nsh::NshPacket`]) plus a value type ([`nsh::NshRepr`]), and the
//!   NHAM sequence-number metadata ([`nsh::NhamMetadata`]).
//! - [`classifier`]: maps an Ethernet frame's 5-tuple to a Service Function
//!   Path (SPI) and encapsulates it in NSH.
//! - [`hold`]: the Hold/Release core. Per-VNF [`hold::BufferRx`] and
//!   [`hold::BufferTx`], checkpoint marks, replay and per-hop duplicate
//!   suppression, as state machines fed events with time passed in.
//! - [`sim`]: an in-memory chain of deterministic VNF models driven through
//!   the core, with failures injected; the reference the model tests and the
//!   demo compare against.
//!
//! - [`window`]: flow control towards one VNF, in the bytes its socket is
//!   charged, so the SFF never sends more than the VNF's socket can hold.
//!
//! Invariant: no function in this crate blocks, sleeps, reads a clock or
//! performs a system call; parsing untrusted bytes never panics.
#![forbid(unsafe_code)]

pub mod classifier;
pub mod hold;
pub mod nsh;
pub mod sim;
pub mod window;
