//! The B2BUA's only view of the pool: who owns a shard, and where confirmed dialogs are kept. The
//! Raft pool implements these traits; [`SingleNode`] is the embedded single-node pool (owns every
//! shard, keeps dialog records in memory), so every B2BUA test runs without Raft.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// Shard ownership as the node sees it (its applied shard map plus its lease).
pub trait ShardOwnership: Send + Sync + 'static {
    /// How many shards the pool has (fixed for its life).
    fn shard_count(&self) -> u16;
    /// Whether this node may act for `shard` now (owns it and holds a valid lease).
    fn may_act(&self, shard: u16) -> bool;
    /// The node that owns `shard` in this node's copy of the shard map (it may be this node).
    fn owner(&self, shard: u16) -> Option<u64>;
    /// This node's id.
    fn node_id(&self) -> u64;
    /// Whether this node took `shard` over recently enough that a call of it may still be unknown
    /// here: its record, written by the old owner just before it lost the shard, can arrive late.
    fn recently_taken(&self, _shard: u16) -> bool {
        false
    }
    /// Whether this node owns `shard` in its shard map but does not act for it yet: it waits for
    /// the old owner to report the shard released (a hand-over fence, normally milliseconds), or
    /// for its first lease after a restart (also milliseconds). A new UDP call meanwhile is left
    /// to its retransmission rather than refused.
    fn taking_over(&self, _shard: u16) -> bool {
        false
    }
    /// Whether shards this node releases now are handed over (a planned move: a drain, a
    /// rebalance), so that its calls in set-up may finish here: it holds its lease and is not
    /// marked down, and the new owner's hand-over fence asks it which calls it still sets up.
    /// False in a failover (this node was declared down, or its lease lapsed): the new owner took
    /// the shards without asking, and those calls end here.
    fn hands_over(&self) -> bool {
        true
    }
    /// The epoch of `shard` in this node's copy of the shard map (raised at every change of
    /// owner), or `None` without a shard map (a node alone). A record carries its writer's, and a
    /// new owner skips each leg's CSeq further ahead the more owners the shard had since
    /// ([`crate::dialog::CSEQ_SKIP`]).
    fn epoch(&self, _shard: u16) -> Option<u64> {
        None
    }
    /// A shard this node may act for now, chosen by `pick` (a Call-ID's shard) among all it acts
    /// for, so that calls spread evenly over them whatever the shards' layout; `None` when it acts
    /// for none. Where a new call received here is set up (`[node] local_calls`). One `pick` gives
    /// the same shard while the acting set stays the same.
    fn local_shard(&self, pick: u16) -> Option<u16> {
        let acting: Vec<u16> = (0..self.shard_count())
            .filter(|&s| self.may_act(s))
            .collect();
        (!acting.is_empty()).then(|| acting[usize::from(pick) % acting.len()])
    }
}

/// What travels with a forwarded message besides its bytes, source and transport.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardMeta {
    /// W3C trace context of the forwarding node's span.
    pub traceparent: Option<String>,
    /// A new-call INVITE that the node which received it from the network answered 100 Trying
    /// itself: its owner sends none, and sends back ([`Relay::bounce`]) what it cannot take now
    /// instead of dropping it (the caller, answered 100, does not retransmit).
    pub trying_sent: bool,
    /// How many times an owner sent this INVITE back already.
    pub bounces: u32,
    /// The message passed the front-door checks of the node that received it from the network
    /// (medpool-sip's screen), so its receiver need not check those headers again.
    pub checked: bool,
}

/// Moving SIP between nodes: a message received here for a shard another node owns goes to that owner,
/// and the owner's answers to it leave from the node that received it (ARCHITECTURE.md, "The life of a message").
pub trait Relay: Send + Sync + 'static {
    /// Hands a received message to `owner`; false when it cannot be delivered (the caller drops it or
    /// answers 503; peers retransmit).
    fn forward(
        &self,
        owner: u64,
        shard: u16,
        message: bytes::Bytes,
        source: std::net::SocketAddr,
        transport: &str,
        meta: ForwardMeta,
    ) -> bool;
    /// Hands a message to `owner` as [`Relay::forward`] does, naming `via` as the node that
    /// received it from the network (its answers leave from there): a node passing a message on
    /// to the node still setting up its call (a shard's previous owner, see
    /// [`crate::handover`]) keeps the receiving node's name. The default names this node.
    #[allow(clippy::too_many_arguments)]
    fn forward_for(
        &self,
        via: u64,
        owner: u64,
        shard: u16,
        message: bytes::Bytes,
        source: std::net::SocketAddr,
        transport: &str,
        meta: ForwardMeta,
    ) -> bool {
        let _ = via;
        self.forward(owner, shard, message, source, transport, meta)
    }
    /// Whether `node` understands a new-call INVITE marked [`ForwardMeta::trying_sent`]: it sends
    /// no 100 for it and sends back what it cannot take. A node answers 100 to, and marks, only
    /// the INVITEs it forwards to such a node (a node of the previous version would drop a marked
    /// INVITE behind its hand-over fence, and its caller no longer retransmits).
    fn understands_trying(&self, node: u64) -> bool {
        let _ = node;
        true
    }
    /// Asks node `via` to send `message` to `dest` from its own socket.
    fn send_via(
        &self,
        via: u64,
        message: bytes::Bytes,
        dest: std::net::SocketAddr,
        transport: &str,
    ) -> bool;
    /// Sends a new-call INVITE back to `via`, the node that received it from `source` and
    /// answered it 100 Trying: this node cannot take it now; `via` feeds it to itself again later
    /// (the `bounces`-th time; `checked` as in [`ForwardMeta`]). False when it cannot be sent (the
    /// call is then lost, as one whose owner died).
    #[allow(clippy::too_many_arguments)]
    fn bounce(
        &self,
        via: u64,
        message: bytes::Bytes,
        source: std::net::SocketAddr,
        transport: &str,
        bounces: u32,
        checked: bool,
    ) -> bool {
        let _ = (via, message, source, transport, bounces, checked);
        false
    }
}

/// No other node: nothing is ever forwarded.
#[derive(Debug, Default)]
pub struct NoRelay;

impl Relay for NoRelay {
    fn forward(
        &self,
        _: u64,
        _: u16,
        _: bytes::Bytes,
        _: std::net::SocketAddr,
        _: &str,
        _: ForwardMeta,
    ) -> bool {
        false
    }
    fn send_via(&self, _: u64, _: bytes::Bytes, _: std::net::SocketAddr, _: &str) -> bool {
        false
    }
}

/// What another node needs to carry an established call on (ARCHITECTURE.md, "The pool": records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DialogRecord {
    /// Shard of the call.
    pub shard: u16,
    /// Leg A: Call-ID, the peer's tag, our tag, the peer's target and route set, transport and address.
    pub a: LegRecord,
    /// Leg B: the same for the gateway side.
    pub b: LegRecord,
    /// The gateway trunk carrying the call.
    pub trunk: String,
    /// The trunk the call came in on.
    pub inbound: String,
    /// W3C trace context of the call's root span, so the node that takes the call over continues
    /// the same trace.
    #[serde(default)]
    pub traceparent: Option<String>,
    /// The call's media plan when its media is relayed (none: signalling only, or a record written
    /// before media failover existed). A new owner with a relay re-anchors the call's media on
    /// itself from it (README.md, "Media").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<crate::media::MediaPlan>,
    /// The call's RFC 4028 session timer, when it has one (none: no timer, or a record written
    /// before the timer was recorded). A new owner refreshes when `we_refresh`, and watches for
    /// the session's expiry either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_timer: Option<SessionTimerRecord>,
    /// The shard's epoch in the writer's shard map when it wrote the record
    /// ([`ShardOwnership::epoch`]; none: a node alone, or a record written before it existed). A
    /// node that rebuilds the call at epoch E starts each leg's CSeq CSEQ_SKIP × (E − epoch + 1)
    /// above the recorded one, so that every owner the shard had since the record was written —
    /// each rebuilt the call from this record or a later one and sent fewer than CSEQ_SKIP
    /// requests on a leg beyond its own start — stays below (ARCHITECTURE.md, "Failover").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// A call's session timer as its record keeps it (RFC 4028).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTimerRecord {
    /// The session interval in seconds (the last Session-Expires agreed).
    pub interval: u32,
    /// This node refreshes the session on leg B (the caller asked for no timer; the gateway made
    /// us the refresher). False: a peer refreshes, its refreshes pass through; we only watch.
    pub we_refresh: bool,
}

/// One leg of a confirmed dialog.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LegRecord {
    /// Call-ID.
    pub call_id: String,
    /// The peer's tag.
    pub remote_tag: String,
    /// Our tag.
    pub local_tag: String,
    /// The peer's Contact URI (remote target).
    pub remote_target: String,
    /// Route set, in the order we put it in Route headers.
    pub route_set: Vec<String>,
    /// Peer address `ip:port`.
    pub peer: String,
    /// "udp", "tcp" or "tls".
    pub transport: String,
    /// The highest CSeq we sent on this leg.
    pub local_cseq: u32,
    /// The From header value we send on this leg (with our tag).
    pub local_uri: String,
    /// The To header value we send on this leg (with the peer's tag).
    pub remote_uri: String,
    /// The trunk port (`trunk.local_port`) the leg is reached on and sent from; `None` (and in
    /// records written before it existed): the node's main listener.
    #[serde(default)]
    pub local_port: Option<u16>,
    /// The MKI length (bytes) of this leg's SRTP peer, when it used one; never a key (keys stay
    /// out of records: the new owner re-keys, with an MKI of this length).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub srtp_mki_len: Option<u8>,
}

/// Where confirmed dialogs are written (replicated, in a pool) and removed when they end.
pub trait DialogStore: Send + Sync + 'static {
    /// Records a confirmed dialog (replaces an earlier record of the same leg-A Call-ID). Returns
    /// whether the record was taken for writing: `false` when this node may not act for the shard
    /// (its lease lapsed, the shard is moving) or the write queue is full; the caller tries again
    /// later or, once the shard is gone, ends the call (an unrecorded call cannot move).
    fn store(&self, record: DialogRecord) -> bool;
    /// Rewrites the record of a call rebuilt from it: replaces the record the pool holds and never
    /// inserts one, so that a record the call's old node removed (the call ended there in the
    /// instant of the move) stays removed. Returns as [`DialogStore::store`] (taken for writing,
    /// whether or not it will replace anything).
    fn replace(&self, record: DialogRecord) -> bool {
        self.store(record)
    }
    /// Whether records are kept at all. A store that keeps none (a node alone: no other node could
    /// carry a call on) spares its calls building a record (both legs as strings) and removing it.
    fn keeps_records(&self) -> bool {
        true
    }
    /// Forgets a dialog that ended. Not fenced by the shard's lease: a call that ended here, even in
    /// the instant its shard moved, must not be rebuilt by the new owner.
    fn remove(&self, shard: u16, a_call_id: &str);
    /// Whether a record of the call exists. A call rebuilt from its record checks that the record is
    /// still there: its old node may have ended it during the hand-over.
    fn contains(&self, shard: u16, a_call_id: &str) -> bool;
    /// The confirmed dialogs of a shard (read when this node takes the shard over).
    fn records_of(&self, shard: u16) -> Vec<DialogRecord>;
}

/// The embedded single-node pool: owns every shard, keeps dialog records in memory.
#[derive(Debug)]
pub struct SingleNode {
    shards: u16,
    records: Mutex<BTreeMap<(u16, String), DialogRecord>>,
    /// Keep the records (tests read them); a node alone keeps none ([`SingleNode::alone`]).
    keep: bool,
}

impl SingleNode {
    /// A single-node pool with `shards` shards that keeps every record in memory (what tests read).
    pub fn new(shards: u16) -> SingleNode {
        SingleNode {
            shards,
            records: Mutex::new(BTreeMap::new()),
            keep: true,
        }
    }

    /// A node alone (`medpool serve` without a pool): no other node could carry a call on and the
    /// memory is gone at a restart, so a record is worth nothing and none is kept (a copy of every
    /// established call's state, both legs, would cost memory for each call held). Every write
    /// succeeds; no call is ever ended elsewhere ([`DialogStore::contains`] is always true).
    pub fn alone(shards: u16) -> SingleNode {
        SingleNode {
            keep: false,
            ..SingleNode::new(shards)
        }
    }

    /// The records of one shard (for tests and tools).
    pub fn records_of_shard(&self, shard: u16) -> Vec<DialogRecord> {
        DialogStore::records_of(self, shard)
    }

    /// How many dialog records are held.
    pub fn records(&self) -> usize {
        self.records.lock().map(|r| r.len()).unwrap_or(0)
    }
}

impl ShardOwnership for SingleNode {
    fn shard_count(&self) -> u16 {
        self.shards
    }
    fn may_act(&self, _shard: u16) -> bool {
        true
    }
    fn owner(&self, _shard: u16) -> Option<u64> {
        Some(0)
    }
    fn node_id(&self) -> u64 {
        0
    }
    /// A node alone hands nothing over: no other node would take its shards, ask which calls it
    /// still sets up, or send them their messages. A released shard's calls in set-up end here.
    fn hands_over(&self) -> bool {
        false
    }
}

impl DialogStore for SingleNode {
    fn keeps_records(&self) -> bool {
        self.keep
    }
    fn store(&self, record: DialogRecord) -> bool {
        if !self.keep {
            return true;
        }
        match self.records.lock() {
            Ok(mut r) => {
                r.insert((record.shard, record.a.call_id.clone()), record);
                true
            }
            Err(_) => false,
        }
    }
    fn replace(&self, record: DialogRecord) -> bool {
        if !self.keep {
            return true;
        }
        match self.records.lock() {
            Ok(mut r) => {
                if let Some(kept) = r.get_mut(&(record.shard, record.a.call_id.clone())) {
                    *kept = record;
                }
                true
            }
            Err(_) => false,
        }
    }
    fn contains(&self, shard: u16, a_call_id: &str) -> bool {
        if !self.keep {
            return true;
        }
        self.records
            .lock()
            .is_ok_and(|r| r.contains_key(&(shard, a_call_id.to_owned())))
    }
    fn remove(&self, shard: u16, a_call_id: &str) {
        if let Ok(mut r) = self.records.lock() {
            r.remove(&(shard, a_call_id.to_owned()));
        }
    }
    fn records_of(&self, shard: u16) -> Vec<DialogRecord> {
        self.records
            .lock()
            .map(|r| {
                r.range((shard, String::new())..)
                    .take_while(|((s, _), _)| *s == shard)
                    .map(|(_, v)| v.clone())
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leg(call_id: &str) -> LegRecord {
        LegRecord {
            call_id: call_id.into(),
            remote_tag: "r".into(),
            local_tag: "l".into(),
            remote_target: "sip:a@192.0.2.1".into(),
            route_set: Vec::new(),
            peer: "192.0.2.1:5060".into(),
            transport: "udp".into(),
            local_port: None,
            srtp_mki_len: None,
            local_cseq: 1,
            local_uri: "<sip:b@192.0.2.2>".into(),
            remote_uri: "<sip:a@192.0.2.1>".into(),
        }
    }

    fn record(call_id: &str) -> DialogRecord {
        DialogRecord {
            shard: 3,
            a: leg(call_id),
            b: leg("b"),
            trunk: "gw".into(),
            inbound: "pbx".into(),
            traceparent: None,
            media: None,
            session_timer: None,
            epoch: None,
        }
    }

    #[test]
    fn a_node_alone_keeps_no_record_and_never_hears_a_call_ended_elsewhere() {
        let kept = SingleNode::new(16);
        assert!(kept.store(record("a1")));
        assert_eq!(kept.records(), 1);
        assert!(kept.contains(3, "a1") && !kept.contains(3, "a2"));
        assert!(kept.keeps_records());

        let alone = SingleNode::alone(16);
        assert!(alone.store(record("a1")), "every write succeeds");
        assert_eq!(alone.records(), 0, "and nothing is held");
        assert!(alone.records_of(3).is_empty());
        assert!(alone.contains(3, "a2"), "no call is ever ended elsewhere");
        assert!(!alone.keeps_records(), "so its calls need not build one");
    }

    /// Acts for one block of shards, [from, to).
    struct Block(u16, u16);
    impl ShardOwnership for Block {
        fn shard_count(&self) -> u16 {
            1024
        }
        fn may_act(&self, shard: u16) -> bool {
            (self.0..self.1).contains(&shard)
        }
        fn owner(&self, _: u16) -> Option<u64> {
            None
        }
        fn node_id(&self) -> u64 {
            0
        }
    }

    #[test]
    fn a_local_shard_is_one_this_node_acts_for_and_calls_spread_over_all_of_them() {
        let block = Block(100, 441);
        let mut used = std::collections::BTreeSet::new();
        for pick in 0..1024u16 {
            let s = block.local_shard(pick).unwrap();
            assert!(block.may_act(s), "{pick} -> {s}");
            assert_eq!(
                block.local_shard(pick),
                Some(s),
                "the same pick, the same shard"
            );
            used.insert(s);
        }
        // Every shard of the block takes some calls (a scan to the next shard acted for would
        // have put every pick outside the block on shard 100).
        assert_eq!(used.len(), 341);
        assert_eq!(Block(0, 0).local_shard(7), None, "acting for none");
    }
}
