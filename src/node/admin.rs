//! What the admin endpoint (`crate::admin`, feature `admin`) reads of a
//! node, through `admin::Source`: snapshots only, never a lock the call
//! path takes.

use std::sync::Arc;

use super::{Node, NodeInner};
use crate::membership::{Membership, Readiness};
use crate::ring::RoutingTable;

impl crate::admin::Source for NodeInner {
    fn id(&self) -> &str {
        &self.id
    }

    fn incarnation(&self) -> u64 {
        self.incarnation
    }

    fn capabilities(&self) -> &[String] {
        &self.capabilities
    }

    fn membership(&self) -> Membership {
        self.members.snapshot()
    }

    fn routing(&self) -> Arc<RoutingTable> {
        self.members.routing_table()
    }

    fn readiness(&self) -> Readiness {
        self.members.readiness()
    }

    fn connections_to(&self, node: &str) -> Vec<crate::transport::Connection> {
        self.cluster
            .as_ref()
            .map(|c| c.connections_to(node))
            .unwrap_or_default()
    }

    fn discovery_status(&self) -> Option<serde_json::Value> {
        self.cluster
            .as_ref()?
            .discovery()
            .map(|d| d.describe().into_value())
    }

    fn state_store(&self) -> Option<serde_json::Value> {
        self.state_stats.as_ref().map(|s| s.snapshot())
    }

    fn reminders(
        &self,
        actor: &str,
        id: &str,
    ) -> crate::util::BoxFuture<'static, Result<serde_json::Value, String>> {
        let fail = |e: String| -> crate::util::BoxFuture<'static, _> {
            Box::pin(std::future::ready(Err(e)))
        };
        let Some(capability) = self.catalog.capability_of(actor) else {
            return fail(format!("this node hosts no actor type {actor:?}"));
        };
        let Some(store) = crate::util::lock(&self.state).clone() else {
            return fail("this node has no state store".into());
        };
        let key = crate::state::StateKey::new(format!("{capability}/{actor}"), id);
        let keeper = self.reminders.as_ref().map(|k| {
            use std::sync::atomic::Ordering::Relaxed;
            let s = k.stats();
            serde_json::json!({
                "held": s.held.load(Relaxed),
                "fired": s.fired.load(Relaxed),
                "failed": s.failed.load(Relaxed),
                "skipped": s.skipped.load(Relaxed),
            })
        });
        let (node, actor) = (self.id.to_string(), actor.to_owned());
        Box::pin(async move {
            let rows = store.reminders_of(&key).await.map_err(|e| e.to_string())?;
            let list: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    let missed = crate::reminder::decode_payload(&r.payload)
                        .map_or_else(|e| e.to_string(), |(m, _)| format!("{m:?}"));
                    serde_json::json!({
                        "name": &*r.name,
                        "next_unix_ms": r.due_ms,
                        "period_ms": r.period_ms,
                        "missed": missed,
                        "version": r.version,
                    })
                })
                .collect();
            Ok(serde_json::json!({
                "node": node,
                "actor": actor,
                "id": &*key.id,
                "reminders": list,
                "keeper": keeper,
            }))
        })
    }

    fn activations_by_type(&self) -> Vec<(&'static str, &'static str, usize)> {
        self.catalog
            .actors
            .iter()
            .map(|(_, capability, acts)| (acts.actor_name(), *capability, acts.count()))
            .collect()
    }
}

impl Node {
    /// Where the admin endpoint listens (feature `admin`), if
    /// [`NodeBuilder::admin`](crate::NodeBuilder::admin) asked for one.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.admin.as_ref().map(|s| s.addr())
    }
}
