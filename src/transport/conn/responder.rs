//! The inbound side of a connection: the peer's calls in flight here, each
//! answered through its [`Responder`], the calls the peer cancelled, and the
//! [`Ack`] of a peer's `Leave` or `Retire`.
//!
//! Contracts:
//! - Every inbound call is answered exactly once: by [`Responder::send`],
//!   by [`Responder::time_out`], or on drop (`ShuttingDown`), so a caller
//!   never waits for nothing. An answer to a call the peer cancelled is
//!   not written (nobody reads it).
//! - A call counts as in flight ([`InboundCalls::in_flight`]) from its
//!   arrival until its answer is queued; what waits for the count to reach
//!   zero and then closes gracefully still sends every answer.
//! - An [`Ack`] is sent on `send` or on drop, whichever comes first; the
//!   ack of a `Retire` goes out after every call that passed the seal
//!   check before it (see `Connection::seal`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::Shared;
use crate::wire::{self, Failure, Kind, Reply};
use crate::Error;

/// How many cancelled inbound calls a connection remembers before it
/// prunes those older than [`CANCELLED_KEPT`].
const MAX_CANCELLED: usize = 4096;
const CANCELLED_KEPT: Duration = Duration::from_secs(60);

/// The peer's calls on one connection: how many are not answered yet, and
/// which ones the peer cancelled.
#[derive(Default)]
pub(super) struct InboundCalls {
    /// Inbound calls not answered yet.
    count: AtomicUsize,
    /// Woken when `count` drops to zero.
    answered: Notify,
    /// Inbound calls the caller cancelled, with when the cancel came; a
    /// count beside it so the common case (none) costs one atomic load.
    cancelled: Mutex<HashMap<u64, Instant>>,
    cancelled_len: AtomicUsize,
}

impl InboundCalls {
    /// How many calls the peer sent are not answered.
    pub(super) fn in_flight(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Registered before [`InboundCalls::in_flight`] is read, resolves
    /// once it drops to zero.
    pub(super) fn answered(&self) -> tokio::sync::futures::Notified<'_> {
        self.answered.notified()
    }

    fn cancelled(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.cancelled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that the caller abandoned inbound call `corr`. A cancel
    /// that arrives after the answer left stays until pruned: correlation
    /// ids are never reused on a connection, so it matches nothing.
    pub(super) fn cancel(&self, corr: u64) {
        let mut c = self.cancelled();
        if c.len() >= MAX_CANCELLED {
            let horizon = Instant::now() - CANCELLED_KEPT;
            c.retain(|_, at| *at > horizon);
            if c.len() >= MAX_CANCELLED {
                c.clear();
            }
        }
        c.insert(corr, Instant::now());
        self.cancelled_len.store(c.len(), Ordering::Release);
    }

    fn is_cancelled(&self, corr: u64) -> bool {
        self.cancelled_len.load(Ordering::Acquire) > 0 && self.cancelled().contains_key(&corr)
    }

    /// Whether `corr` was cancelled; forgets it either way.
    fn take_cancelled(&self, corr: u64) -> bool {
        if self.cancelled_len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut c = self.cancelled();
        let was = c.remove(&corr).is_some();
        self.cancelled_len.store(c.len(), Ordering::Release);
        was
    }
}

/// Answers one inbound call on its connection. Dropped unanswered, it
/// answers [`Error::ShuttingDown`], so a caller never waits for nothing.
pub struct Responder {
    slot: Option<(u64, Arc<Shared>)>,
    deadline: Instant,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("corr", &self.slot.as_ref().map(|(c, _)| *c))
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Responder {
    /// Counts inbound call `corr` as in flight and returns what answers
    /// it; the caller stops waiting at `deadline`.
    pub(super) fn arrived(corr: u64, shared: &Arc<Shared>, deadline: Instant) -> Responder {
        shared.inbound.count.fetch_add(1, Ordering::Relaxed);
        Responder {
            slot: Some((corr, shared.clone())),
            deadline,
        }
    }

    /// Sends the reply (or the error) to the caller.
    pub fn send(mut self, result: Result<Vec<u8>, Error>) {
        self.answer(result);
    }

    fn answer(&mut self, result: Result<Vec<u8>, Error>) {
        let Some((corr, shared)) = self.slot.take() else {
            return;
        };
        let calls = &shared.inbound;
        // The last inbound call in flight writes its reply itself.
        let alone = calls.in_flight() == 1;
        // The caller is gone (cancelled): nobody reads an answer.
        if !calls.take_cancelled(corr) {
            // Encoded straight into the outbox. A reply too big for a
            // frame is answered with that error instead (`Codec`), so the
            // caller learns why rather than timing out.
            let sent = match result {
                Ok(payload) => shared.enqueue_with(Kind::Reply, corr, alone, |dst| {
                    Reply::encode_into(&payload, dst);
                    Ok(())
                }),
                Err(error) => Err(error),
            };
            if let Err(error) = sent {
                let failure = Failure::from_error(&error);
                let sent = shared.enqueue_with(Kind::Error, corr, alone, |dst| {
                    wire::encode_envelope_into(&failure, dst)
                });
                if let Err(e) = sent {
                    tracing::warn!("cannot encode a response: {e}");
                }
            }
        }
        // Counted as answered once the reply is queued: what waits for
        // `answered` and then closes gracefully still sends it.
        if calls.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            calls.answered.notify_waiters();
        }
    }

    /// Answers [`Error::Timeout`] now; a later `send` goes nowhere.
    pub fn time_out(&mut self) {
        self.answer(Err(Error::timeout()));
    }

    /// When the caller stops waiting (its time left, from arrival); `None`
    /// once answered.
    pub fn deadline(&self) -> Option<Instant> {
        self.slot.as_ref().map(|_| self.deadline)
    }

    /// Whether nobody waits for the answer any more: the connection is
    /// gone, or the caller cancelled the call (a `Cancel` frame).
    pub fn is_closed(&self) -> bool {
        self.slot
            .as_ref()
            .is_none_or(|(corr, shared)| shared.is_closed() || shared.inbound.is_cancelled(*corr))
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.answer(Err(Error::ShuttingDown));
    }
}

/// Acknowledges a peer's `Leave` or `Retire` on its connection (a `Pong`
/// with the same correlation id). Sent on `send` or on drop, whichever
/// comes first; once the connection is sealed, after every call that
/// passed the seal check.
pub struct Ack {
    slot: Option<(u64, Arc<Shared>)>,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ack")
            .field("corr", &self.slot.as_ref().map(|(c, _)| *c))
            .finish()
    }
}

impl Ack {
    /// What acknowledges request `corr` of the peer.
    pub(super) fn new(corr: u64, shared: &Arc<Shared>) -> Ack {
        Ack {
            slot: Some((corr, shared.clone())),
        }
    }

    /// Answers the peer now.
    pub fn send(mut self) {
        self.answer();
    }

    fn answer(&mut self) {
        if let Some((corr, shared)) = self.slot.take() {
            shared.after_sealed_calls(move |shared| {
                // An empty body cannot be too big.
                let _ = shared.enqueue(Kind::Pong, corr, &[], false);
            });
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        self.answer();
    }
}
