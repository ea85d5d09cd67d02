//! The pool runtime of one node: the openraft instance over the redb store, the internal gRPC
//! server, and the tasks that keep the node in its pool. This module owns the lifecycle (start,
//! attach, shutdown) and the [`Pool`] handle; each concern lives in its own file below.
//!
//! ```text
//!  every L/4: node ──Lease──► leader        leader: lease over + margin ⇒ SetNodeState(Down)
//!  lease valid until sent_at + L              and plan_moves(state, alive) ⇒ MoveShards (one append)
//!  may_act(s) = owner(s) == me              watcher: applied shard map changed ⇒
//!             ∧ acting[s] ∧ lease             clear acting bits, released; fence; set bits, adopted
//! ```
//!
//! ```text
//!   mod.rs         lifecycle: start (store, Raft, internal server, tasks), attach, shutdown
//!   hooks.rs       what this node answers on the internal service (join, forward, lease, write)
//!  ───────────────────────────────────────────────────────────────────────────────────────────
//!   membership.rs  bootstrap and join          detector.rs  the leader's failure detector
//!   lease.rs       lease heartbeats, grants    fence.rs     shard watcher, hand-over fence
//!   commit.rs      dialog group commit         forward.rs   SIP forwarding between nodes
//!   gather.rs      the leader's one append per window for every node's dialog batches
//!   write.rs       writes through the leader   info.rs      status (PoolInfo), config audit
//!  ───────────────────────────────────────────────────────────────────────────────────────────
//!   judge.rs       the failure detector's judgement: pure, no clock, no I/O
//!   prior.rs       per-term clocks (leader RPCs heard, leases granted) for a new leader's wait
//! ```
//!
//! The files of the middle row each add methods to [`Pool`]; they call one another only through
//! those methods (a write from membership, a lease check from the fence), never through shared
//! mutable state other than the `Pool`'s own fields.
//!
//! The acting set is the shard watcher's: it clears a released shard's bit before telling the node
//! side, and sets an adopted shard's bit only after the hand-over fence (when the shard comes from a
//! live node: until that node reports it has released it, or its lease must be over). With
//! [`PoolOptions::audit`] the node reports its leases and acting-set changes ([`crate::audit`]).
//! The node side (SIP, calls) is reached only through [`PoolSink`]; this crate knows nothing of SIP.

mod adopt;
mod commit;
mod detector;
mod fence;
mod forward;
mod gather;
mod hooks;
mod info;
mod judge;
mod lease;
mod membership;
mod prior;
mod write;

pub use crate::error::{NotAppended, WriteError};
pub use commit::{DIALOG_RETRY_FOR, DIALOG_WINDOW, DialogStats};
pub use fence::{FenceStats, LATE_WINDOW};
pub use info::{NodeInfo, PoolInfo};

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use medpool_proto::cluster::SipForward;
use medpool_proto::cluster::cluster_client::ClusterClient;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::audit::{AuditLog, Record, unix_us};
use crate::grpc::ClusterService;
use crate::network::{Dialer, GrpcNetwork, MAX_PAYLOAD_ENTRIES};
use crate::store::Raft;
use crate::store::{self, StateReader};
use crate::tls::{Expect, InternalTls};
use crate::typ::{NodeAddrs, NodeId};

use commit::DialogOp;
use hooks::Hooks;

/// How a node joins its pool.
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// This node's id (stable across restarts).
    pub node_id: NodeId,
    /// This node's addresses.
    pub addrs: NodeAddrs,
    /// The internal gRPC listen address.
    pub raft_listen: SocketAddr,
    /// Where the Raft log and state live.
    pub data_dir: PathBuf,
    /// Members to join through (`host:port` of their internal service); empty = bootstrap a new pool.
    pub join: Vec<String>,
    /// Shards of a new pool.
    pub shard_count: u16,
    /// Voters (3 by default, at most 5); later nodes are learners.
    pub max_voters: usize,
    /// Lease length L.
    pub lease: Duration,
    /// Safety margin m added to every bound on when a lease has ended, before a silent node is
    /// declared down and before a hand-over fence gives up waiting (ARCHITECTURE.md, "Leases").
    pub margin: Duration,
    /// Build a snapshot after this many log entries (then older entries are purged).
    pub snapshot_logs: u64,
    /// Append the node's audit report (leases, acting set, leadership, configuration versions) to
    /// this file; see [`crate::audit`] for the format.
    pub audit: Option<PathBuf>,
    /// The internal port's mutual-TLS material (certificate, key, pool CA); `None`: plain TCP.
    pub tls: Option<Arc<InternalTls>>,
    /// Plain TCP on a non-loopback internal address was asked for explicitly (`--insecure-internal`):
    /// reported in status. The caller refuses a non-loopback address without TLS unless it is set.
    pub insecure_internal: bool,
    /// The leader's check of a configuration before it proposes [`Command::SetConfig`]
    /// (`None`: not checked here).
    ///
    /// [`Command::SetConfig`]: crate::command::Command::SetConfig
    pub config_validator: Option<Arc<dyn ConfigValidator>>,
}

/// The leader's validation of a pool configuration (the medpool binary's, with the b2bua's
/// configuration rules: this crate never reads a configuration). An `Err` carries the reason for
/// people; the write is refused with [`crate::Rejection::InvalidConfig`].
pub trait ConfigValidator: Send + Sync + std::fmt::Debug + 'static {
    /// Checks a configuration body.
    fn validate(&self, body: &[u8]) -> Result<(), String>;
}

impl PoolOptions {
    /// Defaults for a node: 1024 shards, 3 voters, L = 1 s, margin 200 ms, snapshot every 5000
    /// entries.
    pub fn new(
        node_id: NodeId,
        addrs: NodeAddrs,
        raft_listen: SocketAddr,
        data_dir: PathBuf,
        join: Vec<String>,
    ) -> PoolOptions {
        PoolOptions {
            node_id,
            addrs,
            raft_listen,
            data_dir,
            join,
            shard_count: crate::state::DEFAULT_SHARD_COUNT,
            max_voters: 3,
            lease: DEFAULT_LEASE,
            margin: DEFAULT_MARGIN,
            snapshot_logs: 5000,
            audit: None,
            tls: None,
            insecure_internal: false,
            config_validator: None,
        }
    }
}

/// The default lease L (ARCHITECTURE.md, "Leases": why 1 s).
pub const DEFAULT_LEASE: Duration = Duration::from_millis(1000);
/// The default margin m added to lease-end bounds.
pub const DEFAULT_MARGIN: Duration = Duration::from_millis(200);

/// Most concurrent HTTP/2 streams a peer may open on one connection to the internal port.
const MAX_STREAMS: u32 = 256;
/// Largest HTTP/2 header list on the internal port.
const MAX_HEADER_LIST: u32 = 16 * 1024;

/// Now, as the tokio instant the node uses and as Unix microseconds for the audit report.
fn now_pair() -> (Instant, u64) {
    let at = Instant::now();
    (at, unix_us(SystemTime::now()))
}

/// The node side of the pool: where forwarded SIP goes and who hears about shard moves.
pub trait PoolSink: Send + Sync + 'static {
    /// A SIP message forwarded by another node (for a shard we own), or an answer to send from here.
    fn deliver(&self, msg: SipForward) -> bool;
    /// This node now owns these shards.
    fn adopted(&self, shards: Vec<u16>);
    /// This node no longer owns these shards (stop acting for them at once).
    fn released(&self, shards: Vec<u16>);
    /// Dialog records arrived for shards this node took over recently (the old owner's last group
    /// commit landed after the move): rebuild the calls that are not here yet.
    fn late_records(&self, shards: Vec<u16>);
    /// The calls this node still sets up for shards it no longer acts for (by shard, their
    /// Call-IDs): reported in [`PoolInfo::lingering`] to the new owners' hand-over fences.
    fn lingering(&self) -> Vec<(u16, Vec<String>)> {
        Vec::new()
    }
    /// The previous owner `holder` of shards this node is taking over reported these calls
    /// lingering there (by shard, their Call-IDs): their messages go to it. Called before
    /// those shards enter the acting set.
    fn lingering_at(&self, holder: NodeId, calls: Vec<(u16, Vec<String>)>) {
        let _ = (holder, calls);
    }
    /// The stream of forwarded SIP to `peer` broke (the peer restarted or died, the connection
    /// failed): the messages in it may be lost. Called on each break, from the peer's forwarder.
    fn forward_lost(&self, peer: NodeId) {
        let _ = peer;
    }
}

/// Why the pool could not start.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// The store could not be opened.
    #[error("{0}")]
    Store(#[from] store::StoreError),
    /// openraft refused to start.
    #[error("raft: {0}")]
    Raft(String),
    /// The internal port could not be bound.
    #[error("cannot listen on {addr} (internal): {source}")]
    Bind {
        /// Address.
        addr: SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
}

/// One node's pool runtime.
pub struct Pool {
    opts: PoolOptions,
    raft: Raft,
    reader: StateReader,
    /// The shard moves in our log not yet applied (the lease rule: `lease.rs`).
    pending_moves: crate::store::log::SharedPendingMoves,
    epoch: Instant,
    /// Our lease: valid until this instant.
    lease_until: Mutex<Option<Instant>>,
    /// Leader only: when this node last granted each node a lease, and in which term.
    heard: Mutex<BTreeMap<NodeId, (u64, Instant)>>,
    /// Leader only: when each node's last heartbeat reached this node as leader (granted or not),
    /// and in which term.
    seen: Mutex<BTreeMap<NodeId, (u64, Instant)>>,
    /// Leader only: the voters' reports on the terms before this leader's (by voter: the term
    /// reported for, the report in this node's clock).
    prior_reports: Mutex<BTreeMap<NodeId, (u64, judge::PriorReport)>>,
    /// When this node last received an RPC from a leader, per term.
    leader_rpcs: Mutex<prior::TermClock>,
    /// When this node last granted a lease as leader, per term.
    grants: Mutex<prior::TermClock>,
    /// Leader only: since when this node has been leader (term, instant).
    leading_since: Mutex<Option<(u64, Instant)>>,
    clients: Mutex<HashMap<NodeId, ClusterClient<Channel>>>,
    /// How connections to peers are made (mutual TLS with this node's material, or plain TCP).
    dialer: Dialer,
    /// One ordered queue per peer node for forwarded SIP: a 180 and the 200 behind it must leave in
    /// that order (separate concurrent RPCs could overtake each other).
    forwarders: Mutex<HashMap<NodeId, mpsc::Sender<SipForward>>>,
    /// Peers whose last answer sent back through this node said they understand `trying_sent`
    /// (see [`Pool::understands_trying`]).
    trying_peers: std::sync::RwLock<std::collections::BTreeSet<NodeId>>,
    dialogs: mpsc::Sender<DialogOp>,
    /// Dialog batches this node (as the leader) proposes, waiting for the next gathering.
    gather: mpsc::Sender<gather::Gathered>,
    /// Dialog operations queued or in a batch not yet written (see [`Pool::flush_dialogs`]).
    dialogs_pending: watch::Sender<usize>,
    sink: Mutex<Option<Arc<dyn PoolSink>>>,
    stop: watch::Sender<bool>,
    /// The acting set, one bit per possible shard number (64 KiB; indexable by any `u16`, so it
    /// needs no resizing when the pool's shard count is learnt). Only the shard watcher changes it.
    acting: Box<[AtomicBool]>,
    /// When this node last took each shard over (ms since `epoch`, plus one; 0 = never).
    taken_at_ms: Box<[AtomicU64]>,
    /// The map epoch whose releases the acting set reflects (see [`PoolInfo::acting_epoch`]).
    acting_epoch: AtomicU64,
    audit: Option<AuditLog>,
    /// Dialog group-commit counters.
    pub dialog_stats: DialogStats,
    /// Hand-over fence counters.
    pub fence_stats: FenceStats,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("node_id", &self.opts.node_id)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// Opens the store, starts Raft and the internal server, then bootstraps or joins in the
    /// background. Call [`Pool::attach`] to connect the node side.
    pub async fn start(opts: PoolOptions) -> Result<Arc<Pool>, PoolError> {
        // Before the store opens: whatever this node heard or granted before a restart happened
        // before this instant (`prior.rs`).
        let started = Instant::now();
        let (log, sm) = store::open(&opts.data_dir)?;
        let reader = sm.reader();
        let pending_moves = log.pending_moves();
        let config = openraft::Config {
            cluster_name: "medpool".into(),
            // A follower calls an election after election_timeout_max (its leader lease) plus a
            // random 300-500 ms without a heartbeat: 0.8-1.0 s (ARCHITECTURE.md, "Raft").
            heartbeat_interval: 100,
            election_timeout_min: 300,
            election_timeout_max: 500,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(opts.snapshot_logs.max(1)),
            max_in_snapshot_log_to_keep: opts.snapshot_logs.min(1000),
            // Bounds an AppendEntries message (each entry is within its command's cap).
            max_payload_entries: MAX_PAYLOAD_ENTRIES,
            ..Default::default()
        }
        .validate()
        .map_err(|e| PoolError::Raft(e.to_string()))?;
        let dialer = Dialer::new(opts.tls.clone());
        let raft = Raft::new(
            opts.node_id,
            Arc::new(config),
            GrpcNetwork::new(dialer.clone()),
            log,
            sm,
        )
        .await
        .map_err(|e| PoolError::Raft(e.to_string()))?;
        let (dialogs, dialog_rx) = mpsc::channel(65536);
        let (gather, gather_rx) = mpsc::channel(gather::GATHER_QUEUE);
        let (stop, stop_rx) = watch::channel(false);
        let pool = Arc::new(Pool {
            opts: opts.clone(),
            raft: raft.clone(),
            reader,
            pending_moves,
            epoch: started,
            lease_until: Mutex::new(None),
            heard: Mutex::new(BTreeMap::new()),
            seen: Mutex::new(BTreeMap::new()),
            prior_reports: Mutex::new(BTreeMap::new()),
            leader_rpcs: Mutex::new(prior::TermClock::new(started)),
            grants: Mutex::new(prior::TermClock::new(started)),
            leading_since: Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
            dialer,
            forwarders: Mutex::new(HashMap::new()),
            trying_peers: std::sync::RwLock::new(std::collections::BTreeSet::new()),
            dialogs,
            gather,
            dialogs_pending: watch::Sender::new(0),
            sink: Mutex::new(None),
            stop,
            acting: (0..=u16::MAX).map(|_| AtomicBool::new(false)).collect(),
            taken_at_ms: (0..=u16::MAX).map(|_| AtomicU64::new(0)).collect(),
            acting_epoch: AtomicU64::new(0),
            audit: opts.audit.as_deref().map(AuditLog::open),
            dialog_stats: DialogStats::default(),
            fence_stats: FenceStats::default(),
        });
        if cfg!(feature = "planted-fault-skip-lease") {
            tracing::warn!(
                node = opts.node_id,
                "PLANTED FAULT planted-fault-skip-lease: leases last 1 hour instead of {} ms; this \
                 build is for fault-injection tests only and breaks the pool's safety",
                opts.lease.as_millis()
            );
        }
        if let Some(a) = &pool.audit {
            a.write(&Record::Start {
                node: opts.node_id,
                at_us: unix_us(SystemTime::now()),
                pid: std::process::id(),
                lease_ms: u64::try_from(opts.lease.as_millis()).unwrap_or(u64::MAX),
            });
        }
        let listener = tokio::net::TcpListener::bind(opts.raft_listen)
            .await
            .map_err(|source| PoolError::Bind {
                addr: opts.raft_listen,
                source,
            })?;
        let service = ClusterService::server(
            raft,
            Arc::new(Hooks(Arc::downgrade(&pool))),
            opts.tls.is_some(),
        );
        // HTTP/2 limits of the internal server: a member needs a few streams at a time (Raft
        // replication, forwarding, writes); a dead peer is noticed by keepalive.
        let router = tonic::transport::Server::builder()
            .max_concurrent_streams(MAX_STREAMS)
            .http2_max_header_list_size(MAX_HEADER_LIST)
            .http2_keepalive_interval(Some(Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(Duration::from_secs(20)))
            .layer(crate::body_cap::BodyCapLayer)
            .add_service(service);
        let mut srv_stop = stop_rx.clone();
        let stopped = async move {
            let _ = srv_stop.changed().await;
        };
        match &opts.tls {
            Some(material) => {
                let incoming = crate::listen::tls(listener, material.clone());
                tokio::spawn(async move {
                    if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopped).await {
                        tracing::error!(error = %e, "internal gRPC server stopped");
                    }
                });
            }
            None => {
                let incoming = crate::listen::plain(listener);
                tokio::spawn(async move {
                    if let Err(e) = router.serve_with_incoming_shutdown(incoming, stopped).await {
                        tracing::error!(error = %e, "internal gRPC server stopped");
                    }
                });
            }
        }
        tokio::spawn(pool.clone().membership_task(stop_rx.clone()));
        tokio::spawn(pool.clone().lease_task(stop_rx.clone()));
        tokio::spawn(pool.clone().leader_task(stop_rx.clone()));
        if pool.audit.is_some() {
            tokio::spawn(pool.clone().audit_config_task(stop_rx.clone()));
        }
        tokio::spawn(pool.clone().gatherer(gather_rx, stop_rx.clone()));
        tokio::spawn(pool.clone().dialog_batcher(dialog_rx, stop_rx));
        Ok(pool)
    }

    /// Connects the node side and starts watching the shard map for it.
    pub fn attach(self: &Arc<Self>, sink: Arc<dyn PoolSink>) {
        if let Ok(mut s) = self.sink.lock() {
            *s = Some(sink);
        }
        tokio::spawn(self.clone().shard_watcher(self.stop.subscribe()));
    }

    fn sink(&self) -> Option<Arc<dyn PoolSink>> {
        self.sink.lock().ok().and_then(|s| s.clone())
    }

    /// The pool-wide secret (32 bytes made when the pool was bootstrapped, kept in the Raft
    /// state); `None` in pools bootstrapped before it existed.
    pub fn pool_secret(&self) -> Option<[u8; 32]> {
        self.reader.read(|s| s.pool_secret())
    }

    /// Whether the internal port speaks mutual TLS.
    pub fn internal_tls(&self) -> bool {
        self.opts.tls.is_some()
    }

    /// Whether the internal port was explicitly made insecure (plain TCP beyond loopback).
    pub fn insecure_internal(&self) -> bool {
        self.opts.tls.is_none() && self.opts.insecure_internal
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.opts.node_id
    }
    /// The Raft handle (metrics, admin).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }
    /// Read access to the applied state.
    pub fn state(&self) -> &StateReader {
        &self.reader
    }
    /// Shards of the pool (default until bootstrapped).
    pub fn shard_count(&self) -> u16 {
        match self.reader.read(|s| s.shard_count()) {
            0 => self.opts.shard_count,
            n => n,
        }
    }
    /// The owner of a shard in the applied map.
    pub fn owner(&self, shard: u16) -> Option<NodeId> {
        self.reader.read(|s| s.owner_of(shard))
    }

    fn client_for(&self, node: NodeId) -> Option<ClusterClient<Channel>> {
        if let Some(c) = self.clients.lock().ok().and_then(|c| c.get(&node).cloned()) {
            return Some(c);
        }
        let addr = self
            .reader
            .read(|s| s.node(node).map(|n| n.addresses.raft_addr.clone()))?;
        let c = self.dialer.client(&addr, Expect::Node(node)).ok()?;
        if let Ok(mut m) = self.clients.lock() {
            m.insert(node, c.clone());
        }
        Some(c)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Waits until Raft stops on a fatal error — its log or state machine could not be written (a
    /// full or failing disk) — and returns the error. A node whose Raft is gone can neither follow
    /// the shard map nor replicate calls: it must stop, so that the others take its shards over.
    ///
    /// Wakes on changes of Raft's server metrics (vote, role, leader, membership: rare), not on
    /// every metrics change (each append, acknowledgement and apply: hundreds a second under
    /// load, each a wake-up of the thread that awaits this), and once a second. Raft closes
    /// those metrics when its core stops, after it has published the error.
    pub async fn fatal(&self) -> String {
        let all = self.raft.metrics();
        let mut server = self.raft.server_metrics();
        let mut closed = false;
        loop {
            if let Err(e) = &all.borrow_watched().running_state {
                return e.to_string();
            }
            if closed {
                return "Raft stopped".to_owned();
            }
            tokio::select! {
                r = server.changed() => closed = r.is_err(),
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Stops the pool's tasks and Raft.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let _ = self.raft.shutdown().await;
    }
}
