//! Serving requests that peers send to this node.
//!
//! Called by each connection's reader in arrival order, without blocking:
//! a call for a local actor is enqueued in its mailbox before the next
//! frame is read (so requests on one connection keep their order), with
//! its responder, and the activation answers straight into the
//! connection. A call for a shard this node does not own is forwarded
//! once (see [`super::forward`]).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::forward::Along;
use super::Event;
use crate::activation::{WireCall, WireReply};
use crate::actor::chain::Caller;
use crate::node::NodeInner;
use crate::transport::{Ack, Connection, Inbound, Responder};
use crate::wire::{self, Peer};
use crate::Error;

/// Serves requests that peers send to this node.
pub(super) struct NodeInbound(pub(super) Weak<NodeInner>);

impl Inbound for NodeInbound {
    fn call(&self, _from: &Peer, call: wire::Call, reply: Responder) {
        match self.0.upgrade() {
            Some(node) => node.serve_peer(call, reply),
            None => reply.send(Err(Error::ShuttingDown)),
        }
    }

    fn cast(&self, _from: &Peer, cast: wire::Cast) {
        let Some(node) = self.0.upgrade() else { return };
        let (tag, hops) = (cast.tag, cast.hops);
        let payload = cast.payload.into_vec();
        if let Err(e) = node.cast_wire(tag, &cast.id, payload, hops, cast.trace) {
            tracing::debug!(node = %node.id, "inbound cast dropped: {e}");
        }
    }

    fn leave(&self, from: &Peer, ack: Ack) {
        // Without a cluster (gone), the ack's drop answers at once.
        if let Some(node) = self.0.upgrade() {
            if let Some(cluster) = node.cluster.get() {
                cluster.send(Event::Left(from.node.clone(), from.incarnation, ack));
            }
        }
    }

    fn retire(&self, conn: Connection, ack: Ack) {
        // Without a node, the ack's drop answers at once.
        if let Some(node) = self.0.upgrade() {
            tokio::spawn(super::retire::retired_by_peer(
                Arc::downgrade(&node),
                conn,
                ack,
            ));
        }
    }

    fn membership(&self, _from: &Peer, membership: wire::Membership) {
        if let Some(node) = self.0.upgrade() {
            if let Some(cluster) = node.cluster.get() {
                cluster.send(Event::Gossip(membership));
            }
        }
    }
}

impl NodeInner {
    /// Serves a call from a peer: enqueued here with its responder (the
    /// activation answers straight into the connection), or forwarded once.
    /// A call whose chain is too deep is refused at once, here and not
    /// forwarded (see [`crate::actor::chain`]).
    pub(super) fn serve_peer(self: &Arc<Self>, call: wire::Call, reply: Responder) {
        let tag = call.tag;
        let (route, owner) = match self.locate(tag, &call.id) {
            Ok(found) => found,
            Err(e) => return reply.send(Err(e)),
        };
        let (_, capability, actors) = &self.actors[route.actor];
        let caller = match Caller::from_wire(call.chain, actors.actor_name(), &call.id) {
            Ok(caller) => caller,
            Err(e) => {
                tracing::debug!(node = %self.id, "refusing a call from a peer: {e}");
                return reply.send(Err(e));
            }
        };
        match owner {
            None => {
                let body = call.payload.into_vec();
                let reply = WireReply::Peer(reply);
                let span =
                    crate::trace::serve_span(&self.id, capability, false, call.trace.as_ref());
                // On refusal the envelope answers the peer itself.
                let _ = actors.send_wire(
                    &call.id,
                    WireCall {
                        tag,
                        body,
                        reply,
                        span,
                        caller,
                    },
                );
            }
            Some(_) => {
                let timeout = reply.deadline().map_or(Duration::ZERO, |d| {
                    d.saturating_duration_since(tokio::time::Instant::now())
                });
                // The forward joins the caller's trace; the owner joins
                // the forward's.
                let (span, trace) = crate::trace::forward(&self.id, call.trace);
                let along = Along { trace, caller };
                let fut = self.serve_wire(
                    tag,
                    &call.id,
                    call.payload.into_vec(),
                    timeout,
                    call.hops,
                    true,
                    along,
                );
                let fut = async move { reply.send(fut.await.map(|b| b.to_vec())) };
                tokio::spawn(tracing::Instrument::instrument(fut, span));
            }
        }
    }
}
