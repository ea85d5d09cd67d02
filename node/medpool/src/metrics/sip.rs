//! The node's SIP metrics: traffic by direction, method and status class, the front door's
//! refusals (parse errors, rejections, overload, the source gate, TCP and TLS limits), the
//! transaction layer (retransmissions, live transactions, table room, timer sweeps), the routing
//! registry's room and the remembered hung-up legs.

use std::sync::atomic::Ordering::Relaxed;

use medpool_b2bua::node::NodeCtx;
use medpool_sip::transport::METHODS;
use prometheus_client::encoding::DescriptorEncoder;

use super::family::{Labels, counter, gauge, one};

fn status_class(i: usize) -> String {
    format!("{}xx", i + 1)
}

/// Writes the SIP metrics.
pub(super) fn encode(e: &mut DescriptorEncoder<'_>, ctx: &NodeCtx) -> Result<(), std::fmt::Error> {
    let t = &ctx.transports.stats().traffic;
    let by_method =
        |arr: &[std::sync::atomic::AtomicU64; 15], dir: &'static str| -> Vec<(Labels, u64)> {
            METHODS
                .iter()
                .zip(arr.iter())
                .map(|(m, c)| {
                    let name = if m.as_str().is_empty() {
                        "OTHER"
                    } else {
                        m.as_str()
                    };
                    (
                        vec![("direction", dir.to_owned()), ("method", name.to_owned())],
                        c.load(Relaxed),
                    )
                })
                .collect()
        };
    let mut req = by_method(&t.requests_in, "in");
    req.extend(by_method(&t.requests_out, "out"));
    counter(
        e,
        "medpool_sip_requests",
        "SIP requests by direction and method",
        &req,
    )?;
    let mut resp: Vec<(Labels, u64)> = Vec::new();
    for (dir, arr) in [("in", &t.responses_in), ("out", &t.responses_out)] {
        for (i, c) in arr.iter().enumerate() {
            resp.push((
                vec![("direction", dir.to_owned()), ("class", status_class(i))],
                c.load(Relaxed),
            ));
        }
    }
    counter(
        e,
        "medpool_sip_responses",
        "SIP responses by direction and status class",
        &resp,
    )?;
    let fd = ctx.transports.stats();
    counter(
        e,
        "medpool_sip_parse_errors",
        "Messages dropped as unparseable or malformed",
        &one(fd.parse_errors.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_sip_rejected",
        "Requests answered by the front door (400, 416, 420, ...)",
        &one(fd.rejected.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_sip_overloaded",
        "Requests answered 503 because the inbound queue was full",
        &one(fd.overloaded.load(Relaxed)),
    )?;
    let gate = &fd.gate;
    for (name, help, value) in [
        (
            "medpool_sip_unknown_source",
            "UDP datagrams from sources that are no configured trunk (never queued)",
            &gate.unknown,
        ),
        (
            "medpool_sip_forbidden_sent",
            "403s sent to unknown sources (a small global budget; none under a flood)",
            &gate.forbidden,
        ),
        (
            "medpool_sip_rate_limited",
            "New requests over their source's rate/burst (503 or dropped)",
            &gate.rate_limited,
        ),
        (
            "medpool_sip_reserve_refused",
            "New requests refused because only the queue's reserve for calls in progress was left",
            &gate.reserve_refused,
        ),
        (
            "medpool_sip_unparsed",
            "Datagrams from a known source over its budget dropped unparsed",
            &gate.unparsed,
        ),
        (
            "medpool_sip_answers_suppressed",
            "Answers (400, 503) to floods not sent because their global budget was used up",
            &gate.unanswered,
        ),
    ] {
        counter(e, name, help, &one(value.load(Relaxed)))?;
    }
    if let Some(tcp) = ctx.transports.tcp() {
        let reasons = |rows: &[(&'static str, u64)]| -> Vec<(Labels, u64)> {
            rows.iter()
                .map(|(reason, v)| (vec![("reason", (*reason).to_owned())], *v))
                .collect()
        };
        counter(
            e,
            "medpool_sip_tcp_refused",
            "TCP connections reset at accept or not opened, by the cap that refused them",
            &reasons(&tcp.stats().refused_by_reason()),
        )?;
        counter(
            e,
            "medpool_sip_tcp_closed",
            "TCP connections closed by the door (message deadline, idle, write timeout, framing)",
            &reasons(&tcp.stats().closed_by_reason()),
        )?;
        gauge(
            e,
            "medpool_sip_tcp_connections",
            "Open SIP TCP connections by direction",
            &[
                (
                    vec![("direction", "inbound".to_owned())],
                    tcp.open_inbound() as i64,
                ),
                (
                    vec![("direction", "outbound".to_owned())],
                    tcp.open_outbound() as i64,
                ),
            ],
        )?;
    }
    if let Some(side) = ctx.transports.tls().and_then(|p| p.tls()) {
        let rows: Vec<(Labels, u64)> = side
            .handshakes()
            .into_iter()
            .map(|(trunk, inbound, result, n)| {
                (
                    vec![
                        ("trunk", trunk),
                        (
                            "direction",
                            if inbound { "inbound" } else { "outbound" }.to_owned(),
                        ),
                        ("result", result.as_str().to_owned()),
                    ],
                    n,
                )
            })
            .collect();
        counter(
            e,
            "medpool_tls_handshakes",
            "SIP TLS handshakes by trunk (the peer's; unknown for other addresses), direction and result (ok, failed, timeout)",
            &rows,
        )?;
        counter(
            e,
            "medpool_tls_client_cert_refused",
            "Requests over TLS from a mutual-TLS trunk's address whose client certificate met none of its rules (answered 403)",
            &one(side.refused_requests()),
        )?;
    }
    counter(
        e,
        "medpool_sip_retransmissions",
        "Messages sent again by the transaction layer",
        &one(ctx.driver.retransmissions()),
    )?;
    gauge(
        e,
        "medpool_sip_transactions",
        "Live SIP transactions",
        &[(Vec::new(), ctx.driver.len() as i64)],
    )?;
    gauge(
        e,
        "medpool_sip_transaction_slots",
        "Room the transaction tables hold, in transactions (hash-map capacity, live or not)",
        &[(Vec::new(), ctx.driver.slots() as i64)],
    )?;
    gauge(
        e,
        "medpool_registry_slots",
        "Room the routing registry's maps hold, in entries (hash-map capacity, live or not)",
        &[(Vec::new(), ctx.registry.slots() as i64)],
    )?;
    let (legs, legs_room) = ctx.remembered_legs();
    gauge(
        e,
        "medpool_hung_up_legs",
        "Legs B hung up lately, remembered so that a gateway's late 2xx is only ACKed",
        &[(Vec::new(), legs as i64)],
    )?;
    gauge(
        e,
        "medpool_hung_up_legs_slots",
        "Room the remembered hung-up legs' sets hold, in legs",
        &[(Vec::new(), legs_room as i64)],
    )?;
    let sweeps = ctx.driver.sweeps();
    counter(
        e,
        "medpool_sip_timer_sweeps",
        "Sweeps of the transaction timer task (each fires every timer due)",
        &one(sweeps.sweeps),
    )?;
    counter(
        e,
        "medpool_sip_timer_sweeps_slow",
        "Timer sweeps that held the transaction table 1 ms or longer",
        &one(sweeps.slow),
    )?;
    gauge(
        e,
        "medpool_sip_timer_sweep_longest_microseconds",
        "The longest a timer sweep held the transaction table",
        &[(
            Vec::new(),
            i64::try_from(sweeps.longest.as_micros()).unwrap_or(i64::MAX),
        )],
    )?;
    Ok(())
}
