//! Leases: every L/4, and at once when it learns of a new leader, a node sends the leader a
//! heartbeat carrying its acting epoch; the leader grants it (and counts the node as heard in its
//! term) only while it has a quorum acknowledgement younger than F (L/4, at least 250 ms), the
//! node's shard map is as new as its own, and no shard move in its log that it has not applied yet
//! may take a shard from the node (`store/pending.rs`). A granted lease lasts L from when the
//! heartbeat was *sent*; without a valid lease a node may not act for any shard
//! ([`Pool::may_act`]). The heartbeat also carries the sender's report on earlier terms (`prior.rs`), which a new leader
//! uses to bound when the leases of earlier leaders have ended (`judge::prior_leases_end`).

use std::sync::Arc;
use std::time::Duration;

use medpool_proto::cluster::{LeaseReply, LeaseRequest};
use openraft::async_runtime::watch::WatchReceiver;

use super::judge::PriorReport;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::audit::Record;
use crate::typ::NodeId;

use super::{Pool, now_pair};

/// What a leader's map says of a node asking for a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum MapCheck {
    /// Its acting epoch is as new as our applied map, and no pending move takes a shard from it.
    Current,
    /// Its acting epoch is older than our applied map.
    Stale,
    /// A move in our log that we have not applied yet may take a shard from it.
    LosesShards,
}

/// The least grant freshness F (see [`Pool::grant_fresh`]).
const MIN_FRESH: Duration = Duration::from_millis(250);

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

    /// F: a leader grants a lease only while its last quorum acknowledgement is younger than this:
    /// L/4, and at least 2.5 Raft heartbeat intervals (a quorum acknowledgement is normally up to
    /// one interval, a tick and a round trip old).
    pub(super) fn grant_fresh(&self) -> Duration {
        (self.opts.lease / 4).max(MIN_FRESH)
    }

    /// G: how long a new leader gives the nodes to reach it before it may declare one it has not
    /// heard down (one heartbeat period, plus the margin).
    pub(super) fn grace(&self) -> Duration {
        self.opts.lease / 4 + self.opts.margin
    }

    pub(super) async fn handle_lease(&self, req: LeaseRequest) -> LeaseReply {
        let me = self.opts.node_id;
        let m = self.raft.metrics().borrow_watched().clone();
        let leading = m.current_leader == Some(me);
        let term = m.current_term;
        let is_leader = leading && self.leader_has_quorum();
        let now = Instant::now();
        // Only members are remembered (the maps stay as small as the pool).
        let member = self.reader.read(|s| s.node(req.node_id).is_some());
        if leading
            && member
            && let Ok(mut seen) = self.seen.lock()
        {
            seen.insert(req.node_id, (term, now));
        }
        // The sender's report on earlier terms, for this leader's term only (durations, measured
        // when it sent: converted to our clock they can only come out later than the truth).
        if leading
            && member
            && req.term == term
            && term != 0
            && let Ok(mut r) = self.prior_reports.lock()
        {
            let back = |us: Option<u64>| {
                us.map(|us| {
                    now.checked_sub(Duration::from_micros(us))
                        .unwrap_or(self.epoch)
                })
            };
            r.insert(
                req.node_id,
                (
                    term,
                    PriorReport {
                        heard: back(req.prior_heard_ago_us),
                        granted: back(req.prior_granted_ago_us),
                    },
                ),
            );
        }
        // A node that has not applied the current shard map yet (it restarted on old data, it is
        // catching up) may not act: no lease until its map is as new as the leader's. Only a node
        // granted a lease counts as alive, so shards go only to nodes that can act for them at once.
        // The epoch a node sends is its acting epoch: it has applied that map *and* taken every shard
        // the map moved away out of its acting set (the hand-over fence relies on it). The leader's
        // own heartbeat is held to the same rule.
        // Nor may a node that a move in our log, not yet in our applied map, takes shards from:
        // a new leader applies the entries of earlier terms only once it has committed one of its
        // own, and until then its map can still give that node shards another node already acts
        // for (the hand-over fence relies on it; `store/pending.rs`).
        let map = self.map_check(req.node_id, req.map_epoch, term);
        let granted = is_leader && map == MapCheck::Current;
        if is_leader && map == MapCheck::LosesShards {
            // Refused only until the move applies (normally milliseconds; seconds on a starved
            // pool). Still counted as heard, so that the failure detector keeps the node alive and
            // the rebalancer does not move its remaining shards away because it waited: the
            // detector's bounds only grow with a later "grant", so this delays nothing unsafely.
            if let Ok(mut h) = self.heard.lock() {
                h.insert(req.node_id, (term, Instant::now()));
            }
        }
        if granted {
            // Recorded after the decision: a lease runs from before this instant, so it ends before
            // this instant + L (the failure detector and later leaders rely on it).
            let at = Instant::now();
            if let Ok(mut h) = self.heard.lock() {
                h.insert(req.node_id, (term, at));
            }
            if let Ok(mut g) = self.grants.lock() {
                g.record(term, at);
            }
        }
        LeaseReply {
            granted,
            sent_at_ms: req.sent_at_ms,
            leader_id: me,
        }
    }

    /// This node's report on the terms before `term` (see `prior.rs`): when it last heard a leader
    /// of an earlier term, when it last granted a lease as one.
    pub(super) fn prior_report(&self, term: u64) -> PriorReport {
        PriorReport {
            heard: self.leader_rpcs.lock().ok().and_then(|c| c.before(term)),
            granted: self.grants.lock().ok().and_then(|c| c.before(term)),
        }
    }

    /// An RPC from the leader of `term` arrived (AppendEntries or a snapshot): recorded before Raft
    /// sees it, so the instant is never earlier than that of any acknowledgement it leads to.
    pub(super) fn leader_rpc(&self, term: u64) {
        if let Ok(mut c) = self.leader_rpcs.lock() {
            c.record(term, Instant::now());
        }
    }

    /// Whether a node whose acting epoch is `acting_epoch` acts on a map as new as ours: its epoch
    /// is at least our applied map's, and no shard move of an earlier term than `term` (ours) in
    /// our log that our applied map does not hold yet may take a shard from it
    /// (`store/pending.rs`). Both read one applied state: a move applied between two reads would
    /// otherwise be in neither. A leader's own moves are not counted: it applies what it commits
    /// within moments, as it did before (the fence's margin m covers that), while the moves of its
    /// predecessors wait until it has committed an entry of its own, under load a second or more.
    pub(super) fn map_check(&self, node: NodeId, acting_epoch: u64, term: u64) -> MapCheck {
        let pending = self
            .pending_moves
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.reader.read_applied(|s, applied| {
            if acting_epoch < s.shards().iter().map(|e| e.epoch).sum::<u64>() {
                MapCheck::Stale
            } else if !pending.is_empty()
                && pending
                    .losers(applied.map(|a| a.index), term, |shard| s.owner_of(shard))
                    .contains(&node)
            {
                MapCheck::LosesShards
            } else {
                MapCheck::Current
            }
        })
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
                .is_some_and(|t| openraft::Instant::elapsed(&**t) < self.grant_fresh())
    }

    pub(super) async fn lease_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let period = self.opts.lease / 4;
        // Server metrics change only with the vote, the leader or the membership (not with every
        // append): watching them costs no wake-ups under load.
        let mut server = self.raft.server_metrics();
        let mut last_leader = None;
        let mut next = Instant::now();
        loop {
            // Every L/4, and at once when the leader changes: a new leader hears the live nodes
            // (and their reports on earlier terms) within a round trip of its election, and the
            // nodes' leases are renewed before the old leader's grants run out.
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(next) => break,
                    r = server.changed() => {
                        if r.is_err() {
                            return;
                        }
                        let leader = server.borrow_watched().current_leader;
                        if leader.is_some() && leader != last_leader {
                            break;
                        }
                    }
                    _ = stop.changed() => return,
                }
            }
            next = Instant::now() + period;
            // Read before the send time: a lease that counts from `sent` was asked for by a node whose
            // acting set already reflected this epoch (the audit report relies on the order).
            let map_epoch = self.acting_epoch();
            let (sent, sent_us) = now_pair();
            let sent_ms = self.now_ms();
            let me = self.opts.node_id;
            let (leader, term) = {
                let m = server.borrow_watched();
                (m.current_leader, m.vote.leader_id().term)
            };
            last_leader = leader;
            let report = self.prior_report(term);
            let ago = |t: Option<Instant>| {
                t.map(|t| {
                    u64::try_from(sent.saturating_duration_since(t).as_micros()).unwrap_or(u64::MAX)
                })
            };
            let req = LeaseRequest {
                node_id: me,
                sent_at_ms: sent_ms,
                map_epoch,
                term,
                prior_heard_ago_us: ago(report.heard),
                prior_granted_ago_us: ago(report.granted),
            };
            let granted = match leader {
                Some(l) if l == me => self.handle_lease(req).await.granted,
                Some(l) => match self.client_for(l) {
                    Some(mut c) => matches!(
                        tokio::time::timeout(period, c.lease(req)).await,
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
