//! UnixFS, byte-identical to IPFS (`ipfs add --cid-version 1` defaults):
//! fixed 256 KiB chunks, raw leaves, a balanced dag-pb DAG of at most 174
//! links per node, sha2-256, CIDv1. Content of one chunk or less is its raw
//! leaf. A directory is one dag-pb node, or HAMT-sharded ([`hamt`]) once
//! its links outgrow [`MAX_DIRECTORY_LINK_BYTES`], as IPFS shards it.
//!
//! [`import`] turns bytes into blocks in bounded memory; [`read`] turns blocks
//! back into bytes, verifying every block against its CID first.

pub mod hamt;
pub mod import;
pub mod read;

pub use import::{
    BlockSink, ByteCount, DirectoryBuilder, Entry, HashLeaves, IMPORT_BATCH, Leaves, NullSink,
    import_file, import_file_with,
};
pub use read::{
    BlockSource, DirEntry, Kind, ReadError, Scope, Upcoming, export, fetch, is_leaf,
    list_directory, lookup, read_range, resolve, stat,
};

/// Bytes per leaf chunk.
pub const CHUNK_SIZE: usize = 262_144;
/// Most links a file node holds; a balanced DAG fills each node to this.
pub const MAX_LINKS: usize = 174;
/// Largest block Cairn accepts from any source (the bitswap limit of IPFS).
pub const MAX_BLOCK_SIZE: usize = 2 * 1024 * 1024;
/// A directory whose links (the bytes of their names plus CIDs) exceed this
/// many is HAMT-sharded, as IPFS does.
pub const MAX_DIRECTORY_LINK_BYTES: usize = 262_144;

/// The UnixFS `Data` message (unixfs.proto, proto2) carried in a dag-pb
/// node's Data field. Fields are written in tag order, `blocksizes`
/// unpacked, as kubo and js-ipfs-unixfs write them.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct Data {
    #[prost(enumeration = "DataType", required, tag = "1")]
    pub(crate) r#type: i32,
    #[prost(bytes = "vec", optional, tag = "2")]
    pub(crate) data: Option<Vec<u8>>,
    #[prost(uint64, optional, tag = "3")]
    pub(crate) filesize: Option<u64>,
    #[prost(uint64, repeated, packed = "false", tag = "4")]
    pub(crate) blocksizes: Vec<u64>,
    #[prost(uint64, optional, tag = "5")]
    pub(crate) hash_type: Option<u64>,
    #[prost(uint64, optional, tag = "6")]
    pub(crate) fanout: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, prost::Enumeration)]
pub(crate) enum DataType {
    Raw = 0,
    Directory = 1,
    File = 2,
    Metadata = 3,
    Symlink = 4,
    HamtShard = 5,
}
