//! The redb store keeps everything across a close and reopen of the data directory: vote,
//! committed log id, log entries (after purge and truncation), and the snapshot the state
//! machine is loaded from.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::time::Duration;

use medpool_cluster::typ::{Entry, Vote};
use medpool_cluster::{Command, State, TypeConfig};
use openraft::entry::RaftEntry;
use openraft::storage::{IOFlushed, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::testing::{blank_ent, log_id};
use openraft::{Membership, RaftLogReader};

fn command_entry(index: u64, cmd: Command) -> Entry {
    Entry::new_normal(log_id::<TypeConfig>(1, 1, index), cmd)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut snapshot_state = State::default();
    medpool_cluster::apply(&mut snapshot_state, Command::Bootstrap { shard_count: 8 });
    medpool_cluster::apply(
        &mut snapshot_state,
        Command::DialogBatch {
            upserts: vec![(2, "k".into(), b"v".to_vec())],
            removes: vec![],
        },
    );

    {
        let (mut log, mut sm) = medpool_cluster::open(dir.path()).unwrap();
        let closed = log.closed();
        let mut entries: Vec<Entry> = (1..=10).map(|i| blank_ent::<TypeConfig>(1, 1, i)).collect();
        entries[4] = command_entry(5, Command::Bootstrap { shard_count: 4 });
        log.append(entries, IOFlushed::noop()).await.unwrap();
        log.save_vote(&Vote::new_committed(1, 1)).await.unwrap();
        log.save_committed(Some(log_id::<TypeConfig>(1, 1, 8)))
            .await
            .unwrap();
        log.purge(log_id::<TypeConfig>(1, 1, 3)).await.unwrap();
        log.truncate_after(Some(log_id::<TypeConfig>(1, 1, 9)))
            .await
            .unwrap();

        // A snapshot built by a leader's state machine arrives and is installed.
        let leader_dir = tempfile::tempdir().unwrap();
        let (_, mut leader_sm) = medpool_cluster::open(leader_dir.path()).unwrap();
        let leader_entries = vec![
            Entry::new_membership(
                log_id::<TypeConfig>(1, 1, 1),
                Membership::new_with_defaults(vec![[1u64].into()], []),
            ),
            command_entry(2, Command::Bootstrap { shard_count: 8 }),
            command_entry(
                3,
                Command::DialogBatch {
                    upserts: vec![(2, "k".into(), b"v".to_vec())],
                    removes: vec![],
                },
            ),
        ];
        leader_sm
            .apply(futures_util::stream::iter(
                leader_entries.into_iter().map(|e| Ok((e, None))),
            ))
            .await
            .unwrap();
        let snapshot = leader_sm
            .get_snapshot_builder()
            .await
            .build_snapshot()
            .await
            .unwrap();
        sm.install_snapshot(&snapshot.meta, snapshot.snapshot)
            .await
            .unwrap();
        assert_eq!(sm.reader().state(), snapshot_state);
        drop((log, sm));
        tokio::time::timeout(Duration::from_secs(10), closed.wait())
            .await
            .unwrap();
    }

    let (mut log, mut sm) = medpool_cluster::open(dir.path()).unwrap();
    let state = log.get_log_state().await.unwrap();
    assert_eq!(
        state.last_purged_log_id,
        Some(log_id::<TypeConfig>(1, 1, 3))
    );
    assert_eq!(state.last_log_id, Some(log_id::<TypeConfig>(1, 1, 9)));
    assert_eq!(
        log.read_vote().await.unwrap(),
        Some(Vote::new_committed(1, 1))
    );
    assert_eq!(
        log.read_committed().await.unwrap(),
        Some(log_id::<TypeConfig>(1, 1, 8))
    );
    let entries = log.try_get_log_entries(0..100).await.unwrap();
    let indexes: Vec<u64> = entries.iter().map(|e| e.index()).collect();
    assert_eq!(indexes, (4..=9).collect::<Vec<_>>());
    assert_eq!(
        entries[1],
        command_entry(5, Command::Bootstrap { shard_count: 4 })
    );

    // The state machine starts from the stored snapshot.
    let (applied, membership) = sm.applied_state().await.unwrap();
    assert_eq!(applied, Some(log_id::<TypeConfig>(1, 1, 3)));
    assert_eq!(membership.log_id(), &Some(log_id::<TypeConfig>(1, 1, 1)));
    assert_eq!(sm.reader().state(), snapshot_state);
    let current = sm.get_current_snapshot().await.unwrap().unwrap();
    assert_eq!(
        current.meta.last_log_id,
        Some(log_id::<TypeConfig>(1, 1, 3))
    );
}
