//! Running the sans-IO handshake over a stream.
//!
//! Until the peer is authenticated, frames are read with the handshake's
//! own small limit ([`wire::HANDSHAKE_MAX_FRAME`]) and bodies decoded with
//! [`wire::decode_bounded`]; what a refusal says is escaped and cut before
//! it is logged.

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::TransportConfig;
use crate::wire::{
    self, Auth, Challenge, Dialer, Failure, Frame, FrameCodec, HandshakeError, Hello, Kind,
    Listener, Peer, Welcome,
};
use crate::Error;

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

async fn write_frame<S: AsyncWrite + Unpin, T: serde::Serialize>(
    io: &mut S,
    cfg: &TransportConfig,
    kind: Kind,
    body: &T,
) -> Result<(), HandshakeError> {
    let body = wire::encode(body).map_err(|e| HandshakeError::Malformed(e.to_string()))?;
    let mut out = BytesMut::new();
    codec(cfg)
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

/// Tells the peer why we refuse, best effort, before closing.
async fn refuse<S: AsyncWrite + Unpin>(io: &mut S, cfg: &TransportConfig, e: &HandshakeError) {
    if matches!(e, HandshakeError::Refused(_)) {
        return; // they refused us: nothing to tell
    }
    let failure = Failure::from_error(&Error::Refused {
        reason: e.to_string(),
    });
    let _ = write_frame(io, cfg, Kind::Error, &failure).await;
    let _ = io.shutdown().await;
}

/// Ends a handshake: the peer and the bytes read past it, or, on failure,
/// the refusal told to the peer before the error is returned.
async fn settle<S: AsyncWrite + Unpin>(
    io: &mut S,
    cfg: &TransportConfig,
    result: Result<Peer, HandshakeError>,
    buf: BytesMut,
) -> Result<(Peer, BytesMut), HandshakeError> {
    match result {
        Ok(peer) => Ok((peer, buf)),
        Err(e) => {
            refuse(io, cfg, &e).await;
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
        let (dialer, hello) = Dialer::start(cfg.identity.clone(), cfg.cookie.clone())?;
        write_frame(io, cfg, Kind::Hello, &hello).await?;
        let challenge: Challenge = expect(read_frame(io, cfg, &mut buf).await?, Kind::Challenge)?;
        let (dialer, auth) = dialer.on_challenge(&challenge)?;
        write_frame(io, cfg, Kind::Auth, &auth).await?;
        let welcome: Welcome = expect(read_frame(io, cfg, &mut buf).await?, Kind::Welcome)?;
        dialer.on_welcome(&welcome)
    }
    .await;
    settle(io, cfg, result, buf).await
}

/// The listening side. Returns the peer and any bytes read past the handshake.
pub(super) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    cfg: &TransportConfig,
) -> Result<(Peer, BytesMut), HandshakeError> {
    let mut buf = BytesMut::with_capacity(4096);
    let result = async {
        let hello: Hello = expect(read_frame(io, cfg, &mut buf).await?, Kind::Hello)?;
        let (listener, challenge) = Listener::on_hello(&cfg.identity, cfg.cookie.clone(), &hello)?;
        write_frame(io, cfg, Kind::Challenge, &challenge).await?;
        let auth: Auth = expect(read_frame(io, cfg, &mut buf).await?, Kind::Auth)?;
        let (peer, welcome) = listener.on_auth(&auth)?;
        write_frame(io, cfg, Kind::Welcome, &welcome).await?;
        Ok(peer)
    }
    .await;
    settle(io, cfg, result, buf).await
}
