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

pub use get::{Budget, Content, GetOptions, GetStats, Unknown};
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
/// (a stalled DHT node does not hold it up); once those have all failed,
/// or [`HEDGE_FLOOR`] has passed without a manifest, a lookup that runs its
/// course names the rest, and they are asked too.
pub async fn find_manifest(net: &Handle, root: Cid) -> Result<Option<Manifest>> {
    const LOOKUP: &str = "cannot look the content up in the DHT";
    let quick = net.first_providers(root).await.context(LOOKUP)?;
    tracing::debug!(%root, providers = quick.len(), "manifest providers, first answer");
    // A quick lookup that found none ran its full course.
    if quick.is_empty() {
        return Ok(None);
    }
    let ask = |peer: PeerId| async move {
        let answer = net.fetch(peer, FetchRequest::ManifestV1 { root }).await;
        (peer, answer)
    };
    let mut asked: HashSet<PeerId> = quick.iter().copied().collect();
    let mut asking: FuturesUnordered<_> = quick.into_iter().map(ask).collect();
    // Lazy: the lookup starts when first polled.
    let full = net.providers(root);
    let patience = tokio::time::sleep(HEDGE_FLOOR);
    tokio::pin!(full, patience);
    let mut looked = false;
    loop {
        tokio::select! {
            Some((peer, answer)) = asking.next() => {
                if let Some(m) = manifest_of(root, peer, answer) {
                    return Ok(Some(m));
                }
            }
            found = &mut full, if !looked && (asking.is_empty() || patience.is_elapsed()) => {
                looked = true;
                tracing::debug!(%root, "manifest providers, every answer");
                for peer in found.context(LOOKUP)? {
                    if asked.insert(peer) {
                        asking.push(ask(peer));
                    }
                }
            }
            () = &mut patience, if !looked && !patience.is_elapsed() => {}
            else => return Ok(None),
        }
    }
}

/// The manifest in a provider's answer, if it is a valid one of `root`.
fn manifest_of(
    root: Cid,
    peer: PeerId,
    answer: Result<FetchResponse, crate::node::RequestError>,
) -> Option<Manifest> {
    match answer {
        Ok(FetchResponse::ManifestV1 { data }) => match Manifest::decode(&data) {
            Ok(m) if m.root == root => return Some(m),
            Ok(_) => tracing::warn!(%peer, %root, "peer sent a manifest of other content"),
            Err(e) => tracing::warn!(%peer, %root, error = %e, "peer sent a bad manifest"),
        },
        Ok(other) => tracing::debug!(%peer, %root, ?other, "no manifest from provider"),
        Err(e) => tracing::debug!(%peer, %root, error = %e, "manifest request failed"),
    }
    None
}

/// A poisoned lock still guards plain data: keep going.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How long a request may go unanswered at most before another source is
/// tried alongside it (not instead: a slow answer still counts if it comes
/// first). Sooner once a command has seen its typical answer time ([`Hedge`]).
pub const DEFAULT_HEDGE_AFTER: Duration = Duration::from_secs(10);

/// Answer times kept by a [`Hedge`]: the command's most recent ones.
const HEDGE_SAMPLES: usize = 32;
/// Answers needed before the typical time counts.
const HEDGE_MIN_SAMPLES: usize = 3;
/// A request is slow once it has taken this many times the typical answer.
const HEDGE_FACTOR: u32 = 4;
/// Never sooner than this: a busy holder is not a stalled one.
const HEDGE_FLOOR: Duration = Duration::from_secs(1);

/// When one command backs up an unanswered request: after [`HEDGE_FACTOR`]
/// times the median of its recent answer times, within [`HEDGE_FLOOR`] and
/// `cap` (only `cap` until a few answers are in). A stalled holder then
/// costs about a second where its peers answer in a quarter of one, and a
/// network slow across the board is not flooded with backups.
pub(crate) struct Hedge {
    cap: Duration,
    recent: std::sync::Mutex<std::collections::VecDeque<Duration>>,
}

impl Hedge {
    pub(crate) fn new(cap: Duration) -> Self {
        Hedge {
            cap,
            recent: Default::default(),
        }
    }

    /// Records how long an answered request took.
    pub(crate) fn answered(&self, took: Duration) {
        let mut recent = lock(&self.recent);
        if recent.len() == HEDGE_SAMPLES {
            recent.pop_front();
        }
        recent.push_back(took);
    }

    /// How long a request may now go unanswered before it is backed up.
    pub(crate) fn after(&self) -> Duration {
        hedge_after(lock(&self.recent).iter().copied(), self.cap)
    }

    /// How often to look for slow requests.
    pub(crate) fn tick(&self) -> Duration {
        self.cap.min(HEDGE_FLOOR) / 4
    }
}

fn hedge_after(recent: impl Iterator<Item = Duration>, cap: Duration) -> Duration {
    let mut recent: Vec<Duration> = recent.collect();
    if recent.len() < HEDGE_MIN_SAMPLES {
        return cap;
    }
    let mid = recent.len() / 2;
    let (_, median, _) = recent.select_nth_unstable(mid);
    (*median * HEDGE_FACTOR).max(HEDGE_FLOOR).min(cap)
}

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

/// Runs `work` on an [`ephemeral`] client, which stops after it whatever
/// `work` returned.
pub async fn with_ephemeral<T>(
    bootstrap: Vec<libp2p::Multiaddr>,
    work: impl AsyncFnOnce(&crate::node::Handle) -> Result<T>,
) -> Result<T> {
    let (node, _dir) = ephemeral(bootstrap).await?;
    let result = work(&node.handle).await;
    node.stop().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_backed_up_after_a_multiple_of_the_typical_answer() {
        let ms = Duration::from_millis;
        let cap = Duration::from_secs(10);
        let after = |times: &[u64]| hedge_after(times.iter().map(|&t| ms(t)), cap);
        // Too few answers to know what is typical: the cap.
        assert_eq!(after(&[]), cap);
        assert_eq!(after(&[300, 300]), cap);
        // Four times the median, not moved by one outlier.
        assert_eq!(after(&[400, 500, 9000, 450, 300]), ms(1800));
        // Never sooner than the floor, never later than the cap.
        assert_eq!(after(&[10, 20, 30]), HEDGE_FLOOR);
        assert_eq!(after(&[5000, 6000, 7000]), cap);
        assert_eq!(hedge_after([ms(10); 3].into_iter(), ms(200)), ms(200));
    }

    #[test]
    fn a_hedge_keeps_only_the_recent_answers() {
        let hedge = Hedge::new(Duration::from_secs(60));
        for _ in 0..HEDGE_SAMPLES {
            hedge.answered(Duration::from_secs(5));
        }
        assert_eq!(hedge.after(), Duration::from_secs(20));
        // The network got faster: once the recent half is fast, so is the hedge.
        for _ in 0..=HEDGE_SAMPLES / 2 {
            hedge.answered(Duration::from_millis(500));
        }
        assert_eq!(hedge.after(), Duration::from_secs(2));
    }
}
