//! Load models: how calls are issued.
//!
//! Contract:
//! - **open-loop** ([`open_loop`]): calls are *intended* at a fixed rate
//!   (`t_k = k / rate`) or as a Poisson process (exponential gaps, seeded),
//!   whatever happened to earlier calls. Each call's latency counts from
//!   its intended start (wrk2's measure: no coordinated omission); its
//!   service time from when it was actually sent. At most `connections`
//!   calls are sent at once (unbounded unless set): an intended call that
//!   finds none free waits, and that wait counts in its latency but not in
//!   its service time. At most `max_in_flight` calls are intended and not
//!   yet completed: one more is *dropped* (counted, not made), as k6 counts
//!   `dropped_iterations`. How late the scheduler itself issued each call
//!   is recorded as scheduler lag. The scheduler waits on an OS thread
//!   ([`Pacing::Thread`]: a sleep, then yields for the last 150 µs) or on tokio's 1 ms timer
//!   ([`Pacing::Tokio`], which a paused test clock drives).
//! - **closed-loop** ([`closed_loop`]): `concurrency` workers each make one
//!   call after another. Latency and service time are the same thing here,
//!   and the model hides queueing (coordinated omission): every output
//!   labels such runs `closed-loop`.
//! - **adaptive** ([`search`]): a bounded number of open-loop steps looking
//!   for the highest rate that meets an SLO with nothing dropped: the rate
//!   doubles while steps pass, then bisects between the best pass and the
//!   lowest failure.
//!
//! All times are `tokio::time::Instant`, so the models run under a paused
//! test clock too.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::record::{Path, Recorder, Recording, Sample};
use crate::rng::Rng;
use crate::threshold::{Figures, Threshold};

/// What one call reports back to the model.
#[derive(Debug, Clone)]
pub struct CallResult {
    /// Where it was served.
    pub path: Path,
    /// `Err(kind)` when it failed (`mesh::Error` variant name).
    pub result: Result<(), String>,
}

/// A call in flight.
pub type CallFuture = Pin<Box<dyn Future<Output = CallResult> + Send>>;

/// Makes call number `k` of a run.
pub type CallFn = Arc<dyn Fn(u64) -> CallFuture + Send + Sync>;

/// When a run stops.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// After this long (open loop: no call intended after it).
    Duration(#[serde(with = "secs")] Duration),
    /// After exactly this many calls (intended, for the open loop).
    Calls(u64),
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs_f64(f64::deserialize(d)?))
    }
}

/// An open-loop run's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct OpenLoop {
    /// Intended calls per second.
    pub rate: f64,
    /// Poisson arrivals (exponential gaps) instead of a fixed interval.
    pub poisson: bool,
    /// Seed of the Poisson gaps.
    pub seed: u64,
    /// Calls intended and not completed, beyond which one is dropped.
    pub max_in_flight: u64,
    /// Calls sent at once (None: no limit besides `max_in_flight`).
    pub connections: Option<usize>,
    /// When to stop.
    pub stop: Stop,
    /// How the scheduler waits.
    #[serde(default)]
    pub pacing: Pacing,
}

/// A closed-loop run's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ClosedLoop {
    /// Workers, each with one call at a time.
    pub concurrency: usize,
    /// When to stop.
    pub stop: Stop,
}

/// The adaptive search's settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Search {
    /// The SLO, as written (`p99<5ms`).
    pub slo: String,
    /// The first step's rate.
    pub start_rate: f64,
    /// How long each step runs.
    #[serde(with = "secs")]
    pub step: Duration,
    /// At most this many steps.
    pub max_steps: usize,
    /// The steps' other settings (rate and stop are the search's).
    pub poisson: bool,
    /// Seed of the Poisson gaps.
    pub seed: u64,
    /// As for the open loop.
    pub max_in_flight: u64,
    /// As for the open loop.
    pub connections: Option<usize>,
}

/// One step of a search.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    /// The intended rate.
    pub rate: f64,
    /// Calls answered per second.
    pub achieved_rps: f64,
    /// The SLO's figure (ms for latencies).
    pub observed: f64,
    /// Intended calls dropped.
    pub dropped: u64,
    /// Calls failed.
    pub errors: u64,
    /// SLO met and nothing dropped.
    pub pass: bool,
}

/// How the open-loop scheduler waits for each intended start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pacing {
    /// An OS thread sleeping with the kernel's timer, then yielding for
    /// the last 150 µs (a few µs of lag): what the command line uses.
    #[default]
    Thread,
    /// tokio's timer (1 ms granularity, so about 1 ms of lag per call),
    /// which follows a paused test clock.
    Tokio,
}

/// The open loop's state between intended starts.
struct Dispatcher {
    call: CallFn,
    cfg: OpenLoop,
    rec: Arc<Recorder>,
    sem: Option<Arc<Semaphore>>,
    rng: Rng,
    tasks: JoinSet<()>,
    offset: f64,
    k: u64,
}

impl Dispatcher {
    /// The next intended start, or None when the run is over.
    fn next(&mut self) -> Option<Instant> {
        match self.cfg.stop {
            Stop::Calls(n) if self.k >= n => return None,
            Stop::Duration(d) if self.offset >= d.as_secs_f64() => return None,
            _ => {}
        }
        Some(self.rec.origin() + Duration::from_secs_f64(self.offset))
    }

    /// Makes (or drops) the call intended at `intended`, now.
    fn dispatch(&mut self, intended: Instant) {
        let rec = &self.rec;
        let counters = &rec.counters;
        rec.record_lag(Instant::now().saturating_duration_since(intended));
        counters.intended.fetch_add(1, Ordering::Relaxed);
        if counters.in_flight.load(Ordering::Relaxed) >= self.cfg.max_in_flight {
            rec.record_drop(intended);
        } else {
            counters.in_flight.fetch_add(1, Ordering::Relaxed);
            let fut = (self.call)(self.k);
            let rec = rec.clone();
            let sem = self.sem.clone();
            self.tasks.spawn(async move {
                let _permit = match &sem {
                    Some(s) => Some(s.acquire().await.expect("semaphore never closed")),
                    None => None,
                };
                let sent = Instant::now();
                rec.counters.sent.fetch_add(1, Ordering::Relaxed);
                let r = fut.await;
                let done = Instant::now();
                rec.record(Sample {
                    intended,
                    sent,
                    done,
                    path: r.path,
                    result: r.result,
                });
                rec.counters.in_flight.fetch_sub(1, Ordering::Relaxed);
            });
        }
        // Reap finished tasks so a long run holds only the ones in flight.
        while self.tasks.try_join_next().is_some() {}
        self.k += 1;
        // A fixed rate computes each start from k (no drift from summing).
        self.offset = if self.cfg.poisson {
            self.offset + self.rng.exp(self.cfg.rate)
        } else {
            self.k as f64 / self.cfg.rate
        };
    }
}

/// How early the thread pacer stops sleeping and starts yielding: the
/// kernel's timer slack and wake-up latency (tens of µs on Linux, more in
/// a VM) would otherwise make every start late by that much.
const SPIN: Duration = Duration::from_micros(150);

/// Blocks this thread until `t`: a sleep for all but the last [`SPIN`],
/// then yields (other threads run meanwhile) until the instant.
fn wait_until(t: Instant) {
    let now = Instant::now();
    if t > now + SPIN {
        std::thread::sleep(t - now - SPIN);
    }
    while Instant::now() < t {
        std::thread::yield_now();
    }
}

/// Runs an open loop; returns when every call made has completed.
pub async fn open_loop(call: &CallFn, cfg: &OpenLoop, rec: &Arc<Recorder>) {
    assert!(cfg.rate > 0.0, "open loop needs a positive rate");
    let mut d = Dispatcher {
        call: call.clone(),
        cfg: cfg.clone(),
        rec: rec.clone(),
        sem: cfg.connections.map(|c| Arc::new(Semaphore::new(c.max(1)))),
        rng: Rng::new(cfg.seed),
        tasks: JoinSet::new(),
        offset: 0.0,
        k: 0,
    };
    let mut tasks = match cfg.pacing {
        Pacing::Tokio => {
            while let Some(t) = d.next() {
                if Instant::now() < t {
                    tokio::time::sleep_until(t).await;
                }
                d.dispatch(t);
            }
            d.tasks
        }
        Pacing::Thread => tokio::task::spawn_blocking(move || {
            while let Some(t) = d.next() {
                wait_until(t);
                d.dispatch(t);
            }
            d.tasks
        })
        .await
        .expect("open-loop scheduler panicked"),
    };
    while tasks.join_next().await.is_some() {}
}

/// Runs a closed loop; returns when every worker has finished.
pub async fn closed_loop(call: &CallFn, cfg: &ClosedLoop, rec: &Arc<Recorder>) {
    let next = Arc::new(AtomicU64::new(0));
    let deadline = match cfg.stop {
        Stop::Duration(d) => Some(rec.origin() + d),
        Stop::Calls(_) => None,
    };
    let limit = match cfg.stop {
        Stop::Calls(n) => n,
        Stop::Duration(_) => u64::MAX,
    };
    let mut workers = JoinSet::new();
    for _ in 0..cfg.concurrency.max(1) {
        let (call, rec, next) = (call.clone(), rec.clone(), next.clone());
        workers.spawn(async move {
            loop {
                let k = next.fetch_add(1, Ordering::Relaxed);
                let now = Instant::now();
                if k >= limit || deadline.is_some_and(|d| now >= d) {
                    return;
                }
                let c = &rec.counters;
                c.intended.fetch_add(1, Ordering::Relaxed);
                c.sent.fetch_add(1, Ordering::Relaxed);
                c.in_flight.fetch_add(1, Ordering::Relaxed);
                let r = call(k).await;
                rec.record(Sample {
                    intended: now,
                    sent: now,
                    done: Instant::now(),
                    path: r.path,
                    result: r.result,
                });
                c.in_flight.fetch_sub(1, Ordering::Relaxed);
            }
        });
    }
    while let Some(r) = workers.join_next().await {
        r.expect("closed-loop worker panicked");
    }
}

/// The figures of a recording, for thresholds.
pub fn judge(slo: &Threshold, r: &Recording) -> f64 {
    let lat = r.latency_all();
    let svc = r.service_all();
    slo.observe(&Figures {
        latency: &lat,
        service: &svc,
        ok: r.ok,
        errors: r.failed,
        dropped: r.dropped,
        seconds: r.elapsed.as_secs_f64(),
    })
}

/// Runs the adaptive search. `on_step` is told each step as it ends (for
/// progress). Returns the steps and the recording of the best passing
/// step (or of the last step when none passed), with its rate.
pub async fn search(
    call: &CallFn,
    cfg: &Search,
    mut on_step: impl FnMut(&Step, Arc<Recorder>),
    mut new_recorder: impl FnMut() -> Arc<Recorder>,
) -> Result<(Vec<Step>, Recording, f64), String> {
    let slo = Threshold::parse(&cfg.slo)?;
    let mut steps = Vec::new();
    let mut best: Option<(f64, Recording)> = None;
    let mut worst_fail: Option<f64> = None;
    let mut last = None;
    let mut rate = cfg.start_rate.max(1.0);
    for _ in 0..cfg.max_steps.max(1) {
        let rec = new_recorder();
        let open = OpenLoop {
            rate,
            poisson: cfg.poisson,
            seed: cfg.seed,
            max_in_flight: cfg.max_in_flight,
            connections: cfg.connections,
            stop: Stop::Duration(cfg.step),
            pacing: Pacing::Thread,
        };
        open_loop(call, &open, &rec).await;
        let r = rec.finish(Instant::now());
        let observed = judge(&slo, &r);
        let pass = slo.holds(observed) && r.dropped == 0;
        let step = Step {
            rate,
            achieved_rps: r.ok as f64 / r.elapsed.as_secs_f64().max(1e-9),
            observed,
            dropped: r.dropped,
            errors: r.failed,
            pass,
        };
        on_step(&step, rec);
        steps.push(step);
        if pass {
            best = Some((rate, r));
        } else {
            worst_fail = Some(worst_fail.map_or(rate, |f: f64| f.min(rate)));
            last = Some((rate, r));
        }
        let lo = best.as_ref().map(|b| b.0);
        rate = match (lo, worst_fail) {
            (Some(lo), None) => lo * 2.0,
            (None, Some(hi)) => hi / 2.0,
            (Some(lo), Some(hi)) => {
                if (hi - lo) / lo < 0.05 {
                    break;
                }
                (lo + hi) / 2.0
            }
            (None, None) => unreachable!("a step either passed or failed"),
        };
        rate = rate.max(1.0);
    }
    let (rate, rec) = best.or(last).expect("at least one step ran");
    Ok((steps, rec, rate))
}
