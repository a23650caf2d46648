//! The gRPC services of `nhamd` over one registry of chains.
//!
//! Chain creation and deletion run on blocking threads (namespaces, links,
//! processes); a watcher task per VNF process waits on its pidfd and, when
//! the process exits, records the failure, emits `FailureDetected`, and —
//! for `MECHANISM_NONE`, the only mechanism this build implements — starts
//! the VNF again (`RecoveryStarted`, `RecoveryFinished`). Mechanisms that
//! need checkpoints are refused with UNIMPLEMENTED until CRIU is wired in.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{broadcast, Mutex};
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use crate::api::{self, chain_service_server, event_service_server, vnf_service_server};
use crate::error::ControlError;
use crate::runtime::{ChainRuntime, SffOptions};
use crate::validate;

struct Entry {
    spec: api::ChainSpec,
    runtime: ChainRuntime,
}

/// The daemon's state, shared by the services.
pub struct Daemon {
    chains: Mutex<BTreeMap<String, Entry>>,
    events: broadcast::Sender<api::WatchEventsResponse>,
    next_id: std::sync::atomic::AtomicU32,
    sff: SffOptions,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon").finish_non_exhaustive()
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
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
    pub fn new(sff: SffOptions) -> Arc<Self> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(Self {
            chains: Mutex::new(BTreeMap::new()),
            events,
            next_id: std::sync::atomic::AtomicU32::new(1),
            sff,
        })
    }

    fn emit(&self, e: api::WatchEventsResponse) {
        let _ = self.events.send(e);
    }

    /// Watches VNF `vnf` of `chain` (incarnation `incarnation`) through its
    /// pidfd.
    fn watch(self: &Arc<Self>, chain: String, vnf: String, incarnation: u64, pidfd: OwnedFd) {
        let daemon = self.clone();
        tokio::spawn(async move {
            // A pidfd becomes readable when the process exits; wait for it
            // on a blocking thread (the safe way to poll a raw fd here).
            let exited = tokio::task::spawn_blocking(move || loop {
                let mut fds = [rustix::event::PollFd::new(
                    &pidfd,
                    rustix::event::PollFlags::IN,
                )];
                match rustix::event::poll(&mut fds, None) {
                    Ok(n) if n > 0 => return true,
                    Ok(_) | Err(rustix::io::Errno::INTR) => continue,
                    Err(_) => return false,
                }
            })
            .await;
            if exited.unwrap_or(false) {
                daemon.on_exit(&chain, &vnf, incarnation).await;
            }
        });
    }

    async fn on_exit(self: &Arc<Self>, chain: &str, vnf: &str, incarnation: u64) {
        let detected = Instant::now();
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
        v.reap();
        v.failures += 1;
        v.state = api::VnfState::Failed;
        let detection_ms = v
            .fault_at
            .take()
            .map_or(0.0, |t| detected.duration_since(t).as_secs_f64() * 1e3);
        self.emit(event(
            chain,
            vnf,
            api::watch_events_response::Event::FailureDetected(api::FailureDetected {
                cause: "process exited".into(),
                detection_ms,
            }),
        ));
        if v.plan.mechanism != api::Mechanism::None {
            return;
        }
        // MECHANISM_NONE: start it again, without state.
        self.emit(event(
            chain,
            vnf,
            api::watch_events_response::Event::RecoveryStarted(api::RecoveryStarted {}),
        ));
        v.state = api::VnfState::Recovering;
        match v.start() {
            Ok(pidfd) => {
                v.recoveries += 1;
                let inc = v.incarnation;
                self.emit(event(
                    chain,
                    vnf,
                    api::watch_events_response::Event::RecoveryFinished(api::RecoveryFinished {
                        recovery_ms: detected.elapsed().as_secs_f64() * 1e3,
                        replayed: 0,
                    }),
                ));
                self.watch(chain.to_string(), vnf.to_string(), inc, pidfd);
            }
            Err(e) => tracing::error!(chain, vnf, "restart failed: {e}"),
        }
    }

    /// Creates a chain.
    pub async fn create(
        self: &Arc<Self>,
        spec: Option<api::ChainSpec>,
    ) -> Result<api::Chain, ControlError> {
        let plan = validate::chain(spec.as_ref())?;
        let spec = spec.unwrap_or_default();
        if let Some(v) = plan
            .vnfs
            .iter()
            .find(|v| v.mechanism != api::Mechanism::None)
        {
            return Err(ControlError::Unimplemented(format!(
                "VNF {:?} asks for {}: mechanisms with checkpoints (0R, 1R-AS, 1R-AA, MR-AA) are not implemented yet; use MECHANISM_NONE",
                v.name,
                v.mechanism.as_str_name()
            )));
        }
        let mut chains = self.chains.lock().await;
        if chains.contains_key(&plan.name) {
            return Err(ControlError::AlreadyExists(format!(
                "chain {:?} exists",
                plan.name
            )));
        }
        if let Some(other) = chains.values().find(|e| e.runtime.plan.spi == plan.spi) {
            return Err(ControlError::InvalidArgument(format!(
                "spec.spi {} is already used by chain {:?}",
                plan.spi, other.runtime.plan.name
            )));
        }
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let sff = self.sff;
        let (runtime, pidfds) =
            tokio::task::spawn_blocking(move || ChainRuntime::start(id, plan, sff))
                .await
                .map_err(|e| ControlError::Process(format!("chain start panicked: {e}")))??;
        let name = runtime.plan.name.clone();
        for (v, fd) in runtime.vnfs.iter().zip(pidfds) {
            self.watch(name.clone(), v.plan.name.clone(), v.incarnation, fd);
        }
        let chain = runtime.to_api(&spec);
        chains.insert(name.clone(), Entry { spec, runtime });
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

    /// Deletes a chain: SFF stopped, VNFs killed, namespaces removed.
    pub async fn delete(&self, name: &str) -> Result<(), ControlError> {
        validate::name("name", name)?;
        let entry = self
            .chains
            .lock()
            .await
            .remove(name)
            .ok_or_else(|| ControlError::NotFound(format!("no chain {name:?}")))?;
        tokio::task::spawn_blocking(move || drop(entry))
            .await
            .map_err(|e| ControlError::Process(format!("teardown panicked: {e}")))?;
        self.emit(event(
            name,
            "",
            api::watch_events_response::Event::ChainDeleted(api::ChainDeleted {}),
        ));
        Ok(())
    }
}

type Result2<T> = std::result::Result<Response<T>, Status>;

/// `ChainService` over a [`Daemon`].
#[derive(Debug, Clone)]
pub struct ChainSvc(pub Arc<Daemon>);

#[tonic::async_trait]
impl chain_service_server::ChainService for ChainSvc {
    async fn create_chain(
        &self,
        r: Request<api::CreateChainRequest>,
    ) -> Result2<api::CreateChainResponse> {
        let chain = self.0.create(r.into_inner().spec).await?;
        Ok(Response::new(api::CreateChainResponse {
            chain: Some(chain),
        }))
    }

    async fn get_chain(&self, r: Request<api::GetChainRequest>) -> Result2<api::GetChainResponse> {
        let name = r.into_inner().name;
        let chain = self
            .0
            .with_chain(&name, |e| Ok(e.runtime.to_api(&e.spec)))
            .await?;
        Ok(Response::new(api::GetChainResponse { chain: Some(chain) }))
    }

    async fn list_chains(
        &self,
        _: Request<api::ListChainsRequest>,
    ) -> Result2<api::ListChainsResponse> {
        let chains = self.0.chains.lock().await;
        Ok(Response::new(api::ListChainsResponse {
            chains: chains.values().map(|e| e.runtime.to_api(&e.spec)).collect(),
        }))
    }

    async fn delete_chain(
        &self,
        r: Request<api::DeleteChainRequest>,
    ) -> Result2<api::DeleteChainResponse> {
        self.0.delete(&r.into_inner().name).await?;
        Ok(Response::new(api::DeleteChainResponse {}))
    }
}

/// `VnfService` over a [`Daemon`].
#[derive(Debug, Clone)]
pub struct VnfSvc(pub Arc<Daemon>);

fn not_yet(what: &str) -> Status {
    ControlError::Unimplemented(format!(
        "{what} needs CRIU checkpoints, which are not implemented yet"
    ))
    .into()
}

#[tonic::async_trait]
impl vnf_service_server::VnfService for VnfSvc {
    async fn set_mechanism(
        &self,
        r: Request<api::SetMechanismRequest>,
    ) -> Result2<api::SetMechanismResponse> {
        let r = r.into_inner();
        let mechanism = api::Mechanism::try_from(r.mechanism)
            .ok()
            .filter(|m| *m != api::Mechanism::Unspecified)
            .ok_or_else(|| {
                Status::invalid_argument(format!(
                    "mechanism {} is not a valid mechanism",
                    r.mechanism
                ))
            })?;
        let status = self
            .0
            .with_chain(&r.chain, |e| {
                let v = e.runtime.vnf_mut(&r.vnf)?;
                if mechanism != api::Mechanism::None {
                    return Err(ControlError::Unimplemented(format!(
                        "{} needs CRIU checkpoints, which are not implemented yet",
                        mechanism.as_str_name()
                    )));
                }
                v.plan.mechanism = mechanism;
                Ok(v.status())
            })
            .await?;
        Ok(Response::new(api::SetMechanismResponse {
            vnf: Some(status),
        }))
    }

    async fn checkpoint(
        &self,
        r: Request<api::CheckpointRequest>,
    ) -> Result2<api::CheckpointResponse> {
        let r = r.into_inner();
        self.0
            .with_chain(&r.chain, |e| e.runtime.vnf_mut(&r.vnf).map(|_| ()))
            .await?;
        Err(not_yet("a checkpoint"))
    }

    async fn heal_vnf(&self, r: Request<api::HealVnfRequest>) -> Result2<api::HealVnfResponse> {
        let r = r.into_inner();
        if api::HealCause::try_from(r.cause).map_or(true, |c| c == api::HealCause::Unspecified) {
            return Err(Status::invalid_argument(
                "cause must be HEAL_CAUSE_FAILURE or HEAL_CAUSE_MAINTENANCE",
            ));
        }
        let started = Instant::now();
        // Killing the process hands the restart to its watcher, which
        // emits the failure and recovery events.
        self.0
            .with_chain(&r.chain, |e| {
                let v = e.runtime.vnf_mut(&r.vnf)?;
                v.signal(nix::sys::signal::Signal::SIGKILL)
            })
            .await?;
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let status = self
                .0
                .with_chain(&r.chain, |e| Ok(e.runtime.vnf_mut(&r.vnf)?.status()))
                .await?;
            if status.recoveries > 0 && status.state == api::VnfState::Running as i32 {
                return Ok(Response::new(api::HealVnfResponse {
                    vnf: Some(status),
                    recovery_ms: started.elapsed().as_secs_f64() * 1e3,
                }));
            }
            if Instant::now() > deadline {
                return Err(Status::deadline_exceeded(
                    "the VNF did not come back within 10 s",
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    }

    async fn inject_fault(
        &self,
        r: Request<api::InjectFaultRequest>,
    ) -> Result2<api::InjectFaultResponse> {
        let r = r.into_inner();
        let fault = api::Fault::try_from(r.fault)
            .ok()
            .filter(|f| *f != api::Fault::Unspecified)
            .ok_or_else(|| {
                Status::invalid_argument("fault must be FAULT_CRASH, FAULT_HANG or FAULT_CUT_OFF")
            })?;
        self.0
            .with_chain(&r.chain, |e| {
                let v = e.runtime.vnf_mut(&r.vnf)?;
                v.fault_at = Some(Instant::now());
                match fault {
                    api::Fault::Crash => v.signal(nix::sys::signal::Signal::SIGKILL),
                    api::Fault::Hang => v.signal(nix::sys::signal::Signal::SIGSTOP),
                    api::Fault::CutOff => {
                        v.netns
                            .run(|| nham_netns::set_down(crate::runtime::VNF_IFACE))??;
                        Ok(())
                    }
                    api::Fault::Unspecified => unreachable!("filtered above"),
                }
            })
            .await?;
        Ok(Response::new(api::InjectFaultResponse {}))
    }
}

/// `EventService` over a [`Daemon`].
#[derive(Debug, Clone)]
pub struct EventSvc(pub Arc<Daemon>);

type EventStream = Pin<Box<dyn Stream<Item = Result<api::WatchEventsResponse, Status>> + Send>>;

#[tonic::async_trait]
impl event_service_server::EventService for EventSvc {
    type WatchEventsStream = EventStream;

    async fn watch_events(
        &self,
        r: Request<api::WatchEventsRequest>,
    ) -> Result2<Self::WatchEventsStream> {
        let filter = r.into_inner().chain;
        if !filter.is_empty() {
            validate::name("chain", &filter)?;
        }
        let rx = self.0.events.subscribe();
        let stream =
            tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |e| match e {
                Ok(e) if filter.is_empty() || e.chain == filter => Some(Ok(e)),
                Ok(_) => None,
                Err(_) => Some(Err(Status::data_loss(
                    "event stream lagged: some events were dropped",
                ))),
            });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_stats(&self, r: Request<api::GetStatsRequest>) -> Result2<api::GetStatsResponse> {
        let name = r.into_inner().chain;
        let s = self
            .0
            .with_chain(&name, |e| {
                Ok(e.runtime
                    .sff
                    .as_ref()
                    .map(|s| s.counters().snapshot())
                    .unwrap_or_default())
            })
            .await?;
        Ok(Response::new(api::GetStatsResponse {
            ingress: s.ingress,
            classified: s.classified,
            classifier_miss: s.classifier_miss,
            delivered: s.delivered,
            egress: s.egress,
            duplicates_suppressed: s.duplicates,
            stale_discarded: s.stale,
            malformed: s.malformed_ingress + s.malformed_from_vnf + s.si_mismatch + s.ttl_expired,
        }))
    }
}
