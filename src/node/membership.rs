//! The membership view: which nodes are up and what each hosts (sans-IO).

use std::collections::BTreeMap;

use crate::ring::{Placement, RoutingTable};

/// The members a node knows of, keyed by node id, with their capabilities.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    members: BTreeMap<String, Vec<String>>,
}

impl Membership {
    /// An empty membership.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or updates a member; returns whether anything changed.
    pub fn upsert(&mut self, node: &str, capabilities: &[String]) -> bool {
        let mut caps = capabilities.to_vec();
        caps.sort_unstable();
        caps.dedup();
        if self.members.get(node) == Some(&caps) {
            return false;
        }
        self.members.insert(node.to_owned(), caps);
        true
    }

    /// Removes a member; returns whether it was there.
    pub fn remove(&mut self, node: &str) -> bool {
        self.members.remove(node).is_some()
    }

    /// The members and their capabilities, sorted by node id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.members.iter().map(|(n, c)| (n.as_str(), c.as_slice()))
    }

    /// The routing table this membership gives, as seen from `local`.
    pub fn routing(&self, strategy: &dyn Placement, local: &str) -> RoutingTable {
        RoutingTable::compute(
            strategy,
            self.iter()
                .map(|(n, caps)| (n, caps.iter().map(String::as_str))),
            local,
        )
    }
}
