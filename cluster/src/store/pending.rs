//! Shard moves in the Raft log that this node has not applied yet, and whom they may take shards
//! from: the lease rule's view of the log beyond the applied state (ARCHITECTURE.md, "Leases").
//!
//! A leader grants leases against its *applied* shard map, and a new leader's applied map can trail
//! its log by a second or more under load: the entries of earlier terms are applied only once it
//! has committed one of its own. A move already committed by an earlier leader is in the new
//! leader's log from its election on (Raft's leader completeness) but not yet in its map, so
//! without this record it would grant a lease to the move's previous owner, which could then act
//! for a shard the next owner already acts for (soak 0x5eed2ac7f8be1206, run 2: 493 ms). The log
//! store notes every `MoveShards` it appends, with its term (and those it finds beyond the
//! committed index when it opens); [`PendingMoves::losers`] names every node that a noted,
//! unapplied move of an earlier term than the leader's may take a shard from. The leader grants
//! none of them a lease until it has applied those moves. Its own moves are not counted: it applies
//! what it commits within moments, and refusing their losers cost the two nodes that give shards to
//! every rejoined node their leases for a commit round (longer on a starved pool).

use std::collections::{BTreeMap, BTreeSet};

use crate::command::Command;
use crate::ids::{NodeId, ShardId};

/// The `MoveShards` entries appended to this node's log (by index: the entry's term and its
/// moves), until they are purged.
#[derive(Debug, Default, Clone)]
pub struct PendingMoves {
    moves: BTreeMap<u64, (u64, Vec<(ShardId, NodeId)>)>,
}

impl PendingMoves {
    /// Notes an entry of `term` appended at `index` (only a `MoveShards` is kept). An entry
    /// appended again at the same index (after a truncation) replaces the one noted there.
    pub fn appended(&mut self, index: u64, term: u64, command: &Command) {
        match command {
            Command::MoveShards { moves } => {
                self.moves.insert(index, (term, moves.clone()));
            }
            _ => {
                self.moves.remove(&index);
            }
        }
    }

    /// Entries from `from` on were removed from the log (a conflict with a new leader's log).
    pub fn truncated(&mut self, from: u64) {
        self.moves.retain(|i, _| *i < from);
    }

    /// Entries up to `upto` were purged from the log (they had all been applied).
    pub fn purged(&mut self, upto: u64) {
        self.moves.retain(|i, _| *i > upto);
    }

    /// Whether no move is noted.
    pub fn is_empty(&self) -> bool {
        self.moves.is_empty()
    }

    /// Every node that a noted move beyond `applied`, of a term before `before_term`, may take a
    /// shard from, given the owners in the applied state. Moves are followed in log order (all of
    /// them: a later term's move can change whom an earlier one takes from, never the other way,
    /// but owners are tracked through every move); since a `MoveShards` may be refused at apply
    /// (all or nothing), a shard's possible owners only grow: each later move of the shard may take
    /// it from any of them.
    pub fn losers(
        &self,
        applied: Option<u64>,
        before_term: u64,
        owner: impl Fn(ShardId) -> Option<NodeId>,
    ) -> BTreeSet<NodeId> {
        let mut possible: BTreeMap<ShardId, BTreeSet<NodeId>> = BTreeMap::new();
        let mut losers = BTreeSet::new();
        let after = applied.map_or(0, |a| a.saturating_add(1));
        for (term, moves) in self.moves.range(after..).map(|(_, m)| m) {
            for (shard, to) in moves {
                let owners = possible
                    .entry(*shard)
                    .or_insert_with(|| owner(*shard).into_iter().collect());
                if *term < before_term {
                    losers.extend(owners.iter().copied().filter(|o| o != to));
                }
                owners.insert(*to);
            }
        }
        losers
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::PendingMoves;
    use crate::command::Command;

    fn mv(moves: &[(u16, u64)]) -> Command {
        Command::MoveShards {
            moves: moves.to_vec(),
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    /// Shards 0-9 owned by node 2, 10-19 by node 0, 20-29 by node 1.
    fn owner(s: u16) -> Option<u64> {
        Some(match s {
            0..=9 => 2,
            10..=19 => 0,
            _ => 1,
        })
    }

    #[test]
    fn a_move_committed_by_an_earlier_leader_and_not_yet_applied_takes_from_its_owner() {
        // The soak's case: shard 6 moved 2 -> 0 -> 1 in entries 40 and 45; the new leader (node 2)
        // has applied only up to 39.
        let mut p = PendingMoves::default();
        p.appended(40, 3, &mv(&[(6, 0)]));
        p.appended(45, 3, &mv(&[(6, 1)]));
        // Node 2 leads term 4 now; both moves are of term 3.
        assert_eq!(p.losers(Some(39), 4, owner), set(&[2, 0]));
        // Applied the first: its map says node 0, so only node 0 may still lose it.
        let after_40 = |s: u16| if s == 6 { Some(0) } else { owner(s) };
        assert_eq!(p.losers(Some(40), 4, after_40), set(&[0]));
        assert_eq!(p.losers(Some(45), 4, |_| Some(1)), set(&[]));
        // The leader of term 3 itself, which appended them: its own moves do not refuse anyone
        // (it applies what it commits within moments; the margin covers that).
        assert_eq!(p.losers(Some(39), 3, owner), set(&[]));
    }

    #[test]
    fn a_move_that_may_be_refused_keeps_the_earlier_owner_a_possible_loser() {
        let mut p = PendingMoves::default();
        p.appended(10, 1, &mv(&[(3, 0)]));
        p.appended(11, 1, &mv(&[(3, 1)]));
        // If entry 10 is refused at apply, 11 takes shard 3 from node 2; if not, from node 0.
        assert_eq!(p.losers(None, 2, owner), set(&[0, 2]));
    }

    #[test]
    fn a_move_to_the_owner_itself_takes_nothing_and_other_entries_are_not_noted() {
        let mut p = PendingMoves::default();
        p.appended(5, 1, &mv(&[(12, 0)]));
        p.appended(6, 1, &Command::Noop);
        assert_eq!(p.losers(Some(4), 2, owner), set(&[]));
        p.appended(7, 1, &mv(&[(25, 2)]));
        assert_eq!(p.losers(Some(4), 2, owner), set(&[1]));
    }

    #[test]
    fn truncated_and_purged_entries_are_forgotten() {
        let mut p = PendingMoves::default();
        p.appended(5, 1, &mv(&[(1, 0)]));
        p.appended(8, 1, &mv(&[(11, 1)]));
        p.truncated(8);
        assert_eq!(p.losers(Some(4), 2, owner), set(&[2]));
        // Index 5 replaced by another entry of a new leader.
        p.appended(5, 2, &Command::Noop);
        assert_eq!(p.losers(Some(4), 2, owner), set(&[]));
        p.appended(9, 2, &mv(&[(21, 0)]));
        p.purged(9);
        assert!(p.is_empty());
    }
}
