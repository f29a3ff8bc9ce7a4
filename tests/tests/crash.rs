//! Guards the piece store's crash safety with a real process: `kill -9`
//! during 20 concurrent uploads, then restart. Every piece that got a
//! receipt must be intact and served; no partial piece may be in the index
//! or served; used capacity must equal the bytes of the pieces held.

mod common;

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, Result, bail, ensure};
use cairn_protocol::block;
use cairn_protocol::wire::{FetchRequest, FetchResponse, StoreResponse};
use cairn_tests::procs::{Proc, bin};
use common::*;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;

const UPLOADS: usize = 20;

fn start(dir: &Path) -> Result<Proc> {
    let data = dir.join("node");
    Proc::spawn(
        &bin("cairn")?,
        &[
            "node",
            "--data-dir",
            data.to_str().context("utf-8")?,
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--capacity",
            "1GiB",
        ],
        dir.join("node.log"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_during_uploads_loses_no_receipted_piece() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut node = start(dir.path())?;
    let id = peer(&node.peer_id)?;
    let client = client(&dir.path().join("client"), &[node.addrs[0].as_str()]).await?;

    let pieces: Vec<Vec<u8>> = (0..UPLOADS)
        .map(|i| random_piece(i as u64, (1 << 20) + i * 100_003))
        .collect();
    let mut uploads: FuturesUnordered<_> = pieces
        .iter()
        .map(|data| {
            let client = &client;
            async move {
                let terms = terms_for(data, 1);
                (terms.piece, offer_and_send(client, id, &terms, data).await)
            }
        })
        .collect();
    // Kill once a few receipts are in and the rest are still in flight.
    let mut receipted = Vec::new();
    while let Some((piece, result)) = uploads.next().await {
        if let Ok(StoreResponse::StoredV1(receipt)) = result {
            receipt.verify(&piece, Some(&node_key(&id)?))?;
            receipted.push(piece);
        }
        if receipted.len() == 3 {
            node.kill9()?;
            break;
        }
    }
    // Receipts that were already on their way still count.
    while let Some((piece, result)) = uploads.next().await {
        if let Ok(StoreResponse::StoredV1(_)) = result {
            receipted.push(piece);
        }
    }
    ensure!(
        receipted.len() < UPLOADS,
        "the kill came after every upload had finished"
    );
    drop(uploads);

    // Restart: every receipted piece is served intact.
    let mut node = start(dir.path())?;
    ensure!(node.peer_id == id.to_string());
    client.handle.dial(addr(&node.addrs[0])?).await?;
    let (mut served, mut served_bytes) = (0, 0u64);
    for data in &pieces {
        let piece = block::piece_cid(data);
        match client
            .handle
            .fetch(id, FetchRequest::PieceV1 { piece })
            .await?
        {
            FetchResponse::PieceV1 { data: got } => {
                ensure!(got[..] == data[..], "piece {piece} served damaged");
                served += 1;
                served_bytes += got.len() as u64;
            }
            FetchResponse::NotFoundV1 if !receipted.contains(&piece) => {}
            other => bail!("receipted piece {piece} lost: {other:?}"),
        }
    }
    ensure!(served >= receipted.len());
    eprintln!(
        "{} receipts before the kill settled, {served} pieces held after restart",
        receipted.len()
    );
    node.stop()?;
    client.stop().await;

    // Offline check: every indexed piece verifies, no stray file, used is exact.
    let out = Command::new(bin("cairn")?)
        .args(["store", "check", "--data-dir"])
        .arg(dir.path().join("node"))
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(
        out.status.success(),
        "store check failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .context("missing line")?;
        Ok(line
            .split_whitespace()
            .next()
            .context("no number")?
            .parse()?)
    };
    ensure!(field("pieces: ")? == served as u64, "{text}");
    ensure!(field("used: ")? == served_bytes, "{text}");
    ensure!(field("bytes on disk: ")? == served_bytes, "{text}");
    ensure!(field("damaged pieces removed: ")? == 0, "{text}");
    ensure!(field("stray files removed: ")? == 0, "{text}");
    Ok(())
}
