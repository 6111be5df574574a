//! Clusters of nodes in one process, the way the suites build them
//! (after Proto.Actor's `ClusterFixture`): one place that knows the
//! suites' node settings, seeding and membership waits, instead of a
//! `node()` builder, a membership wait and a three-node fixture per suite.
//!
//! - [`Cluster::memory`] / [`Cluster::tcp`] / [`Cluster::over`] /
//!   [`Cluster::discovered`] start a
//!   [`ClusterBuilder`]: add nodes with [`ClusterBuilder::node`] (each
//!   node's own actors, capabilities, admin endpoint...), settings for all
//!   with [`ClusterBuilder::all`], then [`ClusterBuilder::start`] starts
//!   them in order, each seeded from the first (or, with
//!   [`ClusterBuilder::chain`], from the previous one), and waits until
//!   every node sees all of them;
//! - [`Cluster::node`] gives node `i`, [`Cluster::wait_members`] waits for
//!   a membership size, [`Cluster::remove`] takes a node out gracefully
//!   ([`Removal::Shutdown`]) or not ([`Removal::Sever`], [`Removal::Drop`]);
//! - [`member`] is the suites' base builder (name, cluster, cookie, no
//!   default node), [`fast`] their quick failure detector, [`local`] a
//!   single node without a network, and [`wait_members`],
//!   [`wait_membership`], [`wait_member_names`] the membership waits.

use std::time::Duration;

use mesh::transport::memory::MemoryNetwork;
use mesh::{Membership, Node, NodeBuilder, Transport};

use crate::{soon, within, COOKIE, SOON};

/// The suites' base builder: node `name` of cluster `cluster`, with the
/// suites' strong [`COOKIE`], not installed as the default node.
pub fn member(cluster: &str, name: &str) -> NodeBuilder {
    Node::builder()
        .id(name)
        .default_node(false)
        .cluster(cluster)
        .cookie(COOKIE)
}

/// The quick settings of the in-process suites: heartbeats every 50 ms
/// (peers meet and gossip fast), a peer down after 2 s of silence (the
/// default: a loaded CI machine, or a test panicking on purpose while
/// `RUST_BACKTRACE` symbolizes its backtrace, stalls a runtime thread for
/// hundreds of milliseconds, and 500 ms dropped live peers), a 300 ms
/// shutdown.
pub fn fast(b: NodeBuilder) -> NodeBuilder {
    b.heartbeat(Duration::from_millis(50), Duration::from_secs(2))
        .shutdown_timeout(Duration::from_millis(300))
}

/// A single node without a network (no listener, not the default node),
/// set up by `f` (capabilities, actors), started.
pub async fn local(f: impl FnOnce(NodeBuilder) -> NodeBuilder) -> Node {
    f(Node::builder().default_node(false))
        .start()
        .await
        .expect("node starts")
}

/// Waits until every node of `nodes` sees a membership of exactly `n`
/// (within [`SOON`]).
pub async fn wait_members(nodes: &[&Node], n: usize) {
    for node in nodes {
        wait_membership(node, SOON, |m| m.len() == n).await;
    }
}

/// Waits until `node`'s membership satisfies `f`; panics after `limit`.
pub async fn wait_membership(node: &Node, limit: Duration, f: impl Fn(&Membership) -> bool) {
    let mut changes = node.membership_changes();
    within(limit, changes.wait_for(|m| f(m)))
        .await
        .expect("membership watch open");
}

/// Waits until `node`'s membership is exactly the nodes `want` (in any
/// order); panics after `limit`.
pub async fn wait_member_names(node: &Node, limit: Duration, want: &[&str]) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_membership(node, limit, |m| {
        let mut have: Vec<String> = m.nodes().map(str::to_owned).collect();
        have.sort();
        have == want
    })
    .await;
}

/// How [`Cluster::remove`] takes a node out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// [`Node::shutdown`]: the clean exit (hand-over, leave announced).
    Shutdown,
    /// [`Node::sever`]: cut off as a crash looks to the peers; the node is
    /// handed back (its local activations keep running).
    Sever,
    /// The last handle dropped, without a shutdown.
    Drop,
}

type Configure = Box<dyn FnOnce(NodeBuilder) -> NodeBuilder>;

/// How the nodes find each other at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seeding {
    /// Every node after the first is seeded with the first one's address.
    First,
    /// Every node after the first is seeded with the previous one's.
    Chain,
    /// No seeds: the nodes' own discovery (e.g. Consul) finds them.
    None,
}

/// Sets up a [`Cluster`]: see the [module docs](self).
pub struct ClusterBuilder {
    /// `None`: the node builder's default.
    transport: Option<Transport>,
    /// Memory addresses are the node names; TCP ones are `127.0.0.1:0`.
    memory: bool,
    cluster: String,
    seeding: Seeding,
    all: Vec<Box<dyn Fn(NodeBuilder) -> NodeBuilder>>,
    nodes: Vec<(String, Configure)>,
}

impl ClusterBuilder {
    /// The cluster's name (default `test`).
    pub fn cluster(mut self, name: &str) -> Self {
        self.cluster = name.to_owned();
        self
    }

    /// Settings for every node, applied before each node's own.
    pub fn all(mut self, f: impl Fn(NodeBuilder) -> NodeBuilder + 'static) -> Self {
        self.all.push(Box::new(f));
        self
    }

    /// The suites' quick failure detector ([`fast`]) on every node.
    pub fn fast(self) -> Self {
        self.all(fast)
    }

    /// Seeds every node with the previous one instead of the first one, so
    /// that the last ones learn of the first ones through gossip alone.
    pub fn chain(mut self) -> Self {
        self.seeding = Seeding::Chain;
        self
    }

    /// No seeds: the nodes' own discovery finds them.
    pub fn no_seeds(mut self) -> Self {
        self.seeding = Seeding::None;
        self
    }

    /// Adds node `name`, set up by `f` (capabilities, actors, anything
    /// else; it may replace the transport, e.g. one TLS identity per node).
    pub fn node(
        mut self,
        name: impl Into<String>,
        f: impl FnOnce(NodeBuilder) -> NodeBuilder + 'static,
    ) -> Self {
        self.nodes.push((name.into(), Box::new(f)));
        self
    }

    /// Starts the nodes in order, then waits until every node sees all of
    /// them (within [`SOON`]).
    pub async fn start(self) -> Cluster {
        let cluster = self.start_unwaited().await;
        cluster.wait_members(cluster.len()).await;
        cluster
    }

    /// Starts the nodes in order without waiting for the membership (for
    /// clusters whose members cannot reach each other yet).
    pub async fn start_unwaited(self) -> Cluster {
        let mut nodes: Vec<Node> = Vec::new();
        for (name, own) in self.nodes {
            let seed = match self.seeding {
                Seeding::First => nodes.first(),
                Seeding::Chain => nodes.last(),
                Seeding::None => None,
            };
            let seeds: Vec<String> = seed
                .map(|n| n.addr().expect("a listening node").to_owned())
                .into_iter()
                .collect();
            let listen = if self.memory {
                name.clone()
            } else {
                "127.0.0.1:0".to_owned()
            };
            let mut b = member(&self.cluster, &name).listen(listen).seeds(seeds);
            if let Some(t) = &self.transport {
                b = b.transport(t.clone());
            }
            for f in &self.all {
                b = f(b);
            }
            let node = soon(own(b).start())
                .await
                .unwrap_or_else(|e| panic!("node {name} starts: {e}"));
            nodes.push(node);
        }
        Cluster {
            transport: self.transport,
            nodes: nodes.into_iter().map(Some).collect(),
        }
    }
}

/// Nodes of one cluster in this process: see the [module docs](self).
pub struct Cluster {
    transport: Option<Transport>,
    nodes: Vec<Option<Node>>,
}

impl Cluster {
    /// A cluster over a fresh in-memory network (each node listens at its
    /// own name).
    pub fn memory() -> ClusterBuilder {
        Self::builder(Some(Transport::memory(MemoryNetwork::new())), true)
    }

    /// A cluster over TCP on loopback (port 0).
    pub fn tcp() -> ClusterBuilder {
        Self::builder(Some(Transport::tcp()), false)
    }

    /// A cluster over `transport`, listening on `127.0.0.1:0`.
    pub fn over(transport: Transport) -> ClusterBuilder {
        Self::builder(Some(transport), false)
    }

    /// A cluster whose nodes find each other through their own discovery
    /// (given in each node's setup, e.g. a Consul adapter): no seeds, the
    /// node builder's default transport, listening on `127.0.0.1:0`.
    pub fn discovered() -> ClusterBuilder {
        Self::builder(None, false).no_seeds()
    }

    fn builder(transport: Option<Transport>, memory: bool) -> ClusterBuilder {
        ClusterBuilder {
            transport,
            memory,
            cluster: "test".to_owned(),
            seeding: Seeding::First,
            all: Vec::new(),
            nodes: Vec::new(),
        }
    }

    /// The transport the nodes were started with (`None`: the node
    /// builder's default).
    pub fn transport(&self) -> Option<&Transport> {
        self.transport.as_ref()
    }

    /// The number of nodes started (removed ones included).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was started.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Node `i` (in the order added); panics if it was removed.
    pub fn node(&self, i: usize) -> &Node {
        self.nodes[i]
            .as_ref()
            .unwrap_or_else(|| panic!("node {i} was removed"))
    }

    /// The nodes not removed, in the order added.
    pub fn nodes(&self) -> Vec<&Node> {
        self.nodes.iter().flatten().collect()
    }

    /// Waits until every node not removed sees a membership of exactly `n`.
    pub async fn wait_members(&self, n: usize) {
        wait_members(&self.nodes(), n).await;
    }

    /// Takes node `i` out of the cluster as `how` says; a severed node is
    /// handed back (it keeps running until dropped).
    pub async fn remove(&mut self, i: usize, how: Removal) -> Option<Node> {
        let node = self.nodes[i]
            .take()
            .unwrap_or_else(|| panic!("node {i} was removed"));
        match how {
            Removal::Shutdown => {
                soon(node.shutdown()).await.expect("a clean shutdown");
                None
            }
            Removal::Sever => {
                node.sever();
                Some(node)
            }
            Removal::Drop => None,
        }
    }

    /// The nodes, in the order added; panics if one was removed.
    pub fn into_nodes(self) -> Vec<Node> {
        self.nodes
            .into_iter()
            .enumerate()
            .map(|(i, n)| n.unwrap_or_else(|| panic!("node {i} was removed")))
            .collect()
    }

    /// The nodes as an array of `N`; panics unless exactly `N` are there.
    pub fn into_array<const N: usize>(self) -> [Node; N] {
        self.into_nodes()
            .try_into()
            .unwrap_or_else(|v: Vec<Node>| panic!("{} nodes, not {N}", v.len()))
    }

    /// Shuts every node not removed down, cleanly, in order.
    pub async fn shutdown(self) {
        for node in self.nodes.into_iter().flatten() {
            soon(node.shutdown()).await.expect("a clean shutdown");
        }
    }
}

/// A discovery that only counts its registrations (`Discovery::start`)
/// and reports no peers: for tests that a node registers, or does not.
#[derive(Debug, Clone, Default)]
pub struct Counting(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl Counting {
    /// How many times a node registered with it.
    pub fn registrations(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl mesh::discovery::Discovery for Counting {
    fn start(
        &self,
        _me: mesh::discovery::LocalNode,
        _peers: tokio::sync::watch::Sender<mesh::discovery::Peers>,
    ) -> mesh::discovery::BoxFuture<'_, Result<(), mesh::StartError>> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    }

    fn stop(&self) -> mesh::discovery::BoxFuture<'_, Result<(), mesh::Error>> {
        Box::pin(async { Ok(()) })
    }

    fn halt(&self) {}
}

#[cfg(test)]
mod tests {
    use std::future::IntoFuture;

    use super::*;
    use crate::actors::{Player, Score};

    fn game(b: NodeBuilder) -> NodeBuilder {
        b.capabilities(["game"]).actor::<Player>()
    }

    /// Calls `id` from `from`: served by its owner, as `from` routes it.
    async fn served(from: &Node, id: &str) -> String {
        let (by, _) = soon(from.call::<Player, _>(id, Score(1)).into_future())
            .await
            .expect("the call succeeds");
        assert_eq!(by, from.owner_of::<Player>(id).unwrap());
        by
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_memory_cluster_forms_and_loses_nodes_gracefully_or_not() {
        let mut c = Cluster::memory()
            .fast()
            .chain()
            .node("a", game)
            .node("b", game)
            .node("c", game)
            .start()
            .await;
        assert_eq!(c.len(), 3);
        for (i, name) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(c.node(i).id(), name);
            assert_eq!(c.node(i).addr(), Some(name), "memory: listens at its name");
            wait_member_names(c.node(i), SOON, &["a", "b", "c"]).await;
        }
        // Gracefully: the others see it leave.
        assert!(c.remove(2, Removal::Shutdown).await.is_none());
        c.wait_members(2).await;
        // Not gracefully: cut off, the survivor sees it go.
        let severed = c.remove(1, Removal::Sever).await.expect("handed back");
        c.wait_members(1).await;
        assert_eq!(c.nodes().len(), 1);
        assert_eq!(served(c.node(0), "p1").await, "a");
        drop(severed);
        c.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_tcp_cluster_routes_and_notices_a_dropped_node() {
        let mut c = Cluster::tcp()
            .fast()
            .node("t1", game)
            .node("t2", game)
            .start()
            .await;
        assert!(c.node(1).addr().unwrap().starts_with("127.0.0.1:"));
        let mut owners = std::collections::BTreeSet::new();
        for i in 0..50 {
            owners.insert(served(c.node(0), &format!("p{i}")).await);
        }
        assert_eq!(owners.len(), 2, "{owners:?}");
        assert!(c.remove(0, Removal::Drop).await.is_none());
        c.wait_members(1).await;
        c.shutdown().await;
    }

    #[tokio::test]
    async fn a_local_node_serves_without_a_network() {
        let n = local(game).await;
        assert_eq!(n.addr(), None);
        assert_eq!(served(&n, "p").await, n.id());
    }
}
