//! Where a pool node's work per call goes: process-wide counters of the pool's stages (Raft log
//! appends and their fsyncs, applies, encoding and decoding, replication, snapshots, internal RPCs,
//! forwarded SIP messages), read by the node's `/metrics` at scrape time ([`Stats::rows`]).
//!
//! Cheap by design: relaxed atomic adds on paths that already do I/O or a heap allocation; no lock,
//! no histogram buckets. One process is one node in production; pools run inside one test process
//! add up their nodes' counts.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use tokio::time::Instant;

/// One stage: how often it ran, how many items (entries, records, messages) and bytes it handled,
/// and the time it took (wall time, which includes waiting for the disk or the peer).
#[derive(Debug, Default)]
pub struct Stage {
    /// Times the stage ran.
    pub runs: AtomicU64,
    /// Items handled (log entries, messages).
    pub items: AtomicU64,
    /// Bytes handled.
    pub bytes: AtomicU64,
    /// Microseconds spent, summed.
    pub micros: AtomicU64,
}

impl Stage {
    /// A stage that has not run.
    pub const fn new() -> Stage {
        Stage {
            runs: AtomicU64::new(0),
            items: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        }
    }

    /// Counts one run of `items` items and `bytes` bytes that took `took`.
    pub fn record(&self, items: u64, bytes: u64, took: Duration) {
        self.runs.fetch_add(1, Relaxed);
        self.items.fetch_add(items, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        self.micros
            .fetch_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Counts one run started at `since`.
    pub fn since(&self, items: u64, bytes: u64, since: Instant) {
        self.record(items, bytes, since.elapsed());
    }
}

/// The internal RPCs, by kind (the index into [`Stats::rpc_out`] / [`Stats::rpc_in`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// Raft AppendEntries (replication and heartbeats).
    AppendEntries = 0,
    /// Raft Vote.
    Vote = 1,
    /// A snapshot sent in chunks.
    InstallSnapshot = 2,
    /// A write sent to the leader.
    ClientWrite = 3,
    /// A forwarded SIP message (unary), or one stream of them.
    Forward = 4,
    /// A lease heartbeat.
    Lease = 5,
    /// Anything else (join, info, leader transfer).
    Other = 6,
}

const RPC_NAMES: [&str; 7] = [
    "append_entries",
    "vote",
    "install_snapshot",
    "client_write",
    "forward",
    "lease",
    "other",
];

/// Every stage of the pool on this node.
#[derive(Debug)]
pub struct Stats {
    /// Raft log appends: entries written and fsynced (wall time includes the fsync and the hop
    /// to the blocking pool).
    pub log_append: Stage,
    /// Durable redb commits (the fsync part of appends, votes, snapshots, control entries).
    pub fsync: Stage,
    /// Log reads served from the redb log (replication, applies): entries, wall time (the hop to
    /// the blocking pool, the read and the decode).
    pub log_read: Stage,
    /// Log reads served from the recent entries kept in memory (`store/recent.rs`): entries.
    pub log_cached: Stage,
    /// State-machine applies: entries applied.
    pub apply: Stage,
    /// Values encoded (log entries, Raft payloads, snapshots, writes): bytes out.
    pub encode: Stage,
    /// Values decoded: bytes in.
    pub decode: Stage,
    /// AppendEntries sent by this node as leader: entries and request bytes, round-trip time.
    pub replicate: Stage,
    /// Dialog group commits: batches (runs), records, payload bytes, time from the write's start
    /// until it committed (retries included).
    pub dialog_commit: Stage,
    /// Snapshots built: bytes, time to copy, encode and store.
    pub snapshot_build: Stage,
    /// Snapshots installed here: bytes, time to decode and store.
    pub snapshot_install: Stage,
    /// SIP messages this node forwarded to another node: messages, bytes.
    pub forward_out: Stage,
    /// SIP messages other nodes forwarded here: messages, bytes.
    pub forward_in: Stage,
    /// Internal RPCs this node made, by [`Rpc`].
    pub rpc_out: [AtomicU64; 7],
    /// Internal RPCs this node served, by [`Rpc`].
    pub rpc_in: [AtomicU64; 7],
}

/// Picks one counter of a stage.
type Field = fn(&Stage) -> &AtomicU64;

/// This process's counters.
pub static STATS: Stats = Stats::new();

/// One exported series: a counter family's name and help, its label and the value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    /// Family name (a counter; the exporter adds `_total`).
    pub name: &'static str,
    /// Family help.
    pub help: &'static str,
    /// `(label, value)` of the series.
    pub label: (&'static str, &'static str),
    /// The count.
    pub value: u64,
}

impl Stats {
    /// Nothing counted yet.
    pub const fn new() -> Stats {
        #[allow(clippy::declare_interior_mutable_const)]
        const ZERO: AtomicU64 = AtomicU64::new(0);
        Stats {
            log_append: Stage::new(),
            fsync: Stage::new(),
            log_read: Stage::new(),
            log_cached: Stage::new(),
            apply: Stage::new(),
            encode: Stage::new(),
            decode: Stage::new(),
            replicate: Stage::new(),
            dialog_commit: Stage::new(),
            snapshot_build: Stage::new(),
            snapshot_install: Stage::new(),
            forward_out: Stage::new(),
            forward_in: Stage::new(),
            rpc_out: [ZERO; 7],
            rpc_in: [ZERO; 7],
        }
    }

    /// Counts an internal RPC made (`out`) or served.
    pub fn rpc(&self, rpc: Rpc, out: bool) {
        let table = if out { &self.rpc_out } else { &self.rpc_in };
        table[rpc as usize].fetch_add(1, Relaxed);
    }

    fn stages(&self) -> [(&'static str, &Stage); 13] {
        [
            ("log_append", &self.log_append),
            ("fsync", &self.fsync),
            ("log_read", &self.log_read),
            ("log_cached", &self.log_cached),
            ("apply", &self.apply),
            ("encode", &self.encode),
            ("decode", &self.decode),
            ("replicate", &self.replicate),
            ("dialog_commit", &self.dialog_commit),
            ("snapshot_build", &self.snapshot_build),
            ("snapshot_install", &self.snapshot_install),
            ("forward_out", &self.forward_out),
            ("forward_in", &self.forward_in),
        ]
    }

    /// Every series, grouped by family (families in a fixed order).
    pub fn rows(&self) -> Vec<Row> {
        let mut rows = Vec::new();
        let families: [(&str, &str, Field); 4] = [
            ("medpool_pool_stage_runs", "Times a pool stage ran", |s| {
                &s.runs
            }),
            (
                "medpool_pool_stage_items",
                "Items a pool stage handled (log entries, messages)",
                |s| &s.items,
            ),
            (
                "medpool_pool_stage_bytes",
                "Bytes a pool stage handled",
                |s| &s.bytes,
            ),
            (
                "medpool_pool_stage_microseconds",
                "Wall time spent in a pool stage (includes waits for disk or peer)",
                |s| &s.micros,
            ),
        ];
        for (name, help, field) in families {
            for (stage, s) in self.stages() {
                rows.push(Row {
                    name,
                    help,
                    label: ("stage", stage),
                    value: field(s).load(Relaxed),
                });
            }
        }
        for (name, help, table) in [
            (
                "medpool_internal_rpcs_sent",
                "Internal gRPC calls this node made, by kind",
                &self.rpc_out,
            ),
            (
                "medpool_internal_rpcs_served",
                "Internal gRPC calls this node served, by kind",
                &self.rpc_in,
            ),
        ] {
            for (rpc, c) in RPC_NAMES.iter().zip(table.iter()) {
                rows.push(Row {
                    name,
                    help,
                    label: ("rpc", rpc),
                    value: c.load(Relaxed),
                });
            }
        }
        rows
    }
}

impl Default for Stats {
    fn default() -> Stats {
        Stats::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_adds_up_and_every_family_has_every_series() {
        let s = Stats::new();
        s.apply.record(3, 100, Duration::from_micros(7));
        s.apply.record(1, 10, Duration::from_micros(3));
        s.rpc(Rpc::Forward, true);
        let rows = s.rows();
        let get = |name: &str, label: &str| {
            rows.iter()
                .find(|r| r.name == name && r.label.1 == label)
                .map(|r| r.value)
        };
        assert_eq!(get("medpool_pool_stage_runs", "apply"), Some(2));
        assert_eq!(get("medpool_pool_stage_items", "apply"), Some(4));
        assert_eq!(get("medpool_pool_stage_bytes", "apply"), Some(110));
        assert_eq!(get("medpool_pool_stage_microseconds", "apply"), Some(10));
        assert_eq!(get("medpool_internal_rpcs_sent", "forward"), Some(1));
        assert_eq!(get("medpool_internal_rpcs_served", "forward"), Some(0));
        assert_eq!(rows.len(), 4 * 13 + 2 * 7);
    }
}
