//! `cairn add`: content into the network.

use std::collections::{HashSet, VecDeque};
use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use cairn_protocol::block::RAW;
use cairn_protocol::car::CarReader;
use cairn_protocol::erasure::Scheme;
use cairn_protocol::manifest::{
    DEFAULT_PIECE_SIZE, EncodedSegment, MAX_PIECE_SIZE, Manifest, Packer,
};
use cairn_protocol::record::{SignedReceipt, Terms};
use cairn_protocol::seal::{Key, Sealer};
use cairn_protocol::unixfs::{BlockSink, CHUNK_SIZE, HashLeaves, Leaves, import_file_with};
use cairn_protocol::wire::{RejectReason, StoreRequest, StoreResponse, Transfer};
use cid::{Cid, Version};
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use libp2p::{PeerId, kad};
use rand::RngCore as _;
use tokio::sync::mpsc;
use xxhash_rust::xxh3::xxh3_128;

use super::{DEFAULT_HEDGE_AFTER, Hedge, find_manifest, lock, node_key};
use crate::add::{self, Options};
use crate::node::{Handle, RequestError};

/// What to add.
#[derive(Debug, Clone)]
pub enum Input {
    /// A file, or with `options.recursive` a directory tree.
    Path { path: PathBuf, options: Options },
    /// The blocks of a CAR v1; its first root is the content root.
    Car(PathBuf),
    /// A file sealed with `key` (see [`cairn_protocol::seal`]): the network
    /// stores and names its ciphertext.
    Sealed { path: PathBuf, key: Key },
}

#[derive(Debug, Clone)]
pub struct AddOptions {
    pub scheme: Scheme,
    pub piece_size: u64,
    /// How long storage nodes keep the pieces.
    pub term: Duration,
    /// Nodes asked to keep the manifest.
    pub manifest_copies: usize,
    /// Segments being placed at once (each holds `k + m` pieces in memory).
    pub segments_in_flight: usize,
    /// A piece upload slower than this is also started on another node.
    pub hedge_after: Duration,
}

impl Default for AddOptions {
    fn default() -> Self {
        AddOptions {
            scheme: Scheme::default(),
            piece_size: DEFAULT_PIECE_SIZE,
            term: Duration::from_secs(30 * 86_400),
            manifest_copies: 5,
            segments_in_flight: 2,
            hedge_after: DEFAULT_HEDGE_AFTER,
        }
    }
}

/// What an add did.
#[derive(Debug, Clone)]
pub struct Added {
    pub root: Cid,
    pub manifest: Cid,
    /// Bytes of all blocks.
    pub bytes: u64,
    pub scheme: Scheme,
    /// Per segment, its `k + m` piece CIDs, data pieces first.
    pub segments: Vec<Vec<Cid>>,
    /// Per segment, the bytes of each of its pieces.
    pub piece_lens: Vec<u64>,
    /// Per segment, the node holding each piece; empty when
    /// `already_stored` (this add placed nothing).
    pub holders: Vec<Vec<Option<PeerId>>>,
    /// When the placed pieces' term ends, unix seconds; 0 when
    /// `already_stored`.
    pub expires_at: u64,
    /// Pieces placed (receipts, or nodes that already held the piece).
    pub pieces: usize,
    /// Nodes that refused or failed and were replaced.
    pub replaced: usize,
    /// Nodes this add stored the manifest on.
    pub manifest_holders: Vec<PeerId>,
    /// Bytes of the manifest.
    pub manifest_size: u64,
    /// The network had the content already; nothing was uploaded.
    pub already_stored: bool,
}

/// How far an add has got, in bytes of the content's blocks.
#[derive(Debug, Clone, Copy)]
pub enum Progress {
    /// Hashed: the content's blocks hold `total` bytes.
    Hashed { total: u64 },
    /// `done` bytes are placed on storage nodes.
    Placed { done: u64 },
}

/// Adds `input` to the network through `net`, reporting progress. Content
/// the network already has is not uploaded again.
pub async fn add(
    net: &Handle,
    input: Input,
    options: &AddOptions,
    progress: impl Fn(Progress),
) -> Result<Added> {
    // Hash first: the root tells whether the network has the content.
    let hashing = input.clone();
    let (root, total, known) = tokio::task::spawn_blocking(move || {
        let mut first = FirstPass::default();
        import(&hashing, &mut first, &HashLeaves).map(|root| (root, first.bytes, first.leaves))
    })
    .await
    .context("import task failed")??;
    tracing::debug!(%root, bytes = total, "content hashed");
    progress(Progress::Hashed { total });
    // The first placement walk runs alongside the manifest lookup, so that
    // a node that does not answer stalls both at once. On a network smaller
    // than a bucket it finds every node, whatever the key.
    let near = tokio::spawn({
        let net = net.clone();
        async move { net.closest_peers(root).await }
    });
    let stored = find_manifest(net, root).await;
    if !matches!(stored, Ok(None)) {
        near.abort();
    }
    if let Some(m) = stored? {
        let (bytes, cid) = m.encode_with_cid();
        return Ok(Added {
            root,
            manifest: cid,
            manifest_size: bytes.len() as u64,
            bytes: m.stream_len,
            scheme: m.scheme,
            piece_lens: piece_lens(&m),
            segments: m.segments,
            holders: Vec::new(),
            expires_at: 0,
            pieces: 0,
            replaced: 0,
            manifest_holders: Vec::new(),
            already_stored: true,
        });
    }

    // The whole network serves every segment; a larger one's nearest peers
    // serve the manifest; a walk that failed leaves each to walk for itself.
    let (everyone, near_root) = match near.await.ok().and_then(Result::ok) {
        Some(found) if crate::net::whole_network(&found) => (Some(found), None),
        found => (None, found.map(|found| (root, found))),
    };
    let shared = Arc::new(Shared {
        net: net.clone(),
        k: options.scheme.k as usize,
        expires_at: net.now() + options.term.as_secs(),
        hedge: Hedge::new(options.hedge_after),
        excluded: Mutex::new(HashSet::from([net.peer_id()])),
        everyone: Mutex::new(everyone),
        near_root,
        replaced: Mutex::new(0),
    });
    let (tx, mut rx) = mpsc::channel::<EncodedSegment>(1);
    let (scheme, piece_size) = (options.scheme, options.piece_size);
    let packing = tokio::task::spawn_blocking(move || -> Result<Manifest> {
        let mut packer = Packer::new(scheme, piece_size, |segment| {
            tx.blocking_send(segment)
                .map_err(|_| io::Error::other("the upload stopped"))
        })?;
        let root = import(&input, &mut packer, &known)?;
        Ok(packer.finish(root)?)
    });

    let (mut placing, mut placed_bytes, mut pieces) = (FuturesUnordered::new(), 0u64, 0usize);
    let mut holders: Vec<Vec<Option<PeerId>>> = Vec::new();
    let mut receiving = true;
    loop {
        tokio::select! {
            segment = rx.recv(), if receiving && placing.len() < options.segments_in_flight.max(1) => {
                match segment {
                    Some(s) => placing.push(place_segment(shared.clone(), s)),
                    None => receiving = false,
                }
            }
            Some(result) = placing.next() => {
                let (index, bytes, placed) = result?;
                placed_bytes += bytes;
                pieces += placed.len();
                let index = index as usize;
                if holders.len() <= index {
                    holders.resize(index + 1, Vec::new());
                }
                holders[index] = placed;
                progress(Progress::Placed { done: placed_bytes.min(total) });
            }
            else => break,
        }
    }
    let mut manifest = match packing.await.context("import task failed")? {
        Ok(m) => m,
        Err(e) => return Err(e.context("cannot import the content")),
    };
    if manifest.root != root {
        bail!(
            "the input changed while it was being added (root {root}, then {})",
            manifest.root
        );
    }
    // A get asks these nodes first, before any DHT lookup.
    manifest.holders = holders
        .iter()
        .map(|segment| {
            let hint = |p: &Option<PeerId>| p.map(|p| serde_bytes::ByteBuf::from(p.to_bytes()));
            segment.iter().map(hint).collect()
        })
        .collect();
    manifest
        .validate()
        .context("the placement does not fit the manifest")?;
    let (bytes, cid) = manifest.encode_with_cid();
    let bytes = Bytes::from(bytes);
    let manifest_holders = store_manifest(
        &shared,
        manifest.root,
        cid,
        bytes.clone(),
        options.manifest_copies,
    )
    .await?;
    let replaced = *lock(&shared.replaced);
    Ok(Added {
        root,
        manifest: cid,
        manifest_size: bytes.len() as u64,
        bytes: manifest.stream_len,
        scheme: manifest.scheme,
        piece_lens: piece_lens(&manifest),
        segments: manifest.segments,
        holders,
        expires_at: shared.expires_at,
        pieces,
        replaced,
        manifest_holders,
        already_stored: false,
    })
}

fn piece_lens(m: &Manifest) -> Vec<u64> {
    (0..m.segments.len() as u64)
        .map(|s| m.piece_len(s))
        .collect()
}

/// Leaves the first pass remembers for the second: 16 GiB of content, in
/// 3 MiB. The second pass hashes any beyond them.
const KNOWN_LEAVES: usize = 1 << 16;

/// The first pass's sink: counts the content's bytes and remembers its
/// first [`KNOWN_LEAVES`] raw leaves, in order, each as its CID and a
/// 128-bit XXH3 of its bytes.
#[derive(Default)]
struct FirstPass {
    bytes: u64,
    leaves: KnownLeaves,
}

impl BlockSink for FirstPass {
    fn put(&mut self, cid: &Cid, block: &[u8]) -> io::Result<()> {
        self.bytes += block.len() as u64;
        if cid.codec() == RAW && self.leaves.0.len() < KNOWN_LEAVES {
            self.leaves.0.push((*cid, xxh3_128(block)));
        }
        Ok(())
    }
}

/// A file's leaves as the first pass hashed them: the pack pass reads the
/// file again and checks each chunk by XXH3 (≈ 30× cheaper than sha2)
/// instead of hashing it again. A chunk that differs means the file
/// changed in between, and the add fails.
#[derive(Default)]
struct KnownLeaves(Vec<(Cid, u128)>);

impl Leaves for KnownLeaves {
    fn cid(&self, index: u64, chunk: &[u8]) -> io::Result<Cid> {
        match usize::try_from(index).ok().and_then(|i| self.0.get(i)) {
            Some((cid, hash)) if xxh3_128(chunk) == *hash => Ok(*cid),
            Some(_) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the input changed while it was being added (at byte {})",
                    index * CHUNK_SIZE as u64
                ),
            )),
            None => HashLeaves.cid(index, chunk),
        }
    }
}

/// Imports `input` into `sink` and returns its root CID. A file's raw
/// leaves (plain or sealed) are named by `leaves`; a directory's are hashed.
fn import(input: &Input, sink: &mut impl BlockSink, leaves: &impl Leaves) -> Result<Cid> {
    match input {
        Input::Path { path, options } => {
            Ok(add::import_path_with(path, *options, sink, leaves)?.cid)
        }
        Input::Car(path) => {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            let mut car = CarReader::new(BufReader::with_capacity(1 << 20, file))
                .with_context(|| format!("{} is not a CAR v1", path.display()))?;
            let Some(&root) = car.roots().first() else {
                bail!("{} names no root", path.display());
            };
            while let Some((cid, block)) = car
                .next_block()
                .with_context(|| format!("{} is invalid", path.display()))?
            {
                sink.put(&cid, &block)?;
            }
            Ok(root)
        }
        Input::Sealed { path, key } => {
            let file =
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
            if file.metadata()?.is_dir() {
                bail!(
                    "{} is a directory: --encrypt takes a file (archive a directory first)",
                    path.display()
                );
            }
            let sealed = Sealer::new(BufReader::with_capacity(1 << 20, file), key);
            Ok(import_file_with(sealed, sink, leaves, Version::V1)
                .with_context(|| format!("cannot import {}", path.display()))?
                .cid)
        }
    }
}

/// State of one add shared by its segment placements.
struct Shared {
    net: Handle,
    k: usize,
    expires_at: u64,
    hedge: Hedge,
    /// This client and the nodes that refused or failed: not asked again.
    excluded: Mutex<HashSet<PeerId>>,
    /// Every DHT server, once a walk found fewer than a bucket's worth of
    /// them (the whole network): later segments need no walk of their own.
    everyone: Mutex<Option<Vec<PeerId>>>,
    /// The walk towards the root made alongside the manifest lookup: on a
    /// larger network, the manifest's candidates.
    near_root: Option<(Cid, Vec<PeerId>)>,
    replaced: Mutex<usize>,
}

impl Shared {
    /// Candidate nodes for a key, closest first, without excluded ones.
    async fn candidates(&self, key: Cid) -> Result<Vec<PeerId>> {
        let known = lock(&self.everyone).clone();
        let peers = match known {
            Some(mut all) => {
                let target = kad::KBucketKey::new(key.to_bytes());
                all.sort_by_cached_key(|p| target.distance(&kad::KBucketKey::from(*p)));
                all
            }
            None => match &self.near_root {
                Some((root, found)) if *root == key => found.clone(),
                _ => self.walk(key).await?,
            },
        };
        let excluded = lock(&self.excluded);
        Ok(peers
            .into_iter()
            .filter(|p| !excluded.contains(p))
            .collect())
    }

    /// The peers closest to `key`, by a walk; remembered as the whole
    /// network when they are.
    async fn walk(&self, key: Cid) -> Result<Vec<PeerId>> {
        let found = self
            .net
            .closest_peers(key)
            .await
            .context("cannot find storage nodes in the DHT")?;
        if crate::net::whole_network(&found) {
            *lock(&self.everyone) = Some(found.clone());
        }
        Ok(found)
    }

    fn exclude(&self, peer: PeerId) {
        lock(&self.excluded).insert(peer);
        *lock(&self.replaced) += 1;
    }
}

/// Which node each piece of a segment goes to: a plain state machine (no
/// IO) that [`place_segment`] drives. Every node is asked for at most one
/// piece of the segment, so no node holds two.
#[derive(Debug)]
struct Placement {
    candidates: VecDeque<PeerId>,
    asked: HashSet<PeerId>,
    pieces: Vec<PieceState>,
}

#[derive(Debug, Clone, Default)]
struct PieceState {
    placed: bool,
    running: usize,
    /// When the oldest running attempt started.
    since: Option<Instant>,
    hedged: bool,
}

impl Placement {
    fn new(pieces: usize, candidates: Vec<PeerId>) -> Self {
        Placement {
            candidates: candidates.into(),
            asked: HashSet::new(),
            pieces: vec![PieceState::default(); pieces],
        }
    }

    fn add_candidates(&mut self, more: Vec<PeerId>) {
        for p in more {
            if !self.asked.contains(&p) && !self.candidates.contains(&p) {
                self.candidates.push_back(p);
            }
        }
    }

    /// The node to ask next for piece `i`, if any is left.
    fn start(&mut self, i: usize, now: Instant) -> Option<PeerId> {
        let peer = self.candidates.pop_front()?;
        self.asked.insert(peer);
        let p = &mut self.pieces[i];
        p.running += 1;
        p.since.get_or_insert(now);
        Some(peer)
    }

    /// Records an attempt's end; returns whether piece `i` needs a new node.
    fn finish(&mut self, i: usize, ok: bool) -> bool {
        let p = &mut self.pieces[i];
        p.running -= 1;
        if ok {
            p.placed = true;
        }
        if p.running == 0 {
            p.since = None;
        }
        !p.placed && p.running == 0
    }

    /// Pieces whose only attempt has run longer than `after`: each gets a
    /// second node (once), so one slow node does not hold the upload.
    fn stragglers(&mut self, now: Instant, after: Duration) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, p) in self.pieces.iter_mut().enumerate() {
            if !p.placed && !p.hedged && p.since.is_some_and(|s| now - s >= after) {
                p.hedged = true;
                out.push(i);
            }
        }
        out
    }

    fn done(&self) -> bool {
        self.pieces.iter().all(|p| p.placed)
    }
}

/// Places every piece of a segment; returns its index, its data bytes
/// (padding included) and the node holding each piece.
async fn place_segment(
    shared: Arc<Shared>,
    segment: EncodedSegment,
) -> Result<(u64, u64, Vec<Option<PeerId>>)> {
    let index = segment.index;
    let n = segment.pieces.len();
    let bytes: u64 = segment.pieces[..shared.k]
        .iter()
        .map(|p| p.1.len() as u64)
        .sum();
    let mut pieces = segment.pieces;
    let mut plan = Placement::new(n, shared.candidates(pieces[0].0).await?);
    let mut attempts = FuturesUnordered::new();
    let attempt = |i: usize, peer: PeerId, (cid, data): (Cid, Bytes)| {
        let shared = shared.clone();
        async move {
            let start = Instant::now();
            let result = upload(&shared.net, peer, cid, data, shared.expires_at).await;
            if result.is_ok() {
                shared.hedge.answered(start.elapsed());
            }
            (i, peer, result)
        }
    };
    let mut last_error = String::from("no storage node found");
    let mut holders = vec![None; n];
    for (i, (cid, _)) in pieces.iter().enumerate() {
        match next_node(&shared, &mut plan, i, *cid).await? {
            Some(peer) => attempts.push(attempt(i, peer, pieces[i].clone())),
            None => bail!(
                "segment {index}: its {n} pieces need {n} distinct storage nodes; found only {}",
                plan.asked.len()
            ),
        }
    }
    let mut tick = tokio::time::interval(shared.hedge.tick());
    while !plan.done() {
        tokio::select! {
            Some((i, peer, result)) = attempts.next() => {
                let ok = match result {
                    Ok(()) => true,
                    Err(e) if is_unsupported(&e) => {
                        tracing::debug!(%peer, "not a storage node");
                        lock(&shared.excluded).insert(peer);
                        false
                    }
                    Err(e) => {
                        tracing::warn!(%peer, piece = %pieces[i].0, segment = index, error = %e, "storage node failed; asking another");
                        last_error = format!("{peer}: {e:#}");
                        shared.exclude(peer);
                        false
                    }
                };
                if ok {
                    // Placed: its bytes are needed no more.
                    pieces[i].1 = Bytes::new();
                    holders[i].get_or_insert(peer);
                }
                if plan.finish(i, ok) {
                    match next_node(&shared, &mut plan, i, pieces[i].0).await? {
                        Some(peer) => attempts.push(attempt(i, peer, pieces[i].clone())),
                        None => bail!(
                            "segment {index}: piece {} could not be placed: every storage node asked refused or failed (last: {last_error})",
                            pieces[i].0
                        ),
                    }
                }
            }
            _ = tick.tick() => {
                for i in plan.stragglers(Instant::now(), shared.hedge.after()) {
                    if let Some(peer) = plan.start(i, Instant::now()) {
                        tracing::info!(%peer, piece = %pieces[i].0, segment = index, "piece upload is slow; asking another node too");
                        attempts.push(attempt(i, peer, pieces[i].clone()));
                    }
                }
            }
        }
    }
    // Dropping the remaining attempts cancels the slowest.
    Ok((index, bytes, holders))
}

/// Starts piece `i` (CID `cid`) on the next candidate, looking up more
/// near `cid` when the list has run dry; `None` when there are none.
async fn next_node(
    shared: &Shared,
    plan: &mut Placement,
    i: usize,
    cid: Cid,
) -> Result<Option<PeerId>> {
    if plan.candidates.is_empty() {
        plan.add_candidates(shared.candidates(cid).await?);
    }
    Ok(plan.start(i, Instant::now()))
}

/// Offers a piece to `peer` and, if accepted, sends it; succeeds with a
/// receipt signed by `peer` for this piece, or when `peer` already holds it.
pub(crate) async fn upload(
    net: &Handle,
    peer: PeerId,
    piece: Cid,
    data: Bytes,
    expires_at: u64,
) -> Result<()> {
    let terms = fresh_terms(piece, data.len() as u64, expires_at);
    match net
        .store(peer, StoreRequest::OfferV1(terms.clone()))
        .await?
    {
        StoreResponse::AcceptedV1 { .. } => {}
        StoreResponse::RejectedV1(RejectReason::AlreadyHeld) => {
            // Held for someone else's term: make it last for ours too.
            return match renew(net, peer, piece, terms.size, expires_at).await? {
                Renewal::Renewed => Ok(()),
                Renewal::NotHeld => bail!("said it holds the piece, then that it does not"),
            };
        }
        StoreResponse::RejectedV1(reason) => bail!("declined: {reason:?}"),
        other => bail!("unexpected answer to an offer: {other:?}"),
    }
    let transfer = Transfer {
        piece,
        nonce: terms.nonce,
        data,
    };
    match net.store(peer, StoreRequest::TransferV1(transfer)).await? {
        StoreResponse::StoredV1(receipt) => check_receipt(&receipt, &terms, &peer),
        StoreResponse::FailedV1(e) => bail!("transfer failed: {e:?}"),
        other => bail!("unexpected answer to a transfer: {other:?}"),
    }
}

/// Terms with a nonce of their own, so their receipt answers only them.
fn fresh_terms(piece: Cid, size: u64, expires_at: u64) -> Terms {
    let mut nonce = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut nonce);
    Terms {
        piece,
        size,
        expires_at,
        nonce,
    }
}

/// What came of a renewal the node answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Renewal {
    /// `peer` signed a receipt to keep the piece until the new expiry.
    Renewed,
    /// `peer` does not hold the piece.
    NotHeld,
}

/// Asks `peer` to keep `piece` (of `size` bytes) until `expires_at`.
pub(crate) async fn renew(
    net: &Handle,
    peer: PeerId,
    piece: Cid,
    size: u64,
    expires_at: u64,
) -> Result<Renewal> {
    let terms = fresh_terms(piece, size, expires_at);
    match net
        .store(peer, StoreRequest::RenewV1(terms.clone()))
        .await?
    {
        StoreResponse::StoredV1(receipt) => {
            check_receipt(&receipt, &terms, &peer)?;
            Ok(Renewal::Renewed)
        }
        StoreResponse::RejectedV1(RejectReason::NotHeld) => Ok(Renewal::NotHeld),
        StoreResponse::RejectedV1(reason) => bail!("renewal declined: {reason:?}"),
        other => bail!("unexpected answer to a renewal: {other:?}"),
    }
}

/// Whether a request failed because the peer is no storage node.
fn is_unsupported(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<RequestError>(),
        Some(RequestError::Unsupported { .. })
    )
}

fn check_receipt(receipt: &SignedReceipt, terms: &Terms, peer: &PeerId) -> Result<()> {
    receipt
        .verify(&terms.piece, Some(&node_key(peer)?))
        .context("bad receipt")?;
    ensure!(
        receipt.receipt.terms == *terms,
        "receipt is for other terms than offered"
    );
    Ok(())
}

/// Stores the manifest (`bytes`, whose CID is `cid`) on up to `copies`
/// nodes closest to the content `root`; they announce the root. Returns
/// the nodes that hold it (at least one).
async fn store_manifest(
    shared: &Shared,
    root: Cid,
    cid: Cid,
    bytes: Bytes,
    copies: usize,
) -> Result<Vec<PeerId>> {
    ensure!(
        bytes.len() as u64 <= MAX_PIECE_SIZE,
        "the manifest is {} bytes, over the {MAX_PIECE_SIZE}-byte limit of a piece: add content in smaller parts",
        bytes.len()
    );
    let mut candidates: VecDeque<PeerId> = shared.candidates(root).await?.into();
    let mut stored = Vec::new();
    let mut attempts = FuturesUnordered::new();
    let mut last_error = String::from("no storage node found");
    loop {
        while attempts.len() + stored.len() < copies.max(1) {
            let Some(peer) = candidates.pop_front() else {
                break;
            };
            let (net, bytes) = (&shared.net, bytes.clone());
            attempts.push(
                async move { (peer, upload(net, peer, cid, bytes, shared.expires_at).await) },
            );
        }
        match attempts.next().await {
            Some((peer, Ok(()))) => stored.push(peer),
            Some((peer, Err(e))) => {
                if !is_unsupported(&e) {
                    tracing::warn!(%peer, error = %e, "node did not store the manifest");
                }
                last_error = format!("{peer}: {e:#}");
            }
            None => break,
        }
    }
    if stored.is_empty() {
        bail!("no node stored the manifest (last: {last_error})");
    }
    if stored.len() < copies {
        tracing::warn!(
            stored = stored.len(),
            wanted = copies,
            "fewer manifest copies than wanted"
        );
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pack_pass_names_leaves_as_the_first_pass_did_and_notices_a_change() {
        use cairn_protocol::unixfs::{BlockSink as _, ByteCount, NullSink, import_file};
        use cid::Version::V1;
        let data: Vec<u8> = (0..3 * CHUNK_SIZE + 5).map(|i| (i % 251) as u8).collect();
        let mut first = FirstPass::default();
        let root = import_file(&data[..], &mut first).expect("first pass").cid;
        let mut count = ByteCount(0);
        import_file(&data[..], &mut count).expect("count");
        assert_eq!(first.bytes, count.0, "every block's bytes counted");
        assert_eq!(first.leaves.0.len(), 4, "raw leaves only");

        // The same bytes: the same root, with no leaf hashed again (a
        // leaf named differently than its bytes would change the root).
        let again = import_file_with(&data[..], &mut NullSink, &first.leaves, V1).expect("again");
        assert_eq!(again.cid, root);
        let mut lying = KnownLeaves(first.leaves.0.clone());
        lying.0[1].0 = cairn_protocol::block::sha256_cid(RAW, b"other");
        let lied = import_file_with(&data[..], &mut NullSink, &lying, V1).expect("trusted");
        assert_ne!(lied.cid, root, "the known CID was used, not a new hash");

        // A chunk that changed in between fails the import.
        let mut changed = data.clone();
        changed[2 * CHUNK_SIZE + 7] ^= 1;
        let err = import_file_with(&changed[..], &mut NullSink, &first.leaves, V1)
            .expect_err("changed input");
        assert!(err.to_string().contains("changed"), "{err}");

        // Leaves beyond those known are hashed.
        let short = KnownLeaves(first.leaves.0[..2].to_vec());
        let beyond = import_file_with(&data[..], &mut NullSink, &short, V1).expect("hashed");
        assert_eq!(beyond.cid, root);
        let mut sink = FirstPass::default();
        sink.put(&root, b"a dag-pb node").expect("put");
        assert!(sink.leaves.0.is_empty(), "inner nodes are not leaves");
    }

    fn peers(n: usize) -> Vec<PeerId> {
        (0..n).map(|_| PeerId::random()).collect()
    }

    #[test]
    fn every_piece_gets_its_own_node_and_failures_get_new_ones() {
        let ps = peers(5);
        let mut plan = Placement::new(3, ps.clone());
        let now = Instant::now();
        let first: Vec<PeerId> = (0..3).map(|i| plan.start(i, now).expect("room")).collect();
        assert_eq!(first, ps[..3]);
        // Piece 1's node fails: it gets the next node, never a used one.
        assert!(plan.finish(1, false));
        assert_eq!(plan.start(1, now), Some(ps[3]));
        plan.add_candidates(ps.clone());
        assert_eq!(
            plan.candidates,
            [ps[4]],
            "asked nodes are not candidates again"
        );
        assert!(!plan.finish(0, true));
        assert!(!plan.finish(2, true));
        assert!(!plan.done());
        assert!(!plan.finish(1, true));
        assert!(plan.done());
    }

    #[test]
    fn a_slow_piece_is_hedged_once_and_the_first_answer_wins() {
        let ps = peers(4);
        let mut plan = Placement::new(2, ps.clone());
        let t0 = Instant::now();
        plan.start(0, t0);
        plan.start(1, t0);
        let after = Duration::from_secs(10);
        assert!(
            plan.stragglers(t0 + Duration::from_secs(9), after)
                .is_empty()
        );
        assert!(!plan.finish(0, true));
        assert_eq!(plan.stragglers(t0 + after, after), vec![1]);
        assert!(
            plan.stragglers(t0 + after * 3, after).is_empty(),
            "hedged once"
        );
        assert_eq!(plan.start(1, t0 + after), Some(ps[2]));
        // The hedge answers first; the slow attempt's later failure changes nothing.
        assert!(!plan.finish(1, true));
        assert!(!plan.finish(1, false));
        assert!(plan.done());
    }
}
