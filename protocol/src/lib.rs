//! Cairn's pure core: everything two Cairn implementations must agree on,
//! with no sockets, no async runtime, no clock and no randomness of its own
//! (callers pass `now` and nonces in).
//!
//! - [`address`]: a CID or sealed handle and a path under it, as IPFS links
//!   write them.
//! - [`block`]: CIDs, and checking a block against its CID.
//! - [`unixfs`]: import bytes and directories exactly as IPFS does; read
//!   content or a byte range back from blocks, verifying each one.
//! - [`car`]: CAR v1 read and write.
//! - [`erasure`]: Reed-Solomon coding of segments into pieces.
//! - [`manifest`]: the content-addressed record of how content became pieces,
//!   and the [`manifest::Packer`] that produces it while importing.
//! - [`proof`]: verified byte ranges of a piece and audit proofs.
//! - [`record`]: signed storage receipts.
//! - [`seal`]: encrypted content (`cairn add --encrypt`) and its handles.
//! - [`wire`]: the messages of Cairn's request-response protocols and their
//!   bounded codec.
//!
//! Every decoder here takes a size limit and turns malformed input into an
//! error value; none panics on input.

// Offsets and lengths are u64 on the wire and on disk and are cast to usize
// only after a bounds check; that needs usize to be 64 bits.
#[cfg(not(target_pointer_width = "64"))]
compile_error!("Cairn supports 64-bit targets only");

pub mod address;
pub mod block;
pub mod car;
pub mod erasure;
pub mod frame;
pub mod manifest;
pub mod proof;
pub mod record;
pub mod seal;
pub mod unixfs;
pub mod wire;

pub use cid::Cid;
