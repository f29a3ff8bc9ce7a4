//! A network of real Cairn nodes in one process, on libp2p's in-memory
//! transport, with faults on cue.
//!
//! Every node is [`cairn_node::node::Node`] as `cairn node` runs it (same
//! behaviours, protocols and store), with its data directory under the
//! network's directory. Clients are nodes with no capacity, as `cairn add`
//! starts them.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use cairn_node::client::{self, AddOptions, Added, Content, GetOptions, Input};
use cairn_node::node::{Clock, Config as NodeConfig, Fault, Handle, Node, Status, Transport};
use cairn_node::pinner;
use cid::Cid;
use futures::FutureExt as _;
use libp2p::multiaddr::Protocol;

use crate::lazy;
use libp2p::{Multiaddr, PeerId};
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{Rng as _, SeedableRng as _};

/// How the network is built. Defaults suit a test of a few dozen nodes.
#[derive(Debug, Clone)]
pub struct Config {
    /// Storage nodes. Default 12.
    pub nodes: usize,
    /// Bytes each node holds. Default 1 GiB.
    pub capacity: u64,
    /// Clock speed: simulated seconds per real second. Default 1.
    pub speed: u32,
    /// Noise on the in-memory transport (as on a real network) or a
    /// plaintext handshake (cheaper, for thousands of nodes). Default true.
    pub noise: bool,
    /// Nodes joining at once. Default 16.
    pub join_concurrency: usize,
    /// Running nodes a joining node is given to dial. Default 3.
    pub seeds: usize,
    /// Connections each node keeps at most. Default 512, as `cairn node`.
    pub max_connections: u32,
    /// A connection with no stream open closes after this long (real
    /// time). Default 10 s: an open connection costs about 45 KB at each
    /// end, and a node that joins talks to many peers once.
    pub idle_timeout: Duration,
    /// Kademlia's periodic routing-table refresh (real time). Default off:
    /// each refresh costs a node about what joining did, and N nodes on a
    /// few cores cannot all pay it every 5 min (docs/SIMULATOR.md). Nodes
    /// still refresh while they know fewer than 20 peers.
    pub dht_refresh: Option<Duration>,
    /// Seed of the RNG behind seeds and fault choices.
    pub seed: u64,
    /// How every node, the client included, keeps pinned content alive.
    /// The client pins what [`Network::add`] adds.
    pub pinner: pinner::Settings,
    /// Where the nodes' data directories go; default a temporary directory
    /// removed when the network drops.
    pub dir: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            nodes: 12,
            capacity: 1 << 30,
            speed: 1,
            noise: true,
            join_concurrency: 16,
            seeds: 3,
            max_connections: 512,
            idle_timeout: Duration::from_secs(10),
            dht_refresh: None,
            seed: 0,
            pinner: pinner::Settings::default(),
            dir: None,
        }
    }
}

/// Where a node is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    /// Crashed or stopped; its data directory is kept for a restart.
    Down,
    /// Left for good: its data directory is gone.
    Gone,
}

struct Slot {
    peer: PeerId,
    dir: PathBuf,
    /// Its listen address, kept across restarts.
    addr: Multiaddr,
    node: Option<Node>,
    gone: bool,
}

impl Slot {
    fn state(&self) -> State {
        match (&self.node, self.gone) {
            (Some(_), _) => State::Up,
            (None, false) => State::Down,
            (None, true) => State::Gone,
        }
    }
}

/// A running simulated network.
pub struct Network {
    config: Config,
    clock: Clock,
    root: PathBuf,
    _temp: Option<tempfile::TempDir>,
    slots: Vec<Slot>,
    client: Option<Node>,
    rng: StdRng,
    /// Partition groups in force (node indices); empty when whole.
    partition: Vec<Vec<usize>>,
}

impl Network {
    /// Starts `config.nodes` storage nodes and waits until each knows peers
    /// in its routing table.
    pub async fn start(config: Config) -> Result<Network> {
        ensure!(config.nodes > 0, "a network needs at least one node");
        let (root, temp) = match &config.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                (dir.clone(), None)
            }
            None => {
                let t = tempfile::Builder::new()
                    .prefix("cairn-sim-")
                    .tempdir()
                    .context("cannot create a temporary directory")?;
                (t.path().to_path_buf(), Some(t))
            }
        };
        let mut net = Network {
            clock: Clock::scaled(config.speed),
            rng: StdRng::seed_from_u64(config.seed),
            root,
            _temp: temp,
            slots: Vec::with_capacity(config.nodes),
            client: None,
            partition: Vec::new(),
            config,
        };
        net.grow(net.config.nodes).await?;
        Ok(net)
    }

    /// Adds `n` new storage nodes, up to `join_concurrency` joining at once,
    /// each given seeds among the nodes that have finished joining. Node `i`
    /// starts once every node before `i - join_concurrency` has joined, so
    /// the seeds it may be given do not depend on timing. Returns their
    /// indices.
    pub async fn grow(&mut self, n: usize) -> Result<Vec<usize>> {
        let first = self.slots.len();
        let end = first + n;
        let concurrency = self.config.join_concurrency.max(1);
        // Joins under way, oldest first. A node joins on its own tasks: these
        // futures only watch, so they need no polling until awaited.
        let mut joining: VecDeque<(usize, futures::future::BoxFuture<'static, Result<()>>)> =
            VecDeque::new();
        for i in first..end {
            let candidates = loop {
                let candidates: Vec<usize> = self
                    .reachable_from(i)
                    .into_iter()
                    .filter(|j| !joining.iter().any(|(k, _)| k == j))
                    .collect();
                // The very first node starts alone: the rest need a seed.
                if joining.len() < concurrency && (!candidates.is_empty() || joining.is_empty()) {
                    break candidates;
                }
                let (k, join) = joining.pop_front().expect("a join is under way");
                join.await
                    .with_context(|| format!("node {k} did not join"))?;
                if (k + 1) % 100 == 0 {
                    tracing::info!(nodes = k + 1, "joined");
                }
            };
            let seeds = self.pick_seeds(candidates);
            let mut config = self.node_config(
                self.root.join(format!("node-{i:05}")),
                "/memory/0".parse().expect("valid"),
            );
            config.bootstrap = seeds.iter().map(|&j| self.p2p_addr(j)).collect();
            let seed_handles: Vec<Handle> = seeds.iter().filter_map(|&j| self.handle(j)).collect();
            let dir = config.data_dir.clone();
            let node = Node::start(config)
                .await
                .with_context(|| format!("cannot start node {i}"))?;
            let addr = node
                .listen_addrs
                .first()
                .cloned()
                .context("node has no listen address")?;
            let handle = node.handle.clone();
            self.slots.push(Slot {
                peer: node.peer_id,
                dir,
                addr,
                node: Some(node),
                gone: false,
            });
            // The nodes it can reach, those still joining and itself included.
            let network = self.reachable_from(i).len() + 1;
            joining.push_back((i, joined(handle, seed_handles, network).boxed()));
        }
        for (k, join) in joining {
            join.await
                .with_context(|| format!("node {k} did not join"))?;
        }
        Ok((first..end).collect())
    }

    fn node_config(&self, dir: PathBuf, listen: Multiaddr) -> NodeConfig {
        let mut c = NodeConfig::new(dir);
        c.capacity = self.config.capacity;
        c.listen = vec![listen];
        c.transport = Transport::Memory {
            noise: self.config.noise,
        };
        c.clock = self.clock;
        c.max_connections = self.config.max_connections;
        c.idle_timeout = self.config.idle_timeout;
        c.dht_refresh = self.config.dht_refresh;
        c.pinner = self.config.pinner.clone();
        c
    }

    /// Up to `config.seeds` of `candidates`.
    fn pick_seeds(&mut self, candidates: Vec<usize>) -> Vec<usize> {
        candidates
            .choose_multiple(&mut self.rng, self.config.seeds)
            .copied()
            .collect()
    }

    /// The other nodes up that node `i` (up or not, or not yet started)
    /// may connect to: all of them, unless a partition puts `i` in a group.
    fn reachable_from(&self, i: usize) -> Vec<usize> {
        let group = self.partition.iter().find(|g| g.contains(&i));
        let blocked = |j: usize| {
            group.is_some_and(|g| !g.contains(&j)) && self.partition.iter().any(|h| h.contains(&j))
        };
        self.up()
            .into_iter()
            .filter(|&j| j != i && !blocked(j))
            .collect()
    }

    fn p2p_addr(&self, i: usize) -> Multiaddr {
        let s = &self.slots[i];
        s.addr.clone().with(Protocol::P2p(s.peer))
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    pub fn state(&self, i: usize) -> State {
        self.slots[i].state()
    }

    pub fn peer_id(&self, i: usize) -> PeerId {
        self.slots[i].peer
    }

    /// The index of the node with this peer ID.
    pub fn index_of(&self, peer: &PeerId) -> Option<usize> {
        self.slots.iter().position(|s| s.peer == *peer)
    }

    /// Indices of the nodes now up.
    pub fn up(&self) -> Vec<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].node.is_some())
            .collect()
    }

    /// The directory the nodes' data directories are in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node's data directory.
    pub fn dir(&self, i: usize) -> &Path {
        &self.slots[i].dir
    }

    /// A handle to node `i`, if it is up.
    pub fn handle(&self, i: usize) -> Option<Handle> {
        self.slots[i].node.as_ref().map(|n| n.handle.clone())
    }

    pub async fn status(&self, i: usize) -> Result<Status> {
        let h = self
            .handle(i)
            .with_context(|| format!("node {i} is not up"))?;
        Ok(h.status().await?)
    }

    /// The client the network's adds and gets go through (a node with no
    /// capacity, as `cairn add` starts), started on first use.
    pub async fn client(&mut self) -> Result<Handle> {
        if let Some(c) = &self.client {
            return Ok(c.handle.clone());
        }
        let dir = self.root.join("client");
        let mut config = self.node_config(dir, "/memory/0".parse().expect("valid"));
        config.capacity = 0;
        let seeds = self.pick_seeds(self.up());
        config.bootstrap = seeds.iter().map(|&j| self.p2p_addr(j)).collect();
        let node = Node::start(config)
            .await
            .context("cannot start the client")?;
        let handle = node.handle.clone();
        wait_until(&handle, "knows a peer", || {
            let h = handle.clone();
            async move { Ok(h.status().await?.routing_table > 0) }
        })
        .await?;
        self.client = Some(node);
        Ok(handle)
    }

    /// Adds `bytes` as a file through the client, which pins it.
    pub async fn add(&mut self, bytes: &[u8], options: &AddOptions) -> Result<Added> {
        let client = self.client().await?;
        let path = self.root.join("client-input");
        tokio::fs::write(&path, bytes)
            .await
            .with_context(|| format!("cannot write {}", path.display()))?;
        let input = Input::Path {
            path,
            options: Default::default(),
        };
        let added = client::add(&client, input, options, |_| {}).await?;
        if added.already_stored {
            pinner::pin_existing(&client, added.root).await?;
        } else {
            pinner::pin_added(&client, &added)?;
        }
        Ok(added)
    }

    /// Gets the whole content `root` through the client.
    pub async fn get(&mut self, root: Cid, options: GetOptions) -> Result<Vec<u8>> {
        let client = self.client().await?;
        let content = Content::open(&client, root, options).await?;
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            content.read(0, None, &mut out).map(|()| out)
        })
        .await
        .context("get task failed")?
    }

    /// Node `i` crashes: it stops where it is, keeping its data directory.
    pub async fn crash(&mut self, i: usize) -> Result<()> {
        let node = self.take(i)?;
        node.crash().await;
        Ok(())
    }

    /// Node `i` shuts down cleanly, keeping its data directory.
    pub async fn stop(&mut self, i: usize) -> Result<()> {
        let node = self.take(i)?;
        node.stop().await;
        Ok(())
    }

    fn take(&mut self, i: usize) -> Result<Node> {
        let slot = self.slots.get_mut(i).context("no such node")?;
        slot.node
            .take()
            .with_context(|| format!("node {i} is not up"))
    }

    /// Node `i`, down, starts again from its data directory at its old
    /// address (same identity, same pieces), joining through running nodes.
    pub async fn restart(&mut self, i: usize) -> Result<()> {
        match self.state(i) {
            State::Down => {}
            State::Up => bail!("node {i} is already up"),
            State::Gone => bail!("node {i} left for good"),
        }
        let seeds = self.pick_seeds(self.reachable_from(i));
        let slot = &self.slots[i];
        let mut config = self.node_config(slot.dir.clone(), slot.addr.clone());
        config.bootstrap = seeds.iter().map(|&j| self.p2p_addr(j)).collect();
        let node = Node::start(config)
            .await
            .with_context(|| format!("cannot restart node {i}"))?;
        let handle = node.handle.clone();
        self.slots[i].node = Some(node);
        self.apply_partition(i).await?;
        let seeds: Vec<Handle> = seeds.iter().filter_map(|&j| self.handle(j)).collect();
        joined(handle, seeds, self.reachable_from(i).len() + 1).await
    }

    /// Node `i` leaves for good: stopped (if up) and its data directory deleted.
    pub async fn leave(&mut self, i: usize) -> Result<()> {
        if self.state(i) == State::Up {
            self.crash(i).await?;
        }
        let slot = &mut self.slots[i];
        slot.gone = true;
        remove_dir(&slot.dir)
    }

    /// Node `i` loses its disk: it stops, its pieces and index are deleted,
    /// and it starts again empty (keeping its identity, as a node whose
    /// data volume failed would).
    pub async fn lose_disk(&mut self, i: usize) -> Result<()> {
        if self.state(i) == State::Up {
            self.crash(i).await?;
        }
        let dir = self.slots[i].dir.clone();
        remove_dir(&dir.join("store"))?;
        let providers = dir.join("providers.redb");
        if providers.exists() {
            std::fs::remove_file(&providers)
                .with_context(|| format!("cannot remove {}", providers.display()))?;
        }
        self.restart(i).await
    }

    /// Flips one byte in `fraction` of node `i`'s piece files, chosen by the
    /// network's RNG. The node is not told: it finds out when it reads them.
    /// Returns how many pieces were damaged.
    pub fn corrupt(&mut self, i: usize, fraction: f64) -> Result<usize> {
        let files = self.choose_pieces(i, fraction)?;
        for f in &files {
            let mut bytes =
                std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
            if let Some(b) = bytes.get_mut(0) {
                *b ^= 0x01;
            }
            std::fs::write(f, &bytes).with_context(|| format!("cannot write {}", f.display()))?;
        }
        Ok(files.len())
    }

    /// Deletes `fraction` of node `i`'s piece files behind its back: it still
    /// answers for the rest. Returns how many were dropped.
    pub fn drop_pieces(&mut self, i: usize, fraction: f64) -> Result<usize> {
        let files = self.choose_pieces(i, fraction)?;
        for f in &files {
            std::fs::remove_file(f).with_context(|| format!("cannot remove {}", f.display()))?;
        }
        Ok(files.len())
    }

    /// Deletes node `i`'s file of `piece` behind its back; false if it has none.
    pub fn drop_piece(&mut self, i: usize, piece: &Cid) -> Result<bool> {
        let path = cairn_node::store::piece_file(&self.slots[i].dir.join("store"), piece);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e).with_context(|| format!("cannot remove {}", path.display())),
        }
    }

    /// Node `i` turns lazy: it answers audits of the pieces of `added` it
    /// holds as a node that kept only their manifests would, by first
    /// fetching `k` other pieces of the segment and rebuilding the piece.
    /// Returns how many pieces that is, and the times its answers take.
    pub async fn make_lazy(&mut self, i: usize, added: &[Added]) -> Result<(usize, lazy::Answers)> {
        let h = self
            .handle(i)
            .with_context(|| format!("node {i} is not up"))?;
        let held: HashSet<Cid> = self
            .piece_files(i)?
            .iter()
            .filter_map(|p| p.file_name()?.to_str()?.parse().ok())
            .collect();
        let mut places = HashMap::new();
        for a in added {
            for segment in &a.segments {
                for (index, piece) in segment.iter().enumerate() {
                    if held.contains(piece) {
                        let place = lazy::Place {
                            scheme: a.scheme,
                            segment: segment.clone(),
                            index,
                        };
                        places.insert(*piece, place);
                    }
                }
            }
        }
        let challenges = h.intercept_audits(places.keys().copied().collect()).await?;
        let n = places.len();
        let answers = lazy::Answers::default();
        tokio::spawn(lazy::answer(h, places, challenges, answers.clone()));
        Ok((n, answers))
    }

    /// The piece files on node `i`'s disk.
    pub fn piece_files(&self, i: usize) -> Result<Vec<PathBuf>> {
        piece_files(&self.slots[i].dir.join("store/pieces"))
    }

    /// Node `i`'s piece files in name order, of which `fraction` are chosen.
    fn choose_pieces(&mut self, i: usize, fraction: f64) -> Result<Vec<PathBuf>> {
        ensure!(
            (0.0..=1.0).contains(&fraction),
            "fraction {fraction} is not between 0 and 1"
        );
        let files = piece_files(&self.slots[i].dir.join("store/pieces"))?;
        let n = (files.len() as f64 * fraction).round() as usize;
        Ok(files.choose_multiple(&mut self.rng, n).cloned().collect())
    }

    /// Node `i` answers every request `delay` late from now on.
    pub async fn slow(&mut self, i: usize, delay: Duration) -> Result<()> {
        let h = self
            .handle(i)
            .with_context(|| format!("node {i} is not up"))?;
        Ok(h.misbehave(None, delay).await?)
    }

    /// Node `i` misbehaves in how it answers fetches.
    pub async fn misbehave(&mut self, i: usize, fault: Option<Fault>) -> Result<()> {
        let h = self
            .handle(i)
            .with_context(|| format!("node {i} is not up"))?;
        Ok(h.misbehave(fault, Duration::ZERO).await?)
    }

    /// Splits the network: nodes in different groups refuse each other's
    /// connections (open ones close). Nodes in no group, and the client,
    /// reach everyone. Replaces any partition in force.
    pub async fn partition(&mut self, groups: Vec<Vec<usize>>) -> Result<()> {
        let mut seen = HashSet::new();
        for &i in groups.iter().flatten() {
            ensure!(i < self.slots.len(), "no node {i}");
            ensure!(seen.insert(i), "node {i} is in two groups");
        }
        self.heal().await?;
        self.partition = groups;
        for i in self.up() {
            self.apply_partition(i).await?;
        }
        Ok(())
    }

    /// Ends the partition in force.
    pub async fn heal(&mut self) -> Result<()> {
        let all: Vec<PeerId> = self.slots.iter().map(|s| s.peer).collect();
        for i in self.up() {
            if let Some(h) = self.handle(i) {
                h.block(all.clone(), false).await?;
            }
        }
        self.partition.clear();
        Ok(())
    }

    /// Has node `i` refuse the nodes outside its group.
    async fn apply_partition(&self, i: usize) -> Result<()> {
        let Some(group) = self.partition.iter().find(|g| g.contains(&i)) else {
            return Ok(());
        };
        let others: Vec<PeerId> = self
            .partition
            .iter()
            .filter(|g| !std::ptr::eq(*g, group))
            .flatten()
            .map(|&j| self.slots[j].peer)
            .collect();
        if let Some(h) = self.handle(i) {
            h.block(others, true).await?;
        }
        Ok(())
    }

    /// Waits until every node up has announced what it stored (60 s at most).
    pub async fn announced(&self) -> Result<()> {
        for i in self.up() {
            let Some(h) = self.handle(i) else { continue };
            wait_until(&h, "done announcing", || {
                let h = h.clone();
                async move { Ok(h.status().await?.announcing == 0) }
            })
            .await?;
        }
        Ok(())
    }

    /// Picks a node index uniformly among those up.
    pub fn random_up(&mut self) -> Option<usize> {
        let up = self.up();
        if up.is_empty() {
            return None;
        }
        Some(up[self.rng.gen_range(0..up.len())])
    }

    /// Stops every node cleanly.
    pub async fn shutdown(mut self) {
        if let Some(c) = self.client.take() {
            c.stop().await;
        }
        let nodes: Vec<Node> = self
            .slots
            .iter_mut()
            .filter_map(|s| s.node.take())
            .collect();
        futures::future::join_all(nodes.into_iter().map(Node::stop)).await;
    }
}

/// Kademlia's bucket size: a node that knows this many peers has walked
/// the DHT towards itself, so its closest peers know it.
const K: usize = 20;

/// Waits until a node that dialed `seeds` has joined: it routes to its
/// seeds and, in a network of more than [`K`] nodes, to `K` peers (its
/// self-lookup reached its neighbours); in a smaller one, where no bucket
/// is ever full, its seeds route to it. From then on others can find it.
async fn joined(node: Handle, seeds: Vec<Handle>, network: usize) -> Result<()> {
    let me = node.peer_id();
    for seed in seeds {
        let peer = seed.peer_id();
        wait_until(&node, "routing to its seeds", || {
            let node = node.clone();
            async move { Ok(node.routes_to(peer).await?) }
        })
        .await?;
        if network <= K {
            wait_until(&node, "known to its seeds", || {
                let seed = seed.clone();
                async move { Ok(seed.routes_to(me).await?) }
            })
            .await?;
        }
    }
    if network > K {
        wait_until(&node, "routing to its neighbours", || {
            let node = node.clone();
            async move { Ok(node.status().await?.routing_table >= K) }
        })
        .await?;
    }
    Ok(())
}

/// Polls `cond` until it holds, for 60 s at most. The routing table has no
/// event stream to wait on; a join takes a few identify round trips.
async fn wait_until<F>(node: &Handle, what: &str, mut cond: impl FnMut() -> F) -> Result<()>
where
    F: Future<Output = Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !cond().await? {
        if tokio::time::Instant::now() >= deadline {
            bail!("node {} still not: {what} after 60 s", node.peer_id());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub(crate) fn piece_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = match std::fs::read_dir(&d) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", d.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", d.display()))?;
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}
