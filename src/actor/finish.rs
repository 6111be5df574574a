//! Running one handler: catching its panic, answering its caller, and
//! answering `Timeout` at the caller's deadline while the handler runs on.
//! Used by the code `#[mesh::handlers]` generates (through
//! `mesh::__private`).

use std::any::Any;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use super::{BoxError, Ctx, ReplyTo};
use crate::Error;

/// How handling one message ended, for the activation loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The handler returned; the reply was sent.
    Done,
    /// The handler panicked; the caller got [`Error::HandlerPanicked`].
    Panicked,
}

/// Runs a handler future, catching a panic, and answers the caller.
///
/// If the handler does not finish on its first poll and the call has a
/// deadline, a timer is armed for it: at the deadline the caller gets
/// [`Error::Timeout`] while the handler runs on to completion (its state
/// changes stand; its reply is dropped). Handlers that finish without
/// waiting arm nothing.
///
/// A named future rather than an `async fn`: an `async fn` would keep both
/// its argument and its pinned copy, doubling the handler's size in every
/// activation's task.
pub fn finish<'a, R, S, F>(reply: S, ctx: &'a Ctx, fut: F) -> Finish<'a, R, S, F>
where
    S: ReplySlot<R>,
    F: Future<Output = Result<R, Error>>,
{
    Finish {
        fut: CatchUnwind::new(fut),
        reply: Some(reply),
        ctx,
        polled: false,
        timer: None,
        _reply: std::marker::PhantomData,
    }
}

/// Where a handler's outcome goes: a local caller's slot ([`ReplyTo`]) or
/// a peer's connection.
pub trait ReplySlot<R> {
    /// Sends the outcome.
    fn send(self, result: Result<R, Error>);
    /// Answers `Timeout` now; a later `send` goes nowhere.
    fn time_out(&mut self);
    /// When the caller stops waiting; `None` for a cast or once answered.
    fn deadline(&self) -> Option<tokio::time::Instant>;
}

impl<R> ReplySlot<R> for ReplyTo<R> {
    fn send(self, result: Result<R, Error>) {
        ReplyTo::send(self, result);
    }
    fn time_out(&mut self) {
        ReplyTo::time_out(self);
    }
    fn deadline(&self) -> Option<tokio::time::Instant> {
        ReplyTo::deadline(self)
    }
}

pin_project_lite::pin_project! {
    /// The future of [`finish`].
    pub struct Finish<'a, R, S, F> {
        #[pin]
        fut: CatchUnwind<F>,
        reply: Option<S>,
        ctx: &'a Ctx,
        polled: bool,
        // Boxed: only a handler that awaits pays for a timer.
        timer: Option<Pin<Box<tokio::time::Sleep>>>,
        _reply: std::marker::PhantomData<fn(R)>,
    }
}

impl<R, S, F> Future for Finish<'_, R, S, F>
where
    R: Send + 'static,
    S: ReplySlot<R> + Send + 'static,
    F: Future<Output = Result<R, Error>>,
{
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.project();
        let Some(reply) = this.reply.as_mut() else {
            return Poll::Ready(Outcome::Done);
        };
        let result = match this.fut.poll(cx) {
            Poll::Ready(r) => r,
            Poll::Pending => {
                if !std::mem::replace(this.polled, true) {
                    *this.timer = reply
                        .deadline()
                        .map(|d| Box::pin(tokio::time::sleep_until(d)));
                }
                if let Some(sleep) = this.timer {
                    if sleep.as_mut().poll(cx).is_ready() {
                        reply.time_out();
                        *this.timer = None;
                    }
                }
                return Poll::Pending;
            }
        };
        let Some(reply) = this.reply.take() else {
            return Poll::Ready(Outcome::Done);
        };
        Poll::Ready(match result {
            Ok(result) => {
                // A stateful activation whose turn changed its state: the
                // reply waits for the save (`super::output`).
                match this.ctx.output_gate().filter(|g| g.is_dirty()) {
                    Some(gate) => gate.hold(Box::new(HeldReply { reply, result })),
                    None => reply.send(result),
                }
                Outcome::Done
            }
            Err(payload) => {
                let (actor, id) = (this.ctx.actor_name(), this.ctx.id());
                let message = panic_message(&*payload);
                tracing::error!(actor, id, "handler panicked: {message}");
                reply.send(Err(Error::HandlerPanicked {
                    actor: actor.to_owned(),
                    id: id.to_owned(),
                    message,
                }));
                Outcome::Panicked
            }
        })
    }
}

/// A reply held until its turn's write (`super::output`).
struct HeldReply<R, S> {
    reply: S,
    result: Result<R, Error>,
}

impl<R: Send, S: ReplySlot<R> + Send> super::output::Held for HeldReply<R, S> {
    fn release(self: Box<Self>, failed: Option<&Error>) {
        let HeldReply { reply, result } = *self;
        match failed {
            None => reply.send(result),
            Some(e) => reply.send(Err(e.clone())),
        }
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.reply.deadline()
    }

    fn time_out(&mut self) {
        self.reply.time_out();
    }
}

/// An activation function `#[actor(activate = path)]` may name: an async
/// `fn(&str) -> Result<A, E>` or `fn(&str, &Ctx) -> Result<A, E>`, with
/// `E: Into<BoxError>`. `Marker` tells the two apart.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot activate this actor",
    label = "not an activation function",
    note = "expected `async fn(id: &str) -> Result<Self, E>` or `async fn(id: &str, ctx: &Ctx) -> Result<Self, E>`, with `E: Into<mesh::BoxError>` (a `String`, a `&str` or any error type)"
)]
pub trait Activate<'a, A, Marker>: Send + 'a {
    /// Starts the activation of `id`.
    fn activate(self, id: &'a str, ctx: &'a Ctx) -> ActivateFuture<'a, A>;
}

/// The future of an [`Activate`]: boxed once per activation.
pub type ActivateFuture<'a, A> = Pin<Box<dyn Future<Output = Result<A, BoxError>> + Send + 'a>>;

impl<'a, A, F, Fut, E> Activate<'a, A, (&'a str,)> for F
where
    F: FnOnce(&'a str) -> Fut + Send + 'a,
    Fut: Future<Output = Result<A, E>> + Send + 'a,
    E: Into<BoxError>,
{
    fn activate(self, id: &'a str, _ctx: &'a Ctx) -> ActivateFuture<'a, A> {
        Box::pin(async move { self(id).await.map_err(Into::into) })
    }
}

impl<'a, A, F, Fut, E> Activate<'a, A, (&'a str, &'a Ctx)> for F
where
    F: FnOnce(&'a str, &'a Ctx) -> Fut + Send + 'a,
    Fut: Future<Output = Result<A, E>> + Send + 'a,
    E: Into<BoxError>,
{
    fn activate(self, id: &'a str, ctx: &'a Ctx) -> ActivateFuture<'a, A> {
        Box::pin(async move { self(id, ctx).await.map_err(Into::into) })
    }
}

/// Runs an activation function (see [`Activate`]).
pub fn activate_with<'a, A, M, F: Activate<'a, A, M>>(
    f: F,
    id: &'a str,
    ctx: &'a Ctx,
) -> ActivateFuture<'a, A> {
    f.activate(id, ctx)
}

/// A deactivation hook `#[actor(on_deactivate = path)]` may name: an async
/// `fn(&mut self, &Ctx)` or `fn(&mut self)`, returning nothing. `Marker`
/// tells the two apart.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be this actor's `on_deactivate` hook",
    label = "not a deactivation hook",
    note = "expected `async fn(&mut self, ctx: &Ctx)` or `async fn(&mut self)`, returning nothing"
)]
pub trait Deactivate<'s, 'c, A: 's, Marker>: Send {
    /// The hook's future.
    type Fut: Future<Output = ()> + Send;
    /// Runs the hook.
    fn deactivate(self, actor: &'s mut A, ctx: &'c Ctx) -> Self::Fut;
}

impl<'s, 'c, A: 's, F, Fut> Deactivate<'s, 'c, A, (&'s mut A, &'c Ctx)> for F
where
    F: FnOnce(&'s mut A, &'c Ctx) -> Fut + Send,
    Fut: Future<Output = ()> + Send,
{
    type Fut = Fut;
    fn deactivate(self, actor: &'s mut A, ctx: &'c Ctx) -> Fut {
        self(actor, ctx)
    }
}

impl<'s, 'c, A: 's, F, Fut> Deactivate<'s, 'c, A, (&'s mut A,)> for F
where
    F: FnOnce(&'s mut A) -> Fut + Send,
    Fut: Future<Output = ()> + Send,
{
    type Fut = Fut;
    fn deactivate(self, actor: &'s mut A, _ctx: &'c Ctx) -> Fut {
        self(actor)
    }
}

/// Runs `#[actor(on_deactivate = f)]`, checking its signature.
pub fn deactivate_with<'s, 'c, A: 's, M, F: Deactivate<'s, 'c, A, M>>(
    f: F,
    actor: &'s mut A,
    ctx: &'c Ctx,
) -> F::Fut {
    f.deactivate(actor, ctx)
}

/// `Default` activation, for actors without `#[actor(activate = ...)]`.
pub fn activate_default<A: Default + Send>() -> impl Future<Output = Result<A, BoxError>> + Send {
    std::future::ready(Ok(A::default()))
}

/// The text of a panic payload.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

pin_project_lite::pin_project! {
    /// A future that turns a panic while polling into `Err(payload)`.
    pub struct CatchUnwind<F> {
        #[pin]
        fut: F,
    }
}

impl<F> CatchUnwind<F> {
    /// Wraps `fut`.
    pub fn new(fut: F) -> Self {
        CatchUnwind { fut }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let fut = self.project().fut;
        // The future is not polled again after a panic, so no broken
        // invariant inside it can be observed: asserting unwind safety is sound.
        match catch_unwind(AssertUnwindSafe(|| fut.poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(payload)),
        }
    }
}
