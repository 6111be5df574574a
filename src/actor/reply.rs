//! The reply slot a call waits on, and the call's deadline.

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::Error;

/// Where a handler's reply goes (the caller's one-shot slot, or nowhere for
/// a cast), and when the caller stops waiting.
///
/// The deadline travels with the message: whoever holds the slot enforces
/// it (the activation, for a local call), so a call arms no timer of its own.
#[derive(Debug)]
pub struct ReplyTo<R> {
    tx: Option<oneshot::Sender<Result<R, Error>>>,
    deadline: Option<Instant>,
    /// What rarely travels with a message, in one pointer so the common
    /// envelope stays small: a timer tick's state, or the call chain.
    extra: Option<std::sync::Arc<Extra>>,
}

/// See [`ReplyTo`]'s `extra`.
#[derive(Debug)]
enum Extra {
    /// A timer's tick: the timer's state (a stale tick is dropped).
    Tick(std::sync::Arc<crate::actor::timer::TickState>),
    /// The chain of calls this one extends (see `actor::chain`).
    Caller(crate::actor::chain::Caller),
}

impl<R> ReplyTo<R> {
    /// A slot for a call expiring at `deadline`, and the receiver the caller
    /// awaits.
    pub(crate) fn call(deadline: Instant) -> (Self, oneshot::Receiver<Result<R, Error>>) {
        let (tx, rx) = oneshot::channel();
        (
            ReplyTo {
                tx: Some(tx),
                deadline: Some(deadline),
                extra: None,
            },
            rx,
        )
    }

    /// No reply: a cast.
    pub(crate) fn cast() -> Self {
        ReplyTo {
            tx: None,
            deadline: None,
            extra: None,
        }
    }

    /// No reply: a timer's tick, dropped unhandled once the timer is gone.
    pub(crate) fn tick(state: std::sync::Arc<crate::actor::timer::TickState>) -> Self {
        ReplyTo {
            tx: None,
            deadline: None,
            extra: Some(std::sync::Arc::new(Extra::Tick(state))),
        }
    }

    /// The same slot, for a call made within `caller`'s chain.
    pub(crate) fn within(mut self, caller: crate::actor::chain::Caller) -> Self {
        if caller.0.is_some() {
            self.extra = Some(std::sync::Arc::new(Extra::Caller(caller)));
        }
        self
    }

    fn tick_state(&self) -> Option<&crate::actor::timer::TickState> {
        match self.extra.as_deref() {
            Some(Extra::Tick(t)) => Some(t),
            _ => None,
        }
    }

    /// The chain this call extends.
    pub fn caller(&self) -> crate::actor::chain::Caller {
        match self.extra.as_deref() {
            Some(Extra::Caller(c)) => c.clone(),
            _ => crate::actor::chain::Caller::default(),
        }
    }

    /// Sends the outcome to the caller, if there is one still waiting.
    pub fn send(self, result: Result<R, Error>) {
        if let Some(t) = self.tick_state() {
            t.handled();
        }
        if let Some(tx) = self.tx {
            let _ = tx.send(result);
        }
    }

    /// Answers the caller with [`Error::Timeout`] now; a later `send` goes
    /// nowhere.
    pub fn time_out(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Err(Error::timeout()));
        }
    }

    /// When the caller stops waiting; `None` for a cast, or once answered.
    pub fn deadline(&self) -> Option<Instant> {
        self.tx.as_ref().and(self.deadline)
    }

    /// Whether a caller was waiting and has given up (or, for a timer's
    /// tick, whether its timer was cancelled or its activation ended).
    pub fn abandoned(&self) -> bool {
        if let Some(t) = self.tick_state() {
            return !t.is_live();
        }
        self.tx.as_ref().is_some_and(|tx| tx.is_closed())
    }

    /// Whether this is a cast's slot.
    pub fn is_cast(&self) -> bool {
        self.tx.is_none()
    }
}
