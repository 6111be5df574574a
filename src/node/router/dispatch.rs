//! Typed requests from this process: a call or cast goes to its local
//! activation by value (nothing encoded), or, encoded once, to its owner.

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::forward::RemoteCall;
use super::{Along, Origin, Request, Router, Target};
use crate::activation::{Envelope, WireCall, WireReply};
use crate::actor::chain::Caller;
use crate::actor::ReplyTo;
use crate::{Error, Handler, Message};

/// Where the router sent a typed call, and where its reply comes from.
// A value returned and moved once into the call's future: boxing the
// remote call would put back the allocation it exists to avoid.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Sent<R> {
    /// Enqueued in its local activation's mailbox.
    Local(oneshot::Receiver<Result<R, Error>>),
    /// Sent to its owner, encoded; rerouted by the router if the owner
    /// never saw it.
    Remote(RemoteCall),
}

impl Router<'_> {
    /// Sends a typed call to actor `id` of type `A`: enqueued here, or
    /// sent to the owner, before this returns (so calls made in order go
    /// out in order). It ends at the deadline, which is the timeout from
    /// now. `span` is the call's span, whose trace context goes with a
    /// remote call.
    pub(crate) fn send<A: Handler<M>, M: Message>(
        &self,
        id: &str,
        msg: M,
        (deadline, timeout): (Instant, std::time::Duration),
        caller: Caller,
        span: &tracing::Span,
    ) -> Result<Sent<M::Reply>, Error> {
        let target = Target::of::<A>();
        match self.locate(target, id)? {
            None => {
                let (reply, rx) = ReplyTo::call(deadline);
                self.dispatch_local::<A, M>(id, msg, reply.within(caller))?;
                Ok(Sent::Local(rx))
            }
            Some(conn) => {
                let req = Request {
                    tag: <A as Handler<M>>::TAG,
                    id: id.to_owned(),
                    body: crate::wire::encode(&msg)?,
                    deadline,
                    hops: 0,
                    origin: Origin::Caller,
                    along: Along {
                        trace: crate::trace::outgoing(span),
                        caller,
                    },
                };
                Ok(Sent::Remote(self.call_remote(conn, req, target, timeout)))
            }
        }
    }

    /// Casts a typed message to actor `id` of type `A`: enqueued here, or
    /// sent to the owner (at most once, never rerouted). `span` is the
    /// cast's span.
    pub(crate) fn cast<A: Handler<M>, M: Message>(
        &self,
        id: &str,
        msg: M,
        span: &tracing::Span,
    ) -> Result<(), Error> {
        match self.locate(Target::of::<A>(), id)? {
            None => self.dispatch_local::<A, M>(id, msg, ReplyTo::cast()),
            Some(conn) => conn.cast_traced(
                <A as Handler<M>>::TAG,
                id,
                crate::wire::encode(&msg)?,
                0,
                crate::trace::outgoing(span),
            ),
        }
    }

    /// Delivers a typed message to its local activation.
    fn dispatch_local<A: Handler<M>, M: Message>(
        &self,
        id: &str,
        msg: M,
        reply: ReplyTo<M::Reply>,
    ) -> Result<(), Error> {
        let acts = self
            .node
            .catalog
            .activations::<A>()
            .ok_or_else(|| Error::UnknownActorType {
                actor: A::NAME.to_owned(),
            })?;
        acts.send(id, Envelope::Local(A::__wrap(msg, reply)))
    }

    /// Hands an encoded call or cast (a cast's slot is `ReplyTo::cast`) to
    /// its local activation, in a `mesh.serve` span. On refusal the reply
    /// slot is answered with the error too.
    pub(super) fn serve_here(
        &self,
        target: Target,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        reply: WireReply,
        along: Along,
    ) -> Result<(), Error> {
        let route = match target.here {
            Some(route) => route,
            None => self.wire_route(tag)?,
        };
        let node = self.node;
        let (_, capability, actors) = &node.catalog.actors[route.actor];
        let cast = matches!(&reply, WireReply::Local(r) if r.is_cast());
        let span = crate::trace::serve_span(&node.id, capability, cast, along.trace.as_ref());
        actors.send_wire(
            id,
            WireCall {
                tag,
                body,
                reply,
                span,
                caller: along.caller,
            },
        )
    }
}
