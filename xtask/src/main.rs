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
//! `cargo xtask package` builds the Debian package
//! (`target/packaging/nham_<version>_<arch>.deb`, with `cargo-deb`, which
//! it installs from crates.io if missing); `cargo xtask test` builds it too
//! and checks it installed (see [`check_package`]).
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

/// What `program args` prints, or the task stops.
fn output(program: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            eprintln!("xtask: cannot start {}: {e}", program.display());
            exit(127)
        });
    if !out.status.success() {
        eprintln!(
            "xtask: {} {} failed: {}\n{}",
            program.display(),
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        exit(out.status.code().unwrap_or(1));
    }
    out.stdout
}

fn fail(why: String) -> ! {
    eprintln!("xtask: {why}");
    exit(1)
}

/// Builds the .deb: the release binaries, then their man pages and shell
/// completions (each binary writes its own: `nhamd --man`, `nhamctl
/// man`, ...), then `cargo deb --no-build`. Returns the package's path.
fn package() -> PathBuf {
    let has_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_deb {
        eprintln!("xtask package: installing cargo-deb from crates.io (once, a few minutes)");
        run("cargo", &["install", "cargo-deb", "--locked"]);
    }
    eprintln!("xtask package: building nhamd, nhamctl and nham-sff (release)");
    run("cargo", &["build", "--release", "-p", "nham-control"]);
    let root = repo_root();
    let out = root.join("target/packaging");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).unwrap_or_else(|e| fail(format!("{}: {e}", out.display())));
    let write = |name: String, bytes: Vec<u8>| {
        let path = out.join(name);
        std::fs::write(&path, bytes).unwrap_or_else(|e| fail(format!("{}: {e}", path.display())));
        path
    };
    for (bin, section, man, completions) in [
        ("nhamd", 8, &["--man"][..], &["--completions"][..]),
        ("nhamctl", 1, &["man"], &["completion"]),
    ] {
        let exe = root.join("target/release").join(bin);
        let page = write(format!("{bin}.{section}"), output(&exe, man));
        run("gzip", &["-9nf", &page.display().to_string()]);
        for shell in ["bash", "zsh", "fish"] {
            write(
                format!("{bin}.{shell}"),
                output(&exe, &[completions, &[shell]].concat()),
            );
        }
    }
    run(
        "cargo",
        &[
            "deb",
            "-p",
            "nham-control",
            "--no-build",
            "--strip",
            "--output",
            &out.display().to_string(),
        ],
    );
    let deb = std::fs::read_dir(&out)
        .ok()
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .unwrap_or_else(|| fail(format!("cargo deb left no .deb in {}", out.display())));
    eprintln!("xtask package: {}", deb.display());
    deb
}

/// What `program args` prints, or why it did not run well.
fn try_output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!(
            "{program} {}: {}\n{text}",
            args.join(" "),
            out.status
        ))
    }
}

/// Installs the package on this machine (`dpkg -i`), checks it as an
/// operator would meet it, and removes it again (`dpkg --purge`, also when
/// a check failed): `nhamd --version` and `nhamctl --version` run; the
/// binaries are stripped; the unit passes `systemd-analyze verify` with
/// nothing to say; the example configuration is a conffile; the man pages
/// and completions are in place. A machine where `nham` is installed
/// already is refused (its configuration would be purged).
fn check_package(deb: &Path) {
    if try_output("dpkg-query", &["-W", "-f=${Status}", "nham"])
        .is_ok_and(|s| s.contains("installed"))
    {
        fail(
            "the package `nham` is installed on this machine: the package check installs and \
             purges it, which would remove its configuration; remove it first (dpkg --purge nham)"
                .into(),
        );
    }
    run("dpkg", &["-i", &deb.display().to_string()]);
    let checked = (|| -> Result<(), String> {
        let contents = try_output("dpkg", &["-L", "nham"])?;
        eprintln!("xtask package: nham installs\n{contents}");
        for bin in ["nhamd", "nhamctl"] {
            let v = try_output(&format!("/usr/bin/{bin}"), &["--version"])?;
            eprintln!("+ /usr/bin/{bin} --version: {}", v.trim());
        }
        for bin in ["nhamd", "nhamctl", "nham-sff"] {
            if try_output("readelf", &["-S", &format!("/usr/bin/{bin}")])?.contains(".debug_info") {
                return Err(format!("/usr/bin/{bin} is not stripped"));
            }
        }
        let said = try_output(
            "systemd-analyze",
            &["verify", "/lib/systemd/system/nhamd.service"],
        )?;
        if !said.trim().is_empty() {
            return Err(format!("systemd-analyze verify nhamd.service:\n{said}"));
        }
        eprintln!("+ systemd-analyze verify /lib/systemd/system/nhamd.service: clean");
        if !try_output("dpkg-query", &["-W", "-f=${Conffiles}", "nham"])?
            .contains("/etc/nham/nhamd.toml")
        {
            return Err("/etc/nham/nhamd.toml is not a conffile of nham".into());
        }
        for path in [
            "/usr/share/man/man8/nhamd.8.gz",
            "/usr/share/man/man1/nhamctl.1.gz",
            "/usr/share/bash-completion/completions/nhamctl",
            "/usr/share/zsh/vendor-completions/_nhamctl",
            "/usr/share/fish/vendor_completions.d/nhamctl.fish",
            "/usr/share/nham/alerts.yml",
        ] {
            if !contents.lines().any(|l| l == path) {
                return Err(format!("the package has no {path}"));
            }
        }
        Ok(())
    })();
    run("dpkg", &["--purge", "nham"]);
    match checked {
        Ok(()) => eprintln!("xtask package: installed, checked and removed"),
        Err(why) => fail(format!(
            "the package check failed (package removed again): {why}"
        )),
    }
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
            check_package(&package());
        }
        Some("package") => {
            let deb = package();
            // `--check`: install it here, check it, remove it (as CI does).
            if rest.contains(&"--check") {
                check_package(&deb);
            }
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <demo|test|setup|package> [ARGS]\n\
                 \n  demo     install what is missing, then run the main job\
                 \n  test     install what is missing, then fmt, clippy, every test and the package\
                 \n  package  build the Debian package (target/packaging/); --check: install, check, remove\
                 \n  setup    install what is missing (root)"
            );
            exit(2);
        }
    }
}
