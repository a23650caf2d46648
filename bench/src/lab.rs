//! A chain lab: the namespaces, links and processes of one NHAM chain on
//! this machine, and trials of traffic through it.
//!
//! ```text
//!  [src ns] gen0 ══ in0 ┐                     ┌ out0 ══ sink0 [sink ns]
//!                       [sff ns: SFF thread]
//!               v0 ══ eth0 [vnf0 ns: nham-vnf] … vN-1 ══ eth0 [vnfN-1 ns]
//! ```
//!
//! [`Lab::across_hosts`] puts VNFs on the hosts of a
//! [`HostLab`](crate::hosts::HostLab): their links become tunnels over
//! the hosts' underlay.
//!
//! One way to run a chain: the lab builds on the control plane's runtime.
//! Its VNFs start as `nhamd` starts any VNF ([`nham_control::runtime::Spawn`])
//! and its SFF has `nhamd`'s configuration
//! ([`nham_control::runtime::sff_config`]), save that no Failure Detector
//! probes the VNFs' sockets here. The SFF runs as a thread of the bench
//! (the engine `nham-sff` runs), so its counters are at hand. Protection
//! and failures run only under `nhamd` (see [`crate::ha`]).
//!
//! Everything is torn down when the [`Lab`] is dropped, also on panic: VNF
//! processes are killed and reaped, then the namespaces (and with them every
//! veth) are deleted. Namespace names are unique per process and call.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nham_afxdp::{Port, PortConfig};
use nham_dataplane::classifier::{proto, Rule};
use nham_ebpf::XdpRedirect;
use nham_netns::tunnel::{tunnel_here, tunnel_into, Tunnel};
use nham_netns::{unique_name, veth_pair, Netns, VethEnd};

use crate::hosts::HostLab;
use nham_sff::{PollPolicy, PortSpec, SffConfig, SffHandle, SffStats};
use nham_traffic::{Checker, Received, TrafficSpec, Verdict};
use nham_vnf::{Kind, State};

/// The SPI of the lab's chain.
pub const SPI: u32 = 100;

/// A running VNF process (a child of ours, reaped when the lab goes).
#[derive(Debug)]
struct VnfProcess {
    pid: u32,
    state_file: PathBuf,
}

/// One chain's namespaces, links and VNF processes.
#[derive(Debug)]
pub struct Lab {
    kinds: Vec<Kind>,
    vnfs: Vec<VnfProcess>,
    src: Netns,
    sink: Netns,
    sff: Netns,
    vnf_ns: Vec<Netns>,
    ingress: PortSpec,
    egress: PortSpec,
    hops: Vec<PortSpec>,
    state_dir: PathBuf,
    traffic_core: Option<usize>,
    traffic_nice: i32,
    sink_quiet: Duration,
    /// Receive (and transmit) queues of the ingress link; the generator
    /// sends each flow on one of them.
    ingress_queues: u32,
}

fn spec(sff_side: &VethEnd, other: &VethEnd) -> PortSpec {
    PortSpec {
        iface: sff_side.name.clone(),
        ifindex: sff_side.ifindex,
        mac: sff_side.mac,
        peer_mac: other.mac,
    }
}

/// What forwards a trial's frames: an SFF (thread or process) or the
/// baseline; its counters as the trial ends.
pub trait Forwarder {
    /// Its counters now (zero where they cannot be read).
    fn stats(&self) -> SffStats;
}

impl Forwarder for SffHandle {
    fn stats(&self) -> SffStats {
        self.counters().snapshot()
    }
}

/// The lab's SFF as the `nham-sff` process ([`Lab::start_sff_process`]).
#[derive(Debug)]
pub struct LabSffProcess {
    process: nham_control::runtime::SffProcess,
    client: nham_sff::remote::SffClient,
}

impl LabSffProcess {
    /// Stops it (a shutdown request, then SIGKILL after a second);
    /// returns its last counters.
    pub fn stop(mut self) -> Result<SffStats> {
        let stats = self.client.stats()?;
        self.process
            .stop(Some(&self.client), Duration::from_secs(1));
        Ok(stats)
    }
}

impl Forwarder for LabSffProcess {
    fn stats(&self) -> SffStats {
        self.client.stats().unwrap_or_default()
    }
}

/// Sizing and policy for the SFF in a trial.
#[derive(Debug, Clone, Copy)]
pub struct LabSff {
    /// Pin the SFF to this core.
    pub core: Option<usize>,
    /// Idle behaviour.
    pub poll: PollPolicy,
    /// Frames per step.
    pub burst: usize,
    /// Pin the generator and sink threads to this core.
    pub traffic_core: Option<usize>,
    /// Hold packets (as for a protected VNF: released only by a
    /// checkpoint the caller commits, or replayed by a failover); false
    /// releases them on delivery.
    pub protect: bool,
}

impl Default for LabSff {
    fn default() -> Self {
        Self {
            core: None,
            poll: PollPolicy::default(),
            burst: 32,
            traffic_core: None,
            protect: false,
        }
    }
}

/// What one trial measured.
#[derive(Debug, Clone)]
pub struct Trial {
    /// Frames the generator sent.
    pub sent: u64,
    /// Offered rate achieved by the generator (frames/s).
    pub offered_pps: f64,
    /// Input frames per second the chain carried (measured at the sink).
    pub delivered_pps: f64,
    /// Against the expected output.
    pub verdict: Verdict,
    /// What the sink got.
    pub received: Received,
    /// SFF counters (zero for the baseline forwarder's NSH fields, and when
    /// the SFF runs elsewhere, inside `nhamd`).
    pub sff: SffStats,
    /// The instant the sink's arrival times count from.
    pub base: Instant,
    /// When the sink stopped (everything arrived, or it gave up waiting).
    pub ended: Instant,
    /// The egress link's counters then: the SFF's end (`out0`) and the
    /// sink's (`sink0`), when they could be read.
    pub egress_link: Option<(nham_netns::LinkCounters, nham_netns::LinkCounters)>,
}

impl Lab {
    /// Builds the namespaces and links for a chain of `kinds` and starts one
    /// `nham-vnf` process (binary `vnf_bin`) per VNF.
    pub fn new(kinds: &[Kind], vnf_bin: &Path) -> Result<Self> {
        Self::with_vnf_args(kinds, vnf_bin, &[])
    }

    /// [`Lab::new`], passing `extra` to every `nham-vnf` (fault injection).
    pub fn with_vnf_args(kinds: &[Kind], vnf_bin: &Path, extra: &[&str]) -> Result<Self> {
        Self::build(kinds, vnf_bin, extra, None, 1)
    }

    /// [`Lab::new`] with `queues` queues on the ingress link (a multi-queue
    /// NIC's stand-in): the generator sends each flow on the queue its
    /// addresses and ports hash to, as RSS would.
    pub fn with_ingress_queues(kinds: &[Kind], vnf_bin: &Path, queues: u32) -> Result<Self> {
        Self::build(kinds, vnf_bin, &[], None, queues)
    }

    /// [`Lab::new`] with VNF `i` on host `place[i]` of `hosts`: the SFF's
    /// namespace joins the hosts' underlay, and each hop's link is a
    /// tunnel (`nham_netns::tunnel`, VNI `i + 1`) from the SFF's `v<i>` to
    /// the VNF's `eth0`, whose UDP socket lives on that host. Cutting a
    /// host off (`HostLab::cut_off`) cuts its VNFs off the chain.
    pub fn across_hosts(
        kinds: &[Kind],
        vnf_bin: &Path,
        hosts: &mut HostLab,
        place: &[usize],
    ) -> Result<Self> {
        if place.len() != kinds.len() || place.iter().any(|&h| h >= hosts.hosts().len()) {
            bail!(
                "one host of the {} for each of the {} VNFs, not {place:?}",
                hosts.hosts().len(),
                kinds.len()
            );
        }
        Self::build(kinds, vnf_bin, &[], Some((hosts, place)), 1)
    }

    fn build(
        kinds: &[Kind],
        vnf_bin: &Path,
        extra: &[&str],
        mut hosts: Option<(&mut HostLab, &[usize])>,
        ingress_queues: u32,
    ) -> Result<Self> {
        // Namespaces of earlier runs that were killed before they could
        // clean up.
        nham_netns::sweep_stale();
        let sff = Netns::create(&unique_name("nhsff"))?;
        let src = Netns::create(&unique_name("nhsrc"))?;
        let sink = Netns::create(&unique_name("nhsnk"))?;
        let (in0, gen0) =
            nham_netns::veth_pair_queues(Some(&sff), "in0", &src, "gen0", None, ingress_queues)?;
        let (out0, sink0) = veth_pair(&sff, "out0", &sink, "sink0")?;
        let sff_addr = match &mut hosts {
            Some((lab, _)) => Some(lab.attach(&sff)?),
            None => None,
        };
        let mut vnf_ns = Vec::new();
        let mut hops = Vec::new();
        for i in 0..kinds.len() {
            let ns = Netns::create(&unique_name(&format!("nhv{i}")))?;
            let name = format!("v{i}");
            // A hop's link as `nhamd` makes it (`runtime::make_link`), or a
            // tunnel to another host.
            let port = match (&hosts, sff_addr) {
                (Some((lab, place)), Some(local)) => {
                    let host = &lab.hosts()[place[i]];
                    let tunnel = Tunnel {
                        vni: i as u32 + 1,
                        local,
                        remote: host.addr,
                    };
                    let v = sff.run(move || tunnel_here(&name, tunnel))??;
                    let eth = tunnel_into(tunnel.reversed(), Some(&host.netns), &ns, "eth0", None)?;
                    spec(&v, &eth)
                }
                _ => nham_control::runtime::make_link(Some(&sff), &name, &ns, None)?.0,
            };
            hops.push(port);
            vnf_ns.push(ns);
        }
        let state_dir = std::env::temp_dir().join(unique_name("nham-lab-"));
        std::fs::create_dir_all(&state_dir)?;
        let mut lab = Self {
            kinds: kinds.to_vec(),
            vnfs: Vec::new(),
            src,
            sink,
            ingress: spec(&in0, &gen0),
            egress: spec(&out0, &sink0),
            sff,
            vnf_ns,
            hops,
            state_dir,
            traffic_core: None,
            traffic_nice: 0,
            sink_quiet: Duration::from_secs(2),
            ingress_queues: ingress_queues.max(1),
        };
        lab.start_vnfs(vnf_bin, extra)?;
        Ok(lab)
    }

    /// Starts one `nham-vnf` per VNF as `nhamd` starts any VNF
    /// ([`nham_control::runtime::Spawn`]: in its namespace, under `setsid`,
    /// pid 1 of a PID namespace of its own, output to a log, ready once it
    /// listens on a packet socket).
    fn start_vnfs(&mut self, vnf_bin: &Path, extra: &[&str]) -> Result<()> {
        for (i, (kind, ns)) in self.kinds.iter().zip(&self.vnf_ns).enumerate() {
            let state_file = self.state_dir.join(format!("vnf{i}.json"));
            let mut command: Vec<String> = vec![
                vnf_bin.display().to_string(),
                "--kind".into(),
                kind.name().to_string(),
                "--iface".into(),
                "eth0".into(),
                "--state".into(),
                state_file.display().to_string(),
            ];
            command.extend(extra.iter().map(|s| s.to_string()));
            let pid = nham_control::runtime::Spawn {
                vnf: format!("vnf{i}"),
                argv: nham_control::runtime::vnf_argv(&command, ns.name()),
                command,
                env: Default::default(),
                netns: ns.path(),
                netns_name: ns.name().to_string(),
                cwd: self.state_dir.clone(),
                log: self.state_dir.join(format!("vnf{i}.log")),
                cgroup: None,
                cgroup_v1: Vec::new(),
                identity: Default::default(),
            }
            .run()
            .with_context(|| format!("starting VNF {i}"))?;
            self.vnfs.push(VnfProcess { pid, state_file });
        }
        Ok(())
    }

    /// The kinds in chain order.
    pub fn kinds(&self) -> &[Kind] {
        &self.kinds
    }

    /// The SFF configuration for this lab: `nhamd`'s
    /// ([`nham_control::runtime::sff_config`], its default options) for
    /// this chain, with `s`'s pinning, polling and burst. The one
    /// difference: no Failure Detector probes the lab's VNFs
    /// ([`SffConfig::without_socket_probes`]).
    pub fn sff_config(&self, s: LabSff) -> SffConfig {
        use nham_control::runtime::{sff_config, ChainPorts, SffOptions};
        let ports = ChainPorts::plain(self.ingress.clone(), self.egress.clone(), self.hops.clone());
        let rules = vec![Rule {
            proto: Some(proto::UDP),
            ..Rule::any(SPI)
        }];
        let options = SffOptions {
            cores: s.core.into_iter().collect(),
            poll: s.poll,
            ..SffOptions::default()
        };
        let protect = vec![s.protect; self.hops.len()];
        let mut config = sff_config(ports, rules, SPI, protect, &options).without_socket_probes();
        config.burst = s.burst;
        // The pool holds a burst at ingress and at egress too.
        config.pool_slots = config.pool_slots_needed();
        config
    }

    /// Starts the SFF in the lab's SFF namespace, as a thread of this
    /// process (for tests that drive it in-process: a standby port of the
    /// test's making, a failover through [`nham_sff::remote::SffClient::local`]).
    pub fn start_sff(&self, s: LabSff) -> Result<SffHandle> {
        Ok(nham_sff::spawn(Some(self.sff.path()), self.sff_config(s))?)
    }

    /// Starts the SFF as `nhamd` does ([`nham_control::runtime::spawn_sff`]):
    /// the `nham-sff` process (the binary beside this program's, at
    /// `nhamd`'s nice value) in the lab's SFF namespace, driven over its
    /// socket. What the benches measure.
    pub fn start_sff_process(&self, s: LabSff) -> Result<LabSffProcess> {
        let options = nham_control::runtime::SffOptions::default();
        let config = self.sff_config(s);
        let socket = self.state_dir.join("sff.sock");
        let log = self.state_dir.join("sff.log");
        let sock = socket.clone();
        let process = self
            .sff
            .run(move || nham_control::runtime::spawn_sff(&options, &config, &sock, &log, None))?
            .context("starting nham-sff (built with `cargo build -p nham-control`)")?;
        let client = nham_sff::remote::SffClient::connect(&socket)?;
        Ok(LabSffProcess { process, client })
    }

    /// Starts the plain L2 forwarder (in0 -> out0) instead: the baseline,
    /// a thread at the nice value `nham-sff` runs at, so that the two
    /// compare.
    pub fn start_baseline(&self, s: LabSff) -> Result<SffHandle> {
        // A new thread starts at its creator's nice value.
        let _nice = nham_control::runtime::process::Niceness::for_this_thread(
            nham_control::runtime::DEFAULT_SFF_NICE,
        );
        Ok(nham_sff::spawn_l2_forwarder(
            Some(self.sff.path()),
            self.ingress.clone(),
            self.egress.clone(),
            s.burst,
            s.poll,
            s.core,
            PortConfig::default(),
        )?)
    }

    /// Sends `spec` from the source namespace and checks what reaches the
    /// sink against `expected` (the reference output). The forwarder (SFF
    /// or baseline) must be running.
    pub fn trial(
        &self,
        spec: &TrafficSpec,
        expected: &[Vec<u8>],
        fwd: &dyn Forwarder,
    ) -> Result<Trial> {
        self.trial_frames(spec.frames(), spec.rate, expected, fwd)
    }

    /// How long the sink waits without a frame, once the generator is done,
    /// before it ends a trial (default 2 s; recoveries can pause a chain).
    pub fn set_sink_quiet(&mut self, quiet: Duration) {
        self.sink_quiet = quiet;
    }

    /// Pins the generator and sink of later trials to `core`.
    pub fn set_traffic_core(&mut self, core: Option<usize>) {
        self.traffic_core = core;
    }

    /// Runs the generator and sink threads of later trials at nice value
    /// `nice`: they stand for other hosts, which on a small test host
    /// would otherwise wait behind the VNFs and CRIU for a CPU.
    pub fn set_traffic_nice(&mut self, nice: i32) {
        self.traffic_nice = nice;
    }

    /// [`Lab::trial`] with frames of the caller's making.
    pub fn trial_frames(
        &self,
        frames: Vec<Vec<u8>>,
        rate: Option<f64>,
        expected: &[Vec<u8>],
        fwd: &dyn Forwarder,
    ) -> Result<Trial> {
        self.trial_through(frames, rate, expected, Some(fwd))
    }

    /// [`Lab::trial_frames`] through whatever forwards from `in0` to `out0`
    /// in the SFF namespace (`fwd`, or an SFF run by `nhamd` there).
    pub fn trial_through(
        &self,
        frames: Vec<Vec<u8>>,
        rate: Option<f64>,
        expected: &[Vec<u8>],
        fwd: Option<&dyn Forwarder>,
    ) -> Result<Trial> {
        let offered = frames.len();
        let base = Instant::now();
        let sink_if = self.egress_peer_ifindex()?;
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let gen_done = Arc::new(AtomicBool::new(false));
        let expected_len = expected.len();
        let sink_path = self.sink.path();
        let done = gen_done.clone();
        let pin = self.traffic_core;
        let nice = self.traffic_nice;
        // Per thread (Linux): only the calling one.
        let prioritise = move || {
            if nice != 0 {
                let _ = rustix::process::setpriority_process(None, nice);
            }
        };
        let quiet = self.sink_quiet;
        let queues = self.ingress_queues;
        let sink = std::thread::spawn(move || -> Result<Received> {
            enter(&sink_path)?;
            prioritise();
            if let Some(id) = pin {
                core_affinity::set_for_current(core_affinity::CoreId { id });
            }
            let xdp = XdpRedirect::attach(sink_if)?;
            // A deep receive ring: after a recovery the SFF flushes what it
            // held at full speed, faster than this (debug-built, checking)
            // sink drains it.
            let mut port = Port::open(
                "sink0",
                0,
                PortConfig {
                    rx_frames: 16384,
                    tx_frames: 64,
                    frame_size: 2048,
                    ring_size: 16384,
                },
            )?;
            xdp.register_socket(0, port.fd())?;
            ready_tx.send(()).ok();
            Ok(nham_traffic::sink(
                &mut port,
                expected_len,
                // Once the generator is done, stop after `quiet` without a
                // frame (recoveries and replays may still be draining).
                quiet,
                base,
                || done.load(Ordering::Relaxed),
            ))
        });
        ready_rx
            .recv_timeout(Duration::from_secs(10))
            .context("sink did not start")?;
        let sent = self.src.run(move || -> Result<nham_traffic::Sent> {
            prioritise();
            if let Some(id) = pin {
                core_affinity::set_for_current(core_affinity::CoreId { id });
            }
            if queues > 1 {
                let mut ports = (0..queues)
                    .map(|q| Port::open("gen0", q, PortConfig::default()))
                    .collect::<Result<Vec<_>, _>>()?;
                return Ok(nham_traffic::generate_queues(
                    &mut ports, &frames, rate, base, 32,
                ));
            }
            let mut port = Port::open("gen0", 0, PortConfig::default())?;
            Ok(nham_traffic::generate(&mut port, &frames, rate, base, 32))
        })??;
        gen_done.store(true, Ordering::Relaxed);
        let received = sink
            .join()
            .map_err(|_| anyhow::anyhow!("sink panicked"))??;
        let ended = Instant::now();
        let egress_link = (self.sff.run(|| nham_netns::link_counters("out0")))
            .ok()
            .and_then(Result::ok)
            .zip(
                (self.sink.run(|| nham_netns::link_counters("sink0")))
                    .ok()
                    .and_then(Result::ok),
            );
        let verdict = Checker::check(expected, &received);
        let secs = sent.elapsed.as_secs_f64().max(1e-9);
        // Input frames per second the chain carried, judged at the sink:
        // output frames scaled back to input frames (VNFs drop and
        // multiply) over the time the sink was receiving.
        let per_input = expected.len().max(1) as f64 / offered.max(1) as f64;
        let delivered_pps =
            received.seqs.len() as f64 / per_input / received.span.as_secs_f64().max(secs);
        Ok(Trial {
            sent: sent.frames,
            offered_pps: sent.frames as f64 / secs,
            delivered_pps,
            verdict,
            received,
            sff: fwd.map(|f| f.stats()).unwrap_or_default(),
            base,
            ended,
            egress_link,
        })
    }

    fn egress_peer_ifindex(&self) -> Result<u32> {
        // sink0's index, looked up inside the sink namespace.
        let idx = self.sink.run(|| {
            pnet_datalink::interfaces()
                .into_iter()
                .find(|i| i.name == "sink0")
                .map(|i| i.index)
        })?;
        idx.context("sink0 not found")
    }

    /// Asks every VNF for its state (SIGUSR1) and reads it back.
    pub fn vnf_states(&self) -> Result<Vec<State>> {
        (0..self.vnfs.len()).map(|i| self.vnf_state(i)).collect()
    }

    /// Asks VNF `i` for its state (SIGUSR1) and reads it back.
    pub fn vnf_state(&self, i: usize) -> Result<State> {
        let v = &self.vnfs[i];
        let _ = std::fs::remove_file(&v.state_file);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(v.pid as i32),
            nix::sys::signal::Signal::SIGUSR1,
        )?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Ok(bytes) = std::fs::read(&v.state_file) {
                return Ok(serde_json::from_slice(&bytes)?);
            }
            if Instant::now() > deadline {
                bail!("VNF did not write {}", v.state_file.display());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Process id of VNF `i`.
    pub fn vnf_pid(&self, i: usize) -> u32 {
        self.vnfs[i].pid
    }

    /// The netns of VNF `i` (for fault drills and captures).
    pub fn vnf_netns(&self, i: usize) -> &Netns {
        &self.vnf_ns[i]
    }

    /// The SFF namespace.
    pub fn sff_netns(&self) -> &Netns {
        &self.sff
    }

    /// The source namespace.
    pub fn src_netns(&self) -> &Netns {
        &self.src
    }
}

fn enter(path: &Path) -> Result<()> {
    let f = std::fs::File::open(path)?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)?;
    Ok(())
}

impl Drop for Lab {
    fn drop(&mut self) {
        for v in &self.vnfs {
            kill_and_wait(v.pid);
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
        // The namespaces (and every veth in them) go with their Netns values.
    }
}

/// Kills process `pid` and waits until it is gone (reaped if it is ours).
pub fn kill_and_wait(pid: u32) {
    let p = nix::unistd::Pid::from_raw(pid as i32);
    let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
    if nix::sys::wait::waitpid(p, None).is_err() {
        while Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}
