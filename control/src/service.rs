//! The daemon (the driver between the gRPC layer and the components): one
//! registry of chains, and per component a module of its own:
//!
//! - [`exit_watch`] and [`failure_detector`]: the Failure Detector (a
//!   crash through the exit watch and pidfds; hangs, cut-offs and socket
//!   drops judged from probes);
//! - [`failure_recovery`]: the Failure Recovery of a VNF or MR-AA member
//!   by its mechanism;
//! - [`state_synchronizer`]: every protected VNF's checkpoint schedule;
//! - [`mechanism`]: the Replica Manager's changes at runtime (replicas and
//!   members made or removed);
//! - [`restart`]: taking back what an earlier daemon left running;
//! - [`requests`]: one method per operator request.
//!
//! Locking: the registry lock is never held across a checkpoint, a
//! recovery, a process start or a CRIU call; those hold only their VNF's
//! agent lock (`SetMechanism` included). Chain creation reserves its name,
//! interfaces and SPI and builds the chain without the registry.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, Mutex};

use crate::chain::{tear_down_record, Agent, ChainRecord, ChainRuntime, ChainStatus, StateOptions};
use crate::error::ControlError;
use crate::fms::replica_manager::RecoveryStats;
use crate::runtime::SffOptions;
use events::{Event, VnfEvent};

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
use crate::plan::{self, ChainPlan, VnfId};

pub mod events;
mod exit_watch;
mod failure_detector;
mod failure_recovery;
mod hosts;
mod mechanism;
mod metrics_snapshot;
mod remote_members;
mod remote_vnfs;
mod requests;
mod restart;
mod state_synchronizer;
pub use mechanism::{plan as mechanism_plan, Protection, Step};
pub use requests::{ChainStats, Healed, HEAL_TIMEOUT};

/// VNF `vnf` of chain `chain` in the registry `chains`, if both exist.
fn vnf_in<'a>(
    chains: &'a mut BTreeMap<String, Entry>,
    chain: &str,
    vnf: &str,
) -> Option<&'a mut crate::chain::VnfRuntime> {
    chains.get_mut(chain)?.runtime.vnf_mut(vnf).ok()
}

struct Entry {
    runtime: ChainRuntime,
    /// Frames the kernel dropped at its VNFs' full sockets (each drop
    /// repaired by a recovery).
    input_dropped: u64,
}

/// The daemon's state, shared by the services.
pub struct Daemon {
    chains: Mutex<BTreeMap<String, Entry>>,
    events: broadcast::Sender<VnfEvent>,
    next_id: std::sync::atomic::AtomicU32,
    sff: SffOptions,
    state: StateOptions,
    records: RecordWriter,
    /// Turns for checkpoints' dumps ([`StateOptions::checkpoint_concurrency`]).
    checkpoint_turns: Arc<tokio::sync::Semaphore>,
    /// Per VNF (`chain/vnf`), one checkpoint at a time: a scheduled one,
    /// an operator's and a mechanism change's queue here, from the dump to
    /// the commit.
    checkpointing: std::sync::Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The kernel's word of a VNF's exit, before its pidfd's.
    early: crate::runtime::exits::EarlyExits,
    /// Chains being started, not in the registry yet: name, ingress,
    /// egress, SPI (what a new chain must not share).
    starting: std::sync::Mutex<BTreeMap<String, (String, String, u32)>>,
    /// VNFs whose mechanism is being changed (one change at a time).
    changing: std::sync::Mutex<std::collections::BTreeSet<VnfId>>,
    /// How each VNF's last recovery ended, for heals that wait on it.
    outcomes: std::sync::Mutex<BTreeMap<VnfId, tokio::sync::watch::Sender<Outcome>>>,
    /// The cluster of hosts this daemon takes part in, if any.
    cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    /// The last events sent, for watchers that resume ([`EVENT_LOG`]).
    event_log: std::sync::Mutex<std::collections::VecDeque<VnfEvent>>,
    /// The first event's id: the daemon's start, in µs since the Unix
    /// epoch, so that a restarted daemon's ids are above any of the one
    /// before (a watcher resuming across a restart is told it missed some).
    event_base: u64,
    /// Answers of mutating calls with a `request_id`, for their retries.
    pub retries: Arc<crate::api::idempotency::Retries>,
}

/// How many events the daemon keeps for watchers that resume after a
/// disconnect (`WatchEvents.since_id`).
pub const EVENT_LOG: usize = 16384;

/// How many events a watcher may fall behind before it reads what it
/// missed from the log (a quarter of it).
const EVENT_CHANNEL: usize = EVENT_LOG / 4;

/// How a VNF's last recovery ended: what a `HealVnf` waits on (never a
/// sleep loop).
#[derive(Debug, Clone)]
struct Outcome {
    /// Recoveries finished (each bumps it).
    finished: u64,
    /// The last one's result.
    result: Result<(), Arc<ControlError>>,
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
    fn new(store: Arc<crate::vsm::database::Store>) -> Self {
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
    fn put(&self, runtime: &ChainRuntime, plan_changed: bool) -> std::sync::mpsc::Receiver<()> {
        self.send(RecordOp::Put {
            name: runtime.plan.name.clone(),
            spec: plan_changed
                .then(|| serde_json::to_vec(&runtime.current_plan()).ok())
                .flatten(),
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
) -> VnfEvent {
    let detection_ms = noticed
        .saturating_duration_since(fault_at.unwrap_or(exited).min(exited))
        .as_secs_f64()
        * 1e3;
    event(
        chain,
        vnf,
        Event::FailureDetected {
            cause,
            detection_ms,
        },
    )
}

/// The event of a finished recovery: `r` done, `took` from detection to
/// the chain (or member) running again.
fn recovery_finished(chain: &str, vnf: &str, r: RecoveryStats, took: Duration) -> VnfEvent {
    // The wall clock of the moment it resumed: now, less the time since.
    let running_unix_nanos = r.resumed_at.map_or(0, |t| {
        now_nanos().saturating_sub(t.elapsed().as_nanos() as u64)
    });
    event(
        chain,
        vnf,
        Event::RecoveryFinished {
            stats: r,
            recovery_ms: took.as_secs_f64() * 1e3,
            running_unix_nanos,
        },
    )
}

fn event(chain: &str, vnf: &str, event: Event) -> VnfEvent {
    VnfEvent {
        id: 0,
        time_unix_nanos: now_nanos(),
        chain: chain.to_string(),
        vnf: vnf.to_string(),
        event,
    }
}

impl Daemon {
    /// A daemon with no chains.
    pub fn new(sff: SffOptions, state: StateOptions) -> Arc<Self> {
        let (events, _) = broadcast::channel(EVENT_CHANNEL);
        Arc::new(Self {
            chains: Mutex::new(BTreeMap::new()),
            events,
            next_id: std::sync::atomic::AtomicU32::new(1),
            sff,
            records: RecordWriter::new(state.store.clone()),
            checkpoint_turns: Arc::new(tokio::sync::Semaphore::new(
                state.checkpoint_concurrency.max(1),
            )),
            checkpointing: std::sync::Mutex::default(),
            state,
            early: crate::runtime::exits::EarlyExits::start(),
            starting: std::sync::Mutex::default(),
            outcomes: std::sync::Mutex::default(),
            changing: std::sync::Mutex::default(),
            cluster: std::sync::OnceLock::new(),
            event_log: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(EVENT_LOG)),
            event_base: (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH))
                .map_or(1, |d| d.as_micros() as u64)
                .max(1),
            retries: Arc::default(),
        })
    }

    /// The outcome of VNF `vnf` of `chain`'s recoveries, to wait on.
    fn outcome(&self, chain: &str, vnf: &str) -> tokio::sync::watch::Receiver<Outcome> {
        let mut outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        outcomes
            .entry(VnfId::new(chain, vnf))
            .or_insert_with(|| {
                tokio::sync::watch::channel(Outcome {
                    finished: 0,
                    result: Ok(()),
                })
                .0
            })
            .subscribe()
    }

    /// VNF `vnf` of `chain`'s recovery has finished with `result`: those
    /// waiting on its outcome (if a heal made it) are told.
    fn settle(&self, chain: &str, vnf: &str, result: Result<(), Arc<ControlError>>) {
        let outcomes = self
            .outcomes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(tx) = outcomes.get(&VnfId::new(chain, vnf)) {
            tx.send_modify(|o| {
                o.finished += 1;
                o.result = result;
            });
        }
    }

    /// Sends event `e` to its watchers, numbered, and keeps it in the
    /// event log (the last [`EVENT_LOG`]) for watchers that resume.
    fn emit(&self, mut e: VnfEvent) {
        // (Numbered and sent under the log's lock: ids leave in order.)
        let mut log = self
            .event_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        e.id = log.back().map_or(self.event_base, |last| last.id + 1);
        if log.len() == EVENT_LOG {
            log.pop_front();
        }
        log.push_back(e.clone());
        let _ = self.events.send(e);
    }

    /// The events kept after `since` (by id; 0: every one kept), and
    /// whether they are every event this daemon sent after it (`false`:
    /// some fell out of the log, or `since` is no id of this daemon's: one
    /// from before it restarted, or another host's).
    pub fn events_since(&self, since: u64) -> (Vec<VnfEvent>, bool) {
        let log = self
            .event_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let first = log.front().map_or(self.event_base, |e| e.id);
        let next = log.back().map_or(self.event_base, |e| e.id + 1);
        let complete = if since == 0 {
            first == self.event_base
        } else {
            since.saturating_add(1) >= first && since < next
        };
        (
            log.iter().filter(|e| e.id > since).cloned().collect(),
            complete,
        )
    }

    /// The id of the last event sent (the one before the first: none
    /// yet).
    pub fn last_event_id(&self) -> u64 {
        (self
            .event_log
            .lock()
            .unwrap_or_else(PoisonError::into_inner))
        .back()
        .map_or(self.event_base - 1, |e| e.id)
    }

    /// Creates a chain.
    pub async fn create(
        self: &Arc<Self>,
        plan: ChainPlan,
    ) -> Result<(ChainPlan, ChainStatus), ControlError> {
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
        let _ = self.records.put(&runtime, true).recv();
        // Watched and registered under the registry: a VNF that dies now
        // is handled once the chain is in it.
        let mut chains = self.chains.lock().await;
        unreserve();
        for (v, fd) in runtime.vnfs.iter().zip(pidfds) {
            let (vnf, incarnation) = (v.plan.name.clone(), v.recovery.incarnation());
            match fd {
                Some(fd) => self.watch(name.clone(), vnf, incarnation, fd),
                None => self.watch_remote(name.clone(), vnf, incarnation),
            }
        }
        let mut runtime = runtime;
        self.watch_members(&mut runtime);
        self.watch_remote_members(&runtime);
        self.schedule_all(&runtime);
        self.watch_data_path(name.clone());
        let chain = (runtime.current_plan(), runtime.status());
        chains.insert(
            name.clone(),
            Entry {
                runtime,
                input_dropped: 0,
            },
        );
        self.emit(event(&name, "", Event::ChainCreated));
        Ok(chain)
    }

    async fn with_chain<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Entry) -> Result<T, ControlError>,
    ) -> Result<T, ControlError> {
        plan::name("name", name)?;
        let mut chains = self.chains.lock().await;
        let entry = chains
            .get_mut(name)
            .ok_or_else(|| ControlError::NotFound(format!("no chain {name:?}")))?;
        f(entry)
    }

    /// Fault injection: starts a checkpoint of VNF `vnf` and SIGKILLs the
    /// VNF once the SFF reports that checkpoint dumping (the VNF frozen,
    /// CRIU at work), so the crash lands in the middle of it.
    /// Deletes a chain: SFF stopped, VNFs killed, namespaces removed.
    pub async fn delete(&self, name: &str) -> Result<(), ControlError> {
        plan::name("name", name)?;
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
            .retain(|id, _| id.chain != name);
        tokio::task::spawn_blocking(move || drop(entry))
            .await
            .map_err(|_| ControlError::Panicked("teardown"))?;
        let done = self.records.send(RecordOp::Remove {
            name: name.to_string(),
        });
        let _ = tokio::task::spawn_blocking(move || done.recv()).await;
        self.emit(event(name, "", Event::ChainDeleted));
        Ok(())
    }
}
