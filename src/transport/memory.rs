//! In-memory transport for fast, deterministic tests: named listeners in a
//! [`MemoryNetwork`], connected by `tokio::io::duplex` pipes. Every frame
//! still goes through the codec and the handshake, exactly as over TCP.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use super::{accept_stream, dial_stream, Connection, Inbound, Listening, TransportConfig};
use crate::Error;

type Endpoint = (
    TransportConfig,
    Arc<dyn Inbound>,
    mpsc::UnboundedSender<Connection>,
);

/// A set of named in-memory listeners.
#[derive(Default)]
pub struct MemoryNetwork {
    listeners: Mutex<HashMap<String, Endpoint>>,
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork").finish_non_exhaustive()
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Listens under `name` until the returned [`Listening`] is dropped.
    pub fn listen(
        self: &Arc<Self>,
        name: &str,
        cfg: TransportConfig,
        inbound: Arc<dyn Inbound>,
    ) -> Listening {
        let (tx, accepted) = mpsc::unbounded_channel();
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), (cfg, inbound, tx));
        // Dropping the `Listening` aborts this task, whose guard unlistens.
        let guard = Unlisten(Arc::downgrade(self), name.to_owned());
        let task = tokio::spawn(async move {
            let _guard = guard;
            std::future::pending::<()>().await;
        });
        Listening {
            addr: name.to_owned(),
            accepted,
            task,
        }
    }

    /// Stops listening under `name`.
    pub fn unlisten(&self, name: &str) {
        self.listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Dials `name` and runs the handshake over a fresh pipe.
    pub async fn dial(
        &self,
        name: &str,
        cfg: &TransportConfig,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Connection, Error> {
        let endpoint = self
            .listeners
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .map(|(c, i, t)| (c.clone(), i.clone(), t.clone()));
        let Some((lcfg, linbound, ltx)) = endpoint else {
            return Err(Error::NodeDown {
                node: format!("{name} (nothing listens there)"),
            });
        };
        let (ours, theirs) = tokio::io::duplex(256 << 10);
        tokio::spawn(async move {
            if let Some(conn) = accept_stream(theirs, &lcfg, linbound, "memory").await {
                // Nobody listens any more: do not leave it open unowned.
                if let Err(unclaimed) = ltx.send(conn) {
                    unclaimed.0.close();
                }
            }
        });
        dial_stream(ours, cfg, inbound, name).await
    }
}

struct Unlisten(std::sync::Weak<MemoryNetwork>, String);

impl Drop for Unlisten {
    fn drop(&mut self) {
        if let Some(net) = self.0.upgrade() {
            net.unlisten(&self.1);
        }
    }
}
