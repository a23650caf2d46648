//! `nham-bench throughput`: the highest offered rate with zero loss, for a
//! plain AF_XDP L2 forwarder (the baseline) and for the SFF with N sample
//! VNFs, on the same topology in one invocation, and their ratio.
//!
//! Each forwarder gets half of `--duration`. A first trial offers as much
//! as the generator can send; then a binary search over the offered rate
//! (trials of about `--trial-ms` each) finds the highest rate at which the
//! sink gets exactly the expected output (no loss, no duplicate, no
//! reordering, equal digest). Every trial starts from fresh VNF processes,
//! so expected outputs and states are those of a failure-free reference run
//! of exactly that trial's frames.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use nham_bench::lab::{Lab, LabSff, Trial};
use nham_sff::PollPolicy;
use nham_traffic::{FrameSize, TrafficSpec};
use nham_vnf::Kind;
use serde::Serialize;

/// Arguments of `nham-bench throughput`.
#[derive(Args, Debug)]
pub(crate) struct ThroughputArgs {
    /// VNFs in the chain (0 to 8), cycling monitor, firewall, NAT, emitter.
    #[arg(long, default_value_t = 0)]
    vnfs: usize,
    /// Frame size on the wire (64 to 1518) or `imix`.
    #[arg(long, default_value = "64")]
    frame_size: FrameSize,
    /// Total measuring time in seconds (split between baseline and SFF).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Length of one search trial, in milliseconds.
    #[arg(long, default_value_t = 700)]
    trial_ms: u64,
    /// Flows in the generated traffic.
    #[arg(long, default_value_t = 64)]
    flows: u32,
    /// Pin the forwarder to this core (default: the last one; the generator,
    /// sink and VNFs share the others).
    #[arg(long)]
    core: Option<usize>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Clone, Copy, Default)]
struct Latency {
    p50: f64,
    p99: f64,
    p999: f64,
}

#[derive(Serialize)]
struct Report {
    vnfs: usize,
    frame_size: String,
    sff_pps: f64,
    baseline_pps: f64,
    ratio: f64,
    offered_pps: f64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    latency_us: Latency,
    baseline_latency_us: Latency,
    sff_trials: usize,
    baseline_trials: usize,
    /// The forwarder carried everything the generator could offer: the rate
    /// is a lower bound set by the generator, not the forwarder's limit.
    sff_generator_limited: bool,
    baseline_generator_limited: bool,
}

struct Best {
    rate: f64,
    trial: Option<Trial>,
    trials: usize,
    generator_limited: bool,
}

fn vnf_binary() -> Result<PathBuf> {
    let me = std::env::current_exe()?;
    let bin = me.with_file_name("nham-vnf");
    if !bin.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p nham-bench`",
            bin.display()
        );
    }
    Ok(bin)
}

fn exact(t: &Trial) -> bool {
    let v = t.verdict;
    v.lost == 0 && v.duplicated == 0 && v.reordered == 0 && v.digest_equal
}

/// Runs one trial on a fresh lab (fresh VNF state).
fn one_trial(kinds: &[Kind], baseline: bool, spec: &TrafficSpec, sff: LabSff) -> Result<Trial> {
    let mut lab = Lab::new(kinds, &vnf_binary()?)?;
    lab.set_traffic_core(sff.traffic_core);
    let frames = spec.frames();
    if baseline {
        let fwd = lab.start_baseline(sff)?;
        let trial = lab.trial(spec, &frames, &fwd)?;
        fwd.stop()?;
        return Ok(trial);
    }
    // The SFF as nhamd runs it: the nham-sff process.
    let fwd = lab.start_sff_process(sff)?;
    let expected = nham_vnf::reference(kinds, &frames).0;
    let trial = lab.trial(spec, &expected, &fwd)?;
    fwd.stop()?;
    Ok(trial)
}

fn search(kinds: &[Kind], baseline: bool, args: &ThroughputArgs, budget: Duration) -> Result<Best> {
    let started = Instant::now();
    // The forwarder gets the last core to itself by default; generator,
    // sink and VNFs share the others.
    let core = args.core.or_else(|| {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        (n >= 2).then_some(n - 1)
    });
    let sff = LabSff {
        core,
        poll: PollPolicy::default(),
        burst: 32,
        // Generator and sink on the first core, away from the forwarder.
        traffic_core: core.map(|_| 0),
        protect: false,
    };
    let trial_secs = args.trial_ms as f64 / 1000.0;
    // Capacity probes: as fast as the generator goes. If the forwarder
    // keeps up with all of them, the generator is the limit: report the
    // median of three probes and say so.
    let probe_count = if kinds.is_empty() { 400_000 } else { 40_000 };
    let probe_spec = TrafficSpec {
        size: args.frame_size,
        flows: args.flows,
        count: probe_count,
        rate: None,
    };
    let mut probes = vec![one_trial(kinds, baseline, &probe_spec, sff)?];
    while probes.iter().all(exact) && probes.len() < 3 && started.elapsed() < budget {
        probes.push(one_trial(kinds, baseline, &probe_spec, sff)?);
    }
    let mut best = Best {
        rate: 0.0,
        trial: None,
        trials: probes.len(),
        generator_limited: false,
    };
    if probes.iter().all(exact) {
        probes.sort_by(|a, b| a.offered_pps.total_cmp(&b.offered_pps));
        let median = probes.swap_remove(probes.len() / 2);
        best.rate = median.offered_pps;
        best.trial = Some(median);
        best.generator_limited = true;
        return Ok(best);
    }
    let probe = probes.pop().expect("at least one probe");
    let mut hi = probe.offered_pps.max(probe.delivered_pps);
    let mut lo = 0.0;
    let mut rate = probe.delivered_pps * 0.95;
    while started.elapsed() < budget && hi - lo > hi * 0.02 {
        let count = ((rate * trial_secs) as u64).max(1000);
        let t = one_trial(
            kinds,
            baseline,
            &TrafficSpec {
                size: args.frame_size,
                flows: args.flows,
                count,
                rate: Some(rate),
            },
            sff,
        )?;
        best.trials += 1;
        if exact(&t) {
            // The generator may fall short of the asked rate: count what it
            // achieved.
            let achieved = t.offered_pps.min(rate);
            if achieved > best.rate {
                best.rate = achieved;
                best.trial = Some(t);
            }
            lo = rate;
        } else {
            hi = rate;
        }
        rate = (lo + hi) / 2.0;
    }
    Ok(best)
}

fn latency(t: &Option<Trial>) -> Latency {
    t.as_ref()
        .map(|t| {
            let h = &t.received.latency_us;
            Latency {
                p50: h.value_at_quantile(0.5) as f64,
                p99: h.value_at_quantile(0.99) as f64,
                p999: h.value_at_quantile(0.999) as f64,
            }
        })
        .unwrap_or_default()
}

/// Runs the measurement and prints the report.
pub(crate) fn run(args: &ThroughputArgs) -> Result<()> {
    if args.vnfs > 8 {
        bail!("--vnfs must be 0 to 8, got {}", args.vnfs);
    }
    if args.duration <= 0.0 {
        bail!("--duration must be positive");
    }
    let kinds: Vec<Kind> = (0..args.vnfs).map(|i| Kind::ALL[i % 4]).collect();
    let half = Duration::from_secs_f64(args.duration / 2.0);
    let base = search(&kinds, true, args, half).context("baseline (plain AF_XDP forwarder)")?;
    let sff = search(&kinds, false, args, half).context("SFF")?;
    let v = sff.trial.as_ref().map(|t| t.verdict).unwrap_or_default();
    let report = Report {
        vnfs: args.vnfs,
        frame_size: match args.frame_size {
            FrameSize::Fixed(n) => n.to_string(),
            FrameSize::Imix => "imix".into(),
        },
        sff_pps: sff.rate,
        baseline_pps: base.rate,
        ratio: if base.rate > 0.0 {
            sff.rate / base.rate
        } else {
            0.0
        },
        offered_pps: sff.trial.as_ref().map_or(0.0, |t| t.offered_pps),
        lost: v.lost,
        duplicated: v.duplicated,
        reordered: v.reordered,
        latency_us: latency(&sff.trial),
        baseline_latency_us: latency(&base.trial),
        sff_trials: sff.trials,
        baseline_trials: base.trials,
        sff_generator_limited: sff.generator_limited,
        baseline_generator_limited: base.generator_limited,
    };
    println!(
        "chain of {} VNF(s) {:?}, frames {}",
        args.vnfs, kinds, report.frame_size
    );
    println!(
        "  baseline (plain AF_XDP L2 forwarder): {:>10.0} pps zero-loss ({} trials), latency p50 {} us p99 {} us",
        report.baseline_pps, report.baseline_trials, report.baseline_latency_us.p50, report.baseline_latency_us.p99
    );
    println!(
        "  SFF (classify, NSH, Hold/Release{}): {:>10.0} pps zero-loss ({} trials), latency p50 {} us p99 {} us p99.9 {} us",
        if args.vnfs > 0 { ", VNFs" } else { "" },
        report.sff_pps,
        report.sff_trials,
        report.latency_us.p50,
        report.latency_us.p99,
        report.latency_us.p999
    );
    println!(
        "  ratio SFF / baseline: {:.3}; at the reported rate lost {}, duplicated {}, reordered {}",
        report.ratio, report.lost, report.duplicated, report.reordered
    );
    if report.sff_generator_limited || report.baseline_generator_limited {
        println!(
            "  note: {} carried everything the generator offered; that rate is the generator's limit, a lower bound",
            match (report.sff_generator_limited, report.baseline_generator_limited) {
                (true, true) => "both",
                (true, false) => "the SFF",
                _ => "the baseline",
            }
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(())
}
