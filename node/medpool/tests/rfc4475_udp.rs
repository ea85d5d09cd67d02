//! The RFC 4475 torture messages (node/sip/tests/rfc4475/), each sent as one UDP datagram to a
//! running `medpool serve` from the address of a configured internal trunk, and every answer
//! checked against EXPECTED.tsv; afterwards the node must still be running and a SIPp call
//! through it must succeed.
//!
//! Where answers go: the node answers a UDP request at the source address, at the port of the
//! top Via's sent-by (5060 when absent), or at the source port with `rport` (RFC 3261 §18.2.2,
//! RFC 3581). So the test sends from 127.0.41.2:5060, the internal trunk's address (not the
//! node's own), and also listens on 127.0.41.2:5050 (quotbal.dat's Via says :5050).
//!
//! Answers are told apart by Call-ID (every file has its own); an answer carrying another
//! file's Call-ID is a late retransmission and is ignored. Non-2xx finals to INVITEs are ACKed
//! so that the node stops retransmitting them.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::fmt::Write as _;
use std::net::UdpSocket;
use std::path::PathBuf;
use std::time::Duration;

use common::{MedpoolNode, PoolSpec, Response, Sipp, Stopwatch, TestDir, gateway, sleep_ms};

const N: u8 = 41;

fn corpus_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sip/tests/rfc4475")
}

/// One line of EXPECTED.tsv.
struct Case {
    file: String,
    expected: String,
    note: String,
    bytes: Vec<u8>,
    call_id: Option<String>,
    request_uri: Option<String>,
    is_invite: bool,
    /// Method and top Via: two messages with the same are one server transaction to the node
    /// (RFC 3261 §17.2.3: branch, sent-by and method), so the second is a retransmission.
    txn: String,
    /// The earlier message whose transaction this one matches, if any.
    same_txn_as: Option<usize>,
}

fn load_cases() -> Vec<Case> {
    let dir = corpus_dir();
    let tsv = std::fs::read_to_string(dir.join("EXPECTED.tsv")).unwrap();
    let mut cases = Vec::new();
    for line in tsv.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        assert!(cols.len() >= 4, "bad EXPECTED.tsv line: {line}");
        let expected_col = cols[3].trim();
        let (expected, note) = match expected_col.split_once(' ') {
            Some((e, rest)) => (e.to_owned(), rest.trim().to_owned()),
            None => (expected_col.to_owned(), String::new()),
        };
        let bytes = std::fs::read(dir.join(cols[0]))
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", cols[0]));
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let call_id = header_value(&text, "call-id", Some("i"));
        let first = text.lines().next().unwrap_or("");
        let mut parts = first.split(' ');
        let method = parts.next().unwrap_or("");
        let request_uri = parts.next().map(str::to_owned);
        let via: String = header_value(&text, "via", Some("v"))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<String>()
            .to_ascii_lowercase();
        let txn = format!("{method} {via}");
        // Only requests make server transactions (the corpus also holds stray responses).
        let same_txn_as = if method.starts_with("SIP/") {
            None
        } else {
            cases.iter().position(|c: &Case| c.txn == txn)
        };
        cases.push(Case {
            file: cols[0].to_owned(),
            expected,
            note,
            call_id,
            request_uri,
            is_invite: method == "INVITE",
            txn,
            same_txn_as,
            bytes,
        });
    }
    assert_eq!(
        cases.len(),
        49,
        "EXPECTED.tsv lists the 49 messages of RFC 4475"
    );
    cases
}

/// The first value of a header (full or compact name) in a message's header section, trimmed.
fn header_value(text: &str, name: &str, compact: Option<&str>) -> Option<String> {
    for line in text.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        let n = n.trim();
        if n.eq_ignore_ascii_case(name) || compact.is_some_and(|c| n.eq_ignore_ascii_case(c)) {
            return Some(v.trim().to_owned());
        }
    }
    None
}

/// Whether response `r` answers `case`: it carries the case's Call-ID, or no Call-ID of any
/// message of the corpus, or the Call-ID of the earlier message whose server transaction this
/// case matches (the node then retransmits that transaction's answer, as RFC 3261 §17.2.3 says:
/// cparam02.dat repeats cparam01.dat's Via and method, regescrt.dat escnull.dat's).
fn is_mine(case: &Case, cases: &[Case], known_call_ids: &[String], r: &Response) -> bool {
    let Some(id) = r.header("Call-ID", Some("i")) else {
        return true;
    };
    if case.call_id.as_deref() == Some(id.as_str()) {
        return true;
    }
    if let Some(earlier) = case.same_txn_as
        && cases[earlier].call_id.as_deref() == Some(id.as_str())
    {
        return true;
    }
    !known_call_ids.contains(&id)
}

/// What came back for one message.
#[derive(Default)]
struct Answers {
    provisional: Vec<Response>,
    finals: Vec<Response>,
    /// Datagrams that are no SIP response at all.
    garbage: Vec<String>,
}

struct Listener {
    socks: Vec<UdpSocket>,
}

impl Listener {
    fn bind() -> Self {
        let socks: Vec<UdpSocket> = [5060u16, 5050]
            .iter()
            .map(|p| {
                let s = UdpSocket::bind(format!("127.0.{N}.2:{p}"))
                    .unwrap_or_else(|e| panic!("cannot bind 127.0.{N}.2:{p}: {e}"));
                s.set_nonblocking(true).unwrap();
                s
            })
            .collect();
        Self { socks }
    }

    fn sender(&self) -> &UdpSocket {
        &self.socks[0]
    }

    /// Every datagram that arrives within `for_ms` (or until `done` says stop).
    fn collect(&self, for_ms: u64, mut done: impl FnMut(&[u8]) -> bool) -> Vec<Vec<u8>> {
        let watch = Stopwatch::start();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 65536];
        while watch.elapsed() < Duration::from_millis(for_ms) {
            let mut any = false;
            for s in &self.socks {
                if let Ok((len, _)) = s.recv_from(&mut buf) {
                    any = true;
                    let d = buf[..len].to_vec();
                    let stop = done(&d);
                    got.push(d);
                    if stop {
                        return got;
                    }
                }
            }
            if !any {
                sleep_ms(5);
            }
        }
        got
    }
}

/// An ACK for a final answer to one of our INVITEs (stops the node's retransmissions).
fn ack_for(case: &Case, r: &Response) -> Option<String> {
    let uri = case.request_uri.as_deref()?;
    let via = r.header("Via", Some("v"))?;
    let from = r.header("From", Some("f"))?;
    let to = r.header("To", Some("t"))?;
    let call_id = r.header("Call-ID", Some("i"))?;
    let cseq = r.header("CSeq", None)?;
    let num = cseq.split_whitespace().next()?;
    let via = if r.status < 300 {
        format!("SIP/2.0/UDP 127.0.{N}.2:5060;branch=z9hG4bK-ack-{num}")
    } else {
        via
    };
    Some(format!(
        "ACK {uri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\nFrom: {from}\r\nTo: {to}\r\n\
         Call-ID: {call_id}\r\nCSeq: {num} ACK\r\nContent-Length: 0\r\n\r\n"
    ))
}

fn describe(a: &Answers) -> String {
    let mut s = String::new();
    for r in a.provisional.iter().chain(&a.finals) {
        let _ = write!(s, "[{}] ", r.raw.lines().next().unwrap_or(""));
    }
    for g in &a.garbage {
        let _ = write!(s, "[not a response: {g:?}] ");
    }
    if s.is_empty() {
        s.push_str("nothing");
    }
    s
}

/// Checks one message's answers against its EXPECTED.tsv entry; `None` when they fit.
fn verdict(case: &Case, a: &Answers) -> Option<String> {
    let finals: Vec<u16> = a.finals.iter().map(|r| r.status).collect();
    let first = finals.first().copied();
    let ok = match case.expected.as_str() {
        "no-reply" => a.provisional.is_empty() && a.finals.is_empty() && a.garbage.is_empty(),
        "any-but-400" => first.is_some_and(|c| c != 400),
        "400|any-but-400" => first.is_some(),
        "400|drop" => first.is_none_or(|c| c == 400) && a.provisional.is_empty(),
        "405|501" => first.is_some_and(|c| c == 405 || c == 501),
        code => {
            let want: u16 = code
                .parse()
                .unwrap_or_else(|_| panic!("unknown expectation {code:?}"));
            first == Some(want)
        }
    };
    if !ok {
        return Some(format!(
            "expected {} {}, got {}",
            case.expected,
            case.note,
            describe(a)
        ));
    }
    if !a.garbage.is_empty() {
        return Some(format!("non-SIP datagrams: {}", describe(a)));
    }
    // Extra requirements named in EXPECTED.tsv.
    let r = a.finals.first();
    match case.file.as_str() {
        "dblreq.dat" if finals.len() != 1 => {
            Some(format!("exactly one answer expected, got {}", describe(a)))
        }
        "bext01.dat" if r.is_some_and(|r| r.header("Unsupported", None).is_none()) => Some(
            format!("420 without an Unsupported header: {}", r.unwrap().raw),
        ),
        "invut.dat" if r.is_some_and(|r| r.header("Accept", None).is_none()) => {
            Some(format!("415 without an Accept header: {}", r.unwrap().raw))
        }
        _ => None,
    }
}

#[test]
fn rfc4475_torture_messages_over_udp() {
    let cases = load_cases();
    let known_call_ids: Vec<String> = cases.iter().filter_map(|c| c.call_id.clone()).collect();

    let dir = TestDir::new("rfc4475");
    let mut spec = PoolSpec::new(N);
    spec.pbx_ip = format!("127.0.{N}.2");
    // Only SIPp's calls (user "4475") are routed to the gateway; the torture INVITEs match no
    // route and get a final answer from the node itself.
    spec.pattern = "^4475$".to_owned();
    spec.priority = [Some(1), None];
    let gw1 = gateway(&dir, N, 1, "uas_answer.xml");
    let mut node = MedpoolNode::start(&dir, N, &spec.toml());
    gw1.wait_for_probes(1, Duration::from_secs(5));

    let listener = Listener::bind();
    let node_addr = node.addr();
    let mut failures: Vec<String> = Vec::new();
    let mut strays = 0usize;
    let mut summary = String::new();

    for case in &cases {
        listener
            .sender()
            .send_to(&case.bytes, &node_addr)
            .unwrap_or_else(|e| panic!("cannot send {}: {e}", case.file));
        let quiet = case.expected == "no-reply";
        let window = if quiet { 400 } else { 2000 };
        let wants_final = !quiet;
        let mut answers = Answers::default();
        let mut seen_final = false;
        let datagrams = listener.collect(window, |d| {
            // Stop at the first final answer of this message (dblreq: listen on, see below).
            let Some(r) = Response::parse(d) else {
                return false;
            };
            let mine = is_mine(case, &cases, &known_call_ids, &r);
            if mine && r.status >= 200 {
                seen_final = true;
            }
            wants_final && seen_final && case.file != "dblreq.dat"
        });
        let mut datagrams = datagrams;
        if case.file == "dblreq.dat" || (case.expected == "400|drop" && !seen_final) {
            // dblreq: exactly one answer, so listen on a little; 400|drop: nothing yet is fine.
            datagrams.extend(listener.collect(300, |_| false));
        }
        for d in datagrams {
            let Some(r) = Response::parse(&d) else {
                answers
                    .garbage
                    .push(String::from_utf8_lossy(&d).chars().take(80).collect());
                continue;
            };
            if !is_mine(case, &cases, &known_call_ids, &r) {
                strays += 1;
                continue;
            }
            if r.status >= 200 {
                if case.is_invite
                    && answers.finals.is_empty()
                    && let Some(ack) = ack_for(case, &r)
                {
                    let _ = listener.sender().send_to(ack.as_bytes(), &node_addr);
                }
                answers.finals.push(r);
            } else {
                answers.provisional.push(r);
            }
        }
        let v = verdict(case, &answers);
        let _ = writeln!(
            summary,
            "{:<16} {:<16} {:<4} {}{}",
            case.file,
            case.expected,
            if v.is_none() { "ok" } else { "FAIL" },
            describe(&answers),
            case.same_txn_as.map_or(String::new(), |e| format!(
                " (same transaction as {})",
                cases[e].file
            ))
        );
        if let Some(v) = v {
            failures.push(format!("{}: {v}", case.file));
        }
    }
    eprintln!("RFC 4475 over UDP ({strays} late retransmissions ignored):\n{summary}");

    // The node survived all of it and still carries calls.
    node.assert_running();
    let mut pbx = Sipp::uac(
        "caller-after",
        "uac_call.xml",
        &format!("127.0.{N}.2"),
        5070,
        &node_addr,
    )
    .service("4475")
    .spawn(&dir);
    let outcome = pbx.wait(Duration::from_secs(30));
    if !outcome.success() {
        failures.push(format!(
            "a SIPp call after the corpus failed ({:?}):\n{}",
            outcome.code, outcome.report
        ));
    }
    assert_eq!(
        gw1.calls_received().len(),
        usize::from(outcome.success()),
        "only SIPp's call reaches the gateway"
    );
    node.assert_running();
    assert!(
        failures.is_empty(),
        "{} of 49 torture messages (or the call after them) were not answered as EXPECTED.tsv \
         says:\n{}\n\nall answers:\n{summary}",
        failures.len(),
        failures.join("\n")
    );
}
