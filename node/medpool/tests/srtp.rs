//! SRTP end to end through a real `medpool serve`: simpeer callers on a trunk with
//! `encryption = "required"` offer SRTP (one of them with an MKI, as Lync does); one route goes
//! to a plain-RTP gateway (`encryption = "none"`: SRTP ↔ RTP), the other to an SRTP gateway
//! (`encryption = "required"`: SRTP ↔ SRTP, re-keyed per leg). The gateways echo what they
//! receive; every check (loss, the call's token, the payload pattern) runs on the decrypted
//! packets at each end, so audio is checked both ways. `calls show` names each leg's protection
//! (never a key) and the metrics count no authentication failure.
//!
//! Addresses (block 127.0.162.x): node 127.0.162.1 (SIP :5060, admin :7001, metrics :9162, media
//! relay on the same address), callers 127.0.162.1:5071/5072, gateways 127.0.162.21/.22:5060.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    missing_docs
)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{MedpoolNode, TestDir};
use medpool_simpeer::{Caller, CallerConfig, Gateway, GatewayConfig};

const N: u8 = 162;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn config() -> String {
    format!(
        r#"# test srtp (written by tests/srtp.rs)
[node]
max_calls = 20

[[trunk]]
name = "lync"
address = "127.0.{N}.1"
side = "internal"
match_any_port = true
usages = ["outbound"]
encryption = "required"

[[trunk]]
name = "pstn"
address = "127.0.{N}.21"
port = 5060
side = "gateway"
options_interval_ms = 0
encryption = "none"

[[trunk]]
name = "itsp"
address = "127.0.{N}.22"
port = 5060
side = "gateway"
options_interval_ms = 0
encryption = "required"

[[route]]
name = "to-pstn"
pattern = '^1'
usage = "outbound"
trunks = ["pstn"]

[[route]]
name = "to-itsp"
pattern = '^2'
usage = "outbound"
trunks = ["itsp"]
"#
    )
}

/// `medpool ctl --server 127.0.162.1:7001 -o json ARGS`.
fn ctl_json(args: &[&str]) -> serde_json::Value {
    common::ctl_json(&format!("127.0.{N}.1:7001"), args)
}

/// `GET /metrics`.
fn scrape() -> String {
    common::scrape(&format!("127.0.{N}.1:9162"))
}

#[test]
fn srtp_to_rtp_and_srtp_to_srtp_calls_carry_audio_both_ways() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let pstn = rt
        .block_on(Gateway::start(GatewayConfig {
            rtp: true,
            ..GatewayConfig::new(addr(&format!("127.0.{N}.21:5060")))
        }))
        .unwrap();
    let itsp = rt
        .block_on(Gateway::start(GatewayConfig {
            rtp: true,
            srtp: true,
            ..GatewayConfig::new(addr(&format!("127.0.{N}.22:5060")))
        }))
        .unwrap();
    let dir = TestDir::new("srtp");
    let node = MedpoolNode::start_with(
        &dir,
        N,
        &config(),
        &[
            "--shutdown-grace",
            "3",
            "--metrics-listen",
            &format!("127.0.{N}.1:9162"),
        ],
    );
    let caller = |port: u16, called: &str, mki: bool| {
        let mut cfg = CallerConfig::new(
            addr(&format!("127.0.{N}.1:{port}")),
            addr(&node.addr()),
            u64::from(port) * 7919,
        );
        cfg.called = called.to_owned();
        cfg.rtp = true;
        cfg.srtp = true;
        cfg.srtp_mki = mki;
        cfg.cps = 10;
        rt.block_on(Caller::start(cfg)).unwrap()
    };
    // SRTP (with an MKI) ↔ RTP, and SRTP ↔ SRTP.
    let to_pstn = caller(5071, "1000", true);
    let to_itsp = caller(5072, "2000", false);
    let answered = rt.block_on(async {
        let (a, b) = tokio::join!(to_pstn.place(2), to_itsp.place(2));
        a + b
    });
    assert_eq!(answered, 4, "every call is answered:\n{}", node.log());
    // Two seconds of audio (100 packets each way per call).
    rt.block_on(async { tokio::time::sleep(Duration::from_secs(2)).await });

    let list = ctl_json(&["calls", "list"]);
    let ids: Vec<String> = list["calls"]
        .as_array()
        .or_else(|| list.as_array())
        .unwrap_or_else(|| panic!("no calls in {list}"))
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 4, "{list}");
    let mut legs = Vec::new();
    for id in &ids {
        let show = ctl_json(&["calls", "show", id]);
        let text = show.to_string();
        assert!(!text.contains("inline:"), "a key in calls show: {text}");
        let srtp = |leg: &str| {
            show.pointer(&format!("/{leg}/media/srtp"))
                .filter(|v| !v.is_null())
                .cloned()
        };
        let (a, b) = (srtp("a"), srtp("b"));
        let a = a.unwrap_or_else(|| panic!("leg A is SRTP: {show}"));
        assert_eq!(a["auth_failed"], 0, "{show}");
        legs.push((
            show["gateway"].as_str().unwrap_or_default().to_owned(),
            a["mki"].as_bool(),
            b.map(|b| b["suite"].as_str().unwrap_or_default().to_owned()),
        ));
    }
    legs.sort();
    assert_eq!(
        legs,
        [
            (
                "itsp".to_owned(),
                Some(false),
                Some("AES_CM_128_HMAC_SHA1_80".to_owned())
            ),
            (
                "itsp".to_owned(),
                Some(false),
                Some("AES_CM_128_HMAC_SHA1_80".to_owned())
            ),
            ("pstn".to_owned(), Some(true), None),
            ("pstn".to_owned(), Some(true), None),
        ],
        "(gateway, caller's leg MKI, gateway leg's suite)"
    );

    // What each end checked, on decrypted packets.
    for (name, c) in [("to pstn", &to_pstn), ("to itsp", &to_itsp)] {
        for m in c.rtp_stats() {
            let s = &m.stats;
            eprintln!("caller {name} call {}: {s:?}", m.index);
            assert!(
                s.srtp_received >= 50,
                "{name}: the echo comes back SRTP: {s:?}"
            );
            assert_eq!(
                s.srtp_received, s.received,
                "{name}: every packet decrypted: {s:?}"
            );
            assert_eq!(
                (s.srtp_failed, s.defects(), s.wrong_call),
                (0, 0, 0),
                "{name}: {s:?}"
            );
            assert!(s.sent >= 50 && s.srtp_sent == s.sent, "{name}: {s:?}");
        }
    }
    let (p, i) = (pstn.rtp_stats(), itsp.rtp_stats());
    eprintln!("pstn gateway: {p:?}\nitsp gateway: {i:?}");
    assert!(
        p.received >= 100 && p.srtp_received == 0,
        "plain RTP at the PSTN gateway: {p:?}"
    );
    assert_eq!(p.defects(), 0, "{p:?}");
    assert!(
        i.received >= 100 && i.srtp_received == i.received,
        "SRTP at the ITSP gateway: {i:?}"
    );
    assert_eq!((i.defects(), i.srtp_failed), (0, 0), "{i:?}");

    rt.block_on(async {
        tokio::join!(to_pstn.hangup_all(), to_itsp.hangup_all());
    });
    let mut metrics = String::new();
    common::wait_until(Duration::from_secs(10), || {
        metrics = scrape();
        metrics.contains("medpool_media_sessions 0")
            || metrics.contains("medpool_media_sessions{} 0")
    });
    for l in metrics.lines().filter(|l| l.starts_with("medpool_srtp_")) {
        assert!(l.ends_with(" 0"), "no SRTP packet failed: {l}");
    }
    node.stop();
}
