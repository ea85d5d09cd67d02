//! SIP forwarding between nodes: a message received for a shard another node owns (or an answer
//! that must leave from another node's socket) goes over one ordered, bounded queue per peer.

use std::time::Duration;

use medpool_proto::cluster::SipForward;
use tokio::sync::mpsc;

use crate::stats::{Rpc, STATS};
use crate::typ::NodeId;

use super::Pool;

impl Pool {
    /// Sends a SIP message to another node (fire and forget; SIP retransmits on loss).
    pub fn forward(&self, node: NodeId, msg: SipForward) -> bool {
        let existing = self
            .forwarders
            .lock()
            .ok()
            .and_then(|f| f.get(&node).cloned());
        let tx = match existing {
            Some(tx) if !tx.is_closed() => tx,
            _ => {
                let Some(mut c) = self.client_for(node) else {
                    return false;
                };
                // Bounded: when a peer is slow, SIP messages are dropped (and retransmitted by their
                // senders) rather than queued without limit.
                let (tx, mut rx) = mpsc::channel::<SipForward>(4096);
                tokio::spawn(async move {
                    while let Some(msg) = rx.recv().await {
                        let started = tokio::time::Instant::now();
                        let bytes = msg.message.len() as u64;
                        STATS.rpc(Rpc::Forward, true);
                        let sent =
                            tokio::time::timeout(Duration::from_secs(1), c.forward(msg)).await;
                        STATS.forward_out.since(1, bytes, started);
                        if sent.is_err() {
                            tracing::debug!(node, "forward timed out");
                        }
                    }
                });
                if let Ok(mut f) = self.forwarders.lock() {
                    f.insert(node, tx.clone());
                }
                tx
            }
        };
        tx.try_send(msg).is_ok()
    }
}
