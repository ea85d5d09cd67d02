//! Calls driven without a socket, on paused time: the test plays the caller and the gateways over
//! the channel wire of [`crate::testkit`]; the transaction layer, the registry and the DialogActor
//! are the real ones.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use medpool_sip::{HeaderName, Method, SipMessage, ids};

use super::{CSEQ_SKIP, DialogMsg, Phase};
use crate::cluster::{DialogRecord, DialogStore, LegRecord, ShardOwnership, SingleNode};
use crate::testkit::{
    CONFIG, Expect, GW1, GW2, NODE, PBX, PeerDialog, TestNode, answer, in_dialog, invite,
};

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

async fn info(node: &TestNode) -> super::CallInfo {
    let actors = node.ctx.registry.call_actors();
    assert_eq!(actors.len(), 1, "one call");
    ractor::call_t!(actors[0], DialogMsg::Info, 1000).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_503_from_the_first_gateway_fails_over_to_the_next() {
    let mut node = TestNode::new().await;
    node.receive(invite("fo-1"), PBX).await;
    node.expect(PBX, Expect::Status(100)).await;
    let inv1 = node.expect(GW1, Expect::Request(Method::Invite)).await;

    node.receive(answer(&inv1, 503, "g1", GW1, &[]), GW1).await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    let inv2 = node.expect(GW2, Expect::Request(Method::Invite)).await;
    assert_ne!(
        inv1.call_id().unwrap().unwrap(),
        inv2.call_id().unwrap().unwrap(),
        "each attempt is a leg of its own"
    );

    node.receive(answer(&inv2, 200, "g2", GW2, &[]), GW2).await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    node.receive(ack_for(&ok), PBX).await;
    node.expect(GW2, Expect::Request(Method::Ack)).await;

    let call = info(&node).await;
    assert_eq!(call.phase, Phase::Confirmed);
    assert_eq!(call.gateway.as_deref(), Some("gw2"));
    assert_eq!(call.attempts, [("gw1".to_owned(), "503".to_owned())]);
}

#[tokio::test(start_paused = true)]
async fn a_cancel_crossing_the_gateways_200_ends_in_ack_and_bye_on_leg_b() {
    let mut node = TestNode::new().await;
    let inv_a = invite("cx-1");
    let inv_a_msg = SipMessage::parse(inv_a.clone()).unwrap();
    node.receive(inv_a, PBX).await;
    let inv1 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    node.receive(answer(&inv1, 180, "g1", GW1, &[]), GW1).await;
    node.expect(PBX, Expect::Status(180)).await;

    // The caller gives up while the gateway's 200 is on its way.
    let cancel_a = in_dialog(
        Method::Cancel,
        "sip:+15550100@127.0.9.100",
        PBX,
        "z9hG4bK-cx-1",
        &PeerDialog {
            from: inv_a_msg.header(HeaderName::From).unwrap(),
            to: inv_a_msg.header(HeaderName::To).unwrap(),
            call_id: b"cx-1",
        },
        1,
    );
    node.receive(cancel_a, PBX).await;
    node.expect(PBX, Expect::Status(487)).await;
    let cancel_b = node.expect(GW1, Expect::Request(Method::Cancel)).await;

    node.receive(answer(&inv1, 200, "g1", GW1, &[]), GW1).await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    let bye = node.expect(GW1, Expect::Request(Method::Bye)).await;
    assert_eq!(
        bye.call_id().unwrap().unwrap(),
        inv1.call_id().unwrap().unwrap(),
        "the leg the crossing 200 set up is hung up"
    );

    node.receive(answer(&cancel_b, 200, "g1", GW1, &[]), GW1)
        .await;
    node.receive(answer(&bye, 200, "g1", GW1, &[]), GW1).await;
    node.calls_end().await;
    assert_eq!(node.ctx.unrecorded_calls(), 0);
}

/// The record of an answered call "rb-1" on `shard` (leg A's last CSeq 5, leg B's 1), written at
/// shard epoch `epoch`.
fn rebuilt_record(shard: u16, b_call_id: &str, epoch: Option<u64>) -> DialogRecord {
    DialogRecord {
        shard,
        a: LegRecord {
            call_id: "rb-1".into(),
            remote_tag: "a-rb-1".into(),
            local_tag: "n-a".into(),
            remote_target: format!("sip:alice@{PBX}"),
            route_set: Vec::new(),
            peer: PBX.into(),
            transport: "udp".into(),
            local_cseq: 5,
            local_uri: "<sip:+15550100@127.0.9.100>;tag=n-a".into(),
            remote_uri: format!("<sip:alice@{PBX}>;tag=a-rb-1"),
            local_port: None,
            srtp_mki_len: None,
        },
        b: LegRecord {
            call_id: b_call_id.to_owned(),
            remote_tag: "g1".into(),
            local_tag: "n-b".into(),
            remote_target: format!("sip:{GW1}"),
            route_set: Vec::new(),
            peer: GW1.into(),
            transport: "udp".into(),
            local_cseq: 1,
            local_uri: "<sip:alice@127.0.9.100>;tag=n-b".into(),
            remote_uri: "<sip:+15550100@127.0.9.21>;tag=g1".into(),
            local_port: None,
            srtp_mki_len: None,
        },
        trunk: "gw1".into(),
        inbound: "pbx".into(),
        traceparent: None,
        media: None,
        session_timer: None,
        epoch,
    }
}

#[tokio::test(start_paused = true)]
async fn a_call_rebuilt_from_its_record_answers_a_bye_with_its_cseq_skipped_ahead() {
    let mut node = TestNode::new().await;
    let shard = 7;
    let b_call_id = ids::new_call_id(shard);
    let record = rebuilt_record(shard, &b_call_id, None);
    assert!(node.pool.store(record.clone()));
    super::spawn_restored(node.ctx.clone(), record)
        .await
        .unwrap();
    assert_eq!(info(&node).await.phase, Phase::Confirmed);

    // The gateway hangs up on leg B.
    let bye_b = in_dialog(
        Method::Bye,
        &format!("sip:{NODE}"),
        GW1,
        "z9hG4bK-gbye",
        &PeerDialog {
            from: b"<sip:+15550100@127.0.9.21>;tag=g1",
            to: b"<sip:alice@127.0.9.100>;tag=n-b",
            call_id: b_call_id.as_bytes(),
        },
        9,
    );
    node.receive(bye_b, GW1).await;
    node.expect(GW1, Expect::Status(200)).await;
    let bye_a = node.expect(PBX, Expect::Request(Method::Bye)).await;
    let cseq = bye_a.cseq().unwrap().unwrap().seq;
    assert!(
        cseq > 5 + CSEQ_SKIP,
        "the new owner's requests are above what the old owner may have sent: {cseq}"
    );
    assert_eq!(bye_a.call_id().unwrap().unwrap(), b"rb-1");
    node.receive(answer(&bye_a, 200, "a-rb-1", PBX, &[]), PBX)
        .await;
    node.calls_end().await;
    assert_eq!(node.pool.records(), 0, "an ended call's record goes");
}

/// One node's view of a pool in which it owns every shard, at shard epoch `.0`.
struct AtEpoch(u64);

impl ShardOwnership for AtEpoch {
    fn shard_count(&self) -> u16 {
        1024
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
    fn epoch(&self, _shard: u16) -> Option<u64> {
        Some(self.0)
    }
}

/// A node owning the shards at `epoch` rebuilds the call of `record` ("rb-1"); the caller hangs
/// up, and the node's BYE on leg B is answered. Returns that BYE's CSeq number.
async fn leg_b_bye_after_rebuild(epoch: u64, record: &DialogRecord) -> u32 {
    let pool = Arc::new(SingleNode::new(1024));
    let mut node = TestNode::with_pool(CONFIG, None, Arc::new(AtEpoch(epoch)), pool).await;
    assert!(node.pool.store(record.clone()));
    super::spawn_restored(node.ctx.clone(), record.clone())
        .await
        .unwrap();
    assert_eq!(info(&node).await.phase, Phase::Confirmed);
    let bye_a = in_dialog(
        Method::Bye,
        &format!("sip:{NODE}"),
        PBX,
        "z9hG4bK-abye",
        &PeerDialog {
            from: format!("<sip:alice@{PBX}>;tag=a-rb-1").as_bytes(),
            to: b"<sip:+15550100@127.0.9.100>;tag=n-a",
            call_id: b"rb-1",
        },
        6,
    );
    node.receive(bye_a, PBX).await;
    node.expect(PBX, Expect::Status(200)).await;
    let bye_b = node.expect(GW1, Expect::Request(Method::Bye)).await;
    node.receive(answer(&bye_b, 200, "g1", GW1, &[]), GW1).await;
    node.calls_end().await;
    bye_b.cseq().unwrap().unwrap().seq
}

/// Soak 0xb92769024e78ba4c, round 8 (a rolling restart): node 1 rebuilt a call from its record
/// and re-INVITEd the gateway; it was drained 460 ms later, before its rewrite of the record
/// landed, and node 0 rebuilt the call from the same record and re-INVITEd the gateway with the
/// same CSeq (answered 500: two nodes acting for one call, as the gateway sees it). Each owner
/// that rebuilds from one record must start a skip above the previous one: the shard's epoch,
/// raised at every change of owner, says how many owners there were since the record.
#[tokio::test(start_paused = true)]
async fn two_owners_in_a_row_that_rebuild_a_call_from_one_record_number_their_requests_apart() {
    let record = rebuilt_record(7, &ids::new_call_id(7), Some(3));
    let first = leg_b_bye_after_rebuild(4, &record).await;
    let second = leg_b_bye_after_rebuild(5, &record).await;
    assert!(
        first > 1 + CSEQ_SKIP,
        "the first new owner starts above what the writer may have sent: {first}"
    );
    assert!(
        second >= first + CSEQ_SKIP,
        "the second new owner starts above every request the first may have sent on the leg \
         (fewer than {CSEQ_SKIP} from its start): {first}, then {second}"
    );
    // A record from before epochs were recorded, or a node without a shard map: one skip.
    let old = rebuilt_record(7, &ids::new_call_id(7), None);
    assert_eq!(leg_b_bye_after_rebuild(5, &old).await, 1 + CSEQ_SKIP + 1);
}

#[tokio::test(start_paused = true)]
async fn a_record_carries_the_shard_epoch_of_the_node_that_wrote_it() {
    let pool = Arc::new(SingleNode::new(1024));
    let mut node = TestNode::with_pool(CONFIG, None, Arc::new(AtEpoch(9)), pool).await;
    node.receive(invite("ep-1"), PBX).await;
    let inv1 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    node.receive(answer(&inv1, 200, "g1", GW1, &[]), GW1).await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    node.receive(ack_for(&ok), PBX).await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    let shard = info(&node).await.shard;
    let rec = node.pool.records_of_shard(shard);
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].epoch, Some(9));
    // In the record's JSON; a record without it (an old one) still loads, as None.
    let json = serde_json::to_string(&rec[0]).unwrap();
    assert!(json.ends_with(r#","epoch":9}"#), "{json}");
    let old: DialogRecord = serde_json::from_str(&json.replace(r#","epoch":9"#, "")).unwrap();
    assert_eq!(old.epoch, None);
}

/// Soak 0xb92769024e78ba4c on the fixed tree, round 143 (a rolling restart): a call answered in the
/// instant its shard moved had its record land just as the new owner adopted the shard; the
/// adoption and the late-record pass, each a task of its own on the multi-threaded runtime, each
/// rebuilt it (two actors for one call, the second re-anchoring re-INVITE answered 500 by the
/// gateway). Two adoptions of one shard at once rebuild each call once. (Without the lock in
/// `adopt_shard` this fails when the two tasks meet on a record: in 2 of 3 runs here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_adoptions_of_a_shard_at_once_rebuild_each_call_once() {
    let node = TestNode::new().await;
    let calls = 300;
    for i in 0..calls {
        let mut record = rebuilt_record(7, &ids::new_call_id(7), None);
        record.a.call_id = format!("rb-2-{i}");
        assert!(node.pool.store(record));
    }
    let (a, b) = (node.ctx.clone(), node.ctx.clone());
    let first = tokio::spawn(async move { a.adopt_shard(7).await });
    let second = tokio::spawn(async move { b.adopt_shard(7).await });
    let rebuilt = first.await.unwrap() + second.await.unwrap();
    assert_eq!((rebuilt, node.ctx.active_calls()), (calls, calls));
}

#[test]
fn a_new_owner_skips_one_cseq_window_per_owner_since_the_record() {
    use super::record::restart_cseq;
    let k = CSEQ_SKIP;
    // Without both epochs: one window, as before epochs were recorded.
    assert_eq!(restart_cseq(5, None, Some(4)), 5 + k);
    assert_eq!(restart_cseq(5, Some(3), None), 5 + k);
    // The writer's map may already show the epoch of the reader (a record written after the
    // move, at the end of a call's set-up): one window still.
    assert_eq!(restart_cseq(5, Some(4), Some(4)), 5 + k);
    assert_eq!(restart_cseq(5, Some(3), Some(4)), 5 + 2 * k);
    assert_eq!(restart_cseq(5, Some(3), Some(6)), 5 + 4 * k);
    // A reader behind the writer cannot be (the record was applied after the writer's map), and
    // would get one window.
    assert_eq!(restart_cseq(5, Some(9), Some(4)), 5 + k);
    // Never at or above 2**31 (RFC 3261 §8.1.1.5).
    assert_eq!(restart_cseq(5, Some(0), Some(u64::MAX)), (1 << 31) - 1);
    assert_eq!(restart_cseq(u32::MAX - 3, None, None), (1 << 31) - 1);
}

#[tokio::test(start_paused = true)]
async fn the_session_timer_refresh_is_an_update_at_half_the_interval_when_we_refresh() {
    let mut node = TestNode::new().await;
    node.receive(invite("st-1"), PBX).await;
    let inv1 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let se: &[(HeaderName, &[u8])] = &[
        (HeaderName::SessionExpires, b"90;refresher=uac"),
        (HeaderName::Require, b"timer"),
    ];
    node.receive(answer(&inv1, 200, "g1", GW1, se), GW1).await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    node.receive(ack_for(&ok), PBX).await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    let confirmed = tokio::time::Instant::now();

    let update = node.expect(GW1, Expect::Request(Method::Update)).await;
    let waited = confirmed.elapsed();
    assert!(
        waited >= Duration::from_secs(45) && waited < Duration::from_secs(46),
        "refreshed after {waited:?}"
    );
    assert_eq!(
        update.header(HeaderName::SessionExpires),
        Some(&b"90;refresher=uac"[..])
    );
    assert_eq!(update.call_id(), inv1.call_id());
    assert_eq!(update.cseq().unwrap().unwrap().seq, 2);
    node.receive(answer(&update, 200, "g1", GW1, &[]), GW1)
        .await;
    assert_eq!(info(&node).await.phase, Phase::Confirmed);
}

#[tokio::test(start_paused = true)]
async fn a_call_that_panics_gives_back_what_it_held_and_the_others_go_on() {
    let mut node = TestNode::new().await;
    node.receive(invite("pa-1"), PBX).await;
    let inv1 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    node.receive(invite("pa-2"), PBX).await;
    let inv2 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let gw1 = node.ctx.gateways.get("gw1").unwrap();
    assert_eq!(node.ctx.active_calls(), 2);
    assert_eq!(gw1.active_calls(), 2);
    assert_eq!(node.ctx.unrecorded_calls(), 2);
    assert_eq!(node.ctx.inbound_active()["pbx"], 2);

    // Call 1 dies in a panic: ractor skips its post_stop.
    let mut doomed = None;
    for actor in node.ctx.registry.call_actors() {
        let call = ractor::call_t!(actor, DialogMsg::Info, 1000).unwrap();
        if call.a_call_id == "pa-1" {
            doomed = Some(actor);
        }
    }
    doomed.unwrap().cast(DialogMsg::PanicForTest).unwrap();
    // Its caller is told (its INVITE's transaction must end), and the supervisor hears of it.
    node.expect(PBX, Expect::Status(500)).await;
    for _ in 0..100 {
        if node
            .ctx
            .stats
            .actors_failed
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        node.ctx
            .stats
            .actors_failed
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert_eq!(node.ctx.active_calls(), 1, "its registry entries are gone");
    assert!(
        !node
            .ctx
            .registry
            .is_our_leg_b(inv1.call_id().unwrap().unwrap())
    );
    assert_eq!(gw1.active_calls(), 1, "its gateway slot is free");
    assert_eq!(node.ctx.inbound_active()["pbx"], 1);
    assert_eq!(
        node.ctx.unrecorded_calls(),
        1,
        "shutdown no longer waits for it"
    );
    // The gateway's late answer to the dead call's INVITE ends that transaction.
    node.receive(answer(&inv1, 486, "g1", GW1, &[]), GW1).await;

    // Call 2 goes on: answered, confirmed, hung up.
    node.receive(answer(&inv2, 200, "g2", GW1, &[]), GW1).await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    assert_eq!(ok.call_id().unwrap().unwrap(), b"pa-2");
    node.receive(ack_for(&ok), PBX).await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    let bye_a = in_dialog(
        Method::Bye,
        &format!("sip:{NODE}"),
        PBX,
        "z9hG4bK-pa-2-bye",
        &PeerDialog {
            from: ok.header(HeaderName::From).unwrap(),
            to: ok.header(HeaderName::To).unwrap(),
            call_id: b"pa-2",
        },
        2,
    );
    node.receive(bye_a, PBX).await;
    node.expect(PBX, Expect::Status(200)).await;
    let bye_b = node.expect(GW1, Expect::Request(Method::Bye)).await;
    node.receive(answer(&bye_b, 200, "g2", GW1, &[]), GW1).await;
    node.calls_end().await;
    assert_eq!(gw1.active_calls(), 0);
    assert!(
        node.ctx.nothing_to_wait_for(true),
        "a shutdown now has nothing to wait for: unrecorded {}, unfinished {}",
        node.ctx.unrecorded_calls(),
        node.ctx.driver.unfinished()
    );
}

#[tokio::test(start_paused = true)]
async fn a_waiting_shutdown_wakes_when_the_last_call_ends_not_at_its_deadline() {
    let mut node = TestNode::new().await;
    node.receive(invite("sd-1"), PBX).await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    assert!(
        !node.ctx.nothing_to_wait_for(false),
        "a call in set-up holds a shutdown"
    );

    // The shutdown's wait, as `RunningNode::shutdown` runs it (draining first).
    node.ctx
        .draining
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let grace = Duration::from_secs(10);
    let ctx = std::sync::Arc::clone(&node.ctx);
    let waiter = tokio::spawn(async move {
        let started = tokio::time::Instant::now();
        let held = ctx.until_nothing_to_wait_for(false, started + grace).await;
        (held, started.elapsed())
    });

    // The gateway refuses (486 is no failover code): the call ends, its transactions complete.
    node.receive(answer(&inv, 486, "g1", GW1, &[]), GW1).await;
    node.expect(PBX, Expect::Status(486)).await;
    let (held, waited) = waiter.await.unwrap();
    assert!(held, "nothing left to wait for");
    // On paused time an unwoken waiter would only return at its deadline.
    assert!(
        waited < grace,
        "woken by the call's end, not by its deadline: {waited:?}"
    );
}

/// The caller's in-dialog `method` with CSeq `cseq` in the dialog of its 2xx `ok`.
fn from_caller(method: Method, ok: &SipMessage, branch: &str, cseq: u32) -> bytes::Bytes {
    in_dialog(
        method,
        &format!("sip:{NODE}"),
        PBX,
        branch,
        &PeerDialog {
            from: ok.header(HeaderName::From).unwrap(),
            to: ok.header(HeaderName::To).unwrap(),
            call_id: ok.call_id().unwrap().unwrap(),
        },
        cseq,
    )
}

#[tokio::test(start_paused = true)]
async fn a_2xx_the_gateway_sends_again_gets_the_ack_of_its_own_invite() {
    let mut node = TestNode::new().await;
    node.receive(invite("ra-1"), PBX).await;
    let inv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let ok_b = answer(&inv_b, 200, "g1", GW1, &[]);
    node.receive(ok_b.clone(), GW1).await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    node.receive(ack_for(&ok), PBX).await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;

    // The caller re-INVITEs; the gateway answers; the caller's ACK goes on to leg B.
    node.receive(from_caller(Method::Invite, &ok, "z9hG4bK-re1", 2), PBX)
        .await;
    let reinv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let b_seq = reinv_b.cseq().unwrap().unwrap().seq;
    assert!(b_seq > 1);
    let ok2_b = answer(&reinv_b, 200, "g1", GW1, &[]);
    node.receive(ok2_b.clone(), GW1).await;
    node.expect(PBX, Expect::Status(200)).await;
    node.receive(from_caller(Method::Ack, &ok, "z9hG4bK-ack2", 2), PBX)
        .await;
    let ack2 = node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert_eq!(ack2.cseq().unwrap().unwrap().seq, b_seq);

    // Long after both INVITE transactions ended, the gateway sends each 2xx again (its ACKs were
    // lost): each gets the ACK of its own INVITE.
    tokio::time::sleep(Duration::from_secs(60)).await;
    node.receive(ok2_b, GW1).await;
    let again = node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert_eq!(
        again.cseq().unwrap().unwrap().seq,
        b_seq,
        "the re-INVITE's ACK"
    );
    node.receive(ok_b, GW1).await;
    let again = node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert_eq!(again.cseq().unwrap().unwrap().seq, 1, "the INVITE's ACK");
    assert_eq!(info(&node).await.phase, Phase::Confirmed);
}

/// A call's long timers end when it stops: the fast-failover timer (10 s by default) of a call that
/// lasted a moment does not keep a task alive until it fires — a pending timer holds the stopped
/// actor's reference, and with it the actor's cell and mailboxes.
#[tokio::test(start_paused = true)]
async fn a_call_that_ended_leaves_no_timer_task_behind() {
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let mut node = TestNode::new().await;
    let before = tasks();
    node.receive(invite("tm-1"), PBX).await;
    let inv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
    node.receive(answer(&inv_b, 200, "g1", GW1, &[]), GW1).await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    node.receive(ack_for(&ok), PBX).await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert!(tasks() > before, "the call runs (its actor, its timers)");

    // The caller hangs up at once.
    node.receive(from_caller(Method::Bye, &ok, "z9hG4bK-bye1", 2), PBX)
        .await;
    node.expect(PBX, Expect::Status(200)).await;
    let bye_b = node.expect(GW1, Expect::Request(Method::Bye)).await;
    node.receive(answer(&bye_b, 200, "g1", GW1, &[]), GW1).await;
    node.calls_end().await;

    // Past the short timers (the 2xx retransmission's, at most T2 = 4 s), well before the 10 s
    // fast failover would fire.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        tasks(),
        before,
        "a task outlived the call (a timer holding its actor)"
    );
}

/// A call that ends takes the routes of its answered client transactions out of the registry at
/// once, though the transactions linger (the INVITE's 64*T1 after its 2xx, Timer M): a route kept
/// that long names a call that is gone. A late copy of the gateway's 2xx still matches the
/// lingering transaction and is ACKed by the node, as before; the leg was hung up with the call,
/// so it gets no second BYE.
#[tokio::test(start_paused = true)]
async fn a_call_that_ended_forgets_its_client_routes_and_a_late_2xx_is_still_acked() {
    use medpool_sip::transaction::State;
    let mut node = TestNode::new().await;
    node.receive(invite("cr-1"), PBX).await;
    let inv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let key = crate::txlayer::client_key_of_request(&inv_b).unwrap();
    let ok_b = answer(&inv_b, 200, "g1", GW1, &[]);
    node.receive(ok_b.clone(), GW1).await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    node.receive(ack_for(&ok), PBX).await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert!(
        node.ctx.registry.has_client(&key),
        "routed while the call is up"
    );

    node.receive(from_caller(Method::Bye, &ok, "z9hG4bK-cr-bye", 2), PBX)
        .await;
    node.expect(PBX, Expect::Status(200)).await;
    let bye_b = node.expect(GW1, Expect::Request(Method::Bye)).await;
    node.receive(answer(&bye_b, 200, "g1", GW1, &[]), GW1).await;
    node.calls_end().await;

    assert_eq!(
        node.ctx.driver.client_state(&key),
        Some(State::Accepted),
        "the INVITE's transaction lingers"
    );
    assert!(
        !node.ctx.registry.has_client(&key),
        "its route went with the call"
    );

    tokio::time::sleep(Duration::from_secs(2)).await;
    node.receive(ok_b, GW1).await;
    let ack = node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert_eq!(ack.cseq().unwrap().unwrap().seq, 1, "the INVITE's ACK");
    while let Some(s) = node.sent(Duration::from_secs(2)).await {
        assert_ne!(s.msg.method(), Some(Method::Bye), "a second BYE: {s:?}");
    }
    assert_eq!(node.ctx.driver.client_state(&key), Some(State::Accepted));
}
