//! Trace context across nodes: what a call or cast carries, and the spans
//! a callee and a forwarder open for it.
//!
//! With the `otel` feature, a call to another node injects the W3C context
//! of its `mesh.call` span (kind client; casts: `mesh.cast`, producer) into
//! the frame; the callee runs the handler in a `mesh.serve` span (server;
//! for a cast consumer) whose parent is that remote context, and a node
//! that forwards opens a `mesh.forward` span (internal) in between and
//! sends its own id as the parent. Spans are DEBUG level and carry
//! `mesh.node` (nodes in one process share a tracer provider).
//!
//! Without the feature (or without an OpenTelemetry layer in the
//! subscriber), nothing is injected and a received context passes through
//! a forwarder unchanged. Incoming contexts are validated when the frame
//! is decoded ([`crate::wire::TraceContext`]), before OpenTelemetry's
//! lenient propagator sees them. Cost without a subscriber interested in
//! DEBUG spans: the disabled span callsites, nothing allocated.

use crate::wire::TraceContext;

/// The context to send with a request made inside `span`.
pub(crate) fn outgoing(span: &tracing::Span) -> Option<TraceContext> {
    #[cfg(feature = "otel")]
    {
        otel::inject(span)
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = span;
        None
    }
}

/// The span the handler of a request from another node runs in: a child
/// of the caller's context when there is one.
pub(crate) fn serve_span(
    node: &str,
    capability: &str,
    cast: bool,
    trace: Option<&TraceContext>,
) -> tracing::Span {
    let kind = if cast { "consumer" } else { "server" };
    let span = tracing::debug_span!(
        "mesh.serve",
        otel.kind = kind,
        rpc.system.name = "mesh",
        mesh.node = node,
        mesh.capability = capability,
    );
    set_parent(&span, trace);
    span
}

/// The span of a forward, and the context to forward: the forwarder's own
/// span as parent with `otel` and a layer, else the received one unchanged.
pub(crate) fn forward(
    node: &str,
    trace: Option<TraceContext>,
) -> (tracing::Span, Option<TraceContext>) {
    let span = tracing::debug_span!("mesh.forward", otel.kind = "internal", mesh.node = node);
    set_parent(&span, trace.as_ref());
    let own = outgoing(&span);
    (span, own.or(trace))
}

fn set_parent(span: &tracing::Span, trace: Option<&TraceContext>) {
    #[cfg(feature = "otel")]
    if let Some(trace) = trace {
        otel::set_parent(span, trace);
    }
    #[cfg(not(feature = "otel"))]
    let _ = (span, trace);
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::wire::TraceContext;

    #[derive(Default)]
    struct Carrier {
        tp: Option<String>,
        ts: Option<String>,
    }

    impl Injector for Carrier {
        fn set(&mut self, key: &str, value: String) {
            match key {
                "traceparent" => self.tp = Some(value),
                "tracestate" if !value.is_empty() => self.ts = Some(value),
                _ => {}
            }
        }
    }

    struct Extract<'a>(&'a TraceContext);

    impl Extractor for Extract<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            match key {
                "traceparent" => Some(self.0.traceparent()),
                "tracestate" => self.0.tracestate(),
                _ => None,
            }
        }
        fn keys(&self) -> Vec<&str> {
            vec!["traceparent", "tracestate"]
        }
    }

    pub(super) fn inject(span: &tracing::Span) -> Option<TraceContext> {
        if span.is_disabled() {
            return None;
        }
        let mut carrier = Carrier::default();
        TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
        TraceContext::from_header(&carrier.tp?, carrier.ts.as_deref())
    }

    pub(super) fn set_parent(span: &tracing::Span, trace: &TraceContext) {
        if span.is_disabled() {
            return;
        }
        let cx = TraceContextPropagator::new().extract(&Extract(trace));
        // Fails only once the span was entered: it never was here.
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_forwarder_without_a_tracer_passes_the_context_on_unchanged() {
        // No OpenTelemetry layer here (with or without the feature): the
        // forward span has no context of its own to inject.
        let t = TraceContext::from_header(TP, Some("congo=t61rcWkgMzE")).unwrap();
        let (_span, out) = forward("n1", Some(t.clone()));
        assert_eq!(out, Some(t));
        assert_eq!(forward("n1", None).1, None);
        assert_eq!(outgoing(&tracing::Span::none()), None);
    }
}
