//! Metrics and tracing: every metric named in `mesh::telemetry` moves as
//! documented, and every call runs in a `mesh.call` span with its actor, id
//! and message. One test alone in its binary: recorder and subscriber are
//! process-wide, and the metric handles are resolved at the first node start.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use mesh::prelude::*;
use mesh::telemetry;
use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
    SharedString, Unit,
};

// ------------------------------------------------------------ a recorder

#[derive(Default)]
struct Cell {
    value: Mutex<f64>,
    samples: AtomicU64,
}

impl CounterFn for Cell {
    fn increment(&self, v: u64) {
        *self.value.lock().unwrap() += v as f64;
    }
    fn absolute(&self, v: u64) {
        *self.value.lock().unwrap() = v as f64;
    }
}

impl GaugeFn for Cell {
    fn increment(&self, v: f64) {
        *self.value.lock().unwrap() += v;
    }
    fn decrement(&self, v: f64) {
        *self.value.lock().unwrap() -= v;
    }
    fn set(&self, v: f64) {
        *self.value.lock().unwrap() = v;
    }
}

impl HistogramFn for Cell {
    fn record(&self, _: f64) {
        self.samples.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Default, Clone)]
struct Recorder(Arc<Mutex<BTreeMap<String, Arc<Cell>>>>);

impl Recorder {
    fn cell(&self, key: &Key) -> Arc<Cell> {
        let mut name = key.name().to_owned();
        for l in key.labels() {
            name.push_str(&format!("{{{}={}}}", l.key(), l.value()));
        }
        self.0.lock().unwrap().entry(name).or_default().clone()
    }
    fn value(&self, name: &str) -> f64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0.0, |c| *c.value.lock().unwrap())
    }
    fn samples(&self, name: &str) -> u64 {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.samples.load(Ordering::SeqCst))
    }
}

impl metrics::Recorder for Recorder {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        Counter::from_arc(self.cell(key))
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::from_arc(self.cell(key))
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::from_arc(self.cell(key))
    }
}

// ------------------------------------------------------------ a subscriber

/// Every span opened: its name and its fields.
type SpanLog = Vec<(String, BTreeMap<String, String>)>;

#[derive(Default, Clone)]
struct Spans(Arc<Mutex<SpanLog>>);

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(
            field.name().to_owned(),
            format!("{value:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl tracing::Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = BTreeMap::new();
        span.record(&mut Fields(&mut fields));
        let mut spans = self.0.lock().unwrap();
        spans.push((span.metadata().name().to_owned(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

// ------------------------------------------------------------ the actor

#[derive(Actor, Default)]
#[actor(capability = "counter")]
struct Meter {
    value: i64,
}

#[derive(Message, Serialize, Deserialize)]
#[message(reply = i64)]
struct Increment(i64);

#[derive(Message, Serialize, Deserialize)]
struct Explode;

#[mesh::handlers]
impl Meter {
    async fn increment(&mut self, Increment(n): Increment) -> i64 {
        self.value += n;
        self.value
    }

    async fn explode(&mut self, _: Explode) {
        panic!("on purpose");
    }
}

#[tokio::test]
async fn metrics_and_spans_follow_every_call() {
    let recorder = Recorder::default();
    metrics::set_global_recorder(recorder.clone()).unwrap();
    let spans = Spans::default();
    tracing::subscriber::set_global_default(spans.clone()).unwrap();

    let node = Node::builder()
        .capabilities(["counter"])
        .actor::<Meter>()
        .start()
        .await
        .unwrap();
    for _ in 0..3 {
        node.call::<Meter, _>("c1", Increment(1)).await.unwrap();
    }
    node.cast::<Meter, _>("c2", Increment(1)).unwrap();
    assert!(node.call::<Meter, _>("c1", Explode).await.is_err());
    assert_eq!(node.call::<Meter, _>("c1", Increment(1)).await.unwrap(), 1);

    let calls_ok = format!("{}{{outcome=ok}}", telemetry::CALLS_TOTAL);
    let calls_panicked = format!("{}{{outcome=panicked}}", telemetry::CALLS_TOTAL);
    assert_eq!(recorder.value(&calls_ok), 4.0);
    assert_eq!(recorder.value(&calls_panicked), 1.0);
    assert_eq!(
        recorder.value(&format!("{}{{outcome=ok}}", telemetry::CASTS_TOTAL)),
        1.0
    );
    assert_eq!(recorder.samples(telemetry::CALL_DURATION_SECONDS), 5);
    assert!(recorder.samples(telemetry::MAILBOX_DEPTH) >= 3);
    // c1, c2, then c1 again after its panic.
    assert_eq!(recorder.value(telemetry::ACTIVATIONS_TOTAL), 3.0);
    assert_eq!(recorder.value(telemetry::ACTIVATIONS_LIVE), 2.0);
    assert_eq!(
        recorder.value(&format!(
            "{}{{reason=panic}}",
            telemetry::DEACTIVATIONS_TOTAL
        )),
        1.0
    );

    node.shutdown().await.unwrap();
    assert_eq!(recorder.value(telemetry::ACTIVATIONS_LIVE), 0.0);
    assert_eq!(
        recorder.value(&format!(
            "{}{{reason=shutdown}}",
            telemetry::DEACTIVATIONS_TOTAL
        )),
        2.0
    );

    let spans = spans.0.lock().unwrap();
    let calls: Vec<_> = spans.iter().filter(|(n, _)| n == "mesh.call").collect();
    assert_eq!(calls.len(), 5);
    let (_, fields) = calls[0];
    assert_eq!(fields.get("actor").map(String::as_str), Some("Meter"));
    assert_eq!(fields.get("id").map(String::as_str), Some("c1"));
    assert_eq!(fields.get("message").map(String::as_str), Some("Increment"));
    assert_eq!(spans.iter().filter(|(n, _)| n == "mesh.cast").count(), 1);
}
