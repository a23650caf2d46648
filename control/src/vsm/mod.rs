//! The VNF State Manager's decisions, each a state machine with time
//! passed in (no I/O; `protect` drives them):
//!
//! - [`synchronizer`]: the checkpoint protocol of one VNF up to the dump:
//!   drain, stop, settle, check, mark, dump, resume, report.

pub mod synchronizer;
