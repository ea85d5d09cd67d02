//! What a call carries across the B2BUA besides its media, through a running `medpool serve` with
//! SIPp peers whose trunks differ: the caller's trunk `pbx` may transfer (`refer = "pass"`), the
//! gateway's `gw1` may not (`refer = "refuse"`) and translates calling numbers (`+1` → `001`).
//! One call checks on the gateway's wire (SIPp `ereg` checks, `uas_refer_pai_geo.xml`):
//! P-Asserted-Identity translated like From; the RFC 6442 Geolocation headers and the PIDF-LO part
//! of the multipart body unchanged; the caller's REFER relayed (its trunk passes it) and answered
//! 202; the gateway's own REFER refused 403 (its trunk refuses it).
//!
//! Test number (loopback block 127.0.n.x): 152 (shared with forking.rs, session_timers.rs,
//! flood.rs and sipvicious.rs; test binaries run one after the other).
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::time::Duration;

use common::{MedpoolNode, PoolSpec, TestDir, caller, gateway, wait_until};

const N: u8 = 152;

#[test]
fn pai_is_translated_location_passes_and_refer_follows_the_sending_trunk() {
    let dir = TestDir::new("rfc-relay");
    let mut spec = PoolSpec::new(N);
    spec.priority = [Some(1), None];
    let toml = spec
        .toml()
        .replace("name = \"pbx\"\n", "name = \"pbx\"\nrefer = \"pass\"\n")
        .replace(
            "name = \"gw1\"\n",
            "name = \"gw1\"\nrefer = \"refuse\"\ncalling_out = [{ pattern = '^\\+1', replace = '001' }]\n",
        );
    let gw1 = gateway(&dir, N, 1, "uas_refer_pai_geo.xml");
    let _node = MedpoolNode::start(&dir, N, &toml);
    gw1.wait_for_probes(1, Duration::from_secs(5));

    let mut pbx = caller("caller", N, 5070, "uac_refer_pai_geo.xml")
        .hold_ms(1000)
        .spawn(&dir);
    pbx.expect_success(Duration::from_secs(30));
    assert!(
        wait_until(Duration::from_secs(10), || gw1.responses_sent(200, "BYE")
            == 1),
        "the call did not end on the gateway\n{}",
        gw1.report()
    );
    assert_eq!(
        gw1.failed_checks(),
        Vec::<String>::new(),
        "what reached the gateway\n{}",
        gw1.report()
    );
    assert_eq!(
        pbx.responses_received(202, "REFER"),
        1,
        "the caller's REFER passed"
    );
    assert_eq!(gw1.requests_received("REFER"), 1);
    assert_eq!(
        gw1.responses_received(403, "REFER"),
        1,
        "the gateway's REFER was refused"
    );
    assert_eq!(
        pbx.requests_received("REFER"),
        0,
        "the refused REFER never reached the caller"
    );
}
