//! The pinner's decisions (issue #6), apart from IO: when to audit a
//! holder, how a peer is rated, when a segment needs repair, which pieces
//! to rebuild from which, and which peers may receive pieces. Every
//! function here is a plain function of (now, state, seeded RNG); the node's
//! event loop runs the audits and repairs and persists the state.
//!
//! Times are unix seconds on the node's [`Clock`](crate::node::Clock), the
//! clock storage terms use, so the simulator's faster clock drives them.

use std::collections::HashSet;

use cairn_protocol::erasure::Scheme;
use libp2p::PeerId;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Upkeep settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// Mean time between two audits of one piece on its holder, in seconds.
    /// Audits of a piece form a Poisson process, so a holder cannot tell
    /// when the next one comes. Default 4 h: a dropped piece escapes a
    /// day of audits with chance e^-6 = 0.25% (docs/BENCHMARKS.md).
    pub audit_every: u64,
    /// An outcome counts half as much after this long, in seconds: old
    /// failures fade, and so does an old record of passing. Default 7 days.
    pub half_life: u64,
    /// How long a holder may be unreachable before its pieces count as lost
    /// for repair, in seconds. A restart takes far less; an unreachable
    /// holder is never counted as failing an audit. Default 1 h.
    pub offline_grace: u64,
    /// The chance that a holder is lost between a segment's repair starting
    /// and finishing, used to choose each scheme's repair threshold.
    /// Default 0.01.
    pub loss_per_repair: f64,
    /// The highest chance of losing a segment during its repair that the
    /// threshold allows. Default 1e-6.
    pub max_loss: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            audit_every: 4 * 3600,
            half_life: 7 * 24 * 3600,
            offline_grace: 3600,
            loss_per_repair: 0.01,
            max_loss: 1e-6,
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ConfigError {
    #[error("{0} must be at least 1 s")]
    Zero(&'static str),
    #[error("{0} must be a probability in (0, 1)")]
    Probability(&'static str),
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("audit_every", self.audit_every),
            ("half_life", self.half_life),
            ("offline_grace", self.offline_grace),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        for (name, p) in [
            ("loss_per_repair", self.loss_per_repair),
            ("max_loss", self.max_loss),
        ] {
            if !(p > 0.0 && p < 1.0) {
                return Err(ConfigError::Probability(name));
            }
        }
        Ok(())
    }
}

/// When to audit a piece next: `now` plus an exponential gap with mean
/// `config.audit_every` (at least 1 s).
pub fn next_audit(now: u64, config: &Config, rng: &mut impl Rng) -> u64 {
    now + exponential(config.audit_every, rng)
}

/// When to audit again a piece whose holder was excused a late answer
/// ([`Outcome::Late`]): like [`next_audit`] with an eighth of the mean, so
/// a holder that rebuilt the piece for that audit cannot count on having
/// long to drop it again.
pub fn recheck_at(now: u64, config: &Config, rng: &mut impl Rng) -> u64 {
    now + exponential(config.audit_every / 8, rng)
}

/// An exponential gap with `mean` seconds, at least 1 s.
fn exponential(mean: u64, rng: &mut impl Rng) -> u64 {
    // -ln(U) × mean with U in (0, 1]: memoryless, so never predictable.
    let u: f64 = 1.0 - rng.r#gen::<f64>();
    ((-u.ln() * mean as f64).round() as u64).max(1)
}

/// When to renew a piece whose term ends at `expires_at`, when renewals
/// run for `term`: once a quarter of a term is left, so a renewal has
/// days of retries (at the default 30 days) before the piece would lapse,
/// and a piece just renewed is next due three quarters of a term later.
/// 0 (due at once) when the expiry is unknown.
pub fn renew_at(expires_at: u64, term: u64) -> u64 {
    expires_at.saturating_sub(term / 4)
}

/// What came of one audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A valid proof within the time limit; how long the answer took, ms.
    Passed { answer_ms: u32 },
    /// The holder answered that it does not have the piece, or sent a proof
    /// that does not verify.
    Failed,
    /// Connected, but no valid answer within the time limit: a holder that
    /// must first fetch or rebuild the piece.
    TooSlow,
    /// Too slow, but excused: the peer had no other late answer within the
    /// last half-life ([`Reputation::judge`]). An honest holder can stall
    /// once (a busy disk, a busy core); its piece still counts and is
    /// audited again soon ([`recheck_at`]), where a second late answer fails.
    Late,
    /// The holder could not be reached: down, restarting or gone. Not a
    /// failure; it only lowers uptime.
    Unreachable,
}

/// A peer's record as an auditor sees it. Counts decay with the half-life,
/// so they weigh recent outcomes most; persisted as is.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Reputation {
    /// When the counts were last decayed, unix seconds.
    pub updated: u64,
    pub passed: f64,
    /// Failed and too-slow audits.
    pub failed: f64,
    pub unreachable: f64,
    /// Late answers, excused or not. Absent in records written before it
    /// was kept: none.
    #[serde(default)]
    pub late: f64,
    /// Mean answer time of passed audits, ms, weighted like the counts.
    pub answer_ms: f64,
}

/// A peer may receive pieces again once its failures have faded to this
/// weight: one failure takes two half-lives.
const FAILED_FORGIVEN: f64 = 0.25;
/// A late answer is excused while the peer's earlier ones have faded to
/// this weight: one late answer per half-life.
const LATE_EXCUSED: f64 = 0.5;

impl Reputation {
    /// The record as it stands at `now`.
    pub fn at(&self, now: u64, config: &Config) -> Reputation {
        let elapsed = now.saturating_sub(self.updated) as f64;
        let f = 0.5f64.powf(elapsed / config.half_life as f64);
        Reputation {
            updated: now.max(self.updated),
            passed: self.passed * f,
            failed: self.failed * f,
            unreachable: self.unreachable * f,
            late: self.late * f,
            answer_ms: self.answer_ms,
        }
    }

    /// How an audit `outcome` at `now` counts for this peer: a too-slow
    /// answer is [`Outcome::Late`] (excused) if the peer's earlier late
    /// answers have faded; anything else is as it was. The pinner judges the
    /// answers to audits run together by the records as they began.
    pub fn judge(&self, now: u64, outcome: Outcome, config: &Config) -> Outcome {
        match outcome {
            Outcome::TooSlow if self.at(now, config).late <= LATE_EXCUSED => Outcome::Late,
            other => other,
        }
    }

    /// The record after `outcome` at `now`.
    pub fn record(&self, now: u64, outcome: Outcome, config: &Config) -> Reputation {
        let mut r = self.at(now, config);
        match outcome {
            Outcome::Passed { answer_ms } => {
                let w = r.passed;
                r.answer_ms = (r.answer_ms * w + f64::from(answer_ms)) / (w + 1.0);
                r.passed += 1.0;
            }
            Outcome::Failed => r.failed += 1.0,
            Outcome::TooSlow => {
                r.failed += 1.0;
                r.late += 1.0;
            }
            Outcome::Late => r.late += 1.0,
            Outcome::Unreachable => r.unreachable += 1.0,
        }
        r
    }

    /// From 0 (only failures) to 1 (only passes): passes over all answered
    /// audits, with one pass and one failure assumed for a peer never
    /// audited (0.5), times the fraction of audits it was reachable for.
    pub fn score(&self, now: u64, config: &Config) -> f64 {
        let r = self.at(now, config);
        let answered = (r.passed + 1.0) / (r.passed + r.failed + 2.0);
        let reached = (r.passed + r.failed + 1.0) / (r.passed + r.failed + r.unreachable + 1.0);
        answered * reached
    }

    /// Whether the peer may receive new pieces: no failed audit that has not
    /// yet faded.
    pub fn in_good_standing(&self, now: u64, config: &Config) -> bool {
        self.at(now, config).failed <= FAILED_FORGIVEN
    }
}

/// The healthy-piece count at or below which a segment is repaired: the
/// smallest `t` in `k+1 ..= k+m-1` such that losing more than `t - k` of `t`
/// holders during the repair, each with chance `loss_per_repair`, has a
/// chance of at most `max_loss`; `k + m - 1` (repair at the first loss) if
/// none does.
pub fn repair_threshold(scheme: Scheme, config: &Config) -> u32 {
    let (k, m) = (scheme.k, scheme.m);
    if m <= 1 {
        return k;
    }
    (k + 1..k + m)
        .find(|&t| binomial_tail(t, t - k + 1, config.loss_per_repair) <= config.max_loss)
        .unwrap_or(k + m - 1)
}

/// P(X ≥ at_least) for X ~ Binomial(n, p).
fn binomial_tail(n: u32, at_least: u32, p: f64) -> f64 {
    let mut c = 1.0f64; // C(n, 0)
    let mut sum = 0.0;
    for i in 0..=n {
        if i >= at_least {
            sum += c * p.powi(i as i32) * (1.0 - p).powi((n - i) as i32);
        }
        c = c * f64::from(n - i) / f64::from(i + 1);
    }
    sum
}

/// Repair traffic per rebuilt piece, in piece sizes, when a segment is
/// repaired at `threshold` healthy pieces back to `k + m`: `k` pieces are
/// fetched and `k + m - threshold` uploaded.
pub fn repair_cost(scheme: Scheme, threshold: u32) -> f64 {
    let rebuilt = f64::from(scheme.k + scheme.m - threshold);
    (f64::from(scheme.k) + rebuilt) / rebuilt
}

/// What the pinner knows of one piece of a segment.
#[derive(Debug, Clone, PartialEq)]
pub struct PieceView {
    pub holder: PeerId,
    pub state: HolderState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HolderState {
    /// Passed its last audit, or not audited yet since it stored the piece.
    Healthy,
    /// Failed or was too slow at its last audit of this piece.
    Failed,
    /// Unreachable since this time (unix seconds).
    Unreachable { since: u64 },
}

impl PieceView {
    /// Whether the piece counts towards the segment's redundancy at `now`:
    /// a holder that is down for less than the grace is assumed to return.
    pub fn counts(&self, now: u64, config: &Config) -> bool {
        match self.state {
            HolderState::Healthy => true,
            HolderState::Failed => false,
            HolderState::Unreachable { since } => now.saturating_sub(since) < config.offline_grace,
        }
    }
}

/// What a segment needs.
#[derive(Debug, Clone, PartialEq)]
pub enum SegmentPlan {
    /// Above its repair threshold.
    Healthy { counted: u32 },
    /// At or below the threshold: fetch `sources` (k piece indices whose
    /// holders count, data pieces first) and rebuild `rebuild` onto new
    /// holders.
    Repair {
        counted: u32,
        sources: Vec<usize>,
        rebuild: Vec<usize>,
    },
    /// Fewer than k pieces count: nothing can rebuild it now. Pieces on
    /// unreachable holders may still return.
    Unrecoverable { counted: u32 },
}

/// Plans a segment whose `k + m` pieces are `pieces` (index order, data
/// pieces first; `None` where no holder is known).
pub fn plan_segment(
    scheme: Scheme,
    pieces: &[Option<PieceView>],
    now: u64,
    config: &Config,
) -> SegmentPlan {
    let counting: Vec<usize> = pieces
        .iter()
        .enumerate()
        .filter(|(_, p)| p.as_ref().is_some_and(|p| p.counts(now, config)))
        .map(|(i, _)| i)
        .collect();
    let counted = counting.len() as u32;
    if counted < scheme.k {
        return SegmentPlan::Unrecoverable { counted };
    }
    if counted > repair_threshold(scheme, config) {
        return SegmentPlan::Healthy { counted };
    }
    let rebuild = (0..pieces.len())
        .filter(|i| !counting.contains(i))
        .collect();
    SegmentPlan::Repair {
        counted,
        sources: counting[..scheme.k as usize].to_vec(),
        rebuild,
    }
}

/// Picks up to `n` peers for new pieces of one segment: never one in
/// `exclude` (it holds a piece of the segment already) or out of good
/// standing, best score first, ties in random order.
pub fn choose_holders(
    candidates: &[(PeerId, Reputation)],
    exclude: &HashSet<PeerId>,
    n: usize,
    now: u64,
    config: &Config,
    rng: &mut impl Rng,
) -> Vec<PeerId> {
    let mut eligible: Vec<(f64, u64, PeerId)> = candidates
        .iter()
        .filter(|(p, r)| !exclude.contains(p) && r.in_good_standing(now, config))
        .map(|(p, r)| (r.score(now, config), rng.r#gen(), *p))
        .collect();
    eligible.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut seen = HashSet::new();
    eligible
        .into_iter()
        .filter(|(_, _, p)| seen.insert(*p))
        .take(n)
        .map(|(_, _, p)| p)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng as _;
    use rand::rngs::StdRng;

    #[test]
    fn renewals_fall_due_with_a_quarter_term_left() {
        let term = 30 * 86_400;
        let now = 1_000_000_000;
        // Just renewed: due three quarters of a term later, never at once.
        assert_eq!(renew_at(now + term, term), now + term * 3 / 4);
        assert!(renew_at(now + term, term) > now);
        assert_eq!(renew_at(0, term), 0, "unknown expiry: due at once");
        // A longer term than the pinner's own waits until a quarter of the
        // pinner's term is left.
        assert_eq!(renew_at(now + 4 * term, term), now + 4 * term - term / 4);
    }

    #[test]
    fn audit_gaps_are_exponential_with_the_configured_mean() {
        let config = Config::default();
        let mut rng = StdRng::seed_from_u64(1);
        let n = 20_000;
        let gaps: Vec<u64> = (0..n)
            .map(|_| next_audit(1000, &config, &mut rng) - 1000)
            .collect();
        let mean = gaps.iter().sum::<u64>() as f64 / n as f64;
        let want = config.audit_every as f64;
        assert!((mean - want).abs() < want * 0.03, "mean {mean}");
        // Memoryless: P(gap > mean) = 1/e, so gaps cannot be predicted.
        let over = gaps.iter().filter(|&&g| g as f64 > want).count() as f64 / n as f64;
        assert!((over - (-1f64).exp()).abs() < 0.02, "{over}");
        assert!(gaps.iter().all(|&g| g >= 1));
        // The same seed, the same schedule.
        let mut again = StdRng::seed_from_u64(1);
        assert_eq!(next_audit(1000, &config, &mut again), 1000 + gaps[0]);
    }

    #[test]
    fn failures_fade_with_the_half_life_and_standing_returns() {
        let config = Config::default();
        let h = config.half_life;
        let r = Reputation::default().record(0, Outcome::Failed, &config);
        assert!(!r.in_good_standing(0, &config));
        assert!(!r.in_good_standing(2 * h - 1, &config));
        assert!(r.in_good_standing(2 * h, &config));
        let later = r.at(h, &config);
        assert!((later.failed - 0.5).abs() < 1e-9);
        // Too slow counts as failing, excused late does not; unreachable
        // does not.
        let slow = Reputation::default().record(0, Outcome::TooSlow, &config);
        assert!(!slow.in_good_standing(0, &config));
        let late = Reputation::default().record(0, Outcome::Late, &config);
        assert!(late.in_good_standing(0, &config));
        let down = Reputation::default().record(0, Outcome::Unreachable, &config);
        assert!(down.in_good_standing(0, &config));
    }

    #[test]
    fn one_late_answer_per_half_life_is_excused() {
        let config = Config::default();
        let h = config.half_life;
        let slow = Outcome::TooSlow;
        let pass = Outcome::Passed { answer_ms: 9 };
        // An honest holder stalls once: excused, not a failure.
        let mut r = Reputation::default().record(0, pass, &config);
        assert_eq!(r.judge(10, slow, &config), Outcome::Late);
        r = r.record(10, Outcome::Late, &config);
        assert_eq!(r.failed, 0.0);
        // Late again within the half-life, even after passing in between
        // (a lazy holder that kept the rebuilt piece for the recheck):
        // a failure.
        r = r.record(20, pass, &config);
        assert_eq!(r.judge(30, slow, &config), Outcome::TooSlow);
        r = r.record(30, Outcome::TooSlow, &config);
        assert!(!r.in_good_standing(30, &config));
        // Excused again once the late answers have faded below one.
        assert_eq!(r.judge(30 + h, slow, &config), Outcome::TooSlow);
        assert_eq!(r.judge(30 + 2 * h, slow, &config), Outcome::Late);
        // Other outcomes are as they were.
        for o in [pass, Outcome::Failed, Outcome::Unreachable] {
            assert_eq!(Reputation::default().judge(0, o, &config), o);
        }
    }

    #[test]
    fn rechecks_come_sooner_than_audits() {
        let config = Config::default();
        let mut rng = StdRng::seed_from_u64(2);
        let n = 20_000;
        let mean = (0..n)
            .map(|_| recheck_at(1000, &config, &mut rng) - 1000)
            .sum::<u64>() as f64
            / n as f64;
        let want = (config.audit_every / 8) as f64;
        assert!((mean - want).abs() < want * 0.03, "mean {mean}");
    }

    #[test]
    fn score_ranks_passing_reachable_peers_first() {
        let config = Config::default();
        let pass = Outcome::Passed { answer_ms: 20 };
        let mut good = Reputation::default();
        let mut flaky = Reputation::default();
        let mut liar = Reputation::default();
        for t in 0..10 {
            good = good.record(t, pass, &config);
            flaky = flaky.record(
                t,
                if t % 2 == 0 {
                    pass
                } else {
                    Outcome::Unreachable
                },
                &config,
            );
            liar = liar.record(t, if t == 5 { Outcome::Failed } else { pass }, &config);
        }
        let (g, f, l) = (
            good.score(10, &config),
            flaky.score(10, &config),
            liar.score(10, &config),
        );
        let new = Reputation::default().score(10, &config);
        // Half the time down weighs about as much as never audited.
        assert!(g > l && l > new && g > f && f < 0.5, "{g} {f} {l} {new}");
        assert!((good.answer_ms - 20.0).abs() < 1e-9);
    }

    #[test]
    fn an_honest_restart_is_never_a_failure() {
        // Down for a few minutes: unreachable at one audit, back at the next.
        let config = Config::default();
        let r = Reputation::default()
            .record(0, Outcome::Passed { answer_ms: 10 }, &config)
            .record(100, Outcome::Unreachable, &config)
            .record(400, Outcome::Passed { answer_ms: 10 }, &config);
        assert_eq!(r.failed, 0.0);
        assert!(r.in_good_standing(400, &config));
        // Its pieces still count while it is down for less than the grace.
        let view = PieceView {
            holder: PeerId::random(),
            state: HolderState::Unreachable { since: 100 },
        };
        assert!(view.counts(100 + config.offline_grace - 1, &config));
        assert!(!view.counts(100 + config.offline_grace, &config));
    }

    #[test]
    fn thresholds_follow_the_durability_model() {
        let config = Config::default();
        // 6+3: even two spare pieces leave P(lose ≥ 3 of 8) = 5.4e-5 > 1e-6,
        // so it repairs at the first loss.
        assert_eq!(repair_threshold(Scheme { k: 6, m: 3 }, &config), 8);
        // 10+20: repair at 14 healthy (P(lose ≥ 5 of 14) ≈ 1.9e-7), rebuilding
        // 16 pieces from 10: 1.63 piece sizes per rebuilt piece.
        let wide = Scheme { k: 10, m: 20 };
        let t = repair_threshold(wide, &config);
        assert_eq!(t, 14);
        assert!(binomial_tail(t, t - 10 + 1, 0.01) <= 1e-6);
        assert!(binomial_tail(t - 1, t - 10, 0.01) > 1e-6);
        assert!((repair_cost(wide, t) - 26.0 / 16.0).abs() < 1e-9);
        // The tail sums to 1 from 0 and matches a direct case.
        assert!((binomial_tail(9, 0, 0.3) - 1.0).abs() < 1e-12);
        assert!((binomial_tail(2, 2, 0.5) - 0.25).abs() < 1e-12);
    }

    fn healthy() -> Option<PieceView> {
        Some(PieceView {
            holder: PeerId::random(),
            state: HolderState::Healthy,
        })
    }

    #[test]
    fn segments_are_repaired_at_the_threshold_from_data_pieces_first() {
        let config = Config::default();
        let wide = Scheme { k: 10, m: 20 };
        let mut pieces: Vec<Option<PieceView>> = (0..30).map(|_| healthy()).collect();
        // Lose pieces 0..15 (the data pieces and five parity): 15 left, one
        // above the threshold.
        for p in &mut pieces[..15] {
            *p = None;
        }
        assert_eq!(
            plan_segment(wide, &pieces, 0, &config),
            SegmentPlan::Healthy { counted: 15 }
        );
        pieces[15] = Some(PieceView {
            holder: PeerId::random(),
            state: HolderState::Failed,
        });
        let SegmentPlan::Repair {
            counted,
            sources,
            rebuild,
        } = plan_segment(wide, &pieces, 0, &config)
        else {
            panic!("expected a repair");
        };
        assert_eq!(counted, 14);
        assert_eq!(sources, (16..26).collect::<Vec<_>>());
        assert_eq!(rebuild, (0..16).collect::<Vec<_>>());

        // A holder down past the grace stops counting; below k nothing helps.
        let small = Scheme { k: 2, m: 1 };
        let down = Some(PieceView {
            holder: PeerId::random(),
            state: HolderState::Unreachable { since: 0 },
        });
        let pieces = vec![healthy(), down, None];
        assert!(matches!(
            plan_segment(small, &pieces, 10, &config),
            SegmentPlan::Repair { counted: 2, .. }
        ));
        assert_eq!(
            plan_segment(small, &pieces, config.offline_grace, &config),
            SegmentPlan::Unrecoverable { counted: 1 }
        );
    }

    #[test]
    fn new_pieces_go_to_peers_in_good_standing_not_already_holding() {
        let config = Config::default();
        let mut rng = StdRng::seed_from_u64(3);
        let pass = Outcome::Passed { answer_ms: 5 };
        let peers: Vec<PeerId> = (0..6).map(|_| PeerId::random()).collect();
        let mut reps = vec![Reputation::default(); 6];
        reps[0] = reps[0].record(0, pass, &config).record(1, pass, &config);
        reps[1] = reps[1].record(0, Outcome::Failed, &config);
        reps[2] = reps[2].record(0, pass, &config);
        let candidates: Vec<(PeerId, Reputation)> =
            peers.iter().copied().zip(reps.iter().copied()).collect();
        let exclude: HashSet<PeerId> = [peers[2]].into();
        let chosen = choose_holders(&candidates, &exclude, 3, 10, &config, &mut rng);
        assert_eq!(chosen.len(), 3);
        assert_eq!(chosen[0], peers[0], "best score first");
        assert!(!chosen.contains(&peers[1]), "failed an audit");
        assert!(!chosen.contains(&peers[2]), "holds a piece already");
        // Asking for more than there are gives every eligible peer once.
        let all = choose_holders(&candidates, &exclude, 10, 10, &config, &mut rng);
        assert_eq!(all.len(), 4);
        // Two half-lives later the failure has faded.
        let later = 10 + 2 * config.half_life;
        let all = choose_holders(&candidates, &exclude, 10, later, &config, &mut rng);
        assert!(all.contains(&peers[1]));
    }

    #[test]
    fn config_validation_names_the_bad_field() {
        assert_eq!(Config::default().validate(), Ok(()));
        let c = Config {
            half_life: 0,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("half_life")));
        let c = Config {
            max_loss: 1.0,
            ..Config::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Probability("max_loss")));
    }
}
