//! Counters every part of the proxy updates and the admin surface reads.
//! Plain relaxed atomics: they are reported, never used to decide anything.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

/// Process-wide counters and gauges.
#[derive(Debug, Default)]
pub struct Stats {
    clients: AtomicUsize,
    clients_total: AtomicU64,
    clients_rejected: AtomicU64,
    upstream_pooled: AtomicUsize,
    upstream_dedicated: AtomicUsize,
    upstream_tracking: AtomicUsize,
    upstream_errors: AtomicU64,
    protocol_errors: AtomicU64,
    output_limit_disconnects: AtomicU64,
    /// Reads per level and writes, with their latencies.
    pub levels: crate::levels::Levels,
}

/// Which gauge an upstream connection counts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionKind {
    /// Shared by many clients.
    Pooled,
    /// Owned by one client.
    Dedicated,
    /// Receives Redis's invalidation messages for the L1 cache.
    Tracking,
}

impl Stats {
    /// The counters (not the gauges) back to zero (`PROXY STATS RESET`).
    pub fn reset(&self) {
        for counter in [
            &self.clients_total,
            &self.clients_rejected,
            &self.upstream_errors,
            &self.protocol_errors,
            &self.output_limit_disconnects,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
        self.levels.reset();
    }

    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }
    pub fn clients_total(&self) -> u64 {
        self.clients_total.load(Ordering::Relaxed)
    }
    pub fn clients_rejected(&self) -> u64 {
        self.clients_rejected.load(Ordering::Relaxed)
    }
    pub fn upstream_pooled(&self) -> usize {
        self.upstream_pooled.load(Ordering::Relaxed)
    }
    pub fn upstream_dedicated(&self) -> usize {
        self.upstream_dedicated.load(Ordering::Relaxed)
    }
    pub fn upstream_tracking(&self) -> usize {
        self.upstream_tracking.load(Ordering::Relaxed)
    }
    pub fn upstream_errors(&self) -> u64 {
        self.upstream_errors.load(Ordering::Relaxed)
    }
    pub fn protocol_errors(&self) -> u64 {
        self.protocol_errors.load(Ordering::Relaxed)
    }
    pub fn output_limit_disconnects(&self) -> u64 {
        self.output_limit_disconnects.load(Ordering::Relaxed)
    }

    /// Counts a client in if there is room under `max`; false when full.
    pub fn try_add_client(&self, max: usize) -> bool {
        let admitted = self
            .clients
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |now| {
                (now < max).then_some(now + 1)
            })
            .is_ok();
        if admitted {
            self.clients_total.fetch_add(1, Ordering::Relaxed);
        } else {
            self.clients_rejected.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }
    pub fn remove_client(&self) {
        self.clients.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn connection_opened(&self, kind: ConnectionKind) {
        self.gauge(kind).fetch_add(1, Ordering::Relaxed);
    }
    pub fn connection_closed(&self, kind: ConnectionKind) {
        self.gauge(kind).fetch_sub(1, Ordering::Relaxed);
    }
    pub fn upstream_error(&self) {
        self.upstream_errors.fetch_add(1, Ordering::Relaxed);
    }
    pub fn protocol_error(&self) {
        self.protocol_errors.fetch_add(1, Ordering::Relaxed);
    }
    pub fn output_limit_disconnect(&self) {
        self.output_limit_disconnects.fetch_add(1, Ordering::Relaxed);
    }

    fn gauge(&self, kind: ConnectionKind) -> &AtomicUsize {
        match kind {
            ConnectionKind::Pooled => &self.upstream_pooled,
            ConnectionKind::Dedicated => &self.upstream_dedicated,
            ConnectionKind::Tracking => &self.upstream_tracking,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_admission_stops_at_the_limit() {
        let stats = Stats::default();
        assert!(stats.try_add_client(2));
        assert!(stats.try_add_client(2));
        assert!(!stats.try_add_client(2));
        stats.remove_client();
        assert!(stats.try_add_client(2));
        assert_eq!(
            (stats.clients(), stats.clients_total(), stats.clients_rejected()),
            (2, 3, 1)
        );
    }
}

/// Sub-buckets per power of two.
const SUBS: usize = 4;
/// Values below this many nanoseconds have a bucket each.
const LINEAR: u64 = SUBS as u64;
/// Enough buckets for 2^40 ns (18 minutes); longer goes in the last.
pub const BUCKETS: usize = SUBS + (40 - 2) * SUBS;

/// A lock-free histogram of durations in nanoseconds: four buckets per
/// power of two (so a quantile is within about 12 % of the truth), fixed
/// size (about 1.3 KB), relaxed atomics.
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

/// The nanoseconds bucket `index` starts at, and where the next starts,
/// for [`bucket_of`]'s input: a latency of `ns` is counted at
/// `bucket_of(ns - 1)`, so the bucket holds latencies in (low, high].
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
        // Bucket i holds (low, high] of its bounds: a value at a bound
        // counts under it, as Prometheus's `le` means.
        self.buckets[bucket_of(ns.saturating_sub(1))].fetch_add(count, Ordering::Relaxed);
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

    /// The `quantile` (0..=1) in microseconds: the middle of its bucket,
    /// so within an eighth of the truth however the values in the bucket
    /// lie (0 when empty).
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
                return (low + 1 + high) as f64 / 2.0 / 1_000.0;
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

#[cfg(test)]
mod histogram_tests {
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
