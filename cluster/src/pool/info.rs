//! What a node reports about itself: [`PoolInfo`] (status for the CLI, the demo, tests and the
//! hand-over fence of other nodes) and, with an audit file, every applied configuration version.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;

use crate::audit::{Record, unix_us};
use crate::typ::NodeId;

use super::Pool;

/// The pool as one node sees it (status for the CLI, the demo and tests).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PoolInfo {
    /// This node.
    pub node_id: NodeId,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last applied log index.
    pub applied: Option<u64>,
    /// Whether this node holds its lease.
    pub lease: bool,
    /// Configuration version.
    pub config_version: Option<u64>,
    /// Every node of the applied state.
    pub nodes: Vec<NodeInfo>,
    /// Shards without an owner.
    pub unowned: usize,
    /// Confirmed dialogs recorded.
    pub dialogs: usize,
    /// The map epoch (sum of the shard epochs) of the applied state whose releases this node's
    /// acting set reflects: every shard this node did not own at that epoch, or owned at a later
    /// shard epoch than when it entered the acting set, is out of its acting set and its node side
    /// has been told. Shards adopted at that epoch may still wait behind a
    /// hand-over fence. 0 until the shard watcher's first pass (and from nodes that predate it).
    #[serde(default)]
    pub acting_epoch: u64,
    /// The map epoch of this node's applied state (compare with `acting_epoch`).
    #[serde(default)]
    pub map_epoch: u64,
    /// How many of the shards this node owns in its applied map it acts for (in its acting set:
    /// past any hand-over fence). Equal to its shard count once it has settled.
    #[serde(default)]
    pub acting: usize,
    /// Calls this node is still setting up for shards it no longer acts for (their shard moved
    /// away during their set-up: they finish here), by shard, with their Call-IDs (leg A's and
    /// leg B's). Read after `acting_epoch`, so a hand-over fence that passes on this report sees
    /// every call of the shards released by then. The new owner sends their messages here
    /// (ARCHITECTURE.md, "The pool": hand-over of calls in set-up).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lingering: Vec<(u16, Vec<String>)>,
}

/// One node as [`PoolInfo`] lists it. On the wire (JSON) it is the array
/// `[id, sip_addr, state, shards]`, as before it had names: nodes of different versions read each
/// other's status during a rolling upgrade (the hand-over fence asks for it).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct NodeInfo {
    /// The node's id.
    pub id: NodeId,
    /// Its SIP address.
    pub sip_addr: String,
    /// Its state (`Active`, `Draining`, `Down`).
    pub state: String,
    /// How many shards it owns.
    pub shards: usize,
}

impl serde::Serialize for NodeInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (self.id, &self.sip_addr, &self.state, self.shards).serialize(s)
    }
}

impl Pool {
    /// A status snapshot.
    pub fn info(&self) -> PoolInfo {
        let m = self.raft.metrics().borrow_watched().clone();
        let (nodes, unowned, config_version, dialogs) = self.reader.read(|s| {
            let nodes = s
                .nodes()
                .iter()
                .map(|(id, n)| NodeInfo {
                    id: *id,
                    sip_addr: n.addresses.sip_addr.clone(),
                    state: format!("{:?}", n.state),
                    shards: s.shards_of(*id).len(),
                })
                .collect();
            let unowned = s.shards().iter().filter(|e| e.owner.is_none()).count();
            (nodes, unowned, s.config_version(), s.dialog_count())
        });
        let acting_epoch = self.acting_epoch();
        let lingering = self.sink().map(|s| s.lingering()).unwrap_or_default();
        PoolInfo {
            node_id: self.opts.node_id,
            leader: m.current_leader,
            term: m.current_term,
            applied: m.last_applied.map(|l| l.index),
            lease: self.holds_lease(),
            config_version,
            nodes,
            unowned,
            dialogs,
            acting_epoch,
            map_epoch: self.map_epoch(),
            acting: self
                .reader
                .read(|s| s.shards_of(self.opts.node_id))
                .into_iter()
                .filter(|s| self.acting(*s))
                .count(),
            lingering,
        }
    }

    /// Reports the applied configuration version whenever it changes (audit report only).
    pub(super) async fn audit_config_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(audit) = &self.audit else { return };
        let mut metrics = self.raft.metrics();
        let mut reported = None;
        loop {
            if let Some(version) = self.reader.read(|s| s.config_version())
                && reported != Some(version)
            {
                audit.write(&Record::Config {
                    node: self.opts.node_id,
                    version,
                    at_us: unix_us(SystemTime::now()),
                });
                reported = Some(version);
            }
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::NodeInfo;

    #[test]
    fn a_node_travels_as_the_array_older_nodes_read() {
        let n = NodeInfo {
            id: 2,
            sip_addr: "10.0.0.2:5060".into(),
            state: "Active".into(),
            shards: 5,
        };
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, r#"[2,"10.0.0.2:5060","Active",5]"#);
        assert_eq!(serde_json::from_str::<NodeInfo>(&json).unwrap(), n);
    }
}
