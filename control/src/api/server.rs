//! The tonic services of `nhamd`: each handler decodes its request, calls
//! one [`Daemon`] method and encodes the answer. Errors become statuses in
//! one place ([`ControlError`]'s conversion); nothing here decides.
#![warn(missing_docs, clippy::all)]

use std::pin::Pin;
use std::sync::Arc;

use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::auth::AuthorizeLayer;
use super::{
    chain_service_server, event_service_server, host_service_server, peer_service_server,
    vnf_service_server,
};
use crate::api;
use crate::error::ControlError;
use crate::service::events::VnfEvent;
use crate::service::Daemon;
use crate::validate;

/// The API's router: its services behind [`AuthorizeLayer`].
pub type ApiRouter = tonic::transport::server::Router<
    tower::layer::util::Stack<AuthorizeLayer, tower::layer::util::Identity>,
>;

/// Every service `nhamd` serves over `daemon`: `nham.v1` (chains, VNFs,
/// events), `grpc.health.v1` and server reflection (v1); with `tls`, only
/// over TLS; with `roles` (mutual TLS), each call checked against its
/// client certificate's role (see [`super::auth`]).
pub async fn router(
    daemon: Arc<Daemon>,
    tls: Option<tonic::transport::ServerTlsConfig>,
    roles: Option<super::auth::Roles>,
) -> Result<ApiRouter, ControlError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<chain_service_server::ChainServiceServer<ChainSvc>>()
        .await;
    health_reporter
        .set_serving::<vnf_service_server::VnfServiceServer<VnfSvc>>()
        .await;
    health_reporter
        .set_serving::<event_service_server::EventServiceServer<EventSvc>>()
        .await;
    health_reporter
        .set_serving::<host_service_server::HostServiceServer<HostSvc>>()
        .await;
    // The health service says what is so: NOT_SERVING while the state
    // database or a chain's SFF does not answer (read each second).
    {
        let reporter = health_reporter.clone();
        let daemon = Arc::downgrade(&daemon);
        tokio::spawn(async move {
            let mut was = true;
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                let Some(d) = daemon.upgrade() else { return };
                let serving = d.metrics_snapshot().await.serving;
                drop(d);
                if serving != was {
                    set_health(&reporter, serving).await;
                    if serving {
                        tracing::info!("health: SERVING again");
                    } else {
                        tracing::warn!("health: NOT_SERVING (the state database or a chain's SFF does not answer)");
                    }
                    was = serving;
                }
            }
        });
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ControlError::Process(format!("reflection: {e}")))?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .map_err(|e| ControlError::InvalidArgument(format!("TLS configuration: {e}")))?;
    }
    Ok(server
        .layer(AuthorizeLayer(roles.map(Arc::new)))
        .add_service(health)
        .add_service(reflection)
        .add_service(chain_service_server::ChainServiceServer::new(ChainSvc(
            daemon.clone(),
        )))
        .add_service(vnf_service_server::VnfServiceServer::new(VnfSvc(
            daemon.clone(),
        )))
        .add_service(event_service_server::EventServiceServer::new(EventSvc(
            daemon.clone(),
        )))
        .add_service(host_service_server::HostServiceServer::new(HostSvc(daemon))))
}

/// Sets every service's health (and the server's, `""`).
async fn set_health(reporter: &tonic_health::server::HealthReporter, serving: bool) {
    use tonic_health::ServingStatus::{NotServing, Serving};
    let status = if serving { Serving } else { NotServing };
    for name in [
        "",
        "nham.v1.ChainService",
        "nham.v1.VnfService",
        "nham.v1.EventService",
        "nham.v1.HostService",
    ] {
        reporter.set_service_status(name, status).await;
    }
}

/// `HostService` over a [`Daemon`].
#[derive(Debug, Clone)]
pub struct HostSvc(pub Arc<Daemon>);

#[tonic::async_trait]
impl host_service_server::HostService for HostSvc {
    async fn list_hosts(
        &self,
        _: Request<api::ListHostsRequest>,
    ) -> Answer<api::ListHostsResponse> {
        let placed = self.0.placement().await;
        Ok(Response::new(api::encode::hosts(self.0.hosts(), placed)))
    }

    async fn get_version(
        &self,
        _: Request<api::GetVersionRequest>,
    ) -> Answer<api::GetVersionResponse> {
        Ok(Response::new(api::GetVersionResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            api: "nham.v1".to_string(),
            sff_protocol: nham_sff::protocol::PROTOCOL_VERSION,
        }))
    }
}

type Answer<T> = Result<Response<T>, Status>;

/// `run`, the call `call` of `request`, once per its `request_id` (see
/// [`super::idempotency`]): a retry gets the first call's answer.
async fn retried<T>(
    daemon: &Daemon,
    call: &'static str,
    request: &impl prost::Message,
    request_id: &str,
    run: impl std::future::Future<Output = Result<T, Status>> + Send + 'static,
) -> Answer<T>
where
    T: prost::Message + Default + 'static,
{
    let digest = super::idempotency::digest(request);
    daemon
        .retries
        .once(call, request_id, digest, run)
        .await
        .map(Response::new)
}

/// `r`, the daemon's answer about chain `chain`: a chain this host does not
/// have but another host owns is named with its owner (see
/// [`Daemon::or_owner`]).
async fn routed<T>(daemon: &Daemon, chain: &str, r: Result<T, ControlError>) -> Result<T, Status> {
    match r {
        Ok(t) => Ok(t),
        Err(e) => Err(daemon.or_owner(chain, e).await.into()),
    }
}

/// `ChainService` over a [`Daemon`].
#[derive(Debug, Clone)]
pub struct ChainSvc(pub Arc<Daemon>);

#[tonic::async_trait]
impl chain_service_server::ChainService for ChainSvc {
    async fn create_chain(
        &self,
        r: Request<api::CreateChainRequest>,
    ) -> Answer<api::CreateChainResponse> {
        let request = r.into_inner();
        let (r, daemon) = (request.clone(), self.0.clone());
        let run = async move {
            let plan = validate::chain(r.spec.as_ref())?;
            // A chain's name is the cluster's: not taken again on another
            // host.
            let missing = ControlError::NotFound(String::new());
            if let ControlError::OwnedElsewhere { chain, owner, .. } =
                daemon.or_owner(&plan.name, missing).await
            {
                return Err(ControlError::AlreadyExists(format!(
                    "chain {chain:?} exists: host {owner} owns it"
                ))
                .into());
            }
            let chain = Some(daemon.create(plan).await?.into_api());
            Ok(api::CreateChainResponse { chain })
        };
        retried(&self.0, "CreateChain", &request, &request.request_id, run).await
    }

    async fn get_chain(&self, r: Request<api::GetChainRequest>) -> Answer<api::GetChainResponse> {
        let name = r.into_inner().name;
        let chain = routed(&self.0, &name, self.0.get_chain(&name).await).await?;
        let chain = Some(chain.into_api());
        Ok(Response::new(api::GetChainResponse { chain }))
    }

    async fn list_chains(
        &self,
        _: Request<api::ListChainsRequest>,
    ) -> Answer<api::ListChainsResponse> {
        let chains = (self.0.list_chains().await.into_iter())
            .map(IntoApi::into_api)
            .collect();
        Ok(Response::new(api::ListChainsResponse { chains }))
    }

    async fn delete_chain(
        &self,
        r: Request<api::DeleteChainRequest>,
    ) -> Answer<api::DeleteChainResponse> {
        let request = r.into_inner();
        let (name, daemon) = (request.name.clone(), self.0.clone());
        let run = async move {
            routed(&daemon, &name, daemon.delete(&name).await).await?;
            Ok(api::DeleteChainResponse {})
        };
        retried(&self.0, "DeleteChain", &request, &request.request_id, run).await
    }
}

/// `VnfService` over a [`Daemon`].
#[derive(Debug, Clone)]
pub struct VnfSvc(pub Arc<Daemon>);

#[tonic::async_trait]
impl vnf_service_server::VnfService for VnfSvc {
    async fn set_mechanism(
        &self,
        r: Request<api::SetMechanismRequest>,
    ) -> Answer<api::SetMechanismResponse> {
        let request = r.into_inner();
        let (r, daemon) = (request.clone(), self.0.clone());
        let run = async move {
            let mechanism = validate::mechanism(r.mechanism)
                .map_err(|why| ControlError::InvalidArgument(format!("mechanism {why}")))?;
            let vnf = daemon
                .set_mechanism(&r.chain, &r.vnf, mechanism, r.replicas)
                .await;
            let vnf = routed(&daemon, &r.chain, vnf).await?;
            Ok(api::SetMechanismResponse {
                vnf: Some(vnf.into()),
            })
        };
        retried(&self.0, "SetMechanism", &request, &request.request_id, run).await
    }

    async fn checkpoint(
        &self,
        r: Request<api::CheckpointRequest>,
    ) -> Answer<api::CheckpointResponse> {
        let request = r.into_inner();
        let (r, daemon) = (request.clone(), self.0.clone());
        let run = async move {
            let c = routed(&daemon, &r.chain, daemon.checkpoint(&r.chain, &r.vnf).await).await?;
            Ok(api::CheckpointResponse {
                checkpoint_id: c.id,
                size_bytes: c.size,
                pause_ms: c.pause.as_secs_f64() * 1e3,
            })
        };
        retried(&self.0, "Checkpoint", &request, &request.request_id, run).await
    }

    async fn heal_vnf(&self, r: Request<api::HealVnfRequest>) -> Answer<api::HealVnfResponse> {
        let request = r.into_inner();
        let (r, daemon) = (request.clone(), self.0.clone());
        let run = async move {
            if api::HealCause::try_from(r.cause).map_or(true, |c| c == api::HealCause::Unspecified)
            {
                return Err(ControlError::InvalidArgument(
                    "cause must be HEAL_CAUSE_FAILURE or HEAL_CAUSE_MAINTENANCE".into(),
                )
                .into());
            }
            let healed = routed(&daemon, &r.chain, daemon.heal(&r.chain, &r.vnf).await).await?;
            Ok(api::HealVnfResponse {
                vnf: Some(healed.vnf.into()),
                recovery_ms: healed.took.as_secs_f64() * 1e3,
            })
        };
        retried(&self.0, "HealVnf", &request, &request.request_id, run).await
    }

    async fn inject_fault(
        &self,
        r: Request<api::InjectFaultRequest>,
    ) -> Answer<api::InjectFaultResponse> {
        let request = r.into_inner();
        let (r, daemon) = (request.clone(), self.0.clone());
        let run = async move {
            let fault = validate::fault(r.fault)?;
            let injected = daemon
                .inject_fault(
                    &r.chain,
                    &r.vnf,
                    fault,
                    r.member as usize,
                    r.during_checkpoint,
                )
                .await;
            routed(&daemon, &r.chain, injected).await?;
            Ok(api::InjectFaultResponse {})
        };
        retried(&self.0, "InjectFault", &request, &request.request_id, run).await
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
    ) -> Answer<Self::WatchEventsStream> {
        let r = r.into_inner();
        let (chain, since) = (r.chain, r.since_id);
        let mut rx = self.0.subscribe(&chain)?;
        // A chain another host owns: its events are that host's to send.
        if !chain.is_empty() {
            if let Err(e) = self.0.get_chain(&chain).await {
                let e = self.0.or_owner(&chain, e).await;
                if matches!(e, ControlError::OwnedElsewhere { .. }) {
                    return Err(e.into());
                }
            }
        }
        // From `since` (what the log still keeps), then as they come; a
        // reader that falls behind gets what it missed from the log, or
        // OUT_OF_RANGE once the log no longer has it.
        let daemon = self.0.clone();
        let missed = move |after: u64| -> Result<Vec<VnfEvent>, Status> {
            match daemon.events_since(after) {
                (events, true) => Ok(events),
                (_, false) => Err(ControlError::OutOfRange(format!(
                    "events after {after} are no longer kept (the daemon keeps its last {}, and \
                     its ids start again above the last one's when it restarts): read the state \
                     (GetChain), then watch again",
                    crate::service::EVENT_LOG
                ))
                .into()),
            }
        };
        let mut sent = match since {
            Some(after) => after,
            None => self.0.last_event_id(),
        };
        let backlog = match since {
            Some(after) => missed(after)?,
            None => Vec::new(),
        };
        let (tx, out) = tokio::sync::mpsc::channel::<Result<api::WatchEventsResponse, Status>>(256);
        let wanted = move |e: &VnfEvent| chain.is_empty() || e.chain == chain;
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            let mut pending = backlog;
            loop {
                for e in pending.drain(..) {
                    if e.id <= sent {
                        continue;
                    }
                    sent = e.id;
                    if wanted(&e) && tx.send(Ok(e.into())).await.is_err() {
                        return; // the watcher went
                    }
                }
                // (A watcher of a quiet chain that goes is noticed too.)
                let next = tokio::select! {
                    () = tx.closed() => return,
                    next = rx.recv() => next,
                };
                match next {
                    Ok(e) => pending.push(e),
                    Err(RecvError::Lagged(_)) => match missed(sent) {
                        Ok(events) => pending = events,
                        Err(status) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                    },
                    Err(RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(out),
        )))
    }

    async fn get_stats(&self, r: Request<api::GetStatsRequest>) -> Answer<api::GetStatsResponse> {
        let chain = r.into_inner().chain;
        let s = routed(&self.0, &chain, self.0.stats(&chain).await).await?;
        Ok(Response::new(super::encode::stats(s)))
    }
}

/// A chain's spec and status as one `nham.v1` `Chain`.
trait IntoApi {
    fn into_api(self) -> api::Chain;
}

impl IntoApi for (crate::plan::ChainPlan, crate::chain::ChainStatus) {
    fn into_api(self) -> api::Chain {
        super::encode::chain(super::encode::spec(&self.0), self.1)
    }
}

/// The peer listener of a cluster host: `PeerService` only, every call
/// checked against the cluster's `token` (`authorization: Bearer …`, in
/// constant time) before it reaches the handler. Copies go to `store`.
pub fn peer_router(
    keeper: crate::cluster::CopyKeeper,
    hosting: Arc<crate::cluster::hosting::VnfHost>,
    token: &[u8],
    host: String,
) -> tonic::transport::server::Router {
    let expected = blake3::hash(token);
    let check = move |r: Request<()>| -> Result<Request<()>, Status> {
        let given = r
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| blake3::hash(t.as_bytes()));
        // blake3::Hash compares in constant time.
        if given == Some(expected) {
            Ok(r)
        } else {
            Err(ControlError::Unauthenticated(
                "a peer call without this cluster's token (authorization: Bearer <token>)".into(),
            )
            .into())
        }
    };
    // A checkpoint file comes in 1 MiB messages.
    let service = peer_service_server::PeerServiceServer::new(PeerSvc {
        keeper,
        hosting,
        host,
    })
    .max_decoding_message_size(4 << 20);
    tonic::transport::Server::builder().add_service(
        tonic::service::interceptor::InterceptedService::new(service, check),
    )
}

/// `PeerService`: decoded here, kept by the cluster's [`CopyKeeper`](crate::cluster::CopyKeeper).
#[derive(Debug, Clone)]
pub struct PeerSvc {
    keeper: crate::cluster::CopyKeeper,
    hosting: Arc<crate::cluster::hosting::VnfHost>,
    host: String,
}

/// The bytes of a checkpoint file of `stored_bytes` that follow a header
/// on `stream` (`data` takes a message's bytes; `None`: not a data
/// message, refused).
async fn receive_file<M>(
    stream: &mut tonic::Streaming<M>,
    stored_bytes: u64,
    data: impl Fn(M) -> Option<Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    const MAX: u64 = 8 << 30;
    if stored_bytes > MAX {
        return Err(ControlError::InvalidArgument(format!(
            "{stored_bytes} bytes is more than a checkpoint may be ({MAX})"
        ))
        .into());
    }
    // (Grown as it comes: a header alone does not make this host allocate.)
    let mut file = Vec::with_capacity(stored_bytes.min(64 << 20) as usize);
    while let Some(m) = stream.message().await? {
        match data(m) {
            Some(d) if (file.len() + d.len()) as u64 <= stored_bytes => file.extend_from_slice(&d),
            Some(_) => {
                return Err(ControlError::InvalidArgument(format!(
                    "more than the {stored_bytes} bytes the header announced"
                ))
                .into())
            }
            None => return Err(ControlError::InvalidArgument("a second header".into()).into()),
        }
    }
    Ok(file)
}

/// A hosted VNF that runs, as its owner hears of it.
fn running_api(r: crate::cluster::hosting::Running) -> api::RunVnfResponse {
    api::RunVnfResponse {
        pid: r.pid,
        mac: r.mac.to_vec(),
        netns: r.netns,
        ifindex: r.ifindex,
    }
}

/// A hosted VNF's key from its message, checked.
fn hosted_key(
    v: Option<api::HostedVnf>,
) -> Result<crate::cluster::hosting::HostedKey, ControlError> {
    let v = v.ok_or_else(|| ControlError::InvalidArgument("no hosted VNF named".into()))?;
    validate::name("owner host", &v.owner)?;
    validate::name("chain", &v.chain)?;
    validate::name("vnf", &v.vnf)?;
    if !(1..1 << 24).contains(&v.vni) {
        return Err(ControlError::InvalidArgument(format!(
            "VNI {}: 1 to 2^24-1",
            v.vni
        )));
    }
    Ok(crate::cluster::hosting::HostedKey {
        owner: v.owner,
        chain: v.chain,
        vnf: v.vnf,
        vni: v.vni,
    })
}

#[tonic::async_trait]
impl peer_service_server::PeerService for PeerSvc {
    async fn store_checkpoint(
        &self,
        r: Request<tonic::Streaming<api::StoreCheckpointRequest>>,
    ) -> Answer<api::StoreCheckpointResponse> {
        use api::store_checkpoint_request::Part;
        let mut stream = r.into_inner();
        let Some(Part::Header(h)) = stream.message().await?.and_then(|m| m.part) else {
            return Err(ControlError::InvalidArgument(
                "StoreCheckpoint: the first message must be the checkpoint's header".into(),
            )
            .into());
        };
        validate::name("host", &h.origin)?;
        validate::name("chain", &h.chain)?;
        validate::name("vnf", &h.vnf)?;
        let file = receive_file(&mut stream, h.stored_bytes, |m| match m.part {
            Some(Part::Data(d)) => Some(d),
            _ => None,
        })
        .await?;
        let origin = h.origin.clone();
        let meta = super::encode::checkpoint_meta(h);
        self.keeper.keep(origin, meta, file).await?;
        Ok(Response::new(api::StoreCheckpointResponse {
            host: self.host.clone(),
        }))
    }

    async fn run_vnf(&self, r: Request<api::RunVnfRequest>) -> Answer<api::RunVnfResponse> {
        let r = r.into_inner();
        let key = hosted_key(r.vnf)?;
        let owner_underlay = r.owner_underlay.parse().map_err(|_| {
            ControlError::InvalidArgument(format!(
                "owner_underlay {:?}: an IPv4 address",
                r.owner_underlay
            ))
        })?;
        let request = crate::cluster::hosting::RunRequest {
            key,
            owner_underlay,
            command: r.command,
            env: r.env.into_iter().collect(),
        };
        let hosting = self.hosting.clone();
        let running = tokio::task::spawn_blocking(move || hosting.run(request))
            .await
            .map_err(ControlError::from)?
            .map_err(ControlError::from)?;
        Ok(Response::new(running_api(running)))
    }

    async fn watch_vnf(&self, r: Request<api::HostedVnf>) -> Answer<api::VnfExited> {
        let key = hosted_key(Some(r.into_inner()))?;
        let exited_unix_ns = self
            .hosting
            .exited(&key)
            .await
            .map_err(ControlError::from)?;
        Ok(Response::new(api::VnfExited { exited_unix_ns }))
    }

    async fn probe_vnf(&self, r: Request<api::HostedVnf>) -> Answer<api::VnfProbe> {
        let key = hosted_key(Some(r.into_inner()))?;
        let p = self.hosting.probe(&key).map_err(ControlError::from)?;
        Ok(Response::new(api::VnfProbe {
            rmem: p.rmem,
            stopped: p.stopped,
            input_dropped: p.input_dropped,
        }))
    }

    async fn signal_vnf(
        &self,
        r: Request<api::SignalVnfRequest>,
    ) -> Answer<api::SignalVnfResponse> {
        use nix::sys::signal::Signal;
        let r = r.into_inner();
        let signal = match api::VnfSignal::try_from(r.signal) {
            Ok(api::VnfSignal::Stop) => Signal::SIGSTOP,
            Ok(api::VnfSignal::Cont) => Signal::SIGCONT,
            Ok(api::VnfSignal::Kill) => Signal::SIGKILL,
            _ => {
                return Err(ControlError::InvalidArgument(format!(
                    "signal {}: VNF_SIGNAL_STOP, VNF_SIGNAL_CONT or VNF_SIGNAL_KILL",
                    r.signal
                ))
                .into())
            }
        };
        let key = hosted_key(r.vnf)?;
        self.hosting
            .signal(&key, signal)
            .map_err(ControlError::from)?;
        Ok(Response::new(api::SignalVnfResponse {}))
    }

    async fn dump_vnf(&self, r: Request<api::DumpVnfRequest>) -> Answer<api::DumpVnfResponse> {
        let r = r.into_inner();
        let key = hosted_key(r.vnf)?;
        let hosting = self.hosting.clone();
        let report = tokio::task::spawn_blocking(move || hosting.dump(&key, r.id))
            .await
            .map_err(ControlError::from)?
            .map_err(ControlError::from)?;
        Ok(Response::new(api::DumpVnfResponse {
            image_bytes: report.size,
            dump_ms: report.duration.as_secs_f64() * 1e3,
        }))
    }

    type FetchImageStream =
        Pin<Box<dyn Stream<Item = Result<api::StoreCheckpointRequest, Status>> + Send>>;

    async fn fetch_image(&self, r: Request<api::DumpVnfRequest>) -> Answer<Self::FetchImageStream> {
        use api::store_checkpoint_request::Part;
        let r = r.into_inner();
        let key = hosted_key(r.vnf)?;
        let hosting = self.hosting.clone();
        let image = tokio::task::spawn_blocking(move || hosting.fetch(&key, r.id))
            .await
            .map_err(ControlError::from)?
            .map_err(ControlError::from)?;
        let header = Part::Header(super::encode::checkpoint_header(&self.host, &image.meta));
        let parts: Vec<Result<api::StoreCheckpointRequest, Status>> = std::iter::once(header)
            .chain(image.file.chunks(1 << 20).map(|c| Part::Data(c.to_vec())))
            .map(|p| Ok(api::StoreCheckpointRequest { part: Some(p) }))
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(parts))))
    }

    async fn restore_vnf(
        &self,
        r: Request<tonic::Streaming<api::RestoreVnfRequest>>,
    ) -> Answer<api::RunVnfResponse> {
        let (request, _) = receive_restore("RestoreVnf", r.into_inner()).await?;
        let hosting = self.hosting.clone();
        let running = tokio::task::spawn_blocking(move || hosting.restore(request))
            .await
            .map_err(ControlError::from)?
            .map_err(ControlError::from)?;
        Ok(Response::new(running_api(running)))
    }

    async fn stage_standby(
        &self,
        r: Request<tonic::Streaming<api::RestoreVnfRequest>>,
    ) -> Answer<api::RunVnfResponse> {
        let (request, create) = receive_restore("StageStandby", r.into_inner()).await?;
        let hosting = self.hosting.clone();
        let running = tokio::task::spawn_blocking(move || hosting.stage(request, create))
            .await
            .map_err(ControlError::from)?
            .map_err(ControlError::from)?;
        Ok(Response::new(running_api(running)))
    }

    async fn activate_standby(
        &self,
        r: Request<api::DumpVnfRequest>,
    ) -> Answer<api::RunVnfResponse> {
        let r = r.into_inner();
        let key = hosted_key(r.vnf)?;
        let hosting = self.hosting.clone();
        let running = tokio::task::spawn_blocking(move || hosting.activate(&key, r.id))
            .await
            .map_err(ControlError::from)?
            .map_err(ControlError::from)?;
        Ok(Response::new(running_api(running)))
    }

    async fn stop_vnf(&self, r: Request<api::HostedVnf>) -> Answer<api::StopVnfResponse> {
        let key = hosted_key(Some(r.into_inner()))?;
        let hosting = self.hosting.clone();
        tokio::task::spawn_blocking(move || hosting.stop(&key))
            .await
            .map_err(ControlError::from)?
            .map_err(ControlError::from)?;
        Ok(Response::new(api::StopVnfResponse {}))
    }
}

/// A checkpoint for a hosted VNF (`RestoreVnf`, `StageStandby`: `rpc`), as
/// it comes: the header first, then the file's bytes; and the header's
/// `create`.
async fn receive_restore(
    rpc: &str,
    mut stream: tonic::Streaming<api::RestoreVnfRequest>,
) -> Result<(crate::cluster::hosting::RestoreRequest, bool), Status> {
    use api::restore_vnf_request::Part;
    let Some(Part::Header(h)) = stream.message().await?.and_then(|m| m.part) else {
        return Err(ControlError::InvalidArgument(format!(
            "{rpc}: the first message must be the header"
        ))
        .into());
    };
    let key = hosted_key(h.vnf)?;
    let owner_underlay = h.owner_underlay.parse().map_err(|_| {
        ControlError::InvalidArgument(format!(
            "owner_underlay {:?}: an IPv4 address",
            h.owner_underlay
        ))
    })?;
    let c = h
        .checkpoint
        .ok_or_else(|| ControlError::InvalidArgument(format!("{rpc}: no checkpoint header")))?;
    let file = receive_file(&mut stream, c.stored_bytes, |m| match m.part {
        Some(Part::Data(d)) => Some(d),
        _ => None,
    })
    .await?;
    let request = crate::cluster::hosting::RestoreRequest {
        key,
        owner_underlay,
        ifindex: h.ifindex,
        image: crate::cluster::hosting::Image {
            meta: super::encode::checkpoint_meta(c),
            file,
        },
    };
    Ok((request, h.create))
}
