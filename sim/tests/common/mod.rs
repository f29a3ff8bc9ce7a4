//! Shared by the upkeep tests: seeded content, and a network whose clock
//! runs fast enough for audits (every 10 simulated minutes) and the offline
//! grace (20 simulated minutes) to pass in seconds.

use std::time::Duration;

use cairn_node::{pinner, upkeep};
use cairn_sim::Config;
use rand::{RngCore as _, SeedableRng as _};

pub(crate) fn bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0; n];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// `nodes` nodes at 200× real time; answers to audits may take 1 s, since
/// every node shares the machine's two cores (timing is not what most
/// tests are about).
pub(crate) fn config(nodes: usize, seed: u64) -> Config {
    Config {
        nodes,
        seed,
        speed: 200,
        pinner: pinner::Settings {
            upkeep: upkeep::Config {
                audit_every: 600,
                offline_grace: 1200,
                ..Default::default()
            },
            audit_allowance: Duration::from_secs(1),
            ..Default::default()
        },
        ..Config::default()
    }
}
