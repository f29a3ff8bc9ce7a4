//! Signed records: what a node promises, signed with its ed25519 identity
//! key (the key behind its libp2p peer ID).
//!
//! A signature covers `DOMAIN || DAG-CBOR(receipt)`; the domain string keeps
//! a receipt signature from being valid as any other kind of message.

use cid::Cid;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Signature domain of storage receipts, version 1.
pub const RECEIPT_DOMAIN: &[u8] = b"cairn/receipt/v1\0";

/// The terms of a storage deal: what a client offers a node, and what the
/// node's receipt promises.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Terms {
    pub piece: Cid,
    pub size: u64,
    /// Unix seconds until which the piece is kept.
    pub expires_at: u64,
    /// Chosen by the offering side: ties a transfer and its receipt to one
    /// offer, so a receipt cannot be replayed for another.
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 16],
}

/// A node's promise to keep a piece on the given terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The storing node's ed25519 public key.
    #[serde(with = "serde_bytes")]
    pub node: [u8; 32],
    pub terms: Terms,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedReceipt {
    pub receipt: Receipt,
    #[serde(with = "serde_bytes")]
    pub signature: [u8; 64],
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("receipt is for piece {got}, expected {expected}")]
    WrongPiece { expected: String, got: String },
    #[error("receipt is from node key {got}, expected {expected}")]
    WrongNode { expected: String, got: String },
    #[error("receipt's node key is not a valid ed25519 key")]
    BadKey,
    #[error("receipt signature does not verify")]
    BadSignature,
}

impl Receipt {
    fn signing_bytes(&self) -> Vec<u8> {
        let mut bytes = RECEIPT_DOMAIN.to_vec();
        bytes.extend(serde_ipld_dagcbor::to_vec(self).expect("a receipt always encodes"));
        bytes
    }

    /// Signs with `key`, setting `node` to its public key.
    pub fn sign(mut self, key: &SigningKey) -> SignedReceipt {
        self.node = key.verifying_key().to_bytes();
        let signature = key.sign(&self.signing_bytes()).to_bytes();
        SignedReceipt {
            receipt: self,
            signature,
        }
    }
}

impl SignedReceipt {
    /// Checks the signature, and that the receipt is for `piece` from `node`
    /// (when the caller knows which node it dealt with).
    pub fn verify(&self, piece: &Cid, node: Option<&[u8; 32]>) -> Result<(), RecordError> {
        let r = &self.receipt;
        if &r.terms.piece != piece {
            return Err(RecordError::WrongPiece {
                expected: piece.to_string(),
                got: r.terms.piece.to_string(),
            });
        }
        if let Some(node) = node
            && node != &r.node
        {
            return Err(RecordError::WrongNode {
                expected: hex(node),
                got: hex(&r.node),
            });
        }
        let key = VerifyingKey::from_bytes(&r.node).map_err(|_| RecordError::BadKey)?;
        key.verify_strict(&r.signing_bytes(), &Signature::from_bytes(&self.signature))
            .map_err(|_| RecordError::BadSignature)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::piece_cid;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn receipt() -> (SignedReceipt, Cid) {
        let piece = piece_cid(b"piece");
        let r = Receipt {
            node: [0; 32],
            terms: Terms {
                piece,
                size: 5,
                expires_at: 1_900_000_000,
                nonce: [3; 16],
            },
        };
        (r.sign(&key(1)), piece)
    }

    #[test]
    fn a_valid_receipt_verifies_and_round_trips() {
        let (signed, piece) = receipt();
        let node = key(1).verifying_key().to_bytes();
        assert_eq!(signed.verify(&piece, Some(&node)), Ok(()));
        let bytes = serde_ipld_dagcbor::to_vec(&signed).expect("encodes");
        let back: SignedReceipt = serde_ipld_dagcbor::from_slice(&bytes).expect("decodes");
        assert_eq!(back, signed);
    }

    #[test]
    fn any_change_breaks_the_receipt() {
        let (signed, piece) = receipt();
        let changes: [fn(&mut SignedReceipt); 6] = [
            |s| s.receipt.terms.size += 1,
            |s| s.receipt.terms.expires_at += 1,
            |s| s.receipt.terms.nonce[0] ^= 1,
            |s| s.receipt.node = key(2).verifying_key().to_bytes(),
            |s| s.signature[0] ^= 1,
            |s| s.receipt.terms.piece = piece_cid(b"other"),
        ];
        for (i, change) in changes.iter().enumerate() {
            let mut s = signed.clone();
            change(&mut s);
            assert!(s.verify(&piece, None).is_err(), "change {i}");
        }
    }

    #[test]
    fn a_receipt_for_another_piece_or_node_is_rejected() {
        let (signed, _) = receipt();
        let other = piece_cid(b"other");
        assert!(matches!(
            signed.verify(&other, None),
            Err(RecordError::WrongPiece { .. })
        ));
        let piece = signed.receipt.terms.piece;
        let stranger = key(2).verifying_key().to_bytes();
        assert!(matches!(
            signed.verify(&piece, Some(&stranger)),
            Err(RecordError::WrongNode { .. })
        ));
    }
}
