//! Audit proofs and verified ranges from a hostile holder: errors, never
//! panics, and nothing but the true piece bytes ever verifies.
#![no_main]

use cairn_protocol::block;
use cairn_protocol::proof::{self, AuditProof};
use libfuzzer_sys::fuzz_target;

const PIECE: &[u8] = &[7u8; 5000];

fuzz_target!(|data: &[u8]| {
    if data.len() < 10 {
        return;
    }
    let cid = block::piece_cid(PIECE);
    let size = u64::from(u16::from_le_bytes([data[0], data[1]]));
    let nonce = [data[2]; 32];
    let proof = AuditProof { size, encoded: data[10..].to_vec() };
    let _ = proof::verify(&cid, &nonce, &proof);
    let start = u64::from(u16::from_le_bytes([data[3], data[4]]));
    let len = u64::from(u16::from_le_bytes([data[5], data[6]]));
    if let Ok(bytes) = proof::decode_range(&cid, size, start..start + len, &data[10..]) {
        assert_eq!(bytes, PIECE[start as usize..(start + len) as usize]);
    }
});
