//! `nham-bench soak`: see `nham_bench::soak`.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use clap::Args;
use nham_bench::ha::{self, Summary};
use nham_bench::soak::{self, SoakSpec};

use crate::recovery::MechanismArg;

/// Arguments of `nham-bench soak`.
#[derive(Args, Debug)]
pub(crate) struct SoakArgs {
    /// Failures to inject in all (at least).
    #[arg(long, default_value_t = 300)]
    failures: usize,
    /// Seed of the schedule (default: from the clock; printed either way).
    #[arg(long)]
    seed: Option<u64>,
    /// Sample VNFs in the chain (1 to 8).
    #[arg(long, default_value_t = 4)]
    vnfs: usize,
    /// Failures per segment (one nhamd trial, one mechanism, one fault
    /// kind), about.
    #[arg(long, default_value_t = 20)]
    per_segment: usize,
    /// Offered rate, frames/s.
    #[arg(long, default_value_t = 3000.0)]
    rate: f64,
    /// Traffic between rounds, ms.
    #[arg(long, default_value_t = 300)]
    gap_ms: u64,
    /// Rounds planned tight, a round that no longer fits its segment's
    /// traffic skipped: more failures per hour.
    #[arg(long)]
    tight: bool,
    /// Only this mechanism (repeat for several; default: all four).
    #[arg(long, value_enum)]
    mechanism: Vec<MechanismArg>,
    /// Print the whole report as one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(args: &SoakArgs) -> Result<()> {
    if !(1..=8).contains(&args.vnfs) {
        bail!("--vnfs must be 1 to 8, got {}", args.vnfs);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    eprintln!(
        "soak: seed {seed}, {} failures, {} VNFs (replay with --seed {seed})",
        args.failures, args.vnfs
    );
    let spec = SoakSpec {
        failures: args.failures,
        seed,
        vnfs: args.vnfs,
        per_segment: args.per_segment.max(1),
        rate: args.rate,
        mechanisms: args.mechanism.iter().map(|m| m.api()).collect(),
        nhamd: ha::sibling_binary("nhamd", "NHAM_NHAMD")?,
        vnf_bin: ha::sibling_binary("nham-vnf", "NHAM_VNF")?,
        gap: std::time::Duration::from_millis(args.gap_ms),
        tight: args.tight,
    };
    // A bar of failures done on a terminal (not with --json); each
    // segment's line printed above it.
    let bar = if args.json {
        indicatif::ProgressBar::hidden()
    } else {
        let b = indicatif::ProgressBar::new(args.failures as u64);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "soak [{bar:30}] {pos}/{len} failures, {elapsed_precise} (~{eta} left)",
        ) {
            b.set_style(style);
        }
        b
    };
    let report = soak::run(&spec, |s| {
        let r = &s.report;
        bar.set_position((s.failures_before + r.failures) as u64);
        bar.suspend(|| eprintln!(
            "segment {:>3} {:<16} {:<22} {:>3} failures (total {:>5}): recovery p50 {:>6.1} ms, lost {} dup {} reordered {}, states {}, nondeterministic {}, input dropped {}, {:.0} s{}",
            s.index,
            s.mechanism,
            format!("{:?}", s.kind),
            r.failures,
            s.failures_before + r.failures,
            r.recovery_ms.p50,
            r.lost,
            r.duplicated,
            r.reordered,
            if r.state_mismatches == 0 { "equal".to_string() } else { format!("{} wrong", r.state_mismatches) },
            r.nondeterministic_outputs,
            r.stats.vnf_input_dropped,
            s.seconds,
            s.violation().map(|v| format!("  <-- {v}")).unwrap_or_default()
        ));
    })?;
    bar.finish_and_clear();
    // Per kind: failures and recovery times.
    let mut by_kind: BTreeMap<String, (usize, Vec<f64>)> = BTreeMap::new();
    for s in &report.segments {
        let e = by_kind.entry(format!("{:?}", s.kind)).or_default();
        e.0 += s.report.failures;
        // The segment's median stands for its recoveries.
        e.1.push(s.report.recovery_ms.p50);
    }
    for (kind, (failures, p50s)) in &by_kind {
        let s = Summary::of(p50s);
        eprintln!(
            "{kind:<22} {failures:>5} failures, segment recovery p50s: median {:.1} ms, max {:.1} ms",
            s.p50, s.max
        );
    }
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    if let Some(e) = &report.error {
        bail!("{e}");
    }
    match report.first_violation {
        Some(i) => {
            let s = &report.segments[i];
            bail!(
                "stopped: seed {seed}, segment {i} ({:?} under {}), after {} failures: {}; {:?}",
                s.kind,
                s.mechanism,
                s.failures_before,
                s.violation().unwrap_or_default(),
                s.report
            )
        }
        None => {
            eprintln!(
                "soak: {} failures in {} segments, exactly once throughout (seed {seed})",
                report.failures,
                report.segments.len()
            );
            Ok(())
        }
    }
}
