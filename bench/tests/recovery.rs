//! Exactly-once through real crashes: a chain of four `nham-vnf` processes
//! (monitor, firewall, NAT, emitter) under traffic, every VNF checkpointed
//! with CRIU through the Hold/Release protocol, VNFs killed with SIGKILL
//! (one at a time, then two at once) and recovered with 0R (restore of the
//! latest checkpoint, replay of the held packets). The sink must get exactly
//! the failure-free output and every VNF must end in its failure-free state.
//! Needs root and CRIU >= 4.2 (scripts/setup.sh).

use std::path::Path;
use std::time::Duration;

use nham_bench::lab::{protected_trial, Lab, LabSff};
use nham_traffic::{FrameSize, TrafficSpec};
use nham_vnf::Kind;

#[test]
fn zero_r_recovers_crashed_vnfs_exactly_once() {
    let kinds = Kind::ALL;
    let mut lab = Lab::new(&kinds, Path::new(env!("CARGO_BIN_EXE_nham-vnf"))).expect("lab");
    lab.set_sink_quiet(Duration::from_secs(10));
    let sff = lab
        .start_sff(LabSff {
            protect: true,
            ..LabSff::default()
        })
        .expect("SFF");
    let spec = TrafficSpec {
        size: FrameSize::Fixed(64),
        flows: 32,
        count: 6000,
        rate: Some(3000.0),
    };
    let frames = spec.frames();
    let (expected, states) = nham_vnf::reference(&kinds, &frames);
    let images = std::env::temp_dir().join(nham_netns::unique_name("nham-images-"));
    let run = protected_trial(&mut lab, &sff, frames, spec.rate, &expected, &images)
        .expect("protected trial");
    let _ = std::fs::remove_dir_all(&images);
    let stats = sff.counters().snapshot();
    let got_states = lab.vnf_states().expect("VNF states");
    eprintln!(
        "{} checkpoints (pause p50 {:.1} ms; failed safely: {:?}), {} recoveries ({} from an image, p50 {:.1} ms), duplicates suppressed {}, stale {}",
        run.checkpoints,
        run.pause_ms.get(run.pause_ms.len() / 2).copied().unwrap_or(0.0),
        run.failed_checkpoints,
        run.recoveries,
        run.restored,
        run.recovery_ms.get(run.recovery_ms.len() / 2).copied().unwrap_or(0.0),
        stats.duplicates,
        stats.stale
    );
    let v = run.trial.verdict;
    assert!(
        run.recoveries >= 3,
        "the test crashed VNFs ({} recoveries)",
        run.recoveries
    );
    assert_eq!(
        (v.lost, v.duplicated, v.reordered),
        (0, 0, 0),
        "{v:?} {stats:?}"
    );
    assert!(v.digest_equal, "output differs from the failure-free run");
    for (i, (g, w)) in got_states.iter().zip(&states).enumerate() {
        assert_eq!(
            g, w,
            "VNF {i} ({:?}) state differs from the failure-free run",
            kinds[i]
        );
    }
}
