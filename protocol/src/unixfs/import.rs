//! Importing bytes and directories into UnixFS blocks.
//!
//! Memory is bounded by two batches of chunks ([`IMPORT_BATCH`] × 256 KiB
//! each) plus at most [`MAX_LINKS`] pending links per tree level, whatever the
//! content's size.

use std::collections::BTreeMap;
use std::io::{self, Read};

use cid::Cid;
use ipld_dagpb::{PbLink, PbNode};
use prost::Message as _;
use rayon::prelude::*;

use super::{CHUNK_SIZE, Data, DataType, MAX_DIRECTORY_LINK_BYTES, MAX_LINKS, hamt};
use crate::block::{self, DAG_PB, RAW};

/// Where an import puts its blocks, in the order it produces them: every
/// block after the blocks it links to, the root last.
pub trait BlockSink {
    fn put(&mut self, cid: &Cid, block: &[u8]) -> io::Result<()>;
}

/// Discards blocks: computing a CID without storing anything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NullSink;

impl BlockSink for NullSink {
    fn put(&mut self, _: &Cid, _: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Discards blocks, counting their bytes: an import's stream length.
#[derive(Debug, Default, Clone, Copy)]
pub struct ByteCount(pub u64);

impl BlockSink for ByteCount {
    fn put(&mut self, _: &Cid, block: &[u8]) -> io::Result<()> {
        self.0 += block.len() as u64;
        Ok(())
    }
}

/// Keeps every block by its CID: an import held in memory.
impl BlockSink for std::collections::HashMap<Cid, Vec<u8>> {
    fn put(&mut self, cid: &Cid, block: &[u8]) -> io::Result<()> {
        self.insert(*cid, block.to_vec());
        Ok(())
    }
}

impl<S: BlockSink + ?Sized> BlockSink for &mut S {
    fn put(&mut self, cid: &Cid, block: &[u8]) -> io::Result<()> {
        (**self).put(cid, block)
    }
}

/// An imported file or directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub cid: Cid,
    /// Bytes of content (0 for a directory).
    pub file_size: u64,
    /// Bytes of all blocks in the entry's DAG: the `Tsize` of a link to it.
    pub dag_size: u64,
}

/// Chunks hashed at once, on all cores, while the next batch is read.
pub const IMPORT_BATCH: usize = 8;

/// How an import names a file's raw leaves.
pub trait Leaves: Sync {
    /// The CID of the file's leaf number `index` (from 0), whose bytes are
    /// `chunk`. Called from several threads at once, in no order.
    fn cid(&self, index: u64, chunk: &[u8]) -> io::Result<Cid>;
}

/// Names every leaf by hashing it, as `ipfs add` does.
#[derive(Debug, Default, Clone, Copy)]
pub struct HashLeaves;

impl Leaves for HashLeaves {
    fn cid(&self, _: u64, chunk: &[u8]) -> io::Result<Cid> {
        Ok(block::sha256_cid(RAW, chunk))
    }
}

/// Imports one file's bytes, writing its blocks to `sink`.
pub fn import_file(reader: impl Read + Send, sink: &mut impl BlockSink) -> io::Result<Entry> {
    import_file_with(reader, sink, &HashLeaves)
}

/// [`import_file`], the raw leaves named by `leaves`: a caller that has
/// hashed the same file before can skip hashing it again.
pub fn import_file_with(
    mut reader: impl Read + Send,
    sink: &mut impl BlockSink,
    leaves: &impl Leaves,
) -> io::Result<Entry> {
    let mut batch = vec![0u8; IMPORT_BATCH * CHUNK_SIZE];
    let mut next = vec![0u8; IMPORT_BATCH * CHUNK_SIZE];
    let mut tree = BalancedTree::default();
    let mut n = read_full(&mut reader, &mut batch)?;
    loop {
        let last = n < batch.len();
        let mut chunks: Vec<&[u8]> = batch[..n].chunks(CHUNK_SIZE).collect();
        // Empty content is one empty leaf.
        if tree.leaves == 0 && chunks.is_empty() {
            chunks.push(&[]);
        }
        let first = tree.leaves;
        let (cids, read) = rayon::join(
            || {
                chunks
                    .par_iter()
                    .enumerate()
                    .map(|(i, c)| leaves.cid(first + i as u64, c))
                    .collect::<io::Result<Vec<_>>>()
            },
            || match last {
                true => Ok(0),
                false => read_full(&mut reader, &mut next),
            },
        );
        for (chunk, cid) in chunks.iter().zip(cids?) {
            sink.put(&cid, chunk)?;
            let size = chunk.len() as u64;
            tree.push_leaf(
                Entry {
                    cid,
                    file_size: size,
                    dag_size: size,
                },
                sink,
            )?;
        }
        if last {
            break;
        }
        n = read?;
        std::mem::swap(&mut batch, &mut next);
    }
    tree.finish(sink)
}

/// Reads until `buf` is full or the reader is exhausted.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// The balanced layout built as a stream: `levels[i]` holds the links not yet
/// gathered into a node at height `i + 1`. A level that reaches
/// [`MAX_LINKS`] becomes a node at once, which gives the same tree as
/// batching all leaves by 174, then all of those nodes by 174, and so on.
#[derive(Default)]
struct BalancedTree {
    levels: Vec<Vec<Entry>>,
    leaves: u64,
}

impl BalancedTree {
    fn push_leaf(&mut self, leaf: Entry, sink: &mut impl BlockSink) -> io::Result<()> {
        self.leaves += 1;
        self.push(0, leaf, sink)
    }

    fn push(&mut self, level: usize, entry: Entry, sink: &mut impl BlockSink) -> io::Result<()> {
        if self.levels.len() == level {
            self.levels.push(Vec::with_capacity(MAX_LINKS));
        }
        self.levels[level].push(entry);
        if self.levels[level].len() == MAX_LINKS {
            let node = file_node(&std::mem::take(&mut self.levels[level]), sink)?;
            self.push(level + 1, node, sink)?;
        }
        Ok(())
    }

    fn finish(mut self, sink: &mut impl BlockSink) -> io::Result<Entry> {
        let mut level = 0;
        loop {
            let pending = std::mem::take(&mut self.levels[level]);
            let higher = self.levels[level + 1..].iter().any(|l| !l.is_empty());
            // The one entry left at the top is the root; a file of one chunk
            // is its raw leaf.
            if !higher && pending.len() == 1 {
                return Ok(pending[0]);
            }
            if !pending.is_empty() {
                let node = file_node(&pending, sink)?;
                if self.levels.len() == level + 1 {
                    self.levels.push(Vec::new());
                }
                self.levels[level + 1].push(node);
            }
            level += 1;
        }
    }
}

/// A dag-pb file node over `children`, written to `sink`.
fn file_node(children: &[Entry], sink: &mut impl BlockSink) -> io::Result<Entry> {
    let file_size = children.iter().map(|c| c.file_size).sum();
    let data = Data {
        r#type: DataType::File as i32,
        filesize: Some(file_size),
        blocksizes: children.iter().map(|c| c.file_size).collect(),
        ..Default::default()
    };
    let links = children
        .iter()
        .map(|c| PbLink {
            cid: c.cid,
            name: Some(String::new()),
            size: Some(c.dag_size),
        })
        .collect();
    let node = write_node(links, data, sink)?;
    Ok(Entry { file_size, ..node })
}

pub(super) fn write_node(
    links: Vec<PbLink>,
    data: Data,
    sink: &mut impl BlockSink,
) -> io::Result<Entry> {
    let links_size: u64 = links.iter().filter_map(|l| l.size).sum();
    let bytes = PbNode {
        links,
        data: Some(data.encode_to_vec().into()),
    }
    .into_bytes();
    let cid = block::sha256_cid(DAG_PB, &bytes);
    sink.put(&cid, &bytes)?;
    Ok(Entry {
        cid,
        file_size: 0,
        dag_size: bytes.len() as u64 + links_size,
    })
}

/// Why an entry cannot join a directory.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DirectoryError {
    #[error("directory entry name {0:?} is empty, `.`, `..` or contains `/`")]
    BadName(String),
    #[error("directory already has an entry named {0:?}")]
    Duplicate(String),
}

/// A UnixFS directory, built from already-imported entries: one node, or
/// HAMT shards once the links outgrow [`MAX_DIRECTORY_LINK_BYTES`].
#[derive(Debug, Default)]
pub struct DirectoryBuilder {
    entries: BTreeMap<String, Entry>,
    link_bytes: usize,
}

impl DirectoryBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn add(&mut self, name: &str, entry: Entry) -> Result<(), DirectoryError> {
        if name.is_empty() || name == "." || name == ".." || name.contains('/') {
            return Err(DirectoryError::BadName(name.to_owned()));
        }
        if self.entries.contains_key(name) {
            return Err(DirectoryError::Duplicate(name.to_owned()));
        }
        // The estimate IPFS uses to decide when to shard.
        self.link_bytes += name.len() + entry.cid.encoded_len();
        self.entries.insert(name.to_owned(), entry);
        Ok(())
    }

    /// Writes the directory: one node whose links are sorted by name
    /// bytes, or its shards, the root last.
    pub fn finish(self, sink: &mut impl BlockSink) -> io::Result<Entry> {
        if self.link_bytes > MAX_DIRECTORY_LINK_BYTES {
            return hamt::build(self.entries.into_iter().collect(), sink);
        }
        let links = self
            .entries
            .into_iter()
            .map(|(name, e)| PbLink {
                cid: e.cid,
                name: Some(name),
                size: Some(e.dag_size),
            })
            .collect();
        let data = Data {
            r#type: DataType::Directory as i32,
            ..Default::default()
        };
        write_node(links, data, sink)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects blocks, checking each against its CID.
    #[derive(Default)]
    struct Collect(Vec<(Cid, Vec<u8>)>);
    impl BlockSink for Collect {
        fn put(&mut self, cid: &Cid, block: &[u8]) -> io::Result<()> {
            block::verify(cid, block).map_err(io::Error::other)?;
            self.0.push((*cid, block.to_vec()));
            Ok(())
        }
    }

    fn import(len: usize) -> (Entry, Collect) {
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut sink = Collect::default();
        let entry = import_file(&data[..], &mut sink).expect("import from memory");
        (entry, sink)
    }

    #[test]
    fn empty_and_one_chunk_files_are_their_raw_leaf() {
        for len in [0, 1, CHUNK_SIZE] {
            let (entry, sink) = import(len);
            assert_eq!(sink.0.len(), 1, "{len} bytes");
            assert_eq!(entry.cid.codec(), RAW);
            assert_eq!(entry.file_size, len as u64);
        }
    }

    #[test]
    fn tree_shape_at_link_boundaries() {
        // Exactly MAX_LINKS chunks: one node over all leaves.
        let (entry, sink) = import(MAX_LINKS * CHUNK_SIZE);
        assert_eq!(sink.0.len(), MAX_LINKS + 1);
        assert_eq!(sink.0.last().map(|b| b.0), Some(entry.cid));
        // One more chunk: two nodes under a new root.
        let (entry, sink) = import(MAX_LINKS * CHUNK_SIZE + 1);
        assert_eq!(sink.0.len(), MAX_LINKS + 1 + 3);
        assert_eq!(entry.file_size, (MAX_LINKS * CHUNK_SIZE + 1) as u64);
        let total: u64 = sink.0.iter().map(|b| b.1.len() as u64).sum();
        assert_eq!(entry.dag_size, total);
    }

    #[test]
    fn directory_rejects_bad_and_duplicate_names() {
        let (file, _) = import(3);
        let mut dir = DirectoryBuilder::new();
        for bad in ["", ".", "..", "a/b"] {
            assert_eq!(dir.add(bad, file), Err(DirectoryError::BadName(bad.into())));
        }
        dir.add("a", file).expect("first entry named a");
        assert_eq!(
            dir.add("a", file),
            Err(DirectoryError::Duplicate("a".into()))
        );
    }

    #[test]
    fn empty_directory_has_the_ipfs_cid() {
        let entry = DirectoryBuilder::new()
            .finish(&mut NullSink)
            .expect("no io");
        assert_eq!(
            entry.cid.to_string(),
            "bafybeiczsscdsbs7ffqz55asqdf3smv6klcw3gofszvwlyarci47bgf354"
        );
    }
}
