//! Leases: every L/4 a node sends the leader a heartbeat carrying its acting epoch; the leader
//! grants it (and counts the node as heard) only while it has a quorum and the node's shard map is
//! as new as its own. A granted lease lasts L from when the heartbeat was *sent*; without a valid
//! lease a node may not act for any shard ([`Pool::may_act`]).

use std::sync::Arc;
use std::time::Duration;

use medpool_proto::cluster::{LeaseReply, LeaseRequest};
use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::audit::Record;

use super::{Pool, now_pair};

/// How long a granted lease lasts: L, or an hour with the test-only planted fault (a node that was
/// frozen still believes it may act when it wakes: the lease gate is effectively skipped).
fn lease_len(lease: Duration) -> Duration {
    if cfg!(feature = "planted-fault-skip-lease") {
        Duration::from_secs(3600)
    } else {
        lease
    }
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

    pub(super) async fn handle_lease(&self, req: LeaseRequest) -> LeaseReply {
        let me = self.opts.node_id;
        let is_leader = self.raft.current_leader().await == Some(me) && self.leader_has_quorum();
        // A node that has not applied the current shard map yet (it restarted on old data, it is
        // catching up) may not act: no lease until its map is as new as the leader's. Only a node
        // granted a lease counts as alive, so shards go only to nodes that can act for them at once.
        // The epoch a node sends is its acting epoch: it has applied that map *and* taken every shard
        // the map moved away out of its acting set (the hand-over fence relies on it). The leader's
        // own heartbeat is held to the same rule.
        let current = req.map_epoch >= self.map_epoch();
        if is_leader
            && current
            && let Ok(mut h) = self.heard.lock()
        {
            h.insert(req.node_id, Instant::now());
        }
        LeaseReply {
            granted: is_leader && current,
            sent_at_ms: req.sent_at_ms,
            leader_id: me,
        }
    }

    /// The sum of the shard epochs in the applied state: it grows with every shard move.
    pub fn map_epoch(&self) -> u64 {
        self.reader
            .read(|s| s.shards().iter().map(|e| e.epoch).sum())
    }

    pub(super) fn leader_has_quorum(&self) -> bool {
        let m = self.raft.metrics().borrow_watched().clone();
        let voters = m.membership_config.membership().voter_ids().count();
        voters <= 1
            || m.last_quorum_acked
                .as_ref()
                .is_some_and(|t| openraft::Instant::elapsed(&**t) < self.opts.lease / 2)
    }

    pub(super) async fn lease_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let period = self.opts.lease / 4;
        let mut first = true;
        loop {
            // The first heartbeat goes at once: a starting node gets its lease (and shards) sooner.
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
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
            let granted = match leader {
                Some(l) if l == me => {
                    self.handle_lease(LeaseRequest {
                        node_id: me,
                        sent_at_ms: sent_ms,
                        map_epoch,
                    })
                    .await
                    .granted
                }
                Some(l) => match self.client_for(l) {
                    Some(mut c) => matches!(
                        tokio::time::timeout(period, c.lease(LeaseRequest { node_id: me, sent_at_ms: sent_ms, map_epoch })).await,
                        Ok(Ok(r)) if r.get_ref().granted
                    ),
                    None => false,
                },
                None => false,
            };
            if granted {
                // The lease counts from when the heartbeat was *sent* (ARCHITECTURE.md, "The pool": leases).
                let len = lease_len(self.opts.lease);
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
