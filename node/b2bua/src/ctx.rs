//! What a node's actors share: [`NodeCtx`] (the transaction layer, the routing registry, the wire,
//! the configuration, the gateway table, the pool's traits, counters and events), and the node's
//! identity on the wire ([`Me`]). It sits between the transaction-event layer below and the actors
//! above (gateways, calls), and names none of them: what needs an actor type (adopting or releasing
//! a shard, applying a configuration) is in the `node` module.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use medpool_sip::transaction::{DriverConfig, TimerConfig};
use medpool_sip::transport::gate::SourceGate;
use medpool_sip::transport::{Inbound, Transport};
use tokio::sync::mpsc;

use crate::cluster::{DialogStore, ForwardMeta, Relay, ShardOwnership};
use crate::config::PoolConfig;
use crate::gateways::Gateways;
use crate::recent::Recent;
use crate::relayed::{Kept, RelayedInvites};
use crate::sources::source_policy;
use crate::txlayer::{CoreEvent, Registry, SipIo, TxDriver, Wire};

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

/// How many hung-up legs B are remembered at most (see `NodeCtx::leg_hung_up`).
const HUNG_UP_TRACK_MAX: usize = 65_536;
/// How often the node lets go of hung-up legs remembered long enough, also when no call comes any
/// more (see [`forget_old_legs`]).
const FORGET_TICK: Duration = Duration::from_secs(2);

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
    /// Messages that could not be forwarded (peer queue full or unreachable): new calls over TCP
    /// among them were answered 503, the rest dropped for their senders to retransmit.
    pub forward_failures: AtomicU64,
    /// New UDP INVITEs left unanswered while this node was taking their shard over (behind the
    /// hand-over fence): the caller's retransmission finds the shard served.
    pub held_for_takeover: AtomicU64,
    /// 2xx answers to our INVITEs that no call knew any more, ACKed and hung up.
    pub orphan_answers: AtomicU64,
    /// 2xx answers no call knew whose Call-ID this pool did not mint (its MAC fails) or that came
    /// from no trunk: ignored, never ACKed or hung up.
    pub forged_answers: AtomicU64,
    /// Calls rebuilt from replicated records after a shard moved here.
    pub calls_restored: AtomicU64,
    /// Calls in set-up whose shard moved away: they finished their set-up here (lingering).
    pub setups_lingering: AtomicU64,
    /// Of those, calls confirmed after the move whose record was handed to the new owner.
    pub setups_handed_over: AtomicU64,
    /// Messages of calls lingering on a shard's previous owner that this node sent on to it.
    pub sent_to_lingering: AtomicU64,
    /// New-call INVITEs this node received from the network and forwarded, and answered 100
    /// Trying itself (their owner sends none).
    pub trying_for_forwarded: AtomicU64,
    /// New-call INVITEs whose caller another node answered 100 Trying that this node could not
    /// take (it was taking their shard over, the shard had moved on, its queue was full): sent
    /// back to that node, which feeds them to itself again (no retransmission comes).
    pub bounced: AtomicU64,
    /// New-call INVITEs this node answered 100 and forwarded that it fed to itself again because
    /// the stream to their owner broke before the owner answered anything
    /// ([`NodeCtx::refeed_lost_to`]).
    pub refed: AtomicU64,
    /// Actors (calls, gateway probers) that died without stopping cleanly (a panic): their
    /// supervisor and their state's drop gave back what they held.
    pub actors_failed: AtomicU64,
    /// Post-dial delay (INVITE in → first 18x or 2xx relayed to the caller).
    pub post_dial_delay: Histogram,
    /// Where the time of a message and of a new call goes, stage by stage.
    pub stages: crate::latency::Stages,
    /// Relayed calls hung up because their media stopped (`media_timeout`).
    pub media_timeouts: AtomicU64,
    /// New calls refused with 503 because the media port range was full.
    pub media_ports_exhausted: AtomicU64,
    /// Calls rebuilt here whose media was moved onto this node's relay (both legs' re-INVITEs
    /// answered 2xx).
    pub media_reanchored: AtomicU64,
    /// Re-anchoring re-INVITEs (one per leg) that failed: a non-2xx answer, no answer, or no
    /// relay port; the call goes on with signalling only on that leg.
    pub media_reanchor_failed: AtomicU64,
    /// SRTP packets dropped per trunk (authentication failures, replays), added when a call's
    /// relay session closes; at most [`SRTP_TRUNKS_MAX`] trunks.
    pub srtp_by_trunk: std::sync::Mutex<std::collections::BTreeMap<String, SrtpDrops>>,
}

/// Trunks [`Stats::srtp_by_trunk`] counts at most (configured trunks are far fewer; a trunk
/// beyond it is not counted).
pub const SRTP_TRUNKS_MAX: usize = 4096;

/// SRTP packets a trunk's peers sent that the relay dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SrtpDrops {
    /// Packets whose authentication tag (or MKI) did not match.
    pub auth_failed: u64,
    /// Packets replayed or behind the replay window.
    pub replayed: u64,
}

impl Stats {
    /// Adds what a closing session dropped from `trunk`'s peer.
    pub fn record_srtp_drops(&self, trunk: &str, auth_failed: u64, replayed: u64) {
        if auth_failed == 0 && replayed == 0 {
            return;
        }
        let mut m = self
            .srtp_by_trunk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !m.contains_key(trunk) && m.len() >= SRTP_TRUNKS_MAX {
            return;
        }
        let d = m.entry(trunk.to_owned()).or_default();
        d.auth_failed += auth_failed;
        d.replayed += replayed;
    }

    /// SRTP drops per trunk so far.
    pub fn srtp_drops(&self) -> Vec<(String, SrtpDrops)> {
        let m = self
            .srtp_by_trunk
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        m.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
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

/// Our identity on the wire: the address in Via and Contact.
#[derive(Debug, Clone, Default)]
pub struct Me {
    /// `host:port` for Via sent-by and Contact.
    pub hostport: String,
    /// This node's own `host:port` (its SIP listen address): node-local traffic such as gateway
    /// probes puts it in Via, so the answers come back to this node and not to the pool address.
    pub local: String,
    /// Our identity on each trunk port this node has bound (`trunk.local_port`), by port.
    pub trunk_ports: Arc<std::collections::BTreeMap<u16, Me>>,
    /// `host:port` for Via and Contact over TLS (the advertised host at the TLS listen port);
    /// `None` when the node has no TLS listener (then `hostport`).
    pub tls_hostport: Option<String>,
}

impl Me {
    /// Our identity towards a trunk whose `local_port` is `port`: that port's when this node has
    /// bound it, else the main listener's.
    pub fn on(&self, port: Option<u16>) -> &Me {
        port.and_then(|p| self.trunk_ports.get(&p)).unwrap_or(self)
    }
    /// The trunk port the node really uses for `port`: `None` (the main listener) when it is not
    /// bound (a `local_port` added by a reload waits for a restart).
    pub fn bound(&self, port: Option<u16>) -> Option<u16> {
        port.filter(|p| self.trunk_ports.contains_key(p))
    }
    /// A Via value with a new branch.
    pub fn via(&self, transport: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            transport.as_str(),
            self.hostport_for(transport)
        )
    }

    /// The `host:port` peers reach us on over `transport`.
    pub fn hostport_for(&self, transport: Transport) -> &str {
        match (transport, &self.tls_hostport) {
            (Transport::Tls, Some(h)) => h,
            _ => &self.hostport,
        }
    }
    /// A Via value naming this node itself (not the pool address).
    pub fn local_via(&self, transport: Transport, branch: &str) -> String {
        format!(
            "SIP/2.0/{} {};branch={branch};rport",
            transport.as_str(),
            self.local
        )
    }

    /// Our Contact value.
    pub fn contact(&self, transport: Transport) -> String {
        self.contact_for(transport, false)
    }

    /// Our Contact value on a leg whose request was (`sips`) a `sips:` URI: then `sips:` (RFC 3261
    /// §26.2, RFC 5630 §3.1.3), else `sip:` with the transport named.
    pub fn contact_for(&self, transport: Transport, sips: bool) -> String {
        match transport {
            Transport::Udp => format!("<sip:{}>", self.hostport),
            Transport::Tcp => format!("<sip:{};transport=tcp>", self.hostport),
            Transport::Tls if sips => format!("<sips:{}>", self.hostport_for(transport)),
            Transport::Tls => format!("<sip:{};transport=tls>", self.hostport_for(transport)),
        }
    }
}

/// Everything a node's actors share.
pub struct NodeCtx {
    /// The transaction layer.
    pub driver: TxDriver,
    /// SIP identifier → actor routing.
    pub registry: Arc<Registry>,
    /// Send handle: the node's transports (a channel in unit tests).
    pub transports: Arc<dyn Wire>,
    config: RwLock<Arc<PoolConfig>>,
    /// Gateway health and load.
    pub gateways: Gateways,
    /// Trunks named by DNS: their resolved targets (RFC 3263).
    pub dns: Arc<crate::dns::Directory>,
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
    pub(crate) draining: AtomicBool,
    /// Woken (while draining) when something a shutdown waits for may have finished: a call
    /// released, a record taken, a forwarded INVITE's answer relayed. See [`NodeCtx::progressed`].
    progress: tokio::sync::Notify,
    /// Calls started here whose record is not written (being set up, or ending before they were
    /// answered): only this node can finish them, so a shutdown waits for them.
    pub(crate) unrecorded_calls: std::sync::atomic::AtomicUsize,
    /// New-call INVITEs this node received and forwarded to their shard's owner, whose final answer
    /// has not come back through it yet: the owner's answers leave from this node, so a shutdown
    /// waits for them (see [`NodeCtx::relayed_answer`]); those whose caller this node answered 100
    /// are kept to be fed again if the stream to their owner breaks ([`NodeCtx::refeed_lost_to`]).
    pub(crate) relayed_invites: RelayedInvites,
    /// Legs this node hung up lately, with their call or as orphans, and legs whose call stopped
    /// here because its shard moved (each kept 64*T1 — as long as a gateway resends its 2xx — to
    /// 4/3 of that): a 2xx of theirs that comes again is only ACKed. Held in generations that go
    /// whole ([`Recent`]), so a burst of calls leaves nothing behind once its legs are old enough.
    /// A leg is its Call-ID's 64-bit hash under `leg_hasher` (8 bytes, not a copy of the Call-ID
    /// in its own allocation: ~100,000 legs are held after a 5,000-CPS burst); the key is random
    /// per process, so no peer can make two Call-IDs collide on purpose, and a chance collision
    /// (~65,536 / 2^64 per lookup) would only ACK a 2xx instead of hanging its leg up.
    pub(crate) orphan_legs: std::sync::Mutex<Recent<u64>>,
    pub(crate) leg_hasher: std::hash::RandomState,
    /// Held while a shard's calls are rebuilt (`NodeCtx::adopt_shard`): one adoption at a time, so
    /// that a call is rebuilt once even when an adoption and a late-record pass read its record
    /// together.
    pub(crate) adopting: tokio::sync::Mutex<()>,
    pub(crate) inbound_calls: std::sync::Mutex<std::collections::BTreeMap<String, u32>>,
    pub(crate) inbound_cps:
        std::sync::Mutex<std::collections::BTreeMap<String, crate::health::TokenBucket>>,
    pub(crate) epoch: tokio::time::Instant,
    /// Moving SIP between pool nodes.
    pub relay: Arc<dyn Relay>,
    /// Call and gateway events.
    pub events: tokio::sync::broadcast::Sender<NodeEvent>,
    pub(crate) trusted_forwarders: Vec<std::net::IpAddr>,
    /// The SIP front door's source policy (see [`crate::sources`]).
    gate: Arc<SourceGate>,
    /// Keep only the last two digits of phone numbers in traces.
    pub redact_numbers: bool,
    /// Forwarded messages by lane (see [`CtxQueues`]).
    pub(crate) forward_tx: Vec<mpsc::Sender<Forwarded>>,
    /// The actor every call and gateway prober is linked to (set once the node has started it).
    pub(crate) supervisor: std::sync::OnceLock<ractor::ActorCell>,
    /// The media relay runtime; `None`: signalling only (SDP passes unchanged, as with
    /// `media = "bypass"` on every trunk).
    pub media: Option<crate::media::MediaRuntime>,
    /// Calls in set-up here, by Call-ID: they finish here even when their shard moves away
    /// (ARCHITECTURE.md, "The pool": hand-over of calls in set-up).
    pub set_ups: crate::handover::SetUps,
    /// Calls the previous owner of a shard this node took over still finishes (their messages go
    /// there).
    pub elsewhere: crate::handover::Elsewhere,
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
        self.gate.set(self.source_policy(&config));
        if let Ok(mut c) = self.config.write() {
            *c = Arc::new(config);
        }
    }

    /// The front door's source policy for `config`: its trunks, the trusted forwarders and the
    /// resolved addresses of the trunks named by DNS.
    pub(crate) fn source_policy(
        &self,
        config: &PoolConfig,
    ) -> medpool_sip::transport::gate::SourcePolicy {
        let mut policy = source_policy(config, &self.trusted_forwarders);
        self.dns.add_sources(config, &mut policy);
        policy
    }

    /// Sets the front door's source policy again from the current configuration (the resolved
    /// addresses of the trunks named by DNS changed).
    pub(crate) fn refresh_sources(&self) {
        let config = self.config();
        self.gate.set(self.source_policy(&config));
        self.apply_tls(&config);
    }

    /// Hands the TLS trunks' verification rules to the TLS door, with the resolved addresses of
    /// the TLS trunks named by DNS (see [`crate::sources::tls_view`]).
    pub(crate) fn apply_tls(&self, config: &PoolConfig) {
        if let Some(side) = self.transports.tls().and_then(|p| p.tls()) {
            let resolved = self.dns.resolved_sources(config);
            crate::sources::tls_view(config, side.material().files().ca.as_deref(), &resolved)
                .apply(side);
        }
    }

    /// The supervisor new actors are linked to.
    pub(crate) fn supervisor(&self) -> Option<ractor::ActorCell> {
        self.supervisor.get().cloned()
    }
    /// Whether a shutdown has nothing left to wait for: no call in progress (when `bye_calls`: it
    /// hangs them up and waits for them), no transaction waiting for a final answer, no call only
    /// this node can finish, no answer to a forwarded new call still to leave from here.
    /// Transactions lingering after their answer (Timers D, J, K, L, M) only absorb
    /// retransmissions and need not hold the process.
    pub fn nothing_to_wait_for(&self, bye_calls: bool) -> bool {
        (!bye_calls || self.active_calls() == 0)
            && self.driver.unfinished() == 0
            && self.unrecorded_calls() == 0
            && self.relayed_pending() == 0
    }
    /// Something [`NodeCtx::nothing_to_wait_for`] counts may have finished: wakes a waiting
    /// shutdown. Free before a shutdown starts (nobody waits then).
    pub(crate) fn progressed(&self) {
        if self.draining.load(Ordering::Relaxed) {
            self.progress.notify_waiters();
        }
    }
    /// Waits until [`NodeCtx::nothing_to_wait_for`] holds or `deadline` passes, woken by the
    /// node's own progress and the transaction layer's, never by a timer: the shutdown's wait.
    /// Returns whether it holds.
    pub async fn until_nothing_to_wait_for(
        &self,
        bye_calls: bool,
        deadline: tokio::time::Instant,
    ) -> bool {
        let driver = self.driver.progress();
        loop {
            let ours = self.progress.notified();
            let theirs = driver.notified();
            tokio::pin!(ours, theirs);
            // Registered before the check: a step between the check and the wait still wakes us.
            ours.as_mut().enable();
            theirs.as_mut().enable();
            if self.nothing_to_wait_for(bye_calls) {
                return true;
            }
            // A forwarded INVITE whose answer never comes is forgotten after RELAY_WAIT_MAX: that
            // instant is a change too.
            let expiry = self
                .relayed_expiry()
                .map_or(deadline, |at| at.min(deadline));
            tokio::select! {
                () = ours => {}
                () = theirs => {}
                () = tokio::time::sleep_until(expiry) => {
                    if expiry >= deadline {
                        return self.nothing_to_wait_for(bye_calls);
                    }
                }
            }
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
        if self.relayed_invites.answered(bytes) {
            self.progressed();
        }
    }
    /// Forwarded new-call INVITEs still waiting for their final answer to come back through this
    /// node (those older than Timer B, 32 s, are forgotten).
    pub fn relayed_pending(&self) -> usize {
        self.relayed_invites.pending()
    }
    /// Forwarded new-call INVITEs whose caller this node answered 100, kept until their owner's
    /// first answer (see [`NodeCtx::refeed_lost_to`]).
    pub fn relayed_kept(&self) -> usize {
        self.relayed_invites.kept()
    }
    /// When the oldest forwarded INVITE still waited for is forgotten.
    fn relayed_expiry(&self) -> Option<tokio::time::Instant> {
        self.relayed_invites.expiry()
    }
    /// The stream of forwarded SIP to `peer` broke: the new-call INVITEs this node answered 100,
    /// forwarded to it and heard nothing back for may be lost with it, and their callers will not
    /// retransmit them. Each is fed to this node again (as [`NodeCtx::take_back`]), goes to its
    /// shard's owner as the shard map says then, and is absorbed as a retransmission by an owner
    /// that had it. Returns how many (counted as `refed`).
    pub fn refeed_lost_to(&self, peer: u64) -> usize {
        let lost = self.relayed_invites.lost_to(peer);
        let mut n = 0;
        for k in lost {
            if let Some(inb) = k.inbound()
                && self.take_back(inb, k.bounces.saturating_add(1))
            {
                n += 1;
            }
        }
        self.stats.refed.fetch_add(n as u64, Ordering::Relaxed);
        n
    }
    /// Notes a leg B that its call hung up as it ended: a 2xx of it resent afterwards (the gateway
    /// missed our ACK) is only ACKed, not hung up a second time.
    pub(crate) fn leg_hung_up(&self, call_id: &[u8]) {
        let _ = self.first_orphan_answer(call_id);
    }
    /// Notes a leg B whose call stopped here because its shard moved: the new owner carries the leg
    /// on, so a 2xx of it that still reaches this node is only ACKed, never hung up (see
    /// `orphan_answer` and `dialog::teardown::hand_over`).
    pub(crate) fn leg_moved(&self, call_id: &[u8]) {
        let _ = self.first_orphan_answer(call_id);
    }
    /// Whether this is the first orphan 2xx of this leg lately (see `orphan_answer`).
    pub(crate) fn first_orphan_answer(&self, call_id: &[u8]) -> bool {
        use std::hash::BuildHasher as _;
        let leg = self.leg_hasher.hash_one(call_id);
        let Ok(mut seen) = self.orphan_legs.lock() else {
            return false;
        };
        // Beyond HUNG_UP_TRACK_MAX within 64*T1, the oldest go early. A leg forgotten early means a
        // late 2xx of it gets a BYE: a second, harmless one for a leg hung up already; for a moved
        // leg, a wrong one, but only after 65,536 legs were noted within 64*T1, far beyond the 2xx
        // retransmission window of a move.
        let (first, expired) = seen.insert(leg, tokio::time::Instant::now());
        drop(seen);
        drop(expired);
        first
    }
    /// Lets go of the hung-up legs remembered long enough (called every [`FORGET_TICK`] by
    /// [`forget_old_legs`]; adding a leg does it too).
    pub fn forget_old_legs(&self) {
        let expired = match self.orphan_legs.lock() {
            Ok(mut seen) => seen.expire(tokio::time::Instant::now()),
            Err(_) => return,
        };
        // Freed with the lock released.
        drop(expired);
    }
    /// How many hung-up legs are remembered, and the room their sets hold (in legs).
    pub fn remembered_legs(&self) -> (usize, usize) {
        self.orphan_legs
            .lock()
            .map_or((0, 0), |seen| (seen.len(), seen.capacity()))
    }
    /// The shard a new-call INVITE belongs to on this node: its Call-ID's shard when it was
    /// `forwarded` (another node sent it here as that shard's owner) or when this node acts for
    /// that shard — as it always was. Otherwise, with `[node] local_calls`, one this node acts for
    /// (picked by the Call-ID's shard, [`ShardOwnership::local_shard`]): the call is set up here
    /// and its messages cross no node — unless this node stops, is full (its `max_calls`, or its
    /// share of a gateway's limits: the Call-ID's owner may have room), or forwarded a copy of
    /// this INVITE before (its retransmissions follow it). The dispatcher and the call's start ask the same question and
    /// get the same answer while the acting set stays.
    pub fn new_call_shard(&self, msg: &medpool_sip::SipMessage, forwarded: bool) -> u16 {
        let hashed = medpool_sip::ids::shard_of(msg, self.shards.shard_count());
        if forwarded || self.shards.may_act(hashed) {
            return hashed;
        }
        let config = self.config();
        if !config.node.local_calls {
            return hashed;
        }
        if self.draining.load(Ordering::Relaxed)
            || self.active_calls() >= config.node.max_calls as usize
            || self.relayed_invites.holds(msg)
            || self.gateways.a_pool_share_is_full()
        {
            return hashed;
        }
        self.shards.local_shard(hashed).unwrap_or(hashed)
    }
    /// Notes a message forwarded to `owner` (see `relayed_invites`): for a new-call INVITE, true
    /// when it is the first copy of it seen here (not a retransmission of one still waiting for
    /// its final answer); one whose caller this node answered 100 (`trying_sent`) is kept.
    pub(crate) fn note_relayed_invite(
        &self,
        inb: &Inbound,
        owner: u64,
        bounces: u32,
        trying_sent: bool,
    ) -> bool {
        self.relayed_invites.note(&inb.msg, || {
            trying_sent.then(|| Kept::of(inb, owner, bounces))
        })
    }
    /// Takes a message another node (`via`) forwarded. False when the queue is full: the peer
    /// retransmits — except the caller of a new-call INVITE answered 100 Trying by `via`, which
    /// does not: that INVITE is sent back to `via`, which feeds it to itself again later.
    pub fn inject(&self, inbound: Inbound, via: u64, meta: ForwardMeta) -> bool {
        if self.draining.load(Ordering::Relaxed)
            && medpool_sip::transport::is_new_call(&inbound.msg)
        {
            // This node stops: a new call forwarded here would be refused (503), though the
            // shard's next owner could take it in a moment. A marked INVITE goes back to the node
            // that received it, which feeds it again after a pause (to the next owner once this
            // node is gone); an unmarked one is not taken (its caller, answered no 100 from here,
            // retransmits, and `via` forwards that as the shard map says then).
            return meta.trying_sent && self.bounce(via, &inbound, meta.bounces);
        }
        let lane = medpool_sip::transport::lanes::lane_of(&inbound.msg, self.forward_tx.len());
        let Err(full) = self.forward_tx[lane].try_send(Forwarded {
            inbound,
            via: Some(via),
            meta,
        }) else {
            return true;
        };
        let f = full.into_inner();
        f.meta.trying_sent
            && medpool_sip::transport::is_new_call(&f.inbound.msg)
            && self.bounce(via, &f.inbound, f.meta.bounces)
    }
    /// Sends a new-call INVITE that `via` received and answered 100 Trying back to it: this node
    /// cannot take it now (counted as `bounced`).
    pub(crate) fn bounce(&self, via: u64, inb: &Inbound, bounces: u32) -> bool {
        let sent = self.relay.bounce(
            via,
            inb.msg.bytes(),
            inb.source,
            inb.transport.as_lower(),
            bounces.saturating_add(1),
            inb.msg.is_checked(),
        );
        if sent {
            self.stats.bounced.fetch_add(1, Ordering::Relaxed);
        }
        sent
    }
    /// Takes back a new-call INVITE this node received, answered 100 Trying and forwarded, that its
    /// owner sent back (the `bounces`-th time; it could not take it then): after a pause
    /// ([`bounce_pause`]) it is fed to this node's dispatcher again, as the caller's
    /// retransmission would have been (the caller, answered 100, sends none). False when the node
    /// is not running.
    pub fn take_back(&self, inbound: Inbound, bounces: u32) -> bool {
        self.relayed_invites.release(&inbound.msg);
        let lane = medpool_sip::transport::lanes::lane_of(&inbound.msg, self.forward_tx.len());
        let tx = self.forward_tx[lane].clone();
        let pause = bounce_pause(self.timers, bounces);
        let checked = inbound.msg.is_checked();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            // A full queue here drops it: the node is overloaded (as a caller's retransmission
            // dropped at a full queue).
            let _ = tx.try_send(Forwarded {
                inbound,
                via: None,
                meta: ForwardMeta {
                    traceparent: None,
                    trying_sent: true,
                    bounces,
                    checked,
                },
            });
        });
        true
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

/// How a [`NodeCtx`] is set up (besides its pool parts and configuration).
#[derive(Debug, Clone)]
pub(crate) struct CtxSettings {
    /// Our identity on the wire.
    pub me: Me,
    /// SIP timers.
    pub timers: TimerConfig,
    /// Most live transactions.
    pub max_transactions: usize,
    /// Capacity of the dispatcher's queues.
    pub queue: usize,
    /// Dispatcher tasks (lanes), each taking the calls [`medpool_sip::transport::lanes::lane_of`]
    /// names: at least 1.
    pub lanes: usize,
    /// Load balancers trusted to name a message's real source.
    pub trusted_forwarders: Vec<IpAddr>,
    /// Keep only the last two digits of phone numbers in traces.
    pub redact_numbers: bool,
    /// The SIP front door's source policy, kept in line with the configuration.
    pub gate: Arc<SourceGate>,
    /// The media relay runtime (none: signalling only).
    pub media: Option<crate::media::MediaRuntime>,
    /// The DNS directory of the trunks named by DNS.
    pub dns: Arc<crate::dns::Directory>,
}

/// The queues a [`NodeCtx`] feeds the node's dispatchers through, one pair per lane: what the
/// transaction layer raises for a message goes to the lane the message came in on (the same
/// Call-ID hash), so each dispatcher handles its calls' events in order.
#[derive(Debug)]
pub(crate) struct CtxQueues {
    /// Requests and answers the transaction layer found no owner for (lane 0).
    pub core: mpsc::Receiver<CoreEvent>,
    /// Messages other pool nodes forwarded here (lane 0).
    pub forwarded: mpsc::Receiver<Forwarded>,
    /// The same for lanes 1 and up.
    pub other_lanes: Vec<(mpsc::Receiver<CoreEvent>, mpsc::Receiver<Forwarded>)>,
}

impl NodeCtx {
    /// A node context over `wire`: its transaction layer, registry and gateway table start empty.
    pub(crate) fn new(
        settings: CtxSettings,
        wire: Arc<dyn Wire>,
        config: PoolConfig,
        shards: Arc<dyn ShardOwnership>,
        store: Arc<dyn DialogStore>,
        relay: Arc<dyn Relay>,
    ) -> (Arc<NodeCtx>, CtxQueues) {
        settings
            .gate
            .set(source_policy(&config, &settings.trusted_forwarders));
        let registry = Arc::new(Registry::default());
        let lanes = settings.lanes.max(1);
        let per_lane = settings.queue.div_ceil(lanes).max(1);
        let (core_tx, mut core_rx): (Vec<_>, Vec<_>) =
            (0..lanes).map(|_| mpsc::channel(per_lane)).unzip();
        let (forward_tx, mut forward_rx): (Vec<_>, Vec<_>) =
            (0..lanes).map(|_| mpsc::channel(per_lane)).unzip();
        let core = core_rx.remove(0);
        let forwarded = forward_rx.remove(0);
        let other_lanes = core_rx.into_iter().zip(forward_rx).collect();
        let io = Arc::new(SipIo::new(
            wire.clone(),
            registry.clone(),
            core_tx,
            relay.clone(),
        ));
        let driver = TxDriver::new(
            DriverConfig {
                timers: settings.timers,
                max_transactions: settings.max_transactions,
                ..DriverConfig::default()
            },
            io,
        );
        let ctx = Arc::new(NodeCtx {
            driver,
            registry,
            transports: wire,
            config: RwLock::new(Arc::new(config)),
            gateways: Gateways::default(),
            dns: settings.dns,
            me: settings.me,
            shards,
            store,
            timers: settings.timers,
            stats: Stats::default(),
            draining: AtomicBool::new(false),
            progress: tokio::sync::Notify::new(),
            unrecorded_calls: std::sync::atomic::AtomicUsize::new(0),
            relayed_invites: RelayedInvites::default(),
            orphan_legs: std::sync::Mutex::new(Recent::new(
                settings.timers.t1_x64(),
                HUNG_UP_TRACK_MAX,
                tokio::time::Instant::now(),
            )),
            leg_hasher: std::hash::RandomState::new(),
            adopting: tokio::sync::Mutex::new(()),
            inbound_calls: std::sync::Mutex::new(Default::default()),
            inbound_cps: std::sync::Mutex::new(Default::default()),
            relay,
            events: tokio::sync::broadcast::channel(4096).0,
            forward_tx,
            trusted_forwarders: settings.trusted_forwarders,
            gate: settings.gate,
            redact_numbers: settings.redact_numbers,
            epoch: tokio::time::Instant::now(),
            supervisor: std::sync::OnceLock::new(),
            media: settings.media,
            set_ups: Default::default(),
            elsewhere: Default::default(),
        });
        (
            ctx,
            CtxQueues {
                core,
                forwarded,
                other_lanes,
            },
        )
    }
}

/// A message another node received for a shard this node owns, or a new-call INVITE this node
/// received and forwarded that its owner sent back (see [`NodeCtx::take_back`]).
#[derive(Debug)]
pub struct Forwarded {
    /// The message and its original source.
    pub inbound: Inbound,
    /// The node that received it (answers leave from there); `None`: sent back to this node, which
    /// received it.
    pub via: Option<u64>,
    /// What came with it (trace context, whether its caller was answered 100 Trying).
    pub meta: ForwardMeta,
}

/// How many times a new-call INVITE answered 100 Trying by the node that received it is sent back
/// by owners that cannot take it, and fed to that node again, before the node answers it 503: the
/// pauses ([`bounce_pause`]) add up to ~16 s, half of Timer B, after which the caller's INVITE
/// would have timed out anyway.
pub(crate) const MAX_BOUNCES: u32 = 8;

/// The pause before an INVITE sent back the `bounces`-th time is fed again: T1/4, doubling up to
/// T2 (a caller's retransmissions come at T1, doubling: the owner's reasons — a hand-over fence, a
/// shard map a few ms behind — usually pass sooner).
pub(crate) fn bounce_pause(timers: TimerConfig, bounces: u32) -> Duration {
    let first = timers.t1 / 4;
    first
        .saturating_mul(1 << bounces.saturating_sub(1).min(16))
        .min(timers.t2)
}

/// The node's timer for what it remembers about calls that are gone: every [`FORGET_TICK`], the
/// hung-up legs remembered long enough are let go of ([`NodeCtx::forget_old_legs`]), so that
/// after a burst of calls they go although no new call comes to push them out. Ends when `stop`
/// changes.
pub async fn forget_old_legs(ctx: Arc<NodeCtx>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut ticks = tokio::time::interval(FORGET_TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = ticks.tick() => ctx.forget_old_legs(),
        }
    }
}
