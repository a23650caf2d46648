//! The Fault Management System. Its decisions are state machines fed
//! events with time passed in (no I/O; the daemon's `service` drives them);
//! the Replica Manager does the work of a recovery:
//!
//! - [`detector`]: the Failure Detector's judgement of hangs, cut-offs and
//!   dropped input from data-path probes (crashes need no judgement: the
//!   exit watch and pidfds say so);
//! - [`recovery`]: the Failure Recovery of one VNF process: what a failure,
//!   a verdict, a heal or a restore's outcome leads to;
//! - [`replica_manager`]: each protected VNF's Replica Manager, one module
//!   per mechanism (its places, copies, standby or members, what a commit
//!   hands it, how it brings the VNF back); the checkpoints themselves are
//!   the State Synchronizer's (`vsm::checkpointer`).

pub mod detector;
pub mod recovery;
pub mod replica_manager;
