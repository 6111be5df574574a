//! The transport through a sidecar: peers are dialed at this node's
//! local upstream port for them, on loopback; the node listens on
//! loopback only (its sidecar forwards to it). The cookie handshake runs
//! inside the tunnel, as over any transport.
//!
//! Contracts:
//! - A target with a node id is dialed at `127.0.0.1:<port>` from the
//!   [`UpstreamTable`] map, read at each dial (updates apply to the next
//!   dial; established connections are untouched). A node with no port
//!   yet is [`std::io::ErrorKind::NotFound`], which the peer table
//!   retries with backoff.
//! - A node whose port appears or changes (the managed sidecar has
//!   reloaded with its upstream: it is live) is *retargeted*: the node's
//!   owner task hears of it at once and resets that peer's dial backoff,
//!   so the peer is dialed then, not at its next backoff tick.
//! - A target without a node id (a seed) must be a loopback address (a
//!   local upstream port given by hand): anything else is refused, since
//!   it would bypass the mesh.
//! - Binding a non-loopback address is refused.
//! - The sidecar verifies certificates, not this transport: streams carry
//!   no verified identity in their [`ConnFacts`].

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use tokio::sync::Notify;

use crate::transport::tcp::Tcp;
use crate::transport::{
    Acceptor, BoxFuture, BoxStream, ConnFacts, Connector, DialTarget, Listener, Transport,
};

/// Node id -> local upstream port, shared and updatable. Cheap to clone.
///
/// Every node whose port appears or changes is also recorded as
/// *retargeted*: the node dialing through these ports resets that peer's
/// dial backoff and dials it at once.
#[derive(Debug, Clone, Default)]
pub struct UpstreamTable {
    map: Arc<ArcSwap<HashMap<String, u16>>>,
    retarget: Arc<Retarget>,
}

/// Nodes whose dial target changed since the owner last looked.
#[derive(Debug, Default)]
struct Retarget {
    pending: Mutex<BTreeSet<String>>,
    notify: Notify,
}

impl UpstreamTable {
    /// An empty map.
    pub fn new() -> Self {
        UpstreamTable::default()
    }

    /// Replaces the whole map. Nodes whose port is new or changed are
    /// retargeted.
    pub fn set(&self, ports: impl IntoIterator<Item = (String, u16)>) {
        let new: HashMap<String, u16> = ports.into_iter().collect();
        let changed: Vec<String> = {
            let old = self.map.load();
            new.iter()
                .filter(|(n, p)| old.get(*n) != Some(*p))
                .map(|(n, _)| n.clone())
                .collect()
        };
        self.map.store(Arc::new(new));
        self.touch(changed);
    }

    /// Adds or changes one peer's port (retargeted if it changed).
    pub fn insert(&self, node: impl Into<String>, port: u16) {
        let node = node.into();
        let old = self.map.rcu(|m| {
            let mut m = HashMap::clone(m);
            m.insert(node.clone(), port);
            m
        });
        if old.get(&node) != Some(&port) {
            self.touch([node]);
        }
    }

    /// Marks `nodes` as retargeted: where their upstream leads changed
    /// (a port, or the peer's sidecar behind an unchanged port), so a
    /// dial now may succeed where the last one failed.
    pub(crate) fn touch(&self, nodes: impl IntoIterator<Item = String>) {
        let mut any = false;
        {
            let mut pending = self
                .retarget
                .pending
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            for n in nodes {
                pending.insert(n);
                any = true;
            }
        }
        if any {
            // A permit is stored if nobody waits yet: never lost.
            self.retarget.notify.notify_one();
        }
    }

    /// Waits until some nodes were retargeted since the last call, and
    /// returns them (sorted). Meant for one consumer: the owner task of
    /// the node that dials through these ports.
    pub(crate) async fn retargeted(&self) -> Vec<String> {
        loop {
            {
                let mut pending = self
                    .retarget
                    .pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                if !pending.is_empty() {
                    return std::mem::take(&mut *pending).into_iter().collect();
                }
            }
            self.retarget.notify.notified().await;
        }
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
    ports: UpstreamTable,
    tcp: Tcp,
}

impl SidecarTransport {
    /// Dials peers through the ports in `ports`.
    pub fn new(ports: UpstreamTable) -> Self {
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
        let p = UpstreamTable::new();
        p.insert("b", 1);
        let q = p.clone();
        q.insert("c", 2);
        assert_eq!((p.get("b"), p.get("c")), (Some(1), Some(2)));
        p.remove("b");
        assert_eq!(q.get("b"), None);
        p.set([("d".to_owned(), 4)]);
        assert_eq!((q.get("c"), q.get("d")), (None, Some(4)));
    }

    #[tokio::test]
    async fn new_and_changed_ports_are_retargeted() {
        let p = UpstreamTable::new();
        p.insert("b", 1);
        p.set([("b".to_owned(), 1), ("c".to_owned(), 2)]);
        assert_eq!(p.retargeted().await, ["b", "c"]);
        // Unchanged: nothing; changed or new: those.
        p.set([("b".to_owned(), 1), ("c".to_owned(), 2)]);
        p.insert("b", 1);
        p.set([
            ("b".to_owned(), 1),
            ("c".to_owned(), 3),
            ("d".to_owned(), 4),
        ]);
        assert_eq!(p.retargeted().await, ["c", "d"]);
        // The same peer's sidecar moved behind an unchanged port.
        p.touch(["b".to_owned()]);
        assert_eq!(p.clone().retargeted().await, ["b"]);
        // Nothing pending: it waits.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), p.retargeted());
        assert!(waiting.await.is_err());
    }
}
