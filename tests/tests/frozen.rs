//! A frozen node (SIGSTOP: the kernel keeps its connections and accepts new
//! ones, but nothing answers) costs an add and a get a moment, not the
//! 10 s timeouts it could hold each of them up for: Kademlia's per peer,
//! a dial's, and the default cap on backing up a slow piece. Requests wait
//! for an address only until a connection is up, DHT walks (announcements
//! too) end once only the frozen node is left to answer, and a get backs up
//! a piece after a multiple of the other pieces' answer time.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use cairn_tests::procs::{Devnet, signal};
use rand::{RngCore as _, SeedableRng as _};

/// The shortest timeout a frozen node could make either command wait out.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Thaws a frozen process when dropped, so the devnet can stop it.
struct Thaw(String);

impl Drop for Thaw {
    fn drop(&mut self) {
        let _ = signal(&self.0, "CONT");
    }
}

#[test]
fn a_frozen_node_costs_an_add_and_a_get_seconds_not_timeouts() -> Result<()> {
    let devnet = Devnet::start(12, "1GiB")?;
    let dir = tempfile::tempdir()?;
    let file = |name: &str, seed: u64| -> Result<(String, Vec<u8>)> {
        let mut data = vec![0; 10 << 20];
        rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
        let path = dir.path().join(name);
        std::fs::write(&path, &data)?;
        Ok((path.to_str().context("path")?.to_owned(), data))
    };
    let add = |path: &str| -> Result<serde_json::Value> {
        Ok(serde_json::from_str(
            &devnet.cairn(&["add", "--json", path])?,
        )?)
    };
    let (first, data) = file("first", 1)?;
    let added = add(&first)?;
    let cid = added["cid"].as_str().context("cid")?.to_owned();

    // The node holding the first data piece freezes.
    let holder = added["holders"][0][0]
        .as_str()
        .context("add --json names the first piece's holder")?
        .to_owned();
    let n = devnet
        .nodes
        .iter()
        .position(|a| a.ends_with(&holder))
        .context("the holder is a devnet node")?;
    let frozen = n + 1;
    let pid = devnet.node_pid(frozen)?;
    signal(&pid, "STOP")?;
    let _thaw = Thaw(pid);

    let out = dir.path().join("out");
    let start = Instant::now();
    devnet.cairn(&["get", &cid, "-o", out.to_str().context("path")?])?;
    let took = start.elapsed();
    ensure!(std::fs::read(&out)? == data, "get returns the file");
    ensure!(took < TIMEOUT, "the get waited out a timeout: {took:?}");

    let (second, data) = file("second", 2)?;
    let start = Instant::now();
    let added = add(&second)?;
    let took = start.elapsed();
    ensure!(took < TIMEOUT, "the add waited out a timeout: {took:?}");
    // Each live node announces what it stored without waiting for the
    // frozen one. An announcement that waited out Kademlia's timeout would
    // end 10 s after its piece was stored, late in the add: 7 s after the
    // add's end is already too late.
    let added_at = Instant::now();
    for n in (1..=devnet.nodes.len()).filter(|&i| i != frozen) {
        let dir = devnet.node_dir(n);
        let dir = dir.to_str().context("path")?;
        loop {
            let status: serde_json::Value =
                serde_json::from_str(&devnet.cairn(&["status", "--json", "--data-dir", dir])?)?;
            if status["announcing"] == 0 {
                break;
            }
            ensure!(
                added_at.elapsed() < TIMEOUT * 7 / 10,
                "node-{n:02} still announcing: {status}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let placed: Vec<&str> = added["holders"]
        .as_array()
        .context("holders")?
        .iter()
        .flat_map(|s| s.as_array().into_iter().flatten())
        .filter_map(|h| h.as_str())
        .collect();
    ensure!(placed.len() == 9, "every piece placed: {placed:?}");
    ensure!(
        !placed.contains(&holder.as_str()),
        "nothing placed on the frozen node"
    );
    let cid = added["cid"].as_str().context("cid")?;
    let out = dir.path().join("out2");
    devnet.cairn(&["get", cid, "-o", out.to_str().context("path")?])?;
    ensure!(std::fs::read(&out)? == data, "get returns the second file");
    Ok(())
}
