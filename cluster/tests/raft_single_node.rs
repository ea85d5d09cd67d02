//! A real 1-node openraft `Raft` over the redb store: initialize, write, read back, restart from
//! the same data directory (log replay, then snapshot restore) and find the same state.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use medpool_cluster::typ::{RpcError, Snapshot, SnapshotData, Vote};
use medpool_cluster::{
    Command, CommandResult, DbClosed, NodeAddrs, NodeId, NodeState, Raft, Rejection, StateReader,
    TypeConfig,
};
use openraft::errors::{ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Config, OptionalSend, RaftNetworkFactory, RaftNetworkV2};

/// A network for a pool of one: never called.
struct NoNetwork;
struct NoPeer;

impl RaftNetworkFactory<TypeConfig> for NoNetwork {
    type Network = NoPeer;
    async fn new_client(&mut self, target: NodeId, _node: &NodeAddrs) -> NoPeer {
        panic!("a single-node pool asked for a client to node {target}");
    }
}

fn unreachable() -> Unreachable<TypeConfig> {
    Unreachable::from_string("single-node pool has no peers")
}

impl RaftNetworkV2<TypeConfig> for NoPeer {
    type SnapshotData = SnapshotData;
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        Err(RpcError::Unreachable(unreachable()))
    }
    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        Err(RpcError::Unreachable(unreachable()))
    }
    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(unreachable()))
    }
}

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn config() -> Arc<Config> {
    let config = Config {
        cluster_name: "medpool-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 150,
        election_timeout_max: 300,
        ..Default::default()
    };
    Arc::new(config.validate().unwrap())
}

fn me() -> NodeAddrs {
    NodeAddrs {
        raft_addr: "127.0.0.1:7001".into(),
        sip_addr: "127.0.0.1:5060".into(),
        admin_addr: "127.0.0.1:8001".into(),
    }
}

async fn start(dir: &Path) -> (Raft, StateReader, DbClosed) {
    let (log, sm) = medpool_cluster::open(dir).unwrap();
    let reader = sm.reader();
    let closed = log.closed();
    let raft = Raft::new(1, config(), NoNetwork, log, sm).await.unwrap();
    (raft, reader, closed)
}

/// Shuts a node down and waits until its tasks have released the database file.
async fn stop(raft: Raft, closed: DbClosed) {
    raft.shutdown().await.unwrap();
    drop(raft);
    tokio::time::timeout(Duration::from_secs(10), closed.wait())
        .await
        .expect("the database is still open 10 s after shutdown");
}

async fn write(raft: &Raft, cmd: Command) -> (u64, CommandResult) {
    let resp = raft.client_write(cmd).await.unwrap();
    (resp.log_id.index, resp.data)
}

fn check_state(reader: &StateReader) {
    reader.read(|s| {
        assert_eq!(s.shard_count(), 64);
        assert_eq!(s.node(1).unwrap().addresses, me());
        assert_eq!(s.node(1).unwrap().state, NodeState::Active);
        assert_eq!(s.config().unwrap().version, 2);
        assert_eq!(s.config().unwrap().body, b"[pool]\nversion = 2\n");
        assert_eq!(s.dialog(7, "a@x"), Some(&b"record-a"[..]));
        assert_eq!(s.dialog(7, "b@x"), None);
        assert_eq!(s.dialog(63, "c@x"), Some(&[0u8, 255, 1][..]));
        assert_eq!(s.dialog_count(), 2);
        assert_eq!(s.owner_of(5), Some(1));
        assert_eq!(s.shard(5).unwrap().epoch, 1);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_writes_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();

    // First life: initialize and write.
    let last_index = {
        let (raft, reader, closed) = start(dir.path()).await;
        raft.initialize(BTreeMap::from([(1, me())])).await.unwrap();
        raft.wait(WAIT).current_leader(1, "leader").await.unwrap();

        assert_eq!(
            write(&raft, Command::Bootstrap { shard_count: 64 }).await.1,
            CommandResult::Done
        );
        write(
            &raft,
            Command::AddNode {
                id: 1,
                addresses: me(),
                voter: true,
            },
        )
        .await;
        assert_eq!(
            write(
                &raft,
                Command::MoveShards {
                    moves: vec![(5, 1)]
                }
            )
            .await
            .1,
            CommandResult::ShardsMoved { moved: 1 }
        );
        assert_eq!(
            write(
                &raft,
                Command::SetConfig {
                    expected_version: None,
                    body: b"[pool]\nversion = 1\n".to_vec(),
                },
            )
            .await
            .1,
            CommandResult::ConfigSet { version: 1 }
        );
        // A stale change is refused with a typed answer and changes nothing.
        assert_eq!(
            write(
                &raft,
                Command::SetConfig {
                    expected_version: None,
                    body: b"stale".to_vec(),
                },
            )
            .await
            .1,
            CommandResult::Rejected(Rejection::StaleConfigVersion {
                expected: None,
                current: Some(1)
            })
        );
        write(
            &raft,
            Command::SetConfig {
                expected_version: Some(1),
                body: b"[pool]\nversion = 2\n".to_vec(),
            },
        )
        .await;
        assert_eq!(
            write(
                &raft,
                Command::DialogBatch {
                    upserts: vec![
                        (7, "a@x".into(), b"record-a".to_vec()),
                        (7, "b@x".into(), b"record-b".to_vec()),
                        (63, "c@x".into(), vec![0, 255, 1]),
                    ],
                    removes: vec![],
                },
            )
            .await
            .1,
            CommandResult::DialogsApplied {
                upserted: 3,
                removed: 0
            }
        );
        let (last_index, result) = write(
            &raft,
            Command::DialogBatch {
                upserts: vec![],
                removes: vec![(7, "b@x".into())],
            },
        )
        .await;
        assert_eq!(
            result,
            CommandResult::DialogsApplied {
                upserted: 0,
                removed: 1
            }
        );
        check_state(&reader);
        stop(raft, closed).await;
        last_index
    };

    // Second life: no snapshot yet, so the state comes back by replaying the committed log.
    {
        let (raft, reader, closed) = start(dir.path()).await;
        raft.wait(WAIT)
            .applied_index_at_least(Some(last_index), "log replayed")
            .await
            .unwrap();
        check_state(&reader);
        raft.wait(WAIT)
            .current_leader(1, "leader again")
            .await
            .unwrap();
        // Writes go on after the restart.
        let (index, result) = write(&raft, Command::Noop).await;
        assert_eq!(result, CommandResult::Done);
        assert!(index > last_index);

        // Take a snapshot and purge the log it covers.
        raft.trigger().snapshot().await.unwrap();
        let m = raft
            .wait(WAIT)
            .metrics(|m| m.snapshot.is_some_and(|s| s.index >= index), "snapshot")
            .await
            .unwrap();
        let snap = m.snapshot.unwrap();
        raft.trigger().purge_log(snap.index).await.unwrap();
        raft.wait(WAIT).purged(Some(snap), "purged").await.unwrap();
        stop(raft, closed).await;
    }

    // Third life: the log is purged; the state is loaded from the snapshot before Raft starts.
    {
        let (log, sm) = medpool_cluster::open(dir.path()).unwrap();
        let reader = sm.reader();
        let closed = log.closed();
        check_state(&reader);
        let raft = Raft::new(1, config(), NoNetwork, log, sm).await.unwrap();
        raft.wait(WAIT)
            .current_leader(1, "leader after snapshot restore")
            .await
            .unwrap();
        check_state(&reader);
        write(
            &raft,
            Command::DialogBatch {
                upserts: vec![(1, "d@x".into(), b"d".to_vec())],
                removes: vec![],
            },
        )
        .await;
        assert_eq!(reader.read(|s| s.dialog_count()), 3);
        stop(raft, closed).await;
    }
}
