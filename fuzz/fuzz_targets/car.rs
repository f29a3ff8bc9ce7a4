//! The CAR reader on arbitrary input: errors, never panics, and every block
//! it yields matches its CID.
#![no_main]

use cairn_protocol::block;
use cairn_protocol::car::CarReader;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(reader) = CarReader::new(data) {
        for item in reader {
            match item {
                Ok((cid, bytes)) => assert!(block::verify(&cid, &bytes).is_ok()),
                Err(_) => break,
            }
        }
    }
});
