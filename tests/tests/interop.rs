//! Cairn as another libp2p implementation sees it: js-libp2p (Noise, Yamux,
//! identify, ping, kad-dht) dials a devnet's nodes, finds its peers through
//! Cairn's Kademlia, and gets content back over `/cairn/fetch/1.0.0` written
//! only from docs/PROTOCOL.md (`js/interop.mjs`), checking every block.

use anyhow::{Context as _, Result, ensure};
use cairn_tests::procs::Devnet;
use cairn_tests::reference;
use rand::{RngCore as _, SeedableRng as _};
use sha2::{Digest as _, Sha256};

#[test]
fn js_libp2p_speaks_to_cairn_nodes_and_reads_content_by_the_spec() -> Result<()> {
    let net = Devnet::start(9, "1GiB")?;
    let dir = tempfile::tempdir()?;
    // Three raw leaves and their dag-pb root: a stream that is not the file.
    let mut data = vec![0u8; 700_000];
    rand::rngs::StdRng::seed_from_u64(11).fill_bytes(&mut data);
    let file = dir.path().join("content.bin");
    std::fs::write(&file, &data)?;
    let root = net.cairn(&["add", "--quiet", file.to_str().context("utf-8 path")?])?;

    let mut args = vec![root.as_str()];
    args.extend(net.nodes.iter().map(String::as_str));
    let seen = reference::script("interop.mjs", &args)?;

    let agent = seen["agent"].as_str().unwrap_or_default();
    ensure!(agent.starts_with("cairn/"), "identify's agent: {seen}");
    let protocols: Vec<&str> = seen["protocols"]
        .as_array()
        .context("protocols")?
        .iter()
        .filter_map(|p| p.as_str())
        .collect();
    for p in [
        "/cairn/kad/1.0.0",
        "/cairn/store/1.0.0",
        "/cairn/fetch/1.0.0",
        "/cairn/audit/1.0.0",
        "/ipfs/ping/1.0.0",
    ] {
        ensure!(protocols.contains(&p), "{p} not among {protocols:?}");
    }
    // The lookup walked the network: every storage node but the one asked
    // first, which does not name itself.
    let closest = seen["closest"].as_array().context("closest")?;
    let found = net
        .nodes
        .iter()
        .filter(|a| {
            closest
                .iter()
                .any(|p| a.ends_with(p.as_str().unwrap_or("-")))
        })
        .count();
    ensure!(
        found >= 8,
        "the kad lookup found {found} of 9 nodes: {seen}"
    );

    let manifest = &seen["manifest"];
    ensure!(manifest["root"] == root.as_str(), "{manifest}");
    ensure!(manifest["version"] == 1 && manifest["k"] == 6 && manifest["m"] == 3);
    ensure!(seen["blocks"] == 4, "three leaves and a root: {seen}");
    ensure!(
        seen["file_sha256"] == format!("{:x}", Sha256::digest(&data)).as_str(),
        "js-libp2p read other bytes: {seen}"
    );
    Ok(())
}
