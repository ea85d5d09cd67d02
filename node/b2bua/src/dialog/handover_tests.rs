//! Calls in set-up when their shard moves (a drain, a rebalance): they finish on the old owner,
//! hand their record over once confirmed, and the new owner carries them on; only when the move is
//! a failover, or the linger bound passes, is such a call ended (503).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use medpool_sip::{HeaderName, Method, SipMessage};

use super::DialogMsg;
use crate::cluster::{ShardOwnership, SingleNode};
use crate::handover::SETUP_LINGER;
use crate::testkit::{
    CONFIG, Expect, GW1, NODE, PBX, PeerDialog, TestNode, answer, in_dialog, invite,
};

/// One node's view of a pool whose shards all belong to `owner`; the test moves them.
struct Moving {
    me: u64,
    owner: AtomicU64,
    /// A planned move (drain, rebalance) rather than a failover.
    planned: AtomicBool,
}

impl Moving {
    fn new(me: u64, owner: u64) -> Arc<Moving> {
        Arc::new(Moving {
            me,
            owner: AtomicU64::new(owner),
            planned: AtomicBool::new(true),
        })
    }
}

impl ShardOwnership for Moving {
    fn shard_count(&self) -> u16 {
        1024
    }
    fn may_act(&self, _shard: u16) -> bool {
        self.owner.load(Ordering::SeqCst) == self.me
    }
    fn owner(&self, _shard: u16) -> Option<u64> {
        Some(self.owner.load(Ordering::SeqCst))
    }
    fn node_id(&self) -> u64 {
        self.me
    }
    fn hands_over(&self) -> bool {
        self.planned.load(Ordering::SeqCst)
    }
}

/// The caller's ACK for the 2xx `ok` to its INVITE.
fn ack_for(ok: &SipMessage) -> bytes::Bytes {
    in_dialog(
        Method::Ack,
        &format!("sip:{NODE}"),
        PBX,
        "z9hG4bK-ack",
        &PeerDialog {
            from: ok.header(HeaderName::From).unwrap(),
            to: ok.header(HeaderName::To).unwrap(),
            call_id: ok.call_id().unwrap().unwrap(),
        },
        1,
    )
}

/// A call from the pbx ringing at gw1 on `node`: its shard and the gateway's INVITE.
async fn ringing(node: &mut TestNode, call_id: &str) -> (u16, SipMessage) {
    node.receive(invite(call_id), PBX).await;
    node.expect(PBX, Expect::Status(100)).await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    node.receive(answer(&inv, 180, "g1", GW1, &[]), GW1).await;
    node.expect(PBX, Expect::Status(180)).await;
    let actors = node.ctx.registry.call_actors();
    let info = ractor::call_t!(actors[0], DialogMsg::Info, 1000).unwrap();
    (info.shard, inv)
}

/// The final answers the node sent the caller, until one that is `until` (or 5 s of quiet), and
/// the requests it sent the gateway meanwhile.
async fn finals_to_caller(node: &mut TestNode, until: u16) -> (Vec<SipMessage>, Vec<Method>) {
    let mut finals = Vec::new();
    let mut to_gateway = Vec::new();
    while let Some(s) = node.sent(Duration::from_secs(5)).await {
        if s.to == crate::testkit::addr(GW1)
            && let Some(m) = s.msg.method()
        {
            to_gateway.push(m);
        }
        if s.to == crate::testkit::addr(PBX) && s.msg.status().is_some_and(|st| st >= 200) {
            let done = s.msg.status() == Some(until);
            finals.push(s.msg);
            if done {
                break;
            }
        }
    }
    (finals, to_gateway)
}

fn statuses(finals: &[SipMessage]) -> Vec<u16> {
    finals.iter().filter_map(SipMessage::status).collect()
}

#[tokio::test(start_paused = true)]
async fn a_call_being_set_up_when_its_shard_moves_is_answered_and_carried_on_by_the_new_owner() {
    let records = Arc::new(SingleNode::new(1024));
    let old_view = Moving::new(0, 0);
    let mut old = TestNode::with_pool(CONFIG, None, old_view.clone(), records.clone()).await;
    let (shard, inv) = ringing(&mut old, "ho-1").await;
    let b_call_id = String::from_utf8_lossy(inv.call_id().unwrap().unwrap()).into_owned();

    // A drain moves the shard to node 1 between the gateway's 180 and its 200.
    old_view.owner.store(1, Ordering::SeqCst);
    assert_eq!(old.ctx.release_shard(shard), 1);
    // What the old owner reports to the new owner's hand-over fence: the call, both legs.
    let report = old.ctx.lingering_set_ups();
    assert_eq!(report, vec![(shard, vec!["ho-1".to_owned(), b_call_id])]);

    // The set-up finishes on the old owner: the caller gets the gateway's 200, not a 503.
    old.receive(answer(&inv, 200, "g1", GW1, &[]), GW1).await;
    let (finals, _) = finals_to_caller(&mut old, 200).await;
    assert_eq!(
        statuses(&finals),
        vec![200],
        "no refusal: the call is answered"
    );
    let ok = finals[0].clone();
    assert!(
        records.records_of_shard(shard).is_empty(),
        "a lingering call writes its record at the caller's ACK, not before"
    );
    assert_eq!(
        old.ctx.unrecorded_calls(),
        1,
        "a shutdown would wait for it"
    );

    // The caller's ACK reaches it (the new owner sends the lingering call's messages there): the
    // gateway's 2xx is ACKed, the record written, and the call handed over.
    old.receive(ack_for(&ok), PBX).await;
    old.expect(GW1, Expect::Request(Method::Ack)).await;
    old.calls_end().await;
    let recs = records.records_of_shard(shard);
    assert_eq!(recs.len(), 1, "the record is handed to the new owner");
    assert_eq!(recs[0].a.call_id, "ho-1");
    assert_eq!(old.ctx.stats.setups_handed_over.load(Ordering::Relaxed), 1);
    assert_eq!(old.ctx.unrecorded_calls(), 0);
    assert!(old.ctx.lingering_set_ups().is_empty());

    // The new owner rebuilds the call from the record (its late-record watch) and carries it on.
    let new_view = Moving::new(1, 1);
    let mut new = TestNode::with_pool(CONFIG, None, new_view, records.clone()).await;
    assert_eq!(new.ctx.adopt_shard(shard).await, 1);
    assert_eq!(new.ctx.active_calls(), 1);
    let actors = new.ctx.registry.call_actors();
    let info = ractor::call_t!(actors[0], DialogMsg::Info, 1000).unwrap();
    assert_eq!(info.a_call_id, "ho-1");
    assert_eq!(info.phase, super::Phase::Confirmed);
    // Nothing on the old owner ended the call: no BYE went out from it.
    while let Some(s) = old.sent(Duration::from_secs(1)).await {
        assert_ne!(s.msg.method(), Some(Method::Bye), "the old owner hung up");
    }
    drop(new.sent(Duration::from_millis(1)).await);
}

#[tokio::test(start_paused = true)]
async fn a_lingering_call_still_unanswered_after_the_bound_is_ended_cleanly() {
    let records = Arc::new(SingleNode::new(1024));
    let view = Moving::new(0, 0);
    let mut old = TestNode::with_pool(CONFIG, None, view.clone(), records).await;
    let (shard, _inv) = ringing(&mut old, "ho-2").await;
    view.owner.store(1, Ordering::SeqCst);
    old.ctx.release_shard(shard);
    // Still ringing just before the bound: no final answer to the caller yet.
    tokio::time::sleep(SETUP_LINGER - Duration::from_secs(1)).await;
    while let Some(s) = old.sent(Duration::from_millis(1)).await {
        assert!(
            s.msg.status().is_none_or(|st| st < 200),
            "a lingering call is not ended before its bound: {:?}",
            s.msg.status()
        );
    }
    assert_eq!(old.ctx.stats.setups_lingering.load(Ordering::Relaxed), 1);
    // At the bound: 503 + Retry-After to the caller, CANCEL to the gateway.
    let (finals, to_gateway) = finals_to_caller(&mut old, 503).await;
    assert_eq!(statuses(&finals), vec![503]);
    assert!(finals[0].header(HeaderName::RetryAfter).is_some());
    let cancel = if to_gateway.contains(&Method::Cancel) {
        None
    } else {
        Some(old.expect(GW1, Expect::Request(Method::Cancel)).await)
    };
    drop(cancel);
}

#[tokio::test(start_paused = true)]
async fn in_a_failover_a_call_being_set_up_is_ended_at_once() {
    let records = Arc::new(SingleNode::new(1024));
    let view = Moving::new(0, 0);
    let mut old = TestNode::with_pool(CONFIG, None, view.clone(), records).await;
    let (shard, _inv) = ringing(&mut old, "ho-3").await;
    // This node was declared down (or its lease lapsed): the new owner did not ask it.
    view.planned.store(false, Ordering::SeqCst);
    view.owner.store(1, Ordering::SeqCst);
    old.ctx.release_shard(shard);
    let (finals, to_gateway) = finals_to_caller(&mut old, 503).await;
    assert_eq!(statuses(&finals), vec![503]);
    if !to_gateway.contains(&Method::Cancel) {
        old.expect(GW1, Expect::Request(Method::Cancel)).await;
    }
    assert_eq!(old.ctx.stats.setups_lingering.load(Ordering::Relaxed), 0);
}

/// Soak 0xb92769024e78ba4c (replayed on main, round 111): a call answered on node 0 had its shard
/// moved before the caller's ACK; the call stopped there (recorded: the new owner carries it on)
/// with the gateway's 2xx not ACKed, the gateway resent its 2xx to node 0, and node 0 took it for
/// the late answer of an ended call — ACK and BYE (CSeq 2) — which reached the gateway after the
/// new owner's re-anchoring re-INVITE (CSeq 1,002): out of order (had it come first, it would have
/// ended the gateway's half of a call the pool carries on).
#[tokio::test(start_paused = true)]
async fn a_call_moved_between_its_2xx_and_the_callers_ack_is_not_hung_up_by_the_old_owner() {
    let records = Arc::new(SingleNode::new(1024));
    let view = Moving::new(0, 0);
    let mut old = TestNode::with_pool(CONFIG, None, view.clone(), records.clone()).await;
    let (shard, inv) = ringing(&mut old, "ho-4").await;
    let ok_b = answer(&inv, 200, "g1", GW1, &[]);
    old.receive(ok_b.clone(), GW1).await;
    old.expect(PBX, Expect::Status(200)).await;
    assert_eq!(
        records.records_of_shard(shard).len(),
        1,
        "an answered call is recorded at its 2xx"
    );

    // A drain moves the shard before the caller's ACK: the call stops here without a word.
    view.owner.store(1, Ordering::SeqCst);
    assert_eq!(old.ctx.release_shard(shard), 1);
    old.calls_end().await;

    // The gateway, not ACKed, sends its 2xx again, here: ACKed, not hung up.
    old.receive(ok_b, GW1).await;
    old.expect(GW1, Expect::Request(Method::Ack)).await;
    while let Some(s) = old.sent(Duration::from_secs(2)).await {
        assert_ne!(
            s.msg.method(),
            Some(Method::Bye),
            "the old owner hung up a call its shard's new owner carries on"
        );
    }
    assert_eq!(records.records_of_shard(shard).len(), 1, "the record stays");
}
