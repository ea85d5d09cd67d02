//! Calls with the media relay, on paused time: the test plays the caller and the gateways over the
//! channel wire of [`crate::testkit`] and reads the SDP the node sends each of them. The relay
//! sessions are real (they bind UDP ports on 127.0.156.10x, one address per test); no RTP is sent
//! here (`node/medpool/tests/media.rs` sends it end to end).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use medpool_media::relay::{PortRange, Relay, RelayConfig};
use medpool_media::sdp::Sdp;
use medpool_sip::message::builder::{MessageBuilder, response_to};
use medpool_sip::{HeaderName, Method, SipMessage};

use crate::media::MediaRuntime;
use crate::testkit::{CONFIG, Expect, GW1, GW2, NODE, PBX, TestNode, invite_with};

/// `config` with the caller's trunk relaying media (the default is bypass: a call is relayed
/// when either of its trunks says `relay`).
pub(super) fn relayed(config: &str) -> String {
    config.replacen("name = \"pbx\"", "name = \"pbx\"\nmedia = \"relay\"", 1)
}

/// The caller's media address and the gateways'.
pub(super) const PBX_MEDIA: &str = "10.0.0.5";
pub(super) const GW_MEDIA: &str = "10.0.1.9";

/// The relay's listen address of test `k`: 127.0.156.(100 + k).
fn ip(k: u8) -> IpAddr {
    format!("127.0.156.{}", 100 + u16::from(k)).parse().unwrap()
}

/// A node relaying on 127.0.156.(100 + `last`), ports `low..=high`, advertising 192.0.2.`last`.
async fn node_with(config: &str, last: u8, low: u16, high: u16) -> (TestNode, Relay) {
    let relay = Relay::new(RelayConfig {
        listen: ip(last),
        ports: PortRange::new(low, high).unwrap(),
    });
    let rt = MediaRuntime {
        relay: relay.clone(),
        advertise: format!("192.0.2.{last}").parse().unwrap(),
    };
    (TestNode::with(config, Some(rt)).await, relay)
}

pub(super) fn sdp(ip: &str, port: u16, fmts: &str, attrs: &str) -> Vec<u8> {
    format!(
        "v=0\r\no=peer 42 1 IN IP4 {ip}\r\ns=call\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP {fmts}\r\n{attrs}a=x-keep:this line\r\n"
    )
    .into_bytes()
}

pub(super) fn pcmu(ip: &str, port: u16, attrs: &str) -> Vec<u8> {
    sdp(
        ip,
        port,
        "0 101",
        &format!("a=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n{attrs}"),
    )
}

/// A response to `req` from a peer at `contact` with an SDP body.
pub(super) fn answer_sdp(
    req: &SipMessage,
    status: u16,
    tag: &str,
    contact: &str,
    body: &[u8],
) -> Bytes {
    let mut b = response_to(req, status, b"X", Some(tag), None);
    b.header(HeaderName::Contact, format!("<sip:{contact}>").as_bytes());
    if !body.is_empty() {
        b.body(b"application/sdp", Bytes::copy_from_slice(body));
    }
    b.build()
}

/// A request from the caller in the dialog of the 2xx `ok`, with an SDP body (or none).
pub(super) fn from_caller(
    method: Method,
    ok: &SipMessage,
    cseq: u32,
    branch: &str,
    body: &[u8],
) -> Bytes {
    let name = method.as_str();
    let mut b = MessageBuilder::request_method(method, format!("sip:{NODE}").as_bytes());
    b.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {PBX};branch={branch}").as_bytes(),
    )
    .header(HeaderName::MaxForwards, b"70")
    .header(HeaderName::From, ok.header(HeaderName::From).unwrap())
    .header(HeaderName::To, ok.header(HeaderName::To).unwrap())
    .header(HeaderName::CallId, ok.call_id().unwrap().unwrap())
    .header_fmt(HeaderName::CSeq, format_args!("{cseq} {name}"))
    .header(HeaderName::Contact, format!("<sip:alice@{PBX}>").as_bytes());
    if !body.is_empty() {
        b.body(b"application/sdp", Bytes::copy_from_slice(body));
    }
    b.build()
}

/// (c= address, m= port, m= formats) of a message's SDP.
pub(super) fn media_of(msg: &SipMessage) -> (String, u16, String) {
    let sdp = Sdp::parse(msg.body()).unwrap();
    let m = &sdp.media[0];
    (
        m.effective_connection(&sdp).unwrap().address.to_owned(),
        m.port,
        m.formats.join(" "),
    )
}

pub(super) fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

/// `body` as the node would send it: pointed at `ip`:`port`, nothing else changed.
pub(super) fn pointed(body: &[u8], from_ip: &str, from_port: u16, ip: &str, port: u16) -> String {
    text(body)
        .replace(&format!("c=IN IP4 {from_ip}"), &format!("c=IN IP4 {ip}"))
        .replace(
            &format!("m=audio {from_port} "),
            &format!("m=audio {port} "),
        )
}

/// Sets up a call with the caller's `offer` and the gateway's `ans`; returns the INVITE to gw1,
/// the 200 the caller got, and the node.
pub(super) async fn answered_call(
    node: &mut TestNode,
    call_id: &str,
    offer: &[u8],
    ans: &[u8],
) -> (SipMessage, SipMessage) {
    node.receive(invite_with(call_id, offer), PBX).await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    node.receive(answer_sdp(&inv, 200, "g1", GW1, ans), GW1)
        .await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    (inv, ok)
}

#[tokio::test(start_paused = true)]
async fn the_offer_and_the_answer_point_at_the_relay_and_keep_every_other_line() {
    let (mut node, relay) = node_with(&relayed(CONFIG), 1, 30000, 30099).await;
    let offer = pcmu(PBX_MEDIA, 4000, "a=sendrecv\r\n");
    let ans = pcmu(GW_MEDIA, 6000, "");
    let (inv, ok) = answered_call(&mut node, "m-1", &offer, &ans).await;
    assert_eq!(relay.sessions(), 1);

    let (c, b_port, _) = media_of(&inv);
    assert_eq!(c, "192.0.2.1", "the gateway is told to send to the node");
    assert!((30000..=30099).contains(&b_port));
    assert_eq!(
        text(inv.body()),
        pointed(&offer, PBX_MEDIA, 4000, "192.0.2.1", b_port)
    );

    let (c, a_port, _) = media_of(&ok);
    assert_eq!(c, "192.0.2.1", "the caller is told to send to the node");
    assert_ne!(a_port, b_port, "one endpoint per leg");
    assert_eq!(
        text(ok.body()),
        pointed(&ans, GW_MEDIA, 6000, "192.0.2.1", a_port)
    );

    // What the admin API sees of each leg's media.
    let actors = node.ctx.registry.call_actors();
    let info = ractor::call_t!(actors[0], super::DialogMsg::Info, 1000).unwrap();
    let (a, b) = (info.a_media.unwrap(), info.b_media.unwrap());
    assert_eq!(a.local, format!("192.0.2.1:{a_port}").parse().unwrap());
    assert_eq!(b.local, format!("192.0.2.1:{b_port}").parse().unwrap());
    assert_eq!(a.remote, Some(format!("{PBX_MEDIA}:4000").parse().unwrap()));
    assert_eq!(b.remote, Some(format!("{GW_MEDIA}:6000").parse().unwrap()));
    assert_eq!(
        (a.codec.as_str(), b.codec.as_str()),
        ("PCMU/8000", "PCMU/8000")
    );
    assert_eq!(
        (a.received.packets, a.sent.packets, a.last_packet_age_ms),
        (0, 0, None)
    );

    // The caller hangs up: the session ends and its ports are free again.
    node.receive(from_caller(Method::Ack, &ok, 1, "z9hG4bK-m1-ack", b""), PBX)
        .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    node.receive(from_caller(Method::Bye, &ok, 2, "z9hG4bK-m1-bye", b""), PBX)
        .await;
    let bye = node.expect(GW1, Expect::Request(Method::Bye)).await;
    node.receive(crate::testkit::answer(&bye, 200, "g1", GW1, &[]), GW1)
        .await;
    node.calls_end().await;
    tokio::time::timeout(Duration::from_secs(5), relay.wait_idle())
        .await
        .expect("the call's session was closed");
    assert_eq!(relay.ports().pairs_in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_late_offer_comes_in_the_2xx_and_its_answer_in_the_ack() {
    let (mut node, relay) = node_with(&relayed(CONFIG), 2, 30000, 30099).await;
    node.receive(invite_with("m-2", b""), PBX).await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    assert!(inv.body().is_empty(), "no offer to the gateway either");
    assert_eq!(
        relay.sessions(),
        1,
        "the endpoints are ready for the 2xx's offer"
    );

    let gw_offer = pcmu(GW_MEDIA, 6000, "");
    node.receive(answer_sdp(&inv, 200, "g1", GW1, &gw_offer), GW1)
        .await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    let (c, a_port, _) = media_of(&ok);
    assert_eq!(c, "192.0.2.2");
    assert_eq!(
        text(ok.body()),
        pointed(&gw_offer, GW_MEDIA, 6000, "192.0.2.2", a_port)
    );

    let caller_answer = pcmu(PBX_MEDIA, 4000, "");
    node.receive(
        from_caller(Method::Ack, &ok, 1, "z9hG4bK-m2-ack", &caller_answer),
        PBX,
    )
    .await;
    let ack = node.expect(GW1, Expect::Request(Method::Ack)).await;
    let (c, b_port, _) = media_of(&ack);
    assert_eq!(c, "192.0.2.2");
    assert_ne!(a_port, b_port);
    assert_eq!(
        text(ack.body()),
        pointed(&caller_answer, PBX_MEDIA, 4000, "192.0.2.2", b_port)
    );
}

#[tokio::test(start_paused = true)]
async fn a_re_invite_puts_the_call_on_hold_and_a_held_call_outlives_the_media_timeout() {
    let (mut node, _relay) = node_with(&relayed(CONFIG), 3, 30000, 30099).await;
    let offer = pcmu(PBX_MEDIA, 4000, "");
    let (inv, ok) = answered_call(&mut node, "m-3", &offer, &pcmu(GW_MEDIA, 6000, "")).await;
    let b_port = media_of(&inv).1;
    let a_port = media_of(&ok).1;
    node.receive(from_caller(Method::Ack, &ok, 1, "z9hG4bK-m3-ack", b""), PBX)
        .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;

    // Hold: the caller's re-INVITE offers sendonly; it reaches the gateway pointed at leg B.
    let hold = pcmu(PBX_MEDIA, 4000, "a=sendonly\r\n");
    node.receive(
        from_caller(Method::Invite, &ok, 2, "z9hG4bK-m3-hold", &hold),
        PBX,
    )
    .await;
    let reinv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    assert_eq!(
        text(reinv.body()),
        pointed(&hold, PBX_MEDIA, 4000, "192.0.2.3", b_port)
    );
    let held = pcmu(GW_MEDIA, 6000, "a=recvonly\r\n");
    node.receive(answer_sdp(&reinv, 200, "g1", GW1, &held), GW1)
        .await;
    let ok2 = node.expect(PBX, Expect::Status(200)).await;
    assert_eq!(
        text(ok2.body()),
        pointed(&held, GW_MEDIA, 6000, "192.0.2.3", a_port)
    );
    node.receive(
        from_caller(Method::Ack, &ok, 2, "z9hG4bK-m3-ack2", b""),
        PBX,
    )
    .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;

    // No RTP for twice the media timeout: a held call is not hung up.
    tokio::time::sleep(Duration::from_secs(130)).await;
    assert_eq!(node.ctx.active_calls(), 1, "a call on hold is exempt");

    // Resume: sendrecv again. With no media for the timeout after that, the call is hung up.
    let resume = pcmu(PBX_MEDIA, 4000, "a=sendrecv\r\n");
    node.receive(
        from_caller(Method::Invite, &ok, 3, "z9hG4bK-m3-resume", &resume),
        PBX,
    )
    .await;
    let reinv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    node.receive(
        answer_sdp(&reinv, 200, "g1", GW1, &pcmu(GW_MEDIA, 6000, "")),
        GW1,
    )
    .await;
    node.expect(PBX, Expect::Status(200)).await;
    node.receive(
        from_caller(Method::Ack, &ok, 3, "z9hG4bK-m3-ack3", b""),
        PBX,
    )
    .await;
    let resumed = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_secs(55)).await;
    assert_eq!(node.ctx.active_calls(), 1, "silence counts from the resume");
    let bye_b = node.expect(GW1, Expect::Request(Method::Bye)).await;
    let bye_a = node.expect(PBX, Expect::Request(Method::Bye)).await;
    assert!(
        resumed.elapsed() >= Duration::from_secs(55),
        "silence on hold does not count: {:?}",
        resumed.elapsed()
    );
    assert_eq!(bye_b.call_id(), inv.call_id());
    assert_eq!(bye_a.call_id(), ok.call_id());
}

#[tokio::test(start_paused = true)]
async fn media_that_never_flows_ends_the_call_after_the_trunks_timeout() {
    let config = CONFIG.replace(
        "address = \"127.0.9.21\"",
        "address = \"127.0.9.21\"\nmedia_timeout = 5",
    );
    let (mut node, relay) = node_with(&relayed(&config), 4, 30000, 30099).await;
    let (_, ok) = answered_call(
        &mut node,
        "m-4",
        &pcmu(PBX_MEDIA, 4000, ""),
        &pcmu(GW_MEDIA, 6000, ""),
    )
    .await;
    node.receive(from_caller(Method::Ack, &ok, 1, "z9hG4bK-m4-ack", b""), PBX)
        .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    let t0 = tokio::time::Instant::now();
    let bye = node.expect(GW1, Expect::Request(Method::Bye)).await;
    assert!(
        t0.elapsed() >= Duration::from_secs(4),
        "not before the timeout"
    );
    node.expect(PBX, Expect::Request(Method::Bye)).await;
    node.receive(crate::testkit::answer(&bye, 200, "g1", GW1, &[]), GW1)
        .await;
    assert_eq!(
        node.ctx
            .stats
            .media_timeouts
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    drop(relay);
}

#[tokio::test(start_paused = true)]
async fn with_both_trunks_in_bypass_the_sdp_passes_unchanged() {
    let config = CONFIG
        .replace(
            "side = \"internal\"",
            "side = \"internal\"\nmedia = \"bypass\"",
        )
        .replace(
            "address = \"127.0.9.21\"",
            "address = \"127.0.9.21\"\nmedia = \"bypass\"",
        );
    let (mut node, relay) = node_with(&config, 5, 30000, 30099).await;
    let offer = pcmu(PBX_MEDIA, 4000, "");
    let ans = pcmu(GW_MEDIA, 6000, "");
    let (inv, ok) = answered_call(&mut node, "m-5", &offer, &ans).await;
    assert_eq!(inv.body(), &offer[..], "the caller's own offer");
    assert_eq!(ok.body(), &ans[..], "the gateway's own answer");
    assert_eq!(relay.sessions(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_law_only_towards_a_mu_law_trunk_is_offered_as_mu_law_and_answered_as_a_law() {
    let config = CONFIG.replace(
        "address = \"127.0.9.21\"",
        "address = \"127.0.9.21\"\ncodecs = [\"PCMU\"]",
    );
    let (mut node, _relay) = node_with(&relayed(&config), 6, 30000, 30099).await;
    let offer = sdp(
        PBX_MEDIA,
        4000,
        "8 101",
        "a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\n",
    );
    node.receive(invite_with("m-6", &offer), PBX).await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    assert_eq!(media_of(&inv).2, "0 101");
    assert!(text(inv.body()).contains("a=rtpmap:0 PCMU/8000\r\n"));
    assert!(!text(inv.body()).contains("PCMA"));
    node.receive(
        answer_sdp(&inv, 200, "g1", GW1, &pcmu(GW_MEDIA, 6000, "")),
        GW1,
    )
    .await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    assert_eq!(
        media_of(&ok).2,
        "8 101",
        "the caller hears of its own codec"
    );
    assert!(text(ok.body()).contains("a=rtpmap:8 PCMA/8000\r\n"));

    // The same caller towards a trunk that accepts A-law: nothing is touched but addresses.
    let mut node2 = node_with(&relayed(CONFIG), 7, 30000, 30099).await.0;
    node2.receive(invite_with("m-7", &offer), PBX).await;
    let inv = node2.expect(GW1, Expect::Request(Method::Invite)).await;
    let port = media_of(&inv).1;
    assert_eq!(
        text(inv.body()),
        pointed(&offer, PBX_MEDIA, 4000, "192.0.2.7", port)
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_port_range_refuses_a_new_call_with_503_and_spares_the_established_one() {
    // Two RTP/RTCP pairs: one relayed call.
    let (mut node, relay) = node_with(&relayed(CONFIG), 8, 30000, 30003).await;
    let (_, ok) = answered_call(
        &mut node,
        "m-8",
        &pcmu(PBX_MEDIA, 4000, ""),
        &pcmu(GW_MEDIA, 6000, ""),
    )
    .await;
    node.receive(from_caller(Method::Ack, &ok, 1, "z9hG4bK-m8-ack", b""), PBX)
        .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;

    node.receive(invite_with("m-9", &pcmu(PBX_MEDIA, 4002, "")), PBX)
        .await;
    let refused = node.expect(PBX, Expect::Status(503)).await;
    assert_eq!(refused.call_id().unwrap().unwrap(), b"m-9");
    assert!(refused.header(HeaderName::RetryAfter).is_some());
    assert_eq!(
        relay.sessions(),
        1,
        "the established call keeps its session"
    );
    assert_eq!(relay.ports().pairs_in_use(), 2);
    assert_eq!(
        node.ctx
            .stats
            .media_ports_exhausted
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn failover_to_the_next_gateway_reuses_the_leg_b_endpoint() {
    let (mut node, relay) = node_with(&relayed(CONFIG), 9, 30000, 30099).await;
    node.receive(invite_with("m-10", &pcmu(PBX_MEDIA, 4000, "")), PBX)
        .await;
    let inv1 = node.expect(GW1, Expect::Request(Method::Invite)).await;
    node.receive(crate::testkit::answer(&inv1, 503, "g1", GW1, &[]), GW1)
        .await;
    let inv2 = node.expect(GW2, Expect::Request(Method::Invite)).await;
    assert_eq!(inv1.body(), inv2.body(), "the same leg-B endpoint");
    assert_eq!(relay.sessions(), 1);
    // The caller gives up: the session goes with the call.
    node.receive(answer_sdp(&inv2, 486, "g2", GW2, b""), GW2)
        .await;
    node.expect(PBX, Expect::Status(486)).await;
    node.calls_end().await;
    tokio::time::timeout(Duration::from_secs(5), relay.wait_idle())
        .await
        .expect("the call's session was closed");
}

#[tokio::test(start_paused = true)]
async fn an_offer_the_relay_cannot_carry_is_refused_with_488() {
    let config = CONFIG.replace(
        "address = \"127.0.9.21\"",
        "address = \"127.0.9.21\"\ncodecs = [\"G729\"]",
    );
    let (mut node, relay) = node_with(&relayed(&config), 10, 30000, 30099).await;
    // gw1 takes only G.729, gw2 takes anything: the call goes to gw2.
    node.receive(invite_with("m-11", &pcmu(PBX_MEDIA, 4000, "")), PBX)
        .await;
    let inv2 = node.expect(GW2, Expect::Request(Method::Invite)).await;
    assert_eq!(media_of(&inv2).2, "0 101");
    // Not SDP at all: 488.
    node.receive(invite_with("m-12", b"not sdp\r\n"), PBX).await;
    node.expect(PBX, Expect::Status(488)).await;
    drop(relay);
}

#[tokio::test(start_paused = true)]
async fn a_late_offer_in_a_reliable_183_is_answered_in_the_prack() {
    let (mut node, _relay) = node_with(&relayed(CONFIG), 11, 30000, 30099).await;
    node.receive(invite_with("m-13", b""), PBX).await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let gw_offer = pcmu(GW_MEDIA, 6000, "");
    let mut b = response_to(&inv, 183, b"Session Progress", Some("g1"), None);
    b.header(HeaderName::Contact, format!("<sip:{GW1}>").as_bytes())
        .header(HeaderName::Require, b"100rel")
        .header(HeaderName::RSeq, b"1")
        .body(b"application/sdp", Bytes::copy_from_slice(&gw_offer));
    node.receive(b.build(), GW1).await;
    let p183 = node.expect(PBX, Expect::Status(183)).await;
    let a_port = media_of(&p183).1;
    assert_eq!(
        text(p183.body()),
        pointed(&gw_offer, GW_MEDIA, 6000, "192.0.2.11", a_port)
    );
    // The caller's PRACK answers the offer: the gateway gets it pointed at leg B.
    let answer = pcmu(PBX_MEDIA, 4000, "");
    let prack = {
        let text = String::from_utf8(
            from_caller(Method::Prack, &p183, 2, "z9hG4bK-m13-prack", &answer).to_vec(),
        )
        .unwrap();
        Bytes::from(text.replacen("\r\n", "\r\nRAck: 1 1 INVITE\r\n", 1))
    };
    node.receive(prack, PBX).await;
    let prack_b = node.expect(GW1, Expect::Request(Method::Prack)).await;
    let (c, b_port, _) = media_of(&prack_b);
    assert_eq!(c, "192.0.2.11");
    assert_ne!(a_port, b_port);
    assert_eq!(
        text(prack_b.body()),
        pointed(&answer, PBX_MEDIA, 4000, "192.0.2.11", b_port)
    );
}

/// An UPDATE from the gateway changing codec and address mid-call: the caller gets it pointed at
/// leg A (filtered by the caller's trunk `codecs`), the caller's answer reaches the gateway pointed
/// at leg B, and the relay follows the gateway's new address.
#[tokio::test(start_paused = true)]
async fn an_update_from_the_gateway_moves_its_media_and_the_relay_follows() {
    let config = CONFIG.replace(
        "side = \"internal\"",
        "side = \"internal\"\ncodecs = [\"PCMA\"]",
    );
    let (mut node, relay) = node_with(&relayed(&config), 12, 30000, 30099).await;
    let offer = sdp(PBX_MEDIA, 4000, "8 0", "");
    let (inv, ok) = answered_call(&mut node, "m-14", &offer, &sdp(GW_MEDIA, 6000, "8", "")).await;
    let (a_port, b_port) = (media_of(&ok).1, media_of(&inv).1);
    node.receive(
        from_caller(Method::Ack, &ok, 1, "z9hG4bK-m14-ack", b""),
        PBX,
    )
    .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;

    // The gateway's UPDATE: a new port, A-law and µ-law offered; the pbx trunk takes A-law only.
    let mut b = MessageBuilder::request_method(Method::Update, format!("sip:{NODE}").as_bytes());
    b.header(
        HeaderName::Via,
        format!("SIP/2.0/UDP {GW1};branch=z9hG4bK-m14-upd").as_bytes(),
    )
    .header(HeaderName::MaxForwards, b"70")
    .header(HeaderName::From, inv.header(HeaderName::To).unwrap())
    .header(HeaderName::To, inv.header(HeaderName::From).unwrap())
    .header(HeaderName::CallId, inv.call_id().unwrap().unwrap())
    .header(HeaderName::CSeq, b"1 UPDATE")
    .header(HeaderName::Contact, format!("<sip:{GW1}>").as_bytes());
    // The gateway's To tag is the one it answered with.
    let upd_text = String::from_utf8(
        b.body(
            b"application/sdp",
            Bytes::from(sdp(GW_MEDIA, 6100, "0 8", "")),
        )
        .build()
        .to_vec(),
    )
    .unwrap()
    .replacen(
        &format!(
            "From: {}",
            String::from_utf8_lossy(inv.header(HeaderName::To).unwrap())
        ),
        &format!(
            "From: {};tag=g1",
            String::from_utf8_lossy(inv.header(HeaderName::To).unwrap())
        ),
        1,
    );
    node.receive(Bytes::from(upd_text), GW1).await;
    let upd_a = node.expect(PBX, Expect::Request(Method::Update)).await;
    assert_eq!(
        media_of(&upd_a),
        ("192.0.2.12".to_owned(), a_port, "8".to_owned())
    );

    let mut r = response_to(&upd_a, 200, b"OK", None, None);
    r.body(
        b"application/sdp",
        Bytes::from(sdp(PBX_MEDIA, 4000, "8", "")),
    );
    node.receive(r.build(), PBX).await;
    let ok_b = node.expect(GW1, Expect::Status(200)).await;
    assert_eq!(
        media_of(&ok_b),
        ("192.0.2.12".to_owned(), b_port, "8".to_owned())
    );
    // The relay now sends to the gateway's new port.
    let actors = node.ctx.registry.call_actors();
    let info = ractor::call_t!(actors[0], super::DialogMsg::Info, 1000).unwrap();
    let b = info.b_media.unwrap();
    assert_eq!(b.remote, Some(format!("{GW_MEDIA}:6100").parse().unwrap()));
    assert_eq!(
        b.codec, "PCMU/8000",
        "the gateway's last SDP lists mu-law first"
    );
    assert_eq!(relay.sessions(), 1, "the same session, updated");
}

/// A re-INVITE the gateway rejects leaves the media as it was (RFC 3264 §8): the relay goes back
/// to the caller's previous address.
#[tokio::test(start_paused = true)]
async fn a_rejected_re_invite_leaves_the_media_as_it_was() {
    let (mut node, _relay) = node_with(&relayed(CONFIG), 13, 30000, 30099).await;
    let (_, ok) = answered_call(
        &mut node,
        "m-15",
        &pcmu(PBX_MEDIA, 4000, ""),
        &pcmu(GW_MEDIA, 6000, ""),
    )
    .await;
    node.receive(
        from_caller(Method::Ack, &ok, 1, "z9hG4bK-m15-ack", b""),
        PBX,
    )
    .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    let a_remote = |node: &TestNode| {
        let actors = node.ctx.registry.call_actors();
        let actor = actors[0].clone();
        async move {
            ractor::call_t!(actor, super::DialogMsg::Info, 1000)
                .unwrap()
                .a_media
                .unwrap()
                .remote
        }
    };
    node.receive(
        from_caller(
            Method::Invite,
            &ok,
            2,
            "z9hG4bK-m15-move",
            &pcmu(PBX_MEDIA, 4100, ""),
        ),
        PBX,
    )
    .await;
    let reinv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    assert_eq!(
        a_remote(&node).await,
        Some(format!("{PBX_MEDIA}:4100").parse().unwrap()),
        "the offerer listens at its new address from its offer on"
    );
    node.receive(crate::testkit::answer(&reinv, 488, "g1", GW1, &[]), GW1)
        .await;
    node.expect(PBX, Expect::Status(488)).await;
    assert_eq!(
        a_remote(&node).await,
        Some(format!("{PBX_MEDIA}:4000").parse().unwrap()),
        "rejected: back to the previous address"
    );
}
