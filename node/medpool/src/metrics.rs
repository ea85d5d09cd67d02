//! Prometheus metrics (`prometheus-client`), served as text on `--metrics-listen` at `/metrics`.
//! Everything is read at scrape time from the counters the libraries already keep (atomics; no lock on
//! a call path): calls by trunk and gateway, SIP traffic by method and status class, retransmissions,
//! front-door refusals, gateway health, post-dial delay, and — in a pool — Raft term, leader,
//! commit/applied, shards owned, lease, forwarding and dialog-record replication.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use medpool_b2bua::node::{NodeCtx, PDD_BUCKETS};
use medpool_cluster::pool::Pool;
use medpool_sip::transport::METHODS;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Labels = Vec<(&'static str, String)>;

/// Reads the node (and pool) at scrape time.
#[derive(Debug)]
pub struct NodeCollector {
    ctx: Arc<NodeCtx>,
    pool: Option<Arc<Pool>>,
}

fn counter(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, v) in rows {
        ConstCounter::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Labels, i64)],
) -> Result<(), std::fmt::Error> {
    let mut m = e.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn one(v: u64) -> Vec<(Labels, u64)> {
    vec![(Vec::new(), v)]
}

fn status_class(i: usize) -> String {
    format!("{}xx", i + 1)
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let ctx = &self.ctx;
        let s = &ctx.stats;
        counter(
            &mut e,
            "medpool_calls_started",
            "Calls accepted (a DialogActor started)",
            &one(s.calls_started.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_calls_answered",
            "Calls answered",
            &one(s.calls_answered.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_calls_ended",
            "Calls ended",
            &one(s.calls_ended.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_calls_refused_capacity",
            "New calls refused 503 (capacity, draining)",
            &one(s.calls_refused_capacity.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_calls_restored",
            "Calls rebuilt here after their shard moved",
            &one(s.calls_restored.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_setups_lingering",
            "Calls in set-up whose shard moved away in a planned move: they finished here",
            &one(s.setups_lingering.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_setups_handed_over",
            "Calls set up here after their shard moved away, whose record went to the new owner",
            &one(s.setups_handed_over.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_sent_to_lingering",
            "Messages sent on to the previous owner of a shard, which still sets their call up",
            &one(s.sent_to_lingering.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_refused_sources",
            "Requests from addresses that are no configured trunk",
            &one(s.refused_sources.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_forwarded_messages",
            "SIP messages forwarded to their shard's owner",
            &one(s.forwarded.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_forward_failures",
            "SIP messages that could not be forwarded (peer queue full or unreachable)",
            &one(s.forward_failures.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_invites_held_for_takeover",
            "New UDP INVITEs left to their retransmission while this node took their shard over",
            &one(s.held_for_takeover.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_orphan_answers",
            "Gateway 2xx answers no call knew any more (late answers to abandoned attempts), ACKed and hung up",
            &one(s.orphan_answers.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_forged_answers",
            "2xx answers no call knew whose Call-ID this pool did not mint or that came from no trunk: ignored",
            &one(s.forged_answers.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_gateway_transitions",
            "Gateway up/down changes",
            &one(s.gateway_transitions.load(Relaxed)),
        )?;
        let active: Vec<(Labels, i64)> = ctx
            .inbound_active()
            .into_iter()
            .map(|(t, n)| (vec![("trunk", t)], i64::from(n)))
            .collect();
        gauge(
            &mut e,
            "medpool_active_calls_inbound",
            "Calls in progress by inbound trunk",
            &active,
        )?;
        gauge(
            &mut e,
            "medpool_active_calls",
            "Calls in progress on this node",
            &[(Vec::new(), ctx.active_calls() as i64)],
        )?;
        // Post-dial delay.
        {
            let h = &s.post_dial_delay;
            let buckets: Vec<(f64, u64)> = PDD_BUCKETS
                .iter()
                .copied()
                .chain(std::iter::once(f64::INFINITY))
                .zip(h.buckets.iter().map(|b| b.load(Relaxed)))
                .collect();
            let mut m = e.encode_descriptor(
                "medpool_post_dial_delay_seconds",
                "INVITE received → first 18x or 2xx relayed to the caller",
                None,
                MetricType::Histogram,
            )?;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                h.sum_us.load(Relaxed) as f64 / 1e6,
                h.count.load(Relaxed),
                &buckets,
                None,
            )?;
        }
        // Per-stage latency (medpool_b2bua::latency).
        let st = &s.stages;
        for (name, help, h) in [
            (
                "medpool_stage_queue_depth_messages",
                "Messages waiting in the inbound queue when the dispatcher takes one",
                &st.queue_depth,
            ),
            (
                "medpool_stage_dispatch_seconds",
                "One inbound message through the dispatcher (ingress decision, transaction layer, the core events it raised)",
                &st.dispatch,
            ),
            (
                "medpool_stage_call_start_seconds",
                "A new call's actor spawn on the dispatcher (spawn and registration, its start not awaited)",
                &st.call_start,
            ),
            (
                "medpool_stage_invite_out_seconds",
                "A new call's actor started → its first leg-B INVITE handed to the transport",
                &st.invite_out,
            ),
            (
                "medpool_stage_scheduler_lag_seconds",
                "How late a 5 ms tick of the runtime wakes up",
                &st.scheduler_lag,
            ),
        ] {
            let snap = h.snapshot();
            let mut m = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
            m.encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                snap.sum,
                snap.count,
                &snap.buckets,
                None,
            )?;
        }
        // SIP traffic.
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
            &mut e,
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
            &mut e,
            "medpool_sip_responses",
            "SIP responses by direction and status class",
            &resp,
        )?;
        let fd = ctx.transports.stats();
        counter(
            &mut e,
            "medpool_sip_parse_errors",
            "Messages dropped as unparseable or malformed",
            &one(fd.parse_errors.load(Relaxed)),
        )?;
        counter(
            &mut e,
            "medpool_sip_rejected",
            "Requests answered by the front door (400, 416, 420, ...)",
            &one(fd.rejected.load(Relaxed)),
        )?;
        counter(
            &mut e,
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
            counter(&mut e, name, help, &one(value.load(Relaxed)))?;
        }
        if let Some(tcp) = ctx.transports.tcp() {
            let reasons = |rows: &[(&'static str, u64)]| -> Vec<(Labels, u64)> {
                rows.iter()
                    .map(|(reason, v)| (vec![("reason", (*reason).to_owned())], *v))
                    .collect()
            };
            counter(
                &mut e,
                "medpool_sip_tcp_refused",
                "TCP connections reset at accept or not opened, by the cap that refused them",
                &reasons(&tcp.stats().refused_by_reason()),
            )?;
            counter(
                &mut e,
                "medpool_sip_tcp_closed",
                "TCP connections closed by the door (message deadline, idle, write timeout, framing)",
                &reasons(&tcp.stats().closed_by_reason()),
            )?;
            gauge(
                &mut e,
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
                &mut e,
                "medpool_tls_handshakes",
                "SIP TLS handshakes by trunk (the peer's; unknown for other addresses), direction and result (ok, failed, timeout)",
                &rows,
            )?;
            counter(
                &mut e,
                "medpool_tls_client_cert_refused",
                "Requests over TLS from a mutual-TLS trunk's address whose client certificate met none of its rules (answered 403)",
                &one(side.refused_requests()),
            )?;
        }
        counter(
            &mut e,
            "medpool_sip_retransmissions",
            "Messages sent again by the transaction layer",
            &one(ctx.driver.retransmissions()),
        )?;
        gauge(
            &mut e,
            "medpool_sip_transactions",
            "Live SIP transactions",
            &[(Vec::new(), ctx.driver.len() as i64)],
        )?;
        gauge(
            &mut e,
            "medpool_sip_transaction_slots",
            "Room the transaction tables hold, in transactions (hash-map capacity, live or not)",
            &[(Vec::new(), ctx.driver.slots() as i64)],
        )?;
        gauge(
            &mut e,
            "medpool_registry_slots",
            "Room the routing registry's maps hold, in entries (hash-map capacity, live or not)",
            &[(Vec::new(), ctx.registry.slots() as i64)],
        )?;
        let (legs, legs_room) = ctx.remembered_legs();
        gauge(
            &mut e,
            "medpool_hung_up_legs",
            "Legs B hung up lately, remembered so that a gateway's late 2xx is only ACKed",
            &[(Vec::new(), legs as i64)],
        )?;
        gauge(
            &mut e,
            "medpool_hung_up_legs_slots",
            "Room the remembered hung-up legs' sets hold, in legs",
            &[(Vec::new(), legs_room as i64)],
        )?;
        let sweeps = ctx.driver.sweeps();
        counter(
            &mut e,
            "medpool_sip_timer_sweeps",
            "Sweeps of the transaction timer task (each fires every timer due)",
            &one(sweeps.sweeps),
        )?;
        counter(
            &mut e,
            "medpool_sip_timer_sweeps_slow",
            "Timer sweeps that held the transaction table 1 ms or longer",
            &one(sweeps.slow),
        )?;
        gauge(
            &mut e,
            "medpool_sip_timer_sweep_longest_microseconds",
            "The longest a timer sweep held the transaction table",
            &[(
                Vec::new(),
                i64::try_from(sweeps.longest.as_micros()).unwrap_or(i64::MAX),
            )],
        )?;
        // Gateways.
        let gws = ctx.gateways.all();
        let gw = |f: &dyn Fn(&medpool_b2bua::gateway::GatewayHandle) -> i64| -> Vec<(Labels, i64)> {
            gws.iter()
                .map(|g| (vec![("gateway", g.name.clone())], f(g)))
                .collect()
        };
        gauge(
            &mut e,
            "medpool_gateway_up",
            "1 when the gateway is up",
            &gw(&|g| i64::from(g.is_up())),
        )?;
        gauge(
            &mut e,
            "medpool_gateway_enabled",
            "1 when an operator allows new calls",
            &gw(&|g| i64::from(g.is_enabled())),
        )?;
        gauge(
            &mut e,
            "medpool_gateway_active_calls",
            "Calls through the gateway on this node",
            &gw(&|g| i64::from(g.active_calls())),
        )?;
        gauge(
            &mut e,
            "medpool_gateway_options_rtt_microseconds",
            "Last OPTIONS round trip",
            &gw(&|g| g.last_rtt_us.load(Relaxed) as i64),
        )?;
        gauge(
            &mut e,
            "medpool_gateway_consecutive_failures",
            "Probe/INVITE failures in a row",
            &gw(&|g| i64::from(g.failures.load(Relaxed))),
        )?;
        // Trunks named by DNS.
        {
            use medpool_b2bua::dns::Status;
            let d = &ctx.dns.stats;
            counter(
                &mut e,
                "medpool_dns_lookups",
                "DNS lookups of trunk names (the NAPTR/SRV/A chain counting once)",
                &one(d.lookups.load(Relaxed)),
            )?;
            counter(
                &mut e,
                "medpool_dns_lookup_failures",
                "DNS lookups of trunk names that failed",
                &one(d.failures.load(Relaxed)),
            )?;
            counter(
                &mut e,
                "medpool_dns_stale_kept",
                "Failed DNS lookups after which the trunk's expired answer was kept (stale)",
                &one(d.stale_kept.load(Relaxed)),
            )?;
            let views = ctx.dns.views();
            let per = |f: &dyn Fn(&medpool_b2bua::dns::TrunkView) -> i64| -> Vec<(Labels, i64)> {
                views
                    .iter()
                    .map(|v| (vec![("trunk", v.trunk.clone())], f(v)))
                    .collect()
            };
            gauge(
                &mut e,
                "medpool_dns_stale",
                "1 while a trunk named by DNS uses an expired answer because its DNS server fails",
                &per(&|v| i64::from(matches!(v.status, Status::Stale { .. }))),
            )?;
            gauge(
                &mut e,
                "medpool_dns_unresolved",
                "1 while a trunk named by DNS has no usable answer (calls skip it)",
                &per(&|v| i64::from(matches!(v.status, Status::Unresolved { .. }))),
            )?;
            let targets: Vec<(Labels, i64)> = views
                .iter()
                .flat_map(|v| {
                    v.targets.iter().map(|t| {
                        (
                            vec![
                                ("trunk", v.trunk.clone()),
                                ("target", t.target.addr.to_string()),
                            ],
                            i64::from(t.health.is_up()),
                        )
                    })
                })
                .collect();
            gauge(
                &mut e,
                "medpool_dns_target_up",
                "1 when a resolved target of a trunk named by DNS is up",
                &targets,
            )?;
        }
        if let Some(media) = &ctx.media {
            media_metrics(&mut e, media, s)?;
        }
        // The pool.
        if let Some(pool) = &self.pool {
            let info = pool.info();
            let m = pool.raft().metrics();
            let m = openraft::async_runtime::watch::WatchReceiver::borrow_watched(&m).clone();
            gauge(
                &mut e,
                "medpool_raft_term",
                "Current Raft term",
                &[(Vec::new(), info.term as i64)],
            )?;
            gauge(
                &mut e,
                "medpool_raft_leader",
                "Id of the leader this node knows (-1: none)",
                &[(Vec::new(), info.leader.map_or(-1, |l| l as i64))],
            )?;
            gauge(
                &mut e,
                "medpool_raft_is_leader",
                "1 when this node is the leader",
                &[(Vec::new(), i64::from(info.leader == Some(info.node_id)))],
            )?;
            let committed = m.local_committed.map_or(0, |l| l.index) as i64;
            let applied = info.applied.unwrap_or(0) as i64;
            gauge(
                &mut e,
                "medpool_raft_committed_index",
                "Last committed log index",
                &[(Vec::new(), committed)],
            )?;
            gauge(
                &mut e,
                "medpool_raft_applied_index",
                "Last applied log index",
                &[(Vec::new(), applied)],
            )?;
            gauge(
                &mut e,
                "medpool_raft_apply_lag",
                "Committed minus applied",
                &[(Vec::new(), committed - applied)],
            )?;
            let me = info.node_id;
            let owned = info
                .nodes
                .iter()
                .find(|n| n.id == me)
                .map_or(0, |n| n.shards);
            gauge(
                &mut e,
                "medpool_shards_owned",
                "Shards this node owns",
                &[(Vec::new(), owned as i64)],
            )?;
            gauge(
                &mut e,
                "medpool_shards_unowned",
                "Shards without an owner",
                &[(Vec::new(), info.unowned as i64)],
            )?;
            gauge(
                &mut e,
                "medpool_lease_held",
                "1 while this node holds its lease",
                &[(Vec::new(), i64::from(info.lease))],
            )?;
            gauge(
                &mut e,
                "medpool_lease_remaining_milliseconds",
                "Time left on this node's lease",
                &[(
                    Vec::new(),
                    pool.lease_remaining().map_or(0, |d| d.as_millis() as i64),
                )],
            )?;
            gauge(
                &mut e,
                "medpool_dialog_records",
                "Confirmed dialogs in the replicated state",
                &[(Vec::new(), info.dialogs as i64)],
            )?;
            let d = &pool.dialog_stats;
            counter(
                &mut e,
                "medpool_dialog_batches",
                "Raft entries written for dialog records",
                &one(d.batches.load(Relaxed)),
            )?;
            counter(
                &mut e,
                "medpool_dialog_records_replicated",
                "Dialog records written (upserts + removals)",
                &one(d.records.load(Relaxed)),
            )?;
            counter(
                &mut e,
                "medpool_dialog_bytes_replicated",
                "Dialog record payload bytes written",
                &one(d.bytes.load(Relaxed)),
            )?;
            counter(
                &mut e,
                "medpool_dialog_batches_failed",
                "Dialog batches that did not commit",
                &one(d.failed.load(Relaxed)),
            )?;
            let sizes: Vec<(Labels, u64)> = ["1", "4", "16", "64", "256", "more"]
                .iter()
                .zip(d.sizes.iter())
                .map(|(b, c)| (vec![("le", (*b).to_owned())], c.load(Relaxed)))
                .collect();
            counter(
                &mut e,
                "medpool_dialog_batch_size",
                "Dialog batches by size bucket",
                &sizes,
            )?;
            pool_stages(&mut e)?;
        }
        Ok(())
    }
}

/// The pool's per-stage counters (medpool_cluster::stats): Raft append, fsync, apply, codec,
/// replication, dialog commits, snapshots, forwarding, internal RPCs.
fn pool_stages(e: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let rows = medpool_cluster::stats::STATS.rows();
    let mut start = 0;
    while let Some(first) = rows.get(start) {
        let len = rows[start..]
            .iter()
            .take_while(|r| r.name == first.name)
            .count();
        let series: Vec<(Labels, u64)> = rows[start..start + len]
            .iter()
            .map(|r| (vec![(r.label.0, r.label.1.to_owned())], r.value))
            .collect();
        counter(e, first.name, first.help, &series)?;
        start += len;
    }
    Ok(())
}

/// The media relay: what it relayed, its sessions and ports, the calls it refused or ended.
fn media_metrics(
    e: &mut DescriptorEncoder,
    media: &medpool_b2bua::media::MediaRuntime,
    s: &medpool_b2bua::node::Stats,
) -> Result<(), std::fmt::Error> {
    let t = media.relay.totals();
    let rows = [
        (
            "medpool_media_packets",
            "RTP packets received by the relay (both legs)",
            t.packets,
        ),
        (
            "medpool_media_bytes",
            "RTP bytes received by the relay (both legs)",
            t.bytes,
        ),
        (
            "medpool_media_rtcp_packets",
            "RTCP packets received by the relay",
            t.rtcp_packets,
        ),
        (
            "medpool_media_lost_packets",
            "RTP packets lost before the relay (sequence gaps)",
            t.lost,
        ),
        (
            "medpool_media_stray_packets",
            "Packets from a source other than the latched one (dropped)",
            t.stray,
        ),
        (
            "medpool_media_translated_packets",
            "Packets translated between G.711 A-law and mu-law",
            t.translated,
        ),
        (
            "medpool_media_latches",
            "Times a relay leg latched to its peer's source",
            t.latches,
        ),
        (
            "medpool_media_send_failures",
            "Packets the relay could not send on",
            t.send_failed,
        ),
        (
            "medpool_media_timeouts",
            "Calls hung up because their media stopped (media_timeout)",
            s.media_timeouts.load(Relaxed),
        ),
        (
            "medpool_media_ports_exhausted",
            "New calls refused with 503 because the media port range was full",
            s.media_ports_exhausted.load(Relaxed),
        ),
        (
            "medpool_media_reanchored",
            "Calls taken over whose media was moved onto this node (media failover)",
            s.media_reanchored.load(Relaxed),
        ),
        (
            "medpool_media_reanchor_failures",
            "Re-anchoring re-INVITEs that failed (the leg goes on with signalling only)",
            s.media_reanchor_failed.load(Relaxed),
        ),
    ];
    for (name, help, v) in rows {
        counter(e, name, help, &one(v))?;
    }
    let drops = s.srtp_drops();
    let per_trunk = |f: fn(&medpool_b2bua::ctx::SrtpDrops) -> u64| -> Vec<(Labels, u64)> {
        drops
            .iter()
            .map(|(t, d)| (vec![("trunk", t.clone())], f(d)))
            .collect()
    };
    counter(
        e,
        "medpool_srtp_auth_failures",
        "SRTP/SRTCP packets from a trunk's peers that failed authentication, dropped (counted when the call's relay session closes)",
        &per_trunk(|d| d.auth_failed),
    )?;
    counter(
        e,
        "medpool_srtp_replays",
        "SRTP/SRTCP packets from a trunk's peers that were replayed or too old, dropped (counted when the call's relay session closes)",
        &per_trunk(|d| d.replayed),
    )?;
    let ports = media.relay.ports();
    let gauges = [
        (
            "medpool_media_sessions",
            "Relay sessions running (relayed calls)",
            media.relay.sessions(),
        ),
        (
            "medpool_media_ports_in_use",
            "Media UDP ports in use (RTP and RTCP)",
            ports.pairs_in_use() * 2,
        ),
        (
            "medpool_media_ports_free",
            "Media UDP ports free (RTP and RTCP)",
            ports.free_pairs() * 2,
        ),
    ];
    for (name, help, v) in gauges {
        gauge(
            e,
            name,
            help,
            &[(Vec::new(), i64::try_from(v).unwrap_or(i64::MAX))],
        )?;
    }
    Ok(())
}

/// A registry with the node collector.
pub fn registry(ctx: Arc<NodeCtx>, pool: Option<Arc<Pool>>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(NodeCollector { ctx, pool }));
    r
}

/// Scrapes served at once; a connection beyond them is closed at accept.
pub const MAX_SCRAPES: usize = 16;
/// Time one scrape may take, reading the request and writing the answer together.
pub const SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `GET /metrics` (Prometheus text format) until the process ends. Tiny HTTP/1.1: one
/// request per connection, bounded request size, at most [`MAX_SCRAPES`] connections at once, each
/// cut off after [`SCRAPE_TIMEOUT`]; failed accepts (EMFILE, ...) are retried with a growing backoff.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(accept_loop(listener, registry));
    Ok(local)
}

async fn accept_loop(listener: tokio::net::TcpListener, registry: Arc<Registry>) {
    use medpool_sip::transport::tcp::{
        ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN, is_connection_error,
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let sock = match listener.accept().await {
            Ok((sock, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                sock
            }
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                tracing::warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "metrics accept failed, backing off");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics connection refused: {MAX_SCRAPES} scrapes in progress");
            continue;
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(SCRAPE_TIMEOUT, scrape(sock, &registry)).await;
            drop(slot);
        });
    }
}

/// Reads one request (at most 4 KiB of head) and answers it.
async fn scrape(mut sock: tokio::net::TcpStream, registry: &Registry) {
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    while n < buf.len() {
        match sock.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let (status, body) = if req.starts_with("GET /metrics ") {
        let mut out = String::new();
        match prometheus_client::encoding::text::encode(&mut out, registry) {
            Ok(()) => ("200 OK", out),
            Err(_) => ("500 Internal Server Error", String::new()),
        }
    } else {
        ("404 Not Found", "not found\n".to_owned())
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(body.as_bytes()).await;
}
