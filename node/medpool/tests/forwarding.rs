//! A two-node pool with real processes and SIPp, calls sent to node 1:
//! - with `local_calls = false`, calls whose shards node 0 owns are forwarded to node 0; each caller
//!   gets exactly one 100 Trying, sent by node 1 (the node its INVITE reached) once node 1 has
//!   learnt from node 0's answers that node 0 understands the mark; node 0 sends no 100 back across
//!   for those, which its `forward_out` counter shows. Addresses: 127.0.187.x.
//! - with the default (`local_calls`), node 1 sets every call up itself and no SIP message crosses
//!   to node 0. Addresses: 127.0.194.x.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

/// `name value` of the metric lines (labels kept as written, `{}` dropped).
fn metrics(addr: &str) -> BTreeMap<String, f64> {
    let text = scrape(addr);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    body.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.replace("{}", ""), v.parse().ok()?))
        })
        .collect()
}

fn get(m: &BTreeMap<String, f64>, name: &str) -> u64 {
    m.get(name).copied().unwrap_or(0.0) as u64
}

/// A two-node pool of real processes on 127.0.n.1 (node 0, which bootstraps) and .2 (node 1, which
/// joins), both with /metrics on :9100, and its two gateways (SIPp answering every call), formed
/// and settled.
struct Pair {
    node1: MedpoolNode,
    node0: MedpoolNode,
    metrics0: String,
    metrics1: String,
    _gws: [SippProcess; 2],
    dir: TestDir,
    _dir1: TestDir,
}

impl Pair {
    fn start(n: u8, cfg: &str, name: &str) -> Pair {
        let dir = TestDir::new(name);
        let raft0 = format!("127.0.{n}.1:7000");
        let metrics0 = format!("127.0.{n}.1:9100");
        let metrics1 = format!("127.0.{n}.2:9100");
        let node0 = MedpoolNode::start_with(
            &dir,
            n,
            cfg,
            &[
                "--shutdown-grace",
                "3",
                "--raft-listen",
                &raft0,
                "--node-id",
                "0",
                "--metrics-listen",
                &metrics0,
            ],
        );
        let dir1 = TestDir::new(&format!("{name}-1"));
        let node1 = {
            let sip1 = format!("127.0.{n}.2:5060");
            let raft1 = format!("127.0.{n}.2:7000");
            let args = [
                "--shutdown-grace",
                "3",
                "--raft-listen",
                &raft1,
                "--node-id",
                "1",
                "--join",
                &raft0,
                "--metrics-listen",
                &metrics1,
            ];
            MedpoolNode::start_at(&dir1, n, &sip1, cfg, &args, &[])
        };
        let gws = [
            gateway(&dir, n, 1, "uas_answer.xml"),
            gateway(&dir, n, 2, "uas_answer.xml"),
        ];
        let formed = wait_until(Duration::from_secs(15), || {
            node0.log().contains("shards released") || node1.log().contains("shards adopted")
        });
        assert!(
            formed,
            "the pool did not form:\n{}\n{}",
            node0.log(),
            node1.log()
        );
        sleep_ms(1500);
        Pair {
            node1,
            node0,
            metrics0,
            metrics1,
            _gws: gws,
            dir,
            _dir1: dir1,
        }
    }

    /// `calls` short calls (8 a second, held 200 ms) from a SIPp caller to node 1, waited for;
    /// panics with both nodes' logs unless every one succeeded.
    fn calls_through_node1(&self, n: u8, calls: u32) -> SippProcess {
        let mut uac = Sipp::uac(
            "caller",
            "uac_call.xml",
            &node_ip(n),
            5070,
            &format!("127.0.{n}.2:5060"),
        )
        .calls(calls)
        .rate(8)
        .hold_ms(200)
        .spawn(&self.dir);
        let out = uac.wait(Duration::from_secs(60));
        assert!(
            out.success(),
            "{}\n--- node0\n{}\n--- node1\n{}",
            out.report,
            self.node0.log(),
            self.node1.log()
        );
        uac
    }
}

#[test]
fn a_forwarded_call_gets_one_100_from_the_node_it_reached_and_none_crosses_back() {
    let n = 187;
    // Every new call goes to its Call-ID's owner (not set up where it arrives).
    let cfg = PoolSpec::new(n).forwarding().toml();
    let pair = Pair::start(n, &cfg, "forward-trying");
    let (metrics0, metrics1) = (&pair.metrics0, &pair.metrics1);
    let calls = 24;
    let uac = pair.calls_through_node1(n, calls);
    // Every call: exactly one 100 Trying.
    let mut trying: BTreeMap<String, usize> = BTreeMap::new();
    for c in uac.calls_sent() {
        trying.insert(c, 0);
    }
    for m in uac.messages() {
        if m.received && m.status() == Some(100) {
            *trying.entry(m.call_id).or_insert(0) += 1;
        }
    }
    assert_eq!(trying.len(), calls as usize, "{trying:?}");
    assert!(
        trying.values().all(|&k| k == 1),
        "not exactly one 100 per call: {trying:?}"
    );
    sleep_ms(500);
    let m0 = metrics(metrics0);
    let m1 = metrics(metrics1);
    // Node 0 took the calls node 1 forwarded (node 1 took the rest itself).
    let forwarded = get(&m0, "medpool_calls_started_total");
    let answered_here = get(&m1, "medpool_trying_for_forwarded_total");
    let out0 = get(&m0, "medpool_pool_stage_runs_total{stage=\"forward_out\"}");
    let in1 = get(&m1, "medpool_pool_stage_runs_total{stage=\"forward_in\"}");
    let retrans0 = get(&m0, "medpool_sip_retransmissions_total");
    let report = format!(
        "forwarded calls {forwarded}, 100s sent by node 1 for them {answered_here}, \
         node 0 forward_out {out0}, node 1 forward_in {in1}, node 0 retransmissions {retrans0}"
    );
    assert!(
        forwarded >= 2 && forwarded < u64::from(calls),
        "about half the calls should be node 0's: {report}"
    );
    // Only INVITEs forwarded before node 1 heard from node 0 go unmarked (node 0 answers those
    // 100 itself); at 8 calls a second, the first answer is back before the second call.
    assert!(
        answered_here >= 1 && answered_here + 2 >= forwarded,
        "node 1 did not answer the forwarded INVITEs 100: {report}"
    );
    // What node 0 sends back across: the 180 and the 200 of each forwarded call and the 200 to
    // its BYE (the caller sends ACK and BYE to node 1 too), a 100 only for the unmarked INVITEs,
    // and any retransmission. Before the 100 moved to node 1, every forwarded call sent four.
    assert_eq!(in1, out0, "{report}");
    let expected = 3 * forwarded + (forwarded - answered_here);
    assert!(
        out0 >= expected && out0 <= expected + retrans0,
        "node 0 sent back other than 180, 200 and the BYE's 200 a call (+ a 100 for each \
         unmarked INVITE): {report}"
    );
    drop(pair);
}

#[test]
fn with_local_calls_every_call_is_set_up_by_the_node_it_reached_and_nothing_crosses() {
    // The same pair with the default configuration: node 1 sets every call it receives up itself,
    // in shards it owns, though about half of the Call-IDs hash to node 0's shards.
    let n = 194;
    let pair = Pair::start(n, &PoolSpec::new(n).toml(), "forward-local");
    let calls = 24;
    pair.calls_through_node1(n, calls);
    sleep_ms(500);
    let m0 = metrics(&pair.metrics0);
    let m1 = metrics(&pair.metrics1);
    let started = (
        get(&m0, "medpool_calls_started_total"),
        get(&m1, "medpool_calls_started_total"),
    );
    let crossed = (
        get(&m1, "medpool_pool_stage_runs_total{stage=\"forward_out\"}"),
        get(&m0, "medpool_pool_stage_runs_total{stage=\"forward_in\"}"),
    );
    // Node 0 owns about half of the 1,024 shards (it released them to node 1 when the pair
    // formed): forwarded by Call-ID, about half of the 24 calls would have started on node 0
    // (12 of 24 with `local_calls = false`: checked), and none with a chance of 2^-24.
    assert_eq!(
        started,
        (0, u64::from(calls)),
        "calls started on (node 0, node 1); SIP messages node 1 sent to node 0 and node 0 took: {crossed:?}"
    );
    assert_eq!(crossed, (0, 0), "a SIP message crossed to node 0");
    drop(pair);
}
