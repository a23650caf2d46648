//! The gRPC API: the generated `nham.v1` types and services, and
//! [`server`], the tonic services over the daemon (decode, call, encode).

#![allow(missing_docs, unreachable_pub, clippy::all)]

tonic::include_proto!("nham.v1");

/// Encoded file descriptor set, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("nham_v1_descriptor");

pub mod server;
