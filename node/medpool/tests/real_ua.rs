//! Real SIP user agents place calls through a real `medpool serve`: baresip (driven over its
//! ctrl_tcp module) and linphone (`linphone-daemon`, driven over stdin), started by the tests as
//! caller ("alice", on the internal trunk `pbx`) and callees ("bob" behind gateway trunk `gw1`,
//! "carol" behind `gw2`), all auto-answering. Every case is checked on the wire (a raw-socket
//! capture of the case's loopback block: the SIP of both legs and the RTP reaching each UA), in
//! the UAs' own events, and in `medpool ctl calls show`.
//!
//! Cases: a basic call (both directions), hold and resume (one side, both sides: `a=inactive`), a
//! blind transfer (REFER), DTMF (RFC 4733), each with baresip on both ends; then linphone as the callee and as the caller. What linphone cannot do
//! here is said by the test that would need it (see README "Real user agents").
//!
//! Addresses: 127.0.154.0/24, one /28 per case (tests/ua/scene.rs). Each case is bounded: every
//! wait has a timeout, and every process is stopped by PID when the test ends or fails.
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
use ua::linphone::{Linphone, LinphoneSpec};
use ua::scene::{ALICE, BOB, BOB_NUMBER, CAROL, CAROL_NUMBER, NODE, Scene, SceneSpec};
use ua::wire::SipMsg;

/// How long call setup, a re-INVITE or a teardown may take.
const STEP: Duration = Duration::from_secs(10);

/// baresip "alice" (caller, on `pbx`) and "bob" (callee, behind gw1) of a scene.
fn alice_and_bob(scene: &Scene) -> (Baresip, Baresip) {
    let alice = Baresip::start(
        scene.dir(),
        BaresipSpec::new(
            "alice",
            &scene.ip(ALICE),
            "alice",
            scene.spec.rtp_ports(ALICE),
        ),
    );
    let bob = Baresip::start(
        scene.dir(),
        BaresipSpec::new("bob", &scene.ip(BOB), BOB_NUMBER, scene.spec.rtp_ports(BOB)),
    );
    scene.wait_gateway_up(BOB);
    (alice, bob)
}

/// Checks that `want` occurs in `labels` in this order (other messages may come between).
fn assert_in_order(scene: &Scene, host: u8, want: &[&str]) {
    let labels = scene.leg_labels(host);
    let mut at = 0;
    for w in want {
        match labels[at..].iter().position(|l| l == w) {
            Some(i) => at += i + 1,
            None => panic!(
                "the leg to {} lacks {w:?} (in order {want:?}); it carried {labels:?}\n--- SIP on the wire ---\n{}",
                scene.ip(host),
                scene.sip_ladder()
            ),
        }
    }
}

/// The Call-IDs used on the leg to `host`.
fn call_ids(scene: &Scene, host: u8) -> Vec<String> {
    let mut ids: Vec<String> = scene
        .leg(host)
        .iter()
        .map(|m| m.call_id().to_owned())
        .collect();
    ids.dedup();
    ids.sort();
    ids.dedup();
    ids
}

/// The (address, port) the UA at `host` offered or answered for its audio, from the first SDP it
/// sent on the wire.
fn ua_media(scene: &Scene, host: u8) -> (Ipv4Addr, u16) {
    let ip = scene.ip(host);
    scene
        .leg(host)
        .iter()
        .filter(|m| m.src.ip().to_string() == ip)
        .find_map(SipMsg::sdp_media)
        .unwrap_or_else(|| {
            panic!(
                "no SDP from the UA at {ip} on the wire\n{}",
                scene.sip_ladder()
            )
        })
}

/// RTP packets the node sent to the media port of the UA at `host`, and the UA sent to the node.
fn rtp_counts(scene: &Scene, host: u8) -> (usize, usize) {
    let (_, port) = ua_media(scene, host);
    let node: Ipv4Addr = scene.ip(NODE).parse().unwrap();
    let rtp = scene.capture.rtp();
    let to_ua = rtp
        .iter()
        .filter(|p| *p.src.ip() == node && p.dst.port() == port)
        .count();
    let from_ua = rtp
        .iter()
        .filter(|p| *p.dst.ip() == node && p.src.port() == port)
        .count();
    (to_ua, from_ua)
}

/// Waits until RTP has flowed both ways on the UA at `host`'s leg (at least `n` packets each).
fn expect_rtp_both_ways(scene: &Scene, host: u8, n: usize) -> (usize, usize) {
    let mut c = (0, 0);
    let ok = common::wait_until(STEP, || {
        c = rtp_counts(scene, host);
        c.0 >= n && c.1 >= n
    });
    assert!(
        ok,
        "RTP on the leg to {}: {} packets from the node to the UA, {} from the UA (want {n} each)",
        scene.ip(host),
        c.0,
        c.1
    );
    c
}

/// A packet count of `calls show`'s media of leg `leg` ("a" or "b"), direction `dir`.
fn shown_packets(show: &serde_json::Value, leg: &str, dir: &str) -> u64 {
    show[leg]["media"][dir]["packets"].as_u64().unwrap_or(0)
}

/// alice (baresip) calls bob (baresip) through medpool; RTP flows both ways through the relay;
/// alice hangs up. Both legs carry INVITE/200/ACK and BYE/200 on the wire, each with its own
/// Call-ID; `calls show` shows both legs with relayed media while the call is up, and no call once
/// it is over.
#[test]
fn baresip_basic_call() {
    let scene = Scene::start("basic", SceneSpec::new(1));
    let (alice, bob) = alice_and_bob(&scene);

    alice.dial(&scene.dial_uri(BOB_NUMBER));
    alice.expect_event("CALL_ESTABLISHED", 1, STEP);
    bob.expect_event("CALL_ESTABLISHED", 1, STEP);
    let (to_alice, from_alice) = expect_rtp_both_ways(&scene, ALICE, 25);
    let (to_bob, from_bob) = expect_rtp_both_ways(&scene, BOB, 25);
    println!(
        "RTP: node→alice {to_alice}, alice→node {from_alice}, node→bob {to_bob}, bob→node {from_bob}"
    );

    let show = scene.show_the_call();
    println!("calls show: {show}");
    for leg in ["a", "b"] {
        assert!(
            shown_packets(&show, leg, "received") > 0 && shown_packets(&show, leg, "sent") > 0,
            "calls show: media flows both ways on leg {leg}: {show}"
        );
    }

    alice.hangup();
    alice.expect_event("CALL_CLOSED", 1, STEP);
    bob.expect_event("CALL_CLOSED", 1, STEP);
    scene.expect_on_leg(BOB, "200 BYE from bob", 1, STEP, |m| {
        m.status() == Some(200) && m.cseq_method() == "BYE"
    });
    assert_in_order(
        &scene,
        ALICE,
        &["← INVITE", "→ 200 INVITE", "← ACK", "← BYE", "→ 200 BYE"],
    );
    assert_in_order(
        &scene,
        BOB,
        &["→ INVITE", "← 200 INVITE", "→ ACK", "→ BYE", "← 200 BYE"],
    );
    let (a_ids, b_ids) = (call_ids(&scene, ALICE), call_ids(&scene, BOB));
    assert_eq!(a_ids.len(), 1, "one dialog on leg A: {a_ids:?}");
    assert_eq!(b_ids.len(), 1, "one dialog on leg B: {b_ids:?}");
    assert_ne!(a_ids, b_ids, "a B2BUA: each leg has its own Call-ID");
    scene.expect_no_calls(STEP);
    let _ = (CAROL, CAROL_NUMBER);
}

/// The messages on the leg to `host` that are re-INVITEs (an INVITE whose Call-ID already carried
/// one) sent in `dir` ("→" towards the UA, "←" from it), with the SDP direction of each.
fn reinvites(scene: &Scene, host: u8, towards_ua: bool) -> Vec<&'static str> {
    let ip = scene.ip(host);
    let mut seen_invite: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for m in scene.leg(host) {
        if m.method() != Some("INVITE") {
            continue;
        }
        let id = m.call_id().to_owned();
        let cseq = m.header("CSeq", None).unwrap_or("").to_owned();
        let key = format!("{id} {cseq}");
        // Retransmissions carry the same Call-ID and CSeq: counted once.
        if seen_invite.contains(&key) {
            continue;
        }
        let first = !seen_invite.iter().any(|k| k.starts_with(&format!("{id} ")));
        seen_invite.push(key);
        if first {
            continue;
        }
        if (m.dst.ip().to_string() == ip) == towards_ua {
            out.push(m.sdp_direction().unwrap_or("no SDP"));
        }
    }
    out
}

/// alice holds the call and resumes it, then bob does: each hold is a re-INVITE with
/// `a=sendonly` relayed to the other leg (and answered `recvonly`), each resume one with
/// `sendrecv`; `calls show` still shows the call while held, and RTP flows again after resuming.
#[test]
fn baresip_hold_and_resume() {
    let scene = Scene::start("hold", SceneSpec::new(2));
    let (alice, bob) = alice_and_bob(&scene);
    alice.dial(&scene.dial_uri(BOB_NUMBER));
    alice.expect_event("CALL_ESTABLISHED", 1, STEP);
    bob.expect_event("CALL_ESTABLISHED", 1, STEP);
    expect_rtp_both_ways(&scene, BOB, 10);

    // alice holds: leg A carries her re-INVITE (sendonly), leg B medpool's (sendonly).
    alice.hold();
    scene.expect_on_leg(BOB, "re-INVITE answered on leg B", 2, STEP, |m| {
        m.status() == Some(200) && m.cseq_method() == "INVITE"
    });
    let held = scene.show_the_call();
    println!("calls show while held: {held}");
    alice.resume();
    scene.expect_on_leg(BOB, "second re-INVITE answered on leg B", 3, STEP, |m| {
        m.status() == Some(200) && m.cseq_method() == "INVITE"
    });
    // bob holds and resumes: the re-INVITEs go the other way.
    bob.hold();
    scene.expect_on_leg(ALICE, "bob's hold answered on leg A", 1, STEP, |m| {
        m.status() == Some(200)
            && m.cseq_method() == "INVITE"
            && m.src.ip().to_string() == scene.ip(ALICE)
    });
    bob.resume();
    scene.expect_on_leg(ALICE, "bob's resume answered on leg A", 2, STEP, |m| {
        m.status() == Some(200)
            && m.cseq_method() == "INVITE"
            && m.src.ip().to_string() == scene.ip(ALICE)
    });
    let before = rtp_counts(&scene, BOB).0;
    let ok = common::wait_until(STEP, || rtp_counts(&scene, BOB).0 >= before + 25);
    assert!(ok, "RTP reaches bob again after the resumes");

    let a_out = reinvites(&scene, ALICE, false);
    let b_in = reinvites(&scene, BOB, true);
    let b_out = reinvites(&scene, BOB, false);
    let a_in = reinvites(&scene, ALICE, true);
    println!(
        "re-INVITEs: alice sent {a_out:?}, bob got {b_in:?}; bob sent {b_out:?}, alice got {a_in:?}"
    );
    assert_eq!(a_out, ["sendonly", "sendrecv"], "alice's hold and resume");
    assert_eq!(
        b_in,
        ["sendonly", "sendrecv"],
        "relayed to bob as hold and resume\n{}",
        scene.sip_ladder()
    );
    assert_eq!(b_out, ["sendonly", "sendrecv"], "bob's hold and resume");
    assert_eq!(
        a_in,
        ["sendonly", "sendrecv"],
        "relayed to alice as hold and resume\n{}",
        scene.sip_ladder()
    );
    assert!(held.get("a").is_some() && held.get("b").is_some(), "{held}");

    alice.hangup();
    bob.expect_event("CALL_CLOSED", 1, STEP);
    scene.expect_no_calls(STEP);
}

/// bob (behind gw1) transfers alice blind to carol (number 300, behind gw2): bob's REFER is
/// relayed to alice (both trunks pass REFER), alice calls carol through medpool (a new call
/// routed to gw2), her NOTIFYs (sipfrag) reach bob, and the first call ends. Checked on the three
/// legs and in `calls show` of the new call (leg B on gw2).
#[test]
fn baresip_blind_transfer() {
    let scene = Scene::start("transfer", SceneSpec::new(3));
    let (alice, bob) = alice_and_bob(&scene);
    let carol = Baresip::start(
        scene.dir(),
        BaresipSpec::new(
            "carol",
            &scene.ip(CAROL),
            CAROL_NUMBER,
            scene.spec.rtp_ports(CAROL),
        ),
    );
    scene.wait_gateway_up(CAROL);
    alice.dial(&scene.dial_uri(BOB_NUMBER));
    alice.expect_event("CALL_ESTABLISHED", 1, STEP);
    bob.expect_event("CALL_ESTABLISHED", 1, STEP);

    bob.transfer(&scene.dial_uri(CAROL_NUMBER));
    let transfer = alice.expect_event("TRANSFER", 1, STEP);
    println!("alice: {transfer}");
    carol.expect_event("CALL_ESTABLISHED", 1, STEP);
    alice.expect_event("CALL_ESTABLISHED", 2, STEP);
    expect_rtp_both_ways(&scene, CAROL, 10);
    scene.expect_on_leg(BOB, "NOTIFY relayed to bob", 1, STEP, |m| {
        m.method() == Some("NOTIFY")
    });
    // The first call ends (baresip's transferor hangs up once the NOTIFY says 200).
    bob.expect_event("CALL_CLOSED", 1, STEP);
    let mut ids = Vec::new();
    let one_left = common::wait_until(STEP, || {
        ids = scene.calls_listed();
        ids.len() == 1
    });
    assert!(
        one_left,
        "only the call to carol is left: {ids:?}\n{}",
        scene.sip_ladder()
    );
    let show = scene.call_show(&ids[0]);
    println!("calls show of the transferred call: {show}");
    let shown = show.to_string();
    assert!(
        shown.contains("gw2"),
        "the new call's leg B is on gw2: {show}"
    );

    assert_in_order(
        &scene,
        BOB,
        &["← REFER", "→ 202 REFER", "→ NOTIFY", "← 200 NOTIFY"],
    );
    assert_in_order(
        &scene,
        ALICE,
        &["→ REFER", "← 202 REFER", "← NOTIFY", "→ 200 NOTIFY"],
    );
    assert_in_order(&scene, CAROL, &["→ INVITE", "← 200 INVITE", "→ ACK"]);
    let refer_to: Vec<String> = scene
        .leg(ALICE)
        .iter()
        .filter(|m| m.method() == Some("REFER"))
        .filter_map(|m| m.header("Refer-To", Some("r")).map(str::to_owned))
        .collect();
    println!("Refer-To at alice: {refer_to:?}");
    assert!(
        refer_to
            .iter()
            .all(|r| r.contains(&format!("{CAROL_NUMBER}@"))),
        "{refer_to:?}"
    );
    assert_eq!(
        call_ids(&scene, ALICE).len(),
        2,
        "alice's first call and her call to carol"
    );

    alice.hangup();
    carol.expect_event("CALL_CLOSED", 1, STEP);
    scene.expect_no_calls(STEP);
}

/// The RFC 4733 events the node sent to the UA at `host`: event codes in order, one per
/// digit (a digit is sent as several packets and three end packets).
fn dtmf_to(scene: &Scene, host: u8) -> Vec<u8> {
    let ip = scene.ip(host);
    let node = scene.ip(NODE);
    let (_, port) = ua_media(scene, host);
    // The telephone-event payload type medpool offered or answered on this leg.
    let pt = scene
        .leg(host)
        .iter()
        .filter(|m| m.src.ip().to_string() == node && m.dst.ip().to_string() == ip)
        .find_map(SipMsg::telephone_event_pt)
        .unwrap_or_else(|| {
            panic!(
                "no telephone-event in medpool's SDP to {ip}\n{}",
                scene.sip_ladder()
            )
        });
    // Consecutive event packets with the same event and SSRC are one digit (the digits sent
    // here differ from one to the next).
    let mut last: Option<(u32, u8)> = None;
    let mut out = Vec::new();
    for p in scene.capture.rtp() {
        if p.src.ip().to_string() != node || p.dst.port() != port {
            continue;
        }
        if let Some((event, _end)) = p.dtmf(pt) {
            if last != Some((p.ssrc, event)) {
                out.push(event);
            }
            last = Some((p.ssrc, event));
        }
    }
    out
}

/// The RFC 4733 events the UA at `host` sent to the node (by the payload type of its own SDP).
fn dtmf_from(scene: &Scene, host: u8) -> Vec<u8> {
    let ip = scene.ip(host);
    let node: Ipv4Addr = scene.ip(NODE).parse().unwrap();
    let (_, port) = ua_media(scene, host);
    let Some(pt) = scene
        .leg(host)
        .iter()
        .filter(|m| m.src.ip().to_string() == ip)
        .find_map(SipMsg::telephone_event_pt)
    else {
        return Vec::new();
    };
    let mut last: Option<(u32, u8)> = None;
    let mut out = Vec::new();
    for p in scene.capture.rtp() {
        if *p.dst.ip() != node || p.src.port() != port {
            continue;
        }
        if let Some((event, _end)) = p.dtmf(pt) {
            if last != Some((p.ssrc, event)) {
                out.push(event);
            }
            last = Some((p.ssrc, event));
        }
    }
    out
}

/// alice sends the digits 1, 5 and # (RFC 4733 telephone-events, baresip's `sndcode`), bob sends
/// 9: the events cross medpool's relay with their payload type renumbered where the legs differ,
/// are seen on the wire towards each UA, and each UA reports the digits it received.
#[test]
fn baresip_dtmf() {
    let scene = Scene::start("dtmf", SceneSpec::new(4));
    let (alice, bob) = alice_and_bob(&scene);
    alice.dial(&scene.dial_uri(BOB_NUMBER));
    alice.expect_event("CALL_ESTABLISHED", 1, STEP);
    bob.expect_event("CALL_ESTABLISHED", 1, STEP);
    expect_rtp_both_ways(&scene, BOB, 10);

    for (k, d) in ['1', '5', '#'].into_iter().enumerate() {
        alice.send_digit(d);
        bob.expect_event("CALL_DTMF_END", k + 1, STEP);
    }
    bob.send_digit('9');
    alice.expect_event("CALL_DTMF_END", 1, STEP);
    let got_bob: Vec<String> = bob
        .events_of("CALL_DTMF_START")
        .iter()
        .filter_map(|e| e["param"].as_str().map(str::to_owned))
        .collect();
    let got_alice: Vec<String> = alice
        .events_of("CALL_DTMF_START")
        .iter()
        .filter_map(|e| e["param"].as_str().map(str::to_owned))
        .collect();
    println!("bob received {got_bob:?}, alice received {got_alice:?}");
    assert_eq!(got_bob, ["1", "5", "#"]);
    assert_eq!(got_alice, ["9"]);
    let wire_bob = dtmf_to(&scene, BOB);
    let wire_alice = dtmf_to(&scene, ALICE);
    println!("telephone-events on the wire: to bob {wire_bob:?}, to alice {wire_alice:?}");
    assert_eq!(wire_bob, [1, 5, 11], "RFC 4733 events relayed to bob");
    assert_eq!(wire_alice, [9], "RFC 4733 events relayed to alice");
    let show = scene.show_the_call();
    println!("calls show: {show}");

    alice.hangup();
    bob.expect_event("CALL_CLOSED", 1, STEP);
    scene.expect_no_calls(STEP);
}

/// linphone "bob" (callee, behind gw1, auto-answer) and baresip "alice" (caller): alice calls,
/// holds and resumes, sends DTMF 4 and hangs up. On the wire: leg B carries INVITE/200/ACK, the
/// hold and resume re-INVITEs (sendonly, sendrecv), telephone-events for 4 and BYE/200; RTP flows
/// both ways through the relay (linphone plays a file into the call: it has no sound card here).
/// linphone reports the call running, paused by the remote, running again, ended.
#[test]
fn linphone_callee() {
    let scene = Scene::start("linphone-callee", SceneSpec::new(5));
    let alice = Baresip::start(
        scene.dir(),
        BaresipSpec::new(
            "alice",
            &scene.ip(ALICE),
            "alice",
            scene.spec.rtp_ports(ALICE),
        ),
    );
    let bob = Linphone::start(
        scene.dir(),
        LinphoneSpec::new(
            "bob",
            &scene.ip(BOB),
            BOB_NUMBER,
            scene.spec.rtp_ports(BOB).0,
        ),
    );
    scene.wait_gateway_up(BOB);
    alice.dial(&scene.dial_uri(BOB_NUMBER));
    alice.expect_event("CALL_ESTABLISHED", 1, STEP);
    bob.expect_state("LinphoneCallStreamsRunning", 1, STEP);
    bob.play(ua::linphone::HELLO_WAV);
    let (to_bob, from_bob) = expect_rtp_both_ways(&scene, BOB, 25);
    let (to_alice, from_alice) = expect_rtp_both_ways(&scene, ALICE, 25);
    println!(
        "RTP: node→linphone {to_bob}, linphone→node {from_bob}, node→alice {to_alice}, alice→node {from_alice}"
    );
    let show = scene.show_the_call();
    println!("calls show: {show}");

    alice.hold();
    bob.expect_state("LinphoneCallPausedByRemote", 1, STEP);
    alice.resume();
    bob.expect_state("LinphoneCallStreamsRunning", 2, STEP);
    alice.send_digit('4');
    let mut wire = Vec::new();
    let ok = common::wait_until(STEP, || {
        wire = dtmf_to(&scene, BOB);
        !wire.is_empty()
    });
    assert!(ok, "telephone-events reach linphone");
    assert_eq!(wire, [4]);
    let b_in = reinvites(&scene, BOB, true);
    assert_eq!(b_in, ["sendonly", "sendrecv"], "{}", scene.sip_ladder());

    alice.hangup();
    bob.expect_state("LinphoneCallEnd", 1, STEP);
    assert_in_order(
        &scene,
        BOB,
        &["→ INVITE", "← 200 INVITE", "→ ACK", "→ BYE", "← 200 BYE"],
    );
    scene.expect_no_calls(STEP);
}

/// linphone "alice" (caller, on `pbx`) calls baresip "bob", pauses and resumes the call
/// (`call-pause` / `call-resume`: re-INVITEs relayed to bob), sends DTMF 7 (`dtmf`: its
/// telephone-event packets relayed to bob unchanged, on the wire; whether baresip reports the
/// digit is printed), transfers bob blind to baresip "carol" (`call-transfer`: its REFER relayed
/// to bob, who calls carol through medpool), and the calls end.
#[test]
fn linphone_caller() {
    let scene = Scene::start("linphone-caller", SceneSpec::new(6));
    let alice = Linphone::start(scene.dir(), {
        let mut s = LinphoneSpec::new(
            "alice",
            &scene.ip(ALICE),
            "alice",
            scene.spec.rtp_ports(ALICE).0,
        );
        s.auto_answer = false;
        s
    });
    let bob = Baresip::start(
        scene.dir(),
        BaresipSpec::new("bob", &scene.ip(BOB), BOB_NUMBER, scene.spec.rtp_ports(BOB)),
    );
    let carol = Baresip::start(
        scene.dir(),
        BaresipSpec::new(
            "carol",
            &scene.ip(CAROL),
            CAROL_NUMBER,
            scene.spec.rtp_ports(CAROL),
        ),
    );
    scene.wait_gateway_up(BOB);
    scene.wait_gateway_up(CAROL);

    let answer = alice.run(&format!("call {}", scene.dial_uri(BOB_NUMBER)));
    let id = answer
        .iter()
        .find_map(|l| l.strip_prefix("Id: "))
        .unwrap_or_else(|| panic!("no call id in {answer:?}"))
        .trim()
        .to_owned();
    alice.expect_state("LinphoneCallStreamsRunning", 1, STEP);
    bob.expect_event("CALL_ESTABLISHED", 1, STEP);
    alice.play(ua::linphone::HELLO_WAV);
    let (to_alice, from_alice) = expect_rtp_both_ways(&scene, ALICE, 25);
    let (to_bob, from_bob) = expect_rtp_both_ways(&scene, BOB, 25);
    println!(
        "RTP: node→linphone {to_alice}, linphone→node {from_alice}, node→bob {to_bob}, bob→node {from_bob}"
    );

    alice.run(&format!("call-pause {id}"));
    alice.expect_state("LinphoneCallPaused", 1, STEP);
    alice.run(&format!("call-resume {id}"));
    alice.expect_state("LinphoneCallStreamsRunning", 2, STEP);
    let b_in = reinvites(&scene, BOB, true);
    println!("re-INVITEs relayed to bob: {b_in:?}");
    assert_eq!(
        b_in.len(),
        2,
        "pause and resume relayed\n{}",
        scene.sip_ladder()
    );
    assert_ne!(b_in[0], "sendrecv", "the pause holds bob");
    assert_eq!(b_in[1], "sendrecv", "the resume");

    alice.run("dtmf 7");
    let mut wire = (Vec::new(), Vec::new());
    // Both directions are read from the capture one after the other, so wait for both: a read of
    // linphone→node taken just before its event arrived, followed by a read of node→bob taken
    // just after the relayed copy left, would otherwise report the digit as never sent.
    let relayed = common::wait_until(STEP, || {
        wire = (dtmf_from(&scene, ALICE), dtmf_to(&scene, BOB));
        !wire.0.is_empty() && !wire.1.is_empty()
    });
    println!(
        "telephone-events: linphone→node {:?}, node→bob {:?}",
        wire.0, wire.1
    );
    assert_eq!(wire.0, [7], "linphone sent the digit as an RFC 4733 event");
    assert!(relayed, "medpool relays linphone's telephone-event to bob");
    assert_eq!(wire.1, [7], "the telephone-event on the wire to bob");
    // Relayed untouched: the same event packets (sequence, timestamp, payload) on both legs.
    let node_ip: Ipv4Addr = scene.ip(NODE).parse().unwrap();
    let events = |to_node: bool| -> Vec<(u16, u32, Vec<u8>)> {
        scene
            .capture
            .rtp()
            .into_iter()
            .filter(|p| p.dtmf(101).is_some() && (*p.dst.ip() == node_ip) == to_node)
            .map(|p| (p.seq, p.timestamp, p.payload))
            .collect()
    };
    // The digit ends with its end packets (E bit), or not at all (linphone here): waited for.
    let has_end = |v: &[(u16, u32, Vec<u8>)]| {
        v.iter()
            .any(|(_, _, p)| p.get(1).is_some_and(|b| b & 0x80 != 0))
    };
    // Each copy of the end packet is relayed a moment after it was captured on its way in: wait
    // until as many went out as came in.
    let ended = common::wait_until(Duration::from_secs(2), || {
        has_end(&events(false)) && events(false).len() >= events(true).len()
    });
    let (sent, relayed) = (events(true), events(false));
    println!("event packets from linphone (seq, ts, payload): {sent:02x?}");
    assert_eq!(sent, relayed, "the event packets are relayed unchanged");
    // baresip reports a digit at its end packet; linphone sent no end packet here (E bit never
    // set, see the packets above). Said, not skipped.
    let reported = common::wait_until(Duration::from_secs(2), || {
        !bob.events_of("CALL_DTMF_START").is_empty()
    });
    if reported {
        assert_eq!(bob.events_of("CALL_DTMF_START")[0]["param"], "7");
    } else {
        println!(
            "NOTE: baresip did not report linphone's digit 7: linphone sent {} event packet(s), \
             {} an end packet; medpool relayed them unchanged (checked above)",
            sent.len(),
            if ended { "with" } else { "without" }
        );
    }

    alice.run(&format!(
        "call-transfer {id} {}",
        scene.dial_uri(CAROL_NUMBER)
    ));
    bob.expect_event("TRANSFER", 1, STEP);
    carol.expect_event("CALL_ESTABLISHED", 1, STEP);
    alice.expect_state("LinphoneCallEnd", 1, STEP);
    assert_in_order(&scene, ALICE, &["← REFER", "→ 202 REFER", "→ NOTIFY"]);
    assert_in_order(&scene, BOB, &["→ REFER", "← 202 REFER", "← NOTIFY"]);
    assert_in_order(&scene, CAROL, &["→ INVITE", "← 200 INVITE", "→ ACK"]);

    carol.hangup();
    bob.expect_event("CALL_CLOSED", 2, STEP);
    scene.expect_no_calls(STEP);
}

/// The other direction: bob (behind gw1) calls alice (number "alice", route `from-pstn` to the
/// pbx trunk); bob hangs up. Both legs on the wire, RTP both ways, `calls show` names gw1 as the
/// inbound trunk.
#[test]
fn baresip_call_from_the_gateway_side() {
    let scene = Scene::start("inbound", SceneSpec::new(7));
    let (alice, bob) = alice_and_bob(&scene);
    bob.dial(&scene.dial_uri("alice"));
    bob.expect_event("CALL_ESTABLISHED", 1, STEP);
    alice.expect_event("CALL_ESTABLISHED", 1, STEP);
    expect_rtp_both_ways(&scene, ALICE, 25);
    expect_rtp_both_ways(&scene, BOB, 25);
    let show = scene.show_the_call();
    println!("calls show: {show}");
    assert_eq!(show["inbound_trunk"], "gw1", "{show}");
    assert_eq!(show["b"]["trunk"], "pbx", "{show}");

    bob.hangup();
    alice.expect_event("CALL_CLOSED", 1, STEP);
    scene.expect_on_leg(ALICE, "200 BYE from alice", 1, STEP, |m| {
        m.status() == Some(200) && m.cseq_method() == "BYE"
    });
    assert_in_order(
        &scene,
        BOB,
        &["← INVITE", "→ 200 INVITE", "← ACK", "← BYE", "→ 200 BYE"],
    );
    assert_in_order(
        &scene,
        ALICE,
        &["→ INVITE", "← 200 INVITE", "→ ACK", "→ BYE", "← 200 BYE"],
    );
    scene.expect_no_calls(STEP);
}

/// The SDP directions of the 2xx answers to INVITEs on the leg to `host`, sent by the UA
/// (`from_ua`) or by the node, retransmissions counted once.
fn answers(scene: &Scene, host: u8, from_ua: bool) -> Vec<&'static str> {
    let ip = scene.ip(host);
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for m in scene.leg(host) {
        if m.status() != Some(200) || m.cseq_method() != "INVITE" {
            continue;
        }
        if (m.src.ip().to_string() == ip) != from_ua {
            continue;
        }
        let key = format!("{} {}", m.call_id(), m.header("CSeq", None).unwrap_or(""));
        if seen.contains(&key) {
            continue;
        }
        seen.push(key);
        out.push(m.sdp_direction().unwrap_or("no SDP"));
    }
    out
}

/// Both hold: alice holds bob, then bob holds alice while held, then both resume. Every offer and
/// every answer crosses medpool with its direction unchanged — the answers to a hold are
/// `recvonly` or `inactive` (RFC 3264 §6.1), whatever each baresip picks.
#[test]
fn baresip_both_sides_hold() {
    let scene = Scene::start("both-hold", SceneSpec::new(8));
    let (alice, bob) = alice_and_bob(&scene);
    alice.dial(&scene.dial_uri(BOB_NUMBER));
    alice.expect_event("CALL_ESTABLISHED", 1, STEP);
    bob.expect_event("CALL_ESTABLISHED", 1, STEP);
    let answered_by = |host: u8, n: usize, what: &str| {
        let ip = scene.ip(host);
        scene.expect_on_leg(host, what, n, STEP, |m| {
            m.status() == Some(200) && m.cseq_method() == "INVITE" && m.src.ip().to_string() == ip
        });
    };
    alice.hold();
    answered_by(BOB, 2, "bob's answer to alice's hold");
    bob.hold();
    answered_by(ALICE, 1, "alice's answer to bob's hold");
    bob.resume();
    answered_by(ALICE, 2, "alice's answer to bob's resume");
    alice.resume();
    answered_by(BOB, 3, "bob's answer to alice's resume");
    // ... and every answer relayed: three 2xx from the node to alice, two to bob.
    let node = scene.ip(NODE);
    let relayed_to = |host: u8, n: usize| {
        scene.expect_on_leg(host, "the node's 2xx to INVITEs", n, STEP, |m| {
            m.status() == Some(200) && m.cseq_method() == "INVITE" && m.src.ip().to_string() == node
        });
    };
    relayed_to(ALICE, 3);
    relayed_to(BOB, 2);

    let offers = (
        reinvites(&scene, ALICE, false),
        reinvites(&scene, BOB, true),
    );
    let offers_back = (
        reinvites(&scene, BOB, false),
        reinvites(&scene, ALICE, true),
    );
    let bob_answers = (answers(&scene, BOB, true), answers(&scene, ALICE, false));
    let alice_answers = (answers(&scene, ALICE, true), answers(&scene, BOB, false));
    println!(
        "alice's offers {:?} reached bob as {:?}, bob answered {:?} reaching alice as {:?}",
        offers.0, offers.1, bob_answers.0, bob_answers.1
    );
    println!(
        "bob's offers {:?} reached alice as {:?}, alice answered {:?} reaching bob as {:?}",
        offers_back.0, offers_back.1, alice_answers.0, alice_answers.1
    );
    assert_eq!(offers.0, offers.1, "alice's offers relayed unchanged");
    assert_eq!(
        offers_back.0, offers_back.1,
        "bob's offers relayed unchanged"
    );
    assert_eq!(
        bob_answers.0, bob_answers.1,
        "bob's answers relayed unchanged"
    );
    assert_eq!(
        alice_answers.0, alice_answers.1,
        "alice's answers relayed unchanged"
    );
    assert_eq!(offers.0, ["sendonly", "sendrecv"]);
    assert_eq!(offers_back.0, ["sendonly", "sendrecv"]);
    // bob's answers: the first call's, alice's hold, alice's resume.
    assert_eq!(bob_answers.0.len(), 3, "{bob_answers:?}");
    assert!(
        matches!(bob_answers.0[1], "recvonly" | "inactive"),
        "an answer to a hold: {bob_answers:?}"
    );
    // alice's answers to bob's hold (while she holds him) and resume.
    assert_eq!(alice_answers.0.len(), 2, "{alice_answers:?}");
    assert!(
        matches!(alice_answers.0[0], "recvonly" | "inactive"),
        "an answer to a hold: {alice_answers:?}"
    );

    alice.hangup();
    bob.expect_event("CALL_CLOSED", 1, STEP);
    scene.expect_no_calls(STEP);
}
