//! End-to-end calls through a running `medpool serve`, with SIPp as the internal caller (trunk
//! `pbx`) and as the gateways: basic calls, either side hanging up, CANCEL, a relayed 486,
//! hold/resume in both directions, 100rel/PRACK, an unknown source, overload, load sharing,
//! OPTIONS to the node and a caller over TCP. See tests/common/mod.rs for the address plan.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{
    MedpoolNode, PoolSpec, Response, Sipp, SippProcess, TestDir, caller, gateway, gw_ip, node_addr,
    node_ip, sleep_ms, wait_until,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many calls the gateways answered a BYE for, once they have answered `expected` (or after
/// `CALL_TIMEOUT`). medpool answers a caller's BYE at once and sends its own BYE to the gateway
/// (README: "BYE from either side → 200 at once"), so the caller gets its 200 and exits before the
/// gateway has even received leg B's BYE: reading the gateway's trace the moment the caller is done
/// races the gateway (measured on an idle machine: the caller's 200 came 0.8 ms before the gateway
/// got the BYE, and the test read the trace 12 ms later; a loaded machine can delay the gateway
/// longer than that). Assertions about the gateway's end of a call wait for its answer instead.
fn byes_answered(gateways: &[&SippProcess], expected: usize) -> usize {
    let answered = || {
        gateways
            .iter()
            .map(|g| g.responses_sent(200, "BYE"))
            .sum::<usize>()
    };
    wait_until(CALL_TIMEOUT, || answered() >= expected);
    answered()
}

/// Three calls from the pbx, spread over two equal gateways; the caller hangs up each. Every
/// call reaches exactly one gateway as a new dialog (new Call-ID), is answered, ACKed end to
/// end and ended by the caller's BYE. Then SIGTERM stops the node with exit status 0.
#[test]
fn basic_call_caller_hangs_up() {
    let n = 11;
    let dir = TestDir::new("basic-call");
    let mut gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let mut gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    let node = MedpoolNode::start(&dir, n, &PoolSpec::new(n).toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);
    gw2.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_call.xml")
        .calls(3)
        .rate(10)
        .hold_ms(300)
        .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);

    let a_calls = pbx.calls_sent();
    assert_eq!(a_calls.len(), 3, "the caller placed 3 calls");
    let b_calls: Vec<String> = gw1
        .calls_received()
        .into_iter()
        .chain(gw2.calls_received())
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        b_calls.len(),
        3,
        "each call reaches exactly one gateway: gw1 {:?}, gw2 {:?}",
        gw1.calls_received(),
        gw2.calls_received()
    );
    for id in &b_calls {
        assert!(
            !a_calls.contains(id),
            "leg B must have a new Call-ID, gateway got the caller's {id}"
        );
    }
    // The ACK and the BYE reached the gateways (one dialog each).
    let acks = gw1.dialogs_with_request("ACK") + gw2.dialogs_with_request("ACK");
    let byes = byes_answered(&[&gw1, &gw2], 3);
    assert_eq!(acks, 3, "every 200 was ACKed to the gateway");
    assert_eq!(
        byes, 3,
        "every caller BYE reached the gateway and was answered"
    );

    // SIGTERM with no call open: a clean exit.
    let status = node.stop();
    assert!(
        status.is_some_and(|s| s.success()),
        "medpool must exit 0 on SIGTERM, got {status:?}"
    );
    gw1.stop();
    gw2.stop();
}

/// SIGTERM while calls are established (no `--bye-on-shutdown`): the node exits 0 and every call
/// actor is stopped through its ordinary end (`post_stop`, what it held given back) before the
/// process ends; none is dropped by the runtime's end, which the node would log as a call actor
/// that died (a panic).
#[test]
fn sigterm_with_calls_established_stops_each_call_cleanly() {
    const CALLS: u32 = 80;
    let n = 24;
    let dir = TestDir::new("sigterm-open-calls");
    let mut gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let mut gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    let mut spec = PoolSpec::new(n);
    spec.media = "relay";
    let node = MedpoolNode::start_with(&dir, n, &spec.toml(), &["--shutdown-grace", "1"]);
    gw1.wait_for_probes(2, PROBE_TIMEOUT);
    gw2.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_call.xml")
        .calls(CALLS)
        .rate(200)
        .hold_ms(60_000)
        .spawn(&dir);
    let acked = || gw1.dialogs_with_request("ACK") + gw2.dialogs_with_request("ACK");
    assert!(
        wait_until(CALL_TIMEOUT, || acked() == CALLS as usize),
        "{CALLS} calls established before the SIGTERM (ACKs at the gateways: {})",
        acked()
    );

    let (status, log) = node.stop_with_log();
    assert!(
        status.is_some_and(|s| s.success()),
        "medpool must exit 0 on SIGTERM with calls open, got {status:?}\n{log}"
    );
    assert!(
        log.contains("node stopped"),
        "the shutdown ran to its end:\n{log}"
    );
    assert!(
        !log.contains("actor died"),
        "no call actor may be dropped by the runtime's end (logged as died):\n{log}"
    );
    pbx.stop();
    gw1.stop();
    gw2.stop();
}

/// The gateway answers and then hangs up: its BYE is relayed to the caller inside the caller's
/// dialog (uac_call_remote_bye.xml checks the tags), the caller's 200 goes back to the gateway.
#[test]
fn gateway_hangs_up() {
    let n = 12;
    let dir = TestDir::new("gateway-hangs-up");
    let mut spec = PoolSpec::new(n);
    spec.priority = [Some(1), None];
    let gw1 = Sipp::uas("gw1", "uas_hangup.xml", &gw_ip(n, 1))
        .hold_ms(300)
        .spawn(&dir);
    let _node = MedpoolNode::start(&dir, n, &spec.toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_call_remote_bye.xml")
        .calls(2)
        .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);

    assert_eq!(gw1.calls_received().len(), 2);
    assert_eq!(
        gw1.responses_received(200, "BYE"),
        2,
        "the gateway's BYE must be answered 200 for both calls"
    );
    assert_eq!(
        pbx.dialogs_with_request("BYE"),
        2,
        "the caller got both BYEs"
    );
}

/// The caller cancels while the gateway rings: 200 for the CANCEL and 487 for the INVITE reach
/// the caller; the gateway gets a CANCEL, answers 487 and gets its ACK. No other gateway is
/// tried (487 is no failover code).
#[test]
fn cancel_while_ringing() {
    let n = 13;
    let dir = TestDir::new("cancel");
    let mut spec = PoolSpec::new(n);
    spec.priority = [Some(1), Some(2)];
    let gw1 = gateway(&dir, n, 1, "uas_ring_cancel.xml");
    let gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    let _node = MedpoolNode::start(&dir, n, &spec.toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);
    gw2.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_cancel.xml")
        .calls(2)
        .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);

    assert_eq!(gw1.calls_received().len(), 2);
    assert_eq!(
        gw1.dialogs_with_request("CANCEL"),
        2,
        "the CANCEL reached the gateway"
    );
    assert_eq!(gw1.responses_sent(487, "INVITE"), 2);
    assert!(
        wait_until(Duration::from_secs(3), || gw1.dialogs_with_request("ACK")
            == 2),
        "medpool must ACK the gateway's 487 (ACKs seen: {})",
        gw1.dialogs_with_request("ACK")
    );
    assert!(
        gw2.calls_received().is_empty(),
        "a cancelled call must not go to another gateway"
    );
}

/// A gateway's 486 is no failover code: the caller gets 486 (with medpool's To-tag), the
/// gateway's 486 is ACKed, and the second gateway never sees the call.
#[test]
fn busy_486_is_relayed() {
    let n = 14;
    let dir = TestDir::new("busy-486");
    let mut spec = PoolSpec::new(n);
    spec.priority = [Some(1), Some(2)];
    let gw1 = gateway(&dir, n, 1, "uas_reject_486.xml");
    let gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    let _node = MedpoolNode::start(&dir, n, &spec.toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);
    gw2.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_expect_486.xml").spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);

    assert_eq!(gw1.calls_received().len(), 1);
    assert!(
        wait_until(Duration::from_secs(3), || gw1.dialogs_with_request("ACK")
            == 1),
        "medpool must ACK the gateway's 486"
    );
    assert!(gw2.calls_received().is_empty(), "486 must not fail over");
}

/// Hold and resume from the caller: both re-INVITEs (a=sendonly, then a=sendrecv) reach the
/// gateway with the caller's SDP, the gateway's answers (a=recvonly, a=sendrecv) reach the
/// caller, each is ACKed on both legs, and the call ends normally.
#[test]
fn hold_resume_by_caller() {
    let n = 15;
    let dir = TestDir::new("hold-by-caller");
    let mut spec = PoolSpec::new(n);
    spec.priority = [Some(1), None];
    let gw1 = gateway(&dir, n, 1, "uas_answer_hold.xml");
    let _node = MedpoolNode::start(&dir, n, &spec.toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_hold_resume.xml")
        .hold_ms(200)
        .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);

    assert!(
        gw1.failed_checks().is_empty(),
        "gateway checks failed: {:?}",
        gw1.failed_checks()
    );
    let invites = gw1
        .messages()
        .iter()
        .filter(|m| m.received && m.method() == Some("INVITE"))
        .map(|m| m.cseq.clone())
        .collect::<std::collections::BTreeSet<_>>();
    assert_eq!(
        invites.len(),
        3,
        "the gateway gets the INVITE and two re-INVITEs (distinct CSeqs): {invites:?}"
    );
    assert_eq!(
        byes_answered(&[&gw1], 1),
        1,
        "the gateway's scenario ran to its end (hold, resume, BYE)"
    );
}

/// Hold and resume from the gateway: its re-INVITEs reach the caller inside the caller's dialog
/// with the gateway's SDP; the caller's answers go back; then the caller hangs up.
#[test]
fn hold_resume_by_gateway() {
    let n = 16;
    let dir = TestDir::new("hold-by-gateway");
    let mut spec = PoolSpec::new(n);
    spec.priority = [Some(1), None];
    let gw1 = gateway(&dir, n, 1, "uas_hold_resume.xml");
    let _node = MedpoolNode::start(&dir, n, &spec.toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_answer_hold.xml")
        .hold_ms(200)
        .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);

    assert!(
        gw1.failed_checks().is_empty(),
        "gateway checks failed: {:?}",
        gw1.failed_checks()
    );
    assert_eq!(
        pbx.messages()
            .iter()
            .filter(|m| m.received && m.method() == Some("INVITE"))
            .map(|m| m.cseq.clone())
            .collect::<std::collections::BTreeSet<_>>()
            .len(),
        2,
        "the caller gets two re-INVITEs"
    );
    assert_eq!(gw1.responses_received(200, "INVITE"), 1);
    assert_eq!(
        byes_answered(&[&gw1], 1),
        1,
        "the gateway's scenario ran to its end (hold, resume, BYE)\n{}",
        gw1.report()
    );
}

/// 100rel end to end: the gateway's reliable 183 (Require: 100rel, RSeq, SDP) reaches the
/// caller, the caller's PRACK reaches the gateway with an RAck for leg B's INVITE, the 200s
/// (PRACK, INVITE) come back, and the call ends normally.
#[test]
fn prack_100rel() {
    let n = 17;
    let dir = TestDir::new("prack");
    let mut spec = PoolSpec::new(n);
    spec.priority = [Some(1), None];
    let gw1 = gateway(&dir, n, 1, "uas_100rel.xml");
    let _node = MedpoolNode::start(&dir, n, &spec.toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_100rel.xml").spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);

    assert!(
        gw1.failed_checks().is_empty(),
        "gateway checks failed: {:?}",
        gw1.failed_checks()
    );
    assert_eq!(
        gw1.dialogs_with_request("PRACK"),
        1,
        "the PRACK reached the gateway"
    );
    assert_eq!(byes_answered(&[&gw1], 1), 1, "the call ended normally");
}

/// A caller at an address that is no configured trunk gets 403, and nothing reaches a gateway.
#[test]
fn unknown_source_is_refused_403() {
    let n = 18;
    let dir = TestDir::new("unknown-source");
    let gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    let _node = MedpoolNode::start(&dir, n, &PoolSpec::new(n).toml());
    gw1.wait_for_probes(1, PROBE_TIMEOUT);
    gw2.wait_for_probes(1, PROBE_TIMEOUT);

    let mut stranger = Sipp::uac(
        "stranger",
        "uac_expect_403.xml",
        &format!("127.0.{n}.99"),
        5070,
        &node_addr(n),
    )
    .spawn(&dir);
    stranger.expect_success(CALL_TIMEOUT);

    assert!(gw1.calls_received().is_empty() && gw2.calls_received().is_empty());
}

/// Node capacity: with `max_calls = 2` and two calls up, a third gets 503 with Retry-After and
/// never reaches a gateway; once the two have ended, a new call goes through again.
#[test]
fn over_node_capacity_503_with_retry_after() {
    let n = 19;
    let dir = TestDir::new("node-capacity");
    let mut spec = PoolSpec::new(n);
    spec.node_max_calls = 2;
    spec.priority = [Some(1), None];
    let gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let _node = MedpoolNode::start(&dir, n, &spec.toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);

    let mut held = caller("held", n, 5070, "uac_call.xml")
        .calls(2)
        .rate(20)
        .hold_ms(3000)
        .spawn(&dir);
    assert!(
        wait_until(Duration::from_secs(5), || gw1.dialogs_with_request("ACK")
            >= 2),
        "the two calls to hold were not established ({} ACKs at the gateway)",
        gw1.dialogs_with_request("ACK")
    );

    let mut extra = caller("extra", n, 5071, "uac_expect_503.xml").spawn(&dir);
    extra.expect_success(CALL_TIMEOUT);
    assert_eq!(
        gw1.calls_received().len(),
        2,
        "the refused call must not reach the gateway"
    );

    held.expect_success(CALL_TIMEOUT);
    expect_capacity_back(&dir, n, &gw1);
}

/// After the calls that filled the node or a trunk have ended, a new call must go through
/// again. Leg B's BYE transaction may keep a call for a few seconds more (Timer K), so this tries
/// up to four times over ~8 s.
fn expect_capacity_back(dir: &TestDir, n: u8, gw: &common::SippProcess) {
    let before = gw.calls_received().len();
    let mut failed = Vec::new();
    for attempt in 0..4 {
        let mut after = caller(&format!("after{attempt}"), n, 5072, "uac_call.xml").spawn(dir);
        let o = after.wait(CALL_TIMEOUT);
        if o.success() {
            break;
        }
        failed.push(o);
        sleep_ms(2000);
    }
    assert!(
        failed.len() < 4,
        "capacity is still taken ~8 s after the calls ended: four new calls failed; the last: {}",
        failed.last().map_or("", |o| o.report.as_str())
    );
    assert_eq!(
        gw.calls_received().len(),
        before + 1,
        "the new call reached the gateway"
    );
}

/// Trunk capacity: the only gateway of the route has `max_calls = 1`; with one call up, the
/// next gets 503 with Retry-After and no second INVITE reaches the gateway; once the call has
/// ended, a new one goes through again.
#[test]
fn over_trunk_capacity_503_with_retry_after() {
    let n = 22;
    let dir = TestDir::new("trunk-capacity");
    let mut spec = PoolSpec::new(n);
    spec.gw_max_calls = [Some(1), None];
    spec.priority = [Some(1), None];
    let gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let _node = MedpoolNode::start(&dir, n, &spec.toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);

    let mut held = caller("held", n, 5070, "uac_call.xml")
        .hold_ms(2500)
        .spawn(&dir);
    assert!(
        wait_until(Duration::from_secs(5), || gw1.dialogs_with_request("ACK")
            >= 1),
        "the call to hold was not established"
    );
    let mut extra = caller("extra", n, 5071, "uac_expect_503.xml").spawn(&dir);
    extra.expect_success(CALL_TIMEOUT);
    assert_eq!(
        gw1.calls_received().len(),
        1,
        "the gateway is full: no second INVITE"
    );
    held.expect_success(CALL_TIMEOUT);
    expect_capacity_back(&dir, n, &gw1);
}

/// Two gateways of equal priority share overlapping calls (least active calls): each gets some.
#[test]
fn equal_priority_gateways_share_calls() {
    let n = 20;
    let dir = TestDir::new("load-sharing");
    let gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    let _node = MedpoolNode::start(&dir, n, &PoolSpec::new(n).toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);
    gw2.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_call.xml")
        .calls(4)
        .rate(10)
        .hold_ms(1000)
        .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);

    let (c1, c2) = (gw1.calls_received().len(), gw2.calls_received().len());
    assert_eq!(c1 + c2, 4);
    assert!(
        c1 >= 1 && c2 >= 1,
        "overlapping calls must be shared by equal gateways: gw1 {c1}, gw2 {c2}"
    );
}

/// An out-of-dialog OPTIONS from the internal trunk is answered 200 by the node itself.
#[test]
fn options_to_the_node_get_200() {
    let n = 21;
    let dir = TestDir::new("options");
    let _node = MedpoolNode::start(&dir, n, &PoolSpec::new(n).toml());

    let sock = UdpSocket::bind(format!("{}:0", node_ip(n))).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let local = sock.local_addr().unwrap();
    let msg = format!(
        "OPTIONS sip:{node} SIP/2.0\r\n\
         Via: SIP/2.0/UDP {local};branch=z9hG4bK-options-21;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:pbx@{local}>;tag=opt21\r\n\
         To: <sip:{node}>\r\n\
         Call-ID: options-21@{local}\r\n\
         CSeq: 1 OPTIONS\r\n\
         Accept: application/sdp\r\n\
         Content-Length: 0\r\n\r\n",
        node = node_addr(n)
    );
    sock.send_to(msg.as_bytes(), node_addr(n)).unwrap();
    let mut buf = vec![0u8; 65536];
    let (len, from) = sock
        .recv_from(&mut buf)
        .expect("no answer to OPTIONS within 2 s");
    let r = Response::parse(&buf[..len]).expect("a SIP response");
    assert_eq!(r.status, 200, "answer: {}", r.raw);
    assert_eq!(
        from.to_string(),
        node_addr(n),
        "answered from the node's address"
    );
    assert_eq!(
        r.header("Call-ID", Some("i")).as_deref(),
        Some(format!("options-21@{local}").as_str())
    );
}

/// A caller over TCP: the node listens on TCP too and carries the call to a UDP gateway.
#[test]
fn caller_over_tcp() {
    let n = 23;
    let dir = TestDir::new("tcp-caller");
    let mut spec = PoolSpec::new(n);
    spec.priority = [Some(1), None];
    let gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let _node = MedpoolNode::start(&dir, n, &spec.toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_call.xml")
        .calls(2)
        .tcp()
        .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);
    assert_eq!(gw1.calls_received().len(), 2);
    assert_eq!(byes_answered(&[&gw1], 2), 2);
}
