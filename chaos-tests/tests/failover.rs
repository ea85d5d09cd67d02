//! Invariant: **an answered call survives the SIGKILL of a node.** Three real `medpool serve`
//! processes on 127.0.N.1-3 behind a Service-like forwarder (127.0.N.100:5060); two simulated
//! gateways (127.0.N.21/.22:5060; gw1 answers nodes directly as RFC 3581 says, gw2 answers the Via's
//! sent-by, i.e. back through the Service) and a caller on the internal trunk (127.0.N.50) that holds
//! 200 calls up through the Service. The node that carries the caller's flow is SIGKILLed and the
//! forwarder told so; once the survivors own its shards and have adopted them, every call is
//! re-INVITEd and then hung up by the caller: every request must get a 2xx from the far side through
//! the pool. The second test then restarts the killed node on its data folder, waits until it is a
//! member of the pool again and requires 50 new calls to complete, spread over all three nodes.
//!
//! Every run prints its seed (call identifiers derive from it; `MEDPOOL_SEED` replays) and the
//! caller's ledger. A transaction without a final answer within 32 s is counted *unknown*. The two
//! tests run one after the other (2 shared cores): about a minute in all.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::time::Duration;

use futures_util::future::join_all;
use medpool_chaos_tests::pool::{LocalPool, Net, status_table};
use medpool_chaos_tests::seed::seed;
use medpool_simpeer::ledger::casualties;
use medpool_simpeer::{
    Caller, CallerConfig, Forwarder, ForwarderConfig, Gateway, GatewayConfig, ResponseRouting,
    Summary,
};

const CALLS: usize = 200;
const NEW_CALLS: usize = 50;

/// One test at a time: six debug-build nodes and 400 calls at once would be timing noise on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Run {
    name: &'static str,
    seed: u64,
    pool: LocalPool,
    fwd: Forwarder,
    gws: Vec<Gateway>,
    caller: Caller,
    victim: usize,
}

fn check(
    name: &str,
    what: &str,
    calls: usize,
    caller: &Caller,
    pool: &LocalPool,
    require_bye: bool,
) {
    let ledger = caller.ledger();
    let s = Summary::of(&ledger);
    eprintln!("[{name}] ledger ({what}):\n{s}");
    let ok = s.placed == calls
        && s.answered == calls
        && s.survived == calls
        && s.unknown == 0
        && (!require_bye || s.bye_ok == calls);
    if !ok {
        let list = casualties(&ledger);
        let first: Vec<&str> = list.lines().take(25).collect();
        panic!(
            "[{name}] {what}: {} of {calls} calls survived, {} unknown, {} failed; data and logs in {}\n{}",
            s.survived,
            s.unknown,
            s.failed,
            pool.dir().display(),
            first.join("\n")
        );
    }
}

/// Pool, peers, calls held, the caller's node SIGKILLed, shards moved, every call re-INVITEd and
/// hung up. Returns everything still running for the next step.
async fn kill_a_node_under_calls(name: &'static str, n: u8) -> Run {
    let seed = seed(name);
    let net = Net(n);
    let gw1 = Gateway::start(GatewayConfig::new(net.gateway(0)))
        .await
        .unwrap();
    let gw2 = Gateway::start(GatewayConfig {
        routing: ResponseRouting::ViaSentBy,
        ..GatewayConfig::new(net.gateway(1))
    })
    .await
    .unwrap();
    let backends: Vec<_> = (0..3).map(|i| net.node_sip(i)).collect();
    let fwd = Forwarder::start(
        ForwarderConfig::new(net.service(), backends).with_probes(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let mut pool = LocalPool::start(net, 3).await.unwrap();
    eprintln!(
        "[{name}] pool up:\n{}",
        status_table(&pool.status(0).await.unwrap())
    );

    let caller = Caller::start(CallerConfig::new(net.caller(5070), net.service(), seed))
        .await
        .unwrap();
    let answered = caller.place(CALLS).await;
    eprintln!("[{name}] {answered}/{CALLS} calls answered and held up");
    check(name, "calls set up", CALLS, &caller, &pool, false);

    // Confirmed dialogs are group-committed: wait until the pool has recorded them all.
    let mut before = pool.status(0).await.unwrap();
    for _ in 0..50 {
        if before.dialogs >= CALLS {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        before = pool.status(0).await.unwrap();
    }
    assert!(
        before.dialogs >= CALLS,
        "[{name}] only {} of {CALLS} confirmed dialogs replicated after 5 s",
        before.dialogs
    );

    let pinned = fwd.backend_of(caller.local_addr()).unwrap();
    let victim = pool.index_of(pinned).unwrap();
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let marks: Vec<(usize, usize)> = survivors
        .iter()
        .map(|&s| (s, pool.nodes[s].log().len()))
        .collect();
    eprintln!(
        "[{name}] SIGKILL node {victim} (pid {}, carries the caller's flow; leader was {:?}); before:\n{}",
        pool.nodes[victim].pid(),
        before.leader,
        status_table(&before)
    );
    let killed = pool.kill(victim);
    fwd.mark_dead(net.node_sip(victim));
    let failover = pool
        .wait_failover(victim, killed, &before, &marks, Duration::from_secs(20))
        .await
        .unwrap();
    eprintln!(
        "[{name}] shards moved {:.2} s after the kill, adopted after {:.2} s, {} calls rebuilt:\n{}\n{}",
        failover.map_moved.as_secs_f64(),
        failover.adopted.as_secs_f64(),
        failover.restored,
        failover.lines.join("\n"),
        status_table(&failover.after)
    );

    let reinvited = caller.reinvite_all().await;
    let hung_up = caller.hangup_all().await;
    eprintln!("[{name}] re-INVITE 2xx: {reinvited}/{CALLS}, BYE 2xx: {hung_up}/{CALLS}");
    let counts: Vec<_> = [&gw1, &gw2].iter().map(|g| g.counts()).collect();
    eprintln!(
        "[{name}] gateways: {counts:?}\n[{name}] forwarder: {:?}",
        fwd.counts()
    );
    check(name, "after the kill", CALLS, &caller, &pool, true);
    let byes: u64 = counts.iter().map(|c| c.byes).sum();
    let reinvites: u64 = counts.iter().map(|c| c.reinvites).sum();
    assert_eq!(byes, CALLS as u64, "[{name}] every BYE reached a gateway");
    assert_eq!(
        reinvites, CALLS as u64,
        "[{name}] every re-INVITE reached a gateway"
    );
    Run {
        name,
        seed,
        pool,
        fwd,
        gws: vec![gw1, gw2],
        caller,
        victim,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_the_sigkill_of_a_node() {
    let _one_at_a_time = SERIAL.lock().await;
    let run = kill_a_node_under_calls("failover", 71).await;
    drop(run);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_killed_node_rejoins_and_new_calls_complete() {
    let _one_at_a_time = SERIAL.lock().await;
    let Run {
        name,
        seed,
        mut pool,
        fwd,
        gws,
        caller,
        victim,
    } = kill_a_node_under_calls("rejoin", 72).await;
    drop(caller);
    let net = pool.net;
    let info = pool.restart(victim, Duration::from_secs(30)).await.unwrap();
    fwd.mark_alive(net.node_sip(victim));
    eprintln!(
        "[{name}] node {victim} restarted on its data folder and is a member again:\n{}",
        status_table(&info)
    );

    // Three new callers (three new flows: round robin over three live backends, one each).
    let mut callers = Vec::new();
    for k in 0..3u16 {
        let cfg = CallerConfig::new(
            net.caller(5071 + k),
            net.service(),
            seed.wrapping_add(u64::from(k) + 1),
        );
        callers.push(Caller::start(cfg).await.unwrap());
    }
    let share = |k: usize| NEW_CALLS / 3 + usize::from(k < NEW_CALLS % 3);
    let placed = join_all(callers.iter().enumerate().map(|(k, c)| c.place(share(k)))).await;
    eprintln!("[{name}] new calls answered: {placed:?}");
    let reinvited = join_all(callers.iter().map(|c| c.reinvite_all())).await;
    let hung_up = join_all(callers.iter().map(|c| c.hangup_all())).await;
    eprintln!("[{name}] new calls: re-INVITE 2xx {reinvited:?}, BYE 2xx {hung_up:?}");
    let mut ledger = Vec::new();
    for c in &callers {
        ledger.extend(c.ledger());
    }
    let s = Summary::of(&ledger);
    eprintln!("[{name}] ledger (new calls after the rejoin):\n{s}");
    let flows: Vec<_> = callers
        .iter()
        .filter_map(|c| fwd.backend_of(c.local_addr()))
        .collect();
    assert!(
        s.survived == NEW_CALLS && s.unknown == 0,
        "[{name}] {} of {NEW_CALLS} new calls completed; data and logs in {}\n{}",
        s.survived,
        pool.dir().display(),
        casualties(&ledger)
    );
    assert!(
        flows.contains(&net.node_sip(victim)),
        "[{name}] the restarted node received a flow: {flows:?}"
    );
    drop(gws);
}
