//! The pinner: keeps a node's pinned content alive. One task per node runs
//! rounds: it audits every holder whose audit is due ([`upkeep::next_audit`]
//! spaces them at random), rates the holder, and repairs each segment whose
//! healthy pieces fell to its repair threshold by rebuilding the missing
//! pieces from any `k` and placing them on new nodes in good standing.
//! Decisions are [`upkeep`]'s; state is in [`Pins`]; this module does the IO.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use bytes::Bytes;
use cairn_protocol::block;
use cairn_protocol::erasure::{self, Scheme};
use cairn_protocol::proof;
use cairn_protocol::wire::{AuditRequest, AuditResponse, FetchRequest, FetchResponse};
use cid::Cid;
use futures::StreamExt as _;
use futures::stream::{self, FuturesUnordered};
use libp2p::PeerId;
use rand::rngs::StdRng;
use rand::{RngCore as _, SeedableRng as _};
use serde::Serialize;
use tokio::sync::{Notify, oneshot};

use crate::client::{self, Added, Renewal, Unknown, find_manifest};
use crate::node::{Handle, RequestError};
use crate::pins::{Counters, MANIFEST, MAX_PIECES_PER_PIN, PieceRow, Pin, Pins, Slot, Update};
use crate::upkeep::{self, HolderState, Outcome, PieceView, Reputation, SegmentPlan};

/// A holder not connected within this long is unreachable (real time).
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long an audit slot waits for an answer already judged too slow.
const LATE_WAIT: Duration = Duration::from_secs(2);
/// The most a round trip may count for in the audit time limit.
const MAX_RTT: Duration = Duration::from_secs(1);
/// Manifest copies kept track of when pinning content already stored.
const MANIFEST_COPIES: usize = 3;

/// The time an answer to a challenge may take when a request round trip
/// to the holder just took `rtt`.
pub fn audit_limit(settings: &Settings, rtt: Duration) -> Duration {
    settings.audit_allowance + 2 * rtt.min(MAX_RTT)
}

/// How the pinner works.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub upkeep: upkeep::Config,
    /// An audit answered later than two round trips plus this fails as
    /// too slow ([`audit_limit`]): an honest holder reads the piece and
    /// builds the proof in ~9 ms (4 MiB), one that must first fetch `k`
    /// pieces and rebuild takes far longer (docs/PROTOCOL.md §12).
    /// Default 30 ms: the geometric middle of an honest answer (p99 10 ms
    /// for 4 MiB) and the fastest rebuild (71 ms on loopback) measured by
    /// `cargo bench -p cairn-node --bench audit`.
    pub audit_allowance: Duration,
    /// Audits in flight at once. Default 16.
    pub audits_in_flight: usize,
    /// The storage term of pieces placed by repairs and of renewals, which
    /// fall due when a quarter of it is left ([`upkeep::renew_at`]).
    /// Default 30 days.
    pub term: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            upkeep: upkeep::Config::default(),
            audit_allowance: Duration::from_millis(30),
            audits_in_flight: 16,
            term: Duration::from_secs(30 * 86_400),
        }
    }
}

/// A node's pins and the signal that wakes its pinner.
pub(crate) struct Pinning {
    pins: Pins,
    settings: Settings,
    wake: Notify,
}

impl Pinning {
    pub(crate) fn new(pins: Pins, settings: Settings) -> Arc<Pinning> {
        Arc::new(Pinning {
            pins,
            settings,
            wake: Notify::new(),
        })
    }
}

/// The pins of the node behind `net`, while it runs.
fn pinning(net: &Handle) -> Result<Arc<Pinning>> {
    Weak::upgrade(net.pinning()).context("the node has stopped")
}

/// Pins content `added` just placed: its holders are the nodes that took
/// its pieces. False if it was pinned already.
pub fn pin_added(net: &Handle, added: &Added) -> Result<bool> {
    let p = pinning(net)?;
    let settings = &p.settings;
    let now = net.now();
    let mut rng = StdRng::from_entropy();
    let mut rows = Vec::new();
    for (s, pieces) in added.segments.iter().enumerate() {
        for (i, piece) in pieces.iter().enumerate() {
            // A piece with no known holder is rebuilt by the first round.
            let holder = added
                .holders
                .get(s)
                .and_then(|h| h.get(i))
                .copied()
                .flatten();
            rows.push((
                slot(s, i),
                PieceRow {
                    piece: *piece,
                    size: added.piece_lens.get(s).copied().unwrap_or(0),
                    holder,
                    state: HolderState::Healthy,
                    next_audit: upkeep::next_audit(now, &settings.upkeep, &mut rng),
                    last_audit: None,
                    expires_at: added.expires_at,
                },
            ));
        }
    }
    for (i, holder) in added.manifest_holders.iter().enumerate() {
        let row = PieceRow {
            piece: added.manifest,
            size: added.manifest_size,
            holder: Some(*holder),
            state: HolderState::Healthy,
            next_audit: upkeep::next_audit(now, &settings.upkeep, &mut rng),
            last_audit: None,
            expires_at: added.expires_at,
        };
        rows.push(((MANIFEST, i as u32), row));
    }
    let pin = Pin {
        manifest: added.manifest,
        k: added.scheme.k,
        m: added.scheme.m,
        bytes: added.bytes,
        pinned_at: now,
    };
    let new = p.pins.pin(&added.root, &pin, &rows)?;
    p.wake.notify_one();
    Ok(new)
}

/// Pins content already in the network: finds its manifest, then each
/// piece's holder in the DHT; every holder is audited at once. False if
/// it was pinned already.
pub async fn pin_existing(net: &Handle, root: Cid) -> Result<bool> {
    let p = pinning(net)?;
    if p.pins.get(&root)?.is_some() {
        return Ok(false);
    }
    let Some(manifest) = find_manifest(net, root).await? else {
        return Err(Unknown(root).into());
    };
    let total: usize = manifest.segments.iter().map(Vec::len).sum();
    ensure!(
        total <= MAX_PIECES_PER_PIN,
        "{root} has {total} pieces, over the {MAX_PIECES_PER_PIN} one pin may have"
    );
    let now = net.now();
    let mut slots = Vec::with_capacity(total);
    for (s, pieces) in manifest.segments.iter().enumerate() {
        let size = manifest.piece_len(s as u64);
        for (i, piece) in pieces.iter().enumerate() {
            slots.push((slot(s, i), *piece, size));
        }
    }
    // Audited and renewed at once: their terms are not known.
    let row = |piece, size, holder| PieceRow {
        piece,
        size,
        holder,
        state: HolderState::Healthy,
        next_audit: now,
        last_audit: None,
        expires_at: 0,
    };
    let mut rows: Vec<(Slot, PieceRow)> = stream::iter(slots)
        .map(|(slot, piece, size)| {
            let net = net.clone();
            async move {
                let holder = providers(&net, piece).await.into_iter().next();
                (slot, row(piece, size, holder))
            }
        })
        .buffered(16)
        .collect()
        .await;
    let (bytes, cid) = manifest.encode_with_cid();
    let size = bytes.len() as u64;
    for (i, holder) in providers(net, cid)
        .await
        .into_iter()
        .take(MANIFEST_COPIES)
        .enumerate()
    {
        rows.push(((MANIFEST, i as u32), row(cid, size, Some(holder))));
    }
    let pin = Pin {
        manifest: cid,
        k: manifest.scheme.k,
        m: manifest.scheme.m,
        bytes: manifest.stream_len,
        pinned_at: now,
    };
    let new = p.pins.pin(&root, &pin, &rows)?;
    p.wake.notify_one();
    Ok(new)
}

/// The nodes that announce `piece` in the DHT, this one last: a copy of
/// its own is audited and renewed through its store like any other.
async fn providers(net: &Handle, piece: Cid) -> Vec<PeerId> {
    match net.providers(piece).await {
        Ok(found) => {
            let mut found: Vec<PeerId> = found.into_iter().collect();
            found.sort_by_key(|p| *p == net.peer_id());
            found
        }
        Err(e) => {
            tracing::debug!(%piece, error = %e, "provider lookup failed");
            Vec::new()
        }
    }
}

/// Unpins `root`: its pieces are no longer audited or repaired.
pub fn unpin(net: &Handle, root: &Cid) -> Result<bool> {
    Ok(pinning(net)?.pins.unpin(root)?)
}

/// A pin as `cairn pin ls` lists it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PinSummary {
    pub cid: String,
    pub bytes: u64,
    pub scheme: String,
    pub segments: usize,
    /// The fewest healthy pieces of any segment, and its repair threshold.
    pub min_healthy: u32,
    pub threshold: u32,
    pub pinned_at: u64,
}

/// One pin, segment by segment, as `cairn pin status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PinStatus {
    pub pin: PinSummary,
    pub manifest: String,
    /// The holders of the manifest's copies.
    pub manifest_copies: Vec<PieceStatus>,
    pub segments: Vec<SegmentStatus>,
    pub counters: Counters,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SegmentStatus {
    /// Pieces that count towards redundancy now, of `k + m`.
    pub healthy: u32,
    pub pieces: Vec<PieceStatus>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct PieceStatus {
    pub piece: String,
    pub holder: Option<String>,
    /// healthy, failed, unreachable or unknown.
    pub state: String,
    pub last_audit: Option<u64>,
    /// passed, failed, too slow, late (excused) or unreachable.
    pub last_result: Option<String>,
    /// When the holder's term ends, unix seconds; 0 if not known yet.
    pub expires_at: u64,
}

/// Every peer this node has audited, with its record.
pub fn reputations(net: &Handle) -> Result<Vec<(PeerId, Reputation)>> {
    Ok(pinning(net)?.pins.reputations()?)
}

/// Every pin, summarised.
pub fn list(net: &Handle) -> Result<Vec<PinSummary>> {
    let p = pinning(net)?;
    let settings = &p.settings;
    let now = net.now();
    p.pins
        .list()?
        .into_iter()
        .map(|(root, pin)| {
            let rows = p.pins.pieces(&root)?;
            Ok(summary(&root, &pin, &segments(&rows), now, settings))
        })
        .collect()
}

/// One pin in full; `None` if `root` is not pinned.
pub fn status(net: &Handle, root: &Cid) -> Result<Option<PinStatus>> {
    let p = pinning(net)?;
    let settings = &p.settings;
    let Some(pin) = p.pins.get(root)? else {
        return Ok(None);
    };
    let rows = p.pins.pieces(root)?;
    let now = net.now();
    let segs = segments(&rows);
    let segments = segs
        .iter()
        .map(|pieces| SegmentStatus {
            healthy: healthy(pieces, now, settings),
            pieces: pieces.iter().map(|r| piece_status(r)).collect(),
        })
        .collect();
    Ok(Some(PinStatus {
        pin: summary(root, &pin, &segs, now, settings),
        manifest: pin.manifest.to_string(),
        manifest_copies: manifest_copies(&rows)
            .map(|(_, r)| piece_status(r))
            .collect(),
        segments,
        counters: p.pins.counters()?,
    }))
}

fn piece_status(r: &PieceRow) -> PieceStatus {
    PieceStatus {
        piece: r.piece.to_string(),
        holder: r.holder.map(|h| h.to_string()),
        state: match (r.holder, r.state) {
            (None, _) => "unknown",
            (Some(_), HolderState::Healthy) => "healthy",
            (Some(_), HolderState::Failed) => "failed",
            (Some(_), HolderState::Unreachable { .. }) => "unreachable",
        }
        .into(),
        last_audit: r.last_audit.map(|a| a.0),
        last_result: r.last_audit.map(|a| outcome_name(a.1).into()),
        expires_at: r.expires_at,
    }
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Passed { .. } => "passed",
        Outcome::Failed => "failed",
        Outcome::TooSlow => "too slow",
        Outcome::Late => "late (excused)",
        Outcome::Unreachable => "unreachable",
    }
}

fn summary(
    root: &Cid,
    pin: &Pin,
    segs: &[Vec<&PieceRow>],
    now: u64,
    settings: &Settings,
) -> PinSummary {
    let scheme = Scheme { k: pin.k, m: pin.m };
    PinSummary {
        cid: root.to_string(),
        bytes: pin.bytes,
        scheme: scheme.to_string(),
        segments: segs.len(),
        min_healthy: segs
            .iter()
            .map(|s| healthy(s, now, settings))
            .min()
            .unwrap_or(0),
        threshold: upkeep::repair_threshold(scheme, &settings.upkeep),
        pinned_at: pin.pinned_at,
    }
}

/// The rows of the manifest's copies.
fn manifest_copies(rows: &[(Slot, PieceRow)]) -> impl Iterator<Item = &(Slot, PieceRow)> {
    rows.iter().filter(|((s, _), _)| *s == MANIFEST)
}

/// Rows grouped by segment, in order; manifest copies are left out.
fn segments(rows: &[(Slot, PieceRow)]) -> Vec<Vec<&PieceRow>> {
    let mut out: Vec<Vec<&PieceRow>> = Vec::new();
    for ((s, _), row) in rows.iter().filter(|((s, _), _)| *s != MANIFEST) {
        let s = *s as usize;
        if out.len() <= s {
            out.resize_with(s + 1, Vec::new);
        }
        out[s].push(row);
    }
    out
}

fn views(pieces: &[&PieceRow]) -> Vec<Option<PieceView>> {
    pieces
        .iter()
        .map(|r| {
            r.holder.map(|holder| PieceView {
                holder,
                state: r.state,
            })
        })
        .collect()
}

fn healthy(pieces: &[&PieceRow], now: u64, settings: &Settings) -> u32 {
    pieces.iter().filter(|r| counts(r, now, settings)).count() as u32
}

/// Whether a piece counts towards redundancy ([`PieceView::counts`]).
fn counts(r: &PieceRow, now: u64, settings: &Settings) -> bool {
    r.holder.is_some_and(|holder| {
        PieceView {
            holder,
            state: r.state,
        }
        .counts(now, &settings.upkeep)
    })
}

fn slot(segment: usize, index: usize) -> Slot {
    // Manifests bound segments and pieces far below u32::MAX.
    (segment as u32, index as u32)
}

/// Runs the pinner of the node behind `net` until `stop`.
pub(crate) async fn run(net: Handle, pinning: Arc<Pinning>, mut stop: oneshot::Receiver<()>) {
    let settings = &pinning.settings;
    let mut rng = StdRng::from_entropy();
    let clock = net.clock();
    loop {
        let next = tokio::select! {
            _ = &mut stop => return,
            r = round(&net, &pinning.pins, settings, &mut rng) => r,
        };
        tracing::debug!(?next, now = net.now(), "upkeep round done");
        let wait = match next {
            Ok(None) => None,
            Ok(Some(at)) => Some(at.saturating_sub(net.now())),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "upkeep round failed");
                Some(settings.upkeep.offline_grace / 4)
            }
        };
        let sleep = async {
            match wait {
                Some(secs) => tokio::time::sleep(clock.to_real(Duration::from_secs(secs))).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => return,
            () = pinning.wake.notified() => {}
            () = sleep => {}
        }
    }
}

/// One pass over every pin: due audits, then repairs. Returns when the
/// next round is due (`None`: nothing pinned).
async fn round(
    net: &Handle,
    pins: &Pins,
    settings: &Settings,
    rng: &mut StdRng,
) -> Result<Option<u64>> {
    let mut reps: HashMap<PeerId, Reputation> = pins.reputations()?.into_iter().collect();
    let mut next: Option<u64> = None;
    for (root, pin) in pins.list()? {
        let scheme = Scheme { k: pin.k, m: pin.m };
        let mut rows = pins.pieces(&root)?;
        let update = audit_due(net, &root, &mut rows, &mut reps, settings, rng).await;
        pins.apply(&update)?;
        let (update, mut retry) = renew_due(net, &root, &mut rows, &mut reps, settings).await;
        pins.apply(&update)?;

        let now = net.now();
        let mut update = Update::default();
        for (s, pieces) in segments(&rows).iter().enumerate() {
            match upkeep::plan_segment(scheme, &views(pieces), now, &settings.upkeep) {
                SegmentPlan::Healthy { .. } => {}
                SegmentPlan::Repair {
                    sources, rebuild, ..
                } => {
                    let job = Repair {
                        root,
                        segment: s,
                        scheme,
                        rows: pieces.iter().map(|r| (*r).clone()).collect(),
                        sources,
                        rebuild,
                    };
                    match job.run(net, &reps, settings, rng).await {
                        Ok(u) => {
                            update.pieces.extend(u.pieces);
                            update.counters.add(&u.counters);
                        }
                        Err(e) => {
                            retry = true;
                            tracing::warn!(%root, segment = s, error = %format!("{e:#}"), "repair failed; will retry");
                        }
                    }
                }
                SegmentPlan::Unrecoverable { counted } => {
                    retry = true;
                    tracing::warn!(%root, segment = s, counted, k = scheme.k, "segment has too few healthy pieces to rebuild; waiting for holders to return");
                }
            }
        }
        let copies: Vec<(Slot, PieceRow)> = manifest_copies(&rows).cloned().collect();
        if copies.iter().any(|(_, r)| !counts(r, now, settings)) {
            match repair_manifest(net, root, &copies, &reps, settings, rng).await {
                Ok(u) => {
                    update.pieces.extend(u.pieces);
                    update.counters.add(&u.counters);
                }
                Err(e) => {
                    retry = true;
                    tracing::warn!(%root, error = %format!("{e:#}"), "manifest copies not replaced; will retry");
                }
            }
        }
        pins.apply(&update)?;
        let rows = pins.pieces(&root)?;
        let held = || rows.iter().map(|(_, r)| r).filter(|r| r.holder.is_some());
        let audit = held().map(|r| r.next_audit).min();
        let renew = held()
            .filter(|r| r.state != HolderState::Failed)
            .map(|r| upkeep::renew_at(r.expires_at, settings.term.as_secs()))
            .min();
        let retry_at = retry.then(|| now + (settings.upkeep.offline_grace / 4).max(1));
        for t in [audit, renew, retry_at].into_iter().flatten() {
            next = Some(next.map_or(t, |n| n.min(t)));
        }
    }
    Ok(next)
}

/// Audits the holders of `rows` that are due, updating `rows` and `reps`;
/// returns the changes to persist.
async fn audit_due(
    net: &Handle,
    root: &Cid,
    rows: &mut [(Slot, PieceRow)],
    reps: &mut HashMap<PeerId, Reputation>,
    settings: &Settings,
    rng: &mut StdRng,
) -> Update {
    let now = net.now();
    let due: Vec<(usize, PeerId, Cid, [u8; 32])> = rows
        .iter()
        .enumerate()
        .filter(|(_, (_, r))| r.next_audit <= now)
        .filter_map(|(i, (_, r))| {
            let mut nonce = [0; 32];
            rng.fill_bytes(&mut nonce);
            r.holder.map(|h| (i, h, r.piece, nonce))
        })
        .collect();
    let mut outcomes = stream::iter(due)
        .map(|(i, peer, piece, nonce)| {
            let net = net.clone();
            async move {
                let (outcome, bytes) = audit(&net, peer, piece, nonce, settings).await;
                (i, peer, outcome, bytes)
            }
        })
        .buffer_unordered(settings.audits_in_flight.max(1));
    let mut update = Update::default();
    // Late answers are judged by the records as these audits began: a
    // holder that stalls once is late to every audit of it then in
    // flight, and all of those are one stall.
    let mut before: HashMap<PeerId, Reputation> = HashMap::new();
    while let Some((i, peer, outcome, bytes)) = outcomes.next().await {
        let now = net.now();
        let outcome = before
            .entry(peer)
            .or_insert_with(|| reps.get(&peer).copied().unwrap_or_default())
            .judge(now, outcome, &settings.upkeep);
        let rep = reps.entry(peer).or_default();
        *rep = rep.record(now, outcome, &settings.upkeep);
        update.peers.push((peer, *rep));
        let row = &mut rows[i].1;
        row.state = match (outcome, row.state) {
            (Outcome::Passed { .. } | Outcome::Late, _) => HolderState::Healthy,
            (Outcome::Failed | Outcome::TooSlow, _) => HolderState::Failed,
            (Outcome::Unreachable, HolderState::Unreachable { since }) => {
                HolderState::Unreachable { since }
            }
            (Outcome::Unreachable, _) => HolderState::Unreachable { since: now },
        };
        row.last_audit = Some((now, outcome));
        row.next_audit = match outcome {
            // Checked again well within the grace: a holder still down
            // when it ends no longer counts, and its pieces are repaired.
            Outcome::Unreachable => now + (settings.upkeep.offline_grace / 4).max(1),
            Outcome::Late => upkeep::recheck_at(now, &settings.upkeep, rng),
            _ => upkeep::next_audit(now, &settings.upkeep, rng),
        };
        update.pieces.push((*root, rows[i].0, rows[i].1.clone()));
        let c = &mut update.counters;
        c.audits += 1;
        c.audit_bytes += bytes;
        match outcome {
            Outcome::Failed | Outcome::TooSlow => {
                c.audits_failed += 1;
                tracing::warn!(%peer, piece = %rows[i].1.piece, ?outcome, "holder failed an audit");
            }
            Outcome::Late => {
                tracing::info!(%peer, piece = %rows[i].1.piece, "holder answered an audit late; excused once, audited again soon");
            }
            Outcome::Passed { .. } | Outcome::Unreachable => {}
        }
    }
    update
}

/// Renews the terms of the pieces of `rows` that are due
/// ([`upkeep::renew_at`]) for another [`Settings::term`], updating `rows`
/// and `reps`; returns the changes to persist and whether a renewal failed
/// and must be retried.
async fn renew_due(
    net: &Handle,
    root: &Cid,
    rows: &mut [(Slot, PieceRow)],
    reps: &mut HashMap<PeerId, Reputation>,
    settings: &Settings,
) -> (Update, bool) {
    let now = net.now();
    let term = settings.term.as_secs();
    let expires_at = now + term;
    let due: Vec<(usize, PeerId, Cid, u64)> = rows
        .iter()
        .enumerate()
        .filter(|(_, (_, r))| {
            r.state != HolderState::Failed && upkeep::renew_at(r.expires_at, term) <= now
        })
        .filter_map(|(i, (_, r))| r.holder.map(|h| (i, h, r.piece, r.size)))
        .collect();
    let mut answers = stream::iter(due)
        .map(|(i, peer, piece, size)| {
            let net = net.clone();
            async move {
                let renewal = client::renew(&net, peer, piece, size, expires_at);
                let answer = match tokio::time::timeout(CONNECT_LIMIT, renewal).await {
                    Ok(a) => a,
                    Err(_) => Err(anyhow::anyhow!("no answer within {CONNECT_LIMIT:?}")),
                };
                (i, peer, answer)
            }
        })
        .buffer_unordered(settings.audits_in_flight.max(1));
    let (mut update, mut retry) = (Update::default(), false);
    while let Some((i, peer, answer)) = answers.next().await {
        let now = net.now();
        let (slot, row) = &mut rows[i];
        match answer {
            Ok(Renewal::Renewed) => {
                row.expires_at = expires_at;
                update.counters.renewals += 1;
            }
            Ok(Renewal::NotHeld) => {
                row.state = HolderState::Failed;
                // Lost within its term: the holder's fault. A term that
                // lapsed, or was never known, is not.
                if row.expires_at > now {
                    tracing::warn!(%peer, piece = %row.piece, "holder lost a piece within its term");
                    let rep = reps.entry(peer).or_default();
                    *rep = rep.record(now, Outcome::Failed, &settings.upkeep);
                    update.peers.push((peer, *rep));
                }
            }
            Err(e) => {
                retry = true;
                tracing::debug!(%peer, piece = %row.piece, error = %format!("{e:#}"), "renewal failed; will retry");
            }
        }
        update.pieces.push((*root, *slot, row.clone()));
    }
    (update, retry)
}

/// Challenges `peer` for `piece` and judges the answer; also returns the
/// answer's bytes. The time limit runs from the challenge on an open
/// connection, so dialing does not count against the holder, and allows
/// two round trips, timed just before with a request that costs the holder
/// one index lookup (a manifest for the piece's CID, which has none).
async fn audit(
    net: &Handle,
    peer: PeerId,
    piece: Cid,
    nonce: [u8; 32],
    settings: &Settings,
) -> (Outcome, u64) {
    match tokio::time::timeout(CONNECT_LIMIT, net.connect(peer)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => return (Outcome::Unreachable, 0),
    }
    if block::blake3_root(&piece).is_none() {
        return check_copy(net, peer, piece).await;
    }
    let start = Instant::now();
    let probe = net.fetch(peer, FetchRequest::ManifestV1 { root: piece });
    match tokio::time::timeout(CONNECT_LIMIT, probe).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) | Err(_) => return (Outcome::Unreachable, 0),
    }
    let limit = audit_limit(settings, start.elapsed());
    let start = Instant::now();
    let mut request = Box::pin(net.audit(peer, AuditRequest::ChallengeV1 { piece, nonce }));
    let answer = tokio::time::timeout(limit, &mut request).await;
    let ms = start.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
    match answer {
        Err(_) => {
            // Too slow whatever comes. The audit's slot stays taken until
            // the answer is in (at most LATE_WAIT), so that the next audit
            // is not timed while the late holder still works: where holders
            // share hardware (the simulator), a holder rebuilding a piece
            // slows the next one audited.
            let _ = tokio::time::timeout(LATE_WAIT, request).await;
            (Outcome::TooSlow, 0)
        }
        Ok(Ok(AuditResponse::ProofV1(p))) => {
            let bytes = p.encoded.len() as u64;
            match proof::verify(&piece, &nonce, &p) {
                Ok(()) => (Outcome::Passed { answer_ms: ms }, bytes),
                Err(e) => {
                    tracing::debug!(%peer, %piece, error = %e, "audit proof does not verify");
                    (Outcome::Failed, bytes)
                }
            }
        }
        Ok(Ok(AuditResponse::NotFoundV1)) | Ok(Err(RequestError::Unsupported { .. })) => {
            (Outcome::Failed, 0)
        }
        Ok(Err(_)) => (Outcome::Unreachable, 0),
    }
}

/// Audits a manifest copy, whose CID (sha2-256) no proof can be checked
/// against, by fetching it whole: manifests are small, a few KiB per GiB
/// of content.
async fn check_copy(net: &Handle, peer: PeerId, piece: Cid) -> (Outcome, u64) {
    let start = Instant::now();
    let answer = tokio::time::timeout(
        CONNECT_LIMIT,
        net.fetch(peer, FetchRequest::PieceV1 { piece }),
    )
    .await;
    let ms = start.elapsed().as_millis().min(u128::from(u32::MAX)) as u32;
    match answer {
        Err(_) => (Outcome::TooSlow, 0),
        Ok(Ok(FetchResponse::PieceV1 { data })) => match block::verify(&piece, &data) {
            Ok(()) => (Outcome::Passed { answer_ms: ms }, data.len() as u64),
            Err(_) => (Outcome::Failed, data.len() as u64),
        },
        Ok(Ok(_)) | Ok(Err(RequestError::Unsupported { .. })) => (Outcome::Failed, 0),
        Ok(Err(_)) => (Outcome::Unreachable, 0),
    }
}

/// Rebuilding the missing pieces of one segment.
struct Repair {
    root: Cid,
    segment: usize,
    scheme: Scheme,
    /// The segment's `k + m` rows, in index order.
    rows: Vec<PieceRow>,
    /// Indices to fetch first (`k` that count); `rebuild`: to replace.
    sources: Vec<usize>,
    rebuild: Vec<usize>,
}

impl Repair {
    async fn run(
        self,
        net: &Handle,
        reps: &HashMap<PeerId, Reputation>,
        settings: &Settings,
        rng: &mut StdRng,
    ) -> Result<Update> {
        let k = self.scheme.k as usize;
        ensure!(
            self.rows.len() == self.scheme.total(),
            "segment has {} pieces, not {}",
            self.rows.len(),
            self.scheme.total()
        );
        let mut counters = Counters::default();
        // Fetch k pieces: the planned sources, then any other piece whose
        // holder is not known to have failed, should a source fail.
        let mut shards: Vec<Option<Vec<u8>>> = vec![None; self.rows.len()];
        let mut queue: Vec<usize> = self.sources.clone();
        queue.extend((0..self.rows.len()).filter(|i| {
            !self.sources.contains(i)
                && self.rows[*i].holder.is_some()
                && self.rows[*i].state != HolderState::Failed
        }));
        let mut queue = queue.into_iter();
        let mut fetching = FuturesUnordered::new();
        let mut have = 0;
        while have < k {
            while have + fetching.len() < k {
                let Some(i) = queue.next() else { break };
                let row = &self.rows[i];
                let Some(holder) = row.holder else { continue };
                fetching.push(fetch_piece(net, holder, row.piece, i));
            }
            let Some((i, got)) = fetching.next().await else {
                bail!("only {have} of the {k} pieces needed could be fetched");
            };
            match got {
                Ok(data) => {
                    counters.repair_bytes += data.len() as u64;
                    shards[i] = Some(data);
                    have += 1;
                }
                Err(e) => {
                    tracing::debug!(piece = %self.rows[i].piece, error = %format!("{e:#}"), "repair source failed")
                }
            }
        }
        drop(fetching);
        let scheme = self.scheme;
        let mut shards = tokio::task::spawn_blocking(move || {
            erasure::reconstruct(scheme, &mut shards, true).map(|()| shards)
        })
        .await
        .context("rebuild task failed")??;
        let mut rebuilt = Vec::new();
        for &i in &self.rebuild {
            let data = shards[i].take().context("rebuild left a piece out")?;
            ensure!(
                block::piece_cid(&data) == self.rows[i].piece,
                "rebuilt piece {i} does not match its CID: the segment's pieces disagree"
            );
            rebuilt.push((i, Bytes::from(data)));
        }
        drop(shards);

        // New holders hold no other piece of the segment.
        let exclude: HashSet<PeerId> = self.rows.iter().filter_map(|r| r.holder).collect();
        let near = self.rows[self.rebuild[0]].piece;
        let pieces = rebuilt
            .into_iter()
            .map(|(i, data)| (slot(self.segment, i), self.rows[i].piece, data))
            .collect();
        let (placed, sent) = place(net, near, exclude, pieces, reps, settings, rng).await?;
        counters.repair_bytes += sent;
        counters.pieces_rebuilt += placed.len() as u64;
        counters.repairs += 1;
        tracing::info!(root = %self.root, segment = self.segment, rebuilt = placed.len(), "segment repaired");
        Ok(Update {
            pieces: placed.into_iter().map(|(s, r)| (self.root, s, r)).collect(),
            counters,
            ..Default::default()
        })
    }
}

/// Replaces the manifest copies of `root` that no longer count, with the
/// bytes of one that does.
async fn repair_manifest(
    net: &Handle,
    root: Cid,
    copies: &[(Slot, PieceRow)],
    reps: &HashMap<PeerId, Reputation>,
    settings: &Settings,
    rng: &mut StdRng,
) -> Result<Update> {
    let now = net.now();
    let (counting, lost): (Vec<_>, Vec<_>) =
        copies.iter().partition(|(_, r)| counts(r, now, settings));
    let mut counters = Counters::default();
    let mut data = None;
    for (_, r) in &counting {
        let Some(holder) = r.holder else { continue };
        match fetch_piece(net, holder, r.piece, 0).await.1 {
            Ok(d) => {
                counters.repair_bytes += d.len() as u64;
                data = Some(Bytes::from(d));
                break;
            }
            Err(e) => {
                tracing::debug!(%holder, error = %format!("{e:#}"), "manifest copy not fetched")
            }
        }
    }
    let data = data.context("no copy of the manifest could be fetched")?;
    let exclude: HashSet<PeerId> = copies.iter().filter_map(|(_, r)| r.holder).collect();
    let pieces = lost
        .iter()
        .map(|(slot, r)| (*slot, r.piece, data.clone()))
        .collect();
    let (placed, sent) = place(net, root, exclude, pieces, reps, settings, rng).await?;
    counters.repair_bytes += sent;
    counters.manifest_copies += placed.len() as u64;
    tracing::info!(%root, copies = placed.len(), "manifest copies replaced");
    Ok(Update {
        pieces: placed.into_iter().map(|(s, r)| (root, s, r)).collect(),
        counters,
        ..Default::default()
    })
}

/// Stores each of `pieces` on its own new holder: a node near `near` in
/// the keyspace, in good standing, not in `exclude` and not this node.
/// Returns their rows and the bytes sent.
async fn place(
    net: &Handle,
    near: Cid,
    mut exclude: HashSet<PeerId>,
    pieces: Vec<(Slot, Cid, Bytes)>,
    reps: &HashMap<PeerId, Reputation>,
    settings: &Settings,
    rng: &mut StdRng,
) -> Result<(Vec<(Slot, PieceRow)>, u64)> {
    let candidates: Vec<(PeerId, Reputation)> = net
        .closest_peers(near)
        .await
        .context("cannot find storage nodes in the DHT")?
        .into_iter()
        .map(|p| (p, reps.get(&p).copied().unwrap_or_default()))
        .collect();
    exclude.insert(net.peer_id());
    let now = net.now();
    let mut order = upkeep::choose_holders(
        &candidates,
        &exclude,
        candidates.len(),
        now,
        &settings.upkeep,
        rng,
    )
    .into_iter();
    let expires_at = now + settings.term.as_secs();
    let (mut placed, mut sent) = (Vec::new(), 0);
    for (slot, piece, data) in pieces {
        let holder = loop {
            let Some(peer) = order.next() else {
                bail!("no node in good standing left to take piece {piece}");
            };
            sent += data.len() as u64;
            match client::upload(net, peer, piece, data.clone(), expires_at).await {
                Ok(()) => break peer,
                Err(e) => {
                    tracing::debug!(%peer, %piece, error = %format!("{e:#}"), "node did not take a piece")
                }
            }
        };
        let row = PieceRow {
            piece,
            size: data.len() as u64,
            holder: Some(holder),
            state: HolderState::Healthy,
            next_audit: upkeep::next_audit(now, &settings.upkeep, rng),
            last_audit: None,
            expires_at,
        };
        placed.push((slot, row));
    }
    Ok((placed, sent))
}

/// Piece `piece` from `holder`, checked against its CID.
async fn fetch_piece(
    net: &Handle,
    holder: PeerId,
    piece: Cid,
    i: usize,
) -> (usize, Result<Vec<u8>>) {
    let got = async {
        match net.fetch(holder, FetchRequest::PieceV1 { piece }).await? {
            FetchResponse::PieceV1 { data } => {
                block::verify(&piece, &data).context("holder sent bytes that do not match")?;
                Ok(Vec::from(data))
            }
            other => bail!("{holder} answered {other:?}"),
        }
    }
    .await;
    (i, got)
}
