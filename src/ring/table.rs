//! Shard tables: the owners of the 4096 shards of each capability.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::{shard, Placement, SHARDS};

/// The owners of the [`SHARDS`] shards of one capability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardTable {
    nodes: Vec<Arc<str>>,
    owners: Box<[u16]>,
    local: Option<u16>,
}

impl ShardTable {
    /// Computes the table of one capability hosted by `nodes` (any order,
    /// duplicates ignored), as seen from the node `local`.
    ///
    /// Returns `None` if `nodes` is empty.
    pub fn compute<'a>(
        strategy: &dyn Placement,
        nodes: impl IntoIterator<Item = &'a str>,
        local: &str,
    ) -> Option<Self> {
        let mut sorted: Vec<&str> = nodes.into_iter().collect();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.is_empty() || sorted.len() > u16::MAX as usize {
            return None;
        }
        let mut owners = vec![0u16; SHARDS].into_boxed_slice();
        strategy.assign(&sorted, &mut owners);
        let local = sorted.iter().position(|n| *n == local).map(|i| i as u16);
        Some(ShardTable {
            nodes: sorted.into_iter().map(Arc::from).collect(),
            owners,
            local,
        })
    }

    /// The owner of shard `s` (`s < 4096`).
    #[inline]
    pub fn owner(&self, s: u16) -> &str {
        &self.nodes[self.owners[s as usize] as usize]
    }

    /// The owner of the shard of actor `id`.
    pub fn owner_of(&self, id: &str) -> &str {
        self.owner(shard(id))
    }

    /// Whether the local node owns shard `s`.
    #[inline]
    pub fn is_local(&self, s: u16) -> bool {
        Some(self.owners[s as usize]) == self.local
    }

    /// The nodes hosting this capability, sorted.
    pub fn nodes(&self) -> impl ExactSizeIterator<Item = &str> {
        self.nodes.iter().map(|n| &**n)
    }

    /// How many shards each node owns, in the order of [`ShardTable::nodes`].
    pub fn loads(&self) -> Vec<usize> {
        let mut loads = vec![0; self.nodes.len()];
        for &o in self.owners.iter() {
            loads[o as usize] += 1;
        }
        loads
    }

    /// How many shards have a different owner in `other` (by node id).
    pub fn moved(&self, other: &ShardTable) -> usize {
        (0..SHARDS as u16)
            .filter(|&s| self.owner(s) != other.owner(s))
            .count()
    }
}

/// The shard tables of every capability in a membership, as seen from one
/// node. Immutable: a membership change builds a new one, published
/// atomically by the node.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    // A node hosts a handful of capabilities: a linear scan over u64 keys
    // beats hashing the capability name on every call.
    tables: Vec<(u64, Arc<str>, ShardTable)>,
}

impl RoutingTable {
    /// Builds the tables for `members`: pairs of node id and the
    /// capabilities that node hosts. `local` is the node looking.
    pub fn compute<'a, C>(
        strategy: &dyn Placement,
        members: impl IntoIterator<Item = (&'a str, C)>,
        local: &str,
    ) -> Self
    where
        C: IntoIterator<Item = &'a str>,
    {
        let mut by_cap: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (node, caps) in members {
            for cap in caps {
                by_cap.entry(cap).or_default().push(node);
            }
        }
        let tables = by_cap
            .into_iter()
            .filter_map(|(cap, nodes)| {
                let table = ShardTable::compute(strategy, nodes, local)?;
                Some((capability_key(cap), Arc::from(cap), table))
            })
            .collect();
        RoutingTable { tables }
    }

    /// The table of the capability whose key is `key` ([`capability_key`]).
    #[inline]
    pub fn get(&self, key: u64) -> Option<&ShardTable> {
        self.tables
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, t)| t)
    }

    /// The capabilities with at least one node, and their tables.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ShardTable)> {
        self.tables.iter().map(|(_, c, t)| (&**c, t))
    }
}

/// The routing key of a capability name: `xxh3_64(name)`, computable at
/// compile time. It is also the seed of the capability's wire tags.
pub const fn capability_key(capability: &str) -> u64 {
    xxhash_rust::const_xxh3::xxh3_64(capability.as_bytes())
}
