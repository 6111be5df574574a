//! Connections between nodes: the handshake over a byte stream, then many
//! requests in flight per connection, multiplexed by correlation id.
//!
//! Streams come from a [`Connector`] and an [`Acceptor`] (the connector
//! boundary, see [`connect`](self#the-connector-boundary)): TCP ([`tcp`])
//! between processes, or in-memory pipes ([`memory`]) in tests, where every
//! frame still goes through the codec, so one conformance suite covers
//! every transport. A [`Transport`] pairs the two for a node.
//!
//! ## The connector boundary
//!
//! A connector turns a [`DialTarget`] into a stream, an acceptor binds a
//! [`Listener`] and may upgrade each stream it accepts. Both report
//! [`ConnFacts`] (remote address, verified identity) that reach the
//! handshake and end up in the connection's [`Peer`](crate::wire::Peer).
//!
//! Contracts:
//! - Writes are batched: one writer task per connection drains every frame
//!   queued since its last write into one `write_all`.
//! - A malformed frame closes the connection (the stream is out of sync),
//!   is logged and counted in `mesh_frame_errors_total`. A body that does
//!   not decode fails only its request.
//! - When a connection closes, every call waiting on it fails at once with
//!   [`crate::Error::NodeDown`], not at its deadline.
//! - A call carries the time its caller has left; the callee drops the
//!   work once it has passed. The caller's side answers `Timeout` from one
//!   timer per connection, armed for the earliest deadline.
//! - Inbound calls are answered through a [`Responder`] straight into the
//!   connection's writer, from wherever the work ends.

mod conn;
mod connect;
mod handshake;
pub mod memory;
pub mod tcp;
pub mod tls;

pub(crate) use conn::Routed;
pub use conn::{Ack, Connection, Inbound, Responder};
pub use connect::{
    Acceptor, BoxFuture, BoxStream, ConnFacts, Connector, DialTarget, Lifetime, Listener, Recheck,
    Stream,
};

use std::time::Duration;

use crate::wire::{Cookie, FrameCodec, Identity};

/// How connections are set up and framed.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    /// This node, as the handshake presents it.
    pub identity: Identity,
    /// The cluster cookie.
    pub cookie: Cookie,
    /// Frame size limit and checksums.
    pub codec: FrameCodec,
    /// How long a peer may take to complete the handshake.
    pub handshake_timeout: Duration,
}

impl TransportConfig {
    /// Defaults: 8 MiB frames without checksums, 5 s handshake timeout.
    pub fn new(identity: Identity, cookie: Cookie) -> Self {
        TransportConfig {
            identity,
            cookie,
            codec: FrameCodec::default(),
            handshake_timeout: Duration::from_secs(5),
        }
    }
}

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::{Error, StartError};

/// A node's transport: how it dials peers and how it accepts them.
#[derive(Clone)]
pub struct Transport {
    connector: Arc<dyn Connector>,
    acceptor: Arc<dyn Acceptor>,
    name: &'static str,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Transport").field(&self.name).finish()
    }
}

impl Default for Transport {
    fn default() -> Self {
        Transport::tcp()
    }
}

impl Transport {
    /// Plain TCP (the default): addresses are `host:port`.
    pub fn tcp() -> Self {
        Transport::tcp_with(tcp::Tcp::default())
    }

    /// Plain TCP with outgoing connections from `ip` ([`tcp::Tcp::from`]).
    pub fn tcp_from(ip: std::net::IpAddr) -> Self {
        Transport::tcp_with(tcp::Tcp::from(ip))
    }

    fn tcp_with(tcp: tcp::Tcp) -> Self {
        let tcp = Arc::new(tcp);
        Transport {
            connector: tcp.clone(),
            acceptor: tcp,
            name: "tcp",
        }
    }

    /// In-memory pipes within one process (tests): addresses are names.
    pub fn memory(net: Arc<memory::MemoryNetwork>) -> Self {
        Transport {
            connector: net.clone(),
            acceptor: net,
            name: "memory",
        }
    }

    /// Any connector and acceptor (TLS, a sidecar, a test double).
    pub fn custom(
        name: &'static str,
        connector: Arc<dyn Connector>,
        acceptor: Arc<dyn Acceptor>,
    ) -> Self {
        Transport {
            connector,
            acceptor,
            name,
        }
    }

    /// The connector.
    pub fn connector(&self) -> &Arc<dyn Connector> {
        &self.connector
    }

    /// The acceptor.
    pub fn acceptor(&self) -> &Arc<dyn Acceptor> {
        &self.acceptor
    }

    /// Listens on `addr`; see [`listen`].
    pub async fn listen(
        &self,
        addr: &str,
        cfg: TransportConfig,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Listening, StartError> {
        listen(self.acceptor.clone(), addr, cfg, inbound).await
    }

    /// Dials `target`; see [`dial`].
    pub async fn dial(
        &self,
        target: &DialTarget,
        cfg: &TransportConfig,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Connection, Error> {
        dial(&*self.connector, target, cfg, inbound).await
    }
}

/// Binds `addr` through `acceptor`. Every accepted stream is secured by the
/// acceptor and handshaken on its own task (both within the handshake
/// timeout); the connections that complete are served by `inbound` and
/// handed out by [`Listening::accepted`]. Dropping the [`Listening`] stops
/// accepting.
pub async fn listen(
    acceptor: Arc<dyn Acceptor>,
    addr: &str,
    cfg: TransportConfig,
    inbound: Arc<dyn Inbound>,
) -> Result<Listening, StartError> {
    let mut listener =
        acceptor
            .bind(addr, &cfg.identity.node)
            .await
            .map_err(|e| StartError::Listen {
                addr: addr.to_owned(),
                reason: e.to_string(),
            })?;
    let local = listener.local_addr();
    // The handshake tells dialers where this node listens: the bound
    // address, unless the caller advertises another.
    let mut cfg = cfg;
    if cfg.identity.addr.is_empty() {
        cfg.identity.addr = local.clone();
    }
    let (tx, accepted) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let (stream, facts) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    // A listener that fails at once (out of descriptors)
                    // must not spin: give the runtime a turn.
                    tokio::task::yield_now().await;
                    continue;
                }
            };
            let (cfg, inbound, tx) = (cfg.clone(), inbound.clone(), tx.clone());
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Some(conn) = accept_stream(&*acceptor, stream, facts, &cfg, inbound).await {
                    // Nobody listens any more: do not leave it open unowned.
                    if let Err(unclaimed) = tx.send(conn) {
                        unclaimed.0.close();
                    }
                }
            });
        }
    });
    Ok(Listening {
        addr: local,
        accepted,
        task,
    })
}

/// Dials `target` through `connector` and runs the handshake, both within
/// the handshake timeout.
pub async fn dial(
    connector: &dyn Connector,
    target: &DialTarget,
    cfg: &TransportConfig,
    inbound: Arc<dyn Inbound>,
) -> Result<Connection, Error> {
    let timeout = cfg.handshake_timeout;
    let attempt = async {
        let (mut io, facts) = connector
            .connect(&cfg.identity.node, target)
            .await
            .map_err(|e| Error::Unreachable {
                addr: target.addr.clone(),
                reason: e.to_string(),
            })?;
        match handshake::dial(&mut io, cfg).await {
            Ok((peer, leftover)) => {
                let lifetime = facts.lifetime.clone();
                let peer = peer.with_facts(facts);
                if let Some(expected) = &target.node {
                    if *expected != peer.node {
                        tracing::warn!(%target, found = %peer.node, "dialed another node than expected");
                    }
                }
                Ok(Connection::spawn(
                    io, leftover, peer, lifetime, cfg, inbound,
                ))
            }
            Err(e) => {
                tracing::warn!(%target, "handshake failed: {e}");
                Err(handshake::to_error(e))
            }
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(Error::Refused {
            reason: format!("no handshake from {target} within {timeout:?}"),
        }),
    }
}

/// Secures an accepted stream and runs the listener side of the handshake
/// (both within the handshake timeout), then starts the connection; logs
/// and drops the stream on refusal.
async fn accept_stream(
    acceptor: &dyn Acceptor,
    stream: BoxStream,
    facts: ConnFacts,
    cfg: &TransportConfig,
    inbound: Arc<dyn Inbound>,
) -> Option<Connection> {
    let from = facts.remote.clone();
    let attempt = async {
        let (mut io, facts) = acceptor
            .secure(stream, facts)
            .await
            .map_err(|e| format!("securing the stream failed: {e}"))?;
        let (peer, leftover) = handshake::accept(&mut io, cfg)
            .await
            .map_err(|e| e.to_string())?;
        let lifetime = facts.lifetime.clone();
        Ok::<_, String>((io, leftover, peer.with_facts(facts), lifetime))
    };
    match tokio::time::timeout(cfg.handshake_timeout, attempt).await {
        Ok(Ok((io, leftover, peer, lifetime))) => {
            tracing::debug!(peer = %peer.node, from, "connection accepted");
            Some(Connection::spawn(
                io, leftover, peer, lifetime, cfg, inbound,
            ))
        }
        Ok(Err(e)) => {
            tracing::warn!(from, "refused a connection: {e}");
            None
        }
        Err(_) => {
            tracing::warn!(
                from,
                "dropped a connection that did not complete the handshake in {:?}",
                cfg.handshake_timeout
            );
            None
        }
    }
}

/// A listener accepting connections until dropped.
#[derive(Debug)]
pub struct Listening {
    addr: String,
    accepted: mpsc::UnboundedReceiver<Connection>,
    task: JoinHandle<()>,
}

impl Listening {
    /// The address peers dial (for TCP, with the port bound).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The next connection that completed its handshake.
    pub async fn accepted(&mut self) -> Option<Connection> {
        self.accepted.recv().await
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        self.task.abort();
    }
}
