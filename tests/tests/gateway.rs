//! The HTTP gateway of `cairn devnet`'s first node, as a browser, `curl`
//! and IPFS clients use one: files by their paths with ranges and types,
//! directories as pages, blocks and CARs that a client checks itself, and
//! Helia reading a sharded collection through it block by block.

use std::path::Path;

use anyhow::{Context as _, Result, ensure};
use cairn_protocol::block;
use cairn_protocol::car::CarReader;
use cairn_tests::nft;
use cairn_tests::procs::Devnet;
use cairn_tests::reference;
use cid::Cid;
use sha2::{Digest as _, Sha256};

/// Tokens in `meta/`: enough that IPFS shards the directory.
const TOKENS: usize = 6_000;

struct Reply {
    status: u16,
    headers: ureq::http::HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

struct Client {
    agent: ureq::Agent,
    gateway: String,
}

impl Client {
    /// `METHOD gateway/ipfs/PATH` with `headers`; redirects are not followed.
    fn send(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Result<Reply> {
        let url = format!("{}{path}", self.gateway);
        let mut req = ureq::http::Request::builder().method(method).uri(&url);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        let mut resp = self.agent.run(req.body(())?)?;
        let body = match method {
            "HEAD" => Vec::new(),
            _ => resp
                .body_mut()
                .with_config()
                .limit(64 << 20)
                .read_to_vec()?,
        };
        Ok(Reply {
            status: resp.status().as_u16(),
            headers: resp.headers().clone(),
            body,
        })
    }

    fn get(&self, path: &str) -> Result<Reply> {
        self.send("GET", path, &[])
    }
}

fn sha256_hex(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn the_gateway_serves_a_collection_to_browsers_and_ipfs_clients() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let coll = dir.path().join("coll");
    let cover: Vec<u8> = {
        // A PNG signature, then 20 MB: 77 leaves, which Helia asks for at
        // once, more than the gateway serves at a time.
        let mut c = b"\x89PNG\r\n\x1a\n".to_vec();
        c.extend((0..20_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        c
    };
    nft::collection(&coll, TOKENS, &cover)?;
    std::fs::create_dir(coll.join("site"))?;
    let page = b"<!DOCTYPE html><title>drop</title>";
    std::fs::write(coll.join("site/index.html"), page)?;
    // A file without a name's extension: its type comes from its bytes.
    std::fs::copy(coll.join("cover.png"), coll.join("site/art"))?;

    let net = Devnet::start(9, "2GiB")?;
    let root = net.cairn(&["add", "-r", "--quiet", path(&coll)?])?;
    ensure!(
        root == reference::hash_dir(&coll)?,
        "the CID is the reference's"
    );
    let client = Client {
        agent: ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .build()
            .new_agent(),
        gateway: net.gateway.clone(),
    };

    // A file by its path, typed by its name, tagged with its CID.
    let r = client.get(&format!("{root}/cover.png"))?;
    ensure!(r.status == 200 && r.body == cover, "cover: {}", r.status);
    ensure!(r.header("content-type") == "image/png");
    let ls = net.cairn(&["ls", &root, "--json"])?;
    let ls: Vec<serde_json::Value> = serde_json::from_str(&ls)?;
    let cover_cid = ls
        .iter()
        .find(|e| e["name"] == "cover.png")
        .and_then(|e| e["cid"].as_str())
        .context("ls names the cover")?;
    ensure!(r.header("etag") == format!("\"{cover_cid}\""));
    ensure!(r.header("cache-control").contains("immutable"));
    ensure!(r.header("access-control-allow-origin") == "*");
    let token = format!("{root}/meta/{}", nft::token(4321));
    let r = client.get(&token)?;
    ensure!(r.status == 200 && r.text() == nft::token_json(4321));
    ensure!(r.header("content-type") == "application/json");
    let r = client.get(&format!("{root}/site/art"))?;
    ensure!(r.header("content-type") == "image/png", "sniffed");

    // Ranges, as a video player seeks.
    let size = cover.len();
    let r = client.send(
        "GET",
        &format!("{root}/cover.png"),
        &[("Range", "bytes=1000000-1999999")],
    )?;
    ensure!(r.status == 206 && r.body == cover[1_000_000..2_000_000]);
    ensure!(r.header("content-range") == format!("bytes 1000000-1999999/{size}"));
    let r = client.send(
        "GET",
        &format!("{root}/cover.png"),
        &[("Range", "bytes=-100")],
    )?;
    ensure!(r.status == 206 && r.body == cover[size - 100..], "suffix");
    let r = client.send(
        "GET",
        &format!("{root}/cover.png"),
        &[("Range", &format!("bytes={size}-"))],
    )?;
    ensure!(r.status == 416 && r.header("content-range") == format!("bytes */{size}"));
    let r = client.send("HEAD", &format!("{root}/cover.png"), &[])?;
    ensure!(r.status == 200 && r.header("content-length") == size.to_string());
    let etag = format!("\"{cover_cid}\"");
    let r = client.send(
        "GET",
        &format!("{root}/cover.png"),
        &[("If-None-Match", &etag)],
    )?;
    ensure!(r.status == 304 && r.body.is_empty(), "{}", r.status);

    // Directories: redirected to their `/`, then their index.html or a page.
    let r = client.get(&format!("{root}/site"))?;
    ensure!(
        r.status == 301
            && r.header("location")
                .ends_with(&format!("/ipfs/{root}/site/"))
    );
    let r = client.get(&format!("{root}/site/"))?;
    ensure!(r.status == 200 && r.body == page && r.header("content-type").starts_with("text/html"));
    let r = client.get(&format!("{root}/"))?;
    let listing = r.text();
    ensure!(r.status == 200 && r.header("content-type").starts_with("text/html"));
    for name in ["cover.png", "meta", "site"] {
        ensure!(listing.contains(&format!("href=\"{name}\"")), "{listing}");
    }

    // A block, checked against its CID by the client.
    let r = client.get(&format!("{root}?format=raw"))?;
    ensure!(r.status == 200 && r.header("content-type") == "application/vnd.ipld.raw");
    let cid: Cid = root.parse()?;
    block::verify(&cid, &r.body)?;
    let r = client.send("GET", &root, &[("Accept", "application/vnd.ipld.raw")])?;
    block::verify(&cid, &r.body)?;

    // A CAR of a token: the blocks of its path through the shards, then
    // the token, which the reference exporter reads at that path.
    let r = client.get(&format!("{token}?format=car"))?;
    ensure!(
        r.status == 200
            && r.header("content-type")
                .starts_with("application/vnd.ipld.car")
    );
    let car = dir.path().join("token.car");
    std::fs::write(&car, &r.body)?;
    let read = reference::read_car_at(&car, &format!("meta/{}", nft::token(4321)))?;
    ensure!(read.sha256 == sha256_hex(nft::token_json(4321).as_bytes()));
    // The root, meta's two levels of shards on the token's way, the token.
    ensure!(count_blocks(&r.body)? == 4 && read.blocks == 4);
    let r = client.get(&format!("{root}/cover.png?format=car&dag-scope=block"))?;
    ensure!(
        count_blocks(&r.body)? == 2,
        "the root and the cover's root block"
    );
    let r = client.get(&format!("{root}/cover.png?format=car"))?;
    std::fs::write(&car, &r.body)?;
    let read = reference::read_car_at(&car, "cover.png")?;
    ensure!(read.sha256 == sha256_hex(&cover), "the whole cover");
    let all = count_blocks(&r.body)?;
    let r = client.get(&format!("{root}/cover.png?format=car&dag-scope=entity"))?;
    ensure!(
        count_blocks(&r.body)? == all,
        "a file as an entity is all of it"
    );
    // A directory as an entity is its node; a sharded one, its shards,
    // without what is under them (the tokens, and `extra/` with its note).
    let r = client.get(&format!("{root}?format=car&dag-scope=entity"))?;
    ensure!(count_blocks(&r.body)? == 1);
    let r = client.get(&format!("{root}/meta?format=car&dag-scope=entity"))?;
    let shards = count_blocks(&r.body)? - 1;
    let r = client.get(&format!("{root}/meta?format=car"))?;
    ensure!(
        shards > 1 && count_blocks(&r.body)? == 1 + shards + TOKENS + 2,
        "{shards} shards"
    );

    // What is wrong says so.
    for (path, status, says) in [
        ("not-a-cid".to_owned(), 400, "invalid CID"),
        (
            format!("{root}/meta/nope.json"),
            404,
            "no entry \"nope.json\"",
        ),
        (format!("{root}/cover.png/x"), 404, "is a file"),
        (
            format!("{}", block::sha256_cid(block::RAW, b"never added")),
            404,
            "unknown",
        ),
        (format!("{root}?format=tar"), 400, "format=tar"),
        (format!("{root}/meta?format=raw"), 400, "CID alone"),
    ] {
        let r = client.get(&path)?;
        ensure!(
            r.status == status && r.text().contains(says),
            "{path}: {} {}",
            r.status,
            r.text()
        );
    }

    // Helia, the IPFS JavaScript node, reads through the gateway block by
    // block, each checked against its CID: the cover's 77 leaves, and a
    // token through the collection's shards.
    let gateway = net.gateway.trim_end_matches("/ipfs/");
    for (address, want) in [
        (format!("{root}/cover.png"), cover.clone()),
        (token.clone(), nft::token_json(4321).into_bytes()),
    ] {
        let got = reference::script("helia.mjs", &[gateway, &address])?;
        ensure!(
            got["sha256"] == sha256_hex(&want) && got["bytes"] == want.len(),
            "{address}: {got}"
        );
    }
    Ok(())
}

fn count_blocks(car: &[u8]) -> Result<usize> {
    let mut reader = CarReader::new(car)?;
    let mut n = 0;
    while reader.next_block()?.is_some() {
        n += 1;
    }
    Ok(n)
}

fn path(p: &Path) -> Result<&str> {
    p.to_str().context("path is not UTF-8")
}
