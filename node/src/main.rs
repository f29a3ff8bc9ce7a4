//! `cairn`: the command line of the Cairn storage network.
#![allow(clippy::print_stdout)]

use std::fs::File;
use std::io::{BufReader, BufWriter, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use bytesize::ByteSize;
use cairn_node::add::{self, Options};
use cairn_node::cli;
use cairn_node::config::{self, LogFormat};
use cairn_node::node::{self, Node};
use cairn_node::store::{self, Store};
use cairn_protocol::car::{CarReader, CarWriter};
use cairn_protocol::unixfs::NullSink;
use clap::{Parser, Subcommand};
use libp2p::Multiaddr;

/// Cairn: a peer-to-peer storage network with IPFS-identical content addresses.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compute the content's CID, exactly as `ipfs add --cid-version 1` would.
    ///
    /// Storing content in the network arrives with `cairn node`; today `add`
    /// needs --only-hash.
    Add {
        /// The file (or, with -r, directory) to add.
        path: PathBuf,
        /// Print the root CID without storing anything (as `ipfs add -n`).
        #[arg(short = 'n', long)]
        only_hash: bool,
        /// Add a directory and everything under it.
        #[arg(short, long)]
        recursive: bool,
        /// Include files and directories whose names start with `.`.
        #[arg(short = 'H', long)]
        hidden: bool,
    },
    /// Content archives (CAR v1), the IPFS exchange format.
    #[command(subcommand)]
    Car(CarCommand),
    /// Run a storage node: contribute disk to the network.
    ///
    /// Settings come from flags, then CAIRN_* environment variables, then the
    /// config file, then the defaults shown. Logs go to stderr (RUST_LOG sets
    /// the level, default info); the peer ID and addresses go to stdout.
    Node(NodeArgs),
    /// Inspect a node's piece store (while the node is stopped).
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(clap::Args)]
struct NodeArgs {
    /// Data directory: identity key, piece store, indexes
    /// [default: $XDG_DATA_HOME/cairn or ~/.local/share/cairn].
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// TOML config file [default: cairn.toml in the data directory, if present].
    #[arg(long, env = "CAIRN_CONFIG")]
    config: Option<PathBuf>,
    /// Disk space to contribute for pieces, e.g. 500MiB or 50GiB [default: 10GiB].
    #[arg(long, env = "CAIRN_CAPACITY")]
    capacity: Option<ByteSize>,
    /// Multiaddr to listen on; repeat or separate with commas
    /// [default: /ip4/0.0.0.0/tcp/4001 and /ip4/0.0.0.0/udp/4001/quic-v1].
    #[arg(long, env = "CAIRN_LISTEN", value_delimiter = ',')]
    listen: Vec<Multiaddr>,
    /// Peer to join through, as /ip4/…/tcp/…/p2p/<peer id>; repeat or
    /// separate with commas [default: none: the node starts a network of its own].
    #[arg(long, env = "CAIRN_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
    /// Public address others reach this node at (behind port forwarding, say);
    /// announced as is. Without one, AutoNAT finds out, and a node nobody can
    /// reach stays a DHT client. Loopback listen addresses always count.
    #[arg(long, env = "CAIRN_EXTERNAL", value_delimiter = ',')]
    external: Vec<Multiaddr>,
    /// Most connections open at once [default: 512].
    #[arg(long, env = "CAIRN_MAX_CONNECTIONS")]
    max_connections: Option<u32>,
    /// Log format on stderr [default: text].
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Verify every piece against its CID and the index against the files,
    /// removing what is damaged or stray; print what the store holds.
    Check {
        /// The node's data directory [default: as for `cairn node`].
        #[arg(long, env = "CAIRN_DATA_DIR")]
        data_dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CarCommand {
    /// Write a file or directory's blocks as a CAR v1 and print its root CID.
    Create {
        path: PathBuf,
        /// The CAR file to write.
        #[arg(short, long)]
        output: PathBuf,
        #[arg(short, long)]
        recursive: bool,
        #[arg(short = 'H', long)]
        hidden: bool,
    },
    /// Read a CAR v1, check every block against its CID, print its roots.
    Verify { car: PathBuf },
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    if let Command::Node(args) = cli.command {
        return run_node(args);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Node(_) => unreachable!("handled above"),
        Command::Store(StoreCommand::Check { data_dir }) => {
            let dir = data_dir
                .unwrap_or_else(config::default_data_dir)
                .join("store");
            if !dir.exists() {
                bail!("no piece store at {}", dir.display());
            }
            let (store, recovery) = Store::open(&dir, store::Limits::new(u64::MAX))?;
            let report = store.check()?;
            println!("pieces: {}", report.pieces);
            println!("used: {} bytes", report.used);
            println!("bytes on disk: {}", report.bytes_on_disk);
            println!(
                "settled at open: {} partial writes removed, {} writes completed, {} deletes undone, {} deletes finished",
                recovery.partial_removed, recovery.completed, recovery.restored, recovery.deleted
            );
            println!("damaged pieces removed: {}", report.rotted.len());
            println!("stray files removed: {}", report.orphans);
            if report.used != report.bytes_on_disk {
                bail!(
                    "index says {} bytes, files hold {}",
                    report.used,
                    report.bytes_on_disk
                );
            }
        }
        Command::Add {
            path,
            only_hash,
            recursive,
            hidden,
        } => {
            if !only_hash {
                bail!(
                    "storing in the network needs a Cairn node, which is not built yet; use --only-hash to compute the CID"
                );
            }
            let entry = add::import_path(&path, Options { recursive, hidden }, &mut NullSink)?;
            println!("{}", entry.cid);
        }
        Command::Car(CarCommand::Create {
            path,
            output,
            recursive,
            hidden,
        }) => {
            // A CAR header names its root, known only once all is hashed:
            // hash first, then write, and check nothing changed in between.
            let options = Options { recursive, hidden };
            let root = add::import_path(&path, options, &mut NullSink)?.cid;
            let file = File::create(&output)
                .with_context(|| format!("cannot create {}", output.display()))?;
            let mut car = CarWriter::new(BufWriter::new(file), &[root])?;
            let written = add::import_path(&path, options, &mut car)?.cid;
            car.finish()?.flush()?;
            if written != root {
                bail!("{} changed while it was being written", path.display());
            }
            println!("{root}");
        }
        Command::Car(CarCommand::Verify { car }) => {
            let file =
                File::open(&car).with_context(|| format!("cannot open {}", car.display()))?;
            let mut reader = CarReader::new(BufReader::new(file))?;
            let roots: Vec<String> = reader.roots().iter().map(ToString::to_string).collect();
            let mut blocks = 0u64;
            while reader
                .next_block()
                .with_context(|| format!("{} is invalid", car.display()))?
                .is_some()
            {
                blocks += 1;
            }
            println!(
                "{} blocks, every one matches its CID; roots: {}",
                blocks,
                roots.join(" ")
            );
        }
    }
    Ok(())
}

/// Flags and environment over the config file over the defaults.
fn node_config(args: NodeArgs) -> Result<(node::Config, LogFormat)> {
    let dir_hint = args
        .data_dir
        .clone()
        .unwrap_or_else(config::default_data_dir);
    let file = match &args.config {
        Some(path) => config::File::load(path, true)?,
        None => config::File::load(&dir_hint.join(config::FILE), false)?,
    };
    let data_dir = args
        .data_dir
        .or(file.data_dir)
        .unwrap_or_else(config::default_data_dir);
    let mut c = node::Config::new(data_dir);
    let list = |flag: Vec<Multiaddr>, file: Option<Vec<Multiaddr>>, default| {
        if !flag.is_empty() {
            flag
        } else {
            file.unwrap_or(default)
        }
    };
    c.listen = list(args.listen, file.listen, c.listen);
    c.bootstrap = list(args.bootstrap, file.bootstrap, c.bootstrap);
    c.external = list(args.external, file.external, c.external);
    if let Some(cap) = args.capacity.or(file.capacity) {
        c.capacity = cap.as_u64();
    }
    if c.capacity == 0 {
        bail!("--capacity must be more than 0");
    }
    if let Some(n) = args.max_connections.or(file.max_connections) {
        c.max_connections = n;
    }
    let log = args
        .log_format
        .or(file.log_format)
        .unwrap_or(LogFormat::Text);
    Ok((c, log))
}

fn run_node(args: NodeArgs) -> Result<()> {
    let (config, log) = node_config(args)?;
    cli::init_logs(log);
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async {
        let data_dir = config.data_dir.clone();
        let node = Node::start(config)
            .await
            .with_context(|| format!("cannot start the node in {}", data_dir.display()))?;
        let id = node.peer_id;
        if node.new_identity {
            println!("created identity in {}", data_dir.display());
        }
        println!("peer id: {id}");
        for addr in &node.listen_addrs {
            println!("listening on {addr}/p2p/{id}");
        }
        std::io::stdout().flush()?;
        cli::shutdown_signal().await?;
        tracing::info!("shutting down");
        node.stop().await;
        Ok(())
    })
}
