//! Recording: HDR histograms, per-second intervals, errors by kind, and
//! the counters progress reads.
//!
//! Contract:
//! - Every completed call is one [`Sample`]: its *intended* start, when it
//!   was actually sent, when it completed, its path (local or remote) and
//!   its outcome. `latency = done - intended` (what the user waited, wrk2's
//!   measure, free of coordinated omission), `service = done - sent`. In a
//!   closed loop the two starts are the same instant.
//! - Histograms are kept per (path, outcome) for latency and for service
//!   time, in nanoseconds, 1 ns to 60 s at 3 significant figures; values
//!   beyond saturate. Scheduler lag (how late the open-loop scheduler
//!   issued each call) has its own histogram.
//! - Intervals are whole seconds since the run's origin, keyed by the
//!   completion time (drops: by their intended time), each with its own
//!   2-significant-figure latency histogram.
//! - The [`Counters`] are atomics, updated on the request path and read by
//!   the progress task without taking the lock.
//! - Errors are counted by `mesh::Error` variant name ([`error_kind`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// Where a call was served, as seen from the calling node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Path {
    /// The calling node owns the actor.
    Local,
    /// Another node owns it: the call crossed the wire.
    Remote,
}

impl Path {
    /// `"local"` or `"remote"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Local => "local",
            Path::Remote => "remote",
        }
    }
}

/// How a call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A reply came.
    Ok,
    /// The call failed (see the errors by kind).
    Error,
}

impl Outcome {
    /// `"ok"` or `"error"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
        }
    }
}

/// The name of a `mesh::Error` variant (`Timeout`, `NodeDown`, ...), taken
/// from its `Debug` form so variants added later are named too.
pub fn error_kind(e: &mesh::Error) -> String {
    let dbg = format!("{e:?}");
    let end = dbg
        .find(|c: char| !c.is_ascii_alphanumeric())
        .unwrap_or(dbg.len());
    dbg[..end].to_owned()
}

/// One completed call.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When the load model meant to start it.
    pub intended: Instant,
    /// When it was sent.
    pub sent: Instant,
    /// When its reply (or error) arrived.
    pub done: Instant,
    /// Local or remote.
    pub path: Path,
    /// `Err(kind)` for a failed call.
    pub result: Result<(), String>,
}

/// Counters updated on the request path, read by progress.
#[derive(Debug, Default)]
pub struct Counters {
    /// Calls the model meant to make.
    pub intended: AtomicU64,
    /// Calls sent.
    pub sent: AtomicU64,
    /// Calls that got a reply.
    pub ok: AtomicU64,
    /// Calls that failed.
    pub errors: AtomicU64,
    /// Intended calls not made: the in-flight bound was reached.
    pub dropped: AtomicU64,
    /// Calls intended and not yet completed (queued or sent).
    pub in_flight: AtomicU64,
}

/// A new histogram for nanosecond values at `sigfig` significant figures.
pub fn new_histogram(sigfig: u8) -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, sigfig).expect("valid histogram bounds")
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// One second of a run.
#[derive(Debug, Clone)]
pub struct IntervalAcc {
    /// Calls that completed with a reply.
    pub ok: u64,
    /// Calls that completed with an error.
    pub errors: u64,
    /// Intended calls dropped.
    pub dropped: u64,
    /// Latency of the calls completed in this second.
    pub latency: Histogram<u64>,
}

impl IntervalAcc {
    fn new() -> Self {
        IntervalAcc {
            ok: 0,
            errors: 0,
            dropped: 0,
            latency: new_histogram(2),
        }
    }
}

/// Everything recorded in a run, once it has finished.
#[derive(Debug, Clone)]
pub struct Recording {
    /// Latency (from the intended start) per (path, outcome).
    pub latency: BTreeMap<(Path, Outcome), Histogram<u64>>,
    /// Service time (from the send) per (path, outcome).
    pub service: BTreeMap<(Path, Outcome), Histogram<u64>>,
    /// How late the scheduler issued calls (open loop only).
    pub lag: Histogram<u64>,
    /// Failed calls by `mesh::Error` variant.
    pub errors: BTreeMap<String, u64>,
    /// Per-second intervals, from the origin.
    pub intervals: Vec<IntervalAcc>,
    /// Calls intended.
    pub intended: u64,
    /// Calls sent.
    pub sent: u64,
    /// Calls answered.
    pub ok: u64,
    /// Calls failed.
    pub failed: u64,
    /// Intended calls dropped.
    pub dropped: u64,
    /// From the origin to the last completion.
    pub elapsed: Duration,
}

impl Recording {
    /// Every latency histogram merged (both paths, both outcomes).
    pub fn latency_all(&self) -> Histogram<u64> {
        merged(self.latency.values())
    }

    /// Every service-time histogram merged.
    pub fn service_all(&self) -> Histogram<u64> {
        merged(self.service.values())
    }
}

/// The histograms merged into one.
pub fn merged<'a>(hs: impl Iterator<Item = &'a Histogram<u64>>) -> Histogram<u64> {
    let mut all = new_histogram(3);
    for h in hs {
        all.add(h).expect("same bounds");
    }
    all
}

#[derive(Debug)]
struct Tables {
    latency: BTreeMap<(Path, Outcome), Histogram<u64>>,
    service: BTreeMap<(Path, Outcome), Histogram<u64>>,
    lag: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    intervals: Vec<IntervalAcc>,
    last_done: Option<Instant>,
}

/// Collects samples during a run. Shared by the calls (behind an `Arc`);
/// the lock is held for a few histogram increments per call.
#[derive(Debug)]
pub struct Recorder {
    origin: Instant,
    /// Read by progress, lock-free.
    pub counters: Counters,
    tables: Mutex<Tables>,
}

impl Recorder {
    /// A recorder whose time zero is `origin`.
    pub fn new(origin: Instant) -> Self {
        Recorder {
            origin,
            counters: Counters::default(),
            tables: Mutex::new(Tables {
                latency: BTreeMap::new(),
                service: BTreeMap::new(),
                lag: new_histogram(3),
                errors: BTreeMap::new(),
                intervals: Vec::new(),
                last_done: None,
            }),
        }
    }

    /// The run's time zero.
    pub fn origin(&self) -> Instant {
        self.origin
    }

    fn second(&self, t: Instant) -> usize {
        t.saturating_duration_since(self.origin).as_secs() as usize
    }

    /// Records a completed call.
    pub fn record(&self, s: Sample) {
        let latency = ns(s.done.saturating_duration_since(s.intended));
        let service = ns(s.done.saturating_duration_since(s.sent));
        let outcome = if s.result.is_ok() {
            self.counters.ok.fetch_add(1, Ordering::Relaxed);
            Outcome::Ok
        } else {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
            Outcome::Error
        };
        let sec = self.second(s.done);
        let mut t = self.tables.lock().expect("recorder lock");
        t.latency
            .entry((s.path, outcome))
            .or_insert_with(|| new_histogram(3))
            .saturating_record(latency);
        t.service
            .entry((s.path, outcome))
            .or_insert_with(|| new_histogram(3))
            .saturating_record(service);
        if let Err(kind) = s.result {
            *t.errors.entry(kind).or_default() += 1;
        }
        let iv = interval(&mut t.intervals, sec);
        iv.latency.saturating_record(latency);
        match outcome {
            Outcome::Ok => iv.ok += 1,
            Outcome::Error => iv.errors += 1,
        }
        if t.last_done.is_none_or(|d| s.done > d) {
            t.last_done = Some(s.done);
        }
    }

    /// Records how late the scheduler issued a call.
    pub fn record_lag(&self, lag: Duration) {
        let mut t = self.tables.lock().expect("recorder lock");
        t.lag.saturating_record(ns(lag));
    }

    /// Records an intended call that was not made.
    pub fn record_drop(&self, intended: Instant) {
        self.counters.dropped.fetch_add(1, Ordering::Relaxed);
        let sec = self.second(intended);
        let mut t = self.tables.lock().expect("recorder lock");
        interval(&mut t.intervals, sec).dropped += 1;
    }

    /// Everything recorded so far; `end` is when the run ended (the
    /// elapsed time is to the later of `end` and the last completion).
    pub fn finish(&self, end: Instant) -> Recording {
        let t = self.tables.lock().expect("recorder lock");
        let last = t.last_done.map_or(end, |d| d.max(end));
        let c = &self.counters;
        Recording {
            latency: t.latency.clone(),
            service: t.service.clone(),
            lag: t.lag.clone(),
            errors: t.errors.clone(),
            intervals: t.intervals.clone(),
            intended: c.intended.load(Ordering::Relaxed),
            sent: c.sent.load(Ordering::Relaxed),
            ok: c.ok.load(Ordering::Relaxed),
            failed: c.errors.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            elapsed: last.saturating_duration_since(self.origin),
        }
    }
}

fn interval(ivs: &mut Vec<IntervalAcc>, sec: usize) -> &mut IntervalAcc {
    if ivs.len() <= sec {
        ivs.resize_with(sec + 1, IntervalAcc::new);
    }
    &mut ivs[sec]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_kinds_are_variant_names() {
        let e = mesh::Error::Timeout {
            actor: "A".into(),
            id: "a".into(),
            message: "M".into(),
        };
        assert_eq!(error_kind(&e), "Timeout");
        let e = mesh::Error::NodeDown {
            node: "a".into(),
            actor: "A".into(),
            id: "a".into(),
        };
        assert_eq!(error_kind(&e), "NodeDown");
        assert_eq!(error_kind(&mesh::Error::Codec("x".into())), "Codec");
    }

    #[test]
    fn latency_counts_from_the_intended_start() {
        let t0 = Instant::now();
        let rec = Recorder::new(t0);
        rec.record(Sample {
            intended: t0,
            sent: t0 + Duration::from_millis(90),
            done: t0 + Duration::from_millis(100),
            path: Path::Local,
            result: Ok(()),
        });
        let r = rec.finish(t0);
        let lat = r.latency_all();
        let svc = r.service_all();
        assert!(lat.max() >= 99_000_000, "latency {}", lat.max());
        assert!(svc.max() <= 10_100_000, "service {}", svc.max());
        assert_eq!(r.ok, 1);
        assert_eq!(r.intervals.len(), 1);
    }
}
