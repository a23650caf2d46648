//! `nham-bench throughput`: the highest offered rate with zero loss, for a
//! plain AF_XDP L2 forwarder (the baseline) and for the SFF with N sample
//! VNFs, on the same topology in one invocation, and their ratio.
//!
//! The search: probes as fast as the generator goes say roughly where
//! each forwarder's limit is; then `--trials` (at least 5) repetitions,
//! in each of which both forwarders walk one grid of rates 2 % apart
//! (their trials taking turns, so both see the same moments of a noisy
//! host), up until a rate is not carried. A rate is carried when the sink
//! gets exactly the expected output (no loss, no duplicate, no reordering,
//! equal digest) at the rate it was offered (not late, from buffers that
//! absorbed an overload). Reported: the median and spread of each
//! forwarder's rates and of the per-repetition ratio, and the latency at
//! 80 % of the median. A forwarder that carries nothing, a repetition that
//! does not converge, or a run over `--duration` fails (non-zero exit);
//! a rate the generator could not offer is named as its limit. Every
//! trial starts from fresh VNF processes, so expected outputs and states
//! are those of a failure-free reference run of exactly that trial's
//! frames.

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
    /// The most measuring may take, in seconds: a search not converged by
    /// then fails (default 300). With `--mechanism --fail-every-s`: the
    /// time series' length (default 10).
    #[arg(long)]
    duration: Option<f64>,
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
    /// Repetitions of the search (at least 5): baseline and SFF (or
    /// unprotected and protected) interleaved in each.
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

/// Median and spread of one forwarder's zero-loss rates over the
/// repetitions.
#[derive(Serialize, Clone, Copy, Default)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

impl Spread {
    fn of(v: &[f64]) -> Self {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        match (v.first(), v.last()) {
            (Some(&min), Some(&max)) => Self {
                median: v[v.len() / 2],
                min,
                max,
            },
            _ => Self::default(),
        }
    }
}

#[derive(Serialize)]
struct Report {
    vnfs: usize,
    frame_size: String,
    /// Median of the repetitions' zero-loss rates.
    sff_pps: f64,
    baseline_pps: f64,
    /// Median of the repetitions' ratios (each repetition's two searches
    /// ran interleaved, over the same grid of rates).
    ratio: f64,
    sff: Spread,
    baseline: Spread,
    ratios: Spread,
    repetitions: usize,
    offered_pps: f64,
    lost: u64,
    duplicated: u64,
    reordered: u64,
    /// Latency at 80 % of the median zero-loss rate.
    latency_us: Latency,
    baseline_latency_us: Latency,
    latency_at_pps: f64,
    sff_trials: usize,
    baseline_trials: usize,
    /// The forwarder carried everything the generator could offer: the rate
    /// is a lower bound set by the generator, not the forwarder's limit.
    sff_generator_limited: bool,
    baseline_generator_limited: bool,
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

/// Whether a trial asked for `asked` frames/s carried it: exactly the
/// expected output, at the rate it was offered (buffers that absorbed an
/// overload for the length of a trial delivered everything, late: a
/// slower delivery is a fail).
fn carried(t: &Trial, asked: f64) -> bool {
    exact(t) && t.delivered_pps >= 0.97 * t.offered_pps.min(asked)
}

/// Runs one trial on a fresh lab (fresh VNF state), its VNFs with
/// `vnf_args`.
fn one_trial(
    kinds: &[Kind],
    vnf_args: &[&str],
    baseline: bool,
    spec: &TrafficSpec,
    sff: LabSff,
) -> Result<Trial> {
    let mut lab = Lab::with_vnf_args(kinds, &vnf_binary()?, vnf_args)?;
    lab.set_traffic_core(sff.traffic_core);
    let frames = spec.frames();
    if baseline {
        let fwd = lab.start_baseline(sff)?;
        let expected = frames.clone();
        let trial = lab.trial_frames(frames, spec.rate, &expected, &fwd)?;
        fwd.stop()?;
        return Ok(trial);
    }
    // The SFF as nhamd runs it: the nham-sff process.
    let fwd = lab.start_sff_process(sff)?;
    let expected = nham_vnf::reference(kinds, &frames).0;
    let trial = lab.trial_frames(frames, spec.rate, &expected, &fwd)?;
    fwd.stop()?;
    Ok(trial)
}

/// The rates both forwarders are tried at: a grid 2 % apart from 1000
/// frames/s up, the same for both, so that their trials are at equal
/// rates wherever their limits are near.
const GRID_BASE: f64 = 1000.0;
const GRID_STEP: f64 = 1.02;

fn grid(k: i32) -> f64 {
    GRID_BASE * GRID_STEP.powi(k)
}

/// The grid point at or below `rate` (0 below the grid).
fn grid_below(rate: f64) -> i32 {
    ((rate.max(GRID_BASE) / GRID_BASE).ln() / GRID_STEP.ln()).floor() as i32
}

/// Trials a repetition may take before it counts as not converged.
const MAX_STEPS: usize = 30;

/// One forwarder's search in one repetition, over the grid: up in strides
/// that double while rates are carried, down in strides that double while
/// none has been, then bisection between the best rate carried and the
/// lowest not carried above it; done when those are neighbours on the
/// grid, or at the generator's limit, or when not even the grid's lowest
/// rate is carried.
#[derive(Debug)]
struct Walk {
    k: i32,
    best: Option<(i32, f64)>,
    /// The lowest grid point above `best` not carried.
    failed_at: Option<i32>,
    stride: i32,
    generator_limited: bool,
    steps: usize,
}

#[derive(Debug, PartialEq)]
enum Step {
    /// Try rate `grid(k)` next.
    Try(i32),
    /// Converged (or carried nothing: `best` is `None`).
    Done,
    /// More than [`MAX_STEPS`].
    NotConverged,
}

impl Walk {
    fn new(start: i32) -> Self {
        Self {
            k: start.max(0),
            best: None,
            failed_at: None,
            stride: 0,
            generator_limited: false,
            steps: 0,
        }
    }

    fn next(&self) -> Step {
        if self.generator_limited {
            return Step::Done;
        }
        match (self.best, self.failed_at) {
            (Some((b, _)), Some(f)) if f == b + 1 => Step::Done,
            (None, Some(0)) => Step::Done,
            _ if self.steps >= MAX_STEPS => Step::NotConverged,
            _ => Step::Try(self.k),
        }
    }

    /// The trial at `grid(k)`: `carried` whether it carried the rate,
    /// `achieved` the rate the generator managed to offer. Whether it is
    /// the best so far.
    fn handle(&mut self, k: i32, carried: bool, achieved: f64) -> bool {
        self.steps += 1;
        let asked = grid(k);
        if carried {
            let better = self.best.is_none_or(|(b, _)| k > b);
            if better {
                self.best = Some((k, achieved.min(asked)));
            }
            // The generator could not offer the rate: what it offered is
            // the most this run can show (unless a higher rate already
            // failed: then the forwarder's limit is below, bisect on).
            if achieved < 0.97 * asked && self.failed_at.is_none() {
                self.generator_limited = true;
            }
            if self.failed_at.is_some_and(|f| f <= k) {
                self.failed_at = None;
            }
            let b = self.best.map_or(k, |(b, _)| b);
            self.k = match self.failed_at {
                Some(f) => b + (f - b) / 2,
                None => {
                    self.stride = (self.stride * 2).max(1);
                    b + self.stride
                }
            };
            better
        } else {
            let f = self.failed_at.map_or(k, |f| f.min(k));
            self.failed_at = Some(f);
            self.k = match self.best {
                Some((b, _)) => b + (f - b) / 2,
                None => {
                    self.stride = (self.stride * 2).min(-5);
                    (k + self.stride).max(0)
                }
            };
            false
        }
    }
}

/// Which forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Baseline,
    Sff,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline (plain AF_XDP forwarder)",
            Self::Sff => "SFF",
        }
    }
}

fn latency(t: Option<&Trial>) -> Latency {
    t.map(|t| {
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
    let duration = args.duration.unwrap_or(300.0);
    if duration <= 0.0 {
        bail!("--duration must be positive");
    }
    if args.trials < 5 {
        bail!(
            "--trials must be at least 5 (a median of fewer says little), got {}",
            args.trials
        );
    }
    let started = Instant::now();
    let budget = Duration::from_secs_f64(duration);
    let kinds: Vec<Kind> = (0..args.vnfs).map(|i| Kind::ALL[i % 4]).collect();
    // The sample VNFs as they are (`nham-vnf` with no options).
    let vnf_args: Vec<&str> = Vec::new();
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
    let spec = |count: u64, rate: Option<f64>| TrafficSpec {
        size: args.frame_size,
        flows: args.flows,
        count,
        rate,
    };
    let mean_wire = match args.frame_size {
        FrameSize::Fixed(n) => n as f64,
        FrameSize::Imix => (7.0 * 64.0 + 4.0 * 570.0 + 1518.0) / 12.0,
    };
    let sides = [Side::Baseline, Side::Sff];
    let mut trials = [0usize; 2];
    // Where each forwarder's limit is, roughly: probes as fast as the
    // generator goes, interleaved (about 60 MB of frames each, fewer
    // through VNFs, which are slower).
    let probe_count =
        ((if kinds.is_empty() { 60e6 } else { 6e6 } / mean_wire) as u64).clamp(5_000, 400_000);
    let mut estimate = [0.0f64; 2];
    let mut all_carried = [true; 2];
    let mut probe_offered: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..3 {
        for (i, &side) in sides.iter().enumerate() {
            if !all_carried[i] {
                continue;
            }
            let t = one_trial(
                &kinds,
                &vnf_args,
                side == Side::Baseline,
                &spec(probe_count, None),
                sff,
            )
            .with_context(|| format!("{}: probe", side.name()))?;
            trials[i] += 1;
            let ok = carried(&t, f64::INFINITY);
            probe_offered[i].push(t.offered_pps);
            if !ok {
                all_carried[i] = false;
                estimate[i] = t.delivered_pps.min(t.offered_pps);
            }
        }
    }
    for i in 0..2 {
        if all_carried[i] {
            // Never overloaded: its limit is above the generator's.
            estimate[i] = Spread::of(&probe_offered[i]).median;
        }
    }
    // The repetitions: each forwarder's walk over the grid, their trials
    // taking turns.
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut best: [Vec<Option<Trial>>; 2] = [Vec::new(), Vec::new()];
    let mut generator_limited = [false; 2];
    let mut start = estimate.map(|e| grid_below(0.9 * e));
    for rep in 0..args.trials {
        let mut walks = start.map(Walk::new);
        let mut best_trial: [Option<Trial>; 2] = [None, None];
        let order: [usize; 2] = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        loop {
            let mut any = false;
            for &i in &order {
                match walks[i].next() {
                    Step::Try(k) => {
                        if started.elapsed() > budget {
                            bail!(
                                "{}: not converged within --duration {} s ({rep} of {} repetitions done, {} trials): give it longer",
                                sides[i].name(),
                                duration,
                                args.trials,
                                trials[0] + trials[1]
                            );
                        }
                        let rate = grid(k);
                        let count = ((rate * trial_secs) as u64).max(1000);
                        let t = one_trial(
                            &kinds,
                            &vnf_args,
                            sides[i] == Side::Baseline,
                            &spec(count, Some(rate)),
                            sff,
                        )
                        .with_context(|| format!("{} at {rate:.0} frames/s", sides[i].name()))?;
                        trials[i] += 1;
                        let ok = carried(&t, rate);
                        let achieved = t.offered_pps;
                        if walks[i].handle(k, ok, achieved) {
                            best_trial[i] = Some(t);
                        }
                        any = true;
                    }
                    Step::Done => {}
                    Step::NotConverged => bail!(
                        "{}: repetition {rep} did not converge in {MAX_STEPS} trials (results swinging; a noisy host?)",
                        sides[i].name()
                    ),
                }
            }
            if !any {
                break;
            }
        }
        for i in 0..2 {
            let w = std::mem::replace(&mut walks[i], Walk::new(0));
            let Some((k, rate)) = w.best else {
                bail!(
                    "{}: carried no rate at all (not even {GRID_BASE} frames/s) in repetition {rep}: nothing measured",
                    sides[i].name()
                );
            };
            generator_limited[i] |= w.generator_limited;
            rates[i].push(rate);
            best[i].push(best_trial[i].take());
            // The next repetition starts a little below this one's.
            start[i] = k - 3;
        }
    }
    let spread = [Spread::of(&rates[0]), Spread::of(&rates[1])];
    let ratios: Vec<f64> = rates[1].iter().zip(&rates[0]).map(|(s, b)| s / b).collect();
    let ratios = Spread::of(&ratios);
    // Latency at 80 % of each median, interleaved.
    let mut at80: [Option<Trial>; 2] = [None, None];
    for (i, &side) in sides.iter().enumerate() {
        let rate = 0.8 * spread[i].median;
        let count = ((rate * trial_secs.max(2.0)) as u64).max(1000);
        let t = one_trial(
            &kinds,
            &vnf_args,
            side == Side::Baseline,
            &spec(count, Some(rate)),
            sff,
        )
        .with_context(|| format!("{}: latency at {rate:.0} frames/s", side.name()))?;
        trials[i] += 1;
        at80[i] = Some(t);
    }
    // The SFF's trial at the median repetition's rate, for its counts.
    let median_rep = rates[1]
        .iter()
        .position(|&r| r == spread[1].median)
        .unwrap_or(0);
    let sff_best = best[1].get(median_rep).and_then(Option::as_ref);
    let v = sff_best.map(|t| t.verdict).unwrap_or_default();
    let report = Report {
        vnfs: args.vnfs,
        frame_size: match args.frame_size {
            FrameSize::Fixed(n) => n.to_string(),
            FrameSize::Imix => "imix".into(),
        },
        sff_pps: spread[1].median,
        baseline_pps: spread[0].median,
        ratio: ratios.median,
        sff: spread[1],
        baseline: spread[0],
        ratios,
        repetitions: args.trials,
        offered_pps: sff_best.map_or(0.0, |t| t.offered_pps),
        lost: v.lost,
        duplicated: v.duplicated,
        reordered: v.reordered,
        latency_us: latency(at80[1].as_ref()),
        baseline_latency_us: latency(at80[0].as_ref()),
        latency_at_pps: 0.8 * spread[1].median,
        sff_trials: trials[1],
        baseline_trials: trials[0],
        sff_generator_limited: generator_limited[1] || all_carried[1],
        baseline_generator_limited: generator_limited[0] || all_carried[0],
    };
    println!(
        "chain of {} VNF(s) {:?}, frames {}, {} repetitions interleaved over one grid of rates 2 % apart ({:.0} s)",
        args.vnfs,
        kinds,
        report.frame_size,
        args.trials,
        started.elapsed().as_secs_f64()
    );
    for (name, s, lat, n) in [
        (
            "baseline (plain AF_XDP L2 forwarder)",
            report.baseline,
            report.baseline_latency_us,
            report.baseline_trials,
        ),
        (
            if args.vnfs > 0 {
                "SFF (classify, NSH, Hold/Release, VNFs)"
            } else {
                "SFF (classify, NSH, Hold/Release)"
            },
            report.sff,
            report.latency_us,
            report.sff_trials,
        ),
    ] {
        println!(
            "  {name}: {:>10.0} pps zero-loss, median [{:.0}, {:.0}] ({n} trials); at 80 % of it latency p50 {} us p99 {} us p99.9 {} us",
            s.median, s.min, s.max, lat.p50, lat.p99, lat.p999
        );
    }
    println!(
        "  ratio SFF / baseline: {:.3} median [{:.3}, {:.3}]; at the reported rate lost {}, duplicated {}, reordered {}",
        report.ratios.median, report.ratios.min, report.ratios.max, report.lost, report.duplicated, report.reordered
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
        let length = args.duration.unwrap_or(10.0);
        let rounds = ((length / every).floor() as usize).max(1);
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
            traffic: Some(Duration::from_secs_f64(length)),
            tail: Duration::from_secs_f64(length),
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Walks against a forwarder that carries every rate up to `limit`,
    /// fed by a generator that offers at most `gen`; what it ends with.
    fn walk(start: i32, limit: f64, gen: f64) -> (Step, Walk) {
        let mut w = Walk::new(start);
        loop {
            match w.next() {
                Step::Try(k) => {
                    let achieved = grid(k).min(gen);
                    w.handle(k, achieved <= limit, achieved);
                }
                s => return (s, w),
            }
        }
    }

    proptest! {
        /// The reference: the highest grid rate at or below the limit, or
        /// the generator's rate when the forwarder is faster than the
        /// generator; nothing below the grid.
        #[test]
        fn a_walk_ends_at_the_limit_or_the_generator(
            limit in 200.0f64..2e6,
            gen_over_limit in 0.3f64..3.0,
            from in -30i32..60,
        ) {
            let gen = limit * gen_over_limit;
            let (step, w) = walk(grid_below(limit) + from, limit, gen);
            prop_assert_eq!(&step, &Step::Done);
            if gen <= limit {
                // The generator is the limit: named, and its rate reported.
                prop_assert!(w.generator_limited);
                prop_assert_eq!(w.best.map(|(_, r)| r), Some(gen));
            } else if limit < GRID_BASE {
                prop_assert!(w.best.is_none());
            } else {
                let (k, rate) = w.best.expect("carried something");
                prop_assert!(!w.generator_limited);
                prop_assert!(grid(k) <= limit && limit < grid(k + 1), "{} {}", k, limit);
                prop_assert_eq!(rate, grid(k));
            }
        }
    }

    #[test]
    fn a_forwarder_that_carries_every_rate_gets_no_number() {
        // And a generator that offers every rate: nothing bounds it.
        let (step, w) = walk(100, f64::INFINITY, f64::INFINITY);
        assert_eq!(step, Step::NotConverged);
        assert_eq!(w.steps, MAX_STEPS);
    }

    #[test]
    fn a_forwarder_that_carries_nothing_ends_with_nothing() {
        let (step, w) = walk(300, 10.0, 1e9);
        assert_eq!(step, Step::Done);
        assert!(w.best.is_none());
    }

    #[test]
    fn spread_is_median_min_max() {
        let s = Spread::of(&[3.0, 1.0, 2.0, 5.0, 4.0]);
        assert_eq!((s.median, s.min, s.max), (3.0, 1.0, 5.0));
        assert_eq!(Spread::of(&[]).median, 0.0);
    }
}
