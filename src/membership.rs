//! The membership view: which nodes are up, where they listen and what each
//! hosts (sans-IO).
//!
//! What a member hosts is what its handshake said: its capabilities and the
//! actor types of each ([`MemberInfo::actors`]). [`Membership::routing`]
//! places each actor type only on the members hosting it; a member that
//! did not say which types it hosts is taken to host every type of its
//! capabilities.

use std::collections::BTreeMap;

use crate::ring::{Placement, RoutingTable};
use crate::wire::Hosted;

/// What the membership knows of one node. `#[non_exhaustive]`: later
/// versions know more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct MemberInfo {
    /// Where its listener accepts connections (empty: not listening).
    pub addr: String,
    /// The capabilities it hosts, sorted.
    pub capabilities: Vec<String>,
    /// The actor types it hosts, sorted, with their handlers' wire tags, as
    /// its handshake said. `None`: it did not say, and is taken to host
    /// every actor type of its capabilities.
    pub actors: Option<Vec<Hosted>>,
}

impl MemberInfo {
    /// Whether it hosts actor type `actor` of capability `capability`.
    pub fn hosts(&self, capability: &str, actor: &str) -> bool {
        self.capabilities.iter().any(|c| c == capability)
            && self.actors.as_ref().is_none_or(|a| {
                a.iter()
                    .any(|h| h.capability == capability && h.actor == actor)
            })
    }
}

/// The members a node knows to be up, keyed by node id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    members: BTreeMap<String, MemberInfo>,
}

impl Membership {
    /// An empty membership.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or updates a member that does not say which actor types it
    /// hosts (it is taken to host every type of its capabilities); returns
    /// whether anything changed.
    #[cfg_attr(feature = "internals", mesh_macros::expose)]
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub(crate) fn upsert(&mut self, node: &str, addr: &str, capabilities: &[String]) -> bool {
        self.upsert_hosting(node, addr, capabilities, None)
    }

    /// Adds or updates a member with the actor types it hosts (`None`: it
    /// did not say); returns whether anything changed.
    #[cfg_attr(feature = "internals", mesh_macros::expose)]
    pub(crate) fn upsert_hosting(
        &mut self,
        node: &str,
        addr: &str,
        capabilities: &[String],
        actors: Option<&[Hosted]>,
    ) -> bool {
        let mut caps = capabilities.to_vec();
        caps.sort_unstable();
        caps.dedup();
        let actors = actors.map(|a| {
            let mut a = a.to_vec();
            a.sort_unstable();
            a.dedup();
            a
        });
        let info = MemberInfo {
            addr: addr.to_owned(),
            capabilities: caps,
            actors,
        };
        if self.members.get(node) == Some(&info) {
            return false;
        }
        self.members.insert(node.to_owned(), info);
        true
    }

    /// Removes a member; returns whether it was there.
    #[cfg_attr(feature = "internals", mesh_macros::expose)]
    pub(crate) fn remove(&mut self, node: &str) -> bool {
        self.members.remove(node).is_some()
    }

    /// Whether `node` is a member.
    pub fn contains(&self, node: &str) -> bool {
        self.members.contains_key(node)
    }

    /// What is known of `node`.
    pub fn get(&self, node: &str) -> Option<&MemberInfo> {
        self.members.get(node)
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The members, sorted by node id.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MemberInfo)> {
        self.members.iter().map(|(n, i)| (n.as_str(), i))
    }

    /// The node ids, sorted.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.members.keys().map(String::as_str)
    }

    /// The routing table this membership gives, as seen from `local`: a
    /// table per capability, and per actor type over the members that
    /// host it.
    #[cfg_attr(feature = "internals", mesh_macros::expose)]
    pub(crate) fn routing(&self, strategy: &dyn Placement, local: &str) -> RoutingTable {
        RoutingTable::compute_hosting(
            strategy,
            self.iter().map(|(n, info)| {
                (
                    n,
                    info.capabilities.iter().map(String::as_str),
                    info.actors
                        .as_ref()
                        .map(|a| a.iter().map(|h| (h.capability.as_str(), h.actor.as_str()))),
                )
            }),
            local,
        )
    }
}

/// What a node's readiness is made of: it is ready when it is a member of
/// its own membership (it has started and is not leaving) and sees at
/// least `min_members` members (`NodeBuilder::min_members`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Readiness {
    /// It is in its own membership.
    pub(crate) member: bool,
    /// How many members it sees, itself included.
    pub(crate) members: usize,
    /// How many it needs.
    pub(crate) min_members: usize,
    /// Whether it has seen `min_members` once (so it serves).
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) formed: bool,
}

impl Readiness {
    /// Ready: a member that sees enough members.
    pub(crate) fn ready(&self) -> bool {
        self.member && self.members >= self.min_members
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::{capability_key, Rendezvous};

    #[test]
    fn upsert_reports_real_changes_only() {
        let mut m = Membership::new();
        assert!(m.upsert("a", "127.0.0.1:1", &["x".into(), "x".into()]));
        assert!(!m.upsert("a", "127.0.0.1:1", &["x".into()]));
        assert!(m.upsert("a", "127.0.0.1:2", &["x".into()]));
        assert!(m.upsert("b", "", &["y".into()]));
        assert_eq!(m.nodes().collect::<Vec<_>>(), ["a", "b"]);
        assert!(m.remove("a"));
        assert!(!m.remove("a"));
        let rt = m.routing(&Rendezvous, "b");
        assert!(rt.get(capability_key("x")).is_none());
        assert!(rt.get(capability_key("y")).is_some_and(|t| t.is_local(0)));
    }
}
