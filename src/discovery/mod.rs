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
//! Static seeds may also come from a DNS name, re-resolved
//! ([`DnsSeeds`], feature `dns`): still static discovery, with its gossip.
//!
//! The boundary is small on purpose (Meshx's ServiceMesh behaviour: start,
//! stop, list): an adapter for another registry implements [`Discovery`].

#[cfg(feature = "dns")]
mod dns;
#[cfg(feature = "dns")]
pub use dns::DnsSeeds;

use std::collections::BTreeMap;

use tokio::sync::watch;

use crate::{Error, StartError};

pub use crate::error::DiscoveryError;

/// The addresses of `addr` (`host:port`) as mesh itself looks them up for
/// its own connections: a literal `ip:port` is parsed; a name goes through
/// hickory with feature `dns` (no `getaddrinfo`: it works in a statically
/// linked binary), else through the system's resolver. For tools that
/// check what a node will dial (`mesh-node diagnose`).
pub async fn lookup(addr: &str) -> std::io::Result<Vec<std::net::SocketAddr>> {
    crate::resolve::lookup(addr).await
}
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
    /// the adapter's settings are wrong ([`StartError::InvalidSetting`]): the node
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
    /// behind, as a crash would (`Node::sever`, feature `internals`): the registry
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
    /// default says only that an adapter is there: `{"kind":"custom"}`.
    fn describe(&self) -> Description {
        Description::new("custom")
    }
}

/// A discovery adapter's account of itself ([`Discovery::describe`]): its
/// kind and named fields (kept in name order). Displays as the JSON object
/// the admin endpoint serves under `/admin/discovery`
/// (`{"kind":"consul","registered":true,...}`), and serializes as that
/// object.
///
/// ```
/// use mesh::discovery::Description;
///
/// let d = Description::new("etcd").with("endpoints", ["10.0.0.1:2379"]).with("registered", true);
/// assert_eq!(d.kind(), "etcd");
/// assert_eq!(d.get::<bool>("registered"), Some(true));
/// assert_eq!(d.to_string(), r#"{"endpoints":["10.0.0.1:2379"],"kind":"etcd","registered":true}"#);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Description {
    fields: serde_json::Map<String, serde_json::Value>,
}

impl Description {
    /// An account of an adapter of `kind` (`"consul"`; `"custom"` is the
    /// default's), with no other field.
    pub fn new(kind: &str) -> Self {
        let mut fields = serde_json::Map::new();
        fields.insert("kind".to_owned(), kind.into());
        Description { fields }
    }

    /// The same account with the field `name` set to `value` (replacing
    /// it if set). A value that does not serialize is `null`.
    pub fn with(mut self, name: &str, value: impl serde::Serialize) -> Self {
        self.set(name, value);
        self
    }

    /// Sets the field `name` to `value` (replacing it if set). A value
    /// that does not serialize is `null`.
    pub fn set(&mut self, name: &str, value: impl serde::Serialize) {
        let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
        self.fields.insert(name.to_owned(), value);
    }

    /// The adapter's kind (`"consul"`, `"custom"`).
    pub fn kind(&self) -> &str {
        self.fields
            .get("kind")
            .and_then(|k| k.as_str())
            .unwrap_or("")
    }

    /// The field `name` read as a `T`; `None` when not set or not a `T`.
    pub fn get<T: serde::de::DeserializeOwned>(&self, name: &str) -> Option<T> {
        T::deserialize(self.fields.get(name)?).ok()
    }

    /// The names of the fields set, in name order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.fields.keys().map(String::as_str)
    }

    /// The account as the JSON the admin endpoint serves.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) fn into_value(self) -> serde_json::Value {
        serde_json::Value::Object(self.fields)
    }
}

impl serde::Serialize for Description {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.fields.serialize(s)
    }
}

impl std::fmt::Display for Description {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = serde_json::to_string(&self.fields).map_err(|_| std::fmt::Error)?;
        f.write_str(&text)
    }
}
