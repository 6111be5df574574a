//! Clustering: the node's connections to its peers and what runs on them.
//!
//! One concept per room:
//! - [`peers`]: the peer table (sans-IO): connections by node id, where to
//!   dial, backoff, admission;
//! - [`owner`]: the one task that owns the table, applies every event
//!   (connected, closed, dial failed, gossip, discovery) and publishes the
//!   view that calls read without a lock;
//! - [`heartbeat`]: pings (failure detection) and gossip, every heartbeat;
//! - [`follow`]: following an authoritative discovery (Consul);
//! - [`leave`]: leaving without losing a call (the first steps of
//!   `Node::shutdown`);
//! - [`retire`]: what a connection's transport asks while it is open
//!   (re-authorization, maximum lifetime), and replacing a connection
//!   without failing a call.
//!
//! What peers send on the connections is served by the [`Inbound`] the
//! node hands to [`start`] (the router's, `node::router::inbound`); the
//! control messages among it come back here through [`peer_left`],
//! [`peer_retires`] and [`peer_gossip`].
//!
//! Membership is *what this node can reach*: a node is a member while this
//! node holds a handshaken connection to it. Seeds and the addresses peers
//! gossip (`Membership` frames, every heartbeat) are only places to dial.
//! What a member hosts (capabilities, actor types) is what its handshake
//! said; gossip carries only places to dial.
//! So a dead node leaves the membership as soon as its connection drops
//! (a killed process: at once) or misses pings for `failure_timeout` (a
//! hung one), and stale gossip cannot bring it back.
//!
//! With an authoritative [`Discovery`] (Consul), membership is narrower:
//! a node is a member while the discovery reports it healthy *and* this
//! node holds a live connection to it. The discovery's view replaces the
//! addresses to dial, and gossip is ignored.
//!
//! Stop contract: [`Cluster::stop`] closes every connection this node
//! holds, at once, including ones whose handshake completes later (they
//! are closed on arrival), and ends every task of the cluster.

mod follow;
mod heartbeat;
pub(crate) mod leave;
mod owner;
pub(crate) mod peers;
mod retire;
mod supervisor;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use ractor::ActorRef;
use tokio::task::JoinHandle;

use super::members::Members;
use crate::discovery::{Discovery, LocalNode, Peers};
use crate::transport::{Ack, Bound, Connection, Inbound, Transport, TransportConfig};
use crate::util::lock;
use crate::wire::{self, Cookie, FrameCodec, Identity, Peer};
use crate::StartError;

pub(crate) use owner::Event;

/// At most this many connections per peer unless configured: one it
/// dialed and one we dialed, when both dial at once.
pub(crate) const DEFAULT_MAX_CONNECTIONS_PER_PEER: usize = 2;

/// How a node joins a cluster. Built through [`super::NodeBuilder`].
#[derive(Clone)]
pub(crate) struct ClusterConfig {
    pub(crate) name: String,
    pub(crate) cookie: Option<Cookie>,
    pub(crate) listen: Option<String>,
    pub(crate) seeds: Vec<String>,
    pub(crate) transport: Transport,
    pub(crate) heartbeat: Duration,
    pub(crate) failure_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) codec: FrameCodec,
    pub(crate) max_connections_per_peer: usize,
    /// The address peers are told to dial, when not the listener's own.
    pub(crate) advertise: Option<String>,
    pub(crate) discovery: Option<Arc<dyn Discovery>>,
    /// Seeds from a DNS name, re-resolved (static discovery).
    #[cfg(feature = "dns")]
    pub(crate) dns_seeds: Option<crate::discovery::DnsSeeds>,
    /// The sidecar node traffic goes through, if any.
    #[cfg(feature = "sidecar")]
    pub(crate) sidecar: Option<crate::sidecar::Sidecar>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("seeds", &self.seeds)
            .field("transport", &self.transport)
            .field("heartbeat", &self.heartbeat)
            .field("failure_timeout", &self.failure_timeout)
            .field("discovery", &self.discovery.is_some())
            .finish_non_exhaustive()
    }
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            name: "mesh".into(),
            cookie: None,
            listen: None,
            seeds: Vec::new(),
            #[cfg(feature = "dns")]
            dns_seeds: None,
            transport: Transport::tcp(),
            heartbeat: Duration::from_millis(500),
            failure_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            codec: FrameCodec::default(),
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            advertise: None,
            discovery: None,
            #[cfg(feature = "sidecar")]
            sidecar: None,
        }
    }
}

/// Every peer's live connections, oldest (the one calls use) first.
pub(crate) type View = HashMap<String, Vec<Connection>>;

/// The running cluster side of a node: it owns its connections, its
/// tasks (each holds only a weak reference to it, and ends with it) and
/// changes the node's [`Members`]; nothing in it reaches back into the
/// node.
pub(crate) struct Cluster {
    cfg: ClusterConfig,
    transport: TransportConfig,
    /// The membership its owner task changes.
    members: Arc<Members>,
    /// The message name of each wire tag this node handles (for logs).
    message_names: Arc<HashMap<u64, &'static str>>,
    /// The node's call timeout: how long a call may still be in flight on
    /// a connection being retired.
    call_timeout: Duration,
    /// Published by the owner task after every event: calls read it
    /// without a lock.
    view: ArcSwap<View>,
    /// Bumped after every publish of `view`.
    published: tokio::sync::watch::Sender<()>,
    /// The peer-table owner (an actor, see [`supervisor`]): replaced if
    /// it fails.
    owner: ArcSwap<ActorRef<Event>>,
    /// The owner's and the heartbeat's supervisor.
    supervisor: ActorRef<supervisor::SupervisorMsg>,
    /// Tells the discovery follower to send its last view again (to a
    /// restarted owner).
    rediscover: Arc<tokio::sync::Notify>,
    /// Set by `stop`: connections that complete later are closed at once.
    stopped: AtomicBool,
    /// Set when the node starts leaving (see [`leave`]).
    leaving: AtomicBool,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Cluster {
    /// The address peers dial to reach this node.
    pub(crate) fn addr(&self) -> &str {
        &self.transport.identity.addr
    }

    /// The sidecar node traffic goes through, if any.
    #[cfg(feature = "sidecar")]
    pub(crate) fn sidecar(&self) -> Option<&crate::sidecar::Sidecar> {
        self.cfg.sidecar.as_ref()
    }

    /// The authoritative discovery, if the node has one.
    pub(crate) fn discovery(&self) -> Option<Arc<dyn Discovery>> {
        self.cfg.discovery.clone()
    }

    /// The live connection that carries calls to `node`, if any.
    pub(crate) fn connection(&self, node: &str) -> Option<Connection> {
        peers::carrier(self.view.load().get(node)?).cloned()
    }

    /// Every peer's connection that carries calls.
    pub(crate) fn connections(&self) -> Vec<Connection> {
        self.view
            .load()
            .values()
            .filter_map(|conns| peers::carrier(conns).cloned())
            .collect()
    }

    /// One open connection to each connected peer, the carrier if it has
    /// one, else a sealed or retiring one (the admin views ask peers that
    /// left the routing about themselves).
    #[cfg(feature = "admin")]
    pub(crate) fn open_connections(&self) -> Vec<Connection> {
        self.view
            .load()
            .values()
            .filter_map(|conns| {
                peers::carrier(conns)
                    .or_else(|| conns.iter().find(|c| !c.is_closed()))
                    .cloned()
            })
            .collect()
    }

    /// Every live connection to `node`, oldest first (operators' view).
    #[cfg_attr(not(feature = "admin"), allow(dead_code))] // read by the admin views only
    pub(crate) fn connections_to(&self, node: &str) -> Vec<Connection> {
        self.view
            .load()
            .get(node)
            .map(|conns| conns.iter().filter(|c| !c.is_closed()).cloned().collect())
            .unwrap_or_default()
    }

    /// Closes every connection to `node` (it stopped answering).
    pub(crate) fn close_peer(&self, node: &str) {
        if let Some(conns) = self.view.load().get(node) {
            for c in conns {
                c.close();
            }
        }
    }

    /// Hands an event to the owner; after `stop`, a connection in it is
    /// closed (the event's drop does it).
    pub(crate) fn send(&self, event: Event) {
        let _ = self.owner.load().cast(event);
    }

    /// Makes the peer-table owner (`heartbeat`: the heartbeat) fail, to
    /// test the supervision.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn crash_worker(&self, heartbeat: bool) {
        if heartbeat {
            if let Some(cell) = self
                .supervisor
                .get_children()
                .into_iter()
                .find(|c| c.get_id() != self.owner.load().get_id())
            {
                let _ = cell.send_message(heartbeat::Beat::Crash);
            }
        } else {
            self.send(Event::Crash);
        }
    }

    /// A peer table as the configuration starts it: the seeds to dial,
    /// and with a discovery, admission gated until it speaks.
    fn fresh_table(&self) -> peers::PeerTable<Connection> {
        fresh_table(&self.cfg, self.node())
    }

    /// Whether the node is leaving (see [`leave`]).
    pub(crate) fn is_leaving(&self) -> bool {
        self.leaving.load(Ordering::SeqCst)
    }

    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::SeqCst)
    }

    /// Closes every connection and stops the workers and tasks.
    pub(crate) fn stop(&self) {
        self.stopped.store(true, Ordering::SeqCst);
        self.supervisor.stop(None);
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        // The owner publishes before it checks `stopped`: whatever it
        // admitted is in the view read here, or it closes it itself.
        let view = self.view.swap(Arc::new(View::new()));
        for c in view.values().flatten() {
            c.close();
        }
    }
}

impl Drop for Cluster {
    /// A node dropped without `stop` leaves no connection open behind it
    /// (their tasks would keep answering pings for a node that is gone).
    fn drop(&mut self) {
        self.stop();
    }
}

/// What [`Cluster::new`] leaves for [`Cluster::start`]: the bound
/// listener.
pub(crate) struct Pending {
    bound: Option<Bound>,
}

/// What a cluster receives from its node: narrow collaborators, never
/// the node.
pub(crate) struct Parts {
    /// The membership its owner changes.
    pub(crate) members: Arc<Members>,
    /// The message name of each wire tag this node handles (for logs).
    pub(crate) message_names: Arc<HashMap<u64, &'static str>>,
    /// The node's call timeout.
    pub(crate) call_timeout: Duration,
    /// What serves the frames peers send (the node's router).
    pub(crate) inbound: Arc<dyn Inbound>,
}

/// A peer table as `cfg` starts it for node `node`: the seeds to dial,
/// and with a discovery, admission gated until it speaks.
fn fresh_table(cfg: &ClusterConfig, node: &str) -> peers::PeerTable<Connection> {
    let mut table = peers::PeerTable::new(node, cfg.max_connections_per_peer, cfg.heartbeat);
    table.add_seeds(cfg.seeds.iter().map(String::as_str));
    if cfg.discovery.is_some() {
        // Gate admission from the start: nothing is a member before the
        // discovery has said so.
        table.on_discovered(std::iter::empty());
    }
    table
}

/// Binds the listener a cluster config asks for (before the node's first
/// other side effect): `None` if it does not listen.
pub(crate) async fn bind(cfg: &ClusterConfig, node: &str) -> Result<Option<Bound>, StartError> {
    match &cfg.listen {
        None => Ok(None),
        Some(addr) => cfg.transport.bind(addr, node).await.map(Some),
    }
}

/// The address peers dial: the advertised one, else the bound one, else
/// none (a node that only dials).
pub(crate) fn advertised(cfg: &ClusterConfig, bound: Option<&Bound>) -> String {
    match (&cfg.advertise, bound) {
        (Some(a), _) => a.clone(),
        (None, Some(b)) => b.addr(),
        (None, None) => String::new(),
    }
}

impl Cluster {
    /// The cluster side of the node `identity` names (its `addr` from
    /// [`advertised`]), listening on `bound`. Its workers exist from here
    /// (the owner idles: nothing reaches it before [`Cluster::start`]).
    /// Call within a runtime.
    pub(crate) fn new(
        cfg: ClusterConfig,
        identity: Identity,
        cookie: Cookie,
        bound: Option<Bound>,
        parts: Parts,
    ) -> (Arc<Self>, Pending) {
        let mut transport = TransportConfig::new(identity, cookie);
        transport.codec = cfg.codec;
        transport.handshake_timeout = cfg.handshake_timeout;
        let Parts {
            members,
            message_names,
            call_timeout,
            inbound,
        } = parts;
        let cluster = Arc::new_cyclic(|me: &std::sync::Weak<Cluster>| {
            // Unnamed actors: spawning fails only on a taken name.
            #[allow(clippy::expect_used)]
            let (supervisor, _) = ractor::ActorRuntime::spawn_instant(
                None,
                supervisor::Supervisor,
                supervisor::SupervisorState {
                    cluster: me.clone(),
                    inbound: inbound.clone(),
                    heartbeat: None,
                },
            )
            .expect("an unnamed actor spawns");
            let table = fresh_table(&cfg, &transport.identity.node);
            #[allow(clippy::expect_used)]
            let (owner, _) = ractor::ActorRuntime::spawn_linked_instant(
                None,
                owner::Owner,
                owner::OwnerState {
                    cluster: me.clone(),
                    table,
                    inbound,
                },
                supervisor.get_cell(),
            )
            .expect("an unnamed actor spawns");
            Cluster {
                cfg,
                transport,
                members,
                message_names,
                call_timeout,
                view: ArcSwap::from_pointee(View::new()),
                published: tokio::sync::watch::channel(()).0,
                owner: ArcSwap::from_pointee(owner),
                supervisor,
                rediscover: Arc::new(tokio::sync::Notify::new()),
                stopped: AtomicBool::new(false),
                leaving: AtomicBool::new(false),
                tasks: Mutex::new(Vec::new()),
            }
        });
        (cluster, Pending { bound })
    }

    /// This node's id.
    pub(crate) fn node(&self) -> &str {
        &self.transport.identity.node
    }

    /// A peer is leaving (a `Leave` frame): the owner task routes nothing
    /// new to it, then acks.
    pub(crate) fn peer_left(&self, from: &Peer, ack: Ack) {
        self.send(Event::Left(from.node.clone(), from.incarnation, ack));
    }

    /// A peer retires `conn` (a `Retire` frame): see [`retire`].
    pub(crate) fn peer_retires(self: &Arc<Self>, conn: Connection, ack: Ack) {
        tokio::spawn(retire::retired_by_peer(Arc::downgrade(self), conn, ack));
    }

    /// A peer's membership view (gossip): places to dial.
    pub(crate) fn peer_gossip(&self, membership: wire::MembershipFrame) {
        self.send(Event::Gossip(membership));
    }

    /// Starts serving the listener, the sidecar, the owner task, the
    /// heartbeat, dialing the seeds, and the discovery. `inbound` serves
    /// what peers send on every connection (the node's router). On an
    /// error, what it started is stopped.
    pub(crate) async fn start(
        self: &Arc<Self>,
        pending: Pending,
        inbound: Arc<dyn Inbound>,
    ) -> Result<(), StartError> {
        let listening = pending
            .bound
            .map(|b| b.serve(self.transport.clone(), inbound));
        // The sidecar forwards to the listener: start it once that is
        // serving, before registering and dialing.
        #[cfg(feature = "sidecar")]
        if let Some(sidecar) = &self.cfg.sidecar {
            let Some(l) = &listening else {
                return Err(StartError::SidecarWithoutListener);
            };
            sidecar
                .start(l.addr())
                .await
                .map_err(|e| StartError::Sidecar {
                    reason: e.to_string(),
                })?;
        }
        let weak = Arc::downgrade(self);
        // Dial the seeds at once, and beat.
        self.send(Event::Tick);
        let _ = self.supervisor.cast(supervisor::SupervisorMsg::Start);
        let mut tasks = Vec::new();
        if let Some(mut l) = listening {
            let weak = weak.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(conn) = l.accepted().await {
                    match weak.upgrade() {
                        Some(c) => c.send(Event::connected(conn, None)),
                        None => {
                            conn.close();
                            return;
                        }
                    }
                }
            }));
        }
        #[cfg(feature = "sidecar")]
        if let Some(sidecar) = self.sidecar() {
            // An upstream going live (or moving) is news for the peer
            // table: that peer is dialed at once, not at its next backoff
            // tick.
            let ports = sidecar.ports().clone();
            let weak = weak.clone();
            tasks.push(tokio::spawn(async move {
                loop {
                    let nodes = ports.retargeted().await;
                    let Some(cluster) = weak.upgrade() else {
                        return;
                    };
                    cluster.send(Event::Retarget(nodes));
                }
            }));
        }
        #[cfg(feature = "dns")]
        if let Some(seeds) = self.cfg.dns_seeds.clone() {
            let resolver = seeds
                .resolver()
                .map_err(|reason| StartError::invalid("NodeBuilder::dns_seeds", reason))?;
            let weak = weak.clone();
            tasks.push(tokio::spawn(async move {
                let mut every = tokio::time::interval(seeds.period());
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut failures = 0u64;
                loop {
                    every.tick().await;
                    let answer = seeds.resolve(&resolver).await;
                    let Some(cluster) = weak.upgrade() else {
                        return;
                    };
                    match answer {
                        Ok(addrs) => {
                            failures = 0;
                            cluster.send(Event::DnsSeeds(addrs));
                        }
                        Err(e) => {
                            failures += 1;
                            if failures == 1 {
                                tracing::warn!(node = %cluster.node(), "DNS seeds: {e}; keeping the last answer");
                            } else {
                                tracing::debug!(node = %cluster.node(), failures, "DNS seeds: {e}");
                            }
                        }
                    }
                }
            }));
        }
        lock(&self.tasks).extend(tasks);
        if let Some(discovery) = self.discovery() {
            let me = LocalNode {
                cluster: self.cfg.name.clone(),
                node: self.node().to_owned(),
                addr: self.addr().to_owned(),
                capabilities: self.transport.identity.capabilities.clone(),
                protocol: wire::VERSION,
            };
            let (tx, rx) = tokio::sync::watch::channel(Peers::new());
            if let Err(e) = discovery.start(me, tx).await {
                self.stop();
                #[cfg(feature = "sidecar")]
                if let Some(sidecar) = self.sidecar() {
                    sidecar.stop().await;
                }
                return Err(e);
            }
            let follow = tokio::spawn(follow::run(weak, rx, self.rediscover.clone()));
            lock(&self.tasks).push(follow);
        }
        Ok(())
    }
}
