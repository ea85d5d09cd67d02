//! This node's part in the pool-wide gateway capacity (README.md and ARCHITECTURE.md, "Pool-wide
//! gateway capacity"): the B2BUA's [`PoolGateways`] view read from the applied Raft state (the
//! capacity division, the operators' gateway states), and the settle task that reports this node
//! within its share of a new division ([`Command::CapacitySettled`]) once it is.
//!
//! A node settles in a generation when, in its applied state: it is a member; the shard map is
//! the one the rebalancer aims at for the members (no shard left to move, so no call will be
//! carried over any more); it acts for every shard it owns and has rebuilt their calls (so the
//! calls it carried over are counted); and for every gateway its calls are within its share among
//! the new members.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use medpool_b2bua::capacity::{AdminState, Division, PoolGateways};
use medpool_b2bua::node::NodeCtx;
use medpool_cluster::division::GatewayAdmin;
use medpool_cluster::pool::Pool;
use medpool_cluster::{Command, State, WriteError, plan_moves};
use openraft::async_runtime::watch::WatchReceiver;

/// The B2BUA's view of the pool's capacity division and gateway states.
pub struct PoolCapacity {
    /// The pool runtime.
    pub pool: Arc<Pool>,
}

/// The division as the B2BUA reads it. A pool from before divisions (generation 0) shares among
/// its active nodes as they are.
fn division_of(state: &State, me: u64) -> Division {
    let d = state.division();
    if d.generation == 0 {
        let active = state.active_nodes();
        return Division {
            me,
            generation: 0,
            current: active.clone(),
            stable: active,
        };
    }
    Division {
        me,
        generation: d.generation,
        current: d.members.clone(),
        stable: d.stable.clone(),
    }
}

impl PoolGateways for PoolCapacity {
    fn division(&self) -> Division {
        let me = self.pool.node_id();
        self.pool.state().read(|s| division_of(s, me))
    }
    fn admin(&self, gateway: &str) -> AdminState {
        let me = self.pool.node_id();
        match self.pool.state().read(|s| s.gateway_admin(gateway, me)) {
            GatewayAdmin::Enabled => AdminState::Enabled,
            GatewayAdmin::Disabled => AdminState::Disabled,
            GatewayAdmin::Draining => AdminState::Draining,
        }
    }
}

/// Shard adoptions (calls being rebuilt) under way on this node; the settle task waits for none.
#[derive(Debug, Default)]
pub struct Adoptions(AtomicUsize);

impl Adoptions {
    /// One adoption starts; it ends when the guard is dropped.
    pub fn start(self: &Arc<Self>) -> AdoptionGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        AdoptionGuard(self.clone())
    }
    fn busy(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

/// An adoption under way.
#[derive(Debug)]
pub struct AdoptionGuard(Arc<Adoptions>);

impl Drop for AdoptionGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The generation this node may report itself settled in now, if any.
fn settle_now(pool: &Pool, node: &NodeCtx, adoptions: &Adoptions) -> Option<u64> {
    let me = pool.node_id();
    let (generation, division, map_settled, mine) = pool.state().read(|s| {
        let d = s.division();
        let members: BTreeSet<u64> = d.members.clone();
        let todo = d.generation > 0 && members.contains(&me) && !d.settled.contains(&me);
        let map_settled = todo && plan_moves(s, &members).is_empty();
        (
            todo.then_some(d.generation),
            division_of(s, me),
            map_settled,
            if map_settled {
                s.shards_of(me)
            } else {
                Vec::new()
            },
        )
    });
    let generation = generation?;
    if !map_settled || adoptions.busy() || !mine.iter().all(|s| pool.acting(*s)) {
        return None;
    }
    let within = node.gateways.all().iter().all(|h| {
        h.limits()
            .0
            .is_none_or(|m| h.active_calls() <= division.target(m, &h.name))
    });
    within.then_some(generation)
}

/// Reports this node settled in each new generation of the division as soon as it is. Wakes on
/// every applied control entry (membership, shard map, division: not dialog records), every change
/// of Raft's role or leader, and every call that gives a gateway slot back; while a generation
/// waits for this node, also every 250 ms (a hand-over fence passing or an adoption ending changes
/// no control state).
pub async fn settle_task(pool: Arc<Pool>, node: Arc<NodeCtx>, adoptions: Arc<Adoptions>) {
    let mut control = pool.state().control_changes();
    let mut server = pool.raft().server_metrics();
    let mut reported: Option<u64> = None;
    loop {
        let pending = settle_now(&pool, &node, &adoptions);
        if let Some(generation) = pending
            && reported != Some(generation)
        {
            let cmd = Command::CapacitySettled {
                node: pool.node_id(),
                generation,
            };
            match pool.write(cmd).await {
                Ok(_) => {
                    tracing::info!(generation, "settled in the gateway capacity division");
                    reported = Some(generation);
                }
                Err(WriteError::Refused(r)) => {
                    tracing::debug!(generation, reason = %r, "capacity generation moved on");
                }
                Err(e) => tracing::debug!(generation, error = %e, "cannot report settled yet"),
            }
        }
        let waiting = pool.state().read(|s| {
            let d = s.division();
            d.members.contains(&pool.node_id()) && !d.settled.contains(&pool.node_id())
        });
        tokio::select! {
            r = control.changed() => if r.is_err() { return },
            r = server.changed() => if r.is_err() { return },
            () = node.gateways.released.notified() => {}
            () = tokio::time::sleep(Duration::from_millis(250)), if waiting => {}
        }
    }
}
