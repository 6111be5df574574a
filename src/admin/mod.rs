//! The operator's endpoint (feature `admin`): an HTTP/1 server on the node
//! serving JSON views of the cluster, Prometheus metrics and a live
//! cluster page.
//!
//! Opt-in with [`NodeBuilder::admin`](crate::NodeBuilder::admin); bind it
//! to `127.0.0.1` (its views are unauthenticated). Its one write action,
//! `POST /admin/drain`, needs the token set with
//! [`NodeBuilder::admin_token`](crate::NodeBuilder::admin_token) (without
//! one it is refused: 403). Routes, all `GET` but the drain:
//!
//! | route | body |
//! |---|---|
//! | `/` | the live cluster page: one HTML file, inline script, no CDN; it polls the JSON below every second |
//! | `/admin/node` | `{node, incarnation, addr, capabilities, members, activations, ready, min_members}` |
//! | `/admin/members` | `{self, members: [{node, addr, capabilities, protocol, ...}]}`; a peer adds `features`, `incarnation`, `identity` (the SPIFFE ID TLS verified, or null), `remote`, `since_unix_ms` (its oldest live connection's handshake), `discovered_by` (`seed`, `gossip`, `discovery` or `inbound`: how this node came to hold that connection) and `connections` |
//! | `/admin/discovery` | `{node, discovery}`: the authoritative discovery's own account ([`Discovery::describe`](crate::discovery::Discovery::describe); Consul: agent, service, check, upstreams), `null` with static seeds |
//! | `/admin/shards` | `{node, shards: 4096, capabilities: [{capability, owners: [{node, count}], map: [owner index of each shard]}]}`; `?capability=c` for one (404 if no member hosts it) |
//! | `/admin/activations` | `{node, total, by_type: [{type, capability, count}]}` |
//! | `/admin/reminders?actor=TYPE&id=ID` | `{node, actor, id, reminders: [{name, next_unix_ms, period_ms, missed, version}], keeper}`: the actor's durable reminders as the store has them (404 naming why for an actor type not hosted here or a node without a store; 504 if the store takes over 5 s), and what this node's keeper holds and has fired (`{held, fired, failed, skipped}`, or `null` without a keeper) |
//! | `/admin/state` | `{node, store}`: `null` without a state store, else `{name, healthy, last_ok_unix_ms, last_error: {at_unix_ms, error} or null, writes: {ok, conflict, fenced, too_large, unavailable, uncertain, codec}, loads: {ok, failed}, write_latency, load_latency}`, each latency `{count, p50_ms, p99_ms, max_ms}` since the node started; `healthy` is false while the last operation that failed or succeeded on availability failed (unavailable or uncertain) |
//! | `/admin/placement?actor=Player&id=player-17` | `{actor, id, capability, shard, owner, local}`; 404 for an actor type this node does not host |
//! | `/admin/cluster` | `{self, at_unix_ms, window_s, answered, members: [...], by_type: [{actor, activations, calls_per_s, errors_per_s, p50_ms, p99_ms}]}`: every member's own figures, asked over the cluster connections ([`cluster`]): each member `{node, member, answered, state (serving, draining, drained), incarnation, addr, capabilities, activations, types: [{actor, capability, activations}], calls: [{actor, calls_total, errors_total, calls_per_s, errors_per_s, p50_ms, p99_ms, buckets}]}`, or `{node, answered: false, error}`; calls are counted by the caller's node over the last 10 s (see docs/guide/07-operating.md), and `by_type` merges the members' histograms |
//! | `/admin/actor?actor=Player&id=player-7` | where the actor lives (`capability, shard, owner`) and what its owner says of it: `{active, since_unix_ms, last_message_unix_ms, mailbox_depth, timers: [{key, every_ms, next_unix_ms, keep_alive}], stored: {version, size[, state]} or null}` (`state` only for a type granted with [`NodeBuilder::admin_state_view`](crate::NodeBuilder::admin_state_view)); `answered: false` with `error` if the owner did not answer; 404 if no member hosts the type |
//! | `/admin/actors?actor=Player[&after=ID][&limit=N]` | `{actor, ids: [{id, node}], next, missing}`: the ids active anywhere in the cluster, in byte order, a page at a time (`limit` 1 to 1000, default 100); `next` is the next page's `after` (`null` on the last); `missing` names the members that did not answer |
//! | `POST /admin/drain` | with `Authorization: Bearer <token>`: starts [`Node::drain`](crate::Node::drain) on a task of its own, then answers 202 `{node, state, was}` (`was`: the state before; `serving` for the drain this request started); 401 without the right token (`Bearer`, any case), 403 if the node has none, 409 if it cannot drain (not clustered, shutting down) |
//! | `/metrics` | Prometheus text format ([`prometheus`]) |
//! | `/livez` | 200 `{"status":"ok"}`, no cluster check |
//! | `/readyz` | 200 when the node is a member of its own membership and sees at least its `min_members` members (`NodeBuilder::min_members`), else 503; `{ready, members, min_members, serving, checks, reason}` (`reason` only when not ready) |
//!
//! Unknown paths get 404, other methods 405, each with a short text.
//!
//! Contracts: the server holds only a weak reference to the node (it does
//! not keep the node alive) and stops accepting when the node is dropped;
//! a view reads the membership and routing table snapshots the call path
//! publishes (no lock the call path takes), so scraping never blocks a
//! call. Each connection is its own task.
//!
//! Connection limits ([`Limits`], set with
//! [`NodeBuilder::admin_limits`](crate::NodeBuilder::admin_limits)), so a
//! client that opens connections and sends nothing (slowloris) cannot use
//! up the descriptors the cluster listener and the Consul client share:
//! - **at most [`DEFAULT_MAX_CONNECTIONS`] (64) open connections**; one
//!   beyond the cap is closed at once, unanswered, and counted in
//!   `mesh_admin_connections_refused_total`. So during such a flood the
//!   endpoint itself answers again only once the held connections time
//!   out (below); the cluster is not affected;
//! - **a request head must arrive within [`DEFAULT_HEADER_READ_TIMEOUT`]
//!   (10 s)** of the connection's start or of the previous response's
//!   end: this is also the idle limit of a keep-alive connection, and it
//!   closes a client that trickles its head;
//! - **a connection on which no byte moves either way for
//!   [`DEFAULT_IDLE_TIMEOUT`] (30 s) is closed** (a client that stops
//!   reading a response).

pub mod cluster;
mod page;
pub mod prometheus;
pub(crate) mod stats;
mod views;

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::membership::{Membership, Readiness};
use crate::ring::RoutingTable;

/// What the endpoint reads of its node: snapshots only, never a lock the
/// call path takes. The node implements it; `admin` names no node type.
pub(crate) trait Source: Send + Sync + 'static {
    /// The node's id.
    fn id(&self) -> &str;
    /// This run of the node.
    fn incarnation(&self) -> u64;
    /// The capabilities it hosts.
    fn capabilities(&self) -> &[String];
    /// Its membership view now.
    fn membership(&self) -> Membership;
    /// Its routing table now.
    fn routing(&self) -> Arc<RoutingTable>;
    /// Whether it is ready, and why.
    fn readiness(&self) -> Readiness;
    /// The live connections to member `node`, oldest first.
    fn connections_to(&self, node: &str) -> Vec<crate::transport::Connection>;
    /// What its authoritative discovery says of itself, if it has one.
    fn discovery_status(&self) -> Option<serde_json::Value>;
    /// `(actor type, capability, live activations)` per hosted type.
    fn activations_by_type(&self) -> Vec<(&'static str, &'static str, usize)>;
    /// What it has seen of its state store, if it has one.
    fn state_store(&self) -> Option<serde_json::Value>;
    /// The durable reminders of actor `id` of type `actor`, read from the
    /// store (`/admin/reminders`); `Err` names why not (an actor type not
    /// hosted here, no store, the store failed).
    fn reminders(
        &self,
        actor: &str,
        id: &str,
    ) -> crate::util::BoxFuture<'static, Result<serde_json::Value, String>>;
    /// Its own figures for the cluster view: `{node, incarnation, state,
    /// addr, capabilities, activations, types: [{actor, capability,
    /// activations}], calls: [..] (see `stats::Calls::view`), at_unix_ms}`.
    fn summary(&self) -> serde_json::Value;
    /// Actor `id` of type `actor` as this node holds it, with its stored
    /// version and size (and its state, if the type's view was granted);
    /// `Err` names why not (a type not hosted here).
    fn inspect(
        &self,
        actor: &str,
        id: &str,
    ) -> crate::util::BoxFuture<'static, Result<serde_json::Value, String>>;
    /// `{node, ids, more}`: the ids of `actor` active here after `after`.
    fn list(&self, actor: &str, after: &str, limit: usize) -> Result<serde_json::Value, String>;
    /// Whom the cluster views ask: itself, each member, and each peer it
    /// is still connected to that left the routing.
    fn targets(&self) -> Vec<cluster::Target>;
    /// Whether `presented` is the write token (`None`: no token is set, so
    /// write actions are refused).
    fn token_matches(&self, presented: &[u8]) -> Option<bool>;
    /// Starts draining the node (`Node::drain`) on a task of its own;
    /// returns its state before, or why it cannot drain.
    fn start_drain(self: Arc<Self>) -> Result<&'static str, String>;
}

/// Counter: admin connections closed at once because [`Limits`]'s cap was
/// reached.
pub const CONNECTIONS_REFUSED_TOTAL: &str = "mesh_admin_connections_refused_total";

/// How long a request head may take, unless configured.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a connection may move no byte, unless configured.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// How many admin connections may be open at once, unless configured.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// The admin endpoint's connection limits (see the [module docs](self)).
/// `Limits::default()` has the documented defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl Limits {
    /// How long a request head may take from the connection's start or
    /// the previous response's end (default
    /// [`DEFAULT_HEADER_READ_TIMEOUT`]); also the keep-alive idle limit.
    pub fn header_read_timeout(mut self, limit: Duration) -> Self {
        self.header_read_timeout = limit.max(Duration::from_millis(1));
        self
    }

    /// How long a connection may move no byte either way before it is
    /// closed (default [`DEFAULT_IDLE_TIMEOUT`]).
    pub fn idle_timeout(mut self, limit: Duration) -> Self {
        self.idle_timeout = limit.max(Duration::from_millis(1));
        self
    }

    /// How many connections may be open at once (default
    /// [`DEFAULT_MAX_CONNECTIONS`], at least 1); one beyond is closed at
    /// once.
    pub fn max_connections(mut self, cap: usize) -> Self {
        self.max_connections = cap.max(1);
        self
    }
}

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
    /// Binds `addr` (before the node's first other side effect); serve it
    /// with [`Server::serve`].
    pub(crate) async fn bind(addr: &str) -> std::io::Result<(tokio::net::TcpListener, SocketAddr)> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        Ok((listener, addr))
    }

    /// Serves `node` on `listener` (bound at `addr`) within `limits`, on
    /// a task (call it within a runtime), until dropped.
    pub(crate) fn serve(
        (listener, addr): (tokio::net::TcpListener, SocketAddr),
        node: Weak<dyn Source>,
        limits: Limits,
    ) -> Server {
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
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
                let Ok(permit) = permits.clone().try_acquire_owned() else {
                    // At the cap: close it at once (dropping the stream).
                    metrics::counter!(CONNECTIONS_REFUSED_TOTAL).increment(1);
                    continue;
                };
                let node = node.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let io = hyper_util::rt::TokioIo::new(Idle::new(stream, limits.idle_timeout));
                    let svc = hyper::service::service_fn(move |req: Request<_>| {
                        // The routes that ask the members or the store, or
                        // act, are awaited (under the idle timeout); the
                        // others answer from snapshots at once.
                        let resp = match awaited(&node, &req) {
                            Some(fut) => fut,
                            None => {
                                let r = respond(&node, req.method(), req.uri());
                                Box::pin(std::future::ready(r))
                            }
                        };
                        async move { Ok::<_, Infallible>(resp.await) }
                    });
                    // Without a timer hyper silently drops its header read
                    // timeout.
                    let _ = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(limits.header_read_timeout)
                        .serve_connection(io, svc)
                        .await;
                });
            }
        });
        Server { addr, task }
    }

    /// The address it listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// A stream that fails with `TimedOut` once no byte has moved either way
/// for `limit` while a read or a write waits.
struct Idle<S> {
    inner: S,
    limit: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Idle<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Idle {
            inner,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        }
    }

    fn moved(&mut self) {
        let next = tokio::time::Instant::now() + self.limit;
        self.deadline.as_mut().reset(next);
    }

    /// A wait: an error once the deadline has passed.
    fn waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "admin connection idle",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Idle<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.waiting(cx),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Idle<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.waiting(cx),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, data) {
            Poll::Ready(r) => {
                if matches!(r, Ok(n) if n > 0) {
                    this.moved();
                }
                Poll::Ready(r)
            }
            Poll::Pending => this.waiting(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.waiting(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_shutdown(cx) {
            Poll::Pending => this.waiting(cx),
            ready => ready,
        }
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
fn respond(node: &Weak<dyn Source>, method: &Method, uri: &hyper::Uri) -> Response<Full<Bytes>> {
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
    let node: &dyn Source = &*node;
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
        "/admin/state" => json(StatusCode::OK, &views::state(node)),
        "/admin/discovery" => json(StatusCode::OK, &views::discovery(node)),
        "/admin/placement" => {
            let (actor, id) = match actor_and_id(query) {
                Ok(q) => q,
                Err(refused) => return refused,
            };
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
                 /admin/activations, /admin/placement, /admin/discovery, /admin/state, \
                 /admin/reminders, /admin/cluster, /admin/actor, /admin/actors, /metrics, \
                 /livez, /readyz (and POST /admin/drain)\n"
            ),
        ),
    }
}

type Answer = crate::util::BoxFuture<'static, Response<Full<Bytes>>>;

/// The routes answered by a future: those that ask the members
/// (`/admin/cluster`, `/admin/actor`, `/admin/actors`), read the store
/// (`/admin/reminders`) or act (`POST /admin/drain`). `None`: another
/// route, answered by [`respond`].
fn awaited<B>(node: &Weak<dyn Source>, req: &Request<B>) -> Option<Answer> {
    let ready = |r| -> Option<Answer> { Some(Box::pin(std::future::ready(r))) };
    let path = req.uri().path();
    let query = req.uri().query().unwrap_or("");
    let read = req.method() == Method::GET || req.method() == Method::HEAD;
    match path {
        "/admin/drain" if req.method() == Method::POST => {
            let presented = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .map(|v| v.as_bytes())
                .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
                .map(|v| v[7..].to_vec());
            return ready(drain(node, presented.as_deref()));
        }
        "/admin/drain" => {
            return ready(text(
                StatusCode::METHOD_NOT_ALLOWED,
                "POST /admin/drain with Authorization: Bearer <token>\n",
            ))
        }
        _ if !read => return None,
        "/admin/reminders" => return Some(reminders(node, query)),
        "/admin/cluster" | "/admin/actor" | "/admin/actors" => {}
        _ => return None,
    }
    let Some(node) = node.upgrade() else {
        return ready(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node has stopped\n",
        ));
    };
    match path {
        "/admin/cluster" => Some(Box::pin(async move {
            json(StatusCode::OK, &cluster::cluster(node).await)
        })),
        "/admin/actor" => {
            let (actor, id) = match actor_and_id(query) {
                Ok((a, id)) => (a.to_owned(), id),
                Err(refused) => return ready(refused),
            };
            Some(Box::pin(async move {
                match cluster::actor(node, &actor, &id).await {
                    Ok(v) => json(StatusCode::OK, &v),
                    Err(e) => text(StatusCode::NOT_FOUND, e),
                }
            }))
        }
        _ => {
            let (mut actor, mut after, mut limit) = (None, String::new(), cluster::DEFAULT_LIMIT);
            for pair in query.split('&').filter(|p| !p.is_empty()) {
                match pair.split_once('=') {
                    Some(("actor", a)) if !a.is_empty() => actor = Some(percent_decode(a)),
                    Some(("after", a)) => after = percent_decode(a),
                    Some(("limit", n)) => match n.parse::<usize>() {
                        Ok(n) if (1..=cluster::MAX_LIMIT).contains(&n) => limit = n,
                        _ => {
                            return ready(text(
                                StatusCode::BAD_REQUEST,
                                format!("limit must be 1 to {}\n", cluster::MAX_LIMIT),
                            ))
                        }
                    },
                    _ => {
                        return ready(text(
                            StatusCode::BAD_REQUEST,
                            format!(
                            "unknown query parameter {pair:?}: actor=TYPE[&after=ID][&limit=N]\n"
                        ),
                        ))
                    }
                }
            }
            let Some(actor) = actor else {
                return ready(text(
                    StatusCode::BAD_REQUEST,
                    "give actor=TYPE[&after=ID][&limit=N]\n",
                ));
            };
            Some(Box::pin(async move {
                json(
                    StatusCode::OK,
                    &cluster::actors(node, &actor, &after, limit).await,
                )
            }))
        }
    }
}

/// `POST /admin/drain`: starts draining the node (`Node::drain`) if the
/// request carries the write token; answers at once (202) with the
/// node's state, while the drain runs on.
fn drain(node: &Weak<dyn Source>, presented: Option<&[u8]>) -> Response<Full<Bytes>> {
    let Some(node) = node.upgrade() else {
        return text(StatusCode::SERVICE_UNAVAILABLE, "the node has stopped\n");
    };
    match (node.token_matches(presented.unwrap_or_default()), presented) {
        (None, _) => {
            return text(
                StatusCode::FORBIDDEN,
                "write actions are off: this node has no admin token (NodeBuilder::admin_token)\n",
            )
        }
        (Some(true), Some(_)) => {}
        (Some(_), _) => {
            let mut r = text(
                StatusCode::UNAUTHORIZED,
                "POST /admin/drain needs Authorization: Bearer <the node's admin token>\n",
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                hyper::header::HeaderValue::from_static("Bearer"),
            );
            return r;
        }
    }
    let id = node.id().to_owned();
    match node.start_drain() {
        Ok(was) => {
            tracing::info!(node = %id, was, "drain asked for on the admin endpoint");
            let state = if was == "serving" { "draining" } else { was };
            json(
                StatusCode::ACCEPTED,
                &serde_json::json!({"node": id, "state": state, "was": was}),
            )
        }
        Err(e) => text(StatusCode::CONFLICT, format!("cannot drain: {e}\n")),
    }
}

/// Whether `a` and `b` are equal, in time that depends on their lengths
/// only (the admin token's check).
pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `/admin/reminders?actor=TYPE&id=ID`: the actor's reminders, from the
/// store (within 5 s).
fn reminders(
    node: &Weak<dyn Source>,
    query: &str,
) -> crate::util::BoxFuture<'static, Response<Full<Bytes>>> {
    let ready = |r| -> crate::util::BoxFuture<'static, Response<Full<Bytes>>> {
        Box::pin(std::future::ready(r))
    };
    let (actor, id) = match actor_and_id(query) {
        Ok(q) => q,
        Err(refused) => return ready(refused),
    };
    let Some(node) = node.upgrade() else {
        return ready(text(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node has stopped\n",
        ));
    };
    let listing = node.reminders(actor, &id);
    Box::pin(async move {
        match tokio::time::timeout(Duration::from_secs(5), listing).await {
            Ok(Ok(v)) => json(StatusCode::OK, &v),
            Ok(Err(e)) => text(StatusCode::NOT_FOUND, format!("{e}\n")),
            Err(_) => text(
                StatusCode::GATEWAY_TIMEOUT,
                "the state store did not answer within 5 s\n",
            ),
        }
    })
}

/// The `actor=TYPE&id=ID` of a query (the id decoded), or the 400 that
/// says what is wrong with it.
#[allow(clippy::result_large_err)]
fn actor_and_id(query: &str) -> Result<(&str, String), Response<Full<Bytes>>> {
    let (mut actor, mut id) = (None, None);
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("actor", a)) if !a.is_empty() => actor = Some(a),
            Some(("id", i)) => id = Some(i),
            _ => {
                return Err(text(
                    StatusCode::BAD_REQUEST,
                    format!("unknown query parameter {pair:?}: actor=TYPE&id=ID\n"),
                ))
            }
        }
    }
    match (actor, id) {
        (Some(actor), Some(id)) => Ok((actor, percent_decode(id))),
        _ => Err(text(StatusCode::BAD_REQUEST, "give actor=TYPE&id=ID\n")),
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
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A read that waits, and a write the peer does not drain, fail once
    /// no byte has moved for the limit; traffic pushes the deadline on.
    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_reading_and_writing() {
        let limit = Duration::from_secs(30);
        let (near, mut far) = tokio::io::duplex(64);
        let mut idle = super::Idle::new(near, limit);
        let start = tokio::time::Instant::now();
        // Bytes at 20 s push the deadline to 50 s.
        let feeder = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(20)).await;
            far.write_all(b"x").await.unwrap();
            far
        });
        let mut buf = [0u8; 8];
        assert_eq!(idle.read(&mut buf).await.unwrap(), 1);
        let far = feeder.await.unwrap();
        let err = idle.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), Duration::from_secs(50));

        // A writer whose peer never reads: the buffer fills, then waits.
        let (near, _far_kept) = tokio::io::duplex(64);
        let mut idle = super::Idle::new(near, limit);
        let start = tokio::time::Instant::now();
        let err = idle.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), limit);
        drop(far);
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("player-17"), "player-17");
        assert_eq!(super::percent_decode("a%20b+c%2Fd"), "a b c/d");
        assert_eq!(super::percent_decode("100%"), "100%");
        assert_eq!(super::percent_decode("%zz%4"), "%zz%4");
        assert_eq!(super::percent_decode("%C3%A9"), "\u{e9}");
    }
}
