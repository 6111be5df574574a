//! The health worker: a ractor actor that keeps the node's TTL check
//! passing, re-registers when the agent forgot the node, and backs off
//! when the agent fails.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use serde_json::Value;

use super::api::{segment, Api, ApiError};
use crate::util::backoff;

/// What the worker is told.
#[derive(Debug)]
pub(crate) enum HealthMsg {
    /// Time to pass the check (sent to itself).
    Beat,
    /// Stop passing the check (it then expires), or start again.
    Pause(bool),
}

/// The worker's state, and its arguments.
#[derive(Debug)]
pub(crate) struct HealthState {
    pub(crate) api: Api,
    pub(crate) node: String,
    pub(crate) check_id: String,
    /// The registration body, sent again when the agent forgot us.
    pub(crate) registration: Value,
    /// Mesh mode: the per-node registration as last accepted, sent again
    /// after `registration` when the agent forgot us.
    pub(crate) also: Option<Arc<Mutex<Value>>>,
    pub(crate) interval: Duration,
    /// Longest wait between tries while the agent fails.
    pub(crate) max_backoff: Duration,
    pub(crate) failures: u32,
    pub(crate) paused: bool,
}

/// `PUT /v1/agent/service/register?replace-existing-checks`.
pub(crate) async fn register(api: &Api, body: &Value) -> Result<(), ApiError> {
    api.put(
        "agent/service/register",
        &[("replace-existing-checks", "true")],
        Some(body),
    )
    .await
}

impl HealthState {
    /// One beat; returns the delay before the next.
    async fn beat(&mut self) -> Duration {
        if self.paused {
            return self.interval;
        }
        let path = format!("agent/check/pass/{}", segment(&self.check_id));
        let mut result = self.api.put(&path, &[], None).await;
        if let Err(e) = &result {
            if e.forgot_us() {
                tracing::warn!(node = %self.node, "consul agent forgot this node ({e}): registering again");
                result = register(&self.api, &self.registration).await;
                if let (Ok(()), Some(also)) = (&result, &self.also) {
                    let body = crate::util::lock(also).clone();
                    result = register(&self.api, &body).await;
                }
            }
        }
        match result {
            Ok(()) => {
                if self.failures > 0 {
                    tracing::info!(node = %self.node, "consul health check passing again");
                }
                self.failures = 0;
            }
            Err(e) => {
                self.failures += 1;
                if self.failures == 1 {
                    tracing::warn!(node = %self.node, "cannot pass the consul health check: {e}; backing off");
                } else {
                    tracing::debug!(node = %self.node, failures = self.failures, "cannot pass the consul health check: {e}");
                }
            }
        }
        backoff(self.interval, self.failures, self.max_backoff)
    }
}

/// The worker. One per node using the Consul adapter.
#[derive(Debug)]
pub(crate) struct HealthWorker;

impl Actor for HealthWorker {
    type Msg = HealthMsg;
    type State = HealthState;
    type Arguments = HealthState;

    async fn pre_start(
        &self,
        myself: ActorRef<HealthMsg>,
        state: HealthState,
    ) -> Result<HealthState, ActorProcessingErr> {
        // Registered passing just now: the first beat is one interval away.
        myself.send_after(state.interval, || HealthMsg::Beat);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<HealthMsg>,
        msg: HealthMsg,
        state: &mut HealthState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            HealthMsg::Beat => {
                let next = state.beat().await;
                myself.send_after(next, || HealthMsg::Beat);
            }
            HealthMsg::Pause(paused) => state.paused = paused,
        }
        Ok(())
    }
}
