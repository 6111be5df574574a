//! What a node's callers saw of each actor type (feature `admin`): calls,
//! errors and latency, for the cluster view (`/admin/cluster`), and a
//! coarse wall clock the activations stamp their mailboxes with.
//!
//! Contracts:
//! - **Caller side.** A call is counted on the node whose caller made it
//!   (`mesh::call`, `Node::call`), when it completes, with the latency the
//!   caller saw (network hop included), whatever node served it. Casts are
//!   not counted (they have no outcome), nor calls whose caller dropped
//!   them before the answer (their latency is unknown: a caller that
//!   gives up with its own timeout hides that tail; mesh's own deadline,
//!   `Call::timeout`, is an error and counted). The cluster view sums the
//!   members' figures per actor type and merges their histograms, so its
//!   percentiles are the cluster's, not an average of the members'.
//! - **Cost.** Only builds with the `admin` feature record, on every call:
//!   a lock-free read of the type list and one or two relaxed atomic
//!   additions (no clock read beyond the one the call's latency metric
//!   already makes). A build without the feature records nothing.
//! - **Windows.** [`Calls::tick`] (every node's ticker calls it each
//!   second) keeps a snapshot per second for [`WINDOW`]; a view compares
//!   the live counts with the oldest snapshot it keeps, so rates and
//!   percentiles cover the last 10 to 11 seconds (less just after the
//!   node started; `window_s` says how long). The counts are read one by
//!   one, not at one instant: under load `errors_per_s` and `calls_per_s`
//!   can disagree by the calls of that moment.
//! - **Percentiles** come from log-linear buckets (four per power of two
//!   of microseconds): a percentile is stated as its bucket's upper
//!   bound, at most 25 % above the true value (1 µs above it below 4 µs;
//!   the last bucket is open-ended).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// How far back the rates and percentiles look.
pub(crate) const WINDOW: Duration = Duration::from_secs(10);

/// How many buckets: four per power of two of microseconds, 1 µs wide
/// below 4 µs; the last one (from 2^37 µs, about 38 h) takes everything
/// above.
pub(crate) const BUCKETS: usize = 36 * 4;

/// The bucket of a latency of `us` microseconds.
fn bucket(us: u64) -> usize {
    if us < 4 {
        return us as usize;
    }
    let p = 63 - us.leading_zeros() as usize; // 2^p <= us < 2^(p+1), p >= 2
    let sub = ((us >> (p - 2)) & 3) as usize;
    ((p - 1) * 4 + sub).min(BUCKETS - 1)
}

/// The upper bound, in microseconds, of bucket `i`.
fn upper_us(i: usize) -> u64 {
    if i < 4 {
        return i as u64 + 1;
    }
    let (p, sub) = (i / 4 + 1, (i % 4) as u64);
    (4 + sub + 1) << (p - 2)
}

/// One actor type's counts since the node started.
struct TypeCalls {
    actor: &'static str,
    buckets: [AtomicU64; BUCKETS],
    errors: AtomicU64,
}

/// A snapshot of one type's counts.
#[derive(Clone)]
struct Counts {
    buckets: Vec<u64>,
    errors: u64,
}

impl TypeCalls {
    fn counts(&self) -> Counts {
        Counts {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// Every type's counts at one instant.
type Snapshot = (Instant, Vec<(&'static str, Counts)>);

/// A node's per actor type call figures (see the module docs).
pub(crate) struct Calls {
    types: arc_swap::ArcSwap<Vec<Arc<TypeCalls>>>,
    /// Serializes the (rare) addition of a type.
    adding: Mutex<()>,
    /// One snapshot per tick, oldest first, within [`WINDOW`].
    window: Mutex<VecDeque<Snapshot>>,
}

impl Default for Calls {
    fn default() -> Self {
        let calls = Calls {
            types: arc_swap::ArcSwap::from_pointee(Vec::new()),
            adding: Mutex::new(()),
            window: Mutex::new(VecDeque::new()),
        };
        calls.tick();
        calls
    }
}

impl std::fmt::Debug for Calls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Calls")
    }
}

impl Calls {
    /// Counts a completed call to actor type `actor` that took `took`.
    pub(crate) fn record(&self, actor: &'static str, took: Duration, ok: bool) {
        let types = self.types.load();
        let t = match types
            .iter()
            .find(|t| std::ptr::eq(t.actor, actor) || t.actor == actor)
        {
            Some(t) => t,
            None => {
                drop(types);
                return self.add(actor).record_into(took, ok);
            }
        };
        t.record_into(took, ok);
    }

    fn add(&self, actor: &'static str) -> Arc<TypeCalls> {
        let _one = self.adding.lock().unwrap_or_else(PoisonError::into_inner);
        let types = self.types.load_full();
        if let Some(t) = types.iter().find(|t| t.actor == actor) {
            return t.clone();
        }
        let t = Arc::new(TypeCalls {
            actor,
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: AtomicU64::new(0),
        });
        let mut next = Vec::clone(&types);
        next.push(t.clone());
        next.sort_by_key(|t| t.actor);
        self.types.store(Arc::new(next));
        t
    }

    /// Takes this second's snapshot and forgets those older than
    /// [`WINDOW`] (the node's ticker calls it every second).
    pub(crate) fn tick(&self) {
        let now = Instant::now();
        let snap: Vec<_> = self
            .types
            .load()
            .iter()
            .map(|t| (t.actor, t.counts()))
            .collect();
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        w.push_back((now, snap));
        while w.len() > 1 && w.get(1).is_some_and(|(at, _)| now - *at >= WINDOW) {
            w.pop_front();
        }
    }

    /// `[{actor, calls_total, errors_total, window_s, calls_per_s,
    /// errors_per_s, p50_ms, p99_ms, buckets}]` per type called so far;
    /// `buckets` is `[[upper_us, count], ...]` over the window (the
    /// non-empty ones), for a caller that merges several members.
    pub(crate) fn view(&self) -> Vec<Value> {
        let now = Instant::now();
        let (since, old) = {
            let w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
            match w.front() {
                Some((at, snap)) => (*at, snap.clone()),
                None => (now, Vec::new()),
            }
        };
        let secs = (now - since).as_secs_f64().max(0.001);
        self.types
            .load()
            .iter()
            .map(|t| {
                let live = t.counts();
                let before = old.iter().find(|(a, _)| *a == t.actor).map(|(_, c)| c);
                let window: Vec<u64> = live
                    .buckets
                    .iter()
                    .enumerate()
                    // Never below the snapshot: it was read before the
                    // window's lock was released, and counts only grow.
                    .map(|(i, n)| n.saturating_sub(before.map_or(0, |b| b.buckets[i])))
                    .collect();
                let errors = live.errors.saturating_sub(before.map_or(0, |b| b.errors));
                let calls: u64 = window.iter().sum();
                let buckets: Vec<Value> = window
                    .iter()
                    .enumerate()
                    .filter(|(_, n)| **n > 0)
                    .map(|(i, n)| json!([upper_us(i), n]))
                    .collect();
                json!({
                    "actor": t.actor,
                    "calls_total": live.buckets.iter().sum::<u64>(),
                    "errors_total": live.errors,
                    "window_s": (secs * 10.0).round() / 10.0,
                    "calls_per_s": rate(calls, secs),
                    "errors_per_s": rate(errors, secs),
                    "p50_ms": percentile(&pairs(&window), 0.50),
                    "p99_ms": percentile(&pairs(&window), 0.99),
                    "buckets": buckets,
                })
            })
            .collect()
    }
}

impl TypeCalls {
    fn record_into(&self, took: Duration, ok: bool) {
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.buckets[bucket(us)].fetch_add(1, Relaxed);
        if !ok {
            self.errors.fetch_add(1, Relaxed);
        }
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    (n as f64 / secs * 10.0).round() / 10.0
}

fn pairs(window: &[u64]) -> Vec<(u64, u64)> {
    window
        .iter()
        .enumerate()
        .filter(|(_, n)| **n > 0)
        .map(|(i, n)| (upper_us(i), *n))
        .collect()
}

/// The `q` quantile, in milliseconds, of `(upper_us, count)` buckets
/// sorted by bound (`null` without a call).
pub(crate) fn percentile(buckets: &[(u64, u64)], q: f64) -> Value {
    let total: u64 = buckets.iter().map(|b| b.1).sum();
    if total == 0 {
        return Value::Null;
    }
    let rank = ((total as f64) * q).ceil().max(1.0) as u64;
    let mut seen = 0;
    for (upper, n) in buckets {
        seen += n;
        if seen >= rank {
            return json!(*upper as f64 / 1000.0);
        }
    }
    Value::Null
}

/// The wall clock in Unix milliseconds, as of the last [`refresh`] (at
/// most [`COARSE_EVERY`] old while a node runs; read on the first use
/// otherwise). Activations stamp their mailboxes with it: one relaxed load
/// instead of a clock read per message.
pub(crate) fn coarse_ms() -> u64 {
    match COARSE.load(Relaxed) {
        0 => refresh(),
        ms => ms,
    }
}

/// How often a node's ticker refreshes [`coarse_ms`].
pub(crate) const COARSE_EVERY: Duration = Duration::from_millis(100);

static COARSE: AtomicU64 = AtomicU64::new(0);

/// Reads the wall clock into [`coarse_ms`]; returns it.
pub(crate) fn refresh() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_millis() as u64);
    // Tickers of several nodes may race: the clock never goes back.
    COARSE.fetch_max(ms, Relaxed).max(ms)
}

/// Runs while `calls` lives: refreshes the coarse clock every
/// [`COARSE_EVERY`] and takes a snapshot every second.
pub(crate) async fn ticker(calls: std::sync::Weak<Calls>) {
    let mut every = tokio::time::interval(COARSE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let per_second = (Duration::from_secs(1).as_millis() / COARSE_EVERY.as_millis()) as u32;
    let mut n = 0u32;
    loop {
        every.tick().await;
        refresh();
        n += 1;
        if n.is_multiple_of(per_second) {
            let Some(calls) = calls.upgrade() else { return };
            calls.tick();
        } else if calls.strong_count() == 0 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_linear_and_bound_their_values() {
        for us in [0u64, 1, 3, 4, 5, 7, 8, 100, 1000, 12_345, 1 << 30, u64::MAX] {
            let i = bucket(us);
            assert!(us < upper_us(i) || i == BUCKETS - 1, "{us} in {i}");
            if i > 0 && i < BUCKETS - 1 {
                assert!(us >= upper_us(i - 1), "{us} above bucket {}", i - 1);
                // Within 25 % of the bound.
                assert!(upper_us(i) as f64 <= (us.max(1) as f64) * 1.25 + 1.0);
            }
        }
    }

    #[test]
    fn the_view_counts_rates_errors_and_percentiles() {
        let calls = Calls::default();
        for _ in 0..98 {
            calls.record("A", Duration::from_micros(100), true);
        }
        calls.record("A", Duration::from_millis(50), false);
        calls.record("A", Duration::from_millis(50), true);
        calls.record("B", Duration::from_micros(10), true);
        let v = calls.view();
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["actor"], "A");
        assert_eq!(v[0]["calls_total"], 100);
        assert_eq!(v[0]["errors_total"], 1);
        let p50 = v[0]["p50_ms"].as_f64().unwrap();
        assert!((0.1..=0.125).contains(&p50), "{p50}");
        let p99 = v[0]["p99_ms"].as_f64().unwrap();
        assert!((50.0..=62.5).contains(&p99), "{p99}");
        assert_eq!(v[1]["actor"], "B");
        // A snapshot now: the next window starts empty.
        calls.window.lock().unwrap().clear();
        calls.tick();
        let v = calls.view();
        assert_eq!(v[0]["calls_per_s"], 0.0);
        assert_eq!(v[0]["p99_ms"], Value::Null);
        assert_eq!(v[0]["calls_total"], 100);
    }
}
