//! One established connection: a writer task batching frames out, a reader
//! task dispatching frames in, and the table of calls waiting for replies.

use std::collections::{BTreeSet, HashMap};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use serde_bytes::ByteBuf;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch, Notify};
use tokio::time::Instant;

use super::{Lifetime, TransportConfig};
use crate::telemetry::Metrics;
use crate::wire::{self, Call, Cast, Failure, Frame, FrameCodec, Kind, Membership, Peer, Reply};
use crate::Error;

/// What a node does with requests that arrive on its connections.
///
/// `call` and `cast` are invoked by the connection's reader, in arrival
/// order, and must not block: work they start before returning keeps that
/// order. A call is answered through its [`Responder`], from wherever the
/// work ends (an activation answers straight into the connection).
pub trait Inbound: Send + Sync + 'static {
    /// Runs an inbound call; `reply` sends its `Reply` or `Error` frame.
    fn call(&self, from: &Peer, call: Call, reply: Responder);
    /// Runs an inbound cast.
    fn cast(&self, from: &Peer, cast: Cast);
    /// Takes a peer's membership view.
    fn membership(&self, from: &Peer, membership: Membership) {
        let _ = (from, membership);
    }
    /// The peer is leaving: route nothing new to it, then `ack` (which
    /// answers the peer; dropped, it answers too). The default acks at once.
    fn leave(&self, from: &Peer, ack: Ack) {
        let _ = from;
        ack.send();
    }
    /// The peer retires `conn` (a `Retire` frame): send no new request on
    /// it, then `ack` (dropped, it answers too). The peer answers what is
    /// in flight, then closes. The default seals it and acks at once.
    fn retire(&self, conn: Connection, ack: Ack) {
        conn.seal();
        ack.send();
    }
}

/// Acknowledges a peer's `Leave` on its connection (a `Pong` with the
/// same correlation id). Sent on `send` or on drop, whichever comes first.
pub struct Ack {
    slot: Option<(u64, Arc<Shared>)>,
}

impl std::fmt::Debug for Ack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ack")
            .field("corr", &self.slot.as_ref().map(|(c, _)| *c))
            .finish()
    }
}

impl Ack {
    /// Answers the peer now.
    pub fn send(mut self) {
        self.answer();
    }

    fn answer(&mut self) {
        if let Some((corr, shared)) = self.slot.take() {
            shared.enqueue(Kind::Pong, corr, Vec::new(), false);
        }
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        self.answer();
    }
}

/// How a routed call failed: never sent (the payload, back), or failed.
#[derive(Debug)]
pub(crate) enum Routed {
    /// The peer never saw it.
    Unsent(Vec<u8>),
    /// It may have run; this is what the caller gets.
    Failed(Error),
}

impl From<Error> for Routed {
    fn from(e: Error) -> Self {
        Routed::Failed(e)
    }
}

/// What the writer task writes: a frame to encode, or bytes a direct write
/// left over (already encoded).
enum Out {
    Frame(Kind, u64, Vec<u8>),
    Raw(BytesMut),
    /// Write what came before, then close (`Connection::close_after_queued`).
    Close,
}

type WriteSide = Pin<Box<dyn AsyncWrite + Send>>;

/// Answers one inbound call on its connection. Dropped unanswered, it
/// answers [`Error::ShuttingDown`], so a caller never waits for nothing.
pub struct Responder {
    slot: Option<(u64, Arc<Shared>)>,
    deadline: Instant,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("corr", &self.slot.as_ref().map(|(c, _)| *c))
            .field("deadline", &self.deadline)
            .finish()
    }
}

impl Responder {
    /// Sends the reply (or the error) to the caller.
    pub fn send(mut self, result: Result<Vec<u8>, Error>) {
        self.answer(result);
    }

    fn answer(&mut self, result: Result<Vec<u8>, Error>) {
        let Some((corr, shared)) = self.slot.take() else {
            return;
        };
        // The last inbound call in flight writes its reply itself.
        let alone = shared.inbound.load(Ordering::Acquire) == 1;
        // The caller is gone (cancelled): nobody reads an answer.
        if !shared.take_cancelled(corr) {
            let frame = match result {
                Ok(payload) => {
                    let n = payload.len();
                    let reply = Reply {
                        payload: ByteBuf::from(payload),
                    };
                    wire::encode_envelope(&reply, n).map(|b| (Kind::Reply, b))
                }
                Err(error) => wire::encode_envelope(&Failure::from_error(&error), 64)
                    .map(|b| (Kind::Error, b)),
            };
            match frame {
                Ok((kind, body)) => shared.enqueue(kind, corr, body, alone),
                Err(e) => tracing::warn!("cannot encode a response: {e}"),
            }
        }
        // Counted as answered once the reply is queued: what waits for
        // `answered` and then closes gracefully still sends it.
        if shared.inbound.fetch_sub(1, Ordering::AcqRel) == 1 {
            shared.answered.notify_waiters();
        }
    }

    /// Answers [`Error::Timeout`] now; a later `send` goes nowhere.
    pub fn time_out(&mut self) {
        self.answer(Err(Error::timeout()));
    }

    /// When the caller stops waiting (its time left, from arrival); `None`
    /// once answered.
    pub fn deadline(&self) -> Option<Instant> {
        self.slot.as_ref().map(|_| self.deadline)
    }

    /// Whether nobody waits for the answer any more: the connection is
    /// gone, or the caller cancelled the call (a `Cancel` frame).
    pub fn is_closed(&self) -> bool {
        self.slot
            .as_ref()
            .is_none_or(|(corr, shared)| *shared.closed.borrow() || shared.is_cancelled(*corr))
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.answer(Err(Error::ShuttingDown));
    }
}

/// Why a request got no answer, as the caller's side knows it.
#[derive(Debug)]
pub(crate) enum Failed {
    /// The peer's answer, a timeout, or the connection closing after the
    /// request may have gone out.
    Error(Error),
    /// The connection closed before the request was handed to the
    /// socket: the peer never saw it, so it may safely go elsewhere.
    Unsent,
}

impl From<Error> for Failed {
    fn from(e: Error) -> Self {
        Failed::Error(e)
    }
}

type Waiter = oneshot::Sender<Result<Bytes, Failed>>;

/// Calls waiting for their answer, and their deadlines in order.
#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, (Waiter, Instant)>,
    deadlines: BTreeSet<(Instant, u64)>,
    /// The deadline the deadline task sleeps until.
    armed: Option<Instant>,
    /// The highest correlation id of a request handed to the socket: the
    /// peer may have seen it (and those below it). Raised only before a
    /// write, and only while not `sealed`.
    attempted: u64,
    /// Set by `close`: nothing more is written, so requests above
    /// `attempted` were never sent.
    sealed: bool,
    /// Set by `Connection::seal`: `idle` is notified when the last
    /// waiter goes (nobody waits for it otherwise).
    draining: bool,
    idle: Arc<Notify>,
}

impl Pending {
    /// Records that requests up to `corr` are about to be written;
    /// `false` if the connection closed (write nothing).
    fn attempt(&mut self, corr: u64) -> bool {
        if self.sealed {
            return false;
        }
        self.attempted = self.attempted.max(corr);
        true
    }
}

/// Whether a frame of `kind` is a request of ours (its correlation id is
/// from our counter and a waiter may be waiting on it).
fn is_request(kind: Kind) -> bool {
    matches!(kind, Kind::Call | Kind::Ping | Kind::Leave | Kind::Retire)
}

impl Pending {
    fn remove(&mut self, corr: u64) -> Option<Waiter> {
        let (w, deadline) = self.waiters.remove(&corr)?;
        self.deadlines.remove(&(deadline, corr));
        self.removed();
        Some(w)
    }

    /// After a waiter left: wakes `Connection::settled` when none is left.
    fn removed(&self) {
        if self.draining && self.waiters.is_empty() {
            self.idle.notify_waiters();
        }
    }
}

/// Where a connection is in its retirement (`Shared::retiring`).
const LIVE: u8 = 0;
/// This node retires it: the peer is asked to move its calls.
const RETIRING: u8 = 1;
/// The peer retires it: this node moves its calls to a fresh connection.
const RETIRED_BY_PEER: u8 = 2;

struct Shared {
    peer: Peer,
    pending: Mutex<Pending>,
    /// Wakes the deadline task for a deadline earlier than it is armed for.
    earlier: Notify,
    next: AtomicU64,
    out: mpsc::UnboundedSender<Out>,
    /// Frames handed to the writer task and not yet written.
    queued: AtomicUsize,
    /// The socket's write side; the writer task takes it out while it
    /// awaits a write, a direct write borrows it under the lock.
    wr: Mutex<Option<WriteSide>>,
    codec: FrameCodec,
    /// Inbound calls not answered yet.
    inbound: AtomicUsize,
    /// Woken when `inbound` drops to zero.
    answered: Notify,
    /// Inbound calls the caller cancelled, with when the cancel came; a
    /// count beside it so the common case (none) costs one atomic load.
    cancelled: Mutex<HashMap<u64, Instant>>,
    cancelled_len: AtomicUsize,
    closed: watch::Sender<bool>,
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
    /// Calls between their `sealed` check and their enqueue.
    sending: AtomicUsize,
    /// When the handshake completed.
    opened: Instant,
    lifetime: Option<Lifetime>,
}

/// Counts a call between its `sealed` check and its enqueue.
struct Sending<'a>(&'a AtomicUsize);

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
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
    /// Sends a frame. With `direct` (this is the only call in flight) and
    /// nothing queued, the frame is written from here, without waking the
    /// writer task: one task hop less per sequential call. Otherwise it
    /// queues for the writer, which batches.
    ///
    /// Once the connection is closed nothing more goes out: the socket
    /// stays reachable (here, or by the writer's next batch) until the
    /// writer drops it, and a caller must see the close (`NodeDown`), not
    /// a late answer.
    fn enqueue(&self, kind: Kind, corr: u64, body: Vec<u8>, direct: bool) {
        if *self.closed.borrow() {
            return;
        }
        if direct && self.queued.load(Ordering::Acquire) == 0 {
            if let Ok(mut guard) = self.wr.try_lock() {
                // Re-checked under the lock: the writer counts a frame
                // as queued until it is written, so order is kept.
                if let (0, Some(wr)) = (self.queued.load(Ordering::Acquire), guard.as_mut()) {
                    if is_request(kind) && !self.pending().attempt(corr) {
                        return; // closed meanwhile: `close` fails the waiter
                    }
                    let mut buf = BytesMut::with_capacity(32 + body.len());
                    if self.codec.encode(kind, corr, &body, &mut buf).is_ok() {
                        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                        while !buf.is_empty() {
                            match wr.as_mut().poll_write(&mut cx, &buf) {
                                std::task::Poll::Ready(Ok(0)) | std::task::Poll::Ready(Err(_)) => {
                                    drop(guard);
                                    self.close();
                                    return;
                                }
                                std::task::Poll::Ready(Ok(n)) => buf.advance(n),
                                std::task::Poll::Pending => break,
                            }
                        }
                        // A TLS stream takes the bytes but may hold the
                        // records back when the socket is full: unless
                        // the flush completes here, the writer finishes
                        // it (with a waker that is woken).
                        let flushed = buf.is_empty()
                            && matches!(
                                wr.as_mut().poll_flush(&mut cx),
                                std::task::Poll::Ready(Ok(()))
                            );
                        if !flushed {
                            self.queued.fetch_add(1, Ordering::AcqRel);
                            let _ = self.out.send(Out::Raw(buf));
                        }
                        return;
                    }
                }
            }
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
        let _ = self.out.send(Out::Frame(kind, corr, body));
    }

    fn cancelled(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.cancelled
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Records that the caller abandoned inbound call `corr`. A cancel
    /// that arrives after the answer left stays until pruned: correlation
    /// ids are never reused on a connection, so it matches nothing.
    fn cancel(&self, corr: u64) {
        let mut c = self.cancelled();
        if c.len() >= MAX_CANCELLED {
            let horizon = Instant::now() - CANCELLED_KEPT;
            c.retain(|_, at| *at > horizon);
            if c.len() >= MAX_CANCELLED {
                c.clear();
            }
        }
        c.insert(corr, Instant::now());
        self.cancelled_len.store(c.len(), Ordering::Release);
    }

    fn is_cancelled(&self, corr: u64) -> bool {
        self.cancelled_len.load(Ordering::Acquire) > 0 && self.cancelled().contains_key(&corr)
    }

    /// Whether `corr` was cancelled; forgets it either way.
    fn take_cancelled(&self, corr: u64) -> bool {
        if self.cancelled_len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut c = self.cancelled();
        let was = c.remove(&corr).is_some();
        self.cancelled_len.store(c.len(), Ordering::Release);
        was
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Marks the connection closed and fails every waiting call at once.
    ///
    /// A request never handed to the socket fails as [`Failed::Unsent`]
    /// (the caller may route it elsewhere); one that may have gone out
    /// fails as `NodeDown` (it may have run).
    fn close(&self) {
        self.closed.send_replace(true);
        let (waiters, attempted) = {
            let mut p = self.pending();
            p.sealed = true;
            p.idle.notify_waiters();
            p.deadlines.clear();
            let waiters: Vec<(u64, Waiter)> = p.waiters.drain().map(|(c, (w, _))| (c, w)).collect();
            (waiters, p.attempted)
        };
        for (corr, w) in waiters {
            let _ = w.send(Err(if corr > attempted {
                Failed::Unsent
            } else {
                Failed::Error(Error::node_down(self.peer.node.clone()))
            }));
        }
    }
}

/// How many cancelled inbound calls a connection remembers before it
/// prunes those older than [`CANCELLED_KEPT`].
const MAX_CANCELLED: usize = 4096;
const CANCELLED_KEPT: Duration = Duration::from_secs(60);

/// Cancels a request whose future was dropped before its answer.
struct Abandon<'a> {
    shared: &'a Arc<Shared>,
    corr: u64,
    cancel: bool,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        let waiting = self.shared.pending().remove(self.corr).is_some();
        if waiting && self.cancel && !*self.shared.closed.borrow() {
            self.shared
                .enqueue(Kind::Cancel, self.corr, EMPTY_BODY.to_vec(), false);
        }
    }
}

/// `{}` in MessagePack: the body of frames that carry nothing.
const EMPTY_BODY: [u8; 1] = [0x80];

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
        let (out, out_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            peer,
            pending: Mutex::new(Pending::default()),
            earlier: Notify::new(),
            next: AtomicU64::new(1),
            out,
            queued: AtomicUsize::new(0),
            wr: Mutex::new(Some(Box::pin(wr))),
            codec: cfg.codec,
            inbound: AtomicUsize::new(0),
            answered: Notify::new(),
            cancelled: Mutex::new(HashMap::new()),
            cancelled_len: AtomicUsize::new(0),
            closed: watch::channel(false).0,
            opened_at: std::time::SystemTime::now(),
            origin: std::sync::OnceLock::new(),
            retiring: AtomicU8::new(LIVE),
            sealed: AtomicBool::new(false),
            sending: AtomicUsize::new(0),
            opened: Instant::now(),
            lifetime,
        });
        let conn = Connection { shared };
        tokio::spawn(write_loop(out_rx, conn.shared.clone()));
        tokio::spawn(read_loop(
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
        *self.shared.closed.borrow()
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
        self.shared.queued.fetch_add(1, Ordering::AcqRel);
        if self.shared.out.send(Out::Close).is_err() {
            self.shared.close();
        }
    }

    fn send(&self, kind: Kind, corr: u64, body: Vec<u8>, direct: bool) -> Result<(), Error> {
        if self.is_closed() {
            return Err(self.down());
        }
        self.shared.enqueue(kind, corr, body, direct);
        Ok(())
    }

    fn down(&self) -> Error {
        Error::node_down(self.shared.peer.node.clone())
    }

    /// Sends a request of `kind` and waits for the frame answering it, at
    /// most `timeout`: the connection's deadline task answers `Timeout`
    /// (one timer per connection, not one per call).
    async fn request(&self, kind: Kind, body: Vec<u8>, timeout: Duration) -> Result<Bytes, Failed> {
        // A sealed connection takes no new call: it comes back unsent (the
        // caller routes it to a fresh connection). `seal` waits for the
        // calls past this check to be enqueued.
        let _sending = if kind == Kind::Call {
            self.shared.sending.fetch_add(1, Ordering::SeqCst);
            let guard = Sending(&self.shared.sending);
            if self.shared.sealed.load(Ordering::SeqCst) {
                return Err(Failed::Unsent);
            }
            Some(guard)
        } else {
            None
        };
        let corr = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let deadline = Instant::now() + timeout;
        let (tx, rx) = oneshot::channel();
        let (wake, alone) = {
            let mut p = self.shared.pending();
            p.waiters.insert(corr, (tx, deadline));
            p.deadlines.insert((deadline, corr));
            (p.armed.is_none_or(|a| deadline < a), p.waiters.len() == 1)
        };
        if wake {
            self.shared.earlier.notify_one();
        }
        // Closed between the check and the insert: nobody would fail us.
        if self.is_closed() {
            self.shared.pending().remove(corr);
            return Err(Failed::Unsent);
        }
        if self.send(kind, corr, body, alone).is_err() {
            self.shared.pending().remove(corr);
            return Err(Failed::Unsent);
        }
        drop(_sending);
        // Dropped before the answer (the caller gave up): forget the call
        // and, for a `Call`, tell the peer so it skips the work if it has
        // not started it.
        let guard = Abandon {
            shared: &self.shared,
            corr,
            cancel: kind == Kind::Call,
        };
        let result = rx.await.unwrap_or_else(|_| Err(self.down().into()));
        std::mem::forget(guard);
        result
    }

    /// A request's outcome for the public API: never sent is `NodeDown`.
    fn public(&self, r: Result<Bytes, Failed>) -> Result<Bytes, Error> {
        r.map_err(|f| match f {
            Failed::Error(e) => e,
            Failed::Unsent => self.down(),
        })
    }

    /// Calls handler `tag` of actor `id` on the peer; returns the encoded
    /// reply. Fails with `Timeout` after `timeout`, or `NodeDown` as soon as
    /// the connection drops.
    pub async fn call(
        &self,
        tag: u64,
        id: &str,
        payload: Vec<u8>,
        timeout: Duration,
        hops: u8,
    ) -> Result<Bytes, Error> {
        match self
            .call_routed(tag, id, payload, timeout, hops, None, None)
            .await
        {
            Ok(b) => Ok(b),
            Err(Routed::Failed(e)) => Err(e),
            Err(Routed::Unsent(_)) => Err(self.down()),
        }
    }

    /// [`Connection::call`], but a call the peer never saw comes back as
    /// `Err(Unsent(payload))`, so the caller can route it elsewhere. It
    /// carries the caller's trace context and call chain to peers that
    /// take them.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn call_routed(
        &self,
        tag: u64,
        id: &str,
        payload: Vec<u8>,
        timeout: Duration,
        hops: u8,
        trace: Option<wire::TraceContext>,
        chain: Option<Vec<(String, String)>>,
    ) -> Result<Bytes, Routed> {
        let call = Call {
            tag,
            id: id.to_owned(),
            timeout_ms: timeout.as_millis().min(u64::MAX as u128) as u64,
            hops,
            payload: ByteBuf::from(payload),
            // An older peer would refuse the body with it.
            trace: trace.filter(|_| self.shared.peer.trace_context),
            chain: chain.filter(|_| self.shared.peer.call_chain),
        };
        let body = wire::encode_envelope(&call, call.payload.len() + call.id.len())?;
        match self.request(Kind::Call, body, timeout).await {
            Ok(b) => Ok(b),
            Err(Failed::Error(e)) => Err(Routed::Failed(e)),
            Err(Failed::Unsent) => Err(Routed::Unsent(call.payload.into_vec())),
        }
    }

    /// Casts to handler `tag` of actor `id` on the peer: at most once.
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
        self.send(Kind::Cast, 0, body, false)
    }

    /// Round trip of a `Ping`.
    pub async fn ping(&self, timeout: Duration) -> Result<Duration, Error> {
        let started = Instant::now();
        let r = self
            .request(Kind::Ping, vec![0x80], timeout) // body `{}`: an empty map
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
            .request(Kind::Leave, EMPTY_BODY.to_vec(), timeout)
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
            .request(Kind::Retire, EMPTY_BODY.to_vec(), timeout)
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
    /// `NodeDown` through [`Connection::call`]. Returns once every call
    /// already past the check is queued, so a frame queued after `seal`
    /// comes after all of them. Pings, casts and answers still go out.
    pub fn seal(&self) {
        self.shared.sealed.store(true, Ordering::SeqCst);
        self.shared.pending().draining = true;
        // The window is a few instructions without an await.
        while self.shared.sending.load(Ordering::SeqCst) > 0 {
            std::thread::yield_now();
        }
    }

    /// Whether [`Connection::seal`] was called.
    pub fn is_sealed(&self) -> bool {
        self.shared.sealed.load(Ordering::Acquire)
    }

    /// Resolves once no request of ours waits for an answer on this
    /// connection (or it closed). Meant after [`Connection::seal`].
    pub async fn settled(&self) {
        loop {
            let idle = self.shared.pending().idle.clone();
            let woken = idle.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if self.shared.pending().waiters.is_empty() || self.is_closed() {
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
        self.shared.inbound.load(Ordering::Acquire)
    }

    /// Resolves once every call the peer sent on this connection has been
    /// answered (or the connection closed).
    pub async fn answered(&self) {
        loop {
            let woken = self.shared.answered.notified();
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
    pub fn send_membership(&self, m: &Membership) -> Result<(), Error> {
        self.send(Kind::Membership, 0, wire::encode_envelope(m, 256)?, false)
    }
}

/// Drains the outgoing queue into one buffer per write.
async fn write_loop(mut rx: mpsc::UnboundedReceiver<Out>, shared: Arc<Shared>) {
    const BATCH_BYTES: usize = 256 << 10;
    let mut buf = BytesMut::with_capacity(16 << 10);
    let mut closed = shared.closed.subscribe();
    'outer: loop {
        let first = tokio::select! {
            msg = rx.recv() => msg,
            _ = closed.wait_for(|c| *c) => None,
        };
        let Some(first) = first else {
            break;
        };
        // Let the tasks that are about to send run first: one write then
        // carries their frames too (far fewer syscalls under load; when
        // nothing else is runnable the yield returns at once).
        tokio::task::yield_now().await;
        let mut frames = 0;
        let mut last_request = 0;
        let mut closing = false;
        let mut next = Some(first);
        while let Some(out) = next.take() {
            match out {
                Out::Close => {
                    closing = true;
                    break;
                }
                Out::Raw(bytes) => buf.extend_from_slice(&bytes),
                Out::Frame(kind, corr, body) => {
                    if is_request(kind) {
                        last_request = last_request.max(corr);
                    }
                    if let Err(e) = shared.codec.encode(kind, corr, &body, &mut buf) {
                        // Too big to send: fail that call, keep the connection.
                        tracing::warn!(peer = %shared.peer.node, "dropping outgoing frame: {e}");
                        let waiter = shared.pending().remove(corr);
                        if let Some(w) = waiter {
                            let _ = w.send(Err(Error::Codec(e.to_string()).into()));
                        }
                    }
                }
            }
            frames += 1;
            if buf.len() < BATCH_BYTES {
                next = rx.try_recv().ok();
            }
        }
        if last_request > 0 && !shared.pending().attempt(last_request) {
            break; // closed: these requests were never sent
        }
        let taken = shared
            .wr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut wr) = taken else { break };
        // Flush: a TLS stream may keep encrypted bytes buffered when the
        // socket was full (a no-op on plain TCP). A peer that stops
        // reading (hung, or stopped) blocks the write for as long as it
        // likes: `close` ends it, and the write side is dropped, not put
        // back (a frame may be half written).
        let write = async {
            wr.write_all(&buf).await?;
            wr.flush().await
        };
        let written = tokio::select! {
            w = write => w,
            _ = closed.wait_for(|c| *c) => {
                drop(wr);
                break 'outer;
            }
        };
        *shared.wr.lock().unwrap_or_else(PoisonError::into_inner) = Some(wr);
        shared.queued.fetch_sub(frames, Ordering::AcqRel);
        buf.clear();
        if let Err(e) = written {
            tracing::info!(peer = %shared.peer.node, "connection write failed: {e}");
            break 'outer;
        }
        if closing {
            break;
        }
    }
    let taken = shared
        .wr
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take();
    if let Some(mut wr) = taken {
        // A TLS shutdown writes too (close_notify): `close` ends it.
        tokio::select! {
            biased;
            _ = wr.shutdown() => {}
            _ = closed.wait_for(|c| *c) => {}
        }
    }
    shared.close();
}

/// How much a read asks the socket for.
const READ_CHUNK: usize = 64 << 10;

/// Reads frames and dispatches them; closes the connection on EOF, a read
/// error or a malformed frame.
async fn read_loop<R: AsyncRead>(
    rd: R,
    mut buf: BytesMut,
    codec: FrameCodec,
    shared: Arc<Shared>,
    inbound: Arc<dyn Inbound>,
) {
    let mut rd = std::pin::pin!(rd);
    let mut closed = shared.closed.subscribe();
    'outer: loop {
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => dispatch(frame, &shared, &inbound),
                Ok(None) => break,
                Err(e) => {
                    Metrics::get().frame_errors.increment(1);
                    tracing::warn!(peer = %shared.peer.node, "closing connection: {e}");
                    break 'outer;
                }
            }
        }
        // Room for a large read: a full buffer would make read_buf grow it
        // 64 bytes at a time, one syscall each.
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = closed.wait_for(|c| *c) => break 'outer,
        };
        match read {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                tracing::info!(peer = %shared.peer.node, "connection read failed: {e}");
                break;
            }
        }
    }
    shared.close();
}

fn dispatch(frame: Frame, shared: &Arc<Shared>, inbound: &Arc<dyn Inbound>) {
    let corr = frame.corr;
    match frame.kind {
        Kind::Reply | Kind::Pong => {
            let result = match frame.kind {
                Kind::Reply => {
                    wire::decode::<Reply>(&frame.body).map(|r| Bytes::from(r.payload.into_vec()))
                }
                _ => Ok(Bytes::new()),
            };
            let waiter = shared.pending().remove(corr);
            if let Some(w) = waiter {
                let _ = w.send(result.map_err(Failed::Error));
            }
        }
        Kind::Error => {
            // An unknown code decodes to `Error::Remote`; only a body that
            // is not a failure at all is a codec error.
            let err = match wire::decode::<Failure>(&frame.body) {
                Ok(f) => f.into_error(),
                Err(e) => e,
            };
            if corr == 0 {
                tracing::warn!(peer = %shared.peer.node, "peer closes the connection: {err}");
                shared.close();
            } else {
                let waiter = shared.pending().remove(corr);
                if let Some(w) = waiter {
                    let _ = w.send(Err(err.into()));
                }
            }
        }
        Kind::Call => match wire::decode::<Call>(&frame.body) {
            Ok(call) => {
                shared.inbound.fetch_add(1, Ordering::Relaxed);
                let reply = Responder {
                    slot: Some((corr, shared.clone())),
                    deadline: Instant::now() + Duration::from_millis(call.timeout_ms),
                };
                inbound.call(&shared.peer, call, reply);
            }
            Err(e) => {
                shared.inbound.fetch_add(1, Ordering::Relaxed);
                let reply = Responder {
                    slot: Some((corr, shared.clone())),
                    deadline: Instant::now(),
                };
                reply.send(Err(e));
            }
        },
        Kind::Cast => match wire::decode::<Cast>(&frame.body) {
            Ok(cast) => inbound.cast(&shared.peer, cast),
            Err(e) => tracing::warn!(peer = %shared.peer.node, "dropping malformed cast: {e}"),
        },
        Kind::Ping => {
            shared.enqueue(Kind::Pong, corr, Vec::new(), false);
        }
        Kind::Membership => match wire::decode::<Membership>(&frame.body) {
            Ok(m) => inbound.membership(&shared.peer, m),
            Err(e) => {
                tracing::warn!(peer = %shared.peer.node, "dropping malformed membership: {e}")
            }
        },
        Kind::Cancel => shared.cancel(corr),
        Kind::Leave => {
            let ack = Ack {
                slot: Some((corr, shared.clone())),
            };
            inbound.leave(&shared.peer, ack);
        }
        Kind::Retire => {
            let ack = Ack {
                slot: Some((corr, shared.clone())),
            };
            let _ = shared.retiring.compare_exchange(
                LIVE,
                RETIRED_BY_PEER,
                Ordering::AcqRel,
                Ordering::Acquire,
            );
            let conn = Connection {
                shared: shared.clone(),
            };
            inbound.retire(conn, ack);
        }
        Kind::Hello | Kind::Challenge | Kind::Auth | Kind::Welcome => {
            tracing::warn!(peer = %shared.peer.node, "unexpected {:?} after the handshake", frame.kind);
        }
    }
}

/// Answers `Timeout` to the calls whose deadline passed: one timer per
/// connection, armed for the earliest deadline and woken early only for an
/// earlier one. Ends with the connection.
async fn expire_loop(shared: Arc<Shared>) {
    let mut closed = shared.closed.subscribe();
    loop {
        if *shared.closed.borrow() {
            return;
        }
        let now = Instant::now();
        let (expired, next) = {
            let mut p = shared.pending();
            let mut expired = Vec::new();
            while let Some(&(d, corr)) = p.deadlines.first() {
                if d > now {
                    break;
                }
                p.deadlines.pop_first();
                if let Some((w, _)) = p.waiters.remove(&corr) {
                    expired.push(w);
                }
                p.removed();
            }
            let next = p.deadlines.first().map(|&(d, _)| d);
            p.armed = next;
            (expired, next)
        };
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
    use super::*;
    use crate::transport::memory::MemoryNetwork;
    use crate::transport::{DialTarget, Transport};
    use crate::wire::{Cookie, Identity};

    struct Hang;

    impl Inbound for Hang {
        fn call(&self, _: &Peer, _: Call, reply: Responder) {
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
            .call_routed(1, "x", b"p".to_vec(), Duration::from_secs(5), 0, None, None)
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

    #[tokio::test(start_paused = true)]
    async fn a_call_the_peer_never_saw_comes_back_unsent_with_its_payload() {
        let (_net, _l, conn) = pair().await;
        conn.close();
        match conn
            .call_routed(
                1,
                "x",
                b"payload".to_vec(),
                Duration::from_secs(5),
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
        while conn.shared.queued.load(Ordering::Acquire) == 0
            || conn.shared.wr.lock().unwrap().is_some()
        {
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
                conn.call_routed(1, "x", b"p".to_vec(), Duration::from_secs(5), 0, None, None)
                    .await
            })
        };
        // Let the call reach the (stalled) socket.
        let mut turns = 0;
        while conn.shared.pending().attempted == 0 {
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
