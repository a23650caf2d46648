//! NHAM control plane, in layers read top to bottom:
//!
//! - [`api`]: the generated `nham.v1` gRPC types and the tonic services
//!   over the daemon (decode, call, encode).
//! - [`service`]: the daemon, the driver: a registry of chains, the event
//!   stream, one method per request, and the drivers of the state machines
//!   below (failure handling, checkpoint scheduling, mechanism changes).
//! - [`fms`]: the Fault Management System: the Failure Detector's
//!   judgement of hangs and cut-offs from data-path probes and the Failure
//!   Recovery of one VNF process (state machines), and the Replica Manager
//!   of each protected VNF (one module per mechanism: its places, copies,
//!   standby or members, what a commit hands it, how it recovers).
//! - [`vsm`]: the VNF State Manager: the checkpoint protocol as a state
//!   machine and its driver for one VNF, the VNF State Database, CRIU,
//!   ring VNFs.
//! - [`runtime`]: the ground floor: one network namespace per VNF joined to
//!   the daemon's namespace by a veth pair, cgroups, the VNF processes
//!   (started with `setns`, watched through a pidfd and the kernel's early
//!   word of their exit), the SFF process, the records a restarted daemon
//!   reads.
//! - [`cluster`]: hosts: registration and membership in etcd, heartbeats
//!   between `nhamd`s, the judgement of a silent host (a state machine).
//! - [`plan`]: the daemon's own types for a chain and its VNFs (the
//!   domain's `Mechanism` among them), used by every layer below the API.
//! - [`error`]: the one error enum of the control plane and its single
//!   conversion to `tonic::Status`; [`validate`]: checks a `ChainSpec` and
//!   turns it into the daemon's own types (INVALID_ARGUMENT with the
//!   reason); [`capacity`]: what a VNF's sockets hold.
//!
//! Mechanisms: `MECHANISM_NONE`, `0R`, `1R-AS`, `1R-AA` and `MR-AA`, chosen
//! per VNF when the chain is created and changed at runtime
//! (`service::mechanism`).
#![forbid(unsafe_code)]

pub mod api;
pub mod capacity;
pub mod chain;
pub mod cluster;
pub mod error;
pub mod fms;
pub mod metrics;
pub mod plan;
pub mod runtime;
pub mod service;
pub mod validate;
pub mod vsm;

/// Connects to `nhamd` at `addr`: `unix:/path/to/socket` or an
/// `http://host:port` URI.
pub async fn connect(addr: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    connect_with(addr, None).await
}

/// [`connect`], over TLS when `tls` is given (`https://host:port`).
pub async fn connect_with(
    addr: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Channel, tonic::transport::Error> {
    match addr.strip_prefix("unix:") {
        Some(path) => {
            let path = std::path::PathBuf::from(path);
            // The URI is not used for a Unix socket, but tonic wants one.
            tonic::transport::Endpoint::from_static("http://[::1]:50051")
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
        }
        None => {
            let mut endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())?;
            if let Some(tls) = tls {
                endpoint = endpoint.tls_config(tls)?;
            }
            endpoint.connect().await
        }
    }
}

/// Reads PEM files for TLS: a server's (or client's) identity from `cert`
/// and `key`.
pub fn tls_identity(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> std::io::Result<tonic::transport::Identity> {
    Ok(tonic::transport::Identity::from_pem(
        std::fs::read(cert)?,
        std::fs::read(key)?,
    ))
}

/// The gRPC services a server offers, by reflection (v1): what `grpcurl
/// list` shows.
pub async fn list_services(
    channel: tonic::transport::Channel,
) -> Result<Vec<String>, tonic::Status> {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let mut client = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client
        .server_reflection_info(tokio_stream::once(request))
        .await?
        .into_inner();
    let mut out = Vec::new();
    while let Some(r) = stream.message().await? {
        if let Some(MessageResponse::ListServicesResponse(l)) = r.message_response {
            out.extend(l.service.into_iter().map(|s| s.name));
        }
    }
    out.sort();
    Ok(out)
}

/// How `nhamd` and its SFF processes write their logs (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One line of text per event.
    #[default]
    Text,
    /// One JSON object per event (for log collectors).
    Json,
}

impl LogFormat {
    /// The environment variable that carries it to the SFF processes.
    pub const ENV: &'static str = "NHAM_LOG_FORMAT";

    /// As `NHAM_LOG_FORMAT` says (text unless it says `json`).
    pub fn from_env() -> Self {
        match std::env::var(Self::ENV).as_deref() {
            Ok("json") => Self::Json,
            _ => Self::Text,
        }
    }

    /// Its name, as `NHAM_LOG_FORMAT` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Text => "text",
            Self::Json => "json",
        }
    }
}

/// Logs to stderr in `format`, filtered as `RUST_LOG` says (`info` when
/// unset).
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// The executable `name` installed beside the running one: in the same
/// directory, or one up when the running one is a test binary in
/// `target/*/deps`.
pub fn sibling_binary(name: &str) -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let mut candidates = vec![dir.join(name)];
    if dir.file_name().is_some_and(|n| n == "deps") {
        candidates.extend(dir.parent().map(|d| d.join(name)));
    }
    candidates.into_iter().find(|p| p.is_file())
}
