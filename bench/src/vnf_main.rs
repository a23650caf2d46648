//! `nham-vnf`: one sample VNF (crate `nham-vnf`) as a plain process. It reads NSH frames from
//! its interface through an AF_PACKET socket (so CRIU can checkpoint it),
//! applies its function and sends the outputs back with SI decremented.
//!
//! It prints `ready` on stdout once its socket is open.
//!
//! Signals: SIGUSR1 writes the full state as JSON to `--state` (atomically:
//! a temporary file renamed into place); SIGTERM/SIGINT write it and exit.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use nham_vnf::{nsh_step, Kind, State};
use pnet_datalink::Channel;

#[derive(Parser, Debug)]
#[command(name = "nham-vnf", version, about = "NHAM sample NSH-aware VNF")]
struct Args {
    /// monitor, firewall, nat or emitter.
    #[arg(long)]
    kind: Kind,
    /// Interface to serve (in the current network namespace).
    #[arg(long, env = "NHAM_IFACE")]
    iface: String,
    /// Where SIGUSR1 writes the state.
    #[arg(long)]
    state: Option<PathBuf>,
    /// Misbehave on purpose, for tests and drills: `garbage` also sends a
    /// frame that is not NSH, `no-si` leaves the SI undecremented, `ttl1`
    /// sets the NSH TTL to 1 (the SFF's decrement then expires it).
    #[arg(long, default_value = "none")]
    inject: Inject,
    /// Misbehave on every Nth input (1-based: inputs N, 2N, ...).
    #[arg(long, default_value_t = 10)]
    inject_every: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Inject {
    None,
    Garbage,
    NoSi,
    Ttl1,
}

fn dump(state: &State, path: &Option<PathBuf>) -> anyhow::Result<()> {
    let Some(path) = path else { return Ok(()) };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let iface = pnet_datalink::interfaces()
        .into_iter()
        .find(|i| i.name == args.iface)
        .with_context(|| format!("no interface {} in this namespace", args.iface))?;
    // Signals first: once the socket is open it counts as started (a
    // state request may come at once, and as pid 1 of its PID namespace a
    // signal without a handler would be ignored).
    let usr1 = Arc::new(AtomicBool::new(false));
    let term = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR1, usr1.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, term.clone())?;
    // An AF_PACKET socket bound to every protocol, with Linux's default
    // receive buffer: as VNFs are commonly written. NHAM learns what the
    // socket holds and sends it no more than that.
    let socket = rustix::net::socket(
        rustix::net::AddressFamily::PACKET,
        rustix::net::SocketType::RAW,
        Some(rustix::net::eth::ALL),
    )
    .context("opening an AF_PACKET socket")?;
    let config = pnet_datalink::Config {
        read_timeout: Some(Duration::from_millis(50)),
        read_buffer_size: 65536,
        write_buffer_size: 65536,
        socket_fd: Some(std::os::fd::IntoRawFd::into_raw_fd(socket)),
        ..Default::default()
    };
    let (mut tx, mut rx) = match pnet_datalink::channel(&iface, config)? {
        Channel::Ethernet(tx, rx) => (tx, rx),
        _ => bail!("unexpected channel type"),
    };
    let mut state = State::new(args.kind);
    // Tell whoever started us that the socket is open.
    println!("ready");
    std::io::Write::flush(&mut std::io::stdout())?;
    let mut scratch = Vec::new();
    let mut inputs = 0u64;
    loop {
        if usr1.swap(false, Ordering::Relaxed) {
            dump(&state, &args.state)?;
        }
        if term.load(Ordering::Relaxed) {
            dump(&state, &args.state)?;
            return Ok(());
        }
        match rx.next() {
            Ok(frame) => {
                inputs += 1;
                let misbehave =
                    args.inject != Inject::None && inputs % args.inject_every.max(1) == 0;
                let mut outs = nsh_step(&mut state, frame, &mut scratch);
                if misbehave {
                    match args.inject {
                        Inject::Garbage => outs.push(vec![0x5A; 60]),
                        Inject::NoSi | Inject::Ttl1 => {
                            for out in &mut outs {
                                if out.len() > 14 + 8 {
                                    let mut p = nham_dataplane::nsh::NshPacket::new_unchecked(
                                        &mut out[14..],
                                    );
                                    if args.inject == Inject::NoSi {
                                        let si = p.si();
                                        p.set_si(si.wrapping_add(1));
                                    } else {
                                        p.set_ttl(1);
                                    }
                                }
                            }
                        }
                        Inject::None => {}
                    }
                }
                for out in outs {
                    if let Some(Err(e)) = tx.send_to(&out, None) {
                        eprintln!("nham-vnf: send failed: {e}");
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::Interrupted
                ) => {}
            // The link went down (cut off): the socket reports it once;
            // wait for the link to come back, as a network function would.
            Err(e) => {
                eprintln!("nham-vnf: reading the interface: {e}; retrying");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}
