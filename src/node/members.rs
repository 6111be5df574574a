//! Two parts of a node that others receive instead of the node:
//!
//! - [`Catalog`]: the node's activation tables, one per actor type it
//!   hosts, fixed at start;
//! - [`Members`]: the membership this node routes by and the routing
//!   table computed from it, with the `min_members` guard. The cluster's
//!   tasks change the membership through [`Members::update`]; calls read
//!   the routing table without a lock.
//!
//! Contract of [`Members::update`]: the routing table is recomputed and
//! published under the membership's lock, so the two never disagree for
//! long, and watchers ([`Members::changes`]) see every change. Then the
//! activations whose shard moved drain (they finish what is queued, run
//! `on_deactivate` and end; the new owner activates them on their next
//! call), and in strong mode a moved shard is handed off.

use std::any::TypeId;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::activation::{Activations, AnyActivations};
use crate::membership::{Membership, Readiness};
use crate::ring::{shard, Placement, RoutingTable};
use crate::{Error, Handlers};

/// The node's activation tables, one per actor type it hosts.
pub(crate) struct Catalog {
    // A node has a handful of actor types: a linear scan beats hashing.
    pub(crate) actors: Vec<(TypeId, &'static str, Arc<dyn AnyActivations>)>,
}

impl Catalog {
    /// How many activations the node holds, over every actor type.
    pub(crate) fn count(&self) -> usize {
        self.actors.iter().map(|(_, _, a)| a.count()).sum()
    }

    /// Whether no activation is left.
    pub(crate) fn is_idle(&self) -> bool {
        self.actors.iter().all(|(_, _, a)| a.count() == 0)
    }

    /// Tells every activation to stop after what it has queued.
    pub(crate) fn stop_all(&self) {
        for (_, _, acts) in &self.actors {
            acts.stop_all();
        }
    }

    /// The table of actor type `A`, if hosted here.
    pub(crate) fn activations<A: Handlers>(&self) -> Option<&Activations<A>> {
        let want = TypeId::of::<A>();
        self.actors
            .iter()
            .find(|(t, _, _)| *t == want)
            .and_then(|(_, _, a)| a.as_any().downcast_ref())
    }

    /// The capability of actor type `name` on this node.
    pub(crate) fn capability_of(&self, name: &str) -> Option<&'static str> {
        self.actors
            .iter()
            .find(|(_, _, a)| a.actor_name() == name)
            .map(|(_, c, _)| *c)
    }
}

/// The membership this node routes by, and the routing table computed
/// from it. See the [module docs](self).
pub(crate) struct Members {
    id: Arc<str>,
    membership: watch::Sender<Membership>,
    /// Read on every call: see [`Members::update`].
    pub(crate) routing: ArcSwap<RoutingTable>,
    strategy: Arc<dyn Placement>,
    /// `NodeBuilder::min_members`: the members this node must see before
    /// it serves and is ready (1: no guard).
    min_members: usize,
    /// Whether it has seen them once: from then on it serves, whatever the
    /// membership does (readiness still follows the count).
    formed: AtomicBool,
    /// Whose activations drain when their shard moves.
    catalog: Arc<Catalog>,
    /// Strong mode: the gate whose shards hand off when they move.
    gate: Option<Arc<crate::lease::gate::Gate>>,
}

impl Members {
    /// The membership of node `id` alone (hosting as `membership` says).
    pub(crate) fn new(
        id: Arc<str>,
        membership: Membership,
        strategy: Arc<dyn Placement>,
        min_members: usize,
        catalog: Arc<Catalog>,
        gate: Option<Arc<crate::lease::gate::Gate>>,
    ) -> Self {
        let routing = membership.routing(&*strategy, &id);
        Members {
            id,
            membership: watch::channel(membership).0,
            routing: ArcSwap::from_pointee(routing),
            strategy,
            min_members,
            formed: AtomicBool::new(min_members <= 1),
            catalog,
            gate,
        }
    }

    /// The `min_members` asked for.
    pub(crate) fn min_members(&self) -> usize {
        self.min_members
    }

    /// Whether the node has seen its `min_members` once.
    pub(crate) fn is_formed(&self) -> bool {
        self.formed.load(Ordering::Acquire)
    }

    /// A snapshot of the membership.
    pub(crate) fn snapshot(&self) -> Membership {
        self.membership.borrow().clone()
    }

    /// Reads the membership in place (no clone; do not hold it long).
    pub(crate) fn borrow(&self) -> watch::Ref<'_, Membership> {
        self.membership.borrow()
    }

    /// A receiver that sees every membership change.
    pub(crate) fn changes(&self) -> watch::Receiver<Membership> {
        self.membership.subscribe()
    }

    /// The routing table as last published.
    pub(crate) fn routing_table(&self) -> Arc<RoutingTable> {
        self.routing.load_full()
    }

    /// Applies `change` to the membership; see the [module docs](self).
    /// Returns whether it changed anything.
    pub(crate) fn update(&self, change: impl FnOnce(&mut Membership) -> bool) -> bool {
        let changed = self.membership.send_if_modified(|m| {
            let changed = change(m);
            if changed {
                self.routing
                    .store(Arc::new(m.routing(&*self.strategy, &self.id)));
                self.note_members(m.len());
            }
            changed
        });
        if changed {
            self.drain_moved();
        }
        changed
    }

    /// Drains the activations whose shard is no longer this node's.
    fn drain_moved(&self) {
        let routing = self.routing.load();
        let mut handed = 0;
        for (_, capability, acts) in &self.catalog.actors {
            let cap = crate::ring::capability_key(capability);
            let key = crate::ring::actor_key(capability, acts.actor_name());
            let table = routing.actor(key, cap);
            // Strong mode: a held shard that moved admits no new
            // activation from now on (a call that raced the change
            // would otherwise start one the drain below never sees,
            // and the shard's handoff would wait for it to idle out).
            if let Some(gate) = &self.gate {
                for s in 0..crate::ring::SHARDS as u16 {
                    if !table.is_some_and(|t| t.is_local(s)) && gate.hand_off(key, s) {
                        handed += 1;
                    }
                }
            }
            let is_local = |id: &str| table.is_some_and(|t| t.is_local(shard(id)));
            let moved = acts.drain_moved(&is_local);
            if moved > 0 {
                tracing::info!(node = %self.id, capability, moved, "draining activations whose shard moved");
            }
        }
        if let (Some(gate), true) = (&self.gate, handed > 0) {
            gate.drained.notify_one();
        }
    }

    /// Marks the node formed once it sees `min_members` (sticky).
    fn note_members(&self, have: usize) {
        if have >= self.min_members && !self.formed.swap(true, Ordering::AcqRel) {
            tracing::info!(node = %self.id, members = have, need = self.min_members, "enough members: the node serves");
        }
    }

    /// The `min_members` guard on the calling path: `Ok` once the node
    /// has seen its `min_members` (one relaxed load after that), else
    /// [`Error::NotEnoughMembers`].
    #[inline]
    pub(crate) fn check(&self) -> Result<(), Error> {
        if self.formed.load(Ordering::Relaxed) {
            return Ok(());
        }
        let have = self.membership.borrow().len();
        if have >= self.min_members {
            self.note_members(have);
            return Ok(());
        }
        Err(Error::NotEnoughMembers {
            have,
            need: self.min_members,
        })
    }

    /// Whether the node is ready, and why not (see [`Readiness`]).
    pub(crate) fn readiness(&self) -> Readiness {
        let m = self.membership.borrow();
        Readiness {
            member: m.contains(&self.id),
            members: m.len(),
            min_members: self.min_members,
            formed: self.formed.load(Ordering::Acquire),
        }
    }
}
