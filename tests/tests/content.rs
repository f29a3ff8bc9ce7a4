//! Guards issue #4 end to end: content added through a client to storage
//! node processes on loopback comes back byte-identical, whole, as ranges
//! (fetching only the segments needed), as directories and CARs, with
//! holders stopped, sending garbage or stalling; sealed (encrypted) content
//! comes back through its handle and leaves no plaintext on any node; the
//! commands work through a running node's control API too.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use cairn_node::add::Options;
use cairn_node::client::{self, AddOptions, Added, Content, GetOptions, GetStats, Input};
use cairn_node::node::Handle;
use cairn_protocol::address::Address;
use cairn_protocol::block::RAW;
use cairn_protocol::car::CarWriter;
use cairn_protocol::seal::{self, Key, RECORD, Sealer};
use cairn_protocol::unixfs::{ByteCount, CHUNK_SIZE, import_file};
use cairn_tests::nft::{self, token, token_json};
use cairn_tests::procs::{Proc, bin};
use cairn_tests::reference;
use cid::Cid;
use common::random_piece;

/// A bootstrap node and storage nodes, each a process.
struct Net {
    dir: tempfile::TempDir,
    boot: Proc,
    nodes: Vec<Proc>,
}

impl Net {
    fn start(nodes: usize) -> Result<Net> {
        let dir = tempfile::tempdir()?;
        let boot = Proc::spawn(
            &bin("cairn-bootstrap")?,
            &[
                "--data-dir",
                path(&dir.path().join("bootstrap"))?,
                "--listen",
                "/ip4/127.0.0.1/tcp/0",
            ],
            dir.path().join("bootstrap.log"),
        )?;
        let mut net = Net {
            dir,
            boot,
            nodes: Vec::new(),
        };
        for i in 0..nodes {
            let node = net.node(i, "/ip4/127.0.0.1/tcp/0", &[])?;
            net.nodes.push(node);
        }
        Ok(net)
    }

    fn node(&self, i: usize, listen: &str, extra: &[&str]) -> Result<Proc> {
        let data = self.dir.path().join(format!("node{i}"));
        let mut args = vec![
            "node",
            "--data-dir",
            path(&data)?,
            "--listen",
            listen,
            "--bootstrap",
            self.bootstrap(),
            "--capacity",
            "1GiB",
        ];
        args.extend(extra);
        Proc::spawn(
            &bin("cairn")?,
            &args,
            self.dir.path().join(format!("node{i}.log")),
        )
    }

    fn bootstrap(&self) -> &str {
        &self.boot.addrs[0]
    }

    /// Restarts node `i` on its address with `extra` flags.
    fn restart(&mut self, i: usize, extra: &[&str]) -> Result<()> {
        let addr = self.nodes[i].addrs[0].clone();
        let listen = addr.split("/p2p/").next().context("address")?.to_owned();
        self.nodes[i].stop()?;
        self.nodes[i] = self.node(i, &listen, extra)?;
        self.nodes[i].wait_log(Duration::from_secs(60), |l| {
            l.contains("announcement round complete")
        })?;
        Ok(())
    }

    fn index_of(&self, peer: &libp2p::PeerId) -> Result<usize> {
        let id = peer.to_string();
        self.nodes
            .iter()
            .position(|n| n.peer_id == id)
            .context("not one of the nodes")
    }
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("utf-8 path")
}

fn write(dir: &Path, name: &str, data: &[u8]) -> Result<PathBuf> {
    let p = dir.join(name);
    std::fs::write(&p, data)?;
    Ok(p)
}

fn file(path: PathBuf) -> Input {
    Input::Path {
        path,
        options: Options::default(),
    }
}

async fn add(net: &Handle, input: Input, options: &AddOptions) -> Result<Added> {
    client::add(net, input, options, |_| {}).await
}

/// Bytes `offset..offset+len` of `root`, and what the read fetched.
async fn read(
    net: &Handle,
    root: Cid,
    offset: u64,
    len: Option<u64>,
    options: GetOptions,
) -> Result<(Vec<u8>, GetStats)> {
    let content = Content::open(net, root, options).await?;
    tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        content.read(offset, len, &mut out)?;
        Ok((out, content.stats()))
    })
    .await?
}

/// A file length whose stream (leaves and inner nodes) is exactly `stream`
/// bytes, searched below it.
fn len_with_stream(stream: u64) -> Result<u64> {
    for len in (stream.saturating_sub(4096)..=stream).rev() {
        let mut c = ByteCount(0);
        import_file(io::repeat(7).take(len), &mut c)?;
        if c.0 == stream {
            return Ok(len);
        }
    }
    bail!("no file length gives a stream of {stream} bytes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_directories_and_cars_round_trip() -> Result<()> {
    let net = Net::start(10)?;
    let work = tempfile::tempdir()?;
    let (client, _client_dir) = client::ephemeral(vec![net.bootstrap().parse()?]).await?;
    let h = &client.handle;
    // Small pieces so that segment boundaries come cheap: 6 × 64 KiB.
    let options = AddOptions {
        piece_size: 64 * 1024,
        ..Default::default()
    };
    let segment = 6 * 64 * 1024;
    let chunk = CHUNK_SIZE as u64;
    let mut sizes = vec![0, 1, chunk - 1, chunk, chunk + 1, 2 * chunk, 7 * chunk + 3];
    for s in [segment - 1, segment, segment + 1, 2 * segment] {
        sizes.push(len_with_stream(s)?);
    }
    for (i, len) in sizes.into_iter().enumerate() {
        let data = random_piece(i as u64, len as usize);
        let added = add(h, file(write(work.path(), "f", &data)?), &options).await?;
        let (back, _) = read(h, added.root, 0, None, GetOptions::default()).await?;
        ensure!(back == data, "{len} bytes did not round-trip");
    }

    // Adding the same content again uploads nothing.
    let data = random_piece(99, 300_000);
    let f = write(work.path(), "again", &data)?;
    let first = add(h, file(f.clone()), &options).await?;
    let again = add(h, file(f), &options).await?;
    ensure!(!first.already_stored && again.already_stored && again.root == first.root);

    // A directory tree comes back as the same tree.
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper"))?;
    write(&tree, "a.bin", &random_piece(1, 500_000))?;
    write(&tree, "empty", b"")?;
    write(&tree.join("sub"), "b.txt", b"hello")?;
    write(&tree.join("sub/deeper"), "c.bin", &random_piece(2, 70_000))?;
    let dir_input = Input::Path {
        path: tree.clone(),
        options: Options {
            recursive: true,
            ..Options::default()
        },
    };
    let added = add(h, dir_input, &options).await?;
    let out = work.path().join("tree-out");
    let content = Content::open(h, added.root, GetOptions::default()).await?;
    let saved = out.clone();
    tokio::task::spawn_blocking(move || content.save(&saved)).await??;
    for f in ["a.bin", "empty", "sub/b.txt", "sub/deeper/c.bin"] {
        ensure!(
            std::fs::read(tree.join(f))? == std::fs::read(out.join(f))?,
            "{f} differs"
        );
    }

    // A CAR's content is added under the CAR's root.
    let data = random_piece(3, 1_000_000);
    let car_path = work.path().join("c.car");
    let root = import_file(&data[..], &mut cairn_protocol::unixfs::NullSink)?.cid;
    let mut car = CarWriter::new(std::fs::File::create(&car_path)?, &[root])?;
    import_file(&data[..], &mut car)?;
    car.finish()?;
    let added = add(h, Input::Car(car_path), &options).await?;
    ensure!(added.root == root);
    ensure!(read(h, root, 0, None, GetOptions::default()).await?.0 == data);

    // The command line, as a user runs it.
    let data = random_piece(4, 2_000_000);
    let f = write(work.path(), "cli.bin", &data)?;
    let cairn = bin("cairn")?;
    let out = Command::new(&cairn)
        .args(["add", "--quiet", path(&f)?])
        .env("CAIRN_BOOTSTRAP", net.bootstrap())
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cid = String::from_utf8(out.stdout)?.trim().to_owned();
    let got = work.path().join("cli.out");
    let status = Command::new(&cairn)
        .args(["get", &cid, "-o", path(&got)?])
        .env("CAIRN_BOOTSTRAP", net.bootstrap())
        .status()?;
    ensure!(status.success() && std::fs::read(&got)? == data);
    let out = Command::new(&cairn)
        .args(["cat", &cid, "--offset", "1000", "--length", "5000"])
        .env("CAIRN_BOOTSTRAP", net.bootstrap())
        .output()?;
    ensure!(out.status.success() && out.stdout == data[1000..6000]);
    // A reader that stops early (`cairn cat CID | head -c 10`) ends it quietly.
    let mut cat = Command::new(&cairn)
        .args(["cat", &cid])
        .env("CAIRN_BOOTSTRAP", net.bootstrap())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    let mut head = [0u8; 10];
    cat.stdout.take().context("stdout")?.read_exact(&mut head)?;
    let out = cat.wait_with_output()?;
    ensure!(
        head == data[..10] && out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unknown = import_file(&b"never added"[..], &mut cairn_protocol::unixfs::NullSink)?.cid;
    let out = Command::new(&cairn)
        .args(["cat", &unknown.to_string()])
        .env("CAIRN_BOOTSTRAP", net.bootstrap())
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("unknown to the network"),
        "{err}"
    );
    // A bootstrap address nothing listens on is not "unknown to the network".
    let closed = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let peer = net
        .bootstrap()
        .rsplit('/')
        .next()
        .context("bootstrap peer ID")?;
    let out = Command::new(&cairn)
        .args(["cat", &cid])
        .env(
            "CAIRN_BOOTSTRAP",
            format!("/ip4/127.0.0.1/tcp/{closed}/p2p/{peer}"),
        )
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains("cannot reach the network")
            && err.contains("Connection refused"),
        "{err}"
    );
    client.stop().await;
    drop(net);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_survives_stopped_garbage_and_stalling_holders() -> Result<()> {
    // k + m = 9 nodes: every segment has a piece on every node, so stopping
    // 3 nodes stops m holders of every segment.
    let mut net = Net::start(9)?;
    let work = tempfile::tempdir()?;
    let (client, _client_dir) = client::ephemeral(vec![net.bootstrap().parse()?]).await?;
    let h = &client.handle;
    let data = random_piece(7, 100 << 20);
    let added = add(
        h,
        file(write(work.path(), "big", &data)?),
        &AddOptions::default(),
    )
    .await?;
    let content = Content::open(h, added.root, GetOptions::default()).await?;
    let manifest = content.manifest().clone();
    let segments = manifest.segments.len() as u64;
    ensure!(segments == 5, "100 MiB in 24 MiB segments: {segments}");

    // A whole read fetches each segment once. The root, read first, is in
    // the last segment: it alone is read by itself, by a range of its
    // piece; the other inner nodes lie in segments on their way. (Without
    // the patience, a range read given up under load would fetch its
    // segment after all.)
    let counted = GetOptions {
        range_patience: Duration::from_secs(60),
        ..Default::default()
    };
    let (bytes, stats) = read(h, added.root, 0, None, counted.clone()).await?;
    ensure!(bytes == data, "content differs");
    each_segment_once(&stats, segments, "CIDv1")?;
    // The same for content as `ipfs add` imports it by default, whose
    // leaves are dag-pb nodes (added from the reference importer's CAR).
    let car = work.path().join("v0.car");
    let v0: Cid = reference::write_car_v0(&work.path().join("big"), &car)?.parse()?;
    let added_v0 = add(h, Input::Car(car), &AddOptions::default()).await?;
    ensure!(added_v0.root == v0 && v0.version() == cid::Version::V0);
    let v0_segments = Content::open(h, v0, GetOptions::default())
        .await?
        .manifest()
        .segments
        .len() as u64;
    let (bytes, stats) = read(h, v0, 0, None, counted.clone()).await?;
    ensure!(bytes == data, "CIDv0 content differs");
    each_segment_once(&stats, v0_segments, "CIDv0")?;
    // A range of it to the end, with its length given (as the gateway
    // asks): the reader names each node's children before reading them,
    // so the segments come ahead of it, each once, none before the range.
    let seg = manifest.segment_size();
    let from = seg + seg / 2;
    let len = data.len() as u64 - from;
    let (bytes, stats) = read(h, v0, from, Some(len), counted.clone()).await?;
    ensure!(bytes == data[from as usize..], "CIDv0 range differs");
    ensure!(
        stats.segment_fetches == stats.segments.len() as u64
            && stats.segments.first() == Some(&1)
            && stats.ahead >= 2,
        "CIDv0 range {from}+{len}: {stats:?}"
    );

    // Ranges across segment boundaries fetch only the segments of their
    // leaves, each once; the inner nodes above them are read alone.
    for (offset, len) in [(seg - 1000, 3000), (2 * seg + 5, seg)] {
        let (bytes, stats) = read(h, added.root, offset, Some(len), counted.clone()).await?;
        let want = &data[offset as usize..(offset + len) as usize];
        ensure!(bytes == want, "range {offset}+{len} differs");
        let leaves = leaf_segments(&manifest, offset..offset + len);
        ensure!(
            stats.segments == leaves
                && stats.segment_fetches == leaves.len() as u64
                && stats.ranges >= 1,
            "range {offset}+{len}: leaves in {leaves:?}; {stats:?}"
        );
        // The manifest names each piece's holder: no DHT lookup needed.
        ensure!(stats.lookups == 0, "range {offset}+{len}: {stats:?}");
    }

    // Two holders of data pieces of segment 0 turn bad: one sends garbage,
    // one never answers. The get drops one and backs up the other. Neither
    // holds the root, whose read alone would give them away first.
    let root_holders = data_holders(&manifest, &added.root)?;
    let mut bad = Vec::new();
    for piece in 0..manifest.scheme.k as usize {
        let peer = named_holder(&manifest, 0, piece)?;
        if !root_holders.contains(&peer) {
            // The DHT names the holder the manifest does.
            let found = h.providers(manifest.segments[0][piece]).await?;
            ensure!(found.contains(&peer), "{peer} announced piece {piece}");
            bad.push(peer);
        }
    }
    let [garbage, stall, ..] = bad[..] else {
        bail!("two data pieces of segment 0 away from the root: {bad:?}");
    };
    let (gi, si) = (net.index_of(&garbage)?, net.index_of(&stall)?);
    net.restart(gi, &["--fault", "garbage"])?;
    net.restart(si, &["--fault", "stall"])?;
    // A cap past the 60 s request timeout: the stalling holder is backed
    // up for being slow against the others, not for reaching the cap.
    let patient = GetOptions {
        hedge_after: Duration::from_secs(600),
        ..Default::default()
    };
    let (bytes, stats) = read(h, added.root, 0, None, patient.clone()).await?;
    ensure!(bytes == data, "content differs with bad holders");
    ensure!(
        stats.dropped.contains(&garbage),
        "garbage holder dropped: {stats:?}"
    );
    // Data pieces are checked through their blocks: the garbage showed as
    // a bad block, and its segment was fetched again, checked.
    ensure!(stats.rechecked >= 1, "segment fetched again: {stats:?}");
    ensure!(
        stats.slow.contains(&stall),
        "stalling holder backed up: {stats:?}"
    );
    ensure!(stats.decoded >= 1);

    // Stop those two and the holder of the root: m = 3 holders of every
    // segment are gone, and the root's read alone falls back to its segment.
    let root_holder = *root_holders.first().context("the root has a holder")?;
    let third = net.index_of(&root_holder)?;
    for i in [gi, si, third] {
        net.nodes[i].stop()?;
    }
    let (bytes, stats) = read(h, added.root, 0, None, patient).await?;
    ensure!(bytes == data, "content differs with m holders stopped");
    ensure!(stats.decoded >= 1);

    // One more and segment 0 is short: the error says what is missing.
    let fourth = (0..net.nodes.len())
        .find(|i| ![gi, si, third].contains(i))
        .context("a fourth node")?;
    net.nodes[fourth].stop()?;
    let short = GetOptions {
        hedge_after: Duration::from_secs(1),
        ..Default::default()
    };
    let err = match read(h, added.root, 0, None, short).await {
        Ok(_) => bail!("a segment with 5 of 6 pieces cannot be read"),
        Err(e) => format!("{e:#}"),
    };
    ensure!(err.contains("has 5 of the 6 pieces it needs"), "{err}");
    client.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_nft_collection_is_read_by_its_ipfs_links() -> Result<()> {
    let net = Net::start(9)?;
    let work = tempfile::tempdir()?;
    let cairn = bin("cairn")?;
    let run = |args: &[&str]| -> Result<std::process::Output> {
        Ok(Command::new(&cairn)
            .args(args)
            .env("CAIRN_BOOTSTRAP", net.bootstrap())
            .current_dir(work.path())
            .output()?)
    };
    let ok = |out: std::process::Output| -> Result<Vec<u8>> {
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(out.stdout)
    };
    let fails_saying = |args: &[&str], what: &str| -> Result<()> {
        let out = run(args)?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success() && err.contains(what), "{err}");
        Ok(())
    };
    // 6,000 tokens make `meta/` a sharded directory; the cover (6 MB) is
    // more than a piece, fetched in segments.
    let tree = work.path().join("collection");
    let cover = random_piece(21, 6_000_000);
    nft::collection(&tree, 6000, &cover)?;
    let root = String::from_utf8(ok(run(&["add", "-r", "--quiet", path(&tree)?])?)?)?;
    let root = root.trim();
    ensure!(
        root == reference::hash_dir(&tree)?,
        "the CID `ipfs add -r` gives"
    );

    for link in [
        format!("ipfs://{root}/meta/{}", token(4321)),
        format!("/ipfs/{root}/meta/{}", token(4321)),
        format!("{root}/meta/{}", token(4321)),
    ] {
        let got = ok(run(&["cat", &link])?)?;
        ensure!(got == token_json(4321).as_bytes(), "{link}");
    }
    let note = format!("ipfs://{root}/meta/extra/note.txt");
    ensure!(ok(run(&["cat", &note])?)? == nft::NOTE);
    // `get` names its output after the path's last name.
    ok(run(&["get", &format!("ipfs://{root}/cover.png")])?)?;
    ensure!(std::fs::read(work.path().join("cover.png"))? == cover);
    let range = format!("{root}/cover.png");
    let got = ok(run(&[
        "cat", &range, "--offset", "4000000", "--length", "10",
    ])?)?;
    ensure!(got == cover[4_000_000..4_000_010]);
    // A directory under the root comes back whole.
    let out = work.path().join("meta-out");
    ok(run(&["get", &format!("{root}/meta"), "-o", path(&out)?])?)?;
    let names: BTreeSet<_> = std::fs::read_dir(&out)?
        .map(|e| Ok(e?.file_name().into_string().unwrap_or_default()))
        .collect::<Result<_>>()?;
    ensure!(
        names.len() == 6001 && names.contains("extra"),
        "{} entries",
        names.len()
    );
    for i in [0, 2999, 5999] {
        ensure!(std::fs::read(out.join(token(i)))? == token_json(i).as_bytes());
    }
    ensure!(std::fs::read(out.join("extra/note.txt"))? == nft::NOTE);
    // `ls` lists a sharded directory in name order, as `ipfs ls`.
    let listed = String::from_utf8(ok(run(&["ls", &format!("ipfs://{root}/meta")])?)?)?;
    let lines: Vec<&str> = listed.lines().collect();
    let token_cid = cairn_protocol::block::sha256_cid(RAW, token_json(4321).as_bytes());
    let line = format!("{token_cid} {} {}", token_json(4321).len(), token(4321));
    ensure!(
        lines.len() == 6001 && lines.contains(&line.as_str()),
        "{} lines",
        lines.len()
    );
    let names: Vec<&str> = lines.iter().filter_map(|l| l.rsplit(' ').next()).collect();
    ensure!(
        names.is_sorted() && names[0] == token(0),
        "{:?}",
        &names[..3]
    );
    // The same through a node's control API.
    let node0 = net.dir.path().join("node0");
    let via_node = |args: &[&str]| -> Result<Vec<u8>> {
        ok(Command::new(&cairn)
            .args(args)
            .args(["--data-dir", path(&node0)?])
            .output()?)
    };
    ensure!(via_node(&["ls", &format!("ipfs://{root}/meta")])? == listed.as_bytes());
    let note_via_node = via_node(&["cat", &format!("/ipfs/{root}/meta/extra/note.txt")])?;
    ensure!(note_via_node == nft::NOTE);
    let json: serde_json::Value = serde_json::from_slice(&ok(run(&["ls", "--json", root])?)?)?;
    ensure!(
        json[0]["name"] == "cover.png" && json[1]["name"] == "meta",
        "{json}"
    );
    let cover_path = format!("{root}/cover.png");
    fails_saying(&["ls", &cover_path], "is a file, not a directory")?;

    // A token file is read alone from the holder of its piece: no segment.
    let (client, _client_dir) = client::ephemeral(vec![net.bootstrap().parse()?]).await?;
    let address: Address = format!("ipfs://{root}/meta/{}", token(7)).parse()?;
    let content = Content::open(&client.handle, address, GetOptions::default()).await?;
    let (got, stats) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut out = Vec::new();
        content.read(0, None, &mut out)?;
        Ok((out, content.stats()))
    })
    .await??;
    ensure!(got == token_json(7).as_bytes());
    ensure!(
        stats.segment_fetches == 0 && stats.ranges >= 3,
        "{} segments fetched, {} blocks read alone",
        stats.segment_fetches,
        stats.ranges
    );
    // Listing `meta/` reads its hundreds of shards: a few alone, then their
    // segment (the whole collection is one).
    let address: Address = format!("{root}/meta").parse()?;
    let content = Content::open(&client.handle, address, GetOptions::default()).await?;
    let (listed, stats) = tokio::task::spawn_blocking(move || -> Result<_> {
        Ok((content.list()?, content.stats()))
    })
    .await??;
    ensure!(listed.len() == 6001);
    ensure!(
        stats.segment_fetches == 1 && stats.ranges <= 16,
        "{} segments fetched, {} blocks read alone",
        stats.segment_fetches,
        stats.ranges
    );
    client.stop().await;

    // What is not there is named.
    let missing = format!("{root}/meta/{}", token(6000));
    fails_saying(
        &["cat", &missing],
        &format!("has no entry \"{}\"", token(6000)),
    )?;
    let through_a_file = format!("{cover_path}/x");
    fails_saying(&["cat", &through_a_file], "is a file, not a directory")?;

    // A collection as `ipfs add -r` wrote it in 2021 (CIDv0, dag-pb
    // leaves), added from the reference importer's CAR.
    let small = work.path().join("v0");
    nft::collection(&small, 6000, b"cover")?;
    let car = work.path().join("v0.car");
    let v0 = reference::write_dir_car(&small, &car, true)?;
    ensure!(v0.starts_with("Qm"), "{v0}");
    let added = ok(run(&["add", "--quiet", "--car", path(&car)?])?)?;
    ensure!(String::from_utf8(added)?.trim() == v0);
    let got = ok(run(&["cat", &format!("ipfs://{v0}/meta/{}", token(123))])?)?;
    ensure!(got == token_json(123).as_bytes());
    // The same files added as `ipfs add -r` adds them: the same CID, and
    // the network already has it.
    let again = ok(run(&[
        "add",
        "--json",
        "-r",
        "--cid-version",
        "0",
        path(&small)?,
    ])?)?;
    let again: serde_json::Value = serde_json::from_slice(&again)?;
    ensure!(
        again["cid"] == v0.as_str() && again["already_stored"] == true,
        "{again}"
    );
    drop(net);
    Ok(())
}

/// A whole read fetched each of the `segments` once and read only the root
/// alone.
fn each_segment_once(stats: &GetStats, segments: u64, what: &str) -> Result<()> {
    ensure!(
        stats.segment_fetches == segments && stats.ranges == 1,
        "{what}: {} segment fetches for {segments} segments, {} blocks read alone",
        stats.segment_fetches,
        stats.ranges
    );
    Ok(())
}

/// The holder the manifest names for piece `piece` of `segment`.
fn named_holder(
    manifest: &cairn_protocol::manifest::Manifest,
    segment: usize,
    piece: usize,
) -> Result<libp2p::PeerId> {
    let hint = manifest.holder(segment, piece).context("no holder named")?;
    Ok(libp2p::PeerId::from_bytes(hint)?)
}

/// The holders the manifest names for the data pieces `block` lies in.
fn data_holders(
    manifest: &cairn_protocol::manifest::Manifest,
    block: &Cid,
) -> Result<BTreeSet<libp2p::PeerId>> {
    let at = manifest
        .locate()
        .get(block)
        .cloned()
        .context("block not listed")?;
    manifest
        .piece_ranges(at)
        .into_iter()
        .map(|(segment, piece, _)| named_holder(manifest, segment as usize, piece))
        .collect()
}

/// The segments holding the file bytes `range` (the file is all raw leaves).
fn leaf_segments(
    manifest: &cairn_protocol::manifest::Manifest,
    range: std::ops::Range<u64>,
) -> BTreeSet<u64> {
    let (mut at, mut file_at) = (0, 0);
    let mut out = BTreeSet::new();
    for b in &manifest.blocks {
        if b.0.codec() == RAW {
            if file_at < range.end && range.start < file_at + b.1 {
                out.extend(manifest.segments_for(at..at + b.1));
            }
            file_at += b.1;
        }
        at += b.1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_content_round_trips_and_nodes_hold_no_plaintext() -> Result<()> {
    // 6+3 pieces on nodes other than node 0, which adds.
    let net = Net::start(10)?;
    let work = tempfile::tempdir()?;
    let data = random_piece(11, 3_000_017);
    let f = write(work.path(), "secret.bin", &data)?;
    let cairn = bin("cairn")?;
    let run = |args: &[&str]| {
        Command::new(&cairn)
            .args(args)
            .env("CAIRN_BOOTSTRAP", net.bootstrap())
            .output()
    };
    // Through node 0's control API (found through its data directory).
    let via = |node: usize, args: &[&str]| {
        Command::new(&cairn)
            .args(args)
            .env_remove("CAIRN_BOOTSTRAP")
            .env("CAIRN_DATA_DIR", net.dir.path().join(format!("node{node}")))
            .output()
    };
    let node0 = net.dir.path().join("node0");
    let via_node = |args: &[&str]| via(0, args);
    let out = via_node(&["add", "--encrypt", "--quiet", path(&f)?])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout)?.trim().to_owned();
    let handle: seal::Handle = text.parse()?;

    // Node 0 pinned what it added: one segment, 9 pieces, each on a node.
    let cid = handle.root.to_string();
    let json = |out: std::process::Output| -> Result<serde_json::Value> {
        ensure!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    };
    let ls = json(via_node(&["pin", "ls", "--json"])?)?;
    ensure!(
        ls[0]["cid"] == cid.as_str() && ls[0]["min_healthy"] == 9,
        "{ls}"
    );
    ensure!(ls[0]["threshold"] == 8, "6+3 repairs at 8: {ls}");
    let status = json(via_node(&["pin", "status", &cid, "--json"])?)?;
    let pieces = status["segments"][0]["pieces"]
        .as_array()
        .context("pieces")?;
    ensure!(
        pieces.len() == 9 && pieces.iter().all(|p| p["holder"].is_string()),
        "{status}"
    );
    // Every piece and manifest copy has the term the add gave it (30 days).
    let copies = status["manifest_copies"].as_array().context("copies")?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    ensure!(
        !copies.is_empty()
            && pieces.iter().chain(copies).all(|p| {
                p["expires_at"]
                    .as_u64()
                    .is_some_and(|t| t > now + 29 * 86_400)
            }),
        "{status}"
    );
    // Unpinned, then pinned again from the network: the holders are found.
    ensure!(via_node(&["pin", "rm", &cid])?.status.success());
    ensure!(json(via_node(&["pin", "ls", "--json"])?)? == serde_json::json!([]));
    let out = via_node(&["pin", "status", &cid])?;
    ensure!(String::from_utf8_lossy(&out.stderr).contains("is not pinned"));
    ensure!(via_node(&["pin", "add", &cid])?.status.success());
    let status = json(via_node(&["pin", "status", &cid, "--json"])?)?;
    let found = status["segments"][0]["pieces"]
        .as_array()
        .context("pieces")?
        .iter()
        .filter(|p| p["holder"].is_string())
        .count();
    ensure!(found == 9, "{found} holders found: {status}");
    let copies = status["manifest_copies"].as_array().context("copies")?;
    ensure!(!copies.is_empty(), "manifest holders found: {status}");

    // Node 1 holds one of the 9 pieces. Pinned there too, its own copy
    // counts as a holder, audited and renewed through its store: nothing
    // to repair.
    let via_node1 = |args: &[&str]| via(1, args);
    ensure!(via_node1(&["pin", "add", &cid])?.status.success());
    let me = net.nodes[1].peer_id.as_str();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let status = json(via_node1(&["pin", "status", &cid, "--json"])?)?;
        let pieces = status["segments"][0]["pieces"]
            .as_array()
            .context("pieces")?;
        let own = pieces.iter().find(|p| p["holder"] == me);
        ensure!(own.is_some(), "node 1 holds a piece itself: {status}");
        let renewed = |p: &serde_json::Value| {
            p["last_result"] == "passed"
                && p["expires_at"]
                    .as_u64()
                    .is_some_and(|t| t > now + 29 * 86_400)
        };
        if pieces.iter().all(renewed) {
            ensure!(status["counters"]["repairs"] == 0, "{status}");
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "node 1 never audited and renewed every piece: {status}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Read through node 1, its own piece comes from its store.
    let out = via_node1(&["cat", &text])?;
    ensure!(
        out.status.success() && out.stdout == data,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Back whole through a client of the command's own, and as a range
    // across seal records through the node.
    let got = work.path().join("secret.out");
    let out = run(&["get", &text, "-o", path(&got)?])?;
    ensure!(
        out.status.success() && std::fs::read(&got)? == data,
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (offset, len) = (3 * RECORD - 10, 2 * RECORD + 20);
    let out = via_node(&[
        "cat",
        &text,
        "--offset",
        &offset.to_string(),
        "--length",
        &len.to_string(),
    ])?;
    ensure!(
        out.status.success() && out.stdout == data[offset..offset + len],
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = work.path().join("secret.node.out");
    let out = via_node(&["get", &text, "-o", path(&got)?])?;
    ensure!(out.status.success() && std::fs::read(&got)? == data);

    // The handle kept off the command line: from CAIRN_HANDLE, a file, stdin.
    let out = Command::new(&cairn)
        .args(["cat"])
        .env("CAIRN_HANDLE", &text)
        .env("CAIRN_DATA_DIR", &node0)
        .env_remove("CAIRN_BOOTSTRAP")
        .output()?;
    ensure!(out.status.success() && out.stdout == data);
    let handle_file = work.path().join("handle");
    std::fs::write(&handle_file, format!("{text}\n"))?;
    let out = run(&["cat", "--handle-file", path(&handle_file)?])?;
    ensure!(out.status.success() && out.stdout == data);
    let mut child = Command::new(&cairn)
        .args([
            "get",
            "--handle-file",
            "-",
            "-o",
            path(&work.path().join("stdin.out"))?,
        ])
        .env("CAIRN_BOOTSTRAP", net.bootstrap())
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    ensure!(child.wait()?.success());
    ensure!(std::fs::read(work.path().join("stdin.out"))? == data);

    let unknown = import_file(&b"never added"[..], &mut cairn_protocol::unixfs::NullSink)?.cid;
    let out = via_node(&["cat", &unknown.to_string()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("unknown to the network"),
        "{err}"
    );

    // The API wants the token of the node's `api` file.
    let api: serde_json::Value = serde_json::from_slice(&std::fs::read(node0.join("api"))?)?;
    let forged = work.path().join("forged");
    std::fs::create_dir(&forged)?;
    let wrong = serde_json::json!({ "url": api["url"], "token": "0".repeat(64) });
    std::fs::write(forged.join("api"), wrong.to_string())?;
    let out = Command::new(&cairn)
        .args(["cat", &text, "--data-dir", path(&forged)?])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("wrong token"),
        "{err}"
    );

    // Another key does not open it.
    let wrong = seal::Handle {
        root: handle.root,
        key: Key([1; 32]),
    };
    let out = run(&["cat", &wrong.reveal()])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("does not open") && out.stdout.is_empty(),
        "{err}"
    );

    // No node's files hold a run of plaintext: any run of 63 bytes holds one
    // of its 32-byte windows at a multiple of 32. The same scan finds the
    // ciphertext, which the data pieces hold as is, all but the windows
    // split across two pieces.
    let windows = |bytes: &[u8]| -> HashSet<[u8; 32]> {
        bytes
            .chunks_exact(32)
            .filter_map(|w| w.try_into().ok())
            .collect()
    };
    let mut sealed = Vec::new();
    Sealer::new(&data[..], &handle.key).read_to_end(&mut sealed)?;
    let (plain, cipher) = (windows(&data), windows(&sealed));
    let (mut plain_found, mut cipher_found) = (0, HashSet::new());
    for entry in walk(net.dir.path())? {
        let bytes = std::fs::read(&entry)?;
        for w in bytes.windows(32) {
            plain_found += usize::from(plain.contains(w));
            if cipher.contains(w) {
                cipher_found.insert(w.to_vec());
            }
        }
    }
    ensure!(plain_found == 0, "{plain_found} plaintext windows on disk");
    // No file of any node, its logs included, holds the key.
    let key_text = text.rsplit(':').next().context("key")?;
    for entry in walk(net.dir.path())? {
        let bytes = std::fs::read(&entry)?;
        ensure!(
            !bytes
                .windows(key_text.len())
                .any(|w| w == key_text.as_bytes()),
            "{} holds the key",
            entry.display()
        );
    }
    ensure!(
        cipher_found.len() + 100 > cipher.len(),
        "only {} of {} ciphertext windows on disk",
        cipher_found.len(),
        cipher.len()
    );
    Ok(())
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.is_dir() {
            files.extend(walk(&p)?);
        } else {
            files.push(p);
        }
    }
    Ok(files)
}
