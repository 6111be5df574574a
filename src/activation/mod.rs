//! The local activation table: at most one activation per (actor type, id)
//! on this node, its mailbox loop, and idle passivation.
//!
//! Lifecycle of one activation (one tokio task):
//!
//! 1. The first message for an id inserts a mailbox into the table (under
//!    the table's shard lock, so concurrent first calls agree on one) and
//!    spawns the task; later messages queue behind it while it activates.
//! 2. The task runs [`Actor::activate`]. On error every queued caller gets
//!    [`Error::ActivationFailed`]; a later message starts a new attempt.
//! 3. Messages are handled one at a time, in arrival order. A panic answers
//!    that caller with [`Error::HandlerPanicked`] and ends the activation
//!    (without `on_deactivate`); queued messages stay queued and are served
//!    by a fresh activation.
//! 4. After `IDLE_TIMEOUT` without messages (or `ctx.deactivate()`, or node
//!    shutdown) `on_deactivate` runs **while the mailbox is still in the
//!    table**, so a new activation for the same id cannot overlap it;
//!    messages arriving meanwhile are served by activating again in the same
//!    task. Only an empty mailbox is closed and removed, atomically.
//!
//! Callers of a closed mailbox never exist: closing happens under the
//! table's write lock, and producers push while holding its read lock.

mod lease;
mod mailbox;
mod task;

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};

use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use tokio::sync::Notify;

pub(crate) use mailbox::{Mailbox, Push};

use crate::actor::timer::{Delivery, Inbox};
use crate::actor::{Ctx, NodeRef, ReplyTo};
use crate::history::Phase;
use crate::lease::gate::Gate;
use crate::{Error, Handlers};

/// What an activation needs from the node that hosts it, beyond what
/// [`Shared`] keeps (the gate, whether there is a history, the node's
/// [`NodeRef`]). The node implements it; nothing in this module names the
/// node. The tables hold it weakly and upgrade it only for what is rare
/// (a history, strong mode's handoffs, the first activation).
pub(crate) trait Host: Send + Sync + 'static {
    /// The node as the contexts of its activations hold it (built once
    /// and shared: see [`Shared`]).
    fn node_ref(self: Arc<Self>) -> Arc<NodeRef>;
    /// Records an activation's start, dispatch or end, if the node keeps a
    /// history.
    fn record(&self, phase: Phase, actor: &'static str, id: &str, token: u64);
    /// Strong mode: whether the node holds, or is about to lock, shard `s`
    /// of the actor type keyed `key` of capability `capability`.
    fn will_hold(&self, key: u64, capability: u64, s: u16) -> bool;
    /// Strong mode: routes again an encoded call queued for an activation
    /// this node will not hold, to the owner the ring names now.
    fn reroute(self: Arc<Self>, id: &str, call: WireCall);
}

/// A message in an activation's mailbox.
pub(crate) enum Envelope<A: Handlers> {
    /// A typed message from this process.
    Local(A::Envelope),
    /// An encoded message, dispatched through the wire table.
    Wire(Box<WireCall>),
}

/// An encoded call: tag, body and where the encoded reply goes.
pub(crate) struct WireCall {
    pub(crate) tag: u64,
    pub(crate) body: Vec<u8>,
    pub(crate) reply: WireReply,
    /// The span the handler runs in (joins the caller's trace).
    pub(crate) span: tracing::Span,
    /// The chain of calls this one extends (from a peer, or a local caller
    /// whose call went through the wire path).
    pub(crate) caller: crate::actor::chain::Caller,
}

/// Where an encoded reply goes: a caller in this process, or straight into
/// the connection of the peer that asked.
pub(crate) enum WireReply {
    Local(ReplyTo<Vec<u8>>),
    Peer(crate::transport::Responder),
}

impl crate::actor::finish::ReplySlot<Vec<u8>> for WireReply {
    fn send(self, result: Result<Vec<u8>, Error>) {
        match self {
            WireReply::Local(r) => r.send(result),
            WireReply::Peer(r) => r.send(result),
        }
    }

    fn time_out(&mut self) {
        match self {
            WireReply::Local(r) => r.time_out(),
            WireReply::Peer(r) => r.time_out(),
        }
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        match self {
            WireReply::Local(r) => r.deadline(),
            WireReply::Peer(r) => r.deadline(),
        }
    }
}

impl WireReply {
    fn abandoned(&self) -> bool {
        match self {
            WireReply::Local(r) => r.abandoned(),
            WireReply::Peer(r) => r.is_closed(),
        }
    }
}

impl<A: Handlers> Envelope<A> {
    /// When the caller stops waiting (`None` for a cast).
    fn deadline(&self) -> Option<tokio::time::Instant> {
        match self {
            Envelope::Local(env) => A::__deadline(env),
            Envelope::Wire(call) => crate::actor::finish::ReplySlot::deadline(&call.reply),
        }
    }

    /// Whether this call's chain passes through actor `A` `id` (a call a
    /// reentrant activation serves interleaved).
    fn in_chain_of(&self, id: &str) -> bool {
        match self {
            Envelope::Local(env) => A::__caller(env).passes_through(A::NAME, id),
            Envelope::Wire(call) => call.caller.passes_through(A::NAME, id),
        }
    }

    /// Whether the caller dropped the call.
    fn abandoned(&self) -> bool {
        match self {
            Envelope::Local(env) => A::__abandoned(env),
            Envelope::Wire(call) => call.reply.abandoned(),
        }
    }

    fn fail(self, err: Error) {
        match self {
            Envelope::Local(env) => A::__fail(env, err),
            Envelope::Wire(call) => crate::actor::finish::ReplySlot::send(call.reply, Err(err)),
        }
    }
}

/// Node-wide state the activations of every actor type share.
///
/// It holds the node's [`NodeRef`] (which every activation's `Ctx` shares)
/// strongly once the first activation made it: a cycle with the node,
/// which owns this, broken by [`Shared::begin_shutdown`], which every way
/// a node ends goes through (`shutdown`, the last handle dropped, a
/// refused start). After that no activation starts, so none re-makes it.
#[derive(Debug)]
pub(crate) struct Shared {
    shutting_down: AtomicBool,
    /// Notified when an activation leaves its table during shutdown.
    retired: Notify,
    runtime: tokio::runtime::Handle,
    /// The node, which owns this (so weak).
    host: Weak<dyn Host>,
    /// The node as its activations' contexts hold it (see above).
    node: arc_swap::ArcSwapOption<NodeRef>,
    /// Strong mode: the gate activations pass (see [`crate::lease`]).
    gate: Option<Arc<Gate>>,
    /// Whether the node keeps a history (one branch per message).
    history: bool,
}

impl std::fmt::Debug for dyn Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Host")
    }
}

impl Shared {
    pub(crate) fn new(
        runtime: tokio::runtime::Handle,
        host: Weak<dyn Host>,
        gate: Option<Arc<Gate>>,
        history: bool,
    ) -> Self {
        Shared {
            shutting_down: AtomicBool::new(false),
            retired: Notify::new(),
            runtime,
            host,
            node: arc_swap::ArcSwapOption::empty(),
            gate,
            history,
        }
    }

    /// The node for a new activation's `Ctx`; `None` once it is shutting
    /// down or gone. One reference count on the hot path; the first
    /// activation makes it (a race makes two, both valid, one kept).
    fn node_ref(&self) -> Option<Arc<NodeRef>> {
        if let Some(node) = self.node.load_full() {
            return Some(node);
        }
        if self.is_shutting_down() {
            return None;
        }
        let node = self.host.upgrade()?.node_ref();
        self.node.store(Some(node.clone()));
        // `begin_shutdown` may have cleared it just before the store: do
        // not leave the cycle behind.
        if self.is_shutting_down() {
            self.node.store(None);
        }
        Some(node)
    }

    /// Strong mode: the gate activations pass.
    pub(crate) fn gate(&self) -> Option<&Gate> {
        self.gate.as_deref()
    }

    /// Whether the node keeps a history.
    pub(crate) fn has_history(&self) -> bool {
        self.history
    }

    /// Records an activation's start, dispatch or end, if the node keeps a
    /// history (and is still there).
    pub(crate) fn record(&self, phase: Phase, actor: &'static str, id: &str, token: u64) {
        if self.history {
            if let Some(host) = self.host.upgrade() {
                host.record(phase, actor, id, token);
            }
        }
    }

    /// Strong mode: see [`Host::will_hold`] (false once the node is gone).
    pub(crate) fn will_hold(&self, key: u64, capability: u64, s: u16) -> bool {
        self.host
            .upgrade()
            .is_some_and(|h| h.will_hold(key, capability, s))
    }

    /// Strong mode: see [`Host::reroute`] (the caller is told the node is
    /// going away once it is gone).
    pub(crate) fn reroute(&self, id: &str, call: WireCall) {
        match self.host.upgrade() {
            Some(host) => host.reroute(id, call),
            None => crate::actor::finish::ReplySlot::send(call.reply, Err(Error::ShuttingDown)),
        }
    }

    pub(crate) fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// From now on no activation starts; breaks the cycle with the node
    /// (see the type's docs).
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.node.store(None);
    }

    /// Waits until `empty()` holds, re-checking whenever an activation
    /// retires during shutdown.
    pub(crate) async fn drained(&self, empty: impl Fn() -> bool) {
        loop {
            let notified = self.retired.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if empty() {
                return;
            }
            notified.await;
        }
    }

    /// Wakes `drained` waiters (a leaving node drains before it shuts
    /// down; with nobody waiting this costs a few atomics).
    fn on_retired(&self) {
        self.retired.notify_waiters();
    }
}

type Table<A> = DashMap<Arc<str>, Arc<Mailbox<Envelope<A>>>, foldhash::fast::RandomState>;

/// The activations of actor type `A` on one node.
pub(crate) struct Activations<A: Handlers> {
    table: Table<A>,
    shared: Arc<Shared>,
    /// Itself, for the tasks it spawns (each holds its table while it runs).
    me: Weak<Activations<A>>,
}

impl<A: Handlers> Activations<A> {
    pub(crate) fn new(shared: Arc<Shared>) -> Arc<Self> {
        Arc::new_cyclic(|me| Activations {
            table: DashMap::with_hasher_and_shard_amount(Default::default(), 128),
            shared,
            me: me.clone(),
        })
    }

    /// Delivers `env` to the activation of `id`, activating it if needed.
    /// Never waits: a full mailbox refuses at once.
    pub(crate) fn send(&self, id: &str, env: Envelope<A>) -> Result<(), Error> {
        if self.shared.is_shutting_down() {
            env.fail(Error::ShuttingDown);
            return Err(Error::ShuttingDown);
        }
        // Fast path: the activation exists. Pushing under the read lock is
        // what guarantees the mailbox is open (see the module docs).
        let env = match self.table.get(id) {
            Some(mb) => return self.push(&mb, id, env),
            None => env,
        };
        match self.table.entry(Arc::from(id)) {
            Entry::Occupied(o) => self.push(o.get(), id, env),
            Entry::Vacant(v) => {
                let mb = Arc::new(Mailbox::new(A::MAILBOX_CAPACITY));
                let deadline = env.deadline();
                if let Err(Push::Full(env) | Push::Closed(env)) = mb.push(env, deadline) {
                    // Capacity is at least one and the mailbox is new.
                    env.fail(Error::ShuttingDown);
                }
                let id = v.key().clone();
                v.insert(mb.clone());
                // The context is built here, not in the task: held across
                // every await, inline it would grow the task's future.
                match (self.shared.node_ref(), self.me.upgrade()) {
                    (Some(node), Some(me)) => {
                        let inbox: Arc<dyn Inbox> = mb.clone();
                        let ctx = Box::new(Ctx::with_host(
                            id.clone(),
                            A::NAME,
                            node,
                            Arc::downgrade(&inbox),
                        ));
                        drop(inbox);
                        self.shared.runtime.spawn(task::run::<A>(ctx, me, mb, id));
                    }
                    // The node is going away (it holds the table): nobody
                    // can be waiting on a live table.
                    _ => {
                        for env in mb.close() {
                            env.fail(Error::ShuttingDown);
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn push(&self, mb: &Mailbox<Envelope<A>>, id: &str, env: Envelope<A>) -> Result<(), Error> {
        let deadline = env.deadline();
        // The refused envelope is answered too: a peer waits on it.
        match mb.push(env, deadline) {
            Ok(()) => Ok(()),
            Err(Push::Full(env)) => {
                let err = Error::MailboxFull {
                    actor: A::NAME.to_owned(),
                    id: id.to_owned(),
                };
                env.fail(err.clone());
                Err(err)
            }
            // Unreachable by the table's locking discipline; answer as if
            // the node were going away rather than lose the message silently.
            Err(Push::Closed(env)) => {
                env.fail(Error::ShuttingDown);
                Err(Error::ShuttingDown)
            }
        }
    }

    /// Removes `mb` from the table if it is still the activation of `id` and
    /// its queue is empty, closing it in the same step.
    fn retire_if_empty(&self, id: &str, mb: &Arc<Mailbox<Envelope<A>>>) -> bool {
        let retired = self
            .table
            .remove_if(id, |_, cur| Arc::ptr_eq(cur, mb) && cur.close_if_empty())
            .is_some();
        if retired {
            self.shared.on_retired();
        }
        retired
    }

    /// Removes and closes `mb` whatever it holds; returns what it held.
    fn retire(&self, id: &str, mb: &Arc<Mailbox<Envelope<A>>>) -> VecDeque<Envelope<A>> {
        let mut left = VecDeque::new();
        self.table.remove_if(id, |_, cur| {
            if Arc::ptr_eq(cur, mb) {
                left = cur.close();
                true
            } else {
                false
            }
        });
        self.shared.on_retired();
        left
    }

    /// Starts the idle sweeper of this actor type (if it passivates).
    pub(crate) fn start_sweeper(&self) {
        if A::IDLE_TIMEOUT.is_some() {
            self.shared
                .runtime
                .spawn(task::sweep_idle::<A>(self.me.clone()));
        }
    }

    /// Number of activations (including ones activating or deactivating).
    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }
}

/// What the node keeps per actor type, without knowing the type.
pub(crate) trait AnyActivations: Send + Sync + 'static {
    fn as_any(&self) -> &dyn Any;
    /// Delivers an encoded call; the reply comes on the returned receiver.
    fn send_wire(&self, id: &str, call: WireCall) -> Result<(), Error>;
    /// Asks every activation to finish its queue and stop.
    fn stop_all(&self);
    /// Starts background work (the idle sweeper).
    fn start(&self);
    /// Deactivates (after their queues) the activations whose id
    /// `is_local` says this node no longer owns; returns how many.
    fn drain_moved(&self, is_local: &dyn Fn(&str) -> bool) -> usize;
    /// Number of activations.
    fn count(&self) -> usize;
    /// The actor type's name (the admin endpoint's views).
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    fn actor_name(&self) -> &'static str;
    /// Activation `id` as the admin views show it, if it is active here.
    #[cfg(feature = "admin")]
    fn inspect(&self, id: &str) -> Option<mailbox::Inspected>;
    /// The ids active here after `after` in byte order, at most `limit`,
    /// and whether there are more.
    #[cfg(feature = "admin")]
    fn ids(&self, after: &str, limit: usize) -> (Vec<String>, bool);
}

impl<A: Handlers> AnyActivations for Activations<A> {
    fn as_any(&self) -> &dyn Any {
        self
    }

    fn send_wire(&self, id: &str, call: WireCall) -> Result<(), Error> {
        self.send(id, Envelope::Wire(Box::new(call)))
    }

    fn stop_all(&self) {
        for entry in self.table.iter() {
            entry.value().stop();
        }
    }

    fn count(&self) -> usize {
        self.len()
    }

    fn actor_name(&self) -> &'static str {
        <A as crate::Actor>::NAME
    }

    #[cfg(feature = "admin")]
    fn inspect(&self, id: &str) -> Option<mailbox::Inspected> {
        // Cloned out of the table first: no table lock held while the
        // mailbox's is taken.
        let mb = self.table.get(id).map(|e| e.value().clone())?;
        Some(mb.inspect())
    }

    #[cfg(feature = "admin")]
    fn ids(&self, after: &str, limit: usize) -> (Vec<String>, bool) {
        // The `limit + 1` smallest ids after the cursor, in a max-heap:
        // memory for a page, not for the table (which is read one shard
        // lock at a time, as the idle sweeper does).
        let mut heap = std::collections::BinaryHeap::<Arc<str>>::with_capacity(limit + 1);
        for e in self.table.iter() {
            let id = e.key();
            if &**id <= after {
                continue;
            }
            if heap.len() <= limit {
                heap.push(id.clone());
            } else if heap.peek().is_some_and(|top| id < top) {
                heap.pop();
                heap.push(id.clone());
            }
        }
        let mut ids = heap.into_sorted_vec();
        let more = ids.len() > limit;
        ids.truncate(limit);
        (ids.iter().map(|i| i.to_string()).collect(), more)
    }

    fn start(&self) {
        self.start_sweeper();
    }

    fn drain_moved(&self, is_local: &dyn Fn(&str) -> bool) -> usize {
        let mut moved = 0;
        for entry in self.table.iter() {
            if !is_local(entry.key()) {
                entry.value().mark_moved();
                moved += 1;
            }
        }
        moved
    }
}

/// A timer's ticks go into the mailbox of the activation that set it.
impl<A: Handlers> Inbox for Mailbox<Envelope<A>> {
    fn actor(&self) -> std::any::TypeId {
        std::any::TypeId::of::<A>()
    }

    fn attach_timers(&self, timers: Weak<crate::actor::timer::Timers>) {
        Mailbox::attach_timers(self, timers);
    }

    fn deliver(&self, envelope: Box<dyn Any + Send>, keep_alive: bool) -> Delivery {
        // `Ctx::timer` checked the type against `actor()` before it armed
        // the timer: another type cannot come.
        let Ok(env) = envelope.downcast::<A::Envelope>() else {
            return Delivery::Closed;
        };
        let env = Envelope::Local(*env);
        let pushed = if keep_alive {
            self.push(env, None)
        } else {
            self.push_quiet(env)
        };
        match pushed {
            Ok(()) => Delivery::Queued,
            Err(Push::Full(_)) => Delivery::Full,
            Err(Push::Closed(_)) => Delivery::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    //! Sizes of what every activation carries, and the node reference
    //! they share.
    use crate::prelude::*;

    #[derive(Actor, Default)]
    #[actor(capability = "c")]
    struct C(i64);
    #[derive(Message, Serialize, Deserialize)]
    #[message(reply = i64)]
    struct Inc(i64);
    #[crate::handlers]
    impl C {
        async fn inc(&mut self, Inc(n): Inc) -> i64 {
            self.0 += n;
            self.0
        }
    }

    /// A node hosting `C`, not the process's default.
    async fn node() -> Node {
        Node::builder()
            .capabilities(["c"])
            .actor::<C>()
            .default_node(false)
            .start()
            .await
            .unwrap()
    }

    /// Every idle activation holds its task's future: keep it small. The
    /// memory benchmark measures the whole; this catches a regression early.
    #[tokio::test]
    async fn activation_futures_stay_small() {
        let node = node().await;
        use std::sync::Arc;
        let host: Arc<dyn super::Host> = node.inner_arc().clone();
        let shared = Arc::new(super::Shared::new(
            tokio::runtime::Handle::current(),
            Arc::downgrade(&host),
            None,
            false,
        ));
        let mb = Arc::new(super::Mailbox::new(1));
        let inbox: Arc<dyn super::Inbox> = mb.clone();
        let ctx = |inbox: &Arc<dyn super::Inbox>| {
            crate::Ctx::with_host(
                "x".into(),
                "C",
                host.clone().node_ref(),
                Arc::downgrade(inbox),
            )
        };
        let f = super::task::run::<C>(
            Box::new(ctx(&inbox)),
            super::Activations::<C>::new(shared.clone()),
            mb,
            "x".into(),
        );
        eprintln!("run future: {} bytes", std::mem::size_of_val(&f));
        eprintln!(
            "envelope: {} bytes",
            std::mem::size_of::<super::Envelope<C>>()
        );
        eprintln!(
            "mailbox: {} bytes",
            std::mem::size_of::<super::Mailbox<super::Envelope<C>>>()
        );
        let ctx = ctx(&inbox);
        let here = super::task::Here {
            ctx: &ctx,
            shared: &shared,
        };
        let ctx = here.ctx;
        let mut c = C(0);
        let (r, _rx) = crate::actor::ReplyTo::call(tokio::time::Instant::now());
        let env = <C as crate::Handler<Inc>>::__wrap(Inc(1), r);
        let h = crate::Handlers::__handle(&mut c, env, ctx);
        eprintln!("__handle future: {} bytes", std::mem::size_of_val(&h));
        drop(h);
        let mb = super::Mailbox::<super::Envelope<C>>::new(1);
        let mut batch = std::collections::VecDeque::<super::Envelope<C>>::new();
        let s = super::task::serve_for_size(&mut c, &mb, &here, &mut batch);
        eprintln!("serve future: {} bytes", std::mem::size_of_val(&s));
        assert!(std::mem::size_of_val(&f) <= 768, "the activation task grew");
        assert!(
            std::mem::size_of::<super::Envelope<C>>() <= 48,
            "the envelope grew"
        );
    }

    /// The activations' shared `NodeRef` is a cycle with the node while it
    /// runs; every way a node ends breaks it, so the node is freed.
    #[tokio::test]
    async fn a_node_is_freed_after_shutdown_and_after_its_last_handle_drops() {
        for shutdown in [true, false] {
            let node = node().await;
            for i in 0..10 {
                node.call::<C, _>(&format!("x{i}"), Inc(1)).await.unwrap();
            }
            let weak = std::sync::Arc::downgrade(node.inner_arc());
            if shutdown {
                node.shutdown().await.unwrap();
            }
            drop(node);
            // No event says "freed": look until it is, with a deadline.
            let t0 = std::time::Instant::now();
            while weak.strong_count() > 0 {
                assert!(
                    t0.elapsed() < std::time::Duration::from_secs(10),
                    "the node was not freed (shutdown first: {shutdown})"
                );
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }
    }
}
