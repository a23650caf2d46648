//! Exactly-once through real crashes: a chain of four `nham-vnf` processes
//! (monitor, firewall, NAT, emitter) under traffic, every VNF checkpointed
//! with CRIU through the Hold/Release protocol, VNFs killed with SIGKILL
//! (one at a time, then two at once) and recovered with 0R (restore of the
//! latest checkpoint, replay of the held packets). The sink must get exactly
//! the failure-free output and every VNF must end in its failure-free state.
//! Needs root and CRIU >= 4.2 (scripts/setup.sh).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nham_bench::lab::{Lab, LabSff};
use nham_control::protect::ProtectedVnf;
use nham_traffic::{FrameSize, TrafficSpec};
use nham_vnf::Kind;

fn kill_and_wait(pid: u32) {
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    // Our child: reap it. Restored by CRIU: not ours, wait until it is gone.
    if nix::sys::wait::waitpid(p, None).is_err() {
        while Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

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
    let (expected, states) = nham_vnf::reference(&kinds, &spec.frames());
    let images = std::env::temp_dir().join(nham_netns::unique_name("nham-images-"));
    let mut vnfs: Vec<ProtectedVnf> = (0..kinds.len())
        .map(|i| {
            ProtectedVnf::new(
                i,
                lab.vnf_pid(i),
                &lab.vnf_netns(i).path(),
                &images.join(format!("vnf{i}")),
                lab.vnf_command(i),
            )
        })
        .collect();
    let done = AtomicBool::new(false);
    let (mut checkpoints, mut recoveries, mut restored) = (0, 0, 0);
    let mut pauses = Vec::new();
    let mut recovery_ms = Vec::new();
    let trial = std::thread::scope(|s| {
        let lab = &lab;
        let sff_ref = &sff;
        let (expected, done) = (&expected, &done);
        let t = s.spawn(move || {
            let r = lab.trial(&spec, expected, sff_ref);
            done.store(true, Ordering::Relaxed);
            r
        });
        let mut round = 0usize;
        while !done.load(Ordering::Relaxed) {
            for v in vnfs.iter_mut() {
                let c = v.checkpoint(&sff).expect("checkpoint");
                checkpoints += 1;
                pauses.push(c.pause.as_secs_f64() * 1e3);
            }
            round += 1;
            // Crash one VNF, then another, then two at once, ...
            let victims: Vec<usize> = match round % 3 {
                1 => vec![round % 4],
                2 => vec![(round + 1) % 4, (round + 2) % 4],
                _ => vec![],
            };
            // Let some traffic flow past the checkpoint first, so that the
            // replay has work to do.
            std::thread::sleep(Duration::from_millis(40));
            for &i in &victims {
                kill_and_wait(vnfs[i].pid);
            }
            for &i in &victims {
                let r = vnfs[i].recover(&sff).expect("recover");
                recoveries += 1;
                restored += usize::from(r.restored);
                recovery_ms.push(r.duration.as_secs_f64() * 1e3);
            }
        }
        t.join().unwrap()
    })
    .expect("trial");
    for (i, v) in vnfs.iter().enumerate() {
        lab.set_vnf_pid(i, v.pid);
    }
    // The sink can be complete while a VNF restored at the end still
    // replays (its outputs are all duplicates): let deliveries settle
    // before reading states.
    let mut last = sff.counters().snapshot().delivered;
    loop {
        std::thread::sleep(Duration::from_millis(300));
        let now = sff.counters().snapshot().delivered;
        if now == last {
            break;
        }
        last = now;
    }
    let stats = sff.counters().snapshot();
    let got_states = lab.vnf_states().expect("VNF states");
    let _ = std::fs::remove_dir_all(&images);
    pauses.sort_by(f64::total_cmp);
    recovery_ms.sort_by(f64::total_cmp);
    eprintln!(
        "{checkpoints} checkpoints (pause p50 {:.1} ms), {recoveries} recoveries ({restored} from an image, p50 {:.1} ms), \
         duplicates suppressed {}, stale {}",
        pauses.get(pauses.len() / 2).copied().unwrap_or(0.0),
        recovery_ms.get(recovery_ms.len() / 2).copied().unwrap_or(0.0),
        stats.duplicates,
        stats.stale
    );
    let v = trial.verdict;
    eprintln!(
        "sink: {} frames, kernel drops {}",
        trial.received.seqs.len(),
        trial.received.kernel_drops
    );
    assert!(
        recoveries >= 3,
        "the test crashed VNFs ({recoveries} recoveries)"
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
