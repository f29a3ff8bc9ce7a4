//! Node benchmarks (issue #3), each printed next to its reference measured
//! in the same run:
//! - idle RSS of `cairn node` and `cairn-bootstrap` processes;
//! - startup with 1,000,000 pieces in the index, next to an empty index;
//! - one announcement round of 100,000 pieces into a 7-node DHT on
//!   loopback, next to the republish interval it must fit in.
//!
//! `cargo bench -p cairn-node --bench node` (build the binaries first:
//! `cargo build --release --bins`). CAIRN_BENCH_PIECES changes the 100,000.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cairn_node::node::{Config, Node};
use cairn_node::store::{Entry, Limits, Store};
use cairn_protocol::block;
use cairn_protocol::record::{Receipt, Terms};
use cid::Cid;

/// Writes `n` index entries of 4 MiB pieces (index only, no files).
fn fill(store: &Store, n: u64) -> Result<()> {
    let receipt = Receipt {
        node: [0; 32],
        terms: Terms {
            piece: block::piece_cid(b""),
            size: 4 << 20,
            expires_at: 4_000_000_000,
            nonce: [0; 16],
        },
    }
    .sign(&ed25519_dalek::SigningKey::from_bytes(&[1; 32]));
    let mut i = 0u64;
    while i < n {
        let batch: Vec<(Cid, Entry)> = (i..(i + 100_000).min(n))
            .map(|j| {
                let entry = Entry {
                    size: 4 << 20,
                    expires_at: 4_000_000_000,
                    stored_at: 1_800_000_000,
                    stored_by: vec![0; 38],
                    receipt: receipt.clone(),
                    last_audit: None,
                    root: None,
                };
                (block::piece_cid(&j.to_le_bytes()), entry)
            })
            .collect();
        store.insert_index_only(&batch)?;
        i += batch.len() as u64;
    }
    Ok(())
}

fn local_config(dir: &Path, bootstrap: Vec<libp2p::Multiaddr>) -> Config {
    let mut c = Config::new(dir.to_path_buf());
    c.capacity = u64::MAX / 2;
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.bootstrap = bootstrap;
    c
}

fn filled_dir(root: &Path, name: &str, n: u64) -> Result<std::path::PathBuf> {
    let dir = root.join(name);
    let (store, _) = Store::open(&dir.join("store"), Limits::new(u64::MAX / 2))?;
    fill(&store, n)?;
    Ok(dir)
}

async fn startup() -> Result<()> {
    let root = tempfile::tempdir()?;
    let empty = root.path().join("empty");
    let full = filled_dir(root.path(), "full", 1_000_000)?;
    let time = |dir: std::path::PathBuf| async move {
        let t = Instant::now();
        let node = Node::start(local_config(&dir, Vec::new())).await?;
        let took = t.elapsed();
        let pieces = node.handle.status().await?.pieces;
        node.stop().await;
        anyhow::Ok((took, pieces))
    };
    time(empty.clone()).await?; // creates the identity and empty stores
    time(full.clone()).await?;
    let (base, _) = time(empty).await?;
    let (took, pieces) = time(full).await?;
    println!(
        "startup with {pieces} pieces in the index: {:.1} ms; with an empty index: {:.1} ms (target ≤ 1000 ms)",
        took.as_secs_f64() * 1e3,
        base.as_secs_f64() * 1e3
    );
    Ok(())
}

async fn announce(n: u64) -> Result<()> {
    let root = tempfile::tempdir()?;
    let first = Node::start(local_config(&root.path().join("n0"), Vec::new())).await?;
    let boot = vec![
        first.listen_addrs[0]
            .clone()
            .with_p2p(first.peer_id)
            .unwrap(),
    ];
    let mut nodes = vec![first];
    for i in 1..7 {
        let dir = root.path().join(format!("n{i}"));
        nodes.push(Node::start(local_config(&dir, boot.clone())).await?);
    }
    let dir = filled_dir(root.path(), "holder", n)?;
    let t = Instant::now();
    let holder = Node::start(local_config(&dir, boot)).await?;
    // Polled once a second: the figure is seconds long.
    let status = loop {
        let s = holder.handle.status().await?;
        if s.announce_rounds > 0 {
            break s;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let took = status.last_round.unwrap_or_else(|| t.elapsed());
    let interval = Config::new(dir).announce_interval;
    println!(
        "announced {} pieces in {:.1} s ({:.0}/s) to a 7-peer DHT, {:.2} DHT requests per piece; \
         republish interval {} s: the round takes {:.3}% of it",
        status.announced,
        took.as_secs_f64(),
        status.announced as f64 / took.as_secs_f64(),
        status.announce_requests as f64 / status.announced.max(1) as f64,
        interval.as_secs(),
        100.0 * took.as_secs_f64() / interval.as_secs_f64()
    );
    holder.stop().await;
    for n in nodes {
        n.stop().await;
    }
    Ok(())
}

fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("no value")?
        .parse()?)
}

fn idle_rss() -> Result<()> {
    let cairn = Path::new(env!("CARGO_BIN_EXE_cairn"));
    let boot_bin = cairn.with_file_name("cairn-bootstrap");
    let dir = tempfile::tempdir()?;
    let spawn = |bin: &Path, args: &[&str]| {
        Command::new(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot run {} (cargo build --release --bins)",
                    bin.display()
                )
            })
    };
    let d = |s: &str| dir.path().join(s).to_str().unwrap().to_string();
    let tcp0 = "/ip4/127.0.0.1/tcp/0";
    let mut boot = spawn(&boot_bin, &["--data-dir", &d("b"), "--listen", tcp0])?;
    let mut node = spawn(
        cairn,
        &[
            "node",
            "--data-dir",
            &d("n"),
            "--listen",
            tcp0,
            "--capacity",
            "1GiB",
        ],
    )?;
    // Idle means started and settled: measured after 5 s.
    std::thread::sleep(Duration::from_secs(5));
    let (b, n) = (rss_kib(boot.id())?, rss_kib(node.id())?);
    let _ = (boot.kill(), node.kill(), boot.wait(), node.wait());
    println!(
        "idle RSS: cairn-bootstrap {:.1} MiB (target < 30 MiB), cairn node {:.1} MiB",
        b as f64 / 1024.0,
        n as f64 / 1024.0
    );
    Ok(())
}

fn main() -> Result<()> {
    let n = std::env::var("CAIRN_BENCH_PIECES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    idle_rss()?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(startup())?;
    rt.block_on(announce(n))?;
    Ok(())
}
