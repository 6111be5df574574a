//! Observe mode ([`Consul::observe`](super::Consul::observe)): discovery
//! for agentless Consul, where the platform registers the nodes and mesh
//! only reads (`shared/reference/deploy-and-agentless.md` sections 0, 1
//! and 8).
//!
//! Since Consul 1.14, Consul on Kubernetes runs no client agent beside the
//! pods: consul-k8s's endpoints controller registers each pod in the
//! catalog (`PUT /v1/catalog/register`, a synthetic `<k8s-node>-virtual`
//! node without `serfHealth`, the pod's readiness as the only check), and
//! the application gets no ACL token unless it logs in. In observe mode
//! the adapter therefore:
//!
//! - talks to the **servers'** HTTP API (`Consul::address`, typically
//!   `https://consul-server.consul.svc:8501`, with the CA of
//!   `CONSUL_CACERT`);
//! - optionally **logs in** (`POST /v1/acl/login` with the Kubernetes
//!   service-account token, read from its file at every login since
//!   Kubernetes rotates it) and uses the token it gets; logs out on
//!   [`crate::Node::shutdown`]; logs in again when a read is refused with
//!   403 (consul-k8s destroys a pod's login tokens when it deregisters the
//!   pod's instance, and Consul forgets tokens on a restore);
//! - follows `/v1/health/service/<service>?passing&stale` with blocking
//!   queries, exactly as agent mode does, and takes a member's **node id**
//!   from the first of [`Observe::node_meta`]'s keys its entry has
//!   (`pod-name` from consul-k8s, `alloc_id` as the Nomad job in `deploy/`
//!   sets it, `mesh_node` from an agent-mode node), its address from the
//!   service address and port (the pod IP and `connect-service-port`);
//! - **never registers** anything: no service, no check, no heartbeat.
//!   Health is the platform's (the pod's readiness probe).
//!
//! The node's own id must be the value the platform registers (the pod
//! name: `NodeBuilder::node_id` from `POD_NAME`), so that it recognises
//! itself. A pod that restarts under the same name is a new incarnation
//! to its peers anyway: every process draws a fresh incarnation for its
//! handshake, so consul-k8s's `pod-uid` adds nothing mesh needs.
//!
//! Mesh mode ([`Consul::through_sidecar`](super::Consul::through_sidecar))
//! cannot be combined with observe mode: it registers a per-node service
//! with one upstream per peer, which consul-k8s cannot express (one Consul
//! service per pod, named after the Kubernetes Service) and transparent
//! proxy never routes a service to itself. Under consul-k8s, exclude the
//! cluster port from the transparent proxy and use mesh's in-process mTLS
//! (the guide's "Deploying", `docs/guide/08-deploying.md`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::Deserialize;
use serde_json::json;

use super::api::{Api, ApiError};
use crate::util::lock;

/// Where Kubernetes mounts a pod's service-account token.
pub const SERVICE_ACCOUNT_TOKEN: &str = "/var/run/secrets/kubernetes.io/serviceaccount/token";

/// The largest bearer-token file read (a projected service-account token
/// is about 1 KiB).
const MAX_BEARER: u64 = 64 << 10;

/// Observe mode's settings: how to name members and how to log in.
#[derive(Debug, Clone)]
pub struct Observe {
    pub(super) node_meta: Vec<String>,
    pub(super) login: Option<Login>,
}

/// `POST /v1/acl/login` settings.
#[derive(Debug, Clone)]
pub(super) struct Login {
    pub(super) auth_method: String,
    pub(super) bearer_token_file: PathBuf,
    pub(super) meta: BTreeMap<String, String>,
}

impl Default for Observe {
    fn default() -> Self {
        Observe::new()
    }
}

impl Observe {
    /// Members named by meta `pod-name` (consul-k8s), else `alloc_id` (the
    /// Nomad job in `deploy/`), else `mesh_node` (agent-mode nodes); no
    /// login (the token comes from `Consul::token` or `CONSUL_HTTP_TOKEN`,
    /// if any).
    pub fn new() -> Observe {
        Observe {
            node_meta: vec!["pod-name".into(), "alloc_id".into(), "mesh_node".into()],
            login: None,
        }
    }

    /// Names members by this service meta key only.
    pub fn node_meta(mut self, key: impl Into<String>) -> Self {
        self.node_meta = vec![key.into()];
        self
    }

    /// Logs in with this auth method (consul-k8s names it
    /// `<release>-k8s-auth-method`), presenting the service-account token
    /// of [`SERVICE_ACCOUNT_TOKEN`] unless [`Observe::bearer_token_file`]
    /// says otherwise. The token Consul mints replaces any configured one.
    pub fn login(mut self, auth_method: impl Into<String>) -> Self {
        self.login = Some(Login {
            auth_method: auth_method.into(),
            bearer_token_file: PathBuf::from(SERVICE_ACCOUNT_TOKEN),
            meta: BTreeMap::new(),
        });
        self
    }

    /// The file holding the bearer token for [`Observe::login`], read at
    /// every login (at most 64 KiB).
    pub fn bearer_token_file(mut self, path: impl Into<PathBuf>) -> Self {
        if let Some(l) = self.login.as_mut() {
            l.bearer_token_file = path.into();
        }
        self
    }

    /// Meta to set on the login token (consul-k8s's own logins set `pod` to
    /// `<namespace>/<pod>`, which is what lets its controller destroy the
    /// token with the pod).
    pub fn login_meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        if let Some(l) = self.login.as_mut() {
            l.meta.insert(key.into(), value.into());
        }
        self
    }
}

/// The token `/v1/acl/login` answers with (the field mesh uses).
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Minted {
    #[serde(rename = "SecretID")]
    secret_id: String,
}

/// Logs in (and again), keeping the current login token to log out with.
#[derive(Clone)]
pub(crate) struct Relogin {
    /// The client without a token (login needs none).
    base: Api,
    login: Login,
    current: Arc<Mutex<Option<String>>>,
}

impl std::fmt::Debug for Relogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relogin")
            .field("auth_method", &self.login.auth_method)
            .finish_non_exhaustive()
    }
}

impl Relogin {
    pub(super) fn new(base: &Api, login: Login) -> Relogin {
        Relogin {
            base: base.with_token(None),
            login,
            current: Arc::new(Mutex::new(None)),
        }
    }

    /// The auth method's name.
    pub(super) fn auth_method(&self) -> &str {
        &self.login.auth_method
    }

    /// Whether a login token is held.
    pub(super) fn logged_in(&self) -> bool {
        lock(&self.current).is_some()
    }

    /// `POST /v1/acl/login`; the client with the minted token.
    pub(crate) async fn login(&self) -> Result<Api, ApiError> {
        let bearer = read_bearer(&self.login.bearer_token_file)?;
        let body = json!({
            "AuthMethod": self.login.auth_method,
            "BearerToken": bearer,
            "Meta": self.login.meta,
        });
        let minted: Minted = self.base.post_read("acl/login", Some(&body)).await?;
        if minted.secret_id.is_empty() {
            return Err(ApiError::Decode("the login answer has no SecretID".into()));
        }
        *lock(&self.current) = Some(minted.secret_id.clone());
        Ok(self.base.with_token(Some(minted.secret_id)))
    }

    /// `POST /v1/acl/logout` with the current login token, if any (a token
    /// already gone is what was asked).
    pub(super) async fn logout(&self) -> Result<(), ApiError> {
        let Some(token) = lock(&self.current).take() else {
            return Ok(());
        };
        match self
            .base
            .with_token(Some(token))
            .post_read::<serde_json::Value>("acl/logout", None)
            .await
        {
            Ok(_) | Err(ApiError::Status { code: 403, .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Reads the bearer token file (trimmed), refusing more than 64 KiB. A
/// small local file (a Kubernetes-mounted secret), read synchronously as
/// `CONSUL_HTTP_TOKEN_FILE` is.
fn read_bearer(path: &std::path::Path) -> Result<String, ApiError> {
    use std::io::Read;
    let what = |e: std::io::Error| {
        ApiError::Invalid(format!(
            "cannot read the login's bearer token {}: {e}",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(what)?;
    let mut text = String::new();
    let n = file
        .take(MAX_BEARER + 1)
        .read_to_string(&mut text)
        .map_err(what)?;
    if n as u64 > MAX_BEARER {
        return Err(ApiError::Invalid(format!(
            "the login's bearer token {} is larger than 64 KiB",
            path.display()
        )));
    }
    let token = text.trim().to_owned();
    if token.is_empty() {
        return Err(ApiError::Invalid(format!(
            "the login's bearer token {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::super::watch::{peers_from_health, HealthEntry, Identify, Skipped};
    use super::*;

    fn entry(v: serde_json::Value) -> HealthEntry {
        serde_json::from_value(v).expect("entry parses")
    }

    /// The entry consul-k8s's endpoints controller registers (reference
    /// section 1), as `/v1/health/service` returns it: a synthetic node
    /// with no `serfHealth`, the readiness check only.
    fn pod(name: &str, ip: &str, status: &str) -> HealthEntry {
        entry(json!({
            "Node": {"Node": "ip-10-0-1-5-virtual", "Address": "10.0.1.5",
                     "Meta": {"synthetic-node": "true"}},
            "Service": {"ID": format!("{name}-mesh"), "Service": "mesh", "Port": 7000,
                "Address": ip, "Tags": [],
                "Meta": {"pod-name": name, "pod-uid": "u-1", "k8s-service-name": "mesh",
                         "k8s-namespace": "apps", "managed-by": "consul-k8s-endpoints-controller",
                         "synthetic-node": "true"}},
            "Checks": [{"CheckID": format!("apps/{name}-mesh"), "Type": "kubernetes-readiness",
                        "Status": status}]
        }))
    }

    #[test]
    fn consul_k8s_entries_are_named_by_pod_and_addressed_by_pod_ip() {
        let keys = Observe::new().node_meta;
        let entries = vec![
            pod("mesh-0", "10.1.2.3", "passing"),
            pod("mesh-1", "10.1.2.4", "passing"),
            pod("mesh-2", "10.1.2.5", "critical"),
            // An agent-mode node in the same service: still a member.
            entry(json!({
                "Node": {"Address": "10.0.0.9"},
                "Service": {"ID": "mesh-vm", "Port": 7000, "Address": "10.0.0.9",
                    "Meta": {"mesh_node": "vm", "mesh_protocol": "1"}},
                "Checks": [{"CheckID": "serfHealth", "Status": "passing"}]
            })),
            // Of another protocol: not dialed.
            entry(json!({
                "Service": {"ID": "mesh-old", "Port": 7000, "Address": "10.1.2.9",
                    "Meta": {"pod-name": "mesh-9", "mesh_protocol": "0"}}
            })),
            // Something else in the service: ignored.
            entry(json!({"Service": {"ID": "x", "Port": 1, "Meta": {"version": "2"}}})),
        ];
        let (peers, skipped) = peers_from_health(entries, "mesh-0", 1, &Identify::Observed(keys));
        assert_eq!(peers.keys().collect::<Vec<_>>(), ["mesh-1", "vm"]);
        assert_eq!(peers["mesh-1"].addr, "10.1.2.4:7000");
        assert_eq!(peers["vm"].addr, "10.0.0.9:7000");
        assert_eq!(
            skipped,
            [
                Skipped::NotPassing("mesh-2 (apps/mesh-2-mesh)".into()),
                Skipped::Protocol {
                    node: "mesh-9".into(),
                    protocol: "0".into()
                },
                Skipped::NotMesh("x".into()),
            ]
        );
        // Named by one key only: the agent-mode node is not a member.
        let (peers, _) = peers_from_health(
            vec![pod("mesh-1", "10.1.2.4", "passing")],
            "mesh-0",
            1,
            &Identify::Observed(vec!["alloc_id".into()]),
        );
        assert!(peers.is_empty());
    }

    #[test]
    fn the_bearer_token_file_is_read_with_limits() {
        let dir = std::env::temp_dir().join(format!("mesh-observe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let ok = dir.join("token");
        std::fs::write(&ok, "eyJhbGciOi.x.y\n").expect("write");
        assert_eq!(read_bearer(&ok).expect("read"), "eyJhbGciOi.x.y");
        let empty = dir.join("empty");
        std::fs::write(&empty, "  \n").expect("write");
        assert!(read_bearer(&empty)
            .unwrap_err()
            .to_string()
            .contains("is empty"));
        let big = dir.join("big");
        std::fs::write(&big, vec![b'a'; 70 << 10]).expect("write");
        assert!(read_bearer(&big)
            .unwrap_err()
            .to_string()
            .contains("larger than 64 KiB"));
        let missing = dir.join("missing");
        assert!(read_bearer(&missing)
            .unwrap_err()
            .to_string()
            .contains("cannot read the login's bearer token"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
