//! The reminder keeper: one task per node that loads the reminders of the
//! shards the node owns, holds those due soon in a queue ordered by time,
//! and fires them, throttled.
//!
//! It sees its node only through [`Host`] (the node implements it), so
//! this module imports no node. Everything it holds is in its one task;
//! the handle ([`Keeper`]) only sends it events.
//!
//! - **Loading**: every [`ReminderOptions::refresh`] (and at once when
//!   [`Keeper::nudge`]d: the ring changed), per actor type, the reminders
//!   of its owned shards due within the window, at most
//!   [`ReminderOptions::max_loaded`] of them. What the store returns is
//!   the truth for everything due before the load's horizon: a held
//!   reminder not in it (cancelled or moved elsewhere) is dropped, unless
//!   this node changed it since the load began.
//! - **Firing**: a reminder due is planned ([`super::policy`]), checked
//!   against the ring once more (a shard this node no longer owns is
//!   dropped, its new owner fires it), delivered as a [`super::Tick`]
//!   through the node's router, and, once acknowledged, advanced (or,
//!   done, deleted) with a compare-and-set fenced with the shard's token.
//!   A failed delivery or write is retried after a backoff; a refused
//!   compare-and-set (another write came first: a cancel, a new
//!   registration, another owner's advance) drops what it held, and the
//!   next load says what is true.
//! - **Throttle**: at most the slow start's limit in flight (doubling
//!   every `ramp` from `initial_concurrency` to `max_concurrency`, from
//!   the keeper's start) and the budget's ticks per second.
//! - **Stop**: [`Keeper::stop`] stops firing new ticks; those in flight
//!   finish (delivered and advanced, or not: then the next owner fires
//!   them again). [`Keeper::halt`] (a severed node) aborts them too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::policy::{plan, Plan};
use super::{decode_payload, now_ms, ReminderOptions, Tick};
use crate::state::{ReminderRow, StateKey, StateStore, StoreError};
use crate::util::BoxFuture;
use crate::Error;

/// An actor type whose reminders a node fires.
#[derive(Debug, Clone)]
pub(crate) struct Kind {
    /// `<capability>/<actor>`, as its rows are keyed.
    pub(crate) name: Arc<str>,
    /// The wire tag of its [`Tick`] handler.
    pub(crate) tag: u64,
    /// Its routing key (`ring::actor_key`).
    pub(crate) actor_key: u64,
    /// Its capability's routing key (`ring::capability_key`).
    pub(crate) capability_key: u64,
}

/// What the keeper needs of its node.
pub(crate) trait Host: Send + Sync + 'static {
    /// The node's store, while it has one.
    fn store(&self) -> Option<Arc<dyn StateStore>>;
    /// The shards of `kind` this node fires now, each with the token its
    /// writes are fenced with (0: none, eventual mode).
    fn owned(&self, kind: &Kind) -> Vec<(u16, u64)>;
    /// Whether this node fires shard `s` of `kind` now: with which token.
    fn owns(&self, kind: &Kind, s: u16) -> Option<u64>;
    /// Delivers an encoded [`Tick`] to actor `id` of `kind`; resolves to
    /// the encoded reply.
    fn deliver(
        self: Arc<Self>,
        kind: &Kind,
        id: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, Error>>;
}

/// A reminder, as the keeper tells one from another.
type Key = (usize, Arc<str>, Arc<str>);

enum Event {
    /// Registered (or replaced) on this node.
    Changed(ReminderRow),
    /// Cancelled on this node.
    Cancelled(Arc<str>, Arc<str>, Arc<str>),
    /// Load now: the ring changed.
    Nudge,
    /// Fail (tests of the supervision).
    #[cfg(test)]
    Crash,
}

/// A runner not started yet, with the ports that outlive its restarts.
struct Supervised {
    runner: Runner,
    ports: Ports,
}

/// What a keeper's successive runners share: its events, its stop
/// signal, and the sender whose drop says the keeper ended.
struct Ports {
    events: mpsc::UnboundedReceiver<Event>,
    stop: watch::Receiver<bool>,
    /// Dropped when the task ends: [`Keeper::stopped`] waits for it.
    _ending: watch::Sender<()>,
}

/// A future that resolves to `Err` with the panic's payload if polling
/// its inner future panicked.
struct CatchUnwind<F>(F);

impl<F: std::future::Future + Unpin> std::future::Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            std::pin::Pin::new(inner).poll(cx)
        })) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// The handle of a node's keeper: tells it of changes, stops it.
#[derive(Clone)]
pub(crate) struct Keeper {
    events: mpsc::UnboundedSender<Event>,
    stop: Arc<watch::Sender<bool>>,
    task: Arc<Mutex<Option<tokio::task::AbortHandle>>>,
    pending: Arc<Mutex<Option<Supervised>>>,
    /// Its sender is the runner's: closed when the task ends.
    ended: watch::Receiver<()>,
    stats: Arc<Stats>,
}

/// What the keeper has done, for the admin endpoint and tests.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) held: std::sync::atomic::AtomicU64,
    pub(crate) fired: std::sync::atomic::AtomicU64,
    pub(crate) failed: std::sync::atomic::AtomicU64,
    pub(crate) skipped: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Keeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keeper").finish_non_exhaustive()
    }
}

impl Keeper {
    /// A keeper for `kinds`, not running yet ([`Keeper::start`]).
    pub(crate) fn new(kinds: Vec<Kind>, options: ReminderOptions) -> Keeper {
        let (tx, rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let stats = Arc::new(Stats::default());
        let (ending, ended) = watch::channel(());
        let runner = Supervised {
            runner: Runner::fresh(kinds, options, stats.clone()),
            ports: Ports {
                events: rx,
                stop: stop_rx,
                _ending: ending,
            },
        };
        Keeper {
            events: tx,
            stop: Arc::new(stop),
            task: Arc::default(),
            pending: Arc::new(Mutex::new(Some(runner))),
            ended,
            stats,
        }
    }

    /// Starts the keeper's task, on the current runtime (once).
    ///
    /// Supervision: a panic in the keeper (a bug in mesh) loses what it
    /// held in memory, and the ticks it had in flight are aborted (their
    /// outcome unknown: delivered again later); a fresh keeper starts at
    /// once and reloads from the store, which is the truth. Logged at
    /// error level. A keeper that stops is not restarted.
    pub(crate) fn start(&self, host: Weak<dyn Host>) {
        let Some(Supervised { runner, mut ports }) = crate::util::lock(&self.pending).take() else {
            return;
        };
        let task = tokio::spawn(async move {
            let mut runner = runner;
            let mut failures = 0u32;
            loop {
                let (kinds, opts, stats) =
                    (runner.kinds.clone(), runner.opts, runner.stats.clone());
                let ran = {
                    let run = std::panic::AssertUnwindSafe(runner.run(host.clone(), &mut ports));
                    CatchUnwind(std::pin::pin!(run)).await
                };
                match ran {
                    Ok(()) => return,
                    Err(panic) => {
                        let why = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        failures += 1;
                        // Not a hot loop if it fails again and again: 1 s,
                        // doubling to 32 s, between runs.
                        let pause = Duration::from_secs(1 << (failures - 1).min(5));
                        tracing::error!("the reminder keeper failed ({why}): a fresh one reloads its reminders from the store in {pause:?}");
                        tokio::time::sleep(pause).await;
                        runner = Runner::fresh(kinds, opts, stats);
                    }
                }
            }
        });
        *crate::util::lock(&self.task) = Some(task.abort_handle());
    }

    /// Makes the keeper fail, as a bug would (tests of its supervision).
    #[cfg(test)]
    fn crash(&self) {
        let _ = self.events.send(Event::Crash);
    }

    /// Reminder `row` was written on this node.
    pub(crate) fn changed(&self, row: ReminderRow) {
        let _ = self.events.send(Event::Changed(row));
    }

    /// Reminder `name` of `key` was cancelled on this node.
    pub(crate) fn cancelled(&self, key: &StateKey, name: &str) {
        let _ = self.events.send(Event::Cancelled(
            key.kind.clone(),
            key.id.clone(),
            name.into(),
        ));
    }

    /// The ring changed: load again now.
    pub(crate) fn nudge(&self) {
        let _ = self.events.send(Event::Nudge);
    }

    /// Stops firing new ticks; those in flight finish.
    pub(crate) fn stop(&self) {
        self.stop.send_replace(true);
    }

    /// Stops at once, ticks in flight too.
    pub(crate) fn halt(&self) {
        if let Some(t) = crate::util::lock(&self.task).take() {
            t.abort();
        }
    }

    /// Resolves once its task ended (at once if it never started).
    pub(crate) async fn stopped(&self) {
        if crate::util::lock(&self.pending).take().is_some() {
            return;
        }
        let mut ended = self.ended.clone();
        while ended.changed().await.is_ok() {}
    }

    /// What it has done so far.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn stats(&self) -> &Stats {
        &self.stats
    }
}

/// A reminder held in memory.
struct Slot {
    row: ReminderRow,
    /// Its place in the queue, if queued (not in flight).
    queued: Option<(u64, u64)>,
    /// Failed deliveries in a row.
    attempt: u32,
    /// After a failure: the plan that failed, delivered again as it was
    /// (the same tick, whatever the missed-tick policy says by then).
    retry: Option<Plan>,
    /// In flight: a change made meanwhile, applied when it lands
    /// (`Some(None)`: cancelled).
    replaced: Option<Option<ReminderRow>>,
    in_flight: bool,
    /// When this node last changed it (a load begun before does not drop it).
    touched: Instant,
}

/// How a tick in flight ended.
enum Outcome {
    /// Delivered (or skipped) and advanced: the row as now stored.
    Advanced(ReminderRow),
    /// A one-shot delivered and deleted.
    Finished,
    /// Another write came first, or the shard moved: dropped.
    Gone,
    /// To try again after a backoff, with the plan that failed (`None`:
    /// it failed before it was planned).
    Failed(Option<Plan>),
}

struct Runner {
    kinds: Vec<Kind>,
    opts: ReminderOptions,
    slots: HashMap<Key, Slot>,
    queue: BTreeMap<(u64, u64), Key>,
    seq: u64,
    flight: JoinSet<Outcome>,
    flying: HashMap<tokio::task::Id, Key>,
    started: Instant,
    tokens: f64,
    refilled: Instant,
    last_load: Instant,
    stats: Arc<Stats>,
}

impl Runner {
    /// A runner holding nothing yet.
    fn fresh(kinds: Vec<Kind>, opts: ReminderOptions, stats: Arc<Stats>) -> Runner {
        Runner {
            kinds,
            opts,
            slots: HashMap::new(),
            queue: BTreeMap::new(),
            seq: 0,
            flight: JoinSet::new(),
            flying: HashMap::new(),
            started: Instant::now(),
            tokens: 0.0,
            refilled: Instant::now(),
            last_load: Instant::now(),
            stats,
        }
    }

    async fn run(&mut self, host: Weak<dyn Host>, ports: &mut Ports) {
        let mut next_load = Instant::now();
        let mut stopping = false;
        loop {
            if stopping && self.flight.is_empty() {
                return;
            }
            let wake = if stopping {
                None
            } else {
                Some(self.next_wake().min(next_load))
            };
            tokio::select! {
                biased;
                r = ports.stop.changed(), if !stopping => {
                    if r.is_err() || *ports.stop.borrow() {
                        stopping = true;
                    }
                }
                Some(done) = self.flight.join_next_with_id(), if !self.flight.is_empty() => {
                    self.landed(done);
                }
                ev = ports.events.recv(), if !stopping => match ev {
                    // At most ten loads per refresh, however often the
                    // ring changes.
                    Some(Event::Nudge) => {
                        next_load = next_load.min(self.last_load + self.opts.refresh / 10);
                    }
                    Some(ev) => self.event(ev, &host),
                    None => stopping = true,
                },
                () = sleep_until(wake) => {}
            }
            if stopping {
                continue;
            }
            let Some(h) = host.upgrade() else {
                stopping = true;
                continue;
            };
            if Instant::now() >= next_load {
                let began = Instant::now();
                self.last_load = began;
                self.load(&*h, began).await;
                next_load = began + self.opts.refresh;
            }
            self.fire_ready(&h);
            self.stats.held.store(
                self.slots.len() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            metrics::gauge!(crate::telemetry::REMINDERS_HELD).set(self.slots.len() as f64);
        }
    }

    /// When the next queued tick is due (or a token comes back), as a
    /// tokio instant.
    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let Some((&(at, _), _)) = self.queue.first_key_value() else {
            return now + self.opts.refresh;
        };
        if self.flight.len() >= self.limit() {
            // Full: a tick landing wakes the loop (its own branch); the
            // queue's head may wait, and must not spin it meanwhile.
            return now + self.opts.refresh.min(self.opts.ramp);
        }
        let wall = now_ms();
        let mut wake = now + Duration::from_millis(at.saturating_sub(wall));
        if self.tokens < 1.0 && self.opts.budget > 0 {
            wake = wake.max(now + Duration::from_secs_f64(1.0 / f64::from(self.opts.budget)));
        }
        wake
    }

    fn kind_of(&self, name: &str) -> Option<usize> {
        self.kinds.iter().position(|k| &*k.name == name)
    }

    fn unqueue(&mut self, key: &Key) {
        if let Some(slot) = self.slots.get_mut(key) {
            if let Some(q) = slot.queued.take() {
                self.queue.remove(&q);
            }
        }
    }

    /// Puts `row` in the queue at its due time if it is due within the
    /// window; drops it otherwise (a later load brings it back).
    fn hold(&mut self, key: Key, row: ReminderRow, attempt: u32, at: u64) {
        self.hold_retry(key, row, attempt, at, None);
    }

    /// [`Runner::hold`], keeping the plan a failed tick is retried with.
    fn hold_retry(
        &mut self,
        key: Key,
        row: ReminderRow,
        attempt: u32,
        at: u64,
        retry: Option<Plan>,
    ) {
        self.unqueue(&key);
        if row.due_ms > now_ms().saturating_add(ms(self.opts.window)) && attempt == 0 {
            self.slots.remove(&key);
            return;
        }
        self.seq += 1;
        let q = (at, self.seq);
        self.queue.insert(q, key.clone());
        self.slots.insert(
            key,
            Slot {
                row,
                queued: Some(q),
                attempt,
                retry,
                replaced: None,
                in_flight: false,
                touched: Instant::now(),
            },
        );
    }

    fn drop_slot(&mut self, key: &Key) {
        self.unqueue(key);
        self.slots.remove(key);
    }

    /// A change made on this node.
    fn event(&mut self, ev: Event, host: &Weak<dyn Host>) {
        match ev {
            Event::Changed(row) => {
                let Some(k) = self.kind_of(&row.key.kind) else {
                    return;
                };
                let owned = host
                    .upgrade()
                    .is_some_and(|h| h.owns(&self.kinds[k], row.key.shard).is_some());
                let key = (k, row.key.id.clone(), row.name.clone());
                if let Some(slot) = self.slots.get_mut(&key) {
                    // Versions only grow (a cancel leaves a tombstone): an
                    // older write's notice, arriving late, changes nothing.
                    let newest = match &slot.replaced {
                        Some(Some(r)) => r.version.max(slot.row.version),
                        _ => slot.row.version,
                    };
                    if row.version <= newest {
                        return;
                    }
                    if slot.in_flight {
                        slot.replaced = Some(Some(row));
                        return;
                    }
                }
                if owned {
                    let at = row.due_ms;
                    self.hold(key, row, 0, at);
                } else {
                    self.drop_slot(&key);
                }
            }
            Event::Cancelled(kind, id, name) => {
                let Some(k) = self.kind_of(&kind) else {
                    return;
                };
                let key = (k, id, name);
                if let Some(slot) = self.slots.get_mut(&key).filter(|s| s.in_flight) {
                    slot.replaced = Some(None);
                    return;
                }
                self.drop_slot(&key);
            }
            Event::Nudge => {}
            #[cfg(test)]
            Event::Crash => panic!("crashed on purpose"),
        }
    }

    /// Loads, per actor type, its owned shards' reminders due within the
    /// window (see the module docs).
    async fn load(&mut self, host: &dyn Host, began: Instant) {
        let Some(store) = host.store() else {
            return;
        };
        for k in 0..self.kinds.len() {
            let owned = host.owned(&self.kinds[k]);
            let mut shards: Vec<u16> = owned.iter().map(|&(s, _)| s).collect();
            shards.sort_unstable();
            // Held reminders of shards no longer owned: their new owner
            // fires them.
            let lost: Vec<Key> = self
                .slots
                .iter()
                .filter(|(key, s)| {
                    key.0 == k && !s.in_flight && shards.binary_search(&s.row.key.shard).is_err()
                })
                .map(|(key, _)| key.clone())
                .collect();
            for key in &lost {
                self.drop_slot(key);
            }
            if shards.is_empty() {
                continue;
            }
            let now = now_ms();
            let before = now.saturating_add(ms(self.opts.window));
            let limit = self.opts.max_loaded.max(1);
            let rows = match store
                .reminders_due(&self.kinds[k].name, &shards, before, limit)
                .await
            {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!(kind = %self.kinds[k].name, "loading reminders: {e}");
                    continue;
                }
            };
            let horizon = if rows.len() >= limit {
                rows.last().map_or(before, |r| r.due_ms)
            } else {
                before
            };
            let mut seen = std::collections::HashSet::with_capacity(rows.len());
            for row in rows {
                let key = (k, row.key.id.clone(), row.name.clone());
                seen.insert(key.clone());
                match self.slots.get(&key) {
                    Some(s) if s.in_flight || s.row.version >= row.version => {}
                    _ => {
                        let at = row.due_ms;
                        self.hold(key, row, 0, at);
                    }
                }
            }
            let gone: Vec<Key> = self
                .slots
                .iter()
                .filter(|(key, s)| {
                    key.0 == k
                        && !s.in_flight
                        && s.touched < began
                        && s.row.due_ms < horizon
                        && !seen.contains(*key)
                })
                .map(|(key, _)| key.clone())
                .collect();
            for key in &gone {
                self.drop_slot(key);
            }
        }
    }

    /// The slow start's limit now.
    fn limit(&self) -> usize {
        let doublings =
            self.started.elapsed().as_secs_f64() / self.opts.ramp.as_secs_f64().max(1e-3);
        let grown = (self.opts.initial_concurrency.max(1) as f64) * 2f64.powf(doublings.min(40.0));
        (grown as usize).clamp(1, self.opts.max_concurrency.max(1))
    }

    /// Takes a token of the budget, if one is there.
    fn take_token(&mut self) -> bool {
        if self.opts.budget == 0 {
            return true;
        }
        let rate = f64::from(self.opts.budget);
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Starts the ticks due, as the throttle allows.
    fn fire_ready(&mut self, host: &Arc<dyn Host>) {
        let Some(store) = host.store() else {
            return;
        };
        let limit = self.limit();
        let now = now_ms();
        while self.flight.len() < limit {
            let Some((&(at, seq), _)) = self.queue.first_key_value() else {
                break;
            };
            if at > now {
                break;
            }
            // Ownership first: a moved reminder spends no budget.
            let owner = self.queue.get(&(at, seq)).and_then(|key| {
                let slot = self.slots.get(key)?;
                Some(host.owns(&self.kinds[key.0], slot.row.key.shard))
            });
            if let Some(None) = owner {
                // Moved: its new owner fires it.
                if let Some(key) = self.queue.remove(&(at, seq)) {
                    self.slots.remove(&key);
                }
                continue;
            }
            if !self.take_token() {
                break;
            }
            let Some(key) = self.queue.remove(&(at, seq)) else {
                break;
            };
            let Some(token) = owner.flatten() else {
                continue;
            };
            let Some(slot) = self.slots.get_mut(&key) else {
                continue;
            };
            slot.queued = None;
            let kind = &self.kinds[key.0];
            slot.in_flight = true;
            let row = slot.row.clone();
            let fire = Fire {
                retry: slot.retry,
                store: store.clone(),
                row,
                token: (token != 0).then_some(token),
                kind: kind.clone(),
                timeout: self.opts.timeout,
                stats: self.stats.clone(),
            };
            let delivery = fire.delivery(host.clone(), now);
            let handle = self.flight.spawn(fire.run(delivery));
            self.flying.insert(handle.id(), key);
        }
    }

    /// A tick in flight landed.
    fn landed(&mut self, done: Result<(tokio::task::Id, Outcome), tokio::task::JoinError>) {
        let (id, outcome) = match done {
            Ok(done) => done,
            Err(e) => (e.id(), Outcome::Failed(None)),
        };
        let Some(key) = self.flying.remove(&id) else {
            return;
        };
        let Some(mut slot) = self.slots.remove(&key) else {
            return;
        };
        if let Some(replaced) = slot.replaced.take() {
            if let Some(row) = replaced {
                let at = row.due_ms;
                self.hold(key, row, 0, at);
            }
            return;
        }
        match outcome {
            Outcome::Advanced(row) => {
                let at = row.due_ms;
                self.hold(key, row, 0, at);
            }
            Outcome::Finished | Outcome::Gone => {}
            Outcome::Failed(retry) => {
                slot.attempt = slot.attempt.saturating_add(1);
                let backoff = self
                    .opts
                    .retry
                    .saturating_mul(1 << (slot.attempt - 1).min(20))
                    .min(self.opts.max_retry);
                let at = now_ms().saturating_add(ms(backoff));
                let retry = retry.or(slot.retry);
                self.hold_retry(key, slot.row, slot.attempt, at, retry);
            }
        }
    }
}

/// A delivery as begun: the plan, and the reply to come if the tick
/// fires (or why it could not be sent).
type Started = Result<(Plan, Option<BoxFuture<'static, Result<Vec<u8>, Error>>>), String>;

/// One tick's delivery and advance.
struct Fire {
    /// A failed tick's plan, delivered again as it was.
    retry: Option<Plan>,
    store: Arc<dyn StateStore>,
    row: ReminderRow,
    token: Option<u64>,
    kind: Kind,
    timeout: Duration,
    stats: Arc<Stats>,
}

impl Fire {
    /// Plans the tick at `now` and starts its delivery (if it fires).
    fn delivery(&self, host: Arc<dyn Host>, now: u64) -> Started {
        let (missed, data) = decode_payload(&self.row.payload).map_err(|e| e.to_string())?;
        let p = self
            .retry
            .unwrap_or_else(|| plan(self.row.due_ms, self.row.period_ms, missed, now));
        let Some(f) = p.fire else {
            return Ok((p, None));
        };
        let tick = Tick {
            name: self.row.name.to_string(),
            due_ms: f.due,
            missed: f.missed,
            data,
        };
        let body = crate::wire::encode(&tick).map_err(|e| e.to_string())?;
        metrics::histogram!(crate::telemetry::REMINDER_LATENESS_SECONDS)
            .record(now.saturating_sub(f.due) as f64 / 1000.0);
        Ok((
            p,
            Some(host.deliver(&self.kind, &self.row.key.id, body, self.timeout)),
        ))
    }

    async fn run(self, delivery: Started) -> Outcome {
        use std::sync::atomic::Ordering::Relaxed;
        let what = || {
            format!(
                "reminder {:?} of {} {:?}",
                self.row.name, self.row.key.kind, self.row.key.id
            )
        };
        let (p, delivery) = match delivery {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("{}: {e}", what());
                self.outcome("failed");
                self.stats.failed.fetch_add(1, Relaxed);
                return Outcome::Failed(None);
            }
        };
        match delivery {
            None => {
                self.outcome("skipped");
                self.stats.skipped.fetch_add(1, Relaxed);
            }
            Some(d) => {
                let verdict = d
                    .await
                    .and_then(|b| crate::wire::decode::<Result<(), String>>(&b));
                match verdict {
                    Ok(Ok(())) => {
                        self.outcome("ok");
                        self.stats.fired.fetch_add(1, Relaxed);
                    }
                    Ok(Err(reason)) => {
                        tracing::debug!("{}: the handler failed the tick: {reason}", what());
                        self.outcome("failed");
                        self.stats.failed.fetch_add(1, Relaxed);
                        return Outcome::Failed(Some(p));
                    }
                    Err(e) => {
                        tracing::debug!("{}: the tick failed: {e}", what());
                        self.outcome("failed");
                        self.stats.failed.fetch_add(1, Relaxed);
                        return Outcome::Failed(Some(p));
                    }
                }
            }
        }
        let written = match p.next {
            None => self
                .store
                .delete_reminder(&self.row.key, &self.row.name, self.row.version, self.token)
                .await
                .map(|()| None),
            Some(next) => {
                let mut row = self.row.clone();
                row.due_ms = next;
                self.store
                    .put_reminder(&row, self.row.version, self.token)
                    .await
                    .map(|v| {
                        row.version = v;
                        Some(row)
                    })
            }
        };
        match written {
            Ok(Some(row)) => Outcome::Advanced(row),
            Ok(None) => Outcome::Finished,
            Err(StoreError::Conflict { .. } | StoreError::Fenced { .. }) => Outcome::Gone,
            Err(e) => {
                tracing::warn!(
                    "{}: advancing after a delivered tick: {e} (it will be delivered again)",
                    what()
                );
                Outcome::Failed(Some(p))
            }
        }
    }

    fn outcome(&self, outcome: &'static str) {
        metrics::counter!(crate::telemetry::REMINDER_TICKS_TOTAL, "outcome" => outcome)
            .increment(1);
    }
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

async fn sleep_until(wake: Option<Instant>) {
    match wake {
        Some(w) => tokio::time::sleep_until(w).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reminder::{Bound, Reminders, Schedule};
    use crate::state::MemoryStore;
    use std::sync::atomic::Ordering::Relaxed;

    /// A node that owns every shard and acknowledges every tick.
    struct Fake {
        store: Arc<dyn StateStore>,
        ticks: mpsc::UnboundedSender<Tick>,
        /// How many deliveries to fail (the handler says `Err`).
        fail: std::sync::atomic::AtomicUsize,
    }

    impl Host for Fake {
        fn store(&self) -> Option<Arc<dyn StateStore>> {
            Some(self.store.clone())
        }
        fn owned(&self, _: &Kind) -> Vec<(u16, u64)> {
            (0..crate::ring::SHARDS as u16).map(|s| (s, 0)).collect()
        }
        fn owns(&self, _: &Kind, _: u16) -> Option<u64> {
            Some(0)
        }
        fn deliver(
            self: Arc<Self>,
            _: &Kind,
            _: &str,
            body: Vec<u8>,
            _: Duration,
        ) -> BoxFuture<'static, Result<Vec<u8>, Error>> {
            let tick: Tick = crate::wire::decode(&body).expect("a tick");
            let _ = self.ticks.send(tick);
            let failing = self
                .fail
                .fetch_update(Relaxed, Relaxed, |n| n.checked_sub(1))
                .is_ok();
            let verdict: Result<(), String> = match failing {
                true => Err("failed on purpose".into()),
                false => Ok(()),
            };
            Box::pin(std::future::ready(crate::wire::encode(&verdict)))
        }
    }

    fn reminders(store: &Arc<dyn StateStore>, id: &str, keeper: Option<Keeper>) -> Reminders {
        Reminders {
            inner: Ok(Bound {
                store: store.clone(),
                key: StateKey::new("cap/A", id),
                token: None,
                keeper,
            }),
        }
    }

    fn kind() -> Kind {
        Kind {
            name: "cap/A".into(),
            tag: 1,
            actor_key: 2,
            capability_key: 3,
        }
    }

    /// A keeper started with `options` over a fake node that fails its
    /// first `fail` deliveries: the store, the keeper (the node is kept
    /// alive with it), and the ticks delivered.
    fn started(
        fail: usize,
        options: ReminderOptions,
    ) -> (
        Arc<dyn StateStore>,
        Keeper,
        Arc<dyn Host>,
        mpsc::UnboundedReceiver<Tick>,
    ) {
        let store: Arc<dyn StateStore> = Arc::new(MemoryStore::new());
        let (tx, ticks) = mpsc::unbounded_channel();
        let host: Arc<dyn Host> = Arc::new(Fake {
            store: store.clone(),
            ticks: tx,
            fail: fail.into(),
        });
        let keeper = Keeper::new(vec![kind()], options);
        keeper.start(Arc::downgrade(&host));
        (store, keeper, host, ticks)
    }

    /// The next tick delivered (within 10 s).
    async fn next(ticks: &mut mpsc::UnboundedReceiver<Tick>) -> Tick {
        tokio::time::timeout(Duration::from_secs(10), ticks.recv())
            .await
            .expect("a tick")
            .expect("open")
    }

    /// A tick whose handler failed is delivered again, the same tick, even
    /// under `Missed::Skip` with a backoff longer than the period (by
    /// then its successor is due too: a new plan would skip both).
    #[tokio::test]
    async fn a_failed_tick_is_delivered_again_under_skip() {
        let options = ReminderOptions {
            refresh: Duration::from_millis(50),
            retry: Duration::from_millis(100),
            max_retry: Duration::from_millis(100),
            ..ReminderOptions::default()
        };
        let (store, keeper, _host, mut ticks) = started(1, options);
        let every =
            Schedule::every(Duration::from_millis(20)).missed(crate::reminder::Missed::Skip);
        reminders(&store, "x", Some(keeper.clone()))
            .register("r", every, &())
            .await
            .unwrap();
        let failed = next(&mut ticks).await;
        let again = next(&mut ticks).await;
        assert_eq!(again.due_ms, failed.due_ms, "the failed tick, again");
        keeper.halt();
    }

    #[tokio::test]
    async fn a_failed_keeper_is_replaced_by_a_fresh_one_that_reloads_from_the_store() {
        let options = ReminderOptions {
            refresh: Duration::from_millis(50),
            ..ReminderOptions::default()
        };
        let (store, keeper, _host, mut ticks) = started(0, options);
        let soon = Duration::from_millis(20);
        reminders(&store, "x", Some(keeper.clone()))
            .register("first", Schedule::after(soon), &())
            .await
            .unwrap();
        assert_eq!(next(&mut ticks).await.name, "first");
        keeper.crash();
        // Written where no keeper hears of it: only a load finds it, so
        // only a fresh keeper's loads can fire it.
        reminders(&store, "y", None)
            .register("second", Schedule::after(soon), &())
            .await
            .unwrap();
        assert_eq!(next(&mut ticks).await.name, "second");
        keeper.stop();
        tokio::time::timeout(Duration::from_secs(10), keeper.stopped())
            .await
            .expect("the keeper ends once stopped");
    }
}
