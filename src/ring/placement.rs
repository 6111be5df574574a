//! Placement strategies: who owns each shard, given the nodes of a capability.

use std::fmt;

use xxhash_rust::xxh3::xxh3_64_with_seed;

use super::SHARDS;

/// A placement strategy: assigns each of the [`SHARDS`] shards of one
/// capability to one of the nodes hosting it.
///
/// Implementations must be deterministic functions of `nodes` (same input,
/// same output, on every machine and every run), or nodes disagree on
/// ownership.
pub trait Placement: fmt::Debug + Send + Sync + 'static {
    /// Fills `owners[s]` with the index into `nodes` of the owner of shard
    /// `s`. `nodes` is sorted, free of duplicates and not empty; `owners` has
    /// [`SHARDS`] entries.
    fn assign(&self, nodes: &[&str], owners: &mut [u16]);
}

/// Rendezvous (highest random weight) hashing with bounded loads: the default.
///
/// The weight of shard `s` on node `n` is `xxh3_64_with_seed(n, s)`. Shards
/// are handed out greedily by descending weight, each to its heaviest node
/// that still has room, where room is `max(floor(1.1 x mean), ceil(mean))`
/// shards. Then every node below `ceil(0.9 x mean)` takes, in node order,
/// its heaviest shards from nodes that stay at or above that floor. The
/// result is a pure function of the node set.
///
/// So every node owns within 10% of the mean by construction (plain
/// rendezvous drifts by +-25% at 64 nodes: 4096 independent draws are few),
/// while a join or leave still moves about `1/(N+1)` of the shards: the
/// property tests bound it by `1/(N+1) + 3%` for 2..64 nodes (a joiner may
/// take up to 10% over its share at a few nodes: the worst of 300
/// memberships of each size was +2.1%, at 3 nodes, and under +1.5% from 4
/// nodes up).
#[derive(Debug, Clone, Copy, Default)]
pub struct Rendezvous;

fn weight(node: &str, shard: usize) -> u64 {
    xxh3_64_with_seed(node.as_bytes(), shard as u64)
}

impl Placement for Rendezvous {
    fn assign(&self, nodes: &[&str], owners: &mut [u16]) {
        let n = nodes.len();
        debug_assert!(n > 0 && n <= u16::MAX as usize && owners.len() == SHARDS);
        let mean = SHARDS as f64 / n as f64;
        let hi = ((mean * 1.1).floor() as usize).max(SHARDS.div_ceil(n));
        let lo = ((mean * 0.9).ceil() as usize).min(SHARDS / n);

        // 1. Greedy by descending weight under the upper bound. Shard and
        // node index break (astronomically unlikely) ties deterministically.
        let mut pairs: Vec<(u64, u16, u16)> = Vec::with_capacity(SHARDS * n);
        for (k, node) in nodes.iter().enumerate() {
            for s in 0..SHARDS {
                pairs.push((weight(node, s), s as u16, k as u16));
            }
        }
        pairs.sort_unstable_by(|a, b| b.cmp(a));
        let mut load = vec![0usize; n];
        let mut assigned = vec![false; SHARDS];
        let mut left = SHARDS;
        for (_, s, k) in pairs {
            let (s, k) = (s as usize, k as usize);
            if !assigned[s] && load[k] < hi {
                assigned[s] = true;
                load[k] += 1;
                owners[s] = k as u16;
                left -= 1;
                if left == 0 {
                    break;
                }
            }
        }

        // 2. Lift every node to the lower bound with its heaviest shards
        // among those whose owners can spare one.
        for k in 0..n {
            if load[k] >= lo {
                continue;
            }
            let mut mine: Vec<(u64, usize)> =
                (0..SHARDS).map(|s| (weight(nodes[k], s), s)).collect();
            mine.sort_unstable_by(|a, b| b.cmp(a));
            for (_, s) in mine {
                if load[k] >= lo {
                    break;
                }
                let from = owners[s] as usize;
                if from != k && load[from] > lo {
                    load[from] -= 1;
                    load[k] += 1;
                    owners[s] = k as u16;
                }
            }
        }
    }
}

/// `shard % nodes` over the sorted node list: the Elixir Mesh behaviour.
///
/// Perfectly balanced, but a join or leave moves most shards (75-94% for a
/// handful of nodes). Provided for comparison and for deployments that want
/// that library's placement exactly.
#[derive(Debug, Clone, Copy, Default)]
pub struct Modulo;

impl Placement for Modulo {
    fn assign(&self, nodes: &[&str], owners: &mut [u16]) {
        let n = nodes.len();
        for (s, owner) in owners.iter_mut().enumerate() {
            *owner = (s % n) as u16;
        }
    }
}
