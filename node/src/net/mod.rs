//! The libp2p side of a node: its behaviours, Cairn's protocols and how the
//! swarm is built.

pub mod codec;
pub mod per_ip;
pub mod provide;
pub mod providers;
pub mod relay_slots;
pub mod walks;

use std::time::Duration;

use cairn_protocol::wire::{
    AUDIT_PROTOCOL, AuditRequest, AuditResponse, FETCH_PROTOCOL, FetchRequest, FetchResponse,
    STORE_PROTOCOL, StoreRequest, StoreResponse,
};
use libp2p::identity::Keypair;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, behaviour::toggle::Toggle};
use libp2p::{
    StreamProtocol, allow_block_list, autonat, connection_limits, identify, kad, ping, relay,
};

use codec::Codec;
use providers::ProviderStore;

/// Cairn's own Kademlia DHT: IPFS's public DHT is a different network.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn/kad/1.0.0");
pub const IDENTIFY_PROTOCOL: &str = "/cairn/id/1.0.0";

pub type StoreProtocol = request_response::Behaviour<Codec<StoreRequest, StoreResponse>>;
pub type FetchProtocol = request_response::Behaviour<Codec<FetchRequest, FetchResponse>>;
pub type AuditProtocol = request_response::Behaviour<Codec<AuditRequest, AuditResponse>>;

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Peers this node refuses to be connected to (simulated partitions).
    pub blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    pub limits: connection_limits::Behaviour,
    pub per_ip: per_ip::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    /// NAT traversal, on real networks only: in one process every peer
    /// reaches every other, and AutoNAT's dial-backs cost connections.
    pub autonat: Toggle<autonat::Behaviour>,
    pub relay: Toggle<relay::client::Behaviour>,
    pub kad: kad::Behaviour<ProviderStore>,
    /// Outbound streams only: Kademlia messages sent by batch ([`provide`]).
    pub streams: libp2p_stream::Behaviour,
    pub store: StoreProtocol,
    pub fetch: FetchProtocol,
    pub audit: AuditProtocol,
}

/// Whether a walk's peers are every DHT server there is: fewer than a
/// bucket holds.
pub fn whole_network(found: &[libp2p::PeerId]) -> bool {
    found.len() < kad::K_VALUE.get()
}

/// How often a peer refreshes its routing table (a lookup of itself and one
/// in each bucket beyond its closest): libp2p's default.
pub const DHT_REFRESH: Duration = Duration::from_secs(300);

/// Kademlia as every Cairn peer runs it. Provider records are republished by
/// the node's announcer from its piece index, not by kad's own timer.
/// `refresh`: the routing table's periodic refresh; with `None`, kad still
/// refreshes whenever the table holds fewer than 20 peers.
pub fn kad_config(refresh: Option<Duration>) -> kad::Config {
    let mut c = kad::Config::new(KAD_PROTOCOL);
    c.set_provider_publication_interval(None);
    c.set_query_timeout(Duration::from_secs(30));
    c.set_periodic_bootstrap_interval(refresh);
    c
}

pub fn identify_config(key: &Keypair) -> identify::Config {
    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
        .with_agent_version(format!("cairn/{}", env!("CARGO_PKG_VERSION")))
}

/// Connection limits: `max` established in all, of which at most three
/// quarters inbound (the rest is kept for this peer's own dials), 4 per
/// peer, 64 pending each way.
pub fn connection_limits(max: u32) -> connection_limits::Behaviour {
    connection_limits::Behaviour::new(
        connection_limits::ConnectionLimits::default()
            .with_max_established(Some(max))
            .with_max_established_incoming(Some(max - max / 4))
            .with_max_established_per_peer(Some(4))
            .with_max_pending_incoming(Some(64))
            .with_max_pending_outgoing(Some(64)),
    )
}

impl Behaviour {
    /// `serve`: whether this peer answers Cairn's protocols (a storage node)
    /// or only asks (a client). `relay`: the relay client on a real network,
    /// which also turns AutoNAT on; `None` in process.
    pub fn new(
        key: &Keypair,
        relay: Option<relay::client::Behaviour>,
        providers: ProviderStore,
        max_connections: u32,
        max_per_ip: u32,
        serve: bool,
        dht_refresh: Option<Duration>,
    ) -> Self {
        let peer = key.public().to_peer_id();
        let support = if serve {
            ProtocolSupport::Full
        } else {
            ProtocolSupport::Outbound
        };
        // A 4 MiB transfer is written and fsynced before its answer.
        let rr = |timeout, streams| {
            request_response::Config::default()
                .with_request_timeout(Duration::from_secs(timeout))
                .with_max_concurrent_streams(streams)
        };
        Behaviour {
            blocked: allow_block_list::Behaviour::default(),
            limits: connection_limits(max_connections),
            per_ip: per_ip::Behaviour::new(max_per_ip),
            identify: identify::Behaviour::new(identify_config(key)),
            ping: ping::Behaviour::default(),
            autonat: Toggle::from(
                relay
                    .is_some()
                    .then(|| autonat::Behaviour::new(peer, autonat::Config::default())),
            ),
            relay: Toggle::from(relay),
            kad: kad::Behaviour::with_config(peer, providers, kad_config(dht_refresh)),
            streams: libp2p_stream::Behaviour::new(),
            store: request_response::Behaviour::new(
                [(StreamProtocol::new(STORE_PROTOCOL), support.clone())],
                rr(60, 32),
            ),
            fetch: request_response::Behaviour::new(
                [(StreamProtocol::new(FETCH_PROTOCOL), support.clone())],
                rr(60, 64),
            ),
            audit: request_response::Behaviour::new(
                [(StreamProtocol::new(AUDIT_PROTOCOL), support)],
                rr(30, 64),
            ),
        }
    }
}
