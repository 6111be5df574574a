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
//!    sent has been answered (at most the shutdown timeout).
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
    let Some(cluster) = node.cluster.get() else {
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
    if node.update_membership(|m| m.remove(&node.id)) {
        tracing::info!(node = %node.id, acked, told, "left the routing: draining");
    }
    (acked, told)
}

/// Step 3: waits until every activation has ended and every call peers
/// sent has been answered, at most `timeout`. Returns whether it did.
pub(crate) async fn drain(node: &Arc<NodeInner>, timeout: Duration) -> bool {
    let done = async {
        node.shared
            .drained(|| node.actors.iter().all(|(_, _, a)| a.count() == 0))
            .await;
        if let Some(cluster) = node.cluster.get() {
            let view = cluster.view.load_full();
            for conn in view.values().flatten() {
                conn.answered().await;
            }
        }
    };
    tokio::time::timeout(timeout, done).await.is_ok()
}
