//! A lazy node: one that keeps only the manifests of the content it holds
//! pieces of, not the pieces, and rebuilds a piece from `k` others of its
//! segment only when an audit asks for it. Its audits must fail on time
//! (issue #6); the fault is the real work such a node would do, on the
//! real network.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use cairn_node::node::{Challenge, Handle};
use cairn_protocol::erasure::{self, Scheme};
use cairn_protocol::proof;
use cairn_protocol::wire::{AuditResponse, FetchRequest, FetchResponse};
use cid::Cid;
use futures::StreamExt as _;
use futures::stream;
use tokio::sync::mpsc;

/// Where a piece sits: its segment's scheme and pieces, and its index.
#[derive(Debug, Clone)]
pub(crate) struct Place {
    pub scheme: Scheme,
    pub segment: Vec<Cid>,
    pub index: usize,
}

/// How long the lazy node took to answer each challenge with a valid
/// proof, in order; a challenge it could not answer is left out.
pub type Answers = Arc<Mutex<Vec<Duration>>>;

/// Answers `challenges` by rebuilding each piece first, until the node stops.
pub(crate) async fn answer(
    node: Handle,
    places: HashMap<Cid, Place>,
    mut challenges: mpsc::Receiver<Challenge>,
    answers: Answers,
) {
    while let Some(c) = challenges.recv().await {
        let start = Instant::now();
        let proof = match places.get(&c.piece) {
            Some(place) => rebuild(&node, place)
                .await
                .and_then(|data| Ok(proof::prove(&data, &c.nonce)?)),
            None => Err(anyhow::anyhow!("not a piece of the lazy node's")),
        };
        let resp = match proof {
            Ok(p) => {
                answers
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(start.elapsed());
                AuditResponse::ProofV1(p)
            }
            Err(e) => {
                tracing::debug!(piece = %c.piece, error = %format!("{e:#}"), "lazy node could not rebuild");
                AuditResponse::NotFoundV1
            }
        };
        let _ = c.answer.send(resp);
    }
}

/// The piece at `place`, rebuilt from `k` others of its segment, each
/// found in the DHT and fetched from its holder.
async fn rebuild(node: &Handle, place: &Place) -> Result<Vec<u8>> {
    let k = place.scheme.k as usize;
    let others = place
        .segment
        .iter()
        .copied()
        .enumerate()
        .filter(|(i, _)| *i != place.index);
    let mut fetched = stream::iter(others)
        .map(|(i, piece)| async move { (i, fetch(node, piece).await) })
        .buffer_unordered(place.scheme.total());
    let mut shards: Vec<Option<Vec<u8>>> = vec![None; place.segment.len()];
    let mut have = 0;
    while have < k {
        let Some((i, got)) = fetched.next().await else {
            bail!("only {have} of {k} pieces could be fetched");
        };
        if let Ok(data) = got {
            shards[i] = Some(data);
            have += 1;
        }
    }
    drop(fetched);
    erasure::reconstruct(place.scheme, &mut shards, true)?;
    shards[place.index]
        .take()
        .context("rebuild left the piece out")
}

async fn fetch(node: &Handle, piece: Cid) -> Result<Vec<u8>> {
    let me = node.peer_id();
    let holder = node
        .providers(piece)
        .await?
        .into_iter()
        .find(|p| *p != me)
        .context("no holder found")?;
    match node.fetch(holder, FetchRequest::PieceV1 { piece }).await? {
        FetchResponse::PieceV1 { data } => Ok(Vec::from(data)),
        other => bail!("{holder} answered {other:?}"),
    }
}
