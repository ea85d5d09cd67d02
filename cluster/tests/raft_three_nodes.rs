//! Three in-process nodes over the redb store, wired by an in-memory network that calls the other
//! nodes' `Raft` handles directly: join as learners, promote to voters, replicate, kill the
//! leader, elect a new one, keep writing, then bring the old leader back after the log it missed
//! was purged, so it catches up by installing a snapshot.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use medpool_cluster::typ::{RpcError, Snapshot, SnapshotData, Vote};
use medpool_cluster::{
    Command, CommandResult, DbClosed, NodeAddrs, NodeId, NodeState, Raft, State, StateReader,
    TypeConfig, plan_moves,
};
use openraft::errors::{ForwardReason, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::RPCOption;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::{Config, OptionalSend, RaftNetworkFactory, RaftNetworkV2, ServerState};
use tempfile::TempDir;

/// The in-memory network: node id → its `Raft` handle. A node absent from the map is down.
#[derive(Clone, Default)]
struct Router {
    nodes: Arc<Mutex<BTreeMap<NodeId, Raft>>>,
}

impl Router {
    fn get(&self, id: NodeId) -> Result<Raft, Unreachable<TypeConfig>> {
        self.nodes
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .ok_or_else(|| Unreachable::from_string(format!("node {id} is down")))
    }
}

struct Peer {
    router: Router,
    target: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Router {
    type Network = Peer;
    async fn new_client(&mut self, target: NodeId, _node: &NodeAddrs) -> Peer {
        Peer {
            router: self.clone(),
            target,
        }
    }
}

impl RaftNetworkV2<TypeConfig> for Peer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        let raft = self.router.get(self.target)?;
        raft.append_entries(rpc)
            .await
            .map_err(|e| RpcError::Unreachable(Unreachable::new(&e)))
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        let raft = self.router.get(self.target)?;
        raft.vote(rpc)
            .await
            .map_err(|e| RpcError::Unreachable(Unreachable::new(&e)))
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let raft = self.router.get(self.target)?;
        raft.install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))
    }
}

const WAIT: Option<Duration> = Some(Duration::from_secs(10));

fn config() -> Arc<Config> {
    let config = Config {
        cluster_name: "medpool-test".into(),
        heartbeat_interval: 50,
        election_timeout_min: 200,
        election_timeout_max: 400,
        // Purge everything a snapshot covers, so a lagging node must install the snapshot.
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    };
    Arc::new(config.validate().unwrap())
}

fn addrs(id: NodeId) -> NodeAddrs {
    NodeAddrs {
        raft_addr: format!("127.0.0.{id}:7000"),
        sip_addr: format!("127.0.0.{id}:5060"),
        admin_addr: format!("127.0.0.{id}:8080"),
    }
}

struct Node {
    raft: Raft,
    reader: StateReader,
    closed: DbClosed,
}

async fn start(router: &Router, id: NodeId, dir: &Path) -> Node {
    let (log, sm) = medpool_cluster::open(dir).unwrap();
    let reader = sm.reader();
    let closed = log.closed();
    let raft = Raft::new(id, config(), router.clone(), log, sm)
        .await
        .unwrap();
    router.nodes.lock().unwrap().insert(id, raft.clone());
    Node {
        raft,
        reader,
        closed,
    }
}

/// Takes a node off the network, shuts it down and waits for its database to close.
async fn kill(router: &Router, id: NodeId, node: Node) {
    router.nodes.lock().unwrap().remove(&id);
    node.raft.shutdown().await.unwrap();
    let Node { raft, closed, .. } = node;
    drop(raft);
    tokio::time::timeout(Duration::from_secs(10), closed.wait())
        .await
        .expect("database still open after shutdown");
}

/// Writes through `raft`, which must be the leader. A leader whose quorum lease has lapsed
/// (a follower's ack older than `election_timeout_max`: a just-elected leader, or a slow
/// machine) refuses writes with `ForwardToLeader { reason: LeaseExpired }` before appending
/// anything, so retrying once its quorum acks again is safe.
async fn write(raft: &Raft, cmd: Command) -> (u64, CommandResult) {
    for _ in 0..20 {
        match raft.client_write(cmd.clone()).await {
            Ok(resp) => {
                assert!(resp.data.rejection().is_none(), "{cmd}: {:?}", resp.data);
                return (resp.log_id.index, resp.data);
            }
            Err(e)
                if e.forward_to_leader()
                    .is_some_and(|f| f.reason == ForwardReason::LeaseExpired) =>
            {
                let now = <openraft::TokioInstant as openraft::Instant>::now();
                raft.wait(WAIT)
                    .leader_with_quorum_acked(Some(now), "lease renewed")
                    .await
                    .unwrap();
            }
            Err(e) => panic!("{cmd}: {e}"),
        }
    }
    panic!("{cmd}: the leader's lease kept lapsing");
}

async fn wait_applied(nodes: &BTreeMap<NodeId, Node>, index: u64) {
    for (id, n) in nodes {
        n.raft
            .wait(WAIT)
            .applied_index_at_least(Some(index), format!("node {id} applied {index}"))
            .await
            .unwrap();
    }
}

fn same_state(nodes: &BTreeMap<NodeId, Node>) -> State {
    let mut states = nodes.values().map(|n| n.reader.state());
    let first = states.next().unwrap();
    for s in states {
        assert_eq!(s, first, "replicas diverged");
    }
    first
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_join_fail_over_and_catch_up_by_snapshot() {
    let dirs: BTreeMap<NodeId, TempDir> = (1..=3)
        .map(|id| (id, tempfile::tempdir().unwrap()))
        .collect();
    let router = Router::default();
    let mut nodes = BTreeMap::new();
    for (&id, dir) in &dirs {
        nodes.insert(id, start(&router, id, dir.path()).await);
    }

    // Node 1 initializes a pool of one and bootstraps the state.
    let n1 = nodes[&1].raft.clone();
    n1.initialize(BTreeMap::from([(1, addrs(1))]))
        .await
        .unwrap();
    n1.wait(WAIT)
        .current_leader(1, "node 1 leads")
        .await
        .unwrap();
    write(&n1, Command::Bootstrap { shard_count: 32 }).await;
    write(
        &n1,
        Command::AddNode {
            id: 1,
            addresses: addrs(1),
            voter: true,
        },
    )
    .await;

    // Nodes 2 and 3 join as learners, then become voters (joint consensus inside openraft).
    for id in [2, 3] {
        n1.add_learner(id, addrs(id), true).await.unwrap();
        write(
            &n1,
            Command::AddNode {
                id,
                addresses: addrs(id),
                voter: true,
            },
        )
        .await;
    }
    n1.change_membership(BTreeSet::from([1, 2, 3]), false)
        .await
        .unwrap();
    n1.wait(WAIT)
        .voter_ids([1, 2, 3], "three voters")
        .await
        .unwrap();

    // Spread the shards and record some dialogs.
    let state = nodes[&1].reader.state();
    let moves = plan_moves(&state, &state.active_nodes());
    assert_eq!(moves.len(), 32);
    write(&n1, Command::MoveShards { moves }).await;
    let (index, _) = write(
        &n1,
        Command::DialogBatch {
            upserts: (0..32u16)
                .map(|s| (s, format!("call-{s}@a"), vec![s as u8; 100]))
                .collect(),
            removes: vec![],
        },
    )
    .await;
    wait_applied(&nodes, index).await;
    let state = same_state(&nodes);
    assert_eq!(state.dialog_count(), 32);
    for id in 1..=3 {
        assert!(state.shards_of(id).len() <= 11);
    }
    for n in nodes.values() {
        assert_eq!(
            n.raft.voter_ids().collect::<BTreeSet<_>>(),
            BTreeSet::from([1, 2, 3])
        );
    }

    // Kill the leader; one of the others takes over.
    let old = nodes.remove(&1).unwrap();
    kill(&router, 1, old).await;
    let m = nodes[&2]
        .raft
        .wait(WAIT)
        .metrics(|m| m.current_leader.is_some_and(|l| l != 1), "a new leader")
        .await
        .unwrap();
    let leader_id = m.current_leader.unwrap();
    let leader = nodes[&leader_id].raft.clone();
    leader
        .wait(WAIT)
        .state(ServerState::Leader, "new leader is leader")
        .await
        .unwrap();

    // Writes go on: node 1 is declared down and its shards move to the survivors.
    write(
        &leader,
        Command::SetNodeState {
            id: 1,
            state: NodeState::Down,
        },
    )
    .await;
    let state = nodes[&leader_id].reader.state();
    let lost = state.shards_of(1).len();
    let moves = plan_moves(&state, &BTreeSet::from([2, 3]));
    assert_eq!(moves.len(), lost);
    write(&leader, Command::MoveShards { moves }).await;
    let (index, _) = write(
        &leader,
        Command::DialogBatch {
            upserts: vec![(0, "after-failover@b".into(), b"x".to_vec())],
            removes: vec![(1, "call-1@a".into())],
        },
    )
    .await;
    wait_applied(&nodes, index).await;
    let state = same_state(&nodes);
    assert!(state.shards_of(1).is_empty());
    assert_eq!(state.dialog_count(), 32);
    assert_eq!(state.dialog(0, "after-failover@b"), Some(&b"x"[..]));

    // Snapshot and purge on the survivors: node 1's missing log is gone.
    for n in nodes.values() {
        n.raft.trigger().snapshot().await.unwrap();
        n.raft
            .wait(WAIT)
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= index),
                "snapshot built",
            )
            .await
            .unwrap();
    }
    leader.trigger().purge_log(index).await.unwrap();
    leader
        .wait(WAIT)
        .metrics(
            |m| m.purged.is_some_and(|p| p.index >= index),
            "leader purged",
        )
        .await
        .unwrap();

    // Node 1 comes back from its data directory and catches up through a snapshot install.
    let back = start(&router, 1, dirs[&1].path()).await;
    back.raft
        .wait(WAIT)
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= index),
            "node 1 installed the snapshot",
        )
        .await
        .unwrap();
    nodes.insert(1, back);
    wait_applied(&nodes, index).await;
    let state = same_state(&nodes);
    assert_eq!(state.node(1).unwrap().state, NodeState::Down);

    // And it follows new writes.
    let (index, _) = write(
        &leader,
        Command::AddNode {
            id: 1,
            addresses: addrs(1),
            voter: true,
        },
    )
    .await;
    wait_applied(&nodes, index).await;
    assert_eq!(same_state(&nodes).node(1).unwrap().state, NodeState::Active);

    for (id, n) in std::mem::take(&mut nodes) {
        kill(&router, id, n).await;
    }
}
