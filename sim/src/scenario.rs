//! Scenarios: what a simulated network lives through, read from TOML, and
//! the schedule of events drawn from it.
//!
//! The schedule is a plain function of the scenario (its seed included):
//! the same scenario always gives the same events at the same simulated
//! times. Which node an event hits is drawn as a number (`pick`) and
//! resolved against the network's state when the event runs.

use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use bytesize::ByteSize;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};

/// A scenario file. Every field has a default, so `name = "x"` alone runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Scenario {
    pub name: String,
    /// Seeds every random choice: schedule, node picks, content.
    pub seed: u64,
    /// Simulated time the run covers. Default 2h.
    #[serde(with = "humantime_serde")]
    pub duration: Duration,
    /// Simulated seconds per real second. Default 60.
    pub speed: u32,
    /// How often outcomes are sampled, in simulated time. Default 10m.
    #[serde(with = "humantime_serde")]
    pub sample_every: Duration,
    pub network: NetworkSpec,
    pub workload: Workload,
    pub churn: Churn,
    pub adversaries: Adversaries,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkSpec {
    /// Storage nodes at the start. Default 20.
    pub nodes: usize,
    /// Disk each node contributes. Default 256 MiB.
    pub capacity: ByteSize,
    /// Noise on the in-memory transport (plaintext otherwise). Default true.
    pub noise: bool,
    /// Erasure scheme of every add, `k+m`. Default the network's (6+3).
    pub scheme: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Adds per simulated hour (a Poisson process). Default 10.
    pub adds_per_hour: f64,
    /// Size of each add, picked uniformly from this list. Default 1 MiB.
    pub sizes: Vec<ByteSize>,
    /// Gets per simulated hour, each of content added before. Default 30.
    pub gets_per_hour: f64,
    /// Adds and gets running at once at most; more wait. Default 8.
    pub concurrency: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Churn {
    /// New nodes joining per simulated hour. Default 0.
    pub joins_per_hour: f64,
    /// Nodes leaving for good (their disk gone) per simulated hour. Default 0.
    pub departures_per_hour: f64,
    /// Nodes crashing per simulated hour. Default 0.
    pub crashes_per_hour: f64,
    /// A crashed node restarts this long after (simulated). Default 30m.
    #[serde(with = "humantime_serde")]
    pub restart_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Adversaries {
    /// Share of the starting nodes that misbehave. Default 0.
    pub fraction: f64,
    pub behaviour: Behaviour,
    /// For `slow`: how late every answer comes (real time). Default 2s.
    #[serde(with = "humantime_serde")]
    pub delay: Duration,
    /// For `drop` and `corrupt`: share of its pieces an adversary damages
    /// at each sample. Default 0.5.
    pub damage: f64,
}

/// How an adversary misbehaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Behaviour {
    /// Serves pieces with a byte flipped.
    Garbage,
    /// Never answers fetches.
    Stall,
    /// Answers everything late.
    Slow,
    /// Deletes pieces behind its back, answers for the rest.
    Drop,
    /// Damages pieces on its disk.
    Corrupt,
}

impl Default for Scenario {
    fn default() -> Self {
        Scenario {
            name: "unnamed".into(),
            seed: 0,
            duration: Duration::from_secs(2 * 3600),
            speed: 60,
            sample_every: Duration::from_secs(600),
            network: NetworkSpec::default(),
            workload: Workload::default(),
            churn: Churn::default(),
            adversaries: Adversaries::default(),
        }
    }
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            nodes: 20,
            capacity: ByteSize::mib(256),
            noise: true,
            scheme: None,
        }
    }
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            adds_per_hour: 10.0,
            sizes: vec![ByteSize::mib(1)],
            gets_per_hour: 30.0,
            concurrency: 8,
        }
    }
}

impl Default for Churn {
    fn default() -> Self {
        Churn {
            joins_per_hour: 0.0,
            departures_per_hour: 0.0,
            crashes_per_hour: 0.0,
            restart_after: Duration::from_secs(1800),
        }
    }
}

impl Default for Adversaries {
    fn default() -> Self {
        Adversaries {
            fraction: 0.0,
            behaviour: Behaviour::Garbage,
            delay: Duration::from_secs(2),
            damage: 0.5,
        }
    }
}

/// Largest single add: content is generated in memory.
pub const MAX_ADD: u64 = 256 << 20;
/// Most events a schedule may hold.
pub const MAX_EVENTS: usize = 1_000_000;

impl Scenario {
    pub fn from_toml(text: &str) -> Result<Scenario> {
        let s: Scenario = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    pub fn validate(&self) -> Result<()> {
        ensure!(self.network.nodes > 0, "network.nodes must be at least 1");
        ensure!(self.speed > 0, "speed must be at least 1");
        ensure!(
            !self.sample_every.is_zero(),
            "sample_every must be more than 0"
        );
        ensure!(!self.duration.is_zero(), "duration must be more than 0");
        let w = &self.workload;
        ensure!(!w.sizes.is_empty(), "workload.sizes must list a size");
        for s in &w.sizes {
            ensure!(
                s.as_u64() <= MAX_ADD,
                "workload size {s} is over the simulator's {} limit",
                ByteSize(MAX_ADD)
            );
        }
        ensure!(w.concurrency > 0, "workload.concurrency must be at least 1");
        let rates = [
            ("workload.adds_per_hour", w.adds_per_hour),
            ("workload.gets_per_hour", w.gets_per_hour),
            ("churn.joins_per_hour", self.churn.joins_per_hour),
            ("churn.departures_per_hour", self.churn.departures_per_hour),
            ("churn.crashes_per_hour", self.churn.crashes_per_hour),
        ];
        let hours = self.duration.as_secs_f64() / 3600.0;
        let mut expected = 0.0;
        for (name, rate) in rates {
            ensure!(
                rate.is_finite() && rate >= 0.0,
                "{name} must be a rate of 0 or more"
            );
            expected += rate * hours;
        }
        ensure!(
            expected <= MAX_EVENTS as f64 / 2.0,
            "the scenario expects {expected:.0} events; at most {} are allowed",
            MAX_EVENTS / 2
        );
        let a = &self.adversaries;
        ensure!(
            (0.0..=1.0).contains(&a.fraction),
            "adversaries.fraction must be between 0 and 1"
        );
        ensure!(
            (0.0..=1.0).contains(&a.damage),
            "adversaries.damage must be between 0 and 1"
        );
        if let Some(s) = &self.network.scheme {
            s.parse::<cairn_protocol::erasure::Scheme>()
                .map_err(|e| anyhow::anyhow!("network.scheme {s:?}: {e}"))?;
        }
        Ok(())
    }
}

/// One thing that happens to the network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Action {
    /// Content number `content` (0, 1, …) of `size` bytes is added.
    Add {
        content: u64,
        size: u64,
    },
    /// A get of content added before: the `pick`-th, modulo those added.
    Get {
        pick: u64,
    },
    Join,
    /// A node up leaves for good.
    Leave {
        pick: u64,
    },
    /// A node up crashes; `crash` numbers the crashes of a run.
    Crash {
        crash: u64,
        pick: u64,
    },
    /// The node that crash number `crash` took down restarts.
    Restart {
        crash: u64,
    },
    /// Outcomes are measured.
    Sample,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Simulated time since the start, in milliseconds.
    pub at_ms: u64,
    #[serde(flatten)]
    pub action: Action,
}

/// The events of a run, in time order; events at the same time in the order
/// their kinds are drawn (adds, gets, joins, departures, crashes, restarts,
/// samples).
pub fn schedule(s: &Scenario) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(s.seed);
    let end = s.duration.as_millis() as u64;
    let mut events = Vec::new();
    let mut at = |at_ms, action| events.push(Event { at_ms, action });
    // One stream per kind of event, each a Poisson process of its rate.
    let sizes = &s.workload.sizes;
    for (content, t) in (0..).zip(arrivals(&mut rng, s.workload.adds_per_hour, end)) {
        let size = sizes[rng.gen_range(0..sizes.len())].as_u64();
        at(t, Action::Add { content, size });
    }
    for t in arrivals(&mut rng, s.workload.gets_per_hour, end) {
        at(t, Action::Get { pick: rng.r#gen() });
    }
    for t in arrivals(&mut rng, s.churn.joins_per_hour, end) {
        at(t, Action::Join);
    }
    for t in arrivals(&mut rng, s.churn.departures_per_hour, end) {
        at(t, Action::Leave { pick: rng.r#gen() });
    }
    let after = s.churn.restart_after.as_millis() as u64;
    for (crash, t) in (0..).zip(arrivals(&mut rng, s.churn.crashes_per_hour, end)) {
        at(
            t,
            Action::Crash {
                crash,
                pick: rng.r#gen(),
            },
        );
        if t + after <= end {
            at(t + after, Action::Restart { crash });
        }
    }
    let every = s.sample_every.as_millis() as u64;
    for i in 0..=end / every {
        at(i * every, Action::Sample);
    }
    // Stable: ties keep the order above.
    events.sort_by_key(|e| e.at_ms);
    events.truncate(MAX_EVENTS);
    events
}

/// Times (ms) of a Poisson process of `per_hour` events over `[0, end)`.
fn arrivals(rng: &mut StdRng, per_hour: f64, end: u64) -> Vec<u64> {
    let mut out = Vec::new();
    if per_hour <= 0.0 {
        return out;
    }
    let mean_ms = 3_600_000.0 / per_hour;
    let mut t = 0.0;
    loop {
        // Exponential gap: -ln(U) × mean, U in (0, 1].
        let u: f64 = 1.0 - rng.r#gen::<f64>();
        t += -u.ln() * mean_ms;
        if t >= end as f64 || out.len() >= MAX_EVENTS {
            return out;
        }
        out.push(t as u64);
    }
}

/// A short digest of a schedule, to tell two runs had the same one.
pub fn digest(events: &[Event]) -> Result<String> {
    let json = serde_json::to_vec(events).context("cannot encode the schedule")?;
    let hash = blake3::hash(&json);
    Ok(data_encoding::HEXLOWER.encode(&hash.as_bytes()[..8]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn churny(seed: u64) -> Scenario {
        Scenario {
            seed,
            duration: Duration::from_secs(6 * 3600),
            churn: Churn {
                joins_per_hour: 2.0,
                departures_per_hour: 1.0,
                crashes_per_hour: 4.0,
                restart_after: Duration::from_secs(900),
            },
            ..Scenario::default()
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_schedule_and_another_seed_another() {
        let a = schedule(&churny(1));
        assert_eq!(a, schedule(&churny(1)));
        assert_ne!(a, schedule(&churny(2)));
        assert_eq!(digest(&a).ok(), digest(&schedule(&churny(1))).ok());
    }

    #[test]
    fn events_are_in_time_order_within_the_run_and_restarts_follow_their_crash() {
        let s = churny(5);
        let events = schedule(&s);
        let end = s.duration.as_millis() as u64;
        assert!(events.windows(2).all(|w| w[0].at_ms <= w[1].at_ms));
        assert!(events.iter().all(|e| e.at_ms <= end));
        let mut restarts = 0;
        for (i, e) in events.iter().enumerate() {
            if let Action::Restart { crash } = e.action {
                restarts += 1;
                let c = events[..i]
                    .iter()
                    .find(|c| matches!(c.action, Action::Crash { crash: n, .. } if n == crash))
                    .expect("its crash comes first");
                assert_eq!(e.at_ms, c.at_ms + 900_000);
            }
        }
        assert!(restarts > 0);
        let samples = events.iter().filter(|e| e.action == Action::Sample).count();
        assert_eq!(samples, 37, "every 10 minutes of 6 hours, both ends");
    }

    #[test]
    fn rates_come_out_near_their_means() {
        // 200 adds an hour for 50 hours: 10,000 expected, sd 100.
        let s = Scenario {
            duration: Duration::from_secs(50 * 3600),
            workload: Workload {
                adds_per_hour: 200.0,
                gets_per_hour: 0.0,
                ..Workload::default()
            },
            ..Scenario::default()
        };
        let adds = schedule(&s)
            .iter()
            .filter(|e| matches!(e.action, Action::Add { .. }))
            .count();
        assert!((9_500..=10_500).contains(&adds), "{adds}");
    }

    #[test]
    fn bad_scenarios_are_refused_with_the_field_named() {
        for (text, says) in [
            ("network = { nodes = 0 }", "network.nodes"),
            ("speed = 0", "speed"),
            ("workload = { sizes = [] }", "workload.sizes"),
            ("workload = { sizes = [\"1GiB\"] }", "limit"),
            (
                "churn = { crashes_per_hour = -1.0 }",
                "churn.crashes_per_hour",
            ),
            ("adversaries = { fraction = 2.0 }", "adversaries.fraction"),
            ("network = { scheme = \"0+3\" }", "network.scheme"),
            ("nodes = 3", "unknown field"),
            ("duration = \"forever\"", "duration"),
        ] {
            let e = Scenario::from_toml(text).expect_err(text);
            assert!(format!("{e:#}").contains(says), "{text}: {e:#}");
        }
    }

    #[test]
    fn example_scenarios_parse() -> Result<()> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
        let mut n = 0;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            let text = std::fs::read_to_string(&path)?;
            Scenario::from_toml(&text).with_context(|| path.display().to_string())?;
            n += 1;
        }
        assert!(n >= 3, "{n} example scenarios");
        Ok(())
    }
}
