//! `cairn`: the command line of the Cairn storage network.
#![allow(clippy::print_stdout)]

use std::fs::File;
use std::io::{BufReader, BufWriter, IsTerminal as _, Read as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytesize::ByteSize;
use cairn_node::add::{self, Options};
use cairn_node::config::{self, LogFormat};
use cairn_node::node::{self, Node};
use cairn_node::store::{self, Store};
use cairn_node::{api, cli, client, gateway};
use cairn_protocol::address::Address;
use cairn_protocol::car::{CarReader, CarWriter};
use cairn_protocol::erasure::Scheme;
use cairn_protocol::unixfs::{NullSink, ReadError};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use libp2p::Multiaddr;

/// Cairn: a peer-to-peer storage network with IPFS-identical content addresses.
#[derive(Parser)]
#[command(version, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Store content in the network and print its CID, the one
    /// `ipfs add --cid-version 1` gives it (with `--cid-version 0`, the one
    /// `ipfs add` gives).
    ///
    /// The content is erasure-coded into pieces placed on distinct storage
    /// nodes; its manifest is kept by several nodes, which announce the CID.
    /// Content the network already has is not uploaded again.
    Add(AddArgs),
    /// Get content by CID into a file or directory.
    Get {
        #[command(flatten)]
        cid: Named,
        /// Where to write it [default: ./<CID>, or ./<last name of the
        /// path>]; must not exist.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        get: GetArgs,
    },
    /// Write a file's content, or a byte range of it, to stdout.
    Cat {
        #[command(flatten)]
        cid: Named,
        /// First byte to write.
        #[arg(long, default_value_t = 0)]
        offset: u64,
        /// Bytes to write [default: to the end].
        #[arg(long)]
        length: Option<u64>,
        #[command(flatten)]
        get: GetArgs,
    },
    /// List a directory's entries: CID, size of its blocks, name; in name
    /// order, as `ipfs ls`.
    Ls {
        /// The directory's CID, or a path under a CID as for `get`.
        cid: Address,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        get: GetArgs,
    },
    /// Run a whole network on this machine: a bootstrap node and N storage
    /// nodes on 127.0.0.1, until Ctrl-C.
    Devnet(cairn_node::devnet::Args),
    /// Content archives (CAR v1), the IPFS exchange format.
    #[command(subcommand)]
    Car(CarCommand),
    /// Run a storage node: contribute disk to the network.
    ///
    /// Settings come from flags, then CAIRN_* environment variables, then the
    /// config file, then the defaults shown. Logs go to stderr (RUST_LOG sets
    /// the level, default info); the peer ID and addresses go to stdout.
    Node(NodeArgs),
    /// Show a running node's state: its peer ID, its peers, the pieces it
    /// stores and the space they use, and how many it has still to announce.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeDir,
    },
    /// Inspect a node's piece store (while the node is stopped).
    #[command(subcommand)]
    Store(StoreCommand),
    /// Keep content alive: a pinning node audits the holders of its pieces
    /// at random times, rates them, and rebuilds lost pieces onto new nodes.
    ///
    /// Pins live in a running node (`cairn add` through a node pins what it
    /// adds); these commands reach it as `add` does, with --data-dir or the
    /// default data directory.
    #[command(subcommand)]
    Pin(PinCommand),
}

#[derive(Subcommand)]
enum PinCommand {
    /// Pin content already in the network: the node finds the holder of
    /// each piece and takes over its upkeep.
    Add {
        cid: cid::Cid,
        #[command(flatten)]
        node: NodeDir,
    },
    /// List pins with their redundancy margin: the fewest healthy pieces of
    /// any segment, against the count at which a segment is repaired.
    Ls {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeDir,
    },
    /// Unpin: the pieces are no longer audited or repaired, and expire on
    /// their holders at the end of their term.
    Rm {
        cid: cid::Cid,
        #[command(flatten)]
        node: NodeDir,
    },
    /// Per segment: how many of its k+m pieces are healthy, which nodes hold
    /// them, when each was last audited and with what result.
    Status {
        cid: cid::Cid,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        node: NodeDir,
    },
}

/// Which running node a status or pin command talks to.
#[derive(clap::Args)]
struct NodeDir {
    /// The data directory of the node [default: as for `cairn node`].
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

impl NodeDir {
    fn remote(self) -> Result<api::Remote> {
        let dir = self.data_dir.unwrap_or_else(config::default_data_dir);
        api::Remote::find(&dir)?.with_context(|| {
            format!(
                "no node is running in {}: start one with `cairn node --data-dir {}` (pins live in a running node)",
                dir.display(),
                dir.display()
            )
        })
    }
}

#[derive(clap::Args, Clone, Copy)]
struct CidVersionArg {
    /// CIDs as `ipfs add --cid-version` makes them: 1 gives raw leaves and
    /// CIDv1 (`bafy…`), as `ipfs add --cid-version 1`; 0 gives the `Qm…`
    /// CIDs of `ipfs add` without flags (kubo's defaults), which most NFT
    /// links of 2021 and 2022 name.
    #[arg(
        long = "cid-version",
        value_name = "0|1",
        default_value_t = 1,
        value_parser = clap::value_parser!(u64).range(0..=1)
    )]
    value: u64,
}

impl CidVersionArg {
    fn version(self) -> cid::Version {
        match self.value {
            0 => cid::Version::V0,
            _ => cid::Version::V1,
        }
    }
}

#[derive(clap::Args)]
struct AddArgs {
    /// The file (or, with -r, directory) to add.
    #[arg(required_unless_present = "car", conflicts_with = "car")]
    path: Option<PathBuf>,
    /// Add the blocks of a CAR v1 file (its first root is the content).
    #[arg(long)]
    car: Option<PathBuf>,
    /// Print the root CID without storing anything (as `ipfs add -n`).
    #[arg(short = 'n', long)]
    only_hash: bool,
    /// Add a directory and everything under it.
    #[arg(short, long)]
    recursive: bool,
    /// Encrypt the file with a fresh random key before it leaves this
    /// machine: storage nodes hold only ciphertext. Prints a handle,
    /// <CID>:v1:<key>, instead of a CID; `get` and `cat` take it. Whoever
    /// has the handle can read the file: keep it secret.
    #[arg(long, conflicts_with_all = ["car", "recursive", "only_hash"])]
    encrypt: bool,
    /// Include files and directories whose names start with `.`.
    #[arg(short = 'H', long)]
    hidden: bool,
    #[command(flatten)]
    cid_version: CidVersionArg,
    /// Erasure coding: k data and m parity pieces per segment; any k bring
    /// a segment back.
    #[arg(long, default_value_t = Scheme::default())]
    scheme: Scheme,
    /// Days the storage nodes keep the pieces.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=365))]
    days: u64,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Print only the CID.
    #[arg(short, long)]
    quiet: bool,
    /// Do not pin: the node that adds keeps the content alive (audits its
    /// holders, repairs lost pieces) unless this is given. A short-lived
    /// client (--bootstrap) cannot pin.
    #[arg(long)]
    no_pin: bool,
    #[command(flatten)]
    net: NetArgs,
}

#[derive(clap::Args)]
struct GetArgs {
    /// Seconds at most before a slow holder is backed up by fetching another
    /// piece; sooner once pieces come in: after 4 times their median time,
    /// at least 1 s (by a client of the command's own; a node uses its
    /// default).
    #[arg(long, default_value_t = client::DEFAULT_HEDGE_AFTER.as_secs_f64())]
    hedge_after: f64,
    #[command(flatten)]
    net: NetArgs,
}

/// What `get` and `cat` read. A handle holds its content's key: given on
/// the command line, `ps` and the shell's history show it to others.
#[derive(clap::Args)]
struct Named {
    /// The content's CID, or the handle `add --encrypt` printed; a path
    /// under a directory's CID as IPFS links write it: `CID/a/b.json`,
    /// `/ipfs/CID/a/b.json` or `ipfs://CID/a/b.json`. A handle is better
    /// given by --handle-file or CAIRN_HANDLE.
    #[arg(env = "CAIRN_HANDLE", hide_env_values = true)]
    cid: Option<String>,
    /// Read the handle (or CID) from this file, `-` for stdin.
    #[arg(long, value_name = "FILE")]
    handle_file: Option<PathBuf>,
}

impl Named {
    fn address(self) -> Result<Address> {
        let text = match (self.handle_file, self.cid) {
            (Some(file), _) => {
                let from: Box<dyn std::io::Read> = match file.as_os_str() == "-" {
                    true => Box::new(std::io::stdin()),
                    false => Box::new(File::open(&file).with_context(|| {
                        format!("cannot read a handle from {}", file.display())
                    })?),
                };
                let mut text = String::new();
                from.take(4096)
                    .read_to_string(&mut text)
                    .with_context(|| format!("cannot read a handle from {}", file.display()))?;
                text
            }
            (None, Some(text)) => text,
            (None, None) => {
                bail!("name the content: a CID or handle, --handle-file FILE, or CAIRN_HANDLE")
            }
        };
        // The error names the shape wanted, never the text given.
        Ok(text.trim().parse::<Address>()?)
    }
}

/// How a command reaches the network: through the running node of
/// `--data-dir`; else through a client of its own joined via `--bootstrap`;
/// else through a node running in the default data directory.
#[derive(clap::Args)]
struct NetArgs {
    /// Go through the node running in this data directory (its control API).
    #[arg(long, env = "CAIRN_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Join the network through this peer with a short-lived client of this
    /// command's own, as /ip4/…/tcp/…/p2p/<peer id> (`cairn devnet` prints
    /// one); repeat or separate with commas.
    #[arg(long, env = "CAIRN_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<Multiaddr>,
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
    /// Worker threads of the node's async runtime [default: one per core].
    /// `cairn devnet` gives each of its nodes one, since they share the cores.
    #[arg(long, env = "CAIRN_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Log format on stderr [default: text].
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_enum)]
    log_format: Option<LogFormat>,
    /// Loopback address of the control API that `cairn add/get/cat` on this
    /// machine use; its URL and access token go to <data dir>/api.
    #[arg(long, env = "CAIRN_API", default_value = "127.0.0.1:0")]
    api: std::net::SocketAddr,
    /// Serve content over HTTP at this address, as an IPFS gateway does:
    /// http://ADDR/ipfs/CID/PATH (read-only, open to all who reach it;
    /// 127.0.0.1:8080 keeps it to this machine) [default: no gateway].
    #[arg(long, env = "CAIRN_GATEWAY")]
    gateway: Option<std::net::SocketAddr>,
    /// Misbehave, to test that clients cope.
    #[arg(long, hide = true)]
    fault: Option<node::Fault>,
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
        #[command(flatten)]
        cid_version: CidVersionArg,
    },
    /// Read a CAR v1, check every block against its CID, print its roots.
    Verify { car: PathBuf },
}

/// `println!` that returns an error instead of panicking when stdout is
/// closed (`cairn pin ls | head`).
macro_rules! out {
    ($($arg:tt)*) => {
        writeln!(std::io::stdout(), $($arg)*).context("cannot write to stdout")
    };
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`| head`): stop quietly, as other tools do.
        Err(e) if broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let io = match c.downcast_ref::<ReadError>() {
            Some(ReadError::Write(e)) => Some(e),
            _ => c.downcast_ref::<std::io::Error>(),
        };
        io.is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Node(args) => return run_node(args),
        Command::Devnet(args) => {
            cli::init_logs(LogFormat::Text);
            return cairn_node::devnet::run(args);
        }
        _ => {}
    }
    // Commands print results on stdout; logs (warnings by default) go to stderr.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Node(_) | Command::Devnet(_) => unreachable!("handled above"),
        Command::Add(args) => add(args)?,
        Command::Get { cid, output, get } => {
            let cid = cid.address()?;
            let output = output.unwrap_or_else(|| match cid.path.last() {
                Some(name) => PathBuf::from(name),
                None => PathBuf::from(cid.target.root().to_string()),
            });
            read_content(cid, get, Some(output), (0, None))?;
        }
        Command::Cat {
            cid,
            offset,
            length,
            get,
        } => read_content(cid.address()?, get, None, (offset, length))?,
        Command::Ls { cid, json, get } => list_content(cid, get, json)?,
        Command::Store(StoreCommand::Check { data_dir }) => {
            let dir = data_dir
                .unwrap_or_else(config::default_data_dir)
                .join("store");
            if !dir.exists() {
                bail!("no piece store at {}", dir.display());
            }
            let (store, recovery) = Store::open(&dir, store::Limits::new(u64::MAX))?;
            let report = store.check()?;
            out!("pieces: {}", report.pieces)?;
            out!("used: {} bytes", report.used)?;
            out!("bytes on disk: {}", report.bytes_on_disk)?;
            out!(
                "settled at open: {} partial writes removed, {} writes completed, {} deletes undone, {} deletes finished",
                recovery.partial_removed,
                recovery.completed,
                recovery.restored,
                recovery.deleted
            )?;
            out!("damaged pieces removed: {}", report.rotted.len())?;
            out!("stray files removed: {}", report.orphans)?;
            for (piece, error) in &report.unreadable {
                out!("could not read {piece} (kept): {error}")?;
            }
            if !report.unreadable.is_empty() {
                bail!(
                    "{} pieces could not be read now; they were kept: run the check again",
                    report.unreadable.len()
                );
            }
            if report.used != report.bytes_on_disk {
                bail!(
                    "index says {} bytes, files hold {}",
                    report.used,
                    report.bytes_on_disk
                );
            }
        }
        Command::Car(CarCommand::Create {
            path,
            output,
            recursive,
            hidden,
            cid_version,
        }) => {
            // A CAR header names its root, known only once all is hashed:
            // hash first, then write, and check nothing changed in between.
            let options = Options {
                recursive,
                hidden,
                cid_version: cid_version.version(),
            };
            let root = add::import_path(&path, options, &mut NullSink)?.cid;
            let file = File::create(&output)
                .with_context(|| format!("cannot create {}", output.display()))?;
            let mut car = CarWriter::new(BufWriter::new(file), &[root])?;
            let written = add::import_path(&path, options, &mut car)?.cid;
            car.finish()?.flush()?;
            if written != root {
                bail!("{} changed while it was being written", path.display());
            }
            out!("{root}")?;
        }
        Command::Pin(cmd) => pin(cmd)?,
        Command::Status { json, node } => {
            let s = node.remote()?.status()?;
            if json {
                out!("{}", serde_json::to_string(&s)?)?;
            } else {
                out!("peer ID     {}", s.peer_id)?;
                out!(
                    "peers       {} connected, {} in the DHT routing table",
                    s.connected_peers,
                    s.routing_table
                )?;
                let disk_bound = match s.free < s.capacity.saturating_sub(s.used) {
                    true => format!(" (the disk has room for {} more)", ByteSize(s.free)),
                    false => String::new(),
                };
                out!(
                    "pieces      {}, {} of {}{disk_bound}",
                    s.pieces,
                    ByteSize(s.used),
                    ByteSize(s.capacity)
                )?;
                out!(
                    "announcing  {}",
                    plural(s.announcing as u64, "piece", "pieces")
                )?;
            }
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
            out!(
                "{} blocks, every one matches its CID; roots: {}",
                blocks,
                roots.join(" ")
            )?;
        }
    }
    Ok(())
}

/// Where the node serves HTTP: its control API, and its gateway if any.
struct Http {
    api: std::net::SocketAddr,
    gateway: Option<std::net::SocketAddr>,
}

/// Flags and environment over the config file over the defaults.
fn node_config(args: NodeArgs) -> Result<(node::Config, LogFormat, Http)> {
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
    c.fault = args.fault;
    let log = args
        .log_format
        .or(file.log_format)
        .unwrap_or(LogFormat::Text);
    if !args.api.ip().is_loopback() {
        bail!(
            "--api must be a loopback address (127.0.0.1:PORT or [::1]:PORT), not {}",
            args.api
        );
    }
    let http = Http {
        api: args.api,
        gateway: args.gateway.or(file.gateway),
    };
    Ok((c, log, http))
}

fn run_node(args: NodeArgs) -> Result<()> {
    let threads = args.threads;
    let (config, log, http) = node_config(args)?;
    cli::init_logs(log);
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        builder.worker_threads(n.into());
    }
    let runtime = builder
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let open_files = cairn_node::http::raise_open_files();
    runtime.block_on(async {
        let data_dir = config.data_dir.clone();
        let node = Node::start(config)
            .await
            .with_context(|| format!("cannot start the node in {}", data_dir.display()))?;
        let id = node.peer_id;
        let servers = 1 + u64::from(http.gateway.is_some());
        let limits = cairn_node::http::within_open_files(Default::default(), open_files, servers);
        let api = match api::serve(node.handle.clone(), http.api, &data_dir, limits).await {
            Ok(api) => api,
            Err(e) => {
                node.stop().await;
                return Err(e);
            }
        };
        let gateway = match http.gateway {
            None => None,
            Some(at) => match gateway::serve_with(
                node.handle.clone(),
                at,
                gateway::Limits {
                    http: limits,
                    ..Default::default()
                },
            )
            .await
            {
                Ok(gateway) => Some(gateway),
                Err(e) => {
                    api.stop().await;
                    node.stop().await;
                    return Err(e);
                }
            },
        };
        if node.new_identity {
            out!("created identity in {}", data_dir.display())?;
        }
        out!("peer id: {id}")?;
        for addr in &node.listen_addrs {
            out!("listening on {addr}/p2p/{id}")?;
        }
        if let Some(gateway) = &gateway {
            out!("gateway on {}/ipfs/", gateway.url)?;
        }
        out!("control API on {} (loopback only)", api.url)?;
        std::io::stdout().flush()?;
        let signal = cli::shutdown_signal().await;
        tracing::info!("shutting down");
        if let Some(gateway) = gateway {
            gateway.stop().await;
        }
        api.stop().await;
        node.stop().await;
        signal?;
        Ok(())
    })
}

fn add(args: AddArgs) -> Result<()> {
    if args.only_hash {
        let Some(path) = args.path else {
            bail!("--only-hash takes a PATH");
        };
        let options = Options {
            recursive: args.recursive,
            hidden: args.hidden,
            cid_version: args.cid_version.version(),
        };
        out!("{}", add::import_path(&path, options, &mut NullSink)?.cid)?;
        return Ok(());
    }
    let (path, car) = match (args.path, args.car) {
        (Some(path), None) => (path, false),
        (None, Some(car)) => (car, true),
        _ => bail!("give a PATH or --car FILE"),
    };
    let req = api::AddRequest {
        path: std::path::absolute(&path)
            .with_context(|| format!("cannot resolve {}", path.display()))?,
        recursive: args.recursive,
        hidden: args.hidden,
        car,
        encrypt: args.encrypt,
        scheme: args.scheme,
        days: args.days,
        pin: !args.no_pin,
        cid_version: args.cid_version.value,
    };
    req.check()?;
    let bar = progress_bar(!args.quiet && !args.json);
    let added = match Via::choose(args.net)? {
        Via::Node(node) => node.add(&req, |event| match event {
            api::AddEvent::Hashed { total } => bar.set_length(*total),
            api::AddEvent::Placed { done } => bar.set_position(*done),
            _ => {}
        }),
        Via::Client(bootstrap) => {
            runtime()?.block_on(client::with_ephemeral(bootstrap, async |net| {
                // A client's pins would go with its temporary directory.
                let req = api::AddRequest { pin: false, ..req };
                api::add(net, &req, |p| match p {
                    client::Progress::Hashed { total } => bar.set_length(total),
                    client::Progress::Placed { done } => bar.set_position(done),
                })
                .await
            }))
        }
    };
    bar.finish_and_clear();
    let added = added?;
    if args.json {
        out!("{}", serde_json::to_string(&added)?)?;
        return Ok(());
    }
    if !args.quiet {
        if added.already_stored {
            eprintln!("the network already has this content; nothing uploaded");
        } else {
            eprintln!(
                "added {} in {}: {} ({}) on distinct nodes, manifest on {}",
                ByteSize(added.bytes),
                plural(added.segments as u64, "segment", "segments"),
                plural(added.pieces as u64, "piece", "pieces"),
                added.scheme,
                plural(added.manifest_copies as u64, "node", "nodes")
            );
        }
        if !added.pinned && !args.no_pin {
            eprintln!(
                "not pinned: a short-lived client cannot keep content alive; `cairn pin add {}` on a node does",
                added.cid
            );
        }
    }
    out!("{}", added.handle)?;
    Ok(())
}

fn pin(cmd: PinCommand) -> Result<()> {
    match cmd {
        PinCommand::Add { cid, node } => {
            let r = node.remote()?.pin_add(&cid.to_string())?;
            if r.changed {
                out!("pinned {cid}")?;
            } else {
                out!("{cid} was pinned already")?;
            }
        }
        PinCommand::Rm { cid, node } => {
            let r = node.remote()?.pin_rm(&cid.to_string())?;
            if !r.changed {
                bail!("{cid} is not pinned on this node");
            }
            out!("unpinned {cid}")?;
        }
        PinCommand::Ls { json, node } => {
            let pins = node.remote()?.pin_ls()?;
            if json {
                out!("{}", serde_json::to_string(&pins)?)?;
                return Ok(());
            }
            for p in pins {
                out!(
                    "{}  {}  {}  {} segments  healthy ≥ {} (repair at {})",
                    p.cid,
                    ByteSize(p.bytes),
                    p.scheme,
                    p.segments,
                    p.min_healthy,
                    p.threshold
                )?;
            }
        }
        PinCommand::Status { cid, json, node } => {
            let s = node.remote()?.pin_status(&cid.to_string())?;
            if json {
                out!("{}", serde_json::to_string(&s)?)?;
                return Ok(());
            }
            let total: usize = s.segments.first().map_or(0, |g| g.pieces.len());
            out!(
                "{}  {}  {}  manifest {}",
                s.pin.cid,
                ByteSize(s.pin.bytes),
                s.pin.scheme,
                s.manifest
            )?;
            out!(
                "healthy pieces ≥ {} of {total} in every segment; a segment is repaired at {}",
                s.pin.min_healthy,
                s.pin.threshold
            )?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            for (i, seg) in s.segments.iter().enumerate() {
                out!("segment {i}: {}/{} healthy", seg.healthy, seg.pieces.len())?;
                for p in &seg.pieces {
                    let audit = match (p.last_audit, &p.last_result) {
                        (Some(t), Some(r)) => format!("{r} {} ago", ago(now, t)),
                        _ => "not audited yet".into(),
                    };
                    let term = match p.expires_at {
                        0 => "term unknown".into(),
                        t if t > now => format!("term ends in {}", ago(t, now)),
                        t => format!("term ended {} ago", ago(now, t)),
                    };
                    out!(
                        "  {}  {:<11}  {}  {audit}, {term}",
                        p.piece,
                        p.state,
                        p.holder.as_deref().unwrap_or("no holder known")
                    )?;
                }
            }
            let c = s.counters;
            out!(
                "this node: {} audits ({} failed, {} of proofs), {} repairs rebuilt {} pieces and placed {} manifest copies ({} of traffic), {} terms renewed",
                c.audits,
                c.audits_failed,
                ByteSize(c.audit_bytes),
                c.repairs,
                c.pieces_rebuilt,
                c.manifest_copies,
                ByteSize(c.repair_bytes),
                c.renewals
            )?;
        }
    }
    Ok(())
}

/// `then` before `now` (unix seconds), as a short duration.
fn ago(now: u64, then: u64) -> String {
    let s = now.saturating_sub(then);
    match s {
        0..120 => format!("{s} s"),
        120..7200 => format!("{} min", s / 60),
        7200..172_800 => format!("{} h", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// How a command reaches the network: through a running local node's
/// control API, or through a client node of its own.
enum Via {
    Node(api::Remote),
    Client(Vec<Multiaddr>),
}

impl Via {
    /// `--data-dir` names a node to go through; else `--bootstrap` asks for
    /// a client of our own; else the node in the default data directory.
    fn choose(net: NetArgs) -> Result<Via> {
        if let Some(dir) = net.data_dir {
            return match api::Remote::find(&dir)? {
                Some(node) => Ok(Via::Node(node)),
                None => bail!(
                    "no node is running in {} (start one with `cairn node --data-dir {}`)",
                    dir.display(),
                    dir.display()
                ),
            };
        }
        if !net.bootstrap.is_empty() {
            return Ok(Via::Client(net.bootstrap));
        }
        let dir = config::default_data_dir();
        match api::Remote::find(&dir)? {
            Some(node) => Ok(Via::Node(node)),
            None => bail!(
                "no network to reach: no node is running in {} and no --bootstrap /ip4/…/tcp/…/p2p/<peer id> \
                 (or CAIRN_BOOTSTRAP) was given; `cairn devnet` prints one",
                dir.display()
            ),
        }
    }
}

/// Writes content to stdout (`cat`) or to `output` (`get`).
fn read_content(
    target: Address,
    args: GetArgs,
    output: Option<PathBuf>,
    range: (u64, Option<u64>),
) -> Result<()> {
    let options = get_options(args.hedge_after)?;
    let output = output
        .map(|o| std::path::absolute(&o).with_context(|| format!("cannot resolve {}", o.display())))
        .transpose()?;
    let (offset, length) = range;
    let bootstrap = match Via::choose(args.net)? {
        Via::Node(node) => {
            return match &output {
                Some(path) => node.get(&target, path),
                None => to_stdout(|out| node.cat(&target, offset, length, out)),
            };
        }
        Via::Client(bootstrap) => bootstrap,
    };
    runtime()?.block_on(client::with_ephemeral(bootstrap, async |net| {
        let content = std::sync::Arc::new(client::Content::open(net, target, options).await?);
        // `get` shows the bytes fetched of the content's stream.
        let bar = progress_bar(output.is_some());
        bar.set_length(content.manifest().stream_len);
        let ticker = {
            let (content, bar) = (content.clone(), bar.clone());
            tokio::spawn(async move {
                loop {
                    bar.set_position(content.stats().bytes);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
        };
        let read = tokio::task::spawn_blocking(move || {
            let result = match &output {
                Some(path) => content.save(path),
                None => to_stdout(|out| content.read(offset, length, out)),
            };
            let stats = content.stats();
            tracing::info!(
                segments = stats.segments.len(),
                decoded = stats.decoded,
                dropped = stats.dropped.len(),
                "fetched"
            );
            result
        })
        .await;
        ticker.abort();
        bar.finish_and_clear();
        read.context("read task failed")?
    }))
}

/// Prints a directory's entries.
fn list_content(target: Address, args: GetArgs, json: bool) -> Result<()> {
    let entries = match Via::choose(args.net)? {
        Via::Node(node) => node.ls(&target)?,
        Via::Client(bootstrap) => {
            runtime()?.block_on(client::with_ephemeral(bootstrap, async |net| {
                let options = get_options(args.hedge_after)?;
                let content = client::Content::open(net, target, options).await?;
                let listed = tokio::task::spawn_blocking(move || content.list())
                    .await
                    .context("list task failed")??;
                Ok(listed.into_iter().map(api::LsEntry::from).collect())
            }))?
        }
    };
    if json {
        return out!("{}", serde_json::to_string(&entries)?);
    }
    to_stdout(|out| {
        for e in &entries {
            writeln!(out, "{} {} {}", e.cid, e.size, e.name)?;
        }
        Ok(())
    })
}

/// A client's get options from `--hedge-after`.
fn get_options(hedge_after: f64) -> Result<client::GetOptions> {
    let hedge_after = Duration::try_from_secs_f64(hedge_after)
        .context("--hedge-after must be a positive number of seconds")?;
    Ok(client::GetOptions {
        hedge_after,
        ..Default::default()
    })
}

/// Runs `write` on buffered stdout and flushes it.
fn to_stdout(
    write: impl FnOnce(&mut BufWriter<std::io::StdoutLock<'static>>) -> Result<()>,
) -> Result<()> {
    let mut out = BufWriter::with_capacity(1 << 20, std::io::stdout().lock());
    write(&mut out)?;
    out.flush().context("cannot write to stdout")
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Runtime::new().context("cannot start the async runtime")
}

/// A bar on stderr when it is a terminal and `show`; hidden otherwise.
fn progress_bar(show: bool) -> ProgressBar {
    if !show || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

/// "1 piece", "2 pieces".
fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}
