//! Guards issue #3 across a real network link: AutoNAT keeps a node that
//! others cannot reach a DHT client and sends it to the bootstrap's relay,
//! while a reachable node becomes a DHT server, and peers reach the
//! unreachable one through that relay.
//!
//! Two network namespaces made for the test, joined by a veth pair:
//! `pub` (11.77.0.1, a globally routable-looking address, as AutoNAT only
//! vouches for those) holds `cairn-bootstrap` and node B, both listening on
//! it; `nat` (11.77.0.2) holds node A, which listens on its own loopback
//! only: it can dial out, nobody can dial in, as behind a NAT or a firewall.
//! Needs root (to create namespaces), as CI and this machine's sessions run.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use cairn_protocol::block;
use cairn_protocol::wire::{FetchRequest, FetchResponse};
use cairn_tests::procs::{Proc, bin};

/// Long enough for AutoNAT (libp2p's defaults) to settle even when its
/// first probe, 15 s after start, finds no server yet (the connection to
/// the bootstrap still being set up on a loaded machine): the retry comes
/// 90 s later and may take 30 s. A run of this test once timed out at 90 s
/// under CI load.
const LIMIT: Duration = Duration::from_secs(15 + 90 + 30 + 15);

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("cannot run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Two namespaces and a veth pair between them, deleted on drop.
struct Link {
    public: String,
    nat: String,
}

impl Link {
    fn new() -> Result<Link> {
        let id = std::process::id();
        let link = Link {
            public: format!("cairn-pub-{id}"),
            nat: format!("cairn-nat-{id}"),
        };
        let (a, b) = (format!("cp{id}"), format!("cn{id}"));
        ip(&["netns", "add", &link.public])?;
        ip(&["netns", "add", &link.nat])?;
        ip(&["link", "add", &a, "type", "veth", "peer", "name", &b])?;
        for (dev, ns, addr) in [
            (&a, &link.public, "11.77.0.1/24"),
            (&b, &link.nat, "11.77.0.2/24"),
        ] {
            ip(&["link", "set", dev, "netns", ns])?;
            ip(&["-n", ns, "addr", "add", addr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(link)
    }

    /// Starts `bin args…` inside namespace `ns`, logging at debug level.
    fn spawn(&self, ns: &str, bin: &Path, args: &[&str], log: &Path) -> Result<Proc> {
        let bin = bin.to_str().context("utf-8 path")?;
        let mut all = vec![
            "netns",
            "exec",
            ns,
            "env",
            "RUST_LOG=info,cairn_bootstrap=debug",
            bin,
        ];
        all.extend(args);
        Proc::spawn(Path::new("ip"), &all, log.to_path_buf())
    }
}

/// Runs `f` on a thread of its own that has entered namespace `ns`, so the
/// sockets it opens are that namespace's.
fn in_namespace<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let file = std::fs::File::open(Path::new("/var/run/netns").join(ns))
        .with_context(|| format!("no namespace {ns}"))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)?;
        f()
    })
    .join()
    .map_err(|_| anyhow!("the thread in {ns} panicked"))?
}

impl Drop for Link {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth end in it, and so the pair.
        let _ = ip(&["netns", "del", &self.public]);
        let _ = ip(&["netns", "del", &self.nat]);
    }
}

#[test]
fn an_unreachable_node_stays_a_dht_client_and_reserves_a_relay_slot() -> Result<()> {
    let link = Link::new()?;
    let dir = tempfile::tempdir()?;
    let data = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let start_boot = |log: &str| {
        link.spawn(
            &link.public,
            &bin("cairn-bootstrap")?,
            &[
                "--data-dir",
                &data("boot"),
                "--listen",
                "/ip4/11.77.0.1/tcp/4101",
            ],
            &dir.path().join(log),
        )
    };
    let mut boot = start_boot("boot.log")?;
    let boot_addr = boot.addrs[0].clone();
    ensure!(boot_addr.starts_with("/ip4/11.77.0.1/"), "{boot_addr}");
    let node = |ns: &str, name: &str, listen: &str| {
        link.spawn(
            ns,
            &bin("cairn")?,
            &[
                "node",
                "--data-dir",
                &data(name),
                "--listen",
                listen,
                "--bootstrap",
                &boot_addr,
                "--capacity",
                "1GiB",
            ],
            &dir.path().join(format!("{name}.log")),
        )
    };
    let b = node(&link.public, "b", "/ip4/11.77.0.1/tcp/4102")?;
    let a = node(&link.nat, "a", "/ip4/127.0.0.1/tcp/4103")?;

    // B: the bootstrap dials it back, so it serves the DHT and the
    // bootstrap puts it in its routing table.
    b.wait_log(LIMIT, |l| {
        l.contains("reachable from outside (AutoNAT)") && !l.contains("not reachable")
    })?;
    b.wait_log(LIMIT, |l| l.contains("DHT mode") && l.contains("server"))?;
    boot.wait_log(LIMIT, |l| {
        l.contains("added to the routing table") && l.contains(&b.peer_id)
    })?;

    // A: nobody can dial it back, so it stays a client and takes a slot on
    // the bootstrap's relay, which the bootstrap grants.
    a.wait_log(LIMIT, |l| {
        l.contains("not reachable from outside (AutoNAT)")
    })?;
    a.wait_log(LIMIT, |l| l.contains("relay reservation accepted"))?;
    boot.wait_log(LIMIT, |l| {
        l.contains("relay slot reserved") && l.contains(&a.peer_id)
    })?;
    let a_log = a.logs();
    ensure!(
        !a_log
            .lines()
            .any(|l| l.contains("DHT mode") && l.contains("server")),
        "A never serves the DHT:\n{a_log}"
    );
    let boot_log = boot.logs();
    ensure!(
        !boot_log
            .lines()
            .any(|l| l.contains("added to the routing table") && l.contains(&a.peer_id)),
        "A is in no routing table:\n{boot_log}"
    );

    // A client in the public namespace, which cannot dial A directly,
    // stores a piece on A and reads it back through the bootstrap's relay.
    let a_id = common::peer(&a.peer_id)?;
    let circuit = common::addr(&format!("{boot_addr}/p2p-circuit/p2p/{a_id}"))?;
    let client_dir = dir.path().join("client");
    let bootstrap = boot_addr.clone();
    in_namespace(&link.public, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = common::client(&client_dir, &[&bootstrap]).await?;
            // Connected to the relay first: the relay client dials a relay
            // itself only if no dial to it is under way.
            client.handle.dial(common::addr(&bootstrap)?).await?;
            tokio::time::timeout(LIMIT, client.handle.dial(circuit))
                .await
                .context("no connection to A through the relay")??;
            let data = common::random_piece(3, 16 << 10);
            common::put(&client, a_id, &data).await?;
            let piece = block::piece_cid(&data);
            match client
                .handle
                .fetch(a_id, FetchRequest::PieceV1 { piece })
                .await?
            {
                FetchResponse::PieceV1 { data: got } => ensure!(got.as_ref() == data),
                other => bail!("A answered {other:?}"),
            }
            client.stop().await;
            Ok(())
        })
    })?;
    boot.wait_log(LIMIT, |l| {
        l.contains("relay circuit opened") && l.contains(&a.peer_id)
    })?;

    // The bootstrap restarts, with the same identity and address: A's slot
    // went with the connection, and A asks for one again.
    a.forget_logs();
    boot.stop()?;
    let boot = start_boot("boot-again.log")?;
    a.wait_log(LIMIT, |l| l.contains("relay slot lost"))?;
    a.wait_log(LIMIT, |l| l.contains("relay reservation accepted"))?;
    boot.wait_log(LIMIT, |l| {
        l.contains("relay slot reserved") && l.contains(&a.peer_id)
    })?;
    Ok(())
}
