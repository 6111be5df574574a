//! The task behind one activation: activate, serve, deactivate, repeat while
//! messages keep coming, then leave the table.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Weak};

use tokio::time::Instant;

use super::mailbox::{Mailbox, Take};
use super::{Activations, Envelope, WireCall};
use crate::__private::{finish, panic_message, CatchUnwind, Outcome};
use crate::actor::Ctx;
use crate::node::NodeInner;
use crate::telemetry::{EndReason, Metrics};
use crate::{Error, Handlers, Node};

type Mb<A> = Arc<Mailbox<Envelope<A>>>;

pub(super) async fn run<A: Handlers>(node: Option<Arc<NodeInner>>, mb: Mb<A>, id: Arc<str>) {
    let metrics = Metrics::get();
    let Some(node) = node.map(Node::from_inner) else {
        // The node is gone; nobody can be waiting on a live table.
        for env in mb.close() {
            env.fail(Error::ShuttingDown);
        }
        return;
    };
    let ctx = Ctx::new(id.clone(), A::NAME, node);
    let acts = ctx.node().activations::<A>();
    let shared = ctx.node().shared();
    let mut batch = VecDeque::new();
    loop {
        if shared.is_shutting_down() {
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
                if acts.is_none_or(|a| a.retire_if_empty(&id, &mb)) {
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
        if end == EndReason::Shutdown || shared.is_shutting_down() {
            return fail_rest(acts, &id, &mb, Error::ShuttingDown);
        }
        if acts.is_none_or(|a| a.retire_if_empty(&id, &mb)) {
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
    let stamps = A::IDLE_TIMEOUT.is_some();
    loop {
        // Stamp the time the batch is taken, not when waiting began.
        match poll_fn(|cx| mb.poll_take(cx, batch, stamps.then(Instant::now))).await {
            Take::Batch => {}
            Take::Stop => return EndReason::Shutdown,
            Take::Idle => return EndReason::Idle,
        }
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
        // The batch and the mailbox queue swap buffers; do not let one burst
        // pin a large buffer for the life of the activation.
        if batch.capacity() > 256 {
            batch.shrink_to(16);
        }
    }
}

/// Passivates the idle activations of `A`: every `IDLE_TIMEOUT / 4`, marks
/// the mailboxes that took no message for `IDLE_TIMEOUT`. One task per
/// actor type and node, instead of one timer per activation, so an idle
/// activation costs no timer and activating one arms none. An activation is
/// passivated between `IDLE_TIMEOUT` and `1.25 x IDLE_TIMEOUT` after its
/// last message.
pub(super) async fn sweep_idle<A: Handlers>(node: Weak<NodeInner>) {
    let Some(idle) = A::IDLE_TIMEOUT else { return };
    let tick = (idle / 4).max(std::time::Duration::from_millis(1));
    let mut interval = tokio::time::interval_at(Instant::now() + tick, tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        let Some(node) = node.upgrade().map(Node::from_inner) else {
            return;
        };
        let Some(acts) = node.activations::<A>() else {
            return;
        };
        if acts.shared.is_shutting_down() {
            return;
        }
        let now = Instant::now();
        for entry in acts.table.iter() {
            entry.value().mark_if_idle(now, idle);
        }
    }
}
