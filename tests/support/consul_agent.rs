//! A Consul test agent: a real HTTP server (hyper, port 0) per simulated
//! agent, all sharing one catalog (`consul_catalog.rs`), reproducing the
//! documented behaviour of `shared/reference/consul-api.md` section 10:
//! status codes and text/plain error bodies, blocking queries on an index
//! with `wait` and jitter, hash blocking on `/v1/agent/service/:id`, ACL
//! tokens from all three sources with 403s, and test hooks (agent
//! restart, index reset, agent down and up, injected failures, a request
//! log). TTLs run on a ticker every 10 ms, and so do TCP checks when due
//! (real dials). Connect (section 6 and 10, items 2, 8, 11): sidecar
//! expansion (in the catalog), `/v1/health/connect/<name>`, the CA roots
//! and leaves, `authorize` backed by intentions (`*` wildcards, the
//! documented precedence, a default policy), the intentions `exact` API
//! (in ACL mode the leaf and `authorize` need `service:write` on the
//! service, as Consul's do; the roots need no token);
//! and `/v1/agent/checks`, blocking `/v1/catalog/services`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::consul_catalog::{parse_go_duration, ApiError, Catalog, Status, TimeScale};
use crate::consul_kv::{self, Kv};
use crate::consul_servers::{ConfigEntries, Login, Logins};

/// An ACL token of the test agent.
#[derive(Debug, Clone)]
pub struct Token {
    pub accessor: String,
    /// Service names it may write, `"*"` for all.
    pub write: Vec<String>,
}

/// ACL mode: default policy deny, these tokens known.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    pub tokens: HashMap<String, Token>,
}

/// One request as the agent saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub agent: String,
    pub method: String,
    /// Path without `/v1/`, e.g. `agent/check/pass/service:x`.
    pub path: String,
    pub query: String,
    /// The ACL token it carried (any of the three sources).
    pub token: Option<String>,
    pub at: Instant,
}

struct Shared {
    catalog: Mutex<Catalog>,
    /// Bumped on every change, so blocked queries look again.
    changed: watch::Sender<u64>,
    acl: Mutex<Option<Acl>>,
    fail: Mutex<Option<(u16, String)>>,
    log: Mutex<Vec<Logged>>,
    /// Bumped on every request logged.
    logged: watch::Sender<usize>,
    /// The Connect CA (`agent/connect/ca/{roots,leaf}`).
    ca: Mutex<ConnectCa>,
    /// Sessions, KV and txn (`consul_kv`).
    kv: Mutex<Kv>,
    /// Auth methods and the tokens `/v1/acl/login` minted.
    logins: Mutex<Logins>,
    /// Config entries (`/v1/config`).
    config: Mutex<ConfigEntries>,
    /// Seconds added to the `Date` header (a skewed server clock).
    clock_offset: Mutex<i64>,
}

/// The test agent's Connect CA: rcgen certificates in Consul's profile
/// (see `pki`), one index for roots and leaves, leaves issued on first
/// request and kept until a rotation.
struct ConnectCa {
    td: String,
    /// Active root last; inactive ones kept, as Consul lists them.
    roots: Vec<crate::pki::Ca>,
    leaves: HashMap<String, (crate::pki::Leaf, u64)>,
    index: u64,
    /// (source, destination) -> allowed, either side possibly `*`.
    intentions: HashMap<(String, String), bool>,
    /// The default intention policy; `None`: the ACL default policy
    /// (allow with ACLs off, deny in ACL mode).
    default_allow: Option<bool>,
}

impl ConnectCa {
    /// Whether `source` may connect to `destination`, and why, by the
    /// documented precedence (connect/intentions "Precedence and match
    /// order", the default namespace's rows): exact => exact (9), `*` =>
    /// exact (8), exact => `*` (6), `*` => `*` (5), else the default.
    fn decide(&self, source: &str, destination: &str, acl_mode: bool) -> (bool, String) {
        for (s, d, precedence) in [
            (source, destination, 9),
            ("*", destination, 8),
            (source, "*", 6),
            ("*", "*", 5),
        ] {
            if let Some(&allow) = self.intentions.get(&(s.to_owned(), d.to_owned())) {
                return (
                    allow,
                    format!("Matched L4 intention: {s} => {d} (Precedence: {precedence})"),
                );
            }
        }
        (
            self.default_allow.unwrap_or(!acl_mode),
            "Default behavior configured by ACLs".to_owned(),
        )
    }
}

impl ConnectCa {
    fn new() -> ConnectCa {
        let td = "11111111-2222-3333-4444-555555555555.consul".to_owned();
        ConnectCa {
            roots: vec![crate::pki::Ca::new(&td)],
            td,
            leaves: HashMap::new(),
            index: 10,
            intentions: HashMap::new(),
            default_allow: None,
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn notify(&self) {
        self.changed.send_modify(|v| *v += 1);
    }
}

struct Agent {
    name: String,
    addr: SocketAddr,
    server: Mutex<Option<JoinHandle<()>>>,
}

/// Several simulated Consul agents over one catalog.
pub struct TestConsul {
    shared: Arc<Shared>,
    agents: Vec<Agent>,
    ticker: JoinHandle<()>,
}

impl Drop for TestConsul {
    fn drop(&mut self) {
        self.ticker.abort();
        for a in &self.agents {
            if let Some(s) = lock(&a.server).take() {
                s.abort();
            }
        }
    }
}

impl TestConsul {
    /// Starts `agents` simulated agents (nodes `agent-0`, `agent-1`, ...)
    /// on `127.0.0.1:0`.
    pub async fn start(agents: usize, time: TimeScale) -> TestConsul {
        let addrs = vec!["127.0.0.1:0".to_owned(); agents];
        Self::start_at(&addrs, time)
            .await
            .expect("bind the test agents")
    }

    /// Starts one simulated agent per address.
    pub async fn start_at(addrs: &[String], time: TimeScale) -> std::io::Result<TestConsul> {
        let mut catalog = Catalog::new(time);
        for i in 0..addrs.len() {
            catalog.add_node(&format!("agent-{i}"), "127.0.0.1");
        }
        let shared = Arc::new(Shared {
            catalog: Mutex::new(catalog),
            changed: watch::channel(0).0,
            acl: Mutex::new(None),
            fail: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            logged: watch::channel(0).0,
            ca: Mutex::new(ConnectCa::new()),
            kv: Mutex::new(Kv::new(time.ttl)),
            logins: Mutex::new(Logins::default()),
            config: Mutex::new(ConfigEntries::default()),
            clock_offset: Mutex::new(0),
        });
        let mut list = Vec::new();
        for (i, at) in addrs.iter().enumerate() {
            let name = format!("agent-{i}");
            let listener = tokio::net::TcpListener::bind(at.as_str()).await?;
            let addr = listener.local_addr()?;
            let server = tokio::spawn(serve(listener, shared.clone(), name.clone()));
            list.push(Agent {
                name,
                addr,
                server: Mutex::new(Some(server)),
            });
        }
        let weak = Arc::downgrade(&shared);
        let ticker = tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(10));
            loop {
                every.tick().await;
                let Some(shared) = weak.upgrade() else { return };
                let (changed, due) = {
                    let mut c = lock(&shared.catalog);
                    let now = Instant::now();
                    (c.tick(now), c.due_tcp_checks(now))
                };
                let changed =
                    consul_kv::tick(&shared.kv, &shared.catalog, Instant::now()) || changed;
                if changed {
                    shared.notify();
                }
                for (node, check, target) in due {
                    let weak = Arc::downgrade(&shared);
                    tokio::spawn(async move {
                        let result = tcp_check(&target).await;
                        let Some(shared) = weak.upgrade() else { return };
                        let changed =
                            lock(&shared.catalog).tcp_result(&node, &check, result, Instant::now());
                        if changed {
                            shared.notify();
                        }
                    });
                }
            }
        });
        Ok(TestConsul {
            shared,
            agents: list,
            ticker,
        })
    }

    /// `http://127.0.0.1:<port>` of agent `i`.
    pub fn url(&self, i: usize) -> String {
        format!("http://{}", self.agents[i].addr)
    }

    /// The node name of agent `i`.
    pub fn node(&self, i: usize) -> &str {
        &self.agents[i].name
    }

    /// Runs `f` on the catalog (and wakes blocked queries afterwards).
    pub fn with_catalog<T>(&self, f: impl FnOnce(&mut Catalog) -> T) -> T {
        let out = f(&mut lock(&self.shared.catalog));
        self.shared.notify();
        out
    }

    /// Runs `f` on the sessions and KV (`consul_kv`), e.g. to compare the
    /// lock table with the nodes' activations, and wakes blocked queries.
    pub fn with_kv<T>(&self, f: impl FnOnce(&mut Kv) -> T) -> T {
        let out = f(&mut lock(&self.shared.kv));
        self.shared.notify();
        out
    }

    /// The Connect CA's trust domain.
    pub fn trust_domain(&self) -> String {
        lock(&self.shared.ca).td.clone()
    }

    /// Hook: an intention from service `source` to `destination` (either
    /// may be `*`), as `PUT /v1/connect/intentions/exact` writes one.
    pub fn intention(&self, source: &str, destination: &str, allow: bool) {
        lock(&self.shared.ca)
            .intentions
            .insert((source.to_owned(), destination.to_owned()), allow);
    }

    /// Hook: the default intention policy (`Some(false)`: deny what no
    /// intention allows), or `None` for the ACL default policy (allow with
    /// ACLs off, deny in ACL mode).
    pub fn intention_default(&self, allow: Option<bool>) {
        lock(&self.shared.ca).default_allow = allow;
    }

    /// Hook: `source` and `destination` as the agent's authorize endpoint
    /// decides them: allowed, and the reason.
    pub fn check_intention(&self, source: &str, destination: &str) -> (bool, String) {
        let acl_mode = lock(&self.shared.acl).is_some();
        lock(&self.shared.ca).decide(source, destination, acl_mode)
    }

    /// Hook: the CA renews the leaf of `service` (a new key and serial).
    pub fn rotate_leaf(&self, service: &str) {
        let mut ca = lock(&self.shared.ca);
        ca.index += 1;
        ca.leaves.remove(service);
        drop(ca);
        self.shared.notify();
    }

    /// Hook: a new active root; the old one stays listed (inactive) and
    /// every leaf is reissued by the new root.
    pub fn rotate_root(&self) {
        let mut ca = lock(&self.shared.ca);
        let td = ca.td.clone();
        ca.roots.push(crate::pki::Ca::new(&td));
        ca.index += 1;
        ca.leaves.clear();
        drop(ca);
        self.shared.notify();
    }

    /// Hook: agent `i` restarted in `-dev` mode and forgot its registrations.
    pub fn restart_agent(&self, i: usize) {
        let name = self.agents[i].name.clone();
        self.with_catalog(|c| c.restart_agent(&name));
    }

    /// Hook: the index goes backwards to `to`, as under `?stale`.
    pub fn reset_index(&self, to: u64) {
        self.with_catalog(|c| c.reset_index(to));
    }

    /// Hook: agent `i` goes down (its port refuses connections, open
    /// connections and blocked queries are cut); the catalog lives on.
    pub fn stop_agent(&self, i: usize) {
        if let Some(s) = lock(&self.agents[i].server).take() {
            s.abort();
        }
        // Its serfHealth fails: sessions that list it are invalidated.
        lock(&self.shared.kv).set_node_down(&self.agents[i].name, true);
    }

    /// Hook: agent `i` comes back on the same port.
    pub async fn start_agent(&self, i: usize) {
        let a = &self.agents[i];
        let listener = tokio::net::TcpListener::bind(a.addr)
            .await
            .expect("bind the test agent again");
        let server = tokio::spawn(serve(listener, self.shared.clone(), a.name.clone()));
        *lock(&a.server) = Some(server);
        lock(&self.shared.kv).set_node_down(&a.name, false);
    }

    /// Hook: every request answers this status and body, or normally again.
    pub fn fail_with(&self, failure: Option<(u16, &str)>) {
        *lock(&self.shared.fail) = failure.map(|(c, b)| (c, b.to_owned()));
    }

    /// Switches ACL mode on (default deny) with these tokens, or off.
    pub fn set_acl(&self, acl: Option<Acl>) {
        *lock(&self.shared.acl) = acl;
    }

    /// ACL mode as consul-k8s sets it up: token `controller` may write
    /// everything (the endpoints controller's), and auth method `method`
    /// logs `jwt-<name>` in as service account `service`, for each of
    /// `names` (the pods' service-account tokens).
    pub fn acl_like_consul_k8s(
        &self,
        controller: &str,
        method: &str,
        service: &str,
        names: &[&str],
    ) {
        let mut acl = Acl::default();
        acl.tokens.insert(
            controller.to_owned(),
            Token {
                accessor: format!("acc-{controller}"),
                write: vec!["*".into()],
            },
        );
        self.set_acl(Some(acl));
        let bearers: Vec<String> = names.iter().map(|n| format!("jwt-{n}")).collect();
        let pairs: Vec<(&str, &str)> = bearers.iter().map(|b| (b.as_str(), service)).collect();
        self.set_auth_method(method, &pairs);
    }

    /// Adds (or replaces) auth method `name` for `/v1/acl/login`: each
    /// `(bearer token, service account)` pair logs in as that service.
    pub fn set_auth_method(&self, name: &str, bearers: &[(&str, &str)]) {
        lock(&self.shared.logins).methods.insert(
            name.to_owned(),
            bearers
                .iter()
                .map(|(b, sa)| ((*b).to_owned(), (*sa).to_owned()))
                .collect(),
        );
    }

    /// The tokens logins minted and still alive: secret and login.
    pub fn logins(&self) -> Vec<(String, Login)> {
        lock(&self.shared.logins)
            .minted
            .iter()
            .map(|(s, l)| (s.clone(), l.clone()))
            .collect()
    }

    /// Hook: destroys the login tokens whose login `Meta[key]` is `value`,
    /// as consul-k8s's endpoints controller does when it deregisters a
    /// pod's instance (`pod` meta). Returns how many went.
    pub fn revoke_logins(&self, key: &str, value: &str) -> usize {
        let mut l = lock(&self.shared.logins);
        let before = l.minted.len();
        l.minted
            .retain(|_, login| login.meta.get(key).and_then(Value::as_str) != Some(value));
        before - l.minted.len()
    }

    /// Hook: the agent's clock runs `secs` ahead (behind when negative),
    /// as its `Date` header shows.
    pub fn skew_clock(&self, secs: i64) {
        *lock(&self.shared.clock_offset) = secs;
    }

    /// The requests seen so far.
    pub fn log(&self) -> Vec<Logged> {
        lock(&self.shared.log).clone()
    }

    /// When requests whose path starts with `prefix` arrived at agent `i`.
    pub fn requests(&self, i: usize, prefix: &str) -> Vec<Instant> {
        let name = &self.agents[i].name;
        lock(&self.shared.log)
            .iter()
            .filter(|l| &l.agent == name && l.path.starts_with(prefix))
            .map(|l| l.at)
            .collect()
    }

    /// Waits until agent `i` has seen `n` requests whose path starts with
    /// `prefix` since `since`, and returns when they arrived.
    pub async fn wait_requests(
        &self,
        i: usize,
        prefix: &str,
        since: Instant,
        n: usize,
    ) -> Vec<Instant> {
        let mut rx = self.shared.logged.subscribe();
        loop {
            let seen: Vec<Instant> = self
                .requests(i, prefix)
                .into_iter()
                .filter(|at| *at > since)
                .collect();
            if seen.len() >= n {
                return seen;
            }
            if rx.changed().await.is_err() {
                return seen;
            }
        }
    }

    /// Waits until some logged request satisfies `f`, re-checking on every
    /// new request.
    pub async fn wait_logged(&self, mut f: impl FnMut(&Logged) -> bool) {
        let mut rx = self.shared.logged.subscribe();
        loop {
            if lock(&self.shared.log).iter().any(&mut f) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }

    /// Waits until `f` holds of the catalog, re-checking on every change.
    pub async fn until(&self, mut f: impl FnMut(&Catalog) -> bool) {
        let mut rx = self.shared.changed.subscribe();
        loop {
            if f(&lock(&self.shared.catalog)) {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}

/// A TCP check: connect within 10 s (Consul's default timeout), then
/// close.
async fn tcp_check(target: &str) -> Result<(), String> {
    match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect(target),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connect: {e}")),
        Err(_) => Err("i/o timeout".into()),
    }
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<Shared>, agent: String) {
    // Dropping the set (when this task is aborted) cuts every connection.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let (shared, agent) = (shared.clone(), agent.clone());
                conns.spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let (shared, agent) = (shared.clone(), agent.clone());
                        async move { Ok::<_, Infallible>(handle(&shared, &agent, req).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// A parsed query string (`?passing` gives `passing -> ""`).
fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (decode(k), decode(v)),
            None => (decode(p), String::new()),
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Go's strconv.ParseBool, and bare `?passing`.
fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "" | "1" | "t" | "T" | "true" | "TRUE" | "True" => Some(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Some(false),
        _ => None,
    }
}

struct Reply {
    status: u16,
    body: Bytes,
    json: bool,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn ok_empty() -> Reply {
        Reply {
            status: 200,
            body: Bytes::new(),
            json: false,
            headers: Vec::new(),
        }
    }

    fn json(v: &Value) -> Reply {
        Reply {
            status: 200,
            body: Bytes::from(serde_json::to_vec(v).expect("json")),
            json: true,
            headers: Vec::new(),
        }
    }

    fn error(e: ApiError) -> Reply {
        Reply {
            status: e.0,
            body: Bytes::from(e.1),
            json: false,
            headers: Vec::new(),
        }
    }
}

fn token_of(req: &Request<hyper::body::Incoming>, query: &[(String, String)]) -> Option<String> {
    if let Some((_, t)) = query.iter().find(|(k, _)| k == "token") {
        return Some(t.clone());
    }
    let h = req.headers();
    if let Some(t) = h.get("X-Consul-Token").and_then(|v| v.to_str().ok()) {
        return Some(t.to_owned());
    }
    h.get("Authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

/// ACL: `write` names the service a write needs `service:write` on.
fn authorize(shared: &Shared, token: Option<&str>, write: Option<&str>) -> Result<(), ApiError> {
    let acl = lock(&shared.acl);
    let Some(acl) = acl.as_ref() else {
        return Ok(());
    };
    let minted = token.and_then(|t| {
        lock(&shared.logins).minted.get(t).map(|l| Token {
            accessor: l.accessor.clone(),
            write: vec![l.service.clone(), format!("{}-sidecar-proxy", l.service)],
        })
    });
    let who = match token {
        Some(t) => match acl.tokens.get(t).or(minted.as_ref()) {
            None => return Err(ApiError(403, "ACL not found".into())),
            Some(tok) => {
                if let Some(svc) = write {
                    if !tok.write.iter().any(|w| w == "*" || w == svc) {
                        return Err(ApiError(
                            403,
                            format!(
                                "Permission denied: token with AccessorID '{}' lacks permission 'service:write' on {svc:?}",
                                tok.accessor
                            ),
                        ));
                    }
                }
                return Ok(());
            }
        },
        None => "anonymous token",
    };
    match write {
        Some(svc) => Err(ApiError(
            403,
            format!("Permission denied: {who} lacks permission 'service:write' on {svc:?}"),
        )),
        None => Ok(()),
    }
}

fn content_hash(v: &Value) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.to_string().hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Up to `wait/16` of jitter, as Consul adds.
fn jitter(wait: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new().hash_one(0u8);
    wait / 16 * (r % 1000) as u32 / 1000
}

/// `wait`: default 5m, capped at 10m, `0` means the default.
fn wait_of(query: &[(String, String)]) -> Result<Duration, ApiError> {
    let Some((_, w)) = query.iter().find(|(k, _)| k == "wait") else {
        return Ok(Duration::from_secs(300));
    };
    let d =
        parse_go_duration(w).ok_or_else(|| ApiError(400, format!("Invalid wait time: {w:?}")))?;
    Ok(if d.is_zero() {
        Duration::from_secs(300)
    } else {
        d.min(Duration::from_secs(600))
    })
}

fn index_of(query: &[(String, String)]) -> Result<u64, ApiError> {
    match query.iter().find(|(k, _)| k == "index") {
        None => Ok(0),
        Some((_, v)) => v
            .parse()
            .map_err(|_| ApiError(400, format!("Invalid index: {v:?}"))),
    }
}

async fn handle(
    shared: &Shared,
    agent: &str,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let query_str = req.uri().query().unwrap_or("").to_owned();
    let query = parse_query(&query_str);
    let method = req.method().clone();
    let rel = path.strip_prefix("/v1/").unwrap_or(&path).to_owned();
    let token = token_of(&req, &query);
    {
        let mut log = lock(&shared.log);
        if log.len() >= 100_000 {
            log.drain(..50_000); // a long-running agent (the example) stays bounded
        }
        log.push(Logged {
            agent: agent.to_owned(),
            method: method.to_string(),
            path: rel.clone(),
            query: query_str,
            token: token.clone(),
            at: Instant::now(),
        });
    }
    shared.logged.send_modify(|n| *n += 1);
    let acl_mode = lock(&shared.acl).is_some();
    let injected = lock(&shared.fail).clone();
    let reply = match injected {
        Some((code, body)) => Reply::error(ApiError(code, body)),
        None => {
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    return finish(
                        Reply::error(ApiError(400, format!("Request decode failed: {e}"))),
                        acl_mode,
                    )
                }
            };
            route(
                shared,
                agent,
                &method,
                &rel,
                &query,
                token.as_deref(),
                &body,
            )
            .await
            .unwrap_or_else(Reply::error)
        }
    };
    let offset = *lock(&shared.clock_offset);
    let mut resp = finish(reply, acl_mode);
    if offset != 0 {
        let now = std::time::SystemTime::now();
        let at = if offset > 0 {
            now + Duration::from_secs(offset.unsigned_abs())
        } else {
            now - Duration::from_secs(offset.unsigned_abs())
        };
        if let Ok(v) = hyper::header::HeaderValue::from_str(&httpdate::fmt_http_date(at)) {
            resp.headers_mut().insert(hyper::header::DATE, v);
        }
    }
    resp
}

fn finish(reply: Reply, acl_mode: bool) -> Response<Full<Bytes>> {
    let mut resp = Response::builder()
        .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        .header(
            "Content-Type",
            if reply.json {
                "application/json"
            } else {
                "text/plain; charset=utf-8"
            },
        )
        .header(
            "X-Consul-Default-ACL-Policy",
            if acl_mode { "deny" } else { "allow" },
        );
    for (k, v) in reply.headers {
        resp = resp.header(k, v);
    }
    resp.body(Full::new(reply.body)).expect("response")
}

fn method_not_allowed(method: &Method, allow: &str) -> Result<Reply, ApiError> {
    let mut r = Reply::error(ApiError(405, format!("method {method} not allowed")));
    r.headers.push(("Allow", allow.to_owned()));
    Ok(r)
}

async fn route(
    shared: &Shared,
    agent: &str,
    method: &Method,
    rel: &str,
    query: &[(String, String)],
    token: Option<&str>,
    body: &[u8],
) -> Result<Reply, ApiError> {
    if let Some(out) = consul_kv::route(
        &shared.kv,
        &shared.catalog,
        &shared.changed,
        agent,
        method,
        rel,
        query,
        body,
    )
    .await
    {
        return out.map(|r| Reply {
            status: r.status,
            body: r.body,
            json: r.json,
            headers: r.headers,
        });
    }
    let now = Instant::now();
    if rel == "agent/connect/authorize" {
        if method != Method::POST {
            return method_not_allowed(method, "POST");
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError(400, format!("Request decode failed: {e}")))?;
        let target = v["Target"].as_str().unwrap_or("");
        if target.is_empty() {
            return Err(ApiError(400, "Target service must be specified".into()));
        }
        // Consul: `service:write` on the target.
        authorize(shared, token, Some(target))?;
        let uri = v["ClientCertURI"].as_str().unwrap_or("");
        let Some((_, source)) = uri.rsplit_once("/svc/") else {
            return Err(ApiError(
                400,
                "ClientCertURI not a valid Connect identifier".into(),
            ));
        };
        let acl_mode = lock(&shared.acl).is_some();
        let (authorized, reason) = lock(&shared.ca).decide(source, target, acl_mode);
        return Ok(Reply::json(
            &json!({"Authorized": authorized, "Reason": reason}),
        ));
    }
    if rel == "connect/intentions/exact" {
        return intention_exact(shared, method, query, body);
    }
    if let Some(name) = rel.strip_prefix("health/connect/") {
        if method != Method::GET {
            return method_not_allowed(method, "GET");
        }
        authorize(shared, token, None)?;
        return health_connect(shared, name, query).await;
    }
    if rel == "agent/checks" {
        if method != Method::GET {
            return method_not_allowed(method, "GET");
        }
        authorize(shared, token, None)?;
        let v = lock(&shared.catalog).agent_checks(agent);
        return Ok(Reply::json(&v));
    }
    if rel == "catalog/services" {
        if method != Method::GET {
            return method_not_allowed(method, "GET");
        }
        authorize(shared, token, None)?;
        return catalog_services(shared, query).await;
    }
    if let Some(what) = rel.strip_prefix("agent/connect/ca/") {
        if method != Method::GET {
            return method_not_allowed(method, "GET");
        }
        // Consul: the leaf needs `service:write` on the service; the
        // roots need no ACL.
        if let Some(service) = what.strip_prefix("leaf/") {
            authorize(shared, token, Some(service))?;
        }
        return connect_ca(shared, what, query).await;
    }
    if rel == "agent/service/register" {
        if method != Method::PUT {
            return method_not_allowed(method, "PUT");
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError(400, format!("Request decode failed: {e}")))?;
        let name = v
            .as_object()
            .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("name")))
            .and_then(|(_, n)| n.as_str())
            .unwrap_or("")
            .to_owned();
        if !name.is_empty() {
            authorize(shared, token, Some(&name))?;
        }
        let replace = query
            .iter()
            .find(|(k, _)| k == "replace-existing-checks")
            .is_some_and(|(_, v)| parse_bool(v) == Some(true));
        lock(&shared.catalog).register(agent, &v, replace, now)?;
        shared.notify();
        return Ok(Reply::ok_empty());
    }
    if let Some(id) = rel.strip_prefix("agent/service/deregister/") {
        if method != Method::PUT {
            return method_not_allowed(method, "PUT");
        }
        let name = {
            let c = lock(&shared.catalog);
            c.nodes
                .get(agent)
                .and_then(|n| n.services.get(id))
                .map(|s| s.name.clone())
        };
        if let Some(name) = &name {
            authorize(shared, token, Some(name))?;
        } else {
            authorize(shared, token, None)?;
        }
        lock(&shared.catalog).deregister(agent, id)?;
        shared.notify();
        return Ok(Reply::ok_empty());
    }
    if rel == "agent/services" {
        if method != Method::GET {
            return method_not_allowed(method, "GET");
        }
        authorize(shared, token, None)?;
        let v = lock(&shared.catalog).agent_services(agent);
        return Ok(Reply::json(&v));
    }
    if let Some(id) = rel.strip_prefix("agent/service/") {
        if method != Method::GET {
            return method_not_allowed(method, "GET");
        }
        authorize(shared, token, None)?;
        return agent_service(shared, agent, id, query).await;
    }
    for (verb, status) in [
        ("pass", Status::Passing),
        ("warn", Status::Warning),
        ("fail", Status::Critical),
    ] {
        if let Some(id) = rel.strip_prefix(&format!("agent/check/{verb}/")) {
            if method != Method::PUT {
                return method_not_allowed(method, "PUT");
            }
            let note = query
                .iter()
                .find(|(k, _)| k == "note")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            return update_check(shared, agent, id, status, &note, token, now);
        }
    }
    if let Some(id) = rel.strip_prefix("agent/check/update/") {
        if method != Method::PUT {
            return method_not_allowed(method, "PUT");
        }
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError(400, format!("Request decode failed: {e}")))?;
        let s = v["Status"].as_str().unwrap_or("");
        let status = Status::parse(s)
            .ok_or_else(|| ApiError(400, format!("Invalid check status: '{s}'")))?;
        let output = v["Output"].as_str().unwrap_or("").to_owned();
        return update_check(shared, agent, id, status, &output, token, now);
    }
    if let Some(out) = servers_route(shared, method, rel, query, token, body, now) {
        return out;
    }
    if let Some(name) = rel.strip_prefix("health/service/") {
        if method != Method::GET {
            return method_not_allowed(method, "GET");
        }
        authorize(shared, token, None)?;
        return health_service(shared, name, query).await;
    }
    Err(ApiError(404, String::new()))
}

/// The servers' endpoints (`consul_servers`): catalog register and
/// deregister, ACL login and logout, config entries. `None`: not one of
/// them.
fn servers_route(
    shared: &Shared,
    method: &Method,
    rel: &str,
    query: &[(String, String)],
    token: Option<&str>,
    body: &[u8],
    now: Instant,
) -> Option<Result<Reply, ApiError>> {
    let decode = |body: &[u8]| {
        serde_json::from_slice::<Value>(body)
            .map_err(|e| ApiError(400, format!("Request decode failed: {e}")))
    };
    let out = match rel {
        // The Raft leader's address: what `consul info` and health checks
        // of the servers read; no ACL.
        "status/leader" => {
            if *method != Method::GET {
                return Some(method_not_allowed(method, "GET"));
            }
            Ok(Reply::json(&json!("127.0.0.1:8300")))
        }
        // The token the request carries: 401 with ACLs off, 403 for an
        // unknown token, else its AccessorID, SecretID and identities.
        "acl/token/self" => (|| {
            if *method != Method::GET {
                return method_not_allowed(method, "GET");
            }
            let acl = lock(&shared.acl).clone();
            let Some(acl) = acl else {
                return Err(ApiError(401, "ACL support disabled".into()));
            };
            let Some(t) = token.filter(|t| !t.is_empty()) else {
                return Err(ApiError(403, "ACL not found".into()));
            };
            if let Some(tok) = acl.tokens.get(t) {
                return Ok(Reply::json(&json!({
                    "AccessorID": tok.accessor, "SecretID": t,
                    "Description": "", "Local": false,
                    "Policies": [{"Name": format!("write:{}", tok.write.join(","))}],
                })));
            }
            match lock(&shared.logins).minted.get(t) {
                Some(l) => Ok(Reply::json(&Logins::token_json(t, l))),
                None => Err(ApiError(403, "ACL not found".into())),
            }
        })(),
        // The servers' CA roots (`/v1/connect/ca/roots`), as the agent's.
        "connect/ca/roots" => {
            if *method != Method::GET {
                return Some(method_not_allowed(method, "GET"));
            }
            let ca = lock(&shared.ca);
            let active = ca.roots.len() - 1;
            Ok(Reply::json(&json!({
                "ActiveRootID": format!("root-{active}"),
                "TrustDomain": ca.td,
                "Roots": ca.roots.iter().enumerate().map(|(i, r)| json!({
                    "ID": format!("root-{i}"), "Name": "Consul CA Root Cert",
                    "RootCert": r.pem, "Active": i == active,
                })).collect::<Vec<_>>(),
            })))
        }
        "catalog/register" => (|| {
            if *method != Method::PUT {
                return method_not_allowed(method, "PUT");
            }
            let v = decode(body)?;
            // ACL first: service:write on the service (and a proxy's
            // destination); node:write when the node is new or changed.
            let svc = &v["Service"];
            for name in [&svc["Service"], &svc["Proxy"]["DestinationServiceName"]] {
                if let Some(name) = name.as_str().filter(|n| !n.is_empty()) {
                    authorize(shared, token, Some(name))?;
                }
            }
            let node = v["Node"].as_str().unwrap_or("");
            let node_known = lock(&shared.catalog).nodes.contains_key(node);
            if !node_known || v["SkipNodeUpdate"].as_bool() != Some(true) {
                authorize(shared, token, Some("*")).map_err(|_| node_write_denied(token, node))?;
            }
            lock(&shared.catalog).catalog_register(&v, now)?;
            shared.notify();
            Ok(Reply::json(&json!(true)))
        })(),
        "catalog/deregister" => (|| {
            if *method != Method::PUT {
                return method_not_allowed(method, "PUT");
            }
            let v = decode(body)?;
            let node = v["Node"].as_str().unwrap_or("");
            // node:write suffices; without it, service:write on the
            // service, else the service is unknown to this token.
            if authorize(shared, token, Some("*")).is_err() {
                let sid = v["ServiceID"].as_str().unwrap_or("");
                let name = lock(&shared.catalog).service_name(node, sid);
                match name {
                    Some(name) if !sid.is_empty() => authorize(shared, token, Some(&name))?,
                    _ => {
                        return Err(ApiError(500, format!("Unknown service ID '{sid}'")));
                    }
                }
            }
            lock(&shared.catalog).catalog_deregister(&v)?;
            shared.notify();
            Ok(Reply::json(&json!(true)))
        })(),
        "acl/login" | "acl/logout" => (|| {
            if *method != Method::POST {
                return method_not_allowed(method, "POST");
            }
            if lock(&shared.acl).is_none() {
                return Err(ApiError(401, "ACL support disabled".into()));
            }
            if rel == "acl/login" {
                let (secret, login) = lock(&shared.logins).login(body)?;
                Ok(Reply::json(&Logins::token_json(&secret, &login)))
            } else {
                let is_token = token.is_some_and(|t| {
                    lock(&shared.acl)
                        .as_ref()
                        .is_some_and(|a| a.tokens.contains_key(t))
                });
                if is_token {
                    // A token not minted by a login.
                    return Err(ApiError(403, "Permission denied".into()));
                }
                lock(&shared.logins).logout(token)?;
                Ok(Reply::json(&json!(true)))
            }
        })(),
        "config" => (|| {
            if *method != Method::PUT {
                return method_not_allowed(method, "PUT");
            }
            match ConfigEntries::acl_target(body)? {
                Some(name) => authorize(shared, token, Some(&name))?,
                None => authorize(shared, token, Some("*"))?,
            }
            let cas = match query.iter().find(|(k, _)| k == "cas") {
                None => None,
                Some((_, v)) => Some(
                    v.parse::<u64>()
                        .map_err(|_| ApiError(400, format!("Failed to parse cas: {v:?}")))?,
                ),
            };
            let index = lock(&shared.catalog).next_index();
            let done = lock(&shared.config).put(body, cas, index)?;
            Ok(Reply::json(&json!(done)))
        })(),
        _ => {
            let rest = rel.strip_prefix("config/")?;
            (|| {
                let Some((kind, name)) = rest.split_once('/') else {
                    return Err(ApiError(400, "Must provide kind and name".into()));
                };
                if *method == Method::GET {
                    authorize(shared, token, None)?;
                    let v = lock(&shared.config).get(kind, name)?;
                    Ok(Reply::json(&v))
                } else if *method == Method::DELETE {
                    let needs = ConfigEntries::acl_target(
                        json!({"Kind": kind, "Name": name}).to_string().as_bytes(),
                    )?;
                    authorize(shared, token, Some(needs.as_deref().unwrap_or("*")))?;
                    lock(&shared.config).delete(kind, name);
                    Ok(Reply::json(&json!({})))
                } else {
                    method_not_allowed(method, "GET, DELETE")
                }
            })()
        }
    };
    Some(out)
}

/// Consul's refusal of a catalog write that needs `node:write`.
fn node_write_denied(token: Option<&str>, node: &str) -> ApiError {
    let who = if token.is_some() {
        "token"
    } else {
        "anonymous token"
    };
    ApiError(
        403,
        format!("Permission denied: {who} lacks permission 'node:write' on {node:?}"),
    )
}

fn update_check(
    shared: &Shared,
    agent: &str,
    id: &str,
    status: Status,
    output: &str,
    token: Option<&str>,
    now: Instant,
) -> Result<Reply, ApiError> {
    let service = {
        let c = lock(&shared.catalog);
        c.nodes.get(agent).and_then(|n| {
            let check = n.checks.get(id)?;
            n.services.get(&check.service_id).map(|s| s.name.clone())
        })
    };
    authorize(shared, token, service.as_deref())?;
    let changed = {
        let mut c = lock(&shared.catalog);
        let before = c.index();
        c.update_check(agent, id, status, output, now)?;
        c.index() != before
    };
    if changed {
        shared.notify();
    }
    Ok(Reply::ok_empty())
}

fn read_headers(index: u64, stale: bool) -> Vec<(&'static str, String)> {
    vec![
        ("X-Consul-Index", index.max(1).to_string()),
        ("X-Consul-KnownLeader", "true".into()),
        ("X-Consul-LastContact", "0".into()),
        (
            "X-Consul-Effective-Consistency",
            if stale { "stale" } else { "leader" }.into(),
        ),
    ]
}

/// `agent/connect/ca/roots` and `agent/connect/ca/leaf/<service>`, both
/// blocking on the CA's index.
async fn connect_ca(
    shared: &Shared,
    what: &str,
    query: &[(String, String)],
) -> Result<Reply, ApiError> {
    let index = index_of(query)?;
    let wait = wait_of(query)?;
    let deadline = Instant::now() + wait + jitter(wait);
    let mut rx = shared.changed.subscribe();
    loop {
        let (body, idx) = {
            let mut ca = lock(&shared.ca);
            let idx = ca.index;
            let body = if what == "roots" {
                let active = ca.roots.len() - 1;
                let roots: Vec<Value> = ca
                    .roots
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        serde_json::json!({
                            "ID": format!("root-{i}"),
                            "Name": "Consul CA Root Cert",
                            "RootCert": r.pem,
                            "Active": i == active,
                        })
                    })
                    .collect();
                serde_json::json!({
                    "ActiveRootID": format!("root-{active}"),
                    "TrustDomain": ca.td,
                    "Roots": roots,
                })
            } else if let Some(service) = what.strip_prefix("leaf/") {
                let uri = format!("spiffe://{}/ns/default/dc/dc1/svc/{service}", ca.td);
                if !ca.leaves.contains_key(service) {
                    let leaf = ca.roots.last().expect("a root").leaf(&uri);
                    ca.leaves.insert(service.to_owned(), (leaf, idx));
                }
                let (leaf, at) = &ca.leaves[service];
                serde_json::json!({
                    "SerialNumber": format!("{:02x}", leaf.serial),
                    "CertPEM": leaf.cert,
                    "PrivateKeyPEM": leaf.key,
                    "Service": service,
                    "ServiceURI": uri,
                    "CreateIndex": at,
                    "ModifyIndex": at,
                })
            } else {
                return Err(ApiError(404, format!("unknown Connect CA path {what:?}")));
            };
            (body, idx)
        };
        if index == 0 || idx > index || Instant::now() >= deadline {
            let mut r = Reply::json(&body);
            r.headers = read_headers(idx, false);
            return Ok(r);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return Err(ApiError(500, "agent stopping".into())) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

async fn health_service(
    shared: &Shared,
    name: &str,
    query: &[(String, String)],
) -> Result<Reply, ApiError> {
    let has = |k: &str| query.iter().any(|(q, _)| q == k);
    if has("stale") && has("consistent") {
        return Err(ApiError(
            400,
            "Cannot specify ?stale with ?consistent, conflicting semantics.".into(),
        ));
    }
    let passing = match query.iter().find(|(k, _)| k == "passing") {
        None => false,
        Some((_, v)) => {
            parse_bool(v).ok_or_else(|| ApiError(400, "Invalid value for ?passing".into()))?
        }
    };
    let tags: Vec<String> = query
        .iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.clone())
        .collect();
    let index = index_of(query)?;
    let wait = wait_of(query)?;
    let deadline = Instant::now() + wait + jitter(wait);
    let mut rx = shared.changed.subscribe();
    loop {
        let (entries, idx) = lock(&shared.catalog).health_service(name, passing, &tags);
        if index == 0 || idx > index || Instant::now() >= deadline {
            let mut r = Reply::json(&Value::Array(entries));
            r.headers = read_headers(idx, has("stale"));
            return Ok(r);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return Err(ApiError(500, "agent stopping".into())) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `PUT|GET|DELETE /v1/connect/intentions/exact?source=&destination=`
/// (api-docs/connect/intentions): upsert `{"Action":"allow"|"deny"}` and
/// delete answer `true`; a read answers the intention or 404. The names
/// are whole service names or `*`: a partial wildcard is refused as the
/// config entry's validation does (`Name: wildcard character '*' cannot
/// be used with partial values`), a 500 like every RPC error.
fn intention_exact(
    shared: &Shared,
    method: &Method,
    query: &[(String, String)],
    body: &[u8],
) -> Result<Reply, ApiError> {
    let param = |k: &str| {
        query
            .iter()
            .find(|(q, _)| q == k)
            .map(|(_, v)| v.clone())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError(500, format!("required query parameter '{k}' not set")))
    };
    if *method != Method::PUT && *method != Method::GET && *method != Method::DELETE {
        return method_not_allowed(method, "GET, PUT, DELETE");
    }
    let source = param("source")?;
    let destination = param("destination")?;
    for (what, name) in [("Sources[0].Name", &source), ("Name", &destination)] {
        if name != "*" && name.contains('*') {
            return Err(ApiError(
                500,
                format!("{what}: wildcard character '*' cannot be used with partial values"),
            ));
        }
    }
    let key = (source.clone(), destination.clone());
    let mut ca = lock(&shared.ca);
    if *method == Method::GET {
        let Some(&allow) = ca.intentions.get(&key) else {
            return Err(ApiError(404, "Intention not found".into()));
        };
        let precedence = match (source == "*", destination == "*") {
            (false, false) => 9,
            (true, false) => 8,
            (false, true) => 6,
            (true, true) => 5,
        };
        return Ok(Reply::json(&json!({
            "SourceNS": "default", "SourceName": source,
            "DestinationNS": "default", "DestinationName": destination,
            "SourceType": "consul", "Action": if allow { "allow" } else { "deny" },
            "Meta": {}, "Precedence": precedence
        })));
    }
    if *method == Method::DELETE {
        ca.intentions.remove(&key);
        return Ok(Reply::json(&json!(true)));
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError(400, format!("Request decode failed: {e}")))?;
    let action = v
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.eq_ignore_ascii_case("action")))
        .and_then(|(_, a)| a.as_str())
        .unwrap_or("");
    let allow = match action {
        "allow" => true,
        "deny" => false,
        _ => {
            return Err(ApiError(
                500,
                "Sources[0].Action must be set to 'allow' or 'deny'".into(),
            ))
        }
    };
    ca.intentions.insert(key, allow);
    Ok(Reply::json(&json!(true)))
}

/// `?passing` as Consul reads it: bare or a bool.
fn passing_of(query: &[(String, String)]) -> Result<bool, ApiError> {
    match query.iter().find(|(k, _)| k == "passing") {
        None => Ok(false),
        Some((_, v)) => {
            parse_bool(v).ok_or_else(|| ApiError(400, "Invalid value for ?passing".into()))
        }
    }
}

/// `GET /v1/health/connect/<name>`: the sidecars of `name`, blocking on
/// their index.
async fn health_connect(
    shared: &Shared,
    name: &str,
    query: &[(String, String)],
) -> Result<Reply, ApiError> {
    let passing = passing_of(query)?;
    let stale = query.iter().any(|(k, _)| k == "stale");
    let index = index_of(query)?;
    let wait = wait_of(query)?;
    let deadline = Instant::now() + wait + jitter(wait);
    let mut rx = shared.changed.subscribe();
    loop {
        let (entries, idx) = lock(&shared.catalog).health_connect(name, passing);
        if index == 0 || idx > index || Instant::now() >= deadline {
            let mut r = Reply::json(&Value::Array(entries));
            r.headers = read_headers(idx, stale);
            return Ok(r);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return Err(ApiError(500, "agent stopping".into())) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// `GET /v1/catalog/services`, blocking on the services index.
async fn catalog_services(shared: &Shared, query: &[(String, String)]) -> Result<Reply, ApiError> {
    let stale = query.iter().any(|(k, _)| k == "stale");
    let index = index_of(query)?;
    let wait = wait_of(query)?;
    let deadline = Instant::now() + wait + jitter(wait);
    let mut rx = shared.changed.subscribe();
    loop {
        let (names, idx) = lock(&shared.catalog).catalog_services();
        if index == 0 || idx > index || Instant::now() >= deadline {
            let mut r = Reply::json(&names);
            r.headers = read_headers(idx, stale);
            return Ok(r);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return Err(ApiError(500, "agent stopping".into())) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

async fn agent_service(
    shared: &Shared,
    agent: &str,
    id: &str,
    query: &[(String, String)],
) -> Result<Reply, ApiError> {
    let want_hash = query
        .iter()
        .find(|(k, _)| k == "hash")
        .map(|(_, v)| v.clone());
    let wait = wait_of(query)?;
    let deadline = Instant::now() + wait + jitter(wait);
    let mut rx = shared.changed.subscribe();
    loop {
        let entry = {
            let services = lock(&shared.catalog).agent_services(agent);
            services.get(id).cloned()
        };
        let Some(mut entry) = entry else {
            return Err(ApiError(404, format!("unknown service ID: {id}")));
        };
        let hash = content_hash(&entry);
        let blocked = want_hash.as_deref().is_some_and(|h| h == hash);
        if !blocked || Instant::now() >= deadline {
            entry["ContentHash"] = json!(hash);
            let mut r = Reply::json(&entry);
            r.headers.push(("X-Consul-ContentHash", hash));
            return Ok(r);
        }
        tokio::select! {
            changed = rx.changed() => if changed.is_err() { return Err(ApiError(500, "agent stopping".into())) },
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// For tests reading bodies: sorted map of an agent's services.
pub fn ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    ids.sort();
    ids
}
