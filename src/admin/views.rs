//! The JSON views: snapshots of what the node publishes for its call path.

use serde_json::{json, Value};

use super::Source;

pub(super) fn node(node: &dyn Source) -> Value {
    let m = node.membership();
    json!({
        "node": node.id(),
        "incarnation": node.incarnation(),
        "addr": m.get(node.id()).map(|i| i.addr.clone()).unwrap_or_default(),
        "capabilities": node.capabilities(),
        "members": m.len(),
        "activations": node.activations_by_type().iter().map(|a| a.2).sum::<usize>(),
        "ready": node.readiness().ready(),
        "min_members": node.readiness().min_members,
    })
}

/// `/readyz`: ready when the node is a member of its own membership and
/// sees its `min_members`; otherwise `reason` says why, naming the count
/// and the likely causes.
pub(super) fn ready(node: &dyn Source) -> Value {
    let r = node.readiness();
    let enough = r.members >= r.min_members;
    let mut v = json!({
        "ready": r.ready(),
        "members": r.members,
        "min_members": r.min_members,
        "serving": r.formed,
        "checks": [
            {"name": "member", "ok": r.member},
            {"name": "min_members", "ok": enough, "have": r.members, "need": r.min_members},
        ],
    });
    if !r.member {
        v["reason"] = json!("the node is not in its own membership: it is starting or leaving");
    } else if !enough {
        let serving = if r.formed {
            "it had seen enough before, so it still serves the calls it gets"
        } else {
            "until then its calls fail with NotEnoughMembers"
        };
        v["reason"] = json!(format!(
            "the node sees {} member(s), fewer than the {} it needs (NodeBuilder::min_members); \
             {serving}. Likely causes: a cookie or cluster name other than its peers' (the logs \
             name refused connections), seeds or discovery it cannot reach, or the other nodes \
             are not up yet",
            r.members, r.min_members
        ));
    }
    v
}

/// Each member: where it listens, what it hosts (capabilities, and the
/// actor types its handshake advertised with how many handlers each has;
/// `null` if it did not say), and for a peer how this node is connected to
/// it (protocol, since when, how it was found).
pub(super) fn members(node: &dyn Source) -> Value {
    let m = node.membership();
    let members: Vec<Value> = m
        .iter()
        .map(|(n, info)| {
            let mut v = json!({
                "node": n,
                "addr": info.addr,
                "capabilities": info.capabilities,
                "actors": info.actors.as_ref().map(|a| a.iter().map(|h| json!({
                    "capability": h.capability,
                    "actor": h.actor,
                    "handlers": h.tags.len(),
                })).collect::<Vec<_>>()),
                "protocol": crate::wire::VERSION,
            });
            if n == node.id() {
                v["self"] = json!(true);
                return v;
            }
            let conns = node.connections_to(n);
            if let Some(oldest) = conns.first() {
                let peer = oldest.peer();
                let mut features = Vec::new();
                if peer.trace_context {
                    features.push("trace_context");
                }
                if peer.call_chain {
                    features.push("call_chain");
                }
                v["features"] = json!(features);
                v["incarnation"] = json!(peer.incarnation);
                v["identity"] = json!(peer.identity);
                v["remote"] = json!(peer.remote);
                v["since_unix_ms"] = json!(unix_ms(oldest.opened_at()));
                v["discovered_by"] = json!(oldest.origin().map(|o| o.as_str()));
            }
            v["connections"] = json!(conns.len());
            v
        })
        .collect();
    json!({"self": node.id(), "members": members})
}

/// The discovery's own account (Consul: the registration and upstreams);
/// `null` for a node without an authoritative discovery.
pub(super) fn discovery(node: &dyn Source) -> Value {
    json!({"node": node.id(), "discovery": node.discovery_status()})
}

fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(super) fn activations(node: &dyn Source) -> Value {
    let by_type = node.activations_by_type();
    let total: usize = by_type.iter().map(|a| a.2).sum();
    let by_type: Vec<Value> = by_type
        .iter()
        .map(|(t, c, n)| json!({"type": t, "capability": c, "count": n}))
        .collect();
    json!({"node": node.id(), "total": total, "by_type": by_type})
}

/// Owners and their shard counts per capability (`None`: no member hosts
/// the one asked for).
pub(super) fn shards(node: &dyn Source, only: Option<&str>) -> Option<Value> {
    let routing = node.routing();
    let mut caps = Vec::new();
    for (capability, table) in routing.iter() {
        if only.is_some_and(|o| o != capability) {
            continue;
        }
        let mut owners: Vec<(String, usize)> = Vec::new();
        for s in 0..crate::ring::SHARDS {
            let owner = table.owner(s as u16);
            match owners.iter_mut().find(|(n, _)| n == owner) {
                Some((_, k)) => *k += 1,
                None => owners.push((owner.to_owned(), 1)),
            }
        }
        owners.sort();
        // Every shard's owner, as an index into `owners`: the page's map.
        let map: Vec<usize> = (0..crate::ring::SHARDS)
            .map(|s| {
                let owner = table.owner(s as u16);
                owners.iter().position(|(n, _)| n == owner).unwrap_or(0)
            })
            .collect();
        let owners: Vec<Value> = owners
            .into_iter()
            .map(|(n, k)| json!({"node": n, "count": k}))
            .collect();
        caps.push(json!({"capability": capability, "owners": owners, "map": map}));
    }
    if only.is_some() && caps.is_empty() {
        return None;
    }
    Some(json!({"node": node.id(), "shards": crate::ring::SHARDS, "capabilities": caps}))
}

/// Where actor `id` of type `actor` lives: `Err` (a 4xx text) for an actor
/// type this node does not host or a capability no member hosts.
pub(super) fn placement(node: &dyn Source, actor: &str, id: &str) -> Result<Value, String> {
    let types = node.activations_by_type();
    if !types.iter().any(|(t, _, _)| *t == actor) {
        let known: Vec<&str> = types.iter().map(|t| t.0).collect();
        return Err(format!(
            "unknown actor type {actor:?}: this node hosts {known:?}\n"
        ));
    }
    locate(node, actor, id)
}

/// Where actor `id` of type `actor` lives, by any member's account of the
/// type (so a node that does not host it can say): `{actor, id,
/// capability, shard, owner, local}`. `Err` (a 404 text) when no member
/// hosts the type.
pub(super) fn locate(node: &dyn Source, actor: &str, id: &str) -> Result<Value, String> {
    let local = node.activations_by_type();
    let capability = match local.iter().find(|(t, _, _)| *t == actor) {
        Some(&(_, c, _)) => c.to_owned(),
        None => {
            let m = node.membership();
            let found = m.iter().find_map(|(_, info)| {
                info.actors
                    .as_ref()?
                    .iter()
                    .find(|h| h.actor == actor)
                    .map(|h| h.capability.clone())
            });
            let Some(c) = found else {
                let mut known: Vec<String> = m
                    .iter()
                    .flat_map(|(_, i)| i.actors.iter().flatten().map(|h| h.actor.clone()))
                    .collect();
                known.sort();
                known.dedup();
                return Err(format!(
                    "no member hosts an actor type {actor:?}: the members host {known:?}\n"
                ));
            };
            c
        }
    };
    let routing = node.routing();
    let key = crate::ring::actor_key(&capability, actor);
    let Some(table) = routing.actor(key, crate::ring::capability_key(&capability)) else {
        return Err(format!(
            "no member hosts {actor} (capability {capability:?})\n"
        ));
    };
    let shard = crate::ring::shard(id);
    let owner = table.owner(shard);
    Ok(json!({
        "actor": actor,
        "id": id,
        "capability": capability,
        "shard": shard,
        "owner": owner,
        "local": owner == node.id(),
    }))
}

pub(super) fn state(node: &dyn Source) -> Value {
    json!({ "node": node.id(), "store": node.state_store() })
}
