//! The pool's plain identifiers and small records, shared by the replicated state, its commands and
//! the Raft type configuration: a node's id, addresses and state, a shard's number. A leaf: it
//! imports nothing of this crate.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A node's id in the pool: stable across restarts (a StatefulSet ordinal, or `--node-id`).
pub type NodeId = u64;

/// Where a node is reached: the `Node` of the Raft membership and the addresses in its
/// [`NodeRecord`](crate::state::NodeRecord).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeAddrs {
    /// `host:port` of the internal gRPC service (Raft RPCs, forwarding, join). Never the admin API.
    pub raft_addr: String,
    /// `host:port` this node receives SIP on.
    pub sip_addr: String,
    /// `host:port` of the node's admin API (HTTP).
    pub admin_addr: String,
}

impl fmt::Display for NodeAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "raft={} sip={} admin={}",
            self.raft_addr, self.sip_addr, self.admin_addr
        )
    }
}

/// A shard's number: `0..shard_count`.
pub type ShardId = u16;

/// A node's part in the pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeState {
    /// Serving: may own shards.
    Active,
    /// Handing its shards over before it stops; receives no new ones.
    Draining,
    /// Declared dead by the leader (every lease it can hold has ended, plus the margin).
    Down,
}
