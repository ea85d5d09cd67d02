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

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use medpool_sip::transaction::TimerConfig;
use medpool_sip::transport::{self, Inbound, TransportConfig, Transports, overload_answer};
use medpool_sip::{HeaderName, Method, ids};
use tokio::sync::{mpsc, watch};

use crate::cluster::{DialogStore, Relay, ShardOwnership};
use crate::config::PoolConfig;
use crate::ctx::{CtxSettings, Me};
pub use crate::ctx::{Forwarded, Histogram, NodeCtx, NodeEvent, PDD_BUCKETS, Stats};
use crate::dialog::{self, DialogArgs, DialogMsg, leg::local_response};
use crate::gateway;
use crate::ingress::{Arrival, Ingress, Ownership, ingress, real_source, unowned};
use crate::txlayer::{CoreEvent, Envelope, client_key, server_key};

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

/// Hands what a trunk port received to the dispatcher, with the port, until the node stops.
async fn tag_arrivals(
    port: u16,
    mut inbound: mpsc::Receiver<Inbound>,
    to: mpsc::Sender<(u16, Inbound)>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            m = inbound.recv() => match m {
                // A full dispatcher queue holds this port's queue, whose listener then answers
                // 503 or drops, as the main listener's does.
                Some(inb) => if to.send((port, inb)).await.is_err() { return },
                None => return,
            },
        }
    }
}

/// What the trunk ports received (tagged with the port), and their transports.
struct Arrivals {
    rx: mpsc::Receiver<(u16, Inbound)>,
    transports: std::collections::BTreeMap<u16, Transports>,
}

/// One lane's dispatcher: its share of the main listener's messages, of the trunk ports' and of
/// the forwarded ones, and the core events they raise, until the node stops.
async fn dispatch(
    ctx: Arc<NodeCtx>,
    transports: Transports,
    mut inbound: mpsc::Receiver<Inbound>,
    mut arrivals: Arrivals,
    mut forwarded: mpsc::Receiver<Forwarded>,
    mut core_rx: mpsc::Receiver<CoreEvent>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            Some(ev) = core_rx.recv() => handle_core(&ctx, ev).await,
            Some(f) = forwarded.recv() => {
                let began = tokio::time::Instant::now();
                feed(&ctx, &transports, f.inbound, Some(f.via), f.traceparent, None).await;
                while let Ok(ev) = core_rx.try_recv() {
                    handle_core(&ctx, ev).await;
                }
                ctx.stats.stages.dispatch.observe(began.elapsed());
            }
            Some(inb) = inbound.recv() => {
                let began = tokio::time::Instant::now();
                ctx.stats.stages.queue_depth.observe_count(inbound.len());
                feed(&ctx, &transports, inb, None, None, None).await;
                // Requests the transaction layer just passed up are handled before the next message, so
                // a CANCEL never overtakes the INVITE it cancels.
                while let Ok(ev) = core_rx.try_recv() {
                    handle_core(&ctx, ev).await;
                }
                ctx.stats.stages.dispatch.observe(began.elapsed());
            }
            Some((port, inb)) = arrivals.rx.recv() => {
                let on = arrivals.transports.get(&port).unwrap_or(&transports);
                feed(&ctx, on, inb, None, None, Some(port)).await;
                while let Ok(ev) = core_rx.try_recv() {
                    handle_core(&ctx, ev).await;
                }
            }
            else => break,
        }
    }
}

/// Sends a stateless answer to a message received here or forwarded to us.
async fn answer(
    ctx: &NodeCtx,
    transports: &Transports,
    inb: &Inbound,
    via: Option<u64>,
    bytes: bytes::Bytes,
) {
    match via {
        Some(node) => {
            let env = Envelope {
                msg: inb.msg.clone(),
                peer: inb.source,
                transport: inb.transport,
                via,
                traceparent: None,
            };
            ctx.relay
                .send_via(node, bytes, env.reply_peer(), inb.transport.as_lower());
        }
        None => {
            let _ = transports.send_response(inb, bytes).await;
        }
    }
}

/// Takes one message received on the main listener (`port` `None`) or a trunk port, or forwarded
/// by another node of the pool (`via`), `transports` being those it arrived on.
async fn feed(
    ctx: &Arc<NodeCtx>,
    transports: &Transports,
    mut inb: Inbound,
    via: Option<u64>,
    traceparent: Option<String>,
    port: Option<u16>,
) {
    let config = ctx.config();
    // Through a trusted L7 forwarder, the port a message reached is the forwarder's choice.
    let direct = via.is_none() && !ctx.trusted_forwarders.contains(&inb.source.ip());
    if via.is_none() {
        inb.source = real_source(&inb.msg, inb.source, &ctx.trusted_forwarders);
    }
    // Peers are checked by the node that received the message; forwarded messages were checked there.
    // A trunk with a port of its own starts things (new calls, OPTIONS, ...) only on that port:
    // elsewhere its new requests (sent to the node directly) are a stranger's. What belongs to a
    // dialog or a transaction already known is taken on any port (it names its call).
    // A trunk that requires a client certificate is only itself over TLS (the TLS door checked the
    // certificate); its address over UDP or TCP, or named by a forwarder, is not enough.
    let known = via.is_some()
        || ctx
            .dns
            .trunk_for_source(&config, inb.source.ip(), inb.source.port())
            .is_some_and(|t| {
                (!direct
                    || !medpool_sip::transport::starts_something_new(&inb.msg)
                    || ctx.me.bound(t.local_port) == port)
                    && (!t.tls.requires_client_cert()
                        || (inb.transport == medpool_sip::transport::Transport::Tls
                            && inb.tls.is_some()))
            });
    if !known && inb.msg.is_request() {
        ctx.stats.refused_sources.fetch_add(1, Ordering::Relaxed);
    }
    let arrival = Arrival {
        is_request: inb.msg.is_request(),
        is_ack: inb.msg.method() == Some(Method::Ack),
        new_call: inb.msg.method() == Some(Method::Invite) && inb.msg.to_tag().is_none(),
        reliable: inb.transport.is_reliable(),
        forwarded: via.is_some(),
        known_source: known,
        // Answers to this node's own gateway probes are node-local: every node probes every
        // gateway, so they are never forwarded to the owner of the shard their branch names.
        // So are answers to any client transaction of this node (a call in set-up whose shard just
        // moved away ends here, and needs its gateway's answers to do so).
        own_answer: known
            && !inb.msg.is_request()
            && client_key(&inb.msg).is_some_and(|k| ctx.registry.has_client(&k)),
    };
    // Any node, any message: act only for shards this node owns under a valid lease; forward the rest.
    let shard = if known {
        ids::shard_of(&inb.msg, ctx.shards.shard_count())
    } else {
        0
    };
    let me = ctx.shards.node_id();
    let may_act = known && ctx.shards.may_act(shard);
    // A call in set-up here is handled here whatever its shard (it lingers after a hand-over).
    let setting_up = known
        && !may_act
        && inb.msg.is_request()
        && inb
            .msg
            .call_id()
            .and_then(Result::ok)
            .is_some_and(|c| ctx.set_ups.holds(c));
    // A call the shard's previous owner still sets up is finished there: its messages go there.
    if may_act
        && !arrival.own_answer
        && let Some(holder) = lingering_holder(ctx, &inb, shard, me)
    {
        if ctx.relay.forward_for(
            via.unwrap_or(me),
            holder,
            shard,
            inb.msg.bytes(),
            inb.source,
            transport_name(&inb),
            traceparent.clone(),
        ) {
            ctx.stats.sent_to_lingering.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // The holder cannot be reached (it died, and its calls in set-up with it): handled here.
        ctx.stats.forward_failures.fetch_add(1, Ordering::Relaxed);
    }
    let ownership = if !known || arrival.own_answer || may_act || setting_up {
        Ownership {
            may_act: true,
            owner: None,
            me,
            taking_over: false,
        }
    } else {
        Ownership {
            may_act: false,
            owner: ctx.shards.owner(shard),
            me,
            taking_over: ctx.shards.taking_over(shard),
        }
    };
    let mut decision = ingress(&arrival, config.node.unknown_source, &ownership);
    if let Ingress::ForwardTo(owner) = decision {
        if forward(ctx, &inb, shard, owner) {
            return;
        }
        // The owner's queue is full or it cannot be reached (it is restarting: its connection is
        // being made again): counted. A new call over UDP is left to its retransmission, 500 ms
        // on, which is forwarded again (a 503 here ended calls in rolling restarts); over TCP
        // nothing is resent, so it is handled as if nobody could take it (503).
        ctx.stats.forward_failures.fetch_add(1, Ordering::Relaxed);
        decision = if arrival.new_call && !arrival.reliable {
            Ingress::Drop
        } else {
            unowned(&arrival, &ownership)
        };
    }
    match decision {
        Ingress::HandleHere => {}
        Ingress::ForwardTo(_) | Ingress::Drop => return,
        Ingress::Refuse403 => {
            let env = Envelope {
                msg: inb.msg.clone(),
                peer: inb.source,
                transport: inb.transport,
                via: None,
                traceparent: traceparent.clone(),
            };
            let bytes = local_response(&env, 403, Some(&ids::new_tag(0)), &[]);
            answer(ctx, transports, &inb, None, bytes).await;
            return;
        }
        Ingress::HoldForHandOver => {
            // This node is taking the shard over (behind its hand-over fence, normally a few ms):
            // the caller's retransmission, 500 ms on, finds it acting.
            ctx.stats.held_for_takeover.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Ingress::Refuse503 => {
            if let Some(a) = overload_answer(&inb.msg, inb.source, config.node.retry_after) {
                answer(ctx, transports, &inb, via, a).await;
            }
            return;
        }
    }
    if inb.msg.is_request() {
        let Some(key) = server_key(&inb.msg) else {
            return;
        };
        let is_ack = inb.msg.method() == Some(Method::Ack);
        let reliable = inb.transport.is_reliable();
        let env = Envelope {
            msg: inb.msg.clone(),
            peer: inb.source,
            transport: inb.transport,
            via,
            traceparent: traceparent.clone(),
        };
        if ctx.driver.on_request(key, is_ack, env, reliable).is_err()
            && medpool_sip::transport::is_new_call(&inb.msg)
            && let Some(a) = overload_answer(&inb.msg, inb.source, config.node.retry_after)
        {
            answer(ctx, transports, &inb, via, a).await;
        }
    } else {
        let Some(key) = client_key(&inb.msg) else {
            return;
        };
        let status = inb.msg.status().unwrap_or(0);
        let env = Envelope {
            msg: inb.msg,
            peer: inb.source,
            transport: inb.transport,
            via,
            traceparent: traceparent.clone(),
        };
        ctx.driver.on_response(key, status, env);
    }
}

/// "udp" or "tcp", as the pool's forwarding names a message's transport.
fn transport_name(inb: &Inbound) -> &'static str {
    if inb.transport.is_reliable() {
        "tcp"
    } else {
        "udp"
    }
}

/// The node still setting up the call `inb` belongs to, when that is the shard's previous owner
/// (this node took the shard over while the call was in set-up there) and no call or transaction
/// here knows the message (see [`crate::handover::route`]).
fn lingering_holder(ctx: &NodeCtx, inb: &Inbound, shard: u16, me: u64) -> Option<u64> {
    let call_id = inb.msg.call_id().and_then(Result::ok)?;
    let is_request = inb.msg.is_request();
    let facts = crate::handover::Facts {
        is_request,
        call_id,
        shard,
        known_here: false,
        me,
    };
    // The table first: it is empty but in the seconds after a hand-over.
    let crate::handover::Route::Holder(holder) =
        crate::handover::route(&ctx.elsewhere, &facts, tokio::time::Instant::now())
    else {
        return None;
    };
    // Answers to transactions here were handled as this node's own (`own_answer`); a request of
    // a call here (rebuilt from the record the holder handed over) stays here.
    let known_here = is_request
        && (ctx.registry.is_our_leg_b(call_id)
            || inb
                .msg
                .from_tag()
                .is_some_and(|tag| ctx.registry.has_call(call_id, tag)));
    (!known_here).then_some(holder)
}

/// Hands a message to the owner of its shard; false when it cannot be delivered.
fn forward(ctx: &NodeCtx, inb: &Inbound, shard: u16, owner: u64) -> bool {
    let t = inb.transport.as_lower();
    // A short span on the receiving node; the owner's spans continue its trace.
    let span = tracing::info_span!(
        "sip.forward",
        sip.method = inb
            .msg
            .method_bytes()
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
            .as_ref(),
        sip.status = inb.msg.status().unwrap_or(0),
        shard,
        owner,
        node = ctx.shards.node_id(),
    );
    let tp = crate::trace::traceparent(&span);
    if ctx
        .relay
        .forward(owner, shard, inb.msg.bytes(), inb.source, t, tp)
    {
        ctx.stats.forwarded.fetch_add(1, Ordering::Relaxed);
        ctx.note_relayed_invite(&inb.msg);
        true
    } else {
        false
    }
}

fn respond(
    ctx: &NodeCtx,
    key: &medpool_sip::transaction::ServerKey,
    env: &Envelope,
    status: u16,
    extra: &[(HeaderName, &[u8])],
) {
    let bytes = local_response(env, status, Some(&ids::new_tag(0)), extra);
    if let Some(e) = env.reply(bytes) {
        let _ = ctx.driver.respond(key, status, e);
    }
}

pub(crate) async fn handle_core(ctx: &Arc<NodeCtx>, ev: CoreEvent) {
    match ev {
        CoreEvent::Unrouted { key, env } => unrouted(ctx, key, env).await,
        CoreEvent::OrphanAnswer { env } => orphan_answer(ctx, &env),
    }
}

/// ACKs a 2xx to one of our INVITEs that no call knows any more (its call ended or moved before
/// the gateway answered: an abandoned attempt whose late answer outlived its call) and hangs the
/// leg up, so that it is not left up at the gateway. A resent copy is only ACKed again. Only a 2xx
/// whose Call-ID this pool minted (its MAC holds) and that came from a trunk is acted on, and only
/// towards that trunk ([`orphan_target`]): a forged 2xx cannot make the node send to a third party.
fn orphan_answer(ctx: &NodeCtx, env: &Envelope) {
    let Some(mut leg) = dialog::leg::Leg::from_answer(&env.msg, env.peer, env.transport) else {
        return;
    };
    if !ids::is_minted_call_id(&leg.call_id) {
        ctx.stats.forged_answers.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let Some(target) = orphan_target(&ctx.config(), &ctx.dns, env.peer, leg.next_hop()) else {
        ctx.stats.forged_answers.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let shard = ids::shard_in(&leg.call_id).unwrap_or(0);
    if ctx.shards.recently_taken(shard) {
        // Its call may still be on its way here (a late record of the old owner): the gateway
        // resends its 2xx for 32 s, and a later copy finds the call, or is hung up then.
        return;
    }
    let ack = leg
        .request(&ctx.me, b"ACK", leg.local_cseq, &ids::new_branch(shard))
        .build();
    let _ = ctx.transports.send_now(leg.transport, target, ack);
    if !ctx.first_orphan_answer(&leg.call_id) {
        return;
    }
    ctx.stats.orphan_answers.fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        call_id = %String::from_utf8_lossy(&leg.call_id),
        "a gateway answered a leg no call knows any more: ACK and BYE"
    );
    leg.local_cseq += 1;
    let mut bye = leg.request(&ctx.me, b"BYE", leg.local_cseq, &ids::new_branch(shard));
    bye.header(
        HeaderName::Reason,
        b"SIP;cause=200;text=\"Call completed elsewhere\"",
    );
    if let Some(env) = Envelope::outgoing(bye.build(), target, leg.transport)
        && let Some(key) = crate::txlayer::client_key_of_request(&env.msg)
    {
        let _ = ctx
            .driver
            .start_client(key, env, leg.transport.is_reliable());
    }
}

/// Where the ACK and BYE for an orphan 2xx that came `from` may go: its `next_hop` (Contact or
/// Record-Route) when that is an address of the same trunk, else back where it came from; nowhere
/// when it came from no trunk.
fn orphan_target(
    config: &PoolConfig,
    dns: &crate::dns::Directory,
    from: SocketAddr,
    next_hop: SocketAddr,
) -> Option<SocketAddr> {
    let trunk_of = |ip: std::net::IpAddr| dns.trunk_of_ip(config, ip);
    let came_from = trunk_of(from.ip())?;
    if trunk_of(next_hop.ip()) == Some(came_from) {
        Some(next_hop)
    } else {
        Some(from)
    }
}

async fn unrouted(ctx: &Arc<NodeCtx>, key: medpool_sip::transaction::ServerKey, env: Envelope) {
    let msg = &env.msg;
    let allow = medpool_sip::check::ALLOWED_METHODS.as_bytes();
    let in_dialog = msg.to_tag().is_some();
    match msg.method() {
        Some(Method::Invite) if !in_dialog => new_call(ctx, key, env).await,
        Some(Method::Options) if !in_dialog => respond(
            ctx,
            &key,
            &env,
            200,
            &[
                (HeaderName::Allow, allow),
                (HeaderName::Accept, b"application/sdp"),
                (HeaderName::Supported, b"100rel, timer"),
            ],
        ),
        Some(Method::Register | Method::Subscribe | Method::Publish | Method::Message)
            if !in_dialog =>
        {
            respond(ctx, &key, &env, 405, &[(HeaderName::Allow, allow)])
        }
        Some(Method::Ack) => {}
        _ if in_dialog
            && !env.transport.is_reliable()
            && ctx
                .shards
                .recently_taken(ids::shard_of(msg, ctx.shards.shard_count())) =>
        {
            // This node took the call's shard over moments ago: its record may still be on its way
            // (the old owner answered it just before a partition and retries the write). No 481,
            // which would end the call at the far side: over UDP the far side retransmits, and a
            // later copy finds the call once its record is here.
            tracing::debug!(
                "in-dialog request for a call not (yet) known on a newly taken shard: no answer"
            );
            ctx.driver.abandon(&key);
        }
        _ => respond(ctx, &key, &env, 481, &[]),
    }
}

async fn new_call(ctx: &Arc<NodeCtx>, key: medpool_sip::transaction::ServerKey, env: Envelope) {
    let config = ctx.config();
    let retry = config.node.retry_after.to_string();
    let busy: &[(HeaderName, &[u8])] = &[(HeaderName::RetryAfter, retry.as_bytes())];
    let msg = &env.msg;
    let Some(Ok(call_id)) = msg.call_id() else {
        return;
    };
    if ctx.registry.is_our_leg_b(call_id) {
        respond(ctx, &key, &env, 482, &[]);
        return;
    }
    let Some(inbound) = ctx
        .dns
        .trunk_for_source(&config, env.peer.ip(), env.peer.port())
        .and_then(|t| crate::config::SharedTrunk::of(&config, t))
    else {
        respond(ctx, &key, &env, 403, &[]);
        return;
    };
    if ctx.draining.load(Ordering::Relaxed) || ctx.active_calls() >= config.node.max_calls as usize
    {
        ctx.stats
            .calls_refused_capacity
            .fetch_add(1, Ordering::Relaxed);
        respond(ctx, &key, &env, 503, busy);
        return;
    }
    // The inbound trunk's own capacity.
    if let Some(max) = inbound.max_calls {
        let full = ctx
            .inbound_calls
            .lock()
            .map(|m| m.get(&inbound.name).copied().unwrap_or(0) >= max)
            .unwrap_or(false);
        if full {
            ctx.stats
                .calls_refused_capacity
                .fetch_add(1, Ordering::Relaxed);
            respond(ctx, &key, &env, 503, busy);
            return;
        }
    }
    // ... and its calls per second.
    if let Some(cps) = inbound.max_cps {
        let now = ctx.epoch.elapsed();
        let allowed = ctx
            .inbound_cps
            .lock()
            .map(|mut m| {
                m.entry(inbound.name.clone())
                    .or_insert_with(|| crate::health::TokenBucket::for_cps(cps))
                    .try_take(now)
            })
            .unwrap_or(true);
        if !allowed {
            ctx.stats
                .calls_refused_capacity
                .fetch_add(1, Ordering::Relaxed);
            respond(ctx, &key, &env, 503, busy);
            return;
        }
    }
    let shard = ids::shard_of(msg, ctx.shards.shard_count());
    if !ctx.shards.may_act(shard) {
        // The shard moved away between the ingress (which found this node acting for it) and
        // here. In a planned move over UDP the INVITE is left to its retransmission, which the
        // ingress then sends to the new owner; otherwise nobody can take it now (503).
        if !env.transport.is_reliable() && ctx.shards.hands_over() {
            tracing::debug!(
                shard,
                "new call on a shard that just moved away: left to its retransmission"
            );
            ctx.stats.held_for_takeover.fetch_add(1, Ordering::Relaxed);
            ctx.driver.abandon(&key);
            return;
        }
        respond(ctx, &key, &env, 503, busy);
        return;
    }
    if let Ok(mut m) = ctx.inbound_calls.lock() {
        *m.entry(inbound.name.clone()).or_insert(0) += 1;
    }
    let inbound_name = inbound.name.clone();
    let args = DialogArgs {
        ctx: ctx.clone(),
        key: key.clone(),
        env: env.clone(),
        inbound,
        shard,
    };
    let began = tokio::time::Instant::now();
    // Not awaited: the actor starts on whichever worker is free while the dispatcher goes on.
    let spawned = dialog::spawn(args);
    ctx.stats.stages.call_start.observe(began.elapsed());
    match spawned {
        Ok(_actor) => {
            ctx.stats.calls_started.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot start a call");
            ctx.call_ended(&inbound_name, 500, Duration::ZERO);
            respond(ctx, &key, &env, 500, &[]);
        }
    }
}

#[cfg(test)]
mod tests;
