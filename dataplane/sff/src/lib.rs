//! The NHAM Service Function Forwarder (SFF) on real interfaces.
//!
//! One thread, optionally pinned to a core, serves every port of one SFP:
//!
//! ```text
//! ingress ─classify─encap(seq)─▶ BufferRx(0) ─deliver─▶ hop port 0 ─▶ VNF 0
//!                                     VNF 0 ─▶ hop port 0 ─check─▶ BufferTx(0) ─advance─▶ BufferRx(1) …
//!                                                   … BufferTx(n-1) ─decap─▶ egress
//! ```
//!
//! Each port is an AF_XDP socket ([`nham_afxdp::Port`]) fed by the XDP
//! redirect program ([`nham_ebpf::XdpRedirect`]). Frames are copied into
//! [`pool::Pool`] slots; the Hold/Release core ([`nham_dataplane::hold`])
//! moves slot handles and decides delivery, release, duplicate suppression
//! and backpressure. What the core decides, this crate only carries out.
//!
//! Per RFC 8300 the SFF checks what a VNF sends back: an Ethernet frame with
//! EtherType 0x894F, a valid NSH header for this SPI whose SI is one less
//! than it was on delivery ("The Service Index MUST be decremented by a value
//! of 1 by Service Functions"), carrying NHAM metadata; it decrements the TTL
//! ("Each SFF involved in forwarding an NSH packet MUST decrement the TTL
//! value by 1 prior to NSH forwarding lookup") and drops the packet when it
//! reaches 0. Anything else is counted and dropped; other traffic is not
//! affected.
//!
//! Bursts are sized before frames leave a ring (pool room, `BufferRx` room,
//! tx ring room), so nothing taken off a ring is ever dropped for lack of
//! space: the backpressure stays in the rings and the Hold/Release buffers,
//! where it is counted.
//!
//! Polling is adaptive: the thread spins while there is work and for
//! [`PollPolicy::spin`] empty rounds after, then sleeps
//! [`PollPolicy::sleep`] per round, so tests on a 2-core machine do not
//! starve.
#![forbid(unsafe_code)]

mod execute;
mod flush;
mod forward;
mod ingress;
pub mod pool;
pub mod protocol;
pub mod remote;

pub use nham_afxdp::PortConfig;

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nham_afxdp::{AfXdpError, Port};
use nham_dataplane::classifier::{Classifier, ClassifyError, Rule};
use nham_dataplane::hold::{Chain, CheckpointId, HoldError, HopConfig, MemberState};
use nham_dataplane::nsh::{self, NhamMetadata, NshPacket, TtlVerdict};
use nham_dataplane::window::FlowWindow;
use nham_ebpf::{EbpfError, XdpRedirect, XdpRule};
use thiserror::Error;

use flush::PortSlot;
use pool::{Pool, SLOT};
pub use protocol::{Request, Response};

const ETH: usize = 14;

/// Errors of starting or running the SFF.
#[derive(Debug, Error)]
pub enum SffError {
    /// An AF_XDP port failed.
    #[error(transparent)]
    AfXdp(#[from] AfXdpError),
    /// The XDP program failed.
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    /// The classifier rules are invalid.
    #[error(transparent)]
    Classifier(#[from] ClassifyError),
    /// The Hold/Release configuration is invalid.
    #[error(transparent)]
    Hold(#[from] HoldError),
    /// Entering the SFF's namespace failed.
    #[error("entering namespace {path}: {reason}")]
    Netns {
        /// Namespace file.
        path: String,
        /// Why.
        reason: String,
    },
    /// An interface's receive queues could not be read.
    #[error("the receive queues of {iface}: {reason}")]
    Queues {
        /// The interface.
        iface: String,
        /// Why.
        reason: String,
    },
    /// The SFF thread panicked.
    #[error("the SFF thread panicked")]
    Panicked,
    /// The SFF thread stopped before it was ready.
    #[error("the SFF thread stopped during start-up")]
    StartFailed,
    /// The SFF thread is gone.
    #[error("the SFF thread has stopped")]
    Stopped,
    /// This forwarder takes no commands (the L2 baseline).
    #[error("this forwarder takes no commands")]
    NoCommands,
    /// The control socket failed.
    #[error("control socket: {0}")]
    Socket(std::io::Error),
    /// A command named a hop the chain does not have.
    #[error("no hop {0}")]
    NoHop(usize),
    /// The pool cannot hold what the hops may hold at once: with it empty,
    /// VNF outputs could not be taken off their rings and would be lost.
    #[error("{have} packet buffers cannot hold what the hops may hold at once: {need} needed ({hops} hops)")]
    PoolTooSmall {
        /// Configured.
        have: usize,
        /// Needed ([`SffConfig::pool_slots_needed`]).
        need: usize,
        /// Hops.
        hops: usize,
    },
}

/// One interface the SFF serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PortSpec {
    /// Interface name (in the SFF's namespace).
    pub iface: String,
    /// Its index.
    pub ifindex: u32,
    /// Its MAC address (source of frames sent on it).
    pub mac: [u8; 6],
    /// MAC of the device on the other end (destination of frames sent on it).
    pub peer_mac: [u8; 6],
}

/// How the polling thread behaves when idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PollPolicy {
    /// Empty rounds spent spinning before sleeping.
    pub spin: u32,
    /// Sleep per empty round after that.
    pub sleep: Duration,
}

impl Default for PollPolicy {
    fn default() -> Self {
        Self {
            spin: 2000,
            sleep: Duration::from_micros(50),
        }
    }
}

/// What the SFF serves and how.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SffConfig {
    /// Where traffic enters.
    pub ingress: PortSpec,
    /// Where traffic leaves (decapsulated).
    pub egress: PortSpec,
    /// One port per VNF, in chain order.
    pub hops: Vec<PortSpec>,
    /// Classifier rules; traffic for other SPIs is a miss.
    pub rules: Vec<Rule>,
    /// The SPI of the chain served.
    pub spi: u32,
    /// Hold/Release sizing.
    pub hop: HopConfig,
    /// Per hop, whether it starts protected (missing entries: not). An
    /// unprotected hop's VNF is not checkpointed, so packets are released as
    /// soon as they are delivered (no exactly-once across its failures).
    /// [`Command::SetProtected`] changes it at runtime.
    pub protect: Vec<bool>,
    /// Per hop, a standby port (missing entries: none): the link of a
    /// replica of the hop's VNF. Nothing is sent on it until
    /// [`Command::SwitchPort`] makes it the hop's port (failover to an
    /// active replica); the old port becomes the standby.
    #[serde(default)]
    pub standby: Vec<Option<PortSpec>>,
    /// Per hop, the ports of its other MR-AA members (missing or empty: an
    /// ordinary hop). Member 0 is the hop's port in [`hops`](Self::hops);
    /// member `k` is behind `members[hop][k - 1]`. Every delivery goes to
    /// every live member; the first copy of each output moves on.
    #[serde(default)]
    pub members: Vec<Vec<PortSpec>>,
    /// Packet buffers.
    pub pool_slots: usize,
    /// Frames moved per step.
    pub burst: usize,
    /// Idle behaviour.
    pub poll: PollPolicy,
    /// Core to pin the thread to.
    pub core: Option<usize>,
    /// AF_XDP port sizing.
    pub port: PortConfig,
    /// Frames a VNF may have been sent but not yet answered, at most
    /// (what its socket can hold decides below that: see
    /// [`vnf_capacity`](Self::vnf_capacity)).
    pub vnf_window: usize,
    /// What each VNF socket holds until the control plane measures it
    /// ([`Command::SetCapacity`]): by default Linux's default receive
    /// buffer, bound to `ETH_P_ALL`.
    #[serde(default)]
    pub vnf_capacity: nham_dataplane::window::VnfCapacity,
    /// After this long without output from a VNF, frames still in flight to
    /// it are taken as consumed (a VNF that drops packets never answers
    /// them): all of them, or (with
    /// [`vnf_silence_needs_read`](Self::vnf_silence_needs_read)) those its
    /// sockets were seen empty after.
    pub vnf_window_timeout: Duration,
    /// Silence alone does not free the window: only frames sent before the
    /// control plane last saw the VNF's sockets empty
    /// ([`Command::SocketRead`]) leave by silence. A slow or descheduled VNF
    /// is silent with its socket full; freeing on silence alone overflows
    /// it. (`nhamd` probes and sets this; the bench lab, which has no
    /// prober, does not: [`without_socket_probes`](Self::without_socket_probes).)
    #[serde(default)]
    pub vnf_silence_needs_read: bool,
}

impl SffConfig {
    /// How `nhamd` runs a chain (ingress, egress, one port per VNF, its
    /// classifier `rules` for `spi`, `hold_packets` held per hop); the
    /// bench lab starts from the same, so what the benches measure is what
    /// `nhamd` runs. Protection, standby and member ports, polling and the
    /// pool are the caller's to set (the pool once the ports are known:
    /// [`pool_slots_needed`](Self::pool_slots_needed)).
    pub fn for_chain(
        ingress: PortSpec,
        egress: PortSpec,
        hops: Vec<PortSpec>,
        rules: Vec<Rule>,
        spi: u32,
        hold_packets: usize,
    ) -> Self {
        let n = hops.len();
        Self {
            ingress,
            egress,
            hops,
            rules,
            spi,
            hop: HopConfig {
                // Two checkpoint intervals of traffic (the fallback is
                // kept), and what arrives while no daemon checkpoints.
                rx_capacity: hold_packets,
                tx_capacity: 1024,
                // A committed image found corrupt at restore time is
                // replaced by the one before it.
                keep_fallback: true,
                ..HopConfig::default()
            },
            protect: vec![false; n],
            standby: Vec::new(),
            members: Vec::new(),
            pool_slots: 0,
            burst: 32,
            poll: PollPolicy::default(),
            core: None,
            port: PortConfig {
                rx_frames: 4096,
                tx_frames: 4096,
                frame_size: 2048,
                ring_size: 4096,
            },
            vnf_window: 512,
            vnf_capacity: nham_dataplane::window::VnfCapacity::default(),
            vnf_window_timeout: Duration::from_millis(10),
            vnf_silence_needs_read: true,
        }
    }

    /// For a chain whose VNFs no control plane probes (the bench lab's
    /// data-path benches and tests): nobody tells the SFF what a VNF's
    /// sockets read ([`Command::SocketRead`]), so silence alone frees the
    /// window of frames a VNF dropped, after 20 ms: long enough that a VNF
    /// slow for a moment (a debug build, a loaded host) has read what it
    /// was sent.
    pub fn without_socket_probes(mut self) -> Self {
        self.vnf_window_timeout = Duration::from_millis(20);
        self.vnf_silence_needs_read = false;
        self
    }

    /// Packet buffers the chain may occupy at once, the least
    /// [`pool_slots`](Self::pool_slots) may be: per hop, a full `buffer_rx`
    /// plus a `buffer_tx` with what its VNF may answer to the frames in
    /// flight to it (twice the window: a VNF may emit more than one output
    /// per input); plus a burst at ingress and one at egress. With fewer,
    /// an empty pool would leave VNF outputs on their rings, where the
    /// kernel drops them once full: outputs lost, numbering broken.
    pub fn pool_slots_needed(&self) -> usize {
        let per_hop = self.hop.rx_capacity + self.hop.tx_capacity + 2 * self.vnf_window;
        let member_ports: usize = self.members.iter().map(Vec::len).sum();
        per_hop * self.hops.len() + 2 * self.vnf_window * member_ports + 2 * self.burst.max(1)
    }
}

/// Counters, readable while the SFF runs.
#[derive(Debug, Default)]
pub struct SffCounters {
    /// Frames read on ingress.
    pub ingress: AtomicU64,
    /// Classified and admitted into the chain.
    pub classified: AtomicU64,
    /// Well-formed frames no rule (for this SPI) matched; dropped.
    pub classifier_miss: AtomicU64,
    /// Ingress frames that are not Ethernet/IP; dropped.
    pub malformed_ingress: AtomicU64,
    /// Ingress frames too large for a buffer; dropped.
    pub oversize: AtomicU64,
    /// Frames sent to VNFs.
    pub delivered: AtomicU64,
    /// Frames from VNFs that are not valid NSH for this chain; dropped.
    pub malformed_from_vnf: AtomicU64,
    /// Frames from a VNF whose SI was not decremented by one; dropped.
    pub si_mismatch: AtomicU64,
    /// Frames whose TTL expired; dropped.
    pub ttl_expired: AtomicU64,
    /// VNF outputs accepted.
    pub accepted: AtomicU64,
    /// Replayed outputs suppressed.
    pub duplicates: AtomicU64,
    /// Of those, replays that differed from the original output (the VNF
    /// is not deterministic); the first copy stands.
    pub divergent: AtomicU64,
    /// Outputs of failed incarnations discarded.
    pub stale: AtomicU64,
    /// Frames read on a hop's standby port and discarded: sent by an
    /// incarnation that is not the hop's current one (see `fence_step`).
    pub fenced: AtomicU64,
    /// Frames sent on egress.
    pub egress: AtomicU64,
    /// Frames the core marked delivered that the tx ring refused (sizing
    /// bug if ever non-zero).
    pub tx_refused: AtomicU64,
    /// Frames for a failed VNF that could not leave its port's tx ring and
    /// were discarded with the socket (never delivered to its successor).
    pub tx_discarded: AtomicU64,
    /// Wakeups for frames the kernel left in a port's tx ring (a veth whose
    /// peer was full): see `Port::kick_if_stalled`.
    pub tx_kicks: AtomicU64,
    /// Checkpoint marks refused because frames delivered to the VNF
    /// before the checkpoint began were still in its port's tx ring (sent
    /// then; the VNF drains again): see `Engine::quiesced`.
    pub mark_in_transit: AtomicU64,
    /// Frames the kernel dropped before the SFF read them on ingress (its
    /// ring full: the chain was overloaded and backpressure reached the
    /// wire). Sampled.
    pub ingress_kernel_drops: AtomicU64,
    /// VNF outputs the kernel dropped before the SFF read them (a hop
    /// port's ring full). Must stay 0: a lost output breaks exactly-once
    /// for its hop. Sampled.
    pub vnf_output_kernel_drops: AtomicU64,
    /// Frames on the ingress and egress interfaces that matched no rule
    /// of the chain's classifier (ARP, ICMP, management traffic), left to
    /// the kernel by the XDP program. Sampled.
    pub passed_to_kernel: AtomicU64,
    /// The SFF's AF_XDP ports bound in zero-copy mode (the driver offers
    /// it), and in copy mode (veth; drivers without it). Sampled.
    pub zero_copy_ports: AtomicU64,
    /// See [`SffCounters::zero_copy_ports`].
    pub copy_ports: AtomicU64,
    /// VNF outputs read with no pool buffer for them (never: each burst
    /// takes its buffers before it reads; counted, not a panic, should it
    /// ever happen).
    pub pool_exhausted: AtomicU64,
}

impl SffCounters {
    fn add(c: &AtomicU64, n: u64) {
        if n > 0 {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A plain snapshot.
    pub fn snapshot(&self) -> SffStats {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        SffStats {
            ingress: g(&self.ingress),
            classified: g(&self.classified),
            classifier_miss: g(&self.classifier_miss),
            malformed_ingress: g(&self.malformed_ingress),
            oversize: g(&self.oversize),
            delivered: g(&self.delivered),
            malformed_from_vnf: g(&self.malformed_from_vnf),
            si_mismatch: g(&self.si_mismatch),
            ttl_expired: g(&self.ttl_expired),
            accepted: g(&self.accepted),
            duplicates: g(&self.duplicates),
            divergent: g(&self.divergent),
            stale: g(&self.stale),
            fenced: g(&self.fenced),
            egress: g(&self.egress),
            tx_refused: g(&self.tx_refused),
            tx_kicks: g(&self.tx_kicks),
            mark_in_transit: g(&self.mark_in_transit),
            tx_discarded: g(&self.tx_discarded),
            ingress_kernel_drops: g(&self.ingress_kernel_drops),
            vnf_output_kernel_drops: g(&self.vnf_output_kernel_drops),
            passed_to_kernel: g(&self.passed_to_kernel),
            zero_copy_ports: g(&self.zero_copy_ports),
            copy_ports: g(&self.copy_ports),
            pool_exhausted: g(&self.pool_exhausted),
        }
    }
}

/// A snapshot of [`SffCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)]
pub struct SffStats {
    pub ingress: u64,
    pub classified: u64,
    pub classifier_miss: u64,
    pub malformed_ingress: u64,
    pub oversize: u64,
    pub delivered: u64,
    pub malformed_from_vnf: u64,
    pub si_mismatch: u64,
    pub ttl_expired: u64,
    pub accepted: u64,
    pub duplicates: u64,
    /// See [`SffCounters::divergent`].
    pub divergent: u64,
    pub stale: u64,
    /// See [`SffCounters::fenced`].
    #[serde(default)]
    pub fenced: u64,
    pub egress: u64,
    pub tx_refused: u64,
    /// See [`SffCounters::tx_kicks`].
    #[serde(default)]
    pub tx_kicks: u64,
    /// See [`SffCounters::mark_in_transit`].
    #[serde(default)]
    pub mark_in_transit: u64,
    /// See [`SffCounters::tx_discarded`].
    pub tx_discarded: u64,
    /// See [`SffCounters::ingress_kernel_drops`].
    #[serde(default)]
    pub ingress_kernel_drops: u64,
    /// See [`SffCounters::vnf_output_kernel_drops`].
    #[serde(default)]
    pub vnf_output_kernel_drops: u64,
    /// See [`SffCounters::pool_exhausted`].
    #[serde(default)]
    pub pool_exhausted: u64,
    /// See [`SffCounters::passed_to_kernel`].
    #[serde(default)]
    pub passed_to_kernel: u64,
    /// See [`SffCounters::zero_copy_ports`].
    #[serde(default)]
    pub zero_copy_ports: u64,
    /// See [`SffCounters::copy_ports`].
    #[serde(default)]
    pub copy_ports: u64,
}

/// A running SFF thread.
#[derive(Debug)]
pub struct SffHandle {
    stop: Arc<AtomicBool>,
    counters: Arc<SffCounters>,
    thread: Option<JoinHandle<Result<(), SffError>>>,
    commands: Option<mpsc::Sender<Command>>,
    /// Ports' sizing, when the SFF thread runs in its spawner's namespace:
    /// a new port is opened by the asking thread (see [`LocalSff::ask`]).
    prepare: Option<PortConfig>,
    /// Standby ports opened ahead (see [`Request::PrepareStandby`]).
    ahead: Ahead,
}

/// A request for the SFF thread (see [`protocol`]) and the channel its
/// answer goes back on: what the control plane's client and the socket
/// server send, between two forwarding rounds.
#[derive(Debug)]
pub struct Command {
    /// What is asked.
    pub request: Request,
    /// Where the answer goes.
    pub reply: mpsc::Sender<Response>,
    /// The new port an `AttachStandby` names, opened already by the
    /// asking thread.
    prepared: Option<Prepared>,
}

/// A port opened off the SFF thread: its XDP program loaded and attached
/// and its AF_XDP socket made take tens of ms (20-37 ms seen), which the
/// SFF thread would spend not forwarding and not answering (a failover of
/// another hop queued behind it). Opened in the SFF's namespace.
struct Prepared {
    /// The port's interface.
    iface: String,
    /// The port, or why it could not be opened.
    attached: Result<Attached, SffError>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared")
            .field("iface", &self.iface)
            .field("ok", &self.attached.is_ok())
            .finish()
    }
}

/// Where a hop's checkpoint protocol stands, as a control plane that
/// attaches to a running SFF needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PhaseStatus {
    /// No checkpoint under way.
    Idle,
    /// Delivery stopped, waiting for the VNF to drain (not frozen yet).
    Draining(CheckpointId),
    /// The VNF was frozen and is being dumped.
    Dumping(CheckpointId),
    /// The image is taken; it is being stored.
    Storing(CheckpointId),
}

/// One hop's Hold/Release state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HopStatus {
    /// The checkpoint protocol's phase.
    pub phase: PhaseStatus,
    /// The VNF failed and has not been restored yet.
    pub recovering: bool,
    /// The current incarnation's epoch.
    pub epoch: u32,
    /// The restore point (`None`: the initial state).
    pub committed: Option<CheckpointId>,
    /// Packets held in `buffer_rx` until a checkpoint includes them.
    pub held: usize,
    /// Packets waiting in `buffer_rx` for delivery.
    pub pending: usize,
    /// Whether packets are held for this hop.
    pub protected: bool,
    /// Replayed outputs of this hop that differed from the originals.
    pub divergent: u64,
    /// MR-AA members (empty: an ordinary hop).
    #[serde(default)]
    pub members: Vec<MemberState>,
    /// Frames each port of the hop (member 0, 1, ...) has sent back to the
    /// SFF so far: a VNF that answers is working, however long its queue.
    #[serde(default)]
    pub heard: Vec<u64>,
    /// Per port of the hop: frames in flight to it (sent, not answered),
    /// the bytes of kernel charge they stand for, the budget its socket
    /// allows, and frames sent to it so far.
    #[serde(default)]
    pub in_flight: Vec<(usize, u64, u64, u64)>,
}

/// Commands and counters of an SFF thread in this process.
#[derive(Debug, Clone)]
pub struct LocalSff {
    commands: mpsc::Sender<Command>,
    counters: Arc<SffCounters>,
    prepare: Option<PortConfig>,
    ahead: Ahead,
}

/// Per hop, the standby port a `PrepareStandby` opened (for that spec,
/// at that time), until its `AttachStandby` takes it, another
/// `PrepareStandby` of the hop replaces it, or it is [`AHEAD_FOR`] old
/// (the attach never came: its asker gave the copy up).
type Ahead = Arc<Mutex<BTreeMap<usize, (PortSpec, Instant, Prepared)>>>;

/// How long a standby port opened ahead waits for its attach (which comes
/// within milliseconds when it comes).
const AHEAD_FOR: Duration = Duration::from_secs(5);

impl LocalSff {
    /// Asks the SFF thread `request` and waits for its answer. A new port
    /// the request names is opened here first, where the SFF thread runs
    /// in this thread's namespace (see [`Prepared`]).
    pub fn ask(&self, request: Request) -> Result<Response, SffError> {
        let (reply, answer) = mpsc::channel();
        // (Not a ReplaceMember's: one refused as busy is asked again at
        // once, and the socket dropped here would still hold its queue.)
        let ahead = || self.ahead.lock().unwrap_or_else(PoisonError::into_inner);
        // (Ports whose attach never came are closed after the lock.)
        let stale: Vec<_> = {
            let mut ports = ahead();
            let old: Vec<usize> = (ports.iter())
                .filter(|(_, (_, at, _))| at.elapsed() > AHEAD_FOR)
                .map(|(&hop, _)| hop)
                .collect();
            old.iter().filter_map(|hop| ports.remove(hop)).collect()
        };
        drop(stale);
        let prepared = match (&request, self.prepare) {
            (Request::PrepareStandby { hop, spec }, Some(config)) => {
                let port = Prepared {
                    iface: spec.iface.clone(),
                    attached: attach(spec, config),
                };
                let answer = match &port.attached {
                    Ok(_) => Response::Ok,
                    Err(e) => Response::Refused(format!("opening {}: {e}", spec.iface)),
                };
                // (One closed here, not attached, is dropped after the
                // lock.)
                let before = ahead().insert(*hop, (spec.clone(), Instant::now(), port));
                drop(before);
                return Ok(answer);
            }
            (Request::PrepareStandby { .. }, None) => return Ok(Response::Ok),
            (Request::AttachStandby { hop, spec }, Some(config)) => {
                // (Only the port opened for this very spec: an interface
                // of that name may have been made again since.)
                let opened = (ahead().remove(hop))
                    .filter(|(ahead, _, _)| ahead == spec)
                    .map(|(_, _, port)| port);
                Some(opened.unwrap_or_else(|| Prepared {
                    iface: spec.iface.clone(),
                    attached: attach(spec, config),
                }))
            }
            _ => None,
        };
        self.commands
            .send(Command {
                request,
                reply,
                prepared,
            })
            .map_err(|_| SffError::Stopped)?;
        answer.recv().map_err(|_| SffError::Stopped)
    }

    /// Live counters.
    pub fn counters(&self) -> &SffCounters {
        &self.counters
    }
}

impl SffHandle {
    /// Live counters.
    pub fn counters(&self) -> &SffCounters {
        &self.counters
    }

    /// Asks the SFF thread `request` and waits for its answer.
    pub fn ask(&self, request: Request) -> Result<Response, SffError> {
        self.local()?.ask(request)
    }

    /// A way to command the thread that does not borrow this handle (for
    /// [`remote::SffClient::local`]).
    pub fn local(&self) -> Result<LocalSff, SffError> {
        Ok(LocalSff {
            commands: self.commands.clone().ok_or(SffError::NoCommands)?,
            counters: self.counters.clone(),
            prepare: self.prepare,
            ahead: self.ahead.clone(),
        })
    }

    /// Asks the thread to stop, without waiting for it.
    pub fn halt(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether the thread has stopped (asked to, or by a fatal error).
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Stops the thread and waits for it; ports and XDP programs are
    /// released on its way out.
    pub fn stop(mut self) -> Result<SffStats, SffError> {
        self.stop.store(true, Ordering::Relaxed);
        let r = self.thread.take().map(|t| t.join());
        match r {
            Some(Ok(Ok(()))) | None => Ok(self.counters.snapshot()),
            Some(Ok(Err(e))) => Err(e),
            Some(Err(_)) => Err(SffError::Panicked),
        }
    }
}

impl Drop for SffHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn enter_netns(path: &PathBuf) -> Result<(), SffError> {
    let err = |reason: String| SffError::Netns {
        path: path.display().to_string(),
        reason,
    };
    let f = File::open(path).map_err(|e| err(e.to_string()))?;
    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| err(e.to_string()))
}

/// An AF_XDP port with the XDP program steering its interface to it.
struct Attached {
    port: Port,
    xdp: XdpRedirect,
    /// A chain's ingress: the sockets of its receive queues 1 to n-1 (the
    /// XDP program steers each queue's frames to its own socket; `port`
    /// is queue 0's).
    queues: Vec<Port>,
}

impl Engine {
    /// A port for `spec`: the one opened by the asking thread if it is
    /// for `spec`, else opened now (also when opening it there failed: a
    /// port on that interface, which the request replaces, may have been
    /// open then).
    fn open_port(&mut self, spec: &PortSpec) -> Result<Attached, SffError> {
        match self.prepared.take() {
            Some(Prepared {
                iface,
                attached: Ok(a),
            }) if iface == spec.iface => Ok(a),
            _ => attach(spec, self.config.port),
        }
    }
}

/// A port on `spec` that every frame arriving there is steered to (a
/// VNF's port).
fn attach(spec: &PortSpec, config: PortConfig) -> Result<Attached, SffError> {
    with_socket(XdpRedirect::attach(spec.ifindex)?, spec, config)
}

/// `xdp` (attached to `spec`'s interface) and a socket for its queue 0.
fn with_socket(
    xdp: XdpRedirect,
    spec: &PortSpec,
    config: PortConfig,
) -> Result<Attached, SffError> {
    let port = open(spec, config)?;
    xdp.register_socket(0, port.fd())?;
    Ok(Attached {
        port,
        xdp,
        queues: Vec::new(),
    })
}

/// A port on `spec` that only the frames that may match one of `rules`
/// are steered to; the rest (ARP, ICMP, a host's management traffic) go
/// on to the kernel as if the SFF were not there. The chain's ingress
/// (its classifier's rules) and egress (none: it only sends).
fn attach_filtered(
    spec: &PortSpec,
    config: PortConfig,
    rules: &[XdpRule],
) -> Result<Attached, SffError> {
    with_socket(
        XdpRedirect::attach_filtered(spec.ifindex, rules)?,
        spec,
        config,
    )
}

/// The chain's ingress: [`attach_filtered`], with a socket on every
/// receive queue of the interface (a NIC's RSS spreads flows over its
/// queues; a queue without a socket would pass its frames to the kernel,
/// past the chain). Each queue keeps its flows' order.
fn attach_ingress(
    spec: &PortSpec,
    config: PortConfig,
    rules: &[XdpRule],
) -> Result<Attached, SffError> {
    let mut a = attach_filtered(spec, config, rules)?;
    // The queues the device has; fewer may be in use (`ethtool -L`), and
    // binding to one that is not fails: the sockets stop there. (The XDP
    // program passes a queue's frames without a socket to the kernel,
    // counted in `passed_to_kernel`.)
    let n = nham_netns::rx_queues(&spec.iface).map_err(|e| SffError::Queues {
        iface: spec.iface.clone(),
        reason: e.to_string(),
    })?;
    for q in 1..n {
        match Port::open(&spec.iface, q, config) {
            Ok(port) => {
                a.xdp.register_socket(q, port.fd())?;
                a.queues.push(port);
            }
            Err(e) => {
                tracing::info!(
                    iface = spec.iface,
                    "{q} of its {n} receive queues in use (queue {q}: {e})"
                );
                break;
            }
        }
    }
    if !a.queues.is_empty() {
        tracing::info!(
            iface = spec.iface,
            queues = a.queues.len() + 1,
            "one AF_XDP socket per receive queue"
        );
    }
    Ok(a)
}

/// An AF_XDP port on `spec`'s interface, its mode logged.
fn open(spec: &PortSpec, config: PortConfig) -> Result<Port, SffError> {
    let port = Port::open(&spec.iface, 0, config)?;
    tracing::debug!(
        iface = spec.iface,
        "AF_XDP port in {} mode",
        if port.zero_copy() {
            "zero-copy"
        } else {
            "copy"
        }
    );
    Ok(port)
}

/// The classifier's rules as the XDP program matches them.
fn xdp_rules(rules: &[Rule]) -> Vec<XdpRule> {
    use ipnet::IpNet;
    // (network, mask) as 16 bytes each, IPv4 in the first four.
    let prefix = |n: &Option<IpNet>| -> ([u8; 16], [u8; 16]) {
        let mut net = [0u8; 16];
        let mut mask = [0u8; 16];
        match n {
            None => {}
            Some(IpNet::V4(n)) => {
                net[..4].copy_from_slice(&n.network().octets());
                mask[..4].copy_from_slice(&n.netmask().octets());
            }
            Some(IpNet::V6(n)) => {
                net.copy_from_slice(&n.network().octets());
                mask.copy_from_slice(&n.netmask().octets());
            }
        }
        (net, mask)
    };
    let family = |n: &Option<IpNet>| match n {
        None => None,
        Some(IpNet::V4(_)) => Some(4),
        Some(IpNet::V6(_)) => Some(6),
    };
    rules
        .iter()
        .map(|r| XdpRule {
            family: match (family(&r.src), family(&r.dst)) {
                (None, f) | (f, None) => f,
                (Some(a), Some(b)) if a == b => Some(a),
                _ => Some(0),
            },
            src: prefix(&r.src),
            dst: prefix(&r.dst),
            proto: r.proto,
            src_ports: r.src_ports.as_ref().map(|p| (*p.start(), *p.end())),
            dst_ports: r.dst_ports.as_ref().map(|p| (*p.start(), *p.end())),
        })
        .collect()
}

/// Waits for a forwarder thread to report that its ports are open, and
/// returns its handle; if it failed instead, returns its error.
fn await_ready(
    ready: &mpsc::Receiver<Result<(), String>>,
    stop: Arc<AtomicBool>,
    counters: Arc<SffCounters>,
    thread: JoinHandle<Result<(), SffError>>,
    commands: Option<mpsc::Sender<Command>>,
) -> Result<SffHandle, SffError> {
    match ready.recv() {
        Ok(Ok(())) => Ok(SffHandle {
            stop,
            counters,
            thread: Some(thread),
            commands,
            prepare: None,
            ahead: Ahead::default(),
        }),
        _ => match thread.join() {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(SffError::StartFailed),
            Err(_) => Err(SffError::Panicked),
        },
    }
}

/// Starts an SFF thread in the network namespace at `netns` (or the
/// caller's, if `None`) and returns once its ports are open.
pub fn spawn(netns: Option<PathBuf>, config: SffConfig) -> Result<SffHandle, SffError> {
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(SffCounters::default());
    let (ready_tx, ready_rx) = mpsc::channel();
    let (command_tx, command_rx) = mpsc::channel();
    let prepare = netns.is_none().then_some(config.port);
    let thread = {
        let stop = stop.clone();
        let counters = counters.clone();
        std::thread::Builder::new()
            .name("nham-sff".into())
            .spawn(move || -> Result<(), SffError> {
                let started = (|| {
                    if let Some(path) = &netns {
                        enter_netns(path)?;
                    }
                    if let Some(core) = config.core {
                        core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    }
                    Engine::new(config, counters, command_rx)
                })();
                match started {
                    Ok(mut engine) => {
                        let _ = ready_tx.send(Ok(()));
                        engine.run(&stop);
                        engine.fatal.take().map_or(Ok(()), Err)
                    }
                    Err(e) => {
                        let msg = e.to_string();
                        let _ = ready_tx.send(Err(msg));
                        Err(e)
                    }
                }
            })
            .map_err(|_| SffError::StartFailed)?
    };
    let mut handle = await_ready(&ready_rx, stop, counters, thread, Some(command_tx))?;
    handle.prepare = prepare;
    Ok(handle)
}

/// How long the tx ring of a failed VNF's port gets to drain before the
/// port is reopened.
const FLUSH_TIMEOUT: Duration = Duration::from_millis(200);

struct Engine {
    /// The port the command being executed brought (see [`Prepared`]).
    prepared: Option<Prepared>,
    config: SffConfig,
    counters: Arc<SffCounters>,
    ingress: Attached,
    /// Which ingress queue reads first in the next round.
    ingress_turn: usize,
    egress: Attached,
    /// Per hop, its member ports (one for an ordinary hop).
    hops: Vec<Vec<PortSlot>>,
    /// Per hop, the standby port (see [`SffConfig::standby`]).
    standby: Vec<Option<(PortSpec, PortSlot)>>,
    classifier: Classifier,
    /// `None` when the chain has no VNF: packets go straight to egress.
    chain: Option<Chain<u32>>,
    direct: std::collections::VecDeque<u32>,
    next_seq: u64,
    pool: Pool,
    scratch: Vec<(u32, u64, u32)>,
    slots: Vec<u32>,
    /// Per hop and member: frames delivered and not yet answered, in
    /// order, within what the VNF's socket can hold.
    in_flight: Vec<Vec<FlowWindow>>,
    /// Per hop: the frames in flight to the VNF when it was frozen for
    /// each recent checkpoint (consumed, not yet answered: work inside the
    /// VNF that its image holds), newest last. A VNF restored from one of
    /// them answers those frames first, and its own outputs' copies are
    /// charged to an `ETH_P_ALL` socket meanwhile: its window starts with
    /// them, not empty.
    frozen_windows: Vec<std::collections::VecDeque<(CheckpointId, FlowWindow)>>,
    /// Per hop and member: frames sent before this send index were read
    /// (see [`SffConfig::vnf_silence_needs_read`]).
    read_upto: Vec<Vec<u64>>,
    /// Per hop and member port: frames the VNF has sent back, in all (the
    /// Failure Detector's evidence that a VNF with frames waiting works).
    heard: Vec<Vec<u64>>,
    /// Per hop: packets held until a checkpoint includes them.
    protected: Vec<bool>,
    /// Pool slots ingress leaves to VNF outputs: per hop, what its
    /// `buffer_tx` may hold plus what its VNF may answer to the frames in
    /// flight to it (twice the window: a VNF may emit more than one output
    /// per input).
    output_reserve: usize,
    /// An error that stops the thread (a port that could not be reopened).
    fatal: Option<SffError>,
    commands: mpsc::Receiver<Command>,
    /// MR-AA: the live members of the hop being served (reused).
    member_scratch: Vec<usize>,
    /// The catch-up turns of a hop's round, reused.
    turn_scratch: Vec<(usize, usize)>,
    /// Kernel receive drops last sampled: when, ingress, per hop and
    /// member port.
    drops: (std::time::Instant, u64, Vec<Vec<u64>>),
    /// Ports a request asked to flush (see [`Engine::flush_port`]), taken
    /// by [`Engine::commands_step`] into `flushing`.
    to_flush: Vec<(usize, String)>,
    /// Answers that wait until the ports named are flushed: the forwarding
    /// round goes on meanwhile.
    flushing: Vec<Flushing>,
}

/// An answer held back until its ports have sent what waits in their tx
/// rings (or are reopened at `deadline`).
struct Flushing {
    /// The ports, by hop and interface (a 1R-AA failover moves a port
    /// from the hop to its standby).
    ports: Vec<(usize, String)>,
    deadline: std::time::Instant,
    reply: mpsc::Sender<Response>,
    response: Response,
}

/// The window of a VNF restored from checkpoint `from`: what was in flight
/// to it when it was frozen for that checkpoint (see
/// `Engine::frozen_windows`), with `current`'s capacity; empty if that
/// checkpoint is not among the recent ones (or `from` is none: a fresh
/// start holds no work).
fn frozen_window(
    frozen: &std::collections::VecDeque<(CheckpointId, FlowWindow)>,
    from: Option<CheckpointId>,
    current: &FlowWindow,
) -> FlowWindow {
    let mut w = from
        .and_then(|id| frozen.iter().rev().find(|(c, _)| *c == id))
        .map_or_else(FlowWindow::default, |(_, w)| w.clone());
    if from.is_none() || w.is_empty() {
        w.clear();
    }
    w.carry_on(current);
    w
}

impl Engine {
    fn new(
        config: SffConfig,
        counters: Arc<SffCounters>,
        commands: mpsc::Receiver<Command>,
    ) -> Result<Self, SffError> {
        let need = config.pool_slots_needed();
        if config.pool_slots < need {
            return Err(SffError::PoolTooSmall {
                have: config.pool_slots,
                need,
                hops: config.hops.len(),
            });
        }
        let classifier = Classifier::new(config.rules.clone())?;
        let chain = if config.hops.is_empty() {
            None
        } else {
            Some(Chain::new(config.spi, config.hops.len(), config.hop)?)
        };
        let ingress = attach_ingress(&config.ingress, config.port, &xdp_rules(&config.rules))?;
        let egress = attach_filtered(&config.egress, config.port, &[])?;
        let hops = config
            .hops
            .iter()
            .enumerate()
            .map(|(i, h)| {
                std::iter::once(h)
                    .chain(config.members.get(i).into_iter().flatten())
                    .map(|spec| attach(spec, config.port).map(PortSlot::Open))
                    .collect::<Result<Vec<_>, _>>()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut chain = chain;
        if let Some(c) = chain.as_mut() {
            for (i, ports) in hops.iter().enumerate() {
                c.hop_mut(i).set_members(ports.len())?;
            }
        }
        let capacity = nham_dataplane::window::VnfCapacity {
            max_frames: config.vnf_capacity.max_frames.min(config.vnf_window),
            ..config.vnf_capacity
        };
        let in_flight = hops
            .iter()
            .map(|p| vec![FlowWindow::new(capacity); p.len()])
            .collect();
        let heard = hops.iter().map(|p| vec![0; p.len()]).collect();
        let read_upto = hops.iter().map(|p| vec![0; p.len()]).collect();
        let drops = (
            std::time::Instant::now(),
            0,
            hops.iter().map(|p| vec![0; p.len()]).collect(),
        );
        let standby = (0..config.hops.len())
            .map(|i| match config.standby.get(i).cloned().flatten() {
                Some(spec) => attach(&spec, config.port).map(|a| Some((spec, PortSlot::Open(a)))),
                None => Ok(None),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let burst = config.burst.max(1);
        let hops_len = config.hops.len();
        let output_reserve = ((config.hop.tx_capacity + 2 * config.vnf_window) * hops_len + burst)
            .min(config.pool_slots / 2);
        let protected = (0..hops_len)
            .map(|i| config.protect.get(i).copied().unwrap_or(false))
            .collect();
        Ok(Self {
            pool: Pool::new(config.pool_slots),
            prepared: None,
            config,
            counters,
            ingress,
            ingress_turn: 0,
            egress,
            hops,
            standby,
            output_reserve,
            classifier,
            chain,
            direct: std::collections::VecDeque::new(),
            next_seq: 0,
            scratch: Vec::with_capacity(burst),
            slots: Vec::with_capacity(burst),
            in_flight,
            frozen_windows: vec![std::collections::VecDeque::new(); hops_len],
            read_upto,
            heard,
            protected,
            fatal: None,
            commands,
            member_scratch: Vec::new(),
            turn_scratch: Vec::new(),
            drops,
            to_flush: Vec::new(),
            flushing: Vec::new(),
        })
    }

    /// Adds what the kernel dropped on the ingress and hop rings since the
    /// last sample to the counters (every 100 ms; a socket reopened or
    /// switched starts again from 0).
    fn sample_kernel_drops(&mut self, now: Instant) {
        if now.duration_since(self.drops.0) < Duration::from_millis(100) {
            return;
        }
        self.drops.0 = now;
        self.sample_passed();
        let delta = |last: &mut u64, current: u64| {
            let d = if current >= *last {
                current - *last
            } else {
                current
            };
            *last = current;
            d
        };
        let all: u64 = std::iter::once(&self.ingress.port)
            .chain(&self.ingress.queues)
            .map(Port::kernel_rx_drops)
            .sum();
        let ingress = delta(&mut self.drops.1, all);
        SffCounters::add(&self.counters.ingress_kernel_drops, ingress);
        for (i, ports) in self.hops.iter().enumerate() {
            for (k, member) in ports.iter().enumerate() {
                let Some(port) = member.port_ref() else {
                    continue;
                };
                let d = delta(&mut self.drops.2[i][k], port.kernel_rx_drops());
                if d > 0 {
                    tracing::error!(
                        hop = i,
                        member = k,
                        "the kernel dropped {d} outputs of the VNF: exactly-once is broken for this hop"
                    );
                }
                SffCounters::add(&self.counters.vnf_output_kernel_drops, d);
            }
        }
    }

    /// What the XDP programs of ingress and egress left to the kernel, and
    /// the ports' AF_XDP modes.
    fn sample_passed(&self) {
        let passed = [&self.ingress, &self.egress]
            .iter()
            .filter_map(|a| a.xdp.counters().ok())
            .map(|c| c.passed)
            .sum();
        self.counters
            .passed_to_kernel
            .store(passed, Ordering::Relaxed);
        let ports = [&self.ingress.port, &self.egress.port]
            .into_iter()
            .chain(&self.ingress.queues)
            .chain(self.hops.iter().flatten().filter_map(|p| p.port_ref()));
        let (mut zero, mut copy) = (0, 0);
        for p in ports {
            if p.zero_copy() {
                zero += 1;
            } else {
                copy += 1;
            }
        }
        self.counters.zero_copy_ports.store(zero, Ordering::Relaxed);
        self.counters.copy_ports.store(copy, Ordering::Relaxed);
    }

    fn run(&mut self, stop: &AtomicBool) {
        let mut idle = 0u32;
        while !stop.load(Ordering::Relaxed) && self.fatal.is_none() {
            // The one clock read of a round: every decision below is
            // given this `now`.
            let now = Instant::now();
            self.sample_kernel_drops(now);
            let work = self.step(now);
            if work > 0 {
                idle = 0;
            } else {
                idle = idle.saturating_add(1);
                if idle > self.config.poll.spin {
                    std::thread::sleep(self.config.poll.sleep);
                } else {
                    std::hint::spin_loop();
                }
            }
        }
        self.sample_passed();
    }

    /// [`Command::SetMembers`]: opens the ports of members added (nothing
    /// changes if one fails), resizes the hop's members, closes the ports of
    /// members removed; the flow windows and counters follow, and the pool
    /// grows by what the added members' outputs may take.
    fn set_members(
        &mut self,
        hop: usize,
        keep: usize,
        add: Vec<PortSpec>,
    ) -> Result<(), execute::Refusal> {
        let chain = self
            .chain
            .as_mut()
            .ok_or_else(|| execute::Refusal::Refused("the chain has no hops".into()))?;
        if self.config.members.len() <= hop {
            self.config.members.resize(hop + 1, Vec::new());
        }
        let now_members = self.config.members[hop].len();
        if keep > now_members || (!add.is_empty() && keep != now_members) {
            return Err(execute::Refusal::Refused(format!(
                "hop {hop} has {} members: keeping {keep} and adding {} is not a change of its count",
                now_members + 1,
                add.len()
            )));
        }
        let added = add
            .iter()
            .map(|spec| attach(spec, self.config.port).map(PortSlot::Open))
            .collect::<Result<Vec<_>, _>>()?;
        let m = keep + add.len() + 1;
        chain
            .hop_mut(hop)
            .resize_members(m)
            .map_err(|e| execute::Refusal::from(e).about(format!("hop {hop}")))?;
        let capacity = self.in_flight[hop][0].capacity();
        self.hops[hop].truncate(keep + 1);
        self.hops[hop].extend(added);
        self.in_flight[hop].resize(m, FlowWindow::new(capacity));
        self.read_upto[hop].resize(m, 0);
        self.heard[hop].resize(m, 0);
        self.drops.2[hop].resize(m, 0);
        let grown = add.len();
        self.config.members[hop].truncate(keep);
        self.config.members[hop].extend(add);
        if grown > 0 {
            let slots = 2 * self.config.vnf_window * grown;
            self.pool.grow(slots);
            self.config.pool_slots += slots;
        }
        Ok(())
    }

    /// MR-AA member `k` of hop `hop`, failed, comes back behind `spec`
    /// (see [`protocol::Request::ReplaceMember`]): the failed one's port
    /// is closed (what was on its way to it was flushed when it failed),
    /// `spec`'s opened in its place, and what the SFF knew of that socket
    /// forgotten.
    fn replace_member(
        &mut self,
        hop: usize,
        k: usize,
        spec: PortSpec,
    ) -> Result<(), execute::Refusal> {
        let chain = self
            .chain
            .as_ref()
            .ok_or_else(|| execute::Refusal::Refused("the chain has no hops".into()))?;
        let state = chain.hop(hop).member(k);
        if state != Some(nham_dataplane::hold::MemberState::Failed) {
            return Err(execute::Refusal::Refused(format!(
                "hop {hop}'s member {k} is {state:?}, not failed: its port stays"
            )));
        }
        // What is done by interface name (flushes waiting, a reopen) must
        // not land on the new port, nor end early for want of the old one.
        let old = self.port_spec(hop, k).iface.clone();
        let pending = self
            .flushing
            .iter()
            .any(|f| f.ports.iter().any(|(h, i)| *h == hop && *i == old))
            || self.to_flush.iter().any(|(h, i)| *h == hop && *i == old);
        if pending || matches!(self.hops[hop][k], PortSlot::Reopening(_)) {
            return Err(execute::Refusal::Busy(format!(
                "hop {hop}'s member {k}: its port {old} is still being flushed or reopened"
            )));
        }
        let taken = (self.config.hops.iter())
            .chain(self.config.members.iter().flatten())
            .chain(self.standby.iter().flatten().map(|(s, _)| s))
            .any(|s| s.iface == spec.iface);
        if taken {
            return Err(execute::Refusal::Refused(format!(
                "{} is a port of the chain already",
                spec.iface
            )));
        }
        let port = self.open_port(&spec)?;
        // (Its ring goes with its socket: counted, as a reopen counts it.)
        let left = self.hops[hop][k].port().map_or(0, |p| p.tx_outstanding());
        SffCounters::add(&self.counters.tx_discarded, left as u64);
        self.hops[hop][k] = PortSlot::Open(port);
        match k {
            0 => self.config.hops[hop] = spec,
            _ => self.config.members[hop][k - 1] = spec,
        }
        // The send count goes on (what the failure detector last read of
        // the old socket must not count as read of the new one).
        let mut window = FlowWindow::new(self.in_flight[hop][k].capacity());
        window.carry_on(&self.in_flight[hop][k]);
        self.in_flight[hop][k] = window;
        self.heard[hop][k] = 0;
        self.drops.2[hop][k] = 0;
        Ok(())
    }

    /// Carries out the control plane's commands (see [`execute`]); an
    /// answer that needs ports flushed first waits in `flushing` while the
    /// round goes on.
    fn commands_step(&mut self, now: Instant) -> usize {
        let mut n = 0;
        while let Ok(Command {
            request,
            reply,
            prepared,
        }) = self.commands.try_recv()
        {
            n += 1;
            self.prepared = prepared;
            let response = self.execute(request, now);
            // (One not taken closes here.)
            self.prepared = None;
            let ports = std::mem::take(&mut self.to_flush);
            if ports.is_empty() {
                let _ = reply.send(response);
            } else {
                self.flushing.push(Flushing {
                    ports,
                    deadline: now + FLUSH_TIMEOUT,
                    reply,
                    response,
                });
            }
        }
        n + self.reopen_step() + self.flushing_step(now)
    }

    /// The spec of member `k`'s port of hop `hop`.
    fn port_spec(&self, hop: usize, k: usize) -> &PortSpec {
        match k {
            0 => &self.config.hops[hop],
            _ => &self.config.members[hop][k - 1],
        }
    }
}

fn first_room(len: usize, capacity: usize) -> usize {
    capacity.saturating_sub(len)
}

/// A plain AF_XDP L2 forwarder (ingress to egress, frames copied as they
/// are): the baseline the SFF is measured against in the same run.
pub fn spawn_l2_forwarder(
    netns: Option<PathBuf>,
    ingress: PortSpec,
    egress: PortSpec,
    burst: usize,
    poll: PollPolicy,
    core: Option<usize>,
    port_config: PortConfig,
) -> Result<SffHandle, SffError> {
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(SffCounters::default());
    let (ready_tx, ready_rx) = mpsc::channel();
    let thread = {
        let (stop, counters) = (stop.clone(), counters.clone());
        std::thread::Builder::new()
            .name("nham-l2fwd".into())
            .spawn(move || -> Result<(), SffError> {
                let opened = (|| {
                    if let Some(path) = &netns {
                        enter_netns(path)?;
                    }
                    if let Some(core) = core {
                        core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    }
                    Ok::<_, SffError>((
                        attach(&ingress, port_config)?,
                        attach(&egress, port_config)?,
                    ))
                })();
                let (mut rx, mut tx) = match opened {
                    Ok(p) => {
                        let _ = ready_tx.send(Ok(()));
                        p
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.to_string()));
                        return Err(e);
                    }
                };
                let mut buf = vec![0u8; burst * SLOT];
                let mut lens = vec![0usize; burst];
                let mut idle = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    tx.port.reclaim();
                    let room = burst.min(tx.port.tx_room());
                    let mut k = 0;
                    let n = rx.port.recv_burst(room, |f| {
                        let len = f.len().min(SLOT);
                        buf[k * SLOT..k * SLOT + len].copy_from_slice(&f[..len]);
                        lens[k] = len;
                        k += 1;
                    });
                    if n > 0 {
                        let sent = tx.port.send_burst(n, |j, out| {
                            let len = lens[j].min(out.len());
                            out[..len].copy_from_slice(&buf[j * SLOT..j * SLOT + len]);
                            len
                        });
                        SffCounters::add(&counters.ingress, n as u64);
                        SffCounters::add(&counters.egress, sent as u64);
                        SffCounters::add(&counters.tx_refused, (n - sent) as u64);
                        idle = 0;
                    } else {
                        idle = idle.saturating_add(1);
                        if idle > poll.spin {
                            std::thread::sleep(poll.sleep);
                        }
                    }
                }
                Ok(())
            })
            .map_err(|_| SffError::StartFailed)?
    };
    await_ready(&ready_rx, stop, counters, thread, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(n: u8) -> PortSpec {
        PortSpec {
            iface: format!("p{n}"),
            ifindex: u32::from(n) + 1,
            mac: [2, 0, 0, 0, 0, n],
            peer_mac: [2, 0, 0, 0, 1, n],
        }
    }

    fn config(hops: usize, pool_slots: usize) -> SffConfig {
        SffConfig {
            ingress: port(100),
            egress: port(101),
            hops: (0..hops).map(|i| port(i as u8)).collect(),
            rules: Vec::new(),
            spi: 1,
            hop: HopConfig {
                rx_capacity: 4096,
                tx_capacity: 1024,
                ..HopConfig::default()
            },
            protect: Vec::new(),
            standby: Vec::new(),
            members: Vec::new(),
            pool_slots,
            burst: 32,
            poll: PollPolicy::default(),
            core: None,
            port: PortConfig::default(),
            vnf_window: 512,
            vnf_capacity: Default::default(),
            vnf_window_timeout: Duration::from_millis(2),
            vnf_silence_needs_read: false,
        }
    }

    #[test]
    fn the_pool_holds_what_every_hop_may_hold_at_once() {
        let c = config(8, 0);
        assert_eq!(c.pool_slots_needed(), 8 * (4096 + 1024 + 1024) + 64);
        // Refused before any port is opened: an empty pool would leave VNF
        // outputs on rings the kernel drops from.
        let need = c.pool_slots_needed();
        match spawn(None, config(8, need - 1)) {
            Err(SffError::PoolTooSmall {
                have,
                need: n,
                hops,
            }) => {
                assert_eq!((have, n, hops), (need - 1, need, 8));
            }
            other => panic!("want PoolTooSmall, got {other:?}"),
        }
    }
}
