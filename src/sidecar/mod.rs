//! Node traffic through a service-mesh sidecar: a node built with
//! [`NodeBuilder::through_sidecar`](crate::NodeBuilder::through_sidecar)
//! sends every byte to a peer along: this node -> its sidecar's local
//! upstream port for that peer (127.0.0.1) -> mTLS with Connect leaves ->
//! the peer's sidecar public port -> the peer node, listening on loopback
//! only. The cookie handshake still runs inside the tunnel.
//!
//! Pieces, one per file:
//! - [`haproxy`]: the HAProxy 2.6 configuration rendered sans-IO from the
//!   registration, the leaf and the roots;
//! - [`supervisor`]: one supervised process (start, readiness, logs into
//!   `tracing`, restart with backoff, stop);
//! - [`Haproxy`] and [`CommandSidecar`]: the managed sidecars;
//! - [`SidecarTransport`]: the connector (dials a peer by node id at its
//!   upstream port) and the loopback-only acceptor.
//!
//! Nothing here names a registry: the Consul adapter's
//! `mesh::consul::ConsulSidecar` (features `consul` and `sidecar`) drives
//! a [`Sidecar`] in mesh mode (leaf, upstreams and intentions from Consul).
//!
//! A [`Sidecar`] ties them for a node: which sidecar runs (external,
//! HAProxy, a command template), the upstream ports its connector dials,
//! and the changes the discovery feeds it ([`Sidecar::set_upstreams`],
//! [`Sidecar::set_certs`], [`Sidecar::set_allow`]).
//!
//! Lifecycle contracts (a node built with the sidecar):
//! - **Start**: the node binds its listener on loopback (`127.0.0.1:0`
//!   unless [`NodeBuilder::listen`](crate::NodeBuilder::listen) says which
//!   loopback port), then starts the managed sidecar pointing at it, then
//!   registers with its discovery and dials peers. A sidecar that cannot
//!   start fails [`NodeBuilder::start`](crate::NodeBuilder::start) with
//!   [`StartError::Sidecar`](crate::StartError::Sidecar)
//!   (HAProxy missing: the error says `apt-get install haproxy`).
//! - **The sidecar dies**: connections through it close, calls in flight
//!   on them fail at once with [`crate::Error::NodeDown`], peers drop out
//!   of the membership; the supervisor restarts it with backoff, the peer
//!   table redials, and later calls succeed.
//! - **An upstream becomes live** (the reload that adds or changes it is
//!   done, and the port is in [`UpstreamTable`]): the node resets that
//!   peer's dial backoff and dials it at once, so a cluster forms as fast
//!   as its sidecars reload (not at the next backoff tick, up to 32
//!   heartbeats away).
//! - **Changes** reach a managed HAProxy by a master-worker reload:
//!   established connections stay on the old worker (up to
//!   `hard-stop-after`), new ones use the new configuration and
//!   certificates. See [`managed`] for details.
//! - **Shutdown**: [`Node::shutdown`](crate::Node::shutdown) drains calls,
//!   leaves the discovery and closes the node's connections, then stops
//!   the sidecar (SIGTERM, SIGKILL after a grace period). Dropping every
//!   handle of a running sidecar kills its process.

mod connector;
pub mod haproxy;
pub mod managed;
pub mod supervisor;

pub use connector::{SidecarTransport, UpstreamTable};
pub use haproxy::{Certs, HaproxyUpstream, Timeouts};
pub use managed::{
    check as check_haproxy_config, CommandSettings, CommandSidecar, Haproxy, HaproxySettings,
    StatRow, DEFAULT_HAPROXY,
};
pub use supervisor::{Restart, Status};

use std::sync::{Arc, Mutex};

use crate::util::lock;
use crate::Transport;

/// Why a sidecar could not start or take a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SidecarError {
    /// The program is not installed.
    #[error("{program} not found: {hint}")]
    Missing {
        /// The path or name tried.
        program: String,
        /// How to install it.
        hint: String,
    },
    /// An input the configuration cannot take, or a configuration the
    /// proxy refuses (with its own words).
    #[error("{0}")]
    Config(String),
    /// The process did not start, become ready or reload.
    #[error("{sidecar}: {reason}")]
    Process {
        /// `haproxy` or `command`.
        sidecar: &'static str,
        /// What happened, with its last output lines when it exited.
        reason: String,
    },
    /// Writing its files failed.
    #[error("sidecar files: {0}")]
    Io(String),
}

/// Which sidecar a node runs, and the state the discovery feeds it.
/// Cheap to clone: clones share the upstream ports and the running
/// process, so keep one to apply changes after the node has started.
#[derive(Clone)]
pub struct Sidecar {
    inner: Arc<Inner>,
}

struct Inner {
    ports: UpstreamTable,
    kind: Mutex<Kind>,
}

enum Kind {
    External,
    Haproxy {
        settings: Box<HaproxySettings>,
        running: Option<Haproxy>,
    },
    Command {
        settings: CommandSettings,
        running: Option<Arc<CommandSidecar>>,
    },
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match &*lock(&self.inner.kind) {
            Kind::External => "external",
            Kind::Haproxy { .. } => "haproxy",
            Kind::Command { .. } => "command",
        };
        f.debug_struct("Sidecar")
            .field("kind", &kind)
            .field("ports", &self.inner.ports)
            .finish()
    }
}

impl Sidecar {
    fn with(kind: Kind) -> Self {
        Sidecar {
            inner: Arc::new(Inner {
                ports: UpstreamTable::new(),
                kind: Mutex::new(kind),
            }),
        }
    }

    /// The platform runs the sidecar (injected, or started by the
    /// operator): the node starts nothing, it only dials the upstream
    /// ports and listens on loopback.
    pub fn external() -> Self {
        Sidecar::with(Kind::External)
    }

    /// A managed HAProxy, started when the node starts.
    pub fn haproxy(settings: HaproxySettings) -> Self {
        let s = Sidecar::with(Kind::Haproxy {
            running: None,
            settings: Box::new(settings.clone()),
        });
        s.inner.ports.set(
            settings
                .upstreams
                .iter()
                .map(|u| (u.node.clone(), u.local_port)),
        );
        s
    }

    /// A supervised command template (`consul connect proxy -sidecar-for
    /// {{id}}`, `consul connect envoy -sidecar-for {{id}}`), started when
    /// the node starts. Its upstreams come from the registration, not
    /// from here: [`Sidecar::set_upstreams`] only updates the ports the
    /// node dials.
    pub fn command(settings: CommandSettings) -> Self {
        Sidecar::with(Kind::Command {
            settings,
            running: None,
        })
    }

    /// The ports the node dials its peers at.
    pub fn ports(&self) -> &UpstreamTable {
        &self.inner.ports
    }

    /// The node's transport through this sidecar.
    pub fn transport(&self) -> Transport {
        SidecarTransport::new(self.inner.ports.clone()).transport()
    }

    /// The running managed HAProxy, if this is one and it has started.
    pub fn running_haproxy(&self) -> Option<Haproxy> {
        match &*lock(&self.inner.kind) {
            Kind::Haproxy { running, .. } => running.clone(),
            _ => None,
        }
    }

    /// The running command sidecar, if this is one and it has started.
    pub fn running_command(&self) -> Option<Arc<CommandSidecar>> {
        match &*lock(&self.inner.kind) {
            Kind::Command { running, .. } => running.clone(),
            _ => None,
        }
    }

    /// Replaces the peers (one upstream each): a managed HAProxy reloads,
    /// then the ports the node dials change. Each peer whose upstream is
    /// new or changed (port, or the peer's sidecar behind it) is live from
    /// then on: the node resets that peer's dial backoff and dials it at
    /// once.
    pub async fn set_upstreams(&self, upstreams: Vec<HaproxyUpstream>) -> Result<(), SidecarError> {
        let (running, before) = {
            let mut kind = lock(&self.inner.kind);
            if let Kind::Haproxy { settings, running } = &mut *kind {
                let before = std::mem::replace(&mut settings.upstreams, upstreams.clone());
                (running.clone(), before)
            } else {
                (None, Vec::new())
            }
        };
        if let Some(h) = running {
            h.set_upstreams(upstreams.clone()).await?;
        }
        let moved: Vec<String> = upstreams
            .iter()
            .filter(|u| {
                before
                    .iter()
                    .any(|b| b.node == u.node && b.local_port == u.local_port && b != *u)
            })
            .map(|u| u.node.clone())
            .collect();
        self.inner
            .ports
            .set(upstreams.into_iter().map(|u| (u.node, u.local_port)));
        // Same port, another peer sidecar behind it: `set` did not see it.
        self.inner.ports.touch(moved);
        Ok(())
    }

    /// A new leaf or new roots (a rotation): a managed HAProxy reloads;
    /// new connections carry the new certificate.
    pub async fn set_certs(&self, certs: Certs) -> Result<(), SidecarError> {
        let running = match &mut *lock(&self.inner.kind) {
            Kind::Haproxy { settings, running } => {
                settings.certs = certs.clone();
                running.clone()
            }
            _ => None,
        };
        match running {
            Some(h) => h.set_certs(certs).await,
            None => Ok(()),
        }
    }

    /// The SPIFFE IDs allowed to call this node in: a managed HAProxy
    /// reloads (open connections are not re-checked).
    pub async fn set_allow(&self, allow: Vec<String>) -> Result<(), SidecarError> {
        let running = match &mut *lock(&self.inner.kind) {
            Kind::Haproxy { settings, running } => {
                settings.allow = allow.clone();
                running.clone()
            }
            _ => None,
        };
        match running {
            Some(h) => h.set_allow(allow).await,
            None => Ok(()),
        }
    }

    /// Starts the managed sidecar (if any) for the node listening on
    /// `app`. Called by the node at start; idempotent.
    pub async fn start(&self, app: &str) -> Result<(), SidecarError> {
        enum Todo {
            Nothing,
            Haproxy(HaproxySettings),
            Command(CommandSettings),
        }
        let todo = match &*lock(&self.inner.kind) {
            Kind::Haproxy {
                settings,
                running: None,
            } => Todo::Haproxy((**settings).clone()),
            Kind::Command {
                settings,
                running: None,
            } => Todo::Command(settings.clone()),
            _ => Todo::Nothing,
        };
        match todo {
            Todo::Nothing => {}
            Todo::Haproxy(settings) => {
                let h = Haproxy::start(settings, app).await?;
                if let Kind::Haproxy { running, .. } = &mut *lock(&self.inner.kind) {
                    *running = Some(h);
                }
            }
            Todo::Command(settings) => {
                let c = Arc::new(CommandSidecar::start(settings).await?);
                if let Kind::Command { running, .. } = &mut *lock(&self.inner.kind) {
                    *running = Some(c);
                }
            }
        }
        Ok(())
    }

    /// Makes this sidecar the managed HAProxy `running`, started after
    /// the node by the Consul adapter's `ConsulSidecar` (which learns the public
    /// port and the leaf only once the node has registered); the node
    /// stops it at the end of its shutdown like any managed sidecar.
    #[cfg_attr(not(feature = "consul"), allow(dead_code))]
    pub(crate) fn attach_haproxy(&self, settings: HaproxySettings, running: Haproxy) {
        *lock(&self.inner.kind) = Kind::Haproxy {
            settings: Box::new(settings),
            running: Some(running),
        };
    }

    /// As [`Sidecar::attach_haproxy`], for a command-template sidecar.
    #[cfg_attr(not(feature = "consul"), allow(dead_code))]
    pub(crate) fn attach_command(&self, settings: CommandSettings, running: CommandSidecar) {
        *lock(&self.inner.kind) = Kind::Command {
            settings,
            running: Some(Arc::new(running)),
        };
    }

    /// Stops the managed sidecar (if running) and waits for it to exit.
    /// The node calls it at the end of its shutdown.
    pub async fn stop(&self) {
        let (h, c) = match &mut *lock(&self.inner.kind) {
            Kind::Haproxy { running, .. } => (running.take(), None),
            Kind::Command { running, .. } => (None, running.take()),
            Kind::External => (None, None),
        };
        if let Some(h) = h {
            h.stop().await;
        }
        if let Some(c) = c {
            c.stop().await;
        }
    }
}
