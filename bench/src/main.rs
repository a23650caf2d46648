//! `nham-bench`: NHAM's experiments.
//!
//! `nham-bench model` runs the in-memory chain model: deterministic VNF
//! models (monitor, firewall, NAT, emitter) driven through the Hold/Release
//! core with crashes injected, checked against a failure-free run. No
//! network, no processes, no CRIU: it verifies the core's logic, and says so
//! in its output. The live data path arrives with the AF_XDP SFF.
#![forbid(unsafe_code)]

mod model;
mod throughput;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "nham-bench",
    version,
    about = "NHAM experiments and benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// In-memory chain model with failures injected, checked for exactly-once.
    Model(model::ModelArgs),
    /// Zero-loss forwarding rate of the SFF (with N VNFs) against a plain
    /// AF_XDP forwarder, on a topology of network namespaces (root).
    Throughput(throughput::ThroughputArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Model(args) => model::run(&args),
        Command::Throughput(args) => throughput::run(&args),
    }
}
