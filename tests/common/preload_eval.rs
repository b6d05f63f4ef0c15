//! The preloader's evaluation (issue #8): a seeded week of reads (the
//! pattern engine's trace generator: daily, periodic, burst, constant and
//! random keys, plus daily keys that make an evening peak) replayed through
//! the proxy on a manual clock, against a real `redis-server` holding every
//! key's value, twice: preloading off, then on. Every read is the same in
//! both passes, so each one can be compared: a read that missed L1 without
//! preloading ("cold") and hit it with preloading was answered by a preload.
//!
//! Shared by `scripts/preload-eval.sh` (`examples/preload_eval.rs`, a full
//! week, figures printed) and `tests/preload_eval.rs` (a smaller trace, the
//! targets asserted).

#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use auracache::Server;
use auracache::clock::{Clock, ManualClock};
use auracache::config::Config;
use auracache::patterns::model::{Class, DAY_MS, HOUR_MS};
use auracache::patterns::trace::{self, Trace};

/// What to replay.
#[derive(Debug, Clone)]
pub struct Settings {
    pub seed: u64,
    /// Keys of each class in the generator (and as many random ones).
    pub per_class: usize,
    /// Daily keys read in the evening peak.
    pub peak_keys: usize,
    pub days: u64,
    /// Days the engine learns before reads are counted in the figures.
    pub learn_days: u64,
    /// The evening peak, hours of the day (UTC).
    pub peak: std::ops::Range<u64>,
}

impl Settings {
    /// The full evaluation: a week.
    pub fn week(seed: u64) -> Settings {
        Settings {
            seed,
            per_class: 60,
            peak_keys: 120,
            days: 7,
            learn_days: 3,
            peak: 18..21,
        }
    }

    /// A smaller trace for the test suite.
    pub fn small(seed: u64) -> Settings {
        Settings {
            seed,
            per_class: 10,
            peak_keys: 20,
            days: 5,
            learn_days: 3,
            peak: 18..21,
        }
    }
}

/// One pass's record of each read, in trace order.
struct Pass {
    hit: Vec<bool>,
    latency_us: Vec<u32>,
    upstream_reads: u64,
    stored: u64,
    preload_hits: u64,
    waste: u64,
    runs: u64,
    peaks: Vec<u8>,
    took: Duration,
    /// `redis-cli PROXY PRELOAD STATUS` after the last read.
    status: String,
}

/// The figures.
#[derive(Debug, Clone)]
pub struct Figures {
    pub reads: usize,
    pub counted_reads: usize,
    pub learn_days: u64,
    /// L1's TTL in both passes, seconds.
    pub l1_ttl: u64,
    pub predictable_keys: usize,
    /// Predictable keys with a cold read in the counted days, and those of
    /// them with at least one such read answered by a preload.
    pub keys_with_cold_reads: usize,
    pub keys_preloaded: usize,
    /// Cold reads of predictable keys, and those answered by a preload.
    pub cold_reads: usize,
    pub cold_reads_preloaded: usize,
    pub peak_hit_rate_off: f64,
    pub peak_hit_rate_on: f64,
    pub hit_rate_off: f64,
    pub hit_rate_on: f64,
    /// Reads of the keys preloaded at least once: latency off and on.
    pub preloaded_key_reads: usize,
    pub mean_us_off: f64,
    pub mean_us_on: f64,
    pub p99_us_off: u32,
    pub p99_us_on: u32,
    pub stored: u64,
    pub preload_hits: u64,
    pub waste: u64,
    pub upstream_reads_off: u64,
    pub upstream_reads_on: u64,
    pub runs: u64,
    pub peaks_found: Vec<u8>,
    pub took_off: Duration,
    pub took_on: Duration,
    /// `redis-cli PROXY PRELOAD STATUS` after the last read, preloading on.
    pub status: String,
}

impl Figures {
    pub fn key_share(&self) -> f64 {
        self.keys_preloaded as f64 / self.keys_with_cold_reads.max(1) as f64
    }

    pub fn cold_share(&self) -> f64 {
        self.cold_reads_preloaded as f64 / self.cold_reads.max(1) as f64
    }

    pub fn waste_share(&self) -> f64 {
        self.waste as f64 / self.stored.max(1) as f64
    }

    pub fn latency_change(&self) -> f64 {
        self.mean_us_on / self.mean_us_off.max(1e-9) - 1.0
    }

    pub fn p99_change(&self) -> f64 {
        f64::from(self.p99_us_on) / f64::from(self.p99_us_off.max(1)) - 1.0
    }

    pub fn extra_upstream(&self) -> f64 {
        self.upstream_reads_on as f64 / self.upstream_reads_off.max(1) as f64 - 1.0
    }

    /// The table `scripts/preload-eval.sh` prints.
    pub fn table(&self) -> String {
        let pct = |share: f64| format!("{:.1} %", share * 100.0);
        let rows = [
            (
                "predictable keys preloaded before a read".to_string(),
                format!(
                    "{} ({} of {})",
                    pct(self.key_share()),
                    self.keys_preloaded,
                    self.keys_with_cold_reads
                ),
                "> 92 %",
            ),
            (
                "cold reads of predictable keys answered by a preload".to_string(),
                format!(
                    "{} ({} of {})",
                    pct(self.cold_share()),
                    self.cold_reads_preloaded,
                    self.cold_reads
                ),
                "",
            ),
            (
                "L1 hit rate in peak hours, off -> on".to_string(),
                format!(
                    "{} -> {} ({:+.1} points)",
                    pct(self.peak_hit_rate_off),
                    pct(self.peak_hit_rate_on),
                    (self.peak_hit_rate_on - self.peak_hit_rate_off) * 100.0
                ),
                "> +15 points",
            ),
            (
                "L1 hit rate, all hours, off -> on".to_string(),
                format!("{} -> {}", pct(self.hit_rate_off), pct(self.hit_rate_on)),
                "",
            ),
            (
                "mean read latency of preloaded keys, off -> on".to_string(),
                format!(
                    "{:.0} us -> {:.0} us ({:+.1} %)",
                    self.mean_us_off,
                    self.mean_us_on,
                    self.latency_change() * 100.0
                ),
                "< -35 %",
            ),
            (
                "p99 read latency of preloaded keys, off -> on".to_string(),
                format!(
                    "{} us -> {} us ({:+.1} %)",
                    self.p99_us_off,
                    self.p99_us_on,
                    self.p99_change() * 100.0
                ),
                "",
            ),
            (
                "wasted preloads (dropped unused)".to_string(),
                format!("{} ({} of {})", pct(self.waste_share()), self.waste, self.stored),
                "< 20 %",
            ),
            (
                "upstream reads, off -> on".to_string(),
                format!(
                    "{} -> {} ({:+.1} %)",
                    self.upstream_reads_off,
                    self.upstream_reads_on,
                    self.extra_upstream() * 100.0
                ),
                "",
            ),
        ];
        let mut out = String::new();
        out.push_str(&format!(
            "L1 TTL {} s; {} reads ({} counted, after {} days of learning), {} predictable keys, {} preload runs, peak hours found {:?}\n",
            self.l1_ttl, self.reads, self.counted_reads, self.learn_days, self.predictable_keys, self.runs, self.peaks_found
        ));
        out.push_str(&format!("{:<55} | {:<40} | target\n", "figure", "measured"));
        out.push_str(&format!(
            "{}-|-{}-|-{}\n",
            "-".repeat(55),
            "-".repeat(40),
            "-".repeat(12)
        ));
        for (name, value, target) in rows {
            out.push_str(&format!("{name:<55} | {value:<40} | {target}\n"));
        }
        out.push_str(&format!(
            "replay took {:.1} s off, {:.1} s on\n",
            self.took_off.as_secs_f64(),
            self.took_on.as_secs_f64()
        ));
        out
    }
}

/// A throwaway redis-server on a free port.
struct Redis {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let dir = tempfile::tempdir().expect("temporary directory");
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "redis-server is not installed: run scripts/test.sh (it installs it), or `apt-get install -y redis-server redis-tools`",
            );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Redis { port, child, _dir: dir }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A value for `key`: 200 bytes to 8 KB of text (compressible, as most
/// cached values are).
fn value_of(key: &str, rng: &mut trace::Rng) -> Vec<u8> {
    let size = rng.between(200, 8_000) as usize;
    let mut value = Vec::with_capacity(size + 64);
    while value.len() < size {
        value.extend_from_slice(format!("{key} record {} ", rng.between(0, 1000)).as_bytes());
    }
    value.truncate(size);
    value
}

async fn upstream_reads(redis: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(redis)
        .await
        .expect("INFO");
    ["get", "hgetall"]
        .iter()
        .filter_map(|name| {
            info.lines()
                .find_map(|line| line.strip_prefix(&format!("cmdstat_{name}:calls=")))
                .and_then(|rest| rest.split(',').next())
                .and_then(|calls| calls.parse::<u64>().ok())
        })
        .sum()
}

/// Moves `clock` to `at_ms` (never back).
fn advance_to(clock: &ManualClock, at_ms: u64) {
    let now = clock.unix_ms();
    if at_ms > now {
        clock.advance(Duration::from_millis(at_ms - now));
    }
}

/// One replay of `trace`, preloading `on` or off.
async fn replay(trace: &Trace, values: &HashMap<String, Vec<u8>>, on: bool, l1_ttl: u64) -> Pass {
    let redis_server = Redis::start();
    let upstream = format!("redis://127.0.0.1:{}", redis_server.port);
    let clock = ManualClock::starting_at(trace.start_ms);
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        upstream: upstream.clone(),
        ..Config::default()
    };
    config.memory_cache.enabled = true;
    config.memory_cache.default_ttl = l1_ttl;
    config.compression.enabled = true;
    config.preload.enabled = on;
    let handle = Server::start_with_clock(config, Arc::new(clock.clone()))
        .await
        .expect("proxy starts");
    let l1 = handle.l1().expect("L1 on").clone();
    let started = Instant::now();
    while !l1.ready() {
        assert!(started.elapsed() < Duration::from_secs(10), "L1 never ready");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let proxy_url = format!("redis://{}", handle.local_addr());
    let mut client = redis::Client::open(proxy_url.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("proxy connects");
    let mut direct = redis::Client::open(upstream.as_str())
        .expect("url")
        .get_multiplexed_async_connection()
        .await
        .expect("redis connects");
    // Every key's value, written through the proxy (stored compressed).
    let mut pipe = redis::pipe();
    for (key, value) in values {
        pipe.cmd("SET").arg(key).arg(value).ignore();
    }
    let () = pipe.query_async(&mut client).await.expect("values written");
    let before = upstream_reads(&mut direct).await;
    let preload = handle.preload().cloned();
    let stats = l1.store.stats().clone();
    let mut hit = Vec::with_capacity(trace.accesses.len());
    let mut latency_us = Vec::with_capacity(trace.accesses.len());
    let replay_started = Instant::now();
    for access in &trace.accesses {
        if let Some(preload) = &preload {
            // Every run due before this read, in order, each to its end.
            loop {
                let next = preload.stats().next_run_ms.load(Ordering::Acquire);
                if next == 0 || next > access.at_ms {
                    break;
                }
                let runs = preload.runs();
                advance_to(&clock, next);
                preload.poke();
                let waited = Instant::now();
                while preload.runs() == runs {
                    assert!(waited.elapsed() < Duration::from_secs(60), "a preload run never ended");
                    tokio::time::sleep(Duration::from_micros(200)).await;
                }
            }
        }
        advance_to(&clock, access.at_ms);
        let hits = stats.hits.load(Ordering::Relaxed);
        let asked = Instant::now();
        let value: Option<Vec<u8>> = redis::cmd("GET")
            .arg(&access.key)
            .query_async(&mut client)
            .await
            .expect("GET");
        latency_us.push(asked.elapsed().as_micros().min(u128::from(u32::MAX)) as u32);
        assert_eq!(
            value.as_deref(),
            values.get(&access.key).map(Vec::as_slice),
            "{}",
            access.key
        );
        hit.push(stats.hits.load(Ordering::Relaxed) > hits);
    }
    let took = replay_started.elapsed();
    let upstream_reads = upstream_reads(&mut direct).await - before;
    let status = Command::new("redis-cli")
        .args([
            "--no-raw",
            "-p",
            &handle.local_addr().port().to_string(),
            "PROXY",
            "PRELOAD",
            "STATUS",
        ])
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
        .unwrap_or_default();
    // Whatever is still preloaded and unused expires: waste.
    advance_to(&clock, trace.end_ms + 2 * DAY_MS);
    l1.store.sweep();
    let peaks = handle.patterns().map(|patterns| patterns.peaks().1).unwrap_or_default();
    let pass = Pass {
        hit,
        latency_us,
        upstream_reads,
        stored: stats.preloads.load(Ordering::Relaxed),
        preload_hits: stats.preload_hits.load(Ordering::Relaxed),
        waste: stats.preload_waste.load(Ordering::Relaxed),
        runs: preload.map_or(0, |preload| preload.runs()),
        peaks,
        took,
        status,
    };
    handle.shutdown().await;
    pass
}

fn mean(values: &[u32]) -> f64 {
    values.iter().map(|value| f64::from(*value)).sum::<f64>() / values.len().max(1) as f64
}

fn p99(values: &[u32]) -> u32 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted
        .get((sorted.len() as f64 * 0.99) as usize)
        .or(sorted.last())
        .copied()
        .unwrap_or(0)
}

/// Replays the trace off and on (L1's default TTL, 60 s) and compares the
/// two, read by read.
pub async fn evaluate(settings: &Settings) -> Figures {
    evaluate_with_ttl(settings, 60).await
}

/// [`evaluate`] with L1 keeping entries `l1_ttl` seconds (in both passes).
pub async fn evaluate_with_ttl(settings: &Settings, l1_ttl: u64) -> Figures {
    let trace = trace::generate_with_peak(
        settings.seed,
        settings.per_class,
        settings.days,
        0.03,
        settings.peak.clone(),
        settings.peak_keys,
    );
    let mut rng = trace::Rng::new(settings.seed ^ 0x5eed);
    let values: HashMap<String, Vec<u8>> = trace
        .labels
        .iter()
        .map(|(key, _)| (key.clone(), value_of(key, &mut rng)))
        .collect();
    let off = replay(&trace, &values, false, l1_ttl).await;
    let on = replay(&trace, &values, true, l1_ttl).await;
    let predictable: HashSet<&str> = trace
        .labels
        .iter()
        .filter(|(_, class)| matches!(class, Some(Class::Daily | Class::Periodic | Class::Constant)))
        .map(|(key, _)| key.as_str())
        .collect();
    let counted_from = trace.start_ms + settings.learn_days * DAY_MS;
    let mut counted = 0;
    let (mut cold, mut cold_preloaded) = (0, 0);
    let mut cold_keys: HashSet<&str> = HashSet::new();
    let mut preloaded_keys: HashSet<&str> = HashSet::new();
    let (mut peak_reads, mut peak_hits_off, mut peak_hits_on) = (0, 0, 0);
    let (mut hits_off, mut hits_on) = (0, 0);
    for (index, access) in trace.accesses.iter().enumerate() {
        if access.at_ms < counted_from {
            continue;
        }
        counted += 1;
        hits_off += usize::from(off.hit[index]);
        hits_on += usize::from(on.hit[index]);
        let hour = (access.at_ms % DAY_MS) / HOUR_MS;
        if settings.peak.contains(&hour) {
            peak_reads += 1;
            peak_hits_off += usize::from(off.hit[index]);
            peak_hits_on += usize::from(on.hit[index]);
        }
        let key = access.key.as_str();
        if predictable.contains(key) && !off.hit[index] {
            cold += 1;
            cold_keys.insert(key);
            if on.hit[index] {
                cold_preloaded += 1;
                preloaded_keys.insert(key);
            }
        }
    }
    let (mut latency_off, mut latency_on) = (Vec::new(), Vec::new());
    for (index, access) in trace.accesses.iter().enumerate() {
        if access.at_ms >= counted_from && preloaded_keys.contains(access.key.as_str()) {
            latency_off.push(off.latency_us[index]);
            latency_on.push(on.latency_us[index]);
        }
    }
    let rate = |hits: usize, reads: usize| hits as f64 / reads.max(1) as f64;
    Figures {
        reads: trace.accesses.len(),
        counted_reads: counted,
        learn_days: settings.learn_days,
        l1_ttl,
        predictable_keys: predictable.len(),
        keys_with_cold_reads: cold_keys.len(),
        keys_preloaded: preloaded_keys.len(),
        cold_reads: cold,
        cold_reads_preloaded: cold_preloaded,
        peak_hit_rate_off: rate(peak_hits_off, peak_reads),
        peak_hit_rate_on: rate(peak_hits_on, peak_reads),
        hit_rate_off: rate(hits_off, counted),
        hit_rate_on: rate(hits_on, counted),
        preloaded_key_reads: latency_on.len(),
        mean_us_off: mean(&latency_off),
        mean_us_on: mean(&latency_on),
        p99_us_off: p99(&latency_off),
        p99_us_on: p99(&latency_on),
        stored: on.stored,
        preload_hits: on.preload_hits,
        waste: on.waste,
        upstream_reads_off: off.upstream_reads,
        upstream_reads_on: on.upstream_reads,
        runs: on.runs,
        peaks_found: on.peaks,
        took_off: off.took,
        took_on: on.took,
        status: on.status,
    }
}
