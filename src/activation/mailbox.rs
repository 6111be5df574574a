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
//! - An idle mailbox holds no heap buffer beyond what earlier bursts grew.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

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
}

#[derive(Debug)]
struct State<E> {
    queue: VecDeque<E>,
    waker: Option<Waker>,
    closed: bool,
    stop: bool,
    /// Set by the idle sweeper; cleared by the next batch.
    idle: bool,
    /// When the activation last took a batch.
    last_active: Instant,
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
                closed: false,
                stop: false,
                idle: false,
                last_active: Instant::now(),
            }),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<E>> {
        // No user code runs under this lock, so poisoning cannot leave the
        // state half-updated.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Enqueues `msg` and wakes the activation.
    pub(crate) fn push(&self, msg: E) -> Result<(), Push<E>> {
        let mut s = self.lock();
        if s.closed {
            return Err(Push::Closed(msg));
        }
        if s.queue.len() >= self.capacity {
            return Err(Push::Full(msg));
        }
        s.queue.push_back(msg);
        let waker = s.waker.take();
        drop(s);
        if let Some(w) = waker {
            w.wake();
        }
        Ok(())
    }

    /// Moves every queued message into `batch` (which must be empty), or
    /// registers the task to be woken by the next push, stop or idle mark.
    /// `now` (if the actor passivates at all) stamps the batch's activity.
    pub(crate) fn poll_take(
        &self,
        cx: &mut Context<'_>,
        batch: &mut VecDeque<E>,
        now: Option<Instant>,
    ) -> Poll<Take> {
        let mut s = self.lock();
        if !s.queue.is_empty() {
            std::mem::swap(&mut s.queue, batch);
            s.idle = false;
            if let Some(now) = now {
                s.last_active = now;
            }
            return Poll::Ready(Take::Batch);
        }
        if s.stop {
            return Poll::Ready(Take::Stop);
        }
        if s.idle {
            return Poll::Ready(Take::Idle);
        }
        match &s.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => s.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Puts unprocessed messages back in front of the queue, in order.
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

    /// Marks the mailbox idle, waking its activation to passivate, if it is
    /// empty and took no batch for `idle` up to `now`.
    pub(crate) fn mark_if_idle(&self, now: Instant, idle: Duration) -> bool {
        let mut s = self.lock();
        if s.idle
            || s.stop
            || !s.queue.is_empty()
            || now.saturating_duration_since(s.last_active) < idle
        {
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
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;

    #[test]
    fn full_mailbox_hands_the_message_back() {
        let mb = Mailbox::new(2);
        mb.push(1).unwrap();
        mb.push(2).unwrap();
        assert!(matches!(mb.push(3), Err(Push::Full(3))));
        assert_eq!(mb.len(), 2);
    }

    #[test]
    fn batch_takes_everything_in_order_and_put_back_restores_it() {
        let mb = Mailbox::new(8);
        for i in 0..5 {
            mb.push(i).unwrap();
        }
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = VecDeque::new();
        assert_eq!(
            mb.poll_take(&mut cx, &mut batch, None),
            Poll::Ready(Take::Batch)
        );
        assert_eq!(batch, [0, 1, 2, 3, 4]);
        batch.pop_front();
        mb.push(9).unwrap();
        mb.put_back(&mut batch);
        assert_eq!(
            mb.poll_take(&mut cx, &mut batch, None),
            Poll::Ready(Take::Batch)
        );
        assert_eq!(batch, [1, 2, 3, 4, 9]);
    }

    #[test]
    fn close_if_empty_refuses_while_messages_wait() {
        let mb = Mailbox::new(8);
        mb.push(1).unwrap();
        assert!(!mb.close_if_empty());
        assert_eq!(mb.drain(), [1]);
        assert!(mb.close_if_empty());
        assert!(matches!(mb.push(2), Err(Push::Closed(2))));
    }

    #[test]
    fn idle_mark_needs_an_empty_mailbox_and_enough_quiet() {
        let mb = Mailbox::new(8);
        let t0 = Instant::now();
        let idle = Duration::from_secs(10);
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = VecDeque::new();
        mb.push(1).unwrap();
        assert!(
            !mb.mark_if_idle(t0 + idle * 2, idle),
            "messages are waiting"
        );
        assert_eq!(
            mb.poll_take(&mut cx, &mut batch, Some(t0)),
            Poll::Ready(Take::Batch)
        );
        assert!(
            !mb.mark_if_idle(t0 + idle / 2, idle),
            "not quiet long enough"
        );
        assert!(mb.mark_if_idle(t0 + idle, idle));
        batch.clear();
        assert_eq!(
            mb.poll_take(&mut cx, &mut batch, None),
            Poll::Ready(Take::Idle)
        );
        // A message after the mark wins over it, and clears it.
        mb.push(2).unwrap();
        assert_eq!(
            mb.poll_take(&mut cx, &mut batch, Some(t0 + idle)),
            Poll::Ready(Take::Batch)
        );
        batch.clear();
        assert_eq!(mb.poll_take(&mut cx, &mut batch, None), Poll::Pending);
    }

    #[test]
    fn stop_is_seen_only_once_empty() {
        let mb = Mailbox::new(8);
        mb.push(1).unwrap();
        mb.stop();
        let mut cx = Context::from_waker(Waker::noop());
        let mut batch = VecDeque::new();
        assert_eq!(
            mb.poll_take(&mut cx, &mut batch, None),
            Poll::Ready(Take::Batch)
        );
        batch.clear();
        assert_eq!(
            mb.poll_take(&mut cx, &mut batch, None),
            Poll::Ready(Take::Stop)
        );
    }
}
