//! One node of the pool: binds the SIP transports, runs the transaction layer, the dispatchers that
//! turn new requests into calls (or answer them: OPTIONS 200, unknown source 403, overload 503,
//! unknown dialog 481, ...), the GatewayActors, and the single shutdown path.
//!
//! **Dispatchers.** One task per inbound lane (`TransportConfig::lanes`,
//! [`medpool_sip::transport::lanes`]): a message's lane is a hash of its Call-ID, on every listener
//! and for forwarded messages alike, and what the transaction layer raises for it comes back to the
//! same lane, so one dispatcher sees all of a call leg's messages in order (a CANCEL never overtakes
//! its INVITE) while the dispatchers of different lanes run on different cores. They share nothing
//! but the node's context, whose tables are sharded (the transaction table, the registry).
//!
//! Supervision: a dispatcher task owns nothing but its lane's queues; every call is a DialogActor
//! and every gateway a GatewayActor; they find each other through [`crate::txlayer::Registry`].
//!
//! Inside: `node.rs` starts a node and stops it (and applies configuration and shard moves to its
//! context); `node/dispatch.rs` is a lane's dispatcher (ingress decision, forwarding, the
//! transaction layer); `node/core_events.rs` handles what the transaction layer raises that no call
//! takes (OPTIONS, new calls, 481, orphan answers).

mod core_events;
mod dispatch;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use medpool_sip::transaction::TimerConfig;
use medpool_sip::transport::{self, TransportConfig};
use tokio::sync::{mpsc, watch};

use crate::cluster::{DialogStore, Relay, ShardOwnership};
use crate::config::PoolConfig;
use crate::ctx::{CtxSettings, Me};
pub use crate::ctx::{Forwarded, Histogram, NodeCtx, NodeEvent, PDD_BUCKETS, Stats};
use crate::dialog::{self, DialogMsg};
use crate::gateway;
#[cfg(test)]
pub(crate) use core_events::handle_core;
use dispatch::{Arrivals, dispatch, tag_arrivals};

impl NodeCtx {
    /// Replaces the configuration and brings the gateway actors in line with it (new gateways are
    /// probed, removed ones stopped).
    pub async fn apply_config(self: &Arc<Self>, config: PoolConfig) {
        let old = self.config();
        let trunks = config.trunks.clone();
        let mut ips = crate::sources::listed_ips(&trunks, &self.trusted_forwarders);
        ips.extend(self.dns.ips());
        self.transports.set_listed_ips(ips);
        for t in &trunks {
            if let Some(port) = t.local_port
                && self.me.bound(Some(port)).is_none()
            {
                tracing::warn!(
                    trunk = %t.name,
                    port,
                    "the trunk's local_port is bound at start only: until this node restarts, \
                     the trunk is reached on and sent to from the main SIP listener"
                );
            }
        }
        self.apply_tls(&config);
        self.set_config(config);
        // After the configuration is in place: the DNS sync that follows reads it.
        self.dns.reconcile(&self.config());
        if let Err(e) = gateway::reconcile(self, &old.trunks, &trunks).await {
            tracing::error!(error = %e, "cannot start a gateway actor for the new configuration");
        }
    }

    /// This node now owns `shard`: rebuild a DialogActor for every confirmed dialog recorded in it.
    /// One adoption at a time: the check that a call is not here yet and its rebuild (registered
    /// before `spawn_restored` returns) must not interleave with another adoption of the same
    /// shard — the shard watcher's adoption and its late-record pass, each a task of its own, read
    /// the same fresh record and each rebuilt the call: two actors for one call re-INVITEd the
    /// gateway with one CSeq (soak 0xb92769024e78ba4c on the fixed tree, round 143).
    pub async fn adopt_shard(self: &Arc<Self>, shard: u16) -> usize {
        let _one_at_a_time = self.adopting.lock().await;
        let mut n = 0;
        for record in self.store.records_of(shard) {
            let remote_tag = record.a.remote_tag.as_bytes();
            if self
                .registry
                .has_call(record.a.call_id.as_bytes(), remote_tag)
            {
                continue;
            }
            if dialog::spawn_restored(self.clone(), record).await.is_ok() {
                n += 1;
            }
        }
        self.stats
            .calls_restored
            .fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// The calls this node is still setting up for shards it no longer acts for, by shard, with
    /// their Call-IDs (reported to the new owners: see [`crate::handover`]).
    pub fn lingering_set_ups(&self) -> Vec<(u16, Vec<String>)> {
        if self.set_ups.is_empty() {
            return Vec::new();
        }
        self.set_ups.lingering(|shard| !self.shards.may_act(shard))
    }

    /// This node no longer owns `shard`: its answered calls stop here at once, without a word to
    /// the peers (the new owner carries them on from their records); calls still being set up
    /// finish here, as nobody else knows them, and hand their record over once confirmed (see
    /// [`DialogMsg::ShardReleased`]).
    pub fn release_shard(&self, shard: u16) -> usize {
        let calls = self.registry.calls_of(shard);
        for a in &calls {
            let _ = dialog::actor_of(a).cast(DialogMsg::ShardReleased);
        }
        calls.len()
    }
}

/// How long before the end of its shutdown grace a stopping node ends the calls it is still
/// setting up (at most a quarter of the grace).
const SETUP_END_BEFORE_EXIT: Duration = Duration::from_secs(1);
/// How long the shutdown waits, after stopping the call actors, for them to have stopped.
const CALLS_STOP_WAIT: Duration = Duration::from_secs(2);

/// How to run a node.
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// SIP transports.
    pub sip: TransportConfig,
    /// Our `host:port` in Via and Contact; default: the SIP listen address.
    pub advertise: Option<String>,
    /// SIP timers.
    pub timers: TimerConfig,
    /// Most live transactions.
    pub max_transactions: usize,
    /// Addresses of SIP load balancers whose `X-Medpool-Source: ip:port` header names the real source
    /// of a message (an L7 forwarder in front of the pool, or the test suite's Service stand-in).
    pub trusted_forwarders: Vec<std::net::IpAddr>,
    /// Keep only the last two digits of phone numbers in traces.
    pub redact_numbers: bool,
    /// The media relay (`None`: signalling only, SDP passed on unchanged).
    pub media: Option<MediaOptions>,
    /// The DNS server trunks named by DNS are looked up at (`None`: the system's resolver).
    pub dns_server: Option<SocketAddr>,
}

/// Where the node relays media.
#[derive(Debug, Clone)]
pub struct MediaOptions {
    /// The address media sockets bind to; `None`: the SIP listen address's IP.
    pub listen: Option<std::net::IpAddr>,
    /// The address put in SDP; `None`: the media listen address.
    pub advertise: Option<std::net::IpAddr>,
    /// The UDP port range of the relay endpoints.
    pub ports: medpool_media::relay::PortRange,
}

impl MediaOptions {
    /// The relay runtime for a node whose SIP listens on `sip_ip`.
    pub fn runtime(&self, sip_ip: std::net::IpAddr) -> crate::media::MediaRuntime {
        let listen = self.listen.unwrap_or(sip_ip);
        crate::media::MediaRuntime {
            relay: medpool_media::relay::Relay::new(medpool_media::relay::RelayConfig {
                listen,
                ports: self.ports,
            }),
            advertise: self.advertise.unwrap_or(listen),
        }
    }
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            sip: TransportConfig::default(),
            advertise: None,
            timers: TimerConfig::default(),
            max_transactions: 1_000_000,
            trusted_forwarders: Vec::new(),
            redact_numbers: false,
            media: None,
            dns_server: None,
        }
    }
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The SIP address could not be bound.
    #[error("cannot listen for SIP on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// A trunk's `local_port` clashes with the node's own ports.
    #[error(transparent)]
    TrunkPort(#[from] crate::trunk_ports::PortClash),
    /// A trunk's `local_port` could not be bound.
    #[error("{field}: cannot listen for SIP on {addr}: {source}")]
    TrunkPortBind {
        /// The configuration field (`trunk[i].local_port`).
        field: String,
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// An actor could not be spawned.
    #[error("cannot start an actor: {0}")]
    Spawn(String),
}

/// A started node.
pub struct RunningNode {
    /// Shared state (for the admin API and tests).
    pub ctx: Arc<NodeCtx>,
    /// The bound SIP address (UDP and TCP).
    pub sip_addr: SocketAddr,
    stop_tx: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    supervisor: ractor::ActorRef<()>,
}

/// Starts a node: binds SIP, starts the dispatcher and the gateway actors.
pub async fn start(
    opts: NodeOptions,
    config: PoolConfig,
    shards: Arc<dyn ShardOwnership>,
    store: Arc<dyn DialogStore>,
    relay: Arc<dyn Relay>,
) -> Result<RunningNode, NodeError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let addr = opts.sip.listen;
    // The front door checks sources from the first datagram on (before the context exists).
    opts.sip.gate.set(crate::sources::source_policy(
        &config,
        &opts.trusted_forwarders,
    ));
    let running = transport::start(opts.sip.clone(), stop_rx.clone())
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    running
        .transports
        .tcp()
        .set_listed_ips(crate::sources::listed_ips(
            &config.trunks,
            &opts.trusted_forwarders,
        ));
    if let Some(side) = running.transports.tls().and_then(|p| p.tls()) {
        // Trunks named by DNS are added by the DNS sync once they resolve.
        crate::sources::tls_view(&config, side.material().files().ca.as_deref(), &[]).apply(side);
    }
    let sip_addr = running.transports.udp_local();
    let hostport = opts
        .advertise
        .clone()
        .unwrap_or_else(|| sip_addr.to_string());
    // The trunks' own ports (`local_port`), each bound as the main listener is (UDP and TCP).
    let media_ports = opts.media.as_ref().map(|m| (m.ports.low(), m.ports.high()));
    let trunk_ports = crate::trunk_ports::plan(&config, sip_addr, media_ports)?;
    // One dispatcher per lane; a trunk port's lanes feed the dispatcher of the same lane.
    let lanes = 1 + running.other_lanes.len();
    let (trunk_tx, mut trunk_rx): (Vec<_>, Vec<_>) = (0..lanes)
        .map(|_| mpsc::channel(opts.sip.queue.div_ceil(lanes).max(1)))
        .unzip();
    let mut tasks = running.tasks;
    let mut port_transports = std::collections::BTreeMap::new();
    for p in &trunk_ports {
        let sip = TransportConfig {
            listen: p.bind,
            // Trunk ports are UDP and TCP; TLS stays on the node's TLS listener.
            tls: None,
            ..opts.sip.clone()
        };
        let extra = transport::start(sip, stop_rx.clone())
            .await
            .map_err(|source| NodeError::TrunkPortBind {
                field: format!("trunk[{}].local_port", p.index),
                addr: p.bind,
                source,
            })?;
        extra
            .transports
            .tcp()
            .set_listed_ips(crate::sources::listed_ips(
                &config.trunks,
                &opts.trusted_forwarders,
            ));
        tasks.extend(extra.tasks);
        for (lane, inbound) in std::iter::once(extra.inbound)
            .chain(extra.other_lanes)
            .enumerate()
        {
            tasks.push(tokio::spawn(tag_arrivals(
                p.port,
                inbound,
                trunk_tx[lane].clone(),
                stop_rx.clone(),
            )));
        }
        tracing::info!(trunk = %p.trunk, addr = %p.bind, "trunk port bound");
        port_transports.insert(p.port, extra.transports);
    }
    drop(trunk_tx);
    let tls_hostport = running.transports.tls_local().map(|tls| {
        let host = hostport
            .rsplit_once(':')
            .map_or(hostport.as_str(), |(h, _)| h);
        format!("{host}:{}", tls.port())
    });
    let main_me = Me {
        hostport,
        local: sip_addr.to_string(),
        tls_hostport,
        ..Me::default()
    };
    let me = Me {
        trunk_ports: Arc::new(crate::trunk_ports::identities(&main_me, &trunk_ports)),
        ..main_me
    };
    let wire = Arc::new(crate::trunk_ports::TrunkWire::new(
        running.transports.clone(),
        port_transports.clone(),
    ));
    let settings = CtxSettings {
        me,
        timers: opts.timers,
        max_transactions: opts.max_transactions,
        queue: opts.sip.queue,
        lanes,
        trusted_forwarders: opts.trusted_forwarders.clone(),
        redact_numbers: opts.redact_numbers,
        gate: opts.sip.gate.clone(),
        media: opts.media.as_ref().map(|m| m.runtime(sip_addr.ip())),
        dns: Arc::new(crate::dns::Directory::new(
            crate::dns::Resolver::new(opts.dns_server).map_err(|e| {
                tracing::error!(error = %e, "no DNS resolver: trunks named by DNS stay unresolved");
                e.to_string()
            }),
        )),
    };
    let (ctx, queues) = NodeCtx::new(settings, wire.clone(), config.clone(), shards, store, relay);
    wire.attach(&ctx);
    let supervisor = crate::supervisor::start(&ctx)
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
    gateway::start_all(&ctx, &config.trunks)
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
    ctx.dns.reconcile(&config);
    tasks.push(tokio::spawn(crate::dns_sync::run(
        ctx.clone(),
        stop_rx.clone(),
    )));
    tasks.push(tokio::spawn(crate::ctx::forget_old_legs(
        ctx.clone(),
        stop_rx.clone(),
    )));
    let lag = ctx.clone();
    tasks.push(tokio::spawn(crate::latency::watch_scheduler(
        move |d| lag.stats.stages.scheduler_lag.observe(d),
        stop_rx.clone(),
    )));
    let inbound = std::iter::once(running.inbound).chain(running.other_lanes);
    let from_ctx = std::iter::once((queues.core, queues.forwarded)).chain(queues.other_lanes);
    for (inbound, (core, forwarded)) in inbound.zip(from_ctx) {
        tasks.push(tokio::spawn(dispatch(
            ctx.clone(),
            running.transports.clone(),
            inbound,
            Arrivals {
                rx: trunk_rx.remove(0),
                transports: port_transports.clone(),
            },
            forwarded,
            core,
            stop_rx.clone(),
        )));
    }
    tracing::info!(%sip_addr, "node started");
    Ok(RunningNode {
        ctx,
        sip_addr,
        stop_tx,
        tasks,
        supervisor,
    })
}

impl RunningNode {
    /// The single shutdown path: refuse new calls, optionally BYE the calls in progress, wait (up to
    /// `grace`) for calls and transactions to finish, then stop listening and stop every actor.
    pub async fn shutdown(self, grace: Duration, bye_calls: bool) {
        self.ctx.draining.store(true, Ordering::Relaxed);
        // No more probes: they would keep the transaction table busy.
        gateway::stop_all(&self.ctx);
        self.ctx.dns.stop();
        crate::dns_sync::stop_probers(&self.ctx);
        if bye_calls {
            for a in self.ctx.registry.call_actors() {
                let _ = a.cast(DialogMsg::Hangup);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        // Forwarded new calls whose answers (from their owner) still have to leave from here are
        // waited for too: a node that exits first loses them, and the caller, hearing nothing,
        // resends its INVITE, which may then start a second call at the shard's new owner.
        // Calls still being set up near the end (e.g. lingering after a drain moved their shard)
        // are ended cleanly then (503 + Retry-After, CANCEL), not cut off without a word.
        let end_set_ups = deadline - (grace / 4).min(SETUP_END_BEFORE_EXIT);
        if !self
            .ctx
            .until_nothing_to_wait_for(bye_calls, end_set_ups)
            .await
        {
            for a in self.ctx.registry.call_actors() {
                let _ = a.cast(DialogMsg::EndSetUp);
            }
            self.ctx
                .until_nothing_to_wait_for(bye_calls, deadline)
                .await;
        }
        let _ = self.stop_tx.send(true);
        for a in self.ctx.registry.call_actors() {
            a.stop(None);
        }
        // Each stopped call gives back what it held (registry, relay ports, gateway slot) in its
        // `post_stop`; wait for that, briefly, so that none is still alive when the runtime ends
        // (a call dropped without its `post_stop` is what a panic leaves, and is logged as one).
        let stopped_by = tokio::time::Instant::now() + CALLS_STOP_WAIT;
        while !self.ctx.registry.all_calls().is_empty() && tokio::time::Instant::now() < stopped_by
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        self.supervisor.stop(None);
        tracing::info!("node stopped");
    }
}

#[cfg(test)]
mod tests;
