//! The leader's failure detector and rebalancer: every 200 ms the leader reads who it has heard
//! from (lease heartbeats) and asks [`judge`] what follows (nodes down or back, the alive set), then
//! plans shard moves; it proposes those decisions to its own Raft only.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::audit::Record;
use crate::command::Command;
use crate::rebalance::plan_moves;
use crate::state::NodeState;
use crate::typ::NodeId;

use super::judge::{Observation, judge};
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
            // A pool bootstrapped before pool secrets existed gets one from its leader (a new pool
            // has it from its bootstrap; the first SetPoolSecret wins, a second is refused).
            if self.reader.read(|s| s.pool_secret().is_none())
                && let Some(secret) = super::membership::new_secret()
            {
                self.write_as_leader(Command::SetPoolSecret { secret })
                    .await;
            }
            let heard = self.heard.lock().map(|h| h.clone()).unwrap_or_default();
            let nodes: BTreeMap<NodeId, NodeState> = self
                .reader
                .read(|s| s.nodes().iter().map(|(id, n)| (*id, n.state)).collect());
            let judgement = judge(&Observation {
                me,
                nodes: &nodes,
                heard: &heard,
                leading_since: since,
                now: Instant::now(),
                window: self.opts.lease + self.opts.margin,
            });
            if !judgement.settled {
                continue;
            }
            for command in judgement.commands {
                if let Command::SetNodeState {
                    id,
                    state: NodeState::Down,
                } = &command
                {
                    tracing::warn!(
                        node = id,
                        "node silent for longer than lease + margin: down"
                    );
                }
                self.write_as_leader(command).await;
            }
            let alive = judgement.alive;
            let moves = self.reader.read(|s| plan_moves(s, &alive));
            if !moves.is_empty() {
                tracing::info!(moves = moves.len(), "rebalancing shards");
                self.write_as_leader(Command::MoveShards { moves }).await;
            }
        }
    }
}
