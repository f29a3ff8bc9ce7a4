//! `cairn devnet`: a whole Cairn network on this machine. A bootstrap node
//! and N storage nodes run as child processes (`cairn-bootstrap` and
//! `cairn node`, from the directory of the running `cairn`) on 127.0.0.1
//! with ports the system picks, each with its own data directory and log.
#![allow(clippy::print_stdout)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytesize::ByteSize;
use futures::future::try_join_all;
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Storage nodes to start (6+3 coding needs at least 9).
    #[arg(long, default_value_t = 12, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub nodes: u32,
    /// Keep data and logs in this directory [default: a temporary one,
    /// deleted on exit].
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Disk each storage node contributes.
    #[arg(long, default_value = "2GiB")]
    pub capacity: ByteSize,
}

/// How long a child has to print its address.
const START: Duration = Duration::from_secs(30);

struct Peer {
    name: String,
    child: Child,
    addr: String,
    /// The gateway's `http://…/ipfs/` URL, for the node that serves one.
    gateway: Option<String>,
}

pub fn run(args: Args) -> Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(devnet(args))
}

async fn devnet(args: Args) -> Result<()> {
    let cairn = std::env::current_exe().context("cannot find the cairn executable")?;
    let bootstrap_exe = cairn.with_file_name("cairn-bootstrap");
    if !bootstrap_exe.exists() {
        bail!(
            "{} not found next to cairn: build both (`cargo build --release`) or install both",
            bootstrap_exe.display()
        );
    }
    let temp;
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("cairn-devnet-")
                .tempdir()
                .context("cannot create a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let listen = "/ip4/127.0.0.1/tcp/0";
    let boot = spawn(
        "bootstrap",
        &bootstrap_exe,
        &[
            "--data-dir",
            path(&dir.join("bootstrap"))?,
            "--listen",
            listen,
        ],
        &dir,
        false,
    )
    .await?;
    let capacity = args.capacity.to_string();
    let nodes = try_join_all((1..=args.nodes).map(|i| {
        let name = format!("node-{i:02}");
        let data = dir.join(&name);
        let (cairn, dir, boot, capacity) = (&cairn, &dir, &boot.addr, &capacity);
        async move {
            let mut args = vec![
                "node",
                "--data-dir",
                path(&data)?,
                "--listen",
                listen,
                "--bootstrap",
                boot,
                "--capacity",
                capacity,
                // N nodes share this machine's cores: one worker each
                // switches threads less (get of 1 GiB on 12 nodes: 3.5 s
                // against 3.8 with a worker per core; docs/BENCHMARKS.md).
                "--threads",
                "1",
            ];
            // The first node serves the HTTP gateway.
            let gateway = i == 1;
            if gateway {
                args.extend(["--gateway", "127.0.0.1:0"]);
            }
            spawn(&name, cairn, &args, dir, gateway).await
        }
    }))
    .await;
    let mut peers = vec![boot];
    match nodes {
        Ok(n) => peers.extend(n),
        Err(e) => {
            stop(&mut peers).await;
            return Err(e);
        }
    }
    print_summary(&peers, &dir, &cairn, args.dir.is_some())?;

    // A child that exits (a node killed to try a get without it) is
    // reported; the others run on until Ctrl-C.
    let signal = crate::cli::shutdown_signal();
    tokio::pin!(signal);
    let mut running: Vec<usize> = (0..peers.len()).collect();
    while !running.is_empty() {
        let (i, status) = tokio::select! {
            r = &mut signal => { r?; break; }
            exited = next_exit(&mut peers, &running) => exited,
        };
        running.retain(|r| *r != i);
        let log = dir.join(format!("{}.log", peers[i].name));
        let left = running.iter().filter(|r| **r != 0).count();
        let note = match i {
            0 => "new clients cannot join through it".to_owned(),
            _ => format!("{left} storage nodes still run"),
        };
        eprintln!(
            "{} exited ({status}; log {}): {note}",
            peers[i].name,
            log.display()
        );
    }
    if running.is_empty() {
        bail!("every process of the devnet has exited");
    }
    eprintln!("stopping the devnet");
    stop(&mut peers).await;
    Ok(())
}

fn path(p: &Path) -> Result<&str> {
    p.to_str()
        .with_context(|| format!("{} is not valid UTF-8", p.display()))
}

/// Starts a child with its stderr in `<dir>/<name>.log` and waits for the
/// `/p2p/` address it prints, and its gateway's URL if it serves one.
async fn spawn(name: &str, exe: &Path, args: &[&str], dir: &Path, gateway: bool) -> Result<Peer> {
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let (addr, gateway) = tokio::time::timeout(START, async {
        let mut addr = None;
        while let Some(line) = lines.next_line().await? {
            if let Some(a) = line.strip_prefix("listening on ") {
                addr.get_or_insert_with(|| a.to_owned());
            }
            let url = line.strip_prefix("gateway on ").map(str::to_owned);
            match (&addr, gateway, url) {
                (Some(a), false, _) => return Ok((a.clone(), None)),
                (Some(a), true, Some(url)) => return Ok((a.clone(), Some(url))),
                _ => {}
            }
        }
        bail!("{name} exited before listening; see {}", log_path.display())
    })
    .await
    .with_context(|| format!("{name} did not start within {START:?}"))??;
    // The rest of its stdout is not needed, but must not block it.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok(Peer {
        name: name.to_owned(),
        child,
        addr,
        gateway,
    })
}

/// The first of the `running` children to exit, and how it ended.
async fn next_exit(peers: &mut [Peer], running: &[usize]) -> (usize, String) {
    let waits = peers
        .iter_mut()
        .enumerate()
        .filter(|(i, _)| running.contains(i))
        .map(|(i, p)| {
            Box::pin(async move {
                let status = p.child.wait().await;
                (i, status.map_or_else(|e| e.to_string(), |s| s.to_string()))
            })
        });
    futures::future::select_all(waits).await.0
}

/// SIGTERM to every child (a clean shutdown), then waits; SIGKILL after 10 s.
async fn stop(peers: &mut [Peer]) {
    for p in peers.iter() {
        if let Some(pid) = p.child.id() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    for p in peers.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(10), p.child.wait())
            .await
            .is_err()
        {
            let _ = p.child.kill().await;
        }
    }
}

fn print_summary(peers: &[Peer], dir: &Path, cairn: &Path, kept: bool) -> Result<()> {
    let boot = &peers[0].addr;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "Cairn devnet: a bootstrap node and {} storage nodes on 127.0.0.1",
        peers.len() - 1
    )?;
    for p in peers {
        writeln!(out, "  {:<10} {}", p.name, p.addr)?;
    }
    let note = if kept { "" } else { ", deleted on exit" };
    writeln!(out, "Data and logs: {}{note}", dir.display())?;
    let cairn = cairn.display();
    writeln!(out)?;
    writeln!(out, "In another terminal:")?;
    writeln!(out, "  export CAIRN_BOOTSTRAP={boot}")?;
    writeln!(out, "  {cairn} add FILE            # prints the CID")?;
    writeln!(out, "  {cairn} get CID -o OUT      # or: {cairn} cat CID")?;
    if let Some(url) = peers.iter().find_map(|p| p.gateway.as_ref()) {
        writeln!(out, "In a browser, or with curl:")?;
        writeln!(out, "  {url}CID")?;
    }
    writeln!(out)?;
    writeln!(out, "Ctrl-C stops the network.")?;
    out.flush()?;
    Ok(())
}
