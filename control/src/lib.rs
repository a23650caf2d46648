//! NHAM control plane.
//!
//! - [`api`]: the generated `nham.v1` gRPC types and services.
//! - [`criu`]: dump and restore of one VNF process with CRIU.
//! - [`protect`]: the checkpoint protocol (Hold/Release + CRIU) and 0R
//!   recovery for one VNF.
//! - [`error`]: the one error enum of the control plane and its single
//!   conversion to `tonic::Status`.
//! - [`validate`]: checks a `ChainSpec` and turns it into the daemon's own
//!   types; every refusal says why (INVALID_ARGUMENT).
//! - [`runtime`]: a running chain: one network namespace per VNF joined to
//!   the daemon's namespace by a veth pair, the VNF processes (started with
//!   `setns`, watched through a pidfd), the SFF thread.
//! - [`service`]: the tonic services over a registry of chains, and the
//!   event stream.
//!
//! What is not here yet (see the control-plane issue): CRIU checkpoints,
//! the state database and recovery by mechanism. Chains whose VNFs ask for
//! a mechanism other than `MECHANISM_NONE` are refused with UNIMPLEMENTED.
#![forbid(unsafe_code)]

pub mod criu;
pub mod error;
pub mod protect;
pub mod runtime;
pub mod service;
pub mod store;
pub mod validate;

/// Connects to `nhamd` at `addr`: `unix:/path/to/socket` or an
/// `http://host:port` URI.
pub async fn connect(addr: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
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
            tonic::transport::Endpoint::from_shared(addr.to_string())?
                .connect()
                .await
        }
    }
}

/// The generated `nham.v1` API.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod api {
    tonic::include_proto!("nham.v1");

    /// Encoded file descriptor set, for gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("nham_v1_descriptor");
}
