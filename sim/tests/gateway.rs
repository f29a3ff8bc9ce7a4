//! The gateway's bound on requests: beyond the requests it admits (served
//! or waiting their turn), one is told to come back, not queued, and a
//! place freed is taken by the next.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use cairn_node::client::AddOptions;
use cairn_node::gateway::{self, Limits};
use cairn_sim::{Config, Network};
use rand::{RngCore as _, SeedableRng as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

/// Sends `GET path` on a new connection; reads nothing back.
async fn ask(addr: &str, path: &str) -> Result<TcpStream> {
    let mut conn = TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    conn.write_all(request.as_bytes()).await?;
    Ok(conn)
}

/// Reads the response head: its status line and headers. A request that
/// gets none within 30 s is taken as queued, not answered.
async fn head(conn: &mut TcpStream) -> Result<String> {
    let read = async {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            ensure!(head.len() < 8192, "no end to the head");
            let byte = conn.read_u8().await.context("the gateway closed")?;
            head.push(byte);
        }
        Ok(String::from_utf8(head)?)
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .context("no answer within 30 s")?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_its_admitted_requests_the_gateway_answers_busy() -> Result<()> {
    let mut net = Network::start(Config {
        nodes: 9,
        ..Config::default()
    })
    .await?;
    // Far more than the kernel buffers on loopback: a client that reads
    // nothing holds its request unfinished.
    let mut data = vec![0; 32 << 20];
    rand::rngs::StdRng::seed_from_u64(9).fill_bytes(&mut data);
    let added = net.add(&data, &AddOptions::default()).await?;
    let limits = Limits {
        running: 1,
        admitted: 2,
    };
    let listen = "127.0.0.1:0".parse()?;
    let server = gateway::serve_with(net.client().await?, listen, limits).await?;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let path = format!("/ipfs/{}", added.root);

    // One served: its answer has begun and stalls on a client that does
    // not read.
    let mut served = ask(&addr, &path).await?;
    let first = head(&mut served).await?;
    ensure!(first.starts_with("HTTP/1.1 200"), "{first}");

    // Two more: one waits its turn, the other is one too many.
    let (mut b, mut c) = (ask(&addr, &path).await?, ask(&addr, &path).await?);
    let (busy, mut waiting) = tokio::select! {
        h = head(&mut b) => (h?, c),
        h = head(&mut c) => (h?, b),
    };
    ensure!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    ensure!(
        busy.to_ascii_lowercase().contains("retry-after: 1"),
        "{busy}"
    );

    // The served client leaves: the waiting request is served.
    drop(served);
    let second = head(&mut waiting).await?;
    ensure!(second.starts_with("HTTP/1.1 200"), "{second}");
    server.stop().await;
    net.shutdown().await;
    Ok(())
}
