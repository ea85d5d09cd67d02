//! Domain → proto conversions for the admin API, one function per type: calls
//! ([`CallInfo`]), gateways ([`GatewayHandle`] + its trunk), node states, node events. No logic
//! beyond renaming and unit changes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use medpool_b2bua::config::Trunk;
use medpool_b2bua::dialog::{CallInfo, Phase};
use medpool_b2bua::gateway::GatewayHandle;
use medpool_b2bua::node::NodeEvent;
use medpool_cluster::NodeState;
use medpool_proto::admin::{self as pb, event};

/// Milliseconds, saturating.
pub fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Wall clock now, in milliseconds since the Unix epoch.
pub fn unix_ms_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(ms)
        .unwrap_or(0)
}

/// A call's phase.
pub fn phase(p: Phase) -> pb::CallPhase {
    match p {
        Phase::Calling => pb::CallPhase::Calling,
        Phase::Early => pb::CallPhase::Early,
        Phase::Answered => pb::CallPhase::Answered,
        Phase::Confirmed => pb::CallPhase::Confirmed,
        Phase::Ending => pb::CallPhase::Ending,
    }
}

/// A call as its DialogActor reports it, owned by `node_id`. The attempts are the failed ones the
/// call records, then the current one ("answered" or "in progress").
pub fn call(info: CallInfo, node_id: u64) -> pb::Call {
    let mut attempts: Vec<pb::Attempt> = info
        .attempts
        .iter()
        .map(|(gateway, outcome)| pb::Attempt {
            gateway: gateway.clone(),
            outcome: outcome.clone(),
        })
        .collect();
    if let Some(gw) = &info.gateway {
        let outcome = match (info.answered_after, info.phase) {
            (_, Phase::Ending) => "ending",
            (Some(_), _) => "answered",
            (None, Phase::Early) => "ringing",
            (None, _) => "calling",
        };
        attempts.push(pb::Attempt {
            gateway: gw.clone(),
            outcome: outcome.to_owned(),
        });
    }
    let b = match (&info.b_call_id, &info.b_tags) {
        (Some(call_id), tags) => Some(pb::Leg {
            call_id: call_id.clone(),
            local_tag: tags.as_ref().map(|t| t.0.clone()).unwrap_or_default(),
            remote_tag: tags.as_ref().map(|t| t.1.clone()).unwrap_or_default(),
            trunk: info.gateway.clone().unwrap_or_default(),
            media: info.b_media.as_ref().map(leg_media),
            ..wire(info.b_wire.as_ref())
        }),
        (None, _) => None,
    };
    pb::Call {
        call_id: info.a_call_id.clone(),
        node_id,
        shard: u32::from(info.shard),
        phase: phase(info.phase).into(),
        inbound_trunk: info.inbound_trunk.clone(),
        gateway: info.gateway.clone().unwrap_or_default(),
        called: info.called,
        calling: info.calling,
        age_ms: ms(info.age),
        answered_after_ms: info.answered_after.map(ms),
        a: Some(pb::Leg {
            call_id: info.a_call_id,
            local_tag: info.a_tags.0,
            remote_tag: info.a_tags.1,
            trunk: info.inbound_trunk,
            media: info.a_media.as_ref().map(leg_media),
            ..wire(Some(&info.a_wire))
        }),
        b,
        attempts,
    }
}

/// A leg's transport fields (the rest default): transport, TLS version and peer subject.
fn wire(w: Option<&medpool_b2bua::dialog::LegWire>) -> pb::Leg {
    let Some(w) = w else {
        return pb::Leg::default();
    };
    pb::Leg {
        transport: w.transport.as_lower().to_owned(),
        tls_version: w
            .tls
            .as_ref()
            .map(|t| t.version.to_owned())
            .unwrap_or_default(),
        tls_peer_subject: w
            .tls
            .as_ref()
            .and_then(|t| t.subject.clone())
            .unwrap_or_default(),
        ..pb::Leg::default()
    }
}

/// A leg's relayed media.
fn leg_media(m: &medpool_b2bua::media::LegMedia) -> pb::LegMedia {
    let counters = |c: &medpool_b2bua::media::MediaCounts| pb::MediaCounters {
        packets: c.packets,
        bytes: c.bytes,
        lost: c.lost,
    };
    pb::LegMedia {
        local: m.local.to_string(),
        remote: m.remote.map(|r| r.to_string()).unwrap_or_default(),
        codec: m.codec.clone(),
        received: Some(counters(&m.received)),
        sent: Some(counters(&m.sent)),
        last_packet_age_ms: m.last_packet_age_ms,
    }
}

/// A gateway as this node sees it; `shares` are this node's ceilings of calls and calls per second.
pub fn gateway(
    h: &GatewayHandle,
    trunk: Option<&Trunk>,
    (admin, admin_replicated): (pb::GatewayAdminState, bool),
    shares: (Option<u32>, Option<u32>),
    node_id: u64,
) -> pb::GatewayHealth {
    use std::sync::atomic::Ordering::Relaxed;
    pb::GatewayHealth {
        share_calls: shares.0,
        share_cps: shares.1,
        admin_replicated,
        node_id,
        name: h.name.clone(),
        up: h.is_up(),
        admin: admin.into(),
        last_options_status: h.last_status.load(Relaxed),
        last_rtt_us: h.last_rtt_us.load(Relaxed),
        consecutive_failures: h.failures.load(Relaxed),
        active_calls: h.active_calls(),
        max_calls: trunk.and_then(|t| t.max_calls),
        max_cps: trunk.and_then(|t| t.max_cps),
        address: trunk
            .map(|t| {
                let transport = medpool_b2bua::config::sip_transport(t.transport).as_lower();
                format!("{}:{}/{transport}", t.address, t.port)
            })
            .unwrap_or_default(),
    }
}

/// A gateway trunk named by DNS: up when any resolved target is; its address followed by its
/// DNS status and targets, e.g. `sbc.example.net:5060/udp (resolved: 192.0.2.1:5070/udp up,
/// 192.0.2.2:5070/udp down)` or `… (unresolved (…))`, `… (stale, kept 3590 s more (…): …)`.
pub fn gateway_dns(g: &mut pb::GatewayHealth, view: Option<medpool_b2bua::dns::TrunkView>) {
    let Some(v) = view else {
        return;
    };
    g.up = v.targets.iter().any(|t| t.health.is_up());
    let targets: Vec<String> = v
        .targets
        .iter()
        .map(|t| {
            let transport = medpool_b2bua::config::sip_transport(t.target.transport).as_lower();
            let up = if t.health.is_up() { "up" } else { "down" };
            format!("{}/{transport} {up}", t.target.addr)
        })
        .collect();
    let status = v.status_text();
    g.address = if targets.is_empty() {
        format!("{} ({status})", g.address)
    } else {
        format!("{} ({status}: {})", g.address, targets.join(", "))
    };
}

/// A node's state in the pool.
pub fn node_state(s: NodeState) -> pb::NodeState {
    match s {
        NodeState::Active => pb::NodeState::Active,
        NodeState::Draining => pb::NodeState::Draining,
        NodeState::Down => pb::NodeState::Down,
    }
}

/// A node event (calls, gateways) as an admin event of node `node_id`.
pub fn node_event(e: NodeEvent, node_id: u64) -> pb::Event {
    let kind = match e {
        NodeEvent::CallStarted {
            call_id,
            shard,
            trunk,
        } => event::Kind::CallStarted(pb::CallStarted {
            call_id,
            shard: u32::from(shard),
            trunk,
        }),
        NodeEvent::CallAnswered { call_id, gateway } => {
            event::Kind::CallAnswered(pb::CallAnswered { call_id, gateway })
        }
        NodeEvent::CallEnded {
            call_id,
            status,
            cause,
        } => event::Kind::CallEnded(pb::CallEnded {
            call_id,
            status: u32::from(status),
            cause,
        }),
        NodeEvent::Gateway { name, up } => {
            event::Kind::Gateway(pb::GatewayChanged { gateway: name, up })
        }
    };
    pb::Event {
        node_id,
        unix_ms: unix_ms_now(),
        kind: Some(kind),
    }
}
