//! What the harness sees from outside while faults run: a sampler that asks every node for its
//! pool status (medpool-cluster's Info over the internal service) every 250 ms and keeps
//! (node, term, leader, configuration version) — the outside view of two invariants that the nodes'
//! own audit reports also cover.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use medpool_cluster::pool::PoolInfo;
use tokio::task::JoinHandle;

/// Now, in Unix µs (the clock the nodes' audit reports use).
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// One node's status at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// The node asked.
    pub node: u64,
    /// When (Unix µs).
    pub at: u64,
    /// Its Raft term.
    pub term: u64,
    /// The leader it knows of.
    pub leader: Option<u64>,
    /// Its applied configuration version (`None`: none yet).
    pub config_version: Option<u64>,
}

/// A node's pool status over its internal service (2 s timeout): medpool-harness's
/// [`status`](medpool_harness::status::status), with the error as text.
pub async fn info(raft: SocketAddr) -> Result<PoolInfo, String> {
    medpool_harness::status::status(raft)
        .await
        .map_err(|e| e.to_string())
}

/// Polls every node; stopped when dropped.
#[derive(Debug)]
pub struct Sampler {
    samples: Arc<Mutex<Vec<Sample>>>,
    task: JoinHandle<()>,
}

impl Sampler {
    /// Starts polling `nodes` (internal addresses by node id).
    pub fn start(nodes: Vec<SocketAddr>) -> Sampler {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::clone(&samples);
        let task = tokio::spawn(async move {
            loop {
                for (id, addr) in nodes.iter().enumerate() {
                    // A stopped or partitioned node does not answer: nothing is recorded for it.
                    if let Ok(Ok(i)) =
                        tokio::time::timeout(Duration::from_millis(300), info(*addr)).await
                    {
                        let s = Sample {
                            node: id as u64,
                            at: now_us(),
                            term: i.term,
                            leader: i.leader,
                            config_version: i.config_version,
                        };
                        out.lock().unwrap_or_else(PoisonError::into_inner).push(s);
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        });
        Sampler { samples, task }
    }

    /// Every sample so far.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}
