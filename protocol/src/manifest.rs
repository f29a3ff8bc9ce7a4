//! The manifest: a content-addressed DAG-CBOR record of how content became
//! pieces. It lists the content's blocks in the order they were packed, which
//! gives each block's place in the *stream* (all blocks end to end), and the
//! piece CIDs of every segment of that stream. That is enough to rebuild and
//! verify every block.
//!
//! The stream is cut into segments of `k * piece_size` bytes (the last one
//! shorter); a block may straddle two segments. Each segment is coded with
//! [`erasure`] into `k + m` pieces of `ceil(segment_len / k)` bytes.

use std::collections::HashMap;
use std::io;
use std::ops::Range;

use bytes::Bytes;
use cid::Cid;
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::block::{self, DAG_CBOR};
use crate::erasure::{self, Scheme};
use crate::unixfs::{BlockSink, MAX_BLOCK_SIZE};

/// The manifest format this code writes and reads.
pub const VERSION: u64 = 1;
/// Largest encoded manifest accepted: about 307,000 blocks of 256 KiB
/// (75 GiB) at 6+3 with holder hints, 330,000 (80 GiB) without.
pub const MAX_MANIFEST_SIZE: usize = 16 * 1024 * 1024;
/// Largest piece.
pub const MAX_PIECE_SIZE: u64 = 4 * 1024 * 1024;
/// Default piece size: see docs/PROTOCOL.md.
pub const DEFAULT_PIECE_SIZE: u64 = 4 * 1024 * 1024;
/// Largest segment (`k * piece_size`): bounds the memory of one segment in flight.
pub const MAX_SEGMENT_SIZE: u64 = 64 * 1024 * 1024;
/// Longest holder hint: a peer ID's bytes (an identity multihash of an
/// ed25519 key is 38).
pub const MAX_HOLDER_LEN: usize = 64;

/// A block's CID and length, in stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlockRef(pub Cid, pub u64);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub version: u64,
    /// The content's root CID, as IPFS gives it.
    pub root: Cid,
    pub scheme: Scheme,
    /// Bytes per piece of a full segment.
    pub piece_size: u64,
    /// Total bytes of all blocks.
    pub stream_len: u64,
    pub blocks: Vec<BlockRef>,
    /// Per segment, its `k + m` piece CIDs, data pieces first.
    pub segments: Vec<Vec<Cid>>,
    /// Hints: per segment, for each piece the peer ID (bytes) of the node
    /// the add placed it on, if known. A get asks them before the DHT;
    /// pieces move on repair, so a hint may be stale. Empty: no hints.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holders: Vec<Vec<Option<ByteBuf>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, over the {MAX_MANIFEST_SIZE}-byte limit")]
    TooLarge(usize),
    #[error("manifest is not valid DAG-CBOR: {0}")]
    Decode(String),
    #[error("manifest version {0} is not supported (this is version {VERSION})")]
    Version(u64),
    #[error(transparent)]
    Scheme(#[from] erasure::SchemeError),
    #[error("manifest is inconsistent: {0}")]
    Invalid(String),
}

fn invalid(reason: impl Into<String>) -> ManifestError {
    ManifestError::Invalid(reason.into())
}

/// Checks a piece size and scheme before any segment is built.
pub fn validate_layout(scheme: Scheme, piece_size: u64) -> Result<(), ManifestError> {
    scheme.validate()?;
    if piece_size == 0 || piece_size > MAX_PIECE_SIZE {
        return Err(invalid(format!(
            "piece size {piece_size} is not in 1..={MAX_PIECE_SIZE}"
        )));
    }
    if u64::from(scheme.k) * piece_size > MAX_SEGMENT_SIZE {
        return Err(invalid(format!(
            "segments of {} x {piece_size} bytes exceed {MAX_SEGMENT_SIZE}",
            scheme.k
        )));
    }
    Ok(())
}

impl Manifest {
    pub fn encode(&self) -> Vec<u8> {
        serde_ipld_dagcbor::to_vec(self).expect("a manifest always encodes")
    }

    /// The manifest's own CID (DAG-CBOR, sha2-256).
    pub fn cid(&self) -> Cid {
        self.encode_with_cid().1
    }

    /// The encoding and its CID, encoding once.
    pub fn encode_with_cid(&self) -> (Vec<u8>, Cid) {
        let bytes = self.encode();
        let cid = block::sha256_cid(DAG_CBOR, &bytes);
        (bytes, cid)
    }

    /// Decodes and validates a manifest from untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_SIZE {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let m: Manifest = serde_ipld_dagcbor::from_slice(bytes)
            .map_err(|e| ManifestError::Decode(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Checks every internal consistency rule; [`Manifest::decode`] calls it.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.version != VERSION {
            return Err(ManifestError::Version(self.version));
        }
        validate_layout(self.scheme, self.piece_size)?;
        let mut total: u64 = 0;
        for b in &self.blocks {
            if b.1 > MAX_BLOCK_SIZE as u64 {
                return Err(invalid(format!("block {} is {} bytes", b.0, b.1)));
            }
            total = total
                .checked_add(b.1)
                .ok_or_else(|| invalid("block lengths overflow"))?;
        }
        if total != self.stream_len {
            return Err(invalid(format!(
                "blocks hold {total} bytes, stream_len says {}",
                self.stream_len
            )));
        }
        if !self.blocks.iter().any(|b| b.0 == self.root) {
            return Err(invalid("the root is not among the blocks"));
        }
        let want = self.stream_len.div_ceil(self.segment_size());
        if self.segments.len() as u64 != want {
            return Err(invalid(format!(
                "{} segments, the stream needs {want}",
                self.segments.len()
            )));
        }
        for (i, pieces) in self.segments.iter().enumerate() {
            if pieces.len() != self.scheme.total() {
                return Err(invalid(format!("segment {i} has {} pieces", pieces.len())));
            }
            if let Some(p) = pieces.iter().find(|p| block::blake3_root(p).is_none()) {
                return Err(invalid(format!(
                    "piece {p} of segment {i} is not a BLAKE3 piece CID"
                )));
            }
        }
        if !self.holders.is_empty() {
            if self.holders.len() != self.segments.len() {
                return Err(invalid(format!(
                    "holders name {} segments, there are {}",
                    self.holders.len(),
                    self.segments.len()
                )));
            }
            for (i, holders) in self.holders.iter().enumerate() {
                if holders.len() != self.scheme.total() {
                    return Err(invalid(format!(
                        "holders of segment {i} name {} pieces",
                        holders.len()
                    )));
                }
                if holders
                    .iter()
                    .flatten()
                    .any(|h| h.is_empty() || h.len() > MAX_HOLDER_LEN)
                {
                    return Err(invalid(format!(
                        "a holder of segment {i} is not 1..={MAX_HOLDER_LEN} bytes"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The hinted holder of piece `piece` of segment `segment` (peer ID bytes).
    pub fn holder(&self, segment: usize, piece: usize) -> Option<&[u8]> {
        self.holders
            .get(segment)?
            .get(piece)?
            .as_deref()
            .map(|h| &h[..])
    }

    /// Bytes per full segment.
    pub fn segment_size(&self) -> u64 {
        u64::from(self.scheme.k) * self.piece_size
    }

    /// Bytes of segment `index` (0 past the end).
    pub fn segment_len(&self, index: u64) -> u64 {
        let start = index.saturating_mul(self.segment_size());
        self.stream_len
            .saturating_sub(start)
            .min(self.segment_size())
    }

    /// Bytes of each piece of segment `index`.
    pub fn piece_len(&self, index: u64) -> u64 {
        self.scheme.shard_len(self.segment_len(index))
    }

    /// The segments that hold stream bytes `range`.
    pub fn segments_for(&self, range: Range<u64>) -> Range<u64> {
        if range.start >= range.end {
            return 0..0;
        }
        let size = self.segment_size();
        range.start / size..range.end.min(self.stream_len).div_ceil(size)
    }

    /// Where stream bytes `range` lie: each part as (segment, data piece,
    /// bytes of that piece), in stream order.
    pub fn piece_ranges(&self, range: Range<u64>) -> Vec<(u64, usize, Range<u64>)> {
        let size = self.segment_size();
        let mut out = Vec::new();
        for s in self.segments_for(range.clone()) {
            let (base, piece_len) = (s * size, self.piece_len(s));
            let from = range.start.max(base) - base;
            let to = range.end.min(base + self.segment_len(s)) - base;
            for piece in from / piece_len..to.div_ceil(piece_len) {
                let at = piece * piece_len;
                out.push((
                    s,
                    piece as usize,
                    from.max(at) - at..to.min(at + piece_len) - at,
                ));
            }
        }
        out
    }

    /// Where each block sits in the stream (the first place, for repeats).
    pub fn locate(&self) -> HashMap<Cid, Range<u64>> {
        let mut at = 0;
        let mut map = HashMap::with_capacity(self.blocks.len());
        for b in &self.blocks {
            map.entry(b.0).or_insert(at..at + b.1);
            at += b.1;
        }
        map
    }
}

/// One coded segment: its index and its `k + m` pieces, data pieces first.
/// The data pieces are slices of one buffer, the zero-padded segment.
#[derive(Debug, Clone)]
pub struct EncodedSegment {
    pub index: u64,
    pub pieces: Vec<(Cid, Bytes)>,
}

/// Packs blocks into segments as an import produces them and codes each
/// full segment at once, handing it to `on_segment`; [`Packer::finish`]
/// returns the manifest. Holds at most one segment.
pub struct Packer<F> {
    scheme: Scheme,
    piece_size: u64,
    buf: Vec<u8>,
    blocks: Vec<BlockRef>,
    segments: Vec<Vec<Cid>>,
    on_segment: F,
}

impl<F: FnMut(EncodedSegment) -> io::Result<()>> Packer<F> {
    pub fn new(scheme: Scheme, piece_size: u64, on_segment: F) -> Result<Self, ManifestError> {
        validate_layout(scheme, piece_size)?;
        Ok(Self {
            scheme,
            piece_size,
            buf: Vec::new(),
            blocks: Vec::new(),
            segments: Vec::new(),
            on_segment,
        })
    }

    fn segment_size(&self) -> usize {
        // validate_layout bounds it by MAX_SEGMENT_SIZE.
        (u64::from(self.scheme.k) * self.piece_size) as usize
    }

    fn flush(&mut self) -> io::Result<()> {
        // The data shards are the segment cut in k, the last zero-padded
        // (`erasure`): pad the buffer and slice it rather than copy it.
        let k = self.scheme.k as usize;
        let shard_len = self.scheme.shard_len(self.buf.len() as u64) as usize;
        self.buf.resize(k * shard_len, 0);
        let segment = Bytes::from(std::mem::take(&mut self.buf));
        let data: Vec<Bytes> = (0..k)
            .map(|i| segment.slice(i * shard_len..(i + 1) * shard_len))
            .collect();
        let slices: Vec<&[u8]> = data.iter().map(|d| d.as_ref()).collect();
        let parity = erasure::parity(self.scheme, &slices).map_err(io::Error::other)?;
        let pieces: Vec<(Cid, Bytes)> = data
            .into_iter()
            .chain(parity.into_iter().map(Bytes::from))
            .map(|s| (block::piece_cid(&s), s))
            .collect();
        self.segments.push(pieces.iter().map(|p| p.0).collect());
        (self.on_segment)(EncodedSegment {
            index: self.segments.len() as u64 - 1,
            pieces,
        })
    }

    /// Codes the last, partial segment and returns the manifest.
    pub fn finish(mut self, root: Cid) -> io::Result<Manifest> {
        if !self.buf.is_empty() {
            self.flush()?;
        }
        let manifest = Manifest {
            version: VERSION,
            root,
            scheme: self.scheme,
            piece_size: self.piece_size,
            stream_len: self.blocks.iter().map(|b| b.1).sum(),
            blocks: self.blocks,
            segments: self.segments,
            holders: Vec::new(),
        };
        manifest.validate().map_err(io::Error::other)?;
        Ok(manifest)
    }
}

impl<F: FnMut(EncodedSegment) -> io::Result<()>> BlockSink for Packer<F> {
    fn put(&mut self, cid: &Cid, mut block: &[u8]) -> io::Result<()> {
        self.blocks.push(BlockRef(*cid, block.len() as u64));
        let size = self.segment_size();
        while !block.is_empty() {
            let take = (size - self.buf.len()).min(block.len());
            if self.buf.capacity() == 0 {
                self.buf.reserve_exact(size);
            }
            self.buf.extend_from_slice(&block[..take]);
            block = &block[take..];
            if self.buf.len() == size {
                self.flush()?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::unixfs::{self, BlockSource, CHUNK_SIZE};

    /// Imports `data` through a packer, keeping every piece.
    fn pack(data: &[u8], scheme: Scheme, piece_size: u64) -> (Manifest, Vec<Vec<Vec<u8>>>) {
        let mut segments = Vec::new();
        let mut packer = Packer::new(scheme, piece_size, |s: EncodedSegment| {
            assert_eq!(s.index as usize, segments.len());
            segments.push(s.pieces.into_iter().map(|p| p.1.to_vec()).collect());
            Ok(())
        })
        .expect("valid layout");
        let root = unixfs::import_file(data, &mut packer).expect("import").cid;
        let manifest = packer.finish(root).expect("finish");
        (manifest, segments)
    }

    /// Serves blocks from the segments a manifest describes.
    struct FromSegments<'a>(&'a Manifest, Vec<Vec<u8>>);
    impl BlockSource for FromSegments<'_> {
        fn get(&mut self, cid: &Cid) -> io::Result<bytes::Bytes> {
            let at = self
                .0
                .locate()
                .get(cid)
                .cloned()
                .ok_or(io::ErrorKind::NotFound)?;
            let stream: Vec<u8> = self.1.concat();
            Ok(stream[at.start as usize..at.end as usize].to_vec().into())
        }
    }

    #[test]
    fn encode_decode_round_trip_and_stable_cid() {
        let data = vec![7u8; 3 * CHUNK_SIZE + 5];
        let (m, _) = pack(&data, Scheme { k: 2, m: 1 }, 100_000);
        let bytes = m.encode();
        let back = Manifest::decode(&bytes).expect("valid");
        assert_eq!(back, m);
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.cid(), m.cid());
        assert_eq!(m.cid().codec(), DAG_CBOR);
    }

    #[test]
    fn inconsistent_manifests_are_rejected() {
        let (m, _) = pack(&[1u8; 1000], Scheme { k: 2, m: 1 }, 300);
        let mut bad = m.clone();
        bad.stream_len += 1;
        assert!(Manifest::decode(&bad.encode()).is_err());
        let mut bad = m.clone();
        bad.segments[0].pop();
        assert!(Manifest::decode(&bad.encode()).is_err());
        let mut bad = m.clone();
        bad.segments.pop();
        assert!(Manifest::decode(&bad.encode()).is_err());
        let mut bad = m.clone();
        bad.version = 2;
        assert!(matches!(
            Manifest::decode(&bad.encode()),
            Err(ManifestError::Version(2))
        ));
        let mut bad = m.clone();
        bad.piece_size = MAX_PIECE_SIZE + 1;
        assert!(Manifest::decode(&bad.encode()).is_err());
        let mut bad = m;
        bad.segments[0][0] = bad.root;
        assert!(Manifest::decode(&bad.encode()).is_err());
        assert!(Manifest::decode(&[0xff; 10]).is_err());
    }

    #[test]
    fn holder_hints_are_optional_and_checked() {
        let (m, _) = pack(&[1u8; 1000], Scheme { k: 2, m: 1 }, 300);
        assert!(m.holders.is_empty());
        let no_hints = m.encode();
        let mut hinted = m.clone();
        let peer = ByteBuf::from(vec![0x12; 38]);
        hinted.holders = vec![vec![Some(peer.clone()), None, Some(peer.clone())]; 2];
        let bytes = hinted.encode();
        assert_ne!(bytes, no_hints, "hints are part of the encoding");
        let back = Manifest::decode(&bytes).expect("valid");
        assert_eq!(back.holder(0, 0), Some(&peer[..]));
        assert_eq!(back.holder(1, 1), None);
        assert_eq!(back.holder(2, 0), None);
        // Without hints the encoding is the one before hints existed.
        assert_eq!(Manifest::decode(&no_hints).expect("valid"), m);

        let mut bad = hinted.clone();
        bad.holders.pop();
        assert!(Manifest::decode(&bad.encode()).is_err());
        let mut bad = hinted.clone();
        bad.holders[1].pop();
        assert!(Manifest::decode(&bad.encode()).is_err());
        let mut bad = hinted.clone();
        bad.holders[0][1] = Some(ByteBuf::from(vec![1; MAX_HOLDER_LEN + 1]));
        assert!(Manifest::decode(&bad.encode()).is_err());
        let mut bad = hinted;
        bad.holders[0][1] = Some(ByteBuf::new());
        assert!(Manifest::decode(&bad.encode()).is_err());
    }

    #[test]
    fn segment_arithmetic() {
        let (m, segs) = pack(&[3u8; 1000], Scheme { k: 2, m: 1 }, 300);
        // 1000 bytes in segments of 600: 600 + 400, pieces of 300 and 200.
        assert_eq!(segs.len(), 2);
        assert_eq!(
            (m.segment_len(0), m.segment_len(1), m.segment_len(2)),
            (600, 400, 0)
        );
        assert_eq!((m.piece_len(0), m.piece_len(1)), (300, 200));
        assert_eq!(segs[1][2].len(), 200);
        assert_eq!(m.segments_for(599..601), 0..2);
        assert_eq!(m.segments_for(600..601), 1..2);
        assert_eq!(m.segments_for(5..5), 0..0);
        assert_eq!(m.piece_ranges(200..400), [(0, 0, 200..300), (0, 1, 0..100)]);
        assert_eq!(m.piece_ranges(550..700), [(0, 1, 250..300), (1, 0, 0..100)]);
        assert_eq!(m.piece_ranges(900..1000), [(1, 1, 100..200)]);
        assert!(m.piece_ranges(5..5).is_empty());
        let stream = [3u8; 1000];
        for range in [0..1000, 299..301, 599..901] {
            let parts: Vec<u8> = m
                .piece_ranges(range.clone())
                .into_iter()
                .flat_map(|(s, p, r)| {
                    segs[s as usize][p][r.start as usize..r.end as usize].to_vec()
                })
                .collect();
            assert_eq!(parts, stream[range.start as usize..range.end as usize]);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        // Content survives packing, the loss of any m pieces of every
        // segment, decoding and reading back through the UnixFS reader.
        #[test]
        fn content_survives_losing_m_pieces_per_segment(
            len in 0usize..(5 * CHUNK_SIZE),
            k in 1u32..6, m in 1u32..4,
            piece_size in 1000u64..300_000,
            seed in any::<u64>(),
        ) {
            use rand::{Rng, SeedableRng};
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let data: Vec<u8> = (0..len).map(|_| rng.r#gen()).collect();
            let scheme = Scheme { k, m };
            let (manifest, segments) = pack(&data, scheme, piece_size);
            let manifest = Manifest::decode(&manifest.encode()).expect("round trip");
            let mut decoded = Vec::new();
            for (i, pieces) in segments.into_iter().enumerate() {
                let mut partial: Vec<Option<Vec<u8>>> = pieces.into_iter().map(Some).collect();
                for _ in 0..m {
                    let lost = rng.gen_range(0..partial.len());
                    partial[lost] = None;
                }
                for (p, cid) in partial.iter().zip(&manifest.segments[i]).filter_map(|(p, c)| p.as_ref().map(|p| (p, c))) {
                    prop_assert!(block::verify(cid, p).is_ok());
                }
                let seg = erasure::decode(scheme, partial, manifest.segment_len(i as u64)).expect("k present");
                decoded.push(seg);
            }
            let mut out = Vec::new();
            unixfs::read_range(&mut FromSegments(&manifest, decoded), &manifest.root, 0, None, &mut out)
                .expect("read back");
            prop_assert_eq!(out, data);
        }
    }
}
