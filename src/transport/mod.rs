//! Connections between nodes: the handshake over a byte stream, then many
//! requests in flight per connection, multiplexed by correlation id.
//!
//! Streams come from a [`Connector`] and an [`Acceptor`] (the connector
//! boundary, see [`connect`](self#the-connector-boundary)): TCP ([`tcp`])
//! between processes, or in-memory pipes ([`memory`]) in tests, where every
//! frame still goes through the codec, so one conformance suite covers
//! every transport. A [`Transport`] pairs the two for a node.
//!
//! Public here: [`Transport`] and the connector boundary below, for a
//! transport of your own. The connections themselves (`Connection`,
//! `Inbound`, `Responder`, `listen`, `dial`, `TransportConfig`) are the
//! engine's: public only with the hidden, unstable feature `internals`
//! (mesh's own tests and benchmarks).
//!
//! ## The connector boundary
//!
//! A connector turns a [`DialTarget`] into a stream, an acceptor binds a
//! [`Listener`] and may upgrade each stream it accepts. Both report
//! [`ConnFacts`] (remote address, verified identity) that reach the
//! handshake and end up in the connection's `Peer`.
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
//! - Inbound calls are answered through a `Responder` straight into the
//!   connection's writer, from wherever the work ends.
//! - Before a peer is authenticated it costs little: the handshake reads
//!   frames of at most `wire::HANDSHAKE_MAX_FRAME` bytes, decodes
//!   them within fixed limits, and at most
//!   `TransportConfig::max_handshakes` handshakes (securing the stream
//!   included) run at once on a listener, at most
//!   `TransportConfig::max_handshakes_per_ip` from one source address
//!   (loopback excepted: a sidecar forwards every peer from there). A
//!   stream beyond either cap is closed at once.
//! - The first bytes each side reads are told apart from other protocols
//!   before they are taken for a frame header (`wire::Opening`):
//!   a plain node dialing a TLS node, a TLS node dialing a plain one, an
//!   HTTP client on the cluster port or a dialer pointed at an HTTP server
//!   fails with a reason saying what is wrong and how to fix it; an HTTP
//!   client gets a `400 Bad Request` saying this is a mesh cluster port.
//!   A listener logs these at most once per 10 s.
//! - A listener whose `accept` fails (out of descriptors, say) backs off,
//!   from 5 ms doubling to 1 s, and logs at most once per 10 s how many
//!   accepts failed.

mod conn;
mod connect;
mod handshake;
pub mod memory;
pub mod tcp;
#[cfg(feature = "tls")]
pub mod tls;

#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) use conn::{Ack, Connection, Inbound, Responder};
pub(crate) use conn::{Origin, Routed, Waiting};
pub use connect::{
    Acceptor, BoxFuture, BoxStream, ConnFacts, Connector, DialTarget, Lifetime, Listener, Recheck,
    Stream,
};

use std::time::Duration;

use crate::wire::{Cookie, FrameCodec, Identity};

/// How connections are set up and framed.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
#[derive(Debug, Clone)]
pub(crate) struct TransportConfig {
    /// This node, as the handshake presents it.
    pub identity: Identity,
    /// The cluster cookie.
    pub cookie: Cookie,
    /// Frame size limit and checksums.
    pub codec: FrameCodec,
    /// How long a peer may take to complete the handshake.
    pub handshake_timeout: Duration,
    /// At most this many handshakes in progress at once on a listener
    /// (default [`MAX_HANDSHAKES`]); a stream beyond it is closed at once.
    pub max_handshakes: usize,
    /// At most this many of them from one source IP address (default
    /// [`MAX_HANDSHAKES_PER_IP`]); loopback addresses are not counted
    /// (a sidecar forwards every peer from there).
    pub max_handshakes_per_ip: usize,
}

/// The default cap on handshakes in progress at once on a listener.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) const MAX_HANDSHAKES: usize = 64;
/// The default cap on handshakes in progress at once from one source IP.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) const MAX_HANDSHAKES_PER_IP: usize = 8;

impl TransportConfig {
    /// Defaults: 8 MiB frames without checksums, 5 s handshake timeout,
    /// 64 handshakes at once, 8 from one source address.
    pub fn new(identity: Identity, cookie: Cookie) -> Self {
        TransportConfig {
            identity,
            cookie,
            codec: FrameCodec::default(),
            handshake_timeout: Duration::from_secs(5),
            max_handshakes: MAX_HANDSHAKES,
            max_handshakes_per_ip: MAX_HANDSHAKES_PER_IP,
        }
    }
}

/// The handshakes in progress on one listener: how many, and from where.
struct Pending {
    total: usize,
    per_ip: std::collections::HashMap<std::net::IpAddr, usize>,
}

/// Admits a handshake while the caps allow it; the slot frees when the
/// [`Slot`] drops.
#[derive(Clone)]
struct Admission {
    pending: Arc<std::sync::Mutex<Pending>>,
    max: usize,
    max_per_ip: usize,
}

struct Slot {
    pending: Arc<std::sync::Mutex<Pending>>,
    ip: Option<std::net::IpAddr>,
}

fn lock_pending(m: &std::sync::Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Admission {
    fn new(max: usize, max_per_ip: usize) -> Self {
        Admission {
            pending: Arc::new(std::sync::Mutex::new(Pending {
                total: 0,
                per_ip: std::collections::HashMap::new(),
            })),
            max,
            max_per_ip,
        }
    }

    /// A slot for a handshake from `remote` (`ip:port` for TCP), or why
    /// not. Only remote addresses that parse as a socket address and are
    /// not loopback count against the per-address cap.
    fn admit(&self, remote: &str) -> Result<Slot, &'static str> {
        let ip = remote
            .parse::<std::net::SocketAddr>()
            .ok()
            .map(|a| a.ip())
            .filter(|ip| !ip.is_loopback());
        let mut p = lock_pending(&self.pending);
        if p.total >= self.max {
            return Err("too many handshakes in progress");
        }
        if let Some(ip) = ip {
            let n = p.per_ip.entry(ip).or_insert(0);
            if *n >= self.max_per_ip {
                return Err("too many handshakes in progress from this address");
            }
            *n += 1;
        }
        p.total += 1;
        Ok(Slot {
            pending: self.pending.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut p = lock_pending(&self.pending);
        p.total = p.total.saturating_sub(1);
        if let Some(ip) = self.ip {
            if let std::collections::hash_map::Entry::Occupied(mut e) = p.per_ip.entry(ip) {
                *e.get_mut() -= 1;
                if *e.get() == 0 {
                    e.remove();
                }
            }
        }
    }
}

/// A log line at most once per interval, with how many were held back.
struct RateLimited {
    every: Duration,
    last: Option<tokio::time::Instant>,
    held: u64,
}

impl RateLimited {
    fn new(every: Duration) -> Self {
        RateLimited {
            every,
            last: None,
            held: 0,
        }
    }

    /// Whether to log now, and how many events were held back since the
    /// last line (this one not counted).
    fn tick(&mut self, now: tokio::time::Instant) -> Option<u64> {
        match self.last {
            Some(last) if now.duration_since(last) < self.every => {
                self.held += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.held))
            }
        }
    }
}

/// What a listener does when `accept` fails (out of descriptors, say):
/// wait, from [`ACCEPT_BACKOFF_MIN`] doubling to [`ACCEPT_BACKOFF_MAX`]
/// while it keeps failing, and log at most once per [`ACCEPT_LOG_EVERY`].
struct AcceptErrors {
    delay: Duration,
    log: RateLimited,
}

const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(5);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
const ACCEPT_LOG_EVERY: Duration = Duration::from_secs(10);

impl AcceptErrors {
    fn new() -> Self {
        AcceptErrors {
            delay: ACCEPT_BACKOFF_MIN,
            log: RateLimited::new(ACCEPT_LOG_EVERY),
        }
    }

    /// A failed accept: how long to wait before the next, and whether to
    /// log it (with how many failures went unlogged before it).
    fn failed(&mut self, now: tokio::time::Instant) -> (Duration, Option<u64>) {
        let wait = self.delay;
        self.delay = (self.delay * 2).min(ACCEPT_BACKOFF_MAX);
        (wait, self.log.tick(now))
    }

    /// A successful accept: the next failure waits the least again.
    fn succeeded(&mut self) {
        self.delay = ACCEPT_BACKOFF_MIN;
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

    /// Listens on `addr`; see [`listen`]. (A node binds, then serves:
    /// `Transport::bind`.)
    #[cfg_attr(feature = "internals", mesh_macros::expose)]
    #[cfg_attr(not(any(test, feature = "internals")), allow(dead_code))]
    pub(crate) async fn listen(
        &self,
        addr: &str,
        cfg: TransportConfig,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Listening, StartError> {
        listen(self.acceptor.clone(), addr, cfg, inbound).await
    }

    /// Binds `addr` without accepting yet; see [`Bound`].
    pub(crate) async fn bind(&self, addr: &str, node: &str) -> Result<Bound, StartError> {
        bind(self.acceptor.clone(), addr, node).await
    }

    /// Dials `target`; see [`dial`].
    #[cfg_attr(feature = "internals", mesh_macros::expose)]
    pub(crate) async fn dial(
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
#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) async fn listen(
    acceptor: Arc<dyn Acceptor>,
    addr: &str,
    cfg: TransportConfig,
    inbound: Arc<dyn Inbound>,
) -> Result<Listening, StartError> {
    Ok(bind(acceptor, addr, &cfg.identity.node)
        .await?
        .serve(cfg, inbound))
}

/// Binds `addr` through `acceptor` for node `node`, accepting nothing
/// until [`Bound::serve`]: a node binds every port before its first
/// other side effect, and serves once it is built.
async fn bind(acceptor: Arc<dyn Acceptor>, addr: &str, node: &str) -> Result<Bound, StartError> {
    let listener = acceptor
        .bind(addr, node)
        .await
        .map_err(|e| StartError::Listen {
            addr: addr.to_owned(),
            reason: e.to_string(),
        })?;
    Ok(Bound { acceptor, listener })
}

/// A bound listener not accepting yet. Dropping it unbinds.
pub(crate) struct Bound {
    acceptor: Arc<dyn Acceptor>,
    listener: Box<dyn Listener>,
}

impl std::fmt::Debug for Bound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bound")
            .field("addr", &self.listener.local_addr())
            .finish_non_exhaustive()
    }
}

impl Bound {
    /// The bound address.
    pub(crate) fn addr(&self) -> String {
        self.listener.local_addr()
    }

    /// Starts accepting: see [`listen`].
    pub(crate) fn serve(self, cfg: TransportConfig, inbound: Arc<dyn Inbound>) -> Listening {
        serve(self.acceptor, self.listener, cfg, inbound)
    }
}

fn serve(
    acceptor: Arc<dyn Acceptor>,
    mut listener: Box<dyn Listener>,
    cfg: TransportConfig,
    inbound: Arc<dyn Inbound>,
) -> Listening {
    let local = listener.local_addr();
    // The handshake tells dialers where this node listens: the bound
    // address, unless the caller advertises another.
    let mut cfg = cfg;
    if cfg.identity.addr.is_empty() {
        cfg.identity.addr = local.clone();
    }
    let (tx, accepted) = mpsc::unbounded_channel();
    let admission = Admission::new(cfg.max_handshakes, cfg.max_handshakes_per_ip);
    let foreign = Arc::new(std::sync::Mutex::new(RateLimited::new(ACCEPT_LOG_EVERY)));
    let task = tokio::spawn(async move {
        let mut errors = AcceptErrors::new();
        let mut turned_away = RateLimited::new(ACCEPT_LOG_EVERY);
        loop {
            let (stream, facts) = match listener.accept().await {
                Ok(x) => {
                    errors.succeeded();
                    x
                }
                Err(e) => {
                    // Out of descriptors, say: the next accept would fail
                    // at once too. Back off; log once in a while.
                    let (wait, log) = errors.failed(tokio::time::Instant::now());
                    if let Some(held) = log {
                        tracing::warn!(
                            "accept failed: {e} (backing off {wait:?}; {held} more failures since the last report)"
                        );
                    }
                    tokio::time::sleep(wait).await;
                    continue;
                }
            };
            let slot = match admission.admit(&facts.remote) {
                Ok(slot) => slot,
                Err(why) => {
                    if let Some(held) = turned_away.tick(tokio::time::Instant::now()) {
                        tracing::warn!(
                            from = %facts.remote,
                            "closed a connection before its handshake: {why} ({held} more since the last report)"
                        );
                    }
                    drop(stream);
                    continue;
                }
            };
            let (cfg, inbound, tx) = (cfg.clone(), inbound.clone(), tx.clone());
            let (acceptor, foreign) = (acceptor.clone(), foreign.clone());
            tokio::spawn(async move {
                let conn = accept_stream(&*acceptor, stream, facts, &cfg, inbound, &foreign).await;
                drop(slot);
                if let Some(conn) = conn {
                    // Nobody listens any more: do not leave it open unowned.
                    if let Err(unclaimed) = tx.send(conn) {
                        unclaimed.0.close();
                    }
                }
            });
        }
    });
    Listening {
        addr: local,
        accepted,
        task,
    }
}

/// Dials `target` through `connector` and runs the handshake, both within
/// the handshake timeout.
#[cfg_attr(feature = "internals", mesh_macros::expose)]
pub(crate) async fn dial(
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
                let peer = peer.with_transport(facts.remote, facts.identity);
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

/// Why an accepted stream was refused.
enum Refusal {
    /// Securing it (a TLS handshake) failed.
    Secure(std::io::Error),
    /// The cookie handshake failed.
    Handshake(crate::wire::HandshakeError),
}

impl Refusal {
    /// The peer speaks another protocol (TLS, HTTP, ...): a port scanner
    /// or a health check may do that often, so it is logged rate-limited.
    fn wrong_protocol(&self) -> bool {
        match self {
            Refusal::Secure(e) => e
                .get_ref()
                .is_some_and(|inner| inner.is::<handshake::ForeignPeer>()),
            Refusal::Handshake(e) => {
                matches!(e, crate::wire::HandshakeError::WrongProtocol { .. })
            }
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Secure(e) => write!(f, "securing the stream failed: {e}"),
            Refusal::Handshake(e) => write!(f, "{e}"),
        }
    }
}

/// Secures an accepted stream and runs the listener side of the handshake
/// (both within the handshake timeout), then starts the connection; logs
/// and drops the stream on refusal (a peer of another protocol at most
/// once per [`ACCEPT_LOG_EVERY`] per listener, through `foreign`).
async fn accept_stream(
    acceptor: &dyn Acceptor,
    stream: BoxStream,
    facts: ConnFacts,
    cfg: &TransportConfig,
    inbound: Arc<dyn Inbound>,
    foreign: &std::sync::Mutex<RateLimited>,
) -> Option<Connection> {
    let from = crate::wire::printable(&facts.remote, 100);
    let attempt = async {
        let (mut io, facts) = acceptor
            .secure(stream, facts)
            .await
            .map_err(Refusal::Secure)?;
        let (peer, leftover) = handshake::accept(&mut io, cfg)
            .await
            .map_err(Refusal::Handshake)?;
        let lifetime = facts.lifetime.clone();
        Ok::<_, Refusal>((
            io,
            leftover,
            peer.with_transport(facts.remote, facts.identity),
            lifetime,
        ))
    };
    match tokio::time::timeout(cfg.handshake_timeout, attempt).await {
        Ok(Ok((io, leftover, peer, lifetime))) => {
            tracing::debug!(peer = %peer.node, from, "connection accepted");
            Some(Connection::spawn(
                io, leftover, peer, lifetime, cfg, inbound,
            ))
        }
        Ok(Err(e)) if e.wrong_protocol() => {
            let log = foreign
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .tick(tokio::time::Instant::now());
            if let Some(held) = log {
                tracing::warn!(
                    from,
                    "refused a connection: {e} ({held} more such since the last report)"
                );
            }
            None
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
#[cfg_attr(feature = "internals", mesh_macros::expose)]
#[derive(Debug)]
pub(crate) struct Listening {
    // Read by the sidecar (it forwards here) and by tests.
    #[cfg_attr(
        not(any(test, feature = "internals", feature = "sidecar")),
        allow(dead_code)
    )]
    addr: String,
    accepted: mpsc::UnboundedReceiver<Connection>,
    task: JoinHandle<()>,
}

impl Listening {
    /// The address peers dial (for TCP, with the port bound).
    #[cfg_attr(
        not(any(test, feature = "internals", feature = "sidecar")),
        allow(dead_code)
    )]
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The next connection that completed its handshake.
    pub async fn accepted(&mut self) -> Option<Connection> {
        self.accepted.recv().await
    }
}

impl Drop for Listening {
    /// Stops accepting, and closes the connections that completed their
    /// handshake but were not taken yet: dropped unclosed, their tasks
    /// would go on answering pings for a node that is gone (a severed
    /// node would look alive to the peer that dialed it last). A
    /// handshake still running when this runs closes its connection
    /// itself (the send fails).
    fn drop(&mut self) {
        self.task.abort();
        self.accepted.close();
        while let Ok(conn) = self.accepted.try_recv() {
            conn.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A listener whose every accept fails as on a process out of
    /// descriptors (after `cap` failures it waits forever, so that a loop
    /// that does not back off fails the test instead of hanging it).
    struct Exhausted {
        calls: Arc<AtomicUsize>,
        cap: usize,
    }

    impl connect::Listener for Exhausted {
        fn local_addr(&self) -> String {
            "exhausted".into()
        }

        fn accept(&mut self) -> BoxFuture<'_, std::io::Result<(BoxStream, ConnFacts)>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let cap = self.cap;
            Box::pin(async move {
                if n >= cap {
                    std::future::pending::<()>().await;
                }
                Err(std::io::Error::from_raw_os_error(24)) // EMFILE
            })
        }
    }

    struct ExhaustedAcceptor(Arc<AtomicUsize>);

    impl Acceptor for ExhaustedAcceptor {
        fn bind<'a>(
            &'a self,
            _addr: &'a str,
            _local: &'a str,
        ) -> BoxFuture<'a, std::io::Result<Box<dyn connect::Listener>>> {
            let calls = self.0.clone();
            Box::pin(async move {
                Ok(Box::new(Exhausted { calls, cap: 10_000 }) as Box<dyn connect::Listener>)
            })
        }
    }

    struct Nobody;

    impl Inbound for Nobody {
        fn call(&self, _: &crate::wire::Peer, _: crate::wire::CallFrame, _: Responder) {}
        fn cast(&self, _: &crate::wire::Peer, _: crate::wire::Cast) {}
    }

    #[tokio::test(start_paused = true)]
    async fn an_accept_that_keeps_failing_backs_off_instead_of_spinning() {
        let calls = Arc::new(AtomicUsize::new(0));
        let identity = Identity {
            cluster: "c".into(),
            node: "n".into(),
            capabilities: vec![],
            addr: String::new(),
            incarnation: 1,
            actors: vec![],
        };
        let cfg = TransportConfig::new(identity, Cookie::new("k"));
        let _listening = listen(
            Arc::new(ExhaustedAcceptor(calls.clone())),
            "x",
            cfg,
            Arc::new(Nobody),
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_secs(10)).await;
        // 5 ms doubling to 1 s: 5+10+...+640 ms (8 tries, 1.3 s), then one
        // a second: about 17 tries in 10 s, not thousands.
        let n = calls.load(Ordering::SeqCst);
        assert!((10..=20).contains(&n), "{n} accepts in 10 s");
    }

    fn config(node: &str) -> TransportConfig {
        let identity = Identity {
            cluster: "c".into(),
            node: node.into(),
            capabilities: vec![],
            addr: String::new(),
            incarnation: 1,
            actors: vec![],
        };
        TransportConfig::new(identity, Cookie::new("k"))
    }

    /// A connection that completed its handshake but was not taken when
    /// the listener is dropped is closed: left open, it would answer the
    /// dialer's pings for a node that is gone (a severed node looked alive
    /// to the peer that redialed it first).
    #[tokio::test]
    async fn connections_not_taken_close_with_the_listener() {
        let t = Transport::memory(memory::MemoryNetwork::new());
        let listening = t.listen("l", config("l"), Arc::new(Nobody)).await.unwrap();
        let dialed = t
            .dial(&DialTarget::addr("l"), &config("d"), Arc::new(Nobody))
            .await
            .unwrap();
        // The listener's side completed its handshake (the dialer's did,
        // after it) and is queued, not taken.
        assert!(dialed.ping(Duration::from_secs(5)).await.is_ok());
        drop(listening);
        tokio::time::timeout(Duration::from_secs(5), dialed.closed())
            .await
            .expect("the dialer's connection closes with the listener");
    }

    #[test]
    fn accept_failures_are_logged_once_per_interval() {
        let mut errors = AcceptErrors::new();
        let start = tokio::time::Instant::now();
        let mut logged = Vec::new();
        let mut at = start;
        let mut waits = Vec::new();
        // 25 s of failures.
        while at < start + Duration::from_secs(25) {
            let (wait, log) = errors.failed(at);
            if let Some(held) = log {
                logged.push((at - start, held));
            }
            waits.push(wait);
            at += wait;
        }
        assert_eq!(waits[..3], [5, 10, 20].map(Duration::from_millis));
        assert_eq!(*waits.last().unwrap(), Duration::from_secs(1));
        // At 0 s, then the first failure 10 s or more after, and so on.
        assert_eq!(logged.len(), 3, "{logged:?}");
        assert_eq!(logged[0].1, 0);
        assert!(logged[1].0 >= Duration::from_secs(10));
        assert!(logged[1].1 > 5, "the held-back failures are counted");
        // A success resets the backoff.
        errors.succeeded();
        assert_eq!(errors.failed(at).0, Duration::from_millis(5));
    }

    #[test]
    fn handshakes_are_capped_in_all_and_per_source_address() {
        let a = Admission::new(3, 2);
        let x1 = a.admit("10.0.0.1:1000").unwrap();
        let _x2 = a.admit("10.0.0.1:1001").unwrap();
        assert!(a.admit("10.0.0.1:1002").is_err(), "per address");
        let _y = a.admit("10.0.0.2:1000").unwrap();
        assert!(a.admit("10.0.0.3:1000").is_err(), "in all");
        drop(x1);
        let _z = a.admit("10.0.0.1:1003").unwrap();
        // Loopback (a sidecar) and names (in memory) count in all only.
        let b = Admission::new(10, 1);
        let _l: Vec<_> = (0..5)
            .map(|i| b.admit(&format!("127.0.0.1:{i}")).unwrap())
            .collect();
        let _m = b.admit("mem-a").unwrap();
        let _n = b.admit("mem-a").unwrap();
        assert_eq!(lock_pending(&b.pending).total, 7);
    }
}
