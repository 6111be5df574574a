//! The keeper: the tasks of a strong node that talk to the lease store.
//! They keep the session alive, lock the shards the routing table gives
//! this node, hand off the ones it no longer owns, and publish all of it to
//! the [`Gate`] the activations read.
//!
//! Two tasks share the session's book ([`Lease`], under a mutex never held
//! across an await; the gate is written under it too, so a reply for a
//! dead session can never publish a token):
//!
//! - **The renew task** renews every TTL / 4, the lease clocks
//!   ([`super::clock`]) read *before* sending. A success moves the deadline (from the send time);
//!   `SessionGone` clears every shard at once (the activations end without
//!   their hooks) and wakes the main task to create a new session; any
//!   other failure changes nothing, so the deadline lapses by itself. It
//!   runs apart so that a long reconcile (thousands of shards to lock on a
//!   slow store) never delays a renew.
//! - **The main task**, per turn:
//!   1. **Session.** Without one, create it (backing off while the store
//!      fails). The create's send time starts the deadline.
//!   2. **Reconcile** with the routing table (and the leaving flag):
//!      - a shard this node should own and does not hold: lock it, in
//!        batches; refused keys (held by the previous owner, or under
//!        lock-delay) are tried again every `retry`;
//!      - a shard it holds and should not: mark it draining (running
//!        activations finish and run their hooks, none starts; a routing
//!        change marks it already, [`Gate::hand_off`]), and once its live
//!        count is zero clear it, then unlock it, in batches. Drained
//!        shards are unlocked first, and again between lock batches: a
//!        pass that locks many shards (a crashed node's, refused until its
//!        session expires) never holds up a handoff.
//!   3. **Wait** for a membership change, a live count reaching zero, a
//!      lost session, the retry timer (only while something is pending),
//!      or a stop.
//!
//! Stop: [`Stop::Leave`] unlocks what is held and destroys the session
//! (called once the node's activations have ended; renews go on until
//! then); [`Stop::Halt`] (a severed node) leaves everything behind, as a
//! crash would.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::gate::{Gate, DRAINING};
use super::store::{LeaseStore, LeaseStoreError};
use super::{Lease, Strong};
use crate::node::NodeInner;
use crate::ring::SHARDS;

/// How the keeper should end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    /// Keep running.
    Run,
    /// Release everything held, destroy the session, end.
    Leave,
    /// End at once, releasing nothing.
    Halt,
}

/// A running keeper.
#[derive(Debug)]
pub(crate) struct Keeper {
    stop: watch::Sender<Stop>,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Keeper {
    /// Starts the keeper of `node`.
    pub(crate) fn start(
        node: &Arc<NodeInner>,
        gate: Arc<Gate>,
        store: Arc<dyn LeaseStore>,
        strong: Strong,
        session_name: String,
        lock_value: Vec<u8>,
    ) -> Keeper {
        let (stop, stop_rx) = watch::channel(Stop::Run);
        let shared = Arc::new(Shared {
            lease: Mutex::new(Lease::new(strong.lease_config())),
            gate,
            store,
            lost: Notify::new(),
            created: Notify::new(),
            failing: Mutex::new(None),
        });
        let (renewing, renew_stop) = watch::channel(false);
        let k = Run {
            shared: shared.clone(),
            strong,
            session_name,
            lock_value,
            node: Arc::downgrade(node),
            membership: node.membership_changes(),
            stop: stop_rx,
            renewing,
            pending_unlock: Vec::new(),
        };
        let renew = tokio::spawn(renew_loop(shared, renew_stop));
        let main = tokio::spawn(k.run());
        Keeper {
            stop,
            tasks: Mutex::new(vec![main, renew]),
        }
    }

    /// Releases every lock, destroys the session, and waits for the end
    /// (bounded by `limit`).
    pub(crate) async fn leave(&self, limit: Duration) {
        self.stop.send_replace(Stop::Leave);
        let tasks = std::mem::take(&mut *lock(&self.tasks));
        let all = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("strong mode: releasing the leases took longer than {limit:?}");
        }
    }

    /// Ends the keeper at once, leaving the session to expire.
    pub(crate) fn halt(&self) {
        self.stop.send_replace(Stop::Halt);
        for t in std::mem::take(&mut *lock(&self.tasks)) {
            t.abort();
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.halt();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

type Key = (u64, u16);

/// What the two tasks share.
struct Shared {
    /// The session's book; the gate is written while it is held.
    lease: Mutex<Lease>,
    gate: Arc<Gate>,
    store: Arc<dyn LeaseStore>,
    /// The renew task found the session gone.
    lost: Notify,
    /// The main task created a session.
    created: Notify,
    /// The last failure logged (logged once per change).
    failing: Mutex<Option<String>>,
}

impl Shared {
    fn log_failure(&self, what: &str, e: &LeaseStoreError) {
        let msg = format!("{what}: {e}");
        let mut failing = lock(&self.failing);
        if failing.as_deref() != Some(&msg) {
            tracing::warn!("strong mode: {msg}");
            *failing = Some(msg);
        }
    }

    fn session(&self) -> Option<String> {
        lock(&self.lease).session().map(str::to_owned)
    }
}

/// The renew task. See the [module docs](self).
async fn renew_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let created = shared.created.notified();
        tokio::pin!(created);
        created.as_mut().enable();
        let (id, due) = {
            let lease = lock(&shared.lease);
            (lease.session().map(str::to_owned), lease.next_renew())
        };
        let (Some(id), Some(due)) = (id, due) else {
            tokio::select! {
                _ = created => {}
                _ = stop.changed() => {}
            }
            continue;
        };
        if due > Instant::now() {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = created => continue,
                _ = stop.changed() => continue,
            }
        }
        // Both clocks read *before* sending: the deadline counts from here.
        let sent = shared.gate.now();
        lock(&shared.lease).renew_sent(Instant::now());
        match shared.store.renew(&id).await {
            Ok(()) => {
                *lock(&shared.failing) = None;
                let mut lease = lock(&shared.lease);
                lease.renewed(&id, sent);
                if lease.session() == Some(id.as_str()) {
                    shared.gate.set_deadline(lease.deadline());
                }
            }
            Err(LeaseStoreError::SessionGone) => {
                let mut lease = lock(&shared.lease);
                if lease.session() != Some(id.as_str()) {
                    continue; // an older session, already replaced
                }
                lease.session_gone(&id);
                shared.gate.set_session(None);
                let lost = shared.gate.clear();
                drop(lease);
                tracing::warn!(
                    session = %id,
                    shards = lost,
                    "strong mode: the lease session is gone; every shard is lost and its activations end"
                );
                shared.lost.notify_one();
            }
            Err(e) => shared.log_failure("cannot renew the lease session", &e),
        }
    }
}

/// The main task.
struct Run {
    shared: Arc<Shared>,
    strong: Strong,
    session_name: String,
    lock_value: Vec<u8>,
    node: Weak<NodeInner>,
    membership: watch::Receiver<crate::Membership>,
    stop: watch::Receiver<Stop>,
    /// Tells the renew task to end (after the leases are released).
    renewing: watch::Sender<bool>,
    /// Keys cleared locally whose unlock the store has not confirmed.
    pending_unlock: Vec<String>,
}

impl Run {
    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            if *self.stop.borrow() != Stop::Run {
                break;
            }
            if self.shared.session().is_none() {
                let (sent, at) = (self.shared.gate.now(), Instant::now());
                let created = self
                    .shared
                    .store
                    .create_session(&self.session_name, self.strong.ttl, self.strong.lock_delay)
                    .await;
                match created {
                    Ok(id) => {
                        failures = 0;
                        *lock(&self.shared.failing) = None;
                        tracing::info!(session = %id, "strong mode: lease session created");
                        self.pending_unlock.clear();
                        {
                            let mut lease = lock(&self.shared.lease);
                            lease.session_created(id.clone(), sent, at);
                            self.shared.gate.set_session(Some(Arc::new(id)));
                            self.shared.gate.set_deadline(lease.deadline());
                        }
                        self.shared.created.notify_one();
                    }
                    Err(e) => {
                        self.shared
                            .log_failure("cannot create the lease session", &e);
                        failures += 1;
                        let wait = crate::util::backoff(
                            self.strong.retry,
                            failures,
                            self.strong.ttl.mul_f64(self.strong.time_scale),
                        );
                        if self.wait(Some(Instant::now() + wait)).await {
                            break;
                        }
                        continue;
                    }
                }
            }
            let pending = self.reconcile().await;
            self.shared.gate.publish();
            let next = pending.then(|| Instant::now() + self.strong.retry);
            if self.wait(next).await {
                break;
            }
        }
        if *self.stop.borrow() == Stop::Leave {
            self.release_all().await;
        }
        self.renewing.send_replace(true);
    }

    /// Waits for `until`, a membership change, a drained shard, a lost
    /// session or a stop; true on a stop.
    async fn wait(&mut self, until: Option<Instant>) -> bool {
        let sleep = async {
            match until {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = self.membership.changed() => {}
            _ = self.shared.gate.drained.notified() => {}
            _ = self.shared.lost.notified() => {}
            _ = self.stop.changed() => {}
        }
        *self.stop.borrow() != Stop::Run
    }

    /// One pass over every shard; true if something is left to retry.
    async fn reconcile(&mut self) -> bool {
        let Some(node) = self.node.upgrade() else {
            return false;
        };
        let leaving = node.is_leaving();
        let routing = node.routing_table();
        drop(node);
        let gate = self.shared.gate.clone();
        let mut to_lock: Vec<Key> = Vec::new();
        for cap in gate.caps() {
            let table = routing.actor(cap.key, cap.cap);
            for s in 0..SHARDS as u16 {
                let wanted = !leaving && table.is_some_and(|t| t.is_local(s));
                let st = cap.state(s);
                if wanted {
                    if st == 0 {
                        to_lock.push((cap.key, s));
                    } else if st & DRAINING != 0 {
                        // Ours again before it was released.
                        gate.set(cap.key, s, st & !DRAINING);
                    }
                } else if st != 0 && st & DRAINING == 0 {
                    gate.set(cap.key, s, st | DRAINING);
                }
            }
        }
        let Some(session) = self.shared.session() else {
            return true;
        };
        // Unlock first: a peer may be waiting for these.
        let mut pending = self.release_drained(&session).await;
        for (n, batch) in to_lock.chunks(self.strong.batch).enumerate() {
            // Between batches too: locking thousands of shards a crashed
            // node still holds (refused until its session expires) takes
            // many round trips, and a shard handed off meanwhile must not
            // wait for the end of the pass (issue 24, point 8).
            if n > 0 && self.release_drained(&session).await {
                pending = true;
            }
            let keys: Vec<String> = batch
                .iter()
                .filter_map(|(key, s)| gate.lock_key_of(*key, *s))
                .collect();
            match self
                .shared
                .store
                .lock(&session, &keys, &self.lock_value)
                .await
            {
                Ok(tokens) => {
                    let lease = lock(&self.shared.lease);
                    let current = lease.session() == Some(session.as_str());
                    for ((key, s), token) in batch.iter().zip(tokens) {
                        match token {
                            // Published under the lease's lock: a token of
                            // a session lost meanwhile is refused here.
                            Some(t) if current => {
                                gate.set(*key, *s, t & !DRAINING);
                            }
                            _ => pending = true,
                        }
                    }
                }
                Err(e) => {
                    self.shared.log_failure("cannot lock shards", &e);
                    pending = true;
                }
            }
        }
        pending
    }

    /// Clears every draining shard whose activations have all ended and
    /// unlocks it (with the keys an earlier unlock failed on), in
    /// batches; true if an unlock failed (it is tried again).
    ///
    /// Safe by the gate's order: the shard was marked draining before its
    /// live count read zero here, so an activation counted after that sees
    /// it draining (or cleared) and does not start.
    async fn release_drained(&mut self, session: &str) -> bool {
        let gate = self.shared.gate.clone();
        {
            let _lease = lock(&self.shared.lease);
            for cap in gate.caps() {
                for s in 0..SHARDS as u16 {
                    if cap.state(s) & DRAINING != 0 && cap.live(s) == 0 {
                        gate.set(cap.key, s, 0);
                        self.pending_unlock.push(gate.lock_key(&cap.name, s));
                    }
                }
            }
        }
        if self.pending_unlock.is_empty() {
            return false;
        }
        let mut failed = false;
        let keys = std::mem::take(&mut self.pending_unlock);
        for batch in keys.chunks(self.strong.batch) {
            if let Err(e) = self.shared.store.unlock(session, batch).await {
                self.shared.log_failure("cannot release shards", &e);
                self.pending_unlock.extend_from_slice(batch);
                failed = true;
            }
        }
        failed
    }

    /// Leaving: unlock everything held and destroy the session.
    async fn release_all(&mut self) {
        let Some(session) = self.shared.session() else {
            return;
        };
        let gate = self.shared.gate.clone();
        let mut keys = std::mem::take(&mut self.pending_unlock);
        {
            let _lease = lock(&self.shared.lease);
            for cap in gate.caps() {
                for s in 0..SHARDS as u16 {
                    if cap.state(s) != 0 {
                        gate.set(cap.key, s, 0);
                        keys.push(gate.lock_key(&cap.name, s));
                    }
                }
            }
        }
        for batch in keys.chunks(self.strong.batch) {
            if let Err(e) = self.shared.store.unlock(&session, batch).await {
                self.shared
                    .log_failure("cannot release shards while leaving", &e);
            }
        }
        // Destroying the session releases anything an unlock missed.
        if let Err(e) = self.shared.store.destroy(&session).await {
            self.shared
                .log_failure("cannot destroy the lease session", &e);
        }
        gate.set_session(None);
        gate.set_deadline(None);
    }
}
