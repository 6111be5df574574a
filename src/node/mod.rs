//! The node: builder, handle, router and membership view.
//!
//! A [`Node`] is a cheap handle (an `Arc`). The first node started in a
//! process becomes the *default node* that [`crate::call`] and
//! [`crate::cast`] use, until it shuts down; `NodeBuilder::default_node(false)`
//! opts out (several nodes in one test process call through explicit
//! handles).
//!
//! The node is built bottom-up from parts that own their state, in one
//! expression of `NodeBuilder::start` once every setting is checked and
//! every port bound: the `Catalog` of activation tables and `Members`
//! (the membership and routing table) in [`members`], the cluster in
//! [`cluster`] (it receives `Members`, its call timeout and the router as
//! its `Inbound`, never the node), the lease keeper, the admin server.
//! Each part that runs tasks or actors holds its way back weakly and ends
//! with its owner; nothing is wired in after construction. The node is
//! what the parts serve: the activations' `Host`, the router's state, the
//! admin endpoint's `Source`. Teardown is written once, in [`lifecycle`].

#[cfg(feature = "admin")]
mod admin;
mod builder;
mod call;
mod cluster;
mod ctx;
mod handle;
mod lifecycle;
mod members;
mod reminders;
mod router;

pub use crate::membership::{MemberInfo, Membership};
pub use builder::{NodeBuilder, DEFAULT_CALL_TIMEOUT};
pub use call::{call, cast, Call, CallFuture};
pub use handle::{ActorHandle, ActorRef, Flatten, HandleCall};

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::sync::watch;

use crate::activation::Shared;
use crate::ring::{shard, Placement};
use crate::{Actor, Error};
use members::{Catalog, Members};

/// The process's default node.
static DEFAULT: ArcSwapOption<NodeInner> = ArcSwapOption::const_empty();

/// A running node: hosts activations of the actor types it was built with,
/// for the capabilities it declared.
///
/// Drop contract: the node runs while a handle from
/// [`NodeBuilder::start`] (or a clone of it, or one from
/// [`Node::default_node`]) is alive. Dropping the last one without
/// [`Node::shutdown`] stops the node at once: its connections close (peers
/// see it leave), it leaves its discovery (deregistering in the background
/// when a runtime is there), its activations stop after the messages
/// already queued, and it stops being the default node. The handle an
/// actor gets from [`Ctx::node`](crate::Ctx::node) does not keep the node
/// running.
#[derive(Clone)]
pub struct Node {
    // Dropped first, while `inner` is still alive for it to stop.
    _handle: Option<Arc<Handle>>,
    inner: Arc<NodeInner>,
}

/// Shared by the user's handles; its drop abandons the node.
#[derive(Debug)]
pub(crate) struct Handle(std::sync::Weak<NodeInner>);

impl Drop for Handle {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.abandon();
        }
    }
}

/// Where a wire tag goes on this node.
#[derive(Debug, Clone, Copy)]
pub(crate) struct WireRoute {
    pub(crate) actor: usize,
    pub(crate) capability_key: u64,
    /// The key of the actor type's own routing table.
    pub(crate) actor_key: u64,
}

pub(crate) struct NodeInner {
    id: Arc<str>,
    /// Which run of this node id this is: random at each start, so peers
    /// tell a restarted node from the one that left.
    incarnation: u64,
    capabilities: Vec<String>,
    strategy: Arc<dyn Placement>,
    /// The membership and the routing table computed from it.
    members: Arc<Members>,
    /// The cluster side, if the node is clustered.
    cluster: Option<Arc<cluster::Cluster>>,
    /// The activation tables, one per actor type.
    catalog: Arc<Catalog>,
    wire: HashMap<u64, WireRoute>,
    shared: Arc<Shared>,
    default_timeout: Duration,
    shutdown_timeout: Duration,
    /// The user's handles, shared; gone once they all are.
    handle: std::sync::Weak<Handle>,
    /// The values given with `NodeBuilder::provide`, by type.
    deps: HashMap<TypeId, Arc<dyn std::any::Any + Send + Sync>>,
    /// Where activation starts and ends are recorded, if anywhere.
    history: Option<Arc<dyn crate::history::History>>,
    /// Where the actors' durable state lives, if anywhere; released by
    /// the teardown (see `lifecycle`).
    pub(crate) state: std::sync::Mutex<Option<Arc<dyn crate::state::StateStore>>>,
    /// What the node has seen of its store (`/admin/state`).
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) state_stats: Option<Arc<crate::state::observed::Stats>>,
    /// Strong mode: the gate activations pass, and its keeper (see
    /// [`crate::lease`]).
    pub(crate) gate: Option<Arc<crate::lease::gate::Gate>>,
    pub(crate) keeper: Option<crate::lease::keeper::Keeper>,
    /// The reminder keeper, on a node with a store that hosts an actor
    /// type taking reminders (see [`crate::reminder`]).
    pub(crate) reminders: Option<crate::reminder::Keeper>,
    /// The admin endpoint, if asked for (stops when the node is dropped).
    #[cfg(feature = "admin")]
    admin: Option<crate::admin::Server>,
    /// What the admin views keep (call figures per actor type, the write
    /// token, the state views granted).
    #[cfg(feature = "admin")]
    pub(crate) ops: admin::Ops,
    /// Whether the node is draining or drained (see `Node::drain`).
    pub(crate) drain: DrainState,
}

/// Where a node is in [`Node::drain`]: serving, draining (its peers route
/// around it, its activations finish), drained (with what was pending if
/// it timed out).
#[derive(Debug)]
pub(crate) struct DrainState(tokio::sync::watch::Sender<Drain>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Drain {
    Serving,
    Draining,
    /// `Some`: what was still pending at the shutdown timeout.
    Drained(Option<String>),
}

impl Default for DrainState {
    fn default() -> Self {
        DrainState(tokio::sync::watch::Sender::new(Drain::Serving))
    }
}

impl DrainState {
    /// `serving`, `draining`, `drained` or `drain timed out`.
    pub(crate) fn as_str(&self) -> &'static str {
        match &*self.0.borrow() {
            Drain::Serving => "serving",
            Drain::Draining => "draining",
            Drain::Drained(None) => "drained",
            Drain::Drained(Some(_)) => "drain timed out",
        }
    }

    /// Moves to draining; false if it was not serving.
    fn begin(&self) -> bool {
        self.0.send_if_modified(|s| {
            let serving = *s == Drain::Serving;
            if serving {
                *s = Drain::Draining;
            }
            serving
        })
    }

    fn done(&self, pending: Option<String>) {
        self.0.send_replace(Drain::Drained(pending));
    }

    /// Resolves once the drain has ended: what was pending if it timed
    /// out.
    async fn ended(&self) -> Option<String> {
        let mut rx = self.0.subscribe();
        let ended = match rx.wait_for(|s| matches!(s, Drain::Drained(_))).await {
            Ok(s) => match &*s {
                Drain::Drained(pending) => pending.clone(),
                _ => None,
            },
            // The sender lives in the node, which this waits on: not gone.
            Err(_) => None,
        };
        ended
    }
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

    /// An internal handle (activations, timers): it does not keep the
    /// node running.
    pub(crate) fn from_inner(inner: Arc<NodeInner>) -> Self {
        Node {
            inner,
            _handle: None,
        }
    }

    /// The user's first handle of a node just started: `handle` is the
    /// one the node was built with.
    pub(crate) fn first_handle(inner: Arc<NodeInner>, handle: Arc<Handle>) -> Self {
        Node {
            inner,
            _handle: Some(handle),
        }
    }

    /// The process's default node, if one is running.
    pub fn default_node() -> Option<Node> {
        let inner = DEFAULT.load_full()?;
        let handle = inner.handle.upgrade();
        Some(Node {
            inner,
            _handle: handle,
        })
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

    /// The membership this node routes by (a snapshot).
    pub fn membership(&self) -> Membership {
        self.inner.members.snapshot()
    }

    /// Every membership change, to await instead of polling: for example
    /// `node.membership_changes().wait_for(|m| m.len() == 3).await`.
    pub fn membership_changes(&self) -> watch::Receiver<Membership> {
        self.inner.members.changes()
    }

    /// Whether the node is ready to take traffic (what `/readyz` answers
    /// with the feature `admin`): it has started, is not leaving, and sees
    /// at least the members `NodeBuilder::min_members` asks for (itself
    /// included; 1 unless set). Until it has seen them once its calls fail
    /// with [`Error::NotEnoughMembers`]; after that it serves even when
    /// members are lost, but is not ready while it sees fewer.
    pub fn is_ready(&self) -> bool {
        self.inner.members.readiness().ready()
    }

    /// The address peers dial to reach this node, if it is clustered and
    /// listening.
    pub fn addr(&self) -> Option<&str> {
        self.inner
            .cluster
            .as_deref()
            .map(|c| c.addr())
            .filter(|a| !a.is_empty())
    }

    /// The value of type `T` this node was given with
    /// [`NodeBuilder::provide`] (see [`crate::Ctx::get`]).
    pub fn get<T: Send + Sync + 'static>(&self) -> Result<&T, crate::MissingDependency> {
        self.inner
            .deps
            .get(&TypeId::of::<T>())
            .and_then(|v| v.downcast_ref::<T>())
            .ok_or(crate::MissingDependency {
                type_name: std::any::type_name::<T>(),
            })
    }

    /// The id of the node owning actor `id` of type `A`: among the nodes
    /// of its capability that host `A`.
    pub fn owner_of<A: Actor>(&self, id: &str) -> Result<String, Error> {
        let routing = self.inner.members.routing.load();
        let table = routing
            .actor(A::__ACTOR_KEY, A::__CAPABILITY_KEY)
            .ok_or_else(|| Error::no_node(A::CAPABILITY).in_call(A::NAME, id, ""))?;
        Ok(table.owner(shard(id)).to_owned())
    }

    /// How many activations this node holds, over every actor type
    /// (including ones activating or deactivating).
    pub fn activation_count(&self) -> usize {
        self.inner.catalog.count()
    }

    /// Sends an encoded message through the wire dispatch table: `tag`
    /// selects the actor type and handler, `body` is the rmp-serde message,
    /// and the result is the rmp-serde reply. This is what a peer node's
    /// request runs; it waits at most the node's default timeout.
    #[cfg_attr(feature = "internals", mesh_macros::expose)]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) async fn call_wire(
        &self,
        tag: u64,
        id: &str,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, Error> {
        let inner = &self.inner;
        let reply = inner
            .router()
            .serve(router::Request {
                tag,
                id: id.to_owned(),
                body,
                deadline: tokio::time::Instant::now() + inner.default_timeout,
                hops: 0,
                origin: router::Origin::Node,
                along: Default::default(),
            })
            .await?;
        Ok(reply.to_vec())
    }

    /// Cuts this node off the cluster at once, as a crash would look to its
    /// peers: every connection closes (their calls in flight here fail with
    /// `NodeDown`), and it stops dialing. Local activations keep running.
    /// For failure tests (hidden feature `internals`); [`Node::shutdown`] is
    /// the clean exit.
    #[cfg_attr(feature = "internals", mesh_macros::expose)]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn sever(&self) {
        use std::future::Future as _;
        let mut teardown = std::pin::pin!(self.inner.teardown(lifecycle::Exit::Sever));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        // `Sever` awaits nothing (see `lifecycle`): done in one poll.
        let done = teardown.as_mut().poll(&mut cx).is_ready();
        debug_assert!(done, "a severed node's teardown waited");
    }

    /// Makes one of the cluster's long-lived workers fail (a panic): the
    /// peer-table owner, or with `heartbeat` the heartbeat. For tests of
    /// their supervision (hidden feature `internals`; see
    /// `node/cluster/supervisor.rs`). Nothing on a node that is not
    /// clustered.
    #[cfg_attr(feature = "internals", mesh_macros::expose)]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn crash_worker(&self, heartbeat: bool) {
        if let Some(c) = &self.inner.cluster {
            c.crash_worker(heartbeat);
        }
    }

    /// Stops the node without losing a call: first it leaves the cluster
    /// gracefully (peers are told and acknowledge, so they route nothing
    /// new here; activations finish what is queued and run their
    /// `on_deactivate` hooks; calls that still arrive are forwarded to
    /// their new owners, and every call peers sent is answered: see the
    /// `leave` module docs in `node/cluster`). Then new calls fail with
    /// [`Error::ShuttingDown`], the node leaves its discovery and closes
    /// its connections, and this returns. If activations are still busy
    /// after the shutdown timeout (30 s unless
    /// `NodeBuilder::shutdown_timeout` says otherwise: a handler that
    /// never returns), it returns [`Error::ShutdownTimeout`], naming what
    /// was pending, and leaves them to the runtime. Calling it again is
    /// harmless.
    pub async fn shutdown(&self) -> Result<(), Error> {
        let inner = &*self.inner;
        let started = tokio::time::Instant::now();
        // What was pending at the timeout, if it passed.
        let mut timed_out = None;
        if inner.cluster.is_some() && !inner.shared.is_shutting_down() {
            cluster::leave::announce(&self.inner).await;
            inner.hand_off_all();
            if let Err(what) = cluster::leave::drain(&self.inner, inner.shutdown_timeout).await {
                tracing::warn!(node = %inner.id, "shutdown timed out in {what}");
                timed_out = Some(what);
            }
        }
        let in_time = self
            .inner
            .teardown(lifecycle::Exit::Shutdown {
                deadline: started + inner.shutdown_timeout,
            })
            .await;
        if !in_time && timed_out.is_none() {
            let what = format!("{} activations still busy", self.activation_count());
            tracing::warn!(node = %inner.id, "shutdown timed out: {what}");
            timed_out = Some(what);
        }
        if let Some(pending) = timed_out {
            return Err(Error::ShutdownTimeout { pending });
        }
        tracing::info!(node = %inner.id, "node shut down");
        Ok(())
    }

    /// Drains the node before maintenance (a *cordon*): it leaves the
    /// routing as [`Node::shutdown`] does (peers are told and acknowledge,
    /// so they place nothing new here; its activations finish what is
    /// queued, run `on_deactivate` and are activated again on their new
    /// owners at their next call, their durable state with them; calls that
    /// still arrive are forwarded), then keeps running: its connections
    /// stay open, its own callers' calls go to the other members, and the
    /// admin views and `/readyz` say it is draining (503: not a member).
    /// Returns once its activations have ended and every call peers sent
    /// was answered, or with [`Error::ShutdownTimeout`] after the shutdown
    /// timeout, naming what was pending.
    ///
    /// One way: a drained node does not take shards again (its peers took
    /// this run of it, its incarnation, for gone); restart it to serve
    /// again, which is what maintenance does. [`Node::shutdown`] after it
    /// is the usual end. Calling it again is harmless: every call waits
    /// for the one drain and returns its outcome. A node that is not
    /// clustered has nobody to hand off to: [`Error::Start`] with
    /// [`crate::StartError::InvalidSetting`] naming `Node::drain`.
    ///
    /// Cancel: the drain runs on its own task, started before the first
    /// await; dropping this future stops the waiting, not the drain.
    pub async fn drain(&self) -> Result<(), Error> {
        self.start_drain()?;
        match self.inner.drain.ended().await {
            None => Ok(()),
            Some(pending) => Err(Error::ShutdownTimeout { pending }),
        }
    }

    /// Starts [`Node::drain`] on a task of its own, unless it is under way
    /// or done; returns at once, with the state as it was before.
    pub(crate) fn start_drain(&self) -> Result<&'static str, Error> {
        let inner = &self.inner;
        if inner.cluster.is_none() {
            return Err(Error::Start(crate::StartError::invalid(
                "Node::drain",
                "the node is not clustered: there is no member to hand its actors to",
            )));
        }
        if inner.shared.is_shutting_down() {
            return Err(Error::ShuttingDown);
        }
        let was = inner.drain.as_str();
        if !inner.drain.begin() {
            return Ok(was);
        }
        let node = self.inner.clone();
        tokio::spawn(async move {
            tracing::info!(node = %node.id, "draining: leaving the routing, handing off the activations");
            cluster::leave::announce(&node).await;
            node.hand_off_all();
            match cluster::leave::drain(&node, node.shutdown_timeout).await {
                Ok(()) => {
                    tracing::info!(node = %node.id, "drained: no activation left, still connected");
                    node.drain.done(None);
                }
                Err(pending) => {
                    tracing::warn!(node = %node.id, "drain timed out in {pending}");
                    node.drain.done(Some(pending));
                }
            }
        });
        Ok(was)
    }

    /// `serving`, `draining`, `drained` (see [`Node::drain`]), or
    /// `drain timed out` (its activations did not end within the shutdown
    /// timeout; the node still routes around itself).
    pub fn drain_state(&self) -> &'static str {
        self.inner.drain.as_str()
    }

    /// The node's own state (its activations' host, in tests).
    #[cfg(test)]
    pub(crate) fn inner_arc(&self) -> &Arc<NodeInner> {
        &self.inner
    }

    pub(crate) fn inner(&self) -> &NodeInner {
        &self.inner
    }
}

/// The node is its activations' host: what they need of it, and nothing
/// more (see [`crate::activation::Host`]).
impl crate::activation::Host for NodeInner {
    fn node_ref(self: Arc<Self>) -> Arc<crate::actor::NodeRef> {
        ctx::node_ref(Node::from_inner(self))
    }

    fn record(&self, phase: crate::history::Phase, actor: &'static str, id: &str, token: u64) {
        NodeInner::record(self, phase, actor, id, token);
    }

    fn will_hold(&self, key: u64, capability: u64, s: u16) -> bool {
        NodeInner::will_hold(self, key, capability, s)
    }

    fn reroute(self: Arc<Self>, id: &str, call: crate::activation::WireCall) {
        self.reroute_wire(id, call);
    }
}

impl NodeInner {
    /// Records an activation's start or end, if the node keeps a history.
    pub(crate) fn record(
        &self,
        phase: crate::history::Phase,
        actor: &'static str,
        id: &str,
        token: u64,
    ) {
        if let Some(h) = &self.history {
            h.record(
                crate::history::ActivationEvent::new(
                    phase,
                    std::time::SystemTime::now(),
                    &*self.id,
                    self.incarnation,
                    actor,
                    id,
                )
                .with_token(token),
            );
        }
    }

    /// Strong mode: whether this node holds, or is about to lock, shard
    /// `s` of the actor type keyed `key` of capability `cap` (not draining
    /// it, not leaving, and its ring names it the owner).
    pub(crate) fn will_hold(&self, key: u64, cap: u64, s: u16) -> bool {
        let Some(gate) = &self.gate else {
            return true;
        };
        if gate.draining(key, s) || self.is_leaving() || self.shared.is_shutting_down() {
            return false;
        }
        self.members
            .routing
            .load()
            .actor(key, cap)
            .is_some_and(|t| t.is_local(s))
    }

    /// Strong mode: routes again an encoded call queued for an activation
    /// this node will not hold (its shard moved, or the node is leaving):
    /// to the owner the ring names now, answering the original caller
    /// (see [`router::Router::reroute`]).
    pub(crate) fn reroute_wire(self: &Arc<Self>, id: &str, call: crate::activation::WireCall) {
        self.router().reroute(id, call);
    }

    /// Whether this node is leaving the cluster (it forwards what still
    /// reaches it).
    pub(crate) fn is_leaving(&self) -> bool {
        self.cluster.as_ref().is_some_and(|c| c.is_leaving())
    }

    /// Strong mode, leaving: every shard hands off (the keeper marks them
    /// draining and unlocks each once its activations end), so the new
    /// owners can serve the calls this node forwards while it drains.
    pub(crate) fn hand_off_all(&self) {
        let Some(gate) = &self.gate else {
            return;
        };
        for (_, _, acts) in &self.catalog.actors {
            acts.drain_moved(&|_| false);
        }
        gate.drained.notify_one();
    }
}
