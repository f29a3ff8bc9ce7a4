//! The piece store: piece bytes in files, an index in redb.
//!
//! Layout of a data directory's store (see docs/PROTOCOL.md §10):
//! - `pieces/<xy>/<cid>`: one file per piece, `xy` the CID's last two characters;
//! - `tmp/<cid>`: a piece being written; `trash/<cid>`: a piece being deleted;
//! - `index.redb`: tables `pieces-0` (CID → [`Entry`]), `expiry-0`
//!   ((expires_at, CID) → ()), `roots-0` ((content root, manifest CID) → ())
//!   `stored-by-0` (peer ID → bytes it stored here) and `meta-0` (`used`,
//!   `count`, `stored-by-built`).
//!
//! A piece is either an erasure-coded shard (BLAKE3 CID) or a manifest
//! (DAG-CBOR, sha2-256 CID) that decodes and validates; a manifest's entry
//! names its content root, and `roots-0` finds manifests by root.
//!
//! Invariants, kept across crashes at any point:
//! - a file in `pieces/` has an index entry, and an entry has its file;
//! - `meta-0.used` is the sum of the sizes in `pieces-0`.
//!
//! A write goes tmp file, fsync of the file and of `tmp/`, index commit
//! (durable), rename into `pieces/`, directory fsync; a delete goes rename
//! into `trash/`, index commit, unlink. So after a crash only `tmp/` and
//! `trash/` can hold strays, and [`Store::open`] settles each by whether the
//! index has its CID: the startup check costs the number of operations in
//! flight, not the number of pieces held.
//!
//! Only a missing file, a wrong size or a wrong hash is damage, and removed;
//! any other read error (EMFILE, ENOMEM, EIO) may pass and deletes nothing.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bytes::Bytes;
use cairn_protocol::block;
use cairn_protocol::manifest::{MAX_PIECE_SIZE, Manifest};
use cairn_protocol::proof::{self, AuditProof};
use cairn_protocol::record::{SignedReceipt, Terms};
use cairn_protocol::wire::{RejectReason, Transfer, TransferError};
use cid::Cid;
use redb::{Database, Durability, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::direct;

const PIECES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pieces-0");
const EXPIRY: TableDefinition<(u64, &[u8]), ()> = TableDefinition::new("expiry-0");
const ROOTS: TableDefinition<(&[u8], &[u8]), ()> = TableDefinition::new("roots-0");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta-0");
/// Bytes held per storing peer (its peer ID's bytes).
const STORED_BY: TableDefinition<&[u8], u64> = TableDefinition::new("stored-by-0");
const USED: &str = "used";
const COUNT: &str = "count";
/// Set once `stored-by-0` covers every piece (stores made before it had none).
const STORED_BY_BUILT: &str = "stored-by-built";
/// redb page cache of the index.
const CACHE: usize = 32 << 20;

/// What the index records of a piece (DAG-CBOR in `pieces-0`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub size: u64,
    /// Unix seconds; the piece is deleted after this.
    pub expires_at: u64,
    /// Unix seconds.
    pub stored_at: u64,
    /// Peer ID (bytes) of the node that stored the piece here.
    #[serde(with = "serde_bytes")]
    pub stored_by: Vec<u8>,
    pub receipt: SignedReceipt,
    /// Unix seconds of the last audit answered, if any.
    pub last_audit: Option<u64>,
    /// For a manifest, the root of the content it describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Cid>,
}

/// What the store accepts.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Bytes of piece data the store may hold.
    pub capacity: u64,
    /// Largest piece accepted. Default [`MAX_PIECE_SIZE`].
    pub max_piece: u64,
    /// Shortest and longest term accepted, in seconds from the offer.
    /// Defaults: one hour and one year.
    pub min_term: u64,
    pub max_term: u64,
    /// How long an accepted offer holds its space. Default 120 s.
    pub reservation_ttl: u64,
    /// Offers held at once; more are refused as busy. Default 256.
    pub max_reservations: usize,
    /// Offers one peer holds at once; more are refused as busy. Default 32.
    pub max_reservations_per_peer: usize,
    /// Bytes one peer may have stored and reserved here together; more is
    /// refused as over capacity. Default half the capacity.
    pub max_bytes_per_peer: u64,
}

impl Limits {
    pub fn new(capacity: u64) -> Self {
        Limits {
            capacity,
            max_piece: MAX_PIECE_SIZE,
            min_term: 3600,
            max_term: 366 * 24 * 3600,
            reservation_ttl: 120,
            max_reservations: 256,
            max_reservations_per_peer: 32,
            max_bytes_per_peer: capacity / 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("piece index: {0}")]
    Db(String),
    #[error(
        "the piece index is in use by another process (is a node running on this data directory?)"
    )]
    Locked,
    #[error("piece {piece} is damaged on disk and was removed")]
    Rotted { piece: Cid },
    #[error("piece index entry for {piece} is malformed: {reason}")]
    BadEntry { piece: Cid, reason: String },
    #[error(transparent)]
    Proof(#[from] proof::ProofError),
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Db(e.to_string())
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> Error {
    let path = path.to_path_buf();
    move |source| Error::Io { op, path, source }
}

/// Room kept on the store's filesystem beyond the pieces promised: the
/// index and temporary files need some.
pub const DISK_MARGIN: u64 = 16 << 20;

/// Bytes an offer may take: what capacity leaves after the pieces held and
/// reserved, and no more than the filesystem (`disk` bytes available) has
/// room for once the reserved pieces are written, less [`DISK_MARGIN`]. A
/// node whose disk fills refuses offers instead of failing transfers.
fn offerable(limits: &Limits, s: &State, disk: Option<u64>) -> u64 {
    let left = limits
        .capacity
        .saturating_sub(s.used)
        .saturating_sub(s.reserved);
    match disk {
        Some(disk) => left.min(disk.saturating_sub(s.reserved).saturating_sub(DISK_MARGIN)),
        None => left,
    }
}

/// What [`Store::open`] found and settled.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Partial or uncommitted writes removed from `tmp/`.
    pub partial_removed: usize,
    /// Committed writes whose rename had not happened, completed.
    pub completed: usize,
    /// Deletes that had not been committed, undone.
    pub restored: usize,
    /// Committed deletes whose unlink had not happened, finished.
    pub deleted: usize,
}

/// The result of a full check ([`Store::check`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckReport {
    pub pieces: u64,
    pub used: u64,
    /// Sum of the sizes of the files in `pieces/` after the check.
    pub bytes_on_disk: u64,
    /// Pieces that could not be read for a reason that may pass (EMFILE,
    /// EIO, ...): kept, and worth checking again.
    pub unreadable: Vec<(Cid, String)>,
    /// Pieces missing or not matching their CID, removed from the index.
    pub rotted: Vec<Cid>,
    /// Files in `pieces/` without an index entry, deleted.
    pub orphans: usize,
}

struct Reservation {
    peer: Vec<u8>,
    terms: Terms,
    deadline: u64,
    /// A transfer is being written; the reservation cannot lapse.
    writing: bool,
}

struct State {
    used: u64,
    count: u64,
    reserved: u64,
    reservations: HashMap<Cid, Reservation>,
}

pub struct Store {
    dir: PathBuf,
    db: Database,
    limits: Limits,
    state: Mutex<State>,
    /// Reads that failed for a reason that may pass, since open.
    unreadable: std::sync::atomic::AtomicU64,
    /// Tests: the OS error every piece read fails with.
    #[cfg(test)]
    read_fault: Mutex<Option<i32>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dir", &self.dir).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store under `dir` and settles what a
    /// crash left in `tmp/` and `trash/`.
    pub fn open(dir: &Path, limits: Limits) -> Result<(Store, Recovery), Error> {
        for sub in ["pieces", "tmp", "trash"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d).map_err(io_err("create", &d))?;
        }
        let path = dir.join("index.redb");
        // redb's default page cache is 1 GiB per database; the index needs little.
        let db = Database::builder()
            .set_cache_size(CACHE)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => Error::Locked,
                e => db_err(e),
            })?;
        let txn = db.begin_write().map_err(db_err)?;
        {
            txn.open_table(PIECES).map_err(db_err)?;
            txn.open_table(EXPIRY).map_err(db_err)?;
            txn.open_table(ROOTS).map_err(db_err)?;
            txn.open_table(META).map_err(db_err)?;
            txn.open_table(STORED_BY).map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        build_stored_by(&db)?;
        let (used, count) = {
            let read = db.begin_read().map_err(db_err)?;
            let meta = read.open_table(META).map_err(db_err)?;
            let get = |k| -> Result<u64, Error> {
                Ok(meta.get(k).map_err(db_err)?.map_or(0, |v| v.value()))
            };
            (get(USED)?, get(COUNT)?)
        };
        let store = Store {
            dir: dir.to_path_buf(),
            db,
            limits,
            state: Mutex::new(State {
                used,
                count,
                reserved: 0,
                reservations: HashMap::new(),
            }),
            unreadable: Default::default(),
            #[cfg(test)]
            read_fault: Mutex::new(None),
        };
        let recovery = store.recover()?;
        Ok((store, recovery))
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes of piece data held.
    pub fn used(&self) -> u64 {
        self.lock().used
    }

    pub fn count(&self) -> u64 {
        self.lock().count
    }

    /// Bytes that can still be offered: capacity less used and reserved,
    /// and no more than the filesystem has room for ([`offerable`]).
    pub fn free(&self) -> u64 {
        let disk = self.disk_available();
        let s = self.lock();
        offerable(&self.limits, &s, disk)
    }

    /// Bytes free on the store's filesystem for this user; `None` when
    /// the filesystem cannot say.
    pub fn disk_available(&self) -> Option<u64> {
        let fs = rustix::fs::statvfs(&self.dir).ok()?;
        Some(fs.f_bavail.saturating_mul(fs.f_frsize))
    }

    /// Piece reads that failed for a reason that may pass (the piece was
    /// kept), since the store was opened.
    pub fn unreadable(&self) -> u64 {
        self.unreadable.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn read_file(&self, path: &Path, size: u64) -> io::Result<Bytes> {
        #[cfg(test)]
        if let Some(errno) = *self.read_fault.lock().unwrap_or_else(|p| p.into_inner()) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        read_limited(path, size)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain numbers behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn piece_path(&self, piece: &Cid) -> PathBuf {
        piece_file(&self.dir, piece)
    }

    fn tmp_path(&self, piece: &Cid) -> PathBuf {
        self.dir.join("tmp").join(piece.to_string())
    }

    fn trash_path(&self, piece: &Cid) -> PathBuf {
        self.dir.join("trash").join(piece.to_string())
    }

    /// The index entry of a piece, if held.
    pub fn entry(&self, piece: &Cid) -> Result<Option<Entry>, Error> {
        let read = self.db.begin_read().map_err(db_err)?;
        let table = read.open_table(PIECES).map_err(db_err)?;
        let Some(v) = table.get(piece.to_bytes().as_slice()).map_err(db_err)? else {
            return Ok(None);
        };
        decode_entry(piece, v.value()).map(Some)
    }

    pub fn contains(&self, piece: &Cid) -> Result<bool, Error> {
        let read = self.db.begin_read().map_err(db_err)?;
        let table = read.open_table(PIECES).map_err(db_err)?;
        Ok(table
            .get(piece.to_bytes().as_slice())
            .map_err(db_err)?
            .is_some())
    }

    /// A held manifest of the content `root`, if any.
    pub fn manifest_for(&self, root: &Cid) -> Result<Option<Cid>, Error> {
        let read = self.db.begin_read().map_err(db_err)?;
        let table = read.open_table(ROOTS).map_err(db_err)?;
        let key = root.to_bytes();
        let mut range = table
            .range::<(&[u8], &[u8])>((key.as_slice(), &[][..])..)
            .map_err(db_err)?;
        let Some(item) = range.next() else {
            return Ok(None);
        };
        let (k, _) = item.map_err(db_err)?;
        let (r, manifest) = k.value();
        if r != key.as_slice() {
            return Ok(None);
        }
        Ok(Cid::try_from(manifest).ok())
    }

    /// Whether this node can answer for `key`: a piece it holds, or a
    /// content root it holds a manifest of.
    pub fn holds(&self, key: &Cid) -> Result<bool, Error> {
        Ok(self.contains(key)? || self.manifest_for(key)?.is_some())
    }

    /// What to announce for a held piece: its CID, and for a manifest also
    /// its content root.
    pub fn announce_keys(&self, piece: &Cid) -> Vec<Cid> {
        let mut keys = vec![*piece];
        if piece.codec() == block::DAG_CBOR
            && let Ok(Some(Entry {
                root: Some(root), ..
            })) = self.entry(piece)
        {
            keys.push(root);
        }
        keys
    }

    /// Up to `limit` held piece CIDs in index order, starting after `after`.
    pub fn pieces_after(&self, after: Option<&Cid>, limit: usize) -> Result<Vec<Cid>, Error> {
        let read = self.db.begin_read().map_err(db_err)?;
        let table = read.open_table(PIECES).map_err(db_err)?;
        let start = after.map(|c| c.to_bytes());
        let iter = match &start {
            Some(s) => table.range::<&[u8]>((
                std::ops::Bound::Excluded(s.as_slice()),
                std::ops::Bound::Unbounded,
            )),
            None => table.range::<&[u8]>(..),
        }
        .map_err(db_err)?;
        let mut out = Vec::with_capacity(limit.min(4096));
        for item in iter.take(limit) {
            let (k, _) = item.map_err(db_err)?;
            // Keys are written from valid CIDs only.
            if let Ok(cid) = Cid::try_from(k.value()) {
                out.push(cid);
            }
        }
        Ok(out)
    }

    /// Answers an offer: reserves the space, or says why not.
    pub fn reserve(&self, peer: &[u8], terms: &Terms, now: u64) -> Result<u64, RejectReason> {
        let l = &self.limits;
        let disk = self.disk_available();
        if terms.size == 0 || terms.size > l.max_piece {
            return Err(RejectReason::TooLarge { max: l.max_piece });
        }
        self.check_term(terms, now)?;
        // A failing index is reported as busy: the offer may be retried.
        match self.contains(&terms.piece) {
            Ok(false) => {}
            Ok(true) => return Err(RejectReason::AlreadyHeld),
            Err(_) => return Err(RejectReason::Busy),
        }
        let mut s = self.lock();
        let lapsed: Vec<Cid> = s
            .reservations
            .iter()
            .filter(|(_, r)| !r.writing && r.deadline < now)
            .map(|(c, _)| *c)
            .collect();
        for c in lapsed {
            if let Some(r) = s.reservations.remove(&c) {
                s.reserved -= r.terms.size;
            }
        }
        let (mine, mine_bytes) = s
            .reservations
            .values()
            .filter(|r| r.peer == peer)
            .fold((0, 0), |(n, b), r| (n + 1, b + r.terms.size));
        if s.reservations.contains_key(&terms.piece)
            || s.reservations.len() >= l.max_reservations
            || mine >= l.max_reservations_per_peer
        {
            return Err(RejectReason::Busy);
        }
        let stored = self.stored_by(peer).map_err(|_| RejectReason::Busy)?;
        let free = offerable(l, &s, disk).min(
            l.max_bytes_per_peer
                .saturating_sub(stored)
                .saturating_sub(mine_bytes),
        );
        if terms.size > free {
            return Err(RejectReason::OverCapacity { free });
        }
        let deadline = now + l.reservation_ttl;
        s.reserved += terms.size;
        s.reservations.insert(
            terms.piece,
            Reservation {
                peer: peer.to_vec(),
                terms: terms.clone(),
                deadline,
                writing: false,
            },
        );
        Ok(deadline)
    }

    /// Bytes of the pieces `peer` stored here.
    pub fn stored_by(&self, peer: &[u8]) -> Result<u64, Error> {
        let read = self.db.begin_read().map_err(db_err)?;
        let table = read.open_table(STORED_BY).map_err(db_err)?;
        Ok(table.get(peer).map_err(db_err)?.map_or(0, |v| v.value()))
    }

    /// Gives up `peer`'s reservation of `piece`, if not being written.
    pub fn release(&self, peer: &[u8], piece: &Cid) {
        let mut s = self.lock();
        if s.reservations
            .get(piece)
            .is_some_and(|r| r.peer == peer && !r.writing)
            && let Some(r) = s.reservations.remove(piece)
        {
            s.reserved -= r.terms.size;
        }
    }

    fn check_term(&self, terms: &Terms, now: u64) -> Result<(), RejectReason> {
        let (min, max) = (now + self.limits.min_term, now + self.limits.max_term);
        if terms.expires_at < min || terms.expires_at > max {
            return Err(RejectReason::ExpiryOutOfRange { min, max });
        }
        Ok(())
    }

    /// Answers a renewal: keeps a held piece until `terms.expires_at` at
    /// least, returning the receipt `sign` makes once the new term is
    /// durable. A later expiry the piece has already stands.
    pub fn renew(
        &self,
        terms: &Terms,
        now: u64,
        sign: impl FnOnce(Terms) -> SignedReceipt,
    ) -> Result<SignedReceipt, RejectReason> {
        self.check_term(terms, now)?;
        let receipt = sign(terms.clone());
        match self.commit_renewal(terms, &receipt) {
            Ok(true) => Ok(receipt),
            Ok(false) => Err(RejectReason::NotHeld),
            // A failing index is reported as busy: the renewal may be retried.
            Err(e) => {
                tracing::error!(piece = %terms.piece, error = %e, "could not renew piece");
                Err(RejectReason::Busy)
            }
        }
    }

    /// Extends a held piece's term in the index; false if the piece is not
    /// held with `terms.size`.
    fn commit_renewal(&self, terms: &Terms, receipt: &SignedReceipt) -> Result<bool, Error> {
        let key = terms.piece.to_bytes();
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut pieces = txn.open_table(PIECES).map_err(db_err)?;
            let entry = match pieces.get(key.as_slice()).map_err(db_err)? {
                Some(v) => decode_entry(&terms.piece, v.value())?,
                None => return Ok(false),
            };
            if entry.size != terms.size {
                return Ok(false);
            }
            if entry.expires_at >= terms.expires_at {
                return Ok(true);
            }
            let mut expiry = txn.open_table(EXPIRY).map_err(db_err)?;
            expiry
                .remove((entry.expires_at, key.as_slice()))
                .map_err(db_err)?;
            expiry
                .insert((terms.expires_at, key.as_slice()), ())
                .map_err(db_err)?;
            let value = serde_ipld_dagcbor::to_vec(&Entry {
                expires_at: terms.expires_at,
                receipt: receipt.clone(),
                ..entry
            })
            .map_err(db_err)?;
            pieces
                .insert(key.as_slice(), value.as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)?;
        Ok(true)
    }

    /// Stores a transfer that matches a reservation of `peer`'s, returning the
    /// receipt `sign` makes once the piece is durably stored. On any error
    /// nothing of the transfer is kept and the reservation is released.
    pub fn store(
        &self,
        peer: &[u8],
        transfer: &Transfer,
        now: u64,
        sign: impl FnOnce(Terms) -> SignedReceipt,
    ) -> Result<SignedReceipt, TransferError> {
        let terms = {
            let mut s = self.lock();
            match s.reservations.get_mut(&transfer.piece) {
                Some(r)
                    if r.peer == peer
                        && r.terms.nonce == transfer.nonce
                        && !r.writing
                        && r.deadline >= now =>
                {
                    r.writing = true;
                    r.terms.clone()
                }
                _ => return Err(TransferError::NoReservation),
            }
        };
        let result = self.write(peer, &terms, &transfer.data, now, sign);
        let mut s = self.lock();
        if let Some(r) = s.reservations.remove(&terms.piece) {
            s.reserved -= r.terms.size;
        }
        if result.is_ok() {
            s.used += terms.size;
            s.count += 1;
        }
        result
    }

    fn write(
        &self,
        peer: &[u8],
        terms: &Terms,
        data: &[u8],
        now: u64,
        sign: impl FnOnce(Terms) -> SignedReceipt,
    ) -> Result<SignedReceipt, TransferError> {
        if data.len() as u64 != terms.size {
            return Err(TransferError::SizeMismatch {
                expected: terms.size,
                got: data.len() as u64,
            });
        }
        if block::verify(&terms.piece, data).is_err() {
            return Err(TransferError::HashMismatch);
        }
        let root = match kind(&terms.piece) {
            Some(Kind::Shard) => None,
            Some(Kind::Manifest) => match Manifest::decode(data) {
                Ok(m) => Some(m.root),
                Err(_) => return Err(TransferError::HashMismatch),
            },
            None => return Err(TransferError::HashMismatch),
        };
        let storage = |e: Error| {
            tracing::error!(piece = %terms.piece, error = %e, "could not store piece");
            TransferError::Storage
        };
        let tmp = self.tmp_path(&terms.piece);
        write_synced(&tmp, data).map_err(storage)?;
        // The commit below promises the file: its name in tmp/ must be
        // durable first, or a power loss leaves a receipted piece without it.
        if let Err(e) = sync_dir(&self.dir.join("tmp")) {
            let _ = fs::remove_file(&tmp);
            return Err(storage(e));
        }
        let receipt = sign(terms.clone());
        let entry = Entry {
            size: terms.size,
            expires_at: terms.expires_at,
            stored_at: now,
            stored_by: peer.to_vec(),
            receipt: receipt.clone(),
            last_audit: None,
            root,
        };
        if let Err(e) = self.commit_insert(&terms.piece, &entry) {
            let _ = fs::remove_file(&tmp);
            return Err(storage(e));
        }
        if let Err(e) = self.place(&terms.piece, &tmp) {
            // The entry is committed but its file is not in place: undo it.
            if let Err(e) = self.remove(&[terms.piece]) {
                tracing::error!(piece = %terms.piece, error = %e, "could not undo a failed store");
            }
            return Err(storage(e));
        }
        Ok(receipt)
    }

    /// Moves a committed piece from `tmp/` into `pieces/` durably.
    fn place(&self, piece: &Cid, tmp: &Path) -> Result<(), Error> {
        let path = self.piece_path(piece);
        let parent = path.parent().unwrap_or(&self.dir);
        if !parent.exists() {
            fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            sync_dir(&self.dir.join("pieces"))?;
        }
        fs::rename(tmp, &path).map_err(io_err("rename", tmp))?;
        // A crash that keeps the old name in tmp/ as well is settled by
        // recovery (the piece is in place: the tmp name is removed).
        sync_dir(parent)
    }

    fn commit_insert(&self, piece: &Cid, entry: &Entry) -> Result<(), Error> {
        let key = piece.to_bytes();
        let value = serde_ipld_dagcbor::to_vec(entry).map_err(db_err)?;
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_quick_repair(true);
        {
            let mut pieces = txn.open_table(PIECES).map_err(db_err)?;
            pieces
                .insert(key.as_slice(), value.as_slice())
                .map_err(db_err)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(db_err)?;
            expiry
                .insert((entry.expires_at, key.as_slice()), ())
                .map_err(db_err)?;
            if let Some(root) = entry.root {
                let mut roots = txn.open_table(ROOTS).map_err(db_err)?;
                roots
                    .insert((root.to_bytes().as_slice(), key.as_slice()), ())
                    .map_err(db_err)?;
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            adjust_totals(&mut meta, entry.size as i64, 1)?;
            let mut by = txn.open_table(STORED_BY).map_err(db_err)?;
            adjust_stored_by(&mut by, &entry.stored_by, entry.size as i64)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Writes index entries without files, in one transaction: for
    /// benchmarks that need a large index. Not for real pieces.
    #[doc(hidden)]
    pub fn insert_index_only(&self, entries: &[(Cid, Entry)]) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        let added: u64 = entries.iter().map(|(_, e)| e.size).sum();
        {
            let mut pieces = txn.open_table(PIECES).map_err(db_err)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(db_err)?;
            for (piece, entry) in entries {
                let key = piece.to_bytes();
                let value = serde_ipld_dagcbor::to_vec(entry).map_err(db_err)?;
                pieces
                    .insert(key.as_slice(), value.as_slice())
                    .map_err(db_err)?;
                expiry
                    .insert((entry.expires_at, key.as_slice()), ())
                    .map_err(db_err)?;
            }
            let mut by = txn.open_table(STORED_BY).map_err(db_err)?;
            for (_, entry) in entries {
                adjust_stored_by(&mut by, &entry.stored_by, entry.size as i64)?;
            }
            let mut meta = txn.open_table(META).map_err(db_err)?;
            adjust_totals(&mut meta, added as i64, entries.len() as i64)?;
        }
        txn.commit().map_err(db_err)?;
        let mut s = self.lock();
        s.used += added;
        s.count += entries.len() as u64;
        Ok(())
    }

    /// Deletes pieces: into `trash/`, one index commit, unlink. Returns the
    /// bytes freed. Pieces not held are skipped.
    pub fn remove(&self, pieces: &[Cid]) -> Result<u64, Error> {
        let mut trashed = Vec::new();
        let mut txn = self.db.begin_write().map_err(db_err)?;
        txn.set_quick_repair(true);
        let (mut freed, mut n) = (0u64, 0u64);
        {
            let mut table = txn.open_table(PIECES).map_err(db_err)?;
            let mut expiry = txn.open_table(EXPIRY).map_err(db_err)?;
            let mut roots = txn.open_table(ROOTS).map_err(db_err)?;
            let mut meta = txn.open_table(META).map_err(db_err)?;
            let mut by = txn.open_table(STORED_BY).map_err(db_err)?;
            for piece in pieces {
                let key = piece.to_bytes();
                let Some(v) = table.remove(key.as_slice()).map_err(db_err)? else {
                    continue;
                };
                let entry = decode_entry(piece, v.value())?;
                drop(v);
                expiry
                    .remove((entry.expires_at, key.as_slice()))
                    .map_err(db_err)?;
                if let Some(root) = entry.root {
                    roots
                        .remove((root.to_bytes().as_slice(), key.as_slice()))
                        .map_err(db_err)?;
                }
                adjust_stored_by(&mut by, &entry.stored_by, -(entry.size as i64))?;
                let (from, to) = (self.piece_path(piece), self.trash_path(piece));
                match fs::rename(&from, &to) {
                    Ok(()) => trashed.push(to),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io_err("rename", &from)(e)),
                }
                freed += entry.size;
                n += 1;
            }
            adjust_totals(&mut meta, -(freed as i64), -(n as i64))?;
        }
        if n == 0 {
            return Ok(0);
        }
        if let Err(e) = txn.commit() {
            // Not committed: put the files back where the index says they are.
            for path in &trashed {
                if let Some(piece) = cid_of(path) {
                    let _ = fs::rename(path, self.piece_path(&piece));
                }
            }
            return Err(db_err(e));
        }
        {
            let mut s = self.lock();
            s.used = s.used.saturating_sub(freed);
            s.count = s.count.saturating_sub(n);
        }
        for path in trashed {
            fs::remove_file(&path).map_err(io_err("delete", &path))?;
        }
        Ok(freed)
    }

    /// Deletes up to `limit` pieces whose term ended before `now`.
    pub fn expire(&self, now: u64, limit: usize) -> Result<Vec<Cid>, Error> {
        let due: Vec<Cid> = {
            let read = self.db.begin_read().map_err(db_err)?;
            let table = read.open_table(EXPIRY).map_err(db_err)?;
            let mut due = Vec::new();
            for item in table
                .range::<(u64, &[u8])>(..(now, &[][..]))
                .map_err(db_err)?
                .take(limit)
            {
                let (k, _) = item.map_err(db_err)?;
                if let Ok(cid) = Cid::try_from(k.value().1) {
                    due.push(cid);
                }
            }
            due
        };
        self.remove(&due)?;
        Ok(due)
    }

    /// The whole piece, verified against its CID. A piece that fails is
    /// removed and reported as [`Error::Rotted`]; one not held (or still
    /// being written) is `None`.
    pub fn read(&self, piece: &Cid) -> Result<Option<Bytes>, Error> {
        if self.lock().reservations.contains_key(piece) {
            return Ok(None);
        }
        let Some(entry) = self.entry(piece)? else {
            return Ok(None);
        };
        let path = self.piece_path(piece);
        // Only a missing file, a wrong size or a wrong hash is damage. Any
        // other error (EMFILE, ENOMEM, EIO, EACCES) may pass: the piece is
        // unavailable for now, and kept.
        let data = match self.read_file(&path, entry.size) {
            Ok(d) => Some(d),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                self.unreadable
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(%piece, path = %path.display(), error = %e, "cannot read piece now; keeping it");
                return Err(io_err("read", &path)(e));
            }
        };
        match data {
            Some(data)
                if data.len() as u64 == entry.size && block::verify(piece, &data).is_ok() =>
            {
                Ok(Some(data))
            }
            _ => {
                tracing::warn!(%piece, path = %path.display(), "piece damaged on disk; removing it");
                self.remove(&[*piece])?;
                Err(Error::Rotted { piece: *piece })
            }
        }
    }

    /// Bytes `offset .. offset + len` of a piece with their proof, and the
    /// piece's size.
    pub fn read_range(
        &self,
        piece: &Cid,
        offset: u64,
        len: u64,
    ) -> Result<Option<(u64, Vec<u8>)>, Error> {
        let Some(data) = self.read(piece)? else {
            return Ok(None);
        };
        let end = offset.saturating_add(len);
        let encoded = proof::encode_range(&data, offset..end)?;
        Ok(Some((data.len() as u64, encoded)))
    }

    /// Answers an audit challenge and records when.
    pub fn prove(
        &self,
        piece: &Cid,
        nonce: &[u8; 32],
        now: u64,
    ) -> Result<Option<AuditProof>, Error> {
        let Some(data) = self.read(piece)? else {
            return Ok(None);
        };
        let proof = proof::prove(&data, nonce)?;
        self.touch_audit(piece, now)?;
        Ok(Some(proof))
    }

    fn touch_audit(&self, piece: &Cid, now: u64) -> Result<(), Error> {
        let key = piece.to_bytes();
        let mut txn = self.db.begin_write().map_err(db_err)?;
        // Losing an audit time in a crash is harmless.
        txn.set_durability(Durability::None).map_err(db_err)?;
        {
            let mut table = txn.open_table(PIECES).map_err(db_err)?;
            let entry = match table.get(key.as_slice()).map_err(db_err)? {
                Some(v) => decode_entry(piece, v.value())?,
                None => return Ok(()),
            };
            let value = serde_ipld_dagcbor::to_vec(&Entry {
                last_audit: Some(now),
                ..entry
            })
            .map_err(db_err)?;
            table
                .insert(key.as_slice(), value.as_slice())
                .map_err(db_err)?;
        }
        txn.commit().map_err(db_err)
    }

    /// Settles `tmp/` and `trash/` against the index (see the module doc).
    fn recover(&self) -> Result<Recovery, Error> {
        let mut r = Recovery::default();
        for path in list_dir(&self.dir.join("tmp"))? {
            let complete = match cid_of(&path) {
                Some(piece) if self.contains(&piece)? && !self.piece_path(&piece).exists() => {
                    // Committed before the crash: the fsynced tmp file is the piece.
                    self.place(&piece, &path).map(|()| true)?
                }
                _ => false,
            };
            if complete {
                r.completed += 1;
            } else {
                fs::remove_file(&path).map_err(io_err("delete", &path))?;
                r.partial_removed += 1;
            }
        }
        for path in list_dir(&self.dir.join("trash"))? {
            match cid_of(&path) {
                Some(piece) if self.contains(&piece)? => {
                    let to = self.piece_path(&piece);
                    fs::rename(&path, &to).map_err(io_err("rename", &path))?;
                    r.restored += 1;
                }
                _ => {
                    fs::remove_file(&path).map_err(io_err("delete", &path))?;
                    r.deleted += 1;
                }
            }
        }
        if r != Recovery::default() {
            sync_dir(&self.dir.join("tmp"))?;
            sync_dir(&self.dir.join("trash"))?;
            tracing::info!(?r, "settled interrupted writes and deletes");
        }
        Ok(r)
    }

    /// Verifies every piece against its CID and every file against the
    /// index, removing what fails: the offline `cairn store check`.
    pub fn check(&self) -> Result<CheckReport, Error> {
        let mut report = CheckReport::default();
        let mut after = None;
        loop {
            let batch = self.pieces_after(after.as_ref(), 1024)?;
            let Some(last) = batch.last() else { break };
            after = Some(*last);
            for piece in batch {
                match self.read(&piece) {
                    Ok(_) => {}
                    Err(Error::Rotted { piece }) => report.rotted.push(piece),
                    Err(e @ Error::Io { .. }) => report.unreadable.push((piece, e.to_string())),
                    Err(e) => return Err(e),
                }
            }
        }
        for shard in list_dir(&self.dir.join("pieces"))? {
            for path in list_dir(&shard)? {
                let held = match cid_of(&path) {
                    Some(piece) => self.contains(&piece)? && self.piece_path(&piece) == path,
                    None => false,
                };
                if held {
                    let len = fs::metadata(&path).map_err(io_err("stat", &path))?.len();
                    report.bytes_on_disk += len;
                } else {
                    tracing::warn!(path = %path.display(), "file without an index entry; deleting it");
                    fs::remove_file(&path).map_err(io_err("delete", &path))?;
                    report.orphans += 1;
                }
            }
        }
        report.pieces = self.count();
        report.used = self.used();
        Ok(report)
    }
}

/// Adds to `meta-0`'s byte and piece totals (pieces ≤ 4 MiB: no overflow of i64).
fn adjust_totals(meta: &mut redb::Table<&str, u64>, bytes: i64, pieces: i64) -> Result<(), Error> {
    for (key, delta) in [(USED, bytes), (COUNT, pieces)] {
        let old = meta.get(key).map_err(db_err)?.map_or(0, |v| v.value());
        meta.insert(key, old.saturating_add_signed(delta))
            .map_err(db_err)?;
    }
    Ok(())
}

/// Adds `bytes` to what `peer` has stored; a peer at zero leaves the table.
fn adjust_stored_by(
    table: &mut redb::Table<&[u8], u64>,
    peer: &[u8],
    bytes: i64,
) -> Result<(), Error> {
    let old = table.get(peer).map_err(db_err)?.map_or(0, |v| v.value());
    match old.saturating_add_signed(bytes) {
        0 => table.remove(peer).map_err(db_err).map(drop),
        new => table.insert(peer, new).map_err(db_err).map(drop),
    }
}

/// Fills `stored-by-0` from `pieces-0` once, for a store made before the
/// table was: one pass over the index, in one transaction.
fn build_stored_by(db: &Database) -> Result<(), Error> {
    let txn = db.begin_write().map_err(db_err)?;
    {
        let mut meta = txn.open_table(META).map_err(db_err)?;
        if meta.get(STORED_BY_BUILT).map_err(db_err)?.is_some() {
            return Ok(());
        }
        let pieces = txn.open_table(PIECES).map_err(db_err)?;
        let mut by = txn.open_table(STORED_BY).map_err(db_err)?;
        for item in pieces.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            let piece = Cid::try_from(k.value()).map_err(db_err)?;
            let entry = decode_entry(&piece, v.value())?;
            adjust_stored_by(&mut by, &entry.stored_by, entry.size as i64)?;
        }
        meta.insert(STORED_BY_BUILT, 1).map_err(db_err)?;
    }
    txn.commit().map_err(db_err)
}

/// The two kinds of piece a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Shard,
    Manifest,
}

fn kind(piece: &Cid) -> Option<Kind> {
    if block::blake3_root(piece).is_some() {
        Some(Kind::Shard)
    } else if piece.codec() == block::DAG_CBOR && piece.hash().code() == block::SHA2_256 {
        Some(Kind::Manifest)
    } else {
        None
    }
}

fn decode_entry(piece: &Cid, bytes: &[u8]) -> Result<Entry, Error> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| Error::BadEntry {
        piece: *piece,
        reason: e.to_string(),
    })
}

/// Where the store in `dir` keeps `piece`: `pieces/<last two characters of
/// the CID>/<CID>` (docs/PROTOCOL.md §10).
pub fn piece_file(dir: &Path, piece: &Cid) -> PathBuf {
    let name = piece.to_string();
    let shard = &name[name.len().saturating_sub(2)..];
    dir.join("pieces").join(shard).join(name)
}

fn cid_of(path: &Path) -> Option<Cid> {
    path.file_name()?.to_str()?.parse().ok()
}

fn list_dir(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        out.push(entry.map_err(io_err("list", dir))?.path());
    }
    Ok(out)
}

/// Writes `path` and syncs it, bypassing the page cache where the file
/// system allows (see [`crate::direct`]).
fn write_synced(path: &Path, data: &[u8]) -> Result<(), Error> {
    direct::write_file(path, data).map_err(io_err("write", path))
}

/// Reads a file of at most `max` bytes (a longer file reads as damaged).
fn read_limited(path: &Path, max: u64) -> io::Result<Bytes> {
    direct::read_file(path, max.min(MAX_PIECE_SIZE))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync", dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    const NOW: u64 = 1_800_000_000;
    const PEER: &[u8] = b"peer-a";

    /// A store whose one peer may fill it (the per-peer share has a test
    /// of its own).
    fn open(dir: &Path, capacity: u64) -> Store {
        let limits = Limits {
            max_bytes_per_peer: u64::MAX,
            ..Limits::new(capacity)
        };
        Store::open(dir, limits).expect("open").0
    }

    fn terms(data: &[u8], nonce: u8) -> Terms {
        Terms {
            piece: block::piece_cid(data),
            size: data.len() as u64,
            expires_at: NOW + 86_400,
            nonce: [nonce; 16],
        }
    }

    fn sign(t: Terms) -> SignedReceipt {
        cairn_protocol::record::Receipt {
            node: [0; 32],
            terms: t,
        }
        .sign(&SigningKey::from_bytes(&[7; 32]))
    }

    fn put(store: &Store, data: &[u8]) -> SignedReceipt {
        let t = terms(data, 1);
        store.reserve(PEER, &t, NOW).expect("reserve");
        let transfer = Transfer {
            piece: t.piece,
            nonce: t.nonce,
            data: data.to_vec().into(),
        };
        store.store(PEER, &transfer, NOW, sign).expect("store")
    }

    #[test]
    fn manifests_are_found_by_root_and_other_bytes_are_refused() {
        use cairn_protocol::manifest::Packer;
        use cairn_protocol::unixfs::import_file;
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1 << 20);
        let mut packer = Packer::new(Default::default(), 1024, |_| Ok(())).expect("layout");
        let root = import_file(&[5u8; 10_000][..], &mut packer)
            .expect("import")
            .cid;
        let bytes = packer.finish(root).expect("finish").encode();
        let cid = block::sha256_cid(block::DAG_CBOR, &bytes);
        let offer = |data: &[u8], piece, nonce| {
            let t = Terms {
                piece,
                size: data.len() as u64,
                expires_at: NOW + 86_400,
                nonce: [nonce; 16],
            };
            store.reserve(PEER, &t, NOW).expect("reserve");
            let transfer = Transfer {
                piece,
                nonce: t.nonce,
                data: data.to_vec().into(),
            };
            store.store(PEER, &transfer, NOW, sign)
        };
        // DAG-CBOR that is no manifest is refused, and nothing is kept.
        let junk = serde_ipld_dagcbor::to_vec(&vec![1u8, 2, 3]).expect("cbor");
        let junk_cid = block::sha256_cid(block::DAG_CBOR, &junk);
        assert_eq!(offer(&junk, junk_cid, 1), Err(TransferError::HashMismatch));
        assert_eq!(store.count(), 0);

        offer(&bytes, cid, 2).expect("a manifest is stored");
        assert_eq!(store.manifest_for(&root).expect("index"), Some(cid));
        assert!(store.holds(&root).expect("index"));
        assert_eq!(store.announce_keys(&cid), vec![cid, root]);
        assert_eq!(store.read(&cid).expect("read"), Some(bytes.into()));
        store.remove(&[cid]).expect("remove");
        assert_eq!(store.manifest_for(&root).expect("index"), None);
        assert!(!store.holds(&root).expect("index"));
    }

    #[test]
    fn stores_reads_and_survives_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = vec![5u8; 10_000];
        let piece = block::piece_cid(&data);
        {
            let store = open(dir.path(), 1 << 20);
            let receipt = put(&store, &data);
            receipt.verify(&piece, None).expect("valid receipt");
            assert_eq!(store.used(), 10_000);
            assert_eq!(store.read(&piece).expect("read"), Some(data.clone().into()));
        }
        let store = open(dir.path(), 1 << 20);
        assert_eq!((store.used(), store.count()), (10_000, 1));
        assert_eq!(store.read(&piece).expect("read"), Some(data.into()));
        assert_eq!(store.pieces_after(None, 10).expect("list"), vec![piece]);
    }

    #[test]
    fn offers_fit_the_disk_as_well_as_the_capacity() {
        let l = Limits::new(1 << 40);
        let state = |used, reserved| State {
            used,
            count: 0,
            reserved,
            reservations: HashMap::new(),
        };
        let gib = 1 << 30;
        // A disk larger than the capacity left: the capacity counts.
        assert_eq!(offerable(&l, &state(0, 0), Some(2 << 40)), 1 << 40);
        assert_eq!(
            offerable(&l, &state(gib, gib), Some(2 << 40)),
            (1 << 40) - 2 * gib
        );
        // A fuller disk: what it has once the promised pieces are
        // written, less the margin; nothing once that is gone.
        assert_eq!(offerable(&l, &state(0, 0), Some(gib)), gib - DISK_MARGIN);
        assert_eq!(
            offerable(&l, &state(0, 100), Some(gib)),
            gib - 100 - DISK_MARGIN
        );
        assert_eq!(offerable(&l, &state(0, 0), Some(DISK_MARGIN)), 0);
        // A filesystem that cannot say leaves the capacity.
        assert_eq!(offerable(&l, &state(5, 0), None), (1 << 40) - 5);
    }

    #[test]
    fn the_disk_is_asked_and_bounds_what_is_offered() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), u64::MAX);
        let disk = store.disk_available().expect("statvfs works on a tempdir");
        assert!(disk > 0);
        assert!(store.free() <= disk.saturating_sub(DISK_MARGIN));
    }

    #[test]
    fn refuses_offers_with_reasons() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1000);
        let mut t = terms(&[1; 600], 1);
        assert_eq!(
            store.reserve(
                PEER,
                &Terms {
                    size: 0,
                    ..t.clone()
                },
                NOW
            ),
            Err(RejectReason::TooLarge {
                max: MAX_PIECE_SIZE
            })
        );
        t.expires_at = NOW + 10;
        assert!(matches!(
            store.reserve(PEER, &t, NOW),
            Err(RejectReason::ExpiryOutOfRange { .. })
        ));
        t.expires_at = NOW + 86_400;
        store.reserve(PEER, &t, NOW).expect("first offer fits");
        assert_eq!(store.reserve(PEER, &t, NOW), Err(RejectReason::Busy));
        // 600 of 1000 bytes are reserved: 400 are free.
        let other = terms(&[2; 500], 1);
        assert_eq!(
            store.reserve(PEER, &other, NOW),
            Err(RejectReason::OverCapacity { free: 400 })
        );
        // Once the first reservation lapses, its space is free again.
        let later = NOW + store.limits().reservation_ttl + 1;
        store.reserve(PEER, &other, later).expect("space freed");
    }

    #[test]
    fn refuses_mismatched_transfers_and_keeps_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1 << 20);
        let data = vec![9u8; 4096];
        let t = terms(&data, 1);
        let transfer = |data: Vec<u8>, nonce| Transfer {
            piece: t.piece,
            nonce: [nonce; 16],
            data: data.into(),
        };
        assert_eq!(
            store.store(PEER, &transfer(data.clone(), 1), NOW, sign),
            Err(TransferError::NoReservation)
        );
        store.reserve(PEER, &t, NOW).expect("reserve");
        assert_eq!(
            store.store(b"peer-b", &transfer(data.clone(), 1), NOW, sign),
            Err(TransferError::NoReservation)
        );
        assert_eq!(
            store.store(PEER, &transfer(data.clone(), 2), NOW, sign),
            Err(TransferError::NoReservation)
        );
        let mut bad = data.clone();
        bad[100] ^= 1;
        assert_eq!(
            store.store(PEER, &transfer(bad, 1), NOW, sign),
            Err(TransferError::HashMismatch)
        );
        assert_eq!((store.used(), store.count(), store.free()), (0, 0, 1 << 20));
        assert!(list_dir(&dir.path().join("tmp")).expect("ls").is_empty());
        assert_eq!(store.read(&t.piece).expect("read"), None);
        // The reservation was released with the failed transfer.
        assert_eq!(
            store.store(PEER, &transfer(data, 1), NOW, sign),
            Err(TransferError::NoReservation)
        );
    }

    #[test]
    fn one_peer_cannot_take_every_reservation_or_the_whole_capacity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut limits = Limits::new(1 << 20);
        limits.max_reservations_per_peer = 2;
        let (store, _) = Store::open(dir.path(), limits).expect("open");
        let offer =
            |peer: &[u8], n: u8, size: usize| store.reserve(peer, &terms(&vec![n; size], n), NOW);
        offer(PEER, 1, 100).expect("first");
        offer(PEER, 2, 100).expect("second");
        assert_eq!(offer(PEER, 3, 100), Err(RejectReason::Busy));
        offer(b"peer-b", 3, 100).expect("another peer's");
        store.release(PEER, &block::piece_cid(&[1; 100]));
        offer(PEER, 4, 100).expect("after a release");

        // Half the capacity (512 KiB) per peer, stored and reserved together.
        let dir = tempfile::tempdir().expect("tempdir");
        let open = |dir: &Path| Store::open(dir, Limits::new(1 << 20)).expect("open").0;
        let store = open(dir.path());
        put(&store, &vec![9u8; 300 << 10]);
        assert_eq!(store.stored_by(PEER).expect("stored by"), 300 << 10);
        let big = terms(&vec![8u8; 300 << 10], 2);
        assert_eq!(
            store.reserve(PEER, &big, NOW),
            Err(RejectReason::OverCapacity { free: 212 << 10 })
        );
        store
            .reserve(b"peer-b", &big, NOW)
            .expect("another peer has room");
        // Reopened, the count stands; removed, it goes.
        drop(store);
        let store = open(dir.path());
        assert_eq!(store.stored_by(PEER).expect("stored by"), 300 << 10);
        store
            .remove(&[block::piece_cid(&vec![9u8; 300 << 10])])
            .expect("remove");
        assert_eq!(store.stored_by(PEER).expect("stored by"), 0);
    }

    #[test]
    fn a_read_error_that_may_pass_deletes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1 << 20);
        let data = vec![4u8; 5000];
        put(&store, &data);
        let piece = block::piece_cid(&data);
        for errno in [libc::EMFILE, libc::EIO, libc::ENOMEM, libc::EACCES] {
            *store.read_fault.lock().expect("lock") = Some(errno);
            let err = store.read(&piece).expect_err("read fails");
            assert!(
                matches!(&err, Error::Io { source, .. } if source.raw_os_error() == Some(errno)),
                "{err}"
            );
            let report = store.check().expect("check");
            assert_eq!(report.rotted, Vec::<Cid>::new());
            assert_eq!(report.unreadable.len(), 1);
            assert!(store.contains(&piece).expect("contains"));
            assert!(store.piece_path(&piece).exists());
        }
        assert_eq!(store.unreadable(), 8);
        *store.read_fault.lock().expect("lock") = None;
        assert_eq!(store.read(&piece).expect("read"), Some(data.into()));
        assert_eq!((store.used(), store.count()), (5000, 1));
    }

    #[test]
    fn a_missing_piece_file_is_damage() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1 << 20);
        let data = vec![5u8; 5000];
        put(&store, &data);
        let piece = block::piece_cid(&data);
        fs::remove_file(store.piece_path(&piece)).expect("remove");
        assert!(matches!(store.read(&piece), Err(Error::Rotted { .. })));
        assert!(!store.contains(&piece).expect("contains"));
        assert_eq!((store.used(), store.count()), (0, 0));
    }

    #[test]
    fn rotted_piece_is_removed_not_served() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1 << 20);
        let data = vec![3u8; 5000];
        put(&store, &data);
        let piece = block::piece_cid(&data);
        let path = store.piece_path(&piece);
        let mut bytes = fs::read(&path).expect("read file");
        bytes[4000] ^= 0x80;
        fs::write(&path, bytes).expect("corrupt");
        assert!(matches!(store.read(&piece), Err(Error::Rotted { .. })));
        assert_eq!(store.read(&piece).expect("read"), None);
        assert!(!store.contains(&piece).expect("contains"));
        assert_eq!((store.used(), store.count()), (0, 0));
        assert!(!path.exists());
    }

    #[test]
    fn expired_pieces_are_deleted_and_free_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1 << 20);
        let data = vec![4u8; 2000];
        put(&store, &data);
        let piece = block::piece_cid(&data);
        assert!(store.expire(NOW + 86_399, 100).expect("expire").is_empty());
        assert_eq!(
            store.expire(NOW + 86_401, 100).expect("expire"),
            vec![piece]
        );
        assert_eq!((store.used(), store.count()), (0, 0));
        assert!(!store.piece_path(&piece).exists());
    }

    #[test]
    fn renewals_extend_terms_durably_and_never_shorten_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = vec![5u8; 2000];
        let piece = block::piece_cid(&data);
        let later = NOW + 3 * 86_400;
        {
            let store = open(dir.path(), 1 << 20);
            put(&store, &data);
            let renewal = Terms {
                expires_at: later,
                ..terms(&data, 2)
            };
            let receipt = store.renew(&renewal, NOW, sign).expect("renew");
            assert_eq!(receipt.receipt.terms, renewal);
            // An earlier expiry is acknowledged and changes nothing.
            let earlier = Terms {
                expires_at: NOW + 7200,
                ..terms(&data, 3)
            };
            store.renew(&earlier, NOW, sign).expect("renew");
            // Unknown pieces, wrong sizes and terms out of range are refused.
            let other = terms(b"never stored", 4);
            assert_eq!(store.renew(&other, NOW, sign), Err(RejectReason::NotHeld));
            let wrong_size = Terms {
                size: 1999,
                ..renewal.clone()
            };
            assert_eq!(
                store.renew(&wrong_size, NOW, sign),
                Err(RejectReason::NotHeld)
            );
            let too_long = Terms {
                expires_at: NOW + 400 * 86_400,
                ..renewal
            };
            assert!(matches!(
                store.renew(&too_long, NOW, sign),
                Err(RejectReason::ExpiryOutOfRange { .. })
            ));
        }
        let store = open(dir.path(), 1 << 20);
        let entry = store.entry(&piece).expect("index").expect("held");
        assert_eq!(entry.expires_at, later);
        assert!(store.expire(later - 1, 100).expect("expire").is_empty());
        assert_eq!(store.expire(later + 1, 100).expect("expire"), vec![piece]);
        assert_eq!((store.used(), store.count()), (0, 0));
    }

    #[test]
    fn recovery_settles_tmp_and_trash() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kept = vec![1u8; 3000];
        let gone = vec![2u8; 3000];
        {
            let store = open(dir.path(), 1 << 20);
            put(&store, &kept);
            put(&store, &gone);
            // Crash after a commit, before the rename:
            let p = block::piece_cid(&kept);
            fs::rename(store.piece_path(&p), store.tmp_path(&p)).expect("mv");
            // Crash after moving to trash, before the delete commit:
            let g = block::piece_cid(&gone);
            fs::rename(store.piece_path(&g), store.trash_path(&g)).expect("mv");
            // A partial write and a stray in trash:
            fs::write(
                dir.path()
                    .join("tmp")
                    .join(block::piece_cid(b"x").to_string()),
                b"x",
            )
            .expect("write");
            fs::write(dir.path().join("trash").join("junk"), b"j").expect("write");
        }
        let (store, r) = Store::open(dir.path(), Limits::new(1 << 20)).expect("open");
        assert_eq!(
            r,
            Recovery {
                partial_removed: 1,
                completed: 1,
                restored: 1,
                deleted: 1
            }
        );
        assert_eq!(
            store.read(&block::piece_cid(&kept)).expect("read"),
            Some(kept.into())
        );
        assert_eq!(
            store.read(&block::piece_cid(&gone)).expect("read"),
            Some(gone.into())
        );
        let report = store.check().expect("check");
        assert_eq!(
            (report.pieces, report.used, report.bytes_on_disk),
            (2, 6000, 6000)
        );
        assert_eq!((report.rotted.len(), report.orphans), (0, 0));
    }

    #[test]
    fn audit_proof_verifies_and_is_recorded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = open(dir.path(), 1 << 20);
        let data: Vec<u8> = (0..70_000u32).map(|i| i as u8).collect();
        put(&store, &data);
        let piece = block::piece_cid(&data);
        let nonce = [8u8; 32];
        let proof = store
            .prove(&piece, &nonce, NOW + 5)
            .expect("prove")
            .expect("held");
        proof::verify(&piece, &nonce, &proof).expect("valid proof");
        let entry = store.entry(&piece).expect("entry").expect("held");
        assert_eq!(entry.last_audit, Some(NOW + 5));
        let (size, encoded) = store
            .read_range(&piece, 1000, 5000)
            .expect("range")
            .expect("held");
        let bytes = proof::decode_range(&piece, size, 1000..6000, &encoded).expect("verifies");
        assert_eq!(bytes, &data[1000..6000]);
    }
}
