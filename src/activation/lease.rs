//! Strong mode, seen from an activation's task (see `crate::lease` for the
//! rule): an activation starts only on a shard this node holds, under a
//! valid lease ([`enter`]); each message, and the `on_deactivate` hook,
//! runs only while that lease holds ([`lease_check`], [`still_leased`]);
//! and the activation leaves the gate when it ends ([`Leased::exit`]).
//!
//! Contracts:
//! - While the gate says wait, queued calls stay queued and their
//!   deadlines run ([`watch_queue`]); the task looks again on each change of
//!   the gate and at least every [`RECHECK`].
//! - A call queued for a shard this node will not hold is routed again, to
//!   the owner (`reroute_wire`), instead of waiting for a lease that never
//!   comes. A typed call from this process stays and waits for its
//!   deadline: it has no encoded form to forward.
//! - Without a gate (eventual mode) nothing here runs: `lease_check` says
//!   `Go` at the cost of one branch.

use std::collections::VecDeque;
use std::time::Duration;

use super::mailbox::Mailbox;
use super::task::{watch_queue, Here};
use super::Envelope;
use crate::lease::gate::{Check, Gate};
use crate::Handlers;

/// An activation's hold on its shard, in strong mode.
pub(super) struct Leased<'g> {
    gate: &'g Gate,
    shard: u16,
    token: u64,
}

/// While an activation waits at the gate, it looks again at least this
/// often (its queued calls expire meanwhile; an empty mailbox ends it).
const RECHECK: Duration = Duration::from_millis(50);

impl Leased<'_> {
    /// The hold of the activation `here`, if it is `leased` (strong
    /// mode). Built where needed from [`Here`], so that nothing of it
    /// lives in the activation's task.
    pub(super) fn of<'g>(here: &Here<'g>, leased: bool) -> Option<Leased<'g>> {
        if !leased {
            return None;
        }
        let gate = here.shared.gate()?;
        let (shard, token) = here.ctx.lease();
        Some(Leased { gate, shard, token })
    }

    fn check<A: Handlers>(&self) -> Check {
        self.gate.check(A::__ACTOR_KEY, self.shard, self.token)
    }

    pub(super) fn exit<A: Handlers>(&self) {
        self.gate.exit(A::__ACTOR_KEY, self.shard);
    }

    /// Waits until the lease holds again (true) or is lost (false); the
    /// queued calls' deadlines run meanwhile.
    async fn wait_valid<A: Handlers>(
        &self,
        mb: &Mailbox<Envelope<A>>,
        batch: &mut VecDeque<Envelope<A>>,
        shared: &super::Shared,
    ) -> bool {
        loop {
            let changed = self.gate.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.check::<A>() {
                Check::Go => return true,
                Check::Lost => return false,
                Check::Wait if shared.is_shutting_down() => return false,
                Check::Wait => {}
            }
            let _ = watch_queue(mb, batch, tokio::time::timeout(RECHECK, changed)).await;
        }
    }
}

/// Waits at the gate until this node may activate `id`'s shard (the
/// shard and the token),
/// or until nothing is left to wait for (`None`: the mailbox emptied, its
/// calls expired, or the node is shutting down).
///
/// A call queued for a shard this node will not hold (it is handing it
/// off, or leaving, or its ring names another owner) is routed again, to
/// the owner: it would otherwise wait here for a lease that never comes.
/// A shard it will hold is demanded ([`Gate::demand`]): the keeper locks
/// it before the shards nobody waits for.
/// (A typed call from this process stays and waits for its deadline: it
/// has no encoded form to forward.)
pub(super) async fn enter<A: Handlers>(
    here: &Here<'_>,
    mb: &Mailbox<Envelope<A>>,
    batch: &mut VecDeque<Envelope<A>>,
) -> Option<u64> {
    let (shared, id) = (here.shared, here.ctx.id());
    let gate = shared.gate()?;
    let key = A::__ACTOR_KEY;
    let s = crate::ring::shard(id);
    loop {
        let changed = gate.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if let Some(token) = gate.enter(key, s) {
            return Some(token);
        }
        if shared.is_shutting_down() || mb.len() == 0 {
            return None;
        }
        if !shared.will_hold(key, A::__CAPABILITY_KEY, s) {
            for env in mb.take_picked(|e| matches!(e, Envelope::Wire(_))) {
                if let Envelope::Wire(call) = env {
                    shared.reroute(id, *call);
                }
            }
            if mb.len() == 0 {
                return None;
            }
        } else {
            // Ours soon (a handoff in progress): lock this one first.
            gate.demand(key, s);
        }
        let _ = watch_queue(mb, batch, tokio::time::timeout(RECHECK, changed)).await;
    }
}

/// Strong mode, before a message: may it be handled now? (`Go` when the
/// activation is not leased.)
#[inline]
pub(super) fn lease_check<A: Handlers>(here: &Here<'_>, leased: bool) -> Check {
    match Leased::of(here, leased) {
        Some(l) => l.check::<A>(),
        None => Check::Go,
    }
}

/// Strong mode, before a message or the `on_deactivate` hook: waits
/// until the lease holds (true) or is lost (false).
pub(super) async fn still_leased<A: Handlers>(
    here: &Here<'_>,
    mb: &Mailbox<Envelope<A>>,
    batch: &mut VecDeque<Envelope<A>>,
) -> bool {
    match Leased::of(here, true) {
        Some(l) => l.wait_valid::<A>(mb, batch, here.shared).await,
        None => true,
    }
}
