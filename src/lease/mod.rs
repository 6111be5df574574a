//! The local lease rule of the strong mode (issue 15): a sans-IO state
//! machine that answers "may this node activate or dispatch for shard `s`
//! now?", from the replies of a lease store (Consul sessions and lock
//! keys), without asking the store on the call path.
//!
//! It is the base of the opt-in strong single-activation mode and is not
//! wired into the node yet: the wrapper that will drive it (a renew loop,
//! lock and unlock transactions, the dispatch gate) comes with the rest
//! of issue 15. The design it implements is
//! `shared/reference/chaos-and-leases.md` section 3.2:
//!
//! - **One session per node** with a TTL. Consul treats the TTL as a lower
//!   bound: it never invalidates a session less than a TTL after the last
//!   create or renew it *received* (its timer actually runs 2 x TTL).
//! - **The local deadline** is computed from when the last successful
//!   renew was *sent*, which is no later than when the server received it:
//!   `deadline = t_send + TTL x (1 - rho) - epsilon`, with `rho` the
//!   tolerated clock-rate error between this node and the server (a
//!   local clock running slow by `rho` measures `TTL x (1 - rho)` while
//!   `TTL` passes on the server's) and `epsilon` a fixed allowance for
//!   scheduling. Past the deadline the node must stop dispatching on every
//!   leased shard and buffer; a later successful renew restores the lease
//!   (the session was still valid when the server got it, so its locks
//!   were still held); an answer that the session is gone (Consul's 404)
//!   loses every shard at once.
//! - **`owned[s]`** holds a shard only after its lock succeeded, with the
//!   lock's **fencing token** (the lock write's `ModifyIndex`, ordered
//!   across shards since all Raft indexes share one space).
//!
//! Time is passed in as [`tokio::time::Instant`] (`CLOCK_MONOTONIC` on
//! Linux, which does not count suspend; a suspended host looks like a
//! paused process, and the deadline covers both because it is checked
//! after the pause, before any dispatch). Replies may be handled out of
//! order: the deadline only ever moves to a later send time, and replies
//! for an older session are ignored.
//!
//! Why a lease alone is not enough: a process paused after
//! [`Lease::check`] said yes (GC, SIGSTOP, a slow page fault) can resume
//! after another node took the shard and still perform the write it was
//! about to do. Writes to external state must carry the token and the
//! store must refuse tokens below the highest it has seen (in Consul: a
//! `check-session` of the shard key in the same `/v1/txn` as the write).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// The fencing token of a held shard: the `ModifyIndex` of the write that
/// locked it. Tokens grow with every grant, across shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct FencingToken(pub(crate) u64);

/// The timing of a lease.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct LeaseConfig {
    ttl: Duration,
    rho: f64,
    epsilon: Duration,
}

/// Why a [`LeaseConfig`] was refused.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum LeaseConfigError {
    /// `rho` must be in `[0, 1)`.
    Rho(f64),
    /// `TTL x (1 - rho) - epsilon` must leave a positive validity.
    NoValidity,
}

impl fmt::Display for LeaseConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseConfigError::Rho(r) => write!(f, "clock-rate margin {r} is not in [0, 1)"),
            LeaseConfigError::NoValidity => {
                write!(f, "ttl x (1 - rho) - epsilon leaves no validity")
            }
        }
    }
}

impl std::error::Error for LeaseConfigError {}

impl LeaseConfig {
    /// The proposal's values: `rho` 1 %, `epsilon` 500 ms.
    pub(crate) const DEFAULT_RHO: f64 = 0.01;
    /// See [`LeaseConfig::DEFAULT_RHO`].
    pub(crate) const DEFAULT_EPSILON: Duration = Duration::from_millis(500);

    /// A lease of `ttl` (the session's TTL), clock-rate margin `rho` and
    /// scheduling allowance `epsilon`.
    pub(crate) fn new(
        ttl: Duration,
        rho: f64,
        epsilon: Duration,
    ) -> Result<LeaseConfig, LeaseConfigError> {
        if !(0.0..1.0).contains(&rho) {
            return Err(LeaseConfigError::Rho(rho));
        }
        let c = LeaseConfig { ttl, rho, epsilon };
        if c.validity().is_zero() {
            return Err(LeaseConfigError::NoValidity);
        }
        Ok(c)
    }

    /// How long after a successful renew's send time the lease holds:
    /// `TTL x (1 - rho) - epsilon` (zero if that is negative).
    pub(crate) fn validity(&self) -> Duration {
        self.ttl
            .mul_f64(1.0 - self.rho)
            .saturating_sub(self.epsilon)
    }

    /// How often to renew: a quarter of the TTL, so three renews in a row
    /// can fail before the deadline.
    pub(crate) fn renew_every(&self) -> Duration {
        self.ttl / 4
    }
}

/// Where the lease stands at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeaseState {
    /// No session yet (or a new one is being created after a loss).
    NoSession,
    /// Dispatch allowed on owned shards until `deadline`.
    Valid {
        /// When the lease stops holding unless renewed.
        deadline: Instant,
    },
    /// The deadline passed: stop dispatching and buffer; a successful
    /// renew makes it valid again.
    Expired {
        /// The deadline that passed.
        since: Instant,
    },
    /// The store said the session is gone: every shard is lost.
    Lost,
}

/// Why [`Lease::check`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Denied {
    /// This node does not hold the shard's lock.
    NotOwned,
    /// The lease is not valid now (see [`LeaseState`]).
    NotValid(LeaseState),
}

/// The lease of one node over its shards, keyed by `K` (for mesh: the
/// capability and the shard).
///
/// All methods are synchronous and cheap; none does I/O.
#[derive(Debug)]
pub(crate) struct Lease<K> {
    config: LeaseConfig,
    /// The current session and the send time of its last successful
    /// create or renew.
    session: Option<(String, Instant)>,
    /// The session was reported gone and no new one exists yet.
    lost: bool,
    /// When the last renew was sent, successful or not.
    last_attempt: Option<Instant>,
    owned: BTreeMap<K, FencingToken>,
}

impl<K: Ord + Clone> Lease<K> {
    /// A lease with no session.
    pub(crate) fn new(config: LeaseConfig) -> Lease<K> {
        Lease {
            config,
            session: None,
            lost: false,
            last_attempt: None,
            owned: BTreeMap::new(),
        }
    }

    /// The timing in use.
    pub(crate) fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// The current session's id.
    pub(crate) fn session(&self) -> Option<&str> {
        self.session.as_ref().map(|(id, _)| id.as_str())
    }

    /// A session create sent at `sent_at` succeeded with `id` (a create
    /// renews the TTL, as a renew does). Replaces any earlier session:
    /// shards held under it are forgotten.
    pub(crate) fn session_created(&mut self, id: String, sent_at: Instant) {
        if self.session.as_ref().is_some_and(|(old, _)| *old != id) {
            self.owned.clear();
        }
        self.session = Some((id, sent_at));
        self.lost = false;
        self.last_attempt = Some(sent_at);
    }

    /// A renew is being sent at `at` (read the clock *before* sending).
    pub(crate) fn renew_sent(&mut self, at: Instant) {
        self.last_attempt = Some(self.last_attempt.map_or(at, |t| t.max(at)));
    }

    /// When the next renew is due: [`LeaseConfig::renew_every`] after the
    /// last attempt; `None` without a session.
    pub(crate) fn next_renew(&self) -> Option<Instant> {
        self.session.as_ref()?;
        self.last_attempt.map(|t| t + self.config.renew_every())
    }

    /// The renew of session `id` sent at `sent_at` succeeded. Ignored for
    /// another session; the deadline never moves back.
    pub(crate) fn renewed(&mut self, id: &str, sent_at: Instant) {
        if let Some((current, last)) = &mut self.session {
            if current == id && sent_at > *last {
                *last = sent_at;
            }
        }
    }

    /// The store answered that session `id` does not exist (Consul: 404
    /// on renew): every shard is lost. Returns them, with their tokens,
    /// so their activations can be dropped. Ignored for another session.
    pub(crate) fn session_gone(&mut self, id: &str) -> Vec<(K, FencingToken)> {
        if self.session() != Some(id) {
            return Vec::new();
        }
        self.session = None;
        self.lost = true;
        std::mem::take(&mut self.owned).into_iter().collect()
    }

    /// The local deadline: `t_send(last successful renew) + validity`.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.session
            .as_ref()
            .map(|(_, sent)| *sent + self.config.validity())
    }

    /// The state at `now`.
    pub(crate) fn state(&self, now: Instant) -> LeaseState {
        match self.deadline() {
            None if self.lost => LeaseState::Lost,
            None => LeaseState::NoSession,
            Some(deadline) if now < deadline => LeaseState::Valid { deadline },
            Some(since) => LeaseState::Expired { since },
        }
    }

    /// The lock of `key` under session `id` succeeded with `token`.
    /// Ignored (returns false) if `id` is not the current session, e.g. a
    /// late reply from before a loss: that lock died with its session.
    pub(crate) fn acquired(&mut self, id: &str, key: K, token: FencingToken) -> bool {
        if self.session() != Some(id) {
            return false;
        }
        self.owned.insert(key, token);
        true
    }

    /// `key` was released (unlocked, or handed off). Returns its token.
    pub(crate) fn released(&mut self, key: &K) -> Option<FencingToken> {
        self.owned.remove(key)
    }

    /// The gate before activating for, or dispatching to, `key`: the
    /// shard's token if this node holds its lock and the lease is valid
    /// at `now`.
    pub(crate) fn check(&self, key: &K, now: Instant) -> Result<FencingToken, Denied> {
        match self.state(now) {
            LeaseState::Valid { .. } => self.owned.get(key).copied().ok_or(Denied::NotOwned),
            other => Err(Denied::NotValid(other)),
        }
    }

    /// The shards held, with their tokens, whatever the state.
    pub(crate) fn owned(&self) -> impl Iterator<Item = (&K, FencingToken)> + '_ {
        self.owned.iter().map(|(k, t)| (k, *t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// 10 s TTL, 1 % rate margin, 500 ms allowance: valid 9.4 s after a
    /// successful renew was sent.
    fn lease() -> Lease<u16> {
        let c = LeaseConfig::new(
            Duration::from_secs(10),
            LeaseConfig::DEFAULT_RHO,
            LeaseConfig::DEFAULT_EPSILON,
        )
        .unwrap();
        assert_eq!(c.validity(), ms(9_400));
        assert_eq!(c.renew_every(), ms(2_500));
        Lease::new(c)
    }

    #[test]
    fn config_refuses_margins_that_leave_nothing() {
        let ttl = Duration::from_secs(10);
        assert_eq!(
            LeaseConfig::new(ttl, 1.0, ms(0)),
            Err(LeaseConfigError::Rho(1.0))
        );
        assert_eq!(
            LeaseConfig::new(ttl, -0.1, ms(0)),
            Err(LeaseConfigError::Rho(-0.1))
        );
        assert_eq!(
            LeaseConfig::new(ttl, 0.5, ms(5_000)),
            Err(LeaseConfigError::NoValidity)
        );
        assert!(LeaseConfig::new(ttl, 0.5, ms(4_999)).is_ok());
    }

    #[test]
    fn the_deadline_counts_from_the_send_time_of_the_last_successful_renew() {
        let t0 = Instant::now();
        let mut l = lease();
        assert_eq!(l.state(t0), LeaseState::NoSession);
        l.session_created("s1".into(), t0);
        assert!(l.acquired("s1", 7, FencingToken(40)));
        assert_eq!(l.check(&7, t0), Ok(FencingToken(40)));
        assert_eq!(l.check(&8, t0), Err(Denied::NotOwned));
        // Valid until exactly t0 + 9.4 s, then expired.
        assert_eq!(l.check(&7, t0 + ms(9_399)), Ok(FencingToken(40)));
        let expired = LeaseState::Expired {
            since: t0 + ms(9_400),
        };
        assert_eq!(l.state(t0 + ms(9_400)), expired);
        assert_eq!(l.check(&7, t0 + ms(9_400)), Err(Denied::NotValid(expired)));
        // A renew sent at 2.5 s but answered only at 9.5 s: valid again,
        // from the send time, not the answer's.
        l.renew_sent(t0 + ms(2_500));
        l.renewed("s1", t0 + ms(2_500));
        assert_eq!(l.deadline(), Some(t0 + ms(11_900)));
        assert_eq!(l.check(&7, t0 + ms(9_500)), Ok(FencingToken(40)));
        assert!(l.check(&7, t0 + ms(11_900)).is_err());
    }

    #[test]
    fn late_or_stale_replies_never_move_the_deadline_back_or_revive_a_session() {
        let t0 = Instant::now();
        let mut l = lease();
        l.session_created("s1".into(), t0);
        l.renewed("s1", t0 + ms(5_000));
        l.renewed("s1", t0 + ms(2_500)); // an older renew answered late
        assert_eq!(l.deadline(), Some(t0 + ms(14_400)));
        // The session is gone: every shard lost, with its token.
        l.acquired("s1", 1, FencingToken(10));
        l.acquired("s1", 2, FencingToken(11));
        assert_eq!(
            l.session_gone("s1"),
            vec![(1, FencingToken(10)), (2, FencingToken(11))]
        );
        assert_eq!(l.state(t0), LeaseState::Lost);
        assert_eq!(l.check(&1, t0), Err(Denied::NotValid(LeaseState::Lost)));
        // Late answers for the dead session change nothing.
        l.renewed("s1", t0 + ms(6_000));
        assert!(!l.acquired("s1", 1, FencingToken(12)));
        assert_eq!(l.state(t0), LeaseState::Lost);
        // A new session starts with no shards.
        l.session_created("s2".into(), t0 + ms(7_000));
        assert_eq!(l.owned().count(), 0);
        assert_eq!(l.check(&1, t0 + ms(7_000)), Err(Denied::NotOwned));
        assert!(l.session_gone("s1").is_empty(), "not the current session");
        assert!(l.acquired("s2", 1, FencingToken(20)));
        assert_eq!(l.released(&1), Some(FencingToken(20)));
        assert_eq!(l.check(&1, t0 + ms(7_000)), Err(Denied::NotOwned));
    }

    #[test]
    fn renews_are_due_a_quarter_ttl_after_the_last_attempt() {
        let t0 = Instant::now();
        let mut l = lease();
        assert_eq!(l.next_renew(), None);
        l.session_created("s".into(), t0);
        assert_eq!(l.next_renew(), Some(t0 + ms(2_500)));
        // A failed attempt still moves the schedule (no tight retry loop),
        // but not the deadline.
        l.renew_sent(t0 + ms(2_500));
        assert_eq!(l.next_renew(), Some(t0 + ms(5_000)));
        assert_eq!(l.deadline(), Some(t0 + ms(9_400)));
        // Three failed renews in a row still leave the lease valid.
        l.renew_sent(t0 + ms(5_000));
        l.renew_sent(t0 + ms(7_500));
        assert!(matches!(l.state(t0 + ms(7_500)), LeaseState::Valid { .. }));
    }

    /// The bound the rule rests on: with the local clock slower than the
    /// server's by up to `rho`, the local deadline falls before the
    /// server's earliest invalidation (one TTL after it *received* the
    /// renew, which is no earlier than its send).
    #[test]
    fn the_deadline_falls_before_the_servers_earliest_invalidation_within_rho() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(10);
        for rho in [0.0, 0.01, 0.05] {
            let c = LeaseConfig::new(ttl, rho, ms(500)).unwrap();
            // Local time elapsed until the deadline, seen on a server
            // clock running faster by `rho`: validity / (1 - rho).
            let server_elapsed = c.validity().div_f64(1.0 - rho);
            assert!(server_elapsed < ttl, "rho {rho}: {server_elapsed:?}");
            let mut l: Lease<u16> = Lease::new(c);
            l.session_created("s".into(), t0);
            assert_eq!(l.deadline(), Some(t0 + c.validity()));
        }
    }
}
