//! Every heartbeat: dial what is due (through the owner task), ping every
//! peer, and gossip the membership.
//!
//! Failure detection: a peer that leaves a ping unanswered for
//! `failure_timeout` is closed (and so leaves the membership). Pings go
//! out every heartbeat, so a peer that hangs is dropped within
//! `failure_timeout` plus one heartbeat (plus the scheduling delay of a
//! loaded machine). A closed connection needs no ping: the peer leaves at
//! once. A failed ping closes every connection to that peer (its spares
//! hang too). A ping whose timeout fired far past its time (more than a whole
//! failure timeout late) says this process was paused, not the peer: it
//! is not held against the peer, so a resumed node does not drop all its
//! peers at once.
//!
//! The task holds only a weak reference to its cluster and ends with it.

use std::sync::Weak;

use super::{Cluster, Event};
use crate::wire::{self, Member};

pub(super) async fn run(weak: Weak<Cluster>) {
    let Some(period) = weak.upgrade().map(|c| c.cfg.heartbeat) else {
        return;
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The owner dials the seeds itself at start.
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(cluster) = weak.upgrade() else {
            return;
        };
        cluster.send(Event::Tick);
        let gossip = wire::MembershipFrame {
            members: cluster
                .members
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
            let weak = weak.clone();
            tokio::spawn(async move {
                let sent = tokio::time::Instant::now();
                if let Err(e) = conn.ping(timeout).await {
                    // A timeout that fired far past its time means this
                    // process was paused (SIGSTOP, a VM pause), not that
                    // the peer failed: judge it on the next ping instead
                    // of dropping every peer at once on resume.
                    let late = sent.elapsed().saturating_sub(timeout);
                    if matches!(e, crate::Error::Timeout { .. }) && late > timeout {
                        tracing::info!(peer = %conn.peer().node, ?late, "a ping timed out late: this process was paused; not judging the peer");
                        return;
                    }
                    let peer = &conn.peer().node;
                    tracing::warn!(%peer, "no heartbeat answer within {timeout:?} ({e}): closing its connections");
                    conn.close();
                    // Its other connections hang too: a spare left open
                    // would keep it a member until pinged in turn.
                    if let Some(cluster) = weak.upgrade() {
                        cluster.close_peer(peer);
                    }
                }
            });
        }
    }
}
