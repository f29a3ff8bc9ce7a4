//! What a run found: a JSON report, a CSV time series, SVG plots and a
//! summary for the terminal.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::scenario::Scenario;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: Scenario,
    /// Digest of the event schedule: equal for runs of the same scenario.
    pub schedule_digest: String,
    pub events: usize,
    pub outcomes: Outcomes,
    pub samples: Vec<Sample>,
}

/// Totals of a run.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcomes {
    pub adds: u64,
    pub adds_failed: u64,
    pub gets: u64,
    pub gets_ok: u64,
    pub gets_failed: u64,
    /// Gets that returned the right bytes, of those finished.
    pub get_success: f64,
    /// Latency of successful gets, real milliseconds.
    pub get_p50_ms: f64,
    pub get_p90_ms: f64,
    pub get_p99_ms: f64,
    pub joins: u64,
    pub departures: u64,
    pub crashes: u64,
    pub restarts: u64,
    /// Content added successfully.
    pub contents: usize,
    /// Of those, content that no set of healthy pieces on nodes up can
    /// rebuild at the end (some segment has fewer than k).
    pub contents_lost: usize,
    /// Indices of the misbehaving nodes.
    pub adversaries: Vec<usize>,
    /// How far the run fell behind its schedule at worst (real ms): above a
    /// few hundred, lower the speed for fidelity.
    pub lag_ms: u64,
    pub startup_s: f64,
    pub wall_s: f64,
}

/// The network at one moment of simulated time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Simulated seconds since the start.
    pub t_s: f64,
    pub nodes_up: usize,
    pub contents: usize,
    pub contents_lost: usize,
    /// Gets so far.
    pub gets_ok: u64,
    pub gets_failed: u64,
    /// Latency of the gets since the previous sample (real ms; 0 if none).
    pub get_p50_ms: f64,
    pub get_p99_ms: f64,
    pub pieces_min: u64,
    pub pieces_mean: f64,
    pub pieces_max: u64,
}

/// The `q` quantile of sorted values (nearest rank); 0 for none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Report {
    /// Writes `report.json`, `samples.csv` and the plots into `dir`.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let json = dir.join("report.json");
        let text = serde_json::to_string_pretty(self).context("cannot encode the report")?;
        std::fs::write(&json, text).with_context(|| format!("cannot write {}", json.display()))?;
        let csv = dir.join("samples.csv");
        let mut w = csv::Writer::from_path(&csv)
            .with_context(|| format!("cannot write {}", csv.display()))?;
        for s in &self.samples {
            w.serialize(s)?;
        }
        w.flush()?;
        self.plots(dir)
    }

    fn plots(&self, dir: &Path) -> Result<()> {
        let t: Vec<f64> = self.samples.iter().map(|s| s.t_s / 3600.0).collect();
        let col = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> { self.samples.iter().map(f).collect() };
        // Success rate of the gets finished between two samples.
        let mut success = Vec::new();
        let (mut ok0, mut failed0) = (0, 0);
        for s in &self.samples {
            let (ok, failed) = (s.gets_ok - ok0, s.gets_failed - failed0);
            success.push(if ok + failed == 0 {
                f64::NAN
            } else {
                ok as f64 / (ok + failed) as f64
            });
            (ok0, failed0) = (s.gets_ok, s.gets_failed);
        }
        plot(
            &dir.join("content.svg"),
            "Content added and lost",
            "content",
            &t,
            &[
                ("added", col(&|s| s.contents as f64)),
                ("lost", col(&|s| s.contents_lost as f64)),
            ],
        )?;
        plot(
            &dir.join("gets.svg"),
            "Get success rate (per sample interval)",
            "success",
            &t,
            &[("success", success)],
        )?;
        plot(
            &dir.join("latency.svg"),
            "Get latency (real ms)",
            "ms",
            &t,
            &[
                ("p50", col(&|s| s.get_p50_ms)),
                ("p99", col(&|s| s.get_p99_ms)),
            ],
        )?;
        plot(
            &dir.join("pieces.svg"),
            "Pieces per node, and nodes up",
            "count",
            &t,
            &[
                ("min", col(&|s| s.pieces_min as f64)),
                ("mean", col(&|s| s.pieces_mean)),
                ("max", col(&|s| s.pieces_max as f64)),
                ("nodes up", col(&|s| s.nodes_up as f64)),
            ],
        )
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let o = &self.outcomes;
        let s = &self.scenario;
        let mut out = String::new();
        let mut row = |k: &str, v: String| {
            let _ = writeln!(out, "  {k:<22} {v}");
        };
        row("scenario", format!("{} (seed {})", s.name, s.seed));
        row(
            "simulated",
            format!(
                "{} at {}× in {:.0} s (network up in {:.1} s)",
                humantime::format_duration(s.duration),
                s.speed,
                o.wall_s,
                o.startup_s
            ),
        );
        row(
            "schedule",
            format!("{} events, digest {}", self.events, self.schedule_digest),
        );
        row(
            "nodes",
            format!(
                "{} at start, {} joined, {} left, {} crashed, {} restarted, {} adversaries",
                s.network.nodes,
                o.joins,
                o.departures,
                o.crashes,
                o.restarts,
                o.adversaries.len()
            ),
        );
        row("adds", format!("{} ({} failed)", o.adds, o.adds_failed));
        row(
            "gets",
            format!(
                "{} ok, {} failed: {:.1}% success",
                o.gets_ok,
                o.gets_failed,
                o.get_success * 100.0
            ),
        );
        row(
            "get latency (real)",
            format!(
                "p50 {:.0} ms, p90 {:.0} ms, p99 {:.0} ms",
                o.get_p50_ms, o.get_p90_ms, o.get_p99_ms
            ),
        );
        row(
            "content lost",
            format!("{} of {}", o.contents_lost, o.contents),
        );
        if let Some(last) = self.samples.last() {
            row(
                "pieces per node",
                format!(
                    "min {}, mean {:.1}, max {}",
                    last.pieces_min, last.pieces_mean, last.pieces_max
                ),
            );
        }
        row("worst schedule lag", format!("{} ms", o.lag_ms));
        out
    }
}

const COLOURS: [RGBColor; 4] = [BLUE, RED, GREEN, MAGENTA];

fn plot(
    path: &Path,
    title: &str,
    y_label: &str,
    t: &[f64],
    series: &[(&str, Vec<f64>)],
) -> Result<()> {
    let draw = || -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let root = SVGBackend::new(path, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let x_max = t.iter().copied().fold(0.0, f64::max).max(1e-9);
        let y_max = series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max)
            .max(1.0)
            * 1.1;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max, 0.0..y_max)?;
        chart
            .configure_mesh()
            .x_desc("simulated hours")
            .y_desc(y_label)
            .draw()?;
        for ((name, values), colour) in series.iter().zip(COLOURS.iter().cycle()) {
            let points = t
                .iter()
                .zip(values)
                .filter(|(_, v)| v.is_finite())
                .map(|(&x, &y)| (x, y));
            chart
                .draw_series(LineSeries::new(points, colour))?
                .label(*name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour));
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
        root.present()?;
        Ok(())
    };
    draw().map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), 50.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&v, 1.0), 100.0);
        assert_eq!(percentile(&[7.0], 0.5), 7.0);
        assert_eq!(percentile(&[], 0.5), 0.0);
    }
}
