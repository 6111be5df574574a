//! The node: builder, handle, router and membership view.
//!
//! A [`Node`] is a cheap handle (an `Arc`). The first node started in a
//! process becomes the *default node* that [`crate::call`] and
//! [`crate::cast`] use, until it shuts down; `NodeBuilder::default_node(false)`
//! opts out (several nodes in one test process call through explicit
//! handles).

mod builder;
mod call;
mod membership;

pub use builder::{NodeBuilder, DEFAULT_CALL_TIMEOUT};
pub use call::{call, cast, Call, CallFuture};
pub use membership::Membership;

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};

use crate::activation::{Activations, AnyActivations, Shared, WireCall};
use crate::actor::ReplyTo;
use crate::ring::{shard, Placement, RoutingTable};
use crate::{Actor, Error, Handlers};

/// The process's default node.
static DEFAULT: ArcSwapOption<NodeInner> = ArcSwapOption::const_empty();

/// A running node: hosts activations of the actor types it was built with,
/// for the capabilities it declared.
#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

/// Where a wire tag goes on this node.
#[derive(Debug, Clone, Copy)]
struct WireRoute {
    actor: usize,
    capability_key: u64,
}

pub(crate) struct NodeInner {
    id: Arc<str>,
    capabilities: Vec<String>,
    strategy: Arc<dyn Placement>,
    membership: Membership,
    routing: ArcSwap<RoutingTable>,
    // A node has a handful of actor types: a linear scan beats hashing.
    actors: Vec<(TypeId, &'static str, Arc<dyn AnyActivations>)>,
    wire: HashMap<u64, WireRoute>,
    shared: Arc<Shared>,
    default_timeout: Duration,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.id)
            .field("capabilities", &self.inner.capabilities)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for NodeInner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeInner")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Starts configuring a node.
    pub fn builder() -> NodeBuilder {
        NodeBuilder::new()
    }

    pub(crate) fn from_inner(inner: Arc<NodeInner>) -> Self {
        Node { inner }
    }

    /// The process's default node, if one is running.
    pub fn default_node() -> Option<Node> {
        DEFAULT.load_full().map(Node::from_inner)
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// The capabilities this node hosts.
    pub fn capabilities(&self) -> &[String] {
        &self.inner.capabilities
    }

    /// The placement strategy this node routes with.
    pub fn placement(&self) -> &dyn Placement {
        &*self.inner.strategy
    }

    /// The membership this node routes by.
    pub fn membership(&self) -> &Membership {
        &self.inner.membership
    }

    /// The id of the node owning actor `id` of type `A`.
    pub fn owner_of<A: Actor>(&self, id: &str) -> Result<String, Error> {
        let routing = self.inner.routing.load();
        let table = routing
            .get(A::__CAPABILITY_KEY)
            .ok_or_else(|| no_node::<A>())?;
        Ok(table.owner(shard(id)).to_owned())
    }

    /// How many activations this node holds, over every actor type
    /// (including ones activating or deactivating).
    pub fn activation_count(&self) -> usize {
        self.inner.actors.iter().map(|(_, _, a)| a.count()).sum()
    }

    /// Sends an encoded message through the wire dispatch table: `tag`
    /// selects the actor type and handler, `body` is the rmp-serde message,
    /// and the result is the rmp-serde reply. This is what a peer node's
    /// request runs; it waits at most the node's default timeout.
    pub async fn call_wire(&self, tag: u64, id: &str, body: Vec<u8>) -> Result<Vec<u8>, Error> {
        let inner = &*self.inner;
        let route = *inner.wire.get(&tag).ok_or(Error::UnknownMessage {
            actor: String::from("(any)"),
            tag,
        })?;
        let routing = inner.routing.load();
        let table =
            routing
                .get(route.capability_key)
                .ok_or_else(|| Error::NoNodeForCapability {
                    capability: inner.actors[route.actor].1.to_owned(),
                })?;
        if !table.is_local(shard(id)) {
            return Err(Error::NodeDown {
                node: table.owner(shard(id)).to_owned(),
            });
        }
        let deadline = tokio::time::Instant::now() + inner.default_timeout;
        let (reply, rx) = ReplyTo::call(deadline);
        inner.actors[route.actor]
            .2
            .send_wire(id, WireCall { tag, body, reply })?;
        // The activation answers Timeout at the deadline.
        rx.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Stops the node: new calls fail with [`Error::ShuttingDown`], every
    /// activation finishes the messages already queued, runs its
    /// `on_deactivate` hook and ends; then this returns. Calling it again is
    /// harmless.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let inner = &*self.inner;
        inner.shared.begin_shutdown();
        for (_, _, acts) in &inner.actors {
            acts.stop_all();
        }
        inner
            .shared
            .drained(|| inner.actors.iter().all(|(_, _, a)| a.count() == 0))
            .await;
        // Stop being the default node (only if still this one).
        let current = DEFAULT.load();
        if current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, &self.inner))
        {
            DEFAULT.compare_and_swap(&*current, None);
        }
        tracing::info!(node = %inner.id, "node shut down");
        Ok(())
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// The activation table of `A`, if this node was built with it.
    pub(crate) fn activations<A: Handlers>(&self) -> Option<&Activations<A>> {
        self.inner.activations::<A>()
    }
}

impl NodeInner {
    pub(crate) fn activations<A: Handlers>(&self) -> Option<&Activations<A>> {
        let want = TypeId::of::<A>();
        self.actors
            .iter()
            .find(|(t, _, _)| *t == want)
            .and_then(|(_, _, a)| a.as_any().downcast_ref())
    }
}

fn no_node<A: Actor>() -> Error {
    Error::NoNodeForCapability {
        capability: A::CAPABILITY.to_owned(),
    }
}
