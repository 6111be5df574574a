//! The connector boundary: how a node reaches a peer's byte stream and how
//! it accepts one, before the cookie handshake runs over it.
//!
//! A [`Connector`] turns a [`DialTarget`] (a node id when known, and where
//! to dial it) into a stream; an [`Acceptor`] binds a [`Listener`] whose
//! streams it may upgrade (a TLS handshake, say) one by one. Both return
//! [`ConnFacts`]: what the transport itself established about the other
//! end (its address, and its verified identity when the transport verifies
//! one), which the handshake hands on to the [`Peer`](crate::wire::Peer).
//!
//! Implementations here: plain TCP ([`super::tcp::Tcp`]) and in-memory
//! pipes ([`super::memory::MemoryNetwork`]). The TLS and sidecar ones join
//! the same conformance suite (`tests/core/transport.rs`).
//!
//! Contracts:
//! - `connect` and `Acceptor::secure` run inside the handshake timeout:
//!   a transport that hangs there is cut off, not waited for.
//! - `Listener::accept` returns quickly with a raw stream; per-connection
//!   work (a TLS handshake) belongs in `secure`, which runs on the
//!   connection's own task so one slow peer does not hold up the others.
//! - Dropping a listener stops accepting; streams already handed out live
//!   on.
//! - Errors are `std::io::Error`s with a message fit for a log line.

use std::io;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

pub use crate::util::BoxFuture;

/// A byte stream a transport established.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// A boxed [`Stream`].
pub type BoxStream = Box<dyn Stream>;

/// Where to dial a peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct DialTarget {
    /// The node id expected at the other end, when known (discovery and
    /// gossip know it; a seed address does not). A transport that
    /// verifies identities checks it; a sidecar maps it to an upstream.
    pub node: Option<String>,
    /// Where to dial: `host:port` for TCP, a name in memory.
    pub addr: String,
}

impl DialTarget {
    /// A target known only by its address (a seed).
    pub fn addr(addr: impl Into<String>) -> Self {
        DialTarget {
            node: None,
            addr: addr.into(),
        }
    }

    /// A target known by node id and address.
    pub fn node(node: impl Into<String>, addr: impl Into<String>) -> Self {
        DialTarget {
            node: Some(node.into()),
            addr: addr.into(),
        }
    }
}

impl std::fmt::Display for DialTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.node {
            Some(n) => write!(f, "{n} at {}", self.addr),
            None => f.write_str(&self.addr),
        }
    }
}

/// What the transport established about a stream's other end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnFacts {
    /// The remote address, for logs (empty when the transport has none).
    pub remote: String,
    /// The other end's identity as the transport verified it (a SPIFFE ID
    /// from its certificate, say); `None` when the transport verifies
    /// nothing, as plain TCP does.
    pub identity: Option<String>,
    /// What the transport asks of the connection while it is open (an
    /// accepted TLS connection: re-authorization, maximum lifetime);
    /// `None`: nothing. A node enforces it (see [`Lifetime`]).
    pub lifetime: Option<Lifetime>,
}

/// Checks an open connection must keep passing, and how old it may grow.
/// A node carries them out for the connections it accepted:
/// - every `recheck` period it runs the check; a refusal is logged,
///   counted in `mesh_connections_closed_total{reason="denied"}` and
///   closes the connection at once (calls in flight on it fail with
///   `NodeDown`);
/// - at `max_age` it retires the connection gracefully: the peer is told
///   (a `Retire` frame) and moves its new calls to a fresh connection,
///   then what is in flight is answered and the connection closes; no
///   call fails because of it. Counted in
///   `mesh_connections_closed_total{reason="max_lifetime"}`.
#[derive(Clone, Default)]
pub struct Lifetime {
    /// Retire the connection once it is this old.
    pub max_age: Option<std::time::Duration>,
    /// Run the check this often.
    pub recheck: Option<(std::time::Duration, Arc<dyn Recheck>)>,
}

impl std::fmt::Debug for Lifetime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lifetime")
            .field("max_age", &self.max_age)
            .field("recheck", &self.recheck.as_ref().map(|(d, _)| d))
            .finish()
    }
}

/// Compares the settings only (checks are not comparable).
impl PartialEq for Lifetime {
    fn eq(&self, other: &Self) -> bool {
        self.max_age == other.max_age
            && self.recheck.as_ref().map(|(d, _)| d) == other.recheck.as_ref().map(|(d, _)| d)
    }
}

impl Eq for Lifetime {}

/// A check repeated on an open connection (re-authorization of its peer).
pub trait Recheck: Send + Sync + 'static {
    /// `Ok` keeps the connection; `Err` carries why it must close.
    fn recheck(&self) -> BoxFuture<'_, Result<(), String>>;
}

impl ConnFacts {
    /// Facts of an unverified stream from `remote`.
    pub fn unverified(remote: impl Into<String>) -> Self {
        ConnFacts {
            remote: remote.into(),
            identity: None,
            lifetime: None,
        }
    }

    /// The same facts with a verified identity.
    pub fn with_identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }
}

/// Opens streams to peers.
pub trait Connector: Send + Sync + 'static {
    /// Connects to `target` on behalf of node `local` (the dialing node's
    /// id). Runs inside the handshake timeout.
    fn connect<'a>(
        &'a self,
        local: &'a str,
        target: &'a DialTarget,
    ) -> BoxFuture<'a, io::Result<(BoxStream, ConnFacts)>>;
}

/// Binds listeners and secures the streams they accept.
pub trait Acceptor: Send + Sync + 'static {
    /// Listens on `addr` for node `local` (port 0 picks one).
    fn bind<'a>(
        &'a self,
        addr: &'a str,
        local: &'a str,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>>;

    /// Upgrades one accepted stream (a TLS handshake, say) before the
    /// cookie handshake; runs on the connection's task, inside the
    /// handshake timeout. The default passes the stream through.
    fn secure(
        &self,
        stream: BoxStream,
        facts: ConnFacts,
    ) -> BoxFuture<'static, io::Result<(BoxStream, ConnFacts)>> {
        Box::pin(std::future::ready(Ok((stream, facts))))
    }
}

/// A bound listener.
pub trait Listener: Send + 'static {
    /// The address peers dial (with the port bound).
    fn local_addr(&self) -> String;

    /// The next raw stream. An error is logged and accepting goes on.
    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, ConnFacts)>>;
}
