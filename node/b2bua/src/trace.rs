//! W3C trace context for calls: a call's root span may continue a trace started on another node (a
//! forwarded INVITE, or a call rebuilt after failover), and its context travels on as a `traceparent`
//! string. Spans are plain `tracing` spans; the binary decides whether they are exported (OTLP).

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Makes `span` a child of the remote span named by a `traceparent` (`00-<trace>-<span>-<flags>`).
/// A malformed value is ignored (the span starts its own trace).
pub fn set_parent(span: &tracing::Span, traceparent: &str) {
    let mut parts = traceparent.trim().split('-');
    let (Some("00"), Some(trace), Some(parent), Some(flags)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let (Ok(trace), Ok(parent)) = (TraceId::from_hex(trace), SpanId::from_hex(parent)) else {
        return;
    };
    if trace == TraceId::INVALID || parent == SpanId::INVALID {
        return;
    }
    let sampled = u8::from_str_radix(flags, 16).map_or(1, |f| f & 1);
    let sc = SpanContext::new(
        trace,
        parent,
        TraceFlags::new(sampled),
        true,
        TraceState::default(),
    );
    let cx = opentelemetry::Context::new().with_remote_span_context(sc);
    let _ = span.set_parent(cx);
}

/// The `traceparent` of a span, when tracing to OpenTelemetry is on (None otherwise).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_traceparents_are_ignored_without_panicking() {
        let span = tracing::info_span!("x");
        for tp in [
            "",
            "00",
            "01-aa-bb-01",
            "00-zz-yy-01",
            "00-00000000000000000000000000000000-0000000000000000-01",
        ] {
            set_parent(&span, tp);
        }
        // No OpenTelemetry layer in unit tests: no context to report.
        assert_eq!(traceparent(&span), None);
    }
}
