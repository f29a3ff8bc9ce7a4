//! What a user names content by: a CID, or a sealed handle, and a path of
//! directory entries under it, in the forms IPFS links take.

use std::fmt;
use std::str::FromStr;

use percent_encoding::percent_decode_str;

use crate::seal::{HandleError, Target};

/// `CID`, `CID/a/b`, `/ipfs/CID/a/b` or `ipfs://CID/a/b` (a URL:
/// percent-encoded, any `?query` or `#fragment` ignored). Empty segments
/// are skipped, as IPFS gateways do. A sealed handle names one file and
/// takes no path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub target: Target,
    /// Entry names, from the target's root down.
    pub path: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error(transparent)]
    Target(#[from] HandleError),
    #[error("{0:?} cannot name a directory entry")]
    Segment(String),
    #[error("a sealed-content handle names one file: it takes no path")]
    SealedPath,
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, url) = match (s.strip_prefix("ipfs://"), s.strip_prefix("/ipfs/")) {
            (Some(url), _) => (url.split(['?', '#']).next().unwrap_or_default(), true),
            (None, Some(path)) => (path, false),
            (None, None) => (s, false),
        };
        let mut parts = rest.split('/');
        let target: Target = parts.next().unwrap_or_default().parse()?;
        let mut path = Vec::new();
        for part in parts.filter(|p| !p.is_empty()) {
            let name = match url {
                true => percent_decode_str(part)
                    .decode_utf8()
                    .map_err(|_| AddressError::Segment(part.to_owned()))?
                    .into_owned(),
                false => part.to_owned(),
            };
            if name == "." || name == ".." || name.contains('/') {
                return Err(AddressError::Segment(name));
            }
            path.push(name);
        }
        if matches!(target, Target::Sealed(_)) && !path.is_empty() {
            return Err(AddressError::SealedPath);
        }
        Ok(Address { target, path })
    }
}

impl Address {
    /// `CID/a/b`, or a handle whole: parses back to the same address. For
    /// the wire to the user's own node, never for a log.
    pub fn reveal(&self) -> String {
        let mut s = self.target.reveal();
        for name in &self.path {
            s.push('/');
            s.push_str(name);
        }
        s
    }
}

/// `CID/a/b`, a handle without its key ([`Address::reveal`] has it).
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.target.fmt(f)?;
        self.path.iter().try_for_each(|name| write!(f, "/{name}"))
    }
}

impl<T: Into<Target>> From<T> for Address {
    fn from(target: T) -> Self {
        Address {
            target: target.into(),
            path: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{self, RAW};
    use crate::seal::{Handle, Key};

    #[test]
    fn every_form_of_an_ipfs_link_names_the_same_entry() {
        let cid = block::sha256_cid(RAW, b"x");
        let want = Address {
            target: Target::Plain(cid),
            path: vec!["meta".into(), "my token.json".into()],
        };
        for text in [
            format!("ipfs://{cid}/meta/my%20token.json"),
            format!("ipfs://{cid}/meta//my%20token.json?filename=x#top"),
            format!("/ipfs/{cid}/meta/my token.json"),
            format!("{cid}/meta/my token.json/"),
        ] {
            assert_eq!(text.parse::<Address>().expect(&text), want, "{text}");
        }
        assert_eq!(
            want.to_string().parse::<Address>().expect("round trip"),
            want
        );
        assert_eq!(
            cid.to_string().parse::<Address>().expect("a CID"),
            cid.into()
        );
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        let cid = block::sha256_cid(RAW, b"x");
        let handle = Handle {
            root: cid,
            key: Key([7; 32]),
        };
        for (text, check) in [
            (format!("{cid}/a/../b"), "cannot name"),
            (format!("ipfs://{cid}/a%2Fb"), "cannot name"),
            (format!("ipfs://{cid}/%FF"), "cannot name"),
            (format!("{}/a", handle.reveal()), "takes no path"),
            ("ipfs://nonsense/a".to_owned(), "invalid CID"),
        ] {
            let err = text.parse::<Address>().expect_err(&text).to_string();
            assert!(err.contains(check), "{text}: {err}");
        }
        assert_eq!(
            handle.reveal().parse::<Address>().expect("a handle"),
            handle.into()
        );
    }
}
