//! Exactly-once through real crashes, driven by the real daemon: `nhamd`
//! (its own process, in the lab's SFF namespace) protects a chain of the
//! stateful sample VNFs with 0R and with 1R-AS while traffic flows; VNFs
//! are crashed through the gRPC API (SIGKILL) ten times per mechanism, one
//! at a time, then two at once, then four at once. The sink must get
//! exactly the failure-free output and every VNF must end in its
//! failure-free state. A Python NSH-aware VNF, written for the test and
//! started as an arbitrary command, is protected the same way.
//! Needs root and CRIU >= 4.2 (scripts/setup.sh), and the `nhamd` binary
//! (built by `cargo test --workspace`; alone: `cargo build -p nham-control`).

use std::path::PathBuf;
use std::time::Duration;

use nham_bench::ha::{self, HaSpec};
use nham_control::api::Mechanism;
use nham_vnf::Kind;

/// One trial at a time: each wants both cores.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

fn spec(mechanism: Mechanism, kinds: Vec<Kind>, rounds: Vec<usize>) -> HaSpec {
    HaSpec {
        mechanism,
        kinds,
        foreign_vnfs: Vec::new(),
        rounds,
        fault: nham_control::api::Fault::Crash,
        rate: 3000.0,
        gap: Duration::from_millis(300),
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
        unit_stop: false,
        progress: false,
        metrics: false,
        ..HaSpec::default()
    }
}

fn check(r: &ha::HaReport) {
    eprintln!(
        "{}: {} failures, recovery p50 {:.1} ms (max {:.1}), detection p50 {:.2} ms, downtime p50 {:.1} ms, checkpoint pause p50 {:.1} ms over {} checkpoints, {} replayed outputs suppressed",
        r.mechanism,
        r.failures,
        r.recovery_ms.p50,
        r.recovery_ms.max,
        r.detection_ms.p50,
        r.downtime_ms.p50,
        r.checkpoint_pause_ms.p50,
        r.checkpoints,
        r.duplicates_suppressed
    );
    assert_eq!(r.failures, 10, "ten crashes injected");
    assert_eq!(r.recovery_ms.n, 10, "ten recoveries: {r:?}");
    assert_eq!(
        r.restored, 10,
        "every recovery restored a checkpoint: {r:?}"
    );
    assert_eq!((r.lost, r.duplicated, r.reordered), (0, 0, 0), "{r:?}");
    assert!(r.digest_equal, "output differs from the failure-free run");
    assert_eq!(r.state_mismatches, 0, "{:?}", r.mismatch_detail);
    assert!(r.is_exact());
    assert_eq!(
        r.nondeterministic_outputs, 0,
        "deterministic VNFs replay the same outputs: {r:?}"
    );
}

/// 1, 1, 1, 1, then 2 at once, then 4 at once: ten crashes.
const ROUNDS: [usize; 6] = [1, 1, 1, 1, 2, 4];

#[test]
fn zero_r_through_nhamd_survives_ten_crashes_exactly_once() {
    let _serial = serial();
    let r = ha::run(&spec(
        Mechanism::Mechanism0r,
        Kind::ALL.to_vec(),
        ROUNDS.to_vec(),
    ))
    .expect("trial");
    check(&r);
}

#[test]
fn one_r_as_through_nhamd_survives_ten_crashes_exactly_once() {
    let _serial = serial();
    let r = ha::run(&spec(
        Mechanism::Mechanism1rAs,
        Kind::ALL.to_vec(),
        ROUNDS.to_vec(),
    ))
    .expect("trial");
    check(&r);
}

#[test]
fn an_arbitrary_python_vnf_is_protected_the_same_way() {
    let _serial = serial();
    let mut s = spec(
        Mechanism::Mechanism0r,
        vec![Kind::Firewall],
        vec![1, 1, 2, 1],
    );
    s.foreign_vnfs = vec![vec![
        "python3".into(),
        concat!(env!("CARGO_MANIFEST_DIR"), "/vnf/python/nsh_counter.py").into(),
        "{state}".into(),
    ]];
    let r = ha::run(&s).expect("trial");
    eprintln!(
        "python chain: {} failures, recovery p50 {:.1} ms, checkpoint pause p50 {:.1} ms",
        r.failures, r.recovery_ms.p50, r.checkpoint_pause_ms.p50
    );
    assert_eq!(r.vnfs, 2);
    assert_eq!(r.failures, 5);
    assert!(r.restored >= 5, "{r:?}");
    assert!(r.is_exact(), "{r:?}");
}

/// Hangs (SIGSTOP) and cut-offs (the VNF's link down) have no exit to see:
/// the Failure Detector judges them from data-path probes (frames queued
/// and never read; no carrier), kills the VNF and recovers it.
#[test]
fn hangs_and_cut_offs_are_detected_and_recovered_exactly_once() {
    let _serial = serial();
    for fault in [
        nham_control::api::Fault::Hang,
        nham_control::api::Fault::CutOff,
    ] {
        let mut s = spec(Mechanism::Mechanism0r, Kind::ALL.to_vec(), vec![1, 1, 2]);
        s.fault = fault;
        let r = ha::run(&s).expect("trial");
        eprintln!(
            "{}: detection p50 {:.1} ms, max {:.1} ms; recovery p50 {:.1} ms",
            fault.as_str_name(),
            r.detection_ms.p50,
            r.detection_ms.max,
            r.recovery_ms.p50
        );
        assert_eq!(r.failures, 4, "{fault:?}");
        assert_eq!(r.recovery_ms.n, 4, "{fault:?}: {r:?}");
        assert!(r.detection_ms.max < 2000.0, "{fault:?}: {r:?}");
        assert!(r.is_exact(), "{fault:?}: {r:?}");
    }
}

/// MR-AA members hang and are cut off (members 0 and 1 of a VNF at once,
/// member 2 serving): the detector probes every member, kills the judged
/// ones (bringing a cut-off link up again), and they are restored and
/// catch up: nothing lost.
#[test]
fn mr_aa_member_hangs_and_cut_offs_are_detected_and_recovered() {
    let _serial = serial();
    for fault in [
        nham_control::api::Fault::Hang,
        nham_control::api::Fault::CutOff,
    ] {
        let mut s = spec(Mechanism::MrAa, Kind::ALL.to_vec(), vec![1, 1]);
        s.fault = fault;
        s.members = vec![0, 1];
        let r = ha::run(&s).expect("trial");
        eprintln!(
            "MR-AA {}: detection p50 {:.1} ms, max {:.1} ms; downtime p50 {:.1} ms",
            fault.as_str_name(),
            r.detection_ms.p50,
            r.detection_ms.max,
            r.downtime_ms.p50
        );
        assert_eq!(
            r.recovery_ms.n, 4,
            "{fault:?}: a recovery per member: {r:?}"
        );
        assert_eq!(r.detection_ms.n, 4, "{fault:?}: {r:?}");
        assert!(r.detection_ms.max < 2000.0, "{fault:?}: {r:?}");
        assert!(r.is_exact(), "{fault:?}: {r:?}");
        assert_eq!(r.nondeterministic_outputs, 0, "{fault:?}: {r:?}");
    }
}

/// `nhamd` killed (SIGKILL) and started again under traffic, three times:
/// once alone, once with a VNF killed while no daemon watched, once with
/// two; then crashes through the new daemon of VNFs it adopted. The SFF
/// process goes on holding packets meanwhile; the new daemon re-attaches,
/// settles any checkpoint left half-done, adopts the live VNFs and restores
/// the dead ones: nothing lost, duplicated or reordered, states equal.
#[test]
fn nhamd_restarted_under_traffic_loses_nothing() {
    let _serial = serial();
    for mechanism in [Mechanism::Mechanism0r, Mechanism::Mechanism1rAs] {
        let mut s = spec(mechanism, Kind::ALL.to_vec(), vec![0, 1, 1, 2, 1]);
        s.restarts = vec![0, 1, 3];
        let r = ha::run(&s).expect("trial");
        eprintln!(
            "{} with 3 daemon restarts: {} VNF failures, downtime p50 {:.1} ms max {:.1} ms, lost {} dup {} reordered {}",
            r.mechanism, r.failures, r.downtime_ms.p50, r.downtime_ms.max, r.lost, r.duplicated, r.reordered
        );
        assert_eq!(r.failures, 5, "{r:?}");
        assert!(r.is_exact(), "{r:?}");
    }
}

/// `systemctl restart nhamd` under traffic, as `packaging/nhamd.service`
/// runs it: nhamd in a cgroup of its own (the unit's), stopped as systemd
/// stops the unit (SIGTERM, then `cgroup.kill` of the unit's group:
/// `KillMode=mixed`) twice, the second time with a VNF killed while no
/// nhamd runs; then a crash seen by the last nhamd. The chain's SFF, VNFs
/// and standbys are in groups of their own, out of the unit's: the chain
/// forwards on through each stop, and the next nhamd re-attaches to it.
/// Nothing lost, duplicated or reordered; states equal.
#[test]
fn a_systemd_restart_of_nhamd_leaves_the_chain_forwarding() {
    let _serial = serial();
    let mut s = spec(Mechanism::Mechanism1rAs, Kind::ALL.to_vec(), vec![0, 1, 1]);
    s.restarts = vec![0, 1];
    s.unit_stop = true;
    let r = ha::run(&s).expect("trial");
    eprintln!(
        "1R-AS with 2 unit stops: {} VNF failures, downtime p50 {:.1} ms max {:.1} ms, lost {} dup {} reordered {}",
        r.failures, r.downtime_ms.p50, r.downtime_ms.max, r.lost, r.duplicated, r.reordered
    );
    assert_eq!(r.failures, 2, "{r:?}");
    assert!(r.is_exact(), "{r:?}");
}

/// MR-AA under daemon restarts: members 0 and 1 of the victims are killed
/// while no daemon runs; the restarted nhamd re-attaches to the members
/// still running (the SFF kept serving through them) and recovers the dead
/// ones, which catch up: nothing lost.
#[test]
fn mr_aa_survives_nhamd_restarts_under_traffic() {
    let _serial = serial();
    let mut s = spec(Mechanism::MrAa, Kind::ALL.to_vec(), vec![0, 1, 1, 2, 1]);
    s.restarts = vec![0, 1, 3];
    s.members = vec![0, 1];
    let r = ha::run(&s).expect("trial");
    eprintln!(
        "MR-AA with 3 daemon restarts: {} VNF failures (2 members each), {} recoveries, downtime p50 {:.1} ms, lost {} dup {} reordered {}",
        r.failures, r.recovery_ms.n, r.downtime_ms.p50, r.lost, r.duplicated, r.reordered
    );
    assert_eq!(r.failures, 5, "{r:?}");
    assert!(r.is_exact(), "{r:?}");
    assert_eq!(r.nondeterministic_outputs, 0, "{r:?}");
}

/// A NAT that picks a random port for each new flow is not deterministic:
/// after its crash the replay translates the same packets differently. The
/// SFF keeps a digest of each output a restore may make the VNF emit again,
/// sees the replayed outputs differ, reports it (`NonDeterminismDetected`
/// event, `nondeterministic_outputs` counter) and never forwards the second,
/// different copy: the sink still gets each packet once, in order.
#[test]
fn a_non_deterministic_vnf_is_detected_and_never_forwards_a_second_copy() {
    let _serial = serial();
    let mut s = spec(
        Mechanism::Mechanism0r,
        vec![Kind::NatRandom, Kind::Monitor],
        vec![1, 1],
    );
    // Every frame a new flow: every replayed packet gets a new random port.
    s.flows = 100_000;
    let r = ha::run(&s).expect("trial");
    eprintln!(
        "non-deterministic NAT: {} replayed outputs differed, events {:?}",
        r.nondeterministic_outputs, r.nondeterminism_events
    );
    assert!(r.nondeterministic_outputs > 0, "{r:?}");
    assert!(
        r.nondeterminism_events
            .iter()
            .any(|e| e.starts_with("vnf0:")),
        "{r:?}"
    );
    assert_eq!((r.lost, r.duplicated, r.reordered), (0, 0, 0), "{r:?}");
}

/// Before each crash the victim's newest checkpoint is taken and then
/// corrupted on disk. The State Manager detects it (format, BLAKE3) and
/// never restores it: 0R restores the checkpoint before it (the SFF kept
/// the packets since that one), 1R-AS its standby's own staged copy. Either
/// way the output and the states are exactly those of a failure-free run.
#[test]
fn a_corrupt_checkpoint_is_never_restored_and_an_older_one_or_the_standby_is_used() {
    let _serial = serial();
    for mechanism in [Mechanism::Mechanism0r, Mechanism::Mechanism1rAs] {
        let mut s = spec(mechanism, Kind::ALL.to_vec(), vec![1, 1, 2]);
        s.corrupt_newest = true;
        let r = ha::run(&s).expect("trial");
        eprintln!(
            "{} with corrupt newest checkpoints: {} failures, fallbacks {:?}",
            r.mechanism, r.failures, r.fallbacks
        );
        assert!(r.is_exact(), "{r:?}");
        assert_eq!(r.recovery_ms.n, 4, "{r:?}");
        if mechanism == Mechanism::Mechanism0r {
            assert!(!r.fallbacks.is_empty(), "{r:?}");
        }
    }
}

fn exact_with(r: &ha::HaReport, failures: usize) {
    eprintln!(
        "{}: {} failures, {} recoveries, recovery p50 {:.1} ms max {:.1} ms, downtime p50 {:.1} ms",
        r.mechanism,
        r.failures,
        r.recovery_ms.n,
        r.recovery_ms.p50,
        r.recovery_ms.max,
        r.downtime_ms.p50
    );
    assert_eq!(r.failures, failures, "{r:?}");
    assert!(
        r.recovery_ms.n >= failures,
        "every failure recovered: {r:?}"
    );
    assert!(r.is_exact(), "{r:?}");
}

/// Fault matrix: each crash lands while its VNF is frozen and CRIU is
/// dumping it (the checkpoint fails, nothing is released, the VNF is
/// restored from the previous checkpoint).
#[test]
fn a_crash_during_a_checkpoint_loses_nothing() {
    let _serial = serial();
    for mechanism in [Mechanism::Mechanism0r, Mechanism::Mechanism1rAs] {
        let mut s = spec(mechanism, Kind::ALL.to_vec(), vec![1, 1, 1, 1]);
        s.during_checkpoint = true;
        exact_with(&ha::run(&s).expect("trial"), 4);
    }
}

/// Fault matrix: while one VNF is being recovered, the next one crashes.
#[test]
fn a_second_failure_during_a_recovery_loses_nothing() {
    let _serial = serial();
    for mechanism in [Mechanism::Mechanism0r, Mechanism::Mechanism1rAs] {
        let mut s = spec(mechanism, Kind::ALL.to_vec(), vec![1, 1, 1]);
        s.second_failure = true;
        exact_with(&ha::run(&s).expect("trial"), 6);
    }
}

/// Mechanisms change at runtime, under traffic: the NAT, unprotected at
/// first, goes 0R → MR-AA (3 members) → MR-AA (2) → 1R-AA → 1R-AS → 0R
/// by `SetMechanism`, and crashes after each change. The sink and every
/// VNF's state equal the failure-free run.
#[test]
fn a_vnf_walks_through_every_mechanism_under_traffic_with_a_crash_after_each() {
    let _serial = serial();
    let mut s = spec(Mechanism::None, Kind::ALL.to_vec(), vec![1; 6]);
    s.same_victim = Some(2);
    s.walk = vec![
        (Mechanism::Mechanism0r, 0),
        (Mechanism::MrAa, 3),
        (Mechanism::MrAa, 2),
        (Mechanism::Mechanism1rAa, 0),
        (Mechanism::Mechanism1rAs, 0),
        (Mechanism::Mechanism0r, 0),
    ];
    exact_with(&ha::run(&s).expect("trial"), 6);
}

/// Fault matrix: the same VNF (the NAT) fails six times in a row.
#[test]
fn the_same_vnf_failing_repeatedly_loses_nothing() {
    let _serial = serial();
    let mut s = spec(Mechanism::Mechanism0r, Kind::ALL.to_vec(), vec![1; 6]);
    s.same_victim = Some(2);
    exact_with(&ha::run(&s).expect("trial"), 6);
}

/// Fault matrix: every VNF of an 8-VNF chain crashes at once, twice.
#[test]
fn every_vnf_of_an_eight_vnf_chain_at_once_loses_nothing() {
    let _serial = serial();
    for mechanism in [Mechanism::Mechanism0r, Mechanism::Mechanism1rAs] {
        let s = spec(mechanism, ha::sample_chain(8), vec![8, 8]);
        exact_with(&ha::run(&s).expect("trial"), 16);
    }
}

/// 1R-AA: a stopped replica is restored from every checkpoint in a
/// namespace of its own behind the hop's standby port; a crash is a switch
/// of port, SIGCONT and the replay. Ten crashes (1, 1, 1, 1, 2, 4 at once).
#[test]
fn one_r_aa_through_nhamd_survives_ten_crashes_exactly_once() {
    let _serial = serial();
    let r = ha::run(&spec(
        Mechanism::Mechanism1rAa,
        Kind::ALL.to_vec(),
        ROUNDS.to_vec(),
    ))
    .expect("trial");
    eprintln!(
        "1R-AA: {} of {} recoveries switched to the replica",
        r.switched, r.recovery_ms.n
    );
    check(&r);
}

/// MR-AA: every VNF has three members fed the same input; the first copy
/// of each output moves on. Ten crashes of member 0 (the one checkpointed;
/// 1, 1, 1, 1, 2, 4 VNFs at once): the other members serve meanwhile, the
/// crashed one is restored and catches up. The members agree on every
/// output (none divergent).
#[test]
fn mr_aa_through_nhamd_serves_through_ten_member_crashes_exactly_once() {
    let _serial = serial();
    let r = ha::run(&spec(Mechanism::MrAa, Kind::ALL.to_vec(), ROUNDS.to_vec())).expect("trial");
    check(&r);
}

/// MR-AA: all three members of a VNF crashed at once (1, 1, 2 VNFs per
/// round): the last failure fails the hop, which is restored and replays;
/// the other members are restored and catch up.
#[test]
fn mr_aa_all_members_of_a_vnf_at_once_lose_nothing() {
    let _serial = serial();
    let mut s = spec(Mechanism::MrAa, Kind::ALL.to_vec(), vec![1, 1, 2]);
    s.members = vec![0, 1, 2];
    let r = ha::run(&s).expect("trial");
    eprintln!(
        "MR-AA, all members at once: {} recoveries, downtime p50 {:.1} ms",
        r.recovery_ms.n, r.downtime_ms.p50
    );
    assert_eq!(r.failures, 4);
    assert_eq!(r.recovery_ms.n, 12, "a recovery per member: {r:?}");
    assert!(r.is_exact(), "{r:?}");
    assert_eq!(r.nondeterministic_outputs, 0, "{r:?}");
}
