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
//! Control state is durable before it is visible: the committed log id is saved without an fsync
//! (a restart re-applies only up to the id it finds), so before a control entry (membership, nodes,
//! the shard map, the configuration: everything but dialog records and no-ops) changes the shared
//! state, one durable commit makes the saved committed id — which openraft wrote before it asked
//! for the apply — survive a crash. What a node reads, reports or acts on is then never taken back by
//! a restart (a node reported configuration version 10, was SIGKILLed before the fsync that
//! followed the apply, and came back showing 9). Dialog records need no such fsync: the leader
//! brings the rest.
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
use tokio::sync::watch;

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
    control: Arc<watch::Sender<u64>>,
}

impl StateReader {
    /// Runs `f` on the applied state. Keep `f` short: apply waits for it.
    pub fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        f(&read(&self.shared).state)
    }

    /// A receiver that sees a change after each applied control entry (membership, nodes, the
    /// shard map, the configuration, gateway states, the capacity division: everything but dialog
    /// records and no-ops) and each installed snapshot. Tasks that follow the control state wait on
    /// this rather than on every change of Raft's metrics, which under load change with each
    /// append, acknowledgement and apply of a dialog entry.
    pub fn control_changes(&self) -> watch::Receiver<u64> {
        self.control.subscribe()
    }

    /// A copy of the applied state.
    pub fn state(&self) -> State {
        read(&self.shared).state.clone()
    }

    /// Runs `f` on the applied state and the id of the last entry it reflects (one read).
    pub fn read_applied<R>(&self, f: impl FnOnce(&State, Option<LogId>) -> R) -> R {
        let a = read(&self.shared);
        f(&a.state, a.last_applied)
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
    /// Bumped after each applied control entry and installed snapshot ([`StateReader::control_changes`]).
    control: Arc<watch::Sender<u64>>,
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
            control: Arc::new(watch::Sender::new(0)),
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
            control: self.control.clone(),
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
    let dbh = db.clone();
    blocking(db, move |db| {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        dbh.write_committed(&txn)?;
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

/// One durable (fsynced) commit of the committed log id openraft saved before this apply (and of
/// every earlier non-durable commit: redb commits in order), so that it survives a crash. One
/// fsync per apply batch that holds a control entry, which is rare.
async fn make_committed_durable(db: &Arc<Db>) -> Result<(), StoreError> {
    let dbh = db.clone();
    blocking(db, move |db| {
        let mut txn = db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        dbh.write_committed(&txn)?;
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
        // Whether the committed log id openraft saved (without an fsync) before this apply is
        // durable yet: made so before the first control entry changes the shared state.
        let mut durable = false;
        while let Some((entry, responder)) = entries.try_next().await? {
            let control = is_control(&entry);
            if !durable && control {
                make_committed_durable(&self.db).await?;
                durable = true;
            }
            let t = tokio::time::Instant::now();
            let result = write(&self.shared).apply_entry(entry);
            crate::stats::STATS.apply.since(1, 0, t);
            if control {
                self.control.send_modify(|v| *v = v.wrapping_add(1));
            }
            if let Some(responder) = responder {
                responder.send(result);
            }
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
        drop(applied);
        self.control.send_modify(|v| *v = v.wrapping_add(1));
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

    /// A disk in memory that models a crash: what was written before the last completed
    /// `sync_data` survives ([`CrashDisk::crash_image`]), nothing after. With `hold`, the next
    /// sync waits until `release`.
    #[derive(Debug, Default)]
    struct CrashDisk {
        inner: std::sync::Mutex<Platters>,
        changed: std::sync::Condvar,
    }

    #[derive(Debug, Default)]
    struct Platters {
        written: Vec<u8>,
        durable: Vec<u8>,
        hold: bool,
        /// A sync is waiting on `hold`.
        held: bool,
    }

    impl CrashDisk {
        fn of(image: Vec<u8>) -> Arc<CrashDisk> {
            Arc::new(CrashDisk {
                inner: std::sync::Mutex::new(Platters {
                    written: image.clone(),
                    durable: image,
                    ..Platters::default()
                }),
                changed: std::sync::Condvar::new(),
            })
        }
        fn platters(&self) -> std::sync::MutexGuard<'_, Platters> {
            self.inner.lock().unwrap()
        }
        fn crash_image(&self) -> Vec<u8> {
            self.platters().durable.clone()
        }
        /// Everything written, synced or not (the disk after a clean close).
        fn written_image(&self) -> Vec<u8> {
            self.platters().written.clone()
        }
        fn hold(&self) {
            self.platters().hold = true;
        }
        fn release(&self) {
            self.platters().hold = false;
            self.changed.notify_all();
        }
        /// Waits (up to 10 s) until a sync is held.
        fn wait_held(&self) -> bool {
            let guard = self.platters();
            let (guard, _) = self
                .changed
                .wait_timeout_while(guard, std::time::Duration::from_secs(10), |p| !p.held)
                .unwrap();
            guard.held
        }
    }

    /// Releases a held disk when dropped, also when an assertion fails while a sync is held (the
    /// runtime would otherwise wait for that blocked sync forever, and the test hang, not fail).
    struct ReleaseOnDrop(Arc<CrashDisk>);

    impl Drop for ReleaseOnDrop {
        fn drop(&mut self) {
            self.0.release();
        }
    }

    /// redb owns its backend: this shares one disk between a database and the test.
    #[derive(Debug)]
    struct Drive(Arc<CrashDisk>);

    fn beyond_end() -> io::Error {
        io::Error::new(io::ErrorKind::UnexpectedEof, "beyond the end of the disk")
    }

    impl redb::StorageBackend for Drive {
        fn len(&self) -> Result<u64, io::Error> {
            Ok(self.0.platters().written.len() as u64)
        }
        fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
            let p = self.0.platters();
            let at = usize::try_from(offset).map_err(|_| beyond_end())?;
            let from = p.written.get(at..at + out.len()).ok_or_else(beyond_end)?;
            out.copy_from_slice(from);
            Ok(())
        }
        fn set_len(&self, len: u64) -> Result<(), io::Error> {
            let len = usize::try_from(len).map_err(|_| beyond_end())?;
            self.0.platters().written.resize(len, 0);
            Ok(())
        }
        fn sync_data(&self) -> Result<(), io::Error> {
            let mut p = self.0.platters();
            while p.hold {
                p.held = true;
                self.0.changed.notify_all();
                p = self.0.changed.wait(p).unwrap();
            }
            p.held = false;
            p.durable = p.written.clone();
            Ok(())
        }
        fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
            let mut p = self.0.platters();
            let at = usize::try_from(offset).map_err(|_| beyond_end())?;
            let to = p
                .written
                .get_mut(at..at + data.len())
                .ok_or_else(beyond_end)?;
            to.copy_from_slice(data);
            Ok(())
        }
    }

    /// Opens the store on a disk, as [`crate::store::open`] does on a file.
    fn open_on(disk: &Arc<CrashDisk>) -> (crate::store::LogStore, StateMachineStore) {
        let db = Database::builder()
            .create_with_backend(Drive(disk.clone()))
            .unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(crate::store::LOG).unwrap();
        txn.open_table(crate::store::META).unwrap();
        txn.open_table(SNAPSHOT).unwrap();
        txn.commit().unwrap();
        let db = Arc::new(Db::new(db));
        let sm = StateMachineStore::load(db.clone()).unwrap();
        (crate::store::LogStore::new(db).unwrap(), sm)
    }

    fn set_config(index: u64, expected_version: Option<u64>) -> Entry {
        Entry::new_normal(
            log_id::<TypeConfig>(1, 1, index),
            Command::SetConfig {
                expected_version,
                body: b"version".to_vec(),
            },
        )
    }

    /// What openraft does for committed entries: saves the committed log id (no fsync), then
    /// applies.
    async fn commit_and_apply(
        log: &mut crate::store::LogStore,
        sm: &mut StateMachineStore,
        entry: Entry,
    ) {
        use openraft::storage::RaftLogStorage;
        log.save_committed(Some(entry.log_id())).await.unwrap();
        sm.apply(futures_util::stream::iter([Ok((entry, None))]))
            .await
            .unwrap();
    }

    /// The committed index a node restarted on this disk image re-applies up to.
    async fn committed_after_crash(image: Vec<u8>) -> Option<u64> {
        use openraft::storage::RaftLogStorage;
        let (mut log, _sm) = open_on(&CrashDisk::of(image));
        log.read_committed().await.unwrap().map(|c| c.index)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn control_state_is_visible_only_once_a_crash_cannot_take_it_back() {
        let disk = Arc::new(CrashDisk::default());
        let (mut log, mut sm) = open_on(&disk);
        let reader = sm.reader();
        commit_and_apply(&mut log, &mut sm, set_config(1, None)).await;
        assert_eq!(reader.read(State::config_version), Some(1));

        // Configuration version 2 commits; its fsync is slow.
        disk.hold();
        let _release = ReleaseOnDrop(disk.clone());
        let applying = tokio::spawn(async move {
            commit_and_apply(&mut log, &mut sm, set_config(2, Some(1))).await;
        });
        assert!(
            tokio::task::spawn_blocking({
                let disk = disk.clone();
                move || disk.wait_held()
            })
            .await
            .unwrap(),
            "the apply never synced the disk"
        );
        // A crash now would restart the node at index 1 (version 1): nothing may show version 2 yet.
        assert_eq!(committed_after_crash(disk.crash_image()).await, Some(1));
        assert_eq!(
            reader.read(State::config_version),
            Some(1),
            "version 2 was visible before a crash could no longer take it back"
        );

        disk.release();
        tokio::time::timeout(std::time::Duration::from_secs(10), applying)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(reader.read(State::config_version), Some(2));
        // From here a crash restarts the node at index 2: version 2 stays.
        assert_eq!(committed_after_crash(disk.crash_image()).await, Some(2));
    }

    /// The committed log id openraft saves is not a transaction of its own: it is read back at
    /// once, a crash before the next durable commit loses it (as it lost the non-durable commit
    /// that stored it before), the next durable commit (here an append) carries it, and a clean
    /// close writes the last one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_committed_log_id_rides_on_the_next_durable_commit_and_the_close() {
        use openraft::storage::{IOFlushed, RaftLogStorage};
        let disk = Arc::new(CrashDisk::default());
        let (mut log, sm) = open_on(&disk);
        log.save_committed(Some(log_id::<TypeConfig>(1, 1, 3)))
            .await
            .unwrap();
        assert_eq!(
            log.read_committed().await.unwrap().map(|c| c.index),
            Some(3)
        );
        assert_eq!(committed_after_crash(disk.crash_image()).await, None);

        log.append(
            vec![Entry::new_normal(
                log_id::<TypeConfig>(1, 1, 4),
                Command::Noop,
            )],
            IOFlushed::<TypeConfig>::noop(),
        )
        .await
        .unwrap();
        assert_eq!(committed_after_crash(disk.crash_image()).await, Some(3));

        log.save_committed(Some(log_id::<TypeConfig>(1, 1, 4)))
            .await
            .unwrap();
        assert_eq!(committed_after_crash(disk.crash_image()).await, Some(3));
        let closed = log.closed();
        drop(log);
        drop(sm);
        tokio::time::timeout(std::time::Duration::from_secs(10), closed.wait())
            .await
            .unwrap();
        assert_eq!(committed_after_crash(disk.written_image()).await, Some(4));
        assert_eq!(committed_after_crash(disk.crash_image()).await, Some(4));
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
