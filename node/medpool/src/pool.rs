//! Wiring a node into a Raft pool: the adapters between medpool-cluster's [`Pool`] and the B2BUA's
//! small traits ([`ShardOwnership`], [`DialogStore`], [`Relay`]), and the [`PoolSink`] through which the
//! pool hands the node forwarded SIP and shard moves. Neither library knows the other; only the binary
//! joins them.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use medpool_b2bua::cluster::{DialogRecord, DialogStore, ForwardMeta, Relay, ShardOwnership};
use medpool_b2bua::node::NodeCtx;
use medpool_cluster::pool::{Pool, PoolSink};
use medpool_proto::cluster::SipForward;
use medpool_sip::SipMessage;
use medpool_sip::transport::Inbound;

/// The B2BUA's view of the pool.
pub struct PoolAdapter {
    /// The pool runtime.
    pub pool: Arc<Pool>,
}

impl ShardOwnership for PoolAdapter {
    fn shard_count(&self) -> u16 {
        self.pool.shard_count()
    }
    fn may_act(&self, shard: u16) -> bool {
        self.pool.may_act(shard)
    }
    fn owner(&self, shard: u16) -> Option<u64> {
        self.pool.owner(shard)
    }
    fn node_id(&self) -> u64 {
        self.pool.node_id()
    }
    fn recently_taken(&self, shard: u16) -> bool {
        self.pool.recently_taken(shard)
    }
    fn taking_over(&self, shard: u16) -> bool {
        // Not `holds_lease`: a node that just restarted is given its shards before its first lease
        // heartbeat is answered, and a new call in those milliseconds was refused 503 (seen in
        // startup_contract's rolling restart). Shards it already acts for are not "taking over":
        // with a lapsed lease they still refuse (503), so a node cut off does not silently drop.
        // A shard taken over moments ago (the last 20 s) that this node acts for but has no lease
        // for yet is also being taken over: a restarted node is given shards, passes their fence
        // and enters them in its acting set before its first lease heartbeat is granted (the
        // leader grants it only once its acting epoch has caught up), and new calls forwarded to
        // it in those ≤ 500 ms were refused 503 (seen in the chaos suite's rolling restarts).
        self.pool.owner(shard) == Some(self.pool.node_id())
            && (!self.pool.acting(shard)
                || (self.pool.recently_taken(shard) && !self.pool.holds_lease()))
    }
    fn epoch(&self, shard: u16) -> Option<u64> {
        self.pool.state().read(|s| s.shard(shard).map(|e| e.epoch))
    }
    fn local_shard(&self, pick: u16) -> Option<u16> {
        // The acting set is a row of atomics: the count and the scan read it alone; only the
        // shard chosen is checked whole (owner in the map, lease).
        if !self.pool.holds_lease() {
            return None;
        }
        let n = self.pool.shard_count();
        let acting = (0..n).filter(|&s| self.pool.acting(s)).count();
        if acting == 0 {
            return None;
        }
        (0..n)
            .filter(|&s| self.pool.acting(s))
            .nth(usize::from(pick) % acting)
            .filter(|&s| self.pool.may_act(s))
    }
    fn hands_over(&self) -> bool {
        let me = self.pool.node_id();
        self.pool.holds_lease()
            && self.pool.state().read(|s| {
                s.nodes()
                    .get(&me)
                    .is_some_and(|n| n.state != medpool_cluster::state::NodeState::Down)
            })
    }
}

/// A dialog record as the pool stores it (JSON); `None`, logged, if it cannot be encoded.
fn encoded(record: &DialogRecord) -> Option<Vec<u8>> {
    serde_json::to_vec(record)
        .map_err(|e| tracing::error!(error = %e, "cannot encode a dialog record"))
        .ok()
}

impl DialogStore for PoolAdapter {
    fn store(&self, record: DialogRecord) -> bool {
        encoded(&record).is_some_and(|bytes| {
            self.pool
                .dialog_upsert(record.shard, record.a.call_id.clone(), bytes)
        })
    }
    fn replace(&self, record: DialogRecord) -> bool {
        encoded(&record).is_some_and(|bytes| {
            self.pool
                .dialog_replace(record.shard, record.a.call_id.clone(), bytes)
        })
    }
    fn remove(&self, shard: u16, a_call_id: &str) {
        self.pool.dialog_remove(shard, a_call_id.to_owned());
    }
    fn contains(&self, shard: u16, a_call_id: &str) -> bool {
        self.pool.dialog_exists(shard, a_call_id)
    }
    fn records_of(&self, shard: u16) -> Vec<DialogRecord> {
        self.pool
            .dialogs_of(shard)
            .into_iter()
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect()
    }
}

impl Relay for PoolAdapter {
    fn forward(
        &self,
        owner: u64,
        shard: u16,
        message: Bytes,
        source: SocketAddr,
        transport: &str,
        meta: ForwardMeta,
    ) -> bool {
        self.forward_for(
            self.pool.node_id(),
            owner,
            shard,
            message,
            source,
            transport,
            meta,
        )
    }
    fn forward_for(
        &self,
        via: u64,
        owner: u64,
        shard: u16,
        message: Bytes,
        source: SocketAddr,
        transport: &str,
        meta: ForwardMeta,
    ) -> bool {
        self.pool.forward(
            owner,
            SipForward {
                message: message.to_vec(),
                peer: source.to_string(),
                transport: transport.to_owned(),
                shard: u32::from(shard),
                via_node: via,
                traceparent: meta.traceparent.unwrap_or_default(),
                send: false,
                trying_sent: meta.trying_sent,
                bounce: false,
                bounces: meta.bounces,
                checked: meta.checked,
                understands_trying: true,
            },
        )
    }
    fn send_via(&self, via: u64, message: Bytes, dest: SocketAddr, transport: &str) -> bool {
        self.pool.forward(
            via,
            SipForward {
                message: message.to_vec(),
                peer: dest.to_string(),
                transport: transport.to_owned(),
                shard: 0,
                via_node: self.pool.node_id(),
                traceparent: String::new(),
                send: true,
                understands_trying: true,
                ..SipForward::default()
            },
        )
    }
    fn understands_trying(&self, node: u64) -> bool {
        self.pool.understands_trying(node)
    }
    fn bounce(
        &self,
        via: u64,
        message: Bytes,
        source: SocketAddr,
        transport: &str,
        bounces: u32,
        checked: bool,
    ) -> bool {
        self.pool.forward(
            via,
            SipForward {
                message: message.to_vec(),
                peer: source.to_string(),
                transport: transport.to_owned(),
                via_node: self.pool.node_id(),
                trying_sent: true,
                bounce: true,
                bounces,
                checked,
                understands_trying: true,
                ..SipForward::default()
            },
        )
    }
}

/// The node side the pool calls into.
#[derive(Default)]
pub struct NodeSink {
    /// Set once the node has started.
    pub node: OnceLock<Arc<NodeCtx>>,
    /// Shard adoptions under way (the capacity settle task waits until none is).
    pub adoptions: Arc<crate::capacity::Adoptions>,
}

impl PoolSink for NodeSink {
    fn deliver(&self, msg: SipForward) -> bool {
        let Some(node) = self.node.get() else {
            return false;
        };
        let Ok(peer) = msg.peer.parse::<SocketAddr>() else {
            return false;
        };
        let transport = medpool_b2bua::config::transport_named(&msg.transport);
        if msg.send {
            let bytes = Bytes::from(msg.message);
            node.relayed_answer(&bytes);
            return node.transports.send_now(transport, peer, bytes).is_ok();
        }
        let Ok(mut m) = SipMessage::parse(Bytes::from(msg.message)) else {
            return false;
        };
        if msg.checked {
            // The node that received these bytes from the network passed them through its door.
            m.vouched_checked();
        }
        let inbound = Inbound {
            msg: m,
            source: peer,
            transport,
            tls: None,
        };
        if msg.bounce {
            // A new-call INVITE this node forwarded, sent back by its owner.
            return node.take_back(inbound, msg.bounces);
        }
        node.inject(
            inbound,
            msg.via_node,
            ForwardMeta {
                traceparent: (!msg.traceparent.is_empty()).then_some(msg.traceparent),
                trying_sent: msg.trying_sent,
                bounces: msg.bounces,
                checked: msg.checked,
            },
        )
    }
    fn forward_lost(&self, peer: u64) {
        if let Some(node) = self.node.get() {
            let n = node.refeed_lost_to(peer);
            if n > 0 {
                tracing::info!(
                    peer,
                    invites = n,
                    "forward stream broke: new-call INVITEs answered 100 here and not answered by \
                     their owner are fed again"
                );
            }
        }
    }
    fn adopted(&self, shards: Vec<u16>) {
        let Some(node) = self.node.get().cloned() else {
            return;
        };
        let guard = self.adoptions.start();
        tokio::spawn(async move {
            let _guard = guard;
            let mut restored = 0;
            for s in &shards {
                restored += node.adopt_shard(*s).await;
            }
            tracing::info!(shards = shards.len(), restored, "shards adopted");
        });
    }
    fn late_records(&self, shards: Vec<u16>) {
        let Some(node) = self.node.get().cloned() else {
            return;
        };
        let guard = self.adoptions.start();
        tokio::spawn(async move {
            let _guard = guard;
            let mut restored = 0;
            for s in &shards {
                restored += node.adopt_shard(*s).await;
            }
            if restored > 0 {
                tracing::info!(
                    shards = shards.len(),
                    restored,
                    "late dialog records: calls rebuilt"
                );
            }
        });
    }
    fn lingering(&self) -> Vec<(u16, Vec<String>)> {
        let Some(node) = self.node.get() else {
            return Vec::new();
        };
        node.lingering_set_ups()
    }
    fn lingering_at(&self, holder: u64, calls: Vec<(u16, Vec<String>)>) {
        if let Some(node) = self.node.get() {
            node.elsewhere
                .report(holder, calls, tokio::time::Instant::now());
        }
    }
    fn released(&self, shards: Vec<u16>) {
        let Some(node) = self.node.get() else { return };
        let stopped: usize = shards.iter().map(|s| node.release_shard(*s)).sum();
        tracing::info!(shards = shards.len(), stopped, "shards released");
    }
}

/// The leader's check of a pool configuration before it is proposed: the B2BUA's own rules (the
/// same as `medpool ctl config validate`).
#[derive(Debug)]
pub struct B2buaConfigCheck;

impl medpool_cluster::pool::ConfigValidator for B2buaConfigCheck {
    fn validate(&self, body: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
        medpool_b2bua::config::PoolConfig::from_toml_str(text, "proposed pool configuration")
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use medpool_cluster::pool::ConfigValidator;

    use super::B2buaConfigCheck;

    #[test]
    fn the_leader_refuses_a_configuration_the_b2bua_would_refuse() {
        assert_eq!(B2buaConfigCheck.validate(b"# nothing configured\n"), Ok(()));
        assert!(B2buaConfigCheck.validate(b"[[trunk]]\nname = 7\n").is_err());
        assert!(B2buaConfigCheck.validate(&[0xff, 0xfe]).is_err());
    }
}
