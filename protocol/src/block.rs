//! Content identifiers and block verification.
//!
//! Cairn uses CIDv1 only. Content blocks are addressed as IPFS addresses them
//! (sha2-256; raw or dag-pb); pieces use BLAKE3, whose tree doubles as the
//! commitment that audit proofs and verified ranges are checked against.

use cid::{Cid, Version};
use multihash::Multihash;
use sha2::Digest as _;

/// Multicodec of raw bytes.
pub const RAW: u64 = 0x55;
/// Multicodec of dag-pb (UnixFS nodes).
pub const DAG_PB: u64 = 0x70;
/// Multicodec of DAG-CBOR (manifests).
pub const DAG_CBOR: u64 = 0x71;
/// Multihash code of sha2-256.
pub const SHA2_256: u64 = 0x12;
/// Multihash code of BLAKE3 (32-byte digest).
pub const BLAKE3: u64 = 0x1e;

/// A block whose bytes do not hash to its CID, or whose hash we cannot check.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("block {cid} does not match its CID")]
    Mismatch { cid: Cid },
    #[error("block {cid} uses hash function 0x{code:x}, which Cairn does not verify")]
    UnsupportedHash { cid: Cid, code: u64 },
}

fn wrap(code: u64, digest: &[u8; 32]) -> Multihash<64> {
    Multihash::wrap(code, digest).expect("a 32-byte digest fits a 64-byte multihash")
}

/// The sha2-256 CIDv1 of `data` under `codec`, as IPFS computes it.
pub fn sha256_cid(codec: u64, data: &[u8]) -> Cid {
    Cid::new_v1(codec, wrap(SHA2_256, &sha2::Sha256::digest(data).into()))
}

/// The sha2-256 CID of dag-pb block `data`: CIDv0 (dag-pb is implied) or
/// CIDv1.
pub fn dag_pb_cid(version: Version, data: &[u8]) -> Cid {
    match version {
        Version::V0 => Cid::new_v0(wrap(SHA2_256, &sha2::Sha256::digest(data).into()))
            .expect("a sha2-256 multihash makes a CIDv0"),
        Version::V1 => sha256_cid(DAG_PB, data),
    }
}

/// The BLAKE3 CIDv1 (raw codec) of a piece.
pub fn piece_cid(data: &[u8]) -> Cid {
    piece_cid_from_hash(blake3::hash(data))
}

/// The piece CID whose BLAKE3 root is `hash`.
pub fn piece_cid_from_hash(hash: blake3::Hash) -> Cid {
    Cid::new_v1(RAW, wrap(BLAKE3, hash.as_bytes()))
}

/// The BLAKE3 root a piece CID commits to, if it is one.
pub fn blake3_root(cid: &Cid) -> Option<blake3::Hash> {
    let mh = cid.hash();
    if mh.code() != BLAKE3 || cid.codec() != RAW {
        return None;
    }
    <[u8; 32]>::try_from(mh.digest())
        .ok()
        .map(blake3::Hash::from_bytes)
}

/// Checks that `data` hashes to `cid`.
pub fn verify(cid: &Cid, data: &[u8]) -> Result<(), VerifyError> {
    let mh = cid.hash();
    let ok = match mh.code() {
        SHA2_256 => mh.digest() == sha2::Sha256::digest(data).as_slice(),
        BLAKE3 => mh.digest() == blake3::hash(data).as_bytes(),
        code => return Err(VerifyError::UnsupportedHash { cid: *cid, code }),
    };
    if ok {
        Ok(())
    } else {
        Err(VerifyError::Mismatch { cid: *cid })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_raw_block_has_the_ipfs_cid() {
        // `ipfs add --cid-version 1` of an empty file.
        assert_eq!(
            sha256_cid(RAW, b"").to_string(),
            "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        );
    }

    #[test]
    fn verify_accepts_the_right_bytes_and_rejects_others() {
        let cid = sha256_cid(RAW, b"hello");
        assert_eq!(verify(&cid, b"hello"), Ok(()));
        assert_eq!(verify(&cid, b"hellO"), Err(VerifyError::Mismatch { cid }));
        let piece = piece_cid(b"piece");
        assert_eq!(verify(&piece, b"piece"), Ok(()));
        assert!(verify(&piece, b"piecE").is_err());
        assert_eq!(blake3_root(&piece), Some(blake3::hash(b"piece")));
        assert_eq!(blake3_root(&cid), None);
    }
}
