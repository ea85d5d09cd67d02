//! medpool-proto: the gRPC contracts of medpool, generated at build time from `proto/*.proto`.
//!
//! - [`cluster`] (`medpool.cluster.v1`): node to node only — Raft RPCs (openraft payloads as opaque
//!   bytes), SIP forwarding to a shard's owner, join, leases. Served on the internal port, never to
//!   operators.
//! - [`admin`] (`medpool.admin.v1`): the operators' API on every node's admin port (`medpool ctl`,
//!   grpcurl), with its file descriptor set for server reflection.
//!
//! This crate knows nothing of SIP or Raft semantics; it only carries bytes and small records.

/// Node-to-node service (`medpool.cluster.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod cluster {
    tonic::include_proto!("medpool.cluster.v1");
}

/// Operators' service (`medpool.admin.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod admin {
    tonic::include_proto!("medpool.admin.v1");

    /// The encoded file descriptor set of `admin.proto` (for gRPC server reflection).
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("admin_descriptor");
}
