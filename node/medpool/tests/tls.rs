//! SIP over TLS end to end through a running `medpool serve` (addresses 127.0.161.0/24), with
//! certificates from a test CA the test makes (medpool-simpeer's `pki`) and medpool-simpeer's TLS
//! caller and gateway (Debian's SIPp is built without TLS): calls set up, re-INVITEd and hung up
//! over TLS on both legs (the caller's trunk requires a client certificate naming `fe.test`); a
//! caller from the trunk's own address with a certificate that does not match gets 403; a node
//! certificate replaced on disk serves the next connection, while the open one carries on;
//! `calls show` gives each leg's transport, TLS version and the caller's certificate subject, and
//! the metrics count the handshakes per trunk and the refused request.
#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{MedpoolNode, TestDir, ctl_json, scrape};
use medpool_simpeer::{Caller, CallerConfig, Gateway, GatewayConfig, Outcome, TestCa, TlsOptions};

const NODE: &str = "127.0.161.1";
const GW: &str = "127.0.161.2";
const FE: &str = "127.0.161.3";
const ADMIN: &str = "127.0.161.1:7001";
const METRICS: &str = "127.0.161.1:9161";

fn config() -> String {
    format!(
        r#"[node]
unknown_source = "reject"

[[trunk]]
name = "fe"
address = "{FE}"
side = "internal"
transport = "tls"
match_any_port = true
tls_client_names = ["fe.test"]

[[trunk]]
name = "gw1"
address = "{GW}"
port = 5061
side = "gateway"
transport = "tls"
tls_name = "gw.test"
options_interval_ms = 0

[[route]]
name = "out"
pattern = '.*'
trunks = ["gw1"]
"#
    )
}

fn tls(ca: &TestCa, file: &str, names: &[&str], server_name: &str) -> TlsOptions {
    let f = ca.issue(file, names).unwrap();
    TlsOptions {
        cert: f.cert,
        key: f.key,
        ca: ca.ca.clone(),
        server_name: Some(server_name.to_owned()),
        sips: false,
    }
}

async fn caller(opts: TlsOptions, seed: u64) -> Caller {
    let target: SocketAddr = format!("{NODE}:5061").parse().unwrap();
    let mut cfg = CallerConfig::new(format!("{FE}:0").parse().unwrap(), target, seed);
    cfg.tls = Some(opts);
    cfg.timeout = Duration::from_secs(8);
    Caller::start(cfg).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_tls_mutual_tls_refusal_and_certificate_reload() {
    let dir = TestDir::new("tls");
    let ca = TestCa::new(dir.path(), "pool").unwrap();
    let node_cert = ca.issue("node", &["medpool.test", NODE]).unwrap();
    let gw_opts = tls(&ca, "gw", &["gw.test"], "medpool.test");
    let mut gw_cfg = GatewayConfig::new(format!("{GW}:5061").parse().unwrap());
    gw_cfg.tls = Some(gw_opts);
    let gw = Gateway::start(gw_cfg).await.unwrap();
    let (cert, key, cafile) = (
        node_cert.cert.display().to_string(),
        node_cert.key.display().to_string(),
        ca.ca.display().to_string(),
    );
    let node_sip = format!("{NODE}:5060");
    let node = MedpoolNode::start_at(
        &dir,
        161,
        &node_sip,
        &config(),
        &[
            "--shutdown-grace",
            "3",
            "--sip-tls-cert",
            &cert,
            "--sip-tls-key",
            &key,
            "--sip-tls-ca",
            &cafile,
            "--metrics-listen",
            METRICS,
        ],
        &[],
    );

    // Calls set up, re-INVITEd and hung up over TLS on both legs.
    let fe = caller(tls(&ca, "fe", &["fe.test"], "medpool.test"), 1).await;
    assert_eq!(
        fe.place(2).await,
        2,
        "both calls answered; node log:\n{}",
        node.log()
    );
    assert_eq!(gw.counts().calls, 2);
    assert_eq!(fe.reinvite_all().await, 2, "both calls re-INVITEd");

    // What operators see: each leg's transport, TLS version and the caller's certificate subject.
    let list = ctl_json(ADMIN, &["calls", "list"]);
    let id = list
        .pointer("/calls/0/call_id")
        .or_else(|| list.pointer("/0/call_id"))
        .and_then(|v| v.as_str())
        .unwrap_or_else(|| panic!("no call in {list}"))
        .to_owned();
    let show = ctl_json(ADMIN, &["calls", "show", &id]);
    for leg in ["a", "b"] {
        assert_eq!(show[leg]["transport"], "tls", "leg {leg}: {show}");
        let version = show[leg]["tls_version"].as_str().unwrap_or_default();
        assert!(
            version == "TLSv1.3" || version == "TLSv1.2",
            "leg {leg}: {show}"
        );
    }
    let subject = show["a"]["tls_peer_subject"].as_str().unwrap_or_default();
    assert!(subject.contains("fe"), "the caller's certificate: {show}");

    // From the trunk's own address, a certificate without the trunk's name: 403.
    let intruder = caller(tls(&ca, "intruder", &["intruder.test"], "medpool.test"), 2).await;
    assert_eq!(intruder.place(1).await, 0);
    let outcome = intruder.ledger()[0].setup;
    assert_eq!(outcome, Some(Outcome::Final(403)), "the intruder got 403");
    assert_eq!(gw.counts().calls, 2, "nothing reached the gateway");

    // The handshakes on the metrics: the caller's trunk in, the gateway's out; the intruder's
    // handshake succeeded (its certificate is the pool CA's) and its request was refused.
    let metrics = scrape(METRICS);
    let value = |needle: &[&str]| -> u64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("medpool_tls_handshakes") && needle.iter().all(|n| l.contains(n))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    assert!(
        value(&["trunk=\"fe\"", "direction=\"inbound\"", "result=\"ok\""]) >= 2,
        "{metrics}"
    );
    assert!(
        value(&["trunk=\"gw1\"", "direction=\"outbound\"", "result=\"ok\""]) >= 1,
        "{metrics}"
    );
    let refused = metrics
        .lines()
        .find(|l| l.starts_with("medpool_tls_client_cert_refused"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    // The INVITE, and the ACK of its 403 when it has arrived by now.
    assert!(
        matches!(refused, Some(n) if (1.0..=2.0).contains(&n)),
        "{metrics}"
    );

    // The node's certificate replaced on disk (now for another name): the next connection gets
    // it; the open one is not dropped.
    tokio::time::sleep(Duration::from_millis(20)).await;
    ca.issue("node", &["medpool2.test", NODE]).unwrap();
    let renewed = caller(tls(&ca, "fe2", &["fe.test"], "medpool2.test"), 3).await;
    assert_eq!(
        renewed.place(1).await,
        1,
        "a caller that only trusts the new name got through; node log:\n{}",
        node.log()
    );
    assert_eq!(
        fe.hangup_all().await,
        2,
        "the first caller's calls, on its connection opened before the change, hang up"
    );
    assert_eq!(renewed.hangup_all().await, 1);
    drop(node);
}
