//! The soak test's load generator (`scripts/soak.sh` runs it): many
//! client connections doing a mixed, checked workload through the proxy
//! while the proxy's memory is sampled; prints a line per sample, then the
//! summary and the verdict, and exits 1 when the run fails (errors, wrong
//! values, RSS above `--l1-bytes` + `--overhead-bytes`, or a growing trend).
//! The workload and the judgement are in `examples/common/soak.rs`.
//!
//! Usage: soak --proxy-port P --pid N [--redis-port R] [--seconds 1800]
//!             [--clients 1000] [--sample-seconds 10] [--l1-bytes B]
//!             [--overhead-bytes O] [--growth-limit-bytes G]

#[path = "common/datasets.rs"]
mod datasets;
#[path = "common/soak.rs"]
mod soak;

use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(about = "auracache soak load: mixed checked workload, RSS sampled and judged")]
struct Args {
    /// The proxy's port on 127.0.0.1.
    #[arg(long)]
    proxy_port: u16,
    /// The proxy's process id (its /proc/<pid>/status is sampled).
    #[arg(long)]
    pid: u32,
    /// Redis's port on 127.0.0.1 (its used_memory is sampled).
    #[arg(long)]
    redis_port: Option<u16>,
    #[arg(long, default_value_t = 1800)]
    seconds: u64,
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    sample_seconds: u64,
    /// The proxy's memory_cache.max_bytes.
    #[arg(long, default_value_t = 64 << 20)]
    l1_bytes: u64,
    /// What RSS may hold beyond L1 (README "Soak test"; scripts/soak.sh
    /// passes 112 MiB + 256 KiB per client, 362 MiB for 1,000).
    #[arg(long, default_value_t = 362 << 20)]
    overhead_bytes: u64,
    /// The most the second half's trend of RSS beyond L1's and the
    /// pattern engine's bytes may add over the run.
    #[arg(long, default_value_t = 32 << 20)]
    growth_limit_bytes: u64,
    /// A second half shorter than this (seconds) is not judged for a trend.
    #[arg(long, default_value_t = 120)]
    min_trend_seconds: u64,
    /// One request in this many, per client, is followed by a reconnect; 0 = never.
    #[arg(long, default_value_t = 5000)]
    reconnect_every: u64,
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let options = soak::Options {
        proxy_url: format!("redis://127.0.0.1:{}", args.proxy_port),
        redis_url: args.redis_port.map(|port| format!("redis://127.0.0.1:{port}")),
        pid: args.pid,
        clients: args.clients,
        duration: Duration::from_secs(args.seconds),
        sample_every: Duration::from_secs(args.sample_seconds.max(1)),
        l1_bytes: args.l1_bytes,
        reconnect_every: args.reconnect_every,
    };
    let limits = soak::Limits {
        l1_bytes: args.l1_bytes,
        overhead_bytes: args.overhead_bytes,
        growth_limit_bytes: args.growth_limit_bytes,
        min_trend_span: Duration::from_secs(args.min_trend_seconds),
    };
    let mut previous: Option<soak::Sample> = None;
    let run = soak::run(&options, |sample| {
        let rate = previous.as_ref().map_or(0.0, |before| {
            (sample.requests - before.requests) as f64 / (sample.at - before.at).as_secs_f64().max(1e-9)
        });
        let optional = |value: Option<u64>| value.map_or("-".to_string(), soak::mib);
        println!(
            "sample t={:>5.0}s rss={} MiB threads={} fds={} requests/s={rate:.0} l1={} MiB patterns={} MiB redis={} MiB",
            sample.at.as_secs_f64(),
            soak::mib(sample.rss_bytes),
            sample.threads,
            sample.fds,
            optional(sample.l1_bytes),
            optional(sample.pattern_bytes),
            optional(sample.redis_used_memory),
        );
        previous = Some(sample.clone());
    })
    .await;
    let run = match run {
        Ok(run) => run,
        Err(error) => {
            eprintln!("soak: cannot set up the run: {error}");
            std::process::exit(2);
        }
    };
    let (report, passed) = soak::report(&run, &limits);
    print!("{report}");
    if !passed {
        std::process::exit(1);
    }
}
