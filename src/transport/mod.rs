//! Connections between nodes: the handshake over a byte stream, then many
//! requests in flight per connection, multiplexed by correlation id.
//!
//! Any `AsyncRead + AsyncWrite` stream works: TCP ([`tcp`]) between
//! processes, or an in-memory duplex ([`memory`]) in tests, where every
//! frame still goes through the codec, so one conformance suite covers
//! both.
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
mod handshake;
pub mod memory;
pub mod tcp;

pub use conn::{Connection, Inbound, Responder};

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

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::Error;

/// Runs the listener side of the handshake on `io` (within the handshake
/// timeout) and starts the connection; logs and drops the stream on refusal.
async fn accept_stream<S>(
    mut io: S,
    cfg: &TransportConfig,
    inbound: Arc<dyn Inbound>,
    from: &str,
) -> Option<Connection>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match tokio::time::timeout(cfg.handshake_timeout, handshake::accept(&mut io, cfg)).await {
        Ok(Ok((peer, leftover))) => {
            tracing::debug!(peer = %peer.node, from, "connection accepted");
            Some(Connection::spawn(io, leftover, peer, cfg, inbound))
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

/// Runs the dialer side of the handshake on `io` and starts the connection.
async fn dial_stream<S>(
    mut io: S,
    cfg: &TransportConfig,
    inbound: Arc<dyn Inbound>,
    to: &str,
) -> Result<Connection, Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match tokio::time::timeout(cfg.handshake_timeout, handshake::dial(&mut io, cfg)).await {
        Ok(Ok((peer, leftover))) => Ok(Connection::spawn(io, leftover, peer, cfg, inbound)),
        Ok(Err(e)) => {
            tracing::warn!(to, "handshake failed: {e}");
            Err(handshake::to_error(e))
        }
        Err(_) => Err(Error::Refused {
            reason: format!("no handshake from {to} within {:?}", cfg.handshake_timeout),
        }),
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
