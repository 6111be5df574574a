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
//! The heartbeat is a ractor actor under the cluster's supervisor (see
//! [`super::supervisor`]); it holds only a weak reference to its cluster
//! and ends with it. Each beat re-arms the next one, a heartbeat after it
//! ends (beats never pile up behind a slow one). The pings run on tasks of
//! their own, so a beat never waits for a peer.

use std::sync::Weak;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};

use super::{Cluster, Event};
use crate::wire::{self, Member};

/// The heartbeat actor.
pub(super) struct Heartbeat;

/// What the heartbeat is told.
pub(super) enum Beat {
    /// Time for a beat (it sends it to itself).
    Now,
    /// Fail (a panic), to test the supervision (`Node::crash_worker`,
    /// hidden feature `internals`).
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    Crash,
}

/// Its state, and its arguments: the cluster and the period.
pub(super) struct HeartbeatState {
    pub(super) cluster: Weak<Cluster>,
    pub(super) period: Duration,
}

impl Actor for Heartbeat {
    type Msg = Beat;
    type State = HeartbeatState;
    type Arguments = HeartbeatState;

    async fn pre_start(
        &self,
        myself: ActorRef<Beat>,
        st: HeartbeatState,
    ) -> Result<HeartbeatState, ActorProcessingErr> {
        // The owner dials the seeds itself at start: the first beat is a
        // period away.
        myself.send_after(st.period, || Beat::Now);
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<Beat>,
        beat: Beat,
        st: &mut HeartbeatState,
    ) -> Result<(), ActorProcessingErr> {
        if let Beat::Crash = beat {
            panic!("the heartbeat was told to fail (a test)");
        }
        let Some(cluster) = st.cluster.upgrade() else {
            myself.stop(None);
            return Ok(());
        };
        self::beat(&cluster, &st.cluster);
        myself.send_after(st.period, || Beat::Now);
        Ok(())
    }
}

/// One beat: dial what is due, gossip, ping every peer.
fn beat(cluster: &Cluster, weak: &Weak<Cluster>) {
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
