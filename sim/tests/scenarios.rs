//! Scenarios end to end: a churn scenario rerun with its seed has the same
//! schedule and outcomes within tolerance; the `cairn-sim` command runs an
//! example scenario and writes its report.

use std::process::Command;
use std::time::Duration;

use anyhow::{Result, ensure};
use bytesize::ByteSize;
use cairn_sim::report::Report;
use cairn_sim::run::{self, Options};
use cairn_sim::scenario::{Adversaries, Behaviour, Churn, NetworkSpec, Scenario, Workload};

fn churn(seed: u64) -> Scenario {
    Scenario {
        name: "churn-test".into(),
        seed,
        duration: Duration::from_secs(3 * 3600),
        speed: 900,
        sample_every: Duration::from_secs(1800),
        network: NetworkSpec {
            nodes: 14,
            capacity: ByteSize::mib(256),
            noise: false,
            scheme: None,
        },
        workload: Workload {
            adds_per_hour: 8.0,
            sizes: vec![ByteSize::kib(256), ByteSize::mib(1)],
            gets_per_hour: 30.0,
            concurrency: 4,
        },
        churn: Churn {
            joins_per_hour: 2.0,
            departures_per_hour: 0.5,
            crashes_per_hour: 2.0,
            restart_after: Duration::from_secs(1200),
        },
        adversaries: Adversaries::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_churn_scenario_rerun_with_its_seed_gives_the_same_run() -> Result<()> {
    // Seed 4 draws 8 crashes, 8 joins and 2 departures.
    let a = run::run(&churn(4), Options::default()).await?;
    let b = run::run(&churn(4), Options::default()).await?;
    // The schedule, and what it did to the network, are identical.
    assert_eq!(a.schedule_digest, b.schedule_digest);
    assert_eq!(a.events, b.events);
    let (x, y) = (&a.outcomes, &b.outcomes);
    assert!(x.crashes > 0 && x.departures > 0 && x.joins > 0, "{x:?}");
    for (name, p, q) in [
        ("adds", x.adds, y.adds),
        ("joins", x.joins, y.joins),
        ("departures", x.departures, y.departures),
        ("crashes", x.crashes, y.crashes),
        ("restarts", x.restarts, y.restarts),
    ] {
        assert_eq!(p, q, "{name}");
    }
    let nodes = |r: &Report| r.samples.iter().map(|s| s.nodes_up).collect::<Vec<_>>();
    assert_eq!(nodes(&a), nodes(&b), "nodes up at every sample");
    // Outcomes depend on timing as well: within the tolerance docs state.
    assert!(x.adds_failed.abs_diff(y.adds_failed) <= 2, "{x:?} {y:?}");
    // A get drawn before any add has finished has nothing to fetch and is
    // skipped: how many ran depends on when the first adds finish.
    assert!(x.gets.abs_diff(y.gets) <= 2, "{x:?} {y:?}");
    assert!((x.get_success - y.get_success).abs() <= 0.05, "{x:?} {y:?}");
    assert!(
        x.contents_lost.abs_diff(y.contents_lost) <= 1,
        "{x:?} {y:?}"
    );
    assert!(x.gets_ok > 0, "{x:?}");

    let c = run::run(&churn(5), Options::default()).await?;
    assert_ne!(
        a.schedule_digest, c.schedule_digest,
        "another seed, another run"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_nodes_do_not_fail_gets_and_lost_content_is_counted() -> Result<()> {
    // A fifth of the nodes flip a byte of every piece they serve.
    let mut s = churn(9);
    s.churn = Churn::default();
    s.duration = Duration::from_secs(3600);
    s.adversaries = Adversaries {
        fraction: 0.2,
        behaviour: Behaviour::Garbage,
        ..Adversaries::default()
    };
    let r = run::run(&s, Options::default()).await?;
    let o = &r.outcomes;
    assert_eq!(o.adversaries.len(), 3);
    assert!(o.gets_ok >= 10, "{o:?}");
    assert_eq!(o.gets_failed, 0, "{o:?}");
    assert_eq!(o.contents_lost, 0, "{o:?}");

    // Nodes that delete every piece they hold: with 12 of 14 doing so,
    // content is lost and the samples say so.
    s.adversaries = Adversaries {
        fraction: 0.85,
        behaviour: Behaviour::Drop,
        damage: 1.0,
        ..Adversaries::default()
    };
    let r = run::run(&s, Options::default()).await?;
    let o = &r.outcomes;
    ensure!(o.contents > 0, "{o:?}");
    assert_eq!(o.contents_lost, o.contents, "{o:?}");
    Ok(())
}

#[test]
fn the_command_runs_an_example_scenario_and_writes_its_report() -> Result<()> {
    let out = tempfile::tempdir()?;
    let scenario = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios/garbage.toml");
    let run = Command::new(env!("CARGO_BIN_EXE_cairn-sim"))
        .args([
            "run",
            scenario,
            "--duration",
            "40m",
            "--speed",
            "600",
            "--out",
        ])
        .arg(out.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&run.stdout);
    ensure!(
        run.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(stdout.contains("garbage (seed 3)"), "{stdout}");
    assert!(stdout.contains("4 adversaries"), "{stdout}");
    for f in [
        "report.json",
        "samples.csv",
        "content.svg",
        "gets.svg",
        "latency.svg",
        "pieces.svg",
    ] {
        assert!(out.path().join(f).is_file(), "{f}");
    }
    let report: Report = serde_json::from_slice(&std::fs::read(out.path().join("report.json"))?)?;
    assert_eq!(report.scenario.name, "garbage");
    assert_eq!(report.samples.len(), 4, "0, 15, 30 minutes and the end");

    // The schedule alone, printed twice, is the same.
    let schedule = || {
        Command::new(env!("CARGO_BIN_EXE_cairn-sim"))
            .args(["schedule", scenario, "--duration", "40m"])
            .output()
    };
    let (p, q) = (schedule()?, schedule()?);
    assert!(p.status.success() && !p.stdout.is_empty());
    assert_eq!(p.stdout, q.stdout);

    // A bad scenario is refused with the reason.
    let bad = Command::new(env!("CARGO_BIN_EXE_cairn-sim"))
        .args(["run", scenario, "--nodes", "0"])
        .output()?;
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("network.nodes"));
    Ok(())
}
