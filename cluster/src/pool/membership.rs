//! Membership: the first node bootstraps the pool (its shard map and its own record), the others
//! join through any member (carried to the leader), retrying until they are in; the leader admits a
//! joining node as a learner, then as a voter while the pool has fewer than `max_voters`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use medpool_proto::cluster::{JoinReply, JoinRequest};
use openraft::ChangeMembers;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;

use crate::command::Command;
use crate::tls::Expect;
use crate::typ::{NodeAddrs, NodeId};

use super::Pool;

impl Pool {
    pub(super) async fn membership_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let id = self.opts.node_id;
        let initialized = self.raft.is_initialized().await.unwrap_or(false);
        if self.opts.join.is_empty() && !initialized {
            let mut members = BTreeMap::new();
            members.insert(id, self.opts.addrs.clone());
            if let Err(e) = self.raft.initialize(members).await {
                tracing::warn!(error = %e, "initialize");
            }
        }
        // Bootstrap (first node) or join (others), retrying until it sticks.
        loop {
            if *stop.borrow() {
                return;
            }
            let done = if self.opts.join.is_empty() {
                self.bootstrap_once().await
            } else {
                self.join_once().await
            };
            if done {
                tracing::info!(node = id, "member of the pool");
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    pub(super) async fn bootstrap_once(&self) -> bool {
        if self.raft.current_leader().await != Some(self.opts.node_id) {
            return self.reader.read(|s| s.node(self.opts.node_id).is_some());
        }
        let _ = self
            .write(Command::Bootstrap {
                shard_count: self.opts.shard_count,
            })
            .await;
        // The pool-wide secret, made here once (this node's record is not in yet: the pool is
        // new). A pool bootstrapped before secrets existed gets one from its leader's task.
        if self.reader.read(|s| s.pool_secret().is_none())
            && let Some(secret) = new_secret()
        {
            let _ = self.write(Command::SetPoolSecret { secret }).await;
        }
        self.write(Command::AddNode {
            id: self.opts.node_id,
            addresses: self.opts.addrs.clone(),
            voter: true,
        })
        .await
        .is_ok()
    }

    pub(super) async fn join_once(&self) -> bool {
        let req = JoinRequest {
            node_id: self.opts.node_id,
            raft_addr: self.opts.addrs.raft_addr.clone(),
            sip_addr: self.opts.addrs.sip_addr.clone(),
            admin_addr: self.opts.addrs.admin_addr.clone(),
        };
        // A join address is any member of the pool (its node id is not known); the leader it
        // names is verified as that node.
        let mut targets: Vec<(String, Expect)> = self
            .opts
            .join
            .iter()
            .map(|a| (a.clone(), Expect::AnyMember))
            .collect();
        let mut tried = 0;
        while let Some((addr, expect)) = targets.pop() {
            tried += 1;
            if tried > 8 {
                break;
            }
            let Ok(mut c) = self.dialer.client(&addr, expect) else {
                continue;
            };
            match tokio::time::timeout(Duration::from_secs(10), c.join(req.clone())).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    if r.accepted {
                        return true;
                    }
                    if !r.leader_addr.is_empty() && r.leader_addr != addr {
                        targets.push((r.leader_addr, Expect::Node(r.leader_id)));
                    } else if !r.error.is_empty() {
                        tracing::debug!(%addr, error = %r.error, "join refused");
                    }
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "join failed"),
                Err(_) => tracing::debug!(%addr, "join timed out"),
            }
        }
        false
    }

    pub(super) async fn handle_join(&self, req: JoinRequest) -> JoinReply {
        let me = self.opts.node_id;
        let leader = self.raft.current_leader().await;
        if leader != Some(me) {
            let leader_addr = leader
                .and_then(|l| {
                    self.reader
                        .read(|s| s.node(l).map(|n| n.addresses.raft_addr.clone()))
                })
                .unwrap_or_default();
            return JoinReply {
                leader_id: leader.unwrap_or(0),
                leader_addr,
                accepted: false,
                error: "not the leader".into(),
            };
        }
        let addrs = NodeAddrs {
            raft_addr: req.raft_addr,
            sip_addr: req.sip_addr,
            admin_addr: req.admin_addr,
        };
        let fail = |e: String| JoinReply {
            accepted: false,
            error: e,
            ..JoinReply::default()
        };
        if let Err(e) = self
            .raft
            .add_learner(req.node_id, addrs.clone(), true)
            .await
        {
            return fail(e.to_string());
        }
        let metrics = self.raft.metrics().borrow_watched().clone();
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let voter =
            voters.contains(&req.node_id) || voters.len() < self.opts.max_voters.clamp(1, 5);
        if voter && !voters.contains(&req.node_id) {
            let mut ids = BTreeSet::new();
            ids.insert(req.node_id);
            if let Err(e) = self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(ids), true)
                .await
            {
                return fail(e.to_string());
            }
        }
        // The node counts as heard only once its own lease heartbeat arrives: shards go only to nodes
        // that can act for them.
        match self
            .write(Command::AddNode {
                id: req.node_id,
                addresses: addrs,
                voter,
            })
            .await
        {
            Ok(_) => JoinReply {
                leader_id: me,
                accepted: true,
                ..JoinReply::default()
            },
            Err(e) => fail(e.to_string()),
        }
    }
}

/// 32 random bytes from the system's generator (`None` if it fails: the pool then has no secret).
pub(super) fn new_secret() -> Option<[u8; 32]> {
    use ring::rand::SecureRandom;
    let mut secret = [0u8; 32];
    match ring::rand::SystemRandom::new().fill(&mut secret) {
        Ok(()) => Some(secret),
        Err(_) => {
            tracing::error!("no random bytes for the pool secret");
            None
        }
    }
}
