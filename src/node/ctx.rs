//! What a handler's [`Ctx`] knows of its node: the methods of `Ctx` that
//! need the node, beside its definition in `actor/` (which does not import
//! the node: see its module docs).

use std::sync::Arc;

use crate::actor::NodeRef;
use crate::{Ctx, MissingDependency, Node};

/// The node as its activations' contexts hold it (one per node, shared:
/// see [`crate::activation::Host::node_ref`]).
pub(crate) fn node_ref(node: Node) -> Arc<NodeRef> {
    Arc::new(NodeRef(Box::new(node)))
}

impl Ctx {
    /// The node running this activation, to call other actors.
    pub fn node(&self) -> &Node {
        match self.host.0.downcast_ref::<Node>() {
            Some(node) => node,
            // `node_ref` above is the only way a `NodeRef` is built.
            None => unreachable!("a Ctx is built with its Node"),
        }
    }

    /// The value of type `T` the node was given with
    /// [`NodeBuilder::provide`](crate::NodeBuilder::provide): a database
    /// pool, a configuration, a client. One value per type (wrap two of one
    /// type in newtypes). A missing one is an error that says so, to
    /// return from `activate` with `?`.
    ///
    /// Cost: one hash lookup and one downcast.
    pub fn get<T: Send + Sync + 'static>(&self) -> Result<&T, MissingDependency> {
        self.node().get::<T>()
    }

    /// The node's state store, this activation's row, and its fencing
    /// token (strong mode), for [`crate::state::State::load`].
    #[allow(clippy::type_complexity)]
    pub(crate) fn state_binding(
        &self,
    ) -> Result<
        (
            Arc<dyn crate::state::StateStore>,
            crate::state::StateKey,
            Option<u64>,
        ),
        crate::Error,
    > {
        let inner = self.node().inner();
        let actor = self.actor_name();
        let Some(store) = crate::util::lock(&inner.state).clone() else {
            return Err(crate::Error::State {
                actor: actor.to_owned(),
                id: self.id().to_owned(),
                error: crate::state::StoreError::Unavailable(
                    "this node has no state store (none was given with NodeBuilder::state(..), such as mesh::state::RedbStore::open(\"state.redb\")?, or the node is stopping)".into(),
                ),
            });
        };
        let capability = inner.catalog.capability_of(actor).unwrap_or_default();
        let (shard, token) = self.lease();
        let key = crate::state::StateKey {
            kind: format!("{capability}/{actor}").into(),
            id: self.id_arc(),
            shard,
        };
        Ok((store, key, (token != 0).then_some(token)))
    }

    /// Strong mode ([`crate::lease`]): what this activation fences its
    /// writes to outside state with: its shard's lock key, the session
    /// holding it and the fencing token. `None` on a node in eventual mode
    /// (and outside an activation's life). Pass it to
    /// `mesh::consul::Consul::fenced_put`, or give the token to any
    /// store that refuses tokens below the highest it has seen.
    pub fn fence(&self) -> Option<crate::lease::Fence> {
        let (shard, token) = self.lease();
        if token == 0 {
            return None;
        }
        let inner = self.node().inner();
        let gate = inner.gate.as_ref()?;
        let session = gate.session()?;
        let actor = self.actor_name();
        let capability = inner.catalog.capability_of(actor)?;
        let key = crate::ring::actor_key(capability, actor);
        Some(crate::lease::Fence {
            key: gate.lock_key_of(key, shard)?,
            session: session.to_string(),
            token,
        })
    }
}
