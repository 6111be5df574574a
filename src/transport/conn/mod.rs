//! One established connection: a writer task batching frames out
//! ([`writer`]), a reader task dispatching frames in ([`reader`]), the table
//! of our calls waiting for replies ([`pending`], sans-IO), and the answers
//! to the peer's calls ([`responder`]).
//!
//! Contracts:
//! - **Order.** Frames keep their order on a connection, both ways; the
//!   reader hands the peer's requests to the node's [`Inbound`] in arrival
//!   order.
//! - **Close.** When the connection closes (the peer goes away, a
//!   malformed frame, [`Connection::close`]), every call waiting on it fails
//!   at once: one the peer never saw comes back unsent ([`Routed::Unsent`],
//!   `NodeDown` through the public API), one that may have gone out fails
//!   with `NodeDown` (it may have run).
//! - **Timeouts.** Calls arm no timer of their own: one deadline task per
//!   connection answers `Timeout`, armed for the earliest deadline.
//! - **Cancel.** A call whose future is dropped before its answer leaves
//!   the table and sends the peer a `Cancel`, so the peer skips the work if
//!   it has not started it (and writes no answer).
//! - **Drop.** A [`Responder`] dropped unanswered answers `ShuttingDown`;
//!   an [`Ack`] dropped unsent acknowledges.
//! - **Seal.** [`Connection::seal`] stops new calls at once (they come back
//!   unsent). A call already past the check still goes out; what must
//!   follow it waits for it by an awaited notification, never by blocking
//!   the thread: [`Connection::settled`], and the [`Ack`] of a peer's
//!   `Retire`.

mod pending;
mod reader;
mod responder;
mod writer;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{oneshot, watch, Notify};
use tokio::time::Instant;

use self::pending::{Pending, Sent};
use self::responder::InboundCalls;
pub use self::responder::{Ack, Responder};
use self::writer::{Outbox, WriteSide};
use super::{Lifetime, TransportConfig};
use crate::wire::{self, CallFrame, Cast, Kind, MembershipFrame, Peer};
use crate::Error;

/// What a node does with requests that arrive on its connections.
///
/// `call` and `cast` are invoked by the connection's reader, in arrival
/// order, and must not block: work they start before returning keeps that
/// order. A call is answered through its [`Responder`], from wherever the
/// work ends (an activation answers straight into the connection).
pub trait Inbound: Send + Sync + 'static {
    /// Runs an inbound call; `reply` sends its `Reply` or `Error` frame.
    fn call(&self, from: &Peer, call: CallFrame, reply: Responder);
    /// Runs an inbound cast.
    fn cast(&self, from: &Peer, cast: Cast);
    /// Takes a peer's membership view.
    fn membership(&self, from: &Peer, membership: MembershipFrame) {
        let _ = (from, membership);
    }
    /// The peer is leaving: route nothing new to it, then `ack` (which
    /// answers the peer; dropped, it answers too). The default acks at once.
    /// The connection the `Leave` came on is sealed before this runs, so
    /// the ack goes out after every call sent on it before, and a call
    /// sent on it after comes back unsent (the caller routes it elsewhere).
    fn leave(&self, from: &Peer, ack: Ack) {
        let _ = from;
        ack.send();
    }
    /// The peer retires `conn` (a `Retire` frame): send no new routed
    /// call on it (a node query may still go, on the connection the asker
    /// found), then `ack` (dropped, it answers too). The peer answers what is
    /// in flight, then closes. The default seals it and acks (the ack goes
    /// out after every call that passed the seal check: [`Connection::seal`]).
    fn retire(&self, conn: Connection, ack: Ack) {
        conn.seal();
        ack.send();
    }
}

/// How a request failed: never sent (with what the caller gets back to
/// route elsewhere: the call's payload, or nothing for a request that is
/// not a call), or failed.
#[derive(Debug)]
pub(crate) enum Routed<U = Vec<u8>> {
    /// The connection closed (or was sealed) before the request was handed
    /// to the socket: the peer never saw it, so it may safely go elsewhere.
    Unsent(U),
    /// The peer's answer, a timeout, or the connection closing after the
    /// request may have gone out: this is what the caller gets.
    Failed(Error),
}

impl<U> From<Error> for Routed<U> {
    fn from(e: Error) -> Self {
        Routed::Failed(e)
    }
}

/// How a waiting request is answered.
type Waiter = oneshot::Sender<Result<Bytes, Routed<()>>>;

/// Where a connection is in its retirement (`Shared::retiring`).
const LIVE: u8 = 0;
/// This node retires it: the peer is asked to move its calls.
const RETIRING: u8 = 1;
/// The peer retires it: this node moves its calls to a fresh connection.
const RETIRED_BY_PEER: u8 = 2;

struct Shared {
    peer: Peer,
    pending: Mutex<Pending<Waiter>>,
    /// Woken when a sealed table empties or the connection closes
    /// (`Connection::settled`).
    idle: Notify,
    /// Wakes the deadline task for a deadline earlier than it is armed for.
    earlier: Notify,
    next: AtomicU64,
    /// Frames encoded and not yet written ([`writer`]).
    outbox: Mutex<Outbox>,
    /// Wakes the writer task for an outbox that was empty.
    wake: Notify,
    /// The socket's write side; the writer task takes it out while it
    /// awaits a write, a direct write borrows it under the lock.
    wr: Mutex<Option<WriteSide>>,
    codec: wire::FrameCodec,
    /// The peer's calls in flight here.
    inbound: InboundCalls,
    closed: watch::Sender<bool>,
    /// `closed`'s value, read without the watch's lock on every call
    /// (set before the watch is, so a waiter woken by the watch sees it).
    is_closed: AtomicBool,
    /// When the handshake completed (wall clock, for operators).
    #[cfg_attr(not(feature = "admin"), allow(dead_code))] // read by the admin views only
    opened_at: std::time::SystemTime,
    /// How this node came to hold the connection, set once by the
    /// cluster's owner task (for operators).
    origin: std::sync::OnceLock<Origin>,
    /// [`LIVE`], [`RETIRING`] or [`RETIRED_BY_PEER`].
    retiring: AtomicU8,
    /// No new call goes out (`Connection::seal`).
    sealed: AtomicBool,
    /// Calls between their `sealed` check and their enqueue ([`Sending`]).
    sending: AtomicUsize,
    /// Woken when `sending` drops to zero.
    window: Notify,
    /// When the handshake completed.
    opened: Instant,
    lifetime: Option<Lifetime>,
}

/// Counts a call between its `sealed` check and its enqueue; the last one
/// out wakes what waits for the window to close ([`Shared::calls_queued`]).
struct Sending<'a>(&'a Shared);

impl<'a> Sending<'a> {
    fn enter(shared: &'a Shared) -> Sending<'a> {
        shared.sending.fetch_add(1, Ordering::SeqCst);
        Sending(shared)
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        if self.0.sending.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.window.notify_waiters();
        }
    }
}

/// How a node came to hold a connection to a peer: what the admin
/// endpoint shows as "discovered by".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// Dialed at a configured seed address.
    Seed,
    /// Dialed at an address another member gossiped.
    Gossip,
    /// Dialed at an address the authoritative discovery (Consul) reported.
    Discovery,
    /// The peer dialed this node.
    Inbound,
}

impl Origin {
    /// The lower-case name the admin endpoint prints.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))] // read by the admin views only
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Origin::Seed => "seed",
            Origin::Gossip => "gossip",
            Origin::Discovery => "discovery",
            Origin::Inbound => "inbound",
        }
    }
}

impl Shared {
    /// Whether the connection has closed (one atomic load).
    fn is_closed(&self) -> bool {
        self.is_closed.load(Ordering::SeqCst)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending<Waiter>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes out the waiter of `corr` (to answer it, or because it gave
    /// up); wakes `Connection::settled` if it was the last one.
    fn take_waiter(&self, corr: u64) -> Option<Waiter> {
        let (waiter, drained) = {
            let mut p = self.pending();
            (p.remove(corr), p.is_drained())
        };
        if drained {
            self.idle.notify_waiters();
        }
        waiter
    }

    /// Marks the connection closed and fails every waiting call at once.
    ///
    /// A request never handed to the socket fails as [`Routed::Unsent`]
    /// (the caller may route it elsewhere); one that may have gone out
    /// fails as `NodeDown` (it may have run).
    fn close(&self) {
        self.is_closed.store(true, Ordering::SeqCst);
        self.closed.send_replace(true);
        let failed = self.pending().close();
        self.idle.notify_waiters();
        for (w, sent) in failed {
            let _ = w.send(Err(match sent {
                Sent::Never => Routed::Unsent(()),
                Sent::Maybe => Routed::Failed(Error::node_down(self.peer.node.clone())),
            }));
        }
    }

    /// Resolves once no call is between its `sealed` check and its
    /// enqueue: after `seal`, every call that passed the check is queued.
    /// The window holds no await, so this is short; it is awaited, not
    /// spun on.
    async fn calls_queued(&self) {
        loop {
            let woken = self.window.notified();
            tokio::pin!(woken);
            // Registered before the check: the last one out is not missed.
            woken.as_mut().enable();
            if self.sending.load(Ordering::SeqCst) == 0 {
                return;
            }
            woken.await;
        }
    }

    /// Runs `then` once every call that passed the `sealed` check is
    /// queued: at once unless the connection is sealed with calls still in
    /// that window, else on a task that awaits them (outside a runtime, at
    /// once: nothing is running to send them anyway).
    fn after_sealed_calls(self: &Arc<Self>, then: impl FnOnce(&Shared) + Send + 'static) {
        // Both `SeqCst`, as the call's side (`Sending::enter`, then the
        // `sealed` load): a call that missed the seal is counted here.
        if !self.sealed.load(Ordering::SeqCst) || self.sending.load(Ordering::SeqCst) == 0 {
            return then(self);
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let shared = self.clone();
                rt.spawn(async move {
                    shared.calls_queued().await;
                    then(&shared);
                });
            }
            Err(_) => then(self),
        }
    }
}

/// A request handed to its connection, waiting for the frame answering
/// it (a future, with nothing boxed: a remote call's whole wait).
///
/// Dropped before its answer (the caller gave up), it forgets the request
/// and, for a `Call`, tells the peer (`Cancel`) so it skips the work if it
/// has not started it. The connection closing answers it (`Routed`).
#[must_use = "a request is abandoned when its Waiting is dropped"]
pub(crate) struct Waiting {
    shared: Arc<Shared>,
    corr: u64,
    cancel: bool,
    rx: oneshot::Receiver<Result<Bytes, Routed<()>>>,
    answered: bool,
}

impl std::fmt::Debug for Waiting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiting")
            .field("peer", &self.shared.peer.node)
            .field("corr", &self.corr)
            .finish_non_exhaustive()
    }
}

impl Future for Waiting {
    type Output = Result<Bytes, Routed<()>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let result = std::task::ready!(Pin::new(&mut self.rx).poll(cx));
        self.answered = true;
        // The waiter went without an answer: the connection is gone.
        Poll::Ready(result.unwrap_or_else(|_| {
            Err(Routed::Failed(Error::node_down(
                self.shared.peer.node.clone(),
            )))
        }))
    }
}

impl Waiting {
    /// The connection the request went out on.
    pub(crate) fn connection(&self) -> Connection {
        Connection {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let waiting = self.shared.take_waiter(self.corr).is_some();
        if waiting && self.cancel && !self.shared.is_closed() {
            // A cancel too big to encode cannot be: it is one byte.
            let _ = self
                .shared
                .enqueue(Kind::Cancel, self.corr, &EMPTY_BODY, false);
        }
    }
}

/// `{}` in MessagePack: the body of frames that carry nothing.
const EMPTY_BODY: [u8; 1] = [0x80];

/// Writes `body` as a frame's body.
fn put(body: &[u8]) -> impl FnOnce(&mut BytesMut) -> Result<(), Error> + '_ {
    move |dst| {
        bytes::BufMut::put_slice(dst, body);
        Ok(())
    }
}

/// A handle on an established connection. Cheap to clone; the connection
/// closes when the peer goes away, on a malformed frame, or on `close()`.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("peer", &self.shared.peer.node)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl Connection {
    /// Starts the reader and writer of a stream whose handshake is done.
    /// `leftover` holds bytes read past the handshake.
    pub(super) fn spawn<S>(
        io: S,
        leftover: BytesMut,
        peer: Peer,
        lifetime: Option<Lifetime>,
        cfg: &TransportConfig,
        inbound: Arc<dyn Inbound>,
    ) -> Connection
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (rd, wr) = tokio::io::split(io);
        let shared = Arc::new(Shared {
            peer,
            pending: Mutex::new(Pending::default()),
            idle: Notify::new(),
            earlier: Notify::new(),
            next: AtomicU64::new(1),
            outbox: Mutex::new(Outbox::default()),
            wake: Notify::new(),
            wr: Mutex::new(Some(Box::pin(wr))),
            codec: cfg.codec,
            inbound: InboundCalls::default(),
            closed: watch::channel(false).0,
            is_closed: AtomicBool::new(false),
            opened_at: std::time::SystemTime::now(),
            origin: std::sync::OnceLock::new(),
            retiring: AtomicU8::new(LIVE),
            sealed: AtomicBool::new(false),
            sending: AtomicUsize::new(0),
            window: Notify::new(),
            opened: Instant::now(),
            lifetime,
        });
        let conn = Connection { shared };
        tokio::spawn(writer::write_loop(conn.shared.clone()));
        tokio::spawn(reader::read_loop(
            rd,
            leftover,
            cfg.codec,
            conn.shared.clone(),
            inbound,
        ));
        tokio::spawn(expire_loop(conn.shared.clone()));
        conn
    }

    /// Whether `self` and `other` are the same connection.
    pub fn same(&self, other: &Connection) -> bool {
        Arc::ptr_eq(&self.shared, &other.shared)
    }

    /// Who is at the other end.
    pub fn peer(&self) -> &Peer {
        &self.shared.peer
    }

    /// When its handshake completed.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))] // read by the admin views only
    pub(crate) fn opened_at(&self) -> std::time::SystemTime {
        self.shared.opened_at
    }

    /// How this node came to hold it; `None` until the owner task saw it.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))] // read by the admin views only
    pub(crate) fn origin(&self) -> Option<Origin> {
        self.shared.origin.get().copied()
    }

    /// Records how this node came to hold it (the first call wins).
    pub(crate) fn set_origin(&self, origin: Origin) {
        let _ = self.shared.origin.set(origin);
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// Resolves once the connection has closed.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|closed| *closed).await;
    }

    /// Closes the connection: waiting calls fail with `NodeDown`.
    pub fn close(&self) {
        self.shared.close();
    }

    /// Closes the connection once every frame queued so far is written
    /// (answers included): what [`Connection::answered`] saw answered
    /// reaches the peer. Calls still waiting then fail as on `close`.
    pub fn close_after_queued(&self) {
        if self.is_closed() {
            return;
        }
        self.shared.close_after_queued();
    }

    /// Sends a frame that is not a request of ours (no waiter).
    fn send(&self, kind: Kind, corr: u64, body: &[u8]) -> Result<(), Error> {
        if self.is_closed() {
            return Err(self.down());
        }
        self.shared.enqueue(kind, corr, body, false)
    }

    fn down(&self) -> Error {
        Error::node_down(self.shared.peer.node.clone())
    }

    /// Sends a request of `kind` and waits for the frame answering it, at
    /// most until `deadline`: the connection's deadline task answers
    /// `Timeout` (one timer per connection, not one per call).
    ///
    /// `body` encodes the frame's body straight into the outbox; its error
    /// (a frame too big) fails the request, never sent.
    async fn request(
        &self,
        kind: Kind,
        deadline: Instant,
        body: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<Bytes, Routed<()>> {
        self.clone()
            .start(kind, deadline, body, kind == Kind::Call)?
            .await
    }

    /// Hands a request to the connection now (before this returns: in
    /// order with whatever this task sends next) and gives back its wait.
    /// See [`Connection::request`].
    /// `sealable`: a routed call, which a sealed connection refuses.
    fn start(
        self,
        kind: Kind,
        deadline: Instant,
        body: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
        sealable: bool,
    ) -> Result<Waiting, Routed<()>> {
        // A sealed connection takes no new call: it comes back unsent (the
        // caller routes it to a fresh connection). What must follow the
        // calls past this check waits for them (`Shared::calls_queued`).
        let sending = if sealable {
            let sending = Sending::enter(&self.shared);
            if self.shared.sealed.load(Ordering::SeqCst) {
                return Err(Routed::Unsent(()));
            }
            Some(sending)
        } else {
            None
        };
        let corr = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let inserted = self.shared.pending().insert(corr, tx, deadline);
        if inserted.earlier {
            self.shared.earlier.notify_one();
        }
        // Closed between the check and the insert: nobody would fail us.
        if self.is_closed() {
            self.shared.take_waiter(corr);
            return Err(Routed::Unsent(()));
        }
        // Closed from here on, `close` fails the waiter.
        if let Err(e) = self.shared.enqueue_with(kind, corr, inserted.alone, body) {
            self.shared.take_waiter(corr);
            return Err(Routed::Failed(e));
        }
        drop(sending);
        Ok(Waiting {
            shared: self.shared,
            corr,
            cancel: kind == Kind::Call,
            rx,
            answered: false,
        })
    }

    /// A request's outcome for the public API: never sent is `NodeDown`.
    fn public(&self, r: Result<Bytes, Routed<()>>) -> Result<Bytes, Error> {
        r.map_err(|f| match f {
            Routed::Failed(e) => e,
            Routed::Unsent(()) => self.down(),
        })
    }

    /// Calls handler `tag` of actor `id` on the peer; returns the encoded
    /// reply. Fails with `Timeout` after `timeout`, or `NodeDown` as soon as
    /// the connection drops.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub async fn call(
        &self,
        tag: u64,
        id: &str,
        payload: Vec<u8>,
        timeout: Duration,
        hops: u8,
    ) -> Result<Bytes, Error> {
        match self
            .call_routed(tag, id, payload, Instant::now() + timeout, hops, None, None)
            .await
        {
            Ok(b) => Ok(b),
            Err(Routed::Failed(e)) => Err(e),
            Err(Routed::Unsent(_)) => Err(self.down()),
        }
    }

    /// [`Connection::call`] until `deadline`, but a call the peer never saw
    /// comes back as `Err(Unsent(payload))`, so the caller can route it
    /// elsewhere. It carries the caller's trace context and call chain to
    /// peers that take them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call_routed(
        &self,
        tag: u64,
        id: &str,
        payload: Vec<u8>,
        deadline: Instant,
        hops: u8,
        trace: Option<&wire::TraceContext>,
        chain: Option<&[(String, String)]>,
    ) -> Result<Bytes, Routed> {
        let timeout = deadline.saturating_duration_since(Instant::now());
        let sent =
            self.clone()
                .start_call(tag, id, &payload, (deadline, timeout), hops, trace, chain);
        let result = match sent {
            Ok(waiting) => waiting.await,
            Err(e) => Err(e),
        };
        result.map_err(|e| match e {
            Routed::Failed(e) => Routed::Failed(e),
            Routed::Unsent(()) => Routed::Unsent(payload),
        })
    }

    /// Sends a call now (in order with what this task sends next) and gives
    /// back its wait: [`Connection::call_routed`] without the payload
    /// handed over (the caller keeps it, to route it elsewhere if it comes
    /// back unsent). The frame is encoded from the borrowed id, payload and
    /// chain straight into the connection's outbox. `until` is the call's
    /// deadline and the time left before it (the caller read the clock).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn start_call(
        self,
        tag: u64,
        id: &str,
        payload: &[u8],
        until: (Instant, Duration),
        hops: u8,
        trace: Option<&wire::TraceContext>,
        chain: Option<&[(String, String)]>,
    ) -> Result<Waiting, Routed<()>> {
        let (deadline, left) = until;
        let call = wire::CallFrameRef {
            tag,
            id,
            timeout_ms: left.as_millis().min(u64::MAX as u128) as u64,
            hops,
            payload,
            // An older peer would refuse the body with it.
            trace: trace.filter(|_| self.shared.peer.trace_context),
            chain: chain.filter(|_| self.shared.peer.call_chain),
        };
        self.start(
            Kind::Call,
            deadline,
            |dst| wire::encode_envelope_into(&call, dst),
            true,
        )
    }

    /// Asks the peer itself a node query (a `Call` of tag
    /// [`wire::INSPECT_TAG`]: see `admin::cluster`) and waits at most
    /// `timeout` for its answer. Sent on a sealed connection too: the seal
    /// keeps calls routed by the ring from a peer that left, and a
    /// question to that peer about itself is not routed (the cluster view
    /// asks draining peers). On a connection the peer retires it may fail
    /// (`NodeDown`) once the peer closed it; the asker says so and asks
    /// again at its next view, on the connection then carrying calls.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) async fn query(&self, body: &[u8], timeout: Duration) -> Result<Bytes, Error> {
        let call = wire::CallFrameRef {
            tag: wire::INSPECT_TAG,
            id: "",
            timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
            hops: 0,
            payload: body,
            trace: None,
            chain: None,
        };
        let started = self.clone().start(
            Kind::Call,
            Instant::now() + timeout,
            |dst| wire::encode_envelope_into(&call, dst),
            false,
        );
        let answered = match started {
            Ok(waiting) => waiting.await,
            Err(e) => Err(e),
        };
        self.public(answered)
    }

    /// Casts to handler `tag` of actor `id` on the peer: at most once.
    #[cfg_attr(not(feature = "internals"), allow(dead_code))]
    pub fn cast(&self, tag: u64, id: &str, payload: Vec<u8>, hops: u8) -> Result<(), Error> {
        self.cast_traced(tag, id, payload, hops, None)
    }

    /// [`Connection::cast`] with the caller's trace context.
    pub(crate) fn cast_traced(
        &self,
        tag: u64,
        id: &str,
        payload: Vec<u8>,
        hops: u8,
        trace: Option<wire::TraceContext>,
    ) -> Result<(), Error> {
        let cast = Cast {
            tag,
            id: id.to_owned(),
            hops,
            payload: ByteBuf::from(payload),
            // An older peer would refuse the body with it.
            trace: trace.filter(|_| self.shared.peer.trace_context),
        };
        let body = wire::encode_envelope(&cast, cast.payload.len() + cast.id.len())?;
        self.send(Kind::Cast, 0, &body)
    }

    /// Round trip of a `Ping`.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, Error> {
        let started = Instant::now();
        let r = self
            .request(Kind::Ping, started + timeout, put(&EMPTY_BODY)) // body `{}`: an empty map
            .await;
        self.public(r)?;
        Ok(started.elapsed())
    }

    /// Tells the peer this node is leaving and waits (at most `timeout`)
    /// for its acknowledgement: once it arrives, the peer routes nothing
    /// new here, and every call it sent on this connection before has
    /// arrived (frames keep their order on a connection).
    pub async fn leave(&self, timeout: Duration) -> Result<(), Error> {
        let r = self
            .request(Kind::Leave, Instant::now() + timeout, put(&EMPTY_BODY))
            .await;
        self.public(r).map(drop)
    }

    /// Asks the peer to retire this connection and waits (at most
    /// `timeout`) for its acknowledgement: once it arrives, the peer sends
    /// no new call on it, and every call it sent before has arrived.
    /// From now on this node's routing prefers its other connections.
    pub async fn retire(&self, timeout: Duration) -> Result<(), Error> {
        let _ = self.shared.retiring.compare_exchange(
            LIVE,
            RETIRING,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let r = self
            .request(Kind::Retire, Instant::now() + timeout, put(&EMPTY_BODY))
            .await;
        self.public(r).map(drop)
    }

    /// Whether this connection is being retired (by either side): routing
    /// prefers another one.
    pub fn is_retiring(&self) -> bool {
        self.shared.retiring.load(Ordering::Acquire) != LIVE
    }

    /// Whether the peer retires it (so this side should dial a fresh one).
    pub fn is_retired_by_peer(&self) -> bool {
        self.shared.retiring.load(Ordering::Acquire) == RETIRED_BY_PEER
    }

    /// Sends no new call on this connection from now on: a call made on
    /// it comes back as never sent (routed elsewhere by the node), or
    /// `NodeDown` through [`Connection::call`]. Pings, casts, answers and
    /// node queries (a question to the peer about
    /// itself, never routed) still go out.
    ///
    /// Returns at once, without waiting for the calls already past the
    /// check (a few instructions without an await from their enqueue):
    /// what must come after them awaits them instead. [`Connection::settled`]
    /// counts them, and the [`Ack`] of a peer's `Retire` sent after `seal`
    /// goes out after them.
    pub fn seal(&self) {
        self.shared.sealed.store(true, Ordering::SeqCst);
        self.shared.pending().drain();
    }

    /// Whether [`Connection::seal`] was called.
    pub fn is_sealed(&self) -> bool {
        self.shared.sealed.load(Ordering::Acquire)
    }

    /// Resolves once no request of ours waits for an answer on this
    /// connection (or it closed), counting the calls that passed the seal
    /// check. Meant after [`Connection::seal`].
    pub async fn settled(&self) {
        self.shared.calls_queued().await;
        loop {
            let woken = self.shared.idle.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.shared.pending().is_empty() || self.is_closed() {
                return;
            }
            let mut closed = self.shared.closed.subscribe();
            tokio::select! {
                _ = woken => {}
                _ = closed.wait_for(|c| *c) => return,
            }
        }
    }

    /// How long ago the handshake completed.
    pub fn age(&self) -> Duration {
        self.shared.opened.elapsed()
    }

    /// What the transport asks of this connection while it is open.
    pub fn lifetime(&self) -> Option<&Lifetime> {
        self.shared.lifetime.as_ref()
    }

    /// How many calls the peer sent on this connection are not answered.
    pub fn inbound_in_flight(&self) -> usize {
        self.shared.inbound.in_flight()
    }

    /// Resolves once every call the peer sent on this connection has been
    /// answered (or the connection closed).
    pub async fn answered(&self) {
        loop {
            let woken = self.shared.inbound.answered();
            if self.inbound_in_flight() == 0 || self.is_closed() {
                return;
            }
            let mut closed = self.shared.closed.subscribe();
            tokio::select! {
                _ = woken => {}
                _ = closed.wait_for(|c| *c) => return,
            }
        }
    }

    /// Sends our membership view.
    pub fn send_membership(&self, m: &MembershipFrame) -> Result<(), Error> {
        self.send(Kind::Membership, 0, &wire::encode_envelope(m, 256)?)
    }
}

/// Answers `Timeout` to the calls whose deadline passed: one timer per
/// connection, armed for the earliest deadline and woken early only for an
/// earlier one. Ends with the connection.
async fn expire_loop(shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    loop {
        if shared.is_closed() {
            return;
        }
        let (expired, next, drained) = {
            let mut p = shared.pending();
            let (expired, next) = p.expire(Instant::now());
            (expired, next, p.is_drained())
        };
        if drained {
            shared.idle.notify_waiters();
        }
        for w in expired {
            let _ = w.send(Err(Error::timeout().into()));
        }
        let earlier = shared.earlier.notified();
        let sleep = async {
            match next {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = sleep => {}
            _ = earlier => {}
            _ = closed.wait_for(|c| *c) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;
    use crate::transport::memory::MemoryNetwork;
    use crate::transport::{DialTarget, Transport};
    use crate::wire::{Cookie, Identity};

    struct Hang;

    impl Inbound for Hang {
        fn call(&self, _: &Peer, _: CallFrame, reply: Responder) {
            tokio::spawn(async move {
                let _held = reply;
                std::future::pending::<()>().await
            });
        }
        fn cast(&self, _: &Peer, _: Cast) {}
    }

    fn cfg(node: &str) -> TransportConfig {
        TransportConfig::new(
            Identity {
                cluster: "c".into(),
                node: node.into(),
                capabilities: vec![],
                addr: String::new(),
                incarnation: 1,
                actors: Vec::new(),
            },
            Cookie::new("k"),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_retired_connection_takes_no_new_call_from_the_peer_once_it_acked() {
        let (_net, mut l, conn) = pair().await;
        let accepted = l.accepted().await.unwrap();
        assert!(!accepted.is_retiring() && !conn.is_retiring());
        // The listener side retires it; the dialer (default `Inbound::retire`)
        // seals its side and acknowledges.
        accepted.retire(Duration::from_secs(5)).await.unwrap();
        assert!(accepted.is_retiring() && !accepted.is_retired_by_peer());
        assert!(conn.is_retired_by_peer() && conn.is_sealed());
        match conn
            .call_routed(
                1,
                "x",
                b"p".to_vec(),
                Instant::now() + Duration::from_secs(5),
                0,
                None,
                None,
            )
            .await
        {
            Err(Routed::Unsent(p)) => assert_eq!(p, b"p"),
            other => panic!("expected Unsent, got {other:?}"),
        }
        // Pings still go out on it, and it stays open until closed.
        conn.ping(Duration::from_secs(5)).await.unwrap();
        accepted.seal();
        accepted.settled().await;
        accepted.answered().await;
        accepted.close_after_queued();
        conn.closed().await;
    }

    /// A peer that leaves gets its ack only after every call sent to it
    /// on the connection, and nothing new follows: the connection is
    /// sealed before the ack (before, a call that read the routing before
    /// the leave could follow the ack, arrive after the leaving node's
    /// drain, and fail with `NodeDown` when it closed).
    #[tokio::test(start_paused = true)]
    async fn a_leave_seals_the_connection_before_its_ack() {
        let (_net, mut l, conn) = pair().await;
        let accepted = l.accepted().await.unwrap();
        // A call in flight from the dialer before the listener leaves.
        let before = {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.call_routed(
                    1,
                    "x",
                    b"p".to_vec(),
                    Instant::now() + Duration::from_secs(5),
                    0,
                    None,
                    None,
                )
                .await
            })
        };
        tokio::task::yield_now().await;
        accepted.leave(Duration::from_secs(5)).await.unwrap();
        // The dialer's side (default `Inbound::leave`) sealed before it
        // acked: the call sent before has arrived (the listener holds it),
        // and a new one comes back unsent.
        assert!(conn.is_sealed());
        assert_eq!(accepted.inbound_in_flight(), 1);
        match conn
            .call_routed(
                1,
                "y",
                b"q".to_vec(),
                Instant::now() + Duration::from_secs(5),
                0,
                None,
                None,
            )
            .await
        {
            Err(Routed::Unsent(p)) => assert_eq!(p, b"q"),
            other => panic!("expected Unsent, got {other:?}"),
        }
        before.abort();
    }

    async fn pair() -> (Arc<MemoryNetwork>, super::super::Listening, Connection) {
        let net = MemoryNetwork::new();
        let t = Transport::memory(net.clone());
        let l = t.listen("mem-b", cfg("b"), Arc::new(Hang)).await.unwrap();
        let conn = t
            .dial(&DialTarget::addr("mem-b"), &cfg("a"), Arc::new(Hang))
            .await
            .unwrap();
        (net, l, conn)
    }

    /// `seal` used to spin on `thread::yield_now` until the calls past its
    /// check were queued. It now returns at once, and `settled` awaits
    /// them: it parks (the paused clock can only jump because the runtime
    /// is idle) until the last one out notifies it.
    #[tokio::test(start_paused = true)]
    async fn seal_returns_at_once_and_settled_awaits_a_call_past_the_check() {
        let (_net, _l, conn) = pair().await;
        // A call between its `sealed` check and its enqueue. The real
        // window holds no await; held open here, the old spin never ended.
        let window = Sending::enter(&conn.shared);
        let sealer = conn.clone();
        let (done, sealed) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            sealer.seal();
            let _ = done.send(());
        });
        sealed
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("seal blocked its thread on a call past the check");
        assert!(conn.is_sealed());
        let settled = conn.settled();
        tokio::pin!(settled);
        let early = tokio::time::timeout(Duration::from_secs(60), settled.as_mut()).await;
        assert!(
            early.is_err(),
            "settled before the call past the check was queued"
        );
        drop(window);
        settled.await;
    }

    #[tokio::test(start_paused = true)]
    async fn the_ack_of_a_retire_waits_for_the_calls_past_the_seal_check() {
        let (_net, mut l, conn) = pair().await;
        let accepted = l.accepted().await.unwrap();
        // The dialer has a call past its check when the `Retire` comes: it
        // seals (the default `Inbound::retire`), and its ack must not
        // overtake that call.
        let window = Sending::enter(&conn.shared);
        let retire = accepted.retire(Duration::from_secs(600));
        tokio::pin!(retire);
        let early = tokio::time::timeout(Duration::from_secs(60), retire.as_mut()).await;
        assert!(
            early.is_err(),
            "acknowledged before the call past the check"
        );
        assert!(conn.is_sealed());
        drop(window);
        retire.await.unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_the_peer_never_saw_comes_back_unsent_with_its_payload() {
        let (_net, _l, conn) = pair().await;
        conn.close();
        match conn
            .call_routed(
                1,
                "x",
                b"payload".to_vec(),
                Instant::now() + Duration::from_secs(5),
                0,
                None,
                None,
            )
            .await
        {
            Err(Routed::Unsent(p)) => assert_eq!(p, b"payload"),
            other => panic!("expected Unsent, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn close_stops_a_writer_blocked_on_a_peer_that_never_reads() {
        // The other end never reads: the pipe holds 1 KiB, the cast is 64.
        let (ours, mut theirs) = tokio::io::duplex(1024);
        let peer = Peer {
            node: "b".into(),
            capabilities: vec![],
            addr: String::new(),
            incarnation: 1,
            trace_context: false,
            call_chain: false,
            actors: None,
            remote: String::new(),
            identity: None,
        };
        let conn = Connection::spawn(ours, BytesMut::new(), peer, None, &cfg("a"), Arc::new(Hang));
        conn.cast(1, "x", vec![0; 64 << 10], 0).unwrap();
        // The writer takes the write side out while its write waits.
        let mut turns = 0;
        while !conn.shared.outbox().is_busy() || conn.shared.wr.lock().unwrap().is_some() {
            turns += 1;
            assert!(turns < 10_000, "the writer never blocked");
            tokio::task::yield_now().await;
        }
        // The heartbeat gives up on the peer: the writer stops and drops
        // its side, so the stream closes (the other end's writes fail)
        // instead of waiting on the peer for as long as it hangs.
        conn.close();
        let w = tokio::time::timeout(Duration::from_secs(60), theirs.write_all(&[0; 4096])).await;
        match w {
            Ok(Err(e)) => assert_eq!(e.kind(), std::io::ErrorKind::BrokenPipe),
            other => panic!("the stream stayed open after close: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_that_may_have_gone_out_fails_as_node_down() {
        let (net, _l, conn) = pair().await;
        // Handed to the socket, then the link hangs and the connection is
        // closed: the peer may have it, so it is not routed again.
        net.stall("a", "b");
        let call = {
            let conn = conn.clone();
            tokio::spawn(async move {
                conn.call_routed(
                    1,
                    "x",
                    b"p".to_vec(),
                    Instant::now() + Duration::from_secs(5),
                    0,
                    None,
                    None,
                )
                .await
            })
        };
        // Let the call reach the (stalled) socket.
        let mut turns = 0;
        while conn.shared.pending().attempted() == 0 {
            turns += 1;
            assert!(turns < 10_000, "the call never reached the socket");
            tokio::task::yield_now().await;
        }
        conn.close();
        match call.await.unwrap() {
            Err(Routed::Failed(Error::NodeDown { node, .. })) => assert_eq!(node, "b"),
            other => panic!("expected NodeDown, got {other:?}"),
        }
    }
}
