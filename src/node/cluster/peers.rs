//! The peer table (sans-IO): connections by node id, where to dial, dials
//! in progress, backoff and admission. The cluster's owner task drives it
//! with events and carries out what it returns; it does no I/O and reads
//! no clock (times are passed in), so it is unit-tested on its own.
//!
//! Keys: a peer is its **node id**. An address is only where to dial it,
//! so a node reached through a sidecar's local upstream port (an address
//! that never equals what it advertises) is still "reached" and not dialed
//! again. A seed is known by its address until a dial through it finds
//! which node answers; from then on it counts as reached while that node
//! is.
//!
//! Rules:
//! - At most `max_per_peer` live connections per peer; one more is
//!   refused (the caller closes it). Order of use: the oldest live
//!   connection carries the calls; the others are spares that take over,
//!   in age order, when it closes. A connection being retired (maximum
//!   lifetime, see `retire`) carries calls only while no other one can,
//!   and none once sealed; it does not count against the limit.
//! - A connection the *peer* retires does not count as one: a dial to
//!   that peer is due (its replacement).
//! - Admission: with an authoritative discovery (a *gate*) a connected
//!   peer is a member only while the discovery reports it; without one,
//!   every connected peer is a member.
//! - Dials: a target is due when its node has no live connection, no dial
//!   to it is in progress, and its backoff has passed. Failures back off
//!   exponentially from one heartbeat up to 32.
//! - A change of a peer's dial target resets its backoff: a new address
//!   (gossip, the discovery) or its sidecar upstream becoming live or
//!   changing ([`PeerTable::on_retarget`]). The peer is due at once; if a
//!   dial to it was in progress (to the old target), its failure does not
//!   back off: the peer is due again at once, at the new target.
//! - Gossip adds at most [`MAX_PEERS`] peers: once the table knows that
//!   many, gossip about further nodes is ignored (and counted, for a
//!   warning at most once a minute, see [`PeerTable::gossip_overflow`]),
//!   so a peer cannot grow the table without end. Connections and an
//!   authoritative discovery are not limited by it: each peer they add
//!   is an authenticated connection, or the operator's own view.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use tokio::time::Instant;

use crate::transport::DialTarget;

/// The most peers a node learns by gossip: a cluster that relies on
/// static seeds and gossip holds at most this many nodes (past it, use an
/// authoritative discovery such as Consul).
pub(crate) const MAX_PEERS: usize = 1024;

/// How often, at most, ignored gossip is reported.
pub(crate) const OVERFLOW_REPORT: Duration = Duration::from_secs(60);

/// `key`'s target changed: forget its backoff; a dial in progress (to
/// the old target) is marked stale, so its failure does not back off.
fn retarget(
    backoff: &mut HashMap<DialKey, Backoff>,
    dialing: &HashSet<DialKey>,
    stale: &mut HashSet<DialKey>,
    key: DialKey,
) {
    backoff.remove(&key);
    if dialing.contains(&key) {
        stale.insert(key);
    }
}

/// What the table needs of a connection.
pub(crate) trait Conn: Clone {
    /// Whether `self` and `other` are the same connection.
    fn same(&self, other: &Self) -> bool;
    /// Whether it has closed.
    fn is_closed(&self) -> bool;
    /// The incarnation of the node at the other end.
    fn incarnation(&self) -> u64;
    /// Whether it is being retired, by either side.
    fn is_retiring(&self) -> bool;
    /// Whether the peer retires it (this side dials a replacement).
    fn is_retired_by_peer(&self) -> bool;
    /// Whether it takes no new call.
    fn is_sealed(&self) -> bool;
}

/// The connection that carries calls among `conns` (oldest first): the
/// oldest open unsealed one not being retired, else the oldest open
/// unsealed one. None when every open one is sealed (retired, or its peer
/// is leaving): the peer is not reachable for new calls.
pub(crate) fn carrier<C: Conn>(conns: &[C]) -> Option<&C> {
    let open = |c: &&C| !c.is_closed() && !c.is_sealed();
    conns
        .iter()
        .filter(open)
        .find(|c| !c.is_retiring())
        .or_else(|| conns.iter().find(open))
}

/// Whether `c` counts as a connection to its peer (no dial is due for it).
fn holds<C: Conn>(c: &C) -> bool {
    !c.is_closed() && !c.is_retired_by_peer()
}

impl Conn for crate::transport::Connection {
    fn same(&self, other: &Self) -> bool {
        crate::transport::Connection::same(self, other)
    }
    fn is_closed(&self) -> bool {
        crate::transport::Connection::is_closed(self)
    }
    fn incarnation(&self) -> u64 {
        self.peer().incarnation
    }
    fn is_retiring(&self) -> bool {
        crate::transport::Connection::is_retiring(self)
    }
    fn is_retired_by_peer(&self) -> bool {
        crate::transport::Connection::is_retired_by_peer(self)
    }
    fn is_sealed(&self) -> bool {
        crate::transport::Connection::is_sealed(self)
    }
}

/// What a dial was for: a node (known id) or a seed (known address).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum DialKey {
    Node(String),
    Seed(String),
}

#[derive(Debug, Clone, Copy)]
struct Backoff {
    failures: u32,
    next: Instant,
}

/// A known peer.
#[derive(Debug)]
struct Entry<C> {
    /// Live connections, oldest first.
    conns: Vec<C>,
    /// Where to dial it (empty: nowhere known).
    addr: String,
}

impl<C> Default for Entry<C> {
    fn default() -> Self {
        Entry {
            conns: Vec::new(),
            addr: String::new(),
        }
    }
}

/// What became of a new connection.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Kept, and the peer is a member.
    Member,
    /// Kept, but the discovery does not report the peer (yet).
    Held,
    /// Not kept: the caller closes it (a self-dial, or one too many).
    Refused(&'static str),
}

/// The peer table. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct PeerTable<C> {
    local: String,
    max_per_peer: usize,
    heartbeat: Duration,
    peers: HashMap<String, Entry<C>>,
    /// Seed addresses, and the node each one turned out to be.
    seeds: BTreeMap<String, Option<String>>,
    /// The seeds given in the configuration.
    static_seeds: BTreeSet<String>,
    /// The seeds the last DNS answer gave ([`PeerTable::set_dns_seeds`]).
    dns_seeds: BTreeSet<String>,
    dialing: HashSet<DialKey>,
    backoff: HashMap<DialKey, Backoff>,
    /// Dials in progress whose target changed since they started: their
    /// failure is no reason to back off.
    stale: HashSet<DialKey>,
    /// The node ids an authoritative discovery reports; `None`: static.
    gate: Option<HashSet<String>>,
    /// Nodes that announced they are leaving, by the incarnation that
    /// leaves: never a member again (a restart comes back as another).
    left: HashMap<String, u64>,
    /// This node is leaving: it dials nothing more.
    leaving: bool,
    /// Gossiped nodes ignored (the table was full) since the last report.
    overflow: usize,
    /// When ignored gossip was last reported.
    reported: Option<Instant>,
}

impl<C: Conn> PeerTable<C> {
    pub(crate) fn new(local: &str, max_per_peer: usize, heartbeat: Duration) -> Self {
        PeerTable {
            local: local.to_owned(),
            max_per_peer: max_per_peer.max(1),
            heartbeat,
            peers: HashMap::new(),
            seeds: BTreeMap::new(),
            static_seeds: BTreeSet::new(),
            dns_seeds: BTreeSet::new(),
            dialing: HashSet::new(),
            backoff: HashMap::new(),
            stale: HashSet::new(),
            gate: None,
            left: HashMap::new(),
            leaving: false,
            overflow: 0,
            reported: None,
        }
    }

    /// This node is leaving: no more dials.
    pub(crate) fn set_leaving(&mut self) {
        self.leaving = true;
    }

    /// `node` (run `incarnation`) announced it is leaving: it stops being
    /// a member; its connections stay for the calls in flight. Returns
    /// whether it was connected.
    pub(crate) fn on_leaving(&mut self, node: &str, incarnation: u64) -> bool {
        self.left.insert(node.to_owned(), incarnation);
        self.is_connected(node)
    }

    /// Whether a connection of this incarnation of `node` may make it a
    /// member.
    fn admits_run(&self, node: &str, incarnation: u64) -> bool {
        self.admits(node) && self.left.get(node) != Some(&incarnation)
    }

    /// Adds seed addresses (static discovery).
    pub(crate) fn add_seeds<'a>(&mut self, seeds: impl IntoIterator<Item = &'a str>) {
        for s in seeds {
            self.static_seeds.insert(s.to_owned());
            self.seeds.entry(s.to_owned()).or_insert(None);
        }
    }

    /// Replaces the seeds a DNS name gave (static discovery): the new
    /// addresses are dialed; those gone from the answer are no longer
    /// (their backoff forgotten), unless also given in the configuration.
    /// A peer reached through one stays a peer: its connection decides.
    pub(crate) fn set_dns_seeds(&mut self, addrs: impl IntoIterator<Item = String>) {
        if self.gate.is_some() {
            return;
        }
        let answer: BTreeSet<String> = addrs.into_iter().collect();
        for gone in self.dns_seeds.difference(&answer) {
            if !self.static_seeds.contains(gone) {
                self.seeds.remove(gone);
                self.backoff.remove(&DialKey::Seed(gone.clone()));
            }
        }
        for a in &answer {
            self.seeds.entry(a.clone()).or_insert(None);
        }
        self.dns_seeds = answer;
    }

    /// Whether `node` may be a member now.
    /// Whether an authoritative discovery gates membership (its
    /// addresses are the ones dialed).
    pub(crate) fn authoritative(&self) -> bool {
        self.gate.is_some()
    }

    pub(crate) fn admits(&self, node: &str) -> bool {
        self.gate.as_ref().is_none_or(|g| g.contains(node))
    }

    /// The live connection that carries calls to `node` (see [`carrier`]).
    pub(crate) fn connection(&self, node: &str) -> Option<&C> {
        carrier(&self.peers.get(node)?.conns)
    }

    /// Every peer's live connections, oldest first.
    pub(crate) fn connections(&self) -> impl Iterator<Item = (&str, &[C])> {
        self.peers
            .iter()
            .filter(|(_, e)| !e.conns.is_empty())
            .map(|(n, e)| (n.as_str(), e.conns.as_slice()))
    }

    /// Whether `node` has a live connection.
    pub(crate) fn is_connected(&self, node: &str) -> bool {
        self.connection(node).is_some()
    }

    /// A handshaken connection to `node` (which advertises `addr`), dialed
    /// for `via` (or accepted: `None`).
    pub(crate) fn on_connected(
        &mut self,
        node: &str,
        addr: &str,
        conn: C,
        via: Option<&DialKey>,
    ) -> Admission {
        if let Some(key) = via {
            self.dialing.remove(key);
            self.stale.remove(key);
            self.backoff.remove(key);
            if let DialKey::Seed(s) = key {
                // (Not again if the DNS answer dropped it meanwhile.)
                if let Some(reached) = self.seeds.get_mut(s) {
                    *reached = Some(node.to_owned());
                }
            }
        }
        if node == self.local {
            return Admission::Refused("dialed itself");
        }
        let max = self.max_per_peer;
        let gated = self.gate.is_some();
        let incarnation = conn.incarnation();
        if self.left.get(node).is_some_and(|i| *i != incarnation) {
            self.left.remove(node); // a new run of a node that left
        }
        let entry = self.peers.entry(node.to_owned()).or_default();
        entry.conns.retain(|c| !c.is_closed());
        if entry.conns.iter().filter(|c| !c.is_retiring()).count() >= max {
            return Admission::Refused("enough connections to this peer");
        }
        entry.conns.push(conn);
        // Static discovery learns where to dial from the handshake; an
        // authoritative one says so itself.
        if !gated && !addr.is_empty() {
            entry.addr = addr.to_owned();
        }
        if self.admits_run(node, incarnation) {
            Admission::Member
        } else {
            Admission::Held
        }
    }

    /// A connection to `node` closed. Returns whether the peer has none
    /// left (it leaves the membership).
    pub(crate) fn on_closed(&mut self, node: &str, conn: &C) -> bool {
        let Some(entry) = self.peers.get_mut(node) else {
            return false;
        };
        let before = entry.conns.len();
        entry.conns.retain(|c| !c.same(conn) && !c.is_closed());
        before > 0 && entry.conns.is_empty()
    }

    /// A dial for `key` failed at `now`. Returns the failures in a row
    /// (0: the target changed while it was dialed, so no backoff: the
    /// new target is due at once).
    pub(crate) fn on_dial_failed(&mut self, key: &DialKey, now: Instant) -> u32 {
        self.dialing.remove(key);
        if self.stale.remove(key) {
            self.backoff.remove(key);
            return 0;
        }
        if matches!(key, DialKey::Seed(s) if !self.seeds.contains_key(s)) {
            // A DNS seed dropped while its dial was in flight.
            return 1;
        }
        let b = self.backoff.entry(key.clone()).or_insert(Backoff {
            failures: 0,
            next: now,
        });
        b.failures += 1;
        b.next = now + self.heartbeat * (1u32 << b.failures.min(5));
        b.failures
    }

    /// Peers learned from gossip: places to dial (static discovery only).
    /// Returns whether any is new. A node the table does not know is
    /// ignored once it holds [`MAX_PEERS`] peers.
    pub(crate) fn on_gossip<'a>(
        &mut self,
        members: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> bool {
        if self.gate.is_some() {
            return false; // the discovery says where peers are
        }
        let mut new = false;
        for (node, addr) in members {
            if node == self.local || addr.is_empty() {
                continue;
            }
            if !self.peers.contains_key(node) && self.peers.len() >= MAX_PEERS {
                self.overflow = self.overflow.saturating_add(1);
                continue;
            }
            let entry = self.peers.entry(node.to_owned()).or_default();
            // A connected peer's address does not matter; an unconnected
            // one may have restarted elsewhere: take the news.
            let connected = entry.conns.iter().any(|c| !c.is_closed());
            if entry.addr != addr && (entry.addr.is_empty() || !connected) {
                entry.addr = addr.to_owned();
                retarget(
                    &mut self.backoff,
                    &self.dialing,
                    &mut self.stale,
                    DialKey::Node(node.to_owned()),
                );
                new = true;
            }
        }
        new
    }

    /// How many gossiped nodes were ignored since the last report, if
    /// any were and a report is due at `now` (at most one per
    /// [`OVERFLOW_REPORT`]); the count starts again.
    pub(crate) fn gossip_overflow(&mut self, now: Instant) -> Option<usize> {
        if self.overflow == 0 || self.reported.is_some_and(|r| now < r + OVERFLOW_REPORT) {
            return None;
        }
        self.reported = Some(now);
        Some(std::mem::take(&mut self.overflow))
    }

    /// The full view of an authoritative discovery: node id → address.
    /// It becomes the gate and the places to dial; backoff is forgotten
    /// for the peers it reports (they are worth a try now). Returns the
    /// connected peers it admits.
    pub(crate) fn on_discovered<'a>(
        &mut self,
        peers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Vec<String> {
        let mut gate = HashSet::new();
        for (node, addr) in peers {
            if node == self.local {
                continue;
            }
            gate.insert(node.to_owned());
            let entry = self.peers.entry(node.to_owned()).or_default();
            let moved = entry.addr != addr;
            entry.addr = addr.to_owned();
            let key = DialKey::Node(node.to_owned());
            if moved {
                retarget(&mut self.backoff, &self.dialing, &mut self.stale, key);
            } else {
                self.backoff.remove(&key);
            }
        }
        for (node, entry) in self.peers.iter_mut() {
            if !gate.contains(node) {
                entry.addr.clear();
            }
        }
        self.seeds.clear();
        self.gate = Some(gate);
        self.peers
            .iter()
            .filter(|(n, e)| {
                e.conns
                    .iter()
                    .find(|c| !c.is_closed())
                    .is_some_and(|c| self.admits_run(n, c.incarnation()))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Where `nodes` are dialed changed although their addresses did not
    /// (their sidecar upstream became live, or leads elsewhere now): their
    /// backoff is forgotten, so each is due at once (see the
    /// [module docs](self)).
    pub(crate) fn on_retarget<'a>(&mut self, nodes: impl IntoIterator<Item = &'a str>) {
        for node in nodes {
            if node == self.local {
                continue;
            }
            retarget(
                &mut self.backoff,
                &self.dialing,
                &mut self.stale,
                DialKey::Node(node.to_owned()),
            );
        }
    }

    /// The dials due at `now`, marked in progress.
    pub(crate) fn due(&mut self, now: Instant) -> Vec<(DialKey, DialTarget)> {
        if self.leaving {
            return Vec::new();
        }
        let ready =
            |key: &DialKey, dialing: &HashSet<DialKey>, backoff: &HashMap<DialKey, Backoff>| {
                !dialing.contains(key) && backoff.get(key).is_none_or(|b| b.next <= now)
            };
        let mut due = Vec::new();
        for (node, entry) in &self.peers {
            if entry.addr.is_empty() || entry.conns.iter().any(holds) {
                continue;
            }
            let key = DialKey::Node(node.clone());
            if ready(&key, &self.dialing, &self.backoff) {
                due.push((key, DialTarget::node(node.clone(), entry.addr.clone())));
            }
        }
        for (addr, resolved) in &self.seeds {
            let reached = match resolved {
                Some(node) => *node == self.local || self.is_connected(node),
                None => false,
            };
            // A seed that is a known node's address is dialed as that node.
            let known = self.peers.values().any(|e| e.addr == *addr);
            let key = DialKey::Seed(addr.clone());
            if !reached && !known && ready(&key, &self.dialing, &self.backoff) {
                due.push((key, DialTarget::addr(addr.clone())));
            }
        }
        for (key, _) in &due {
            self.dialing.insert(key.clone());
        }
        due
    }

    /// Forgets every connection (the node stops); returns them to close.
    pub(crate) fn drain(&mut self) -> Vec<C> {
        self.peers
            .values_mut()
            .flat_map(|e| e.conns.drain(..))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Clone, Debug)]
    /// Id, closed, retirement: 0 live, 1 retiring (ours), 2 retired by
    /// the peer, 3 sealed (and retiring).
    struct FakeConn(Rc<(u32, Cell<bool>, Cell<u8>)>);

    impl FakeConn {
        fn new(id: u32) -> Self {
            FakeConn(Rc::new((id, Cell::new(false), Cell::new(0))))
        }
        fn retire(&self, state: u8) {
            self.0 .2.set(state);
        }
        fn close(&self) {
            self.0 .1.set(true);
        }
        fn id(&self) -> u32 {
            self.0 .0
        }
    }

    impl Conn for FakeConn {
        fn same(&self, other: &Self) -> bool {
            Rc::ptr_eq(&self.0, &other.0)
        }
        fn is_closed(&self) -> bool {
            self.0 .1.get()
        }
        /// Connections with ids from 100 up are a second run of the node.
        fn incarnation(&self) -> u64 {
            u64::from(self.0 .0 >= 100)
        }
        fn is_retiring(&self) -> bool {
            self.0 .2.get() > 0
        }
        fn is_retired_by_peer(&self) -> bool {
            self.0 .2.get() == 2
        }
        fn is_sealed(&self) -> bool {
            self.0 .2.get() == 3
        }
    }

    const HB: Duration = Duration::from_millis(100);

    fn table() -> PeerTable<FakeConn> {
        PeerTable::new("me", 2, HB)
    }

    fn keys(due: &[(DialKey, DialTarget)]) -> Vec<DialKey> {
        due.iter().map(|(k, _)| k.clone()).collect()
    }

    #[test]
    fn dns_seeds_are_replaced_by_each_answer_and_static_seeds_stay() {
        let mut t = table();
        t.add_seeds(["s:1"]);
        t.set_dns_seeds(["d:1".to_owned(), "d:2".to_owned()]);
        let now = Instant::now();
        let mut due = keys(&t.due(now));
        due.sort_by_key(|k| format!("{k:?}"));
        let seed = |a: &str| DialKey::Seed(a.into());
        assert_eq!(due, [seed("d:1"), seed("d:2"), seed("s:1")]);
        // d:1 failed and backs off; the next answer drops it and d:2,
        // adds s:1 (static too) and d:3.
        t.on_dial_failed(&seed("d:1"), now);
        for k in [seed("d:2"), seed("s:1")] {
            t.on_dial_failed(&k, now);
        }
        t.set_dns_seeds(["s:1".to_owned(), "d:3".to_owned()]);
        assert!(!t.seeds.contains_key("d:1") && !t.seeds.contains_key("d:2"));
        assert!(
            !t.backoff.contains_key(&seed("d:1")),
            "its backoff forgotten"
        );
        assert_eq!(keys(&t.due(now)), [seed("d:3")], "s:1 still backs off");
        // An empty answer keeps the static seed; the dial of d:3 (in
        // flight since the `due` above) that lands afterwards adds
        // nothing back.
        t.set_dns_seeds(Vec::new());
        assert_eq!(t.seeds.keys().collect::<Vec<_>>(), ["s:1"]);
        t.on_dial_failed(&seed("d:3"), now);
        assert!(!t.seeds.contains_key("d:3") && !t.backoff.contains_key(&seed("d:3")));
    }

    #[test]
    fn a_seed_is_dialed_once_then_counts_as_its_node() {
        let mut t = table();
        t.add_seeds(["10.0.0.1:7000"]);
        let now = Instant::now();
        let due = t.due(now);
        assert_eq!(keys(&due), [DialKey::Seed("10.0.0.1:7000".into())]);
        assert!(t.due(now).is_empty(), "a dial in progress is not repeated");
        let conn = FakeConn::new(1);
        let key = DialKey::Seed("10.0.0.1:7000".into());
        assert_eq!(
            t.on_connected("b", "10.0.0.1:7000", conn.clone(), Some(&key)),
            Admission::Member
        );
        assert!(t.due(now).is_empty(), "reached through the seed");
        // The node closes: dialed again, as a node (its address is known).
        conn.close();
        assert!(t.on_closed("b", &conn));
        assert_eq!(keys(&t.due(now)), [DialKey::Node("b".into())]);
    }

    #[test]
    fn reached_is_by_node_id_not_by_address() {
        // Through a sidecar, the dialed address (a local upstream port)
        // never equals the one the peer advertises: still reached.
        let mut t = table();
        t.on_discovered([("b", "127.0.0.1:21001")]);
        let now = Instant::now();
        let due = t.due(now);
        assert_eq!(due[0].1, DialTarget::node("b", "127.0.0.1:21001"));
        let key = due[0].0.clone();
        t.on_connected("b", "10.9.9.9:7000", FakeConn::new(1), Some(&key));
        assert!(t.due(now + HB * 100).is_empty());
        // An inbound connection from a node with any address: no dial.
        t.on_discovered([("b", "127.0.0.1:21001"), ("c", "127.0.0.1:21002")]);
        t.on_connected("c", "somewhere-else:1", FakeConn::new(2), None);
        assert!(t.due(now + HB * 100).is_empty());
    }

    #[test]
    fn at_most_n_connections_per_peer_oldest_first() {
        let mut t = table();
        let (c1, c2, c3) = (FakeConn::new(1), FakeConn::new(2), FakeConn::new(3));
        assert_eq!(
            t.on_connected("b", "x", c1.clone(), None),
            Admission::Member
        );
        assert_eq!(
            t.on_connected("b", "x", c2.clone(), None),
            Admission::Member
        );
        assert!(matches!(
            t.on_connected("b", "x", c3, None),
            Admission::Refused(_)
        ));
        assert_eq!(t.connection("b").map(FakeConn::id), Some(1));
        c1.close();
        assert!(!t.on_closed("b", &c1), "a spare is left");
        assert_eq!(t.connection("b").map(FakeConn::id), Some(2));
        // Room again for a new one.
        assert_eq!(
            t.on_connected("b", "x", FakeConn::new(4), None),
            Admission::Member
        );
        c2.close();
        assert!(!t.on_closed("b", &c2));
        assert_eq!(t.connection("b").map(FakeConn::id), Some(4));
    }

    #[test]
    fn self_dials_are_refused_and_the_seed_forgotten() {
        let mut t = table();
        t.add_seeds(["me:1"]);
        let now = Instant::now();
        let due = t.due(now);
        let adm = t.on_connected("me", "me:1", FakeConn::new(1), Some(&due[0].0));
        assert!(matches!(adm, Admission::Refused(_)));
        assert!(t.due(now + HB * 100).is_empty());
    }

    #[test]
    fn failures_back_off_exponentially_up_to_32_heartbeats() {
        let mut t = table();
        t.add_seeds(["s:1"]);
        let key = DialKey::Seed("s:1".into());
        let mut now = Instant::now();
        for expected in [2u32, 4, 8, 16, 32, 32, 32] {
            assert_eq!(keys(&t.due(now)), std::slice::from_ref(&key));
            t.on_dial_failed(&key, now);
            let next = t.backoff[&key].next;
            assert_eq!(next - now, HB * expected);
            assert!(t.due(next - Duration::from_millis(1)).is_empty());
            now = next;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_target_change_resets_the_backoff_and_is_dialed_at_once() {
        let mut t = table();
        t.on_discovered([("b", "b:1")]);
        let key = DialKey::Node("b".into());
        // "No sidecar upstream for b yet", four times: backing off 16 HB.
        for _ in 0..4 {
            let now = Instant::now();
            assert_eq!(keys(&t.due(now)), std::slice::from_ref(&key));
            t.on_dial_failed(&key, now);
            tokio::time::advance(t.backoff[&key].next - now).await;
        }
        let now = Instant::now();
        assert_eq!(keys(&t.due(now)), std::slice::from_ref(&key));
        assert_eq!(t.on_dial_failed(&key, now), 5);
        tokio::time::advance(HB).await;
        assert!(t.due(Instant::now()).is_empty(), "backing off");
        // Its upstream goes live: due at once, and the count starts over.
        t.on_retarget(["b", "me", "unknown"]);
        let now = Instant::now();
        assert_eq!(keys(&t.due(now)), std::slice::from_ref(&key));
        // It moves again while that dial is in progress: the dial (to the
        // old target) fails without backing off; due again at once.
        t.on_retarget(["b"]);
        assert_eq!(t.on_dial_failed(&key, now), 0);
        assert_eq!(keys(&t.due(now)), std::slice::from_ref(&key));
        // An ordinary failure backs off from the start: 2 HB.
        assert_eq!(t.on_dial_failed(&key, now), 1);
        assert_eq!(t.backoff[&key].next - now, HB * 2);
        assert!(t.due(now).is_empty());
        // A new address from the discovery resets it too, also for a dial
        // in progress to the old address.
        tokio::time::advance(HB * 2).await;
        let now = Instant::now();
        assert_eq!(t.due(now)[0].1, DialTarget::node("b", "b:1"));
        t.on_discovered([("b", "b:2")]);
        assert_eq!(t.on_dial_failed(&key, now), 0);
        assert_eq!(t.due(now)[0].1, DialTarget::node("b", "b:2"));
        // The same address again: the dial in progress is not stale.
        t.on_discovered([("b", "b:2")]);
        assert_eq!(t.on_dial_failed(&key, now), 1);
        // Gossip of a new address resets it as well (static discovery).
        let mut t = table();
        t.on_gossip([("c", "c:1")]);
        let c = DialKey::Node("c".into());
        let now = Instant::now();
        assert_eq!(keys(&t.due(now)), std::slice::from_ref(&c));
        t.on_gossip([("c", "c:2")]);
        assert_eq!(t.on_dial_failed(&c, now), 0);
        assert_eq!(t.due(now)[0].1, DialTarget::node("c", "c:2"));
        // A connected peer is not dialed for a retarget.
        t.on_connected("c", "c:2", FakeConn::new(1), Some(&c));
        t.on_retarget(["c"]);
        assert!(t.due(now).is_empty());
    }

    #[test]
    fn a_gate_admits_only_what_the_discovery_reports() {
        let mut t = table();
        t.on_discovered([("b", "b:1")]);
        assert_eq!(
            t.on_connected("c", "c:1", FakeConn::new(1), None),
            Admission::Held
        );
        assert_eq!(
            t.on_connected("b", "b:1", FakeConn::new(2), None),
            Admission::Member
        );
        // c shows up in the discovery: admitted, as connected.
        let admitted = t.on_discovered([("b", "b:1"), ("c", "c:1")]);
        let mut admitted = admitted;
        admitted.sort();
        assert_eq!(admitted, ["b", "c"]);
        // b leaves the discovery: not admitted, not dialed any more.
        t.on_discovered([("c", "c:1")]);
        assert!(!t.admits("b"));
        // Gossip is ignored under a gate.
        assert!(!t.on_gossip([("d", "d:1")]));
    }

    #[test]
    fn gossip_adds_places_to_dial() {
        let mut t = table();
        assert!(t.on_gossip([("b", "b:1"), ("me", "me:1"), ("c", "")]));
        assert!(!t.on_gossip([("b", "b:1")]), "nothing new");
        let now = Instant::now();
        let due = t.due(now);
        assert_eq!(
            due,
            [(DialKey::Node("b".into()), DialTarget::node("b", "b:1"))]
        );
        // Not reached there: a new address (a restart elsewhere) replaces it.
        t.on_dial_failed(&due[0].0, now);
        assert!(t.on_gossip([("b", "b:2")]));
        assert_eq!(t.due(now)[0].1, DialTarget::node("b", "b:2"));
        // Once connected, gossip about its address changes nothing.
        t.on_connected("b", "b:2", FakeConn::new(1), None);
        assert!(!t.on_gossip([("b", "b:3")]));
    }

    #[test]
    fn gossip_adds_at_most_max_peers() {
        let mut t = table();
        let now = Instant::now();
        let names: Vec<(String, String)> = (0..MAX_PEERS + 500)
            .map(|i| (format!("n{i}"), format!("n{i}:1")))
            .collect();
        let gossip = |from: usize, to: usize| {
            names[from..to]
                .iter()
                .map(|(n, a)| (n.as_str(), a.as_str()))
                .collect::<Vec<_>>()
        };
        assert!(t.on_gossip(gossip(0, MAX_PEERS + 500)));
        assert_eq!(t.peers.len(), MAX_PEERS);
        assert_eq!(t.due(now).len(), MAX_PEERS);
        // Reported once, then not again within the minute.
        assert_eq!(t.gossip_overflow(now), Some(500));
        assert!(!t.on_gossip(gossip(MAX_PEERS, MAX_PEERS + 10)));
        assert_eq!(t.gossip_overflow(now + OVERFLOW_REPORT / 2), None);
        assert_eq!(t.peers.len(), MAX_PEERS);
        assert_eq!(t.gossip_overflow(now + OVERFLOW_REPORT), Some(10));
        assert_eq!(t.gossip_overflow(now + OVERFLOW_REPORT * 3), None);
        // Known peers still take news of their address.
        let known = DialKey::Node("n0".into());
        t.on_dial_failed(&known, now);
        assert!(t.on_gossip([("n0", "n0:2")]));
        assert_eq!(t.peers["n0"].addr, "n0:2");
        // A connection is not refused for the gossip limit.
        assert_eq!(
            t.on_connected("late", "late:1", FakeConn::new(1), None),
            Admission::Member
        );
    }

    #[test]
    fn a_node_that_left_is_no_member_until_it_runs_again() {
        let mut t = table();
        let old = FakeConn::new(1);
        assert_eq!(
            t.on_connected("b", "b:1", old.clone(), None),
            Admission::Member
        );
        assert!(t.on_leaving("b", 0));
        // Its connections stay (calls in flight), but another one from the
        // same run does not make it a member again; nor does the discovery.
        assert_eq!(
            t.on_connected("b", "b:1", FakeConn::new(2), None),
            Admission::Held
        );
        t.on_discovered([("b", "b:1")]);
        assert!(t.on_discovered([("b", "b:1")]).is_empty());
        // Its next run is a member.
        old.close();
        t.on_closed("b", &old);
        assert_eq!(
            t.on_connected("b", "b:1", FakeConn::new(100), None),
            Admission::Member
        );
        assert_eq!(t.on_discovered([("b", "b:1")]), ["b"]);
    }

    #[test]
    fn a_retiring_connection_carries_calls_until_a_fresh_one_is_there() {
        let mut t = table();
        t.on_gossip([("b", "b:1")]);
        let now = Instant::now();
        let due = t.due(now);
        let old = FakeConn::new(1);
        t.on_connected("b", "b:1", old.clone(), Some(&due[0].0));
        // We retire it: still the carrier (nothing else), no dial (the
        // peer dials the replacement).
        old.retire(1);
        assert_eq!(t.connection("b").map(FakeConn::id), Some(1));
        assert!(t.due(now).is_empty());
        // The peer retires it: a dial is due.
        old.retire(2);
        assert_eq!(keys(&t.due(now)), [DialKey::Node("b".into())]);
        // The replacement is admitted although the limit counts two
        // (retiring ones do not count), and carries the calls.
        t.on_connected(
            "b",
            "b:1",
            FakeConn::new(2),
            Some(&DialKey::Node("b".into())),
        );
        assert_eq!(
            t.on_connected("b", "b:1", FakeConn::new(3), None),
            Admission::Member
        );
        assert_eq!(t.connection("b").map(FakeConn::id), Some(2));
        // Sealed and alone: it carries nothing.
        let mut t = table();
        let only = FakeConn::new(4);
        t.on_connected("c", "c:1", only.clone(), None);
        only.retire(3);
        assert!(t.connection("c").is_none());
    }

    #[test]
    fn a_leaving_node_dials_nothing() {
        let mut t = table();
        t.add_seeds(["s:1"]);
        t.on_gossip([("b", "b:1")]);
        t.set_leaving();
        assert!(t.due(Instant::now()).is_empty());
    }
}
