//! The SIP front door under a flood: a running `medpool serve` carries 200 calls a second (SIPp
//! caller on the internal trunk `pbx`, SIPp gateways; every call re-INVITEs twice and ends with a
//! BYE) while two Rust flooder threads each send junk and INVITEs as fast as they can, up to
//! 50,000 datagrams a second: one from an unknown source (127.0.152.99) and one from the `pbx`
//! trunk's own IP on another port (the trunk has `match_any_port`, so it is a known source with
//! its own token bucket).
//!
//! The flooder threads run at nice 19: they share this 2-core machine with the node they attack,
//! which a real attacker does not; they still send as fast as the CPU left over allows.
//!
//! Asserted: at least 99.9 % of the real calls succeed; every in-dialog request (re-INVITE, BYE)
//! of every established call gets its 200; the node's resident memory stays under a generous
//! fixed bound; at most a small fixed number of 403s leave towards the unknown source. Printed:
//! the rate each flooder actually achieved on this machine, RSS before and after, what came back
//! to each flooder, and the node's front-door counters.
//!
//! The CI test floods for 5 s; the full 20 s flood of the issue is `flood_full_20s`, ignored by
//! default (it adds ~20 s of a saturated 2-core machine to the suite): run it with
//! `MEDPOOL_FLOOD_FULL=1 cargo test -p medpool --test flood -- --ignored`.
//!
//! Addresses: block 127.0.152.0/24 (see tests/common/mod.rs): node 127.0.152.1:5060, caller
//! 127.0.152.1:5070, gateways .21/.22, unknown flooder 127.0.152.99:5070, trunk-IP flooder
//! 127.0.152.1:6666, metrics 127.0.152.1:9152.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs
)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{MedpoolNode, PoolSpec, Sipp, SippProcess, TestDir, caller, gw_ip, node_ip, sleep_ms};

const N: u8 = 152;
/// Target rate of each flooder (datagrams a second).
const FLOOD_RATE: u64 = 50_000;
/// Real calls a second.
const CPS: u32 = 200;
/// Most 403s the unknown source may receive in the whole test (the gate's burst is 10).
const MAX_403: u64 = 20;
/// Resident memory the node must stay under (it starts at a few tens of MiB).
const MAX_RSS_KIB: u64 = 512 * 1024;
/// SIPp's socket buffers (its default, 64 KiB, overflows while a loaded machine schedules it late:
/// a lost answer then aborts a scenario that a real peer would carry on by retransmission).
const SIPP_BUFFER: &str = "4194304";
/// The pbx trunk's budget of new requests per source address.
const PBX_RATE: u32 = 250;

#[test]
fn flood_from_unknown_and_trunk_ip_sources_spares_real_calls() {
    run(5, "flood-5s");
}

#[test]
#[ignore = "the issue's full 20 s flood saturates the machine for ~40 s; set MEDPOOL_FLOOD_FULL=1 and run with --ignored"]
fn flood_full_20s() {
    if std::env::var("MEDPOOL_FLOOD_FULL").is_err() {
        println!(
            "flood_full_20s: not run (set MEDPOOL_FLOOD_FULL=1 to run the 20 s flood; the CI test floods for 5 s)"
        );
        return;
    }
    run(20, "flood-20s");
}

/// What one flooder sent and what came back to it.
#[derive(Debug, Default)]
struct FloodReport {
    sent: u64,
    send_errors: u64,
    secs: f64,
    /// Answers received, by status code.
    answers: BTreeMap<u16, u64>,
}

impl FloodReport {
    fn rate(&self) -> f64 {
        self.sent as f64 / self.secs.max(1e-9)
    }
}

/// Lowers the calling thread's scheduling priority (nice 19): the flooders share this 2-core
/// machine with the node they attack, which an attacker elsewhere on the network does not; at nice
/// 19 they still send as fast as the CPU left over allows (the achieved rate is printed).
fn lower_my_priority() {
    let tid = std::fs::read_link("/proc/thread-self")
        .ok()
        .and_then(|p| p.file_name().map(|t| t.to_string_lossy().into_owned()));
    if let Some(tid) = tid {
        let _ = std::process::Command::new("renice")
            .args(["-n", "19", "-p", &tid])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Sends junk and INVITEs alternately from `bind` to `target` at up to `rate` a second for
/// `secs` (paced per millisecond: a thread that falls behind sends flat out, never catches up by
/// more than 100 ms); a second thread counts the answers that come back.
fn flood(bind: &str, target: &str, rate: u64, secs: u64) -> FloodReport {
    let sock = UdpSocket::bind(bind).unwrap_or_else(|e| panic!("cannot bind {bind}: {e}"));
    sock.connect(target).unwrap();
    let rx = sock.try_clone().unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(BTreeMap::<u16, u64>::new()));
    let receiver = {
        let stop = stop.clone();
        let answers = answers.clone();
        std::thread::spawn(move || {
            lower_my_priority();
            let mut buf = vec![0u8; 65536];
            while !stop.load(Ordering::Relaxed) {
                match rx.recv(&mut buf) {
                    Ok(n) => {
                        let d = &buf[..n];
                        let status = d
                            .strip_prefix(b"SIP/2.0 ")
                            .and_then(|r| std::str::from_utf8(r.get(..3)?).ok()?.parse().ok())
                            .unwrap_or(0u16);
                        *answers.lock().unwrap().entry(status).or_default() += 1;
                    }
                    Err(_) => continue,
                }
            }
        })
    };
    lower_my_priority();
    let (host, port) = bind.split_once(':').unwrap();
    let start = Instant::now();
    let end = Duration::from_secs(secs);
    let mut sent = 0u64;
    let mut send_errors = 0u64;
    let mut msg = Vec::with_capacity(600);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= end {
            break;
        }
        let due = elapsed.as_micros() as u64 * rate / 1_000_000;
        let floor = due.saturating_sub(rate / 10);
        if sent < floor {
            sent = floor; // more than 100 ms behind: do not try to catch up
        }
        if sent >= due {
            std::thread::sleep(Duration::from_micros(200));
            continue;
        }
        // Up to one millisecond's worth in a tight loop.
        let batch = (due - sent).min(rate / 1000 + 1);
        for _ in 0..batch {
            msg.clear();
            if sent.is_multiple_of(2) {
                write!(
                    msg,
                    "INVITE sip:999@127.0.{N}.1:5060 SIP/2.0\r\n\
                     Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bKfl{sent};rport\r\n\
                     From: <sip:flood@{host}>;tag=fl{sent}\r\n\
                     To: <sip:999@127.0.{N}.1>\r\n\
                     Call-ID: flood-{port}-{sent}@{host}\r\n\
                     CSeq: 1 INVITE\r\n\
                     Contact: <sip:flood@{host}:{port}>\r\n\
                     Max-Forwards: 70\r\n\
                     Content-Length: 0\r\n\r\n"
                )
                .unwrap();
            } else {
                write!(
                    msg,
                    "GARBAGE {sent} \x01\x02 not SIP at all\r\nFoo: bar\r\n\r\n{}",
                    "x".repeat((sent % 200) as usize)
                )
                .unwrap();
            }
            // The counter moves on even when the kernel refuses: the rate is what was tried.
            if sock.send(&msg).is_err() {
                send_errors += 1;
            }
            sent += 1;
        }
    }
    let secs_taken = start.elapsed().as_secs_f64();
    // Late answers (503 retransmissions are not sent; a 404 to an admitted INVITE is) for a moment.
    sleep_ms(500);
    stop.store(true, Ordering::Relaxed);
    receiver.join().unwrap();
    let answers = answers.lock().unwrap().clone();
    FloodReport {
        sent: sent - send_errors,
        send_errors,
        secs: secs_taken,
        answers,
    }
}

/// Resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The node's front-door counters from its metrics endpoint.
fn door_metrics(addr: &str) -> String {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return format!("(metrics at {addr} unreachable)");
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body.lines()
        .filter(|l| {
            !l.starts_with('#')
                && (l.starts_with("medpool_sip_unknown_source")
                    || l.starts_with("medpool_sip_forbidden_sent")
                    || l.starts_with("medpool_sip_rate_limited")
                    || l.starts_with("medpool_sip_reserve_refused")
                    || l.starts_with("medpool_sip_answers_suppressed")
                    || l.starts_with("medpool_sip_unparsed")
                    || l.starts_with("medpool_sip_overloaded")
                    || l.starts_with("medpool_sip_rejected")
                    || l.starts_with("medpool_sip_parse_errors")
                    || l.starts_with("medpool_calls_started"))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// For each Call-ID of the caller's trace: (CSeq number, status) of every final answer received.
fn answers_by_call(caller: &SippProcess) -> BTreeMap<String, Vec<(u32, u16)>> {
    let mut calls: BTreeMap<String, Vec<(u32, u16)>> = BTreeMap::new();
    for m in caller.messages() {
        let entry = calls.entry(m.call_id.clone()).or_default();
        let Some(status) = m.status() else {
            continue;
        };
        if !m.received || status < 200 {
            continue;
        }
        let digits: String = m
            .cseq
            .chars()
            .skip_while(|c| !c.is_ascii_digit())
            .take_while(char::is_ascii_digit)
            .collect();
        if let Ok(n) = digits.parse() {
            entry.push((n, status));
        }
    }
    calls
}

fn run(flood_secs: u64, name: &str) {
    let dir = TestDir::new(name);
    let mut spec = PoolSpec::new(N);
    spec.node_max_calls = 10_000;
    spec.options_interval_ms = 1000;
    spec.down_after = 5;
    // Real calls dial 1...; the flood's INVITEs (999) match no route and are answered at once.
    spec.pattern = "^1".to_owned();
    let toml = spec.toml().replacen(
        "name = \"pbx\"\n",
        &format!("name = \"pbx\"\nrate = {PBX_RATE}\nburst = {PBX_RATE}\n"),
        1,
    );
    let gw = |k: u8| {
        Sipp::uas(&format!("gw{k}"), "uas_answer_hold.xml", &gw_ip(N, k))
            .arg("-buff_size")
            .arg(SIPP_BUFFER)
            .spawn(&dir)
    };
    let gw1 = gw(1);
    let gw2 = gw(2);
    let metrics = format!("{}:9152", node_ip(N));
    let mut node = MedpoolNode::start_with(
        &dir,
        N,
        &toml,
        &["--shutdown-grace", "3", "--metrics-listen", &metrics],
    );
    gw1.wait_for_probes(1, Duration::from_secs(10));
    gw2.wait_for_probes(1, Duration::from_secs(10));
    let rss_before = rss_kib(node.pid());

    // Calls start a second before the flood and go on a second after it.
    let calls = CPS * (flood_secs as u32 + 2);
    let mut pbx = caller("caller", N, 5070, "uac_hold_resume.xml")
        .calls(calls)
        .rate(CPS)
        .hold_ms(1500)
        .service("1000")
        .arg("-l")
        .arg("2000")
        .arg("-timeout")
        .arg("150s")
        .arg("-buff_size")
        .arg(SIPP_BUFFER)
        .spawn(&dir);
    sleep_ms(1000);
    let node_addr = node.addr();
    let unknown = {
        let target = node_addr.clone();
        std::thread::spawn(move || {
            flood(
                &format!("127.0.{N}.99:5070"),
                &target,
                FLOOD_RATE,
                flood_secs,
            )
        })
    };
    let spoofed = {
        let target = node_addr.clone();
        std::thread::spawn(move || {
            flood(
                &format!("127.0.{N}.1:6666"),
                &target,
                FLOOD_RATE,
                flood_secs,
            )
        })
    };
    let mut rss_peak = rss_before;
    let flood_end = Instant::now() + Duration::from_secs(flood_secs);
    while Instant::now() < flood_end {
        rss_peak = rss_peak.max(rss_kib(node.pid()));
        sleep_ms(250);
    }
    let unknown = unknown.join().unwrap();
    let spoofed = spoofed.join().unwrap();
    let outcome = pbx.wait(Duration::from_secs(120));
    node.assert_running();
    let rss_after = rss_kib(node.pid());
    rss_peak = rss_peak.max(rss_after);

    // Real calls: every one placed, how many completed (BYE answered 200), and for every call
    // whose INVITE was answered 200, every in-dialog request (re-INVITE CSeq 2 and 3, BYE CSeq 4).
    let by_call = answers_by_call(&pbx);
    let placed = by_call.len();
    let ok_for = |answers: &Vec<(u32, u16)>, cseq: u32| answers.contains(&(cseq, 200));
    let established: Vec<&String> = by_call
        .iter()
        .filter(|(_, a)| ok_for(a, 1))
        .map(|(id, _)| id)
        .collect();
    let completed = by_call.values().filter(|a| ok_for(a, 4)).count();
    let in_dialog_failed: Vec<String> = by_call
        .iter()
        .filter(|(_, a)| ok_for(a, 1) && !(ok_for(a, 2) && ok_for(a, 3) && ok_for(a, 4)))
        .map(|(id, a)| format!("{id}: {a:?}"))
        .collect();
    let forbidden = unknown.answers.get(&403).copied().unwrap_or(0);

    println!(
        "=== front door flood ({flood_secs} s), {} cores ===",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for (who, r) in [
        ("unknown source 127.0.152.99:5070", &unknown),
        ("trunk IP, other port 127.0.152.1:6666", &spoofed),
    ] {
        println!(
            "flooder {who}: target {FLOOD_RATE}/s, achieved {:.0}/s ({} sent in {:.1} s, {} refused by the local kernel); answers received by status: {:?}",
            r.rate(),
            r.sent,
            r.secs,
            r.send_errors,
            r.answers
        );
    }
    println!(
        "real calls: {calls} to place at {CPS}/s, {placed} placed, {} established, {completed} completed ({:.3} %), in-dialog failures: {}; SIPp exit code {:?}",
        established.len(),
        100.0 * completed as f64 / f64::from(calls),
        in_dialog_failed.len(),
        outcome.code
    );
    println!(
        "node RSS: before {} KiB, peak {} KiB, after {} KiB (bound {} KiB)",
        rss_before, rss_peak, rss_after, MAX_RSS_KIB
    );
    println!("403s received by the unknown source: {forbidden} (bound {MAX_403})");
    println!("node front-door counters:\n{}", door_metrics(&metrics));

    assert!(
        completed as f64 >= 0.999 * f64::from(calls),
        "only {completed} of {calls} real calls succeeded under the flood (need 99.9 %)\n{}",
        outcome.report
    );
    assert!(
        in_dialog_failed.is_empty(),
        "in-dialog requests of established calls failed under the flood:\n{}",
        in_dialog_failed.join("\n")
    );
    assert!(
        rss_peak < MAX_RSS_KIB,
        "the node's RSS reached {rss_peak} KiB under the flood (bound {MAX_RSS_KIB} KiB)"
    );
    assert!(
        forbidden <= MAX_403,
        "{forbidden} 403s left towards the flooding unknown source (bound {MAX_403})"
    );
    assert!(
        unknown.sent > 0 && spoofed.sent > 0,
        "the flooders sent nothing"
    );
}
