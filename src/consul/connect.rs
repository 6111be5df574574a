//! The Consul Connect identity source: the agent's leaf and roots.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::Value;
use tokio::sync::watch;

use super::Token;
use crate::identity::{IdentityError, IdentitySource, Material};

/// The leaf of a service and the Connect CA roots from a Consul agent,
/// `GET /v1/agent/connect/ca/leaf/<service>` and
/// `GET /v1/agent/connect/ca/roots`, each kept fresh by a blocking query
/// (index-blocking, `wait=5m`). The bundle holds every root the agent
/// lists, active or not, so peers with leaves of a retiring root are
/// still accepted.
///
/// The watch follows the rules of the discovery's blocking query:
/// - each blocking request times out after the wait plus 1/16 (Consul's
///   jitter) plus 5 s, and a request that does not block after 10 s, so
///   a connection dropped silently (a NAT, a dead host) costs one timeout,
///   never the renewals;
/// - the index goes back to 0 when it moves backwards or is missing, and
///   0 becomes 1; a token bucket (burst 4, then one request per 250 ms)
///   bounds the requests when the agent answers without an index;
/// - on an error it starts over from index 0 after a backoff (100 ms
///   doubling to 5 s);
/// - answers are capped at 64 MiB, and an answer equal to the last one
///   is not a renewal.
///
/// **ACL token**: every request carries `X-Consul-Token` when a token is
/// given. Reading a leaf needs `service:write` on the service, so with
/// ACLs on, give the node's token ([`ConsulIdentity::start`] reads the
/// `consul` CLI's `CONSUL_HTTP_TOKEN` / `CONSUL_HTTP_TOKEN_FILE`) rather
/// than an anonymous policy that would hand the key to any local process.
///
/// Consul marks these agent endpoints deprecated since 1.16: prefer
/// [`FileIdentity`](crate::identity::FileIdentity) (Consul's agent or consul-template
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
    index: Option<u64>,
}

/// Timing of the leaf and roots watch (see [`ConsulIdentity`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WatchTiming {
    /// The `wait` of a blocking request.
    pub(crate) wait: Duration,
    /// Added to `wait + wait/16` for a blocking request's timeout.
    pub(crate) slack: Duration,
    /// Timeout of a request that does not block (index 0).
    pub(crate) request: Duration,
    /// The token bucket: burst, then one request per period.
    pub(crate) burst: u32,
    pub(crate) period: Duration,
}

impl Default for WatchTiming {
    fn default() -> Self {
        WatchTiming {
            wait: Duration::from_secs(300),
            slack: Duration::from_secs(5),
            request: Duration::from_secs(10),
            burst: 4,
            period: Duration::from_millis(250),
        }
    }
}

/// The agent's client, token and watch timing.
#[derive(Debug)]
struct Agent {
    http: reqwest::Client,
    token: Option<Token>,
    timing: WatchTiming,
}

/// The largest `authorize` answer read.
const MAX_AUTHORIZE_BODY: usize = 64 << 10;

impl ConsulIdentity {
    /// Fetches the leaf of `service` and the roots from the agent at
    /// `agent` (`http://host:port`) now, then follows both. The requests
    /// carry the `consul` CLI's token (`CONSUL_HTTP_TOKEN`, else the
    /// contents of `CONSUL_HTTP_TOKEN_FILE`) when one is set.
    ///
    /// An `https://` agent is reached with the `consul` CLI's TLS
    /// variables ([`AgentTls::from_env`](crate::consul::AgentTls::from_env)).
    pub async fn start(agent: &str, service: &str) -> Result<Self, IdentityError> {
        let token = crate::consul::env_token().map_err(IdentityError::Agent)?;
        Self::start_with_token(agent, service, token.as_deref()).await
    }

    /// [`ConsulIdentity::start`] with this ACL token (`None`: no token,
    /// the agent's default applies), whatever the environment says.
    pub async fn start_with_token(
        agent: &str,
        service: &str,
        token: Option<&str>,
    ) -> Result<Self, IdentityError> {
        Self::start_with(
            agent,
            service,
            token.and_then(Token::new),
            &crate::consul::AgentTls::from_env(),
            WatchTiming::default(),
        )
        .await
    }

    pub(crate) async fn start_with(
        agent: &str,
        service: &str,
        token: Option<Token>,
        tls: &crate::consul::AgentTls,
        timing: WatchTiming,
    ) -> Result<Self, IdentityError> {
        let http = crate::consul::agent_client(agent, tls, None)
            .map_err(|e| IdentityError::Agent(format!("agent {agent}: {e}")))?;
        let agent_api = Arc::new(Agent {
            http,
            token,
            timing,
        });
        let leaf_url = format!(
            "{}/v1/agent/connect/ca/leaf/{}",
            agent.trim_end_matches('/'),
            crate::consul::segment(service)
        );
        let roots_url = format!("{}/v1/agent/connect/ca/roots", agent.trim_end_matches('/'));
        let leaf = fetch(&agent_api, &leaf_url, 0).await?;
        let roots = fetch(&agent_api, &roots_url, 0).await?;
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
                    follow(agent_api.clone(), leaf_url, leaf_tx),
                    follow(agent_api, roots_url, roots_tx),
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

async fn fetch(a: &Agent, url: &str, index: u64) -> Result<Seen, IdentityError> {
    let agent = |e: String| IdentityError::Agent(format!("{url}: {e}"));
    let mut req = a.http.get(url);
    if let Some(t) = &a.token {
        req = req.header("X-Consul-Token", t.secret());
    }
    let t = &a.timing;
    req = if index > 0 {
        req.query(&[
            ("index", index.to_string()),
            ("wait", format!("{}ms", t.wait.as_millis())),
        ])
        // Consul adds up to wait/16 of jitter: a shorter timeout would
        // cut every blocking call that sees no change.
        .timeout(t.wait + t.wait / 16 + t.slack)
    } else {
        req.timeout(t.request)
    };
    let resp = req
        .send()
        .await
        .map_err(|e| agent(crate::consul::error_chain(&e)))?;
    let status = resp.status();
    let index = resp
        .headers()
        .get("X-Consul-Index")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    if !status.is_success() {
        let text = crate::consul::error_body(resp).await;
        return Err(agent(format!("{status}: {}", text.trim())));
    }
    let bytes = crate::consul::read_capped(resp, crate::consul::MAX_BODY)
        .await
        .map_err(|e| agent(e.to_string()))?;
    let body = serde_json::from_slice(&bytes).map_err(|e| agent(e.to_string()))?;
    Ok(Seen { body, index })
}

/// One blocking-query loop: publishes each answer that differs from the
/// last (a wake-up is only a hint).
async fn follow(a: Arc<Agent>, url: String, tx: watch::Sender<Seen>) {
    use crate::consul::{BlockingIndex, TokenBucket};
    let mut index = BlockingIndex::default();
    index.observe(tx.borrow().index);
    let mut bucket = TokenBucket::new(a.timing.burst, a.timing.period, tokio::time::Instant::now());
    let mut failures = 0;
    loop {
        // One wait per round: the rate limit, or the backoff after failures
        // (100 ms doubling to 5 s, as the discovery's watch does).
        let retry = match failures {
            0 => Duration::ZERO,
            n => crate::util::backoff(Duration::from_millis(100), n, Duration::from_secs(5)),
        };
        let wait = bucket.take(tokio::time::Instant::now()).max(retry);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        match fetch(&a, &url, index.get()).await {
            Ok(seen) => {
                failures = 0;
                index.observe(seen.index);
                tx.send_if_modified(|last| {
                    if last.body == seen.body {
                        last.index = seen.index;
                        false
                    } else {
                        *last = seen;
                        true
                    }
                });
            }
            Err(e) => {
                failures += 1;
                tracing::warn!("Connect CA watch failed, retrying: {e}");
                index.reset();
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
                metrics::counter!(crate::identity::IDENTITY_RELOAD_FAILURES_TOTAL).increment(1);
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
///
/// Every request carries the ACL token (`X-Consul-Token`) when one is
/// given: the endpoint needs `service:write` on the target.
#[derive(Debug)]
pub struct ConsulAuthorizer {
    http: Result<reqwest::Client, String>,
    token: Option<Token>,
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
    /// node's service name), with the `consul` CLI's token
    /// (`CONSUL_HTTP_TOKEN`, else `CONSUL_HTTP_TOKEN_FILE`) when one is set;
    /// [`ConsulAuthorizer::token`] sets another.
    ///
    /// An `https://` agent is reached with the `consul` CLI's TLS
    /// variables; when they do not make a client (an unreadable
    /// `CONSUL_CACERT`, an unreadable token file), every caller is
    /// refused with that reason.
    pub fn new(agent: &str, target: impl Into<String>) -> Self {
        let tls = crate::consul::AgentTls::from_env();
        let (http, token) = match crate::consul::env_token() {
            Ok(token) => (
                crate::consul::agent_client(agent, &tls, None)
                    .map_err(|e| format!("agent {agent}: {e}")),
                token.and_then(Token::new),
            ),
            Err(e) => (Err(e), None),
        };
        ConsulAuthorizer {
            http,
            token,
            url: format!("{}/v1/agent/connect/authorize", agent.trim_end_matches('/')),
            target: target.into(),
            cache: Default::default(),
            keep: AUTHORIZE_CACHE,
        }
    }

    /// The ACL token sent with each request (an empty one: none).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Token::new(token);
        self
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
        let mut req = http.post(&self.url).json(&body);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t.secret());
        }
        let resp = req
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .map_err(|e| format!("authorize unavailable: {e}"))?;
        let status = resp.status();
        if !status.is_success() {
            let text = crate::consul::error_body(resp).await;
            return Err(format!("authorize failed: {status}: {}", text.trim()));
        }
        let bytes = crate::consul::read_capped(resp, MAX_AUTHORIZE_BODY)
            .await
            .map_err(|e| format!("authorize unavailable: {e}"))?;
        let v: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("authorize answered {e}"))?;
        let reason = v.get("Reason").and_then(Value::as_str).unwrap_or("");
        match v.get("Authorized").and_then(Value::as_bool) {
            Some(true) => Ok(()),
            _ => Err(format!("authz denied: {reason}")),
        }
    }
}

impl crate::identity::Authorize for ConsulAuthorizer {
    fn authorize<'a>(
        &'a self,
        spiffe_id: &'a str,
        serial: &'a str,
    ) -> crate::util::BoxFuture<'a, Result<(), String>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Two leaves of `uri` and their root, PEM: ([(cert, key); 2], root).
    fn pki(uri: &str) -> ([(String, String); 2], String) {
        use rcgen::{
            BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
            SanType,
        };
        let mut ca = CertificateParams::default();
        ca.distinguished_name = DistinguishedName::new();
        ca.distinguished_name.push(DnType::CommonName, "test ca");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_key = KeyPair::generate().unwrap();
        let root = ca.self_signed(&ca_key).unwrap().pem();
        let leaf = || {
            let mut l = CertificateParams::default();
            l.distinguished_name = DistinguishedName::new();
            l.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
            let key = KeyPair::generate().unwrap();
            let cert = l
                .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
                .unwrap()
                .pem();
            (cert, key.serialize_pem())
        };
        ([leaf(), leaf()], root)
    }

    fn leaf_json(cert: &str, key: &str) -> String {
        serde_json::json!({"CertPEM": cert, "PrivateKeyPEM": key}).to_string()
    }

    fn roots_json(root: &str) -> String {
        serde_json::json!({"Roots": [{"RootCert": root, "Active": true}]}).to_string()
    }

    /// A raw HTTP answer, `X-Consul-Index` only when given.
    fn answer(index: Option<u64>, body: &str) -> String {
        let index = index.map_or(String::new(), |i| format!("X-Consul-Index: {i}\r\n"));
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{index}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    }

    use crate::consul::fake_http::Answer;

    /// A fake agent (see `fake_http`): its `http://` base.
    async fn fake_agent(answer: Answer) -> String {
        crate::consul::fake_http::serve(answer).await.0
    }

    fn quick() -> WatchTiming {
        WatchTiming {
            wait: Duration::from_millis(200),
            slack: Duration::from_millis(100),
            request: Duration::from_secs(2),
            burst: 4,
            period: Duration::from_millis(10),
        }
    }

    #[tokio::test]
    async fn a_blocking_request_never_answered_times_out_and_renewals_go_on() {
        let uri = "spiffe://td/ns/default/dc/dc1/svc/web";
        let ([(c1, k1), (c2, k2)], root) = pki(uri);
        let leaves = Arc::new(AtomicUsize::new(0));
        let (first, second) = (leaf_json(&c1, &k1), leaf_json(&c2, &k2));
        let roots = roots_json(&root);
        let counter = leaves.clone();
        let agent = fake_agent(Arc::new(move |target: &str| {
            let blocking = target.contains("index=");
            if target.contains("/ca/leaf/") {
                if blocking {
                    return None;
                }
                // The first answer, then (after the cut request) a new leaf.
                return Some(if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    answer(Some(5), &first)
                } else {
                    answer(Some(6), &second)
                });
            }
            (!blocking).then(|| answer(Some(5), &roots))
        }))
        .await;
        let id = ConsulIdentity::start_with(
            &agent,
            "web",
            None,
            &crate::consul::AgentTls::new(),
            quick(),
        )
        .await
        .unwrap();
        assert_eq!(id.pem().cert, c1);
        let mut renewals = id.renewals();
        tokio::time::timeout(Duration::from_secs(20), renewals.changed())
            .await
            .expect("the hung blocking request is cut and the watch renews")
            .unwrap();
        assert_eq!(id.pem().cert, c2);
    }

    #[tokio::test]
    async fn answers_without_an_index_are_rate_limited() {
        let uri = "spiffe://td/ns/default/dc/dc1/svc/web";
        let ([(cert, key), _], root) = pki(uri);
        let (leaf, roots) = (leaf_json(&cert, &key), roots_json(&root));
        let count = Arc::new(AtomicUsize::new(0));
        let (seen_tx, mut seen) = watch::channel(0usize);
        let counter = count.clone();
        let agent = fake_agent(Arc::new(move |target: &str| {
            if target.contains("/ca/leaf/") {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                seen_tx.send_replace(n);
                Some(answer(None, &leaf))
            } else {
                Some(answer(None, &roots))
            }
        }))
        .await;
        let timing = WatchTiming {
            period: Duration::from_millis(50),
            ..quick()
        };
        let started = tokio::time::Instant::now();
        let id = ConsulIdentity::start_with(
            &agent,
            "web",
            None,
            &crate::consul::AgentTls::new(),
            timing,
        )
        .await
        .unwrap();
        tokio::time::timeout(Duration::from_secs(20), seen.wait_for(|n| *n >= 12))
            .await
            .expect("the watch keeps asking")
            .unwrap();
        // The first request, a burst of 4, then one per 50 ms: the 12th
        // comes 7 periods after the burst at the earliest.
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(340),
            "12 requests in {took:?}: not rate limited"
        );
        // The same answer again and again is not a renewal.
        assert_eq!(*id.renewals().borrow(), 0);
    }
}
