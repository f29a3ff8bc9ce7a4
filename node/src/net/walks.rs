//! DHT walks a node may end early. A walk waits for every peer it asked
//! among the closest; a frozen node (one that accepts TCP but never
//! answers) holds it for Kademlia's 10 s peer timeout, or a dial's. Once a
//! walk with requests still out has had no new answer for [`STALL_FACTOR`]
//! times as long as its answers took to come (at least [`STALL_FLOOR`]),
//! it ends with the peers that did answer. A plain state machine of (now,
//! each walk's answer count); the event loop asks Kademlia and ends them.
//!
//! An announcement ended early during its walk goes on to send its
//! provider record to the closest peers that answered (kad's own phase
//! change), so the record lands on every closest peer but the stalled ones.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::kad::QueryId;

/// A walk is stalled after no new answer for this many times as long as
/// its answers so far took: each round of a healthy walk takes about one
/// round trip, so a silence several rounds long is a peer that will not
/// answer (which would take 10 s to time out).
pub const STALL_FACTOR: u32 = 8;
/// Never stalled sooner than this.
pub const STALL_FLOOR: Duration = Duration::from_secs(1);

/// How long to wait for more answers when those so far took `answered`.
pub fn patience(answered: Duration) -> Duration {
    (answered * STALL_FACTOR).max(STALL_FLOOR)
}

/// How often to look for stalled walks while any run. Answers are counted
/// only here, so a walk's answers seem to take at least this long: at
/// 250 ms a loopback walk would wait 8 × 250 ms = 2 s, not the floor
/// (a frozen node's 300 MB add took 5.8 s against 3.8).
pub const CHECK: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
struct Progress {
    start: Instant,
    /// Answers when last counted, and when that count last changed.
    answers: u32,
    last: Instant,
}

#[derive(Debug, Default)]
pub struct Walks {
    progress: HashMap<QueryId, Progress>,
}

impl Walks {
    pub fn start(&mut self, id: QueryId, now: Instant) {
        let progress = Progress {
            start: now,
            answers: 0,
            last: now,
        };
        self.progress.insert(id, progress);
    }

    /// The walk is over: kad no longer knows it.
    pub fn done(&mut self, id: &QueryId) {
        self.progress.remove(id);
    }

    pub fn is_empty(&self) -> bool {
        self.progress.is_empty()
    }

    pub fn ids(&self) -> Vec<QueryId> {
        self.progress.keys().copied().collect()
    }

    /// Records walk `id`'s `answers` and `pending` requests at `now`;
    /// returns whether to end it: it has answers to end with, requests
    /// still out, and has stalled.
    pub fn stalled(&mut self, id: QueryId, answers: u32, pending: u32, now: Instant) -> bool {
        let Some(p) = self.progress.get_mut(&id) else {
            return false;
        };
        if answers != p.answers {
            p.answers = answers;
            p.last = now;
            return false;
        }
        let patience = patience(p.last.duration_since(p.start));
        let stalled = answers > 0 && pending > 0 && now.duration_since(p.last) >= patience;
        if stalled {
            self.progress.remove(&id);
        }
        stalled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(walks: &mut Walks, start: Instant) -> QueryId {
        // QueryIds come only from a Kademlia behaviour.
        let peer = libp2p::PeerId::random();
        let mut kad = libp2p::kad::Behaviour::new(peer, libp2p::kad::store::MemoryStore::new(peer));
        let id = kad.get_closest_peers(peer);
        walks.start(id, start);
        id
    }

    #[test]
    fn a_walk_ends_early_only_after_answers_stop_coming_with_requests_out() {
        let mut walks = Walks::default();
        let t0 = Instant::now();
        let w = id(&mut walks, t0);
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        // Answers keep coming: not stalled, however long it runs.
        for (i, s) in [0.1, 0.2, 0.3, 0.5].into_iter().enumerate() {
            assert!(!walks.stalled(w, i as u32 + 1, 3, at(s)));
        }
        // No new answer for 8 times the 0.5 s the answers took: stalled.
        assert!(!walks.stalled(w, 4, 1, at(0.5 + 3.9)));
        assert!(walks.stalled(w, 4, 1, at(0.5 + 4.0)));
        assert!(walks.is_empty(), "an ended walk is forgotten");
        assert!(!walks.stalled(w, 4, 1, at(10.0)));
    }

    #[test]
    fn quick_answers_end_a_walk_after_the_floor() {
        let mut walks = Walks::default();
        let t0 = Instant::now();
        let w = id(&mut walks, t0);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert!(!walks.stalled(w, 11, 1, at(20)));
        assert!(!walks.stalled(w, 11, 1, at(20 + 999)));
        assert!(walks.stalled(w, 11, 1, at(20 + 1000)));
    }

    #[test]
    fn a_walk_without_answers_or_without_requests_out_is_not_ended() {
        let mut walks = Walks::default();
        let now = Instant::now();
        let (silent, idle) = (id(&mut walks, now), id(&mut walks, now));
        let late = Instant::now() + Duration::from_secs(60);
        // Nothing to end with: it runs its course (or kad's timeout).
        assert!(!walks.stalled(silent, 0, 3, late));
        // Nothing out: kad is about to finish it itself.
        walks.stalled(idle, 2, 0, now);
        assert!(!walks.stalled(idle, 2, 0, late));
        walks.done(&silent);
        walks.done(&idle);
        assert!(walks.is_empty());
    }
}
