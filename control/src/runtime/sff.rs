//! The chain's SFF process (`nham-sff`): started with its configuration
//! on stdin, ready when it says so, stopped over its socket.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nham_sff::remote::SffClient;
use nham_sff::{PollPolicy, PortSpec, SffConfig};

use super::{process, RuntimeError};

/// The chain's SFF process.
#[derive(Debug)]
pub struct SffProcess {
    /// Its pid.
    pub pid: u32,
    /// Its control socket.
    pub socket: PathBuf,
    /// The child handle, when this daemon started it (to reap it).
    child: Option<std::process::Child>,
}

impl SffProcess {
    /// The SFF process `pid` an earlier daemon started, on `socket`.
    pub fn adopt(pid: u32, socket: PathBuf) -> Self {
        Self {
            pid,
            socket,
            child: None,
        }
    }

    /// Stops it: `Shutdown` over its socket, then SIGKILL if it is still
    /// there after `grace`.
    pub fn stop(&mut self, client: Option<&SffClient>, grace: Duration) {
        if let Some(c) = client {
            let _ = c.shutdown();
        }
        let deadline = Instant::now() + grace;
        let gone = |p: &mut Self| match p.child.as_mut() {
            Some(c) => c.try_wait().map(|s| s.is_some()).unwrap_or(true),
            // Not ours to reap: gone once it is a zombie.
            None => nham_netns::process_state(p.pid).is_none_or(|(state, _)| state == 'Z'),
        };
        while !gone(self) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        if !gone(self) {
            let _ = process::signal(self.pid, nix::sys::signal::Signal::SIGKILL);
            if let Some(c) = self.child.as_mut() {
                let _ = c.wait();
            }
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// How the daemon runs SFFs.
#[derive(Debug, Clone)]
pub struct SffOptions {
    /// Cores to pin chains' SFFs to, one core per chain, each SFF started
    /// taking the next (empty: not pinned).
    pub cores: Vec<usize>,
    /// How many SFFs were given a core (see [`SffOptions::next_core`]),
    /// shared by the clones.
    pub cores_given: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Packets each hop may hold (`buffer_rx`): at least two checkpoint
    /// intervals at the chain's rate, since packets are released only once
    /// the checkpoint before the newest includes them. When full, the
    /// chain backs up to its ingress (counted, never dropped by the SFF).
    pub hold_packets: usize,
    /// Nice value of the SFF processes (`nham-sff --nice`).
    pub nice: i32,
    /// Idle behaviour.
    pub poll: PollPolicy,
    /// The `nham-sff` executable (default: next to this program's, then
    /// `PATH`).
    pub binary: Option<PathBuf>,
    /// How the SFF processes log (as the daemon does).
    pub log_format: crate::LogFormat,
}

impl Default for SffOptions {
    fn default() -> Self {
        Self {
            cores: Vec::new(),
            cores_given: Default::default(),
            hold_packets: DEFAULT_HOLD_PACKETS,
            nice: DEFAULT_SFF_NICE,
            poll: PollPolicy::default(),
            binary: None,
            log_format: crate::LogFormat::Text,
        }
    }
}

/// A chain's ports as its SFF serves them.
#[derive(Debug, Clone)]
pub struct ChainPorts {
    /// Where traffic comes in.
    pub ingress: PortSpec,
    /// Where it leaves.
    pub egress: PortSpec,
    /// One port per VNF, in chain order.
    pub hops: Vec<PortSpec>,
    /// Per hop, the 1R-AA replica's port, if any.
    pub standby: Vec<Option<PortSpec>>,
    /// Per hop, the ports of MR-AA members 1 to M-1.
    pub members: Vec<Vec<PortSpec>>,
}

impl ChainPorts {
    /// A chain of plain hops (no replica or member ports).
    pub fn plain(ingress: PortSpec, egress: PortSpec, hops: Vec<PortSpec>) -> Self {
        let n = hops.len();
        Self {
            ingress,
            egress,
            hops,
            standby: vec![None; n],
            members: vec![Vec::new(); n],
        }
    }
}

/// The SFF configuration of a chain: its `ports`, its classifier `rules`
/// for `spi`, which hops hold packets (`protect`), and the options every
/// SFF of the daemon shares. The one place a chain's SFF configuration is
/// made: `nhamd` (`chain::ChainRuntime::start`) and the bench lab both
/// take it from here, so what the benches measure is what `nhamd` runs.
pub fn sff_config(
    ports: ChainPorts,
    rules: Vec<nham_dataplane::classifier::Rule>,
    spi: u32,
    protect: Vec<bool>,
    options: &SffOptions,
) -> SffConfig {
    let mut config = SffConfig::for_chain(
        ports.ingress,
        ports.egress,
        ports.hops,
        rules,
        spi,
        options.hold_packets,
    );
    config.protect = protect;
    config.standby = ports.standby;
    config.members = ports.members;
    config.poll = options.poll;
    config.core = options.next_core();
    // Every packet the hops may hold has a buffer: outputs never wait on a
    // full ring (see SffConfig::pool_slots_needed).
    config.pool_slots = config.pool_slots_needed();
    config
}

/// Default of [`SffOptions::hold_packets`]: two seconds at 4000 packets/s.
pub const DEFAULT_HOLD_PACKETS: usize = 8192;

/// Default of [`SffOptions::nice`]: the forwarder before VNFs and CRIU.
pub const DEFAULT_SFF_NICE: i32 = -10;

impl SffOptions {
    /// The core of the next SFF started: [`cores`](Self::cores) in turn.
    /// (An SFF keeps its core while it runs; one `nhamd` restarts after a
    /// failure takes the next.)
    pub fn next_core(&self) -> Option<usize> {
        (!self.cores.is_empty()).then(|| {
            let i = self
                .cores_given
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.cores[i % self.cores.len()]
        })
    }

    /// The `nham-sff` executable to run.
    pub fn binary(&self) -> PathBuf {
        if let Some(b) = &self.binary {
            return b.clone();
        }
        crate::sibling_binary("nham-sff").unwrap_or_else(|| PathBuf::from("nham-sff"))
    }
}

/// The SFF's port on `iface` of the daemon's namespace (the chain's
/// `role`: ingress or egress).
pub fn port_spec(iface: &str, role: &'static str) -> Result<PortSpec, RuntimeError> {
    let found = nham_netns::link(iface).map_err(|source| RuntimeError::Interface {
        role,
        iface: iface.to_string(),
        source,
    })?;
    Ok(PortSpec {
        iface: iface.to_string(),
        ifindex: found.ifindex,
        mac: found.mac,
        peer_mac: [0xff; 6],
    })
}

/// Moves process `pid` into the cgroup at `dir` (made if need be), which
/// stays when this returns; a failure is logged, not fatal (the SFF then
/// stays in the daemon's group, as on a host without cgroup2).
pub fn join_cgroup(dir: &Path, pid: u32) {
    match super::cgroup::Cgroup::create(dir) {
        Ok(mut g) => {
            g.keep();
            if let Err(e) = g.add(pid) {
                tracing::warn!(pid, "SFF left in nhamd's cgroup: {e}");
            }
        }
        Err(e) => tracing::warn!(pid, "SFF left in nhamd's cgroup: {e}"),
    }
}

/// Starts `nham-sff` on `config`, listening on `socket`, logging to `log`,
/// in cgroup `cgroup` if given (made if need be; left in place when the
/// process is: the chain's teardown removes it); returns once it says it
/// is ready.
pub fn spawn_sff(
    opts: &SffOptions,
    config: &SffConfig,
    socket: &Path,
    log: &Path,
    cgroup: Option<&Path>,
) -> Result<SffProcess, RuntimeError> {
    let err = RuntimeError::Sff;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    }
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| err(format!("{}: {e}", log.display())))?;
    let bin = opts.binary();
    // `setsid` execs in place: the SFF leads a session of its own, out of
    // reach of signals meant for the daemon (Ctrl-C on its terminal).
    let mut child = Command::new("setsid")
        .arg(&bin)
        .arg("--socket")
        .arg(socket)
        .arg(format!("--nice={}", opts.nice))
        .env(crate::LogFormat::ENV, opts.log_format.name())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(out)
        .spawn()
        .map_err(|e| err(format!("setsid {}: {e}", bin.display())))?;
    if let Some(dir) = cgroup {
        join_cgroup(dir, child.id());
    }
    let json = serde_json::to_vec(config).map_err(|e| err(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(&json)
            .map_err(|e| err(format!("writing its configuration: {e}")))?;
    }
    let stdout = child.stdout.take();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        if let Some(o) = stdout {
            let _ = std::io::BufReader::new(o).read_line(&mut line);
        }
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
    match line.trim().strip_prefix("ready ") {
        Some(_) => Ok(SffProcess {
            pid: child.id(),
            socket: socket.to_path_buf(),
            child: Some(child),
        }),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            // Its last words, without backtrace lines.
            let tail = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = tail
                .lines()
                .rev()
                .filter(|l| {
                    let t = l.trim_start();
                    !(t.is_empty()
                        || t.starts_with("at ")
                        || t.starts_with("stack backtrace")
                        || t.starts_with("note: ")
                        || t.split_once(':')
                            .is_some_and(|(n, _)| n.parse::<u32>().is_ok()))
                })
                .take(5)
                .collect();
            Err(err(format!(
                "{} did not become ready: {}",
                bin.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join(" / ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chains_take_the_sff_cores_in_turn() {
        let none = SffOptions::default();
        assert_eq!(none.next_core(), None);
        let spread = SffOptions {
            cores: vec![1, 2, 3],
            ..SffOptions::default()
        };
        // Clones (one per chain) share the turn.
        let other = spread.clone();
        let picked = [
            spread.next_core(),
            other.next_core(),
            spread.next_core(),
            other.next_core(),
        ];
        assert_eq!(picked, [Some(1), Some(2), Some(3), Some(1)]);
    }
}
