//! `nham-sff`: one chain's Service Function Forwarder as a process of its
//! own, so that the packets it holds outlive the control plane.
//!
//! `nhamd` starts it (in its own session, so the daemon's signals do not
//! reach it), writes the chain's [`nham_sff::SffConfig`] as JSON on its
//! stdin, and waits for the line `ready <pid>` on its stdout. From then on
//! the daemon, or a restarted one, drives it over the Unix socket given by
//! `--socket` ([`nham_sff::remote`]). It stops on a `Shutdown` request or
//! SIGTERM/SIGINT, releasing its ports and XDP programs.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "nham-sff",
    version,
    about = "NHAM service function forwarder process (started by nhamd)"
)]
struct Args {
    /// Unix socket to serve the control protocol on (mode 0600).
    #[arg(long)]
    socket: PathBuf,
    /// Scheduling priority (nice value, -20 to 19) of the forwarder: below
    /// 0 it wins the CPU over VNFs and checkpoint work on a busy host (it
    /// sleeps when idle, so it starves nothing).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    nice: i32,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // As nhamd logs (RUST_LOG, NHAM_LOG_FORMAT), to the file nhamd gave
    // as stderr.
    nham_control::init_logging(nham_control::LogFormat::from_env());
    // Before any thread is started: they inherit it.
    if args.nice != 0 {
        rustix::process::setpriority_process(None, args.nice)
            .with_context(|| format!("setting the nice value to {}", args.nice))?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone()).context("installing signal handlers")?;
    }
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading the configuration on stdin")?;
    let config: nham_sff::SffConfig =
        serde_json::from_str(&text).context("parsing the configuration")?;
    let sff = nham_sff::spawn(None, config).context("starting the forwarder")?;
    let _ = std::fs::remove_file(&args.socket);
    let listener = std::os::unix::net::UnixListener::bind(&args.socket)
        .with_context(|| format!("binding {}", args.socket.display()))?;
    std::fs::set_permissions(&args.socket, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod {}", args.socket.display()))?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "ready {}", std::process::id())?;
        out.flush()?;
    }
    tracing::info!(
        pid = std::process::id(),
        "serving on {}",
        args.socket.display()
    );
    let result = nham_sff::remote::serve(sff, listener, stop);
    let _ = std::fs::remove_file(&args.socket);
    let stats = result.context("forwarding")?;
    tracing::info!(pid = std::process::id(), "stopped; {stats:?}");
    Ok(())
}
