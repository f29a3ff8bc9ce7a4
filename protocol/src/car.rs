//! CAR v1 (content archive): a DAG-CBOR header `{roots, version: 1}` then
//! blocks, each framed as `uvarint(len) || CID || bytes`.
//!
//! The reader verifies every block against its CID and never allocates more
//! than [`MAX_HEADER_SIZE`] or one block ([`MAX_BLOCK_SIZE`] plus its CID).
//! Existing crates were async-only or panicked on malformed CIDs; this one is
//! built on `cid`, `unsigned-varint` and `serde_ipld_dagcbor`.

use std::io::{self, Read, Write};

use cid::Cid;
use serde::{Deserialize, Serialize};

use crate::block;
use crate::frame::{self, FrameError};
use crate::unixfs::MAX_BLOCK_SIZE;

/// Largest header accepted.
pub const MAX_HEADER_SIZE: usize = 64 * 1024;
/// Largest section (CID plus block) accepted.
pub const MAX_SECTION_SIZE: usize = MAX_BLOCK_SIZE + 128;

#[derive(Serialize, Deserialize)]
struct Header {
    roots: Vec<Cid>,
    version: u64,
}

/// Why a CAR could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CarError {
    #[error("reading CAR: {0}")]
    Io(#[from] io::Error),
    #[error("CAR ends in the middle of a {0}")]
    Truncated(&'static str),
    #[error("CAR {what} length {len} exceeds the limit of {max} bytes")]
    TooLarge {
        what: &'static str,
        len: u64,
        max: usize,
    },
    #[error("CAR {what} has an invalid length prefix: {reason}")]
    Prefix { what: &'static str, reason: String },
    #[error("CAR header is not valid: {0}")]
    Header(String),
    #[error("CAR version {0} is not supported (only CAR v1)")]
    Version(u64),
    #[error("CAR block {index} has an invalid CID: {reason}")]
    Cid { index: u64, reason: String },
    #[error("CAR block {index}: {source}")]
    Verify {
        index: u64,
        source: block::VerifyError,
    },
}

/// Writes a CAR v1.
pub struct CarWriter<W> {
    out: W,
}

impl<W: Write> CarWriter<W> {
    pub fn new(mut out: W, roots: &[Cid]) -> io::Result<Self> {
        let header = serde_ipld_dagcbor::to_vec(&Header {
            roots: roots.to_vec(),
            version: 1,
        })
        .map_err(io::Error::other)?;
        frame::write(&mut out, &[&header])?;
        Ok(Self { out })
    }

    pub fn put(&mut self, cid: &Cid, block: &[u8]) -> io::Result<()> {
        frame::write(&mut self.out, &[&cid.to_bytes(), block])
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> crate::unixfs::BlockSink for CarWriter<W> {
    fn put(&mut self, cid: &Cid, block: &[u8]) -> io::Result<()> {
        CarWriter::put(self, cid, block)
    }
}

/// Reads a CAR v1, yielding verified blocks.
pub struct CarReader<R> {
    input: R,
    roots: Vec<Cid>,
    index: u64,
}

impl<R: Read> CarReader<R> {
    pub fn new(mut input: R) -> Result<Self, CarError> {
        let header = read_section(&mut input, "header", MAX_HEADER_SIZE)?
            .ok_or(CarError::Truncated("header"))?;
        // A v2 pragma is a v1-shaped header without roots: read the version first.
        #[derive(Deserialize)]
        struct Version {
            version: u64,
        }
        let v: Version =
            serde_ipld_dagcbor::from_slice(&header).map_err(|e| CarError::Header(e.to_string()))?;
        if v.version != 1 {
            return Err(CarError::Version(v.version));
        }
        let header: Header =
            serde_ipld_dagcbor::from_slice(&header).map_err(|e| CarError::Header(e.to_string()))?;
        Ok(Self {
            input,
            roots: header.roots,
            index: 0,
        })
    }

    pub fn roots(&self) -> &[Cid] {
        &self.roots
    }

    /// The next block, verified; `None` at the end of the CAR.
    pub fn next_block(&mut self) -> Result<Option<(Cid, Vec<u8>)>, CarError> {
        let Some(mut section) = read_section(&mut self.input, "block", MAX_SECTION_SIZE)? else {
            return Ok(None);
        };
        let index = self.index;
        self.index += 1;
        let mut cursor = io::Cursor::new(&section[..]);
        let cid = Cid::read_bytes(&mut cursor).map_err(|e| CarError::Cid {
            index,
            reason: e.to_string(),
        })?;
        // The cursor stays within the section, whose length is a usize.
        let cid_len = usize::try_from(cursor.position()).unwrap_or(section.len());
        let block = section.split_off(cid_len);
        block::verify(&cid, &block).map_err(|source| CarError::Verify { index, source })?;
        Ok(Some((cid, block)))
    }
}

impl<R: Read> Iterator for CarReader<R> {
    type Item = Result<(Cid, Vec<u8>), CarError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_block().transpose()
    }
}

/// Reads one section; `None` at a clean end of input.
fn read_section(
    input: &mut impl Read,
    what: &'static str,
    max: usize,
) -> Result<Option<Vec<u8>>, CarError> {
    frame::read(input, max).map_err(|e| match e {
        FrameError::Io(e) => CarError::Io(e),
        FrameError::Truncated => CarError::Truncated(what),
        FrameError::TooLarge { len, max } => CarError::TooLarge { what, len, max },
        FrameError::Prefix(reason) => CarError::Prefix { what, reason },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{RAW, sha256_cid};

    fn car(blocks: &[&[u8]]) -> (Vec<Cid>, Vec<u8>) {
        let cids: Vec<Cid> = blocks.iter().map(|b| sha256_cid(RAW, b)).collect();
        let mut w = CarWriter::new(Vec::new(), &cids[..1]).expect("vec");
        for (c, b) in cids.iter().zip(blocks) {
            w.put(c, b).expect("vec");
        }
        (cids, w.finish().expect("vec"))
    }

    #[test]
    fn round_trip() {
        let (cids, bytes) = car(&[b"one", b"", b"three"]);
        let mut r = CarReader::new(&bytes[..]).expect("header");
        assert_eq!(r.roots(), &cids[..1]);
        let got: Vec<_> = r.by_ref().map(|b| b.expect("valid").0).collect();
        assert_eq!(got, cids);
    }

    proptest::proptest! {
        // Any blocks, any roots: what is written is read back in order.
        #[test]
        fn any_blocks_round_trip(
            blocks in proptest::collection::vec(proptest::collection::vec(0u8..=255, 0..3000), 0..20),
            roots in 0usize..3,
        ) {
            let cids: Vec<Cid> = blocks.iter().map(|b| sha256_cid(RAW, b)).collect();
            let roots = &cids[..roots.min(cids.len())];
            let mut w = CarWriter::new(Vec::new(), roots).expect("vec");
            for (c, b) in cids.iter().zip(&blocks) {
                w.put(c, b).expect("vec");
            }
            let bytes = w.finish().expect("vec");
            let mut r = CarReader::new(&bytes[..]).expect("header");
            proptest::prop_assert_eq!(r.roots(), roots);
            let read: Vec<(Cid, Vec<u8>)> = r.by_ref().collect::<Result<_, _>>().expect("valid");
            let written: Vec<(Cid, Vec<u8>)> = cids.into_iter().zip(blocks).collect();
            proptest::prop_assert_eq!(read, written);
        }
    }

    #[test]
    fn a_block_that_does_not_match_its_cid_is_rejected() {
        let (_, mut bytes) = car(&[b"one", b"two"]);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let results: Vec<_> = CarReader::new(&bytes[..]).expect("header").collect();
        assert!(results[0].is_ok());
        assert!(matches!(results[1], Err(CarError::Verify { index: 1, .. })));
    }

    #[test]
    fn truncation_and_huge_lengths_are_errors() {
        let (_, bytes) = car(&[b"one"]);
        for cut in 0..bytes.len() {
            let r = CarReader::new(&bytes[..cut]).and_then(|r| r.collect::<Result<Vec<_>, _>>());
            // Cut right after the header, a CAR is valid and empty.
            if let Ok(blocks) = r {
                assert!(blocks.is_empty(), "cut at {cut} yielded a block");
            }
        }
        // A header claiming 2^60 bytes is refused before any allocation.
        let mut buf = unsigned_varint::encode::u64_buffer();
        let huge = unsigned_varint::encode::u64(1 << 60, &mut buf);
        assert!(matches!(
            CarReader::new(huge),
            Err(CarError::TooLarge { .. })
        ));
    }
}
