//! The HTTP gateway: content by its IPFS path (`/ipfs/CID/a/b`), as a
//! browser, `curl` or an IPFS HTTP client asks a gateway for it. Read-only,
//! and open to whoever reaches its address. After IPFS's path and trustless
//! gateway specifications (docs/PROTOCOL.md §12):
//!
//! - a file: its bytes, one `Range` honoured (206), its type from its name
//!   or, failing that, its first bytes;
//! - a directory: its `index.html` if it has one, else a listing; its URL
//!   without the trailing `/` is redirected to it;
//! - `?format=raw` (or `Accept: application/vnd.ipld.raw`): one block;
//! - `?format=car` (or `Accept: application/vnd.ipld.car`): a CAR v1 of the
//!   blocks of the path, then of the DAG it ends at (`dag-scope=all`;
//!   `entity`, which stops at a directory's entries; or `block`, its root
//!   block alone), depth-first, each block once.
//!
//! Sealed content is not served: its handle holds its key, and URLs leak.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::{Context as _, Result};
use axum::Router;
use axum::body::{Body, HttpBody as _};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use cairn_protocol::address::Address;
use cairn_protocol::car::CarWriter;
use cairn_protocol::seal::Target;
use cairn_protocol::unixfs::{DirEntry, Kind, ReadError, Scope};
use cid::Cid;
use futures::StreamExt as _;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;
use tokio::sync::Semaphore;

use crate::api::stream;
use crate::client::{self, Content, GetOptions};
use crate::http::{self, Server};
use crate::node::Handle;

/// Content-addressed bytes never change.
const IMMUTABLE: &str = "public, max-age=29030400, immutable";
/// Content kept open (its manifest found), newest last: a client that reads
/// a DAG block by block asks for blocks by their own CIDs, which only the
/// manifest of the content they are in can place.
const OPENED: usize = 16;
/// Blocks indexed across the open content (≈ 100 bytes each).
const INDEXED: usize = 1 << 17;
/// Requests served at once, each until its body is sent; more wait their
/// turn (a client reading a DAG asks for a node's 174 leaves at once).
const RUNNING: usize = 64;
/// Requests served or waiting; more are told to come back (503).
const ADMITTED: usize = 1024;
/// Bytes of segments the requests hold together.
const BUFFERS: u64 = 256 << 20;
/// Bytes a file's type is sniffed from when its name does not tell.
const SNIFF: u64 = 512;
/// What a name escapes in a link: all but RFC 3986's unreserved characters.
const ESCAPED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Requests a gateway serves at once, and admits (served or waiting), and
/// what its connections may hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub running: usize,
    pub admitted: usize,
    /// Bytes of segments all requests together hold, fetched ahead, being
    /// read or kept ([`client::Budget`]). Default 256 MiB.
    pub buffers: u64,
    pub http: http::Limits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            running: RUNNING,
            admitted: ADMITTED,
            buffers: BUFFERS,
            http: http::Limits::default(),
        }
    }
}

/// Serves the gateway of `net` on `listen`.
pub async fn serve(net: Handle, listen: SocketAddr) -> Result<Server> {
    serve_with(net, listen, Limits::default()).await
}

/// [`serve`] with other limits than the defaults.
pub async fn serve_with(net: Handle, listen: SocketAddr, limits: Limits) -> Result<Server> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} for the gateway"))?;
    let url = format!("http://{}", listener.local_addr()?);
    let ctx = Ctx {
        net,
        opened: Arc::default(),
        limits,
        admitted: Arc::new(Semaphore::new(limits.admitted)),
        running: Arc::new(Semaphore::new(limits.running)),
        budget: client::Budget::new(limits.buffers),
    };
    let app = Router::new()
        .route("/ipfs/{*path}", get(ipfs))
        .fallback(get(by_subdomain))
        .layer(axum::middleware::map_response(nosniff))
        .with_state(ctx);
    Ok(Server::spawn(listener, app, url, None, limits.http))
}

#[derive(Clone)]
struct Ctx {
    net: Handle,
    opened: Arc<Mutex<Opened>>,
    limits: Limits,
    admitted: Arc<Semaphore>,
    running: Arc<Semaphore>,
    budget: client::Budget,
}

/// Content lately asked for, and where its blocks are.
#[derive(Default)]
struct Opened {
    /// Least recently used first.
    contents: VecDeque<Arc<Content>>,
    /// Block → the root of the open content that holds it.
    blocks: HashMap<Cid, Cid>,
}

impl Opened {
    /// The content holding `cid`, now the most recently used.
    fn find(&mut self, cid: &Cid) -> Option<Arc<Content>> {
        let root = self.blocks.get(cid).unwrap_or(cid);
        let at = self
            .contents
            .iter()
            .position(|c| c.manifest().root == *root)?;
        let found = self.contents.remove(at)?;
        self.contents.push_back(found.clone());
        Some(found)
    }

    fn keep(&mut self, content: Arc<Content>) {
        let root = content.manifest().root;
        if self.contents.iter().any(|c| c.manifest().root == root) {
            return;
        }
        let blocks = &content.manifest().blocks;
        while let Some(old) = self
            .contents
            .front()
            .filter(|_| self.contents.len() >= OPENED || self.blocks.len() + blocks.len() > INDEXED)
        {
            let old_root = old.manifest().root;
            for b in &old.manifest().blocks {
                if self.blocks.get(&b.0) == Some(&old_root) {
                    self.blocks.remove(&b.0);
                }
            }
            self.contents.pop_front();
        }
        if self.blocks.len() + blocks.len() <= INDEXED {
            self.blocks.extend(blocks.iter().map(|b| (b.0, root)));
        }
        self.contents.push_back(content);
    }
}

impl Ctx {
    /// The open content that holds `cid`, or the content `cid` is the root of.
    async fn content(&self, cid: Cid) -> Result<Arc<Content>, Failure> {
        if let Some(found) = client::lock(&self.opened).find(&cid) {
            return Ok(found);
        }
        let options = GetOptions {
            budget: Some(self.budget.clone()),
            ..GetOptions::default()
        };
        let content = Content::open(&self.net, cid, options)
            .await
            .map_err(Failure::from)?;
        let content = Arc::new(content);
        client::lock(&self.opened).keep(content.clone());
        Ok(content)
    }
}

#[derive(Debug, Default, Deserialize)]
struct GatewayQuery {
    format: Option<String>,
    #[serde(rename = "dag-scope")]
    dag_scope: Option<String>,
    /// The name a file is saved as.
    filename: Option<String>,
    /// Save the file, not show it.
    #[serde(default)]
    download: bool,
}

/// An error answered as plain text.
struct Failure(StatusCode, String);

impl From<anyhow::Error> for Failure {
    /// 404 for what the network or the DAG lacks, 502 for the rest: the
    /// gateway stands in front of the network.
    fn from(e: anyhow::Error) -> Self {
        let missing = e.downcast_ref::<client::Unknown>().is_some()
            || matches!(
                e.downcast_ref::<ReadError>(),
                Some(ReadError::NotFound { .. } | ReadError::NotADirectory { .. })
            );
        let status = match missing {
            true => StatusCode::NOT_FOUND,
            false => StatusCode::BAD_GATEWAY,
        };
        Failure(status, format!("{e:#}"))
    }
}

fn bad(e: impl std::fmt::Display) -> Failure {
    Failure(StatusCode::BAD_REQUEST, e.to_string())
}

fn error(status: StatusCode, message: String) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message + "\n",
    )
        .into_response()
}

/// What the client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    /// The file's bytes, or a directory's page.
    Plain,
    Raw,
    Car,
}

const RAW: &str = "application/vnd.ipld.raw";
const CAR: &str = "application/vnd.ipld.car";

impl Format {
    /// From `?format=`, which wins, or the `Accept` header.
    fn of(format: Option<&str>, headers: &HeaderMap) -> Result<Format, Failure> {
        match format {
            Some("raw") => return Ok(Format::Raw),
            Some("car") => return Ok(Format::Car),
            Some(other) => {
                return Err(bad(format!(
                    "format={other} is not served: raw, car, or none for the content itself"
                )));
            }
            None => {}
        }
        let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
        let accepts =
            |t: &str| accept.is_some_and(|a| a.split(',').any(|p| p.trim().starts_with(t)));
        Ok(match (accepts(RAW), accepts(CAR)) {
            (true, _) => Format::Raw,
            (false, true) => Format::Car,
            (false, false) => Format::Plain,
        })
    }
}

async fn ipfs(
    State(ctx): State<Ctx>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    Query(query): Query<GatewayQuery>,
) -> Response {
    let Ok(admitted) = ctx.admitted.clone().try_acquire_owned() else {
        let busy = format!(
            "busy with {} requests: try again shortly",
            ctx.limits.admitted
        );
        let mut response = error(StatusCode::SERVICE_UNAVAILABLE, busy);
        let h = response.headers_mut();
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        return response;
    };
    let Ok(running) = ctx.running.clone().acquire_owned().await else {
        return error(StatusCode::SERVICE_UNAVAILABLE, "shutting down".into());
    };
    let response = match respond(&ctx, &method, &headers, &uri, &query).await {
        Ok(response) => response,
        Err(Failure(status, message)) => error(status, message),
    };
    // The request counts until its body is sent, or the client leaves.
    let (mut parts, body) = response.into_parts();
    if let Some(len) = body.size_hint().exact()
        && parts.status != StatusCode::NOT_MODIFIED
    {
        parts
            .headers
            .entry(header::CONTENT_LENGTH)
            .or_insert(len.into());
    }
    let body = body.into_data_stream().map(move |chunk| {
        let _held = (&admitted, &running);
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// A request to `CID.ipfs.HOST`: the content at the URL's path, on an
/// origin of its own (as kubo's subdomain gateway serves it).
async fn by_subdomain(
    ctx: State<Ctx>,
    method: Method,
    headers: HeaderMap,
    uri: Uri,
    query: Query<GatewayQuery>,
) -> Response {
    let Some(cid) = subdomain(&headers) else {
        return error(
            StatusCode::NOT_FOUND,
            "this gateway serves /ipfs/CID[/PATH], or CID.ipfs.HOST/PATH".into(),
        );
    };
    let path = match uri.query() {
        Some(q) => format!("/ipfs/{cid}{}?{q}", uri.path()),
        None => format!("/ipfs/{cid}{}", uri.path()),
    };
    match path.parse() {
        Ok(uri) => ipfs(ctx, method, headers, uri, query).await,
        Err(e) => error(StatusCode::BAD_REQUEST, e.to_string()),
    }
}

/// The CID of a Host `CID.ipfs.…`: a CIDv1, whose base32 text is a DNS
/// label (a `Qm…` CIDv0 is not: its case matters).
fn subdomain(headers: &HeaderMap) -> Option<Cid> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let mut labels = host.split('.');
    let (cid, ipfs) = (labels.next()?, labels.next()?);
    if ipfs != "ipfs" || labels.next().is_none() {
        return None;
    }
    cid.parse::<Cid>()
        .ok()
        .filter(|c| c.version() == cid::Version::V1)
}

/// Every answer's type is the one it states: no browser guesses another.
async fn nosniff(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// Content served under the path gateway shares one web origin with every
/// other CID: a page is sandboxed into an origin of its own (scripts run,
/// but reach no other content's storage or cookies). The subdomain
/// gateway gives each root its own origin instead.
const PATH_SANDBOX: &str = "sandbox allow-scripts allow-forms allow-popups allow-modals \
                            allow-downloads allow-popups-to-escape-sandbox";

async fn respond(
    ctx: &Ctx,
    method: &Method,
    headers: &HeaderMap,
    uri: &Uri,
    query: &GatewayQuery,
) -> Result<Response, Failure> {
    let url_path = uri.path();
    let rest = url_path.strip_prefix("/ipfs/").unwrap_or_default();
    // Names in the URL are percent-encoded, as in an `ipfs://` link.
    let address: Address = format!("ipfs://{rest}").parse().map_err(bad)?;
    let Target::Plain(cid) = address.target else {
        return Err(bad(
            "sealed content is not served by the gateway: its handle holds its key",
        ));
    };
    let format = Format::of(query.format.as_deref(), headers)?;
    let content = ctx.content(cid).await?;
    let content = Arc::new(content.at(cid, address.path.clone()));
    let asked = Asked {
        method,
        headers,
        uri,
        query,
        cid,
        address,
    };
    let mut response = match format {
        Format::Raw => raw(content, &asked).await?,
        Format::Car => car(content, &asked).await?,
        Format::Plain => plain(content, &asked).await?,
    };
    let status = response.status();
    let h = response.headers_mut();
    h.insert("x-ipfs-path", value(url_path));
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    if status.is_success() || status == StatusCode::NOT_MODIFIED {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE));
    }
    if subdomain(headers).is_none() {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PATH_SANDBOX),
        );
    }
    Ok(response)
}

/// A request for content, parsed.
struct Asked<'a> {
    method: &'a Method,
    headers: &'a HeaderMap,
    uri: &'a Uri,
    query: &'a GatewayQuery,
    /// The CID in the URL: a root, or a block of open content.
    cid: Cid,
    address: Address,
}

/// A header value of text that came from a valid request or a CID.
fn value(text: &str) -> HeaderValue {
    HeaderValue::from_str(text).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

/// Runs blocking content work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T, Failure> {
    match tokio::task::spawn_blocking(work).await {
        Ok(done) => done.map_err(Failure::from),
        Err(e) => Err(Failure(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

async fn raw(content: Arc<Content>, asked: &Asked<'_>) -> Result<Response, Failure> {
    let cid = asked.cid;
    if !asked.address.path.is_empty() {
        return Err(bad(
            "a block is asked for by its CID alone: /ipfs/CID?format=raw",
        ));
    }
    let block = blocking(move || content.block(&cid)).await?;
    let etag = format!("\"{cid}.raw\"");
    Ok(verifiable(RAW, &etag, &format!("{cid}.bin"), block))
}

/// What a client checks for itself (a block, a CAR): saved, not shown.
fn verifiable(kind: &str, etag: &str, file: &str, body: impl IntoResponse) -> Response {
    let disposition = format!("attachment; filename=\"{file}\"");
    let headers = [
        (header::CONTENT_TYPE, value(kind)),
        (header::ETAG, value(etag)),
        (header::CONTENT_DISPOSITION, value(&disposition)),
        (header::X_CONTENT_TYPE_OPTIONS, value("nosniff")),
    ];
    (headers, body).into_response()
}

async fn car(content: Arc<Content>, asked: &Asked<'_>) -> Result<Response, Failure> {
    let scope = match asked.query.dag_scope.as_deref() {
        None | Some("all") => Scope::All,
        Some("entity") => Scope::Entity,
        Some("block") => Scope::Block,
        Some(other) => {
            return Err(bad(format!(
                "dag-scope={other} is not served: all (the default), entity or block"
            )));
        }
    };
    let (root, address) = (asked.cid, &asked.address);
    let body = stream(address.to_string(), move |out| {
        let mut car = CarWriter::new(out, &[root])?;
        content.export(scope, &mut car)?;
        car.finish()?;
        Ok(())
    })
    .await?;
    let scope = match scope {
        Scope::All => "all",
        Scope::Entity => "entity",
        Scope::Block => "block",
    };
    let kind = format!("{CAR}; version=1; order=dfs; dups=n");
    let etag = format!("\"{address}.{scope}.car\"");
    Ok(verifiable(&kind, &etag, &format!("{root}.car"), body))
}

async fn plain(content: Arc<Content>, asked: &Asked<'_>) -> Result<Response, Failure> {
    let c = content.clone();
    let (cid, kind) = blocking(move || c.stat()).await?;
    let etag = format!("\"{cid}\"");
    if asked
        .headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes())
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, value(&etag))]).into_response());
    }
    let size = match kind {
        Kind::File { size } => size,
        Kind::Directory => return directory(content, asked).await,
    };
    let name = asked.address.path.last().cloned();
    file(content, asked, &etag, size, name).await
}

async fn directory(content: Arc<Content>, asked: &Asked<'_>) -> Result<Response, Failure> {
    let uri = asked.uri;
    // Relative links in the page resolve under the directory's own URL.
    if !uri.path().ends_with('/') {
        let mut to = format!("{}/", uri.path());
        if let Some(q) = uri.query() {
            let _ = write!(to, "?{q}");
        }
        return Ok((
            StatusCode::MOVED_PERMANENTLY,
            [(header::LOCATION, value(&to))],
        )
            .into_response());
    }
    // Looked up by name: a sharded directory is not listed for it.
    let mut path = asked.address.path.clone();
    path.push("index.html".into());
    let index = Arc::new(content.at(asked.cid, path));
    let i = index.clone();
    let found = blocking(move || match i.stat() {
        Err(e) if matches!(e.downcast_ref(), Some(ReadError::NotFound { .. })) => Ok(None),
        other => other.map(Some),
    })
    .await?;
    if let Some((cid, Kind::File { size })) = found {
        let etag = format!("\"{cid}\"");
        let name = Some("index.html".to_owned());
        return file(index, asked, &etag, size, name).await;
    }
    let c = content.clone();
    let entries = blocking(move || c.list()).await?;
    let title = html_escape::encode_text(uri.path()).into_owned();
    // Written for HEAD too, which drops it: an empty body would claim a
    // length of 0.
    let body = stream(title.clone(), move |out| listing(&title, &entries, out)).await?;
    Ok((
        [(header::CONTENT_TYPE, value("text/html; charset=utf-8"))],
        body,
    )
        .into_response())
}

/// A directory's page: each entry a link, with its size and CID.
fn listing(title: &str, entries: &[DirEntry], out: &mut impl std::io::Write) -> Result<()> {
    write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\n\
         <body><h1>Index of {title}</h1>\n<table>\n<tr><th>Name</th><th>Size</th><th>CID</th></tr>\n"
    )?;
    for e in entries {
        let href = utf8_percent_encode(&e.name, ESCAPED);
        let name = html_escape::encode_text(&e.name);
        writeln!(
            out,
            "<tr><td><a href=\"{href}\">{name}</a></td><td>{}</td><td>{}</td></tr>",
            e.dag_size, e.cid
        )?;
    }
    writeln!(out, "</table></body></html>")?;
    Ok(())
}

/// The file `content` names, `size` bytes long (as its root claims),
/// named `name` if its path ends in one.
async fn file(
    content: Arc<Content>,
    asked: &Asked<'_>,
    etag: &str,
    size: u64,
    name: Option<String>,
) -> Result<Response, Failure> {
    let name = asked.query.filename.clone().or(name);
    let range = asked
        .headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        // A Range header that does not parse is ignored (RFC 9110 §14.2).
        .and_then(|v| http_range_header::parse_range_header(v).ok())
        .map(|r| r.validate(size));
    let range = match range {
        Some(Err(_)) => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, value(&format!("bytes */{size}")))],
            )
                .into_response());
        }
        // One range is served; several, as none (the whole file).
        Some(Ok(r)) if r.len() == 1 => Some(r[0].clone()),
        _ => None,
    };
    let content_type = match name
        .as_deref()
        .and_then(|n| mime_guess::from_path(n).first_raw())
    {
        Some(t) => t.to_owned(),
        None => {
            let c = content.clone();
            let head = blocking(move || {
                let mut head = Vec::new();
                c.read(0, Some(SNIFF), &mut head)?;
                Ok(head)
            })
            .await?;
            sniff(&head)
        }
    };
    let (offset, len) = match &range {
        Some(r) => (*r.start(), r.end() - r.start() + 1),
        None => (0, size),
    };
    let mut response = match *asked.method == Method::HEAD || len == 0 {
        true => Body::empty().into_response(),
        false => {
            let what = etag.to_owned();
            stream(what, move |out| content.read(offset, Some(len), out))
                .await?
                .into_response()
        }
    };
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, value(&content_type));
    h.insert(header::CONTENT_LENGTH, len.into());
    h.insert(header::ACCEPT_RANGES, value("bytes"));
    h.insert(header::ETAG, value(etag));
    let disposition = match (asked.query.download, name) {
        (true, Some(n)) => Some(format!("attachment; filename=\"{}\"", n.replace('"', ""))),
        (true, None) => Some("attachment".to_owned()),
        (false, _) => None,
    };
    if let Some(d) = disposition {
        h.insert(header::CONTENT_DISPOSITION, value(&d));
    }
    if let Some(r) = range {
        let (start, end) = r.into_inner();
        h.insert(
            header::CONTENT_RANGE,
            value(&format!("bytes {start}-{end}/{size}")),
        );
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

/// A file's type from its first bytes: a known signature, else text if
/// they are UTF-8 (cut anywhere), else bytes.
fn sniff(head: &[u8]) -> String {
    if let Some(t) = infer::get(head) {
        return t.mime_type().to_owned();
    }
    let text = match std::str::from_utf8(head) {
        Ok(_) => true,
        // Cut in the middle of a character by the sniff's length.
        Err(e) => e.error_len().is_none(),
    };
    match text && !head.contains(&0) {
        true => "text/plain; charset=utf-8".to_owned(),
        false => "application/octet-stream".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_are_sniffed_from_signatures_then_text() {
        let png = [0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A, 0, 0, 0, 13];
        assert_eq!(sniff(&png), "image/png");
        assert_eq!(
            sniff(b"{\"name\": \"token 1\"}"),
            "text/plain; charset=utf-8"
        );
        // "é" cut after its first byte is still text.
        assert_eq!(sniff(&"abcé".as_bytes()[..4]), "text/plain; charset=utf-8");
        assert_eq!(sniff(&[0xff, 0xfe, 0, 1]), "application/octet-stream");
        assert_eq!(sniff(b""), "text/plain; charset=utf-8");
    }

    #[test]
    fn the_format_comes_from_the_query_then_accept() {
        let mut h = HeaderMap::new();
        assert_eq!(Format::of(None, &h).ok(), Some(Format::Plain));
        h.insert(
            header::ACCEPT,
            value("text/html, application/vnd.ipld.car;version=1"),
        );
        assert_eq!(Format::of(None, &h).ok(), Some(Format::Car));
        assert_eq!(Format::of(Some("raw"), &h).ok(), Some(Format::Raw));
        assert!(Format::of(Some("tar"), &h).is_err());
    }
}
