//! The shard watcher and the hand-over fence: they keep the acting set (the shards this node acts
//! for) and the node side in line with the applied shard map.
//!
//! Per pass of the watcher: released shards leave the acting set, then the node side hears
//! `released`, then `acting_epoch` moves to the map's epoch; shards adopted from nobody, or from a
//! node that is down and had held them for L + F + m, enter the acting set at once; every other
//! adopted shard waits behind the hand-over fence; entering shards are added to the set before the
//! node side hears `adopted`. Which shards a pass releases and adopts, and whom a fence waits for,
//! is decided by the pure `adopt.rs`. A shard that went away and came back between two passes
//! (same owner, higher epoch) is released and adopted again.
//!
//! # Why the fence is safe
//!
//! A shard `s` adopted at map epoch E (our applied map's epoch when the pass adopted it) enters
//! the acting set only once every node that is not down (the leader too, but not us) reports
//! `acting_epoch >= E`, or once L + F + m has passed since adoption (F = L/4: a leader grants only
//! with a quorum acknowledgement younger than F; m the margin); a node declared down meanwhile
//! drops out of the wait. Why no other node N can still act for `s` then:
//!
//! 1. *N reported.* A node's acting epoch moves to a map's epoch only after every shard that map
//!    does not give it (or gives it at a new epoch) has left its acting set, and acting epochs
//!    never fall. N reported `acting_epoch >= E`, so it has applied the map that moved `s` here and
//!    let `s` go; it takes `s` again only through a later move, which we apply and release first.
//! 2. *N did not report in L + F + m.* N acts for `s` only while its acting set holds `s`, so on
//!    a lease granted for a heartbeat carrying an acting epoch below that of the move `k` that
//!    took `s` from N (the first such move after N's map; committed at `c <=` our adoption).
//!    Who can grant that lease after `c`? Every leader of a term after `k`'s holds `k` (Raft's
//!    leader completeness): until it has applied `k`, `k` is a pending move of an earlier term
//!    that may take a shard from N, and it grants N nothing (`store/pending.rs`: the log store
//!    notes every `MoveShards` it appends); once it has, the epoch check refuses N. The leader
//!    that appended `k` grants N only until it applies `k`, within moments of `c` (the margin m
//!    covers that). Any other leader is deposed by `c` and grants only within F of a quorum
//!    acknowledgement of an RPC sent before `c`. So every lease that lets N act for `s` ends
//!    before `c` + F + L <= adoption + F + L, plus the appending leader's apply delay; m is the
//!    slack for that and for the clocks.
//! 3. *N was down.* The leader declares a node down only once every lease it can hold has ended,
//!    plus m (`judge.rs`), and the same rule as in 2 keeps it from a new lease for `s` afterwards.
//!    A shard from a down owner D still waits when D took it less than L + F + m ago: the owner
//!    before D may be in case 2.
//!
//! So a fence normally waits until the slowest live node has applied the move (milliseconds: the
//! nodes apply the same entry at about the same time), and at most L + F + m (1.45 s). Before,
//! it asked only the previous owner, which let a shard moved X -> Y -> Z within L be taken by Z on
//! Y's word while X still acted, and let a new leader, on a map that still gave it a shard its
//! predecessor had moved away, act beside the shard's next owner (soak 0x5eed2ac7f8be1206, run 2).
//!
//! # Calls in set-up cross the fence on the old owner's side
//!
//! The fence separates *new calls* from *calls in set-up*. The old owner's Info, read after its
//! acting epoch, also names the calls it is still setting up for the shards it released
//! ([`PoolInfo::lingering`]): they finish there (the B2BUA's linger bound, 32 s), and only when
//! confirmed is their record written, as an insert-only late record. The new owner, passing the
//! fence on that report, hands it to its node side (`lingering_at`, before `adopted`), which sends
//! those calls' messages to the old owner, and keeps its late-record watch on those shards for
//! [`LINGER_WINDOW`] more. So the acting set still has one node per shard: the old owner acts only
//! for calls the new owner does not know, and the new owner knows such a call only from the record
//! the old owner writes as its last act for it. A fence that times out reads no report: a silent
//! old owner's calls in set-up are not waited for.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use medpool_proto::cluster::InfoRequest;
use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::audit::{Change, Record, unix_us};
use crate::state::NodeState;
use crate::typ::NodeId;

use super::{Pool, PoolInfo, adopt};

/// How long a shard's new owner keeps watching for records its old owner wrote late (a dialog
/// batch retried across a partition: the old owner retries for
/// [`DIALOG_RETRY_FOR`](super::DIALOG_RETRY_FOR)).
pub const LATE_WINDOW: Duration = Duration::from_secs(20);

/// How long past a take-over the new owner of a shard keeps watching for the records of calls its
/// previous owner reported still setting up (they finish there, for at most the B2BUA's linger
/// bound of 32 s, then hand their record over): [`LATE_WINDOW`] counts from the end of this.
pub const LINGER_WINDOW: Duration = Duration::from_secs(35);

/// How long one Info request of the hand-over fence may take.
const FENCE_RPC: Duration = Duration::from_millis(200);

/// Calls in set-up a previous owner reported lingering, by shard (their Call-IDs).
type Lingering = Vec<(u16, Vec<String>)>;

/// What a watcher pass reads of the map and the nodes, cheaply: the shard count, the sum of the
/// shards' epochs (every change of owner raises its shard's epoch, and epochs never fall, so an
/// unchanged sum means no shard moved), and each node's id and whether it is down. A pass that
/// sees the same key as the last one, with no fence waiting and no take-over watched for late
/// records, would change nothing.
#[derive(Debug, PartialEq, Eq)]
struct PassKey {
    shards: usize,
    epoch: u64,
    nodes: Vec<(NodeId, bool)>,
}

impl PassKey {
    fn of(s: &crate::state::State) -> PassKey {
        PassKey {
            shards: s.shards().len(),
            epoch: s.shards().iter().map(|e| e.epoch).sum(),
            nodes: s
                .nodes()
                .iter()
                .map(|(id, n)| (*id, n.state == NodeState::Down))
                .collect(),
        }
    }
}

/// Shards adopted from nodes that may still be acting for them: their acting bits wait.
#[derive(Debug)]
struct Fence {
    shards: BTreeSet<u16>,
    /// Our map epoch when we adopted them.
    epoch: u64,
    since: Instant,
    /// The nodes it waited for at adoption: every node not down but this one (for the log).
    from: BTreeSet<NodeId>,
    /// Those that have not yet reported `acting_epoch >= epoch`.
    waiting: BTreeSet<NodeId>,
    /// What those that did report still set up for these shards.
    lingering: Vec<(NodeId, Lingering)>,
}

/// What the hand-over fence did.
#[derive(Debug, Default)]
pub struct FenceStats {
    /// Fences passed (groups of shards adopted from a live node).
    pub passed: AtomicU64,
    /// Of those, fences that ended because L + F + margin elapsed rather than on every node's word.
    pub timed_out: AtomicU64,
}

impl Pool {
    /// Whether this node may act for `shard` now: it owns it, it is in the acting set (the shard
    /// watcher took it over, past any hand-over fence) and the node holds a valid lease (fencing).
    pub fn may_act(&self, shard: u16) -> bool {
        self.acting(shard) && self.owner(shard) == Some(self.opts.node_id) && self.holds_lease()
    }
    /// Whether this node took `shard` over less than [`LATE_WINDOW`] ago: records of calls its old
    /// owner set up just before losing it (retried across a partition) may still arrive.
    /// The take-over time of a shard whose previous owner still finishes calls in set-up is moved
    /// [`LINGER_WINDOW`] into the future: their records may arrive until then.
    pub fn recently_taken(&self, shard: u16) -> bool {
        self.taken_at_ms
            .get(usize::from(shard))
            .map(|t| t.load(Ordering::SeqCst))
            .is_some_and(|t| {
                t != 0 && (self.now_ms() + 1).saturating_sub(t) < LATE_WINDOW.as_millis() as u64
            })
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

    /// Keeps the acting set and the node side in line with the applied shard map. Per pass:
    /// released shards leave the acting set, then the node side hears `released`, then
    /// `acting_epoch` moves to the map's epoch; shards adopted from nobody, or from a node that is
    /// down, enter the acting set at once; shards adopted from a live node wait behind a hand-over
    /// fence ([`Pool::pass_fences`]); entering shards are added to the set before the node side
    /// hears `adopted`.
    pub(super) async fn shard_watcher(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut metrics = self.raft.metrics();
        let mut control = self.reader.control_changes();
        // What the last pass saw (the shards it gave this node, every shard's owner and epoch, when
        // each shard last moved).
        let mut mem = adopt::Memory {
            owned: BTreeSet::new(),
            prev: Vec::new(),
            changed_at: BTreeMap::new(),
            started: Instant::now(),
        };
        let window = self.opts.lease + self.grant_fresh() + self.opts.margin;
        let mut fences: Vec<Fence> = Vec::new();
        let mut writes: Vec<u64> = Vec::new();
        // When each shard was taken over: only a recent take-over can still receive the old owner's
        // late records (its group commit flushes within milliseconds).
        let mut taken: BTreeMap<u16, Instant> = BTreeMap::new();
        let me = self.opts.node_id;
        // What the last pass saw of the map and the nodes (see `PassKey`).
        let mut last_key: Option<PassKey> = None;
        let mut first = true;
        loop {
            if !first {
                // A pending fence is looked at again soon (it normally clears within milliseconds).
                let poll = if fences.is_empty() {
                    Duration::from_millis(200)
                } else {
                    Duration::from_millis(10)
                };
                // What can change a pass's outcome: the shard map and the nodes' states (control
                // entries and installed snapshots: `control`), and, only while a fence waits or a
                // recent take-over watches for late records, every dialog apply (Raft's metrics).
                // A settled node does not wake on every append, acknowledgement and apply
                // (heartbeats included), only when the control state moves.
                let quiet = fences.is_empty() && taken.is_empty();
                tokio::select! {
                    r = metrics.changed(), if !quiet => if r.is_err() { return },
                    _ = control.changed() => {}
                    _ = tokio::time::sleep(poll) => {}
                    _ = stop.changed() => return,
                }
            }
            first = false;
            // A pass whose inputs did not change would do nothing, so it is skipped (it cost ~3 %
            // of a loaded pool's CPU when it ran on every Raft metrics change). Its inputs are the
            // shard map and the nodes' states, plus the dialog writes while a recent take-over is
            // watched and any fence that waits.
            let key = self.reader.read(PassKey::of);
            if fences.is_empty() && taken.is_empty() && last_key.as_ref() == Some(&key) {
                continue;
            }
            last_key = Some(key);
            // One consistent read: the shards, their owners, the epoch and the nodes' states belong to
            // the same applied state.
            let view = self.reader.read(|s| adopt::MapView {
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
                .filter(|s| mem.owned.contains(s))
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
            // stops its calls, then acting_epoch tells the new owners' fences. A shard that went
            // away and came back since the last pass is released too (and adopted again below).
            let now = Instant::now();
            let plan = adopt::plan(&mem, &view, window, now);
            let released: Vec<u16> = plan.released.iter().copied().collect();
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
            // Adoptions (`adopt.rs`): from nobody, or from a node that is down and had held the
            // shard for L + F + m, at once (a node is declared down only once every lease it can
            // hold has ended, plus the margin: judge.rs); any other behind a fence on every node
            // that is not down.
            let mut entering: Vec<u16> = plan.at_once.iter().copied().collect();
            let fenced = plan.fenced;
            let since = Instant::now();
            for (from, shards) in fenced {
                fences.push(Fence {
                    shards,
                    epoch: view.epoch,
                    since,
                    waiting: from.clone(),
                    from,
                    lingering: Vec::new(),
                });
            }
            let mut reports: Vec<(NodeId, Lingering)> = Vec::new();
            if !fences.is_empty() {
                let (passed, lingering) = self.pass_fences(&mut fences, &view.down).await;
                entering.extend(passed);
                reports = lingering;
            }
            if !entering.is_empty() {
                entering.sort_unstable();
                // Reported (time read) before the bits are set: the report never claims less.
                self.audit_acting(view.epoch, Change::Add(entering.clone()));
                let at = Instant::now();
                // Shards whose previous owner still finishes calls in set-up: their records (and
                // the late-record watch) may come until the linger window is over.
                let lingering: BTreeSet<u16> = reports
                    .iter()
                    .flat_map(|(_, calls)| calls.iter().map(|(s, _)| *s))
                    .collect();
                // Before the acting bits: from the first message this node handles for these
                // shards on, it sends the lingering calls' messages to the node finishing them (a
                // caller's retransmitted INVITE must not start a second call here).
                if let Some(sink) = self.sink() {
                    for (holder, calls) in reports {
                        let n: usize = calls.iter().map(|(_, ids)| ids.len()).sum();
                        tracing::info!(
                            holder,
                            shards = calls.len(),
                            call_ids = n,
                            "hand-over: calls in set-up finish on the previous owner"
                        );
                        sink.lingering_at(holder, calls);
                    }
                }
                for s in &entering {
                    if let Some(b) = self.acting.get(usize::from(*s)) {
                        b.store(true, Ordering::SeqCst);
                    }
                    let extra = if lingering.contains(s) {
                        LINGER_WINDOW
                    } else {
                        Duration::ZERO
                    };
                    taken.insert(*s, at + extra);
                    if let Some(t) = self.taken_at_ms.get(usize::from(*s)) {
                        t.store(
                            self.now_ms() + 1 + extra.as_millis() as u64,
                            Ordering::SeqCst,
                        );
                    }
                }
                if let Some(sink) = self.sink() {
                    sink.adopted(entering);
                }
            }
            adopt::remember(&mut mem, &view, window, now);
            writes = view.writes;
        }
    }

    /// The hand-over fence (the module doc holds the argument). Fenced shards enter the acting set
    /// only once every node the fence waits for (every node not down at adoption) reports
    /// `acting_epoch >=` our map epoch at adoption, or once L + F + m has passed since adoption; a
    /// node declared down meanwhile needs no more waiting. Returns the shards whose fence is over,
    /// and what the nodes that let them pass reported still setting up for them
    /// ([`PoolInfo::lingering`], read after their acting epoch: it names every call of the shards
    /// they released; only the previous owner has any).
    async fn pass_fences(
        &self,
        fences: &mut Vec<Fence>,
        down: &BTreeSet<NodeId>,
    ) -> (Vec<u16>, Vec<(NodeId, Lingering)>) {
        let max = self.opts.lease + self.grant_fresh() + self.opts.margin;
        let ask: BTreeSet<NodeId> = fences
            .iter()
            .filter(|f| f.since.elapsed() < max)
            .flat_map(|f| f.waiting.iter().copied())
            .filter(|n| !down.contains(n))
            .collect();
        let replies: BTreeMap<NodeId, (u64, Lingering)> = futures_util::future::join_all(
            ask.into_iter()
                .map(|n| async move { (n, self.acting_epoch_of(n).await) }),
        )
        .await
        .into_iter()
        .filter_map(|(n, e)| Some((n, e?)))
        .collect();
        let mut done = Vec::new();
        let mut reports: Vec<(NodeId, Lingering)> = Vec::new();
        fences.retain_mut(|f| {
            let mut passed_on: Vec<NodeId> = Vec::new();
            f.waiting.retain(|n| {
                let released = replies.get(n).is_some_and(|(e, _)| *e >= f.epoch);
                if released {
                    passed_on.push(*n);
                }
                !down.contains(n) && !released
            });
            // What those that released the shards still set up for them (kept even while the
            // fence waits for another node: their report was read after their release).
            for n in passed_on {
                let calls: Lingering = replies
                    .get(&n)
                    .map(|(_, l)| {
                        l.iter()
                            .filter(|(s, _)| f.shards.contains(s))
                            .cloned()
                            .collect()
                    })
                    .unwrap_or_default();
                if !calls.is_empty() {
                    f.lingering.push((n, calls));
                }
            }
            let waited = f.since.elapsed();
            if !f.waiting.is_empty() && waited < max {
                return true;
            }
            let waited_for = f
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
                waited_for,
                shards = f.shards.len(),
                timed_out,
                "hand-over fence"
            );
            done.extend(f.shards.iter().copied());
            reports.append(&mut f.lingering);
            false
        });
        (done, reports)
    }

    /// A node's acting epoch and the calls it still sets up for shards it released, from its Info
    /// (None when it does not answer in time).
    async fn acting_epoch_of(&self, node: NodeId) -> Option<(u64, Lingering)> {
        let mut c = self.client_for(node)?;
        let reply = tokio::time::timeout(FENCE_RPC, c.info(InfoRequest {}))
            .await
            .ok()?
            .ok()?;
        let info: PoolInfo = serde_json::from_slice(&reply.get_ref().json).ok()?;
        (info.node_id == node).then_some((info.acting_epoch, info.lingering))
    }

    /// Reports an acting-set change (the time is read now).
    pub(super) fn audit_acting(&self, epoch: u64, change: Change) {
        if let Some(a) = &self.audit {
            a.write(&Record::Acting {
                node: self.opts.node_id,
                at_us: unix_us(SystemTime::now()),
                epoch,
                change,
            });
        }
    }
}
