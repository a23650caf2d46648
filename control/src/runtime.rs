//! A running chain: VNF namespaces and links, VNF processes, the SFF.
//!
//! Each VNF gets a network namespace of its own and a veth pair whose other
//! end (`n<chain>v<i>`) stays in the daemon's namespace, where the SFF serves
//! it. The VNF's command starts in its namespace by forking from a thread
//! that entered it with `setns` (nsenter-style: no extra mount namespace, so
//! CRIU can dump it later). Every VNF process is watched through a pidfd: its
//! exit is seen the moment it happens.
//!
//! Invariant: dropping a [`ChainRuntime`] stops the SFF, kills and reaps
//! every VNF process and deletes every namespace (and so every veth) it made.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use nham_netns::{unique_name, veth_pair_here, Netns};
use nham_sff::{PollPolicy, PortSpec, SffConfig, SffHandle};

use crate::api;
use crate::error::ControlError;
use crate::validate::{ChainPlan, VnfPlan};

/// One VNF's runtime.
#[derive(Debug)]
pub struct VnfRuntime {
    /// Its plan.
    pub plan: VnfPlan,
    /// Its namespace.
    pub netns: Netns,
    /// The process, while it runs.
    pub child: Option<Child>,
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
    /// Its process id, if running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Its status as the API shows it.
    pub fn status(&self) -> api::VnfStatus {
        api::VnfStatus {
            name: self.plan.name.clone(),
            state: self.state as i32,
            pid: self.pid().unwrap_or(0),
            netns: self.netns.name().to_string(),
            mechanism: self.plan.mechanism as i32,
            failures: self.failures,
            recoveries: self.recoveries,
            checkpoints: 0,
        }
    }

    /// Starts the VNF's command in its namespace; returns a pidfd to watch.
    pub fn start(&mut self) -> Result<OwnedFd, ControlError> {
        let ns = self.netns.name().to_string();
        let argv: Vec<String> = self
            .plan
            .command
            .iter()
            .map(|a| a.replace("{iface}", VNF_IFACE).replace("{netns}", &ns))
            .collect();
        let env = self.plan.env.clone();
        let child = self
            .netns
            .run(move || {
                Command::new(&argv[0])
                    .args(&argv[1..])
                    .envs(env)
                    .env("NHAM_IFACE", VNF_IFACE)
                    .env("NHAM_NETNS", &ns)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .spawn()
            })?
            .map_err(|e| ControlError::Process(format!("starting {:?}: {e}", self.plan.command)))?;
        let pid = rustix::process::Pid::from_raw(child.id() as i32)
            .ok_or_else(|| ControlError::Process("child has pid 0".into()))?;
        let pidfd = rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
            .map_err(|e| ControlError::Process(format!("pidfd_open({pid:?}): {e}")))?;
        self.child = Some(child);
        self.state = api::VnfState::Running;
        self.incarnation += 1;
        Ok(pidfd)
    }

    /// Reaps the process after its pidfd said it exited.
    pub fn reap(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<(), ControlError> {
        let pid = self.pid().ok_or_else(|| {
            ControlError::FailedPrecondition(format!("VNF {} is not running", self.plan.name))
        })?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .map_err(|e| ControlError::Process(format!("signal {signal} to {pid}: {e}")))
    }
}

impl Drop for VnfRuntime {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
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
    pub sff: Option<SffHandle>,
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
    ) -> Result<(Self, Vec<OwnedFd>), ControlError> {
        let mut vnfs = Vec::new();
        let mut hops = Vec::new();
        for (i, v) in plan.vnfs.iter().enumerate() {
            let netns = Netns::create(&unique_name("nhc"))?;
            let (here, there) = veth_pair_here(&format!("n{id:x}v{i}"), &netns, VNF_IFACE)?;
            hops.push(PortSpec {
                iface: here.name.clone(),
                ifindex: here.ifindex,
                mac: here.mac,
                peer_mac: there.mac,
            });
            vnfs.push(VnfRuntime {
                plan: v.clone(),
                netns,
                child: None,
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
        };
        let pidfds = runtime
            .vnfs
            .iter_mut()
            .map(VnfRuntime::start)
            .collect::<Result<Vec<_>, _>>()?;
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
            protect: false,
            pool_slots: 16384,
            burst: 32,
            poll: sff.poll,
            core: sff.core,
            port: nham_afxdp_config(),
            vnf_window: 512,
            vnf_window_timeout: std::time::Duration::from_millis(2),
        };
        runtime.sff = Some(nham_sff::spawn(None, config)?);
        Ok((runtime, pidfds))
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
        // Stop the SFF first: it holds the ports on the VNF links.
        if let Some(s) = self.sff.take() {
            let _ = s.stop();
        }
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
