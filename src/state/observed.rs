//! The node's view of its store: every load and save goes through
//! [`Observed`], which records them for the Prometheus metrics
//! (`mesh_state_*`, [`crate::telemetry`]) and for the admin endpoint's
//! `/admin/state` ([`Stats::snapshot`]): the store's health, its write and
//! load latency, and the writes by outcome (conflicts and fenced refusals
//! among them).
//!
//! Health: the store is *unhealthy* while its last operation that reached
//! a verdict on availability failed as unavailable or uncertain (a
//! conflict, a fence, a size or a codec refusal says the store answered,
//! so they leave it healthy); the next success makes it healthy again.
//! Recording takes one uncontended lock per operation for the latency
//! histograms, never one a store call waits on.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde_json::{json, Value};

use super::{BoxFuture, ReminderRow, StateKey, StateStore, StoreError, Stored};
use crate::telemetry::{state_outcome, Metrics, STATE_OUTCOMES};
use crate::util::lock;

/// What a node has seen of its store. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Stats {
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    name: &'static str,
    writes: [AtomicU64; 7],
    loads_ok: AtomicU64,
    loads_failed: AtomicU64,
    /// Microseconds, 1 us to 1 h, 2 significant figures.
    latency: Mutex<(Histogram<u64>, Histogram<u64>)>,
    health: Mutex<Health>,
}

#[derive(Debug, Default)]
struct Health {
    last_ok: Option<SystemTime>,
    /// When, and what, the last unavailable or uncertain failure was.
    last_error: Option<(SystemTime, String)>,
    healthy: bool,
}

fn histogram() -> Histogram<u64> {
    // 1 us .. 1 h at 2 significant figures: bounds known here, so it
    // cannot fail.
    Histogram::new_with_bounds(1, 3_600_000_000, 2).unwrap_or_else(|_| {
        unreachable!("constant bounds are valid");
    })
}

impl Stats {
    fn new(name: &'static str) -> Stats {
        Stats {
            name,
            writes: Default::default(),
            loads_ok: AtomicU64::new(0),
            loads_failed: AtomicU64::new(0),
            latency: Mutex::new((histogram(), histogram())),
            health: Mutex::new(Health {
                healthy: true,
                ..Health::default()
            }),
        }
    }

    fn record(&self, write: bool, took: Duration, failure: Option<&StoreError>) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX).max(1);
        {
            let mut h = lock(&self.latency);
            let h = if write { &mut h.0 } else { &mut h.1 };
            h.saturating_record(us);
        }
        let now = SystemTime::now();
        let mut health = lock(&self.health);
        match failure {
            None => {
                health.last_ok = Some(now);
                health.healthy = true;
            }
            Some(e @ (StoreError::Unavailable(_) | StoreError::Uncertain(_))) => {
                health.last_error = Some((now, e.to_string()));
                health.healthy = false;
            }
            // The store answered.
            Some(_) => {
                health.last_ok = Some(now);
                health.healthy = true;
            }
        }
    }

    /// The `/admin/state` view of the store.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn snapshot(&self) -> Value {
        let ms = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        };
        let summary = |h: &Histogram<u64>| {
            let at = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
            json!({
                "count": h.len(),
                "p50_ms": at(0.5),
                "p99_ms": at(0.99),
                "max_ms": h.max() as f64 / 1000.0,
            })
        };
        let (write, load) = {
            let h = lock(&self.latency);
            (summary(&h.0), summary(&h.1))
        };
        let health = lock(&self.health);
        let writes: serde_json::Map<String, Value> = STATE_OUTCOMES
            .iter()
            .zip(&self.writes)
            .map(|(o, n)| ((*o).to_owned(), json!(n.load(Ordering::Relaxed))))
            .collect();
        json!({
            "name": self.name,
            "healthy": health.healthy,
            "last_ok_unix_ms": health.last_ok.map(ms),
            "last_error": health.last_error.as_ref().map(|(at, what)| json!({
                "at_unix_ms": ms(*at),
                "error": what,
            })),
            "writes": writes,
            "loads": {
                "ok": self.loads_ok.load(Ordering::Relaxed),
                "failed": self.loads_failed.load(Ordering::Relaxed),
            },
            "write_latency": write,
            "load_latency": load,
        })
    }
}

/// A store whose every operation is recorded (see the [module
/// docs](self)). Cancel: a load or save dropped before it finished
/// records nothing.
pub(crate) struct Observed {
    inner: Arc<dyn StateStore>,
    stats: Arc<Stats>,
}

impl Observed {
    /// `store`, observed; and what it records.
    pub(crate) fn wrap(store: Arc<dyn StateStore>) -> (Arc<dyn StateStore>, Arc<Stats>) {
        let stats = Arc::new(Stats::new(store.name()));
        let observed = Observed {
            inner: store,
            stats: stats.clone(),
        };
        (Arc::new(observed), stats)
    }
}

impl StateStore for Observed {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn load<'a>(
        &'a self,
        key: &'a StateKey,
        claim: Option<u64>,
    ) -> BoxFuture<'a, Result<Stored, StoreError>> {
        Box::pin(async move {
            let t0 = Instant::now();
            let got = self.inner.load(key, claim).await;
            let took = t0.elapsed();
            Metrics::get().state_load.record(took.as_secs_f64());
            let counter = match &got {
                Ok(_) => &self.stats.loads_ok,
                Err(_) => &self.stats.loads_failed,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            self.stats.record(false, took, got.as_ref().err());
            got
        })
    }

    fn save<'a>(
        &'a self,
        key: &'a StateKey,
        expected: u64,
        token: Option<u64>,
        bytes: Option<&'a [u8]>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let t0 = Instant::now();
            let written = self.inner.save(key, expected, token, bytes).await;
            let took = t0.elapsed();
            let metrics = Metrics::get();
            metrics.state_write.record(took.as_secs_f64());
            let outcome = state_outcome(&written);
            metrics.state_written(outcome);
            self.stats.writes[outcome].fetch_add(1, Ordering::Relaxed);
            self.stats.record(true, took, written.as_ref().err());
            written
        })
    }

    // Reminders pass through unrecorded (they have metrics of their own).
    fn put_reminder<'a>(
        &'a self,
        row: &'a ReminderRow,
        expected: u64,
        token: Option<u64>,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.put_reminder(row, expected, token)
    }

    fn delete_reminder<'a>(
        &'a self,
        key: &'a StateKey,
        name: &'a str,
        expected: u64,
        token: Option<u64>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.delete_reminder(key, name, expected, token)
    }

    fn reminders_of<'a>(
        &'a self,
        key: &'a StateKey,
    ) -> BoxFuture<'a, Result<Vec<ReminderRow>, StoreError>> {
        self.inner.reminders_of(key)
    }

    fn reminders_due<'a>(
        &'a self,
        kind: &'a str,
        shards: &'a [u16],
        before_ms: u64,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<ReminderRow>, StoreError>> {
        self.inner.reminders_due(kind, shards, before_ms, limit)
    }
}
