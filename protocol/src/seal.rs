//! Sealed content: a file encrypted before it is imported, so storage nodes
//! only ever hold ciphertext.
//!
//! The ciphertext is STREAM (Hoang, Reyhanitabar, Rogaway, Vizár) over
//! ChaCha20-Poly1305 with a 32-bit big-endian counter and a last-record flag
//! (`aead::stream::StreamBE32`): the plaintext is cut into records of
//! [`RECORD`] bytes (the last may be shorter, and is empty only when the
//! whole plaintext is), and record `i` is sealed under the 12-byte nonce
//! `[0; 7] ‖ be32(i) ‖ last`, with no associated data. Each sealed record is
//! its ciphertext followed by a 16-byte tag. Every add draws a fresh random
//! key, so a fixed nonce prefix never repeats under one key.
//!
//! Reordering, dropping, truncating or altering records fails to open: the
//! position and the last flag are part of every nonce.
//!
//! The key travels in the [`Handle`]: `<root CID>:v1:<key>`, the key in
//! lowercase unpadded base32 (52 characters).

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use chacha20poly1305::aead::stream::{NewStream as _, StreamBE32, StreamPrimitive as _};
use chacha20poly1305::{ChaCha20Poly1305, KeyInit as _};
use cid::Cid;
use data_encoding::BASE32_NOPAD;

/// Plaintext bytes per record.
pub const RECORD: usize = 64 << 10;
/// Authentication tag after every record.
pub const TAG: usize = 16;
/// A whole sealed record.
pub const SEALED_RECORD: usize = RECORD + TAG;

const VERSION: &str = "v1";

/// A content key: 32 random bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct Key(pub [u8; 32]);

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Key(..)")
    }
}

fn stream(key: &Key) -> StreamBE32<ChaCha20Poly1305> {
    StreamBE32::from_aead(ChaCha20Poly1305::new(&key.0.into()), &Default::default())
}

/// Why sealed bytes did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("record {0} does not open: wrong key, or the content was altered")]
    Record(u64),
    #[error("the content ends inside record {0}: it was truncated")]
    Truncated(u64),
    #[error("content over 2^32 records")]
    TooLong,
}

impl From<OpenError> for io::Error {
    fn from(e: OpenError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

/// Reads plaintext from `inner` and yields its sealed form.
pub struct Sealer<R> {
    inner: R,
    stream: StreamBE32<ChaCha20Poly1305>,
    /// The next record's plaintext, read ahead by one byte to know whether
    /// it is the last.
    next: Vec<u8>,
    /// Sealed bytes not yet handed out, from `out_at`.
    out: Vec<u8>,
    out_at: usize,
    position: u32,
    done: bool,
}

impl<R: Read> Sealer<R> {
    pub fn new(inner: R, key: &Key) -> Self {
        Sealer {
            inner,
            stream: stream(key),
            next: Vec::with_capacity(RECORD + 1),
            out: Vec::with_capacity(SEALED_RECORD + 1),
            out_at: 0,
            position: 0,
            done: false,
        }
    }

    /// Seals the next record into `out`.
    fn seal_next(&mut self) -> io::Result<()> {
        // Fill `next` to one byte past a record, or to the end of input.
        while self.next.len() <= RECORD {
            let have = self.next.len();
            self.next.resize(RECORD + 1, 0);
            let n = loop {
                match self.inner.read(&mut self.next[have..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    r => break r,
                }
            };
            let n = n.inspect_err(|_| self.next.truncate(have))?;
            self.next.truncate(have + n);
            if n == 0 {
                break;
            }
        }
        let last = self.next.len() <= RECORD;
        let take = self.next.len().min(RECORD);
        self.out.clear();
        self.out.extend_from_slice(&self.next[..take]);
        self.next.drain(..take);
        self.out_at = 0;
        self.stream
            .encrypt_in_place(self.position, last, &[], &mut self.out)
            .map_err(|_| io::Error::other(OpenError::TooLong))?;
        if last {
            self.done = true;
        } else {
            self.position = self
                .position
                .checked_add(1)
                .ok_or_else(|| io::Error::other(OpenError::TooLong))?;
        }
        Ok(())
    }
}

impl<R: Read> Read for Sealer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.out_at == self.out.len() {
            if self.done {
                return Ok(0);
            }
            self.seal_next()?;
        }
        let n = buf.len().min(self.out.len() - self.out_at);
        buf[..n].copy_from_slice(&self.out[self.out_at..self.out_at + n]);
        self.out_at += n;
        Ok(n)
    }
}

/// The sealed byte range that holds plaintext `offset .. offset + len`,
/// plus one byte past it when there may be more, so that an [`Opener`] can
/// tell whether the range's last record is the content's last.
/// Returns (sealed offset, sealed length or `None` for "to the end").
pub fn sealed_range(offset: u64, len: Option<u64>) -> (u64, Option<u64>) {
    let (record, sealed) = (RECORD as u64, SEALED_RECORD as u64);
    let start = offset / record * sealed;
    let len = len.map(|len| {
        if len == 0 {
            return 0;
        }
        let last = offset.saturating_add(len - 1) / record;
        (last + 1).saturating_mul(sealed).saturating_add(1) - start
    });
    (start, len)
}

/// Takes the sealed bytes [`sealed_range`] named and writes the plaintext
/// `offset .. offset + len` to `out`. Call [`Opener::finish`] at the end.
pub struct Opener<W> {
    out: W,
    stream: StreamBE32<ChaCha20Poly1305>,
    /// Sealed bytes of the current record.
    record: Vec<u8>,
    position: u64,
    /// Plaintext bytes still to drop before the range starts.
    skip: u64,
    /// Plaintext bytes still to write.
    left: u64,
}

impl<W: Write> Opener<W> {
    pub fn new(out: W, key: &Key, offset: u64, len: Option<u64>) -> Self {
        Opener {
            out,
            stream: stream(key),
            record: Vec::with_capacity(SEALED_RECORD + 1),
            position: offset / RECORD as u64,
            skip: offset % RECORD as u64,
            left: len.unwrap_or(u64::MAX),
        }
    }

    /// Opens the buffered record and writes what of it the range wants.
    fn open(&mut self, last: bool) -> io::Result<()> {
        let position = u32::try_from(self.position).map_err(|_| OpenError::TooLong)?;
        let mut record = std::mem::take(&mut self.record);
        self.stream
            .decrypt_in_place(position, last, &[], &mut record)
            .map_err(|_| OpenError::Record(self.position))?;
        let from = (self.skip as usize).min(record.len());
        let to = from.saturating_add(usize::try_from(self.left).unwrap_or(usize::MAX));
        let to = to.min(record.len());
        self.out.write_all(&record[from..to])?;
        self.skip -= from as u64;
        self.left -= (to - from) as u64;
        self.position += 1;
        record.clear();
        self.record = record;
        Ok(())
    }

    /// Opens the last record when the sealed bytes ended with it, and
    /// returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        // Done when the range is written (from records that opened), or when
        // it starts past the end of the content.
        if self.left == 0 || self.record.is_empty() && self.position > 0 {
            return Ok(self.out);
        }
        if self.record.len() < TAG {
            return Err(OpenError::Truncated(self.position).into());
        }
        self.open(true)?;
        Ok(self.out)
    }
}

impl<W: Write> Write for Opener<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            // A full record is opened once a byte past it shows it is not the last.
            if self.record.len() == SEALED_RECORD {
                if self.left == 0 {
                    return Ok(buf.len());
                }
                self.open(false)?;
            }
            let n = rest.len().min(SEALED_RECORD - self.record.len());
            self.record.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// What names sealed content: the root CID of its ciphertext and the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handle {
    pub root: Cid,
    pub key: Key,
}

impl Handle {
    /// The handle whole, key included (`<CID>:v1:<key>`): for the user it
    /// is made for, never for a log.
    pub fn reveal(&self) -> String {
        let key = BASE32_NOPAD.encode(&self.key.0).to_ascii_lowercase();
        format!("{}:{VERSION}:{key}", self.root)
    }
}

/// `<CID>:v1:…`: the key is withheld, so a handle in a log or an error
/// message gives nothing away. [`Handle::reveal`] writes it whole.
impl fmt::Display for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{VERSION}:…", self.root)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    #[error("not a CID or a sealed-content handle (<CID>:v1:<key>)")]
    Shape,
    #[error("invalid CID: {0}")]
    Cid(#[from] cid::Error),
    #[error("sealed-content handle version {0} is not supported (this Cairn reads v1)")]
    Version(String),
    #[error("the key must be 52 base32 characters")]
    Key,
}

impl FromStr for Handle {
    type Err = HandleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.split(':');
        let (Some(root), Some(version), Some(key), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(HandleError::Shape);
        };
        if version != VERSION {
            return Err(HandleError::Version(version.to_owned()));
        }
        let key = BASE32_NOPAD
            .decode(key.to_ascii_uppercase().as_bytes())
            .ok()
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or(HandleError::Key)?;
        Ok(Handle {
            root: root.parse()?,
            key: Key(key),
        })
    }
}

/// What `cairn get` and `cairn cat` take: a plain CID or a sealed handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Plain(Cid),
    Sealed(Handle),
}

impl Target {
    pub fn root(&self) -> Cid {
        match self {
            Target::Plain(cid) => *cid,
            Target::Sealed(h) => h.root,
        }
    }
}

impl From<Cid> for Target {
    fn from(cid: Cid) -> Self {
        Target::Plain(cid)
    }
}

impl From<Handle> for Target {
    fn from(h: Handle) -> Self {
        Target::Sealed(h)
    }
}

impl FromStr for Target {
    type Err = HandleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            s.parse().map(Target::Sealed)
        } else {
            Ok(Target::Plain(s.parse()?))
        }
    }
}

impl Target {
    /// The target whole, a handle's key included ([`Handle::reveal`]).
    pub fn reveal(&self) -> String {
        match self {
            Target::Plain(cid) => cid.to_string(),
            Target::Sealed(h) => h.reveal(),
        }
    }
}

/// A CID, or a handle without its key.
impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Plain(cid) => cid.fmt(f),
            Target::Sealed(h) => h.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: Key = Key([7; 32]);

    fn seal(plain: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        Sealer::new(plain, &KEY)
            .read_to_end(&mut out)
            .expect("sealing a slice");
        out
    }

    fn open(sealed: &[u8], key: &Key, offset: u64, len: Option<u64>) -> io::Result<Vec<u8>> {
        let (start, sealed_len) = sealed_range(offset, len);
        let start = (start as usize).min(sealed.len());
        let end = sealed_len.map_or(sealed.len(), |l| (start + l as usize).min(sealed.len()));
        let mut opener = Opener::new(Vec::new(), key, offset, len);
        // Odd write sizes cross record boundaries anywhere.
        for chunk in sealed[start..end].chunks(7919) {
            opener.write_all(chunk)?;
        }
        opener.finish()
    }

    #[test]
    fn sealed_length_is_plaintext_plus_a_tag_per_record() {
        for (len, records) in [
            (0, 1),
            (1, 1),
            (RECORD, 1),
            (RECORD + 1, 2),
            (3 * RECORD, 3),
        ] {
            let plain = vec![1u8; len];
            let sealed = seal(&plain);
            assert_eq!(sealed.len(), len + records * TAG, "{len} bytes");
            assert_eq!(open(&sealed, &KEY, 0, None).expect("opens"), plain);
        }
    }

    #[test]
    fn tampering_fails_to_open() {
        let plain: Vec<u8> = (0..3 * RECORD + 100).map(|i| i as u8).collect();
        let sealed = seal(&plain);
        let mut flipped = sealed.clone();
        flipped[RECORD + 5] ^= 1;
        let dropped_last = sealed[..3 * SEALED_RECORD].to_vec();
        let cut = sealed[..sealed.len() - 1].to_vec();
        let mut swapped = sealed.clone();
        swapped[..SEALED_RECORD].copy_from_slice(&sealed[SEALED_RECORD..2 * SEALED_RECORD]);
        swapped[SEALED_RECORD..2 * SEALED_RECORD].copy_from_slice(&sealed[..SEALED_RECORD]);
        for (what, bytes) in [
            ("flipped bit", &flipped),
            ("dropped last record", &dropped_last),
            ("cut byte", &cut),
            ("swapped records", &swapped),
        ] {
            assert!(open(bytes, &KEY, 0, None).is_err(), "{what} opened");
        }
        assert!(open(&sealed, &Key([8; 32]), 0, None).is_err(), "wrong key");
        assert!(open(&sealed[..10], &KEY, 0, None).is_err(), "ten bytes");
        assert!(open(&[], &KEY, 0, None).is_err(), "nothing");
    }

    #[test]
    fn handles_round_trip_and_reject_bad_text() {
        let root: Cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
            .parse()
            .expect("cid");
        let h = Handle { root, key: KEY };
        let text = h.reveal();
        assert_eq!(
            h.to_string(),
            format!("{root}:v1:…"),
            "Display withholds the key"
        );
        let key_text = &text[text.len() - 52..];
        assert!(!format!("{:?}", Target::Sealed(h.clone())).contains(key_text));
        assert_eq!(text.parse::<Handle>().expect("parses"), h);
        assert_eq!(text.parse::<Target>().expect("parses"), Target::Sealed(h));
        assert_eq!(
            root.to_string().parse::<Target>().expect("parses"),
            Target::Plain(root)
        );
        let key = text.rsplit(':').next().expect("key");
        for bad in [
            format!("{root}:v2:{key}"),
            format!("{root}:v1:{}", &key[1..]),
            format!("{root}:v1:{key}:x"),
            format!("{root}:v1:{}", "1".repeat(52)),
            format!("nonsense:v1:{key}"),
        ] {
            assert!(bad.parse::<Handle>().is_err(), "{bad} parsed");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn any_range_opens_to_the_plaintext_slice(
            len in 0usize..4 * RECORD + 10,
            offset in 0u64..5 * RECORD as u64,
            take in proptest::option::of(0u64..3 * RECORD as u64),
        ) {
            let plain: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal(&plain);
            let got = open(&sealed, &KEY, offset, take).expect("opens");
            let from = (offset as usize).min(len);
            let to = take.map_or(len, |t| (from + t as usize).min(len));
            prop_assert_eq!(got, plain[from..to].to_vec());
        }
    }
}
