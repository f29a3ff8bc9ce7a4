//! Issue #6's upkeep figures, measured on the simulator next to what the
//! durability model predicts for the same settings:
//!
//! - detection: every node of 20 silently drops 1% of the pinned pieces it
//!   holds (at least one); how long until its pinner catches it, at the
//!   default audit schedule (goal: 99% within 24 simulated hours);
//! - repair traffic per lost piece at 10+20: exactly as many holders leave
//!   as bring a segment to its repair threshold; bytes fetched and uploaded
//!   per rebuilt piece (goal: at most 2.0× the piece size).
//!
//! `cargo bench -p cairn-sim --bench upkeep`; CAIRN_DETECTION_RUNS sets the
//! detection runs (default 3, each a fresh network).
#![allow(clippy::print_stdout)]

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use cairn_node::client::AddOptions;
use cairn_node::{pinner, upkeep};
use cairn_protocol::erasure::Scheme;
use cairn_sim::pins::{placements, status, wait_for, whole};
use cairn_sim::{Config, Network};
use rand::{RngCore as _, SeedableRng as _};

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// A network whose pinner keeps the default schedule; answers may take
/// 1 s, since every node shares the machine's cores.
fn config(nodes: usize, seed: u64, speed: u32, upkeep: upkeep::Config) -> Config {
    Config {
        nodes,
        seed,
        speed,
        pinner: pinner::Settings {
            upkeep,
            audit_allowance: Duration::from_secs(1),
            ..Default::default()
        },
        ..Config::default()
    }
}

/// Hours from dropping to the first failed audit, per node; `None` if not
/// caught within 24 h.
/// Also returns the pieces dropped and the audits failed (one per dropped
/// piece caught, if no honest answer failed).
async fn detection(seed: u64) -> Result<(Vec<Option<f64>>, usize, u64)> {
    let day = 24 * 3600;
    let mut net = Network::start(config(20, seed, 1000, upkeep::Config::default())).await?;
    // 6 × 12 MiB in 64 KiB pieces: 192 segments, 1,728 pieces, ~86 a node.
    let options = AddOptions {
        piece_size: 64 << 10,
        ..Default::default()
    };
    let mut added = Vec::new();
    for i in 0..6 {
        added.push(net.add(&bytes(12 << 20, seed * 10 + i), &options).await?);
    }
    let client = net.client().await?;
    let mut by_holder: HashMap<String, Vec<String>> = HashMap::new();
    for (piece, holder) in placements(&client, &added, false)? {
        by_holder.entry(holder).or_default().push(piece);
    }
    let start = client.now();
    let mut dropped = 0;
    for i in net.up() {
        let mut pieces = by_holder
            .remove(&net.peer_id(i).to_string())
            .unwrap_or_default();
        pieces.sort();
        let n = pieces.len().div_ceil(100);
        for piece in &pieces[..n] {
            ensure!(net.drop_piece(i, &piece.parse()?)?, "node {i} held {piece}");
        }
        dropped += n;
    }
    let ids: Vec<_> = net.up().into_iter().map(|i| net.peer_id(i)).collect();
    let mut caught: HashMap<_, f64> = HashMap::new();
    // Polled every 100 ms of real time: 100 simulated seconds.
    let _ = wait_for(
        "every node caught",
        Duration::from_secs(day / 1000 + 5),
        || {
            let hours = client.now().saturating_sub(start) as f64 / 3600.0;
            for (peer, rep) in pinner::reputations(&client)? {
                if rep.failed > 0.0 && hours <= 24.0 {
                    caught.entry(peer).or_insert(hours);
                }
            }
            Ok(caught.len() == ids.len() || hours > 24.0)
        },
    )
    .await;
    let failed = status(&client, &added[0])?.counters.audits_failed;
    net.shutdown().await;
    let caught = ids.iter().map(|p| caught.get(p).copied()).collect();
    Ok((caught, dropped, failed))
}

async fn repair_traffic() -> Result<()> {
    let scheme = Scheme { k: 10, m: 20 };
    let fast = upkeep::Config {
        audit_every: 600,
        offline_grace: 1200,
        ..Default::default()
    };
    let threshold = upkeep::repair_threshold(scheme, &fast);
    let leave = (scheme.k + scheme.m - threshold) as usize;
    // Room for every rebuilt piece on a node holding none of the segment.
    let nodes = scheme.total() + 2 * leave;
    let mut net = Network::start(config(nodes, 21, 200, fast)).await?;
    let options = AddOptions {
        scheme,
        ..Default::default()
    };
    let added = vec![net.add(&bytes(10 << 20, 21), &options).await?];
    let client = net.client().await?;
    let piece = added[0].piece_lens[0];
    let holders: HashSet<String> = placements(&client, &added, false)?
        .into_iter()
        .map(|(_, h)| h)
        .collect();
    let leaving: Vec<usize> = net
        .up()
        .into_iter()
        .filter(|&i| holders.contains(&net.peer_id(i).to_string()))
        .take(leave)
        .collect();
    ensure!(leaving.len() == leave, "{leave} holders to leave");
    let gone: HashSet<String> = leaving
        .iter()
        .map(|&i| net.peer_id(i).to_string())
        .collect();
    for &i in &leaving {
        net.leave(i).await?;
    }
    wait_for("repaired", Duration::from_secs(300), || {
        let now: HashSet<String> = placements(&client, &added, true)?
            .into_iter()
            .map(|(_, h)| h)
            .collect();
        Ok(now.is_disjoint(&gone) && whole(&client, &added)?)
    })
    .await?;
    let c = status(&client, &added[0])?.counters;
    println!(
        "repair at {scheme}: {nodes} nodes, {leave} of {} holders leave (threshold {threshold}); \
         {} repairs rebuilt {} pieces of {} bytes and placed {} manifest copies; \
         traffic per rebuilt piece {:.2}× (model {:.2}×, goal ≤ 2.0×)",
        scheme.total(),
        c.repairs,
        c.pieces_rebuilt,
        piece,
        c.manifest_copies,
        c.repair_bytes as f64 / (c.pieces_rebuilt * piece) as f64,
        upkeep::repair_cost(scheme, threshold),
    );
    net.shutdown().await;
    Ok(())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let runs: u64 = std::env::var("CAIRN_DETECTION_RUNS")
        .unwrap_or_else(|_| "3".into())
        .parse()
        .context("CAIRN_DETECTION_RUNS is not a number")?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("machine: {cores} cores");
    repair_traffic().await?;

    let every = upkeep::Config::default().audit_every as f64 / 3600.0;
    let mut times = Vec::new();
    let (mut nodes, mut dropped, mut failed) = (0, 0, 0);
    for seed in 1..=runs {
        let (caught, d, f) = detection(seed).await?;
        nodes += caught.len();
        dropped += d;
        failed += f;
        times.extend(caught);
    }
    let mut hours: Vec<f64> = times.iter().flatten().copied().collect();
    hours.sort_by(f64::total_cmp);
    let at =
        |q: f64| hours.get(((hours.len() as f64 * q) as usize).min(hours.len().saturating_sub(1)));
    println!(
        "detection: {runs} runs × 20 nodes, each dropping 1% of ~86 pieces ({dropped} pieces); \
         {} of {nodes} nodes caught within 24 h, {failed} audits failed; hours to catch: median {:.1}, p90 {:.1}, max {:.1} \
         (model at one audit per piece every {every:.0} h on average: {:.2}% within 24 h, median {:.1} h)",
        hours.len(),
        at(0.5).copied().unwrap_or(f64::NAN),
        at(0.9).copied().unwrap_or(f64::NAN),
        hours.last().copied().unwrap_or(f64::NAN),
        100.0 * (1.0 - (-24.0 / every).exp()),
        every * std::f64::consts::LN_2,
    );
    Ok(())
}
