//! Running the sans-IO handshake over a stream.
//!
//! Until the peer is authenticated, frames are read with the handshake's
//! own small limit ([`wire::HANDSHAKE_MAX_FRAME`]) and bodies decoded with
//! [`wire::decode_bounded`]; what a refusal says is escaped and cut before
//! it is logged.
//!
//! The first bytes each side reads (the listener: the dialer's first
//! frame; the dialer: the listener's first answer) are told apart from
//! other protocols before they are taken for a frame header
//! ([`Opening::sniff`]): a TLS record, an HTTP request or response, an SSH
//! banner or anything else without the frame magic fails the handshake
//! with [`HandshakeError::WrongProtocol`], saying what is wrong and how
//! to fix it. The listener tells the peer where it can: an HTTP client
//! gets a `400 Bad Request` saying this is a mesh cluster port, anything
//! else an `Error` frame (whose magic a mesh TLS dialer recognises); the
//! dialer just closes.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::TransportConfig;
use crate::wire::{
    self, Auth, Challenge, DialHandshake, Failure, Frame, FrameCodec, HandshakeError, Hello, Kind,
    ListenHandshake, Opening, Peer, Welcome,
};
use crate::Error;

/// Which end of a connection this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    /// It dialed.
    Dialer,
    /// It accepted.
    Listener,
}

/// The fix when the two ends disagree on TLS.
pub(super) const SAME_TRANSPORT: &str =
    "configure the same transport on every node (`.transport(Tls::...)` on all of them, or on none)";

/// The inner error of an `io::Error` by which a transport (TLS) refuses
/// a stream whose peer speaks another protocol, so that the listener logs
/// it rate-limited, as it does [`HandshakeError::WrongProtocol`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct ForeignPeer(pub(super) String);

/// What is wrong, and how to fix it, when the peer of a plain stream
/// opened with `opening` instead of a mesh frame.
pub(super) fn explain(opening: Opening, side: Side) -> String {
    match (opening, side) {
        (Opening::Tls | Opening::TlsAlert, _) => {
            format!("the peer speaks TLS: this node uses plain TCP; {SAME_TRANSPORT}")
        }
        (Opening::HttpRequest, Side::Listener) => {
            "an HTTP client connected to the cluster port; the admin endpoint is on another port"
                .into()
        }
        (Opening::HttpRequest | Opening::HttpResponse, Side::Dialer) => {
            "the address answers HTTP: it is not a mesh node's cluster port (a sidecar or admin port?)"
                .into()
        }
        (Opening::HttpResponse, Side::Listener) => {
            "the peer speaks HTTP: it is not a mesh node".into()
        }
        (Opening::Ssh, Side::Listener) => {
            "an SSH client connected to the cluster port: it is not a mesh node".into()
        }
        (Opening::Ssh, Side::Dialer) => {
            "the address answers SSH: it is not a mesh node's cluster port".into()
        }
        (opening, _) => format!("not a mesh peer (first bytes {})", opening.first_bytes_hex()),
    }
}

/// What a listener answers an HTTP client on a cluster port (the body of
/// a `400 Bad Request`).
pub(super) const HTTP_ANSWER: &str =
    "This is a mesh cluster port (the node-to-node protocol), not HTTP; the admin endpoint is on another port.\n";

/// Answers an HTTP client: `400 Bad Request` with `body`, best effort.
pub(super) async fn answer_http<S: AsyncWrite + Unpin>(io: &mut S, body: &str) {
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = io.write_all(response.as_bytes()).await;
}

/// Tells a mesh peer why it is refused: an `Error` frame (correlation id
/// 0, no checksum: any mesh codec reads it), best effort.
#[cfg_attr(not(feature = "tls"), allow(dead_code))]
pub(super) async fn tell<S: AsyncWrite + Unpin>(io: &mut S, reason: &str) {
    let codec = FrameCodec::new(wire::HANDSHAKE_MAX_FRAME, false);
    let _ = write_frame_with(io, codec, Kind::Error, &refusal(reason)).await;
}

fn refusal(reason: &str) -> Failure {
    Failure::from_error(&Error::Refused {
        reason: reason.to_owned(),
    })
}

/// How long a listener keeps reading (and dropping) what a peer of
/// another protocol still sends after its answer.
const LINGER: Duration = Duration::from_millis(500);

/// After answering a peer of another protocol and shutting down the
/// write side: reads and drops what it still sends, until it closes, at
/// most 64 KiB and [`LINGER`], so that closing with unread bytes does not
/// reset the connection and lose the answer on the way.
pub(super) async fn linger<S: AsyncRead + Unpin>(io: &mut S) {
    let mut scratch = [0u8; 4096];
    let mut left = 64usize << 10;
    let _ = tokio::time::timeout(LINGER, async {
        while left > 0 {
            match io.read(&mut scratch).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

/// What a failed handshake did to us: refused (we or they said no) or the
/// stream broke.
pub(super) fn to_error(e: HandshakeError) -> Error {
    Error::Refused {
        reason: e.to_string(),
    }
}

/// The codec of the handshake: its own small frame limit, the node's
/// checksum setting.
fn codec(cfg: &TransportConfig) -> FrameCodec {
    FrameCodec::new(wire::HANDSHAKE_MAX_FRAME, cfg.codec.checksum())
}

async fn read_frame<S: AsyncRead + Unpin>(
    io: &mut S,
    cfg: &TransportConfig,
    buf: &mut BytesMut,
) -> Result<Frame, HandshakeError> {
    let codec = codec(cfg);
    loop {
        match codec.decode(buf) {
            Ok(Some(frame)) => return Ok(frame),
            Ok(None) => {}
            Err(e) => return Err(HandshakeError::Malformed(e.to_string())),
        }
        match io.read_buf(buf).await {
            Ok(0) => {
                return Err(HandshakeError::Malformed(
                    "connection closed during the handshake".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(HandshakeError::Malformed(format!("read failed: {e}"))),
        }
    }
}

/// Reads the first frame of the peer, after telling its first bytes from
/// another protocol's.
async fn read_first<S: AsyncRead + Unpin>(
    io: &mut S,
    cfg: &TransportConfig,
    buf: &mut BytesMut,
    side: Side,
) -> Result<Frame, HandshakeError> {
    loop {
        match Opening::sniff(buf) {
            Some(Opening::Mesh) => return read_frame(io, cfg, buf).await,
            Some(opening) => {
                return Err(HandshakeError::WrongProtocol {
                    opening,
                    reason: explain(opening, side),
                })
            }
            None => {}
        }
        match io.read_buf(buf).await {
            Ok(0) => {
                return Err(HandshakeError::Malformed(
                    "connection closed during the handshake".into(),
                ))
            }
            Ok(_) => {}
            Err(e) => return Err(HandshakeError::Malformed(format!("read failed: {e}"))),
        }
    }
}

async fn write_frame<S: AsyncWrite + Unpin, T: serde::Serialize>(
    io: &mut S,
    cfg: &TransportConfig,
    kind: Kind,
    body: &T,
) -> Result<(), HandshakeError> {
    write_frame_with(io, codec(cfg), kind, body).await
}

async fn write_frame_with<S: AsyncWrite + Unpin, T: serde::Serialize>(
    io: &mut S,
    codec: FrameCodec,
    kind: Kind,
    body: &T,
) -> Result<(), HandshakeError> {
    let body = wire::encode(body).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    let mut out = BytesMut::new();
    codec
        .encode(kind, 0, &body, &mut out)
        .map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    io.write_all(&out)
        .await
        .map_err(|e| HandshakeError::Malformed(format!("write failed: {e}")))
}

/// The most characters of a peer's refusal kept (and logged).
const REASON_MAX: usize = 200;

/// Expects a frame of `kind` with body `T` (decoded within the handshake's
/// limits); an `Error` frame is the peer's refusal.
fn expect<T: serde::de::DeserializeOwned>(frame: Frame, kind: Kind) -> Result<T, HandshakeError> {
    if frame.kind == Kind::Error {
        let reason = match wire::decode_bounded::<Failure>(&frame.body).map(Failure::into_error) {
            Ok(Error::Refused { reason }) => reason,
            Ok(error) => error.to_string(),
            Err(e) => e.to_string(),
        };
        return Err(HandshakeError::Refused(wire::printable(
            &reason, REASON_MAX,
        )));
    }
    if frame.kind != kind {
        return Err(HandshakeError::Malformed(format!(
            "expected {kind:?}, got {:?}",
            frame.kind
        )));
    }
    wire::decode_bounded(&frame.body)
}

/// Tells the peer why we refuse, best effort, before closing: an `Error`
/// frame, or, to a peer of another protocol, what it understands (a
/// listener answers an HTTP client in HTTP; a dialer says nothing).
async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    cfg: &TransportConfig,
    e: &HandshakeError,
    side: Side,
) {
    match (e, side) {
        // They refused us: nothing to tell.
        (HandshakeError::Refused(_), _) => return,
        (HandshakeError::WrongProtocol { .. }, Side::Dialer) => {}
        (HandshakeError::WrongProtocol { opening, .. }, Side::Listener) => {
            if *opening == Opening::HttpRequest {
                answer_http(io, HTTP_ANSWER).await;
            } else {
                // A mesh TLS dialer recognises the frame magic.
                let _ = write_frame(io, cfg, Kind::Error, &refusal(&e.to_string())).await;
            }
            let _ = io.shutdown().await;
            linger(io).await;
            return;
        }
        _ => {
            let _ = write_frame(io, cfg, Kind::Error, &refusal(&e.to_string())).await;
        }
    }
    let _ = io.shutdown().await;
}

/// Ends a handshake: the peer and the bytes read past it, or, on failure,
/// the refusal told to the peer before the error is returned.
async fn settle<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    cfg: &TransportConfig,
    result: Result<Peer, HandshakeError>,
    buf: BytesMut,
    side: Side,
) -> Result<(Peer, BytesMut), HandshakeError> {
    match result {
        Ok(peer) => Ok((peer, buf)),
        Err(e) => {
            refuse(io, cfg, &e, side).await;
            Err(e)
        }
    }
}

/// The dialing side. Returns the peer and any bytes read past the handshake.
pub(super) async fn dial<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    cfg: &TransportConfig,
) -> Result<(Peer, BytesMut), HandshakeError> {
    let mut buf = BytesMut::with_capacity(4096);
    let result = async {
        let (dialer, hello) = DialHandshake::start(cfg.identity.clone(), cfg.cookie.clone())?;
        write_frame(io, cfg, Kind::Hello, &hello).await?;
        let first = read_first(io, cfg, &mut buf, Side::Dialer).await?;
        let challenge: Challenge = expect(first, Kind::Challenge)?;
        let (dialer, auth) = dialer.on_challenge(&challenge)?;
        write_frame(io, cfg, Kind::Auth, &auth).await?;
        let welcome: Welcome = expect(read_frame(io, cfg, &mut buf).await?, Kind::Welcome)?;
        dialer.on_welcome(&welcome)
    }
    .await;
    settle(io, cfg, result, buf, Side::Dialer).await
}

/// The listening side. Returns the peer and any bytes read past the handshake.
pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    cfg: &TransportConfig,
) -> Result<(Peer, BytesMut), HandshakeError> {
    let mut buf = BytesMut::with_capacity(4096);
    let result = async {
        let first = read_first(io, cfg, &mut buf, Side::Listener).await?;
        let hello: Hello = expect(first, Kind::Hello)?;
        let (listener, challenge) =
            ListenHandshake::on_hello(&cfg.identity, cfg.cookie.clone(), &hello)?;
        write_frame(io, cfg, Kind::Challenge, &challenge).await?;
        let auth: Auth = expect(read_frame(io, cfg, &mut buf).await?, Kind::Auth)?;
        let (peer, welcome) = listener.on_auth(&auth)?;
        write_frame(io, cfg, Kind::Welcome, &welcome).await?;
        Ok(peer)
    }
    .await;
    settle(io, cfg, result, buf, Side::Listener).await
}
