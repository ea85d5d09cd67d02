//! A SIP scanner against the front door: SIPVicious (`svmap`, `svwar`, `svcrack`, Debian package
//! `sipvicious`) run from an address that is no configured trunk, against a node with
//! `unknown_source = "drop"` and one with `"reject"`, after a raw probe of every kind of request.
//!
//! Asserted: with `drop` nothing comes back at all (svmap finds no device); with `reject` every
//! answer is a 403 (and there is at least one); both nodes keep running and log no error. The
//! scanners' output is printed (for RELIABILITY.md).
//!
//! Addresses (block 127.0.152.0/24, see tests/common/mod.rs): node "drop" 127.0.152.101:5060,
//! node "reject" 127.0.152.102:5060, the trunk 127.0.152.110, the scanners 127.0.152.98, the raw
//! probe 127.0.152.97:5097.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs
)]

mod common;

use std::net::UdpSocket;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{MedpoolNode, TestDir};

const N: u8 = 152;
const SCANNER: &str = "127.0.152.98";

fn config(unknown: &str) -> String {
    format!(
        "[node]\nunknown_source = \"{unknown}\"\n\n\
         [[trunk]]\nname = \"pbx\"\naddress = \"127.0.{N}.110\"\nside = \"internal\"\n"
    )
}

/// Fails with the install hint when SIPVicious is missing (scripts/test.sh installs it).
fn require_sipvicious() {
    let ok = Command::new("svmap")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "SIPVicious is not installed (no `svmap` in PATH): apt-get install -y sipvicious \
         (scripts/test.sh installs it), then run this test again"
    );
}

/// Runs one scanner (bounded by `timeout`), with HOME in the test folder (sessions go there).
fn scan(dir: &TestDir, tool: &str, args: &[&str], secs: u32) -> String {
    let out = Command::new("timeout")
        .arg(secs.to_string())
        .arg(tool)
        .args(args)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {tool}: {e}"));
    let text = format!(
        "$ {tool} {}\n{}{}(exit {:?})",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        out.status.code()
    );
    println!("{text}\n");
    text
}

/// Status codes of every SIP response line in a scanner's debug output.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("SIP/2.0 ")
        .filter_map(|(i, _)| text.get(i + 8..i + 11)?.parse().ok())
        .collect()
}

/// Sends one request of each kind (and junk) from the raw probe address; returns the status of
/// every answer that arrived within a second of the last one sent.
fn probe(node: &str) -> Vec<u16> {
    let sock = UdpSocket::bind(format!("127.0.{N}.97:5097")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let me = "127.0.152.97:5097";
    let requests = [
        ("OPTIONS", "", 1),
        ("REGISTER", "", 2),
        ("INVITE", "", 3),
        ("BYE", ";tag=abc", 4),
        ("INVITE", ";tag=abc", 5),
        ("SUBSCRIBE", "", 6),
    ];
    for (method, to_tag, n) in requests {
        let msg = format!(
            "{method} sip:100@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKprobe{n};rport\r\n\
             From: <sip:scan@{me}>;tag=p{n}\r\nTo: <sip:100@{node}>{to_tag}\r\nCall-ID: probe-{n}@x\r\n\
             CSeq: 1 {method}\r\nContact: <sip:scan@{me}>\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        sock.send_to(msg.as_bytes(), node).unwrap();
    }
    sock.send_to(b"\x16\x03\x01 not SIP\r\n\r\n", node).unwrap();
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let end = Instant::now() + Duration::from_secs(1);
    while Instant::now() < end {
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            let d = &buf[..n];
            got.push(
                d.strip_prefix(b"SIP/2.0 ")
                    .and_then(|r| std::str::from_utf8(r.get(..3)?).ok()?.parse().ok())
                    .unwrap_or(0),
            );
        }
    }
    got
}

fn run_scanners(dir: &TestDir, target: &str) -> String {
    let (ip, port) = target.split_once(':').unwrap();
    let common = ["-b", SCANNER, "-x", SCANNER, "-p", port];
    let mut out = String::new();
    let mut args: Vec<&str> = common.to_vec();
    args.extend(["-P", "5091", "-d", ip]);
    out += &scan(dir, "svmap", &args, 30);
    let mut args: Vec<&str> = common.to_vec();
    args.extend(["-P", "5092", "-e", "100-140", "--debug", "--force", ip]);
    out += &scan(dir, "svwar", &args, 60);
    let mut args: Vec<&str> = common.to_vec();
    args.extend(["-P", "5093", "-u", "100", "-r", "1-40", "-v", ip]);
    out += &scan(dir, "svcrack", &args, 60);
    out
}

fn assert_clean_log(node: &mut MedpoolNode, name: &str) {
    node.assert_running();
    let log = node.log();
    let bad: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("panicked"))
        .collect();
    assert!(
        bad.is_empty(),
        "node {name} logged errors while scanned:\n{}",
        bad.join("\n")
    );
}

#[test]
fn a_scanner_from_an_unknown_address_finds_nothing_or_only_403() {
    require_sipvicious();

    // unknown_source = "drop": invisible.
    let dir = TestDir::new("sipvicious-drop");
    let target = format!("127.0.{N}.101:5060");
    let mut node = MedpoolNode::start_at(&dir, N, &target, &config("drop"), &[], &[]);
    let answers = probe(&target);
    println!("=== unknown_source = \"drop\" ({target}) ===\nraw probe answers: {answers:?}\n");
    assert!(answers.is_empty(), "drop: the node answered {answers:?}");
    let out = run_scanners(&dir, &target);
    assert!(!out.contains(&target), "drop: svmap found the node:\n{out}");
    assert!(
        statuses(&out).is_empty(),
        "drop: the scanners received answers {:?}",
        statuses(&out)
    );
    assert_clean_log(&mut node, "drop");
    node.stop();

    // unknown_source = "reject": 403 and nothing else.
    let dir = TestDir::new("sipvicious-reject");
    let target = format!("127.0.{N}.102:5060");
    let mut node = MedpoolNode::start_at(&dir, N, &target, &config("reject"), &[], &[]);
    let answers = probe(&target);
    println!("=== unknown_source = \"reject\" ({target}) ===\nraw probe answers: {answers:?}\n");
    assert!(
        !answers.is_empty() && answers.iter().all(|s| *s == 403),
        "reject: the raw probe's answers were {answers:?}, expected only 403s (and some)"
    );
    let out = run_scanners(&dir, &target);
    let seen = statuses(&out);
    assert!(
        seen.iter().all(|s| *s == 403),
        "reject: the scanners received {seen:?}, expected only 403s\n{out}"
    );
    assert_clean_log(&mut node, "reject");
    node.stop();
}
