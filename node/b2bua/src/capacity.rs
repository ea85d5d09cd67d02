//! Pool-wide gateway capacity: this node's share of each gateway's `max_calls` and `max_cps`, and
//! the operators' replicated gateway states, both read through [`PoolGateways`] (the Raft pool
//! implements it; without it — the embedded single-node pool — the node has the whole limit and
//! the gateway states are its own).
//!
//! The pure part: [`share`] divides a limit among a set of members (even parts, the remainder
//! one each to the members that follow a place chosen by the gateway's name, so that not every
//! gateway favours the same node); [`Division::share`] is the smaller of a node's share among the
//! current members and among the last stable ones, so a share shrinks as soon as a membership
//! change is applied and grows only once every member reported itself within its new share
//! (medpool-cluster's `division` module keeps the generations). [`CpsGate`] is a gateway's token
//! bucket at this node's share of `max_cps`.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::health::TokenBucket;

/// An operator's choice for a gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    /// In service.
    Enabled,
    /// No new calls; existing calls continue.
    Disabled,
    /// No new calls; existing calls finish (the same as disabled for new calls; shown apart).
    Draining,
}

impl AdminState {
    /// Whether new calls may go to the gateway.
    pub fn takes_calls(self) -> bool {
        self == AdminState::Enabled
    }
}

/// Who shares capacity, as this node's applied pool state has it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Division {
    /// This node.
    pub me: u64,
    /// The generation of `current`.
    pub generation: u64,
    /// The members of the current generation.
    pub current: BTreeSet<u64>,
    /// The members of the last generation in which every member settled.
    pub stable: BTreeSet<u64>,
}

impl Division {
    /// This node's share of `limit` for `gateway` now: never more than its share among the
    /// stable members, nor among the current ones.
    pub fn share(&self, limit: u32, gateway: &str) -> u32 {
        share(limit, &self.current, self.me, gateway).min(share(
            limit,
            &self.stable,
            self.me,
            gateway,
        ))
    }

    /// This node's share among the current members: what it must be within to settle.
    pub fn target(&self, limit: u32, gateway: &str) -> u32 {
        share(limit, &self.current, self.me, gateway)
    }
}

/// FNV-1a of a name: the same on every node and every build (std's hasher promises neither).
fn name_hash(name: &str) -> u64 {
    name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// `me`'s part of `limit` divided among `members`: `limit / n` each, and one more for `limit % n`
/// members, counted in id order from a place that `gateway`'s name chooses. 0 for a non-member.
/// The parts of all members add up to `limit` exactly.
pub fn share(limit: u32, members: &BTreeSet<u64>, me: u64, gateway: &str) -> u32 {
    let Some(pos) = members.iter().position(|m| *m == me) else {
        return 0;
    };
    let n = members.len() as u64;
    let (base, rem) = (u64::from(limit) / n, u64::from(limit) % n);
    let rank = (pos as u64 + n - name_hash(gateway) % n) % n;
    // base + 1 <= limit: fits a u32.
    u32::try_from(base + u64::from(rank < rem)).unwrap_or(limit)
}

/// What a node reads of its pool for gateway capacity and gateway states.
pub trait PoolGateways: Send + Sync + 'static {
    /// The division as this node's applied state has it.
    fn division(&self) -> Division;
    /// The operator's state of `gateway` on this node (pool-wide or for this node).
    fn admin(&self, gateway: &str) -> AdminState;
}

/// This node's source of capacity: the whole limit until a pool is attached, then its share.
#[derive(Default)]
pub struct Capacity {
    pool: OnceLock<Arc<dyn PoolGateways>>,
}

impl std::fmt::Debug for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capacity")
            .field("pooled", &self.pool.get().is_some())
            .finish()
    }
}

impl Capacity {
    /// Attaches the pool (once; false if one was attached already).
    pub fn attach(&self, pool: Arc<dyn PoolGateways>) -> bool {
        self.pool.set(pool).is_ok()
    }

    /// The pool's division, when the node is in a pool.
    pub fn division(&self) -> Option<Division> {
        self.pool.get().map(|p| p.division())
    }

    /// The operator's replicated state of a gateway (`None`: not in a pool).
    pub fn admin(&self, gateway: &str) -> Option<AdminState> {
        self.pool.get().map(|p| p.admin(gateway))
    }

    /// This node's ceilings of calls and calls per second for a gateway with these limits.
    pub fn limits(
        &self,
        gateway: &str,
        max_calls: Option<u32>,
        max_cps: Option<u32>,
    ) -> (Option<u32>, Option<u32>) {
        if max_calls.is_none() && max_cps.is_none() {
            return (None, None);
        }
        match self.division() {
            None => (max_calls, max_cps),
            Some(d) => (
                max_calls.map(|m| d.share(m, gateway)),
                max_cps.map(|c| d.share(c, gateway)),
            ),
        }
    }
}

/// A gateway's calls-per-second gate on this node: a token bucket at the node's share of
/// `max_cps`, made again when the share changes (a share of 0 takes no call).
#[derive(Debug, Default)]
pub struct CpsGate {
    bucket: Mutex<Option<(u32, TokenBucket)>>,
}

impl CpsGate {
    fn with<T>(&self, share: u32, f: impl FnOnce(&mut TokenBucket) -> T) -> Option<T> {
        if share == 0 {
            return None;
        }
        let mut b = self.bucket.lock().ok()?;
        if b.as_ref().is_none_or(|(s, _)| *s != share) {
            *b = Some((share, TokenBucket::for_cps(share)));
        }
        b.as_mut().map(|(_, bucket)| f(bucket))
    }

    /// Takes a token at `now` (time since the gateway's epoch); false when over the rate.
    pub fn try_take(&self, share: u32, now: Duration) -> bool {
        self.with(share, |b| b.try_take(now)).unwrap_or(false)
    }

    /// Whether a token is there at `now`, without taking it.
    pub fn has_token(&self, share: u32, now: Duration) -> bool {
        self.with(share, |b| b.has_token(now)).unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn sum(limit: u32, members: &BTreeSet<u64>, gw: &str) -> u32 {
        members.iter().map(|m| share(limit, members, *m, gw)).sum()
    }

    #[test]
    fn shares_add_up_to_the_limit_for_any_membership() {
        for limit in [0, 1, 2, 5, 29, 30, 31, 1000] {
            for n in 1..=9u64 {
                let members: BTreeSet<u64> = (1..=n).map(|i| i * 7 % 13 + i).collect();
                for gw in ["gw1", "gw2", "carrier-a", ""] {
                    assert_eq!(sum(limit, &members, gw), limit, "{limit} {members:?} {gw}");
                    for m in &members {
                        let s = share(limit, &members, *m, gw);
                        assert!(s == limit / n as u32 || s == limit / n as u32 + 1);
                    }
                }
            }
        }
        assert_eq!(share(30, &set(&[1, 2, 3]), 4, "gw1"), 0, "not a member");
        assert_eq!(share(30, &set(&[]), 1, "gw1"), 0);
        assert_eq!(share(30, &set(&[1, 2, 3]), 2, "gw1"), 10);
    }

    #[test]
    fn the_remainder_goes_to_different_nodes_for_different_gateways() {
        let members = set(&[1, 2, 3]);
        let favoured: BTreeSet<u64> = (0..20)
            .map(|i| {
                let gw = format!("gw{i}");
                *members
                    .iter()
                    .find(|m| share(31, &members, **m, &gw) == 11)
                    .unwrap()
            })
            .collect();
        assert!(favoured.len() > 1, "always the same node: {favoured:?}");
    }

    /// Every node's share, each from its own view of the division, adds up to at most the limit
    /// through a re-division: a node that lags behind (it has not applied the change yet) keeps
    /// its old share, a node that applied it shrinks at once and grows only once the new
    /// generation is stable.
    #[test]
    fn a_redivision_never_lets_the_shares_exceed_the_limit() {
        let limit = 30;
        let gw = "gw1";
        let view = |me, current: &[u64], stable: &[u64]| Division {
            me,
            generation: 0,
            current: set(current),
            stable: set(stable),
        };
        // Three members, stable; node 4 joins: the change reaches the nodes one by one.
        let before = [1, 2, 3];
        let after = [1, 2, 3, 4];
        for applied in 0..=4usize {
            let total: u32 = (1..=4u64)
                .map(|me| {
                    let knows = (me as usize) <= applied;
                    let d = if knows {
                        view(me, &after, &before)
                    } else {
                        view(me, &before, &before)
                    };
                    d.share(limit, gw)
                })
                .sum();
            assert!(total <= limit, "{applied} nodes applied the join: {total}");
        }
        assert_eq!(
            view(4, &after, &before).share(limit, gw),
            0,
            "no share before stable"
        );
        let stable: u32 = (1..=4)
            .map(|me| view(me, &after, &after).share(limit, gw))
            .sum();
        assert_eq!(stable, limit, "once stable the whole limit is shared");
        // Node 3 dies: the survivors keep their old shares until they settled.
        let survivors = [1, 2];
        for me in [1, 2] {
            assert_eq!(
                view(me, &survivors, &before).share(limit, gw),
                10,
                "no growth before the new generation is stable"
            );
            assert_eq!(view(me, &survivors, &survivors).share(limit, gw), 15);
        }
        // Any mix of views between two stable divisions stays within the limit.
        let gens: [&[u64]; 4] = [&[1, 2, 3], &[1, 2], &[1, 2, 4], &[2, 4, 5, 6]];
        for w in gens.windows(2) {
            let (old, new) = (w[0], w[1]);
            let nodes: BTreeSet<u64> = old.iter().chain(new).copied().collect();
            for mask in 0..(1u32 << nodes.len()) {
                let total: u32 = nodes
                    .iter()
                    .enumerate()
                    .map(|(i, me)| {
                        if mask & (1 << i) != 0 {
                            view(*me, new, old).share(limit, gw)
                        } else {
                            view(*me, old, old).share(limit, gw)
                        }
                    })
                    .sum();
                assert!(total <= limit, "{old:?} -> {new:?}, mask {mask:b}: {total}");
            }
        }
    }

    #[test]
    fn without_a_pool_the_node_has_the_whole_limit() {
        let c = Capacity::default();
        assert_eq!(c.limits("gw1", Some(30), Some(5)), (Some(30), Some(5)));
        assert_eq!(c.admin("gw1"), None);
        struct Two;
        impl PoolGateways for Two {
            fn division(&self) -> Division {
                Division {
                    me: 2,
                    generation: 3,
                    current: set(&[1, 2]),
                    stable: set(&[1, 2]),
                }
            }
            fn admin(&self, _: &str) -> AdminState {
                AdminState::Draining
            }
        }
        assert!(c.attach(Arc::new(Two)));
        assert_eq!(c.limits("gw1", Some(30), None), (Some(15), None));
        assert_eq!(c.limits("gw1", None, None), (None, None));
        assert_eq!(c.admin("gw1"), Some(AdminState::Draining));
    }

    #[test]
    fn a_cps_gate_follows_its_share() {
        let g = CpsGate::default();
        let t = Duration::from_secs(1);
        assert!(!g.try_take(0, t), "a share of 0 takes nothing");
        assert!(g.try_take(2, t));
        assert!(g.try_take(2, t));
        assert!(!g.try_take(2, t), "a burst of one second's share");
        assert!(g.has_token(3, t), "a new share: a new, full bucket");
    }
}
