//! `uvarint(len) || bytes` framing, shared by CAR sections and wire
//! messages. Reading checks the length against a limit before allocating.

use std::io::{self, Read, Write};

/// Longest unsigned varint of a u64.
const MAX_PREFIX: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("input ends inside a frame")]
    Truncated,
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: u64, max: usize },
    #[error("invalid length prefix: {0}")]
    Prefix(String),
}

/// Writes the concatenation of `parts` as one frame.
pub fn write(out: &mut impl Write, parts: &[&[u8]]) -> io::Result<()> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut buf = unsigned_varint::encode::u64_buffer();
    out.write_all(unsigned_varint::encode::u64(len as u64, &mut buf))?;
    parts.iter().try_for_each(|p| out.write_all(p))
}

/// Reads one frame of at most `max` bytes; `None` at a clean end of input.
pub fn read(input: &mut impl Read, max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let Some(len) = read_len(input)? else {
        return Ok(None);
    };
    if len > max as u64 {
        return Err(FrameError::TooLarge { len, max });
    }
    // len <= max, a usize.
    let mut buf = Vec::with_capacity(len as usize);
    input.take(len).read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        return Err(FrameError::Truncated);
    }
    Ok(Some(buf))
}

fn read_len(input: &mut impl Read) -> Result<Option<u64>, FrameError> {
    let mut buf = [0u8; MAX_PREFIX];
    for i in 0..MAX_PREFIX {
        let mut byte = [0u8];
        if input.read(&mut byte)? == 0 {
            return if i == 0 {
                Ok(None)
            } else {
                Err(FrameError::Truncated)
            };
        }
        buf[i] = byte[0];
        if byte[0] & 0x80 == 0 {
            return unsigned_varint::decode::u64(&buf[..=i])
                .map(|(v, _)| Some(v))
                .map_err(|e| FrameError::Prefix(e.to_string()));
        }
    }
    Err(FrameError::Prefix("longer than 10 bytes".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_limit_and_truncation() {
        let mut out = Vec::new();
        write(&mut out, &[b"ab", b"cd"]).expect("vec");
        write(&mut out, &[]).expect("vec");
        let mut r = &out[..];
        assert_eq!(read(&mut r, 4).expect("ok"), Some(b"abcd".to_vec()));
        assert_eq!(read(&mut r, 4).expect("ok"), Some(Vec::new()));
        assert_eq!(read(&mut r, 4).expect("ok"), None);
        assert!(matches!(
            read(&mut &out[..], 3),
            Err(FrameError::TooLarge { len: 4, max: 3 })
        ));
        assert!(matches!(
            read(&mut &out[..3], 4),
            Err(FrameError::Truncated)
        ));
        assert!(matches!(
            read(&mut &[0xffu8; 11][..], 4),
            Err(FrameError::Prefix(_))
        ));
        // Non-minimal prefixes are refused, so each frame has one encoding.
        assert!(matches!(
            read(&mut &[0x80u8, 0x00][..], 4),
            Err(FrameError::Prefix(_))
        ));
    }
}
