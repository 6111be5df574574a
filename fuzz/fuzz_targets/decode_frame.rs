//! Feeds arbitrary bytes to the frame decoder and every body type.
//! Run: `cargo fuzz run decode_frame` (from the repository root).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mesh::wire::{self, FrameCodec};

fuzz_target!(|data: &[u8]| {
    for checksum in [false, true] {
        let codec = FrameCodec::new(4096, checksum);
        let mut buf = BytesMut::from(data);
        while let Ok(Some(frame)) = codec.decode(&mut buf) {
            assert!(frame.body.len() <= codec.max_frame());
            let _ = wire::decode::<wire::Hello>(&frame.body);
            let _ = wire::decode::<wire::Challenge>(&frame.body);
            let _ = wire::decode::<wire::CallFrame>(&frame.body);
            let _ = wire::decode::<wire::Failure>(&frame.body);
            let _ = wire::decode::<wire::MembershipFrame>(&frame.body);
        }
    }
});
