//! The dispatch gate of the strong mode: what the activations of this node
//! read, without locks, before they activate or handle a message.
//!
//! Written by the keeper task ([`super::keeper`]), and marked draining
//! by a routing change ([`Gate::hand_off`]: a held shard the ring gives
//! to another node stops admitting activations at once, not at the
//! keeper's next pass); read by every activation of a leased actor type.
//! Leases are per (actor type, shard): with placement by actor type, the types of one capability may live on
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
//! and, for the node, the local lease deadline, on the two clocks of
//! [`super::clock`]: `CLOCK_BOOTTIME` and the wall clock, each stamped at
//! the send of the last successful renew plus the validity (see
//! [`super::Lease::deadline`]). The lease holds while *both* clocks are
//! before their deadline.
//!
//! **This is the rule dispatch runs, and the only one**: an activation
//! starts ([`Gate::enter`]) only on a shard held (not draining) under a
//! valid deadline, and handles each message, or each call a reentrant
//! turn interleaves, or its `on_deactivate` hook, only after
//! [`Gate::check`] said [`Check::Go`] for the token it entered with.
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
//!
//! **Demand** ([`Gate::demand`]): an activation waiting for a shard this
//! node should hold and does not yet (a handoff in progress) says so,
//! once per shard until the keeper has dealt with it; the keeper locks
//! demanded shards before the others (a call waits on them), in the
//! batch it sends next. At most one entry per (actor type, shard) is ever
//! queued, so the queue is bounded by the shards, whatever the callers do.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use tokio::sync::Notify;

use super::clock::{Clock, Stamp, SystemClock};
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
    /// Demanded and not yet settled by the keeper ([`Gate::demand`]).
    demanded: Box<[AtomicBool]>,
}

impl CapGate {
    fn new(key: u64, cap: u64, name: &str) -> CapGate {
        CapGate {
            key,
            cap,
            name: name.to_owned(),
            state: (0..SHARDS).map(|_| AtomicU64::new(0)).collect(),
            live: (0..SHARDS).map(|_| AtomicU32::new(0)).collect(),
            demanded: (0..SHARDS).map(|_| AtomicBool::new(false)).collect(),
        }
    }

    pub(crate) fn state(&self, s: u16) -> u64 {
        self.state[s as usize].load(SeqCst)
    }

    pub(crate) fn live(&self, s: u16) -> u32 {
        self.live[s as usize].load(SeqCst)
    }

    /// Whether an activation demanded shard `s` ([`Gate::demand`]) and
    /// the keeper has not settled it yet.
    pub(crate) fn demanded(&self, s: u16) -> bool {
        self.demanded[s as usize].load(SeqCst)
    }
}

/// The gate of one node. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Gate {
    clock: Arc<dyn Clock>,
    /// The boot-clock reading (nanoseconds) at which the lease stops
    /// holding; 0: none.
    boot_deadline: AtomicU64,
    /// The same on the wall clock (nanoseconds since the Unix epoch).
    wall_deadline: AtomicU64,
    /// How far ahead the last deadline was when it was set (nanoseconds):
    /// one validity span, for [`Gate::lapsed`].
    span: AtomicU64,
    caps: Vec<CapGate>,
    /// The session the tokens were granted under (for fenced writes).
    session: ArcSwapOption<String>,
    /// The lock-key prefix: `mesh/<cluster>/own`.
    pub(crate) prefix: String,
    /// Activations wait here for a change.
    changed: Notify,
    /// The keeper waits here for a live count reaching zero.
    pub(crate) drained: Notify,
    /// Shards demanded since the keeper last looked ([`Gate::demand`]).
    demands: Mutex<Vec<(u64, u16)>>,
}

impl Gate {
    /// A gate for `types` (actor key, capability key, and
    /// `<capability>/<actor>`), nothing held.
    pub(crate) fn new(prefix: String, types: &[(u64, u64, String)]) -> Gate {
        Gate::with_clock(prefix, types, Arc::new(SystemClock))
    }

    /// The same, reading the time from `clock`.
    pub(crate) fn with_clock(
        prefix: String,
        types: &[(u64, u64, String)],
        clock: Arc<dyn Clock>,
    ) -> Gate {
        Gate {
            clock,
            boot_deadline: AtomicU64::new(0),
            wall_deadline: AtomicU64::new(0),
            span: AtomicU64::new(0),
            caps: types
                .iter()
                .map(|(key, cap, name)| CapGate::new(*key, *cap, name))
                .collect(),
            session: ArcSwapOption::empty(),
            prefix,
            changed: Notify::new(),
            drained: Notify::new(),
            demands: Mutex::new(Vec::new()),
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

    /// Both clocks, now (the keeper stamps its renews with it).
    pub(crate) fn now(&self) -> Stamp {
        self.clock.now()
    }

    /// Whether the lease holds now: both clocks before their deadline.
    pub(crate) fn valid(&self) -> bool {
        let boot = self.boot_deadline.load(SeqCst);
        let wall = self.wall_deadline.load(SeqCst);
        if boot == 0 || wall == 0 {
            return false;
        }
        let now = self.clock.now();
        nanos(now.boot) < boot && nanos(now.wall) < wall
    }

    /// Whether the lease is gone for good, for a leave's drain: none is
    /// held (never granted, or cleared: the session is gone), or its
    /// deadline passed at least one validity span ago. A deadline just
    /// passed is not enough: under load a renewal can come late (the
    /// keeper renews several times a span), and a drain that gave up then
    /// would drop the calls it was about to answer.
    pub(crate) fn lapsed(&self) -> bool {
        let boot = self.boot_deadline.load(SeqCst);
        if boot == 0 || self.wall_deadline.load(SeqCst) == 0 {
            return true;
        }
        if self.valid() {
            return false;
        }
        let now = nanos(self.clock.now().boot);
        now >= boot.saturating_add(self.span.load(SeqCst))
    }

    /// An activation of shard `s` wants to start: `Some(token)` if it may
    /// (it then counts as live until [`Gate::exit`]), `None` if it must
    /// wait for a change.
    pub(crate) fn enter(&self, key: u64, s: u16) -> Option<u64> {
        let cap = self.cap(key)?;
        cap.live[s as usize].fetch_add(1, SeqCst);
        let st = cap.state[s as usize].load(SeqCst);
        if st != 0 && st & DRAINING == 0 && self.valid() {
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
        } else if self.valid() {
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

    /// An activation waits for shard `s`, which this node should hold and
    /// does not: the keeper locks it before the shards nobody waits for.
    /// Queued once until the keeper settles it ([`Gate::settle`]); a
    /// repeat costs one atomic swap.
    pub(crate) fn demand(&self, key: u64, s: u16) {
        let Some(cap) = self.cap(key) else {
            return;
        };
        if !cap.demanded[s as usize].swap(true, SeqCst) {
            crate::util::lock(&self.demands).push((key, s));
        }
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
    ///
    /// The two clocks' deadlines are stored one after the other: a reader
    /// in between may pair the new one with the old one (or with none),
    /// each a deadline the keeper published, so it decides no later than
    /// either would.
    pub(crate) fn set_deadline(&self, deadline: Option<Stamp>) {
        match deadline {
            Some(d) => {
                let now = nanos(self.clock.now().boot);
                self.span.store(nanos(d.boot).saturating_sub(now), SeqCst);
                self.boot_deadline.store(nanos(d.boot).max(1), SeqCst);
                self.wall_deadline.store(nanos(d.wall).max(1), SeqCst);
            }
            None => {
                self.boot_deadline.store(0, SeqCst);
                self.wall_deadline.store(0, SeqCst);
            }
        }
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

    /// The routing no longer names this node the owner of shard `s`:
    /// marks it draining at once if it is held, so that no activation
    /// starts on it between the routing change and the keeper's next pass
    /// (which may be seconds away while it locks other shards on a slow
    /// store), and the last activation to end wakes the keeper. A
    /// compare-and-swap: whatever the keeper writes meanwhile wins, and its
    /// next pass decides again. Returns whether it marked the shard.
    pub(crate) fn hand_off(&self, key: u64, s: u16) -> bool {
        let Some(cap) = self.cap(key) else {
            return false;
        };
        let cell = &cap.state[s as usize];
        let st = cell.load(SeqCst);
        st != 0
            && st & DRAINING == 0
            && cell
                .compare_exchange(st, st | DRAINING, SeqCst, SeqCst)
                .is_ok()
    }

    /// The shards demanded since the last call (each once).
    pub(crate) fn take_demands(&self) -> Vec<(u64, u16)> {
        std::mem::take(&mut *crate::util::lock(&self.demands))
    }

    /// Whether shard `s` of `key` is held (draining or not).
    pub(crate) fn held(&self, key: u64, s: u16) -> bool {
        self.cap(key).is_some_and(|c| c.state(s) != 0)
    }

    /// Whether shard `s` of `key` is demanded and not settled.
    pub(crate) fn is_demanded(&self, key: u64, s: u16) -> bool {
        self.cap(key).is_some_and(|c| c.demanded(s))
    }

    /// The keeper is done with the demand for shard `s` (it locked it, or
    /// this node no longer wants it): the next wait demands it again.
    pub(crate) fn settle(&self, key: u64, s: u16) {
        if let Some(cap) = self.cap(key) {
            cap.demanded[s as usize].store(false, SeqCst);
        }
    }

    /// Wakes the waiters after [`Gate::set`]s.
    pub(crate) fn publish(&self) {
        self.changed.notify_waiters();
    }

    /// Clears every shard (the session was lost); returns how many were
    /// held.
    pub(crate) fn clear(&self) -> usize {
        self.boot_deadline.store(0, SeqCst);
        self.wall_deadline.store(0, SeqCst);
        let mut held = 0;
        for cap in &self.caps {
            for st in cap.state.iter() {
                if st.swap(0, SeqCst) != 0 {
                    held += 1;
                }
            }
        }
        self.changed.notify_waiters();
        held
    }
}

/// `d` in nanoseconds (saturating: 584 years).
fn nanos(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::clock::TestClock;
    use crate::lease::{Lease, LeaseConfig};
    use std::time::Duration;
    use tokio::time::Instant;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A gate for one actor type (key 7) on `clock`, and the keeper's book
    /// for a 10 s TTL, 1 % rate margin and 500 ms allowance: valid 9.4 s
    /// after a successful renew was sent.
    fn gate(clock: &Arc<TestClock>) -> (Gate, Lease) {
        let g = Gate::with_clock(
            "mesh/c/own".into(),
            &[(7, 3, "game/Player".into())],
            clock.clone(),
        );
        let c = LeaseConfig::new(
            Duration::from_secs(10),
            LeaseConfig::DEFAULT_RHO,
            LeaseConfig::DEFAULT_EPSILON,
        )
        .unwrap();
        assert_eq!(c.validity(), ms(9_400));
        (g, Lease::new(c))
    }

    /// What the keeper does after each answer: publish the deadline.
    fn publish(g: &Gate, l: &Lease) {
        g.set_deadline(l.deadline());
    }

    #[test]
    fn a_late_renewal_is_not_a_lapse_until_a_whole_span_passes() {
        let clock = TestClock::new();
        let (g, _) = gate(&clock);
        assert!(g.lapsed(), "no lease yet");
        g.set_deadline(Some(clock.now().plus(ms(500))));
        assert!(!g.lapsed());
        // The deadline passes (a renewal is late): invalid, not lapsed.
        clock.advance(ms(600));
        assert!(!g.valid());
        assert!(!g.lapsed());
        // The late renewal arrives: valid again.
        g.set_deadline(Some(clock.now().plus(ms(500))));
        assert!(g.valid() && !g.lapsed());
        // No renewal for a whole span past the deadline: lapsed.
        clock.advance(ms(999));
        assert!(!g.lapsed());
        clock.advance(ms(1));
        assert!(g.lapsed());
        // Cleared (the session is gone): lapsed at once.
        g.set_deadline(Some(clock.now().plus(ms(500))));
        g.set_deadline(None);
        assert!(g.lapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn enter_needs_a_held_shard_and_a_valid_deadline() {
        let clock = TestClock::new();
        let (g, _) = gate(&clock);
        assert_eq!(g.enter(7, 1), None, "not held");
        g.set(7, 1, 40);
        assert_eq!(g.enter(7, 1), None, "no deadline yet");
        g.set_deadline(Some(clock.now().plus(Duration::from_secs(1))));
        assert_eq!(g.enter(7, 1), Some(40));
        assert_eq!(g.caps()[0].live(1), 1);
        assert_eq!(g.check(7, 1, 40), Check::Go);
        // Draining: the running activation goes on, no new one starts.
        assert_eq!(g.set(7, 1, 40 | DRAINING), 1);
        assert_eq!(g.check(7, 1, 40), Check::Go);
        assert_eq!(g.enter(7, 1), None);
        // The deadline passes: wait; a new token: lost.
        clock.advance(Duration::from_secs(1));
        assert_eq!(g.check(7, 1, 40), Check::Wait);
        // A renew moves the deadline: the same activation goes on.
        g.set_deadline(Some(clock.now().plus(Duration::from_secs(1))));
        assert_eq!(g.check(7, 1, 40), Check::Go);
        clock.advance(Duration::from_secs(1));
        assert_eq!(g.check(7, 1, 40), Check::Wait);
        g.set(7, 1, 41);
        assert_eq!(g.check(7, 1, 40), Check::Lost);
        g.exit(7, 1);
        assert_eq!(g.caps()[0].live(1), 0);
        assert_eq!(g.enter(9, 1), None, "unknown capability");
        assert_eq!(g.check(9, 1, 41), Check::Lost, "unknown capability");
        assert_eq!(
            g.lock_key_of(7, 1).as_deref(),
            Some("mesh/c/own/game/Player/0001")
        );
    }

    /// However many activations wait on a shard, and however often they
    /// look again, one demand is queued until the keeper settles it: the
    /// queue is bounded by the shards.
    #[tokio::test(start_paused = true)]
    async fn a_shard_is_demanded_once_until_the_keeper_settles_it() {
        let clock = TestClock::new();
        let (g, _) = gate(&clock);
        for _ in 0..1000 {
            g.demand(7, 5);
            g.demand(7, 6);
        }
        g.demand(9, 5); // unknown capability: ignored
        assert_eq!(g.take_demands(), vec![(7, 5), (7, 6)]);
        assert!(g.is_demanded(7, 5));
        g.demand(7, 5);
        assert!(g.take_demands().is_empty(), "still demanded");
        g.settle(7, 5);
        assert!(!g.is_demanded(7, 5));
        g.demand(7, 5);
        assert_eq!(g.take_demands(), vec![(7, 5)]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_counts_from_the_send_time_of_the_last_successful_renew() {
        let clock = TestClock::new();
        let (g, mut l) = gate(&clock);
        let t0 = clock.now();
        l.session_created("s1".into(), t0, Instant::now());
        publish(&g, &l);
        g.set(7, 1, 40);
        assert_eq!(g.enter(7, 1), Some(40));
        assert_eq!(g.check(7, 1, 40), Check::Go);
        assert_eq!(g.enter(7, 2), None, "not held");
        // Valid until exactly t0 + 9.4 s, then expired.
        clock.advance(ms(9_399));
        assert_eq!(g.check(7, 1, 40), Check::Go);
        clock.advance(ms(1));
        assert_eq!(g.check(7, 1, 40), Check::Wait);
        assert_eq!(g.enter(7, 1), None);
        // A renew sent at 2.5 s but answered only at 9.5 s: valid again,
        // from the send time, not the answer's.
        clock.advance(ms(100));
        l.renew_sent(Instant::now());
        l.renewed("s1", t0.plus(ms(2_500)));
        publish(&g, &l);
        assert_eq!(l.deadline(), Some(t0.plus(ms(11_900))));
        assert_eq!(g.check(7, 1, 40), Check::Go);
        clock.advance(ms(2_399));
        assert_eq!(g.check(7, 1, 40), Check::Go);
        clock.advance(ms(1));
        assert_eq!(g.check(7, 1, 40), Check::Wait);
    }

    #[tokio::test(start_paused = true)]
    async fn late_or_stale_replies_never_move_the_deadline_back_or_revive_a_session() {
        let clock = TestClock::new();
        let (g, mut l) = gate(&clock);
        let t0 = clock.now();
        l.session_created("s1".into(), t0, Instant::now());
        l.renewed("s1", t0.plus(ms(5_000)));
        l.renewed("s1", t0.plus(ms(2_500))); // an older renew answered late
        assert_eq!(l.deadline(), Some(t0.plus(ms(14_400))));
        publish(&g, &l);
        g.set(7, 1, 10);
        g.set(7, 2, 11);
        assert_eq!(g.check(7, 1, 10), Check::Go);
        // The session is gone: every shard lost at once.
        assert!(l.session_gone("s1"));
        assert_eq!(g.clear(), 2);
        assert_eq!(g.check(7, 1, 10), Check::Lost);
        assert_eq!(g.check(7, 2, 11), Check::Lost);
        // Late answers for the dead session change nothing.
        l.renewed("s1", t0.plus(ms(6_000)));
        assert_eq!(l.deadline(), None);
        assert!(!l.session_gone("s1"), "not the current session");
        // A new session starts with no shards: nothing enters until the
        // keeper locks them anew, under new tokens.
        l.session_created("s2".into(), t0.plus(ms(7_000)), Instant::now());
        publish(&g, &l);
        assert_eq!(g.enter(7, 1), None);
        g.set(7, 1, 20);
        assert_eq!(g.check(7, 1, 10), Check::Lost, "the old token");
        assert_eq!(g.enter(7, 1), Some(20));
        assert_eq!(g.check(7, 1, 20), Check::Go);
    }

    /// A host suspended (laptop lid, `systemctl suspend`): its monotonic
    /// clock, and tokio's with it, stopped; the boot clock did not. After
    /// resume the deadline has passed on the boot clock, and the gate
    /// refuses although tokio's clock says the lease is young.
    #[tokio::test(start_paused = true)]
    async fn a_suspend_past_the_validity_makes_the_gate_refuse_though_tokio_says_valid() {
        let clock = TestClock::new();
        let (g, mut l) = gate(&clock);
        let monotonic_deadline = Instant::now() + ms(9_400);
        l.session_created("s1".into(), clock.now(), Instant::now());
        publish(&g, &l);
        g.set(7, 1, 40);
        assert_eq!(g.enter(7, 1), Some(40));
        clock.advance(ms(1_000));
        tokio::time::advance(ms(1_000)).await;
        assert_eq!(g.check(7, 1, 40), Check::Go);
        // Suspended for 40 s: only the boot clock moved.
        clock.suspend(Duration::from_secs(40));
        assert!(Instant::now() < monotonic_deadline, "tokio: still valid");
        assert_eq!(g.check(7, 1, 40), Check::Wait);
        assert_eq!(g.enter(7, 1), None);
        // A renew that succeeds after the resume (the session survived)
        // makes it valid again, from that renew's send.
        l.renew_sent(Instant::now());
        l.renewed("s1", clock.now());
        publish(&g, &l);
        assert_eq!(g.check(7, 1, 40), Check::Go);
    }

    /// A VM paused by its hypervisor: no clock of the guest moved, until
    /// its wall clock was set right on resume. The wall clock's time since
    /// the last renew is past the validity: the gate refuses, although
    /// both the boot clock and tokio's say the lease is young. A wall
    /// clock stepped back does not extend the lease past the boot clock's
    /// deadline.
    #[tokio::test(start_paused = true)]
    async fn a_wall_clock_past_the_validity_makes_the_gate_refuse_though_tokio_says_valid() {
        let clock = TestClock::new();
        let (g, mut l) = gate(&clock);
        let monotonic_deadline = Instant::now() + ms(9_400);
        l.session_created("s1".into(), clock.now(), Instant::now());
        publish(&g, &l);
        g.set(7, 1, 40);
        assert_eq!(g.enter(7, 1), Some(40));
        // Just under the validity on the wall clock: still valid.
        clock.step_wall(ms(9_399));
        assert_eq!(g.check(7, 1, 40), Check::Go);
        clock.step_wall(ms(30_601));
        assert!(Instant::now() < monotonic_deadline, "tokio: still valid");
        assert_eq!(g.check(7, 1, 40), Check::Wait);
        assert_eq!(g.enter(7, 1), None);
        // A renew sent after the step: valid again.
        clock.advance(ms(1));
        l.renewed("s1", clock.now());
        publish(&g, &l);
        assert_eq!(g.check(7, 1, 40), Check::Go);
        // The wall clock stepped back by an hour: the boot clock still
        // ends the lease at its own deadline.
        clock.step_wall_back(Duration::from_secs(3_600));
        clock.advance(ms(9_399));
        assert_eq!(g.check(7, 1, 40), Check::Go);
        clock.advance(ms(1));
        assert_eq!(g.check(7, 1, 40), Check::Wait);
    }
}
