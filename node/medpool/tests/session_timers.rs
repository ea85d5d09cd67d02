//! RFC 4028 session timers through running `medpool serve` processes with SIPp peers:
//! - a gateway that answers the first INVITE 422 (Min-SE: 180) gets the INVITE again with
//!   Session-Expires ≥ 180 and Min-SE 180, and the call completes;
//! - a session whose refresher (the gateway) never refreshes is torn down with BYE on both legs at
//!   interval − min(32 s, interval/3) after the answer;
//! - in a 3-node pool, the node that refreshes a call (the gateway made it the refresher) is
//!   SIGKILLed: the node that takes the call over refreshes it, at once and then every half
//!   interval.
//!
//! Short sessions: the gateways answer with 6 s and 8 s intervals. RFC 4028 puts the floor of
//! Min-SE at 90 s; medpool asks for no less (its trunks' `session_expires` and `min_se` start at
//! 90) but follows what an answer agrees on, down to 2 s, so no test-only switch is needed.
//!
//! Test number (loopback block 127.0.n.x): 152 (shared with forking.rs, flood.rs and
//! sipvicious.rs; test binaries run one after the other). The tests of this file share the
//! addresses: they run one at a time.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs
)]

mod admin_common;
mod common;

use std::sync::Mutex;
use std::time::Duration;

use admin_common::TestPool;
use common::{MedpoolNode, PoolSpec, Sipp, TestDir, caller, gateway, gw_ip, wait_until};

const N: u8 = 152;

/// One test at a time: they share the loopback block.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The standard test pool with only gw1 in the route, gw1 asking for a 90 s session timer, and
/// every trunk's media bypassing the node (the standard pool's default: no re-INVITE moves media
/// after a failover).
fn spec_toml() -> String {
    toml_of(PoolSpec::new(N))
}

fn toml_of(mut spec: PoolSpec) -> String {
    spec.priority = [Some(1), None];
    assert_eq!(spec.media, "bypass");
    spec.toml()
        .replace("name = \"gw1\"\n", "name = \"gw1\"\nsession_expires = 90\n")
}

/// The messages of a SIPp full message trace (`-trace_msg`) that it received, each as text.
fn received_messages(log: &str) -> Vec<String> {
    log.split("----------------------------------------------- ")
        .filter(|block| block.contains("message received"))
        .map(|block| {
            // The message starts after the "... message received [n] bytes :" line.
            let start = block.find(":\n").map_or(0, |i| i + 2);
            block[start..].trim_start().to_owned()
        })
        .collect()
}

/// The value of header `name` in a message's text.
fn header_of<'m>(msg: &'m str, name: &str) -> Option<&'m str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn a_422_from_the_gateway_is_answered_with_the_larger_interval() {
    let _one = serial();
    let dir = TestDir::new("session-422");
    let gw1 = gateway(&dir, N, 1, "uas_422_min_se.xml");
    let _node = MedpoolNode::start(&dir, N, &spec_toml());
    gw1.wait_for_probes(1, Duration::from_secs(5));

    let mut pbx = caller("caller", N, 5070, "uac_call.xml").spawn(&dir);
    pbx.expect_success(Duration::from_secs(30));
    assert!(wait_until(Duration::from_secs(10), || gw1
        .responses_sent(200, "BYE")
        == 1));
    assert_eq!(
        gw1.failed_checks(),
        Vec::<String>::new(),
        "{}",
        gw1.report()
    );
    assert_eq!(gw1.responses_sent(422, "INVITE"), 1);
    let invites: Vec<String> = received_messages(&gw1.message_log())
        .into_iter()
        .filter(|m| m.starts_with("INVITE "))
        .collect();
    assert_eq!(invites.len(), 2, "the INVITE and its retry: {invites:#?}");
    let se = |m: &str| -> u32 {
        header_of(m, "Session-Expires")
            .and_then(|v| v.split(';').next())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no Session-Expires in {m}"))
    };
    assert_eq!(se(&invites[0]), 90, "the trunk's interval first");
    assert!(se(&invites[1]) >= 180, "then the 422's Min-SE");
    assert_eq!(header_of(&invites[1], "Min-SE"), Some("180"));
    assert_eq!(
        header_of(&invites[0], "Call-ID"),
        header_of(&invites[1], "Call-ID"),
        "the same leg"
    );
    assert_eq!(header_of(&invites[1], "CSeq"), Some("2 INVITE"));
    assert_eq!(
        pbx.responses_received(422, "INVITE"),
        0,
        "the caller never sees the 422"
    );
}

#[test]
fn a_session_whose_refresher_stops_refreshing_is_torn_down_on_both_legs() {
    let _one = serial();
    let dir = TestDir::new("session-expiry");
    let gw1 = gateway(&dir, N, 1, "uas_answer_no_refresh.xml");
    let _node = MedpoolNode::start(&dir, N, &spec_toml());
    gw1.wait_for_probes(1, Duration::from_secs(5));

    // The caller never hangs up: it waits for medpool's BYE.
    let mut pbx = caller("caller", N, 5070, "uac_call_remote_bye.xml").spawn(&dir);
    pbx.expect_success(Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(10), || gw1.responses_sent(200, "BYE")
            == 1),
        "the gateway got no BYE\n{}",
        gw1.report()
    );
    let gw_msgs = gw1.messages();
    let answered = gw_msgs
        .iter()
        .find(|m| !m.received && m.status() == Some(200) && m.cseq_method() == "INVITE")
        .unwrap()
        .at;
    let bye = gw_msgs
        .iter()
        .find(|m| m.received && m.method() == Some("BYE"))
        .unwrap()
        .at;
    // 6 s − min(32 s, 2 s) = 4 s after the answer (the timer counts from the node's receipt of
    // the 200; allow for the 200's way there and a loaded machine).
    let after = bye - answered;
    assert!(
        (3.9..5.5).contains(&after),
        "the gateway's BYE came {after:.3} s after its 200, expected about 4 s"
    );
    assert_eq!(
        pbx.requests_received("BYE"),
        1,
        "the caller got its BYE too"
    );
    assert_eq!(
        gw1.requests_received("UPDATE"),
        0,
        "the gateway was the refresher"
    );
}

#[test]
fn after_the_refreshing_node_is_killed_its_successor_refreshes() {
    let _one = serial();
    // The call goes to its Call-ID's owner, through node 1 when another node owns it.
    let toml = toml_of(PoolSpec::new(N).forwarding());
    let mut pool = TestPool::start("session-failover", N, 3, &toml, None);
    let gw1 = Sipp::uas("gw1", "uas_refreshed.xml", &gw_ip(N, 1)).spawn(&pool.dir);
    gw1.wait_for_probes(3, Duration::from_secs(10));

    // One call through node 1 (it forwards to the shard's owner), held for the whole test.
    let _pbx = caller("caller", N, 5070, "uac_call.xml")
        .hold_ms(120_000)
        .spawn(&pool.dir);
    // The refreshing node: the sender (Via) of the first UPDATE, 4 s after the answer.
    let updates = || -> Vec<String> {
        received_messages(&gw1.message_log())
            .into_iter()
            .filter(|m| m.starts_with("UPDATE "))
            .map(|m| {
                header_of(&m, "Via")
                    .and_then(|v| v.split_whitespace().nth(1))
                    .and_then(|v| v.split(';').next())
                    .unwrap_or_default()
                    .to_owned()
            })
            .collect()
    };
    assert!(
        wait_until(Duration::from_secs(20), || !updates().is_empty()),
        "no refresh reached the gateway\n{}",
        gw1.report()
    );
    let first = updates()[0].clone();
    let owner = (1..=3u64)
        .find(|id| first == pool.node(*id).sip())
        .unwrap_or_else(|| panic!("the refresh came from {first}, no node of the pool"));
    let before = updates().len();
    pool.node_mut(owner).kill();

    // The new owner adopts the call and refreshes at once, then every 4 s.
    let from_others = || {
        updates()
            .into_iter()
            .skip(before)
            .filter(|via| *via != first)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(30), || from_others() >= 2),
        "after node {owner} died, {} refreshes came from another node (want 2)\n{}",
        from_others(),
        gw1.report()
    );
    assert_eq!(gw1.failed_checks(), Vec::<String>::new());
    assert_eq!(
        gw1.requests_received("BYE"),
        0,
        "the call is still up: {}",
        gw1.report()
    );
}
