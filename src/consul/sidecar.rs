//! A node's sidecar driven by the Consul adapter in mesh mode (features
//! `consul` and `sidecar`): [`ConsulSidecar`] says what follows what.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::{ConnectPem, Consul, ConsulIdentity, LocalSidecar, SidecarUpstream};
use crate::discovery::{Discovery, LocalNode, Peers};
use crate::sidecar::haproxy::{Certs, HaproxyUpstream, Timeouts};
use crate::sidecar::managed::{
    CommandSettings, CommandSidecar, Haproxy, HaproxySettings, DEFAULT_HAPROXY,
};
use crate::sidecar::supervisor::Restart;
use crate::sidecar::{Sidecar, SidecarError};
use crate::util::lock;
use crate::util::BoxFuture;
use crate::{Error, StartError};

/// How to run the managed HAProxy of a [`ConsulSidecar`]; what it serves
/// comes from Consul.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConsulHaproxy {
    /// The binary (default [`DEFAULT_HAPROXY`]).
    pub binary: PathBuf,
    /// Its directory: configuration, certificates, sockets (created).
    pub dir: PathBuf,
    /// The address the public frontend binds, with the registered port;
    /// `None` (default): the registered public address as it is.
    pub bind: Option<IpAddr>,
    /// Timeouts of the configuration.
    pub timeouts: Timeouts,
    /// Restart backoff.
    pub restart: Restart,
    /// How long a start or a reload may take to be ready (default 10 s).
    pub ready_timeout: Duration,
}

impl ConsulHaproxy {
    /// HAProxy at [`DEFAULT_HAPROXY`] with its files in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        ConsulHaproxy {
            binary: DEFAULT_HAPROXY.into(),
            dir: dir.into(),
            bind: None,
            timeouts: Timeouts::default(),
            restart: Restart::default(),
            ready_timeout: Duration::from_secs(10),
        }
    }

    /// Another HAProxy binary.
    pub fn binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }

    /// Binds the public frontend on `ip` (e.g. `0.0.0.0`) at the
    /// registered port, instead of the registered address.
    pub fn bind(mut self, ip: IpAddr) -> Self {
        self.bind = Some(ip);
        self
    }

    /// Other timeouts.
    pub fn timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    /// Another restart backoff.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }
}

/// What the sidecar was last given (see [`ConsulSidecar`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Applied {
    /// How many times a change was applied (0 at start).
    pub changes: u64,
    /// The upstreams HAProxy serves, one per peer whose sidecar is known
    /// (with a command or external sidecar: every registered upstream,
    /// `peer_addr` and `peer_id` possibly empty).
    pub upstreams: Vec<HaproxyUpstream>,
    /// The SPIFFE IDs let in (HAProxy only): the peers the intentions
    /// allow, sorted.
    pub allow: Vec<String>,
    /// Leaf or root renewals applied since start (HAProxy only).
    pub renewals: u64,
    /// The last change's failure, if it failed.
    pub error: Option<String>,
}

enum Mode {
    Haproxy(ConsulHaproxy),
    Command(String),
    External,
}

/// The Consul adapter in mesh mode plus the node's sidecar, kept in step.
/// Cheap to clone: clones share everything.
///
/// It is the glue
/// between [`Consul::through_sidecar`] (what is registered, where the
/// peers' sidecars listen) and a [`Sidecar`] (the process and the ports
/// the node dials).
///
/// ```no_run
/// # async fn doc() -> Result<(), mesh::Error> {
/// use mesh::consul::Mesh;
/// use mesh::consul::Consul;
/// use mesh::consul::{ConsulHaproxy, ConsulSidecar};
///
/// let consul = Consul::new().through_sidecar(Mesh::new());
/// let mesh = ConsulSidecar::haproxy(consul.clone(), ConsulHaproxy::new("/run/mesh/sidecar"));
/// let node = mesh::Node::builder()
///     .id("a")
///     .cookie("secret")
///     .discovery(mesh.clone()) // registers, then starts the sidecar
///     .through_sidecar(mesh.sidecar()) // dials through it, listens on loopback
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
///
/// A [`ConsulSidecar`] is the node's [`Discovery`] (it wraps the
/// [`Consul`] adapter) *and* hands out the node's [`Sidecar`]; give both
/// to the builder, as above.
///
/// # What follows what
///
/// With a managed HAProxy ([`ConsulSidecar::haproxy`]):
/// - **public frontend**: binds [`LocalSidecar::public`] (the sidecar
///   port the agent assigned, or [`Mesh::sidecar_port`](crate::consul::Mesh::sidecar_port)), or that port on
///   [`ConsulHaproxy::bind`]; forwards to [`LocalSidecar::local_service`],
///   the node's loopback listener;
/// - **its certificate**: the leaf of the per-node service
///   (`/v1/agent/connect/ca/leaf/<service>-<node>`) and every root, from a
///   [`ConsulIdentity`] that follows both with blocking queries;
/// - **upstreams**: one per entry of [`Consul::sidecar_upstreams`] whose
///   peer sidecar is known (`remote`): a frontend on its `local_bind` port,
///   a backend to `remote.addr`; the [`UpstreamTable`](crate::sidecar::UpstreamTable)
///   the node dials hold the same ports, updated after HAProxy has
///   reloaded (a peer without a port yet is retried by the peer table);
/// - **inbound** (the choice made here): HAProxy 2.6 cannot ask the agent
///   per connection, so the *agent's intentions are evaluated ahead*: for
///   each peer, `POST /v1/agent/connect/authorize` with Target = this
///   node's per-node service and `ClientCertURI` = the peer's SPIFFE ID
///   (`spiffe://<td>/ns/default/dc/<dc>/svc/<service>-<peer>`); the peers
///   authorized make HAProxy's allow list (matched against the caller
///   certificate's URI SAN). Asked again when the upstreams change, when
///   the leaf or roots rotate, and every [`ConsulSidecar::recheck`]
///   (10 s by default; intentions have no watch on the agent endpoint).
///   An intention changed to deny refuses *new* connections from then on;
///   connections already open stay (HAProxy does not re-check them). A
///   failed answer keeps the previous decision for that peer (none at
///   start: refused). Callers that are not cluster nodes are never
///   allowed, whatever the intentions say.
/// - Every change goes through the managed HAProxy's checked reload
///   (see [`Haproxy`]): established connections stay on the old worker.
///   What was last applied is published by [`ConsulSidecar::applied`].
///
/// With a command template ([`ConsulSidecar::command`]: `consul connect
/// proxy -sidecar-for {{id}}`, `consul connect envoy -sidecar-for {{id}}`)
/// the proxy reads its registration from the agent itself; the process
/// is started once the node is registered (`{{id}}` = the per-node
/// service ID) and is ready when its public port accepts. With
/// [`ConsulSidecar::external`] nothing runs. In both, only the ports the
/// node dials follow [`Consul::sidecar_upstreams`] (every upstream,
/// known remote or not: the proxy listens on all of them).
///
/// # Ordering, errors, shutdown
///
/// - **Start** ([`Discovery::start`]): the node has bound its loopback
///   listener; the Consul adapter registers the node and its per-node
///   service, then the sidecar starts (HAProxy: leaf and roots fetched,
///   intentions asked, configuration checked, process ready). A sidecar
///   that cannot start deregisters the node and fails
///   [`NodeBuilder::start`](crate::NodeBuilder::start) with
///   [`StartError::Sidecar`] (HAProxy missing: the error says how to
///   install it). A [`Consul`] not in mesh mode is a
///   `Sidecar` error too.
/// - **Changes** are applied one at a time by one task; a change that
///   fails (HAProxy refuses a reload) is logged, kept in
///   [`Applied::error`], and tried again at the next trigger.
/// - **Stop** ([`Discovery::stop`], from [`crate::Node::shutdown`]): the
///   task stops (no reload after it), the Consul adapter deregisters; the
///   node closes its connections and then stops the sidecar process.
///   [`Discovery::halt`] aborts the task and leaves the registrations, as
///   a crash would.
///
/// The identity and authorize requests go to the adapter's agent with
/// the adapter's own ACL token and TLS settings (those of
/// [`Consul::token`] and [`Consul::agent_tls`], else the `consul` CLI's
/// variables): the token needs `service:write` on the per-node service
/// (`<service>-<node>`), which it has already to register it. No
/// anonymous policy is needed, and none should hand out leaves: the
/// leaf answer holds the node's private key.
#[derive(Clone)]
pub struct ConsulSidecar {
    inner: Arc<Inner>,
}

struct Inner {
    consul: Consul,
    mode: Mode,
    sidecar: Sidecar,
    recheck: Mutex<Duration>,
    applied: watch::Sender<Applied>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for ConsulSidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulSidecar")
            .field("consul", &self.inner.consul)
            .field("sidecar", &self.inner.sidecar)
            .finish_non_exhaustive()
    }
}

impl crate::NodeBuilder {
    /// Joins the Consul service mesh through `mesh`, handed over once: the
    /// node registers and discovers its peers through it (as
    /// [`NodeBuilder::discovery`](crate::NodeBuilder::discovery)) and dials
    /// them through its sidecar (as
    /// [`NodeBuilder::through_sidecar`](crate::NodeBuilder::through_sidecar)
    /// with [`ConsulSidecar::sidecar`]). Features `consul` and `sidecar`.
    pub fn mesh(self, mesh: ConsulSidecar) -> Self {
        let sidecar = mesh.sidecar();
        self.discovery(mesh).through_sidecar(sidecar)
    }
}

impl ConsulSidecar {
    fn with(consul: Consul, mode: Mode) -> Self {
        ConsulSidecar {
            inner: Arc::new(Inner {
                consul,
                mode,
                // Nothing runs before the node has registered; the
                // managed process is attached then.
                sidecar: Sidecar::external(),
                recheck: Mutex::new(Duration::from_secs(10)),
                applied: watch::channel(Applied::default()).0,
                task: Mutex::new(None),
            }),
        }
    }

    /// A managed HAProxy, configured and reloaded from `consul` (which
    /// must be in mesh mode: [`Consul::through_sidecar`]).
    pub fn haproxy(consul: Consul, settings: ConsulHaproxy) -> Self {
        ConsulSidecar::with(consul, Mode::Haproxy(settings))
    }

    /// A supervised command template (`{{id}}` = the per-node service ID),
    /// started once the node is registered; ready when the registered
    /// public port accepts.
    pub fn command(consul: Consul, template: impl Into<String>) -> Self {
        ConsulSidecar::with(consul, Mode::Command(template.into()))
    }

    /// The platform runs the sidecar: only the ports the node dials
    /// follow the registration.
    pub fn external(consul: Consul) -> Self {
        ConsulSidecar::with(consul, Mode::External)
    }

    /// How often the intentions are asked again when nothing else
    /// changed (10 s by default; HAProxy only). Set before start.
    pub fn recheck(self, every: Duration) -> Self {
        *lock(&self.inner.recheck) = every.max(Duration::from_millis(10));
        self
    }

    /// The node's sidecar, for
    /// [`NodeBuilder::through_sidecar`](crate::NodeBuilder::through_sidecar).
    pub fn sidecar(&self) -> Sidecar {
        self.inner.sidecar.clone()
    }

    /// The Consul adapter inside.
    pub fn consul(&self) -> &Consul {
        &self.inner.consul
    }

    /// What was last applied; `changed()` wakes at each change.
    pub fn applied(&self) -> watch::Receiver<Applied> {
        self.inner.applied.subscribe()
    }

    async fn start_inner(
        &self,
        me: LocalNode,
        peers: watch::Sender<Peers>,
    ) -> Result<(), StartError> {
        let consul = &self.inner.consul;
        consul.start(me, peers).await?;
        match self.start_sidecar().await {
            Ok(task) => {
                *lock(&self.inner.task) = Some(task);
                Ok(())
            }
            Err(e) => {
                if let Err(d) = Discovery::stop(consul).await {
                    tracing::warn!(target: "mesh::sidecar", "deregistering after a failed sidecar start: {d}");
                }
                Err(StartError::Sidecar {
                    reason: e.to_string(),
                })
            }
        }
    }

    async fn start_sidecar(&self) -> Result<tokio::task::JoinHandle<()>, SidecarError> {
        let consul = &self.inner.consul;
        let local = consul.local_sidecar().ok_or_else(|| {
            SidecarError::Config(
                "ConsulSidecar needs the Consul adapter in mesh mode (Consul::through_sidecar(Mesh::new()))"
                    .into(),
            )
        })?;
        let mut ups = consul.sidecar_upstreams();
        let first = ups.borrow_and_update().clone();
        let sidecar = self.inner.sidecar.clone();
        let applied = self.inner.applied.clone();
        match &self.inner.mode {
            Mode::External => {
                set_all_ports(&sidecar, &first, &applied);
                Ok(tokio::spawn(follow_ports(sidecar, ups, applied)))
            }
            Mode::Command(template) => {
                let settings = CommandSettings::new(template.clone(), local.service_id.clone())
                    .ready_when_listening(local.public.to_string());
                let running = CommandSidecar::start(settings.clone()).await?;
                sidecar.attach_command(settings, running);
                set_all_ports(&sidecar, &first, &applied);
                Ok(tokio::spawn(follow_ports(sidecar, ups, applied)))
            }
            Mode::Haproxy(s) => {
                let (agent, token, tls) = consul.agent_access().ok_or_else(|| {
                    SidecarError::Config("the Consul adapter is not running".into())
                })?;
                let identity = ConsulIdentity::start_with(
                    &agent,
                    &local.service_name,
                    token.clone(),
                    &tls,
                    Default::default(),
                )
                .await
                .map_err(|e| {
                    SidecarError::Config(format!(
                        "the leaf of {} from the agent: {e}",
                        local.service_name
                    ))
                })?;
                let http = crate::consul::agent_client(&agent, &tls, None)
                    .map_err(SidecarError::Config)?;
                let asker = Asker {
                    http,
                    token,
                    url: format!("{}/v1/agent/connect/authorize", agent.trim_end_matches('/')),
                    local: local.clone(),
                };
                let upstreams = haproxy_upstreams(&first);
                let allow = asker.decide(&first, &[]).await;
                let public = match s.bind {
                    Some(ip) => SocketAddr::new(ip, local.public.port()),
                    None => local.public,
                };
                let mut settings =
                    HaproxySettings::new(s.dir.clone(), public.to_string(), certs(&identity.pem()))
                        .allow(allow.clone())
                        .upstreams(upstreams.clone())
                        .binary(s.binary.clone())
                        .timeouts(s.timeouts)
                        .restart(s.restart);
                settings.ready_timeout = s.ready_timeout;
                let running =
                    Haproxy::start(settings.clone(), &local.local_service.to_string()).await?;
                sidecar.attach_haproxy(settings, running);
                sidecar
                    .ports()
                    .set(upstreams.iter().map(|u| (u.node.clone(), u.local_port)));
                let mut renewals = identity.renewals();
                renewals.borrow_and_update();
                applied.send_replace(Applied {
                    changes: 0,
                    upstreams,
                    allow,
                    renewals: 0,
                    error: None,
                });
                let every = *lock(&self.inner.recheck);
                Ok(tokio::spawn(follow_haproxy(
                    sidecar, identity, renewals, asker, ups, applied, every,
                )))
            }
        }
    }
}

fn certs(pem: &ConnectPem) -> Certs {
    Certs {
        chain_pem: pem.cert.clone(),
        key_pem: pem.key.clone(),
        roots_pem: pem.roots.clone(),
    }
}

/// The peer's SPIFFE ID: this node's, with the peer's service name.
fn peer_id(local: &LocalSidecar, destination: &str) -> String {
    match local.spiffe_id.rsplit_once("/svc/") {
        Some((prefix, _)) => format!("{prefix}/svc/{destination}"),
        None => String::new(),
    }
}

/// HAProxy's upstreams: the peers whose sidecar is known.
fn haproxy_upstreams(ups: &[SidecarUpstream]) -> Vec<HaproxyUpstream> {
    ups.iter()
        .filter_map(|u| {
            let r = u.remote.as_ref()?;
            Some(HaproxyUpstream {
                node: u.node.clone(),
                destination: u.destination.clone(),
                local_port: u.local_bind.port(),
                peer_addr: r.addr.to_string(),
                peer_id: r.spiffe_id.clone(),
            })
        })
        .collect()
}

/// Every registered upstream (a command or external proxy listens on
/// all of them).
fn all_upstreams(ups: &[SidecarUpstream]) -> Vec<HaproxyUpstream> {
    ups.iter()
        .map(|u| HaproxyUpstream {
            node: u.node.clone(),
            destination: u.destination.clone(),
            local_port: u.local_bind.port(),
            peer_addr: u
                .remote
                .as_ref()
                .map(|r| r.addr.to_string())
                .unwrap_or_default(),
            peer_id: u
                .remote
                .as_ref()
                .map(|r| r.spiffe_id.clone())
                .unwrap_or_default(),
        })
        .collect()
}

fn set_all_ports(sidecar: &Sidecar, ups: &[SidecarUpstream], applied: &watch::Sender<Applied>) {
    let all = all_upstreams(ups);
    sidecar
        .ports()
        .set(all.iter().map(|u| (u.node.clone(), u.local_port)));
    applied.send_modify(|a| {
        if a.upstreams != all {
            a.changes += 1;
            a.upstreams = all;
        }
    });
}

async fn follow_ports(
    sidecar: Sidecar,
    mut ups: watch::Receiver<Vec<SidecarUpstream>>,
    applied: watch::Sender<Applied>,
) {
    while ups.changed().await.is_ok() {
        let now = ups.borrow_and_update().clone();
        set_all_ports(&sidecar, &now, &applied);
    }
}

/// Asks the agent's intentions for each peer.
struct Asker {
    http: reqwest::Client,
    token: Option<crate::consul::Token>,
    url: String,
    local: LocalSidecar,
}

impl Asker {
    /// The peers' SPIFFE IDs the intentions let in, sorted; a peer whose
    /// answer failed keeps its place in `previous`.
    async fn decide(&self, ups: &[SidecarUpstream], previous: &[String]) -> Vec<String> {
        let mut allow = BTreeSet::new();
        for u in ups {
            let id = peer_id(&self.local, &u.destination);
            if id.is_empty() {
                continue;
            }
            match self.ask(&id).await {
                Ok(true) => {
                    allow.insert(id);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(target: "mesh::sidecar", peer = %u.node, "asking the intentions for {id}: {e}; keeping the previous decision");
                    if previous.contains(&id) {
                        allow.insert(id);
                    }
                }
            }
        }
        allow.into_iter().collect()
    }

    async fn ask(&self, id: &str) -> Result<bool, String> {
        let body = serde_json::json!({
            "Target": self.local.service_name,
            "ClientCertURI": id,
        });
        let mut req = self.http.post(&self.url).json(&body);
        if let Some(t) = &self.token {
            req = req.header("X-Consul-Token", t.secret());
        }
        let resp = req
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        if !status.is_success() {
            let text = crate::consul::error_body(resp).await;
            return Err(format!("{status}: {}", text.trim()));
        }
        let bytes = crate::consul::read_capped(resp, 64 << 10)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&bytes);
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        v.get("Authorized")
            .and_then(serde_json::Value::as_bool)
            .ok_or_else(|| format!("no Authorized in {text}"))
    }
}

async fn follow_haproxy(
    sidecar: Sidecar,
    identity: ConsulIdentity,
    mut renewals: watch::Receiver<u64>,
    asker: Asker,
    mut ups: watch::Receiver<Vec<SidecarUpstream>>,
    applied: watch::Sender<Applied>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        let renewed = tokio::select! {
            r = ups.changed() => { if r.is_err() { return } false }
            r = renewals.changed() => { if r.is_err() { return } true }
            _ = tick.tick() => false,
        };
        let now = ups.borrow_and_update().clone();
        let count = *renewals.borrow_and_update();
        let upstreams = haproxy_upstreams(&now);
        let previous = applied.borrow().allow.clone();
        let allow = asker.decide(&now, &previous).await;
        let pem = identity.pem();
        // Allow before upstreams: a new peer is let in before it is dialed.
        let result = async {
            sidecar.set_certs(certs(&pem)).await?;
            sidecar.set_allow(allow.clone()).await?;
            sidecar.set_upstreams(upstreams.clone()).await
        }
        .await;
        if let Err(e) = &result {
            tracing::warn!(target: "mesh::sidecar", sidecar = "haproxy", "applying a change from consul: {e}; tried again at the next change");
        }
        applied.send_if_modified(|a| {
            let error = result.as_ref().err().map(ToString::to_string);
            let next = Applied {
                changes: a.changes,
                upstreams: upstreams.clone(),
                allow: allow.clone(),
                renewals: count,
                error,
            };
            if *a == next && !renewed {
                return false;
            }
            *a = Applied {
                changes: a.changes + 1,
                ..next
            };
            true
        });
    }
}

impl Discovery for ConsulSidecar {
    fn start(
        &self,
        me: LocalNode,
        peers: watch::Sender<Peers>,
    ) -> BoxFuture<'_, Result<(), StartError>> {
        Box::pin(self.start_inner(me, peers))
    }

    fn stop(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let task = lock(&self.inner.task).take();
            if let Some(t) = task {
                t.abort();
                let _ = t.await;
            }
            Discovery::stop(&self.inner.consul).await
        })
    }

    fn halt(&self) {
        if let Some(t) = lock(&self.inner.task).take() {
            t.abort();
        }
        Discovery::halt(&self.inner.consul);
    }

    /// The Consul adapter's account, plus `sidecar_applied`: what the
    /// sidecar was last given.
    fn describe(&self) -> crate::discovery::Description {
        let mut v = self.inner.consul.describe();
        let a = self.inner.applied.borrow().clone();
        v.set(
            "sidecar_applied",
            serde_json::json!({
                "changes": a.changes,
                "upstreams": a.upstreams.iter().map(|u| serde_json::json!({
                    "node": u.node, "local_port": u.local_port, "peer_addr": u.peer_addr,
                })).collect::<Vec<_>>(),
                "allow": a.allow,
                "renewals": a.renewals,
                "error": a.error,
            }),
        );
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_id_is_this_nodes_with_the_peers_service() {
        let local = LocalSidecar {
            service_id: "game-a-connect".into(),
            service_name: "game-a".into(),
            proxy_id: "game-a-connect-sidecar-proxy".into(),
            public: "127.0.0.1:21000".parse().unwrap(),
            local_service: "127.0.0.1:7000".parse().unwrap(),
            spiffe_id: "spiffe://td.consul/ns/default/dc/dc1/svc/game-a".into(),
            trust_domain: "td.consul".into(),
        };
        assert_eq!(
            peer_id(&local, "game-b"),
            "spiffe://td.consul/ns/default/dc/dc1/svc/game-b"
        );
    }
}
