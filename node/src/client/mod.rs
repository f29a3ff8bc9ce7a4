//! The client side of Cairn: adding content to the network and getting it
//! back, over a [`Handle`] to a running node (an ephemeral client, or a
//! storage node serving the control API).
//!
//! Add: import → pack into segments → erasure-code → place each segment's
//! `k + m` pieces on distinct storage nodes near the piece in the keyspace
//! → store the manifest on several nodes, which announce the content root.
//! Get: the root's providers give the manifest → per segment, fetch any `k`
//! pieces (data pieces first) → decode when a data piece is missing → the
//! UnixFS reader verifies every block before writing it.

mod get;
mod put;

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Context as _, Result};
use cairn_protocol::manifest::Manifest;
use cairn_protocol::wire::{FetchRequest, FetchResponse};
use cid::Cid;
use futures::StreamExt as _;
use futures::stream::FuturesUnordered;
use libp2p::PeerId;

pub use get::{Content, GetOptions, GetStats, Unknown};
pub use put::{AddOptions, Added, Input, Progress, add};
pub(crate) use put::{Renewal, renew, upload};

use crate::node::Handle;

/// The ed25519 key behind an ed25519 peer ID: what its receipts are signed with.
pub fn node_key(peer: &PeerId) -> Result<[u8; 32]> {
    let key = libp2p::identity::PublicKey::try_decode_protobuf(peer.as_ref().digest())
        .with_context(|| format!("peer ID {peer} does not carry its public key"))?;
    Ok(key
        .try_into_ed25519()
        .with_context(|| format!("peer {peer} has no ed25519 key"))?
        .to_bytes())
}

/// Finds a manifest of the content `root` in the network: asks the root's
/// providers, all at once, and returns the first manifest that decodes, is
/// valid and describes `root`; `None` when no provider has one. The
/// providers come from a lookup that ends at the first answer naming any
/// (a stalled DHT node does not hold it up), then, should none of those
/// have a manifest, from one that runs its course.
pub async fn find_manifest(net: &Handle, root: Cid) -> Result<Option<Manifest>> {
    let mut asked = HashSet::new();
    for full in [false, true] {
        let providers = match full {
            false => net.first_providers(root).await,
            true => net.providers(root).await,
        }
        .context("cannot look the content up in the DHT")?;
        // A quick lookup that found none ran its full course.
        if providers.is_empty() && !full {
            return Ok(None);
        }
        let fresh = providers.into_iter().filter(|p| asked.insert(*p));
        if let Some(m) = first_manifest(net, root, fresh).await {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// The first valid manifest of `root` any of `peers` sends.
async fn first_manifest(
    net: &Handle,
    root: Cid,
    peers: impl Iterator<Item = PeerId>,
) -> Option<Manifest> {
    let mut asking: FuturesUnordered<_> = peers
        .map(|peer| async move {
            (
                peer,
                net.fetch(peer, FetchRequest::ManifestV1 { root }).await,
            )
        })
        .collect();
    while let Some((peer, answer)) = asking.next().await {
        match answer {
            Ok(FetchResponse::ManifestV1 { data }) => match Manifest::decode(&data) {
                Ok(m) if m.root == root => return Some(m),
                Ok(_) => tracing::warn!(%peer, %root, "peer sent a manifest of other content"),
                Err(e) => tracing::warn!(%peer, %root, error = %e, "peer sent a bad manifest"),
            },
            Ok(other) => tracing::debug!(%peer, %root, ?other, "no manifest from provider"),
            Err(e) => tracing::debug!(%peer, %root, error = %e, "manifest request failed"),
        }
    }
    None
}

/// A poisoned lock still guards plain data: keep going.
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a request may go unanswered before another source is tried
/// alongside it (not instead: a slow answer still counts if it comes first).
pub const DEFAULT_HEDGE_AFTER: Duration = Duration::from_secs(10);

/// A client node of its own for one command: no capacity, a throwaway
/// identity in a temporary directory, joined through `bootstrap`. Keep the
/// directory until the node is stopped.
pub async fn ephemeral(
    bootstrap: Vec<libp2p::Multiaddr>,
) -> Result<(crate::node::Node, tempfile::TempDir)> {
    anyhow::ensure!(
        !bootstrap.is_empty(),
        "no network to reach: give --bootstrap /ip4/…/tcp/…/p2p/<peer id> or set CAIRN_BOOTSTRAP (`cairn devnet` prints one)"
    );
    let dir = tempfile::Builder::new()
        .prefix("cairn-client-")
        .tempdir()
        .context("cannot create a temporary directory")?;
    let mut config = crate::node::Config::new(dir.path().to_path_buf());
    config.capacity = 0;
    config.listen = Vec::new();
    config.bootstrap = bootstrap.clone();
    let node = crate::node::Node::start(config)
        .await
        .context("cannot start the client")?;
    // Reaching no bootstrap peer would show as every CID unknown and every
    // add short of nodes: say what is wrong instead.
    let reach = |addr: &libp2p::Multiaddr| {
        let (handle, addr) = (node.handle.clone(), addr.clone());
        async move {
            // Node::start refused addresses without one.
            let Some(libp2p::multiaddr::Protocol::P2p(peer)) = addr.iter().last() else {
                return Err(format!("{addr} names no peer"));
            };
            handle
                .connect(peer)
                .await
                .map_err(|e| format!("{addr}: {e}"))
        }
    };
    let tries = futures::future::join_all(bootstrap.iter().map(reach)).await;
    if !tries.iter().any(Result::is_ok) {
        node.stop().await;
        let errors: Vec<String> = tries.into_iter().filter_map(Result::err).collect();
        anyhow::bail!(
            "cannot reach the network: no bootstrap peer answered ({}). Is it running (`cairn devnet` prints its current address)?",
            errors.join("; ")
        );
    }
    Ok((node, dir))
}
