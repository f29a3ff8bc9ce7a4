//! The README's main command: `cairn devnet` starts a network that a second
//! terminal adds to and gets from with the commands it prints, that runs on
//! when nodes are killed (the README invites it), and that Ctrl-C (here
//! SIGTERM) stops cleanly.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use cairn_tests::procs::{bin, child_pid, signal};

#[test]
fn devnet_serves_the_commands_it_prints_and_stops_cleanly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("net");
    let cairn = bin("cairn")?;
    let stderr = dir.path().join("devnet.err");
    let mut devnet = Command::new(&cairn)
        .args(["devnet", "--nodes", "9", "--dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr)?)
        .spawn()?;
    let stdout = devnet.stdout.take().context("stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut bootstrap = None;
    loop {
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = devnet.kill();
                bail!("devnet did not finish starting");
            }
        };
        if let Some(addr) = line.trim().strip_prefix("export CAIRN_BOOTSTRAP=") {
            bootstrap = Some(addr.to_owned());
        }
        if line.starts_with("Ctrl-C stops") {
            break;
        }
    }
    let bootstrap = bootstrap.context("devnet printed no bootstrap address")?;

    let file = dir.path().join("hello.txt");
    let content = b"hello from a fresh devnet\n".repeat(50_000);
    std::fs::write(&file, &content)?;
    let add = Command::new(&cairn)
        .arg("add")
        .arg(&file)
        .env("CAIRN_BOOTSTRAP", &bootstrap)
        .output()?;
    ensure!(
        add.status.success(),
        "{}",
        String::from_utf8_lossy(&add.stderr)
    );
    let cid = String::from_utf8(add.stdout)?.trim().to_owned();
    let cat = || -> Result<()> {
        let cat = Command::new(&cairn)
            .args(["cat", &cid])
            .env("CAIRN_BOOTSTRAP", &bootstrap)
            .output()?;
        ensure!(
            cat.status.success() && cat.stdout == content,
            "cat returns the file: {}",
            String::from_utf8_lossy(&cat.stderr)
        );
        Ok(())
    };
    cat()?;

    // Kill m = 3 of the 9 nodes: the rest run on and still serve the file.
    let killed = [1, 2, 3];
    for i in killed {
        signal(&child_pid(devnet.id(), &format!("node-{i:02}"))?, "KILL")?;
    }
    cat().context("3 nodes killed")?;
    ensure!(devnet.try_wait()?.is_none(), "devnet runs on");

    let status = Command::new("kill")
        .args(["-TERM", &devnet.id().to_string()])
        .status()?;
    ensure!(status.success());
    ensure!(devnet.wait()?.success(), "devnet exits cleanly");
    let err = std::fs::read_to_string(&stderr)?;
    for i in killed {
        ensure!(
            err.contains(&format!("node-{i:02} exited (signal: 9")),
            "devnet reports node {i}: {err}"
        );
    }
    for i in 4..=9 {
        let log = std::fs::read_to_string(data.join(format!("node-{i:02}.log")))?;
        ensure!(log.contains("node stopped"), "node {i} stopped cleanly");
        ensure!(
            !log.contains('\u{1b}'),
            "node {i} logs to a file without colour codes"
        );
    }
    Ok(())
}
