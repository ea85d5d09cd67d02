//! The leader's failure detector and rebalancer: every 50 ms the leader reads whom it has granted
//! leases in its term and what the voters reported of earlier terms, asks [`judge`] what follows
//! (nodes down or back, the alive set), then plans shard moves; it proposes those decisions to its
//! own Raft only, a node's `Down` and the moves it causes in one append (one commit round).

use std::collections::{BTreeMap, BTreeSet};
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

use super::judge::{
    Observation, PriorReport, PriorView, forgive_own_stall, judge, prior_leases_end,
};
use super::{Pool, now_pair};

/// How often the leader's failure detector looks (a pass is a few map reads when nothing changes).
const PASS: Duration = Duration::from_millis(50);

impl Pool {
    /// Proposes a decision this node took as leader (a node down or back, shard moves) to its own
    /// Raft only. Never forwarded nor retried elsewhere: a deposed leader's view of who is alive is
    /// stale (a leader cut off by a partition hears nobody), and carried to the new leader it would
    /// declare live nodes down and hand their shards over without a fence. Not committed in this
    /// node's term, it is dropped; the current leader decides again from its own view.
    pub(super) async fn write_as_leader(&self, cmd: Command) {
        self.write_all_as_leader(vec![cmd]).await;
    }

    /// [`Pool::write_as_leader`] for several commands, appended together in this order (one message
    /// to Raft, one replication round): a `Down` and the moves it causes are applied in order and
    /// commit together, or neither does.
    pub(super) async fn write_all_as_leader(&self, cmds: Vec<Command>) {
        match self.raft.client_write_many(cmds).await {
            Ok(mut results) => {
                while let Some(r) = results.next().await {
                    match r {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "leader decision not committed (no longer leader)");
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "leader decision not committed (Raft stopped)");
                            return;
                        }
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "leader decision not committed (Raft stopped)"),
        }
    }

    pub(super) async fn leader_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        // When this node last saw its membership change: its start, then each change it observes
        // (a pass late at most, which only makes the bound later).
        let mut membership = (None, Instant::now());
        // When the previous pass began, and the last stall of this node seen by the passes: when
        // it went quiet and when it resumed (judge.rs, `forgive_own_stall`). Measured from the
        // start of the previous pass, so a stall inside its awaits counts too; a slow commit of
        // its own decisions counts as well, which only delays the next declarations.
        let mut last_pass = Instant::now();
        let mut stall: Option<(Instant, Instant)> = None;
        // The last rebalancing plan logged at INFO: a leader cut off from the others plans the same
        // moves every pass and can commit none; it says so once, then at DEBUG.
        let mut last_plan: Option<(usize, usize)> = None;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PASS) => {}
                _ = stop.changed() => return,
            }
            let pass_at = Instant::now();
            if pass_at.saturating_duration_since(last_pass) > PASS + PASS + self.opts.margin {
                tracing::info!(
                    stalled_ms =
                        u64::try_from(pass_at.saturating_duration_since(last_pass).as_millis())
                            .unwrap_or(u64::MAX),
                    "this node's failure detector ran late (the node stalled or was starved): as leader it does not judge the others by the silence of that time"
                );
                stall = Some((last_pass, pass_at));
            }
            last_pass = pass_at;
            let me = self.opts.node_id;
            let m = self.raft.metrics().borrow_watched().clone();
            let log_id = *m.membership_config.log_id();
            if membership.0 != log_id {
                membership = (log_id, Instant::now());
            }
            if m.current_leader != Some(me) {
                if let Ok(mut l) = self.leading_since.lock() {
                    *l = None;
                }
                last_plan = None;
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
                        let (now, now_us) = now_pair();
                        *l = Some((term, now));
                        if let Some(a) = &self.audit {
                            a.write(&Record::Leader {
                                node: me,
                                term,
                                at_us: now_us,
                            });
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
            // Grants of this term only: an earlier term's are bounded by the voters' reports.
            let mut heard: BTreeMap<NodeId, Instant> = self
                .heard
                .lock()
                .map(|mut h| {
                    h.retain(|_, (t, _)| *t == term);
                    h.iter().map(|(id, (_, at))| (*id, *at)).collect()
                })
                .unwrap_or_default();
            let window = self.opts.lease + self.opts.margin;
            if let Some((went_quiet, resumed)) = stall {
                if pass_at < resumed + window {
                    forgive_own_stall(&mut heard, went_quiet, resumed, window);
                } else {
                    stall = None;
                }
            }
            let seen: BTreeMap<NodeId, Instant> = self
                .seen
                .lock()
                .map(|mut h| {
                    h.retain(|_, (t, _)| *t == term);
                    h.iter().map(|(id, (_, at))| (*id, *at)).collect()
                })
                .unwrap_or_default();
            let mut reports: BTreeMap<NodeId, PriorReport> = self
                .prior_reports
                .lock()
                .map(|mut r| {
                    r.retain(|_, (t, _)| *t == term);
                    r.iter().map(|(id, (_, rep))| (*id, *rep)).collect()
                })
                .unwrap_or_default();
            reports.insert(me, self.prior_report(term));
            let voter_sets: Vec<BTreeSet<NodeId>> =
                m.membership_config.membership().get_joint_config().clone();
            let prior_end = prior_leases_end(&PriorView {
                voter_sets: &voter_sets,
                reports: &reports,
                leading_since: since,
                membership_since: membership.1,
                lease: self.opts.lease,
                fresh: self.grant_fresh(),
            });
            let nodes: BTreeMap<NodeId, NodeState> = self
                .reader
                .read(|s| s.nodes().iter().map(|(id, n)| (*id, n.state)).collect());
            let judgement = judge(&Observation {
                me,
                nodes: &nodes,
                heard: &heard,
                seen: &seen,
                can_grant: self.leader_has_quorum(),
                leading_since: since,
                prior_end,
                now: Instant::now(),
                lease: self.opts.lease,
                margin: self.opts.margin,
                grace: self.grace(),
            });
            if !judgement.settled {
                continue;
            }
            let mut writes = Vec::new();
            let mut down = BTreeSet::new();
            for command in judgement.commands {
                if let Command::SetNodeState {
                    id,
                    state: NodeState::Down,
                } = &command
                {
                    let last_grant_ms = heard
                        .get(id)
                        .map(|t| u64::try_from(t.elapsed().as_millis()).unwrap_or(u64::MAX));
                    tracing::warn!(
                        node = id,
                        last_grant_ms,
                        leading_ms = u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX),
                        "node declared down: its leases are over"
                    );
                    down.insert(*id);
                }
                writes.push(command);
            }
            let alive = judgement.alive;
            // Planned on the state as it will be once the `Down`s above apply: the moves only read
            // who is alive, which already leaves the down nodes out.
            let moves = self.reader.read(|s| plan_moves(s, &alive));
            if moves.is_empty() {
                last_plan = None;
            } else {
                let plan = (moves.len(), down.len());
                if last_plan == Some(plan) {
                    tracing::debug!(moves = plan.0, down = plan.1, "rebalancing shards (again)");
                } else {
                    tracing::info!(moves = plan.0, down = plan.1, "rebalancing shards");
                }
                last_plan = Some(plan);
                writes.push(Command::MoveShards { moves });
            }
            if !writes.is_empty() {
                self.write_all_as_leader(writes).await;
            }
        }
    }
}
