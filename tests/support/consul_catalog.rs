//! The state of a Consul test agent (sans-IO): several simulated agents
//! (nodes) sharing one catalog, following `shared/reference/consul-api.md`
//! (sections 2-5 and 10): register rules and check ids, checks critical
//! until told otherwise, TTL expiry to critical with "TTL expired",
//! DeregisterCriticalServiceAfter with its 1 minute floor, one index bumped
//! only by real changes (never 0), per-service indexes, `?passing` over all
//! checks including each node's synthetic `serfHealth`, tag filters, and
//! the documented status codes and text bodies.
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
    pub create_index: u64,
    pub modify_index: u64,
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
}

#[derive(Debug, Default)]
pub struct Node {
    pub address: String,
    pub services: BTreeMap<String, Service>,
    pub checks: BTreeMap<String, Check>,
}

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
    time: TimeScale,
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
            time,
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
        self.index
    }

    fn node_mut(&mut self, node: &str) -> Result<&mut Node, ApiError> {
        self.nodes
            .get_mut(node)
            .ok_or_else(|| ApiError(500, format!("unknown node {node:?}")))
    }

    /// `PUT /v1/agent/service/register[?replace-existing-checks]` on `node`.
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
            // Other kinds (HTTP, TCP, script) are accepted but never run:
            // they keep the status they were registered with.
            let deregister_after =
                match field(def, "DeregisterCriticalServiceAfter").and_then(Value::as_str) {
                    None => None,
                    Some(s) => Some(parse_go_duration(s).ok_or_else(|| {
                        bad(format!(
                            "Invalid check: bad DeregisterCriticalServiceAfter {s:?}"
                        ))
                    })?),
                };
            checks.push((check_id, check_name, status, ttl, deregister_after));
        }

        // Values under the 1 minute floor are clamped, then scaled.
        let scaled: Vec<_> = checks
            .into_iter()
            .map(|(cid, cname, status, ttl, dereg)| {
                let ttl = ttl.map(|t| t.mul_f64(self.time.ttl));
                let dereg =
                    dereg.map(|d| d.max(Duration::from_secs(60)).mul_f64(self.time.deregister));
                (cid, cname, status, ttl, dereg)
            })
            .collect();
        let node_state = self.node_mut(node)?;
        let mut changed = false;
        let create_index = node_state.services.get(&id).map(|s| s.create_index);
        let new_service = Service {
            id: id.clone(),
            name: name.clone(),
            tags,
            address,
            port,
            meta,
            create_index: 0,
            modify_index: 0,
        };
        match node_state.services.get(&id) {
            Some(old)
                if old.name == new_service.name
                    && old.tags == new_service.tags
                    && old.address == new_service.address
                    && old.port == new_service.port
                    && old.meta == new_service.meta => {}
            _ => changed = true,
        }
        let wanted: Vec<String> = scaled.iter().map(|c| c.0.clone()).collect();
        for (cid, cname, status, ttl, dereg) in scaled {
            match node_state.checks.get_mut(&cid) {
                // Re-register: the check keeps its status and output.
                Some(existing) => {
                    if existing.ttl.map(|(t, _)| t) != ttl
                        || existing.deregister_after != dereg
                        || existing.name != cname
                    {
                        changed = true;
                    }
                    existing.name = cname;
                    existing.service_id = id.clone();
                    existing.ttl = ttl.map(|t| (t, existing.ttl.map_or(now + t, |(_, d)| d)));
                    existing.deregister_after = dereg;
                }
                None => {
                    changed = true;
                    node_state.checks.insert(
                        cid.clone(),
                        Check {
                            id: cid,
                            name: cname,
                            service_id: id.clone(),
                            status,
                            output: String::new(),
                            ttl: ttl.map(|t| (t, now + t)),
                            deregister_after: dereg,
                            critical_since: (status == Status::Critical).then_some(now),
                            expired: false,
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

    /// `PUT /v1/agent/service/deregister/:id` on `node`.
    pub fn deregister(&mut self, node: &str, id: &str) -> Result<(), ApiError> {
        let node_state = self.node_mut(node)?;
        let Some(service) = node_state.services.remove(id) else {
            return Err(ApiError(
                404,
                format!("Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."),
            ));
        };
        let sidecar = format!("{id}-sidecar-proxy");
        node_state.services.remove(&sidecar);
        node_state
            .checks
            .retain(|_, c| c.service_id != id && c.service_id != sidecar);
        self.bump(&service.name);
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
        any
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
                let mut checks = vec![json!({
                    "Node": node_name, "CheckID": "serfHealth", "Name": "Serf Health Status",
                    "Status": "passing", "Notes": "", "Output": "Agent alive and reachable",
                    "ServiceID": "", "ServiceName": "", "ServiceTags": []
                })];
                let mut all_passing = true;
                for c in node.checks.values().filter(|c| c.service_id == service.id) {
                    all_passing &= c.status == Status::Passing;
                    checks.push(json!({
                        "Node": node_name, "CheckID": c.id, "Name": c.name,
                        "Status": c.status.as_str(), "Notes": "", "Output": c.output,
                        "ServiceID": service.id, "ServiceName": service.name,
                        "ServiceTags": service.tags, "Type": "ttl"
                    }));
                }
                if passing && !all_passing {
                    continue;
                }
                out.push(json!({
                    "Node": {
                        "ID": "", "Node": node_name, "Address": node.address, "Datacenter": "dc1",
                        "TaggedAddresses": {"lan": node.address, "wan": node.address},
                        "Meta": {"consul-network-segment": ""}
                    },
                    "Service": {
                        "ID": service.id, "Service": service.name, "Tags": service.tags,
                        "Address": service.address, "Meta": service.meta, "Port": service.port,
                        "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": false,
                        "CreateIndex": service.create_index, "ModifyIndex": service.modify_index
                    },
                    "Checks": checks
                }));
            }
        }
        (out, self.service_index(name))
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
