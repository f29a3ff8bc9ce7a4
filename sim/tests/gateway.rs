//! The gateway's bound on requests: beyond the requests it admits (served
//! or waiting their turn), one is told to come back, not queued, and a
//! place freed is taken by the next; connections beyond the caps are closed
//! at accept, clients that send or read too slowly are dropped, and all
//! requests together hold no more segment bytes than the budget.

use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use cairn_node::client::AddOptions;
use cairn_node::gateway::{self, Limits};
use cairn_node::http;
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

/// A gateway with `limits` in front of 9 simulated nodes holding 32 MiB
/// of random content (far more than the kernel buffers on loopback: a
/// client that reads nothing holds its request unfinished).
struct Served {
    net: Network,
    server: http::Server,
    addr: String,
    /// `/ipfs/CID` of the content.
    path: String,
    root: cid::Cid,
}

async fn serve(seed: u64, limits: Limits) -> Result<Served> {
    let mut net = Network::start(Config {
        nodes: 9,
        ..Config::default()
    })
    .await?;
    let mut data = vec![0; 32 << 20];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut data);
    let added = net.add(&data, &AddOptions::default()).await?;
    let listen = "127.0.0.1:0".parse()?;
    let server = gateway::serve_with(net.client().await?, listen, limits).await?;
    let addr = server.url.trim_start_matches("http://").to_owned();
    let path = format!("/ipfs/{}", added.root);
    Ok(Served {
        net,
        server,
        addr,
        path,
        root: added.root,
    })
}

impl Served {
    async fn stop(self) {
        self.server.stop().await;
        self.net.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_its_admitted_requests_the_gateway_answers_busy() -> Result<()> {
    let limits = Limits {
        running: 1,
        admitted: 2,
        // The served client must not be dropped for not reading meanwhile.
        http: http::Limits {
            send_window: Duration::from_secs(300),
            ..Default::default()
        },
        ..Default::default()
    };
    let gw = serve(9, limits).await?;
    let (addr, path) = (gw.addr.clone(), gw.path.clone());

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
    gw.stop().await;
    Ok(())
}

/// Connects from `from` (any 127.0.0.0/8 address) to `addr`.
async fn connect_from(from: &str, addr: &str) -> Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse()?)?;
    Ok(socket.connect(addr.parse()?).await?)
}

/// Waits up to 30 s for the gateway to close `conn`, reading whatever it
/// sends first; returns how many bytes that was.
async fn closed(conn: &mut TcpStream) -> Result<usize> {
    let read = async {
        let (mut buf, mut got) = (vec![0u8; 64 << 10], 0);
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), read)
        .await
        .context("the gateway kept the connection open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_are_dropped_and_capped_at_the_door() -> Result<()> {
    let limits = Limits {
        running: 1,
        admitted: 8,
        http: http::Limits {
            connections: 16,
            per_ip: 4,
            header_timeout: Duration::from_secs(1),
            min_send: 1 << 20,
            send_window: Duration::from_secs(1),
        },
        ..Default::default()
    };
    let gw = serve(10, limits).await?;
    let (addr, path) = (gw.addr.clone(), gw.path.clone());

    // Four connections from one address that send half a request: a fifth
    // from there is closed at once; another address is still served.
    let mut slow = Vec::new();
    for _ in 0..4 {
        let mut c = connect_from("127.0.0.2", &addr).await?;
        c.write_all(b"GET /ipfs/").await?;
        slow.push(c);
    }
    let mut fifth = connect_from("127.0.0.2", &addr).await?;
    // A whole request, which an admitted connection would have answered.
    let _ = fifth.write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let answered = closed(&mut fifth).await?;
    ensure!(answered == 0, "the fifth connection was answered");
    let mut other = connect_from("127.0.0.3", &addr).await?;
    other
        .write_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n")
        .await?;
    let answer = head(&mut other).await?;
    ensure!(answer.starts_with("HTTP/1.1 404"), "{answer}");

    // The half-sent requests are dropped once the header timeout passes.
    for c in &mut slow {
        closed(c).await?;
    }

    // A client that asks for 32 MiB and reads nothing holds the one place
    // to run until it falls below the send rate; then the next is served.
    let mut stalled = ask(&addr, &path).await?;
    let first = head(&mut stalled).await?;
    ensure!(first.starts_with("HTTP/1.1 200"), "{first}");
    ensure!(
        first
            .to_ascii_lowercase()
            .contains("x-content-type-options: nosniff"),
        "{first}"
    );
    ensure!(
        first
            .to_ascii_lowercase()
            .contains("content-security-policy: sandbox"),
        "{first}"
    );
    let mut next = ask(&addr, &path).await?;
    let second = head(&mut next).await?;
    ensure!(second.starts_with("HTTP/1.1 200"), "{second}");
    closed(&mut stalled).await?;

    // A subdomain request: the same content, on an origin of its own.
    let mut c = TcpStream::connect(&addr).await?;
    let host = format!("{}.ipfs.localhost", gw.root);
    let request = format!("HEAD / HTTP/1.1\r\nHost: {host}\r\n\r\n");
    c.write_all(request.as_bytes()).await?;
    let sub = head(&mut c).await?;
    ensure!(sub.starts_with("HTTP/1.1 200"), "{sub}");
    ensure!(
        !sub.to_ascii_lowercase().contains("content-security-policy"),
        "{sub}"
    );
    gw.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_share_one_byte_budget_for_segments() -> Result<()> {
    // One segment (6 pieces of 4 MiB) is the whole budget.
    let limits = Limits {
        running: 4,
        buffers: 24 << 20,
        http: http::Limits {
            send_window: Duration::from_secs(300),
            ..Default::default()
        },
        ..Default::default()
    };
    let gw = serve(11, limits).await?;
    let (addr, path) = (gw.addr.clone(), gw.path.clone());

    // A holds the budget with a segment it cannot send to a client that
    // does not read; B, with room to run, waits for bytes to hold.
    let mut a = ask(&addr, &path).await?;
    let first = head(&mut a).await?;
    ensure!(first.starts_with("HTTP/1.1 200"), "{first}");
    let mut b = ask(&addr, &path).await?;
    tokio::select! {
        h = head(&mut b) => bail!("B was answered while A held the whole budget: {h:?}"),
        () = tokio::time::sleep(Duration::from_secs(3)) => {}
    }
    // A leaves: what it held is free, and B is served.
    drop(a);
    let second = head(&mut b).await?;
    ensure!(second.starts_with("HTTP/1.1 200"), "{second}");
    gw.stop().await;
    Ok(())
}
