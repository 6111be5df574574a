//! What the admin endpoint (`crate::admin`, feature `admin`) reads of a
//! node, through `admin::Source`: snapshots only, never a lock the call
//! path takes.

use std::sync::Arc;

use serde_json::{json, Value};

use super::{Node, NodeInner};
use crate::admin::cluster::Target;
use crate::admin::stats::Calls;
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

    fn summary(&self) -> Value {
        let m = self.members.snapshot();
        let types: Vec<Value> = self
            .activations_by_type()
            .iter()
            .map(|(t, c, n)| json!({"actor": t, "capability": c, "activations": n}))
            .collect();
        json!({
            "node": &*self.id,
            "incarnation": self.incarnation,
            "state": if self.shared.is_shutting_down() { "stopping" } else { self.drain.as_str() },
            "addr": m.get(&self.id).map(|i| i.addr.clone()),
            "capabilities": self.capabilities,
            "activations": self.catalog.actors.iter().map(|a| a.2.count()).sum::<usize>(),
            "types": types,
            "calls": self.ops.calls.view(),
            "at_unix_ms": crate::admin::stats::coarse_ms(),
        })
    }

    fn inspect(
        &self,
        actor: &str,
        id: &str,
    ) -> crate::util::BoxFuture<'static, Result<Value, String>> {
        let fail = |e: String| -> crate::util::BoxFuture<'static, _> {
            Box::pin(std::future::ready(Err(e)))
        };
        let Some((_, capability, acts)) = self
            .catalog
            .actors
            .iter()
            .find(|a| a.2.actor_name() == actor)
        else {
            return fail(format!("this node hosts no actor type {actor:?}"));
        };
        let mut v = json!({
            "node": &*self.id,
            "actor": actor,
            "id": id,
            "active": false,
        });
        if let Some(seen) = acts.inspect(id) {
            let timers: Vec<Value> = seen
                .timers
                .iter()
                .map(|t| {
                    json!({
                        "key": t.key,
                        "every_ms": t.every.map(|d| d.as_millis() as u64),
                        "next_unix_ms": (t.next_ms > 0).then_some(t.next_ms),
                        "keep_alive": t.keep_alive,
                    })
                })
                .collect();
            v["active"] = json!(true);
            v["since_unix_ms"] = json!(seen.since_ms);
            v["last_message_unix_ms"] = json!((seen.last_ms > 0).then_some(seen.last_ms));
            v["mailbox_depth"] = json!(seen.depth);
            v["timers"] = json!(timers);
        }
        let Some(store) = crate::util::lock(&self.state).clone() else {
            v["stored"] = Value::Null;
            return Box::pin(std::future::ready(Ok(v)));
        };
        let key = crate::state::StateKey::new(format!("{capability}/{actor}"), id);
        let show = self.ops.state_views.contains(&actor);
        Box::pin(async move {
            let limit = crate::admin::cluster::STORE_TIMEOUT;
            let load = tokio::time::timeout(limit, store.load(&key, None));
            v["stored"] = match load.await {
                Ok(Ok(stored)) => {
                    let mut s = json!({
                        "version": stored.version,
                        "size": stored.bytes.as_ref().map_or(0, Vec::len),
                    });
                    if let Some(Ok((schema, payload))) =
                        stored.bytes.as_deref().map(crate::state::envelope::open)
                    {
                        s["schema"] = json!(schema);
                        if show {
                            s["state"] = crate::state::envelope::decode::<Value>(payload)
                                .unwrap_or_else(|e| json!(format!("not readable: {e}")));
                        }
                    }
                    s
                }
                Ok(Err(e)) => json!({"error": e.to_string()}),
                Err(_) => {
                    json!({"error": format!("the state store did not answer within {limit:?}")})
                }
            };
            Ok(v)
        })
    }

    fn list(&self, actor: &str, after: &str, limit: usize) -> Result<Value, String> {
        let Some((_, _, acts)) = self
            .catalog
            .actors
            .iter()
            .find(|a| a.2.actor_name() == actor)
        else {
            // A node that does not host the type has none of it active.
            return Ok(json!({"node": &*self.id, "ids": [], "more": false, "hosted": false}));
        };
        let (ids, more) = acts.ids(after, limit.max(1));
        Ok(json!({"node": &*self.id, "ids": ids, "more": more, "hosted": true}))
    }

    fn targets(&self) -> Vec<Target> {
        let m = self.members.snapshot();
        let mut out: Vec<Target> = m
            .iter()
            .map(|(n, _)| {
                if n == &*self.id {
                    return Target {
                        node: n.to_owned(),
                        member: true,
                        conn: None,
                        reachable: true,
                    };
                }
                let conn = self.cluster.as_ref().and_then(|c| {
                    c.connection(n)
                        .or_else(|| c.connections_to(n).into_iter().next())
                });
                Target {
                    node: n.to_owned(),
                    member: true,
                    reachable: conn.is_some(),
                    conn,
                }
            })
            .collect();
        // Itself, when it left its own membership (draining).
        if m.get(&self.id).is_none() {
            out.push(Target {
                node: self.id.to_string(),
                member: false,
                conn: None,
                reachable: true,
            });
        }
        // Peers still connected that left the routing (draining).
        if let Some(c) = &self.cluster {
            for conn in c.open_connections() {
                let node = conn.peer().node.clone();
                if m.get(&node).is_none() && !out.iter().any(|t| t.node == node) {
                    out.push(Target {
                        node,
                        member: false,
                        conn: Some(conn),
                        reachable: true,
                    });
                }
            }
        }
        out.sort_by(|a, b| a.node.cmp(&b.node));
        out
    }

    fn token_matches(&self, presented: &[u8]) -> Option<bool> {
        let token = self.ops.token.as_ref()?;
        Some(crate::admin::constant_time_eq(token.as_bytes(), presented))
    }

    fn start_drain(self: Arc<Self>) -> Result<&'static str, String> {
        Node::from_inner(self)
            .start_drain()
            .map_err(|e| e.to_string())
    }
}

/// What the admin views keep on a node (feature `admin`).
pub(crate) struct Ops {
    /// What its callers saw of each actor type.
    pub(crate) calls: Arc<Calls>,
    /// The write actions' token.
    token: Option<String>,
    /// The actor types whose stored state the views may show.
    state_views: Vec<&'static str>,
    /// The node queries being answered.
    queries: Arc<tokio::sync::Semaphore>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("token", &self.token.as_ref().map(|_| "<set>"))
            .field("state_views", &self.state_views)
            .finish_non_exhaustive()
    }
}

impl Ops {
    pub(crate) fn new(token: Option<String>, state_views: Vec<&'static str>) -> Self {
        Ops {
            calls: Arc::new(Calls::default()),
            token,
            state_views,
            queries: Arc::new(tokio::sync::Semaphore::new(
                crate::admin::cluster::MAX_QUERIES,
            )),
        }
    }

    /// Starts the ticker (coarse clock, call windows): it ends with the
    /// node (it holds the figures weakly).
    pub(crate) fn start(&self) {
        tokio::spawn(crate::admin::stats::ticker(Arc::downgrade(&self.calls)));
    }
}

impl NodeInner {
    /// Answers a node query from a peer (see `admin::cluster`), in a task:
    /// at most `MAX_QUERIES` at once (beyond, "busy" at once), each within
    /// the asker's deadline.
    pub(crate) fn answer_query(
        self: Arc<Self>,
        payload: Vec<u8>,
        reply: crate::transport::Responder,
    ) {
        let Ok(permit) = self.ops.queries.clone().try_acquire_owned() else {
            let busy = serde_json::json!({"error": "busy: too many node queries at once"});
            return reply.send(Ok(busy.to_string().into_bytes()));
        };
        // Answered already (it cannot be): nobody waits.
        let Some(deadline) = reply.deadline() else {
            return;
        };
        let me: Arc<dyn crate::admin::Source> = self;
        tokio::spawn(async move {
            let _permit = permit;
            let answer = crate::admin::cluster::answer_bytes(me, payload);
            let mut reply = reply;
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(bytes) => reply.send(Ok(bytes)),
                Err(_) => reply.time_out(),
            }
        });
    }
}

impl Node {
    /// Where the admin endpoint listens (feature `admin`), if
    /// [`NodeBuilder::admin`](crate::NodeBuilder::admin) asked for one.
    pub fn admin_addr(&self) -> Option<std::net::SocketAddr> {
        self.inner.admin.as_ref().map(|s| s.addr())
    }
}
