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
    /// Every node: id, SIP address, state, shards owned.
    pub nodes: Vec<(NodeId, String, String, usize)>,
    /// Shards without an owner.
    pub unowned: usize,
    /// Confirmed dialogs recorded.
    pub dialogs: usize,
    /// The map epoch (sum of the shard epochs) of the applied state whose releases this node's
    /// acting set reflects: every shard this node did not own at that epoch is out of its acting set
    /// and its node side has been told. Shards adopted at that epoch may still wait behind a
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
}

impl Pool {
    /// A status snapshot.
    pub fn info(&self) -> PoolInfo {
        let m = self.raft.metrics().borrow_watched().clone();
        let (nodes, unowned, config_version, dialogs) = self.reader.read(|s| {
            let nodes = s
                .nodes()
                .iter()
                .map(|(id, n)| {
                    (
                        *id,
                        n.addresses.sip_addr.clone(),
                        format!("{:?}", n.state),
                        s.shards_of(*id).len(),
                    )
                })
                .collect();
            let unowned = s.shards().iter().filter(|e| e.owner.is_none()).count();
            (nodes, unowned, s.config_version(), s.dialog_count())
        });
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
            acting_epoch: self.acting_epoch(),
            map_epoch: self.map_epoch(),
            acting: self
                .reader
                .read(|s| s.shards_of(self.opts.node_id))
                .into_iter()
                .filter(|s| self.acting(*s))
                .count(),
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
