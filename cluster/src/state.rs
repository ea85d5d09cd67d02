//! The replicated state of the pool and the pure function that applies a [`Command`] to it.
//!
//! Deterministic by construction: `BTreeMap`s and a `Vec` only, no clock, no randomness, no I/O.
//! Every replica that applies the same log reaches the same `State` and the same answers.
//! Readers get `&State` through [`StateReader`](crate::store::StateReader); only [`apply`]
//! changes it.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::command::{Command, CommandResult, Rejection};
use crate::division::{Division, GatewayAdmin, GatewayStates, MAX_GATEWAY_STATES};
use crate::ids::{NodeAddrs, NodeId};
pub use crate::ids::{NodeState, ShardId};

/// Shards of a pool unless configured otherwise.
pub const DEFAULT_SHARD_COUNT: u16 = 1024;

/// What the pool knows of a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Where it is reached.
    pub addresses: NodeAddrs,
    /// Active, draining or down.
    pub state: NodeState,
    /// Whether it should be a Raft voter rather than a learner.
    pub voter: bool,
}

/// One shard of the shard map.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The node that handles the shard's dialogs, if any.
    pub owner: Option<NodeId>,
    /// Bumped each time the owner changes: a fencing token.
    pub epoch: u64,
}

/// The pool configuration and its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionedConfig {
    /// Starts at 1, grows by one with each change.
    pub version: u64,
    /// The configuration, opaque here (TOML or a serialized model; the b2bua validates it).
    #[serde(with = "crate::b64::bytes")]
    pub body: Vec<u8>,
}

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    nodes: BTreeMap<NodeId, NodeRecord>,
    shards: Vec<ShardEntry>,
    config: Option<VersionedConfig>,
    #[serde(with = "crate::b64::record_map")]
    dialogs: BTreeMap<(ShardId, String), Vec<u8>>,
    /// Dialog records written per shard since the pool began (upserts applied): a shard's new
    /// owner watches it for records its old owner wrote late. A record count would not do: a
    /// late record and a removal in the same pass cancel out.
    #[serde(default)]
    dialog_writes: Vec<u64>,
    /// The pool-wide secret ([`Command::SetPoolSecret`]); `None` in a pool bootstrapped before
    /// secrets existed until its leader writes one.
    #[serde(default)]
    pool_secret: Option<[u8; 32]>,
    /// Who shares gateway capacity ([`crate::division`]); the default in a pool from before it.
    #[serde(default)]
    division: Division,
    /// Operators' gateway states, by gateway name (at most
    /// [`MAX_GATEWAY_STATES`](crate::division::MAX_GATEWAY_STATES)).
    #[serde(default)]
    gateways: BTreeMap<String, GatewayStates>,
}

impl State {
    /// The pool-wide secret, set once right after bootstrap (`None` in older pools).
    pub fn pool_secret(&self) -> Option<[u8; 32]> {
        self.pool_secret
    }

    /// Who shares gateway capacity, generation by generation.
    pub fn division(&self) -> &Division {
        &self.division
    }

    /// The operator's state of a gateway on `node` (enabled unless one was set).
    pub fn gateway_admin(&self, gateway: &str, node: NodeId) -> GatewayAdmin {
        self.gateways
            .get(gateway)
            .map_or(GatewayAdmin::Enabled, |g| g.on(node))
    }

    /// Every gateway an operator set a state for.
    pub fn gateway_states(&self) -> &BTreeMap<String, GatewayStates> {
        &self.gateways
    }

    /// Whether [`Command::Bootstrap`] has created the shard map.
    pub fn is_bootstrapped(&self) -> bool {
        !self.shards.is_empty()
    }

    /// All known nodes.
    pub fn nodes(&self) -> &BTreeMap<NodeId, NodeRecord> {
        &self.nodes
    }

    /// One node.
    pub fn node(&self, id: NodeId) -> Option<&NodeRecord> {
        self.nodes.get(&id)
    }

    /// Nodes in [`NodeState::Active`].
    pub fn active_nodes(&self) -> BTreeSet<NodeId> {
        self.nodes
            .iter()
            .filter(|(_, n)| n.state == NodeState::Active)
            .map(|(&id, _)| id)
            .collect()
    }

    /// The shard map, indexed by [`ShardId`]; empty before bootstrap.
    pub fn shards(&self) -> &[ShardEntry] {
        &self.shards
    }

    /// Number of shards (0 before bootstrap).
    pub fn shard_count(&self) -> u16 {
        // Bootstrap bounds the count to u16.
        u16::try_from(self.shards.len()).unwrap_or(u16::MAX)
    }

    /// One shard's entry.
    pub fn shard(&self, shard: ShardId) -> Option<&ShardEntry> {
        self.shards.get(usize::from(shard))
    }

    /// The owner of a shard.
    pub fn owner_of(&self, shard: ShardId) -> Option<NodeId> {
        self.shard(shard).and_then(|s| s.owner)
    }

    /// Shards owned by `node`, ascending.
    pub fn shards_of(&self, node: NodeId) -> Vec<ShardId> {
        (0..self.shard_count())
            .filter(|&s| self.owner_of(s) == Some(node))
            .collect()
    }

    /// The pool configuration.
    pub fn config(&self) -> Option<&VersionedConfig> {
        self.config.as_ref()
    }

    /// The configuration version (`None`: no configuration yet).
    pub fn config_version(&self) -> Option<u64> {
        self.config.as_ref().map(|c| c.version)
    }

    /// One confirmed-dialog record.
    pub fn dialog(&self, shard: ShardId, call_id: &str) -> Option<&[u8]> {
        self.dialogs
            .get(&(shard, call_id.to_owned()))
            .map(Vec::as_slice)
    }

    /// The confirmed dialogs of one shard, by Call-ID.
    pub fn dialogs_of(&self, shard: ShardId) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        let lower = Bound::Included((shard, String::new()));
        let upper = match shard.checked_add(1) {
            Some(next) => Bound::Excluded((next, String::new())),
            None => Bound::Unbounded,
        };
        self.dialogs
            .range((lower, upper))
            .map(|((_, call_id), record)| (call_id.as_str(), record.as_slice()))
    }

    /// Number of confirmed-dialog records in the pool.
    pub fn dialog_count(&self) -> usize {
        self.dialogs.len()
    }

    /// Records written per shard since the pool began, indexed by [`ShardId`] (see the field).
    pub fn dialog_writes(&self) -> Vec<u64> {
        let mut w = self.dialog_writes.clone();
        w.resize(self.shards.len(), 0);
        w
    }

    /// Records per shard, indexed by [`ShardId`].
    pub fn dialog_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.shards.len()];
        for (shard, _) in self.dialogs.keys() {
            if let Some(c) = counts.get_mut(usize::from(*shard)) {
                *c += 1;
            }
        }
        counts
    }

    fn check_shard(&self, shard: ShardId) -> Result<(), Rejection> {
        if usize::from(shard) < self.shards.len() {
            Ok(())
        } else {
            Err(Rejection::UnknownShard {
                shard,
                shard_count: self.shard_count(),
            })
        }
    }

    fn check_bootstrapped(&self) -> Result<(), Rejection> {
        if self.is_bootstrapped() {
            Ok(())
        } else {
            Err(Rejection::NotBootstrapped)
        }
    }
}

/// Applies one command. Pure and deterministic; a refused command leaves `state` unchanged and
/// answers [`CommandResult::Rejected`].
pub fn apply(state: &mut State, command: Command) -> CommandResult {
    match try_apply(state, command) {
        Ok(result) => result,
        Err(rejection) => CommandResult::Rejected(rejection),
    }
}

fn try_apply(state: &mut State, command: Command) -> Result<CommandResult, Rejection> {
    let membership = matches!(
        command,
        Command::AddNode { .. } | Command::SetNodeState { .. } | Command::RemoveNode { .. }
    );
    let result = apply_one(state, command)?;
    if membership {
        let active = state.active_nodes();
        state.division.follow(active);
    }
    Ok(result)
}

fn apply_one(state: &mut State, command: Command) -> Result<CommandResult, Rejection> {
    match command {
        Command::SetGatewayAdmin {
            gateway,
            node,
            state: to,
        } => {
            if !state.gateways.contains_key(&gateway) && state.gateways.len() >= MAX_GATEWAY_STATES
            {
                return Err(Rejection::TooManyGatewayStates {
                    max: MAX_GATEWAY_STATES,
                });
            }
            if let Some(n) = node
                && !state.nodes.contains_key(&n)
            {
                return Err(Rejection::UnknownNode(n));
            }
            state.gateways.entry(gateway).or_default().set(node, to);
            Ok(CommandResult::Done)
        }
        Command::CapacitySettled { node, generation } => {
            match state.division.settle(node, generation) {
                Ok(true) => Ok(CommandResult::Done),
                Ok(false) => Err(Rejection::NotACapacityMember(node)),
                Err(current) => Err(Rejection::StaleGeneration {
                    generation,
                    current,
                }),
            }
        }
        Command::Noop => Ok(CommandResult::Done),
        Command::SetPoolSecret { secret } => {
            if state.pool_secret.is_some() {
                return Err(Rejection::PoolSecretExists);
            }
            state.pool_secret = Some(secret);
            Ok(CommandResult::Done)
        }
        Command::Bootstrap { shard_count } => {
            if state.is_bootstrapped() {
                return Err(Rejection::AlreadyBootstrapped {
                    shard_count: state.shard_count(),
                });
            }
            if shard_count == 0 {
                return Err(Rejection::InvalidShardCount);
            }
            state.shards = vec![ShardEntry::default(); usize::from(shard_count)];
            Ok(CommandResult::Done)
        }
        Command::AddNode {
            id,
            addresses,
            voter,
        } => {
            state.nodes.insert(
                id,
                NodeRecord {
                    addresses,
                    state: NodeState::Active,
                    voter,
                },
            );
            Ok(CommandResult::Done)
        }
        Command::SetNodeState { id, state: to } => {
            let node = state.nodes.get_mut(&id).ok_or(Rejection::UnknownNode(id))?;
            node.state = to;
            Ok(CommandResult::Done)
        }
        Command::RemoveNode { id } => {
            if !state.nodes.contains_key(&id) {
                return Err(Rejection::UnknownNode(id));
            }
            let owned = state.shards.iter().filter(|s| s.owner == Some(id)).count();
            if owned > 0 {
                return Err(Rejection::NodeOwnsShards {
                    node: id,
                    shards: u32::try_from(owned).unwrap_or(u32::MAX),
                });
            }
            state.nodes.remove(&id);
            Ok(CommandResult::Done)
        }
        Command::MoveShards { moves } => {
            state.check_bootstrapped()?;
            for &(shard, to) in &moves {
                state.check_shard(shard)?;
                let node = state.nodes.get(&to).ok_or(Rejection::UnknownNode(to))?;
                if node.state != NodeState::Active {
                    return Err(Rejection::NodeNotActive {
                        node: to,
                        state: node.state,
                    });
                }
            }
            let mut moved = 0u32;
            for (shard, to) in moves {
                if let Some(entry) = state.shards.get_mut(usize::from(shard))
                    && entry.owner != Some(to)
                {
                    entry.owner = Some(to);
                    entry.epoch += 1;
                    moved += 1;
                }
            }
            Ok(CommandResult::ShardsMoved { moved })
        }
        Command::SetConfig {
            expected_version,
            body,
        } => {
            let current = state.config_version();
            if expected_version != current {
                return Err(Rejection::StaleConfigVersion {
                    expected: expected_version,
                    current,
                });
            }
            let version = current.unwrap_or(0) + 1;
            state.config = Some(VersionedConfig { version, body });
            Ok(CommandResult::ConfigSet { version })
        }
        Command::DialogBatch { upserts, removes } => {
            apply_dialogs(state, None, upserts, removes, &[])
        }
        Command::OwnerDialogBatch {
            writer,
            upserts,
            removes,
            replace_only,
        } => apply_dialogs(state, Some(writer), upserts, removes, &replace_only),
    }
}

/// Applies a dialog batch; with a `writer`, upserts for shards it no longer owns only insert
/// Call-IDs the shard does not know, and upserts named in `replace_only` only replace a record the
/// state holds (see [`Command::OwnerDialogBatch`]).
fn apply_dialogs(
    state: &mut State,
    writer: Option<NodeId>,
    upserts: Vec<(ShardId, String, Vec<u8>)>,
    removes: Vec<(ShardId, String)>,
    replace_only: &[(ShardId, String)],
) -> Result<CommandResult, Rejection> {
    state.check_bootstrapped()?;
    for (shard, _, _) in &upserts {
        state.check_shard(*shard)?;
    }
    for (shard, _) in &removes {
        state.check_shard(*shard)?;
    }
    let mut upserted = 0u32;
    for (shard, call_id, record) in upserts {
        let stale = writer.is_some_and(|w| state.owner_of(shard) != Some(w));
        let key = (shard, call_id);
        // The table is looked up only for the two kinds of conditional upsert (an owner's plain
        // upsert, the common case, needs no lookup).
        if stale && state.dialogs.contains_key(&key) {
            continue; // the new owner's record wins over a late write of the old owner
        }
        if replace_only.contains(&key) && !state.dialogs.contains_key(&key) {
            continue; // a rebuilt call's rewrite: the call ended on its old owner meanwhile
        }
        let i = usize::from(shard);
        state.dialogs.insert(key, record);
        if state.dialog_writes.len() <= i {
            state.dialog_writes.resize(i + 1, 0);
        }
        state.dialog_writes[i] += 1;
        upserted += 1;
    }
    let mut removed = 0u32;
    for key in removes {
        if state.dialogs.remove(&key).is_some() {
            removed += 1;
        }
    }
    Ok(CommandResult::DialogsApplied { upserted, removed })
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
