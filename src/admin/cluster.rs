//! The cluster-wide views (`/admin/cluster`, `/admin/actor`,
//! `/admin/actors`): gathered from the members **over the cluster
//! connections**, as node queries (a `Call` of tag
//! [`crate::wire::INSPECT_TAG`], a JSON question and a JSON answer; see
//! PROTOCOL.md, "Node queries"). So they need no admin endpoint on the
//! other members, no extra port and no other credentials: a member
//! answers over the connection the cluster already authenticated (its
//! cookie, or mTLS).
//!
//! Contracts:
//! - Every member is asked at once, each within [`ASK_TIMEOUT`] (this node
//!   too); a member that does not answer in time, has no live connection,
//!   takes no queries (built without the `admin` feature) or answers
//!   something malformed is listed with `"answered": false` and the
//!   reason, never left out. A view is never slower than [`ASK_TIMEOUT`]
//!   plus the merging.
//! - Members are the node's membership plus the peers it is still
//!   connected to that left the routing: a draining member (see
//!   `Node::drain`) shows with its `state`.
//! - A member answers only about itself, from the snapshots its own views
//!   read; a lookup takes that activation's mailbox lock for a moment, and
//!   a listing reads its activation table one shard at a time (as the
//!   idle sweeper does). The only query that reads the state store (an
//!   actor's stored row) gives it [`STORE_TIMEOUT`], less than the asker
//!   waits. A member answers at most [`MAX_QUERIES`] queries at once (more
//!   are answered "busy"), each within the asker's deadline.
//! - What a member answers is bounded on both ends: it lists at most
//!   [`MAX_LIMIT`] ids; the asker refuses an answer over [`MAX_ANSWER`]
//!   bytes or one that is not the documented shape, keeps at most `limit`
//!   ids and 144 latency buckets per type of it, and adds its counts with
//!   saturation. A node query reaches a draining peer too: it is sent on a
//!   connection the leave sealed (see `Connection::query`).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::Source;
use crate::transport::Connection;

/// How long a member has to answer one query.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// The most ids a listing returns per page (and asks of each member).
pub const MAX_LIMIT: usize = 1000;

/// The ids a listing returns unless `limit` says otherwise.
pub const DEFAULT_LIMIT: usize = 100;

/// The largest answer a member may send (bytes of JSON).
pub const MAX_ANSWER: usize = 1 << 20;

/// How long a member gives its state store for a lookup's stored row.
pub const STORE_TIMEOUT: Duration = Duration::from_millis(1500);

/// How many node queries a member answers at once.
pub const MAX_QUERIES: usize = 16;

/// A question one node asks another (the payload of a node query).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
pub(crate) enum Query {
    /// The member's figures: state, activations and calls by actor type.
    Summary,
    /// One actor as the member holds it.
    Actor {
        /// The actor type's name.
        actor: String,
        /// Its id.
        id: String,
    },
    /// The ids of one type active on the member, in byte order, after
    /// `after`, at most `limit`.
    List {
        /// The actor type's name.
        actor: String,
        /// The cursor: ids after this one.
        #[serde(default)]
        after: String,
        /// At most this many (clamped to [`MAX_LIMIT`]).
        limit: usize,
    },
}

/// A member to ask: this node itself (`None`), or a peer over `conn`.
#[derive(Debug)]
pub(crate) struct Target {
    /// Its node id.
    pub(crate) node: String,
    /// Whether it is in the membership (false: connected, but it left
    /// the routing: draining or leaving).
    pub(crate) member: bool,
    /// How to reach it (`None` for this node itself, or a member without
    /// a live connection: see `reachable`).
    pub(crate) conn: Option<Connection>,
    /// Whether it can be asked at all.
    pub(crate) reachable: bool,
}

/// Answers `query` (from a peer's node query, or this node's own view).
pub(crate) async fn answer(node: Arc<dyn Source>, query: Query) -> Result<Value, String> {
    match query {
        Query::Summary => Ok(node.summary()),
        Query::Actor { actor, id } => node.inspect(&actor, &id).await,
        Query::List {
            actor,
            after,
            limit,
        } => node.list(&actor, &after, limit.clamp(1, MAX_LIMIT)),
    }
}

/// Answers a node query's payload (a peer asked) with a JSON document:
/// `{"answer": ...}`, or `{"error": "why not"}`.
pub(crate) async fn answer_bytes(node: Arc<dyn Source>, payload: Vec<u8>) -> Vec<u8> {
    let answered = match serde_json::from_slice::<Query>(&payload) {
        Ok(query) => answer(node, query).await,
        Err(e) => Err(format!("bad query: {e}")),
    };
    let v = match answered {
        Ok(v) => json!({ "answer": v }),
        Err(e) => json!({ "error": e }),
    };
    serde_json::to_vec(&v).unwrap_or_default()
}

/// Asks a member `query` within [`ASK_TIMEOUT`] (`conn` `None`: this
/// node): its answer, or why not.
async fn ask(
    node: Arc<dyn Source>,
    conn: Option<Connection>,
    reachable: bool,
    query: &Query,
) -> Result<Value, String> {
    if !reachable {
        return Err("no live connection to it".into());
    }
    let Some(conn) = conn else {
        return match tokio::time::timeout(ASK_TIMEOUT, answer(node, query.clone())).await {
            Ok(answered) => answered,
            Err(_) => Err(format!("no answer within {ASK_TIMEOUT:?}")),
        };
    };
    let body = serde_json::to_vec(query).map_err(|e| e.to_string())?;
    match conn.query(&body, ASK_TIMEOUT).await {
        Ok(bytes) => parse_answer(&bytes),
        Err(crate::Error::UnknownMessage { .. }) => {
            Err("it takes no node queries (built without the admin feature, or older)".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A member's answer (`{"answer": {...}}` or `{"error": "..."}`), taken
/// only if it has that shape and is at most [`MAX_ANSWER`] bytes.
fn parse_answer(bytes: &[u8]) -> Result<Value, String> {
    if bytes.len() > MAX_ANSWER {
        return Err(format!(
            "an answer of {} bytes, over the {MAX_ANSWER} taken",
            bytes.len()
        ));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("bad answer: {e}"))?;
    let Value::Object(mut v) = v else {
        return Err("bad answer: not an object".into());
    };
    match (v.remove("answer"), v.get("error").and_then(Value::as_str)) {
        (_, Some(e)) => Err(e.to_owned()),
        (Some(a @ Value::Object(_)), None) => Ok(a),
        _ => Err("bad answer: no object under \"answer\"".into()),
    }
}

/// Asks every target `query` at once (a task each: dropping the view
/// aborts them); answers in the targets' order.
async fn ask_all(
    node: &Arc<dyn Source>,
    targets: &[Target],
    query: &Query,
) -> Vec<Result<Value, String>> {
    let mut set = tokio::task::JoinSet::new();
    for (i, t) in targets.iter().enumerate() {
        let (node, conn, reachable) = (node.clone(), t.conn.clone(), t.reachable);
        let query = query.clone();
        set.spawn(async move { (i, ask(node, conn, reachable, &query).await) });
    }
    let mut out: Vec<Result<Value, String>> = vec![Err("not asked".into()); targets.len()];
    while let Some(r) = set.join_next().await {
        if let Ok((i, a)) = r {
            out[i] = a;
        }
    }
    out
}

/// `/admin/cluster`: every member's state, activations and calls by
/// actor type, and the cluster's totals per type.
pub(crate) async fn cluster(node: Arc<dyn Source>) -> Value {
    let targets = node.targets();
    let answers = ask_all(&node, &targets, &Query::Summary).await;
    let mut members = Vec::new();
    let mut by_type: std::collections::BTreeMap<String, TypeTotal> = Default::default();
    for (t, a) in targets.iter().zip(answers) {
        let mut m = match a {
            Ok(mut v) => {
                let list = |key: &str| {
                    v.get(key)
                        .and_then(Value::as_array)
                        .map(|a| &a[..a.len().min(MAX_TYPES)])
                        .unwrap_or_default()
                };
                for ty in list("types") {
                    if let Some(name) = ty.get("actor").and_then(Value::as_str) {
                        let e = by_type.entry(name.to_owned()).or_default();
                        e.0 = e.0.saturating_add(
                            ty.get("activations").and_then(Value::as_u64).unwrap_or(0),
                        );
                    }
                }
                for c in list("calls") {
                    let Some(name) = c.get("actor").and_then(Value::as_str) else {
                        continue;
                    };
                    let e = by_type.entry(name.to_owned()).or_default();
                    let rate = |k: &str| {
                        c.get(k)
                            .and_then(Value::as_f64)
                            .filter(|r| r.is_finite() && *r >= 0.0)
                            .unwrap_or(0.0)
                    };
                    e.1 += rate("calls_per_s");
                    e.2 += rate("errors_per_s");
                    let buckets = c.get("buckets").and_then(Value::as_array);
                    for b in buckets.into_iter().flatten().take(super::stats::BUCKETS) {
                        let pair = b.as_array().map(|p| (p.first(), p.get(1)));
                        if let Some((Some(up), Some(n))) = pair {
                            if let (Some(up), Some(n)) = (up.as_u64(), n.as_u64()) {
                                e.3.push((up, n));
                            }
                        }
                    }
                }
                v["answered"] = json!(true);
                v
            }
            Err(e) => json!({"node": t.node, "answered": false, "error": e}),
        };
        if let Value::Object(fields) = &mut m {
            fields.insert("member".into(), json!(t.member));
            fields.insert("self".into(), json!(t.conn.is_none() && t.reachable));
        }
        members.push(m);
    }
    let by_type: Vec<Value> = by_type
        .into_iter()
        .map(|(actor, (acts, rate, errs, mut buckets))| {
            buckets.sort_unstable();
            let merged = merge(&buckets);
            json!({
                "actor": actor,
                "activations": acts,
                "calls_per_s": (rate * 10.0).round() / 10.0,
                "errors_per_s": (errs * 10.0).round() / 10.0,
                "p50_ms": super::stats::percentile(&merged, 0.50),
                "p99_ms": super::stats::percentile(&merged, 0.99),
            })
        })
        .collect();
    let answered = members.iter().filter(|m| m["answered"] == true).count();
    json!({
        "self": node.id(),
        "at_unix_ms": super::stats::coarse_ms(),
        "window_s": super::stats::WINDOW.as_secs(),
        "members": members,
        "answered": answered,
        "by_type": by_type,
    })
}

/// The most actor types taken from one member's answer.
const MAX_TYPES: usize = 1024;

/// One actor type across the members: activations, calls/s, errors/s,
/// and the members' buckets (`(upper_us, count)`).
type TypeTotal = (u64, f64, f64, Vec<(u64, u64)>);

/// Sums the counts of equal bounds (`buckets` sorted by bound).
fn merge(buckets: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &(up, n) in buckets {
        match out.last_mut() {
            Some(last) if last.0 == up => last.1 = last.1.saturating_add(n),
            _ => out.push((up, n)),
        }
    }
    out
}

/// `/admin/actor?actor=T&id=I`: where actor `id` lives (the ring's owner
/// of its shard), and what that owner says of it. `Err`: the type is
/// hosted by no member (a 404 text).
pub(crate) async fn actor(node: Arc<dyn Source>, actor: &str, id: &str) -> Result<Value, String> {
    let placed = super::views::locate(&*node, actor, id)?;
    let owner = placed["owner"].as_str().unwrap_or_default().to_owned();
    let target = node
        .targets()
        .into_iter()
        .find(|t| t.node == owner)
        .unwrap_or(Target {
            node: owner.clone(),
            member: true,
            conn: None,
            reachable: false,
        });
    let query = Query::Actor {
        actor: actor.to_owned(),
        id: id.to_owned(),
    };
    let mut v = placed;
    match ask(node.clone(), target.conn, target.reachable, &query).await {
        Ok(a) => {
            v["answered"] = json!(true);
            // The owner's account, beside (never over) the placement.
            if let (Value::Object(fields), Value::Object(into)) = (a, &mut v) {
                for (k, val) in fields {
                    into.entry(k).or_insert(val);
                }
            }
        }
        Err(e) => {
            v["answered"] = json!(false);
            v["error"] = json!(e);
        }
    }
    Ok(v)
}

/// `/admin/actors?actor=T&after=X&limit=N`: the ids of type `actor`
/// active anywhere in the cluster, in byte order, a page at a time;
/// `next` is the cursor of the next page (`null`: the last one).
pub(crate) async fn actors(node: Arc<dyn Source>, actor: &str, after: &str, limit: usize) -> Value {
    let limit = limit.clamp(1, MAX_LIMIT);
    let targets = node.targets();
    let query = Query::List {
        actor: actor.to_owned(),
        after: after.to_owned(),
        limit,
    };
    let answers = ask_all(&node, &targets, &query).await;
    let mut ids: Vec<(String, String)> = Vec::new();
    let mut more = false;
    let mut missing = Vec::new();
    for (t, a) in targets.iter().zip(answers) {
        match a {
            Ok(v) => {
                more |= v.get("more").and_then(Value::as_bool).unwrap_or(false);
                let listed = v.get("ids").and_then(Value::as_array);
                // Ids in order after the cursor, at most `limit` of them.
                let fit = |id: &&str| *id > after;
                for id in listed
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .filter(fit)
                    .take(limit)
                {
                    ids.push((id.to_owned(), t.node.clone()));
                }
            }
            Err(e) => missing.push(json!({"node": t.node, "error": e})),
        }
    }
    ids.sort();
    if ids.len() > limit {
        more = true;
        ids.truncate(limit);
    }
    let next = if more {
        ids.last().map(|(id, _)| json!(id)).unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    json!({
        "actor": actor,
        "after": after,
        "limit": limit,
        "ids": ids.iter().map(|(id, n)| json!({"id": id, "node": n})).collect::<Vec<_>>(),
        "next": next,
        "missing": missing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever a member sends back, the asker takes only the documented
    /// shape, never panics, and says what was wrong.
    #[test]
    fn answers_of_the_wrong_shape_are_refused_not_panicked_on() {
        let ok = parse_answer(br#"{"answer":{"node":"a"}}"#).unwrap();
        assert_eq!(ok["node"], "a");
        assert_eq!(parse_answer(br#"{"error":"busy"}"#).unwrap_err(), "busy");
        for bad in [
            &b"[]"[..],
            b"1",
            b"null",
            br#"{"answer":1}"#,
            br#"{"answer":[1,2]}"#,
            br#"{}"#,
            b"{",
            b"",
        ] {
            let e = parse_answer(bad).unwrap_err();
            assert!(e.starts_with("bad answer"), "{e}");
        }
        let big = vec![b' '; MAX_ANSWER + 1];
        assert!(parse_answer(&big).unwrap_err().contains("over the"));
    }

    #[test]
    fn merged_buckets_add_equal_bounds_and_saturate() {
        let m = merge(&[(1, 2), (1, 3), (5, u64::MAX), (5, 1), (9, 1)]);
        assert_eq!(m, [(1, 5), (5, u64::MAX), (9, 1)]);
    }
}
