//! Reading UnixFS content back from blocks.
//!
//! Every block is checked against its CID before any byte of it is used, and
//! every claim a node makes (block sizes, file size) is checked against what
//! its children actually hold: a source can withhold content but never make
//! the reader return bytes that are not the content.

use std::collections::HashSet;
use std::io::{self, Write};

use bytes::Bytes;
use cid::Cid;
use ipld_dagpb::PbNode;
use prost::Message as _;

use super::{BlockSink, Data, DataType, MAX_BLOCK_SIZE, hamt};
use crate::block::{self, DAG_PB, RAW};

/// Deepest DAG the reader follows. A balanced DAG of 174-link nodes needs
/// depth 9 for 2^64 bytes; anything deeper is malformed or hostile.
pub const MAX_DEPTH: usize = 32;

/// Where the reader gets blocks: a store, a CAR, the network.
pub trait BlockSource {
    /// The block's bytes; `io::ErrorKind::NotFound` when the source lacks it.
    /// The reader verifies what it gets, so a source need not.
    fn get(&mut self, cid: &Cid) -> io::Result<Bytes>;

    /// The bytes `get` gave for `cid` do not match it: other bytes to try,
    /// or `None` to fail the read. A source must give up after finitely
    /// many tries. By default it gives up at once.
    fn rejected(&mut self, cid: &Cid) -> io::Result<Option<Bytes>> {
        let _ = cid;
        Ok(None)
    }

    /// The file reader is about to read these DAGs, in this order: a hint
    /// for a source that fetches ahead. Nothing is checked yet: the sizes
    /// are the parent's claims. By default ignored.
    fn upcoming(&mut self, next: &[Upcoming]) {
        let _ = next;
    }
}

/// A child of a file node that the reader will read next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upcoming {
    pub cid: Cid,
    /// The link's `Tsize`: the bytes of every block of the DAG under it,
    /// when the link gives one.
    pub dag_size: Option<u64>,
    /// All of its content is read, not a part.
    pub whole: bool,
}

impl<S: BlockSource + ?Sized> BlockSource for &mut S {
    fn get(&mut self, cid: &Cid) -> io::Result<Bytes> {
        (**self).get(cid)
    }

    fn rejected(&mut self, cid: &Cid) -> io::Result<Option<Bytes>> {
        (**self).rejected(cid)
    }

    fn upcoming(&mut self, next: &[Upcoming]) {
        (**self).upcoming(next)
    }
}

impl BlockSource for std::collections::HashMap<Cid, Vec<u8>> {
    fn get(&mut self, cid: &Cid) -> io::Result<Bytes> {
        std::collections::HashMap::get(self, cid)
            .map(|b| Bytes::copy_from_slice(b))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no block {cid}")))
    }
}

/// Why content could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("could not get block {cid}: {source}")]
    Source { cid: Cid, source: io::Error },
    #[error(transparent)]
    Verify(#[from] block::VerifyError),
    #[error("block {cid} is {len} bytes, over the {MAX_BLOCK_SIZE}-byte limit")]
    TooLarge { cid: Cid, len: usize },
    #[error("block {cid} is not valid UnixFS: {reason}")]
    Malformed { cid: Cid, reason: String },
    #[error("{cid} is a directory, not a file")]
    IsDirectory { cid: Cid },
    #[error("{cid} is a file, not a directory")]
    IsFile { cid: Cid },
    #[error("{cid} is not a UnixFS file or directory")]
    Unsupported { cid: Cid },
    #[error("{dir} has no entry {name:?}")]
    NotFound { dir: Cid, name: Box<str> },
    #[error("{cid} is a file, not a directory: it has no entry {name:?}")]
    NotADirectory { cid: Cid, name: Box<str> },
    #[error("DAG under {cid} is deeper than {MAX_DEPTH} levels")]
    TooDeep { cid: Cid },
    #[error("could not write output: {0}")]
    Write(io::Error),
}

pub(super) fn malformed(cid: &Cid, reason: impl Into<String>) -> ReadError {
    ReadError::Malformed {
        cid: *cid,
        reason: reason.into(),
    }
}

/// Block `cid` from `source`, checked against its CID (and asked for again
/// through [`BlockSource::rejected`] while it fails).
pub fn fetch(source: &mut impl BlockSource, cid: &Cid) -> Result<Bytes, ReadError> {
    let source_err = |source| ReadError::Source { cid: *cid, source };
    let mut bytes = source.get(cid).map_err(source_err)?;
    loop {
        if bytes.len() > MAX_BLOCK_SIZE {
            return Err(ReadError::TooLarge {
                cid: *cid,
                len: bytes.len(),
            });
        }
        let Err(e) = block::verify(cid, &bytes) else {
            return Ok(bytes);
        };
        match source.rejected(cid).map_err(source_err)? {
            Some(again) => bytes = again,
            None => return Err(e.into()),
        }
    }
}

/// A decoded dag-pb UnixFS node.
pub(super) struct Node {
    pub(super) links: Vec<ipld_dagpb::PbLink>,
    pub(super) data: Data,
}

/// The dag-pb node `cid`, fetched, checked and decoded.
pub(super) fn fetch_node(source: &mut impl BlockSource, cid: &Cid) -> Result<Node, ReadError> {
    if cid.codec() != DAG_PB {
        return Err(ReadError::Unsupported { cid: *cid });
    }
    decode_node(cid, fetch(source, cid)?)
}

/// Whether `block`, named `cid`, is a file's leaf: a raw block, or a
/// dag-pb node without links (how `ipfs add` makes CIDv0 content's
/// leaves). Canonical dag-pb writes its links first, as field 2 (tag byte
/// `0x12`), so the first byte tells without decoding; nothing here is
/// checked, the reader does that.
pub fn is_leaf(cid: &Cid, block: &[u8]) -> bool {
    cid.codec() == RAW || (cid.codec() == DAG_PB && block.first() != Some(&0x12))
}

fn decode_node(cid: &Cid, bytes: Bytes) -> Result<Node, ReadError> {
    let node = PbNode::from_bytes(bytes).map_err(|e| malformed(cid, e.to_string()))?;
    let raw = node.data.ok_or_else(|| malformed(cid, "no Data field"))?;
    let data = Data::decode(raw).map_err(|e| malformed(cid, e.to_string()))?;
    Ok(Node {
        links: node.links,
        data,
    })
}

/// Writes bytes `offset .. offset + len` of the file at `root` to `out` (to
/// the end when `len` is `None`, clipped to the file's size) and returns how
/// many bytes were written.
pub fn read_range(
    source: &mut impl BlockSource,
    root: &Cid,
    offset: u64,
    len: Option<u64>,
    out: &mut impl Write,
) -> Result<u64, ReadError> {
    let end = len.map_or(u64::MAX, |l| offset.saturating_add(l));
    read_node(source, root, offset, end, out, 0)
}

/// Writes the part of the node's content in `start..end` (relative to the
/// node) and returns the node's total content size as it proved to be.
/// Children are checked to hold the sizes their parent claims only where
/// they are read; `blocksizes` drive the skipping elsewhere.
fn read_node(
    source: &mut impl BlockSource,
    cid: &Cid,
    start: u64,
    end: u64,
    out: &mut impl Write,
    depth: usize,
) -> Result<u64, ReadError> {
    if depth > MAX_DEPTH {
        return Err(ReadError::TooDeep { cid: *cid });
    }
    let bytes = fetch(source, cid)?;
    match cid.codec() {
        RAW => {
            write_overlap(&bytes, start, end, out)?;
            Ok(bytes.len() as u64)
        }
        DAG_PB => {
            let node = decode_node(cid, bytes)?;
            match node.data.r#type() {
                DataType::File | DataType::Raw => {}
                DataType::Directory | DataType::HamtShard => {
                    return Err(ReadError::IsDirectory { cid: *cid });
                }
                _ => return Err(ReadError::Unsupported { cid: *cid }),
            }
            if node.data.blocksizes.len() != node.links.len() {
                return Err(malformed(cid, "blocksizes and links differ in number"));
            }
            let inline = node.data.data.as_deref().unwrap_or_default();
            write_overlap(inline, start, end, out)?;
            let mut pos = inline.len() as u64;
            let next = upcoming(&node, pos, start, end);
            if !next.is_empty() {
                source.upcoming(&next);
            }
            for (link, &size) in node.links.iter().zip(&node.data.blocksizes) {
                let child_end = pos
                    .checked_add(size)
                    .ok_or_else(|| malformed(cid, "block sizes overflow"))?;
                if child_end > start && pos < end {
                    let (s, e) = (start.saturating_sub(pos), end.saturating_sub(pos).min(size));
                    let actual = read_node(source, &link.cid, s, e, out, depth + 1)?;
                    if actual != size {
                        return Err(malformed(
                            cid,
                            format!("child {} holds {actual} bytes, not {size}", link.cid),
                        ));
                    }
                }
                pos = child_end;
            }
            if let Some(claimed) = node.data.filesize
                && claimed != pos
            {
                return Err(malformed(
                    cid,
                    format!("filesize {claimed} but holds {pos}"),
                ));
            }
            Ok(pos)
        }
        _ => Err(ReadError::Unsupported { cid: *cid }),
    }
}

/// The children of file node `node` whose content, from `pos` on, falls
/// in `start..end`.
fn upcoming(node: &Node, mut pos: u64, start: u64, end: u64) -> Vec<Upcoming> {
    let mut next = Vec::new();
    for (link, &size) in node.links.iter().zip(&node.data.blocksizes) {
        let child = pos..pos.saturating_add(size);
        if child.end > start && child.start < end {
            next.push(Upcoming {
                cid: link.cid,
                dag_size: link.size,
                whole: start <= child.start && child.end <= end,
            });
        }
        pos = child.end;
    }
    next
}

/// Writes the part of `bytes` (which start the node) inside `start..end`.
fn write_overlap(
    bytes: &[u8],
    start: u64,
    end: u64,
    out: &mut impl Write,
) -> Result<(), ReadError> {
    let len = bytes.len() as u64;
    let (from, to) = (start.min(len), end.min(len));
    if from < to {
        // Both are at most `bytes.len()`, so they fit in usize.
        out.write_all(&bytes[from as usize..to as usize])
            .map_err(ReadError::Write)?;
    }
    Ok(())
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub cid: Cid,
    /// The link's `Tsize`: bytes of the entry's whole DAG.
    pub dag_size: u64,
}

impl DirEntry {
    /// The entry `name` a directory's (or shard's) `link` points to.
    pub(super) fn of(link: &ipld_dagpb::PbLink, name: &str) -> DirEntry {
        DirEntry {
            name: name.to_owned(),
            cid: link.cid,
            dag_size: link.size.unwrap_or(0),
        }
    }
}

/// The entries of a UnixFS directory, plain or HAMT-sharded, in name order.
pub fn list_directory(
    source: &mut impl BlockSource,
    cid: &Cid,
) -> Result<Vec<DirEntry>, ReadError> {
    if cid.codec() == RAW {
        return Err(ReadError::IsFile { cid: *cid });
    }
    let node = fetch_node(source, cid)?;
    match node.data.r#type() {
        DataType::Directory => {}
        DataType::HamtShard => return hamt::list(source, cid),
        DataType::File | DataType::Raw => return Err(ReadError::IsFile { cid: *cid }),
        _ => return Err(ReadError::Unsupported { cid: *cid }),
    }
    let entries = node
        .links
        .iter()
        .map(|l| {
            let name = l
                .name
                .as_deref()
                .ok_or_else(|| malformed(cid, "directory link without a name"))?;
            Ok(DirEntry::of(l, check_name(cid, name)?))
        })
        .collect::<Result<Vec<_>, ReadError>>()?;
    // dag-pb sorts links by name: one named twice, or out of order, is not
    // a directory any encoder writes (and would overwrite a file on save).
    if let Some(w) = entries.windows(2).find(|w| w[0].name >= w[1].name) {
        return Err(malformed(
            cid,
            format!("entries {:?} and {:?} out of order", w[0].name, w[1].name),
        ));
    }
    Ok(entries)
}

/// `name`, if it is safe to create in a directory: not empty, `.`, `..`
/// or holding a `/`.
pub(super) fn check_name<'a>(dir: &Cid, name: &'a str) -> Result<&'a str, ReadError> {
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(malformed(dir, format!("unsafe entry name {name:?}")));
    }
    Ok(name)
}

/// The entry `name` of the directory `dir`, plain or sharded.
pub fn lookup(source: &mut impl BlockSource, dir: &Cid, name: &str) -> Result<DirEntry, ReadError> {
    let not_dir = || ReadError::NotADirectory {
        cid: *dir,
        name: name.into(),
    };
    if dir.codec() != DAG_PB {
        return Err(not_dir());
    }
    let node = fetch_node(source, dir)?;
    let found = match node.data.r#type() {
        DataType::Directory => node
            .links
            .into_iter()
            .find(|l| l.name.as_deref() == Some(name))
            .map(|l| DirEntry::of(&l, name)),
        DataType::HamtShard => hamt::lookup(source, dir, name)?,
        DataType::File | DataType::Raw => return Err(not_dir()),
        _ => return Err(ReadError::Unsupported { cid: *dir }),
    };
    found.ok_or_else(|| ReadError::NotFound {
        dir: *dir,
        name: name.into(),
    })
}

/// The CID at `path` under `root`: each name an entry of the directory
/// before it.
pub fn resolve(
    source: &mut impl BlockSource,
    root: &Cid,
    path: &[String],
) -> Result<Cid, ReadError> {
    path.iter()
        .try_fold(*root, |dir, name| Ok(lookup(source, &dir, name)?.cid))
}

/// What a CID names, from its root block alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A file of `size` bytes, as its root block claims; reading it checks
    /// the claim.
    File { size: u64 },
    /// A directory, plain or sharded.
    Directory,
}

/// Whether `cid` is a file (and its size) or a directory.
pub fn stat(source: &mut impl BlockSource, cid: &Cid) -> Result<Kind, ReadError> {
    if cid.codec() == RAW {
        let size = fetch(source, cid)?.len() as u64;
        return Ok(Kind::File { size });
    }
    let node = fetch_node(source, cid)?;
    match node.data.r#type() {
        DataType::Directory | DataType::HamtShard => Ok(Kind::Directory),
        DataType::File | DataType::Raw => {
            let inline = node.data.data.as_ref().map_or(0, Vec::len) as u64;
            let size = node
                .data
                .blocksizes
                .iter()
                .try_fold(inline, |sum, &b| sum.checked_add(b))
                .ok_or_else(|| malformed(cid, "block sizes overflow"))?;
            Ok(Kind::File { size })
        }
        _ => Err(ReadError::Unsupported { cid: *cid }),
    }
}

/// Which blocks [`export`] writes after those of the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// The terminus's root block only.
    Block,
    /// What verifies the terminus as an entity: a file's whole DAG; a
    /// directory's node, or all shards of a sharded one, without the
    /// entries under it.
    Entity,
    /// The terminus's whole DAG.
    All,
}

/// Writes to `sink` the blocks that prove `path` under `root` (each
/// directory and shard read on the way), then the blocks `scope` names of
/// the entry the path ends at, in depth-first order, parents before
/// children, each block once. Every block is checked before it is written.
/// Returns the terminus's CID.
pub fn export(
    source: &mut impl BlockSource,
    root: &Cid,
    path: &[String],
    scope: Scope,
    sink: &mut impl BlockSink,
) -> Result<Cid, ReadError> {
    let mut seen = HashSet::new();
    let mut put = |seen: &mut HashSet<Cid>, cid: &Cid, bytes: &[u8]| match seen.insert(*cid) {
        true => sink.put(cid, bytes).map_err(ReadError::Write),
        false => Ok(()),
    };
    let mut dir = *root;
    for name in path {
        let mut tee = Tee {
            source: &mut *source,
            got: Vec::new(),
        };
        let entry = lookup(&mut tee, &dir, name)?;
        // Bytes that failed their check were given again, and pass below.
        for (cid, bytes) in &tee.got {
            if block::verify(cid, bytes).is_ok() {
                put(&mut seen, cid, bytes)?;
            }
        }
        dir = entry.cid;
    }
    let mut stack = vec![dir];
    while let Some(cid) = stack.pop() {
        if seen.contains(&cid) {
            continue;
        }
        let bytes = fetch(source, &cid)?;
        put(&mut seen, &cid, &bytes)?;
        if scope == Scope::Block || cid.codec() != DAG_PB {
            continue;
        }
        let links = match scope {
            Scope::Entity => {
                let node = decode_node(&cid, bytes)?;
                match node.data.r#type() {
                    DataType::Directory => continue,
                    // Only the links to shards: an entry's is its slot
                    // and its name, a shard's the slot alone.
                    DataType::HamtShard => node
                        .links
                        .into_iter()
                        .filter(|l| l.name.as_ref().is_some_and(|n| n.len() == 2))
                        .collect(),
                    _ => node.links,
                }
            }
            _ => {
                PbNode::from_bytes(bytes)
                    .map_err(|e| malformed(&cid, e.to_string()))?
                    .links
            }
        };
        stack.extend(links.iter().rev().map(|l| l.cid));
    }
    Ok(dir)
}

/// A source that keeps what it gives, newest last.
struct Tee<S> {
    source: S,
    got: Vec<(Cid, Bytes)>,
}

impl<S: BlockSource> BlockSource for Tee<S> {
    fn get(&mut self, cid: &Cid) -> io::Result<Bytes> {
        let bytes = self.source.get(cid)?;
        self.got.push((*cid, bytes.clone()));
        Ok(bytes)
    }

    fn rejected(&mut self, cid: &Cid) -> io::Result<Option<Bytes>> {
        let again = self.source.rejected(cid)?;
        if let Some(bytes) = &again {
            self.got.push((*cid, bytes.clone()));
        }
        Ok(again)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::unixfs::{BlockSink, CHUNK_SIZE, DirectoryBuilder, MAX_LINKS, import_file};

    #[test]
    fn leaves_are_raw_blocks_and_dag_pb_nodes_without_links() {
        let raw = [0x12, 0x34];
        assert!(is_leaf(&block::sha256_cid(RAW, &raw), &raw));
        // PBNode { Links: [..] }: an inner node; PBNode { Data }: a leaf.
        let inner = [0x12, 0x00];
        assert!(!is_leaf(&block::sha256_cid(DAG_PB, &inner), &inner));
        let leaf = [0x0a, 0x02, 0x08, 0x00];
        assert!(is_leaf(&block::sha256_cid(DAG_PB, &leaf), &leaf));
    }

    #[derive(Default)]
    struct Store(HashMap<Cid, Vec<u8>>);
    impl BlockSink for Store {
        fn put(&mut self, cid: &Cid, block: &[u8]) -> io::Result<()> {
            self.0.insert(*cid, block.to_vec());
            Ok(())
        }
    }

    fn content(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 % 253) as u8).collect()
    }

    fn read(store: &mut Store, root: &Cid, offset: u64, len: Option<u64>) -> Vec<u8> {
        let mut out = Vec::new();
        read_range(&mut store.0, root, offset, len, &mut out).expect("all blocks present");
        out
    }

    #[test]
    fn leaves_of_unixfs_type_raw_read_as_file_leaves() {
        // As js-ipfs and kubo's trickle layout write CIDv0 leaves.
        let mut store = Store::default();
        let chunks: [&[u8]; 2] = [b"first leaf, ", b"second leaf"];
        let leaves: Vec<_> = chunks
            .iter()
            .map(|c| {
                let data = Data {
                    r#type: DataType::Raw as i32,
                    data: Some(c.to_vec()),
                    filesize: Some(c.len() as u64),
                    ..Default::default()
                };
                super::super::import::write_node(Vec::new(), data, cid::Version::V0, &mut store)
                    .expect("in memory")
            })
            .collect();
        let links = leaves
            .iter()
            .map(|l| ipld_dagpb::PbLink {
                cid: l.cid,
                name: Some(String::new()),
                size: Some(l.dag_size),
            })
            .collect();
        let data = Data {
            r#type: DataType::File as i32,
            filesize: Some(23),
            blocksizes: chunks.iter().map(|c| c.len() as u64).collect(),
            ..Default::default()
        };
        let root = super::super::import::write_node(links, data, cid::Version::V0, &mut store)
            .expect("in memory")
            .cid;
        assert_eq!(read(&mut store, &root, 0, None), b"first leaf, second leaf");
        assert_eq!(read(&mut store, &root, 6, Some(10)), b"leaf, seco");
        assert!(leaves.iter().all(|l| is_leaf(&l.cid, &store.0[&l.cid])));
    }

    #[test]
    fn ranges_across_chunk_and_node_boundaries() {
        let data = content((MAX_LINKS + 2) * CHUNK_SIZE + 17);
        let mut store = Store::default();
        let root = import_file(&data[..], &mut store).expect("import").cid;
        assert_eq!(read(&mut store, &root, 0, None), data);
        let c = CHUNK_SIZE as u64;
        let node = MAX_LINKS as u64 * c;
        for (off, len) in [
            (0, 1),
            (c - 1, 2),                   // across the first chunk boundary
            (node - 5, 10),               // across the first file node's boundary
            (node + c - 1, c),            // inside the second node
            (data.len() as u64 - 3, 100), // clipped at the end
            (data.len() as u64, 10),      // at the end: nothing
        ] {
            let want =
                &data[(off as usize).min(data.len())..((off + len) as usize).min(data.len())];
            assert_eq!(
                read(&mut store, &root, off, Some(len)),
                want,
                "range {off}+{len}"
            );
        }
    }

    /// A source that records the reader's hints and requests.
    struct Hinted<'a> {
        store: &'a mut HashMap<Cid, Vec<u8>>,
        hints: Vec<Upcoming>,
        gets: Vec<Cid>,
        /// For each get, how many hints came before it.
        hinted_before: Vec<usize>,
    }
    impl BlockSource for Hinted<'_> {
        fn get(&mut self, cid: &Cid) -> io::Result<Bytes> {
            self.gets.push(*cid);
            self.hinted_before.push(self.hints.len());
            self.store.get(cid)
        }
        fn upcoming(&mut self, next: &[Upcoming]) {
            self.hints.extend_from_slice(next);
        }
    }

    #[test]
    fn the_reader_names_the_children_it_reads_next() {
        let data = content((MAX_LINKS + 3) * CHUNK_SIZE);
        let mut store = Store::default();
        let root = import_file(&data[..], &mut store).expect("import").cid;
        let (c, node) = (CHUNK_SIZE as u64, (MAX_LINKS * CHUNK_SIZE) as u64);
        let mut source = Hinted {
            store: &mut store.0,
            hints: Vec::new(),
            gets: Vec::new(),
            hinted_before: Vec::new(),
        };
        let mut out = Vec::new();
        read_range(&mut source, &root, node - 5, Some(c + 10), &mut out).expect("read");
        assert_eq!(out, &data[node as usize - 5..(node + c + 5) as usize]);
        // The root's two file nodes, each in part; the first one's last
        // leaf, in part; the second one's first leaf whole, its second in
        // part.
        let shape: Vec<(bool, bool)> = source
            .hints
            .iter()
            .map(|u| (u.cid.codec() == RAW, u.whole))
            .collect();
        assert_eq!(
            shape,
            [
                (false, false),
                (false, false),
                (true, false),
                (true, true),
                (true, false)
            ]
        );
        // Each block after the root was named before it was asked for,
        // and each named one asked for.
        assert_eq!(source.gets.len(), 1 + source.hints.len());
        for (i, cid) in source.gets.iter().enumerate().skip(1) {
            let named = source.hinted_before[i];
            assert!(source.hints[..named].iter().any(|u| u.cid == *cid), "{cid}");
        }
        // A leaf's DAG is itself; a file node's holds its leaves too.
        for u in &source.hints {
            let len = source.store[&u.cid].len() as u64;
            match u.cid.codec() {
                RAW => assert_eq!(u.dag_size, Some(len)),
                _ => assert!(u.dag_size > Some(len)),
            }
        }
    }

    #[test]
    fn a_corrupted_block_is_never_returned() {
        let data = content(3 * CHUNK_SIZE);
        let mut store = Store::default();
        let root = import_file(&data[..], &mut store).expect("import").cid;
        let leaf = *store.0.keys().find(|c| c.codec() == RAW).expect("a leaf");
        if let Some(b) = store.0.get_mut(&leaf) {
            b[10] ^= 1;
        }
        let mut out = Vec::new();
        let err = read_range(&mut store.0, &root, 0, None, &mut out).expect_err("corrupt leaf");
        assert!(matches!(err, ReadError::Verify(_)), "{err}");
    }

    /// Gives a corrupted copy of every block first, the right one when told
    /// it was rejected, if `mends`.
    struct Flaky {
        blocks: HashMap<Cid, Vec<u8>>,
        mends: bool,
        rejected: Vec<Cid>,
    }

    impl BlockSource for Flaky {
        fn get(&mut self, cid: &Cid) -> io::Result<Bytes> {
            let mut bad = self.blocks.get(cid).cloned().unwrap_or_default();
            bad.push(0);
            Ok(bad.into())
        }

        fn rejected(&mut self, cid: &Cid) -> io::Result<Option<Bytes>> {
            self.rejected.push(*cid);
            Ok(self
                .mends
                .then(|| self.blocks.get(cid).cloned().unwrap_or_default().into()))
        }
    }

    #[test]
    fn a_rejected_block_is_asked_for_again_and_checked_again() {
        let data = content(3 * CHUNK_SIZE);
        let mut store = Store::default();
        let root = import_file(&data[..], &mut store).expect("import").cid;
        let mut source = Flaky {
            blocks: store.0.clone(),
            mends: true,
            rejected: Vec::new(),
        };
        let mut out = Vec::new();
        read_range(&mut source, &root, 0, None, &mut out).expect("mended");
        assert_eq!(out, data);
        assert_eq!(source.rejected.len(), store.0.len(), "every block once");

        let mut source = Flaky {
            blocks: store.0,
            mends: false,
            rejected: Vec::new(),
        };
        let err = read_range(&mut source, &root, 0, None, &mut Vec::new()).expect_err("bad");
        assert!(matches!(err, ReadError::Verify(_)), "{err}");
        assert_eq!(source.rejected, [root]);
    }

    #[test]
    fn a_missing_block_names_its_cid() {
        let data = content(2 * CHUNK_SIZE);
        let mut store = Store::default();
        let root = import_file(&data[..], &mut store).expect("import").cid;
        let leaf = *store.0.keys().find(|c| c.codec() == RAW).expect("a leaf");
        store.0.remove(&leaf);
        let err = read_range(&mut store.0, &root, 0, None, &mut Vec::new()).expect_err("gap");
        assert!(
            matches!(err, ReadError::Source { cid, .. } if cid == leaf),
            "{err}"
        );
    }

    #[test]
    fn directories_list_and_refuse_to_be_read_as_files() {
        let mut store = Store::default();
        let a = import_file(&b"alpha"[..], &mut store).expect("import");
        let mut dir = DirectoryBuilder::new();
        dir.add("b.txt", a).expect("name");
        dir.add("a.txt", a).expect("name");
        let root = dir.finish(&mut store).expect("dir").cid;
        let names: Vec<_> = list_directory(&mut store.0, &root)
            .expect("listing")
            .into_iter()
            .map(|e| e.name)
            .collect();
        assert_eq!(names, ["a.txt", "b.txt"]);
        let err = read_range(&mut store.0, &root, 0, None, &mut Vec::new()).expect_err("dir");
        assert!(matches!(err, ReadError::IsDirectory { .. }));
    }

    /// Blocks in the order they were put.
    #[derive(Default)]
    struct Ordered(Vec<(Cid, Vec<u8>)>);
    impl BlockSink for Ordered {
        fn put(&mut self, cid: &Cid, block: &[u8]) -> io::Result<()> {
            self.0.push((*cid, block.to_vec()));
            Ok(())
        }
    }

    /// A tree `sub/big` (3 chunks) and `small`, with the store it is in.
    fn tree() -> (Store, Cid, Vec<u8>) {
        let mut store = Store::default();
        let data = content(2 * CHUNK_SIZE + 5);
        let big = import_file(&data[..], &mut store).expect("import");
        let small = import_file(&b"small"[..], &mut store).expect("import");
        let mut sub = DirectoryBuilder::new();
        sub.add("big", big).expect("name");
        let sub = sub.finish(&mut store).expect("dir");
        let mut root = DirectoryBuilder::new();
        root.add("sub", sub).expect("name");
        root.add("small", small).expect("name");
        let root = root.finish(&mut store).expect("dir").cid;
        (store, root, data)
    }

    #[test]
    fn stat_tells_files_and_their_sizes_from_directories() {
        let (mut store, root, data) = tree();
        let big = resolve(&mut store.0, &root, &["sub".into(), "big".into()]).expect("big");
        let small = resolve(&mut store.0, &root, &["small".into()]).expect("small");
        let size = data.len() as u64;
        assert_eq!(stat(&mut store.0, &big).expect("big"), Kind::File { size });
        assert_eq!(
            stat(&mut store.0, &small).expect("small"),
            Kind::File { size: 5 }
        );
        assert_eq!(stat(&mut store.0, &root).expect("root"), Kind::Directory);
    }

    #[test]
    fn an_export_holds_the_path_then_the_dag_each_block_once() {
        let (mut store, root, data) = tree();
        let path = ["sub".to_owned(), "big".to_owned()];
        let sub = resolve(&mut store.0, &root, &path[..1]).expect("sub");
        let big = resolve(&mut store.0, &root, &path).expect("big");

        let mut blocks = Ordered::default();
        let end = export(&mut store.0, &root, &path, Scope::All, &mut blocks).expect("export");
        assert_eq!(end, big);
        let cids: Vec<Cid> = blocks.0.iter().map(|(c, _)| *c).collect();
        // root, sub, big's node, its 3 leaves in order.
        assert_eq!(cids.len(), 6, "{cids:?}");
        assert_eq!(cids[..3], [root, sub, big]);
        let mut got: HashMap<Cid, Vec<u8>> = blocks.0.into_iter().collect();
        assert_eq!(got.len(), 6, "each block once");
        let mut out = Vec::new();
        read_range(&mut got, &big, 0, None, &mut out).expect("the export reads back");
        assert_eq!(out, data);
        let leaves: Vec<u8> = cids[3..].iter().flat_map(|c| got[c].clone()).collect();
        assert_eq!(leaves, data, "leaves in file order");

        let mut blocks = Ordered::default();
        export(&mut store.0, &root, &path, Scope::Block, &mut blocks).expect("export");
        let cids: Vec<Cid> = blocks.0.iter().map(|(c, _)| *c).collect();
        assert_eq!(cids, [root, sub, big]);

        // A file as an entity is all of it; a directory, its node alone.
        let mut blocks = Ordered::default();
        export(&mut store.0, &root, &path, Scope::Entity, &mut blocks).expect("export");
        assert_eq!(blocks.0.len(), 6);
        let mut blocks = Ordered::default();
        export(&mut store.0, &root, &[], Scope::Entity, &mut blocks).expect("export");
        let cids: Vec<Cid> = blocks.0.iter().map(|(c, _)| *c).collect();
        assert_eq!(cids, [root]);

        let err = export(
            &mut store.0,
            &root,
            &["nope".into()],
            Scope::All,
            &mut Ordered::default(),
        )
        .expect_err("no such entry");
        assert!(matches!(err, ReadError::NotFound { .. }), "{err}");
    }

    #[test]
    fn a_sharded_directory_as_an_entity_is_its_shards() {
        let mut store = Store::default();
        let file = import_file(&b"token"[..], &mut store).expect("import");
        let mut dir = DirectoryBuilder::new();
        // 4,000 entries of ≈ 80 bytes of name and CID: sharded, two levels.
        for i in 0..4000 {
            dir.add(&format!("{i:040}.json"), file).expect("name");
        }
        let root = dir.finish(&mut store).expect("dir").cid;
        let mut blocks = Ordered::default();
        export(&mut store.0, &root, &[], Scope::Entity, &mut blocks).expect("export");
        let shards = store.0.len() - 1; // all but the one file block
        assert!(shards > 1, "{shards}");
        assert_eq!(blocks.0.len(), shards, "the shards, not the file");
        assert!(blocks.0.iter().all(|(c, _)| c.codec() == DAG_PB));
        let mut blocks = Ordered::default();
        export(&mut store.0, &root, &[], Scope::All, &mut blocks).expect("export");
        assert_eq!(blocks.0.len(), shards + 1);
    }

    #[test]
    fn an_export_of_a_dag_with_a_block_linked_twice_holds_it_once() {
        let mut store = Store::default();
        let a = import_file(&content(CHUNK_SIZE * 2)[..], &mut store).expect("import");
        let mut dir = DirectoryBuilder::new();
        dir.add("a", a).expect("name");
        dir.add("b", a).expect("name");
        let root = dir.finish(&mut store).expect("dir").cid;
        let mut blocks = Ordered::default();
        export(&mut store.0, &root, &[], Scope::All, &mut blocks).expect("export");
        assert_eq!(blocks.0.len(), 4, "root, a's node, 2 leaves");
    }
}
