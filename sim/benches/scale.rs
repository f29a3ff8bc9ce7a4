//! How many full Cairn nodes one process holds (issue #5): for each N, a
//! fresh `cairn-sim scale --nodes N` brings N nodes up on the in-memory
//! transport, adds 20 files and runs 1,000 provider lookups from random
//! nodes; its wall time, CPU time and peak memory are printed next to the
//! machine's own limits (cores, memory) read in the same run.
//!
//! `cargo build --release -p cairn-sim && cargo bench -p cairn-sim --bench scale`
//! CAIRN_SCALE_NODES lists the sizes (default 100,300,500,1000,2000); a
//! size that fails or would not fit in memory ends the run.
#![allow(clippy::print_stdout)]

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use cairn_tests::procs::bin;

fn machine() -> Result<(usize, f64)> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    let total_kib: f64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    Ok((cores, total_kib / 1024.0 / 1024.0))
}

fn main() -> Result<()> {
    let sizes: Vec<usize> = std::env::var("CAIRN_SCALE_NODES")
        .unwrap_or_else(|_| "100,300,500,1000,2000".into())
        .split(',')
        .map(|s| s.trim().parse().with_context(|| format!("bad size {s:?}")))
        .collect::<Result<_>>()?;
    let (cores, mem_gib) = machine()?;
    let sim = bin("cairn-sim")?;
    println!("machine: {cores} cores, {mem_gib:.1} GiB memory");
    println!(
        "{:>6} {:>7} {:>9} {:>9} {:>9} {:>8} {:>7} {:>8} {:>9} {:>8} {:>9} {:>9}",
        "nodes",
        "up (s)",
        "CPU/join",
        "conn/node",
        "idle CPU",
        "adds",
        "found",
        "CPU/look",
        "wall (s)",
        "CPU (s)",
        "CPU/core",
        "peak GiB"
    );
    let mut largest = None;
    for n in sizes {
        let out = Command::new(&sim)
            .args(["scale", "--nodes", &n.to_string()])
            .output()
            .context("cannot run cairn-sim")?;
        if !out.status.success() {
            println!(
                "{n:>6} failed: {}",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            break;
        }
        let r: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("no JSON from cairn-sim scale")?;
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let found = f("lookups_found") / f("lookups");
        let peak = f("peak_rss_mib") / 1024.0;
        println!(
            "{n:>6} {:>7.0} {:>8.2}s {:>9.1} {:>8.2}c {:>4}/{:<3} {:>6.1}% {:>6.0}ms {:>9.0} {:>8.0} {:>9.2} {:>5.2}/{:.0}",
            f("startup_s"),
            f("startup_cpu_s") / n as f64,
            f("connections_per_node"),
            f("idle_cores"),
            f("adds_ok"),
            f("adds"),
            found * 100.0,
            f("lookups_cpu_s") / f("lookups") * 1000.0,
            f("wall_s"),
            f("cpu_s"),
            f("cpu_s") / f("wall_s") / cores as f64,
            peak,
            mem_gib,
        );
        if found < 0.99 {
            println!("{n:>6} provider lookups below 99%");
        } else {
            largest = Some(n);
        }
        // The next size, growing at the rate this one did, must fit.
        if peak * 2.2 > mem_gib * 0.9 {
            println!("the next size would not fit in memory");
            break;
        }
    }
    match largest {
        Some(n) => println!("largest N completed with lookups ≥ 99%: {n}"),
        None => bail!("no size completed"),
    }
    Ok(())
}
