//! Counters every part of the proxy updates and the admin surface reads.
//! Plain relaxed atomics: they are reported, never used to decide anything.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

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

/// Buckets of [`Histogram`]: four per power of two.
const HISTOGRAM_BUCKETS: usize = 252;

/// A lock-free histogram of `u64` samples (durations in nanoseconds, sizes)
/// with four buckets per power of two, so a quantile is within 25% of the
/// true value; fixed size (about 2 KB), whatever the samples.
#[derive(Debug)]
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: (0..HISTOGRAM_BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    fn bucket(value: u64) -> usize {
        if value < 4 {
            return value as usize;
        }
        let exponent = 63 - value.leading_zeros() as usize;
        let sub = ((value >> (exponent - 2)) & 3) as usize;
        4 + (exponent - 2) * 4 + sub
    }

    /// The largest value that falls in `bucket`.
    fn upper_edge(bucket: usize) -> u64 {
        if bucket < 4 {
            return bucket as u64;
        }
        let exponent = (bucket - 4) / 4 + 2;
        let sub = ((bucket - 4) % 4) as u64;
        (((4 + sub + 1) as u128) << (exponent - 2))
            .saturating_sub(1)
            .min(u64::MAX as u128) as u64
    }

    pub fn record(&self, value: u64) {
        self.buckets[Self::bucket(value)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// The sum of all samples.
    pub fn sum(&self) -> u64 {
        self.sum.load(Ordering::Relaxed)
    }

    /// The value at quantile `q` (0..=1), as its bucket's upper edge; 0
    /// with no samples.
    pub fn quantile(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, count) in self.buckets.iter().enumerate() {
            seen += count.load(Ordering::Relaxed);
            if seen >= rank {
                return Self::upper_edge(bucket);
            }
        }
        Self::upper_edge(HISTOGRAM_BUCKETS - 1)
    }
}

#[cfg(test)]
mod histogram_tests {
    use super::Histogram;

    #[test]
    fn quantiles_are_within_a_quarter_of_the_truth() {
        let histogram = Histogram::default();
        for value in 1..=10_000u64 {
            histogram.record(value);
        }
        assert_eq!(histogram.count(), 10_000);
        assert_eq!(histogram.sum(), 10_000 * 10_001 / 2);
        for (q, truth) in [(0.5, 5_000u64), (0.99, 9_900), (1.0, 10_000)] {
            let got = histogram.quantile(q);
            assert!(got >= truth && got <= truth + truth / 4, "q{q}: {got} for {truth}");
        }
        assert_eq!(Histogram::default().quantile(0.99), 0);
        histogram.record(u64::MAX);
        assert_eq!(histogram.quantile(1.0), u64::MAX);
    }

    #[test]
    fn every_value_lands_in_a_bucket_whose_edge_covers_it() {
        for value in (0..64).flat_map(|shift| [1u64 << shift, (1u64 << shift) + 1, (1u64 << shift).wrapping_sub(1)]) {
            let bucket = Histogram::bucket(value);
            assert!(Histogram::upper_edge(bucket) >= value, "{value}");
            if bucket > 0 {
                assert!(Histogram::upper_edge(bucket - 1) < value, "{value}");
            }
        }
    }
}
