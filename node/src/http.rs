//! The node's HTTP servers (the control API and the gateway): HTTP/1.1 over
//! hyper, with the bounds every server a stranger reaches needs.
//!
//! - a cap on connections open at once, and on those from one IP address:
//!   one more is closed at accept, before anything is read from it;
//! - a header-read timeout, counted from when the server is ready for a
//!   request, so it is also the keep-alive idle timeout;
//! - a minimum send rate: a response blocked on a client that does not read
//!   must get [`Limits::min_send`] bytes out within [`Limits::send_window`]
//!   of blocking (or catch up: all it had to send taken by the socket), or
//!   the connection is dropped (and what it held freed);
//! - a failed accept (out of descriptors) backs off instead of spinning.

use std::collections::HashMap;
use std::future::Future as _;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};

/// What one HTTP server lets its clients hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once. Default 1,024.
    pub connections: usize,
    /// Connections open at once from one IP address. Default 256: a client
    /// reading a DAG (Helia) asks for a node's 174 leaves at once, each on
    /// a connection of its own.
    pub per_ip: usize,
    /// Time a client has to send a request's headers once the server waits
    /// for them (also the idle time of a kept-alive connection). Default 10 s.
    pub header_timeout: Duration,
    /// Bytes a blocked response must get out within `send_window`.
    /// Defaults 64 KiB and 10 s (6.4 KiB/s).
    pub min_send: u64,
    pub send_window: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            connections: 1024,
            per_ip: 256,
            header_timeout: Duration::from_secs(10),
            min_send: 64 << 10,
            send_window: Duration::from_secs(10),
        }
    }
}

/// Pause after a failed accept (no descriptor left, say): the listener's
/// backlog waits meanwhile, and the node's store and dials get the
/// descriptors that free up first.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// An HTTP server of the node's: the control API or the gateway.
pub struct Server {
    pub url: String,
    /// Removed when the server stops: the control API's `api` file.
    file: Option<PathBuf>,
    shutdown: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Serves `app` on `listener` within `limits` until stopped.
    pub fn spawn(
        listener: tokio::net::TcpListener,
        app: Router,
        url: String,
        file: Option<PathBuf>,
        limits: Limits,
    ) -> Server {
        let (shutdown, stop) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, app, limits, stop));
        Server {
            url,
            file,
            shutdown,
            task,
        }
    }

    pub async fn stop(self) {
        if let Some(file) = &self.file {
            let _ = std::fs::remove_file(file);
        }
        let _ = self.shutdown.send(());
        // Requests in flight (a long add) are not waited for: the
        // connections are the accept loop's, and end with it.
        self.task.abort();
        let _ = self.task.await;
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    app: Router,
    limits: Limits,
    mut stop: oneshot::Receiver<()>,
) {
    let admission = Admission::new(limits.connections, limits.per_ip);
    let mut connections = JoinSet::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => return,
            Some(_) = connections.join_next() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "HTTP accept failed; pausing");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        let Some(slot) = admission.admit(from.ip()) else {
            tracing::debug!(%from, "HTTP connection refused: at the connection cap");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let io = TokioIo::new(Paced::new(stream, limits.min_send, limits.send_window));
        let conn = http.serve_connection(io, TowerToHyperService::new(app.clone()));
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(%from, error = %e, "HTTP connection ended");
            }
            drop(slot);
        });
    }
}

/// Counts connections, in all and per IP address.
#[derive(Clone)]
struct Admission {
    total: usize,
    per_ip: usize,
    open: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

/// One admitted connection; gives its place back when dropped.
struct Slot {
    ip: IpAddr,
    open: Arc<Mutex<(usize, HashMap<IpAddr, usize>)>>,
}

impl Admission {
    fn new(total: usize, per_ip: usize) -> Self {
        Admission {
            total,
            per_ip,
            open: Arc::default(),
        }
    }

    fn admit(&self, ip: IpAddr) -> Option<Slot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (all, by_ip) = &mut *open;
        let mine = by_ip.get(&ip).copied().unwrap_or(0);
        if *all >= self.total || mine >= self.per_ip {
            return None;
        }
        *all += 1;
        by_ip.insert(ip, mine + 1);
        Some(Slot {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let (all, by_ip) = &mut *open;
        *all -= 1;
        if let Some(n) = by_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                by_ip.remove(&self.ip);
            }
        }
    }
}

/// A socket whose writes must keep a minimum pace: once a write blocks,
/// `min` bytes must go out within `window`, or writes fail with
/// `TimedOut`. A client that keeps up never starts the clock.
struct Paced<S> {
    io: S,
    min: u64,
    window: Duration,
    /// Bytes sent since the clock started, and its deadline.
    clock: Option<(u64, Pin<Box<Sleep>>)>,
}

impl<S> Paced<S> {
    fn new(io: S, min: u64, window: Duration) -> Self {
        Paced {
            io,
            min,
            window,
            clock: None,
        }
    }

    /// A write's outcome, with the pace kept: bytes sent count toward the
    /// clock, and a blocked write starts it (or fails once it has run out).
    fn paced(
        &mut self,
        cx: &mut Context<'_>,
        wrote: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match wrote {
            Poll::Ready(Ok(n)) => {
                self.sent(n);
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.blocked(cx),
            other => other,
        }
    }

    fn sent(&mut self, n: usize) {
        if let Some((sent, _)) = &mut self.clock {
            *sent += n as u64;
            if *sent >= self.min {
                self.clock = None;
            }
        }
    }

    /// Pending while the deadline is ahead; an error once it has passed.
    fn blocked(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let window = self.window;
        let (_, deadline) = self.clock.get_or_insert_with(|| {
            (
                0,
                Box::pin(tokio::time::sleep_until(Instant::now() + window)),
            )
        });
        ready!(deadline.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client reads too slowly",
        )))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Paced<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Paced<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let wrote = Pin::new(&mut self.io).poll_write(cx, buf);
        self.paced(cx, wrote)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let wrote = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.paced(cx, wrote)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    /// hyper flushes the socket once its own buffer is empty: the writer
    /// has caught up, and the clock stops (a connection left idle after a
    /// short answer is not timed from its last blocked write).
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flushed = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = flushed {
            self.clock = None;
        }
        flushed
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Raises this process's soft limit on open files to its hard limit, and
/// returns the limit in force: the HTTP servers' connection caps are sized
/// below it, so that a flood of clients cannot take the descriptors the
/// store and the swarm need.
pub fn raise_open_files() -> u64 {
    let Ok(limit) = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .ok_or(())
    else {
        return u64::MAX;
    };
    let hard = rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum;
    if let Some(hard) = hard.filter(|&h| h > limit) {
        let raised = rustix::process::Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        };
        if rustix::process::setrlimit(rustix::process::Resource::Nofile, raised).is_ok() {
            return hard;
        }
    }
    limit
}

/// Descriptors kept for the store, the index and the swarm's dials.
pub const RESERVED_FILES: u64 = 256;

/// `limits` with its connection caps brought within `open_files`: the
/// node's servers together take at most half of what is left after
/// [`RESERVED_FILES`] (the swarm's connections take the other half).
pub fn within_open_files(limits: Limits, open_files: u64, servers: u64) -> Limits {
    let share = open_files.saturating_sub(RESERVED_FILES) / 2 / servers.max(1);
    let cap = usize::try_from(share).unwrap_or(usize::MAX).max(1);
    Limits {
        connections: limits.connections.min(cap),
        per_ip: limits.per_ip.min(cap),
        ..limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[test]
    fn admission_caps_all_and_per_ip_and_frees_on_drop() {
        let a = Admission::new(3, 2);
        let (x, y) = (IpAddr::from([127, 0, 0, 2]), IpAddr::from([127, 0, 0, 3]));
        let x1 = a.admit(x).expect("first");
        let _x2 = a.admit(x).expect("second");
        assert!(a.admit(x).is_none(), "third from one IP");
        let _y1 = a.admit(y).expect("other IP");
        assert!(a.admit(y).is_none(), "over the total");
        drop(x1);
        assert!(a.admit(x).is_some(), "a place freed");
    }

    #[test]
    fn connection_caps_stay_within_the_open_file_limit() {
        let l = within_open_files(Limits::default(), 1024, 2);
        assert_eq!((l.connections, l.per_ip), (192, 192));
        let l = within_open_files(Limits::default(), 1 << 20, 2);
        assert_eq!((l.connections, l.per_ip), (1024, 256));
        let l = within_open_files(Limits::default(), 100, 2);
        assert_eq!(l.connections, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_does_not_read_is_dropped() -> anyhow::Result<()> {
        let (server, _client) = tokio::io::duplex(1024);
        let mut paced = Paced::new(server, 4096, Duration::from_millis(200));
        let started = Instant::now();
        let chunk = vec![0u8; 512];
        let err = loop {
            if let Err(e) = paced.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(200));
        // One that reads keeps going.
        let (server, mut reader) = tokio::io::duplex(1024);
        let mut paced = Paced::new(server, 4096, Duration::from_millis(200));
        let drain =
            tokio::spawn(async move { tokio::io::copy(&mut reader, &mut tokio::io::sink()).await });
        for _ in 0..1000 {
            paced.write_all(&chunk).await?;
        }
        drop(paced);
        assert_eq!(drain.await??, 512_000);

        // A short answer that blocked once, then caught up: the connection
        // may idle past the window and block again without being dropped.
        let (server, mut reader) = tokio::io::duplex(1024);
        let mut paced = Paced::new(server, 4096, Duration::from_millis(200));
        let read_all = async {
            let mut buf = vec![0u8; 2048];
            reader.read_exact(&mut buf).await?;
            anyhow::Ok(reader)
        };
        let (wrote, reader) = tokio::join!(paced.write_all(&[1u8; 2048]), read_all);
        wrote?;
        paced.flush().await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut reader = reader?;
        let read_again = async {
            let mut again = vec![0u8; 2048];
            reader.read_exact(&mut again).await.map(drop)
        };
        // A failed write ends it (the read would wait on).
        tokio::try_join!(paced.write_all(&[1u8; 2048]), read_again)?;
        Ok(())
    }
}
