//! What a node keeps alive: its pins, the holder of every pinned piece with
//! that holder's audit state, the reputation of every audited peer, and
//! upkeep counters. One redb database, `<data dir>/pins.redb`; values are
//! DAG-CBOR (docs/PROTOCOL.md §12). The pinner ([`crate::pinner`]) is its
//! only writer besides pin and unpin.

use std::path::Path;

use cid::Cid;
use libp2p::PeerId;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::upkeep::{HolderState, Outcome, Reputation};

/// Root CID → [`Pin`].
const PINS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pins-0");
/// (root CID, segment, piece index) → [`PieceRow`].
const PIECES: TableDefinition<(&[u8], u32, u32), &[u8]> = TableDefinition::new("pinned-pieces-0");
/// Peer ID → [`Reputation`].
const PEERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("peers-0");
/// [`COUNTERS_KEY`] → [`Counters`].
const COUNTERS: TableDefinition<&str, &[u8]> = TableDefinition::new("counters-0");
const COUNTERS_KEY: &str = "upkeep";

/// Most pieces one pin may have: bounds what a `pin add` writes and what
/// one upkeep round reads (a 4 TiB file at 6+3 with 4 MiB pieces).
pub const MAX_PIECES_PER_PIN: usize = 1 << 21;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pin database: {0}")]
    Db(String),
    #[error("pin database holds an invalid record: {0}")]
    Decode(String),
}

fn db_err(e: impl std::fmt::Display) -> Error {
    Error::Db(e.to_string())
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, Error> {
    serde_ipld_dagcbor::from_slice(bytes).map_err(|e| Error::Decode(e.to_string()))
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_ipld_dagcbor::to_vec(value).map_err(db_err)
}

/// A pinned content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pin {
    pub manifest: Cid,
    pub k: u32,
    pub m: u32,
    /// Bytes of the content's blocks.
    pub bytes: u64,
    pub pinned_at: u64,
}

/// One pinned piece and what its pinner knows of its holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PieceRow {
    pub piece: Cid,
    /// Bytes of the piece.
    pub size: u64,
    /// The node holding it; `None` when none is known (lost, not yet placed).
    #[serde(with = "peer_bytes")]
    pub holder: Option<PeerId>,
    pub state: HolderState,
    /// When the holder is audited next, unix seconds.
    pub next_audit: u64,
    /// The last audit of this holder for this piece: when, and its outcome.
    pub last_audit: Option<(u64, Outcome)>,
    /// When the holder's term for the piece ends, unix seconds, as far as
    /// this node knows; 0 if unknown (renewed at once).
    pub expires_at: u64,
}

mod peer_bytes {
    use libp2p::PeerId;
    use serde::{Deserialize as _, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(p: &Option<PeerId>, s: S) -> Result<S::Ok, S::Error> {
        match p {
            Some(p) => s.serialize_some(&serde_bytes::Bytes::new(&p.to_bytes())),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PeerId>, D::Error> {
        Option::<serde_bytes::ByteBuf>::deserialize(d)?
            .map(|b| PeerId::from_bytes(&b).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// Upkeep counters, as `cairn pin status` and the API show them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub audits: u64,
    pub audits_failed: u64,
    /// Bytes of audit challenges' answers received.
    pub audit_bytes: u64,
    pub repairs: u64,
    pub pieces_rebuilt: u64,
    /// Bytes fetched and uploaded by repairs.
    pub repair_bytes: u64,
    /// Terms renewed.
    pub renewals: u64,
    /// Manifest copies placed to replace lost ones.
    pub manifest_copies: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.audits += o.audits;
        self.audits_failed += o.audits_failed;
        self.audit_bytes += o.audit_bytes;
        self.repairs += o.repairs;
        self.pieces_rebuilt += o.pieces_rebuilt;
        self.repair_bytes += o.repair_bytes;
        self.renewals += o.renewals;
        self.manifest_copies += o.manifest_copies;
    }
}

/// The segment number under which a pin's manifest copies are kept, one
/// row per copy.
pub const MANIFEST: u32 = u32::MAX;

/// The key of a pinned piece: (segment, index in the segment), or
/// ([`MANIFEST`], copy).
pub type Slot = (u32, u32);

/// Changes from one upkeep step, written in one transaction.
#[derive(Debug, Default)]
pub struct Update {
    pub pieces: Vec<(Cid, Slot, PieceRow)>,
    pub peers: Vec<(PeerId, Reputation)>,
    pub counters: Counters,
}

pub struct Pins {
    db: Database,
}

impl Pins {
    pub fn open(path: &Path) -> Result<Pins, Error> {
        let db = Database::create(path).map_err(db_err)?;
        let txn = db.begin_write().map_err(db_err)?;
        txn.open_table(PINS).map_err(db_err)?;
        txn.open_table(PIECES).map_err(db_err)?;
        txn.open_table(PEERS).map_err(db_err)?;
        txn.open_table(COUNTERS).map_err(db_err)?;
        txn.commit().map_err(db_err)?;
        Ok(Pins { db })
    }

    /// Pins `root` with its pieces, unless it is pinned already (then
    /// nothing changes and this returns false).
    pub fn pin(&self, root: &Cid, pin: &Pin, pieces: &[(Slot, PieceRow)]) -> Result<bool, Error> {
        let key = root.to_bytes();
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let mut pins = txn.open_table(PINS).map_err(db_err)?;
            if pins.get(key.as_slice()).map_err(db_err)?.is_some() {
                return Ok(false);
            }
            pins.insert(key.as_slice(), encode(pin)?.as_slice())
                .map_err(db_err)?;
            let mut table = txn.open_table(PIECES).map_err(db_err)?;
            for ((segment, index), row) in pieces {
                table
                    .insert((key.as_slice(), *segment, *index), encode(row)?.as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)?;
        Ok(true)
    }

    /// Unpins `root`; false if it was not pinned. Its pieces are no longer
    /// audited, repaired or renewed, so they expire on their holders.
    pub fn unpin(&self, root: &Cid) -> Result<bool, Error> {
        let key = root.to_bytes();
        let txn = self.db.begin_write().map_err(db_err)?;
        let was = {
            let mut pins = txn.open_table(PINS).map_err(db_err)?;
            let was = pins.remove(key.as_slice()).map_err(db_err)?.is_some();
            let mut table = txn.open_table(PIECES).map_err(db_err)?;
            table
                .retain_in(
                    (key.as_slice(), 0, 0)..=(key.as_slice(), u32::MAX, u32::MAX),
                    |_, _| false,
                )
                .map_err(db_err)?;
            was
        };
        txn.commit().map_err(db_err)?;
        Ok(was)
    }

    /// The value at `key` of a table keyed by bytes.
    fn one<T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&[u8], &[u8]>,
        key: &[u8],
    ) -> Result<Option<T>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(table).map_err(db_err)?;
        table
            .get(key)
            .map_err(db_err)?
            .map(|v| decode(v.value()))
            .transpose()
    }

    /// Every entry of a table keyed by bytes, in key order.
    fn all<K, T: for<'de> Deserialize<'de>>(
        &self,
        table: TableDefinition<&[u8], &[u8]>,
        parse: impl Fn(&[u8]) -> Result<K, String>,
    ) -> Result<Vec<(K, T)>, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(table).map_err(db_err)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(db_err)? {
            let (k, v) = item.map_err(db_err)?;
            out.push((parse(k.value()).map_err(Error::Decode)?, decode(v.value())?));
        }
        Ok(out)
    }

    pub fn get(&self, root: &Cid) -> Result<Option<Pin>, Error> {
        self.one(PINS, &root.to_bytes())
    }

    /// Every pin, in root CID byte order.
    pub fn list(&self) -> Result<Vec<(Cid, Pin)>, Error> {
        self.all(PINS, |k| Cid::try_from(k).map_err(|e| e.to_string()))
    }

    /// The pieces of pin `root`, in (segment, index) order.
    pub fn pieces(&self, root: &Cid) -> Result<Vec<(Slot, PieceRow)>, Error> {
        let key = root.to_bytes();
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(PIECES).map_err(db_err)?;
        let mut out = Vec::new();
        for item in table
            .range((key.as_slice(), 0, 0)..=(key.as_slice(), u32::MAX, u32::MAX))
            .map_err(db_err)?
        {
            let (k, v) = item.map_err(db_err)?;
            let (_, segment, index) = k.value();
            out.push(((segment, index), decode(v.value())?));
        }
        Ok(out)
    }

    pub fn reputation(&self, peer: &PeerId) -> Result<Option<Reputation>, Error> {
        self.one(PEERS, &peer.to_bytes())
    }

    /// Every rated peer.
    pub fn reputations(&self) -> Result<Vec<(PeerId, Reputation)>, Error> {
        self.all(PEERS, |k| PeerId::from_bytes(k).map_err(|e| e.to_string()))
    }

    pub fn counters(&self) -> Result<Counters, Error> {
        let txn = self.db.begin_read().map_err(db_err)?;
        let table = txn.open_table(COUNTERS).map_err(db_err)?;
        table
            .get(COUNTERS_KEY)
            .map_err(db_err)?
            .map_or(Ok(Counters::default()), |v| decode(v.value()))
    }

    /// Applies `update` at once. Rows of a pin removed meanwhile are
    /// dropped: an unpin wins over an upkeep step that raced it.
    pub fn apply(&self, update: &Update) -> Result<(), Error> {
        let txn = self.db.begin_write().map_err(db_err)?;
        {
            let pins = txn.open_table(PINS).map_err(db_err)?;
            let mut table = txn.open_table(PIECES).map_err(db_err)?;
            for (root, (segment, index), row) in &update.pieces {
                let key = root.to_bytes();
                if pins.get(key.as_slice()).map_err(db_err)?.is_some() {
                    table
                        .insert((key.as_slice(), *segment, *index), encode(row)?.as_slice())
                        .map_err(db_err)?;
                }
            }
            let mut peers = txn.open_table(PEERS).map_err(db_err)?;
            for (peer, rep) in &update.peers {
                peers
                    .insert(peer.to_bytes().as_slice(), encode(rep)?.as_slice())
                    .map_err(db_err)?;
            }
            let mut counters = txn.open_table(COUNTERS).map_err(db_err)?;
            if update.counters != Counters::default() {
                let mut total: Counters = match counters.get(COUNTERS_KEY).map_err(db_err)? {
                    Some(v) => decode(v.value())?,
                    None => Counters::default(),
                };
                total.add(&update.counters);
                counters
                    .insert(COUNTERS_KEY, encode(&total)?.as_slice())
                    .map_err(db_err)?;
            }
        }
        txn.commit().map_err(db_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::block::piece_cid;

    fn row(i: u8, holder: Option<PeerId>) -> PieceRow {
        PieceRow {
            piece: piece_cid(&[i]),
            size: 1,
            holder,
            state: HolderState::Healthy,
            next_audit: 100 + u64::from(i),
            last_audit: None,
            expires_at: 5000,
        }
    }

    #[test]
    fn reputations_written_before_late_answers_were_kept_decode() {
        #[derive(Serialize)]
        struct Before {
            updated: u64,
            passed: f64,
            failed: f64,
            unreachable: f64,
            answer_ms: f64,
        }
        let before = Before {
            updated: 5,
            passed: 2.0,
            failed: 1.0,
            unreachable: 0.5,
            answer_ms: 9.0,
        };
        let rep: Reputation = decode(&encode(&before).expect("encode")).expect("decode");
        assert_eq!(
            (rep.updated, rep.passed, rep.failed, rep.late),
            (5, 2.0, 1.0, 0.0)
        );
    }

    #[test]
    fn pins_pieces_and_reputations_survive_a_reopen() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("pins.redb");
        let (a, b) = (piece_cid(b"root a"), piece_cid(b"root b"));
        let peer = PeerId::random();
        let pin = Pin {
            manifest: piece_cid(b"manifest"),
            k: 2,
            m: 1,
            bytes: 10,
            pinned_at: 5,
        };
        let rows = vec![((0, 0), row(0, Some(peer))), ((0, 1), row(1, None))];
        {
            let pins = Pins::open(&path).expect("open");
            assert!(pins.pin(&a, &pin, &rows).expect("pin"));
            assert!(
                !pins.pin(&a, &pin, &[]).expect("pin again"),
                "pinned already"
            );
            assert!(
                pins.pin(&b, &pin, &[((0, 0), row(9, None))])
                    .expect("pin b")
            );
            let mut failed = rows[0].1.clone();
            failed.state = HolderState::Failed;
            let rep = Reputation::default().record(7, Outcome::Failed, &Default::default());
            pins.apply(&Update {
                pieces: vec![(a, (0, 0), failed)],
                peers: vec![(peer, rep)],
                counters: Counters {
                    audits: 1,
                    audits_failed: 1,
                    ..Default::default()
                },
            })
            .expect("apply");
        }
        let pins = Pins::open(&path).expect("reopen");
        assert_eq!(pins.get(&a).expect("get"), Some(pin.clone()));
        let got = pins.pieces(&a).expect("pieces");
        assert_eq!(got.len(), 2, "b's piece is not a's");
        assert_eq!(got[0].1.state, HolderState::Failed);
        assert_eq!(got[0].1.holder, Some(peer));
        assert_eq!(got[1], rows[1]);
        assert_eq!(
            pins.reputation(&peer).expect("rep").map(|r| r.failed),
            Some(1.0)
        );
        assert_eq!(pins.counters().expect("counters").audits_failed, 1);

        assert!(pins.unpin(&a).expect("unpin"));
        assert!(!pins.unpin(&a).expect("unpin again"));
        assert!(pins.pieces(&a).expect("pieces").is_empty());
        assert_eq!(pins.pieces(&b).expect("pieces").len(), 1, "b stays");
        // An upkeep step that raced the unpin does not bring rows back.
        pins.apply(&Update {
            pieces: vec![(a, (0, 0), rows[0].1.clone())],
            ..Default::default()
        })
        .expect("apply");
        assert!(pins.pieces(&a).expect("pieces").is_empty());
        assert_eq!(
            pins.list()
                .expect("list")
                .into_iter()
                .map(|p| p.0)
                .collect::<Vec<_>>(),
            vec![b]
        );
    }
}
