//! Whole-file writes and reads that bypass the page cache (O_DIRECT) where
//! the file system allows, falling back to ordinary IO where it does not
//! (tmpfs answers EINVAL).
//!
//! Pieces and fetched content are written once and rarely reread soon, so
//! the cache buys little; copying every byte through it cost more CPU than
//! all the rest of storing a piece on the project machine (buffered writes
//! ≈ 3.5 s of kernel time per GiB, direct ≈ 0.1 s; docs/BENCHMARKS.md).

use std::fs::{self, File};
use std::io::{self, Read as _, Write};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use bytes::Bytes;

/// Direct IO moves whole blocks, between memory aligned to them and the
/// disk; 4096 covers the block sizes of common disks and file systems.
const ALIGN: usize = 4096;
/// Bytes a [`Writer`] gathers before writing.
const WRITER_CHUNK: usize = 4 << 20;
/// A [`Writer`]'s first chunk, grown fourfold up to [`WRITER_CHUNK`] as
/// needed: a small file does not zero megabytes it never uses.
const FIRST_CHUNK: usize = 64 << 10;

fn is_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// A zeroed buffer with `len` bytes aligned to [`ALIGN`]: the vector and
/// where the aligned part starts.
fn aligned(len: usize) -> (Vec<u8>, usize) {
    let buf = vec![0u8; len + ALIGN];
    let start = buf.as_ptr().align_offset(ALIGN);
    (buf, start)
}

fn round_up(n: usize) -> usize {
    n.div_ceil(ALIGN) * ALIGN
}

/// How a file is opened.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Read,
    /// Created, or truncated.
    Write,
    /// Created, failing if anything (a symlink included) is at the path.
    WriteNew,
}

fn open(path: &Path, mode: Mode, direct: bool) -> io::Result<File> {
    let mut options = fs::OpenOptions::new();
    if mode == Mode::WriteNew {
        options.write(true).create_new(true);
    } else if mode == Mode::Write {
        options.write(true).create(true).truncate(true);
    } else {
        options.read(true);
    }
    // A file written is never reached through a symlink.
    let nofollow = match mode {
        Mode::Read => 0,
        Mode::Write | Mode::WriteNew => libc::O_NOFOLLOW,
    };
    options.custom_flags(nofollow | if direct { libc::O_DIRECT } else { 0 });
    options.open(path)
}

/// Writes `data` as `path` (created or truncated) and syncs it.
pub fn write_file(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut w = Writer::create(path)?;
    w.write_all(data)?;
    w.finish()
}

/// Reads `path`, at most `max + 1` bytes (so that a file longer than `max`
/// shows as such, without reading more).
pub fn read_file(path: &Path, max: u64) -> io::Result<Bytes> {
    match read_direct(path, max) {
        Err(e) if is_unsupported(&e) => {}
        other => return other,
    }
    let f = open(path, Mode::Read, false)?;
    let mut data = Vec::new();
    f.take(max.saturating_add(1)).read_to_end(&mut data)?;
    Ok(data.into())
}

/// The bytes read are a slice of the aligned buffer, not a copy.
fn read_direct(path: &Path, max: u64) -> io::Result<Bytes> {
    let mut f = open(path, Mode::Read, true)?;
    let want = usize::try_from(f.metadata()?.len().min(max.saturating_add(1)))
        .map_err(io::Error::other)?;
    let padded = round_up(want);
    let (mut buf, start) = aligned(padded);
    let mut got = 0;
    // Reads end short only at the end of the file.
    while got < want {
        match f.read(&mut buf[start + got..start + padded]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Bytes::from(buf).slice(start..start + got.min(want)))
}

/// A buffer of `len` bytes (a multiple of [`ALIGN`]) aligned to [`ALIGN`].
struct Chunk {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl Chunk {
    fn new(len: usize) -> Chunk {
        let (buf, start) = aligned(len);
        Chunk { buf, start, len }
    }

    /// A placeholder, never written to.
    fn empty() -> Chunk {
        Chunk {
            buf: Vec::new(),
            start: 0,
            len: 0,
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

/// The file end of a [`Writer`].
struct Out {
    path: PathBuf,
    file: File,
    direct: bool,
    written: u64,
}

impl Out {
    /// Writes the first `filled` bytes of `chunk`: whole blocks, padded
    /// when `last`.
    fn write(&mut self, chunk: &mut Chunk, filled: usize, last: bool) -> io::Result<()> {
        let len = if self.direct && last {
            round_up(filled)
        } else {
            filled
        };
        match self.file.write_all(&chunk.bytes()[..len]) {
            // Some file systems take O_DIRECT at open and refuse the write.
            Err(e) if self.direct && self.written == 0 && is_unsupported(&e) => {
                self.file = open(&self.path, Mode::Write, false)?;
                self.direct = false;
                self.file.write_all(&chunk.bytes()[..filled])?;
            }
            r => r?,
        }
        self.written += filled as u64;
        Ok(())
    }

    /// Cuts the padding, and syncs if `sync`.
    fn finish(&mut self, sync: bool) -> io::Result<()> {
        if self.direct {
            self.file.set_len(self.written)?;
        }
        match sync {
            true => self.file.sync_all(),
            false => Ok(()),
        }
    }
}

/// Chunks written by a thread of their own, so that the disk's time
/// overlaps with filling the next chunk. Two chunks in all: one filling,
/// one being written.
struct Behind {
    full: mpsc::SyncSender<(Chunk, usize, bool)>,
    free: mpsc::Receiver<Chunk>,
    thread: thread::JoinHandle<io::Result<Out>>,
    chunks: usize,
}

impl Behind {
    fn start(mut out: Out) -> io::Result<Behind> {
        let (full, to_write) = mpsc::sync_channel::<(Chunk, usize, bool)>(1);
        let (written, free) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("cairn-write".into())
            .spawn(move || {
                for (mut chunk, filled, last) in to_write {
                    out.write(&mut chunk, filled, last)?;
                    // The writer may be gone already: then no one needs it.
                    let _ = written.send(chunk);
                }
                Ok(out)
            })?;
        Ok(Behind {
            full,
            free,
            thread,
            chunks: 1,
        })
    }

    /// Waits for every chunk sent to be written.
    fn stop(self) -> io::Result<Out> {
        drop(self.full);
        self.thread
            .join()
            .map_err(|_| io::Error::other("the writing thread panicked"))?
    }
}

fn failed() -> io::Error {
    io::Error::other("the file could not be written")
}

/// A file written front to back in aligned chunks; [`Writer::finish`]
/// writes the rest, cuts the padding and syncs. A file of one chunk is
/// written on the caller's thread; a longer one behind it.
pub struct Writer {
    /// Until a second chunk is needed.
    out: Option<Out>,
    behind: Option<Behind>,
    chunk: Chunk,
    filled: usize,
}

impl Writer {
    /// Creates (or truncates) `path`.
    pub fn create(path: &Path) -> io::Result<Writer> {
        Writer::open(path, Mode::Write)
    }

    /// Creates `path`, which must not exist (nor be a symlink).
    pub fn create_new(path: &Path) -> io::Result<Writer> {
        Writer::open(path, Mode::WriteNew)
    }

    fn open(path: &Path, mode: Mode) -> io::Result<Writer> {
        let (file, direct) = match open(path, mode, true) {
            Ok(f) => (f, true),
            // O_DIRECT refused at open, perhaps after the file was created:
            // open it again, ours if it is there.
            Err(e) if is_unsupported(&e) => (open(path, Mode::Write, false)?, false),
            Err(e) => return Err(e),
        };
        let out = Out {
            path: path.to_path_buf(),
            file,
            direct,
            written: 0,
        };
        Ok(Writer {
            out: Some(out),
            behind: None,
            chunk: Chunk::new(FIRST_CHUNK),
            filled: 0,
        })
    }

    /// Hands the full chunk to the writing thread and takes a free one.
    fn write_out(&mut self) -> io::Result<()> {
        let mut behind = match (self.behind.take(), self.out.take()) {
            (Some(b), _) => b,
            (None, Some(out)) => Behind::start(out)?,
            (None, None) => return Err(failed()),
        };
        let full = std::mem::replace(&mut self.chunk, Chunk::empty());
        if behind.full.send((full, self.filled, false)).is_err() {
            // The thread stopped on an error, which it returns.
            return Err(behind.stop().err().unwrap_or_else(failed));
        }
        self.chunk = if behind.chunks < 2 {
            behind.chunks += 1;
            Chunk::new(WRITER_CHUNK)
        } else {
            match behind.free.recv() {
                Ok(chunk) => chunk,
                Err(_) => return Err(behind.stop().err().unwrap_or_else(failed)),
            }
        };
        self.filled = 0;
        self.behind = Some(behind);
        Ok(())
    }

    pub fn finish(self) -> io::Result<()> {
        self.finish_with(true)
    }

    /// [`Writer::finish`] without the sync: for one of many files, synced
    /// together after (`syncfs`).
    pub fn finish_unsynced(self) -> io::Result<()> {
        self.finish_with(false)
    }

    fn finish_with(mut self, sync: bool) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.chunk, Chunk::empty());
        let mut out = match (self.out.take(), self.behind.take()) {
            (Some(mut out), _) => {
                // A file of one chunk synced later with many others goes
                // through the cache: direct, each would wait for the disk.
                if !sync && out.direct {
                    out.file = open(&out.path, Mode::Write, false)?;
                    out.direct = false;
                }
                let mut chunk = chunk;
                out.write(&mut chunk, self.filled, true)?;
                out
            }
            (None, Some(behind)) => {
                let sent = behind.full.send((chunk, self.filled, true)).is_ok();
                let out = behind.stop()?;
                if !sent {
                    return Err(failed());
                }
                out
            }
            (None, None) => return Err(failed()),
        };
        out.finish(sync)
    }
}

impl Write for Writer {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.filled == self.chunk.len && self.chunk.len < WRITER_CHUNK {
            let mut grown = Chunk::new((self.chunk.len * 4).min(WRITER_CHUNK));
            grown.bytes()[..self.filled].copy_from_slice(&self.chunk.bytes()[..self.filled]);
            self.chunk = grown;
        }
        if self.filled == WRITER_CHUNK {
            self.write_out()?;
        }
        let n = data.len().min(self.chunk.len - self.filled);
        self.chunk.bytes()[self.filled..self.filled + n].copy_from_slice(&data[..n]);
        self.filled += n;
        Ok(n)
    }

    /// Bytes are written in whole chunks; [`Writer::finish`] writes the rest.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_of_any_length_round_trip_and_reads_stop_past_max() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Up to four chunks: written here, then behind, reusing the two.
        for len in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            // The first chunk, and as it grows.
            FIRST_CHUNK,
            FIRST_CHUNK + 1,
            4 * FIRST_CHUNK + 1,
            WRITER_CHUNK,
            WRITER_CHUNK + 3,
            3 * WRITER_CHUNK + 5,
        ] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let path = dir.path().join(format!("f{len}"));
            write_file(&path, &data).expect("write");
            assert_eq!(fs::metadata(&path).expect("stat").len(), len as u64);
            assert_eq!(read_file(&path, len as u64).expect("read"), data);
            if len > 0 {
                // One byte past a smaller `max`, no more.
                let short = read_file(&path, len as u64 - 1).expect("read");
                assert_eq!(short, data);
            }
            if len > 2 {
                assert_eq!(read_file(&path, 1).expect("read"), data[..2]);
            }
            // Unsynced, one chunk goes through the cache: the same bytes.
            let mut w = Writer::create(&path).expect("create");
            w.write_all(&data).expect("write");
            w.finish_unsynced().expect("finish");
            assert_eq!(read_file(&path, len as u64).expect("read"), data);
        }
    }
}
