//! A node's view of the pool, read the way the demo and the chaos tests read it: medpool-cluster's
//! `Info` over the node's internal service (the address of its `--raft-listen`), and the helpers that
//! pick a node's row, tell an active node and print the map.

use std::net::SocketAddr;
use std::time::Duration;

use medpool_cluster::pool::PoolInfo;
use medpool_proto::cluster::InfoRequest;

use crate::HarnessError;

/// How long a status request may take.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// The pool as the node whose internal service is `raft` sees it.
pub async fn status(raft: SocketAddr) -> Result<PoolInfo, HarnessError> {
    let server = raft.to_string();
    let err = |reason: String| HarnessError::Status {
        server: server.clone(),
        reason,
    };
    let mut c = medpool_cluster::network::client(&server).map_err(|e| err(e.to_string()))?;
    let reply = tokio::time::timeout(STATUS_TIMEOUT, c.info(InfoRequest {}))
        .await
        .map_err(|_| err(format!("no answer in {} s", STATUS_TIMEOUT.as_secs())))?
        .map_err(|e| err(e.message().to_owned()))?;
    serde_json::from_slice(&reply.into_inner().json).map_err(|e| err(e.to_string()))
}

/// Node `id`'s state and shard count in `info`.
pub fn node_row(info: &PoolInfo, id: usize) -> Option<(&str, usize)> {
    info.nodes
        .iter()
        .find(|n| n.id == id as u64)
        .map(|n| (n.state.as_str(), n.shards))
}

/// Whether a node state (as `Info` spells it) is active.
pub fn is_active(state: &str) -> bool {
    state.eq_ignore_ascii_case("active")
}

/// The number in `key=<n>` within a log line.
pub fn field(line: &str, key: &str) -> Option<usize> {
    let at = line.find(&format!("{key}="))? + key.len() + 1;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The status as a table: one line per node. (The SIP address a node records is the one it
/// advertises: with a Service in front, the same for every node, so it is left out.)
pub fn status_table(info: &PoolInfo) -> String {
    let mut out = format!(
        "  (seen by node {}: leader {}, term {}, unowned shards {}, dialogs {})\n  {:<5} {:<8} {:>6}\n",
        info.node_id,
        info.leader
            .map_or_else(|| "none".to_owned(), |l| l.to_string()),
        info.term,
        info.unowned,
        info.dialogs,
        "NODE",
        "STATE",
        "SHARDS"
    );
    for medpool_cluster::pool::NodeInfo {
        id, state, shards, ..
    } in &info.nodes
    {
        out.push_str(&format!("  {id:<5} {state:<8} {shards:>6}\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_reads_the_number_after_its_key() {
        let line = "INFO shards adopted shards=341 restored=12";
        assert_eq!(field(line, "shards"), Some(341));
        assert_eq!(field(line, "restored"), Some(12));
        assert_eq!(field(line, "missing"), None);
    }
}
