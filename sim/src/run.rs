//! Runs a scenario on a simulated network: plays its schedule against the
//! clock, measures outcomes at each sample and returns the report.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use cairn_node::client::{self, AddOptions, Content, GetOptions, Input};
use cairn_node::node::{Fault, Handle};
use cairn_protocol::block;
use cid::Cid;
use rand::rngs::StdRng;
use rand::seq::SliceRandom as _;
use rand::{RngCore as _, SeedableRng as _};
use tokio::sync::{Semaphore, mpsc};

use crate::network::{Config, Network, State};
use crate::report::{Outcomes, Report, Sample, percentile};
use crate::scenario::{self, Action, Behaviour, Scenario};

/// What the runner is told besides the scenario.
#[derive(Clone, Default)]
pub struct Options {
    /// Where the nodes' data directories go (default: a temporary directory).
    pub dir: Option<PathBuf>,
    /// Called after each event with (simulated ms done, simulated ms in all).
    pub progress: Option<Arc<dyn Fn(u64, u64) + Send + Sync>>,
}

/// Content added during the run.
struct Stored {
    root: Cid,
    hash: blake3::Hash,
    /// Per segment, its piece CIDs.
    segments: Vec<Vec<Cid>>,
    k: usize,
}

/// What a finished add or get reports to the runner.
enum Done {
    Add {
        content: u64,
        result: Result<Stored>,
    },
    Get {
        ok: bool,
        real_ms: f64,
    },
}

/// The bytes of content number `content`: a function of the seed, so a rerun
/// adds the same bytes.
pub fn content_bytes(seed: u64, content: u64, size: u64) -> Vec<u8> {
    let mut v = vec![0; size as usize];
    StdRng::seed_from_u64(seed ^ content.wrapping_mul(0x9e37_79b9_7f4a_7c15)).fill_bytes(&mut v);
    v
}

pub async fn run(s: &Scenario, options: Options) -> Result<Report> {
    s.validate()?;
    let events = scenario::schedule(s);
    let digest = scenario::digest(&events)?;
    let started = Instant::now();
    let mut net = Network::start(Config {
        nodes: s.network.nodes,
        capacity: s.network.capacity.as_u64(),
        speed: s.speed,
        noise: s.network.noise,
        seed: s.seed,
        dir: options.dir.clone(),
        ..Config::default()
    })
    .await
    .context("cannot start the network")?;
    let startup = started.elapsed();
    let adversaries = choose_adversaries(&mut net, s).await?;
    let client = net.client().await?;
    let mut add_options = AddOptions::default();
    if let Some(scheme) = &s.network.scheme {
        add_options.scheme = scheme
            .parse()
            .map_err(|e| anyhow::anyhow!("scheme {scheme:?}: {e}"))?;
    }
    let work_dir = net.root().to_path_buf();

    let mut state = RunState {
        stored: BTreeMap::new(),
        crashed: HashMap::new(),
        outcomes: Outcomes::default(),
        latencies: Vec::new(),
        window: Vec::new(),
        samples: Vec::new(),
        lag_ms: 0,
    };
    let (done_tx, mut done_rx) = mpsc::channel(1024);
    let permits = Arc::new(Semaphore::new(s.workload.concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let end_ms = s.duration.as_millis() as u64;
    let t0 = tokio::time::Instant::now();
    for event in &events {
        // Pace the run: simulated time runs `speed` times real time.
        let due = t0 + Duration::from_millis(event.at_ms) / s.speed;
        let now = tokio::time::Instant::now();
        if due > now {
            tokio::time::sleep_until(due).await;
        } else {
            state.lag_ms = state.lag_ms.max((now - due).as_millis() as u64);
        }
        while let Ok(done) = done_rx.try_recv() {
            state.settle(done);
        }
        match &event.action {
            Action::Add { content, size } => {
                let (client, dir, opts, tx, permits) = (
                    client.clone(),
                    work_dir.clone(),
                    add_options.clone(),
                    done_tx.clone(),
                    permits.clone(),
                );
                let (seed, content, size) = (s.seed, *content, *size);
                tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let result = add(&client, &dir, seed, content, size, &opts).await;
                    let _ = tx.send(Done::Add { content, result }).await;
                });
                state.outcomes.adds += 1;
            }
            Action::Get { pick } => {
                let roots: Vec<(Cid, blake3::Hash)> =
                    state.stored.values().map(|c| (c.root, c.hash)).collect();
                if roots.is_empty() {
                    continue;
                }
                let (root, hash) = roots[(*pick % roots.len() as u64) as usize];
                let (client, tx, permits) = (client.clone(), done_tx.clone(), permits.clone());
                tasks.spawn(async move {
                    let _permit = permits.acquire_owned().await;
                    let t = Instant::now();
                    let ok = match get(&client, root).await {
                        Ok(h) => h == hash,
                        Err(e) => {
                            tracing::info!(%root, error = %format!("{e:#}"), "get failed");
                            false
                        }
                    };
                    let real_ms = t.elapsed().as_secs_f64() * 1000.0;
                    let _ = tx.send(Done::Get { ok, real_ms }).await;
                });
                state.outcomes.gets += 1;
            }
            Action::Join => {
                net.grow(1).await?;
                state.outcomes.joins += 1;
            }
            Action::Leave { pick } => {
                if let Some(i) = pick_up(&net, *pick) {
                    net.leave(i).await?;
                    state.outcomes.departures += 1;
                }
            }
            Action::Crash { crash, pick } => {
                if let Some(i) = pick_up(&net, *pick) {
                    net.crash(i).await?;
                    state.crashed.insert(*crash, i);
                    state.outcomes.crashes += 1;
                }
            }
            Action::Restart { crash } => {
                if let Some(&i) = state.crashed.get(crash)
                    && net.state(i) == State::Down
                {
                    net.restart(i).await?;
                    state.outcomes.restarts += 1;
                }
            }
            Action::Sample => {
                damage(&mut net, s, &adversaries).await?;
                let sample = state.sample(&net, event.at_ms).await?;
                state.samples.push(sample);
            }
        }
        if let Some(p) = &options.progress {
            p(event.at_ms, end_ms);
        }
    }
    // Work still running finishes; its outcome counts.
    drop(done_tx);
    while tasks.join_next().await.is_some() {}
    while let Some(done) = done_rx.recv().await {
        state.settle(done);
    }
    let last = state.sample(&net, end_ms).await?;
    state.samples.push(last);
    net.shutdown().await;
    Ok(state.report(
        s,
        digest,
        events.len(),
        adversaries,
        startup,
        started.elapsed(),
    ))
}

struct RunState {
    stored: BTreeMap<u64, Stored>,
    /// Crash number → the node it took down.
    crashed: HashMap<u64, usize>,
    outcomes: Outcomes,
    latencies: Vec<f64>,
    /// Get latencies since the last sample.
    window: Vec<f64>,
    samples: Vec<Sample>,
    /// How far the run fell behind its schedule at worst (real ms).
    lag_ms: u64,
}

impl RunState {
    fn settle(&mut self, done: Done) {
        match done {
            Done::Add { content, result } => match result {
                Ok(stored) => {
                    self.stored.insert(content, stored);
                }
                Err(e) => {
                    tracing::info!(content, error = %format!("{e:#}"), "add failed");
                    self.outcomes.adds_failed += 1;
                }
            },
            Done::Get { ok, real_ms } => {
                if ok {
                    self.latencies.push(real_ms);
                    self.window.push(real_ms);
                } else {
                    self.outcomes.gets_failed += 1;
                }
            }
        }
    }

    /// Measures the network as it is: nodes up, pieces per node and, by
    /// reading every node's piece files, which content could still be read.
    async fn sample(&mut self, net: &Network, at_ms: u64) -> Result<Sample> {
        let up = net.up();
        let mut pieces = Vec::with_capacity(up.len());
        for &i in &up {
            pieces.push(net.status(i).await?.pieces);
        }
        let dirs: Vec<PathBuf> = up
            .iter()
            .map(|&i| net.dir(i).join("store/pieces"))
            .collect();
        let healthy = tokio::task::spawn_blocking(move || healthy_pieces(&dirs))
            .await
            .context("sampling task failed")??;
        let lost = self
            .stored
            .values()
            .filter(|c| {
                c.segments
                    .iter()
                    .any(|seg| seg.iter().filter(|p| healthy.contains(p)).count() < c.k)
            })
            .count();
        self.window.sort_by(f64::total_cmp);
        let sample = Sample {
            t_s: at_ms as f64 / 1000.0,
            nodes_up: up.len(),
            contents: self.stored.len(),
            contents_lost: lost,
            gets_ok: self.latencies.len() as u64,
            gets_failed: self.outcomes.gets_failed,
            get_p50_ms: percentile(&self.window, 0.5),
            get_p99_ms: percentile(&self.window, 0.99),
            pieces_min: pieces.iter().copied().min().unwrap_or(0),
            pieces_mean: mean(&pieces),
            pieces_max: pieces.iter().copied().max().unwrap_or(0),
        };
        self.window.clear();
        Ok(sample)
    }

    fn report(
        mut self,
        s: &Scenario,
        digest: String,
        events: usize,
        adversaries: Vec<usize>,
        startup: Duration,
        wall: Duration,
    ) -> Report {
        self.latencies.sort_by(f64::total_cmp);
        let o = &mut self.outcomes;
        o.gets_ok = self.latencies.len() as u64;
        o.get_success = if o.gets_ok + o.gets_failed == 0 {
            1.0
        } else {
            o.gets_ok as f64 / (o.gets_ok + o.gets_failed) as f64
        };
        o.get_p50_ms = percentile(&self.latencies, 0.5);
        o.get_p90_ms = percentile(&self.latencies, 0.9);
        o.get_p99_ms = percentile(&self.latencies, 0.99);
        o.contents = self.stored.len();
        o.contents_lost = self.samples.last().map_or(0, |s| s.contents_lost);
        o.adversaries = adversaries;
        o.lag_ms = self.lag_ms;
        o.startup_s = startup.as_secs_f64();
        o.wall_s = wall.as_secs_f64();
        Report {
            scenario: s.clone(),
            schedule_digest: digest,
            events,
            outcomes: self.outcomes,
            samples: self.samples,
        }
    }
}

fn mean(v: &[u64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<u64>() as f64 / v.len() as f64
    }
}

/// The `pick`-th node up, modulo those up; none when one node or fewer is
/// left (a network keeps at least one).
fn pick_up(net: &Network, pick: u64) -> Option<usize> {
    let up = net.up();
    (up.len() > 1).then(|| up[(pick % up.len() as u64) as usize])
}

/// The starting nodes that misbehave, chosen by the network's RNG, with
/// their fetch faults and delays set.
async fn choose_adversaries(net: &mut Network, s: &Scenario) -> Result<Vec<usize>> {
    let a = &s.adversaries;
    let n = (net.len() as f64 * a.fraction).round() as usize;
    let up = net.up();
    let mut chosen: Vec<usize> = up.choose_multiple(net.rng(), n).copied().collect();
    chosen.sort_unstable();
    for &i in &chosen {
        match a.behaviour {
            Behaviour::Garbage => net.misbehave(i, Some(Fault::Garbage)).await?,
            Behaviour::Stall => net.misbehave(i, Some(Fault::Stall)).await?,
            Behaviour::Slow => net.slow(i, a.delay).await?,
            Behaviour::Drop | Behaviour::Corrupt => {}
        }
    }
    Ok(chosen)
}

/// Adversaries that damage their disks do so at each sample.
async fn damage(net: &mut Network, s: &Scenario, adversaries: &[usize]) -> Result<()> {
    for &i in adversaries {
        if net.state(i) != State::Up {
            continue;
        }
        match s.adversaries.behaviour {
            Behaviour::Drop => {
                net.drop_pieces(i, s.adversaries.damage)?;
            }
            Behaviour::Corrupt => {
                net.corrupt(i, s.adversaries.damage)?;
            }
            _ => {}
        }
    }
    Ok(())
}

async fn add(
    client: &Handle,
    dir: &Path,
    seed: u64,
    content: u64,
    size: u64,
    options: &AddOptions,
) -> Result<Stored> {
    let bytes = content_bytes(seed, content, size);
    let hash = blake3::hash(&bytes);
    let path = dir.join(format!("content-{content}"));
    tokio::fs::write(&path, &bytes)
        .await
        .with_context(|| format!("cannot write {}", path.display()))?;
    drop(bytes);
    let input = Input::Path {
        path: path.clone(),
        options: Default::default(),
    };
    let added = client::add(client, input, options, |_| {}).await;
    let _ = tokio::fs::remove_file(&path).await;
    let added = added?;
    Ok(Stored {
        root: added.root,
        hash,
        segments: added.segments,
        k: options.scheme.k as usize,
    })
}

/// Gets content `root` whole and returns its hash.
async fn get(client: &Handle, root: Cid) -> Result<blake3::Hash> {
    let content = Content::open(client, root, GetOptions::default()).await?;
    tokio::task::spawn_blocking(move || {
        let mut hasher = blake3::Hasher::new();
        content.read(0, None, &mut hasher)?;
        Ok(hasher.finalize())
    })
    .await
    .context("get task failed")?
}

/// The pieces whose files under `dirs` match their CIDs: what the nodes up
/// could still serve.
fn healthy_pieces(dirs: &[PathBuf]) -> Result<HashSet<Cid>> {
    let mut healthy = HashSet::new();
    for dir in dirs {
        for path in crate::network::piece_files(dir)? {
            let Some(cid) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<Cid>().ok())
            else {
                continue;
            };
            let Ok(data) = std::fs::read(&path) else {
                continue;
            };
            if block::verify(&cid, &data).is_ok() {
                healthy.insert(cid);
            }
        }
    }
    Ok(healthy)
}
