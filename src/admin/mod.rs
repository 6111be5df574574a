//! The operator's endpoint (feature `admin`): an HTTP/1 server on the node
//! serving JSON views of the cluster, Prometheus metrics and a live
//! cluster page.
//!
//! Opt-in with [`NodeBuilder::admin`](crate::NodeBuilder::admin); bind it
//! to `127.0.0.1` (it is read-only but unauthenticated). Routes, all `GET`:
//!
//! | route | body |
//! |---|---|
//! | `/` | the live cluster page: one HTML file, inline script, no CDN; it polls the JSON below every second |
//! | `/admin/node` | `{node, incarnation, addr, capabilities, members, activations, ready}` |
//! | `/admin/members` | `{self, members: [{node, addr, capabilities, protocol, ...}]}`; a peer adds `features`, `incarnation`, `identity` (the SPIFFE ID TLS verified, or null), `remote`, `since_unix_ms` (its oldest live connection's handshake), `discovered_by` (`seed`, `gossip`, `discovery` or `inbound`: how this node came to hold that connection) and `connections` |
//! | `/admin/discovery` | `{node, discovery}`: the authoritative discovery's own account ([`Discovery::describe`](crate::discovery::Discovery::describe); Consul: agent, service, check, upstreams), `null` with static seeds |
//! | `/admin/shards` | `{node, shards: 4096, capabilities: [{capability, owners: [{node, count}], map: [owner index of each shard]}]}`; `?capability=c` for one (404 if no member hosts it) |
//! | `/admin/activations` | `{node, total, by_type: [{type, capability, count}]}` |
//! | `/admin/placement?actor=Player&id=player-17` | `{actor, id, capability, shard, owner, local}`; 404 for an actor type this node does not host |
//! | `/metrics` | Prometheus text format ([`prometheus`]) |
//! | `/livez` | 200 `{"status":"ok"}`, no cluster check |
//! | `/readyz` | 200, or 503 until the node is a member of its own membership |
//!
//! Unknown paths get 404, other methods 405, each with a short text.
//!
//! Contracts: the server holds only a weak reference to the node (it does
//! not keep the node alive) and stops accepting when the node is dropped;
//! a view reads the membership and routing table snapshots the call path
//! publishes (no lock the call path takes), so scraping never blocks a
//! call. Each connection is its own task.

mod page;
pub mod prometheus;
mod views;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};

use crate::node::NodeInner;

/// A running admin server: stops accepting when dropped (with its node).
#[derive(Debug)]
pub(crate) struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Server {
    /// Binds `addr` and serves `node` there.
    pub(crate) async fn start(addr: &str, node: Weak<NodeInner>) -> std::io::Result<Server> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let stream = match listener.accept().await {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of descriptors, say: try again shortly.
                        tracing::debug!("admin accept failed: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let node = node.clone();
                tokio::spawn(async move {
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let svc = hyper::service::service_fn(move |req: Request<_>| {
                        let resp = respond(&node, req.method(), req.uri());
                        async move { Ok::<_, Infallible>(resp) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Ok(Server { addr, task })
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    with(status, "text/plain; charset=utf-8", body)
}

fn with(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp.headers_mut().insert(
        hyper::header::CACHE_CONTROL,
        hyper::header::HeaderValue::from_static("no-store"),
    );
    resp
}

fn json(status: StatusCode, v: &serde_json::Value) -> Response<Full<Bytes>> {
    with(status, "application/json", v.to_string())
}

/// One request's response.
fn respond(node: &Weak<NodeInner>, method: &Method, uri: &hyper::Uri) -> Response<Full<Bytes>> {
    if method != Method::GET && method != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET is served\n");
    }
    let path = uri.path();
    let query = uri.query().unwrap_or("");
    if path == "/livez" {
        return json(StatusCode::OK, &serde_json::json!({"status": "ok"}));
    }
    if path == "/metrics" {
        return match prometheus::render() {
            Some(body) => with(StatusCode::OK, "text/plain; version=0.0.4", body),
            None => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "no Prometheus recorder: another metrics recorder was installed first\n",
            ),
        };
    }
    let Some(node) = node.upgrade() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the node has stopped\n");
    };
    let node: &Arc<NodeInner> = &node;
    match path {
        "/" | "/index.html" => with(StatusCode::OK, "text/html; charset=utf-8", page::HTML),
        "/readyz" => {
            let v = views::ready(node);
            let ok = v["ready"].as_bool() == Some(true);
            let status = if ok {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            json(status, &v)
        }
        "/admin/node" => json(StatusCode::OK, &views::node(node)),
        "/admin/members" => json(StatusCode::OK, &views::members(node)),
        "/admin/activations" => json(StatusCode::OK, &views::activations(node)),
        "/admin/discovery" => json(StatusCode::OK, &views::discovery(node)),
        "/admin/placement" => {
            let (mut actor, mut id) = (None, None);
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("actor", a)) if !a.is_empty() => actor = Some(a),
                    Some(("id", i)) => id = Some(i),
                    _ => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("unknown query parameter {pair:?}: actor=TYPE&id=ID\n"),
                        )
                    }
                }
            }
            let (Some(actor), Some(id)) = (actor, id) else {
                return text(StatusCode::BAD_REQUEST, "give actor=TYPE&id=ID\n");
            };
            let id = percent_decode(id);
            match views::placement(node, actor, &id) {
                Ok(v) => json(StatusCode::OK, &v),
                Err(e) => text(StatusCode::NOT_FOUND, e),
            }
        }
        "/admin/shards" => {
            let mut capability = None;
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("capability", c)) if !c.is_empty() => capability = Some(c),
                    _ => {
                        return text(
                            StatusCode::BAD_REQUEST,
                            format!("unknown query parameter {pair:?}: only capability=NAME\n"),
                        )
                    }
                }
            }
            match views::shards(node, capability) {
                Some(v) => json(StatusCode::OK, &v),
                None => text(
                    StatusCode::NOT_FOUND,
                    format!(
                        "no member hosts capability {:?}\n",
                        capability.unwrap_or_default()
                    ),
                ),
            }
        }
        _ => text(
            StatusCode::NOT_FOUND,
            format!(
                "no such page {path:?}: try /, /admin/node, /admin/members, /admin/shards, \
                 /admin/activations, /admin/placement, /admin/discovery, /metrics, /livez, /readyz\n"
            ),
        ),
    }
}

/// `%XX` escapes and `+` decoded (an id in a query string); a bad escape
/// is kept as it is.
fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        (c as char).to_digit(16).map(|d| d as u8)
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = if b[i] == b'%' {
            b.get(i + 1)
                .zip(b.get(i + 2))
                .and_then(|(&h, &l)| Some((hex(h)? << 4) | hex(l)?))
        } else {
            None
        };
        match (b[i], escaped) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', None) => out.push(b' '),
            (c, None) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("player-17"), "player-17");
        assert_eq!(super::percent_decode("a%20b+c%2Fd"), "a b c/d");
        assert_eq!(super::percent_decode("100%"), "100%");
        assert_eq!(super::percent_decode("%zz%4"), "%zz%4");
        assert_eq!(super::percent_decode("%C3%A9"), "\u{e9}");
    }
}
