//! The leader's failure detector and rebalancer: every 200 ms the leader reads who it has heard
//! from (lease heartbeats), declares nodes silent for longer than L + margin down and heard ones
//! back, plans shard moves, and proposes those decisions to its own Raft only.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;

use crate::audit::Record;
use crate::command::Command;
use crate::rebalance::plan_moves;
use crate::state::NodeState;
use crate::typ::NodeId;

use super::{Pool, now_pair};

impl Pool {
    /// Proposes a decision this node took as leader (a node down or back, shard moves) to its own
    /// Raft only. Never forwarded nor retried elsewhere: a deposed leader's view of who is alive is
    /// stale (a leader cut off by a partition hears nobody), and carried to the new leader it would
    /// declare live nodes down and hand their shards over without a fence. Not committed in this
    /// node's term, it is dropped; the current leader decides again from its own view.
    pub(super) async fn write_as_leader(&self, cmd: Command) {
        if let Err(e) = self.raft.client_write(cmd).await {
            tracing::debug!(error = %e, "leader decision not committed (no longer leader)");
        }
    }

    pub(super) async fn leader_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
            let me = self.opts.node_id;
            let m = self.raft.metrics().borrow_watched().clone();
            if m.current_leader != Some(me) {
                if let Ok(mut l) = self.leading_since.lock() {
                    *l = None;
                }
                continue;
            }
            let term = m.current_term;
            let since = {
                let Ok(mut l) = self.leading_since.lock() else {
                    continue;
                };
                match *l {
                    Some((t, at)) if t == term => at,
                    _ => {
                        // A new leader has heard nobody yet: it waits L + margin before declaring anyone down.
                        let (now, now_us) = now_pair();
                        *l = Some((term, now));
                        if let Some(a) = &self.audit {
                            a.write(&Record::Leader {
                                node: me,
                                term,
                                at_us: now_us,
                            });
                        }
                        if let Ok(mut h) = self.heard.lock() {
                            h.clear();
                        }
                        now
                    }
                }
            };
            if !self.reader.read(|s| s.is_bootstrapped()) {
                continue;
            }
            let window = self.opts.lease + self.opts.margin;
            let heard = self.heard.lock().map(|h| h.clone()).unwrap_or_default();
            let nodes = self.reader.read(|s| s.nodes().clone());
            let heard_recently =
                |id: &NodeId| *id == me || heard.get(id).is_some_and(|t| t.elapsed() < window);
            // A new leader knows who is alive once it has heard from every node, or once L + margin
            // has passed (then silence means down). Until then it moves nothing.
            let settled = since.elapsed() >= window
                || nodes
                    .iter()
                    .all(|(id, n)| n.state == NodeState::Down || heard_recently(id));
            if !settled {
                continue;
            }
            let mut alive = BTreeSet::new();
            for (id, rec) in &nodes {
                let recent = heard_recently(id);
                match rec.state {
                    NodeState::Active | NodeState::Draining if !recent => {
                        tracing::warn!(
                            node = id,
                            "node silent for longer than lease + margin: down"
                        );
                        self.write_as_leader(Command::SetNodeState {
                            id: *id,
                            state: NodeState::Down,
                        })
                        .await;
                    }
                    NodeState::Down if recent => {
                        self.write_as_leader(Command::SetNodeState {
                            id: *id,
                            state: NodeState::Active,
                        })
                        .await;
                    }
                    _ => {}
                }
                if recent {
                    alive.insert(*id);
                }
            }
            let moves = self.reader.read(|s| plan_moves(s, &alive));
            if !moves.is_empty() {
                tracing::info!(moves = moves.len(), "rebalancing shards");
                self.write_as_leader(Command::MoveShards { moves }).await;
            }
        }
    }
}
