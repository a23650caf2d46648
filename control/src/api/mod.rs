//! The gRPC API: the generated `nham.v1` types and services, [`server`],
//! the tonic services over the daemon (decode, call, encode), [`auth`],
//! who may call what over mutual TLS, [`metrics_http`], the `/metrics`
//! endpoint, and
//! [`encode`], the daemon's events, statuses and chain plans as `nham.v1`
//! messages. Below this layer the daemon speaks its own types and imports
//! nothing of it; the one exception is the cluster's client of another
//! host's `PeerService` (a call out over the wire, not up the layers).

#![allow(missing_docs, unreachable_pub, clippy::all)]

tonic::include_proto!("nham.v1");

/// Encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("nham_v1_descriptor");

pub mod auth;
pub mod encode;
pub mod idempotency;
pub mod metrics_http;
pub mod server;
