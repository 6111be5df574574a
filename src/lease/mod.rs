//! Strong single activation: an opt-in mode in which at most one
//! activation of an id runs at a time across the cluster, enforced by
//! leases in an authoritative store (Consul), with fencing tokens for the
//! actor's own writes.
//!
//! ```no_run
//! # async fn run() -> Result<(), mesh::Error> {
//! use mesh::consul::Consul;
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
//! - **One session per node** in the store (Consul: TTL-only by default,
//!   or bound to the node's own service health check with
//!   [`Strong::bind_to_health_check`], never to the agent's `serfHealth`;
//!   `Behavior` release; TTL 10 s, lock-delay 10 s by default), kept alive
//!   every TTL / 4.
//! - **One lock key per (actor type, shard)**,
//!   `mesh/<cluster>/own/<capability>/<actor>/<shard:04>` (the types of a
//!   capability may be placed on different nodes), locked in batches of 64
//!   per `/v1/txn`. Its fencing token is the lock write's `ModifyIndex`,
//!   which grows with every grant across the whole store.
//! - **The local deadline**: `send time of the last successful renew + TTL
//!   x (1 - rho) - epsilon` (rho 1 %, epsilon 500 ms; the *validity* is
//!   9.4 s with the defaults), measured on two clocks at once
//!   ([the lease clocks](#the-lease-clocks)): `CLOCK_BOOTTIME` and the wall
//!   clock. Consul never invalidates a session less than a TTL after it
//!   *received* a renew (TTL expiry), and no other session can lock a
//!   released key until the lock-delay after an invalidation, so stopping
//!   at the deadline stays safe for a clock running up to rho slower than
//!   the server's.
//! - **Explicit invalidation** (an operator's `consul session destroy`,
//!   the bound health check going critical, a server-side invalidation):
//!   the keys are free at `D + lock-delay`,
//!   where `D` is the invalidation, which came after the last renew was
//!   received. This node stops at most `validity / (1 - rho)` of server
//!   time after that renew was sent, that is before `D + TTL - epsilon /
//!   (1 - rho)` (`D + 9.49 s` with the defaults). Hence the lock-delay
//!   must be at least `TTL - epsilon / (1 - rho)`: the default is 10 s,
//!   and [`crate::NodeBuilder::start`] refuses a shorter one (and one
//!   above Consul's 60 s cap, which a TTL above about 60 s would need).
//! - **Dispatch gate**: an activation starts only on a shard this node has
//!   locked, under a valid deadline, and checks the same before each
//!   message (two atomic loads and a read of both clocks), before each
//!   call of its chain that a reentrant turn
//!   (`#[mesh::handlers(reentrant)]`) interleaves, and before its
//!   `on_deactivate` hook. Past the deadline it stops and buffers (its
//!   mailbox, with the callers' deadlines; a reentrant turn's handlers
//!   already running go on, the calls of its chain wait); a renew resumes
//!   it; a lost session ends every activation of the node without its
//!   `on_deactivate` hook (its state may be stale; a reentrant turn ends
//!   at the next call of its chain, its running handlers dropped), and
//!   their ids activate again once locked anew.
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
//!   `2 x TTL + lock-delay + retry`, about 30 s with the defaults
//!   ([`Strong::failover_bound`]; the 10 s TTL is Consul's minimum).
//!   With [`Strong::bind_to_health_check`], a crashed process stops
//!   passing its health check, which goes critical a check TTL after the
//!   last pass (3 heartbeats by default); Consul then invalidates the
//!   session bound to it: at most `check TTL + lock-delay + retry`, about
//!   13 s with the defaults ([`Strong::failover_bound_with_check`];
//!   measured about halved, see `docs/guide/10-guarantees.md`), unless the check cannot turn
//!   critical (the whole host died with its Consul agent, whose checks
//!   the servers keep as they were). The binding cannot shorten the
//!   lock-delay: the invalidation it brings may come at any time, which
//!   is the explicit invalidation above. What it costs is liveness, and
//!   that is why it is off by default: a node whose health check lapses
//!   (its process stalled for a check TTL, which the chaos suite's debug
//!   builds did under the whole suite's load at a 300 ms check TTL) loses
//!   its session, every activation it holds ends without its hook and its
//!   shards are out for the lock-delay; unbound, the same stall only
//!   takes it out of its peers' routing until its check passes again.
//!
//! Strong mode needs an authoritative store: a static-seed cluster cannot
//! offer it, and [`crate::NodeBuilder::start`] refuses `strong` without a
//! discovery that has a [`LeaseStore`] (`mesh::consul::Consul` has).
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
//! Consul, `mesh::consul::Consul::fenced_put` writes in one `/v1/txn`
//! with a `check-session` of the shard's lock key and a `check-index` of
//! the token (the lock key's `ModifyIndex` must still be the one its grant
//! wrote), which fails once the key is held by another session, by none,
//! or by this same session under a later grant (the shard went away and
//! came back: an earlier activation's late write is refused).
//!
//! # The lease clocks
//!
//! The deadline is stamped on two clocks at the send of the renew, and
//! the gate lets an activation act only while both are before it:
//!
//! - `CLOCK_BOOTTIME`, which keeps counting while the host is suspended
//!   (`CLOCK_MONOTONIC`, Rust's and tokio's `Instant`, stops): after a
//!   suspend longer than the validity, the gate refuses at once, before
//!   any renew could report the session gone.
//! - The wall clock: a virtual machine paused by its hypervisor (a
//!   snapshot, a migration, `virsh suspend`) counts no boot time either.
//!   Once its wall clock is set right after the resume (NTP, the guest
//!   agent, kvmclock), the time since the last renew shows the lease
//!   expired, and the gate refuses. Until then such a guest acts as a
//!   paused process does (below): only fenced writes are safe. A wall
//!   clock stepped forward ends the lease early (a renew restores it); one
//!   stepped back is still bounded by the boot clock.
//!
//! Tokio's clock only schedules the renews; it decides nothing. The rule
//! is the gate's alone (`gate::Gate`, crate-private, tested on an injected
//! clock); the keeper's book (`Lease`) computes the deadline it publishes.
//! Replies may be handled out of order: the deadline only ever moves to a
//! later send, and replies for an older session are ignored.

pub(crate) mod clock;
pub(crate) mod gate;
pub(crate) mod keeper;
mod store;

pub use store::{LeaseStore, LeaseStoreError};

/// The strong mode's settings (`NodeBuilder::strong`, feature `strong`). See the
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
    pub(crate) bind_health: bool,
}

impl Default for Strong {
    fn default() -> Self {
        Strong::new()
    }
}

impl Strong {
    /// The defaults: session TTL 10 s (Consul's minimum), lock-delay 10 s
    /// (no shorter than the lease's validity, see [`Strong::lock_delay`]),
    /// clock-rate margin 1 %, scheduling allowance 500 ms, lock retry
    /// every 250 ms, 64 keys per transaction.
    pub fn new() -> Strong {
        Strong {
            ttl: Duration::from_secs(10),
            lock_delay: Duration::from_secs(10),
            rho: LeaseConfig::DEFAULT_RHO,
            epsilon: LeaseConfig::DEFAULT_EPSILON,
            time_scale: 1.0,
            retry: Duration::from_millis(250),
            batch: 64,
            bind_health: false,
        }
    }

    /// The session TTL: a crashed node's shards come back after about
    /// twice this plus the lock-delay. Consul refuses less than 10 s. A
    /// longer TTL needs a longer lock-delay ([`Strong::lock_delay`]).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The session's lock-delay: how long after an invalidation its keys
    /// stay unlockable (Consul caps it at 60 s).
    ///
    /// It must cover the lease's validity as the store counts time,
    /// `TTL - epsilon / (1 - rho)` (9.49 s with the defaults): when the
    /// session is invalidated before its TTL ran out (an operator's
    /// `consul session destroy`, a server-side invalidation), the keys are
    /// free for another node after the lock-delay, while this node may
    /// still dispatch until its deadline, up to a validity after its last
    /// renew. [`crate::NodeBuilder::start`] refuses a shorter one, and one
    /// above Consul's 60 s cap (which a TTL above about 60 s would need).
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

    /// Whether the session is bound to this node's own health check
    /// (default: no), so that a crashed process's shards come back a
    /// check TTL after its last heartbeat instead of up to twice the
    /// session TTL (see the [module docs](self), "Crash"). Safety does not
    /// depend on it: the lock-delay covers an invalidation at any time.
    /// Its cost: a stall longer than the check TTL ends the lease (every
    /// activation, and the shards for the lock-delay). Turn it on where
    /// crashes are likelier than such stalls, with a check TTL well above
    /// the longest pause the process may see.
    pub fn bind_to_health_check(mut self, bind: bool) -> Self {
        self.bind_health = bind;
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
        let config = self
            .try_lease_config()
            .map_err(|e| format!("strong mode: {e} (see Strong::margins and Strong::ttl)"))?;
        // Both sides of the comparison are scaled alike (the test agent
        // scales the lock-delay as it does the TTL).
        let lock_delay = self.lock_delay.mul_f64(self.time_scale);
        let needed = config.validity_at_the_store();
        if lock_delay < needed {
            return Err(format!(
                "strong mode: lock-delay {:?} is shorter than the lease validity as the store \
                 counts it, {:?} (TTL {:?} - epsilon {:?} / (1 - rho {})): after an explicit \
                 invalidation of the session (consul session destroy) another node could lock \
                 this node's shards while it still serves them; set Strong::lock_delay to at \
                 least {:?}, or shorten Strong::ttl",
                self.lock_delay,
                ceil_ms(needed.div_f64(self.time_scale)),
                self.ttl,
                self.epsilon,
                self.rho,
                ceil_ms(needed.div_f64(self.time_scale)),
            ));
        }
        if self.lock_delay > MAX_LOCK_DELAY {
            return Err(format!(
                "strong mode: lock-delay {:?} is above Consul's cap of {MAX_LOCK_DELAY:?} \
                 (Consul would shorten it below the lease validity); shorten Strong::ttl so \
                 that TTL - epsilon / (1 - rho) fits in {MAX_LOCK_DELAY:?}",
                self.lock_delay,
            ));
        }
        Ok(())
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
    /// store counts time, when its health check cannot tell (the host died
    /// with its agent, or the binding is off): `2 x TTL + lock-delay +
    /// retry`.
    pub fn failover_bound(&self) -> Duration {
        (self.ttl * 2 + self.lock_delay).mul_f64(self.time_scale) + self.retry
    }

    /// The same for a crashed process whose health check (TTL `check_ttl`,
    /// as registered) turns critical, with the session bound to it:
    /// `check TTL + lock-delay + retry`; [`Strong::failover_bound`] when
    /// the binding is off.
    pub fn failover_bound_with_check(&self, check_ttl: Duration) -> Duration {
        if !self.bind_health {
            return self.failover_bound();
        }
        (check_ttl + self.lock_delay).mul_f64(self.time_scale) + self.retry
    }
}

/// `d` rounded up to a millisecond (for messages).
fn ceil_ms(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX))
}

/// Consul's cap on a session's lock-delay (`MaxLockDelay`): a longer
/// one is silently shortened to it.
const MAX_LOCK_DELAY: Duration = Duration::from_secs(60);

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
    /// The fencing token: the index of the lock write that granted the
    /// shard (Consul: that write's `ModifyIndex`, which the lock key
    /// keeps until its next write; not its `LockIndex`, a per-key count
    /// that no transaction verb can check). A later grant of the shard,
    /// to any session, holds a larger one, ordered across shards;
    /// `mesh::consul::Consul::fenced_put` checks it with
    /// `check-index`, which compares the key's `ModifyIndex`.
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

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

use clock::Stamp;

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

    /// The validity as the store's servers may count it, their clock up
    /// to `rho` faster than ours: `validity / (1 - rho)`, that is
    /// `TTL - epsilon / (1 - rho)`. The lock-delay must be at least this
    /// ([`Strong::check`]).
    pub(crate) fn validity_at_the_store(&self) -> Duration {
        self.ttl
            .saturating_sub(self.epsilon.div_f64(1.0 - self.rho))
    }

    /// How often to renew: a quarter of the TTL, so three renews in a row
    /// can fail before the deadline.
    pub(crate) fn renew_every(&self) -> Duration {
        self.ttl / 4
    }
}

/// The keeper's book of its session: which one is current, the stamp of
/// the send of its last successful create or renew (the deadline's
/// origin), and when the next renew is due.
///
/// It only computes the deadline the keeper publishes; whether a shard may
/// be served is decided by [`gate::Gate`] alone. All methods are
/// synchronous and cheap; none does I/O. Replies may be handled out of
/// order: the deadline only ever moves to a later send, and replies for
/// another session are ignored.
#[derive(Debug)]
pub(crate) struct Lease {
    config: LeaseConfig,
    /// The current session and the stamp of its last successful create or
    /// renew.
    session: Option<(String, Stamp)>,
    /// When the last renew was sent, successful or not (tokio's clock:
    /// it schedules the renews, it decides nothing).
    last_attempt: Option<Instant>,
}

impl Lease {
    /// A lease with no session.
    pub(crate) fn new(config: LeaseConfig) -> Lease {
        Lease {
            config,
            session: None,
            last_attempt: None,
        }
    }

    /// The current session's id.
    pub(crate) fn session(&self) -> Option<&str> {
        self.session.as_ref().map(|(id, _)| id.as_str())
    }

    /// A session create sent at `sent` (the lease clocks) and `at`
    /// (tokio's) succeeded with `id` (a create renews the TTL, as a renew
    /// does). Replaces any earlier session.
    pub(crate) fn session_created(&mut self, id: String, sent: Stamp, at: Instant) {
        self.session = Some((id, sent));
        self.last_attempt = Some(at);
    }

    /// A renew is being sent at `at` (read the clocks *before* sending).
    pub(crate) fn renew_sent(&mut self, at: Instant) {
        self.last_attempt = Some(self.last_attempt.map_or(at, |t| t.max(at)));
    }

    /// When the next renew is due: [`LeaseConfig::renew_every`] after the
    /// last attempt; `None` without a session.
    pub(crate) fn next_renew(&self) -> Option<Instant> {
        self.session.as_ref()?;
        self.last_attempt.map(|t| t + self.config.renew_every())
    }

    /// The renew of session `id` sent at `sent` succeeded. Ignored for
    /// another session; the deadline never moves back.
    pub(crate) fn renewed(&mut self, id: &str, sent: Stamp) {
        if let Some((current, last)) = &mut self.session {
            if current == id && sent.boot > last.boot {
                *last = sent;
            }
        }
    }

    /// The store answered that session `id` does not exist (Consul: 404
    /// on renew): true if it was the current one, which is forgotten
    /// (every shard held under it is lost).
    pub(crate) fn session_gone(&mut self, id: &str) -> bool {
        if self.session() != Some(id) {
            return false;
        }
        self.session = None;
        true
    }

    /// The local deadline, on both lease clocks: the stamp of the last
    /// successful renew's send + [`LeaseConfig::validity`].
    pub(crate) fn deadline(&self) -> Option<Stamp> {
        self.session
            .as_ref()
            .map(|(_, sent)| sent.plus(self.config.validity()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn config() -> LeaseConfig {
        let c = LeaseConfig::new(
            Duration::from_secs(10),
            LeaseConfig::DEFAULT_RHO,
            LeaseConfig::DEFAULT_EPSILON,
        )
        .unwrap();
        assert_eq!(c.validity(), ms(9_400));
        assert_eq!(c.renew_every(), ms(2_500));
        c
    }

    fn stamp(boot_ms: u64) -> Stamp {
        Stamp {
            boot: ms(boot_ms),
            wall: Duration::from_secs(1_700_000_000) + ms(boot_ms),
        }
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
    fn renews_are_due_a_quarter_ttl_after_the_last_attempt() {
        let t0 = Instant::now();
        let mut l = Lease::new(config());
        assert_eq!(l.next_renew(), None);
        l.session_created("s".into(), stamp(0), t0);
        assert_eq!(l.next_renew(), Some(t0 + ms(2_500)));
        // A failed attempt still moves the schedule (no tight retry loop),
        // but not the deadline.
        l.renew_sent(t0 + ms(2_500));
        assert_eq!(l.next_renew(), Some(t0 + ms(5_000)));
        assert_eq!(l.deadline(), Some(stamp(9_400)));
        // Three failed renews in a row still leave time before the
        // deadline.
        l.renew_sent(t0 + ms(5_000));
        l.renew_sent(t0 + ms(7_500));
        assert!(l.next_renew() < Some(t0 + ms(9_400) + ms(2_500)));
    }

    /// The bound the rule rests on: with the local clock slower than the
    /// server's by up to `rho`, the local deadline falls before the
    /// server's earliest invalidation (one TTL after it *received* the
    /// renew, which is no earlier than its send).
    #[test]
    fn the_deadline_falls_before_the_servers_earliest_invalidation_within_rho() {
        let ttl = Duration::from_secs(10);
        for rho in [0.0, 0.01, 0.05] {
            let c = LeaseConfig::new(ttl, rho, ms(500)).unwrap();
            // Local time elapsed until the deadline, seen on a server
            // clock running faster by `rho`: validity / (1 - rho).
            let server_elapsed = c.validity().div_f64(1.0 - rho);
            assert!(server_elapsed < ttl, "rho {rho}: {server_elapsed:?}");
            let at_store = c.validity_at_the_store();
            assert!(
                at_store.abs_diff(server_elapsed) < Duration::from_micros(1),
                "{at_store:?} vs {server_elapsed:?}"
            );
            let mut l = Lease::new(c);
            l.session_created("s".into(), stamp(0), Instant::now());
            assert_eq!(l.deadline(), Some(stamp(0).plus(c.validity())));
        }
    }

    /// An explicit invalidation at store time D (after the last renew was
    /// received) frees the keys at D + lock-delay; this node stops at
    /// most `validity / (1 - rho)` of store time after that renew's send,
    /// so no later than D + `TTL - epsilon / (1 - rho)`. The defaults keep
    /// the lock-delay above that; a shorter one is refused at start.
    #[test]
    fn the_default_lock_delay_covers_the_validity_and_a_shorter_one_is_refused() {
        let s = Strong::new();
        assert_eq!(s.check(), Ok(()));
        let needed = s.lease_config().validity_at_the_store();
        assert!(s.lock_delay >= needed, "{:?} < {needed:?}", s.lock_delay);
        assert_eq!(needed.as_millis(), 9_494);
        assert_eq!(s.failover_bound(), ms(30_250));
        // Scaled alike for a test agent: still safe.
        assert_eq!(s.time_scale(0.05).check(), Ok(()));
        // The review's case: 5 s against a validity of about 9.4 s.
        let err = Strong::new().lock_delay(ms(5_000)).check().unwrap_err();
        assert!(
            err.contains("lock-delay 5s is shorter than the lease validity")
                && err.contains("at least 9.495s"),
            "{err}"
        );
        assert!(Strong::new().lock_delay(ms(9_494)).check().is_err());
        assert_eq!(Strong::new().lock_delay(ms(9_495)).check(), Ok(()));
        // A longer TTL needs a longer lock-delay...
        let long = Strong::new().ttl(Duration::from_secs(30));
        assert!(long.check().unwrap_err().contains("at least 29.495s"));
        assert_eq!(long.lock_delay(Duration::from_secs(30)).check(), Ok(()));
        // ... up to Consul's cap.
        let err = Strong::new()
            .ttl(Duration::from_secs(120))
            .lock_delay(Duration::from_secs(120))
            .check()
            .unwrap_err();
        assert!(err.contains("above Consul's cap of 60s"), "{err}");
    }
}
