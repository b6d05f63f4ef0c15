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

pub use crate::stats::{Histogram, Snapshot};

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
