//! Trace spans of a call: one trace per call, a span per leg and per transaction; phone numbers
//! redacted when the node is told to.

use crate::ctx::NodeCtx;

/// A number as it goes into a trace: as is, or only its last two digits when redaction is on.
pub(super) fn traced_number(ctx: &NodeCtx, n: &str) -> String {
    if !ctx.redact_numbers || n.len() <= 2 {
        return n.to_owned();
    }
    format!("{}{}", "*".repeat(n.len() - 2), &n[n.len() - 2..])
}

/// The root span of a call (parented to `traceparent` when the call continues another node's trace).
pub(super) fn call_span(
    ctx: &NodeCtx,
    call_id: &str,
    shard: u16,
    inbound: &str,
    called: &str,
    calling: &str,
    traceparent: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "call",
        sip.call_id = call_id,
        call.shard = shard,
        call.node = ctx.shards.node_id(),
        call.inbound_trunk = inbound,
        call.called = traced_number(ctx, called).as_str(),
        call.calling = traced_number(ctx, calling).as_str(),
        call.gateway = tracing::field::Empty,
        call.b_call_id = tracing::field::Empty,
        call.failovers = tracing::field::Empty,
        sip.status = tracing::field::Empty,
        call.restored = tracing::field::Empty,
        media.mode = tracing::field::Empty,
        media.translated = tracing::field::Empty,
        media.packets_a = tracing::field::Empty,
        media.packets_b = tracing::field::Empty,
        media.lost = tracing::field::Empty,
    );
    if let Some(tp) = traceparent {
        crate::trace::set_parent(&span, tp);
    }
    span
}
