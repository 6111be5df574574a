//! What the test agent serves that belongs to Consul's **servers** rather
//! than a client agent, as agentless deployments (consul-k8s since 1.14)
//! use it (`shared/reference/deploy-and-agentless.md` section 3):
//! `PUT /v1/catalog/register` and `/v1/catalog/deregister` (the endpoints
//! controller's calls; the rules are in `Catalog::catalog_register`),
//! `POST /v1/acl/login` and `/v1/acl/logout`, and the config entries
//! `PUT /v1/config[?cas=N]`, `GET` and `DELETE /v1/config/:kind/:name`;
//! and what a diagnosis reads (routed in `consul_agent.rs`):
//! `GET /v1/status/leader`, `/v1/acl/token/self` (401 with ACLs off, 403
//! for an unknown token) and the servers' `/v1/connect/ca/roots`. A hook
//! skews the `Date` header (`TestConsul::skew_clock`).
//!
//! ACL, as Consul checks it: catalog writes need `service:write` on the
//! service (and on a proxy's destination) and `node:write` when the node is
//! created or changed (a `"*"` token here); login and logout need none;
//! config entries need `service:write` on the entry's name for the
//! service-level kinds and `operator:write` (`"*"`) for the others.
//! Config reads do not block (nothing here waits on them).

use std::collections::{BTreeMap, HashMap};

use serde_json::{json, Map, Value};

use crate::consul_catalog::ApiError;

/// A token minted by `/v1/acl/login`.
#[derive(Debug, Clone)]
pub struct Login {
    pub accessor: String,
    pub auth_method: String,
    /// The service identity the binding rule gave (`${serviceaccount.name}`).
    pub service: String,
    /// The login request's `Meta` (consul-k8s sends `pod`).
    pub meta: Map<String, Value>,
}

/// The auth methods and the tokens their logins minted.
#[derive(Debug, Clone, Default)]
pub struct Logins {
    /// Auth method name -> (bearer token -> the service account it proves).
    pub methods: HashMap<String, HashMap<String, String>>,
    /// Secret -> the login.
    pub minted: HashMap<String, Login>,
    next: u64,
}

impl Logins {
    /// `POST /v1/acl/login {AuthMethod, BearerToken, Meta}`: a token whose
    /// service identity is the bearer's service account (write on it and
    /// on `<it>-sidecar-proxy`, the `builtin/service` policy). An unknown
    /// method is Consul's `ACL not found`; a bearer the method does not
    /// validate is refused with 403 as well.
    pub fn login(&mut self, body: &[u8]) -> Result<(String, Login), ApiError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError(400, format!("Failed to decode request body: {e}")))?;
        let method = v["AuthMethod"].as_str().unwrap_or("");
        let bearer = v["BearerToken"].as_str().unwrap_or("");
        if method.is_empty() {
            return Err(ApiError(400, "Missing auth method name".into()));
        }
        if bearer.is_empty() {
            return Err(ApiError(400, "Missing bearer token".into()));
        }
        let Some(tokens) = self.methods.get(method) else {
            return Err(ApiError(403, "ACL not found".into()));
        };
        let Some(service) = tokens.get(bearer).cloned() else {
            return Err(ApiError(
                403,
                "Permission denied: lookup failed: service account token was not validated".into(),
            ));
        };
        self.next += 1;
        let secret = format!("00000000-0000-4000-8000-{:012x}", self.next);
        let login = Login {
            accessor: format!("00000000-0000-4000-9000-{:012x}", self.next),
            auth_method: method.to_owned(),
            service,
            meta: v["Meta"].as_object().cloned().unwrap_or_default(),
        };
        self.minted.insert(secret.clone(), login.clone());
        Ok((secret, login))
    }

    /// The token JSON login answers with.
    pub fn token_json(secret: &str, login: &Login) -> Value {
        json!({
            "AccessorID": login.accessor,
            "SecretID": secret,
            "Description": format!("token created via login: {}", Value::Object(login.meta.clone())),
            "ServiceIdentities": [{"ServiceName": login.service}],
            "Local": true,
            "AuthMethod": login.auth_method,
            "CreateIndex": 1, "ModifyIndex": 1
        })
    }

    /// `POST /v1/acl/logout` with `token`: 401 without one, `ACL not
    /// found` for an unknown one, `Permission denied` for a token not
    /// minted by a login; otherwise the token is destroyed.
    pub fn logout(&mut self, token: Option<&str>) -> Result<String, ApiError> {
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(ApiError(401, "Supplied token does not exist".into()));
        };
        match self.minted.remove(token) {
            Some(_) => Ok(token.to_owned()),
            None => Err(ApiError(403, "ACL not found".into())),
        }
    }
}

/// One stored config entry.
#[derive(Debug, Clone)]
struct Entry {
    body: Map<String, Value>,
    create_index: u64,
    modify_index: u64,
}

/// The config entries, by (kind, name).
#[derive(Debug, Default)]
pub struct ConfigEntries {
    entries: BTreeMap<(String, String), Entry>,
}

/// The kinds whose ACL is `service:write` on the entry's name (Consul's
/// `intentions:write` for service-intentions is granted by the same
/// service identity); every other kind needs `operator:write`.
const SERVICE_KINDS: &[&str] = &[
    "service-defaults",
    "service-resolver",
    "service-router",
    "service-splitter",
    "service-intentions",
];

/// Reads `Kind` and `Name` in PascalCase or snake_case.
fn kind_and_name(obj: &Map<String, Value>) -> (String, String) {
    let get = |a: &str, b: &str| {
        obj.get(a)
            .or_else(|| obj.get(b))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned()
    };
    (get("Kind", "kind"), get("Name", "name"))
}

impl ConfigEntries {
    /// What a write of `body` needs: `Some(name)` for `service:write` on
    /// it, `None` for `operator:write`.
    pub fn acl_target(body: &[u8]) -> Result<Option<String>, ApiError> {
        let obj = Self::parse(body)?;
        let (kind, name) = kind_and_name(&obj);
        Ok(SERVICE_KINDS.contains(&kind.as_str()).then_some(name))
    }

    fn parse(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| ApiError(400, format!("Request decoding failed: {e}")))?;
        let Value::Object(obj) = v else {
            return Err(ApiError(
                400,
                "Request decoding failed: expected an object".into(),
            ));
        };
        let (kind, name) = kind_and_name(&obj);
        if kind.is_empty() {
            return Err(ApiError(
                400,
                "Request decoding failed: Payload does not contain a kind/Kind key at the top level".into(),
            ));
        }
        if name.is_empty() {
            return Err(ApiError(
                400,
                "Request decoding failed: Name is required".into(),
            ));
        }
        Ok(obj)
    }

    /// `PUT /v1/config[?cas=N]`: `true`, or `false` when the cas does not
    /// match (`cas=0`: create only). `index` is the new raft index.
    pub fn put(&mut self, body: &[u8], cas: Option<u64>, index: u64) -> Result<bool, ApiError> {
        let obj = Self::parse(body)?;
        let (kind, name) = kind_and_name(&obj);
        let key = (kind, name);
        let current = self.entries.get(&key).map(|e| e.modify_index);
        if let Some(cas) = cas {
            let ok = match current {
                None => cas == 0,
                Some(m) => m == cas,
            };
            if !ok {
                return Ok(false);
            }
        }
        let create_index = self.entries.get(&key).map_or(index, |e| e.create_index);
        self.entries.insert(
            key,
            Entry {
                body: obj,
                create_index,
                modify_index: index,
            },
        );
        Ok(true)
    }

    /// `GET /v1/config/:kind/:name`: the entry with its indexes.
    pub fn get(&self, kind: &str, name: &str) -> Result<Value, ApiError> {
        let Some(e) = self.entries.get(&(kind.to_owned(), name.to_owned())) else {
            return Err(ApiError(
                404,
                format!("Config entry not found for {kind:?} / {name:?}"),
            ));
        };
        let mut out = e.body.clone();
        out.insert("CreateIndex".into(), json!(e.create_index));
        out.insert("ModifyIndex".into(), json!(e.modify_index));
        Ok(Value::Object(out))
    }

    /// `DELETE /v1/config/:kind/:name`: gone (a missing entry too).
    pub fn delete(&mut self, kind: &str, name: &str) {
        self.entries.remove(&(kind.to_owned(), name.to_owned()));
    }
}

/// A pod as consul-k8s's endpoints controller sees it.
#[derive(Debug, Clone)]
pub struct K8sPod {
    /// Pod name (`mesh-0`): the `pod-name` meta, mesh's node id.
    pub name: String,
    pub namespace: String,
    /// Pod UID: a new one for a pod recreated under the same name.
    pub uid: String,
    /// The Kubernetes node it runs on; its Consul node is `<it>-virtual`.
    pub k8s_node: String,
    pub host_ip: String,
    /// Pod IP and `connect-service-port`.
    pub addr: std::net::SocketAddr,
    /// The registering Kubernetes Service (= the Consul service name).
    pub service: String,
}

impl K8sPod {
    /// The instance ID: `<pod>-<service>`.
    pub fn service_id(&self) -> String {
        format!("{}-{}", self.name, self.service)
    }

    /// The body of the controller's `PUT /v1/catalog/register` for this
    /// pod (reference deploy-and-agentless section 1, from
    /// `endpoints_controller.go`): a synthetic node shared by the pods of
    /// one Kubernetes node, `SkipNodeUpdate`, the readiness check passing
    /// or critical.
    pub fn registration(&self, ready: bool) -> Value {
        let (status, output) = if ready {
            ("passing", "Kubernetes health checks passing".to_owned())
        } else {
            (
                "critical",
                format!("Pod \"{}/{}\" is not ready", self.namespace, self.name),
            )
        };
        let id = self.service_id();
        json!({
            "Node": format!("{}-virtual", self.k8s_node),
            "Address": self.host_ip,
            "NodeMeta": {"synthetic-node": "true"},
            "Service": {
                "ID": id, "Service": self.service,
                "Port": self.addr.port(), "Address": self.addr.ip().to_string(),
                "Meta": {
                    "pod-name": self.name, "pod-uid": self.uid,
                    "k8s-service-name": self.service, "k8s-namespace": self.namespace,
                    "managed-by": "consul-k8s-endpoints-controller", "synthetic-node": "true"
                }
            },
            "Check": {
                "CheckID": format!("{}/{id}", self.namespace),
                "Name": "Kubernetes Readiness Check",
                "Type": "kubernetes-readiness",
                "Status": status,
                "ServiceID": id,
                "Output": output
            },
            "SkipNodeUpdate": true
        })
    }

    /// The body of the controller's `PUT /v1/catalog/deregister`.
    pub fn deregistration(&self) -> Value {
        json!({"Node": format!("{}-virtual", self.k8s_node), "ServiceID": self.service_id()})
    }
}
