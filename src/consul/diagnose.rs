//! [`Consul::diagnose`]: what the adapter needs of Consul, checked without
//! registering anything, each problem with its fix (the `mesh-node
//! diagnose` command prints these, beside its own checks).

use std::time::{Duration, SystemTime};

use serde_json::Value;

use super::api::{Api, ApiError};
use super::observe::Relogin;
use super::watch::{HealthEntry, Identify, META_NODE};
use super::{segment, Consul};

/// One check of a diagnosis: what was checked, whether it holds, what was
/// seen, and when it does not hold, what to do.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Finding {
    /// What was checked (`reachable`, `clock`, `token`, ...).
    pub check: String,
    /// Whether it holds.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
    /// The fix, when it does not hold.
    pub fix: Option<String>,
}

impl Finding {
    /// A check that holds.
    pub fn pass(check: impl Into<String>, detail: impl Into<String>) -> Finding {
        Finding {
            check: check.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    /// A problem and its fix.
    pub fn fail(
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check: check.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mark = if self.ok { "ok     " } else { "PROBLEM" };
        write!(f, "{mark} {}: {}", self.check, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n        fix: {fix}")?;
        }
        Ok(())
    }
}

/// The largest clock difference with Consul's taken as fine (its `Date`
/// header has a resolution of one second).
const CLOCK_SLACK: Duration = Duration::from_secs(2);

/// The hint for a request that got no answer.
fn unreachable_fix(e: &str) -> String {
    if e.contains("certificate") || e.contains("tls") || e.contains("TLS") {
        "check the TLS settings: CONSUL_CACERT (consul-k8s mounts consul-ca.pem), and the name: the servers' certificate names <release>-server, .<namespace> and .<namespace>.svc, not .svc.cluster.local (or set CONSUL_TLS_SERVER_NAME)".to_owned()
    } else {
        "check the address (MESH_CONSUL, CONSUL_HTTP_ADDR): a local agent at http://127.0.0.1:8500, or the servers (https://consul-server.consul.svc:8501 under consul-k8s); and that nothing (a NetworkPolicy, the transparent proxy) blocks it".to_owned()
    }
}

impl Consul {
    /// Checks, without registering anything, what this adapter needs of
    /// Consul, for a node `node` of cluster `cluster`: Consul answers (and
    /// has a leader), the clocks agree (within 2 s, by the `Date` header),
    /// the login works (observe mode with a login: it logs out again), the
    /// token is known and what it holds, the service can be read and, in
    /// observe mode, lists this node passing (the platform registered it),
    /// and Connect's CA answers (needed by mesh mode). Stops at the first
    /// check that makes the others meaningless (Consul unreachable).
    pub async fn diagnose(&self, cluster: &str, node: &str) -> Vec<Finding> {
        let mut out = Vec::new();
        let api = match self.api() {
            Ok(a) => a,
            Err(e) => {
                out.push(Finding::fail(
                    "settings",
                    e.to_string(),
                    "fix the Consul settings named above",
                ));
                return out;
            }
        };
        if !reachable(&api, &mut out).await {
            return out;
        }
        let mut api = api;
        let mut relogin = None;
        if let Some(login) = self.observe_settings().and_then(|o| o.login.clone()) {
            let r = Relogin::new(&api, login);
            match r.login().await {
                Ok(a) => {
                    out.push(Finding::pass(
                        "login",
                        format!("auth method {:?} minted a token", r.auth_method()),
                    ));
                    api = a;
                    relogin = Some(r);
                }
                Err(e) => out.push(Finding::fail(
                    "login",
                    format!("auth method {:?}: {e}", r.auth_method()),
                    "check the auth method's name (consul-k8s: <release>-k8s-auth-method), the bearer token file (the pod's service-account token), and that the service account's name is the Consul service's (the binding rule names the service after it)",
                )),
            }
        }
        token(&api, &mut out).await;
        let service = self
            .service_setting()
            .map_or_else(|| cluster.to_owned(), str::to_owned);
        let identify = match self.observe_settings() {
            Some(o) => Identify::Observed(o.node_meta.clone()),
            None => Identify::Registered,
        };
        service_read(&api, &service, node, &identify, &mut out).await;
        connect(&api, self.mesh_mode(), &mut out).await;
        if let Some(r) = relogin {
            if let Err(e) = r.logout().await {
                out.push(Finding::fail(
                    "logout",
                    format!("the diagnosis's login token was not destroyed: {e}"),
                    "destroy it by hand (consul acl token delete), or let the platform's clean-up do it",
                ));
            }
        }
        out
    }
}

/// `GET /v1/status/leader` and the clock: false when Consul is not there.
async fn reachable(api: &Api, out: &mut Vec<Finding>) -> bool {
    let base = api.base().to_owned();
    let started = std::time::Instant::now();
    match api.probe("status/leader", &[]).await {
        Err(ApiError::Transport(e)) => {
            out.push(Finding::fail(
                "reachable",
                format!("{base}: {e}"),
                unreachable_fix(&e),
            ));
            false
        }
        Err(e) => {
            out.push(Finding::fail(
                "reachable",
                format!("{base}: {e}"),
                unreachable_fix(""),
            ));
            false
        }
        Ok((200, date, body)) => {
            let leader: String = serde_json::from_slice(&body).unwrap_or_default();
            if leader.is_empty() {
                out.push(Finding::fail(
                    "reachable",
                    format!("{base} answers, but the servers have no leader"),
                    "the servers have lost quorum: check that a majority of them run and reach each other",
                ));
            } else {
                out.push(Finding::pass(
                    "reachable",
                    format!(
                        "{base} answers in {} ms, leader {leader}",
                        started.elapsed().as_millis()
                    ),
                ));
            }
            clock(date.as_deref(), out);
            true
        }
        Ok((code, _, body)) => {
            out.push(Finding::fail(
                "reachable",
                format!(
                    "{base} answered {code}: {}",
                    String::from_utf8_lossy(&body).trim()
                ),
                "is this Consul's HTTP API? Check the address and port (8500 http, 8501 https)",
            ));
            false
        }
    }
}

/// The clock against Consul's `Date` header.
fn clock(date: Option<&str>, out: &mut Vec<Finding>) {
    let Some(theirs) = date.and_then(|d| httpdate::parse_http_date(d).ok()) else {
        out.push(Finding::pass(
            "clock",
            "Consul sent no Date header to compare with",
        ));
        return;
    };
    let now = SystemTime::now();
    let (skew, ahead) = match now.duration_since(theirs) {
        Ok(d) => (d, true),
        Err(e) => (e.duration(), false),
    };
    if skew <= CLOCK_SLACK {
        out.push(Finding::pass(
            "clock",
            "within 2 s of Consul's (its Date header)",
        ));
    } else {
        out.push(Finding::fail(
            "clock",
            format!(
                "this clock is {} s {} Consul's",
                skew.as_secs(),
                if ahead { "ahead of" } else { "behind" }
            ),
            "run time synchronisation (chrony, systemd-timesyncd, the platform's NTP): session TTLs, lease deadlines and certificate validity assume close clocks",
        ));
    }
}

/// `GET /v1/acl/token/self`.
async fn token(api: &Api, out: &mut Vec<Finding>) {
    match api.probe("acl/token/self", &[]).await {
        Ok((200, _, body)) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            let names = |key: &str, field: &str| -> Vec<String> {
                v[key]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x[field].as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default()
            };
            out.push(Finding::pass(
                "token",
                format!(
                    "accessor {}, service identities {:?}, policies {:?}",
                    v["AccessorID"].as_str().unwrap_or("?"),
                    names("ServiceIdentities", "ServiceName"),
                    names("Policies", "Name"),
                ),
            ));
        }
        Ok((401, _, _)) => out.push(Finding::pass("token", "ACLs are off: no token needed")),
        Ok((403, _, body)) => out.push(Finding::fail(
            "token",
            format!(
                "Consul refuses the token: {}",
                String::from_utf8_lossy(&body).trim()
            ),
            "give a token Consul knows (CONSUL_HTTP_TOKEN, CONSUL_HTTP_TOKEN_FILE, Consul::token), or log in (observe mode: MESH_CONSUL_LOGIN)",
        )),
        Ok((code, _, body)) => out.push(Finding::fail(
            "token",
            format!("{code}: {}", String::from_utf8_lossy(&body).trim()),
            "see Consul's answer above",
        )),
        Err(e) => out.push(Finding::fail("token", e.to_string(), unreachable_fix(""))),
    }
}

/// `GET /v1/health/service/<service>`, and this node's entry in it.
async fn service_read(
    api: &Api,
    service: &str,
    node: &str,
    identify: &Identify,
    out: &mut Vec<Finding>,
) {
    let path = format!("health/service/{}", segment(service));
    let entries: Vec<HealthEntry> = match api.probe(&path, &[]).await {
        Ok((200, _, body)) => match serde_json::from_slice(&body) {
            Ok(e) => e,
            Err(e) => {
                out.push(Finding::fail(
                    "service",
                    format!("{path}: cannot read the answer: {e}"),
                    "is this Consul's HTTP API?",
                ));
                return;
            }
        },
        Ok((403, _, body)) => {
            out.push(Finding::fail(
                "service",
                format!(
                    "reading {service:?} is refused: {}",
                    String::from_utf8_lossy(&body).trim()
                ),
                format!("the token needs service:read on {service:?} (node:read too for the health endpoint); consul-k8s's login token has both"),
            ));
            return;
        }
        Ok((code, _, body)) => {
            out.push(Finding::fail(
                "service",
                format!("{path}: {code} {}", String::from_utf8_lossy(&body).trim()),
                "see Consul's answer above",
            ));
            return;
        }
        Err(e) => {
            out.push(Finding::fail("service", e.to_string(), unreachable_fix("")));
            return;
        }
    };
    let keys: Vec<String> = match identify {
        Identify::Registered => vec![META_NODE.to_owned()],
        Identify::Observed(keys) => keys.clone(),
    };
    let name_of = |e: &HealthEntry| {
        let meta = e.service.meta.clone().unwrap_or_default();
        keys.iter().find_map(|k| meta.get(k).cloned())
    };
    let passing = |e: &HealthEntry| e.checks.iter().all(|c| c.status == "passing");
    let names: Vec<String> = entries.iter().filter_map(name_of).collect();
    let mine = entries.iter().find(|e| name_of(e).as_deref() == Some(node));
    let summary = format!(
        "{service:?}: {} instances ({} passing), members {names:?}",
        entries.len(),
        entries.iter().filter(|e| passing(e)).count()
    );
    match (identify, mine) {
        (_, Some(e)) if passing(e) => {
            out.push(Finding::pass("service", format!("{summary}; this node's is passing")))
        }
        (_, Some(e)) => {
            let failing: Vec<String> = e
                .checks
                .iter()
                .filter(|c| c.status != "passing")
                .map(|c| format!("{} {}", c.check_id, c.status))
                .collect();
            out.push(Finding::fail(
                "service",
                format!("{summary}; this node's is not passing: {failing:?}"),
                match identify {
                    Identify::Observed(_) => "the platform's health says not ready: check the node's /readyz and the readiness probe",
                    Identify::Registered => "the TTL check is failing: is the node running and its heartbeat reaching the agent?",
                },
            ));
        }
        (Identify::Observed(_), None) => out.push(Finding::fail(
            "service",
            format!("{summary}; none is named {node:?} by meta {keys:?}"),
            "the platform has not registered this node: under consul-k8s, check the pod's consul.hashicorp.com/connect-inject annotation and that the node id is the pod name (POD_NAME); on Nomad, the service's meta alloc_id and MESH_NODE_ID=${NOMAD_ALLOC_ID}",
        )),
        (Identify::Registered, None) => out.push(Finding::pass(
            "service",
            format!("{summary}; this node registers when it starts"),
        )),
    }
}

/// `GET /v1/connect/ca/roots`: Connect, as mesh mode needs it.
async fn connect(api: &Api, needed: bool, out: &mut Vec<Finding>) {
    match api.probe("connect/ca/roots", &[]).await {
        Ok((200, _, body)) => {
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            out.push(Finding::pass(
                "connect",
                format!(
                    "Connect's CA answers: trust domain {}, {} roots",
                    v["TrustDomain"].as_str().unwrap_or("?"),
                    v["Roots"].as_array().map_or(0, Vec::len)
                ),
            ));
        }
        other => {
            let seen = match other {
                Ok((code, _, body)) => format!("{code} {}", String::from_utf8_lossy(&body).trim()),
                Err(e) => e.to_string(),
            };
            if needed {
                out.push(Finding::fail(
                    "connect",
                    format!("Connect's CA does not answer: {seen}"),
                    "mesh mode needs Connect: enable it on the servers (connect { enabled = true })",
                ));
            } else {
                out.push(Finding::pass(
                    "connect",
                    format!("Connect's CA does not answer ({seen}); not needed without mesh mode"),
                ));
            }
        }
    }
}
