//! The leader's failure detector and rebalancer: every 50 ms the leader reads until when each node's
//! lease from it may run and asks [`judge`] what follows (nodes down or back, the alive set), then
//! plans shard moves; it proposes those decisions to its own Raft only, in one batch (the nodes'
//! states and the moves are appended, replicated and committed together).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
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

/// How often the leader judges: a lease's end is noticed at most this late.
const PASS: Duration = Duration::from_millis(50);

impl Pool {
    /// Proposes a decision this node took as leader (a node down or back, shard moves) to its own
    /// Raft only. Never forwarded nor retried elsewhere: a deposed leader's view of who is alive is
    /// stale (a leader cut off by a partition hears nobody), and carried to the new leader it would
    /// declare live nodes down and hand their shards over without a fence. Not committed in this
    /// node's term, it is dropped; the current leader decides again from its own view.
    pub(super) async fn write_as_leader(&self, cmd: Command) {
        self.write_batch_as_leader(vec![cmd]).await;
    }

    /// Proposes several decisions as one batch (see [`Pool::write_as_leader`]): appended in this
    /// order, replicated and committed together — one round instead of one per command.
    async fn write_batch_as_leader(&self, commands: Vec<Command>) {
        match self.raft.client_write_many(commands).await {
            Ok(results) => {
                let results: Vec<_> = results.collect().await;
                for r in results {
                    match r {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => tracing::debug!(
                            error = %e,
                            "leader decision not committed (no longer leader)"
                        ),
                        Err(e) => tracing::debug!(error = %e, "leader decision lost: Raft stopped"),
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "leader decisions not appended (no longer leader)")
            }
        }
    }

    pub(super) async fn leader_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PASS) => {}
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
                        // A new leader has granted no lease yet, and an earlier leader's may run
                        // until L after its election: it waits that long (plus the margin) before it
                        // declares a node it has not heard down.
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
                            h.leases.clear();
                            h.condemned.clear();
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
            let nodes: BTreeMap<NodeId, NodeState> = self
                .reader
                .read(|s| s.nodes().iter().map(|(id, n)| (*id, n.state)).collect());
            // Judged under the grants' lock: a node found silent here gets no lease until its
            // Down (and the move of its shards) is applied.
            let judgement = {
                let Ok(mut h) = self.heard.lock() else {
                    continue;
                };
                let judgement = judge(&Observation {
                    me,
                    nodes: &nodes,
                    leases: &h.leases,
                    leading_since: since,
                    now: Instant::now(),
                    margin: self.opts.margin,
                    settle: self.opts.lease + self.opts.margin,
                });
                let down: Vec<NodeId> = judgement.down().collect();
                h.condemned.extend(down);
                judgement
            };
            if !judgement.settled {
                continue;
            }
            for id in judgement.down() {
                tracing::warn!(
                    node = id,
                    "node declared down: its lease is over (plus the margin)"
                );
            }
            let moves = self.reader.read(|s| plan_moves(s, &judgement.alive));
            if !moves.is_empty() {
                tracing::info!(moves = moves.len(), "rebalancing shards");
            }
            let condemned: Vec<NodeId> = judgement.down().collect();
            let mut batch = judgement.commands;
            if !moves.is_empty() {
                batch.push(Command::MoveShards { moves });
            }
            if !batch.is_empty() {
                self.write_batch_as_leader(batch).await;
            }
            if !condemned.is_empty()
                && let Ok(mut h) = self.heard.lock()
            {
                for id in condemned {
                    h.condemned.remove(&id);
                }
            }
        }
    }
}
