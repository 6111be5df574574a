//! What the admin endpoint (`crate::admin`, feature `admin`) reads of a
//! node, through `admin::Source`: snapshots only, never a lock the call
//! path takes.

use std::sync::Arc;

use super::{Node, NodeInner};
use crate::membership::{Membership, Readiness};
use crate::ring::RoutingTable;

impl crate::admin::Source for NodeInner {
    fn id(&self) -> &str {
        &self.id
    }

    fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    fn membership(&self) -> Membership {
        self.membership.borrow().clone()
    }

    fn routing(&self) -> Arc<RoutingTable> {
        self.routing.load_full()
    }

    fn readiness(&self) -> Readiness {
        NodeInner::readiness(self)
    }

    fn connections_to(&self, node: &str) -> Vec<crate::transport::Connection> {
        self.cluster
            .get()
            .map(|c| c.connections_to(node))
            .unwrap_or_default()
    }

    fn discovery_status(&self) -> Option<serde_json::Value> {
        self.cluster
            .get()?
            .discovery()
            .map(|d| d.describe().into_value())
    }

    fn activations_by_type(&self) -> Vec<(&'static str, &'static str, usize)> {
        self.actors
            .iter()
            .map(|(_, capability, acts)| (acts.actor_name(), *capability, acts.count()))
            .collect()
    }
}

impl NodeInner {
    /// Serves the admin endpoint at `addr` within `limits`; the server
    /// stops with the node.
    pub(crate) async fn start_admin(
        self: &Arc<Self>,
        addr: &str,
        limits: crate::admin::Limits,
    ) -> std::io::Result<()> {
        let weak: std::sync::Weak<NodeInner> = Arc::downgrade(self);
        let weak: std::sync::Weak<dyn crate::admin::Source> = weak;
        let server = crate::admin::Server::start(addr, weak, limits).await?;
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
