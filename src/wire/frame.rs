//! The frame codec (sans-IO): bytes in, frames out, and back.
//!
//! ```text
//! offset size  field
//!      0    4  length N of everything after this field, u32 big-endian
//!      4    2  magic "MS" (0x4d 0x53)
//!      6    1  protocol version (4)
//!      7    1  kind (see `Kind`)
//!      8    1  flags: bit 0 = body checksum present; other bits must be 0
//!      9    3  reserved, must be 0
//!     12    8  correlation id, u64 big-endian (0 when the kind has none)
//!     20    8  xxh3_64 of the body, big-endian (only with flag bit 0)
//!   20|28    -  body: rmp-serde, N - 16 (or N - 24) bytes
//! ```
//!
//! Limits: `N` must be at least 16 (24 with a checksum) and at most the
//! codec's `max_frame` (8 MiB by default; during the handshake, before the
//! peer is authenticated, [`HANDSHAKE_MAX_FRAME`], 64 KiB). The length is
//! checked as soon as its four bytes arrive, before any of the body is
//! buffered, so an oversized frame costs nothing to refuse.
//!
//! Decoding never panics and never allocates more than the frame it
//! accepted: every malformed input is a [`FrameError`], after which the
//! connection must be closed (the stream is no longer in sync).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use xxhash_rust::xxh3::xxh3_64;

/// The magic bytes that open every frame header.
pub const MAGIC: [u8; 2] = *b"MS";
/// The protocol version this build speaks.
///
/// Version 4 made the dialer prove first in the handshake, with a key
/// derived from the cookie by Argon2id: the listener says nothing about
/// itself before the dialer is authenticated (`Hello` and `Challenge`
/// carry only versions, the cluster and nonces; `Auth` and `Welcome` the
/// identities and proofs over the whole transcript).
/// Version 3 made wire tags hash the actor type's name too (two actor
/// types of one capability may share message names) and has peers
/// advertise the actor types they host in the handshake. Version 2
/// changed the `Error` body from the serialized Rust error enum to a
/// stable code and fields (`Failure`) and added the
/// `Cancel` kind. The rule, also in `PROTOCOL.md`: an optional trailing
/// body field with a default, or a new error code, needs no bump; any
/// change an older peer cannot decode (a new kind, a changed or removed
/// field) does. Peers of different versions refuse each other in the
/// handshake.
pub const VERSION: u8 = 4;
/// Bytes from the magic to the end of the correlation id.
pub const HEADER_LEN: usize = 16;
/// The largest frame accepted unless configured otherwise: 8 MiB.
pub const DEFAULT_MAX_FRAME: usize = 8 << 20;
/// The largest frame accepted (or sent) during the handshake, before the
/// peer is authenticated, whatever the codec's limit: 64 KiB.
pub const HANDSHAKE_MAX_FRAME: usize = 64 << 10;

const FLAG_CHECKSUM: u8 = 0b1;

/// What a frame carries.
///
/// `#[non_exhaustive]`: later versions add kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[non_exhaustive]
pub enum Kind {
    /// Handshake, dialer first: version, cluster, nonce.
    Hello = 1,
    /// Handshake, listener's answer: version and nonce.
    Challenge = 2,
    /// Handshake, the dialer's identity and proof.
    Auth = 3,
    /// Handshake done: the listener accepted the dialer's proof; its
    /// identity and proof.
    Welcome = 4,
    /// A request that wants a reply (correlation id set).
    Call = 5,
    /// A request without reply.
    Cast = 6,
    /// The reply to a call (same correlation id).
    Reply = 7,
    /// A failed call (same correlation id) or, with id 0, a refusal of the
    /// connection before it closes.
    Error = 8,
    /// Liveness probe (correlation id echoed by `Pong`).
    Ping = 9,
    /// Answer to a ping.
    Pong = 10,
    /// The sender's view of the membership.
    Membership = 11,
    /// The caller abandoned the call with this correlation id (version 2):
    /// the callee may skip it. Body `{}`; no answer.
    Cancel = 12,
    /// The sender is leaving the cluster: route nothing new to it. Answered
    /// by a `Pong` (same correlation id) once the receiver's routing no
    /// longer names it.
    Leave = 13,
    /// The sender retires this connection (maximum lifetime reached):
    /// send no new request on it. Answered by a `Pong` (same correlation
    /// id) once the receiver sends none (it has a fresh connection, or
    /// gave up waiting for one); the sender then answers what is in
    /// flight and closes. A node that predates it closes the connection
    /// on it (an unknown kind), which is the hard close it replaces.
    Retire = 14,
}

impl Kind {
    /// The kind with wire value `v`.
    pub fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Challenge,
            3 => Kind::Auth,
            4 => Kind::Welcome,
            5 => Kind::Call,
            6 => Kind::Cast,
            7 => Kind::Reply,
            8 => Kind::Error,
            9 => Kind::Ping,
            10 => Kind::Pong,
            11 => Kind::Membership,
            12 => Kind::Cancel,
            13 => Kind::Leave,
            14 => Kind::Retire,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// What it carries.
    pub kind: Kind,
    /// The correlation id.
    pub corr: u64,
    /// The rmp-serde body.
    pub body: Bytes,
}

/// Why bytes are not a frame. After any of these the stream is out of sync:
/// close the connection. `#[non_exhaustive]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The length prefix exceeds the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    Oversized {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The length prefix is smaller than a header.
    #[error("frame of {len} bytes is shorter than its header")]
    TooShort {
        /// The announced length.
        len: usize,
    },
    /// The magic bytes are wrong: not a mesh peer, or out of sync.
    #[error("bad magic {0:02x?}: not a mesh frame")]
    BadMagic([u8; 2]),
    /// The peer speaks another protocol version.
    #[error("protocol version {0} is not supported (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    /// Unknown frame kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// Unknown flag bits or non-zero reserved bytes.
    #[error("invalid flags {0:#04x}")]
    BadFlags(u8),
    /// The body does not match its checksum.
    #[error("body checksum mismatch")]
    ChecksumMismatch,
}

/// What the first bytes of a connection say the peer speaks, before they
/// are taken for a frame header ([`Opening::sniff`]). A plain node
/// dialing a TLS node reads a TLS record, whose first four bytes as a
/// frame length announce hundreds of megabytes: telling the protocol is
/// what lets both sides say what is wrong and how to fix it.
/// `#[non_exhaustive]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Opening {
    /// A mesh frame header: the magic at offset 4.
    Mesh,
    /// A TLS handshake record: `0x16 0x03 0x00..=0x04` (a ClientHello,
    /// or a server's answer).
    Tls,
    /// A TLS alert record: `0x15 0x03 0x00..=0x04` (a TLS server refusing
    /// what it read).
    TlsAlert,
    /// An HTTP request: `GET `, `POST `, `HEAD `, `PUT `, `DELETE `,
    /// `OPTIONS `, `PATCH `, `CONNECT `, `TRACE `, or the HTTP/2 preface
    /// `PRI * HTTP/2`.
    HttpRequest,
    /// An HTTP response: `HTTP/1.` or `HTTP/2 `.
    HttpResponse,
    /// An SSH banner: `SSH-`.
    Ssh,
    /// Anything else.
    Other {
        /// The first bytes read, `len` of them.
        bytes: [u8; OPENING_SHOWN],
        /// How many of `bytes` were read (at most [`OPENING_SHOWN`]).
        len: u8,
    },
}

/// The most bytes [`Opening::sniff`] needs to tell (the HTTP/2 preface).
#[cfg_attr(not(any(feature = "tls", feature = "internals")), allow(dead_code))]
pub const OPENING_MAX: usize = 12;
/// The most first bytes an [`Opening::Other`] keeps (and shows).
pub const OPENING_SHOWN: usize = 8;

const HTTP_REQUESTS: [&[u8]; 10] = [
    b"GET ",
    b"POST ",
    b"HEAD ",
    b"PUT ",
    b"DELETE ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
    b"PRI * HTTP/2",
];
const HTTP_RESPONSES: [&[u8]; 2] = [b"HTTP/1.", b"HTTP/2 "];
const SSH_BANNER: &[u8] = b"SSH-";

impl Opening {
    /// What the first bytes of a stream, `first`, are; `None` while they
    /// could still be either a mesh frame header or one of the openings
    /// above (at most [`OPENING_MAX`] bytes are needed to tell). Never
    /// panics.
    pub fn sniff(first: &[u8]) -> Option<Opening> {
        let b = first;
        if b.is_empty() {
            return None;
        }
        if b.len() >= 6 && b[4..6] == MAGIC {
            return Some(Opening::Mesh);
        }
        // A handshake frame is at most 64 KiB: its length starts with 0.
        let mut undecided = b[0] == 0 && b.len() < 6;
        if b[0] == 0x16 || b[0] == 0x15 {
            match b.get(1..3) {
                Some([0x03, 0x00..=0x04]) => {
                    return Some(if b[0] == 0x16 {
                        Opening::Tls
                    } else {
                        Opening::TlsAlert
                    })
                }
                Some(_) => {}
                None => undecided |= b.get(1).is_none_or(|&v| v == 0x03),
            }
        }
        let signatures = HTTP_REQUESTS
            .iter()
            .map(|s| (*s, Opening::HttpRequest))
            .chain(HTTP_RESPONSES.iter().map(|s| (*s, Opening::HttpResponse)))
            .chain([(SSH_BANNER, Opening::Ssh)]);
        for (signature, opening) in signatures {
            if b.starts_with(signature) {
                return Some(opening);
            }
            undecided |= signature.starts_with(b);
        }
        if undecided {
            return None;
        }
        Some(Opening::other(b))
    }

    /// [`Opening::Other`] with the first bytes of `first`.
    pub fn other(first: &[u8]) -> Opening {
        let len = first.len().min(OPENING_SHOWN);
        let mut bytes = [0; OPENING_SHOWN];
        bytes[..len].copy_from_slice(&first[..len]);
        Opening::Other {
            bytes,
            len: len as u8,
        }
    }

    /// For [`Opening::Other`], its first bytes in hex (`"16 03 01"`);
    /// empty for the others.
    pub fn first_bytes_hex(&self) -> String {
        match self {
            Opening::Other { bytes, len } => bytes[..(*len as usize).min(OPENING_SHOWN)]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        }
    }
}

/// Encodes and decodes frames. Cheap to copy.
#[derive(Debug, Clone, Copy)]
pub struct FrameCodec {
    max_frame: usize,
    checksum: bool,
}

impl Default for FrameCodec {
    fn default() -> Self {
        FrameCodec {
            max_frame: DEFAULT_MAX_FRAME,
            checksum: false,
        }
    }
}

impl FrameCodec {
    /// A codec refusing frames over `max_frame` bytes, adding body checksums
    /// to the frames it encodes if `checksum` (it verifies them whenever a
    /// frame carries one).
    pub fn new(max_frame: usize, checksum: bool) -> Self {
        FrameCodec {
            max_frame: max_frame.min(u32::MAX as usize),
            checksum,
        }
    }

    /// The size limit.
    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Whether encoded frames carry a body checksum.
    pub fn checksum(&self) -> bool {
        self.checksum
    }

    /// Appends one frame to `dst`.
    pub fn encode(
        &self,
        kind: Kind,
        corr: u64,
        body: &[u8],
        dst: &mut BytesMut,
    ) -> Result<(), FrameError> {
        let extra = if self.checksum { 8 } else { 0 };
        let len = HEADER_LEN + extra + body.len();
        if len > self.max_frame {
            return Err(FrameError::Oversized {
                len,
                max: self.max_frame,
            });
        }
        dst.reserve(4 + len);
        self.put_header(dst, len as u32, kind, corr);
        if self.checksum {
            dst.put_u64(xxh3_64(body));
        }
        dst.put_slice(body);
        Ok(())
    }

    /// The length prefix `len` and the 16 header bytes, as `encode`
    /// writes them (the checksum, if any, follows).
    fn put_header(&self, dst: &mut BytesMut, len: u32, kind: Kind, corr: u64) {
        dst.put_u32(len);
        dst.put_slice(&MAGIC);
        dst.put_u8(VERSION);
        dst.put_u8(kind as u8);
        dst.put_u8(if self.checksum { FLAG_CHECKSUM } else { 0 });
        dst.put_slice(&[0, 0, 0]);
        dst.put_u64(corr);
    }

    /// Appends one frame to `dst` whose body `body` writes into `dst`
    /// itself (no buffer of its own, no copy). On any error (the body's,
    /// or [`FrameError::Oversized`] as `Error::Codec`) `dst` is left as it
    /// was.
    pub(crate) fn encode_with(
        &self,
        kind: Kind,
        corr: u64,
        dst: &mut BytesMut,
        body: impl FnOnce(&mut BytesMut) -> Result<(), crate::Error>,
    ) -> Result<(), crate::Error> {
        let start = dst.len();
        let extra = if self.checksum { 8 } else { 0 };
        dst.reserve(4 + HEADER_LEN + extra + 64);
        self.put_header(dst, 0, kind, corr); // the length, once the body is written
        if self.checksum {
            dst.put_u64(0); // the checksum, once the body is written
        }
        let body_at = dst.len();
        if let Err(e) = body(dst) {
            dst.truncate(start);
            return Err(e);
        }
        let len = dst.len() - start - 4;
        if len > self.max_frame {
            dst.truncate(start);
            let oversized = FrameError::Oversized {
                len,
                max: self.max_frame,
            };
            return Err(crate::Error::Codec(oversized.to_string()));
        }
        dst[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
        if self.checksum {
            let sum = xxh3_64(&dst[body_at..]);
            dst[body_at - 8..body_at].copy_from_slice(&sum.to_be_bytes());
        }
        Ok(())
    }

    /// Takes one frame off the front of `src`, if it holds a whole one.
    /// `Ok(None)`: need more bytes (and `src` has room reserved for them).
    pub fn decode(&self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if src.len() < 4 {
            return Ok(None);
        }
        let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
        if len > self.max_frame {
            return Err(FrameError::Oversized {
                len,
                max: self.max_frame,
            });
        }
        if len < HEADER_LEN {
            return Err(FrameError::TooShort { len });
        }
        // Check the header as soon as it is here, before the body arrives.
        if src.len() >= 4 + HEADER_LEN {
            check_header(&src[4..4 + HEADER_LEN], len)?;
        }
        if src.len() < 4 + len {
            src.reserve(4 + len - src.len());
            return Ok(None);
        }
        let header = &src[4..4 + HEADER_LEN];
        check_header(header, len)?;
        let kind = Kind::from_u8(header[3]).ok_or(FrameError::UnknownKind(header[3]))?;
        let has_checksum = header[4] & FLAG_CHECKSUM != 0;
        let corr = u64::from_be_bytes([
            header[8], header[9], header[10], header[11], header[12], header[13], header[14],
            header[15],
        ]);
        src.advance(4 + HEADER_LEN);
        let mut body = src.split_to(len - HEADER_LEN).freeze();
        if has_checksum {
            let want = body.get_u64();
            if xxh3_64(&body) != want {
                return Err(FrameError::ChecksumMismatch);
            }
        }
        Ok(Some(Frame { kind, corr, body }))
    }
}

/// Validates the 16 header bytes of a frame announcing `len` bytes.
fn check_header(h: &[u8], len: usize) -> Result<(), FrameError> {
    if h[0..2] != MAGIC {
        return Err(FrameError::BadMagic([h[0], h[1]]));
    }
    if h[2] != VERSION {
        return Err(FrameError::UnsupportedVersion(h[2]));
    }
    if Kind::from_u8(h[3]).is_none() {
        return Err(FrameError::UnknownKind(h[3]));
    }
    if h[4] & !FLAG_CHECKSUM != 0 || h[5..8] != [0, 0, 0] {
        return Err(FrameError::BadFlags(h[4]));
    }
    if h[4] & FLAG_CHECKSUM != 0 && len < HEADER_LEN + 8 {
        return Err(FrameError::TooShort { len });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(codec: FrameCodec, kind: Kind, corr: u64, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        codec.encode(kind, corr, body, &mut b).unwrap();
        b
    }

    #[test]
    fn round_trip_with_and_without_checksum() {
        for checksum in [false, true] {
            let codec = FrameCodec::new(1024, checksum);
            let mut buf = encoded(codec, Kind::Call, 42, b"hello");
            buf.extend_from_slice(&encoded(codec, Kind::Pong, u64::MAX, b""));
            let a = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(
                (a.kind, a.corr, &a.body[..]),
                (Kind::Call, 42, &b"hello"[..])
            );
            let b = codec.decode(&mut buf).unwrap().unwrap();
            assert_eq!(
                (b.kind, b.corr, &b.body[..]),
                (Kind::Pong, u64::MAX, &b""[..])
            );
            assert!(buf.is_empty());
            assert_eq!(codec.decode(&mut buf), Ok(None));
        }
    }

    #[test]
    fn layout_is_as_documented() {
        let buf = encoded(
            FrameCodec::default(),
            Kind::Reply,
            0x0102030405060708,
            &[0xaa],
        );
        assert_eq!(
            &buf[..],
            &[0, 0, 0, 17, b'M', b'S', 4, 7, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0xaa]
        );
    }

    #[test]
    fn version_and_kinds_are_pinned() {
        assert_eq!(VERSION, 4);
        assert_eq!(HANDSHAKE_MAX_FRAME, 65_536);
        for v in 1..=14u8 {
            let kind = Kind::from_u8(v).expect("kinds 1..=14 exist");
            assert_eq!(kind as u8, v);
        }
        assert_eq!(Kind::from_u8(12), Some(Kind::Cancel));
        assert_eq!(Kind::from_u8(13), Some(Kind::Leave));
        assert_eq!(Kind::from_u8(14), Some(Kind::Retire));
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(15), None);
    }

    #[test]
    fn partial_input_waits_for_more() {
        let codec = FrameCodec::default();
        let full = encoded(codec, Kind::Cast, 7, &[1; 100]);
        let mut buf = BytesMut::new();
        for (i, byte) in full.iter().enumerate() {
            assert_eq!(codec.decode(&mut buf), Ok(None), "after {i} bytes");
            buf.put_u8(*byte);
        }
        assert_eq!(codec.decode(&mut buf).unwrap().unwrap().body.len(), 100);
    }

    #[test]
    fn oversized_is_refused_from_the_length_alone() {
        let codec = FrameCodec::new(64, false);
        let mut buf = BytesMut::from(&[0u8, 0, 1, 0][..]);
        assert_eq!(
            codec.decode(&mut buf),
            Err(FrameError::Oversized { len: 256, max: 64 })
        );
        let mut out = BytesMut::new();
        assert!(matches!(
            codec.encode(Kind::Call, 1, &[0; 64], &mut out),
            Err(FrameError::Oversized { .. })
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn bad_headers_are_refused_before_the_body_arrives() {
        let codec = FrameCodec::default();
        let good = encoded(codec, Kind::Call, 1, &[0; 1000]);
        let cases: [(usize, u8, FrameError); 5] = [
            (4, b'X', FrameError::BadMagic([b'X', b'S'])),
            (6, 9, FrameError::UnsupportedVersion(9)),
            (7, 99, FrameError::UnknownKind(99)),
            (8, 0x80, FrameError::BadFlags(0x80)),
            (10, 1, FrameError::BadFlags(0)),
        ];
        for (at, value, want) in cases {
            let mut bad = BytesMut::from(&good[..4 + HEADER_LEN]);
            bad[at] = value;
            assert_eq!(codec.decode(&mut bad), Err(want));
        }
        let mut short = BytesMut::from(&[0u8, 0, 0, 3][..]);
        assert_eq!(
            codec.decode(&mut short),
            Err(FrameError::TooShort { len: 3 })
        );
    }

    #[test]
    fn openings_of_other_protocols_are_told_from_a_mesh_frame() {
        let mut hello = BytesMut::new();
        FrameCodec::new(HANDSHAKE_MAX_FRAME, false)
            .encode(Kind::Hello, 0, b"\x80", &mut hello)
            .unwrap();
        let cases: [(&[u8], Option<Opening>); 16] = [
            (&hello, Some(Opening::Mesh)),
            (&hello[..5], None),
            (&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01], Some(Opening::Tls)),
            (&[0x16, 0x03, 0x04], Some(Opening::Tls)),
            (
                &[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 0x0a],
                Some(Opening::TlsAlert),
            ),
            (&[0x16, 0x03], None),
            (b"GET / HTTP/1.1\r\n", Some(Opening::HttpRequest)),
            (b"POST /x HTTP/1.1", Some(Opening::HttpRequest)),
            (
                b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
                Some(Opening::HttpRequest),
            ),
            (b"PRI * HT", None),
            (b"HTTP/1.1 400 Bad Request\r\n", Some(Opening::HttpResponse)),
            (b"SSH-2.0-OpenSSH_9.6\r\n", Some(Opening::Ssh)),
            (b"GE", None),
            (b"", None),
            (b"\x05\x01\x00", Some(Opening::other(b"\x05\x01\x00"))),
            (
                b"\x16\x01\x02\x03\x04\x05\x06\x07\x08\x09",
                Some(Opening::other(b"\x16\x01\x02\x03\x04\x05\x06\x07")),
            ),
        ];
        for (bytes, want) in cases {
            assert_eq!(Opening::sniff(bytes), want, "{bytes:02x?}");
        }
        let other = Opening::other(b"\x00\x00\x00\x10XX\x04\x01\x00\x00");
        assert_eq!(Opening::sniff(b"\x00\x00\x00\x10XX\x04\x01"), Some(other));
        assert_eq!(other.first_bytes_hex(), "00 00 00 10 58 58 04 01");
        // Never more than 12 bytes to tell, whatever they are.
        for first in 0..=255u8 {
            let mut b = [b'A'; OPENING_MAX];
            b[0] = first;
            assert!(Opening::sniff(&b).is_some(), "{first:02x}");
        }
    }

    #[test]
    fn a_corrupted_body_fails_its_checksum() {
        let codec = FrameCodec::new(1024, true);
        let mut buf = encoded(codec, Kind::Call, 1, b"payload");
        let last = buf.len() - 1;
        buf[last] ^= 1;
        assert_eq!(codec.decode(&mut buf), Err(FrameError::ChecksumMismatch));
    }

    #[test]
    fn a_frame_written_in_place_is_the_frame_encoded_from_its_body() {
        for checksum in [false, true] {
            let codec = FrameCodec::new(1024, checksum);
            for body in [&b""[..], b"\x91\xc4\x01x", &[7u8; 600]] {
                let mut by_copy = BytesMut::from(&b"before"[..]);
                codec.encode(Kind::Reply, 9, body, &mut by_copy).unwrap();
                let mut in_place = BytesMut::from(&b"before"[..]);
                codec
                    .encode_with(Kind::Reply, 9, &mut in_place, |d| {
                        d.put_slice(body);
                        Ok(())
                    })
                    .unwrap();
                assert_eq!(by_copy, in_place);
            }
            // Too big, or the body fails: nothing is left behind.
            let mut dst = BytesMut::from(&b"before"[..]);
            let big = codec.encode_with(Kind::Reply, 9, &mut dst, |d| {
                d.put_slice(&[0; 2048]);
                Ok(())
            });
            assert!(matches!(big, Err(crate::Error::Codec(_))));
            let failed = codec.encode_with(Kind::Reply, 9, &mut dst, |d| {
                d.put_slice(b"partial");
                Err(crate::Error::Codec("no".into()))
            });
            assert!(failed.is_err());
            assert_eq!(&dst[..], b"before");
        }
    }
}
