//! TCP: listen and dial.

use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::{accept_stream, dial_stream, Connection, Inbound, Listening, TransportConfig};
use crate::Error;

/// Listens on `addr` (port 0 picks one); every connection that completes
/// the handshake is served by `inbound` and handed out by
/// [`Listening::accepted`].
pub async fn listen(
    addr: &str,
    cfg: TransportConfig,
    inbound: Arc<dyn Inbound>,
) -> Result<Listening, Error> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| Error::Config(format!("cannot listen on {addr}: {e}")))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("no local address: {e}")))?
        .to_string();
    // The handshake tells dialers where this node listens: the bound
    // address, unless the caller advertises another.
    let mut cfg = cfg;
    if cfg.identity.addr.is_empty() {
        cfg.identity.addr = local.clone();
    }
    let (tx, accepted) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        loop {
            let (stream, from) = match listener.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (cfg, inbound, tx) = (cfg.clone(), inbound.clone(), tx.clone());
            tokio::spawn(async move {
                if let Some(conn) = accept_stream(stream, &cfg, inbound, &from.to_string()).await {
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

/// Dials `addr` and runs the handshake.
pub async fn dial(
    addr: &str,
    cfg: &TransportConfig,
    inbound: Arc<dyn Inbound>,
) -> Result<Connection, Error> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| Error::NodeDown {
            node: format!("{addr} ({e})"),
        })?;
    let _ = stream.set_nodelay(true);
    dial_stream(stream, cfg, inbound, addr).await
}
