//! What one pass of the shard watcher releases and adopts, and whom each adoption waits for: the
//! pure part of the hand-over fence (`fence.rs` runs it and holds the safety argument).
//!
//! A shard is *released* when the applied map no longer gives it to this node, or gives it again at
//! a higher epoch than at the last pass (it went away and came back between two passes: another
//! node may have acted for it meanwhile, so this node's calls for it are stale). A shard is
//! *adopted* when the map gives it to this node and it was not kept from the last pass. An adopted
//! shard enters the acting set at once only when nobody else can still act for it: it moved exactly
//! once since the last pass, from nobody or from a node the map marks `Down`, and that owner had
//! held it for at least L + F + m (so every owner before it is past its leases). Every other
//! adoption waits behind a fence on **every** node not `Down` (but this one): the previous owner,
//! an owner before it whose move is younger than L + F + m, and a leader whose applied map still
//! gives the shard to itself all report an acting epoch below the adopter's map epoch until they
//! have let it go.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::state::ShardEntry;
use crate::typ::NodeId;

/// What a watcher pass reads of the applied state (one consistent read).
#[derive(Debug, Clone)]
pub(super) struct MapView {
    /// The shards the map gives this node.
    pub mine: BTreeSet<u16>,
    /// Every shard's owner and epoch.
    pub shards: Vec<ShardEntry>,
    /// The map epoch (the sum of the shard epochs).
    pub epoch: u64,
    /// Nodes marked `Down`.
    pub down: BTreeSet<NodeId>,
    /// Other nodes not `Down`.
    pub live: BTreeSet<NodeId>,
    /// Records written per shard.
    pub writes: Vec<u64>,
}

/// What the watcher remembers from its last pass.
#[derive(Debug)]
pub(super) struct Memory {
    /// The shards the map gave this node at the last pass (acting, or behind a fence).
    pub owned: BTreeSet<u16>,
    /// Every shard's owner and epoch at the last pass (empty before the first pass).
    pub prev: Vec<ShardEntry>,
    /// When a pass last saw each shard's epoch change (shards unchanged since `started` are
    /// absent).
    pub changed_at: BTreeMap<u16, Instant>,
    /// The first pass.
    pub started: Instant,
}

/// What one pass does.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct PassPlan {
    /// Shards to take out of the acting set (and out of any fence).
    pub released: BTreeSet<u16>,
    /// Shards that enter the acting set at once.
    pub at_once: BTreeSet<u16>,
    /// Shards that wait behind a fence on these nodes (an empty set of shards is never listed).
    pub fenced: BTreeMap<BTreeSet<NodeId>, BTreeSet<u16>>,
}

fn epoch(shards: &[ShardEntry], s: u16) -> Option<u64> {
    shards.get(usize::from(s)).map(|e| e.epoch)
}

/// Plans a pass at `now`; `window` is L + F + m.
pub(super) fn plan(mem: &Memory, view: &MapView, window: Duration, now: Instant) -> PassPlan {
    let released: BTreeSet<u16> = mem
        .owned
        .iter()
        .copied()
        .filter(|s| !view.mine.contains(s) || epoch(&mem.prev, *s) != epoch(&view.shards, *s))
        .collect();
    let mut plan = PassPlan {
        released,
        ..PassPlan::default()
    };
    for s in view.mine.iter().copied() {
        if mem.owned.contains(&s) && !plan.released.contains(&s) {
            continue;
        }
        let i = usize::from(s);
        // The previous owner, when the shard moved exactly once since the last pass.
        let known = mem
            .prev
            .get(i)
            .filter(|p| view.shards.get(i).is_some_and(|e| e.epoch == p.epoch + 1));
        let held_since = mem.changed_at.get(&s).copied().unwrap_or(mem.started);
        let nobody_else = known.is_some_and(|p| {
            p.owner.is_none_or(|o| view.down.contains(&o))
                && now.saturating_duration_since(held_since) >= window
        });
        if nobody_else || view.live.is_empty() {
            plan.at_once.insert(s);
        } else {
            plan.fenced.entry(view.live.clone()).or_default().insert(s);
        }
    }
    plan
}

/// Remembers a pass: its view becomes the last pass's, and the shards whose epoch changed are
/// stamped `now`; stamps older than `window` are dropped (an absent stamp counts as the first
/// pass, which is older still).
pub(super) fn remember(mem: &mut Memory, view: &MapView, window: Duration, now: Instant) {
    mem.changed_at
        .retain(|_, t| now.saturating_duration_since(*t) < window);
    if !mem.prev.is_empty() {
        for (i, e) in view.shards.iter().enumerate() {
            if mem.prev.get(i).map(|p| p.epoch) != Some(e.epoch)
                && let Ok(s) = u16::try_from(i)
            {
                mem.changed_at.insert(s, now);
            }
        }
    }
    mem.owned = view.mine.clone();
    mem.prev = view.shards.clone();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::{BTreeMap, BTreeSet};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{MapView, Memory, PassPlan, plan, remember};
    use crate::state::ShardEntry;

    /// L + F + m at the defaults (1 s + 250 ms + 200 ms).
    const WINDOW: Duration = Duration::from_millis(1450);

    fn set<T: Ord + Copy>(xs: &[T]) -> BTreeSet<T> {
        xs.iter().copied().collect()
    }

    /// A view of node `me` over `(owner, epoch)` per shard, with the nodes marked down.
    fn view(me: u64, shards: &[(u64, u64)], nodes: &[u64], down: &[u64]) -> MapView {
        let shards: Vec<ShardEntry> = shards
            .iter()
            .map(|(o, e)| ShardEntry {
                owner: Some(*o),
                epoch: *e,
            })
            .collect();
        MapView {
            mine: shards
                .iter()
                .enumerate()
                .filter(|(_, e)| e.owner == Some(me))
                .map(|(i, _)| i as u16)
                .collect(),
            epoch: shards.iter().map(|e| e.epoch).sum(),
            shards,
            down: set(down),
            live: nodes
                .iter()
                .copied()
                .filter(|n| *n != me && !down.contains(n))
                .collect(),
            writes: Vec::new(),
        }
    }

    fn fenced(on: &[u64], shards: &[u16]) -> BTreeMap<BTreeSet<u64>, BTreeSet<u16>> {
        [(set(on), set(shards))].into_iter().collect()
    }

    /// A watcher that started at `t0` and whose last pass saw `last`.
    fn memory(t0: Instant, last: &MapView) -> Memory {
        let mut m = Memory {
            owned: BTreeSet::new(),
            prev: Vec::new(),
            changed_at: BTreeMap::new(),
            started: t0,
        };
        remember(&mut m, last, WINDOW, t0);
        m
    }

    #[test]
    fn a_shard_adopted_from_a_live_node_waits_for_every_live_node_not_only_the_previous_owner() {
        // The soak's case (0x5eed2ac7f8be1206, run 2), seen by node 1: shard 0 moved node 2 ->
        // node 0 (one pass), then node 0 -> node 1. Node 2, leader on a map that still gives it the
        // shard, is live: the fence must wait for its acting epoch too, not for node 0's alone.
        let t0 = Instant::now();
        let a = view(1, &[(2, 1), (1, 1)], &[0, 1, 2], &[]);
        let mut m = memory(t0, &a);
        let b = view(1, &[(0, 2), (1, 1)], &[0, 1, 2], &[]);
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(plan(&m, &b, WINDOW, t1), PassPlan::default());
        remember(&mut m, &b, WINDOW, t1);
        let c = view(1, &[(1, 3), (1, 1)], &[0, 1, 2], &[]);
        let p = plan(&m, &c, WINDOW, t1 + Duration::from_millis(50));
        assert_eq!(p.fenced, fenced(&[0, 2], &[0]));
        assert!(p.at_once.is_empty() && p.released.is_empty());
    }

    #[test]
    fn a_shard_moved_twice_within_the_window_waits_for_the_first_owner_though_the_second_is_down() {
        // X -> Y -> Z (nodes 0 -> 1 -> 2), seen by Z: Y took it 300 ms ago and is down now, but
        // X lost it only 300 ms ago and may still hold a lease that lets it act.
        let t0 = Instant::now();
        let a = view(2, &[(0, 4)], &[0, 1, 2], &[]);
        let t1 = t0 + Duration::from_secs(10);
        let mut m = memory(t0, &a);
        let b = view(2, &[(1, 5)], &[0, 1, 2], &[]);
        remember(&mut m, &b, WINDOW, t1);
        let c = view(2, &[(2, 6)], &[0, 1, 2], &[1]);
        let t2 = t1 + Duration::from_millis(300);
        assert_eq!(plan(&m, &c, WINDOW, t2).fenced, fenced(&[0], &[0]));
        // Once Y has held it for the whole window, a move from Y (down) needs no fence.
        let t3 = t1 + WINDOW;
        assert_eq!(plan(&m, &c, WINDOW, t3).at_once, set(&[0]));
        // Both moves between two passes: the owners in between are unknown, every live node counts.
        let m = memory(t0, &a);
        assert_eq!(plan(&m, &c, WINDOW, t3).fenced, fenced(&[0], &[0]));
    }

    #[test]
    fn a_shard_that_went_away_and_came_back_between_two_passes_is_released_and_fenced() {
        // Node 0 owned shard 1 at epoch 3; between two passes it went to node 1 and back (epoch
        // 5). Node 1 may have acted for it in between: node 0 lets it go (its calls are stale, and
        // its acting epoch must not claim a release it did not make) and takes it again behind a
        // fence.
        let t0 = Instant::now();
        let a = view(0, &[(0, 1), (0, 3)], &[0, 1], &[]);
        let m = memory(t0, &a);
        let b = view(0, &[(0, 1), (0, 5)], &[0, 1], &[]);
        let p = plan(&m, &b, WINDOW, t0 + Duration::from_secs(5));
        assert_eq!(p.released, set(&[1]));
        assert_eq!(p.fenced, fenced(&[1], &[1]));
        assert!(p.at_once.is_empty());
    }

    #[test]
    fn a_shard_from_a_node_down_after_holding_it_long_enters_at_once() {
        let t0 = Instant::now();
        let a = view(0, &[(1, 1), (2, 1)], &[0, 1, 2], &[]);
        let m = memory(t0, &a);
        let b = view(0, &[(0, 2), (2, 1)], &[0, 1, 2], &[1]);
        let p = plan(&m, &b, WINDOW, t0 + Duration::from_secs(60));
        assert_eq!(p.at_once, set(&[0]));
        assert!(p.fenced.is_empty() && p.released.is_empty());
        // Alone in the pool: nobody to wait for.
        let c = view(0, &[(0, 2), (0, 2)], &[0], &[]);
        assert_eq!(
            plan(
                &memory(t0, &view(0, &[(0, 2), (1, 1)], &[0], &[])),
                &c,
                WINDOW,
                t0
            )
            .at_once,
            set(&[1])
        );
    }
}
