//! The table of our requests waiting for their answer, and their deadlines
//! in order. Sans-IO: no socket, no task, no channel; the connection
//! (`super`) locks it, hands the waiters it gives back their outcome, and
//! runs the one deadline task that calls [`Pending::expire`].
//!
//! Contracts:
//! - A waiter leaves the table exactly once: answered or abandoned
//!   ([`Pending::remove`]), timed out ([`Pending::expire`]), or failed when
//!   the connection closes ([`Pending::close`]). Whoever takes it out
//!   answers it.
//! - Correlation ids are never reused on a connection, so a late answer,
//!   cancel or deadline matches nothing and is dropped.
//! - [`Pending::attempt`] is the line between "never sent" and "may have
//!   run": a request whose id is above the highest attempted one when the
//!   table closes never reached the socket ([`Sent::Never`]), so its caller
//!   may route it elsewhere.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use tokio::time::Instant;

/// How many stale deadlines the table keeps beyond twice its waiters
/// before it rebuilds the heap.
const SLACK: usize = 64;

/// Whether the peer may have seen a request failed by [`Pending::close`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Sent {
    /// Never handed to the socket: the peer never saw it.
    Never,
    /// Handed to the socket (or about to be): it may have run.
    Maybe,
}

/// What [`Pending::insert`] tells the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Inserted {
    /// The new deadline is earlier than the one the deadline task sleeps
    /// until: wake it.
    pub(super) earlier: bool,
    /// This is the only request waiting (it may be written directly).
    pub(super) alone: bool,
}

/// Calls waiting for their answer (`W` is how one is answered), and their
/// deadlines in order.
pub(super) struct Pending<W> {
    /// By correlation id (our own sequential ids: a fast, seeded hasher).
    waiters: HashMap<u64, (W, Instant), foldhash::fast::RandomState>,
    /// Deadlines, earliest first. An answered request's entry is not
    /// taken out (that would cost every call a search): it is skipped
    /// when it comes to the top, and the heap is rebuilt from `waiters`
    /// once stale entries outnumber live ones ([`Pending::remove`]), so
    /// it holds at most twice the waiters (plus [`SLACK`]).
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    /// The deadline the deadline task sleeps until.
    armed: Option<Instant>,
    /// The highest correlation id of a request handed to the socket: the
    /// peer may have seen it (and those below it). Raised only before a
    /// write, and only while not `closed`.
    attempted: u64,
    /// Set by `close`: nothing more is written, so requests above
    /// `attempted` were never sent.
    closed: bool,
    /// Set once the connection is sealed: the table reports when its last
    /// waiter goes ([`Pending::is_drained`]).
    draining: bool,
}

impl<W> Default for Pending<W> {
    fn default() -> Self {
        Pending {
            waiters: HashMap::default(),
            deadlines: BinaryHeap::new(),
            armed: None,
            attempted: 0,
            closed: false,
            draining: false,
        }
    }
}

impl<W> Pending<W> {
    /// Adds the waiter of request `corr`, answered at the latest at
    /// `deadline`.
    pub(super) fn insert(&mut self, corr: u64, waiter: W, deadline: Instant) -> Inserted {
        self.waiters.insert(corr, (waiter, deadline));
        self.deadlines.push(Reverse((deadline, corr)));
        Inserted {
            earlier: self.armed.is_none_or(|a| deadline < a),
            alone: self.waiters.len() == 1,
        }
    }

    /// Takes out the waiter of `corr` (its answer came, it failed to go
    /// out, or its caller gave up); `None` if it already left.
    pub(super) fn remove(&mut self, corr: u64) -> Option<W> {
        let (w, _) = self.waiters.remove(&corr)?;
        if self.deadlines.len() > 2 * self.waiters.len() + SLACK {
            self.deadlines = self
                .waiters
                .iter()
                .map(|(&corr, &(_, deadline))| Reverse((deadline, corr)))
                .collect();
        }
        Some(w)
    }

    /// Takes out the waiters whose deadline is at or before `now`, and
    /// arms for the earliest deadline left (returned: what the deadline
    /// task sleeps until next, `None` for nothing).
    pub(super) fn expire(&mut self, now: Instant) -> (Vec<W>, Option<Instant>) {
        let mut expired = Vec::new();
        while let Some(&Reverse((d, corr))) = self.deadlines.peek() {
            let live = self.waiters.contains_key(&corr);
            if live && d > now {
                break;
            }
            self.deadlines.pop();
            if live {
                if let Some((w, _)) = self.waiters.remove(&corr) {
                    expired.push(w);
                }
            }
        }
        self.armed = self.deadlines.peek().map(|&Reverse((d, _))| d);
        (expired, self.armed)
    }

    /// Records that requests up to `corr` are about to be written;
    /// `false` once closed (write nothing: `close` failed the waiter).
    pub(super) fn attempt(&mut self, corr: u64) -> bool {
        if self.closed {
            return false;
        }
        self.attempted = self.attempted.max(corr);
        true
    }

    /// The highest correlation id handed to the socket so far.
    #[cfg(test)]
    pub(super) fn attempted(&self) -> u64 {
        self.attempted
    }

    /// Closes the table and takes out every waiter, each with whether the
    /// peer may have seen its request. Nothing is attempted after this.
    pub(super) fn close(&mut self) -> Vec<(W, Sent)> {
        self.closed = true;
        self.deadlines.clear();
        let attempted = self.attempted;
        self.waiters
            .drain()
            .map(|(corr, (w, _))| {
                let sent = if corr > attempted {
                    Sent::Never
                } else {
                    Sent::Maybe
                };
                (w, sent)
            })
            .collect()
    }

    /// From now on the connection sends no new request: its owner waits
    /// for the table to empty ([`Pending::is_drained`]).
    pub(super) fn drain(&mut self) {
        self.draining = true;
    }

    /// Whether nobody waits any more on a table being drained (or closed):
    /// the moment to wake whoever waits for it to settle.
    pub(super) fn is_drained(&self) -> bool {
        (self.draining || self.closed) && self.waiters.is_empty()
    }

    /// Whether no request waits for an answer.
    pub(super) fn is_empty(&self) -> bool {
        self.waiters.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn at(base: Instant, secs: u64) -> Instant {
        base + Duration::from_secs(secs)
    }

    #[test]
    fn an_answer_takes_out_its_waiter_once() {
        let t = Instant::now();
        let mut p = Pending::default();
        let first = p.insert(1, "one", at(t, 5));
        assert_eq!(
            first,
            Inserted {
                earlier: true,
                alone: true
            }
        );
        let second = p.insert(2, "two", at(t, 9));
        assert!(!second.alone);
        assert_eq!(p.remove(2), Some("two"));
        // A late answer (or a cancel) for the same id matches nothing.
        assert_eq!(p.remove(2), None);
        assert_eq!(p.remove(7), None);
        assert!(!p.is_empty());
        // Its deadline left with it: only 1 expires.
        let (expired, next) = p.expire(at(t, 60));
        assert_eq!(expired, vec!["one"]);
        assert_eq!(next, None);
        assert!(p.is_empty());
    }

    #[test]
    fn only_an_earlier_deadline_than_the_armed_one_wakes_the_deadline_task() {
        let t = Instant::now();
        let mut p = Pending::default();
        assert!(p.insert(1, (), at(t, 10)).earlier, "nothing armed yet");
        // The deadline task arms for the earliest deadline.
        assert_eq!(p.expire(t), (vec![], Some(at(t, 10))));
        assert!(!p.insert(2, (), at(t, 20)).earlier);
        assert!(!p.insert(3, (), at(t, 10)).earlier, "not strictly earlier");
        assert!(p.insert(4, (), at(t, 3)).earlier);
    }

    #[test]
    fn deadlines_expire_in_order_and_re_arm_for_the_earliest_left() {
        let t = Instant::now();
        let mut p = Pending::default();
        p.insert(1, 1, at(t, 3));
        p.insert(2, 2, at(t, 1));
        p.insert(3, 3, at(t, 2));
        p.insert(4, 4, at(t, 9));
        let (expired, next) = p.expire(at(t, 2));
        assert_eq!(expired, vec![2, 3], "the deadline itself counts as passed");
        assert_eq!(next, Some(at(t, 3)));
        let (expired, next) = p.expire(at(t, 2));
        assert!(expired.is_empty());
        assert_eq!(next, Some(at(t, 3)));
        assert_eq!(p.expire(at(t, 100)), (vec![1, 4], None));
    }

    #[test]
    fn close_fails_everything_and_tells_the_unsent_from_the_maybe_sent() {
        let t = Instant::now();
        let mut p = Pending::default();
        for corr in 1..=4 {
            p.insert(corr, corr, at(t, 5));
        }
        // Requests up to 2 were handed to the socket.
        assert!(p.attempt(2));
        assert!(p.attempt(1), "attempted never goes down");
        assert_eq!(p.attempted(), 2);
        let mut failed = p.close();
        failed.sort_by_key(|(corr, _)| *corr);
        assert_eq!(
            failed,
            vec![
                (1, Sent::Maybe),
                (2, Sent::Maybe),
                (3, Sent::Never),
                (4, Sent::Never)
            ]
        );
        assert!(p.is_empty());
        // Closed: nothing more is written, deadlines are gone.
        assert!(!p.attempt(9));
        assert_eq!(p.attempted(), 2);
        assert_eq!(p.expire(at(t, 100)), (vec![], None));
    }

    #[test]
    fn a_draining_table_reports_when_its_last_waiter_left() {
        let t = Instant::now();
        let mut p = Pending::default();
        p.insert(1, (), at(t, 5));
        p.insert(2, (), at(t, 6));
        p.remove(1);
        p.remove(2);
        assert!(!p.is_drained(), "not draining: nobody waits for it");
        p.insert(3, (), at(t, 5));
        p.insert(4, (), at(t, 6));
        p.drain();
        assert!(!p.is_drained());
        p.remove(3);
        assert!(!p.is_drained());
        // The last one leaves by its deadline.
        let _ = p.expire(at(t, 6));
        assert!(p.is_drained());
    }

    #[test]
    fn a_closed_table_is_drained() {
        let mut p = Pending::<()>::default();
        assert!(!p.is_drained());
        p.close();
        assert!(p.is_drained());
    }

    #[test]
    fn answered_deadlines_do_not_pile_up_and_never_fire() {
        let t = Instant::now();
        let mut p = Pending::default();
        p.insert(0, 0u64, at(t, 1_000));
        for corr in 1..10_000u64 {
            p.insert(corr, corr, at(t, 5 + corr));
            assert_eq!(p.remove(corr), Some(corr));
            assert!(p.deadlines.len() <= 2 * p.waiters.len() + SLACK + 1);
        }
        // Only the one left expires, and nothing stale is armed for.
        assert_eq!(p.expire(at(t, 999)), (vec![], Some(at(t, 1_000))));
        assert_eq!(p.expire(at(t, 1_000)), (vec![0], None));
    }
}
