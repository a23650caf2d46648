//! A running chain: VNF namespaces and links, VNF processes, the SFF.
//!
//! Each VNF gets a network namespace of its own and a veth pair whose other
//! end (`n<chain>v<i>`) stays in the daemon's namespace, where the SFF serves
//! it. The VNF's command starts in its namespace by forking from a thread
//! that entered it with `setns` (nsenter-style: no extra mount namespace, so
//! CRIU can dump it later). It runs under `setsid` (CRIU dumps trees whose
//! root leads its own session) with stdout and stderr on a log file (CRIU
//! restores files, not pipes to the daemon). Every VNF process is watched
//! through a pidfd: its exit is seen the moment it happens. A protected VNF
//! (0R, 1R-AS) has a [`ProtectedVnf`] agent, its State Synchronizer.
//!
//! Invariant: dropping a [`ChainRuntime`] stops the SFF, kills and reaps
//! every VNF process and deletes every namespace (and so every veth) it made.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nham_netns::{unique_name, veth_pair_here, Netns};
use nham_sff::{PollPolicy, PortSpec, SffConfig, SffHandle};

use crate::api;
use crate::error::ControlError;
use crate::protect::{self, ProtectedVnf, StoreSlot};
use crate::store::Store;
use crate::validate::{ChainPlan, VnfPlan};

/// A protected VNF's agent, shared by its checkpoint schedule and recovery.
pub type Agent = Arc<Mutex<ProtectedVnf>>;

/// The agent's mechanism for an API mechanism, if it is one the daemon
/// protects with checkpoints (`None` for MECHANISM_NONE).
pub fn protection(m: api::Mechanism) -> Result<Option<protect::Mechanism>, ControlError> {
    match m {
        api::Mechanism::None => Ok(None),
        api::Mechanism::Mechanism0r => Ok(Some(protect::Mechanism::NoReplica)),
        api::Mechanism::Mechanism1rAs => Ok(Some(protect::Mechanism::ActiveStandby)),
        other => Err(ControlError::Unimplemented(format!(
            "{} is not implemented yet (0R and 1R-AS are); use MECHANISM_NONE, MECHANISM_0R or MECHANISM_1R_AS",
            other.as_str_name()
        ))),
    }
}

/// One VNF's runtime.
#[derive(Debug)]
pub struct VnfRuntime {
    /// Its plan.
    pub plan: VnfPlan,
    /// Its namespace.
    pub netns: Netns,
    /// The process, while it runs (started by us or restored as our child).
    pub pid: Option<u32>,
    /// Its command line, placeholders replaced, as it is started.
    pub argv: Vec<String>,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    /// Its State Synchronizer, when protected.
    pub agent: Option<Agent>,
    /// Checkpoints taken.
    pub checkpoints: u64,
    /// The SFF's end of its veth (in the daemon's namespace).
    pub sff_iface: String,
    /// Recoveries that failed, and why the last one did.
    pub recovery_failures: u64,
    /// See `recovery_failures`.
    pub last_error: Option<String>,
    /// A failure the detector judged (hang, cut-off) before it killed the
    /// process: the cause and when it was judged.
    pub judged: Option<(&'static str, Instant)>,
    /// Its state.
    pub state: api::VnfState,
    /// Failures seen.
    pub failures: u64,
    /// Recoveries done.
    pub recoveries: u64,
    /// When a fault was injected, to measure detection.
    pub fault_at: Option<Instant>,
    /// Incarnation counter, to tell watchers of old processes apart.
    pub incarnation: u64,
}

impl VnfRuntime {
    /// Its status as the API shows it.
    pub fn status(&self) -> api::VnfStatus {
        api::VnfStatus {
            name: self.plan.name.clone(),
            state: self.state as i32,
            pid: self.pid.unwrap_or(0),
            netns: self.netns.name().to_string(),
            mechanism: self.plan.mechanism as i32,
            failures: self.failures,
            recoveries: self.recoveries,
            checkpoints: self.checkpoints,
        }
    }

    /// Starts the VNF's command in its namespace, waits until it listens on
    /// a packet socket, and returns a pidfd to watch.
    pub fn start(&mut self) -> Result<OwnedFd, ControlError> {
        let ns = self.netns.name().to_string();
        let argv = self.argv.clone();
        let env = self.plan.env.clone();
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(|e| ControlError::Process(format!("{}: {e}", self.log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| ControlError::Process(format!("{}: {e}", self.log.display())))?;
        let child = self
            .netns
            .run(move || {
                Command::new(&argv[0])
                    .args(&argv[1..])
                    .envs(env)
                    .env("NHAM_IFACE", VNF_IFACE)
                    .env("NHAM_NETNS", &ns)
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn()
            })?
            .map_err(|e| ControlError::Process(format!("starting {:?}: {e}", self.plan.command)))?;
        let pid = child.id();
        // The Child handle goes; the pidfd watcher reaps the process.
        drop(child);
        // A VNF that never opens a packet socket (an AF_XDP one, say) is
        // taken as ready after the wait; frames sent before it listens would
        // be lost to it, so say so.
        if let Err(e) = protect::wait_for_packet_socket(pid, &self.plan.command) {
            tracing::warn!(vnf = self.plan.name, "{e}; taking it as ready");
        }
        self.adopt(pid)
    }

    /// Brings the VNF's link up (a failed VNF may have been cut off; the
    /// one brought back needs its link).
    pub fn reconnect(&self) -> Result<(), ControlError> {
        self.netns.run(|| nham_netns::set_up(VNF_IFACE))??;
        Ok(())
    }

    /// Takes `pid` (started, or restored with its sockets) as the VNF's
    /// process; returns a pidfd to watch.
    pub fn adopt(&mut self, pid: u32) -> Result<OwnedFd, ControlError> {
        let pidfd = pidfd(pid)?;
        self.pid = Some(pid);
        self.incarnation += 1;
        self.state = api::VnfState::Running;
        Ok(pidfd)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), ControlError> {
        let pid = self.pid.ok_or_else(|| {
            ControlError::FailedPrecondition(format!("VNF {} is not running", self.plan.name))
        })?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .map_err(|e| ControlError::Process(format!("signal {signal} to {pid}: {e}")))
    }
}

/// Reaps the process of `pidfd` once it has exited (blocks until then).
pub fn reap(pidfd: &OwnedFd) {
    use std::os::fd::AsFd;
    loop {
        match rustix::process::waitid(
            rustix::process::WaitId::PidFd(pidfd.as_fd()),
            rustix::process::WaitIdOptions::EXITED,
        ) {
            Err(rustix::io::Errno::INTR) => continue,
            // Reaped, or not ours to reap (ECHILD).
            _ => return,
        }
    }
}

fn pidfd(pid: u32) -> Result<OwnedFd, ControlError> {
    let p = rustix::process::Pid::from_raw(pid as i32)
        .ok_or_else(|| ControlError::Process("process has pid 0".into()))?;
    rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty())
        .map_err(|e| ControlError::Process(format!("pidfd_open({pid}): {e}")))
}

impl Drop for VnfRuntime {
    fn drop(&mut self) {
        self.agent = None;
        if let Some(pid) = self.pid.take() {
            let p = nix::unistd::Pid::from_raw(pid as i32);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(p, None);
        }
    }
}

/// The VNF's interface name inside its namespace.
pub const VNF_IFACE: &str = "eth0";

/// A chain with its VNFs and SFF.
#[derive(Debug)]
pub struct ChainRuntime {
    /// Its plan.
    pub plan: ChainPlan,
    /// VNFs in order.
    pub vnfs: Vec<VnfRuntime>,
    /// The SFF thread (stopped before the VNFs go).
    pub sff: Option<Arc<SffHandle>>,
    /// Where this chain's VNF logs and scratch images live.
    pub work: PathBuf,
}

/// Where the daemon keeps state, and how it watches VNFs.
#[derive(Debug, Clone)]
pub struct StateOptions {
    /// How often the Failure Detector probes each VNF for hangs and
    /// cut-offs.
    pub probe_interval: Duration,
    /// Consecutive bad probes that make a failure.
    pub probe_threshold: u32,
    /// The state database.
    pub store: Arc<Store>,
    /// VNF logs (`<dir>/<chain>/<vnf>.log`).
    pub logs: PathBuf,
    /// Scratch space for images being dumped and restored (tmpfs is best).
    pub scratch: PathBuf,
    /// Checkpoint period for VNFs that do not set one.
    pub checkpoint_interval: Duration,
}

/// How the daemon runs SFFs.
#[derive(Debug, Clone, Copy, Default)]
pub struct SffOptions {
    /// Core to pin SFF threads to.
    pub core: Option<usize>,
    /// Idle behaviour.
    pub poll: PollPolicy,
}

fn port_spec(iface: &str) -> Result<PortSpec, ControlError> {
    let found = nham_netns::link(iface)?;
    Ok(PortSpec {
        iface: iface.to_string(),
        ifindex: found.ifindex,
        mac: found.mac,
        peer_mac: [0xff; 6],
    })
}

impl ChainRuntime {
    /// Builds namespaces and links, starts the VNFs (returning their pidfds,
    /// in order) and the SFF. `id` makes interface names unique per daemon.
    pub fn start(
        id: u32,
        plan: ChainPlan,
        sff: SffOptions,
        state: &StateOptions,
    ) -> Result<(Self, Vec<OwnedFd>), ControlError> {
        let mut vnfs = Vec::new();
        let mut hops = Vec::new();
        let work = state.scratch.join(&plan.name);
        let logs = state.logs.join(&plan.name);
        for dir in [&work, &logs] {
            std::fs::create_dir_all(dir)
                .map_err(|e| ControlError::Process(format!("{}: {e}", dir.display())))?;
        }
        for (i, v) in plan.vnfs.iter().enumerate() {
            let netns = Netns::create(&unique_name("nhc"))?;
            let (here, there) = veth_pair_here(&format!("n{id:x}v{i}"), &netns, VNF_IFACE)?;
            hops.push(PortSpec {
                iface: here.name.clone(),
                ifindex: here.ifindex,
                mac: here.mac,
                peer_mac: there.mac,
            });
            let ns = netns.name().to_string();
            // `setsid` execs in place (same pid): the VNF leads a session of
            // its own, as CRIU wants of the root of a tree it dumps.
            let argv = std::iter::once("setsid".to_string())
                .chain(
                    v.command
                        .iter()
                        .map(|a| a.replace("{iface}", VNF_IFACE).replace("{netns}", &ns)),
                )
                .collect();
            vnfs.push(VnfRuntime {
                plan: v.clone(),
                netns,
                pid: None,
                argv,
                log: logs.join(format!("{}.log", v.name)),
                agent: None,
                checkpoints: 0,
                sff_iface: here.name.clone(),
                judged: None,
                recovery_failures: 0,
                last_error: None,
                state: api::VnfState::Unspecified,
                failures: 0,
                recoveries: 0,
                fault_at: None,
                incarnation: 0,
            });
        }
        let mut runtime = Self {
            plan,
            vnfs,
            sff: None,
            work,
        };
        let pidfds = runtime
            .vnfs
            .iter_mut()
            .map(VnfRuntime::start)
            .collect::<Result<Vec<_>, _>>()?;
        let mut protect = Vec::new();
        for v in &runtime.vnfs {
            protect.push(protection(v.plan.mechanism)?.is_some());
        }
        let config = SffConfig {
            ingress: port_spec(&runtime.plan.ingress)?,
            egress: port_spec(&runtime.plan.egress)?,
            hops,
            rules: runtime.plan.rules.clone(),
            spi: runtime.plan.spi,
            hop: nham_dataplane::hold::HopConfig {
                rx_capacity: 4096,
                tx_capacity: 1024,
                ..Default::default()
            },
            protect,
            pool_slots: 16384,
            burst: 32,
            poll: sff.poll,
            core: sff.core,
            port: nham_afxdp_config(),
            vnf_window: 512,
            vnf_window_timeout: std::time::Duration::from_millis(2),
        };
        runtime.sff = Some(Arc::new(nham_sff::spawn(None, config)?));
        for hop in 0..runtime.vnfs.len() {
            let m = runtime.vnfs[hop].plan.mechanism;
            runtime.protect(hop, m, state)?;
        }
        Ok((runtime, pidfds))
    }

    /// Gives VNF `hop` mechanism `m`: makes, changes or drops its agent and
    /// tells the SFF whether to hold its packets.
    pub fn protect(
        &mut self,
        hop: usize,
        m: api::Mechanism,
        state: &StateOptions,
    ) -> Result<(), ControlError> {
        let wanted = protection(m)?;
        let sff = self.sff.clone().ok_or_else(|| {
            ControlError::FailedPrecondition("the chain's SFF is not running".into())
        })?;
        let chain = self.plan.name.clone();
        let v = &mut self.vnfs[hop];
        match (wanted, v.agent.clone()) {
            (None, None) => {}
            (None, Some(agent)) => {
                // A checkpoint under way finishes first (it holds the
                // agent): a new agent must find the hop idle.
                agent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .retire();
                v.agent = None;
                sff.command(|reply| nham_sff::Command::SetProtected {
                    hop,
                    protected: false,
                    reply,
                })?;
            }
            (Some(mech), Some(agent)) => agent
                .lock()
                .expect("agent lock")
                .set_mechanism(mech)
                .map_err(|e| ControlError::Process(e.to_string()))?,
            (Some(mech), None) => {
                let pid = v.pid.ok_or_else(|| {
                    ControlError::FailedPrecondition(format!("VNF {} is not running", v.plan.name))
                })?;
                let agent = ProtectedVnf::new(
                    hop,
                    pid,
                    &v.netns.path(),
                    v.argv.clone(),
                    StoreSlot {
                        store: state.store.clone(),
                        chain,
                        vnf: v.plan.name.clone(),
                        // Its own: a retired agent removes its scratch when it goes.
                        scratch: self.work.join(unique_name(&v.plan.name)),
                    },
                    mech,
                )
                .and_then(|mut a| a.watch_link(&v.sff_iface).map(|()| a))
                .map_err(|e| ControlError::Process(e.to_string()))?;
                sff.command(|reply| nham_sff::Command::SetProtected {
                    hop,
                    protected: true,
                    reply,
                })?;
                v.agent = Some(Arc::new(Mutex::new(agent)));
            }
        }
        v.plan.mechanism = m;
        Ok(())
    }

    /// The chain's state.
    pub fn state(&self) -> api::ChainState {
        if self.vnfs.iter().all(|v| v.state == api::VnfState::Running) {
            api::ChainState::Running
        } else {
            api::ChainState::Recovering
        }
    }

    /// The chain as the API shows it.
    pub fn to_api(&self, spec: &api::ChainSpec) -> api::Chain {
        api::Chain {
            spec: Some(spec.clone()),
            state: self.state() as i32,
            vnfs: self.vnfs.iter().map(VnfRuntime::status).collect(),
        }
    }

    /// The index of the VNF called `name`.
    pub fn vnf_index(&self, name: &str) -> Result<usize, ControlError> {
        self.vnfs
            .iter()
            .position(|v| v.plan.name == name)
            .ok_or_else(|| {
                ControlError::NotFound(format!("chain {:?} has no VNF {name:?}", self.plan.name))
            })
    }

    /// The VNF called `name`.
    pub fn vnf_mut(&mut self, name: &str) -> Result<&mut VnfRuntime, ControlError> {
        let chain = self.plan.name.clone();
        self.vnfs
            .iter_mut()
            .find(|v| v.plan.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("chain {chain:?} has no VNF {name:?}")))
    }

    /// Environment of VNFs, for tests: name -> namespace.
    pub fn namespaces(&self) -> BTreeMap<String, String> {
        self.vnfs
            .iter()
            .map(|v| (v.plan.name.clone(), v.netns.name().to_string()))
            .collect()
    }
}

impl Drop for ChainRuntime {
    fn drop(&mut self) {
        // Agents first (they hold the SFF), then the SFF: it holds the ports
        // on the VNF links.
        for v in &mut self.vnfs {
            v.agent = None;
        }
        if let Some(s) = self.sff.take() {
            match Arc::try_unwrap(s) {
                Ok(s) => {
                    let _ = s.stop();
                }
                // A checkpoint or recovery still holds it; it stops when
                // that lets go.
                Err(s) => drop(s),
            }
        }
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

fn nham_afxdp_config() -> nham_sff::PortConfig {
    nham_sff::PortConfig {
        rx_frames: 4096,
        tx_frames: 4096,
        frame_size: 2048,
        ring_size: 4096,
    }
}
