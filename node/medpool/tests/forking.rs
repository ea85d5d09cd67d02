//! Forking on leg B through a running `medpool serve` (RFC 3261 §12.1.2, §13.2.2.4): the gateway
//! (SIPp, `uas_fork.xml`) answers one INVITE from two forks — two early dialogs with their own To
//! tags and Contacts (180 from fork 1, 183 from fork 2), then a 200 from fork 2 — and, after the
//! call is up, a 200 from fork 1 as well. The call must be confirmed with fork 2: its ACK and, when
//! the caller hangs up, its BYE go to fork 2's Contact with fork 2's tag; fork 1's late 200 is ACKed
//! and hung up (BYE) in fork 1's own dialog. The gateway scenario checks each of these on the
//! wire (request URI and To tag); the test reads its trace.
//!
//! Test number (loopback block 127.0.n.x): 152 (shared with session_timers.rs, flood.rs and
//! sipvicious.rs; test binaries run one after the other).
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::{MedpoolNode, PoolSpec, TestDir, caller, gateway, wait_until};

const N: u8 = 152;

#[test]
fn the_second_forks_200_wins_and_the_first_forks_late_200_is_acked_and_hung_up() {
    let dir = TestDir::new("forking");
    let mut spec = PoolSpec::new(N);
    spec.priority = [Some(1), None];
    let gw1 = gateway(&dir, N, 1, "uas_fork.xml");
    let _node = MedpoolNode::start(&dir, N, &spec.toml());
    gw1.wait_for_probes(1, Duration::from_secs(5));

    // The caller holds the call 2 s, long enough for fork 1's late 200 to be dealt with.
    let mut pbx = caller("caller", N, 5070, "uac_call.xml")
        .hold_ms(2000)
        .spawn(&dir);
    pbx.expect_success(Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(10), || gw1.requests_received("BYE")
            >= 2),
        "the gateway did not see both BYEs\n{}",
        gw1.report()
    );
    assert_eq!(
        gw1.failed_checks(),
        Vec::<String>::new(),
        "ACK and BYE must go to the fork of their dialog\n{}",
        gw1.report()
    );
    // On the wire, in order: fork 2's ACK, fork 1's ACK and BYE, fork 2's BYE.
    let requests: Vec<String> = gw1
        .messages()
        .into_iter()
        .filter(|m| m.received && matches!(m.method(), Some("ACK" | "BYE")))
        .map(|m| {
            m.first_line
                .split(' ')
                .take(2)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    let expected: Vec<String> = [
        "ACK sip:fork2@",
        "ACK sip:fork1@",
        "BYE sip:fork1@",
        "BYE sip:fork2@",
    ]
    .iter()
    .map(|p| format!("{p}{}:5060;transport=UDP", common::gw_ip(N, 1)))
    .collect();
    assert_eq!(requests, expected, "{}", gw1.report());
    assert_eq!(gw1.responses_sent(200, "BYE"), 1, "both BYEs were answered");
}
