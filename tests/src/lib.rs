//! Helpers for Cairn's workspace integration tests (the tests are in `tests/`).

pub mod reference {
    //! Drives the IPFS ecosystem's reference implementations (`js/ref.mjs`:
    //! ipfs-unixfs-importer, @ipld/car, ipfs-unixfs-exporter) and js-libp2p
    //! (`js/interop.mjs`) with Node.js.
    //! `scripts/test` installs them; a test that needs them fails with that
    //! advice when they are missing.

    use std::path::{Path, PathBuf};
    use std::process::Command;

    use anyhow::{Context as _, Result, bail, ensure};

    pub fn js_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
    }

    /// Runs `node ref.mjs ARGS` and parses its JSON answer.
    pub fn run(args: &[&str]) -> Result<serde_json::Value> {
        script("ref.mjs", args)
    }

    /// Runs `node SCRIPT ARGS` (a script in `js/`) and parses the JSON it
    /// prints.
    pub fn script(name: &str, args: &[&str]) -> Result<serde_json::Value> {
        let dir = js_dir();
        ensure!(
            dir.join("node_modules/ipfs-unixfs-importer").is_dir(),
            "the reference tools are not installed: run scripts/test (or `npm ci` in {})",
            dir.display()
        );
        let out = Command::new("node")
            .arg(dir.join(name))
            .args(args)
            .output()
            .context("cannot run node: install Node.js to run the compatibility tests")?;
        if !out.status.success() {
            bail!(
                "`node {name} {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).with_context(|| format!("{name} printed no JSON"))
    }

    /// Root CIDs the reference importer gives each file.
    pub fn hash_files(files: &[&Path]) -> Result<Vec<String>> {
        hash_files_as(files, false)
    }

    /// [`hash_files`], or with `v0` as `ipfs add` without flags (kubo's
    /// defaults: CIDv0, dag-pb leaves).
    pub fn hash_files_as(files: &[&Path], v0: bool) -> Result<Vec<String>> {
        let mut args = vec![if v0 { "hash0" } else { "hash" }];
        args.extend(files.iter().map(|f| f.to_str().unwrap_or_default()));
        Ok(serde_json::from_value(run(&args)?)?)
    }

    /// Root CID the reference gives a directory tree (as `ipfs add -r`).
    pub fn hash_dir(dir: &Path) -> Result<String> {
        hash_dir_as(dir, false)
    }

    /// [`hash_dir`], or with `v0` as `ipfs add -r` without flags.
    pub fn hash_dir_as(dir: &Path, v0: bool) -> Result<String> {
        let mut args = vec!["dir", path(dir)];
        if v0 {
            args.push("v0");
        }
        Ok(serde_json::from_value(run(&args)?)?)
    }

    fn path(p: &Path) -> &str {
        p.to_str().unwrap_or_default()
    }

    /// Has the reference write `file` as a CAR at `car`; returns the root CID.
    pub fn write_car(file: &Path, car: &Path) -> Result<String> {
        Ok(serde_json::from_value(run(&[
            "car",
            path(file),
            path(car),
        ])?)?)
    }

    /// As [`write_car`], imported as `ipfs add` does by default (kubo's
    /// defaults): CIDv0, dag-pb leaves.
    pub fn write_car_v0(file: &Path, car: &Path) -> Result<String> {
        Ok(serde_json::from_value(run(&[
            "car0",
            path(file),
            path(car),
        ])?)?)
    }

    /// What @ipld/car and the reference exporter read from a CAR.
    #[derive(Debug, serde::Deserialize)]
    pub struct CarSummary {
        pub roots: Vec<String>,
        pub blocks: u64,
        /// sha256 (hex) of the root's exported content.
        pub sha256: String,
    }

    pub fn read_car(car: &Path) -> Result<CarSummary> {
        Ok(serde_json::from_value(run(&["readcar", path(car)])?)?)
    }

    /// As [`read_car`], exporting the file at `at` (a path under the root)
    /// as the reference exporter resolves it.
    pub fn read_car_at(car: &Path, at: &str) -> Result<CarSummary> {
        Ok(serde_json::from_value(run(&["readcar", path(car), at])?)?)
    }

    /// Has the reference import the tree `dir` into a CAR at `car`, as
    /// [`hash_dir`] does, or with `v0` as `ipfs add -r` without flags
    /// (CIDv0, dag-pb leaves); returns the root CID.
    pub fn write_dir_car(dir: &Path, car: &Path, v0: bool) -> Result<String> {
        let mut args = vec!["dircar", path(dir), path(car)];
        if v0 {
            args.push("v0");
        }
        Ok(serde_json::from_value(run(&args)?)?)
    }
}

pub mod nft {
    //! An NFT collection as projects lay one out: `meta/` holds a token
    //! file per token (thousands make a directory IPFS shards), beside a
    //! subdirectory, and a cover image at the top.

    use std::fs;
    use std::path::Path;

    use anyhow::Result;

    /// Writes the collection of `n` tokens under `root`, the cover
    /// `cover` bytes long.
    pub fn collection(root: &Path, n: usize, cover: &[u8]) -> Result<()> {
        fs::create_dir_all(root.join("meta/extra"))?;
        for i in 0..n {
            fs::write(root.join("meta").join(token(i)), token_json(i))?;
        }
        fs::write(root.join("meta/extra/note.txt"), NOTE)?;
        fs::write(root.join("cover.png"), cover)?;
        Ok(())
    }

    pub const NOTE: &[u8] = b"inside a sharded directory";

    pub fn token(i: usize) -> String {
        format!("{i:05}-token.json")
    }

    pub fn token_json(i: usize) -> String {
        format!("{{\"name\":\"#{i}\",\"image\":\"ipfs://cover.png\"}}")
    }
}

pub mod procs {
    //! Real `cairn` and `cairn-bootstrap` processes on loopback. The binaries
    //! are the workspace's own, built beside the test executable
    //! (`scripts/test` builds them first).

    use std::collections::VecDeque;
    use std::fs::File;
    use std::io::{BufRead as _, BufReader, Write as _};
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::sync::{Mutex, mpsc};
    use std::time::Duration;

    use anyhow::{Context as _, Result, bail};

    /// Path of a workspace binary built in the same profile as the test.
    pub fn bin(name: &str) -> Result<PathBuf> {
        let exe = std::env::current_exe()?;
        let dir = exe
            .parent()
            .and_then(Path::parent)
            .context("test executable has no target directory")?;
        let path = dir.join(name);
        if !path.exists() {
            bail!(
                "{} is missing: run `cargo build --release --bins` (scripts/test does)",
                path.display()
            );
        }
        Ok(path)
    }

    /// A running process, killed when dropped. Its stderr (logs) is kept in
    /// `<dir>/<name>.log`.
    pub struct Proc {
        child: Child,
        stderr: mpsc::Receiver<String>,
        /// Log lines read by a `wait_log` that did not match it, in order:
        /// a later wait still sees them.
        passed: Mutex<VecDeque<String>>,
        pub peer_id: String,
        /// Listen addresses with `/p2p/<peer id>`, as printed.
        pub addrs: Vec<String>,
        pub log: PathBuf,
    }

    impl Proc {
        /// Starts `bin args…` and waits (up to 30 s) until it prints its
        /// peer ID and first listen address.
        pub fn spawn(bin: &Path, args: &[&str], log: PathBuf) -> Result<Proc> {
            let mut child = Command::new(bin)
                .args(args)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .with_context(|| format!("cannot start {}", bin.display()))?;
            // stderr goes to the log file and, line by line, to `wait_log`.
            let stderr = child.stderr.take().context("no stderr")?;
            let mut file = File::create(&log)?;
            let (err_tx, err_rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    let _ = writeln!(file, "{line}");
                    let _ = err_tx.send(line);
                }
            });
            let stdout = child.stdout.take().context("no stdout")?;
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            let mut peer_id = None;
            let mut addrs = Vec::new();
            while addrs.is_empty() {
                let line = match rx.recv_timeout(Duration::from_secs(30)) {
                    Ok(line) => line,
                    Err(_) => {
                        let _ = child.kill();
                        let logs = std::fs::read_to_string(&log).unwrap_or_default();
                        bail!("{} printed no address; its log:\n{logs}", bin.display());
                    }
                };
                if let Some(id) = line.strip_prefix("peer id: ") {
                    peer_id = Some(id.to_string());
                } else if let Some(addr) = line.strip_prefix("listening on ") {
                    addrs.push(addr.to_string());
                }
            }
            Ok(Proc {
                child,
                stderr: err_rx,
                passed: Mutex::default(),
                peer_id: peer_id.context("no peer id printed")?,
                addrs,
                log,
            })
        }

        /// SIGKILL: no chance to clean up.
        pub fn kill9(&mut self) -> Result<()> {
            self.child.kill()?;
            self.child.wait()?;
            Ok(())
        }

        /// SIGTERM, then waits for a clean exit.
        pub fn stop(&mut self) -> Result<()> {
            let status = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status()?;
            if !status.success() {
                bail!("kill -TERM failed");
            }
            let status = self.child.wait()?;
            if !status.success() {
                bail!("exited with {status} after SIGTERM");
            }
            Ok(())
        }

        /// Waits up to `limit` for a log line `matches` accepts; returns it.
        /// Each line is matched once at most: the line returned is used up,
        /// the lines before it that did not match stay for later waits, so
        /// two events logged in either order are both found.
        pub fn wait_log(&self, limit: Duration, matches: impl Fn(&str) -> bool) -> Result<String> {
            let mut passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = passed.iter().position(|l| matches(l)) {
                return Ok(passed.remove(i).unwrap_or_default());
            }
            let deadline = std::time::Instant::now() + limit;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                match self.stderr.recv_timeout(left) {
                    Ok(line) if matches(&line) => return Ok(line),
                    Ok(line) => passed.push_back(line),
                    Err(_) => {
                        let logs = self.logs();
                        let lines: Vec<&str> = logs.lines().collect();
                        let tail = &lines[lines.len().saturating_sub(80)..];
                        bail!(
                            "no such log line within {limit:?}; the last lines of its log:\n{}",
                            tail.join("\n")
                        )
                    }
                }
            }
        }

        /// Forgets the lines logged so far that no wait has used, so later
        /// waits see only what is logged from now on (a second occurrence).
        pub fn forget_logs(&self) {
            let mut passed = self.passed.lock().unwrap_or_else(|e| e.into_inner());
            passed.clear();
            while self.stderr.try_recv().is_ok() {}
        }

        /// The process's log so far.
        pub fn logs(&self) -> String {
            std::fs::read_to_string(&self.log).unwrap_or_default()
        }
    }

    impl Drop for Proc {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// `cairn devnet` in a temporary directory, stopped with SIGTERM when
    /// dropped.
    pub struct Devnet {
        child: Child,
        /// The bootstrap node's address, as `CAIRN_BOOTSTRAP` takes it.
        pub bootstrap: String,
        /// The storage nodes' addresses, in order.
        pub nodes: Vec<String>,
        /// Its HTTP gateway, `http://…/ipfs/`.
        pub gateway: String,
        _dir: tempfile::TempDir,
    }

    impl Devnet {
        /// Starts `nodes` storage nodes of `capacity` (such as "8GiB") each and
        /// waits until the devnet prints its bootstrap address.
        pub fn start(nodes: u64, capacity: &str) -> Result<Devnet> {
            let dir = tempfile::tempdir()?;
            let mut child = Command::new(bin("cairn")?)
                .args(["devnet", "--nodes", &nodes.to_string()])
                .args(["--capacity", capacity])
                .arg("--dir")
                .arg(dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()?;
            let out = BufReader::new(child.stdout.take().context("stdout")?);
            let (mut addrs, mut bootstrap, mut gateway) = (Vec::new(), None, None);
            for line in out.lines() {
                let line = line?;
                let line = line.trim();
                if let Some(addr) = line.strip_prefix("export CAIRN_BOOTSTRAP=") {
                    bootstrap = Some(addr.to_owned());
                }
                if let Some(url) = line.strip_suffix("/ipfs/CID") {
                    gateway = Some(format!("{url}/ipfs/"));
                }
                if line.starts_with("Ctrl-C stops") {
                    return Ok(Devnet {
                        child,
                        bootstrap: bootstrap.context("no bootstrap address printed")?,
                        nodes: addrs,
                        gateway: gateway.context("no gateway printed")?,
                        _dir: dir,
                    });
                }
                // "node-01    /ip4/…/p2p/…"
                if line.starts_with("node-")
                    && let Some(addr) = line.split_whitespace().nth(1)
                {
                    addrs.push(addr.to_owned());
                }
            }
            bail!("cairn devnet exited before it finished starting")
        }

        /// `cairn ARGS` against the devnet: its stdout, trimmed.
        pub fn cairn(&self, args: &[&str]) -> Result<String> {
            let out = Command::new(bin("cairn")?)
                .args(args)
                .env("CAIRN_BOOTSTRAP", &self.bootstrap)
                .output()?;
            if !out.status.success() {
                bail!(
                    "cairn {} failed: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            Ok(String::from_utf8(out.stdout)?.trim().to_owned())
        }
    }

    impl Devnet {
        /// The data directory of storage node `n` (1-based).
        pub fn node_dir(&self, n: usize) -> PathBuf {
            self._dir.path().join(format!("node-{n:02}"))
        }

        /// The PID of storage node `n` (1-based, as the devnet names it).
        pub fn node_pid(&self, n: usize) -> Result<String> {
            child_pid(self.child.id(), &format!("node-{n:02}"))
        }
    }

    /// The PID of the child of `parent` whose command line mentions `name`.
    pub fn child_pid(parent: u32, name: &str) -> Result<String> {
        for entry in std::fs::read_dir("/proc")? {
            let pid = entry?.file_name().to_string_lossy().into_owned();
            let (Ok(stat), Ok(cmdline)) = (
                std::fs::read_to_string(format!("/proc/{pid}/stat")),
                std::fs::read(format!("/proc/{pid}/cmdline")),
            ) else {
                continue;
            };
            // Fields after the parenthesised command name: state, then ppid.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1));
            let mentions = String::from_utf8_lossy(&cmdline).contains(name);
            if ppid == Some(&parent.to_string()) && mentions {
                return Ok(pid);
            }
        }
        bail!("no child of {parent} runs {name}")
    }

    /// Sends `signal` (such as "STOP") to process `pid`.
    pub fn signal(pid: &str, signal: &str) -> Result<()> {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), pid])
            .status()?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    impl Drop for Devnet {
        fn drop(&mut self) {
            let _ = Command::new("kill")
                .args(["-TERM", &self.child.id().to_string()])
                .status();
            let _ = self.child.wait();
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use anyhow::ensure;

        /// Two events logged in the other order than they are waited for
        /// are both found; `forget_logs` drops the lines no wait took.
        #[test]
        fn a_wait_leaves_the_lines_it_passes_to_later_waits() -> Result<()> {
            let dir = tempfile::tempdir()?;
            let script = "echo 'peer id: p'; echo 'listening on /x'; \
                          echo second >&2; echo first >&2; echo first >&2; echo last >&2";
            let p = Proc::spawn(Path::new("sh"), &["-c", script], dir.path().join("log"))?;
            let limit = Duration::from_secs(10);
            p.wait_log(limit, |l| l == "first")?;
            p.wait_log(limit, |l| l == "second")?;
            p.wait_log(limit, |l| l == "last")?;
            // The second "first" came before "last": passed, not used up.
            p.forget_logs();
            ensure!(p.wait_log(Duration::ZERO, |l| l == "first").is_err());
            Ok(())
        }
    }
}
