//! Every heartbeat: dial what is due (through the owner task), ping every
//! peer, and gossip the membership.
//!
//! Failure detection: a peer that leaves a ping unanswered for
//! `failure_timeout` is closed (and so leaves the membership). A closed
//! connection needs no ping: the peer leaves at once.
//!
//! The task holds only a weak reference to the node and ends with it.

use std::sync::Weak;

use super::Event;
use crate::node::NodeInner;
use crate::wire::{self, Member};

pub(super) async fn run(weak: Weak<NodeInner>) {
    let Some(period) = weak
        .upgrade()
        .and_then(|n| n.cluster.get().map(|c| c.cfg.heartbeat))
    else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The owner dials the seeds itself at start.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(node) = weak.upgrade() else { return };
        let Some(cluster) = node.cluster.get() else {
            return;
        };
        cluster.send(Event::Tick);
        let gossip = wire::Membership {
            members: node
                .membership
                .borrow()
                .iter()
                .map(|(n, i)| Member {
                    node: n.to_owned(),
                    addr: i.addr.clone(),
                    capabilities: i.capabilities.clone(),
                })
                .collect(),
        };
        let timeout = cluster.cfg.failure_timeout;
        for conn in cluster.connections() {
            let _ = conn.send_membership(&gossip);
            tokio::spawn(async move {
                if let Err(e) = conn.ping(timeout).await {
                    tracing::warn!(peer = %conn.peer().node, "no heartbeat answer within {timeout:?} ({e}): closing");
                    conn.close();
                }
            });
        }
    }
}
