//! What a pinning client knows of its pins, as tests and benchmarks of
//! upkeep read it.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{Result, bail};
use cairn_node::client::Added;
use cairn_node::node::Handle;
use cairn_node::pinner::{self, PinStatus};

/// The pin of `added` on `client`.
pub fn status(client: &Handle, added: &Added) -> Result<PinStatus> {
    match pinner::status(client, &added.root)? {
        Some(s) => Ok(s),
        None => bail!("{} is not pinned", added.root),
    }
}

/// Whether every segment of every pin has all its pieces healthy, and
/// every manifest copy is.
pub fn whole(client: &Handle, added: &[Added]) -> Result<bool> {
    for a in added {
        let s = status(client, a)?;
        if s.segments
            .iter()
            .any(|g| g.healthy as usize != g.pieces.len())
            || s.manifest_copies.iter().any(|c| c.state != "healthy")
        {
            return Ok(false);
        }
    }
    Ok(true)
}

/// (piece, holder) of every pinned piece with a known holder, and of every
/// manifest copy if `copies`.
pub fn placements(
    client: &Handle,
    added: &[Added],
    copies: bool,
) -> Result<HashSet<(String, String)>> {
    let mut out = HashSet::new();
    for a in added {
        let s = status(client, a)?;
        let copies = if copies {
            s.manifest_copies
        } else {
            Vec::new()
        };
        let pieces = s.segments.into_iter().flat_map(|g| g.pieces);
        out.extend(
            pieces
                .chain(copies)
                .filter_map(|p| Some((p.piece, p.holder?))),
        );
    }
    Ok(out)
}

/// Polls `cond` every 100 ms (real time) until it holds, for `limit` at
/// most: the pinner's rounds are the network's own, with no event to wait
/// on.
pub async fn wait_for(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond()? {
        if tokio::time::Instant::now() >= deadline {
            bail!("not {what} after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
