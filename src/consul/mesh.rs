//! Mesh mode: each node registers a Connect sidecar for itself, with one
//! upstream per peer, and learns where each peer's sidecar listens.
//!
//! A sidecar upstream targets a service *name* and balances over its
//! instances (reference `connect-and-sidecars.md` section 0.2), so a node
//! is reachable individually only under a name of its own. In mesh mode a
//! node therefore registers, besides its cluster registration (unchanged,
//! so discovery works as in direct mode):
//!
//! - a **per-node service**: Name `<service>-<node>` (the destination
//!   name), ID `<service>-<node>-connect`, Port = the node's listener
//!   (loopback only in mesh mode), Address = the sidecar's public address,
//!   an alias check on the cluster registration (so the node's heartbeat
//!   drives it, with the same `DeregisterCriticalServiceAfter`), and
//!   `Connect.SidecarService` whose `Proxy.Upstreams` hold one upstream per
//!   peer: `DestinationName` `<service>-<peer>`, `LocalBindAddress`
//!   127.0.0.1, `LocalBindPort` chosen by this node ([`PortPolicy`]);
//! - through it, the agent's sidecar registration `<id>-sidecar-proxy`
//!   (Kind `connect-proxy`, its public port from the agent's 21000-21255
//!   range unless [`Mesh::sidecar_port`] sets one), which any Connect proxy
//!   (`consul connect proxy|envoy -sidecar-for <id>`, HAProxy) serves.
//!   Once its port is known (set, or assigned by the agent at the first
//!   registration and kept from then on), the registration carries the
//!   agent's two default sidecar checks itself, with the TCP one every
//!   second instead of every 10 s: the proxy starts only after the
//!   registration, and peers reach this node only once that check passes.
//!
//! **Upstreams follow membership**: when the discovery's view of the peers
//! changes, the per-node service is registered again with the new
//! upstream list (the sidecar's content hash changes, so proxies reload);
//! a peer keeps its local port while it stays a member. The view published
//! by [`crate::consul::Consul::sidecar_upstreams`] changes only after the
//! agent accepted the registration. A refused registration is retried with
//! backoff (100 ms doubling to 5 s) and logged once per failure streak.
//!
//! **Peers' sidecars** are watched with one blocking query per peer on
//! `/v1/health/connect/<service>-<peer>?passing` (what the built-in proxy
//! and haproxy-consul-connect do): a passing entry gives the peer's public
//! address (`Service.Address`, else `Node.Address`, with `Service.Port`)
//! and its SPIFFE ID `spiffe://<trust domain>/ns/default/dc/<dc>/svc/<dest>`
//! (trust domain from `/v1/agent/connect/ca/roots`, read once at start: an
//! agent without Connect fails the start).
//!
//! **Intentions**: a peer's sidecar presents the leaf of `<service>-<peer>`
//! and is admitted by this node's sidecar only if an intention allows
//! `<service>-<peer>` => `<service>-<node>`; under a default-deny policy a
//! pair without one is refused. Consul accepts `*` only as a whole name
//! (`<service>-*` is refused with "wildcard character '*' cannot be used with
//! partial values"), so write either one allow per ordered pair of nodes
//! (`consul intention create -allow game-a game-b`, n x (n-1) of them,
//! added when a node joins), or one `* => <service>-<node>` per node when
//! every service of the mesh may reach the nodes.
//!
//! **Shutdown**: the manager task stops first (no registration after it),
//! then the per-node service is deregistered (the agent removes its
//! sidecar with it), then the cluster registration as in direct mode.
//! Dropping or halting the adapter aborts the tasks and leaves the
//! registrations behind, as a crash would: the alias check follows the
//! cluster registration's TTL and both are reaped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;

use super::api::{segment, Api, ApiError};
use super::health::register;
use super::watch::{BlockingIndex, TokenBucket, META_NODE, META_PROTOCOL};
use crate::discovery::Peers;
use crate::util::backoff;

/// Meta key marking the per-node registration (value `connect`).
pub(crate) const META_ROLE: &str = "mesh_role";

/// How the local ports of the upstreams are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PortPolicy {
    /// A free port from the OS per peer (bind port 0 on the upstream
    /// address, note the port, close): no configuration and no clash with
    /// other processes at the time, at the cost of a port that changes
    /// when the node restarts. The default.
    Ephemeral,
    /// `first .. first + count`: each new peer takes the lowest free port,
    /// and keeps it while it stays a member. Predictable ports for
    /// firewalls and for proxies configured by hand. A peer that finds the
    /// range full gets no upstream (logged as an error) until one is freed.
    Range {
        /// The first port.
        first: u16,
        /// How many ports.
        count: u16,
    },
}

/// Mesh mode settings, given to [`crate::consul::Consul::through_sidecar`].
///
/// # What the node registers
///
/// Besides its cluster registration (ID `<service>-<node>`, Name
/// `<service>`, unchanged so discovery works as in direct mode), a
/// per-node service: Name `<service>-<node>` (the destination name peers'
/// upstreams target), ID `<service>-<node>-connect` (what `consul connect
/// proxy|envoy -sidecar-for` takes), Port = the node's listener, Address =
/// [`Mesh::sidecar_address`], an alias check on the cluster registration
/// (the heartbeat drives it; same `DeregisterCriticalServiceAfter`), and
/// `Connect.SidecarService` with `Proxy.LocalServiceAddress/Port` = the
/// node's listener and one upstream per peer (`DestinationName`
/// `<service>-<peer>`, `LocalBindAddress` 127.0.0.1, `LocalBindPort` by
/// [`PortPolicy`]). The agent derives the sidecar
/// `<service>-<node>-connect-sidecar-proxy` from it.
///
/// # Ordering
///
/// The start registers the node, reads the Connect trust domain (an agent
/// without Connect fails the start), registers the per-node service with
/// upstreams for the first view of the peers, and reads the sidecar's
/// port back. Afterwards every change of the peer set registers the
/// per-node service again (peers keep their ports); the view of
/// [`crate::consul::Consul::sidecar_upstreams`] changes only once the
/// agent accepted it. Refusals are retried with backoff (100 ms doubling
/// to 5 s). Each peer's sidecar is watched with a blocking query on
/// `/v1/health/connect/<service>-<peer>?passing`; `remote` is `None` until
/// one passes. When the agent forgets the node (a restart), the heartbeat
/// registers both registrations again.
///
/// # Shutdown
///
/// The heartbeat stops, the mesh task stops (nothing is registered after
/// it), the per-node service is deregistered (the agent removes the
/// sidecar with it), then the node's registration. A halted node
/// (`Node::sever`) leaves both behind; they go critical with the
/// TTL and are reaped after `DeregisterCriticalServiceAfter`.
///
/// # Intentions
///
/// A peer's sidecar presents the leaf of `<service>-<peer>`; this node's
/// sidecar admits it only if an intention allows `<service>-<peer>` =>
/// `<service>-<node>`, and under a default-deny policy a pair without an
/// allow intention is refused. Consul takes `*` only as a whole name
/// (`<service>-*` is refused: "wildcard character '*' cannot be used with
/// partial values"), so write either one allow per ordered pair of nodes
/// (n x (n-1), added when a node joins:
/// `consul intention create -allow game-a game-b`), or one
/// `* => <service>-<node>` per node when every service in the mesh may
/// reach the nodes.
#[derive(Debug, Clone)]
pub struct Mesh {
    pub(crate) upstream_ports: PortPolicy,
    pub(crate) upstream_address: IpAddr,
    pub(crate) sidecar_address: Option<IpAddr>,
    pub(crate) sidecar_port: Option<u16>,
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh::new()
    }
}

impl Mesh {
    /// The defaults: upstream ports from the OS ([`PortPolicy::Ephemeral`])
    /// on 127.0.0.1, the sidecar's public address = the node's registered
    /// host, its port from the agent's sidecar range (21000-21255).
    pub fn new() -> Mesh {
        Mesh {
            upstream_ports: PortPolicy::Ephemeral,
            upstream_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            sidecar_address: None,
            sidecar_port: None,
        }
    }

    /// How the upstreams' local ports are chosen.
    pub fn upstream_ports(mut self, ports: PortPolicy) -> Self {
        self.upstream_ports = ports;
        self
    }

    /// Where the sidecar listens for this node's upstreams (127.0.0.1 by
    /// default; keep it a loopback address).
    pub fn upstream_address(mut self, ip: IpAddr) -> Self {
        self.upstream_address = ip;
        self
    }

    /// The address peers' sidecars dial this node's sidecar at (the
    /// `Address` of the per-node service, which its sidecar inherits). By
    /// default the host of the node's registered address, which in mesh
    /// mode is usually loopback: set it on any multi-host cluster.
    pub fn sidecar_address(mut self, ip: IpAddr) -> Self {
        self.sidecar_address = Some(ip);
        self
    }

    /// The sidecar's public port, instead of the agent's choice from its
    /// sidecar range. `0` asks the OS for a free one at start, and keeps it
    /// reserved while the node runs (a socket bound to it with
    /// `SO_REUSEADDR`, not listening: the sidecar binds beside it, no other
    /// connection of the process can take it meanwhile).
    pub fn sidecar_port(mut self, port: u16) -> Self {
        self.sidecar_port = Some(port);
        self
    }
}

/// One upstream of this node's sidecar: the way to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SidecarUpstream {
    /// The peer's node id.
    pub node: String,
    /// The upstream's `DestinationName`: the peer's per-node service,
    /// `<service>-<peer>`.
    pub destination: String,
    /// Where this node's sidecar listens for it (`LocalBindAddress:LocalBindPort`).
    pub local_bind: SocketAddr,
    /// The peer's sidecar, once Consul lists it passing.
    pub remote: Option<SidecarRemote>,
}

/// A peer's sidecar, as `/v1/health/connect/<destination>` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SidecarRemote {
    /// Its public (mTLS) address.
    pub addr: SocketAddr,
    /// The SPIFFE ID its leaf carries:
    /// `spiffe://<trust domain>/ns/default/dc/<dc>/svc/<destination>`.
    pub spiffe_id: String,
}

/// This node's own registration in mesh mode, as the agent holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalSidecar {
    /// The per-node service's ID: `-sidecar-for` takes this.
    pub service_id: String,
    /// The per-node service's name, `<service>-<node>`: the destination
    /// peers' upstreams name, and the service of this node's leaf
    /// (`/v1/agent/connect/ca/leaf/<name>`).
    pub service_name: String,
    /// The sidecar's ID, `<service_id>-sidecar-proxy`.
    pub proxy_id: String,
    /// The sidecar's public (mTLS) address and port.
    pub public: SocketAddr,
    /// Where the sidecar forwards inbound connections: the node's listener.
    pub local_service: SocketAddr,
    /// The SPIFFE ID of this node's leaf.
    pub spiffe_id: String,
    /// The Connect trust domain (`<cluster id>.consul`).
    pub trust_domain: String,
}

/// The per-node service name of `node` in cluster service `service`.
pub(crate) fn destination(service: &str, node: &str) -> String {
    format!("{service}-{node}")
}

/// The SPIFFE ID of service `svc`.
pub(crate) fn spiffe_id(td: &str, dc: &str, svc: &str) -> String {
    format!("spiffe://{td}/ns/default/dc/{dc}/svc/{svc}")
}

/// Local ports of the upstreams, by peer (sans-IO but for the OS query of
/// [`PortPolicy::Ephemeral`]).
#[derive(Debug)]
pub(crate) struct PortBook {
    mode: PortPolicy,
    ip: IpAddr,
    by_node: BTreeMap<String, u16>,
}

impl PortBook {
    pub(crate) fn new(mode: PortPolicy, ip: IpAddr) -> PortBook {
        PortBook {
            mode,
            ip,
            by_node: BTreeMap::new(),
        }
    }

    /// Keeps the ports of `nodes` that have one, frees the others', and
    /// gives ports to the new ones. Returns the nodes left without one.
    pub(crate) fn assign(&mut self, nodes: &BTreeSet<String>) -> Vec<String> {
        self.by_node.retain(|n, _| nodes.contains(n));
        let mut without = Vec::new();
        for n in nodes {
            if self.by_node.contains_key(n) {
                continue;
            }
            match self.next_port() {
                Some(p) => {
                    self.by_node.insert(n.clone(), p);
                }
                None => without.push(n.clone()),
            }
        }
        without
    }

    fn next_port(&self) -> Option<u16> {
        let used: BTreeSet<u16> = self.by_node.values().copied().collect();
        match self.mode {
            PortPolicy::Range { first, count } => (0..count)
                .filter_map(|i| first.checked_add(i))
                .find(|p| !used.contains(p)),
            PortPolicy::Ephemeral => (0..16).find_map(|_| {
                let port = std::net::TcpListener::bind((self.ip, 0))
                    .and_then(|l| l.local_addr())
                    .ok()?
                    .port();
                (!used.contains(&port)).then_some(port)
            }),
        }
    }

    pub(crate) fn get(&self, node: &str) -> Option<SocketAddr> {
        self.by_node.get(node).map(|p| SocketAddr::new(self.ip, *p))
    }
}

/// What the per-node registration is built from.
#[derive(Debug, Clone)]
pub(crate) struct MeshNode {
    pub(crate) service: String,
    pub(crate) node: String,
    pub(crate) protocol: u8,
    pub(crate) capabilities: Vec<String>,
    /// The cluster registration's ID (the alias check's target).
    pub(crate) cluster_id: String,
    /// The node's listener.
    pub(crate) local: SocketAddr,
    pub(crate) sidecar_address: IpAddr,
    pub(crate) sidecar_port: Option<u16>,
    pub(crate) deregister_after: String,
}

/// How often the agent dials the sidecar's public port (its TCP check),
/// when this node knows the port: Consul's default is 10 s.
pub(crate) const SIDECAR_CHECK_INTERVAL: &str = "1s";

impl MeshNode {
    pub(crate) fn id(&self) -> String {
        format!("{}-connect", destination(&self.service, &self.node))
    }

    /// The body of `PUT /v1/agent/service/register` for the per-node
    /// service, with one upstream per `(peer, local bind)`, sorted by peer.
    pub(crate) fn registration(&self, upstreams: &[(String, SocketAddr)]) -> Value {
        let ups: Vec<Value> = upstreams
            .iter()
            .map(|(peer, bind)| {
                json!({
                    "DestinationType": "service",
                    "DestinationName": destination(&self.service, peer),
                    "LocalBindAddress": bind.ip().to_string(),
                    "LocalBindPort": bind.port(),
                })
            })
            .collect();
        let mut sidecar = json!({
            "Proxy": {
                "LocalServiceAddress": self.local.ip().to_string(),
                "LocalServicePort": self.local.port(),
                "Upstreams": ups,
            }
        });
        let id = self.id();
        if let Some(port) = self.sidecar_port {
            sidecar["Port"] = json!(port);
            // The agent's default checks, but the TCP one every second
            // instead of every 10 s: the sidecar starts only after this
            // registration, so its first check fails, and peers learn of
            // it (and dial through it) only once it passes.
            let public = SocketAddr::new(self.sidecar_address, port);
            let sid = format!("{id}-sidecar-proxy");
            sidecar["Checks"] = json!([
                {
                    "CheckID": format!("service:{sid}:1"),
                    "Name": "Connect Sidecar Listening",
                    "TCP": public.to_string(),
                    "Interval": SIDECAR_CHECK_INTERVAL,
                },
                {
                    "CheckID": format!("service:{sid}:2"),
                    "Name": format!("Connect Sidecar Aliasing {id}"),
                    "AliasService": id,
                },
            ]);
        }
        json!({
            "ID": id,
            "Name": destination(&self.service, &self.node),
            "Tags": self.capabilities,
            "Address": self.sidecar_address.to_string(),
            "Port": self.local.port(),
            "Meta": {
                META_NODE: self.node,
                META_PROTOCOL: self.protocol.to_string(),
                META_ROLE: "connect",
            },
            "Check": {
                "CheckID": format!("service:{id}"),
                "Name": "mesh node (alias of its heartbeat)",
                "AliasService": self.cluster_id,
                "DeregisterCriticalServiceAfter": self.deregister_after,
            },
            "Connect": {"SidecarService": sidecar},
        })
    }
}

/// The fields of a `/v1/health/connect/<name>` entry the adapter reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ConnectEntry {
    #[serde(default)]
    node: ConnectNode,
    service: ConnectService,
    #[serde(default)]
    checks: Vec<ConnectCheck>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConnectNode {
    #[serde(default)]
    address: String,
    #[serde(default)]
    datacenter: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConnectService {
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConnectCheck {
    #[serde(default)]
    status: String,
}

/// The peer's sidecar out of a health/connect answer: the first entry
/// whose checks all pass and whose address is an IP.
pub(crate) fn remote_from(
    entries: &[ConnectEntry],
    td: &str,
    default_dc: &str,
    dest: &str,
) -> Option<SidecarRemote> {
    entries.iter().find_map(|e| {
        if e.checks.iter().any(|c| c.status != "passing") || e.service.port == 0 {
            return None;
        }
        let host = if e.service.address.is_empty() {
            &e.node.address
        } else {
            &e.service.address
        };
        let ip: IpAddr = host.trim_matches(['[', ']']).parse().ok()?;
        let dc = if e.node.datacenter.is_empty() {
            default_dc
        } else {
            &e.node.datacenter
        };
        Some(SidecarRemote {
            addr: SocketAddr::new(ip, e.service.port),
            spiffe_id: spiffe_id(td, dc, dest),
        })
    })
}

/// Settings of the manager task.
#[derive(Debug, Clone)]
pub(crate) struct MeshRun {
    pub(crate) api: Api,
    pub(crate) node: MeshNode,
    pub(crate) trust_domain: String,
    pub(crate) datacenter: String,
    pub(crate) wait: Duration,
    /// The per-node registration as last accepted, for the health worker
    /// to send again when the agent forgot the node.
    pub(crate) current: Arc<Mutex<Value>>,
    /// `Mesh::sidecar_port(0)`: the port picked for the sidecar, held
    /// while the node runs (see [`reserve_port`]).
    pub(crate) _port_reservation: Option<Arc<tokio::net::TcpSocket>>,
}

/// A free port for a sidecar to listen on, and the socket that reserves
/// it: bound with `SO_REUSEADDR` and not listening, it keeps the kernel
/// from handing the port to any other socket (an outgoing connection, say),
/// while the sidecar (HAProxy and Envoy set `SO_REUSEADDR` too) binds and
/// listens beside it. A port taken from `bind(0)` and closed at once could
/// be taken before the sidecar bound it.
pub(crate) fn reserve_port() -> std::io::Result<(u16, tokio::net::TcpSocket)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    Ok((socket.local_addr()?.port(), socket))
}

/// Registers the per-node service with upstreams for `peers` (ports from
/// `book`): the upstream list registered, or the agent's refusal.
pub(crate) async fn register_upstreams(
    run: &MeshRun,
    book: &mut PortBook,
    peers: &BTreeSet<String>,
) -> Result<Vec<(String, SocketAddr)>, ApiError> {
    for n in book.assign(peers) {
        tracing::error!(node = %run.node.node, peer = %n, "no free upstream port for this peer (PortPolicy range full): it is not reachable through the sidecar");
    }
    let ups: Vec<(String, SocketAddr)> = peers
        .iter()
        .filter_map(|p| book.get(p).map(|a| (p.clone(), a)))
        .collect();
    let body = run.node.registration(&ups);
    register(&run.api, &body).await?;
    *crate::util::lock(&run.current) = body;
    Ok(ups)
}

/// The manager: re-registers the upstreams when membership changes,
/// watches the peers' sidecars, and publishes the view. Ends when the
/// peer watch closes; aborting it aborts the per-peer watches.
pub(crate) async fn run(
    run: MeshRun,
    mut book: PortBook,
    mut registered: Vec<(String, SocketAddr)>,
    mut peers_rx: watch::Receiver<Peers>,
    view: Arc<watch::Sender<Vec<SidecarUpstream>>>,
) {
    let (remote_tx, mut remote_rx) = mpsc::channel::<(String, Option<SidecarRemote>)>(64);
    let mut watches: JoinSet<()> = JoinSet::new();
    let mut watching: BTreeMap<String, AbortHandle> = BTreeMap::new();
    let mut remotes: BTreeMap<String, SidecarRemote> = BTreeMap::new();
    let mut failures = 0u32;
    let mut retry_at: Option<Instant> = None;
    sync_watches(&run, &registered, &mut watches, &mut watching, &remote_tx);
    publish(&view, &run.node.service, &registered, &remotes);
    loop {
        let retry = async {
            match retry_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            changed = peers_rx.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some((node, remote)) = remote_rx.recv() => {
                match remote {
                    Some(r) => { remotes.insert(node, r); }
                    None => { remotes.remove(&node); }
                }
                publish(&view, &run.node.service, &registered, &remotes);
                continue;
            }
            Some(_) = watches.join_next(), if !watches.is_empty() => continue,
            () = retry => {}
        }
        let want: BTreeSet<String> = peers_rx.borrow_and_update().keys().cloned().collect();
        let have: BTreeSet<String> = registered.iter().map(|(n, _)| n.clone()).collect();
        if want == have && retry_at.is_none() {
            continue;
        }
        match register_upstreams(&run, &mut book, &want).await {
            Ok(ups) => {
                if failures > 0 {
                    tracing::info!(node = %run.node.node, "sidecar upstreams registered again");
                }
                failures = 0;
                retry_at = None;
                registered = ups;
                remotes.retain(|n, _| want.contains(n));
                sync_watches(&run, &registered, &mut watches, &mut watching, &remote_tx);
                publish(&view, &run.node.service, &registered, &remotes);
                tracing::debug!(node = %run.node.node, upstreams = registered.len(), "sidecar upstreams registered");
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(node = %run.node.node, "cannot register the sidecar upstreams: {e}; retrying");
                }
                let wait = backoff(
                    Duration::from_millis(100),
                    failures - 1,
                    Duration::from_secs(5),
                );
                retry_at = Some(Instant::now() + wait);
            }
        }
    }
}

/// Starts a watch for each registered peer without one, stops the others.
fn sync_watches(
    run: &MeshRun,
    registered: &[(String, SocketAddr)],
    watches: &mut JoinSet<()>,
    watching: &mut BTreeMap<String, AbortHandle>,
    tx: &mpsc::Sender<(String, Option<SidecarRemote>)>,
) {
    let want: BTreeSet<&String> = registered.iter().map(|(n, _)| n).collect();
    watching.retain(|n, h| {
        let keep = want.contains(n);
        if !keep {
            h.abort();
        }
        keep
    });
    for n in want {
        if !watching.contains_key(n) {
            let h = watches.spawn(watch_remote(run.clone(), n.clone(), tx.clone()));
            watching.insert(n.clone(), h);
        }
    }
}

/// Publishes the view if it differs from the last one.
fn publish(
    view: &watch::Sender<Vec<SidecarUpstream>>,
    service: &str,
    registered: &[(String, SocketAddr)],
    remotes: &BTreeMap<String, SidecarRemote>,
) {
    let next: Vec<SidecarUpstream> = registered
        .iter()
        .map(|(n, bind)| SidecarUpstream {
            node: n.clone(),
            destination: destination(service, n),
            local_bind: *bind,
            remote: remotes.get(n).cloned(),
        })
        .collect();
    view.send_if_modified(|v| {
        if *v == next {
            false
        } else {
            *v = next;
            true
        }
    });
}

/// One peer's sidecar: blocking queries on
/// `/v1/health/connect/<dest>?passing`, each answer reduced to the
/// remote and sent when it changes; backoff on errors (the last remote
/// stays meanwhile). Ends when the manager is gone.
async fn watch_remote(
    run: MeshRun,
    peer: String,
    tx: mpsc::Sender<(String, Option<SidecarRemote>)>,
) {
    let dest = destination(&run.node.service, &peer);
    let path = format!("health/connect/{}", segment(&dest));
    let mut index = BlockingIndex::default();
    let mut bucket = TokenBucket::new(4, Duration::from_millis(100), Instant::now());
    let mut failures = 0u32;
    let mut last: Option<Option<SidecarRemote>> = None;
    loop {
        if tx.is_closed() {
            return;
        }
        let retry = match failures {
            0 => Duration::ZERO,
            n => backoff(Duration::from_millis(100), n - 1, Duration::from_secs(5)),
        };
        let pause = bucket.take(Instant::now()).max(retry);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let mut query = vec![("passing", "1".to_owned())];
        let mut timeout = None;
        if index.get() > 0 {
            query.push(("index", index.get().to_string()));
            query.push(("wait", format!("{}ms", run.wait.as_millis())));
            timeout = Some(run.wait + run.wait / 16 + Duration::from_secs(5));
        }
        match run
            .api
            .get::<Vec<ConnectEntry>>(&path, &query, timeout)
            .await
        {
            Ok((entries, returned)) => {
                failures = 0;
                index.observe(returned);
                let remote = remote_from(&entries, &run.trust_domain, &run.datacenter, &dest);
                if last.as_ref() != Some(&remote) {
                    last = Some(remote.clone());
                    if tx.send((peer.clone(), remote)).await.is_err() {
                        return;
                    }
                }
            }
            Err(e) => {
                failures += 1;
                if failures == 1 {
                    tracing::warn!(node = %run.node.node, peer = %peer, "cannot read the peer's sidecar from consul: {e}; retrying");
                }
                index.reset();
            }
        }
    }
}

/// `GET /v1/agent/connect/ca/roots`: the trust domain, or why Connect is
/// not usable.
pub(crate) async fn trust_domain(api: &Api) -> Result<String, String> {
    let (roots, _): (Value, _) = api
        .get("agent/connect/ca/roots", &[], None)
        .await
        .map_err(|e| e.to_string())?;
    match roots["TrustDomain"].as_str() {
        Some(td) if !td.is_empty() => Ok(td.to_owned()),
        _ => Err("cluster trust domain empty, connect not bootstrapped".into()),
    }
}

/// `GET /v1/agent/service/<proxy id>`: the sidecar's public address, and
/// the agent's datacenter when the answer carries it.
pub(crate) async fn sidecar_public(
    api: &Api,
    proxy_id: &str,
) -> Result<(SocketAddr, Option<String>), String> {
    let (v, _): (Value, _) = api
        .get(&format!("agent/service/{}", segment(proxy_id)), &[], None)
        .await
        .map_err(|e| e.to_string())?;
    let port = v["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| format!("the agent holds no port for {proxy_id}"))?;
    let ip: IpAddr = v["Address"]
        .as_str()
        .unwrap_or("")
        .parse()
        .map_err(|_| format!("{proxy_id} has no IP address: {}", v["Address"]))?;
    let dc = v["Datacenter"]
        .as_str()
        .filter(|d| !d.is_empty())
        .map(str::to_owned);
    Ok((SocketAddr::new(ip, port), dc))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(ns: &[&str]) -> BTreeSet<String> {
        ns.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_port_range_keeps_ports_and_reuses_freed_ones() {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut b = PortBook::new(
            PortPolicy::Range {
                first: 9000,
                count: 2,
            },
            ip,
        );
        assert!(b.assign(&nodes(&["b", "c"])).is_empty());
        assert_eq!(b.get("b").map(|a| a.port()), Some(9000));
        assert_eq!(b.get("c").map(|a| a.port()), Some(9001));
        // Full: d waits.
        assert_eq!(b.assign(&nodes(&["b", "c", "d"])), ["d"]);
        // b leaves: c keeps its port, d takes b's.
        assert!(b.assign(&nodes(&["c", "d"])).is_empty());
        assert_eq!(b.get("c").map(|a| a.port()), Some(9001));
        assert_eq!(b.get("d").map(|a| a.port()), Some(9000));
        assert_eq!(b.get("b"), None);
        // A range at the top of the port space does not wrap.
        let mut top = PortBook::new(
            PortPolicy::Range {
                first: 65535,
                count: 3,
            },
            ip,
        );
        assert_eq!(top.assign(&nodes(&["x", "y"])), ["y"]);
    }

    #[test]
    fn ephemeral_ports_are_distinct_and_kept() {
        let mut b = PortBook::new(PortPolicy::Ephemeral, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert!(b.assign(&nodes(&["a", "b", "c"])).is_empty());
        let ports: BTreeSet<u16> = ["a", "b", "c"]
            .iter()
            .filter_map(|n| b.get(n).map(|a| a.port()))
            .collect();
        assert_eq!(ports.len(), 3);
        let a = b.get("a");
        b.assign(&nodes(&["a"]));
        assert_eq!(b.get("a"), a);
    }

    #[test]
    fn the_per_node_registration_follows_the_design() {
        let n = MeshNode {
            service: "game".into(),
            node: "a".into(),
            protocol: 2,
            capabilities: vec!["player".into()],
            cluster_id: "game-a".into(),
            local: "127.0.0.1:7000".parse().unwrap(),
            sidecar_address: "10.0.0.5".parse().unwrap(),
            sidecar_port: None,
            deregister_after: "60s".into(),
        };
        let body = n.registration(&[("b".into(), "127.0.0.1:9191".parse().unwrap())]);
        assert_eq!(
            body,
            json!({
                "ID": "game-a-connect", "Name": "game-a", "Tags": ["player"],
                "Address": "10.0.0.5", "Port": 7000,
                "Meta": {"mesh_node": "a", "mesh_protocol": "2", "mesh_role": "connect"},
                "Check": {"CheckID": "service:game-a-connect",
                    "Name": "mesh node (alias of its heartbeat)",
                    "AliasService": "game-a", "DeregisterCriticalServiceAfter": "60s"},
                "Connect": {"SidecarService": {"Proxy": {
                    "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 7000,
                    "Upstreams": [{"DestinationType": "service", "DestinationName": "game-b",
                        "LocalBindAddress": "127.0.0.1", "LocalBindPort": 9191}]}}}
            })
        );
        let fixed = MeshNode {
            sidecar_port: Some(21555),
            ..n
        };
        assert_eq!(
            fixed.registration(&[])["Connect"]["SidecarService"]["Port"],
            21555
        );
    }

    #[test]
    fn the_remote_is_the_first_passing_entry_with_an_ip() {
        let e = |addr: &str, node: &str, port: u16, status: &str| -> ConnectEntry {
            serde_json::from_value(json!({
                "Node": {"Address": node, "Datacenter": "east"},
                "Service": {"ID": "x-sidecar-proxy", "Address": addr, "Port": port},
                "Checks": [{"Status": "passing"}, {"Status": status}]
            }))
            .expect("entry")
        };
        let td = "td.consul";
        assert_eq!(remote_from(&[], td, "dc1", "game-b"), None);
        let got = remote_from(
            &[
                e("10.0.0.6", "10.0.0.9", 21000, "critical"),
                e("host.name", "10.0.0.9", 21000, "passing"),
                e("", "10.0.0.9", 21001, "passing"),
            ],
            td,
            "dc1",
            "game-b",
        );
        assert_eq!(
            got,
            Some(SidecarRemote {
                addr: "10.0.0.9:21001".parse().unwrap(),
                spiffe_id: "spiffe://td.consul/ns/default/dc/east/svc/game-b".into()
            })
        );
    }
}
