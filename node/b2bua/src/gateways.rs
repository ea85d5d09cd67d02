//! The gateway table of one node: each gateway's state in atomics that routing reads without a round
//! trip ([`HealthView`]), its operator state, and its active calls and CPS counted against the trunk's
//! capacity. The GatewayActor (module `gateway`) writes health in; calls take and give back slots;
//! passive health (INVITE outcomes) goes to the gateway's prober through a
//! [`ractor::DerivedActorRef`] of [`InviteOutcome`], so this table names no actor type. In a pool
//! a gateway's ceilings are this node's share of the trunk's limits and its operator state is the
//! pool's ([`crate::capacity`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ractor::DerivedActorRef;
use tokio::time::Instant;

pub use crate::capacity::AdminState;
use crate::capacity::{Capacity, CpsGate};
use crate::config::Trunk;
use crate::health::{GatewayView, HealthView, InviteOutcome};

/// Shared, lock-free state of one gateway on this node.
#[derive(Debug)]
pub struct GatewayHandle {
    /// The trunk's name.
    pub name: String,
    pub(crate) up: AtomicBool,
    pub(crate) enabled: AtomicBool,
    pub(crate) active: AtomicU32,
    max_calls: Option<u32>,
    max_cps: Option<u32>,
    cps: CpsGate,
    epoch: Instant,
    /// Last OPTIONS round trip in microseconds (0 = none yet).
    pub last_rtt_us: AtomicU64,
    /// Last OPTIONS answer status (0 = none / timeout).
    pub last_status: AtomicU32,
    /// Consecutive failures.
    pub failures: AtomicU32,
    /// Where the gateway's INVITE outcomes go (its prober, the GatewayActor).
    pub(crate) actor: Mutex<Option<DerivedActorRef<InviteOutcome>>>,
}

impl GatewayHandle {
    pub(crate) fn new(trunk: &Trunk) -> GatewayHandle {
        GatewayHandle {
            name: trunk.name.clone(),
            up: AtomicBool::new(true),
            enabled: AtomicBool::new(true),
            active: AtomicU32::new(0),
            max_calls: trunk.max_calls,
            max_cps: trunk.max_cps,
            cps: CpsGate::default(),
            epoch: Instant::now(),
            last_rtt_us: AtomicU64::new(0),
            last_status: AtomicU32::new(0),
            failures: AtomicU32::new(0),
            actor: Mutex::new(None),
        }
    }
    /// The actor id of the gateway's prober (its GatewayActor), when it has one.
    pub(crate) fn prober(&self) -> Option<ractor::ActorId> {
        self.actor
            .lock()
            .ok()
            .and_then(|a| a.as_ref().map(|a| a.get_id()))
    }
    /// Whether the gateway is up (health).
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
    /// Whether an operator allows new calls.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }
    /// Active calls through it on this node.
    pub fn active_calls(&self) -> u32 {
        self.active.load(Ordering::Relaxed)
    }
    /// The trunk's limits for the whole pool: `max_calls`, `max_cps`.
    pub fn limits(&self) -> (Option<u32>, Option<u32>) {
        (self.max_calls, self.max_cps)
    }
    fn view(&self, capacity: &Capacity) -> GatewayView {
        let active = self.active_calls();
        let (calls, cps) = capacity.limits(&self.name, self.max_calls, self.max_cps);
        let full = calls.is_some_and(|m| active >= m);
        let no_token = cps.is_some_and(|c| !self.cps.has_token(c, self.epoch.elapsed()));
        GatewayView {
            up: self.is_up(),
            enabled: self.is_enabled()
                && capacity.admin(&self.name).is_none_or(|a| a.takes_calls()),
            active_calls: active,
            at_capacity: full || no_token,
        }
    }
}

/// Every gateway of this node, by trunk name.
#[derive(Debug, Default)]
pub struct Gateways {
    table: std::sync::RwLock<BTreeMap<String, Arc<GatewayHandle>>>,
    /// Where this node's share of each gateway's limits, and the pool's gateway states, come from.
    pub capacity: Capacity,
    /// Woken when a call gives its slot back (the pool's settle check waits for it).
    pub released: tokio::sync::Notify,
}

impl HealthView for Gateways {
    fn view(&self, trunk: &str) -> GatewayView {
        self.get(trunk)
            .map(|h| h.view(&self.capacity))
            .unwrap_or_default()
    }
}

impl Gateways {
    /// The handle of a trunk.
    pub fn get(&self, trunk: &str) -> Option<Arc<GatewayHandle>> {
        self.table.read().ok().and_then(|t| t.get(trunk).cloned())
    }
    /// Every handle.
    pub fn all(&self) -> Vec<Arc<GatewayHandle>> {
        self.table
            .read()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }
    /// Takes one call slot (capacity and CPS) on a trunk; false when it is full.
    pub fn try_acquire(&self, trunk: &Trunk) -> bool {
        let Some(h) = self.get(&trunk.name) else {
            return true; // not a gateway we track (e.g. an internal trunk as target)
        };
        if !h.is_enabled()
            || self
                .capacity
                .admin(&h.name)
                .is_some_and(|a| !a.takes_calls())
        {
            return false;
        }
        let (calls, cps) = self.capacity.limits(&h.name, h.max_calls, h.max_cps);
        let ceiling = calls.unwrap_or(u32::MAX);
        if h.active
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                (v < ceiling).then_some(v + 1)
            })
            .is_err()
        {
            return false;
        }
        if let Some(c) = cps
            && !h.cps.try_take(c, h.epoch.elapsed())
        {
            self.release(&h.name);
            return false;
        }
        true
    }
    /// Counts a call carried over from another node (rebuilt here from its record) against the
    /// gateway: always, even beyond this node's share (it then takes no new call until it is
    /// within it again). False when the gateway is not one we track.
    pub fn carry(&self, trunk: &Trunk) -> bool {
        match self.get(&trunk.name) {
            Some(h) => {
                h.active.fetch_add(1, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
    /// Whether, in a pool, this node has used up its share of some gateway's limits (calls, or
    /// calls a second) while that gateway is up and enabled: a new call it could set up itself is
    /// better sent to its Call-ID's owner, whose share may have room (`NodeCtx::new_call_shard`),
    /// as every call was before `[node] local_calls`. False outside a pool (the node has the whole
    /// limit) and when no gateway has a limit.
    pub fn a_pool_share_is_full(&self) -> bool {
        let limited: Vec<Arc<GatewayHandle>> = self
            .all()
            .into_iter()
            .filter(|h| h.max_calls.is_some() || h.max_cps.is_some())
            .collect();
        // Most pools set no limit: then no division is looked at (this runs for new calls).
        if limited.is_empty() || self.capacity.division().is_none() {
            return false;
        }
        limited.iter().any(|h| {
            let v = h.view(&self.capacity);
            v.up && v.enabled && v.at_capacity
        })
    }
    /// This node's ceilings (its share, in a pool) of calls and calls per second for a gateway.
    pub fn ceilings(&self, trunk: &str) -> (Option<u32>, Option<u32>) {
        self.get(trunk)
            .map(|h| self.capacity.limits(&h.name, h.max_calls, h.max_cps))
            .unwrap_or_default()
    }
    /// Gives a call slot back.
    pub fn release(&self, trunk: &str) {
        if let Some(h) = self.get(trunk) {
            let _ = h
                .active
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    Some(v.saturating_sub(1))
                });
            self.released.notify_one();
        }
    }
    /// A call reports how an INVITE to the gateway went (passive health).
    pub fn invite_outcome(&self, trunk: &str, outcome: InviteOutcome) {
        if let Some(h) = self.get(trunk)
            && let Ok(a) = h.actor.lock()
            && let Some(a) = a.as_ref()
        {
            let _ = a.send_message(outcome);
        }
    }
    /// Puts (or replaces) a gateway's handle.
    pub(crate) fn insert(&self, handle: Arc<GatewayHandle>) {
        if let Ok(mut t) = self.table.write() {
            t.insert(handle.name.clone(), handle);
        }
    }
    /// Forgets a gateway.
    pub(crate) fn remove(&self, trunk: &str) {
        if let Ok(mut t) = self.table.write() {
            t.remove(trunk);
        }
    }
    /// Enables or disables new calls to a gateway.
    pub fn set_admin(&self, trunk: &str, state: AdminState) -> bool {
        match self.get(trunk) {
            Some(h) => {
                h.enabled
                    .store(state == AdminState::Enabled, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::BTreeSet;

    use super::*;
    use crate::capacity::{Division, PoolGateways};
    use crate::config::PoolConfig;

    /// Node 2 of a pool of `current`, whose last stable members were `stable`; gw1 disabled when
    /// `disabled`.
    struct View {
        current: Vec<u64>,
        stable: Vec<u64>,
        disabled: bool,
    }

    impl PoolGateways for View {
        fn division(&self) -> Division {
            Division {
                me: 2,
                generation: 1,
                current: self.current.iter().copied().collect::<BTreeSet<_>>(),
                stable: self.stable.iter().copied().collect::<BTreeSet<_>>(),
            }
        }
        fn admin(&self, _: &str) -> AdminState {
            if self.disabled {
                AdminState::Disabled
            } else {
                AdminState::Enabled
            }
        }
    }

    fn gw1() -> Trunk {
        let toml = "[[trunk]]\nname = \"gw1\"\naddress = \"127.0.153.21\"\nside = \"gateway\"\n\
                    max_calls = 30\n";
        PoolConfig::from_toml_str(toml, "test")
            .unwrap()
            .trunk("gw1")
            .cloned()
            .unwrap()
    }

    fn table(view: View) -> (Gateways, Trunk) {
        let t = gw1();
        let g = Gateways::default();
        g.insert(Arc::new(GatewayHandle::new(&t)));
        assert!(g.capacity.attach(Arc::new(view)));
        (g, t)
    }

    #[test]
    fn a_node_takes_calls_up_to_its_share_and_carried_calls_beyond_it() {
        let (g, t) = table(View {
            current: vec![1, 2, 3],
            stable: vec![1, 2, 3],
            disabled: false,
        });
        assert_eq!(g.ceilings("gw1"), (Some(10), None));
        assert!(!g.a_pool_share_is_full());
        assert_eq!((0..15).filter(|_| g.try_acquire(&t)).count(), 10);
        assert!(g.view("gw1").at_capacity);
        assert!(
            g.a_pool_share_is_full(),
            "new calls are better set up elsewhere"
        );
        assert!(g.carry(&t), "a carried call counts even beyond the share");
        assert_eq!(g.get("gw1").unwrap().active_calls(), 11);
        g.release("gw1");
        assert!(!g.try_acquire(&t), "at its share again: still no new call");
        g.release("gw1");
        assert!(g.try_acquire(&t));
    }

    #[test]
    fn a_share_grows_only_with_a_stable_division_and_a_disabled_gateway_takes_nothing() {
        // Node 3 died: the new division (1, 2) is not stable yet, so node 2 keeps 10.
        let (g, t) = table(View {
            current: vec![1, 2],
            stable: vec![1, 2, 3],
            disabled: false,
        });
        assert_eq!(g.ceilings("gw1"), (Some(10), None));
        assert_eq!((0..20).filter(|_| g.try_acquire(&t)).count(), 10);
        let (g, t) = table(View {
            current: vec![1, 2],
            stable: vec![1, 2, 3],
            disabled: true,
        });
        assert!(!g.try_acquire(&t));
        assert!(!g.view("gw1").enabled);
    }
}
