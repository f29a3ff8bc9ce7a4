//! Guards byte-for-byte compatibility with IPFS: Cairn's CIDs, directories
//! and CARs against the ecosystem's reference implementation
//! (ipfs-unixfs-importer with its defaults, which equal
//! `ipfs add --cid-version 1`, and with kubo's, which equal `ipfs add`;
//! @ipld/car; ipfs-unixfs-exporter).

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use anyhow::Result;
use cairn_node::add::{self, Options};
use cairn_protocol::Cid;
use cairn_protocol::car::{CarReader, CarWriter};
use cairn_protocol::unixfs::{self, CHUNK_SIZE, IMPORT_BATCH, MAX_LINKS, NullSink};
use cairn_tests::nft::{self, token, token_json};
use cairn_tests::reference;
use cid::Version;
use rand::{Rng, RngCore, SeedableRng};
use sha2::Digest as _;

fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut data = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    data
}

fn cairn_cid(data: &[u8]) -> Result<String> {
    Ok(unixfs::import_file(data, &mut NullSink)?.cid.to_string())
}

fn cairn_cid_v0(data: &[u8]) -> Result<String> {
    let entry = unixfs::import_file_with(data, &mut NullSink, &unixfs::HashLeaves, Version::V0)?;
    Ok(entry.cid.to_string())
}

#[test]
fn file_cids_match_the_reference_at_every_boundary() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut sizes = vec![
        0,
        1,
        CHUNK_SIZE - 1,
        CHUNK_SIZE,
        CHUNK_SIZE + 1,
        // The importer reads and hashes a batch of chunks at a time.
        IMPORT_BATCH * CHUNK_SIZE,
        IMPORT_BATCH * CHUNK_SIZE + 1,
        2 * IMPORT_BATCH * CHUNK_SIZE - 1,
        MAX_LINKS * CHUNK_SIZE, // exactly 174 chunks: one node over all leaves
        MAX_LINKS * CHUNK_SIZE + 1, // a 175th chunk: a second level
        (MAX_LINKS + 1) * CHUNK_SIZE,
    ];
    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
    sizes.extend((0..6).map(|_| rng.gen_range(0..3 * CHUNK_SIZE)));
    let mut files = Vec::new();
    let (mut ours, mut ours_v0) = (Vec::new(), Vec::new());
    for (i, &len) in sizes.iter().enumerate() {
        let data = random_bytes(len, i as u64);
        let path = dir.path().join(format!("f{i}"));
        fs::write(&path, &data)?;
        ours.push(cairn_cid(&data)?);
        ours_v0.push(cairn_cid_v0(&data)?);
        files.push(path);
    }
    let refs: Vec<&Path> = files.iter().map(|p| p.as_path()).collect();
    let theirs = reference::hash_files(&refs)?;
    let theirs_v0 = reference::hash_files_as(&refs, true)?;
    for (i, len) in sizes.iter().enumerate() {
        assert_eq!(ours[i], theirs[i], "CID of {len} bytes");
        assert_eq!(ours_v0[i], theirs_v0[i], "CIDv0 of {len} bytes");
        assert!(ours_v0[i].starts_with("Qm"), "{}", ours_v0[i]);
    }
    Ok(())
}

#[test]
fn a_three_level_tree_matches_the_reference() -> Result<()> {
    // 174² chunks fill two levels of links; one byte more needs a third
    // (7.4 GiB). The file is sparse, all zeros: no disk used, and the
    // reference keeps one copy of each distinct block in memory.
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("three-levels");
    let len = MAX_LINKS * MAX_LINKS * CHUNK_SIZE + 1;
    fs::File::create(&path)?.set_len(len as u64)?;
    let ours = unixfs::import_file(fs::File::open(&path)?, &mut NullSink)?;
    let theirs = reference::hash_files(&[&path])?;
    assert_eq!(ours.cid.to_string(), theirs[0], "CID of {len} bytes");
    Ok(())
}

#[test]
fn directory_tree_cid_matches_the_reference() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("tree");
    fs::create_dir_all(root.join("sub/deeper"))?;
    fs::create_dir_all(root.join("empty"))?;
    fs::write(root.join("a.txt"), b"alpha\n")?;
    fs::write(root.join("B"), b"capital sorts first")?;
    fs::write(root.join("a"), b"")?;
    fs::write(root.join("zäh ünïcode"), b"utf-8 names sort by bytes")?;
    fs::write(root.join(".hidden"), b"skipped by ipfs add -r")?;
    fs::write(root.join("sub/big"), random_bytes(3 * CHUNK_SIZE + 10, 9))?;
    fs::write(root.join("sub/deeper/x"), b"x")?;
    for v0 in [false, true] {
        let options = match v0 {
            true => RECURSIVE_V0,
            false => RECURSIVE,
        };
        let ours = add::import_path(&root, options, &mut NullSink)?;
        assert_eq!(
            ours.cid.to_string(),
            reference::hash_dir_as(&root, v0)?,
            "v0: {v0}"
        );
    }
    Ok(())
}

#[test]
fn a_car_cairn_writes_is_read_by_the_reference() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = random_bytes(5 * CHUNK_SIZE + 3, 4);
    let root = cairn_cid(&data)?;
    let path = tmp.path().join("out.car");
    let cid: Cid = root.parse()?;
    let mut car = CarWriter::new(fs::File::create(&path)?, &[cid])?;
    unixfs::import_file(&data[..], &mut car)?;
    car.finish()?;
    let summary = reference::read_car(&path)?;
    assert_eq!(summary.roots, [root]);
    assert_eq!(summary.blocks, 7, "6 leaves and their root");
    assert_eq!(summary.sha256, hex(&sha2::Sha256::digest(&data)));
    Ok(())
}

#[test]
fn a_car_the_reference_writes_is_read_and_verified() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let data = random_bytes(4 * CHUNK_SIZE + 77, 5);
    let file = tmp.path().join("in");
    fs::write(&file, &data)?;
    let car = tmp.path().join("in.car");
    let root = reference::write_car(&file, &car)?;

    let mut reader = CarReader::new(fs::File::open(&car)?)?;
    assert_eq!(
        reader
            .roots()
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>(),
        std::slice::from_ref(&root)
    );
    let mut blocks = HashMap::new();
    while let Some((cid, bytes)) = reader.next_block()? {
        blocks.insert(cid, bytes);
    }
    let mut out = Vec::new();
    unixfs::read_range(&mut blocks, &root.parse()?, 0, None, &mut out)?;
    assert_eq!(out, data);

    // Flip one byte inside each block in turn: the reader must reject the CAR.
    assert_eq!(blocks.len(), 6, "5 leaves and their root");
    let bytes = fs::read(&car)?;
    for (cid, block) in &blocks {
        let at = find(&bytes, block).expect("block bytes are in the CAR") + block.len() / 2;
        let mut bad = bytes.clone();
        bad[at] ^= 0x01;
        let result: Result<Vec<_>, _> = CarReader::new(&bad[..])?.collect();
        assert!(result.is_err(), "tampered block {cid} accepted");
    }
    Ok(())
}

fn collection(root: &Path, n: usize) -> Result<()> {
    nft::collection(root, n, &random_bytes(3 * CHUNK_SIZE + 5, 11))
}

const RECURSIVE: Options = Options {
    recursive: true,
    hidden: false,
    cid_version: Version::V1,
};

/// As `ipfs add -r` without flags.
const RECURSIVE_V0: Options = Options {
    cid_version: Version::V0,
    ..RECURSIVE
};

#[test]
fn a_sharded_directory_matches_the_reference() -> Result<()> {
    // 6,000 links of 52 bytes (name and CID) are past the 256 KiB at which
    // IPFS shards; each of the 256 slots holds about 23 names, so shards
    // nest.
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("collection");
    collection(&root, 6000)?;
    let ours = add::import_path(&root, RECURSIVE, &mut NullSink)?;
    assert_eq!(ours.cid.to_string(), reference::hash_dir(&root)?);
    // As `ipfs add -r` without flags: shards are CIDv0 too.
    let ours = add::import_path(&root, RECURSIVE_V0, &mut NullSink)?;
    assert_eq!(ours.cid.to_string(), reference::hash_dir_as(&root, true)?);
    Ok(())
}

#[test]
fn the_shard_threshold_matches_the_reference_to_the_byte() -> Result<()> {
    // 1,024 empty files whose names and CIDs (36 bytes) come to exactly
    // 256 KiB: one node. One byte more: shards.
    for extra in [0, 1] {
        let tmp = tempfile::tempdir()?;
        let root = tmp.path().join("edge");
        fs::create_dir(&root)?;
        for i in 0..1024 {
            let pad = 216 + if i == 0 { extra } else { 0 };
            fs::write(root.join(format!("{i:04}{}", "x".repeat(pad))), b"")?;
        }
        let mut blocks = HashMap::new();
        let ours = add::import_path(&root, RECURSIVE, &mut blocks)?;
        assert_eq!(
            ours.cid.to_string(),
            reference::hash_dir(&root)?,
            "{extra} byte(s) over"
        );
        // The empty leaf and the directory node, or the leaf and shards.
        assert_eq!(blocks.len() > 2, extra == 1, "{} blocks", blocks.len());
    }
    Ok(())
}

#[test]
fn sharded_directories_the_reference_writes_are_read_by_path() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("collection");
    collection(&root, 6000)?;
    // CIDv1 with raw leaves, and as `ipfs add -r` writes by default
    // (CIDv0, dag-pb leaves): NFT links of 2021 look like that.
    for v0 in [false, true] {
        let car = tmp.path().join(format!("v0-{v0}.car"));
        let cid: Cid = reference::write_dir_car(&root, &car, v0)?.parse()?;
        let mut blocks = HashMap::new();
        let mut reader = CarReader::new(fs::File::open(&car)?)?;
        while let Some((cid, bytes)) = reader.next_block()? {
            blocks.insert(cid, bytes);
        }
        assert_eq!(names(&mut blocks, cid)?, ["cover.png", "meta"]);
        let meta = unixfs::resolve(&mut blocks, &cid, &["meta".into()])?;
        let mut want: Vec<String> = (0..6000).map(token).collect();
        want.push("extra".into());
        want.sort();
        assert_eq!(names(&mut blocks, meta)?, want, "v0: {v0}");
        for i in [0, 4321, 5999] {
            let path = ["meta".to_owned(), token(i)];
            let file = unixfs::resolve(&mut blocks, &cid, &path)?;
            let mut out = Vec::new();
            unixfs::read_range(&mut blocks, &file, 0, None, &mut out)?;
            assert_eq!(out, token_json(i).as_bytes(), "token {i}, v0: {v0}");
        }
        let deep = ["meta", "extra", "note.txt"].map(String::from);
        let mut out = Vec::new();
        let note = unixfs::resolve(&mut blocks, &cid, &deep)?;
        unixfs::read_range(&mut blocks, &note, 0, None, &mut out)?;
        assert_eq!(out, nft::NOTE);
        let missing = unixfs::resolve(&mut blocks, &cid, &["meta".into(), token(6000)]);
        assert!(
            matches!(missing, Err(unixfs::ReadError::NotFound { .. })),
            "{missing:?}"
        );
        let through_a_file = ["cover.png", "x"].map(String::from);
        let through = unixfs::resolve(&mut blocks, &cid, &through_a_file);
        assert!(
            matches!(through, Err(unixfs::ReadError::NotADirectory { .. })),
            "{through:?}"
        );
    }
    Ok(())
}

#[test]
fn a_sharded_directory_cairn_writes_is_read_by_the_reference() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let root = tmp.path().join("collection");
    collection(&root, 6000)?;
    let cid = add::import_path(&root, RECURSIVE, &mut NullSink)?.cid;
    let car = tmp.path().join("out.car");
    let mut writer = CarWriter::new(fs::File::create(&car)?, &[cid])?;
    add::import_path(&root, RECURSIVE, &mut writer)?;
    writer.finish()?;
    for i in [0, 4321, 5999] {
        let summary = reference::read_car_at(&car, &format!("meta/{}", token(i)))?;
        assert_eq!(summary.roots, [cid.to_string()]);
        assert_eq!(summary.sha256, hex(&sha2::Sha256::digest(token_json(i))));
    }
    Ok(())
}

fn names(blocks: &mut HashMap<Cid, Vec<u8>>, dir: Cid) -> Result<Vec<String>> {
    Ok(unixfs::list_directory(blocks, &dir)?
        .into_iter()
        .map(|e| e.name)
        .collect())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
