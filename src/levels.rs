//! Where reads were answered and how long they took: the multi-level view
//! of `INFO cache`, `/metrics`, `/performance`, `/multi-level/flow` and
//! the dashboard.
//!
//! The levels are L1 (answered in-process), L2 (forwarded, and Redis had a
//! value) and miss (forwarded, and Redis had none). The reads counted are
//! the ones L1 can answer (GET, HGET, HGETALL, MGET and HMGET, each item of
//! an MGET or HMGET on its own); writes are the commands Redis flags as
//! writing. A latency is the time from the proxy reading the request to
//! its reply being ready for the client: on an L1 hit, the handling of the
//! pipeline it came in; otherwise until Redis's reply arrived.
//!
//! Latencies go into fixed log-linear histograms of relaxed atomics (four
//! buckets per power of two of nanoseconds, so a percentile is within
//! about 12 % of the truth), updated once per pipeline or batch, not per
//! request. [`History`] keeps a sample of the counters every
//! `admin.history_interval_secs` for the last [`HISTORY_SAMPLES`] intervals.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two.
const SUBS: usize = 4;
/// Values below this many nanoseconds have a bucket each.
const LINEAR: u64 = SUBS as u64;
/// Enough buckets for 2^40 ns (18 minutes); longer goes in the last.
pub const BUCKETS: usize = SUBS + (40 - 2) * SUBS;

/// A latency histogram in nanoseconds.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS],
    sum_ns: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_ns: AtomicU64::new(0),
        }
    }
}

/// The bucket of `ns`.
fn bucket_of(ns: u64) -> usize {
    if ns < LINEAR {
        return ns as usize;
    }
    let power = 63 - ns.leading_zeros() as usize; // >= 2
    let sub = ((ns >> (power - 2)) & (SUBS as u64 - 1)) as usize;
    (SUBS + (power - 2) * SUBS + sub).min(BUCKETS - 1)
}

/// The nanoseconds bucket `index` starts at, and where the next starts.
fn bounds_of(index: usize) -> (u64, u64) {
    if index < SUBS {
        return (index as u64, index as u64 + 1);
    }
    let power = (index - SUBS) / SUBS + 2;
    let sub = ((index - SUBS) % SUBS) as u64;
    let step = 1u64 << (power - 2);
    ((LINEAR + sub) * step, (LINEAR + sub + 1) * step)
}

impl Histogram {
    /// Counts `count` requests that each took `took`.
    pub fn record(&self, took: Duration, count: u64) {
        if count == 0 {
            return;
        }
        let ns = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[bucket_of(ns)].fetch_add(count, Ordering::Relaxed);
        self.sum_ns.fetch_add(ns.saturating_mul(count), Ordering::Relaxed);
    }

    /// What it holds now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            buckets: self
                .buckets
                .iter()
                .map(|bucket| bucket.load(Ordering::Relaxed))
                .collect(),
            sum_ns: self.sum_ns.load(Ordering::Relaxed),
        }
    }

    pub fn reset(&self) {
        for bucket in &self.buckets {
            bucket.store(0, Ordering::Relaxed);
        }
        self.sum_ns.store(0, Ordering::Relaxed);
    }
}

/// A histogram's counts at one moment (or between two moments).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    buckets: Vec<u64>,
    sum_ns: u64,
}

impl Snapshot {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// The mean in microseconds (0 when empty).
    pub fn mean_us(&self) -> f64 {
        match self.count() {
            0 => 0.0,
            count => self.sum_ns as f64 / count as f64 / 1_000.0,
        }
    }

    pub fn sum_us(&self) -> f64 {
        self.sum_ns as f64 / 1_000.0
    }

    /// The `quantile` (0..=1) in microseconds, interpolated within its
    /// bucket (0 when empty).
    pub fn quantile_us(&self, quantile: f64) -> f64 {
        let count = self.count();
        if count == 0 {
            return 0.0;
        }
        let rank = (quantile.clamp(0.0, 1.0) * count as f64).max(1.0);
        let mut below = 0u64;
        for (index, &in_bucket) in self.buckets.iter().enumerate() {
            if in_bucket > 0 && (below + in_bucket) as f64 >= rank {
                let (low, high) = bounds_of(index);
                let within = (rank - below as f64) / in_bucket as f64;
                return (low as f64 + within * (high - low) as f64) / 1_000.0;
            }
            below += in_bucket;
        }
        bounds_of(BUCKETS - 1).1 as f64 / 1_000.0
    }

    /// What was added since `earlier`.
    pub fn since(&self, earlier: &Snapshot) -> Snapshot {
        Snapshot {
            buckets: self
                .buckets
                .iter()
                .enumerate()
                .map(|(index, now)| now.saturating_sub(earlier.buckets.get(index).copied().unwrap_or(0)))
                .collect(),
            sum_ns: self.sum_ns.saturating_sub(earlier.sum_ns),
        }
    }

    /// Counts per Prometheus bucket, not cumulative: one bucket per power
    /// of two of nanoseconds from 2^10 (about 1 µs) to 2^34 (about 17 s),
    /// as `(upper bound in seconds, count)`, then `+Inf`. The bounds are the
    /// same at every scrape.
    pub fn prometheus_buckets(&self) -> Vec<(f64, u64)> {
        let mut out = Vec::with_capacity(26);
        let mut from = 0;
        for power in PROMETHEUS_POWERS {
            // Values below 2^power ns are in the buckets before its group.
            let until = SUBS + (power - 2) * SUBS;
            out.push(((1u64 << power) as f64 / 1e9, self.buckets[from..until].iter().sum()));
            from = until;
        }
        out.push((f64::INFINITY, self.buckets[from..].iter().sum()));
        out
    }
}

/// The powers of two of nanoseconds that bound the Prometheus buckets.
const PROMETHEUS_POWERS: std::ops::RangeInclusive<usize> = 10..=34;

/// Where a read was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    L1,
    L2,
    Miss,
}

impl Level {
    pub const ALL: [Level; 3] = [Level::L1, Level::L2, Level::Miss];

    pub fn name(self) -> &'static str {
        match self {
            Level::L1 => "l1",
            Level::L2 => "l2",
            Level::Miss => "miss",
        }
    }
}

/// Reads per level and writes, with their latencies.
#[derive(Debug, Default)]
pub struct Levels {
    l1: Histogram,
    l2: Histogram,
    miss: Histogram,
    writes: Histogram,
}

impl Levels {
    pub fn read(&self, level: Level) -> &Histogram {
        match level {
            Level::L1 => &self.l1,
            Level::L2 => &self.l2,
            Level::Miss => &self.miss,
        }
    }

    pub fn writes(&self) -> &Histogram {
        &self.writes
    }

    pub fn reset(&self) {
        for histogram in [&self.l1, &self.l2, &self.miss, &self.writes] {
            histogram.reset();
        }
    }

    /// All four at once.
    pub fn snapshot(&self) -> LevelsSnapshot {
        LevelsSnapshot {
            l1: self.l1.snapshot(),
            l2: self.l2.snapshot(),
            miss: self.miss.snapshot(),
            writes: self.writes.snapshot(),
        }
    }
}

/// [`Levels`] at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LevelsSnapshot {
    pub l1: Snapshot,
    pub l2: Snapshot,
    pub miss: Snapshot,
    pub writes: Snapshot,
}

impl LevelsSnapshot {
    pub fn read(&self, level: Level) -> &Snapshot {
        match level {
            Level::L1 => &self.l1,
            Level::L2 => &self.l2,
            Level::Miss => &self.miss,
        }
    }

    pub fn reads(&self) -> u64 {
        self.l1.count() + self.l2.count() + self.miss.count()
    }

    /// The share of reads answered at `level` (0 with no reads).
    pub fn rate(&self, level: Level) -> f64 {
        match self.reads() {
            0 => 0.0,
            reads => self.read(level).count() as f64 / reads as f64,
        }
    }

    pub fn since(&self, earlier: &LevelsSnapshot) -> LevelsSnapshot {
        LevelsSnapshot {
            l1: self.l1.since(&earlier.l1),
            l2: self.l2.since(&earlier.l2),
            miss: self.miss.since(&earlier.miss),
            writes: self.writes.since(&earlier.writes),
        }
    }
}

/// Samples kept: 30 minutes at the default 10-second interval.
pub const HISTORY_SAMPLES: usize = 180;

/// One interval of traffic.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Sample {
    /// When it ended, in Unix milliseconds.
    pub at_ms: u64,
    pub seconds: f64,
    pub reads: u64,
    pub writes: u64,
    pub reads_per_sec: f64,
    pub writes_per_sec: f64,
    pub l1_hit_rate: f64,
    pub l2_hit_rate: f64,
    pub miss_rate: f64,
    pub l1_p50_us: f64,
    pub l1_p99_us: f64,
    pub l2_p50_us: f64,
    pub l2_p99_us: f64,
    pub miss_p50_us: f64,
    pub miss_p99_us: f64,
    pub write_p50_us: f64,
    pub write_p99_us: f64,
}

impl Sample {
    /// The traffic of `delta`, which lasted `seconds` and ended at `at_ms`.
    pub fn of(delta: &LevelsSnapshot, seconds: f64, at_ms: u64) -> Sample {
        let per_sec = |count: u64| if seconds > 0.0 { count as f64 / seconds } else { 0.0 };
        Sample {
            at_ms,
            seconds,
            reads: delta.reads(),
            writes: delta.writes.count(),
            reads_per_sec: per_sec(delta.reads()),
            writes_per_sec: per_sec(delta.writes.count()),
            l1_hit_rate: delta.rate(Level::L1),
            l2_hit_rate: delta.rate(Level::L2),
            miss_rate: delta.rate(Level::Miss),
            l1_p50_us: delta.l1.quantile_us(0.5),
            l1_p99_us: delta.l1.quantile_us(0.99),
            l2_p50_us: delta.l2.quantile_us(0.5),
            l2_p99_us: delta.l2.quantile_us(0.99),
            miss_p50_us: delta.miss.quantile_us(0.5),
            miss_p99_us: delta.miss.quantile_us(0.99),
            write_p50_us: delta.writes.quantile_us(0.5),
            write_p99_us: delta.writes.quantile_us(0.99),
        }
    }
}

/// The last [`HISTORY_SAMPLES`] intervals, oldest first.
#[derive(Debug, Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    pub fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if samples.len() == HISTORY_SAMPLES {
            samples.pop_front();
        }
        samples.push_back(sample);
    }

    pub fn samples(&self) -> Vec<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        samples.iter().cloned().collect()
    }

    pub fn last(&self) -> Option<Sample> {
        let samples = self.samples.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        samples.back().cloned()
    }

    pub fn clear(&self) {
        self.samples
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order() {
        let mut previous_end = 0;
        for index in 0..BUCKETS {
            let (low, high) = bounds_of(index);
            assert_eq!(
                low,
                previous_end,
                "bucket {index} starts where {} ended",
                index.max(1) - 1
            );
            assert!(high > low);
            assert_eq!(bucket_of(low), index);
            assert_eq!(bucket_of(high - 1), index);
            previous_end = high;
        }
    }

    #[test]
    fn quantiles_are_within_a_bucket_of_the_truth() {
        let histogram = Histogram::default();
        for us in 1..=1000u64 {
            histogram.record(Duration::from_micros(us), 1);
        }
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.count(), 1000);
        for (quantile, truth) in [(0.5, 500.0), (0.99, 990.0), (0.01, 10.0)] {
            let seen = snapshot.quantile_us(quantile);
            assert!((seen - truth).abs() / truth < 0.13, "p{quantile}: {seen} vs {truth}");
        }
        assert!((snapshot.mean_us() - 500.5).abs() < 0.01);
        assert_eq!(Snapshot::default().quantile_us(0.5), 0.0);
    }

    #[test]
    fn a_delta_holds_only_what_came_after() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_micros(10), 5);
        let before = histogram.snapshot();
        histogram.record(Duration::from_millis(2), 3);
        let delta = histogram.snapshot().since(&before);
        assert_eq!(delta.count(), 3);
        assert!((delta.quantile_us(0.5) - 2000.0).abs() / 2000.0 < 0.13);
    }

    #[test]
    fn prometheus_buckets_hold_every_request_once() {
        let histogram = Histogram::default();
        histogram.record(Duration::from_nanos(300), 2);
        histogram.record(Duration::from_micros(3), 4);
        histogram.record(Duration::from_secs(100), 1);
        let buckets = histogram.snapshot().prometheus_buckets();
        assert_eq!(buckets.iter().map(|bucket| bucket.1).sum::<u64>(), 7);
        assert!(buckets.windows(2).all(|pair| pair[0].0 < pair[1].0));
        // 300 ns is under the first bound (1.024 µs); 3 µs under 4.096 µs.
        assert_eq!(buckets[0], (1.024e-6, 2));
        assert_eq!(buckets[2], (4.096e-6, 4));
        assert_eq!(buckets.last(), Some(&(f64::INFINITY, 1)));
    }
}
