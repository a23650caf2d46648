//! The CI soak: at least 300 failures of all nine kinds of the fault
//! matrix, across the four mechanisms (two VNFs at once included), each
//! segment checked for exactly-once and for deterministic VNFs reported
//! non-deterministic. A fixed seed, so a failure here replays with
//! `nham-bench soak --seed 12 --failures 300`; `nham-bench soak` runs
//! longer soaks on demand.

use std::path::PathBuf;

use nham_bench::ha;
use nham_bench::soak::{self, FaultKind, SoakSpec};

#[test]
fn three_hundred_failures_of_every_kind_under_every_mechanism_exactly_once() {
    let spec = SoakSpec {
        failures: 300,
        seed: 12,
        vnfs: 4,
        per_segment: 20,
        rate: 2000.0,
        mechanisms: Vec::new(),
        nhamd: ha::sibling_binary("nhamd", "NHAM_NHAMD").expect("nhamd binary"),
        vnf_bin: PathBuf::from(env!("CARGO_BIN_EXE_nham-vnf")),
        gap: std::time::Duration::from_millis(300),
        tight: false,
    };
    let started = std::time::Instant::now();
    let report = soak::run(&spec, |s| {
        eprintln!(
            "segment {} {} {:?}: {} failures, exact {}, nondeterministic {}, {:.0} s",
            s.index,
            s.mechanism,
            s.kind,
            s.report.failures,
            s.report.is_exact(),
            s.report.nondeterministic_outputs,
            s.seconds
        )
    })
    .expect("soak");
    eprintln!(
        "soak: {} failures in {} segments, {:.0} s",
        report.failures,
        report.segments.len(),
        started.elapsed().as_secs_f64()
    );
    if let Some(e) = &report.error {
        panic!("{e}");
    }
    if let Some(i) = report.first_violation {
        let s = &report.segments[i];
        panic!(
            "first violation: seed {}, segment {i} ({:?} under {}), after {} failures: {:?}",
            report.seed, s.kind, s.mechanism, s.failures_before, s.report
        );
    }
    assert!(report.failures >= 300, "{}", report.failures);
    for kind in FaultKind::ALL {
        assert!(
            report.segments.iter().any(|s| s.kind == kind),
            "{kind:?} never injected"
        );
    }
    for m in [
        "MECHANISM_0R",
        "MECHANISM_1R_AS",
        "MECHANISM_1R_AA",
        "MECHANISM_MR_AA",
    ] {
        assert!(
            report.segments.iter().any(|s| s.mechanism == m),
            "{m} never soaked"
        );
    }
}
