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
                // The main job: nhamd protects a live 4-VNF chain with each
                // mechanism while VNFs crash (needs the nhamd and nham-vnf
                // binaries next to nham-bench).
                eprintln!(
                    "xtask demo: building nhamd, nham-sff, nhamctl, nham-vnf and nham-bench \
                     (release: the demo runs real chains at speed; a first build takes about five \
                     minutes on two cores, cargo shows its progress)"
                );
                run(
                    "cargo",
                    &[
                        "build",
                        "--release",
                        "-p",
                        "nham-bench",
                        "-p",
                        "nham-control",
                    ],
                );
                eprintln!("xtask demo: built; running the demo");
                let bench = repo_root().join("target/release/nham-bench");
                run(&bench.display().to_string(), &["demo"]);
                // Larger failure patterns (8 VNFs, all at once) on the
                // in-memory model of the same Hold/Release core.
                for extra in [
                    &["--vnfs", "8", "--failures", "10", "--simultaneous", "3"][..],
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
