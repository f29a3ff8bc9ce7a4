//! Cairn's simulator: many real nodes in one process ([`network`]), and
//! scenarios ([`scenario`]) run on them ([`run`]) with reports ([`report`]).

pub mod network;
pub mod report;
pub mod run;
pub mod scenario;

pub use network::{Config, Network, State};
