//! The bootstrap node: the always-on peer others dial first. A Kademlia
//! server (with the same persistent provider store as a storage node),
//! identify, ping, an AutoNAT server and a relay server for nodes behind
//! NAT. It stores no pieces and speaks none of Cairn's storage protocols.

use std::path::PathBuf;
use std::time::Duration;

use cairn_node::identity;
use cairn_node::net::{self, providers::ProviderStore};
use cairn_node::node::{StartError, listen};
use futures::StreamExt as _;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, SwarmBuilder, autonat, identify, kad, noise, ping, relay, tcp, yamux,
};

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    limits: libp2p::connection_limits::Behaviour,
    per_ip: net::per_ip::Behaviour,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    autonat: autonat::Behaviour,
    relay: relay::Behaviour,
    kad: kad::Behaviour<ProviderStore>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub listen: Vec<Multiaddr>,
    pub external: Vec<Multiaddr>,
    pub max_connections: u32,
}

/// A bootstrap node that has started listening.
pub struct Bootstrap {
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    pub new_identity: bool,
    swarm: libp2p::Swarm<Behaviour>,
}

impl Bootstrap {
    pub async fn start(config: Config) -> Result<Bootstrap, StartError> {
        let (key, new_identity) = identity::load_or_create(&config.data_dir)?;
        let peer_id = key.public().to_peer_id();
        let providers = ProviderStore::open(
            &config.data_dir.join("providers.redb"),
            peer_id,
            None,
            Default::default(),
        )
        .map_err(|e| StartError::Providers(e.to_string()))?;
        let net_err = |e: &dyn std::fmt::Display| StartError::Network(e.to_string());
        let mut swarm = SwarmBuilder::with_existing_identity(key)
            .with_tokio()
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| net_err(&e))?
            .with_quic()
            .with_behaviour(|key| {
                let mut kad = kad::Behaviour::with_config(
                    peer_id,
                    providers,
                    net::kad_config(Some(net::DHT_REFRESH)),
                );
                kad.set_mode(Some(kad::Mode::Server));
                Behaviour {
                    limits: net::connection_limits(config.max_connections),
                    per_ip: net::per_ip::Behaviour::new(net::per_ip::DEFAULT_MAX_PER_IP),
                    identify: identify::Behaviour::new(net::identify_config(key)),
                    ping: ping::Behaviour::default(),
                    autonat: autonat::Behaviour::new(peer_id, autonat::Config::default()),
                    relay: relay::Behaviour::new(peer_id, relay::Config::default()),
                    kad,
                }
            })
            .map_err(|e| net_err(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build();
        let listen_addrs = listen(&mut swarm, &config.listen, true)
            .await?
            .into_iter()
            .map(|(_, addr)| addr)
            .collect();
        for addr in &config.external {
            swarm.add_external_address(addr.clone());
        }
        Ok(Bootstrap {
            peer_id,
            listen_addrs,
            new_identity,
            swarm,
        })
    }

    /// Serves until `shutdown` resolves, then makes its provider records durable.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut housekeeping = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = housekeeping.tick() => self.housekeeping(),
                event = self.swarm.select_next_some() => self.on_event(event),
            }
        }
        self.housekeeping();
    }

    fn housekeeping(&mut self) {
        let store = self.swarm.behaviour_mut().kad.store_mut();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Err(e) = store.expire(now).and_then(|_| store.flush()) {
            tracing::warn!(error = %e, "provider record housekeeping failed");
        }
    }

    fn on_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) if info.protocols.contains(&net::KAD_PROTOCOL) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                tracing::debug!(%peer_id, "connected");
            }
            SwarmEvent::NewListenAddr { address, .. } => tracing::info!(%address, "listening"),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer,
                is_new_peer: true,
                ..
            })) => tracing::debug!(%peer, "DHT server added to the routing table"),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(
                relay::Event::ReservationReqAccepted { src_peer_id, .. },
            )) => tracing::info!(peer = %src_peer_id, "relay slot reserved"),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(relay::Event::CircuitReqAccepted {
                src_peer_id,
                dst_peer_id,
            })) => tracing::info!(from = %src_peer_id, to = %dst_peer_id, "relay circuit opened"),
            _ => {}
        }
    }
}
