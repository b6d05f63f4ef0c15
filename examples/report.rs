//! The original system's two tables, measured (`scripts/report.sh` runs
//! it): a realistic mixed workload through the proxy, then the tables from
//! the proxy's own statistics (`INFO cache`).
//!
//! Usage: report <proxy port> [seconds] [clients]
//!
//! The workload, generated deterministically:
//! - five data types, each its own namespace of 400 keys: `json` (API
//!   responses, 2-16 KB), `logs` (batched log lines, 1-8 KB), `analytics`
//!   (metric series, 8-48 KB), `session` (small records, 100-600 B, under
//!   the compression threshold) and `media` (random bytes, 2-8 KB, which do
//!   not shrink);
//! - every key written once, then `clients` connections for `seconds`:
//!   90 % reads (80 % of them of a hot set of 5 % of the keys, 15 % of any
//!   key, 5 % of keys that do not exist; one read in ten an MGET of four
//!   keys) and 10 % writes (SET of a new value of any key).
//!
//! Every read's reply is checked against the value last written (reads
//! may see an older value only while a write of that key is in flight
//! from another client, which this workload avoids by giving each client
//! its own keys to write).

#[path = "common/datasets.rs"]
mod datasets;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use datasets::{Rng, analytics, json_report, log_batch};

const KEYS_PER_TYPE: usize = 400;
/// Values generated per type (keys reuse them round-robin).
const VALUES_PER_TYPE: usize = 64;
const HOT_SHARE: f64 = 0.05;

fn session(rng: &mut Rng, size: usize) -> String {
    let mut out = format!("{{\"user\":{},\"cart\":[", rng.below(1_000_000));
    while out.len() < size {
        out.push_str(&format!("{},", rng.below(100_000)));
    }
    out.push_str("0]}");
    out
}

fn media(rng: &mut Rng, size: usize) -> Vec<u8> {
    (0..size).map(|_| rng.next() as u8).collect()
}

/// Data types: namespace, values.
type DataTypes = Vec<(&'static str, Vec<Vec<u8>>)>;

fn data_types() -> DataTypes {
    let mut rng = Rng(0x7e90_47a1_0000_0009);
    let mut build = |sizes: (usize, usize), make: &dyn Fn(&mut Rng, usize) -> Vec<u8>| {
        (0..VALUES_PER_TYPE)
            .map(|_| {
                let size = sizes.0 + rng.below((sizes.1 - sizes.0) as u64) as usize;
                make(&mut rng, size)
            })
            .collect::<Vec<_>>()
    };
    vec![
        (
            "json",
            build((2 << 10, 16 << 10), &|rng, size| json_report(rng, size).into_bytes()),
        ),
        (
            "logs",
            build((1 << 10, 8 << 10), &|rng, size| log_batch(rng, size).into_bytes()),
        ),
        (
            "analytics",
            build((8 << 10, 48 << 10), &|rng, size| analytics(rng, size).into_bytes()),
        ),
        (
            "session",
            build((100, 600), &|rng, size| session(rng, size).into_bytes()),
        ),
        ("media", build((2 << 10, 8 << 10), &media)),
    ]
}

/// One client's traffic: reads of anything, writes of its own keys.
async fn client(
    port: u16,
    seed: u64,
    until: Instant,
    types: std::sync::Arc<DataTypes>,
    owned: (usize, usize),
) -> (u64, u64, u64) {
    let mut connection = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("a URL")
        .get_multiplexed_async_connection()
        .await
        .expect("the proxy answers");
    let mut rng = Rng(seed);
    // What each key holds: (type, key) -> value index, for the keys this
    // client writes (others are checked only to be one of their type's values).
    let mut mine: HashMap<(usize, usize), usize> = HashMap::new();
    let (mut reads, mut writes, mut wrong) = (0u64, 0u64, 0u64);
    let hot = ((KEYS_PER_TYPE as f64 * HOT_SHARE) as u64).max(1);
    let key_of = |kind: usize, index: usize| format!("{}:{index}", types[kind].0);
    while Instant::now() < until {
        let kind = rng.below(types.len() as u64) as usize;
        let roll = rng.below(1000);
        if roll < 100 {
            // A write of one of this client's keys.
            let index = owned.0 + rng.below((owned.1 - owned.0) as u64) as usize;
            let value = rng.below(VALUES_PER_TYPE as u64) as usize;
            let () = redis::cmd("SET")
                .arg(key_of(kind, index))
                .arg(&types[kind].1[value])
                .query_async(&mut connection)
                .await
                .expect("SET");
            mine.insert((kind, index), value);
            writes += 1;
            continue;
        }
        let pick = rng.below(100);
        let index = if pick < 80 {
            rng.below(hot) as usize
        } else if pick < 95 {
            rng.below(KEYS_PER_TYPE as u64) as usize
        } else {
            KEYS_PER_TYPE + rng.below(1_000_000) as usize
        };
        let check = |index: usize, value: &Option<Vec<u8>>| match value {
            None => index >= KEYS_PER_TYPE,
            Some(bytes) => match mine.get(&(kind, index)) {
                Some(expected) => bytes == &types[kind].1[*expected],
                None => types[kind].1.iter().any(|candidate| candidate == bytes),
            },
        };
        if roll.is_multiple_of(10) {
            let indexes: Vec<usize> = (0..4).map(|step| (index + step * 7) % (KEYS_PER_TYPE * 2)).collect();
            let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(indexes.iter().map(|index| key_of(kind, *index)).collect::<Vec<_>>())
                .query_async(&mut connection)
                .await
                .expect("MGET");
            for (index, value) in indexes.iter().zip(&values) {
                wrong += u64::from(!check(*index, value));
            }
            reads += 4;
        } else {
            let value: Option<Vec<u8>> = redis::cmd("GET")
                .arg(key_of(kind, index))
                .query_async(&mut connection)
                .await
                .expect("GET");
            wrong += u64::from(!check(index, &value));
            reads += 1;
        }
    }
    (reads, writes, wrong)
}

/// `field:value` lines of an INFO section.
fn fields(info: &str) -> HashMap<String, String> {
    info.lines()
        .filter_map(|line| line.trim_end().split_once(':'))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect()
}

fn mb(bytes: f64) -> String {
    format!("{:.2}", bytes / 1_048_576.0)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let port: u16 = args
        .first()
        .and_then(|port| port.parse().ok())
        .expect("usage: report <proxy port> [seconds] [clients]");
    let seconds: u64 = args.get(1).map_or(20, |s| s.parse().expect("seconds"));
    let clients: usize = args.get(2).map_or(16, |s| s.parse().expect("clients"));
    let types = std::sync::Arc::new(data_types());
    let mut setup = redis::Client::open(format!("redis://127.0.0.1:{port}"))
        .expect("a URL")
        .get_multiplexed_async_connection()
        .await
        .expect("the proxy answers");
    for (name, values) in types.iter() {
        for index in 0..KEYS_PER_TYPE {
            let value = &values[index % VALUES_PER_TYPE];
            let () = redis::cmd("SET")
                .arg(format!("{name}:{index}"))
                .arg(value)
                .query_async(&mut setup)
                .await
                .expect("SET");
        }
    }
    let started = Instant::now();
    let until = started + Duration::from_secs(seconds);
    let share = KEYS_PER_TYPE / clients.max(1);
    let tasks: Vec<_> = (0..clients)
        .map(|n| {
            let owned = (n * share, (n + 1) * share.max(1));
            tokio::spawn(client(port, 0x51ed_0000 + n as u64, until, types.clone(), owned))
        })
        .collect();
    let (mut reads, mut writes, mut wrong) = (0, 0, 0);
    for task in tasks {
        let (r, w, x) = task.await.expect("a client");
        reads += r;
        writes += w;
        wrong += x;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let info: String = redis::cmd("INFO")
        .arg("cache")
        .query_async(&mut setup)
        .await
        .expect("INFO cache");
    let info = fields(&info);
    let number = |name: &str| -> f64 {
        info.get(name)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("INFO cache has {name}"))
    };

    println!(
        "Workload: {clients} clients for {elapsed:.1} s: {reads} reads, {writes} writes ({:.0} requests/s), \
         after {} keys written once; {wrong} reads answered a wrong value.\n",
        (reads + writes) as f64 / elapsed,
        KEYS_PER_TYPE * types.len(),
    );

    println!("Compression per data type (the proxy's counters, all writes):\n");
    println!("| data type | values | compressed | stored raw | original MB | compressed MB | ratio | savings |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, _) in types.iter() {
        // compression_<codec>_<namespace>:compressed=..,below_threshold=..,...
        let line = info
            .iter()
            .find(|(field, _)| field.starts_with("compression_") && field.ends_with(&format!("_{name}")))
            .map(|(_, value)| value.clone());
        let parts: HashMap<&str, f64> = line
            .as_deref()
            .unwrap_or_default()
            .split(',')
            .filter_map(|part| part.split_once('='))
            .filter_map(|(key, value)| Some((key, value.parse().ok()?)))
            .collect();
        let part = |key: &str| parts.get(key).copied().unwrap_or(0.0);
        let raw = part("below_threshold") + part("poor_savings") + part("interpreted") + part("escaped");
        let (bytes_in, bytes_out) = (part("bytes_in"), part("bytes_out"));
        let (ratio, savings) = if bytes_in > 0.0 {
            (
                format!("{:.2}x", bytes_in / bytes_out),
                format!("{:.1} %", (1.0 - bytes_out / bytes_in) * 100.0),
            )
        } else {
            ("-".to_string(), "- (kept raw)".to_string())
        };
        println!(
            "| {name} | {} | {} | {} | {} | {} | {ratio} | {savings} |",
            part("compressed") + raw,
            part("compressed"),
            raw,
            mb(bytes_in),
            mb(bytes_out),
        );
    }
    let (total_in, total_out) = (number("compression_bytes_in"), number("compression_bytes_out"));
    println!(
        "| all | {} | {} | {} | {} | {} | {:.2}x | {:.1} % |",
        number("compression_values") + number("compression_values_raw"),
        number("compression_values"),
        number("compression_values_raw"),
        mb(total_in),
        mb(total_out),
        total_in / total_out.max(1.0),
        (1.0 - total_out / total_in.max(1.0)) * 100.0,
    );
    println!(
        "\n(ratio = original / compressed; raw values are below compression.threshold or did not shrink by compression.min_savings.)\n"
    );

    println!("Multi-level cache performance (the proxy's counters, all reads and writes):\n");
    let total = number("reads_total");
    let level = |name: &str| {
        let count = match name {
            "l1" => number("l1_answered"),
            "l2" => number("l2_hits"),
            _ => number("l2_misses"),
        };
        (count, number(&format!("read_latency_{name}_avg_us")))
    };
    let (l1, l2, miss) = (level("l1"), level("l2"), level("miss"));
    let read_avg = (l1.0 * l1.1 + l2.0 * l2.1 + miss.0 * miss.1) / total.max(1.0);
    println!("| reads | L1 hit % | L2 hit % | miss % | avg read latency | writes | avg write latency |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {total} | {:.1} % | {:.1} % | {:.1} % | {read_avg:.1} µs | {} | {:.1} µs |",
        l1.0 / total.max(1.0) * 100.0,
        l2.0 / total.max(1.0) * 100.0,
        miss.0 / total.max(1.0) * 100.0,
        number("writes_total"),
        number("write_latency_avg_us"),
    );
    println!("\n| level | reads | avg | p50 | p99 |");
    println!("|---|---|---|---|---|");
    for (name, label, count) in [
        ("l1", "L1 hit", l1.0),
        ("l2", "L2 hit (Redis)", l2.0),
        ("miss", "miss", miss.0),
    ] {
        println!(
            "| {label} | {count} | {:.1} µs | {:.1} µs | {:.1} µs |",
            number(&format!("read_latency_{name}_avg_us")),
            number(&format!("read_latency_{name}_p50_us")),
            number(&format!("read_latency_{name}_p99_us")),
        );
    }
    println!(
        "| write | {} | {:.1} µs | {:.1} µs | {:.1} µs |",
        number("writes_total"),
        number("write_latency_avg_us"),
        number("write_latency_p50_us"),
        number("write_latency_p99_us"),
    );
    println!(
        "\n(latency: from the proxy reading a request to its reply being ready, as INFO cache reports it; \
         MGET items count as reads each.)"
    );
    if wrong > 0 {
        eprintln!("{wrong} reads answered a value that was never written for their key");
        std::process::exit(1);
    }
}
