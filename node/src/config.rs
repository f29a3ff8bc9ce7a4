//! `cairn node`'s configuration file (TOML). Every key is optional; flags
//! and `CAIRN_*` environment variables override the file, and the file
//! overrides the defaults of [`crate::node::Config::new`].
//!
//! ```toml
//! data_dir = "/var/lib/cairn"
//! capacity = "50GiB"
//! listen = ["/ip4/0.0.0.0/tcp/4001", "/ip4/0.0.0.0/udp/4001/quic-v1"]
//! bootstrap = ["/ip4/192.0.2.1/tcp/4001/p2p/12D3KooW..."]
//! external = ["/ip4/203.0.113.7/tcp/4001"]
//! max_connections = 512
//! log_format = "json"
//! gateway = "127.0.0.1:8080"
//! ```

use std::path::{Path, PathBuf};

use bytesize::ByteSize;
use libp2p::Multiaddr;
use serde::Deserialize;

/// File name looked for in the data directory when no `--config` is given.
pub const FILE: &str = "cairn.toml";
/// Largest configuration file read.
const MAX_SIZE: u64 = 1 << 20;

#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct File {
    pub data_dir: Option<PathBuf>,
    pub capacity: Option<ByteSize>,
    pub listen: Option<Vec<Multiaddr>>,
    pub bootstrap: Option<Vec<Multiaddr>>,
    pub external: Option<Vec<Multiaddr>>,
    pub max_connections: Option<u32>,
    pub log_format: Option<LogFormat>,
    pub gateway: Option<std::net::SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} is larger than {MAX_SIZE} bytes", path.display())]
    TooLarge { path: PathBuf },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

impl File {
    /// Reads `path`; with `required == false` a missing file is empty.
    pub fn load(path: &Path, required: bool) -> Result<File, Error> {
        let read = |source| Error::Read {
            path: path.to_path_buf(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(File::default());
            }
            r => r.map_err(read)?,
        };
        if meta.len() > MAX_SIZE {
            return Err(Error::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        toml::from_str(&text).map_err(|e| Error::Invalid {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }
}

/// `$XDG_DATA_HOME/cairn`, else `~/.local/share/cairn`, else `./cairn-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("cairn");
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => PathBuf::from(home).join(".local/share/cairn"),
        None => PathBuf::from("cairn-data"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_every_key_and_rejects_unknown_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        std::fs::write(
            &path,
            "capacity = \"50GiB\"\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\nlog_format = \"json\"\nmax_connections = 9\n",
        )
        .expect("write");
        let f = File::load(&path, true).expect("valid");
        assert_eq!(f.capacity, Some(ByteSize::gib(50)));
        assert_eq!(f.listen.map(|l| l.len()), Some(1));
        assert_eq!(
            (f.log_format, f.max_connections),
            (Some(LogFormat::Json), Some(9))
        );

        std::fs::write(&path, "capacty = \"1GiB\"\n").expect("write");
        let err = File::load(&path, true).expect_err("typo");
        assert!(err.to_string().contains("capacty"), "{err}");
        std::fs::write(&path, "listen = [\"not an address\"]\n").expect("write");
        assert!(File::load(&path, true).is_err());

        let missing = dir.path().join("missing.toml");
        assert_eq!(
            File::load(&missing, false).expect("optional"),
            File::default()
        );
        assert!(File::load(&missing, true).is_err());
    }
}
