//! `nham-bench`: NHAM's experiments.
//!
//! - `nham-bench demo`: the main job (README): `nhamd` protects a live
//!   4-VNF chain with 0R and with 1R-AS while VNFs crash; a summary table.
//! - `nham-bench chain`: a live chain (SFF on AF_XDP, `nham-vnf` processes
//!   in network namespaces), traffic checked end to end at the sink.
//! - `nham-bench throughput`: zero-loss rate of the SFF against a plain
//!   AF_XDP forwarder, same topology, same run.
//! - `nham-bench recovery`: a chain protected by `nhamd` (0R, 1R-AS) with
//!   failures injected under traffic: detection, recovery, downtime,
//!   checkpoint pauses, exactly-once and VNF states.
//! - `nham-bench commits`: the highest rate a failure-free protected chain
//!   carries exactly with local commits and with each checkpoint kept on a
//!   second host first, interleaved, and their ratio.
//! - `nham-bench soak`: failures of all nine kinds of the fault matrix,
//!   across the four mechanisms, seeded, until N; stops at the first
//!   violation of exactly-once and names the seed and the segment.
//! - `nham-bench paper`: the paper's evaluation reproduced (figures,
//!   tables, a 10,000-fault soak) into CSVs, PNG/SVG figures and REPORT.md.
//! - `nham-bench model`: the in-memory chain model (Hold/Release core and
//!   VNF models) with crashes injected; no network, no processes, no CRIU,
//!   and it says so in its output.
#![forbid(unsafe_code)]

mod chain;
mod commits;
mod demo;
mod model;
mod paper;
mod recovery;
mod soak_cmd;
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
    /// The main job: nhamd protects a live 4-VNF chain with each mechanism
    /// while VNFs crash; prints a summary table (root, CRIU).
    Demo,
    /// A live chain in network namespaces, checked end to end (root).
    Chain(chain::ChainArgs),
    /// In-memory chain model with failures injected, checked for exactly-once.
    Model(model::ModelArgs),
    /// Zero-loss forwarding rate of the SFF (with N VNFs) against a plain
    /// AF_XDP forwarder, on a topology of network namespaces (root).
    Throughput(throughput::ThroughputArgs),
    /// Recovery of a chain protected by nhamd, failures injected under
    /// traffic (root, CRIU).
    Recovery(recovery::RecoveryArgs),
    /// Failures of every kind across every mechanism, seeded, checked for
    /// exactly-once (root, CRIU).
    Soak(soak_cmd::SoakArgs),
    /// Throughput of a failure-free protected chain with local and with
    /// off-host checkpoint commits, interleaved, and their ratio (root,
    /// CRIU, etcd).
    Commits(commits::CommitsArgs),
    /// The paper's evaluation (Fig. 5a, 5b, 6a, 6b, Table 1) and a
    /// fault-matrix soak, through nhamd: CSVs, figures (PNG, SVG) and
    /// REPORT.md set against the paper's numbers (root, CRIU).
    Paper(paper::PaperArgs),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Demo => demo::run(),
        Command::Chain(args) => chain::run(&args),
        Command::Model(args) => model::run(&args),
        Command::Throughput(args) => throughput::run(&args),
        Command::Recovery(args) => recovery::run(&args),
        Command::Soak(args) => soak_cmd::run(&args),
        Command::Commits(args) => commits::run(&args),
        Command::Paper(args) => paper::run(&args),
    }
}
