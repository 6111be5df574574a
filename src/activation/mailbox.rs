//! The bounded mailbox of one activation.
//!
//! Many producers (callers) push under a short mutex; the activation's task
//! takes everything queued at once (one lock per batch, not per message).
//!
//! Contracts:
//! - `push` never blocks and never awaits: a full mailbox refuses the message
//!   ([`Push::Full`]) and hands it back.
//! - A mailbox is closed only under the activation table's write lock, in the
//!   same step that removes it from the table (see `activation::Activations`).
//!   A producer that finds the mailbox in the table can therefore always push.
//! - Idleness is counted in batches, not read from the clock: the idle
//!   sweeper compares the batch counter between its ticks, so the hot path
//!   reads no clock for it.
//! - While the activation waits on user code (a slow handler, activation or
//!   hook) it *watches* the mailbox: a push whose deadline is earlier than
//!   the one its timer is armed for wakes it, so queued calls time out on
//!   time (see `task::watch_queue`).
//! - An idle mailbox holds no heap buffer beyond what earlier bursts grew.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use tokio::time::Instant;

/// Why a push was refused; the message comes back.
#[derive(Debug)]
pub(crate) enum Push<E> {
    /// The mailbox holds `capacity` messages.
    Full(E),
    /// The activation has ended; look the actor up again.
    Closed(E),
}

/// What the receiving task got.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Take {
    /// At least one message moved into the caller's batch.
    Batch,
    /// The mailbox is empty and was asked to stop (node shutdown).
    Stop,
    /// The mailbox is empty and the idle sweeper found it idle.
    Idle,
    /// The mailbox is empty and its actor's shard moved to another node.
    Moved,
}

/// What the registered waker waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// Any message (the activation is idle).
    Message,
    /// A message with a deadline earlier than this one (`None`: any
    /// deadline): the activation is busy in user code.
    Deadline(Option<Instant>),
}

#[derive(Debug)]
struct State<E> {
    queue: VecDeque<E>,
    waker: Option<Waker>,
    wait: Wait,
    closed: bool,
    stop: bool,
    /// Set by the idle sweeper; cleared by the next batch.
    idle: bool,
    /// Set when the actor's shard moved away; consumed when seen.
    moved: bool,
    /// Batches taken so far, and the count the sweeper saw last with how
    /// many of its ticks it has stayed the same.
    batches: u64,
    swept: u64,
    quiet_ticks: u32,
    /// Queued messages that do not count as activity (timer ticks that do
    /// not keep the actor alive): a batch of only these leaves the idle
    /// accounting alone.
    quiet_queued: usize,
    /// What the admin views show: when the mailbox was made and last
    /// pushed to (coarse Unix ms, see `admin::stats::coarse_ms`), and the
    /// activation's timers once it set one.
    #[cfg(feature = "admin")]
    seen: Seen,
}

/// See `State::seen`.
#[cfg(feature = "admin")]
#[derive(Debug)]
struct Seen {
    since_ms: u64,
    last_ms: u64,
    timers: Option<std::sync::Weak<crate::actor::timer::Timers>>,
}

/// One activation as the admin views show it.
#[cfg(feature = "admin")]
#[derive(Debug)]
pub(crate) struct Inspected {
    /// Messages waiting.
    pub(crate) depth: usize,
    /// When the mailbox was made: the activation's start (Unix ms).
    pub(crate) since_ms: u64,
    /// When a message was last queued (Unix ms; 0: none yet).
    pub(crate) last_ms: u64,
    /// Its timers.
    pub(crate) timers: Vec<crate::actor::timer::TimerInfo>,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) struct Mailbox<E> {
    state: Mutex<State<E>>,
    capacity: usize,
}

impl<E> Mailbox<E> {
    pub(crate) fn new(capacity: usize) -> Self {
        Mailbox {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                waker: None,
                wait: Wait::Message,
                closed: false,
                stop: false,
                idle: false,
                moved: false,
                batches: 0,
                swept: 0,
                quiet_ticks: 0,
                quiet_queued: 0,
                #[cfg(feature = "admin")]
                seen: Seen {
                    since_ms: crate::admin::stats::coarse_ms(),
                    last_ms: 0,
                    timers: None,
                },
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<E>> {
        // No user code runs under this lock, so poisoning cannot leave the
        // state half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enqueues `msg` (whose call expires at `deadline`) and wakes the
    /// activation if it waits for it.
    pub(crate) fn push(&self, msg: E, deadline: Option<Instant>) -> Result<(), Push<E>> {
        self.push_as(msg, deadline, false)
    }

    /// Enqueues a message that does not count as activity (a timer tick
    /// that does not keep the actor alive): the idle sweeper ignores it.
    pub(crate) fn push_quiet(&self, msg: E) -> Result<(), Push<E>> {
        self.push_as(msg, None, true)
    }

    fn push_as(&self, msg: E, deadline: Option<Instant>, quiet: bool) -> Result<(), Push<E>> {
        let mut s = self.lock();
        if s.closed {
            return Err(Push::Closed(msg));
        }
        if s.queue.len() >= self.capacity {
            return Err(Push::Full(msg));
        }
        s.queue.push_back(msg);
        if quiet {
            s.quiet_queued += 1;
        } else {
            #[cfg(feature = "admin")]
            {
                s.seen.last_ms = crate::admin::stats::coarse_ms();
            }
        }
        let wake = match s.wait {
            Wait::Message => true,
            Wait::Deadline(armed) => match (deadline, armed) {
                (Some(d), Some(a)) => d < a,
                (Some(_), None) => true,
                (None, _) => false,
            },
        };
        let waker = if wake { s.waker.take() } else { None };
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// What the admin views show of it (feature `admin`).
    #[cfg(feature = "admin")]
    pub(crate) fn inspect(&self) -> Inspected {
        let s = self.lock();
        let timers = s.seen.timers.as_ref().and_then(|t| t.upgrade());
        let (depth, since_ms, last_ms) = (s.queue.len(), s.seen.since_ms, s.seen.last_ms);
        drop(s);
        Inspected {
            depth,
            since_ms,
            last_ms,
            timers: timers.map(|t| t.describe()).unwrap_or_default(),
        }
    }

    /// Where the activation's timers are (the admin views list them).
    #[cfg_attr(not(feature = "admin"), allow(unused_variables))]
    pub(crate) fn attach_timers(&self, timers: std::sync::Weak<crate::actor::timer::Timers>) {
        #[cfg(feature = "admin")]
        {
            self.lock().seen.timers = Some(timers);
        }
    }

    /// Moves every queued message into `batch` (which must be empty), or
    /// registers the task to be woken by the next push, stop or idle mark.
    pub(crate) fn poll_take(&self, cx: &mut Context<'_>, batch: &mut VecDeque<E>) -> Poll<Take> {
        let mut s = self.lock();
        if !s.queue.is_empty() {
            // A batch of quiet messages only is no activity.
            let active = s.queue.len() > std::mem::take(&mut s.quiet_queued);
            std::mem::swap(&mut s.queue, batch);
            if active {
                s.idle = false;
                s.batches = s.batches.wrapping_add(1);
            }
            return Poll::Ready(Take::Batch);
        }
        if s.stop {
            return Poll::Ready(Take::Stop);
        }
        if std::mem::take(&mut s.moved) {
            return Poll::Ready(Take::Moved);
        }
        if s.idle {
            return Poll::Ready(Take::Idle);
        }
        register(&mut s, cx, Wait::Message);
        Poll::Pending
    }

    /// Registers the task to be woken by a push whose deadline is earlier
    /// than `armed` (or by any push with a deadline if `armed` is `None`).
    pub(crate) fn watch(&self, cx: &mut Context<'_>, armed: Option<Instant>) {
        let mut s = self.lock();
        register(&mut s, cx, Wait::Deadline(armed));
    }

    /// Registers the task to be woken by any push (a reentrant activation
    /// in a turn: a call of its chain may arrive).
    pub(crate) fn watch_any(&self, cx: &mut Context<'_>) {
        let mut s = self.lock();
        register(&mut s, cx, Wait::Message);
    }

    /// Removes the queued messages `pick` selects, in order (never a
    /// quiet one: `pick` must not select timer ticks).
    pub(crate) fn take_picked(&self, pick: impl Fn(&E) -> bool) -> Vec<E> {
        let mut s = self.lock();
        if !s.queue.iter().any(&pick) {
            return Vec::new();
        }
        let mut picked = Vec::new();
        let queue = std::mem::take(&mut s.queue);
        for msg in queue {
            if pick(&msg) {
                picked.push(msg);
            } else {
                s.queue.push_back(msg);
            }
        }
        picked
    }

    /// Whether a queued message is one `pick` selects.
    pub(crate) fn any(&self, pick: impl Fn(&E) -> bool) -> bool {
        self.lock().queue.iter().any(pick)
    }

    /// Removes the queued messages whose deadline is at or before `now`;
    /// returns them and the earliest deadline among those left.
    pub(crate) fn take_expired(
        &self,
        now: Instant,
        deadline_of: impl Fn(&E) -> Option<Instant>,
    ) -> (Vec<E>, Option<Instant>) {
        let mut s = self.lock();
        let mut expired = Vec::new();
        let mut earliest: Option<Instant> = None;
        let queue = std::mem::take(&mut s.queue);
        for msg in queue {
            match deadline_of(&msg) {
                Some(d) if d <= now => expired.push(msg),
                Some(d) => {
                    earliest = Some(earliest.map_or(d, |e| e.min(d)));
                    s.queue.push_back(msg);
                }
                None => s.queue.push_back(msg),
            }
        }
        (expired, earliest)
    }

    /// Puts unprocessed messages back in front of the queue, in order
    /// (they count as activity again, quiet or not: a rare path).
    pub(crate) fn put_back(&self, batch: &mut VecDeque<E>) {
        if batch.is_empty() {
            return;
        }
        let mut s = self.lock();
        while let Some(msg) = batch.pop_back() {
            s.queue.push_front(msg);
        }
    }

    /// Takes every queued message out (to fail them), leaving it open.
    pub(crate) fn drain(&self) -> VecDeque<E> {
        std::mem::take(&mut self.lock().queue)
    }

    /// Closes the mailbox if it is empty. Called under the table's write lock.
    pub(crate) fn close_if_empty(&self) -> bool {
        let mut s = self.lock();
        if s.queue.is_empty() {
            s.closed = true;
        }
        s.closed
    }

    /// Closes the mailbox and returns what it still held. Called under the
    /// table's write lock.
    pub(crate) fn close(&self) -> VecDeque<E> {
        let mut s = self.lock();
        s.closed = true;
        std::mem::take(&mut s.queue)
    }

    /// Tells the activation its shard moved: it finishes what is queued,
    /// then deactivates (messages that still arrive activate it again).
    pub(crate) fn mark_moved(&self) {
        let mut s = self.lock();
        s.moved = true;
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Asks the activation to finish what is queued and stop.
    pub(crate) fn stop(&self) {
        let mut s = self.lock();
        s.stop = true;
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// One tick of the idle sweeper: marks the mailbox idle (waking its
    /// activation to passivate) once it has taken no batch and held no
    /// message for `ticks` consecutive ticks.
    pub(crate) fn sweep(&self, ticks: u32) -> bool {
        let mut s = self.lock();
        if s.batches != s.swept || s.queue.len() > s.quiet_queued {
            s.swept = s.batches;
            s.quiet_ticks = 0;
            return false;
        }
        s.quiet_ticks += 1;
        if s.idle || s.stop || s.quiet_ticks < ticks {
            return false;
        }
        s.idle = true;
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        true
    }

    /// How many messages are queued.
    pub(crate) fn len(&self) -> usize {
        self.lock().queue.len()
    }
}

fn register<E>(s: &mut State<E>, cx: &mut Context<'_>, wait: Wait) {
    s.wait = wait;
    match &s.waker {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => s.waker = Some(cx.waker().clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;
    use std::time::Duration;

    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn counting() -> (Arc<Count>, Waker) {
        let c = Arc::new(Count::default());
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn full_mailbox_hands_the_message_back() {
        let mb = Mailbox::new(2);
        mb.push(1, None).unwrap();
        mb.push(2, None).unwrap();
        assert!(matches!(mb.push(3, None), Err(Push::Full(3))));
        assert_eq!(mb.len(), 2);
    }

    #[test]
    fn batch_takes_everything_in_order_and_put_back_restores_it() {
        let mb = Mailbox::new(8);
        for i in 0..5 {
            mb.push(i, None).unwrap();
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = VecDeque::new();
        assert_eq!(mb.poll_take(&mut cx, &mut batch), Poll::Ready(Take::Batch));
        assert_eq!(batch, [0, 1, 2, 3, 4]);
        batch.pop_front();
        mb.push(9, None).unwrap();
        mb.put_back(&mut batch);
        assert_eq!(mb.poll_take(&mut cx, &mut batch), Poll::Ready(Take::Batch));
        assert_eq!(batch, [1, 2, 3, 4, 9]);
    }

    #[test]
    fn close_if_empty_refuses_while_messages_wait() {
        let mb = Mailbox::new(8);
        mb.push(1, None).unwrap();
        assert!(!mb.close_if_empty());
        assert_eq!(mb.drain(), [1]);
        assert!(mb.close_if_empty());
        assert!(matches!(mb.push(2, None), Err(Push::Closed(2))));
    }

    #[test]
    fn idle_needs_quiet_ticks_and_a_new_batch_clears_it() {
        let mb = Mailbox::new(8);
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = VecDeque::new();
        mb.push(1, None).unwrap();
        assert!(!mb.sweep(2), "a message is waiting");
        assert_eq!(mb.poll_take(&mut cx, &mut batch), Poll::Ready(Take::Batch));
        batch.clear();
        assert!(!mb.sweep(2), "a batch was taken since the last tick");
        assert!(!mb.sweep(2), "one quiet tick");
        assert!(mb.sweep(2), "two quiet ticks");
        assert_eq!(mb.poll_take(&mut cx, &mut batch), Poll::Ready(Take::Idle));
        // A message after the mark wins over it, and clears it.
        mb.push(2, None).unwrap();
        assert_eq!(mb.poll_take(&mut cx, &mut batch), Poll::Ready(Take::Batch));
        batch.clear();
        assert_eq!(mb.poll_take(&mut cx, &mut batch), Poll::Pending);
    }

    #[test]
    fn stop_is_seen_only_once_empty() {
        let mb = Mailbox::new(8);
        mb.push(1, None).unwrap();
        mb.stop();
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = VecDeque::new();
        assert_eq!(mb.poll_take(&mut cx, &mut batch), Poll::Ready(Take::Batch));
        batch.clear();
        assert_eq!(mb.poll_take(&mut cx, &mut batch), Poll::Ready(Take::Stop));
    }

    #[test]
    fn a_watching_activation_wakes_only_for_earlier_deadlines() {
        let mb = Mailbox::new(8);
        let (count, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let t0 = Instant::now();
        let armed = t0 + Duration::from_secs(10);
        mb.watch(&mut cx, Some(armed));
        mb.push(1, None).unwrap();
        mb.push(2, Some(armed + Duration::from_secs(1))).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "no earlier deadline yet");
        mb.push(3, Some(t0 + Duration::from_secs(1))).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);

        let (expired, earliest) = mb.take_expired(t0 + Duration::from_secs(1), |&m| match m {
            1 => None,
            2 => Some(armed + Duration::from_secs(1)),
            _ => Some(t0 + Duration::from_secs(1)),
        });
        assert_eq!(expired, [3]);
        assert_eq!(earliest, Some(armed + Duration::from_secs(1)));
        assert_eq!(mb.len(), 2);

        // An idle activation wakes for anything.
        let mut batch = VecDeque::new();
        assert_eq!(mb.poll_take(&mut cx, &mut batch), Poll::Ready(Take::Batch));
        batch.clear();
        assert_eq!(mb.poll_take(&mut cx, &mut batch), Poll::Pending);
        mb.push(4, None).unwrap();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }
}
