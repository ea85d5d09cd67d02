//! `medpool demo`: a newcomer's first look at a pool that survives the death of a node, on one
//! machine, with nothing else installed (no SIPp: the peers are medpool-simpeer, in process).
//!
//! ```text
//!   this process                                     child processes (this same binary)
//!   ┌────────────────────────────────────────┐       ┌─────────────────────────────────────┐
//!   │ Caller (pbx, 127.0.42.50) ──► Forwarder ├──────►│ medpool serve  node 0  127.0.42.1   │
//!   │              "Service" 127.0.42.100    │       │ medpool serve  node 1  127.0.42.2   │──► Gateways gw1, gw2
//!   │ Gateways gw1 .21, gw2 .22  ◄───────────┼───────│ medpool serve  node 2  127.0.42.3   │    (this process)
//!   └────────────────────────────────────────┘       └─────────────────────────────────────┘
//! ```
//! The story: start a 3-node pool, hold calls up through the Service address, SIGKILL the node that
//! carries the caller's traffic, watch the survivors take its shards and rebuild its calls, then
//! re-INVITE and hang up every call and print a summary. Node logs go to files in a temporary
//! folder (kept with `--keep`). The nodes are started by medpool-harness, as the tests start them
//! (same environment rule); they are stopped by PID if the demo itself fails midway.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use medpool_cluster::pool::PoolInfo;
use medpool_harness::HarnessError;
use medpool_harness::process::{NodeProcess, NodeSpec};
use medpool_harness::status::{field, is_active, node_row};
use medpool_simpeer::{
    Caller, CallerConfig, Forwarder, ForwarderConfig, Gateway, GatewayConfig, Summary,
};
use tokio::time::Instant;

/// `medpool demo` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Calls to hold up through the kill.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..=2000))]
    pub calls: u16,
    /// The third byte of the loopback network used: 127.0.NET.x.
    #[arg(long, default_value_t = 42)]
    pub net: u8,
    /// Keep the data and log folder afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Why the demo stopped.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A file or folder could not be written, or a process started.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A simulated peer could not start (is another demo running?).
    #[error(transparent)]
    Peer(#[from] medpool_simpeer::SimpeerError),
    /// A node could not start, exited on its own, or did not log what was awaited in time.
    #[error(transparent)]
    Node(#[from] HarnessError),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

const READY: Duration = Duration::from_secs(30);

/// Runs the demo; `Ok(true)` when every call survived and ended cleanly.
pub async fn run(args: DemoArgs) -> Result<bool, DemoError> {
    let net = args.net;
    let ip = |host: u8| IpAddr::V4(Ipv4Addr::new(127, 0, net, host));
    let sip = |i: usize| SocketAddr::new(ip(i as u8 + 1), 5060);
    let raft = |i: usize| SocketAddr::new(ip(i as u8 + 1), 7000);
    let service = SocketAddr::new(ip(100), 5060);
    let dir = std::env::temp_dir().join(format!("medpool-demo-{}", std::process::id()));
    let io = |what: String| move |source| DemoError::Io { what, source };
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    let config = dir.join("medpool.toml");
    std::fs::write(&config, pool_config(net)).map_err(io(format!("write {}", config.display())))?;
    let exe = std::env::current_exe().map_err(io("find this program".to_owned()))?;

    say(&format!(
        "medpool demo: a 3-node pool on 127.0.{net}.1-3, a Service address {service} in front of it,\n\
         two gateways (127.0.{net}.21, .22) and a PBX (127.0.{net}.50) that holds {} calls; one node\n\
         will be killed with SIGKILL. Node logs: {} (removed at the end unless --keep)\n",
        args.calls,
        dir.display()
    ));
    let _gw1 = Gateway::start(GatewayConfig::new(SocketAddr::new(ip(21), 5060))).await?;
    let _gw2 = Gateway::start(GatewayConfig::new(SocketAddr::new(ip(22), 5060))).await?;
    let fwd = Forwarder::start(
        ForwarderConfig::new(service, (0..3).map(sip).collect())
            .with_probes(Duration::from_millis(200)),
    )
    .await?;

    let mut nodes = Vec::new();
    for i in 0..3 {
        let spec = node_spec(i, raft, sip(i), service, &dir, &config);
        let mut node = NodeProcess::spawn(&exe, spec)?;
        node.wait_for_line(0, "medpool ready", READY).await?;
        say(&format!(
            "  node {i} started (pid {}), SIP {}",
            node.pid(),
            sip(i)
        ));
        nodes.push(node);
    }
    let info = wait_converged(&nodes, raft).await?;
    say(&format!(
        "\nThe pool is up: node {} leads, 1024 shards spread over three nodes.\n{}",
        info.leader
            .map_or_else(|| "?".to_owned(), |l| l.to_string()),
        table(&info)
    ));

    let seed = u64::from(std::process::id());
    let caller = Caller::start(CallerConfig::new(
        SocketAddr::new(ip(50), 5070),
        service,
        seed,
    ))
    .await?;
    let calls = usize::from(args.calls);
    let answered = caller.place(calls).await;
    let mut before = status(raft(0)).await;
    for _ in 0..50 {
        if before.as_ref().is_some_and(|b| b.dialogs >= answered) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        before = status(raft(0)).await;
    }
    say(&format!(
        "{answered} of {calls} calls answered and held up; {} confirmed dialogs replicated by Raft.",
        before.as_ref().map_or(0, |b| b.dialogs)
    ));
    if answered < calls {
        say(&format!(
            "Calls not answered:\n{}",
            medpool_simpeer::ledger::casualties(&caller.ledger())
        ));
    }

    let victim = fwd
        .backend_of(caller.local_addr())
        .and_then(|b| (0..3).find(|&i| sip(i) == b))
        .unwrap_or(1);
    let survivors: Vec<usize> = (0..3).filter(|&i| i != victim).collect();
    let marks: Vec<usize> = nodes.iter().map(|n| n.log().len()).collect();
    let was_leader = before.as_ref().and_then(|b| b.leader) == Some(victim as u64);
    say(&format!(
        "\nSIGKILL node {victim} (pid {}): it receives the PBX's traffic{}.",
        nodes[victim].pid(),
        if was_leader {
            " and leads the pool"
        } else {
            ""
        }
    ));
    let killed = Instant::now();
    tokio::task::block_in_place(|| nodes[victim].kill9());
    fwd.mark_dead(sip(victim));
    say(if was_leader {
        "The Service re-pins the PBX's flow to a live node. The survivors elect a new leader (under\n\
         1 s), which asks them when they last heard the dead leader, waits until every lease it can\n\
         have granted has ended (last heard + 1.25 s + 0.2 s margin) and hands its shards over:"
    } else {
        "The Service re-pins the PBX's flow to a live node. The leader waits until the dead node's\n\
         last lease has ended (1 s + 0.2 s margin after its last heartbeat) and hands its shards\n\
         to the survivors, in one Raft append:"
    });
    let (moved, info) = watch_failover(&nodes, raft(survivors[0]), victim, killed).await?;
    let mut restored = 0;
    for &s in &survivors {
        let left = Duration::from_secs(10).saturating_sub(killed.elapsed());
        let line = nodes[s]
            .wait_for_line(marks[s], "shards adopted", left)
            .await
            .ok();
        if let Some(line) = line {
            let n = field(&line, "restored").unwrap_or(0);
            restored += n;
            say(&format!(
                "  +{:.1} s  node {s} adopted {} shards and rebuilt {n} calls from their Raft records",
                killed.elapsed().as_secs_f64(),
                field(&line, "shards").unwrap_or(0)
            ));
        }
    }
    let recovered = killed.elapsed();
    say(&format!("\n{}", table(&info)));

    say("Every call is now re-INVITEd by the PBX, then hung up:");
    let reinvited = caller.reinvite_all().await;
    say(&format!(
        "  re-INVITE answered 200 by the far side: {reinvited}/{answered}"
    ));
    let hung_up = caller.hangup_all().await;
    say(&format!(
        "  BYE answered 200:                        {hung_up}/{answered}"
    ));

    let ledger = caller.ledger();
    say("\nStopping the nodes (SIGTERM) and the peers.");
    stop_all(&mut nodes);
    drop(caller);
    drop(fwd);
    if args.keep {
        say(&format!("Data and logs kept in {}", dir.display()));
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }

    let s = Summary::of(&ledger);
    let ok = s.placed == calls && s.survived == calls && s.unknown == 0;
    let rows = [
        ("calls placed", s.placed.to_string()),
        ("answered", s.answered.to_string()),
        (
            "survived the kill (re-INVITE 200)",
            s.reinvite_ok.to_string(),
        ),
        ("ended cleanly (BYE 200)", s.bye_ok.to_string()),
        ("failed or unknown", (s.failed + s.unknown).to_string()),
        ("calls rebuilt on the survivors", format!("{restored}")),
        (
            "kill -> shards owned again",
            format!("{:.1} s", moved.as_secs_f64()),
        ),
        (
            "kill -> calls rebuilt",
            format!("{:.1} s", recovered.as_secs_f64()),
        ),
    ];
    let mut out = String::from(
        "\nmedpool demo: summary\n+------------------------------------+----------+\n",
    );
    for (k, v) in rows {
        out.push_str(&format!("| {k:<34} | {v:>8} |\n"));
    }
    out.push_str("+------------------------------------+----------+");
    say(&out);
    say(if ok {
        "Every call survived the death of the node that carried it, and ended cleanly."
    } else {
        "Some calls did not survive: see the table above and the node logs (run again with --keep)."
    });
    Ok(ok)
}

fn say(s: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{s}");
    let _ = out.flush();
}

/// The pool configuration of the demo: the PBX on 127.0.NET.50 (internal, any port), gateways gw1
/// and gw2 on .21 and .22:5060 shared equally. Media bypass: the simulated peers send no RTP (a
/// relayed call would be hung up by the media timeout), and the story is signalling failover.
fn pool_config(net: u8) -> String {
    let gw = |n: u8| {
        format!(
            "[[trunk]]\nname = \"gw{n}\"\naddress = \"127.0.{net}.{}\"\nport = 5060\nside = \"gateway\"\n\
             options_interval_ms = 1000\ndown_after = 3\nup_after = 1\nusages = [\"inbound\"]\nmedia = \"bypass\"\n\n",
            20 + n
        )
    };
    format!(
        "# medpool demo\n[node]\nmax_calls = 20000\n\n\
         [[trunk]]\nname = \"pbx\"\naddress = \"127.0.{net}.50\"\nside = \"internal\"\nmatch_any_port = true\n\
         usages = [\"outbound\"]\nmedia = \"bypass\"\n\n{}{}\
         [[route]]\nname = \"from-pstn\"\npattern = '.*'\nusage = \"inbound\"\ntrunks = [\"pbx\"]\n\n\
         [[route]]\nname = \"to-gateways\"\npattern = '.*'\nusage = \"outbound\"\n\
         trunks = [{{ trunk = \"gw1\", priority = 1 }}, {{ trunk = \"gw2\", priority = 1 }}]\n",
        gw(1),
        gw(2)
    )
}

/// Node `i`'s flags: node 0 bootstraps, the others join through it; all advertise the Service and
/// trust it as a forwarder. Logs and data in `dir`.
fn node_spec(
    i: usize,
    raft: impl Fn(usize) -> SocketAddr,
    sip: SocketAddr,
    service: SocketAddr,
    dir: &Path,
    config: &Path,
) -> NodeSpec {
    NodeSpec {
        id: i as u64,
        sip,
        raft: raft(i),
        join: if i == 0 { Vec::new() } else { vec![raft(0)] },
        data_dir: dir.join(format!("node{i}")),
        config: config.to_owned(),
        advertise: service,
        trusted_forwarder: service.ip(),
        log_file: dir.join(format!("node{i}.log")),
        extra: Vec::new(),
    }
}

/// Stops every node still running (SIGTERM, SIGKILL after a grace), off the runtime's workers.
fn stop_all(nodes: &mut [NodeProcess]) {
    tokio::task::block_in_place(|| {
        for n in nodes {
            n.stop();
        }
    });
}

/// A node's id (its index in the demo).
fn id_of(n: &NodeProcess) -> usize {
    n.spec.id as usize
}

/// A node's view of the pool, or `None` when it does not answer.
async fn status(raft: SocketAddr) -> Option<PoolInfo> {
    medpool_harness::status::status(raft).await.ok()
}

fn table(info: &PoolInfo) -> String {
    let mut out = String::from("  NODE  STATE     SHARDS\n");
    for medpool_cluster::pool::NodeInfo {
        id, state, shards, ..
    } in &info.nodes
    {
        let lead = if info.leader == Some(*id) {
            "  (leader)"
        } else {
            ""
        };
        out.push_str(&format!("  {id:<5} {state:<8} {shards:>7}{lead}\n"));
    }
    out
}

/// Waits until every node is active with shards (as node 0 sees it), has adopted them and holds
/// its lease (a node acts on its shards only with a lease: before, their new calls get 503).
async fn wait_converged(
    nodes: &[NodeProcess],
    raft: impl Fn(usize) -> SocketAddr,
) -> Result<PoolInfo, DemoError> {
    let deadline = Instant::now() + READY;
    loop {
        if let Some(info) = status(raft(0)).await {
            let mut serving = info.unowned == 0;
            for n in nodes {
                serving = serving
                    && node_row(&info, id_of(n))
                        .is_some_and(|(s, shards)| is_active(s) && shards > 0)
                    && n.log().position(0, "shards adopted").is_some()
                    && status(raft(id_of(n))).await.is_some_and(|own| own.lease);
            }
            if serving {
                return Ok(info);
            }
        }
        if Instant::now() >= deadline {
            return Err(DemoError::Timeout("the pool to form".to_owned()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Prints the shard map each time it changes (as a survivor sees it) until the victim is down with
/// no shard and none is unowned; returns how long that took and the final map.
async fn watch_failover(
    nodes: &[NodeProcess],
    survivor: SocketAddr,
    victim: usize,
    killed: Instant,
) -> Result<(Duration, PoolInfo), DemoError> {
    let mut last = String::new();
    loop {
        if let Some(info) = status(survivor).await {
            let now: Vec<String> = nodes
                .iter()
                .filter_map(|n| {
                    node_row(&info, id_of(n))
                        .map(|(s, c)| format!("node {} {} {c}", id_of(n), s.to_lowercase()))
                })
                .collect();
            let now = now.join(" · ");
            if now != last {
                say(&format!(
                    "  +{:.1} s  {now}",
                    killed.elapsed().as_secs_f64()
                ));
                last = now;
            }
            let done = node_row(&info, victim).is_some_and(|(s, c)| !is_active(s) && c == 0);
            if done && info.unowned == 0 {
                return Ok((killed.elapsed(), info));
            }
        }
        if killed.elapsed() > Duration::from_secs(30) {
            return Err(DemoError::Timeout(format!(
                "node {victim}'s shards to move"
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
