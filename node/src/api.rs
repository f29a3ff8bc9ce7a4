//! The control API of a running node: HTTP/1.1 with JSON, on loopback only,
//! so that `cairn add`, `get` and `cat` on the same machine work through the
//! node instead of starting a client of their own.
//!
//! The node writes `<data dir>/api` (mode 0600): `{"url": …, "token": …}`.
//! Every request carries `Authorization: Bearer <token>`, so only users who
//! can read the data directory can use the node (a web page cannot either).
//! Paths in requests are the node's to open: the commands send absolute
//! paths of the same machine. docs/PROTOCOL.md §11 lists the endpoints.

use std::io::{self, BufRead as _, BufReader, Read as _, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use cairn_protocol::address::Address;
use cairn_protocol::erasure::Scheme;
use cairn_protocol::seal::{Handle as SealHandle, Key, Target};
use cairn_protocol::unixfs::DirEntry;
use futures::StreamExt as _;
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::add::Options;
use crate::client::{self, Content, GetOptions, Input};
use crate::http::{self, Server};
use crate::node::Handle;
use crate::pinner::{self, PinStatus, PinSummary};

/// The file in the data directory that says where the API is.
pub const API_FILE: &str = "api";
/// Bytes of content per chunk streamed by `/v1/cat`.
const CAT_CHUNK: usize = 256 << 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiFile {
    pub url: String,
    pub token: String,
}

/// What to add, as `cairn add` takes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddRequest {
    /// A file or directory, or with `car` a CAR file; absolute.
    pub path: PathBuf,
    #[serde(default)]
    pub recursive: bool,
    #[serde(default)]
    pub hidden: bool,
    #[serde(default)]
    pub car: bool,
    /// Seal the file with a fresh key; the result carries the handle.
    #[serde(default)]
    pub encrypt: bool,
    pub scheme: Scheme,
    pub days: u64,
    /// Keep the content alive from this node (audits, repair): see
    /// [`crate::pinner`]. Default true.
    #[serde(default = "yes")]
    pub pin: bool,
    /// 0 or 1, as `ipfs add --cid-version`. Default 1.
    #[serde(default = "one")]
    pub cid_version: u64,
}

impl AddRequest {
    /// Checks what needs no network; returns the CID version asked for.
    pub fn check(&self) -> Result<cid::Version> {
        ensure!(
            (1..=365).contains(&self.days),
            "days must be 1 to 365, not {}",
            self.days
        );
        let Ok(version) = cid::Version::try_from(self.cid_version) else {
            bail!("cid version must be 0 or 1, not {}", self.cid_version);
        };
        ensure!(
            version == cid::Version::V1 || !(self.car || self.encrypt),
            "cid version 0 is for files and directories: a CAR names its own blocks, and encrypted content is CIDv1"
        );
        Ok(version)
    }
}

fn yes() -> bool {
    true
}

fn one() -> u64 {
    1
}

/// A CID, as `/v1/pin/add`, `/v1/pin/rm` and `/v1/pin/status` take it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinRequest {
    pub cid: String,
}

/// One entry of a directory, as `cairn ls --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LsEntry {
    pub name: String,
    pub cid: String,
    /// Bytes of the entry's blocks (the link's `Tsize`).
    pub size: u64,
}

impl From<DirEntry> for LsEntry {
    fn from(e: DirEntry) -> Self {
        LsEntry {
            name: e.name,
            cid: e.cid.to_string(),
            size: e.dag_size,
        }
    }
}

/// `GET /v1/ls`.
#[derive(Debug, Deserialize, Serialize)]
pub struct LsQuery {
    pub target: String,
}

/// Whether a pin or unpin changed anything.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PinResult {
    pub cid: String,
    pub changed: bool,
}

/// A running node's state, as `cairn status --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStatus {
    pub peer_id: String,
    pub connected_peers: usize,
    /// Peers in the DHT routing table.
    pub routing_table: usize,
    pub pieces: u64,
    /// Bytes of pieces stored, and the most the node stores.
    pub used: u64,
    pub capacity: u64,
    /// Bytes offers may still take: the capacity left, or less when the
    /// disk has less room.
    #[serde(default)]
    pub free: u64,
    /// Stored pieces not yet announced in the DHT, or being announced.
    pub announcing: usize,
}

/// What an add did, as `cairn add --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AddResult {
    /// The root CID (of the ciphertext, for sealed content).
    pub cid: String,
    /// What `get` and `cat` take: the CID, or for sealed content CID and key.
    pub handle: String,
    pub manifest: String,
    pub bytes: u64,
    pub segments: usize,
    pub pieces: usize,
    pub scheme: String,
    pub replaced_nodes: usize,
    pub manifest_copies: usize,
    pub already_stored: bool,
    /// Whether this node now keeps the content alive.
    pub pinned: bool,
    /// Per segment, the peer ID of the node each piece went to, in piece
    /// order (data pieces first); empty when the content was already stored.
    #[serde(default)]
    pub holders: Vec<Vec<Option<String>>>,
}

/// One line of the `/v1/add` answer (newline-delimited JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddEvent {
    Hashed { total: u64 },
    Placed { done: u64 },
    Added(AddResult),
    Error { message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GetRequest {
    /// A CID or a sealed-content handle.
    pub target: String,
    /// Where the node writes the content; absolute, must not exist.
    pub output: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CatQuery {
    pub target: String,
    #[serde(default)]
    pub offset: u64,
    pub length: Option<u64>,
}

/// Adds what `req` names through `net`: the one add behind the command
/// line and the API.
pub async fn add(
    net: &Handle,
    req: &AddRequest,
    progress: impl Fn(client::Progress),
) -> Result<AddResult> {
    let cid_version = req.check()?;
    let mut key = None;
    let input = if req.car {
        Input::Car(req.path.clone())
    } else if req.encrypt {
        let mut k = [0; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        key = Some(Key(k));
        Input::Sealed {
            path: req.path.clone(),
            key: Key(k),
        }
    } else {
        Input::Path {
            path: req.path.clone(),
            options: Options {
                recursive: req.recursive,
                hidden: req.hidden,
                cid_version,
            },
        }
    };
    let options = client::AddOptions {
        scheme: req.scheme,
        term: Duration::from_secs(req.days * 86_400),
        ..Default::default()
    };
    let added = client::add(net, input, &options, progress).await?;
    let pinned = if !req.pin {
        false
    } else if added.already_stored {
        pinner::pin_existing(net, added.root).await?;
        true
    } else {
        pinner::pin_added(net, &added)?;
        true
    };
    let handle = match key {
        Some(key) => Target::Sealed(SealHandle {
            root: added.root,
            key,
        }),
        None => Target::Plain(added.root),
    };
    Ok(AddResult {
        cid: added.root.to_string(),
        handle: handle.reveal(),
        manifest: added.manifest.to_string(),
        bytes: added.bytes,
        segments: added.segments.len(),
        pieces: added.pieces,
        scheme: req.scheme.to_string(),
        replaced_nodes: added.replaced,
        manifest_copies: added.manifest_holders.len(),
        already_stored: added.already_stored,
        pinned,
        holders: added
            .holders
            .iter()
            .map(|s| s.iter().map(|p| p.map(|p| p.to_string())).collect())
            .collect(),
    })
}

// ---- the server, in the node ----

#[derive(Clone)]
struct Ctx {
    net: Handle,
    token: String,
}

/// Serves the API of `net` on `listen` (a loopback address) and writes
/// `<data_dir>/api`.
pub async fn serve(
    net: Handle,
    listen: SocketAddr,
    data_dir: &Path,
    limits: http::Limits,
) -> Result<Server> {
    ensure!(
        listen.ip().is_loopback(),
        "the control API listens on loopback only, not {listen}"
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the control API"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let mut token = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut token);
    let token = data_encoding::HEXLOWER.encode(&token);
    let file = data_dir.join(API_FILE);
    let json = serde_json::to_vec(&ApiFile {
        url: url.clone(),
        token: token.clone(),
    })?;
    write_private(&file, &json)?;

    let ctx = Ctx { net, token };
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/add", post(add_route))
        .route("/v1/get", post(get_route))
        .route("/v1/cat", get(cat_route))
        .route("/v1/ls", get(ls_route))
        .route("/v1/pin/add", post(pin_add_route))
        .route("/v1/pin/rm", post(pin_rm_route))
        .route("/v1/pin/ls", get(pin_ls_route))
        .route("/v1/pin/status", get(pin_status_route))
        .layer(middleware::from_fn_with_state(ctx.clone(), auth))
        .with_state(ctx);
    Ok(Server::spawn(listener, app, url, Some(file), limits))
}

/// Writes `path` readable by its owner only, whole or not at all.
fn write_private(path: &Path, data: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn bad(e: impl std::fmt::Display) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, e.to_string())
}

/// A failure to find or read content: 404 when the network lacks it.
fn failed(e: anyhow::Error) -> ApiError {
    let message = format!("{e:#}");
    let status = if e.downcast_ref::<client::Unknown>().is_some() {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    };
    ApiError(status, message)
}

/// Only a request with the token, addressed to a loopback host, is served:
/// a web page the user visits cannot reach the API through a name it
/// points at 127.0.0.1 (DNS rebinding).
async fn auth(State(ctx): State<Ctx>, req: Request, next: Next) -> Response {
    if !req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .is_some_and(loopback_host)
    {
        return ApiError(
            StatusCode::MISDIRECTED_REQUEST,
            "the control API answers requests to 127.0.0.1, [::1] or localhost only".into(),
        )
        .into_response();
    }
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(
        given.as_bytes(),
        ctx.token.as_bytes(),
    )) {
        return ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong token: it is in the node's data directory, file `api`".into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// Whether a Host header names this machine by a loopback address.
fn loopback_host(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let name = name.trim_start_matches('[').trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

async fn status(State(ctx): State<Ctx>) -> Result<Json<NodeStatus>, ApiError> {
    let s = ctx.net.status().await.map_err(|e| failed(e.into()))?;
    Ok(Json(NodeStatus {
        peer_id: ctx.net.peer_id().to_string(),
        connected_peers: s.connected_peers,
        routing_table: s.routing_table,
        pieces: s.pieces,
        used: s.used,
        capacity: s.capacity,
        free: s.free,
        announcing: s.announcing,
    }))
}

fn absolute(path: &Path) -> Result<(), ApiError> {
    if path.is_absolute() {
        Ok(())
    } else {
        Err(bad(format!("{} is not an absolute path", path.display())))
    }
}

async fn add_route(
    State(ctx): State<Ctx>,
    Json(req): Json<AddRequest>,
) -> Result<Response, ApiError> {
    absolute(&req.path)?;
    let (tx, rx) = mpsc::unbounded_channel::<AddEvent>();
    tokio::spawn(async move {
        // Progress is sent only when it moves on by a chunk or more.
        let sent = std::sync::atomic::AtomicU64::new(0);
        let progress = |p: client::Progress| {
            let event = match p {
                client::Progress::Hashed { total } => AddEvent::Hashed { total },
                client::Progress::Placed { done } => {
                    let last = sent.load(std::sync::atomic::Ordering::Relaxed);
                    if done < last + (1 << 20) {
                        return;
                    }
                    sent.store(done, std::sync::atomic::Ordering::Relaxed);
                    AddEvent::Placed { done }
                }
            };
            let _ = tx.send(event);
        };
        // A caller that hangs up (Ctrl-C) stops the add.
        let added = tokio::select! {
            added = add(&ctx.net, &req, progress) => added,
            () = tx.closed() => return,
        };
        let last = match added {
            Ok(r) => AddEvent::Added(r),
            Err(e) => AddEvent::Error {
                message: format!("{e:#}"),
            },
        };
        let _ = tx.send(last);
    });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let event = rx.recv().await?;
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, io::Error>(Bytes::from(line)), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

fn parse_cid(text: &str) -> Result<cid::Cid, ApiError> {
    text.parse()
        .map_err(|e| bad(format!("{text:?} is not a CID: {e}")))
}

async fn pin_add_route(
    State(ctx): State<Ctx>,
    Json(req): Json<PinRequest>,
) -> Result<Json<PinResult>, ApiError> {
    let root = parse_cid(&req.cid)?;
    let changed = pinner::pin_existing(&ctx.net, root).await.map_err(failed)?;
    Ok(Json(PinResult {
        cid: req.cid,
        changed,
    }))
}

async fn pin_rm_route(
    State(ctx): State<Ctx>,
    Json(req): Json<PinRequest>,
) -> Result<Json<PinResult>, ApiError> {
    let root = parse_cid(&req.cid)?;
    let changed = pinner::unpin(&ctx.net, &root).map_err(failed)?;
    Ok(Json(PinResult {
        cid: req.cid,
        changed,
    }))
}

async fn pin_ls_route(State(ctx): State<Ctx>) -> Result<Json<Vec<PinSummary>>, ApiError> {
    pinner::list(&ctx.net).map(Json).map_err(failed)
}

async fn pin_status_route(
    State(ctx): State<Ctx>,
    Query(req): Query<PinRequest>,
) -> Result<Json<PinStatus>, ApiError> {
    let root = parse_cid(&req.cid)?;
    match pinner::status(&ctx.net, &root).map_err(failed)? {
        Some(s) => Ok(Json(s)),
        None => Err(ApiError(
            StatusCode::NOT_FOUND,
            format!("{root} is not pinned on this node"),
        )),
    }
}

async fn open(net: &Handle, target: &str) -> Result<Content, ApiError> {
    let target: Address = target.parse().map_err(bad)?;
    Content::open(net, target, GetOptions::default())
        .await
        .map_err(failed)
}

async fn get_route(
    State(ctx): State<Ctx>,
    Json(req): Json<GetRequest>,
) -> Result<Json<serde_json::Value>, ApiError> {
    absolute(&req.output)?;
    let content = open(&ctx.net, &req.target).await?;
    let output = req.output.clone();
    tokio::task::spawn_blocking(move || content.save(&output))
        .await
        .map_err(|e| failed(e.into()))?
        .map_err(failed)?;
    Ok(Json(serde_json::json!({ "output": req.output })))
}

/// Sends what is written to it down a channel in [`CAT_CHUNK`]s.
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CAT_CHUNK),
        ));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reader went away"))
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CAT_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CAT_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}

async fn ls_route(
    State(ctx): State<Ctx>,
    Query(q): Query<LsQuery>,
) -> Result<Json<Vec<LsEntry>>, ApiError> {
    let content = open(&ctx.net, &q.target).await?;
    let entries = tokio::task::spawn_blocking(move || content.list())
        .await
        .map_err(|e| failed(e.into()))?
        .map_err(failed)?;
    Ok(Json(entries.into_iter().map(LsEntry::from).collect()))
}

async fn cat_route(
    State(ctx): State<Ctx>,
    Query(q): Query<CatQuery>,
) -> Result<Response, ApiError> {
    let content = open(&ctx.net, &q.target).await?;
    let (offset, length) = (q.offset, q.length);
    // Logged if cut short: a handle's key is left out of its Display.
    let what = q.target.parse::<Address>().map_err(bad)?.to_string();
    let body = stream(what, move |out| content.read(offset, length, out))
        .await
        .map_err(failed)?;
    Ok(body.into_response())
}

/// A response body of what `write` writes, run on a blocking thread. An
/// error before the first chunk is returned; a later one cuts the body
/// short (and is logged, naming `what`).
pub(crate) async fn stream(
    what: String,
    write: impl FnOnce(&mut ChannelWriter) -> Result<()> + Send + 'static,
) -> Result<Body> {
    let (tx, mut rx) = mpsc::channel(4);
    let errors = tx.clone();
    tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx,
            buf: Vec::with_capacity(CAT_CHUNK),
        };
        if let Err(e) = write(&mut out).and_then(|()| Ok(out.flush()?)) {
            tracing::warn!(%what, error = %format!("{e:#}"), "response cut short");
            let _ = errors.blocking_send(Err(e));
        }
    });
    let first = match rx.recv().await {
        None => Bytes::new(),
        Some(Ok(chunk)) => chunk,
        Some(Err(e)) => return Err(e),
    };
    let rest = futures::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item.map_err(|e| io::Error::other(format!("{e:#}"))), rx))
    });
    let body = futures::stream::once(async move { Ok(first) }).chain(rest);
    Ok(Body::from_stream(body))
}

// ---- the client, in the commands ----

/// A running node's API, found through its data directory.
pub struct Remote {
    agent: ureq::Agent,
    api: ApiFile,
}

impl Remote {
    /// The API of the node whose data directory is `data_dir`, if one is
    /// running there (a file left by a node that crashed is ignored).
    pub fn find(data_dir: &Path) -> Result<Option<Remote>> {
        let path = data_dir.join(API_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let api: ApiFile = serde_json::from_slice(&text)
            .with_context(|| format!("{} is not a control API file", path.display()))?;
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .new_agent();
        let remote = Remote { agent, api };
        let probe = remote
            .agent
            .get(remote.url("status"))
            .header("Authorization", remote.bearer())
            .call();
        match probe {
            Err(ureq::Error::Io(e)) if e.kind() == io::ErrorKind::ConnectionRefused => Ok(None),
            probe => {
                let url = remote.api.url.clone();
                remote
                    .call(probe)
                    .with_context(|| format!("the node's API at {url} failed"))?;
                Ok(Some(remote))
            }
        }
    }

    fn url(&self, endpoint: &str) -> String {
        format!("{}/v1/{endpoint}", self.api.url)
    }

    fn bearer(&self) -> String {
        format!("Bearer {}", self.api.token)
    }

    /// The response when it is a success; the node's error otherwise.
    fn call(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<ureq::http::Response<ureq::Body>> {
        let mut resp =
            sent.with_context(|| format!("cannot reach the node at {}", self.api.url))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or(text);
        bail!("{message}")
    }

    pub fn add(&self, req: &AddRequest, mut progress: impl FnMut(&AddEvent)) -> Result<AddResult> {
        let sent = self
            .agent
            .post(self.url("add"))
            .header("Authorization", self.bearer())
            .send_json(req);
        let resp = self.call(sent)?;
        let mut lines = BufReader::new(resp.into_body().into_reader());
        let mut line = String::new();
        loop {
            line.clear();
            if lines.read_line(&mut line)? == 0 {
                bail!("the node stopped answering before the add finished");
            }
            let event: AddEvent = serde_json::from_str(&line)
                .context("the node sent a line that is not an add event")?;
            match event {
                AddEvent::Added(result) => return Ok(result),
                AddEvent::Error { message } => bail!("{message}"),
                other => progress(&other),
            }
        }
    }

    pub fn get(&self, target: &Address, output: &Path) -> Result<()> {
        let sent = self
            .agent
            .post(self.url("get"))
            .header("Authorization", self.bearer())
            .send_json(GetRequest {
                target: target.reveal(),
                output: output.to_path_buf(),
            });
        self.call(sent).map(drop)
    }

    pub fn pin_add(&self, cid: &str) -> Result<PinResult> {
        self.pin_change("pin/add", cid)
    }

    pub fn pin_rm(&self, cid: &str) -> Result<PinResult> {
        self.pin_change("pin/rm", cid)
    }

    fn pin_change(&self, endpoint: &str, cid: &str) -> Result<PinResult> {
        let sent = self
            .agent
            .post(self.url(endpoint))
            .header("Authorization", self.bearer())
            .send_json(PinRequest { cid: cid.into() });
        Ok(self.call(sent)?.body_mut().read_json()?)
    }

    pub fn status(&self) -> Result<NodeStatus> {
        self.get_json("status", None)
    }

    pub fn ls(&self, target: &Address) -> Result<Vec<LsEntry>> {
        self.get_json("ls", Some(("target", &target.reveal())))
    }

    pub fn pin_ls(&self) -> Result<Vec<PinSummary>> {
        self.get_json("pin/ls", None)
    }

    pub fn pin_status(&self, cid: &str) -> Result<PinStatus> {
        self.get_json("pin/status", Some(("cid", cid)))
    }

    /// A GET of `endpoint` (with one query parameter, if any), its JSON answer.
    fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        endpoint: &str,
        query: Option<(&str, &str)>,
    ) -> Result<T> {
        let mut req = self
            .agent
            .get(self.url(endpoint))
            .header("Authorization", self.bearer());
        if let Some((key, value)) = query {
            req = req.query(key, value);
        }
        Ok(self.call(req.call())?.body_mut().read_json()?)
    }

    pub fn cat(
        &self,
        target: &Address,
        offset: u64,
        length: Option<u64>,
        out: &mut impl Write,
    ) -> Result<()> {
        let mut req = self
            .agent
            .get(self.url("cat"))
            .header("Authorization", self.bearer())
            .query("target", target.reveal())
            .query("offset", offset.to_string());
        if let Some(l) = length {
            req = req.query("length", l.to_string());
        }
        let resp = self.call(req.call())?;
        let mut body = resp.into_body().into_reader();
        let mut buf = vec![0; 1 << 20];
        loop {
            let n = body
                .read(&mut buf)
                .context("the node stopped sending the content (its log says why)")?;
            if n == 0 {
                return Ok(());
            }
            out.write_all(&buf[..n])
                .context("cannot write the output")?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_loopback_host_is_answered() {
        for host in [
            "127.0.0.1:4100",
            "localhost:4100",
            "LOCALHOST",
            "[::1]:4100",
            "127.9.9.9",
        ] {
            assert!(loopback_host(host), "{host}");
        }
        for host in [
            "evil.example:4100",
            "10.0.0.1:4100",
            "127.0.0.1.evil.example",
            "[::2]:1",
            "",
        ] {
            assert!(!loopback_host(host), "{host}");
        }
    }
}
