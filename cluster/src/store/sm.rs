//! The state machine: openraft's `RaftStateMachine` and `RaftSnapshotBuilder` over the pure
//! [`State`].
//!
//! The applied state lives in memory (readers need it fast: the shard map on every SIP message,
//! a shard's dialogs at failover). It is made durable by the log and the snapshot:
//! - a snapshot serializes the whole `State` with the last applied log id and membership and is
//!   stored in the `sm_snapshot` table (fsynced) before openraft may purge the log it covers;
//! - at start, [`open`](super::open) restores the last snapshot, and openraft re-applies
//!   the log entries after it up to the committed log id that the log store kept.
//!
//! So a dialog record is written twice (log, then the next snapshot), never once per apply.
//!
//! Installing a snapshot (from the leader, on a lagging node) stores it and replaces the state.

use std::io;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use futures_util::{Stream, TryStreamExt};
use openraft::entry::RaftEntry;
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder};
use redb::{Database, Durability, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{
    Db, DbClosed, KEY_SNAPSHOT_DATA, KEY_SNAPSHOT_META, SNAPSHOT, StoreError, blocking, decode,
    encode,
};
use crate::command::CommandResult;
use crate::state::{self, State};
use crate::typ::{
    Entry, LogId, Snapshot, SnapshotData, SnapshotMeta, StoredMembership, TypeConfig,
};

/// The snapshot data format: an envelope around the state, versioned for later changes.
#[derive(Serialize, Deserialize)]
struct SnapshotEnvelope {
    format: u32,
    state: State,
}

/// 1: JSON (base64 records), read only; 2: the binary form of [`crate::codec`].
const SNAPSHOT_FORMAT: u32 = 2;

fn encode_state(state: &State) -> Result<Vec<u8>, StoreError> {
    #[derive(Serialize)]
    struct Borrowed<'a> {
        format: u32,
        state: &'a State,
    }
    encode(
        "snapshot",
        &Borrowed {
            format: SNAPSHOT_FORMAT,
            state,
        },
    )
}

fn decode_state(bytes: &[u8]) -> Result<State, StoreError> {
    let envelope: SnapshotEnvelope = decode("snapshot", bytes)?;
    Ok(envelope.state)
}

/// Whether applying `entry` changes what a restarted node must never see go back: membership,
/// nodes, the shard map, the configuration (everything but dialog records and no-ops).
fn is_control(entry: &Entry) -> bool {
    match &entry.payload {
        EntryPayload::Blank => false,
        EntryPayload::Membership(_) => true,
        EntryPayload::Normal(c) => !matches!(
            c,
            crate::command::Command::DialogBatch { .. }
                | crate::command::Command::OwnerDialogBatch { .. }
                | crate::command::Command::Noop
        ),
    }
}

/// The applied state and where it stands in the log.
#[derive(Debug, Default)]
struct Applied {
    state: State,
    last_applied: Option<LogId>,
    membership: StoredMembership,
}

impl Applied {
    fn apply_entry(&mut self, entry: Entry) -> CommandResult {
        let log_id = entry.log_id();
        let result = match entry.payload {
            EntryPayload::Blank => CommandResult::Done,
            EntryPayload::Normal(command) => state::apply(&mut self.state, command),
            EntryPayload::Membership(membership) => {
                self.membership = StoredMembership::new(Some(log_id), membership);
                CommandResult::Done
            }
        };
        self.last_applied = Some(log_id);
        result
    }
}

type Shared = Arc<RwLock<Applied>>;

fn read(shared: &Shared) -> RwLockReadGuard<'_, Applied> {
    // A panic while holding the lock cannot leave `Applied` half-changed in a way a reader
    // could misuse more than a crash would; keep serving.
    shared.read().unwrap_or_else(PoisonError::into_inner)
}

fn write(shared: &Shared) -> RwLockWriteGuard<'_, Applied> {
    shared.write().unwrap_or_else(PoisonError::into_inner)
}

/// A read handle on the applied state, for the rest of the node (shard lookups, failover).
/// Cheap to clone; never blocks the apply loop for longer than the closure runs.
#[derive(Debug, Clone)]
pub struct StateReader {
    shared: Shared,
}

impl StateReader {
    /// Runs `f` on the applied state. Keep `f` short: apply waits for it.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&read(&self.shared).state)
    }

    /// A copy of the applied state.
    pub fn state(&self) -> State {
        read(&self.shared).state.clone()
    }

    /// The id of the last applied log entry.
    pub fn last_applied(&self) -> Option<LogId> {
        read(&self.shared).last_applied
    }
}

/// The state machine openraft drives.
#[derive(Debug)]
pub struct StateMachineStore {
    db: Arc<Db>,
    shared: Shared,
}

impl StateMachineStore {
    /// Loads the last snapshot from the database (an empty state if there is none).
    pub(crate) fn load(db: Arc<Db>) -> Result<Self, StoreError> {
        let applied = match read_snapshot(&db)? {
            Some((meta, data)) => Applied {
                state: decode_state(&data)?,
                last_applied: meta.last_log_id,
                membership: meta.last_membership,
            },
            None => Applied::default(),
        };
        Ok(Self {
            db,
            shared: Arc::new(RwLock::new(applied)),
        })
    }

    /// Resolves once every handle on the database has been dropped (see [`DbClosed`]).
    pub fn closed(&self) -> DbClosed {
        self.db.closed()
    }

    /// A read handle on the applied state.
    pub fn reader(&self) -> StateReader {
        StateReader {
            shared: self.shared.clone(),
        }
    }
}

fn read_snapshot(db: &Database) -> Result<Option<(SnapshotMeta, SnapshotData)>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(SNAPSHOT)?;
    let meta = table.get(KEY_SNAPSHOT_META)?;
    let data = table.get(KEY_SNAPSHOT_DATA)?;
    match (meta, data) {
        (Some(meta), Some(data)) => Ok(Some((
            decode("snapshot meta", meta.value())?,
            data.value().to_vec(),
        ))),
        _ => Ok(None),
    }
}

/// Stores a snapshot, fsynced. With `only_if_newer`, keeps a stored snapshot that covers more
/// of the log (a snapshot built concurrently with an install must not replace it).
async fn store_snapshot(
    db: &Arc<Db>,
    meta: &SnapshotMeta,
    data: SnapshotData,
    only_if_newer: bool,
) -> Result<(), StoreError> {
    let meta_bytes = encode("snapshot meta", meta)?;
    let last = meta.last_log_id;
    blocking(db, move |db| {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        {
            let mut table = txn.open_table(SNAPSHOT)?;
            let stored: Option<SnapshotMeta> = match table.get(KEY_SNAPSHOT_META)? {
                Some(v) => Some(decode("snapshot meta", v.value())?),
                None => None,
            };
            let keep_stored = only_if_newer && stored.is_some_and(|s| s.last_log_id > last);
            if !keep_stored {
                table.insert(KEY_SNAPSHOT_META, meta_bytes.as_slice())?;
                table.insert(KEY_SNAPSHOT_DATA, data.as_slice())?;
            }
        }
        txn.commit()?;
        Ok(())
    })
    .await
}

impl RaftStateMachine<TypeConfig> for StateMachineStore {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let applied = read(&self.shared);
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut control = false;
        while let Some((entry, responder)) = entries.try_next().await? {
            control |= is_control(&entry);
            let t = tokio::time::Instant::now();
            let result = write(&self.shared).apply_entry(entry);
            crate::stats::STATS.apply.since(1, 0, t);
            if let Some(responder) = responder {
                responder.send(result);
            }
        }
        if control {
            // The log store saves the committed log id without an fsync; a restart re-applies only
            // up to the id it finds. For dialog records that is fine (the leader brings the rest),
            // but a node must never come back showing an older shard map, membership or
            // configuration than it had applied (configuration versions only grow on every node).
            // A durable commit persists the earlier non-durable ones: one fsync per control entry,
            // which is rare.
            blocking(&self.db, |db| {
                let mut txn = db.begin_write()?;
                txn.set_durability(Durability::Immediate)?;
                txn.commit()?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            shared: self.shared.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotData,
    ) -> Result<(), io::Error> {
        let started = tokio::time::Instant::now();
        let bytes = snapshot.len() as u64;
        let state = decode_state(&snapshot)?;
        store_snapshot(&self.db, meta, snapshot, false).await?;
        crate::stats::STATS
            .snapshot_install
            .since(1, bytes, started);
        let mut applied = write(&self.shared);
        applied.state = state;
        applied.last_applied = meta.last_log_id;
        applied.membership = meta.last_membership.clone();
        tracing::info!(last_log_id = ?meta.last_log_id, "installed a snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let stored = blocking(&self.db, read_snapshot).await?;
        Ok(stored.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}

/// Builds a snapshot of the applied state: copies it under the read lock, then serializes and
/// stores it off the apply path.
#[derive(Debug)]
pub struct SnapshotBuilder {
    db: Arc<Db>,
    shared: Shared,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let started = tokio::time::Instant::now();
        let (state, meta) = {
            let applied = read(&self.shared);
            (
                applied.state.clone(),
                SnapshotMeta {
                    last_log_id: applied.last_applied,
                    last_membership: applied.membership.clone(),
                },
            )
        };
        let data = tokio::task::spawn_blocking(move || encode_state(&state))
            .await
            .map_err(StoreError::from)??;
        store_snapshot(&self.db, &meta, data.clone(), true).await?;
        crate::stats::STATS
            .snapshot_build
            .since(1, data.len() as u64, started);
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = data.len(), "built a snapshot");
        Ok(Snapshot {
            meta,
            snapshot: data,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use openraft::testing::log_id;

    use super::*;
    use crate::command::Command;

    fn meta(index: u64) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: Some(log_id::<TypeConfig>(1, 1, index)),
            last_membership: StoredMembership::default(),
        }
    }

    #[tokio::test]
    async fn a_stale_built_snapshot_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let (_log, sm) = crate::store::open(dir.path()).unwrap();
        let newer = encode_state(&State::default()).unwrap();
        store_snapshot(&sm.db, &meta(10), newer.clone(), false)
            .await
            .unwrap();

        let mut older_state = State::default();
        state::apply(&mut older_state, Command::Bootstrap { shard_count: 2 });
        let older = encode_state(&older_state).unwrap();
        // A builder that copied the state before an install finished: ignored.
        store_snapshot(&sm.db, &meta(5), older.clone(), true)
            .await
            .unwrap();
        let (m, d) = read_snapshot(&sm.db).unwrap().unwrap();
        assert_eq!(m.last_log_id.unwrap().index, 10);
        assert_eq!(d, newer);

        // An install always replaces (openraft decided it is the one to keep).
        store_snapshot(&sm.db, &meta(5), older.clone(), false)
            .await
            .unwrap();
        let (m, d) = read_snapshot(&sm.db).unwrap().unwrap();
        assert_eq!(m.last_log_id.unwrap().index, 5);
        assert_eq!(decode_state(&d).unwrap(), older_state);
    }

    #[test]
    fn snapshot_data_is_versioned_and_the_json_of_format_1_still_reads() {
        #[derive(Deserialize)]
        struct Format {
            format: u32,
        }
        let mut s = State::default();
        state::apply(&mut s, Command::Bootstrap { shard_count: 4 });
        state::apply(
            &mut s,
            Command::DialogBatch {
                upserts: vec![
                    (1, "a@h".into(), vec![1, 2, 3]),
                    (3, "b@h".into(), vec![0; 900]),
                ],
                removes: vec![],
            },
        );
        let data = encode_state(&s).unwrap();
        assert!(crate::codec::is_binary(&data));
        let f: Format = crate::codec::from_slice(&data).unwrap();
        assert_eq!(f.format, SNAPSHOT_FORMAT);
        assert_eq!(decode_state(&data).unwrap(), s);
        // What the previous version stored and sent: JSON, records in base64.
        let old = serde_json::to_vec(&serde_json::json!({ "format": 1, "state": &s })).unwrap();
        assert_eq!(decode_state(&old).unwrap(), s);
        assert!(data.len() < old.len(), "{} vs {}", data.len(), old.len());
        assert!(decode_state(b"{\"format\":1}").is_err());
    }
}
