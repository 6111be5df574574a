//! Trace context across nodes (feature `otel`): one OpenTelemetry trace
//! spans the caller, the node that forwards and the owner that runs the
//! handler, on the in-memory transport, exported to an in-memory exporter.
//!
//! Run with `cargo test --features otel --test trace`.

use std::future::IntoFuture;
use std::sync::OnceLock;
use std::time::Duration;

use mesh::prelude::*;
use mesh::transport::memory::MemoryNetwork;
use mesh::Transport;
use mesh_testkit::actors::{Player, Score};
use mesh_testkit::soon;
use opentelemetry::trace::{SpanKind, TraceId, TracerProvider as _};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData, SpanExporter};
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Woken after every export, so tests await spans instead of polling.
static EXPORTED: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// The in-memory exporter, telling [`EXPORTED`] after each batch.
#[derive(Debug, Clone)]
struct Notifying(InMemorySpanExporter);

impl SpanExporter for Notifying {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let done = self.0.export(batch).await;
        EXPORTED.notify_waiters();
        done
    }
}

/// One exporter for the test binary: the subscriber is global (the nodes'
/// tasks run on every worker thread); each test reads its own trace.
fn exporter() -> &'static (InMemorySpanExporter, SdkTracerProvider) {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(Notifying(exporter.clone()))
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("mesh-test")));
        tracing::subscriber::set_global_default(subscriber).unwrap();
        (exporter, provider)
    })
}

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The spans of trace `trace` once `done` holds of them (spans end on
/// other nodes' tasks, a moment after the reply).
async fn spans_of(trace: TraceId, done: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
    let (exporter, provider) = exporter();
    soon(async {
        loop {
            let exported = EXPORTED.notified();
            provider.force_flush().unwrap();
            let spans: Vec<SpanData> = exporter
                .get_finished_spans()
                .unwrap()
                .into_iter()
                .filter(|s| s.span_context.trace_id() == trace)
                .collect();
            if done(&spans) {
                return spans;
            }
            exported.await;
        }
    })
    .await
}

fn find<'a>(spans: &'a [SpanData], name: &str, node: Option<&str>) -> Option<&'a SpanData> {
    spans
        .iter()
        .find(|s| s.name == name && node.is_none_or(|n| attr(s, "mesh.node").as_deref() == Some(n)))
}

/// Three nodes where `a` still places an id on `b`, which places it on `c`
/// (heartbeats an hour apart: `a` never hears of `c`), as in
/// `tests/core/cluster.rs`.
async fn disagreeing(prefix: &str) -> (Node, Node, Node, String) {
    let net = Transport::memory(MemoryNetwork::new());
    let slow = |name: String, seeds: Vec<String>| {
        Node::builder()
            .id(name.clone())
            .default_node(false)
            .cluster("test")
            .cookie(mesh_testkit::COOKIE)
            .transport(net.clone())
            .listen(name)
            .seeds(seeds)
            .heartbeat(Duration::from_secs(3600), Duration::from_secs(7200))
            .capabilities(["game"])
            .actor::<Player>()
            .start()
    };
    let (na, nb, nc) = (
        format!("{prefix}-a"),
        format!("{prefix}-b"),
        format!("{prefix}-c"),
    );
    let a = slow(na.clone(), vec![]).await.unwrap();
    let b = slow(nb.clone(), vec![na.clone()]).await.unwrap();
    for n in [&a, &b] {
        soon(n.membership_changes().wait_for(|m| m.len() == 2))
            .await
            .unwrap();
    }
    let c = slow(nc.clone(), vec![nb.clone()]).await.unwrap();
    soon(b.membership_changes().wait_for(|m| m.len() == 3))
        .await
        .unwrap();
    soon(c.membership_changes().wait_for(|m| m.len() == 2))
        .await
        .unwrap();
    let id = (0..)
        .map(|i| format!("t{i}"))
        .find(|id| {
            a.owner_of::<Player>(id).unwrap() == nb && b.owner_of::<Player>(id).unwrap() == nc
        })
        .unwrap();
    (a, b, c, id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_caller_forwarder_and_callee() {
    exporter();
    let (a, b, c, id) = disagreeing("tr").await;
    let root = tracing::info_span!("test.root");
    let (served_by, _) = soon(
        a.call::<Player, _>(&id, Score(3))
            .into_future()
            .instrument(root.clone()),
    )
    .await
    .unwrap();
    assert_eq!(served_by, "tr-c", "b forwarded it to c");
    drop(root);
    let trace = {
        let (exporter, provider) = exporter();
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        find(&spans, "test.root", None)
            .expect("the root span was exported")
            .span_context
            .trace_id()
    };
    let spans = spans_of(trace, |s| {
        find(s, "mesh.forward", Some("tr-b")).is_some()
            && find(s, "mesh.serve", Some("tr-c")).is_some()
    })
    .await;
    let call = find(&spans, "mesh.call", None).expect("the caller's span");
    let forward = find(&spans, "mesh.forward", Some("tr-b")).unwrap();
    let serve = find(&spans, "mesh.serve", Some("tr-c")).unwrap();
    assert_eq!(call.span_kind, SpanKind::Client);
    assert_eq!(forward.span_kind, SpanKind::Internal);
    assert_eq!(serve.span_kind, SpanKind::Server);
    // caller -> forwarder -> callee, each hop a remote parent.
    assert_eq!(forward.parent_span_id, call.span_context.span_id());
    assert_eq!(serve.parent_span_id, forward.span_context.span_id());
    assert!(forward.parent_span_is_remote && serve.parent_span_is_remote);
    assert_eq!(attr(serve, "rpc.system.name").as_deref(), Some("mesh"));
    // The trace, as `--nocapture` shows it (the closing note).
    for s in [call, forward, serve] {
        println!(
            "trace {} span {} parent {} remote-parent {:5} {:?} {} node={}",
            s.span_context.trace_id(),
            s.span_context.span_id(),
            s.parent_span_id,
            s.parent_span_is_remote,
            s.span_kind,
            s.name,
            attr(s, "mesh.node").unwrap_or_default()
        );
    }
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cast_joins_the_trace_through_the_forwarder() {
    exporter();
    let (a, b, c, id) = disagreeing("tc").await;
    let root = tracing::info_span!("test.cast");
    root.in_scope(|| a.cast::<Player, _>(&id, Score(4)).unwrap());
    let trace = {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        root.context().span().span_context().trace_id()
    };
    drop(root);
    let spans = spans_of(trace, |s| find(s, "mesh.serve", Some("tc-c")).is_some()).await;
    let cast = find(&spans, "mesh.cast", None).expect("the caster's span");
    let forward = find(&spans, "mesh.forward", Some("tc-b")).expect("the forwarder's span");
    let serve = find(&spans, "mesh.serve", Some("tc-c")).unwrap();
    assert_eq!(cast.span_kind, SpanKind::Producer);
    assert_eq!(serve.span_kind, SpanKind::Consumer);
    assert_eq!(forward.parent_span_id, cast.span_context.span_id());
    assert_eq!(serve.parent_span_id, forward.span_context.span_id());
    // The cast ran on c.
    let (served_by, score) = soon(a.call::<Player, _>(&id, Score(0)).into_future())
        .await
        .unwrap();
    assert_eq!((served_by.as_str(), score), ("tc-c", 4));
    for n in [a, b, c] {
        n.shutdown().await.unwrap();
    }
}
