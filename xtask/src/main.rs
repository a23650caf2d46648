//! NHAM's two entry points for a fresh machine, as the README gives them:
//!
//! - `cargo xtask demo [ARGS]`: installs what is missing, then runs the main
//!   job: a live 4-VNF chain in network namespaces (`nham-bench chain`), then
//!   the in-memory chain model with failures injected (`nham-bench model`;
//!   ARGS, if any, go to it instead).
//! - `cargo xtask test`: installs what is missing, then runs exactly what CI
//!   runs: `cargo fmt --check`, `cargo clippy -D warnings`, `cargo test`.
//!
//! `cargo xtask setup` runs only the installation (`scripts/setup.sh`).
//! Every step prints what it runs; the first failure stops the task with its
//! exit code.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::{exit, Command};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives one level below the workspace root")
        .to_path_buf()
}

fn run(program: &str, args: &[&str]) {
    eprintln!("+ {program} {}", args.join(" "));
    let status = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .status()
        .unwrap_or_else(|e| {
            eprintln!("xtask: cannot start {program}: {e}");
            exit(127)
        });
    if !status.success() {
        eprintln!("xtask: {program} {} failed: {status}", args.join(" "));
        exit(status.code().unwrap_or(1));
    }
}

fn setup() {
    run("bash", &["scripts/setup.sh"]);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rest: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    match args.first().map(String::as_str) {
        Some("setup") => setup(),
        Some("demo") => {
            setup();
            let base = [
                "run",
                "--release",
                "--quiet",
                "-p",
                "nham-bench",
                "--",
                "model",
            ];
            if rest.is_empty() {
                // The live chain: 4 VNF processes in namespaces, real traffic.
                run(
                    "cargo",
                    &[
                        "run",
                        "--release",
                        "--quiet",
                        "-p",
                        "nham-bench",
                        "--bin",
                        "nham-bench",
                        "--",
                        "chain",
                        "--vnfs",
                        "4",
                        "--crash",
                        "--packets",
                        "6000",
                        "--rate",
                        "3000",
                    ],
                );
                // Failures: still in the in-memory model (the control plane
                // that checkpoints and restores real VNFs comes next).
                // One failure at a time on 4 VNFs; 3 of 8 at once; all 8 at once.
                for extra in [
                    &["--vnfs", "4", "--failures", "10"][..],
                    &["--vnfs", "8", "--failures", "10", "--simultaneous", "3"],
                    &["--vnfs", "8", "--failures", "5", "--simultaneous", "8"],
                ] {
                    run("cargo", &[&base[..], extra].concat());
                }
            } else {
                run("cargo", &[&base[..], &rest].concat());
            }
        }
        Some("test") => {
            setup();
            run("cargo", &["fmt", "--all", "--check"]);
            run(
                "cargo",
                &[
                    "clippy",
                    "--workspace",
                    "--all-targets",
                    "--",
                    "-D",
                    "warnings",
                ],
            );
            let mut cmd = vec!["test", "--workspace"];
            cmd.extend(rest);
            run("cargo", &cmd);
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <demo|test|setup> [ARGS]\n\
                 \n  demo   install what is missing, then run the main job\
                 \n  test   install what is missing, then fmt, clippy and every test\
                 \n  setup  install what is missing (root)"
            );
            exit(2);
        }
    }
}
