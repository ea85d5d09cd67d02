//! `WatchEvents`: this node's call and gateway events as they are published (a bounded broadcast:
//! a slow watcher is told how many it missed), the other nodes' (each node's own stream, merged;
//! reconnected while the watcher stays), and pool events found by comparing snapshots of the
//! replicated state every 200 ms: leader changes, nodes joining, draining, going down or removed,
//! shards moving, configuration versions. [`pool_diff`] is pure.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use medpool_cluster::NodeState;
use medpool_cluster::pool::Pool;
use medpool_proto::admin::{self as pb, NodeChange, event::Kind};
use openraft::async_runtime::watch::WatchReceiver;
use tokio::sync::{broadcast, mpsc};
use tonic::Status;

use super::convert;
use super::ctx::AdminCtx;

/// The response stream of `WatchEvents`.
pub type EventStream = Pin<Box<dyn Stream<Item = Result<pb::Event, Status>> + Send>>;

/// How often pool state is compared.
const POLL: Duration = Duration::from_millis(200);
/// Events buffered for one watcher.
const BUFFER: usize = 1024;

/// What pool events are computed from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PoolSnapshot {
    /// The leader.
    pub leader: Option<u64>,
    /// The term.
    pub term: u64,
    /// Every node's state.
    pub nodes: BTreeMap<u64, NodeState>,
    /// Each shard's owner.
    pub owners: Vec<Option<u64>>,
    /// Configuration version.
    pub config_version: Option<u64>,
}

impl PoolSnapshot {
    /// The pool as this node sees it now.
    pub fn of(pool: &Pool) -> PoolSnapshot {
        let m = pool.raft().metrics().borrow_watched().clone();
        pool.state().read(|s| PoolSnapshot {
            leader: m.current_leader,
            term: m.current_term,
            nodes: s.nodes().iter().map(|(id, n)| (*id, n.state)).collect(),
            owners: s.shards().iter().map(|e| e.owner).collect(),
            config_version: s.config_version(),
        })
    }
}

/// The pool events between two snapshots.
pub fn pool_diff(old: &PoolSnapshot, new: &PoolSnapshot) -> Vec<Kind> {
    let mut out = Vec::new();
    if old.leader != new.leader {
        out.push(Kind::Leader(pb::LeaderChanged {
            leader: new.leader,
            term: new.term,
        }));
    }
    for (id, state) in &new.nodes {
        let change = match (old.nodes.get(id), state) {
            (None, _) => Some(NodeChange::Joined),
            (Some(a), b) if a == b => None,
            (Some(_), NodeState::Active) => Some(NodeChange::Active),
            (Some(_), NodeState::Draining) => Some(NodeChange::Draining),
            (Some(_), NodeState::Down) => Some(NodeChange::Down),
        };
        if let Some(change) = change {
            out.push(Kind::Node(pb::NodeChanged {
                id: *id,
                change: change.into(),
            }));
        }
    }
    for id in old.nodes.keys() {
        if !new.nodes.contains_key(id) {
            out.push(Kind::Node(pb::NodeChanged {
                id: *id,
                change: NodeChange::Removed.into(),
            }));
        }
    }
    let mut moves: BTreeMap<(Option<u64>, u64), Vec<u32>> = BTreeMap::new();
    for (shard, new_owner) in new.owners.iter().enumerate() {
        let old_owner = old.owners.get(shard).copied().flatten();
        if *new_owner != old_owner
            && let Some(to) = new_owner
            && let Ok(shard) = u32::try_from(shard)
        {
            moves.entry((old_owner, *to)).or_default().push(shard);
        }
    }
    for ((from_node, to_node), shards) in moves {
        out.push(Kind::ShardsMoved(pb::ShardsMoved {
            from_node,
            to_node,
            shards,
        }));
    }
    if old.config_version != new.config_version
        && let Some(version) = new.config_version
    {
        out.push(Kind::Config(pb::ConfigChanged { version }));
    }
    out
}

/// Starts a watcher: this node's events, and unless `local_only` the other nodes' and the pool's.
pub fn watch(ctx: Arc<AdminCtx>, local_only: bool) -> EventStream {
    let (tx, rx) = mpsc::channel::<Result<pb::Event, Status>>(BUFFER);
    let node_rx = ctx.node.events.subscribe();
    tokio::spawn(local_and_pool(ctx.clone(), node_rx, tx.clone(), local_only));
    if !local_only && ctx.pool().is_some() {
        tokio::spawn(peers(ctx, tx));
    }
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (e, rx))
    }))
}

async fn local_and_pool(
    ctx: Arc<AdminCtx>,
    mut node_rx: broadcast::Receiver<medpool_b2bua::node::NodeEvent>,
    tx: mpsc::Sender<Result<pb::Event, Status>>,
    local_only: bool,
) {
    let me = ctx.node_id();
    let pool = if local_only {
        None
    } else {
        ctx.pool().cloned()
    };
    let mut last = pool.as_deref().map(PoolSnapshot::of);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        let out: Vec<pb::Event> = tokio::select! {
            ev = node_rx.recv() => match ev {
                Ok(e) => vec![convert::node_event(e, me)],
                Err(broadcast::error::RecvError::Lagged(n)) => vec![pb::Event {
                    node_id: me,
                    unix_ms: convert::unix_ms_now(),
                    kind: Some(Kind::Lost(pb::EventsLost { count: n })),
                }],
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = tick.tick(), if pool.is_some() => {
                match (&pool, &mut last) {
                    (Some(p), Some(prev)) => {
                        let now = PoolSnapshot::of(p);
                        let kinds = pool_diff(prev, &now);
                        *prev = now;
                        let at = convert::unix_ms_now();
                        kinds.into_iter().map(|k| pb::Event { node_id: me, unix_ms: at, kind: Some(k) }).collect()
                    }
                    _ => Vec::new(),
                }
            },
            _ = tx.closed() => return,
        };
        for e in out {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
    }
}

/// Merges the other nodes' local streams, (re)connecting while the watcher stays.
async fn peers(ctx: Arc<AdminCtx>, tx: mpsc::Sender<Result<pb::Event, Status>>) {
    let mut running: BTreeMap<u64, tokio::task::JoinHandle<()>> = BTreeMap::new();
    loop {
        for (id, addr) in ctx.others() {
            if running.get(&id).is_some_and(|h| !h.is_finished()) {
                continue;
            }
            let Some(mut client) = ctx.peers.client(&addr) else {
                continue;
            };
            let tx = tx.clone();
            running.insert(
                id,
                tokio::spawn(async move {
                    let stream = client
                        .watch_events(pb::WatchEventsRequest { local_only: true })
                        .await;
                    let Ok(stream) = stream else { return };
                    let mut stream = stream.into_inner();
                    while let Ok(Some(e)) = stream.message().await {
                        if tx.send(Ok(e)).await.is_err() {
                            return;
                        }
                    }
                }),
            );
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tx.closed() => break,
        }
    }
    for h in running.values() {
        h.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_changes_become_events() {
        let old = PoolSnapshot {
            leader: Some(1),
            term: 2,
            nodes: BTreeMap::from([(1, NodeState::Active), (2, NodeState::Active)]),
            owners: vec![Some(1), Some(2), Some(2), None],
            config_version: Some(1),
        };
        assert!(pool_diff(&old, &old).is_empty());
        let new = PoolSnapshot {
            leader: Some(2),
            term: 3,
            nodes: BTreeMap::from([(2, NodeState::Draining), (3, NodeState::Active)]),
            owners: vec![Some(3), Some(3), Some(2), Some(3)],
            config_version: Some(2),
        };
        let events = pool_diff(&old, &new);
        assert_eq!(
            events,
            vec![
                Kind::Leader(pb::LeaderChanged {
                    leader: Some(2),
                    term: 3
                }),
                Kind::Node(pb::NodeChanged {
                    id: 2,
                    change: NodeChange::Draining.into()
                }),
                Kind::Node(pb::NodeChanged {
                    id: 3,
                    change: NodeChange::Joined.into()
                }),
                Kind::Node(pb::NodeChanged {
                    id: 1,
                    change: NodeChange::Removed.into()
                }),
                Kind::ShardsMoved(pb::ShardsMoved {
                    from_node: None,
                    to_node: 3,
                    shards: vec![3]
                }),
                Kind::ShardsMoved(pb::ShardsMoved {
                    from_node: Some(1),
                    to_node: 3,
                    shards: vec![0]
                }),
                Kind::ShardsMoved(pb::ShardsMoved {
                    from_node: Some(2),
                    to_node: 3,
                    shards: vec![1]
                }),
                Kind::Config(pb::ConfigChanged { version: 2 }),
            ]
        );
    }
}
