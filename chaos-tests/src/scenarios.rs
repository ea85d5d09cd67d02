//! The faults, one scenario each. A scenario holds calls up through the pool, injects its fault,
//! heals it, and hangs every call up (each re-INVITEd first); the runner then checks convergence.
//! Which node a fault hits, and when, comes from the round's seed.
//!
//! | scenario | fault |
//! |---|---|
//! | `sigkill-follower`, `sigkill-leader` | SIGKILL, then restart on the same data folder |
//! | `sigstop` | SIGSTOP for longer than lease + margin, then SIGCONT: its lease lapsed, it must not act for shards it lost |
//! | `partition` | iptables between one node and the others (namespace only) |
//! | `sip-loss-delay` | 10 % loss and 30 ms delay on the Service path, 10 % loss to and from the gateways (namespace only) |
//! | `gateway-flap` | gw1 dies, comes back, dies, comes back while calls are placed |
//! | `leader-kill-config` | the leader SIGKILLed 0-8 ms after it was sent a configuration change (before, during or after the commit) |
//! | `rolling-restart` | drain → SIGTERM → start, highest ordinal first, under load |
//! | `disk-full` | node 2's data folder (a small tmpfs) fills up (namespace only) |

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use medpool_proto::admin::medpool_admin_client::MedpoolAdminClient;
use medpool_proto::admin::{ApplyConfigRequest, NodeRequest, TransferLeaderRequest};
use rand::Rng;

use crate::pool::pool_config_with;
use crate::world::{NODES, StepResult, TMPFS_NODE, World, step};

/// Faults injected, by kind.
pub type Faults = BTreeMap<&'static str, u32>;

/// Every scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scenario {
    /// SIGKILL a follower, restart it.
    SigkillFollower,
    /// SIGKILL the leader, restart it.
    SigkillLeader,
    /// Freeze a node past its lease, wake it.
    Sigstop,
    /// Cut a node off from the others.
    Partition,
    /// Lossy, slow SIP paths.
    SipLossDelay,
    /// A gateway dies and flaps.
    GatewayFlap,
    /// The leader dies during a configuration change.
    LeaderKillConfig,
    /// Drain, stop and start every node in turn, under load.
    RollingRestart,
    /// A node's data folder fills up.
    DiskFull,
}

impl Scenario {
    /// All, in CI order.
    pub const ALL: [Scenario; 9] = [
        Scenario::SigkillFollower,
        Scenario::SigkillLeader,
        Scenario::Sigstop,
        Scenario::Partition,
        Scenario::SipLossDelay,
        Scenario::GatewayFlap,
        Scenario::LeaderKillConfig,
        Scenario::RollingRestart,
        Scenario::DiskFull,
    ];

    /// Its name on the command line and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::SigkillFollower => "sigkill-follower",
            Scenario::SigkillLeader => "sigkill-leader",
            Scenario::Sigstop => "sigstop",
            Scenario::Partition => "partition",
            Scenario::SipLossDelay => "sip-loss-delay",
            Scenario::GatewayFlap => "gateway-flap",
            Scenario::LeaderKillConfig => "leader-kill-config",
            Scenario::RollingRestart => "rolling-restart",
            Scenario::DiskFull => "disk-full",
        }
    }

    /// By name.
    pub fn parse(name: &str) -> Option<Scenario> {
        Scenario::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Why it cannot run in this world (`None`: it can).
    pub fn unavailable(self, w: &World) -> Option<&'static str> {
        match self {
            Scenario::Partition if w.firewall.is_none() => {
                Some("needs root and `ip netns` (iptables inside the runner's namespace)")
            }
            Scenario::DiskFull if w.tmpfs.is_none() => {
                Some("needs root and `ip netns` (a tmpfs mounted in the runner's namespace)")
            }
            _ => None,
        }
    }

    /// Runs it; returns the faults injected.
    pub async fn run(self, w: &mut World) -> StepResult<Faults> {
        let mut f = Faults::new();
        match self {
            Scenario::SigkillFollower => sigkill(w, false, &mut f).await?,
            Scenario::SigkillLeader => sigkill(w, true, &mut f).await?,
            Scenario::Sigstop => sigstop(w, &mut f).await?,
            Scenario::Partition => partition(w, &mut f).await?,
            Scenario::SipLossDelay => sip_loss_delay(w, &mut f).await?,
            Scenario::GatewayFlap => gateway_flap(w, &mut f).await?,
            Scenario::LeaderKillConfig => leader_kill_config(w, &mut f).await?,
            Scenario::RollingRestart => rolling_restart(w, &mut f).await?,
            Scenario::DiskFull => disk_full(w, &mut f).await?,
        }
        Ok(f)
    }
}

fn count(f: &mut Faults, kind: &'static str) {
    *f.entry(kind).or_insert(0) += 1;
}

/// Log lengths of every node but `victim` (where to look for their next `shards adopted`).
fn marks(w: &World, victim: usize) -> Vec<(usize, usize)> {
    (0..NODES)
        .filter(|&i| i != victim)
        .map(|i| (i, w.pool.nodes[i].log().len()))
        .collect()
}

/// What a failover wait needs, taken just before a fault hits `victim`: the pool's status as another
/// node sees it, and the other nodes' log lengths.
async fn before_fault(
    w: &mut World,
    victim: usize,
) -> StepResult<(medpool_cluster::pool::PoolInfo, Vec<(usize, usize)>)> {
    let asked = (0..NODES).find(|&i| i != victim).unwrap_or(0);
    let before = step("status", w.pool.status(asked).await)?;
    Ok((before, marks(w, victim)))
}

/// A node other than the leader, chosen by the seed.
async fn follower(w: &mut World) -> StepResult<usize> {
    let leader = w.leader().await?;
    let followers: Vec<usize> = (0..NODES).filter(|&i| i != leader).collect();
    Ok(followers[w.rng.random_range(0..followers.len())])
}

/// The fault hit `victim` at `at`: waits until the others show it down with its shards moved.
async fn await_failover(
    w: &mut World,
    victim: usize,
    at: tokio::time::Instant,
    before: &medpool_cluster::pool::PoolInfo,
    marks: &[(usize, usize)],
) -> StepResult<()> {
    let f = step(
        "failover",
        w.pool
            .wait_failover(victim, at, before, marks, Duration::from_secs(30))
            .await,
    )?;
    eprintln!(
        "    node {victim}'s shards moved after {:.2} s, adopted after {:.2} s ({} calls rebuilt)",
        f.map_moved.as_secs_f64(),
        f.adopted.as_secs_f64(),
        f.restored
    );
    Ok(())
}

async fn sigkill(w: &mut World, leader: bool, f: &mut Faults) -> StepResult<()> {
    let held = w.held_calls(60).await?;
    let victim = if leader {
        w.leader().await?
    } else {
        follower(w).await?
    };
    let (before, m) = before_fault(w, victim).await?;
    eprintln!(
        "    SIGKILL node {victim}{}",
        if leader { " (the leader)" } else { "" }
    );
    let at = w.pool.kill(victim);
    count(f, "SIGKILL");
    await_failover(w, victim, at, &before, &m).await?;
    // The calls go on through the survivors before the node comes back...
    held.reinvite_all().await;
    step(
        "restart",
        w.pool.restart(victim, Duration::from_secs(45)).await,
    )?;
    count(f, "restart on the same data");
    // ...and after it took its share back.
    World::end_calls(&held).await;
    Ok(())
}

async fn sigstop(w: &mut World, f: &mut Faults) -> StepResult<()> {
    let held = w.held_calls(60).await?;
    let victim = w.rng.random_range(0..NODES);
    let (before, m) = before_fault(w, victim).await?;
    eprintln!("    SIGSTOP node {victim}");
    step("SIGSTOP", w.pool.nodes[victim].signal("STOP"))?;
    let at = tokio::time::Instant::now();
    count(f, "SIGSTOP/SIGCONT");
    let moved = await_failover(w, victim, at, &before, &m).await;
    // Frozen a little longer than it took the others to move on, then woken: it must find its
    // lease lapsed and its shards gone, and not act for them.
    tokio::time::sleep(Duration::from_millis(w.rng.random_range(200..1500))).await;
    step("SIGCONT", w.pool.nodes[victim].signal("CONT"))?;
    eprintln!("    SIGCONT node {victim}");
    moved?;
    // Its flow's calls while it wakes: requests it receives for shards it lost go to their owners.
    held.reinvite_all().await;
    World::end_calls(&held).await;
    Ok(())
}

async fn partition(w: &mut World, f: &mut Faults) -> StepResult<()> {
    let held = w.held_calls(60).await?;
    let victim = w.rng.random_range(0..NODES);
    let (before, m) = before_fault(w, victim).await?;
    let others = w.others(victim);
    let ip = w.net.node_raft(victim).ip();
    let Some(fw) = w.firewall.as_mut() else {
        return Err("no firewall".to_owned());
    };
    eprintln!("    partition: node {victim} ({ip}) cut off from {others:?}");
    fw.partition(ip, &others)?;
    let at = tokio::time::Instant::now();
    count(f, "partition");
    let moved = await_failover(w, victim, at, &before, &m).await;
    tokio::time::sleep(Duration::from_millis(w.rng.random_range(200..1500))).await;
    if let Some(fw) = w.firewall.as_mut() {
        fw.heal();
    }
    eprintln!("    partition healed");
    moved?;
    World::end_calls(&held).await;
    Ok(())
}

async fn sip_loss_delay(w: &mut World, f: &mut Faults) -> StepResult<()> {
    let held = w.held_calls(60).await?;
    let seed = w.rng.random::<u64>();
    let delay = Duration::from_millis(30);
    w.fwd.impair(0.10, delay, seed);
    count(f, "SIP loss 10% + delay 30 ms (Service)");
    if let Some(fw) = w.firewall.as_mut() {
        for k in 0..2 {
            fw.lossy(w.net.gateway(k).ip(), 0.10)?;
        }
        count(f, "SIP loss 10% (gateways, iptables)");
    }
    eprintln!("    SIP paths lossy and slow");
    let during = w.held_calls(40).await?;
    held.reinvite_all().await;
    w.fwd.impair(0.0, Duration::ZERO, 0);
    if let Some(fw) = w.firewall.as_mut() {
        fw.heal();
    }
    eprintln!("    SIP paths healed");
    World::end_calls(&held).await;
    World::end_calls(&during).await;
    Ok(())
}

async fn gateway_flap(w: &mut World, f: &mut Faults) -> StepResult<()> {
    let held = w.held_calls(40).await?;
    let load = w.caller(15).await?;
    let placing = {
        let load = Arc::clone(&load);
        tokio::spawn(async move { load.place(90).await })
    };
    for _ in 0..2 {
        eprintln!("    gw1 silent");
        w.gws[0].set_silent(true);
        count(f, "gateway down");
        tokio::time::sleep(Duration::from_millis(w.rng.random_range(2000..4000))).await;
        eprintln!("    gw1 back");
        w.gws[0].set_silent(false);
        count(f, "gateway up");
        tokio::time::sleep(Duration::from_millis(w.rng.random_range(1000..2500))).await;
    }
    let _ = placing.await;
    World::end_calls(&held).await;
    World::end_calls(&load).await;
    Ok(())
}

async fn admin(w: &World, i: usize) -> StepResult<MedpoolAdminClient<tonic::transport::Channel>> {
    let ep = tonic::transport::Endpoint::from_shared(format!("http://{}", w.admin(i)))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5));
    Ok(MedpoolAdminClient::new(ep.connect_lazy()))
}

async fn leader_kill_config(w: &mut World, f: &mut Faults) -> StepResult<()> {
    let held = w.held_calls(40).await?;
    let leader = w.leader().await?;
    let asked = (0..NODES).find(|&i| i != leader).unwrap_or(0);
    let before = step("status", w.pool.status(asked).await)?;
    let m = marks(w, leader);
    let body = changed_config(w);
    let mut client = admin(w, leader).await?;
    let apply = tokio::spawn(async move {
        client
            .apply_config(ApplyConfigRequest {
                body,
                name: "chaos.toml".to_owned(),
                expected_version: None,
            })
            .await
    });
    // Within the few milliseconds the change takes to commit: some kills land before the leader
    // wrote it, some while it replicates, some after.
    tokio::time::sleep(Duration::from_micros(w.rng.random_range(0..8000))).await;
    eprintln!("    SIGKILL node {leader} (the leader) while it applies a configuration change");
    let at = w.pool.kill(leader);
    count(f, "SIGKILL (leader, during a config change)");
    let outcome = match apply.await {
        Ok(Ok(r)) => format!("applied as version {}", r.into_inner().version),
        Ok(Err(s)) => format!("{:?}: {}", s.code(), s.message()),
        Err(e) => e.to_string(),
    };
    eprintln!("    the change: {outcome}");
    await_failover(w, leader, at, &before, &m).await?;
    held.reinvite_all().await;
    step(
        "restart",
        w.pool.restart(leader, Duration::from_secs(45)).await,
    )?;
    count(f, "restart on the same data");
    World::end_calls(&held).await;
    Ok(())
}

async fn rolling_restart(w: &mut World, f: &mut Faults) -> StepResult<()> {
    let held = w.held_calls(40).await?;
    let load = w.caller(12).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let placing = {
        let (load, stop) = (Arc::clone(&load), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                load.place(6).await;
            }
        })
    };
    for i in (0..NODES).rev() {
        eprintln!("    drain node {i}");
        let asked = (0..NODES).find(|&j| j != i).unwrap_or(0);
        let mut client = admin(w, asked).await?;
        client
            .drain_node(NodeRequest {
                node: i as u64,
                forwarded: false,
            })
            .await
            .map_err(|s| format!("drain node {i}: {}", s.message()))?;
        let mut drained = false;
        for _ in 0..300 {
            if let Ok(s) = w.pool.status(asked).await
                && s.nodes.iter().any(|n| n.id == i as u64 && n.shards == 0)
            {
                drained = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if !drained {
            stop.store(true, Ordering::Relaxed);
            return Err(format!("node {i} still owned shards 30 s after the drain"));
        }
        // The Service stops sending it new flows (a readiness probe failing on a draining pod).
        w.fwd.mark_dead(w.net.node_sip(i));
        let status = tokio::task::block_in_place(|| w.pool.nodes[i].stop());
        eprintln!("    node {i} stopped: {status:?}");
        count(f, "drain → SIGTERM → start");
        let back = w.pool.restart(i, Duration::from_secs(45)).await;
        w.fwd.mark_alive(w.net.node_sip(i));
        if let Err(e) = back {
            stop.store(true, Ordering::Relaxed);
            return Err(format!("node {i} after its restart: {e}"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = placing.await;
    World::end_calls(&held).await;
    World::end_calls(&load).await;
    Ok(())
}

async fn disk_full(w: &mut World, f: &mut Faults) -> StepResult<()> {
    let i = TMPFS_NODE;
    let held = w.held_calls(40).await?;
    let asked = (0..NODES).find(|&j| j != i).unwrap_or(0);
    if w.leader().await? == i {
        let mut client = admin(w, i).await?;
        client
            .transfer_leader(TransferLeaderRequest {
                to: Some(asked as u64),
                forwarded: false,
            })
            .await
            .map_err(|s| format!("leadership transfer off node {i}: {}", s.message()))?;
        for _ in 0..50 {
            if w.leader().await? != i {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        eprintln!("    leadership moved off node {i}");
    }
    let before = step("status", w.pool.status(asked).await)?;
    let m = marks(w, i);
    let mark = w.pool.nodes[i].log().len();
    let filled = w.tmpfs.as_ref().map_or(0, |t| t.fill());
    eprintln!(
        "    node {i}'s data folder filled ({} MiB written)",
        filled / (1 << 20)
    );
    count(f, "data folder full");
    // Writes go on (new calls: their records are appended to every node's log). The node must
    // notice, say so clearly and stop, so that the others take its shards over. (It is a follower
    // here: see RELIABILITY.md for a leader whose disk fills, where calls answered in that instant
    // are lost with it.)
    let mut problems = Vec::new();
    let trigger = w.caller(20).await?;
    // The calls are placed by a task of their own, so that the exit is seen when it happens: a
    // call whose INVITE node i answered 100 just before it stopped waits for its final answer
    // until Timer B (32 s), and held this loop that long (read as a node that kept running).
    let stop = Arc::new(AtomicBool::new(false));
    let placing = {
        let (trigger, stop) = (Arc::clone(&trigger), Arc::clone(&stop));
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                trigger.place(4).await;
            }
        })
    };
    let mut exited = None;
    let t = tokio::time::Instant::now();
    while t.elapsed() < Duration::from_secs(30) {
        exited = w.pool.nodes[i].exited();
        if exited.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let at = tokio::time::Instant::now();
    let clear = w.pool.nodes[i]
        .log()
        .matching(mark, "No space left on device")
        .into_iter()
        .next();
    eprintln!(
        "    node {i}: {}; process {}",
        clear
            .as_deref()
            .map_or("no log line naming the full disk", |l| &l
                [..l.len().min(300)]),
        exited.map_or_else(
            || "still running after 30 s".to_owned(),
            |s| format!("exited ({s})")
        )
    );
    if exited.is_none() && clear.is_none() {
        // The store file had free pages inside it (redb reuses what a purge freed): the writes
        // needed no new blocks, so there was no failure to observe. Not a finding; said so.
        eprintln!("    node {i}: not triggered: its store needed no new space in 30 s of writes");
        if let Some(t) = w.tmpfs.as_ref() {
            t.free();
        }
        let _ = placing.await;
        World::end_calls(&held).await;
        World::end_calls(&trigger).await;
        return Ok(());
    }
    if clear.is_none() {
        problems.push("no log line named the full disk ('No space left on device')".to_owned());
    }
    match exited {
        Some(s) if !s.success() => {
            if let Err(e) = await_failover(w, i, at, &before, &m).await {
                problems.push(e);
            }
        }
        Some(s) => problems.push(format!(
            "it exited with {s}: a failure must not look like success"
        )),
        None => {
            problems.push("it logged the full disk but kept running".to_owned());
            w.pool.kill(i);
        }
    }
    // New calls while it is down go to the others.
    let during = w.held_calls(40).await;
    if let Some(t) = w.tmpfs.as_ref() {
        t.free();
    }
    step(
        "restart after the disk was freed",
        w.pool.restart(i, Duration::from_secs(45)).await,
    )?;
    count(f, "restart on the same data");
    // Its last placement ends by Timer B at the latest.
    let _ = placing.await;
    World::end_calls(&held).await;
    World::end_calls(&trigger).await;
    match during {
        Ok(c) => World::end_calls(&c).await,
        Err(e) => problems.push(e),
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "node {i} with a full data folder: {}",
            problems.join("; ")
        ))
    }
}

/// The pool configuration with a real change each time (the gateways' probe interval alternates).
fn changed_config(w: &mut World) -> String {
    w.config_changes += 1;
    pool_config_with(w.net, true).replacen(
        "options_interval_ms = 1000",
        &format!(
            "options_interval_ms = {}",
            1000 + 100 * (w.config_changes % 2)
        ),
        2,
    )
}
