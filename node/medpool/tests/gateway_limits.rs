//! Pool-wide gateway capacity and replicated gateway states, through a 3-node pool of real
//! `medpool serve` processes (tests/admin_common), simpeer gateways that count the calls they
//! hold at once, and simpeer callers placing calls through every node.
//!
//! gw1 has `max_calls = 30` and is the first choice; gw2 (no limit) the second, so a call gw1
//! cannot take goes to gw2. Addresses: block 127.0.153.x — nodes .1-.3 (SIP :5060, internal
//! :7000, admin :7001), callers on 127.0.153.1:5071-5073 (trunk `pbx`), gateways .21 and .22.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs
)]

mod admin_common;
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use admin_common::TestPool;
use common::{PoolSpec, wait_until};
use medpool_simpeer::{Caller, CallerConfig, Gateway, GatewayConfig};

const N: u8 = 153;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// gw1's share per node, as `medpool ctl gateways ls gw1` on node `ask` shows it.
fn shares(pool: &TestPool, ask: u64) -> BTreeMap<u64, u64> {
    let r = pool.ctl(ask, &["gateways", "ls", "gw1", "-o", "json"]);
    if r.code != 0 {
        return BTreeMap::new();
    }
    r.json()["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| Some((g["node_id"].as_u64()?, g["share_calls"].as_u64()?)))
        .collect()
}

/// gw1's admin state per node (lower case), and whether it is the pool's.
fn admin_states(pool: &TestPool, ask: u64) -> BTreeMap<u64, (String, bool)> {
    let r = pool
        .ctl(ask, &["gateways", "ls", "gw1", "-o", "json"])
        .expect(0);
    r.json()["gateways"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["node_id"].as_u64().unwrap(),
                (
                    g["admin"].as_str().unwrap().to_lowercase(),
                    g["admin_replicated"].as_bool().unwrap(),
                ),
            )
        })
        .collect()
}

fn wait_shares(pool: &TestPool, want: &[(u64, u64)]) {
    let want: BTreeMap<u64, u64> = want.iter().copied().collect();
    let mut seen = BTreeMap::new();
    let ok = wait_until(Duration::from_secs(60), || {
        seen = shares(pool, want.keys().next().copied().unwrap_or(1));
        seen == want
    });
    assert!(
        ok,
        "gw1's shares should become {want:?}; last seen {seen:?}"
    );
}

fn caller(rt: &tokio::runtime::Runtime, port: u16, node: u64, seed: u64) -> Caller {
    let mut cfg = CallerConfig::new(
        addr(&format!("127.0.{N}.1:{port}")),
        addr(&format!("127.0.{N}.{node}:5060")),
        seed,
    );
    cfg.cps = 25;
    rt.block_on(Caller::start(cfg)).unwrap()
}

#[test]
fn a_gateways_limit_holds_for_the_whole_pool_and_its_state_is_replicated() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gw1 = rt
        .block_on(Gateway::start(GatewayConfig::new(addr(&format!(
            "127.0.{N}.21:5060"
        )))))
        .unwrap();
    let gw2 = rt
        .block_on(Gateway::start(GatewayConfig::new(addr(&format!(
            "127.0.{N}.22:5060"
        )))))
        .unwrap();
    let mut spec = PoolSpec::new(N);
    spec.gw_max_calls = [Some(30), None];
    spec.priority = [Some(1), Some(2)];
    spec.node_max_calls = 500;
    let mut pool = TestPool::start("gateway-limits", N, 3, &spec.toml(), None);

    // Once the division of the three nodes is stable, each holds a third of gw1's 30 calls.
    wait_shares(&pool, &[(1, 10), (2, 10), (3, 10)]);

    // 1. 102 calls offered through all three nodes, held: gw1 never holds more than 30.
    let callers = [
        caller(&rt, 5071, 1, 0x1531),
        caller(&rt, 5072, 2, 0x1532),
        caller(&rt, 5073, 3, 0x1533),
    ];
    let answered = rt.block_on(async {
        let (a, b, c) = tokio::join!(
            callers[0].place(34),
            callers[1].place(34),
            callers[2].place(34)
        );
        a + b + c
    });
    let (g1, g2) = (gw1.counts(), gw2.counts());
    assert!(
        gw1.peak_active() <= 30,
        "gw1 held {} calls at once (max_calls = 30 for the pool); gw1 {g1:?}, gw2 {g2:?}",
        gw1.peak_active()
    );
    assert!(
        g1.active >= 24,
        "each node has a share of 10 and about 34 calls: gw1 should be (nearly) full, holds {}",
        g1.active
    );
    assert_eq!(
        answered, 102,
        "every call is answered, by gw2 when gw1 is full (gw1 {g1:?}, gw2 {g2:?})"
    );
    assert_eq!(g1.active + g2.active, 102);
    eprintln!(
        "three nodes: gw1 peak {}, holds {}; gw2 holds {}",
        gw1.peak_active(),
        g1.active,
        g2.active
    );

    // 2. Node 3 dies with its calls up: they are carried over to nodes 1 and 2 and count there;
    //    new calls through the survivors still leave gw1 within 30.
    pool.node_mut(3).kill();
    let mut last = String::new();
    let moved = wait_until(Duration::from_secs(30), || {
        let v = pool.status(1);
        last = v.to_string();
        v["unowned_shards"] == 0
            && v["nodes"].as_array().unwrap().iter().any(|n| {
                n["id"] == 3
                    && n["state"]
                        .as_str()
                        .is_some_and(|s| s.eq_ignore_ascii_case("down"))
            })
    });
    assert!(moved, "node 3 should be down and its shards moved: {last}");
    gw1.reset_peak();
    let answered = rt.block_on(async {
        let (a, b) = tokio::join!(callers[0].place(20), callers[1].place(20));
        a + b
    });
    let (g1, g2) = (gw1.counts(), gw2.counts());
    assert!(
        gw1.peak_active() <= 30,
        "after node 3's death gw1 held {} calls at once; gw1 {g1:?}, gw2 {g2:?}",
        gw1.peak_active()
    );
    assert_eq!(
        answered, 40,
        "the new calls go to gw2 (gw1 {g1:?}, gw2 {g2:?})"
    );
    eprintln!(
        "after node 3's death: gw1 peak {}, shares {:?}",
        gw1.peak_active(),
        shares(&pool, 1)
    );

    // Node 3 comes back; every call is hung up; the three shares come back.
    pool.nodes.retain(|n| n.id != 3);
    pool.start_node(3);
    pool.wait_converged(3);
    rt.block_on(async {
        tokio::join!(
            callers[0].hangup_all(),
            callers[1].hangup_all(),
            callers[2].hangup_all()
        )
    });
    let mut active = 0;
    let idle = wait_until(Duration::from_secs(40), || {
        active = gw1.counts().active;
        active == 0
    });
    assert!(
        idle,
        "gw1 still holds {active} calls: {:?}",
        gw1.active_calls()
    );
    wait_shares(&pool, &[(1, 10), (2, 10), (3, 10)]);
    let before = gw1.counts().calls;
    let answered = rt.block_on(async {
        let (a, b, c) = tokio::join!(
            callers[0].place(2),
            callers[1].place(2),
            callers[2].place(2)
        );
        a + b + c
    });
    assert_eq!(answered, 6);
    assert_eq!(gw1.counts().calls - before, 6, "gw1 takes calls again");

    // 3. `gateways disable gw1` on node 1: no node sends gw1 a new call.
    let r = pool.ctl(1, &["gateways", "disable", "gw1"]).expect(0);
    assert!(r.stdout.contains("1, 2, 3"), "{r:?}");
    let states = admin_states(&pool, 2);
    assert_eq!(states.len(), 3, "{states:?}");
    assert!(
        states
            .values()
            .all(|(s, replicated)| s == "disabled" && *replicated),
        "every node shows gw1 disabled, as the pool's state: {states:?}"
    );
    let before = (gw1.counts().calls, gw2.counts().calls);
    let answered = rt.block_on(async {
        let (a, b, c) = tokio::join!(
            callers[0].place(4),
            callers[1].place(4),
            callers[2].place(4)
        );
        a + b + c
    });
    assert_eq!(answered, 12);
    assert_eq!(
        gw1.counts().calls,
        before.0,
        "gw1 is disabled on every node"
    );
    assert_eq!(gw2.counts().calls - before.1, 12);

    // 4. A node restarted afterwards (SIGKILL, then start) still has gw1 disabled.
    pool.node_mut(2).kill();
    pool.nodes.retain(|n| n.id != 2);
    pool.start_node(2);
    pool.wait_converged(3);
    let states = admin_states(&pool, 2);
    assert_eq!(
        states.get(&2).map(|(s, _)| s.as_str()),
        Some("disabled"),
        "{states:?}"
    );
    let before = gw1.counts().calls;
    let answered = rt.block_on(callers[1].place(6));
    assert_eq!(answered, 6);
    assert_eq!(
        gw1.counts().calls,
        before,
        "gw1 stays disabled after a restart"
    );

    // Enabled again, pool-wide.
    pool.ctl(3, &["gateways", "enable", "gw1"]).expect(0);
    let before = gw1.counts().calls;
    let answered = rt.block_on(callers[0].place(3));
    assert_eq!(answered, 3);
    assert_eq!(
        gw1.counts().calls - before,
        3,
        "gw1 takes calls once enabled"
    );

    rt.block_on(async {
        tokio::join!(
            callers[0].hangup_all(),
            callers[1].hangup_all(),
            callers[2].hangup_all()
        )
    });
    drop(pool);
}
