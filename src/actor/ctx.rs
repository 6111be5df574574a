//! The context a handler sees.
//!
//! [`Ctx`] is defined here with its node opaque (`host`): the node's module
//! gives it the methods that need the node ([`Ctx::node`], [`Ctx::get`],
//! [`Ctx::fence`], and the [`NodeRef`] it holds), so that this layer,
//! which the node builds on, does not import the node back. Cost: one
//! type check when a handler asks for its node. The `NodeRef` is one per
//! node, shared by its activations: a new activation takes a reference
//! count, not an allocation.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::output::OutputGate;
use super::timer::{Inbox, Timer, TimerError, Timers};
use crate::{Handler, Message};

/// What a handler (or a lifecycle hook) knows about its activation.
///
/// A handler takes it as an optional last parameter: `ctx: &Ctx`.
pub struct Ctx {
    id: Arc<str>,
    actor: &'static str,
    /// The node running the activation (a `crate::Node`, opaque here).
    pub(crate) host: Arc<NodeRef>,
    deactivate: AtomicBool,
    /// Strong mode: the fencing token this activation entered with (0:
    /// none, or eventual mode).
    token: std::sync::atomic::AtomicU64,
    /// The shard of `id` (strong mode's lease key, with the capability).
    shard: u16,
    /// Created with the first timer: most actors set none.
    timers: std::sync::OnceLock<std::sync::Arc<Timers>>,
    /// The activation's own mailbox, for its timers to deliver to.
    mailbox: std::sync::Weak<dyn Inbox>,
    /// Opened when the activation loads a durable state (see
    /// [`super::output`]).
    output: std::sync::OnceLock<Arc<OutputGate>>,
}

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx")
            .field("id", &self.id)
            .field("actor", &self.actor)
            .finish_non_exhaustive()
    }
}

/// The node a [`Ctx`] hands its handlers, opaque to this layer (the
/// node's module builds it, holding a `crate::Node`, and reads it back).
pub(crate) struct NodeRef(pub(crate) Box<dyn std::any::Any + Send + Sync>);

impl std::fmt::Debug for NodeRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NodeRef")
    }
}

impl Ctx {
    /// A context whose node is `host` (the node's module builds it: it is
    /// the one that knows what a node is).
    pub(crate) fn with_host(
        id: Arc<str>,
        actor: &'static str,
        host: Arc<NodeRef>,
        mailbox: std::sync::Weak<dyn Inbox>,
    ) -> Self {
        Ctx {
            shard: crate::ring::shard(&id),
            id,
            actor,
            host,
            deactivate: AtomicBool::new(false),
            token: std::sync::atomic::AtomicU64::new(0),
            timers: std::sync::OnceLock::new(),
            mailbox,
            output: std::sync::OnceLock::new(),
        }
    }

    /// The lease this activation holds: its shard and token (0: none).
    pub(crate) fn lease(&self) -> (u16, u64) {
        (
            self.shard,
            self.token.load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    pub(crate) fn set_token(&self, token: u64) {
        self.token
            .store(token, std::sync::atomic::Ordering::Relaxed);
    }

    /// Starts timer `key`: `msg` is delivered to this activation when
    /// `when` says (once or periodically), as a message in turn with the
    /// others. The same key replaces the timer of that key. Timers end with
    /// the activation (see [`crate::timer`]); by default their ticks do not
    /// keep the actor from being passivated.
    ///
    /// ```no_run
    /// # use mesh::prelude::*;
    /// # use mesh::timer::Timer;
    /// # use std::time::Duration;
    /// #[derive(Actor, Default)]
    /// #[actor(capability = "room")]
    /// struct Room { dirty: bool }
    ///
    /// #[derive(Message, Clone, Serialize, Deserialize)]
    /// struct Flush;
    ///
    /// #[mesh::handlers]
    /// impl Room {
    ///     async fn flush(&mut self, _: Flush, ctx: &Ctx) {
    ///         if !std::mem::take(&mut self.dirty) {
    ///             ctx.cancel_timer("flush");
    ///         }
    ///     }
    /// }
    /// # fn start(ctx: &Ctx) -> Result<(), mesh::timer::TimerError> {
    /// ctx.timer::<Room, _>("flush", Timer::every(Duration::from_secs(5)), Flush)?;
    /// # Ok(()) }
    /// ```
    ///
    /// Fails if `A` is not this activation's actor type.
    pub fn timer<A, M>(&self, key: impl Into<String>, when: Timer, msg: M) -> Result<(), TimerError>
    where
        A: Handler<M>,
        M: Message + Clone,
    {
        let Some(mb) = self.mailbox.upgrade() else {
            return Err(TimerError::Ended);
        };
        if mb.actor() != std::any::TypeId::of::<A>() {
            return Err(TimerError::WrongActor {
                actor: self.actor,
                wanted: A::NAME,
            });
        }
        self.timers
            .get_or_init(|| {
                let timers = std::sync::Arc::<Timers>::default();
                mb.attach_timers(std::sync::Arc::downgrade(&timers));
                timers
            })
            .start::<A, M>(
                key.into(),
                when,
                msg,
                std::sync::Arc::downgrade(&mb),
                self.id.clone(),
            );
        Ok(())
    }

    /// Cancels timer `key`; a tick of it still queued is dropped. Returns
    /// whether there was one.
    pub fn cancel_timer(&self, key: &str) -> bool {
        self.timers.get().is_some_and(|t| t.cancel(key))
    }

    /// Cancels every timer (the activation ends).
    pub(crate) fn end_timers(&self) {
        if let Some(t) = self.timers.get() {
            t.cancel_all();
        }
    }

    /// The actor's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    pub(crate) fn id_arc(&self) -> Arc<str> {
        self.id.clone()
    }

    /// The actor type's name.
    pub fn actor_name(&self) -> &'static str {
        self.actor
    }

    /// Asks for this activation to be deactivated once the current message
    /// is handled: its `on_deactivate` hook runs, and the next message
    /// activates a fresh one.
    pub fn deactivate(&self) {
        self.deactivate.store(true, Ordering::Relaxed);
    }

    /// Whether `deactivate` was asked for since the last time, clearing
    /// it. Read first: the serve loop asks after every message and the
    /// answer is almost always no, so a plain load saves a locked
    /// read-modify-write per message (it showed in the local throughput
    /// profile; the throughput gain is within that bench's noise). The
    /// handler that sets it runs on this activation's task, so the load
    /// sees its store.
    pub(crate) fn take_deactivate(&self) -> bool {
        self.deactivate.load(Ordering::Relaxed) && self.deactivate.swap(false, Ordering::Relaxed)
    }

    /// The output gate, if this activation loaded a durable state.
    pub(crate) fn output_gate(&self) -> Option<&Arc<OutputGate>> {
        self.output.get()
    }

    /// The output gate, opened now if it was not (a state is loading).
    pub(crate) fn open_output_gate(&self) -> Arc<OutputGate> {
        self.output.get_or_init(Arc::default).clone()
    }
}

/// A value an actor asked for with [`Ctx::get`] was not provided to its
/// node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no {type_name} was provided to this node: give it with NodeBuilder::provide(..)")]
pub struct MissingDependency {
    /// The type asked for.
    pub type_name: &'static str,
}
