//! What the admin endpoint (`crate::admin`, feature `admin`) reads of a
//! node: snapshots only, never a lock the call path takes.

use std::sync::Arc;

use super::{Node, NodeInner};
use crate::ring::RoutingTable;
use crate::Membership;

impl NodeInner {
    pub(crate) fn id_str(&self) -> &str {
        &self.id
    }

    pub(crate) fn incarnation_id(&self) -> u64 {
        self.incarnation
    }

    pub(crate) fn capability_names(&self) -> &[String] {
        &self.capabilities
    }

    pub(crate) fn membership_snapshot(&self) -> Membership {
        self.membership.borrow().clone()
    }

    pub(crate) fn routing_snapshot(&self) -> Arc<RoutingTable> {
        self.routing.load_full()
    }

    /// The live connections to member `node`, oldest first (none for
    /// this node itself or a node that runs no cluster).
    pub(crate) fn connections_to(&self, node: &str) -> Vec<crate::transport::Connection> {
        self.cluster
            .get()
            .map(|c| c.connections_to(node))
            .unwrap_or_default()
    }

    /// What the authoritative discovery says of itself (Consul: the
    /// registration), if the node has one.
    pub(crate) fn discovery_status(&self) -> Option<serde_json::Value> {
        self.cluster.get()?.discovery().map(|d| d.describe())
    }

    /// `(actor type, capability, live activations)` per hosted type.
    pub(crate) fn activations_by_type(&self) -> Vec<(&'static str, &'static str, usize)> {
        self.actors
            .iter()
            .map(|(_, capability, acts)| (acts.actor_name(), *capability, acts.count()))
            .collect()
    }

    /// Serves the admin endpoint at `addr` within `limits`; the server
    /// stops with the node.
    pub(crate) async fn start_admin(
        self: &Arc<Self>,
        addr: &str,
        limits: crate::admin::Limits,
    ) -> std::io::Result<()> {
        let server = crate::admin::Server::start(addr, Arc::downgrade(self), limits).await?;
        let _ = self.admin.set(server);
        Ok(())
    }
}

impl Node {
    /// Where the admin endpoint listens (feature `admin`), if
    /// [`NodeBuilder::admin`](crate::NodeBuilder::admin) asked for one.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.admin.get().map(|s| s.addr())
    }
}
