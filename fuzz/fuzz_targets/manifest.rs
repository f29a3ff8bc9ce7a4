//! The manifest decoder on arbitrary input: errors, never panics; a manifest
//! it accepts is valid and round-trips, and its layout arithmetic is safe.
#![no_main]

use cairn_protocol::manifest::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::decode(data) {
        assert!(m.validate().is_ok());
        assert_eq!(Manifest::decode(&m.encode()).expect("re-decodes"), m);
        for i in 0..m.segments.len() as u64 + 1 {
            let _ = (m.segment_len(i), m.piece_len(i));
        }
        let _ = m.segments_for(0..m.stream_len);
        let _ = m.locate();
    }
});
