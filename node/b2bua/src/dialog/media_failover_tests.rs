//! Media failover on paused time: a relayed call's record carries its media plan, and a call
//! rebuilt from it on a node with a relay re-INVITEs both legs onto that node. The relays are
//! real (UDP on 127.0.157.x, one pair of addresses per test) and RTP is sent through the new
//! node's session.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use medpool_media::relay::{PortRange, Relay, RelayConfig};
use medpool_sip::{Method, SipMessage};
use tokio::net::UdpSocket;

use super::media_tests::{
    GW_MEDIA, PBX_MEDIA, answer_sdp, answered_call, from_caller, media_of, pcmu, relayed, text,
};
use super::{CSEQ_SKIP, DialogMsg, Phase};
use crate::cluster::{DialogRecord, DialogStore};
use crate::media::{MediaPlan, MediaRuntime};
use crate::testkit::{CONFIG, Expect, GW1, PBX, TestNode};

fn ip(last: u8) -> IpAddr {
    format!("127.0.157.{last}").parse().unwrap()
}

/// A node relaying on 127.0.157.`last` (advertised as is), ports 31000–31099.
async fn relay_node(last: u8) -> (TestNode, Relay) {
    let relay = Relay::new(RelayConfig {
        listen: ip(last),
        ports: PortRange::new(31000, 31099).unwrap(),
    });
    let rt = MediaRuntime {
        relay: relay.clone(),
        advertise: ip(last),
    };
    (TestNode::with(&relayed(CONFIG), Some(rt)).await, relay)
}

async fn info(node: &TestNode) -> super::CallInfo {
    let actors = node.ctx.registry.call_actors();
    ractor::call_t!(actors[0], DialogMsg::Info, 1000).unwrap()
}

/// An answered, confirmed relayed call on `node`: (its record, the caller's 200).
async fn confirmed_call(
    node: &mut TestNode,
    call_id: &str,
    offer: &[u8],
    ans: &[u8],
) -> (DialogRecord, SipMessage) {
    let (_, ok) = answered_call(node, call_id, offer, ans).await;
    node.receive(
        from_caller(Method::Ack, &ok, 1, &format!("z9hG4bK-{call_id}-ack"), b""),
        PBX,
    )
    .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    (record_of(node, call_id).await, ok)
}

async fn record_of(node: &TestNode, call_id: &str) -> DialogRecord {
    let shard = info(node).await.shard;
    node.pool
        .records_of_shard(shard)
        .into_iter()
        .find(|r| r.a.call_id == call_id)
        .expect("the call's record")
}

/// `body` as a new owner re-offers it: pointed at `ip`:`port`, its `o=` version one higher.
fn reoffered(body: &[u8], from_ip: &str, from_port: u16, ip: &str, port: u16) -> String {
    super::media_tests::pointed(body, from_ip, from_port, ip, port).replacen(
        "o=peer 42 1 ",
        "o=peer 42 2 ",
        1,
    )
}

fn rtp(seq: u16) -> Vec<u8> {
    let mut p = vec![
        0x80,
        0,
        (seq >> 8) as u8,
        seq as u8,
        0,
        0,
        0,
        160,
        0,
        0,
        0,
        7,
    ];
    p.extend_from_slice(&[0xd5; 160]);
    p
}

/// Sends RTP from `from` to `to` until `peer` receives it (the relay latches on the first packet):
/// returns where it came from.
async fn carried(from: &UdpSocket, to: SocketAddr, peer: &UdpSocket) -> SocketAddr {
    let mut buf = [0u8; 2048];
    for seq in 0..20u16 {
        from.send_to(&rtp(seq), to).await.unwrap();
        if let Ok(Ok((n, src))) =
            tokio::time::timeout(Duration::from_millis(200), peer.recv_from(&mut buf)).await
        {
            assert_eq!(n, 172, "the packet arrives whole");
            return src;
        }
    }
    panic!("no RTP was carried from {:?} to {to}", from.local_addr());
}

#[tokio::test(start_paused = true)]
async fn an_answered_relayed_call_writes_its_media_plan_and_rewrites_it_when_the_sdp_changes() {
    let (mut node, _relay) = relay_node(1).await;
    let offer = pcmu(PBX_MEDIA, 4000, "a=sendrecv\r\n");
    let ans = pcmu(GW_MEDIA, 6000, "");
    let (rec, ok) = confirmed_call(&mut node, "fo-1", &offer, &ans).await;
    assert_eq!(
        rec.media,
        Some(MediaPlan {
            a_sdp: Some(offer.clone()),
            b_sdp: Some(ans.clone()),
            a_bump: 0,
            b_bump: 0,
        })
    );

    // In the record's JSON each SDP is a string; a record without a plan (an old one) loads.
    let json = serde_json::to_string(&rec).unwrap();
    assert!(json.contains(r#""a_sdp":"v=0\r\no=peer 42 1 IN IP4 10.0.0.5\r\n"#));
    let without = serde_json::to_string(&DialogRecord {
        media: None,
        ..rec.clone()
    })
    .unwrap();
    assert!(!without.contains("media"), "{without}");
    let added = json.len() - without.len();
    println!(
        "record: {} bytes without the plan, {} with it (+{added} for {} bytes of SDP)",
        without.len(),
        json.len(),
        offer.len() + ans.len()
    );
    assert!(added < (offer.len() + ans.len()) * 5 / 4 + 64, "+{added}");
    let old: DialogRecord = serde_json::from_str(&without).unwrap();
    assert_eq!(old.media, None);
    assert_eq!(
        serde_json::from_str::<DialogRecord>(&json).unwrap(),
        rec,
        "the plan round-trips"
    );

    // Hold: the caller's re-INVITE and the gateway's answer are written into the record.
    let hold = pcmu(PBX_MEDIA, 4000, "a=sendonly\r\n");
    node.receive(
        from_caller(Method::Invite, &ok, 2, "z9hG4bK-fo-1-hold", &hold),
        PBX,
    )
    .await;
    let reinv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let held = pcmu(GW_MEDIA, 6000, "a=recvonly\r\n");
    node.receive(answer_sdp(&reinv, 200, "g1", GW1, &held), GW1)
        .await;
    node.expect(PBX, Expect::Status(200)).await;
    let plan = record_of(&node, "fo-1").await.media.unwrap();
    assert_eq!(
        (plan.a_sdp, plan.b_sdp),
        (Some(hold), Some(held)),
        "the record follows the SDP"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rebuilt_call_re_invites_both_legs_onto_the_new_node_and_its_rtp_flows_there() {
    let (mut old, _old_relay) = relay_node(2).await;
    let offer = pcmu(PBX_MEDIA, 4000, "a=sendrecv\r\n");
    let ans = pcmu(GW_MEDIA, 6000, "");
    let (rec, ok) = confirmed_call(&mut old, "fo-2", &offer, &ans).await;

    // The old node is gone; the new owner rebuilds the call from its record.
    let (mut node, relay) = relay_node(3).await;
    assert!(node.pool.store(rec.clone()));
    super::spawn_restored(node.ctx.clone(), rec.clone())
        .await
        .unwrap();

    // The caller is offered what it last heard (the gateway's SDP) pointing at the new node,
    // its version one higher; the gateway likewise with the caller's.
    let reinv_a = node.expect(PBX, Expect::Request(Method::Invite)).await;
    assert_eq!(relay.sessions(), 1, "the new node opened its own session");
    let (c, a_port, _) = media_of(&reinv_a);
    assert_eq!(c, "127.0.157.3");
    assert!((31000..=31099).contains(&a_port));
    assert_eq!(
        text(reinv_a.body()),
        reoffered(&ans, GW_MEDIA, 6000, "127.0.157.3", a_port)
    );
    assert!(reinv_a.cseq().unwrap().unwrap().seq > rec.a.local_cseq + CSEQ_SKIP);
    let reinv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let (c, b_port, _) = media_of(&reinv_b);
    assert_eq!(c, "127.0.157.3");
    assert_ne!(a_port, b_port);
    assert_eq!(
        text(reinv_b.body()),
        reoffered(&offer, PBX_MEDIA, 4000, "127.0.157.3", b_port)
    );

    // An offer from the caller while the re-INVITEs are out crosses them: 491.
    node.receive(
        from_caller(Method::Invite, &ok, 7, "z9hG4bK-fo-2-glare", &offer),
        PBX,
    )
    .await;
    node.expect(PBX, Expect::Status(491)).await;

    // Both peers answer with real sockets; their answers are ACKed.
    let pbx_rtp = UdpSocket::bind((ip(10), 0)).await.unwrap();
    let gw_rtp = UdpSocket::bind((ip(11), 0)).await.unwrap();
    let (pa, ga) = (pbx_rtp.local_addr().unwrap(), gw_rtp.local_addr().unwrap());
    let pbx_answer = pcmu("127.0.157.10", pa.port(), "");
    node.receive(answer_sdp(&reinv_a, 200, "a-fo-2", PBX, &pbx_answer), PBX)
        .await;
    let ack_a = node.expect(PBX, Expect::Request(Method::Ack)).await;
    assert_eq!(
        ack_a.cseq().unwrap().unwrap().seq,
        reinv_a.cseq().unwrap().unwrap().seq
    );
    let gw_answer = pcmu("127.0.157.11", ga.port(), "");
    node.receive(answer_sdp(&reinv_b, 200, "g1", GW1, &gw_answer), GW1)
        .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert_eq!(node.ctx.stats.media_reanchored.load(Relaxed), 1);
    assert_eq!(node.ctx.stats.media_reanchor_failed.load(Relaxed), 0);

    // The relay now points each leg at its peer's answer, and carries RTP both ways.
    let i = info(&node).await;
    let (a, b) = (i.a_media.unwrap(), i.b_media.unwrap());
    assert_eq!(a.local, SocketAddr::new(ip(3), a_port));
    assert_eq!(b.local, SocketAddr::new(ip(3), b_port));
    assert_eq!((a.remote, b.remote), (Some(pa), Some(ga)));
    assert_eq!(
        carried(&pbx_rtp, a.local, &gw_rtp).await,
        b.local,
        "the caller's RTP reaches the gateway from the node's leg-B endpoint"
    );
    assert_eq!(
        carried(&gw_rtp, b.local, &pbx_rtp).await,
        a.local,
        "and the gateway's reaches the caller"
    );

    // The record holds the new plan, so another failover starts from it.
    let plan = record_of(&node, "fo-2").await.media.unwrap();
    assert_eq!((plan.a_bump, plan.b_bump), (1, 1));
    assert_eq!(
        (plan.a_sdp, plan.b_sdp),
        (Some(pbx_answer), Some(gw_answer))
    );

    // Later SDP stays numbered above the re-anchoring offer: the caller's next offer (its own
    // version 1) reaches the gateway as version 2.
    let hold = pcmu("127.0.157.10", pa.port(), "a=sendonly\r\n");
    node.receive(
        from_caller(Method::Invite, &ok, 8, "z9hG4bK-fo-2-hold", &hold),
        PBX,
    )
    .await;
    let reinv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    assert!(
        text(reinv.body()).contains("o=peer 42 2 IN IP4 127.0.157.10\r\n"),
        "{}",
        text(reinv.body())
    );
    assert!(text(reinv.body()).contains("a=sendonly\r\n"));
}

#[tokio::test(start_paused = true)]
async fn a_rebuilt_call_whose_re_invite_is_refused_keeps_its_signalling() {
    let (mut old, _old_relay) = relay_node(4).await;
    let (rec, ok) = confirmed_call(
        &mut old,
        "fo-3",
        &pcmu(PBX_MEDIA, 4000, ""),
        &pcmu(GW_MEDIA, 6000, ""),
    )
    .await;
    let (mut node, _relay) = relay_node(5).await;
    assert!(node.pool.store(rec.clone()));
    super::spawn_restored(node.ctx.clone(), rec).await.unwrap();

    let reinv_a = node.expect(PBX, Expect::Request(Method::Invite)).await;
    let reinv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
    // Glare on leg A first: tried again within 2 s (RFC 3261 §14.1, we did not mint its Call-ID).
    node.receive(
        crate::testkit::answer(&reinv_a, 491, "a-fo-3", PBX, &[]),
        PBX,
    )
    .await;
    let t0 = tokio::time::Instant::now();
    let again = node.expect(PBX, Expect::Request(Method::Invite)).await;
    assert!(t0.elapsed() <= Duration::from_millis(2001));
    assert!(again.cseq().unwrap().unwrap().seq > reinv_a.cseq().unwrap().unwrap().seq);
    assert_eq!(again.body(), reinv_a.body(), "the same offer");
    // Then the caller refuses it; the gateway takes its own.
    node.receive(crate::testkit::answer(&again, 488, "a-fo-3", PBX, &[]), PBX)
        .await;
    node.receive(
        answer_sdp(&reinv_b, 200, "g1", GW1, &pcmu(GW_MEDIA, 6100, "")),
        GW1,
    )
    .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    assert_eq!(node.ctx.stats.media_reanchor_failed.load(Relaxed), 1);
    assert_eq!(node.ctx.stats.media_reanchored.load(Relaxed), 0);

    // The call goes on: no hang-up, not even after the media timeout, and a BYE still crosses.
    tokio::time::sleep(Duration::from_secs(90)).await;
    assert_eq!(info(&node).await.phase, Phase::Confirmed);
    node.receive(
        from_caller(Method::Bye, &ok, 9, "z9hG4bK-fo-3-bye", b""),
        PBX,
    )
    .await;
    let bye = node.expect(GW1, Expect::Request(Method::Bye)).await;
    assert_eq!(bye.call_id(), reinv_b.call_id());
}

#[tokio::test(start_paused = true)]
async fn a_call_that_ended_on_its_old_node_as_it_moved_is_not_brought_back_by_its_rebuilt_copy() {
    let (mut old, _old_relay) = relay_node(6).await;
    let (rec, _ok) = confirmed_call(
        &mut old,
        "fo-5",
        &pcmu(PBX_MEDIA, 4000, ""),
        &pcmu(GW_MEDIA, 6000, ""),
    )
    .await;
    // The new owner read the record and rebuilt the call ...
    let (mut node, _relay) = relay_node(7).await;
    assert!(node.pool.store(rec.clone()));
    super::spawn_restored(node.ctx.clone(), rec.clone())
        .await
        .unwrap();
    let reinv_a = node.expect(PBX, Expect::Request(Method::Invite)).await;
    let reinv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
    // ... just as the old owner's removal landed: the caller had hung up there, both peers are done.
    node.pool.remove(rec.shard, &rec.a.call_id);
    for (reinv, peer, tag) in [(&reinv_a, PBX, "a-fo-5"), (&reinv_b, GW1, "g1")] {
        node.receive(crate::testkit::answer(reinv, 481, tag, peer, &[]), peer)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        node.pool.records(),
        0,
        "the rebuilt call's rewrite (its media plan after the re-anchoring) replaced nothing"
    );
    // Its record check finds the record gone and stops the call without a word to either peer.
    node.calls_end().await;
    assert_eq!(node.pool.records(), 0);
    while let Some(sent) = node.sent(Duration::from_millis(10)).await {
        assert_ne!(
            sent.msg.method(),
            Some(Method::Bye),
            "no BYE (to {}) for a call its old node ended",
            sent.to
        );
    }
}

#[tokio::test(start_paused = true)]
async fn a_node_without_a_relay_rebuilds_a_relayed_call_with_signalling_only() {
    let (mut old, _old_relay) = relay_node(6).await;
    let (rec, ok) = confirmed_call(
        &mut old,
        "fo-4",
        &pcmu(PBX_MEDIA, 4000, ""),
        &pcmu(GW_MEDIA, 6000, ""),
    )
    .await;
    let mut node = TestNode::with(&relayed(CONFIG), None).await;
    assert!(node.pool.store(rec.clone()));
    super::spawn_restored(node.ctx.clone(), rec).await.unwrap();
    node.receive(
        from_caller(Method::Bye, &ok, 9, "z9hG4bK-fo-4-bye", b""),
        PBX,
    )
    .await;
    // The first thing the node sends the gateway is the BYE: no re-INVITE went out.
    let first = node.sent(Duration::from_secs(5)).await.unwrap();
    let first = if first.msg.status().is_some() {
        node.sent(Duration::from_secs(5)).await.unwrap()
    } else {
        first
    };
    assert_eq!(first.msg.method(), Some(Method::Bye), "{:?}", first.msg);
}

/// A drain (the shard handed over alive): the old node's session keeps relaying while the new
/// owner re-INVITEs the peers onto its own, then ends (make before break).
#[tokio::test(start_paused = true)]
async fn a_handed_over_call_keeps_relaying_on_the_old_node_until_the_new_one_took_it() {
    let pbx_rtp = UdpSocket::bind((ip(12), 0)).await.unwrap();
    let gw_rtp = UdpSocket::bind((ip(13), 0)).await.unwrap();
    let (pa, ga) = (pbx_rtp.local_addr().unwrap(), gw_rtp.local_addr().unwrap());
    let (mut old, old_relay) = relay_node(7).await;
    let offer = pcmu("127.0.157.12", pa.port(), "");
    let ans = pcmu("127.0.157.13", ga.port(), "");
    let (rec, _ok) = confirmed_call(&mut old, "fo-5", &offer, &ans).await;
    let i = info(&old).await;
    let (a_old, b_old) = (i.a_media.unwrap().local, i.b_media.unwrap().local);

    // The shard moves: the call stops on the old node, its session does not (yet).
    assert_eq!(old.ctx.release_shard(rec.shard), 1);
    old.calls_end().await;
    assert_eq!(old_relay.sessions(), 1);
    assert_eq!(carried(&pbx_rtp, a_old, &gw_rtp).await, b_old);

    let (mut node, _relay) = relay_node(8).await;
    assert!(node.pool.store(rec.clone()));
    super::spawn_restored(node.ctx.clone(), rec).await.unwrap();
    let reinv_a = node.expect(PBX, Expect::Request(Method::Invite)).await;
    let reinv_b = node.expect(GW1, Expect::Request(Method::Invite)).await;
    // While the re-INVITEs are out, the old relay still carries the media.
    assert_eq!(carried(&gw_rtp, b_old, &pbx_rtp).await, a_old);
    node.receive(answer_sdp(&reinv_a, 200, "a-fo-5", PBX, &offer), PBX)
        .await;
    node.receive(answer_sdp(&reinv_b, 200, "g1", GW1, &ans), GW1)
        .await;
    let (a_new, b_new) = (
        SocketAddr::new(ip(8), media_of(&reinv_a).1),
        SocketAddr::new(ip(8), media_of(&reinv_b).1),
    );
    assert_eq!(carried(&pbx_rtp, a_new, &gw_rtp).await, b_new);
    tokio::time::timeout(crate::media::MEDIA_HANDOVER * 2, old_relay.wait_idle())
        .await
        .expect("the old node's session ends after the hand-over");
}
