//! The leader's rebalancer: a pure plan of shard moves, as few as possible.
//!
//! Given the applied [`State`] and the nodes the leader considers alive, [`plan_moves`] answers
//! the `(shard, new owner)` pairs that leave every shard with a live owner and no live node with
//! more than `ceil(shards / live nodes)` shards. Each shard that must move (its owner is gone, or
//! it is over a node's share) moves once, and no other shard moves, so the plan is the smallest
//! one that reaches that balance. The leader proposes it as [`Command::MoveShards`]
//! (or, for a drain, one move at a time).
//!
//! [`Command::MoveShards`]: crate::command::Command::MoveShards

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::NodeId;
use crate::state::{NodeState, ShardId, State};

/// Plans the moves that rebalance the shard map over `alive` nodes.
///
/// Targets are the nodes in `alive` that the state also knows as [`NodeState::Active`] (a
/// draining or down node gets nothing, and a node the state does not know cannot own a shard).
/// A shard whose owner is missing or not a target is reassigned; a target with more than
/// `ceil(S/N)` shards gives up its excess, the shards with the fewest confirmed dialogs first (less
/// to hand over). Each shard goes to the target with the fewest shards at that point, the lowest
/// id on a tie. Deterministic; empty when no target exists or nothing needs to move.
pub fn plan_moves(state: &State, alive: &BTreeSet<NodeId>) -> Vec<(ShardId, NodeId)> {
    let targets: BTreeSet<NodeId> = alive
        .iter()
        .copied()
        .filter(|id| state.node(*id).map(|n| n.state) == Some(NodeState::Active))
        .collect();
    let shard_count = state.shards().len();
    if targets.is_empty() || shard_count == 0 {
        return Vec::new();
    }
    let cap = shard_count.div_ceil(targets.len());

    let mut owned: BTreeMap<NodeId, Vec<ShardId>> =
        targets.iter().map(|&id| (id, Vec::new())).collect();
    let mut to_place: Vec<ShardId> = Vec::new();
    for shard in 0..state.shard_count() {
        match state.owner_of(shard).and_then(|o| owned.get_mut(&o)) {
            Some(list) => list.push(shard),
            None => to_place.push(shard),
        }
    }

    let dialogs = state.dialog_counts();
    let mut load: BTreeMap<NodeId, usize> = BTreeMap::new();
    for (node, mut shards) in owned {
        if shards.len() > cap {
            // Keep the busiest shards; shed the quietest (ties: the highest ids).
            shards.sort_by_key(|&s| {
                (
                    std::cmp::Reverse(dialogs.get(usize::from(s)).copied().unwrap_or(0)),
                    s,
                )
            });
            to_place.extend(shards.drain(cap..));
        }
        load.insert(node, shards.len());
    }
    to_place.sort_unstable();

    let mut moves = Vec::with_capacity(to_place.len());
    for shard in to_place {
        // `load` is never empty here: targets is not.
        let Some((&target, _)) = load.iter().min_by_key(|&(&id, &n)| (n, id)) else {
            break;
        };
        if let Some(n) = load.get_mut(&target) {
            *n += 1;
        }
        moves.push((shard, target));
    }
    moves
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]

    use super::*;
    use crate::command::{Command, CommandResult};
    use crate::ids::NodeAddrs;
    use crate::state::apply;

    /// A small deterministic generator for test inputs (the library itself has no randomness).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn pool(shards: u16, nodes: &[NodeId]) -> State {
        let mut s = State::default();
        assert_eq!(
            apply(
                &mut s,
                Command::Bootstrap {
                    shard_count: shards
                }
            ),
            CommandResult::Done
        );
        for &id in nodes {
            apply(
                &mut s,
                Command::AddNode {
                    id,
                    addresses: NodeAddrs::default(),
                    voter: false,
                },
            );
        }
        s
    }

    fn set_state(s: &mut State, id: NodeId, state: NodeState) {
        assert_eq!(
            apply(s, Command::SetNodeState { id, state }),
            CommandResult::Done
        );
    }

    fn commit(s: &mut State, moves: &[(ShardId, NodeId)]) {
        let r = apply(
            s,
            Command::MoveShards {
                moves: moves.to_vec(),
            },
        );
        assert!(r.rejection().is_none(), "{r:?}");
    }

    fn loads(s: &State, nodes: &BTreeSet<NodeId>) -> BTreeMap<NodeId, usize> {
        nodes.iter().map(|&n| (n, s.shards_of(n).len())).collect()
    }

    /// The lower bound on moves: shards without a live owner plus each live node's excess.
    fn required_moves(s: &State, live: &BTreeSet<NodeId>) -> usize {
        let cap = s.shards().len().div_ceil(live.len());
        let orphans = s
            .shards()
            .iter()
            .filter(|e| e.owner.is_none_or(|o| !live.contains(&o)))
            .count();
        let excess: usize = loads(s, live)
            .values()
            .map(|&n| n.saturating_sub(cap))
            .sum();
        orphans + excess
    }

    /// Plans, checks the plan is minimal, applies it and checks the result is balanced and stable.
    fn rebalance_and_check(s: &mut State, live: &BTreeSet<NodeId>, what: &str) -> usize {
        let before = s.clone();
        let moves = plan_moves(s, live);
        assert_eq!(moves.len(), required_moves(s, live), "{what}: not minimal");
        let moved: BTreeSet<ShardId> = moves.iter().map(|m| m.0).collect();
        assert_eq!(moved.len(), moves.len(), "{what}: a shard moved twice");
        commit(s, &moves);

        let cap = s.shards().len().div_ceil(live.len());
        for shard in 0..s.shard_count() {
            let owner = s.owner_of(shard).unwrap();
            assert!(
                live.contains(&owner),
                "{what}: shard {shard} on dead {owner}"
            );
            if !moved.contains(&shard) {
                assert_eq!(
                    s.shard(shard),
                    before.shard(shard),
                    "{what}: untouched shard changed"
                );
            } else {
                assert_eq!(
                    s.shard(shard).unwrap().epoch,
                    before.shard(shard).unwrap().epoch + 1
                );
            }
        }
        for (node, n) in loads(s, live) {
            assert!(n <= cap, "{what}: node {node} has {n} > {cap}");
        }
        assert!(plan_moves(s, live).is_empty(), "{what}: not stable");
        moves.len()
    }

    const SHARD_COUNTS: [u16; 7] = [1, 2, 3, 7, 64, 100, 1024];

    #[test]
    fn fresh_pool_spreads_evenly() {
        for shards in SHARD_COUNTS {
            for n in 1..=7u64 {
                let ids: Vec<NodeId> = (1..=n).collect();
                let mut s = pool(shards, &ids);
                let live: BTreeSet<_> = ids.iter().copied().collect();
                let moved = rebalance_and_check(&mut s, &live, &format!("fresh S={shards} N={n}"));
                assert_eq!(moved, usize::from(shards));
                // Fresh: loads differ by at most one.
                let l = loads(&s, &live);
                let (min, max) = (l.values().min().unwrap(), l.values().max().unwrap());
                assert!(max - min <= 1, "S={shards} N={n}: {l:?}");
            }
        }
    }

    #[test]
    fn joining_node_takes_only_the_excess() {
        for shards in SHARD_COUNTS {
            for n in 1..7u64 {
                let ids: Vec<NodeId> = (1..=n).collect();
                let mut s = pool(shards, &ids);
                let mut live: BTreeSet<_> = ids.iter().copied().collect();
                rebalance_and_check(&mut s, &live, "initial");
                let new = n + 1;
                apply(
                    &mut s,
                    Command::AddNode {
                        id: new,
                        addresses: NodeAddrs::default(),
                        voter: false,
                    },
                );
                live.insert(new);
                let what = format!("join S={shards} N={n}+1");
                let moves = plan_moves(&s, &live);
                assert!(moves.iter().all(|&(_, to)| to == new), "{what}: {moves:?}");
                rebalance_and_check(&mut s, &live, &what);
            }
        }
    }

    #[test]
    fn dead_or_draining_node_loses_only_its_shards() {
        for shards in SHARD_COUNTS {
            for n in 2..=7u64 {
                for gone_state in [NodeState::Down, NodeState::Draining] {
                    let ids: Vec<NodeId> = (1..=n).collect();
                    let mut s = pool(shards, &ids);
                    let mut live: BTreeSet<_> = ids.iter().copied().collect();
                    rebalance_and_check(&mut s, &live, "initial");
                    let gone = 1 + (u64::from(shards) % n);
                    let its: BTreeSet<ShardId> = s.shards_of(gone).into_iter().collect();
                    set_state(&mut s, gone, gone_state);
                    live.remove(&gone);
                    let what = format!("{gone_state:?} S={shards} N={n}");
                    let moves = plan_moves(&s, &live);
                    let moved: BTreeSet<ShardId> = moves.iter().map(|m| m.0).collect();
                    assert_eq!(moved, its, "{what}");
                    rebalance_and_check(&mut s, &live, &what);
                    assert!(s.shards_of(gone).is_empty());
                }
            }
        }
    }

    #[test]
    fn scrambled_maps_converge_minimally() {
        let mut rng = Lcg(0x5eed);
        for round in 0..200 {
            let shards = SHARD_COUNTS[(round % SHARD_COUNTS.len() as u64) as usize];
            let n = 1 + rng.below(7);
            // Nodes 1..=n+2 exist; some are down, some are not alive per the leader.
            let ids: Vec<NodeId> = (1..=n + 2).collect();
            let mut s = pool(shards, &ids);
            // Random owners, including nodes that will be dead and no owner at all.
            let mut moves: Vec<(ShardId, NodeId)> = Vec::new();
            for sh in 0..shards {
                if rng.below(5) != 0 {
                    moves.push((sh, 1 + rng.below(n + 2)));
                }
            }
            commit(&mut s, &moves);
            let down = 1 + rng.below(n + 2);
            set_state(&mut s, down, NodeState::Down);
            let live: BTreeSet<NodeId> = ids
                .iter()
                .copied()
                .filter(|&i| i != down)
                .take(n as usize)
                .collect();
            // The leader may believe a node alive that the state has marked down: it is skipped.
            let mut believed = live.clone();
            believed.insert(down);
            believed.insert(99);
            assert_eq!(plan_moves(&s, &believed), plan_moves(&s, &live));
            rebalance_and_check(&mut s, &live, &format!("round {round} S={shards} N={n}"));
        }
    }

    #[test]
    fn sheds_the_quietest_shards() {
        let mut s = pool(4, &[1, 2]);
        commit(&mut s, &[(0, 1), (1, 1), (2, 1), (3, 1)]);
        apply(
            &mut s,
            Command::DialogBatch {
                upserts: vec![
                    (0, "a".into(), vec![]),
                    (0, "b".into(), vec![]),
                    (2, "c".into(), vec![]),
                    (3, "d".into(), vec![]),
                ],
                removes: vec![],
            },
        );
        // Node 1 keeps 2 of 4: shard 0 (2 dialogs) and shard 2 (1 dialog, lower id than 3);
        // shards 1 (no dialog) and 3 move.
        let moves = plan_moves(&s, &BTreeSet::from([1, 2]));
        assert_eq!(moves, vec![(1, 2), (3, 2)]);
    }

    #[test]
    fn nothing_to_do() {
        let s = State::default();
        assert!(plan_moves(&s, &BTreeSet::from([1])).is_empty());
        let s = pool(8, &[1]);
        assert!(plan_moves(&s, &BTreeSet::new()).is_empty());
        assert!(plan_moves(&s, &BTreeSet::from([5])).is_empty());
    }
}
