//! Issue #6 on the simulator: the client pins what it adds, audits the
//! holders, rates them and repairs what is lost. The clock runs fast so
//! that audits (every 10 simulated minutes here) and the offline grace (20
//! simulated minutes) pass in seconds.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Result;
use cairn_node::client::{AddOptions, Added, GetOptions};
use cairn_node::node::Handle;
use cairn_node::pinner;
use cairn_sim::Network;
use cairn_sim::pins::{placements, status, wait_for, whole};
use common::{bytes, config};

/// A network of `nodes` whose client added and pinned `n` contents of 1 MiB.
async fn with_content(
    nodes: usize,
    seed: u64,
    n: u64,
) -> Result<(Network, Handle, Vec<Vec<u8>>, Vec<Added>)> {
    let mut net = Network::start(config(nodes, seed)).await?;
    let contents: Vec<Vec<u8>> = (0..n).map(|i| bytes(1 << 20, seed * 100 + i)).collect();
    let mut added = Vec::new();
    for c in &contents {
        added.push(net.add(c, &AddOptions::default()).await?);
    }
    let client = net.client().await?;
    Ok((net, client, contents, added))
}

/// Nodes holding a piece of `added`, by the pinner's records.
fn holders(client: &Handle, added: &[Added]) -> Result<HashSet<String>> {
    Ok(placements(client, added, true)?
        .into_iter()
        .map(|(_, h)| h)
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_of_nodes_leaving_loses_no_content() -> Result<()> {
    let (mut net, client, contents, added) = with_content(20, 11, 3).await?;
    assert!(whole(&client, &added)?, "every piece placed and healthy");

    // 6 of 20 nodes leave for good, holders first, in two waves of 3: a
    // segment may lose 3 of its 9 pieces at once and still rebuild.
    let held = holders(&client, &added)?;
    let mut leaving: Vec<usize> = net
        .up()
        .into_iter()
        .filter(|&i| held.contains(&net.peer_id(i).to_string()))
        .take(6)
        .collect();
    assert_eq!(leaving.len(), 6, "6 holders to leave");
    let mut lost = 0;
    for wave in [leaving.split_off(3), leaving] {
        for &i in &wave {
            let peer = net.peer_id(i).to_string();
            for a in &added {
                lost += status(&client, a)?
                    .segments
                    .iter()
                    .flat_map(|g| &g.pieces)
                    .filter(|p| p.holder.as_deref() == Some(&peer))
                    .count();
            }
            net.leave(i).await?;
        }
        let gone: HashSet<String> = wave.iter().map(|&i| net.peer_id(i).to_string()).collect();
        wait_for(
            "repaired onto nodes still here",
            Duration::from_secs(120),
            || Ok(holders(&client, &added)?.is_disjoint(&gone) && whole(&client, &added)?),
        )
        .await?;
    }
    for (a, c) in added.iter().zip(&contents) {
        assert_eq!(&net.get(a.root, GetOptions::default()).await?, c);
    }
    let counters = status(&client, &added[0])?.counters;
    assert!(
        counters.pieces_rebuilt >= lost as u64,
        "{lost} pieces lost, {} rebuilt",
        counters.pieces_rebuilt
    );
    let piece = (contents[0].len() as u64).div_ceil(6);
    // The figure docs/BENCHMARKS.md reports.
    eprintln!(
        "RESULT_REPAIR lost={lost} rebuilt={} repairs={} traffic_per_piece={:.2}",
        counters.pieces_rebuilt,
        counters.repairs,
        counters.repair_bytes as f64 / (counters.pieces_rebuilt * piece) as f64
    );
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn droppers_are_caught_and_restarts_are_not_failures() -> Result<()> {
    let (mut net, client, contents, added) = with_content(20, 12, 8).await?;
    let placed_before = placements(&client, &added, true)?;

    // 10% of the nodes (2 of 20), the two holding the most pinned pieces,
    // silently drop half of them (rounded up); 3 other holders restart.
    let mut by_holder: HashMap<String, Vec<String>> = HashMap::new();
    for (piece, holder) in &placed_before {
        by_holder
            .entry(holder.clone())
            .or_default()
            .push(piece.clone());
    }
    let mut ranked: Vec<(usize, usize)> = net
        .up()
        .into_iter()
        .map(|i| {
            let n = by_holder
                .get(&net.peer_id(i).to_string())
                .map_or(0, Vec::len);
            (n, i)
        })
        .collect();
    ranked.sort_unstable_by(|a, b| b.cmp(a));
    let droppers: Vec<usize> = ranked[..2].iter().map(|&(_, i)| i).collect();
    let restarting: Vec<usize> = ranked[2..5].iter().map(|&(_, i)| i).collect();
    let mut dropped: HashSet<(String, String)> = HashSet::new();
    for &i in &droppers {
        let peer = net.peer_id(i).to_string();
        let mut pieces = by_holder[&peer].clone();
        pieces.sort();
        for piece in pieces.iter().take(pieces.len().div_ceil(2)) {
            assert!(net.drop_piece(i, &piece.parse()?)?, "{peer} held {piece}");
            dropped.insert((piece.clone(), peer.clone()));
        }
    }
    // The restarting nodes stay down until an audit has found one of them
    // down, then come back with their pieces.
    let restart_ids: HashSet<_> = restarting.iter().map(|&i| net.peer_id(i)).collect();
    for &i in &restarting {
        net.stop(i).await?;
    }
    wait_for("a down node audited", Duration::from_secs(60), || {
        Ok(pinner::reputations(&client)?
            .iter()
            .any(|(p, r)| restart_ids.contains(p) && r.unreachable > 0.0))
    })
    .await?;
    for &i in &restarting {
        net.restart(i).await?;
    }
    let dropper_ids: HashSet<_> = droppers.iter().map(|&i| net.peer_id(i)).collect();

    // Every dropper is caught, and every dropped piece rebuilt on another
    // node.
    wait_for("droppers caught", Duration::from_secs(120), || {
        let reps = pinner::reputations(&client)?;
        let caught = reps
            .iter()
            .filter(|(p, r)| dropper_ids.contains(p) && r.failed > 0.0)
            .count();
        let placed = placements(&client, &added, true)?;
        Ok(caught == droppers.len() && placed.is_disjoint(&dropped) && whole(&client, &added)?)
    })
    .await?;
    let now = client.now();
    let config = config(0, 0).pinner.upkeep;
    for (peer, rep) in pinner::reputations(&client)? {
        if dropper_ids.contains(&peer) {
            assert!(!rep.in_good_standing(now, &config), "{peer} dropped pieces");
        } else {
            assert_eq!(rep.failed, 0.0, "honest {peer} never fails an audit");
        }
    }
    // Once caught, a dropper gets no more pieces. (Before, it may: a repair
    // can choose a dropper no audit has caught yet.) An honest holder
    // leaves; every piece it held is rebuilt, none on a dropper.
    let placed_now = placements(&client, &added, true)?;
    let leaving = net
        .up()
        .into_iter()
        .find(|i| {
            let peer = net.peer_id(*i).to_string();
            !droppers.contains(i) && placed_now.iter().any(|(_, h)| *h == peer)
        })
        .expect("an honest holder");
    let gone = net.peer_id(leaving).to_string();
    let its: HashSet<String> = placed_now
        .iter()
        .filter(|(_, h)| *h == gone)
        .map(|(p, _)| p.clone())
        .collect();
    net.leave(leaving).await?;
    wait_for(
        "rebuilt without the one gone",
        Duration::from_secs(120),
        || Ok(!holders(&client, &added)?.contains(&gone) && whole(&client, &added)?),
    )
    .await?;
    let dropper_names: HashSet<String> = dropper_ids.iter().map(ToString::to_string).collect();
    // New placements only: a manifest copy has several holders, a dropper
    // perhaps among them since the add.
    let rebuilt: Vec<(String, String)> = placements(&client, &added, true)?
        .difference(&placed_now)
        .filter(|(p, _)| its.contains(p))
        .cloned()
        .collect();
    let pieces: HashSet<&String> = rebuilt.iter().map(|(p, _)| p).collect();
    assert_eq!(pieces.len(), its.len(), "each of its pieces rebuilt");
    for (piece, holder) in rebuilt {
        assert!(
            !dropper_names.contains(&holder),
            "caught dropper {holder} got piece {piece} by a repair"
        );
    }
    for (a, c) in added.iter().zip(&contents) {
        assert_eq!(&net.get(a.root, GetOptions::default()).await?, c);
    }
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pinned_content_outlives_its_term_and_unpinned_content_does_not() -> Result<()> {
    // Terms of 2 h; the pinner renews with a quarter of its 2 h term left.
    let term = Duration::from_secs(2 * 3600);
    let mut config = config(12, 13);
    config.speed = 400;
    config.pinner.term = term;
    let mut net = Network::start(config).await?;
    let options = AddOptions {
        term,
        ..Default::default()
    };
    let content = bytes(1 << 20, 301);
    let kept = net.add(&content, &options).await?;
    let gone = net.add(&bytes(1 << 20, 300), &options).await?;
    let client = net.client().await?;
    assert!(pinner::unpin(&client, &gone.root)?);
    let expires = client.now() + term.as_secs();
    let files = |a: &Added| -> HashSet<String> {
        a.segments
            .iter()
            .flatten()
            .chain([&a.manifest])
            .map(|c| c.to_string())
            .collect()
    };
    let (kept_files, gone_files) = (files(&kept), files(&gone));
    let on_disk = |net: &Network| -> Result<HashSet<String>> {
        let mut names = HashSet::new();
        for i in net.up() {
            for path in net.piece_files(i)? {
                names.extend(path.file_name().map(|n| n.to_string_lossy().into_owned()));
            }
        }
        Ok(names)
    };
    assert!(
        on_disk(&net)?.is_superset(&gone_files),
        "all stored at first"
    );

    // Wait until half a term past the first expiry (3 simulated hours,
    // 27 s): the expiry sweep (every 10 simulated minutes) has deleted
    // every piece of the unpinned content and freed its space, while the
    // pinned content's terms were renewed.
    wait_for(
        "half a term past the expiry",
        Duration::from_secs(120),
        || Ok(client.now() >= expires + term.as_secs() / 2),
    )
    .await?;
    wait_for("expired everywhere", Duration::from_secs(30), || {
        Ok(on_disk(&net)?.is_disjoint(&gone_files))
    })
    .await?;
    let missing: Vec<_> = kept_files.difference(&on_disk(&net)?).cloned().collect();
    assert!(
        missing.is_empty(),
        "pinned pieces kept; missing {missing:?}; {:#?}",
        status(&client, &kept)?
    );
    let s = status(&client, &kept)?;
    let renewed = s
        .segments
        .iter()
        .flat_map(|g| &g.pieces)
        .chain(&s.manifest_copies)
        .filter(|p| p.expires_at > expires)
        .count();
    assert_eq!(renewed, kept_files.len() - 1 + s.manifest_copies.len());
    assert_eq!(
        (s.counters.audits_failed, s.counters.pieces_rebuilt),
        (0, 0),
        "kept by renewals, not by repairs"
    );
    assert_eq!(net.get(kept.root, GetOptions::default()).await?, content);
    let used: u64 = {
        let mut used = 0;
        for i in net.up() {
            used += net.status(i).await?.used;
        }
        used
    };
    let kept_bytes: u64 =
        kept.piece_lens[0] * 9 + kept.manifest_size * s.manifest_copies.len() as u64;
    assert_eq!(used, kept_bytes, "only the pinned content's bytes are held");
    net.shutdown().await;
    Ok(())
}
