//! The owner: the one place the peer table changes, a ractor actor.
//!
//! Every change arrives as an [`Event`] in its mailbox and is applied in
//! order: the table decides (sans-IO), the actor carries it out (closes
//! refused connections, updates the membership, starts dials) and then
//! publishes the view that calls read (calls never message the owner:
//! they read that view). A dial runs on its own task and reports back
//! with an event.
//!
//! Once the cluster is stopped the owner applies no event (it stops
//! itself at the next one): a stopped node's membership stays as it was.
//!
//! Drop contract: an event that carries a connection closes it when
//! dropped unapplied (the actor was stopped, or its mailbox is gone), so
//! a connection that completes its handshake during `stop` is never left
//! open unowned.

use std::sync::{Arc, Weak};

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::peers::{Admission, DialKey, PeerTable};
use super::{Cluster, View};
use crate::discovery::Peers;
use crate::transport::{Ack, Connection, DialTarget, Inbound, Origin};
use crate::wire;

/// A change for the owner task to apply.
pub(crate) enum Event {
    /// A handshaken connection, dialed for a key or accepted (`None`).
    Connected(Owned, Option<DialKey>),
    /// A connection closed.
    Closed(Connection),
    /// A dial failed.
    DialFailed(DialKey, DialTarget, String),
    /// A peer's membership view (places to dial).
    Gossip(wire::MembershipFrame),
    /// The authoritative discovery's full view.
    Discovered(Peers),
    /// Where these peers are dialed changed (their sidecar upstream went
    /// live or moved): dial them at once, whatever their backoff.
    #[cfg_attr(not(feature = "sidecar"), allow(dead_code))]
    Retarget(Vec<String>),
    /// The addresses a DNS name gave now (`DnsSeeds`): the seeds it
    /// contributes, replaced.
    #[cfg_attr(not(feature = "dns"), allow(dead_code))]
    DnsSeeds(Vec<String>),
    /// Time to dial what is due.
    Tick,
    /// A peer (this run of it) is leaving; acknowledge once it is out of
    /// the routing.
    Left(String, u64, Ack),
    /// This node is leaving: dial nothing more.
    Leaving,
    /// Fail (a panic), to test the supervision (`Node::crash_worker`,
    /// hidden feature `internals`).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    Crash,
}

impl Event {
    pub(crate) fn connected(conn: Connection, via: Option<DialKey>) -> Self {
        Event::Connected(Owned(Some(conn)), via)
    }
}

/// A connection not yet owned by the table: closed if dropped.
pub(crate) struct Owned(Option<Connection>);

impl Owned {
    fn take(mut self) -> Option<Connection> {
        self.0.take()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.close();
        }
    }
}

/// The peer-table owner, a ractor actor (see the supervision in
/// [`super::supervisor`]): its mailbox is the event channel, its state the
/// table. It ends when its cluster is gone or stops.
pub(super) struct Owner;

/// The owner's state, and its arguments.
pub(super) struct OwnerState {
    pub(super) cluster: Weak<Cluster>,
    pub(super) table: PeerTable<Connection>,
    pub(super) inbound: Arc<dyn Inbound>,
}

impl Actor for Owner {
    type Msg = Event;
    type State = OwnerState;
    type Arguments = OwnerState;

    async fn pre_start(
        &self,
        _myself: ActorRef<Event>,
        state: OwnerState,
    ) -> Result<OwnerState, ActorProcessingErr> {
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<Event>,
        event: Event,
        st: &mut OwnerState,
    ) -> Result<(), ActorProcessingErr> {
        // A stopped cluster applies nothing more: `stop` closed its
        // connections, and the closes it queued here must not rewrite the
        // membership of a node that left or was severed (each update
        // scans the node's activations). The event is dropped, closing
        // any connection it carries (drop contract above).
        let Some(cluster) = st.cluster.upgrade().filter(|c| !c.is_stopped()) else {
            myself.stop(None);
            return Ok(());
        };
        let joined = apply(&cluster, &mut st.table, event);
        // Publish, then look at `stopped`: `stop` sets it, then swaps the
        // view out; one of the two sees the other's work.
        let view: View = st
            .table
            .connections()
            .map(|(n, c)| (n.to_owned(), c.to_vec()))
            .collect();
        cluster.view.store(Arc::new(view));
        cluster.published.send_replace(());
        // A peer joins the membership only once its connection is in the
        // view: routing to a member without one would evict it.
        if let Some(peer) = joined {
            if cluster.members.update(|m| {
                m.upsert_hosting(
                    &peer.node,
                    &peer.addr,
                    &peer.capabilities,
                    peer.actors.as_deref(),
                )
            }) {
                tracing::info!(node = %cluster.node(), peer = %peer.node, "peer up");
                compare_builds(&cluster, &peer);
            }
        }
        if cluster.is_stopped() {
            for c in st.table.drain() {
                c.close();
            }
            cluster.view.store(Arc::new(View::new()));
            myself.stop(None);
            return Ok(());
        }
        for (key, target) in st.table.due(tokio::time::Instant::now()) {
            dial(&cluster, key, target, st.inbound.clone());
        }
        Ok(())
    }

    /// Stopped (not killed): the connections it owns close.
    async fn post_stop(
        &self,
        _myself: ActorRef<Event>,
        st: &mut OwnerState,
    ) -> Result<(), ActorProcessingErr> {
        for c in st.table.drain() {
            c.close();
        }
        Ok(())
    }
}

/// Applies `event` to the table; returns a peer to add to the membership
/// once the view is published.
fn apply(
    cluster: &Arc<Cluster>,
    table: &mut PeerTable<Connection>,
    event: Event,
) -> Option<wire::Peer> {
    let mut joined = None;
    match event {
        Event::Connected(owned, via) => {
            let conn = owned.take()?;
            let peer = conn.peer().clone();
            conn.set_origin(match &via {
                None => Origin::Inbound,
                Some(DialKey::Seed(_)) => Origin::Seed,
                Some(DialKey::Node(_)) if table.authoritative() => Origin::Discovery,
                Some(DialKey::Node(_)) => Origin::Gossip,
            });
            match table.on_connected(&peer.node, &peer.addr, conn.clone(), via.as_ref()) {
                Admission::Refused(why) => {
                    tracing::debug!(node = %cluster.node(), peer = %peer.node, "closing a connection: {why}");
                    conn.close();
                    return None;
                }
                Admission::Member => joined = Some(peer.clone()),
                Admission::Held => {
                    tracing::debug!(node = %cluster.node(), peer = %peer.node, "connected to a peer discovery does not report (yet)");
                }
            }
            if conn.lifetime().is_some() {
                tokio::spawn(super::retire::supervise(
                    Arc::downgrade(cluster),
                    conn.clone(),
                ));
            }
            let weak = Arc::downgrade(cluster);
            tokio::spawn(async move {
                conn.closed().await;
                if let Some(c) = weak.upgrade() {
                    c.send(Event::Closed(conn));
                }
            });
        }
        Event::Closed(conn) => {
            let peer = &conn.peer().node;
            if table.on_closed(peer, &conn) && cluster.members.update(|m| m.remove(peer)) {
                tracing::info!(node = %cluster.node(), peer = %peer, "peer down");
            }
        }
        Event::DialFailed(key, target, e) => {
            let failures = table.on_dial_failed(&key, tokio::time::Instant::now());
            // Log the first failure, then only at debug level.
            if failures == 0 {
                tracing::debug!(node = %cluster.node(), %target, "cannot reach peer: {e}; its target changed meanwhile: dialing it again");
            } else if failures == 1 {
                tracing::warn!(node = %cluster.node(), %target, "cannot reach peer: {e}");
            } else {
                tracing::debug!(node = %cluster.node(), %target, failures, "cannot reach peer: {e}");
            }
        }
        Event::Gossip(m) => {
            table.on_gossip(m.members.iter().map(|m| (m.node.as_str(), m.addr.as_str())));
            if let Some(ignored) = table.gossip_overflow(tokio::time::Instant::now()) {
                tracing::warn!(
                    node = %cluster.node(), ignored, limit = super::peers::MAX_PEERS,
                    "gossip names more peers than a node learns by gossip: ignored (use an authoritative discovery for a larger cluster)"
                );
            }
        }
        Event::Discovered(peers) => {
            let admitted =
                table.on_discovered(peers.values().map(|p| (p.node.as_str(), p.addr.as_str())));
            let connected: Vec<wire::Peer> = admitted
                .iter()
                .filter_map(|n| table.connection(n))
                .map(|c| c.peer().clone())
                .collect();
            cluster.members.update(|m| {
                let gone: Vec<String> = m
                    .nodes()
                    .filter(|n| *n != cluster.node() && !peers.contains_key(*n))
                    .map(str::to_owned)
                    .collect();
                let mut changed = false;
                for n in gone {
                    tracing::info!(node = %cluster.node(), peer = %n, "peer down (not healthy in discovery)");
                    changed |= m.remove(&n);
                }
                for p in &connected {
                    changed |= m.upsert_hosting(
                        &p.node,
                        &p.addr,
                        &p.capabilities,
                        p.actors.as_deref(),
                    );
                }
                changed
            });
        }
        Event::Retarget(nodes) => {
            tracing::debug!(node = %cluster.node(), peers = ?nodes, "sidecar upstreams live: dialing them now");
            table.on_retarget(nodes.iter().map(String::as_str));
        }
        Event::DnsSeeds(addrs) => table.set_dns_seeds(addrs),
        Event::Tick => {}
        Event::Left(peer, incarnation, ack) => {
            table.on_leaving(&peer, incarnation);
            if cluster.members.update(|m| m.remove(&peer)) {
                tracing::info!(node = %cluster.node(), %peer, "peer leaving");
            }
            ack.send();
        }
        Event::Leaving => table.set_leaving(),
        Event::Crash => panic!("the peer-table owner was told to fail (a test)"),
    }
    joined
}

/// Logs what a new peer hosts differently from this node, for the same
/// capability: an actor type it lacks (placed only on the nodes that host
/// it, so nothing fails), or another build of a type (a message one of the
/// two lacks fails its calls on the ids the lacking node owns).
fn compare_builds(cluster: &Cluster, peer: &wire::Peer) {
    let Some(theirs) = &peer.actors else { return };
    for mine in &cluster.transport.identity.actors {
        if !peer.capabilities.contains(&mine.capability) {
            continue;
        }
        match theirs
            .iter()
            .find(|t| t.capability == mine.capability && t.actor == mine.actor)
        {
            None => tracing::info!(
                node = %cluster.node(), peer = %peer.node,
                "peer hosts capability {:?} without actor type {}: {} is placed only on the nodes that host it",
                mine.capability, mine.actor, mine.actor
            ),
            Some(t) if t.tags != mine.tags => {
                let missing: Vec<&str> = mine
                    .tags
                    .iter()
                    .filter(|x| !t.tags.contains(x))
                    .map(|x| cluster.message_names.get(x).copied().unwrap_or("?"))
                    .collect();
                let extra = t.tags.iter().filter(|x| !mine.tags.contains(x)).count();
                tracing::warn!(
                    node = %cluster.node(), peer = %peer.node,
                    "peer runs another build of {} (capability {:?}): it has no handler for {missing:?} and {extra} handlers this node lacks; a call of a message the owner lacks fails with UnknownMessage (deploy one build of {} on every node that hosts it)",
                    mine.actor, mine.capability, mine.actor
                );
            }
            Some(_) => {}
        }
    }
}

/// Dials `target` on a task of its own; the outcome comes back as an event.
fn dial(cluster: &Arc<Cluster>, key: DialKey, target: DialTarget, inbound: Arc<dyn Inbound>) {
    let (transport, cfg) = (cluster.cfg.transport.clone(), cluster.transport.clone());
    let weak = Arc::downgrade(cluster);
    tokio::spawn(async move {
        let result = transport.dial(&target, &cfg, inbound).await;
        let event = match result {
            Ok(conn) => Event::connected(conn, Some(key)),
            Err(e) => Event::DialFailed(key, target, e.to_string()),
        };
        match weak.upgrade() {
            Some(c) => c.send(event),
            None => drop(event), // closes a connection in it
        }
    });
}
