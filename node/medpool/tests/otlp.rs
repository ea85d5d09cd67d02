//! Traces and metrics end to end: a real OTLP receiver (a tonic `TraceService` server from
//! `opentelemetry-proto`) collects what real `medpool serve` processes export while SIPp places calls;
//! `/metrics` is scraped and parsed; and a collector that is absent or never answers must not change
//! the call success rate or hold the node's shutdown.

#![allow(clippy::unwrap_used, clippy::panic, missing_docs)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// One exported span, flattened.
#[derive(Debug, Clone)]
struct Got {
    node: String,
    name: String,
    trace: Vec<u8>,
    span: Vec<u8>,
    parent: Vec<u8>,
    attrs: BTreeMap<String, String>,
}

#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<Got>>>,
}

fn value(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut out = self.spans.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let node = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|a| a.key == "medpool.node"))
                .map(|a| value(&a.value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for sp in ss.spans {
                    out.push(Got {
                        node: node.clone(),
                        name: sp.name.clone(),
                        trace: sp.trace_id.clone(),
                        span: sp.span_id.clone(),
                        parent: sp.parent_span_id.clone(),
                        attrs: sp
                            .attributes
                            .iter()
                            .map(|a| (a.key.clone(), value(&a.value)))
                            .collect(),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// Starts a receiver on `addr` in its own thread and runtime.
fn receiver(addr: &str) -> Receiver {
    let r = Receiver::default();
    let svc = r.clone();
    let addr: std::net::SocketAddr = addr.parse().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(svc))
                .serve(addr)
                .await
                .unwrap();
        });
    });
    sleep_ms(200);
    r
}

const OTEL: &[(&str, &str)] = &[
    ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000"),
];

fn envs(endpoint: &str) -> Vec<(&str, &str)> {
    let mut v = OTEL.to_vec();
    v.push(("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint));
    v
}

#[test]
fn a_call_is_one_trace_with_the_expected_span_tree() {
    let n = 51;
    let dir = TestDir::new("otlp-tree");
    let rx = receiver(&format!("127.0.{n}.9:4317"));
    let endpoint = format!("http://127.0.{n}.9:4317");
    let node = MedpoolNode::start_env(
        &dir,
        n,
        &PoolSpec::new(n).toml(),
        &["--shutdown-grace", "3"],
        &envs(&endpoint),
    );
    let _gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let _gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    sleep_ms(700);
    let out = caller("caller", n, 5070, "uac_call.xml")
        .calls(1)
        .hold_ms(300)
        .spawn(&dir)
        .wait(Duration::from_secs(30));
    assert!(out.success(), "{}", out.report);
    // The call span is exported when the call ends.
    let found = wait_until(Duration::from_secs(10), || {
        rx.spans.lock().unwrap().iter().any(|s| s.name == "call")
    });
    assert!(found, "no call span exported; node log:\n{}", node.log());
    let spans = rx.spans.lock().unwrap().clone();
    let call = spans.iter().find(|s| s.name == "call").unwrap();
    let trace: Vec<&Got> = spans.iter().filter(|s| s.trace == call.trace).collect();
    assert!(
        call.parent.is_empty(),
        "the call span is the root of its trace"
    );
    // Legs are children of the call; the INVITE transaction is a child of leg B.
    let legs: Vec<&&Got> = trace.iter().filter(|s| s.name == "leg").collect();
    assert!(
        legs.iter()
            .any(|l| l.attrs.get("leg.side").map(String::as_str) == Some("A")
                && l.parent == call.span)
    );
    let leg_b = legs
        .iter()
        .find(|l| l.attrs.get("leg.side").map(String::as_str) == Some("B"))
        .expect("a leg B span");
    assert_eq!(leg_b.parent, call.span);
    assert!(
        leg_b
            .attrs
            .get("leg.trunk")
            .is_some_and(|t| t == "gw1" || t == "gw2")
    );
    assert!(trace.iter().any(|s| s.name == "sip.transaction"
        && s.parent == leg_b.span
        && s.attrs.get("sip.method").map(String::as_str) == Some("INVITE")
        && s.attrs.get("sip.status").map(String::as_str) == Some("200")));
    // The caller's BYE was relayed to the gateway: a transaction span on leg B... or answered locally.
    for key in [
        "sip.call_id",
        "call.shard",
        "call.inbound_trunk",
        "call.gateway",
        "call.b_call_id",
        "sip.status",
    ] {
        assert!(
            call.attrs.contains_key(key),
            "call span lacks {key}: {:?}",
            call.attrs
        );
    }
    assert_eq!(call.attrs["sip.status"], "200");
    assert_eq!(call.attrs["call.inbound_trunk"], "pbx");
    assert!(call.attrs["call.b_call_id"].starts_with("mp"));
    // Every span of this call is in this one trace.
    let call_traces: BTreeSet<&Vec<u8>> = spans
        .iter()
        .filter(|s| s.name == "call")
        .map(|s| &s.trace)
        .collect();
    assert_eq!(call_traces.len(), 1, "one call, one trace");
    drop(node);
}

#[test]
fn a_call_forwarded_between_two_nodes_is_one_trace() {
    let n = 52;
    let dir = TestDir::new("otlp-forward");
    let rx = receiver(&format!("127.0.{n}.9:4317"));
    let endpoint = format!("http://127.0.{n}.9:4317");
    let raft0 = format!("127.0.{n}.1:7000");
    // Node 0 bootstraps; node 1 (127.0.n.2) joins. Calls go to node 1, so calls whose shard node 0
    // owns are forwarded there (`local_calls = false`: not set up where they arrive).
    let node0 = MedpoolNode::start_env(
        &dir,
        n,
        &PoolSpec::new(n).forwarding().toml(),
        &[
            "--shutdown-grace",
            "3",
            "--raft-listen",
            &raft0,
            "--node-id",
            "0",
        ],
        &envs(&endpoint),
    );
    let dir1 = TestDir::new("otlp-forward-1");
    let cfg = PoolSpec::new(n).forwarding().toml();
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
        ];
        MedpoolNode::start_at(&dir1, n, &sip1, &cfg, &args, &envs(&endpoint))
    };
    let _gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let _gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    // Wait for the shard map to cover both nodes.
    let both = wait_until(Duration::from_secs(15), || {
        node0.log().contains("shards released") || node1.log().contains("shards adopted")
    });
    assert!(
        both,
        "the pool did not form:\n{}\n{}",
        node0.log(),
        node1.log()
    );
    sleep_ms(1500);
    let out = Sipp::uac(
        "caller",
        "uac_call.xml",
        &node_ip(n),
        5070,
        &format!("127.0.{n}.2:5060"),
    )
    .calls(8)
    .rate(8)
    .hold_ms(200)
    .spawn(&dir)
    .wait(Duration::from_secs(40));
    assert!(
        out.success(),
        "{}\n--- node0\n{}\n--- node1\n{}",
        out.report,
        node0.log(),
        node1.log()
    );
    let joined = wait_until(Duration::from_secs(10), || {
        let spans = rx.spans.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.name == "sip.forward" && s.node == "1")
            .any(|f| {
                spans.iter().any(|c| {
                    c.name == "call" && c.node == "0" && c.trace == f.trace && c.parent == f.span
                })
            })
    });
    let spans = rx.spans.lock().unwrap().clone();
    let nodes: BTreeSet<&str> = spans.iter().map(|s| s.node.as_str()).collect();
    assert!(
        joined,
        "no trace with node 1's sip.forward as the parent of node 0's call span; nodes seen {nodes:?}, span names {:?}",
        spans
            .iter()
            .map(|s| (&s.node, &s.name))
            .collect::<BTreeSet<_>>()
    );
    drop(node1);
    drop(node0);
}

/// Places calls with trace export pointing at `endpoint` and returns (SIPp success, shutdown time).
fn calls_with_endpoint(n: u8, endpoint: &str) -> (bool, Duration, String) {
    let dir = TestDir::new(&format!("otlp-dead-{n}"));
    let node = MedpoolNode::start_env(
        &dir,
        n,
        &PoolSpec::new(n).toml(),
        &["--shutdown-grace", "3"],
        &envs(endpoint),
    );
    let _gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let _gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    sleep_ms(700);
    let out = caller("caller", n, 5070, "uac_call.xml")
        .calls(20)
        .rate(20)
        .hold_ms(200)
        .spawn(&dir)
        .wait(Duration::from_secs(40));
    let t0 = Stopwatch::start();
    let log = node.log();
    let status = node.stop();
    let took = t0.elapsed();
    assert!(status.is_some(), "the node did not exit on SIGTERM");
    (out.success(), took, format!("{}\n{log}", out.report))
}

#[test]
fn a_missing_or_silent_collector_changes_nothing_and_shutdown_stays_bounded() {
    // Nothing listens on this port.
    let (ok, took, report) = calls_with_endpoint(53, "http://127.0.53.9:4317");
    assert!(ok, "calls failed with no collector:\n{report}");
    assert!(
        took < Duration::from_secs(12),
        "shutdown took {took:?} with no collector"
    );
    // A collector that accepts connections and never answers.
    let silent = std::net::TcpListener::bind("127.0.54.9:4317").unwrap();
    let hold = std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming().take(16).flatten() {
            held.push(c);
        }
        sleep_ms(30_000);
    });
    let (ok, took, report) = calls_with_endpoint(54, "http://127.0.54.9:4317");
    assert!(ok, "calls failed with a silent collector:\n{report}");
    assert!(
        took < Duration::from_secs(12),
        "shutdown took {took:?} with a silent collector"
    );
    drop(hold);
}

#[test]
fn metrics_count_the_calls_placed() {
    let n = 55;
    let dir = TestDir::new("metrics");
    let metrics = format!("127.0.{n}.1:9100");
    let node = MedpoolNode::start_with(
        &dir,
        n,
        &PoolSpec::new(n).toml(),
        &["--shutdown-grace", "3", "--metrics-listen", &metrics],
    );
    let _gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let _gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    sleep_ms(700);
    let out = caller("caller", n, 5070, "uac_call.xml")
        .calls(6)
        .rate(10)
        .hold_ms(200)
        .spawn(&dir)
        .wait(Duration::from_secs(30));
    assert!(out.success(), "{}", out.report);
    sleep_ms(500);
    let text = scrape(&metrics);
    let m = parse(&text);
    assert_eq!(
        m.get("medpool_calls_started_total").copied(),
        Some(6.0),
        "{text}"
    );
    assert_eq!(m.get("medpool_calls_answered_total").copied(), Some(6.0));
    assert_eq!(m.get("medpool_calls_ended_total").copied(), Some(6.0));
    assert_eq!(m.get("medpool_active_calls").copied(), Some(0.0));
    assert_eq!(
        m.get("medpool_sip_requests_total{direction=\"in\",method=\"INVITE\"}")
            .copied(),
        Some(6.0)
    );
    assert_eq!(
        m.get("medpool_sip_requests_total{direction=\"out\",method=\"INVITE\"}")
            .copied(),
        Some(6.0)
    );
    assert_eq!(
        m.get("medpool_sip_requests_total{direction=\"in\",method=\"BYE\"}")
            .copied(),
        Some(6.0)
    );
    assert_eq!(
        m.get("medpool_post_dial_delay_seconds_count").copied(),
        Some(6.0)
    );
    let per_gw: f64 = ["gw1", "gw2"]
        .iter()
        .map(|g| {
            m.get(&format!("medpool_gateway_up{{gateway=\"{g}\"}}"))
                .copied()
                .unwrap_or(-1.0)
        })
        .sum();
    assert_eq!(per_gw, 2.0, "both gateways up");
    drop(node);
}

fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned()
}

/// `name{labels} value` lines into a map (labels kept as written).
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.replace("{}", ""), v.parse().ok()?))
        })
        .collect()
}
