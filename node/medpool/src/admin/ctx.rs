//! What the admin service works on: this node ([`NodeCtx`]), the pool it belongs to ([`Mode`]:
//! a Raft [`Pool`] or the embedded single-node pool), the other nodes' admin APIs ([`Peers`]) and
//! the operator's gateway choices. The pool-level operations (configuration, node states,
//! membership, leadership) live here; `service.rs` only turns requests into calls of these.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medpool_b2bua::config::PoolConfig;
use medpool_b2bua::gateway::AdminState;
use medpool_b2bua::node::NodeCtx;
use medpool_cluster::division::GatewayAdmin;
use medpool_cluster::pool::Pool;
use medpool_cluster::{Command, CommandResult, NodeState};
use medpool_proto::admin::{self as pb, GatewayAdminState};
use openraft::ChangeMembers;
use openraft::async_runtime::watch::WatchReceiver;

use super::diff;
use super::error::{AdminError, NoLeader};
use super::peers::Peers;

/// Longest wait for a write to commit.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// The embedded single-node pool's configuration: kept in memory with a version counter (the file
/// given at start-up is version 1; a restart reads the file again).
#[derive(Debug)]
pub struct Standalone {
    config: Mutex<(Option<u64>, String)>,
}

impl Standalone {
    /// Starts with the text of the configuration file, if any (version 1), else no configuration.
    pub fn new(text: Option<String>) -> Standalone {
        let slot = match text {
            Some(t) => (Some(1), t),
            None => (None, String::new()),
        };
        Standalone {
            config: Mutex::new(slot),
        }
    }
}

/// Which kind of pool this node is part of.
#[derive(Debug)]
pub enum Mode {
    /// The embedded single-node pool (no `--raft-listen`).
    Single(Standalone),
    /// A Raft pool.
    Pool {
        /// The pool runtime.
        pool: Arc<Pool>,
        /// The lease length L.
        lease: Duration,
    },
}

/// Everything the admin service needs.
#[derive(Debug)]
pub struct AdminCtx {
    /// This node.
    pub node: Arc<NodeCtx>,
    /// Its pool.
    pub mode: Mode,
    /// The other nodes' admin APIs.
    pub peers: Peers,
    /// Gateways an operator disabled or drained on this node (absent: enabled); the single-node
    /// pool's only (a pool keeps them in its Raft state).
    gateway_admin: Mutex<BTreeMap<String, GatewayAdminState>>,
    /// This node's admin API address.
    pub admin_addr: String,
}

impl AdminCtx {
    /// The admin context of a node.
    pub fn new(node: Arc<NodeCtx>, mode: Mode, peers: Peers, admin_addr: String) -> AdminCtx {
        AdminCtx {
            node,
            mode,
            peers,
            gateway_admin: Mutex::new(BTreeMap::new()),
            admin_addr,
        }
    }

    /// This node's id (0 in the single-node pool).
    pub fn node_id(&self) -> u64 {
        match &self.mode {
            Mode::Single(_) => 0,
            Mode::Pool { pool, .. } => pool.node_id(),
        }
    }

    /// The pool, when there is one.
    pub fn pool(&self) -> Option<&Arc<Pool>> {
        match &self.mode {
            Mode::Single(_) => None,
            Mode::Pool { pool, .. } => Some(pool),
        }
    }

    /// The other nodes and their admin addresses.
    pub fn others(&self) -> Vec<(u64, String)> {
        let Some(pool) = self.pool() else {
            return Vec::new();
        };
        let me = pool.node_id();
        pool.state().read(|s| {
            s.nodes()
                .iter()
                .filter(|(id, n)| **id != me && !n.addresses.admin_addr.is_empty())
                .map(|(id, n)| (*id, n.addresses.admin_addr.clone()))
                .collect()
        })
    }

    /// Node `id`'s admin address.
    pub fn admin_addr_of(&self, id: u64) -> Option<String> {
        self.pool()?.state().read(|s| {
            s.node(id)
                .map(|n| n.addresses.admin_addr.clone())
                .filter(|a| !a.is_empty())
        })
    }

    /// The Raft leader (the node itself in the single-node pool).
    pub fn leader(&self) -> Option<u64> {
        match &self.mode {
            Mode::Single(_) => Some(0),
            Mode::Pool { pool, .. } => pool.raft().metrics().borrow_watched().current_leader,
        }
    }

    /// Whether this node may serve: it holds its lease and the pool has a leader.
    pub fn serving(&self) -> bool {
        match &self.mode {
            Mode::Single(_) => true,
            Mode::Pool { pool, .. } => pool.holds_lease() && self.leader().is_some(),
        }
    }

    /// The configuration and its version.
    pub fn config(&self) -> (Option<u64>, String) {
        match &self.mode {
            Mode::Single(s) => s
                .config
                .lock()
                .map(|c| c.clone())
                .unwrap_or((None, String::new())),
            Mode::Pool { pool, .. } => pool.state().read(|s| match s.config() {
                Some(c) => (
                    Some(c.version),
                    String::from_utf8_lossy(&c.body).into_owned(),
                ),
                None => (None, String::new()),
            }),
        }
    }

    /// Validates a configuration the way start-up does.
    pub fn validate(&self, body: &str, name: &str) -> Result<PoolConfig, AdminError> {
        let name = if name.is_empty() {
            "configuration"
        } else {
            name
        };
        Ok(PoolConfig::from_toml_str(body, name)?)
    }

    /// Validates and applies a configuration if the pool is still at `expected` (`None`: the
    /// version current now; `Some(0)`: the pool has no configuration yet). Answers the new
    /// version and what changed.
    pub async fn apply_config(
        &self,
        body: String,
        name: &str,
        expected: Option<u64>,
    ) -> Result<(u64, Vec<pb::ConfigChange>), AdminError> {
        let config = self.validate(&body, name)?;
        let (current, old) = self.config();
        let expected = match expected {
            None => current,
            Some(0) => None,
            Some(v) => Some(v),
        };
        if expected != current {
            return Err(AdminError::StaleVersion { expected, current });
        }
        let changes = diff::diff(&old, &body);
        match &self.mode {
            Mode::Single(s) => {
                let version = {
                    let mut slot = s.config.lock().map_err(|_| {
                        AdminError::OutcomeUnknown("configuration lock poisoned".into())
                    })?;
                    if slot.0 != expected {
                        return Err(AdminError::StaleVersion {
                            expected,
                            current: slot.0,
                        });
                    }
                    let version = slot.0.unwrap_or(0) + 1;
                    *slot = (Some(version), body);
                    version
                };
                self.node.apply_config(config).await;
                Ok((version, changes))
            }
            Mode::Pool { .. } => {
                let r = self
                    .write(Command::SetConfig {
                        expected_version: expected,
                        body: body.into_bytes(),
                    })
                    .await?;
                match r {
                    CommandResult::ConfigSet { version } => {
                        // Applied by the leader; wait (briefly) for this node's copy.
                        self.wait_until(Duration::from_secs(2), |c| c.config().0 >= Some(version))
                            .await;
                        Ok((version, changes))
                    }
                    other => Err(AdminError::OutcomeUnknown(format!(
                        "unexpected answer {other:?}"
                    ))),
                }
            }
        }
    }

    /// Proposes a command through the leader.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, AdminError> {
        let Some(pool) = self.pool() else {
            return Err(AdminError::SingleNode("this change"));
        };
        if self.leader().is_none() {
            // Wait a moment for an election before giving up; nothing is proposed meanwhile.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
            while self.leader().is_none() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            if self.leader().is_none() {
                return Err(AdminError::NoLeader(NoLeader::Unknown));
            }
        }
        // A leader that lost its quorum never commits: give up (outcome unknown) rather than hang.
        match tokio::time::timeout(WRITE_TIMEOUT, pool.write(cmd)).await {
            Ok(r) => Ok(r?),
            Err(_) => Err(AdminError::OutcomeUnknown(format!(
                "not committed within {} s",
                WRITE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// A node's state and shard count, or `NotFound`.
    pub fn node_record(&self, id: u64) -> Result<(NodeState, u32), AdminError> {
        let pool = self
            .pool()
            .ok_or(AdminError::SingleNode("node management"))?;
        pool.state()
            .read(|s| {
                s.node(id).map(|n| {
                    (
                        n.state,
                        u32::try_from(s.shards_of(id).len()).unwrap_or(u32::MAX),
                    )
                })
            })
            .ok_or(AdminError::NodeNotFound(id))
    }

    /// Marks a node draining (its shards move away) or active again.
    pub async fn set_node_state(&self, id: u64, drain: bool) -> Result<pb::NodeReply, AdminError> {
        if self.pool().is_none() {
            return Err(AdminError::SingleNode(if drain {
                "draining a node"
            } else {
                "undraining a node"
            }));
        }
        self.node_record(id)?;
        let state = if drain {
            NodeState::Draining
        } else {
            NodeState::Active
        };
        self.write(Command::SetNodeState { id, state }).await?;
        // The leader applied it; wait (briefly) for this node's copy so the answer shows it.
        self.wait_until(Duration::from_secs(2), |c| {
            c.node_record(id).map_or(true, |(now, _)| now == state)
        })
        .await;
        let (state, shards) = self.node_record(id)?;
        Ok(pb::NodeReply {
            node: id,
            state: super::convert::node_state(state).into(),
            shards,
        })
    }

    /// Raft voters.
    pub fn voters(&self) -> BTreeSet<u64> {
        match self.pool() {
            None => BTreeSet::from([0]),
            Some(p) => p
                .raft()
                .metrics()
                .borrow_watched()
                .membership_config
                .membership()
                .voter_ids()
                .collect(),
        }
    }

    /// On the leader: removes `id` from the Raft membership and from the pool state.
    pub async fn remove_node_here(&self, id: u64) -> Result<pb::NodeReply, AdminError> {
        let pool = self
            .pool()
            .ok_or(AdminError::SingleNode("removing a node"))?;
        let (state, shards) = self.node_record(id)?;
        if shards > 0 {
            return Err(AdminError::NodeOwnsShards { node: id, shards });
        }
        if id == pool.node_id() {
            return Err(AdminError::RemoveLeader(id));
        }
        let ids = BTreeSet::from([id]);
        let m = pool.raft().metrics().borrow_watched().clone();
        let membership = m.membership_config.membership();
        let change = if membership.voter_ids().any(|v| v == id) {
            Some(ChangeMembers::RemoveVoters(ids))
        } else if membership.learner_ids().any(|l| l == id) {
            Some(ChangeMembers::RemoveNodes(ids))
        } else {
            None
        };
        if let Some(change) = change
            && let Err(e) = pool.raft().change_membership(change, false).await
        {
            return Err(if e.forward_to_leader().is_some() {
                AdminError::NoLeader(NoLeader::NotLeader(e.to_string()))
            } else {
                AdminError::OutcomeUnknown(e.to_string())
            });
        }
        self.write(Command::RemoveNode { id }).await?;
        Ok(pb::NodeReply {
            node: id,
            state: super::convert::node_state(state).into(),
            shards: 0,
        })
    }

    /// On the leader: hands leadership to `to` (or any other voter) and waits up to 3 s for it.
    pub async fn transfer_leader_here(
        &self,
        to: Option<u64>,
    ) -> Result<pb::TransferLeaderReply, AdminError> {
        let pool = self
            .pool()
            .ok_or(AdminError::SingleNode("transferring leadership"))?;
        let me = pool.node_id();
        let voters = self.voters();
        let target = match to {
            Some(t) => {
                self.node_record(t)?;
                if !voters.contains(&t) {
                    return Err(AdminError::NotVoter(t));
                }
                t
            }
            None => {
                let active = pool.state().read(|s| s.active_nodes());
                voters
                    .iter()
                    .copied()
                    .filter(|v| *v != me)
                    .min_by_key(|v| (!active.contains(v), *v))
                    .ok_or(AdminError::NoOtherVoter)?
            }
        };
        let before = pool.raft().metrics().borrow_watched().clone();
        if target == me {
            return Ok(pb::TransferLeaderReply {
                previous: Some(me),
                leader: Some(me),
                term: before.current_term,
            });
        }
        pool.raft()
            .trigger()
            .transfer_leader(target)
            .await
            .map_err(|e| AdminError::OutcomeUnknown(e.to_string()))?;
        self.wait_until(Duration::from_secs(3), |c| c.leader() == Some(target))
            .await;
        let m = pool.raft().metrics().borrow_watched().clone();
        if m.current_leader == Some(target) {
            Ok(pb::TransferLeaderReply {
                previous: Some(me),
                leader: Some(target),
                term: m.current_term,
            })
        } else {
            Err(AdminError::OutcomeUnknown(format!(
                "leadership did not move to node {target} within 3 s (leader now: {})",
                m.current_leader
                    .map_or_else(|| "none".to_owned(), |l| l.to_string())
            )))
        }
    }

    /// Waits at most `limit` until `cond` holds; `cond` is checked again each time the pool's Raft
    /// metrics change (an entry applied, a new leader or term), never on a timer. Answers whether it
    /// held. In the single-node pool nothing changes behind the caller's back: `cond` is checked once.
    pub async fn wait_until(&self, limit: Duration, mut cond: impl FnMut(&Self) -> bool) -> bool {
        let Some(pool) = self.pool() else {
            return cond(self);
        };
        let mut changes = pool.raft().metrics();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if cond(self) {
                return true;
            }
            match tokio::time::timeout_at(deadline, changes.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return cond(self),
            }
        }
    }

    /// The operator's choice for a gateway on this node, and whether it is the pool's (replicated)
    /// rather than this node's own.
    pub fn gateway_admin(&self, name: &str) -> (GatewayAdminState, bool) {
        if let Some(pool) = self.pool() {
            let me = pool.node_id();
            let state = pool.state().read(|s| s.gateway_admin(name, me));
            return (to_pb(state), true);
        }
        let state = self
            .gateway_admin
            .lock()
            .ok()
            .and_then(|m| m.get(name).copied())
            .unwrap_or(GatewayAdminState::Enabled);
        (state, false)
    }

    /// Enables, disables or drains a gateway: in a pool through the Raft log (pool-wide, or for
    /// node `node`), answering the nodes it now holds on; in the single-node pool on this node.
    pub async fn set_gateway_admin(
        &self,
        name: &str,
        node: Option<u64>,
        state: GatewayAdminState,
    ) -> Result<Vec<u64>, AdminError> {
        let admin = match state {
            GatewayAdminState::Enabled => GatewayAdmin::Enabled,
            GatewayAdminState::Disabled => GatewayAdmin::Disabled,
            GatewayAdminState::Draining => GatewayAdmin::Draining,
            GatewayAdminState::Unspecified => {
                return Err(AdminError::BadRequest {
                    field: "state",
                    problem: "give enabled, disabled or draining",
                });
            }
        };
        // The pool does not read configurations: the name is checked here, against this node's.
        if self.node.gateways.get(name).is_none() {
            return Err(AdminError::GatewayNotFound(name.to_owned()));
        }
        let Some(pool) = self.pool() else {
            let local = match admin {
                GatewayAdmin::Enabled => AdminState::Enabled,
                GatewayAdmin::Disabled => AdminState::Disabled,
                GatewayAdmin::Draining => AdminState::Draining,
            };
            self.node.gateways.set_admin(name, local);
            if let Ok(mut m) = self.gateway_admin.lock() {
                if state == GatewayAdminState::Enabled {
                    m.remove(name);
                } else {
                    m.insert(name.to_owned(), state);
                }
            }
            return Ok(vec![self.node_id()]);
        };
        let members: Vec<u64> = pool.state().read(|s| {
            s.nodes()
                .iter()
                .filter(|(_, n)| n.state != NodeState::Down)
                .map(|(id, _)| *id)
                .collect()
        });
        if let Some(n) = node
            && pool.state().read(|s| s.node(n).is_none())
        {
            return Err(AdminError::NodeNotFound(n));
        }
        self.write(Command::SetGatewayAdmin {
            gateway: name.to_owned(),
            node,
            state: admin,
        })
        .await?;
        Ok(match node {
            Some(n) => vec![n],
            None => members,
        })
    }
}

fn to_pb(state: GatewayAdmin) -> GatewayAdminState {
    match state {
        GatewayAdmin::Enabled => GatewayAdminState::Enabled,
        GatewayAdmin::Disabled => GatewayAdminState::Disabled,
        GatewayAdmin::Draining => GatewayAdminState::Draining,
    }
}
