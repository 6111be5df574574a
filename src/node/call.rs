//! Calls and casts: the typed front door. A call hands its message to
//! the router (`node::router`, which decides local, forward or reroute)
//! and waits for the reply the router says will come.
//!
//! Allocation: a local call allocates only the reply slot (a tokio
//! oneshot); the message travels inside the actor's envelope enum, by
//! value. A remote call allocates its encoded message and id (kept to
//! route it again if the owner never saw it) and the connection's reply
//! slot; its frame is encoded straight into the connection's outbox and
//! nothing is boxed unless it is routed again. A call arms no timer: its
//! deadline travels with the message and the activation (or connection)
//! holding it enforces it (see `activation::task`).
//!
//! Cooperation: sending a call spends one unit of the tokio task's
//! budget, as tokio's own resources do: a task that loops on calls which
//! fail at once (`NoNodeForCapability`, `NotEnoughMembers`) yields to the
//! runtime every budget's worth instead of holding its worker thread.
//!
//! Cancellation: dropping a [`CallFuture`] abandons the call. If its message
//! has not started yet, the activation skips it. On another node too: the
//! connection sends a `Cancel` frame for it, and the owner's activation
//! skips it if it has not started (a handler already running runs on, and
//! a call another node is forwarding at that moment runs on).

use std::future::{Future, IntoFuture};
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::router::forward::RemoteCall;
use super::router::Sent;
use super::{Node, NodeInner, DEFAULT};
use crate::telemetry::Metrics;
use crate::{Error, Handler, Message};
use std::sync::Arc;

/// Which node a call goes through.
#[derive(Debug, Clone, Copy)]
enum Via<'a> {
    Default,
    Node(&'a Node),
}

/// A call being prepared: await it (`.await`) to send it; `.timeout(d)`
/// sets its deadline first.
#[must_use = "a call does nothing until awaited"]
pub struct Call<'a, A, M> {
    via: Via<'a>,
    id: &'a str,
    msg: M,
    timeout: Option<Duration>,
    _actor: PhantomData<fn() -> A>,
}

impl<A, M> std::fmt::Debug for Call<'_, A, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Call")
            .field("actor", &std::any::type_name::<A>())
            .field("id", &self.id)
            .field("message", &std::any::type_name::<M>())
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl<'a, A: Handler<M>, M: Message> Call<'a, A, M> {
    fn new(via: Via<'a>, id: &'a str, msg: M) -> Self {
        Call {
            via,
            id,
            msg,
            timeout: None,
            _actor: PhantomData,
        }
    }

    /// The call fails with [`Error::Timeout`] if no reply came within `d`.
    /// The deadline travels with the message: if it passes before the
    /// handler starts, the handler is skipped.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeout = Some(d);
        self
    }
}

impl<'a, A: Handler<M>, M: Message> IntoFuture for Call<'a, A, M> {
    type Output = Result<M::Reply, Error>;
    type IntoFuture = CallFuture<'a, A, M>;

    fn into_future(self) -> Self::IntoFuture {
        CallFuture {
            id: self.id,
            via: self.via,
            call: Some(self),
            rx: None,
            remote: None,
            started: None,
            span: tracing::Span::none(),
        }
    }
}

/// The future of a [`Call`]: resolves to the handler's reply or an
/// [`Error`].
///
/// It arms no timer: the deadline travels with the message, and whoever
/// holds the message (the activation) answers [`Error::Timeout`] when it
/// passes.
#[must_use = "futures do nothing unless polled"]
pub struct CallFuture<'a, A, M: Message> {
    /// The actor id, kept to name the call in its error.
    id: &'a str,
    /// The node it goes through (again, if it is routed again).
    via: Via<'a>,
    call: Option<Call<'a, A, M>>,
    rx: Option<oneshot::Receiver<Result<M::Reply, Error>>>,
    /// A call to another node: the wait for its encoded reply (nothing
    /// boxed unless it is routed again).
    remote: Option<RemoteCall>,
    started: Option<Instant>,
    span: tracing::Span,
}

impl<A, M: Message> std::fmt::Debug for CallFuture<'_, A, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallFuture")
            .field("started", &self.started)
            .field("waiting", &(self.rx.is_some() || self.remote.is_some()))
            .finish_non_exhaustive()
    }
}

// No field is pinned: the future only holds a oneshot receiver, which is Unpin.
impl<A, M: Message> Unpin for CallFuture<'_, A, M> {}

impl<A: Handler<M>, M: Message> Future for CallFuture<'_, A, M> {
    type Output = Result<M::Reply, Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let metrics = Metrics::get();
        if this.call.is_some() {
            // Cooperative: sending spends a unit of the task's budget, so a
            // loop of calls that fail at once (no node, refused) still
            // yields to the runtime instead of starving it.
            let coop = ready!(tokio::task::coop::poll_proceed(cx));
            coop.made_progress();
        }
        if let Some(call) = this.call.take() {
            let span = tracing::debug_span!(
                "mesh.call",
                otel.kind = "client",
                actor = A::NAME,
                id = call.id,
                message = M::NAME
            );
            let _enter = span.enter();
            let now = Instant::now();
            this.started = Some(now);
            let sent = with_node(call.via, |node| {
                let timeout = call.timeout.unwrap_or(node.default_timeout);
                // A call back into the chain waiting on this one would
                // deadlock: it fails now (`actor::chain`), wherever the
                // actor lives.
                let caller = crate::actor::chain::Caller(crate::actor::chain::extend(
                    A::NAME,
                    A::REENTRANT,
                    call.id,
                )?);
                node.router().send::<A, M>(
                    call.id,
                    call.msg,
                    (now + timeout, timeout),
                    caller,
                    &span,
                )
            });
            match sent {
                Ok(Sent::Local(rx)) => this.rx = Some(rx),
                Ok(Sent::Remote(fut)) => this.remote = Some(fut),
                Err(e) => {
                    #[cfg(feature = "admin")]
                    record_call(this.via, A::NAME, std::time::Duration::ZERO, false);
                    let result = Err(e.in_call(A::NAME, this.id, M::NAME));
                    metrics.call_done(&result);
                    return Poll::Ready(result);
                }
            }
            drop(_enter);
            this.span = span;
        }
        let _enter = this.span.enter();
        let result = if let Some(remote) = this.remote.as_mut() {
            let via = this.via;
            let bytes = ready!(remote.poll_reply(cx, || with_node(via, |n| Ok(n.clone()))));
            this.remote = None;
            bytes.and_then(|b| crate::wire::decode::<M::Reply>(&b))
        } else {
            let Some(rx) = this.rx.as_mut() else {
                panic!("CallFuture polled after completion");
            };
            let result = match ready!(Pin::new(rx).poll(cx)) {
                Ok(result) => result,
                // The activation dropped the reply slot: the node's runtime went away.
                Err(_) => Err(Error::ShuttingDown),
            };
            this.rx = None;
            result
        };
        if let Some(started) = this.started {
            let took = started.elapsed();
            metrics.call_duration.record(took.as_secs_f64());
            #[cfg(feature = "admin")]
            record_call(this.via, A::NAME, took, result.is_ok());
        }
        let result = result.map_err(|e| e.in_call(A::NAME, this.id, M::NAME));
        metrics.call_done(&result);
        Poll::Ready(result)
    }
}

/// Counts a completed call in its node's per actor type figures (the
/// cluster view, see `admin::stats`).
#[cfg(feature = "admin")]
fn record_call(via: Via<'_>, actor: &'static str, took: std::time::Duration, ok: bool) {
    match via {
        Via::Node(node) => node.inner.ops.calls.record(actor, took, ok),
        Via::Default => {
            if let Some(inner) = &*DEFAULT.load() {
                inner.ops.calls.record(actor, took, ok);
            }
        }
    }
}

fn with_node<T>(
    via: Via<'_>,
    f: impl FnOnce(&Arc<NodeInner>) -> Result<T, Error>,
) -> Result<T, Error> {
    // The `min_members` guard: a node that has not yet seen its cluster
    // neither serves nor routes (`NodeBuilder::min_members`).
    match via {
        Via::Node(node) => {
            node.inner.members.check()?;
            f(&node.inner)
        }
        Via::Default => match &*DEFAULT.load() {
            Some(inner) => {
                inner.members.check()?;
                f(inner)
            }
            None => Err(Error::NotStarted),
        },
    }
}

/// Calls actor `id` of type `A` with `msg` through the default node, and
/// resolves to its reply.
///
/// ```no_run
/// # use mesh::prelude::*;
/// # #[derive(Actor, Default)] #[actor(capability = "counter")] struct Counter { n: i64 }
/// # #[derive(Message, Serialize, Deserialize)] #[message(reply = i64)] struct Increment(i64);
/// # #[mesh::handlers] impl Counter { async fn inc(&mut self, Increment(k): Increment) -> i64 { self.n += k; self.n } }
/// # async fn doc() -> Result<(), mesh::Error> {
/// let n = mesh::call::<Counter, _>("counter_1", Increment(1))
///     .timeout(std::time::Duration::from_millis(200))
///     .await?;
/// # Ok(()) }
/// ```
pub fn call<'a, A: Handler<M>, M: Message>(id: &'a str, msg: M) -> Call<'a, A, M> {
    Call::new(Via::Default, id, msg)
}

/// Sends `msg` to actor `id` of type `A` through the default node without
/// waiting for a reply.
///
/// At most once: `Ok` means the message was enqueued, not that it was
/// handled. The reply and any handler panic are logged and dropped.
pub fn cast<A: Handler<M>, M: Message>(id: &str, msg: M) -> Result<(), Error> {
    cast_via::<A, M>(Via::Default, id, msg)
}

fn cast_via<A: Handler<M>, M: Message>(via: Via<'_>, id: &str, msg: M) -> Result<(), Error> {
    let span = tracing::debug_span!(
        "mesh.cast",
        otel.kind = "producer",
        actor = A::NAME,
        id = id,
        message = M::NAME
    );
    let _enter = span.enter();
    let metrics = Metrics::get();
    let result = with_node(via, |node| {
        // Made by a turn that changed its activation's durable state: the
        // cast waits for that write, and is dropped if it fails
        // (`actor::output`).
        if let Some(gate) = crate::actor::chain::output_gate().filter(|g| g.is_dirty()) {
            let (node, id, span) = (node.clone(), id.to_owned(), span.clone());
            gate.hold(Box::new(crate::actor::output::HeldCast(move || {
                if let Err(e) = node.router().cast::<A, M>(&id, msg, &span) {
                    tracing::debug!(actor = A::NAME, id, "a cast held for a state write: {e}");
                }
            })));
            return Ok(());
        }
        node.router().cast::<A, M>(id, msg, &span)
    });
    match &result {
        Ok(()) => metrics.casts_ok.increment(1),
        Err(_) => metrics.casts_error.increment(1),
    }
    result.map_err(|e| e.in_call(A::NAME, id, M::NAME))
}

impl Node {
    /// Calls actor `id` of type `A` through this node. See [`crate::call`].
    pub fn call<'a, A: Handler<M>, M: Message>(&'a self, id: &'a str, msg: M) -> Call<'a, A, M> {
        Call::new(Via::Node(self), id, msg)
    }

    /// Casts to actor `id` of type `A` through this node. See [`crate::cast`].
    pub fn cast<A: Handler<M>, M: Message>(&self, id: &str, msg: M) -> Result<(), Error> {
        cast_via::<A, M>(Via::Node(self), id, msg)
    }
}
