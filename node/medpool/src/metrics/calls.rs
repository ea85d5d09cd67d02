//! The node's call metrics: calls started, answered, ended, refused and restored, set-ups that
//! lingered or were handed over, refused sources and forged answers, calls in progress (by inbound
//! trunk), the post-dial delay histogram and the per-stage latency histograms.

use std::sync::atomic::Ordering::Relaxed;

use medpool_b2bua::node::{NodeCtx, PDD_BUCKETS};
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::family::{Labels, counter, gauge, one};

/// Writes the call metrics.
pub(super) fn encode(e: &mut DescriptorEncoder<'_>, ctx: &NodeCtx) -> Result<(), std::fmt::Error> {
    let s = &ctx.stats;
    counter(
        e,
        "medpool_calls_started",
        "Calls accepted (a DialogActor started)",
        &one(s.calls_started.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_calls_answered",
        "Calls answered",
        &one(s.calls_answered.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_calls_ended",
        "Calls ended",
        &one(s.calls_ended.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_calls_refused_capacity",
        "New calls refused 503 (capacity, draining)",
        &one(s.calls_refused_capacity.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_calls_restored",
        "Calls rebuilt here after their shard moved",
        &one(s.calls_restored.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_setups_lingering",
        "Calls in set-up whose shard moved away in a planned move: they finished here",
        &one(s.setups_lingering.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_setups_handed_over",
        "Calls set up here after their shard moved away, whose record went to the new owner",
        &one(s.setups_handed_over.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_sent_to_lingering",
        "Messages sent on to the previous owner of a shard, which still sets their call up",
        &one(s.sent_to_lingering.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_trying_for_forwarded",
        "New-call INVITEs forwarded to their shard's owner that this node answered 100 Trying itself",
        &one(s.trying_for_forwarded.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_bounced_invites",
        "New-call INVITEs another node answered 100 Trying that this node could not take, sent back to it",
        &one(s.bounced.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_refed_invites",
        "New-call INVITEs this node answered 100 and forwarded, fed again because the stream to their owner broke before it answered",
        &one(s.refed.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_refused_sources",
        "Requests from addresses that are no configured trunk",
        &one(s.refused_sources.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_forwarded_messages",
        "SIP messages forwarded to their shard's owner",
        &one(s.forwarded.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_forward_failures",
        "SIP messages that could not be forwarded (peer queue full or unreachable)",
        &one(s.forward_failures.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_invites_held_for_takeover",
        "New UDP INVITEs left to their retransmission while this node took their shard over",
        &one(s.held_for_takeover.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_orphan_answers",
        "Gateway 2xx answers no call knew any more (late answers to abandoned attempts), ACKed and hung up",
        &one(s.orphan_answers.load(Relaxed)),
    )?;
    counter(
        e,
        "medpool_forged_answers",
        "2xx answers no call knew whose Call-ID this pool did not mint or that came from no trunk: ignored",
        &one(s.forged_answers.load(Relaxed)),
    )?;
    counter(
        e,
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
        e,
        "medpool_active_calls_inbound",
        "Calls in progress by inbound trunk",
        &active,
    )?;
    gauge(
        e,
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
    Ok(())
}
