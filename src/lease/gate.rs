//! The dispatch gate of the strong mode: what the activations of this node
//! read, without locks, before they activate or handle a message.
//!
//! Written only by the keeper task ([`super::keeper`]); read by every
//! activation of a leased actor type. Leases are per (actor type, shard):
//! with placement by actor type, the types of one capability may live on
//! different nodes, so each type's shards have their own owners (in the
//! common case, where every node of a capability hosts all its types, the
//! owners agree). Per (actor type, shard) it holds:
//!
//! - the **state**: `0` (not held), a fencing token (held), or a token with
//!   [`DRAINING`] set (held, but handing off: activations already running
//!   may finish and run their hooks, no new one may start);
//! - the **live count**: activations of the shard that passed the gate and
//!   have not ended. The keeper unlocks a draining shard only at zero.
//!
//! and, for the node, the local lease deadline (see [`super::Lease`]).
//!
//! Ordering: an activation increments the live count *then* reads the
//! state; the keeper marks a shard draining (or clears it) *then* reads
//! the live count; both sequentially consistent. So either the keeper sees
//! the activation (and waits for it), or the activation sees the shard
//! draining (and does not start): never an activation running on a shard
//! whose lock was released.
//!
//! The same order covers the wake-up of the keeper: an activation ending
//! decrements the live count *then* reads the state, so either it sees the
//! shard draining and wakes the keeper, or the keeper's own read of the
//! count after marking it draining sees zero.
//!
//! Waiters ([`Gate::changed`]) are woken on every change of the deadline
//! or the session, and once per pass of the keeper over the shards; a
//! waiter re-reads and decides again.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::ring::SHARDS;

/// Set on a state whose shard is handing off.
pub(crate) const DRAINING: u64 = 1 << 63;

/// What an activation may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Check {
    /// Go on: the lease holds, with this token.
    Go,
    /// Wait: the shard is held but the lease deadline passed (or the shard
    /// is not held yet); a change may come.
    Wait,
    /// The token changed or the shard was lost: this activation must end
    /// without its hook (another node may have served the id since).
    Lost,
}

/// One leased actor type.
#[derive(Debug)]
pub(crate) struct CapGate {
    /// The actor type's key (`ring::actor_key`).
    pub(crate) key: u64,
    /// Its capability's key (`ring::capability_key`).
    pub(crate) cap: u64,
    /// `<capability>/<actor type>`, the lock keys' middle part.
    pub(crate) name: String,
    state: Box<[AtomicU64]>,
    live: Box<[AtomicU32]>,
}

impl CapGate {
    fn new(key: u64, cap: u64, name: &str) -> CapGate {
        CapGate {
            key,
            cap,
            name: name.to_owned(),
            state: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            live: (0..SHARDS).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    pub(crate) fn state(&self, s: u16) -> u64 {
        self.state[s as usize].load(SeqCst)
    }

    pub(crate) fn live(&self, s: u16) -> u32 {
        self.live[s as usize].load(SeqCst)
    }
}

/// The gate of one node. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Gate {
    base: Instant,
    /// Nanoseconds after `base` at which the lease stops holding; 0: none.
    deadline: AtomicU64,
    caps: Vec<CapGate>,
    /// The session the tokens were granted under (for fenced writes).
    session: ArcSwapOption<String>,
    /// The lock-key prefix: `mesh/<cluster>/own`.
    pub(crate) prefix: String,
    /// Activations wait here for a change.
    changed: Notify,
    /// The keeper waits here for a live count reaching zero.
    pub(crate) drained: Notify,
}

impl Gate {
    /// A gate for `types` (actor key, capability key, and
    /// `<capability>/<actor>`), nothing held.
    pub(crate) fn new(prefix: String, types: &[(u64, u64, String)]) -> Gate {
        Gate {
            base: Instant::now(),
            deadline: AtomicU64::new(0),
            caps: types
                .iter()
                .map(|(key, cap, name)| CapGate::new(*key, *cap, name))
                .collect(),
            session: ArcSwapOption::empty(),
            prefix,
            changed: Notify::new(),
            drained: Notify::new(),
        }
    }

    pub(crate) fn caps(&self) -> &[CapGate] {
        &self.caps
    }

    fn cap(&self, key: u64) -> Option<&CapGate> {
        self.caps.iter().find(|c| c.key == key)
    }

    /// The lock key of shard `s` of `name` (`<capability>/<actor>`).
    pub(crate) fn lock_key(&self, name: &str, s: u16) -> String {
        format!("{}/{name}/{s:04}", self.prefix)
    }

    /// The lock key of shard `s` of the actor type keyed `key`.
    pub(crate) fn lock_key_of(&self, key: u64, s: u16) -> Option<String> {
        self.cap(key).map(|c| self.lock_key(&c.name, s))
    }

    fn valid_at(&self, now: Instant) -> bool {
        let d = self.deadline.load(SeqCst);
        d != 0 && (now.saturating_duration_since(self.base).as_nanos() as u64) < d
    }

    /// An activation of shard `s` wants to start: `Some(token)` if it may
    /// (it then counts as live until [`Gate::exit`]), `None` if it must
    /// wait for a change.
    pub(crate) fn enter(&self, key: u64, s: u16) -> Option<u64> {
        let cap = self.cap(key)?;
        cap.live[s as usize].fetch_add(1, SeqCst);
        let st = cap.state[s as usize].load(SeqCst);
        if st != 0 && st & DRAINING == 0 && self.valid_at(Instant::now()) {
            return Some(st);
        }
        self.exit(key, s);
        None
    }

    /// An activation that entered has ended. The keeper is woken only
    /// when the last one of a draining shard ends: that shard can be
    /// unlocked now (an idle activation passivating on a held shard is
    /// none of its business).
    pub(crate) fn exit(&self, key: u64, s: u16) {
        if let Some(cap) = self.cap(key) {
            let last = cap.live[s as usize].fetch_sub(1, SeqCst) == 1;
            if last && cap.state[s as usize].load(SeqCst) & DRAINING != 0 {
                self.drained.notify_one();
            }
        }
    }

    /// May the activation of shard `s` that entered with `token` handle a
    /// message (or run its hook) now?
    pub(crate) fn check(&self, key: u64, s: u16, token: u64) -> Check {
        let Some(cap) = self.cap(key) else {
            return Check::Lost;
        };
        let st = cap.state[s as usize].load(SeqCst) & !DRAINING;
        if st != token {
            Check::Lost
        } else if self.valid_at(Instant::now()) {
            Check::Go
        } else {
            Check::Wait
        }
    }

    /// Whether shard `s` is handing off (held, draining).
    pub(crate) fn draining(&self, key: u64, s: u16) -> bool {
        self.cap(key)
            .is_some_and(|c| c.state[s as usize].load(SeqCst) & DRAINING != 0)
    }

    /// Resolves at the next change (create it before re-checking).
    pub(crate) fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// The current session, if any.
    pub(crate) fn session(&self) -> Option<Arc<String>> {
        self.session.load_full()
    }

    // ---- the keeper's side ----------------------------------------------

    pub(crate) fn set_session(&self, session: Option<Arc<String>>) {
        self.session.store(session);
        self.changed.notify_waiters();
    }

    /// Sets the deadline (`None`: no lease) and wakes the waiters.
    pub(crate) fn set_deadline(&self, deadline: Option<Instant>) {
        let nanos = deadline.map_or(0, |d| {
            (d.saturating_duration_since(self.base).as_nanos() as u64).max(1)
        });
        self.deadline.store(nanos, SeqCst);
        self.changed.notify_waiters();
    }

    /// Sets the state of shard `s` (a token, a token with [`DRAINING`], or
    /// 0). Returns the live count read after. Waiters are woken by
    /// [`Gate::publish`], once per pass over the shards, not per shard.
    pub(crate) fn set(&self, key: u64, s: u16, state: u64) -> u32 {
        let Some(cap) = self.cap(key) else {
            return 0;
        };
        cap.state[s as usize].store(state, SeqCst);
        cap.live[s as usize].load(SeqCst)
    }

    /// Wakes the waiters after [`Gate::set`]s.
    pub(crate) fn publish(&self) {
        self.changed.notify_waiters();
    }

    /// Clears every shard (the session was lost).
    pub(crate) fn clear(&self) {
        for cap in &self.caps {
            for st in cap.state.iter() {
                st.store(0, SeqCst);
            }
        }
        self.deadline.store(0, SeqCst);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn enter_needs_a_held_shard_and_a_valid_deadline() {
        let g = Gate::new("mesh/c/own".into(), &[(7, 3, "game/Player".into())]);
        assert_eq!(g.enter(7, 1), None, "not held");
        g.set(7, 1, 40);
        assert_eq!(g.enter(7, 1), None, "no deadline yet");
        g.set_deadline(Some(Instant::now() + Duration::from_secs(1)));
        assert_eq!(g.enter(7, 1), Some(40));
        assert_eq!(g.caps()[0].live(1), 1);
        assert_eq!(g.check(7, 1, 40), Check::Go);
        // Draining: the running activation goes on, no new one starts.
        assert_eq!(g.set(7, 1, 40 | DRAINING), 1);
        assert_eq!(g.check(7, 1, 40), Check::Go);
        assert_eq!(g.enter(7, 1), None);
        // The deadline passes: wait; a new token: lost.
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(g.check(7, 1, 40), Check::Wait);
        // A renew moves the deadline: the same activation goes on.
        g.set_deadline(Some(Instant::now() + Duration::from_secs(1)));
        assert_eq!(g.check(7, 1, 40), Check::Go);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(g.check(7, 1, 40), Check::Wait);
        g.set(7, 1, 41);
        assert_eq!(g.check(7, 1, 40), Check::Lost);
        g.exit(7, 1);
        assert_eq!(g.caps()[0].live(1), 0);
        assert_eq!(g.enter(9, 1), None, "unknown capability");
        assert_eq!(
            g.lock_key_of(7, 1).as_deref(),
            Some("mesh/c/own/game/Player/0001")
        );
    }
}
