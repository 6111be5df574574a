//! The output gate of a stateful activation: what a turn that changed its
//! durable state ([`crate::state::State`]) sends out waits until that
//! change is written.
//!
//! Contract:
//! - The gate exists only for an activation that loaded a state (its
//!   [`Ctx`](super::Ctx) has one from then on); others pay one `OnceLock`
//!   read per reply.
//! - A change to the state marks the gate dirty ([`OutputGate::mark`]).
//!   A reply ready while it is dirty is **held** ([`OutputGate::hold`]),
//!   and so is a cast made while it is dirty; the activation's loop saves
//!   at the end of the turn and then releases what was held: sent if the
//!   save succeeded, failed with the save's error otherwise (a held cast
//!   is dropped: it was never sent).
//! - A reply ready while the gate is clean (the turn changed nothing, or
//!   an explicit mid-turn save already wrote it) goes out at once.
//! - Casts are held only when made from the handler's own task (`mesh::cast`,
//!   `node.cast`, a handle's `cast`); a task the handler spawns is outside
//!   the turn. A held cast is sent after the write succeeded (its errors
//!   then are logged, as a cast's are: at most once), dropped if it
//!   failed.
//! - Calls made during the turn go out at once (the handler waits for
//!   them): a handler whose callee must see its change durable saves
//!   first (`State::save`).
//! - Deadlines: while the write runs, a held reply whose caller's
//!   deadline passes is answered `Timeout` at that deadline
//!   ([`OutputGate::saving`]); the write goes on.
//! - Drop: an activation that ends with replies still held (it panicked,
//!   or lost its lease) fails them with the error given to
//!   [`OutputGate::release`]; a gate dropped with replies held (never
//!   released) fails them with `Error::Cancelled`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use tokio::time::Instant;

use crate::util::{lock, BoxFuture};
use crate::Error;

/// Something held until the turn's save: a reply or a cast.
pub(crate) trait Held: Send {
    /// The save ended: `None` if it succeeded, or its error.
    fn release(self: Box<Self>, failed: Option<&Error>);
    /// When its caller stops waiting (`None`: a cast, or answered).
    fn deadline(&self) -> Option<Instant>;
    /// The caller's deadline passed: answers `Timeout` now (a later
    /// release goes nowhere).
    fn time_out(&mut self);
}

/// A cast held until the save: sent by `f` if it succeeded.
pub(crate) struct HeldCast<F>(pub(crate) F);

impl<F: FnOnce() + Send> Held for HeldCast<F> {
    fn release(self: Box<Self>, failed: Option<&Error>) {
        if failed.is_none() {
            (self.0)();
        }
    }

    fn deadline(&self) -> Option<Instant> {
        None
    }

    fn time_out(&mut self) {}
}

/// See the [module docs](self).
#[derive(Default)]
pub(crate) struct OutputGate {
    dirty: AtomicBool,
    held: Mutex<Vec<Box<dyn Held>>>,
}

impl std::fmt::Debug for OutputGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputGate")
            .field("dirty", &self.is_dirty())
            .finish_non_exhaustive()
    }
}

impl OutputGate {
    /// The state changed: what the turn sends from here on is held.
    pub(crate) fn mark(&self) {
        self.dirty.store(true, Ordering::Relaxed);
    }

    /// Whether the state changed since it was last written.
    pub(crate) fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Relaxed)
    }

    /// The state was written (or the change is abandoned).
    pub(crate) fn clean(&self) {
        self.dirty.store(false, Ordering::Relaxed);
    }

    /// Holds `h` until [`OutputGate::release`].
    pub(crate) fn hold(&self, h: Box<dyn Held>) {
        lock(&self.held).push(h);
    }

    /// Releases what was held: `None` sends it, `Some(e)` fails it.
    pub(crate) fn release(&self, failed: Option<&Error>) {
        let held = std::mem::take(&mut *lock(&self.held));
        for h in held {
            h.release(failed);
        }
    }

    /// Runs `save` (the turn's write), answering `Timeout` to each held
    /// reply whose caller's deadline passes meanwhile: a slow store never
    /// keeps a caller past its deadline (the write goes on; its outcome
    /// is unknown to that caller, as a timed-out call's always is).
    pub(crate) async fn saving<T>(&self, save: impl Future<Output = T>) -> T {
        tokio::pin!(save);
        loop {
            let next = lock(&self.held).iter().filter_map(|h| h.deadline()).min();
            let Some(next) = next else {
                return save.await;
            };
            tokio::select! {
                out = &mut save => return out,
                () = tokio::time::sleep_until(next) => {
                    let now = Instant::now();
                    for h in lock(&self.held).iter_mut() {
                        if h.deadline().is_some_and(|d| d <= now) {
                            h.time_out();
                        }
                    }
                }
            }
        }
    }
}

impl Drop for OutputGate {
    fn drop(&mut self) {
        let held = std::mem::take(&mut *lock(&self.held));
        for h in held {
            h.release(Some(&Error::Cancelled));
        }
    }
}

/// A stateful actor's durable state, as the activation's loop sees it:
/// the `#[state]` field (`crate::state::State`) behind
/// [`Actor::__state`](super::Actor::__state).
pub trait Persisted: Send {
    /// Writes the state if it changed since it was last written.
    fn commit(&mut self) -> BoxFuture<'_, Result<(), Error>>;
}
