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

/// The shard tables of every capability in a membership, and of every
/// actor type, as seen from one node. Immutable: a membership change builds
/// a new one, published atomically by the node.
///
/// Placement by actor type: the table of actor type `A` of capability `C`
/// places `A` only on the nodes of `C` that host `A`. A member that does
/// not say which types it hosts ([`RoutingTable::compute`], or a `None` in
/// [`RoutingTable::compute_hosting`]) is taken to host every type of its
/// capabilities. Tables of equal node sets are one shared table: when every
/// node of a capability hosts the same types (the common case), each
/// type's table *is* the capability's, so per-type routing costs no memory
/// and no work per call beyond one more key compared.
#[derive(Debug, Clone, Default)]
pub struct RoutingTable {
    // A node hosts a handful of capabilities: a linear scan over u64 keys
    // beats hashing the capability name on every call.
    tables: Vec<(u64, Arc<str>, Arc<ShardTable>)>,
    /// Per actor type any member names: its key ([`actor_key`]) and table.
    actors: Vec<(u64, Arc<ShardTable>)>,
    /// Per capability key, the table of its members that did not say
    /// which actor types they host: where a type no member names goes.
    unsaid: Vec<(u64, Arc<ShardTable>)>,
}

/// What one member hosts, for [`RoutingTable::compute_hosting`]: its node
/// id, its capabilities, and the `(capability, actor type)` pairs it hosts
/// (`None`: it did not say; it hosts every type of its capabilities).
pub type Hosting<'a, C, T> = (&'a str, C, Option<T>);

impl RoutingTable {
    /// Builds the tables for `members`: pairs of node id and the
    /// capabilities that node hosts (every member hosting every actor type
    /// of its capabilities). `local` is the node looking.
    pub fn compute<'a, C>(
        strategy: &dyn Placement,
        members: impl IntoIterator<Item = (&'a str, C)>,
        local: &str,
    ) -> Self
    where
        C: IntoIterator<Item = &'a str>,
    {
        Self::compute_hosting(
            strategy,
            members
                .into_iter()
                .map(|(n, c)| (n, c, None::<std::iter::Empty<(&str, &str)>>)),
            local,
        )
    }

    /// Builds the tables for `members`, each with the actor types it hosts
    /// (see [`Hosting`]). `local` is the node looking.
    pub fn compute_hosting<'a, C, T>(
        strategy: &dyn Placement,
        members: impl IntoIterator<Item = Hosting<'a, C, T>>,
        local: &str,
    ) -> Self
    where
        C: IntoIterator<Item = &'a str>,
        T: IntoIterator<Item = (&'a str, &'a str)>,
    {
        // capability -> its nodes; (capability, type) -> nodes hosting it;
        // capability -> nodes that did not say.
        let mut by_cap: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut by_type: BTreeMap<(&str, &str), Vec<&str>> = BTreeMap::new();
        let mut unsaid: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        let mut said: Vec<(&str, Vec<(&str, &str)>)> = Vec::new();
        for (node, caps, types) in members {
            let caps: Vec<&str> = caps.into_iter().collect();
            for cap in &caps {
                by_cap.entry(*cap).or_default().push(node);
            }
            match types {
                None => {
                    for cap in &caps {
                        unsaid.entry(*cap).or_default().push(node);
                    }
                }
                Some(types) => said.push((
                    node,
                    types
                        .into_iter()
                        // A type is hosted only with its capability.
                        .filter(|(cap, _)| caps.contains(cap))
                        .collect(),
                )),
            }
        }
        for (_, types) in &said {
            for t in types {
                by_type.entry(*t).or_default();
            }
        }
        for (node, types) in &said {
            for t in types {
                if let Some(nodes) = by_type.get_mut(t) {
                    nodes.push(*node);
                }
            }
        }
        // Members that did not say host every named type of their
        // capabilities.
        for ((cap, _), nodes) in by_type.iter_mut() {
            if let Some(u) = unsaid.get(cap) {
                nodes.extend(u.iter().copied());
            }
        }
        // One table per distinct node set, the capabilities' first.
        let mut shared: BTreeMap<Vec<&'a str>, Arc<ShardTable>> = BTreeMap::new();
        let mut table_of = |nodes: Vec<&'a str>| -> Option<Arc<ShardTable>> {
            let mut nodes = nodes;
            nodes.sort_unstable();
            nodes.dedup();
            if let Some(t) = shared.get(&nodes) {
                return Some(t.clone());
            }
            let t = Arc::new(ShardTable::compute(strategy, nodes.iter().copied(), local)?);
            shared.insert(nodes, t.clone());
            Some(t)
        };
        let tables = by_cap
            .into_iter()
            .filter_map(|(cap, nodes)| {
                let table = table_of(nodes)?;
                Some((capability_key(cap), Arc::from(cap), table))
            })
            .collect();
        let actors = by_type
            .into_iter()
            .filter_map(|((cap, actor), nodes)| Some((actor_key(cap, actor), table_of(nodes)?)))
            .collect();
        let unsaid = unsaid
            .into_iter()
            .filter_map(|(cap, nodes)| Some((capability_key(cap), table_of(nodes)?)))
            .collect();
        RoutingTable {
            tables,
            actors,
            unsaid,
        }
    }

    /// The table of the capability whose key is `key` ([`capability_key`]):
    /// every node of the capability, whatever actor types they host.
    #[inline]
    pub fn get(&self, key: u64) -> Option<&ShardTable> {
        self.tables
            .iter()
            .find(|(k, _, _)| *k == key)
            .map(|(_, _, t)| &**t)
    }

    /// The table of an actor type: the nodes of its capability that host
    /// it. `actor` is its [`actor_key`], `capability` its capability's
    /// [`capability_key`]. `None`: no member hosts it.
    #[inline]
    pub fn actor(&self, actor: u64, capability: u64) -> Option<&ShardTable> {
        match self.actors.iter().find(|(k, _)| *k == actor) {
            Some((_, t)) => Some(t),
            // No member names the type: members that did not say host it.
            None => self
                .unsaid
                .iter()
                .find(|(k, _)| *k == capability)
                .map(|(_, t)| &**t),
        }
    }

    /// The capabilities with at least one node, and their tables.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ShardTable)> {
        self.tables.iter().map(|(_, c, t)| (&**c, &**t))
    }

    /// How many distinct shard tables this holds (tables of equal node
    /// sets are one): as many as capabilities when every node of each
    /// capability hosts the same actor types.
    pub fn distinct_tables(&self) -> usize {
        let mut seen: Vec<*const ShardTable> = Vec::new();
        let all = self
            .tables
            .iter()
            .map(|(_, _, t)| t)
            .chain(self.actors.iter().map(|(_, t)| t))
            .chain(self.unsaid.iter().map(|(_, t)| t));
        for t in all {
            let p = Arc::as_ptr(t);
            if !seen.contains(&p) {
                seen.push(p);
            }
        }
        seen.len()
    }
}

/// The routing key of a capability name: `xxh3_64(name)`, computable at
/// compile time. It is also the seed of [`actor_key`].
pub const fn capability_key(capability: &str) -> u64 {
    xxhash_rust::const_xxh3::xxh3_64(capability.as_bytes())
}

/// The routing key of an actor type: `xxh3_64_with_seed(actor name,
/// capability_key(capability))`, computable at compile time. It keys the
/// type's shard table in a [`RoutingTable`], and is the seed of the wire
/// tags of the type's handlers ([`crate::wire::tag`]).
pub const fn actor_key(capability: &str, actor: &str) -> u64 {
    xxhash_rust::const_xxh3::xxh3_64_with_seed(actor.as_bytes(), capability_key(capability))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::Rendezvous;

    type Types = Vec<(&'static str, &'static str)>;

    fn rt(members: &[(&'static str, &[&'static str], Option<Types>)]) -> RoutingTable {
        RoutingTable::compute_hosting(
            &Rendezvous,
            members
                .iter()
                .map(|(n, caps, types)| (*n, caps.iter().copied(), types.clone())),
            "a",
        )
    }

    fn nodes(t: Option<&ShardTable>) -> Vec<&str> {
        t.map(|t| t.nodes().collect()).unwrap_or_default()
    }

    const ROOM: (&str, &str) = ("chat", "Room");
    const USER: (&str, &str) = ("chat", "User");

    fn key((c, a): (&str, &str)) -> (u64, u64) {
        (actor_key(c, a), capability_key(c))
    }

    #[test]
    fn nodes_hosting_the_same_types_share_one_table() {
        let both = Some(vec![ROOM, USER]);
        let t = rt(&[
            ("a", &["chat"], both.clone()),
            ("b", &["chat"], both.clone()),
            ("c", &["chat"], both),
        ]);
        let (r, c) = key(ROOM);
        let (u, _) = key(USER);
        // One table in memory, whatever the number of actor types.
        assert_eq!(t.distinct_tables(), 1);
        assert!(std::ptr::eq(t.actor(r, c).unwrap(), t.get(c).unwrap()));
        assert!(std::ptr::eq(t.actor(u, c).unwrap(), t.get(c).unwrap()));
    }

    #[test]
    fn a_type_is_placed_only_on_the_nodes_that_host_it() {
        let t = rt(&[
            ("a", &["chat"], Some(vec![ROOM, USER])),
            ("b", &["chat"], Some(vec![USER])),
            // Says nothing: hosts every type of its capabilities.
            ("c", &["chat"], None),
            // Names a type without its capability: not counted.
            ("d", &["game"], Some(vec![ROOM])),
        ]);
        let (r, c) = key(ROOM);
        let (u, _) = key(USER);
        assert_eq!(nodes(t.get(c)), ["a", "b", "c"]);
        assert_eq!(nodes(t.actor(r, c)), ["a", "c"]);
        assert_eq!(nodes(t.actor(u, c)), ["a", "b", "c"]);
        // User's table is the capability's: shared.
        assert!(std::ptr::eq(t.actor(u, c).unwrap(), t.get(c).unwrap()));
        // A type nobody names: only on the nodes that did not say.
        let (x, _) = key(("chat", "Ghost"));
        assert_eq!(nodes(t.actor(x, c)), ["c"]);
        // chat, game, chat/Room, chat/unsaid.
        assert_eq!(t.distinct_tables(), 4);
        // Without a member that did not say, a type nobody names has none.
        let t = rt(&[("a", &["chat"], Some(vec![ROOM]))]);
        assert!(t.actor(x, c).is_none());
        assert!(t.actor(r, c).is_some_and(|t| t.is_local(0)));
    }

    #[test]
    fn members_that_do_not_say_host_every_type() {
        let t = RoutingTable::compute(&Rendezvous, [("a", ["chat"]), ("b", ["chat"])], "a");
        let (r, c) = key(ROOM);
        assert_eq!(nodes(t.actor(r, c)), ["a", "b"]);
        assert_eq!(t.distinct_tables(), 1);
    }
}
