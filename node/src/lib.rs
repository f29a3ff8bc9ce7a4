//! The Cairn node and the library behind the `cairn` command.
//!
//! Networking and storage arrive with issue #3; today this crate turns files
//! and directories on disk into UnixFS DAGs ([`add`]).

pub mod add;
pub mod cli;
pub mod client;
pub mod config;
pub mod devnet;
pub mod identity;
pub mod net;
pub mod node;
pub mod store;
