//! The pool runtime of one node: the openraft instance over the redb store, the internal gRPC
//! server, bootstrap and join, leases and fencing, the leader's failure detector and rebalancer, the
//! shard watcher, dialog-record group commit, and SIP forwarding between nodes.
//!
//! ```text
//!  every L/4: node ──Lease──► leader        leader: silent > L + margin ⇒ SetNodeState(Down)
//!  lease valid until sent_at + L            leader: plan_moves(state, alive) ⇒ MoveShards
//!  may_act(s) = owner(s) == me              watcher: applied shard map changed ⇒
//!             ∧ acting[s] ∧ lease             clear acting bits, released; fence; set bits, adopted
//! ```
//!
//! The acting set is the shard watcher's: it clears a released shard's bit before telling the node
//! side, and sets an adopted shard's bit only after the hand-over fence (when the shard comes from a
//! live node: until that node reports it has released it, or its lease must be over). With
//! [`PoolOptions::audit`] the node reports its leases and acting-set changes ([`crate::audit`]).
//! The node side (SIP, calls) is reached only through [`PoolSink`]; this crate knows nothing of SIP.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use medpool_proto::cluster::cluster_client::ClusterClient;
use medpool_proto::cluster::{
    ForwardAck, InfoRequest, JoinReply, JoinRequest, LeaseReply, LeaseRequest, RaftPayload,
    SipForward,
};
use openraft::ChangeMembers;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::audit::{AuditLog, Change, Record, unix_us};
use crate::command::{Command, CommandResult};
pub use crate::error::{NotAppended, WriteError};
use crate::grpc::{ClusterService, PoolHooks, read_write_reply};
use crate::network::{GrpcNetwork, client, encode};
use crate::rebalance::plan_moves;
use crate::state::{NodeState, ShardEntry};
use crate::store::{self, StateReader};
use crate::typ::{NodeAddrs, NodeId, Raft};

/// How long a shard's new owner keeps watching for records its old owner wrote late (a dialog
/// batch retried across a partition: the old owner retries for [`DIALOG_RETRY_FOR`]).
pub const LATE_WINDOW: Duration = Duration::from_secs(20);

/// How long a dialog batch that cannot be written (no leader reachable) is retried.
pub const DIALOG_RETRY_FOR: Duration = Duration::from_secs(15);

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
    /// Safety margin added to L before a silent node is declared down.
    pub margin: Duration,
    /// Build a snapshot after this many log entries (then older entries are purged).
    pub snapshot_logs: u64,
    /// Append the node's audit report (leases, acting set, leadership, configuration versions) to
    /// this file; see [`crate::audit`] for the format.
    pub audit: Option<PathBuf>,
}

impl PoolOptions {
    /// Defaults for a node: 1024 shards, 3 voters, L = 2 s, margin 1 s, snapshot every 5000 entries.
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
            lease: Duration::from_secs(2),
            margin: Duration::from_secs(1),
            snapshot_logs: 5000,
            audit: None,
        }
    }
}

/// How long a granted lease lasts: L, or an hour with the test-only planted fault (a node that was
/// frozen still believes it may act when it wakes: the lease gate is effectively skipped).
fn lease_len(lease: Duration) -> Duration {
    if cfg!(feature = "planted-fault-skip-lease") {
        Duration::from_secs(3600)
    } else {
        lease
    }
}

/// Now, as the tokio instant the node uses and as Unix microseconds for the audit report.
fn now_pair() -> (Instant, u64) {
    let at = Instant::now();
    (at, unix_us(SystemTime::now()))
}

/// How long one Info request of the hand-over fence may take.
const FENCE_RPC: Duration = Duration::from_millis(200);

/// What the shard watcher reads of the applied state in one pass.
struct MapView {
    mine: BTreeSet<u16>,
    shards: Vec<ShardEntry>,
    epoch: u64,
    down: BTreeSet<NodeId>,
    /// Other nodes not down.
    live: BTreeSet<NodeId>,
    writes: Vec<u64>,
}

/// Shards adopted from nodes that may still be acting for them: their acting bits wait.
#[derive(Debug)]
struct Fence {
    shards: BTreeSet<u16>,
    /// Our map epoch when we adopted them.
    epoch: u64,
    since: Instant,
    /// The previous owners (for the log).
    from: BTreeSet<NodeId>,
    /// Those that have not yet reported `acting_epoch >= epoch`.
    waiting: BTreeSet<NodeId>,
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
    epoch: Instant,
    /// Our lease: valid until this instant.
    lease_until: Mutex<Option<Instant>>,
    /// Leader only: when each node was last heard.
    heard: Mutex<BTreeMap<NodeId, Instant>>,
    /// Leader only: since when this node has been leader (term, instant).
    leading_since: Mutex<Option<(u64, Instant)>>,
    clients: Mutex<HashMap<NodeId, ClusterClient<Channel>>>,
    /// One ordered queue per peer node for forwarded SIP: a 180 and the 200 behind it must leave in
    /// that order (separate concurrent RPCs could overtake each other).
    forwarders: Mutex<HashMap<NodeId, mpsc::Sender<SipForward>>>,
    dialogs: mpsc::Sender<DialogOp>,
    /// Dialog operations queued or in a batch not yet written (see [`Pool::flush_dialogs`]).
    dialogs_pending: AtomicUsize,
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

/// What the hand-over fence did.
#[derive(Debug, Default)]
pub struct FenceStats {
    /// Fences passed (groups of shards adopted from a live node).
    pub passed: AtomicU64,
    /// Of those, fences that ended because L + margin elapsed rather than on the old owner's word.
    pub timed_out: AtomicU64,
}

/// What the dialog group commit did.
#[derive(Debug, Default)]
pub struct DialogStats {
    /// Raft entries written for dialog records.
    pub batches: std::sync::atomic::AtomicU64,
    /// Records written (upserts + removals).
    pub records: std::sync::atomic::AtomicU64,
    /// Bytes of record payload written (before encoding into the log).
    pub bytes: std::sync::atomic::AtomicU64,
    /// Batches that did not commit.
    pub failed: std::sync::atomic::AtomicU64,
    /// Batch sizes: ≤1, ≤4, ≤16, ≤64, ≤256, more.
    pub sizes: [std::sync::atomic::AtomicU64; 6],
}

enum DialogOp {
    Upsert(u16, String, Vec<u8>),
    Remove(u16, String),
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("node_id", &self.opts.node_id)
            .finish_non_exhaustive()
    }
}

struct Hooks(std::sync::Weak<Pool>);

#[tonic::async_trait]
impl PoolHooks for Hooks {
    async fn join(&self, req: JoinRequest) -> JoinReply {
        match self.0.upgrade() {
            Some(p) => p.handle_join(req).await,
            None => JoinReply {
                accepted: false,
                error: "shutting down".into(),
                ..JoinReply::default()
            },
        }
    }
    async fn forward(&self, msg: SipForward) -> ForwardAck {
        let accepted = self
            .0
            .upgrade()
            .and_then(|p| p.sink())
            .is_some_and(|s| s.deliver(msg));
        ForwardAck { accepted }
    }
    async fn lease(&self, req: LeaseRequest) -> LeaseReply {
        match self.0.upgrade() {
            Some(p) => p.handle_lease(req).await,
            None => LeaseReply::default(),
        }
    }
    async fn write(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        match self.0.upgrade() {
            Some(p) => p.write(cmd).await,
            None => Err(WriteError::NotAppended(NotAppended::AtLeader(
                "shutting down".into(),
            ))),
        }
    }
    async fn info(&self) -> Vec<u8> {
        match self.0.upgrade() {
            Some(p) => serde_json::to_vec(&p.info()).unwrap_or_default(),
            None => Vec::new(),
        }
    }
}

/// The pool as one node sees it (status for the CLI, the demo and tests).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PoolInfo {
    /// This node.
    pub node_id: NodeId,
    /// The leader, if known.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Last applied log index.
    pub applied: Option<u64>,
    /// Whether this node holds its lease.
    pub lease: bool,
    /// Configuration version.
    pub config_version: Option<u64>,
    /// Every node: id, SIP address, state, shards owned.
    pub nodes: Vec<(NodeId, String, String, usize)>,
    /// Shards without an owner.
    pub unowned: usize,
    /// Confirmed dialogs recorded.
    pub dialogs: usize,
    /// The map epoch (sum of the shard epochs) of the applied state whose releases this node's
    /// acting set reflects: every shard this node did not own at that epoch is out of its acting set
    /// and its node side has been told. Shards adopted at that epoch may still wait behind a
    /// hand-over fence. 0 until the shard watcher's first pass (and from nodes that predate it).
    #[serde(default)]
    pub acting_epoch: u64,
    /// The map epoch of this node's applied state (compare with `acting_epoch`).
    #[serde(default)]
    pub map_epoch: u64,
    /// How many of the shards this node owns in its applied map it acts for (in its acting set:
    /// past any hand-over fence). Equal to its shard count once it has settled.
    #[serde(default)]
    pub acting: usize,
}

impl Pool {
    /// Opens the store, starts Raft and the internal server, then bootstraps or joins in the
    /// background. Call [`Pool::attach`] to connect the node side.
    pub async fn start(opts: PoolOptions) -> Result<Arc<Pool>, PoolError> {
        let (log, sm) = store::open(&opts.data_dir)?;
        let reader = sm.reader();
        let config = openraft::Config {
            cluster_name: "medpool".into(),
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(opts.snapshot_logs.max(1)),
            max_in_snapshot_log_to_keep: opts.snapshot_logs.min(1000),
            ..Default::default()
        }
        .validate()
        .map_err(|e| PoolError::Raft(e.to_string()))?;
        let raft = Raft::new(opts.node_id, Arc::new(config), GrpcNetwork, log, sm)
            .await
            .map_err(|e| PoolError::Raft(e.to_string()))?;
        let (dialogs, dialog_rx) = mpsc::channel(65536);
        let (stop, stop_rx) = watch::channel(false);
        let pool = Arc::new(Pool {
            opts: opts.clone(),
            raft: raft.clone(),
            reader,
            epoch: Instant::now(),
            lease_until: Mutex::new(None),
            heard: Mutex::new(BTreeMap::new()),
            leading_since: Mutex::new(None),
            clients: Mutex::new(HashMap::new()),
            forwarders: Mutex::new(HashMap::new()),
            dialogs,
            dialogs_pending: AtomicUsize::new(0),
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
        let service = ClusterService::server(raft, Arc::new(Hooks(Arc::downgrade(&pool))));
        let mut srv_stop = stop_rx.clone();
        tokio::spawn(async move {
            let incoming = tokio_stream_listener(listener);
            let r = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = srv_stop.changed().await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "internal gRPC server stopped");
            }
        });
        tokio::spawn(pool.clone().membership_task(stop_rx.clone()));
        tokio::spawn(pool.clone().lease_task(stop_rx.clone()));
        tokio::spawn(pool.clone().leader_task(stop_rx.clone()));
        if pool.audit.is_some() {
            tokio::spawn(pool.clone().audit_config_task(stop_rx.clone()));
        }
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
    /// Whether our lease is valid now.
    pub fn holds_lease(&self) -> bool {
        self.lease_until
            .lock()
            .ok()
            .and_then(|l| *l)
            .is_some_and(|t| Instant::now() < t)
    }
    /// How long ago our lease was last renewed (for status).
    pub fn lease_remaining(&self) -> Option<Duration> {
        self.lease_until
            .lock()
            .ok()
            .and_then(|l| *l)
            .map(|t| t.saturating_duration_since(Instant::now()))
    }
    /// Whether this node may act for `shard` now: it owns it, it is in the acting set (the shard
    /// watcher took it over, past any hand-over fence) and the node holds a valid lease (fencing).
    pub fn may_act(&self, shard: u16) -> bool {
        self.acting(shard) && self.owner(shard) == Some(self.opts.node_id) && self.holds_lease()
    }
    /// Whether this node took `shard` over less than [`LATE_WINDOW`] ago: records of calls its old
    /// owner set up just before losing it (retried across a partition) may still arrive.
    pub fn recently_taken(&self, shard: u16) -> bool {
        self.taken_at_ms
            .get(usize::from(shard))
            .map(|t| t.load(Ordering::SeqCst))
            .is_some_and(|t| t != 0 && self.now_ms() + 1 - t < LATE_WINDOW.as_millis() as u64)
    }
    /// Whether `shard` is in this node's acting set (see [`Pool::may_act`]).
    pub fn acting(&self, shard: u16) -> bool {
        self.acting
            .get(usize::from(shard))
            .is_some_and(|b| b.load(Ordering::SeqCst))
    }
    /// The map epoch whose releases the acting set reflects ([`PoolInfo::acting_epoch`]).
    pub fn acting_epoch(&self) -> u64 {
        self.acting_epoch.load(Ordering::SeqCst)
    }
    /// The confirmed dialog records of a shard.
    pub fn dialogs_of(&self, shard: u16) -> Vec<Vec<u8>> {
        self.reader
            .read(|s| s.dialogs_of(shard).map(|(_, v)| v.to_vec()).collect())
    }
    /// Queues a dialog record write (group-committed). Returns whether it was queued: a node whose
    /// lease lapsed never writes (it may have been frozen while another node took its calls over),
    /// and a full queue refuses. A node that holds its lease may write the record of a call it
    /// started while acting for the shard even if the shard has just moved (a call answered in the
    /// instant of a drain): the write goes as [`Command::OwnerDialogBatch`], so once the writer no
    /// longer owns the shard it can only add a call the new owner does not know — which the new
    /// owner then rebuilds as a late record — and never overwrite one.
    pub fn dialog_upsert(&self, shard: u16, call_id: String, record: Vec<u8>) -> bool {
        if !self.holds_lease() {
            return false;
        }
        self.queue_dialog_op(DialogOp::Upsert(shard, call_id, record))
    }
    /// Queues the removal of an ended call's record. Not fenced: a node stops the calls of a shard it
    /// releases without removing their records (they move with the shard), so a removal only ever
    /// comes from a call that really ended, and the new owner must not rebuild it.
    pub fn dialog_remove(&self, shard: u16, call_id: String) {
        self.queue_dialog_op(DialogOp::Remove(shard, call_id));
    }
    /// Whether the applied state holds a record for this call.
    pub fn dialog_exists(&self, shard: u16, call_id: &str) -> bool {
        self.reader.read(|s| s.dialog(shard, call_id).is_some())
    }
    fn queue_dialog_op(&self, op: DialogOp) -> bool {
        // Counted before it is queued, so that `flush_dialogs` never sees an empty count while a
        // record is on its way.
        self.dialogs_pending.fetch_add(1, Ordering::SeqCst);
        if self.dialogs.try_send(op).is_err() {
            self.dialogs_pending.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("dialog write queue full: a record was not replicated");
            return false;
        }
        true
    }
    /// Waits, at most `limit`, until every dialog record queued so far has been written (or given
    /// up). Called on the way out, before [`Pool::shutdown`]: a call answered in the last instant
    /// before a node stops (SIGTERM, or its own store failing) still reaches the others. A follower
    /// whose own Raft failed still writes through the leader; a leader whose Raft failed cannot,
    /// and its last records are lost (RELIABILITY.md, known limits).
    pub async fn flush_dialogs(&self, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        loop {
            let pending = self.dialogs_pending.load(Ordering::SeqCst);
            if pending == 0 || Instant::now() >= deadline {
                return pending;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn client_for(&self, node: NodeId) -> Option<ClusterClient<Channel>> {
        if let Some(c) = self.clients.lock().ok().and_then(|c| c.get(&node).cloned()) {
            return Some(c);
        }
        let addr = self
            .reader
            .read(|s| s.node(node).map(|n| n.addresses.raft_addr.clone()))?;
        let c = client(&addr).ok()?;
        if let Ok(mut m) = self.clients.lock() {
            m.insert(node, c.clone());
        }
        Some(c)
    }

    /// Sends a SIP message to another node (fire and forget; SIP retransmits on loss).
    pub fn forward(&self, node: NodeId, msg: SipForward) -> bool {
        let existing = self
            .forwarders
            .lock()
            .ok()
            .and_then(|f| f.get(&node).cloned());
        let tx = match existing {
            Some(tx) if !tx.is_closed() => tx,
            _ => {
                let Some(mut c) = self.client_for(node) else {
                    return false;
                };
                // Bounded: when a peer is slow, SIP messages are dropped (and retransmitted by their
                // senders) rather than queued without limit.
                let (tx, mut rx) = mpsc::channel::<SipForward>(4096);
                tokio::spawn(async move {
                    while let Some(msg) = rx.recv().await {
                        if tokio::time::timeout(Duration::from_secs(1), c.forward(msg))
                            .await
                            .is_err()
                        {
                            tracing::debug!(node, "forward timed out");
                        }
                    }
                });
                if let Ok(mut f) = self.forwarders.lock() {
                    f.insert(node, tx.clone());
                }
                tx
            }
        };
        tx.try_send(msg).is_ok()
    }

    /// Proposes a command, through the leader when this node is not it. A refusal that appended
    /// nothing (no leader yet, a leader whose lease to its quorum lapsed, a leader change) is retried
    /// for up to 3 s; a write that may have reached the log is never retried (its outcome is unknown).
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            match self.write_once(cmd.clone()).await {
                Err(e) if e.is_retryable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    async fn write_once(&self, cmd: Command) -> Result<CommandResult, WriteError> {
        let leader = self.raft.current_leader().await;
        let result = if leader == Some(self.opts.node_id) {
            match self.raft.client_write(cmd).await {
                Ok(r) => r.data,
                // Nothing was appended: safe to try again (possibly at another leader).
                Err(e) if e.forward_to_leader().is_some() => {
                    return Err(WriteError::NotAppended(NotAppended::NotLeader(
                        e.to_string(),
                    )));
                }
                Err(e) => return Err(WriteError::MaybeApplied(e.to_string())),
            }
        } else {
            let Some(leader) = leader else {
                return Err(WriteError::NotAppended(NotAppended::NoLeader));
            };
            let Some(mut c) = self.client_for(leader) else {
                return Err(WriteError::NotAppended(NotAppended::LeaderAddressUnknown));
            };
            // Serializing our own command cannot fail; if it did, nothing was sent.
            let data = encode(&cmd)
                .map_err(|e| WriteError::NotAppended(NotAppended::Unsendable(e.to_string())))?;
            let reply = match tokio::time::timeout(
                Duration::from_secs(5),
                c.client_write(RaftPayload { data }),
            )
            .await
            {
                Err(_) => return Err(WriteError::MaybeApplied("leader timed out".into())),
                // The request never reached the leader: safe to retry.
                Ok(Err(e)) if e.code() == tonic::Code::Unavailable => {
                    return Err(WriteError::NotAppended(NotAppended::LeaderUnreachable(
                        e.message().to_owned(),
                    )));
                }
                Ok(Err(e)) => return Err(WriteError::MaybeApplied(e.message().to_owned())),
                Ok(Ok(r)) => r.into_inner(),
            };
            read_write_reply(reply)?
        };
        match result {
            CommandResult::Rejected(r) => Err(WriteError::Refused(r)),
            ok => Ok(ok),
        }
    }

    async fn membership_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let id = self.opts.node_id;
        let initialized = self.raft.is_initialized().await.unwrap_or(false);
        if self.opts.join.is_empty() && !initialized {
            let mut members = BTreeMap::new();
            members.insert(id, self.opts.addrs.clone());
            if let Err(e) = self.raft.initialize(members).await {
                tracing::warn!(error = %e, "initialize");
            }
        }
        // Bootstrap (first node) or join (others), retrying until it sticks.
        loop {
            if *stop.borrow() {
                return;
            }
            let done = if self.opts.join.is_empty() {
                self.bootstrap_once().await
            } else {
                self.join_once().await
            };
            if done {
                tracing::info!(node = id, "member of the pool");
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn bootstrap_once(&self) -> bool {
        if self.raft.current_leader().await != Some(self.opts.node_id) {
            return self.reader.read(|s| s.node(self.opts.node_id).is_some());
        }
        let _ = self
            .write(Command::Bootstrap {
                shard_count: self.opts.shard_count,
            })
            .await;
        self.write(Command::AddNode {
            id: self.opts.node_id,
            addresses: self.opts.addrs.clone(),
            voter: true,
        })
        .await
        .is_ok()
    }

    async fn join_once(&self) -> bool {
        let req = JoinRequest {
            node_id: self.opts.node_id,
            raft_addr: self.opts.addrs.raft_addr.clone(),
            sip_addr: self.opts.addrs.sip_addr.clone(),
            admin_addr: self.opts.addrs.admin_addr.clone(),
        };
        let mut targets: Vec<String> = self.opts.join.clone();
        let mut tried = 0;
        while let Some(addr) = targets.pop() {
            tried += 1;
            if tried > 8 {
                break;
            }
            let Ok(mut c) = client(&addr) else { continue };
            match tokio::time::timeout(Duration::from_secs(10), c.join(req.clone())).await {
                Ok(Ok(r)) => {
                    let r = r.into_inner();
                    if r.accepted {
                        return true;
                    }
                    if !r.leader_addr.is_empty() && r.leader_addr != addr {
                        targets.push(r.leader_addr);
                    } else if !r.error.is_empty() {
                        tracing::debug!(%addr, error = %r.error, "join refused");
                    }
                }
                Ok(Err(e)) => tracing::debug!(%addr, error = %e, "join failed"),
                Err(_) => tracing::debug!(%addr, "join timed out"),
            }
        }
        false
    }

    async fn handle_join(&self, req: JoinRequest) -> JoinReply {
        let me = self.opts.node_id;
        let leader = self.raft.current_leader().await;
        if leader != Some(me) {
            let leader_addr = leader
                .and_then(|l| {
                    self.reader
                        .read(|s| s.node(l).map(|n| n.addresses.raft_addr.clone()))
                })
                .unwrap_or_default();
            return JoinReply {
                leader_id: leader.unwrap_or(0),
                leader_addr,
                accepted: false,
                error: "not the leader".into(),
            };
        }
        let addrs = NodeAddrs {
            raft_addr: req.raft_addr,
            sip_addr: req.sip_addr,
            admin_addr: req.admin_addr,
        };
        let fail = |e: String| JoinReply {
            accepted: false,
            error: e,
            ..JoinReply::default()
        };
        if let Err(e) = self
            .raft
            .add_learner(req.node_id, addrs.clone(), true)
            .await
        {
            return fail(e.to_string());
        }
        let metrics = self.raft.metrics().borrow_watched().clone();
        let voters: BTreeSet<NodeId> = metrics.membership_config.membership().voter_ids().collect();
        let voter =
            voters.contains(&req.node_id) || voters.len() < self.opts.max_voters.clamp(1, 5);
        if voter && !voters.contains(&req.node_id) {
            let mut ids = BTreeSet::new();
            ids.insert(req.node_id);
            if let Err(e) = self
                .raft
                .change_membership(ChangeMembers::AddVoterIds(ids), true)
                .await
            {
                return fail(e.to_string());
            }
        }
        // The node counts as heard only once its own lease heartbeat arrives: shards go only to nodes
        // that can act for them.
        match self
            .write(Command::AddNode {
                id: req.node_id,
                addresses: addrs,
                voter,
            })
            .await
        {
            Ok(_) => JoinReply {
                leader_id: me,
                accepted: true,
                ..JoinReply::default()
            },
            Err(e) => fail(e.to_string()),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    async fn handle_lease(&self, req: LeaseRequest) -> LeaseReply {
        let me = self.opts.node_id;
        let is_leader = self.raft.current_leader().await == Some(me) && self.leader_has_quorum();
        // A node that has not applied the current shard map yet (it restarted on old data, it is
        // catching up) may not act: no lease until its map is as new as the leader's. Only a node
        // granted a lease counts as alive, so shards go only to nodes that can act for them at once.
        // The epoch a node sends is its acting epoch: it has applied that map *and* taken every shard
        // the map moved away out of its acting set (the hand-over fence relies on it). The leader's
        // own heartbeat is held to the same rule.
        let current = req.map_epoch >= self.map_epoch();
        if is_leader
            && current
            && let Ok(mut h) = self.heard.lock()
        {
            h.insert(req.node_id, Instant::now());
        }
        LeaseReply {
            granted: is_leader && current,
            sent_at_ms: req.sent_at_ms,
            leader_id: me,
        }
    }

    /// The sum of the shard epochs in the applied state: it grows with every shard move.
    pub fn map_epoch(&self) -> u64 {
        self.reader
            .read(|s| s.shards().iter().map(|e| e.epoch).sum())
    }

    fn leader_has_quorum(&self) -> bool {
        let m = self.raft.metrics().borrow_watched().clone();
        let voters = m.membership_config.membership().voter_ids().count();
        voters <= 1
            || m.last_quorum_acked
                .as_ref()
                .is_some_and(|t| openraft::Instant::elapsed(&**t) < self.opts.lease / 2)
    }

    async fn lease_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let period = self.opts.lease / 4;
        let mut first = true;
        loop {
            // The first heartbeat goes at once: a starting node gets its lease (and shards) sooner.
            if !first {
                tokio::select! {
                    _ = tokio::time::sleep(period) => {}
                    _ = stop.changed() => return,
                }
            }
            first = false;
            // Read before the send time: a lease that counts from `sent` was asked for by a node whose
            // acting set already reflected this epoch (the audit report relies on the order).
            let map_epoch = self.acting_epoch();
            let (sent, sent_us) = now_pair();
            let sent_ms = self.now_ms();
            let me = self.opts.node_id;
            let leader = self.raft.current_leader().await;
            let granted = match leader {
                Some(l) if l == me => {
                    self.handle_lease(LeaseRequest {
                        node_id: me,
                        sent_at_ms: sent_ms,
                        map_epoch,
                    })
                    .await
                    .granted
                }
                Some(l) => match self.client_for(l) {
                    Some(mut c) => matches!(
                        tokio::time::timeout(period, c.lease(LeaseRequest { node_id: me, sent_at_ms: sent_ms, map_epoch })).await,
                        Ok(Ok(r)) if r.get_ref().granted
                    ),
                    None => false,
                },
                None => false,
            };
            if granted {
                // The lease counts from when the heartbeat was *sent* (DESIGN.md "Ownership and fencing").
                let len = lease_len(self.opts.lease);
                if let Ok(mut l) = self.lease_until.lock() {
                    *l = Some(sent + len);
                }
                if let Some(a) = &self.audit {
                    a.write(&Record::Lease {
                        node: me,
                        from_us: sent_us,
                        until_us: sent_us
                            .saturating_add(u64::try_from(len.as_micros()).unwrap_or(u64::MAX)),
                    });
                }
            }
        }
    }

    /// Proposes a decision this node took as leader (a node down or back, shard moves) to its own
    /// Raft only. Never forwarded nor retried elsewhere: a deposed leader's view of who is alive is
    /// stale (a leader cut off by a partition hears nobody), and carried to the new leader it would
    /// declare live nodes down and hand their shards over without a fence. Not committed in this
    /// node's term, it is dropped; the current leader decides again from its own view.
    async fn write_as_leader(&self, cmd: Command) {
        if let Err(e) = self.raft.client_write(cmd).await {
            tracing::debug!(error = %e, "leader decision not committed (no longer leader)");
        }
    }

    async fn leader_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
            let me = self.opts.node_id;
            let m = self.raft.metrics().borrow_watched().clone();
            if m.current_leader != Some(me) {
                if let Ok(mut l) = self.leading_since.lock() {
                    *l = None;
                }
                continue;
            }
            let term = m.current_term;
            let since = {
                let Ok(mut l) = self.leading_since.lock() else {
                    continue;
                };
                match *l {
                    Some((t, at)) if t == term => at,
                    _ => {
                        // A new leader has heard nobody yet: it waits L + margin before declaring anyone down.
                        let (now, now_us) = now_pair();
                        *l = Some((term, now));
                        if let Some(a) = &self.audit {
                            a.write(&Record::Leader {
                                node: me,
                                term,
                                at_us: now_us,
                            });
                        }
                        if let Ok(mut h) = self.heard.lock() {
                            h.clear();
                        }
                        now
                    }
                }
            };
            if !self.reader.read(|s| s.is_bootstrapped()) {
                continue;
            }
            let window = self.opts.lease + self.opts.margin;
            let heard = self.heard.lock().map(|h| h.clone()).unwrap_or_default();
            let nodes = self.reader.read(|s| s.nodes().clone());
            let heard_recently =
                |id: &NodeId| *id == me || heard.get(id).is_some_and(|t| t.elapsed() < window);
            // A new leader knows who is alive once it has heard from every node, or once L + margin
            // has passed (then silence means down). Until then it moves nothing.
            let settled = since.elapsed() >= window
                || nodes
                    .iter()
                    .all(|(id, n)| n.state == NodeState::Down || heard_recently(id));
            if !settled {
                continue;
            }
            let mut alive = BTreeSet::new();
            for (id, rec) in &nodes {
                let recent = heard_recently(id);
                match rec.state {
                    NodeState::Active | NodeState::Draining if !recent => {
                        tracing::warn!(
                            node = id,
                            "node silent for longer than lease + margin: down"
                        );
                        self.write_as_leader(Command::SetNodeState {
                            id: *id,
                            state: NodeState::Down,
                        })
                        .await;
                    }
                    NodeState::Down if recent => {
                        self.write_as_leader(Command::SetNodeState {
                            id: *id,
                            state: NodeState::Active,
                        })
                        .await;
                    }
                    _ => {}
                }
                if recent {
                    alive.insert(*id);
                }
            }
            let moves = self.reader.read(|s| plan_moves(s, &alive));
            if !moves.is_empty() {
                tracing::info!(moves = moves.len(), "rebalancing shards");
                self.write_as_leader(Command::MoveShards { moves }).await;
            }
        }
    }

    /// Keeps the acting set and the node side in line with the applied shard map. Per pass:
    /// released shards leave the acting set, then the node side hears `released`, then
    /// `acting_epoch` moves to the map's epoch; shards adopted from nobody, or from a node that is
    /// down, enter the acting set at once; shards adopted from a live node wait behind a hand-over
    /// fence ([`Pool::pass_fences`]); entering shards are added to the set before the node side
    /// hears `adopted`.
    async fn shard_watcher(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut metrics = self.raft.metrics();
        // The shards the applied map gave this node at the last pass (acting, or behind a fence).
        let mut owned: BTreeSet<u16> = BTreeSet::new();
        // Every shard's owner and epoch at the last pass (empty before the first pass).
        let mut prev: Vec<ShardEntry> = Vec::new();
        let mut fences: Vec<Fence> = Vec::new();
        let mut writes: Vec<u64> = Vec::new();
        // When each shard was taken over: only a recent take-over can still receive the old owner's
        // late records (its group commit flushes within milliseconds).
        let mut taken: BTreeMap<u16, Instant> = BTreeMap::new();
        let me = self.opts.node_id;
        loop {
            // One consistent read: the shards, their owners, the epoch and the nodes' states belong to
            // the same applied state.
            let view = self.reader.read(|s| MapView {
                mine: s.shards_of(me).into_iter().collect(),
                shards: s.shards().to_vec(),
                epoch: s.shards().iter().map(|e| e.epoch).sum(),
                down: s
                    .nodes()
                    .iter()
                    .filter(|(_, n)| n.state == NodeState::Down)
                    .map(|(id, _)| *id)
                    .collect(),
                live: s
                    .nodes()
                    .iter()
                    .filter(|(id, n)| **id != me && n.state != NodeState::Down)
                    .map(|(id, _)| *id)
                    .collect(),
                writes: s.dialog_writes(),
            });
            // Records that arrive for a shard after this node took it over (the old owner's last group
            // commit lands after the move): adopt the shard again; calls already here are skipped.
            let grown: Vec<u16> = view
                .mine
                .iter()
                .copied()
                .filter(|s| owned.contains(s))
                .filter(|s| taken.get(s).is_some_and(|t| t.elapsed() < LATE_WINDOW))
                .filter(|s| view.writes.get(usize::from(*s)) > writes.get(usize::from(*s)))
                .collect();
            taken.retain(|_, t| t.elapsed() < LATE_WINDOW);
            if !grown.is_empty()
                && let Some(sink) = self.sink()
            {
                sink.late_records(grown);
            }
            // Releases: out of the acting set first (may_act is false from here on), then the node side
            // stops its calls, then acting_epoch tells the new owners' fences.
            let released: Vec<u16> = owned.difference(&view.mine).copied().collect();
            if !released.is_empty() {
                for f in &mut fences {
                    for s in &released {
                        f.shards.remove(s);
                    }
                }
                fences.retain(|f| !f.shards.is_empty());
                let was_acting: Vec<u16> = released
                    .iter()
                    .copied()
                    .filter(|s| {
                        self.acting
                            .get(usize::from(*s))
                            .is_some_and(|b| b.swap(false, Ordering::SeqCst))
                    })
                    .collect();
                if !was_acting.is_empty() {
                    self.audit_acting(view.epoch, Change::Remove(was_acting.clone()));
                    if let Some(sink) = self.sink() {
                        sink.released(was_acting);
                    }
                }
            }
            self.acting_epoch.store(view.epoch, Ordering::SeqCst);
            // Adoptions: from nobody or from a node that is down, at once (a node is declared down
            // after L + margin of silence, and a new leader waits as long: its lease is over); from a
            // live node, behind a fence. The previous owner is the one of the last pass when the shard
            // moved exactly once since; otherwise (first pass, a node catching up on old data, a
            // snapshot, several moves applied at once) it is unknown: any live node might be acting.
            let mut entering: Vec<u16> = Vec::new();
            let mut fenced: BTreeMap<BTreeSet<NodeId>, BTreeSet<u16>> = BTreeMap::new();
            for s in view.mine.difference(&owned).copied() {
                let i = usize::from(s);
                let known = prev
                    .get(i)
                    .filter(|p| view.shards.get(i).is_some_and(|e| e.epoch == p.epoch + 1));
                let from: BTreeSet<NodeId> = match known {
                    Some(p) => p
                        .owner
                        .filter(|o| *o != me && !view.down.contains(o))
                        .into_iter()
                        .collect(),
                    None => view.live.clone(),
                };
                if from.is_empty() {
                    entering.push(s);
                } else {
                    fenced.entry(from).or_default().insert(s);
                }
            }
            let since = Instant::now();
            for (from, shards) in fenced {
                fences.push(Fence {
                    shards,
                    epoch: view.epoch,
                    since,
                    waiting: from.clone(),
                    from,
                });
            }
            if !fences.is_empty() {
                entering.extend(self.pass_fences(&mut fences, &view.down).await);
            }
            if !entering.is_empty() {
                entering.sort_unstable();
                // Reported (time read) before the bits are set: the report never claims less.
                self.audit_acting(view.epoch, Change::Add(entering.clone()));
                let at = Instant::now();
                for s in &entering {
                    if let Some(b) = self.acting.get(usize::from(*s)) {
                        b.store(true, Ordering::SeqCst);
                    }
                    taken.insert(*s, at);
                    if let Some(t) = self.taken_at_ms.get(usize::from(*s)) {
                        t.store(self.now_ms() + 1, Ordering::SeqCst);
                    }
                }
                if let Some(sink) = self.sink() {
                    sink.adopted(entering);
                }
            }
            owned = view.mine;
            writes = view.writes;
            prev = view.shards;
            // A pending fence is looked at again soon (it normally clears within milliseconds).
            let poll = if fences.is_empty() {
                Duration::from_millis(200)
            } else {
                Duration::from_millis(10)
            };
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// The hand-over fence. Shards adopted from a node that is not down (a rebalance after a rejoin, a
    /// drain) enter the acting set only once that node reports `acting_epoch >=` our map epoch at
    /// adoption (it has applied the move and taken the shards out of its own acting set), or once
    /// L + margin has passed since adoption. Why its lease is over by then: the move committed before
    /// we applied it (commit ≤ adoption). A lease granted for a heartbeat sent before the commit
    /// expires before commit + L ≤ adoption + L. A heartbeat sent after the commit carries the
    /// sender's acting epoch: the leader grants it only when that epoch is as new as the leader's
    /// map, i.e. only once the old owner has applied the move *and* cleared its acting bits — such a
    /// lease no longer lets it act for these shards. The margin covers what the L bound leaves out: a
    /// leader grants against its *applied* map, which can trail the commit (and our adoption) by a
    /// moment, and a deposed leader grants for up to L/2 after its last quorum acknowledgement (the
    /// same margin a new leader waits before declaring a silent node down). A node declared down
    /// meanwhile needs no more waiting. Returns the shards whose fence is over.
    async fn pass_fences(&self, fences: &mut Vec<Fence>, down: &BTreeSet<NodeId>) -> Vec<u16> {
        let max = self.opts.lease + self.opts.margin;
        let ask: BTreeSet<NodeId> = fences
            .iter()
            .filter(|f| f.since.elapsed() < max)
            .flat_map(|f| f.waiting.iter().copied())
            .filter(|n| !down.contains(n))
            .collect();
        let replies: BTreeMap<NodeId, u64> = futures_util::future::join_all(
            ask.into_iter()
                .map(|n| async move { (n, self.acting_epoch_of(n).await) }),
        )
        .await
        .into_iter()
        .filter_map(|(n, e)| Some((n, e?)))
        .collect();
        let mut done = Vec::new();
        fences.retain_mut(|f| {
            f.waiting
                .retain(|n| !down.contains(n) && replies.get(n).is_none_or(|e| *e < f.epoch));
            let waited = f.since.elapsed();
            if !f.waiting.is_empty() && waited < max {
                return true;
            }
            let old_owner = f
                .from
                .iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(",");
            let timed_out = !f.waiting.is_empty();
            self.fence_stats.passed.fetch_add(1, Ordering::Relaxed);
            if timed_out {
                self.fence_stats.timed_out.fetch_add(1, Ordering::Relaxed);
            }
            tracing::info!(
                wait_ms = u64::try_from(waited.as_millis()).unwrap_or(u64::MAX),
                old_owner,
                shards = f.shards.len(),
                timed_out,
                "hand-over fence"
            );
            done.extend(f.shards.iter().copied());
            false
        });
        done
    }

    /// A node's acting epoch, from its Info (None when it does not answer in time).
    async fn acting_epoch_of(&self, node: NodeId) -> Option<u64> {
        let mut c = self.client_for(node)?;
        let reply = tokio::time::timeout(FENCE_RPC, c.info(InfoRequest {}))
            .await
            .ok()?
            .ok()?;
        let info: PoolInfo = serde_json::from_slice(&reply.get_ref().json).ok()?;
        (info.node_id == node).then_some(info.acting_epoch)
    }

    /// Reports an acting-set change (the time is read now).
    fn audit_acting(&self, epoch: u64, change: Change) {
        if let Some(a) = &self.audit {
            a.write(&Record::Acting {
                node: self.opts.node_id,
                at_us: unix_us(SystemTime::now()),
                epoch,
                change,
            });
        }
    }

    /// Reports the applied configuration version whenever it changes (audit report only).
    async fn audit_config_task(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(audit) = &self.audit else { return };
        let mut metrics = self.raft.metrics();
        let mut reported = None;
        loop {
            if let Some(version) = self.reader.read(|s| s.config_version())
                && reported != Some(version)
            {
                audit.write(&Record::Config {
                    node: self.opts.node_id,
                    version,
                    at_us: unix_us(SystemTime::now()),
                });
                reported = Some(version);
            }
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn dialog_batcher(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<DialogOp>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let first = tokio::select! {
                op = rx.recv() => match op { Some(op) => op, None => return },
                _ = stop.changed() => return,
            };
            // Group commit: everything that arrives within a few ms (up to a few hundred records) goes
            // into one Raft entry.
            let mut upserts = Vec::new();
            let mut removes = Vec::new();
            let mut next = Some(first);
            let deadline = Instant::now() + Duration::from_millis(5);
            while let Some(op) = next.take() {
                match op {
                    DialogOp::Upsert(s, c, r) => upserts.push((s, c, r)),
                    DialogOp::Remove(s, c) => removes.push((s, c)),
                }
                if upserts.len() + removes.len() >= 512 {
                    break;
                }
                if let Ok(Some(op)) = tokio::time::timeout_at(deadline, rx.recv()).await {
                    next = Some(op);
                }
            }
            use std::sync::atomic::Ordering::Relaxed;
            let n = upserts.len() + removes.len();
            let bytes: usize = upserts
                .iter()
                .map(|(_, c, r)| c.len() + r.len())
                .sum::<usize>()
                + removes.iter().map(|(_, c)| c.len()).sum::<usize>();
            let bucket = [1, 4, 16, 64, 256]
                .iter()
                .position(|b| n <= *b)
                .unwrap_or(5);
            let st = &self.dialog_stats;
            st.sizes[bucket].fetch_add(1, Relaxed);
            // Written as the shards' owner: if the shards move before the entry commits (the write is
            // retried across a partition), it only adds calls the new owner never heard of.
            let command = Command::OwnerDialogBatch {
                writer: self.opts.node_id,
                upserts,
                removes,
            };
            // A batch that cannot be written (no leader reachable: an election, a partition) is
            // retried, so a call answered just before the cut still reaches the node that takes its
            // shard over (as a late record). After DIALOG_RETRY_FOR it is dropped, loudly.
            let first = Instant::now();
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.write(command.clone()).await {
                    Ok(_) => {
                        st.batches.fetch_add(1, Relaxed);
                        st.records.fetch_add(n as u64, Relaxed);
                        st.bytes.fetch_add(bytes as u64, Relaxed);
                        if first.elapsed() > backoff {
                            tracing::info!(
                                records = n,
                                after_ms = first.elapsed().as_millis() as u64,
                                "dialog records replicated after retries"
                            );
                        }
                        break;
                    }
                    Err(e) if first.elapsed() >= DIALOG_RETRY_FOR => {
                        st.failed.fetch_add(1, Relaxed);
                        tracing::warn!(error = %e, records = n, "dialog records not replicated: given up");
                        break;
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "dialog records not replicated yet: retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(backoff) => {}
                            _ = stop.changed() => return,
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(1));
                    }
                }
            }
            self.dialogs_pending.fetch_sub(n, Ordering::SeqCst);
        }
    }

    /// Waits until Raft stops on a fatal error — its log or state machine could not be written (a
    /// full or failing disk) — and returns the error. A node whose Raft is gone can neither follow
    /// the shard map nor replicate calls: it must stop, so that the others take its shards over.
    pub async fn fatal(&self) -> String {
        let mut m = self.raft.metrics();
        loop {
            if let Err(e) = &m.borrow_watched().running_state {
                return e.to_string();
            }
            if m.changed().await.is_err() {
                return "Raft stopped".to_owned();
            }
        }
    }

    /// A status snapshot.
    pub fn info(&self) -> PoolInfo {
        let m = self.raft.metrics().borrow_watched().clone();
        let (nodes, unowned, config_version, dialogs) = self.reader.read(|s| {
            let nodes = s
                .nodes()
                .iter()
                .map(|(id, n)| {
                    (
                        *id,
                        n.addresses.sip_addr.clone(),
                        format!("{:?}", n.state),
                        s.shards_of(*id).len(),
                    )
                })
                .collect();
            let unowned = s.shards().iter().filter(|e| e.owner.is_none()).count();
            (nodes, unowned, s.config_version(), s.dialog_count())
        });
        PoolInfo {
            node_id: self.opts.node_id,
            leader: m.current_leader,
            term: m.current_term,
            applied: m.last_applied.map(|l| l.index),
            lease: self.holds_lease(),
            config_version,
            nodes,
            unowned,
            dialogs,
            acting_epoch: self.acting_epoch(),
            map_epoch: self.map_epoch(),
            acting: self
                .reader
                .read(|s| s.shards_of(self.opts.node_id))
                .into_iter()
                .filter(|s| self.acting(*s))
                .count(),
        }
    }

    /// Stops the pool's tasks and Raft.
    pub async fn shutdown(&self) {
        let _ = self.stop.send(true);
        let _ = self.raft.shutdown().await;
    }
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = Result<tokio::net::TcpStream, std::io::Error>> {
    futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}
