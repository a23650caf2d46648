//! `nham-bench recovery`: recovery time, downtime and exactly-once of a
//! chain protected by `nhamd`, with failures injected under traffic (see
//! `nham_bench::ha`).

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};
use nham_bench::ha::{self, HaSpec};
use nham_control::api;

/// The mechanisms `nhamd` implements.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum MechanismArg {
    /// No replica: a new instance restored from the state database.
    #[value(name = "0r")]
    ZeroR,
    /// A standby prepared in advance imports the latest checkpoint.
    #[value(name = "1r-as")]
    OneRAs,
    /// An active replica restored from every checkpoint, stopped; failover
    /// switches the hop to it.
    #[value(name = "1r-aa")]
    OneRAa,
    /// Three active members fed the same input; the first copy of each
    /// output moves on; a failed member is restored and catches up while
    /// the others serve (member 0, the checkpointed one, is the one crashed).
    #[value(name = "mr-aa")]
    MrAa,
}

impl MechanismArg {
    pub(crate) fn api(self) -> api::Mechanism {
        match self {
            Self::ZeroR => api::Mechanism::Mechanism0r,
            Self::OneRAs => api::Mechanism::Mechanism1rAs,
            Self::OneRAa => api::Mechanism::Mechanism1rAa,
            Self::MrAa => api::Mechanism::MrAa,
        }
    }
}

/// How VNFs fail.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum FaultArg {
    /// SIGKILL.
    Crash,
    /// SIGSTOP (judged from data-path probes).
    Hang,
    /// Its link down (judged from the carrier).
    CutOff,
}

/// Arguments of `nham-bench recovery`.
#[derive(Args, Debug)]
pub(crate) struct RecoveryArgs {
    /// Resilience mechanism of every VNF.
    #[arg(long, value_enum)]
    mechanism: MechanismArg,
    /// VNFs in the chain (1 to 8): monitor, firewall, NAT, emitter, then
    /// monitor, emitter, monitor, monitor.
    #[arg(long, default_value_t = 4)]
    vnfs: usize,
    /// Failure rounds.
    #[arg(long, default_value_t = 10)]
    failures: usize,
    /// VNFs crashed at once in each round.
    #[arg(long, default_value_t = 1)]
    simultaneous: usize,
    /// Offered rate, frames per second.
    #[arg(long, default_value_t = 4000.0)]
    rate: f64,
    /// Traffic between failure rounds, ms.
    #[arg(long, default_value_t = 400)]
    gap_ms: u64,
    /// Checkpoint period of every VNF, ms.
    #[arg(long, default_value_t = 200)]
    checkpoint_interval_ms: u32,
    /// How VNFs fail.
    #[arg(long, value_enum, default_value = "crash")]
    fault: FaultArg,
    /// Host tuning: run nhamd with --expedite-rcu (expedited RCU grace
    /// periods while it runs: a VNF's exit is seen in well under a
    /// millisecond instead of after a grace period, about 10 ms here).
    #[arg(long)]
    expedite_rcu: bool,
    /// Keep each checkpoint on a second host before its commit: nhamd runs
    /// as one host of a lab cluster (three hosts, etcd on each, two more
    /// nhamds to take the copies), each commit waits for a copy on another
    /// host (issue 14's off-host commits). Compare `checkpoint copy` and
    /// `checkpoint pause` with a run without it.
    #[arg(long)]
    copies: bool,
    /// Host failures: nhamd is the chain's owner (its SFF) in a lab
    /// cluster of three more hosts (h0 to h2, etcd on each); the VNFs run
    /// on h0 and h1 in turn, h2 spare; each round fails the host running
    /// the round's VNF (its link down, every process of it killed at once)
    /// and its VNFs (mr-aa: its members) are recovered on the others by
    /// their mechanism; then the host comes back empty.
    /// Each checkpoint is kept on a second host too.
    #[arg(long)]
    hosts: bool,
    /// mr-aa: members per VNF, member 0 included (2 to 8; 0: nhamd's
    /// default, 3).
    #[arg(long, default_value_t = 0)]
    replicas: u32,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &RecoveryArgs) -> Result<()> {
    if !(1..=8).contains(&args.vnfs) {
        bail!("--vnfs must be 1 to 8, got {}", args.vnfs);
    }
    if !(1..=args.vnfs).contains(&args.simultaneous) {
        bail!(
            "--simultaneous must be 1 to --vnfs ({}), got {}",
            args.vnfs,
            args.simultaneous
        );
    }
    if args.failures == 0 {
        bail!("--failures must be at least 1");
    }
    let spec = HaSpec {
        mechanism: args.mechanism.api(),
        kinds: ha::sample_chain(args.vnfs),
        fault: match args.fault {
            FaultArg::Crash => api::Fault::Crash,
            FaultArg::Hang => api::Fault::Hang,
            FaultArg::CutOff => api::Fault::CutOff,
        },
        rounds: vec![args.simultaneous; args.failures],
        rate: args.rate,
        gap: std::time::Duration::from_millis(args.gap_ms),
        checkpoint_interval_ms: args.checkpoint_interval_ms,
        flows: 64,
        nhamd: ha::sibling_binary("nhamd", "NHAM_NHAMD")?,
        vnf_bin: ha::sibling_binary("nham-vnf", "NHAM_VNF")?,
        expedite_rcu: args.expedite_rcu,
        replicas: args.replicas,
        progress: !args.json,
        ..HaSpec::default()
    };
    if args.hosts && args.simultaneous != 1 {
        bail!(
            "--hosts: each round fails one host (with every VNF on it): leave --simultaneous at 1"
        );
    }
    let spec = HaSpec {
        placement: if args.hosts {
            (0..args.vnfs).map(|i| format!("h{}", i % 2)).collect()
        } else {
            Vec::new()
        },
        host_failures: args.hosts,
        ..spec
    };
    let r = if args.hosts {
        let mut hosts = nham_bench::hosts::HostLab::new(3, 3)?;
        for i in 0..3 {
            hosts.start_nhamd(i, &spec.nhamd)?;
        }
        ha::run_in_cluster(&spec, &mut hosts, "sff")?
    } else if args.copies {
        let mut hosts = nham_bench::hosts::HostLab::new(3, 3)?;
        for i in 0..2 {
            hosts.start_nhamd(i, &spec.nhamd)?;
        }
        ha::run_in_cluster(&spec, &mut hosts, "sff")?
    } else {
        ha::run(&spec)?
    };
    let row = |name: &str, s: &ha::Summary| {
        println!(
            "  {name:<22} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms   (n = {})",
            s.p50, s.p99, s.max, s.n
        )
    };
    println!(
        "nham-bench recovery: {} on {} VNFs, {} rounds of {} (live chain under nhamd, real CRIU, {} pps)",
        r.mechanism, r.vnfs, r.rounds, args.simultaneous, r.rate
    );
    if r.rcu_expedited {
        println!("  (host tuned: expedited RCU grace periods)");
    }
    row("detection", &r.detection_ms);
    row("recovery", &r.recovery_ms);
    row("failure to running", &r.failure_to_running_ms);
    row("downtime", &r.downtime_ms);
    row("  same, no failure", &r.downtime_baseline_ms);
    row("latency (every frame)", &r.latency_ms);
    row("checkpoint pause", &r.checkpoint_pause_ms);
    row("  of which draining", &r.checkpoint_drain_ms);
    row("  of which frozen", &r.checkpoint_frozen_ms);
    row("    of which dump", &r.checkpoint_dump_ms);
    if args.copies || args.hosts {
        row("checkpoint copy", &r.checkpoint_copy_ms);
    }
    println!(
        "  {} failures, {} recoveries from an image, {} recovery failures, {} checkpoints",
        r.failures, r.restored, r.recovery_failures, r.checkpoints
    );
    println!(
        "  sink: {} of {} expected frames; lost {}, duplicated {}, reordered {}, stream {}; {} replayed outputs suppressed",
        r.received,
        r.expected,
        r.lost,
        r.duplicated,
        r.reordered,
        if r.digest_equal { "equal" } else { "DIFFERENT" },
        r.duplicates_suppressed
    );
    println!(
        "  SFF: {} in, {} out, {} delivered to VNFs, {} stale discarded, {} malformed, {} VNF outputs lost, {} checkpoint marks put off (frames still leaving); sink socket drops {}",
        r.stats.ingress,
        r.stats.egress,
        r.stats.delivered,
        r.stats.stale_discarded,
        r.stats.malformed,
        r.stats.vnf_outputs_lost,
        r.stats.marks_in_transit,
        r.sink_kernel_drops
    );
    if r.stats.ingress_overflow > 0 {
        println!(
            "  OVERLOADED: the kernel dropped {} frames at the chain's ingress (hold buffers full: give nhamd more --hold-packets, or checkpoint more often); the sink is compared with all frames sent, so it shows them lost and what depends on them changed",
            r.stats.ingress_overflow
        );
    }
    println!(
        "  VNF states against the failure-free run: {} mismatches {:?}",
        r.state_mismatches, r.mismatch_detail
    );
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
    }
    if r.stats.ingress_overflow > 0 {
        bail!("overloaded: no exactly-once verdict");
    }
    if !r.is_exact() {
        bail!("exactly-once violated");
    }
    Ok(())
}
