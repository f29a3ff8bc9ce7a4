//! The README's main command: `cairn devnet` starts a network that a second
//! terminal adds to and gets from with the commands it prints, and Ctrl-C
//! (here SIGTERM) stops every node cleanly.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail, ensure};
use cairn_tests::procs::bin;

#[test]
fn devnet_serves_the_commands_it_prints_and_stops_cleanly() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("net");
    let cairn = bin("cairn")?;
    let mut devnet = Command::new(&cairn)
        .args(["devnet", "--nodes", "9", "--dir"])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
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
    let cat = Command::new(&cairn)
        .args(["cat", &cid])
        .env("CAIRN_BOOTSTRAP", &bootstrap)
        .output()?;
    ensure!(
        cat.status.success() && cat.stdout == content,
        "cat returns the file"
    );

    let status = Command::new("kill")
        .args(["-TERM", &devnet.id().to_string()])
        .status()?;
    ensure!(status.success());
    ensure!(devnet.wait()?.success(), "devnet exits cleanly");
    for i in 1..=9 {
        let log = std::fs::read_to_string(data.join(format!("node-{i:02}.log")))?;
        ensure!(log.contains("node stopped"), "node {i} stopped cleanly");
    }
    Ok(())
}
