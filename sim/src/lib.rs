//! Cairn's simulator: many real nodes in one process ([`network`]), and
//! scenarios run on them with reports ([`scenario`], [`report`]).

pub mod network;

pub use network::{Config, Network, State};
