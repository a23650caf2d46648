//! `nham-bench model`: a seeded schedule of traffic, checkpoints and failure
//! rounds over the in-memory chain ([`nham_dataplane::sim`]), then a summary
//! of what was verified against the failure-free reference.

use anyhow::{bail, Context};
use clap::Args;
use nham_dataplane::hold::{HopConfig, ReleaseRule};
use nham_dataplane::sim::{self, Op, Sim, SimConfig, VnfKind};
use serde::Serialize;

/// Arguments of `nham-bench model`.
#[derive(Args, Debug)]
pub(crate) struct ModelArgs {
    /// VNFs in the chain (1 to 8), cycling monitor, firewall, NAT, emitter.
    #[arg(long, default_value_t = 4)]
    vnfs: usize,
    /// Packets sent through the chain.
    #[arg(long, default_value_t = 20_000)]
    packets: usize,
    /// Failure rounds.
    #[arg(long, default_value_t = 10)]
    failures: usize,
    /// VNFs crashed at once in each round (1 to vnfs).
    #[arg(long, default_value_t = 1)]
    simultaneous: usize,
    /// Seed of the schedule and the traffic.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Use the paper's release rule ("last packet seen in buffer_tx") to
    /// show how it breaks exactly-once with a dropping VNF.
    #[arg(long)]
    paper_rule: bool,
    /// Print one JSON object as the last line.
    #[arg(long)]
    json: bool,
}

use nham_bench::soak::Rng;

#[derive(Serialize)]
struct Summary {
    mode: &'static str,
    vnfs: usize,
    packets_in: usize,
    packets_expected_out: usize,
    packets_out: usize,
    lost: usize,
    duplicated: usize,
    reordered: usize,
    state_mismatches: usize,
    crashes: u64,
    simultaneous_rounds: u64,
    crashes_during_checkpoint: u64,
    crashes_during_recovery: u64,
    recoveries: u64,
    checkpoints: u64,
    replayed: u64,
    duplicates_suppressed: u64,
    stale_discarded: u64,
    exact: bool,
}

/// Runs the model and prints its summary; fails if exactly-once was broken.
pub(crate) fn run(args: &ModelArgs) -> anyhow::Result<()> {
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
    let kinds: Vec<VnfKind> = (0..args.vnfs).map(|i| VnfKind::ALL[i % 4]).collect();
    let rule = if args.paper_rule {
        ReleaseRule::LastEmitted
    } else {
        ReleaseRule::Consumed
    };
    let config = SimConfig {
        kinds: kinds.clone(),
        hop: HopConfig {
            rx_capacity: 256,
            tx_capacity: 64,
            release_rule: rule,
            keep_fallback: false,
        },
        inbox_capacity: 32,
    };
    let input = sim::make_input(args.packets, 64, args.seed);
    let (expected, expected_states) = sim::reference(&kinds, &input);
    let mut sim = Sim::new(&config, input).context("building the chain")?;
    let mut rng = Rng(args.seed);
    let n = args.vnfs;

    // Traffic in slices; a failure round after each slice but the last.
    let slice_len = (args.packets / (args.failures + 1)).max(1);
    for round in 0..=args.failures {
        drive_traffic(&mut sim, &mut rng, n, slice_len * 6);
        if round == args.failures {
            break;
        }
        // Pick `simultaneous` distinct VNFs and crash them together, at a
        // random point: possibly while a checkpoint is under way.
        let mut mask = 0u8;
        while (mask.count_ones() as usize) < args.simultaneous {
            mask |= 1 << rng.below(n);
        }
        if rng.below(3) == 0 {
            sim.apply(Op::BeginCheckpoint(rng.below(n)));
            sim.apply(Op::Deliver(rng.below(n)));
        }
        sim.apply(Op::Crash(mask));
        // Traffic goes on until the detector notices, then recovery; now and
        // then a second crash hits a VNF being restored.
        drive_traffic(&mut sim, &mut rng, n, 20);
        for i in 0..n {
            sim.apply(Op::Detect(i));
            sim.apply(Op::BeginRestore(i));
        }
        if rng.below(4) == 0 {
            sim.apply(Op::Crash(mask));
            for i in 0..n {
                sim.apply(Op::Detect(i));
                sim.apply(Op::BeginRestore(i));
            }
        }
        sim.apply(Op::Tick(5));
        for i in 0..n {
            sim.apply(Op::FinishRestore(i));
        }
    }
    sim.run_to_completion().context("draining the chain")?;
    let verdict = sim::verdict(&sim, &expected, &expected_states);
    let stats = sim.stats();
    let summary = Summary {
        mode: "in-memory model (no network, no processes, no CRIU)",
        vnfs: n,
        packets_in: args.packets,
        packets_expected_out: expected.len(),
        packets_out: sim.sink().len(),
        lost: verdict.lost,
        duplicated: verdict.duplicated,
        reordered: verdict.wrong,
        state_mismatches: verdict.state_mismatches.len(),
        crashes: stats.crashes,
        simultaneous_rounds: stats.simultaneous_crashes,
        crashes_during_checkpoint: stats.crashes_during_checkpoint,
        crashes_during_recovery: stats.crashes_during_recovery,
        recoveries: stats.recoveries,
        checkpoints: stats.checkpoints,
        replayed: stats.replayed,
        duplicates_suppressed: stats.duplicates_suppressed,
        stale_discarded: stats.stale_discarded,
        exact: verdict.is_exact(),
    };
    print_table(&summary, &kinds, &sim, &verdict, rule);
    if args.json {
        println!("{}", serde_json::to_string(&summary)?);
    }
    if !summary.exact {
        bail!("exactly-once violated (see the table above)");
    }
    Ok(())
}

fn drive_traffic(sim: &mut Sim, rng: &mut Rng, n: usize, steps: usize) {
    for _ in 0..steps {
        let i = rng.below(n);
        let op = match rng.below(100) {
            0..=14 => Op::Ingress,
            15..=34 => Op::Deliver(i),
            35..=54 => Op::Consume(i),
            55..=74 => Op::Arrive(i),
            75..=94 => Op::Advance(i),
            95..=96 => Op::BeginCheckpoint(i),
            _ => Op::StepCheckpoint(i),
        };
        sim.apply(op);
        // Checkpoints run to completion in the background.
        sim.apply(Op::StepCheckpoint(i));
    }
}

fn print_table(s: &Summary, kinds: &[VnfKind], sim: &Sim, v: &sim::Verdict, rule: ReleaseRule) {
    println!("NHAM chain model: {}", s.mode);
    println!(
        "  release rule: {}",
        match rule {
            ReleaseRule::Consumed => "consumed before freeze (NHAM)",
            ReleaseRule::LastEmitted => "last packet seen in buffer_tx (the paper's; known wrong)",
        }
    );
    println!();
    println!(
        "  {:<4} {:<9} {:>8} {:>9} {:>10} {:>9} {:>10} {:>11}  state",
        "hop", "vnf", "failures", "restored", "replayed", "dup-supp", "stale", "checkpoints"
    );
    let states = sim.vnf_states();
    for (i, kind) in kinds.iter().enumerate() {
        let h = sim.chain().hop(i).stats();
        let ok = !v.state_mismatches.contains(&i);
        println!(
            "  {:<4} {:<9} {:>8} {:>9} {:>10} {:>9} {:>10} {:>11}  {}",
            i,
            format!("{kind:?}").to_lowercase(),
            h.failures,
            h.recoveries,
            h.redelivered,
            h.duplicates,
            h.stale,
            h.checkpoints,
            if ok {
                format!("equal to failure-free ({} flows)", states[i].per_flow.len())
            } else {
                "DIFFERS from failure-free".to_string()
            }
        );
    }
    println!();
    println!(
        "  crashes injected: {} ({} rounds with several VNFs at once, {} during a checkpoint, {} during a recovery)",
        s.crashes, s.simultaneous_rounds, s.crashes_during_checkpoint, s.crashes_during_recovery
    );
    println!(
        "  sink: {} packets in, {} expected out, {} received; lost {}, duplicated {}, out of order {}",
        s.packets_in, s.packets_expected_out, s.packets_out, s.lost, s.duplicated, s.reordered
    );
    println!(
        "  verdict: {}",
        if s.exact {
            "EXACTLY-ONCE: output and every VNF state equal the failure-free run"
        } else {
            "VIOLATED"
        }
    );
}
