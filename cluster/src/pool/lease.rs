//! Leases: every L/4 (and at once when the leader changes) a node sends the leader a heartbeat
//! carrying its acting epoch; the leader grants it (and counts the node as alive until the lease's
//! end) only while it leads, the node's shard map is as new as its own and the node is not being
//! declared down. A granted lease lasts from when the heartbeat was *sent* until L after the
//! leader's last quorum acknowledgement ([`Pool::authority`]): never longer than L, and never past
//! the moment a later leader could be elected. Without a valid lease a node may not act for any
//! shard ([`Pool::may_act`]).

use std::sync::Arc;
use std::time::Duration;

use medpool_proto::cluster::{LeaseReply, LeaseRequest};
use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::audit::Record;
use crate::typ::{NodeId, RaftMetrics, TypeConfig};

use super::{Pool, now_pair};

/// How long a granted lease lasts: what the leader granted, or an hour with the test-only planted
/// fault (a node that was frozen still believes it may act when it wakes: the lease gate is
/// effectively skipped).
fn lease_len(granted: Duration) -> Duration {
    if cfg!(feature = "planted-fault-skip-lease") {
        Duration::from_secs(3600)
    } else {
        granted
    }
}

/// How long the lease a leader granted lasts, from its reply: `valid_ms` capped at L (0, from a
/// leader that predates the field: L).
fn granted_len(valid_ms: u64, lease: Duration) -> Duration {
    match valid_ms {
        0 => lease,
        ms => Duration::from_millis(ms).min(lease),
    }
}

/// How long a lease granted now may last, when the leader's last quorum acknowledgement was sent
/// `acked_ago` ago: until L after it (`None` once that is past).
pub(super) fn authority_left(lease: Duration, acked_ago: Duration) -> Option<Duration> {
    lease
        .checked_sub(acked_ago)
        .filter(|left| *left >= Duration::from_millis(1))
}

impl Pool {
    /// Whether our lease is valid now.
    pub fn holds_lease(&self) -> bool {
        self.lease_until
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| Instant::now() < t)
    }
    /// How long ago our lease was last renewed (for status).
    pub fn lease_remaining(&self) -> Option<Duration> {
        self.lease_until
            .lock()
            .ok()
            .and_then(|l| *l)
            .map(|t| t.saturating_duration_since(Instant::now()))
    }

    /// As leader: how long a lease granted now may last — until L after the send time of the last
    /// heartbeat or append a quorum of voters acknowledged (openraft's `last_quorum_acked`). Every
    /// voter of that quorum acknowledged before it could vote for a later leader, and any later
    /// leader's voting quorum holds one of them: so a lease granted here is over before L after a
    /// later leader's election ([`Pool::leader_task`] waits that long before it judges a node it has
    /// not heard). A lone voter has no one to be deposed by: L. `None` when this node does not lead
    /// (or its last acknowledgement is older than L).
    pub(super) fn authority(&self) -> Option<Duration> {
        let m = self.raft.metrics().borrow_watched().clone();
        if m.current_leader != Some(self.opts.node_id) {
            return None;
        }
        if m.membership_config.membership().voter_ids().count() <= 1 {
            return Some(self.opts.lease);
        }
        let acked = m.last_quorum_acked.as_ref()?;
        authority_left(self.opts.lease, openraft::Instant::elapsed(&**acked))
    }

    pub(super) async fn handle_lease(&self, req: LeaseRequest) -> LeaseReply {
        let me = self.opts.node_id;
        let leads = self.raft.current_leader().await == Some(me);
        // A node that has not applied the current shard map yet (it restarted on old data, it is
        // catching up) may not act: no lease until its map is as new as the leader's. Only a node
        // granted a lease counts as alive, so shards go only to nodes that can act for them at once.
        // The epoch a node sends is its acting epoch: it has applied that map *and* taken every shard
        // the map moved away out of its acting set (the hand-over fence relies on it). The leader's
        // own heartbeat is held to the same rule.
        let current = req.map_epoch >= self.map_epoch();
        let valid = if leads && current {
            self.grant(req.node_id)
        } else {
            None
        };
        LeaseReply {
            granted: valid.is_some(),
            sent_at_ms: req.sent_at_ms,
            leader_id: me,
            valid_ms: valid.map_or(0, |v| u64::try_from(v.as_millis()).unwrap_or(u64::MAX)),
        }
    }

    /// Grants `node` a lease of what our authority leaves, unless the failure detector is declaring
    /// it down; records until when it may run (on our clock: the node counts it from the send of
    /// its heartbeat, which came before now).
    fn grant(&self, node: NodeId) -> Option<Duration> {
        let valid = self.authority()?;
        let mut hearing = self.heard.lock().ok()?;
        if hearing.condemned.contains(&node) {
            return None;
        }
        hearing.leases.insert(node, Instant::now() + valid);
        Some(valid)
    }

    /// The sum of the shard epochs in the applied state: it grows with every shard move.
    pub fn map_epoch(&self) -> u64 {
        self.reader
            .read(|s| s.shards().iter().map(|e| e.epoch).sum())
    }

    pub(super) async fn lease_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let period = self.opts.lease / 4;
        let mut metrics = self.raft.metrics();
        // The leader the last heartbeat went to, and whether it granted it.
        let mut asked: Option<NodeId> = None;
        let mut granted = false;
        let mut first = true;
        loop {
            // The first heartbeat goes at once: a starting node gets its lease (and shards) sooner.
            // So does the first one to a new leader (its failure detector waits until it has heard
            // every live node, or L + margin). A refused heartbeat (a leader without a fresh quorum
            // acknowledgement yet, a map still catching up) is sent again sooner.
            if !first {
                let wait = if granted { period } else { period / 4 };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = leader_other_than(&mut metrics, asked) => {}
                    _ = stop.changed() => return,
                }
            }
            first = false;
            // Read before the send time: a lease that counts from `sent` was asked for by a node whose
            // acting set already reflected this epoch (the audit report relies on the order).
            let map_epoch = self.acting_epoch();
            let (sent, sent_us) = now_pair();
            let sent_ms = self.now_ms();
            let me = self.opts.node_id;
            let leader = self.raft.current_leader().await;
            asked = leader;
            let request = LeaseRequest {
                node_id: me,
                sent_at_ms: sent_ms,
                map_epoch,
            };
            let reply = match leader {
                Some(l) if l == me => Some(self.handle_lease(request).await),
                Some(l) => match self.client_for(l) {
                    Some(mut c) => match tokio::time::timeout(period, c.lease(request)).await {
                        Ok(Ok(r)) => Some(r.into_inner()),
                        _ => None,
                    },
                    None => None,
                },
                None => None,
            };
            let valid = reply
                .filter(|r| r.granted)
                .map(|r| granted_len(r.valid_ms, self.opts.lease));
            granted = valid.is_some();
            if let Some(valid) = valid {
                // The lease counts from when the heartbeat was *sent* (ARCHITECTURE.md, "The pool": leases).
                let len = lease_len(valid);
                if let Ok(mut l) = self.lease_until.lock() {
                    *l = Some(sent + len);
                }
                if let Some(a) = &self.audit {
                    a.write(&Record::Lease {
                        node: me,
                        from_us: sent_us,
                        until_us: sent_us
                            .saturating_add(u64::try_from(len.as_micros()).unwrap_or(u64::MAX)),
                    });
                }
            }
        }
    }
}

/// Resolves once Raft knows a leader other than `asked` (never, once Raft has stopped).
async fn leader_other_than(
    metrics: &mut openraft::alias::WatchReceiverOf<TypeConfig, RaftMetrics>,
    asked: Option<NodeId>,
) {
    loop {
        let leader = metrics.borrow_watched().current_leader;
        if leader.is_some() && leader != asked {
            return;
        }
        if metrics.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_never_outlives_the_leaders_authority() {
        let l = Duration::from_millis(800);
        assert_eq!(
            authority_left(l, Duration::from_millis(50)),
            Some(Duration::from_millis(750))
        );
        assert_eq!(authority_left(l, Duration::ZERO), Some(l));
        assert_eq!(authority_left(l, l), None);
        assert_eq!(authority_left(l, Duration::from_secs(5)), None);
    }

    #[test]
    fn a_reply_is_capped_at_l() {
        let l = Duration::from_millis(800);
        assert_eq!(granted_len(0, l), l, "a leader from before valid_ms: L");
        assert_eq!(granted_len(300, l), Duration::from_millis(300));
        assert_eq!(granted_len(5000, l), l);
    }
}
