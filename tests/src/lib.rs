//! Helpers for Cairn's workspace integration tests (the tests are in `tests/`).

pub mod reference {
    //! Drives the IPFS ecosystem's reference implementations (`js/ref.mjs`:
    //! ipfs-unixfs-importer, @ipld/car, ipfs-unixfs-exporter) with Node.js.
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
        let dir = js_dir();
        ensure!(
            dir.join("node_modules/ipfs-unixfs-importer").is_dir(),
            "the reference tools are not installed: run scripts/test (or `npm ci` in {})",
            dir.display()
        );
        let out = Command::new("node")
            .arg(dir.join("ref.mjs"))
            .args(args)
            .output()
            .context("cannot run node: install Node.js to run the compatibility tests")?;
        if !out.status.success() {
            bail!(
                "reference `{}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("reference printed no JSON")
    }

    /// Root CIDs the reference importer gives each file.
    pub fn hash_files(files: &[&Path]) -> Result<Vec<String>> {
        let mut args = vec!["hash"];
        args.extend(files.iter().map(|f| f.to_str().unwrap_or_default()));
        Ok(serde_json::from_value(run(&args)?)?)
    }

    /// Root CID the reference gives a directory tree (as `ipfs add -r`).
    pub fn hash_dir(dir: &Path) -> Result<String> {
        Ok(serde_json::from_value(run(&["dir", path(dir)])?)?)
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
}
