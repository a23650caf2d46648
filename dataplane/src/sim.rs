//! An in-memory chain: deterministic stateful VNF models driven through the
//! Hold/Release core ([`crate::hold`]), with crashes, checkpoints and
//! restores injected as explicit operations.
//!
//! Everything the real system has between the SFF and a VNF is modelled:
//! the VNF's socket receive queue (`inbox`, lost when the process dies), an
//! input it has read and not finished (`in_hand`: a VNF frozen for a
//! checkpoint in the middle of an input keeps it in its image, and finishes
//! it after a restore, its outputs stamped with the epoch it was delivered
//! in), the
//! frames in flight from the VNF back to the SFF (`link`, which survive the
//! process and may arrive after it failed, until the restore drains them as
//! the SFF's `Restored` drains the port), process images (taken while the
//! VNF is quiesced, committed only when the core commits the checkpoint), the
//! gap between a crash and its detection, and a restore that can itself be
//! interrupted by another crash.
//!
//! [`reference`] computes what the chain must produce with no failure at all;
//! the model tests and `nham-bench model` compare a [`Sim`] run against it.
//! Operations that are impossible in the current state are no-ops, so any
//! sequence of [`Op`]s is a valid schedule.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::hold::{
    Advance, Chain, CheckpointId, CheckpointPhase, HoldError, HopConfig, HopState,
    OutputDisposition, ReleaseRule,
};

/// Errors of a simulation run.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SimError {
    /// The chain could not be built.
    #[error(transparent)]
    Hold(#[from] HoldError),
    /// The chain stopped making progress before all input reached the sink.
    #[error("chain stuck after {steps} steps: {detail}")]
    Stuck {
        /// Steps taken.
        steps: usize,
        /// What was left where.
        detail: String,
    },
}

/// A packet of the model: the NSH metadata a VNF copies (sequence number and
/// epoch) and an inner packet reduced to a flow id and a payload word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SimPacket {
    /// Per-chain sequence number.
    pub seq: u64,
    /// Epoch stamped at delivery.
    pub epoch: u32,
    /// Flow (stands for the 5-tuple).
    pub flow: u16,
    /// Payload; VNFs rewrite it from their state, so a state that diverged
    /// shows up in the output.
    pub payload: u64,
}

impl SimPacket {
    /// What the sink compares: everything but the epoch.
    pub fn content(&self) -> (u64, u16, u64) {
        (self.seq, self.flow, self.payload)
    }
}

/// The sample VNF behaviours. All are deterministic FIFO functions of their
/// input stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VnfKind {
    /// Per-flow packet counter; forwards every packet, payload mixed with
    /// the count.
    Monitor,
    /// Stateful firewall: drops a packet when its flow's state says so
    /// (about one in four); its effect on the state stays.
    Firewall,
    /// NAT with deterministic port allocation (first come, next port).
    Nat,
    /// Emits two packets for every third packet of a flow.
    Emitter,
}

impl VnfKind {
    /// All kinds, in a fixed order.
    pub const ALL: [VnfKind; 4] = [Self::Monitor, Self::Firewall, Self::Nat, Self::Emitter];
}

/// The full state of a VNF model.
#[derive(Debug, Clone, PartialEq, Eq, Default, Hash)]
pub struct VnfState {
    /// Packets seen per flow.
    pub per_flow: BTreeMap<u16, u64>,
    /// Digest of every payload seen, in order.
    pub digest: u64,
    /// NAT: port allocated per flow.
    pub ports: BTreeMap<u16, u16>,
}

fn mix(a: u64, b: u64) -> u64 {
    // splitmix64 finaliser over the combination: cheap and order-sensitive.
    let mut z = a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl VnfState {
    /// Applies one input and appends the outputs. Outputs keep the input's
    /// sequence number and epoch, as an NSH-aware VNF keeps the metadata.
    pub fn process(&mut self, kind: VnfKind, input: &SimPacket, out: &mut Vec<SimPacket>) {
        let count = {
            let c = self.per_flow.entry(input.flow).or_insert(0);
            *c += 1;
            *c
        };
        self.digest = mix(self.digest, input.payload);
        let with = |payload| SimPacket { payload, ..*input };
        match kind {
            VnfKind::Monitor => out.push(with(mix(input.payload, count))),
            VnfKind::Firewall => {
                let verdict = mix(input.payload, count ^ self.digest);
                if verdict % 4 != 0 {
                    out.push(with(mix(input.payload, verdict)));
                }
            }
            VnfKind::Nat => {
                let next = 1024 + self.ports.len() as u16;
                let port = *self.ports.entry(input.flow).or_insert(next);
                out.push(with(mix(input.payload, u64::from(port))));
            }
            VnfKind::Emitter => {
                out.push(with(mix(input.payload, 1)));
                if count % 3 == 0 {
                    out.push(with(mix(input.payload, 2)));
                }
            }
        }
    }
}

/// The failure-free run: every VNF applied in order to the whole input.
/// Returns the sink's expected output and each VNF's final state.
pub fn reference(kinds: &[VnfKind], input: &[SimPacket]) -> (Vec<SimPacket>, Vec<VnfState>) {
    let mut stream = input.to_vec();
    let mut states = Vec::with_capacity(kinds.len());
    for &kind in kinds {
        let mut state = VnfState::default();
        let mut next = Vec::with_capacity(stream.len() * 2);
        for p in &stream {
            state.process(kind, p, &mut next);
        }
        stream = next;
        states.push(state);
    }
    (stream, states)
}

/// Builds `n` input packets over `flows` flows from a seed.
pub fn make_input(n: usize, flows: u16, seed: u64) -> Vec<SimPacket> {
    (0..n as u64)
        .map(|i| SimPacket {
            seq: i,
            epoch: 0,
            flow: (mix(seed, i) % u64::from(flows.max(1))) as u16,
            payload: mix(seed ^ 0xA5A5, i),
        })
        .collect()
}

/// One step of a schedule. Hop indices wrap modulo the chain length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Classify the next input packet into the chain.
    Ingress,
    /// The SFF delivers hop `i`'s next packet to its VNF.
    Deliver(usize),
    /// VNF `i` finishes the input it has read, or else consumes one packet
    /// from its socket queue (reads and processes it). Not while it is
    /// frozen for a dump.
    Consume(usize),
    /// VNF `i` reads one packet from its socket queue and has not processed
    /// it yet (a checkpoint may freeze it now).
    Read(usize),
    /// One frame in flight from VNF `i` reaches the SFF.
    Arrive(usize),
    /// The SFF moves one output of hop `i` on (to the next hop or the sink).
    Advance(usize),
    /// Start a checkpoint of hop `i`.
    BeginCheckpoint(usize),
    /// Advance hop `i`'s checkpoint: quiesced -> dump, dumped -> store,
    /// stored -> commit.
    StepCheckpoint(usize),
    /// Hop `i`'s dump fails (storage error).
    FailCheckpoint(usize),
    /// Crash the VNFs whose bits are set (bit `i` for hop `i mod n`).
    Crash(u8),
    /// The failure detector notices that VNF `i` is gone.
    Detect(usize),
    /// A replacement process for VNF `i` starts (restore under way).
    BeginRestore(usize),
    /// The restore of VNF `i` finishes; it runs again.
    FinishRestore(usize),
    /// Time passes.
    Tick(u16),
}

/// Where a VNF process is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcState {
    /// Running.
    Alive,
    /// Crashed.
    Dead,
    /// Being restored.
    Restoring,
}

#[derive(Debug, Clone)]
struct VnfProc {
    kind: VnfKind,
    state: VnfState,
    proc: ProcState,
    detected: bool,
    inbox: VecDeque<SimPacket>,
    in_hand: Option<SimPacket>,
    link: VecDeque<SimPacket>,
    images: BTreeMap<CheckpointId, (VnfState, Option<SimPacket>)>,
    pending_image: Option<(CheckpointId, (VnfState, Option<SimPacket>))>,
    restore_from: Option<Option<CheckpointId>>,
    accepted_log: Vec<SimPacket>,
}

/// Sizing of a simulated chain.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The VNFs, in chain order.
    pub kinds: Vec<VnfKind>,
    /// Per-hop buffer sizing and release rule.
    pub hop: HopConfig,
    /// Capacity of a VNF's socket receive queue; the SFF never delivers more
    /// than this many unconsumed packets.
    pub inbox_capacity: usize,
}

/// Counters of a simulation run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SimStats {
    /// VNF crashes injected.
    pub crashes: u64,
    /// Crashes of a VNF whose restore was under way.
    pub crashes_during_recovery: u64,
    /// Crashes while the VNF's checkpoint was under way.
    pub crashes_during_checkpoint: u64,
    /// Crashes of several VNFs at once.
    pub simultaneous_crashes: u64,
    /// Checkpoints committed.
    pub checkpoints: u64,
    /// Recoveries completed.
    pub recoveries: u64,
    /// Packets delivered again after a restore.
    pub replayed: u64,
    /// Replayed outputs suppressed.
    pub duplicates_suppressed: u64,
    /// Stale outputs of failed incarnations discarded.
    pub stale_discarded: u64,
}

/// A chain of VNF models around the Hold/Release core.
#[derive(Debug, Clone)]
pub struct Sim {
    chain: Chain<SimPacket>,
    vnfs: Vec<VnfProc>,
    input: VecDeque<SimPacket>,
    sink: Vec<SimPacket>,
    inbox_capacity: usize,
    now: Instant,
    stats: SimStats,
    scratch: Vec<SimPacket>,
}

impl Sim {
    /// A chain of `config.kinds` with `input` waiting at the classifier.
    pub fn new(config: &SimConfig, input: Vec<SimPacket>) -> Result<Self, SimError> {
        let chain = Chain::new(1, config.kinds.len(), config.hop)?;
        let vnfs = config
            .kinds
            .iter()
            .map(|&kind| VnfProc {
                kind,
                state: VnfState::default(),
                proc: ProcState::Alive,
                detected: false,
                inbox: VecDeque::new(),
                in_hand: None,
                link: VecDeque::new(),
                images: BTreeMap::new(),
                pending_image: None,
                restore_from: None,
                accepted_log: Vec::new(),
            })
            .collect();
        Ok(Self {
            chain,
            vnfs,
            input: input.into(),
            sink: Vec::new(),
            inbox_capacity: config.inbox_capacity.max(1),
            now: Instant::now(),
            stats: SimStats::default(),
            scratch: Vec::new(),
        })
    }

    /// What reached the sink, in order.
    pub fn sink(&self) -> &[SimPacket] {
        &self.sink
    }

    /// The VNFs' live states (meaningful once every VNF is alive).
    pub fn vnf_states(&self) -> Vec<VnfState> {
        self.vnfs.iter().map(|v| v.state.clone()).collect()
    }

    /// Outputs hop `i` accepted into its `buffer_tx`, in order.
    pub fn accepted_log(&self, i: usize) -> &[SimPacket] {
        &self.vnfs[i].accepted_log
    }

    /// The chain core, for inspection.
    pub fn chain(&self) -> &Chain<SimPacket> {
        &self.chain
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Number of hops.
    pub fn len(&self) -> usize {
        self.vnfs.len()
    }

    /// Never true.
    pub fn is_empty(&self) -> bool {
        self.vnfs.is_empty()
    }

    /// Applies one operation; returns whether anything changed.
    pub fn apply(&mut self, op: Op) -> bool {
        let n = self.vnfs.len();
        match op {
            Op::Ingress => self.ingress(),
            Op::Deliver(i) => self.deliver(i % n),
            Op::Consume(i) => self.consume(i % n),
            Op::Read(i) => self.read(i % n),
            Op::Arrive(i) => self.arrive(i % n),
            Op::Advance(i) => self.advance(i % n),
            Op::BeginCheckpoint(i) => self.chain.hop_mut(i % n).begin_checkpoint(self.now).is_ok(),
            Op::StepCheckpoint(i) => self.step_checkpoint(i % n),
            Op::FailCheckpoint(i) => self.fail_checkpoint(i % n),
            Op::Crash(mask) => self.crash(mask),
            Op::Detect(i) => self.detect(i % n),
            Op::BeginRestore(i) => self.begin_restore(i % n),
            Op::FinishRestore(i) => self.finish_restore(i % n),
            Op::Tick(ms) => {
                self.now += Duration::from_millis(u64::from(ms));
                true
            }
        }
    }

    fn ingress(&mut self) -> bool {
        let Some(&next) = self.input.front() else {
            return false;
        };
        let ok = self
            .chain
            .try_ingress(|seq| SimPacket { seq, ..next })
            .is_ok();
        if ok {
            self.input.pop_front();
        }
        ok
    }

    fn deliver(&mut self, i: usize) -> bool {
        let vnf = &mut self.vnfs[i];
        if vnf.inbox.len() >= self.inbox_capacity {
            return false;
        }
        let Some(d) = self.chain.hop_mut(i).poll_delivery() else {
            return false;
        };
        if d.replay {
            self.stats.replayed += 1;
        }
        let packet = SimPacket {
            epoch: d.epoch,
            ..*d.packet
        };
        // A crashed, undetected VNF: the frame goes nowhere, but it is still
        // held in buffer_rx and will be replayed.
        if vnf.proc == ProcState::Alive {
            vnf.inbox.push_back(packet);
        }
        true
    }

    /// Whether VNF `i` is frozen for a dump (it runs no code).
    fn frozen(&self, i: usize) -> bool {
        matches!(
            self.chain.hop(i).checkpoint_phase(),
            CheckpointPhase::Dumping { .. }
        ) && self.vnfs[i].pending_image.is_some()
    }

    fn read(&mut self, i: usize) -> bool {
        if self.frozen(i) {
            return false;
        }
        let vnf = &mut self.vnfs[i];
        if vnf.proc != ProcState::Alive || vnf.in_hand.is_some() {
            return false;
        }
        vnf.in_hand = vnf.inbox.pop_front();
        vnf.in_hand.is_some()
    }

    fn consume(&mut self, i: usize) -> bool {
        if self.frozen(i) {
            return false;
        }
        let vnf = &mut self.vnfs[i];
        if vnf.proc != ProcState::Alive {
            return false;
        }
        let Some(p) = vnf.in_hand.take().or_else(|| vnf.inbox.pop_front()) else {
            return false;
        };
        self.scratch.clear();
        vnf.state.process(vnf.kind, &p, &mut self.scratch);
        vnf.link.extend(self.scratch.drain(..));
        true
    }

    fn arrive(&mut self, i: usize) -> bool {
        let Some(p) = self.vnfs[i].link.pop_front() else {
            return false;
        };
        match self.chain.hop_mut(i).handle_output(p.epoch, p.seq, p) {
            OutputDisposition::Accepted => self.vnfs[i].accepted_log.push(p),
            OutputDisposition::Duplicate | OutputDisposition::Divergent => {
                self.stats.duplicates_suppressed += 1
            }
            OutputDisposition::Stale => self.stats.stale_discarded += 1,
        }
        true
    }

    fn advance(&mut self, i: usize) -> bool {
        if i + 1 < self.vnfs.len() {
            self.chain.poll_advance(i) == Advance::Moved
        } else if let Some((_, p)) = self.chain.poll_egress() {
            self.sink.push(p);
            true
        } else {
            false
        }
    }

    fn step_checkpoint(&mut self, i: usize) -> bool {
        let vnf = &mut self.vnfs[i];
        let hop = self.chain.hop_mut(i);
        match hop.checkpoint_phase() {
            CheckpointPhase::Idle => false,
            // A dump of a process that is gone fails; the controller reports it.
            CheckpointPhase::Draining { id, .. } | CheckpointPhase::Dumping { id, .. }
                if vnf.proc != ProcState::Alive =>
            {
                vnf.pending_image = None;
                hop.handle_checkpoint_failed(id).is_ok()
            }
            CheckpointPhase::Draining { id, .. } => {
                // Quiesced: consumed all it was given, all outputs arrived.
                if !vnf.inbox.is_empty() || !vnf.link.is_empty() {
                    return false;
                }
                hop.handle_quiesced(id)
                    .expect("draining checkpoint accepts quiesced");
                vnf.pending_image = Some((id, (vnf.state.clone(), vnf.in_hand)));
                true
            }
            // The dump is taken and the VNF thawed; the image is stored
            // while traffic flows again (and the VNF may crash meanwhile).
            CheckpointPhase::Dumping { id, .. } => {
                if vnf.pending_image.as_ref().map(|(k, _)| *k) != Some(id) {
                    return false;
                }
                hop.handle_dumped(id)
                    .expect("dumping checkpoint accepts dumped");
                true
            }
            CheckpointPhase::Storing { id, .. } => {
                let Some((image_id, image)) = vnf.pending_image.take() else {
                    return false;
                };
                if image_id != id {
                    return false;
                }
                hop.handle_checkpoint_complete(id, self.now)
                    .expect("dumping checkpoint accepts completion");
                vnf.images.insert(id, image);
                // Keep the restore point and nothing older.
                vnf.images.retain(|&k, _| k >= id);
                self.stats.checkpoints += 1;
                true
            }
        }
    }

    fn fail_checkpoint(&mut self, i: usize) -> bool {
        let hop = self.chain.hop_mut(i);
        match hop.checkpoint_phase().id() {
            Some(id) => {
                self.vnfs[i].pending_image = None;
                hop.handle_checkpoint_failed(id).is_ok()
            }
            None => false,
        }
    }

    fn crash(&mut self, mask: u8) -> bool {
        let n = self.vnfs.len();
        let targets: Vec<usize> = (0..8)
            .filter(|b| mask & (1 << b) != 0)
            .map(|b| b % n)
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut crashed = 0;
        for i in targets {
            let vnf = &mut self.vnfs[i];
            if vnf.proc == ProcState::Dead {
                continue;
            }
            if vnf.proc == ProcState::Restoring {
                self.stats.crashes_during_recovery += 1;
            }
            if !matches!(self.chain.hop(i).checkpoint_phase(), CheckpointPhase::Idle) {
                self.stats.crashes_during_checkpoint += 1;
            }
            vnf.proc = ProcState::Dead;
            vnf.detected = false;
            vnf.inbox.clear();
            vnf.in_hand = None;
            // The process's memory is gone; scribble over it so that a bug
            // which resumes it without a restore cannot go unnoticed.
            vnf.state.digest = mix(vnf.state.digest, 0xDEAD);
            vnf.pending_image = None;
            crashed += 1;
        }
        self.stats.crashes += crashed;
        if crashed > 1 {
            self.stats.simultaneous_crashes += 1;
        }
        crashed > 0
    }

    fn detect(&mut self, i: usize) -> bool {
        let vnf = &mut self.vnfs[i];
        if vnf.proc != ProcState::Dead || vnf.detected {
            return false;
        }
        vnf.detected = true;
        let plan = self.chain.hop_mut(i).handle_failure(self.now);
        vnf.restore_from = Some(plan.checkpoint);
        true
    }

    fn begin_restore(&mut self, i: usize) -> bool {
        let vnf = &mut self.vnfs[i];
        if vnf.proc != ProcState::Dead || !vnf.detected {
            return false;
        }
        vnf.proc = ProcState::Restoring;
        true
    }

    fn finish_restore(&mut self, i: usize) -> bool {
        let vnf = &mut self.vnfs[i];
        if vnf.proc != ProcState::Restoring {
            return false;
        }
        let from = vnf
            .restore_from
            .take()
            .expect("a detected failure has a plan");
        (vnf.state, vnf.in_hand) = match from {
            Some(id) => vnf.images.get(&id).cloned().expect("committed image kept"),
            None => (VnfState::default(), None),
        };
        vnf.proc = ProcState::Alive;
        // The SFF's `Restored` drains the VNF's port before the restored
        // VNF runs: whatever the failed incarnation sent is discarded there
        // (stale: the hop still recovers), so none of it can pass for the
        // restored incarnation's answer to the input its image was frozen
        // in, which looks the same. (This holds in the real system as long
        // as a frame a process sent is on the SFF's port by the time its
        // recovery ends: veth delivers it in the sender's context or the
        // next softirq; a restore takes milliseconds.)
        for p in vnf.link.drain(..) {
            let d = self.chain.hop_mut(i).handle_output(p.epoch, p.seq, p);
            debug_assert_eq!(d, OutputDisposition::Stale);
            self.stats.stale_discarded += 1;
        }
        self.chain
            .hop_mut(i)
            .handle_restored(self.now)
            .expect("detected failure leaves the hop recovering");
        self.stats.recoveries += 1;
        true
    }

    fn done(&self) -> bool {
        self.input.is_empty()
            && self.vnfs.iter().all(|v| {
                v.proc == ProcState::Alive
                    && v.inbox.is_empty()
                    && v.in_hand.is_none()
                    && v.link.is_empty()
            })
            && self
                .chain
                .hops()
                .iter()
                .all(|h| h.rx().pending() == 0 && h.tx().is_empty())
    }

    /// Heals every VNF and runs the chain until all input has reached the
    /// sink, checkpointing when held packets block progress. Takes no more
    /// failures.
    pub fn run_to_completion(&mut self) -> Result<(), SimError> {
        let n = self.vnfs.len();
        let limit = 64 * (self.input.len() + 64) * (n + 1) * 4;
        let mut steps = 0;
        // Finish or abandon checkpoints in flight, then heal.
        for i in 0..n {
            while self.step_checkpoint(i) {}
            if !matches!(self.chain.hop(i).checkpoint_phase(), CheckpointPhase::Idle) {
                // Still draining: let the VNF drain first below.
            }
            self.detect(i);
            self.begin_restore(i);
            self.finish_restore(i);
        }
        while !self.done() {
            steps += 1;
            if steps > limit {
                return Err(SimError::Stuck {
                    steps,
                    detail: self.describe(),
                });
            }
            let mut progress = false;
            progress |= self.ingress();
            for i in 0..n {
                progress |= self.deliver(i);
                progress |= self.consume(i);
                progress |= self.arrive(i);
                progress |= self.advance(i);
                progress |= self.step_checkpoint(i);
            }
            if !progress {
                // Held packets fill buffer_rx: checkpoint everything.
                let mut began = false;
                for i in 0..n {
                    began |= self.chain.hop_mut(i).begin_checkpoint(self.now).is_ok();
                }
                if !began {
                    return Err(SimError::Stuck {
                        steps,
                        detail: self.describe(),
                    });
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        let hops: Vec<String> = self
            .chain
            .hops()
            .iter()
            .zip(&self.vnfs)
            .enumerate()
            .map(|(i, (h, v))| {
                format!(
                    "hop {i}: {:?} {:?} rx {}/{} held tx {} inbox {} link {} {:?}",
                    match h.state() {
                        HopState::Running => "running",
                        HopState::Recovering { .. } => "recovering",
                    },
                    h.checkpoint_phase(),
                    h.rx().len(),
                    h.rx().held(),
                    h.tx().len(),
                    v.inbox.len(),
                    v.link.len(),
                    v.proc
                )
            })
            .collect();
        format!("input left {}; {}", self.input.len(), hops.join("; "))
    }
}

/// Outcome of comparing a run with the failure-free reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Expected packets that never reached the sink.
    pub lost: usize,
    /// Packets that reached the sink more than once.
    pub duplicated: usize,
    /// Packets out of order or with the wrong content.
    pub wrong: usize,
    /// VNFs whose final state differs from the failure-free state.
    pub state_mismatches: Vec<usize>,
}

impl Verdict {
    /// True when the run was exactly-once with equal states.
    pub fn is_exact(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.wrong == 0
            && self.state_mismatches.is_empty()
    }
}

/// Compares a finished run with the reference for the same input.
pub fn verdict(sim: &Sim, expected: &[SimPacket], expected_states: &[VnfState]) -> Verdict {
    let got: Vec<_> = sim.sink().iter().map(SimPacket::content).collect();
    let want: Vec<_> = expected.iter().map(SimPacket::content).collect();
    let mut counts: BTreeMap<(u64, u16, u64), i64> = BTreeMap::new();
    for w in &want {
        *counts.entry(*w).or_default() += 1;
    }
    for g in &got {
        *counts.entry(*g).or_default() -= 1;
    }
    let lost = counts
        .values()
        .filter(|&&c| c > 0)
        .map(|&c| c as usize)
        .sum();
    let extra: usize = counts
        .values()
        .filter(|&&c| c < 0)
        .map(|&c| (-c) as usize)
        .sum();
    let wrong = got.iter().zip(&want).filter(|(g, w)| g != w).count();
    let state_mismatches = sim
        .vnf_states()
        .iter()
        .zip(expected_states)
        .enumerate()
        .filter(|(_, (a, b))| a != b)
        .map(|(i, _)| i)
        .collect();
    Verdict {
        lost,
        duplicated: extra,
        wrong,
        state_mismatches,
    }
}

/// A hop configuration with small buffers, so that backpressure happens.
pub fn small_hop_config(rule: ReleaseRule) -> HopConfig {
    HopConfig {
        rx_capacity: 16,
        tx_capacity: 4,
        release_rule: rule,
        keep_fallback: false,
    }
}
