//! Every wire message decoder, framed and unframed: errors, never panics;
//! what decodes re-encodes to something that decodes to the same message;
//! decoding a shared body gives what decoding a slice does.
#![no_main]

use cairn_protocol::wire::{self, *};
use libfuzzer_sys::fuzz_target;

fn check<M: Message + PartialEq + std::fmt::Debug>(data: &[u8]) {
    let shared = M::decode_shared(bytes::Bytes::copy_from_slice(data)).ok();
    assert_eq!(shared, wire::decode::<M>(data).ok());
    if let Ok(msg) = wire::decode::<M>(data) {
        let again = wire::encode(&msg).expect("a decoded message re-encodes");
        assert_eq!(wire::decode::<M>(&again).expect("re-decodes"), msg);
    }
    let _ = wire::read_message::<M>(&mut &data[..]);
}

fuzz_target!(|data: &[u8]| {
    check::<StoreRequest>(data);
    check::<StoreResponse>(data);
    check::<FetchRequest>(data);
    check::<FetchResponse>(data);
    check::<AuditRequest>(data);
    check::<AuditResponse>(data);
});
