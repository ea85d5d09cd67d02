//! The Raft log on redb: openraft's `RaftLogStorage` and `RaftLogReader`.
//!
//! Durability: an append and a vote are committed with `Durability::Immediate` (fsync) before
//! openraft is told they are persisted. Truncation and purge are committed without fsync, and the
//! committed log id is only noted in memory and written by the next durable commit (an append, a
//! vote, the state machine's commit before a control entry applies, a snapshot) or the close:
//! losing one of them in a crash only brings back entries that openraft already knows how to
//! handle (conflicting or already-purged ones) or re-applies fewer entries at start, and the next
//! immediate commit makes them durable anyway (redb commits are ordered).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::{Arc, Mutex, PoisonError};

use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader};
use redb::{Durability, ReadableDatabase, ReadableTable};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::recent::Recent;
use super::{
    Db, DbClosed, KEY_COMMITTED, KEY_LAST_PURGED, KEY_VOTE, LOG, META, PendingMoves, StoreError,
    blocking, decode, encode,
};
use crate::stats::STATS;
use crate::typ::{Entry, EntryPayload, LogId, TypeConfig, Vote};

/// The shard moves of the log that may not be applied yet (see [`PendingMoves`]), shared by the
/// log store and the lease rule.
pub type SharedPendingMoves = Arc<Mutex<PendingMoves>>;

/// The log store. Cheap to clone: clones share the database and the recent entries (openraft's
/// log readers are clones).
#[derive(Debug, Clone)]
pub struct LogStore {
    db: Arc<Db>,
    pending: SharedPendingMoves,
    /// The log's last entries, for the reads that follow appends (`recent.rs`).
    recent: Arc<Mutex<Recent>>,
}

impl LogStore {
    /// A log store over `db`; every `MoveShards` beyond the committed index is noted at once
    /// (openraft re-applies the committed entries before this node can lead).
    pub(crate) fn new(db: Arc<Db>) -> Result<Self, StoreError> {
        let mut pending = PendingMoves::default();
        {
            let txn = db.begin_read()?;
            let meta = txn.open_table(META)?;
            let committed: Option<LogId> = match meta.get(KEY_COMMITTED)? {
                Some(v) => Some(decode(KEY_COMMITTED, v.value())?),
                None => None,
            };
            let from = committed.map_or(0, |c| c.index().saturating_add(1));
            let table = txn.open_table(LOG)?;
            for item in table.range(from..)? {
                let (_, v) = item?;
                let entry: Entry = decode("log entry", v.value())?;
                if let EntryPayload::Normal(cmd) = &entry.payload {
                    pending.appended(entry.index(), term_of(&entry), cmd);
                }
            }
        }
        Ok(Self {
            db,
            pending: Arc::new(Mutex::new(pending)),
            recent: Arc::new(Mutex::new(Recent::default())),
        })
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shard moves of this log that may not be applied yet.
    pub fn pending_moves(&self) -> SharedPendingMoves {
        self.pending.clone()
    }

    fn note(&self, f: impl FnOnce(&mut PendingMoves)) {
        f(&mut self.pending.lock().unwrap_or_else(PoisonError::into_inner));
    }

    /// Resolves once every handle on the database has been dropped (see [`DbClosed`]).
    pub fn closed(&self) -> DbClosed {
        self.db.closed()
    }

    async fn get_meta<T>(&self, key: &'static str) -> Result<Option<T>, StoreError>
    where
        T: DeserializeOwned + Send + 'static,
    {
        blocking(&self.db, move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(META)?;
            match table.get(key)? {
                Some(v) => Ok(Some(decode(key, v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn put_meta<T>(
        &self,
        key: &'static str,
        value: Option<&T>,
        durability: Durability,
    ) -> Result<(), StoreError>
    where
        T: Serialize,
    {
        let bytes = value.map(|v| encode(key, v)).transpose()?;
        let dbh = self.db.clone();
        blocking(&self.db, move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(durability)?;
            dbh.write_committed(&txn)?;
            {
                let mut table = txn.open_table(META)?;
                match bytes {
                    Some(b) => table.insert(key, b.as_slice())?,
                    None => table.remove(key)?,
                };
            }
            txn.commit()?;
            Ok(())
        })
        .await
    }
}

/// The term of the leader that appended `entry`.
fn term_of(entry: &Entry) -> u64 {
    entry.log_id().committed_leader_id().term
}

/// `[lo, hi)` of a range of indexes, `hi == None` for unbounded; `None` if empty.
fn index_bounds<RB: RangeBounds<u64>>(range: &RB) -> Option<(u64, Option<u64>)> {
    let lo = match range.start_bound() {
        Bound::Included(&x) => x,
        Bound::Excluded(&x) => x.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let hi = match range.end_bound() {
        Bound::Included(&x) => x.checked_add(1),
        Bound::Excluded(&x) => Some(x),
        Bound::Unbounded => None,
    };
    match hi {
        Some(hi) if hi <= lo => None,
        _ => Some((lo, hi)),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let Some((lo, hi)) = index_bounds(&range) else {
            return Ok(Vec::new());
        };
        let started = Instant::now();
        if let Some(entries) = self.recent().get(lo, hi) {
            STATS.log_cached.since(entries.len() as u64, 0, started);
            return Ok(entries);
        }
        let entries = blocking(&self.db, move |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(LOG)?;
            let iter = match hi {
                Some(hi) => table.range(lo..hi)?,
                None => table.range(lo..)?,
            };
            let mut out = Vec::new();
            for item in iter {
                let (k, v) = item?;
                let entry: Entry = decode("log entry", v.value())?;
                if entry.index() != k.value() {
                    return Err(StoreError::MisplacedEntry {
                        key: k.value(),
                        found: entry.index(),
                    });
                }
                out.push(entry);
            }
            Ok(out)
        })
        .await?;
        STATS.log_read.since(entries.len() as u64, 0, started);
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        Ok(self.get_meta(KEY_VOTE).await?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED).await?;
        let last = blocking(&self.db, |db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(LOG)?;
            match table.last()? {
                Some((_, v)) => Ok(Some(decode::<Entry>("log entry", v.value())?.log_id())),
                None => Ok(None),
            }
        })
        .await?;
        Ok(LogState {
            last_log_id: last.or(last_purged_log_id),
            last_purged_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        Ok(self
            .put_meta(KEY_VOTE, Some(vote), Durability::Immediate)
            .await?)
    }

    /// Noted in memory, not committed: the Raft core awaits this before every apply, and a
    /// transaction of its own (a blocking-pool hop) on every node for every commit advance only
    /// made the id durable at the next durable commit anyway, which now writes it itself
    /// ([`Db::write_committed`](super::Db::write_committed)).
    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // openraft never takes the committed id back; a `None` has nothing to remember.
        if let Some(id) = committed {
            self.db.note_committed(encode(KEY_COMMITTED, &id)?);
        }
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        if let Some(bytes) = self.db.unwritten_committed() {
            return Ok(Some(decode(KEY_COMMITTED, &bytes)?));
        }
        Ok(self.get_meta(KEY_COMMITTED).await?)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = Instant::now();
        let mut moves: Vec<(u64, u64, crate::command::Command)> = Vec::new();
        let entries: Vec<Entry> = entries.into_iter().collect();
        let encoded = entries
            .iter()
            .map(|e| {
                if let EntryPayload::Normal(cmd @ crate::command::Command::MoveShards { .. }) =
                    &e.payload
                {
                    moves.push((e.index(), term_of(e), cmd.clone()));
                }
                Ok((e.index(), encode("log entry", e)?))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let sizes: Vec<usize> = encoded.iter().map(|(_, b)| b.len()).collect();

        let count = encoded.len() as u64;
        let bytes: u64 = encoded.iter().map(|(_, b)| b.len() as u64).sum();
        // Written and fsynced before returning: the entries are readable at return, as openraft
        // requires, and persisted when the callback runs.
        let dbh = self.db.clone();
        blocking(&self.db, move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::Immediate)?;
            dbh.write_committed(&txn)?;
            {
                let mut table = txn.open_table(LOG)?;
                for (index, bytes) in &encoded {
                    table.insert(*index, bytes.as_slice())?;
                }
            }
            let t = Instant::now();
            txn.commit()?;
            STATS.fsync.since(1, 0, t);
            Ok(())
        })
        .await?;
        STATS.log_append.since(count, bytes, started);
        // Readable from memory once readable from the log (the replication and apply reads that
        // follow come for these entries).
        self.recent().appended(entries.into_iter().zip(sizes));
        // Noted once written and before openraft hears of it, so before the entry can count
        // towards a commit (openraft truncates a conflicting tail before it appends over it).
        if !moves.is_empty() {
            self.note(|p| {
                for (i, term, cmd) in &moves {
                    p.appended(*i, *term, cmd);
                }
            });
        }
        callback.io_completed(Ok(()));
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = match &last_log_id {
            Some(id) => id.index().saturating_add(1),
            None => 0,
        };
        tracing::debug!(from, "truncating the raft log");
        self.note(|p| p.truncated(from));
        self.recent().truncated(from);
        blocking(&self.db, move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::None)?;
            {
                let mut table = txn.open_table(LOG)?;
                table.retain_in(from.., |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let upto = log_id.index();
        tracing::debug!(upto, "purging the raft log");
        let purged = encode(KEY_LAST_PURGED, &log_id)?;
        self.recent().purged(upto);
        blocking(&self.db, move |db| {
            let mut txn = db.begin_write()?;
            txn.set_durability(Durability::None)?;
            {
                // Record the purge point with the removal, in one transaction: no hole is ever
                // visible.
                let mut meta = txn.open_table(META)?;
                meta.insert(KEY_LAST_PURGED, purged.as_slice())?;
                let mut table = txn.open_table(LOG)?;
                table.retain_in(..=upto, |_, _| false)?;
            }
            txn.commit()?;
            Ok(())
        })
        .await?;
        self.note(|p| p.purged(upto));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::index_bounds;

    #[test]
    fn bounds() {
        assert_eq!(index_bounds(&(3..7)), Some((3, Some(7))));
        assert_eq!(index_bounds(&(3..=7)), Some((3, Some(8))));
        assert_eq!(index_bounds(&(3..)), Some((3, None)));
        assert_eq!(index_bounds(&(..)), Some((0, None)));
        assert_eq!(index_bounds(&(5..5)), None);
        #[allow(clippy::reversed_empty_ranges)]
        let reversed = 7..3;
        assert_eq!(index_bounds(&reversed), None);
        assert_eq!(index_bounds(&(0..=u64::MAX)), Some((0, None)));
    }
}
