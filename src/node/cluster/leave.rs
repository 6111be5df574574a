//! Leaving the cluster without losing a call.
//!
//! [`leave`] runs first in [`Node::shutdown`](crate::Node::shutdown), in
//! this order:
//! 1. The node stops dialing, and sends `Leave` on **every** connection
//!    and waits for each acknowledgement (at most the failure timeout).
//!    A peer acknowledges once its routing no longer names this node, so
//!    from then on it routes nothing new here; and since frames keep their
//!    order on a connection, every call it routed here before has arrived.
//!    A peer marks this run of the node (its incarnation) as gone: neither
//!    a new connection nor its discovery makes it a member again; the
//!    node's next run is a member as usual.
//! 2. The node computes its routing without itself. Its activations drain
//!    (they finish what is queued and run `on_deactivate`); calls that
//!    still reach it, from a peer that did not acknowledge in time or from
//!    its own callers, are forwarded to their new owners, once, even if
//!    they were forwarded already.
//! 3. It waits until its activations have ended and every call its peers
//!    sent has been answered (at most the shutdown timeout). In strong
//!    mode it stops waiting once the lease has lapsed (the store is
//!    unreachable): nothing it waits for can happen without the lease,
//!    and the shutdown ends the activations left without their hooks.
//!
//! Then the shutdown refuses new calls, leaves the discovery (Consul:
//! deregisters) and closes the connections.
//!
//! Cancel: dropping the shutdown future part-way leaves the node in the
//! leaving state: it routes around itself and dials nothing, but its
//! connections stay open until `shutdown` is called again or the last
//! handle is dropped.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::Event;
use crate::node::NodeInner;

/// Steps 1 and 2 of the module docs; returns how many peers acknowledged
/// and how many connections were told.
pub(crate) async fn announce(node: &Arc<NodeInner>) -> (usize, usize) {
    let Some(cluster) = node.cluster.as_deref() else {
        return (0, 0);
    };
    if cluster.leaving.swap(true, Ordering::SeqCst) {
        return (0, 0); // already done
    }
    cluster.send(Event::Leaving);
    let timeout = cluster.cfg.failure_timeout;
    let mut acks = JoinSet::new();
    let view = cluster.view.load_full();
    for conn in view.values().flatten().filter(|c| !c.is_closed()) {
        let conn = conn.clone();
        acks.spawn(async move { conn.leave(timeout).await });
    }
    let told = acks.len();
    let mut acked = 0;
    while let Some(r) = acks.join_next().await {
        match r {
            Ok(Ok(())) => acked += 1,
            Ok(Err(e)) => {
                tracing::warn!(node = %node.id, "a peer did not acknowledge the leave: {e}")
            }
            Err(_) => {}
        }
    }
    if node.members.update(|m| m.remove(&node.id)) {
        tracing::info!(node = %node.id, acked, told, "left the routing: draining");
    }
    (acked, told)
}

/// Step 3: waits until every activation has ended and every call peers
/// sent has been answered, at most `timeout`. On a timeout, returns what
/// was still pending, in words (for the log line and
/// [`crate::Error::ShutdownTimeout`]).
pub(crate) async fn drain(node: &Arc<NodeInner>, timeout: Duration) -> Result<(), String> {
    let done = async {
        node.shared.drained(|| node.catalog.is_idle()).await;
        if let Some(cluster) = node.cluster.as_deref() {
            let view = cluster.view.load_full();
            for conn in view.values().flatten() {
                conn.answered().await;
            }
        }
    };
    // Strong mode: an activation ends only under a valid lease (its hook,
    // its queued calls), so once the lease has lapsed (the store is
    // unreachable: stopped with the cluster, say) waiting serves nothing
    // until the shutdown timeout. The drain ends then; the shutdown that
    // follows ends those activations without their hooks, as a lost lease
    // does (issue 24, point 4). Lapsed means gone for a whole validity
    // span (`Gate::lapsed`), not a renewal that comes late under load: a
    // drain that gave up on the first late renewal dropped the calls it
    // held (seen in CI: a strong rolling restart on PostgreSQL failed 56
    // calls with "node is down or unreachable").
    let lapsed = async {
        let Some(gate) = node.gate.as_deref() else {
            return std::future::pending().await;
        };
        loop {
            let changed = gate.changed();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if gate.lapsed() {
                return;
            }
            // A deadline passes without a notification: look again soon.
            let _ = tokio::time::timeout(LAPSE_RECHECK, changed).await;
        }
    };
    let outcome = tokio::time::timeout(timeout, async {
        tokio::select! {
            _ = done => true,
            _ = lapsed => false,
        }
    })
    .await;
    match outcome {
        Ok(true) => Ok(()),
        Ok(false) => {
            tracing::warn!(
                node = %node.id,
                "strong mode: the lease lapsed while leaving (is the store reachable?): {}; they end without their hooks",
                pending(node)
            );
            Ok(())
        }
        Err(_) => Err(pending(node)),
    }
}

/// How often a leave drain in strong mode looks whether the lease lapsed.
const LAPSE_RECHECK: Duration = Duration::from_millis(50);

/// What the leave drain still waits for, in words: the activations not
/// ended and the calls of each peer not answered.
pub(crate) fn pending(node: &Arc<NodeInner>) -> String {
    let activations = node.catalog.count();
    let mut calls = Vec::new();
    if let Some(cluster) = node.cluster.as_deref() {
        let view = cluster.view.load_full();
        for conn in view.values().flatten() {
            let n = conn.inbound_in_flight();
            if n > 0 && !conn.is_closed() {
                calls.push(format!("{n} from {}", conn.peer().node));
            }
        }
    }
    let calls = if calls.is_empty() {
        "none".to_owned()
    } else {
        calls.join(", ")
    };
    format!(
        "the leave drain: {activations} activations not ended, peers' calls not answered: {calls}"
    )
}
