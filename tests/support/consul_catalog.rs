//! The state of a Consul test agent (sans-IO): several simulated agents
//! (nodes) sharing one catalog, following `shared/reference/consul-api.md`
//! (sections 2-5 and 10): register rules and check ids, checks critical
//! until told otherwise, TTL expiry to critical with "TTL expired",
//! DeregisterCriticalServiceAfter with its 1 minute floor, one index bumped
//! only by real changes (never 0), per-service indexes, `?passing` over all
//! checks including each node's synthetic `serfHealth`, tag filters, and
//! the documented status codes and text bodies; and Connect (section 6):
//! sidecar expansion of `Connect.SidecarService` with its port range and
//! default checks (TCP, and alias checks mirroring the parent), and
//! `/v1/health/connect/<name>`.
//!
//! Time is passed in (`now`), and durations can be scaled for tests. The
//! HTTP server around it (blocking queries, tokens) lives beside it, in
//! `consul_agent`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::time::Instant;

/// An HTTP error as the agent sends it: status and text/plain body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError(pub u16, pub String);

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(400, msg.into())
}

/// Health status of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Passing,
    Warning,
    Critical,
}

impl Status {
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "passing" => Some(Status::Passing),
            "warning" => Some(Status::Warning),
            "critical" => Some(Status::Critical),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u64,
    pub meta: Map<String, Value>,
    /// `Some("connect-proxy")` for a sidecar.
    pub kind: Option<String>,
    /// The `Proxy` block of a `connect-proxy` (PascalCase keys).
    pub proxy: Option<Value>,
    pub create_index: u64,
    pub modify_index: u64,
}

impl Service {
    /// The service a `connect-proxy` stands for (`Proxy.DestinationServiceName`).
    pub fn proxy_destination(&self) -> Option<&str> {
        if self.kind.as_deref() != Some("connect-proxy") {
            return None;
        }
        self.proxy.as_ref()?["DestinationServiceName"].as_str()
    }

    /// The upstreams of a `connect-proxy`, as registered.
    pub fn upstreams(&self) -> Vec<Value> {
        self.proxy
            .as_ref()
            .and_then(|p| p["Upstreams"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// What a check runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// Passed, warned or failed through the API, critical when it expires.
    Ttl,
    /// Dials `host:port` every interval (run by the HTTP server around
    /// the catalog, since it is I/O): passing when the connection opens.
    Tcp { target: String, interval: Duration },
    /// Mirrors the worst status of a local service's checks (critical when
    /// the service is unknown, passing when it has no checks).
    Alias(String),
    /// Accepted and never run (HTTP, script, gRPC): keeps its status.
    Other,
}

impl CheckKind {
    /// The `Type` field of the check's JSON.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::Ttl => "ttl",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Alias(_) => "alias",
            CheckKind::Other => "",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Check {
    pub id: String,
    pub name: String,
    pub service_id: String,
    pub status: Status,
    pub output: String,
    /// `Some` for a TTL check: the TTL and when it expires.
    pub ttl: Option<(Duration, Instant)>,
    pub deregister_after: Option<Duration>,
    pub critical_since: Option<Instant>,
    /// The TTL ran out and has not been refreshed since.
    pub expired: bool,
    /// What the check runs.
    pub kind: CheckKind,
    /// The `Type` a catalog registration gave (`kubernetes-readiness`);
    /// empty: the kind's.
    pub declared_type: String,
    /// When a TCP check is due next.
    pub next_run: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Node {
    pub address: String,
    /// Registered through `/v1/catalog/register` (consul-k8s's synthetic
    /// `<k8s-node>-virtual` nodes): no agent runs there, so it has no
    /// `serfHealth` check.
    pub synthetic: bool,
    /// `NodeMeta` of a catalog registration.
    pub meta: Map<String, Value>,
    pub services: BTreeMap<String, Service>,
    pub checks: BTreeMap<String, Check>,
}

/// A check of a register body, parsed.
#[derive(Debug, Clone)]
struct CheckDef {
    id: String,
    name: String,
    status: Status,
    ttl: Option<Duration>,
    deregister_after: Option<Duration>,
    kind: CheckKind,
}

/// A service of a register body, parsed (the parent, or its sidecar).
#[derive(Debug, Clone)]
struct ServiceDef {
    service: Service,
    checks: Vec<CheckDef>,
}

/// Consul's `sidecar_min_port` and `sidecar_max_port` defaults.
pub const SIDECAR_PORTS: (u64, u64) = (21000, 21255);

/// For tests: factors applied to the durations read from a request: the
/// TTL, and DeregisterCriticalServiceAfter (after its 1 minute floor, so
/// 0.01 makes the floor 600 ms).
#[derive(Debug, Clone, Copy)]
pub struct TimeScale {
    pub ttl: f64,
    pub deregister: f64,
}

impl Default for TimeScale {
    fn default() -> Self {
        TimeScale {
            ttl: 1.0,
            deregister: 1.0,
        }
    }
}

/// One catalog, shared by the simulated agents (nodes).
#[derive(Debug)]
pub struct Catalog {
    pub nodes: BTreeMap<String, Node>,
    index: u64,
    /// The index of the last change of each service name.
    service_index: BTreeMap<String, u64>,
    /// The index of the last change of any service (for unknown names).
    services_index: u64,
    /// The index of the last change of the sidecars of each destination.
    connect_index: BTreeMap<String, u64>,
    /// Sidecar service name -> the service it stands for.
    proxy_of: BTreeMap<String, String>,
    time: TimeScale,
    sidecar_ports: (u64, u64),
    interval_scale: f64,
}

/// Reads a key of a register body the way the agent does:
/// case-insensitively, and with snake_case spellings of PascalCase keys.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    let want: String = key
        .chars()
        .filter(|c| *c != '_')
        .collect::<String>()
        .to_lowercase();
    obj.iter()
        .find(|(k, _)| {
            k.chars()
                .filter(|c| *c != '_')
                .collect::<String>()
                .to_lowercase()
                == want
        })
        .map(|(_, v)| v)
        .filter(|v| !v.is_null())
}

/// Parses a Go duration string: "10s", "1m30s", "500ms", "1h".
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut rest = s.trim();
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += Duration::from_secs_f64(n * unit);
        rest = &rest[unit_len..];
    }
    Some(total)
}

impl Catalog {
    pub fn new(time: TimeScale) -> Catalog {
        Catalog {
            nodes: BTreeMap::new(),
            index: 1,
            service_index: BTreeMap::new(),
            services_index: 1,
            connect_index: BTreeMap::new(),
            proxy_of: BTreeMap::new(),
            time,
            sidecar_ports: SIDECAR_PORTS,
            interval_scale: 1.0,
        }
    }

    /// Adds a simulated agent.
    pub fn add_node(&mut self, name: &str, address: &str) {
        self.nodes.insert(
            name.to_owned(),
            Node {
                address: address.to_owned(),
                ..Node::default()
            },
        );
    }

    /// The global index (never 0).
    pub fn index(&self) -> u64 {
        self.index.max(1)
    }

    /// The index a blocking query on service `name` waits on.
    pub fn service_index(&self, name: &str) -> u64 {
        self.service_index
            .get(name)
            .copied()
            .unwrap_or(self.services_index)
            .max(1)
    }

    /// Test hook: make the indexes go backwards, as they can under `?stale`.
    pub fn reset_index(&mut self, to: u64) {
        self.index = to.max(1);
        self.services_index = self.index;
        for v in self.service_index.values_mut() {
            *v = self.index;
        }
    }

    fn bump(&mut self, service_name: &str) -> u64 {
        self.index += 1;
        self.services_index = self.index;
        self.service_index
            .insert(service_name.to_owned(), self.index);
        if let Some(dest) = self.proxy_of.get(service_name) {
            self.connect_index.insert(dest.clone(), self.index);
        }
        self.index
    }

    fn node_mut(&mut self, node: &str) -> Result<&mut Node, ApiError> {
        self.nodes
            .get_mut(node)
            .ok_or_else(|| ApiError(500, format!("unknown node {node:?}")))
    }

    /// Consul's `ports.sidecar_min_port` / `sidecar_max_port` for the
    /// sidecars this catalog assigns ports to ([`SIDECAR_PORTS`] unless set).
    pub fn set_sidecar_ports(&mut self, min: u64, max: u64) {
        self.sidecar_ports = (min, max);
    }

    /// For tests: scales the `Interval` of TCP checks (0.01 makes Consul's
    /// 10 s sidecar check run every 100 ms).
    pub fn scale_intervals(&mut self, factor: f64) {
        self.interval_scale = factor;
    }

    /// Parses the service part of a register body (without `Connect`).
    fn parse_service(&self, obj: &Map<String, Value>) -> Result<ServiceDef, ApiError> {
        let name = field(obj, "Name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad("Missing service name"))?
            .to_owned();
        let id = field(obj, "ID")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .unwrap_or(&name)
            .to_owned();
        let address = field(obj, "Address")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if address == "0.0.0.0" || address == "::" {
            return Err(bad("Invalid service address"));
        }
        let tags: Vec<String> = match field(obj, "Tags") {
            None => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|t| t.as_str().map(str::to_owned))
                .collect(),
            Some(_) => return Err(bad("Request decode failed: Tags")),
        };
        let meta = match field(obj, "Meta") {
            None => Map::new(),
            Some(Value::Object(m)) if m.values().all(Value::is_string) => m.clone(),
            Some(_) => return Err(bad("Invalid Service Meta: values must be strings")),
        };
        let port = field(obj, "Port").and_then(Value::as_u64).unwrap_or(0);
        let kind = field(obj, "Kind")
            .and_then(Value::as_str)
            .filter(|k| !k.is_empty())
            .map(str::to_owned);
        let proxy = match (&kind, field(obj, "Proxy")) {
            (Some(k), Some(Value::Object(p))) if k == "connect-proxy" => Some(normalize_proxy(p)),
            _ => None,
        };

        // [Check] ++ Checks, skipping an empty or null Check.
        let mut defs: Vec<&Map<String, Value>> = Vec::new();
        if let Some(Value::Object(c)) = field(obj, "Check") {
            if !c.is_empty() {
                defs.push(c);
            }
        }
        if let Some(Value::Array(cs)) = field(obj, "Checks") {
            defs.extend(cs.iter().filter_map(Value::as_object));
        }
        let many = defs.len() > 1;
        let mut checks = Vec::new();
        for (n, def) in defs.iter().enumerate() {
            let check_id = field(def, "CheckID")
                .or_else(|| field(def, "ID"))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    if many {
                        format!("service:{id}:{}", n + 1)
                    } else {
                        format!("service:{id}")
                    }
                });
            let check_name = field(def, "Name")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .unwrap_or_else(|| format!("Service '{name}' check"));
            let status = match field(def, "Status").and_then(Value::as_str) {
                None | Some("") => Status::Critical,
                Some(s) => Status::parse(s).ok_or_else(|| {
                    bad("Status for checks must 'passing', 'warning', 'critical'")
                })?,
            };
            let ttl = match field(def, "TTL").and_then(Value::as_str) {
                None => None,
                Some(s) => Some(
                    parse_go_duration(s)
                        .ok_or_else(|| bad(format!("Invalid check: bad TTL {s:?}")))?,
                ),
            };
            let interval = match field(def, "Interval").and_then(Value::as_str) {
                None => None,
                Some(s) => Some(
                    parse_go_duration(s)
                        .ok_or_else(|| bad(format!("Invalid check: bad Interval {s:?}")))?,
                ),
            };
            let kind = if ttl.is_some() {
                CheckKind::Ttl
            } else if let Some(target) = field(def, "TCP").and_then(Value::as_str) {
                let interval =
                    interval.ok_or_else(|| bad("Invalid check: TCP check needs an Interval"))?;
                CheckKind::Tcp {
                    target: target.to_owned(),
                    interval: interval.mul_f64(self.interval_scale),
                }
            } else if let Some(svc) = field(def, "AliasService").and_then(Value::as_str) {
                CheckKind::Alias(svc.to_owned())
            } else {
                CheckKind::Other
            };
            let deregister_after =
                match field(def, "DeregisterCriticalServiceAfter").and_then(Value::as_str) {
                    None => None,
                    Some(s) => Some(parse_go_duration(s).ok_or_else(|| {
                        bad(format!(
                            "Invalid check: bad DeregisterCriticalServiceAfter {s:?}"
                        ))
                    })?),
                };
            // Values under the 1 minute floor are clamped, then scaled.
            checks.push(CheckDef {
                id: check_id,
                name: check_name,
                status,
                ttl: ttl.map(|t| t.mul_f64(self.time.ttl)),
                deregister_after: deregister_after
                    .map(|d| d.max(Duration::from_secs(60)).mul_f64(self.time.deregister)),
                kind,
            });
        }
        Ok(ServiceDef {
            service: Service {
                id,
                name,
                tags,
                address,
                port,
                meta,
                kind,
                proxy,
                create_index: 0,
                modify_index: 0,
            },
            checks,
        })
    }

    /// The sidecar `Connect.SidecarService` stands for, with Consul's
    /// defaults (reference section 6): ID `<id>-sidecar-proxy` always, Name
    /// `<name>-sidecar-proxy`, Kind `connect-proxy`, Tags/Meta/Address of
    /// the parent when its own are empty, Proxy.Destination* of the parent,
    /// LocalServiceAddress 127.0.0.1, LocalServicePort the parent's Port,
    /// the lowest free port of the sidecar range (kept on re-register), and
    /// the two default checks unless it brings its own.
    fn sidecar_def(
        &self,
        node: &str,
        parent: &Service,
        sidecar: &Map<String, Value>,
    ) -> Result<ServiceDef, ApiError> {
        let mut body = sidecar.clone();
        let sid = format!("{}-sidecar-proxy", parent.id);
        body.retain(|k, _| !k.eq_ignore_ascii_case("id") && !k.eq_ignore_ascii_case("kind"));
        body.insert("ID".into(), json!(sid));
        body.insert("Kind".into(), json!("connect-proxy"));
        if field(&body, "Name")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            body.insert(
                "Name".into(),
                json!(format!("{}-sidecar-proxy", parent.name)),
            );
        }
        let mut proxy = match field(&body, "Proxy") {
            None => Map::new(),
            Some(Value::Object(p)) => p.clone(),
            Some(_) => return Err(bad("Proxy must be an object")),
        };
        set_default(
            &mut proxy,
            "DestinationServiceName",
            json!(parent.name),
            true,
        );
        set_default(&mut proxy, "DestinationServiceID", json!(parent.id), true);
        set_default(&mut proxy, "LocalServiceAddress", json!("127.0.0.1"), false);
        set_default(&mut proxy, "LocalServicePort", json!(parent.port), false);
        body.retain(|k, _| !k.eq_ignore_ascii_case("proxy"));
        body.insert("Proxy".into(), Value::Object(proxy));
        let mut def = self.parse_service(&body)?;
        let s = &mut def.service;
        if s.tags.is_empty() {
            s.tags = parent.tags.clone();
        }
        if s.meta.is_empty() {
            s.meta = parent.meta.clone();
        }
        if s.address.is_empty() {
            s.address = parent.address.clone();
        }
        if s.port == 0 {
            s.port = self.sidecar_port(node, &sid)?;
        }
        if def.checks.is_empty() {
            let host = if s.address.is_empty() {
                "127.0.0.1"
            } else {
                &s.address
            };
            let target = if host.contains(':') {
                format!("[{host}]:{}", s.port)
            } else {
                format!("{host}:{}", s.port)
            };
            def.checks = vec![
                CheckDef {
                    id: format!("service:{sid}:1"),
                    name: "Connect Sidecar Listening".into(),
                    status: Status::Critical,
                    ttl: None,
                    deregister_after: None,
                    kind: CheckKind::Tcp {
                        target,
                        interval: Duration::from_secs(10).mul_f64(self.interval_scale),
                    },
                },
                CheckDef {
                    id: format!("service:{sid}:2"),
                    name: format!("Connect Sidecar Aliasing {}", parent.id),
                    status: Status::Critical,
                    ttl: None,
                    deregister_after: None,
                    kind: CheckKind::Alias(parent.id.clone()),
                },
            ];
        }
        Ok(def)
    }

    /// The port of sidecar `sid` on `node`: the one it has (kept on
    /// re-register), else the lowest port of the range no service of the
    /// agent uses; the documented 400 when none is left.
    fn sidecar_port(&self, node: &str, sid: &str) -> Result<u64, ApiError> {
        let (min, max) = self.sidecar_ports;
        let services = self.nodes.get(node).map(|n| &n.services);
        if let Some(existing) = services.and_then(|s| s.get(sid)) {
            if existing.port > 0 {
                return Ok(existing.port);
            }
        }
        let used: Vec<u64> = services
            .map(|s| s.values().map(|s| s.port).collect())
            .unwrap_or_default();
        (min..=max).find(|p| !used.contains(p)).ok_or_else(|| {
            bad(format!(
                "no port provided for sidecar_service and none left in the configured range [{min}, {max}]"
            ))
        })
    }

    /// `PUT /v1/agent/service/register[?replace-existing-checks]` on `node`.
    /// A `Connect.SidecarService` registers its sidecar alongside; a parent
    /// registered again without one loses the sidecar it had.
    pub fn register(
        &mut self,
        node: &str,
        body: &Value,
        replace_existing_checks: bool,
        now: Instant,
    ) -> Result<(), ApiError> {
        let obj = body
            .as_object()
            .ok_or_else(|| bad("Request decode failed: expected an object"))?;
        let def = self.parse_service(obj)?;
        let connect = match field(obj, "Connect") {
            None => None,
            Some(Value::Object(c)) => Some(c),
            Some(_) => return Err(bad("Request decode failed: Connect")),
        };
        let sidecar = match connect.and_then(|c| field(c, "SidecarService")) {
            None => None,
            Some(Value::Object(sc)) => Some(
                self.sidecar_def(node, &def.service, sc)
                    .map_err(|e| bad(format!("Invalid SidecarService: {}", e.1)))?,
            ),
            Some(_) => return Err(bad("Invalid SidecarService: must be an object")),
        };
        self.node_mut(node)?;
        let sid = format!("{}-sidecar-proxy", def.service.id);
        self.apply(node, def, replace_existing_checks, now)?;
        match sidecar {
            Some(sc) => self.apply(node, sc, replace_existing_checks, now)?,
            None => {
                let had = self.nodes.get(node).is_some_and(|n| {
                    n.services
                        .get(&sid)
                        .is_some_and(|s| s.kind.as_deref() == Some("connect-proxy"))
                });
                if had {
                    self.remove_service(node, &sid);
                }
            }
        }
        self.sync_aliases(now);
        Ok(())
    }

    /// Stores one parsed service and its checks, bumping the index only on
    /// a real change.
    fn apply(
        &mut self,
        node: &str,
        def: ServiceDef,
        replace_existing_checks: bool,
        now: Instant,
    ) -> Result<(), ApiError> {
        let ServiceDef {
            service: new_service,
            checks,
        } = def;
        let id = new_service.id.clone();
        let name = new_service.name.clone();
        if let Some(dest) = new_service.proxy_destination() {
            self.proxy_of.insert(name.clone(), dest.to_owned());
        }
        let node_state = self.node_mut(node)?;
        let mut changed = false;
        let create_index = node_state.services.get(&id).map(|s| s.create_index);
        match node_state.services.get(&id) {
            Some(old)
                if old.name == new_service.name
                    && old.tags == new_service.tags
                    && old.address == new_service.address
                    && old.port == new_service.port
                    && old.meta == new_service.meta
                    && old.kind == new_service.kind
                    && old.proxy == new_service.proxy => {}
            _ => changed = true,
        }
        let wanted: Vec<String> = checks.iter().map(|c| c.id.clone()).collect();
        for c in checks {
            match node_state.checks.get_mut(&c.id) {
                // Re-register: the check keeps its status and output.
                Some(existing) => {
                    if existing.ttl.map(|(t, _)| t) != c.ttl
                        || existing.deregister_after != c.deregister_after
                        || existing.name != c.name
                        || existing.kind != c.kind
                    {
                        changed = true;
                    }
                    existing.name = c.name;
                    existing.service_id = id.clone();
                    existing.ttl = c.ttl.map(|t| (t, existing.ttl.map_or(now + t, |(_, d)| d)));
                    existing.deregister_after = c.deregister_after;
                    if existing.kind != c.kind {
                        existing.next_run = matches!(c.kind, CheckKind::Tcp { .. }).then_some(now);
                    }
                    existing.kind = c.kind;
                }
                None => {
                    changed = true;
                    let next_run = matches!(c.kind, CheckKind::Tcp { .. }).then_some(now);
                    node_state.checks.insert(
                        c.id.clone(),
                        Check {
                            id: c.id,
                            name: c.name,
                            service_id: id.clone(),
                            status: c.status,
                            output: String::new(),
                            ttl: c.ttl.map(|t| (t, now + t)),
                            deregister_after: c.deregister_after,
                            critical_since: (c.status == Status::Critical).then_some(now),
                            expired: false,
                            kind: c.kind,
                            declared_type: String::new(),
                            next_run,
                        },
                    );
                }
            }
        }
        if replace_existing_checks {
            let before = node_state.checks.len();
            node_state
                .checks
                .retain(|cid, c| c.service_id != id || wanted.contains(cid));
            changed |= node_state.checks.len() != before;
        }
        if changed {
            let index = self.bump(&name);
            let node_state = self.node_mut(node)?;
            let mut service = new_service;
            service.create_index = create_index.unwrap_or(index);
            service.modify_index = index;
            node_state.services.insert(id, service);
        }
        Ok(())
    }

    /// Removes one service and its checks (no sidecar), bumping its name.
    fn remove_service(&mut self, node: &str, id: &str) -> Option<Service> {
        let node_state = self.nodes.get_mut(node)?;
        let service = node_state.services.remove(id)?;
        node_state.checks.retain(|_, c| c.service_id != id);
        self.bump(&service.name);
        Some(service)
    }

    /// Alias checks take the worst status of the checks of the service they
    /// alias on the same agent: critical if any is critical or the service
    /// is unknown, else warning if any warns, else passing.
    fn sync_aliases(&mut self, now: Instant) -> bool {
        let mut bumps = Vec::new();
        for node in self.nodes.values_mut() {
            let mut updates = Vec::new();
            for c in node.checks.values() {
                let CheckKind::Alias(target) = &c.kind else {
                    continue;
                };
                let status = if !node.services.contains_key(target) {
                    Status::Critical
                } else {
                    let statuses = node
                        .checks
                        .values()
                        .filter(|k| &k.service_id == target)
                        .map(|k| k.status);
                    let mut worst = Status::Passing;
                    for s in statuses {
                        match s {
                            Status::Critical => worst = Status::Critical,
                            Status::Warning if worst == Status::Passing => worst = Status::Warning,
                            _ => {}
                        }
                    }
                    worst
                };
                if status != c.status {
                    updates.push((c.id.clone(), status));
                }
            }
            for (cid, status) in updates {
                if let Some(c) = node.checks.get_mut(&cid) {
                    if status == Status::Critical {
                        c.critical_since = Some(now);
                    } else {
                        c.critical_since = None;
                    }
                    c.status = status;
                    c.output = match status {
                        Status::Passing => "All checks passing.".into(),
                        Status::Warning => "Aliased service has warnings".into(),
                        Status::Critical => "Aliased service is critical or unknown".into(),
                    };
                    if let Some(s) = node.services.get(&c.service_id) {
                        bumps.push(s.name.clone());
                    }
                }
            }
        }
        let any = !bumps.is_empty();
        for name in bumps {
            self.bump(&name);
        }
        any
    }

    /// TCP checks due at `now`: (node, check id, `host:port`). The caller
    /// dials them and reports with [`Catalog::tcp_result`].
    pub fn due_tcp_checks(&mut self, now: Instant) -> Vec<(String, String, String)> {
        let mut due = Vec::new();
        for (node_name, node) in &mut self.nodes {
            for c in node.checks.values_mut() {
                if let CheckKind::Tcp { target, interval } = &c.kind {
                    if c.next_run.is_some_and(|t| t <= now) {
                        c.next_run = Some(now + *interval);
                        due.push((node_name.clone(), c.id.clone(), target.clone()));
                    }
                }
            }
        }
        due
    }

    /// The outcome of a TCP check's dial, in Consul's words.
    pub fn tcp_result(
        &mut self,
        node: &str,
        check_id: &str,
        result: Result<(), String>,
        now: Instant,
    ) -> bool {
        let Some(n) = self.nodes.get_mut(node) else {
            return false;
        };
        let Some(c) = n.checks.get_mut(check_id) else {
            return false;
        };
        let CheckKind::Tcp { target, .. } = &c.kind else {
            return false;
        };
        let (status, output) = match result {
            Ok(()) => (Status::Passing, format!("TCP connect {target}: Success")),
            Err(e) => (Status::Critical, format!("dial tcp {target}: {e}")),
        };
        let changed = c.status != status || c.output != output;
        if status == Status::Critical && c.status != Status::Critical {
            c.critical_since = Some(now);
        } else if status != Status::Critical {
            c.critical_since = None;
        }
        c.status = status;
        c.output = output;
        if changed {
            let name = n
                .services
                .get(&c.service_id)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            self.bump(&name);
            self.sync_aliases(now);
        }
        changed
    }
    /// `PUT /v1/agent/service/deregister/:id` on `node`: the service, its
    /// checks, and its sidecar `<id>-sidecar-proxy` with the sidecar's.
    pub fn deregister(&mut self, node: &str, id: &str) -> Result<(), ApiError> {
        self.node_mut(node)?;
        if self.remove_service(node, id).is_none() {
            return Err(ApiError(
                404,
                format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."),
            ));
        }
        self.remove_service(node, &format!("{id}-sidecar-proxy"));
        self.sync_aliases(Instant::now());
        Ok(())
    }

    /// `PUT /v1/agent/check/{pass,warn,fail}/:id?note=` and
    /// `PUT /v1/agent/check/update/:id` on `node`.
    pub fn update_check(
        &mut self,
        node: &str,
        check_id: &str,
        status: Status,
        output: &str,
        now: Instant,
    ) -> Result<(), ApiError> {
        let node_state = self.node_mut(node)?;
        let Some(check) = node_state.checks.get_mut(check_id) else {
            return Err(ApiError(
                404,
                format!("Unknown check ID {check_id:?}. Ensure that the check ID is passed, not the check name."),
            ));
        };
        let Some((ttl, _)) = check.ttl else {
            return Err(ApiError(
                500,
                format!("CheckID {check_id:?} does not have associated TTL"),
            ));
        };
        check.ttl = Some((ttl, now + ttl));
        check.expired = false;
        let output = truncate_output(output);
        let changed = check.status != status || check.output != output;
        if check.status != Status::Critical && status == Status::Critical {
            check.critical_since = Some(now);
        } else if status != Status::Critical {
            check.critical_since = None;
        }
        check.status = status;
        check.output = output;
        if changed {
            let service_id = check.service_id.clone();
            let name = node_state
                .services
                .get(&service_id)
                .map(|s| s.name.clone())
                .unwrap_or_default();
            self.bump(&name);
            self.sync_aliases(now);
        }
        Ok(())
    }

    /// Advances time: expires TTLs and reaps services critical for longer
    /// than their DeregisterCriticalServiceAfter. Returns whether anything
    /// changed.
    pub fn tick(&mut self, now: Instant) -> bool {
        let mut changed_names = Vec::new();
        let mut reap: Vec<(String, String)> = Vec::new();
        for (node_name, node) in &mut self.nodes {
            for check in node.checks.values_mut() {
                if let Some((_, deadline)) = check.ttl {
                    if deadline <= now && !check.expired {
                        check.expired = true;
                        check.output = if check.output.is_empty() {
                            "TTL expired".to_owned()
                        } else {
                            format!(
                                "TTL expired (last output before timeout follows): {}",
                                check.output
                            )
                        };
                        if check.status != Status::Critical {
                            check.status = Status::Critical;
                            check.critical_since = Some(deadline);
                        }
                        if let Some(s) = node.services.get(&check.service_id) {
                            changed_names.push(s.name.clone());
                        }
                    }
                }
                if let (Status::Critical, Some(after), Some(since)) =
                    (check.status, check.deregister_after, check.critical_since)
                {
                    if since + after <= now {
                        reap.push((node_name.clone(), check.service_id.clone()));
                    }
                }
            }
        }
        let mut any = !changed_names.is_empty();
        for name in changed_names {
            self.bump(&name);
        }
        for (node, id) in reap {
            if self.deregister(&node, &id).is_ok() {
                any = true;
            }
        }
        any |= self.sync_aliases(now);
        any
    }

    /// `PUT /v1/catalog/register`, the servers' endpoint that consul-k8s's
    /// endpoints controller calls for every pod (reference
    /// deploy-and-agentless section 3, Consul's `Catalog.Register`):
    ///
    /// - `Node` is required (`Must provide node`), `ID` must be a UUID
    ///   (`Bad node ID`), `Address` is required unless `SkipNodeUpdate`;
    ///   these are the RPC's errors, which the HTTP layer answers with 500.
    /// - A missing node is created (without `serfHealth`: no agent runs
    ///   there); an existing one is updated (address, `NodeMeta`) unless
    ///   `SkipNodeUpdate`.
    /// - `Service.ID` defaults to `Service.Service`; an ID without a name
    ///   and a `0.0.0.0` address are refused.
    /// - `Check`/`Checks`: `CheckID` defaults to `Name`; a `ServiceID`
    ///   must name the request's service or one the node has (`Unknown
    ///   service ID '<s>' for check ID '<c>'`); a check's `Node` must be
    ///   the request's. Catalog checks are static: the status given is the
    ///   status kept (a re-registration flips it, as the controller does on
    ///   readiness), and nothing expires them.
    pub fn catalog_register(&mut self, body: &Value, now: Instant) -> Result<(), ApiError> {
        let rpc = |m: String| ApiError(500, m);
        let (obj, node) = catalog_body(body)?;
        if let Some(id) = field(obj, "ID")
            .and_then(Value::as_str)
            .filter(|i| !i.is_empty())
        {
            if !is_uuid(id) {
                return Err(rpc(format!(
                    "Bad node ID: uuid string is wrong length or improperly formatted: {id:?}"
                )));
            }
        }
        let skip = field(obj, "SkipNodeUpdate")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let address = field(obj, "Address")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned();
        if address.is_empty() && !skip {
            return Err(rpc(
                "Must provide address if SkipNodeUpdate is not set".into()
            ));
        }
        let node_meta = match field(obj, "NodeMeta") {
            None => Map::new(),
            Some(Value::Object(m)) if m.values().all(Value::is_string) => m.clone(),
            Some(_) => {
                return Err(bad(
                    "Request decode failed: NodeMeta values must be strings",
                ))
            }
        };
        let service = match field(obj, "Service") {
            None => None,
            Some(Value::Object(svc)) => {
                let name = field(svc, "Service")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let id = field(svc, "ID").and_then(Value::as_str).unwrap_or("");
                if name.is_empty() {
                    if !id.is_empty() {
                        return Err(rpc(
                            "Must provide service name (Service.Service) when service ID is provided"
                                .into(),
                        ));
                    }
                    None
                } else {
                    let mut m = svc.clone();
                    m.retain(|k, _| {
                        !["service", "check", "checks", "name"].contains(&k.to_lowercase().as_str())
                    });
                    m.insert("Name".into(), json!(name));
                    let def = self.parse_service(&m).map_err(|e| rpc(e.1))?;
                    Some(def)
                }
            }
            Some(_) => return Err(bad("Request decode failed: Service")),
        };
        let mut defs: Vec<&Map<String, Value>> = Vec::new();
        if let Some(Value::Object(c)) = field(obj, "Check") {
            defs.push(c);
        }
        if let Some(Value::Array(cs)) = field(obj, "Checks") {
            defs.extend(cs.iter().filter_map(Value::as_object));
        }
        let mut checks = Vec::new();
        for def in defs {
            let name = field(def, "Name").and_then(Value::as_str).unwrap_or("");
            let id = field(def, "CheckID")
                .and_then(Value::as_str)
                .filter(|i| !i.is_empty())
                .unwrap_or(name)
                .to_owned();
            let service_id = field(def, "ServiceID")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if let Some(n) = field(def, "Node").and_then(Value::as_str) {
                if !n.is_empty() && n != node {
                    return Err(rpc(format!(
                        "Node name {n:?} for check {id:?} does not match the request's {node:?}"
                    )));
                }
            }
            let known = service.as_ref().is_some_and(|s| s.service.id == service_id)
                || self
                    .nodes
                    .get(&node)
                    .is_some_and(|n| n.services.contains_key(&service_id));
            if !service_id.is_empty() && !known {
                return Err(rpc(format!(
                    "Unknown service ID '{service_id}' for check ID '{id}'"
                )));
            }
            let status = match field(def, "Status").and_then(Value::as_str) {
                None | Some("") => Status::Critical,
                Some(s) => Status::parse(s).ok_or_else(|| {
                    rpc("Status for checks must 'passing', 'warning', 'critical'".into())
                })?,
            };
            checks.push(Check {
                id,
                name: name.to_owned(),
                service_id,
                status,
                output: truncate_output(field(def, "Output").and_then(Value::as_str).unwrap_or("")),
                ttl: None,
                deregister_after: None,
                critical_since: (status == Status::Critical).then_some(now),
                expired: false,
                kind: CheckKind::Other,
                declared_type: field(def, "Type")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                next_run: None,
            });
        }

        match self.nodes.get_mut(&node) {
            None => {
                self.nodes.insert(
                    node.clone(),
                    Node {
                        address: address.clone(),
                        synthetic: true,
                        meta: node_meta,
                        ..Node::default()
                    },
                );
            }
            Some(n) if !skip => {
                n.address = address;
                n.meta = node_meta;
            }
            Some(_) => {}
        }
        if let Some(def) = service {
            self.apply(&node, def, false, now)?;
        }
        for c in checks {
            let node_state = self.node_mut(&node)?;
            let same = node_state.checks.get(&c.id).is_some_and(|old| {
                old.status == c.status
                    && old.output == c.output
                    && old.name == c.name
                    && old.service_id == c.service_id
                    && old.declared_type == c.declared_type
            });
            if same {
                continue;
            }
            let service_name = node_state
                .services
                .get(&c.service_id)
                .map(|s| s.name.clone());
            node_state.checks.insert(c.id.clone(), c);
            match service_name {
                Some(name) => {
                    self.bump(&name);
                }
                None => {
                    // A node-level check changes every service of the node.
                    let all: Vec<String> = self
                        .nodes
                        .get(&node)
                        .map(|n| n.services.values().map(|s| s.name.clone()).collect())
                        .unwrap_or_default();
                    for name in all {
                        self.bump(&name);
                    }
                }
            }
        }
        self.sync_aliases(now);
        Ok(())
    }

    /// `PUT /v1/catalog/deregister` `{Node, ServiceID | CheckID}`: the
    /// service (with its checks), the check, or with neither the node and
    /// everything on it. An unknown node or ID is a no-op, as in Consul's
    /// state store.
    pub fn catalog_deregister(&mut self, body: &Value) -> Result<(), ApiError> {
        let (obj, node) = catalog_body(body)?;
        let service_id = field(obj, "ServiceID").and_then(Value::as_str);
        let check_id = field(obj, "CheckID").and_then(Value::as_str);
        if !self.nodes.contains_key(&node) {
            return Ok(());
        }
        match (service_id, check_id) {
            (Some(id), _) if !id.is_empty() => {
                self.remove_service(&node, id);
            }
            (_, Some(id)) if !id.is_empty() => {
                let n = self.node_mut(&node)?;
                if let Some(c) = n.checks.remove(id) {
                    let name = n.services.get(&c.service_id).map(|s| s.name.clone());
                    if let Some(name) = name {
                        self.bump(&name);
                    }
                }
            }
            _ => {
                if let Some(n) = self.nodes.remove(&node) {
                    for s in n.services.values() {
                        self.bump(&s.name);
                    }
                }
            }
        }
        self.sync_aliases(Instant::now());
        Ok(())
    }

    /// The service name of `id` on `node`, if registered.
    pub fn service_name(&self, node: &str, id: &str) -> Option<String> {
        self.nodes
            .get(node)
            .and_then(|n| n.services.get(id))
            .map(|s| s.name.clone())
    }

    /// Test hook: the agent of `node` restarted in `-dev` mode and forgot
    /// every registration it held.
    pub fn restart_agent(&mut self, node: &str) {
        let Some(n) = self.nodes.get_mut(node) else {
            return;
        };
        let names: Vec<String> = n.services.values().map(|s| s.name.clone()).collect();
        n.services.clear();
        n.checks.clear();
        for name in names {
            self.bump(&name);
        }
    }

    /// The JSON of one health entry (`Node`, `Service`, `Checks` with the
    /// node's synthetic `serfHealth`), and whether every check passes.
    fn health_entry(node_name: &str, node: &Node, service: &Service) -> (Value, bool) {
        let mut checks = Vec::new();
        if !node.synthetic {
            checks.push(json!({
                "Node": node_name, "CheckID": "serfHealth", "Name": "Serf Health Status",
                "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                "ServiceID": "", "ServiceName": "", "ServiceTags": []
            }));
        }
        let mut all_passing = true;
        // Node-level checks (a catalog registration's without ServiceID)
        // count for every service of the node, as Consul's do.
        for c in node
            .checks
            .values()
            .filter(|c| c.service_id == service.id || c.service_id.is_empty())
        {
            all_passing &= c.status == Status::Passing;
            checks.push(check_json(node_name, c, service));
        }
        let mut svc = json!({
            "ID": service.id, "Service": service.name, "Tags": service.tags,
            "Address": service.address, "Meta": service.meta, "Port": service.port,
            "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
            "CreateIndex": service.create_index, "ModifyIndex": service.modify_index
        });
        if let Some(kind) = &service.kind {
            svc["Kind"] = json!(kind);
        }
        if let Some(proxy) = &service.proxy {
            svc["Proxy"] = proxy.clone();
        }
        let node_meta = if node.synthetic {
            Value::Object(node.meta.clone())
        } else {
            json!({"consul-network-segment": ""})
        };
        let entry = json!({
            "Node": {
                "ID": "", "Node": node_name, "Address": node.address, "Datacenter": "dc1",
                "TaggedAddresses": {"lan": node.address, "wan": node.address},
                "Meta": node_meta
            },
            "Service": svc,
            "Checks": checks
        });
        (entry, all_passing)
    }

    /// `GET /v1/health/service/:name[?passing][&tag=..]`: the entries and
    /// the index to send (before `?passing` filtering, as Consul does).
    pub fn health_service(&self, name: &str, passing: bool, tags: &[String]) -> (Vec<Value>, u64) {
        let mut out = Vec::new();
        for (node_name, node) in &self.nodes {
            for service in node.services.values().filter(|s| s.name == name) {
                if !tags
                    .iter()
                    .all(|t| service.tags.iter().any(|st| st.eq_ignore_ascii_case(t)))
                {
                    continue;
                }
                let (entry, all_passing) = Self::health_entry(node_name, node, service);
                if passing && !all_passing {
                    continue;
                }
                out.push(entry);
            }
        }
        (out, self.service_index(name))
    }

    /// `GET /v1/health/connect/:name[?passing]`: the `connect-proxy`
    /// services whose `Proxy.DestinationServiceName` is `name`, with their
    /// own checks (the TCP one and the alias mirroring the parent), and the
    /// index of the last change of any of them.
    pub fn health_connect(&self, name: &str, passing: bool) -> (Vec<Value>, u64) {
        let mut out = Vec::new();
        for (node_name, node) in &self.nodes {
            for service in node
                .services
                .values()
                .filter(|s| s.proxy_destination() == Some(name))
            {
                let (entry, all_passing) = Self::health_entry(node_name, node, service);
                if passing && !all_passing {
                    continue;
                }
                out.push(entry);
            }
        }
        let index = self
            .connect_index
            .get(name)
            .copied()
            .unwrap_or(self.services_index);
        (out, index.max(1))
    }

    /// `GET /v1/catalog/services`: every service name (and the agent's own
    /// `consul`) with the union of its instances' tags, and the index of
    /// the last change of any service.
    pub fn catalog_services(&self) -> (Value, u64) {
        let mut names: BTreeMap<String, Vec<String>> = BTreeMap::new();
        names.insert("consul".into(), Vec::new());
        for node in self.nodes.values() {
            for s in node.services.values() {
                let tags = names.entry(s.name.clone()).or_default();
                for t in &s.tags {
                    if !tags.contains(t) {
                        tags.push(t.clone());
                    }
                }
            }
        }
        (json!(names), self.services_index.max(1))
    }

    /// `GET /v1/agent/checks` of `node`: its checks by ID.
    pub fn agent_checks(&self, node: &str) -> Value {
        let mut out = Map::new();
        if let Some(n) = self.nodes.get(node) {
            for c in n.checks.values() {
                let empty = Service {
                    id: String::new(),
                    name: String::new(),
                    tags: Vec::new(),
                    address: String::new(),
                    port: 0,
                    meta: Map::new(),
                    kind: None,
                    proxy: None,
                    create_index: 0,
                    modify_index: 0,
                };
                let service = n.services.get(&c.service_id).unwrap_or(&empty);
                out.insert(c.id.clone(), check_json(node, c, service));
            }
        }
        Value::Object(out)
    }

    /// `GET /v1/agent/services` of `node`.
    pub fn agent_services(&self, node: &str) -> Value {
        let mut out = Map::new();
        if let Some(n) = self.nodes.get(node) {
            for s in n.services.values() {
                let mut entry = json!({
                    "ID": s.id, "Service": s.name, "Tags": s.tags, "Meta": s.meta,
                    "Port": s.port, "Address": s.address,
                    "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
                    "Datacenter": "dc1"
                });
                if let Some(kind) = &s.kind {
                    entry["Kind"] = json!(kind);
                }
                if let Some(proxy) = &s.proxy {
                    entry["Proxy"] = proxy.clone();
                }
                if let Ok(ip) = s.address.parse::<std::net::IpAddr>() {
                    let family = if ip.is_ipv4() { "ipv4" } else { "ipv6" };
                    entry["TaggedAddresses"] = json!({
                        format!("lan_{family}"): {"Address": s.address, "Port": s.port},
                        format!("wan_{family}"): {"Address": s.address, "Port": s.port}
                    });
                }
                out.insert(s.id.clone(), entry);
            }
        }
        Value::Object(out)
    }

    /// Allocates the next index of the one index space (KV, sessions and
    /// the catalog share it, as Raft indexes do in Consul).
    pub fn next_index(&mut self) -> u64 {
        self.index += 1;
        self.index
    }
}

/// A check as health and agent reads show it.
fn check_json(node: &str, c: &Check, service: &Service) -> Value {
    json!({
        "Node": node, "CheckID": c.id, "Name": c.name,
        "Status": c.status.as_str(), "Notes": "", "Output": c.output,
        "ServiceID": c.service_id, "ServiceName": service.name,
        "ServiceTags": service.tags,
        "Type": if c.declared_type.is_empty() { c.kind.type_name() } else { &c.declared_type }
    })
}

/// Output over 4096 bytes is truncated as the agent does.
fn truncate_output(s: &str) -> String {
    const MAX: usize = 4096;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut cut = MAX;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{} ... (captured {MAX} of {} bytes)", &s[..cut], s.len())
}

/// Sets `key` of a Proxy block (matched case-insensitively, stored
/// PascalCase): always when `force`, else only when absent.
fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value, force: bool) {
    let present = field(obj, key).cloned();
    let want = key.to_lowercase();
    obj.retain(|k, _| k.replace('_', "").to_lowercase() != want);
    let v = match present {
        Some(v) if !force => v,
        _ => value,
    };
    obj.insert(key.to_owned(), v);
}

/// A Proxy block with the keys Consul's structs emit: PascalCase,
/// `MeshGateway`/`Expose` `{}` when absent, each upstream's
/// `DestinationType` `service` by default.
fn normalize_proxy(p: &Map<String, Value>) -> Value {
    const KEYS: [&str; 7] = [
        "DestinationServiceName",
        "DestinationServiceID",
        "LocalServiceAddress",
        "LocalServicePort",
        "Config",
        "MeshGateway",
        "Expose",
    ];
    const UPSTREAM_KEYS: [&str; 10] = [
        "DestinationType",
        "DestinationName",
        "DestinationNamespace",
        "DestinationPartition",
        "DestinationPeer",
        "Datacenter",
        "LocalBindAddress",
        "LocalBindPort",
        "Config",
        "MeshGateway",
    ];
    let mut out = Map::new();
    for k in KEYS {
        if let Some(v) = field(p, k) {
            out.insert(k.to_owned(), v.clone());
        }
    }
    for k in ["MeshGateway", "Expose"] {
        out.entry(k).or_insert_with(|| json!({}));
    }
    let upstreams: Vec<Value> = field(p, "Upstreams")
        .and_then(Value::as_array)
        .map(|ups| {
            ups.iter()
                .filter_map(Value::as_object)
                .map(|u| {
                    let mut o = Map::new();
                    for k in UPSTREAM_KEYS {
                        if let Some(v) = field(u, k) {
                            o.insert(k.to_owned(), v.clone());
                        }
                    }
                    o.entry("DestinationType")
                        .or_insert_with(|| json!("service"));
                    o.entry("MeshGateway").or_insert_with(|| json!({}));
                    Value::Object(o)
                })
                .collect()
        })
        .unwrap_or_default();
    if !upstreams.is_empty() {
        out.insert("Upstreams".into(), Value::Array(upstreams));
    }
    Value::Object(out)
}

/// A catalog write's body and its `Node` (required: the RPC's 500
/// `Must provide node`).
fn catalog_body(body: &Value) -> Result<(&Map<String, Value>, String), ApiError> {
    let obj = body
        .as_object()
        .ok_or_else(|| bad("Request decode failed: expected an object"))?;
    let node = field(obj, "Node")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError(500, "Must provide node".into()))?
        .to_owned();
    Ok((obj, node))
}

/// Whether `s` has the shape `go-uuid` parses: 36 characters, hex digits
/// with dashes after the 8th, 12th, 16th and 20th.
fn is_uuid(s: &str) -> bool {
    s.len() == 36
        && s.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            _ => c.is_ascii_hexdigit(),
        })
}
