//! High-availability trials through the real daemon: `nhamd` runs in the
//! lab's SFF namespace (a process of its own, driven over gRPC on a Unix
//! socket); it builds a chain of sample VNFs (and, optionally, a Python VNF)
//! with a resilience mechanism, checkpoints them and recovers them while
//! traffic flows from the source namespace to the sink. Failures are
//! injected through the API (`InjectFault`: a crash is SIGKILL, a hang
//! SIGSTOP, a cut-off the VNF's link down) in rounds of one or more VNFs at
//! once.
//!
//! What a trial checks and measures:
//! - the sink against the failure-free reference output (lost, duplicated,
//!   reordered, digest), and every VNF's final state against its reference
//!   state;
//! - detection (fault injected to failure detected), recovery (detection to
//!   the VNF running again and replaying) from the daemon's events;
//! - downtime per round: the longest gap between frames reaching the sink,
//!   from the last frame before the failure to the first after the
//!   recovery;
//! - checkpoint pauses (delivery stopped) from the daemon's events.
//!
//! Everything is torn down on the way out, also on error: the chain is
//! deleted, `nhamd` stopped (SIGTERM, then SIGKILL), the lab's namespaces
//! removed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nham_control::api;
use nham_traffic::{FrameSize, TrafficSpec, Verdict};
use nham_vnf::Kind;
use serde::Serialize;
use tokio_stream::StreamExt;

use crate::hosts::HostLab;
use crate::lab::{Lab, SPI};

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct HaSpec {
    /// Run `nhamd --expedite-rcu` (host tuning: expedited RCU grace
    /// periods while it runs).
    pub expedite_rcu: bool,
    /// The mechanism of every VNF.
    pub mechanism: api::Mechanism,
    /// Sample VNFs, in chain order.
    pub kinds: Vec<Kind>,
    /// VNFs written outside this project, appended after the sample ones:
    /// their commands (`{state}` stands for the file SIGUSR1 writes their
    /// state to). Each is a pass-through that counts the NSH frames it
    /// serves, their inner frames' bytes and a running CRC-32 of them, as
    /// JSON `{"packets", "bytes", "crc"}` (`bench/vnf/python/nsh_counter.py`,
    /// `bench/vnf/conformance/nsh_vnf.c`).
    pub foreign_vnfs: Vec<Vec<String>>,
    /// Per round, how many VNFs fail at once.
    pub rounds: Vec<usize>,
    /// How they fail (crash, hang, cut-off).
    pub fault: api::Fault,
    /// Offered rate, frames per second.
    pub rate: f64,
    /// Traffic between rounds.
    pub gap: Duration,
    /// Checkpoint period of every VNF.
    pub checkpoint_interval_ms: u32,
    /// Flows in the traffic.
    pub flows: u32,
    /// The `nhamd` binary.
    pub nhamd: PathBuf,
    /// The `nham-vnf` binary.
    pub vnf_bin: PathBuf,
    /// Rounds (indices into `rounds`) that restart `nhamd` under traffic:
    /// it is killed (SIGKILL), that round's VNFs are killed while no
    /// daemon watches them, and a new `nhamd` on the same state directory
    /// must re-attach to the chain (its SFF still holding packets), adopt
    /// the live VNFs and recover the dead ones.
    pub restarts: Vec<usize>,
    /// Before each round, checkpoint the victims now and corrupt that
    /// newest checkpoint's file on disk: recovery must detect it and restore
    /// the one before (0R) or the standby's own copy (1R-AS).
    pub corrupt_newest: bool,
    /// Every fault lands while its VNF is frozen for a checkpoint
    /// (`InjectFault` with `during_checkpoint`; crashes only).
    pub during_checkpoint: bool,
    /// Every round fails this VNF (one at a time), not a rotating set.
    pub same_victim: Option<usize>,
    /// In each round, once the first victim's recovery has started, the
    /// next VNF is crashed too: a second failure during a recovery.
    pub second_failure: bool,
    /// MR-AA: the members of each victim to crash at once (empty: member
    /// 0, the VNF's own process). All of them: the hop fails and replays.
    pub members: Vec<u32>,
    /// Per round (when not empty): the mechanism (and MR-AA members, 0 for
    /// the default) the round's victims are moved to by `SetMechanism`,
    /// under traffic, before they fail.
    pub walk: Vec<(api::Mechanism, u32)>,
    /// The cluster host each VNF runs on (`VnfSpec.host`; empty or
    /// shorter: the chain's own host). Needs [`run_in_cluster`].
    pub placement: Vec<String>,
    /// Each round fails a whole host (its link down, every process of it
    /// killed at once: `HostLab::fail_host`) — the one running the round's
    /// first victim — instead of injecting `fault`; its VNFs are the round's
    /// victims. Once they are back, the host is brought back (link up, a
    /// new `nhamd`) for the rounds after. Needs [`run_in_cluster`].
    pub host_failures: bool,
    /// With `host_failures`: each round restarts the host's `nhamd`
    /// instead (SIGKILL, then a new one at once; its link stays up). The
    /// new one sweeps what the old one hosted, so every VNF there is a
    /// victim again.
    pub host_restarts: bool,
    /// Traffic after the last round (with no rounds: a failure-free trial
    /// this long, plus the harness's 1.5 s).
    pub tail: Duration,
    /// MR-AA: members per VNF, member 0 included (0: nhamd's default).
    pub replicas: u32,
    /// `nhamd` runs as systemd runs `packaging/nhamd.service`: in a cgroup
    /// of its own (the unit's), `--on-exit keep`; a restart round (see
    /// [`restarts`](Self::restarts)) stops it as systemd stops the unit
    /// (`KillMode=mixed`): SIGTERM, and once it has gone every process
    /// left in its group killed at once (`cgroup.kill`); the next `nhamd`
    /// starts in the same group. The chains must forward on meanwhile.
    pub unit_stop: bool,
    /// A progress bar of the rounds on stderr when it is a terminal (long
    /// benchmark runs; not with `--json`).
    pub progress: bool,
    /// `nhamd` serves Prometheus metrics (`--metrics-listen` on
    /// 127.0.0.1:[`METRICS_PORT`] of its namespace), scraped at the end of
    /// the trial into [`HaReport::metrics`].
    pub metrics: bool,
    /// Per round, the traffic before it (when not empty, instead of
    /// [`gap`](Self::gap)): drawn gaps, as a failure process.
    pub gaps: Vec<Duration>,
    /// The harness's allowance per round beyond its gap (the recovery and
    /// the wait for it), instead of the one it plans from the mechanism
    /// and the fault.
    pub allowance: Option<Duration>,
    /// The whole traffic's length, instead of the one planned from the
    /// rounds (with [`skip_late_rounds`](Self::skip_late_rounds): a run of
    /// a given length, failures as they fit).
    pub traffic: Option<Duration>,
    /// A round that would start after the traffic ends is skipped (counted
    /// in [`HaReport::rounds_skipped`]), not the trial's error.
    pub skip_late_rounds: bool,
}

/// A trial's raw samples, one per round, per checkpoint and per frame at
/// the sink (not in its JSON: `nham-bench paper` writes them out).
#[derive(Debug, Clone, Default)]
pub struct Samples {
    /// Per round run.
    pub rounds: Vec<RoundSample>,
    /// Per checkpoint taken.
    pub checkpoints: Vec<CheckpointSample>,
    /// Every frame's arrival at the sink, µs since the traffic started.
    pub arrival_us: Vec<u64>,
    /// The traffic's length, s (first frame sent to the last one's planned
    /// time).
    pub traffic_s: f64,
    /// CPU time the whole host spent busy during the traffic, s (all
    /// cores; from `/proc/stat`).
    pub host_cpu_busy_s: f64,
}

/// One round of failures.
#[derive(Debug, Clone, Default)]
pub struct RoundSample {
    /// When its fault was, ms since the traffic started.
    pub at_ms: f64,
    /// Processes failed in it (VNFs, or MR-AA members).
    pub failures: usize,
    /// From the fault to its last failure detected, by the daemon's event
    /// times (`None`: not seen).
    pub detection_ms: Option<f64>,
    /// From the fault to its last victim running again (the daemon's
    /// `RecoveryFinished` times; a restart round: the harness's clock).
    pub failure_to_running_ms: Option<f64>,
    /// The longest gap at the sink across it (see [`HaReport::downtime_ms`];
    /// `None`: nothing arrived after it).
    pub downtime_ms: Option<f64>,
}

/// One checkpoint.
#[derive(Debug, Clone, Default)]
pub struct CheckpointSample {
    /// Its VNF.
    pub vnf: String,
    /// Delivery to the VNF stopped, ms.
    pub pause_ms: f64,
    /// CRIU's dump, ms.
    pub dump_ms: f64,
    /// The CRIU image, bytes.
    pub size_bytes: u64,
    /// In the state database (compressed), bytes.
    pub stored_bytes: u64,
}

/// The host's busy CPU time since boot, s (every core; `/proc/stat`'s
/// first line less idle and iowait).
pub fn host_cpu_busy_s() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = stat.lines().next() else {
        return 0.0;
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest counted in user).
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|&(i, _)| i != 3 && i != 4)
        .map(|(_, x)| x)
        .sum();
    // USER_HZ is 100 on Linux.
    busy as f64 / 100.0
}

/// Where a trial's `nhamd` serves `/metrics` (in its own namespace).
pub const METRICS_PORT: u16 = 9477;

/// Now, Unix ns.
fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Median, 99th percentile and maximum of a sample, in ms.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Summary {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Sample size.
    pub n: usize,
}

impl Summary {
    /// Of `v` (any order).
    pub fn of(v: &[f64]) -> Self {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        let q = |q: f64| {
            if v.is_empty() {
                0.0
            } else {
                v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1]
            }
        };
        Self {
            p50: q(0.5),
            p99: q(0.99),
            max: v.last().copied().unwrap_or(0.0),
            n: v.len(),
        }
    }
}

/// What a trial found.
#[derive(Debug, Clone, Serialize)]
pub struct HaReport {
    /// Mechanism name.
    pub mechanism: String,
    /// VNFs in the chain.
    pub vnfs: usize,
    /// Failure rounds.
    pub rounds: usize,
    /// VNF failures injected in all.
    pub failures: usize,
    /// Whether the host ran with expedited RCU grace periods
    /// (`nhamd --expedite-rcu`).
    pub rcu_expedited: bool,
    /// The causes of the failures detected, with how many of each (more
    /// detections than failures injected: a false positive, named here).
    pub failure_causes: std::collections::BTreeMap<String, usize>,
    /// Failures detected, by VNF.
    pub failures_by_vnf: std::collections::BTreeMap<String, usize>,
    /// Frames each VNF's sockets dropped, as `VnfInputDropped` events said
    /// (each one a failure NHAM recovered).
    pub input_dropped_by_vnf: std::collections::BTreeMap<String, u64>,
    /// Fault injected (a host failure: the host failed) to failure
    /// detected.
    pub detection_ms: Summary,
    /// Failure detected to the VNF running again (replay started).
    pub recovery_ms: Summary,
    /// Fault injected (or host failed) to the VNF (MR-AA: member) running
    /// again, by the daemon's event times: detection and recovery
    /// together, as an operator sees them.
    pub failure_to_running_ms: Summary,
    /// Longest sink silence around each round.
    pub downtime_ms: Summary,
    /// The same measure with no failure: per round, the longest silence in
    /// a window as long, ending 50 ms before the failure (the noise floor
    /// of a loaded host: scheduling, other hops' checkpoints).
    pub downtime_baseline_ms: Summary,
    /// One-way latency, generator to sink, of every frame received
    /// (replays and recoveries included).
    pub latency_ms: Summary,
    /// Delivery pause of each checkpoint.
    pub checkpoint_pause_ms: Summary,
    /// Of the pause: draining, frozen, CRIU's dump.
    pub checkpoint_drain_ms: Summary,
    /// The VNF stopped.
    pub checkpoint_frozen_ms: Summary,
    /// CRIU's dump.
    pub checkpoint_dump_ms: Summary,
    /// Copying each checkpoint to another host before its commit (all 0
    /// when copies stay on the host).
    pub checkpoint_copy_ms: Summary,
    /// Checkpoints taken.
    pub checkpoints: usize,
    /// Recoveries that restored an image (the rest started afresh).
    pub restored: usize,
    /// Recoveries that failed.
    pub recovery_failures: usize,
    /// Why they failed.
    pub recovery_failure_reasons: Vec<String>,
    /// Expected frames that never arrived.
    pub lost: u64,
    /// Frames that arrived twice.
    pub duplicated: u64,
    /// Frames out of order.
    pub reordered: u64,
    /// Whether the sink's stream equals the reference stream.
    pub digest_equal: bool,
    /// VNFs whose final state differs from the failure-free run.
    pub state_mismatches: usize,
    /// Which, and how.
    pub mismatch_detail: Vec<String>,
    /// Frames sent.
    pub sent: u64,
    /// Frames the sink expected.
    pub expected: usize,
    /// Frames the sink got.
    pub received: usize,
    /// Offered rate.
    pub rate: f64,
    /// Replayed outputs the SFF suppressed as duplicates.
    pub duplicates_suppressed: u64,
    /// Of those, replays that differed from the originals (a
    /// non-deterministic VNF), as `GetStats` counts them.
    pub nondeterministic_outputs: u64,
    /// `NonDeterminismDetected` events seen, by VNF.
    pub nondeterminism_events: Vec<String>,
    /// Recoveries that restored an older checkpoint because the newest was
    /// unusable, and why.
    pub fallbacks: Vec<String>,
    /// 1R-AA recoveries that failed over to the replica (the rest restored
    /// from the store, the replica not being current).
    pub switched: usize,
    /// Frames the sink's own socket dropped because the sink (not NHAM)
    /// was too slow: a loss of the measurement, counted apart.
    pub sink_kernel_drops: u64,
    /// The rate the generator achieved (frames/s): below `rate` when it
    /// could not offer that much.
    pub offered_pps: f64,
    /// SFF counters at the end.
    pub stats: SffCounters,
    /// With [`HaSpec::metrics`]: `nhamd`'s `/metrics` at the end, as a
    /// Prometheus scrape gets it.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub metrics: String,
    /// Rounds not run: they would have started after the traffic (with
    /// [`HaSpec::skip_late_rounds`]).
    pub rounds_skipped: usize,
    /// The raw samples.
    #[serde(skip)]
    pub samples: Samples,
}

/// The SFF's counters, as `GetStats` gives them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SffCounters {
    /// Frames in.
    pub ingress: u64,
    /// Delivered to VNFs (replays included).
    pub delivered: u64,
    /// Frames out.
    pub egress: u64,
    /// Outputs of failed incarnations discarded.
    pub stale_discarded: u64,
    /// Malformed, SI or TTL errors.
    pub malformed: u64,
    /// Frames the kernel dropped at ingress (chain overloaded): the sink
    /// cannot be compared with a reference that assumes every frame sent
    /// entered the chain.
    pub ingress_overflow: u64,
    /// VNF outputs the kernel dropped before the SFF read them (must be 0).
    pub vnf_outputs_lost: u64,
    /// Frames the kernel dropped at VNFs' full sockets, each drop repaired
    /// by a recovery of that VNF.
    pub vnf_input_dropped: u64,
    /// Checkpoint marks put off: frames for the VNF still in the SFF's tx
    /// ring (the VNF drained again).
    pub marks_in_transit: u64,
}

impl HaReport {
    /// Exactly-once held: nothing lost, duplicated or reordered, the same
    /// stream, every state equal, every recovery done.
    pub fn is_exact(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.digest_equal
            && self.state_mismatches == 0
            && self.recovery_failures == 0
    }

    /// What kept the trial from an exactly-once verdict (`None`: exact,
    /// nothing dropped at the chain's ingress). An ingress overflow comes
    /// first: with frames dropped there, the sink's counts follow from it.
    pub fn violation(&self) -> Option<String> {
        let dropped = self.stats.ingress_overflow;
        if dropped > 0 {
            return Some(format!(
                "overloaded, no exactly-once verdict: the kernel dropped {dropped} frames at the chain's ingress (hold buffers full); the sink then counts lost {} duplicated {}",
                self.lost, self.duplicated
            ));
        }
        (!self.is_exact()).then(|| {
            format!(
                "not exactly-once: lost {} duplicated {} reordered {} digest equal {} state mismatches {:?} recovery failures {:?}",
                self.lost,
                self.duplicated,
                self.reordered,
                self.digest_equal,
                self.mismatch_detail,
                self.recovery_failure_reasons
            )
        })
    }
}

/// A chain of `n` sample VNFs: monitor, firewall, NAT, emitter, then
/// monitor, emitter, monitor, monitor. (Cycling the first four again would
/// put a second firewall behind the NAT, which drops everything: the
/// translated traffic comes from outside and answers no connection.)
pub fn sample_chain(n: usize) -> Vec<Kind> {
    const TAIL: [Kind; 4] = [Kind::Monitor, Kind::Emitter, Kind::Monitor, Kind::Monitor];
    (0..n)
        .map(|i| {
            if i < 4 {
                Kind::ALL[i]
            } else {
                TAIL[(i - 4) % 4]
            }
        })
        .collect()
}

/// Finds a sibling binary of the running one (`name`, next to it or one
/// directory up, where test binaries live), or `$env`.
pub fn sibling_binary(name: &str, env: &str) -> Result<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    nham_control::sibling_binary(name).with_context(|| {
        format!(
            "{name} not found next to {} (build it: cargo build -p nham-control, or set {env})",
            std::env::current_exe().unwrap_or_default().display()
        )
    })
}

/// Starts `nhamd` (binary `bin`, arguments `argv`) in namespace `netns`,
/// its output appended to `log`, its log filter `NHAM_HA_LOG` (`info` by
/// default).
pub fn spawn_nhamd(
    netns: &nham_netns::Netns,
    bin: &Path,
    argv: Vec<String>,
    log: &Path,
) -> Result<Child> {
    let out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let err = out.try_clone()?;
    let exe = bin.to_path_buf();
    Ok(netns.run(move || {
        Command::new(&exe)
            .args(argv)
            .env(
                "RUST_LOG",
                std::env::var("NHAM_HA_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
    })??)
}

/// `nhamd` running in the lab's SFF namespace.
struct Nhamd {
    child: Child,
    /// The cgroup it runs in, standing for its systemd unit's (see
    /// [`HaSpec::unit_stop`]); `None`: the test's own.
    unit: Option<PathBuf>,
    /// Replaced by the next `nhamd` of a restart round (its chains are
    /// that one's now).
    replaced: bool,
    addr: String,
    log: PathBuf,
    bin: PathBuf,
    dir: PathBuf,
    tuning: Tuning,
    /// More flags (a cluster host's).
    extra: Vec<String>,
}

/// How a trial's `nhamd` is tuned.
#[derive(Debug, Clone, Copy)]
struct Tuning {
    interval_ms: u32,
    hold_packets: usize,
    expedite_rcu: bool,
    metrics: bool,
}

impl Nhamd {
    fn start(
        lab: &Lab,
        bin: &Path,
        dir: &Path,
        tuning: Tuning,
        cluster: &[String],
        unit: Option<&Path>,
    ) -> Result<Self> {
        let Tuning {
            interval_ms,
            hold_packets,
            expedite_rcu,
            metrics,
        } = tuning;
        let sock = dir.join("nhamd.sock");
        let _ = std::fs::remove_file(&sock);
        let log = dir.join("nhamd.log");
        let argv = [
            "--unix".to_string(),
            sock.display().to_string(),
            "--state-dir".into(),
            dir.join("state").display().to_string(),
            "--scratch-dir".into(),
            dir.join("scratch").display().to_string(),
            "--checkpoint-interval-ms".into(),
            interval_ms.to_string(),
            "--hold-packets".into(),
            hold_packets.to_string(),
            // Stopped (SIGTERM, at the end or on error), it deletes the
            // chain; killed (SIGKILL, a restart round), it leaves it. As a
            // unit's, SIGTERM is a restart round's stop too: it leaves the
            // chain (the end sweeps it, see Drop).
            "--on-exit".into(),
            if unit.is_some() { "keep" } else { "stop" }.into(),
        ];
        let argv: Vec<String> = argv
            .into_iter()
            .chain(expedite_rcu.then(|| "--expedite-rcu".to_string()))
            .chain(metrics.then(|| "--metrics-listen".to_string()))
            .chain(metrics.then(|| format!("127.0.0.1:{METRICS_PORT}")))
            .collect();
        // NHAM_HA_NHAMD_ARGS: more nhamd flags (tuning experiments).
        let extra: Vec<String> = std::env::var("NHAM_HA_NHAMD_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        let argv = argv
            .into_iter()
            .chain(extra)
            .chain(cluster.iter().cloned())
            .collect();
        let child = match unit {
            // In the unit's group from its first instruction on (the
            // shell joins it, then execs nhamd in place).
            Some(group) => {
                let wrapped = [
                    "-c".to_string(),
                    r#"echo $$ > "$0" && exec "$@""#.into(),
                    group.join("cgroup.procs").display().to_string(),
                    bin.display().to_string(),
                ]
                .into_iter()
                .chain(argv)
                .collect();
                spawn_nhamd(lab.sff_netns(), Path::new("sh"), wrapped, &log)?
            }
            None => spawn_nhamd(lab.sff_netns(), bin, argv, &log)?,
        };
        let mut d = Self {
            child,
            unit: unit.map(Path::to_path_buf),
            replaced: false,
            addr: format!("unix:{}", sock.display()),
            log,
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            tuning,
            extra: cluster.to_vec(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline || d.child.try_wait()?.is_some() {
                bail!("nhamd did not start: {}", d.log_tail());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(d)
    }

    /// Kills the daemon with SIGKILL (no clean-up of its own), handing
    /// what it started to `reaper`.
    fn restart_kill(&mut self, reaper: &Reaper) {
        let pid = self.child.id();
        let p = nix::unistd::Pid::from_raw(pid as i32);
        // Frozen, it starts nothing new while we list what it started.
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGSTOP);
        reaper.adopt(children_of(pid));
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Stops the daemon as systemd stops its unit (`KillMode=mixed`,
    /// `TimeoutStopSec=30s`): SIGTERM; once it has gone (or 30 s later,
    /// SIGKILL), every process left in the unit's group killed at once.
    /// Returns how many were left there.
    fn unit_stop(&mut self, reaper: &Reaper) -> Result<usize> {
        let group = self.unit.clone().context("not run as a unit")?;
        let pid = self.child.id();
        // What it started is ours to reap once it has gone.
        reaper.adopt(children_of(pid));
        let p = nix::unistd::Pid::from_raw(pid as i32);
        let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let procs = std::fs::read_to_string(group.join("cgroup.procs"))?;
        let left: Vec<u32> = procs.lines().filter_map(|l| l.parse().ok()).collect();
        let names: Vec<String> = left
            .iter()
            .map(|p| {
                std::fs::read_to_string(format!("/proc/{p}/comm"))
                    .unwrap_or_default()
                    .trim()
                    .to_string()
            })
            .collect();
        eprintln!("left in the unit's group: {names:?}");
        reaper.adopt(left.iter().copied());
        std::fs::write(group.join("cgroup.kill"), "1").context("cgroup.kill")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_to_string(group.join("cgroup.events"))?.contains("populated 1") {
            if Instant::now() > deadline {
                bail!("the unit's group still has processes 5 s after cgroup.kill");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        Ok(left.len())
    }

    /// Starts a new daemon on the same state directory (in the same unit
    /// group, if any).
    fn restart_start(&mut self, lab: &Lab) -> Result<()> {
        let next = Self::start(
            lab,
            &self.bin,
            &self.dir,
            self.tuning,
            &self.extra.clone(),
            self.unit.as_deref(),
        )?;
        std::mem::replace(self, next).replaced = true;
        Ok(())
    }

    /// Where nhamd's threads and children wait (state and kernel wait
    /// channel of each), and the tail of every log in its directory: what
    /// a stalled recovery is stuck on.
    fn threads(&self) -> String {
        let pid = self.child.id();
        let read = |p: String| std::fs::read_to_string(p).unwrap_or_default();
        let describe = |dir: String| {
            let stat = read(format!("{dir}/stat"));
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            format!(
                "{} {state} {}",
                read(format!("{dir}/comm")).trim(),
                read(format!("{dir}/wchan")).trim()
            )
        };
        let mut out = vec![format!("nhamd {pid} threads:")];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                out.push(format!("  {}", describe(t.path().display().to_string())));
            }
        }
        out.push("its children:".into());
        if let Ok(procs) = std::fs::read_dir("/proc") {
            for p in procs.flatten() {
                let dir = p.path().display().to_string();
                let stat = read(format!("{dir}/stat"));
                let ppid = stat
                    .rsplit_once(") ")
                    .and_then(|(_, r)| r.split_whitespace().nth(1))
                    .and_then(|x| x.parse::<u32>().ok());
                if ppid == Some(pid) {
                    out.push(format!(
                        "  {}: {}",
                        p.file_name().to_string_lossy(),
                        describe(dir)
                    ));
                }
            }
        }
        // Where each thread is, in our code (gdb, when the host has it).
        let bt = std::process::Command::new("timeout")
            .args(["60", "gdb", "-p", &pid.to_string(), "-batch", "-nx"])
            .args(["-ex", "set pagination off", "-ex", "thread apply all bt 40"])
            .output();
        if let Ok(o) = bt {
            let text = String::from_utf8_lossy(&o.stdout);
            let ours: Vec<&str> = text
                .lines()
                .filter(|l| {
                    l.starts_with("Thread ")
                        || l.contains("nham_")
                        || l.contains("waitpid")
                        || l.contains("wait4")
                        || l.contains("waitid")
                })
                .collect();
            out.push(format!("nhamd {pid} stacks (gdb):"));
            out.extend(ours.iter().map(|l| format!("  {}", l.trim())));
        }
        if let Ok(files) = std::fs::read_dir(&self.dir) {
            for f in files.flatten() {
                if f.path().extension().is_some_and(|e| e == "log") && f.path() != self.log {
                    let t = read(f.path().display().to_string());
                    let tail: Vec<&str> = t.lines().rev().take(8).collect();
                    out.push(format!("{}: {}", f.path().display(), tail.join(" | ")));
                }
            }
        }
        out.join("\n")
    }

    fn log_tail(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        t.lines().rev().take(10).collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for Nhamd {
    fn drop(&mut self) {
        if self.unit.is_some() && !self.replaced {
            self.stop_unit_for_good();
            return;
        }
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return; // gone (and reaped: its pid may be someone else's now)
        }
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Nhamd {
    /// The end of a unit's trial: nhamd stopped (it keeps its chains, as
    /// its unit's would), then what it left swept: its chains' cgroups
    /// (every SFF and VNF process killed) and namespaces.
    fn stop_unit_for_good(&mut self) {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !matches!(self.child.try_wait(), Ok(Some(_))) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        nham_control::chain::sweep_daemon(&self.dir.join("state"));
    }
}

/// `nhamd`'s `/metrics` as a Prometheus scrape gets it, from the lab's SFF
/// namespace (where it listens).
fn scrape_metrics(lab: &Lab) -> Result<String> {
    use std::io::{Read, Write};
    let text = lab.sff_netns().run(|| -> std::io::Result<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", METRICS_PORT))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: nhamd\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => bail!("not a 200 answer: {}", text.lines().next().unwrap_or("")),
    }
}

/// Pids of the children of process `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| nham_netns::process_state(pid).is_some_and(|(_, ppid)| ppid == parent))
        .collect()
}

/// Plays init for what a killed `nhamd` leaves: this process becomes a
/// child subreaper, so the daemon's orphans (VNFs, its SFF, CRIU workers)
/// become its children, and a thread reaps those it was told of when they
/// exit — as the host's init does (this sandbox's pid 1 reaps nothing), so
/// restart trials leave no zombies behind.
struct Reaper {
    pids: Arc<Mutex<std::collections::BTreeSet<u32>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reaper {
    fn new() -> Result<Self> {
        nix::sys::prctl::set_child_subreaper(true).context("PR_SET_CHILD_SUBREAPER")?;
        let pids: Arc<Mutex<std::collections::BTreeSet<u32>>> = Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = {
            let (pids, stop) = (pids.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut last_round = false;
                loop {
                    let set: Vec<u32> = pids.lock().expect("reaper").iter().copied().collect();
                    for pid in set {
                        let p = nix::unistd::Pid::from_raw(pid as i32);
                        let reaped = matches!(
                            nix::sys::wait::waitpid(p, Some(nix::sys::wait::WaitPidFlag::WNOHANG)),
                            Ok(nix::sys::wait::WaitStatus::Exited(..))
                                | Ok(nix::sys::wait::WaitStatus::Signaled(..))
                        );
                        if reaped || !Path::new(&format!("/proc/{pid}")).exists() {
                            pids.lock().expect("reaper").remove(&pid);
                        }
                    }
                    if last_round {
                        return;
                    }
                    last_round = stop.load(std::sync::atomic::Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        Ok(Self {
            pids,
            stop,
            thread: Some(thread),
        })
    }

    fn adopt(&self, pids: impl IntoIterator<Item = u32>) {
        self.pids.lock().expect("reaper").extend(pids);
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

type EventLog = Arc<Mutex<Vec<(Instant, api::WatchEventsResponse)>>>;

fn vnf_name(i: usize) -> String {
    format!("vnf{i}")
}

/// The state a foreign pass-through VNF (see [`HaSpec::foreign_vnfs`])
/// must end with, having served `expected` (inner frames, in order): their
/// count and bytes, and the CRC-32 of what the sink received (the frames
/// carry the generator's send time, which no reference can predict; the
/// sink's stream is checked against `expected` apart).
fn foreign_reference(expected: &[Vec<u8>], sink_crc: u32) -> serde_json::Value {
    serde_json::json!({
        "packets": expected.len(),
        "bytes": expected.iter().map(Vec::len).sum::<usize>(),
        "crc": sink_crc,
    })
}

/// A trial's story by time (ms from the start of traffic): every event
/// of the daemon, every gap of more than 3 ms at the sink with the latency
/// of the frame that ended it, and when the sink stopped waiting.
fn timeline(
    events: &[(Instant, api::WatchEventsResponse)],
    trial: &crate::lab::Trial,
    spec: &HaSpec,
    vnfs: usize,
) -> String {
    let mut text = format!(
        "# {} {} {vnfs} VNFs\n",
        spec.mechanism.as_str_name(),
        spec.fault.as_str_name()
    );
    for (at, e) in events {
        text += &format!(
            "{:>10.3} {} {:?}\n",
            at.saturating_duration_since(trial.base).as_secs_f64() * 1e3,
            e.vnf,
            e.event
        );
    }
    let r = &trial.received;
    for (i, w) in r.arrival_us.windows(2).enumerate() {
        if w[1] - w[0] > 3000 {
            text += &format!(
                "{:>10.3} GAP {:.3} ms latency after {:.3}\n",
                w[0] as f64 / 1e3,
                (w[1] - w[0]) as f64 / 1e3,
                (w[1] as f64 - r.sent_us[i + 1] as f64) / 1e3
            );
        }
    }
    text += &format!(
        "{:>10.3} SINK DONE after {} of {} frames (last at {:.3}); egress link (SFF end, sink end): {:?}\n",
        trial
            .ended
            .saturating_duration_since(trial.base)
            .as_secs_f64()
            * 1e3,
        r.seqs.len(),
        trial.sent,
        r.arrival_us.last().copied().unwrap_or(0) as f64 / 1e3,
        trial.egress_link
    );
    text
}

/// Runs one trial.
pub fn run(spec: &HaSpec) -> Result<HaReport> {
    run_in(spec, None)
}

/// [`run`] with `nhamd` as host `name` of the cluster of `hosts`: the
/// chain's namespace joins their underlay, `nhamd` registers in their etcd
/// and keeps each checkpoint on another host before it commits it.
pub fn run_in_cluster(spec: &HaSpec, hosts: &mut HostLab, name: &str) -> Result<HaReport> {
    run_in(spec, Some((hosts, name)))
}

fn run_in(spec: &HaSpec, mut hosts: Option<(&mut HostLab, &str)>) -> Result<HaReport> {
    if hosts.is_none() && (spec.host_failures || !spec.placement.is_empty()) {
        bail!("VNFs on other hosts and host failures need a cluster (run_in_cluster)");
    }
    let n = spec.kinds.len() + spec.foreign_vnfs.len();
    if n == 0 || n > 8 {
        bail!("a chain has 1 to 8 VNFs, not {n}");
    }
    let mut lab = Lab::new(&[], &spec.vnf_bin).context("building the lab's namespaces")?;
    let cluster = match &mut hosts {
        Some((hosts, name)) => {
            let addr = hosts.attach(lab.sff_netns())?;
            hosts.cluster_args(name, addr)?
        }
        None => Vec::new(),
    };
    lab.set_sink_quiet(Duration::from_secs(10));
    // Generator and sink stand for other hosts: as nhamd's SFF (nice -10),
    // they do not wait behind VNFs and CRIU for one of the two CPUs.
    lab.set_traffic_nice(-10);
    let dir = std::env::temp_dir().join(nham_netns::unique_name("nham-ha-"));
    std::fs::create_dir_all(&dir)?;
    // The host's RCU setting, put back at the end (a daemon killed in a
    // restart round cannot).
    let rcu_before = std::fs::read_to_string(RCU_EXPEDITED).ok();
    let result = (|| {
        let reaper = Reaper::new()?;
        // Packets are released once the checkpoint before the newest holds
        // them: room for two checkpoint periods at the offered rate, times
        // 2.5 (the sample emitters multiply the traffic of the hops after
        // them), and some more; at least nhamd's default. nhamd dumps one
        // VNF at a time on this host: with n VNFs a VNF's period is the
        // interval or n dumps, whichever is longer (a dump's turn took
        // 87 ms on average, 130 ms with its store, in a Fig. 5b run of 8
        // VNFs at 4000 frames/s: 100 ms each).
        let n_protected = n;
        let hold_period = Duration::from_millis(u64::from(spec.checkpoint_interval_ms))
            .max(Duration::from_millis(100) * n_protected as u32);
        // A daemon restart is an outage of checkpoints: nothing is released
        // from the moment nhamd is killed until the restarted one has
        // re-attached, recovered what died meanwhile and committed again
        // (up to 2 s seen on this host under load, debug build). The hold
        // covers that too, or the chain backs up into the kernel's ingress
        // ring, which drops (counted: the operator's sizing, not NHAM's
        // loss).
        // So is an MR-AA member's catch-up: release never passes a member
        // still catching up, and a member restored on a loaded host (400 ms
        // p50, its checkpoint dumps up to 0.9 s, seen in CI) takes a while to
        // catch up: an MR-AA hold covers 2 s of that too. (Without, a CI
        // run of MR-AA's ten member crashes overflowed its 8192-packet hold:
        // ingress_overflow 6310, counted.)
        // And a 1R-AA VNF's next checkpoint waits until its replica is
        // restored from the last (in the background, at a lower priority:
        // gaps of 3.2-3.8 s between its checkpoints seen with 8 VNFs).
        let mr_aa = spec.mechanism == api::Mechanism::MrAa;
        let one_r_aa = spec.mechanism == api::Mechanism::Mechanism1rAa;
        // (A soak's tight plan restarts nhamd every third round, 1.5 s
        // apart: 2 s of outage overflowed a 0R hold there, 8745 frames
        // dropped at the ingress, counted.)
        let outage = if one_r_aa || !spec.restarts.is_empty() {
            Duration::from_secs(4)
        } else if mr_aa {
            Duration::from_secs(2)
        } else {
            Duration::ZERO
        };
        let hold_packets = ((8.0 * spec.rate * hold_period.as_secs_f64()
            + 2.5 * spec.rate * outage.as_secs_f64()) as usize)
            .max(nham_control::runtime::DEFAULT_HOLD_PACKETS);
        // The unit's group (removed, with whatever is left in it, last).
        let unit = if spec.unit_stop {
            let root = nham_control::runtime::cgroup::cgroup2_root()
                .context("a unit's stop needs a cgroup2 hierarchy")?;
            Some(nham_control::runtime::cgroup::Cgroup::create(
                &root.join(nham_netns::unique_name("nham-unit-")),
            )?)
        } else {
            None
        };
        let mut daemon = Nhamd::start(
            &lab,
            &spec.nhamd,
            &dir,
            Tuning {
                interval_ms: spec.checkpoint_interval_ms,
                hold_packets,
                expedite_rcu: spec.expedite_rcu,
                metrics: spec.metrics,
            },
            &cluster,
            unit.as_ref().map(|g| g.path()),
        )?;
        let lab_hosts = hosts.map(|(h, _)| h);
        let r = trial(spec, &lab, &mut daemon, &reaper, &dir, n, lab_hosts);
        if r.as_ref().map_or(true, |r| !r.is_exact()) {
            eprintln!("nhamd log: {}", daemon.log_tail());
        }
        r
    })();
    // NHAM_HA_KEEP keeps the daemon's directory (logs, state) to look at.
    if std::env::var_os("NHAM_HA_KEEP").is_some() {
        eprintln!("kept {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if let Some(before) = rcu_before {
        let _ = std::fs::write(RCU_EXPEDITED, before.trim());
    }
    result
}

/// The kernel's RCU knob `nhamd --expedite-rcu` sets.
const RCU_EXPEDITED: &str = "/sys/kernel/rcu_expedited";

type ChainClient = api::chain_service_client::ChainServiceClient<tonic::transport::Channel>;
type VnfClient = api::vnf_service_client::VnfServiceClient<tonic::transport::Channel>;
type EventClient = api::event_service_client::EventServiceClient<tonic::transport::Channel>;

/// Clients of the daemon at `addr`, its events of chain "ha" appended to
/// `log` as they come.
fn clients(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    log: &EventLog,
) -> Result<(ChainClient, VnfClient, EventClient)> {
    // The socket file appears at bind(), a moment before listen().
    let deadline = Instant::now() + Duration::from_secs(5);
    let channel = loop {
        match rt.block_on(nham_control::connect(addr)) {
            Ok(c) => break c,
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    };
    let chains = ChainClient::new(channel.clone());
    let vnfs = VnfClient::new(channel.clone());
    let mut events = EventClient::new(channel);
    let mut stream = rt
        .block_on(events.watch_events(api::WatchEventsRequest {
            chain: "ha".into(),
            since_id: None,
        }))?
        .into_inner();
    let sink = log.clone();
    rt.spawn(async move {
        while let Some(Ok(e)) = stream.next().await {
            sink.lock().expect("event log").push((Instant::now(), e));
        }
    });
    Ok((chains, vnfs, events))
}

fn trial(
    spec: &HaSpec,
    lab: &Lab,
    daemon: &mut Nhamd,
    reaper: &Reaper,
    dir: &Path,
    n: usize,
    mut hosts: Option<&mut HostLab>,
) -> Result<HaReport> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let log: EventLog = Arc::default();
    let (mut chains, mut vnfs, mut events) = clients(&rt, &daemon.addr, &log)?;
    let state_file = |i: usize| {
        dir.join(format!("{}.json", vnf_name(i)))
            .display()
            .to_string()
    };
    let vnf_spec = |i: usize, command: Vec<String>| api::VnfSpec {
        name: vnf_name(i),
        command,
        mechanism: spec.mechanism as i32,
        checkpoint_interval_ms: spec.checkpoint_interval_ms,
        host: spec.placement.get(i).cloned().unwrap_or_default(),
        replicas: spec.replicas,
        ..Default::default()
    };
    let mut vnf_specs: Vec<api::VnfSpec> = spec
        .kinds
        .iter()
        .enumerate()
        .map(|(i, k)| {
            vnf_spec(
                i,
                vec![
                    spec.vnf_bin.display().to_string(),
                    "--kind".into(),
                    k.name().to_string(),
                    "--iface".into(),
                    "{iface}".into(),
                    "--state".into(),
                    state_file(i),
                ],
            )
        })
        .collect();
    for (j, command) in spec.foreign_vnfs.iter().enumerate() {
        let i = spec.kinds.len() + j;
        let command = command
            .iter()
            .map(|a| a.replace("{state}", &state_file(i)))
            .collect();
        vnf_specs.push(vnf_spec(i, command));
    }
    let chain_spec = api::ChainSpec {
        name: "ha".into(),
        spi: SPI,
        vnfs: vnf_specs,
        rules: vec![api::ClassifierRule {
            protocol: 17,
            ..Default::default()
        }],
        ingress_interface: "in0".into(),
        egress_interface: "out0".into(),
    };
    rt.block_on(chains.create_chain(api::CreateChainRequest {
        request_id: String::new(),
        spec: Some(chain_spec),
    }))
    .context("CreateChain")?;
    let protected = spec.mechanism != api::Mechanism::None;
    // Let every protected VNF take a first checkpoint, so failures restore
    // images (a failure before it starts the VNF afresh, which is exact too).
    if protected {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let done = (0..n).all(|i| {
                log.lock().expect("event log").iter().any(|(_, e)| {
                    e.vnf == vnf_name(i)
                        && matches!(
                            e.event,
                            Some(api::watch_events_response::Event::CheckpointTaken(_))
                        )
                })
            });
            if done {
                break;
            }
            if Instant::now() > deadline {
                let why: Vec<String> = log
                    .lock()
                    .expect("event log")
                    .iter()
                    .filter_map(|(_, e)| match &e.event {
                        Some(api::watch_events_response::Event::CheckpointFailed(f)) => {
                            Some(format!("{}: {}", e.vnf, f.reason))
                        }
                        _ => None,
                    })
                    .take(8)
                    .collect();
                let taken: Vec<String> = (0..n)
                    .filter(|&i| {
                        log.lock().expect("event log").iter().any(|(_, e)| {
                            e.vnf == vnf_name(i)
                                && matches!(
                                    e.event,
                                    Some(api::watch_events_response::Event::CheckpointTaken(_))
                                )
                        })
                    })
                    .map(vnf_name)
                    .collect();
                bail!(
                    "not every VNF was checkpointed within 10 s (these were: {taken:?}); failures: {why:?}; {}",
                    daemon.threads()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Traffic long enough for every round: the gap, and the wait for its
    // recoveries (longer for hangs and cut-offs, judged over several probes,
    // and for MR-AA members, restored and caught up; more under a debug
    // build). A round that would start after the traffic is over fails the
    // trial as the harness's fault, not NHAM's.
    let judged = spec.fault != api::Fault::Crash;
    let planned_allowance = Duration::from_millis(300)
        + Duration::from_millis(if judged { 500 } else { 0 })
        // MR-AA restores a member in the background while the others
        // serve: slower the more member processes share the host.
        + Duration::from_millis(if spec.mechanism == api::Mechanism::MrAa {
            200 * n.max(2) as u64
        } else {
            0
        })
        + Duration::from_millis(if spec.corrupt_newest || spec.during_checkpoint {
            300
        } else {
            0
        })
        // A mechanism change: a checkpoint, members restored, traffic
        // under the new mechanism before the fault.
        + Duration::from_millis(if spec.walk.is_empty() { 0 } else { 1500 })
        // A host failure: judged down (50 ms), its VNFs placed again, the
        // host back with a new nhamd before the next round.
        + Duration::from_millis(if spec.host_failures { 1500 } else { 0 });
    let allowance = spec.allowance.unwrap_or(planned_allowance);
    let gap_of = |r: usize| spec.gaps.get(r).copied().unwrap_or(spec.gap);
    let per_round = spec.gap + allowance;
    let planned = (0..spec.rounds.len())
        .map(|r| gap_of(r) + allowance)
        .sum::<Duration>()
        + spec.tail
        + Duration::from_millis(1500)
        + Duration::from_millis(1000) * spec.restarts.len() as u32
        // A unit's stop: nhamd's own clean exit first (it detaches from
        // every chain), then the next one's start.
        + Duration::from_millis(if spec.unit_stop { 3000 } else { 0 }) * spec.restarts.len() as u32;
    let duration = spec.traffic.unwrap_or(planned);
    let mut rounds_skipped = 0;
    let traffic = TrafficSpec {
        size: FrameSize::Fixed(64),
        flows: spec.flows,
        count: (spec.rate * duration.as_secs_f64()) as u64,
        rate: Some(spec.rate),
    };
    let frames = traffic.frames();
    let (expected, states) = nham_vnf::reference(&spec.kinds, &frames);
    let mut rounds_at: Vec<(Instant, Instant)> = Vec::new();
    // Per round: each victim and the member failures it had, and when
    // the round's fault was, by the host's clock (Unix ns).
    let mut round_victims: Vec<Vec<(usize, usize)>> = Vec::new();
    let mut round_unix_ns: Vec<u64> = Vec::new();
    let members: &[u32] = if spec.members.is_empty() {
        &[0]
    } else {
        &spec.members
    };
    let mut failures = 0;
    let (mut cpu_before, mut cpu_busy) = (0.0, 0.0);
    let trial = std::thread::scope(|s| -> Result<crate::lab::Trial> {
        let traffic_start = Instant::now();
        cpu_before = host_cpu_busy_s();
        let t = s.spawn(|| lab.trial_through(frames, traffic.rate, &expected, None));
        std::thread::sleep(Duration::from_millis(300));
        let bar = if spec.progress && !spec.rounds.is_empty() {
            let b = indicatif::ProgressBar::new(spec.rounds.len() as u64);
            if let Ok(style) = indicatif::ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} rounds, {elapsed_precise} (~{eta} left)",
            ) {
                b.set_style(style);
            }
            b.set_prefix(format!("{} on {n} VNFs", spec.mechanism.as_str_name()));
            b
        } else {
            indicatif::ProgressBar::hidden()
        };
        for (r, &k) in spec.rounds.iter().enumerate() {
            bar.set_position(r as u64);
            std::thread::sleep(gap_of(r));
            if traffic_start.elapsed() + Duration::from_millis(500) > duration {
                if spec.skip_late_rounds {
                    rounds_skipped = spec.rounds.len() - r;
                    break;
                }
                bail!(
                    "harness: the traffic ({:.1} s) ends before round {r} of {}: rounds took longer than the {:.1} s per round planned",
                    duration.as_secs_f64(),
                    spec.rounds.len(),
                    per_round.as_secs_f64()
                );
            }
            let restart = spec.restarts.contains(&r);
            // A restart round may kill no VNF (the daemon alone restarts).
            let k = if restart { k.min(n) } else { k.clamp(1, n) };
            let start = (r * 3) % n;
            let mut victims: Vec<usize> = match spec.same_victim {
                Some(v) => vec![v % n],
                None => (0..k).map(|j| (start + j) % n).collect(),
            };
            if let Some(&(mechanism, replicas)) = spec.walk.get(r) {
                for &v in &victims {
                    let changed = rt
                        .block_on(vnfs.set_mechanism(api::SetMechanismRequest {
                            request_id: String::new(),
                            chain: "ha".into(),
                            vnf: vnf_name(v),
                            mechanism: mechanism as i32,
                            replicas,
                        }))
                        .with_context(|| {
                            format!("SetMechanism of {} to {mechanism:?}", vnf_name(v))
                        })?
                        .into_inner();
                    eprintln!(
                        "round {r}: {} is {mechanism:?} now: {changed:?}",
                        vnf_name(v)
                    );
                }
                // Traffic under the new mechanism (and a checkpoint, for a
                // 1R-AA replica to be restored from) before the fault.
                std::thread::sleep(Duration::from_millis(600));
            }
            let mut t0 = Instant::now();
            round_unix_ns.push(unix_ns());
            let mut failed_host = None;
            // Recoveries to wait for, per victim: one per member failed.
            let mut recoveries = vec![members.len(); n];
            if restart {
                let pids = member_pids(&rt, &mut chains, members)?;
                if spec.unit_stop {
                    let stop = Instant::now();
                    let left = daemon.unit_stop(reaper)?;
                    eprintln!(
                        "round {r}: nhamd's unit stopped in {:.0} ms; {left} processes left in its group killed",
                        stop.elapsed().as_secs_f64() * 1e3
                    );
                } else {
                    daemon.restart_kill(reaper);
                }
                // While no daemon watches: the SFF goes on forwarding and
                // holding; the victims die unseen.
                kill_victims(&victims, &pids);
                std::thread::sleep(Duration::from_millis(200));
                let start = Instant::now();
                daemon.restart_start(lab)?;
                (chains, vnfs, events) = clients(&rt, &daemon.addr, &log)?;
                if spec.unit_stop {
                    eprintln!(
                        "round {r}: the next nhamd answers {:.0} ms after its start",
                        start.elapsed().as_secs_f64() * 1e3
                    );
                }
            } else if spec.host_failures {
                // The host running the round's first victim fails; every
                // VNF on it is a victim.
                let placed = rt
                    .block_on(chains.get_chain(api::GetChainRequest { name: "ha".into() }))?
                    .into_inner()
                    .chain
                    .context("GetChain answered no chain")?
                    .vnfs;
                let host = placed
                    .get(victims[0])
                    .map(|v| v.host.clone())
                    .filter(|h| !h.is_empty())
                    .with_context(|| {
                        format!(
                            "round {r}: {} runs on the chain's own host",
                            vnf_name(victims[0])
                        )
                    })?;
                // (MR-AA on other hosts: every member there, member 0 or
                // not, fails with it.)
                for (i, v) in placed.iter().enumerate() {
                    recoveries[i] = std::iter::once(&v.host)
                        .chain(&v.member_hosts)
                        .filter(|&h| *h == host)
                        .count();
                }
                victims = (0..placed.len()).filter(|&i| recoveries[i] > 0).collect();
                let i: usize = host
                    .strip_prefix('h')
                    .and_then(|i| i.parse().ok())
                    .with_context(|| format!("host {host} is not one of the lab's"))?;
                let h = hosts
                    .as_deref_mut()
                    .context("host failures need the lab's hosts")?;
                // The round's fault is the host's failure itself, not the
                // question of where the victim runs (a GetChain round trip
                // to a busy daemon, which took milliseconds of it).
                t0 = Instant::now();
                if let Some(at) = round_unix_ns.last_mut() {
                    *at = unix_ns();
                }
                if spec.host_restarts {
                    h.kill_nhamd(i);
                    h.start_nhamd(i, &spec.nhamd)?;
                } else {
                    h.fail_host(i)?;
                }
                failed_host = Some(i);
            } else {
                if spec.corrupt_newest {
                    for &v in &victims {
                        // A checkpoint may fail, safely (a late output, a
                        // scheduled one under way): try a few times.
                        let mut tries = 0;
                        let c = loop {
                            let r = rt.block_on(vnfs.checkpoint(api::CheckpointRequest {
                                request_id: String::new(),
                                chain: "ha".into(),
                                vnf: vnf_name(v),
                            }));
                            match r {
                                Ok(c) => break c.into_inner(),
                                Err(e) if tries < 10 => {
                                    tries += 1;
                                    eprintln!("checkpoint of {} failed, again: {e}", vnf_name(v));
                                    std::thread::sleep(Duration::from_millis(20));
                                }
                                Err(e) => {
                                    return Err(e)
                                        .with_context(|| format!("Checkpoint of {}", vnf_name(v)))
                                }
                            }
                        };
                        let file = dir.join(format!(
                            "state/images/ha/{}/{}.ckpt",
                            vnf_name(v),
                            c.checkpoint_id
                        ));
                        let mut bytes = std::fs::read(&file)
                            .with_context(|| format!("reading {}", file.display()))?;
                        let at = bytes.len() / 2;
                        bytes[at] ^= 0xFF;
                        std::fs::write(&file, bytes)?;
                    }
                }
                // A crash of VNFs of this host is what it is to a user: the
                // processes killed, every victim at once (one InjectFault
                // round trip after another put tens of ms between the first
                // victim's fault and the last's, counted as recovery).
                // The round begins at the fault, not at what prepared it
                // (a corrupt round's checkpoints).
                let direct = spec.fault == api::Fault::Crash
                    && !spec.during_checkpoint
                    && spec.placement.is_empty();
                let pids = if direct {
                    let pids = member_pids(&rt, &mut chains, members)?;
                    every_victim_runs(&victims, &pids, members)
                        .with_context(|| format!("round {r}"))?;
                    pids
                } else {
                    Vec::new()
                };
                t0 = Instant::now();
                if let Some(at) = round_unix_ns.last_mut() {
                    *at = unix_ns();
                }
                if direct {
                    kill_victims(&victims, &pids);
                }
                for &v in victims.iter().filter(|_| !direct) {
                    for &member in members {
                        rt.block_on(vnfs.inject_fault(api::InjectFaultRequest {
                            request_id: String::new(),
                            chain: "ha".into(),
                            vnf: vnf_name(v),
                            fault: spec.fault as i32,
                            during_checkpoint: spec.during_checkpoint,
                            member,
                        }))
                        .with_context(|| {
                            format!("InjectFault on {} member {member}", vnf_name(v))
                        })?;
                    }
                }
            }
            failures += if spec.host_failures {
                victims.iter().map(|&v| recoveries[v]).sum()
            } else {
                victims.len()
            };
            if spec.second_failure && !restart && n > 1 {
                // Once the first victim's recovery has started, crash the
                // next VNF.
                let first = victims[0];
                let deadline = t0 + Duration::from_secs(10);
                loop {
                    let started = log.lock().expect("event log").iter().any(|(at, e)| {
                        *at >= t0
                            && e.vnf == vnf_name(first)
                            && matches!(
                                e.event,
                                Some(api::watch_events_response::Event::RecoveryStarted(_))
                            )
                    });
                    if started {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!(
                            "round {r}: the recovery of {} did not start",
                            vnf_name(first)
                        );
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                let second = (first + 1) % n;
                if !victims.contains(&second) {
                    rt.block_on(vnfs.inject_fault(api::InjectFaultRequest {
                        request_id: String::new(),
                        chain: "ha".into(),
                        vnf: vnf_name(second),
                        fault: api::Fault::Crash as i32,
                        during_checkpoint: false,
                        member: 0,
                    }))
                    .with_context(|| format!("InjectFault on {}", vnf_name(second)))?;
                    victims.push(second);
                    failures += 1;
                }
            }
            // Wait until every victim is back (or its recovery failed).
            let deadline = t0 + Duration::from_secs(20);
            if restart {
                // The new daemon recovers the dead VNFs before its API
                // serves (no events to see): ask for the chain instead.
                let back = loop {
                    let chain = rt
                        .block_on(chains.get_chain(api::GetChainRequest { name: "ha".into() }))?
                        .into_inner()
                        .chain
                        .context("GetChain answered no chain")?;
                    let running = chain
                        .vnfs
                        .iter()
                        .all(|v| v.state == api::VnfState::Running as i32);
                    if running {
                        break Instant::now();
                    }
                    if Instant::now() > deadline {
                        bail!("round {r}: the restarted daemon did not bring the chain back within 20 s: {chain:?}");
                    }
                    std::thread::sleep(Duration::from_millis(1));
                };
                rounds_at.push((t0, back));
                round_victims.push(victims.iter().map(|&v| (v, recoveries[v])).collect());
                continue;
            }
            let back = loop {
                let events = log.lock().expect("event log");
                let done: Vec<Option<Instant>> = victims
                    .iter()
                    .map(|&v| {
                        // One recovery per member crashed.
                        events
                            .iter()
                            .filter(|(at, e)| {
                                *at >= t0
                                    && e.vnf == vnf_name(v)
                                    && matches!(
                                        e.event,
                                        Some(
                                            api::watch_events_response::Event::RecoveryFinished(_)
                                                | api::watch_events_response::Event::RecoveryFailed(
                                                    _
                                                )
                                        )
                                    )
                            })
                            .map(|(at, _)| *at)
                            .nth(recoveries[v].max(1) - 1)
                    })
                    .collect();
                drop(events);
                if done.iter().all(Option::is_some) {
                    break done.into_iter().flatten().max().unwrap_or(t0);
                }
                if Instant::now() > deadline {
                    let seen: Vec<String> = log
                        .lock()
                        .expect("event log")
                        .iter()
                        .filter(|(at, e)| {
                            *at >= t0 && victims.iter().any(|&v| e.vnf == vnf_name(v))
                        })
                        .map(|(at, e)| {
                            let mut d = format!("{:?}", e.event);
                            d.truncate(160);
                            format!("+{:.1} ms {}: {d}", (*at - t0).as_secs_f64() * 1e3, e.vnf)
                        })
                        .collect();
                    bail!(
                        "round {r}: VNFs {victims:?} not recovered within 20 s; their events since: {seen:#?}; {}",
                        daemon.threads()
                    );
                }
                std::thread::sleep(Duration::from_millis(1));
            };
            rounds_at.push((t0, back));
            round_victims.push(victims.iter().map(|&v| (v, recoveries[v])).collect());
            // The failed host back, empty, with a new nhamd, and heard by
            // the chain's before the next round.
            if let (Some(i), Some(h)) = (failed_host, hosts.as_deref_mut()) {
                if !spec.host_restarts {
                    h.reconnect(i)?;
                    h.start_nhamd(i, &spec.nhamd)?;
                }
                let name = format!("h{i}");
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    let listed = rt.block_on(async {
                        let c = nham_control::connect(&daemon.addr).await?;
                        let r = api::host_service_client::HostServiceClient::new(c)
                            .list_hosts(api::ListHostsRequest {})
                            .await?;
                        Ok::<_, anyhow::Error>(r.into_inner().hosts)
                    })?;
                    let alive = listed
                        .iter()
                        .any(|h| h.name == name && h.state == api::HostState::Alive as i32);
                    if alive {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("round {r}: {name} came back, but the chain's nhamd never heard it: {listed:?}");
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        }
        bar.finish_and_clear();
        let trial = t
            .join()
            .map_err(|_| anyhow::anyhow!("traffic thread panicked"))?;
        cpu_busy = host_cpu_busy_s() - cpu_before;
        trial
    })?;
    // Let replays of VNFs restored at the end settle before reading states.
    let mut last = u64::MAX;
    loop {
        let s = rt
            .block_on(events.get_stats(api::GetStatsRequest { chain: "ha".into() }))?
            .into_inner();
        if s.delivered == last {
            break;
        }
        last = s.delivered;
        std::thread::sleep(Duration::from_millis(300));
    }
    let stats = rt
        .block_on(events.get_stats(api::GetStatsRequest { chain: "ha".into() }))?
        .into_inner();
    let chain = rt
        .block_on(chains.get_chain(api::GetChainRequest { name: "ha".into() }))?
        .into_inner()
        .chain
        .context("GetChain answered no chain")?;
    let mut mismatch_detail = Vec::new();
    // Every VNF's state, and (MR-AA) every member's: the members were fed
    // the same input and must all end in the failure-free state. (They share
    // the VNF's command line, so its state file: one asked at a time.)
    let processes = chain.vnfs.iter().enumerate().flat_map(|(i, status)| {
        std::iter::once((i, status.name.clone(), status.pid)).chain(
            status
                .member_pids
                .iter()
                .enumerate()
                .map(move |(k, &pid)| (i, format!("{} member {}", status.name, k + 1), pid)),
        )
    });
    for (i, name, pid) in processes {
        let status = &chain.vnfs[i];
        let path = dir.join(format!("{}.json", vnf_name(i)));
        if pid == 0 {
            // (kill(0, …) would signal our own process group.)
            mismatch_detail.push(format!("{name} is not running: {status:?}"));
            continue;
        }
        // Its state now (SIGUSR1 writes it). Asked again every half second:
        // a signal that lands while CRIU has the VNF seized for a
        // checkpoint can be lost (the daemon keeps checkpointing while we
        // ask).
        let read_state = || -> Result<Vec<u8>> {
            let _ = std::fs::remove_file(&path);
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut asked = Instant::now() - Duration::from_secs(1);
            loop {
                if asked.elapsed() >= Duration::from_millis(500) {
                    nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid as i32),
                        nix::sys::signal::Signal::SIGUSR1,
                    )
                    .with_context(|| format!("SIGUSR1 to {name} (pid {pid})"))?;
                    asked = Instant::now();
                }
                if let Ok(b) = std::fs::read(&path) {
                    return Ok(b);
                }
                if Instant::now() > deadline {
                    bail!("{name} did not write its state");
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        };
        // What it says against the failure-free run (`None`: equal, or not
        // comparable).
        let differs = |bytes: &[u8]| -> Result<Option<String>> {
            Ok(match spec.kinds.get(i) {
                // A non-deterministic VNF, and every VNF after it, sees
                // traffic no reference run can predict.
                Some(_) if spec.kinds[..=i].iter().any(|k| !k.is_deterministic()) => None,
                Some(kind) => {
                    let got: nham_vnf::State = serde_json::from_slice(bytes)?;
                    let packets =
                        |s: &nham_vnf::State| -> u64 { s.flows.values().map(|c| c.packets).sum() };
                    (got != states[i]).then(|| {
                        format!(
                            "{name} ({kind:?}): {} flows / {} packets / {} invalid, want {} / {} / {}",
                            got.flows.len(),
                            packets(&got),
                            got.invalid,
                            states[i].flows.len(),
                            packets(&states[i]),
                            states[i].invalid
                        )
                    })
                }
                None => {
                    let got: serde_json::Value = serde_json::from_slice(bytes)?;
                    let want = foreign_reference(&expected, trial.received.crc);
                    let command = spec.foreign_vnfs[i - spec.kinds.len()].join(" ");
                    (got != want).then(|| format!("{name} ({command}): {got} want {want}"))
                }
            })
        };
        // An MR-AA member restored late may still be catching up when the
        // sink has everything (the others served): its state is final once
        // it has caught up, so it is asked again for up to 10 s, and a
        // state that only came late is said (a member that never reaches
        // it is a mismatch).
        let since = Instant::now();
        let mut found = differs(&read_state()?)?;
        while found.is_some()
            && !status.member_pids.is_empty()
            && since.elapsed() < Duration::from_secs(10)
        {
            std::thread::sleep(Duration::from_millis(500));
            found = differs(&read_state()?)?;
            if found.is_none() {
                eprintln!(
                    "{name} reached the failure-free state {:.1} s after the sink had everything (caught up late)",
                    since.elapsed().as_secs_f64()
                );
            }
        }
        mismatch_detail.extend(found);
    }
    // Scraped while the chain still runs (its gauges go with it).
    let metrics = if spec.metrics {
        scrape_metrics(lab).context("scraping nhamd's /metrics")?
    } else {
        String::new()
    };
    rt.block_on(chains.delete_chain(api::DeleteChainRequest {
        request_id: String::new(),
        name: "ha".into(),
    }))
    .context("DeleteChain")?;
    // Metrics from the events.
    let rcu_expedited = std::fs::read_to_string(RCU_EXPEDITED).is_ok_and(|v| v.trim() == "1");
    let events = log.lock().expect("event log").clone();
    let story = timeline(&events, &trial, spec, n);
    // NHAM_HA_EVENTS=<file>: the trial's timeline, appended to the file.
    if let Some(path) = std::env::var_os("NHAM_HA_EVENTS") {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .and_then(|mut f| std::io::Write::write_all(&mut f, story.as_bytes()));
        if let Err(e) = appended {
            eprintln!("NHAM_HA_EVENTS: {e}");
        }
    }
    use api::watch_events_response::Event;
    let mut detection = Vec::new();
    let mut failure_causes = std::collections::BTreeMap::new();
    let mut failures_by_vnf = std::collections::BTreeMap::<String, usize>::new();
    let mut input_dropped_by_vnf = std::collections::BTreeMap::<String, u64>::new();
    let mut recovery = Vec::new();
    let mut pauses = Vec::new();
    let (mut drains, mut frozen, mut dumps) = (Vec::new(), Vec::new(), Vec::new());
    let mut copies = Vec::new();
    let mut checkpoint_samples = Vec::new();
    let mut restored = 0;
    let mut recovery_failure_reasons = Vec::new();
    let mut nondeterminism_events = Vec::new();
    let mut fallbacks = Vec::new();
    let mut switched = 0;
    // Per VNF, its last failure and recovery (for a non-determinism report:
    // with deterministic VNFs, the recovery before it is the suspect).
    let mut last_recovery: std::collections::BTreeMap<String, String> =
        std::collections::BTreeMap::new();
    let mut last_failure: std::collections::BTreeMap<String, String> =
        std::collections::BTreeMap::new();
    // From each round's fault (injected, or its host failed) to each
    // failure detected and each member running again, by the events' own
    // times (the daemon's; one clock on this machine: not how late this
    // harness, busy with the traffic, read them): what an operator sees.
    let mut failed_to_detected = Vec::new();
    let mut failure_to_running = Vec::new();
    let round_downtime = downtime_per_round(&trial.received.arrival_us, trial.base, &rounds_at);
    let mut round_samples = Vec::new();
    for (((&(t0, back), victims), &t0_ns), downtime_ms) in rounds_at
        .iter()
        .zip(&round_victims)
        .zip(&round_unix_ns)
        .zip(round_downtime)
    {
        let (detected_before, running_before) =
            (failed_to_detected.len(), failure_to_running.len());
        let wanted: usize = victims.iter().map(|&(_, c)| c.max(1)).sum();
        for &(v, count) in victims {
            let since = |want: fn(&api::watch_events_response::Event) -> bool| {
                events
                    .iter()
                    .filter(move |(at, e)| {
                        *at >= t0 && e.vnf == vnf_name(v) && e.event.as_ref().is_some_and(want)
                    })
                    .take(count.max(1))
                    .map(move |(_, e)| running_or_sent(e).saturating_sub(t0_ns) as f64 / 1e6)
            };
            failed_to_detected.extend(since(|e| {
                matches!(e, api::watch_events_response::Event::FailureDetected(_))
            }));
            failure_to_running.extend(since(|e| {
                matches!(e, api::watch_events_response::Event::RecoveryFinished(_))
            }));
        }
        // A round's figure is its last victim's (all of them seen), or
        // none.
        let last = |v: &[f64]| -> Option<f64> {
            (v.len() == wanted).then(|| v.iter().copied().fold(0.0, f64::max))
        };
        let restart = spec.restarts.contains(&round_samples.len());
        round_samples.push(RoundSample {
            at_ms: t0.saturating_duration_since(trial.base).as_secs_f64() * 1e3,
            failures: wanted,
            detection_ms: last(&failed_to_detected[detected_before..]),
            // A restart round has no events of its recoveries: the
            // harness saw the chain running again.
            failure_to_running_ms: if restart {
                Some(back.saturating_duration_since(t0).as_secs_f64() * 1e3)
            } else {
                last(&failure_to_running[running_before..])
            },
            downtime_ms,
        });
    }
    let mechanism = spec.mechanism.as_str_name();
    for (at, e) in &events {
        let ms = at.saturating_duration_since(trial.base).as_secs_f64() * 1e3;
        match &e.event {
            Some(Event::FailureDetected(f)) => {
                last_failure.insert(e.vnf.clone(), format!("{:.0} ms: {}", ms, f.cause));
            }
            Some(Event::RecoveryFinished(f)) => {
                last_recovery.insert(
                    e.vnf.clone(),
                    format!(
                        "{:.0} ms: checkpoint {}, {} replayed, switched {}{}",
                        ms,
                        f.checkpoint_id,
                        f.replayed,
                        f.switched,
                        if f.fallback_reason.is_empty() {
                            String::new()
                        } else {
                            format!(", fallback: {}", f.fallback_reason)
                        }
                    ),
                );
            }
            _ => {}
        }
        match &e.event {
            Some(Event::RecoveryFinished(f)) if !f.fallback_reason.is_empty() => {
                recovery.push(f.recovery_ms);
                restored += usize::from(f.restored);
                fallbacks.push(format!("{}: {}", e.vnf, f.fallback_reason));
            }
            Some(Event::NonDeterminismDetected(n)) => nondeterminism_events.push(format!(
                "{}: {} outputs at {:.0} ms under {mechanism}; its last failure: {}; the recovery before: {}",
                e.vnf,
                n.outputs,
                ms,
                last_failure.get(&e.vnf).map_or("none", String::as_str),
                last_recovery.get(&e.vnf).map_or("none", String::as_str),
            )),
            Some(Event::FailureDetected(f)) => {
                detection.push(f.detection_ms);
                *failure_causes.entry(f.cause.clone()).or_default() += 1;
                *failures_by_vnf.entry(e.vnf.clone()).or_default() += 1;
            }
            Some(Event::VnfInputDropped(d)) => {
                *input_dropped_by_vnf.entry(e.vnf.clone()).or_default() += d.frames;
            }
            Some(Event::RecoveryFinished(f)) => {
                switched += usize::from(f.switched);
                recovery.push(f.recovery_ms);
                restored += usize::from(f.restored);
            }
            Some(Event::RecoveryFailed(f)) => {
                recovery_failure_reasons.push(format!("{}: {}", e.vnf, f.reason))
            }
            Some(Event::CheckpointTaken(c)) => {
                pauses.push(c.pause_ms);
                drains.push(c.drain_ms);
                frozen.push(c.frozen_ms);
                dumps.push(c.dump_ms);
                copies.push(c.copy_ms);
                checkpoint_samples.push(CheckpointSample {
                    vnf: e.vnf.clone(),
                    pause_ms: c.pause_ms,
                    dump_ms: c.dump_ms,
                    size_bytes: c.size_bytes,
                    stored_bytes: c.stored_bytes,
                });
            }
            _ => {}
        }
    }
    let downtime: Vec<f64> = round_samples.iter().filter_map(|r| r.downtime_ms).collect();
    let before: Vec<(Instant, Instant)> = rounds_at
        .iter()
        .filter_map(|&(fail, back)| {
            let end = fail.checked_sub(Duration::from_millis(50))?;
            Some((end.checked_sub(back.saturating_duration_since(fail))?, end))
        })
        .filter(|&(start, _)| start > trial.base)
        .collect();
    let baseline = downtimes(&trial.received.arrival_us, trial.base, &before);
    let latency: Vec<f64> = (trial.received.arrival_us.iter())
        .zip(&trial.received.sent_us)
        .map(|(&a, &s)| a.saturating_sub(s) as f64 / 1e3)
        .collect();
    // A trial that is not exact, or a failure judged very late, tells its
    // story (shown with a failing test's output).
    let v: Verdict = trial.verdict;
    if v.lost + v.duplicated + v.reordered > 0 || detection.iter().any(|&d| d > 2000.0) {
        eprintln!("{story}");
    }
    Ok(HaReport {
        rounds_skipped,
        samples: Samples {
            rounds: round_samples,
            checkpoints: checkpoint_samples,
            traffic_s: duration.as_secs_f64(),
            arrival_us: trial.received.arrival_us.clone(),
            host_cpu_busy_s: cpu_busy,
        },
        metrics,
        mechanism: spec.mechanism.as_str_name().to_string(),
        vnfs: n,
        rounds: spec.rounds.len(),
        failures,
        rcu_expedited,
        failure_causes,
        failures_by_vnf,
        input_dropped_by_vnf,
        // (A host failure: from the moment the host failed. The daemon's
        // own measure starts at the host's last heartbeat heard, up to a
        // heartbeat interval before it failed.)
        detection_ms: Summary::of(if spec.host_failures {
            &failed_to_detected
        } else {
            &detection
        }),
        recovery_ms: Summary::of(&recovery),
        failure_to_running_ms: Summary::of(&failure_to_running),
        downtime_ms: Summary::of(&downtime),
        downtime_baseline_ms: Summary::of(&baseline),
        latency_ms: Summary::of(&latency),
        checkpoint_pause_ms: Summary::of(&pauses),
        checkpoint_drain_ms: Summary::of(&drains),
        checkpoint_frozen_ms: Summary::of(&frozen),
        checkpoint_dump_ms: Summary::of(&dumps),
        checkpoint_copy_ms: Summary::of(&copies),
        checkpoints: pauses.len(),
        restored,
        recovery_failures: recovery_failure_reasons.len(),
        recovery_failure_reasons,
        lost: v.lost,
        duplicated: v.duplicated,
        reordered: v.reordered,
        digest_equal: v.digest_equal,
        state_mismatches: mismatch_detail.len(),
        mismatch_detail,
        sent: trial.sent,
        expected: expected.len(),
        received: trial.received.seqs.len(),
        rate: spec.rate,
        duplicates_suppressed: stats.duplicates_suppressed,
        nondeterministic_outputs: stats.nondeterministic_outputs,
        nondeterminism_events,
        fallbacks,
        switched,
        sink_kernel_drops: trial.received.kernel_drops,
        offered_pps: trial.offered_pps,
        stats: SffCounters {
            ingress: stats.ingress,
            delivered: stats.delivered,
            egress: stats.egress,
            stale_discarded: stats.stale_discarded,
            malformed: stats.malformed,
            ingress_overflow: stats.ingress_overflow,
            vnf_outputs_lost: stats.vnf_outputs_lost,
            vnf_input_dropped: stats.vnf_input_dropped,
            marks_in_transit: stats.marks_in_transit,
        },
    })
}

/// Per round: the longest gap between consecutive sink arrivals from the
/// last arrival before the failure to the first after the recovery, ms.
fn downtimes(arrival_us: &[u64], base: Instant, rounds: &[(Instant, Instant)]) -> Vec<f64> {
    downtime_per_round(arrival_us, base, rounds)
        .into_iter()
        .flatten()
        .collect()
}

/// Per VNF of the chain "ha", the pid of each of its processes in
/// `members` (0: the VNF's own process, k: MR-AA member k).
fn member_pids(
    rt: &tokio::runtime::Runtime,
    chains: &mut ChainClient,
    members: &[u32],
) -> Result<Vec<Vec<u32>>> {
    Ok(rt
        .block_on(chains.get_chain(api::GetChainRequest { name: "ha".into() }))?
        .into_inner()
        .chain
        .context("GetChain answered no chain")?
        .vnfs
        .iter()
        .map(|v| {
            members
                .iter()
                .filter_map(|&k| match k {
                    0 => Some(v.pid),
                    k => v.member_pids.get(k as usize - 1).copied(),
                })
                .collect()
        })
        .collect())
}

/// SIGKILLs the processes `pids` of each victim, back to back.
fn kill_victims(victims: &[usize], pids: &[Vec<u32>]) {
    for &v in victims {
        for &pid in pids.get(v).into_iter().flatten().filter(|&&p| p != 0) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// That every victim has a running process for each member to crash (a
/// round without its fault would only time out).
fn every_victim_runs(victims: &[usize], pids: &[Vec<u32>], members: &[u32]) -> Result<()> {
    for &v in victims {
        let running = pids
            .get(v)
            .map_or(0, |p| p.iter().filter(|&&p| p != 0).count());
        anyhow::ensure!(
            running == members.len(),
            "{} has {running} of its {} processes to crash running",
            vnf_name(v),
            members.len()
        );
    }
    Ok(())
}

/// An event's moment: for a `RecoveryFinished`, when the VNF ran again
/// (the daemon stamps it; the event follows the bookkeeping after it),
/// else when the daemon sent it.
fn running_or_sent(e: &api::WatchEventsResponse) -> u64 {
    match &e.event {
        Some(api::watch_events_response::Event::RecoveryFinished(f))
            if f.running_unix_nanos > 0 =>
        {
            f.running_unix_nanos
        }
        _ => e.time_unix_nanos,
    }
}

/// [`downtimes`], one per round (`None`: nothing arrived after it).
fn downtime_per_round(
    arrival_us: &[u64],
    base: Instant,
    rounds: &[(Instant, Instant)],
) -> Vec<Option<f64>> {
    let us = |t: Instant| t.saturating_duration_since(base).as_micros() as u64;
    rounds
        .iter()
        .map(|&(fail, back)| {
            let (fail, back) = (us(fail), us(back));
            let first = arrival_us.partition_point(|&a| a <= fail).checked_sub(1)?;
            let after = arrival_us.partition_point(|&a| a <= back);
            if after >= arrival_us.len() {
                return None;
            }
            arrival_us[first..=after]
                .windows(2)
                .map(|w| (w[1] - w[0]) as f64 / 1e3)
                .reduce(f64::max)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downtime_is_the_longest_gap_across_the_failure() {
        let base = Instant::now();
        let at = |ms: u64| base + Duration::from_millis(ms);
        let arrivals: Vec<u64> = [0u64, 1, 2, 3, 50, 51, 52, 90, 91]
            .iter()
            .map(|m| m * 1000)
            .collect();
        // Fails at 3.5 ms, back at 40 ms: silence from 3 to 50.
        assert_eq!(
            downtimes(
                &arrivals,
                base,
                &[(at(3) + Duration::from_micros(500), at(40))]
            ),
            vec![47.0]
        );
        // Nothing arrives after the recovery: no figure.
        assert!(downtimes(&arrivals, base, &[(at(60), at(95))]).is_empty());
        let s = Summary::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.p50, s.p99, s.max, s.n), (2.0, 3.0, 3.0, 3));
    }
}
