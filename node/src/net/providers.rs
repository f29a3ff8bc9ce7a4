//! Kademlia's record store for Cairn: provider records on disk.
//!
//! - Records naming another peer as provider are kept in redb table
//!   `providers-0` ((key, provider peer ID) → [`Stored`]), so a node holds
//!   as many as its disk allows (up to [`Limits::max_records`]) and keeps
//!   them across restarts.
//! - Records naming this node are not stored at all: the piece index is the
//!   truth of what this node provides, so a piece that leaves the index is
//!   no longer announced. `provided()` is empty; the node's announcer
//!   republishes from the piece index at its own pace.
//! - Value records (unused by Cairn) stay in a small in-memory store.
//! - Records arrive one message each; they are written in batches of up to
//!   [`PENDING`] (one redb transaction each) and on every flush, and read
//!   from both the batch and the table meanwhile. A crash loses what was not
//!   flushed, as with redb's non-durable commits.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use libp2p::kad::store::{Error as KadError, MemoryStore, RecordStore, Result as KadResult};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::{Multiaddr, PeerId};
use redb::{Database, Durability, ReadableDatabase as _, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::store::Store;

const PROVIDERS: TableDefinition<(&[u8], &[u8]), &[u8]> = TableDefinition::new("providers-0");
/// Records held in memory before they are written in one transaction.
pub const PENDING: usize = 1024;

/// (key, provider peer ID) → encoded [`Stored`].
type Pending = BTreeMap<(Vec<u8>, Vec<u8>), Vec<u8>>;

/// A provider record as stored (DAG-CBOR).
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    /// Unix seconds.
    expires_at: u64,
    addrs: Vec<serde_bytes::ByteBuf>,
}

#[derive(Debug, Clone)]
pub struct Limits {
    /// Provider records kept in all. Default 10,000,000 (about 1 GiB of disk).
    pub max_records: u64,
    /// Providers kept per key. Default 20 (Kademlia's replication factor).
    pub max_per_key: usize,
    /// Addresses kept per provider. Default 8.
    pub max_addrs: usize,
    /// Records kept from one provider. Default 1,000,000: a node holding
    /// 4 TiB of 4 MiB pieces, each announced to every server of a small
    /// network, stays within it; ten providers cannot fill the store.
    pub max_per_provider: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_records: 10_000_000,
            max_per_key: 20,
            max_addrs: 8,
            max_per_provider: 1_000_000,
        }
    }
}

pub struct ProviderStore {
    local: PeerId,
    db: Arc<Database>,
    pieces: Option<Arc<Store>>,
    limits: Limits,
    /// Records held, in the table or pending.
    records: u64,
    /// Of those, per provider (peer ID bytes).
    per_provider: HashMap<Vec<u8>, u64>,
    /// Written or refreshed since the last batch; may shadow table rows.
    pending: Pending,
    values: MemoryStore,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ProviderStore {
    /// Opens `path` (created if missing). `pieces`, when given, makes this
    /// node a provider of every piece it holds.
    pub fn open(
        path: &Path,
        local: PeerId,
        pieces: Option<Arc<Store>>,
        limits: Limits,
    ) -> Result<Self, redb::Error> {
        // redb's default page cache is 1 GiB per database.
        let db = Database::builder().set_cache_size(32 << 20).create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(PROVIDERS)?;
        txn.commit()?;
        // One pass over the keys: what each provider holds here.
        let (mut records, mut per_provider) = (0, HashMap::new());
        for entry in redb::ReadableTable::iter(&db.begin_read()?.open_table(PROVIDERS)?)? {
            let (k, _) = entry?;
            records += 1;
            *per_provider.entry(k.value().1.to_vec()).or_default() += 1;
        }
        Ok(ProviderStore {
            local,
            db: Arc::new(db),
            pieces,
            limits,
            records,
            per_provider,
            pending: Pending::new(),
            values: MemoryStore::new(local),
        })
    }

    /// Provider records held for other peers.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Makes every write so far durable (the writes kad makes are not, one
    /// by one: a lost provider record is re-announced by its provider).
    pub fn flush(&mut self) -> Result<(), redb::Error> {
        self.write_pending(Durability::Immediate)
    }

    /// Writes the pending records in one transaction.
    fn write_pending(&mut self, durability: Durability) -> Result<(), redb::Error> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        {
            let mut table = txn.open_table(PROVIDERS)?;
            for ((key, provider), value) in &self.pending {
                table.insert((key.as_slice(), provider.as_slice()), value.as_slice())?;
            }
        }
        txn.commit()?;
        self.pending.clear();
        Ok(())
    }

    /// Providers of `key` with their encoded records, pending ones first.
    fn of_key(&self, key: &[u8]) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, redb::Error> {
        let mut out: BTreeMap<Vec<u8>, Vec<u8>> = self
            .pending
            .range((key.to_vec(), Vec::new())..)
            .take_while(|((k, _), _)| k == key)
            .map(|((_, p), v)| (p.clone(), v.clone()))
            .collect();
        let txn = self.db.begin_read()?;
        let table = txn.open_table(PROVIDERS)?;
        for entry in table.range((key, &[][..])..)? {
            let (k, v) = entry?;
            if k.value().0 != key {
                break;
            }
            out.entry(k.value().1.to_vec())
                .or_insert_with(|| v.value().to_vec());
        }
        Ok(out)
    }

    /// Deletes expired records; returns how many.
    pub fn expire(&mut self, now: u64) -> Result<u64, redb::Error> {
        self.write_pending(Durability::None)?;
        let txn = self.db.begin_write()?;
        let removed = {
            let mut table = txn.open_table(PROVIDERS)?;
            let before = {
                use redb::ReadableTableMetadata as _;
                table.len()?
            };
            let per_provider = &mut self.per_provider;
            table.retain(|k, v| {
                let keep =
                    serde_ipld_dagcbor::from_slice::<Stored>(v).is_ok_and(|s| s.expires_at > now);
                if !keep {
                    forget(per_provider, k.1);
                }
                keep
            })?;
            let after = {
                use redb::ReadableTableMetadata as _;
                table.len()?
            };
            before - after
        };
        txn.commit()?;
        self.records = self.records.saturating_sub(removed);
        Ok(removed)
    }

    fn local_record(&self, key: &RecordKey) -> Option<ProviderRecord> {
        let cid = cid::Cid::try_from(key.as_ref()).ok()?;
        let held = self.pieces.as_ref()?.holds(&cid).ok()?;
        held.then(|| ProviderRecord {
            key: key.clone(),
            provider: self.local,
            expires: None,
            addresses: Vec::new(),
        })
    }
}

/// One record of `provider` fewer.
fn forget(per_provider: &mut HashMap<Vec<u8>, u64>, provider: &[u8]) {
    if let Some(n) = per_provider.get_mut(provider) {
        *n -= 1;
        if *n == 0 {
            per_provider.remove(provider);
        }
    }
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = std::iter::Empty<Cow<'a, ProviderRecord>>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.values.get(k)
    }

    fn put(&mut self, r: Record) -> KadResult<()> {
        self.values.put(r)
    }

    fn remove(&mut self, k: &RecordKey) {
        self.values.remove(k)
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.values.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> KadResult<()> {
        if record.provider == self.local {
            return Ok(());
        }
        let (now, unix) = (Instant::now(), unix_now());
        let expires_at = record.expires.map_or(u64::MAX, |e| {
            unix.saturating_add(e.saturating_duration_since(now).as_secs())
        });
        let value = Stored {
            expires_at,
            addrs: record
                .addresses
                .iter()
                .take(self.limits.max_addrs)
                .map(|a| serde_bytes::ByteBuf::from(a.to_vec()))
                .collect(),
        };
        let value = serde_ipld_dagcbor::to_vec(&value).map_err(|_| KadError::ValueTooLarge)?;
        let id = (record.key.to_vec(), record.provider.to_bytes());
        let held = match self.of_key(&id.0) {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "could not read provider records");
                return Err(KadError::MaxRecords);
            }
        };
        let known = held.contains_key(&id.1);
        if !known {
            if self.records >= self.limits.max_records {
                return Err(KadError::MaxRecords);
            }
            if held.len() >= self.limits.max_per_key {
                return Ok(());
            }
            if self.per_provider.get(&id.1).copied().unwrap_or(0) >= self.limits.max_per_provider {
                return Err(KadError::MaxProvidedKeys);
            }
        }
        // The batch never grows past PENDING, even while writes fail.
        if self.pending.len() >= PENDING
            && let Err(e) = self.write_pending(Durability::None)
        {
            tracing::warn!(error = %e, "could not store provider records");
            return Err(KadError::MaxRecords);
        }
        if !known {
            self.records += 1;
            *self.per_provider.entry(id.1.clone()).or_default() += 1;
        }
        self.pending.insert(id, value);
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let mut out: Vec<ProviderRecord> = self.local_record(key).into_iter().collect();
        let held = match self.of_key(key.as_ref()) {
            Ok(held) => held,
            Err(e) => {
                tracing::warn!(error = %e, "could not read provider records");
                return out;
            }
        };
        let (now, unix) = (Instant::now(), unix_now());
        for (provider, value) in held.iter().take(self.limits.max_per_key) {
            let (Ok(provider), Ok(stored)) = (
                PeerId::from_bytes(provider),
                serde_ipld_dagcbor::from_slice::<Stored>(value),
            ) else {
                continue;
            };
            let left = Duration::from_secs(stored.expires_at.saturating_sub(unix));
            out.push(ProviderRecord {
                key: key.clone(),
                provider,
                expires: now.checked_add(left),
                addresses: stored
                    .addrs
                    .iter()
                    .filter_map(|a| Multiaddr::try_from(a.to_vec()).ok())
                    .collect(),
            });
        }
        out
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        std::iter::empty()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        if *p == self.local {
            return;
        }
        let (key, provider) = (k.as_ref(), p.to_bytes());
        let pending = self.pending.remove(&(key.to_vec(), provider.clone()));
        let removed = || -> Result<bool, redb::Error> {
            let mut txn = self.db.begin_write()?;
            txn.set_durability(Durability::None)?;
            let removed = txn
                .open_table(PROVIDERS)?
                .remove((key, provider.as_slice()))?
                .is_some();
            txn.commit()?;
            Ok(removed)
        };
        match removed() {
            Ok(removed) if removed || pending.is_some() => {
                self.records = self.records.saturating_sub(1);
                forget(&mut self.per_provider, &provider);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not remove a provider record"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &RecordKey, provider: PeerId, ttl: Duration) -> ProviderRecord {
        ProviderRecord {
            key: key.clone(),
            provider,
            expires: Some(Instant::now() + ttl),
            addresses: vec!["/ip4/127.0.0.1/tcp/4001".parse().expect("addr")],
        }
    }

    #[test]
    fn one_provider_is_held_to_its_share() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("providers.redb");
        let local = PeerId::random();
        let limits = Limits {
            max_per_provider: 2,
            ..Limits::default()
        };
        let (a, b) = (PeerId::random(), PeerId::random());
        let keys: Vec<RecordKey> = (0..4u8).map(|i| RecordKey::new(&[i; 8])).collect();
        let hour = Duration::from_secs(3600);
        {
            let mut store = ProviderStore::open(&path, local, None, limits.clone()).expect("open");
            store
                .add_provider(record(&keys[0], a, hour))
                .expect("first");
            store
                .add_provider(record(&keys[1], a, hour))
                .expect("second");
            assert!(
                store.add_provider(record(&keys[2], a, hour)).is_err(),
                "third"
            );
            store
                .add_provider(record(&keys[1], a, hour))
                .expect("a refresh is no new record");
            store
                .add_provider(record(&keys[2], b, hour))
                .expect("another provider");
            store.flush().expect("flush");
        }
        // Counted again at open; a removed record frees a place.
        let mut store = ProviderStore::open(&path, local, None, limits).expect("reopen");
        assert!(store.add_provider(record(&keys[3], a, hour)).is_err());
        store.remove_provider(&keys[0], &a);
        store
            .add_provider(record(&keys[3], a, hour))
            .expect("after a removal");
        assert_eq!(store.records(), 3);
    }

    #[test]
    fn records_persist_are_bounded_and_expire() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("providers.redb");
        let local = PeerId::random();
        let key = RecordKey::new(b"piece");
        let limits = Limits {
            max_per_key: 3,
            ..Limits::default()
        };
        let peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        {
            let mut store = ProviderStore::open(&path, local, None, limits.clone()).expect("open");
            for p in &peers {
                store
                    .add_provider(record(&key, *p, Duration::from_secs(3600)))
                    .expect("add");
            }
            // Our own records are not kept: the piece index speaks for us.
            store
                .add_provider(record(&key, local, Duration::from_secs(3600)))
                .expect("add");
            assert_eq!(store.records(), 3);
            store.flush().expect("flush");
        }
        let mut store = ProviderStore::open(&path, local, None, limits).expect("reopen");
        let found = store.providers(&key);
        assert_eq!(found.len(), 3);
        assert!(
            found
                .iter()
                .all(|r| peers[..3].contains(&r.provider) && r.addresses.len() == 1)
        );
        store.remove_provider(&key, &peers[0]);
        assert_eq!(store.providers(&key).len(), 2);
        assert_eq!(store.expire(unix_now() + 7200).expect("expire"), 2);
        assert!(store.providers(&key).is_empty());
        assert_eq!(store.records(), 0);
    }

    #[test]
    fn records_are_written_in_batches_and_read_meanwhile() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("providers.redb");
        let local = PeerId::random();
        let key = RecordKey::new(b"piece");
        let limits = Limits {
            max_per_key: 2,
            ..Limits::default()
        };
        let peers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let hour = Duration::from_secs(3600);
        {
            let mut store = ProviderStore::open(&path, local, None, limits.clone()).expect("open");
            for p in &peers {
                store.add_provider(record(&key, *p, hour)).expect("add");
            }
            // Pending records count against the per-key limit and are served.
            assert_eq!(store.records(), 2);
            let found: Vec<PeerId> = store.providers(&key).iter().map(|r| r.provider).collect();
            assert_eq!(found.len(), 2);
            assert!(found.iter().all(|p| peers[..2].contains(p)));
            // Dropped unflushed, as in a crash: nothing was written yet.
        }
        let mut store = ProviderStore::open(&path, local, None, limits).expect("reopen");
        assert_eq!(store.records(), 0);
        assert!(store.providers(&key).is_empty());
        // A full batch is written in one go, without a flush, when the
        // next record comes.
        for i in 0..=PENDING {
            let key = RecordKey::new(&i.to_be_bytes());
            store
                .add_provider(record(&key, peers[0], hour))
                .expect("add");
        }
        drop(store);
        let store = ProviderStore::open(&path, local, None, Limits::default()).expect("reopen");
        assert_eq!(store.records(), PENDING as u64);
        assert_eq!(
            store
                .providers(&RecordKey::new(&7usize.to_be_bytes()))
                .len(),
            1
        );
    }
}
