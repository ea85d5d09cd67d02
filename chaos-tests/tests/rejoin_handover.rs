//! Invariant: **a node rejoining the pool takes its shards over without refusing calls.** Three real
//! `medpool serve` processes behind the Service-like forwarder, two simulated gateways; one node
//! (not node 0, chosen by the seed) is SIGKILLed and the survivors take its shards. Then a caller
//! places new calls steadily (50 a second for 2 s) while the killed node is restarted on its data
//! folder and rejoins: the pool hands shards back to it (old owners release them, the new owner
//! adopts them and needs its lease to act). Every new call must be answered 200; a 503 during the
//! hand-over is a refused call. The rebalancer gives a joining node shards with minimal moves,
//! and a drain or a rolling restart must lose no call.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::time::Duration;

use medpool_chaos_tests::pool::{LocalPool, Net, status_table};
use medpool_chaos_tests::seed::seed;
use medpool_simpeer::ledger::casualties;
use medpool_simpeer::{
    Caller, CallerConfig, Forwarder, ForwarderConfig, Gateway, GatewayConfig, Summary,
};

const CALLS: usize = 100;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejoining_node_takes_its_shards_back_without_refusing_calls() {
    let name = "handover";
    let seed = seed(name);
    let net = Net(74);
    let _gw1 = Gateway::start(GatewayConfig::new(net.gateway(0)))
        .await
        .unwrap();
    let _gw2 = Gateway::start(GatewayConfig::new(net.gateway(1)))
        .await
        .unwrap();
    let backends: Vec<_> = (0..3).map(|i| net.node_sip(i)).collect();
    let fwd = Forwarder::start(ForwarderConfig::new(net.service(), backends))
        .await
        .unwrap();
    let mut pool = LocalPool::start(net, 3).await.unwrap();
    let victim = 1 + (seed % 2) as usize;
    let before = pool.status(0).await.unwrap();
    let marks: Vec<(usize, usize)> = (0..3)
        .filter(|&i| i != victim)
        .map(|s| (s, pool.nodes[s].log().len()))
        .collect();
    let killed = pool.kill(victim);
    fwd.mark_dead(net.node_sip(victim));
    pool.wait_failover(victim, killed, &before, &marks, Duration::from_secs(20))
        .await
        .unwrap();
    eprintln!("[{name}] node {victim} killed; its shards moved");

    let mut cfg = CallerConfig::new(net.caller(5070), net.service(), seed);
    cfg.cps = 50;
    let caller = Caller::start(cfg).await.unwrap();
    let restart = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let back = pool.restart(victim, Duration::from_secs(30)).await;
        fwd.mark_alive(net.node_sip(victim));
        back
    };
    let (answered, back) = tokio::join!(caller.place(CALLS), restart);
    let back = back.unwrap();
    eprintln!(
        "[{name}] node {victim} back (member after {:.2} s, owning shards with its lease after {:.2} s, \
         owned them without a lease for {:?}):\n{}\n{}",
        back.member_after.as_secs_f64(),
        back.back_after.as_secs_f64(),
        back.owned_without_lease,
        back.lines.join("\n"),
        status_table(&back.info)
    );
    caller.hangup_all().await;
    let ledger = caller.ledger();
    let s = Summary::of(&ledger);
    eprintln!("[{name}] {answered}/{CALLS} answered during the rejoin; ledger:\n{s}");
    assert!(
        s.survived == CALLS && s.unknown == 0,
        "[{name}] seed {seed:#x}: {} of {CALLS} calls placed during node {victim}'s rejoin were refused \
         or lost; data and logs in {}\n{}",
        CALLS - s.survived,
        pool.dir().display(),
        casualties(&ledger)
    );
}
