//! Discovery: where a clustered node learns which peers exist.
//!
//! Two kinds, as DESIGN.md section 6 lays out:
//!
//! - **Static** (the embedded default, built into the cluster layer): a
//!   seed list, addresses gossiped over the wire, failure detection by
//!   heartbeats. No [`Discovery`] is set for it.
//! - **Authoritative** discovery, a [`Discovery`] given to
//!   [`crate::NodeBuilder::discovery`], such as `mesh::consul::Consul`
//!   (feature `consul`): it registers
//!   the node, and reports the full set of healthy peers whenever it
//!   changes. A peer is then a member of the routing view only while the
//!   discovery reports it **and** this node holds a live connection to it;
//!   gossip is not used to find peers.
//!
//! The boundary is small on purpose (Meshx's ServiceMesh behaviour: start,
//! stop, list): an adapter for another registry implements [`Discovery`].

use std::collections::BTreeMap;

use tokio::sync::watch;

use crate::{Error, StartError};

pub use crate::util::BoxFuture;

/// What a node publishes about itself. `#[non_exhaustive]`: later
/// versions publish more; build one with [`LocalNode::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalNode {
    /// The cluster name (Consul: the service name, unless set otherwise).
    pub cluster: String,
    /// The node id, unique in the cluster.
    pub node: String,
    /// The address peers dial (`host:port`).
    pub addr: String,
    /// The capabilities the node hosts.
    pub capabilities: Vec<String>,
    /// The wire protocol version the node speaks.
    pub protocol: u8,
}

impl LocalNode {
    /// A node of `cluster` with id `node`, reachable at `addr`, hosting
    /// `capabilities`, speaking this build's protocol version
    /// ([`crate::wire::VERSION`]).
    pub fn new(
        cluster: impl Into<String>,
        node: impl Into<String>,
        addr: impl Into<String>,
        capabilities: Vec<String>,
    ) -> Self {
        LocalNode {
            cluster: cluster.into(),
            node: node.into(),
            addr: addr.into(),
            capabilities,
            protocol: crate::wire::VERSION,
        }
    }
}

/// A peer as the discovery reports it. `#[non_exhaustive]`: an adapter
/// builds one with [`DiscoveredPeer::new`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DiscoveredPeer {
    /// The peer's node id.
    pub node: String,
    /// Where to dial it (`host:port`).
    pub addr: String,
    /// The capabilities it registered.
    pub capabilities: Vec<String>,
}

impl DiscoveredPeer {
    /// Peer `node`, to dial at `addr`, hosting `capabilities`.
    pub fn new(
        node: impl Into<String>,
        addr: impl Into<String>,
        capabilities: Vec<String>,
    ) -> Self {
        DiscoveredPeer {
            node: node.into(),
            addr: addr.into(),
            capabilities,
        }
    }
}

/// The healthy peers by node id, without the local node. Each value sent
/// replaces the previous one whole.
pub type Peers = BTreeMap<String, DiscoveredPeer>;

/// An authoritative source of peers. See the [module docs](self).
pub trait Discovery: Send + Sync + 'static {
    /// Registers `me` and starts watching. Each full view of the healthy
    /// peers is sent on `peers`. Fails when the registry refuses the node
    /// (wrong token, unreachable at start: [`StartError::Discovery`]) or
    /// the adapter's settings are wrong ([`StartError::Config`]): the node
    /// does not start.
    fn start(
        &self,
        me: LocalNode,
        peers: watch::Sender<Peers>,
    ) -> BoxFuture<'_, Result<(), StartError>>;

    /// Leaves cleanly: stops keeping the registration alive, *then*
    /// deregisters (the other order lets a late heartbeat re-register a
    /// zombie), then stops watching. Called by [`crate::Node::shutdown`]
    /// before the node closes its connections; a failure is
    /// [`Error::Discovery`], logged by the node.
    fn stop(&self) -> BoxFuture<'_, Result<(), Error>>;

    /// Stops every background task at once and leaves the registration
    /// behind, as a crash would ([`crate::Node::sever`]): the registry
    /// finds out by itself (a TTL running out).
    fn halt(&self);

    /// The store the strong mode keeps its leases in
    /// (`NodeBuilder::strong`, feature `strong`), if this discovery has
    /// one; called once, *before* [`Discovery::start`] (a strong node
    /// without one is refused before it registers anywhere). The default
    /// has none: a node with this discovery cannot run in strong mode.
    fn lease_store(&self) -> Option<std::sync::Arc<dyn crate::lease::LeaseStore>> {
        None
    }

    /// The adapter's own account for operators (the admin endpoint's
    /// `/admin/discovery`): what it registered, where, and its state. The
    /// default says only that an adapter is there.
    fn describe(&self) -> serde_json::Value {
        serde_json::json!({"kind": "custom"})
    }
}
