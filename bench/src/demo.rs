//! `nham-bench demo`: the main job. For each mechanism `nhamd` implements,
//! it starts `nhamd` in network namespaces, has it build a chain of the four
//! stateful sample VNFs (monitor, firewall, NAT, emitter), sends traffic,
//! crashes VNFs through the API (one, one, two at once, all four at once,
//! one) and prints a table: detection and recovery times, downtime,
//! checkpoint pauses, frames lost / duplicated / reordered at the sink, and
//! whether every VNF ended in its failure-free state. It ends with host
//! failures: the same chain's VNFs on two other hosts of a lab cluster
//! (etcd on three), 1R-AA with replicas on a third, hosts failing in turn.

use anyhow::{bail, Result};
use nham_bench::ha::{self, HaSpec};
use nham_control::api::{self, Mechanism};
use nham_vnf::Kind;

pub(crate) fn run() -> Result<()> {
    let nhamd = ha::sibling_binary("nhamd", "NHAM_NHAMD")?;
    let vnf_bin = ha::sibling_binary("nham-vnf", "NHAM_VNF")?;
    let rounds = vec![1, 1, 2, 4, 1];
    println!(
        "NHAM demo: nhamd protects a live chain of 4 VNF processes (monitor, firewall, NAT, emitter),\n\
         each in its own network namespace, AF_XDP SFF, real CRIU checkpoints; 4000 frames/s;\n\
         VNFs killed with SIGKILL through the gRPC API in rounds of {rounds:?} (9 crashes per mechanism; MR-AA: member 0 of each victim).\n"
    );
    let mut rows = Vec::new();
    for mechanism in [
        Mechanism::Mechanism0r,
        Mechanism::Mechanism1rAs,
        Mechanism::Mechanism1rAa,
        Mechanism::MrAa,
    ] {
        eprintln!("running {} ...", mechanism.as_str_name());
        let r = ha::run(&HaSpec {
            unit_stop: false,
            progress: false,
            mechanism,
            kinds: Kind::ALL.to_vec(),
            foreign_vnfs: Vec::new(),
            fault: api::Fault::Crash,
            rounds: rounds.clone(),
            rate: 4000.0,
            gap: std::time::Duration::from_millis(400),
            checkpoint_interval_ms: 200,
            flows: 64,
            nhamd: nhamd.clone(),
            vnf_bin: vnf_bin.clone(),
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
            tail: std::time::Duration::ZERO,
            replicas: 0,
            // The 0R run's nhamd is scraped as Prometheus would.
            metrics: mechanism == Mechanism::Mechanism0r,
            ..HaSpec::default()
        })?;
        rows.push(r);
    }
    println!(
        "{:<16} {:>8} {:>14} {:>20} {:>14} {:>14} {:>6} {:>6} {:>6} {:>8}",
        "mechanism",
        "failures",
        "detect p50 ms",
        "recovery p50/p99 ms",
        "downtime p50",
        "ckpt pause p50",
        "lost",
        "dup",
        "reord",
        "states"
    );
    for r in &rows {
        println!(
            "{:<16} {:>8} {:>14.2} {:>20} {:>14.1} {:>14.1} {:>6} {:>6} {:>6} {:>8}",
            r.mechanism.trim_start_matches("MECHANISM_"),
            r.failures,
            r.detection_ms.p50,
            format!("{:.1} / {:.1}", r.recovery_ms.p50, r.recovery_ms.p99),
            r.downtime_ms.p50,
            r.checkpoint_pause_ms.p50,
            r.lost,
            r.duplicated,
            r.reordered,
            if r.state_mismatches == 0 {
                "equal"
            } else {
                "DIFFER"
            }
        );
    }
    println!(
        "\nrecovery = failure detected (pidfd) to the VNF restored and replaying (MR-AA: the crashed\n\
         member restored and catching up, while the other two serve); downtime = longest\n\
         silence at the sink around a failure; states = every VNF's final state against a failure-free run."
    );
    if let Some(r) = rows.iter().find(|r| !r.metrics.is_empty()) {
        println!(
            "\nnhamd's /metrics at the end of the {} run, as Prometheus scrapes it (excerpt):",
            r.mechanism.trim_start_matches("MECHANISM_")
        );
        let shown = [
            "nham_up",
            "nham_vnf_failures_total",
            "nham_vnf_recoveries_total",
            "nham_recovery_seconds_count",
            "nham_checkpoints_total",
            "nham_checkpoint_age_seconds",
            "nham_hold_packets",
        ];
        for line in r.metrics.lines().filter(|l| {
            shown
                .iter()
                .any(|m| l.starts_with(&format!("{m}{{")) || l.starts_with(&format!("{m} ")))
        }) {
            println!("  {line}");
        }
    }
    if rows.iter().any(|r| !r.is_exact()) {
        bail!("exactly-once violated: {rows:?}");
    }
    host_failures(&nhamd, &vnf_bin)
}

/// The finale: whole hosts fail. `nhamd` (host "sff") keeps the SFF; the
/// four VNFs run on h0 and h1 under 1R-AA, each with a replica on another
/// host; three times a host fails (its link down, every process of it
/// killed at once) and comes back empty.
fn host_failures(nhamd: &std::path::Path, vnf_bin: &std::path::Path) -> Result<()> {
    println!(
        "\nHost failures: the same chain, its VNFs on hosts h0 and h1 of a lab cluster (three hosts in\n\
         namespaces of their own, etcd on each, nhamd on each; the chain's nhamd keeps the SFF), 1R-AA\n\
         with each replica on another host; a host fails (link down, all its processes killed) 3 times.\n"
    );
    let mut hosts = nham_bench::hosts::HostLab::new(3, 3)?;
    for i in 0..3 {
        hosts.start_nhamd(i, nhamd)?;
    }
    let spec = HaSpec {
        mechanism: Mechanism::Mechanism1rAa,
        kinds: Kind::ALL.to_vec(),
        fault: api::Fault::Crash,
        rounds: vec![1; 3],
        rate: 2000.0,
        gap: std::time::Duration::from_millis(600),
        checkpoint_interval_ms: 400,
        flows: 64,
        nhamd: nhamd.to_path_buf(),
        vnf_bin: vnf_bin.to_path_buf(),
        placement: (0..Kind::ALL.len())
            .map(|i| format!("h{}", i % 2))
            .collect(),
        host_failures: true,
        ..HaSpec::default()
    };
    let r = ha::run_in_cluster(&spec, &mut hosts, "sff")?;
    println!(
        "1R-AA across hosts: {} VNF failures in {} host failures; detection p50 {:.1} ms (heartbeats every 10 ms,\n\
         judged after 5); running again p50 {:.1} ms after the host was last heard; downtime p50 {:.1} ms;\n\
         lost {}, duplicated {}, reordered {}; VNF states {}.",
        r.failures,
        r.rounds,
        r.detection_ms.p50,
        r.recovery_ms.p50,
        r.downtime_ms.p50,
        r.lost,
        r.duplicated,
        r.reordered,
        if r.state_mismatches == 0 {
            "equal to the failure-free run"
        } else {
            "DIFFER"
        }
    );
    if !r.is_exact() {
        bail!("exactly-once violated across hosts: {r:?}");
    }
    Ok(())
}
