//! NHAM integration tests live in `tests/tests/`; this library only hosts
//! helpers they share.
//!
//! - `model.rs`: the exactly-once model test (proptest) of whole chains of
//!   1 to 8 VNF models under random failures, and its negative control with
//!   the paper's release rule.
//! - `tshark.rs`: frames NHAM emits, written to a pcap and dissected by tshark.
//! - `fuzz_nsh.rs`: the NSH parser fuzz target (bolero) run as a test.
#![forbid(unsafe_code)]

use std::path::PathBuf;

/// A path under the system temporary directory unique to this process and
/// `name`, so parallel tests never collide.
pub fn unique_temp_path(name: &str) -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("nham-{}-{n}-{name}", std::process::id()))
}
