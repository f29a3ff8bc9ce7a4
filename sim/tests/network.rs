//! The harness itself: a network of real nodes in one process adds and gets
//! content, and each fault does what it says.

use std::time::{Duration, Instant};

use anyhow::Result;
use cairn_node::client::{AddOptions, GetOptions};
use cairn_protocol::wire::FetchRequest;
use cairn_sim::{Config, Network, State};
use rand::{RngCore as _, SeedableRng as _};

fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_survives_m_crashed_holders_and_returns_after_restart() -> Result<()> {
    let mut net = Network::start(Config {
        nodes: 12,
        ..Config::default()
    })
    .await?;
    let data = bytes(3 << 20, 1);
    let added = net.add(&data, &AddOptions::default()).await?;
    assert_eq!(added.pieces, 9, "one segment of 6+3 pieces");
    assert_eq!(net.get(added.root, GetOptions::default()).await?, data);

    // Crash three nodes that hold pieces: any 6 of 9 still read.
    let mut holders = Vec::new();
    for i in net.up() {
        if net.status(i).await?.pieces > 0 {
            holders.push(i);
        }
    }
    assert!(holders.len() >= 9, "pieces on distinct nodes: {holders:?}");
    for &i in &holders[..3] {
        net.crash(i).await?;
        assert_eq!(net.state(i), State::Down);
    }
    assert_eq!(net.get(added.root, GetOptions::default()).await?, data);

    // Restarted, a node has its identity and pieces back.
    let before = net.peer_id(holders[0]);
    net.restart(holders[0]).await?;
    assert_eq!(net.state(holders[0]), State::Up);
    assert_eq!(net.peer_id(holders[0]), before);
    assert!(net.status(holders[0]).await?.pieces > 0);
    net.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_corrupted_and_dropped_pieces_are_not_served() -> Result<()> {
    let mut net = Network::start(Config {
        nodes: 10,
        seed: 7,
        ..Config::default()
    })
    .await?;
    let data = bytes(2 << 20, 2);
    let added = net.add(&data, &AddOptions::default()).await?;
    let mut holders = Vec::new();
    for i in net.up() {
        if net.status(i).await?.pieces > 0 {
            holders.push(i);
        }
    }
    let (a, b, c) = (holders[0], holders[1], holders[2]);
    net.lose_disk(a).await?;
    assert_eq!(net.status(a).await?.pieces, 0, "a lost disk holds nothing");
    assert!(net.corrupt(b, 1.0)? > 0);
    assert!(net.drop_pieces(c, 1.0)? > 0);
    // Three pieces of nine are bad: the get still succeeds, verified.
    let content = net.get(added.root, GetOptions::default()).await?;
    assert_eq!(content, data);
    net.leave(c).await?;
    assert_eq!(net.state(c), State::Gone);
    assert!(!net.dir(c).exists());
    net.shutdown().await;
    Ok(())
}

/// Whether node `from` gets an answer from node `to` (any answer: the
/// request crossed).
async fn reaches(net: &Network, from: usize, to: usize) -> Result<bool> {
    let h = net.handle(from).expect("up");
    let root = cid::Cid::default();
    let answer = h
        .fetch(net.peer_id(to), FetchRequest::ManifestV1 { root })
        .await;
    if let Err(e) = &answer {
        eprintln!("{from} -> {to}: {e}");
    }
    Ok(answer.is_ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_cut_groups_apart_until_healed_and_slow_nodes_answer_late() -> Result<()> {
    let mut net = Network::start(Config {
        nodes: 8,
        seed: 3,
        ..Config::default()
    })
    .await?;
    assert!(reaches(&net, 0, 7).await?);
    net.partition(vec![vec![0, 1, 2, 3], vec![4, 5, 6, 7]])
        .await?;
    assert!(reaches(&net, 0, 3).await?, "same group");
    assert!(!reaches(&net, 0, 7).await?, "across the partition");
    assert!(!reaches(&net, 6, 1).await?, "across the partition");
    net.heal().await?;
    assert!(reaches(&net, 0, 7).await?, "healed");

    let delay = Duration::from_millis(1500);
    net.slow(5, delay).await?;
    let started = Instant::now();
    assert!(reaches(&net, 0, 5).await?);
    assert!(
        started.elapsed() >= delay,
        "answered after {:?}",
        started.elapsed()
    );
    net.shutdown().await;
    Ok(())
}

/// On a network smaller than a bucket a node announces what it stores by
/// batch, one stream per DHT server for all its keys: the other servers
/// keep its records (the DHT still names it once it has crashed), and it
/// sends fewer requests than the walk and stream per key of kad's own
/// announcements (more than two per server and key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_pieces_are_announced_by_batch_to_every_server() -> Result<()> {
    let mut net = Network::start(Config {
        nodes: 12,
        seed: 11,
        ..Config::default()
    })
    .await?;
    let options = AddOptions {
        piece_size: 64 << 10,
        ..AddOptions::default()
    };
    let added = net.add(&bytes(3 << 20, 4), &options).await?;
    net.announced().await?;
    let mut busiest = (0, 0);
    for i in net.up() {
        let announced = net.status(i).await?.announced;
        if announced > busiest.1 {
            busiest = (i, announced);
        }
    }
    let (holder, announced) = busiest;
    assert!(announced >= 4, "{announced} keys announced at most");
    let status = net.status(holder).await?;
    let servers = net.len() as u64 - 1;
    assert!(
        status.announce_requests < announced * servers,
        "{} requests for {announced} keys",
        status.announce_requests
    );

    let peer = net.peer_id(holder);
    let piece = added
        .segments
        .iter()
        .zip(&added.holders)
        .flat_map(|(pieces, holders)| pieces.iter().zip(holders))
        .find_map(|(piece, h)| (*h == Some(peer)).then_some(*piece))
        .expect("the busiest node holds a piece");
    net.crash(holder).await?;
    let found = net.client().await?.providers(piece).await?;
    assert!(found.contains(&peer), "{found:?}");
    net.shutdown().await;
    Ok(())
}
