//! Plain TCP: the default transport. No identity is verified at this
//! layer (the cookie handshake authenticates the peer); `TCP_NODELAY` is
//! set on every stream, since frames are batched by the writer already.

use std::io;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use super::{
    Acceptor, BoxFuture, BoxStream, ConnFacts, Connection, Connector, DialTarget, Inbound,
    Listener, Listening, TransportConfig,
};
use crate::{Error, StartError};

/// The TCP connector and acceptor. Outgoing connections leave from the
/// address the system picks, unless [`Tcp::from`] names one (on a host
/// with several addresses, so peers and firewalls see the node's own).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp {
    from: Option<std::net::IpAddr>,
}

impl Tcp {
    /// Outgoing connections leave from `ip` (port chosen by the system).
    pub fn from(ip: std::net::IpAddr) -> Self {
        Tcp { from: Some(ip) }
    }
}

impl Connector for Tcp {
    fn connect<'a>(
        &'a self,
        _local: &'a str,
        target: &'a DialTarget,
    ) -> BoxFuture<'a, io::Result<(BoxStream, ConnFacts)>> {
        Box::pin(async move {
            // Names through `crate::resolve` (hickory with feature `dns`).
            let addrs = crate::resolve::lookup(&target.addr).await?;
            let stream = match self.from {
                None => connect_any(&addrs, &target.addr).await?,
                Some(ip) => {
                    let to = addrs
                        .into_iter()
                        .find(|a| a.is_ipv4() == ip.is_ipv4())
                        .ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::InvalidInput,
                                format!("{} has no address of the family of {ip}", target.addr),
                            )
                        })?;
                    let socket = if ip.is_ipv4() {
                        tokio::net::TcpSocket::new_v4()?
                    } else {
                        tokio::net::TcpSocket::new_v6()?
                    };
                    socket.bind(std::net::SocketAddr::new(ip, 0))?;
                    socket.connect(to).await?
                }
            };
            let _ = stream.set_nodelay(true);
            let remote = stream
                .peer_addr()
                .map_or_else(|_| target.addr.clone(), |a| a.to_string());
            Ok((Box::new(stream) as BoxStream, ConnFacts::unverified(remote)))
        })
    }
}

/// Connects to the first of `addrs` that accepts, as
/// `TcpStream::connect` does with a name's addresses; the last error when
/// none does.
async fn connect_any(addrs: &[std::net::SocketAddr], name: &str) -> io::Result<TcpStream> {
    let mut last = None;
    for a in addrs {
        match TcpStream::connect(a).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        io::Error::new(io::ErrorKind::NotFound, format!("{name} has no address"))
    }))
}

impl Acceptor for Tcp {
    fn bind<'a>(
        &'a self,
        addr: &'a str,
        _local: &'a str,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        Box::pin(async move {
            let listener = TcpListener::bind(addr).await?;
            let local = listener.local_addr()?.to_string();
            Ok(Box::new(TcpAccepting { listener, local }) as Box<dyn Listener>)
        })
    }
}

struct TcpAccepting {
    listener: TcpListener,
    local: String,
}

impl Listener for TcpAccepting {
    fn local_addr(&self) -> String {
        self.local.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, ConnFacts)>> {
        Box::pin(async move {
            let (stream, from) = self.listener.accept().await?;
            let _ = stream.set_nodelay(true);
            Ok((
                Box::new(stream) as BoxStream,
                ConnFacts::unverified(from.to_string()),
            ))
        })
    }
}

/// Listens on `addr` (port 0 picks one); every connection that completes
/// the handshake is served by `inbound` and handed out by
/// [`Listening::accepted`].
#[cfg_attr(feature = "internals", mesh_macros::expose)]
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
pub(crate) async fn listen(
    addr: &str,
    cfg: TransportConfig,
    inbound: Arc<dyn Inbound>,
) -> Result<Listening, StartError> {
    super::listen(Arc::new(Tcp::default()), addr, cfg, inbound).await
}

/// Dials `addr` and runs the handshake.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
#[cfg_attr(not(feature = "internals"), allow(dead_code))]
pub(crate) async fn dial(
    addr: &str,
    cfg: &TransportConfig,
    inbound: Arc<dyn Inbound>,
) -> Result<Connection, Error> {
    super::dial(&Tcp::default(), &DialTarget::addr(addr), cfg, inbound).await
}
