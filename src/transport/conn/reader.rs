//! The incoming side of a connection: one reader task decodes frames and
//! dispatches them in arrival order.
//!
//! Contracts:
//! - Answers (`Reply`, `Pong`, `Error`) go to the waiter of their
//!   correlation id; one for a request nobody waits for any more (timed
//!   out, abandoned) is dropped.
//! - Requests (`Call`, `Cast`, `Membership`, `Leave`, `Retire`) go to the
//!   node's [`Inbound`], in arrival order, without waiting: work started
//!   before the next frame is read keeps that order.
//! - A malformed frame (the stream is out of sync), EOF, a read error, or
//!   an `Error` frame with correlation id 0 close the connection. A
//!   malformed body of a single frame fails only that frame.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::time::Instant;

use super::{Ack, Connection, Inbound, Responder, Routed, Shared, LIVE, RETIRED_BY_PEER};
use crate::telemetry::Metrics;
use crate::wire::{
    self, CallFrame, Cast, Failure, Frame, FrameCodec, Kind, MembershipFrame, Reply,
};

/// How much a read asks the socket for.
const READ_CHUNK: usize = 64 << 10;

/// Reads frames and dispatches them; closes the connection on EOF, a read
/// error or a malformed frame.
pub(super) async fn read_loop<R: AsyncRead>(
    rd: R,
    mut buf: BytesMut,
    codec: FrameCodec,
    shared: Arc<Shared>,
    inbound: Arc<dyn Inbound>,
) {
    let mut rd = std::pin::pin!(rd);
    let mut closed = shared.closed.subscribe();
    'outer: loop {
        // When the frames of this read arrived: read once, by the first
        // call among them (a call's deadline counts from its arrival).
        let mut arrived = None;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => dispatch(frame, &shared, &inbound, &mut arrived),
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

fn dispatch(
    frame: Frame,
    shared: &Arc<Shared>,
    inbound: &Arc<dyn Inbound>,
    arrived: &mut Option<Instant>,
) {
    let corr = frame.corr;
    match frame.kind {
        Kind::Reply | Kind::Pong => {
            let result = match frame.kind {
                Kind::Reply => Reply::payload_of(&frame.body),
                _ => Ok(Bytes::new()),
            };
            if let Some(w) = shared.take_waiter(corr) {
                let _ = w.send(result.map_err(Routed::Failed));
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
            } else if let Some(w) = shared.take_waiter(corr) {
                let _ = w.send(Err(Routed::Failed(err)));
            }
        }
        Kind::Call => match wire::decode::<CallFrame>(&frame.body) {
            Ok(call) => {
                let now = *arrived.get_or_insert_with(Instant::now);
                let deadline = now + Duration::from_millis(call.timeout_ms);
                let reply = Responder::arrived(corr, shared, deadline);
                inbound.call(&shared.peer, call, reply);
            }
            Err(e) => Responder::arrived(corr, shared, Instant::now()).send(Err(e)),
        },
        Kind::Cast => match wire::decode::<Cast>(&frame.body) {
            Ok(cast) => inbound.cast(&shared.peer, cast),
            Err(e) => tracing::warn!(peer = %shared.peer.node, "dropping malformed cast: {e}"),
        },
        Kind::Ping => {
            let _ = shared.enqueue(Kind::Pong, corr, &[], false);
        }
        Kind::Membership => match wire::decode::<MembershipFrame>(&frame.body) {
            Ok(m) => inbound.membership(&shared.peer, m),
            Err(e) => {
                tracing::warn!(peer = %shared.peer.node, "dropping malformed membership: {e}")
            }
        },
        Kind::Cancel => shared.inbound.cancel(corr),
        Kind::Leave => {
            // The peer routes nothing new here once it leaves; sealed
            // first, this side sends no new call on the connection (one
            // comes back unsent, for the caller to route elsewhere), and
            // the ack goes out after every call that passed the seal
            // check: once the leaving peer has the ack, every call sent
            // to it on this connection has arrived.
            let ack = Ack::new(corr, shared);
            Connection {
                shared: shared.clone(),
            }
            .seal();
            inbound.leave(&shared.peer, ack);
        }
        Kind::Retire => {
            let ack = Ack::new(corr, shared);
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
