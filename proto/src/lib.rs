//! medpool-proto: the gRPC contracts of medpool, generated at build time from `proto/*.proto`.
//!
//! - [`cluster`] (`medpool.cluster.v1`): node to node only — Raft RPCs (openraft payloads as opaque
//!   bytes), SIP forwarding to a shard's owner, join, leases. Served on the internal port, never to
//!   operators.
//! - `admin.proto` (operators) arrives with the admin API issue.
//!
//! This crate knows nothing of SIP or Raft semantics; it only carries bytes and small records.

/// Node-to-node service (`medpool.cluster.v1`).
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod cluster {
    tonic::include_proto!("medpool.cluster.v1");
}
