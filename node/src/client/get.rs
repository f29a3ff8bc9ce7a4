//! `cairn get` and `cairn cat`: content out of the network.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::fs;
use std::io::{self, Write};
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use cairn_protocol::address::Address;
use cairn_protocol::block::{self, DAG_PB, RAW};
use cairn_protocol::erasure;
use cairn_protocol::manifest::Manifest;
use cairn_protocol::proof;
use cairn_protocol::seal::{self, Key, Opener, Target};
use cairn_protocol::unixfs::{self, BlockSource, ReadError, Upcoming, is_leaf};
use cairn_protocol::wire::{FetchRequest, FetchResponse};
use cid::Cid;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;
use tokio::sync::OwnedSemaphorePermit;
use tokio::task::JoinHandle;

use super::{DEFAULT_HEDGE_AFTER, Hedge, find_manifest, lock};
use crate::direct;
use crate::node::{Handle, RequestError};

#[derive(Debug, Clone)]
pub struct GetOptions {
    /// Segments fetched ahead of the reader (each up to `k × piece_size` bytes).
    pub segments_in_flight: usize,
    /// A piece not in after this long at most is backed up by fetching
    /// another piece; sooner once pieces come in ([`Hedge`]).
    pub hedge_after: Duration,
    /// A block read alone, by a range of its piece, that is not in after
    /// this long is fetched with its segments instead.
    pub range_patience: Duration,
    /// Bytes of segments that every read sharing it may hold at once,
    /// fetched ahead, read or kept; `None`: no bound but the window.
    pub budget: Option<Budget>,
}

/// A byte budget several reads share (the gateway's): a segment is fetched
/// ahead only if it fits, and a read that needs one that does not fit
/// gives up all it holds before it waits, so no two reads wait on each
/// other. Counted in KiB.
#[derive(Debug, Clone)]
pub struct Budget {
    kib: Arc<tokio::sync::Semaphore>,
    total: u32,
}

impl Budget {
    pub fn new(bytes: u64) -> Self {
        let total = u32::try_from(bytes >> 10).unwrap_or(u32::MAX).max(1);
        Budget {
            kib: Arc::new(tokio::sync::Semaphore::new(total as usize)),
            total,
        }
    }

    /// What `bytes` cost, no more than the whole budget.
    fn cost(&self, bytes: u64) -> u32 {
        u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.total)
    }
}

impl Default for GetOptions {
    fn default() -> Self {
        GetOptions {
            segments_in_flight: 4,
            hedge_after: DEFAULT_HEDGE_AFTER,
            range_patience: Duration::from_secs(1),
            budget: None,
        }
    }
}

/// What a get fetched.
#[derive(Debug, Clone, Default)]
pub struct GetStats {
    /// Segments fetched (each counted once however often).
    pub segments: BTreeSet<u64>,
    /// Segment fetches, repeats included.
    pub segment_fetches: u64,
    /// Bytes of the segments fetched, repeats included.
    pub bytes: u64,
    /// Segments that needed decoding (a data piece was missing).
    pub decoded: u64,
    /// Holders dropped for sending bytes that do not match the piece CID.
    pub dropped: BTreeSet<PeerId>,
    /// Holders that were slow to answer, so another piece was fetched.
    pub slow: BTreeSet<PeerId>,
    /// Holders a request to failed: unreachable, or the connection broke.
    pub failed: BTreeSet<PeerId>,
    /// Segments fetched again, every piece checked, after a block in them
    /// did not match its CID.
    pub rechecked: u64,
    /// Provider lookups made: none while the holders the manifest names serve.
    pub lookups: u64,
    /// Dag-pb blocks (the root, inner nodes past the leaves) read alone,
    /// by a verified range of their pieces, not with their segments.
    pub ranges: u64,
    /// Segment fetches started ahead of the reader, before it asked.
    pub ahead: u64,
}

/// No node has a manifest of this content.
#[derive(Debug, thiserror::Error)]
#[error("{0} is unknown to the network: no node has its manifest")]
pub struct Unknown(pub Cid);

/// Whether a file of `blocks` blocks, `bytes` bytes of stream, is read
/// alone block by block when named by a path, not in its segments.
fn small_file(blocks: usize, bytes: u64, manifest: &Manifest) -> bool {
    blocks <= READ_ALONE_BLOCKS && bytes < manifest.piece_len(0)
}

/// Blocks of a segment kept after it is read.
const SEGMENTS_CACHED: usize = 2;
/// Blocks read alone, one by one, rather than in segments: those of a file
/// named by a path if this many or fewer, in less than a piece (4 MiB in
/// 16 leaves); of one segment, for content named by a path, before the
/// segment is fetched instead.
const READ_ALONE_BLOCKS: usize = 16;
/// Bytes of dag-pb blocks kept: the DAG's inner nodes, read out of order.
const INNER_CACHED: usize = 16 << 20;

/// Content found in the network, ready to read.
pub struct Content {
    net: Handle,
    manifest: Arc<Manifest>,
    /// Sealed content's key: the stored file is its ciphertext.
    key: Option<Key>,
    /// Where the path starts: the root, or a block of its DAG.
    base: Cid,
    /// Entry names from `base` to what is read.
    path: Vec<String>,
    options: GetOptions,
    hedge: Arc<Hedge>,
    stats: Arc<Mutex<GetStats>>,
    /// What `path` resolved to, once it has ([`Content::resolve`]).
    resolved: OnceLock<(Cid, Range<u64>)>,
}

impl Content {
    /// Finds the manifest of the address's root through the DHT.
    pub async fn open(
        net: &Handle,
        address: impl Into<Address>,
        options: GetOptions,
    ) -> Result<Content> {
        let Address { target, path } = address.into();
        let root = target.root();
        let Some(manifest) = find_manifest(net, root).await? else {
            return Err(Unknown(root).into());
        };
        tracing::debug!(%root, segments = manifest.segments.len(), "manifest found");
        Ok(Content {
            net: net.clone(),
            manifest: Arc::new(manifest),
            key: match target {
                Target::Plain(_) => None,
                Target::Sealed(h) => Some(h.key),
            },
            base: root,
            path,
            hedge: Arc::new(Hedge::new(options.hedge_after)),
            options,
            stats: Arc::default(),
            resolved: OnceLock::new(),
        })
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    pub fn stats(&self) -> GetStats {
        lock(&self.stats).clone()
    }

    /// Writes bytes `offset .. offset + len` of the file (to its end when
    /// `len` is `None`) to `out`; sealed content is opened first. Blocking:
    /// call from a blocking thread of the runtime the node runs on.
    pub fn read(&self, offset: u64, len: Option<u64>, out: &mut impl Write) -> Result<()> {
        let Some(key) = &self.key else {
            return Ok(self.read_stored(offset, len, out).map(drop)?);
        };
        let (start, sealed_len) = seal::sealed_range(offset, len);
        let mut opener = Opener::new(out, key, offset, len);
        let opened = self
            .read_stored(start, sealed_len, &mut opener)
            .map_err(|e| match e {
                // The opener's own error, not the output's.
                ReadError::Write(e) if e.kind() == io::ErrorKind::InvalidData => e.into(),
                e => anyhow::Error::from(e),
            })
            .and_then(|_| Ok(opener.finish()?));
        opened
            .map(drop)
            .with_context(|| format!("cannot read sealed content {}", self.manifest.root))
    }

    /// Bytes of the stored file, as [`unixfs::read_range`].
    fn read_stored(
        &self,
        offset: u64,
        len: Option<u64>,
        out: &mut impl Write,
    ) -> Result<u64, ReadError> {
        let end = len.map_or(u64::MAX, |l| offset.saturating_add(l));
        let mut source = self.source();
        let (cid, span) = self.resolve(&mut source)?;
        source.set_plan(self.plan(span, offset..end));
        unixfs::read_range(&mut source, &cid, offset, len, out)
    }

    /// What the address names, and the stream bytes its DAG is taken to
    /// fill: all of them for the root. An entry's DAG is taken to be the
    /// `Tsize` bytes its root ends, as an importer writes it; none when it
    /// is a few blocks in less than a piece, which are better read alone.
    /// The path is walked once; later calls (a gateway's `stat` then
    /// `read`) take that answer.
    fn resolve(&self, source: &mut NetSource<'_>) -> Result<(Cid, Range<u64>), ReadError> {
        if let Some(done) = self.resolved.get() {
            return Ok(done.clone());
        }
        let done = self.resolve_path(source)?;
        Ok(self.resolved.get_or_init(|| done).clone())
    }

    /// [`Content::resolve`], walking the path.
    fn resolve_path(&self, source: &mut NetSource<'_>) -> Result<(Cid, Range<u64>), ReadError> {
        let m = &self.manifest;
        let mut entry = None;
        for name in &self.path {
            let dir = entry
                .as_ref()
                .map_or(self.base, |e: &unixfs::DirEntry| e.cid);
            entry = Some(unixfs::lookup(source, &dir, name)?);
        }
        let Some(entry) = entry else {
            // A DAG inside the root's has no `Tsize` to give its span.
            let all = if self.base == m.root {
                0..m.stream_len
            } else {
                0..0
            };
            return Ok((self.base, all));
        };
        let end = source.locate.get(&entry.cid).map(|at| at.end);
        let Some(span) = end.and_then(|end| Some(end.checked_sub(entry.dag_size)?..end)) else {
            return Ok((entry.cid, 0..0));
        };
        let mut starts = self.block_starts().filter(|at| span.contains(at));
        let aligned = starts.next() == Some(span.start);
        // `starts` has given the first block: count it back.
        let few = small_file(starts.count() + 1, span.end - span.start, m);
        match aligned && !few {
            true => Ok((entry.cid, span)),
            false => Ok((entry.cid, 0..0)),
        }
    }

    /// Where each block starts in the stream.
    fn block_starts(&self) -> impl Iterator<Item = u64> + '_ {
        self.manifest.blocks.iter().scan(0, |at, b| {
            let start = *at;
            *at += b.1;
            Some(start)
        })
    }

    /// The entries of the directory the address names, in name order.
    /// Blocking, as [`Content::read`].
    pub fn list(&self) -> Result<Vec<unixfs::DirEntry>> {
        if self.key.is_some() {
            bail!("sealed content is one file: it has no entries");
        }
        let mut source = self.source();
        // Only directory blocks are read: each alone.
        source.by_path = true;
        let (cid, _) = self.resolve(&mut source)?;
        Ok(unixfs::list_directory(&mut source, &cid)?)
    }

    /// The same content at `path` under `base`, the root or a block of
    /// its DAG (one the manifest lists).
    pub fn at(&self, base: Cid, path: Vec<String>) -> Content {
        Content {
            net: self.net.clone(),
            manifest: self.manifest.clone(),
            key: self.key.clone(),
            base,
            path,
            options: self.options.clone(),
            hedge: Arc::new(Hedge::new(self.options.hedge_after)),
            stats: Arc::default(),
            resolved: OnceLock::new(),
        }
    }

    /// What the address names: its CID, and whether it is a file (of what
    /// size) or a directory. Blocking, as [`Content::read`].
    pub fn stat(&self) -> Result<(Cid, unixfs::Kind)> {
        if self.key.is_some() {
            bail!("sealed content is read by its handle, not looked into");
        }
        let mut source = self.source();
        source.by_path = true;
        let (cid, _) = self.resolve(&mut source)?;
        Ok((cid, unixfs::stat(&mut source, &cid)?))
    }

    /// Block `cid` of the content's DAG, checked. Blocking.
    pub fn block(&self, cid: &Cid) -> Result<Bytes> {
        if self.key.is_some() {
            bail!("sealed content is read by its handle, not by block");
        }
        let mut source = self.source();
        source.by_path = true;
        Ok(unixfs::fetch(&mut source, cid)?)
    }

    /// Writes the blocks that prove the address's path, then those `scope`
    /// names of what it ends at, as [`unixfs::export`]; returns the CID it
    /// ends at. Blocking.
    pub fn export(&self, scope: unixfs::Scope, sink: &mut impl unixfs::BlockSink) -> Result<Cid> {
        if self.key.is_some() {
            bail!("sealed content is read by its handle: its blocks are ciphertext");
        }
        let mut source = self.source();
        let (cid, span) = self.resolve(&mut source)?;
        // A directory as an entity is its shards at most: not its span.
        let whole = match scope {
            unixfs::Scope::All => true,
            unixfs::Scope::Entity => {
                matches!(unixfs::stat(&mut source, &cid)?, unixfs::Kind::File { .. })
            }
            unixfs::Scope::Block => false,
        };
        if whole {
            source.set_plan(self.manifest.segments_for(span).collect());
        }
        Ok(unixfs::export(
            &mut source,
            &self.base,
            &self.path,
            scope,
            sink,
        )?)
    }

    /// Writes the content to `path`: a file, or a directory tree. `path` must
    /// not exist; what is written appears there whole, or not at all.
    pub fn save(&self, path: &Path) -> Result<()> {
        if path.exists() {
            bail!(
                "{} exists: remove it or choose another output",
                path.display()
            );
        }
        if self.key.is_some() {
            return write_file(path, true, |out| self.read(0, None, out));
        }
        let mut source = self.source();
        let (cid, span) = self.resolve(&mut source)?;
        source.set_plan(self.manifest.segments_for(span).collect());
        save(&mut source, &cid, path)
    }

    fn source(&self) -> NetSource<'_> {
        NetSource {
            content: self,
            rt: tokio::runtime::Handle::current(),
            locate: self.manifest.locate(),
            inner_at: self.inner_blocks(),
            leaves_at: 0,
            plan: Vec::new(),
            in_flight: HashMap::new(),
            cache: VecDeque::new(),
            inner: HashMap::new(),
            inner_bytes: 0,
            checked: HashSet::new(),
            by_path: !self.path.is_empty(),
            alone_counts: HashMap::new(),
        }
    }

    /// Where each dag-pb (inner) block sits in the stream.
    fn inner_blocks(&self) -> Vec<(Cid, Range<u64>)> {
        let mut at = 0;
        let mut out = Vec::new();
        for b in &self.manifest.blocks {
            if b.0.codec() == DAG_PB {
                out.push((b.0, at..at + b.1));
            }
            at += b.1;
        }
        out
    }

    /// The segments holding bytes `range` of the file whose DAG fills
    /// stream bytes `span`, in order: what the reader will want, so what to
    /// fetch before its first block is in. Raw leaves are the file's bytes
    /// in stream order; leaves that are dag-pb nodes (CIDv0) give no file
    /// offsets without decoding, so their segments are planned as the
    /// reader names them ([`NetSource::upcoming`]).
    fn plan(&self, span: Range<u64>, range: Range<u64>) -> Vec<u64> {
        let mut plan = BTreeSet::new();
        let (mut at, mut file_at) = (0u64, 0u64);
        for b in &self.manifest.blocks {
            if b.0.codec() == RAW && span.start <= at && at + b.1 <= span.end {
                let leaf = file_at..file_at + b.1;
                if leaf.start < range.end && range.start < leaf.end {
                    plan.extend(self.manifest.segments_for(at..at + b.1));
                }
                file_at = leaf.end;
            }
            at += b.1;
        }
        plan.into_iter().collect()
    }
}

/// Writes the file or directory tree `cid` as `path`, synced. A file is
/// written under a temporary name; a tree into a temporary directory, both
/// beside `path` and renamed to it once complete, never over anything that
/// is there by then. On failure nothing is left behind.
fn save(source: &mut NetSource<'_>, cid: &Cid, path: &Path) -> Result<()> {
    match write_file(path, true, |out| read_file(source, cid, out)) {
        Err(e) if is_directory(&e) => {}
        other => return other,
    }
    let staging = temporary(path, "dir");
    fs::create_dir(&staging).with_context(|| format!("cannot create {}", staging.display()))?;
    let saved = save_tree(source, cid, &staging)
        .and_then(|()| {
            let dir = fs::File::open(&staging)
                .with_context(|| format!("cannot open {}", staging.display()))?;
            rustix::fs::syncfs(&dir).with_context(|| format!("cannot sync {}", path.display()))
        })
        .and_then(|()| rename_new(&staging, path));
    if saved.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    saved
}

/// Writes the entries of directory `cid` into `dir`, files unsynced.
fn save_tree(source: &mut NetSource<'_>, cid: &Cid, dir: &Path) -> Result<()> {
    for entry in unixfs::list_directory(source, cid)? {
        let path = dir.join(&entry.name);
        match write_file(&path, false, |out| read_file(source, &entry.cid, out)) {
            Err(e) if is_directory(&e) => {
                fs::create_dir(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                save_tree(source, &entry.cid, &path)?;
            }
            other => other?,
        }
    }
    Ok(())
}

fn read_file(source: &mut NetSource<'_>, cid: &Cid, out: &mut direct::Writer) -> Result<()> {
    Ok(unixfs::read_range(source, cid, 0, None, out).map(drop)?)
}

fn is_directory(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref(), Some(ReadError::IsDirectory { .. }))
}

/// A fresh name beside `path`: `.NAME.RANDOM.what`, hidden and unguessable,
/// so nothing can be planted there (a symlink) before it is created.
fn temporary(path: &Path, what: &str) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.{:016x}.{what}", rand::random::<u64>()))
}

/// Renames `from` to `to`, failing if `to` exists by then.
fn rename_new(from: &Path, to: &Path) -> Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE)
        .with_context(|| format!("cannot rename {} to {}", from.display(), to.display()))
}

/// Writes a file through `write` under a [`temporary`] name created
/// exclusively (never through a symlink), synced if `sync`, and renamed to
/// `path` once complete; removes it on failure.
fn write_file(
    path: &Path,
    sync: bool,
    write: impl FnOnce(&mut direct::Writer) -> Result<()>,
) -> Result<()> {
    let part = temporary(path, "part");
    let mut out = direct::Writer::create_new(&part)
        .with_context(|| format!("cannot create {}", part.display()))?;
    let written = write(&mut out)
        .and_then(|()| {
            match sync {
                true => out.finish(),
                false => out.finish_unsynced(),
            }
            .with_context(|| format!("cannot write {}", part.display()))
        })
        .and_then(|()| rename_new(&part, path));
    if written.is_err() {
        let _ = fs::remove_file(&part);
    }
    written
}

/// A segment as fetched: its `k` data pieces, whose concatenation cut to
/// `len` bytes is the segment. Kept in pieces, not joined: a block within
/// one piece is read out of it without a copy.
struct Segment {
    pieces: Vec<Bytes>,
    piece_len: u64,
    len: u64,
    /// Its share of the read's [`Budget`], given back when it is dropped.
    _budget: Option<OwnedSemaphorePermit>,
}

impl Segment {
    fn new(pieces: Vec<Bytes>, piece_len: u64, len: u64) -> Result<Segment> {
        if pieces.iter().any(|p| p.len() as u64 != piece_len)
            || (pieces.len() as u64).saturating_mul(piece_len) < len
        {
            bail!("its pieces do not hold its {len} bytes");
        }
        Ok(Segment {
            pieces,
            piece_len,
            len,
            _budget: None,
        })
    }

    /// Bytes `range` of the segment (clipped to it): a slice of a piece
    /// when the range lies in one, else a copy.
    fn slice(&self, range: Range<u64>) -> Bytes {
        let (start, end) = (range.start.min(self.len), range.end.min(self.len));
        if start >= end {
            return Bytes::new();
        }
        let (first, last) = (start / self.piece_len, (end - 1) / self.piece_len);
        let within = |i: u64, at: u64| (at - i * self.piece_len) as usize;
        if first == last {
            let i = first as usize;
            return self.pieces[i]
                .slice(within(first, start)..within(first, start) + (end - start) as usize);
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        for i in first..=last {
            let from = start.max(i * self.piece_len);
            let to = end.min((i + 1) * self.piece_len);
            out.extend_from_slice(&self.pieces[i as usize][within(i, from)..within(i, to)]);
        }
        out.into()
    }
}

/// Blocks out of the network for the UnixFS reader: a block's place in the
/// stream names its segments; segments are fetched ahead along the plan.
struct NetSource<'a> {
    content: &'a Content,
    rt: tokio::runtime::Handle,
    locate: HashMap<Cid, Range<u64>>,
    /// The dag-pb blocks and their stream ranges, in stream order.
    inner_at: Vec<(Cid, Range<u64>)>,
    plan: Vec<u64>,
    /// The last segment of the last leaf read (the plan's first before
    /// any): the reader has passed the segments below it.
    leaves_at: u64,
    in_flight: HashMap<u64, JoinHandle<Result<Arc<Segment>>>>,
    /// Recently read segments, newest last.
    cache: VecDeque<(u64, Arc<Segment>)>,
    inner: HashMap<Cid, Bytes>,
    inner_bytes: usize,
    /// Segments fetched again with every piece checked.
    checked: HashSet<u64>,
    /// The content is named by a path: blocks outside the plan are read
    /// alone, not in segments.
    by_path: bool,
    /// Blocks read alone, per segment.
    alone_counts: HashMap<u64, usize>,
}

impl NetSource<'_> {
    /// The segments the reader will want, in order; reading starts at the
    /// first.
    fn set_plan(&mut self, plan: Vec<u64>) {
        self.leaves_at = plan.first().copied().unwrap_or(0);
        self.plan = plan;
    }

    fn segment(&mut self, index: u64) -> io::Result<Arc<Segment>> {
        if let Some(at) = self.cache.iter().position(|(i, _)| *i == index) {
            let hit = self.cache.remove(at).expect("present");
            self.cache.push_back(hit.clone());
            return Ok(hit.1);
        }
        self.fetch_ahead(Some(index));
        let task = self.in_flight.remove(&index).expect("just started");
        self.land(index, task)
    }

    /// Starts fetching `first`, if given, and the plan's next segments from
    /// the leaves on, as far as the window allows.
    fn fetch_ahead(&mut self, first: Option<u64>) {
        let window = self.content.options.segments_in_flight.max(1);
        // From the leaves on, not from `first`: an inner node is read before
        // the leaves in the segments before it. Segments kept count against
        // the window as much as those in flight.
        let ahead: Vec<u64> = first
            .into_iter()
            .chain(
                self.plan
                    .iter()
                    .copied()
                    .filter(|&s| s >= self.leaves_at && Some(s) != first),
            )
            .take(window)
            .collect();
        for s in ahead {
            if (Some(s) == first || (!self.cached(s) && self.in_flight.len() < window))
                && !self.in_flight.contains_key(&s)
            {
                let budget = match Some(s) == first {
                    true => self.needed(s),
                    // Ahead only within the budget.
                    false => match self.spare(s) {
                        Some(budget) => budget,
                        None => break,
                    },
                };
                let task = self.spawn(s, budget);
                self.in_flight.insert(s, task);
                if Some(s) != first {
                    lock(&self.content.stats).ahead += 1;
                }
            }
        }
    }

    fn cached(&self, index: u64) -> bool {
        self.cache.iter().any(|(i, _)| *i == index)
    }

    /// Budget units of segment `index`.
    fn cost(&self, budget: &Budget, index: u64) -> u32 {
        let m = &self.content.manifest;
        budget.cost(u64::from(m.scheme.k) * m.piece_len(index))
    }

    /// Segment `index`'s share of the budget if it is free now: `None` if
    /// not, `Some(None)` with no budget.
    fn spare(&self, index: u64) -> Option<Option<OwnedSemaphorePermit>> {
        let Some(budget) = &self.content.options.budget else {
            return Some(None);
        };
        let cost = self.cost(budget, index);
        budget
            .kib
            .clone()
            .try_acquire_many_owned(cost)
            .ok()
            .map(Some)
    }

    /// Segment `index`'s share of the budget, waited for if need be: with
    /// all this read holds given up first (it holds nothing while it
    /// waits, so reads never wait on each other).
    fn needed(&mut self, index: u64) -> Option<OwnedSemaphorePermit> {
        if let Some(got) = self.spare(index) {
            return got;
        }
        let budget = self.content.options.budget.clone()?;
        self.cache.clear();
        for (_, task) in self.in_flight.drain() {
            task.abort();
        }
        let cost = self.cost(&budget, index);
        // The semaphore is never closed.
        self.rt.block_on(budget.kib.acquire_many_owned(cost)).ok()
    }

    /// Starts fetching segment `index`; its data pieces are checked on
    /// arrival once a block of it has failed ([`NetSource::rejected`]).
    fn spawn(
        &self,
        index: u64,
        budget: Option<OwnedSemaphorePermit>,
    ) -> JoinHandle<Result<Arc<Segment>>> {
        let c = self.content;
        self.rt.spawn(fetch_segment(
            c.net.clone(),
            c.manifest.clone(),
            index,
            self.checked.contains(&index),
            c.hedge.clone(),
            c.stats.clone(),
            budget,
        ))
    }

    /// Waits for segment `index` and keeps it, and its inner blocks.
    fn land(
        &mut self,
        index: u64,
        task: JoinHandle<Result<Arc<Segment>>>,
    ) -> io::Result<Arc<Segment>> {
        let segment = self
            .rt
            .block_on(task)
            .map_err(io::Error::other)?
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        self.keep_inner(index, &segment);
        self.cache.push_back((index, segment.clone()));
        Ok(segment)
    }

    /// Drops cached segments beyond [`SEGMENTS_CACHED`], once the part of
    /// a block a segment was fetched for is in: by then a leaf has moved
    /// `leaves_at`.
    fn trim_cache(&mut self) {
        while self.cache.len() > SEGMENTS_CACHED {
            let drop = evictee(self.cache.iter().map(|(i, _)| *i), self.leaves_at);
            self.cache.remove(drop);
        }
    }

    /// Fetches segment `index` again with every piece checked against its
    /// CID, in place of what was fetched before.
    fn refetch(&mut self, index: u64) -> io::Result<()> {
        if let Some(task) = self.in_flight.remove(&index) {
            task.abort();
        }
        self.cache.retain(|(i, _)| *i != index);
        // Inner blocks copied out of the old fetch may be bad too.
        let size = self.content.manifest.segment_size();
        let seg = index * size..(index + 1) * size;
        for (cid, at) in &self.inner_at {
            if at.start < seg.end
                && seg.start < at.end
                && let Some(b) = self.inner.remove(cid)
            {
                self.inner_bytes -= b.len();
            }
        }
        self.checked.insert(index);
        lock(&self.content.stats).rechecked += 1;
        let budget = self.needed(index);
        let task = self.spawn(index, budget);
        self.land(index, task).map(drop)
    }

    /// Keeps the inner nodes (dag-pb blocks with links) that lie wholly in
    /// a segment, within [`INNER_CACHED`] bytes.
    fn keep_inner(&mut self, index: u64, segment: &Segment) {
        let size = self.content.manifest.segment_size();
        let start = index * size;
        let seg = start..start + segment.len;
        let first = self
            .inner_at
            .partition_point(|(_, at)| at.start < seg.start);
        for (cid, at) in self.inner_at[first..]
            .iter()
            .take_while(|(_, at)| at.end <= seg.end)
        {
            if !self.inner.contains_key(cid)
                && self.inner_bytes + (at.end - at.start) as usize <= INNER_CACHED
            {
                let (from, to) = (at.start - start, at.end - start);
                // Its first byte tells: a leaf that spans two pieces is
                // not joined only to be dropped.
                if is_leaf(cid, &segment.slice(from..to.min(from + 1))) {
                    continue;
                }
                // A copy: a slice would keep the whole piece alive.
                let bytes = Bytes::copy_from_slice(&segment.slice(from..to));
                self.inner_bytes += bytes.len();
                self.inner.insert(*cid, bytes);
            }
        }
    }

    /// Stream bytes `at`, read alone: each part by a verified range of the
    /// data piece it lies in, from the holder the manifest names. `None`
    /// if a part fails or is not in within [`GetOptions::range_patience`].
    fn read_alone(&self, at: &Range<u64>) -> Option<Bytes> {
        let c = self.content;
        let parts = c
            .manifest
            .piece_ranges(at.clone())
            .into_iter()
            .map(|piece| {
                fetch_range(
                    &c.net,
                    &c.manifest,
                    piece,
                    c.options.range_patience,
                    &c.stats,
                )
            });
        let parts = self.rt.block_on(futures::future::try_join_all(parts));
        match parts {
            Ok(parts) => {
                lock(&c.stats).ranges += 1;
                Some(parts.concat().into())
            }
            Err(e) => {
                tracing::debug!(error = %format!("{e:#}"), "cannot read a block alone; fetching its segments");
                None
            }
        }
    }
}

/// Bytes `range` of data piece `piece` of `segment`, from the holder the
/// manifest names, checked against the piece CID by their proof.
async fn fetch_range(
    net: &impl Holders,
    manifest: &Manifest,
    (segment, piece, range): (u64, usize, Range<u64>),
    patience: Duration,
    stats: &Mutex<GetStats>,
) -> Result<Vec<u8>> {
    let cid = manifest.segments[segment as usize][piece];
    let peer = manifest
        .holder(segment as usize, piece)
        .and_then(|h| PeerId::from_bytes(h).ok())
        .context("the manifest names no holder")?;
    let answer = match tokio::time::timeout(patience, net.range(peer, cid, range.clone())).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => {
            lock(stats).failed.insert(peer);
            bail!("{peer}: {e}");
        }
        Err(_) => {
            tracing::warn!(%peer, piece = %cid, segment, "holder is slow; fetching the segment instead");
            lock(stats).slow.insert(peer);
            bail!("{peer} did not answer in {patience:?}");
        }
    };
    let FetchResponse::RangeV1 { size, encoded } = answer else {
        bail!("{peer} answered {answer:?}");
    };
    // The size first: the proof is checked against the piece's.
    let checked = match size == manifest.piece_len(segment) {
        true => proof::decode_range(&cid, size, range, &encoded).ok(),
        false => None,
    };
    match checked {
        Some(bytes) => Ok(bytes),
        None => {
            tracing::warn!(%peer, piece = %cid, "holder sent bytes that do not match the piece CID; dropping it");
            lock(stats).dropped.insert(peer);
            bail!("{peer} sent bad bytes")
        }
    }
}

/// Which of the cached segments (least recently used first) to drop: the
/// lowest below `leaves_at`, which the reader has passed, else the least
/// recently used.
///
/// The reader takes leaves in stream order, and a file's inner node
/// follows its leaves, so reading one pulls in a segment ahead of the
/// leaves: dropping that one first would fetch it again a moment later.
fn evictee(cached: impl Iterator<Item = u64>, leaves_at: u64) -> usize {
    cached
        .enumerate()
        .filter(|&(_, i)| i < leaves_at)
        .min_by_key(|&(_, i)| i)
        .map_or(0, |(at, _)| at)
}

impl BlockSource for NetSource<'_> {
    fn get(&mut self, cid: &Cid) -> io::Result<Bytes> {
        if let Some(b) = self.inner.get(cid) {
            return Ok(b.clone());
        }
        let Some(at) = self.locate.get(cid).cloned() else {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("the manifest does not list block {cid}"),
            ));
        };
        let size = self.content.manifest.segment_size();
        // A leaf moves the reader's place to its last segment before that
        // lands, so the segments before it are dropped first; a dag-pb
        // block shows whether it is one once its first part is in.
        let segments = self.content.manifest.segments_for(at.clone());
        let last = segments.end.saturating_sub(1);
        let mut leaf = cid.codec() == RAW;
        if leaf && !segments.is_empty() {
            self.leaves_at = last;
        }
        // A dag-pb block past the leaves, in segments neither kept nor on
        // their way, is read alone: fetched whole, its segments would be
        // dropped again before the leaves reach them (the root, read first,
        // is in the last one). So is, for content named by a path, any block
        // outside the plan: the path's directories, a small file. Once
        // [`READ_ALONE_BLOCKS`] of a segment were read alone (a large
        // sharded directory), the segment is fetched instead.
        let coming = |s: u64| self.cached(s) || self.in_flight.contains_key(&s);
        let planned = |s: u64| self.plan.binary_search(&s).is_ok();
        let alone = |s: u64| self.alone_counts.get(&s).copied().unwrap_or(0);
        let unplanned = self.by_path && !segments.clone().any(|s| planned(s) || coming(s));
        let past_leaves = !leaf && segments.start > self.leaves_at && !segments.clone().any(coming);
        if (unplanned || past_leaves) && segments.clone().all(|s| alone(s) < READ_ALONE_BLOCKS) {
            self.fetch_ahead(None);
            for s in segments.clone() {
                *self.alone_counts.entry(s).or_default() += 1;
            }
            if let Some(bytes) = self.read_alone(&at) {
                if is_leaf(cid, &bytes) {
                    self.leaves_at = last;
                } else if self.inner_bytes + bytes.len() <= INNER_CACHED {
                    self.inner_bytes += bytes.len();
                    self.inner.insert(*cid, bytes.clone());
                }
                return Ok(bytes);
            }
        }
        let mut parts = Vec::new();
        for s in segments {
            let base = s * size;
            let from = at.start.max(base) - base;
            let to = at.end.min(base + size) - base;
            parts.push(self.segment(s)?.slice(from..to));
            if parts.len() == 1 && !leaf && is_leaf(cid, &parts[0]) {
                leaf = true;
                self.leaves_at = last;
            }
            self.trim_cache();
        }
        Ok(match parts.len() {
            1 => parts.swap_remove(0),
            _ => parts.concat().into(),
        })
    }

    /// A data piece of the block's segments was bad: fetch those segments
    /// again, checking every piece, which drops the holder that sent it.
    /// Once each is checked, a block that still fails is the manifest's
    /// fault, and the read fails.
    fn rejected(&mut self, cid: &Cid) -> io::Result<Option<Bytes>> {
        let Some(at) = self.locate.get(cid).cloned() else {
            return Ok(None);
        };
        let unchecked: Vec<u64> = self
            .content
            .manifest
            .segments_for(at)
            .filter(|s| !self.checked.contains(s))
            .collect();
        if unchecked.is_empty() {
            return Ok(None);
        }
        tracing::warn!(block = %cid, segments = ?unchecked, "block does not match its CID; fetching its segments again, checking every piece");
        for s in unchecked {
            self.refetch(s)?;
        }
        self.get(cid).map(Some)
    }

    /// The reader's next DAGs join the plan, and their segments start on
    /// their way. A DAG read whole spans its `Tsize` of the stream, ending
    /// at its root (an importer writes a node after the blocks under it);
    /// one read in part joins only if it is a single block, since a node
    /// names its own children once read. For content named by a path, a
    /// few small blocks are left to be read alone, as [`Content::resolve`]
    /// leaves a small file.
    fn upcoming(&mut self, next: &[Upcoming]) {
        let mut spans = Vec::new();
        for u in next {
            let Some(at) = self.locate.get(&u.cid) else {
                continue;
            };
            let block = at.end - at.start;
            match u.dag_size {
                Some(size) if size == block => spans.push(at.clone()),
                None if u.cid.codec() == RAW => spans.push(at.clone()),
                Some(size) if u.whole && block < size && size <= at.end => {
                    spans.push(at.end - size..at.end);
                }
                _ => {}
            }
        }
        let m = &self.content.manifest;
        let bytes: u64 = spans.iter().map(|s| s.end - s.start).sum();
        if self.by_path && small_file(spans.len(), bytes, m) {
            return;
        }
        let mut plan: BTreeSet<u64> = self.plan.drain(..).collect();
        for span in spans {
            plan.extend(m.segments_for(span));
        }
        self.plan = plan.into_iter().collect();
        self.fetch_ahead(None);
    }
}

/// Fetches any `k` pieces of segment `index` (data pieces first) and
/// decodes the segment if a data piece is missing. A piece slower than
/// `hedge` allows is backed up by the next one. Parity pieces are checked
/// against their CIDs, data pieces only if `check_data`: the reader checks
/// every block in them anyway, and fetches the segment again, checked,
/// should one fail ([`NetSource::rejected`]).
async fn fetch_segment(
    net: Handle,
    manifest: Arc<Manifest>,
    index: u64,
    check_data: bool,
    hedge: Arc<Hedge>,
    stats: Arc<Mutex<GetStats>>,
    budget: Option<OwnedSemaphorePermit>,
) -> Result<Arc<Segment>> {
    let scheme = manifest.scheme;
    let k = scheme.k as usize;
    let cids = manifest.segments[index as usize].clone();
    let piece_len = manifest.piece_len(index);
    let asking: Arc<Mutex<HashMap<usize, PeerId>>> = Arc::default();
    let hints: Vec<Option<PeerId>> = (0..cids.len())
        .map(|i| {
            let hint = manifest.holder(index as usize, i)?;
            PeerId::from_bytes(hint).ok()
        })
        .collect();
    let order = {
        let s = lock(&stats);
        fetch_order(k, &hints, |p| {
            s.slow.contains(p) || s.dropped.contains(p) || s.failed.contains(p)
        })
    };
    // The `n`th piece to try, in `order`.
    let attempt = |n: usize| {
        let i = order[n];
        let (net, stats, asking, hedge) =
            (net.clone(), stats.clone(), asking.clone(), hedge.clone());
        let want = Want {
            cid: cids[i],
            len: piece_len,
            check: check_data || i >= k,
            hint: hints[i],
        };
        async move {
            let start = Instant::now();
            let result = fetch_piece(&net, want, i, &asking, &stats).await;
            if result.is_ok() {
                hedge.answered(start.elapsed());
            }
            (i, result)
        }
    };
    let mut attempts = FuturesUnordered::new();
    let mut started: HashMap<usize, Instant> = HashMap::new();
    let mut pieces: Vec<Option<Bytes>> = vec![None; cids.len()];
    let (mut have, mut next) = (0, 0);
    let mut failures = Vec::new();
    while next < k {
        attempts.push(attempt(next));
        started.insert(order[next], Instant::now());
        next += 1;
    }
    let mut tick = tokio::time::interval(hedge.tick());
    while have < k {
        if attempts.is_empty() {
            bail!(
                "segment {index} has {have} of the {k} pieces it needs ({})",
                failures.join("; ")
            );
        }
        tokio::select! {
            Some((i, result)) = attempts.next() => {
                started.remove(&i);
                match result {
                    Ok(data) => {
                        pieces[i] = Some(data);
                        have += 1;
                    }
                    Err(e) => {
                        failures.push(format!("piece {i}: {e:#}"));
                        if next < cids.len() {
                            attempts.push(attempt(next));
                            started.insert(order[next], Instant::now());
                            next += 1;
                        }
                    }
                }
            }
            _ = tick.tick() => {
                let (now, after) = (Instant::now(), hedge.after());
                let slow: Vec<usize> = started
                    .iter()
                    .filter(|(_, t)| now - **t >= after)
                    .map(|(i, _)| *i)
                    .collect();
                for i in slow {
                    // Backed up once: the slow attempt runs on.
                    started.remove(&i);
                    let peer = lock(&asking).get(&i).copied();
                    tracing::warn!(peer = ?peer, piece = %cids[i], segment = index, "holder is slow; fetching another piece");
                    lock(&stats).slow.extend(peer);
                    if next < cids.len() {
                        attempts.push(attempt(next));
                        started.insert(order[next], Instant::now());
                        next += 1;
                    }
                }
            }
        }
    }
    drop(attempts);
    let decoded = pieces[..k].iter().any(Option::is_none);
    tracing::debug!(segment = index, decoded, "segment fetched");
    let len = manifest.segment_len(index);
    let data = if decoded {
        tokio::task::spawn_blocking(move || decode(scheme, pieces))
            .await
            .context("decode task failed")?
            .with_context(|| format!("cannot decode segment {index}"))?
    } else {
        pieces.into_iter().take(k).flatten().collect()
    };
    let mut segment = Segment::new(data, piece_len, len)
        .with_context(|| format!("cannot decode segment {index}"))?;
    segment._budget = budget;
    let mut s = lock(&stats);
    s.segments.insert(index);
    s.segment_fetches += 1;
    s.bytes += len;
    s.decoded += u64::from(decoded);
    Ok(Arc::new(segment))
}

/// The order to try a segment's pieces in: data pieces first (no decoding
/// when they all arrive), then parity, and last of all those whose named
/// holder this get already found slow, failing or lying (`avoid`), so that a
/// stalled node costs one wait, not one per segment.
fn fetch_order(k: usize, hints: &[Option<PeerId>], avoid: impl Fn(&PeerId) -> bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..hints.len()).collect();
    // Stable: data before parity, then index order within each.
    order.sort_by_key(|&i| (hints[i].as_ref().is_some_and(&avoid), i >= k));
    order
}

/// The `k` data pieces of a segment from any `k` of its pieces.
fn decode(scheme: erasure::Scheme, pieces: Vec<Option<Bytes>>) -> Result<Vec<Bytes>> {
    let mut shards: Vec<Option<Vec<u8>>> = pieces.into_iter().map(|p| p.map(Vec::from)).collect();
    erasure::reconstruct(scheme, &mut shards, false)?;
    shards.truncate(scheme.k as usize);
    let data: Vec<Bytes> = shards.into_iter().flatten().map(Bytes::from).collect();
    anyhow::ensure!(
        data.len() == scheme.k as usize,
        "data pieces missing after decoding"
    );
    Ok(data)
}

/// What fetching a piece asks of the network.
trait Holders {
    /// The piece's holders: from a lookup that ends at the first answer
    /// naming any, or (`full`) from one that runs its course.
    async fn holders(&self, piece: Cid, full: bool) -> Result<HashSet<PeerId>, RequestError>;
    async fn piece(&self, peer: PeerId, piece: Cid) -> Result<FetchResponse, RequestError>;
    async fn range(
        &self,
        peer: PeerId,
        piece: Cid,
        range: Range<u64>,
    ) -> Result<FetchResponse, RequestError>;
}

impl Holders for Handle {
    async fn holders(&self, piece: Cid, full: bool) -> Result<HashSet<PeerId>, RequestError> {
        match full {
            true => self.providers(piece).await,
            false => self.first_providers(piece).await,
        }
    }

    async fn piece(&self, peer: PeerId, piece: Cid) -> Result<FetchResponse, RequestError> {
        self.fetch(peer, FetchRequest::PieceV1 { piece }).await
    }

    async fn range(
        &self,
        peer: PeerId,
        piece: Cid,
        range: Range<u64>,
    ) -> Result<FetchResponse, RequestError> {
        let (offset, len) = (range.start, range.end - range.start);
        self.fetch(peer, FetchRequest::RangeV1 { piece, offset, len })
            .await
    }
}

/// A piece to fetch: its CID and length, whether to check it against the
/// CID (else only its length), and the node the manifest names as holder.
struct Want {
    cid: Cid,
    len: u64,
    check: bool,
    hint: Option<PeerId>,
}

/// One piece from the node the manifest names, else from any holder the
/// DHT names: first from a lookup that ends at the first answer (fewer
/// requests, sooner), then from a full lookup should none of those serve it.
async fn fetch_piece(
    net: &impl Holders,
    want: Want,
    i: usize,
    asking: &Mutex<HashMap<usize, PeerId>>,
    stats: &Mutex<GetStats>,
) -> Result<Bytes> {
    let cid = want.cid;
    let mut tried = HashSet::new();
    let mut last = String::new();
    let mut ask = async |peer: PeerId| -> Option<Bytes> {
        if !tried.insert(peer) {
            return None;
        }
        lock(asking).insert(i, peer);
        match net.piece(peer, cid).await {
            Ok(FetchResponse::PieceV1 { data })
                if data.len() as u64 == want.len
                    && (!want.check || block::verify(&cid, &data).is_ok()) =>
            {
                return Some(data);
            }
            Ok(FetchResponse::PieceV1 { .. }) => {
                tracing::warn!(%peer, piece = %cid, "holder sent bytes that do not match the piece CID; dropping it");
                lock(stats).dropped.insert(peer);
                last = format!("{peer} sent bad bytes");
            }
            Ok(other) => last = format!("{peer} answered {other:?}"),
            Err(e) => {
                lock(stats).failed.insert(peer);
                last = format!("{e}");
            }
        }
        None
    };
    if let Some(peer) = want.hint
        && let Some(data) = ask(peer).await
    {
        return Ok(data);
    }
    for full in [false, true] {
        lock(stats).lookups += 1;
        let holders = net
            .holders(cid, full)
            .await
            .context("provider lookup failed")?;
        // A quick lookup that found none ran its full course.
        if holders.is_empty() && !full {
            match want.hint {
                Some(_) => bail!("no node holds it (the one the manifest names: {last})"),
                None => bail!("no node holds it"),
            }
        }
        for peer in holders {
            if let Some(data) = ask(peer).await {
                return Ok(data);
            }
        }
    }
    bail!("no holder served it (last: {last})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_written_whole_or_not_at_all_and_never_through_a_symlink() {
        let dir = tempfile::tempdir().expect("tempdir");
        let victim = dir.path().join("victim");
        fs::write(&victim, b"keep").expect("victim");
        // Something planted at the output: not followed, not replaced.
        let out = dir.path().join("out");
        std::os::unix::fs::symlink(&victim, &out).expect("symlink");
        let err = write_file(&out, false, |w| Ok(w.write_all(b"new")?)).expect_err("exists");
        assert!(format!("{err:#}").contains("exists"), "{err:#}");
        assert_eq!(fs::read(&victim).expect("read"), b"keep");
        // A failed write leaves nothing; a good one leaves just the file.
        let fresh = dir.path().join("fresh");
        write_file(&fresh, false, |_| anyhow::bail!("cut short")).expect_err("fails");
        write_file(&fresh, true, |w| Ok(w.write_all(b"whole")?)).expect("writes");
        assert_eq!(fs::read(&fresh).expect("read"), b"whole");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        names.sort();
        assert_eq!(names, ["fresh", "out", "victim"]);
    }

    #[test]
    fn the_cache_drops_a_passed_segment_before_one_ahead() {
        // Segment 3 was read for an inner node while the leaves were in 1;
        // now they are in 2: drop 1, not 3, which the leaves reach next.
        assert_eq!(evictee([3, 1, 2].into_iter(), 2), 1);
        // Of several passed, the lowest.
        assert_eq!(evictee([5, 3, 4, 6].into_iter(), 6), 1);
        // None passed (the root's segment, last in the stream, read first):
        // the least recently used.
        assert_eq!(evictee([42, 1, 0].into_iter(), 0), 0);
    }

    /// Holders named by each lookup, and what each holder answers.
    struct Net {
        quick: Vec<PeerId>,
        full: Vec<PeerId>,
        answers: HashMap<PeerId, Bytes>,
        asked: Mutex<Vec<String>>,
    }

    impl Net {
        fn new(quick: &[PeerId], full: &[PeerId], answers: &[(PeerId, &Bytes)]) -> Net {
            Net {
                quick: quick.to_vec(),
                full: full.to_vec(),
                answers: answers.iter().map(|(p, d)| (*p, (*d).clone())).collect(),
                asked: Mutex::default(),
            }
        }
    }

    impl Holders for Net {
        async fn holders(&self, _: Cid, full: bool) -> Result<HashSet<PeerId>, RequestError> {
            lock(&self.asked).push(format!("lookup full={full}"));
            let found = if full { &self.full } else { &self.quick };
            Ok(found.iter().copied().collect())
        }

        async fn piece(&self, peer: PeerId, _: Cid) -> Result<FetchResponse, RequestError> {
            lock(&self.asked).push(format!("fetch {peer}"));
            match self.answers.get(&peer) {
                Some(data) => Ok(FetchResponse::PieceV1 { data: data.clone() }),
                None => Ok(FetchResponse::NotFoundV1),
            }
        }

        /// A range of what the peer holds, with its proof; a peer holding
        /// nothing never answers.
        async fn range(
            &self,
            peer: PeerId,
            _: Cid,
            range: Range<u64>,
        ) -> Result<FetchResponse, RequestError> {
            lock(&self.asked).push(format!("range {peer}"));
            let Some(data) = self.answers.get(&peer) else {
                return std::future::pending().await;
            };
            let encoded = proof::encode_range(data, range).expect("in range");
            Ok(FetchResponse::RangeV1 {
                size: data.len() as u64,
                encoded: encoded.into(),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_range_comes_checked_from_the_named_holder_or_not_at_all() {
        use cairn_protocol::manifest::{EncodedSegment, Packer};
        let scheme = erasure::Scheme { k: 2, m: 1 };
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 7) as u8).collect();
        let mut segments = Vec::new();
        let mut packer = Packer::new(scheme, 1000, |s: EncodedSegment| {
            segments.push(s.pieces);
            Ok(())
        })
        .expect("layout");
        let root = unixfs::import_file(&data[..], &mut packer)
            .expect("import")
            .cid;
        let mut manifest = packer.finish(root).expect("manifest");
        let (good, liar, stalled) = (PeerId::random(), PeerId::random(), PeerId::random());
        // The manifest names each of the three in turn as the holder; the
        // liar holds the piece with a bit flipped, the stalled one never answers.
        let piece = segments[0][0].1.clone();
        let mut bad = piece.to_vec();
        bad[10] ^= 1;
        let bad = Bytes::from(bad);
        let net = Net::new(&[], &[], &[(good, &piece), (liar, &bad)]);
        let patience = Duration::from_secs(1);
        for (holder, dropped, slow) in [
            (good, false, false),
            (liar, true, false),
            (stalled, false, true),
        ] {
            let hint = serde_bytes::ByteBuf::from(holder.to_bytes());
            manifest.holders = vec![vec![Some(hint); 3]; manifest.segments.len()];
            let stats = Mutex::default();
            let got = fetch_range(&net, &manifest, (0, 0, 5..900), patience, &stats).await;
            let stats = lock(&stats).clone();
            match holder == good {
                true => assert_eq!(got.expect("served"), piece[5..900]),
                false => assert!(got.is_err()),
            }
            assert_eq!(stats.dropped.contains(&holder), dropped);
            assert_eq!(stats.slow.contains(&holder), slow);
        }
    }

    async fn fetch(net: &Net, piece: &Bytes) -> (Result<Bytes>, GetStats) {
        fetch_hinted(net, piece, None).await
    }

    async fn fetch_hinted(
        net: &Net,
        piece: &Bytes,
        hint: Option<PeerId>,
    ) -> (Result<Bytes>, GetStats) {
        let want = Want {
            cid: block::piece_cid(piece),
            len: piece.len() as u64,
            check: true,
            hint,
        };
        let stats = Mutex::default();
        let got = fetch_piece(net, want, 0, &Mutex::default(), &stats).await;
        (got, lock(&stats).clone())
    }

    #[test]
    fn pieces_on_slow_holders_are_tried_last() {
        let peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        let hints: Vec<Option<PeerId>> = peers.iter().copied().map(Some).collect();
        // 3+2: data pieces 0..3, parity 3..5.
        assert_eq!(fetch_order(3, &hints, |_| false), [0, 1, 2, 3, 4]);
        let slow = |p: &PeerId| *p == peers[1] || *p == peers[3];
        assert_eq!(fetch_order(3, &hints, slow), [0, 2, 4, 1, 3]);
        // Without hints, nothing is known to avoid.
        assert_eq!(fetch_order(3, &[None; 5], |_| true), [0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn the_holder_the_manifest_names_is_asked_before_any_lookup() {
        let piece = Bytes::from(vec![7u8; 1000]);
        let (hinted, other) = (PeerId::random(), PeerId::random());
        let net = Net::new(&[other], &[other], &[(hinted, &piece), (other, &piece)]);
        let (got, stats) = fetch_hinted(&net, &piece, Some(hinted)).await;
        assert_eq!(got.expect("fetched"), piece);
        assert_eq!(stats.lookups, 0);
        assert_eq!(lock(&net.asked).as_slice(), [format!("fetch {hinted}")]);
    }

    #[tokio::test]
    async fn a_stale_or_lying_hint_falls_back_to_the_dht() {
        let piece = Bytes::from(vec![7u8; 1000]);
        let garbage = Bytes::from(vec![8u8; 1000]);
        let (stale, liar, good) = (PeerId::random(), PeerId::random(), PeerId::random());
        for (hint, dropped) in [(stale, BTreeSet::new()), (liar, BTreeSet::from([liar]))] {
            // The hinted node is among those the lookup names: not asked twice.
            let net = Net::new(&[hint, good], &[good], &[(liar, &garbage), (good, &piece)]);
            let (got, stats) = fetch_hinted(&net, &piece, Some(hint)).await;
            assert_eq!(got.expect("fetched"), piece);
            assert_eq!(stats.lookups, 1);
            assert_eq!(stats.dropped, dropped);
            let asked = lock(&net.asked).clone();
            assert_eq!(
                asked,
                [
                    format!("fetch {hint}"),
                    "lookup full=false".into(),
                    format!("fetch {good}")
                ]
            );
        }
        // A hint that fails and a network that knows no holder: the error
        // says what the hinted node answered.
        let net = Net::new(&[], &[], &[]);
        let err = fetch_hinted(&net, &piece, Some(stale))
            .await
            .0
            .expect_err("nobody");
        assert!(
            err.to_string().contains("the one the manifest names"),
            "{err}"
        );
        assert!(err.to_string().contains("NotFoundV1"), "{err}");
    }

    #[tokio::test]
    async fn a_full_lookup_finds_a_holder_when_the_quick_ones_fail() {
        let piece = Bytes::from(vec![7u8; 1000]);
        let (liar, gone, good) = (PeerId::random(), PeerId::random(), PeerId::random());
        let garbage = Bytes::from(vec![8u8; 1000]);
        let net = Net::new(
            &[liar, gone],
            &[liar, gone, good],
            &[(liar, &garbage), (good, &piece)],
        );
        let (got, stats) = fetch(&net, &piece).await;
        assert_eq!(got.expect("fetched"), piece);
        assert_eq!(stats.dropped, BTreeSet::from([liar]));
        // Each holder asked once; the full lookup only after both failed.
        let asked = lock(&net.asked).clone();
        let full_at = asked.iter().position(|a| a == "lookup full=true");
        assert_eq!(full_at, Some(3), "{asked:?}");
        assert_eq!(asked.len(), 5, "{asked:?}");
        assert_eq!(asked[4], format!("fetch {good}"));
    }

    #[tokio::test]
    async fn the_quick_holders_serving_means_no_full_lookup() {
        let piece = Bytes::from(vec![7u8; 1000]);
        let good = PeerId::random();
        let net = Net::new(&[good], &[good], &[(good, &piece)]);
        assert_eq!(fetch(&net, &piece).await.0.expect("fetched"), piece);
        assert_eq!(lock(&net.asked).len(), 2);
    }

    #[tokio::test]
    async fn no_holder_anywhere_is_an_error_naming_the_last_failure() {
        let piece = Bytes::from(vec![7u8; 1000]);
        let gone = PeerId::random();
        let net = Net::new(&[gone], &[gone], &[]);
        let err = fetch(&net, &piece).await.0.expect_err("nobody serves it");
        assert!(err.to_string().contains("NotFoundV1"), "{err}");
        // The quick lookup finding nobody ran its course: no second one.
        let empty = Net::new(&[], &[gone], &[]);
        let err = fetch(&empty, &piece).await.0.expect_err("nobody holds it");
        assert!(err.to_string().contains("no node holds it"), "{err}");
        assert_eq!(lock(&empty.asked).as_slice(), ["lookup full=false"]);
    }
}
