//! The compression report (`scripts/compression-report.sh` runs it): three
//! realistic data sets, generated deterministically, stored through
//! proxies that compress with zstd, gzip and zlib, measured in Redis.
//!
//! Usage: compression_report <redis port> <algorithm>:<level>=<proxy port>...
//!
//! - JSON reports (~10 MB): nested records with repeated field names,
//!   ids, timestamps, amounts and free text, values of 4 to 256 KB.
//! - Log entries (~5 MB): access and application log lines, batched into
//!   values of 1 to 16 KB.
//! - Analytics data (~25 MB): per-minute metric series as JSON arrays of
//!   numbers and labels, values of 64 KB to 1 MB.
//!
//! For each set and algorithm it prints the original size, the size Redis
//! holds (STRLEN on Redis itself, summed), ratio, savings, and the codec's
//! compress and decompress speed on the same values (in this process, at
//! the proxy's level), and checks that every value reads back exactly.

use std::time::Instant;

use auracache::codec::{Codec, Policy, envelope};
use redis::Commands;

#[path = "common/datasets.rs"]
mod datasets;

use datasets::{Rng, analytics, json_report, log_batch};

/// A data set: name, values.
fn data_sets() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    let mut build = |total: usize, sizes: (usize, usize), make: fn(&mut Rng, usize) -> String| {
        let mut values = Vec::new();
        let mut bytes = 0;
        while bytes < total {
            let size = sizes.0 + rng.below((sizes.1 - sizes.0) as u64) as usize;
            let value = make(&mut rng, size).into_bytes();
            bytes += value.len();
            values.push(value);
        }
        values
    };
    vec![
        ("json reports", build(10 << 20, (4 << 10, 256 << 10), json_report)),
        ("log entries", build(5 << 20, (1 << 10, 16 << 10), log_batch)),
        ("analytics", build(25 << 20, (64 << 10, 1 << 20), analytics)),
    ]
}

fn codec(name: &str) -> Codec {
    match name {
        "zstd" => Codec::Zstd,
        "gzip" => Codec::Gzip,
        "zlib" => Codec::Zlib,
        other => panic!("unknown algorithm {other}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let redis_port = args
        .first()
        .expect("usage: compression_report <redis port> <algorithm>:<level>=<proxy port>...");
    let mut redis = redis::Client::open(format!("redis://127.0.0.1:{redis_port}"))
        .and_then(|client| client.get_connection())
        .expect("Redis answers");
    let sets = data_sets();
    println!(
        "| data set | values | algorithm | original MB | in Redis MB | ratio | savings | compress MB/s | decompress MB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for proxy in &args[1..] {
        let (setting, port) = proxy.split_once('=').expect("<algorithm>:<level>=<proxy port>");
        let (algorithm, level) = setting.split_once(':').expect("<algorithm>:<level>");
        let mut client = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .and_then(|client| client.get_connection())
            .expect("the proxy answers");
        let policy = Policy {
            codec: codec(algorithm),
            level: level.parse().expect("a level"),
            ..Policy::default()
        };
        for (set, values) in &sets {
            let original: usize = values.iter().map(Vec::len).sum();
            let mut stored = 0usize;
            for (index, value) in values.iter().enumerate() {
                let key = format!("{algorithm}:{set}:{index}");
                let _: () = client.set(&key, value).expect("SET through the proxy");
                let back: Vec<u8> = client.get(&key).expect("GET through the proxy");
                assert!(&back == value, "{key} did not read back exactly");
                let held: usize = redis.strlen(&key).expect("STRLEN on Redis");
                stored += held;
            }
            // The codec's own speed on the same values, outside the network.
            let started = Instant::now();
            let encoded: Vec<Vec<u8>> = values.iter().map(|value| policy.encode(value).0.into_owned()).collect();
            let compress = started.elapsed().as_secs_f64();
            let started = Instant::now();
            for (value, stored) in values.iter().zip(&encoded) {
                let decoded = envelope::decode(stored, u64::MAX)
                    .expect("decodes")
                    .unwrap_or_else(|| stored.clone());
                assert!(&decoded == value);
            }
            let decompress = started.elapsed().as_secs_f64();
            let mb = |bytes: usize| bytes as f64 / (1 << 20) as f64;
            println!(
                "| {set} | {} | {algorithm} (level {}) | {:.2} | {:.2} | {:.3} | {:.1} % | {:.0} | {:.0} |",
                values.len(),
                policy.level,
                mb(original),
                mb(stored),
                stored as f64 / original as f64,
                100.0 * (1.0 - stored as f64 / original as f64),
                mb(original) / compress,
                mb(original) / decompress,
            );
        }
    }
}
