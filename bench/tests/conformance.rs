//! The VNF conformance suite: VNFs written as people write them, not tuned
//! for NHAM, protected by `nhamd` under traffic while they crash (two at
//! once included), hang and lose their link. Each must come out exactly
//! once: nothing lost, duplicated or reordered at the sink, and every VNF's
//! final state (packets, bytes and a CRC-32 of what it served, in order)
//! equal to the failure-free run's.
//!
//! The VNFs (one chain of all of them):
//! - `bench/vnf/python/nsh_counter.py`: Python, an `ETH_P_ALL` socket with
//!   Linux's default receive buffer (its own outputs are charged to it too);
//! - `bench/vnf/conformance/nsh_vnf.c`, built here with `cc`, in six
//!   styles: `small` (a 64 KiB `SO_RCVBUF`, bound to the NSH EtherType),
//!   `slow` (0.5 ms per frame: its queue fills), `batch` (`recvmmsg`, then
//!   a 2 ms sleep), `threads` (a reader thread handing frames in order to a
//!   writer thread), `enetdown` (exits when its link goes down), `ring`
//!   (reads through a `TPACKET_V3` mmap ring bound to `ETH_P_ALL`, which
//!   CRIU restores empty and at block 0: NHAM realigns it).
//!
//! `NHAM_CONFORMANCE_ONLY=<style>` runs a chain of two VNFs of that one C
//! style instead (to look at one).
//!
//! The promise tested is the README's: "an unmodified VNF loses nothing
//! across failures", for any VNF that keeps the contract in "Writing or
//! bringing a VNF".

use std::path::PathBuf;
use std::time::Duration;

use nham_bench::ha::{self, HaSpec};
use nham_control::api::{Fault, Mechanism};

fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// The C VNF, compiled once per test binary run.
fn c_vnf() -> PathBuf {
    static BIN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        let src = concat!(env!("CARGO_MANIFEST_DIR"), "/vnf/conformance/nsh_vnf.c");
        let out = std::env::temp_dir().join(nham_netns::unique_name("nsh_vnf-"));
        let status = std::process::Command::new("cc")
            .args(["-O2", "-Wall", "-pthread", "-o"])
            .arg(&out)
            .arg(src)
            .status()
            .expect("running cc");
        assert!(status.success(), "cc {src} failed: {status}");
        out
    })
    .clone()
}

/// Every conformance VNF, in chain order.
fn conformance_vnfs() -> Vec<Vec<String>> {
    let c = c_vnf().display().to_string();
    let mut v = vec![vec![
        "python3".to_string(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/vnf/python/nsh_counter.py").to_string(),
        "{state}".to_string(),
    ]];
    for style in ["small", "slow", "batch", "threads", "enetdown", "ring"] {
        v.push(vec![c.clone(), "{state}".into(), style.into()]);
    }
    v
}

fn spec(mechanism: Mechanism, fault: Fault, rounds: Vec<usize>) -> HaSpec {
    HaSpec {
        unit_stop: false,
        progress: false,
        metrics: false,
        mechanism,
        kinds: Vec::new(),
        foreign_vnfs: match std::env::var("NHAM_CONFORMANCE_ONLY") {
            Ok(style) => vec![vec![c_vnf().display().to_string(), "{state}".into(), style]; 2],
            Err(_) => conformance_vnfs(),
        },
        rounds,
        fault,
        // The slow VNF serves under 2,000 frames/s: room to catch up after
        // a replay.
        rate: 800.0,
        gap: Duration::from_millis(400),
        checkpoint_interval_ms: 200,
        flows: 32,
        nhamd: ha::sibling_binary("nhamd", "NHAM_NHAMD").expect("nhamd binary"),
        vnf_bin: PathBuf::from(env!("CARGO_BIN_EXE_nham-vnf")),
        restarts: Vec::new(),
        corrupt_newest: false,
        during_checkpoint: false,
        same_victim: None,
        second_failure: false,
        expedite_rcu: false,
        members: Vec::new(),
        walk: Vec::new(),
        placement: Vec::new(),
        host_failures: false,
        host_restarts: false,
        tail: Duration::ZERO,
        replicas: 0,
        ..HaSpec::default()
    }
}

fn exact(what: &str, r: &ha::HaReport, failures: usize) {
    eprintln!(
        "conformance {what}: {} failures {:?}, detection p50 {:.1} ms max {:.1} ms, {} recoveries (p50 {:.1} ms), lost {} dup {} reordered {}, state mismatches {}, nondeterministic outputs {}, input dropped {} frames {:?}, causes {:?}",
        r.failures,
        r.failures_by_vnf,
        r.detection_ms.p50,
        r.detection_ms.max,
        r.recovery_ms.n,
        r.recovery_ms.p50,
        r.lost,
        r.duplicated,
        r.reordered,
        r.state_mismatches,
        r.nondeterministic_outputs,
        r.stats.vnf_input_dropped,
        r.input_dropped_by_vnf,
        r.failure_causes,
    );
    assert_eq!(r.failures, failures, "{what}: {r:?}");
    assert!(
        r.recovery_ms.n >= failures,
        "{what}: every failure recovered: {r:?}"
    );
    assert_eq!(
        (r.lost, r.duplicated, r.reordered),
        (0, 0, 0),
        "{what}: {r:?}"
    );
    assert!(
        r.digest_equal,
        "{what}: output differs from the failure-free run"
    );
    assert_eq!(r.state_mismatches, 0, "{what}: {:?}", r.mismatch_detail);
    assert_eq!(
        r.nondeterministic_outputs, 0,
        "{what}: deterministic VNFs were reported non-deterministic: {r:?}"
    );
    assert!(r.is_exact(), "{what}: {r:?}");
}

/// Rounds of faults that hit every one of the seven VNFs (round r hits the
/// VNFs from 3r on, mod 7: {0, 1}, {3, 4}, {6}, {2, 3}, {5, 6}), four of
/// them two at once.
const EVERY_VNF: [usize; 5] = [2, 2, 1, 2, 2];

/// Crashes, one and two at once, under each mechanism.
#[test]
fn conformance_vnfs_survive_crashes_under_every_mechanism() {
    let _serial = serial();
    for mechanism in [
        Mechanism::Mechanism0r,
        Mechanism::Mechanism1rAs,
        Mechanism::Mechanism1rAa,
        Mechanism::MrAa,
    ] {
        let r = ha::run(&spec(mechanism, Fault::Crash, EVERY_VNF.to_vec())).expect("trial");
        exact(mechanism.as_str_name(), &r, 9);
    }
}

/// 1R-AA through 24 crashes (8 of them two at once): failovers alternate
/// between two namespaces while the replica is refreshed in the other one
/// after every checkpoint. (A refresh still restoring when a failover lands
/// in its namespace made a socket there that no VNF process holds: its
/// drops are not the VNF's.) It stalled twice in earlier runs (two VNFs
/// not recovered in 20 s); the cause was not established. The suspect, the
/// SFF's unbounded port drain on `Restored`, is bounded now and says so in
/// `sff.log` when the bound is hit; 10 runs in a row since came out exact.
#[test]
fn conformance_vnfs_survive_a_long_run_of_1r_aa_failovers() {
    let _serial = serial();
    let r = ha::run(&spec(
        Mechanism::Mechanism1rAa,
        Fault::Crash,
        [1, 2].repeat(8),
    ))
    .expect("trial");
    exact("1R-AA, 24 crashes", &r, 24);
}

/// Hangs and cut-offs (the `enetdown` VNF exits on the latter), under
/// each mechanism (MR-AA: member 0, the one checkpointed).
#[test]
fn conformance_vnfs_survive_hangs_and_cut_offs() {
    let _serial = serial();
    for mechanism in [
        Mechanism::Mechanism0r,
        Mechanism::Mechanism1rAs,
        Mechanism::Mechanism1rAa,
        Mechanism::MrAa,
    ] {
        for fault in [Fault::Hang, Fault::CutOff] {
            let r = ha::run(&spec(mechanism, fault, EVERY_VNF.to_vec())).expect("trial");
            exact(
                &format!("{} {}", mechanism.as_str_name(), fault.as_str_name()),
                &r,
                9,
            );
        }
    }
}
