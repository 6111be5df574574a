//! The cluster's long-lived workers as ractor actors, and their
//! supervision.
//!
//! The tree, one per clustered node (unnamed actors: several nodes share
//! a process without a registry):
//!
//! ```text
//! Supervisor
//! ├── Owner      the peer table (owner.rs): every event, in order
//! └── Heartbeat  pings, gossip, dial ticks (heartbeat.rs)
//! ```
//!
//! Policy, written once here:
//! - **Heartbeat fails** (a panic in a beat): it holds no state, so it is
//!   restarted at once; the failure is logged at error level. A peer that
//!   hung meanwhile is judged at the next beat.
//! - **Owner fails**: the table it owned (which connection belongs to
//!   whom, backoffs) is gone with it, so nothing it tracked can be
//!   trusted: every connection of the cluster is closed (peers see this
//!   node leave and calls in flight fail with `NodeDown`, as for a
//!   dropped link), a fresh owner starts from the configuration (seeds,
//!   the discovery's last view) and redials. Logged at error level.
//! - A worker that **stops** (its cluster is gone or stopped) is not
//!   restarted.
//! - [`Cluster::stop`] stops the supervisor, which ends both workers at
//!   once (ractor kills a stopped supervisor's children: a beat or an
//!   event in progress is cut at its next await; the owner applies an
//!   event without awaiting, so no event is half applied). Every
//!   connection is closed by `stop` itself.
//!
//! Cost: the call path never messages these actors. A call reads the
//! view the owner publishes (an `ArcSwap` load), so ractor is off the
//! call path (the local benchmark's call throughput is unchanged);
//! each membership event costs the owner a boxed message and a select
//! over its ports.

use std::sync::{Arc, Weak};

use ractor::{Actor, ActorProcessingErr, ActorRef, SupervisionEvent};

use super::heartbeat::{Heartbeat, HeartbeatState};
use super::owner::{Owner, OwnerState};
use super::{Cluster, Event, View};
use crate::transport::Inbound;

/// The supervisor actor.
pub(super) struct Supervisor;

/// What the supervisor is told.
pub(super) enum SupervisorMsg {
    /// The cluster started: start the heartbeat.
    Start,
}

/// The supervisor's state, and its arguments.
pub(super) struct SupervisorState {
    pub(super) cluster: Weak<Cluster>,
    /// What a restarted owner serves peers' frames with.
    pub(super) inbound: Arc<dyn Inbound>,
    pub(super) heartbeat: Option<ActorRef<super::heartbeat::Beat>>,
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorState;

    async fn pre_start(
        &self,
        _myself: ActorRef<SupervisorMsg>,
        st: SupervisorState,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(st)
    }

    async fn handle(
        &self,
        myself: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Start => start_heartbeat(&myself, st).await,
        }
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<SupervisorMsg>,
        event: SupervisionEvent,
        st: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        let SupervisionEvent::ActorFailed(who, err) = event else {
            // Started, or stopped because the cluster is gone or stopped.
            return Ok(());
        };
        let Some(cluster) = st.cluster.upgrade().filter(|c| !c.is_stopped()) else {
            myself.stop(None);
            return Ok(());
        };
        if st
            .heartbeat
            .as_ref()
            .is_some_and(|h| h.get_id() == who.get_id())
        {
            tracing::error!(node = %cluster.node(), "the heartbeat failed ({err}): restarting it");
            return start_heartbeat(&myself, st).await;
        }
        tracing::error!(
            node = %cluster.node(),
            "the peer-table owner failed ({err}): closing every connection and starting a fresh owner"
        );
        // What the failed owner tracked is lost: close it all (peers see
        // this node leave, and redial).
        let view = cluster.view.swap(Arc::new(View::new()));
        for c in view.values().flatten() {
            c.close();
        }
        let (owner, _) = Actor::spawn_linked(
            None,
            Owner,
            OwnerState {
                cluster: st.cluster.clone(),
                table: cluster.fresh_table(),
                inbound: st.inbound.clone(),
            },
            myself.get_cell(),
        )
        .await?;
        cluster.owner.store(Arc::new(owner));
        cluster.send(Event::Tick);
        cluster.rediscover.notify_one();
        Ok(())
    }
}

/// Starts (or restarts) the heartbeat under `myself`.
async fn start_heartbeat(
    myself: &ActorRef<SupervisorMsg>,
    st: &mut SupervisorState,
) -> Result<(), ActorProcessingErr> {
    let Some(period) = st.cluster.upgrade().map(|c| c.cfg.heartbeat) else {
        return Ok(());
    };
    let (heartbeat, _) = Actor::spawn_linked(
        None,
        Heartbeat,
        HeartbeatState {
            cluster: st.cluster.clone(),
            period,
        },
        myself.get_cell(),
    )
    .await?;
    st.heartbeat = Some(heartbeat);
    Ok(())
}
