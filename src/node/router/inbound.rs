//! Serving what peers send to this node: the [`Inbound`] side of every
//! connection, built by the node and handed to `cluster::start`.
//!
//! Called by each connection's reader in arrival order, without blocking:
//! a call for a local actor is enqueued in its mailbox before the next
//! frame is read (so requests on one connection keep their order), with
//! its responder, and the activation answers straight into the
//! connection. A call for a shard this node does not own is forwarded
//! once, or held in strong mode (see [`super::forward`]), in a task that
//! answers the responder. Control messages (a peer leaving, retiring a
//! connection, its gossip) go to the cluster.

use std::sync::Weak;

use super::{Along, Decision, Origin, Request, Router};
use crate::activation::WireReply;
use crate::actor::chain::Caller;
use crate::actor::ReplyTo;
use crate::node::NodeInner;
use crate::transport::{Ack, Connection, Inbound, Responder};
use crate::wire::{self, Peer, TraceContext};
use crate::Error;

/// Serves requests that peers send to this node (it does not keep the
/// node alive: once the node is gone, calls answer `ShuttingDown`).
pub(crate) struct NodeInbound(Weak<NodeInner>);

impl NodeInbound {
    pub(crate) fn new(node: Weak<NodeInner>) -> Self {
        NodeInbound(node)
    }
}

impl Inbound for NodeInbound {
    fn call(&self, _from: &Peer, call: wire::CallFrame, reply: Responder) {
        match self.0.upgrade() {
            // A question to the node itself, never forwarded (see
            // `admin::cluster`); without the feature, the tag is unknown.
            #[cfg(feature = "admin")]
            Some(node) if call.tag == wire::INSPECT_TAG => {
                node.answer_query(call.payload.into_vec(), reply)
            }
            Some(node) => node.router().serve_peer(call, reply),
            None => reply.send(Err(Error::ShuttingDown)),
        }
    }

    fn cast(&self, _from: &Peer, cast: wire::Cast) {
        let Some(node) = self.0.upgrade() else { return };
        let payload = cast.payload.into_vec();
        if let Err(e) = node
            .router()
            .cast_encoded(cast.tag, &cast.id, payload, cast.hops, cast.trace)
        {
            tracing::debug!(node = %node.id, "inbound cast dropped: {e}");
        }
    }

    fn leave(&self, from: &Peer, ack: Ack) {
        // Without a node (gone), the ack's drop answers at once.
        if let Some(node) = self.0.upgrade() {
            if let Some(c) = &node.cluster {
                c.peer_left(from, ack);
            }
        }
    }

    fn retire(&self, conn: Connection, ack: Ack) {
        // Without a node, the ack's drop answers at once.
        if let Some(node) = self.0.upgrade() {
            if let Some(c) = &node.cluster {
                c.peer_retires(conn, ack);
            }
        }
    }

    fn membership(&self, _from: &Peer, membership: wire::MembershipFrame) {
        if let Some(node) = self.0.upgrade() {
            if let Some(c) = &node.cluster {
                c.peer_gossip(membership);
            }
        }
    }
}

impl Router<'_> {
    /// Serves a call from a peer: enqueued here with its responder (the
    /// activation answers straight into the connection), or forwarded once.
    /// A call whose chain is too deep is refused at once, here and not
    /// forwarded (see [`crate::actor::chain`]).
    fn serve_peer(&self, call: wire::CallFrame, reply: Responder) {
        let node = self.node;
        let route = match self.wire_route(call.tag) {
            Ok(route) => route,
            Err(e) => return reply.send(Err(e)),
        };
        let target = self.target_of(route);
        let mut req = Request {
            tag: call.tag,
            id: call.id,
            body: call.payload.into_vec(),
            // Answered already (it cannot be): no time left.
            deadline: reply.deadline().unwrap_or_else(tokio::time::Instant::now),
            hops: call.hops,
            origin: Origin::Peer,
            along: Along::default(),
        };
        let decision = match self.decide(&req, target, false) {
            Ok(decision) => decision,
            Err(e) => return reply.send(Err(e)),
        };
        let actor = node.catalog.actors[route.actor].2.actor_name();
        req.along.caller = match Caller::from_wire(call.chain, actor, &req.id) {
            Ok(caller) => caller,
            Err(e) => {
                tracing::debug!(node = %node.id, "refusing a call from a peer: {e}");
                return reply.send(Err(e));
            }
        };
        match decision {
            Decision::Here => {
                req.along.trace = call.trace;
                let Request {
                    tag,
                    id,
                    body,
                    along,
                    ..
                } = req;
                // On refusal the envelope answers the peer itself.
                let _ = self.serve_here(target, tag, &id, body, WireReply::Peer(reply), along);
            }
            decision => {
                // The forward joins the caller's trace; the owner joins
                // the forward's.
                let (span, trace) = crate::trace::forward(&node.id, call.trace);
                req.along.trace = trace;
                let fut = self.carry(req, target, decision);
                let fut = async move { reply.send(fut.await.map(|b| b.to_vec())) };
                tokio::spawn(tracing::Instrument::instrument(fut, span));
            }
        }
    }

    /// Runs an encoded cast from a peer here, or forwards it once to the
    /// owner (in a `mesh.forward` span, see `crate::trace`). Casts never
    /// wait: in strong mode too, one this node may not forward is served
    /// here.
    pub(super) fn cast_encoded(
        &self,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        hops: u8,
        trace: Option<TraceContext>,
    ) -> Result<(), Error> {
        let target = self.target(tag)?;
        let owner = self.locate(target, id)?;
        match self.forward_to(owner, hops, Origin::Peer) {
            None => self.serve_here(
                target,
                tag,
                id,
                body,
                WireReply::Local(ReplyTo::cast()),
                Along {
                    trace,
                    caller: Caller::default(),
                },
            ),
            Some(conn) => {
                let (span, trace) = crate::trace::forward(&self.node.id, trace);
                let _enter = span.enter();
                conn.cast_traced(tag, id, body, hops.saturating_add(1), trace)
            }
        }
    }
}
