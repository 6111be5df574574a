//! The outgoing side of a connection: every frame is encoded straight into
//! the connection's outbox (one buffer, under a lock: no body buffer of
//! its own, no queue node, no copy but the encoding), and written either
//! directly by the only call in flight, or by the connection's writer
//! task, which takes the whole outbox in one swap and writes it with one
//! write.
//!
//! Contracts:
//! - Frames go out in the order they were encoded into the outbox: a
//!   direct write happens only while the outbox is empty and the writer
//!   holds no batch it has not written yet; what a direct write leaves
//!   unwritten stays at the front of the outbox for the writer.
//! - A request's correlation id is recorded as attempted
//!   ([`Pending::attempt`](super::pending::Pending::attempt)) before its
//!   bytes are handed to the socket, never after the connection closed:
//!   what was not attempted was never sent.
//! - Under load the writer lets the tasks that are about to send run
//!   first (one yield), so one write carries their frames too; a frame
//!   alone is written at once (directly, or by the writer woken for it).
//! - A frame too big for the codec is refused when it is encoded
//!   (`Error::Codec`), and nothing of it is left in the outbox.
//! - Once the connection is closed nothing more goes out, and a write
//!   blocked on a peer that does not read ends at the close (the write
//!   side is dropped, not put back: a frame may be half written).
//!   After `Connection::close_after_queued`, frames encoded later are
//!   dropped.

use std::pin::Pin;
use std::sync::{Arc, MutexGuard, PoisonError};

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::Shared;
use crate::wire::Kind;
use crate::Error;

/// The socket's write side, shared by direct writes and the writer task.
pub(super) type WriteSide = Pin<Box<dyn AsyncWrite + Send>>;

/// Frames encoded and not yet handed to the writer task's write.
#[derive(Default)]
pub(super) struct Outbox {
    /// The encoded frames, in order.
    buf: BytesMut,
    /// The highest correlation id of a request of ours in `buf`.
    last_request: u64,
    /// The writer took a batch and has not written it yet: no direct
    /// write may go ahead of it.
    taken: bool,
    /// `Connection::close_after_queued`: write this much of `buf`, then
    /// close.
    close_at: Option<usize>,
    /// A direct write left its flush unfinished (a TLS stream holding
    /// records back): the writer flushes, even with `buf` empty.
    flush: bool,
}

impl Outbox {
    /// Whether the writer has frames to write (or a close to carry out).
    fn has_work(&self) -> bool {
        !self.buf.is_empty() || self.close_at.is_some() || self.flush
    }

    /// Whether anything is encoded and not yet written (for tests).
    #[cfg(test)]
    pub(super) fn is_busy(&self) -> bool {
        !self.buf.is_empty() || self.taken
    }
}

/// Whether a frame of `kind` is a request of ours (its correlation id is
/// from our counter and a waiter may be waiting on it).
fn is_request(kind: Kind) -> bool {
    matches!(kind, Kind::Call | Kind::Ping | Kind::Leave | Kind::Retire)
}

impl Shared {
    pub(super) fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a frame whose body is `body`. See [`Shared::enqueue_with`].
    pub(super) fn enqueue(
        &self,
        kind: Kind,
        corr: u64,
        body: &[u8],
        direct: bool,
    ) -> Result<(), Error> {
        self.enqueue_with(kind, corr, direct, |dst| {
            dst.put_slice(body);
            Ok(())
        })
    }

    /// Sends a frame whose body `body` encodes into the outbox. With
    /// `direct` (this is the only call in flight) and nothing else
    /// waiting to be written, the frame is written from here, without
    /// waking the writer task: one task hop less per sequential call.
    /// Otherwise the writer, woken if the outbox was empty, writes it with
    /// whatever else is encoded meanwhile.
    ///
    /// Once the connection is closed (or closing after what was queued),
    /// nothing more goes out and this is `Ok`: a caller sees the close
    /// (`NodeDown`), not a late answer. `Err` is the encoding's error (a
    /// frame too big): nothing was sent.
    pub(super) fn enqueue_with(
        &self,
        kind: Kind,
        corr: u64,
        direct: bool,
        body: impl FnOnce(&mut BytesMut) -> Result<(), Error>,
    ) -> Result<(), Error> {
        if self.is_closed() {
            return Ok(());
        }
        let mut outbox = self.outbox();
        if outbox.close_at.is_some() {
            return Ok(());
        }
        let was_empty = outbox.buf.is_empty();
        if direct && was_empty && !outbox.taken {
            if let Ok(mut guard) = self.wr.try_lock() {
                if let Some(wr) = guard.as_mut() {
                    if is_request(kind) && !self.pending().attempt(corr) {
                        return Ok(()); // closed meanwhile: `close` fails the waiter
                    }
                    self.codec.encode_with(kind, corr, &mut outbox.buf, body)?;
                    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                    while !outbox.buf.is_empty() {
                        match wr.as_mut().poll_write(&mut cx, &outbox.buf) {
                            std::task::Poll::Ready(Ok(0)) | std::task::Poll::Ready(Err(_)) => {
                                outbox.buf.clear();
                                drop((guard, outbox));
                                self.close();
                                return Ok(());
                            }
                            std::task::Poll::Ready(Ok(n)) => outbox.buf.advance(n),
                            std::task::Poll::Pending => break,
                        }
                    }
                    // A TLS stream takes the bytes but may hold the
                    // records back when the socket is full: unless the
                    // flush completes here, the writer finishes it (with
                    // a waker that is woken), after the rest of the frame.
                    let flushed = outbox.buf.is_empty()
                        && matches!(
                            wr.as_mut().poll_flush(&mut cx),
                            std::task::Poll::Ready(Ok(()))
                        );
                    if !flushed {
                        outbox.flush = true;
                        drop((guard, outbox));
                        self.wake.notify_one();
                    }
                    return Ok(());
                }
            }
        }
        self.codec.encode_with(kind, corr, &mut outbox.buf, body)?;
        if is_request(kind) {
            outbox.last_request = outbox.last_request.max(corr);
        }
        drop(outbox);
        if was_empty {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Closes the connection once what is in the outbox now is written.
    pub(super) fn close_after_queued(&self) {
        {
            let mut outbox = self.outbox();
            if outbox.close_at.is_none() {
                outbox.close_at = Some(outbox.buf.len());
            }
        }
        self.wake.notify_one();
    }
}

/// Writes the outbox, a whole batch per write, until the connection
/// closes.
pub(super) async fn write_loop(shared: Arc<Shared>) {
    let mut batch = BytesMut::with_capacity(16 << 10);
    let mut closed = shared.closed.subscribe();
    'outer: loop {
        // Wait for frames: a permit stored by `notify_one` is not lost.
        loop {
            let woken = shared.wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            if shared.outbox().has_work() {
                break;
            }
            tokio::select! {
                _ = woken => {}
                _ = closed.wait_for(|c| *c) => break 'outer,
            }
        }
        // Let the tasks that are about to send run first: one write then
        // carries their frames too (far fewer syscalls under load; when
        // nothing else is runnable the yield returns at once).
        tokio::task::yield_now().await;
        let (last_request, closing) = {
            let mut outbox = shared.outbox();
            let closing = match outbox.close_at.take() {
                Some(at) => {
                    let at = at.min(outbox.buf.len());
                    batch = outbox.buf.split_to(at);
                    outbox.buf.clear();
                    true
                }
                None => {
                    std::mem::swap(&mut outbox.buf, &mut batch);
                    false
                }
            };
            outbox.taken = true;
            outbox.flush = false;
            (std::mem::take(&mut outbox.last_request), closing)
        };
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
            wr.write_all(&batch).await?;
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
        shared.outbox().taken = false;
        batch.clear();
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
