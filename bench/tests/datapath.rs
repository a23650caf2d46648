//! The data path for real: an SFF thread on AF_XDP ports, `nham-vnf`
//! processes in network namespaces of their own, traffic from a source
//! namespace to a sink namespace. Needs root (CI runs as root).

use std::path::Path;

use nham_bench::lab::{Lab, LabSff};
use nham_traffic::{FrameSize, TrafficSpec};
use nham_vnf::Kind;

fn vnf_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_nham-vnf"))
}

fn spec(count: u64) -> TrafficSpec {
    TrafficSpec {
        size: FrameSize::Fixed(64),
        flows: 16,
        count,
        rate: Some(5_000.0),
    }
}

fn run_chain(kinds: &[Kind], count: u64) {
    let lab = Lab::new(kinds, vnf_bin()).expect("building the lab");
    let sff = lab.start_sff(LabSff::default()).expect("starting the SFF");
    let spec = spec(count);
    let (expected, states) = nham_vnf::reference(kinds, &spec.frames());
    let trial = lab.trial(&spec, &expected, &sff).expect("trial");
    let stats = sff.stop().expect("SFF ran");
    let v = trial.verdict;
    assert_eq!(
        (v.lost, v.duplicated, v.reordered),
        (0, 0, 0),
        "{kinds:?}: {v:?}, sff {stats:?}"
    );
    assert!(
        v.digest_equal,
        "{kinds:?}: output differs from the reference"
    );
    assert_eq!(
        stats.malformed_from_vnf + stats.si_mismatch + stats.tx_refused,
        0,
        "{stats:?}"
    );
    assert_eq!(
        lab.vnf_states().expect("VNF states"),
        states,
        "{kinds:?}: VNF states"
    );
}

#[test]
fn forwards_without_vnfs() {
    run_chain(&[], 2000);
}

#[test]
fn forwards_through_one_to_four_vnfs() {
    run_chain(&[Kind::Monitor], 2000);
    run_chain(&[Kind::Monitor, Kind::Firewall], 2000);
    run_chain(&Kind::ALL, 2000);
}

