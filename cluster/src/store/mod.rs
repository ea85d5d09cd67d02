//! On-disk storage of a node's Raft data: one redb database file in the node's data directory.
//!
//! ```text
//!  <data_dir>/raft.redb
//!    raft_log     u64 index -> Entry                 LogStore: append, truncate, purge, read
//!    raft_meta    "vote" | "committed" | "last_purged" -> value
//!    sm_snapshot  "meta" -> SnapshotMeta, "data" -> serialized State
//! ```
//!
//! Values are written in the binary form of [`crate::codec`] (tagged CBOR); the JSON that earlier
//! versions wrote is still read, so a data directory from the previous version opens as it is and
//! is rewritten piece by piece (new entries, the next snapshot).
//!
//! [`open`] creates the directory and the tables and hands out the two halves openraft wants: the
//! [`LogStore`] and the [`StateMachineStore`]. Both share the database; redb runs one write
//! transaction at a time and commits them in order, so a commit with
//! [`Durability::Immediate`](redb::Durability::Immediate) (a log append, a vote, a snapshot)
//! also makes every earlier commit durable. The committed log id is not a commit of its own: each
//! durable commit carries the latest one openraft saved ([`Db::write_committed`]).
//!
//! Every redb call runs on tokio's blocking pool (`spawn_blocking`), so an fsync never stalls
//! the Raft core or the runtime's workers.

pub mod log;
pub mod pending;
pub mod recent;
pub mod sm;

use std::io;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{Database, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::codec::{self, CodecError};

pub use self::log::LogStore;
pub use self::pending::PendingMoves;
pub use self::sm::{SnapshotBuilder, StateMachineStore, StateReader};

/// A running Raft node over our storage.
pub type Raft = openraft::Raft<crate::typ::TypeConfig, StateMachineStore>;

/// The database file's name inside the data directory.
pub const DB_FILE: &str = "raft.redb";

/// Log entries by index.
pub(crate) const LOG: TableDefinition<'static, u64, &[u8]> = TableDefinition::new("raft_log");
/// Vote, committed log id, last purged log id.
pub(crate) const META: TableDefinition<'static, &str, &[u8]> = TableDefinition::new("raft_meta");
/// The current snapshot: its meta and its data.
pub(crate) const SNAPSHOT: TableDefinition<'static, &str, &[u8]> =
    TableDefinition::new("sm_snapshot");

pub(crate) const KEY_VOTE: &str = "vote";
pub(crate) const KEY_COMMITTED: &str = "committed";
pub(crate) const KEY_LAST_PURGED: &str = "last_purged";
pub(crate) const KEY_SNAPSHOT_META: &str = "meta";
pub(crate) const KEY_SNAPSHOT_DATA: &str = "data";

/// What can go wrong with the store. openraft sees these as `io::Error`s
/// ([`ErrorKind::InvalidData`](io::ErrorKind::InvalidData) for a decoding failure,
/// [`ErrorKind::Other`](io::ErrorKind::Other) otherwise) with this error inside.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The database file could not be opened (or is held by another process or handle).
    #[error("cannot open raft database {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: redb::DatabaseError,
    },
    /// A transaction could not begin.
    #[error("raft database transaction: {0}")]
    Transaction(#[from] redb::TransactionError),
    /// A table could not be opened.
    #[error("raft database table: {0}")]
    Table(#[from] redb::TableError),
    /// Reading or writing failed.
    #[error("raft database I/O: {0}")]
    Storage(#[from] redb::StorageError),
    /// A commit failed.
    #[error("raft database commit: {0}")]
    Commit(#[from] redb::CommitError),
    /// Changing a transaction's durability failed.
    #[error("raft database durability: {0}")]
    Durability(#[from] redb::SetDurabilityError),
    /// A value could not be serialized.
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// Which value.
        what: &'static str,
        /// Why.
        source: CodecError,
    },
    /// A stored value could not be read back.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// Which value.
        what: &'static str,
        /// Why.
        source: CodecError,
    },
    /// The log holds an entry under the wrong index.
    #[error("log key {key} holds the entry of index {found}")]
    MisplacedEntry {
        /// The key.
        key: u64,
        /// The index inside the entry.
        found: u64,
    },
    /// The blocking task running a storage call died.
    #[error("storage task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl From<StoreError> for io::Error {
    fn from(e: StoreError) -> io::Error {
        let kind = match e {
            StoreError::Decode { .. } | StoreError::MisplacedEntry { .. } => {
                io::ErrorKind::InvalidData
            }
            _ => io::ErrorKind::Other,
        };
        io::Error::new(kind, e)
    }
}

/// The open database. Its file stays locked until the last handle (log store, its readers, the
/// state machine, snapshot builders) is dropped; then `closed` tells [`DbClosed`] waiters.
///
/// It also holds the committed log id openraft saved last and no transaction has written yet
/// ([`Db::note_committed`]): every durable commit writes it first ([`Db::write_committed`]), and so
/// does the close. A separate non-durable commit per commit advance (a blocking-pool hop awaited by
/// the Raft core, on every node, for every committed entry) bought nothing more: redb persists a
/// non-durable commit only with the next durable one, which now carries the id itself.
#[derive(Debug)]
pub(crate) struct Db {
    db: Database,
    /// The encoded committed log id not yet written to [`META`].
    committed: std::sync::Mutex<Option<Vec<u8>>>,
    // Declared after `db`: dropped after the database is closed.
    closed: watch::Sender<()>,
}

impl Deref for Db {
    type Target = Database;
    fn deref(&self) -> &Database {
        &self.db
    }
}

impl Db {
    pub(crate) fn new(db: Database) -> Db {
        Db {
            db,
            committed: std::sync::Mutex::new(None),
            closed: watch::channel(()).0,
        }
    }

    fn closed(&self) -> DbClosed {
        DbClosed(self.closed.subscribe())
    }

    fn pending_committed(&self) -> std::sync::MutexGuard<'_, Option<Vec<u8>>> {
        self.committed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Remembers the committed log id (encoded) for the next transaction that writes it.
    pub(crate) fn note_committed(&self, bytes: Vec<u8>) {
        *self.pending_committed() = Some(bytes);
    }

    /// The committed log id noted and not yet written, if any.
    pub(crate) fn unwritten_committed(&self) -> Option<Vec<u8>> {
        self.pending_committed().clone()
    }

    /// Writes the noted committed log id into `txn` (call it inside a write transaction: redb runs
    /// one at a time, so the ids reach the file in the order they were noted, and they only grow).
    pub(crate) fn write_committed(&self, txn: &redb::WriteTransaction) -> Result<(), StoreError> {
        let Some(bytes) = self.pending_committed().take() else {
            return Ok(());
        };
        let mut meta = txn.open_table(META)?;
        meta.insert(KEY_COMMITTED, bytes.as_slice())?;
        Ok(())
    }
}

impl Drop for Db {
    /// On the way out, the noted committed id is written (redb's close makes it durable), as its
    /// own non-durable commit used to be: a node stopped cleanly re-applies up to it at start.
    fn drop(&mut self) {
        if self.pending_committed().is_none() {
            return;
        }
        let written = self
            .db
            .begin_write()
            .map_err(StoreError::from)
            .and_then(|txn| {
                self.write_committed(&txn)?;
                txn.commit()?;
                Ok(())
            });
        if let Err(e) = written {
            tracing::warn!(error = %e, "the committed log id was not saved at close");
        }
    }
}

/// Resolves once the database file is closed, i.e. every handle on it has been dropped.
///
/// openraft releases the storage from its own tasks shortly after `Raft::shutdown` returns; a
/// process that reopens the same data directory (an in-process restart, a test) waits on this
/// first, or [`open`] fails with `DatabaseAlreadyOpen`.
#[derive(Debug, Clone)]
pub struct DbClosed(watch::Receiver<()>);

impl DbClosed {
    /// Waits for the database to be closed.
    pub async fn wait(mut self) {
        // `changed` fails only once the sender, dropped after the database, is gone.
        while self.0.changed().await.is_ok() {}
    }
}

/// Opens (creating if needed) the Raft database in `data_dir` and returns the log store and the
/// state machine, the latter loaded from the last snapshot. openraft then re-applies the
/// committed log entries after it (the log store keeps the committed log id for that).
pub fn open(data_dir: &Path) -> Result<(LogStore, StateMachineStore), StoreError> {
    std::fs::create_dir_all(data_dir).map_err(|source| StoreError::CreateDir {
        path: data_dir.to_owned(),
        source,
    })?;
    let path = data_dir.join(DB_FILE);
    let db = Database::create(&path).map_err(|source| StoreError::Open {
        path: path.clone(),
        source,
    })?;
    // Create the tables so that read transactions find them.
    let txn = db.begin_write()?;
    txn.open_table(LOG)?;
    txn.open_table(META)?;
    txn.open_table(SNAPSHOT)?;
    txn.commit()?;

    let db = Arc::new(Db::new(db));
    let sm = StateMachineStore::load(db.clone())?;
    Ok((LogStore::new(db)?, sm))
}

/// Runs a redb call on the blocking pool.
pub(crate) async fn blocking<T, F>(db: &Arc<Db>, f: F) -> Result<T, StoreError>
where
    F: FnOnce(&Database) -> Result<T, StoreError> + Send + 'static,
    T: Send + 'static,
{
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&db.db)).await?
}

pub(crate) fn encode<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StoreError> {
    codec::to_vec(value).map_err(|source| StoreError::Encode { what, source })
}

pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, StoreError> {
    codec::from_slice(bytes).map_err(|source| StoreError::Decode { what, source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::storage::{RaftLogStorage, RaftStateMachine};
    use openraft::testing::log_id;
    use openraft::{EntryPayload, RaftLogReader};
    use redb::Durability;

    use super::*;
    use crate::command::Command;
    use crate::state::{self, State};
    use crate::typ::{Entry, SnapshotMeta, StoredMembership, TypeConfig, Vote};

    /// A data directory as the previous version wrote it (every value JSON, records in base64)
    /// opens, and its entries, vote and snapshot read back as they were.
    #[tokio::test]
    async fn a_store_written_by_the_previous_version_still_opens() {
        let dir = tempfile::tempdir().unwrap();
        let mut snap_state = State::default();
        state::apply(&mut snap_state, Command::Bootstrap { shard_count: 8 });
        state::apply(
            &mut snap_state,
            Command::DialogBatch {
                upserts: vec![(2, "old@h".into(), vec![7; 500])],
                removes: vec![],
            },
        );
        let meta = SnapshotMeta {
            last_log_id: Some(log_id::<TypeConfig>(1, 1, 4)),
            last_membership: StoredMembership::default(),
        };
        let entries: Vec<Entry> = (5..8)
            .map(|i| Entry {
                log_id: log_id::<TypeConfig>(1, 1, i),
                payload: EntryPayload::Normal(Command::DialogBatch {
                    upserts: vec![(3, format!("c{i}@h"), vec![i as u8; 300])],
                    removes: vec![],
                }),
            })
            .collect();
        let vote = Vote::new(1, 1);
        {
            std::fs::create_dir_all(dir.path()).unwrap();
            let db = Database::create(dir.path().join(DB_FILE)).unwrap();
            let mut txn = db.begin_write().unwrap();
            txn.set_durability(Durability::Immediate).unwrap();
            {
                let mut log = txn.open_table(LOG).unwrap();
                for e in &entries {
                    log.insert(e.log_id.index, serde_json::to_vec(e).unwrap().as_slice())
                        .unwrap();
                }
                let mut meta_t = txn.open_table(META).unwrap();
                meta_t
                    .insert(KEY_VOTE, serde_json::to_vec(&vote).unwrap().as_slice())
                    .unwrap();
                let mut snap = txn.open_table(SNAPSHOT).unwrap();
                snap.insert(
                    KEY_SNAPSHOT_META,
                    serde_json::to_vec(&meta).unwrap().as_slice(),
                )
                .unwrap();
                let data =
                    serde_json::to_vec(&serde_json::json!({ "format": 1, "state": &snap_state }))
                        .unwrap();
                snap.insert(KEY_SNAPSHOT_DATA, data.as_slice()).unwrap();
            }
            txn.commit().unwrap();
        }
        let (mut log, mut sm) = open(dir.path()).unwrap();
        assert_eq!(log.read_vote().await.unwrap(), Some(vote));
        assert_eq!(log.try_get_log_entries(0..100).await.unwrap(), entries);
        let st = log.get_log_state().await.unwrap();
        assert_eq!(st.last_log_id.map(|l| l.index), Some(7));
        assert_eq!(sm.reader().state(), snap_state);
        assert_eq!(
            sm.applied_state().await.unwrap().0.map(|l| l.index),
            Some(4)
        );
        // New writes go in the binary form, next to the old JSON ones.
        let next = Entry {
            log_id: log_id::<TypeConfig>(1, 1, 8),
            payload: EntryPayload::Normal(Command::Noop),
        };
        log.append(
            vec![next.clone()],
            openraft::storage::IOFlushed::<TypeConfig>::noop(),
        )
        .await
        .unwrap();
        let all = log.try_get_log_entries(5..9).await.unwrap();
        assert_eq!(all.len(), 4);
        assert_eq!(all[3], next);
    }
}
