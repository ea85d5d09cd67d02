//! The replicated division of gateway capacity among the pool's members, and the operators'
//! gateway states. Pure data and rules, applied by [`crate::state::apply`]; the b2bua turns a
//! [`Division`] into per-gateway shares (it knows the limits; this crate never does).
//!
//! A division lists the members that share capacity (the [`NodeState::Active`] nodes) in
//! generations. Every change of the active set starts a new generation whose members must each
//! report themselves *settled* ([`crate::Command::CapacitySettled`]: within their new share, every
//! shard moved, carried calls counted) before the generation becomes `stable`. A node's share is
//! the smaller of its share among the `current` members and among the `stable` ones: shares shrink
//! as soon as a change is applied and grow only once every member has shrunk (README.md and
//! ARCHITECTURE.md, "Pool-wide gateway capacity").
//!
//! [`NodeState::Active`]: crate::ids::NodeState::Active

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::ids::NodeId;

/// Most gateways with an operator state kept in the pool (a new gateway's state is refused beyond it).
pub const MAX_GATEWAY_STATES: usize = 4096;
/// Longest gateway name in an operator state.
pub const MAX_GATEWAY_NAME: usize = 256;

/// Who shares gateway capacity, generation by generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Division {
    /// Bumped with every change of the active set (0: never set, a pool from before divisions).
    pub generation: u64,
    /// The active nodes of this generation.
    pub members: BTreeSet<NodeId>,
    /// Members that reported themselves settled in this generation.
    pub settled: BTreeSet<NodeId>,
    /// The members of the latest generation every member of which settled.
    pub stable: BTreeSet<NodeId>,
}

impl Division {
    /// Starts a new generation when the active set differs from the current members.
    pub(crate) fn follow(&mut self, active: BTreeSet<NodeId>) {
        if self.generation > 0 && active == self.members {
            return;
        }
        self.generation += 1;
        self.members = active;
        self.settled.clear();
    }

    /// Records that `node` settled in `generation`; the generation becomes stable once every
    /// member has. `Err` with the current generation when `generation` is not it, or `Ok(false)`
    /// when `node` is not a member.
    pub(crate) fn settle(&mut self, node: NodeId, generation: u64) -> Result<bool, u64> {
        if generation != self.generation {
            return Err(self.generation);
        }
        if !self.members.contains(&node) {
            return Ok(false);
        }
        self.settled.insert(node);
        if self.settled == self.members {
            self.stable = self.members.clone();
        }
        Ok(true)
    }

    /// Whether the current generation is stable (every member settled).
    pub fn is_stable(&self) -> bool {
        self.generation > 0 && self.settled == self.members
    }
}

/// An operator's choice for a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GatewayAdmin {
    /// In service.
    Enabled,
    /// No new calls; calls in progress go on.
    Disabled,
    /// No new calls; calls in progress finish (shown apart from disabled).
    Draining,
}

/// The operators' states of one gateway: pool-wide, and per node (a node's own choice wins over
/// the pool-wide one until the next pool-wide choice, which clears them).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayStates {
    /// The pool-wide choice (none: enabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<GatewayAdmin>,
    /// Choices for single nodes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nodes: BTreeMap<NodeId, GatewayAdmin>,
}

impl GatewayStates {
    /// The state that holds on `node`.
    pub fn on(&self, node: NodeId) -> GatewayAdmin {
        self.nodes
            .get(&node)
            .copied()
            .or(self.pool)
            .unwrap_or(GatewayAdmin::Enabled)
    }

    /// Applies a choice: pool-wide (clearing the per-node ones) or for one node.
    pub(crate) fn set(&mut self, node: Option<NodeId>, state: GatewayAdmin) {
        match node {
            None => {
                self.nodes.clear();
                self.pool = Some(state);
            }
            Some(n) => {
                self.nodes.insert(n, state);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn set(ids: &[NodeId]) -> BTreeSet<NodeId> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_generation_is_stable_once_every_member_settled() {
        let mut d = Division::default();
        d.follow(set(&[1]));
        assert_eq!((d.generation, d.is_stable()), (1, false));
        assert_eq!(d.settle(1, 1), Ok(true));
        assert!(d.is_stable());
        assert_eq!(d.stable, set(&[1]));
        d.follow(set(&[1]));
        assert_eq!(d.generation, 1, "the same members: no new generation");
        d.follow(set(&[1, 2]));
        assert_eq!((d.generation, d.is_stable()), (2, false));
        assert_eq!(d.settle(1, 1), Err(2), "a stale generation");
        assert_eq!(d.settle(3, 2), Ok(false), "not a member");
        assert_eq!(d.settle(2, 2), Ok(true));
        assert_eq!(d.stable, set(&[1]), "node 1 has not settled yet");
        assert_eq!(d.settle(1, 2), Ok(true));
        assert_eq!(d.stable, set(&[1, 2]));
        d.follow(set(&[2]));
        assert_eq!(d.stable, set(&[1, 2]), "stable until node 2 settles");
        assert!(d.settled.is_empty());
    }

    #[test]
    fn a_pool_wide_choice_clears_the_per_node_ones() {
        let mut g = GatewayStates::default();
        assert_eq!(g.on(1), GatewayAdmin::Enabled);
        g.set(None, GatewayAdmin::Disabled);
        g.set(Some(3), GatewayAdmin::Enabled);
        assert_eq!(g.on(1), GatewayAdmin::Disabled);
        assert_eq!(g.on(3), GatewayAdmin::Enabled);
        g.set(None, GatewayAdmin::Draining);
        assert_eq!(g.on(3), GatewayAdmin::Draining);
    }
}
