//! The soak test keeps working: its load run in-process through the proxy
//! for a few seconds (every reply checked), the arithmetic of its summary
//! and verdict, and `scripts/soak.sh` itself in a quick mode with the debug
//! builds. Nothing here depends on throughput or on how much memory this
//! machine's allocator keeps.

mod common;
#[path = "../examples/common/datasets.rs"]
mod datasets;
#[path = "../examples/common/soak.rs"]
mod soak;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Proxy, RedisServer};

const MIB: u64 = 1 << 20;

/// The soak's configuration, with an L1 small enough that a short run
/// evicts.
fn soak_config(config: &mut auracache::config::Config) {
    config.memory_cache.enabled = true;
    config.memory_cache.max_bytes = MIB;
    config.memory_cache.max_entry_bytes = 128 << 10;
    config.memory_cache.size_per_namespace = 0;
    config.compression.enabled = true;
    config.compression.hashes = true;
    config.patterns.enabled = true;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_through_the_proxy_gets_every_reply_right() {
    let redis = RedisServer::start();
    let proxy = Proxy::start_with(&redis.url(), soak_config).await;
    let options = soak::Options {
        proxy_url: proxy.url(),
        redis_url: Some(redis.url()),
        pid: std::process::id(),
        clients: 40,
        duration: Duration::from_secs(4),
        sample_every: Duration::from_secs(1),
        l1_bytes: MIB,
        reconnect_every: 100,
    };
    let run = soak::run(&options, |_| {}).await.expect("the run sets up");
    let limits = soak::Limits {
        l1_bytes: MIB,
        overhead_bytes: u64::MAX / 2,
        growth_limit_bytes: u64::MAX / 2,
        min_trend_span: Duration::MAX,
    };
    let (report, passed) = soak::report(&run, &limits);
    assert!(passed, "{report}");
    let tally = &run.tally;
    assert_eq!(tally.errors.load(Ordering::Relaxed), 0, "{report}");
    assert_eq!(tally.wrong.load(Ordering::Relaxed), 0, "{report}");
    for (name, count) in soak::COMMANDS.iter().zip(&tally.by_command) {
        assert!(count.load(Ordering::Relaxed) > 0, "no {name} in the mix: {report}");
    }
    assert!(tally.pipelines.load(Ordering::Relaxed) > 0, "{report}");
    assert!(tally.reconnects.load(Ordering::Relaxed) > 0, "{report}");
    // A sample per second and one at the end, each of a live process.
    assert!(run.samples.len() >= 4, "{report}");
    assert!(run.samples.iter().all(|sample| sample.rss_bytes > 0 && sample.fds > 0));
    let last = run.samples.last().expect("samples");
    assert!(last.l1_bytes.is_some() && last.redis_used_memory.is_some(), "{report}");
    // The key space is about twice L1.
    let values = soak::Values::generate();
    let keys = (run.plan.clients * run.plan.strings_per_client) as f64;
    assert!(keys * values.mean_size() >= 1.9 * MIB as f64, "{:?}", run.plan);
    proxy.shutdown().await;
}

#[test]
fn every_generated_value_is_recognised_and_nothing_else_is() {
    let values = soak::Values::generate();
    for id in 0..values.len() as u32 {
        assert_eq!(values.identify(values.get(id)), Some(id));
    }
    let mut altered = values.get(3).to_vec();
    *altered.last_mut().expect("not empty") ^= 1;
    assert_eq!(values.identify(&altered), None);
    assert_eq!(values.identify(b"#3#"), None);
    assert_eq!(values.identify(b"plain"), None);
    // Values span the compression threshold (1,024 bytes) both ways.
    let sizes: Vec<usize> = (0..values.len() as u32).map(|id| values.get(id).len()).collect();
    assert!(sizes.iter().any(|size| *size < 1024) && sizes.iter().any(|size| *size > 16 << 10));
}

fn sample(at_secs: u64, rss_mib: u64, requests: u64) -> soak::Sample {
    soak::Sample {
        at: Duration::from_secs(at_secs),
        rss_bytes: rss_mib * MIB,
        threads: 2,
        fds: 10,
        requests,
        ..soak::Sample::default()
    }
}

#[test]
fn the_summary_fits_the_trend_over_the_second_half_only() {
    // Fast growth while warming up, then 1 MiB every 100 s: 36 MiB/hour.
    let mut samples = vec![sample(0, 10, 0), sample(100, 200, 1000)];
    for step in 2..=10 {
        samples.push(sample(step * 100, 200 + (step - 1), step * 1000 + step * 100));
    }
    let summary = soak::summarise(&samples, Duration::from_secs(1000));
    assert_eq!(summary.samples, 11);
    assert_eq!(
        (summary.first, summary.min, summary.max, summary.last),
        (10 * MIB, 10 * MIB, 209 * MIB, 209 * MIB)
    );
    assert_eq!(summary.trend_samples, 6);
    assert_eq!(summary.trend_span, Duration::from_secs(500));
    let slope = summary.slope_per_hour.expect("a slope") / MIB as f64;
    assert!((slope - 36.0).abs() < 1e-6, "{slope}");
    let growth = summary.growth_over_run.expect("growth") / MIB as f64;
    assert!((growth - 10.0).abs() < 1e-6, "{growth}");
    assert!((summary.throughput - 11.0).abs() < 1e-9);
    let (low, high) = summary.interval_throughput.expect("intervals");
    assert!((low - 10.0).abs() < 1e-9 && (high - 12.0).abs() < 1e-9, "{low} {high}");
}

#[test]
fn the_verdict_names_each_reason_to_fail() {
    let flat: Vec<soak::Sample> = (0..=10).map(|step| sample(step * 60, 100, step * 600)).collect();
    let limits = soak::Limits {
        l1_bytes: 64 * MIB,
        overhead_bytes: 64 * MIB,
        growth_limit_bytes: 8 * MIB,
        min_trend_span: Duration::from_secs(120),
    };
    let elapsed = Duration::from_secs(600);
    assert!(soak::failures(&soak::summarise(&flat, elapsed), 0, 0, &limits).is_empty());
    let failures = soak::failures(&soak::summarise(&flat, elapsed), 2, 1, &limits);
    assert_eq!(failures, ["2 errors", "1 wrong values"]);

    let over: Vec<soak::Sample> = (0..=10).map(|step| sample(step * 60, 129, step * 600)).collect();
    let failures = soak::failures(&soak::summarise(&over, elapsed), 0, 0, &limits);
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].starts_with("RSS reached 129.0 MiB, above the bound 128.0 MiB"),
        "{failures:?}"
    );

    // 2 MiB a minute over the second half: 20 MiB over the run.
    let growing: Vec<soak::Sample> = (0..=10)
        .map(|step| sample(step * 60, 60 + 2 * step, step * 600))
        .collect();
    let failures = soak::failures(&soak::summarise(&growing, elapsed), 0, 0, &limits);
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].starts_with(
            "RSS trend: the second half's slope of RSS beyond L1's and the pattern engine's bytes adds 20.0 MiB"
        ),
        "{failures:?}"
    );
    // The same growth, all of it the pattern engine filling towards its
    // bound (its own bytes say so), is no leak.
    let filling: Vec<soak::Sample> = growing
        .iter()
        .map(|sample| soak::Sample {
            pattern_bytes: Some(sample.rss_bytes - 60 * MIB),
            ..sample.clone()
        })
        .collect();
    assert!(soak::failures(&soak::summarise(&filling, elapsed), 0, 0, &limits).is_empty());
    // The same trend over a second half too short to judge passes.
    let short = soak::Limits {
        min_trend_span: Duration::from_secs(600),
        ..limits.clone()
    };
    assert!(soak::failures(&soak::summarise(&growing, elapsed), 0, 0, &short).is_empty());

    let mut gone = flat.clone();
    gone[5].rss_bytes = 0;
    let failures = soak::failures(&soak::summarise(&gone, elapsed), 0, 0, &limits);
    assert_eq!(failures, ["the process was gone at 1 samples"]);
}

/// The debug build of `examples/soak.rs` (built here when `cargo test`
/// was not asked for every target).
fn generator() -> PathBuf {
    let binary = common::binary();
    let path = binary
        .parent()
        .expect("the binary's directory")
        .join("examples")
        .join("soak");
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
        let status = Command::new(cargo)
            .args(["build", "--example", "soak"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build --example soak failed");
    }
    path
}

#[test]
fn the_soak_script_passes_a_quick_run() {
    let output_dir = tempfile::tempdir().expect("temporary directory");
    let output_file = output_dir.path().join("soak.txt");
    let output = Command::new("bash")
        .arg("scripts/soak.sh")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("SOAK_SECONDS", "4")
        .env("SOAK_CLIENTS", "50")
        .env("SOAK_SAMPLE_SECONDS", "1")
        .env("SOAK_L1_BYTES", (2 * MIB).to_string())
        .env("SOAK_PROXY_BIN", common::binary())
        .env("SOAK_GENERATOR_BIN", generator())
        .env("SOAK_OUTPUT", &output_file)
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "scripts/soak.sh failed:\n{stdout}\n{stderr}");
    let written = std::fs::read_to_string(&output_file).expect("the summary is written");
    for line in [
        "RSS MiB: samples",
        "RSS trend",
        "throughput:",
        "errors: 0; wrong values: 0",
        "verdict: PASS",
    ] {
        assert!(written.contains(line), "no {line:?} in:\n{written}");
    }
}
