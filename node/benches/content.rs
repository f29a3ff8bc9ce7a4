//! Add and get throughput on a local network (issue #4), each printed next
//! to the limit measured in the same run: one libp2p TCP+Noise+Yamux stream
//! on loopback, the transport every piece crosses, opened as an application
//! opens one (a `Swarm` in each of two processes, `libp2p-stream`). For
//! comparison it also prints the transport alone, with no swarm: both ends
//! in this process, driving the muxer directly, as no application can.
//!
//! `cargo build --release --bins && cargo bench -p cairn-node --bench content`
//! starts `cairn devnet` (12 storage nodes), then times `cairn add` and
//! `cairn get` of 1 GiB of random bytes as a user runs them, sampling each
//! command's peak RSS. CAIRN_BENCH_MIB changes the size, CAIRN_BENCH_NODES
//! the nodes.
#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Command, Stdio};
use std::task::Poll;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, ensure};
use cairn_tests::procs::{Devnet, bin};
use futures::future::poll_fn;
use futures::{AsyncReadExt as _, AsyncWriteExt as _, StreamExt as _};
use libp2p::core::muxing::{StreamMuxerBox, StreamMuxerExt as _, SubstreamBox};
use libp2p::core::transport::{DialOpts, ListenerId, PortUse, TransportEvent};
use libp2p::core::upgrade::Version;
use libp2p::core::{Endpoint, Transport as _};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identity, noise, tcp, yamux};
use rand::{RngCore as _, SeedableRng as _};

const MB: f64 = 1e6;
/// Set in the environment of the limit's receiving process.
const RECEIVER: &str = "CAIRN_BENCH_RECEIVER";
const LIMIT_PROTOCOL: StreamProtocol = StreamProtocol::new("/cairn-bench/limit/1");

fn env_u64(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => v.parse().with_context(|| format!("{name}={v}")),
        Err(_) => Ok(default),
    }
}

// ---- the limit: one stream between two swarms ----

fn swarm() -> Result<Swarm<libp2p_stream::Behaviour>> {
    Ok(libp2p::SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )?
        .with_behaviour(|_| libp2p_stream::Behaviour::new())?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}

/// The receiving process: prints its address, reads one stream to its
/// end, prints the byte count.
async fn receiver() -> Result<()> {
    let mut swarm = swarm()?;
    let mut incoming = swarm.behaviour().new_control().accept(LIMIT_PROTOCOL)?;
    swarm.listen_on("/ip4/127.0.0.1/tcp/0".parse()?)?;
    let id = *swarm.local_peer_id();
    loop {
        if let SwarmEvent::NewListenAddr { address, .. } = swarm.select_next_some().await {
            println!("{address}/p2p/{id}");
            std::io::stdout().flush()?;
            break;
        }
    }
    tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let (_, mut stream) = incoming.next().await.context("no stream")?;
    let (mut buf, mut total) = (vec![0u8; 1 << 20], 0u64);
    loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    println!("{total}");
    Ok(())
}

/// A child process, killed if still running when dropped (a failed run).
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// MB/s of `bytes` on one stream from this process to a receiving one
/// (this binary again), timed from the first write until the receiver
/// reports it has read the last byte.
async fn two_swarms(bytes: u64) -> Result<f64> {
    let mut child = Reaped(
        Command::new(std::env::current_exe()?)
            .env(RECEIVER, "1")
            .stdout(Stdio::piped())
            .spawn()?,
    );
    let mut lines = BufReader::new(child.0.stdout.take().context("no stdout")?).lines();
    let mut line = || -> Result<String> { Ok(lines.next().context("the receiver stopped")??) };
    let addr: Multiaddr = line()?.parse()?;
    let Some(Protocol::P2p(peer)) = addr.iter().last() else {
        anyhow::bail!("{addr} names no peer");
    };
    let mut swarm = swarm()?;
    let mut control = swarm.behaviour().new_control();
    swarm.dial(addr)?;
    let driver = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });
    let mut stream = control
        .open_stream(peer, LIMIT_PROTOCOL)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open the stream: {e}"))?;
    let chunk = vec![0x5a; 1 << 20];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        stream.write_all(&chunk).await?;
        sent += chunk.len() as u64;
    }
    stream.close().await?;
    // Blocks this thread only: the swarm runs on the workers.
    let got: u64 = line()?.parse()?;
    let secs = start.elapsed().as_secs_f64();
    driver.abort();
    ensure!(child.0.wait()?.success(), "the receiver failed");
    ensure!(got == sent, "received {got} of {sent} bytes");
    Ok(sent as f64 / secs / MB)
}

// ---- for comparison: the transport alone, no swarm ----

fn transport(
    key: &identity::Keypair,
) -> Result<libp2p::core::transport::Boxed<(PeerId, StreamMuxerBox)>> {
    Ok(tcp::tokio::Transport::new(tcp::Config::default())
        .upgrade(Version::V1)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .boxed())
}

/// Runs the connection under `muxer` until it fails; the caller's other
/// branch finishes first.
async fn drive(muxer: &mut StreamMuxerBox) -> std::io::Error {
    poll_fn(|cx| {
        loop {
            match muxer.poll_unpin(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(e),
                Poll::Ready(Ok(_)) => {}
            }
        }
    })
    .await
}

/// The first inbound stream (as listener) or a new outbound one (as dialer).
async fn open(muxer: &mut StreamMuxerBox, side: Endpoint) -> std::io::Result<SubstreamBox> {
    poll_fn(|cx| {
        loop {
            match muxer.poll_unpin(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(_)) => {}
            }
        }
        match side {
            Endpoint::Listener => muxer.poll_inbound_unpin(cx),
            Endpoint::Dialer => muxer.poll_outbound_unpin(cx),
        }
    })
    .await
}

/// MB/s of `bytes` through one TCP+Noise+Yamux stream between two
/// transports in this process (one task each, on two worker threads), each
/// task driving its connection itself: no swarm, no task between the
/// connection and the stream.
async fn one_stream(bytes: u64) -> Result<f64> {
    let mut listener = transport(&identity::Keypair::generate_ed25519())?;
    listener.listen_on(ListenerId::next(), "/ip4/127.0.0.1/tcp/0".parse()?)?;
    let addr: Multiaddr = loop {
        if let TransportEvent::NewAddress { listen_addr, .. } = listener.select_next_some().await {
            break listen_addr;
        }
    };
    let mut receiver = tokio::spawn(async move {
        let upgrade = loop {
            if let TransportEvent::Incoming { upgrade, .. } = listener.select_next_some().await {
                break upgrade;
            }
        };
        let (_, mut muxer) = upgrade.await?;
        let mut stream = open(&mut muxer, Endpoint::Listener).await?;
        let (mut buf, mut total) = (vec![0u8; 1 << 20], 0u64);
        loop {
            let n = tokio::select! {
                n = stream.read(&mut buf) => n?,
                e = drive(&mut muxer) => return Err(e.into()),
            };
            if n == 0 {
                return anyhow::Ok(total);
            }
            total += n as u64;
        }
    });
    let mut dialer = transport(&identity::Keypair::generate_ed25519())?;
    let opts = DialOpts {
        role: Endpoint::Dialer,
        port_use: PortUse::New,
    };
    let (_, mut muxer) = dialer.dial(addr, opts)?.await?;
    let mut stream = open(&mut muxer, Endpoint::Dialer).await?;
    let chunk = vec![0x5a; 1 << 20];
    let start = Instant::now();
    let mut sent = 0;
    while sent < bytes {
        tokio::select! {
            r = stream.write_all(&chunk) => r?,
            e = drive(&mut muxer) => return Err(e.into()),
        }
        sent += chunk.len() as u64;
    }
    tokio::select! {
        r = stream.close() => r?,
        e = drive(&mut muxer) => return Err(e.into()),
    }
    // Keep the connection running until the receiver has read everything
    // (it closes the connection when done, which ends `drive`).
    let got = tokio::select! {
        r = &mut receiver => r??,
        _ = drive(&mut muxer) => receiver.await??,
    };
    ensure!(got == sent, "received {got} of {sent} bytes");
    Ok(sent as f64 / start.elapsed().as_secs_f64() / MB)
}

// ---- the network and the commands ----

/// Peak RSS of `pid` so far, from /proc.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `cairn ARGS` against the devnet; returns (seconds, peak RSS MiB,
/// stdout). The peak is sampled every 20 ms (VmHWM only grows).
fn timed(net: &Devnet, args: &[&str]) -> Result<(f64, f64, String)> {
    let start = Instant::now();
    let mut child = Command::new(bin("cairn")?)
        .args(args)
        .env("CAIRN_BOOTSTRAP", &net.bootstrap)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(child.id()) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let secs = start.elapsed().as_secs_f64();
    let out = child.wait_with_output()?;
    ensure!(
        status.success(),
        "cairn {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((
        secs,
        peak as f64 / 1024.0,
        String::from_utf8(out.stdout)?.trim().to_owned(),
    ))
}

fn main() -> Result<()> {
    if std::env::var_os(RECEIVER).is_some() {
        return tokio::runtime::Runtime::new()?.block_on(receiver());
    }
    let mib = env_u64("CAIRN_BENCH_MIB", 1024)?;
    let nodes = env_u64("CAIRN_BENCH_NODES", 12)?;
    let bytes = mib << 20;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // One transfer swings by a quarter between runs here: take the median
    // of three.
    let median = |f: &dyn Fn() -> Result<f64>| -> Result<[f64; 3]> {
        let mut runs = [f()?, f()?, f()?];
        runs.sort_by(f64::total_cmp);
        Ok(runs)
    };
    let runs = median(&|| runtime.block_on(two_swarms(bytes)))?;
    let bare = median(&|| runtime.block_on(one_stream(bytes)))?;
    drop(runtime);
    let limit = runs[1];
    println!(
        "limit: one libp2p TCP+Noise+Yamux stream on loopback between two processes: {limit:.0} MB/s (median of {:.0}, {:.0}, {:.0}); the transport alone, no swarm, in one process: {:.0} MB/s (median of {:.0}, {:.0}, {:.0})",
        runs[0], runs[1], runs[2], bare[1], bare[0], bare[1], bare[2]
    );

    let work = tempfile::tempdir()?;
    let file = work.path().join("content.bin");
    {
        let mut rng = rand::rngs::StdRng::seed_from_u64(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos() as u64,
        );
        let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..mib {
            rng.fill_bytes(&mut buf);
            out.write_all(&buf)?;
        }
        out.into_inner()?.sync_all()?;
    }

    let net = Devnet::start(nodes, "8GiB")?;
    let path = file.to_str().context("utf-8 path")?;
    let (secs, rss, cid) = timed(&net, &["add", "--quiet", path])?;
    report("add", bytes, secs, rss, limit, 0.4);
    let out = work.path().join("back.bin");
    let (secs, rss, _) = timed(
        &net,
        &["get", &cid, "-o", out.to_str().context("utf-8 path")?],
    )?;
    report("get", bytes, secs, rss, limit, 0.6);
    ensure!(
        std::fs::metadata(&out)?.len() == bytes,
        "get wrote a file of another size"
    );
    Ok(())
}

fn report(what: &str, bytes: u64, secs: f64, rss: f64, limit: f64, target: f64) {
    let rate = bytes as f64 / secs / MB;
    let ratio = rate / limit;
    let mark = |ok: bool| if ok { "✔" } else { "✘" };
    println!(
        "{what} {} MiB on the devnet: {secs:.1} s, {rate:.0} MB/s = {ratio:.2} of the limit (target ≥ {target}) {}; client peak RSS {rss:.0} MiB (target ≤ 256) {}",
        bytes >> 20,
        mark(ratio >= target),
        mark(rss <= 256.0),
    );
}
