//! `nham-bench chain`: one live chain, end to end. Builds the namespaces,
//! starts the SFF and N `nham-vnf` processes, sends traffic from the source
//! namespace and checks at the sink that the output equals a failure-free
//! reference run, and that every VNF's state equals its reference state.
//! No failures and no protection: a chain under crashes runs under `nhamd`
//! (`nham-bench recovery`), the one way NHAM protects a chain.

use anyhow::{bail, Context, Result};
use clap::Args;
use nham_bench::lab::{Lab, LabSff};
use nham_traffic::{FrameSize, TrafficSpec};
use nham_vnf::Kind;

/// Arguments of `nham-bench chain`.
#[derive(Args, Debug)]
pub(crate) struct ChainArgs {
    /// VNFs in the chain (0 to 8), cycling monitor, firewall, NAT, emitter.
    #[arg(long, default_value_t = 4)]
    vnfs: usize,
    /// Frames to send.
    #[arg(long, default_value_t = 20_000)]
    packets: u64,
    /// Offered rate, frames per second.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Frame size on the wire (64 to 1518) or `imix`.
    #[arg(long, default_value = "64")]
    frame_size: FrameSize,
    /// Flows in the traffic.
    #[arg(long, default_value_t = 64)]
    flows: u32,
    /// Replay this pcap trace (Ethernet) instead of generated frames.
    #[arg(long)]
    pcap: Option<std::path::PathBuf>,
}

/// Runs the chain and prints what was verified; fails on any mismatch.
pub(crate) fn run(args: &ChainArgs) -> Result<()> {
    if args.vnfs > 8 {
        bail!("--vnfs must be 0 to 8, got {}", args.vnfs);
    }
    let kinds: Vec<Kind> = (0..args.vnfs).map(|i| Kind::ALL[i % 4]).collect();
    let bin = std::env::current_exe()?.with_file_name("nham-vnf");
    let lab = Lab::new(&kinds, &bin).context("building the chain in network namespaces")?;
    let sff = lab
        .start_sff_process(LabSff::default())
        .context("starting the SFF")?;
    let spec = TrafficSpec {
        size: args.frame_size,
        flows: args.flows,
        count: args.packets,
        rate: Some(args.rate),
    };
    let frames = match &args.pcap {
        Some(path) => nham_traffic::frames_from_pcap(path).map_err(anyhow::Error::msg)?,
        None => spec.frames(),
    };
    let (expected, states) = nham_vnf::reference(&kinds, &frames);
    let trial = lab.trial_frames(frames, spec.rate, &expected, &sff)?;
    let got_states = lab.vnf_states()?;
    let stats = sff.stop()?;
    println!(
        "NHAM live chain: SFF on AF_XDP + {} nham-vnf processes, each in its own network namespace",
        kinds.len()
    );
    println!("  VNFs (unprotected, no failures): {kinds:?}");
    println!(
        "  traffic: {} frames offered at {:.0} fps ({:?}, {} flows); sink got {} of {} expected",
        trial.sent,
        trial.offered_pps,
        args.frame_size,
        args.flows,
        trial.received.seqs.len(),
        expected.len()
    );
    println!(
        "  SFF: classified {}, delivered to VNFs {}, accepted back {}, egress {}, malformed {}, SI mismatch {}, TTL expired {}, tx rings woken again {}",
        stats.classified,
        stats.delivered,
        stats.accepted,
        stats.egress,
        stats.malformed_from_vnf + stats.malformed_ingress,
        stats.si_mismatch,
        stats.ttl_expired,
        stats.tx_kicks
    );
    let v = trial.verdict;
    let h = &trial.received.latency_us;
    println!(
        "  sink: lost {}, duplicated {}, reordered {}, output digest {}; latency p50 {} us, p99 {} us",
        v.lost,
        v.duplicated,
        v.reordered,
        if v.digest_equal { "equal to reference" } else { "DIFFERS" },
        h.value_at_quantile(0.5),
        h.value_at_quantile(0.99)
    );
    for (i, (got, want)) in got_states.iter().zip(&states).enumerate() {
        println!(
            "  vnf {i} {:?}: {} flows, state {}",
            kinds[i],
            got.flows.len(),
            if got == want {
                "equal to reference"
            } else {
                "DIFFERS"
            }
        );
    }
    let exact = v.lost == 0
        && v.duplicated == 0
        && v.reordered == 0
        && v.digest_equal
        && got_states == states;
    println!("  verdict: {}", if exact { "EXACT" } else { "MISMATCH" });
    if !exact {
        bail!("the chain's output or states differ from the reference");
    }
    Ok(())
}
