//! medpool-cluster: the pool's Raft group (openraft `=0.10.0-alpha.37`) and the state it
//! replicates: nodes, the shard map, the pool configuration and confirmed-dialog records.
//!
//! ```text
//!   medpool (node/)  ── proposes Commands, reads State, serves the internal gRPC
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   pool/          one node's runtime: lifecycle, writes through the leader, bootstrap/join,
//!                  leases, failure detector + rebalancer, shard watcher and hand-over fence,
//!                  dialog group commit, SIP forwarding, status (pool/mod.rs draws its files)
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   body_cap.rs    per-RPC caps on a request's size, before tonic decodes it (a tower layer)
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   grpc.rs        the internal gRPC service (tonic) and what it asks of the pool (PoolHooks)
//!   audit.rs       the node's own report (--audit-file): leases, acting set
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   network.rs     RaftNetworkV2 client over the internal service (plain or mutual TLS); the
//!                  wire codec; snapshots in chunks
//!   listen.rs      the internal port's accept loop: connection cap, accept backoff, TLS handshake
//!   admit.rs       Denied (typed refusals), what a write from another node may be     pure
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   tls.rs         the internal port's mutual TLS material (PEM files, reloaded on change) and
//!                  the node-id name a certificate carries: node-<id>.medpool.internal
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   store/         what openraft persists, one redb file in the data dir; the Raft type
//!     log.rs       RaftLogStorage + RaftLogReader: vote, committed, entries
//!     sm.rs        RaftStateMachine + snapshot builder over `State`
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   typ.rs         TypeConfig: NodeId = u64, Node = NodeAddrs, D = Command,
//!                  R = CommandResult, snapshot data = serialized State
//!   rebalance.rs   plan_moves(&State, alive)                     pure, deterministic
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   state.rs       State + apply(&mut State, Command)            pure, deterministic
//!   error.rs       WriteError: not appended / maybe applied / refused (with its Rejection)
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   command.rs     Command, CommandResult, Rejection             pure data
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   division.rs    gateway capacity division, gateway states     pure data and rules
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   codec.rs       the binary form (tagged CBOR) of entries, snapshots and RPCs; reads JSON
//!  ─────────────────────────────────────────────────────────────────────────────────────────
//!   ids.rs         NodeId, NodeAddrs, NodeState, ShardId         leaves: import nothing of
//!   b64.rs         opaque bytes in serde (base64 text in JSON)   this crate
//!   stats.rs       per-stage counters (append, fsync, apply, codec, replicate, forward, RPCs)
//! ```
//!
//! A module imports only from rows below its own (never from its row or above).

//! What it owns: the Raft log and snapshots on disk, the replicated state and its rules, the
//! shard rebalancing plan. What it never touches: SIP, dialogs' meaning (records are opaque
//! bytes), the configuration's meaning (opaque bytes, validated by the b2bua before it is
//! proposed), sockets other than its own internal service, clocks inside `apply`.
//!
//! Dependency direction: `medpool` → `medpool-cluster` → `medpool-proto`; this crate never
//! depends on `node/` crates.

// A test-only fault for the chaos suite: leases that last an hour (the lease gate is effectively
// skipped). It must never reach a release build.
#[cfg(all(feature = "planted-fault-skip-lease", not(debug_assertions)))]
compile_error!(
    "the planted-fault-skip-lease feature is a test-only fault (leases last an hour): never in release builds"
);

pub mod admit;
pub mod audit;
mod b64;
pub mod body_cap;
pub mod codec;
pub mod command;
pub mod division;
pub mod error;
pub mod grpc;
pub mod ids;
pub mod listen;
pub mod network;
pub mod pool;
pub mod rebalance;
pub mod state;
pub mod stats;
pub mod store;
pub mod tls;
pub mod typ;

pub use command::{Command, CommandResult, Rejection};
pub use error::{NotAppended, WriteError};
pub use rebalance::plan_moves;
pub use state::{
    DEFAULT_SHARD_COUNT, NodeRecord, NodeState, ShardEntry, ShardId, State, VersionedConfig, apply,
};
pub use store::Raft;
pub use store::{DbClosed, LogStore, StateMachineStore, StateReader, StoreError, open};
pub use typ::{NodeAddrs, NodeId, TypeConfig};
