//! The messages of Cairn's request-response protocols and their codec.
//!
//! Goals: every message is versioned (the variant name carries its version:
//! a peer meeting an unknown variant gets a decode error, never a
//! misreading); every read is bounded by a per-message limit checked before
//! allocating; malformed input is an error value, never a panic.
//! Non-goals: streaming a piece in parts (a piece is at most
//! [`MAX_PIECE_SIZE`], one message), compression.
//!
//! A message on the wire is `uvarint(len) || DAG-CBOR(message)`, one request
//! and one response per stream. See docs/PROTOCOL.md.

use std::io::{Read, Write};

use bytes::Bytes;
use cid::Cid;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::frame::{self, FrameError};
use crate::manifest::{MAX_MANIFEST_SIZE, MAX_PIECE_SIZE};
use crate::proof::AuditProof;
use crate::record::{SignedReceipt, Terms};

pub const STORE_PROTOCOL: &str = "/cairn/store/1.0.0";
pub const FETCH_PROTOCOL: &str = "/cairn/fetch/1.0.0";
pub const AUDIT_PROTOCOL: &str = "/cairn/audit/1.0.0";

/// Room for a message's fields around its largest byte string.
const ENVELOPE: usize = 64 * 1024;
const MAX_PIECE: usize = MAX_PIECE_SIZE as usize;

/// A message of one of Cairn's protocols, with its size limit.
pub trait Message: Serialize + DeserializeOwned {
    /// Largest encoded message (without its length prefix) accepted or sent.
    const MAX_SIZE: usize;

    /// Bytes of bulk data the message carries, so that encoding allocates
    /// once.
    fn payload_len(&self) -> usize {
        0
    }

    /// The encoding in [`Parts`], for a message whose bulk data is shared
    /// [`Bytes`]: written out without copying it. `None`: use [`encode`].
    fn parts(&self) -> Option<Result<Parts, WireError>> {
        None
    }

    /// Decodes a body received whole, as [`decode`]; a message's bulk data
    /// held as [`Bytes`] is a slice of `body`, not a copy.
    fn decode_shared(body: Bytes) -> Result<Self, WireError> {
        decode(&body)
    }
}

/// A message's encoding as `head ‖ payload ‖ tail`, the payload (a byte
/// string's contents) by reference.
#[derive(Debug)]
pub struct Parts {
    pub head: Vec<u8>,
    pub payload: Bytes,
    pub tail: Vec<u8>,
}

impl Parts {
    pub fn len(&self) -> usize {
        self.head.len() + self.payload.len() + self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits the encoding of `msg` around `payload`, given `with`, which
    /// builds the message around any payload. The encodings with an empty
    /// and a one-byte payload differ first at the payload's byte-string
    /// header; the real header goes there.
    fn split<M: Message>(with: impl Fn(Bytes) -> M, payload: Bytes) -> Result<Parts, WireError> {
        let empty = encode(&with(Bytes::new()))?;
        let one = encode(&with(Bytes::from_static(&[0])))?;
        let at = empty
            .iter()
            .zip(&one)
            .position(|(a, b)| a != b)
            .filter(|&i| empty[i] == 0x40 && one[i] == 0x41)
            .ok_or_else(|| WireError::Encode("payload not found in the encoding".into()))?;
        let mut head = empty[..at].to_vec();
        byte_string_header(payload.len() as u64, &mut head);
        let parts = Parts {
            head,
            payload,
            tail: empty[at + 1..].to_vec(),
        };
        if parts.len() > M::MAX_SIZE {
            return Err(WireError::TooLarge {
                len: parts.len(),
                max: M::MAX_SIZE,
            });
        }
        Ok(parts)
    }
}

/// `part`, borrowed from `body` by decoding it, as a slice of `body`; a
/// copy should a decoder ever hand out bytes from elsewhere.
fn share(body: &Bytes, part: &[u8]) -> Bytes {
    let offset = (part.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    if offset <= body.len() && part.len() <= body.len() - offset {
        body.slice(offset..offset + part.len())
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// The CBOR header of a byte string of `len` bytes, in its shortest form
/// (as DAG-CBOR requires).
fn byte_string_header(len: u64, out: &mut Vec<u8>) {
    match len {
        0..=23 => out.push(0x40 | len as u8),
        24..=0xff => out.extend([0x58, len as u8]),
        0x100..=0xffff => {
            out.push(0x59);
            out.extend((len as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(0x5a);
            out.extend((len as u32).to_be_bytes());
        }
        _ => {
            out.push(0x5b);
            out.extend(len.to_be_bytes());
        }
    }
}

// --- /cairn/store/1.0.0: storage negotiation and piece transfer ---

/// Asks a node to keep a piece. An offer is answered with
/// [`StoreResponse::AcceptedV1`] (space reserved) or
/// [`StoreResponse::RejectedV1`]; a transfer that matches an accepted offer
/// (same peer, piece and nonce) with [`StoreResponse::StoredV1`] once the
/// piece is durably stored, or [`StoreResponse::FailedV1`]. A renewal is
/// answered with [`StoreResponse::StoredV1`] once the new term is durable,
/// or [`StoreResponse::RejectedV1`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreRequest {
    /// The terms the receipt will sign if the node stores the piece.
    OfferV1(Terms),
    TransferV1(Transfer),
    /// Keep a piece the node holds (of `size` bytes) until `expires_at`.
    /// A term is only ever extended: a later expiry the node has stands.
    RenewV1(Terms),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    pub piece: Cid,
    #[serde(with = "serde_bytes")]
    pub nonce: [u8; 16],
    /// Shared, not copied, between attempts to store the piece.
    pub data: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoreResponse {
    /// Space is reserved until `reserved_until` (unix seconds).
    AcceptedV1 {
        reserved_until: u64,
    },
    RejectedV1(RejectReason),
    StoredV1(SignedReceipt),
    FailedV1(TransferError),
}

/// Why a node declines an offer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// Not enough free capacity; `free` bytes are left.
    OverCapacity {
        free: u64,
    },
    /// Larger than the node takes.
    TooLarge {
        max: u64,
    },
    /// The expiry is outside what the node accepts.
    ExpiryOutOfRange {
        min: u64,
        max: u64,
    },
    AlreadyHeld,
    Busy,
    /// A renewal for a piece the node does not hold (with that size).
    NotHeld,
}

/// Why a transfer was not stored; nothing of it was kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TransferError {
    /// No accepted offer matches (or its reservation lapsed).
    NoReservation,
    SizeMismatch {
        expected: u64,
        got: u64,
    },
    /// The bytes do not hash to the piece CID.
    HashMismatch,
    /// The node could not write the piece.
    Storage,
}

impl Message for StoreRequest {
    const MAX_SIZE: usize = MAX_PIECE + ENVELOPE;

    fn payload_len(&self) -> usize {
        match self {
            StoreRequest::TransferV1(t) => t.data.len(),
            StoreRequest::OfferV1(_) | StoreRequest::RenewV1(_) => 0,
        }
    }

    fn parts(&self) -> Option<Result<Parts, WireError>> {
        let StoreRequest::TransferV1(t) = self else {
            return None;
        };
        let with = |data| {
            StoreRequest::TransferV1(Transfer {
                piece: t.piece,
                nonce: t.nonce,
                data,
            })
        };
        Some(Parts::split(with, t.data.clone()))
    }

    fn decode_shared(body: Bytes) -> Result<Self, WireError> {
        /// A transfer as decoded, its data borrowed from the body.
        #[derive(Deserialize)]
        enum Bulk<'a> {
            TransferV1 {
                piece: Cid,
                #[serde(with = "serde_bytes")]
                nonce: [u8; 16],
                data: &'a [u8],
            },
        }
        check_size::<Self>(body.len())?;
        match serde_ipld_dagcbor::from_slice(&body) {
            Ok(Bulk::TransferV1 { piece, nonce, data }) => Ok(StoreRequest::TransferV1(Transfer {
                piece,
                nonce,
                data: share(&body, data),
            })),
            // Not a transfer: decoded whole.
            Err(_) => decode(&body),
        }
    }
}
impl Message for StoreResponse {
    const MAX_SIZE: usize = ENVELOPE;
}

// --- /cairn/fetch/1.0.0: pieces, verified ranges of pieces, manifests ---

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchRequest {
    PieceV1 {
        piece: Cid,
    },
    /// Bytes `offset .. offset + len` of a piece, with their proof.
    RangeV1 {
        piece: Cid,
        offset: u64,
        len: u64,
    },
    /// A manifest of the content whose root CID is `root`.
    ManifestV1 {
        root: Cid,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FetchResponse {
    PieceV1 {
        data: Bytes,
    },
    /// The range as [`crate::proof::encode_range`] encodes it, and the piece's size.
    RangeV1 {
        size: u64,
        encoded: ByteBuf,
    },
    ManifestV1 {
        data: ByteBuf,
    },
    NotFoundV1,
    /// The request was understood but cannot be served (e.g. a range out of bounds).
    FailedV1 {
        reason: String,
    },
}

impl Message for FetchRequest {
    const MAX_SIZE: usize = 4096;
}
impl Message for FetchResponse {
    // A whole-piece range carries 64 bytes of proof per KiB: under 1/16 more.
    const MAX_SIZE: usize = if MAX_MANIFEST_SIZE > MAX_PIECE + MAX_PIECE / 16 {
        MAX_MANIFEST_SIZE + ENVELOPE
    } else {
        MAX_PIECE + MAX_PIECE / 16 + ENVELOPE
    };

    fn payload_len(&self) -> usize {
        match self {
            FetchResponse::PieceV1 { data } => data.len(),
            FetchResponse::ManifestV1 { data } => data.len(),
            FetchResponse::RangeV1 { encoded, .. } => encoded.len(),
            FetchResponse::NotFoundV1 | FetchResponse::FailedV1 { .. } => 0,
        }
    }

    fn parts(&self) -> Option<Result<Parts, WireError>> {
        let FetchResponse::PieceV1 { data } = self else {
            return None;
        };
        Some(Parts::split(
            |data| FetchResponse::PieceV1 { data },
            data.clone(),
        ))
    }

    fn decode_shared(body: Bytes) -> Result<Self, WireError> {
        /// A piece as decoded, borrowed from the body.
        #[derive(Deserialize)]
        enum Bulk<'a> {
            PieceV1 { data: &'a [u8] },
        }
        check_size::<Self>(body.len())?;
        match serde_ipld_dagcbor::from_slice(&body) {
            Ok(Bulk::PieceV1 { data }) => Ok(FetchResponse::PieceV1 {
                data: share(&body, data),
            }),
            Err(_) => decode(&body),
        }
    }
}

// --- /cairn/audit/1.0.0: proofs of storage ---

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditRequest {
    ChallengeV1 {
        piece: Cid,
        #[serde(with = "serde_bytes")]
        nonce: [u8; 32],
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuditResponse {
    ProofV1(AuditProof),
    NotFoundV1,
}

impl Message for AuditRequest {
    const MAX_SIZE: usize = 4096;
}
impl Message for AuditResponse {
    // 65 chunks of 1 KiB with up to 12 sibling pairs each (a 4 MiB piece): ~115 KiB.
    const MAX_SIZE: usize = 256 * 1024;
}

// --- codec ---

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error("stream closed before a message")]
    Closed,
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message: {0}")]
    Decode(String),
    #[error("could not encode message: {0}")]
    Encode(String),
}

/// Encodes a message body, refusing one over its limit.
pub fn encode<M: Message>(msg: &M) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::with_capacity(msg.payload_len().saturating_add(1024).min(M::MAX_SIZE));
    serde_ipld_dagcbor::to_writer(&mut body, msg).map_err(|e| WireError::Encode(e.to_string()))?;
    if body.len() > M::MAX_SIZE {
        return Err(WireError::TooLarge {
            len: body.len(),
            max: M::MAX_SIZE,
        });
    }
    Ok(body)
}

fn check_size<M: Message>(len: usize) -> Result<(), WireError> {
    if len > M::MAX_SIZE {
        return Err(WireError::TooLarge {
            len,
            max: M::MAX_SIZE,
        });
    }
    Ok(())
}

/// Decodes a message body from untrusted bytes.
pub fn decode<M: Message>(body: &[u8]) -> Result<M, WireError> {
    check_size::<M>(body.len())?;
    serde_ipld_dagcbor::from_slice(body).map_err(|e| WireError::Decode(e.to_string()))
}

/// Writes one length-prefixed message.
pub fn write_message<M: Message>(out: &mut impl Write, msg: &M) -> Result<(), WireError> {
    let body = encode(msg)?;
    frame::write(out, &[&body]).map_err(|e| WireError::Frame(e.into()))
}

/// Reads one length-prefixed message, allocating at most `M::MAX_SIZE`.
pub fn read_message<M: Message>(input: &mut impl Read) -> Result<M, WireError> {
    let body = frame::read(input, M::MAX_SIZE)?.ok_or(WireError::Closed)?;
    decode(&body)
}

#[cfg(test)]
mod tests {
    use std::fmt::Debug;

    use super::*;
    use crate::block::piece_cid;
    use crate::proof::{self, AuditProof};
    use crate::record::{Receipt, Terms};

    #[test]
    fn parts_are_the_encoding_split_around_the_payload() {
        for len in [0, 1, 23, 24, 255, 256, 65_535, 65_536, MAX_PIECE] {
            let msg = StoreRequest::TransferV1(Transfer {
                piece: piece_cid(b"x"),
                nonce: [3; 16],
                data: Bytes::from(vec![9; len]),
            });
            let parts = msg.parts().expect("a transfer has parts").expect("encodes");
            let joined = [&parts.head[..], &parts.payload, &parts.tail].concat();
            assert_eq!(joined, encode(&msg).expect("encodes"), "{len} bytes");
        }
        let offer = StoreRequest::OfferV1(Terms {
            piece: piece_cid(b"x"),
            size: 1,
            expires_at: 2,
            nonce: [0; 16],
        });
        assert!(offer.parts().is_none());
    }

    fn round_trip<M: Message + PartialEq + Debug>(msg: M) {
        let mut buf = Vec::new();
        write_message(&mut buf, &msg).expect("encodes");
        assert_eq!(read_message::<M>(&mut &buf[..]).expect("decodes"), msg);
        let body = Bytes::from(encode(&msg).expect("encodes"));
        assert_eq!(M::decode_shared(body).expect("decodes shared"), msg);
        // Every strict prefix is an error, not a panic or a different message.
        for cut in 0..buf.len() {
            assert!(
                read_message::<M>(&mut &buf[..cut]).is_err(),
                "prefix of {cut}"
            );
        }
    }

    #[test]
    fn every_message_round_trips() {
        let piece = piece_cid(b"p");
        let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
        let terms = Terms {
            piece,
            size: 1,
            expires_at: 2,
            nonce: [1; 16],
        };
        let receipt = Receipt {
            node: [0; 32],
            terms: terms.clone(),
        }
        .sign(&key);
        round_trip(StoreRequest::OfferV1(terms.clone()));
        round_trip(StoreRequest::RenewV1(terms));
        round_trip(StoreRequest::TransferV1(Transfer {
            piece,
            nonce: [7; 16],
            data: Bytes::from(b"p".to_vec()),
        }));
        round_trip(StoreResponse::AcceptedV1 { reserved_until: 9 });
        for reason in [
            RejectReason::OverCapacity { free: 4 },
            RejectReason::TooLarge { max: 5 },
            RejectReason::ExpiryOutOfRange { min: 1, max: 2 },
            RejectReason::AlreadyHeld,
            RejectReason::Busy,
            RejectReason::NotHeld,
        ] {
            round_trip(StoreResponse::RejectedV1(reason));
        }
        round_trip(StoreResponse::StoredV1(receipt));
        for e in [
            TransferError::NoReservation,
            TransferError::SizeMismatch {
                expected: 1,
                got: 2,
            },
            TransferError::HashMismatch,
            TransferError::Storage,
        ] {
            round_trip(StoreResponse::FailedV1(e));
        }
        round_trip(FetchRequest::PieceV1 { piece });
        round_trip(FetchRequest::RangeV1 {
            piece,
            offset: 1,
            len: 2,
        });
        round_trip(FetchRequest::ManifestV1 { root: piece });
        round_trip(FetchResponse::PieceV1 {
            data: Bytes::from(vec![1, 2]),
        });
        round_trip(FetchResponse::RangeV1 {
            size: 3,
            encoded: ByteBuf::from(vec![3]),
        });
        round_trip(FetchResponse::ManifestV1 {
            data: ByteBuf::from(vec![4]),
        });
        round_trip(FetchResponse::NotFoundV1);
        round_trip(FetchResponse::FailedV1 {
            reason: "range".into(),
        });
        round_trip(AuditRequest::ChallengeV1 {
            piece,
            nonce: [8; 32],
        });
        round_trip(AuditResponse::ProofV1(
            proof::prove(b"p", &[8; 32]).expect("a piece"),
        ));
        round_trip(AuditResponse::NotFoundV1);
    }

    #[test]
    fn bulk_data_decodes_as_a_slice_of_the_body() {
        let data = Bytes::from(vec![6u8; 100_000]);
        let transfer = StoreRequest::TransferV1(Transfer {
            piece: piece_cid(&data),
            nonce: [2; 16],
            data: data.clone(),
        });
        let body = Bytes::from(encode(&transfer).expect("encodes"));
        let range = body.as_ptr_range();
        match StoreRequest::decode_shared(body.clone()).expect("decodes") {
            StoreRequest::TransferV1(t) => {
                assert_eq!(t.data, data);
                assert!(range.contains(&t.data.as_ptr()), "data was copied");
            }
            other => panic!("decoded as {other:?}"),
        }
        let piece = FetchResponse::PieceV1 { data: data.clone() };
        let parts = piece.parts().expect("a piece has parts").expect("encodes");
        let joined = [&parts.head[..], &parts.payload, &parts.tail].concat();
        assert_eq!(joined, encode(&piece).expect("encodes"));
        let body = Bytes::from(joined);
        let range = body.as_ptr_range();
        match FetchResponse::decode_shared(body).expect("decodes") {
            FetchResponse::PieceV1 { data: got } => {
                assert_eq!(got, data);
                assert!(range.contains(&got.as_ptr()), "data was copied");
            }
            other => panic!("decoded as {other:?}"),
        }
        // Over the limit: refused before decoding, shared or not.
        let big = Bytes::from(vec![0; FetchResponse::MAX_SIZE + 1]);
        assert!(matches!(
            FetchResponse::decode_shared(big),
            Err(WireError::TooLarge { .. })
        ));
    }

    proptest::proptest! {
        // Every field value survives the codec, in each protocol.
        #[test]
        fn messages_with_any_fields_round_trip(
            size: u64, expires_at: u64, offset: u64, len: u64,
            nonce: [u8; 16], challenge: [u8; 32],
            data in proptest::collection::vec(0u8..=255, 0..2000),
            reason in ".{0,40}",
        ) {
            let piece = piece_cid(&data);
            let terms = Terms { piece, size, expires_at, nonce };
            let decoded = |b: Vec<u8>| ByteBuf::from(b);
            for msg in [
                StoreRequest::OfferV1(terms.clone()),
                StoreRequest::RenewV1(terms.clone()),
                StoreRequest::TransferV1(Transfer { piece, nonce, data: Bytes::from(data.clone()) }),
            ] {
                let body = encode(&msg).expect("fits");
                proptest::prop_assert_eq!(&decode::<StoreRequest>(&body).expect("decodes"), &msg);
                proptest::prop_assert_eq!(StoreRequest::decode_shared(body.into()).expect("decodes"), msg);
            }
            for msg in [
                StoreResponse::AcceptedV1 { reserved_until: expires_at },
                StoreResponse::RejectedV1(RejectReason::ExpiryOutOfRange { min: offset, max: len }),
                StoreResponse::FailedV1(TransferError::SizeMismatch { expected: size, got: len }),
            ] {
                proptest::prop_assert_eq!(decode::<StoreResponse>(&encode(&msg).expect("fits")).expect("decodes"), msg);
            }
            let msg = FetchRequest::RangeV1 { piece, offset, len };
            proptest::prop_assert_eq!(decode::<FetchRequest>(&encode(&msg).expect("fits")).expect("decodes"), msg);
            for msg in [
                FetchResponse::PieceV1 { data: Bytes::from(data.clone()) },
                FetchResponse::RangeV1 { size, encoded: decoded(data.clone()) },
                FetchResponse::FailedV1 { reason: reason.clone() },
            ] {
                let body = encode(&msg).expect("fits");
                proptest::prop_assert_eq!(&decode::<FetchResponse>(&body).expect("decodes"), &msg);
                proptest::prop_assert_eq!(FetchResponse::decode_shared(body.into()).expect("decodes"), msg);
            }
            let msg = AuditRequest::ChallengeV1 { piece, nonce: challenge };
            proptest::prop_assert_eq!(decode::<AuditRequest>(&encode(&msg).expect("fits")).expect("decodes"), msg);
            let msg = AuditResponse::ProofV1(AuditProof { size, encoded: data });
            proptest::prop_assert_eq!(decode::<AuditResponse>(&encode(&msg).expect("fits")).expect("decodes"), msg);
        }
    }

    #[test]
    fn oversized_messages_are_refused_both_ways() {
        let big = StoreRequest::TransferV1(Transfer {
            piece: piece_cid(b""),
            nonce: [0; 16],
            data: Bytes::from(vec![0; MAX_PIECE + ENVELOPE]),
        });
        assert!(matches!(encode(&big), Err(WireError::TooLarge { .. })));
        // A length prefix over the limit is refused before reading the body.
        let mut buf = unsigned_varint::encode::u64_buffer();
        let prefix = unsigned_varint::encode::u64(StoreResponse::MAX_SIZE as u64 + 1, &mut buf);
        assert!(matches!(
            read_message::<StoreResponse>(&mut &prefix[..]),
            Err(WireError::Frame(FrameError::TooLarge { .. }))
        ));
    }

    #[test]
    fn the_largest_proofs_fit_their_limits() {
        // A full-size piece: the deepest proof tree and the most bytes.
        let piece: Vec<u8> = (0..MAX_PIECE).map(|i| (i % 251) as u8).collect();
        let audit = AuditResponse::ProofV1(proof::prove(&piece, &[1; 32]).expect("a piece"));
        assert!(encode(&audit).is_ok(), "audit proof over its limit");
        let whole = proof::encode_range(&piece, 0..MAX_PIECE_SIZE).expect("in range");
        let range = FetchResponse::RangeV1 {
            size: MAX_PIECE_SIZE,
            encoded: ByteBuf::from(whole),
        };
        assert!(encode(&range).is_ok(), "whole-piece range over its limit");
        let transfer = StoreRequest::TransferV1(Transfer {
            piece: piece_cid(&piece),
            nonce: [0; 16],
            data: Bytes::from(piece),
        });
        assert!(
            encode(&transfer).is_ok(),
            "full piece transfer over its limit"
        );
    }

    #[test]
    fn unknown_versions_and_garbage_are_decode_errors() {
        let v2 = serde_ipld_dagcbor::to_vec(&std::collections::BTreeMap::from([("OfferV2", 1u8)]))
            .expect("encodes");
        assert!(matches!(
            decode::<StoreRequest>(&v2),
            Err(WireError::Decode(_))
        ));
        assert!(decode::<FetchRequest>(&[0xa1, 0xff, 0x00]).is_err());
        assert!(matches!(
            read_message::<AuditRequest>(&mut &[][..]),
            Err(WireError::Closed)
        ));
    }
}
