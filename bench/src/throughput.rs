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
    /// Measure a chain protected by `nhamd` under this mechanism against
    /// the same chain unprotected (`none`: the unprotected chain alone),
    /// instead of the SFF against a plain forwarder: the zero-loss rate of
    /// each, trials interleaved, the median over `--trials` and the
    /// throughput lost; what its checkpoints cost (CPU time and bytes per
    /// checkpoint). Needs `--vnfs` 1 to 8 (default then 4).
    #[arg(long, value_enum)]
    mechanism: Option<ProtectionArg>,
    /// With `--mechanism`: the checkpoint period, ms.
    #[arg(long, default_value_t = 500)]
    checkpoint_interval_ms: u32,
    /// With `--mechanism`: repetitions of the search (at least 5).
    #[arg(long, default_value_t = 5)]
    trials: usize,
    /// With `--mechanism`: the ladder of offered rates, frames/s.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2000,4000,8000,12000,16000,20000,25000,30000,40000,50000"
    )]
    rates: Vec<f64>,
    /// With `--mechanism`: then a time series (100 ms bins of the rate
    /// delivered at the sink) of `--duration` seconds at 80 % of the
    /// protected chain's rate, a VNF crashed every this many seconds.
    #[arg(long)]
    fail_every_s: Option<f64>,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// `--mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ProtectionArg {
    /// Unprotected (no holding, no checkpoints).
    None,
    /// 0R.
    #[value(name = "0r")]
    ZeroR,
    /// 1R-AS.
    #[value(name = "1r-as")]
    OneRAs,
    /// 1R-AA.
    #[value(name = "1r-aa")]
    OneRAa,
    /// MR-AA.
    #[value(name = "mr-aa")]
    MrAa,
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
    if let Some(m) = args.mechanism {
        return protected(args, m);
    }
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

/// `--mechanism`: see [`crate::paper::throughput`].
fn protected(args: &ThroughputArgs, m: ProtectionArg) -> Result<()> {
    use crate::paper::throughput::{compare, Config, Setup};
    use nham_control::api::Mechanism;
    let vnfs = if args.vnfs == 0 { 4 } else { args.vnfs };
    if vnfs > 8 {
        bail!("--vnfs must be 1 to 8 with --mechanism, got {vnfs}");
    }
    if args.trials < 5 {
        bail!(
            "--trials must be at least 5 (a median of fewer says little), got {}",
            args.trials
        );
    }
    if args.rates.is_empty() || args.rates.windows(2).any(|w| w[0] >= w[1]) {
        bail!("--rates must be ascending, got {:?}", args.rates);
    }
    let config = match m {
        ProtectionArg::None => Config::None,
        ProtectionArg::ZeroR => Config::Protected(Mechanism::Mechanism0r),
        ProtectionArg::OneRAs => Config::Protected(Mechanism::Mechanism1rAs),
        ProtectionArg::OneRAa => Config::Protected(Mechanism::Mechanism1rAa),
        ProtectionArg::MrAa => Config::Protected(Mechanism::MrAa),
    };
    let configs: Vec<Config> = if config == Config::None {
        vec![Config::None]
    } else {
        vec![Config::None, config]
    };
    let setup = Setup {
        vnfs,
        checkpoint_interval_ms: args.checkpoint_interval_ms,
        ladder: args.rates.clone(),
        trials: args.trials,
        trial_s: (args.trial_ms as f64 / 1e3).max(2.0),
        nhamd: nham_bench::ha::sibling_binary("nhamd", "NHAM_NHAMD")?,
        vnf_bin: nham_bench::ha::sibling_binary("nham-vnf", "NHAM_VNF")?,
    };
    let c = compare(&setup, &configs)?;
    let base = c.summary(Config::None);
    let mine = c.summary(config);
    let lost_pct = c.lost_pct(config);
    let cost = c.checkpoint_cost(config);
    println!(
        "nham-bench throughput: {vnfs} VNFs under nhamd, {} against unprotected, checkpoints every {} ms, {} repetitions interleaved",
        config.name(),
        args.checkpoint_interval_ms,
        args.trials
    );
    println!(
        "  unprotected: {:.0} frames/s median [{:.0}, {:.0}]",
        base.p50, base.min, base.max
    );
    println!(
        "  {}: {:.0} frames/s median [{:.0}, {:.0}]; throughput lost {lost_pct:.1} %",
        config.name(),
        mine.p50,
        mine.min,
        mine.max
    );
    if let Some(cpu) = cost.cpu_s_per_checkpoint {
        println!(
            "  per checkpoint: {:.1} ms of CPU, image {:.0} KiB, stored {:.0} KiB",
            cpu * 1e3,
            cost.image_bytes.unwrap_or(0.0) / 1024.0,
            cost.stored_bytes.unwrap_or(0.0) / 1024.0
        );
    }
    if c.topped(Config::None) || c.topped(config) {
        println!(
            "  the top of --rates was carried: a lower bound, not the limit (give higher --rates)"
        );
    }
    if c.generator_bound {
        println!("  the ladder stopped at a rate the generator could not offer: rates are the generator's limit");
    }
    let mut series = Vec::new();
    if let Some(every) = args.fail_every_s {
        let rate = 0.8 * mine.p50;
        if rate <= 0.0 {
            bail!("no rate carried: no time series");
        }
        let rounds = ((args.duration / every).floor() as usize).max(1);
        let spec = nham_bench::ha::HaSpec {
            mechanism: match config {
                Config::None => Mechanism::None,
                Config::Protected(m) => m,
            },
            kinds: nham_bench::ha::sample_chain(vnfs),
            fault: nham_control::api::Fault::Crash,
            rate,
            gap: Duration::from_secs_f64(every),
            checkpoint_interval_ms: args.checkpoint_interval_ms,
            flows: args.flows,
            nhamd: setup.nhamd.clone(),
            vnf_bin: setup.vnf_bin.clone(),
            rounds: if config == Config::None {
                Vec::new()
            } else {
                vec![1; rounds]
            },
            traffic: Some(Duration::from_secs_f64(args.duration)),
            tail: Duration::from_secs_f64(args.duration),
            skip_late_rounds: true,
            ..Default::default()
        };
        let r = nham_bench::ha::run(&spec)?;
        series = crate::paper::bins(&r.samples.arrival_us, r.samples.traffic_s);
        println!("  time series at {rate:.0} frames/s offered, a failure every {every} s ({} failures, exact {}): delivered frames/s per 100 ms:", r.samples.rounds.len(), r.is_exact());
        for (i, v) in series.iter().enumerate() {
            println!("    {:>6.1} s {v:>8.0}", i as f64 / 10.0);
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "vnfs": vnfs,
                "mechanism": config.name(),
                "checkpoint_interval_ms": args.checkpoint_interval_ms,
                "unprotected_fps": base.p50,
                "unprotected_min_fps": base.min,
                "unprotected_max_fps": base.max,
                "protected_fps": mine.p50,
                "protected_min_fps": mine.min,
                "protected_max_fps": mine.max,
                "throughput_lost_pct": lost_pct,
                "cpu_ms_per_checkpoint": cost.cpu_s_per_checkpoint.map(|c| c * 1e3),
                "image_bytes_per_checkpoint": cost.image_bytes,
                "stored_bytes_per_checkpoint": cost.stored_bytes,
                "generator_bound": c.generator_bound,
                "top_of_ladder_carried": c.topped(Config::None) || c.topped(config),
                "series_fps_100ms": series,
            })
        );
    }
    if base.p50 <= 0.0 {
        bail!("the unprotected chain carried no rate of the ladder: nothing measured");
    }
    Ok(())
}
