//! The gRPC services of `nhamd` over one registry of chains.
//!
//! Chain creation and deletion run on blocking threads (namespaces, links,
//! processes). A watcher task per VNF process waits on its pidfd and, when
//! the process exits, records the failure and emits `FailureDetected`; then
//! the Failure Recovery brings the VNF back: a protected VNF (0R, 1R-AS,
//! 1R-AA, MR-AA) through its agent on a blocking thread of its own (so
//! several failed VNFs recover in parallel), a `MECHANISM_NONE` VNF by
//! starting it again without state. MR-AA members other than member 0 have
//! watchers of their own: their failure stops nothing; the member is
//! restored and catches up. A checkpoint task per protected VNF runs the
//! checkpoint protocol every interval; the image is stored without the
//! agent lock, so a failure meanwhile is recovered at once.
//!
//! Locking: the registry lock is never held across a checkpoint or a
//! recovery; those hold only their VNF's agent lock.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, Mutex};

use crate::api;
use crate::error::ControlError;
use crate::protect::RecoveryStats;
use crate::runtime::{
    tear_down_record, Agent, ChainRecord, ChainRuntime, SffOptions, StateOptions,
};

/// What the detector probes: VNF name, MR-AA member (0: the VNF's own
/// process), incarnation, pid, the SFF's end of its link, its namespace.
type ProbeTarget = (String, usize, u64, u32, String, std::path::PathBuf);

/// What [`Daemon::restore_chains`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreReport {
    /// Chains re-attached to (SFF and packets kept).
    pub attached: usize,
    /// Chains started afresh (their SFF was gone).
    pub restarted: usize,
    /// Chains that could not be started.
    pub failed: usize,
    /// VNFs found dead and being recovered.
    pub recovering: usize,
    /// Namespaces no chain claimed, deleted.
    pub swept: usize,
}
use crate::validate;

mod mechanism;
mod requests;
pub use mechanism::{plan as mechanism_plan, Protection, Step};
pub use requests::{Fault, Healed, HEAL_TIMEOUT};

struct Entry {
    spec: api::ChainSpec,
    runtime: ChainRuntime,
    /// Frames the kernel dropped at its VNFs' full sockets (each drop
    /// repaired by a recovery).
    input_dropped: u64,
}

/// The daemon's state, shared by the services.
pub struct Daemon {
    chains: Mutex<BTreeMap<String, Entry>>,
    events: broadcast::Sender<api::WatchEventsResponse>,
    next_id: std::sync::atomic::AtomicU32,
    sff: SffOptions,
    state: StateOptions,
    records: RecordWriter,
    /// Turns for checkpoints ([`StateOptions::checkpoint_concurrency`]).
    checkpoint_turns: Arc<tokio::sync::Semaphore>,
    /// The kernel's word of a VNF's exit, before its pidfd's.
    early: crate::exits::EarlyExits,
    /// Chains being started, not in the registry yet: name, ingress,
    /// egress, SPI (what a new chain must not share).
    starting: std::sync::Mutex<BTreeMap<String, (String, String, u32)>>,
    /// VNFs whose mechanism is being changed (one change at a time).
    changing: std::sync::Mutex<std::collections::BTreeSet<(String, String)>>,
    /// How each VNF's last recovery ended, for heals that wait on it.
    outcomes: std::sync::Mutex<BTreeMap<(String, String), tokio::sync::watch::Sender<Outcome>>>,
}

/// How a VNF's last recovery ended: what a `HealVnf` waits on (never a
/// sleep loop).
#[derive(Debug, Clone)]
struct Outcome {
    /// Recoveries finished (each bumps it).
    finished: u64,
    /// The last one's result.
    result: Result<(), Arc<ControlError>>,
    /// A heal has killed the VNF (or started its recovery again) and its
    /// recovery has not finished yet: a second heal joins it.
    healing: bool,
}

/// A change to the chain records in the state database.
enum RecordOp {
    /// Write the chain's spec and runtime record.
    Put {
        name: String,
        spec: Option<Vec<u8>>,
        record: Option<Vec<u8>>,
    },
    /// Forget the chain: spec, record, checkpoints.
    Remove { name: String },
}

/// Writes chain records in the order they were made, off the registry lock
/// (each write is a durable database commit), on one thread of its own.
struct RecordWriter {
    ops: std::sync::Mutex<std::sync::mpsc::Sender<(RecordOp, Option<std::sync::mpsc::Sender<()>>)>>,
}

impl RecordWriter {
    fn new(store: Arc<crate::store::Store>) -> Self {
        let (tx, rx) =
            std::sync::mpsc::channel::<(RecordOp, Option<std::sync::mpsc::Sender<()>>)>();
        std::thread::Builder::new()
            .name("nhamd-records".into())
            .spawn(move || {
                for (op, ack) in rx {
                    let r = match &op {
                        RecordOp::Put { name, spec, record } => spec
                            .as_ref()
                            .map_or(Ok(()), |s| store.put_chain(name, s))
                            .and_then(|()| {
                                record
                                    .as_ref()
                                    .map_or(Ok(()), |r| store.put_runtime(name, r))
                            }),
                        RecordOp::Remove { name } => store.remove_chain(name),
                    };
                    if let Err(e) = r {
                        tracing::warn!("recording chains in the state database: {e}");
                    }
                    if let Some(a) = ack {
                        let _ = a.send(());
                    }
                }
            })
            // Without its thread, records are not written (each put
            // says so); the chains run on.
            .map_err(|e| tracing::error!("no thread for chain records: {e}"))
            .ok();
        Self {
            ops: std::sync::Mutex::new(tx),
        }
    }

    fn send(&self, op: RecordOp) -> std::sync::mpsc::Receiver<()> {
        let (ack, done) = std::sync::mpsc::channel();
        let sent = self
            .ops
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send((op, Some(ack)));
        if sent.is_err() {
            tracing::error!("a chain record is not written: the record writer is gone");
        }
        done
    }

    /// Records `runtime` (and `spec`, when it changed).
    fn put(
        &self,
        runtime: &ChainRuntime,
        spec: Option<&api::ChainSpec>,
    ) -> std::sync::mpsc::Receiver<()> {
        use prost::Message;
        self.send(RecordOp::Put {
            name: runtime.plan.name.clone(),
            spec: spec.map(Message::encode_to_vec),
            record: runtime.record().and_then(|r| serde_json::to_vec(&r).ok()),
        })
    }
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").finish_non_exhaustive()
    }
}

/// Whether the SFF's end `iface` of a VNF's link has carrier (true when
/// the kernel cannot say). Safe to call from async code: the netlink query
/// runs on a thread of its own.
fn has_carrier(iface: &str) -> bool {
    let iface = iface.to_string();
    std::thread::spawn(move || nham_netns::has_carrier(&iface).unwrap_or(true))
        .join()
        .unwrap_or(true)
}

/// A VNF's exit: when it happened (the kernel's word, or the pidfd's
/// moment without the exit watch) and when the daemon knew.
#[derive(Debug, Clone, Copy)]
struct Exited {
    exited: Instant,
    noticed: Instant,
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The event of a detected failure: `cause`, and the time from the fault
/// (injected at `fault_at`, or the exit the kernel reported at `exited`)
/// to `noticed`, when the daemon knew. (Without the exit watch an exit is
/// known only when its pidfd says so: `exited` is then that moment, and a
/// failure not injected shows 0.)
fn failure_detected(
    chain: &str,
    vnf: &str,
    cause: String,
    fault_at: Option<Instant>,
    exited: Instant,
    noticed: Instant,
) -> api::WatchEventsResponse {
    let detection_ms = noticed
        .saturating_duration_since(fault_at.unwrap_or(exited).min(exited))
        .as_secs_f64()
        * 1e3;
    event(
        chain,
        vnf,
        api::watch_events_response::Event::FailureDetected(api::FailureDetected {
            cause,
            detection_ms,
        }),
    )
}

/// The event of a finished recovery: `r` done, `took` from detection to
/// the chain (or member) running again.
fn recovery_finished(
    chain: &str,
    vnf: &str,
    r: RecoveryStats,
    took: Duration,
) -> api::WatchEventsResponse {
    event(
        chain,
        vnf,
        api::watch_events_response::Event::RecoveryFinished(api::RecoveryFinished {
            recovery_ms: took.as_secs_f64() * 1e3,
            replayed: r.replay,
            restored: r.restored,
            checkpoint_id: r.checkpoint.unwrap_or(0),
            fallback_reason: r.fallback_reason.unwrap_or_default(),
            switched: r.switched,
        }),
    )
}

fn event(chain: &str, vnf: &str, e: api::watch_events_response::Event) -> api::WatchEventsResponse {
    api::WatchEventsResponse {
        time_unix_nanos: now_nanos(),
        chain: chain.to_string(),
        vnf: vnf.to_string(),
        event: Some(e),
    }
}

impl Daemon {
    /// A daemon with no chains.
    pub fn new(sff: SffOptions, state: StateOptions) -> Arc<Self> {
        let (events, _) = broadcast::channel(4096);
        Arc::new(Self {
            chains: Mutex::new(BTreeMap::new()),
            events,
            next_id: std::sync::atomic::AtomicU32::new(1),
            sff,
            records: RecordWriter::new(state.store.clone()),
            checkpoint_turns: Arc::new(tokio::sync::Semaphore::new(
                state.checkpoint_concurrency.max(1),
            )),
            state,
            early: crate::exits::EarlyExits::start(),
            starting: std::sync::Mutex::default(),
            outcomes: std::sync::Mutex::default(),
            changing: std::sync::Mutex::default(),
        })
    }

    /// The outcome of VNF `vnf` of `chain`'s recoveries, to wait on.
    fn outcome(&self, chain: &str, vnf: &str) -> tokio::sync::watch::Receiver<Outcome> {
        let mut outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        outcomes
            .entry((chain.to_string(), vnf.to_string()))
            .or_insert_with(|| {
                tokio::sync::watch::channel(Outcome {
                    finished: 0,
                    result: Ok(()),
                    healing: false,
                })
                .0
            })
            .subscribe()
    }

    /// A heal has started VNF `vnf` of `chain`'s recovery.
    fn mark_healing(&self, chain: &str, vnf: &str) {
        let outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = outcomes.get(&(chain.to_string(), vnf.to_string())) {
            tx.send_modify(|o| o.healing = true);
        }
    }

    /// VNF `vnf` of `chain`'s recovery has finished with `result`.
    fn settle(&self, chain: &str, vnf: &str, result: Result<(), Arc<ControlError>>) {
        let outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = outcomes.get(&(chain.to_string(), vnf.to_string())) {
            tx.send_modify(|o| {
                o.finished += 1;
                o.result = result;
                o.healing = false;
            });
        }
    }

    fn emit(&self, e: api::WatchEventsResponse) {
        let _ = self.events.send(e);
    }

    /// Watches VNF `vnf` of `chain` (incarnation `incarnation`) through its
    /// pidfd.
    fn watch(self: &Arc<Self>, chain: String, vnf: String, incarnation: u64, pidfd: OwnedFd) {
        self.watch_member(chain, vnf, 0, incarnation, pidfd);
    }

    /// Watches MR-AA member `member` of VNF `vnf` (0: the VNF's own
    /// process, as [`watch`](Self::watch)).
    fn watch_member(
        self: &Arc<Self>,
        chain: String,
        vnf: String,
        member: usize,
        incarnation: u64,
        pidfd: OwnedFd,
    ) {
        let daemon = self.clone();
        let pid = crate::exits::pid_of(&pidfd);
        let early = pid.and_then(|p| self.early.watch(p));
        tokio::spawn(async move {
            // A pidfd becomes readable when the process exits; the exit
            // watch (BPF) says so earlier, before its sockets are released.
            // Wait for either on a blocking thread (the safe way to poll a
            // raw fd here).
            let exited = tokio::task::spawn_blocking(move || loop {
                let mut fds = vec![rustix::event::PollFd::new(
                    &pidfd,
                    rustix::event::PollFlags::IN,
                )];
                if let Some(e) = &early {
                    fds.push(rustix::event::PollFd::new(
                        e.as_ref(),
                        rustix::event::PollFlags::IN,
                    ));
                }
                match rustix::event::poll(&mut fds, None) {
                    Ok(n) if n > 0 => {
                        let pidfd_ready = !fds[0].revents().is_empty();
                        drop(fds);
                        // When it exited (the kernel's word, else now),
                        // and when we knew.
                        let now = Instant::now();
                        let (exited, noticed) =
                            early.as_ref().and_then(|e| e.at()).unwrap_or((now, now));
                        let reap = move || {
                            // Reap it, waiting if need be: a VNF killed
                            // while CRIU had it seized stays a zombie of
                            // CRIU's until the failed dump lets go of it.
                            crate::runtime::reap(&pidfd);
                        };
                        if pidfd_ready {
                            reap();
                        } else {
                            // Recovery goes on while the exit finishes
                            // (its sockets' release): nothing it does needs
                            // the old process gone.
                            std::thread::spawn(reap);
                        }
                        return Some(Exited { exited, noticed });
                    }
                    Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => return None,
                }
            })
            .await;
            if let Some(p) = pid {
                daemon.early.forget(p);
            }
            match exited {
                Ok(Some(e)) if member == 0 => {
                    daemon.on_exit(&chain, &vnf, incarnation, e).await;
                }
                Ok(Some(e)) => {
                    daemon
                        .on_member_exit(&chain, &vnf, member, incarnation, e)
                        .await;
                }
                _ => {}
            }
        });
    }

    /// Watches the MR-AA members a chain started with.
    fn watch_members(self: &Arc<Self>, runtime: &mut ChainRuntime) {
        for (hop, k, fd) in std::mem::take(&mut runtime.member_pidfds) {
            let v = &runtime.vnfs[hop];
            let inc = v.members[k - 1].incarnation;
            self.watch_member(runtime.plan.name.clone(), v.plan.name.clone(), k, inc, fd);
        }
    }

    /// MR-AA member `k` (1 or more) of VNF `vnf` exited: the chain goes on
    /// with the others; the member is restored and catches up.
    async fn on_member_exit(
        self: &Arc<Self>,
        chain: &str,
        vnf: &str,
        k: usize,
        incarnation: u64,
        e: Exited,
    ) {
        use api::watch_events_response::Event;
        let (agent, sff, detected) = {
            let mut chains = self.chains.lock().await;
            let Some(entry) = chains.get_mut(chain) else {
                return;
            };
            let sff = entry.runtime.sff.clone();
            let Ok(v) = entry.runtime.vnf_mut(vnf) else {
                return;
            };
            let (judged, fault_at) = match v.members.get_mut(k - 1) {
                Some(m) if m.incarnation == incarnation => {
                    m.pid = None;
                    // A member that exited on its own when its link went
                    // down is restored behind the same link: bring it up.
                    if m.judged.is_none() && !has_carrier(&m.sff_iface) {
                        if let Err(e) = m
                            .netns
                            .run(|| nham_netns::set_up(crate::runtime::VNF_IFACE))
                            .and_then(|r| r)
                        {
                            tracing::error!(chain, vnf, "bringing member {k}'s link up: {e}");
                        }
                    }
                    (m.judged.take(), m.fault_at.take())
                }
                _ => return,
            };
            v.failures += 1;
            // A hang or cut-off the detector judged was detected then.
            let (cause, detected, noticed) = match judged {
                Some((verdict, at)) => (format!("MR-AA member {k}: {}", verdict.cause()), at, at),
                None => (format!("MR-AA member {k} exited"), e.exited, e.noticed),
            };
            self.emit(failure_detected(
                chain, vnf, cause, fault_at, detected, noticed,
            ));
            self.emit(event(
                chain,
                vnf,
                Event::RecoveryStarted(api::RecoveryStarted {}),
            ));
            match (v.agent.clone(), sff) {
                (Some(a), Some(s)) => (a, s, detected),
                _ => return,
            }
        };
        let recovered = tokio::task::spawn_blocking(move || {
            agent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .recover_member(&sff, k)
                .map(|r| {
                    let took = r.since(detected);
                    (r, took)
                })
        })
        .await
        .map_err(|_| ControlError::Panicked("recovery"))
        .and_then(|r| r.map_err(ControlError::from));
        let mut chains = self.chains.lock().await;
        let Some(v) = chains
            .get_mut(chain)
            .and_then(|e| e.runtime.vnf_mut(vnf).ok())
        else {
            return;
        };
        match recovered.and_then(|(r, took)| v.adopt_member(k, r.pid).map(|fd| (fd, r, took))) {
            Ok((pidfd, r, took)) => {
                v.recoveries += 1;
                let inc = v.members[k - 1].incarnation;
                self.emit(recovery_finished(chain, vnf, r, took));
                self.watch_member(chain.to_string(), vnf.to_string(), k, inc, pidfd);
                // The member's new pid, for a restarted daemon.
                if let Some(e) = chains.get(chain) {
                    drop(self.records.put(&e.runtime, None));
                }
            }
            Err(e) => {
                v.recovery_failures += 1;
                v.last_error = Some(format!("member {k}: {e}"));
                tracing::error!(chain, vnf, "recovery of MR-AA member {k} failed: {e}");
                self.emit(event(
                    chain,
                    vnf,
                    Event::RecoveryFailed(api::RecoveryFailed {
                        reason: format!("member {k}: {e}"),
                    }),
                ));
            }
        }
    }

    /// VNF `vnf` of `chain` exited (as the kernel's exit watch or, without
    /// it, its pidfd said).
    async fn on_exit(self: &Arc<Self>, chain: &str, vnf: &str, incarnation: u64, e: Exited) {
        let mut chains = self.chains.lock().await;
        let Some(entry) = chains.get_mut(chain) else {
            return;
        };
        let Ok(v) = entry.runtime.vnf_mut(vnf) else {
            return;
        };
        if v.incarnation != incarnation {
            return; // an old process, already replaced
        }
        v.pid = None;
        v.failures += 1;
        v.state = api::VnfState::Failed;
        // A hang or cut-off the detector judged (and killed the process for)
        // was detected then, not at the exit.
        let judged = v.judged.take();
        // Cut off, whether the detector judged it or the VNF exited on its
        // own when its link went down (ENETDOWN, a common reaction): its
        // link must come back before anything lands in its namespace.
        let cut_off = matches!(judged, Some((crate::detect::Verdict::CutOff, _)))
            || !has_carrier(&v.sff_iface);
        // Recovery is timed from the exit (or the judgement).
        let (cause, detected, noticed) = judged
            .map(|(verdict, at)| (verdict.cause(), at, at))
            .unwrap_or(("process exited", e.exited, e.noticed));
        self.emit(failure_detected(
            chain,
            vnf,
            cause.into(),
            v.fault_at.take(),
            detected,
            noticed,
        ));
        // A VNF restored in its own namespace waits until its link is up
        // (a few ms of netlink). Without that wait, 1R-AS lost one output
        // (discarded as stale, never regenerated) in 2 of about 16 runs of
        // the second-failure test; with it, 0 of 28. Not pinned down; the
        // suspicion is a frame sent to the dead process still queued in
        // the kernel when the restored socket binds. 1R-AA fails over to
        // another namespace: no wait, unless the link was cut.
        let settle = cut_off || v.plan.mechanism != api::Mechanism::Mechanism1rAa;
        self.recover(chains, chain, vnf, detected, settle).await;
    }

    /// Failure Recovery of VNF `vnf` of `chain` (failed, no process): by its
    /// mechanism, with the registry lock `chains` let go across the restore.
    /// `settle_link`: bring the VNF's link up and wait until the SFF's end
    /// is operationally up before the SFF flushes what it was sending the
    /// failed incarnation and the VNF is restored (a cut-off, a restore in
    /// the same namespace, or not known); otherwise go straight on.
    async fn recover(
        self: &Arc<Self>,
        mut chains: tokio::sync::MutexGuard<'_, BTreeMap<String, Entry>>,
        chain: &str,
        vnf: &str,
        detected: Instant,
        settle_link: bool,
    ) {
        use api::watch_events_response::Event;
        let Some(entry) = chains.get_mut(chain) else {
            return;
        };
        let sff = entry.runtime.sff.clone();
        let Ok(v) = entry.runtime.vnf_mut(vnf) else {
            return;
        };
        if v.pid.is_some() || v.state == api::VnfState::Recovering {
            return; // running, or already being recovered
        }
        self.emit(event(
            chain,
            vnf,
            Event::RecoveryStarted(api::RecoveryStarted {}),
        ));
        v.state = api::VnfState::Recovering;
        if settle_link {
            if let Err(e) = v.reconnect() {
                tracing::error!(chain, vnf, "bringing its link up: {e}");
            }
        }
        let (agent, sff) = match (v.agent.clone(), sff) {
            (Some(a), Some(s)) => (a, s),
            _ => {
                // MECHANISM_NONE: start it again, without state. The start
                // waits until it listens (seconds, for some VNFs): not
                // under the registry, which every chain's failure handling
                // needs.
                let spawn = v.spawn_here();
                drop(chains);
                let started = tokio::task::spawn_blocking(move || spawn.run())
                    .await
                    .map_err(|_| ControlError::Panicked("start"))
                    .and_then(|r| r);
                let mut chains = self.chains.lock().await;
                let adopted = started.and_then(|pid| {
                    let v = chains
                        .get_mut(chain)
                        .and_then(|e| e.runtime.vnf_mut(vnf).ok());
                    match v {
                        Some(v) => v.adopt(pid),
                        None => {
                            // The chain went meanwhile: so does the process.
                            crate::runtime::kill_and_reap(pid);
                            Err(ControlError::NotFound(format!("chain {chain:?} is gone")))
                        }
                    }
                });
                self.finish_recovery(
                    &mut chains,
                    chain,
                    vnf,
                    adopted.map(|fd| (fd, RecoveryStats::default(), detected.elapsed())),
                );
                return;
            }
        };
        let sff_iface = v.sff_iface.clone();
        // A failover never lands in a namespace whose link is down: check
        // the replica's, repair it, then switch.
        let replica_iface = match &v.replica {
            Some(r) if !has_carrier(&r.sff_iface) => {
                tracing::warn!(
                    chain,
                    vnf,
                    "the replica's link is down: bringing it up before failing over"
                );
                match r
                    .netns
                    .run(|| nham_netns::set_up(crate::runtime::VNF_IFACE))
                {
                    Ok(Ok(())) => Some(r.sff_iface.clone()),
                    Ok(Err(e)) | Err(e) => {
                        tracing::error!(chain, vnf, "bringing the replica's link up: {e}");
                        None
                    }
                }
            }
            _ => None,
        };
        drop(chains);
        let agent_vnf = vnf.to_string();
        // The agent lock waits for a checkpoint under way to fail (its VNF is
        // gone); the registry stays free meanwhile.
        let recovered = tokio::task::spawn_blocking(move || {
            // After a cut-off the link transmits again only once the kernel's
            // link watcher has seen the carrier back (up to a second): wait,
            // so the SFF can flush what the failed incarnation was sent.
            let deadline = Instant::now() + Duration::from_secs(2);
            let down = |iface: &str| !nham_netns::is_oper_up(iface).unwrap_or(true);
            while ((settle_link && down(&sff_iface)) || replica_iface.as_deref().is_some_and(down))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            tracing::debug!(vnf = agent_vnf, "recovery: taking the agent");
            let mut a = agent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            tracing::debug!(vnf = agent_vnf, "recovery: agent taken");
            let r = a.recover(&sff);
            drop(a);
            // Detection to the VNF running again (the SFF replaying), not
            // the bookkeeping after.
            r.map(|r| {
                let took = r.since(detected);
                (r, took)
            })
        })
        .await
        .map_err(|_| ControlError::Panicked("recovery"))
        .and_then(|r| r.map_err(ControlError::from));
        // The workers for the next checkpoint (and standby), off the path.
        {
            let chains = self.chains.lock().await;
            let agent = chains
                .get(chain)
                .and_then(|e| e.runtime.vnfs.iter().find(|v| v.plan.name == vnf))
                .and_then(|v| v.agent.clone());
            drop(chains);
            if let Some(agent) = agent {
                tokio::task::spawn_blocking(move || {
                    agent
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .prepare();
                });
            }
        }
        let mut chains = self.chains.lock().await;
        let adopted = recovered.and_then(|r| {
            let v = chains
                .get_mut(chain)
                .ok_or_else(|| ControlError::NotFound(format!("chain {chain:?} is gone")))?
                .runtime
                .vnf_mut(vnf)?;
            if let Some(why) = &r.0.fallback_reason {
                tracing::warn!(chain, vnf, "restored an older checkpoint: {why}");
            }
            if r.0.switched {
                v.swap_replica();
            }
            v.adopt(r.0.pid).map(|fd| (fd, r.0, r.1))
        });
        self.finish_recovery(&mut chains, chain, vnf, adopted);
    }

    /// Records a recovery's outcome: on success the new process's pidfd,
    /// what was done, and the time from detection to the chain running
    /// again.
    fn finish_recovery(
        self: &Arc<Self>,
        chains: &mut BTreeMap<String, Entry>,
        chain: &str,
        vnf: &str,
        outcome: Result<(OwnedFd, RecoveryStats, Duration), ControlError>,
    ) {
        use api::watch_events_response::Event;
        let outcome = outcome.map_err(Arc::new);
        self.settle(chain, vnf, outcome.as_ref().map(|_| ()).map_err(Arc::clone));
        let Some(v) = chains
            .get_mut(chain)
            .and_then(|e| e.runtime.vnf_mut(vnf).ok())
        else {
            return;
        };
        match outcome {
            Ok((pidfd, r, recovery)) => {
                v.recoveries += 1;
                v.last_error = None;
                self.emit(recovery_finished(chain, vnf, r, recovery));
                self.watch(chain.to_string(), vnf.to_string(), v.incarnation, pidfd);
                // The new pid (after a fresh start) and counters, for a
                // restarted daemon; not waited for.
                if let Some(e) = chains.get(chain) {
                    drop(self.records.put(&e.runtime, None));
                }
            }
            Err(e) => {
                v.state = api::VnfState::Failed;
                v.recovery_failures += 1;
                v.last_error = Some(e.to_string());
                tracing::error!(chain, vnf, "recovery failed: {e}");
                self.emit(event(
                    chain,
                    vnf,
                    Event::RecoveryFailed(api::RecoveryFailed {
                        reason: e.to_string(),
                    }),
                ));
            }
        }
    }

    /// Checkpoints VNF `vnf` of `chain` every `interval` while it has the
    /// agent `agent` (the task ends when the agent or the SFF goes).
    fn schedule_checkpoints(
        self: &Arc<Self>,
        chain: String,
        vnf: String,
        agent: Weak<std::sync::Mutex<crate::protect::ProtectedVnf>>,
        sff: Weak<nham_sff::remote::SffClient>,
        interval: Duration,
    ) {
        let daemon = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let (Some(d), Some(a), Some(s)) =
                    (daemon.upgrade(), agent.upgrade(), sff.upgrade())
                else {
                    return;
                };
                let r = d.checkpoint_now(&chain, &vnf, a, s).await;
                if let Err(e) = r {
                    tracing::debug!(chain, vnf, "scheduled checkpoint: {e}");
                }
            }
        });
    }

    /// Runs the checkpoint protocol for one VNF now, on a blocking thread.
    async fn checkpoint_now(
        &self,
        chain: &str,
        vnf: &str,
        agent: Agent,
        sff: Arc<nham_sff::remote::SffClient>,
    ) -> Result<crate::protect::CheckpointStats, ControlError> {
        use api::watch_events_response::Event;
        // Its turn (FIFO): the dumps of every chain share the host's
        // turns, so their CRIU work leaves the chains CPU.
        let turn = self
            .checkpoint_turns
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ControlError::FailedPrecondition("the daemon is shutting down".into()))?;
        let r = tokio::task::spawn_blocking(move || {
            let lock = || {
                agent
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
            };
            let dumped = lock().dump(&sff)?;
            // Compressed and stored without the agent: a failure of the VNF
            // meanwhile is recovered at once (and this checkpoint aborted).
            let stored = dumped.store(&sff)?;
            let stats = lock().commit(&sff, stored)?;
            drop(turn);
            // The 1R-AA replica is restored from it in the background; the
            // next checkpoint of this VNF waits for that, so the replica is
            // never more than one checkpoint behind (the SFF keeps the
            // packets since the one before the restore point).
            let refreshed = lock().replica_refresh();
            if let Some(done) = refreshed {
                let _ = done.recv_timeout(Duration::from_secs(30));
            }
            Ok::<_, crate::protect::ProtectError>(stats)
        })
        .await
        .map_err(|_| ControlError::Panicked("checkpoint"))?;
        match r {
            Ok(c) => {
                if let Some(v) = self
                    .chains
                    .lock()
                    .await
                    .get_mut(chain)
                    .and_then(|e| e.runtime.vnf_mut(vnf).ok())
                {
                    v.checkpoints += 1;
                }
                self.emit(event(
                    chain,
                    vnf,
                    Event::CheckpointTaken(api::CheckpointTaken {
                        checkpoint_id: c.id,
                        size_bytes: c.size,
                        pause_ms: c.pause.as_secs_f64() * 1e3,
                        stored_bytes: c.stored,
                        released: c.released,
                        drain_ms: c.drain.as_secs_f64() * 1e3,
                        frozen_ms: c.frozen.as_secs_f64() * 1e3,
                        dump_ms: c.dump.as_secs_f64() * 1e3,
                    }),
                ));
                Ok(c)
            }
            Err(e) => {
                self.emit(event(
                    chain,
                    vnf,
                    Event::CheckpointFailed(api::CheckpointFailed {
                        reason: e.to_string(),
                    }),
                ));
                // Frames lost on its link: only a recovery (which replays
                // them) makes the VNF whole again.
                let verdict = match e {
                    crate::protect::ProtectError::LinkLoss { .. } => {
                        Some(crate::detect::Verdict::CutOff)
                    }
                    crate::protect::ProtectError::InputDropped { .. } => {
                        Some(crate::detect::Verdict::InputDropped)
                    }
                    _ => None,
                };
                if let Some(verdict) = verdict {
                    let inc = self
                        .chains
                        .lock()
                        .await
                        .get_mut(chain)
                        .and_then(|e| e.runtime.vnf_mut(vnf).ok())
                        .map(|v| v.incarnation);
                    if let Some(inc) = inc {
                        self.judge(chain, vnf, 0, inc, verdict).await;
                    }
                }
                Err(ControlError::FailedPrecondition(format!(
                    "checkpoint of {chain}/{vnf} failed: {e}"
                )))
            }
        }
    }

    /// Probes every VNF of `chain` each probe interval for hangs and
    /// cut-offs (see [`crate::detect`]); a VNF judged failed is killed, so
    /// that its pidfd hands it to recovery like a crash, with the cause and
    /// time of the judgement. The task ends with the chain.
    fn watch_data_path(self: &Arc<Self>, chain: String) {
        use crate::detect::{Detector, Probe, Verdict};
        let daemon = Arc::downgrade(self);
        let (interval, threshold) = (self.state.probe_interval, self.state.probe_threshold);
        tokio::spawn(async move {
            let mut detectors: BTreeMap<(String, usize), (u64, Detector)> = BTreeMap::new();
            let mut sockets = crate::capacity::SocketWatch::default();
            // Per hop, divergent replays already reported.
            let mut divergent_seen: Vec<u64> = Vec::new();
            let origin = Instant::now();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(d) = daemon.upgrade() else { return };
                // What to probe: running VNFs, by incarnation; and the SFF,
                // for replays that differed (non-deterministic VNFs).
                let (names, sff, targets): (Vec<String>, _, Vec<ProbeTarget>) = {
                    let chains = d.chains.lock().await;
                    let Some(e) = chains.get(&chain) else { return };
                    let names = e.runtime.vnfs.iter().map(|v| v.plan.name.clone()).collect();
                    let vnfs = e.runtime.vnfs.iter();
                    let members = vnfs.clone().flat_map(|v| {
                        v.members.iter().enumerate().filter_map(|(i, m)| {
                            Some((
                                v.plan.name.clone(),
                                i + 1,
                                m.incarnation,
                                m.pid.filter(|_| m.judged.is_none())?,
                                m.sff_iface.clone(),
                                m.netns.path(),
                            ))
                        })
                    });
                    let targets = vnfs
                        .filter(|v| v.state == api::VnfState::Running && v.judged.is_none())
                        .filter_map(|v| {
                            Some((
                                v.plan.name.clone(),
                                0,
                                v.incarnation,
                                v.pid?,
                                v.sff_iface.clone(),
                                v.netns.path(),
                            ))
                        })
                        .chain(members)
                        .collect();
                    (names, e.runtime.sff.clone(), targets)
                };
                let hop_of = names.clone();
                let mut watch = std::mem::take(&mut sockets);
                let (probes, status, watch) = tokio::task::spawn_blocking(move || {
                    // The SFF first: a VNF that answers after this and
                    // before its queue is read is seen answering next time.
                    let status = sff.as_ref().and_then(|s| s.status().ok());
                    let probes = targets
                        .into_iter()
                        .map(|(name, k, inc, pid, iface, netns)| {
                            let hop = hop_of.iter().position(|n| *n == name);
                            let heard = (status.as_ref())
                                .zip(hop)
                                .and_then(|(st, hop)| st.hops.get(hop)?.heard.get(k).copied());
                            // What its sockets hold and dropped; the SFF is
                            // told what they hold when it changes.
                            let socks = watch.sockets(&name, k, pid, &netns);
                            if let (Some(s), Some(hop), Some(sff)) = (&socks, hop, &sff) {
                                if let Some(c) = watch.learned(&name, k, s) {
                                    match sff.set_capacity(hop, k, c) {
                                        Ok(_) => {
                                            tracing::info!(
                                                vnf = name,
                                                member = k,
                                                "its socket holds {} bytes{}{}: at most {} bytes of kernel charge in flight to it",
                                                c.bytes,
                                                if c.outgoing_copies { " (ETH_P_ALL: its own outputs charged too)" } else { "" },
                                                if c.ring { " (a ring)" } else { "" },
                                                c.budget()
                                            );
                                            watch.told(&name, k, c);
                                        }
                                        Err(e) => tracing::warn!(vnf = name, "telling the SFF its capacity: {e}"),
                                    }
                                }
                            }
                            // Read: every frame sent before the last probe
                            // left its sockets (frees, after silence, what a
                            // VNF dropped without answering).
                            let window = (status.as_ref())
                                .zip(hop)
                                .and_then(|(st, hop)| st.hops.get(hop)?.in_flight.get(k).copied());
                            if let (Some(hop), Some(sff), Some(w)) = (hop, &sff, window) {
                                // Without sock_diag, /proc's queue column
                                // (a ring's content unseen: never empty).
                                let empty = match &socks {
                                    Some(s) => s.rmem == 0 && !watch.ring_queue(&name, k).0,
                                    None => crate::protect::packet_rmem(pid).is_ok_and(|r| r == 0)
                                        && !crate::protect::has_ring(pid),
                                };
                                if let Some(upto) = watch.read_upto(&name, k, w.3, empty) {
                                    let _ = sff.socket_read(hop, k, upto);
                                }
                            }
                            let probe = Probe {
                                rmem: socks.map_or_else(
                                    || crate::protect::packet_rmem(pid).unwrap_or(0),
                                    |s| s.rmem + watch.ring_queue(&name, k).1,
                                ),
                                carrier: nham_netns::has_carrier(&iface).unwrap_or(true),
                                drops: socks.map_or(0, |s| s.drops)
                                    + u64::from(watch.ring_losing(&name, k)),
                                heard,
                                cpu: crate::protect::cpu_use(pid),
                                at: origin.elapsed(),
                            };
                            // Input dropped: it gets half as much at once,
                            // before the replay that repairs it.
                            if probe.drops > 0 {
                                tracing::warn!(
                                    vnf = name,
                                    member = k,
                                    "pid {pid}: its sockets dropped {} frames: {}; the SFF's window towards it (frames, bytes, budget): {window:?}; heard {heard:?}",
                                    probe.drops,
                                    watch.describe(&name, k)
                                );
                                if let (Some(s), Some(hop), Some(sff)) = (&socks, hop, &sff) {
                                    let c = watch.dropped(&name, k, s);
                                    if sff.set_capacity(hop, k, c).is_ok() {
                                        watch.told(&name, k, c);
                                    }
                                }
                            }
                            (name, k, inc, probe)
                        })
                        .collect::<Vec<_>>();
                    (probes, status, watch)
                })
                .await
                .unwrap_or_default();
                sockets = watch;
                if let Some(status) = status {
                    divergent_seen.resize(status.hops.len(), 0);
                    for (hop, h) in status.hops.iter().enumerate() {
                        let new = h.divergent.saturating_sub(divergent_seen[hop]);
                        if new > 0 {
                            divergent_seen[hop] = h.divergent;
                            let vnf = names.get(hop).cloned().unwrap_or_default();
                            tracing::warn!(
                                chain,
                                vnf,
                                "non-deterministic VNF: {new} replayed outputs differed from the originals"
                            );
                            d.emit(event(
                                &chain,
                                &vnf,
                                api::watch_events_response::Event::NonDeterminismDetected(
                                    api::NonDeterminismDetected {
                                        outputs: new,
                                        total: h.divergent,
                                    },
                                ),
                            ));
                        }
                    }
                }
                for (name, k, inc, probe) in probes {
                    let entry = detectors
                        .entry((name.clone(), k))
                        .or_insert_with(|| (inc, Detector::new(threshold)));
                    if entry.0 != inc {
                        *entry = (inc, Detector::new(threshold));
                    }
                    let verdict = entry.1.handle_probe(probe);
                    if verdict == Verdict::InputDropped {
                        d.input_dropped(&chain, &name, k, probe.drops, &sockets)
                            .await;
                    }
                    if verdict != Verdict::Healthy {
                        d.judge(&chain, &name, k, inc, verdict).await;
                    }
                }
            }
        });
    }

    /// VNF `vnf` (MR-AA member `k`) missed `frames` of input at its full
    /// socket: counted, said in an event and a warning (it is then judged
    /// failed and recovered, which repairs it).
    async fn input_dropped(
        &self,
        chain: &str,
        vnf: &str,
        k: usize,
        frames: u64,
        sockets: &crate::capacity::SocketWatch,
    ) {
        if let Some(e) = self.chains.lock().await.get_mut(chain) {
            e.input_dropped += frames;
        }
        let budget = sockets.told_budget(vnf, k);
        tracing::warn!(
            chain,
            vnf,
            member = k,
            "the kernel dropped {frames} frames sent to it (its socket was full): recovering it; from now on at most {budget} bytes of kernel charge in flight to it"
        );
        self.emit(event(
            chain,
            vnf,
            api::watch_events_response::Event::VnfInputDropped(api::VnfInputDropped {
                member: k as u32,
                frames,
                budget_bytes: budget,
            }),
        ));
    }

    /// The detector judged VNF `vnf` (MR-AA member `k`, incarnation `inc`)
    /// failed: record why and kill it; recovery takes it from there (and
    /// brings a cut-off link up again).
    async fn judge(
        &self,
        chain: &str,
        vnf: &str,
        k: usize,
        inc: u64,
        verdict: crate::detect::Verdict,
    ) {
        let at = Instant::now();
        let mut chains = self.chains.lock().await;
        let Some(v) = chains
            .get_mut(chain)
            .and_then(|e| e.runtime.vnf_mut(vnf).ok())
        else {
            return;
        };
        if k > 0 {
            let Some(m) = v.members.get_mut(k - 1) else {
                return;
            };
            let Some(pid) = m.pid.filter(|_| m.incarnation == inc && m.judged.is_none()) else {
                return;
            };
            tracing::warn!(
                chain,
                vnf,
                "MR-AA member {k}: failure detected: {}",
                verdict.cause()
            );
            m.judged = Some((verdict, at));
            let netns = m.netns.path();
            // The rest waits up to 500 ms: not under the registry.
            drop(chains);
            // A member is restored behind the same link: bring it up
            // first (the SFF then flushes what the dead one was sent).
            // But stop the member before: reconnected while it runs, it
            // would answer frames it was sent while cut off, numbered as
            // though it had missed none (and the SFF still takes it for
            // live until it is seen dead): wrong outputs under right
            // numbers. Stopped, it reads nothing more before it dies.
            if verdict == crate::detect::Verdict::CutOff {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGSTOP,
                );
                let deadline = Instant::now() + Duration::from_millis(500);
                let running = || {
                    nham_netns::process_state(pid)
                        .is_some_and(|(state, _)| !matches!(state, 'T' | 't' | 'Z' | 'X'))
                };
                while running() && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let up = crate::runtime::in_netns(&netns, || {
                    nham_netns::set_up(crate::runtime::VNF_IFACE)
                });
                match up {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(chain, vnf, "bringing member {k}'s link up: {e}"),
                    Err(e) => tracing::error!(chain, vnf, "bringing member {k}'s link up: {e}"),
                }
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            return;
        }
        if v.incarnation != inc || v.state != api::VnfState::Running {
            return;
        }
        tracing::warn!(chain, vnf, "failure detected: {}", verdict.cause());
        v.judged = Some((verdict, at));
        // Recovery brings a cut-off link up again.
        if let Err(e) = v.signal(nix::sys::signal::Signal::SIGKILL) {
            tracing::error!(chain, vnf, "killing it: {e}");
        }
    }

    /// Starts the checkpoint task of every protected VNF of `runtime`.
    fn schedule_all(self: &Arc<Self>, runtime: &ChainRuntime) {
        for hop in 0..runtime.vnfs.len() {
            self.schedule_hop(runtime, hop);
        }
    }

    /// Starts the checkpoint task of VNF `hop`, if it is protected.
    fn schedule_hop(self: &Arc<Self>, runtime: &ChainRuntime, hop: usize) {
        let (Some(sff), Some(v)) = (runtime.sff.as_ref(), runtime.vnfs.get(hop)) else {
            return;
        };
        if let Some(agent) = &v.agent {
            self.schedule_checkpoints(
                runtime.plan.name.clone(),
                v.plan.name.clone(),
                Arc::downgrade(agent),
                Arc::downgrade(sff),
                v.plan
                    .checkpoint_interval
                    .unwrap_or(self.state.checkpoint_interval),
            );
        }
    }

    /// Creates a chain.
    pub async fn create(
        self: &Arc<Self>,
        spec: Option<api::ChainSpec>,
    ) -> Result<api::Chain, ControlError> {
        let plan = validate::chain(spec.as_ref())?;
        let spec = spec.unwrap_or_default();
        for v in &plan.vnfs {
            crate::runtime::protection(v.mechanism)
                .map_err(|e| ControlError::Unimplemented(format!("VNF {:?}: {e}", v.name)))?;
        }
        let chains = self.chains.lock().await;
        // Chains being started count too: the start (namespaces, the SFF,
        // the VNFs, each waited on until it listens) runs without the
        // registry, which every other chain's failure handling needs.
        let starting: Vec<(String, String, String, u32)> = self
            .starting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(n, (i, e, spi))| (n.clone(), i.clone(), e.clone(), *spi))
            .collect();
        let known = chains
            .values()
            .map(|e| {
                let p = &e.runtime.plan;
                (p.name.clone(), p.ingress.clone(), p.egress.clone(), p.spi)
            })
            .chain(starting);
        let ports = [&plan.ingress, &plan.egress];
        for (name, ingress, egress, spi) in known {
            if name == plan.name {
                return Err(ControlError::AlreadyExists(format!(
                    "chain {:?} exists",
                    plan.name
                )));
            }
            if ports.iter().any(|p| **p == ingress || **p == egress) {
                return Err(ControlError::FailedPrecondition(format!(
                    "chain {name:?} already serves interface {:?} or {:?} (its ingress {ingress:?}, egress {egress:?}): one chain per interface",
                    plan.ingress, plan.egress
                )));
            }
            if spi == plan.spi {
                return Err(ControlError::InvalidArgument(format!(
                    "spec.spi {} is already used by chain {name:?}",
                    plan.spi
                )));
            }
        }
        self.starting
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                plan.name.clone(),
                (plan.ingress.clone(), plan.egress.clone(), plan.spi),
            );
        drop(chains);
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sff = self.sff.clone();
        let state = self.state.clone();
        let name = plan.name.clone();
        let started =
            tokio::task::spawn_blocking(move || ChainRuntime::start(id, plan, &sff, &state))
                .await
                .map_err(|_| ControlError::Panicked("chain start"))
                .and_then(|r| r);
        let unreserve = || {
            self.starting
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&name);
        };
        let (runtime, pidfds) = match started {
            Ok(r) => r,
            Err(e) => {
                unreserve();
                return Err(e);
            }
        };
        // Durable before the chain is announced: a daemon restarted from
        // here on finds it.
        let _ = self.records.put(&runtime, Some(&spec)).recv();
        // Watched and registered under the registry: a VNF that dies now
        // is handled once the chain is in it.
        let mut chains = self.chains.lock().await;
        unreserve();
        for (v, fd) in runtime.vnfs.iter().zip(pidfds) {
            self.watch(name.clone(), v.plan.name.clone(), v.incarnation, fd);
        }
        let mut runtime = runtime;
        self.watch_members(&mut runtime);
        self.schedule_all(&runtime);
        self.watch_data_path(name.clone());
        let chain = runtime.to_api(&spec);
        chains.insert(
            name.clone(),
            Entry {
                spec,
                runtime,
                input_dropped: 0,
            },
        );
        self.emit(event(
            &name,
            "",
            api::watch_events_response::Event::ChainCreated(api::ChainCreated {}),
        ));
        Ok(chain)
    }

    async fn with_chain<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Entry) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        validate::name("name", name)?;
        let mut chains = self.chains.lock().await;
        let entry = chains
            .get_mut(name)
            .ok_or_else(|| ControlError::NotFound(format!("no chain {name:?}")))?;
        f(entry)
    }

    /// Takes back the chains recorded in the state database (a restarted
    /// daemon): attaches to what still runs ([`ChainRuntime::reattach`]) and
    /// recovers, by their mechanisms, the VNFs that died meanwhile. A chain
    /// whose SFF (or a namespace) is gone is started afresh from its spec,
    /// and says so: the packets its SFF held went with it. Namespaces of
    /// this state database that no chain claims are deleted.
    pub async fn restore_chains(self: &Arc<Self>) -> Result<RestoreReport, ControlError> {
        use prost::Message;
        let store = self.state.store.clone();
        let (specs, records) = tokio::task::spawn_blocking(move || {
            Ok::<_, crate::store::StoreError>((store.chains()?, store.runtimes()?))
        })
        .await
        .map_err(|_| ControlError::Panicked("reading the state database"))?
        .map_err(ControlError::from)?;
        let records: BTreeMap<String, ChainRecord> = records
            .into_iter()
            .filter_map(|(n, b)| Some((n, serde_json::from_slice(&b).ok()?)))
            .collect();
        if let Some(max) = records.values().map(|r| r.id).max() {
            self.next_id
                .fetch_max(max + 1, std::sync::atomic::Ordering::Relaxed);
        }
        let mut report = RestoreReport::default();
        let mut keep = std::collections::BTreeSet::new();
        let named: std::collections::BTreeSet<String> =
            specs.iter().map(|(n, _)| n.clone()).collect();
        for (name, rec) in &records {
            if !named.contains(name) {
                let rec = rec.clone();
                let _ = tokio::task::spawn_blocking(move || tear_down_record(&rec)).await;
            }
        }
        for (name, bytes) in specs {
            let Some((spec, plan)) = api::ChainSpec::decode(bytes.as_slice())
                .ok()
                .and_then(|spec| Some((spec.clone(), validate::chain(Some(&spec)).ok()?)))
            else {
                tracing::error!(chain = name, "its recorded spec is unreadable; skipped");
                continue;
            };
            let record = records.get(&name).cloned();
            let attached = match record.clone() {
                Some(rec) => {
                    let (plan, state) = (plan.clone(), self.state.clone());
                    tokio::task::spawn_blocking(move || ChainRuntime::reattach(&rec, plan, &state))
                        .await
                        .map_err(|_| ControlError::Panicked("re-attaching"))
                        .and_then(|r| r)
                }
                None => Err(ControlError::FailedPrecondition(
                    "nothing was recorded as running for it".into(),
                )),
            };
            let (runtime, pidfds) = match attached {
                Ok(r) => {
                    report.attached += 1;
                    r
                }
                Err(e) => {
                    tracing::warn!(
                        chain = name,
                        "cannot re-attach ({e}): starting it afresh from its spec; \
                         packets its SFF held are lost"
                    );
                    let (sff, state) = (self.sff.clone(), self.state.clone());
                    let id = self
                        .next_id
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let started = tokio::task::spawn_blocking(move || {
                        if let Some(rec) = &record {
                            tear_down_record(rec);
                        }
                        let _ = state.store.remove_checkpoints(&plan.name);
                        ChainRuntime::start(id, plan, &sff, &state)
                    })
                    .await
                    .map_err(|_| ControlError::Panicked("chain start"))
                    .and_then(|r| r);
                    match started {
                        Ok((rt, fds)) => {
                            report.restarted += 1;
                            (rt, fds.into_iter().map(Some).collect())
                        }
                        Err(e) => {
                            tracing::error!(chain = name, "starting it afresh failed: {e}");
                            report.failed += 1;
                            continue;
                        }
                    }
                }
            };
            keep.extend(runtime.vnfs.iter().map(|v| v.netns.name().to_string()));
            keep.extend(
                runtime
                    .vnfs
                    .iter()
                    .filter_map(|v| Some(v.replica.as_ref()?.netns.name().to_string())),
            );
            keep.extend(
                runtime
                    .vnfs
                    .iter()
                    .flat_map(|v| v.members.iter().map(|m| m.netns.name().to_string())),
            );
            let mut runtime = runtime;
            self.watch_members(&mut runtime);
            let lost_members: Vec<(String, usize)> = std::mem::take(&mut runtime.lost_members)
                .into_iter()
                .filter_map(|(hop, k)| Some((runtime.vnfs.get(hop)?.plan.name.clone(), k)))
                .collect();
            let mut lost = Vec::new();
            for (v, fd) in runtime.vnfs.iter().zip(pidfds) {
                match fd {
                    Some(fd) => self.watch(name.clone(), v.plan.name.clone(), v.incarnation, fd),
                    None => lost.push(v.plan.name.clone()),
                }
            }
            self.schedule_all(&runtime);
            self.watch_data_path(name.clone());
            let _ = self.records.put(&runtime, None).recv();
            self.chains.lock().await.insert(
                name.clone(),
                Entry {
                    spec,
                    runtime,
                    input_dropped: 0,
                },
            );
            for vnf in lost {
                report.recovering += 1;
                self.emit(event(
                    &name,
                    &vnf,
                    api::watch_events_response::Event::FailureDetected(api::FailureDetected {
                        cause: "process gone while no daemon watched it".into(),
                        detection_ms: 0.0,
                    }),
                ));
                let mut chains = self.chains.lock().await;
                if let Some(v) = chains
                    .get_mut(&name)
                    .and_then(|e| e.runtime.vnf_mut(&vnf).ok())
                {
                    v.failures += 1;
                }
                let (d, chain) = (self.clone(), name.clone());
                drop(chains);
                tokio::spawn(async move {
                    let chains = d.chains.lock().await;
                    d.recover(chains, &chain, &vnf, Instant::now(), true).await;
                });
            }
            // MR-AA members that died unseen: as if their exit was seen now
            // (never adopted, they are incarnation 0).
            for (vnf, k) in lost_members {
                report.recovering += 1;
                let (d, chain) = (self.clone(), name.clone());
                tokio::spawn(async move {
                    let now = Instant::now();
                    let e = Exited {
                        exited: now,
                        noticed: now,
                    };
                    d.on_member_exit(&chain, &vnf, k, 0, e).await;
                });
            }
        }
        let prefix = self.state.netns_prefix();
        report.swept =
            tokio::task::spawn_blocking(move || nham_netns::sweep_prefix(&prefix, &keep))
                .await
                .unwrap_or(0);
        Ok(report)
    }

    /// Leaves every chain running (SFF, VNFs, namespaces), recorded in the
    /// state database for the next daemon, and empties the registry.
    pub async fn detach_all(&self) {
        let entries = std::mem::take(&mut *self.chains.lock().await);
        for (_, mut e) in entries {
            e.runtime.detach();
            let done = self.records.put(&e.runtime, None);
            let _ = tokio::task::spawn_blocking(move || {
                let _ = done.recv();
                drop(e);
            })
            .await;
        }
    }

    /// Deletes every chain (as `DeleteChain` does).
    pub async fn delete_all(&self) {
        let names: Vec<String> = self.chains.lock().await.keys().cloned().collect();
        for n in names {
            if let Err(e) = self.delete(&n).await {
                tracing::warn!(chain = n, "deleting: {e}");
            }
        }
    }

    /// Fault injection: starts a checkpoint of VNF `vnf` and SIGKILLs the
    /// VNF once the SFF reports that checkpoint dumping (the VNF frozen,
    /// CRIU at work), so the crash lands in the middle of it.
    /// Deletes a chain: SFF stopped, VNFs killed, namespaces removed.
    pub async fn delete(&self, name: &str) -> Result<(), ControlError> {
        validate::name("name", name)?;
        let entry = self
            .chains
            .lock()
            .await
            .remove(name)
            .ok_or_else(|| ControlError::NotFound(format!("no chain {name:?}")))?;
        // Heals waiting on its VNFs hear that it is gone.
        self.outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|(c, _), _| c != name);
        tokio::task::spawn_blocking(move || drop(entry))
            .await
            .map_err(|_| ControlError::Panicked("teardown"))?;
        let done = self.records.send(RecordOp::Remove {
            name: name.to_string(),
        });
        let _ = tokio::task::spawn_blocking(move || done.recv()).await;
        self.emit(event(
            name,
            "",
            api::watch_events_response::Event::ChainDeleted(api::ChainDeleted {}),
        ));
        Ok(())
    }
}
