//! Routing: where a call for (actor type, id) goes, in one place.
//!
//! The owner of an id's shard comes from the routing table (a lock-free
//! read of the table published on every membership change): the actor
//! type's own table, over the nodes of its capability that host it (nodes
//! advertise their actor types in the handshake); a remote
//! owner's connection from the cluster's view (also lock-free). An owner
//! the table names but this node holds no live connection to is down by
//! the membership's own rule: it is evicted at once and the recomputed
//! table read again, so a call never waits for a heartbeat to find out.

use super::{NodeInner, WireRoute};
use crate::activation::Envelope;
use crate::actor::ReplyTo;
use crate::ring::shard;
use crate::transport::Connection;
use crate::{Error, Handler, Message};

/// Where a call goes.
pub(crate) enum Route {
    /// This node owns the shard.
    Local,
    /// Another node does; this is our connection to it.
    Remote(crate::transport::Connection),
}

impl NodeInner {
    /// Finds the owner of actor `id` of type `A`.
    pub(crate) fn route<A: crate::Actor>(&self, id: &str) -> Result<Route, Error> {
        Ok(
            match self.owner_of_key(A::__ACTOR_KEY, A::__CAPABILITY_KEY, A::CAPABILITY, id)? {
                None => Route::Local,
                Some(conn) => Route::Remote(conn),
            },
        )
    }

    /// Delivers a typed message to its local activation.
    pub(crate) fn dispatch_local<A: Handler<M>, M: Message>(
        &self,
        id: &str,
        msg: M,
        reply: ReplyTo<M::Reply>,
    ) -> Result<(), Error> {
        let acts = self
            .activations::<A>()
            .ok_or_else(|| Error::UnknownActorType {
                actor: A::NAME.to_owned(),
            })?;
        acts.send(id, Envelope::Local(A::__wrap(msg, reply)))
    }

    /// The handler-table entry of `tag`, and who owns the shard of `id` for
    /// its actor type (`None`: this node). A tag this node has no handler
    /// for is `UnknownMessage` naming this node; the caller names the rest.
    pub(crate) fn locate(
        &self,
        tag: u64,
        id: &str,
    ) -> Result<(WireRoute, Option<Connection>), Error> {
        let route = *self
            .wire
            .get(&tag)
            .ok_or_else(|| Error::unknown_message(&self.id, "", tag))?;
        let owner = self.owner_of_key(
            route.actor_key,
            route.capability_key,
            self.actors[route.actor].1,
            id,
        )?;
        Ok((route, owner))
    }

    /// Whether this node is leaving the cluster (it forwards what still
    /// reaches it).
    pub(crate) fn is_leaving(&self) -> bool {
        self.cluster.get().is_some_and(|c| c.is_leaving())
    }

    /// Removes `node` from the membership at once (rather than when its
    /// connection's watcher gets to it): it has no live connection, so it
    /// is down by the membership's own rule.
    pub(crate) fn evict(&self, node: &str) {
        // A call that found a retired connection sealed: the peer has
        // another one, it is not down.
        if self
            .cluster
            .get()
            .is_some_and(|c| c.connection(node).is_some())
        {
            return;
        }
        if node != &*self.id && self.update_membership(|m| m.remove(node)) {
            tracing::info!(node = %self.id, peer = node, "peer down (no live connection)");
        }
    }

    /// Who owns the shard of `id` for the actor type whose key is `actor`
    /// (of the capability whose key is `key`): `None` for this node, else a
    /// live connection to the owner. An owner without one is evicted and
    /// the (recomputed) table read again.
    pub(crate) fn owner_of_key(
        &self,
        actor: u64,
        key: u64,
        capability: &str,
        id: &str,
    ) -> Result<Option<Connection>, Error> {
        let s = shard(id);
        loop {
            let owner = {
                let routing = self.routing.load();
                let table = routing
                    .actor(actor, key)
                    .ok_or_else(|| Error::no_node(capability))?;
                if table.is_local(s) {
                    return Ok(None);
                }
                let owner = table.owner(s);
                if let Some(conn) = self.cluster.get().and_then(|c| c.connection(owner)) {
                    return Ok(Some(conn));
                }
                owner.to_owned()
            };
            // No live connection: down by the membership's own rule.
            self.evict(&owner);
        }
    }
}
