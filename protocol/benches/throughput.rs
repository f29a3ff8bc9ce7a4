//! Throughput of the protocol crate on one core, each figure beside the
//! machine's own limit measured in the same run:
//! `cargo bench -p cairn-protocol --bench throughput [-- GIB]`.
//!
//! - CID import (UnixFS, `--only-hash`) vs raw sha2-256 over the same bytes.
//!   Target: import >= 85% of raw sha2-256. Both again on all cores, as an
//!   add hashes.
//! - Reed-Solomon encode, 10+20 and the default 6+3. Target: 10+20 >= 1 GB/s.
//! - The whole add pipeline without IO: import, pack, encode, piece CIDs.
#![allow(clippy::print_stdout)]

use std::io::{self, Read};
use std::time::Instant;

use cairn_protocol::erasure::{self, Scheme};
use cairn_protocol::manifest::{DEFAULT_PIECE_SIZE, Packer};
use cairn_protocol::unixfs::{self, CHUNK_SIZE, NullSink};
use sha2::Digest as _;

const MIB: usize = 1 << 20;
/// Distinct bytes cycled through; larger than the L3 cache, so hashing reads memory.
const POOL: usize = 64 * MIB;

/// Reads `total` bytes by cycling through `pool`.
struct Cycle<'a> {
    pool: &'a [u8],
    pos: usize,
    left: u64,
}

impl Read for Cycle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf
            .len()
            .min(self.pool.len() - self.pos)
            .min(self.left as usize);
        buf[..n].copy_from_slice(&self.pool[self.pos..self.pos + n]);
        self.pos = (self.pos + n) % self.pool.len();
        self.left -= n as u64;
        Ok(n)
    }
}

fn mbps(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / 1e6 / secs
}

fn main() -> io::Result<()> {
    let gib: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(1);
    let total = gib << 30;
    let pool: Vec<u8> = {
        // xorshift: incompressible enough, and no RNG crate needed here.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..POOL / 8)
            .flat_map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x.to_le_bytes()
            })
            .collect()
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("protocol throughput, {gib} GiB per figure, {cores} cores");

    // Raw sha2-256 over the same 256 KiB chunks the importer hashes, every
    // core taking every `cores`-th chunk.
    let sha_on = |threads: usize| {
        let start = Instant::now();
        std::thread::scope(|s| {
            for t in 0..threads {
                let pool = &pool;
                s.spawn(move || {
                    let mut sink = 0u8;
                    let mut done = 0u64;
                    while done < total / threads as u64 {
                        for chunk in pool.chunks(CHUNK_SIZE).skip(t).step_by(threads) {
                            sink ^= sha2::Sha256::digest(chunk)[0];
                        }
                        done += (POOL / threads) as u64;
                    }
                    std::hint::black_box(sink);
                });
            }
        });
        mbps(total, start.elapsed().as_secs_f64())
    };
    let sha_one = sha_on(1);
    let sha = sha_on(cores);

    // The importer hashes on rayon's pool: one thread of it is one core.
    let import_on = |threads: usize| -> io::Result<f64> {
        let pool_of = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map_err(io::Error::other)?;
        let start = Instant::now();
        let reader = Cycle {
            pool: &pool,
            pos: 0,
            left: total,
        };
        let root = pool_of.install(|| unixfs::import_file(reader, &mut NullSink))?;
        std::hint::black_box(root);
        Ok(mbps(total, start.elapsed().as_secs_f64()))
    };
    let (import_one, import) = (import_on(1)?, import_on(cores)?);

    println!("  raw sha2-256, one core (limit)       {sha_one:8.0} MB/s");
    println!(
        "  CID import (--only-hash), one core   {import_one:8.0} MB/s   {:5.1}% of sha2-256 (target >= 85%)",
        100.0 * import_one / sha_one
    );
    println!("  raw sha2-256, {cores} cores               {sha:8.0} MB/s");
    println!(
        "  CID import, {cores} cores                 {import:8.0} MB/s   {:5.1}% (it also reads every byte, on one thread)",
        100.0 * import / sha
    );

    for (scheme, piece) in [(Scheme { k: 10, m: 20 }, MIB), (Scheme::default(), 4 * MIB)] {
        let segment = &pool[..scheme.k as usize * piece];
        let mut shards = Vec::new();
        let start = Instant::now();
        let mut done = 0u64;
        while done < total {
            erasure::encode_into(scheme, segment, &mut shards).map_err(io::Error::other)?;
            std::hint::black_box(&shards);
            done += segment.len() as u64;
        }
        let rate = mbps(done, start.elapsed().as_secs_f64());
        let target = if scheme.k == 10 {
            "   (target >= 1000 MB/s)"
        } else {
            ""
        };
        println!(
            "  erasure encode {scheme:<5} {:>4} MiB pieces {rate:8.0} MB/s of data{target}",
            piece / MIB
        );
    }

    let start = Instant::now();
    let mut pieces = 0u64;
    let mut packer = Packer::new(Scheme::default(), DEFAULT_PIECE_SIZE, |s| {
        pieces += s.pieces.len() as u64;
        Ok(())
    })
    .map_err(io::Error::other)?;
    let reader = Cycle {
        pool: &pool,
        pos: 0,
        left: total,
    };
    let root = unixfs::import_file(reader, &mut packer)?.cid;
    let manifest = packer.finish(root)?;
    let pipeline = mbps(total, start.elapsed().as_secs_f64());
    println!(
        "  add pipeline, no IO (import + pack + 6+3 + piece CIDs) {pipeline:6.0} MB/s: {pieces} pieces, manifest {} KiB",
        manifest.encode().len() / 1024
    );
    Ok(())
}
