//! A real SIP user agent over TLS with SRTP, through a real `medpool serve`: baresip "alice" on
//! the internal trunk `pbx` speaks SIP over TLS to medpool's TLS listener (mutual TLS: the trunk
//! requires her client certificate, issued by a CA the test makes) with SRTP mandatory
//! (`mediaenc=srtp-mand`: RTP/SAVP, one `a=crypto` line, AES_CM_128_HMAC_SHA1_80), and calls
//! baresip "bob" behind gateway trunk `gw1` over UDP — in plain RTP (`encryption = "none"`: the
//! relay bridges SRTP↔RTP) or in SRTP too (`encryption = "required"`: SRTP↔SRTP, re-keyed per
//! leg). A third case gives alice a certificate from another CA: no service.
//!
//! Checked on the packets, not by ear:
//! - leg A's signalling never crosses the wire in the clear (no SIP datagram between alice and
//!   the node); it is read from alice's own SIP trace (`baresip -s`): her offer and medpool's
//!   answer carry RTP/SAVP and one key each, keys that differ;
//! - leg B's signalling is on the wire: RTP/AVP without `a=crypto` (plain) or RTP/SAVP with a key
//!   of medpool's own for that leg;
//! - the raw capture of RTP both ways on both legs: every SRTP packet authenticates with its
//!   sender's key (medpool_media's SRTP, itself checked against RFC 3711's vectors), and what it
//!   carries is byte for byte what the other leg carried (in the clear, or under the other leg's
//!   key); no ciphertext is the clear text;
//! - no key appears in `medpool ctl calls show` nor in medpool's log.
//!
//! Addresses: 127.0.163.0/24, one /28 per case (tests/ua/scene.rs), RTP ports of the UAs from
//! 48 000. baresip 1.0 opens its TLS connections from 127.0.0.1 (it does not bind them to its
//! listening address), so the `pbx` trunk's address is 127.0.0.1; it neither verifies medpool's
//! certificate nor sends SNI (seen with `openssl s_server`), so what proves the TLS here is
//! medpool's side: the client certificate it requires. Each case is bounded: every wait has a
//! timeout, every process is stopped by PID when the test ends or fails.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    missing_docs
)]

mod common;
mod ua;

use std::net::Ipv4Addr;
use std::time::Duration;

use ua::baresip::{Baresip, BaresipSpec};
use ua::certs::{Identity, TestCa};
use ua::scene::{ALICE, BOB, BOB_NUMBER, NODE, Scene, SceneSpec};
use ua::secure::{AudioSecurity, Unprotected, found_among, rtp_between, rtp_payload, unprotect};
use ua::trace::{self, Traced};
use ua::wire::{Packet, SipMsg};

/// How long call setup or a teardown may take.
const STEP: Duration = Duration::from_secs(10);
/// The tests' /24 and the first RTP port of their UAs.
const BLOCK: u8 = 163;
const RTP_BASE: u16 = 48_000;
/// The SRTP suite baresip 1.0 offers.
const SUITE: &str = "AES_CM_128_HMAC_SHA1_80";
/// medpool's TLS port.
const TLS_PORT: u16 = 5061;

/// The certificates of a case: medpool's, alice's (from the trusted CA or another one).
struct Certs {
    dir: common::TestDir,
    ca: TestCa,
    node: Identity,
    alice: Identity,
}

impl Certs {
    fn new(name: &str, spec: &SceneSpec, alice_from_a_stranger: bool) -> Certs {
        let dir = common::TestDir::new(&format!("real-ua-tls-{name}-certs"));
        let ca = TestCa::new("medpool real-UA test CA");
        let node = ca.issue(dir.path(), "node", &["medpool.test", &spec.ip(NODE)]);
        let alice_names = ["alice.test", &spec.ip(ALICE), "127.0.0.1"];
        let alice = if alice_from_a_stranger {
            TestCa::new("a stranger's CA").issue(dir.path(), "alice", &alice_names)
        } else {
            ca.issue(dir.path(), "alice", &alice_names)
        };
        // baresip checks client certificates (as a TLS server) against this CA.
        std::fs::write(dir.path().join("trusted-ca.crt"), &ca.pem).unwrap();
        Certs {
            dir,
            ca,
            node,
            alice,
        }
    }

    fn trusted_ca(&self) -> std::path::PathBuf {
        self.dir.path().join("trusted-ca.crt")
    }
}

/// The scene of a case: medpool with a TLS listener and its certificate; the `pbx` trunk over
/// TLS, requiring alice's client certificate (issued by the test CA, naming alice.test), and
/// with `gw_encryption` SRTP on `pbx` and that `encryption` on `gw1` (bob, UDP); without, no
/// `encryption` key at all (the trunks' default: plain RTP).
fn tls_spec(case: u8, certs: Option<&Certs>, gw_encryption: Option<&str>) -> SceneSpec {
    let mut spec = SceneSpec::new(case);
    spec.block = BLOCK;
    spec.rtp_base = RTP_BASE;
    let Some(certs) = certs else { return spec };
    spec.pbx_address = Some("127.0.0.1".to_owned());
    spec.pbx_port = TLS_PORT;
    spec.node_args = vec![
        "--sip-tls-listen".to_owned(),
        format!("{}:{TLS_PORT}", spec.ip(NODE)),
        "--sip-tls-cert".to_owned(),
        certs.node.cert.display().to_string(),
        "--sip-tls-key".to_owned(),
        certs.node.key.display().to_string(),
    ];
    spec.trunk_keys_of = vec![(
        "pbx",
        format!(
            "transport = \"tls\"\ntls_client_ca = \"{}\"\ntls_client_names = [\"alice.test\"]",
            certs.trusted_ca().display()
        ),
    )];
    if let Some(gw) = gw_encryption {
        spec.trunk_keys_of
            .push(("pbx", "encryption = \"required\"".to_owned()));
        spec.trunk_keys_of
            .push(("gw1", format!("encryption = \"{gw}\"")));
    }
    spec
}

/// What a case needs: the certificates, the scene, alice and bob.
struct Case {
    certs: Certs,
    scene: Scene,
    alice: Baresip,
    bob: Baresip,
}

/// What differs between cases.
#[derive(Clone, Copy)]
struct Opts {
    /// alice offers SRTP only (`srtp-mand`) and `pbx` has `encryption = "required"`.
    alice_srtp: bool,
    /// bob too, and `gw1` has `encryption = "required"` (else `"none"`).
    bob_srtp: bool,
    /// alice's certificate comes from a CA the trunk does not trust.
    stranger: bool,
}

/// Starts a case: certificates, node, alice (TLS; SRTP mandatory with `alice_srtp`), bob (UDP;
/// SRTP mandatory with `bob_srtp`), and waits until gw1 is up.
fn start_case(name: &str, case: u8, o: Opts) -> Case {
    let spec = tls_spec(case, None, None);
    let certs = Certs::new(name, &spec, o.stranger);
    let gw_encryption = match (o.alice_srtp, o.bob_srtp) {
        (false, _) => None,
        (true, false) => Some("none"),
        (true, true) => Some("required"),
    };
    let spec = tls_spec(case, Some(&certs), gw_encryption);
    let scene = Scene::start(&format!("tls-{name}"), spec);
    let alice = Baresip::start(scene.dir(), {
        let mut s = BaresipSpec::new(
            "alice",
            &scene.ip(ALICE),
            "alice",
            scene.spec.rtp_ports(ALICE),
        );
        s.extra_config = format!(
            "sip_certificate {}\nsip_cafile {}\n",
            certs.alice.combined.display(),
            certs.trusted_ca().display()
        );
        if o.alice_srtp {
            s.extra_config.push_str("module srtp.so\n");
            s.account_params = ";mediaenc=srtp-mand".to_owned();
        }
        s
    });
    let bob = Baresip::start(scene.dir(), {
        let mut s = BaresipSpec::new("bob", &scene.ip(BOB), BOB_NUMBER, scene.spec.rtp_ports(BOB));
        if o.bob_srtp {
            s.extra_config = "module srtp.so\n".to_owned();
            s.account_params = ";mediaenc=srtp-mand".to_owned();
        }
        s
    });
    scene.wait_gateway_up(BOB);
    let _ = &certs.ca;
    Case {
        certs,
        scene,
        alice,
        bob,
    }
}

impl Case {
    /// What alice dials: medpool's TLS port.
    fn tls_uri(&self, number: &str) -> String {
        format!(
            "sip:{number}@{}:{TLS_PORT};transport=tls",
            self.scene.ip(NODE)
        )
    }

    fn node_ip(&self) -> Ipv4Addr {
        self.scene.ip(NODE).parse().unwrap()
    }

    /// alice's SIP as she traced it.
    fn alice_trace(&self) -> Vec<Traced> {
        trace::parse(&self.alice.log_text())
    }

    /// The first message with SDP that alice sent to the node (`from_alice`) or got from it.
    fn alice_sdp_msg(&self, from_alice: bool) -> SipMsg {
        let node = self.node_ip();
        self.alice_trace()
            .into_iter()
            .map(|t| t.msg)
            .filter(|m| (*m.dst.ip() == node) == from_alice && (*m.src.ip() == node) != from_alice)
            .find(|m| m.body().contains("m=audio"))
            .unwrap_or_else(|| {
                panic!(
                    "no SDP {} alice in her SIP trace\n{}",
                    if from_alice { "from" } else { "to" },
                    self.alice.log_tail(6000)
                )
            })
    }

    /// The first message with SDP on bob's leg sent by bob (`from_bob`) or by the node.
    fn bob_sdp_msg(&self, from_bob: bool) -> SipMsg {
        let bob = self.scene.ip(BOB);
        self.scene
            .leg(BOB)
            .into_iter()
            .filter(|m| (m.src.ip().to_string() == bob) == from_bob)
            .find(|m| m.body().contains("m=audio"))
            .unwrap_or_else(|| panic!("no SDP on bob's leg\n{}", self.scene.sip_ladder()))
    }
}

/// One leg's RTP as captured: (UA → node, node → UA), by the UA's media port.
fn leg_rtp(packets: &[Packet], node: Ipv4Addr, ua_port: u16) -> (Vec<Packet>, Vec<Packet>) {
    (
        rtp_between(packets, (None, Some(ua_port)), (Some(node), None)),
        rtp_between(packets, (Some(node), None), (None, Some(ua_port))),
    )
}

/// Waits until both legs carried at least `n` RTP packets each way; returns the capture.
fn wait_rtp(case: &Case, ports: [u16; 2], n: usize) -> Vec<Packet> {
    let node = case.node_ip();
    let mut counts = [0usize; 4];
    let ok = common::wait_until(STEP, || {
        let cap = case.scene.capture.packets();
        let (a_in, a_out) = leg_rtp(&cap, node, ports[0]);
        let (b_in, b_out) = leg_rtp(&cap, node, ports[1]);
        counts = [a_in.len(), a_out.len(), b_in.len(), b_out.len()];
        counts.iter().all(|c| *c >= n)
    });
    assert!(
        ok,
        "RTP (alice→node, node→alice, bob→node, node→bob) = {counts:?}, want {n} each"
    );
    // Settle, then read once more: what a packet relayed at the end carried is then captured on
    // both legs.
    std::thread::sleep(Duration::from_millis(300));
    case.scene.capture.packets()
}

/// The RTP payloads of plain packets.
fn payloads(packets: &[Vec<u8>]) -> Vec<Vec<u8>> {
    packets
        .iter()
        .filter_map(|p| rtp_payload(p).map(<[u8]>::to_vec))
        .collect()
}

/// The payloads of captured plain RTP datagrams.
fn wire_payloads(packets: &[Packet]) -> Vec<Vec<u8>> {
    packets
        .iter()
        .filter_map(|p| rtp_payload(&p.payload).map(<[u8]>::to_vec))
        .collect()
}

/// Leaves out the packets of the last `ms` of a capture (their relayed copies may still be on
/// their way when it was read).
fn before_the_end(packets: &[Packet], all: &[Packet], ms: u64) -> Vec<Packet> {
    let end = all.last().map(|p| p.at).unwrap_or_default();
    packets
        .iter()
        .filter(|p| p.at + Duration::from_millis(ms) < end)
        .cloned()
        .collect()
}

/// Checks that `got` (one direction, unprotected) authenticated entirely.
fn all_authentic(what: &str, sent: usize, got: &Unprotected) {
    println!(
        "{what}: {sent} SRTP packets, {} authenticated, {} failed",
        got.plain.len(),
        got.failed
    );
    assert!(sent > 0, "{what}: no packets");
    assert_eq!(
        got.failed, 0,
        "{what}: every packet authenticates with its sender's key (first error: {:?})",
        got.first_error
    );
}

/// Checks that every payload of `from` is among `among` (and says how many).
fn relayed(what: &str, from: &[Vec<u8>], among: &[Vec<u8>], at_least_pct: usize) {
    let found = found_among(from, among);
    println!("{what}: {found} of {} payloads found", from.len());
    assert!(
        !from.is_empty() && found * 100 >= from.len() * at_least_pct,
        "{what}: {found} of {} payloads found on the other leg (want {at_least_pct} %)",
        from.len()
    );
}

/// No key in `calls show` nor in medpool's log.
fn keys_never_shown(case: &Case, show: &serde_json::Value, keys: &[String]) {
    let shown = show.to_string();
    let log = case.scene.node.log();
    for k in keys {
        assert!(!k.is_empty());
        assert!(
            !shown.contains(k.as_str()),
            "calls show carries an SRTP key: {show}"
        );
        assert!(
            !log.contains(k.as_str()),
            "medpool's log carries an SRTP key"
        );
    }
}

/// alice hangs up; both UAs see the call end, bob's leg carries BYE/200, alice's trace shows
/// her BYE over TLS answered, and no call is left.
fn hang_up(case: &Case) {
    case.alice.hangup();
    case.alice.expect_event("CALL_CLOSED", 1, STEP);
    case.bob.expect_event("CALL_CLOSED", 1, STEP);
    case.scene
        .expect_on_leg(BOB, "200 BYE from bob", 1, STEP, |m| {
            m.status() == Some(200) && m.cseq_method() == "BYE"
        });
    let ok = common::wait_until(STEP, || {
        case.alice_trace().iter().any(|t| {
            t.transport == "TLS" && t.msg.status() == Some(200) && t.msg.cseq_method() == "BYE"
        })
    });
    assert!(
        ok,
        "alice's BYE answered over TLS\n{}",
        case.alice.log_tail(4000)
    );
    case.scene.expect_no_calls(STEP);
}

/// Leg A's signalling: over TLS only (nothing in the clear on the wire); alice's offer and
/// medpool's answer are RTP/SAVP with one key each (the same tag and suite, different keys).
/// Returns (alice's security, medpool's answer's).
fn leg_a_signalling(case: &Case) -> (AudioSecurity, AudioSecurity) {
    let clear = case.scene.leg(ALICE);
    assert!(
        clear.is_empty(),
        "no SIP datagram between alice and the node: leg A is TLS; saw {:?}",
        clear
            .iter()
            .map(|m| m.first_line.clone())
            .collect::<Vec<_>>()
    );
    let invite = case.alice_sdp_msg(true);
    let answer = case.alice_sdp_msg(false);
    let via = invite
        .header("Via", Some("v"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        via.contains("SIP/2.0/TLS"),
        "alice's INVITE went over TLS: {via}"
    );
    let transports: Vec<String> = case
        .alice_trace()
        .iter()
        .filter(|t| *t.msg.dst.ip() == case.node_ip() || *t.msg.src.ip() == case.node_ip())
        .map(|t| t.transport.clone())
        .collect();
    assert!(
        transports.iter().all(|t| t == "TLS"),
        "alice and the node speak TLS only: {transports:?}"
    );
    let offer = AudioSecurity::of(&invite).unwrap();
    let reply = AudioSecurity::of(&answer).unwrap();
    println!("leg A: alice offered {offer:?}\nleg A: medpool answered {reply:?}");
    assert_eq!(offer.profile, "RTP/SAVP", "srtp-mand offers RTP/SAVP");
    assert_eq!(
        reply.profile, "RTP/SAVP",
        "medpool answers alice's SRTP with SRTP"
    );
    let (o, r) = (offer.the_key("alice"), reply.the_key("medpool on leg A"));
    assert_eq!(r.tag, o.tag, "the answer echoes the offer's tag");
    assert_eq!(r.suite, o.suite, "the answer keeps the offered suite");
    assert_eq!(o.suite.name(), SUITE);
    assert_ne!(
        offer.inline_keys(),
        reply.inline_keys(),
        "medpool sends with a key of its own"
    );
    (offer, reply)
}

/// alice (TLS, SRTP mandatory) calls bob behind a plain-RTP gateway: medpool bridges SRTP on
/// leg A to RTP on leg B. On leg B medpool offers RTP/AVP without a key and bob answers plain;
/// RTP flows both ways on both legs; alice's SRTP authenticates with her key and carries exactly
/// what reaches bob in the clear, and medpool's SRTP to alice authenticates with the key it
/// answered and carries exactly what bob sent; no ciphertext equals the clear text.
#[test]
fn baresip_over_tls_with_srtp_to_a_plain_rtp_gateway() {
    let case = start_case(
        "srtp-to-rtp",
        1,
        Opts {
            alice_srtp: true,
            bob_srtp: false,
            stranger: false,
        },
    );
    case.alice.dial(&case.tls_uri(BOB_NUMBER));
    case.alice.expect_event("CALL_ESTABLISHED", 1, STEP);
    case.bob.expect_event("CALL_ESTABLISHED", 1, STEP);

    let (offer, reply) = leg_a_signalling(&case);
    let b_offer = AudioSecurity::of(&case.bob_sdp_msg(false)).unwrap();
    let b_answer = AudioSecurity::of(&case.bob_sdp_msg(true)).unwrap();
    println!("leg B: medpool offered {b_offer:?}, bob answered {b_answer:?}");
    assert_eq!(b_offer.profile, "RTP/AVP", "plain RTP towards the gateway");
    assert!(
        b_offer.crypto.is_empty(),
        "no key offered to a gateway without encryption"
    );
    assert_eq!(b_answer.profile, "RTP/AVP");

    let alice_port = case.alice_sdp_msg(true).sdp_media().unwrap().1;
    let bob_port = case.bob_sdp_msg(true).sdp_media().unwrap().1;
    let cap = wait_rtp(&case, [alice_port, bob_port], 25);
    let node = case.node_ip();
    let (a_in, a_out) = leg_rtp(&cap, node, alice_port);
    let (b_in, b_out) = leg_rtp(&cap, node, bob_port);
    println!(
        "RTP: alice→node {}, node→alice {}, bob→node {}, node→bob {}",
        a_in.len(),
        a_out.len(),
        b_in.len(),
        b_out.len()
    );

    let key_alice = offer.the_key("alice");
    let key_node = reply.the_key("medpool on leg A");
    let tag = key_alice.suite.rtp_tag_len();
    let sizes = |ps: &[Packet]| {
        let mut s: Vec<usize> = ps.iter().map(|p| p.payload.len()).collect();
        s.sort_unstable();
        s.dedup();
        s
    };
    println!(
        "datagram sizes: leg A {:?} / {:?}, leg B {:?} / {:?}",
        sizes(&a_in),
        sizes(&a_out),
        sizes(&b_in),
        sizes(&b_out)
    );
    let from_alice = unprotect(&a_in, &key_alice);
    let to_alice = unprotect(&a_out, &key_node);
    all_authentic("alice→node (alice's key)", a_in.len(), &from_alice);
    all_authentic("node→alice (medpool's leg-A key)", a_out.len(), &to_alice);
    // Every SRTP packet is its RTP packet plus the tag.
    for (srtp, plain) in a_in.iter().zip(&from_alice.plain) {
        assert_eq!(
            srtp.payload.len(),
            plain.len() + tag,
            "SRTP = RTP + {tag}-byte tag"
        );
    }
    // Leg B is plain: what bob sends and gets is RTP whose payload the SRTP leg carried.
    relayed(
        "node→alice (decrypted) among bob→node (clear)",
        &payloads(&to_alice.plain),
        &wire_payloads(&b_in),
        100,
    );
    relayed(
        "alice→node (decrypted) among node→bob (clear)",
        &payloads(&unprotect(&before_the_end(&a_in, &cap, 200), &key_alice).plain),
        &wire_payloads(&b_out),
        95,
    );
    let cipher: Vec<Vec<u8>> = a_out
        .iter()
        .filter_map(|p| rtp_payload(&p.payload[..p.payload.len() - tag]).map(<[u8]>::to_vec))
        .collect();
    assert_eq!(
        found_among(&cipher, &wire_payloads(&b_in)),
        0,
        "no SRTP payload to alice is bob's clear payload"
    );

    let show = case.scene.show_the_call();
    println!("calls show: {show}");
    let shown = show.to_string();
    assert!(
        shown.to_lowercase().contains("tls"),
        "calls show names leg A's TLS: {show}"
    );
    assert!(
        shown.contains(SUITE),
        "calls show names leg A's SRTP suite: {show}"
    );
    let mut keys = offer.inline_keys();
    keys.extend(reply.inline_keys());
    keys_never_shown(&case, &show, &keys);
    hang_up(&case);
}

/// alice (TLS, SRTP mandatory) calls bob, SRTP mandatory too, behind a gateway trunk with
/// `encryption = "required"`: SRTP on both legs, re-keyed per leg. On bob's leg (UDP, on the
/// wire) medpool offers RTP/SAVP with a key of its own for that leg, bob answers with his; the
/// four keys differ; every packet on both legs authenticates with its sender's key; what alice
/// sent reaches bob (decrypted) byte for byte and the other way round; the ciphertexts of the
/// two legs differ.
#[test]
fn baresip_over_tls_with_srtp_on_both_legs() {
    let case = start_case(
        "srtp-both",
        2,
        Opts {
            alice_srtp: true,
            bob_srtp: true,
            stranger: false,
        },
    );
    case.alice.dial(&case.tls_uri(BOB_NUMBER));
    case.alice.expect_event("CALL_ESTABLISHED", 1, STEP);
    case.bob.expect_event("CALL_ESTABLISHED", 1, STEP);

    let (offer, reply) = leg_a_signalling(&case);
    let b_offer = AudioSecurity::of(&case.bob_sdp_msg(false)).unwrap();
    let b_answer = AudioSecurity::of(&case.bob_sdp_msg(true)).unwrap();
    println!("leg B: medpool offered {b_offer:?}, bob answered {b_answer:?}");
    assert_eq!(
        b_offer.profile, "RTP/SAVP",
        "encryption = required offers only RTP/SAVP"
    );
    assert!(!b_offer.crypto.is_empty(), "medpool offers keys on leg B");
    assert_eq!(b_answer.profile, "RTP/SAVP");
    let key_bob = b_answer.the_key("bob");
    // medpool's leg-B key: the offered line bob's answer took (by its tag).
    let key_node_b = b_offer
        .crypto
        .iter()
        .map(|c| medpool_media::srtp::CryptoAttribute::parse(c).unwrap())
        .find(|c| c.tag == key_bob.tag)
        .unwrap_or_else(|| panic!("bob's answer tag {} is none of {b_offer:?}", key_bob.tag));
    let mut keys = offer.inline_keys();
    keys.extend(reply.inline_keys());
    keys.extend(b_offer.inline_keys());
    keys.extend(b_answer.inline_keys());
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(
        distinct.len(),
        keys.len(),
        "every leg and side has its own key: {keys:?}"
    );

    let alice_port = case.alice_sdp_msg(true).sdp_media().unwrap().1;
    let bob_port = case.bob_sdp_msg(true).sdp_media().unwrap().1;
    let cap = wait_rtp(&case, [alice_port, bob_port], 25);
    let node = case.node_ip();
    let (a_in, a_out) = leg_rtp(&cap, node, alice_port);
    let (b_in, b_out) = leg_rtp(&cap, node, bob_port);
    let key_alice = offer.the_key("alice");
    let key_node_a = reply.the_key("medpool on leg A");
    let from_alice = unprotect(&a_in, &key_alice);
    let to_alice = unprotect(&a_out, &key_node_a);
    let from_bob = unprotect(&b_in, &key_bob);
    let to_bob = unprotect(&b_out, &key_node_b);
    all_authentic("alice→node (alice's key)", a_in.len(), &from_alice);
    all_authentic("node→alice (medpool's leg-A key)", a_out.len(), &to_alice);
    all_authentic("bob→node (bob's key)", b_in.len(), &from_bob);
    all_authentic("node→bob (medpool's leg-B key)", b_out.len(), &to_bob);
    relayed(
        "node→alice among bob→node (both decrypted)",
        &payloads(&to_alice.plain),
        &payloads(&from_bob.plain),
        100,
    );
    relayed(
        "alice→node among node→bob (both decrypted)",
        &payloads(&unprotect(&before_the_end(&a_in, &cap, 200), &key_alice).plain),
        &payloads(&to_bob.plain),
        95,
    );
    let raw =
        |ps: &[Packet]| -> Vec<Vec<u8>> { ps.iter().map(|p| p.payload[12..].to_vec()).collect() };
    assert_eq!(
        found_among(&raw(&a_in), &raw(&b_out)),
        0,
        "re-keyed per leg: no ciphertext of leg A appears on leg B"
    );

    let show = case.scene.show_the_call();
    println!("calls show: {show}");
    assert!(
        show.to_string().contains(SUITE),
        "calls show names the SRTP suite: {show}"
    );
    keys_never_shown(&case, &show, &keys);
    hang_up(&case);
}

/// alice's client certificate comes from a CA the `pbx` trunk does not trust (same names): her
/// call gets no service — it never reaches bob, no call is set up, and baresip reports it closed.
#[test]
fn baresip_with_a_certificate_the_trunk_does_not_trust_gets_no_service() {
    let case = start_case(
        "stranger",
        3,
        Opts {
            alice_srtp: false,
            bob_srtp: false,
            stranger: true,
        },
    );
    case.alice.dial(&case.tls_uri(BOB_NUMBER));
    let closed = case.alice.expect_event("CALL_CLOSED", 1, STEP);
    println!("alice: {closed}");
    assert!(
        case.alice.events_of("CALL_ESTABLISHED").is_empty(),
        "no call for a stranger's certificate"
    );
    let invites: Vec<SipMsg> = case
        .scene
        .leg(BOB)
        .into_iter()
        .filter(|m| m.method() == Some("INVITE"))
        .collect();
    assert!(
        invites.is_empty(),
        "nothing reached bob\n{}",
        case.scene.sip_ladder()
    );
    assert!(case.scene.calls_listed().is_empty(), "no call listed");
    let _ = &case.certs;
}

/// alice calls bob over mutual TLS, plain RTP on both legs (no `encryption` anywhere): the call
/// is set up over TLS (no SIP datagram between alice and the node; her trace shows TLS only),
/// RTP flows both ways on both legs in the clear and byte for byte, `calls show` names leg A's
/// TLS, and alice's BYE over TLS ends it.
#[test]
fn baresip_over_mutual_tls_with_plain_rtp() {
    let case = start_case(
        "tls-rtp",
        4,
        Opts {
            alice_srtp: false,
            bob_srtp: false,
            stranger: false,
        },
    );
    case.alice.dial(&case.tls_uri(BOB_NUMBER));
    case.alice.expect_event("CALL_ESTABLISHED", 1, STEP);
    case.bob.expect_event("CALL_ESTABLISHED", 1, STEP);
    let clear = case.scene.leg(ALICE);
    assert!(
        clear.is_empty(),
        "leg A is TLS: no SIP datagram between alice and the node"
    );
    let invite = case.alice_sdp_msg(true);
    let via = invite
        .header("Via", Some("v"))
        .unwrap_or_default()
        .to_owned();
    assert!(
        via.contains("SIP/2.0/TLS"),
        "alice's INVITE went over TLS: {via}"
    );
    let offer = AudioSecurity::of(&invite).unwrap();
    assert_eq!(offer.profile, "RTP/AVP");
    let alice_port = invite.sdp_media().unwrap().1;
    let bob_port = case.bob_sdp_msg(true).sdp_media().unwrap().1;
    let cap = wait_rtp(&case, [alice_port, bob_port], 25);
    let node = case.node_ip();
    let (a_in, a_out) = leg_rtp(&cap, node, alice_port);
    let (b_in, b_out) = leg_rtp(&cap, node, bob_port);
    relayed(
        "node→alice among bob→node",
        &wire_payloads(&a_out),
        &wire_payloads(&b_in),
        100,
    );
    relayed(
        "alice→node among node→bob",
        &wire_payloads(&before_the_end(&a_in, &cap, 200)),
        &wire_payloads(&b_out),
        95,
    );
    let show = case.scene.show_the_call();
    println!("calls show: {show}");
    assert!(
        show.to_string().to_lowercase().contains("tls"),
        "calls show names leg A's TLS: {show}"
    );
    hang_up(&case);
}
