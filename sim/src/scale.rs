//! How many nodes one process holds: bring up N real nodes, run a fixed
//! workload (adds, then provider lookups from random nodes), and measure
//! time, CPU and peak memory.

use std::time::Instant;

use anyhow::{Context as _, Result};
use cairn_node::client::AddOptions;
use cid::Cid;
use futures::StreamExt as _;
use rand::Rng as _;
use serde::Serialize;

use crate::network::{Config, Network};
use crate::run::content_bytes;

#[derive(Debug, Clone)]
pub struct Options {
    pub nodes: usize,
    /// Content added (64 KiB each: 9 pieces and a manifest, so 10 provider
    /// records each).
    pub adds: usize,
    /// Provider lookups, each from a random node for a random piece.
    pub lookups: usize,
    pub noise: bool,
    pub join_concurrency: usize,
    pub idle_timeout: std::time::Duration,
    pub dht_refresh: Option<std::time::Duration>,
    pub seed: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub nodes: usize,
    pub noise: bool,
    /// Real seconds to bring every node up and joined.
    pub startup_s: f64,
    /// Peak memory once the network is up, before the workload.
    pub startup_rss_mib: f64,
    /// CPU seconds spent bringing the network up.
    pub startup_cpu_s: f64,
    /// CPU the network burns with nothing to do once up: CPU seconds per
    /// real second over [`IDLE_WINDOW`] (1.0 = one core busy).
    pub idle_cores: f64,
    /// Mean peers each node is connected to once up.
    pub connections_per_node: f64,
    /// Mean entries in each node's routing table once up.
    pub routing_per_node: f64,
    pub adds: usize,
    pub adds_ok: usize,
    pub adds_s: f64,
    pub lookups: usize,
    /// Lookups that named at least one provider.
    pub lookups_found: usize,
    pub lookups_s: f64,
    pub lookups_cpu_s: f64,
    pub wall_s: f64,
    /// User plus system CPU time of the whole process.
    pub cpu_s: f64,
    pub peak_rss_mib: f64,
}

/// Lookups in flight at once.
const LOOKUPS_IN_FLIGHT: usize = 32;

/// How long the idle network's CPU use is measured.
const IDLE_WINDOW: std::time::Duration = std::time::Duration::from_secs(20);

pub async fn scale(o: &Options) -> Result<Outcome> {
    let started = Instant::now();
    let mut net = Network::start(Config {
        nodes: o.nodes,
        capacity: 64 << 20,
        noise: o.noise,
        seed: o.seed,
        join_concurrency: o.join_concurrency,
        idle_timeout: o.idle_timeout,
        dht_refresh: o.dht_refresh,
        ..Config::default()
    })
    .await?;
    let startup = started.elapsed();
    let (mut connected, mut routing) = (0, 0);
    for i in net.up() {
        let s = net.status(i).await?;
        connected += s.connected_peers;
        routing += s.routing_table;
    }
    let (startup_cpu_s, startup_rss_mib) = process_usage()?;
    tracing::info!(nodes = o.nodes, secs = startup.as_secs_f64(), "network up");
    tokio::time::sleep(IDLE_WINDOW).await;
    let idle_cores = (process_usage()?.0 - startup_cpu_s) / IDLE_WINDOW.as_secs_f64();

    let t = Instant::now();
    let mut pieces: Vec<Cid> = Vec::new();
    let mut adds_ok = 0;
    let options = AddOptions::default();
    for i in 0..o.adds {
        let bytes = content_bytes(o.seed, i as u64, 64 << 10);
        match net.add(&bytes, &options).await {
            Ok(added) => {
                adds_ok += 1;
                pieces.extend(added.segments.into_iter().flatten());
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "add failed"),
        }
    }
    let adds_s = t.elapsed();
    net.announced().await?;

    let t = Instant::now();
    let cpu_before = process_usage()?.0;
    let mut asks = Vec::with_capacity(o.lookups);
    for _ in 0..o.lookups {
        let (Some(node), false) = (net.random_up(), pieces.is_empty()) else {
            break;
        };
        let piece = pieces[net.rng().gen_range(0..pieces.len())];
        asks.push((net.handle(node).context("node is up")?, piece));
    }
    let found = futures::stream::iter(asks)
        .map(|(h, piece)| async move {
            // The asking node may be the holder: it counts itself.
            matches!(h.providers(piece).await, Ok(p) if !p.is_empty())
        })
        .buffer_unordered(LOOKUPS_IN_FLIGHT)
        .filter(|ok| std::future::ready(*ok))
        .count()
        .await;
    let lookups_s = t.elapsed();
    let lookups_cpu_s = process_usage()?.0 - cpu_before;
    net.shutdown().await;
    let (cpu_s, peak_rss_mib) = process_usage()?;
    Ok(Outcome {
        nodes: o.nodes,
        noise: o.noise,
        startup_s: startup.as_secs_f64(),
        startup_rss_mib,
        startup_cpu_s,
        idle_cores,
        connections_per_node: connected as f64 / o.nodes as f64,
        routing_per_node: routing as f64 / o.nodes as f64,
        adds: o.adds,
        adds_ok,
        adds_s: adds_s.as_secs_f64(),
        lookups: o.lookups,
        lookups_found: found,
        lookups_s: lookups_s.as_secs_f64(),
        lookups_cpu_s,
        wall_s: started.elapsed().as_secs_f64(),
        cpu_s,
        peak_rss_mib,
    })
}

/// CPU seconds (user + system) and peak resident memory (MiB) of this
/// process so far, from /proc.
pub fn process_usage() -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("cannot read /proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after ')'.
    let ticks = |i: usize| -> f64 { fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0.0) };
    // /proc reports in USER_HZ, 100 on Linux.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    let status =
        std::fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let hwm_kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    Ok((cpu, hwm_kib / 1024.0))
}
