//! The openraft type configuration of the pool and short names for the openraft types built
//! from it.
//!
//! Node ids are `u64`; a Raft member's `Node` is [`NodeAddrs`], the addresses other nodes and
//! operators reach it on; a log entry's application data is a [`Command`] and applying one yields
//! a [`CommandResult`]. Snapshots are the serialized [`State`](crate::state::State) as bytes.

use crate::command::{Command, CommandResult};
pub use crate::ids::{NodeAddrs, NodeId};

openraft::declare_raft_types!(
    /// The pool's openraft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = NodeAddrs,
);

/// What a snapshot carries: the serialized [`State`](crate::state::State) (see
/// [`crate::store::sm`]).
pub type SnapshotData = Vec<u8>;

/// `(term, leader, index)` of a log entry.
pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
/// A Raft log entry.
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
/// The payload of a log entry: blank, a [`Command`] or a membership change.
pub type EntryPayload = openraft::alias::EntryPayloadOf<TypeConfig>;
/// A persisted vote.
pub type Vote = openraft::alias::VoteOf<TypeConfig>;
/// A Raft membership configuration (voters, learners and their [`NodeAddrs`]).
pub type Membership = openraft::Membership<NodeId, NodeAddrs>;
/// A membership and the id of the log entry that carried it.
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;
/// What a snapshot covers.
pub type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;
/// A snapshot with its data.
pub type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
/// openraft's storage error for this configuration.
pub type StorageError = openraft::StorageError<TypeConfig>;
/// The error of a Raft RPC sent over the network.
pub type RpcError<E = openraft::errors::Infallible> = openraft::errors::RPCError<TypeConfig, E>;
/// The error of a Raft API call.
pub type RaftError<E = openraft::errors::Infallible> = openraft::errors::RaftError<TypeConfig, E>;
/// Raft metrics of a node.
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;
