//! What a connection's transport asks while it is open, and retiring a
//! connection without failing a call.
//!
//! A transport may attach a [`Lifetime`](crate::transport::Lifetime) to
//! the connections it accepts (TLS does: re-authorization and a maximum
//! lifetime). [`supervise`] carries it out, on a task per connection that
//! ends with it:
//! - every recheck period, the check runs; a refusal is logged, counted
//!   (`mesh_connections_closed_total{reason="denied"}`) and closes the
//!   connection at once: calls in flight on it fail with `NodeDown`, and
//!   the peer's redial meets the same refusal at its handshake;
//! - at the maximum age, the connection is retired ([`retire`]), counted
//!   as `reason="max_lifetime"`.
//!
//! Retiring, in order (this node A, the peer B):
//! 1. A's routing prefers its other connections to B; A sends `Retire`.
//! 2. B marks the connection retired: a dial to A is due, and B's calls
//!    keep using the old connection until the fresh one is up (at most
//!    the handshake timeout twice). Then B seals the old one (no new call
//!    goes out on it) and acknowledges. Frames keep their order, so every
//!    call B sent on it has reached A.
//! 3. A waits until the fresh connection is in its own view (same bound),
//!    seals the old one, waits for the answers to its own calls on it and
//!    answers B's (at most the node's call timeout plus the failure
//!    timeout), then closes it after writing what is queued.
//!
//! No call fails because of it: calls that find the old connection
//! sealed come back unsent and are routed to the fresh one. A peer that
//! does not acknowledge in time (or cannot dial a fresh connection) still
//! gets its answers; new calls then route as for a peer with no
//! connection.

use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;

use super::{Cluster, Event};
use crate::telemetry::CONNECTIONS_CLOSED_TOTAL;
use crate::transport::{Ack, Connection};

/// Carries out `conn`'s lifetime (see the module docs); ends with it.
pub(super) async fn supervise(weak: Weak<Cluster>, conn: Connection) {
    let Some(lifetime) = conn.lifetime().cloned() else {
        return;
    };
    let expiry = lifetime
        .max_age
        .and_then(|age| Instant::now().checked_add(age.saturating_sub(conn.age())));
    let mut recheck = lifetime.recheck.map(|(every, check)| {
        let every = every.max(Duration::from_millis(1));
        let mut tick = tokio::time::interval_at(Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        (tick, check)
    });
    loop {
        let expired = async {
            match expiry {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let rechecked = async {
            match recheck.as_mut() {
                Some((tick, check)) => {
                    tick.tick().await;
                    check.recheck().await
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = conn.closed() => return,
            _ = expired => {
                metrics::counter!(CONNECTIONS_CLOSED_TOTAL, "reason" => "max_lifetime").increment(1);
                tracing::debug!(peer = %conn.peer().node, age = ?conn.age(), "retiring a connection at its maximum lifetime");
                retire(&weak, &conn).await;
                return;
            }
            r = rechecked => {
                if let Err(why) = r {
                    metrics::counter!(CONNECTIONS_CLOSED_TOTAL, "reason" => "denied").increment(1);
                    tracing::warn!(
                        peer = %conn.peer().node,
                        identity = conn.peer().identity.as_deref().unwrap_or(""),
                        from = %conn.peer().remote,
                        "closing a connection: re-authorization refused: {why}"
                    );
                    conn.close();
                    return;
                }
            }
        }
    }
}

/// Steps 1 and 3 of the module docs, on this node's side.
pub(super) async fn retire(weak: &Weak<Cluster>, conn: &Connection) {
    let Some((bound, drain)) = weak.upgrade().map(|c| {
        (
            c.cfg.handshake_timeout * 2,
            c.call_timeout + c.cfg.failure_timeout,
        )
    }) else {
        conn.close();
        return;
    };
    if let Err(e) = conn.retire(bound + Duration::from_secs(1)).await {
        tracing::info!(peer = %conn.peer().node, "the peer did not acknowledge retiring a connection: {e}");
    }
    fresh(weak, conn, bound).await;
    conn.seal();
    let settled = async {
        conn.settled().await;
        conn.answered().await;
    };
    if tokio::time::timeout(drain, settled).await.is_err() {
        tracing::info!(peer = %conn.peer().node, "closing a retired connection with calls still in flight after {drain:?}");
    }
    conn.close_after_queued();
}

/// Step 2 of the module docs: the peer retires `conn`.
pub(super) async fn retired_by_peer(weak: Weak<Cluster>, conn: Connection, ack: Ack) {
    let bound = match weak.upgrade() {
        Some(c) => {
            c.send(Event::Tick); // dial the replacement now
            c.cfg.handshake_timeout * 2
        }
        None => Duration::ZERO,
    };
    fresh(&weak, &conn, bound).await;
    conn.seal();
    ack.send();
}

/// Waits (at most `bound`) until this node's view holds another connection
/// to `conn`'s peer that carries calls.
async fn fresh(weak: &Weak<Cluster>, conn: &Connection, bound: Duration) {
    let node = conn.peer().node.clone();
    let wait = async {
        let mut published = {
            let Some(c) = weak.upgrade() else { return };
            c.published.subscribe()
        };
        loop {
            {
                let Some(c) = weak.upgrade() else { return };
                if has_fresh(&c, &node, conn) || c.is_stopped() {
                    return;
                }
            }
            tokio::select! {
                r = published.changed() => if r.is_err() { return },
                _ = conn.closed() => return,
            }
        }
    };
    let _ = tokio::time::timeout(bound, wait).await;
}

fn has_fresh(cluster: &Cluster, node: &str, old: &Connection) -> bool {
    cluster.view.load().get(node).is_some_and(|conns| {
        conns
            .iter()
            .any(|c| !c.same(old) && !c.is_closed() && !c.is_retiring())
    })
}
