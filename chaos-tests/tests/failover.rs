//! Invariant: **an answered call survives the SIGKILL of a node.** Three real `medpool serve`
//! processes on 127.0.N.1-3 behind a Service-like forwarder (127.0.N.100:5060); two simulated
//! gateways (127.0.N.21/.22:5060; gw1 answers nodes directly as RFC 3581 says, gw2 answers the Via's
//! sent-by, i.e. back through the Service) and a caller on the internal trunk (127.0.N.50) that holds
//! 200 calls up through the Service, its flow pinned to the node that will die: the Raft leader in
//! the first test, a follower in the second. That node is SIGKILLed and the forwarder told so; once the survivors own its shards and have adopted them, every call is
//! re-INVITEd and then hung up by the caller: every request must get a 2xx from the far side through
//! the pool, and every re-INVITE and BYE must reach a gateway.
//!
//! The second test then restarts the killed node on its data folder, waits until it is a member of
//! the pool again, owns shards and holds its lease, and requires 50 new calls (from three new flows, so one lands on
//! the restarted node) to complete; the restarted node must not act on the calls it carried before
//! it died (no request for an ended call reaches the caller or a gateway).
//!
//! Every run prints its seed (call identifiers derive from it; `MEDPOOL_SEED` replays) and the
//! caller's ledger. A transaction without a final answer within 32 s is counted *unknown*. The two
//! tests run one after the other (2 shared cores): about a minute in all. Failures are collected and
//! reported together, with the nodes' logs kept on disk.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::time::Duration;

use futures_util::future::join_all;
use medpool_chaos_tests::pool::{LocalPool, Net, status_table};
use medpool_chaos_tests::seed::seed;
use medpool_simpeer::ledger::casualties;
use medpool_simpeer::{
    CallRecord, Caller, CallerConfig, Forwarder, ForwarderConfig, Gateway, GatewayConfig,
    ResponseRouting, Summary,
};

const CALLS: usize = 200;
const NEW_CALLS: usize = 50;

/// One test at a time: six debug-build nodes and 400 calls at once would be timing noise on 2 cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Everything a scenario started, and what went wrong so far.
struct Run {
    name: &'static str,
    seed: u64,
    pool: LocalPool,
    fwd: Forwarder,
    gws: Vec<Gateway>,
    caller: Caller,
    victim: usize,
    failures: Vec<String>,
}

impl Run {
    fn fail(&mut self, what: String) {
        eprintln!("[{}] FAILURE: {what}", self.name);
        self.failures.push(what);
    }

    /// Checks a ledger: every call answered, nothing unknown, every request a 2xx.
    fn check_ledger(&mut self, what: &str, ledger: &[CallRecord], calls: usize) {
        let s = Summary::of(ledger);
        eprintln!("[{}] ledger ({what}):\n{s}", self.name);
        if s.placed != calls || s.survived != calls || s.unknown != 0 {
            let list = casualties(ledger);
            let first: Vec<&str> = list.lines().take(25).collect();
            self.fail(format!(
                "{what}: {} of {calls} calls survived ({} failed, {} unknown):\n{}",
                s.survived,
                s.failed,
                s.unknown,
                first.join("\n")
            ));
        }
    }

    /// `gateway down` lines the survivors logged (the simulated gateways answer every probe).
    fn gateway_flaps(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (i, n) in self.pool.nodes.iter().enumerate() {
            for l in n.log().matching(0, "gateway down") {
                out.push(format!("node {i}: {l}"));
            }
        }
        out
    }

    /// Panics with every failure (the nodes' logs are kept: see the pool's folder).
    fn finish(self) {
        let flaps = self.gateway_flaps();
        if !flaps.is_empty() {
            eprintln!(
                "[{}] observed: gateways marked down by nodes while they answered every probe:\n{}",
                self.name,
                flaps.join("\n")
            );
        }
        if !self.failures.is_empty() {
            panic!(
                "[{}] seed {:#x}: {} failure(s); data and logs in {}\n- {}",
                self.name,
                self.seed,
                self.failures.len(),
                self.pool.dir().display(),
                self.failures.join("\n- ")
            );
        }
    }
}

/// Waits up to 10 s until the gateways have seen `n` BYEs in all: the pool answers the caller's BYE
/// and sends its own BYE to the gateway independently.
async fn gateway_byes(gws: &[Gateway], n: u64) -> u64 {
    let ended = || gws.iter().map(|g| g.counts().byes).sum::<u64>();
    for _ in 0..100 {
        if ended() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ended()
}

/// Which node a scenario kills.
#[derive(Debug, Clone, Copy)]
enum Kill {
    /// The Raft leader (a new leader is elected and waits until the leases the old one can have
    /// granted are over).
    Leader,
    /// A follower, chosen by the seed.
    Follower,
}

/// Pool, peers, 200 calls held through the node to kill, that node SIGKILLed, shards moved, every
/// call re-INVITEd and hung up. Returns everything still running for the next step.
async fn kill_a_node_under_calls(name: &'static str, n: u8, kill: Kill) -> Run {
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
    let pool = LocalPool::start(net, 3).await.unwrap();
    let up = pool.status(0).await.unwrap();
    eprintln!("[{name}] pool up:\n{}", status_table(&up));
    let leader = up.leader.unwrap() as usize;
    let victim = match kill {
        Kill::Leader => leader,
        Kill::Follower => {
            let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
            followers[(seed % 2) as usize]
        }
    };
    let caller = Caller::start(CallerConfig::new(net.caller(5070), net.service(), seed))
        .await
        .unwrap();
    // The caller's flow goes to the node that will die, so the forwarder's re-pinning is exercised.
    fwd.pin(caller.local_addr(), net.node_sip(victim));
    let mut run = Run {
        name,
        seed,
        pool,
        fwd,
        gws: vec![gw1, gw2],
        caller,
        victim: 0,
        failures: Vec::new(),
    };

    let answered = run.caller.place(CALLS).await;
    eprintln!("[{name}] {answered}/{CALLS} calls answered and held up");
    let ledger = run.caller.ledger();
    run.check_ledger("calls set up", &ledger, CALLS);

    // Confirmed dialogs are group-committed: wait until the pool has recorded them all.
    let mut before = run.pool.status(0).await.unwrap();
    for _ in 0..50 {
        if before.dialogs >= answered {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        before = run.pool.status(0).await.unwrap();
    }
    if before.dialogs < answered {
        run.fail(format!(
            "only {} of {answered} confirmed dialogs replicated 5 s after they were answered",
            before.dialogs
        ));
    }

    run.victim = victim;
    let marks: Vec<(usize, usize)> = (0..3)
        .filter(|&i| i != victim)
        .map(|s| (s, run.pool.nodes[s].log().len()))
        .collect();
    eprintln!(
        "[{name}] SIGKILL node {victim} (pid {}, {}; it carries the caller's flow); before:\n{}",
        run.pool.nodes[victim].pid(),
        if before.leader == Some(victim as u64) {
            "the leader"
        } else {
            "a follower"
        },
        status_table(&before)
    );
    let killed = run.pool.kill(victim);
    run.fwd.mark_dead(net.node_sip(victim));
    let failover = run
        .pool
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

    let reinvited = run.caller.reinvite_all().await;
    let hung_up = run.caller.hangup_all().await;
    eprintln!("[{name}] re-INVITE 2xx: {reinvited}/{answered}, BYE 2xx: {hung_up}/{answered}");
    let byes = gateway_byes(&run.gws, answered as u64).await;
    let counts: Vec<_> = run.gws.iter().map(Gateway::counts).collect();
    eprintln!(
        "[{name}] gateways: {counts:?}\n[{name}] forwarder: {:?}",
        run.fwd.counts()
    );
    let ledger = run.caller.ledger();
    run.check_ledger("after the kill", &ledger, CALLS);
    let reinvites: u64 = counts.iter().map(|c| c.reinvites).sum();
    if byes != answered as u64 || reinvites != answered as u64 {
        let still_up: Vec<_> = run.gws.iter().map(Gateway::active_calls).collect();
        run.fail(format!(
            "the gateways saw {reinvites} re-INVITEs and {byes} BYEs for {answered} calls; \
             B-legs still up (gw1, gw2): {still_up:?}"
        ));
    }
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_survive_the_sigkill_of_a_node() {
    let _one_at_a_time = SERIAL.lock().await;
    kill_a_node_under_calls("failover", 71, Kill::Leader)
        .await
        .finish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_killed_node_rejoins_and_new_calls_complete() {
    let _one_at_a_time = SERIAL.lock().await;
    let mut run = kill_a_node_under_calls("rejoin", 72, Kill::Follower).await;
    let (name, net, victim) = (run.name, run.pool.net, run.victim);
    let back = run
        .pool
        .restart(victim, Duration::from_secs(30))
        .await
        .unwrap();
    run.fwd.mark_alive(net.node_sip(victim));
    eprintln!(
        "[{name}] node {victim} restarted on its data folder: member after {:.2} s, owning shards \
         with its lease after {:.2} s (owned them without a lease for {:?}):\n{}\n{}",
        back.member_after.as_secs_f64(),
        back.back_after.as_secs_f64(),
        back.owned_without_lease,
        back.lines.join("\n"),
        status_table(&back.info)
    );

    // Three new callers: three new flows, round robin over three live backends, one on each.
    let mut callers = Vec::new();
    for k in 0..3u16 {
        let cfg = CallerConfig::new(
            net.caller(5071 + k),
            net.service(),
            run.seed.wrapping_add(u64::from(k) + 1),
        );
        callers.push(Caller::start(cfg).await.unwrap());
    }
    let share = |k: usize| NEW_CALLS / 3 + usize::from(k < NEW_CALLS % 3);
    let placed = join_all(callers.iter().enumerate().map(|(k, c)| c.place(share(k)))).await;
    let reinvited = join_all(callers.iter().map(|c| c.reinvite_all())).await;
    let hung_up = join_all(callers.iter().map(|c| c.hangup_all())).await;
    eprintln!(
        "[{name}] new calls per caller: answered {placed:?}, re-INVITE 2xx {reinvited:?}, BYE 2xx {hung_up:?}"
    );
    let ledger: Vec<CallRecord> = callers.iter().flat_map(Caller::ledger).collect();
    run.check_ledger("new calls after the rejoin", &ledger, NEW_CALLS);
    let flows: Vec<_> = callers
        .iter()
        .filter_map(|c| run.fwd.backend_of(c.local_addr()))
        .collect();
    if !flows.contains(&net.node_sip(victim)) {
        run.fail(format!("no new flow went to the restarted node: {flows:?}"));
    }
    let answered: usize = placed.iter().sum();
    let before: u64 = CALLS as u64;
    gateway_byes(&run.gws, before + answered as u64).await;

    // Fencing: the restarted node must not act on the calls it carried before it died (they were
    // moved, then hung up): no request for them may reach the caller or a gateway.
    let counts: Vec<_> = run.gws.iter().map(Gateway::counts).collect();
    eprintln!("[{name}] gateways: {counts:?}");
    let zombies: Vec<_> = run
        .caller
        .ledger()
        .into_iter()
        .filter(|r| r.ended_by_far_side || r.far_requests > 0)
        .map(|r| r.call_id)
        .collect();
    if !zombies.is_empty() || counts.iter().any(|c| c.unknown_dialog > 0) {
        run.fail(format!(
            "requests for ended calls arrived after the restart: at the caller for {zombies:?}; \
             gateways answered {:?} with 481",
            counts.iter().map(|c| c.unknown_dialog).collect::<Vec<_>>()
        ));
    }
    run.finish();
}
