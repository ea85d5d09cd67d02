//! The pool's metrics, on a node in a pool: Raft term, leader, log and applied indexes, shards
//! owned, lease, forwarding, dialog-record replication and batching, and the pool's per-stage
//! counters.

use std::sync::atomic::Ordering::Relaxed;

use medpool_cluster::pool::Pool;
use prometheus_client::encoding::DescriptorEncoder;

use super::family::{Labels, counter, gauge, one};

/// Writes the pool's metrics.
pub(super) fn encode(e: &mut DescriptorEncoder<'_>, pool: &Pool) -> Result<(), std::fmt::Error> {
    let info = pool.info();
    let m = pool.raft().metrics();
    let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&m).clone();
    gauge(
        e,
        "medpool_raft_term",
        "Current Raft term",
        &[(Vec::new(), info.term as i64)],
    )?;
    gauge(
        e,
        "medpool_raft_leader",
        "Id of the leader this node knows (-1: none)",
        &[(Vec::new(), info.leader.map_or(-1, |l| l as i64))],
    )?;
    gauge(
        e,
        "medpool_raft_is_leader",
        "1 when this node is the leader",
        &[(Vec::new(), i64::from(info.leader == Some(info.node_id)))],
    )?;
    let committed = m.local_committed.map_or(0, |l| l.index) as i64;
    let applied = info.applied.unwrap_or(0) as i64;
    gauge(
        e,
        "medpool_raft_committed_index",
        "Last committed log index",
        &[(Vec::new(), committed)],
    )?;
    gauge(
        e,
        "medpool_raft_applied_index",
        "Last applied log index",
        &[(Vec::new(), applied)],
    )?;
    gauge(
        e,
        "medpool_raft_apply_lag",
        "Committed minus applied",
        &[(Vec::new(), committed - applied)],
    )?;
    let me = info.node_id;
    let owned = info
        .nodes
        .iter()
        .find(|n| n.id == me)
        .map_or(0, |n| n.shards);
    gauge(
        e,
        "medpool_shards_owned",
        "Shards this node owns",
        &[(Vec::new(), owned as i64)],
    )?;
    gauge(
        e,
        "medpool_shards_unowned",
        "Shards without an owner",
        &[(Vec::new(), info.unowned as i64)],
    )?;
    gauge(
        e,
        "medpool_lease_held",
        "1 while this node holds its lease",
        &[(Vec::new(), i64::from(info.lease))],
    )?;
    gauge(
        e,
        "medpool_lease_remaining_milliseconds",
        "Time left on this node's lease",
        &[(
            Vec::new(),
            pool.lease_remaining().map_or(0, |d| d.as_millis() as i64),
        )],
    )?;
    gauge(
        e,
        "medpool_dialog_records",
        "Confirmed dialogs in the replicated state",
        &[(Vec::new(), info.dialogs as i64)],
    )?;
    let d = &pool.dialog_stats;
    counter(
        e,
        "medpool_dialog_batches",
        "Raft entries written for dialog records",
        &one(d.batches.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_dialog_records_replicated",
        "Dialog records written (upserts + removals)",
        &one(d.records.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_dialog_bytes_replicated",
        "Dialog record payload bytes written",
        &one(d.bytes.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_dialog_batches_failed",
        "Dialog batches that did not commit",
        &one(d.failed.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_dialog_gatherings",
        "Raft appends this node made as the leader for dialog batches (each gathers one or more nodes' batches of a window)",
        &one(d.gatherings.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_dialog_batches_gathered",
        "Dialog batches (this node's and the followers') those appends carried",
        &one(d.gathered.load(Relaxed)),
    )?;
    let sizes: Vec<(Labels, u64)> = ["1", "4", "16", "64", "256", "more"]
        .iter()
        .zip(d.sizes.iter())
        .map(|(b, c)| (vec![("le", (*b).to_owned())], c.load(Relaxed)))
        .collect();
    counter(
        e,
        "medpool_dialog_batch_size",
        "Dialog batches by size bucket",
        &sizes,
    )?;
    pool_stages(e)?;
    Ok(())
}

/// The pool's per-stage counters (medpool_cluster::stats): Raft append, fsync, apply, codec,
/// replication, dialog commits, snapshots, forwarding, internal RPCs.
fn pool_stages(e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let rows = medpool_cluster::stats::STATS.rows();
    let mut start = 0;
    while let Some(first) = rows.get(start) {
        let len = rows[start..]
            .iter()
            .take_while(|r| r.name == first.name)
            .count();
        let series: Vec<(Labels, u64)> = rows[start..start + len]
            .iter()
            .map(|r| (vec![(r.label.0, r.label.1.to_owned())], r.value))
            .collect();
        counter(e, first.name, first.help, &series)?;
        start += len;
    }
    Ok(())
}
