//! Gateway failover and health through a running `medpool serve`: a 503 from the first gateway,
//! a silent gateway (fast-failover timer), and a dead gateway (marked down by OPTIONS probes,
//! skipped while another is up, back in service when it returns). gw1 is always the first
//! choice (priority 1) and gw2 the second (priority 2). See tests/common/mod.rs for addresses.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::{BlackHole, MedpoolNode, PoolSpec, TestDir, caller, gateway, gw_ip, sleep_ms};

const CALL_TIMEOUT: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

fn ordered_spec(n: u8) -> PoolSpec {
    let mut spec = PoolSpec::new(n);
    spec.priority = [Some(1), Some(2)];
    spec
}

/// gw1 answers 503 (a failover code) before any provisional answer: the call completes on
/// gw2, the caller never sees the 503, and medpool ACKs gw1's 503.
#[test]
fn failover_on_503_from_the_first_gateway() {
    let n = 31;
    let dir = TestDir::new("failover-503");
    let gw1 = gateway(&dir, n, 1, "uas_reject_503.xml");
    let gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    let _node = MedpoolNode::start(&dir, n, &ordered_spec(n).toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);
    gw2.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_call.xml").spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);

    let first = gw1.calls_received();
    let second = gw2.calls_received();
    assert_eq!(first.len(), 1, "the first choice got the call: {first:?}");
    assert_eq!(gw1.responses_sent(503, "INVITE"), 1);
    assert_eq!(gw1.dialogs_with_request("ACK"), 1, "medpool ACKs the 503");
    assert_eq!(second.len(), 1, "the call completed on gw2: {second:?}");
    assert!(second[0].1 >= first[0].1, "gw2 is tried after gw1's 503");
    // medpool answers the caller's BYE at once and only then sends leg B's BYE: wait for gw2's
    // answer rather than read its trace the moment the caller is done (see calls.rs, byes_answered).
    common::wait_until(Duration::from_secs(30), || {
        gw2.responses_sent(200, "BYE") >= 1
    });
    assert_eq!(
        gw2.responses_sent(200, "BYE"),
        1,
        "the call ended normally on gw2"
    );
    assert_eq!(
        pbx.responses_received(503, "INVITE"),
        0,
        "the caller must not see the 503"
    );
}

/// gw1 is alive (answers OPTIONS) but never answers the INVITE, not even 100: after
/// fast_failover_ms (2 s) the call moves to gw2 and completes there. The INVITE reaches gw2
/// no sooner than the timer and well before Timer B (32 s).
#[test]
fn silent_gateway_fails_over_after_the_fast_failover_timer() {
    let n = 32;
    let dir = TestDir::new("silent-gateway");
    let spec = ordered_spec(n);
    let timer = f64::from(spec.fast_failover_ms) / 1000.0;
    let gw1 = gateway(&dir, n, 1, "uas_silent.xml");
    let gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    let _node = MedpoolNode::start(&dir, n, &spec.toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);
    gw2.wait_for_probes(2, PROBE_TIMEOUT);

    let mut pbx = caller("caller", n, 5070, "uac_call.xml").spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);

    let first = gw1.calls_received();
    let second = gw2.calls_received();
    assert_eq!(first.len(), 1, "the silent gateway got the INVITE first");
    assert_eq!(second.len(), 1, "the call completed on gw2");
    let moved_after = second[0].1 - first[0].1;
    assert!(
        moved_after >= timer - 0.05,
        "failover after {moved_after:.3} s, before the fast-failover timer ({timer} s)"
    );
    assert!(
        moved_after <= timer + 1.5,
        "failover after {moved_after:.3} s: the fast-failover timer ({timer} s) did not fire"
    );
    // The caller waited for the timer too (INVITE sent -> 200 received).
    let msgs = pbx.messages();
    let sent = msgs
        .iter()
        .find(|m| !m.received && m.method() == Some("INVITE"))
        .unwrap()
        .at;
    let answered = msgs
        .iter()
        .find(|m| m.received && m.status() == Some(200) && m.cseq_method() == "INVITE")
        .unwrap()
        .at;
    assert!(
        answered - sent >= timer - 0.05,
        "the caller got 200 after {:.3} s",
        answered - sent
    );
}

/// A gateway that dies: gw1 (first choice) serves calls, then is killed and its address turns
/// into a black hole (OPTIONS unanswered, INVITEs counted). Within down_after x interval
/// (+ margin) it is marked down: new calls go straight to gw2, and not a single INVITE is sent to
/// gw1. When a gateway answers at gw1's address again, after up_after x interval (+ margin) new
/// calls go to gw1 again.
#[test]
fn dead_gateway_is_marked_down_skipped_and_back_up() {
    let n = 33;
    let dir = TestDir::new("dead-gateway");
    let spec = ordered_spec(n);
    let interval = u64::from(spec.options_interval_ms);
    // A probe may be in flight at the moment of death; each unanswered probe takes one interval
    // (its timeout) to count: allow three intervals on top of the threshold.
    let down_wait = u64::from(spec.down_after) * interval + 3 * interval;

    let mut gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    let _node = MedpoolNode::start(&dir, n, &spec.toml());
    gw1.wait_for_probes(2, PROBE_TIMEOUT);
    gw2.wait_for_probes(2, PROBE_TIMEOUT);

    // Phase 1: gw1 is up and first: it takes the calls.
    let mut pbx = caller("before", n, 5070, "uac_call.xml")
        .calls(2)
        .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);
    assert_eq!(
        gw1.calls_received().len(),
        2,
        "gw1 (priority 1) takes calls while up"
    );
    assert_eq!(gw2.calls_received().len(), 0);

    // Phase 2: gw1 dies. Its address becomes a black hole that counts what arrives.
    gw1.stop();
    let hole = BlackHole::bind(&format!("{}:5060", gw_ip(n, 1)));
    sleep_ms(down_wait);
    let probes_while_dead = hole.count("OPTIONS");
    assert!(
        probes_while_dead >= 1,
        "medpool keeps probing the dead gateway (OPTIONS seen: {probes_while_dead})"
    );
    let mut pbx = caller("while-down", n, 5071, "uac_call.xml")
        .calls(3)
        .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);
    assert_eq!(
        hole.count("INVITE"),
        0,
        "{down_wait} ms after its death gw1 must be down: no INVITE may be sent to it"
    );
    assert_eq!(gw2.calls_received().len(), 3, "every call went to gw2");

    // Phase 3: gw1 comes back.
    hole.close();
    let gw1_again = common::Sipp::uas("gw1-again", "uas_answer.xml", &gw_ip(n, 1)).spawn(&dir);
    // up_after answered probes, one interval apart, make it up again. (Counting the answers
    // SIPp sent is no clock: retransmissions of probes sent while gw1 was dead arrive at once
    // and are answered too, late.) Wait up_after + 3 intervals.
    let up_wait = (u64::from(spec.up_after) + 3) * interval;
    sleep_ms(up_wait);
    assert!(
        gw1_again.options_answered() >= usize::try_from(spec.up_after).unwrap(),
        "medpool did not probe the returning gateway within {up_wait} ms"
    );
    let mut pbx = caller("after", n, 5072, "uac_call.xml")
        .calls(2)
        .spawn(&dir);
    pbx.expect_success(CALL_TIMEOUT);
    assert_eq!(
        gw1_again.calls_received().len(),
        2,
        "{up_wait} ms after its return gw1 must be up again and, as first choice, take the new \
         calls (gw2 got {} in all)",
        gw2.calls_received().len()
    );
}
