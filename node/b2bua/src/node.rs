//! One node of the pool: binds the SIP transports, runs the transaction layer, the dispatcher that
//! turns new requests into calls (or answers them: OPTIONS 200, unknown source 403, overload 503,
//! unknown dialog 481, ...), the GatewayActors, and the single shutdown path.
//!
//! Supervision: the dispatcher task owns nothing but the inbound queue; every call is a DialogActor and
//! every gateway a GatewayActor; they find each other through [`crate::sipcore::Registry`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use medpool_sip::transaction::{DriverConfig, TimerConfig};
use medpool_sip::transport::{self, Inbound, TransportConfig, Transports, overload_answer};
use medpool_sip::{HeaderName, Method, SipMessage, ids};
use tokio::sync::{mpsc, watch};

use crate::cluster::{DialogStore, Relay, ShardOwnership};
use crate::config::{PoolConfig, UnknownSource};
use crate::dialog::{self, DialogArgs, DialogMsg, leg::Me, leg::local_response};
use crate::gateway::{self, Gateways};
use crate::sipcore::{CoreEvent, Envelope, Registry, SipIo, TxDriver, client_key, server_key};

/// Something that happened on this node, for `WatchEvents` and logs. Published on a bounded
/// broadcast channel: a slow watcher misses events (and is told how many), it never slows calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeEvent {
    /// A call was accepted.
    CallStarted {
        /// Leg A Call-ID.
        call_id: String,
        /// Its shard.
        shard: u16,
        /// The trunk it came in on.
        trunk: String,
    },
    /// A call was answered.
    CallAnswered {
        /// Leg A Call-ID.
        call_id: String,
        /// The gateway trunk.
        gateway: String,
    },
    /// A call ended.
    CallEnded {
        /// Leg A Call-ID.
        call_id: String,
        /// The last final status on leg A (200 for an answered call).
        status: u16,
        /// Who or what ended it.
        cause: String,
    },
    /// A gateway's health changed.
    Gateway {
        /// Trunk name.
        name: String,
        /// Up or down.
        up: bool,
    },
}

/// How long a forwarded new-call INVITE is waited for at shutdown, at most (Timer B).
const RELAY_WAIT_MAX: Duration = Duration::from_secs(32);
/// How many hung-up legs B are remembered at most (see `NodeCtx::leg_hung_up`).
const HUNG_UP_TRACK_MAX: usize = 65_536;
/// How many forwarded INVITEs are tracked at most (beyond that, the older ones are not waited for).
const RELAY_TRACK_MAX: usize = 16_384;

/// Counters of what the node did (exported as metrics by the binary).
#[derive(Debug, Default)]
pub struct Stats {
    /// Calls accepted (a DialogActor started).
    pub calls_started: AtomicU64,
    /// Calls that were answered (2xx + ACK).
    pub calls_answered: AtomicU64,
    /// Calls that ended.
    pub calls_ended: AtomicU64,
    /// New INVITEs refused with 503 (node or trunk capacity, draining).
    pub calls_refused_capacity: AtomicU64,
    /// Requests from unknown sources.
    pub refused_sources: AtomicU64,
    /// Gateway state changes.
    pub gateway_transitions: AtomicU64,
    /// Messages forwarded to the owner of their shard.
    pub forwarded: AtomicU64,
    /// Messages that could not be forwarded (peer queue full or unreachable): new calls among them
    /// were answered 503, the rest dropped for their senders to retransmit.
    pub forward_failures: AtomicU64,
    /// New UDP INVITEs left unanswered while this node was taking their shard over (behind the
    /// hand-over fence): the caller's retransmission finds the shard served.
    pub held_for_takeover: AtomicU64,
    /// 2xx answers to our INVITEs that no call knew any more, ACKed and hung up.
    pub orphan_answers: AtomicU64,
    /// Calls rebuilt from replicated records after a shard moved here.
    pub calls_restored: AtomicU64,
    /// Post-dial delay (INVITE in → first 18x or 2xx relayed to the caller).
    pub post_dial_delay: Histogram,
}

/// Upper bounds (seconds) of the post-dial-delay histogram buckets.
pub const PDD_BUCKETS: [f64; 10] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// A lock-free histogram with the fixed [`PDD_BUCKETS`] (cumulative counts are computed at scrape).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Count per bucket (not cumulative), plus one overflow bucket.
    pub buckets: [AtomicU64; 11],
    /// Sum of observations in microseconds.
    pub sum_us: AtomicU64,
    /// Number of observations.
    pub count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = PDD_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(PDD_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// Everything a node's actors share.
pub struct NodeCtx {
    /// The transaction layer.
    pub driver: TxDriver,
    /// SIP identifier → actor routing.
    pub registry: Arc<Registry>,
    /// Send handle.
    pub transports: Transports,
    config: RwLock<Arc<PoolConfig>>,
    /// Gateway health and load.
    pub gateways: Gateways,
    /// Our address in Via and Contact.
    pub me: Me,
    /// Shard ownership.
    pub shards: Arc<dyn ShardOwnership>,
    /// Confirmed-dialog store.
    pub store: Arc<dyn DialogStore>,
    /// SIP timers.
    pub timers: TimerConfig,
    /// Counters.
    pub stats: Stats,
    draining: AtomicBool,
    /// Calls started here whose record is not written (being set up, or ending before they were
    /// answered): only this node can finish them, so a shutdown waits for them.
    pub(crate) unrecorded_calls: std::sync::atomic::AtomicUsize,
    /// New-call INVITEs this node received and forwarded to their shard's owner, whose final answer
    /// has not come back through it yet (branch → when): the owner's answers leave from this node,
    /// so a shutdown waits for them (see [`NodeCtx::relayed_answer`]).
    relayed_invites: std::sync::Mutex<std::collections::HashMap<Vec<u8>, tokio::time::Instant>>,
    /// Legs this node hung up lately, with their call or as orphans (Call-ID → when): a 2xx of
    /// theirs that comes again is only ACKed.
    orphan_legs: std::sync::Mutex<std::collections::HashMap<bytes::Bytes, tokio::time::Instant>>,
    inbound_calls: std::sync::Mutex<std::collections::BTreeMap<String, u32>>,
    inbound_cps: std::sync::Mutex<std::collections::BTreeMap<String, crate::health::TokenBucket>>,
    epoch: tokio::time::Instant,
    /// Moving SIP between pool nodes.
    pub relay: Arc<dyn Relay>,
    /// Call and gateway events.
    pub events: tokio::sync::broadcast::Sender<NodeEvent>,
    trusted_forwarders: Vec<std::net::IpAddr>,
    /// Keep only the last two digits of phone numbers in traces.
    pub redact_numbers: bool,
    forward_tx: mpsc::Sender<Forwarded>,
}

impl std::fmt::Debug for NodeCtx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCtx")
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl NodeCtx {
    /// The current pool configuration.
    pub fn config(&self) -> Arc<PoolConfig> {
        self.config
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }
    /// Replaces the pool configuration (new calls use it; calls in progress keep theirs).
    pub fn set_config(&self, config: PoolConfig) {
        if let Ok(mut c) = self.config.write() {
            *c = Arc::new(config);
        }
    }

    /// Replaces the configuration and brings the gateway actors in line with it (new gateways are
    /// probed, removed ones stopped).
    pub async fn apply_config(self: &Arc<Self>, config: PoolConfig) {
        let old = self.config();
        let trunks = config.trunks.clone();
        self.set_config(config);
        if let Err(e) = gateway::reconcile(self, &old.trunks, &trunks).await {
            tracing::error!(error = %e, "cannot start a gateway actor for the new configuration");
        }
    }
    /// How many calls are in progress on this node.
    pub fn active_calls(&self) -> usize {
        self.registry.calls()
    }
    /// How many calls only this node can finish: started here and not (yet) written down — in
    /// set-up, or ending before they were answered (e.g. ACK + BYE to a gateway's 2xx that crossed
    /// our CANCEL after their shard moved). A shutdown waits for them.
    pub fn unrecorded_calls(&self) -> usize {
        self.unrecorded_calls.load(Ordering::SeqCst)
    }
    /// Notes a message the owner of its shard asked this node to send on its behalf (an answer to
    /// a request this node received and forwarded): a final answer to a forwarded new-call INVITE
    /// is no longer waited for.
    pub fn relayed_answer(&self, bytes: &bytes::Bytes) {
        let Ok(mut pending) = self.relayed_invites.lock() else {
            return;
        };
        if pending.is_empty() {
            return;
        }
        if let Ok(m) = SipMessage::parse(bytes.clone())
            && m.status().is_some_and(|s| s >= 200)
            && let Some(branch) = m.top_branch()
        {
            pending.remove(branch);
        }
    }
    /// Forwarded new-call INVITEs still waiting for their final answer to come back through this
    /// node (those older than Timer B, 32 s, are forgotten).
    pub fn relayed_pending(&self) -> usize {
        let Ok(mut pending) = self.relayed_invites.lock() else {
            return 0;
        };
        pending.retain(|_, at| at.elapsed() < RELAY_WAIT_MAX);
        pending.len()
    }
    /// Notes a leg B that its call hung up as it ended: a 2xx of it resent afterwards (the gateway
    /// missed our ACK) is only ACKed, not hung up a second time.
    pub(crate) fn leg_hung_up(&self, call_id: &[u8]) {
        let _ = self.first_orphan_answer(&bytes::Bytes::copy_from_slice(call_id));
    }
    /// Whether this is the first orphan 2xx of this leg lately (see `orphan_answer`).
    fn first_orphan_answer(&self, call_id: &bytes::Bytes) -> bool {
        let Ok(mut seen) = self.orphan_legs.lock() else {
            return false;
        };
        // Swept only when full, and emptied when a sweep frees too little: never a sweep per call.
        // (A leg forgotten early only means a late 2xx of it gets a second, harmless BYE.)
        if seen.len() >= HUNG_UP_TRACK_MAX {
            seen.retain(|_, at| at.elapsed() < RELAY_WAIT_MAX * 2);
            if seen.len() >= HUNG_UP_TRACK_MAX / 2 {
                seen.clear();
            }
        }
        seen.insert(call_id.clone(), tokio::time::Instant::now())
            .is_none()
    }
    fn note_relayed_invite(&self, msg: &SipMessage) {
        if msg.method() != Some(Method::Invite) || msg.to_tag().is_some() {
            return;
        }
        let Some(branch) = msg.top_branch() else {
            return;
        };
        if let Ok(mut pending) = self.relayed_invites.lock() {
            if pending.len() >= RELAY_TRACK_MAX {
                pending.retain(|_, at| at.elapsed() < RELAY_WAIT_MAX);
                if pending.len() >= RELAY_TRACK_MAX / 2 {
                    // That many calls in set-up through one node: stop tracking the older ones
                    // rather than sweep the table on every new call.
                    pending.clear();
                }
            }
            pending.insert(branch.to_vec(), tokio::time::Instant::now());
        }
    }
    /// Takes a message another node forwarded (false when the queue is full: the peer retransmits).
    pub fn inject(&self, inbound: Inbound, via: u64, traceparent: Option<String>) -> bool {
        self.forward_tx
            .try_send(Forwarded {
                inbound,
                via,
                traceparent,
            })
            .is_ok()
    }

    /// This node now owns `shard`: rebuild a DialogActor for every confirmed dialog recorded in it.
    pub async fn adopt_shard(self: &Arc<Self>, shard: u16) -> usize {
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

    /// This node no longer owns `shard`: its answered calls stop here at once, without a word to
    /// the peers (the new owner carries them on from their records); calls still being set up are
    /// ended cleanly here, as nobody else knows them (see [`DialogMsg::ShardReleased`]).
    pub fn release_shard(&self, shard: u16) -> usize {
        let calls = self.registry.calls_of(shard);
        for a in &calls {
            let _ = a.cast(DialogMsg::ShardReleased);
        }
        calls.len()
    }

    pub(crate) fn count_inbound(&self, trunk: &str) {
        if let Ok(mut m) = self.inbound_calls.lock() {
            *m.entry(trunk.to_owned()).or_insert(0) += 1;
        }
    }

    pub(crate) fn call_answered(&self) {
        self.stats.calls_answered.fetch_add(1, Ordering::Relaxed);
    }
    /// Active calls per inbound trunk.
    pub fn inbound_active(&self) -> std::collections::BTreeMap<String, u32> {
        self.inbound_calls
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Publishes an event (no receiver is fine).
    pub fn publish(&self, event: NodeEvent) {
        let _ = self.events.send(event);
    }

    pub(crate) fn call_ended(&self, inbound: &str, _status: u16, _duration: Duration) {
        self.stats.calls_ended.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut m) = self.inbound_calls.lock()
            && let Some(n) = m.get_mut(inbound)
        {
            *n = n.saturating_sub(1);
        }
    }
    pub(crate) fn gateway_changed(&self, trunk: &str, up: bool) {
        self.stats
            .gateway_transitions
            .fetch_add(1, Ordering::Relaxed);
        let _ = self.events.send(NodeEvent::Gateway {
            name: trunk.to_owned(),
            up,
        });
    }
}

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
    let running = transport::start(opts.sip.clone(), stop_rx.clone())
        .await
        .map_err(|source| NodeError::Bind { addr, source })?;
    let sip_addr = running.transports.udp_local();
    let registry = Arc::new(Registry::default());
    let (core_tx, core_rx) = mpsc::channel(opts.sip.queue);
    let (forward_tx, forward_rx) = mpsc::channel(opts.sip.queue);
    let io = Arc::new(SipIo::new(
        running.transports.clone(),
        registry.clone(),
        core_tx,
        relay.clone(),
    ));
    let driver = TxDriver::new(
        DriverConfig {
            timers: opts.timers,
            max_transactions: opts.max_transactions,
        },
        io,
    );
    let hostport = opts
        .advertise
        .clone()
        .unwrap_or_else(|| sip_addr.to_string());
    let ctx = Arc::new(NodeCtx {
        driver,
        registry,
        transports: running.transports.clone(),
        config: RwLock::new(Arc::new(config.clone())),
        gateways: Gateways::default(),
        me: Me {
            hostport,
            local: sip_addr.to_string(),
        },
        shards,
        store,
        timers: opts.timers,
        stats: Stats::default(),
        draining: AtomicBool::new(false),
        unrecorded_calls: std::sync::atomic::AtomicUsize::new(0),
        relayed_invites: std::sync::Mutex::new(std::collections::HashMap::new()),
        orphan_legs: std::sync::Mutex::new(std::collections::HashMap::new()),
        inbound_calls: std::sync::Mutex::new(Default::default()),
        inbound_cps: std::sync::Mutex::new(Default::default()),
        relay,
        events: tokio::sync::broadcast::channel(4096).0,
        forward_tx,
        trusted_forwarders: opts.trusted_forwarders.clone(),
        redact_numbers: opts.redact_numbers,
        epoch: tokio::time::Instant::now(),
    });
    gateway::start_all(&ctx, &config.trunks)
        .await
        .map_err(|e| NodeError::Spawn(e.to_string()))?;
    let mut tasks = running.tasks;
    tasks.push(tokio::spawn(dispatch(
        ctx.clone(),
        running.inbound,
        forward_rx,
        core_rx,
        stop_rx,
    )));
    tracing::info!(%sip_addr, "node started");
    Ok(RunningNode {
        ctx,
        sip_addr,
        stop_tx,
        tasks,
    })
}

impl RunningNode {
    /// The single shutdown path: refuse new calls, optionally BYE the calls in progress, wait (up to
    /// `grace`) for calls and transactions to finish, then stop listening and stop every actor.
    pub async fn shutdown(self, grace: Duration, bye_calls: bool) {
        self.ctx.draining.store(true, Ordering::Relaxed);
        // No more probes: they would keep the transaction table busy.
        gateway::stop_all(&self.ctx);
        if bye_calls {
            for a in self.ctx.registry.call_actors() {
                let _ = a.cast(DialogMsg::Hangup);
            }
        }
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let busy_calls = if bye_calls {
                self.ctx.active_calls()
            } else {
                0
            };
            // Wait for transactions still waiting for a final answer, and for calls only this node can
            // finish (a gateway answer already received but not yet handled by its call must still be
            // ACKed and, if the call was given up, BYEd). Transactions lingering after their answer
            // (Timers D, J, K, L, M) only absorb retransmissions and need not hold the process.
            // So are forwarded new calls whose answers (from their owner) still have to leave from
            // here: a node that exits first loses them, and the caller, hearing nothing, resends its
            // INVITE, which may then start a second call at the shard's new owner.
            if (busy_calls == 0
                && self.ctx.driver.unfinished() == 0
                && self.ctx.unrecorded_calls() == 0
                && self.ctx.relayed_pending() == 0)
                || tokio::time::Instant::now() >= deadline
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.stop_tx.send(true);
        for a in self.ctx.registry.call_actors() {
            a.stop(None);
        }
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(2), t).await;
        }
        tracing::info!("node stopped");
    }
}

/// A message another node received for a shard this node owns.
#[derive(Debug)]
pub struct Forwarded {
    /// The message and its original source.
    pub inbound: Inbound,
    /// The node that received it (answers leave from there).
    pub via: u64,
    /// W3C trace context of the forwarding node's span.
    pub traceparent: Option<String>,
}

async fn dispatch(
    ctx: Arc<NodeCtx>,
    mut inbound: mpsc::Receiver<Inbound>,
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
                feed(&ctx, f.inbound, Some(f.via), f.traceparent).await;
                while let Ok(ev) = core_rx.try_recv() {
                    handle_core(&ctx, ev).await;
                }
            }
            Some(inb) = inbound.recv() => {
                feed(&ctx, inb, None, None).await;
                // Requests the transaction layer just passed up are handled before the next message, so
                // a CANCEL never overtakes the INVITE it cancels.
                while let Ok(ev) = core_rx.try_recv() {
                    handle_core(&ctx, ev).await;
                }
            }
            else => break,
        }
    }
}

/// Sends a stateless answer to a message received here or forwarded to us.
async fn answer(ctx: &NodeCtx, inb: &Inbound, via: Option<u64>, bytes: bytes::Bytes) {
    match via {
        Some(node) => {
            let env = Envelope {
                msg: inb.msg.clone(),
                peer: inb.source,
                transport: inb.transport,
                via,
                traceparent: None,
            };
            let t = if inb.transport.is_reliable() {
                "tcp"
            } else {
                "udp"
            };
            ctx.relay.send_via(node, bytes, env.reply_peer(), t);
        }
        None => {
            let _ = ctx.transports.send_response(inb, bytes).await;
        }
    }
}

/// The header a trusted forwarder uses to name a message's real source.
pub const SOURCE_HEADER: &str = "X-Medpool-Source";

async fn feed(ctx: &Arc<NodeCtx>, mut inb: Inbound, via: Option<u64>, traceparent: Option<String>) {
    let config = ctx.config();
    if via.is_none()
        && ctx.trusted_forwarders.contains(&inb.source.ip())
        && let Some(src) = inb
            .msg
            .other_header(SOURCE_HEADER)
            .next()
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<std::net::SocketAddr>().ok())
    {
        inb.source = src;
    }
    // Peers are checked by the node that received the message; forwarded messages were checked there.
    let known = via.is_some()
        || config
            .trunk_for_source(inb.source.ip(), inb.source.port())
            .is_some();
    if !known {
        if inb.msg.is_request() {
            ctx.stats.refused_sources.fetch_add(1, Ordering::Relaxed);
            if config.node.unknown_source == UnknownSource::Reject
                && inb.msg.method() != Some(Method::Ack)
            {
                let env = Envelope {
                    msg: inb.msg.clone(),
                    peer: inb.source,
                    transport: inb.transport,
                    via: None,
                    traceparent: traceparent.clone(),
                };
                let bytes = local_response(&env, 403, Some(&ids::new_tag(0)), &[]);
                answer(ctx, &inb, None, bytes).await;
            }
        }
        return; // a response from nobody we talk to is dropped too
    }
    // Any node, any message: act only for shards this node owns under a valid lease; forward the rest.
    let shard = ids::shard_of(&inb.msg, ctx.shards.shard_count());
    // Answers to this node's own gateway probes are node-local: every node probes every gateway,
    // so they are never forwarded to the owner of the shard their branch names.
    // So are answers to any client transaction of this node (a call in set-up whose shard just
    // moved away ends here, and needs its gateway's answers to do so).
    let own_answer =
        !inb.msg.is_request() && client_key(&inb.msg).is_some_and(|k| ctx.registry.has_client(&k));
    if !own_answer && !ctx.shards.may_act(shard) {
        let me = ctx.shards.node_id();
        match ctx.shards.owner(shard) {
            Some(owner) if owner != me && via.is_none() => {
                let t = if inb.transport.is_reliable() {
                    "tcp"
                } else {
                    "udp"
                };
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
                    node = me,
                );
                let tp = crate::trace::traceparent(&span);
                if ctx
                    .relay
                    .forward(owner, shard, inb.msg.bytes(), inb.source, t, tp)
                {
                    ctx.stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    ctx.note_relayed_invite(&inb.msg);
                    return;
                }
                // The owner's queue is full or it cannot be reached: counted, then handled below.
                ctx.stats.forward_failures.fetch_add(1, Ordering::Relaxed);
            }
            _ => {}
        }
        // Nobody can take it now (no owner, lease lapsed, owner unreachable): a new call is told to
        // come back; anything else is dropped and its sender retransmits.
        let new_call = inb.msg.method() == Some(Method::Invite) && inb.msg.to_tag().is_none();
        if new_call && !inb.transport.is_reliable() && ctx.shards.taking_over(shard) {
            // This node is taking the shard over (behind its hand-over fence, normally a few ms):
            // the caller's retransmission, 500 ms on, finds it acting. Over TCP nothing is resent,
            // so a new call there is still told to come back.
            ctx.stats.held_for_takeover.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if new_call && let Some(a) = overload_answer(&inb.msg, inb.source, config.node.retry_after)
        {
            answer(ctx, &inb, via, a).await;
        }
        return;
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
            answer(ctx, &inb, via, a).await;
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

async fn handle_core(ctx: &Arc<NodeCtx>, ev: CoreEvent) {
    match ev {
        CoreEvent::Unrouted { key, env } => unrouted(ctx, key, env).await,
        CoreEvent::OrphanAnswer { env } => orphan_answer(ctx, &env),
    }
}

/// ACKs a 2xx to one of our INVITEs that no call knows any more (its call ended or moved before
/// the gateway answered: an abandoned attempt whose late answer outlived its call) and hangs the
/// leg up, so that it is not left up at the gateway. A resent copy is only ACKed again.
fn orphan_answer(ctx: &NodeCtx, env: &Envelope) {
    let Some(mut leg) = dialog::leg::Leg::from_answer(&env.msg, env.peer, env.transport) else {
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
    let _ = ctx.transports.send_now(leg.transport, leg.next_hop(), ack);
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
    if let Some(env) = Envelope::outgoing(bye.build(), leg.next_hop(), leg.transport)
        && let Some(key) = crate::sipcore::client_key_of_request(&env.msg)
    {
        let _ = ctx
            .driver
            .start_client(key, env, leg.transport.is_reliable());
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
    let Some(inbound) = config
        .trunk_for_source(env.peer.ip(), env.peer.port())
        .cloned()
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
    match dialog::spawn(args).await {
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
