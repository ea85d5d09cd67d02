//! The admin gRPC API (`medpool.admin.v1`), grpc.health.v1 and server reflection, exercised with
//! real gRPC clients against real `medpool serve` processes: the single-node pool, a 3-node Raft
//! pool with SIPp gateways and callers, and the admin port over TLS. Every RPC and every error code
//! of the issue (InvalidArgument naming the field, NotFound, FailedPrecondition, Unauthenticated,
//! Unavailable) is reached.
//!
//! Test numbers (loopback blocks 127.0.n.x): 201 single node, 202 pool, 203 TLS, 154 viewer and
//! admin tokens.
#![allow(
    clippy::unwrap_used,
    clippy::panic,
    clippy::disallowed_types,
    clippy::disallowed_methods,
    missing_docs
)]

mod admin_common;
mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use admin_common::{Node, TestPool, bin};
use common::{PoolSpec, Sipp, TestDir, gateway, wait_until};
use medpool_proto::admin::event::Kind;
use medpool_proto::admin::medpool_admin_client::MedpoolAdminClient;
use medpool_proto::admin::{self as pb};
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

const TOKEN: &str = "test-admin-token-6f1c";

type Bearer = Box<dyn FnMut(Request<()>) -> Result<Request<()>, Status> + Send + Sync>;
type Admin = MedpoolAdminClient<InterceptedService<Channel, Bearer>>;

fn bearer(token: Option<&str>) -> Bearer {
    let value: Option<MetadataValue<_>> = token.map(|t| format!("Bearer {t}").parse().unwrap());
    Box::new(move |mut req: Request<()>| {
        if let Some(v) = &value {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    })
}

fn channel(addr: &str) -> Channel {
    Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(20))
        .connect_lazy()
}

fn admin(addr: &str, token: Option<&str>) -> Admin {
    MedpoolAdminClient::with_interceptor(channel(addr), bearer(token))
}

async fn health(addr: &str, service: &str) -> Result<ServingStatus, Status> {
    let mut h = HealthClient::new(channel(addr));
    let r = h
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await?;
    Ok(r.into_inner().status())
}

/// Lists the services through gRPC server reflection (v1), as grpcurl would.
async fn reflection_services(addr: &str, token: Option<&str>) -> Result<Vec<String>, Status> {
    let mut c = ServerReflectionClient::with_interceptor(channel(addr), bearer(token));
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = c
        .server_reflection_info(futures_util::stream::iter(vec![req]))
        .await?
        .into_inner();
    let first = stream.message().await?.unwrap();
    match first.message_response {
        Some(MessageResponse::ListServicesResponse(l)) => {
            Ok(l.service.into_iter().map(|s| s.name).collect())
        }
        other => panic!("unexpected reflection answer {other:?}"),
    }
}

/// The file descriptor of `symbol` through reflection: proves the admin service is described.
async fn reflection_describes(addr: &str, token: Option<&str>, symbol: &str) -> bool {
    let mut c = ServerReflectionClient::with_interceptor(channel(addr), bearer(token));
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::FileContainingSymbol(symbol.to_owned())),
    };
    let mut stream = c
        .server_reflection_info(futures_util::stream::iter(vec![req]))
        .await
        .unwrap()
        .into_inner();
    matches!(
        stream.message().await.unwrap().unwrap().message_response,
        Some(MessageResponse::FileDescriptorResponse(f)) if !f.file_descriptor_proto.is_empty()
    )
}

fn code<T: std::fmt::Debug>(r: Result<tonic::Response<T>, Status>) -> Status {
    match r {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(s) => s,
    }
}

fn field_path(s: &Status) -> Option<String> {
    s.metadata()
        .get("medpool-field-path")
        .map(|v| v.to_str().unwrap().to_owned())
}

fn broken_config(good: &str) -> String {
    good.replace("trunks = [\"pbx\"]", "trunks = [\"pbx9\"]")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

// ------------------------------------------------------------------------------------------------

#[test]
fn single_node_pool_serves_the_admin_api_with_health_reflection_and_a_token() {
    let n = 201;
    let dir = TestDir::new("admin-single");
    let toml = PoolSpec::new(n).toml();
    let config = dir.file("pool.toml");
    std::fs::write(&config, &toml).unwrap();

    // An admin port beyond loopback without a token: refused at start, with the reason.
    let out = medpool_harness::medpool_command(bin())
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--sip-listen", &format!("127.0.{n}.2:5060")])
        .args(["--admin-listen", "0.0.0.0:7001", "--data-dir"])
        .arg(dir.file("data-open"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve must refuse: {err}");
    assert!(
        err.contains("0.0.0.0:7001") && err.contains("not loopback") && err.contains("token"),
        "{err}"
    );

    let ip = format!("127.0.{n}.1");
    let args: Vec<String> = vec![
        "--config".into(),
        config.display().to_string(),
        "--sip-listen".into(),
        format!("{ip}:5060"),
        "--data-dir".into(),
        dir.file("data").display().to_string(),
        "--admin-listen".into(),
        format!("{ip}:7001"),
        "--shutdown-grace".into(),
        "2".into(),
    ];
    let node = Node::start(
        "single node",
        0,
        &ip,
        &args,
        &[("MEDPOOL_ADMIN_TOKEN", TOKEN)],
    );
    let addr = node.admin();
    let rt = runtime();
    rt.block_on(async {
        // Health needs no token (Kubernetes probes send none); SERVING once started.
        assert_eq!(health(&addr, "").await.unwrap(), ServingStatus::Serving);
        assert_eq!(
            health(&addr, "medpool.admin.v1.MedpoolAdmin")
                .await
                .unwrap(),
            ServingStatus::Serving
        );

        // Reflection lists the operator services, never the internal one; it needs the token.
        let services = reflection_services(&addr, Some(TOKEN)).await.unwrap();
        for s in [
            "medpool.admin.v1.MedpoolAdmin",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
        ] {
            assert!(services.iter().any(|x| x == s), "{s} not in {services:?}");
        }
        assert!(
            !services.iter().any(|s| s.contains("cluster")),
            "{services:?}"
        );
        assert!(reflection_describes(&addr, Some(TOKEN), "medpool.admin.v1.MedpoolAdmin").await);
        assert_eq!(
            reflection_services(&addr, None).await.unwrap_err().code(),
            Code::Unauthenticated
        );

        // No token, a wrong token: Unauthenticated.
        let s = code(
            admin(&addr, None)
                .pool_status(pb::PoolStatusRequest::default())
                .await,
        );
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        let s = code(
            admin(&addr, Some("wrong"))
                .pool_status(pb::PoolStatusRequest::default())
                .await,
        );
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

        let mut c = admin(&addr, Some(TOKEN));
        // The log filter changes at run time; a bad one is refused and changes nothing.
        let r = c
            .set_log_level(pb::SetLogLevelRequest {
                filter: "debug,medpool_cluster=info".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.filter, "debug,medpool_cluster=info");
        let s = code(
            c.set_log_level(pb::SetLogLevelRequest {
                filter: "=[=".into(),
            })
            .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        let st = c
            .pool_status(pb::PoolStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.mode, "single");
        assert_eq!(st.nodes.len(), 1);
        assert_eq!(st.leader, Some(0));
        assert_eq!(st.config_version, Some(1));
        assert_eq!(st.shard_count, 1024);
        assert_eq!(st.nodes[0].admin_addr, addr);

        // Configuration: version 1 is the file; validation names the field; versions are checked.
        let cfg = c
            .get_config(pb::GetConfigRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cfg.version, Some(1));
        assert_eq!(cfg.body, toml);
        let s = code(
            c.validate_config(pb::ValidateConfigRequest {
                body: broken_config(&toml),
                name: "broken.toml".into(),
            })
            .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("route[0].trunks[0]"), "{s:?}");
        assert_eq!(field_path(&s).as_deref(), Some("route[0].trunks[0]"));
        let changed = toml.replace("max_calls = 100", "max_calls = 150");
        let v = c
            .validate_config(pb::ValidateConfigRequest {
                body: changed.clone(),
                name: "new.toml".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((v.trunks, v.routes), (3, 2));
        assert_eq!(v.diff.len(), 1);
        assert_eq!(v.diff[0].item, "node");
        assert_eq!(v.diff[0].details, vec!["max_calls: 100 -> 150"]);
        let s = code(
            c.apply_config(pb::ApplyConfigRequest {
                body: changed.clone(),
                name: "new.toml".into(),
                expected_version: Some(5),
            })
            .await,
        );
        assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
        let a = c
            .apply_config(pb::ApplyConfigRequest {
                body: changed.clone(),
                name: "new.toml".into(),
                expected_version: Some(1),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(a.version, 2);
        assert_eq!(a.diff.len(), 1);
        let cfg = c
            .get_config(pb::GetConfigRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!((cfg.version, cfg.body), (Some(2), changed));
        let s = code(
            c.apply_config(pb::ApplyConfigRequest {
                body: broken_config(&toml),
                name: "broken.toml".into(),
                expected_version: None,
            })
            .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument);
        assert_eq!(
            c.get_config(pb::GetConfigRequest {})
                .await
                .unwrap()
                .into_inner()
                .version,
            Some(2)
        );

        // Node management needs a Raft pool: refused with a clear reason.
        for s in [
            code(
                c.drain_node(pb::NodeRequest {
                    node: 0,
                    forwarded: false,
                })
                .await,
            ),
            code(
                c.undrain_node(pb::NodeRequest {
                    node: 0,
                    forwarded: false,
                })
                .await,
            ),
            code(
                c.remove_node(pb::NodeRequest {
                    node: 0,
                    forwarded: false,
                })
                .await,
            ),
            code(
                c.transfer_leader(pb::TransferLeaderRequest {
                    to: None,
                    forwarded: false,
                })
                .await,
            ),
        ] {
            assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
            assert!(s.message().contains("single-node pool"), "{s:?}");
        }

        // Gateways (no SIPp here: down after their probes fail), enable/disable, errors.
        let g = c
            .list_gateways(pb::ListGatewaysRequest::default())
            .await
            .unwrap()
            .into_inner();
        let names: Vec<&str> = g.gateways.iter().map(|g| g.name.as_str()).collect();
        assert_eq!(names, ["gw1", "gw2"]);
        assert_eq!(g.gateways[0].address, format!("127.0.{n}.21:5060/udp"));
        let s = code(
            c.set_gateway_state(pb::SetGatewayStateRequest {
                name: "gw9".into(),
                state: pb::GatewayAdminState::Disabled.into(),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(s.code(), Code::NotFound);
        let s = code(
            c.set_gateway_state(pb::SetGatewayStateRequest {
                name: "gw1".into(),
                ..Default::default()
            })
            .await,
        );
        assert_eq!(s.code(), Code::InvalidArgument);
        let r = c
            .set_gateway_state(pb::SetGatewayStateRequest {
                name: "gw1".into(),
                state: pb::GatewayAdminState::Draining.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.nodes, vec![0]);
        let g = c
            .list_gateways(pb::ListGatewaysRequest {
                name: "gw1".into(),
                local_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.gateways[0].admin(), pb::GatewayAdminState::Draining);

        // Calls: none; unknown ones are NotFound.
        let l = c
            .list_calls(pb::ListCallsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(l.calls.is_empty() && l.unavailable_nodes.is_empty());
        let s = code(
            c.get_call(pb::GetCallRequest {
                call_id: "nope".into(),
                local_only: false,
            })
            .await,
        );
        assert_eq!(s.code(), Code::NotFound);
        let s = code(
            c.hangup_call(pb::HangupCallRequest {
                call_id: "nope".into(),
                local_only: false,
            })
            .await,
        );
        assert_eq!(s.code(), Code::NotFound);
    });
    drop(node);
}

// ------------------------------------------------------------------------------------------------

/// Collects a `WatchEvents` stream in the background.
fn watch(rt: &tokio::runtime::Runtime, addr: &str) -> Arc<Mutex<Vec<pb::Event>>> {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut c = admin(addr, Some(TOKEN));
    rt.spawn(async move {
        let mut s = c
            .watch_events(pb::WatchEventsRequest { local_only: false })
            .await
            .unwrap()
            .into_inner();
        while let Ok(Some(e)) = s.message().await {
            sink.lock().unwrap().push(e);
        }
    });
    events
}

fn seen(events: &Arc<Mutex<Vec<pb::Event>>>, what: impl Fn(&Kind) -> bool) -> bool {
    events
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.kind.as_ref().is_some_and(&what))
}

fn wait_event(events: &Arc<Mutex<Vec<pb::Event>>>, name: &str, what: impl Fn(&Kind) -> bool) {
    assert!(
        wait_until(Duration::from_secs(15), || seen(events, &what)),
        "no {name} event; events: {:#?}",
        events.lock().unwrap()
    );
}

/// ListCalls with every node answering (a node slow to answer on a loaded test machine is
/// reported unavailable; ask again rather than compare a partial list).
fn list(rt: &tokio::runtime::Runtime, addr: &str, req: pb::ListCallsRequest) -> pb::ListCallsReply {
    let mut reply = pb::ListCallsReply::default();
    for _ in 0..5 {
        reply = rt
            .block_on(admin(addr, Some(TOKEN)).list_calls(req.clone()))
            .unwrap()
            .into_inner();
        if reply.unavailable_nodes.is_empty() {
            break;
        }
    }
    reply
}

/// ListCalls once, whatever answers.
fn list_once(
    rt: &tokio::runtime::Runtime,
    addr: &str,
    req: pb::ListCallsRequest,
) -> pb::ListCallsReply {
    rt.block_on(admin(addr, Some(TOKEN)).list_calls(req))
        .unwrap()
        .into_inner()
}

fn shards_of(status: &pb::PoolStatusReply, id: u64) -> u32 {
    status
        .nodes
        .iter()
        .find(|n| n.id == id)
        .map_or(0, |n| n.shards)
}

fn pool_status(rt: &tokio::runtime::Runtime, addr: &str) -> pb::PoolStatusReply {
    rt.block_on(admin(addr, Some(TOKEN)).pool_status(pb::PoolStatusRequest::default()))
        .unwrap()
        .into_inner()
}

#[test]
fn three_node_pool_answers_every_rpc_from_any_node() {
    let n = 202;
    let toml = PoolSpec::new(n).toml();
    let mut pool = TestPool::start("admin-pool", n, 3, &toml, Some(TOKEN));
    let gw1 = gateway(&pool.dir, n, 1, "uas_answer.xml");
    let gw2 = gateway(&pool.dir, n, 2, "uas_answer.xml");
    let addr = |id: u64| format!("127.0.{n}.{id}:7001");
    let rt = runtime();
    let _in_runtime = rt.enter();

    // Health: SERVING on every node (lease held, leader known).
    for id in 1..=3 {
        assert!(
            wait_until(Duration::from_secs(10), || rt
                .block_on(health(&addr(id), ""))
                .is_ok_and(|s| s == ServingStatus::Serving)),
            "node {id} not SERVING"
        );
    }

    // PoolStatus from a follower: three nodes, every shard owned, per-node details gathered.
    let st = pool_status(&rt, &addr(2));
    assert_eq!(st.mode, "pool");
    assert_eq!(st.nodes.len(), 3);
    let leader = st.leader.unwrap();
    assert!(
        st.nodes
            .iter()
            .all(|n| n.reachable && n.holds_lease && n.version == "0.1.0")
    );
    assert_eq!(st.nodes.iter().map(|n| n.shards).sum::<u32>(), 1024);
    assert_eq!(st.nodes.iter().filter(|n| n.leader).count(), 1);
    assert!(st.applied_index.is_some() && st.committed_index.is_some());
    assert_eq!(st.config_version, Some(1));

    let events = watch(&rt, &addr(3));

    // Three calls through node 1 that stay up until the pool hangs them up.
    gw1.wait_for_probes(1, Duration::from_secs(10));
    gw2.wait_for_probes(1, Duration::from_secs(10));
    let mut callers = Vec::new();
    for k in 0..3u16 {
        callers.push(
            Sipp::uac(
                &format!("caller{k}"),
                "uac_call_remote_bye.xml",
                &format!("127.0.{n}.1"),
                5070 + k,
                &format!("127.0.{n}.1:5060"),
            )
            .arg("-recv_timeout")
            .arg("120000")
            .arg("-timeout")
            .arg("180s")
            .spawn(&pool.dir),
        );
    }
    let mut calls = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            calls = list(
                &rt,
                &addr(2),
                pb::ListCallsRequest {
                    phase: pb::CallPhase::Confirmed.into(),
                    ..Default::default()
                },
            )
            .calls;
            calls.len() == 3
        }),
        "3 confirmed calls expected, got {calls:#?}"
    );
    wait_event(&events, "call started", |k| {
        matches!(k, Kind::CallStarted(_))
    });
    wait_event(&events, "call answered", |k| {
        matches!(k, Kind::CallAnswered(_))
    });

    // ListCalls: filters and paging, from every node (fan-out), same answer.
    for id in 1..=3 {
        let all = list(&rt, &addr(id), pb::ListCallsRequest::default());
        assert_eq!(all.calls.len(), 3, "from node {id}");
        assert!(all.unavailable_nodes.is_empty());
    }
    let by = |req: pb::ListCallsRequest| list(&rt, &addr(1), req).calls.len();
    assert_eq!(
        by(pb::ListCallsRequest {
            gateway: "gw1".into(),
            ..Default::default()
        }) + by(pb::ListCallsRequest {
            gateway: "gw2".into(),
            ..Default::default()
        }),
        3
    );
    assert_eq!(
        by(pb::ListCallsRequest {
            trunk: "pbx".into(),
            ..Default::default()
        }),
        3
    );
    assert_eq!(
        by(pb::ListCallsRequest {
            number_prefix: "serv".into(),
            ..Default::default()
        }),
        3
    );
    assert_eq!(
        by(pb::ListCallsRequest {
            number_prefix: "+99".into(),
            ..Default::default()
        }),
        0
    );
    assert_eq!(
        by(pb::ListCallsRequest {
            phase: pb::CallPhase::Early.into(),
            ..Default::default()
        }),
        0
    );
    let owner = calls[0].node_id;
    let on_owner = by(pb::ListCallsRequest {
        node: Some(owner),
        ..Default::default()
    });
    assert_eq!(
        on_owner,
        calls.iter().filter(|c| c.node_id == owner).count()
    );
    let p1 = list(
        &rt,
        &addr(3),
        pb::ListCallsRequest {
            page_size: 2,
            ..Default::default()
        },
    );
    assert_eq!(p1.calls.len(), 2, "{p1:#?}");
    assert!(!p1.next_page_token.is_empty(), "{p1:#?}");
    let p2 = list(
        &rt,
        &addr(3),
        pb::ListCallsRequest {
            page_size: 2,
            page_token: p1.next_page_token.clone(),
            ..Default::default()
        },
    );
    assert_eq!(p2.calls.len(), 1);
    assert!(p2.next_page_token.is_empty());
    let s = code(rt.block_on(
        admin(&addr(1), Some(TOKEN)).list_calls(pb::ListCallsRequest {
            node: Some(9),
            ..Default::default()
        }),
    ));
    assert_eq!(s.code(), Code::NotFound);

    // GetCall from a node that does not own the call; by leg B's Call-ID too.
    let target = calls[0].clone();
    let other = (1..=3).find(|i| *i != target.node_id).unwrap();
    let mut c = admin(&addr(other), Some(TOKEN));
    let got = rt
        .block_on(c.get_call(pb::GetCallRequest {
            call_id: target.call_id.clone(),
            local_only: false,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(got.node_id, target.node_id);
    assert_eq!(got.phase(), pb::CallPhase::Confirmed);
    let a = got.a.clone().unwrap();
    let b = got.b.clone().unwrap();
    assert_eq!(a.call_id, target.call_id);
    assert!(a.local_tag.starts_with("mp") && !a.remote_tag.is_empty());
    assert!(b.call_id.starts_with("mp") && !b.remote_tag.is_empty());
    assert!(got.gateway == "gw1" || got.gateway == "gw2");
    assert!(!got.attempts.is_empty());
    assert!(got.answered_after_ms.is_some());
    let by_b = rt
        .block_on(c.get_call(pb::GetCallRequest {
            call_id: b.call_id.clone(),
            local_only: false,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(by_b.call_id, target.call_id);
    let s = code(rt.block_on(c.get_call(pb::GetCallRequest {
        call_id: "no-such-call".into(),
        local_only: false,
    })));
    assert_eq!(s.code(), Code::NotFound);

    // HangupCall from a node that does not own the call: its caller gets the BYE.
    let r = rt
        .block_on(c.hangup_call(pb::HangupCallRequest {
            call_id: target.call_id.clone(),
            local_only: false,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(r.node_id, target.node_id);
    let s = code(rt.block_on(c.hangup_call(pb::HangupCallRequest {
        call_id: "no-such-call".into(),
        local_only: false,
    })));
    assert_eq!(s.code(), Code::NotFound);
    assert!(
        wait_until(Duration::from_secs(10), || callers
            .iter()
            .map(|p| p.dialogs_with_request("BYE"))
            .sum::<usize>()
            == 1),
        "one caller should have received the BYE"
    );
    wait_event(
        &events,
        "call ended",
        |k| matches!(k, Kind::CallEnded(e) if e.call_id == target.call_id),
    );
    let mut l = pb::ListCallsReply::default();
    assert!(
        wait_until(Duration::from_secs(5), || {
            l = list(&rt, &addr(1), pb::ListCallsRequest::default());
            l.calls.len() == 2
        }),
        "two calls should be left: {l:#?}"
    );

    // Gateways as every node sees them; enable/disable/drain everywhere; unknown gateway.
    let mut g = admin(&addr(2), Some(TOKEN));
    let mut gws = pb::ListGatewaysReply::default();
    assert!(
        wait_until(Duration::from_secs(10), || {
            gws = rt
                .block_on(g.list_gateways(pb::ListGatewaysRequest::default()))
                .unwrap()
                .into_inner();
            gws.gateways.len() == 6
                && gws
                    .gateways
                    .iter()
                    .all(|g| g.up && g.last_options_status == 200 && g.last_rtt_us > 0)
        }),
        "every node should see both gateways up: {gws:#?}"
    );
    let r = rt
        .block_on(g.set_gateway_state(pb::SetGatewayStateRequest {
            name: "gw1".into(),
            state: pb::GatewayAdminState::Disabled.into(),
            ..Default::default()
        }))
        .unwrap()
        .into_inner();
    assert_eq!(r.nodes, vec![1, 2, 3]);
    let gws = rt
        .block_on(g.list_gateways(pb::ListGatewaysRequest {
            name: "gw1".into(),
            local_only: false,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(gws.gateways.len(), 3);
    assert!(
        gws.gateways
            .iter()
            .all(|g| g.admin() == pb::GatewayAdminState::Disabled)
    );
    let r = rt
        .block_on(g.set_gateway_state(pb::SetGatewayStateRequest {
            name: "gw1".into(),
            state: pb::GatewayAdminState::Enabled.into(),
            node: Some(3),
            local_only: false,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(r.nodes, vec![3]);
    rt.block_on(g.set_gateway_state(pb::SetGatewayStateRequest {
        name: "gw1".into(),
        state: pb::GatewayAdminState::Enabled.into(),
        ..Default::default()
    }))
    .unwrap();
    let s = code(rt.block_on(g.set_gateway_state(pb::SetGatewayStateRequest {
        name: "gw7".into(),
        state: pb::GatewayAdminState::Draining.into(),
        ..Default::default()
    })));
    assert_eq!(s.code(), Code::NotFound);
    let s = code(rt.block_on(g.list_gateways(pb::ListGatewaysRequest {
        name: "gw7".into(),
        local_only: false,
    })));
    assert_eq!(s.code(), Code::NotFound);

    // Configuration through a follower, carried to the leader; the field is named; stale versions.
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut cf = admin(&addr(follower), Some(TOKEN));
    let s = code(rt.block_on(cf.apply_config(pb::ApplyConfigRequest {
        body: broken_config(&toml),
        name: "broken.toml".into(),
        expected_version: Some(1),
    })));
    assert_eq!(s.code(), Code::InvalidArgument);
    assert_eq!(field_path(&s).as_deref(), Some("route[0].trunks[0]"));
    assert!(s.message().contains("unknown trunk \"pbx9\""), "{s:?}");
    let s = code(rt.block_on(cf.validate_config(pb::ValidateConfigRequest {
        body: "[node]\nmax_calls = \"many\"\n".into(),
        name: "x.toml".into(),
    })));
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(s.message().contains("node.max_calls"), "{s:?}");
    let changed = toml.replace("retry_after = 7", "retry_after = 9");
    let s = code(rt.block_on(cf.apply_config(pb::ApplyConfigRequest {
        body: changed.clone(),
        name: "new.toml".into(),
        expected_version: Some(7),
    })));
    assert_eq!(s.code(), Code::FailedPrecondition);
    let a = rt
        .block_on(cf.apply_config(pb::ApplyConfigRequest {
            body: changed.clone(),
            name: "new.toml".into(),
            expected_version: Some(1),
        }))
        .unwrap()
        .into_inner();
    assert_eq!(a.version, 2);
    assert_eq!(a.diff[0].details, vec!["retry_after: 7 -> 9"]);
    for id in 1..=3 {
        let mut got = pb::GetConfigReply::default();
        assert!(
            wait_until(Duration::from_secs(5), || {
                got = rt
                    .block_on(admin(&addr(id), Some(TOKEN)).get_config(pb::GetConfigRequest {}))
                    .unwrap()
                    .into_inner();
                got.version == Some(2)
            }),
            "node {id} has {got:?}"
        );
        assert_eq!(got.body, changed);
    }
    wait_event(
        &events,
        "config",
        |k| matches!(k, Kind::Config(c) if c.version == 2),
    );

    // TransferLeader through a follower (carried to the leader), to a chosen voter.
    let to = (1..=3).find(|i| *i != leader && *i != 3).unwrap();
    let sent_to = (1..=3).find(|i| *i != leader && *i != to).unwrap();
    let r = rt
        .block_on(
            admin(&addr(sent_to), Some(TOKEN)).transfer_leader(pb::TransferLeaderRequest {
                to: Some(to),
                forwarded: false,
            }),
        )
        .unwrap()
        .into_inner();
    assert_eq!((r.previous, r.leader), (Some(leader), Some(to)));
    wait_event(
        &events,
        "leader changed",
        |k| matches!(k, Kind::Leader(l) if l.leader == Some(to)),
    );
    let s = code(rt.block_on(admin(&addr(1), Some(TOKEN)).transfer_leader(
        pb::TransferLeaderRequest {
            to: Some(42),
            forwarded: false,
        },
    )));
    assert_eq!(s.code(), Code::NotFound);
    let leader = to;
    assert_ne!(leader, 3);

    // RemoveNode: refused while the node owns shards, unknown node NotFound.
    let mut cn = admin(&addr(1), Some(TOKEN));
    let s = code(rt.block_on(cn.remove_node(pb::NodeRequest {
        node: 3,
        forwarded: false,
    })));
    assert_eq!(s.code(), Code::FailedPrecondition);
    assert!(s.message().contains("still owns"), "{s:?}");
    let s = code(rt.block_on(cn.remove_node(pb::NodeRequest {
        node: 8,
        forwarded: false,
    })));
    assert_eq!(s.code(), Code::NotFound);
    let s = code(rt.block_on(cn.drain_node(pb::NodeRequest {
        node: 8,
        forwarded: false,
    })));
    assert_eq!(s.code(), Code::NotFound);

    // DrainNode / UndrainNode with two calls up: shards leave and come back, no call lost.
    let r = rt
        .block_on(cn.drain_node(pb::NodeRequest {
            node: 3,
            forwarded: false,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(r.state(), pb::NodeState::Draining);
    assert!(
        wait_until(Duration::from_secs(20), || shards_of(
            &pool_status(&rt, &addr(1)),
            3
        ) == 0),
        "node 3 still owns shards"
    );
    wait_event(
        &events,
        "node draining",
        |k| matches!(k, Kind::Node(x) if x.id == 3 && x.change() == pb::NodeChange::Draining),
    );
    wait_event(
        &events,
        "shards moved",
        |k| matches!(k, Kind::ShardsMoved(m) if m.from_node == Some(3)),
    );
    // Both calls, once: for a moment after the move a call may be listed twice (by its old and
    // its new owner, the record's write racing the listing), which must pass within seconds.
    assert!(
        wait_until(Duration::from_secs(5), || list(
            &rt,
            &addr(2),
            pb::ListCallsRequest::default()
        )
        .calls
        .len()
            == 2),
        "the pool does not list the two calls after the drain"
    );
    let r = rt
        .block_on(cn.undrain_node(pb::NodeRequest {
            node: 3,
            forwarded: false,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(r.state(), pb::NodeState::Active);
    assert!(
        wait_until(Duration::from_secs(20), || shards_of(
            &pool_status(&rt, &addr(1)),
            3
        ) > 0),
        "node 3 got no shard back"
    );
    let mut l = pb::ListCallsReply::default();
    assert!(
        wait_until(Duration::from_secs(10), || {
            l = list(&rt, &addr(3), pb::ListCallsRequest::default());
            l.calls.len() == 2
        }),
        "the two calls should have survived the drain and undrain: {l:#?}"
    );

    // The two remaining calls end through the API: both callers get their BYE (none was lost).
    for call in list(&rt, &addr(1), pb::ListCallsRequest::default()).calls {
        rt.block_on(cn.hangup_call(pb::HangupCallRequest {
            call_id: call.call_id,
            local_only: false,
        }))
        .unwrap();
    }
    for c in &mut callers {
        c.expect_success(Duration::from_secs(20));
    }

    // A gateway that stops answering: the watchers hear it go down.
    drop(gw2);
    wait_event(
        &events,
        "gateway down",
        |k| matches!(k, Kind::Gateway(g) if g.gateway == "gw2" && !g.up),
    );

    // RemoveNode after a drain (sent to a follower, carried to the leader).
    rt.block_on(cn.drain_node(pb::NodeRequest {
        node: 3,
        forwarded: false,
    }))
    .unwrap();
    assert!(wait_until(Duration::from_secs(20), || shards_of(
        &pool_status(&rt, &addr(1)),
        3
    ) == 0));
    let follower = if leader == 1 { 2 } else { 1 };
    // (A second watcher on a node that stays: the removed node never learns of its own removal.)
    let staying = watch(&rt, &addr(follower));
    std::thread::sleep(Duration::from_millis(500));
    rt.block_on(
        admin(&addr(follower), Some(TOKEN)).remove_node(pb::NodeRequest {
            node: 3,
            forwarded: false,
        }),
    )
    .unwrap();
    let st = pool_status(&rt, &addr(follower));
    assert_eq!(
        st.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![1, 2]
    );
    wait_event(
        &staying,
        "node removed",
        |k| matches!(k, Kind::Node(x) if x.id == 3 && x.change() == pb::NodeChange::Removed),
    );
    pool.node_mut(3).stop();

    // No quorum: the leader dies, the other voter is alone. Reads still answer (the dead node is
    // listed as unavailable); writes are Unavailable; health is NOT_SERVING.
    pool.node_mut(leader).kill();
    let alone = follower;
    assert!(
        wait_until(Duration::from_secs(15), || pool_status(&rt, &addr(alone))
            .leader
            .is_none()),
        "node {alone} still sees a leader"
    );
    let l = list_once(&rt, &addr(alone), pb::ListCallsRequest::default());
    assert_eq!(l.unavailable_nodes, vec![leader]);
    let st = pool_status(&rt, &addr(alone));
    assert!(!st.nodes.iter().find(|n| n.id == leader).unwrap().reachable);
    let s = code(rt.block_on(admin(&addr(alone), Some(TOKEN)).apply_config(
        pb::ApplyConfigRequest {
            body: toml.clone(),
            name: "again.toml".into(),
            expected_version: Some(2),
        },
    )));
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    let s = code(rt.block_on(
        admin(&addr(alone), Some(TOKEN)).drain_node(pb::NodeRequest {
            node: alone,
            forwarded: false,
        }),
    ));
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(
        wait_until(Duration::from_secs(10), || rt
            .block_on(health(&addr(alone), ""))
            .is_ok_and(|s| s == ServingStatus::NotServing)),
        "a node without a leader must not be SERVING"
    );
    drop(gw1);
    drop(rt);
}

// ------------------------------------------------------------------------------------------------

#[test]
fn admin_port_over_tls() {
    let n = 203;
    let dir = TestDir::new("admin-tls");
    let ip = format!("127.0.{n}.1");
    // A test CA and a server certificate for the node's IP, made with the openssl tool.
    let (ca, cert, key) = (
        dir.file("ca.crt"),
        dir.file("admin.crt"),
        dir.file("admin.key"),
    );
    let ext = dir.file("ext.cnf");
    std::fs::write(
        &ext,
        format!(
            "subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n"
        ),
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir.path())
            .output()
            .expect("openssl is needed to make the test certificates");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &[
                "-days",
                "2",
                "-subj",
                "/CN=medpool test CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &ec[..],
            &[
                "-subj",
                "/CN=medpool admin",
                "-keyout",
                "admin.key",
                "-out",
                "admin.csr",
            ],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "admin.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "admin.crt",
    ]);
    let config = dir.file("pool.toml");
    std::fs::write(&config, PoolSpec::new(n).toml()).unwrap();
    let args: Vec<String> = vec![
        "--config".into(),
        config.display().to_string(),
        "--sip-listen".into(),
        format!("{ip}:5060"),
        "--data-dir".into(),
        dir.file("data").display().to_string(),
        "--admin-listen".into(),
        format!("{ip}:7001"),
        "--admin-tls-cert".into(),
        cert.display().to_string(),
        "--admin-tls-key".into(),
        key.display().to_string(),
        "--admin-tls-ca".into(),
        ca.display().to_string(),
        "--shutdown-grace".into(),
        "2".into(),
    ];
    let node = Node::start("tls node", 0, &ip, &args, &[]);
    let rt = runtime();
    rt.block_on(async {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(std::fs::read(&ca).unwrap()));
        let channel = Endpoint::from_shared(format!("https://{ip}:7001"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = MedpoolAdminClient::new(channel.clone());
        let st = c
            .pool_status(pb::PoolStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.mode, "single");
        let mut h = HealthClient::new(channel);
        let r = h.check(HealthCheckRequest::default()).await.unwrap();
        assert_eq!(r.into_inner().status(), ServingStatus::Serving);
        // Plain text to a TLS port fails.
        let plain = admin(&format!("{ip}:7001"), None)
            .pool_status(pb::PoolStatusRequest::default())
            .await;
        assert!(plain.is_err());
    });
    // medpool ctl over TLS, and without the CA (refused certificate): unreachable.
    let ok = admin_common::ctl(
        &format!("https://{ip}:7001"),
        None,
        &["status", "--tls-ca", &ca.display().to_string()],
    );
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("pool (single)"), "{ok:?}");
    let bad = admin_common::ctl(&format!("https://{ip}:7001"), None, &["status"]);
    assert_eq!(bad.code, 3, "{bad:?}");
    drop(node);
}

// ------------------------------------------------------------------------------------------------

const VIEWER: &str = "test-viewer-token-93ad";

/// Calls every RPC a viewer may not call; each answer must be PERMISSION_DENIED.
async fn writes_refused(c: &mut Admin, call_id: &str, config: &str) -> Vec<(&'static str, Status)> {
    let node = pb::NodeRequest {
        node: 0,
        forwarded: false,
    };
    vec![
        (
            "HangupCall",
            code(
                c.hangup_call(pb::HangupCallRequest {
                    call_id: call_id.to_owned(),
                    local_only: false,
                })
                .await,
            ),
        ),
        (
            "ApplyConfig",
            code(
                c.apply_config(pb::ApplyConfigRequest {
                    body: config.to_owned(),
                    name: "viewer.toml".into(),
                    expected_version: None,
                })
                .await,
            ),
        ),
        (
            "SetGatewayState",
            code(
                c.set_gateway_state(pb::SetGatewayStateRequest {
                    name: "gw1".into(),
                    state: pb::GatewayAdminState::Disabled.into(),
                    ..Default::default()
                })
                .await,
            ),
        ),
        ("DrainNode", code(c.drain_node(node).await)),
        ("UndrainNode", code(c.undrain_node(node).await)),
        ("RemoveNode", code(c.remove_node(node).await)),
        (
            "TransferLeader",
            code(
                c.transfer_leader(pb::TransferLeaderRequest {
                    to: None,
                    forwarded: false,
                })
                .await,
            ),
        ),
        (
            "SetLogLevel",
            code(
                c.set_log_level(pb::SetLogLevelRequest {
                    filter: "debug".into(),
                })
                .await,
            ),
        ),
    ]
}

#[test]
fn a_viewer_token_reads_and_only_the_admin_token_writes() {
    let n = 154;
    let dir = TestDir::new("admin-viewer");
    let toml = PoolSpec::new(n).toml();
    let config = dir.file("pool.toml");
    std::fs::write(&config, &toml).unwrap();
    let viewer_file = dir.file("viewer-token");
    std::fs::write(&viewer_file, format!("{VIEWER}\n")).unwrap();
    let ip = format!("127.0.{n}.1");
    let args: Vec<String> = vec![
        "--config".into(),
        config.display().to_string(),
        "--sip-listen".into(),
        format!("{ip}:5060"),
        "--data-dir".into(),
        dir.file("data").display().to_string(),
        "--admin-listen".into(),
        format!("{ip}:7001"),
        "--admin-viewer-token-file".into(),
        viewer_file.display().to_string(),
        "--shutdown-grace".into(),
        "2".into(),
    ];

    // A viewer token alone (no admin token) is refused at start, naming the flags.
    let out = medpool_harness::medpool_command(bin())
        .arg("serve")
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve must refuse: {err}");
    assert!(
        err.contains("--admin-viewer-token-file") && err.contains("MEDPOOL_ADMIN_TOKEN"),
        "{err}"
    );
    // So is a viewer token equal to the admin token.
    let out = medpool_harness::medpool_command(bin())
        .arg("serve")
        .args(&args)
        .env("MEDPOOL_ADMIN_TOKEN", VIEWER)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "serve must refuse: {err}");
    assert!(
        err.contains("viewer token") && err.contains("admin"),
        "{err}"
    );

    let node = Node::start(
        "viewer node",
        0,
        &ip,
        &args,
        &[("MEDPOOL_ADMIN_TOKEN", TOKEN)],
    );
    let addr = node.admin();
    let gw1 = gateway(&dir, n, 1, "uas_answer.xml");
    let gw2 = gateway(&dir, n, 2, "uas_answer.xml");
    let rt = runtime();
    let _in_runtime = rt.enter();

    // The viewer watches events from before the call.
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let mut w = admin(&addr, Some(VIEWER));
    let watching = rt.block_on(w.watch_events(pb::WatchEventsRequest { local_only: false }));
    let mut stream = watching.expect("a viewer may watch").into_inner();
    rt.spawn(async move {
        while let Ok(Some(e)) = stream.message().await {
            sink.lock().unwrap().push(e);
        }
    });

    // One call that stays up until the pool hangs it up.
    gw1.wait_for_probes(1, Duration::from_secs(10));
    gw2.wait_for_probes(1, Duration::from_secs(10));
    let caller = Sipp::uac(
        "caller",
        "uac_call_remote_bye.xml",
        &ip,
        5070,
        &format!("{ip}:5060"),
    )
    .arg("-recv_timeout")
    .arg("120000")
    .arg("-timeout")
    .arg("180s")
    .spawn(&dir);

    let mut v = admin(&addr, Some(VIEWER));
    let mut calls = Vec::new();
    assert!(
        wait_until(Duration::from_secs(20), || {
            calls = rt
                .block_on(v.list_calls(pb::ListCallsRequest {
                    phase: pb::CallPhase::Confirmed.into(),
                    ..Default::default()
                }))
                .expect("a viewer may list calls")
                .into_inner()
                .calls;
            calls.len() == 1
        }),
        "1 confirmed call expected, got {calls:#?}"
    );
    let call_id = calls[0].call_id.clone();
    wait_event(&events, "call started (viewer's watch)", |k| {
        matches!(k, Kind::CallStarted(_))
    });

    rt.block_on(async {
        // Reads: status, show, gateways, configuration show and validate, reflection.
        let st = v
            .pool_status(pb::PoolStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.config_version, Some(1));
        let got = v
            .get_call(pb::GetCallRequest {
                call_id: call_id.clone(),
                local_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(got.call_id, call_id);
        let g = v
            .list_gateways(pb::ListGatewaysRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.gateways.len(), 2);
        let cfg = v
            .get_config(pb::GetConfigRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(cfg.body, toml);
        let changed = toml.replace("max_calls = 100", "max_calls = 150");
        let d = v
            .validate_config(pb::ValidateConfigRequest {
                body: changed.clone(),
                name: "new.toml".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(d.diff.len(), 1);
        assert!(
            reflection_services(&addr, Some(VIEWER))
                .await
                .unwrap()
                .iter()
                .any(|s| s == "medpool.admin.v1.MedpoolAdmin")
        );

        // Writes: every one PERMISSION_DENIED with the typed kind, naming the method; nothing changed.
        for (method, s) in writes_refused(&mut v, &call_id, &changed).await {
            assert_eq!(s.code(), Code::PermissionDenied, "{method}: {s:?}");
            assert_eq!(
                s.metadata()
                    .get("medpool-error-kind")
                    .and_then(|k| k.to_str().ok()),
                Some("permission-denied"),
                "{method}: {s:?}"
            );
            assert!(s.message().contains(method), "{method}: {s:?}");
        }
        let st = v
            .pool_status(pb::PoolStatusRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.config_version, Some(1));
        let l = v
            .list_calls(pb::ListCallsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(l.calls.len(), 1, "the call is still up: {l:#?}");
        let g = v
            .list_gateways(pb::ListGatewaysRequest {
                name: "gw1".into(),
                local_only: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(g.gateways[0].admin(), pb::GatewayAdminState::Enabled);

        // No token, a wrong token: UNAUTHENTICATED, for reads and writes alike.
        for t in [None, Some("not-a-token")] {
            let mut c = admin(&addr, t);
            let s = code(c.list_calls(pb::ListCallsRequest::default()).await);
            assert_eq!(s.code(), Code::Unauthenticated, "{t:?}: {s:?}");
            let s = code(
                c.hangup_call(pb::HangupCallRequest {
                    call_id: call_id.clone(),
                    local_only: false,
                })
                .await,
            );
            assert_eq!(s.code(), Code::Unauthenticated, "{t:?}: {s:?}");
        }
        // Health stays open.
        assert_eq!(health(&addr, "").await.unwrap(), ServingStatus::Serving);
    });

    // `medpool ctl` with the viewer token: lists, cannot hang up or apply (exit 4, "permission
    // denied"); with the admin token it hangs up.
    let listed = admin_common::ctl(&addr, Some(VIEWER), &["calls", "list"]).expect(0);
    assert!(listed.stdout.contains(&call_id), "{listed:?}");
    let refused = admin_common::ctl(&addr, Some(VIEWER), &["calls", "hangup", &call_id]).expect(4);
    assert!(
        refused.stderr.contains("permission denied") && refused.stderr.contains("HangupCall"),
        "{refused:?}"
    );
    let changed_file = dir.file("changed.toml");
    std::fs::write(
        &changed_file,
        toml.replace("max_calls = 100", "max_calls = 150"),
    )
    .unwrap();
    let refused = admin_common::ctl(
        &addr,
        Some(VIEWER),
        &[
            "config",
            "apply",
            "--yes",
            "-f",
            &changed_file.display().to_string(),
        ],
    )
    .expect(4);
    assert!(refused.stderr.contains("permission denied"), "{refused:?}");
    let wrong = admin_common::ctl(&addr, Some("not-a-token"), &["calls", "list"]).expect(4);
    assert!(wrong.stderr.contains("unauthenticated"), "{wrong:?}");
    assert_eq!(caller.dialogs_with_request("BYE"), 0);

    admin_common::ctl(&addr, Some(TOKEN), &["calls", "hangup", &call_id]).expect(0);
    assert!(
        wait_until(Duration::from_secs(10), || caller
            .dialogs_with_request("BYE")
            == 1),
        "the caller should have received the BYE"
    );
    let applied = admin_common::ctl(
        &addr,
        Some(TOKEN),
        &[
            "config",
            "apply",
            "--yes",
            "-f",
            &changed_file.display().to_string(),
        ],
    )
    .expect(0);
    let st = rt
        .block_on(admin(&addr, Some(VIEWER)).pool_status(pb::PoolStatusRequest::default()))
        .unwrap()
        .into_inner();
    assert_eq!(st.config_version, Some(2), "{applied:?}");
    drop(caller);
    drop(node);
}
