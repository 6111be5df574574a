//! Configuring and starting a node.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::cluster::{self, ClusterConfig};
use super::members::{Catalog, Members};
use super::{Membership, Node, NodeInner, WireRoute, DEFAULT};
use crate::activation::{Activations, AnyActivations, Shared};
use crate::ring::{actor_key, capability_key, Placement, Rendezvous};
use crate::transport::Transport;
use crate::wire::{Cookie, Hosted};
use crate::{Handlers, StartError};

/// The deadline of a call that does not set one with `.timeout(d)`.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// An actor type given to the builder, before the node exists.
struct ActorEntry {
    type_id: TypeId,
    name: &'static str,
    capability: &'static str,
    messages: &'static [(u64, &'static str)],
    make: fn(Arc<Shared>) -> Arc<dyn AnyActivations>,
}

/// Configures a [`Node`]; [`NodeBuilder::start`] runs it.
///
/// ```no_run
/// # async fn doc() -> Result<(), mesh::Error> {
/// # use mesh::prelude::*;
/// # #[derive(Actor, Default)] #[actor(capability = "counter")] struct Counter;
/// # #[mesh::handlers] impl Counter {}
/// let node = Node::builder()
///     .name("node-a")
///     .capabilities(["counter"])
///     .actor::<Counter>()
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until .start() is awaited"]
pub struct NodeBuilder {
    name: Option<String>,
    capabilities: Vec<String>,
    actors: Vec<ActorEntry>,
    placement: Arc<dyn Placement>,
    default_timeout: Duration,
    shutdown_timeout: Duration,
    default_node: bool,
    cluster: Option<ClusterConfig>,
    history: Option<Arc<dyn crate::history::History>>,
    state: Option<Arc<dyn crate::state::StateStore>>,
    reminders: crate::reminder::ReminderOptions,
    strong: Option<crate::lease::Strong>,
    deps: HashMap<TypeId, Arc<dyn std::any::Any + Send + Sync>>,
    weak_cookie: bool,
    min_members: usize,
    #[cfg(feature = "admin")]
    admin: Option<String>,
    #[cfg(feature = "admin")]
    admin_limits: crate::admin::Limits,
    #[cfg(feature = "admin")]
    admin_token: Option<String>,
    #[cfg(feature = "admin")]
    state_views: Vec<&'static str>,
}

impl std::fmt::Debug for NodeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeBuilder")
            .field("name", &self.name)
            .field("capabilities", &self.capabilities)
            .field(
                "actors",
                &self.actors.iter().map(|a| a.name).collect::<Vec<_>>(),
            )
            .field("placement", &self.placement)
            .field("default_timeout", &self.default_timeout)
            .field("default_node", &self.default_node)
            .field("min_members", &self.min_members)
            .field("cluster", &self.cluster)
            .finish()
    }
}

impl NodeBuilder {
    pub(super) fn new() -> Self {
        NodeBuilder {
            name: None,
            capabilities: Vec::new(),
            actors: Vec::new(),
            placement: Arc::new(Rendezvous),
            default_timeout: DEFAULT_CALL_TIMEOUT,
            shutdown_timeout: Duration::from_secs(30),
            default_node: true,
            cluster: None,
            history: None,
            state: None,
            reminders: crate::reminder::ReminderOptions::default(),
            strong: None,
            deps: HashMap::new(),
            weak_cookie: false,
            min_members: 1,
            #[cfg(feature = "admin")]
            admin: None,
            #[cfg(feature = "admin")]
            admin_limits: crate::admin::Limits::default(),
            #[cfg(feature = "admin")]
            admin_token: None,
            #[cfg(feature = "admin")]
            state_views: Vec::new(),
        }
    }

    fn cluster_mut(&mut self) -> &mut ClusterConfig {
        self.cluster.get_or_insert_with(ClusterConfig::default)
    }

    /// Joins the cluster `name` (default `"mesh"`): peers of another
    /// cluster are refused. Any cluster setting makes the node clustered.
    pub fn cluster(mut self, name: impl Into<String>) -> Self {
        self.cluster_mut().name = name.into();
        self
    }

    /// The shared cluster secret; required for a clustered node. Peers
    /// prove they hold it (HMAC challenge-response over a key derived
    /// from it by Argon2id), it never crosses the wire.
    ///
    /// It must be strong: [`NodeBuilder::start`] refuses a cookie of less
    /// than 128 bits of estimated entropy
    /// (`Cookie::entropy_bits`), since
    /// a peer that sees one proof can guess cookies offline. Generate one:
    /// `openssl rand -base64 32`.
    pub fn cookie(mut self, cookie: impl AsRef<[u8]>) -> Self {
        self.cluster_mut().cookie = Some(Cookie::new(cookie));
        self
    }

    /// Lets [`NodeBuilder::start`] accept a weak cookie (under 128 bits of
    /// estimated entropy). **For tests only**: with a weak cookie, anyone a
    /// node dials, or who watches plain TCP traffic, can recover the cookie
    /// offline from one handshake.
    pub fn allow_weak_cookie(mut self) -> Self {
        self.weak_cookie = true;
        self
    }

    /// The guard against a node that serves alone (Akka's
    /// `akka.cluster.min-nr-of-members`): until this node has seen `n`
    /// members (itself included) in its membership, it is not ready
    /// ([`Node::is_ready`], `/readyz` answers 503 naming the count) and
    /// its calls and casts fail at once with
    /// [`Error::NotEnoughMembers`](crate::Error::NotEnoughMembers), instead
    /// of activating every actor here from empty state. That is what a node
    /// with the wrong cookie or cluster name, or unreachable seeds, would
    /// otherwise do: form a second, empty cluster of one, and say it is
    /// ready.
    ///
    /// Default 1: no guard (a node without seeds, and the embedded single
    /// node, serve at once). Give a clustered node 2, or the smallest
    /// cluster that may serve; not the full cluster size, see the costs:
    ///
    /// - A cold start of the whole cluster serves nothing until `n` nodes
    ///   are up and connected; a cluster meant to run as one node (seeds
    ///   configured, none up) must say 1.
    /// - Once the node has seen `n` members it serves for the rest of its
    ///   life, as Akka gates only the first `Up`: losing members later
    ///   does not stop it (a partition does not stop a running cluster of
    ///   its own accord; strong mode is the guard against split brain).
    ///   But it reports not ready while it sees fewer than `n`, so a load
    ///   balancer that follows `/readyz` sends it nothing: with `n` equal
    ///   to the cluster size, one node down makes every node unready.
    /// - The guard is on the calling node: calls a peer routes here are
    ///   served (that peer holds the cookie, so this node is in its
    ///   cluster). A node joining a running cluster smaller than `n`
    ///   waits like the others.
    ///
    /// 0 counts as 1. More than 1 on a node that is not clustered is a
    /// start error (it would never serve).
    pub fn min_members(mut self, n: usize) -> Self {
        self.min_members = n.max(1);
        self
    }

    /// Where to accept peers: `host:port` for TCP (port 0 picks one; see
    /// [`Node::addr`]), a name for [`Transport::memory`].
    pub fn listen(mut self, addr: impl Into<String>) -> Self {
        self.cluster_mut().listen = Some(addr.into());
        self
    }

    /// Addresses to dial at start and whenever they are not members: the
    /// static discovery. Members learned from peers are dialed too.
    pub fn seeds<I, S>(mut self, seeds: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cluster_mut()
            .seeds
            .extend(seeds.into_iter().map(Into::into));
        self
    }

    /// Seeds from a DNS name, re-resolved every period (feature `dns`;
    /// see [`crate::discovery::DnsSeeds`]): on Kubernetes, a headless
    /// Service that publishes not-ready pods. Static discovery, as
    /// [`NodeBuilder::seeds`] (the two add up); not with an authoritative
    /// [`NodeBuilder::discovery`], whose peers are the truth.
    #[cfg(feature = "dns")]
    pub fn dns_seeds(mut self, seeds: crate::discovery::DnsSeeds) -> Self {
        self.cluster_mut().dns_seeds = Some(seeds);
        self
    }

    /// The address peers are told to dial (gossip, handshake, Consul's
    /// registration), when it is not the listener's own: a node listening
    /// on `0.0.0.0:7000` advertises `10.0.0.5:7000`, say.
    pub fn advertise(mut self, addr: impl Into<String>) -> Self {
        self.cluster_mut().advertise = Some(addr.into());
        self
    }

    /// An authoritative discovery, such as `mesh::consul::Consul`:
    /// the node registers with it at start (a refusal fails
    /// [`NodeBuilder::start`]), and its members are the peers it reports
    /// healthy that this node can reach. Without one, the static seeds
    /// and gossip are the discovery.
    pub fn discovery(mut self, discovery: impl crate::discovery::Discovery) -> Self {
        self.cluster_mut().discovery = Some(std::sync::Arc::new(discovery));
        self
    }

    /// The transport: [`Transport::tcp`] (the default), in-memory pipes
    /// for tests ([`Transport::memory`]), or any connector and acceptor
    /// ([`Transport::custom`]).
    pub fn transport(mut self, transport: Transport) -> Self {
        self.cluster_mut().transport = transport;
        self
    }

    /// Sends all node traffic through `sidecar` (see [`crate::sidecar`]):
    /// peers are dialed by node id at their local upstream ports, the
    /// node listens on loopback only (`127.0.0.1:0` unless
    /// [`NodeBuilder::listen`] names a loopback address), and a managed
    /// sidecar (HAProxy, a command template) is started once the listener
    /// is bound and stopped at the end of [`Node::shutdown`]. Replaces the
    /// transport.
    ///
    /// ```no_run
    /// # async fn doc(certs: mesh::sidecar::Certs) -> Result<(), mesh::Error> {
    /// use mesh::sidecar::{HaproxySettings, Sidecar};
    /// let sidecar = Sidecar::haproxy(
    ///     HaproxySettings::new("/run/mesh/sidecar", "0.0.0.0:21000", certs)
    ///         .allow(["spiffe://td.consul/ns/default/dc/dc1/svc/mesh-b"]),
    /// );
    /// let node = mesh::Node::builder()
    ///     .name("a")
    ///     .cookie("secret")
    ///     .through_sidecar(sidecar.clone())
    ///     .start()
    ///     .await?;
    /// // Later, as the discovery reports peers: sidecar.set_upstreams(...).
    /// # Ok(()) }
    /// ```
    #[cfg(feature = "sidecar")]
    pub fn through_sidecar(mut self, sidecar: crate::sidecar::Sidecar) -> Self {
        let c = self.cluster_mut();
        c.transport = sidecar.transport();
        if c.listen.is_none() {
            c.listen = Some("127.0.0.1:0".into());
        }
        c.sidecar = Some(sidecar);
        self
    }

    /// The largest frame this node sends or accepts (8 MiB by default): a
    /// message or reply over it fails that call with a codec error; a
    /// peer's frame over it closes that connection, refused before its
    /// body is read.
    pub fn max_frame(mut self, bytes: usize) -> Self {
        let c = self.cluster_mut();
        c.codec = crate::wire::FrameCodec::new(bytes, c.codec.checksum());
        self
    }

    /// Whether this node adds an xxh3 checksum to every frame it sends
    /// (default: no; TCP already checks its segments). Frames received
    /// are checked whenever they carry one.
    pub fn checksums(mut self, yes: bool) -> Self {
        let c = self.cluster_mut();
        c.codec = crate::wire::FrameCodec::new(c.codec.max_frame(), yes);
        self
    }

    /// How long a connection may take to be established and to complete
    /// the handshake, either way (default 5 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.cluster_mut().handshake_timeout = timeout;
        self
    }

    /// At most this many connections per peer (default 2: one each side
    /// dialed, when both dial at once). The oldest live one carries the
    /// calls; the others take over when it closes.
    pub fn max_connections_per_peer(mut self, n: usize) -> Self {
        self.cluster_mut().max_connections_per_peer = n.max(1);
        self
    }

    /// How often peers are pinged and gossiped to (default 500 ms), and how
    /// long a peer may leave a ping unanswered before it is dropped
    /// (default 2 s). A closed connection drops the peer at once.
    pub fn heartbeat(mut self, interval: Duration, failure_timeout: Duration) -> Self {
        let c = self.cluster_mut();
        c.heartbeat = interval;
        c.failure_timeout = failure_timeout;
        self
    }

    /// Gives the node a value its actors read with [`crate::Ctx::get`] (in
    /// `activate`, handlers and hooks): a database pool, a configuration,
    /// a client. One value per type: a second `provide` of the same type
    /// replaces the first (wrap two of one type in newtypes).
    ///
    /// ```no_run
    /// # use mesh::prelude::*;
    /// # #[derive(Clone)] struct Pool;
    /// # impl Pool { async fn load(&self, _: &str) -> Result<u64, String> { Ok(0) } }
    /// #[derive(Actor)]
    /// #[actor(capability = "cart", activate = Cart::load)]
    /// struct Cart { items: u64 }
    ///
    /// impl Cart {
    ///     async fn load(id: &str, ctx: &Ctx) -> Result<Self, mesh::BoxError> {
    ///         let pool: &Pool = ctx.get()?;
    ///         Ok(Cart { items: pool.load(id).await? })
    ///     }
    /// }
    /// # #[mesh::handlers] impl Cart {}
    /// # async fn doc() -> Result<(), mesh::Error> {
    /// let node = Node::builder().capabilities(["cart"]).actor::<Cart>().provide(Pool).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn provide<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.deps.insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// Where the actors' durable state lives ([`crate::state`]): an actor
    /// with a `#[state]` field loads it from this store on activation and
    /// writes it at the end of each turn that changed it. Without one, a
    /// stateful actor's activation fails, saying so; stateless actors
    /// never touch it. On one machine,
    /// `mesh::state::RedbStore::open("state.redb")?` (the embedded store);
    /// in a cluster, a store every node reaches (PostgreSQL).
    pub fn state(mut self, store: impl crate::state::StateStore) -> Self {
        self.state = Some(Arc::new(store));
        self
    }

    /// The settings of the node's reminder keeper ([`crate::reminder`]):
    /// how often it loads, how far ahead, and its catch-up throttle. The
    /// keeper runs on a node with a state store that hosts an actor type
    /// handling [`crate::reminder::Tick`].
    pub fn reminders(mut self, options: crate::reminder::ReminderOptions) -> Self {
        self.reminders = options;
        self
    }

    /// Records when each activation starts and ends, for measuring
    /// duplicate activations ([`crate::history`]).
    #[cfg(feature = "history")]
    pub fn history(mut self, history: impl crate::history::History) -> Self {
        self.history = Some(Arc::new(history));
        self
    }

    /// Strong single activation ([`crate::lease`]): at most one activation
    /// of an id at a time across the cluster, enforced by leases in the
    /// discovery's store, with fencing tokens ([`crate::Ctx::fence`]).
    /// Needs an authoritative discovery with a lease store, such as
    /// `mesh::consul::Consul`; a static-seed cluster cannot offer it
    /// and [`NodeBuilder::start`] refuses. Every node of a cluster must use
    /// the same mode. The default is eventual placement.
    #[cfg(feature = "strong")]
    pub fn strong(mut self, strong: crate::lease::Strong) -> Self {
        self.strong = Some(strong);
        self
    }

    /// The node's id ([`Node::id`]), unique in its cluster. Defaults to
    /// `node-<pid>-<n>`.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.name = Some(id.into());
        self
    }

    /// Renamed to [`NodeBuilder::id`] (it sets what [`Node::id`] returns).
    #[deprecated(note = "renamed to `NodeBuilder::id`")]
    pub fn name(self, name: impl Into<String>) -> Self {
        self.id(name)
    }

    /// The capabilities this node hosts: shards of these capabilities may be
    /// placed here. Adds to any given before.
    pub fn capabilities<I, S>(mut self, capabilities: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.capabilities
            .extend(capabilities.into_iter().map(Into::into));
        self
    }

    /// An actor type this node can activate. Its capability must be among
    /// the node's capabilities.
    pub fn actor<A: Handlers>(mut self) -> Self {
        self.actors.push(ActorEntry {
            type_id: TypeId::of::<A>(),
            name: A::NAME,
            capability: A::CAPABILITY,
            messages: A::MESSAGES,
            make: |shared| Activations::<A>::new(shared),
        });
        self
    }

    /// The placement strategy ([`Rendezvous`] by default). Every node of a
    /// cluster must use the same one.
    pub fn placement(mut self, strategy: impl Placement) -> Self {
        self.placement = Arc::new(strategy);
        self
    }

    /// The deadline of calls that do not set one
    /// ([`crate::DEFAULT_CALL_TIMEOUT`], 5 s, by default).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.default_timeout = timeout;
        self
    }

    /// Renamed to [`NodeBuilder::call_timeout`].
    #[deprecated(note = "renamed to `NodeBuilder::call_timeout`")]
    pub fn default_timeout(self, timeout: Duration) -> Self {
        self.call_timeout(timeout)
    }

    /// How long [`Node::shutdown`] waits for busy activations (30 s by
    /// default) before it returns [`crate::Error::Timeout`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// Whether this node becomes the process's default node for
    /// [`crate::call`] and [`crate::cast`] if none is running (default:
    /// yes).
    pub fn default_node(mut self, yes: bool) -> Self {
        self.default_node = yes;
        self
    }

    /// Serves the admin endpoint (feature `admin`, see [`crate::admin`])
    /// at `addr`, e.g. `"127.0.0.1:0"` (port 0: any free port, see
    /// [`Node::admin_addr`](crate::Node::admin_addr)). Keep it on loopback:
    /// it has no authentication. Installs the Prometheus recorder
    /// ([`crate::admin::prometheus::install`]) unless one is installed.
    #[cfg(feature = "admin")]
    pub fn admin(mut self, addr: impl Into<String>) -> Self {
        self.admin = Some(addr.into());
        self
    }

    /// The admin endpoint's connection limits (feature `admin`): header
    /// read timeout, idle timeout, connection cap (default
    /// [`Limits::default`](crate::admin::Limits::default)).
    #[cfg(feature = "admin")]
    pub fn admin_limits(mut self, limits: crate::admin::Limits) -> Self {
        self.admin_limits = limits;
        self
    }

    /// The token the admin endpoint's write actions require (feature
    /// `admin`): `POST /admin/drain` must carry `Authorization: Bearer
    /// <token>`. Without one, write actions are refused (403); the
    /// read-only views need none. At least 16 bytes; compared in constant
    /// time. Keep it out of logs and command lines (an environment
    /// variable or a file).
    #[cfg(feature = "admin")]
    pub fn admin_token(mut self, token: impl Into<String>) -> Self {
        self.admin_token = Some(token.into());
        self
    }

    /// Lets the admin views show actor type `A`'s stored state (feature
    /// `admin`): `/admin/actor?actor=A&id=...` then adds the stored
    /// document, as JSON. Off by default, since state can be private: the
    /// views show only its version and size. Set it on the nodes that host
    /// `A` (the node holding the actor's shard answers).
    #[cfg(feature = "admin")]
    pub fn admin_state_view<A: crate::Actor>(mut self) -> Self {
        self.state_views.push(A::NAME);
        self
    }

    /// Validates the configuration and starts the node. Must run inside a
    /// tokio runtime, which the node's activations then use.
    ///
    /// Errors, each a variant to match ([`StartError`] lists them all):
    /// [`StartError::InvalidSetting`] for an empty or duplicate
    /// capability, an actor type given twice or whose capability the node
    /// does not host, an empty id, `min_members` on a node that is not
    /// clustered (`setting` names which); [`StartError::MissingCookie`] and
    /// [`StartError::WeakCookie`] for a clustered node's cookie (see
    /// [`NodeBuilder::cookie`]); [`StartError::IdentityLimits`] for an
    /// identity over the handshake's limits (ids and names of at most 255
    /// bytes, at most 256 capabilities and actor types, 4096 handlers);
    /// [`StartError::NoLeaseStore`] for strong mode without a lease store;
    /// [`StartError::TagCollision`] if two handlers share a wire tag (two
    /// messages of one name in one actor type);
    /// [`StartError::Listen`] if the listener cannot bind;
    /// [`StartError::Discovery`] if the discovery refuses the node.
    /// `?` turns it into [`crate::Error::Start`] where a function returns
    /// [`crate::Error`].
    pub async fn start(mut self) -> Result<Node, StartError> {
        // Before the metric handles are resolved (at the first node's start).
        #[cfg(feature = "admin")]
        if self.admin.is_some() {
            crate::admin::prometheus::install();
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| StartError::NoRuntime)?;
        #[cfg(feature = "admin")]
        if self.admin_token.as_ref().is_some_and(|t| t.len() < 16) {
            return Err(StartError::invalid(
                "NodeBuilder::admin_token",
                "the admin token is shorter than 16 bytes: use a long random one",
            ));
        }
        let mut capabilities = self.capabilities;
        if let Some(c) = capabilities.iter().find(|c| c.is_empty()) {
            return Err(StartError::invalid("NodeBuilder::capabilities", format!(
                "empty capability name {c:?}: give every capability in NodeBuilder::capabilities a name"
            )));
        }
        capabilities.sort();
        capabilities.dedup();
        let mut wire: HashMap<u64, (WireRoute, String)> = HashMap::new();
        let mut hosted: Vec<Hosted> = Vec::new();
        for (i, a) in self.actors.iter().enumerate() {
            if self.actors[..i].iter().any(|b| b.type_id == a.type_id) {
                return Err(StartError::invalid(
                    "NodeBuilder::actor",
                    format!(
                        "actor type {} given twice: remove one `.actor::<{}>()`",
                        a.name, a.name
                    ),
                ));
            }
            if !capabilities.iter().any(|c| c == a.capability) {
                return Err(StartError::invalid(
                    "NodeBuilder::actor",
                    format!(
                        "actor {} needs capability {:?}, which this node does not host: add it to \
                     NodeBuilder::capabilities, or remove `.actor::<{}>()`",
                        a.name, a.capability, a.name
                    ),
                ));
            }
            if self.actors[..i]
                .iter()
                .any(|b| b.name == a.name && b.capability == a.capability)
            {
                return Err(StartError::invalid(
                    "NodeBuilder::actor",
                    format!(
                    "two actor types named {} in capability {:?}: the name identifies the type \
                     on the wire; rename one with `#[actor(name = \"...\")]`",
                    a.name, a.capability
                ),
                ));
            }
            let mut tags: Vec<u64> = a.messages.iter().map(|&(t, _)| t).collect();
            tags.sort_unstable();
            hosted.push(Hosted {
                capability: a.capability.to_owned(),
                actor: a.name.to_owned(),
                tags,
            });
            for &(tag, message) in a.messages {
                let here = format!("{}::{}", a.name, message);
                let route = WireRoute {
                    actor: i,
                    capability_key: capability_key(a.capability),
                    actor_key: actor_key(a.capability, a.name),
                };
                if tag == crate::wire::INSPECT_TAG {
                    return Err(StartError::TagCollision {
                        tag,
                        first: "the node's own queries (mesh::wire::INSPECT_TAG)".into(),
                        second: here,
                    });
                }
                if let Some((_, first)) = wire.insert(tag, (route, here.clone())) {
                    return Err(StartError::TagCollision {
                        tag,
                        first,
                        second: here,
                    });
                }
            }
        }
        let id: Arc<str> = match self.name {
            Some(n) if n.is_empty() => {
                return Err(StartError::invalid("NodeBuilder::id", "empty node id"))
            }
            Some(n) => n.into(),
            None => {
                static N: AtomicU64 = AtomicU64::new(0);
                let n = N.fetch_add(1, Ordering::Relaxed);
                format!("node-{}-{n}", std::process::id()).into()
            }
        };
        let gate = match &self.strong {
            None => None,
            Some(strong) => {
                strong
                    .check()
                    .map_err(|e| StartError::invalid("NodeBuilder::strong", e))?;
                let Some(cluster) = self.cluster.as_ref().filter(|c| c.discovery.is_some()) else {
                    return Err(StartError::NoLeaseStore {
                        has_discovery: false,
                    });
                };
                let types: Vec<(u64, u64, String)> = self
                    .actors
                    .iter()
                    .map(|a| {
                        (
                            crate::ring::actor_key(a.capability, a.name),
                            capability_key(a.capability),
                            format!("{}/{}", a.capability, a.name),
                        )
                    })
                    .collect();
                Some(Arc::new(crate::lease::gate::Gate::new(
                    format!("mesh/{}/own", cluster.name),
                    &types,
                )))
            }
        };
        // Every check before the first side effect (a listener bound, a
        // sidecar started, a registration): a refused start leaves
        // nothing behind.
        let store = match &self.strong {
            None => None,
            Some(_) => Some(
                self.cluster
                    .as_ref()
                    .and_then(|c| c.discovery.as_ref())
                    .and_then(|d| d.lease_store())
                    .ok_or(StartError::NoLeaseStore {
                        has_discovery: true,
                    })?,
            ),
        };
        #[cfg(feature = "sidecar")]
        if let Some(c) = self.cluster.as_ref() {
            if c.sidecar.is_some() && c.listen.is_none() {
                return Err(StartError::SidecarWithoutListener);
            }
        }
        hosted.sort_unstable();
        if self.min_members > 1 && self.cluster.is_none() {
            return Err(StartError::invalid(
                "NodeBuilder::min_members",
                format!(
                    "min_members({}) on a node that is not clustered: it would never see another \
                 member, so never serve; give it seeds or a discovery, or remove min_members",
                    self.min_members
                ),
            ));
        }
        if let Some(cluster) = &self.cluster {
            check_cluster(cluster, &id, &capabilities, &hosted, self.weak_cookie).await?;
        }
        let mut incarnation = [0u8; 8];
        getrandom::fill(&mut incarnation).map_err(|e| StartError::Internal {
            reason: format!("no randomness for the incarnation: {e}"),
        })?;
        let incarnation = u64::from_le_bytes(incarnation);
        // Every port is bound before the first other side effect (a
        // sidecar started, a registration): a taken port refuses the start
        // with nothing behind. The admin endpoint first, then the cluster.
        #[cfg(feature = "admin")]
        let admin =
            match &self.admin {
                None => None,
                Some(addr) => Some(crate::admin::Server::bind(addr).await.map_err(|e| {
                    StartError::Listen {
                        addr: addr.clone(),
                        reason: format!("admin endpoint: {e}"),
                    }
                })?),
            };
        let mut cluster_cfg = self.cluster;
        let (bound, cookie) = match cluster_cfg.as_mut() {
            None => (None, None),
            Some(cfg) => {
                let cookie = cfg.cookie.take().ok_or(StartError::MissingCookie)?;
                (cluster::bind(cfg, &id).await?, Some(cookie))
            }
        };
        let addr = cluster_cfg
            .as_ref()
            .map(|cfg| cluster::advertised(cfg, bound.as_ref()))
            .unwrap_or_default();
        let mut membership = Membership::new();
        membership.upsert_hosting(&id, &addr, &capabilities, Some(&hosted));
        let message_names: Arc<HashMap<u64, &'static str>> = Arc::new(
            self.actors
                .iter()
                .flat_map(|a| a.messages.iter().copied())
                .collect(),
        );
        let mut first = None;
        let mut pending = None;
        // The node is built bottom-up from its parts, in one expression:
        // the activation tables reach their node as their `Host`, the
        // cluster's tasks reach only the cluster, the admin endpoint reads
        // through `admin::Source`, the lease keeper reads the membership.
        // Each holds its way back weakly (the node owns them).
        // Every load and save goes through the node's observer (metrics,
        // `/admin/state`).
        let (state_store, state_stats) = match self.state.clone() {
            Some(s) => {
                let (observed, stats) = crate::state::observed::Observed::wrap(s);
                (Some(observed), Some(stats))
            }
            None => (None, None),
        };
        // The actor types with a `Tick` handler: their reminders are fired
        // here (by the owner of their shards), if the node has a store.
        let reminder_kinds: Vec<crate::reminder::Kind> = self
            .actors
            .iter()
            .filter_map(|a| {
                let tag = crate::wire::tag(
                    a.capability,
                    a.name,
                    <crate::reminder::Tick as crate::Message>::NAME,
                );
                a.messages
                    .iter()
                    .any(|&(t, _)| t == tag)
                    .then(|| crate::reminder::Kind {
                        name: format!("{}/{}", a.capability, a.name).into(),
                        tag,
                        actor_key: actor_key(a.capability, a.name),
                        capability_key: capability_key(a.capability),
                    })
            })
            .collect();
        let reminders = (state_store.is_some() && !reminder_kinds.is_empty())
            .then(|| crate::reminder::Keeper::new(reminder_kinds, self.reminders));
        let inner = Arc::new_cyclic(|me: &std::sync::Weak<NodeInner>| {
            let host: std::sync::Weak<dyn crate::activation::Host> = me.clone();
            let shared = Arc::new(Shared::new(
                runtime,
                host,
                gate.clone(),
                self.history.is_some(),
            ));
            let catalog = Arc::new(Catalog {
                actors: self
                    .actors
                    .iter()
                    .map(|a| (a.type_id, a.capability, (a.make)(shared.clone())))
                    .collect(),
            });
            let members = Arc::new(Members::new(
                id.clone(),
                membership,
                self.placement.clone(),
                self.min_members,
                catalog.clone(),
                gate.clone(),
            ));
            let cluster = match (cluster_cfg, cookie) {
                (Some(cfg), Some(cookie)) => {
                    let identity = crate::wire::Identity {
                        cluster: cfg.name.clone(),
                        node: id.to_string(),
                        capabilities: capabilities.clone(),
                        addr: addr.clone(),
                        incarnation,
                        actors: hosted.clone(),
                    };
                    let (c, p) = cluster::Cluster::new(
                        cfg,
                        identity,
                        cookie,
                        bound,
                        cluster::Parts {
                            members: members.clone(),
                            message_names: message_names.clone(),
                            call_timeout: self.default_timeout,
                            inbound: Arc::new(super::router::NodeInbound::new(me.clone())),
                        },
                    );
                    pending = Some(p);
                    Some(c)
                }
                _ => None,
            };
            let keeper = match (&self.strong, &gate, store) {
                (Some(strong), Some(gate), Some(store)) => {
                    let session = format!("mesh/{id}/{incarnation}");
                    let value = serde_json::to_vec(&serde_json::json!({
                        "node": &*id,
                        "incarnation": incarnation,
                    }))
                    .unwrap_or_default();
                    Some(crate::lease::keeper::Keeper::start(
                        Arc::new(KeeperView {
                            members: members.clone(),
                            cluster: cluster.as_ref().map(Arc::downgrade),
                        }),
                        members.changes(),
                        gate.clone(),
                        store,
                        crate::lease::keeper::Holder {
                            strong: *strong,
                            session_name: session,
                            lock_value: value,
                        },
                    ))
                }
                _ => None,
            };
            #[cfg(feature = "admin")]
            let admin = admin.map(|bound| {
                let source: std::sync::Weak<dyn crate::admin::Source> = me.clone();
                crate::admin::Server::serve(bound, source, self.admin_limits)
            });
            let handle = Arc::new(super::Handle(me.clone()));
            let weak_handle = Arc::downgrade(&handle);
            first = Some(handle);
            NodeInner {
                id: id.clone(),
                incarnation,
                capabilities: capabilities.clone(),
                strategy: self.placement.clone(),
                members,
                cluster,
                catalog,
                wire: wire.into_iter().map(|(t, (r, _))| (t, r)).collect(),
                shared,
                default_timeout: self.default_timeout,
                shutdown_timeout: self.shutdown_timeout,
                handle: weak_handle,
                history: self.history.clone(),
                state: std::sync::Mutex::new(state_store),
                state_stats,
                gate: gate.clone(),
                keeper,
                reminders,
                deps: std::mem::take(&mut self.deps),
                #[cfg(feature = "admin")]
                admin,
                #[cfg(feature = "admin")]
                ops: super::admin::Ops::new(
                    self.admin_token.take(),
                    std::mem::take(&mut self.state_views),
                ),
                drain: super::DrainState::default(),
            }
        });
        let Some(first) = first else {
            return Err(StartError::Internal {
                reason: "the node was not built".into(),
            });
        };
        if let (Some(cluster), Some(pending)) = (&inner.cluster, pending) {
            let inbound = Arc::new(super::router::NodeInbound::new(Arc::downgrade(&inner)));
            if let Err(e) = cluster.start(pending, inbound).await {
                // Refused: nothing to tear down beyond what drops with the
                // node (the keeper never began, no activation started).
                inner.shared.begin_shutdown();
                drop(first);
                return Err(e);
            }
        }
        if let Some(keeper) = &inner.keeper {
            keeper.begin();
        }
        #[cfg(feature = "admin")]
        inner.ops.start();
        for (_, _, acts) in &inner.catalog.actors {
            acts.start();
        }
        super::reminders::start(&inner);
        if !inner.members.is_formed() {
            tracing::info!(
                node = %inner.id,
                need = inner.members.min_members(),
                "not serving until the node sees {} members (NodeBuilder::min_members)",
                inner.members.min_members()
            );
        }
        if self.default_node {
            DEFAULT.rcu(|cur| match cur {
                Some(c) if !c.shared.is_shutting_down() => Some(c.clone()),
                _ => Some(inner.clone()),
            });
            let default = DEFAULT.load();
            if let Some(d) = default.as_ref().filter(|d| !Arc::ptr_eq(d, &inner)) {
                tracing::info!(
                    node = %inner.id,
                    default = %d.id,
                    "not the default node: {} already is, so mesh::call and mesh::cast go through it; call through this node's handle (node.call) instead",
                    d.id
                );
            }
        }
        tracing::info!(node = %inner.id, capabilities = ?inner.capabilities, "node started");
        Ok(Node::first_handle(inner, first))
    }
}

/// Checks a clustered node's cookie and handshake identity, then derives
/// its handshake key (Argon2id, once per process and cookie) so that the
/// first handshake does not wait for it.
async fn check_cluster(
    cluster: &ClusterConfig,
    id: &str,
    capabilities: &[String],
    hosted: &[Hosted],
    weak_cookie: bool,
) -> Result<(), StartError> {
    let identity = crate::wire::Identity {
        cluster: cluster.name.clone(),
        node: id.to_owned(),
        capabilities: capabilities.to_vec(),
        addr: cluster.advertise.clone().unwrap_or_default(),
        incarnation: 0,
        actors: hosted.to_vec(),
    };
    identity.check().map_err(|e| StartError::IdentityLimits {
        reason: e.to_string(),
    })?;
    #[cfg(feature = "dns")]
    if let Some(seeds) = &cluster.dns_seeds {
        if cluster.discovery.is_some() {
            return Err(StartError::invalid(
                "NodeBuilder::dns_seeds",
                "DNS seeds with an authoritative discovery: the discovery's peers are the truth \
                 and seeds are ignored; give one or the other",
            ));
        }
        seeds
            .resolver()
            .map_err(|reason| StartError::invalid("NodeBuilder::dns_seeds", reason))?;
    }
    let Some(cookie) = cluster.cookie.clone() else {
        return Err(StartError::MissingCookie);
    };
    let bits = cookie.entropy_bits();
    if !weak_cookie && bits < crate::wire::MIN_COOKIE_BITS {
        return Err(StartError::WeakCookie {
            bits: bits.round() as u32,
            needed: crate::wire::MIN_COOKIE_BITS.round() as u32,
        });
    }
    let name = cluster.name.clone();
    tokio::task::spawn_blocking(move || crate::wire::prepare_key(&cookie, &name))
        .await
        .map_err(|e| StartError::Internal {
            reason: format!("deriving the handshake key: {e}"),
        })?
        .map_err(|e| StartError::Internal {
            reason: e.to_string(),
        })
}

/// What the lease keeper reads of its node (`lease::keeper::Wanted`):
/// the routing table and the leaving flag, nothing else.
struct KeeperView {
    members: Arc<Members>,
    cluster: Option<std::sync::Weak<cluster::Cluster>>,
}

impl crate::lease::keeper::Wanted for KeeperView {
    fn wanted(&self) -> Option<(Arc<crate::ring::RoutingTable>, bool)> {
        let leaving = match &self.cluster {
            None => false,
            Some(c) => c.upgrade()?.is_leaving(),
        };
        Some((self.members.routing_table(), leaving))
    }
}
