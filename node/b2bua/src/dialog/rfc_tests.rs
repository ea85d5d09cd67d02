//! RFC gaps closed, driven without a socket on paused time (see [`crate::testkit`]): session timers
//! (RFC 4028: 422 retried, expiry teardown, the refresher kept in the record), forking on leg B
//! (RFC 3261 §13.2.2.4), REFER policy by the sending side, P-Asserted-Identity translated, and
//! RFC 6442 location conveyance relayed unchanged.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use bytes::Bytes;
use medpool_sip::{HeaderName, Method, SipMessage, ids};

use super::{DialogMsg, Phase};
use crate::cluster::{DialogRecord, DialogStore, LegRecord, SessionTimerRecord};
use crate::testkit::{
    CONFIG, Expect, GW1, NODE, PBX, PeerDialog, TestNode, answer, in_dialog, invite,
};

/// `msg` with `headers` (CRLF-separated lines) added after its start line.
fn with_headers(msg: Bytes, headers: &str) -> Bytes {
    let text = String::from_utf8(msg.to_vec()).unwrap();
    let text = text.replacen("\r\n", &format!("\r\n{headers}\r\n"), 1);
    Bytes::from(text)
}

/// The caller's ACK (CSeq 1) or in-dialog request in the dialog of its 2xx `ok`.
fn from_caller(method: Method, ok: &SipMessage, branch: &str, cseq: u32) -> Bytes {
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

/// The gateway's in-dialog request on leg B, in the dialog its INVITE `inv` and tag `tag` make.
fn from_gateway(method: Method, inv: &SipMessage, tag: &str, branch: &str, cseq: u32) -> Bytes {
    let to = format!(
        "{};tag={tag}",
        String::from_utf8_lossy(inv.header(HeaderName::To).unwrap())
    );
    in_dialog(
        method,
        &format!("sip:{NODE}"),
        GW1,
        branch,
        &PeerDialog {
            from: to.as_bytes(),
            to: inv.header(HeaderName::From).unwrap(),
            call_id: inv.call_id().unwrap().unwrap(),
        },
        cseq,
    )
}

async fn info(node: &TestNode) -> super::CallInfo {
    let actors = node.ctx.registry.call_actors();
    assert_eq!(actors.len(), 1, "one call");
    ractor::call_t!(actors[0], DialogMsg::Info, 1000).unwrap()
}

fn header<'m>(msg: &'m SipMessage, name: &str) -> Option<&'m [u8]> {
    msg.other_header(name).next()
}

fn to_tag(msg: &SipMessage) -> &[u8] {
    msg.to_tag().unwrap()
}

/// A node whose gateway gw1 asks for a 90 s session timer.
async fn node_with_timer() -> TestNode {
    let text = CONFIG.replace(
        "address = \"127.0.9.21\"",
        "address = \"127.0.9.21\"\nsession_expires = 90",
    );
    TestNode::with(&text, None).await
}

/// Sets a call up through gw1, the gateway answering with `se` (its Session-Expires, if any):
/// returns the leg-B INVITE and the caller's 200, the call confirmed and ACKed on both legs.
async fn answered_call(
    node: &mut TestNode,
    call_id: &str,
    caller_headers: &str,
    se: Option<&[u8]>,
) -> (SipMessage, SipMessage) {
    let inv_a = if caller_headers.is_empty() {
        invite(call_id)
    } else {
        with_headers(invite(call_id), caller_headers)
    };
    node.receive(inv_a, PBX).await;
    let inv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let extra: Vec<(HeaderName, &[u8])> = se
        .map(|v| {
            vec![
                (HeaderName::SessionExpires, v),
                (HeaderName::Require, &b"timer"[..]),
            ]
        })
        .unwrap_or_default();
    node.receive(answer(&inv_b, 200, "g1", GW1, &extra), GW1)
        .await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    node.receive(from_caller(Method::Ack, &ok, "z9hG4bK-ack", 1), PBX)
        .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    (inv_b, ok)
}

// ------------------------------------------------------------------------------------------------
// Session timers (RFC 4028)

#[tokio::test(start_paused = true)]
async fn a_422_from_the_gateway_is_retried_once_with_the_interval_raised_to_its_min_se() {
    let mut node = node_with_timer().await;
    node.receive(invite("st422-1"), PBX).await;
    let inv1 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    assert_eq!(inv1.session_expires().unwrap().unwrap().delta, 90);

    node.receive(
        answer(&inv1, 422, "g1", GW1, &[(HeaderName::MinSe, b"180")]),
        GW1,
    )
    .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    let inv2 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    assert_eq!(inv2.session_expires().unwrap().unwrap().delta, 180);
    assert_eq!(inv2.min_se().unwrap().unwrap(), 180);
    assert_eq!(inv2.call_id(), inv1.call_id(), "the same leg");
    assert_eq!(inv2.from_tag(), inv1.from_tag());
    assert_eq!(inv2.cseq().unwrap().unwrap().seq, 2);
    assert_ne!(inv2.top_branch(), inv1.top_branch(), "a new transaction");
    assert_eq!(inv2.body(), inv1.body());

    // The answer to the retry is the call's.
    let se: &[(HeaderName, &[u8])] = &[(HeaderName::SessionExpires, b"180;refresher=uac")];
    node.receive(answer(&inv2, 200, "g1", GW1, se), GW1).await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    node.receive(from_caller(Method::Ack, &ok, "z9hG4bK-a422", 1), PBX)
        .await;
    let ack = node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert_eq!(
        ack.cseq().unwrap().unwrap().seq,
        2,
        "the ACK of the retried INVITE"
    );
    let call = info(&node).await;
    assert_eq!(call.phase, Phase::Confirmed);
    assert_eq!(
        call.attempts,
        [(
            "gw1".to_owned(),
            "422: sent again with Session-Expires 180".to_owned()
        )]
    );
    // Its refresh is ours, at half the raised interval (90 s), with the raised Min-SE.
    assert!(node.sent(Duration::from_secs(89)).await.is_none());
    let update = node.expect(GW1, Expect::Request(Method::Update)).await;
    assert_eq!(
        update.header(HeaderName::SessionExpires),
        Some(&b"180;refresher=uac"[..])
    );
    assert_eq!(update.min_se().unwrap().unwrap(), 180);
}

#[tokio::test(start_paused = true)]
async fn a_422_from_a_gateway_named_by_dns_is_retried_to_the_same_resolved_target() {
    let text = CONFIG.replace(
        "address = \"127.0.9.21\"",
        "address = \"gw1.example.net\"\nsession_expires = 90",
    );
    let mut node = TestNode::with(&text, None).await;
    let trunk = node.ctx.config().trunk("gw1").unwrap().clone();
    node.ctx.dns.set_answer(
        &trunk,
        vec![crate::dns::Target {
            host: "gw1.example.net".into(),
            addr: GW1.parse().unwrap(),
            transport: crate::config::Transport::Udp,
            priority: 10,
            weight: 10,
        }],
    );
    node.receive(invite("st422-dns"), PBX).await;
    let inv1 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let ruri =
        |m: &SipMessage| String::from_utf8_lossy(m.request_uri_bytes().unwrap()).into_owned();
    assert!(ruri(&inv1).contains("@gw1.example.net"), "{}", ruri(&inv1));
    node.receive(
        answer(&inv1, 422, "g1", GW1, &[(HeaderName::MinSe, b"180")]),
        GW1,
    )
    .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    // Before: the retry was built from the configured trunk (a name, no address) and never sent,
    // so the 422 went back to the caller.
    let inv2 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    assert_eq!(
        ruri(&inv2),
        ruri(&inv1),
        "the same Request-URI (the name kept)"
    );
    assert_eq!(inv2.session_expires().unwrap().unwrap().delta, 180);
    assert_eq!(inv2.call_id(), inv1.call_id(), "the same leg");
    node.receive(answer(&inv2, 200, "g1", GW1, &[]), GW1).await;
    node.expect(PBX, Expect::Status(200)).await;
}

#[tokio::test(start_paused = true)]
async fn a_second_422_is_the_callers_answer() {
    let mut node = node_with_timer().await;
    node.receive(invite("st422-2"), PBX).await;
    let inv1 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    node.receive(
        answer(&inv1, 422, "g1", GW1, &[(HeaderName::MinSe, b"180")]),
        GW1,
    )
    .await;
    let inv2 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    node.receive(
        answer(&inv2, 422, "g1", GW1, &[(HeaderName::MinSe, b"600")]),
        GW1,
    )
    .await;
    let refused = node.expect(PBX, Expect::Status(422)).await;
    assert_eq!(refused.min_se().unwrap().unwrap(), 600);
    node.calls_end().await;
}

#[tokio::test(start_paused = true)]
async fn a_caller_asking_for_too_short_a_session_gets_422_with_our_min_se() {
    let mut node = TestNode::new().await;
    node.receive(
        with_headers(
            invite("st-small"),
            "Session-Expires: 60\r\nSupported: timer",
        ),
        PBX,
    )
    .await;
    let refused = node.expect(PBX, Expect::Status(422)).await;
    assert_eq!(refused.min_se().unwrap().unwrap(), 90);
    node.calls_end().await;
}

#[tokio::test(start_paused = true)]
async fn a_session_nobody_refreshes_is_torn_down_on_both_legs_before_it_expires() {
    let mut node = TestNode::new().await;
    // The caller asked for the timer and is its refresher: refreshes would pass through us.
    let (inv_b, _ok) = answered_call(
        &mut node,
        "st-exp",
        "Session-Expires: 90\r\nSupported: timer",
        Some(b"90;refresher=uac"),
    )
    .await;
    let answered = tokio::time::Instant::now();
    assert!(
        node.sent(Duration::from_secs(59)).await.is_none(),
        "nothing before the session's end"
    );
    let bye_a = node.expect(PBX, Expect::Request(Method::Bye)).await;
    let waited = answered.elapsed();
    // 90 s − min(32 s, 30 s) = 60 s.
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
        "torn down after {waited:?}"
    );
    let bye_b = node.expect(GW1, Expect::Request(Method::Bye)).await;
    assert_eq!(bye_b.call_id(), inv_b.call_id());
    assert_eq!(bye_a.call_id().unwrap().unwrap(), b"st-exp");
    node.receive(answer(&bye_a, 200, "a-st-exp", PBX, &[]), PBX)
        .await;
    node.receive(answer(&bye_b, 200, "g1", GW1, &[]), GW1).await;
    node.calls_end().await;
}

#[tokio::test(start_paused = true)]
async fn a_refresh_passing_through_keeps_the_session_up() {
    let mut node = TestNode::new().await;
    let (inv_b, ok) = answered_call(
        &mut node,
        "st-ref",
        "Session-Expires: 90\r\nSupported: timer",
        Some(b"90;refresher=uac"),
    )
    .await;
    // The caller refreshes with UPDATE at 45 s: relayed, answered 2xx.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let refreshed = tokio::time::Instant::now();
    node.receive(
        with_headers(
            from_caller(Method::Update, &ok, "z9hG4bK-upd", 2),
            "Session-Expires: 90;refresher=uac",
        ),
        PBX,
    )
    .await;
    let upd_b = node.expect(GW1, Expect::Request(Method::Update)).await;
    assert_eq!(upd_b.call_id(), inv_b.call_id());
    let se: &[(HeaderName, &[u8])] = &[(HeaderName::SessionExpires, b"90;refresher=uac")];
    node.receive(answer(&upd_b, 200, "g1", GW1, se), GW1).await;
    node.expect(PBX, Expect::Status(200)).await;
    // No BYE at 60 s after the answer; one at 60 s after the refresh.
    assert!(
        node.sent(Duration::from_secs(59)).await.is_none(),
        "nothing before the session's end"
    );
    let bye_a = node.expect(PBX, Expect::Request(Method::Bye)).await;
    let waited = refreshed.elapsed();
    assert!(
        waited >= Duration::from_secs(60) && waited < Duration::from_secs(61),
        "torn down {waited:?} after the refresh"
    );
    let _ = bye_a;
}

#[tokio::test(start_paused = true)]
async fn the_record_keeps_who_refreshes_and_our_refresh_raised_by_a_422_and_ended_by_a_481() {
    let mut node = TestNode::new().await;
    let (inv_b, ok) = answered_call(&mut node, "st-rec", "", Some(b"90;refresher=uac")).await;
    let call = info(&node).await;
    let rec = node.pool.records_of_shard(call.shard);
    assert_eq!(rec.len(), 1);
    assert_eq!(
        rec[0].session_timer,
        Some(SessionTimerRecord {
            interval: 90,
            we_refresh: true
        })
    );
    // Our refresh meets a 422: at once again, with the larger interval, and the record follows.
    let upd = node.expect(GW1, Expect::Request(Method::Update)).await;
    node.receive(
        answer(&upd, 422, "g1", GW1, &[(HeaderName::MinSe, b"120")]),
        GW1,
    )
    .await;
    let upd2 = node.expect(GW1, Expect::Request(Method::Update)).await;
    assert_eq!(upd2.session_expires().unwrap().unwrap().delta, 120);
    assert!(upd2.cseq().unwrap().unwrap().seq > upd.cseq().unwrap().unwrap().seq);
    assert_eq!(
        node.pool.records_of_shard(call.shard)[0]
            .session_timer
            .map(|t| t.interval),
        Some(120)
    );
    node.receive(answer(&upd2, 200, "g1", GW1, &[]), GW1).await;
    // The next refresh gets 481: the dialog is gone on leg B, the call ends (RFC 4028 §10).
    let upd3 = node.expect(GW1, Expect::Request(Method::Update)).await;
    node.receive(answer(&upd3, 481, "g1", GW1, &[]), GW1).await;
    let bye_a = node.expect(PBX, Expect::Request(Method::Bye)).await;
    let bye_b = node.expect(GW1, Expect::Request(Method::Bye)).await;
    assert_eq!(bye_b.call_id(), inv_b.call_id());
    assert_eq!(bye_a.call_id(), ok.call_id());
}

#[tokio::test(start_paused = true)]
async fn a_rebuilt_call_that_refreshes_refreshes_at_once_and_then_every_half_interval() {
    let mut node = TestNode::new().await;
    let shard = 9;
    let b_call_id = ids::new_call_id(shard);
    let record = DialogRecord {
        shard,
        a: LegRecord {
            call_id: "st-rb".into(),
            remote_tag: "a-st-rb".into(),
            local_tag: "n-a".into(),
            remote_target: format!("sip:alice@{PBX}"),
            route_set: Vec::new(),
            peer: PBX.into(),
            transport: "udp".into(),
            local_cseq: 1,
            local_uri: "<sip:+15550100@127.0.9.100>;tag=n-a".into(),
            remote_uri: format!("<sip:alice@{PBX}>;tag=a-st-rb"),
            local_port: None,
            srtp_mki_len: None,
        },
        b: LegRecord {
            call_id: b_call_id.clone(),
            remote_tag: "g1".into(),
            local_tag: "n-b".into(),
            remote_target: format!("sip:{GW1}"),
            route_set: Vec::new(),
            peer: GW1.into(),
            transport: "udp".into(),
            local_cseq: 3,
            local_uri: "<sip:alice@127.0.9.100>;tag=n-b".into(),
            remote_uri: "<sip:+15550100@127.0.9.21>;tag=g1".into(),
            local_port: None,
            srtp_mki_len: None,
        },
        trunk: "gw1".into(),
        inbound: "pbx".into(),
        traceparent: None,
        media: None,
        session_timer: Some(SessionTimerRecord {
            interval: 90,
            we_refresh: true,
        }),
        epoch: None,
    };
    // In the record's JSON, and a record without it (an old one) still loads.
    let json = serde_json::to_string(&record).unwrap();
    assert!(json.contains(r#""session_timer":{"interval":90,"we_refresh":true}"#));
    let old = json.replace(r#","session_timer":{"interval":90,"we_refresh":true}"#, "");
    let old: DialogRecord = serde_json::from_str(&old).unwrap();
    assert_eq!(old.session_timer, None);

    assert!(node.pool.store(record.clone()));
    let started = tokio::time::Instant::now();
    super::spawn_restored(node.ctx.clone(), record)
        .await
        .unwrap();
    let upd = node.expect(GW1, Expect::Request(Method::Update)).await;
    assert!(started.elapsed() < Duration::from_secs(1), "at once");
    assert_eq!(upd.call_id().unwrap().unwrap(), b_call_id.as_bytes());
    assert_eq!(to_tag(&upd), b"g1");
    assert!(upd.cseq().unwrap().unwrap().seq > 3 + super::CSEQ_SKIP);
    assert_eq!(
        upd.header(HeaderName::SessionExpires),
        Some(&b"90;refresher=uac"[..])
    );
    node.receive(answer(&upd, 200, "g1", GW1, &[]), GW1).await;
    let answered = tokio::time::Instant::now();
    let next = node.expect(GW1, Expect::Request(Method::Update)).await;
    let waited = answered.elapsed();
    assert!(
        waited >= Duration::from_secs(45) && waited < Duration::from_secs(46),
        "{waited:?}"
    );
    node.receive(answer(&next, 200, "g1", GW1, &[]), GW1).await;
    assert_eq!(info(&node).await.phase, Phase::Confirmed);
}

// ------------------------------------------------------------------------------------------------
// Forking (RFC 3261 §12.1.2, §13.2.2.4)

#[tokio::test(start_paused = true)]
async fn the_2xx_of_the_second_fork_wins_and_a_2xx_of_the_first_is_acked_and_hung_up() {
    let mut node = TestNode::new().await;
    node.receive(invite("fork-1"), PBX).await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    // Two forks ring, each its own early dialog.
    node.receive(answer(&inv, 180, "f1", "f1@127.0.9.21:5060", &[]), GW1)
        .await;
    node.expect(PBX, Expect::Status(180)).await;
    node.receive(answer(&inv, 183, "f2", "f2@127.0.9.21:5060", &[]), GW1)
        .await;
    node.expect(PBX, Expect::Status(183)).await;
    // The second answers.
    let ok_f2 = answer(&inv, 200, "f2", "f2@127.0.9.21:5060", &[]);
    node.receive(ok_f2, GW1).await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    node.receive(from_caller(Method::Ack, &ok, "z9hG4bK-fack", 1), PBX)
        .await;
    let ack = node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert_eq!(to_tag(&ack), b"f2", "the ACK goes to the dialog of the 2xx");
    assert_eq!(ack.request_uri_bytes().unwrap(), b"sip:f2@127.0.9.21:5060");
    let call = info(&node).await;
    assert_eq!(call.b_tags.as_ref().unwrap().1, "f2");

    // The first fork answers too: ACKed and hung up, in its own dialog.
    let ok_f1 = answer(&inv, 200, "f1", "f1@127.0.9.21:5060", &[]);
    node.receive(ok_f1.clone(), GW1).await;
    let ack1 = node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert_eq!(to_tag(&ack1), b"f1");
    assert_eq!(ack1.request_uri_bytes().unwrap(), b"sip:f1@127.0.9.21:5060");
    assert_eq!(ack1.cseq().unwrap().unwrap().seq, 1);
    let bye1 = node.expect(GW1, Expect::Request(Method::Bye)).await;
    assert_eq!(to_tag(&bye1), b"f1");
    assert_eq!(bye1.request_uri_bytes().unwrap(), b"sip:f1@127.0.9.21:5060");
    assert_eq!(bye1.call_id(), inv.call_id());
    node.receive(answer(&bye1, 200, "f1", GW1, &[]), GW1).await;
    // Its retransmission: the ACK again, no second BYE.
    node.receive(ok_f1, GW1).await;
    let again = node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert_eq!(to_tag(&again), b"f1");
    assert!(
        node.sent(Duration::from_secs(1)).await.is_none(),
        "nothing else is sent"
    );
    let call = info(&node).await;
    assert_eq!(call.phase, Phase::Confirmed, "the call goes on with fork 2");

    // The caller hangs up: leg B's BYE goes to fork 2.
    node.receive(from_caller(Method::Bye, &ok, "z9hG4bK-fbye", 2), PBX)
        .await;
    node.expect(PBX, Expect::Status(200)).await;
    let bye2 = node.expect(GW1, Expect::Request(Method::Bye)).await;
    assert_eq!(to_tag(&bye2), b"f2");
    node.receive(answer(&bye2, 200, "f2", GW1, &[]), GW1).await;
    node.calls_end().await;
}

#[tokio::test(start_paused = true)]
async fn a_gateway_request_from_the_winning_fork_reaches_the_caller() {
    let mut node = TestNode::new().await;
    node.receive(invite("fork-2"), PBX).await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    node.receive(answer(&inv, 180, "f1", "f1@127.0.9.21:5060", &[]), GW1)
        .await;
    node.receive(answer(&inv, 200, "f2", "f2@127.0.9.21:5060", &[]), GW1)
        .await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    node.receive(from_caller(Method::Ack, &ok, "z9hG4bK-f2ack", 1), PBX)
        .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    node.receive(from_gateway(Method::Bye, &inv, "f2", "z9hG4bK-gb", 1), GW1)
        .await;
    node.expect(GW1, Expect::Status(200)).await;
    let bye_a = node.expect(PBX, Expect::Request(Method::Bye)).await;
    node.receive(answer(&bye_a, 200, "a-fork-2", PBX, &[]), PBX)
        .await;
    node.calls_end().await;
}

// ------------------------------------------------------------------------------------------------
// REFER policy, P-Asserted-Identity, location conveyance

#[tokio::test(start_paused = true)]
async fn refer_follows_the_policy_of_the_trunk_it_came_from() {
    // The pbx may transfer; the gateway may not.
    let text = CONFIG.replace(
        "side = \"internal\"",
        "side = \"internal\"\nrefer = \"pass\"",
    );
    let mut node = TestNode::with(&text, None).await;
    let (inv_b, ok) = answered_call(&mut node, "refer-1", "", None).await;

    let refer_a = with_headers(
        from_caller(Method::Refer, &ok, "z9hG4bK-ra", 2),
        "Refer-To: <sip:+15550199@127.0.9.100>",
    );
    node.receive(refer_a, PBX).await;
    let refer_b = node.expect(GW1, Expect::Request(Method::Refer)).await;
    assert_eq!(
        refer_b.header(HeaderName::ReferTo),
        Some(&b"<sip:+15550199@127.0.9.100>"[..])
    );
    node.receive(answer(&refer_b, 202, "g1", GW1, &[]), GW1)
        .await;
    node.expect(PBX, Expect::Status(202)).await;

    let refer_g = with_headers(
        from_gateway(Method::Refer, &inv_b, "g1", "z9hG4bK-rg", 1),
        "Refer-To: <sip:+15550199@127.0.9.21>",
    );
    node.receive(refer_g, GW1).await;
    node.expect(GW1, Expect::Status(403)).await;

    // And the other way round: the gateway may, the pbx may not.
    let text = CONFIG.replace(
        "address = \"127.0.9.21\"",
        "address = \"127.0.9.21\"\nrefer = \"pass\"",
    );
    let mut node = TestNode::with(&text, None).await;
    let (inv_b, ok) = answered_call(&mut node, "refer-2", "", None).await;
    let refer_a = with_headers(
        from_caller(Method::Refer, &ok, "z9hG4bK-ra2", 2),
        "Refer-To: <sip:+15550199@127.0.9.100>",
    );
    node.receive(refer_a, PBX).await;
    node.expect(PBX, Expect::Status(403)).await;
    let refer_g = with_headers(
        from_gateway(Method::Refer, &inv_b, "g1", "z9hG4bK-rg2", 1),
        "Refer-To: <sip:+15550199@127.0.9.21>",
    );
    node.receive(refer_g, GW1).await;
    let refer_a = node.expect(PBX, Expect::Request(Method::Refer)).await;
    assert_eq!(
        refer_a.header(HeaderName::ReferTo),
        Some(&b"<sip:+15550199@127.0.9.21>"[..])
    );
}

const PIDF: &str = "--boundary1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n\r\n--boundary1\r\n\
Content-Type: application/pidf+xml\r\nContent-ID: <loc1@pbx.example>\r\n\r\n\
<?xml version=\"1.0\"?><presence xmlns=\"urn:ietf:params:xml:ns:pidf\" entity=\"pres:alice@pbx.example\">\
<tuple id=\"t1\"><status><geopriv><location-info><civicAddress><country>US</country></civicAddress>\
</location-info></geopriv></status></tuple></presence>\r\n--boundary1--\r\n";

#[tokio::test(start_paused = true)]
async fn pai_is_translated_like_from_and_location_passes_unchanged() {
    let text = CONFIG.replace(
        "address = \"127.0.9.21\"",
        "address = \"127.0.9.21\"\ncalling_out = [{ pattern = '^\\+1', replace = '001' }]",
    );
    let mut node = TestNode::with(&text, None).await;
    let inv_a = crate::testkit::invite_with("pai-1", b"");
    let inv_a = with_headers(
        inv_a,
        "P-Asserted-Identity: \"Alice\" <sip:+15559999@pbx.example;user=phone>, <tel:+15559999>\r\n\
         Geolocation: <cid:loc1@pbx.example>\r\nGeolocation-Routing: yes",
    );
    // The multipart body: SDP and the PIDF-LO (RFC 6442).
    let text = String::from_utf8(inv_a.to_vec()).unwrap();
    let text = text.replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: multipart/mixed;boundary=boundary1\r\nContent-Length: {}\r\n\r\n{PIDF}",
            PIDF.len()
        ),
    );
    node.receive(Bytes::from(text), PBX).await;
    let inv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let pai: Vec<&[u8]> = inv_b.header_values(HeaderName::PAssertedIdentity).collect();
    assert_eq!(
        pai,
        [
            &b"\"Alice\" <sip:0015559999@pbx.example;user=phone>"[..],
            &b"<tel:0015559999>"[..]
        ]
    );
    let from = String::from_utf8_lossy(inv_b.header(HeaderName::From).unwrap()).into_owned();
    assert!(from.contains("<sip:0015559999@"), "{from}");
    assert_eq!(
        header(&inv_b, "Geolocation"),
        Some(&b"<cid:loc1@pbx.example>"[..])
    );
    assert_eq!(header(&inv_b, "Geolocation-Routing"), Some(&b"yes"[..]));
    assert_eq!(inv_b.body(), PIDF.as_bytes(), "the PIDF-LO body unchanged");
    assert_eq!(
        inv_b.header(HeaderName::ContentType),
        Some(&b"multipart/mixed;boundary=boundary1"[..])
    );
    // A location error in the gateway's answer reaches the caller.
    let err = answer(&inv_b, 180, "g1", GW1, &[]);
    let err = with_headers(
        err,
        "Geolocation-Error: 100 ;code=\"Cannot Process Location\"",
    );
    node.receive(err, GW1).await;
    let ringing = node.expect(PBX, Expect::Status(180)).await;
    assert_eq!(
        header(&ringing, "Geolocation-Error"),
        Some(&b"100 ;code=\"Cannot Process Location\""[..])
    );
}

#[tokio::test(start_paused = true)]
async fn a_relayed_call_rewrites_only_the_sdp_part_beside_the_pidf_lo() {
    use medpool_media::relay::{PortRange, Relay, RelayConfig};
    let relay = Relay::new(RelayConfig {
        listen: "127.0.152.200".parse().unwrap(),
        ports: PortRange::new(40100, 40109).unwrap(),
    });
    let rt = crate::media::MediaRuntime {
        relay,
        advertise: "192.0.2.7".parse().unwrap(),
    };
    let config = CONFIG.replacen("name = \"pbx\"", "name = \"pbx\"\nmedia = \"relay\"", 1);
    let mut node = TestNode::with(&config, Some(rt)).await;
    let sdp = "v=0\r\no=pbx 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n\
               m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
    let body = PIDF.replace("v=0\r\n\r\n", &format!("{sdp}\r\n"));
    let inv_a = with_headers(
        crate::testkit::invite_with("geo-relay", b""),
        "Geolocation: <cid:loc1@pbx.example>",
    );
    let text = String::from_utf8(inv_a.to_vec()).unwrap().replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Content-Type: multipart/mixed;boundary=boundary1\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    node.receive(Bytes::from(text), PBX).await;
    let inv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let out = String::from_utf8_lossy(inv_b.body()).into_owned();
    assert_eq!(
        inv_b.header(HeaderName::ContentType),
        Some(&b"multipart/mixed;boundary=boundary1"[..])
    );
    let pidf_part = &PIDF[PIDF.find("Content-Type: application/pidf+xml").unwrap()..];
    assert!(
        out.ends_with(pidf_part),
        "the PIDF-LO part unchanged:\n{out}"
    );
    assert!(
        !out.contains("c=IN IP4 10.0.0.5"),
        "the offer points at the relay:\n{out}"
    );
    assert!(out.contains("c=IN IP4 192.0.2.7"), "{out}");
    assert!(out.starts_with("--boundary1\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n"));
    // Sent again after a 422: the same body.
    node.receive(
        answer(&inv_b, 422, "g1", GW1, &[(HeaderName::MinSe, b"180")]),
        GW1,
    )
    .await;
    let again = node.expect(GW1, Expect::Request(Method::Invite)).await;
    assert_eq!(again.body(), inv_b.body());
    assert_eq!(again.session_expires().unwrap().unwrap().delta, 180);
}
