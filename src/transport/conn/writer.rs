//! The outgoing side of a connection: frames are written directly by the
//! only call in flight, or queued for the connection's writer task, which
//! batches them into one write.
//!
//! Contracts:
//! - Frames go out in the order they were queued: a direct write happens
//!   only while nothing is queued, and the writer counts a frame as
//!   queued until it is written.
//! - A request's correlation id is recorded as attempted
//!   ([`Pending::attempt`](super::pending::Pending::attempt)) before its
//!   bytes are handed to the socket, never after the connection closed:
//!   what was not attempted was never sent.
//! - Once the connection is closed nothing more goes out, and a write
//!   blocked on a peer that does not read ends at the close (the write
//!   side is dropped, not put back: a frame may be half written).

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::{Routed, Shared};
use crate::wire::Kind;
use crate::Error;

/// What the writer task writes: a frame to encode, or bytes a direct write
/// left over (already encoded).
pub(super) enum Out {
    Frame(Kind, u64, Vec<u8>),
    Raw(BytesMut),
    /// Write what came before, then close (`Connection::close_after_queued`).
    Close,
}

/// The socket's write side, shared by direct writes and the writer task.
pub(super) type WriteSide = Pin<Box<dyn AsyncWrite + Send>>;

/// Whether a frame of `kind` is a request of ours (its correlation id is
/// from our counter and a waiter may be waiting on it).
fn is_request(kind: Kind) -> bool {
    matches!(kind, Kind::Call | Kind::Ping | Kind::Leave | Kind::Retire)
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
    pub(super) fn enqueue(&self, kind: Kind, corr: u64, body: Vec<u8>, direct: bool) {
        if self.is_closed() {
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
}

/// Drains the outgoing queue into one buffer per write.
pub(super) async fn write_loop(mut rx: mpsc::UnboundedReceiver<Out>, shared: Arc<Shared>) {
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
                        if let Some(w) = shared.take_waiter(corr) {
                            let _ = w.send(Err(Routed::Failed(Error::Codec(e.to_string()))));
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
