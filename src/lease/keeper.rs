//! The keeper: the one task of a strong node that talks to the lease
//! store. It keeps the session alive, locks the shards the routing table
//! gives this node, hands off the ones it no longer owns, and publishes
//! all of it to the [`Gate`] the activations read.
//!
//! Per turn, in this order:
//!
//! 1. **Session.** Without one, create it (backing off while the store
//!    fails). The create's send time starts the deadline.
//! 2. **Renew** when due (every TTL / 4), the clock read *before* sending.
//!    A success moves the deadline (from the send time); `SessionGone`
//!    clears every shard at once (the activations end without their
//!    hooks) and the next turn creates a new session; any other failure
//!    changes nothing, so the deadline lapses by itself.
//! 3. **Reconcile** with the routing table (and the leaving flag):
//!    - a shard this node should own and does not hold: lock it, in
//!      batches; refused keys (held by the previous owner, or under
//!      lock-delay) are tried again every `retry`;
//!    - a shard it holds and should not: mark it draining (running
//!      activations finish and run their hooks, none starts), and once
//!      its live count is zero clear it, then unlock it, in batches.
//! 4. **Wait** for the next renew, a membership change, a live count
//!    reaching zero, the retry timer (only while something is pending),
//!    or a stop.
//!
//! Stop: [`Stop::Leave`] unlocks what is held and destroys the session
//! (called once the node's activations have ended); [`Stop::Halt`] (a
//! severed node) leaves everything behind, as a crash would.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::gate::{Gate, DRAINING};
use super::store::{LeaseStore, LeaseStoreError};
use super::{FencingToken, Lease, Strong};
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
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
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
        let k = Run {
            lease: Lease::new(strong.lease_config()),
            gate,
            store,
            strong,
            session_name,
            lock_value,
            node: Arc::downgrade(node),
            membership: node.membership_changes(),
            stop: stop_rx,
            pending_unlock: Vec::new(),
            failing: None,
        };
        let task = tokio::spawn(k.run());
        Keeper {
            stop,
            task: std::sync::Mutex::new(Some(task)),
        }
    }

    /// Releases every lock, destroys the session, and waits for the end
    /// (bounded by `limit`).
    pub(crate) async fn leave(&self, limit: Duration) {
        self.stop.send_replace(Stop::Leave);
        let task = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(t) = task {
            if tokio::time::timeout(limit, t).await.is_err() {
                tracing::warn!("strong mode: releasing the leases took longer than {limit:?}");
            }
        }
    }

    /// Ends the keeper at once, leaving the session to expire.
    pub(crate) fn halt(&self) {
        self.stop.send_replace(Stop::Halt);
        if let Some(t) = self
            .task
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
        {
            t.abort();
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        self.halt();
    }
}

type Key = (u64, u16);

struct Run {
    lease: Lease<Key>,
    gate: Arc<Gate>,
    store: Arc<dyn LeaseStore>,
    strong: Strong,
    session_name: String,
    lock_value: Vec<u8>,
    node: Weak<NodeInner>,
    membership: watch::Receiver<crate::Membership>,
    stop: watch::Receiver<Stop>,
    /// Keys cleared locally whose unlock the store has not confirmed.
    pending_unlock: Vec<String>,
    /// The last failure logged (logged once per change).
    failing: Option<String>,
}

impl Run {
    fn log_failure(&mut self, what: &str, e: &LeaseStoreError) {
        let msg = format!("{what}: {e}");
        if self.failing.as_deref() != Some(&msg) {
            tracing::warn!("strong mode: {msg}");
            self.failing = Some(msg);
        }
    }

    async fn run(mut self) {
        let mut failures = 0u32;
        loop {
            if *self.stop.borrow() != Stop::Run {
                break;
            }
            if self.lease.session().is_none() {
                let sent = Instant::now();
                let created = self
                    .store
                    .create_session(&self.session_name, self.strong.ttl, self.strong.lock_delay)
                    .await;
                match created {
                    Ok(id) => {
                        failures = 0;
                        self.failing = None;
                        tracing::info!(session = %id, "strong mode: lease session created");
                        self.lease.session_created(id.clone(), sent);
                        self.gate.set_session(Some(Arc::new(id)));
                        self.gate.set_deadline(self.lease.deadline());
                    }
                    Err(e) => {
                        self.log_failure("cannot create the lease session", &e);
                        failures += 1;
                        let wait = crate::discovery::consul::backoff(
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
            if self.lease.next_renew().is_some_and(|t| t <= Instant::now()) {
                self.renew().await;
                if self.lease.session().is_none() {
                    continue;
                }
            }
            let pending = self.reconcile().await;
            let mut next = self.lease.next_renew();
            if pending {
                let retry = Instant::now() + self.strong.retry;
                next = Some(next.map_or(retry, |n| n.min(retry)));
            }
            if self.wait(next).await {
                break;
            }
        }
        if *self.stop.borrow() == Stop::Leave {
            self.release_all().await;
        }
    }

    /// Waits for `until`, a membership change, a drained shard or a stop;
    /// true on a stop.
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
            _ = self.gate.drained.notified() => {}
            _ = self.stop.changed() => {}
        }
        *self.stop.borrow() != Stop::Run
    }

    async fn renew(&mut self) {
        let Some(id) = self.lease.session().map(str::to_owned) else {
            return;
        };
        let sent = Instant::now();
        self.lease.renew_sent(sent);
        match self.store.renew(&id).await {
            Ok(()) => {
                self.failing = None;
                self.lease.renewed(&id, sent);
                self.gate.set_deadline(self.lease.deadline());
            }
            Err(LeaseStoreError::SessionGone) => {
                let lost = self.lease.session_gone(&id);
                tracing::warn!(
                    session = %id,
                    shards = lost.len(),
                    "strong mode: the lease session is gone; every shard is lost and its activations end"
                );
                self.gate.set_session(None);
                self.gate.clear();
                self.pending_unlock.clear();
            }
            Err(e) => self.log_failure("cannot renew the lease session", &e),
        }
    }

    /// One pass over every shard; true if something is left to retry.
    async fn reconcile(&mut self) -> bool {
        let Some(node) = self.node.upgrade() else {
            return false;
        };
        let leaving = node.is_leaving();
        let routing = node.routing_table();
        drop(node);
        let mut to_lock: Vec<Key> = Vec::new();
        let mut to_unlock: Vec<Key> = Vec::new();
        for cap in self.gate.caps() {
            let table = routing.actor(cap.key, cap.cap);
            for s in 0..SHARDS as u16 {
                let wanted = !leaving && table.is_some_and(|t| t.is_local(s));
                let st = cap.state(s);
                if wanted {
                    if st == 0 {
                        to_lock.push((cap.key, s));
                    } else if st & DRAINING != 0 {
                        // Ours again before it was released.
                        self.gate.set(cap.key, s, st & !DRAINING);
                    }
                } else if st != 0 {
                    let live = if st & DRAINING == 0 {
                        self.gate.set(cap.key, s, st | DRAINING)
                    } else {
                        cap.live(s)
                    };
                    if live == 0 {
                        to_unlock.push((cap.key, s));
                    }
                }
            }
        }
        let Some(session) = self.lease.session().map(str::to_owned) else {
            return true;
        };
        // Unlock first: a peer may be waiting for these.
        for (key, s) in &to_unlock {
            self.gate.set(*key, *s, 0);
            self.lease.released(&(*key, *s));
            let name = self.cap_name(*key);
            self.pending_unlock.push(self.gate.lock_key(&name, *s));
        }
        let mut pending = false;
        if !self.pending_unlock.is_empty() {
            let keys = std::mem::take(&mut self.pending_unlock);
            for batch in keys.chunks(self.strong.batch) {
                if let Err(e) = self.store.unlock(&session, batch).await {
                    self.log_failure("cannot release shards", &e);
                    self.pending_unlock.extend_from_slice(batch);
                    pending = true;
                }
            }
        }
        for batch in to_lock.chunks(self.strong.batch) {
            let keys: Vec<(String, Vec<u8>)> = batch
                .iter()
                .map(|(key, s)| {
                    (
                        self.gate.lock_key(&self.cap_name(*key), *s),
                        self.lock_value.clone(),
                    )
                })
                .collect();
            match self.store.lock(&session, &keys).await {
                Ok(tokens) => {
                    for ((key, s), token) in batch.iter().zip(tokens) {
                        match token {
                            Some(t)
                                if self.lease.acquired(&session, (*key, *s), FencingToken(t)) =>
                            {
                                self.gate.set(*key, *s, t & !DRAINING);
                            }
                            _ => pending = true,
                        }
                    }
                }
                Err(e) => {
                    self.log_failure("cannot lock shards", &e);
                    pending = true;
                }
            }
        }
        pending
    }

    fn cap_name(&self, key: u64) -> String {
        self.gate
            .caps()
            .iter()
            .find(|c| c.key == key)
            .map(|c| c.name.clone())
            .unwrap_or_default()
    }

    /// Leaving: unlock everything held and destroy the session.
    async fn release_all(&mut self) {
        let Some(session) = self.lease.session().map(str::to_owned) else {
            return;
        };
        let mut keys = std::mem::take(&mut self.pending_unlock);
        for cap in self.gate.caps() {
            for s in 0..SHARDS as u16 {
                if cap.state(s) != 0 {
                    self.gate.set(cap.key, s, 0);
                    keys.push(self.gate.lock_key(&cap.name, s));
                }
            }
        }
        for batch in keys.chunks(self.strong.batch) {
            if let Err(e) = self.store.unlock(&session, batch).await {
                self.log_failure("cannot release shards while leaving", &e);
            }
        }
        // Destroying the session releases anything an unlock missed.
        if let Err(e) = self.store.destroy(&session).await {
            self.log_failure("cannot destroy the lease session", &e);
        }
        self.gate.set_session(None);
        self.gate.set_deadline(None);
    }
}
