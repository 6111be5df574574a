//! The Consul Connect identity source: the agent's leaf and roots.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::watch;

use super::{IdentityError, IdentitySource, Material};

/// The leaf of a service and the Connect CA roots from a Consul agent,
/// `GET /v1/agent/connect/ca/leaf/<service>` and
/// `GET /v1/agent/connect/ca/roots`, each kept fresh by a blocking query
/// (index-blocking, `wait=5m`; on an error, retried after a second and
/// from index 0). The bundle holds every root the agent lists, active or
/// not, so peers with leaves of a retiring root are still accepted.
///
/// Consul marks these agent endpoints deprecated since 1.16: prefer
/// [`FileIdentity`](super::FileIdentity) (Consul's agent or consul-template
/// can write the files) where the deprecation matters.
///
/// Dropping the source stops its watches.
#[derive(Debug)]
pub struct ConsulIdentity {
    current: Arc<ArcSwap<Material>>,
    pem: Arc<ArcSwap<ConnectPem>>,
    renewals: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ConsulIdentity {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What one endpoint returned last, and its index.
#[derive(Clone)]
struct Seen {
    body: Value,
    index: u64,
}

impl ConsulIdentity {
    /// Fetches the leaf of `service` and the roots from the agent at
    /// `agent` (`http://host:port`) now, then follows both.
    ///
    /// An `https://` agent is reached with the `consul` CLI's TLS
    /// variables ([`AgentTls::from_env`](crate::discovery::consul::AgentTls::from_env)).
    pub async fn start(agent: &str, service: &str) -> Result<Self, IdentityError> {
        let tls = crate::discovery::consul::AgentTls::from_env();
        let http = crate::discovery::consul::agent_client(agent, &tls, None)
            .map_err(|e| IdentityError::Agent(format!("agent {agent}: {e}")))?;
        let leaf_url = format!(
            "{}/v1/agent/connect/ca/leaf/{service}",
            agent.trim_end_matches('/')
        );
        let roots_url = format!("{}/v1/agent/connect/ca/roots", agent.trim_end_matches('/'));
        let leaf = fetch(&http, &leaf_url, 0).await?;
        let roots = fetch(&http, &roots_url, 0).await?;
        let first = pem_of(&leaf.body, &roots.body)?;
        let current = Arc::new(ArcSwap::from_pointee(first.material()?));
        let pem = Arc::new(ArcSwap::from_pointee(first));
        let (leaf_tx, leaf_rx) = watch::channel(leaf);
        let (roots_tx, roots_rx) = watch::channel(roots);
        let (renewed, renewals) = watch::channel(0);
        let task = {
            let current = current.clone();
            let pem = pem.clone();
            tokio::spawn(async move {
                tokio::join!(
                    follow(http.clone(), leaf_url, leaf_tx),
                    follow(http, roots_url, roots_tx),
                    apply(leaf_rx, roots_rx, current, pem, renewed),
                );
            })
        };
        Ok(ConsulIdentity {
            current,
            pem,
            renewals,
            task,
        })
    }

    /// How many renewals (a new leaf or new roots) have been applied, as a
    /// watch: `renewals().changed().await` waits for the next one (to log
    /// it, or in a test), instead of polling [`IdentitySource::current`].
    pub fn renewals(&self) -> watch::Receiver<u64> {
        self.renewals.clone()
    }

    /// The current leaf, key and roots as the agent sent them (PEM), for
    /// a proxy that loads files (a managed HAProxy sidecar). Changes with
    /// [`ConsulIdentity::renewals`], together with
    /// [`IdentitySource::current`].
    pub fn pem(&self) -> Arc<ConnectPem> {
        self.pem.load_full()
    }
}

/// A Connect leaf, its key and the CA roots, PEM, as the agent's
/// `ca/leaf` and `ca/roots` answered them.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnectPem {
    /// The leaf certificate (`CertPEM`).
    pub cert: String,
    /// Its private key (`PrivateKeyPEM`).
    pub key: String,
    /// Every root the agent lists, active or not, one after the other.
    pub roots: String,
}

impl std::fmt::Debug for ConnectPem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectPem")
            .field("cert", &format_args!("{} bytes", self.cert.len()))
            .field("key", &"<redacted>")
            .field("roots", &format_args!("{} bytes", self.roots.len()))
            .finish()
    }
}

impl ConnectPem {
    fn material(&self) -> Result<Material, IdentityError> {
        Material::from_pem(
            self.cert.as_bytes(),
            self.key.as_bytes(),
            self.roots.as_bytes(),
        )
    }
}

impl IdentitySource for ConsulIdentity {
    fn current(&self) -> Result<Arc<Material>, IdentityError> {
        Ok(self.current.load_full())
    }
}

async fn fetch(http: &reqwest::Client, url: &str, index: u64) -> Result<Seen, IdentityError> {
    let agent = |e: String| IdentityError::Agent(format!("{url}: {e}"));
    let mut req = http.get(url);
    if index > 0 {
        req = req.query(&[("index", index.to_string()), ("wait", "5m".to_owned())]);
    }
    let resp = req.send().await.map_err(|e| agent(e.to_string()))?;
    let status = resp.status();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let text = resp.text().await.map_err(|e| agent(e.to_string()))?;
    if !status.is_success() {
        return Err(agent(format!("{status}: {}", text.trim())));
    }
    let body = serde_json::from_str(&text).map_err(|e| agent(e.to_string()))?;
    Ok(Seen { body, index })
}

/// One blocking-query loop: publishes each new answer.
async fn follow(http: reqwest::Client, url: String, tx: watch::Sender<Seen>) {
    let mut index = tx.borrow().index;
    let mut failures = 0;
    loop {
        let fetched = fetch(&http, &url, index).await;
        if fetched.is_ok() {
            failures = 0;
        }
        match fetched {
            // An index going backwards (an agent restart) starts over.
            Ok(seen) if seen.index < index => index = 0,
            Ok(seen) => {
                if seen.index != index {
                    index = seen.index;
                    tx.send_replace(seen);
                }
            }
            Err(e) => {
                // Backing off as the discovery's watch does (100 ms
                // doubling to 5 s): the agent is away, not the caller.
                failures += 1;
                let wait = crate::discovery::consul::backoff(
                    Duration::from_millis(100),
                    failures,
                    Duration::from_secs(5),
                );
                tracing::warn!(?wait, "Connect CA watch failed, retrying: {e}");
                index = 0;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Rebuilds the material whenever the leaf or the roots change.
async fn apply(
    mut leaf: watch::Receiver<Seen>,
    mut roots: watch::Receiver<Seen>,
    current: Arc<ArcSwap<Material>>,
    pem: Arc<ArcSwap<ConnectPem>>,
    renewed: watch::Sender<u64>,
) {
    loop {
        tokio::select! {
            r = leaf.changed() => if r.is_err() { return },
            r = roots.changed() => if r.is_err() { return },
        }
        let (l, r) = (
            leaf.borrow_and_update().clone(),
            roots.borrow_and_update().clone(),
        );
        match pem_of(&l.body, &r.body).and_then(|p| Ok((p.material()?, p))) {
            Ok((m, p)) => {
                tracing::info!(spiffe_id = m.spiffe_id(), "Connect identity renewed");
                current.store(Arc::new(m));
                pem.store(Arc::new(p));
                renewed.send_modify(|n| *n += 1);
            }
            Err(e) => {
                tracing::warn!("Connect CA answered unusable material, keeping the previous: {e}");
                metrics::counter!(super::IDENTITY_RELOAD_FAILURES_TOTAL).increment(1);
            }
        }
    }
}

fn pem_of(leaf: &Value, roots: &Value) -> Result<ConnectPem, IdentityError> {
    let field = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| IdentityError::Agent(format!("no {k} in the agent's answer")))
    };
    let cert = field(leaf, "CertPEM")?;
    let key = field(leaf, "PrivateKeyPEM")?;
    let bundle: String = roots
        .get("Roots")
        .and_then(Value::as_array)
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r.get("RootCert").and_then(Value::as_str))
                .map(|p| format!("{}\n", p.trim_end()))
                .collect()
        })
        .unwrap_or_default();
    Ok(ConnectPem {
        cert,
        key,
        roots: bundle,
    })
}

/// Authorizes inbound callers by the Consul agent's intentions,
/// `POST /v1/agent/connect/authorize` with the target service and the
/// caller's SPIFFE ID and serial. Answers are cached for a second per
/// (ID, serial), as haproxy-consul-connect does, so a burst of handshakes
/// asks once. Deprecated by Consul since 1.16, like the CA endpoints.
#[derive(Debug)]
pub struct ConsulAuthorizer {
    http: Result<reqwest::Client, String>,
    url: String,
    target: String,
    cache: std::sync::Mutex<Answers>,
    keep: Duration,
}

/// Answers by (SPIFFE ID, serial), with when they were given.
type Answers =
    std::collections::HashMap<(String, String), (std::time::Instant, Result<(), String>)>;

/// How long an answer of the agent is reused.
const AUTHORIZE_CACHE: Duration = Duration::from_secs(1);

impl ConsulAuthorizer {
    /// Asks the agent at `agent` whether callers may reach `target` (this
    /// node's service name).
    ///
    /// An `https://` agent is reached with the `consul` CLI's TLS
    /// variables; when they do not make a client (an unreadable
    /// `CONSUL_CACERT`), every caller is refused with that reason.
    pub fn new(agent: &str, target: impl Into<String>) -> Self {
        let tls = crate::discovery::consul::AgentTls::from_env();
        ConsulAuthorizer {
            http: crate::discovery::consul::agent_client(agent, &tls, None)
                .map_err(|e| format!("agent {agent}: {e}")),
            url: format!("{}/v1/agent/connect/authorize", agent.trim_end_matches('/')),
            target: target.into(),
            cache: Default::default(),
            keep: AUTHORIZE_CACHE,
        }
    }

    /// How long an answer of the agent is reused (1 s by default): longer
    /// asks the agent less, shorter applies a changed intention sooner to
    /// new connections; zero asks on every handshake.
    pub fn cache_for(mut self, keep: Duration) -> Self {
        self.keep = keep;
        self
    }

    async fn ask(&self, id: &str, serial: &str) -> Result<(), String> {
        let body = serde_json::json!({
            "Target": self.target,
            "ClientCertURI": id,
            "ClientCertSerial": serial,
        });
        let http = self.http.as_ref().map_err(Clone::clone)?;
        let resp = http
            .post(&self.url)
            .json(&body)
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .map_err(|e| format!("authorize unavailable: {e}"))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("authorize unavailable: {e}"))?;
        if !status.is_success() {
            return Err(format!("authorize failed: {status}: {}", text.trim()));
        }
        let v: Value =
            serde_json::from_str(&text).map_err(|e| format!("authorize answered {e}"))?;
        let reason = v.get("Reason").and_then(Value::as_str).unwrap_or("");
        match v.get("Authorized").and_then(Value::as_bool) {
            Some(true) => Ok(()),
            _ => Err(format!("authz denied: {reason}")),
        }
    }
}

impl crate::transport::tls::Authorize for ConsulAuthorizer {
    fn authorize<'a>(
        &'a self,
        spiffe_id: &'a str,
        serial: &'a str,
    ) -> crate::transport::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            let key = (spiffe_id.to_owned(), serial.to_owned());
            {
                let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((at, answer)) = cache.get(&key) {
                    if at.elapsed() < self.keep {
                        return answer.clone();
                    }
                }
            }
            let answer = self.ask(spiffe_id, serial).await;
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.retain(|_, (at, _)| at.elapsed() < self.keep);
            cache.insert(key, (std::time::Instant::now(), answer.clone()));
            answer
        })
    }
}
