//! `cairn-bootstrap`: run the peer that Cairn nodes dial first.
#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use cairn_bootstrap::{Bootstrap, Config};
use cairn_node::cli;
use cairn_node::config::LogFormat;
use clap::Parser;
use libp2p::Multiaddr;

/// The always-on peer Cairn nodes dial first: Kademlia server, AutoNAT
/// server and relay for nodes behind NAT. Give nodes the `/p2p/` address it
/// prints as their --bootstrap.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Args {
    /// Data directory for the identity key and provider records
    /// [default: $XDG_DATA_HOME/cairn-bootstrap or ~/.local/share/cairn-bootstrap].
    #[arg(long, env = "CAIRN_BOOTSTRAP_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Multiaddr to listen on; repeat or separate with commas.
    #[arg(
        long,
        env = "CAIRN_LISTEN",
        value_delimiter = ',',
        default_value = "/ip4/0.0.0.0/tcp/4001,/ip4/0.0.0.0/udp/4001/quic-v1"
    )]
    listen: Vec<Multiaddr>,
    /// Public address others reach this peer at, announced as is.
    #[arg(long, env = "CAIRN_EXTERNAL", value_delimiter = ',')]
    external: Vec<Multiaddr>,
    /// Most connections open at once.
    #[arg(long, env = "CAIRN_MAX_CONNECTIONS", default_value_t = 2048)]
    max_connections: u32,
    /// Log format on stderr.
    #[arg(long, env = "CAIRN_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: LogFormat,
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
    let args = Args::parse();
    cli::init_logs(args.log_format);
    let data_dir = args.data_dir.unwrap_or_else(|| {
        let d = cairn_node::config::default_data_dir();
        d.with_file_name("cairn-bootstrap")
    });
    let config = Config {
        data_dir: data_dir.clone(),
        listen: args.listen,
        external: args.external,
        max_connections: args.max_connections,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let node = Bootstrap::start(config)
            .await
            .with_context(|| format!("cannot start in {}", data_dir.display()))?;
        if node.new_identity {
            println!("created identity in {}", data_dir.display());
        }
        println!("peer id: {}", node.peer_id);
        for addr in &node.listen_addrs {
            println!("listening on {addr}/p2p/{}", node.peer_id);
        }
        std::io::stdout().flush()?;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let serve = tokio::spawn(node.run(async {
            let _ = rx.await;
        }));
        cli::shutdown_signal()
            .await
            .context("cannot watch signals")?;
        tracing::info!("shutting down");
        let _ = tx.send(());
        serve.await.context("bootstrap task failed")?;
        Ok(())
    })
}
