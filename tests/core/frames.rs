//! The frame decoder against random and mutated input: it never panics,
//! never yields a frame larger than its limit, and round-trips what the
//! encoder writes. Bodies decode to errors, not panics, whatever the bytes.
//!
//! CI runs 2 000 cases per property; the large run is
//! `PROPTEST_CASES=1000000 cargo test --release --test core frames::`.

use bytes::BytesMut;
use mesh::wire::{self, FrameCodec, FrameError, Kind};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000)
}

fn kind() -> impl Strategy<Value = Kind> {
    (1u8..=13).prop_map(|k| Kind::from_u8(k).expect("kinds 1..=13 exist"))
}

/// Decodes everything in `bytes`; every outcome is fine except a panic or a
/// frame over the limit.
fn drain(codec: FrameCodec, bytes: &[u8]) -> Result<usize, FrameError> {
    let mut buf = BytesMut::from(bytes);
    let mut frames = 0;
    while let Some(frame) = codec.decode(&mut buf)? {
        assert!(frame.body.len() <= codec.max_frame());
        // Bodies from the wire decode to errors, never panics.
        let _ = wire::decode::<wire::CallFrame>(&frame.body);
        let _ = wire::decode::<wire::Hello>(&frame.body);
        let _ = wire::decode::<wire::Failure>(&frame.body);
        let _ = wire::decode::<wire::MembershipFrame>(&frame.body);
        // The handshake's bounded decoding, too.
        let _ = wire::decode_bounded::<wire::Hello>(&frame.body);
        let _ = wire::decode_bounded::<wire::Auth>(&frame.body);
        let _ = wire::decode_bounded::<wire::Welcome>(&frame.body);
        frames += 1;
    }
    Ok(frames)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases()))]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), checksum in any::<bool>()) {
        let _ = drain(FrameCodec::new(256, checksum), &bytes);
    }

    #[test]
    fn bounded_decoding_of_random_bodies_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = wire::decode_bounded::<wire::Auth>(&bytes);
        let _ = wire::decode_bounded::<wire::Failure>(&bytes);
    }

    #[test]
    fn frames_round_trip(
        frames in proptest::collection::vec((kind(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..200)), 1..5),
        checksum in any::<bool>(),
    ) {
        let codec = FrameCodec::new(1024, checksum);
        let mut buf = BytesMut::new();
        for (k, corr, body) in &frames {
            codec.encode(*k, *corr, body, &mut buf).unwrap();
        }
        for (k, corr, body) in &frames {
            let f = codec.decode(&mut buf).unwrap().unwrap();
            prop_assert_eq!((f.kind, f.corr, &f.body[..]), (*k, *corr, &body[..]));
        }
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn mutated_frames_never_panic(
        k in kind(),
        corr in any::<u64>(),
        body in proptest::collection::vec(any::<u8>(), 0..100),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        checksum in any::<bool>(),
    ) {
        let codec = FrameCodec::new(512, checksum);
        let mut buf = BytesMut::new();
        codec.encode(k, corr, &body, &mut buf).unwrap();
        let mut bytes = buf.to_vec();
        for (at, xor) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= xor;
        }
        bytes.truncate(cut.index(bytes.len() + 1));
        let _ = drain(codec, &bytes);
    }

    #[test]
    fn a_flipped_body_byte_fails_the_checksum(
        body in proptest::collection::vec(any::<u8>(), 1..100),
        at in any::<prop::sample::Index>(),
        xor in 1u8..,
    ) {
        let codec = FrameCodec::new(512, true);
        let mut buf = BytesMut::new();
        codec.encode(Kind::Call, 1, &body, &mut buf).unwrap();
        let start = buf.len() - body.len();
        let i = start + at.index(body.len());
        buf[i] ^= xor;
        prop_assert_eq!(codec.decode(&mut buf), Err(FrameError::ChecksumMismatch));
    }
}
