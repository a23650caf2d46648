//! `nham-bench throughput` as a user runs it: a run that measures gives
//! non-zero rates (1518-byte frames included), and a run that cannot
//! measure fails with a message and a non-zero exit, never a rate of 0.

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_nham-bench"))
        .arg("throughput")
        .args(args)
        .output()
        .expect("running nham-bench")
}

/// The tests share two cores: one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

#[test]
fn full_size_frames_cross_the_sff_and_the_baseline() {
    let _serial = serial();
    let run = bench(&[
        "--vnfs",
        "0",
        "--frame-size",
        "1518",
        "--trial-ms",
        "300",
        "--json",
    ]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let last = stdout.lines().last().expect("a JSON line");
    let report: serde_json::Value = serde_json::from_str(last).expect("JSON");
    for key in ["sff_pps", "baseline_pps"] {
        let pps = report[key].as_f64().expect(key);
        // 1 GbE line rate at 1518 B is 81,274 frames/s; well below that
        // would say the frames do not cross at all.
        assert!(pps > 10_000.0, "{key} {pps}: {stdout}");
    }
    assert_eq!(report["repetitions"], 5);
}

#[test]
fn a_run_that_cannot_converge_fails() {
    let _serial = serial();
    let run = bench(&["--vnfs", "1", "--duration", "2"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "exit 0: {stderr}");
    assert!(
        stderr.contains("not converged within --duration 2 s"),
        "{stderr}"
    );
}
