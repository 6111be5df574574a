//! In-memory transport for fast, deterministic tests: named listeners in a
//! [`MemoryNetwork`], connected by `tokio::io::duplex` pipes. Every frame
//! still goes through the codec and the handshake, exactly as over TCP.
//!
//! Links between two nodes (by node id: the dialer's, and the listener's
//! as it bound) can be broken on purpose, as chitchat's test transport
//! can:
//! - [`MemoryNetwork::partition`]: existing links fail at once (a read or
//!   write error, as a reset TCP connection gives) and new dials between
//!   the two are refused, until [`MemoryNetwork::heal`];
//! - [`MemoryNetwork::stall`]: existing and new links stop moving bytes
//!   in both directions, without an error: a hung peer, which only a
//!   timeout detects. `heal` lets the bytes flow again.
//!
//! Streams are paused, not dropped, while stalled, so nothing written is
//! lost. The network holds no task: with a paused tokio clock the tests
//! are deterministic.

use std::collections::{HashMap, HashSet};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};

use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
use tokio::sync::mpsc;

use super::{Acceptor, BoxFuture, BoxStream, ConnFacts, Connector, DialTarget, Listener};

/// A set of named in-memory listeners and the links between them.
pub struct MemoryNetwork {
    /// Itself, for the listeners to unregister from.
    me: Weak<MemoryNetwork>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Listeners by address: the node that bound it, where streams go.
    listeners: HashMap<String, (String, mpsc::UnboundedSender<(BoxStream, ConnFacts)>)>,
    links: Vec<Weak<Link>>,
    partitioned: HashSet<(String, String)>,
    stalled: HashSet<(String, String)>,
}

/// An unordered pair of node ids.
fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

impl std::fmt::Debug for MemoryNetwork {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryNetwork").finish_non_exhaustive()
    }
}

impl MemoryNetwork {
    /// An empty network.
    pub fn new() -> Arc<Self> {
        Arc::new_cyclic(|me| MemoryNetwork {
            me: me.clone(),
            state: Mutex::new(State::default()),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The live links between nodes `a` and `b`.
    fn links(&self, a: &str, b: &str) -> Vec<Arc<Link>> {
        let key = pair(a, b);
        let mut state = self.state();
        state.links.retain(|l| l.strong_count() > 0);
        state
            .links
            .iter()
            .filter_map(Weak::upgrade)
            .filter(|l| l.pair == key)
            .collect()
    }

    /// How many links between `a` and `b` are open (not cut, not dropped).
    pub fn link_count(&self, a: &str, b: &str) -> usize {
        self.links(a, b)
            .iter()
            .filter(|l| !l.cut.load(Ordering::SeqCst))
            .count()
    }

    /// Cuts every link between `a` and `b` and refuses new ones until
    /// [`MemoryNetwork::heal`].
    pub fn partition(&self, a: &str, b: &str) {
        self.state().partitioned.insert(pair(a, b));
        for l in self.links(a, b) {
            l.cut.store(true, Ordering::SeqCst);
            l.wake();
        }
    }

    /// Stops every byte between `a` and `b`, on existing and new links,
    /// until [`MemoryNetwork::heal`]: `a` and `b` see each other hang.
    pub fn stall(&self, a: &str, b: &str) {
        self.state().stalled.insert(pair(a, b));
        for l in self.links(a, b) {
            l.stalled.store(true, Ordering::SeqCst);
        }
    }

    /// Ends a partition or a stall between `a` and `b`: stalled links move
    /// again; cut links stay cut (new ones may be dialed).
    pub fn heal(&self, a: &str, b: &str) {
        {
            let mut state = self.state();
            state.partitioned.remove(&pair(a, b));
            state.stalled.remove(&pair(a, b));
        }
        for l in self.links(a, b) {
            l.stalled.store(false, Ordering::SeqCst);
            l.wake();
        }
    }
}

impl Connector for MemoryNetwork {
    fn connect<'a>(
        &'a self,
        local: &'a str,
        target: &'a DialTarget,
    ) -> BoxFuture<'a, io::Result<(BoxStream, ConnFacts)>> {
        let result = (|| {
            let mut state = self.state();
            let Some((node, tx)) = state.listeners.get(&target.addr) else {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("nothing listens at {}", target.addr),
                ));
            };
            let key = pair(local, node);
            if state.partitioned.contains(&key) {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("{local} and {node} are partitioned"),
                ));
            }
            let link = Arc::new(Link {
                stalled: AtomicBool::new(state.stalled.contains(&key)),
                pair: key,
                cut: AtomicBool::new(false),
                wakers: Mutex::new(Default::default()),
            });
            let (ours, theirs) = tokio::io::duplex(256 << 10);
            let theirs = LinkStream {
                io: theirs,
                link: link.clone(),
                end: 1,
            };
            let facts = ConnFacts::unverified(format!("memory:{local}"));
            if tx.send((Box::new(theirs), facts)).is_err() {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionRefused,
                    format!("{} stopped listening", target.addr),
                ));
            }
            state.links.push(Arc::downgrade(&link));
            let ours = LinkStream {
                io: ours,
                link,
                end: 0,
            };
            Ok((
                Box::new(ours) as BoxStream,
                ConnFacts::unverified(format!("memory:{}", target.addr)),
            ))
        })();
        Box::pin(std::future::ready(result))
    }
}

impl Acceptor for MemoryNetwork {
    fn bind<'a>(
        &'a self,
        addr: &'a str,
        local: &'a str,
    ) -> BoxFuture<'a, io::Result<Box<dyn Listener>>> {
        let (tx, rx) = mpsc::unbounded_channel();
        let result = {
            let mut state = self.state();
            if state.listeners.contains_key(addr) {
                Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!("{addr} is taken"),
                ))
            } else {
                state
                    .listeners
                    .insert(addr.to_owned(), (local.to_owned(), tx));
                Ok(Box::new(MemoryListener {
                    addr: addr.to_owned(),
                    rx,
                    _unlisten: Unlisten(self.me.clone(), addr.to_owned()),
                }) as Box<dyn Listener>)
            }
        };
        Box::pin(std::future::ready(result))
    }
}

struct MemoryListener {
    addr: String,
    rx: mpsc::UnboundedReceiver<(BoxStream, ConnFacts)>,
    _unlisten: Unlisten,
}

impl Listener for MemoryListener {
    fn local_addr(&self) -> String {
        self.addr.clone()
    }

    fn accept(&mut self) -> BoxFuture<'_, io::Result<(BoxStream, ConnFacts)>> {
        Box::pin(async move {
            match self.rx.recv().await {
                Some(s) => Ok(s),
                // The network dropped our entry: accept nothing more.
                None => std::future::pending().await,
            }
        })
    }
}

/// Removes a listener's entry when it is dropped.
struct Unlisten(Weak<MemoryNetwork>, String);

impl Drop for Unlisten {
    fn drop(&mut self) {
        if let Some(net) = self.0.upgrade() {
            net.state().listeners.remove(&self.1);
        }
    }
}

/// One pipe between two nodes, with its switches.
struct Link {
    pair: (String, String),
    cut: AtomicBool,
    stalled: AtomicBool,
    /// The last waker of each end and direction: [end0 read, end0 write,
    /// end1 read, end1 write].
    wakers: Mutex<[Option<Waker>; 4]>,
}

impl Link {
    fn park(&self, slot: usize, cx: &Context<'_>) {
        let mut w = self.wakers.lock().unwrap_or_else(PoisonError::into_inner);
        if !w[slot].as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            w[slot] = Some(cx.waker().clone());
        }
    }

    fn wake(&self) {
        let wakers: Vec<Waker> = self
            .wakers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// `Some` when the stream must not move now: an error if cut, pending
    /// if stalled.
    fn gate(&self, slot: usize, cx: &Context<'_>) -> Option<Poll<io::Error>> {
        // Parked first, so a cut or a heal between the check and the
        // return still wakes this poll.
        self.park(slot, cx);
        if self.cut.load(Ordering::SeqCst) {
            return Some(Poll::Ready(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "link cut (partition)",
            )));
        }
        if self.stalled.load(Ordering::SeqCst) {
            return Some(Poll::Pending);
        }
        None
    }
}

struct LinkStream {
    io: DuplexStream,
    link: Arc<Link>,
    end: usize,
}

impl AsyncRead for LinkStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.link.gate(self.end * 2, cx) {
            Some(Poll::Ready(e)) => Poll::Ready(Err(e)),
            Some(Poll::Pending) => Poll::Pending,
            None => Pin::new(&mut self.io).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for LinkStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.link.gate(self.end * 2 + 1, cx) {
            Some(Poll::Ready(e)) => Poll::Ready(Err(e)),
            Some(Poll::Pending) => Poll::Pending,
            None => Pin::new(&mut self.io).poll_write(cx, buf),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.link.gate(self.end * 2 + 1, cx) {
            Some(Poll::Ready(e)) => Poll::Ready(Err(e)),
            Some(Poll::Pending) => Poll::Pending,
            None => Pin::new(&mut self.io).poll_flush(cx),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
