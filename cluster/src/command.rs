//! What the pool's Raft log carries ([`Command`]) and what applying it answers
//! ([`CommandResult`]).
//!
//! A command is validated by whoever proposes it (the leader's rebalancer, the b2bua's config
//! check, the dialog batcher); [`apply`](crate::state::apply) still checks what it must to stay
//! consistent and answers a [`Rejection`] instead of changing the state when a check fails, so
//! every replica reaches the same answer.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::division::GatewayAdmin;
use crate::ids::{NodeAddrs, NodeId, NodeState, ShardId};

/// A change to the replicated [`State`](crate::state::State).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Creates the shard map of an empty pool: `shard_count` shards, no owners, epoch 0.
    /// Fixed for the life of the pool.
    Bootstrap {
        /// Number of shards (`1..=u16::MAX`); [`DEFAULT_SHARD_COUNT`](crate::state::DEFAULT_SHARD_COUNT)
        /// unless configured.
        shard_count: u16,
    },
    /// Adds a node, or updates a known node's addresses and voter flag (a restarted pod may come
    /// back on another IP). Either way the node is then [`NodeState::Active`].
    AddNode {
        /// The node's id.
        id: NodeId,
        /// Where it is reached.
        addresses: NodeAddrs,
        /// Whether it should be a Raft voter (the first 3–5 nodes) rather than a learner.
        voter: bool,
    },
    /// Marks a known node active, draining or down. Does not move its shards.
    SetNodeState {
        /// The node.
        id: NodeId,
        /// Its new state.
        state: NodeState,
    },
    /// Forgets a node that owns no shard (move them away first).
    RemoveNode {
        /// The node.
        id: NodeId,
    },
    /// Gives shards to new owners; each shard whose owner changes gets its epoch bumped.
    /// All-or-nothing: every shard must exist and every new owner must be an active node.
    MoveShards {
        /// `(shard, new owner)` pairs, applied in order.
        moves: Vec<(ShardId, NodeId)>,
    },
    /// Replaces the pool configuration if its version is still `expected_version`
    /// (`None`: only if the pool has no configuration yet, which is how a start-up file seeds an
    /// empty pool). The new version is the old one plus one.
    SetConfig {
        /// The version the proposer based its change on.
        expected_version: Option<u64>,
        /// The configuration, opaque here; the b2bua validates it before proposing.
        #[serde(with = "crate::b64::bytes")]
        body: Vec<u8>,
    },
    /// A group commit of confirmed-dialog records: upserts first, then removes. The batcher
    /// coalesces writes per key, so a key appears at most once in a batch.
    DialogBatch {
        /// `(shard, Call-ID, record)` to insert or replace.
        #[serde(with = "crate::b64::keyed_records")]
        upserts: Vec<(ShardId, String, Vec<u8>)>,
        /// `(shard, Call-ID)` to delete; absent keys are ignored.
        removes: Vec<(ShardId, String)>,
    },
    /// [`Command::DialogBatch`] written by a shard owner, fenced at apply: an upsert for a shard
    /// that `writer` no longer owns is applied only when the Call-ID is unknown there (a call the
    /// new owner never heard of: its first record, delayed or retried across a partition), never
    /// over the new owner's record. Removes apply as in `DialogBatch`.
    OwnerDialogBatch {
        /// The node that wrote the records (the shards' owner when it queued them).
        writer: NodeId,
        /// `(shard, Call-ID, record)` to insert or replace.
        #[serde(with = "crate::b64::keyed_records")]
        upserts: Vec<(ShardId, String, Vec<u8>)>,
        /// `(shard, Call-ID)` to delete; absent keys are ignored.
        removes: Vec<(ShardId, String)>,
        /// Keys among `upserts` that only replace a record the state still holds, never insert
        /// one: the rewrites of a call rebuilt from its record. Its old owner may have ended the
        /// call and removed the record in the instant of the move; the rebuilt call's rewrite
        /// must not bring it back (it would be rebuilt, with nobody at either end, at every later
        /// move). Absent in batches of nodes before this field; a node before it applies these
        /// upserts as plain upserts (as it always did).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        replace_only: Vec<(ShardId, String)>,
    },
    /// Sets the pool-wide secret (32 random bytes, made by the node that bootstraps the pool),
    /// once: refused when the pool already has one.
    SetPoolSecret {
        /// The secret.
        secret: [u8; 32],
    },
    /// Changes nothing (a barrier, or a probe that the leader can still commit).
    Noop,
    /// An operator's choice for a gateway: pool-wide (`node: None`, which also clears every
    /// per-node choice for it) or for one node. The gateway name is not checked here (this crate
    /// does not read the configuration): the admin API checks it before it proposes.
    SetGatewayAdmin {
        /// The gateway trunk's name (at most [`MAX_GATEWAY_NAME`](crate::division::MAX_GATEWAY_NAME) bytes).
        gateway: String,
        /// Only this node.
        node: Option<NodeId>,
        /// The choice.
        state: GatewayAdmin,
    },
    /// `node` is within its share of every gateway in the capacity division's `generation`,
    /// every shard is with a member and the node counts the calls it carried over (see
    /// [`crate::division`]). Written by the node itself.
    CapacitySettled {
        /// The node.
        node: NodeId,
        /// The generation it settled in.
        generation: u64,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Bootstrap { shard_count } => write!(f, "Bootstrap(shards={shard_count})"),
            Command::AddNode {
                id,
                addresses,
                voter,
            } => {
                write!(f, "AddNode({id}, {addresses}, voter={voter})")
            }
            Command::SetNodeState { id, state } => write!(f, "SetNodeState({id}, {state:?})"),
            Command::RemoveNode { id } => write!(f, "RemoveNode({id})"),
            Command::MoveShards { moves } => write!(f, "MoveShards(n={})", moves.len()),
            Command::SetConfig {
                expected_version,
                body,
            } => write!(
                f,
                "SetConfig(expected={expected_version:?}, bytes={})",
                body.len()
            ),
            Command::DialogBatch { upserts, removes } => write!(
                f,
                "DialogBatch(upserts={}, removes={})",
                upserts.len(),
                removes.len()
            ),
            Command::OwnerDialogBatch {
                writer,
                upserts,
                removes,
                replace_only,
            } => write!(
                f,
                "OwnerDialogBatch(writer={writer}, upserts={}, removes={}, replace_only={})",
                upserts.len(),
                removes.len(),
                replace_only.len()
            ),
            Command::SetPoolSecret { .. } => f.write_str("SetPoolSecret"),
            Command::Noop => f.write_str("Noop"),
            Command::SetGatewayAdmin {
                gateway,
                node,
                state,
            } => write!(f, "SetGatewayAdmin({gateway}, node={node:?}, {state:?})"),
            Command::CapacitySettled { node, generation } => {
                write!(f, "CapacitySettled({node}, generation={generation})")
            }
        }
    }
}

/// What applying a log entry answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Applied (also the answer to blank and membership entries, and to [`Command::Noop`]).
    Done,
    /// [`Command::MoveShards`] applied; `moved` shards changed owner.
    ShardsMoved {
        /// Shards whose owner changed (and whose epoch was bumped).
        moved: u32,
    },
    /// [`Command::SetConfig`] applied; the configuration now has this version.
    ConfigSet {
        /// The new version.
        version: u64,
    },
    /// [`Command::DialogBatch`] applied.
    DialogsApplied {
        /// Records inserted or replaced.
        upserted: u32,
        /// Records that existed and were removed.
        removed: u32,
    },
    /// The command was refused; the state did not change.
    Rejected(Rejection),
}

impl CommandResult {
    /// The rejection, if the command was refused.
    pub fn rejection(&self) -> Option<&Rejection> {
        match self {
            CommandResult::Rejected(r) => Some(r),
            _ => None,
        }
    }

    /// `Ok(self)` if applied, `Err(rejection)` if refused.
    pub fn into_result(self) -> Result<CommandResult, Rejection> {
        match self {
            CommandResult::Rejected(r) => Err(r),
            other => Ok(other),
        }
    }
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    /// [`Command::Bootstrap`] on a pool that already has a shard map.
    #[error("the pool is already bootstrapped with {shard_count} shards")]
    AlreadyBootstrapped {
        /// The existing shard count.
        shard_count: u16,
    },
    /// A shard command before [`Command::Bootstrap`].
    #[error("the pool has no shard map yet")]
    NotBootstrapped,
    /// [`Command::Bootstrap`] with zero shards.
    #[error("the shard count must be at least 1")]
    InvalidShardCount,
    /// A shard id outside `0..shard_count`.
    #[error("shard {shard} does not exist (the pool has {shard_count})")]
    UnknownShard {
        /// The shard named.
        shard: ShardId,
        /// The pool's shard count.
        shard_count: u16,
    },
    /// A node id the pool does not know.
    #[error("node {0} is not a member of the pool")]
    UnknownNode(NodeId),
    /// A shard move to a node that is draining or down.
    #[error("node {node} is {state:?}, not active")]
    NodeNotActive {
        /// The node.
        node: NodeId,
        /// Its state.
        state: NodeState,
    },
    /// [`Command::RemoveNode`] of a node that still owns shards.
    #[error("node {node} still owns {shards} shards")]
    NodeOwnsShards {
        /// The node.
        node: NodeId,
        /// How many shards it owns.
        shards: u32,
    },
    /// [`Command::SetPoolSecret`] on a pool that has its secret.
    #[error("the pool already has its secret")]
    PoolSecretExists,
    /// [`Command::SetConfig`] with a configuration the leader's validation refused.
    #[error("invalid configuration: {reason}")]
    InvalidConfig {
        /// The validation's account (for people; the variant is the type).
        reason: String,
    },
    /// [`Command::CapacitySettled`] for a generation that is not the current one.
    #[error("capacity generation {current} is current, the node settled in {generation}")]
    StaleGeneration {
        /// The generation named.
        generation: u64,
        /// The current one.
        current: u64,
    },
    /// [`Command::CapacitySettled`] from a node that is not a member of the current generation.
    #[error("node {0} does not share gateway capacity in this generation")]
    NotACapacityMember(NodeId),
    /// [`Command::SetGatewayAdmin`] for a new gateway when the pool keeps as many as it may.
    #[error("the pool keeps the states of at most {max} gateways")]
    TooManyGatewayStates {
        /// The bound.
        max: usize,
    },
    /// [`Command::SetConfig`] based on a version that is no longer current.
    #[error("configuration version {current:?} is current, the change was based on {expected:?}")]
    StaleConfigVersion {
        /// The version the proposer expected.
        expected: Option<u64>,
        /// The current version (`None`: no configuration yet).
        current: Option<u64>,
    },
}
