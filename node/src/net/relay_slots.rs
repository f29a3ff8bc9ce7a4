//! Slots on the bootstrap peers' relays, for a node AutoNAT finds
//! unreachable: which relay circuits to listen on, and when to ask again.
//! A plain state machine of (now, events); the event loop does the IO.
//!
//! A relay is asked again when its listener closes (the connection to it
//! dropped, or it refused) and when it has not accepted a reservation
//! within [`WAIT`] (a request that never got an answer): a node behind a
//! NAT must not stay unreachable because one attempt went wrong.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::core::transport::ListenerId;
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// How long a relay may take to accept a reservation, and the pause before
/// asking again after a listener closed.
pub const WAIT: Duration = Duration::from_secs(30);

#[derive(Debug)]
struct Slot {
    circuit: Multiaddr,
    listener: Option<ListenerId>,
    /// When the current listener started, or when the last one closed.
    since: Instant,
    accepted: bool,
}

impl Slot {
    /// No listener since `now`: asked again [`WAIT`] later.
    fn lost(&mut self, now: Instant) {
        self.listener = None;
        self.since = now;
        self.accepted = false;
    }
}

#[derive(Debug, Default)]
pub struct RelaySlots {
    slots: HashMap<PeerId, Slot>,
}

/// What the event loop should do now.
#[derive(Debug, Default, PartialEq)]
pub struct Actions {
    pub remove: Vec<ListenerId>,
    /// `(relay, circuit address)`: listen on each, then call
    /// [`RelaySlots::listening`].
    pub listen: Vec<(PeerId, Multiaddr)>,
}

impl RelaySlots {
    /// AutoNAT found this node unreachable: slots are wanted on the relays
    /// at `relays` (addresses ending in `/p2p/<peer id>`; others are
    /// skipped). Returns the circuits to listen on now.
    pub fn want(&mut self, now: Instant, relays: &[Multiaddr]) -> Actions {
        for addr in relays {
            let Some(Protocol::P2p(peer)) = addr.iter().last() else {
                continue;
            };
            self.slots.entry(peer).or_insert_with(|| Slot {
                circuit: addr.clone().with(Protocol::P2pCircuit),
                listener: None,
                since: now,
                accepted: false,
            });
        }
        self.due(now, true)
    }

    /// AutoNAT found this node reachable: slots are no longer needed.
    /// Returns the listeners to remove.
    pub fn drop_all(&mut self) -> Vec<ListenerId> {
        self.slots.drain().filter_map(|(_, s)| s.listener).collect()
    }

    pub fn listening(&mut self, relay: PeerId, listener: ListenerId, now: Instant) {
        if let Some(s) = self.slots.get_mut(&relay) {
            s.listener = Some(listener);
            s.since = now;
            s.accepted = false;
        }
    }

    /// A listen that failed at once counts as a listener that closed.
    pub fn failed(&mut self, relay: PeerId, now: Instant) {
        if let Some(s) = self.slots.get_mut(&relay) {
            s.lost(now);
        }
    }

    pub fn accepted(&mut self, relay: PeerId) {
        if let Some(s) = self.slots.get_mut(&relay) {
            s.accepted = true;
        }
    }

    /// Listener `id` closed; true if it was a relay's.
    pub fn closed(&mut self, id: ListenerId, now: Instant) -> bool {
        match self.slots.values_mut().find(|s| s.listener == Some(id)) {
            Some(s) => {
                s.lost(now);
                true
            }
            None => false,
        }
    }

    /// When [`RelaySlots::due`] has something to do next, if ever.
    pub fn next_check(&self) -> Option<Instant> {
        self.slots
            .values()
            .filter(|s| !s.accepted)
            .map(|s| s.since + WAIT)
            .min()
    }

    /// Relays to ask again at `now`: those without a listener for
    /// [`WAIT`] (or at once, if `first`), and those whose listener has
    /// waited [`WAIT`] for an answer (removed, then listened on anew).
    pub fn due(&mut self, now: Instant, first: bool) -> Actions {
        let mut actions = Actions::default();
        for (peer, s) in &mut self.slots {
            let waited = now.saturating_duration_since(s.since) >= WAIT;
            match s.listener {
                None if first || waited => {}
                Some(id) if !s.accepted && waited => actions.remove.push(id),
                _ => continue,
            }
            s.listener = None;
            actions.listen.push((*peer, s.circuit.clone()));
        }
        actions
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(n: u8) -> (PeerId, Multiaddr) {
        let peer = PeerId::random();
        let addr: Multiaddr = format!("/ip4/10.0.0.{n}/tcp/4001/p2p/{peer}")
            .parse()
            .expect("address");
        (peer, addr)
    }

    #[test]
    fn relays_are_asked_again_until_they_accept() {
        let t0 = Instant::now();
        let (a, a_addr) = relay(1);
        let (b, b_addr) = relay(2);
        let no_peer: Multiaddr = "/ip4/10.0.0.3/tcp/4001".parse().expect("address");
        let mut slots = RelaySlots::default();
        let first = slots.want(t0, &[a_addr.clone(), b_addr.clone(), no_peer]);
        let circuit = |addr: &Multiaddr| addr.clone().with(Protocol::P2pCircuit);
        let mut listen = first.listen.clone();
        listen.sort_by_key(|(p, _)| *p == b);
        assert_eq!(listen, vec![(a, circuit(&a_addr)), (b, circuit(&b_addr))]);
        assert!(first.remove.is_empty());
        let (la, lb) = (ListenerId::next(), ListenerId::next());
        slots.listening(a, la, t0);
        slots.listening(b, lb, t0);
        // Wanted again while listening: nothing more to do.
        assert_eq!(
            slots.want(t0, std::slice::from_ref(&a_addr)),
            Actions::default()
        );

        // A accepts; B never answers, so it is asked again after WAIT.
        slots.accepted(a);
        assert_eq!(slots.next_check(), Some(t0 + WAIT));
        assert_eq!(slots.due(t0 + WAIT / 2, false), Actions::default());
        let retry = slots.due(t0 + WAIT, false);
        assert_eq!(
            retry,
            Actions {
                remove: vec![lb],
                listen: vec![(b, circuit(&b_addr))],
            }
        );
        let lb2 = ListenerId::next();
        let t1 = t0 + WAIT;
        slots.listening(b, lb2, t1);
        slots.accepted(b);
        assert_eq!(slots.next_check(), None);

        // A's connection drops: its listener closes; asked again after
        // WAIT, not at once (a relay that is down is not hammered).
        let t2 = t1 + Duration::from_secs(100);
        assert!(slots.closed(la, t2));
        assert!(!slots.closed(ListenerId::next(), t2), "not a relay's");
        assert_eq!(slots.next_check(), Some(t2 + WAIT));
        assert_eq!(slots.due(t2 + WAIT / 2, false), Actions::default());
        assert_eq!(
            slots.due(t2 + WAIT, false).listen,
            vec![(a, circuit(&a_addr))]
        );
        // A listen that fails at once waits WAIT too.
        slots.failed(a, t2 + WAIT);
        assert_eq!(slots.next_check(), Some(t2 + WAIT + WAIT));

        // Reachable after all: every relay listener goes.
        assert_eq!(slots.drop_all(), vec![lb2]);
        assert_eq!(slots.next_check(), None);
    }
}
