//! A running node: one event loop owns the swarm; a cloneable [`Handle`]
//! talks to it over a bounded channel with oneshot replies. Store work
//! (fsync, hashing, proofs) runs on blocking threads, at most
//! [`JOBS`] at once, and reports back to the loop.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_protocol::record::{Receipt, SignedReceipt, Terms};
use cairn_protocol::wire::{
    AuditRequest, AuditResponse, FetchRequest, FetchResponse, RejectReason, StoreRequest,
    StoreResponse, TransferError,
};
use cid::Cid;
use futures::StreamExt as _;
use libp2p::core::transport::ListenerId;
use libp2p::identity::Keypair;
use libp2p::kad::{self, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, SwarmBuilder, autonat, noise, relay, tcp, yamux};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinSet;

use crate::identity;
use crate::net::provide;
use crate::net::providers::{self, ProviderStore};
use crate::net::relay_slots::{self, RelaySlots};
use crate::net::walks::{self, Walks};
use crate::net::{self, Behaviour, BehaviourEvent};
use crate::pinner::{self, Pinning};
use crate::pins::Pins;
use crate::store::{self, Store};

/// Store jobs (writes, verified reads, proofs) run at once.
pub const JOBS: usize = 8;
/// Commands queued to the event loop.
const COMMANDS: usize = 64;

/// What a node is started with. Defaults are those of `cairn node`.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    /// Bytes of piece data to hold. 0 makes a client: it asks but does not serve.
    pub capacity: u64,
    pub listen: Vec<Multiaddr>,
    /// Peers to join through, each with its `/p2p/<peer id>`.
    pub bootstrap: Vec<Multiaddr>,
    /// Addresses others can reach this node at, announced as confirmed.
    pub external: Vec<Multiaddr>,
    /// Connections in all, three quarters of them at most inbound.
    /// Default 512.
    pub max_connections: u32,
    /// Inbound connections from one IP address, loopback exempt. Default
    /// 16 ([`net::per_ip::DEFAULT_MAX_PER_IP`]).
    pub max_per_ip: u32,
    /// A connection with no stream open closes after this long. Default 60 s.
    pub idle_timeout: Duration,
    /// How often Kademlia refreshes the routing table; `None` only when it
    /// holds fewer than 20 peers. Default 5 min ([`net::DHT_REFRESH`]).
    pub dht_refresh: Option<Duration>,
    /// Every held piece is announced again this often. Default 12 h (provider
    /// records live 48 h).
    pub announce_interval: Duration,
    /// Announcements in flight at once. Default 32.
    pub announce_concurrency: usize,
    /// How often expired pieces are deleted. Default 10 min.
    pub expiry_interval: Duration,
    /// Misbehaviour for fault tests; `None` in real use.
    pub fault: Option<Fault>,
    /// How the node reaches others. Default [`Transport::Network`].
    pub transport: Transport,
    /// The node's sense of time. Default [`Clock::real`].
    pub clock: Clock,
    /// How the node keeps its pinned content alive.
    pub pinner: pinner::Settings,
}

/// How a node reaches other peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP and QUIC, and relayed connections through them: real networks.
    Network,
    /// libp2p's in-memory transport (`/memory/<n>` addresses), for many
    /// nodes in one process. `noise: false` skips encryption (plaintext
    /// handshake), which costs a sixth of what Noise does. No AutoNAT and
    /// no relay client: every peer in the process reaches every other.
    Memory { noise: bool },
}

/// Time as the node sees it: real time, or real time sped up by a whole
/// factor from the moment the clock was made (the simulator's clock).
/// Cairn's own timers (announcement, expiry sweep) and storage terms run on
/// it; libp2p's internal timers (query and request timeouts, provider
/// record TTLs) stay on real time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    speed: u32,
    origin: Instant,
    origin_unix: u64,
}

impl Clock {
    pub fn real() -> Self {
        Clock::scaled(1)
    }

    /// A clock `speed` times faster than real time (at least 1), starting now.
    pub fn scaled(speed: u32) -> Self {
        Clock {
            speed: speed.max(1),
            origin: Instant::now(),
            origin_unix: unix_now(),
        }
    }

    pub fn speed(&self) -> u32 {
        self.speed
    }

    /// Seconds since the Unix epoch, on this clock.
    pub fn now(&self) -> u64 {
        if self.speed == 1 {
            return unix_now();
        }
        self.origin_unix + self.origin.elapsed().as_secs() * u64::from(self.speed)
    }

    /// How long `d` on this clock takes in real time.
    pub fn to_real(&self, d: Duration) -> Duration {
        d / self.speed
    }
}

/// How a faulty node answers fetches, to test that clients cope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fault {
    /// Flips a byte of every piece it serves.
    Garbage,
    /// Never answers a fetch (holds the stream open).
    Stall,
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Self {
        Config {
            data_dir,
            capacity: 10 << 30,
            listen: vec![
                "/ip4/0.0.0.0/tcp/4001".parse().expect("valid"),
                "/ip4/0.0.0.0/udp/4001/quic-v1".parse().expect("valid"),
            ],
            bootstrap: Vec::new(),
            external: Vec::new(),
            max_connections: 512,
            max_per_ip: net::per_ip::DEFAULT_MAX_PER_IP,
            idle_timeout: Duration::from_secs(60),
            dht_refresh: Some(net::DHT_REFRESH),
            announce_interval: Duration::from_secs(12 * 3600),
            announce_concurrency: 32,
            expiry_interval: Duration::from_secs(600),
            fault: None,
            transport: Transport::Network,
            clock: Clock::real(),
            pinner: pinner::Settings::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Identity(#[from] identity::Error),
    #[error("piece store: {0}")]
    Store(Box<store::Error>),
    #[error("pin database: {0}")]
    Pins(#[from] crate::pins::Error),
    #[error("provider store: {0}")]
    Providers(String),
    #[error("network: {0}")]
    Network(String),
    #[error("cannot listen on {addr}: {reason}")]
    Listen { addr: Multiaddr, reason: String },
    #[error("bootstrap address {0} must end in /p2p/<peer id>")]
    BootstrapAddr(Multiaddr),
}

impl From<store::Error> for StartError {
    fn from(e: store::Error) -> Self {
        StartError::Store(Box::new(e))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("the node has stopped")]
    Stopped,
    #[error("request to {peer} failed: {reason}")]
    Failed { peer: PeerId, reason: String },
    /// The peer does not serve the protocol (a bootstrap node, a client).
    #[error("{peer} does not serve this protocol")]
    Unsupported { peer: PeerId },
    #[error("lookup failed: {0}")]
    Lookup(String),
}

type Answer<T> = oneshot::Sender<Result<T, RequestError>>;

/// A request to a peer on one of Cairn's protocols, with where its answer goes.
enum Outbound {
    Store(StoreRequest, Answer<StoreResponse>),
    Fetch(FetchRequest, Answer<FetchResponse>),
    Audit(AuditRequest, Answer<AuditResponse>),
    /// A connection, so that a request's answer time excludes dialing.
    Connect(Answer<()>),
}

impl Outbound {
    fn fail(self, error: RequestError) {
        // The caller may have given up; nothing else to do then.
        let _ = match self {
            Outbound::Store(_, a) => a.send(Err(error)).is_ok(),
            Outbound::Fetch(_, a) => a.send(Err(error)).is_ok(),
            Outbound::Audit(_, a) => a.send(Err(error)).is_ok(),
            Outbound::Connect(a) => a.send(Err(error)).is_ok(),
        };
    }
}

/// Answers awaited, one map per protocol: each behaviour numbers its
/// requests from 1, so ids of different protocols collide.
#[derive(Default)]
struct Awaiting {
    store: HashMap<OutboundRequestId, Answer<StoreResponse>>,
    fetch: HashMap<OutboundRequestId, Answer<FetchResponse>>,
    audit: HashMap<OutboundRequestId, Answer<AuditResponse>>,
}

/// Delivers the answer to request `id` of `peer`, if someone still waits for it.
fn settle<T>(
    awaiting: &mut HashMap<OutboundRequestId, Answer<T>>,
    id: OutboundRequestId,
    peer: PeerId,
    result: Result<T, request_response::OutboundFailure>,
) {
    if let Some(answer) = awaiting.remove(&id) {
        let _ = answer.send(result.map_err(|e| match e {
            request_response::OutboundFailure::UnsupportedProtocols => {
                RequestError::Unsupported { peer }
            }
            e => RequestError::Failed {
                peer,
                reason: e.to_string(),
            },
        }));
    }
}

enum Command {
    Request {
        peer: PeerId,
        outbound: Outbound,
    },
    Providers {
        key: Cid,
        /// End the lookup at the first answer that names any provider.
        first: bool,
        reply: oneshot::Sender<Result<HashSet<PeerId>, RequestError>>,
    },
    Dial {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<(), RequestError>>,
    },
    Closest {
        /// A CID's or a peer ID's bytes.
        key: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<PeerId>, RequestError>>,
    },
    Status {
        reply: oneshot::Sender<Status>,
    },
    Routes {
        peer: PeerId,
        reply: oneshot::Sender<bool>,
    },
    Block {
        peers: Vec<PeerId>,
        blocked: bool,
    },
    Misbehave {
        fault: Option<Fault>,
        delay: Duration,
    },
    Intercept {
        pieces: HashSet<Cid>,
        to: mpsc::Sender<Challenge>,
    },
}

/// An audit challenge handed to a fault test instead of the store
/// ([`Handle::intercept_audits`]); whatever is sent on `answer` is the
/// node's answer.
#[derive(Debug)]
pub struct Challenge {
    pub piece: Cid,
    pub nonce: [u8; 32],
    pub answer: oneshot::Sender<AuditResponse>,
}

/// Challenges intercepted and not yet answered, at most.
const INTERCEPTED: usize = 64;

/// What the node is doing, for tests and the control API.
#[derive(Debug, Clone, Default)]
pub struct Status {
    pub connected_peers: usize,
    pub routing_table: usize,
    pub pieces: u64,
    pub used: u64,
    pub capacity: u64,
    /// Bytes offers may still take: capacity left, bounded by the disk.
    pub free: u64,
    /// Announcement rounds completed since start.
    pub announce_rounds: u64,
    pub announced: u64,
    /// Kademlia requests sent for announcements: walks' requests, and one
    /// per server and batch.
    pub announce_requests: u64,
    /// Duration of the last completed round.
    pub last_round: Option<Duration>,
    /// Freshly stored pieces not yet announced, and announcements in flight.
    pub announcing: usize,
}

/// Talks to a running node. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Handle {
    peer_id: PeerId,
    commands: mpsc::Sender<Command>,
    clock: Clock,
    /// Weak: the pin database closes when the node stops.
    pinning: std::sync::Weak<Pinning>,
}

impl Handle {
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Seconds since the Unix epoch on the node's clock.
    pub fn now(&self) -> u64 {
        self.clock.now()
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub(crate) fn pinning(&self) -> &std::sync::Weak<Pinning> {
        &self.pinning
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)
    }

    pub async fn store(
        &self,
        peer: PeerId,
        request: StoreRequest,
    ) -> Result<StoreResponse, RequestError> {
        self.call(|a| Command::Request {
            peer,
            outbound: Outbound::Store(request, a),
        })
        .await?
    }

    pub async fn fetch(
        &self,
        peer: PeerId,
        request: FetchRequest,
    ) -> Result<FetchResponse, RequestError> {
        self.call(|a| Command::Request {
            peer,
            outbound: Outbound::Fetch(request, a),
        })
        .await?
    }

    pub async fn audit(
        &self,
        peer: PeerId,
        request: AuditRequest,
    ) -> Result<AuditResponse, RequestError> {
        self.call(|a| Command::Request {
            peer,
            outbound: Outbound::Audit(request, a),
        })
        .await?
    }

    /// Connects to `peer` (finding its address in the DHT if need be);
    /// at once if connected.
    pub async fn connect(&self, peer: PeerId) -> Result<(), RequestError> {
        self.call(|a| Command::Request {
            peer,
            outbound: Outbound::Connect(a),
        })
        .await?
    }

    /// The peers the DHT names as providers of `key` (this node included if it holds it).
    pub async fn providers(&self, key: Cid) -> Result<HashSet<PeerId>, RequestError> {
        self.lookup_providers(key, false).await
    }

    /// As [`Handle::providers`], but the lookup ends at the first answer
    /// that names any: sooner and a fraction of the requests, at the risk
    /// of missing other providers.
    pub async fn first_providers(&self, key: Cid) -> Result<HashSet<PeerId>, RequestError> {
        self.lookup_providers(key, true).await
    }

    async fn lookup_providers(
        &self,
        key: Cid,
        first: bool,
    ) -> Result<HashSet<PeerId>, RequestError> {
        self.call(|reply| Command::Providers { key, first, reply })
            .await?
    }

    /// The DHT server peers closest to `key`, closest first; their
    /// addresses are remembered for requests.
    pub async fn closest_peers(&self, key: Cid) -> Result<Vec<PeerId>, RequestError> {
        let key = key.to_bytes();
        self.call(|reply| Command::Closest { key, reply }).await?
    }

    /// Whether a DHT walk towards `peer` finds it: whether others can reach
    /// it by its peer ID alone.
    pub async fn find_peer(&self, peer: PeerId) -> Result<bool, RequestError> {
        let key = peer.to_bytes();
        let found = self.call(|reply| Command::Closest { key, reply }).await??;
        Ok(found.contains(&peer))
    }

    /// Connects to `addr` (ending in `/p2p/<peer id>`): returns once the
    /// connection is up, or the dial failed.
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), RequestError> {
        self.call(|reply| Command::Dial { addr, reply }).await?
    }

    pub async fn status(&self) -> Result<Status, RequestError> {
        self.call(|reply| Command::Status { reply }).await
    }

    /// Whether `peer` is in the node's routing table.
    pub async fn routes_to(&self, peer: PeerId) -> Result<bool, RequestError> {
        self.call(|reply| Command::Routes { peer, reply }).await
    }

    /// Refuses (`blocked`) or allows again connections with `peers`; refusing
    /// closes the open ones. The simulator partitions networks with it.
    pub async fn block(&self, peers: Vec<PeerId>, blocked: bool) -> Result<(), RequestError> {
        self.commands
            .send(Command::Block { peers, blocked })
            .await
            .map_err(|_| RequestError::Stopped)
    }

    /// Makes the node misbehave from now on: `fault` in how it answers
    /// fetches, and every answer held back by `delay`. For fault tests.
    pub async fn misbehave(
        &self,
        fault: Option<Fault>,
        delay: Duration,
    ) -> Result<(), RequestError> {
        self.commands
            .send(Command::Misbehave { fault, delay })
            .await
            .map_err(|_| RequestError::Stopped)
    }

    /// From now on, audit challenges for `pieces` are not answered from the
    /// store but handed over on the returned channel, so a fault test can
    /// answer as a node that does not keep them would (a lazy node). A
    /// challenge left unanswered, or over [`INTERCEPTED`] waiting, is
    /// answered as not found.
    pub async fn intercept_audits(
        &self,
        pieces: HashSet<Cid>,
    ) -> Result<mpsc::Receiver<Challenge>, RequestError> {
        let (to, from) = mpsc::channel(INTERCEPTED);
        self.commands
            .send(Command::Intercept { pieces, to })
            .await
            .map_err(|_| RequestError::Stopped)?;
        Ok(from)
    }
}

/// How the event loop ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// In-flight store work finishes, records are flushed.
    Clean,
    /// Everything in the making is dropped.
    Crash,
}

/// A started node: its handle, its addresses and its task.
pub struct Node {
    pub handle: Handle,
    pub peer_id: PeerId,
    pub listen_addrs: Vec<Multiaddr>,
    /// Whether this start created the identity.
    pub new_identity: bool,
    pub recovery: store::Recovery,
    shutdown: oneshot::Sender<Stop>,
    task: tokio::task::JoinHandle<()>,
    permits: Arc<Semaphore>,
    pinner_stop: oneshot::Sender<()>,
    pinner: tokio::task::JoinHandle<()>,
}

impl Node {
    /// Opens the data directory, listens, dials the bootstrap peers and
    /// runs the event loop on the current tokio runtime.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        // Creates the data directory, private, if need be.
        let (key, new_identity) = identity::load_or_create(&config.data_dir)?;
        let peer_id = key.public().to_peer_id();
        let mut limits = store::Limits::new(config.capacity);
        // A reservation is a protocol timeout: it lasts the same real time
        // whatever the clock's speed.
        limits.reservation_ttl *= u64::from(config.clock.speed());
        let (store, recovery) = Store::open(&config.data_dir.join("store"), limits)?;
        if let Some(disk) = store.disk_available()
            && config.capacity > store.used().saturating_add(disk)
        {
            tracing::warn!(
                capacity = config.capacity,
                disk_free = disk,
                "the capacity is more than the disk has free: offers are refused once the disk is full"
            );
        }
        let store = Arc::new(store);
        let providers = ProviderStore::open(
            &config.data_dir.join("providers.redb"),
            peer_id,
            Some(store.clone()),
            providers::Limits::default(),
        )
        .map_err(|e| StartError::Providers(e.to_string()))?;
        let serve = config.capacity > 0;
        let mut swarm = build_swarm(&key, providers, &config, serve)?;
        let local = on_this_machine(&config.bootstrap);
        let listening = listen(&mut swarm, &config.listen, local).await?;
        let listen_addrs = listening.iter().map(|(_, a)| a.clone()).collect();
        for addr in &config.external {
            swarm.add_external_address(addr.clone());
        }
        for addr in &config.bootstrap {
            let Some(Protocol::P2p(peer)) = addr.iter().last() else {
                return Err(StartError::BootstrapAddr(addr.clone()));
            };
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
            if let Err(e) = swarm.dial(addr.clone()) {
                tracing::warn!(%addr, error = %e, "cannot dial bootstrap peer");
            }
        }
        let pinning = Pinning::new(
            Pins::open(&config.data_dir.join("pins.redb"))?,
            config.pinner.clone(),
        );
        for db in ["store/index.redb", "providers.redb", "pins.redb"] {
            private(&config.data_dir.join(db))?;
        }
        let signer = identity::signing_key(&key)
            .ok_or_else(|| StartError::Network("identity is not an ed25519 key".into()))?;
        let (commands, command_rx) = mpsc::channel(COMMANDS);
        let (shutdown, shutdown_rx) = oneshot::channel();
        let (done_tx, done_rx) = mpsc::channel(JOBS * 2);
        let permits = Arc::new(Semaphore::new(JOBS));
        let clock = config.clock;
        let event_loop = EventLoop {
            swarm,
            store,
            signer: Arc::new(signer),
            commands: command_rx,
            done_tx,
            done_rx,
            jobs: JoinSet::new(),
            announcing: JoinSet::new(),
            permits: permits.clone(),
            awaiting: Awaiting::default(),
            lookups: HashMap::new(),
            closest: HashMap::new(),
            walks: Walks::default(),
            stalled: VecDeque::new(),
            unaddressed: HashMap::new(),
            connecting: HashMap::new(),
            announcer: Announcer::new(config.announce_concurrency),
            listeners: listening.into_iter().map(|(id, _)| id).collect(),
            fault: config.fault,
            delay: Duration::ZERO,
            intercepted: None,
            relays: RelaySlots::default(),
            config,
        };
        let task = tokio::spawn(event_loop.run(shutdown_rx));
        let handle = Handle {
            peer_id,
            commands,
            clock,
            pinning: Arc::downgrade(&pinning),
        };
        let (pinner_stop, stop_rx) = oneshot::channel();
        let pinner = tokio::spawn(pinner::run(handle.clone(), pinning, stop_rx));
        Ok(Node {
            handle,
            peer_id,
            listen_addrs,
            new_identity,
            recovery,
            shutdown,
            task,
            permits,
            pinner_stop,
            pinner,
        })
    }

    /// Stops the node: in-flight store work finishes, then the databases close.
    pub async fn stop(self) {
        let _ = self.pinner_stop.send(());
        let _ = self.pinner.await;
        let _ = self.shutdown.send(Stop::Clean);
        let _ = self.task.await;
    }

    /// Stops the node abruptly, as a crash would in-process: the event loop
    /// ends where it is, connections drop without goodbye, answers in the
    /// making are lost. Store work already on a thread finishes (the store
    /// is crash-safe either way); this returns once it has, so the data
    /// directory can be opened again.
    pub async fn crash(self) {
        self.pinner.abort();
        let _ = self.pinner.await;
        let _ = self.shutdown.send(Stop::Crash);
        let _ = self.task.await;
        // Every job holds a permit until its store work is done.
        let _ = self.permits.acquire_many(JOBS as u32).await;
    }
}

/// Makes a database its owner's alone (0600): it says what the node
/// stores, pins and knows of its peers. (The data directory is made 0700
/// with the identity.)
fn private(path: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        StartError::from(store::Error::Io {
            op: "chmod",
            path: path.to_path_buf(),
            source,
        })
    })
}

fn build_swarm(
    key: &Keypair,
    providers: ProviderStore,
    config: &Config,
    serve: bool,
) -> Result<Swarm<Behaviour>, StartError> {
    let net = |e: &dyn std::fmt::Display| StartError::Network(e.to_string());
    let (max, per_ip) = (config.max_connections, config.max_per_ip);
    let idle = config.idle_timeout;
    let refresh = config.dht_refresh;
    let builder = SwarmBuilder::with_existing_identity(key.clone()).with_tokio();
    let swarm = match config.transport {
        Transport::Network => builder
            .with_tcp(
                tcp::Config::default().nodelay(true),
                noise::Config::new,
                yamux::Config::default,
            )
            .map_err(|e| net(&e))?
            .with_quic()
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| net(&e))?
            .with_behaviour(|key, relay| {
                Behaviour::new(key, Some(relay), providers, max, per_ip, serve, refresh)
            })
            .map_err(|e| net(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build(),
        Transport::Memory { noise: encrypt } => builder
            .with_other_transport(|key| memory_transport(key, encrypt))
            .map_err(|e| net(&e))?
            .with_behaviour(|key| Behaviour::new(key, None, providers, max, per_ip, serve, refresh))
            .map_err(|e| net(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
            .build(),
    };
    Ok(swarm)
}

type Boxed = libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>;

fn memory_transport(
    key: &Keypair,
    encrypt: bool,
) -> Result<Boxed, Box<dyn std::error::Error + Send + Sync>> {
    use libp2p::Transport as _;
    use libp2p::core::transport::{MemoryTransport, upgrade::Version};
    let upgraded = MemoryTransport::default().upgrade(Version::V1Lazy);
    Ok(if encrypt {
        upgraded
            .authenticate(noise::Config::new(key)?)
            .multiplex(yamux::Config::default())
            .boxed()
    } else {
        upgraded
            .authenticate(libp2p::plaintext::Config::new(key))
            .multiplex(yamux::Config::default())
            .boxed()
    })
}

/// Whether every bootstrap address is on this machine (loopback or in
/// process): then so is the network, and this node's loopback addresses
/// are ones its peers can reach.
fn on_this_machine(bootstrap: &[Multiaddr]) -> bool {
    bootstrap.iter().all(is_local)
}

fn is_local(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| match p {
        Protocol::Ip4(ip) => ip.is_loopback(),
        Protocol::Ip6(ip) => ip.is_loopback(),
        Protocol::Memory(_) => true,
        _ => false,
    })
}

/// Starts every listener and waits until each has its first address (so a
/// port 0 is known). With `local` (a network on this machine), loopback and
/// in-memory addresses are taken as external: only this machine (process)
/// can reach them, and it can. Otherwise only `--external` addresses and
/// those AutoNAT confirms are: a node nobody can reach stays a DHT client.
pub async fn listen<B: NetworkBehaviour>(
    swarm: &mut Swarm<B>,
    addrs: &[Multiaddr],
    local: bool,
) -> Result<Vec<(ListenerId, Multiaddr)>, StartError> {
    let mut waiting = HashMap::new();
    for addr in addrs {
        let id = swarm
            .listen_on(addr.clone())
            .map_err(|e| StartError::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
        waiting.insert(id, addr.clone());
    }
    let mut found = Vec::new();
    let deadline = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(deadline);
    while !waiting.is_empty() {
        let event = tokio::select! {
            e = swarm.select_next_some() => e,
            () = &mut deadline => {
                let addr = waiting.into_values().next().expect("not empty");
                return Err(StartError::Listen { addr, reason: "no address within 10 s".into() });
            }
        };
        match event {
            SwarmEvent::NewListenAddr {
                listener_id,
                address,
            } => {
                waiting.remove(&listener_id);
                note_listen_addr(swarm, &address, local);
                found.push((listener_id, address));
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                if let Some(addr) = waiting.remove(&listener_id) {
                    let reason = reason.err().map_or("closed".into(), |e| e.to_string());
                    return Err(StartError::Listen { addr, reason });
                }
            }
            SwarmEvent::ListenerError { listener_id, error } => {
                if let Some(addr) = waiting.remove(&listener_id) {
                    return Err(StartError::Listen {
                        addr,
                        reason: error.to_string(),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

fn note_listen_addr<B: NetworkBehaviour>(swarm: &mut Swarm<B>, addr: &Multiaddr, local: bool) {
    if local && is_local(addr) {
        swarm.add_external_address(addr.clone());
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The announcement schedule: a round walks the piece index in order;
/// freshly stored pieces go first. On a network smaller than a bucket the
/// keys go out by batch, one stream per server ([`provide`]); on a larger
/// one key by key, `concurrency` kad announcements in flight. A walk of the
/// network tells which, and is trusted for [`provide::VIEW_FOR`]. A plain
/// state machine: the loop feeds it events.
struct Announcer {
    concurrency: usize,
    fresh: VecDeque<Cid>,
    /// When the oldest of `fresh` came: a batch waits [`provide::LINGER`]
    /// for company.
    fresh_since: Option<Instant>,
    in_flight: HashMap<QueryId, Cid>,
    /// Keys of the batch being sent (one batch at a time); 0 if none.
    batch: usize,
    /// What the last walk of the network found, and when.
    view: Option<(View, Instant)>,
    /// The walk that renews `view`.
    viewing: Option<QueryId>,
    round: Option<Round>,
    next_round: Option<Instant>,
    status: Status,
}

#[derive(Debug, Clone, PartialEq)]
enum View {
    /// Fewer DHT servers than a bucket holds: every one of them.
    Everyone(Vec<PeerId>),
    /// As many or more: each key walks to its own closest servers.
    Large,
}

/// What to do about the keys waiting to be announced.
#[derive(Debug, PartialEq)]
enum Plan {
    Wait,
    /// Walk the network to find out its size.
    Walk,
    /// Send a batch to these servers.
    Batch(Vec<PeerId>),
    KeyByKey,
}

struct Round {
    /// The last piece taken from the index; `None` before the first.
    cursor: Option<Cid>,
    /// The walk reached the end of the index.
    walked: bool,
    started: Instant,
    announced: u64,
}

/// Fresh pieces queued for announcement beyond which the oldest wait for the next round.
const FRESH: usize = 4096;

impl Announcer {
    fn new(concurrency: usize) -> Self {
        Announcer {
            concurrency: concurrency.max(1),
            fresh: VecDeque::new(),
            fresh_since: None,
            in_flight: HashMap::new(),
            batch: 0,
            view: None,
            viewing: None,
            round: None,
            next_round: None,
            status: Status::default(),
        }
    }

    fn stored(&mut self, keys: Vec<Cid>, now: Instant) {
        for key in keys {
            if self.fresh.len() < FRESH {
                self.fresh.push_back(key);
                self.fresh_since.get_or_insert(now);
            }
        }
    }

    /// Starts a round unless one is running. Over an empty index it has
    /// nothing to take, so it needs no walk of the network.
    fn start_round(&mut self, now: Instant, index_empty: bool) {
        if self.round.is_none() {
            self.next_round = None;
            self.round = Some(Round {
                cursor: None,
                walked: index_empty,
                started: now,
                announced: 0,
            });
        }
    }

    /// Whether no round has run or is running: the first waits for a peer.
    fn never_started(&self) -> bool {
        self.round.is_none() && self.next_round.is_none() && self.status.announce_rounds == 0
    }

    /// Whether the round has pieces of the index still to take.
    fn walking_index(&self) -> bool {
        self.round.as_ref().is_some_and(|r| !r.walked)
    }

    fn plan(&self, now: Instant) -> Plan {
        if self.fresh.is_empty() && !self.walking_index() {
            return Plan::Wait;
        }
        match self.view_at(now) {
            Some(View::Large) => Plan::KeyByKey,
            Some(View::Everyone(servers)) if self.batch == 0 && self.batch_due(now) => {
                Plan::Batch(servers.clone())
            }
            Some(View::Everyone(_)) => Plan::Wait,
            None if self.viewing.is_none() => Plan::Walk,
            None => Plan::Wait,
        }
    }

    /// The view, while it is trusted.
    fn view_at(&self, now: Instant) -> Option<&View> {
        let (view, at) = self.view.as_ref()?;
        (now < *at + provide::VIEW_FOR).then_some(view)
    }

    /// A batch goes when it is full, when the round's keys are in it (they
    /// need not wait), or when its oldest key has waited long enough.
    fn batch_due(&self, now: Instant) -> bool {
        self.fresh.len() >= provide::BATCH
            || self.walking_index()
            || self.fresh_since.is_some_and(|t| now >= t + provide::LINGER)
    }

    /// When a batch waiting for company is due, if one is.
    fn batch_wakeup(&self, now: Instant) -> Option<Instant> {
        let everyone = matches!(self.view_at(now), Some(View::Everyone(_)));
        let waiting = everyone && self.batch == 0 && self.viewing.is_none();
        self.fresh_since
            .filter(|_| waiting)
            .map(|t| t + provide::LINGER)
    }

    /// A server entered the routing table: on a small network, one the
    /// last walk may not have found, so the next batch walks again first.
    fn new_server(&mut self) {
        self.view
            .take_if(|(view, _)| matches!(view, View::Everyone(_)));
    }

    /// Takes the outcome of walk `id` if it is the one renewing the view.
    fn viewed(&mut self, id: QueryId, found: &[PeerId], requests: u32, now: Instant) -> bool {
        if self.viewing != Some(id) {
            return false;
        }
        self.viewing = None;
        self.status.announce_requests += u64::from(requests);
        let view = if net::whole_network(found) {
            View::Everyone(found.to_vec())
        } else {
            View::Large
        };
        self.view = Some((view, now));
        true
    }

    /// Up to `room` keys to announce next.
    fn next(&mut self, store: &Store, room: usize) -> Vec<Cid> {
        let mut out: Vec<Cid> = (0..room).map_while(|_| self.fresh.pop_front()).collect();
        if self.fresh.is_empty() {
            self.fresh_since = None;
        }
        if let Some(round) = self.round.as_mut().filter(|r| !r.walked)
            && out.len() < room
        {
            match store.pieces_after(round.cursor.as_ref(), room - out.len()) {
                Ok(batch) if batch.is_empty() => round.walked = true,
                Ok(batch) => {
                    round.cursor = batch.last().copied();
                    out.extend(batch.iter().flat_map(|p| store.announce_keys(p)));
                }
                Err(e) => tracing::warn!(error = %e, "cannot read the piece index to announce"),
            }
        }
        out
    }

    /// Up to the free concurrency of keys to announce one by one.
    fn next_keys(&mut self, store: &Store) -> Vec<Cid> {
        let room = self.concurrency.saturating_sub(self.in_flight.len());
        self.next(store, room)
    }

    fn announced(&mut self, keys: u64, requests: u64) {
        self.status.announced += keys;
        self.status.announce_requests += requests;
        if let Some(round) = self.round.as_mut() {
            round.announced += keys;
        }
    }

    fn done(&mut self, id: QueryId, requests: u32) {
        if self.in_flight.remove(&id).is_some() {
            self.announced(1, u64::from(requests));
        }
    }

    /// A batch is sent. Servers that never answered leave the view until
    /// the next walk, so later batches do not wait for them.
    fn batch_done(&mut self, keys: usize, streams: usize, unreached: &[PeerId]) {
        self.batch = 0;
        if let Some((View::Everyone(servers), _)) = self.view.as_mut() {
            servers.retain(|s| !unreached.contains(s));
        }
        self.announced(keys as u64, streams as u64);
    }

    /// Keys waiting or being announced.
    fn pending(&self) -> usize {
        self.fresh.len() + self.in_flight.len() + self.batch
    }

    /// Ends the round once the walk ended and its last announcements are back.
    fn finish_round(&mut self, now: Instant, interval: Duration) {
        let idle = self.in_flight.is_empty() && self.batch == 0;
        let Some(round) = self.round.take_if(|r| r.walked && idle) else {
            return;
        };
        let took = now - round.started;
        self.status.announce_rounds += 1;
        self.status.last_round = Some(took);
        self.next_round = Some(now + interval);
        tracing::info!(
            announced = round.announced,
            took_ms = took.as_millis() as u64,
            "announcement round complete"
        );
    }
}

enum Done {
    /// A batch of announcements sent: its keys, the streams it opened, the
    /// servers that never answered.
    Announced {
        keys: usize,
        streams: usize,
        unreached: Vec<PeerId>,
    },
    /// The answer, and the keys to announce for what was stored.
    Store(ResponseChannel<StoreResponse>, Box<StoreResponse>, Vec<Cid>),
    Fetch(ResponseChannel<FetchResponse>, FetchResponse),
    /// No answer when the piece cannot be read now: the challenger sees
    /// the node unavailable, not the piece lost.
    Audit(ResponseChannel<AuditResponse>, Option<AuditResponse>),
    Expired(usize),
    /// A request to this node itself, answered by the job.
    Answered,
}

struct EventLoop {
    swarm: Swarm<Behaviour>,
    store: Arc<Store>,
    signer: Arc<ed25519_dalek::SigningKey>,
    commands: mpsc::Receiver<Command>,
    done_tx: mpsc::Sender<Done>,
    done_rx: mpsc::Receiver<Done>,
    jobs: JoinSet<()>,
    /// The batch of announcements being sent; dropped, not awaited, at stop.
    announcing: JoinSet<()>,
    permits: Arc<Semaphore>,
    awaiting: Awaiting,
    /// Provider lookups: found so far, whether the first find ends it.
    lookups: HashMap<QueryId, (HashSet<PeerId>, bool, ProvidersReply)>,
    closest: HashMap<QueryId, oneshot::Sender<Result<Vec<PeerId>, RequestError>>>,
    /// Lookups, walks and announcements in flight, ended early when they stall.
    walks: Walks,
    /// Fetches a [`Fault::Stall`] node holds unanswered (bounded).
    stalled: VecDeque<ResponseChannel<FetchResponse>>,
    /// Requests to peers whose address is being looked up in the DHT.
    unaddressed: HashMap<QueryId, Vec<(PeerId, Outbound)>>,
    /// Connects awaited, per peer (at most [`CONNECT_WAITERS`] each).
    connecting: HashMap<PeerId, Vec<Answer<()>>>,
    announcer: Announcer,
    listeners: Vec<ListenerId>,
    /// Misbehaviour for fault tests, settable while running.
    fault: Option<Fault>,
    /// Every answer is held back this long (fault tests).
    delay: Duration,
    /// Challenges for these pieces go to a fault test (`intercept_audits`).
    intercepted: Option<(HashSet<Cid>, mpsc::Sender<Challenge>)>,
    /// Slots on the bootstrap peers' relays, while AutoNAT finds this node
    /// unreachable.
    relays: RelaySlots,
    config: Config,
}

type ProvidersReply = oneshot::Sender<Result<HashSet<PeerId>, RequestError>>;

/// Peers' store, fetch and audit requests waiting for or doing store work;
/// more are answered busy ([`EventLoop::room_for_job`]).
const QUEUED: usize = 64;
/// Requests parked while their peer's address is looked up.
const UNADDRESSED: usize = 256;
/// Connects awaited per peer.
const CONNECT_WAITERS: usize = 64;

impl EventLoop {
    async fn run(mut self, mut shutdown: oneshot::Receiver<Stop>) {
        let clock = self.config.clock;
        let mut expiry = tokio::time::interval(clock.to_real(self.config.expiry_interval));
        let mut flush = tokio::time::interval(Duration::from_secs(60));
        let mut walk_check = tokio::time::interval(walks::CHECK);
        walk_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let next_round = self.announcer.next_round;
            let batch_due = self.announcer.batch_wakeup(Instant::now());
            let relay_check = self.relays.next_check();
            tokio::select! {
                stop = &mut shutdown => {
                    // In-memory listeners hold their port until removed.
                    for id in self.listeners.drain(..) {
                        self.swarm.remove_listener(id);
                    }
                    if stop == Ok(Stop::Crash) {
                        return;
                    }
                    break;
                }
                event = self.swarm.select_next_some() => self.on_swarm(event),
                Some(cmd) = self.commands.recv() => self.on_command(cmd),
                Some(done) = self.done_rx.recv() => self.on_done(done),
                _ = expiry.tick() => self.expire(),
                _ = flush.tick() => self.flush(),
                _ = walk_check.tick(), if !self.walks.is_empty() => self.end_stalled_walks(),
                () = sleep_until(next_round) => {
                    self.announcer.start_round(Instant::now(), self.store.count() == 0);
                }
                () = sleep_until(batch_due) => {}
                () = sleep_until(relay_check) => {
                    let due = self.relays.due(Instant::now(), false);
                    self.ask_relays(due);
                }
                Some(_) = self.jobs.join_next() => {}
                Some(_) = self.announcing.join_next() => {}
            }
            self.announce();
        }
        // In-flight writes finish (they end with a durable commit or leave
        // nothing), then the stores close as they drop.
        while self.jobs.join_next().await.is_some() {}
        self.flush();
        tracing::info!("node stopped");
    }

    /// Ends each walk that has stalled on unresponsive peers; it reports
    /// the peers that answered as if it had run its course. Walks kad has
    /// finished since are forgotten here.
    fn end_stalled_walks(&mut self) {
        let now = Instant::now();
        let kad = &mut self.swarm.behaviour_mut().kad;
        for id in self.walks.ids() {
            let Some(mut query) = kad.query_mut(&id) else {
                self.walks.done(&id);
                continue;
            };
            let stats = query.stats();
            let (answers, pending) = (stats.num_successes(), stats.num_pending());
            if self.walks.stalled(id, answers, pending, now) {
                tracing::debug!(?id, answers, pending, "DHT walk stalled; ending it");
                query.finish();
            }
        }
    }

    fn flush(&mut self) {
        if let Err(e) = self.swarm.behaviour_mut().kad.store_mut().flush() {
            tracing::warn!(error = %e, "cannot flush provider records");
        }
    }

    fn announce(&mut self) {
        let now = Instant::now();
        match self.announcer.plan(now) {
            Plan::Wait => {}
            Plan::Walk => {
                let me = *self.swarm.local_peer_id();
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(me);
                self.announcer.viewing = Some(id);
                self.walks.start(id, now);
            }
            Plan::Batch(servers) => {
                let keys = self.announcer.next(&self.store, provide::BATCH);
                self.send_batch(keys, servers);
            }
            Plan::KeyByKey => {
                for piece in self.announcer.next_keys(&self.store) {
                    let key = RecordKey::new(&piece.to_bytes());
                    match self.swarm.behaviour_mut().kad.start_providing(key) {
                        Ok(id) => {
                            self.announcer.in_flight.insert(id, piece);
                            self.walks.start(id, now);
                        }
                        Err(e) => tracing::warn!(%piece, error = %e, "cannot announce piece"),
                    }
                }
            }
        }
        let interval = self.config.clock.to_real(self.config.announce_interval);
        self.announcer.finish_round(now, interval);
    }

    /// Sends an `ADD_PROVIDER` for each of `keys` to every server, one
    /// stream each. (This node answers for itself from its piece index.)
    fn send_batch(&mut self, keys: Vec<Cid>, servers: Vec<PeerId>) {
        if keys.is_empty() {
            return;
        }
        let me = *self.swarm.local_peer_id();
        let addrs: Vec<Multiaddr> = self.swarm.external_addresses().cloned().collect();
        let frames = provide::add_provider_frames(&keys, me, &addrs);
        let control = self.swarm.behaviour().streams.new_control();
        let done = self.done_tx.clone();
        self.announcer.batch = keys.len();
        self.announcing.spawn(async move {
            let sends = servers
                .iter()
                .map(|&server| (server, provide::send(control.clone(), server, &frames)));
            let (ended, unreached) = provide::send_all(sends).await;
            for (server, outcome) in ended {
                if let Err(e) = outcome {
                    tracing::debug!(%server, error = %e, "announcement batch not delivered");
                }
            }
            if !unreached.is_empty() {
                tracing::debug!(
                    ?unreached,
                    "servers gave no answer to an announcement batch"
                );
            }
            let (keys, streams) = (keys.len(), servers.len());
            let _ = done
                .send(Done::Announced {
                    keys,
                    streams,
                    unreached,
                })
                .await;
        });
    }

    fn expire(&mut self) {
        let store = self.store.clone();
        let done = self.done_tx.clone();
        let now = self.config.clock.now();
        self.jobs
            .spawn_blocking(move || match store.expire(now, 10_000) {
                Ok(gone) if !gone.is_empty() => {
                    let _ = done.blocking_send(Done::Expired(gone.len()));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot delete expired pieces"),
            });
        match self.swarm.behaviour_mut().kad.store_mut().expire(now) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "expired provider records"),
            Err(e) => tracing::warn!(error = %e, "cannot expire provider records"),
        }
    }

    /// Whether a peer's request may queue for the store: at most
    /// [`QUEUED`] jobs wait or run; beyond, the peer is told busy at once
    /// and its request body is dropped.
    fn room_for_job(&self, peer: PeerId, what: &'static str) -> bool {
        let room = self.jobs.len() < QUEUED;
        if !room {
            tracing::debug!(%peer, what, "store queue full; busy");
        }
        room
    }

    /// Runs store work on a blocking thread, at most [`JOBS`] at once; its
    /// answer waits out the node's fault delay.
    fn spawn_job(&mut self, job: impl FnOnce(&Store) -> Done + Send + 'static) {
        let (store, done, permits, delay) = (
            self.store.clone(),
            self.done_tx.clone(),
            self.permits.clone(),
            self.delay,
        );
        self.jobs.spawn(async move {
            let Ok(permit) = permits.acquire_owned().await else {
                return;
            };
            // The permit lives as long as the store work, even if this task
            // is aborted: [`Node::crash`] waits for it.
            let work = tokio::task::spawn_blocking(move || {
                let result = job(&store);
                drop(permit);
                result
            });
            if let Ok(result) = work.await {
                tokio::time::sleep(delay).await;
                let _ = done.send(result).await;
            }
        });
    }

    fn on_done(&mut self, done: Done) {
        let b = self.swarm.behaviour_mut();
        // A peer that went away cannot get its answer; nothing else to do.
        match done {
            Done::Announced {
                keys,
                streams,
                unreached,
            } => self.announcer.batch_done(keys, streams, &unreached),
            Done::Store(ch, resp, keys) => {
                self.announcer.stored(keys, Instant::now());
                let _ = b.store.send_response(ch, *resp);
            }
            Done::Fetch(ch, resp) => {
                let _ = b.fetch.send_response(ch, resp);
            }
            Done::Audit(ch, Some(resp)) => {
                let _ = b.audit.send_response(ch, resp);
            }
            Done::Audit(_, None) => {}
            Done::Expired(n) => tracing::info!(pieces = n, "deleted expired pieces"),
            Done::Answered => {}
        }
    }

    fn on_command(&mut self, cmd: Command) {
        let connected_peers = self.swarm.connected_peers().count();
        let me = *self.swarm.local_peer_id();
        let b = self.swarm.behaviour_mut();
        match cmd {
            Command::Request { peer, outbound } if peer == me => self.answer_locally(outbound),
            Command::Request { peer, outbound } => {
                if routes_to(&mut b.kad, peer) || self.swarm.is_connected(&peer) {
                    self.send(peer, outbound);
                } else if self.unaddressed.values().map(Vec::len).sum::<usize>() >= UNADDRESSED {
                    outbound.fail(RequestError::Lookup("too many lookups in flight".into()));
                } else {
                    // Find the peer's address first: a FIND_NODE walk towards it.
                    let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                    self.walks.start(id, Instant::now());
                    self.unaddressed
                        .entry(id)
                        .or_default()
                        .push((peer, outbound));
                }
            }
            Command::Providers { key, first, reply } => {
                let id = b.kad.get_providers(RecordKey::new(&key.to_bytes()));
                self.lookups.insert(id, (HashSet::new(), first, reply));
                self.walks.start(id, Instant::now());
            }
            Command::Dial { addr, reply } => {
                let Some(Protocol::P2p(peer)) = addr.iter().last() else {
                    let reason = format!("{addr} does not end in /p2p/<peer id>");
                    let _ = reply.send(Err(RequestError::Lookup(reason)));
                    return;
                };
                let opts = DialOpts::peer_id(peer)
                    .addresses(vec![addr])
                    .condition(PeerCondition::Always)
                    .build();
                self.await_connection(peer, reply, opts);
            }
            Command::Closest { key, reply } => {
                let id = b.kad.get_closest_peers(key);
                self.closest.insert(id, reply);
                self.walks.start(id, Instant::now());
            }
            Command::Routes { peer, reply } => {
                let _ = reply.send(routes_to(&mut b.kad, peer));
            }
            Command::Block { peers, blocked } => {
                for peer in peers {
                    if blocked {
                        b.blocked.block_peer(peer);
                    } else {
                        b.blocked.unblock_peer(peer);
                    }
                }
            }
            Command::Misbehave { fault, delay } => {
                self.fault = fault;
                self.delay = delay;
            }
            Command::Intercept { pieces, to } => self.intercepted = Some((pieces, to)),
            Command::Status { reply } => {
                let mut s = self.announcer.status.clone();
                s.announcing = self.announcer.pending();
                s.connected_peers = connected_peers;
                s.routing_table = b.kad.kbuckets().map(|k| k.num_entries()).sum();
                s.pieces = self.store.count();
                s.used = self.store.used();
                s.capacity = self.store.limits().capacity;
                s.free = self.store.free();
                let _ = reply.send(s);
            }
        }
    }

    fn on_swarm(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Store(e)) => self.on_store(e),
            SwarmEvent::Behaviour(BehaviourEvent::Fetch(e)) => self.on_fetch(e),
            SwarmEvent::Behaviour(BehaviourEvent::Audit(e)) => self.on_audit(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.on_kad(e),
            // Peers that speak Cairn's DHT go in the routing table with the
            // addresses they listen on.
            SwarmEvent::Behaviour(BehaviourEvent::Identify(
                libp2p::identify::Event::Received { peer_id, info, .. },
            )) if info.protocols.contains(&net::KAD_PROTOCOL) => {
                for addr in info.listen_addrs {
                    self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let local = on_this_machine(&self.config.bootstrap);
                note_listen_addr(&mut self.swarm, &address, local);
                tracing::info!(%address, "listening");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Autonat(autonat::Event::StatusChanged {
                new,
                ..
            })) => self.on_reachability(new),
            SwarmEvent::Behaviour(BehaviourEvent::Relay(
                relay::client::Event::ReservationReqAccepted { relay_peer_id, .. },
            )) => {
                // The relay client confirms the circuit address as external
                // (provider records carry it); the DHT mode stays client.
                tracing::info!(relay = %relay_peer_id, "relay reservation accepted: reachable through the relay");
                self.relays.accepted(relay_peer_id);
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } if self.relays.closed(listener_id, Instant::now()) => {
                let reason = reason.err().map_or("closed".into(), |e| e.to_string());
                tracing::warn!(%reason, "relay slot lost; asking again in {:?}", relay_slots::WAIT);
            }
            SwarmEvent::ConnectionEstablished { peer_id, .. } => {
                tracing::debug!(%peer_id, "connected");
                self.connected(peer_id, Ok(()));
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if !self.swarm.is_connected(&peer) => self.connected(peer, Err(error.to_string())),
            _ => {}
        }
    }

    /// AutoNAT's verdict: a node others cannot reach stays a DHT client
    /// (whatever addresses it was told are external) and reserves a slot on
    /// each bootstrap peer's relay; a reachable one serves the DHT.
    fn on_reachability(&mut self, status: autonat::NatStatus) {
        let b = self.swarm.behaviour_mut();
        match status {
            autonat::NatStatus::Public(addr) => {
                tracing::info!(%addr, "reachable from outside (AutoNAT)");
                b.kad.set_mode(None);
                for id in self.relays.drop_all() {
                    self.swarm.remove_listener(id);
                }
            }
            autonat::NatStatus::Private => {
                tracing::info!(
                    "not reachable from outside (AutoNAT): DHT client, asking the bootstrap peers' relays for a slot"
                );
                b.kad.set_mode(Some(kad::Mode::Client));
                let wanted = self.relays.want(Instant::now(), &self.config.bootstrap);
                self.ask_relays(wanted);
            }
            autonat::NatStatus::Unknown => {}
        }
    }

    fn ask_relays(&mut self, actions: relay_slots::Actions) {
        let now = Instant::now();
        for id in actions.remove {
            self.swarm.remove_listener(id);
        }
        for (relay, circuit) in actions.listen {
            match self.swarm.listen_on(circuit.clone()) {
                Ok(id) => self.relays.listening(relay, id, now),
                Err(e) => {
                    tracing::warn!(%circuit, error = %e, "cannot listen through relay");
                    self.relays.failed(relay, now);
                }
            }
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::ModeChanged { new_mode } => {
                tracing::info!(mode = %new_mode, "DHT mode");
            }
            kad::Event::RoutingUpdated { is_new_peer, .. } => {
                // The first peer in the table starts the first round.
                if self.announcer.never_started() {
                    self.announcer
                        .start_round(Instant::now(), self.store.count() == 0);
                }
                if is_new_peer {
                    self.announcer.new_server();
                }
            }
            kad::Event::OutboundQueryProgressed {
                id,
                result,
                stats,
                step,
            } => match result {
                QueryResult::StartProviding(r) => {
                    if let Err(e) = r {
                        tracing::debug!(error = ?e, "announcement incomplete");
                    }
                    self.announcer.done(id, stats.num_requests());
                }
                QueryResult::GetClosestPeers(r) => {
                    let peers = match r {
                        Ok(ok) => ok.peers,
                        Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
                    };
                    let ids: Vec<PeerId> = peers.iter().map(|p| p.peer_id).collect();
                    let now = Instant::now();
                    if self.announcer.viewed(id, &ids, stats.num_requests(), now) {
                        tracing::debug!(servers = ids.len(), "walked the network to announce");
                    }
                    for info in peers {
                        for addr in info.addrs {
                            self.swarm.add_peer_address(info.peer_id, addr);
                        }
                    }
                    if let Some(reply) = self.closest.remove(&id) {
                        let _ = reply.send(Ok(ids));
                    }
                    let Some(parked) = self.unaddressed.remove(&id) else {
                        return;
                    };
                    // Sent either way: without an address the request fails
                    // with a dial error, which the caller sees.
                    for (peer, outbound) in parked {
                        self.send(peer, outbound);
                    }
                }
                QueryResult::GetProviders(r) => {
                    let Some((found, first, _)) = self.lookups.get_mut(&id) else {
                        return;
                    };
                    match r {
                        Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) => {
                            found.extend(providers);
                        }
                        Ok(kad::GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                        Err(e) => tracing::debug!(error = ?e, "provider lookup incomplete"),
                    }
                    let done = step.last || (*first && !found.is_empty());
                    if done && let Some((found, _, reply)) = self.lookups.remove(&id) {
                        if !step.last
                            && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id)
                        {
                            query.finish();
                        }
                        let _ = reply.send(Ok(found));
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }

    /// Signs receipts with this node's key.
    fn receipt_signer(&self) -> impl FnOnce(Terms) -> SignedReceipt + Send + 'static {
        let key = self.signer.clone();
        move |terms| {
            Receipt {
                node: [0; 32],
                terms,
            }
            .sign(&key)
        }
    }

    fn on_store(&mut self, event: request_response::Event<StoreRequest, StoreResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => match request {
                StoreRequest::OfferV1(terms) => {
                    let now = self.config.clock.now();
                    let resp = match self.store.reserve(&peer.to_bytes(), &terms, now) {
                        Ok(reserved_until) => StoreResponse::AcceptedV1 { reserved_until },
                        Err(reason) => {
                            tracing::debug!(%peer, piece = %terms.piece, ?reason, "offer declined");
                            StoreResponse::RejectedV1(reason)
                        }
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .store
                        .send_response(channel, resp);
                }
                StoreRequest::TransferV1(transfer) if !self.room_for_job(peer, "transfer") => {
                    self.store.release(&peer.to_bytes(), &transfer.piece);
                    let busy = StoreResponse::FailedV1(TransferError::Storage);
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .store
                        .send_response(channel, busy);
                }
                StoreRequest::RenewV1(_) if !self.room_for_job(peer, "renewal") => {
                    let busy = StoreResponse::RejectedV1(RejectReason::Busy);
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .store
                        .send_response(channel, busy);
                }
                StoreRequest::TransferV1(transfer) => {
                    let sign = self.receipt_signer();
                    let clock = self.config.clock;
                    self.spawn_job(move |store| {
                        let result = store.store(&peer.to_bytes(), &transfer, clock.now(), sign);
                        match result {
                            Ok(receipt) => {
                                tracing::info!(%peer, piece = %transfer.piece, "stored piece");
                                Done::Store(channel, Box::new(StoreResponse::StoredV1(receipt)), store.announce_keys(&transfer.piece))
                            }
                            Err(e) => {
                                tracing::info!(%peer, piece = %transfer.piece, error = ?e, "transfer refused");
                                Done::Store(channel, Box::new(StoreResponse::FailedV1(e)), Vec::new())
                            }
                        }
                    });
                }
                StoreRequest::RenewV1(terms) => {
                    let sign = self.receipt_signer();
                    let clock = self.config.clock;
                    self.spawn_job(move |store| {
                        let resp = answer_renewal(store, peer, &terms, clock.now(), sign);
                        Done::Store(channel, Box::new(resp), Vec::new())
                    });
                }
            },
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => settle(&mut self.awaiting.store, request_id, peer, Ok(response)),
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => settle(&mut self.awaiting.store, request_id, peer, Err(error)),
            _ => {}
        }
    }

    fn on_fetch(&mut self, event: request_response::Event<FetchRequest, FetchResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => match self.fault {
                _ if !self.room_for_job(peer, "fetch") => {
                    let busy = FetchResponse::FailedV1 {
                        reason: "busy".into(),
                    };
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .fetch
                        .send_response(channel, busy);
                }
                Some(Fault::Stall) => {
                    if self.stalled.len() >= 1024 {
                        self.stalled.pop_front();
                    }
                    self.stalled.push_back(channel);
                }
                fault => self.spawn_job(move |store| {
                    let mut resp = serve_fetch(store, peer, request);
                    if let (Some(Fault::Garbage), FetchResponse::PieceV1 { data }) =
                        (fault, &mut resp)
                        && !data.is_empty()
                    {
                        let mut bad = data.to_vec();
                        bad[0] ^= 0xff;
                        *data = bad.into();
                    }
                    Done::Fetch(channel, resp)
                }),
            },
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => settle(&mut self.awaiting.fetch, request_id, peer, Ok(response)),
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => settle(&mut self.awaiting.fetch, request_id, peer, Err(error)),
            _ => {}
        }
    }

    fn on_audit(&mut self, event: request_response::Event<AuditRequest, AuditResponse>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request: AuditRequest::ChallengeV1 { piece, nonce },
                        channel,
                        ..
                    },
                ..
            } => {
                if let Some((pieces, to)) = &self.intercepted
                    && pieces.contains(&piece)
                {
                    let (answer, answered) = oneshot::channel();
                    let done = self.done_tx.clone();
                    if to
                        .try_send(Challenge {
                            piece,
                            nonce,
                            answer,
                        })
                        .is_ok()
                    {
                        self.jobs.spawn(async move {
                            let resp = answered.await.unwrap_or(AuditResponse::NotFoundV1);
                            let _ = done.send(Done::Audit(channel, Some(resp))).await;
                        });
                    } else {
                        let b = self.swarm.behaviour_mut();
                        let _ = b.audit.send_response(channel, AuditResponse::NotFoundV1);
                    }
                    return;
                }
                if !self.room_for_job(peer, "audit") {
                    // Unanswered: the challenger sees this node unavailable.
                    return;
                }
                let now = self.config.clock.now();
                self.spawn_job(move |store| {
                    Done::Audit(channel, answer_challenge(store, peer, &piece, &nonce, now))
                })
            }
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => settle(&mut self.awaiting.audit, request_id, peer, Ok(response)),
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => settle(&mut self.awaiting.audit, request_id, peer, Err(error)),
            _ => {}
        }
    }

    /// Tells whoever waits for a connection to `peer` how it went.
    fn connected(&mut self, peer: PeerId, result: Result<(), String>) {
        for a in self.connecting.remove(&peer).unwrap_or_default() {
            let _ = a.send(result.clone().map_err(|reason| RequestError::Failed {
                peer,
                reason: format!("cannot connect: {reason}"),
            }));
        }
        if result.is_ok() {
            self.release_parked(peer);
        }
    }

    /// Sends the requests parked until `peer`'s address was found: a
    /// connection to it is up (the walk towards it has reached it), so
    /// they need not wait for the walk's end, which a stalled node can hold
    /// up for a dial timeout. A walk left with nothing parked is ended.
    fn release_parked(&mut self, peer: PeerId) {
        let mut ready = Vec::new();
        let mut emptied = Vec::new();
        for (id, parked) in &mut self.unaddressed {
            ready.extend(parked.extract_if(.., |(p, _)| *p == peer).map(|(_, o)| o));
            if parked.is_empty() {
                emptied.push(*id);
            }
        }
        for id in emptied {
            self.unaddressed.remove(&id);
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
        }
        for outbound in ready {
            self.send(peer, outbound);
        }
    }

    /// A request this node makes of itself (its pinner auditing or renewing
    /// a piece it holds, a get finding a piece here) is answered from the
    /// store as a peer's would be, as a store job like theirs: no
    /// connection to oneself exists.
    fn answer_locally(&mut self, outbound: Outbound) {
        let (me, now) = (*self.swarm.local_peer_id(), self.config.clock.now());
        match outbound {
            Outbound::Connect(a) => {
                let _ = a.send(Ok(()));
            }
            Outbound::Fetch(request, a) => self.spawn_job(move |store| {
                let _ = a.send(Ok(serve_fetch(store, me, request)));
                Done::Answered
            }),
            Outbound::Audit(AuditRequest::ChallengeV1 { piece, nonce }, a) => {
                self.spawn_job(move |store| {
                    let _ = a.send(answer_challenge(store, me, &piece, &nonce, now).ok_or_else(
                        || RequestError::Failed {
                            peer: me,
                            reason: "the piece cannot be read now".into(),
                        },
                    ));
                    Done::Answered
                });
            }
            Outbound::Store(StoreRequest::RenewV1(terms), a) => {
                let sign = self.receipt_signer();
                self.spawn_job(move |store| {
                    let _ = a.send(Ok(answer_renewal(store, me, &terms, now, sign)));
                    Done::Answered
                });
            }
            Outbound::Store(StoreRequest::OfferV1(_) | StoreRequest::TransferV1(_), a) => {
                let reason = "a node does not store pieces for itself".into();
                let _ = a.send(Err(RequestError::Failed { peer: me, reason }));
            }
        }
    }

    fn send(&mut self, peer: PeerId, outbound: Outbound) {
        let (b, w) = (self.swarm.behaviour_mut(), &mut self.awaiting);
        match outbound {
            Outbound::Store(r, a) => {
                w.store.insert(b.store.send_request(&peer, r), a);
            }
            Outbound::Fetch(r, a) => {
                w.fetch.insert(b.fetch.send_request(&peer, r), a);
            }
            Outbound::Audit(r, a) => {
                w.audit.insert(b.audit.send_request(&peer, r), a);
            }
            Outbound::Connect(a) => {
                if self.swarm.is_connected(&peer) {
                    let _ = a.send(Ok(()));
                    return;
                }
                self.await_connection(peer, a, DialOpts::peer_id(peer).build());
            }
        }
    }

    /// Dials with `opts` and answers `a` once a connection to `peer` is
    /// established, or the dial failed.
    fn await_connection(&mut self, peer: PeerId, a: Answer<()>, opts: DialOpts) {
        let waiting = self.connecting.entry(peer).or_default();
        if waiting.len() >= CONNECT_WAITERS {
            let _ = a.send(Err(RequestError::Lookup("too many waiting".into())));
            return;
        }
        waiting.push(a);
        match self.swarm.dial(opts) {
            Ok(()) | Err(libp2p::swarm::DialError::DialPeerConditionFalse(_)) => {}
            Err(e) => self.connected(peer, Err(e.to_string())),
        }
    }
}

fn routes_to(kad: &mut kad::Behaviour<ProviderStore>, peer: PeerId) -> bool {
    kad.kbucket(peer)
        .is_some_and(|bucket| bucket.iter().any(|e| *e.node.key.preimage() == peer))
}

/// The answer to `peer`'s challenge for `piece`: a proof, or not found;
/// none while the piece cannot be read (an error that may pass).
fn answer_challenge(
    store: &Store,
    peer: PeerId,
    piece: &Cid,
    nonce: &[u8; 32],
    now: u64,
) -> Option<AuditResponse> {
    match store.prove(piece, nonce, now) {
        Ok(Some(proof)) => Some(AuditResponse::ProofV1(proof)),
        Ok(None) | Err(store::Error::Rotted { .. }) => Some(AuditResponse::NotFoundV1),
        Err(e) => {
            tracing::warn!(%peer, %piece, error = %e, "cannot answer audit now");
            None
        }
    }
}

/// The answer to `peer`'s renewal: a receipt for the new term, or why not.
fn answer_renewal(
    store: &Store,
    peer: PeerId,
    terms: &Terms,
    now: u64,
    sign: impl FnOnce(Terms) -> SignedReceipt,
) -> StoreResponse {
    match store.renew(terms, now, sign) {
        Ok(receipt) => StoreResponse::StoredV1(receipt),
        Err(reason) => {
            tracing::debug!(%peer, piece = %terms.piece, ?reason, "renewal declined");
            StoreResponse::RejectedV1(reason)
        }
    }
}

fn serve_fetch(store: &Store, peer: PeerId, request: FetchRequest) -> FetchResponse {
    let result = match request {
        FetchRequest::PieceV1 { piece } => store
            .read(&piece)
            .map(|d| d.map(|data| FetchResponse::PieceV1 { data })),
        FetchRequest::RangeV1 { piece, offset, len } => {
            store.read_range(&piece, offset, len).map(|r| {
                r.map(|(size, encoded)| FetchResponse::RangeV1 {
                    size,
                    encoded: encoded.into(),
                })
            })
        }
        FetchRequest::ManifestV1 { root } => match store.manifest_for(&root) {
            Ok(Some(manifest)) => store.read(&manifest).map(|d| {
                d.map(|data| FetchResponse::ManifestV1 {
                    data: data.to_vec().into(),
                })
            }),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(Some(resp)) => resp,
        Ok(None) => FetchResponse::NotFoundV1,
        Err(store::Error::Proof(e)) => FetchResponse::FailedV1 {
            reason: e.to_string(),
        },
        Err(store::Error::Rotted { .. }) => FetchResponse::NotFoundV1,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "cannot serve fetch now");
            FetchResponse::FailedV1 {
                reason: "temporarily unavailable".into(),
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_protocol::block;

    /// Two distinct walk IDs (they come only from a Kademlia behaviour).
    fn walk_ids() -> (QueryId, QueryId) {
        let peer = PeerId::random();
        let mut kad = kad::Behaviour::new(peer, kad::store::MemoryStore::new(peer));
        (kad.get_closest_peers(peer), kad.get_closest_peers(peer))
    }

    fn keys(n: usize) -> Vec<Cid> {
        (0..n).map(|i| block::piece_cid(&i.to_le_bytes())).collect()
    }

    /// A fresh key waits for a walk of the network, then, on a network
    /// smaller than a bucket, for company (up to LINGER) before its batch
    /// goes to every server found; a full batch goes at once.
    #[test]
    fn fresh_keys_go_by_batch_to_everyone_a_walk_found() {
        let mut a = Announcer::new(32);
        let t0 = Instant::now();
        assert_eq!(a.plan(t0), Plan::Wait, "nothing to announce");
        a.stored(keys(1), t0);
        assert_eq!(a.plan(t0), Plan::Walk);
        let (id, other) = walk_ids();
        a.viewing = Some(id);
        assert_eq!(a.plan(t0), Plan::Wait, "the walk is under way");
        assert_eq!(a.batch_wakeup(t0), None);

        let servers: Vec<PeerId> = (0..11).map(|_| PeerId::random()).collect();
        assert!(!a.viewed(other, &servers, 11, t0), "another walk");
        assert!(a.viewed(id, &servers, 11, t0));
        assert_eq!(a.status.announce_requests, 11);
        assert_eq!(a.plan(t0), Plan::Wait, "waiting for company");
        let due = t0 + provide::LINGER;
        assert_eq!(a.batch_wakeup(t0), Some(due));
        assert_eq!(a.plan(due), Plan::Batch(servers.clone()));

        // One batch at a time; a full one does not wait.
        a.batch = 1;
        a.stored(keys(provide::BATCH), t0);
        assert_eq!(a.plan(t0), Plan::Wait);
        assert_eq!(a.batch_wakeup(t0), None);
        a.batch_done(1, 11, &servers[..1]);
        assert_eq!((a.status.announced, a.status.announce_requests), (1, 22));
        assert_eq!(
            a.plan(t0),
            Plan::Batch(servers[1..].to_vec()),
            "one never answered"
        );

        // The view is trusted for VIEW_FOR, then walked again; and at once
        // when a new server joins.
        assert_eq!(a.plan(t0 + provide::VIEW_FOR), Plan::Walk);
        a.new_server();
        assert_eq!(a.plan(t0), Plan::Walk);
    }

    /// A walk that finds a bucket's worth of servers or more means a
    /// network too large to batch for: each key walks to its own closest.
    #[test]
    fn a_large_network_is_announced_key_by_key() {
        let mut a = Announcer::new(32);
        let t0 = Instant::now();
        a.stored(keys(1), t0);
        let (id, _) = walk_ids();
        a.viewing = Some(id);
        let servers: Vec<PeerId> = (0..kad::K_VALUE.get()).map(|_| PeerId::random()).collect();
        assert!(a.viewed(id, &servers, 30, t0));
        assert_eq!(a.plan(t0), Plan::KeyByKey);
        assert_eq!(a.batch_wakeup(t0), None);
        a.new_server();
        assert_eq!(
            a.plan(t0),
            Plan::KeyByKey,
            "a new server changes nothing here"
        );
    }

    /// A round over an empty index ends at once; a round's keys, read from
    /// the piece index, need not wait for company.
    #[test]
    fn a_rounds_keys_go_without_lingering() {
        let mut a = Announcer::new(32);
        let t0 = Instant::now();
        a.start_round(t0, true);
        assert_eq!(
            a.plan(t0),
            Plan::Wait,
            "an empty index: nothing to walk for"
        );
        a.finish_round(t0, Duration::from_secs(3600));
        assert_eq!(a.status.announce_rounds, 1);
        a.start_round(t0, false);
        assert_eq!(a.plan(t0), Plan::Walk);
        let (id, _) = walk_ids();
        a.viewing = Some(id);
        let servers = vec![PeerId::random()];
        assert!(a.viewed(id, &servers, 1, t0));
        assert_eq!(a.plan(t0), Plan::Batch(servers));
    }
}
