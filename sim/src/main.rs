//! `cairn-sim`: runs scenarios on a simulated network of real Cairn nodes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use std::io::Write as _;

use anyhow::{Context as _, Result};
use cairn_sim::run::{self, Options};
use cairn_sim::scenario::{self, Scenario};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};

/// Runs experiments on a network of many Cairn nodes in one process: the
/// real node code over libp2p's in-memory transport, with simulated time
/// running faster than real time.
#[derive(Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a scenario and writes its report: report.json, samples.csv and
    /// plots (content.svg, gets.svg, latency.svg, pieces.svg).
    Run {
        /// The scenario, a TOML file (see sim/scenarios/).
        scenario: PathBuf,
        /// Where the report goes [default: sim-out/<scenario name>].
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(flatten)]
        knobs: Knobs,
        /// Keep the nodes' data directories here instead of a temporary directory.
        #[arg(long)]
        keep: Option<PathBuf>,
    },
    /// Measures one process holding N nodes: brings them up, adds content,
    /// runs provider lookups from random nodes; prints the figures as JSON.
    Scale {
        /// Storage nodes.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Content added (64 KiB each, 10 provider records each).
        #[arg(long, default_value_t = 20)]
        adds: usize,
        /// Provider lookups, each from a random node for a random piece.
        #[arg(long, default_value_t = 1000)]
        lookups: usize,
        /// Noise on the in-memory transport instead of a plaintext handshake.
        #[arg(long)]
        noise: bool,
        /// Nodes joining at once.
        #[arg(long, default_value_t = 16)]
        join_concurrency: usize,
        /// A connection with no stream open closes after this long.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
        idle_timeout: Duration,
        /// Kademlia's periodic routing-table refresh, as real nodes run it
        /// every 5m; off by default (docs/SIMULATOR.md).
        #[arg(long, value_parser = humantime::parse_duration)]
        dht_refresh: Option<Duration>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Prints a scenario's schedule of events as JSON lines, without running it.
    Schedule {
        scenario: PathBuf,
        #[command(flatten)]
        knobs: Knobs,
    },
}

/// Overrides of the scenario's common knobs.
#[derive(clap::Args)]
struct Knobs {
    /// Seed of every random choice.
    #[arg(long)]
    seed: Option<u64>,
    /// Storage nodes at the start.
    #[arg(long)]
    nodes: Option<usize>,
    /// Simulated time to cover, e.g. 6h or 2days.
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Simulated seconds per real second.
    #[arg(long)]
    speed: Option<u32>,
}

impl Knobs {
    fn load(&self, path: &PathBuf) -> Result<Scenario> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut s: Scenario = toml::from_str(&text)
            .with_context(|| format!("{} is not a valid scenario", path.display()))?;
        if let Some(v) = self.seed {
            s.seed = v;
        }
        if let Some(v) = self.nodes {
            s.network.nodes = v;
        }
        if let Some(v) = self.duration {
            s.duration = v;
        }
        if let Some(v) = self.speed {
            s.speed = v;
        }
        s.validate()
            .with_context(|| format!("{} is not a valid scenario", path.display()))?;
        Ok(s)
    }
}

/// Thousands of nodes allocate and free small buffers from both worker
/// threads at once; mimalloc does that with a third less CPU than glibc's
/// malloc, for about a third more memory (docs/BENCHMARKS.md, simulator
/// scale).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Schedule { scenario, knobs } => {
            let s = knobs.load(&scenario)?;
            let mut out = std::io::stdout().lock();
            for e in scenario::schedule(&s) {
                serde_json::to_writer(&mut out, &e)?;
                out.write_all(b"\n")?;
            }
            Ok(())
        }
        Command::Scale {
            nodes,
            adds,
            lookups,
            noise,
            join_concurrency,
            idle_timeout,
            dht_refresh,
            seed,
        } => {
            let options = cairn_sim::scale::Options {
                nodes,
                adds,
                lookups,
                noise,
                join_concurrency,
                idle_timeout,
                dht_refresh,
                seed,
            };
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            let outcome = runtime.block_on(cairn_sim::scale::scale(&options))?;
            let mut stdout = std::io::stdout().lock();
            serde_json::to_writer(&mut stdout, &outcome)?;
            writeln!(stdout)?;
            Ok(())
        }
        Command::Run {
            scenario,
            out,
            knobs,
            keep,
        } => {
            let s = knobs.load(&scenario)?;
            let out = out.unwrap_or_else(|| PathBuf::from("sim-out").join(&s.name));
            let runtime = tokio::runtime::Runtime::new().context("cannot start the runtime")?;
            let bar = ProgressBar::new(s.duration.as_millis() as u64);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} simulated {msg} [{bar:30}] {percent}% real {elapsed_precise}, eta {eta}",
                )
                .context("progress template")?
                .progress_chars("=> "),
            );
            let shown = bar.clone();
            let options = Options {
                dir: keep,
                progress: Some(Arc::new(move |done, _| {
                    shown.set_position(done);
                    shown.set_message(
                        humantime::format_duration(Duration::from_secs(done / 1000)).to_string(),
                    );
                })),
            };
            eprintln!(
                "running {} with {} nodes: {} simulated at {}×",
                s.name,
                s.network.nodes,
                humantime::format_duration(s.duration),
                s.speed
            );
            let report = runtime.block_on(run::run(&s, options))?;
            bar.finish_and_clear();
            report.write(&out)?;
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(report.summary().as_bytes())?;
            writeln!(stdout, "  {:<22} {}", "report", out.display())?;
            Ok(())
        }
    }
}
