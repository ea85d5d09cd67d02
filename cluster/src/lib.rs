//! medpool-cluster: the pool's Raft group (openraft `=0.10.0-alpha.37`) and the state it
//! replicates: nodes, the shard map, the pool configuration and confirmed-dialog records.
//!
//! ```text
//!   medpool (node/)  ── proposes Commands, reads State, serves the internal gRPC ──┐
//!  ───────────────────────────────────────────────────────────────────────────────┼──
//!   pool/                 bootstrap/join, leases, failure detector, rebalancer,     │
//!                         shard watcher, dialog group commit, SIP forwarding       │
//!   network.rs grpc.rs    RaftNetworkV2 client / internal gRPC service (tonic)     │
//!   audit.rs              the node's own report (--audit-file): leases, acting set │
//!  ────────────────────────────────────────────────────────────────────────────────┘
//!   store/                what openraft persists, one redb file in the data dir
//!     log.rs              RaftLogStorage + RaftLogReader: vote, committed, entries
//!     sm.rs               RaftStateMachine + snapshot builder over `State`
//!   typ.rs                TypeConfig: NodeId = u64, Node = NodeAddrs, D = Command,
//!                         R = CommandResult, snapshot data = serialized State
//!  ─────────────────────────────────────────────────────────────────────────────────
//!   command.rs            Command, CommandResult, Rejection        pure data
//!   state.rs              State + apply(&mut State, Command)        pure, deterministic
//!   rebalance.rs          plan_moves(&State, alive)                 pure, deterministic
//! ```
//!
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

pub mod audit;
mod b64;
pub mod command;
pub mod error;
pub mod grpc;
pub mod network;
pub mod pool;
pub mod rebalance;
pub mod state;
pub mod store;
pub mod typ;

pub use command::{Command, CommandResult, Rejection};
pub use error::{NotAppended, WriteError};
pub use rebalance::plan_moves;
pub use state::{
    DEFAULT_SHARD_COUNT, NodeRecord, NodeState, ShardEntry, ShardId, State, VersionedConfig, apply,
};
pub use store::{DbClosed, LogStore, StateMachineStore, StateReader, StoreError, open};
pub use typ::{NodeAddrs, NodeId, Raft, TypeConfig};
