//! Guards issue #3 end to end with real processes on loopback: a bootstrap
//! node and six storage nodes form a DHT; pieces are stored, announced,
//! found and fetched verified; bad offers, bad bytes and rotted files are
//! refused; a restarted node keeps its identity and announces again.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use cairn_protocol::wire::{
    AuditRequest, AuditResponse, FetchRequest, FetchResponse, RejectReason, StoreResponse,
    TransferError,
};
use cairn_protocol::{block, proof};
use cairn_tests::procs::{Proc, bin};
use common::*;

const LIMIT: Duration = Duration::from_secs(60);

fn start_node(dir: &Path, i: usize, bootstrap: &str, capacity: &str) -> Result<Proc> {
    // Node 4 speaks QUIC only: the others reach it over QUIC.
    let listen = if i == 4 {
        "/ip4/127.0.0.1/udp/0/quic-v1"
    } else {
        "/ip4/127.0.0.1/tcp/0"
    };
    let data = dir.join(format!("node{i}"));
    let data = data.to_str().context("utf-8 path")?;
    Proc::spawn(
        &bin("cairn")?,
        &[
            "node",
            "--data-dir",
            data,
            "--listen",
            listen,
            "--bootstrap",
            bootstrap,
            "--capacity",
            capacity,
            "--log-format",
            "json",
        ],
        dir.join(format!("node{i}.log")),
    )
}

/// Files under `dir`, at any depth.
fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| {
                if e.path().is_dir() {
                    files_in(&e.path())
                } else {
                    1
                }
            })
            .sum()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_nodes_store_announce_serve_and_refuse() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let boot_dir = dir.path().join("bootstrap");
    let boot = Proc::spawn(
        &bin("cairn-bootstrap")?,
        &[
            "--data-dir",
            boot_dir.to_str().context("utf-8")?,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
        dir.path().join("bootstrap.log"),
    )?;
    let b = boot.addrs[0].as_str();
    ensure!(
        b.ends_with(&format!("/p2p/{}", boot.peer_id)),
        "full multiaddr printed: {b}"
    );
    let mut nodes = Vec::new();
    for i in 0..6 {
        // Node 5 has room for 1 MiB only.
        let capacity = if i == 5 { "1MiB" } else { "64MiB" };
        nodes.push(start_node(dir.path(), i, b, capacity)?);
    }
    let ids: Vec<_> = nodes
        .iter()
        .map(|n| peer(&n.peer_id))
        .collect::<Result<_>>()?;
    let alice = client(&dir.path().join("alice"), &[b]).await?;
    let bob = client(&dir.path().join("bob"), &[b]).await?;

    // Stored on node 0, found by another peer through the DHT, fetched verified.
    let data = random_piece(1, 1 << 20);
    let piece = block::piece_cid(&data);
    put(&alice, ids[0], &data).await?;
    await_provider(&bob, piece, ids[0], LIMIT).await?;
    match bob
        .handle
        .fetch(ids[0], FetchRequest::PieceV1 { piece })
        .await?
    {
        FetchResponse::PieceV1 { data: got } => {
            block::verify(&piece, &got)?;
            ensure!(got[..] == data[..]);
        }
        other => anyhow::bail!("fetch failed: {other:?}"),
    }
    let range = FetchRequest::RangeV1 {
        piece,
        offset: 100_000,
        len: 5000,
    };
    match bob.handle.fetch(ids[0], range).await? {
        FetchResponse::RangeV1 { size, encoded } => {
            let got = proof::decode_range(&piece, size, 100_000..105_000, &encoded)?;
            ensure!(got == data[100_000..105_000]);
        }
        other => anyhow::bail!("range fetch failed: {other:?}"),
    }
    let nonce = [9u8; 32];
    match bob
        .handle
        .audit(ids[0], AuditRequest::ChallengeV1 { piece, nonce })
        .await?
    {
        AuditResponse::ProofV1(p) => proof::verify(&piece, &nonce, &p)?,
        other => anyhow::bail!("audit failed: {other:?}"),
    }

    // Requests on different protocols in flight at once each get their own
    // answer (each protocol numbers its requests from 1: carol's first fetch
    // and first audit share an id).
    let carol = client(&dir.path().join("carol"), &[b]).await?;
    let (fetched, audited) = tokio::join!(
        carol.handle.fetch(ids[0], FetchRequest::PieceV1 { piece }),
        carol
            .handle
            .audit(ids[0], AuditRequest::ChallengeV1 { piece, nonce }),
    );
    ensure!(matches!(fetched?, FetchResponse::PieceV1 { .. }));
    match audited? {
        AuditResponse::ProofV1(p) => proof::verify(&piece, &nonce, &p)?,
        other => anyhow::bail!("audit failed: {other:?}"),
    }
    carol.stop().await;

    // The QUIC-only node stores and serves as well.
    let quic = random_piece(6, 50_000);
    put(&alice, ids[4], &quic).await?;
    let fetch = FetchRequest::PieceV1 {
        piece: block::piece_cid(&quic),
    };
    ensure!(matches!(
        bob.handle.fetch(ids[4], fetch).await?,
        FetchResponse::PieceV1 { .. }
    ));
    ensure!(
        nodes[4].addrs[0].contains("/quic-v1/"),
        "{:?}",
        nodes[4].addrs
    );

    // Larger than the free capacity: refused with the reason, nothing
    // written. One peer may use half a node's capacity (1 MiB here).
    let big = random_piece(2, 2 << 20);
    let answer = offer_and_send(&alice, ids[5], &terms_for(&big, 1), &big).await?;
    ensure!(
        answer == StoreResponse::RejectedV1(RejectReason::OverCapacity { free: 1 << 19 }),
        "{answer:?}"
    );
    ensure!(files_in(&dir.path().join("node5/store/pieces")) == 0);

    // Bytes that do not hash to the piece CID: refused, nothing kept.
    let good = random_piece(3, 300_000);
    let mut bad = good.clone();
    bad[12_345] ^= 1;
    let answer = offer_and_send(&alice, ids[1], &terms_for(&good, 1), &bad).await?;
    ensure!(
        answer == StoreResponse::FailedV1(TransferError::HashMismatch),
        "{answer:?}"
    );
    for sub in ["pieces", "tmp", "trash"] {
        ensure!(
            files_in(&dir.path().join("node1/store").join(sub)) == 0,
            "a file in {sub}/"
        );
    }
    let gone = FetchRequest::PieceV1 {
        piece: block::piece_cid(&good),
    };
    ensure!(bob.handle.fetch(ids[1], gone).await? == FetchResponse::NotFoundV1);

    // A piece rotted on disk is detected on read and never served.
    let rot = random_piece(4, 200_000);
    let rot_cid = block::piece_cid(&rot);
    put(&alice, ids[2], &rot).await?;
    let name = rot_cid.to_string();
    let file = dir
        .path()
        .join("node2/store/pieces")
        .join(&name[name.len() - 2..])
        .join(&name);
    let mut bytes = std::fs::read(&file)?;
    bytes[150_000] ^= 0x10;
    std::fs::write(&file, bytes)?;
    let fetch = FetchRequest::PieceV1 { piece: rot_cid };
    ensure!(bob.handle.fetch(ids[2], fetch.clone()).await? == FetchResponse::NotFoundV1);
    let challenge = AuditRequest::ChallengeV1 {
        piece: rot_cid,
        nonce,
    };
    ensure!(bob.handle.audit(ids[2], challenge).await? == AuditResponse::NotFoundV1);
    ensure!(!file.exists(), "the rotted file is deleted");

    // Restarted on the same data directory: same peer ID, announces again.
    let kept = random_piece(5, 100_000);
    put(&alice, ids[3], &kept).await?;
    nodes[3].stop()?;
    nodes[3]
        .wait_log(LIMIT, |l| l.contains("node stopped"))
        .context("clean shutdown")?;
    nodes[3] = start_node(dir.path(), 3, b, "64MiB")?;
    ensure!(
        nodes[3].peer_id == ids[3].to_string(),
        "identity kept across restarts"
    );
    let announced = nodes[3].wait_log(LIMIT, |l| l.contains("announcement round complete"))?;
    ensure!(announced.contains("\"announced\":1"), "{announced}");
    match bob
        .handle
        .fetch(
            ids[3],
            FetchRequest::PieceV1 {
                piece: block::piece_cid(&kept),
            },
        )
        .await?
    {
        FetchResponse::PieceV1 { data } => ensure!(data[..] == kept[..]),
        other => anyhow::bail!("fetch after restart failed: {other:?}"),
    }
    alice.stop().await;
    bob.stop().await;
    Ok(())
}
