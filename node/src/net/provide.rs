//! Provider announcements by batch. On a network smaller than a bucket a
//! walk finds every DHT server, and the closest servers to any key are all
//! of them. One stream to each then carries an `ADD_PROVIDER` for every key
//! of a batch, where kad's `start_providing` walks the DHT and opens a
//! stream to each server for every key (PROTOCOL.md §9). The messages are
//! Kademlia's own; the receiving side is libp2p-kad's handler, which reads
//! any number of them from one stream.

use std::collections::HashSet;
use std::time::Duration;

use cid::Cid;
use futures::stream::FuturesUnordered;
use futures::{AsyncWriteExt as _, StreamExt as _};
use libp2p::{Multiaddr, PeerId};
use prost::Message as _;

use super::{KAD_PROTOCOL, walks};

/// Keys in one batch, at most.
pub const BATCH: usize = 1024;
/// How long a freshly stored piece waits for others to share its batch.
pub const LINGER: Duration = Duration::from_secs(1);
/// How long a walk's finding (whole network or not) is taken as true.
pub const VIEW_FOR: Duration = Duration::from_secs(60);
/// A batch's sends, at most.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Kademlia's `Message` (libp2p-kad's dht.proto), the fields an
/// `ADD_PROVIDER` uses.
#[derive(Clone, PartialEq, prost::Message)]
struct KadMessage {
    #[prost(int32, tag = "1")]
    r#type: i32,
    #[prost(bytes = "vec", tag = "2")]
    key: Vec<u8>,
    #[prost(message, repeated, tag = "9")]
    provider_peers: Vec<KadPeer>,
    #[prost(int32, tag = "10")]
    cluster_level_raw: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct KadPeer {
    #[prost(bytes = "vec", tag = "1")]
    id: Vec<u8>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    addrs: Vec<Vec<u8>>,
    #[prost(int32, tag = "3")]
    connection: i32,
}

const ADD_PROVIDER: i32 = 2;
/// What libp2p-kad writes in the unused field.
const CLUSTER_LEVEL: i32 = 10;

/// One `ADD_PROVIDER` per key naming `provider` at `addrs`, each framed as
/// Kademlia frames its messages: an unsigned varint length, then the bytes.
pub fn add_provider_frames(keys: &[Cid], provider: PeerId, addrs: &[Multiaddr]) -> Vec<u8> {
    let peer = KadPeer {
        id: provider.to_bytes(),
        addrs: addrs.iter().map(|a| a.to_vec()).collect(),
        connection: 0,
    };
    let mut out = Vec::new();
    for key in keys {
        let message = KadMessage {
            r#type: ADD_PROVIDER,
            key: key.to_bytes(),
            provider_peers: vec![peer.clone()],
            cluster_level_raw: CLUSTER_LEVEL,
        };
        let mut len = unsigned_varint::encode::usize_buffer();
        out.extend_from_slice(unsigned_varint::encode::usize(
            message.encoded_len(),
            &mut len,
        ));
        message
            .encode(&mut out)
            .unwrap_or_else(|_| unreachable!("a Vec grows"));
    }
    out
}

/// Writes `frames` to `peer` on one Kademlia stream and closes it.
pub async fn send(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    frames: &[u8],
) -> Result<(), String> {
    let mut stream = control
        .open_stream(peer, KAD_PROTOCOL)
        .await
        .map_err(|e| e.to_string())?;
    stream.write_all(frames).await.map_err(|e| e.to_string())?;
    stream.close().await.map_err(|e| e.to_string())
}

/// Runs every server's send at once and returns each outcome, and the
/// servers given up on: a frozen one never answers. As with a stalled walk
/// ([`walks`]), those still sending after no send has ended for
/// [`walks::STALL_FACTOR`] times as long as the ended ones took (at least
/// [`walks::STALL_FLOOR`]) are given up, and all after [`SEND_TIMEOUT`].
pub async fn send_all<F: Future<Output = Result<(), String>>>(
    sends: impl IntoIterator<Item = (PeerId, F)>,
) -> (Vec<(PeerId, Result<(), String>)>, Vec<PeerId>) {
    let start = tokio::time::Instant::now();
    let mut waiting: HashSet<PeerId> = HashSet::new();
    let mut running: FuturesUnordered<_> = sends
        .into_iter()
        .map(|(peer, send)| {
            waiting.insert(peer);
            async move { (peer, send.await) }
        })
        .collect();
    let mut ended = Vec::new();
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let deadline = match last {
            None => start + SEND_TIMEOUT,
            Some(last) => (last + walks::patience(last - start)).min(start + SEND_TIMEOUT),
        };
        match tokio::time::timeout_at(deadline, running.next()).await {
            Ok(Some((peer, outcome))) => {
                waiting.remove(&peer);
                ended.push((peer, outcome));
                last = Some(tokio::time::Instant::now());
            }
            Ok(None) | Err(_) => break,
        }
    }
    (ended, waiting.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::block;

    /// The frames split back into one message per key, each naming the
    /// provider and its addresses in the fields libp2p-kad reads.
    #[test]
    fn each_key_gets_one_framed_add_provider() {
        let keys: Vec<Cid> = (0u8..3).map(|i| block::piece_cid(&[i])).collect();
        let provider = PeerId::random();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/4001"
            .parse()
            .unwrap_or_else(|_| unreachable!());
        let mut rest = &add_provider_frames(&keys, provider, std::slice::from_ref(&addr))[..];
        for key in &keys {
            let (len, after) = unsigned_varint::decode::usize(rest).expect("a length");
            let message = KadMessage::decode(&after[..len]).expect("a message");
            assert_eq!(message.r#type, ADD_PROVIDER);
            assert_eq!(message.key, key.to_bytes());
            let [peer] = &message.provider_peers[..] else {
                panic!("one provider: {message:?}")
            };
            assert_eq!(PeerId::from_bytes(&peer.id).ok(), Some(provider));
            assert_eq!(peer.addrs, vec![addr.to_vec()]);
            rest = &after[len..];
        }
        assert!(rest.is_empty());
    }

    /// Sends that end are returned; one that never does is given up once
    /// the others have been done for 8 times as long as they took, at least
    /// 1 s, and not the 10 s a frozen node would otherwise hold the batch.
    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_answers_is_given_up_after_the_floor() {
        let (a, b, frozen) = (PeerId::random(), PeerId::random(), PeerId::random());
        let after = |ms: u64, outcome: Result<(), String>| async move {
            if ms == u64::MAX {
                std::future::pending::<()>().await;
            }
            tokio::time::sleep(Duration::from_millis(ms)).await;
            outcome
        };
        let start = tokio::time::Instant::now();
        let (ended, unreached) = send_all([
            (a, after(10, Ok(()))),
            (b, after(20, Err("refused".into()))),
            (frozen, after(u64::MAX, Ok(()))),
        ])
        .await;
        assert_eq!(ended.len(), 2);
        assert_eq!(unreached, vec![frozen]);
        assert_eq!(
            start.elapsed(),
            Duration::from_millis(20) + walks::STALL_FLOOR
        );

        // All answer: no waiting beyond the last.
        let start = tokio::time::Instant::now();
        let (ended, unreached) = send_all([(a, after(10, Ok(()))), (b, after(300, Ok(())))]).await;
        assert_eq!((ended.len(), unreached.len()), (2, 0));
        assert_eq!(start.elapsed(), Duration::from_millis(300));
    }
}
