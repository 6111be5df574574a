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
        self.members.snapshot()
    }

    fn routing(&self) -> Arc<RoutingTable> {
        self.members.routing_table()
    }

    fn readiness(&self) -> Readiness {
        self.members.readiness()
    }

    fn connections_to(&self, node: &str) -> Vec<crate::transport::Connection> {
        self.cluster
            .as_ref()
            .map(|c| c.connections_to(node))
            .unwrap_or_default()
    }

    fn discovery_status(&self) -> Option<serde_json::Value> {
        self.cluster
            .as_ref()?
            .discovery()
            .map(|d| d.describe().into_value())
    }

    fn state_store(&self) -> Option<serde_json::Value> {
        self.state_stats.as_ref().map(|s| s.snapshot())
    }

    fn activations_by_type(&self) -> Vec<(&'static str, &'static str, usize)> {
        self.catalog
            .actors
            .iter()
            .map(|(_, capability, acts)| (acts.actor_name(), *capability, acts.count()))
            .collect()
    }
}

impl Node {
    /// Where the admin endpoint listens (feature `admin`), if
    /// [`NodeBuilder::admin`](crate::NodeBuilder::admin) asked for one.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.admin.as_ref().map(|s| s.addr())
    }
}
