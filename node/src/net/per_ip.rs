//! A cap on inbound connections from one IP address, checked when a
//! connection arrives, before its handshake: peer IDs are free, addresses
//! are not. Loopback is exempt (a machine's own devnet and tools), and so
//! is any address without an IP (the simulator's memory transport).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::multiaddr::Protocol;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, ListenFailure, NetworkBehaviour,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

/// Inbound connections, pending or established, from one IP address.
/// Default 16.
pub const DEFAULT_MAX_PER_IP: u32 = 16;

#[derive(Debug, thiserror::Error)]
#[error("{ip} already has {max} connections to this node")]
pub struct TooMany {
    ip: IpAddr,
    max: u32,
}

pub struct Behaviour {
    max: u32,
    open: HashMap<IpAddr, u32>,
    by_connection: HashMap<ConnectionId, IpAddr>,
}

impl Behaviour {
    pub fn new(max: u32) -> Self {
        Behaviour {
            max,
            open: HashMap::new(),
            by_connection: HashMap::new(),
        }
    }

    /// Counts a connection from `remote`, or refuses it.
    fn admit(&mut self, id: ConnectionId, remote: &Multiaddr) -> Result<(), TooMany> {
        let Some(ip) = ip_of(remote).filter(|ip| !ip.is_loopback()) else {
            return Ok(());
        };
        let n = self.open.entry(ip).or_default();
        if *n >= self.max {
            return Err(TooMany { ip, max: self.max });
        }
        *n += 1;
        self.by_connection.insert(id, ip);
        Ok(())
    }

    fn release(&mut self, id: ConnectionId) {
        let Some(ip) = self.by_connection.remove(&id) else {
            return;
        };
        if let Some(n) = self.open.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.open.remove(&ip);
            }
        }
    }
}

fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.admit(id, remote).map_err(ConnectionDenied::new)
    }

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(ConnectionClosed { connection_id, .. })
            | FromSwarm::ListenFailure(ListenFailure { connection_id, .. }) => {
                self.release(connection_id)
            }
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_address_gets_its_share_and_no_more() {
        let mut b = Behaviour::new(2);
        let far: Multiaddr = "/ip4/203.0.113.7/tcp/4001".parse().expect("addr");
        let other: Multiaddr = "/ip6/2001:db8::1/udp/4001/quic-v1".parse().expect("addr");
        let local: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse().expect("addr");
        let memory: Multiaddr = "/memory/7".parse().expect("addr");
        let ids: Vec<ConnectionId> = (0..8).map(ConnectionId::new_unchecked).collect();
        b.admit(ids[0], &far).expect("first");
        b.admit(ids[1], &far).expect("second");
        assert!(b.admit(ids[2], &far).is_err(), "third from one IP");
        b.admit(ids[3], &other).expect("another IP");
        for &id in &ids[4..] {
            b.admit(id, &local).expect("loopback is exempt");
        }
        b.admit(ids[2], &memory).expect("no IP, no cap");
        // A closed connection (or a failed handshake) gives its place back.
        b.release(ids[0]);
        b.admit(ids[2], &far).expect("a place freed");
        assert!(b.admit(ids[5], &far).is_err());
    }
}
