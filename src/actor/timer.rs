//! Timers bound to an activation: a message delivered to the actor itself
//! after a delay, once or periodically, in turn with its other messages.
//!
//! Contracts:
//! - A tick is a local message (never forwarded to another node) handled
//!   like any other: one at a time, in mailbox order.
//! - Fixed delay: a periodic timer arms its next tick one period after the
//!   previous one was *queued*, and skips a tick while the previous one is
//!   still waiting in the mailbox (ticks never pile up behind a slow
//!   handler).
//! - A timer dies with its activation: when the activation ends (idle
//!   passivation, `ctx.deactivate()`, a moved shard, a panic, shutdown)
//!   every timer is cancelled, and a tick still queued is dropped unhandled;
//!   it never activates the actor again.
//! - By default a tick does not count as activity: an actor with only
//!   timers running is still passivated after its idle timeout.
//!   [`Timer::keep_alive`] makes its ticks count.
//! - The same key replaces the timer of that key (its queued tick is
//!   dropped). A full mailbox skips the tick, with a log line.
//! - Durable reminders (that survive passivation and activate the actor)
//!   are not offered: they need storage; a later step.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::task::AbortHandle;

use crate::{Handler, Message};

/// Where a timer delivers its ticks: the mailbox of the activation that
/// set it. The activation implements it (the actor layer does not know the
/// mailbox's type); a tick goes in as the actor's own typed envelope,
/// boxed (a tick is rare next to a call).
pub(crate) trait Inbox: Send + Sync {
    /// The actor type the activation runs (a timer for another type is
    /// refused with [`TimerError::WrongActor`]).
    fn actor(&self) -> std::any::TypeId;
    /// Queues `envelope` (an `A::Envelope` of the activation's `A`);
    /// `keep_alive`: the tick counts as activity.
    fn deliver(&self, envelope: Box<dyn std::any::Any + Send>, keep_alive: bool) -> Delivery;
    /// Where the activation's timers are, once it set the first one (the
    /// admin views list them).
    fn attach_timers(&self, timers: Weak<Timers>);
}

/// One timer as the admin views show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TimerInfo {
    /// Its key.
    pub(crate) key: String,
    /// Its period (`None`: once).
    pub(crate) every: Option<Duration>,
    /// When its next tick is due (Unix ms; 0: none is, it fired once).
    pub(crate) next_ms: u64,
    /// Whether its ticks keep the actor alive.
    pub(crate) keep_alive: bool,
}

/// What [`Inbox::deliver`] did with a tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// Queued.
    Queued,
    /// The mailbox is full: the tick is skipped.
    Full,
    /// The activation has ended: the timer stops.
    Closed,
}

/// When a timer fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timer {
    first: Duration,
    every: Option<Duration>,
    keep_alive: bool,
}

impl Timer {
    /// Once, after `delay`.
    pub fn once(delay: Duration) -> Self {
        Timer {
            first: delay,
            every: None,
            keep_alive: false,
        }
    }

    /// Every `period`, the first one period from now.
    pub fn every(period: Duration) -> Self {
        Timer {
            first: period,
            every: Some(period.max(Duration::from_millis(1))),
            keep_alive: false,
        }
    }

    /// The first tick after `delay` instead of one period.
    pub fn first_after(mut self, delay: Duration) -> Self {
        self.first = delay;
        self
    }

    /// Ticks count as activity: they keep the actor from being passivated.
    pub fn keep_alive(mut self) -> Self {
        self.keep_alive = true;
        self
    }
}

/// Shared by a timer's task and its ticks.
#[derive(Debug)]
pub(crate) struct TickState {
    live: AtomicBool,
    queued: AtomicBool,
    /// When the next tick is due (Unix ms, 0: none), for the admin views.
    next_ms: std::sync::atomic::AtomicU64,
    when: Timer,
}

/// The wall clock `after` from now, in Unix ms (a timer arms rarely: a
/// real clock read), for the admin views; `u64::MAX` past the clock's
/// range.
#[cfg(feature = "admin")]
fn unix_ms_after(after: Duration) -> u64 {
    std::time::SystemTime::now()
        .checked_add(after)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(u64::MAX, |d| d.as_millis() as u64)
}

impl TickState {
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    pub(crate) fn handled(&self) {
        self.queued.store(false, Ordering::Release);
    }

    fn cancel(&self) {
        self.live.store(false, Ordering::Release);
    }
}

/// The timers of one activation (held by its [`crate::Ctx`]).
#[derive(Debug, Default)]
pub(crate) struct Timers {
    by_key: Mutex<HashMap<String, (Arc<TickState>, AbortHandle)>>,
}

/// Why a timer was not set.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimerError {
    /// The timer was asked for another actor type than the activation's
    /// (`ctx.timer::<Self, _>` is the usual form).
    #[error("a timer for {wanted} cannot be set from an activation of {actor}")]
    WrongActor {
        /// The activation's actor type.
        actor: &'static str,
        /// The type the timer was asked for.
        wanted: &'static str,
    },
    /// The activation has ended.
    #[error("the activation has ended")]
    Ended,
}

impl Timers {
    /// Starts (or replaces) timer `key` delivering `msg` to `mb`.
    pub(crate) fn start<A, M>(
        &self,
        key: String,
        when: Timer,
        msg: M,
        mb: Weak<dyn Inbox>,
        id: Arc<str>,
    ) where
        A: Handler<M>,
        M: Message + Clone,
    {
        let state = Arc::new(TickState {
            live: AtomicBool::new(true),
            queued: AtomicBool::new(false),
            next_ms: std::sync::atomic::AtomicU64::new(0),
            when,
        });
        let tick_state = state.clone();
        let task = tokio::spawn(async move {
            let mut wait = when.first;
            loop {
                #[cfg(feature = "admin")]
                tick_state
                    .next_ms
                    .store(unix_ms_after(wait), Ordering::Relaxed);
                tokio::time::sleep(wait).await;
                if !tick_state.is_live() {
                    return;
                }
                if !tick_state.queued.swap(true, Ordering::AcqRel) {
                    let reply = crate::actor::ReplyTo::tick(tick_state.clone());
                    let env: Box<dyn std::any::Any + Send> =
                        Box::new(<A as Handler<M>>::__wrap(msg.clone(), reply));
                    let Some(mb) = mb.upgrade() else { return };
                    match mb.deliver(env, when.keep_alive) {
                        Delivery::Queued => {}
                        Delivery::Closed => {
                            tick_state.handled();
                            return;
                        }
                        Delivery::Full => {
                            tick_state.handled();
                            tracing::warn!(
                                actor = A::NAME,
                                id = &*id,
                                "mailbox full: a timer tick was skipped"
                            );
                        }
                    }
                }
                match when.every {
                    Some(period) => wait = period,
                    None => {
                        tick_state.next_ms.store(0, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
        let old = self.lock().insert(key, (state, task.abort_handle()));
        if let Some((s, t)) = old {
            s.cancel();
            t.abort();
        }
    }

    /// Every live timer, by key.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn describe(&self) -> Vec<TimerInfo> {
        let mut all: Vec<TimerInfo> = self
            .lock()
            .iter()
            .map(|(key, (s, _))| TimerInfo {
                key: key.clone(),
                every: s.when.every,
                next_ms: s.next_ms.load(Ordering::Relaxed),
                keep_alive: s.when.keep_alive,
            })
            .collect();
        all.sort_by(|a, b| a.key.cmp(&b.key));
        all
    }

    /// Cancels timer `key`; returns whether there was one.
    pub(crate) fn cancel(&self, key: &str) -> bool {
        match self.lock().remove(key) {
            Some((s, t)) => {
                s.cancel();
                t.abort();
                true
            }
            None => false,
        }
    }

    /// Cancels every timer (the activation ends).
    pub(crate) fn cancel_all(&self) {
        for (_, (s, t)) in self.lock().drain() {
            s.cancel();
            t.abort();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Arc<TickState>, AbortHandle)>> {
        self.by_key.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Timers {
    fn drop(&mut self) {
        self.cancel_all();
    }
}
