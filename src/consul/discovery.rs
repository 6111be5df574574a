//! [`Consul`]: registration, the TTL health worker and the blocking
//! query, as a [`Discovery`]; the operator functions (see the module docs
//! of [`crate::consul`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorRef};
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{Api, ApiError};
use super::health::{HealthMsg, HealthState, HealthWorker};
use super::observe::{Observe, Relogin};
use super::watch::{Identify, WatchConfig, META_ADDR, META_NODE, META_PROTOCOL};
use super::{
    health, mesh, segment, watch, AgentTls, BlockingIndex, LocalSidecar, Mesh, SidecarUpstream,
};
use crate::discovery::{Discovery, LocalNode, Peers};
use crate::util::lock;
use crate::util::BoxFuture;
use crate::{Error, StartError};

/// The agent address when neither the code nor `CONSUL_HTTP_ADDR` sets one.
pub const DEFAULT_ADDRESS: &str = "http://127.0.0.1:8500";

/// Settings, all optional; see the setters of [`Consul`].
#[derive(Debug, Clone)]
struct Config {
    address: Option<String>,
    token: Option<String>,
    datacenter: Option<String>,
    service: Option<String>,
    heartbeat: Duration,
    ttl: Option<Duration>,
    deregister_after: Duration,
    wait: Duration,
    request_timeout: Duration,
    mesh: Option<Mesh>,
    /// TLS to an `https://` agent; `None`: from the environment.
    tls: Option<AgentTls>,
    /// Observe mode (agentless Consul): read only, never register.
    observe: Option<Observe>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            address: None,
            token: None,
            datacenter: None,
            service: None,
            heartbeat: Duration::from_secs(1),
            ttl: None,
            deregister_after: Duration::from_secs(60),
            wait: Duration::from_secs(20),
            request_timeout: Duration::from_secs(5),
            mesh: None,
            tls: None,
            observe: None,
        }
    }
}

/// A running registration.
struct Running {
    api: Api,
    node: String,
    service_id: String,
    worker: ActorRef<HealthMsg>,
    watch: tokio::task::JoinHandle<()>,
    mesh: Option<MeshRunning>,
}

/// Observe mode, while the node runs.
struct Observing {
    api: Api,
    node: String,
    service: String,
    watch: tokio::task::JoinHandle<()>,
    relogin: Option<Relogin>,
}

/// Mesh mode, while the node runs.
struct MeshRunning {
    local: LocalSidecar,
    task: tokio::task::JoinHandle<()>,
}

/// The Consul discovery adapter. Cheap to clone: give one clone to
/// [`crate::NodeBuilder::discovery`] and keep another for the operator
/// functions ([`Consul::services`], [`Consul::info`],
/// [`Consul::upstreams`]). See the [module docs](super) for what it does.
#[derive(Clone)]
pub struct Consul {
    cfg: Config,
    running: Arc<Mutex<Option<Running>>>,
    observing: Arc<Mutex<Option<Observing>>>,
    /// Mesh mode: the upstreams as last registered.
    view: Arc<tokio::sync::watch::Sender<Vec<SidecarUpstream>>>,
}

impl std::fmt::Debug for Consul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consul")
            .field("address", &self.cfg.address)
            .field("token", &self.cfg.token.as_ref().map(|_| "<set>"))
            .field("datacenter", &self.cfg.datacenter)
            .field("service", &self.cfg.service)
            .field("heartbeat", &self.cfg.heartbeat)
            .field("ttl", &self.effective_ttl())
            .field("deregister_after", &self.cfg.deregister_after)
            .field("wait", &self.cfg.wait)
            .field("mesh", &self.cfg.mesh)
            .field("observe", &self.cfg.observe)
            .finish_non_exhaustive()
    }
}

impl Default for Consul {
    fn default() -> Self {
        Consul::new()
    }
}

/// An upstream of this node's sidecar, as its registration holds it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Upstream {
    /// The service the upstream leads to.
    pub destination_name: String,
    /// Where the sidecar listens for it locally (defaults to 127.0.0.1).
    #[serde(default)]
    pub local_bind_address: String,
    /// The local port.
    #[serde(default)]
    pub local_bind_port: u16,
}

/// Writes a duration the way Consul parses it (a Go duration string).
pub(super) fn go_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis().max(1))
    }
}

/// `CONSUL_HTTP_ADDR` rules: `host:port` means http, or https with
/// `CONSUL_HTTP_SSL=true` (`https`); `unix://` is not supported.
fn normalize_address(addr: &str, https: bool) -> Result<String, StartError> {
    let addr = addr.trim().trim_end_matches('/');
    if addr.is_empty() {
        return Err(StartError::invalid(
            "Consul::address",
            "empty consul address",
        ));
    }
    if addr.starts_with("http://") || addr.starts_with("https://") {
        return Ok(addr.to_owned());
    }
    if addr.starts_with("unix://") {
        return Err(StartError::invalid("Consul::address", format!(
            "consul address {addr:?}: unix sockets are not supported (use the agent's HTTP or HTTPS port)"
        )));
    }
    if https {
        return Ok(format!("https://{addr}"));
    }
    if addr.contains("://") {
        return Err(StartError::invalid(
            "Consul::address",
            format!("consul address {addr:?}: unknown scheme"),
        ));
    }
    Ok(format!("http://{addr}"))
}

/// Splits an RPC address into the Address and Port Consul stores.
fn split_addr(addr: &str) -> Result<(String, u16), StartError> {
    let (host, port) = match addr.parse::<std::net::SocketAddr>() {
        Ok(sa) => (sa.ip().to_string(), sa.port()),
        Err(_) => {
            let (h, p) = addr.rsplit_once(':').ok_or_else(|| {
                StartError::invalid(
                    "NodeBuilder::advertise",
                    format!("address {addr:?} has no port"),
                )
            })?;
            let p = p.parse().map_err(|_| {
                StartError::invalid(
                    "NodeBuilder::advertise",
                    format!("address {addr:?} has no valid port"),
                )
            })?;
            (h.trim_matches(['[', ']']).to_owned(), p)
        }
    };
    if host == "0.0.0.0" || host == "::" || host.is_empty() {
        return Err(StartError::invalid("NodeBuilder::advertise", format!(
            "the node listens on {addr}, which peers cannot dial: set NodeBuilder::advertise to a reachable address"
        )));
    }
    Ok((host, port))
}

/// The body of `PUT /v1/agent/service/register` for `me`.
fn registration(
    service: &str,
    me: &LocalNode,
    ttl: Duration,
    deregister_after: Duration,
) -> Result<(String, String, Value), StartError> {
    let (address, port) = split_addr(&me.addr)?;
    let id = format!("{service}-{}", me.node);
    let check_id = check_of(&id);
    let body = json!({
        "ID": id,
        "Name": service,
        "Tags": me.capabilities,
        "Address": address,
        "Port": port,
        "Meta": {
            META_NODE: me.node,
            META_PROTOCOL: me.protocol.to_string(),
            META_ADDR: me.addr,
        },
        "Check": {
            "CheckID": check_id,
            "Name": "mesh node heartbeat",
            "TTL": go_duration(ttl),
            "Status": "passing",
            "DeregisterCriticalServiceAfter": go_duration(deregister_after),
        },
    });
    Ok((id, check_id, body))
}

/// The ACL token of the `consul` CLI's environment: `CONSUL_HTTP_TOKEN`,
/// else the contents of `CONSUL_HTTP_TOKEN_FILE`; `None` when neither is
/// set (the agent's default token applies).
pub(crate) fn env_token() -> Result<Option<String>, String> {
    match std::env::var("CONSUL_HTTP_TOKEN") {
        Ok(t) if !t.is_empty() => Ok(Some(t)),
        _ => match std::env::var("CONSUL_HTTP_TOKEN_FILE") {
            Ok(path) if !path.is_empty() => Ok(Some(
                std::fs::read_to_string(&path)
                    .map_err(|e| format!("CONSUL_HTTP_TOKEN_FILE {path:?}: {e}"))?
                    .trim()
                    .to_owned(),
            )),
            _ => Ok(None),
        },
    }
}

/// A refused start, in the agent's words, with a hint where one helps.
fn start_error(what: &str, base: &str, e: &ApiError) -> StartError {
    let hint = match e {
        ApiError::Status { code: 403, .. } => {
            " (check the ACL token: Consul::token or CONSUL_HTTP_TOKEN)"
        }
        ApiError::Transport(t) if t.contains("certificate") || t.contains("tls") => {
            " (check the agent's TLS settings: CONSUL_CACERT, CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME, or Consul::agent_tls)"
        }
        ApiError::Transport(_) => " (is the agent running? Consul::address or CONSUL_HTTP_ADDR)",
        _ => "",
    };
    StartError::discovery(format!("{what} at {base}: {e}{hint}"))
}

impl Consul {
    /// An adapter with the defaults: address and token from
    /// `CONSUL_HTTP_ADDR` and `CONSUL_HTTP_TOKEN` (or
    /// `CONSUL_HTTP_TOKEN_FILE`) when set, else `http://127.0.0.1:8500`
    /// and the agent's default token; heartbeat 1 s, TTL 3 s,
    /// deregister-critical-after 1 minute, blocking wait 20 s.
    pub fn new() -> Consul {
        Consul {
            cfg: Config::default(),
            running: Arc::new(Mutex::new(None)),
            observing: Arc::new(Mutex::new(None)),
            view: Arc::new(tokio::sync::watch::channel(Vec::new()).0),
        }
    }

    /// TLS to an `https://` agent (CA, client certificate, server name),
    /// instead of the `consul` CLI's environment variables.
    pub fn agent_tls(mut self, tls: AgentTls) -> Self {
        self.cfg.tls = Some(tls);
        self
    }

    /// The agent's address: `http://host:port`, `https://host:port`, or
    /// `host:port` (http, or https with `CONSUL_HTTP_SSL=true`).
    pub fn address(mut self, addr: impl Into<String>) -> Self {
        self.cfg.address = Some(addr.into());
        self
    }

    /// The ACL token, sent as `X-Consul-Token`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.cfg.token = Some(token.into());
        self
    }

    /// The datacenter to discover peers in (`?dc=`); the agent's own by
    /// default. Registration always goes to the local agent.
    pub fn datacenter(mut self, dc: impl Into<String>) -> Self {
        self.cfg.datacenter = Some(dc.into());
        self
    }

    /// The Consul service name of the cluster; the cluster name by default.
    pub fn service(mut self, name: impl Into<String>) -> Self {
        self.cfg.service = Some(name.into());
        self
    }

    /// How often the health worker passes the TTL check (1 s by default).
    pub fn heartbeat(mut self, every: Duration) -> Self {
        self.cfg.heartbeat = every;
        self
    }

    /// The TTL of the check: at least 3x the heartbeat (the default is
    /// exactly that), so a stalled beat or two does not flap the node.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.cfg.ttl = Some(ttl);
        self
    }

    /// `DeregisterCriticalServiceAfter`: how long Consul keeps a node whose
    /// check is critical (1 minute by default; Consul's floor is 1 minute).
    pub fn deregister_critical_after(mut self, after: Duration) -> Self {
        self.cfg.deregister_after = after;
        self
    }

    /// The `wait` of the blocking query (20 s by default; Consul caps it
    /// at 10 minutes).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.cfg.wait = wait;
        self
    }

    /// Timeout of each request that does not block (5 s by default).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.cfg.request_timeout = timeout;
        self
    }

    /// Mesh mode: the node also registers a Connect sidecar for itself
    /// under its own name (`<service>-<node>`) with one upstream per peer,
    /// kept in step with membership, and watches where the peers' sidecars
    /// listen; see [`Mesh`] and the [`mesh` section](super#mesh-mode) of the
    /// module docs. Direct mode (without this call) registers no sidecar.
    pub fn through_sidecar(mut self, mesh: Mesh) -> Self {
        self.cfg.mesh = Some(mesh);
        self
    }

    /// Observe mode, for agentless Consul (consul-k8s since 1.14, or any
    /// deployment where the platform registers the nodes): the adapter
    /// talks to the servers' API at [`Consul::address`], optionally logs
    /// in ([`Observe::login`]), follows the service's passing instances
    /// and **never registers**; a member's node id is read from the
    /// instance's meta ([`Observe::node_meta`]). Cannot be combined with
    /// [`Consul::through_sidecar`]. See [`Observe`] and the module docs of `consul`.
    pub fn observe(mut self, observe: Observe) -> Self {
        self.cfg.observe = Some(observe);
        self
    }

    /// Mesh mode: the upstreams of this node's sidecar, one per peer (its
    /// node id, destination name, local bind address and, once Consul
    /// lists it passing, the peer sidecar's public address and SPIFFE ID),
    /// sorted by node id. A value is published only after the agent
    /// accepted the registration holding it. Empty before start, in direct
    /// mode, and after shutdown begins (the last value stays).
    pub fn sidecar_upstreams(&self) -> tokio::sync::watch::Receiver<Vec<SidecarUpstream>> {
        self.view.subscribe()
    }

    /// Mesh mode: this node's per-node service and its sidecar as the
    /// agent holds them, while the node runs.
    pub fn local_sidecar(&self) -> Option<LocalSidecar> {
        lock(&self.running)
            .as_ref()
            .and_then(|r| r.mesh.as_ref().map(|m| m.local.clone()))
    }

    fn effective_ttl(&self) -> Duration {
        self.cfg.ttl.unwrap_or(self.cfg.heartbeat * 3)
    }

    /// The agent address and token this adapter uses: the ones set in
    /// code, else the consul CLI's environment variables.
    fn resolved(&self) -> Result<(String, Option<String>), StartError> {
        let addr = match &self.cfg.address {
            Some(a) => a.clone(),
            None => std::env::var("CONSUL_HTTP_ADDR")
                .ok()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| DEFAULT_ADDRESS.to_owned()),
        };
        let token = match &self.cfg.token {
            Some(t) => Some(t.clone()),
            None => env_token().map_err(|e| StartError::invalid("Consul::token", e))?,
        };
        let https = self.tls().https_default;
        Ok((
            normalize_address(&addr, https)?,
            token.filter(|t| !t.is_empty()),
        ))
    }

    /// The TLS settings: set in code, else from the environment.
    fn tls(&self) -> AgentTls {
        self.cfg.tls.clone().unwrap_or_else(AgentTls::from_env)
    }

    /// The client: the running one, else one from the settings (a bad
    /// setting is [`StartError::InvalidSetting`]; the operator functions return it
    /// as [`Error::Start`]).
    pub(super) fn api(&self) -> Result<Api, StartError> {
        if let Some(r) = lock(&self.running).as_ref() {
            return Ok(r.api.clone());
        }
        if let Some(o) = lock(&self.observing).as_ref() {
            return Ok(o.api.clone());
        }
        let (base, token) = self.resolved()?;
        Api::new(
            base,
            token,
            self.cfg.datacenter.clone(),
            self.cfg.request_timeout,
            &self.tls(),
        )
        .map_err(|e| StartError::invalid("Consul::agent_tls", e))
    }

    /// While it runs: the agent address, the ACL token and the TLS
    /// settings its requests use (for the sidecar's Connect requests).
    #[cfg(feature = "sidecar")]
    pub(crate) fn agent_access(&self) -> Option<(String, Option<super::Token>, AgentTls)> {
        lock(&self.running).as_ref().map(|r| {
            (
                r.api.base().to_owned(),
                r.api.token().cloned(),
                r.api.tls().clone(),
            )
        })
    }

    /// The watch loop's settings: a token bucket of 4 then one query per
    /// 100 ms, retries from 100 ms doubling to 5 s; observe mode reads
    /// `?stale` (from any server: it talks to the servers, not an agent).
    fn watch_config(&self, service: &str, me: &LocalNode, identify: Identify) -> WatchConfig {
        WatchConfig {
            service: service.to_owned(),
            me: me.node.clone(),
            protocol: me.protocol,
            wait: self.cfg.wait,
            burst: 4,
            period: Duration::from_millis(100),
            retry_min: Duration::from_millis(100),
            retry_max: Duration::from_secs(5),
            stale: matches!(identify, Identify::Observed(_)),
            identify,
        }
    }

    /// Observe mode's settings, if set (for `diagnose`).
    pub(super) fn observe_settings(&self) -> Option<&Observe> {
        self.cfg.observe.as_ref()
    }

    /// The service name set in code, if any (for `diagnose`).
    pub(super) fn service_setting(&self) -> Option<&str> {
        self.cfg.service.as_deref()
    }

    /// Whether mesh mode is on (for `diagnose`).
    pub(super) fn mesh_mode(&self) -> bool {
        self.cfg.mesh.is_some()
    }

    /// The ID this node registered under, while it runs.
    pub fn service_id(&self) -> Option<String> {
        lock(&self.running).as_ref().map(|r| r.service_id.clone())
    }

    /// Stops (`true`) or resumes (`false`) passing the TTL check, leaving
    /// everything else running: the check expires after the TTL and peers
    /// drop this node, as they would a hung one. For failure drills and
    /// tests; [`crate::Node::shutdown`] is the clean way out.
    pub fn pause_heartbeat(&self, paused: bool) {
        if let Some(r) = lock(&self.running).as_ref() {
            let _ = r.worker.send_message(HealthMsg::Pause(paused));
        }
    }

    /// Operator function: the IDs of the services the local agent holds
    /// for this node (its registration, and its sidecar once one is
    /// registered), read from `GET /v1/agent/services`.
    pub async fn services(&self) -> Result<Vec<String>, Error> {
        let api = self.api()?;
        let node = lock(&self.running).as_ref().map(|r| r.node.clone());
        let Some(node) = node else {
            return Err(Error::NotStarted);
        };
        Ok(agent_services(&api)
            .await?
            .into_iter()
            .filter(|(_, s)| s["Meta"][META_NODE].as_str() == Some(&node))
            .map(|(id, _)| id)
            .collect())
    }

    /// Operator function: a registration as the agent holds it
    /// (`GET /v1/agent/service/<id>`), as JSON.
    pub async fn info(&self, service_id: &str) -> Result<Value, Error> {
        let api = self.api()?;
        let path = format!("agent/service/{}", segment(service_id));
        api.get(&path, &[], None)
            .await
            .map(|(v, _)| v)
            .map_err(|e| Error::discovery(e.to_string()))
    }

    /// Operator function: the upstreams of this node's sidecar
    /// registration as the agent holds it (`<id>-sidecar-proxy`, in mesh
    /// mode the per-node service's); empty while the node has none. The
    /// live view with node ids and the peers' sidecars is
    /// [`Consul::sidecar_upstreams`].
    pub async fn upstreams(&self) -> Result<Vec<Upstream>, Error> {
        let Some(id) = self.service_id() else {
            return Err(Error::NotStarted);
        };
        let mesh_id = self.local_sidecar().map(|l| l.service_id);
        let all = agent_services(&self.api()?).await?;
        let mut out = Vec::new();
        for s in all.values() {
            let proxy = &s["Proxy"];
            let parent = proxy["DestinationServiceID"].as_str();
            let ours =
                parent == Some(id.as_str()) || (parent.is_some() && parent == mesh_id.as_deref());
            if s["Kind"] == "connect-proxy" && ours {
                if let Some(ups) = proxy["Upstreams"].as_array() {
                    for u in ups {
                        let u: Upstream = serde_json::from_value(u.clone())
                            .map_err(|e| Error::discovery(format!("upstream of {id}: {e}")))?;
                        out.push(u);
                    }
                }
            }
        }
        Ok(out)
    }

    async fn start_inner(
        &self,
        me: LocalNode,
        peers: tokio::sync::watch::Sender<Peers>,
    ) -> Result<(), StartError> {
        if let Some(o) = &self.cfg.observe {
            return self.start_observing(o, me, peers).await;
        }
        let ttl = self.effective_ttl();
        if self.cfg.heartbeat.is_zero() || ttl < self.cfg.heartbeat * 3 {
            return Err(StartError::invalid(
                "Consul::ttl",
                format!(
                    "consul TTL {ttl:?} must be at least 3x the heartbeat {:?}",
                    self.cfg.heartbeat
                ),
            ));
        }
        if lock(&self.running).is_some() {
            return Err(StartError::invalid(
                "NodeBuilder::discovery",
                "this Consul adapter is already started",
            ));
        }
        let api = self.api()?;
        let base = api.base().to_owned();
        let service = self
            .cfg
            .service
            .clone()
            .unwrap_or_else(|| me.cluster.clone());
        let (id, check_id, body) = registration(&service, &me, ttl, self.cfg.deregister_after)?;
        health::register(&api, &body)
            .await
            .map_err(|e| start_error(&format!("registering {id}"), &base, &e))?;
        let cfg = self.watch_config(&service, &me, Identify::Registered);
        // The first view before the node returns from start.
        let mut index = BlockingIndex::default();
        let first = watch::fetch(&api, &cfg, 0).await;
        let entries = match first {
            Ok((entries, returned)) => {
                index.observe(returned);
                entries
            }
            Err(e) => {
                let _ = deregister(&api, &id).await;
                return Err(start_error("reading the peers", &base, &e));
            }
        };
        watch::publish(
            &peers,
            watch::peers_from_health(entries, &me.node, me.protocol, &cfg.identify).0,
        );
        let mesh = match &self.cfg.mesh {
            None => None,
            Some(m) => match self.start_mesh(m, &api, &me, &service, &id, &peers).await {
                Ok(started) => Some(started),
                Err(e) => {
                    let _ = deregister(&api, &id).await;
                    return Err(e);
                }
            },
        };
        let state = HealthState {
            api: api.clone(),
            node: me.node.clone(),
            check_id,
            also: mesh.as_ref().map(|(_, run, _, _)| run.current.clone()),
            registration: body,
            interval: self.cfg.heartbeat,
            max_backoff: ttl,
            failures: 0,
            paused: false,
        };
        let (worker, _) = match Actor::spawn(None, HealthWorker, state).await {
            Ok(w) => w,
            Err(e) => {
                if let Some((local, ..)) = &mesh {
                    let _ = deregister(&api, &local.service_id).await;
                }
                let _ = deregister(&api, &id).await;
                return Err(StartError::discovery(format!(
                    "cannot start the health worker: {e}"
                )));
            }
        };
        let mesh = mesh.map(|(local, run, book, registered)| {
            let task = tokio::spawn(mesh::run(
                run,
                book,
                registered,
                peers.subscribe(),
                self.view.clone(),
            ));
            MeshRunning { local, task }
        });
        let watch = tokio::spawn(watch::run(api.clone(), cfg, index, peers, None));
        tracing::info!(node = %me.node, service_id = %id, consul = %base, "registered with consul");
        *lock(&self.running) = Some(Running {
            api,
            node: me.node,
            service_id: id,
            worker,
            watch,
            mesh,
        });
        Ok(())
    }

    /// Mesh mode's start: the trust domain, the per-node service with the
    /// upstreams of the first view of the peers, the sidecar's address as
    /// the agent assigned it. On failure nothing of it stays registered.
    async fn start_mesh(
        &self,
        m: &Mesh,
        api: &Api,
        me: &LocalNode,
        service: &str,
        cluster_id: &str,
        peers: &tokio::sync::watch::Sender<Peers>,
    ) -> Result<
        (
            LocalSidecar,
            mesh::MeshRun,
            mesh::PortBook,
            Vec<(String, std::net::SocketAddr)>,
        ),
        StartError,
    > {
        let base = api.base().to_owned();
        let local: std::net::SocketAddr = me.addr.parse().map_err(|_| {
            StartError::invalid("Consul::mesh", format!(
                "mesh mode needs the node's address as ip:port (the sidecar forwards to it), not {:?}",
                me.addr
            ))
        })?;
        let trust_domain = mesh::trust_domain(api).await.map_err(|e| {
            StartError::discovery(format!(
                "mesh mode needs Consul Connect, but the agent at {base} has no CA: {e} (enable connect in the agent's configuration)"
            ))
        })?;
        let (sidecar_port, port_reservation) = match m.sidecar_port {
            Some(0) => {
                let (port, socket) = mesh::reserve_port().map_err(|e| {
                    StartError::invalid(
                        "Mesh::sidecar_port",
                        format!("no free port for the sidecar: {e}"),
                    )
                })?;
                (Some(port), Some(Arc::new(socket)))
            }
            other => (other, None),
        };
        let node = mesh::MeshNode {
            service: service.to_owned(),
            node: me.node.clone(),
            protocol: me.protocol,
            capabilities: me.capabilities.clone(),
            cluster_id: cluster_id.to_owned(),
            local,
            sidecar_address: m.sidecar_address.unwrap_or(local.ip()),
            sidecar_port,
            deregister_after: go_duration(self.cfg.deregister_after),
        };
        let mesh_id = node.id();
        let proxy_id = format!("{mesh_id}-sidecar-proxy");
        let mut run = mesh::MeshRun {
            api: api.clone(),
            node,
            trust_domain: trust_domain.clone(),
            datacenter: self.cfg.datacenter.clone().unwrap_or_else(|| "dc1".into()),
            wait: self.cfg.wait,
            current: Arc::new(Mutex::new(Value::Null)),
            _port_reservation: port_reservation,
        };
        let mut book = mesh::PortBook::new(m.upstream_ports, m.upstream_address);
        let first: std::collections::BTreeSet<String> = peers.borrow().keys().cloned().collect();
        let registered = mesh::register_upstreams(&run, &mut book, &first)
            .await
            .map_err(|e| {
                start_error(
                    &format!("registering {mesh_id} with its sidecar"),
                    &base,
                    &e,
                )
            })?;
        let public = match mesh::sidecar_public(api, &proxy_id).await {
            Ok((public, dc)) => {
                // The agent's own datacenter names this node's SPIFFE ID,
                // and peers' whose entries lack one.
                if let Some(dc) = dc {
                    run.datacenter = dc;
                }
                public
            }
            Err(e) => {
                let _ = deregister(api, &mesh_id).await;
                return Err(StartError::discovery(format!(
                    "reading the sidecar {proxy_id} at {base}: {e}"
                )));
            }
        };
        // Keep the port the agent assigned: later registrations (upstreams
        // follow membership) name it, with the faster sidecar check.
        run.node.sidecar_port.get_or_insert(public.port());
        let datacenter = run.datacenter.clone();
        let service_name = mesh::destination(service, &me.node);
        let local_sidecar = LocalSidecar {
            service_id: mesh_id,
            spiffe_id: mesh::spiffe_id(&trust_domain, &datacenter, &service_name),
            service_name,
            proxy_id,
            public,
            local_service: local,
            trust_domain,
        };
        Ok((local_sidecar, run, book, registered))
    }

    /// Observe mode's start: log in if asked, read the first view, then
    /// follow the service; nothing is registered.
    async fn start_observing(
        &self,
        o: &Observe,
        me: LocalNode,
        peers: tokio::sync::watch::Sender<Peers>,
    ) -> Result<(), StartError> {
        if self.cfg.mesh.is_some() {
            return Err(StartError::invalid(
                "Consul::observe",
                "observe mode cannot be combined with Consul::through_sidecar: mesh mode registers a per-node service with one upstream per peer, which an agentless deployment (consul-k8s) cannot express; exclude the cluster port from the transparent proxy and use in-process mTLS (NodeBuilder::tls) instead",
            ));
        }
        if o.node_meta.is_empty() {
            return Err(StartError::invalid(
                "Observe::node_meta",
                "observe mode needs a service meta key that names each member (pod-name, say)",
            ));
        }
        if lock(&self.observing).is_some() || lock(&self.running).is_some() {
            return Err(StartError::invalid(
                "NodeBuilder::discovery",
                "this Consul adapter is already started",
            ));
        }
        let mut api = self.api()?;
        let base = api.base().to_owned();
        let relogin = o.login.clone().map(|l| Relogin::new(&api, l));
        if let Some(r) = &relogin {
            api = r.login().await.map_err(|e| {
                start_error(
                    &format!("logging in with auth method {:?}", r.auth_method()),
                    &base,
                    &e,
                )
            })?;
        }
        let service = self
            .cfg
            .service
            .clone()
            .unwrap_or_else(|| me.cluster.clone());
        let cfg = self.watch_config(&service, &me, Identify::Observed(o.node_meta.clone()));
        let mut index = BlockingIndex::default();
        let entries = match watch::fetch(&api, &cfg, 0).await {
            Ok((entries, returned)) => {
                index.observe(returned);
                entries
            }
            Err(e) => {
                if let Some(r) = &relogin {
                    let _ = r.logout().await;
                }
                return Err(start_error("reading the peers", &base, &e));
            }
        };
        watch::publish(
            &peers,
            watch::peers_from_health(entries, &me.node, me.protocol, &cfg.identify).0,
        );
        let watch = tokio::spawn(watch::run(api.clone(), cfg, index, peers, relogin.clone()));
        tracing::info!(node = %me.node, %service, consul = %base, logged_in = relogin.is_some(), "observing consul (agentless: nothing registered)");
        *lock(&self.observing) = Some(Observing {
            api,
            node: me.node,
            service,
            watch,
            relogin,
        });
        Ok(())
    }

    async fn stop_inner(&self) -> Result<(), Error> {
        let observing = lock(&self.observing).take();
        if let Some(o) = observing {
            o.watch.abort();
            if let Some(r) = &o.relogin {
                r.logout().await.map_err(|e| {
                    Error::discovery(format!("logging out of {}: {e}", o.api.base()))
                })?;
                tracing::info!(node = %o.node, "logged out of consul");
            }
            return Ok(());
        }
        let Some(r) = lock(&self.running).take() else {
            return Ok(());
        };
        // Heartbeat first: a beat after the deregistration would register
        // a zombie again.
        if let Err(e) = r
            .worker
            .stop_and_wait(None, Some(self.cfg.request_timeout * 2))
            .await
        {
            tracing::warn!(node = %r.node, "consul health worker did not stop cleanly: {e}");
            r.worker.kill();
        }
        // Mesh mode: no upstream registration after this point; the
        // per-node service goes (its sidecar with it), then the node's.
        let mut mesh_result = Ok(());
        if let Some(m) = &r.mesh {
            m.task.abort();
            mesh_result = deregister(&r.api, &m.local.service_id)
                .await
                .map_err(|e| (m.local.service_id.clone(), e));
        }
        let result = deregister(&r.api, &r.service_id)
            .await
            .map_err(|e| (r.service_id.clone(), e))
            .and(mesh_result);
        r.watch.abort();
        match result {
            Ok(()) => {
                tracing::info!(node = %r.node, service_id = %r.service_id, "deregistered from consul");
                Ok(())
            }
            Err((id, e)) => Err(Error::discovery(format!(
                "deregistering {id} at {}: {e}",
                r.api.base()
            ))),
        }
    }
}

/// `GET /v1/agent/services`: the local agent's services by ID.
async fn agent_services(api: &Api) -> Result<BTreeMap<String, Value>, Error> {
    api.get("agent/services", &[], None)
        .await
        .map(|(all, _)| all)
        .map_err(|e| Error::discovery(e.to_string()))
}

/// `PUT /v1/agent/service/deregister/<id>`; an unknown ID (404) means
/// it is gone already, which is what was asked.
async fn deregister(api: &Api, id: &str) -> Result<(), ApiError> {
    let path = format!("agent/service/deregister/{}", segment(id));
    match api.put(&path, &[], None).await {
        Err(ApiError::Status { code: 404, .. }) => Ok(()),
        other => other,
    }
}

/// The ID of the health check registered with service `id`.
fn check_of(id: &str) -> String {
    format!("service:{id}")
}

impl Consul {
    /// This node's own health check ID while registered (`None` before
    /// start and after stop): what strong mode binds its session to.
    #[cfg(feature = "strong")]
    pub(super) fn own_check(&self) -> impl Fn() -> Option<String> + Send + Sync + 'static {
        let running = self.running.clone();
        move || lock(&running).as_ref().map(|r| check_of(&r.service_id))
    }
}

impl Discovery for Consul {
    #[cfg(feature = "strong")]
    fn lease_store(&self) -> Option<Arc<dyn crate::lease::LeaseStore>> {
        match self.leases() {
            Ok(l) => Some(Arc::new(l)),
            Err(e) => {
                tracing::warn!("consul: no lease store: {e}");
                None
            }
        }
    }

    fn start(
        &self,
        me: LocalNode,
        peers: tokio::sync::watch::Sender<Peers>,
    ) -> BoxFuture<'_, Result<(), StartError>> {
        Box::pin(self.start_inner(me, peers))
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(self.stop_inner())
    }

    fn halt(&self) {
        if let Some(o) = lock(&self.observing).take() {
            o.watch.abort();
        }
        if let Some(r) = lock(&self.running).take() {
            r.worker.kill();
            r.watch.abort();
            if let Some(m) = r.mesh {
                m.task.abort();
            }
        }
    }

    /// Observe mode: `{kind: "consul", mode: "observe", registered:
    /// false, datacenter, node_meta, auth_method}` and, while running,
    /// `servers`, `node`, `service`, `logged_in`. Agent mode (`mode:
    /// "agent"`):
    /// `{kind: "consul", registered, agent, node, service_id, check_id,
    /// datacenter, ttl_ms, heartbeat_ms}` (agent and ids only while
    /// registered); in mesh mode also `sidecar` (this node's per-node
    /// service and proxy) and `upstreams` (one per peer: destination, local
    /// bind, the peer's sidecar and SPIFFE ID once known). No request is
    /// made: this is what the adapter holds.
    fn describe(&self) -> crate::discovery::Description {
        if let Some(o) = &self.cfg.observe {
            let observing = lock(&self.observing);
            let mut v = crate::discovery::Description::new("consul")
                .with("mode", "observe")
                .with("registered", false)
                .with("datacenter", &self.cfg.datacenter)
                .with("node_meta", &o.node_meta)
                .with(
                    "auth_method",
                    o.login.as_ref().map(|l| l.auth_method.clone()),
                );
            if let Some(o) = observing.as_ref() {
                v.set("servers", o.api.base());
                v.set("node", &o.node);
                v.set("service", &o.service);
                v.set(
                    "logged_in",
                    o.relogin.as_ref().is_some_and(Relogin::logged_in),
                );
            }
            return v;
        }
        let running = lock(&self.running);
        let mut v = crate::discovery::Description::new("consul")
            .with("mode", "agent")
            .with("registered", running.is_some())
            .with("datacenter", &self.cfg.datacenter)
            .with("ttl_ms", self.effective_ttl().as_millis() as u64)
            .with("heartbeat_ms", self.cfg.heartbeat.as_millis() as u64);
        if let Some(r) = running.as_ref() {
            v.set("agent", r.api.base());
            v.set("node", &r.node);
            v.set("service_id", &r.service_id);
            v.set("check_id", format!("service:{}", r.service_id));
            if let Some(m) = r.mesh.as_ref() {
                let l = &m.local;
                v.set(
                    "sidecar",
                    serde_json::json!({
                    "service_id": l.service_id,
                    "service_name": l.service_name,
                    "proxy_id": l.proxy_id,
                    "public": l.public.to_string(),
                    "local_service": l.local_service.to_string(),
                    "spiffe_id": l.spiffe_id,
                    }),
                );
            }
        }
        if self.cfg.mesh.is_some() {
            let upstreams: Vec<serde_json::Value> = self
                .view
                .borrow()
                .iter()
                .map(|u| {
                    serde_json::json!({
                        "node": u.node,
                        "destination": u.destination,
                        "local_bind": u.local_bind.to_string(),
                        "remote": u.remote.as_ref().map(|r| r.addr.to_string()),
                        "remote_spiffe_id": u.remote.as_ref().map(|r| r.spiffe_id.clone()),
                    })
                })
                .collect();
            v.set("upstreams", upstreams);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::from_secs(3)), "3s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1500ms");
        assert_eq!(go_duration(Duration::from_secs(60)), "60s");
        assert_eq!(go_duration(Duration::from_micros(10)), "1ms");
    }

    #[test]
    fn addresses_follow_the_cli_rules() {
        assert_eq!(
            normalize_address("127.0.0.1:8500", false).ok(),
            Some("http://127.0.0.1:8500".into())
        );
        assert_eq!(
            normalize_address("http://consul:8500/", false).ok(),
            Some("http://consul:8500".into())
        );
        assert_eq!(
            normalize_address("https://consul:8501", false).ok(),
            Some("https://consul:8501".into())
        );
        // CONSUL_HTTP_SSL=true: no scheme means https.
        assert_eq!(
            normalize_address("consul:8501", true).ok(),
            Some("https://consul:8501".into())
        );
        assert_eq!(
            normalize_address("http://consul:8500", true).ok(),
            Some("http://consul:8500".into())
        );
        assert!(matches!(
            normalize_address("unix:///tmp/c.sock", false),
            Err(StartError::InvalidSetting { .. })
        ));
        assert!(matches!(
            normalize_address("", false),
            Err(StartError::InvalidSetting { .. })
        ));
    }

    #[test]
    fn the_registration_follows_the_design() {
        let me = LocalNode {
            cluster: "game".into(),
            node: "a".into(),
            addr: "10.0.0.5:7000".into(),
            capabilities: vec!["player".into(), "room".into()],
            protocol: 1,
        };
        let (id, check, body) =
            registration("game", &me, Duration::from_secs(3), Duration::from_secs(60))
                .expect("valid");
        assert_eq!(id, "game-a");
        assert_eq!(check, "service:game-a");
        assert_eq!(
            body,
            json!({
                "ID": "game-a", "Name": "game", "Tags": ["player", "room"],
                "Address": "10.0.0.5", "Port": 7000,
                "Meta": {"mesh_node": "a", "mesh_protocol": "1", "mesh_addr": "10.0.0.5:7000"},
                "Check": {"CheckID": "service:game-a", "Name": "mesh node heartbeat",
                    "TTL": "3s", "Status": "passing", "DeregisterCriticalServiceAfter": "60s"}
            })
        );
        let unroutable = LocalNode {
            addr: "0.0.0.0:7000".into(),
            ..me.clone()
        };
        assert!(matches!(
            registration(
                "game",
                &unroutable,
                Duration::from_secs(3),
                Duration::from_secs(60)
            ),
            Err(StartError::InvalidSetting { .. })
        ));
        let named = LocalNode {
            addr: "node-a.internal:7000".into(),
            ..me
        };
        let (_, _, body) = registration(
            "game",
            &named,
            Duration::from_secs(3),
            Duration::from_secs(60),
        )
        .expect("valid");
        assert_eq!(body["Address"], "node-a.internal");
    }
}
