//! The Fault Management System's decisions, each a state machine fed
//! events with time passed in (no I/O; the daemon's `service` drives them):
//!
//! - [`detector`]: the Failure Detector's judgement of hangs, cut-offs and
//!   dropped input from data-path probes (crashes need no judgement: the
//!   exit watch and pidfds say so);
//! - [`recovery`]: the Failure Recovery of one VNF process: what a failure,
//!   a verdict, a heal or a restore's outcome leads to.

pub mod detector;
pub mod recovery;
