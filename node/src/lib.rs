//! The Cairn node and the library behind the `cairn` command: the piece
//! store ([`store`]), the libp2p node ([`node`], [`net`]), the client side
//! of add/get/cat ([`client`]), filesystem import ([`add`]),
//! [`devnet`], and keeping pinned content alive: the pin database
//! ([`pins`]), the pinner's decisions ([`upkeep`]) and its task ([`pinner`]).

pub mod add;
pub mod api;
pub mod cli;
pub mod client;
pub mod config;
pub mod devnet;
pub mod direct;
pub mod gateway;
pub mod http;
pub mod identity;
pub mod net;
pub mod node;
pub mod pinner;
pub mod pins;
pub mod store;
pub mod upkeep;
