//! Cairn's simulator: many real nodes in one process ([`network`]), and
//! scenarios ([`scenario`]) run on them ([`run`]) with reports ([`report`]),
//! and how many nodes one process holds ([`scale`]).

pub mod lazy;
pub mod network;
pub mod pins;
pub mod report;
pub mod run;
pub mod scale;
pub mod scenario;

pub use network::{Config, Network, State};
