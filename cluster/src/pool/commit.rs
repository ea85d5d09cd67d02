//! Dialog-record group commit: confirmed calls' records (and their removals) queue here, and a
//! batcher writes them as [`Command::OwnerDialogBatch`] entries, retrying a batch that finds no
//! leader for [`DIALOG_RETRY_FOR`]. [`Pool::flush_dialogs`] waits for the queue to drain on the way
//! out.
//!
//! One batch is in flight at a time: whatever queues while it is written goes into the next one (up
//! to [`MAX_BATCH_RECORDS`] / half of what the leader admits). The window is the leader's: it
//! gathers every node's batches into one append at most every [`DIALOG_WINDOW`] under load, and
//! at once after a quiet spell (`gather.rs`). A batch in flight waits for that gathering, so a
//! node writes at most one batch per window however many calls it carries, and the pool at most
//! one append per window: each append is a consensus round (an fsync on every voter, an
//! AppendEntries to each follower, an apply everywhere), and that round, not the records in it,
//! was the pool's largest cost per call (BENCHMARKS.md, "Issue 17: where the pool's work per call
//! goes"). Without the window a node wrote one entry per commit latency (a few milliseconds), and
//! with a window per node (before the gathering) the pool appended once per node per window.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::admit::MAX_DIALOG_BYTES;
use crate::command::Command;

use super::Pool;

/// Under load, the leader's gatherings of dialog batches start at least this far apart (the module
/// doc says why). The price: a call answered on a node that dies is lost when its record had not
/// committed yet, a window of one commit latency plus at most this much (ARCHITECTURE.md, "What a
/// record's durability is").
pub const DIALOG_WINDOW: Duration = Duration::from_millis(20);

/// How long a dialog batch that cannot be written (no leader reachable) is retried.
pub const DIALOG_RETRY_FOR: Duration = Duration::from_secs(15);

/// Most records in one batch (well within what the leader admits from another node,
/// [`crate::admit::MAX_DIALOG_RECORDS`]).
pub const MAX_BATCH_RECORDS: usize = 512;

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
    /// As the leader: the appends its gathering made (`gather.rs`), each with one or more nodes'
    /// batches.
    pub gatherings: std::sync::atomic::AtomicU64,
    /// As the leader: the batches those appends carried (its own and the followers').
    pub gathered: std::sync::atomic::AtomicU64,
}

pub(super) enum DialogOp {
    Upsert(u16, String, Vec<u8>),
    /// An upsert that only replaces a record the state still holds ([`Pool::dialog_replace`]).
    Replace(u16, String, Vec<u8>),
    Remove(u16, String),
}

impl Pool {
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
    /// Queues the rewrite of a record that only replaces the one the state holds and never inserts
    /// one (see `replace_only` in [`Command::OwnerDialogBatch`]): the writes of a call this node
    /// rebuilt from its record, whose old owner may have removed the record (the call ended there)
    /// after this node read it. Fenced by the lease as [`Pool::dialog_upsert`].
    pub fn dialog_replace(&self, shard: u16, call_id: String, record: Vec<u8>) -> bool {
        if !self.holds_lease() {
            return false;
        }
        self.queue_dialog_op(DialogOp::Replace(shard, call_id, record))
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
    pub(super) fn queue_dialog_op(&self, op: DialogOp) -> bool {
        // Counted before it is queued, so that `flush_dialogs` never sees an empty count while a
        // record is on its way.
        self.dialogs_pending.send_modify(|n| *n += 1);
        if self.dialogs.try_send(op).is_err() {
            self.dialogs_pending.send_modify(|n| *n -= 1);
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
        let mut pending = self.dialogs_pending.subscribe();
        // The sender lives as long as `self`: waiting ends on an empty count or at the limit.
        let _ = tokio::time::timeout(limit, pending.wait_for(|n| *n == 0)).await;
        *self.dialogs_pending.borrow()
    }

    pub(super) async fn dialog_batcher(
        self: Arc<Self>,
        mut rx: mpsc::Receiver<DialogOp>,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            let first = tokio::select! {
                op = rx.recv() => match op { Some(op) => op, None => return },
                _ = stop.changed() => return,
            };
            // No window here: under load a batch waits for the leader's next gathering
            // (`gather.rs`), and what queues meanwhile goes into the next batch.
            // Group commit: this record, and everything that queued while the previous batch was
            // in flight, in one Raft entry.
            let mut upserts = Vec::new();
            let mut removes = Vec::new();
            let mut replace_only = Vec::new();
            let mut next = Some(first);
            let mut size = 0usize;
            while let Some(op) = next.take() {
                match op {
                    DialogOp::Upsert(s, c, r) => {
                        size += c.len() + r.len();
                        upserts.push((s, c, r));
                    }
                    DialogOp::Replace(s, c, r) => {
                        size += 2 * c.len() + r.len();
                        replace_only.push((s, c.clone()));
                        upserts.push((s, c, r));
                    }
                    DialogOp::Remove(s, c) => {
                        size += c.len();
                        removes.push((s, c));
                    }
                }
                // Well within what the leader admits from another node (crate::admit).
                if upserts.len() + removes.len() >= MAX_BATCH_RECORDS
                    || size >= MAX_DIALOG_BYTES / 2
                {
                    break;
                }
                next = rx.try_recv().ok();
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
                replace_only,
            };
            // A batch that cannot be written (no leader reachable: an election, a partition) is
            // retried, so a call answered just before the cut still reaches the node that takes its
            // shard over (as a late record). After DIALOG_RETRY_FOR it is dropped, loudly.
            let first = Instant::now();
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.write(command.clone()).await {
                    Ok(_) => {
                        crate::stats::STATS.dialog_commit.record(
                            n as u64,
                            bytes as u64,
                            first.elapsed(),
                        );
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
            self.dialogs_pending.send_modify(|p| *p -= n);
        }
    }
}
