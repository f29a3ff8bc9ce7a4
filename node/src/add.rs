//! Importing files and directory trees from disk, as `ipfs add` does.

use std::fs::{self, File};
use std::io::BufReader;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use cairn_protocol::unixfs::{
    BlockSink, DirectoryBuilder, Entry, HashLeaves, Leaves, import_file_with,
};
use cid::Version;

/// How to walk a path, and lay out what it finds.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Import directories (`-r`).
    pub recursive: bool,
    /// Include names starting with `.` inside directories, as `ipfs add -r --hidden`.
    pub hidden: bool,
    /// As `ipfs add --cid-version`: V1 (raw leaves), or V0 as `ipfs add`
    /// without flags.
    pub cid_version: Version,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            recursive: false,
            hidden: false,
            cid_version: Version::V1,
        }
    }
}

/// Imports `path` (a file, or with `recursive` a directory tree), writing
/// every block to `sink`, and returns the root entry.
pub fn import_path(path: &Path, options: Options, sink: &mut impl BlockSink) -> Result<Entry> {
    import_path_with(path, options, sink, &HashLeaves)
}

/// [`import_path`], a file's raw leaves named by `leaves` (a directory's
/// files are hashed; CIDv0 leaves always are).
pub fn import_path_with(
    path: &Path,
    options: Options,
    sink: &mut impl BlockSink,
    leaves: &impl Leaves,
) -> Result<Entry> {
    let meta = fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?;
    if meta.is_dir() {
        if !options.recursive {
            bail!("{} is a directory: use -r to add it", path.display());
        }
        import_dir(path, options, sink)
    } else {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let file = BufReader::with_capacity(1 << 20, file);
        import_file_with(file, sink, leaves, options.cid_version)
            .with_context(|| format!("cannot import {}", path.display()))
    }
}

fn import_dir(dir: &Path, options: Options, sink: &mut impl BlockSink) -> Result<Entry> {
    let mut children: Vec<(String, PathBuf)> = Vec::new();
    for item in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let item = item.with_context(|| format!("cannot list {}", dir.display()))?;
        let path = item.path();
        let Ok(name) = item.file_name().into_string() else {
            bail!(
                "{} is not valid UTF-8: UnixFS names must be",
                path.display()
            );
        };
        if name.starts_with('.') && !options.hidden {
            continue;
        }
        let kind = item
            .file_type()
            .with_context(|| format!("cannot stat {}", path.display()))?;
        if kind.is_symlink() {
            bail!(
                "{} is a symbolic link, which Cairn does not add yet",
                path.display()
            );
        }
        children.push((name, path));
    }
    let mut builder = DirectoryBuilder::with_version(options.cid_version);
    for (name, path) in children {
        let entry = import_path(&path, options, sink)?;
        builder
            .add(&name, entry)
            .with_context(|| format!("cannot add {}", path.display()))?;
    }
    builder
        .finish(sink)
        .with_context(|| format!("cannot import {}", dir.display()))
}
