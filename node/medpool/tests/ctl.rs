//! `medpool ctl` end to end on a 3-node pool of real `medpool serve` processes with SIPp callers
//! and gateways: status shows three nodes and the leader; a call shows up in `calls ls` and
//! `calls show`, and `calls hangup` ends it (SIPp sees the BYE); `gateways disable` stops new calls
//! to that gateway; `config apply` of a broken file is refused with the field named and changes
//! nothing; `node drain` moves every shard off a node with no call lost; the exit codes scripts
//! rely on (0 ok, 2 usage, 3 unreachable, 4 refused).
//!
//! Test number (loopback block 127.0.n.x): 211.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs
)]

mod admin_common;
mod common;

use std::time::Duration;

use admin_common::{TestPool, ctl};
use common::{PoolSpec, Sipp, gateway, wait_until};

const TOKEN: &str = "ctl-test-token-91ab";

/// Call-IDs (leg A) that `ctl calls ls -o json` lists, from node `id`.
fn call_ids(pool: &TestPool, id: u64) -> Vec<String> {
    let mut v = serde_json::Value::Null;
    for _ in 0..5 {
        v = pool
            .ctl(id, &["calls", "ls", "--all", "-o", "json"])
            .expect(0)
            .json();
        // Every node answered (a slow node is reported unavailable: ask again).
        if v["unavailable_nodes"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
    }
    v["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["call_id"].as_str().unwrap().to_owned())
        .collect()
}

fn shards(pool: &TestPool, ask: u64, node: u64) -> u64 {
    pool.status(ask)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node)
        .map_or(0, |n| n["shards"].as_u64().unwrap())
}

#[test]
fn ctl_runs_a_three_node_pool() {
    let n = 211;
    let toml = PoolSpec::new(n).toml();
    let pool = TestPool::start("ctl-pool", n, 3, &toml, Some(TOKEN));
    let gw1 = gateway(&pool.dir, n, 1, "uas_answer.xml");
    let gw2 = gateway(&pool.dir, n, 2, "uas_answer.xml");
    gw1.wait_for_probes(1, Duration::from_secs(10));
    gw2.wait_for_probes(1, Duration::from_secs(10));
    let caller_ip = format!("127.0.{n}.1");
    let entry = format!("127.0.{n}.1:5060");

    // status: three nodes and the leader, as a table and as JSON, from any node.
    let table = pool.ctl(2, &["status"]).expect(0);
    let leader = pool.leader(2);
    assert!(table.stdout.contains("3 nodes"), "{table:?}");
    assert!(
        table.stdout.contains(&format!("leader {leader}")),
        "{table:?}"
    );
    let rows: Vec<&str> = table
        .stdout
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert_eq!(rows.len(), 3, "{table:?}");
    assert_eq!(rows.iter().filter(|r| r.contains(" leader ")).count(), 1);
    assert!(rows.iter().all(|r| r.contains("active")));
    eprintln!("--- ctl status ---\n{}", table.stdout);
    // `status --local`: the answering node's own view (what scripts poll): the same three nodes.
    let local = pool
        .ctl(3, &["-o", "json", "status", "--local"])
        .expect(0)
        .json();
    assert_eq!(local["node_id"], 3, "{local}");
    assert_eq!(local["nodes"].as_array().map(Vec::len), Some(3), "{local}");
    assert_eq!(local["unowned_shards"], 0, "{local}");

    // A call placed by SIPp shows in `calls ls` and `calls show`; `calls hangup` ends it and the
    // caller sees the BYE (its scenario waits for it and answers 200).
    let mut caller = Sipp::uac(
        "caller",
        "uac_call_remote_bye.xml",
        &caller_ip,
        5070,
        &entry,
    )
    .arg("-recv_timeout")
    .arg("60000")
    .spawn(&pool.dir);
    let mut ids = Vec::new();
    assert!(
        wait_until(Duration::from_secs(15), || {
            ids = call_ids(&pool, 3);
            ids.len() == 1
        }),
        "the call did not show in `calls ls`"
    );
    let ls = pool.ctl(3, &["calls", "ls"]).expect(0);
    assert!(
        ls.stdout.contains(&ids[0]) && ls.stdout.contains("1 calls"),
        "{ls:?}"
    );
    eprintln!("--- ctl calls ls ---\n{}", ls.stdout);
    assert!(wait_until(Duration::from_secs(10), || {
        let r = pool.ctl(1, &["calls", "show", &ids[0], "-o", "json"]);
        r.code == 0 && r.json()["state"] == "confirmed"
    }));
    let show = pool.ctl(1, &["calls", "show", &ids[0]]).expect(0);
    for want in [
        "state     confirmed",
        "from      pbx",
        "leg A",
        "leg B",
        "attempt 1",
    ] {
        assert!(show.stdout.contains(want), "{want:?} missing\n{show:?}");
    }
    eprintln!("--- ctl calls show ---\n{}", show.stdout);
    let hangup = pool.ctl(2, &["calls", "hangup", &ids[0]]).expect(0);
    eprintln!("--- ctl calls hangup ---\n{}", hangup.stdout);
    caller.expect_success(Duration::from_secs(15));
    assert_eq!(caller.dialogs_with_request("BYE"), 1);
    assert!(wait_until(Duration::from_secs(5), || call_ids(&pool, 1).is_empty()));
    pool.ctl(1, &["calls", "show", &ids[0]]).expect(4);
    pool.ctl(1, &["calls", "hangup", "no-such-call"]).expect(4);

    // `gateways disable gw1`: new calls go to gw2 only; `enable` brings gw1 back.
    let gw1_before = gw1.calls_received().len();
    let gw2_before = gw2.calls_received().len();
    let out = pool.ctl(1, &["gateways", "disable", "gw1"]).expect(0);
    assert!(
        out.stdout.contains("gw1 disabled on nodes 1, 2, 3"),
        "{out:?}"
    );
    let ls = pool.ctl(3, &["gateways", "ls"]).expect(0);
    eprintln!("--- ctl gateways ls ---\n{}", ls.stdout);
    let disabled = ls
        .stdout
        .lines()
        .filter(|l| l.starts_with("gw1") && l.contains("disabled"))
        .count();
    assert_eq!(disabled, 3, "{ls:?}");
    Sipp::uac("burst", "uac_call.xml", &caller_ip, 5071, &entry)
        .calls(6)
        .rate(20)
        .hold_ms(100)
        .spawn(&pool.dir)
        .expect_success(Duration::from_secs(30));
    assert_eq!(
        gw1.calls_received().len(),
        gw1_before,
        "gw1 got calls while disabled"
    );
    assert_eq!(gw2.calls_received().len(), gw2_before + 6);
    pool.ctl(2, &["gateways", "enable", "gw1"]).expect(0);
    pool.ctl(2, &["gateways", "drain", "gw9"]).expect(4);

    // `config apply` of a broken file: refused (exit 4), the field named, nothing changed.
    let broken = pool.dir.file("broken.toml");
    std::fs::write(
        &broken,
        toml.replace("trunks = [\"pbx\"]", "trunks = [\"pbx9\"]"),
    )
    .unwrap();
    let before = pool
        .ctl(1, &["config", "get", "-o", "json"])
        .expect(0)
        .json();
    let refused = pool
        .ctl(2, &["config", "apply", "-f", &broken.display().to_string()])
        .expect(4);
    assert!(
        refused.stderr.contains("route[0].trunks[0]") && refused.stderr.contains("pbx9"),
        "{refused:?}"
    );
    eprintln!("--- ctl config apply (broken) ---\n{}", refused.stderr);
    let after = pool
        .ctl(3, &["config", "get", "-o", "json"])
        .expect(0)
        .json();
    assert_eq!(before, after);
    assert_eq!(after["version"], 1);
    pool.ctl(
        1,
        &["config", "validate", "-f", &broken.display().to_string()],
    )
    .expect(4);
    // A good file: validated, applied with its diff, stale versions refused.
    let good = pool.dir.file("good.toml");
    std::fs::write(&good, toml.replace("max_calls = 100", "max_calls = 120")).unwrap();
    let v = pool
        .ctl(
            1,
            &["config", "validate", "-f", &good.display().to_string()],
        )
        .expect(0);
    assert!(v.stdout.contains("~ node: max_calls: 100 -> 120"), "{v:?}");
    let applied = pool
        .ctl(3, &["config", "apply", "-f", &good.display().to_string()])
        .expect(0);
    assert!(
        applied.stdout.contains("configuration version 2 applied"),
        "{applied:?}"
    );
    eprintln!("--- ctl config apply ---\n{}", applied.stdout);
    pool.ctl(
        1,
        &[
            "config",
            "apply",
            "-f",
            &good.display().to_string(),
            "--expected-version",
            "1",
        ],
    )
    .expect(4);

    // `calls watch` sees a call start, be answered and end.
    let watch = std::thread::spawn({
        let server = pool.node(3).admin();
        move || {
            ctl(
                &server,
                Some(TOKEN),
                &[
                    "calls", "watch", "--count", "3", "--for", "20", "-o", "json",
                ],
            )
        }
    });
    std::thread::sleep(Duration::from_millis(500));
    Sipp::uac("watched", "uac_call.xml", &caller_ip, 5073, &entry)
        .calls(1)
        .hold_ms(200)
        .spawn(&pool.dir)
        .expect_success(Duration::from_secs(15));
    let w = watch.join().unwrap().expect(0);
    let kinds: Vec<String> = w
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].to_string())
        .collect();
    assert_eq!(
        kinds,
        ["\"call_started\"", "\"call_answered\"", "\"call_ended\""],
        "{w:?}"
    );

    // `node drain` with calls up: every shard leaves the node, no call is lost.
    let drained = (1..=3).find(|i| *i != leader).unwrap();
    let mut long = Sipp::uac("long", "uac_call.xml", &caller_ip, 5072, &entry)
        .calls(8)
        .rate(20)
        .hold_ms(6000)
        .spawn(&pool.dir);
    assert!(
        wait_until(Duration::from_secs(10), || {
            let r = pool.ctl(1, &["calls", "ls", "-o", "json"]);
            let v = r.json();
            let calls = v["calls"].as_array().unwrap();
            v["unavailable_nodes"].as_array().is_some_and(Vec::is_empty)
                && calls.len() == 8
                && calls.iter().all(|c| c["state"] == "confirmed")
        }),
        "8 confirmed calls expected"
    );
    let owned: usize = pool.ctl(1, &["calls", "ls", "-o", "json"]).json()["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["node_id"] == drained)
        .count();
    let out = pool
        .ctl(1, &["node", "drain", &drained.to_string(), "--wait"])
        .expect(0);
    assert!(out.stdout.contains("drained"), "{out:?}");
    eprintln!(
        "--- ctl node drain (node {drained} owned {owned} of 8 calls) ---\n{}",
        out.stdout
    );
    assert_eq!(shards(&pool, 3, drained), 0);
    let status = pool.ctl(1, &["status"]).expect(0);
    eprintln!("--- ctl status (drained) ---\n{}", status.stdout);
    assert!(status.stdout.contains("draining"), "{status:?}");
    long.expect_success(Duration::from_secs(30));
    pool.ctl(2, &["node", "undrain", &drained.to_string()])
        .expect(0);
    assert!(wait_until(Duration::from_secs(20), || shards(
        &pool, 1, drained
    ) > 0));

    // `leader transfer`, `node remove` refused while the node owns shards.
    let to = (1..=3).find(|i| *i != leader).unwrap();
    let out = pool
        .ctl(to, &["leader", "transfer", "--to", &to.to_string()])
        .expect(0);
    assert!(
        out.stdout.contains(&format!("leader: node {to}")),
        "{out:?}"
    );
    let out = pool
        .ctl(1, &["node", "remove", &leader.to_string()])
        .expect(4);
    assert!(out.stderr.contains("still owns"), "{out:?}");

    // Exit codes: unreachable 3, bad token 4, usage 2.
    assert_eq!(
        ctl(&format!("127.0.{n}.9:7001"), Some(TOKEN), &["status"]).code,
        3
    );
    let bad = ctl(&pool.node(1).admin(), Some("wrong-token"), &["status"]);
    assert_eq!(bad.code, 4, "{bad:?}");
    assert!(bad.stderr.contains("unauthenticated"), "{bad:?}");
    assert_eq!(ctl(&pool.node(1).admin(), None, &["status"]).code, 4);
    assert_eq!(pool.ctl(1, &["calls", "frobnicate"]).code, 2);
    assert_eq!(
        pool.ctl(1, &["config", "apply", "-f", "/nonexistent/medpool.toml"])
            .code,
        2
    );
    drop(gw1);
    drop(gw2);
}
