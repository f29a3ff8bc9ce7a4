//! The node's persistent ed25519 identity: `identity.key` in the data
//! directory, libp2p's protobuf key encoding, file mode 0600. The data
//! directory itself is made its owner's alone (0700) whenever the identity
//! is loaded: node and bootstrap alike.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use libp2p::identity::Keypair;

pub const FILE: &str = "identity.key";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{} is not a Cairn identity key: {reason}", path.display())]
    Malformed { path: PathBuf, reason: String },
    #[error("{} can be read by other users (mode {mode:o}); run `chmod 600` on it", path.display())]
    Exposed { path: PathBuf, mode: u32 },
}

/// Loads the identity in `dir`, creating it (and `dir`) on first start, and
/// makes `dir` mode 0700. Returns the key and whether it was created.
pub fn load_or_create(dir: &Path) -> Result<(Keypair, bool), Error> {
    fs::create_dir_all(dir)
        .and_then(|()| fs::set_permissions(dir, fs::Permissions::from_mode(0o700)))
        .map_err(|source| Error::Io {
            op: "create",
            path: dir.to_path_buf(),
            source,
        })?;
    let path = dir.join(FILE);
    let io = |op| {
        let path = path.clone();
        move |source| Error::Io { op, path, source }
    };
    match fs::read(&path) {
        Ok(bytes) => {
            let mode = fs::metadata(&path)
                .map_err(io("stat"))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(Error::Exposed {
                    path,
                    mode: mode & 0o777,
                });
            }
            let key = Keypair::from_protobuf_encoding(&bytes)
                .ok()
                .filter(|k| k.clone().try_into_ed25519().is_ok())
                .ok_or_else(|| Error::Malformed {
                    path: path.clone(),
                    reason: "not a protobuf-encoded ed25519 key pair".into(),
                })?;
            Ok((key, false))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let key = Keypair::generate_ed25519();
            let bytes = key.to_protobuf_encoding().map_err(|e| Error::Malformed {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io("create"))?;
            f.write_all(&bytes).map_err(io("write"))?;
            f.sync_all().map_err(io("fsync"))?;
            Ok((key, true))
        }
        Err(e) => Err(io("read")(e)),
    }
}

/// The ed25519 signing key behind a libp2p identity, for receipts.
pub fn signing_key(key: &Keypair) -> Option<ed25519_dalek::SigningKey> {
    let ed = key.clone().try_into_ed25519().ok()?;
    let secret: [u8; 32] = ed.secret().as_ref().try_into().ok()?;
    Some(ed25519_dalek::SigningKey::from_bytes(&secret))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_private_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).expect("chmod");
        let (a, created) = load_or_create(dir.path()).expect("create");
        let mode = fs::metadata(dir.path()).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the data directory is made private");
        assert!(created);
        let mode = fs::metadata(dir.path().join(FILE))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (b, created) = load_or_create(dir.path()).expect("load");
        assert!(!created);
        assert_eq!(a.public().to_peer_id(), b.public().to_peer_id());
        let signer = signing_key(&b).expect("ed25519");
        let ed = b.public().try_into_ed25519().expect("ed25519");
        assert_eq!(signer.verifying_key().to_bytes(), ed.to_bytes());
    }

    #[test]
    fn refuses_exposed_or_malformed_keys() {
        let dir = tempfile::tempdir().expect("tempdir");
        load_or_create(dir.path()).expect("create");
        let path = dir.path().join(FILE);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(matches!(
            load_or_create(dir.path()),
            Err(Error::Exposed { .. })
        ));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).expect("chmod");
        fs::write(&path, b"garbage").expect("write");
        assert!(matches!(
            load_or_create(dir.path()),
            Err(Error::Malformed { .. })
        ));
    }
}
