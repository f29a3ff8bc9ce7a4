//! The audit time limit (issue #6): how long an honest holder takes to
//! answer a challenge for a 4 MiB piece, next to the least a holder without
//! the piece needs to rebuild it first (fetch k = 6 pieces, decode, prove),
//! both on this machine's loopback in the same run, and the pinner's limit.
//!
//! `cargo bench -p cairn-node --bench audit`
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytes::Bytes;
use cairn_node::node::{Config, Node};
use cairn_node::pinner::{Settings, audit_limit};
use cairn_protocol::erasure::{self, Scheme};
use cairn_protocol::record::Terms;
use cairn_protocol::wire::{
    AuditRequest, AuditResponse, FetchRequest, FetchResponse, StoreRequest, StoreResponse, Transfer,
};
use cairn_protocol::{block, proof};
use futures::future::try_join_all;
use rand::RngCore as _;

const PIECE: usize = 4 << 20;
const AUDITS: usize = 200;

fn config(dir: &std::path::Path, capacity: u64, bootstrap: Vec<libp2p::Multiaddr>) -> Config {
    let mut c = Config::new(dir.to_path_buf());
    c.capacity = capacity;
    c.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()];
    c.bootstrap = bootstrap;
    c
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let holder = Node::start(config(&dir.path().join("holder"), 1 << 30, Vec::new())).await?;
    let addr = holder.listen_addrs[0]
        .clone()
        .with(libp2p::multiaddr::Protocol::P2p(holder.peer_id));
    let auditor = Node::start(config(&dir.path().join("auditor"), 0, vec![addr])).await?;
    let (net, peer) = (&auditor.handle, holder.peer_id);

    // A segment of 6+3 pieces of 4 MiB; the holder keeps piece 0.
    let scheme = Scheme { k: 6, m: 3 };
    let mut segment = vec![0u8; PIECE * 6];
    rand::thread_rng().fill_bytes(&mut segment);
    let shards = erasure::encode(scheme, &segment)?;
    let piece = block::piece_cid(&shards[0]);
    let terms = Terms {
        piece,
        size: PIECE as u64,
        expires_at: net.now() + 86_400,
        nonce: [7; 16],
    };
    net.connect(peer).await?;
    let offer = net.store(peer, StoreRequest::OfferV1(terms)).await?;
    if !matches!(offer, StoreResponse::AcceptedV1 { .. }) {
        bail!("offer refused: {offer:?}");
    }
    let transfer = Transfer {
        piece,
        nonce: [7; 16],
        data: Bytes::from(shards[0].clone()),
    };
    let stored = net.store(peer, StoreRequest::TransferV1(transfer)).await?;
    if !matches!(stored, StoreResponse::StoredV1(_)) {
        bail!("transfer failed: {stored:?}");
    }

    // Honest: challenge → verified proof, on the open connection.
    let mut times = Vec::with_capacity(AUDITS);
    let mut proof_bytes = 0;
    for _ in 0..AUDITS {
        let mut nonce = [0; 32];
        rand::thread_rng().fill_bytes(&mut nonce);
        let t = Instant::now();
        let AuditResponse::ProofV1(p) = net
            .audit(peer, AuditRequest::ChallengeV1 { piece, nonce })
            .await?
        else {
            bail!("the holder lost the piece");
        };
        times.push(t.elapsed());
        proof::verify(&piece, &nonce, &p)?;
        proof_bytes += p.encoded.len();
    }
    times.sort_unstable();
    let (median, p99) = (times[AUDITS / 2], times[AUDITS * 99 / 100]);

    // Lazy: fetch k pieces (all from the one holder, concurrently: loopback
    // is the best case), rebuild the missing piece, prove.
    let mut fetch_times = Vec::new();
    for _ in 0..5 {
        let t = Instant::now();
        let got =
            try_join_all((0..scheme.k).map(|_| net.fetch(peer, FetchRequest::PieceV1 { piece })))
                .await?;
        if got
            .iter()
            .any(|r| !matches!(r, FetchResponse::PieceV1 { .. }))
        {
            bail!("fetch failed");
        }
        fetch_times.push(t.elapsed());
    }
    fetch_times.sort_unstable();
    let fetch = fetch_times[0];
    let t = Instant::now();
    let mut have: Vec<Option<Vec<u8>>> = shards.into_iter().map(Some).collect();
    have[0] = None;
    have[7] = None;
    have[8] = None;
    erasure::reconstruct(scheme, &mut have, false)?;
    let decode = t.elapsed();
    let rebuilt = have[0].take().unwrap();
    let t = Instant::now();
    proof::prove(&rebuilt, &[1; 32])?;
    let prove = t.elapsed();
    let lazy = fetch + decode + prove;
    let mut rtts = Vec::new();
    for _ in 0..AUDITS {
        let t = Instant::now();
        net.fetch(peer, FetchRequest::ManifestV1 { root: piece })
            .await?;
        rtts.push(t.elapsed());
    }
    rtts.sort_unstable();
    let rtt = rtts[AUDITS / 2];
    let limit = audit_limit(&Settings::default(), rtt);
    println!(
        "honest audit answer (4 MiB piece, loopback TCP, {AUDITS} audits): median {:.1} ms, p99 {:.1} ms",
        ms(median),
        ms(p99)
    );
    println!(
        "rebuild before answering, at best: {:.1} ms = fetch 6 × 4 MiB {:.1} ms + decode {:.1} ms + prove {:.1} ms",
        ms(lazy),
        ms(fetch),
        ms(decode),
        ms(prove)
    );
    println!(
        "pinner's limit: {:.1} ms (2 × round trip {:.2} ms + allowance); honest p99 {:.1}× under it, rebuild {:.1}× over it",
        ms(limit),
        ms(rtt),
        ms(limit) / ms(p99),
        ms(lazy) / ms(limit)
    );
    // Audit traffic: every stored piece is audited every `audit_every` on
    // average; a GiB stored is 256 pieces of 4 MiB.
    let per_audit = proof_bytes as f64 / AUDITS as f64;
    let audits_per_day = 86_400.0 / Settings::default().upkeep.audit_every as f64;
    println!(
        "audit traffic: {:.0} KiB of proof per audit; {:.1} MiB per GiB stored per day ({audits_per_day:.0} audits of each piece a day)",
        per_audit / 1024.0,
        per_audit * 256.0 * audits_per_day / (1 << 20) as f64
    );
    auditor.stop().await;
    holder.stop().await;
    Ok(())
}
