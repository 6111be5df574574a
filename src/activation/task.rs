//! The task behind one activation: activate, serve, deactivate, repeat while
//! messages keep coming, then leave the table.
//!
//! Serving is one loop ([`serve_turns`]) over a turn strategy ([`Turns`]):
//! [`Sequential`] runs one handler at a time on `&mut A`; [`Interleaved`]
//! (reentrant actors) starts a turn per message and interleaves the calls
//! of its chain on `&A`. The loop owns what both share: deadlines and
//! abandoned calls, the lease check before each message (strong mode, see
//! [`super::lease`]), the history, and when the activation ends.
//!
//! Deadlines: calls arm no timer. This task enforces the deadlines of the
//! messages it holds: a message found expired when its batch is taken is
//! answered with [`Error::Timeout`] and skipped; while the task waits on
//! user code (an activation, a handler that awaits, a hook), it arms one
//! timer for the earliest deadline in its mailbox ([`watch_queue`]), and the
//! handler's own call is timed by `actor::finish::finish`. A handler that
//! blocks its thread without awaiting delays these timeouts until it
//! returns.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

use super::lease::{enter, lease_check, still_leased, Leased};
use super::mailbox::{Mailbox, Take};
use super::{Activations, Envelope, Shared, WireCall};
use crate::actor::finish::{finish, panic_message, CatchUnwind, Outcome};
use crate::actor::{chain, BoxFuture, Ctx, Interleaver};
use crate::history::Phase;
use crate::lease::gate::Check;
use crate::telemetry::{EndReason, Metrics};
use crate::{Error, Handlers};

type Mb<A> = Arc<Mailbox<Envelope<A>>>;

/// What an activation's steps read: its `Ctx` and the node-wide state of
/// the activations ([`Shared`]: the gate, the history, shutdown).
pub(super) struct Here<'a> {
    pub(super) ctx: &'a Ctx,
    pub(super) shared: &'a Shared,
}

/// The activation of `id`, its mailbox `mb` in the table `acts`, its
/// context `ctx` (boxed: held across every await, inline it would grow
/// the task's future past its size budget).
pub(super) async fn run<A: Handlers>(
    ctx: Box<Ctx>,
    acts: Arc<Activations<A>>,
    mb: Mb<A>,
    id: Arc<str>,
) {
    let here = Here {
        ctx: &ctx,
        shared: &acts.shared,
    };
    let metrics = Metrics::get();
    let mut batch = VecDeque::new();
    loop {
        if acts.shared.is_shutting_down() {
            return fail_rest(&acts, &id, &mb, Error::ShuttingDown);
        }
        // Strong mode: activate only on a shard this node holds, under a
        // valid lease (see `crate::lease`).
        let leased = match here.shared.gate().is_some() {
            false => false,
            // Boxed: rare (strong mode, before each activation), and inline it
            // would grow every activation's task.
            true => match Box::pin(enter::<A>(&here, &mb, &mut batch)).await {
                Some(token) => {
                    here.ctx.set_token(token);
                    true
                }
                None if acts.shared.is_shutting_down() => {
                    return fail_rest(&acts, &id, &mb, Error::ShuttingDown);
                }
                None => {
                    if acts.retire_if_empty(&id, &mb) {
                        return;
                    }
                    continue;
                }
            },
        };
        // Boxed, like the hook below: they run once per activation, and
        // inline they would grow every idle activation's task by their size.
        // Recorded as the activation starts (it may read state from here
        // on), not once `activate` returns: a history orders activations by
        // when they began to act.
        here.shared
            .record(Phase::Activated, A::NAME, &id, here.ctx.lease().1);
        let activate = Box::pin(CatchUnwind::new(A::activate(&id, here.ctx)));
        let activated = watch_queue(&mb, &mut batch, activate).await;
        let mut actor = match activated {
            Ok(Ok(actor)) => actor,
            failed => {
                // A state that would not load stays typed (`Error::State`):
                // the caller can tell a store that is down from a bug.
                let (reason, typed) = match failed {
                    Ok(Err(e)) => match e.downcast::<Error>() {
                        Ok(e) if matches!(*e, Error::State { .. }) => (e.to_string(), Some(*e)),
                        Ok(e) => (e.to_string(), None),
                        Err(e) => (e.to_string(), None),
                    },
                    Err(payload) => (
                        format!("activation panicked: {}", panic_message(&*payload)),
                        None,
                    ),
                    Ok(Ok(_)) => (String::new(), None),
                };
                metrics.activation_failures.increment(1);
                here.shared
                    .record(Phase::Deactivated, A::NAME, &id, here.ctx.lease().1);
                tracing::warn!(actor = A::NAME, id = &*id, "activation failed: {reason}");
                let err = typed.unwrap_or_else(|| Error::ActivationFailed {
                    actor: A::NAME.to_owned(),
                    id: id.to_string(),
                    reason,
                });
                for env in mb.drain() {
                    env.fail(err.clone());
                }
                if let Some(l) = Leased::of(&here, leased) {
                    l.exit::<A>();
                }
                if acts.retire_if_empty(&id, &mb) {
                    return;
                }
                continue; // new callers arrived: they get a fresh attempt
            }
        };
        metrics.activations.increment(1);
        metrics.live.increment(1.0);
        // The chain of calls is known to the whole activation (see
        // `actor::chain`); each message sets whose call it serves.
        let end = chain::scope(
            A::NAME,
            here.ctx.id_arc(),
            here.ctx.output_gate().cloned(),
            serve(&mut actor, &mb, &here, &mut batch, leased),
        )
        .await;
        // Timers end with the activation (a queued tick is dropped).
        here.ctx.end_timers();
        metrics.live.decrement(1.0);
        metrics.deactivated(end);
        // Strong mode: the hook may write (fenced) state; it runs only
        // under the lease, and not at all once the lease is lost.
        let end = match end {
            EndReason::Panic | EndReason::Lost | EndReason::StateFailed => end,
            _ if !leased => end,
            // Boxed, as `enter`.
            _ if Box::pin(still_leased::<A>(&here, &mb, &mut batch)).await => end,
            _ => EndReason::Lost,
        };
        if !matches!(
            end,
            EndReason::Panic | EndReason::Lost | EndReason::StateFailed
        ) {
            let hook = Box::pin(CatchUnwind::new(actor.on_deactivate(here.ctx)));
            let hook = watch_queue(&mb, &mut batch, hook);
            match hook.await {
                Err(payload) => tracing::error!(
                    actor = A::NAME,
                    id = &*id,
                    "on_deactivate panicked: {}",
                    panic_message(&*payload)
                ),
                // The hook is the activation's last turn: what it changed
                // in the durable state is written (boxed: rare, and
                // inline it would grow every activation's task).
                Ok(()) if here.ctx.output_gate().is_some_and(|g| g.is_dirty()) => {
                    if let Some(state) = actor.__state() {
                        if let Err(e) = Box::pin(state.commit()).await {
                            tracing::warn!(
                                actor = A::NAME,
                                id = &*id,
                                "{e}: what on_deactivate changed is not written"
                            );
                        }
                    }
                }
                Ok(()) => {}
            }
        }
        drop(actor);
        // Ended without its hook, its last act the last message it
        // served: a lost lease, or a write the store refused.
        let phase = if matches!(end, EndReason::Lost | EndReason::StateFailed) {
            Phase::Lost
        } else {
            Phase::Deactivated
        };
        here.shared.record(phase, A::NAME, &id, here.ctx.lease().1);
        if let Some(l) = Leased::of(&here, leased) {
            l.exit::<A>();
        }
        here.ctx.set_token(0);
        if end == EndReason::Shutdown || acts.shared.is_shutting_down() {
            return fail_rest(&acts, &id, &mb, Error::ShuttingDown);
        }
        if acts.retire_if_empty(&id, &mb) {
            return;
        }
        // Messages arrived during deactivation: serve them with a new activation.
    }
}

fn fail_rest<A: Handlers>(acts: &Activations<A>, id: &str, mb: &Mb<A>, err: Error) {
    for env in acts.retire(id, mb) {
        env.fail(err.clone());
    }
}

/// Serves messages until the activation should end, and says why: one
/// message at a time on `&mut A` ([`Sequential`]), or, for a reentrant
/// actor, in turns that interleave the calls of a chain on `&A`
/// ([`Interleaved`]).
async fn serve<A: Handlers>(
    actor: &mut A,
    mb: &Mailbox<Envelope<A>>,
    here: &Here<'_>,
    batch: &mut VecDeque<Envelope<A>>,
    leased: bool,
) -> EndReason {
    let ctx = here.ctx;
    if A::REENTRANT {
        if let Some(il) = actor.__interleaver(ctx) {
            // Boxed: only reentrant actors pay for the interleaving turn.
            let turns = Interleaved { il, here };
            return Box::pin(serve_turns(turns, mb, here, batch, leased)).await;
        }
    }
    serve_turns(Sequential { actor, ctx }, mb, here, batch, leased).await
}

/// How an activation serves a message it took: the turn strategy of the
/// serve loop ([`serve_turns`]). It holds the actor and its `Ctx`.
trait Turns<A: Handlers> {
    /// Serves `env`, which passed its deadline and lease checks, and says
    /// how its turn ended. While user code waits, the rest of `batch` goes
    /// back to `mb` and the queued calls' deadlines run ([`watch_queue`]).
    fn turn<'t>(
        &'t mut self,
        env: Envelope<A>,
        mb: &'t Mailbox<Envelope<A>>,
        batch: &'t mut VecDeque<Envelope<A>>,
        leased: bool,
    ) -> impl Future<Output = TurnEnd> + Send + 't;

    /// Writes the actor's durable state, which the turn changed (see
    /// `actor::output`).
    fn commit(&mut self) -> impl Future<Output = Result<(), Error>> + Send + '_;
}

/// One message at a time, on `&mut A`: a turn is one handler.
struct Sequential<'s, A> {
    actor: &'s mut A,
    ctx: &'s Ctx,
}

impl<A: Handlers> Turns<A> for Sequential<'_, A> {
    fn turn<'t>(
        &'t mut self,
        env: Envelope<A>,
        mb: &'t Mailbox<Envelope<A>>,
        batch: &'t mut VecDeque<Envelope<A>>,
        _leased: bool,
    ) -> impl Future<Output = TurnEnd> + Send + 't {
        let (actor, ctx) = (&mut *self.actor, self.ctx);
        // The handler runs knowing its chain of calls (see `actor::chain`):
        // calls it makes extend it. Built here, not in an `async` block,
        // so the envelope is not kept beside the handler's future.
        match env {
            Envelope::Local(env) => {
                chain::serving(A::__caller(&env));
                let fut = watch_queue(mb, batch, actor.__handle(env, ctx));
                OneHandler::Local { fut }
            }
            Envelope::Wire(call) => {
                // Boxed: inline, the wire path's future (decode, handler,
                // encode) would grow every activation's task, idle or not;
                // a wire call already crossed the network.
                let WireCall {
                    tag,
                    body,
                    reply,
                    span,
                    caller,
                } = *call;
                chain::serving(caller);
                let handled = Box::pin(tracing::Instrument::instrument(
                    async move { finish(reply, ctx, actor.__handle_wire(tag, &body, ctx)).await },
                    span,
                ));
                let fut = watch_queue(mb, batch, handled);
                OneHandler::Wire { fut }
            }
        }
    }

    fn commit(&mut self) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        let ctx = self.ctx;
        let state = self.actor.__state();
        async move {
            match state {
                Some(state) => state.commit().await,
                None => Err(Error::State {
                    actor: A::NAME.to_owned(),
                    id: ctx.id().to_owned(),
                    error: crate::state::StoreError::Codec(
                        "the actor loaded a State but has no #[state] field to write it from: mark the field #[state]".into(),
                    ),
                }),
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A [`Sequential`] turn: one handler, of a typed or an encoded call.
    #[project = OneHandlerProj]
    enum OneHandler<L, W> {
        Local { #[pin] fut: L },
        Wire { #[pin] fut: W },
    }
}

impl<L: Future<Output = Outcome>, W: Future<Output = Outcome>> Future for OneHandler<L, W> {
    type Output = TurnEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TurnEnd> {
        match self.project() {
            OneHandlerProj::Local { fut } => fut.poll(cx).map(TurnEnd::Done),
            OneHandlerProj::Wire { fut } => fut.poll(cx).map(TurnEnd::Done),
        }
    }
}

/// A reentrant actor (`#[mesh::handlers(reentrant)]`, see `actor::chain`):
/// each message starts a turn ([`Turn`]) during which the calls whose chain
/// passes through this activation are served at once, interleaved on `&A`;
/// the other messages wait for the turn to end.
struct Interleaved<'a, A: Handlers> {
    il: Interleaver<'a, A>,
    here: &'a Here<'a>,
}

impl<A: Handlers> Turns<A> for Interleaved<'_, A> {
    fn turn<'t>(
        &'t mut self,
        env: Envelope<A>,
        mb: &'t Mailbox<Envelope<A>>,
        batch: &'t mut VecDeque<Envelope<A>>,
        leased: bool,
    ) -> impl Future<Output = TurnEnd> + Send + 't {
        let here = self.here;
        let first = start(&mut self.il, env, here.ctx);
        Turn {
            first: Some(first),
            more: Vec::new(),
            il: &mut self.il,
            mb,
            batch,
            here,
            leased,
            outcome: Outcome::Done,
            polled: false,
            armed: None,
            timer: None,
            gate_wait: None,
        }
    }

    /// Reentrant handlers take `&self`: they cannot change a `State`.
    fn commit(&mut self) -> impl Future<Output = Result<(), Error>> + Send + '_ {
        std::future::ready(Ok(()))
    }
}

/// The serve loop: takes batches from the mailbox, skips what was
/// abandoned or expired, checks the lease before each message (strong
/// mode), and hands each message to `turns`, until the mailbox stops, idles
/// or moves, or a turn ends the activation.
async fn serve_turns<A: Handlers, T: Turns<A>>(
    mut turns: T,
    mb: &Mailbox<Envelope<A>>,
    here: &Here<'_>,
    batch: &mut VecDeque<Envelope<A>>,
    leased: bool,
) -> EndReason {
    let metrics = Metrics::get();
    'take: loop {
        match poll_fn(|cx| mb.poll_take(cx, batch)).await {
            Take::Batch => {}
            Take::Stop => return EndReason::Shutdown,
            Take::Idle => return EndReason::Idle,
            Take::Moved => return EndReason::Moved,
        }
        metrics.mailbox_depth.record(batch.len() as f64);
        let now = Instant::now();
        while let Some(env) = batch.pop_front() {
            if env.abandoned() {
                metrics.abandoned.increment(1);
                continue;
            }
            if env.deadline().is_some_and(|d| d <= now) {
                metrics.abandoned.increment(1);
                env.fail(Error::timeout());
                continue;
            }
            // Strong mode: each turn starts under the lease (an interleaved
            // turn checks it again for each call it interleaves later).
            let check = lease_check::<A>(here, leased);
            if check != Check::Go {
                batch.push_front(env);
                mb.put_back(batch);
                if check == Check::Wait && Box::pin(still_leased::<A>(here, mb, batch)).await {
                    continue 'take;
                }
                return EndReason::Lost;
            }
            if here.shared.has_history() {
                served::<A>(here);
            }
            let turn = turns.turn(env, mb, batch, leased).await;
            // A stateful activation: the turn's change is written before
            // what the turn sends goes out (see `actor::output`).
            if let Some(gate) = here.ctx.output_gate() {
                let saved = match turn {
                    TurnEnd::Done(Outcome::Done) if gate.is_dirty() => {
                        // Boxed: only stateful activations pay for it.
                        let save = Box::pin(gate.saving(turns.commit()));
                        watch_queue(mb, batch, save).await
                    }
                    TurnEnd::Done(Outcome::Done) => Ok(()),
                    // Not written: the activation ends without it.
                    _ => Err(Error::Cancelled),
                };
                match saved {
                    Ok(()) => gate.release(None),
                    Err(e) => {
                        gate.release(Some(&e));
                        if matches!(turn, TurnEnd::Done(Outcome::Done)) {
                            tracing::warn!(
                                actor = A::NAME,
                                id = here.ctx.id(),
                                "{e}: the call fails and the activation ends; the next call loads the state again"
                            );
                            mb.put_back(batch);
                            return EndReason::StateFailed;
                        }
                    }
                }
            }
            let end = match turn {
                TurnEnd::Lost => Some(EndReason::Lost),
                TurnEnd::Done(Outcome::Panicked) => Some(EndReason::Panic),
                TurnEnd::Done(Outcome::Done) if here.ctx.take_deactivate() => {
                    Some(EndReason::Requested)
                }
                TurnEnd::Done(Outcome::Done) => None,
            };
            if let Some(end) = end {
                mb.put_back(batch);
                return end;
            }
        }
        // The batch and the mailbox queue swap buffers; do not let one burst
        // pin a large buffer for the life of the activation.
        if batch.capacity() > 256 {
            batch.shrink_to(16);
        }
    }
}

/// Starts one message of a reentrant actor: its handler on `&A`, knowing
/// its own chain of calls.
fn start<'a, A: Handlers>(
    il: &mut Interleaver<'a, A>,
    env: Envelope<A>,
    ctx: &'a Ctx,
) -> BoxFuture<'a, Outcome> {
    match env {
        Envelope::Local(env) => {
            let caller = A::__caller(&env);
            Box::pin(WithCaller {
                caller,
                fut: (il.local)(env),
            })
        }
        Envelope::Wire(call) => {
            let WireCall {
                tag,
                body,
                reply,
                span,
                caller,
            } = *call;
            let handled = finish(reply, ctx, (il.wire)(tag, body));
            Box::pin(WithCaller {
                caller,
                fut: tracing::Instrument::instrument(handled, span),
            })
        }
    }
}

pin_project_lite::pin_project! {
    /// A handler interleaved with others in one task: it sets its own
    /// chain each time it runs (the task-local holds one at a time).
    struct WithCaller<F> {
        caller: chain::Caller,
        #[pin]
        fut: F,
    }
}

impl<F: Future> Future for WithCaller<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        chain::serving(this.caller.clone());
        this.fut.poll(cx)
    }
}

/// One turn of a reentrant activation: its first handler, and the calls of
/// its chain started while it waits. Ends when all of them have returned
/// (at the first panic, the others are dropped: their callers see the
/// activation gone). Meanwhile, as [`watch_queue`] does, queued calls whose
/// deadline passes are answered with [`Error::Timeout`].
///
/// Strong mode: each call of the chain passes the gate before it starts,
/// as the turn's first message did (the lease may have lapsed, or the
/// shard moved, since). While the gate says wait, the calls stay queued
/// (their deadlines running) and the turn's running handlers go on; once
/// it says the lease is lost, the turn ends at once ([`TurnEnd::Lost`]):
/// its running handlers are dropped (their callers see the activation
/// gone) and the queued calls are served by a later activation, under a
/// new grant.
struct Turn<'t, 'a, A: Handlers> {
    first: Option<BoxFuture<'a, Outcome>>,
    more: Vec<BoxFuture<'a, Outcome>>,
    il: &'t mut Interleaver<'a, A>,
    mb: &'t Mailbox<Envelope<A>>,
    batch: &'t mut VecDeque<Envelope<A>>,
    here: &'a Here<'a>,
    /// Strong mode: the activation holds a lease (see [`lease_check`]).
    leased: bool,
    outcome: Outcome,
    polled: bool,
    armed: Option<Instant>,
    timer: Option<Pin<Box<Sleep>>>,
    /// Strong mode: a call of the chain waits at the gate for a change.
    gate_wait: Option<Pin<Box<tokio::sync::futures::Notified<'a>>>>,
}

/// How a turn ended.
enum TurnEnd {
    /// Every handler of the turn returned, or one panicked.
    Done(Outcome),
    /// Strong mode: a call of the chain found the lease lost.
    Lost,
}

impl<'a, A: Handlers> Future for Turn<'_, 'a, A> {
    type Output = TurnEnd;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<TurnEnd> {
        let this = self.get_mut();
        let id = this.here.ctx.id();
        loop {
            let mut outcome = this.outcome;
            if let Some(first) = this.first.as_mut() {
                if let Poll::Ready(o) = first.as_mut().poll(cx) {
                    this.first = None;
                    if o == Outcome::Panicked {
                        outcome = o;
                    }
                }
            }
            this.more.retain_mut(|f| match f.as_mut().poll(cx) {
                Poll::Ready(o) => {
                    if o == Outcome::Panicked {
                        outcome = o;
                    }
                    false
                }
                Poll::Pending => true,
            });
            this.outcome = outcome;
            if outcome == Outcome::Panicked || (this.first.is_none() && this.more.is_empty()) {
                return Poll::Ready(TurnEnd::Done(outcome));
            }
            if !std::mem::replace(&mut this.polled, true) {
                this.mb.put_back(this.batch);
            }
            let (expired, earliest) = this.mb.take_expired(Instant::now(), Envelope::deadline);
            for env in expired {
                env.fail(Error::timeout());
            }
            // Strong mode: a call of the chain starts only past the gate.
            let mut waiting = false;
            if this.leased && this.mb.any(|e| e.in_chain_of(id)) {
                match lease_check::<A>(this.here, true) {
                    Check::Go => this.gate_wait = None,
                    Check::Lost => return Poll::Ready(TurnEnd::Lost),
                    Check::Wait => {
                        let here: &'a Here<'a> = this.here;
                        match (this.gate_wait.as_mut(), here.shared.gate()) {
                            (Some(changed), _) => {
                                if changed.as_mut().poll(cx).is_ready() {
                                    this.gate_wait = None;
                                    continue;
                                }
                            }
                            (None, Some(gate)) => {
                                // Registered before the check again: a
                                // change in between is not missed.
                                let mut changed = Box::pin(gate.changed());
                                changed.as_mut().enable();
                                this.gate_wait = Some(changed);
                                continue;
                            }
                            (None, None) => {}
                        }
                        waiting = true;
                    }
                }
            }
            if !waiting {
                let picked = this.mb.take_picked(|e| e.in_chain_of(id));
                if !picked.is_empty() {
                    for env in picked {
                        if !env.abandoned() {
                            this.more.push(start(this.il, env, this.here.ctx));
                        }
                    }
                    continue;
                }
            }
            if earliest != this.armed {
                this.armed = earliest;
                this.timer = earliest.map(|d| Box::pin(tokio::time::sleep_until(d)));
            }
            if let Some(sleep) = this.timer.as_mut() {
                if sleep.as_mut().poll(cx).is_ready() {
                    this.timer = None;
                    this.armed = None;
                    continue;
                }
            }
            // Any push wakes the turn: a call of its chain may come. One
            // that came before the registration is seen here (unless the
            // calls of the chain wait at the gate: its change wakes the
            // turn then).
            this.mb.watch_any(cx);
            if !waiting && this.mb.any(|e| e.in_chain_of(id)) {
                continue;
            }
            return Poll::Pending;
        }
    }
}

/// Runs `fut` (user code). If it does not finish on its first poll, the
/// rest of the batch goes back to the mailbox and, until `fut` finishes,
/// the queued calls whose deadline passes are answered with
/// [`Error::Timeout`]: one timer, for the earliest deadline, re-armed when a
/// call with an earlier one arrives.
pub(super) fn watch_queue<'a, A: Handlers, F: Future>(
    mb: &'a Mailbox<Envelope<A>>,
    batch: &'a mut VecDeque<Envelope<A>>,
    fut: F,
) -> WatchQueue<'a, A, F> {
    WatchQueue {
        fut,
        mb,
        batch,
        polled: false,
        armed: None,
        timer: None,
    }
}

pin_project_lite::pin_project! {
    /// The future of [`watch_queue`]: named, so `fut` is stored once.
    pub(super) struct WatchQueue<'a, A: Handlers, F> {
        #[pin]
        fut: F,
        mb: &'a Mailbox<Envelope<A>>,
        batch: &'a mut VecDeque<Envelope<A>>,
        polled: bool,
        armed: Option<Instant>,
        // Boxed: the fast path (user code that does not wait) pays nothing.
        timer: Option<Pin<Box<Sleep>>>,
    }
}

impl<A: Handlers, F: Future> Future for WatchQueue<'_, A, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        if let Poll::Ready(v) = this.fut.as_mut().poll(cx) {
            return Poll::Ready(v);
        }
        if !std::mem::replace(this.polled, true) {
            this.mb.put_back(this.batch);
        }
        // Woken by the timer or by a call with an earlier deadline (or
        // spuriously): fail what expired and re-arm for the earliest left.
        loop {
            let (expired, earliest) = this.mb.take_expired(Instant::now(), Envelope::deadline);
            for env in expired {
                env.fail(Error::timeout());
            }
            if earliest != *this.armed {
                *this.armed = earliest;
                *this.timer = earliest.map(|d| Box::pin(tokio::time::sleep_until(d)));
            }
            let fired = match this.timer {
                Some(sleep) => sleep.as_mut().poll(cx).is_ready(),
                None => false,
            };
            if !fired {
                break;
            }
            // Spent: scan again, and arm anew for what is left.
            *this.timer = None;
            *this.armed = None;
        }
        this.mb.watch(cx, *this.armed);
        Poll::Pending
    }
}

/// Passivates the idle activations of `A`: every `IDLE_TIMEOUT / 4` it
/// ticks every mailbox, and a mailbox that took no message for 4 ticks in a
/// row is marked idle. One task per actor type and node instead of one
/// timer per activation, so an idle activation costs no timer and the hot
/// path reads no clock for idleness. An activation is passivated between
/// `IDLE_TIMEOUT` and `1.25 x IDLE_TIMEOUT` after its last message.
pub(super) async fn sweep_idle<A: Handlers>(acts: std::sync::Weak<Activations<A>>) {
    const TICKS: u32 = 4;
    let Some(idle) = A::IDLE_TIMEOUT else { return };
    let tick = (idle / TICKS).max(Duration::from_millis(1));
    let mut interval = tokio::time::interval_at(Instant::now() + tick, tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(acts) = acts.upgrade() else {
            return;
        };
        if acts.shared.is_shutting_down() {
            return;
        }
        for entry in acts.table.iter() {
            entry.value().sweep(TICKS);
        }
    }
}

#[cfg(test)]
pub(super) fn serve_for_size<'a, A: Handlers>(
    actor: &'a mut A,
    mb: &'a Mailbox<Envelope<A>>,
    here: &'a Here<'a>,
    batch: &'a mut VecDeque<Envelope<A>>,
) -> impl Future<Output = EndReason> + 'a {
    serve(actor, mb, here, batch, false)
}

/// Records a dispatch in the node's history (a checker orders the
/// dispatches of an id's activations: `history::violations`).
#[cold]
fn served<A: Handlers>(here: &Here) {
    let ctx = here.ctx;
    here.shared
        .record(Phase::Served, A::NAME, ctx.id(), ctx.lease().1);
}
