//! HAMT-sharded directories, as IPFS writes a directory whose links
//! outgrow [`MAX_DIRECTORY_LINK_BYTES`](super::MAX_DIRECTORY_LINK_BYTES).
//!
//! A shard is a dag-pb node whose UnixFS data is `HAMTShard` with a
//! fanout of 256 and the murmur3 hash type. Each name is placed by the
//! first 64 bits of its MurmurHash3 x64 128 (seed 0), big-endian, 8 bits a
//! level. A slot one name falls into is a link named by the slot in two
//! upper-case hex digits followed by the name; a slot several names fall
//! into is a link, named by the slot alone, to a shard one level down.
//! Links are in slot order; the node's `Data` is the bitfield of used slots,
//! big-endian, without leading zero bytes. The layout depends only on the
//! set of names, so it is the one `ipfs add` and the reference importer
//! build.

use std::io;

use cid::{Cid, Version};
use ipld_dagpb::PbLink;

use super::import::{Entry, write_node};
use super::read::{BlockSource, DirEntry, ReadError, check_name, fetch_node, malformed};
use super::{BlockSink, Data, DataType};

/// The multicodec of murmur3-x64-64, the only hash IPFS shards by.
pub const HASH_MURMUR3: u64 = 0x22;
/// Slots per shard when Cairn writes one.
pub const FANOUT: u64 = 256;
/// Shards and entries a listing visits at most: a shard DAG is not bounded
/// by any one block's size.
pub const MAX_LISTED: usize = 1 << 20;

/// A name's place in the trie: 64 bits, the first slot's in the top bits.
fn hash(name: &str) -> u64 {
    let mut bytes = name.as_bytes();
    // A slice reader never fails.
    let h = murmur3::murmur3_x64_128(&mut bytes, 0).unwrap_or_default();
    // The low half is the first 64 bits of MurmurHash3's output.
    h as u64
}

/// The slot at `depth` of a shard of `2^bits` slots, or `None` once the
/// 64 bits are used up.
fn slot(hash: u64, depth: usize, bits: u32) -> Option<u64> {
    let start = u32::try_from(depth).ok()?.checked_mul(bits)?;
    let end = start.checked_add(bits).filter(|&e| e <= 64)?;
    Some((hash >> (64 - end)) & ((1 << bits) - 1))
}

/// Writes the shards of a directory of `entries` (distinct names), deepest
/// first, and returns the root shard.
pub(super) fn build(
    entries: Vec<(String, Entry)>,
    version: Version,
    sink: &mut impl BlockSink,
) -> io::Result<Entry> {
    let mut hashed: Vec<(u64, String, Entry)> = entries
        .into_iter()
        .map(|(name, entry)| (hash(&name), name, entry))
        .collect();
    hashed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
    write_shard(&hashed, 0, version, sink)
}

/// One shard over `entries`, sorted by hash, which agree on the slots of
/// every level above `depth`.
fn write_shard(
    entries: &[(u64, String, Entry)],
    depth: usize,
    version: Version,
    sink: &mut impl BlockSink,
) -> io::Result<Entry> {
    const BITS: u32 = FANOUT.trailing_zeros();
    let at = |e: &(u64, String, Entry)| slot(e.0, depth, BITS);
    let mut used = [0u8; FANOUT as usize / 8];
    let mut links = Vec::new();
    for run in entries.chunk_by(|a, b| at(a) == at(b)) {
        let Some(index) = at(&run[0]) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "directory names {:?} and {:?} have the same 64-bit hash: IPFS cannot shard them",
                    run[0].1,
                    run.get(1).map_or("", |e| e.1.as_str())
                ),
            ));
        };
        used[used.len() - 1 - (index / 8) as usize] |= 1 << (index % 8);
        let label = format!("{index:02X}");
        links.push(match run {
            [(_, name, entry)] => PbLink {
                cid: entry.cid,
                name: Some(label + name),
                size: Some(entry.dag_size),
            },
            _ => {
                let child = write_shard(run, depth + 1, version, sink)?;
                PbLink {
                    cid: child.cid,
                    name: Some(label),
                    size: Some(child.dag_size),
                }
            }
        });
    }
    let first = used.iter().position(|&b| b != 0).unwrap_or(used.len());
    let data = Data {
        r#type: DataType::HamtShard as i32,
        data: Some(used[first..].to_vec()),
        hash_type: Some(HASH_MURMUR3),
        fanout: Some(FANOUT),
        ..Default::default()
    };
    write_node(links, data, version, sink)
}

/// A shard as read: its links and how they are labelled.
struct Shard {
    links: Vec<ipld_dagpb::PbLink>,
    /// Bits of the hash per level: log2 of the fanout.
    bits: u32,
    /// Hex digits of a slot label.
    width: usize,
}

impl Shard {
    fn read(source: &mut impl BlockSource, cid: &Cid) -> Result<Shard, ReadError> {
        let node = fetch_node(source, cid)?;
        if node.data.r#type() != DataType::HamtShard {
            return Err(malformed(
                cid,
                "a shard links to a node that is not a shard",
            ));
        }
        if node.data.hash_type != Some(HASH_MURMUR3) {
            return Err(ReadError::Unsupported { cid: *cid });
        }
        // IPFS allows powers of two from 8; past 1024 a label outgrows
        // what any implementation writes.
        let fanout = node.data.fanout.unwrap_or(0);
        if !fanout.is_power_of_two() || !(8..=1024).contains(&fanout) {
            return Err(malformed(cid, format!("fanout {fanout}")));
        }
        Ok(Shard {
            links: node.links,
            bits: fanout.trailing_zeros(),
            width: format!("{:X}", fanout - 1).len(),
        })
    }

    /// A link's slot and, for an entry, its name; `None` for the slot
    /// alone (a shard below).
    fn label<'a>(
        &self,
        cid: &Cid,
        link: &'a ipld_dagpb::PbLink,
    ) -> Result<(u64, Option<&'a str>), ReadError> {
        let name = link.name.as_deref().unwrap_or_default();
        let bad = || malformed(cid, format!("shard link {name:?}"));
        let digits = name.get(..self.width).ok_or_else(bad)?;
        if !digits
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        {
            return Err(bad());
        }
        let slot = u64::from_str_radix(digits, 16).map_err(|_| bad())?;
        if slot >> self.bits != 0 {
            return Err(bad());
        }
        let rest = &name[self.width..];
        Ok((slot, (!rest.is_empty()).then_some(rest)))
    }
}

/// The entry named `name` in the sharded directory `cid`, if it has one.
pub(super) fn lookup(
    source: &mut impl BlockSource,
    cid: &Cid,
    name: &str,
) -> Result<Option<DirEntry>, ReadError> {
    let hash = hash(name);
    let mut at = *cid;
    // `slot` ends the walk by depth 64 at the latest.
    for depth in 0..=64 {
        let shard = Shard::read(source, &at)?;
        let Some(want) = slot(hash, depth, shard.bits) else {
            return Ok(None);
        };
        let mut below = None;
        for link in &shard.links {
            match shard.label(&at, link)? {
                (s, Some(n)) if s == want && n == name => return Ok(Some(DirEntry::of(link, n))),
                (s, None) if s == want => below = Some(link.cid),
                _ => {}
            }
        }
        match below {
            Some(next) => at = next,
            None => return Ok(None),
        }
    }
    Ok(None)
}

/// Every entry of the sharded directory `cid`, in name order.
pub(super) fn list(source: &mut impl BlockSource, cid: &Cid) -> Result<Vec<DirEntry>, ReadError> {
    let mut out = Vec::new();
    let mut visited = 0;
    list_into(source, cid, 0, &mut visited, &mut out)?;
    out.sort_by(|a, b| a.name.cmp(&b.name));
    if let Some(twice) = out.windows(2).find(|w| w[0].name == w[1].name) {
        return Err(malformed(
            cid,
            format!("two entries named {:?}", twice[0].name),
        ));
    }
    Ok(out)
}

fn list_into(
    source: &mut impl BlockSource,
    cid: &Cid,
    depth: usize,
    visited: &mut usize,
    out: &mut Vec<DirEntry>,
) -> Result<(), ReadError> {
    let shard = Shard::read(source, cid)?;
    // Below the last level the hash can address, no shard is needed.
    if slot(0, depth, shard.bits).is_none() {
        return Err(malformed(cid, "shards nested deeper than the hash reaches"));
    }
    for link in &shard.links {
        *visited += 1;
        if *visited > MAX_LISTED {
            return Err(malformed(
                cid,
                format!("more than {MAX_LISTED} shards and entries"),
            ));
        }
        match shard.label(cid, link)? {
            (_, Some(name)) => out.push(DirEntry::of(link, check_name(cid, name)?)),
            (_, None) => list_into(source, &link.cid, depth + 1, visited, out)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::block::{self, RAW};

    type Store = HashMap<Cid, Vec<u8>>;

    fn file(n: usize) -> Entry {
        let bytes = n.to_string();
        Entry {
            cid: block::sha256_cid(RAW, bytes.as_bytes()),
            file_size: bytes.len() as u64,
            dag_size: bytes.len() as u64,
        }
    }

    /// A shard node of `fanout` with `links` (label, target), as given.
    fn shard(store: &mut Store, fanout: u64, hash_type: u64, links: &[(&str, Cid)]) -> Cid {
        let links = links
            .iter()
            .map(|(name, cid)| PbLink {
                cid: *cid,
                name: Some((*name).to_owned()),
                size: Some(1),
            })
            .collect();
        let data = Data {
            r#type: DataType::HamtShard as i32,
            data: Some(vec![1]),
            hash_type: Some(hash_type),
            fanout: Some(fanout),
            ..Default::default()
        };
        write_node(links, data, Version::V1, store)
            .expect("in memory")
            .cid
    }

    #[test]
    fn every_name_is_listed_and_found_and_no_other() {
        let mut store = Store::new();
        let names: Vec<String> = (0..3000).map(|i| format!("{i}.json")).collect();
        let entries = names.iter().enumerate().map(|(i, n)| (n.clone(), file(i)));
        let root = build(entries.collect(), Version::V1, &mut store)
            .expect("in memory")
            .cid;
        let listed = list(&mut store, &root).expect("a valid shard");
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(
            listed.iter().map(|e| &e.name).collect::<Vec<_>>(),
            sorted.iter().collect::<Vec<_>>()
        );
        for (i, name) in names.iter().enumerate() {
            let found = lookup(&mut store, &root, name).expect("valid");
            assert_eq!(found.map(|e| e.cid), Some(file(i).cid));
        }
        assert_eq!(lookup(&mut store, &root, "3000.json").expect("valid"), None);
    }

    #[test]
    fn hostile_shards_are_refused() {
        let mut store = Store::new();
        let leaf = file(1).cid;
        let err = |store: &mut Store, root: Cid| list(store, &root).expect_err("refused");

        let bad_label = shard(&mut store, 256, HASH_MURMUR3, &[("zzname", leaf)]);
        assert!(matches!(
            err(&mut store, bad_label),
            ReadError::Malformed { .. }
        ));
        let beyond_fanout = shard(&mut store, 512, HASH_MURMUR3, &[("3FFname", leaf)]);
        assert!(matches!(
            err(&mut store, beyond_fanout),
            ReadError::Malformed { .. }
        ));
        let twice = shard(
            &mut store,
            256,
            HASH_MURMUR3,
            &[("00a", leaf), ("01a", leaf)],
        );
        assert!(matches!(
            err(&mut store, twice),
            ReadError::Malformed { .. }
        ));
        let unsafe_name = shard(&mut store, 256, HASH_MURMUR3, &[("00..", leaf)]);
        assert!(matches!(
            err(&mut store, unsafe_name),
            ReadError::Malformed { .. }
        ));
        let odd_fanout = shard(&mut store, 100, HASH_MURMUR3, &[("00a", leaf)]);
        assert!(matches!(
            err(&mut store, odd_fanout),
            ReadError::Malformed { .. }
        ));
        let other_hash = shard(&mut store, 256, 0x12, &[("00a", leaf)]);
        assert!(matches!(
            err(&mut store, other_hash),
            ReadError::Unsupported { .. }
        ));

        // Eight levels use the 64 bits up: a ninth shard cannot be reached
        // by any name.
        let mut deep = shard(&mut store, 256, HASH_MURMUR3, &[("00a", leaf)]);
        for _ in 0..8 {
            deep = shard(&mut store, 256, HASH_MURMUR3, &[("00", deep)]);
        }
        assert!(matches!(err(&mut store, deep), ReadError::Malformed { .. }));

        // 256 links to one shard of 256 links to one shard of ...: few
        // blocks, exponentially many visits, stopped at the limit.
        let mut wide = shard(&mut store, 256, HASH_MURMUR3, &[("00a", leaf)]);
        for _ in 0..3 {
            let labels: Vec<String> = (0..256).map(|i| format!("{i:02X}")).collect();
            let links: Vec<(&str, Cid)> = labels.iter().map(|l| (l.as_str(), wide)).collect();
            wide = shard(&mut store, 256, HASH_MURMUR3, &links);
        }
        assert!(matches!(err(&mut store, wide), ReadError::Malformed { .. }));
    }
}
