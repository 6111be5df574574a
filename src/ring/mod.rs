//! Placement: which node owns an actor (sans-IO).
//!
//! An actor id maps to one of [`SHARDS`] shards with [`shard`]; per
//! capability, every shard has one owner among the nodes hosting that
//! capability, chosen by a [`Placement`] strategy; per actor type, among the
//! nodes of its capability that host that type (nodes advertise the types
//! they host). The owners of all shards of all capabilities and actor types
//! form a [`RoutingTable`], recomputed once per membership change and
//! published atomically; routing a call reads it without locks.
//!
//! Everything here is a pure function of its inputs: every node computes the
//! same table from the same membership, so there is no coordinator and no
//! directory hop.

mod placement;
mod table;

pub use placement::{Modulo, Placement, Rendezvous};
pub use table::{actor_key, capability_key, Hosting, RoutingTable, ShardTable};

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// The number of shards per capability. Fixed forever: changing it moves
/// every actor.
pub const SHARDS: usize = 4096;

/// The seed of the shard hash: the ASCII bytes of `"meshring"` read as a
/// big-endian integer. Fixed forever; golden vectors in the tests pin it.
pub const SEED: u64 = u64::from_be_bytes(*b"meshring");

/// The shard of an actor id: `xxh3_64_with_seed(id, SEED) % 4096`.
///
/// The same id always lands on the same shard, on every node, in every
/// release (pinned by golden vectors).
#[inline]
pub fn shard(id: &str) -> u16 {
    (xxh3_64_with_seed(id.as_bytes(), SEED) % SHARDS as u64) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Golden vectors: these values must never change. If this test fails,
    /// the placement of every actor in every deployed cluster moved.
    #[test]
    fn shard_golden_vectors() {
        let cases: &[(&str, u16)] = &[
            ("", GOLDEN[0]),
            ("counter_1", GOLDEN[1]),
            ("player:42", GOLDEN[2]),
            ("room/lobby", GOLDEN[3]),
            ("tenant-0f3a9c", GOLDEN[4]),
            ("ünïcødé", GOLDEN[5]),
            (
                "a much longer actor identifier that spans several xxh3 stripes ......",
                GOLDEN[6],
            ),
        ];
        for (id, want) in cases {
            assert_eq!(shard(id), *want, "shard({id:?})");
        }
    }

    // Computed with the reference C implementation (python-xxhash), not with
    // this crate, so the test also checks the hash itself.
    const GOLDEN: [u16; 7] = [3194, 2009, 2771, 372, 448, 3958, 1157];

    #[test]
    fn seed_is_documented_constant() {
        assert_eq!(SEED, 0x6d65_7368_7269_6e67);
    }
}
