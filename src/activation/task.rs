//! The task behind one activation: activate, serve, deactivate, repeat while
//! messages keep coming, then leave the table.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::{Arc, Weak};
use std::task::Poll;

use tokio::time::{Instant, Sleep};

use super::mailbox::{Mailbox, Take};
use super::{Activations, Envelope, TaskGuard, WireCall};
use crate::__private::{finish, panic_message, CatchUnwind, Outcome};
use crate::actor::Ctx;
use crate::node::NodeInner;
use crate::telemetry::{EndReason, Metrics};
use crate::{Error, Handlers, Node};

type Mb<A> = Arc<Mailbox<Envelope<A>>>;

pub(super) async fn run<A: Handlers>(
    node: Weak<NodeInner>,
    mb: Mb<A>,
    id: Arc<str>,
    guard: TaskGuard,
) {
    let metrics = Metrics::get();
    let Some(node) = node.upgrade().map(Node::from_inner) else {
        // The node is gone; nobody can be waiting on a live table.
        for env in mb.close() {
            env.fail(Error::ShuttingDown);
        }
        return;
    };
    let acts = node.activations::<A>();
    let ctx = Ctx::new(id.clone(), A::NAME, node.clone());
    let mut batch = VecDeque::new();
    loop {
        if guard.0.is_shutting_down() {
            return fail_rest(acts, &id, &mb, Error::ShuttingDown);
        }
        let mut actor = match CatchUnwind::new(A::activate(&id)).await {
            Ok(Ok(actor)) => actor,
            failed => {
                let reason = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(payload) => format!("activation panicked: {}", panic_message(&*payload)),
                    Ok(Ok(_)) => String::new(),
                };
                metrics.activation_failures.increment(1);
                tracing::warn!(actor = A::NAME, id = &*id, "activation failed: {reason}");
                let err = Error::ActivationFailed {
                    actor: A::NAME.to_owned(),
                    id: id.to_string(),
                    reason,
                };
                for env in mb.drain() {
                    env.fail(err.clone());
                }
                if acts.map_or(true, |a| a.retire_if_empty(&id, &mb)) {
                    return;
                }
                continue; // new callers arrived: they get a fresh attempt
            }
        };
        metrics.activations.increment(1);
        metrics.live.increment(1.0);
        let end = serve(&mut actor, &mb, &ctx, &mut batch).await;
        metrics.live.decrement(1.0);
        metrics.deactivated(end);
        if end != EndReason::Panic {
            if let Err(payload) = CatchUnwind::new(actor.on_deactivate(&ctx)).await {
                tracing::error!(
                    actor = A::NAME,
                    id = &*id,
                    "on_deactivate panicked: {}",
                    panic_message(&*payload)
                );
            }
        }
        drop(actor);
        if end == EndReason::Shutdown || guard.0.is_shutting_down() {
            return fail_rest(acts, &id, &mb, Error::ShuttingDown);
        }
        if acts.map_or(true, |a| a.retire_if_empty(&id, &mb)) {
            return;
        }
        // Messages arrived during deactivation: serve them with a new activation.
    }
}

fn fail_rest<A: Handlers>(acts: Option<&Activations<A>>, id: &str, mb: &Mb<A>, err: Error) {
    let left = match acts {
        Some(a) => a.retire(id, mb),
        None => mb.close(),
    };
    for env in left {
        env.fail(err.clone());
    }
}

/// Serves messages until the activation should end, and says why.
async fn serve<A: Handlers>(
    actor: &mut A,
    mb: &Mailbox<Envelope<A>>,
    ctx: &Ctx,
    batch: &mut VecDeque<Envelope<A>>,
) -> EndReason {
    let metrics = Metrics::get();
    let idle = A::IDLE_TIMEOUT;
    let mut sleep: std::pin::Pin<&mut Option<Sleep>> = pin!(idle.map(tokio::time::sleep));
    let mut last = Instant::now();
    loop {
        let take = poll_fn(|cx| {
            if let Poll::Ready(t) = mb.poll_take(cx, batch) {
                return Poll::Ready(Some(t));
            }
            match sleep.as_mut().as_pin_mut() {
                Some(s) => s.poll(cx).map(|()| None),
                None => Poll::Pending,
            }
        })
        .await;
        match take {
            Some(Take::Batch) => {
                metrics.mailbox_depth.record(batch.len() as f64);
                while let Some(env) = batch.pop_front() {
                    let outcome = match env {
                        Envelope::Local(env) => {
                            if A::__abandoned(&env) {
                                metrics.abandoned.increment(1);
                                continue;
                            }
                            actor.__handle(env, ctx).await
                        }
                        Envelope::Wire(call) => {
                            if call.reply.abandoned() {
                                metrics.abandoned.increment(1);
                                continue;
                            }
                            let WireCall { tag, body, reply } = *call;
                            finish(reply, ctx, actor.__handle_wire(tag, &body, ctx)).await
                        }
                    };
                    let end = match outcome {
                        Outcome::Panicked => Some(EndReason::Panic),
                        Outcome::Done if ctx.take_deactivate() => Some(EndReason::Requested),
                        Outcome::Done => None,
                    };
                    if let Some(end) = end {
                        mb.put_back(batch);
                        return end;
                    }
                }
                if idle.is_some() {
                    last = Instant::now();
                }
            }
            Some(Take::Stop) => return EndReason::Shutdown,
            None => {
                // The idle timer fired: passivate if nothing came since.
                let (Some(idle), Some(s)) = (idle, sleep.as_mut().as_pin_mut()) else {
                    continue;
                };
                let deadline = last + idle;
                if Instant::now() >= deadline {
                    return EndReason::Idle;
                }
                s.reset(deadline);
            }
        }
    }
}
