//! The world a chaos run acts on: a 3-node pool of real `medpool serve` processes (each writing its
//! audit report), the Service-like forwarder in front of it (probing the nodes every 200 ms, as a
//! load balancer's health check would), two simulated gateways, callers on the internal trunk, the
//! status sampler, and — inside the runner's namespace — the firewall and a small tmpfs holding
//! node 2's data folder. Every trunk relays media and every call carries RTP both ways (the
//! callers send a 20 ms stream, the gateways echo it: medpool-simpeer's `rtp`). Everything a
//! scenario observes is accumulated in [`Observations`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use medpool_simpeer::{
    Caller, CallerConfig, Forwarder, ForwarderConfig, Gateway, GatewayConfig, Outcome,
    ResponseRouting,
};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::HarnessError;
use crate::invariants::{CallFate, Convergence, Observations};
use crate::netns::{Firewall, Tmpfs};
use crate::observe::{Sampler, now_us};
use crate::pool::{LocalPool, Net, Setup};

/// Pool size.
pub const NODES: usize = 3;
/// The node whose data folder lives on the small tmpfs (when there is one).
pub const TMPFS_NODE: usize = 2;
/// The normal rate fresh calls are offered at after healing (calls per second).
pub const NORMAL_CPS: u32 = 50;
/// Fresh calls placed after each healing.
pub const FRESH_CALLS: usize = 30;

/// Where the run happens and what it may use.
#[derive(Debug, Clone, Copy)]
pub struct WorldOptions {
    /// The seed.
    pub seed: u64,
    /// The 127.0.N.x block.
    pub net: Net,
    /// Inside the runner's own network namespace (iptables and mounts allowed).
    pub netns: bool,
}

/// Everything running, and everything seen so far.
#[derive(Debug)]
pub struct World {
    /// The run's seed.
    pub seed: u64,
    /// The scenario RNG (reseeded per round).
    pub rng: SmallRng,
    /// Addresses.
    pub net: Net,
    /// The nodes (dropped before the tmpfs below: field order).
    pub pool: LocalPool,
    /// The Service.
    pub fwd: Forwarder,
    /// gw1 (answers the node directly) and gw2 (answers the Via's sent-by, through the Service).
    pub gws: Vec<Gateway>,
    /// The firewall of the namespace (`None`: not in one).
    pub firewall: Option<Firewall>,
    /// Node 2's data folder (`None`: not in a namespace).
    pub tmpfs: Option<Tmpfs>,
    /// What was seen.
    pub obs: Observations,
    /// The current scenario's label (calls are filed under it).
    pub label: String,
    /// Configuration changes made so far (each one is a new version).
    pub config_changes: u32,
    sampler: Sampler,
    callers: Vec<(String, Arc<Caller>)>,
    next_port: u16,
}

/// Why a scenario could not do its part (recorded; the run fails).
pub type StepResult<T> = Result<T, String>;

/// Turns a harness error into a step error.
pub fn step<T>(what: &str, r: Result<T, HarnessError>) -> StepResult<T> {
    r.map_err(|e| format!("{what}: {e}"))
}

impl World {
    /// Starts gateways, forwarder and pool (node 2 on a 48 MiB tmpfs when in a namespace) and the
    /// sampler; waits until the pool has converged.
    pub async fn start(opts: WorldOptions) -> Result<World, HarnessError> {
        let net = opts.net;
        let gw1 = Gateway::start(GatewayConfig {
            rtp: true,
            ..GatewayConfig::new(net.gateway(0))
        })
        .await?;
        let gw2 = Gateway::start(GatewayConfig {
            routing: ResponseRouting::ViaSentBy,
            rtp: true,
            ..GatewayConfig::new(net.gateway(1))
        })
        .await?;
        let backends: Vec<_> = (0..NODES).map(|i| net.node_sip(i)).collect();
        let fwd = Forwarder::start(
            ForwarderConfig::new(net.service(), backends).with_probes(Duration::from_millis(200)),
        )
        .await?;
        let mut setup = Setup {
            audit: true,
            media_relay: true,
            ..Setup::default()
        };
        let tmpfs = if opts.netns {
            let path =
                std::env::temp_dir().join(format!("medpool-chaos-tmpfs-{}", std::process::id()));
            match Tmpfs::mount(&path, 48) {
                Ok(t) => {
                    setup.data_dirs.insert(TMPFS_NODE, t.path.join("data"));
                    Some(t)
                }
                Err(e) => {
                    eprintln!("no tmpfs for the disk-full scenario: {e}");
                    None
                }
            }
        } else {
            None
        };
        let pool = LocalPool::start_with(net, NODES, setup).await?;
        let sampler = Sampler::start((0..NODES).map(|i| net.node_raft(i)).collect());
        let mut obs = Observations::default();
        if let Ok(info) = pool.status(0).await {
            obs.shards = (info.nodes.iter().map(|n| n.shards).sum::<usize>() + info.unowned) as u16;
        }
        Ok(World {
            seed: opts.seed,
            rng: SmallRng::seed_from_u64(opts.seed),
            net,
            pool,
            fwd,
            gws: vec![gw1, gw2],
            firewall: opts.netns.then(Firewall::default),
            tmpfs,
            obs,
            label: String::new(),
            config_changes: 0,
            sampler,
            callers: Vec::new(),
            next_port: 5100,
        })
    }

    /// A new caller (a new flow through the Service) offering at most `cps` calls a second.
    pub async fn caller(&mut self, cps: u32) -> StepResult<Arc<Caller>> {
        let port = self.next_port;
        self.next_port = if port >= 60_000 { 5100 } else { port + 1 };
        let seed = self.seed ^ (u64::from(port) << 40) ^ self.rng.random::<u32>() as u64;
        let cfg = CallerConfig {
            cps,
            rtp: true,
            ..CallerConfig::new(self.net.caller(port), self.net.service(), seed)
        };
        let c = Arc::new(
            Caller::start(cfg)
                .await
                .map_err(|e| format!("caller on port {port}: {e}"))?,
        );
        self.callers.push((self.label.clone(), Arc::clone(&c)));
        Ok(c)
    }

    /// A new caller with `n` calls placed and held (those answered). Returns once the pool has
    /// recorded every call up (a confirmed dialog is replicated by a group commit a few
    /// milliseconds after its ACK: a call is protected from a node's death from then on — the
    /// contract the invariants check, see chaos-tests/README.md).
    pub async fn held_calls(&mut self, n: usize) -> StepResult<Arc<Caller>> {
        let c = self.caller(NORMAL_CPS).await?;
        c.place(n).await;
        let up: usize = self.callers.iter().map(|(_, c)| c.live_calls().len()).sum();
        let t = tokio::time::Instant::now();
        let mut recorded = 0;
        while t.elapsed() < Duration::from_secs(20) {
            // Exactly, and on every live node: records of calls ended a moment ago may still be on
            // their way out (their removal is group-committed too) and would otherwise stand in for
            // calls not yet in; and a node that has not applied a record yet would have to pick it
            // up as a late record if it took the shard over.
            // (A record can be left behind for good by a call that ended on a node SIGKILLed before
            // its removal went out — nobody is left to remove it, RELIABILITY.md "Known limits" —
            // and could stand in for a record still in flight: so "at least", then a settle far
            // longer than a group commit.)
            let mut everywhere = true;
            for i in 0..NODES {
                if self.pool.nodes[i].exited().is_some() {
                    continue;
                }
                let n = self.pool.status(i).await.map_or(0, |s| s.dialogs);
                if n < up {
                    recorded = n;
                    everywhere = false;
                    break;
                }
            }
            if everywhere {
                tokio::time::sleep(Duration::from_millis(300)).await;
                return Ok(c);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(format!(
            "the pool recorded {recorded} calls while {up} are up, still 20 s after they were answered"
        ))
    }

    /// Re-INVITEs and hangs up every call of `c` still up.
    pub async fn end_calls(c: &Caller) {
        c.reinvite_all().await;
        c.hangup_all().await;
    }

    /// A live node to ask (the lowest index whose process runs).
    pub fn any_live(&mut self) -> usize {
        (0..NODES)
            .find(|&i| self.pool.nodes[i].exited().is_none())
            .unwrap_or(0)
    }

    /// The current leader as a live node sees it.
    pub async fn leader(&mut self) -> StepResult<usize> {
        for _ in 0..50 {
            let asked = self.any_live();
            if let Ok(i) = self.pool.status(asked).await
                && let Some(l) = i.leader
            {
                return Ok(l as usize);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err("no leader known after 5 s".to_owned())
    }

    /// Internal addresses of every node but `i`.
    pub fn others(&self, i: usize) -> Vec<std::net::IpAddr> {
        (0..NODES)
            .filter(|&j| j != i)
            .map(|j| self.net.node_raft(j).ip())
            .collect()
    }

    /// Node `i`'s admin API address (the default: port 7001 on its SIP address).
    pub fn admin(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.net.node_sip(i).ip(), 7001)
    }

    /// After a scenario failed half-way: wakes a stopped node, frees the tmpfs, restarts every
    /// node whose process is gone, and puts every backend back in the Service, so that the next
    /// round starts from a whole pool.
    pub async fn recover(&mut self) {
        if let Some(t) = self.tmpfs.as_ref() {
            t.free();
        }
        for i in 0..NODES {
            let _ = self.pool.nodes[i].signal("CONT");
            if self.pool.nodes[i].exited().is_some() {
                eprintln!("    recovering: restarting node {i}");
                if let Err(e) = self.pool.restart(i, Duration::from_secs(45)).await {
                    eprintln!("    recovering: node {i} did not come back: {e}");
                }
            }
            self.fwd.mark_alive(self.net.node_sip(i));
        }
    }

    /// After a scenario healed everything: waits until the pool has converged (every node active
    /// with shards and its lease, no shard unowned), then offers [`FRESH_CALLS`] at the normal rate
    /// and re-INVITEs and hangs them up. Recorded for the `converges` invariant.
    pub async fn converge(&mut self) {
        let members: Vec<usize> = (0..NODES).collect();
        let converged = self
            .pool
            .wait_converged(&members, Duration::from_secs(60))
            .await
            .map(|_| ())
            .map_err(|e| e.to_string());
        let (mut placed, mut completed) = (0, 0);
        let mut config_versions = Vec::new();
        if converged.is_ok() {
            for i in 0..NODES {
                if let Ok(s) = self.pool.status(i).await {
                    config_versions.push((i as u64, s.config_version));
                }
            }
            if let Ok(c) = self.caller(NORMAL_CPS).await {
                c.place(FRESH_CALLS).await;
                World::end_calls(&c).await;
                placed = FRESH_CALLS;
                completed = c
                    .ledger()
                    .iter()
                    .filter(|r| {
                        r.setup.is_some_and(Outcome::is_success)
                            && r.reinvite.is_some_and(Outcome::is_success)
                            && r.bye.is_some_and(Outcome::is_success)
                    })
                    .count();
            }
        }
        self.obs.convergence.push(Convergence {
            scenario: self.label.clone(),
            converged,
            placed,
            completed,
            config_versions,
        });
    }

    /// Files the ledgers of the callers made since the last call, and refreshes the gateways'
    /// counts, the audit reports and the samples.
    pub async fn collect(&mut self) {
        // The pool answers the caller's BYE and sends its own to the gateway independently: give
        // the gateways a moment to see the last ones. A leg a gateway answered after its call
        // was given up (a late answer to an abandoned attempt whose call ended or moved) is hung up
        // when the gateway's 2xx reaches a node, which a gateway resends for 32 s (Timer B window);
        // so the wait is that long at most, and only while a leg is still up.
        for _ in 0..400 {
            if self.gws.iter().all(|g| g.active_calls().is_empty()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (label, c) in self.callers.drain(..) {
            let mut media: std::collections::BTreeMap<usize, _> = c
                .rtp_stats()
                .into_iter()
                .map(|m| (m.index, m.stats))
                .collect();
            self.obs
                .calls
                .extend(c.ledger().into_iter().map(|record| CallFate {
                    scenario: label.clone(),
                    media: media.remove(&record.index),
                    record,
                }));
        }
        let mut gw_media = medpool_simpeer::rtp::LegStats::default();
        for g in &self.gws {
            gw_media.add(&g.rtp_stats());
        }
        self.obs.gateway_media = gw_media;
        let counts: Vec<_> = self.gws.iter().map(Gateway::counts).collect();
        self.obs.gateway_byes = counts.iter().map(|c| c.byes).sum();
        self.obs.gateway_calls = counts.iter().map(|c| c.calls).sum();
        self.obs.gateway_cseq_out_of_order = counts.iter().map(|c| c.cseq_out_of_order).sum();
        self.obs.gateway_cseq_disorders = self
            .gws
            .iter()
            .enumerate()
            .flat_map(|(i, g)| {
                g.cseq_disorders()
                    .into_iter()
                    .map(move |d| format!("gw{}: {d}", i + 1))
            })
            .collect();
        self.obs.gateway_legs_left = self.gws.iter().flat_map(Gateway::active_calls).collect();
        self.obs.audit = (0..NODES)
            .map(|i| crate::audit::read(&self.pool.audit_file(i)))
            .collect();
        self.obs.samples = self.sampler.samples();
        self.obs.end_us = now_us();
    }
}
