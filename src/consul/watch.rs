//! Discovery by one blocking query on `/v1/health/service/<name>?passing`.
//!
//! The sans-IO parts (index rules, rate limit, reading the answer into
//! peers) are plain types with unit tests; [`run`] is the thin loop.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;
use tokio::time::Instant;

use super::api::{segment, Api, ApiError};
use crate::discovery::{DiscoveredPeer, Peers};
use crate::util::backoff;

/// Meta keys the adapter registers (and reads back from peers).
pub(crate) const META_NODE: &str = "mesh_node";
pub(crate) const META_PROTOCOL: &str = "mesh_protocol";
pub(crate) const META_ADDR: &str = "mesh_addr";

/// The index of the next blocking query, by the client rules of Consul's
/// `features/blocking` page.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockingIndex(u64);

impl BlockingIndex {
    /// The index to send (0: answer at once).
    pub(crate) fn get(self) -> u64 {
        self.0
    }

    /// Folds in the `X-Consul-Index` of an answer: an index that went
    /// backwards resets to 0 (the next call answers at once and the loop
    /// starts over), 0 becomes 1, a missing header gives 0.
    pub(crate) fn observe(&mut self, returned: Option<u64>) {
        self.0 = match returned {
            None => 0,
            Some(n) if n < self.0 => 0,
            Some(0) => 1,
            Some(n) => n,
        };
    }

    /// After an error: start over with a query that answers at once.
    pub(crate) fn reset(&mut self) {
        self.0 = 0;
    }
}

/// A token bucket: at most `burst` calls at once, then one per `period`.
/// A wake-up is only a hint, and churn in the catalog must not turn the
/// loop into a flood.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    burst: f64,
    tokens: f64,
    period: Duration,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(burst: u32, period: Duration, now: Instant) -> TokenBucket {
        let burst = f64::from(burst.max(1));
        TokenBucket {
            burst,
            tokens: burst,
            period,
            last: now,
        }
    }

    /// Takes a token for a call at `now`: how long to wait first.
    pub(crate) fn take(&mut self, now: Instant) -> Duration {
        let period = self.period.as_secs_f64();
        if period > 0.0 {
            let refill = now.saturating_duration_since(self.last).as_secs_f64() / period;
            self.tokens = (self.tokens + refill).min(self.burst);
        } else {
            self.tokens = self.burst;
        }
        self.last = now;
        self.tokens -= 1.0;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            self.period.mul_f64(-self.tokens)
        }
    }
}

/// One entry of `/v1/health/service/<name>`, the fields the adapter reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthEntry {
    #[serde(default)]
    pub(crate) node: HealthNode,
    pub(crate) service: HealthService,
    #[serde(default)]
    pub(crate) checks: Vec<HealthCheck>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthNode {
    #[serde(default)]
    pub(crate) address: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthService {
    #[serde(rename = "ID", default)]
    pub(crate) id: String,
    #[serde(default)]
    pub(crate) tags: Option<Vec<String>>,
    #[serde(default)]
    pub(crate) address: String,
    #[serde(default)]
    pub(crate) port: u16,
    #[serde(default)]
    pub(crate) meta: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct HealthCheck {
    #[serde(rename = "CheckID", default)]
    pub(crate) check_id: String,
    #[serde(default)]
    pub(crate) status: String,
}

/// Why an entry is not a peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Skipped {
    /// Registered by something other than a mesh node.
    NotMesh(String),
    /// A mesh node of another protocol version.
    Protocol { node: String, protocol: String },
    /// A check is not passing (the agent filters these with `?passing`;
    /// checked again so a member is one whose every check passes).
    NotPassing(String),
}

/// How an entry names its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identify {
    /// Registered by a mesh node: `mesh_node` and `mesh_protocol` meta,
    /// the protocol must be ours.
    Registered,
    /// Registered by the platform (observe mode): the node id is the value
    /// of the first of these meta keys the entry has (`pod-name`, ...); a
    /// `mesh_protocol` meta, when there is one, must be ours.
    Observed(Vec<String>),
}

/// Reads healthy peers out of a health answer: every entry whose checks
/// all pass (node checks such as `serfHealth` included), named as
/// `identify` says, of this protocol, other than `me`. The address is the
/// registered `mesh_addr`, or the service address (the node's when
/// empty) with the service port.
pub(crate) fn peers_from_health(
    entries: Vec<HealthEntry>,
    me: &str,
    protocol: u8,
    identify: &Identify,
) -> (Peers, Vec<Skipped>) {
    let mut peers = Peers::new();
    let mut skipped = Vec::new();
    for e in entries {
        let meta = e.service.meta.unwrap_or_default();
        let named = match identify {
            Identify::Registered => meta.get(META_NODE),
            Identify::Observed(keys) => keys
                .iter()
                .find_map(|k| meta.get(k).filter(|n| !n.is_empty())),
        };
        let Some(node) = named.filter(|n| !n.is_empty()).cloned() else {
            skipped.push(Skipped::NotMesh(e.service.id));
            continue;
        };
        if node == me {
            continue;
        }
        let theirs = meta.get(META_PROTOCOL).cloned();
        let mismatch = match (identify, &theirs) {
            (Identify::Registered, _) => theirs.as_deref() != Some(&protocol.to_string()),
            (Identify::Observed(_), Some(t)) => *t != protocol.to_string(),
            (Identify::Observed(_), None) => false,
        };
        if mismatch {
            let theirs = theirs.unwrap_or_default();
            skipped.push(Skipped::Protocol {
                node,
                protocol: theirs,
            });
            continue;
        }
        if let Some(c) = e.checks.iter().find(|c| c.status != "passing") {
            skipped.push(Skipped::NotPassing(format!("{node} ({})", c.check_id)));
            continue;
        }
        let addr = match meta.get(META_ADDR).filter(|a| !a.is_empty()) {
            Some(a) => a.clone(),
            None => {
                let host = if e.service.address.is_empty() {
                    e.node.address
                } else {
                    e.service.address
                };
                if host.contains(':') {
                    format!("[{host}]:{}", e.service.port)
                } else {
                    format!("{host}:{}", e.service.port)
                }
            }
        };
        let mut capabilities = e.service.tags.unwrap_or_default();
        capabilities.sort();
        capabilities.dedup();
        peers.insert(
            node.clone(),
            DiscoveredPeer {
                node,
                addr,
                capabilities,
            },
        );
    }
    (peers, skipped)
}

/// Settings of the watch loop.
#[derive(Debug, Clone)]
pub(crate) struct WatchConfig {
    pub(crate) service: String,
    pub(crate) me: String,
    pub(crate) protocol: u8,
    pub(crate) wait: Duration,
    pub(crate) burst: u32,
    pub(crate) period: Duration,
    pub(crate) retry_min: Duration,
    pub(crate) retry_max: Duration,
    /// Read with `?stale` (any server answers; observe mode, which talks
    /// to the servers, not to a local agent).
    pub(crate) stale: bool,
    pub(crate) identify: Identify,
}

/// One health query: `index` 0 answers at once.
pub(crate) async fn fetch(
    api: &Api,
    cfg: &WatchConfig,
    index: u64,
) -> Result<(Vec<HealthEntry>, Option<u64>), ApiError> {
    let path = format!("health/service/{}", segment(&cfg.service));
    let mut query = vec![("passing", "1".to_owned())];
    if cfg.stale {
        query.push(("stale", String::new()));
    }
    let mut timeout = None;
    if index > 0 {
        query.push(("index", index.to_string()));
        query.push(("wait", format!("{}ms", cfg.wait.as_millis())));
        // Consul adds up to wait/16 of jitter: a shorter timeout would
        // cut every blocking call that sees no change.
        timeout = Some(cfg.wait + cfg.wait / 16 + Duration::from_secs(5));
    }
    api.get(&path, &query, timeout).await
}

/// Logs the entries that are not peers, once per distinct set.
fn log_skipped(skipped: &[Skipped], last: &mut Vec<Skipped>) {
    if skipped == last.as_slice() {
        return;
    }
    for s in skipped {
        match s {
            Skipped::Protocol { node, protocol } => tracing::warn!(
                peer = %node,
                "consul lists a mesh node of protocol {protocol:?}: not dialed"
            ),
            Skipped::NotMesh(id) => {
                tracing::debug!(service = %id, "consul entry without mesh metadata: ignored")
            }
            Skipped::NotPassing(what) => tracing::debug!("consul entry not passing: {what}"),
        }
    }
    *last = skipped.to_vec();
}

/// Publishes `peers` if they differ from the last view.
pub(crate) fn publish(tx: &watch::Sender<Peers>, peers: Peers) {
    tx.send_if_modified(|p| {
        if *p == peers {
            false
        } else {
            *p = peers;
            true
        }
    });
}

/// The loop: block on the service's index, diff each answer into the
/// view, and when Consul fails keep the last view, log once per change of
/// state, and retry with exponential backoff. Ends when nobody listens.
/// With `relogin` (observe mode with an auth method), a 403 (the login
/// token was destroyed: consul-k8s deletes a pod's tokens when it
/// deregisters the pod) logs in again and retries with the new token.
pub(crate) async fn run(
    mut api: Api,
    cfg: WatchConfig,
    mut index: BlockingIndex,
    tx: watch::Sender<Peers>,
    relogin: Option<super::observe::Relogin>,
) {
    let mut bucket = TokenBucket::new(cfg.burst, cfg.period, Instant::now());
    let mut failures = 0u32;
    let mut last_skipped = Vec::new();
    loop {
        if tx.is_closed() {
            return;
        }
        // One wait per round: the rate limit, or the backoff after failures.
        let retry = match failures {
            0 => Duration::ZERO,
            n => backoff(cfg.retry_min, n - 1, cfg.retry_max),
        };
        let wait = bucket.take(Instant::now()).max(retry);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        match fetch(&api, &cfg, index.get()).await {
            Ok((entries, returned)) => {
                if failures > 0 {
                    tracing::info!(node = %cfg.me, "consul answers again: discovery resumed");
                    failures = 0;
                }
                let before = index;
                index.observe(returned);
                if index.get() == 0 && before.get() > 0 {
                    tracing::info!(node = %cfg.me, "consul index went backwards ({} -> {returned:?}): starting over", before.get());
                }
                let (peers, skipped) =
                    peers_from_health(entries, &cfg.me, cfg.protocol, &cfg.identify);
                log_skipped(&skipped, &mut last_skipped);
                publish(&tx, peers);
            }
            Err(ApiError::Status { code: 403, .. }) if relogin.is_some() => {
                failures += 1;
                let Some(r) = relogin.as_ref() else { continue };
                match r.login().await {
                    Ok(fresh) => {
                        tracing::info!(node = %cfg.me, "consul refused the login token: logged in again");
                        api = fresh;
                    }
                    Err(e) => {
                        tracing::warn!(node = %cfg.me, "consul refused the login token and logging in again failed: {e}; retrying")
                    }
                }
                index.reset();
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(node = %cfg.me, "consul discovery failed: {e}; serving on the last known membership, retrying");
                } else {
                    tracing::debug!(node = %cfg.me, "consul discovery still failing: {e}");
                }
                index.reset();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_rules() {
        let mut i = BlockingIndex::default();
        assert_eq!(i.get(), 0);
        i.observe(Some(7));
        assert_eq!(i.get(), 7);
        i.observe(Some(7)); // a timeout: same index
        assert_eq!(i.get(), 7);
        i.observe(Some(9));
        assert_eq!(i.get(), 9);
        i.observe(Some(3)); // backwards: start over
        assert_eq!(i.get(), 0);
        i.observe(Some(0)); // never block on 0
        assert_eq!(i.get(), 1);
        i.observe(None);
        assert_eq!(i.get(), 0);
        i.observe(Some(4));
        i.reset();
        assert_eq!(i.get(), 0);
    }

    #[test]
    fn token_bucket_allows_a_burst_then_paces() {
        let t0 = Instant::now();
        let p = Duration::from_millis(100);
        let mut b = TokenBucket::new(2, p, t0);
        assert_eq!(b.take(t0), Duration::ZERO);
        assert_eq!(b.take(t0), Duration::ZERO);
        assert_eq!(b.take(t0), p);
        // After waiting that long, the next one waits a period again.
        assert_eq!(b.take(t0 + p), p);
        // Quiet for a long time: the burst is back, not more.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(b.take(later), Duration::ZERO);
        assert_eq!(b.take(later), Duration::ZERO);
        assert_eq!(b.take(later), p);
    }

    fn entry(json: serde_json::Value) -> HealthEntry {
        serde_json::from_value(json).expect("entry parses")
    }

    #[test]
    fn peers_are_read_from_the_reference_shape() {
        let ok = |id: &str, node: &str, addr: &str, checks: serde_json::Value| {
            entry(serde_json::json!({
                "Node": {"Node": "host", "Address": "10.0.0.9"},
                "Service": {"ID": id, "Service": "mesh", "Tags": ["b", "a"], "Address": addr,
                    "Port": 7000, "Meta": {"mesh_node": node, "mesh_protocol": "1"}},
                "Checks": checks
            }))
        };
        let passing = serde_json::json!([
            {"CheckID": "serfHealth", "Status": "passing"},
            {"CheckID": "service:x", "Status": "passing"}
        ]);
        let entries = vec![
            ok("mesh-a", "a", "10.0.0.5", passing.clone()),
            ok("mesh-b", "b", "", passing.clone()), // node address used
            ok("mesh-me", "me", "10.0.0.7", passing.clone()),
            ok(
                "mesh-c",
                "c",
                "10.0.0.8",
                serde_json::json!([{"CheckID": "serfHealth", "Status": "critical"}]),
            ),
            entry(serde_json::json!({
                "Node": {"Address": "10.0.0.1"},
                "Service": {"ID": "other", "Port": 80, "Tags": null, "Meta": null},
                "Checks": []
            })),
            entry(serde_json::json!({
                "Service": {"ID": "mesh-d", "Port": 1, "Address": "::1",
                    "Meta": {"mesh_node": "d", "mesh_protocol": "2"}}
            })),
            entry(serde_json::json!({
                "Service": {"ID": "mesh-e", "Port": 7001, "Address": "::1",
                    "Meta": {"mesh_node": "e", "mesh_protocol": "1"}}
            })),
        ];
        let (peers, skipped) = peers_from_health(entries, "me", 1, &Identify::Registered);
        assert_eq!(peers.keys().collect::<Vec<_>>(), ["a", "b", "e"]);
        assert_eq!(peers["a"].addr, "10.0.0.5:7000");
        assert_eq!(peers["a"].capabilities, ["a", "b"]);
        assert_eq!(peers["b"].addr, "10.0.0.9:7000");
        assert_eq!(peers["e"].addr, "[::1]:7001");
        assert_eq!(
            skipped,
            [
                Skipped::NotPassing("c (serfHealth)".into()),
                Skipped::NotMesh("other".into()),
                Skipped::Protocol {
                    node: "d".into(),
                    protocol: "2".into()
                },
            ]
        );
    }

    #[test]
    fn the_registered_address_wins() {
        let e = entry(serde_json::json!({
            "Service": {"ID": "mesh-a", "Port": 7000, "Address": "10.0.0.5",
                "Meta": {"mesh_node": "a", "mesh_protocol": "1", "mesh_addr": "a.internal:7000"}}
        }));
        let (peers, _) = peers_from_health(vec![e], "me", 1, &Identify::Registered);
        assert_eq!(peers["a"].addr, "a.internal:7000");
    }
}
