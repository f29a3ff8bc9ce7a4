//! Systematic Reed-Solomon coding of a segment into `k` data and `m` parity
//! shards (pieces): any `k` of the `k + m` rebuild the segment.
//!
//! A segment of `len` bytes is cut into `k` shards of `ceil(len / k)` bytes,
//! the last zero-padded; shard `i < k` is bytes `i * shard_len ..` of the
//! segment, so a byte range of the content maps to a range of one data shard.

use std::fmt;
use std::str::FromStr;

use reed_solomon_erasure::galois_8::ReedSolomon;
use serde::{Deserialize, Serialize};

/// Most shards GF(2^8) Reed-Solomon supports.
pub const MAX_SHARDS: u32 = 256;
/// Shard columns are coded this many bytes at a time so that a column of
/// every shard stays in L2 (30 shards x 16 KiB = 480 KiB): 10+20 measured
/// 724 MB/s with 16 KiB columns, 615 MB/s with 64 KiB (docs/BENCHMARKS.md).
const COLUMN: usize = 16 * 1024;

/// A coding scheme: `k` data shards and `m` parity shards per segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scheme {
    pub k: u32,
    pub m: u32,
}

impl Default for Scheme {
    /// 6+3: see docs/PROTOCOL.md for the choice.
    fn default() -> Self {
        Self { k: 6, m: 3 }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SchemeError {
    #[error("scheme {0}: k and m must each be at least 1, and k + m at most {MAX_SHARDS}")]
    OutOfRange(Scheme),
    #[error("scheme {0:?} is not of the form k+m, e.g. 6+3")]
    Syntax(String),
}

impl Scheme {
    pub fn validate(self) -> Result<Self, SchemeError> {
        if self.k == 0 || self.m == 0 || self.k.saturating_add(self.m) > MAX_SHARDS {
            return Err(SchemeError::OutOfRange(self));
        }
        Ok(self)
    }

    pub fn total(self) -> usize {
        (self.k + self.m) as usize
    }

    /// Bytes per shard for a segment of `len` bytes.
    pub fn shard_len(self, len: u64) -> u64 {
        len.div_ceil(u64::from(self.k))
    }

    fn codec(self) -> Result<ReedSolomon, ErasureError> {
        let s = self.validate()?;
        ReedSolomon::new(s.k as usize, s.m as usize).map_err(|e| ErasureError::Codec(e.to_string()))
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}+{}", self.k, self.m)
    }
}

impl FromStr for Scheme {
    type Err = SchemeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || SchemeError::Syntax(s.to_owned());
        let (k, m) = s.split_once('+').ok_or_else(syntax)?;
        let k = k.trim().parse().map_err(|_| syntax())?;
        let m = m.trim().parse().map_err(|_| syntax())?;
        Self { k, m }.validate()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ErasureError {
    #[error(transparent)]
    Scheme(#[from] SchemeError),
    #[error("{have} shards given, scheme {scheme} needs {}", scheme.total())]
    ShardCount { scheme: Scheme, have: usize },
    #[error("a segment is never empty")]
    Empty,
    #[error("shards differ in length")]
    ShardLength,
    #[error("only {have} of the {need} shards needed are present")]
    TooFewShards { have: usize, need: u32 },
    #[error("erasure coding failed: {0}")]
    Codec(String),
}

/// Codes `segment` into `k + m` shards, data shards first.
pub fn encode(scheme: Scheme, segment: &[u8]) -> Result<Vec<Vec<u8>>, ErasureError> {
    let mut shards = Vec::new();
    encode_into(scheme, segment, &mut shards)?;
    Ok(shards)
}

/// As [`encode`], reusing the buffers in `shards`: coding many segments
/// this way avoids allocating (and page-faulting) `k + m` fresh shards each.
pub fn encode_into(
    scheme: Scheme,
    segment: &[u8],
    shards: &mut Vec<Vec<u8>>,
) -> Result<(), ErasureError> {
    let rs = scheme.codec()?;
    if segment.is_empty() {
        return Err(ErasureError::Empty);
    }
    let shard_len = usize::try_from(scheme.shard_len(segment.len() as u64))
        .map_err(|_| ErasureError::ShardLength)?;
    shards.resize_with(scheme.total(), Vec::new);
    for (i, shard) in shards.iter_mut().enumerate() {
        shard.resize(shard_len, 0);
        if i < scheme.k as usize {
            let start = (i * shard_len).min(segment.len());
            let end = ((i + 1) * shard_len).min(segment.len());
            shard[..end - start].copy_from_slice(&segment[start..end]);
            shard[end - start..].fill(0);
        }
    }
    let (data, parity) = shards.split_at_mut(scheme.k as usize);
    let data: Vec<&[u8]> = data.iter().map(Vec::as_slice).collect();
    code(&rs, &data, parity)
}

/// The `m` parity shards of `k` data shards of one length, as
/// [`encode`] would code them.
pub fn parity(scheme: Scheme, data: &[&[u8]]) -> Result<Vec<Vec<u8>>, ErasureError> {
    let rs = scheme.codec()?;
    if data.len() != scheme.k as usize {
        return Err(ErasureError::ShardCount {
            scheme,
            have: data.len(),
        });
    }
    let len = data.first().map_or(0, |d| d.len());
    if len == 0 || data.iter().any(|d| d.len() != len) {
        return Err(ErasureError::ShardLength);
    }
    let mut parity = vec![vec![0; len]; scheme.m as usize];
    code(&rs, data, &mut parity)?;
    Ok(parity)
}

/// Codes `parity` from `data`, all of one length, a column at a time.
fn code(rs: &ReedSolomon, data: &[&[u8]], parity: &mut [Vec<u8>]) -> Result<(), ErasureError> {
    let len = data.first().map_or(0, |d| d.len());
    for col in (0..len).step_by(COLUMN) {
        let end = (col + COLUMN).min(len);
        let data: Vec<&[u8]> = data.iter().map(|s| &s[col..end]).collect();
        let mut parity: Vec<&mut [u8]> = parity.iter_mut().map(|s| &mut s[col..end]).collect();
        rs.encode_sep(&data, &mut parity)
            .map_err(|e| ErasureError::Codec(e.to_string()))?;
    }
    Ok(())
}

/// Fills in the missing data shards from any `k` present ones; parity
/// shards are rebuilt too when `parity` is true (to repair them).
pub fn reconstruct(
    scheme: Scheme,
    shards: &mut [Option<Vec<u8>>],
    parity: bool,
) -> Result<(), ErasureError> {
    let rs = scheme.codec()?;
    if shards.len() != scheme.total() {
        return Err(ErasureError::ShardCount {
            scheme,
            have: shards.len(),
        });
    }
    let have = shards.iter().filter(|s| s.is_some()).count();
    if have < scheme.k as usize {
        return Err(ErasureError::TooFewShards {
            have,
            need: scheme.k,
        });
    }
    let mut lens = shards.iter().flatten().map(Vec::len);
    let len = lens.next().unwrap_or(0);
    if lens.any(|l| l != len) {
        return Err(ErasureError::ShardLength);
    }
    let result = if parity {
        rs.reconstruct(shards)
    } else {
        rs.reconstruct_data(shards)
    };
    result.map_err(|e| ErasureError::Codec(e.to_string()))
}

/// Rebuilds a segment of `len` bytes from its shards (any `k` present).
pub fn decode(
    scheme: Scheme,
    mut shards: Vec<Option<Vec<u8>>>,
    len: u64,
) -> Result<Vec<u8>, ErasureError> {
    if shards.len() != scheme.total() {
        return Err(ErasureError::ShardCount {
            scheme,
            have: shards.len(),
        });
    }
    if shards[..scheme.k as usize].iter().any(Option::is_none) {
        reconstruct(scheme, &mut shards, false)?;
    }
    let len = usize::try_from(len).map_err(|_| ErasureError::ShardLength)?;
    let mut segment = Vec::with_capacity(len);
    for shard in shards.into_iter().take(scheme.k as usize).flatten() {
        let want = (len - segment.len()).min(shard.len());
        segment.extend_from_slice(&shard[..want]);
    }
    if segment.len() != len {
        return Err(ErasureError::ShardLength);
    }
    Ok(segment)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn scheme_parses_and_validates() {
        assert_eq!("6+3".parse(), Ok(Scheme { k: 6, m: 3 }));
        assert!("6".parse::<Scheme>().is_err());
        assert!("0+3".parse::<Scheme>().is_err());
        assert!("200+57".parse::<Scheme>().is_err());
        assert_eq!(Scheme::default().to_string(), "6+3");
    }

    #[test]
    fn data_shards_are_the_segment_itself() {
        let segment: Vec<u8> = (0..100u8).collect();
        let shards = encode(Scheme { k: 3, m: 2 }, &segment).expect("encode");
        assert_eq!(shards.len(), 5);
        assert_eq!(shards[0], &segment[..34]);
        assert_eq!(&shards[2][..32], &segment[68..]);
        assert_eq!(&shards[2][32..], [0, 0]);
    }

    #[test]
    fn parity_of_data_slices_is_what_encode_codes() {
        let scheme = Scheme { k: 3, m: 2 };
        let segment: Vec<u8> = (0..3 * 40_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let shards = encode(scheme, &segment).expect("encode");
        let data: Vec<&[u8]> = segment.chunks(40_000).collect();
        assert_eq!(parity(scheme, &data).expect("parity"), shards[3..]);
        assert_eq!(
            parity(scheme, &data[..2]),
            Err(ErasureError::ShardCount { scheme, have: 2 })
        );
        let uneven = [&segment[..10], &segment[..10], &segment[..9]];
        assert_eq!(parity(scheme, &uneven), Err(ErasureError::ShardLength));
    }

    #[test]
    fn too_few_shards_is_an_error() {
        let scheme = Scheme { k: 3, m: 2 };
        let mut shards: Vec<_> = encode(scheme, b"abcdefg")
            .expect("encode")
            .into_iter()
            .map(Some)
            .collect();
        shards[0] = None;
        shards[1] = None;
        shards[4] = None;
        assert_eq!(
            decode(scheme, shards, 7),
            Err(ErasureError::TooFewShards { have: 2, need: 3 })
        );
    }

    proptest! {
        // Any k of k+m shards rebuild the segment, whichever are lost; longer
        // than one coding column so columns are exercised too.
        #[test]
        fn any_k_shards_rebuild_the_segment(
            k in 1u32..12, m in 1u32..8,
            len in 1usize..(3 * COLUMN),
            seed in any::<u64>(),
        ) {
            use rand::{SeedableRng, seq::SliceRandom};
            let scheme = Scheme { k, m };
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let segment: Vec<u8> = (0..len).map(|i| (i as u64 ^ seed) as u8).collect();
            let shards = encode(scheme, &segment).expect("encode");
            let mut order: Vec<usize> = (0..scheme.total()).collect();
            order.shuffle(&mut rng);
            let mut partial: Vec<Option<Vec<u8>>> = shards.iter().cloned().map(Some).collect();
            for &lost in &order[..m as usize] {
                partial[lost] = None;
            }
            let mut repaired = partial.clone();
            prop_assert_eq!(decode(scheme, partial, len as u64).expect("decode"), segment);
            reconstruct(scheme, &mut repaired, true).expect("repair");
            let repaired: Vec<Vec<u8>> = repaired.into_iter().flatten().collect();
            prop_assert_eq!(repaired, shards);
        }
    }
}
