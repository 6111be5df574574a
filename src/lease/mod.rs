//! Strong single activation: an opt-in mode in which at most one
//! activation of an id runs at a time across the cluster, enforced by
//! leases in an authoritative store (Consul), with fencing tokens for the
//! actor's own writes.
//!
//! ```no_run
//! # async fn run() -> Result<(), mesh::Error> {
//! use mesh::discovery::Consul;
//! use mesh::lease::Strong;
//! use mesh::Node;
//!
//! let consul = Consul::new();
//! let node = Node::builder()
//!     .cluster("wallets")
//!     .cookie("secret")
//!     .listen("127.0.0.1:7000")
//!     .capabilities(["wallet"])
//!     .discovery(consul.clone())
//!     .strong(Strong::new())
//!     .start()
//!     .await?;
//! # node.shutdown().await }
//! ```
//!
//! **Eventual** placement (the default, as in the Elixir Mesh library)
//! routes by the local ring alone: during a join, a leave, a partition or
//! a pause, one id can be active on two nodes for a while. **Strong** mode
//! keeps routing a local ring lookup (no directory hop) and gates only
//! activation and dispatch:
//!
//! - **One session per node** in the store (Consul: TTL-only, no node
//!   checks, `Behavior` release; TTL 10 s, lock-delay 5 s by default), kept
//!   alive every TTL / 4.
//! - **One lock key per (actor type, shard)**,
//!   `mesh/<cluster>/own/<capability>/<actor>/<shard:04>` (the types of a
//!   capability may be placed on different nodes), locked in batches of 64
//!   per `/v1/txn`. Its fencing token is the lock write's `ModifyIndex`,
//!   which grows with every grant across the whole store.
//! - **The local deadline**: `send time of the last successful renew + TTL
//!   x (1 - rho) - epsilon` (rho 1 %, epsilon 500 ms). Consul never
//!   invalidates a session less than a TTL after it *received* a renew,
//!   and no other session can lock a released key until the lock-delay
//!   after an invalidation, so stopping at the deadline stays safe for a
//!   clock running up to rho slower than the server's.
//! - **Dispatch gate**: an activation starts only on a shard this node has
//!   locked, under a valid deadline, and checks the same before each
//!   message (one atomic load and a clock read). Past the deadline it
//!   stops and buffers (its mailbox, with the callers' deadlines); a renew
//!   resumes it; a lost session ends every activation of the node without
//!   its `on_deactivate` hook (its state may be stale), and their ids
//!   activate again once locked anew.
//! - **Handoff**: when the ring gives a shard to another node, the old
//!   owner marks it draining (no new activation; calls arriving are
//!   forwarded to the new owner, as in eventual mode), its activations
//!   finish what is queued and run their hooks, then it unlocks the key.
//!   The new owner retries the lock every `retry` (250 ms) and buffers the
//!   calls it gets meanwhile, each until its own deadline. A node that
//!   leaves does the same for all its shards, then destroys its session.
//! - **Crash**: the dead node's session expires at least a TTL after its
//!   last renew (Consul's timer runs twice the TTL), then its keys are
//!   free after the lock-delay: its shards are unavailable for at most
//!   `2 x TTL + lock-delay + retry`, about 25 s with the defaults (the
//!   10 s TTL is Consul's minimum).
//!
//! Strong mode needs an authoritative store: a static-seed cluster cannot
//! offer it, and [`crate::NodeBuilder::start`] refuses `strong` without a
//! discovery that has a [`LeaseStore`] ([`crate::discovery::Consul`] has).
//! When the store is unreachable, nodes stop serving their shards at
//! their deadline (CP: the cluster's availability becomes the store's).
//!
//! # Limits
//!
//! - The mode is per node (every actor type of a strong node is leased);
//!   every node of a cluster must use the same mode.
//! - A call from a peer that reaches a node which will not hold its shard
//!   (it is handing the shard off, leaving, or its ring names another
//!   owner) is routed again to the owner. A typed call made in this same
//!   process and queued for such a shard has no encoded form to forward:
//!   it waits for its deadline.
//! - Casts are not buffered across a handoff any better than calls: a
//!   cast waiting at the gate of a node that never gets the shard is
//!   dropped with its mailbox.
//!
//! # Why a lease alone is not enough
//!
//! A process paused right after its gate said yes (GC, SIGSTOP, a slow
//! page fault, a suspended VM) can resume after another node took the
//! shard and still perform the write it was about to do. Writes to state
//! outside the actor must be **fenced**: carry the activation's token
//! ([`crate::Ctx::fence`]) and let the store refuse a stale one. With
//! Consul, [`crate::discovery::Consul::fenced_put`] writes in one `/v1/txn`
//! with a `check-session` of the shard's lock key, which fails once the
//! key is held by another session (or by none).
//!
//! # The local lease rule
//!
//! The rule behind the deadline is a sans-IO state machine (`Lease`,
//! crate-private): time is passed in as [`tokio::time::Instant`]
//! (`CLOCK_MONOTONIC` on Linux, which does not count suspend; a suspended
//! host looks like a paused process, and the deadline covers both because
//! it is checked after the pause, before any dispatch). Replies may be
//! handled out of order: the deadline only ever moves to a later send
//! time, and replies for an older session are ignored.

pub(crate) mod gate;
pub(crate) mod keeper;
mod store;

pub use store::{LeaseStore, LeaseStoreError};

/// The strong mode's settings ([`crate::NodeBuilder::strong`]). See the
/// [module docs](self) for what each one bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Strong {
    pub(crate) ttl: Duration,
    pub(crate) lock_delay: Duration,
    pub(crate) rho: f64,
    pub(crate) epsilon: Duration,
    pub(crate) time_scale: f64,
    pub(crate) retry: Duration,
    pub(crate) batch: usize,
}

impl Default for Strong {
    fn default() -> Self {
        Strong::new()
    }
}

impl Strong {
    /// The defaults: session TTL 10 s (Consul's minimum), lock-delay 5 s,
    /// clock-rate margin 1 %, scheduling allowance 500 ms, lock retry
    /// every 250 ms, 64 keys per transaction.
    pub fn new() -> Strong {
        Strong {
            ttl: Duration::from_secs(10),
            lock_delay: Duration::from_secs(5),
            rho: LeaseConfig::DEFAULT_RHO,
            epsilon: LeaseConfig::DEFAULT_EPSILON,
            time_scale: 1.0,
            retry: Duration::from_millis(250),
            batch: 64,
        }
    }

    /// The session TTL: a crashed node's shards come back after about
    /// twice this plus the lock-delay. Consul refuses less than 10 s.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The session's lock-delay: how long after an invalidation its keys
    /// stay unlockable (Consul caps it at 60 s).
    pub fn lock_delay(mut self, delay: Duration) -> Self {
        self.lock_delay = delay;
        self
    }

    /// The tolerated clock-rate difference with the store's servers
    /// (default 0.01) and a fixed scheduling allowance (default 500 ms),
    /// both taken off the local deadline.
    pub fn margins(mut self, rho: f64, epsilon: Duration) -> Self {
        self.rho = rho;
        self.epsilon = epsilon;
        self
    }

    /// How often a shard the store refused is tried again (default 250
    /// ms): bounds how long a handoff waits after the old owner released.
    pub fn retry(mut self, every: Duration) -> Self {
        self.retry = every;
        self
    }

    /// For a test store that runs time faster than it is told (the mesh
    /// test agent's `TimeScale`): the TTL, lock-delay and allowance are
    /// multiplied by `scale` where this node computes its deadline, and
    /// sent unscaled. Leave it at 1.0 with a real Consul.
    pub fn time_scale(mut self, scale: f64) -> Self {
        self.time_scale = scale;
        self
    }

    /// Checks the settings (at start).
    pub(crate) fn check(&self) -> Result<(), String> {
        if !(self.time_scale > 0.0 && self.time_scale.is_finite()) {
            return Err(format!(
                "strong mode: time scale {} must be positive",
                self.time_scale
            ));
        }
        if self.batch == 0 || self.retry.is_zero() {
            return Err("strong mode: retry and batch must be positive".into());
        }
        self.try_lease_config()
            .map(drop)
            .map_err(|e| format!("strong mode: {e} (see Strong::margins and Strong::ttl)"))
    }

    fn try_lease_config(&self) -> Result<LeaseConfig, LeaseConfigError> {
        LeaseConfig::new(
            self.ttl.mul_f64(self.time_scale),
            self.rho,
            self.epsilon.mul_f64(self.time_scale),
        )
    }

    /// The lease timing, as this node measures it (checked at start).
    pub(crate) fn lease_config(&self) -> LeaseConfig {
        self.try_lease_config().unwrap_or(LeaseConfig {
            ttl: self.ttl.mul_f64(self.time_scale),
            rho: 0.0,
            epsilon: Duration::ZERO,
        })
    }

    /// How long a crashed owner's shards stay unavailable at most, as the
    /// store counts time: `2 x TTL + lock-delay + retry`.
    pub fn failover_bound(&self) -> Duration {
        (self.ttl * 2 + self.lock_delay).mul_f64(self.time_scale) + self.retry
    }
}

/// What an activation in strong mode fences its writes with
/// ([`crate::Ctx::fence`]): the lock key of its shard, the session holding
/// it, and the lock's fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Fence {
    /// The shard's lock key
    /// (`mesh/<cluster>/own/<capability>/<actor>/<shard>`).
    pub key: String,
    /// The session that holds it (this node's).
    pub session: String,
    /// The fencing token: the lock write's index. A later owner of the
    /// shard holds a larger one.
    pub token: u64,
}

impl Fence {
    /// A fence from its parts (for tools and tests; an actor gets its own
    /// from [`crate::Ctx::fence`]).
    pub fn new(key: impl Into<String>, session: impl Into<String>, token: u64) -> Fence {
        Fence {
            key: key.into(),
            session: session.into(),
            token,
        }
    }
}

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
// The rule's own queries: the node reads the same facts lock-free from
// `gate::Gate`, and the unit tests read them here.
#[cfg_attr(not(test), allow(dead_code))]
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
#[cfg_attr(not(test), allow(dead_code))]
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
    #[cfg_attr(not(test), allow(dead_code))]
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
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn check(&self, key: &K, now: Instant) -> Result<FencingToken, Denied> {
        match self.state(now) {
            LeaseState::Valid { .. } => self.owned.get(key).copied().ok_or(Denied::NotOwned),
            other => Err(Denied::NotValid(other)),
        }
    }

    /// The shards held, with their tokens, whatever the state.
    #[cfg_attr(not(test), allow(dead_code))]
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
