//! Shared by the network tests: an in-process client node and piece helpers.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use cairn_node::node::{Config, Node};
use cairn_protocol::block;
use cairn_protocol::record::{SignedReceipt, Terms};
use cairn_protocol::wire::{StoreRequest, StoreResponse, Transfer};
use cid::Cid;
use libp2p::{Multiaddr, PeerId};
use rand::{Rng as _, SeedableRng as _};

/// A client: a node with no capacity (it asks, it does not serve).
pub(crate) async fn client(dir: &Path, bootstrap: &[&str]) -> Result<Node> {
    let mut config = Config::new(dir.to_path_buf());
    config.capacity = 0;
    config.listen = vec!["/ip4/127.0.0.1/tcp/0".parse()?];
    config.bootstrap = bootstrap
        .iter()
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    Ok(Node::start(config).await?)
}

pub(crate) fn random_piece(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut data = vec![0u8; len];
    rng.fill(&mut data[..]);
    data
}

pub(crate) fn terms_for(data: &[u8], nonce: u8) -> Terms {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Terms {
        piece: block::piece_cid(data),
        size: data.len() as u64,
        expires_at: now + 7 * 86_400,
        nonce: [nonce; 16],
    }
}

pub(crate) use cairn_node::client::node_key;

/// Offers `terms` to `peer`; if accepted, sends `data`. Returns the final answer.
pub(crate) async fn offer_and_send(
    client: &Node,
    peer: PeerId,
    terms: &Terms,
    data: &[u8],
) -> Result<StoreResponse> {
    let answer = client
        .handle
        .store(peer, StoreRequest::OfferV1(terms.clone()))
        .await?;
    if !matches!(answer, StoreResponse::AcceptedV1 { .. }) {
        return Ok(answer);
    }
    let transfer = Transfer {
        piece: terms.piece,
        nonce: terms.nonce,
        data: data.to_vec().into(),
    };
    Ok(client
        .handle
        .store(peer, StoreRequest::TransferV1(transfer))
        .await?)
}

/// Stores a piece and checks the receipt is `peer`'s, for this piece.
pub(crate) async fn put(client: &Node, peer: PeerId, data: &[u8]) -> Result<SignedReceipt> {
    let terms = terms_for(data, 1);
    match offer_and_send(client, peer, &terms, data).await? {
        StoreResponse::StoredV1(receipt) => {
            receipt.verify(&terms.piece, Some(&node_key(&peer)?))?;
            Ok(receipt)
        }
        other => bail!("{peer} did not store the piece: {other:?}"),
    }
}

/// Looks `piece` up until the DHT names `provider`, for at most `limit`.
pub(crate) async fn await_provider(
    client: &Node,
    piece: Cid,
    provider: PeerId,
    limit: Duration,
) -> Result<()> {
    tokio::time::timeout(limit, async {
        loop {
            if client.handle.providers(piece).await?.contains(&provider) {
                return Ok::<_, anyhow::Error>(());
            }
        }
    })
    .await
    .context("the DHT never named the provider")?
}

pub(crate) fn peer(id: &str) -> Result<PeerId> {
    id.parse().context("bad peer id")
}

pub(crate) fn addr(a: &str) -> Result<Multiaddr> {
    a.parse().context("bad multiaddr")
}
