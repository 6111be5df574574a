//! Static-seed clustering: connections to every member, membership from
//! live connections, heartbeats, and serving requests from peers.
//!
//! Membership is *what this node can reach*: a node is a member while this
//! node holds a handshaken connection to it. Seeds and the addresses peers
//! gossip (`Membership` frames, every heartbeat) are only places to dial.
//! So a dead node leaves the membership as soon as its connection drops
//! (a killed process: at once) or misses pings for `failure_timeout` (a
//! hung one), and stale gossip cannot bring it back.
//!
//! With an authoritative [`Discovery`] (Consul), membership is narrower:
//! a node is a member while the discovery reports it healthy *and* this
//! node holds a live connection to it. The discovery's view replaces the
//! addresses to dial, and gossip is ignored.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::{NodeInner, WireRoute};
use crate::activation::{WireCall, WireReply};
use crate::actor::ReplyTo;
use crate::discovery::{Discovery, LocalNode, Peers};
use crate::ring::shard;
use crate::transport::memory::MemoryNetwork;
use crate::transport::{tcp, Connection, Inbound, Listening, Responder, TransportConfig};
use crate::wire::{self, Cookie, FrameCodec, Identity, Member, Peer};
use crate::Error;

/// At most this many connections per peer (one it dialed, one we dialed).
const MAX_CONNECTIONS_PER_PEER: usize = 2;

/// Which transport a clustered node uses.
#[derive(Debug, Clone, Default)]
pub enum Network {
    /// TCP: `listen` and `seeds` are `host:port` addresses.
    #[default]
    Tcp,
    /// In-memory pipes within one process (tests): addresses are names.
    Memory(Arc<MemoryNetwork>),
}

/// How a node joins a cluster. Built through [`super::NodeBuilder`].
#[derive(Clone)]
pub(crate) struct ClusterConfig {
    pub(crate) name: String,
    pub(crate) cookie: Option<Cookie>,
    pub(crate) listen: Option<String>,
    pub(crate) seeds: Vec<String>,
    pub(crate) network: Network,
    pub(crate) heartbeat: Duration,
    pub(crate) failure_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) codec: FrameCodec,
    /// The address peers are told to dial, when not the listener's own.
    pub(crate) advertise: Option<String>,
    pub(crate) discovery: Option<Arc<dyn Discovery>>,
}

impl std::fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("name", &self.name)
            .field("listen", &self.listen)
            .field("advertise", &self.advertise)
            .field("seeds", &self.seeds)
            .field("network", &self.network)
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
            network: Network::Tcp,
            heartbeat: Duration::from_millis(500),
            failure_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(5),
            codec: FrameCodec::default(),
            advertise: None,
            discovery: None,
        }
    }
}

/// The running cluster side of a node.
pub(crate) struct Cluster {
    cfg: ClusterConfig,
    transport: TransportConfig,
    peers: Mutex<HashMap<String, Vec<Connection>>>,
    /// Each peer's first live connection, republished on every change of
    /// `peers`: every remote call reads it, without a lock.
    view: arc_swap::ArcSwap<HashMap<String, Connection>>,
    /// Where to keep a connection: seeds and gossiped addresses.
    addrs: Mutex<BTreeSet<String>>,
    dialing: Mutex<HashSet<String>>,
    /// Failed addresses: how many failures in a row, and when to try again.
    backoff: Mutex<HashMap<String, (u32, tokio::time::Instant)>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    listening: Mutex<Option<Listening>>,
    /// Set by `stop`: connections that complete later are closed at once.
    stopped: std::sync::atomic::AtomicBool,
    /// With an authoritative discovery: the node ids it reports healthy,
    /// the only peers that may be members. `None`: static discovery.
    gate: Mutex<Option<HashSet<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Cluster {
    /// The address peers dial to reach this node.
    pub(crate) fn addr(&self) -> &str {
        &self.transport.identity.addr
    }

    /// The authoritative discovery, if the node has one.
    pub(crate) fn discovery(&self) -> Option<Arc<dyn Discovery>> {
        self.cfg.discovery.clone()
    }

    /// A live connection to `node`, if this node holds one.
    pub(crate) fn connection(&self, node: &str) -> Option<Connection> {
        self.view
            .load()
            .get(node)
            .filter(|c| !c.is_closed())
            .cloned()
    }

    /// Republishes `view` from `peers` (whose lock the caller holds).
    fn publish(&self, peers: &HashMap<String, Vec<Connection>>) {
        let view = peers
            .iter()
            .filter_map(|(n, conns)| {
                Some((n.clone(), conns.iter().find(|c| !c.is_closed())?.clone()))
            })
            .collect();
        self.view.store(Arc::new(view));
    }

    /// Every peer's first live connection.
    fn connections(&self) -> Vec<Connection> {
        lock(&self.peers)
            .values()
            .filter_map(|conns| conns.iter().find(|c| !c.is_closed()).cloned())
            .collect()
    }

    /// Closes every connection and stops the background tasks.
    pub(crate) fn stop(&self) {
        self.stopped
            .store(true, std::sync::atomic::Ordering::SeqCst);
        lock(&self.listening).take();
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
        let conns: Vec<Connection> = {
            let mut peers = lock(&self.peers);
            let conns = peers.drain().flat_map(|(_, c)| c).collect();
            self.publish(&peers);
            conns
        };
        for c in conns {
            c.close();
        }
    }
}

/// Starts listening, dialing the seeds, and the heartbeat loop.
pub(crate) async fn start(node: &Arc<NodeInner>, mut cfg: ClusterConfig) -> Result<(), Error> {
    let cookie = cfg.cookie.take().ok_or_else(|| {
        Error::Config("a clustered node needs a cookie (NodeBuilder::cookie)".into())
    })?;
    let identity = Identity {
        cluster: cfg.name.clone(),
        node: node.id.to_string(),
        capabilities: node.capabilities.clone(),
        addr: String::new(),
    };
    let mut transport = TransportConfig::new(identity, cookie.clone());
    if let Some(a) = &cfg.advertise {
        transport.identity.addr = a.clone();
    }
    transport.codec = cfg.codec;
    transport.handshake_timeout = cfg.handshake_timeout;
    let inbound: Arc<dyn Inbound> = Arc::new(NodeInbound(Arc::downgrade(node)));
    let listening = match (&cfg.listen, &cfg.network) {
        (None, _) => None,
        (Some(addr), Network::Tcp) => {
            Some(tcp::listen(addr, transport.clone(), inbound.clone()).await?)
        }
        (Some(addr), Network::Memory(net)) => {
            let mut t = transport.clone();
            t.identity.addr = addr.clone();
            Some(net.listen(addr, t, inbound.clone()))
        }
    };
    if let Some(l) = &listening {
        transport.identity.addr = cfg.advertise.clone().unwrap_or_else(|| l.addr().to_owned());
    }
    let cluster = Cluster {
        addrs: Mutex::new(cfg.seeds.iter().cloned().collect()),
        cfg,
        transport,
        peers: Mutex::new(HashMap::new()),
        view: arc_swap::ArcSwap::from_pointee(HashMap::new()),
        dialing: Mutex::new(HashSet::new()),
        backoff: Mutex::new(HashMap::new()),
        tasks: Mutex::new(Vec::new()),
        listening: Mutex::new(None),
        stopped: std::sync::atomic::AtomicBool::new(false),
        gate: Mutex::new(None),
    };
    let addr = cluster.addr().to_owned();
    node.membership.send_modify(|m| {
        m.upsert(&node.id, &addr, &node.capabilities);
    });
    if node.cluster.set(cluster).is_err() {
        return Err(Error::Config("cluster started twice".into()));
    }
    let Some(cluster) = node.cluster.get() else {
        return Err(Error::Config("cluster missing".into()));
    };
    let mut tasks = Vec::new();
    if let Some(mut l) = listening {
        let weak = Arc::downgrade(node);
        tasks.push(tokio::spawn(async move {
            while let Some(conn) = l.accepted().await {
                match weak.upgrade() {
                    Some(node) => add_peer(&node, conn),
                    None => return,
                }
            }
        }));
    }
    tasks.push(tokio::spawn(heartbeat(
        Arc::downgrade(node),
        inbound.clone(),
    )));
    lock(&cluster.tasks).extend(tasks);
    if let Some(discovery) = cluster.discovery() {
        *lock(&cluster.gate) = Some(HashSet::new());
        let me = LocalNode {
            cluster: cluster.cfg.name.clone(),
            node: node.id.to_string(),
            addr: cluster.addr().to_owned(),
            capabilities: node.capabilities.clone(),
            protocol: wire::VERSION,
        };
        let (tx, rx) = tokio::sync::watch::channel(Peers::new());
        if let Err(e) = discovery.start(me, tx).await {
            cluster.stop();
            return Err(e);
        }
        let follow = tokio::spawn(follow_discovery(Arc::downgrade(node), rx, inbound));
        lock(&cluster.tasks).push(follow);
    }
    Ok(())
}

/// Applies each view of an authoritative discovery.
async fn follow_discovery(
    weak: Weak<NodeInner>,
    mut rx: tokio::sync::watch::Receiver<Peers>,
    inbound: Arc<dyn Inbound>,
) {
    loop {
        let peers = rx.borrow_and_update().clone();
        match weak.upgrade() {
            Some(node) => apply_discovered(&node, &peers, &inbound),
            None => return,
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

/// The discovery reports exactly `peers` healthy: they become the places
/// to dial, members it no longer reports leave, connected peers it reports
/// join, and the others are dialed.
fn apply_discovered(node: &Arc<NodeInner>, peers: &Peers, inbound: &Arc<dyn Inbound>) {
    let Some(cluster) = node.cluster.get() else {
        return;
    };
    *lock(&cluster.gate) = Some(peers.keys().cloned().collect());
    *lock(&cluster.addrs) = peers.values().map(|p| p.addr.clone()).collect();
    let connected: Vec<Peer> = cluster
        .connections()
        .iter()
        .map(|c| c.peer().clone())
        .collect();
    node.update_membership(|m| {
        let gone: Vec<String> = m
            .nodes()
            .filter(|n| *n != &*node.id && !peers.contains_key(*n))
            .map(str::to_owned)
            .collect();
        let mut changed = false;
        for n in gone {
            tracing::info!(node = %node.id, peer = %n, "peer down (not healthy in discovery)");
            changed |= m.remove(&n);
        }
        for p in connected.iter().filter(|p| peers.contains_key(&p.node)) {
            changed |= m.upsert(&p.node, &p.addr, &p.capabilities);
        }
        changed
    });
    for p in peers.values() {
        if !connected.iter().any(|c| c.node == p.node) {
            lock(&cluster.backoff).remove(&p.addr);
            dial(node, p.addr.clone(), inbound.clone());
        }
    }
}

/// Records a handshaken connection; the peer becomes a member.
fn add_peer(node: &Arc<NodeInner>, conn: Connection) {
    let Some(cluster) = node.cluster.get() else {
        return;
    };
    let peer = conn.peer().clone();
    if peer.node == *node.id {
        conn.close(); // dialed ourselves through a seed
        return;
    }
    {
        let mut peers = lock(&cluster.peers);
        // Checked under the peers lock, which `stop` takes after setting it.
        if cluster.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            drop(peers);
            conn.close();
            return;
        }
        let conns = peers.entry(peer.node.clone()).or_default();
        conns.retain(|c| !c.is_closed());
        if conns.len() >= MAX_CONNECTIONS_PER_PEER {
            drop(peers);
            conn.close();
            return;
        }
        conns.push(conn.clone());
        cluster.publish(&peers);
    }
    // Static discovery admits every peer and keeps its address to dial;
    // an authoritative one admits the peers it reports, and says where
    // they are itself.
    let (admitted, gated) = match &*lock(&cluster.gate) {
        None => (true, false),
        Some(g) => (g.contains(&peer.node), true),
    };
    if admitted {
        if !peer.addr.is_empty() && !gated {
            lock(&cluster.addrs).insert(peer.addr.clone());
        }
        node.update_membership(|m| m.upsert(&peer.node, &peer.addr, &peer.capabilities));
        tracing::info!(node = %node.id, peer = %peer.node, "peer up");
    } else {
        tracing::debug!(node = %node.id, peer = %peer.node, "connected to a peer discovery does not report (yet)");
    }
    let weak = Arc::downgrade(node);
    tokio::spawn(async move {
        conn.closed().await;
        if let Some(node) = weak.upgrade() {
            remove_connection(&node, &peer.node, &conn);
        }
    });
}

/// Forgets a closed connection; the peer leaves when none is left.
fn remove_connection(node: &Arc<NodeInner>, peer: &str, conn: &Connection) {
    let Some(cluster) = node.cluster.get() else {
        return;
    };
    let gone = {
        let mut peers = lock(&cluster.peers);
        let Some(conns) = peers.get_mut(peer) else {
            return;
        };
        conns.retain(|c| !c.same(conn) && !c.is_closed());
        let gone = conns.is_empty();
        if gone {
            peers.remove(peer);
        }
        cluster.publish(&peers);
        gone
    };
    if gone && node.update_membership(|m| m.remove(peer)) {
        tracing::info!(node = %node.id, peer, "peer down");
    }
}

/// Dials `addr` unless a dial is in progress; on success the peer joins.
fn dial(node: &Arc<NodeInner>, addr: String, inbound: Arc<dyn Inbound>) {
    let Some(cluster) = node.cluster.get() else {
        return;
    };
    if addr == cluster.addr() || !lock(&cluster.dialing).insert(addr.clone()) {
        return;
    }
    let weak = Arc::downgrade(node);
    tokio::spawn(async move {
        let Some(node) = weak.upgrade() else { return };
        let Some(cluster) = node.cluster.get() else {
            return;
        };
        let result = match &cluster.cfg.network {
            Network::Tcp => tcp::dial(&addr, &cluster.transport, inbound).await,
            Network::Memory(net) => net.dial(&addr, &cluster.transport, inbound).await,
        };
        lock(&cluster.dialing).remove(&addr);
        match result {
            Ok(conn) => {
                lock(&cluster.backoff).remove(&addr);
                add_peer(&node, conn);
            }
            Err(e) => {
                // Back off exponentially from one heartbeat up to 32; log
                // the first failure, then only at debug level.
                let mut backoff = lock(&cluster.backoff);
                let (failures, next) = backoff
                    .entry(addr.clone())
                    .or_insert((0, tokio::time::Instant::now()));
                *failures += 1;
                *next = tokio::time::Instant::now()
                    + cluster.cfg.heartbeat * (1u32 << (*failures).min(5));
                if *failures == 1 {
                    tracing::warn!(node = %node.id, addr, "cannot reach peer: {e}");
                } else {
                    tracing::debug!(node = %node.id, addr, failures = *failures, "cannot reach peer: {e}");
                }
            }
        }
    });
}

/// Every heartbeat: dial the addresses without a member (backing off
/// exponentially, up to 32 heartbeats, from those that failed), ping every peer
/// (closing those that do not answer within the failure timeout), and
/// gossip the membership.
async fn heartbeat(weak: Weak<NodeInner>, inbound: Arc<dyn Inbound>) {
    let Some(period) = weak
        .upgrade()
        .and_then(|n| n.cluster.get().map(|c| c.cfg.heartbeat))
    else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(node) = weak.upgrade() else { return };
        let Some(cluster) = node.cluster.get() else {
            return;
        };
        let membership = node.membership.borrow().clone();
        let mut reached: HashSet<String> = membership.iter().map(|(_, i)| i.addr.clone()).collect();
        // Connected but not (yet) admitted by the discovery: no need to dial.
        reached.extend(cluster.connections().iter().map(|c| c.peer().addr.clone()));
        let now = tokio::time::Instant::now();
        let to_dial: Vec<String> = {
            let backoff = lock(&cluster.backoff);
            lock(&cluster.addrs)
                .iter()
                .filter(|a| !reached.contains(*a))
                .filter(|a| backoff.get(*a).is_none_or(|(_, next)| *next <= now))
                .cloned()
                .collect()
        };
        for addr in to_dial {
            dial(&node, addr, inbound.clone());
        }
        let gossip = wire::Membership {
            members: membership
                .iter()
                .map(|(n, i)| Member {
                    node: n.to_owned(),
                    addr: i.addr.clone(),
                    capabilities: i.capabilities.clone(),
                })
                .collect(),
        };
        let timeout = cluster.cfg.failure_timeout;
        for conn in cluster.connections() {
            let _ = conn.send_membership(&gossip);
            tokio::spawn(async move {
                if let Err(e) = conn.ping(timeout).await {
                    tracing::warn!(peer = %conn.peer().node, "no heartbeat answer within {timeout:?} ({e}): closing");
                    conn.close();
                }
            });
        }
    }
}

/// An encoded call on its way.
enum Started {
    Local(tokio::sync::oneshot::Receiver<Result<Vec<u8>, Error>>),
    /// Forwarded, with the body kept for one retry if the owner dies.
    Forwarded(
        std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, Error>> + Send>>,
        Vec<u8>,
    ),
}

/// Serves requests that peers send to this node.
struct NodeInbound(Weak<NodeInner>);

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
        if let Err(e) = node.cast_wire(tag, &cast.id, payload, hops) {
            tracing::debug!(node = %node.id, "inbound cast dropped: {e}");
        }
    }

    fn membership(&self, _from: &Peer, membership: wire::Membership) {
        let Some(node) = self.0.upgrade() else { return };
        let Some(cluster) = node.cluster.get() else {
            return;
        };
        if lock(&cluster.gate).is_some() {
            return; // the discovery says where peers are
        }
        let mut new = Vec::new();
        {
            let mut addrs = lock(&cluster.addrs);
            for m in membership.members {
                if m.node != *node.id && !m.addr.is_empty() && addrs.insert(m.addr.clone()) {
                    new.push(m.addr);
                }
            }
        }
        let inbound: Arc<dyn Inbound> = Arc::new(NodeInbound(self.0.clone()));
        for addr in new {
            dial(&node, addr, inbound.clone());
        }
    }
}

impl NodeInner {
    /// Serves a call from a peer: enqueued here with its responder (the
    /// activation answers straight into the connection), or forwarded once.
    fn serve_peer(self: &Arc<Self>, call: wire::Call, reply: Responder) {
        let tag = call.tag;
        match self.locate(tag, &call.id) {
            Err(e) => reply.send(Err(e)),
            Ok((route, None)) => {
                let body = call.payload.into_vec();
                let reply = WireReply::Peer(reply);
                // On refusal the envelope answers the peer itself.
                let _ = self.actors[route.actor]
                    .2
                    .send_wire(&call.id, WireCall { tag, body, reply });
            }
            Ok((_, Some(_))) => {
                let timeout = reply.deadline().map_or(Duration::ZERO, |d| {
                    d.saturating_duration_since(tokio::time::Instant::now())
                });
                let fut = self.serve_wire(
                    tag,
                    &call.id,
                    call.payload.into_vec(),
                    timeout,
                    call.hops,
                    true,
                );
                tokio::spawn(async move { reply.send(fut.await.map(|b| b.to_vec())) });
            }
        }
    }

    /// Runs an encoded call here, or forwards it once to the owner.
    ///
    /// Routing and enqueueing happen before the first await, so requests
    /// that arrive in order on one connection reach the mailbox in order.
    pub(crate) fn serve_wire(
        self: &Arc<Self>,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        timeout: Duration,
        hops: u8,
        from_peer: bool,
    ) -> impl std::future::Future<Output = Result<Bytes, Error>> + Send + 'static {
        let started = self.start_wire(tag, id, body, timeout, hops, from_peer);
        // What a re-route needs, taken only for a forward (rare), not for
        // every call served here.
        let retry =
            matches!(started, Ok(Started::Forwarded(..))).then(|| (self.clone(), id.to_owned()));
        async move {
            match started? {
                Started::Local(rx) => local_reply(rx).await,
                Started::Forwarded(fut, body) => match fut.await {
                    // The owner died under the forward: it is out of the
                    // membership now; route once more (to us, or its heir).
                    Err(Error::NodeDown { node }) => {
                        let Some((me, id)) = retry else {
                            return Err(Error::NodeDown { node });
                        };
                        me.evict(&node);
                        match me.start_wire(tag, &id, body, timeout, hops + 1, true)? {
                            Started::Local(rx) => local_reply(rx).await,
                            Started::Forwarded(..) => Err(Error::NodeDown { node }),
                        }
                    }
                    other => other,
                },
            }
        }
    }

    fn start_wire(
        &self,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        timeout: Duration,
        hops: u8,
        from_peer: bool,
    ) -> Result<Started, Error> {
        let (route, owner) = self.locate(tag, id)?;
        match owner {
            None => {
                // The activation answers Timeout at the deadline.
                let (reply, rx) = ReplyTo::call(tokio::time::Instant::now() + timeout);
                let reply = WireReply::Local(reply);
                self.actors[route.actor]
                    .2
                    .send_wire(id, WireCall { tag, body, reply })?;
                Ok(Started::Local(rx))
            }
            // Not ours (any more): forward once to the owner.
            Some(conn) if hops == 0 || !from_peer => {
                let id = id.to_owned();
                let kept = body.clone();
                Ok(Started::Forwarded(
                    Box::pin(async move { conn.call(tag, &id, body, timeout, hops + 1).await }),
                    kept,
                ))
            }
            Some(conn) => Err(Error::NodeDown {
                node: conn.peer().node.clone(),
            }),
        }
    }

    /// Runs an encoded cast here, or forwards it once to the owner.
    pub(crate) fn cast_wire(
        &self,
        tag: u64,
        id: &str,
        body: Vec<u8>,
        hops: u8,
    ) -> Result<(), Error> {
        let (route, owner) = self.locate(tag, id)?;
        match owner {
            None => {
                let reply = WireReply::Local(ReplyTo::cast());
                self.actors[route.actor]
                    .2
                    .send_wire(id, WireCall { tag, body, reply })
            }
            Some(conn) if hops == 0 => conn.cast(tag, id, body, hops + 1),
            Some(conn) => Err(Error::NodeDown {
                node: conn.peer().node.clone(),
            }),
        }
    }

    /// The handler-table entry of `tag`, and who owns the shard of `id` for
    /// its capability (`None`: this node).
    fn locate(&self, tag: u64, id: &str) -> Result<(WireRoute, Option<Connection>), Error> {
        let route = *self.wire.get(&tag).ok_or(Error::UnknownMessage {
            actor: String::from("(any)"),
            tag,
        })?;
        let owner = self.owner_of_key(route.capability_key, self.actors[route.actor].1, id)?;
        Ok((route, owner))
    }

    /// The live connection to `node`; without one, `node` is down by the
    /// membership's own rule, so it is removed at once (rather than when
    /// the connection's watcher gets to it) and `None` returned.
    fn peer_or_evict(&self, node: &str) -> Option<Connection> {
        let conn = self.cluster.get().and_then(|c| c.connection(node));
        if conn.is_none() {
            self.evict(node);
        }
        conn
    }

    fn evict(&self, node: &str) {
        if node != &*self.id && self.update_membership(|m| m.remove(node)) {
            tracing::info!(node = %self.id, peer = node, "peer down (no live connection)");
        }
    }

    /// Who owns the shard of `id` for the capability whose key is `key`:
    /// `None` for this node, else a live connection to the owner. An owner
    /// without one is evicted and the (recomputed) table read again.
    pub(crate) fn owner_of_key(
        &self,
        key: u64,
        capability: &str,
        id: &str,
    ) -> Result<Option<Connection>, Error> {
        let s = shard(id);
        loop {
            let owner = {
                let routing = self.routing.load();
                let table = routing.get(key).ok_or_else(|| Error::NoNodeForCapability {
                    capability: capability.to_owned(),
                })?;
                if table.is_local(s) {
                    return Ok(None);
                }
                table.owner(s).to_owned()
            };
            if let Some(conn) = self.peer_or_evict(&owner) {
                return Ok(Some(conn));
            }
        }
    }
}

async fn local_reply(
    rx: tokio::sync::oneshot::Receiver<Result<Vec<u8>, Error>>,
) -> Result<Bytes, Error> {
    rx.await
        .unwrap_or(Err(Error::ShuttingDown))
        .map(Bytes::from)
}
