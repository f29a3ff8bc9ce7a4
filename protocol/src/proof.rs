//! Verified ranges of a piece, and audit proofs.
//!
//! A piece CID is the BLAKE3 hash of the piece, and BLAKE3 is a Merkle tree
//! over 1 KiB chunks, so the CID is itself the commitment: any set of chunks
//! can be proven against it with the sibling hashes on their paths (the Bao
//! slice format, computed with `bao-tree`). Nothing beyond the CID has to be
//! stored or trusted.
//!
//! An audit challenge is a fresh 32-byte nonce. The nonce and the piece size
//! select [`SAMPLES`] chunk positions; the answer carries those chunks, the
//! last chunk (which authenticates the claimed size) and their proofs. A
//! holder missing a fraction `f` of the piece's chunks passes with
//! probability `(1 - f)^SAMPLES`.

use std::ops::Range;

use bao_tree::io::outboard::PreOrderMemOutboard;
use bao_tree::io::sync::{DecodeResponseIter, Outboard, encode_ranges, encode_ranges_validated};
use bao_tree::io::{BaoContentItem, DecodeError};
use bao_tree::{BaoTree, BlockSize, ChunkNum, ChunkRanges};
use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::block;
use crate::manifest::MAX_PIECE_SIZE;

/// Bytes per BLAKE3 chunk, the unit of sampling.
pub const CHUNK: u64 = 1024;
/// Chunks sampled per audit: a holder missing 5% of a piece passes one audit
/// with probability 0.95^64 ≈ 3.7%, missing 10% with 0.12%.
pub const SAMPLES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error("{cid} is not a BLAKE3 piece CID")]
    NotAPiece { cid: Cid },
    #[error("piece size {size} is not in 1..={MAX_PIECE_SIZE}")]
    Size { size: u64 },
    #[error("range {start}..{end} is not within a piece of {size} bytes")]
    Range { start: u64, end: u64, size: u64 },
    #[error("proof for {cid} does not verify: {reason}")]
    Invalid { cid: Cid, reason: String },
}

fn tree(size: u64) -> BaoTree {
    BaoTree::new(size, BlockSize::ZERO)
}

fn chunks(range: Range<u64>) -> ChunkRanges {
    ChunkRanges::from(ChunkNum(range.start / CHUNK)..ChunkNum(range.end.div_ceil(CHUNK)))
}

/// Encodes `ranges` of `piece` with their proofs.
fn encode(piece: &[u8], ranges: &ChunkRanges) -> Vec<u8> {
    let outboard = PreOrderMemOutboard::create(piece, BlockSize::ZERO);
    let mut out = Vec::new();
    // Writing to a Vec from memory that we just hashed cannot fail.
    encode_ranges_validated(piece, &outboard, ranges, &mut out)
        .expect("encoding in-memory data against its own outboard");
    out
}

/// Checks `encoded` against the piece CID and returns the verified bytes of
/// the chunks in `ranges`, as (offset, bytes) in order.
fn decode(
    cid: &Cid,
    size: u64,
    ranges: &ChunkRanges,
    encoded: &[u8],
) -> Result<Vec<(u64, Vec<u8>)>, ProofError> {
    let root = block::blake3_root(cid).ok_or(ProofError::NotAPiece { cid: *cid })?;
    check_size(size)?;
    let invalid = |reason: String| ProofError::Invalid { cid: *cid, reason };
    let mut reader = encoded;
    let mut leaves = Vec::new();
    for item in DecodeResponseIter::new(root, tree(size), &mut reader, ranges) {
        match item {
            Ok(BaoContentItem::Leaf(leaf)) => leaves.push((leaf.offset, leaf.data.to_vec())),
            Ok(BaoContentItem::Parent(_)) => {}
            Err(DecodeError::Io(e)) => return Err(invalid(format!("truncated: {e}"))),
            Err(e) => return Err(invalid(format!("{e:?}"))),
        }
    }
    if !reader.is_empty() {
        return Err(invalid(format!("{} bytes after the proof", reader.len())));
    }
    Ok(leaves)
}

/// Bytes `range` of `piece` with the proof that they belong to it.
pub fn encode_range(piece: &[u8], range: Range<u64>) -> Result<Vec<u8>, ProofError> {
    let size = check_size(piece.len() as u64)?;
    check_range(&range, size)?;
    Ok(encode(piece, &chunks(range)))
}

/// Verifies an [`encode_range`] answer for bytes `range` of the piece `cid`
/// of `size` bytes, and returns exactly those bytes.
pub fn decode_range(
    cid: &Cid,
    size: u64,
    range: Range<u64>,
    encoded: &[u8],
) -> Result<Vec<u8>, ProofError> {
    check_range(&range, size)?;
    let leaves = decode(cid, size, &chunks(range.clone()), encoded)?;
    let mut out = Vec::with_capacity((range.end - range.start) as usize);
    for (offset, data) in leaves {
        let end = offset + data.len() as u64;
        let (from, to) = (range.start.max(offset), range.end.min(end));
        if from < to {
            out.extend_from_slice(&data[(from - offset) as usize..(to - offset) as usize]);
        }
    }
    Ok(out)
}

/// The chunks an audit with `nonce` samples in a piece of `size` bytes: a
/// BLAKE3 XOF of the nonce and size drawn [`SAMPLES`] times (with
/// replacement), plus the last chunk.
pub fn sample_chunks(nonce: &[u8; 32], size: u64) -> ChunkRanges {
    let n = size.div_ceil(CHUNK).max(1);
    let mut xof = blake3::Hasher::new_derive_key("cairn audit v1 sample positions")
        .update(nonce)
        .update(&size.to_le_bytes())
        .finalize_xof();
    let mut ranges = ChunkRanges::from(ChunkNum(n - 1)..ChunkNum(n));
    for _ in 0..SAMPLES {
        let mut word = [0u8; 8];
        xof.fill(&mut word);
        let c = u64::from_le_bytes(word) % n;
        ranges |= ChunkRanges::from(ChunkNum(c)..ChunkNum(c + 1));
    }
    ranges
}

/// An audit answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditProof {
    /// The piece's size, authenticated by the last chunk's proof.
    pub size: u64,
    /// The sampled chunks and their proofs (Bao slice format, no length prefix).
    #[serde(with = "serde_bytes")]
    pub encoded: Vec<u8>,
}

/// Answers an audit challenge from the piece's bytes.
pub fn prove(piece: &[u8], nonce: &[u8; 32]) -> Result<AuditProof, ProofError> {
    let size = check_size(piece.len() as u64)?;
    Ok(AuditProof {
        size,
        encoded: encode(piece, &sample_chunks(nonce, size)),
    })
}

/// A range is non-empty and within the piece.
fn check_range(range: &Range<u64>, size: u64) -> Result<(), ProofError> {
    if range.start >= range.end || range.end > size {
        return Err(ProofError::Range {
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(())
}

/// Pieces are never empty and at most [`MAX_PIECE_SIZE`].
fn check_size(size: u64) -> Result<u64, ProofError> {
    if size == 0 || size > MAX_PIECE_SIZE {
        return Err(ProofError::Size { size });
    }
    Ok(size)
}

/// Answers a challenge from bytes that may not be the piece, against the
/// piece's true tree: what a holder that kept the tree but lost data could
/// send. The proof fails wherever a sampled chunk differs.
pub fn prove_with_outboard(
    data: &[u8],
    outboard: &PreOrderMemOutboard,
    nonce: &[u8; 32],
) -> AuditProof {
    let size = outboard.tree().size();
    let mut encoded = Vec::new();
    // Only the writer (a Vec) could fail; mismatches are the verifier's to find.
    let _ = encode_ranges(data, outboard, &sample_chunks(nonce, size), &mut encoded);
    AuditProof { size, encoded }
}

/// Verifies an audit answer for piece `cid` and challenge `nonce`.
pub fn verify(cid: &Cid, nonce: &[u8; 32], proof: &AuditProof) -> Result<(), ProofError> {
    decode(
        cid,
        proof.size,
        &sample_chunks(nonce, proof.size),
        &proof.encoded,
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use rand::{Rng, RngCore, SeedableRng};

    use super::*;

    fn piece(len: usize, seed: u64) -> (Vec<u8>, Cid) {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut data = vec![0u8; len];
        rng.fill_bytes(&mut data);
        let cid = block::piece_cid(&data);
        (data, cid)
    }

    #[test]
    fn honest_holder_passes_and_proof_binds_piece_and_nonce() {
        for len in [1, 1023, 1024, 1025, 300_000] {
            let (data, cid) = piece(len, len as u64);
            let nonce = [len as u8; 32];
            let proof = prove(&data, &nonce).expect("a valid piece");
            verify(&cid, &nonce, &proof).expect("honest proof");
            if len == 300_000 {
                // Large enough that another nonce samples other chunks.
                assert!(verify(&cid, &[9; 32], &proof).is_err(), "other nonce");
            }
            let (_, other) = piece(len, 99);
            assert!(
                verify(&other, &nonce, &proof).is_err(),
                "other piece, {len}"
            );
            let mut lie = proof.clone();
            lie.size += CHUNK;
            assert!(verify(&cid, &nonce, &lie).is_err(), "wrong size, {len}");
            let mut flipped = proof.clone();
            let last = flipped.encoded.len() - 1;
            flipped.encoded[last] ^= 1;
            assert!(
                verify(&cid, &nonce, &flipped).is_err(),
                "flipped byte, {len}"
            );
            let mut short = proof;
            short.encoded.pop();
            assert!(verify(&cid, &nonce, &short).is_err(), "truncated, {len}");
        }
    }

    #[test]
    fn ranges_verify_and_reject_tampering() {
        let (data, cid) = piece(10_000, 1);
        let size = data.len() as u64;
        for range in [0..1, 1000..3000, 9999..10_000, 0..10_000] {
            let enc = encode_range(&data, range.clone()).expect("in range");
            let got = decode_range(&cid, size, range.clone(), &enc).expect("valid");
            assert_eq!(got, &data[range.start as usize..range.end as usize]);
            let mut bad = enc.clone();
            bad[enc.len() / 2] ^= 0x40;
            assert!(decode_range(&cid, size, range, &bad).is_err());
        }
        assert!(encode_range(&data, 5..20_000).is_err());
        assert!(matches!(
            prove(&[], &[0; 32]),
            Err(ProofError::Size { size: 0 })
        ));
        assert!(encode_range(&[], 0..1).is_err());
        assert!(decode_range(&cid, size, 3..3, &[]).is_err());
    }

    /// The detection test of issue #2: a holder that lost a fraction `f` of
    /// the piece's chunks (keeping the tree) passes each audit with
    /// probability (1 - f)^SAMPLES; the measured rate must match it.
    #[test]
    fn detection_rate_matches_the_formula() {
        let (data, cid) = piece(1024 * 1024, 7);
        let outboard = PreOrderMemOutboard::create(&data, BlockSize::ZERO);
        let chunks = data.len() / CHUNK as usize;
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for f in [0.02f64, 0.05, 0.10] {
            let mut damaged = data.clone();
            // Drop exactly round(f * chunks) chunks, never the last (whose
            // loss every audit catches).
            let lost = (f * chunks as f64).round() as usize;
            let mut order: Vec<usize> = (0..chunks - 1).collect();
            rand::seq::SliceRandom::shuffle(&mut order[..], &mut rng);
            for &c in &order[..lost] {
                damaged[c * CHUNK as usize..(c + 1) * CHUNK as usize].fill(0);
            }
            let f = lost as f64 / chunks as f64;
            let trials = 3000;
            let passed = (0..trials)
                .filter(|_| {
                    let nonce: [u8; 32] = rng.r#gen();
                    verify(
                        &cid,
                        &nonce,
                        &prove_with_outboard(&damaged, &outboard, &nonce),
                    )
                    .is_ok()
                })
                .count();
            let p = (1.0 - f).powi(SAMPLES as i32);
            let expected = p * trials as f64;
            let sd = (trials as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (passed as f64 - expected).abs() <= 4.0 * sd + 1.0,
                "f={f:.3}: {passed}/{trials} passed, formula expects {expected:.1} ± {sd:.1}"
            );
        }
    }
}
