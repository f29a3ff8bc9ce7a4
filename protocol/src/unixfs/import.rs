//! Importing bytes and directories into UnixFS blocks.
//!
//! Memory is bounded by two batches of chunks ([`IMPORT_BATCH`] × 256 KiB
//! each) plus at most [`MAX_LINKS`] pending links per tree level, whatever the
//! content's size.

use std::collections::BTreeMap;
use std::io::{self, Read};

use cid::{Cid, Version};
use ipld_dagpb::{PbLink, PbNode};
use prost::Message as _;
use rayon::prelude::*;

use super::{CHUNK_SIZE, Data, DataType, MAX_DIRECTORY_LINK_BYTES, MAX_LINKS, hamt};
use crate::block::{self, RAW};

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

/// Imports one file's bytes as `ipfs add --cid-version 1` does, writing
/// its blocks to `sink`.
pub fn import_file(reader: impl Read + Send, sink: &mut impl BlockSink) -> io::Result<Entry> {
    import_file_with(reader, sink, &HashLeaves, Version::V1)
}

/// [`import_file`], laid out as `ipfs add --cid-version N` does: with
/// `V1` the leaves are raw blocks named by `leaves` (a caller that has
/// hashed the same file before can skip hashing it again); with `V0`, as
/// kubo's default, every block is CIDv0 dag-pb and each leaf a UnixFS
/// `File` node holding its chunk (`leaves` is not asked).
pub fn import_file_with(
    mut reader: impl Read + Send,
    sink: &mut impl BlockSink,
    leaves: &impl Leaves,
    version: Version,
) -> io::Result<Entry> {
    let mut batch = vec![0u8; IMPORT_BATCH * CHUNK_SIZE];
    let mut next = vec![0u8; IMPORT_BATCH * CHUNK_SIZE];
    let mut tree = BalancedTree {
        levels: Vec::new(),
        leaves: 0,
        version,
    };
    let mut n = read_full(&mut reader, &mut batch)?;
    loop {
        let last = n < batch.len();
        let mut chunks: Vec<&[u8]> = batch[..n].chunks(CHUNK_SIZE).collect();
        // Empty content is one empty leaf.
        if tree.leaves == 0 && chunks.is_empty() {
            chunks.push(&[]);
        }
        let first = tree.leaves;
        let (named, read) = rayon::join(
            || {
                chunks
                    .par_iter()
                    .enumerate()
                    .map(|(i, c)| match version {
                        Version::V0 => Ok(leaf_v0(c)),
                        Version::V1 => Ok((leaves.cid(first + i as u64, c)?, None)),
                    })
                    .collect::<io::Result<Vec<_>>>()
            },
            || match last {
                true => Ok(0),
                false => read_full(&mut reader, &mut next),
            },
        );
        for (chunk, (cid, node)) in chunks.iter().zip(named?) {
            let block = node.as_deref().unwrap_or(chunk);
            sink.put(&cid, block)?;
            tree.push_leaf(
                Entry {
                    cid,
                    file_size: chunk.len() as u64,
                    dag_size: block.len() as u64,
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

/// A CIDv0 leaf over `chunk`, as kubo writes one (`TFile`, for backwards
/// compatibility), and its CID.
fn leaf_v0(chunk: &[u8]) -> (Cid, Option<Vec<u8>>) {
    let data = Data {
        r#type: DataType::File as i32,
        data: (!chunk.is_empty()).then(|| chunk.to_vec()),
        filesize: Some(chunk.len() as u64),
        ..Default::default()
    };
    let node = PbNode {
        links: Vec::new(),
        data: Some(data.encode_to_vec().into()),
    }
    .into_bytes();
    (block::dag_pb_cid(Version::V0, &node), Some(node))
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
struct BalancedTree {
    levels: Vec<Vec<Entry>>,
    leaves: u64,
    version: Version,
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
            let node = file_node(&std::mem::take(&mut self.levels[level]), self.version, sink)?;
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
                let node = file_node(&pending, self.version, sink)?;
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
fn file_node(children: &[Entry], version: Version, sink: &mut impl BlockSink) -> io::Result<Entry> {
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
    let node = write_node(links, data, version, sink)?;
    Ok(Entry { file_size, ..node })
}

pub(super) fn write_node(
    links: Vec<PbLink>,
    data: Data,
    version: Version,
    sink: &mut impl BlockSink,
) -> io::Result<Entry> {
    let links_size: u64 = links.iter().filter_map(|l| l.size).sum();
    let bytes = PbNode {
        links,
        data: Some(data.encode_to_vec().into()),
    }
    .into_bytes();
    let cid = block::dag_pb_cid(version, &bytes);
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
#[derive(Debug)]
pub struct DirectoryBuilder {
    entries: BTreeMap<String, Entry>,
    link_bytes: usize,
    version: Version,
}

impl Default for DirectoryBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl DirectoryBuilder {
    /// A directory as `ipfs add --cid-version 1` writes one.
    pub fn new() -> Self {
        Self::with_version(Version::V1)
    }

    /// A directory whose nodes get CIDs of `version`.
    pub fn with_version(version: Version) -> Self {
        DirectoryBuilder {
            entries: BTreeMap::new(),
            link_bytes: 0,
            version,
        }
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
            return hamt::build(self.entries.into_iter().collect(), self.version, sink);
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
        write_node(links, data, self.version, sink)
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
    fn cid_version_0_gives_kubos_cids() {
        // `ipfs add` (kubo, no flags) of these bytes, and `ipfs object new
        // unixfs-dir`: well-known CIDs.
        for (bytes, cid) in [
            (&b""[..], "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"),
            (
                b"hello world\n",
                "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o",
            ),
        ] {
            let entry = import_file_with(bytes, &mut NullSink, &HashLeaves, Version::V0)
                .expect("from memory");
            assert_eq!(entry.cid.to_string(), cid);
        }
        let dir = DirectoryBuilder::with_version(Version::V0)
            .finish(&mut NullSink)
            .expect("no io");
        assert_eq!(
            dir.cid.to_string(),
            "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"
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
