//! The transport through a sidecar: peers are dialed at this node's
//! local upstream port for them, on loopback; the node listens on
//! loopback only (its sidecar forwards to it). The cookie handshake runs
//! inside the tunnel, as over any transport.
//!
//! Contracts:
//! - A target with a node id is dialed at `127.0.0.1:<port>` from the
//!   [`UpstreamPorts`] map, read at each dial (updates apply to the next
//!   dial; established connections are untouched). A node with no port
//!   yet is [`std::io::ErrorKind::NotFound`], which the peer table
//!   retries with backoff.
//! - A target without a node id (a seed) must be a loopback address (a
//!   local upstream port given by hand): anything else is refused, since
//!   it would bypass the mesh.
//! - Binding a non-loopback address is refused.
//! - The sidecar verifies certificates, not this transport: streams carry
//!   no verified identity in their [`ConnFacts`].

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::transport::tcp::Tcp;
use crate::transport::{
    Acceptor, BoxFuture, BoxStream, ConnFacts, Connector, DialTarget, Listener, Transport,
};

/// Node id -> local upstream port, shared and updatable. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct UpstreamPorts {
    map: Arc<ArcSwap<HashMap<String, u16>>>,
}

impl UpstreamPorts {
    /// An empty map.
    pub fn new() -> Self {
        UpstreamPorts::default()
    }

    /// Replaces the whole map.
    pub fn set(&self, ports: impl IntoIterator<Item = (String, u16)>) {
        self.map.store(Arc::new(ports.into_iter().collect()));
    }

    /// Adds or changes one peer's port.
    pub fn insert(&self, node: impl Into<String>, port: u16) {
        let node = node.into();
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(node.clone(), port);
            m
        });
    }

    /// Removes one peer.
    pub fn remove(&self, node: &str) {
        self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.remove(node);
            m
        });
    }

    /// The port for `node`, if any.
    pub fn get(&self, node: &str) -> Option<u16> {
        self.map.load().get(node).copied()
    }
}

/// The sidecar connector and loopback-only acceptor.
#[derive(Debug, Clone)]
pub struct SidecarTransport {
    ports: UpstreamPorts,
    tcp: Tcp,
}

impl SidecarTransport {
    /// Dials peers through the ports in `ports`.
    pub fn new(ports: UpstreamPorts) -> Self {
        SidecarTransport {
            ports,
            tcp: Tcp::default(),
        }
    }

    /// As a node [`Transport`] (named `sidecar`).
    pub fn transport(self) -> Transport {
        let this = Arc::new(self);
        Transport::custom("sidecar", this.clone(), this)
    }
}

fn is_loopback(addr: &str) -> bool {
    if let Ok(sa) = addr.parse::<SocketAddr>() {
        return sa.ip().is_loopback();
    }
    matches!(addr.rsplit_once(':'), Some(("localhost", _)))
}

impl Connector for SidecarTransport {
    fn connect<'a>(
        &'a self,
        local: &'a str,
        target: &'a DialTarget,
    ) -> BoxFuture<'a, io::Result<(BoxStream, ConnFacts)>> {
        Box::pin(async move {
            let via = match &target.node {
                Some(node) => match self.ports.get(node) {
                    Some(port) => DialTarget::node(node.clone(), format!("127.0.0.1:{port}")),
                    None => {
                        return Err(io::Error::new(
                            io::ErrorKind::NotFound,
                            format!("no sidecar upstream for node {node} yet"),
                        ))
                    }
                },
                None if is_loopback(&target.addr) => target.clone(),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!(
                            "{} is not a local sidecar upstream: through a sidecar, peers are dialed by node id, seeds only at 127.0.0.1:<upstream port>",
                            target.addr
                        ),
                    ))
                }
            };
            let (stream, facts) = self.tcp.connect(local, &via).await?;
            let remote = match &target.node {
                Some(n) => format!("{n} via {}", facts.remote),
                None => facts.remote,
            };
            Ok((stream, ConnFacts::unverified(remote)))
        })
    }
}

impl Acceptor for SidecarTransport {
    fn bind<'a>(
        &'a self,
        addr: &'a str,
        local: &'a str,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            if !is_loopback(addr) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("through a sidecar the node listens on loopback only (127.0.0.1:<port>), not {addr}"),
                ));
            }
            self.tcp.bind(addr, local).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_told_from_the_rest() {
        for a in ["127.0.0.1:1", "127.0.0.9:80", "[::1]:5", "localhost:7"] {
            assert!(is_loopback(a), "{a}");
        }
        for a in [
            "0.0.0.0:1",
            "10.0.0.1:80",
            "[::]:5",
            "example.com:7",
            "nope",
        ] {
            assert!(!is_loopback(a), "{a}");
        }
    }

    #[test]
    fn ports_update_in_place() {
        let p = UpstreamPorts::new();
        p.insert("b", 1);
        let q = p.clone();
        q.insert("c", 2);
        assert_eq!((p.get("b"), p.get("c")), (Some(1), Some(2)));
        p.remove("b");
        assert_eq!(q.get("b"), None);
        p.set([("d".to_owned(), 4)]);
        assert_eq!((q.get("c"), q.get("d")), (None, Some(4)));
    }
}
