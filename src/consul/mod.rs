//! The Consul adapter (feature `consul`): registration, a TTL health
//! worker, and discovery by one blocking query, written to Consul's
//! documented HTTP API (`shared/reference/consul-api.md`).
//!
//! Everything mesh knows about Consul lives in this folder, above the
//! vendor-neutral boundaries it implements; nothing below imports it:
//!
//! | file | implements | boundary |
//! |---|---|---|
//! | `discovery.rs`, `health.rs`, `watch.rs` | [`Consul`]: registration, TTL worker, blocking query | [`crate::discovery::Discovery`] |
//! | `mesh.rs` | [`Mesh`]: Connect registrations, upstreams | (Consul only) |
//! | `connect.rs` | [`ConsulIdentity`], [`ConsulAuthorizer`] | [`crate::identity::IdentitySource`], [`crate::identity::Authorize`] |
//! | `lease.rs` (feature `strong`) | sessions and KV locks, fenced writes | `mesh::lease::LeaseStore` |
//! | `sidecar.rs` (feature `sidecar`) | `ConsulSidecar`: the node's sidecar in mesh mode | `mesh::sidecar::Sidecar` |
//! | `diagnose.rs` | [`Consul::diagnose`], [`Finding`]: checks without registering | |
//! | `observe.rs` | [`Observe`]: agentless mode (read only, ACL login) | [`crate::discovery::Discovery`] (through [`Consul::observe`]) |
//! | `api.rs`, `agent_tls.rs` | the agent client: token, caps, TLS to the agent | |
//!
//! ```no_run
//! # async fn run() -> Result<(), mesh::Error> {
//! use mesh::consul::Consul;
//! use mesh::Node;
//!
//! // Address and token from CONSUL_HTTP_ADDR / CONSUL_HTTP_TOKEN, as the
//! // consul CLI reads them, unless set here.
//! let consul = Consul::new().heartbeat(std::time::Duration::from_secs(1));
//! let node = Node::builder()
//!     .cluster("game")
//!     .cookie("secret")
//!     .listen("127.0.0.1:7000")
//!     .capabilities(["player"])
//!     .discovery(consul.clone())
//!     .start()
//!     .await?;
//! println!("registered as {:?}", consul.services().await?);
//! node.shutdown().await // heartbeat stops, then the node deregisters
//! # }
//! ```
//!
//! What it does, per node:
//!
//! - **Registers** one service instance: ID `<service>-<node id>`, Name =
//!   the service (the cluster name unless [`Consul::service`] says
//!   otherwise), Tags = the capabilities, Meta `mesh_node`, `mesh_protocol`
//!   and `mesh_addr` (the RPC address), Address/Port from the RPC address,
//!   with `?replace-existing-checks`. Its TTL check `service:<ID>` is
//!   registered *passing* (a new check is critical otherwise, and peers
//!   would see a new node as dead), with `DeregisterCriticalServiceAfter` so
//!   a killed node disappears (Consul clamps values under 1 minute up to 1
//!   minute). A refused registration (a wrong ACL token, say) fails
//!   [`crate::NodeBuilder::start`] with the agent's own words.
//! - **Keeps the check passing** from a ractor actor, every heartbeat (TTL
//!   at least 3x the heartbeat, checked at start). When the agent answers
//!   404, or 500 "does not have associated TTL", it forgot the node (an
//!   agent restart): the worker registers again. On other errors it backs
//!   off, doubling from the heartbeat up to the TTL: at most one request
//!   per TTL while the agent fails.
//! - **Discovers** peers with one blocking query on
//!   `/v1/health/service/<service>?passing`: an entry counts when every
//!   check (node checks such as `serfHealth` too) passes. The index goes
//!   back to 0 when it moves backwards; the request timeout is the wait
//!   plus 1/16 (Consul's jitter) plus 5 s; each answer is diffed into the
//!   peer view, since a wake-up is only a hint; a token bucket (burst 4,
//!   then one query per 100 ms) keeps churn from turning the loop into a
//!   flood. When Consul fails, the node keeps serving on the last view,
//!   logs once per change of state, and retries with backoff (100 ms
//!   doubling to 5 s).
//! - **Leaves** on [`crate::Node::shutdown`]: the worker stops first, then
//!   the service is deregistered (the other order can re-register a zombie
//!   with a late heartbeat), then the watch ends and the node closes.
//!
//! # Mesh mode
//!
//! With [`Consul::through_sidecar`] each node also registers a Connect
//! sidecar for itself, so that any Connect proxy (the built-in one, Envoy,
//! HAProxy) can carry the traffic between nodes:
//!
//! ```no_run
//! # async fn run() -> Result<(), mesh::Error> {
//! use mesh::consul::{Consul, Mesh};
//!
//! let consul = Consul::new().through_sidecar(Mesh::new());
//! // ... NodeBuilder::discovery(consul.clone()), listening on 127.0.0.1 ...
//! let mut upstreams = consul.sidecar_upstreams();
//! upstreams.changed().await.ok();
//! for u in upstreams.borrow().iter() {
//!     // peer u.node: dial u.local_bind; its sidecar is u.remote
//!     println!("{} via {} ({:?})", u.node, u.local_bind, u.remote);
//! }
//! # Ok(()) }
//! ```
//!
//! Per node, with cluster service `game` and node `a`:
//!
//! | registration | ID | Name | what for |
//! |---|---|---|---|
//! | the node (as in direct mode) | `game-a` | `game` | discovery, the TTL heartbeat |
//! | the per-node service | `game-a-connect` | `game-a` | a destination name of its own; alias check on `game-a` |
//! | its sidecar (by the agent) | `game-a-connect-sidecar-proxy` | `game-a-sidecar-proxy` | public mTLS port (21000-21255), `Proxy.Upstreams` = one per peer: `game-b` on `127.0.0.1:<port>` |
//!
//! Upstreams are registered again whenever membership changes, and each
//! peer keeps its local port while it stays ([`PortPolicy`]); the
//! peers' sidecars are watched on `/v1/health/connect/game-<peer>`.
//! [`Consul::sidecar_upstreams`] publishes the result,
//! [`Consul::local_sidecar`] this node's own side. The whole contract
//! (ordering, shutdown, how to write intentions: one allow per ordered
//! pair `game-a => game-b`, or `* => game-<node>`, since Consul refuses
//! `game-*`) is on [`Mesh`].
//! **TLS to the agent**: an `https://` address (or `CONSUL_HTTP_SSL=true`
//! with `host:port`) is reached over rustls (mesh's crypto provider), with
//! `CONSUL_CACERT`, `CONSUL_CAPATH`, `CONSUL_CLIENT_CERT`,
//! `CONSUL_CLIENT_KEY`, `CONSUL_TLS_SERVER_NAME` and
//! `CONSUL_HTTP_SSL_VERIFY` read as the `consul` CLI reads them, or set in
//! code with [`Consul::agent_tls`] (see [`AgentTls`]). `unix://` agents
//! are not supported.
//!
//! **Every request to the agent** (the adapter's, the lease store's,
//! [`ConsulIdentity`]'s,
//! [`ConsulAuthorizer`]'s and the
//! managed sidecar's) carries the ACL token when one is set, never
//! follows a redirect (a 3xx is an error: the token goes to the agent
//! only), and reads at most 64 MiB of answer (more is an error). A path
//! with a `.` or `..` segment (a KV key such as `a/../b`) is refused
//! before it is sent: URL parsing would turn it into another key than
//! the one a write names. `Debug` never prints the token.

mod agent_tls;
mod api;
mod connect;
mod diagnose;
mod discovery;
#[cfg(test)]
pub(crate) mod fake_http;
mod health;
#[cfg(feature = "strong")]
mod lease;
mod mesh;
mod observe;
#[cfg(feature = "sidecar")]
mod sidecar;
mod watch;
pub(crate) use api::{error_body, error_chain, read_capped, segment, Token, MAX_BODY};
pub(crate) use watch::{BlockingIndex, TokenBucket};

pub(crate) use agent_tls::client as agent_client;
pub use agent_tls::AgentTls;
pub use connect::{ConnectPem, ConsulAuthorizer, ConsulIdentity};
pub use diagnose::Finding;
pub(crate) use discovery::env_token;
#[cfg(feature = "strong")]
use discovery::go_duration;
pub use discovery::{Consul, Upstream, DEFAULT_ADDRESS};
pub use mesh::{LocalSidecar, Mesh, PortPolicy, SidecarRemote, SidecarUpstream};
pub use observe::{Observe, SERVICE_ACCOUNT_TOKEN};
#[cfg(feature = "sidecar")]
pub use sidecar::{Applied, ConsulHaproxy, ConsulSidecar};
