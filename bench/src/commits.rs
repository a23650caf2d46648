//! `nham-bench commits`: what keeping every checkpoint on a second host
//! costs (issue 14, item 4). The same failure-free chain under `nhamd`
//! (sample VNFs, every one protected, checkpoints every
//! `--checkpoint-interval-ms`) runs with local commits (a standalone
//! `nhamd`) and with off-host commits (`nhamd` as one host of a lab
//! cluster: each commit, and the release of the packets it includes, waits
//! for a checked, durable copy on another host), trial by trial
//! interleaved, up a ladder of offered rates.
//!
//! A configuration carries a rate when every trial of it at that rate is
//! exact: nothing lost, duplicated or reordered at the sink, every VNF in
//! the failure-free state, no frame dropped at the chain's ingress (the
//! hold buffers fill when commits lag: that is where their cost shows).
//! Its throughput is the highest rate of the ladder it carries; the ratio
//! is off-host over local. The ladder stops at the first rate neither
//! carries, or that the generator could not offer (achieved below 95 % of
//! it: the limit is then the generator's, and the run says so). A run in
//! which local commits carry no rate fails: it measured nothing.

use anyhow::{bail, Result};
use clap::Args;
use nham_bench::ha::{self, HaReport, HaSpec};
use serde::Serialize;

use crate::recovery::MechanismArg;

/// Arguments of `nham-bench commits`.
#[derive(Args, Debug)]
pub(crate) struct CommitsArgs {
    /// Resilience mechanism of every VNF.
    #[arg(long, value_enum, default_value = "0r")]
    mechanism: MechanismArg,
    /// VNFs in the chain (1 to 8), as `recovery`'s.
    #[arg(long, default_value_t = 4)]
    vnfs: usize,
    /// Checkpoint period of every VNF, ms.
    #[arg(long, default_value_t = 200)]
    checkpoint_interval_ms: u32,
    /// Offered rates, frames per second, ascending.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "2000,3000,4000,5000,6000,8000,10000,12000"
    )]
    rates: Vec<f64>,
    /// Trials of each configuration at each rate.
    #[arg(long, default_value_t = 2)]
    repeats: usize,
    /// Traffic of each trial, seconds (plus the harness's 1.5 s).
    #[arg(long, default_value_t = 3.0)]
    trial_s: f64,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

/// One trial's outcome.
#[derive(Serialize, Clone, Debug)]
struct Outcome {
    off_host: bool,
    rate: f64,
    /// What the generator achieved, frames/s.
    offered_pps: f64,
    exact: bool,
    /// Why not (an error of the trial, or what was not exact).
    why: Option<String>,
    checkpoints: usize,
    checkpoint_pause_p50_ms: f64,
    checkpoint_copy_p50_ms: f64,
    ingress_dropped: u64,
}

#[derive(Serialize)]
struct Report {
    mechanism: String,
    vnfs: usize,
    checkpoint_interval_ms: u32,
    /// The highest rate carried, frames per second (0: none).
    local_fps: f64,
    off_host_fps: f64,
    /// `off_host_fps / local_fps`.
    ratio: f64,
    /// Medians over the trials of each configuration at the rates both
    /// carried.
    local_pause_p50_ms: f64,
    off_host_pause_p50_ms: f64,
    off_host_copy_p50_ms: f64,
    /// The ladder stopped at a rate the generator could not offer.
    generator_bound: bool,
    trials: Vec<Outcome>,
}

fn outcome(off_host: bool, rate: f64, r: Result<HaReport>) -> Outcome {
    match r {
        Ok(r) => {
            let dropped = r.stats.ingress_overflow;
            let why = r.violation();
            Outcome {
                off_host,
                rate,
                offered_pps: r.offered_pps,
                exact: why.is_none(),
                why,
                checkpoints: r.checkpoints,
                checkpoint_pause_p50_ms: r.checkpoint_pause_ms.p50,
                checkpoint_copy_p50_ms: r.checkpoint_copy_ms.p50,
                ingress_dropped: dropped,
            }
        }
        Err(e) => Outcome {
            off_host,
            rate,
            offered_pps: 0.0,
            exact: false,
            why: Some(format!("{e:#}")),
            checkpoints: 0,
            checkpoint_pause_p50_ms: 0.0,
            checkpoint_copy_p50_ms: 0.0,
            ingress_dropped: 0,
        },
    }
}

/// One failure-free trial at `spec`'s rate, off the host or not.
fn trial(spec: &HaSpec, off_host: bool) -> Result<HaReport> {
    if off_host {
        // Three hosts with etcd on each; two nhamds take the copies.
        let mut hosts = nham_bench::hosts::HostLab::new(3, 3)?;
        for i in 0..2 {
            hosts.start_nhamd(i, &spec.nhamd)?;
        }
        ha::run_in_cluster(spec, &mut hosts, "sff")
    } else {
        ha::run(spec)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub(crate) fn run(args: &CommitsArgs) -> Result<()> {
    if !(1..=8).contains(&args.vnfs) {
        bail!("--vnfs must be 1 to 8, got {}", args.vnfs);
    }
    if args.repeats == 0 || args.rates.is_empty() {
        bail!("--repeats and --rates: at least one");
    }
    if args.rates.windows(2).any(|w| w[0] >= w[1]) || args.rates[0] <= 0.0 {
        bail!(
            "--rates must be positive and ascending, got {:?}",
            args.rates
        );
    }
    let base = HaSpec {
        mechanism: args.mechanism.api(),
        kinds: ha::sample_chain(args.vnfs),
        rounds: Vec::new(),
        checkpoint_interval_ms: args.checkpoint_interval_ms,
        flows: 64,
        tail: std::time::Duration::from_secs_f64(args.trial_s),
        nhamd: ha::sibling_binary("nhamd", "NHAM_NHAMD")?,
        vnf_bin: ha::sibling_binary("nham-vnf", "NHAM_VNF")?,
        ..HaSpec::default()
    };
    println!(
        "nham-bench commits: {:?} on {} VNFs, checkpoints every {} ms, failure-free, local against off-host commits, {} trials each per rate, interleaved",
        args.mechanism, args.vnfs, args.checkpoint_interval_ms, args.repeats
    );
    let mut trials = Vec::new();
    let (mut local_fps, mut off_host_fps) = (0.0, 0.0);
    let mut generator_bound = false;
    for &rate in &args.rates {
        let spec = HaSpec {
            rate,
            ..base.clone()
        };
        let mut at_rate = Vec::new();
        for k in 0..args.repeats {
            // Alternating which goes first.
            let order = if k % 2 == 0 {
                [false, true]
            } else {
                [true, false]
            };
            for off_host in order {
                let o = outcome(off_host, rate, trial(&spec, off_host));
                println!(
                    "  {rate:>7.0} fps (offered {:>7.0}) {:<9} {} pause p50 {:>6.2} ms copy p50 {:>6.2} ms, {} checkpoints{}",
                    o.offered_pps,
                    if off_host { "off-host" } else { "local" },
                    if o.exact { "exact  " } else { "NOT    " },
                    o.checkpoint_pause_p50_ms,
                    o.checkpoint_copy_p50_ms,
                    o.checkpoints,
                    o.why.as_deref().map(|w| format!(": {w}")).unwrap_or_default()
                );
                at_rate.push(o);
            }
        }
        // Offered as asked (errors aside: those are not carried).
        let short = at_rate
            .iter()
            .any(|o| o.offered_pps > 0.0 && o.offered_pps < 0.95 * rate);
        if short {
            println!("  the generator could not offer {rate:.0} fps: the ladder stops (its limit, not the chain's)");
            generator_bound = true;
            trials.extend(at_rate);
            break;
        }
        let carried = |off: bool| {
            at_rate
                .iter()
                .filter(|o| o.off_host == off)
                .all(|o| o.exact)
        };
        let (local, off) = (carried(false), carried(true));
        if local {
            local_fps = rate;
        }
        if off {
            off_host_fps = rate;
        }
        trials.extend(at_rate);
        if !local && !off {
            break;
        }
    }
    // The cost where both carried the rate.
    let both: Vec<&Outcome> = trials
        .iter()
        .filter(|o| o.rate <= local_fps.min(off_host_fps) && o.exact)
        .collect();
    let pick = |off: bool, f: fn(&Outcome) -> f64| {
        median(
            both.iter()
                .filter(|o| o.off_host == off)
                .map(|o| f(o))
                .collect(),
        )
    };
    let report = Report {
        mechanism: format!("{:?}", args.mechanism),
        vnfs: args.vnfs,
        checkpoint_interval_ms: args.checkpoint_interval_ms,
        local_fps,
        off_host_fps,
        ratio: if local_fps > 0.0 {
            off_host_fps / local_fps
        } else {
            0.0
        },
        local_pause_p50_ms: pick(false, |o| o.checkpoint_pause_p50_ms),
        off_host_pause_p50_ms: pick(true, |o| o.checkpoint_pause_p50_ms),
        off_host_copy_p50_ms: pick(true, |o| o.checkpoint_copy_p50_ms),
        generator_bound,
        trials,
    };
    println!(
        "  carried exactly: local commits {:.0} fps, off-host commits {:.0} fps: ratio {:.2}",
        report.local_fps, report.off_host_fps, report.ratio
    );
    println!(
        "  checkpoint pause p50 (median of trials): local {:.2} ms, off-host {:.2} ms; the copy before each off-host commit p50 {:.2} ms",
        report.local_pause_p50_ms, report.off_host_pause_p50_ms, report.off_host_copy_p50_ms
    );
    if generator_bound && report.local_fps == report.off_host_fps {
        println!("  (both carried every rate the generator could offer: the chain's limit was not reached; off-host commits cost no throughput up to there)");
    } else if report.local_fps == args.rates[args.rates.len() - 1] {
        println!("  (local commits carried the ladder's top rate: their limit was not found; raise --rates)");
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    if report.local_fps == 0.0 {
        bail!(
            "local commits carried none of the rates {:?}: nothing measured",
            args.rates
        );
    }
    Ok(())
}
