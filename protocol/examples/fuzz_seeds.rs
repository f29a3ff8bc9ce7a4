//! Writes valid inputs for the fuzz targets to start from:
//! `cargo run -p cairn-protocol --example fuzz_seeds -- fuzz/corpus`.
#![allow(clippy::print_stdout)]

use std::fs;
use std::path::Path;

use cairn_protocol::block;
use cairn_protocol::car::CarWriter;
use cairn_protocol::erasure::Scheme;
use cairn_protocol::manifest::Packer;
use cairn_protocol::proof;
use cairn_protocol::record::{Receipt, Terms};
use cairn_protocol::unixfs::{self, NullSink};
use cairn_protocol::wire::{self, *};
use serde_bytes::ByteBuf;

fn main() -> std::io::Result<()> {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    let out = Path::new(&out);
    for t in ["wire", "car", "manifest", "proof"] {
        fs::create_dir_all(out.join(t))?;
    }
    let data: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();

    let root = unixfs::import_file(&data[..], &mut NullSink)?.cid;
    let mut car = CarWriter::new(Vec::new(), &[root])?;
    unixfs::import_file(&data[..20_000], &mut car)?;
    fs::write(out.join("car/small"), car.finish()?)?;

    for (name, scheme, piece_size) in [
        ("a", Scheme { k: 2, m: 1 }, 4096),
        ("b", Scheme::default(), 1 << 20),
    ] {
        let mut packer =
            Packer::new(scheme, piece_size, |_| Ok(())).map_err(std::io::Error::other)?;
        let root = unixfs::import_file(&data[..], &mut packer)?.cid;
        fs::write(
            out.join(format!("manifest/{name}")),
            packer.finish(root)?.encode(),
        )?;
    }

    let piece = block::piece_cid(&[7u8; 5000]);
    let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let terms = Terms {
        piece,
        size: 5000,
        expires_at: 9,
        nonce: [3; 16],
    };
    let receipt = Receipt {
        node: [0; 32],
        terms: terms.clone(),
    }
    .sign(&key);
    let write = |name: &str, body: Result<Vec<u8>, WireError>| -> std::io::Result<()> {
        fs::write(
            out.join("wire").join(name),
            body.map_err(std::io::Error::other)?,
        )
    };
    write("offer", wire::encode(&StoreRequest::OfferV1(terms)))?;
    write(
        "transfer",
        wire::encode(&StoreRequest::TransferV1(Transfer {
            piece,
            nonce: [3; 16],
            data: vec![7; 64].into(),
        })),
    )?;
    write("stored", wire::encode(&StoreResponse::StoredV1(receipt)))?;
    write(
        "rejected",
        wire::encode(&StoreResponse::RejectedV1(RejectReason::OverCapacity {
            free: 1,
        })),
    )?;
    write(
        "range",
        wire::encode(&FetchRequest::RangeV1 {
            piece,
            offset: 1,
            len: 2,
        }),
    )?;
    write(
        "fetched",
        wire::encode(&FetchResponse::RangeV1 {
            size: 5000,
            encoded: ByteBuf::from(vec![1; 80]),
        }),
    )?;
    write(
        "challenge",
        wire::encode(&AuditRequest::ChallengeV1 {
            piece,
            nonce: [4; 32],
        }),
    )?;
    let audit = proof::prove(&[7u8; 5000], &[4; 32]).map_err(std::io::Error::other)?;
    write("proof", wire::encode(&AuditResponse::ProofV1(audit)))?;

    // The proof target reads: size (2 bytes LE), nonce byte, range start and
    // length (2 bytes LE each), 3 spare bytes, then the encoded proof.
    let nonce = [5u8; 32];
    let mut seed = vec![0x88, 0x13, 5, 0, 0, 0x88, 0x13, 0, 0, 0];
    seed.extend(
        proof::prove(&[7u8; 5000], &nonce)
            .map_err(std::io::Error::other)?
            .encoded,
    );
    fs::write(out.join("proof/audit"), seed)?;
    let mut seed = vec![0x88, 0x13, 5, 0x10, 0, 0x20, 0, 0, 0, 0];
    seed.extend(proof::encode_range(&[7u8; 5000], 16..48).map_err(std::io::Error::other)?);
    fs::write(out.join("proof/range"), seed)?;
    println!("seeds written under {}", out.display());
    Ok(())
}
