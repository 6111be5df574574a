//! The router: where a request goes (here, forwarded to its owner, or
//! routed again), decided in one room.
//!
//! Every request this node sends or serves passes through here: a typed
//! call or cast from this process ([`dispatch`]), an encoded call or cast
//! from a peer ([`inbound`]), an encoded call this node routes for itself
//! (`Node::call_wire`, or a strong-mode activation giving back a call it
//! will not hold: [`Router::reroute`]). The activation tables, the cluster
//! and the transport only carry out what is decided here.
//!
//! # What is decided where
//!
//! - [`Router::locate`] (here): who owns the shard of an id, read
//!   lock-free from the routing table (the actor type's own table, over
//!   the nodes of its capability that host it) and the cluster's view (the
//!   live connection to a remote owner). An owner the table names but this
//!   node holds no live connection to is down by the membership's own
//!   rule: it is evicted at once and the recomputed table read again, so a
//!   request never waits for a heartbeat to find out.
//! - [`Router::decide`] (here): from the owner found, the request's
//!   [`Origin`] and its hops, one [`Decision`]: served here, forwarded to
//!   the owner, or (strong mode) held until the views agree. A request
//!   from this node goes to its owner. A request from a peer that was
//!   forwarded already (`hops > 0`) is not forwarded again but served
//!   where it landed (the views differ for a moment during a membership
//!   change: a brief duplicate activation is the eventual mode's
//!   documented cost, a lost call is not), unless this node is leaving
//!   (then once more). Strong mode never serves a shard this node does not
//!   own (it could not hold the shard's lease): such a request waits for a
//!   membership change or [`forward::STRONG_RECHECK`], then goes to the
//!   owner seen then, whatever its hops. A decision runs `locate` once:
//!   once per request, and once more per reroute or strong-mode wait.
//! - [`dispatch`]: carrying out `Here`: a typed message to its activation
//!   by value, an encoded one through the wire table.
//! - [`forward`]: carrying out `Forward` and `Await` until there is an
//!   answer.
//! - [`retry`]: the one reroute policy, [`retry::Reroute`], used by calls
//!   and forwards alike (tower's `retry::Policy` shape). A request the
//!   owner never saw (its connection closed before the request was
//!   written: the transport gives the body back, `Routed::Unsent`) is
//!   routed again, at most [`retry::REROUTES`] (2) times, after its owner
//!   is evicted: to the owner's heir or to this node. A request that may
//!   have reached the owner is never repeated: it fails with `NodeDown`
//!   (the handler may have run), and so does one still unsent after the
//!   last reroute. Casts are never rerouted (at most once).
//!
//! # Ordering
//!
//! The first decision, and enqueueing a request served here, happen before
//! the first await (synchronously, in the call future's first `poll` or in
//! the connection reader's dispatch): requests that arrive in order on
//! one connection, or are sent in order by one task, reach the mailbox in
//! order. A forwarded request keeps its order on the owner's connection
//! (frames keep their order); a rerouted or held one keeps none.
//!
//! # Cancel and drop
//!
//! Dropping a call's future (`node::call`) abandons the request where it
//! is: queued here, the activation skips it; sent to a peer, the
//! connection sends a `Cancel` frame and the owner skips it if it has not
//! started; a reroute or strong-mode wait not yet made is not made. A
//! request a peer sent that this node forwards or holds runs on in its own
//! task until it has an answer (the peer's `Cancel` reaches this node's
//! responder, not the owner). Every request is answered once: a reply
//! slot dropped unanswered answers `ShuttingDown`.
//!
//! # The trip of a call from a peer
//!
//! Served here (eventual mode), 16 files: `transport/conn.rs` (the reader
//! decodes the `Call` with `wire/frame.rs`, `wire/mod.rs` and builds a
//! `Responder`) → [`inbound`] → here (the wire table of `node/mod.rs`;
//! `locate`: `ring/table.rs`, `cluster/mod.rs`, `cluster/peers.rs`;
//! `decide`) → [`inbound`] (the chain: `actor/chain.rs`) → [`dispatch`]
//! (`trace.rs`'s span; `activation/mod.rs`, `mailbox.rs`, `task.rs`) →
//! the handler (`actor/finish.rs`) → the responder answers straight into
//! `transport/conn.rs`. Forwarded: the same up to the chain, then
//! [`forward`] (`Connection::call_routed`, and the responder answered from
//! the forward's task): `locate` is not run again.

pub(crate) mod dispatch;
pub(crate) mod forward;
pub(crate) mod inbound;
pub(crate) mod retry;

use std::sync::Arc;

use tokio::time::Instant;

use super::{NodeInner, WireRoute};
use crate::actor::chain::Caller;
use crate::ring::shard;
use crate::transport::Connection;
use crate::wire::TraceContext;
use crate::Error;

pub(crate) use dispatch::Sent;
pub(crate) use inbound::NodeInbound;

/// The router of a node: a borrowed view of the routing state it reads
/// (the routing table, the wire table, the cluster's connections).
#[derive(Clone, Copy)]
pub(crate) struct Router<'a> {
    node: &'a Arc<NodeInner>,
}

impl NodeInner {
    /// This node's router.
    #[inline]
    pub(crate) fn router(self: &Arc<Self>) -> Router<'_> {
        Router { node: self }
    }
}

/// An encoded request on its way: what a forward sends, what a reroute
/// routes again.
#[derive(Debug)]
pub(crate) struct Request {
    /// The handler's wire tag.
    pub(crate) tag: u64,
    /// The actor id.
    pub(crate) id: String,
    /// The encoded message (moved into the frame; given back if unsent).
    pub(crate) body: Vec<u8>,
    /// When the caller stops waiting.
    pub(crate) deadline: Instant,
    /// How many times it was forwarded before it reached this node.
    pub(crate) hops: u8,
    /// Who asked this node to route it.
    pub(crate) origin: Origin,
    /// The trace context and call chain that travel with it.
    pub(crate) along: Along,
}

impl Request {
    /// What is left of its time.
    pub(crate) fn left(&self) -> std::time::Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    /// The hops it carries when sent to its owner: a typed call's first
    /// send carries none; anything else this node sends on counts as a
    /// forward (one more, and one more again after a strong-mode wait, so
    /// that one is never forwarded again).
    fn wire_hops(&self, forced: bool) -> u8 {
        match self.origin {
            Origin::Caller => self.hops,
            Origin::Node | Origin::Peer => self.hops.saturating_add(1 + u8::from(forced)),
        }
    }
}

/// Who asked this node to route a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A typed call from this process: it goes to its owner.
    Caller,
    /// This node itself (`Node::call_wire`, a strong-mode reroute): it
    /// goes to its owner, as a forward.
    Node,
    /// A peer: forwarded at most once (see [`Router::decide`]).
    Peer,
}

/// What travels with a request besides its message: the caller's trace
/// context and call chain.
#[derive(Debug, Clone, Default)]
pub(crate) struct Along {
    pub(crate) trace: Option<TraceContext>,
    pub(crate) caller: Caller,
}

/// Where one routing decision sends a request.
pub(crate) enum Decision {
    /// Served on this node.
    Here,
    /// Forwarded to the owner, on this connection.
    Forward(Connection),
    /// Strong mode: this node does not own the shard (so it may never
    /// hold its lease) and may not forward the request again: it waits for
    /// the views to agree, then goes to the owner it sees then.
    Await,
}

/// The routing table a request is routed by and, when it came encoded,
/// the wire-table entry that serves it here.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    actor_key: u64,
    capability_key: u64,
    capability: &'static str,
    here: Option<WireRoute>,
}

impl Target {
    /// A typed request to actor type `A` (which this node may not host).
    pub(crate) fn of<A: crate::Actor>() -> Self {
        Target {
            actor_key: A::__ACTOR_KEY,
            capability_key: A::__CAPABILITY_KEY,
            capability: A::CAPABILITY,
            here: None,
        }
    }
}

impl Router<'_> {
    /// The target of an encoded request: its tag's wire-table entry. A tag
    /// this node has no handler for is `UnknownMessage` naming this node;
    /// the caller names the rest.
    pub(crate) fn target(&self, tag: u64) -> Result<Target, Error> {
        self.wire_route(tag).map(|route| self.target_of(route))
    }

    /// The target of a wire-table entry.
    fn target_of(&self, route: WireRoute) -> Target {
        Target {
            actor_key: route.actor_key,
            capability_key: route.capability_key,
            capability: self.node.catalog.actors[route.actor].1,
            here: Some(route),
        }
    }

    fn wire_route(&self, tag: u64) -> Result<WireRoute, Error> {
        self.node
            .wire
            .get(&tag)
            .copied()
            .ok_or_else(|| Error::unknown_message(&self.node.id, "", tag))
    }

    /// Who owns the shard of `id` in `target`'s table: `None` for this
    /// node, else a live connection to the owner. An owner without one is
    /// evicted and the (recomputed) table read again.
    pub(crate) fn locate(&self, target: Target, id: &str) -> Result<Option<Connection>, Error> {
        let node = self.node;
        let s = shard(id);
        loop {
            let owner = {
                let routing = node.members.routing.load();
                let table = routing
                    .actor(target.actor_key, target.capability_key)
                    .ok_or_else(|| Error::no_node(target.capability))?;
                if table.is_local(s) {
                    return Ok(None);
                }
                let owner = table.owner(s);
                if let Some(conn) = node.cluster.as_deref().and_then(|c| c.connection(owner)) {
                    return Ok(Some(conn));
                }
                owner.to_owned()
            };
            // No live connection: down by the membership's own rule.
            self.evict(&owner);
        }
    }

    /// Decides where `req` goes: [`Router::locate`] once, then the forward
    /// rule. `forced` (after a strong-mode wait): to the owner, whatever
    /// the hops.
    pub(crate) fn decide(
        &self,
        req: &Request,
        target: Target,
        forced: bool,
    ) -> Result<Decision, Error> {
        let owner = self.locate(target, &req.id)?;
        // Strong mode never serves a shard this node does not own: it
        // could not hold its lease (see `crate::lease`).
        let elsewhere = self.node.gate.is_some() && owner.is_some();
        let owner = if forced {
            owner
        } else {
            self.forward_to(owner, req.hops, req.origin)
        };
        Ok(match owner {
            Some(conn) => Decision::Forward(conn),
            None if elsewhere => Decision::Await,
            None => Decision::Here,
        })
    }

    /// Where a request this node does not own goes: to `owner` if it may
    /// still be forwarded (it came from this node, it was not forwarded
    /// yet, or this node is leaving and it was forwarded once), else
    /// nowhere (`None`): it is served here. A forwarded request whose owner
    /// this node disagrees on means the views differ during a membership
    /// change (eventual placement): serving it where it landed loses no
    /// call, at the cost of a brief duplicate activation.
    fn forward_to(
        &self,
        owner: Option<Connection>,
        hops: u8,
        origin: Origin,
    ) -> Option<Connection> {
        let conn = owner?;
        if hops == 0 || origin != Origin::Peer || (hops < 2 && self.node.is_leaving()) {
            return Some(conn);
        }
        tracing::debug!(node = %self.node.id, owner = %conn.peer().node, hops, "serving a forwarded call here: the views differ");
        None
    }

    /// Removes `peer` from the membership at once (rather than when its
    /// connection's watcher gets to it): it has no live connection, so it
    /// is down by the membership's own rule.
    pub(crate) fn evict(&self, peer: &str) {
        let node = self.node;
        // A request that found a retired connection sealed: the peer has
        // another one, it is not down.
        if node
            .cluster
            .as_ref()
            .is_some_and(|c| c.connection(peer).is_some())
        {
            return;
        }
        if peer != &*node.id && node.members.update(|m| m.remove(peer)) {
            tracing::info!(node = %node.id, peer, "peer down (no live connection)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: Origin, hops: u8) -> Request {
        Request {
            tag: 1,
            id: "a".into(),
            body: Vec::new(),
            deadline: Instant::now(),
            hops,
            origin,
            along: Along::default(),
        }
    }

    /// The hops a request carries to its owner decide whether the owner
    /// may forward it again: pinned, since a change would change routing.
    #[test]
    fn a_typed_call_goes_out_unforwarded_and_anything_else_counts_as_a_forward() {
        assert_eq!(request(Origin::Caller, 0).wire_hops(false), 0);
        assert_eq!(request(Origin::Node, 0).wire_hops(false), 1);
        assert_eq!(request(Origin::Peer, 0).wire_hops(false), 1);
        assert_eq!(request(Origin::Peer, 1).wire_hops(false), 2);
        // After a strong-mode wait: never forwarded again, even by a
        // leaving node (which forwards below 2 hops).
        assert_eq!(request(Origin::Peer, 0).wire_hops(true), 2);
        assert_eq!(request(Origin::Peer, u8::MAX).wire_hops(true), u8::MAX);
    }
}
