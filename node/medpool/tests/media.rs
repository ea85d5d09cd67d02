//! The media plane end to end: a real `medpool serve`, a SIPp caller that plays G.711 A-law
//! audio (SIPp's own `g711a.pcap`, with `play_pcap_audio`) once the call is answered, and a SIPp
//! gateway that echoes every RTP packet it receives back to its sender (`-rtp_echo`).
//!
//! - Relay (the default): the SDP reaching the gateway and the one reaching the caller point at
//!   medpool, so the caller's audio can only reach the gateway, and its echo the caller, through
//!   medpool's relay; the echo arriving at the caller's media port proves the round trip.
//! - Bypass (`media = "bypass"` on both trunks): the SDP reaching the gateway is the caller's own.
//!
//! How the echo is seen: SIPp keeps its media port bound but does not read it (without
//! `-rtp_echo`), so what arrives there stays queued in the socket; the kernel shows that queue
//! (and what overflowed it) in `/proc/net/udp`, which the test reads while the call runs.
//!
//! Addresses (test number 156, see tests/common): one test per node address so the tests run in
//! parallel: node 127.0.156.{1,2}, gateway 127.0.156.{21,22} (media port 42000), caller SIP on the
//! node's address, caller media 127.0.156.{50,51}:40000.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_methods,
    clippy::disallowed_types,
    missing_docs
)]

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{MedpoolNode, Sipp, TestDir, sleep_ms};

const N: u8 = 156;
const CALLER_MEDIA_PORT: u16 = 40000;
const GW_MEDIA_PORT: u16 = 42000;

/// SIPp's G.711 A-law capture (Debian's sip-tester ships it).
fn g711a_pcap() -> PathBuf {
    let candidates = [
        "/usr/share/sip-tester/g711a.pcap",
        "/usr/share/sipp/pcap/g711a.pcap",
        "/usr/local/share/sipp/pcap/g711a.pcap",
    ];
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "SIPp's g711a.pcap is not installed (looked in {candidates:?}): install Debian's \
                 sip-tester (`apt-get install -y sip-tester`), which ships it"
            )
        })
}

/// The gateway side of a test: extra keys on its trunk and its SIPp scenario.
struct Gateway<'a> {
    keys: &'a str,
    scenario: &'a str,
}

const PCMA_GATEWAY: Gateway<'static> = Gateway {
    keys: "",
    scenario: "uas_answer_pcma.xml",
};

fn config(node: &str, gw: &str, bypass: bool, gw_keys: &str) -> String {
    let media = if bypass {
        "media = \"bypass\"\n"
    } else {
        "media = \"relay\"\n"
    };
    format!(
        r#"# test media (written by tests/media.rs)
[node]
max_calls = 10

[[trunk]]
name = "pbx"
address = "{node}"
side = "internal"
match_any_port = true
usages = ["outbound"]
{media}
[[trunk]]
name = "gw1"
address = "{gw}"
port = 5060
side = "gateway"
options_interval_ms = 500
{media}{gw_keys}
[[route]]
name = "to-gateway"
pattern = '.*'
usage = "outbound"
trunks = ["gw1"]
"#
    )
}

/// The receive queue (bytes) and the drops of the UDP socket bound to `addr`, from
/// /proc/net/udp; `None` when no socket is bound there.
fn udp_queue(addr: SocketAddrV4) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string("/proc/net/udp").unwrap();
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(addr.ip().octets()),
        addr.port()
    );
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&want.as_str()) {
            return None;
        }
        let rx = f.get(4)?.split(':').nth(1)?;
        let drops = f.last()?.parse().ok()?;
        Some((u64::from_str_radix(rx, 16).ok()?, drops))
    })
}

/// The SDP of the first message in a SIPp message trace that starts with `first_line` (as
/// sent or received): its `c=` address and `m=audio` port.
fn sdp_in(log: &str, first_line: &str) -> Option<(String, u16)> {
    let at = log.find(first_line)?;
    let msg = &log[at..];
    let c = msg
        .lines()
        .find_map(|l| l.trim().strip_prefix("c=IN IP4 "))?
        .trim()
        .to_owned();
    let port = msg
        .lines()
        .find_map(|l| l.trim().strip_prefix("m=audio "))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((c, port))
}

/// `medpool ctl --server NODE:7001 -o json ARGS`.
fn ctl_json(node: &str, args: &[&str]) -> serde_json::Value {
    common::ctl_json(&format!("{node}:7001"), args)
}

/// `calls show` of the node's only call, as JSON.
fn show_the_call(node: &str) -> serde_json::Value {
    let list = ctl_json(node, &["calls", "list"]);
    let id = list
        .pointer("/calls/0/call_id")
        .or_else(|| list.pointer("/0/call_id"))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no call in {list}"))
        .to_owned();
    ctl_json(node, &["calls", "show", &id])
}

struct Outcome {
    /// `ctl status` (PoolStatus) taken during the call.
    status: Option<serde_json::Value>,
    /// (c=, m= port) of the INVITE the gateway received.
    at_gateway: (String, u16),
    /// The whole INVITE the gateway received.
    invite_at_gateway: String,
    /// The whole 200 the caller received.
    ok_at_caller: String,
    /// (c=, m= port) of the 200 the caller received.
    at_caller: (String, u16),
    /// The largest receive queue (bytes) seen on the caller's media port, and its drops.
    echo: (u64, u64),
    /// `medpool ctl calls show` of the call, taken once the echo reached the caller.
    show: Option<serde_json::Value>,
    /// The node's metrics once the call was over.
    metrics: String,
}

/// The value of an unlabelled metric (`name{} 3` or `name_total{} 3`).
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        let n = n.strip_suffix("{}").unwrap_or(n);
        if n == name || n == format!("{name}_total") {
            v.trim().parse::<f64>().ok().map(|f| f as u64)
        } else {
            None
        }
    })
}

/// One call with audio from a caller at `node`'s address (media at `caller_media`) through the
/// node at `node` to the echoing gateway at `gw`.
fn talk(
    dir: &TestDir,
    node: &str,
    gw: &str,
    caller_media: &str,
    bypass: bool,
    gateway_side: &Gateway<'_>,
) -> Outcome {
    let scenario = dir.file("uac_pcap.xml");
    let template = std::fs::read_to_string(common::scenario("uac_pcap_template.xml")).unwrap();
    std::fs::write(
        &scenario,
        template.replace("PCAP_FILE", &g711a_pcap().display().to_string()),
    )
    .unwrap();
    let gateway = Sipp::uas("gw1", gateway_side.scenario, gw)
        .arg("-rtp_echo")
        .arg("-mi")
        .arg(gw)
        .arg("-mp")
        .arg(&GW_MEDIA_PORT.to_string())
        .spawn(dir);
    let node_sip = format!("{node}:5060");
    let _medpool = MedpoolNode::start_at(
        dir,
        N,
        &node_sip,
        &config(node, gw, bypass, gateway_side.keys),
        &[
            "--shutdown-grace",
            "3",
            "--metrics-listen",
            &format!("{node}:9156"),
        ],
        &[],
    );
    gateway.wait_for_probes(1, Duration::from_secs(10));

    let media: SocketAddrV4 =
        SocketAddrV4::new(caller_media.parse::<Ipv4Addr>().unwrap(), CALLER_MEDIA_PORT);
    let mut caller = Sipp::uac("caller", "uac_pcap_template.xml", node, 5070, &node_sip)
        .scenario_path(scenario)
        .arg("-mi")
        .arg(caller_media)
        .arg("-mp")
        .arg(&CALLER_MEDIA_PORT.to_string())
        .spawn(dir);
    // Watch the caller's media port while the call runs (SIPp closes it when it exits).
    let mut echo = (0, 0);
    let mut show = None;
    let mut status = None;
    let start = Instant::now();
    while caller.running() && start.elapsed() < Duration::from_secs(40) {
        if let Some((rx, drops)) = udp_queue(media) {
            echo = (echo.0.max(rx), echo.1.max(drops));
        }
        // A second into the echo, what the admin API says of the call's media.
        if show.is_none() && echo.0 > 0 && start.elapsed() > Duration::from_secs(2) {
            sleep_ms(1000);
            show = Some(show_the_call(node));
            status = Some(ctl_json(node, &["status"]));
        }
        sleep_ms(50);
    }
    caller.expect_success(Duration::from_secs(5));
    // The call is over: its session closes (the gateway's 200 to the BYE may still be on its way).
    let mut metrics = String::new();
    common::wait_until(Duration::from_secs(10), || {
        metrics = common::scrape(&format!("{node}:9156"));
        metric(&metrics, "medpool_media_sessions") == Some(0)
    });
    let at_gateway = sdp_in(&gateway.message_log(), "INVITE sip:").unwrap_or_else(|| {
        panic!(
            "no SDP in the INVITE at the gateway:\n{}",
            gateway.message_log()
        )
    });
    let at_caller = sdp_in(&caller.message_log(), "SIP/2.0 200 OK")
        .unwrap_or_else(|| panic!("no SDP in the 200 at the caller:\n{}", caller.message_log()));
    let from = |log: String, start: &str| {
        let at = log.find(start).unwrap_or(0);
        log[at..]
            .split("\n\n\n")
            .next()
            .unwrap_or_default()
            .to_owned()
    };
    Outcome {
        invite_at_gateway: from(gateway.message_log(), "INVITE sip:"),
        ok_at_caller: from(caller.message_log(), "SIP/2.0 200 OK"),
        at_gateway,
        at_caller,
        echo,
        show,
        status,
        metrics,
    }
}

#[test]
fn relayed_audio_comes_back_through_medpool() {
    let dir = TestDir::new("media-relay");
    let (node, gw) = ("127.0.156.1", "127.0.156.21");
    let o = talk(&dir, node, gw, "127.0.156.50", false, &PCMA_GATEWAY);
    println!(
        "relay: gateway saw {:?}, caller saw {:?}, echo at the caller: {} bytes queued, {} dropped",
        o.at_gateway, o.at_caller, o.echo.0, o.echo.1
    );
    assert_eq!(
        o.at_gateway.0, node,
        "the gateway is told to send its RTP to medpool"
    );
    assert!(
        (20000..=29999).contains(&o.at_gateway.1),
        "{:?}",
        o.at_gateway
    );
    assert_eq!(
        o.at_caller.0, node,
        "the caller is told to send its RTP to medpool"
    );
    assert!(
        (20000..=29999).contains(&o.at_caller.1),
        "{:?}",
        o.at_caller
    );
    assert_ne!(o.at_caller.1, o.at_gateway.1, "one relay endpoint per leg");
    assert!(
        o.echo.0 > 0 || o.echo.1 > 0,
        "the gateway's echo of the caller's audio never reached the caller's media port"
    );
    // The admin API's view of both legs' media, mid-call.
    let show = o.show.expect("calls show was taken during the call");
    println!("calls show: {show}");
    let leg = |l: &str| {
        show.get(l)
            .and_then(|v| v.get("media"))
            .unwrap_or_else(|| panic!("no media on leg {l}: {show}"))
    };
    let (a, b) = (leg("a"), leg("b"));
    assert_eq!(a["local"], format!("{node}:{}", o.at_caller.1));
    assert_eq!(b["local"], format!("{node}:{}", o.at_gateway.1));
    assert_eq!(
        a["remote"],
        format!("127.0.156.50:{CALLER_MEDIA_PORT}"),
        "latched to the caller"
    );
    assert_eq!(b["remote"], format!("{gw}:{GW_MEDIA_PORT}"));
    assert_eq!(
        (a["codec"].as_str(), b["codec"].as_str()),
        (Some("PCMA/8000"), Some("PCMA/8000"))
    );
    let packets = |m: &serde_json::Value, dir: &str| m[dir]["packets"].as_u64().unwrap();
    assert!(
        packets(a, "received") > 0,
        "the caller's audio reached medpool"
    );
    assert!(
        packets(b, "received") > 0,
        "the gateway's echo reached medpool"
    );
    assert!(packets(a, "sent") > 0 && packets(b, "sent") > 0);
    // PoolStatus: the node's relay ports in use (two legs, an RTP/RTCP pair each) mid-call.
    let status = o.status.expect("ctl status was taken during the call");
    let me = &status["nodes"][0];
    assert_eq!(
        (
            me["media_ports_in_use"].as_u64(),
            me["media_ports_free"].as_u64(),
            me["media_sessions"].as_u64()
        ),
        (Some(4), Some(9996), Some(1)),
        "{status}"
    );
    // Prometheus: what the relay carried, and nothing left running.
    let m = |name: &str| {
        metric(&o.metrics, name).unwrap_or_else(|| panic!("no {name} in\n{}", o.metrics))
    };
    assert!(m("medpool_media_packets") >= packets(a, "received") + packets(b, "received"));
    assert!(m("medpool_media_bytes") > 0);
    assert_eq!(m("medpool_media_latches"), 2, "one per leg");
    assert_eq!(m("medpool_media_sessions"), 0);
    assert_eq!(m("medpool_media_ports_in_use"), 0);
    assert_eq!(m("medpool_media_ports_free"), 10000);
}

#[test]
fn with_bypass_the_gateway_gets_the_callers_own_sdp() {
    let dir = TestDir::new("media-bypass");
    let (node, gw) = ("127.0.156.2", "127.0.156.22");
    let o = talk(&dir, node, gw, "127.0.156.51", true, &PCMA_GATEWAY);
    println!(
        "bypass: gateway saw {:?}, caller saw {:?}, echo at the caller: {} bytes queued, {} dropped",
        o.at_gateway, o.at_caller, o.echo.0, o.echo.1
    );
    assert_eq!(
        o.at_gateway,
        ("127.0.156.51".to_owned(), CALLER_MEDIA_PORT),
        "the caller's own media address"
    );
    assert_eq!(
        o.at_caller,
        (gw.to_owned(), GW_MEDIA_PORT),
        "the gateway's own"
    );
    assert!(o.echo.0 > 0 || o.echo.1 > 0, "the echo came back directly");
    let show = o.show.expect("calls show was taken during the call");
    assert!(
        show["a"]["media"].is_null() && show["b"]["media"].is_null(),
        "no relayed media: {show}"
    );
}

/// The caller offers only A-law; the gateway's trunk takes only µ-law (`codecs = ["PCMU"]`) and
/// its SIPp answers µ-law: the gateway is offered µ-law, the caller is answered A-law, and the
/// relay translates both ways (the gateway echoes µ-law, the caller gets A-law back).
#[test]
fn a_law_caller_and_mu_law_gateway_talk_through_translation() {
    let dir = TestDir::new("media-translate");
    let (node, gw) = ("127.0.156.3", "127.0.156.23");
    let o = talk(
        &dir,
        node,
        gw,
        "127.0.156.52",
        false,
        &Gateway {
            keys: "codecs = [\"PCMU\"]\n",
            scenario: "uas_answer.xml",
        },
    );
    println!(
        "translate: INVITE at the gateway:\n{}\n200 at the caller:\n{}",
        o.invite_at_gateway, o.ok_at_caller
    );
    assert!(
        o.invite_at_gateway.contains("m=audio"),
        "{}",
        o.invite_at_gateway
    );
    let m_line = |msg: &str| {
        msg.lines()
            .find(|l| l.trim_start().starts_with("m=audio"))
            .map(|l| l.split_whitespace().skip(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(
        m_line(&o.invite_at_gateway),
        "0 101",
        "offered µ-law in place of A-law"
    );
    assert!(o.invite_at_gateway.contains("a=rtpmap:0 PCMU/8000"));
    assert!(!o.invite_at_gateway.contains("PCMA"));
    assert_eq!(
        m_line(&o.ok_at_caller),
        "8",
        "answered A-law, the caller's own codec"
    );
    assert!(o.ok_at_caller.contains("a=rtpmap:8 PCMA/8000"));
    assert!(
        o.echo.0 > 0 || o.echo.1 > 0,
        "the echo came back to the caller"
    );
    let show = o.show.expect("calls show was taken during the call");
    assert_eq!(show["a"]["media"]["codec"], "PCMA/8000");
    assert_eq!(show["b"]["media"]["codec"], "PCMU/8000");
    let translated = metric(&o.metrics, "medpool_media_translated_packets").unwrap();
    let packets = metric(&o.metrics, "medpool_media_packets").unwrap();
    println!("translated {translated} of {packets} packets");
    assert_eq!(
        metric(&o.metrics, "medpool_media_sessions"),
        Some(0),
        "the call's session closed"
    );
    assert!(translated > 0, "the relay translated");
    assert!(
        translated * 10 >= packets * 9,
        "nearly every packet (all but telephone-events) is translated: {translated} of {packets}"
    );
}
