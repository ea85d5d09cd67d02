//! SRTP per trunk through a node on paused time (the testkit's channel wire; the relay sessions
//! are real, on 127.0.162.10x): the offer/answer matrix of `encryption` on the caller's and the
//! gateway's trunks, the 488s, what `calls show` says of each leg, and that no key reaches the
//! dialog record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::IpAddr;

use medpool_media::relay::{PortRange, Relay, RelayConfig};
use medpool_media::sdp::Sdp;
use medpool_media::srtp::{CryptoAttribute, Mki, Suite};
use medpool_sip::{Method, SipMessage};

use super::media_tests::{answer_sdp, from_caller, pcmu, text};
use crate::cluster::DialogStore;
use crate::media::MediaRuntime;
use crate::testkit::{CONFIG, Expect, GW1, PBX, TestNode, invite_with};

const PBX_MEDIA: &str = "10.0.0.5";
const GW_MEDIA: &str = "10.0.1.9";

/// A node relaying on 127.0.162.(100 + `k`) with `pbx` and `gw1` at these encryptions.
async fn node(k: u8, pbx: &str, gw1: &str) -> (TestNode, Relay) {
    let config = CONFIG
        .replacen(
            "name = \"pbx\"",
            &format!("name = \"pbx\"\nmedia = \"relay\"\nencryption = \"{pbx}\""),
            1,
        )
        .replacen(
            "name = \"gw1\"",
            &format!("name = \"gw1\"\nencryption = \"{gw1}\""),
            1,
        );
    let ip: IpAddr = format!("127.0.162.{}", 100 + u16::from(k)).parse().unwrap();
    let relay = Relay::new(RelayConfig {
        listen: ip,
        ports: PortRange::new(31000, 31099).unwrap(),
    });
    let rt = MediaRuntime {
        relay: relay.clone(),
        advertise: format!("192.0.2.{k}").parse().unwrap(),
    };
    (TestNode::with(&config, Some(rt)).await, relay)
}

/// An SDP with `proto` and these `a=crypto` lines.
fn secure(ip: &str, port: u16, proto: &str, lines: &[&CryptoAttribute]) -> Vec<u8> {
    let mut attrs = String::new();
    for l in lines {
        attrs.push_str(&format!("a=crypto:{l}\r\n"));
    }
    text(&pcmu(ip, port, &attrs))
        .replace(" RTP/AVP ", &format!(" {proto} "))
        .into_bytes()
}

/// (profile, the `a=crypto` lines parsed) of a message's SDP.
fn crypto_of(msg: &SipMessage) -> (String, Vec<CryptoAttribute>) {
    let sdp = Sdp::parse(msg.body()).unwrap();
    let m = &sdp.media[0];
    let lines = m
        .crypto
        .iter()
        .map(|c| CryptoAttribute::parse(std::str::from_utf8(c).unwrap()).unwrap())
        .collect();
    (m.proto.to_owned(), lines)
}

fn key_text(a: &CryptoAttribute) -> String {
    a.key.to_string().trim_start_matches("inline:").to_owned()
}

async fn info(node: &TestNode) -> super::msg::CallInfo {
    let actors = node.ctx.registry.call_actors();
    ractor::call_t!(actors[0], super::DialogMsg::Info, 1000).unwrap()
}

/// A Lync-like caller (required, RTP/SAVP with an MKI) to a plain gateway (none): the gateway
/// gets plain RTP; the caller gets RTP/SAVP with one line answering its own (same tag and suite,
/// an MKI of the same length, a key of the node's); `calls show` tells the legs apart; the record
/// holds neither key, only the MKI length, with which a node that rebuilds the call re-keys the
/// caller.
#[tokio::test(start_paused = true)]
async fn srtp_caller_to_plain_gateway_and_no_key_in_the_record() {
    let (mut node, _relay) = node(1, "required", "none").await;
    let mki = Some(Mki::new(1, 1).unwrap());
    let caller_key = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80, mki).unwrap();
    let offer = secure(PBX_MEDIA, 4000, "RTP/SAVP", &[&caller_key]);
    node.receive(invite_with("s-1", &offer), PBX).await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let (proto, lines) = crypto_of(&inv);
    assert_eq!(
        (proto.as_str(), lines.len()),
        ("RTP/AVP", 0),
        "{}",
        text(inv.body())
    );
    assert!(!text(inv.body()).contains(&key_text(&caller_key)));
    let ans = pcmu(GW_MEDIA, 6000, "");
    node.receive(answer_sdp(&inv, 200, "g1", GW1, &ans), GW1)
        .await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    let (proto, lines) = crypto_of(&ok);
    assert_eq!(proto, "RTP/SAVP", "{}", text(ok.body()));
    assert_eq!(lines.len(), 1);
    let ours = &lines[0];
    assert_eq!((ours.tag, ours.suite), (1, Suite::AesCm128HmacSha1_80));
    assert_eq!(
        ours.key.mki.map(Mki::len),
        Some(1),
        "an MKI as the caller's"
    );
    assert_ne!(
        ours.key.master, caller_key.key.master,
        "a key of the node's own"
    );

    let i = info(&node).await;
    let (a, b) = (i.a_media.clone().unwrap(), i.b_media.clone().unwrap());
    assert_eq!(a.srtp, Some((Suite::AesCm128HmacSha1_80, true)));
    assert_eq!(b.srtp, None);

    node.receive(from_caller(Method::Ack, &ok, 1, "z9hG4bK-s1-ack", b""), PBX)
        .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    let shard = i.shard;
    let rec = node
        .pool
        .records_of_shard(shard)
        .into_iter()
        .find(|r| r.a.call_id == "s-1")
        .expect("the call's record");
    let json = serde_json::to_string(&rec).unwrap();
    assert!(
        json.contains("RTP/SAVP"),
        "the record keeps the profile: {json}"
    );
    for k in [&caller_key, ours] {
        assert!(!json.contains(&key_text(k)), "a key in the record: {json}");
    }
    assert!(
        !json.contains("crypto") && !json.contains("inline:"),
        "{json}"
    );
    assert!(!format!("{i:?}").contains(&key_text(ours)));
    assert_eq!(
        (rec.a.srtp_mki_len, rec.b.srtp_mki_len),
        (Some(1), None),
        "the record keeps the caller's MKI length (not a secret), nothing for the plain leg"
    );

    // The node is gone; a new owner rebuilds the call from its record: the caller is re-keyed with
    // a fresh key of the new node's and an MKI of the length it used (Lync and Skype for Business
    // expect one), the plain gateway is re-offered plain RTP.
    let (mut new, _relay) = self::node(5, "required", "none").await;
    assert!(new.pool.store(rec.clone()));
    super::spawn_restored(new.ctx.clone(), rec).await.unwrap();
    let reinv_a = new.expect(PBX, Expect::Request(Method::Invite)).await;
    let (proto, lines) = crypto_of(&reinv_a);
    assert_eq!(proto, "RTP/SAVP", "{}", text(reinv_a.body()));
    assert!(!lines.is_empty());
    for l in &lines {
        assert_eq!(l.key.mki.map(Mki::len), Some(1), "{}", text(reinv_a.body()));
        assert_ne!(
            l.key.master, ours.key.master,
            "a new key after the failover"
        );
    }
    let reinv_b = new.expect(GW1, Expect::Request(Method::Invite)).await;
    let (proto, lines) = crypto_of(&reinv_b);
    assert_eq!((proto.as_str(), lines.len()), ("RTP/AVP", 0));
}

/// The gateway's trunk requires SRTP: the INVITE is RTP/SAVP with a line per suite; a 2xx
/// without a key is hung up (ACK, BYE) and the caller gets 488.
#[tokio::test(start_paused = true)]
async fn a_required_trunk_that_answers_plain_is_hung_up_and_the_caller_refused() {
    let (mut node, _relay) = node(2, "none", "required").await;
    node.receive(invite_with("s-2", &pcmu(PBX_MEDIA, 4000, "")), PBX)
        .await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let (proto, lines) = crypto_of(&inv);
    assert_eq!(proto, "RTP/SAVP");
    let suites: Vec<Suite> = lines.iter().map(|l| l.suite).collect();
    assert_eq!(
        suites,
        [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32]
    );
    assert_ne!(lines[0].key.master, lines[1].key.master);
    node.receive(
        answer_sdp(&inv, 200, "g1", GW1, &pcmu(GW_MEDIA, 6000, "")),
        GW1,
    )
    .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    node.expect(GW1, Expect::Request(Method::Bye)).await;
    node.expect(PBX, Expect::Status(488)).await;
}

/// The gateway's trunk requires SRTP and answers the 32-bit suite: the caller (plain trunk)
/// gets plain RTP; the gateway's leg is SRTP with that suite. A later answer without a key from
/// that gateway ends the call.
#[tokio::test(start_paused = true)]
async fn plain_caller_to_an_srtp_gateway() {
    let (mut node, _relay) = node(3, "none", "required").await;
    node.receive(invite_with("s-3", &pcmu(PBX_MEDIA, 4000, "")), PBX)
        .await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let (_, lines) = crypto_of(&inv);
    let theirs = medpool_media::srtp::answer(&lines[1]).unwrap();
    let ans = secure(GW_MEDIA, 6000, "RTP/SAVP", &[&theirs]);
    node.receive(answer_sdp(&inv, 200, "g1", GW1, &ans), GW1)
        .await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    let (proto, lines) = crypto_of(&ok);
    assert_eq!(
        (proto.as_str(), lines.len()),
        ("RTP/AVP", 0),
        "{}",
        text(ok.body())
    );
    let i = info(&node).await;
    assert_eq!(i.a_media.unwrap().srtp, None);
    assert_eq!(
        i.b_media.unwrap().srtp,
        Some((Suite::AesCm128HmacSha1_32, false))
    );

    // Mid-call, the caller re-offers (plain); the gateway's trunk requires SRTP and it answers
    // without a key: the caller gets the 2xx (an answer cannot be refused), then both legs are
    // hung up — the gateway's leg has no key left, so the call would only be silence.
    node.receive(from_caller(Method::Ack, &ok, 1, "z9hG4bK-s3-ack", b""), PBX)
        .await;
    node.expect(GW1, Expect::Request(Method::Ack)).await;
    let reoffer = pcmu(PBX_MEDIA, 4002, "");
    node.receive(
        from_caller(Method::Invite, &ok, 2, "z9hG4bK-s3-re", &reoffer),
        PBX,
    )
    .await;
    let reinv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let (proto, lines) = crypto_of(&reinv);
    assert_eq!(proto, "RTP/SAVP", "{}", text(reinv.body()));
    assert_eq!(lines.len(), 1, "the key in force is offered again");
    let plain = pcmu(GW_MEDIA, 6002, "");
    node.receive(answer_sdp(&reinv, 200, "g1", GW1, &plain), GW1)
        .await;
    node.expect(PBX, Expect::Status(200)).await;
    node.expect(PBX, Expect::Request(Method::Bye)).await;
    node.expect(GW1, Expect::Request(Method::Bye)).await;
}

/// Best-effort SRTP towards an optional trunk (RTP/AVP with keys), which answers plain: the
/// call goes on in plain RTP. A caller's RTP/SAVP offer on a plain trunk is refused (488).
#[tokio::test(start_paused = true)]
async fn optional_takes_a_plain_answer_and_none_refuses_savp() {
    let (mut node, _relay) = node(4, "none", "optional").await;
    node.receive(invite_with("s-4", &pcmu(PBX_MEDIA, 4000, "")), PBX)
        .await;
    let inv = node.expect(GW1, Expect::Request(Method::Invite)).await;
    let (proto, lines) = crypto_of(&inv);
    assert_eq!((proto.as_str(), lines.len()), ("RTP/AVP", 2));
    node.receive(
        answer_sdp(&inv, 200, "g1", GW1, &pcmu(GW_MEDIA, 6000, "")),
        GW1,
    )
    .await;
    let ok = node.expect(PBX, Expect::Status(200)).await;
    assert_eq!(crypto_of(&ok).1.len(), 0);
    let i = info(&node).await;
    assert_eq!(i.b_media.unwrap().srtp, None);

    let key = CryptoAttribute::generate(1, Suite::AesCm128HmacSha1_80, None).unwrap();
    let savp = secure(PBX_MEDIA, 4002, "RTP/SAVP", &[&key]);
    node.receive(invite_with("s-5", &savp), PBX).await;
    node.expect(PBX, Expect::Status(488)).await;
}
