//! What the pattern engine keeps per key, and how it classifies a key from
//! it (issue #7). Time is given with each access (milliseconds of wall
//! time), so tests and tools replay weeks in a moment.

/// Milliseconds in an hour and a day.
pub const HOUR_MS: u64 = 3_600_000;
pub const DAY_MS: u64 = 24 * HOUR_MS;

/// Where an access was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// From L1, without asking Redis.
    L1Hit,
    /// Redis had the key.
    L2Hit,
    /// Redis did not have it (nil, or an empty hash).
    Miss,
}

/// How a key is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// Recurring in the same hours on different days.
    Daily,
    /// At a regular interval.
    Periodic,
    /// Dense clusters separated by long idle gaps.
    Burst,
    /// A steady rate across the hours.
    Constant,
    Irregular,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Daily => "daily",
            Class::Periodic => "periodic",
            Class::Burst => "burst",
            Class::Constant => "constant",
            Class::Irregular => "irregular",
        }
    }
}

/// The shortest period a periodic key has.
const MIN_PERIOD_MS: u64 = 1_000;

/// Gaps between accesses, by half powers of two of milliseconds (up to
/// 2^32 ms, about 50 days; longer gaps count in the last bucket).
const GAP_BUCKETS: usize = 64;

/// One key's history: hour-of-day counts per day (a ring of `days` days),
/// the gaps between its accesses, and running means.
///
/// Laid out for the engine's thread, which updates thousands of these a
/// second with cold caches: what every access changes comes first and
/// together; the hour in progress is counted here and reaches the day
/// table (its own allocation) only when the hour changes.
#[derive(Debug, Clone)]
#[repr(C)]
pub struct KeyStats {
    pub accesses: u64,
    pub last_ms: u64,
    /// Welford's running mean and sum of squared deviations of the gaps.
    gaps: u64,
    gap_mean: f64,
    gap_m2: f64,
    /// Accesses answered by L1, by Redis with a value, without one.
    pub l1_hits: u64,
    pub l2_hits: u64,
    pub misses: u64,
    size_total: u64,
    /// Latency of the accesses Redis answered (what a miss of L1 costs).
    latency_total_us: u64,
    /// The hour being counted (hours since the epoch) and its accesses,
    /// not yet in `days`.
    hour: u64,
    hour_count: u64,
    pub first_ms: u64,
    /// Gaps per bucket.
    gap_histogram: [u16; GAP_BUCKETS],
    /// Per ring slot: the day it holds (days since the epoch, `NO_DAY` for
    /// none) and that day's accesses per hour.
    days: Vec<(u64, [u16; 24])>,
}

const NO_DAY: u64 = u64::MAX;

/// `rows` (days since the epoch, per-hour counts; any order, `NO_DAY` for
/// none) as a ring of `slots` days, each day at `day % slots`, the newest
/// kept where two meet.
pub(super) fn place_days<T: Copy + Default>(rows: Vec<(u64, [T; 24])>, slots: usize) -> Vec<(u64, [T; 24])> {
    let slots = slots.max(1);
    let mut ring = vec![(NO_DAY, [T::default(); 24]); slots];
    for (day, counts) in rows {
        let slot = &mut ring[(day % slots as u64) as usize];
        if day != NO_DAY && (slot.0 == NO_DAY || slot.0 < day) {
            *slot = (day, counts);
        }
    }
    ring
}

impl Default for KeyStats {
    fn default() -> KeyStats {
        KeyStats {
            accesses: 0,
            last_ms: 0,
            gaps: 0,
            gap_mean: 0.0,
            gap_m2: 0.0,
            l1_hits: 0,
            l2_hits: 0,
            misses: 0,
            size_total: 0,
            latency_total_us: 0,
            hour: 0,
            hour_count: 0,
            first_ms: 0,
            gap_histogram: [0; GAP_BUCKETS],
            days: Vec::new(),
        }
    }
}

impl super::topk::Recycle for KeyStats {
    /// A new key's history in the old one's allocation.
    fn recycle(&mut self) {
        let mut days = std::mem::take(&mut self.days);
        days.iter_mut().for_each(|slot| *slot = (NO_DAY, [0; 24]));
        *self = KeyStats {
            days,
            ..KeyStats::default()
        };
    }
}

/// What a classification says of a key.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub class: Class,
    /// In [0, 1]: how well the class predicts the key's next access.
    pub predictability: f64,
    /// The next access expected (milliseconds of wall time), if any.
    pub next_ms: Option<u64>,
    /// For periodic keys: the period.
    pub period_ms: Option<u64>,
    /// The hours of the day holding most accesses (daily keys).
    pub hours: Vec<u8>,
}

impl KeyStats {
    /// Counts one access at `at_ms`; `latency_us` counts only for accesses
    /// Redis answered.
    pub fn record(&mut self, at_ms: u64, days: usize, outcome: Outcome, size: u64, latency_us: u64) {
        let hour = at_ms / HOUR_MS;
        if self.hour_count == 0 || hour == self.hour {
            self.hour = hour;
            self.hour_count += 1;
        } else if hour > self.hour {
            self.settle_hour(days);
            self.hour = hour;
            self.hour_count = 1;
        } else {
            // Late (an earlier hour's access arriving after this hour's).
            self.add_to_days(days, hour, 1);
        }
        if self.accesses == 0 {
            self.first_ms = at_ms;
        } else {
            let gap = at_ms.saturating_sub(self.last_ms);
            self.gaps += 1;
            let delta = gap as f64 - self.gap_mean;
            self.gap_mean += delta / self.gaps as f64;
            self.gap_m2 += delta * (gap as f64 - self.gap_mean);
            let bucket = bucket_of(gap);
            self.gap_histogram[bucket] = self.gap_histogram[bucket].saturating_add(1);
        }
        self.accesses += 1;
        self.last_ms = self.last_ms.max(at_ms);
        match outcome {
            Outcome::L1Hit => self.l1_hits += 1,
            Outcome::L2Hit => self.l2_hits += 1,
            Outcome::Miss => self.misses += 1,
        }
        if outcome != Outcome::L1Hit {
            self.latency_total_us += latency_us;
        }
        self.size_total += size;
    }

    pub fn mean_size(&self) -> u64 {
        self.size_total.checked_div(self.accesses).unwrap_or(0)
    }

    /// Mean latency of the accesses Redis answered.
    pub fn mean_latency_us(&self) -> u64 {
        self.latency_total_us
            .checked_div(self.l2_hits + self.misses)
            .unwrap_or(0)
    }

    /// Moves the hour in progress into the day table.
    fn settle_hour(&mut self, days: usize) {
        if self.hour_count > 0 {
            self.add_to_days(days, self.hour, self.hour_count);
            self.hour_count = 0;
        }
    }

    /// Makes the day table a ring of `days` days (each day in slot `day %
    /// days`), keeping the newest days it holds: after a restore, whose
    /// rows come in any order, or when `history_days` changed.
    pub(super) fn reshape(&mut self, days: usize) {
        let days = days.max(1);
        let placed = |(at, (day, _)): (usize, &(u64, [u16; 24]))| *day == NO_DAY || (day % days as u64) as usize == at;
        if self.days.len() == days && self.days.iter().enumerate().all(placed) {
            return;
        }
        let old = std::mem::replace(&mut self.days, vec![(NO_DAY, [0; 24]); days]);
        self.days = place_days(old, days);
    }

    fn add_to_days(&mut self, days: usize, hour: u64, count: u64) {
        let days = days.max(1);
        self.reshape(days);
        let day = hour / 24;
        let slot = &mut self.days[(day % days as u64) as usize];
        if slot.0 != day {
            if slot.0 != NO_DAY && slot.0 > day {
                // Older than the day this slot holds now: out of the window.
                return;
            }
            *slot = (day, [0; 24]);
        }
        let cell = &mut slot.1[(hour % 24) as usize];
        *cell = cell.saturating_add(count.min(u64::from(u16::MAX)) as u16);
    }

    /// The day table as it would be with the hour in progress settled
    /// (without changing it): (day, accesses per hour) for each day kept.
    fn rows(&self) -> Vec<(u64, [u16; 24])> {
        let ring = self.days.len().max(1) as u64;
        let mut rows: Vec<(u64, [u16; 24])> = self.days.iter().copied().filter(|(day, _)| *day != NO_DAY).collect();
        if self.hour_count > 0 {
            let day = self.hour / 24;
            let count = self.hour_count.min(u64::from(u16::MAX)) as u16;
            let at = (self.hour % 24) as usize;
            match rows.iter_mut().find(|(held, _)| *held == day) {
                Some((_, counts)) => counts[at] = counts[at].saturating_add(count),
                None => {
                    // It takes the place of the day its ring slot holds.
                    rows.retain(|(held, _)| held % ring != day % ring || *held > day);
                    let mut counts = [0; 24];
                    counts[at] = count;
                    rows.push((day, counts));
                }
            }
        }
        // A slot not reached since keeps a day that is out of the window.
        let newest = rows.iter().map(|(day, _)| *day).max().unwrap_or(0);
        rows.retain(|(day, _)| day + ring > newest);
        rows
    }

    /// Accesses per hour of the day over the days kept.
    pub fn hourly(&self) -> [u64; 24] {
        let mut hours = [0u64; 24];
        for (_, counts) in self.rows() {
            for (total, count) in hours.iter_mut().zip(counts) {
                *total += u64::from(count);
            }
        }
        hours
    }

    /// Bytes a key's history allocates at most (its hour table of `days`
    /// days and its gap buckets), besides the struct itself.
    pub fn heap_bytes(days: usize) -> usize {
        days.max(1) * std::mem::size_of::<(u64, [u16; 24])>() + GAP_BUCKETS * std::mem::size_of::<u16>()
    }

    /// The key's class and what it predicts, at `now_ms`.
    pub fn classify(&self, now_ms: u64) -> Verdict {
        let irregular = Verdict {
            class: Class::Irregular,
            predictability: 0.1,
            next_ms: None,
            period_ms: None,
            hours: Vec::new(),
        };
        if self.gaps < 2 {
            return irregular;
        }
        let std = (self.gap_m2 / self.gaps as f64).sqrt();
        let variation = std / self.gap_mean.max(1.0);
        let hourly = self.hourly();
        let total: u64 = hourly.iter().sum();
        // Periodic: regular gaps (nearly all within a factor of two of each
        // other, whatever a few stray accesses add).
        let regular = self
            .gap_histogram
            .windows(2)
            .map(|pair| u64::from(pair[0]) + u64::from(pair[1]))
            .max()
            .unwrap_or(0);
        let counted: u64 = self.gap_histogram.iter().map(|count| u64::from(*count)).sum();
        // (A key read many times a second is hot, not on a schedule.)
        if regular as f64 >= 0.8 * counted as f64 && self.gap_mean >= MIN_PERIOD_MS as f64 {
            let period = self.gap_mean.round() as u64;
            return Verdict {
                class: Class::Periodic,
                predictability: (1.0 - variation * 2.0).clamp(0.0, 1.0),
                next_ms: Some(self.last_ms + period),
                period_ms: Some(period),
                hours: Vec::new(),
            };
        }
        // Daily: most accesses within the same hours of the day (the
        // busiest hour and its neighbours), on several days.
        let busiest = (0..24).max_by_key(|hour| (hourly[*hour], 24 - hour)).unwrap_or(0);
        let window: Vec<usize> = [23, 0, 1].iter().map(|offset| (busiest + offset) % 24).collect();
        let covered: u64 = window.iter().map(|hour| hourly[*hour]).sum();
        let rows = self.rows();
        let active_days = rows.len();
        let days_in_window = rows
            .iter()
            .filter(|(_, counts)| window.iter().any(|hour| counts[*hour] > 0))
            .count();
        let concentration = covered as f64 / total.max(1) as f64;
        if concentration >= 0.7 && days_in_window >= 3 && days_in_window as f64 >= 0.6 * active_days as f64 {
            let consistency = days_in_window as f64 / active_days.max(1) as f64;
            let mut hours: Vec<u8> = window
                .iter()
                .filter(|hour| hourly[**hour] > 0)
                .map(|hour| *hour as u8)
                .collect();
            hours.sort_unstable();
            let first_hour = (busiest + 23) % 24;
            let first_hour = if hourly[first_hour] > 0 { first_hour } else { busiest } as u64;
            let today = now_ms / DAY_MS * DAY_MS;
            let mut next = today + first_hour * HOUR_MS;
            if next <= now_ms {
                next += DAY_MS;
            }
            return Verdict {
                class: Class::Daily,
                predictability: (concentration * consistency).clamp(0.0, 1.0),
                next_ms: Some(next),
                period_ms: None,
                hours,
            };
        }
        // Burst: most gaps short, some a thousand times longer.
        let short_limit = bucket_of((self.gap_mean / 20.0) as u64);
        let short: u64 = self.gap_histogram[..=short_limit]
            .iter()
            .map(|count| u64::from(*count))
            .sum();
        let longest = self.gap_histogram.iter().rposition(|count| *count > 0).unwrap_or(0);
        let typical = median_bucket(&self.gap_histogram);
        if short as f64 >= 0.7 * counted as f64 && longest >= typical + 16 {
            return Verdict {
                class: Class::Burst,
                predictability: 0.3,
                next_ms: None,
                period_ms: None,
                hours: Vec::new(),
            };
        }
        // Constant: accesses in nearly every hour, evenly.
        let active_hours = hourly.iter().filter(|count| **count > 0).count();
        let mean = total as f64 / 24.0;
        let hourly_variation =
            (hourly.iter().map(|c| (*c as f64 - mean).powi(2)).sum::<f64>() / 24.0).sqrt() / mean.max(1e-9);
        if active_hours >= 20 && hourly_variation < 0.5 {
            return Verdict {
                class: Class::Constant,
                predictability: (1.0 - hourly_variation).clamp(0.0, 1.0),
                next_ms: Some(self.last_ms + self.gap_mean.round() as u64),
                period_ms: None,
                hours: Vec::new(),
            };
        }
        irregular
    }
}

/// Reads a snapshot's little-endian integers in order.
pub(super) struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes }
    }

    pub(super) fn take(&mut self, count: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < count {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(count);
        self.bytes = rest;
        Some(taken)
    }

    pub(super) fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    pub(super) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }

    pub(super) fn f64(&mut self) -> Option<f64> {
        Some(f64::from_bits(self.u64()?))
    }

    pub(super) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

impl KeyStats {
    /// Appends this history to a snapshot.
    pub(super) fn encode(&self, out: &mut Vec<u8>) {
        let rows = self.rows();
        out.extend_from_slice(&(rows.len() as u64).to_le_bytes());
        for (day, counts) in &rows {
            out.extend_from_slice(&day.to_le_bytes());
            counts
                .iter()
                .for_each(|count| out.extend_from_slice(&count.to_le_bytes()));
        }
        for value in [
            self.accesses,
            self.first_ms,
            self.last_ms,
            self.gaps,
            self.gap_mean.to_bits(),
            self.gap_m2.to_bits(),
            self.l1_hits,
            self.l2_hits,
            self.misses,
            self.size_total,
            self.latency_total_us,
        ] {
            out.extend_from_slice(&value.to_le_bytes());
        }
        out.extend_from_slice(&(GAP_BUCKETS as u64).to_le_bytes());
        self.gap_histogram
            .iter()
            .for_each(|count| out.extend_from_slice(&count.to_le_bytes()));
    }

    /// Reads a history [`KeyStats::encode`] wrote; None if it is not one.
    pub(super) fn decode(input: &mut Reader<'_>) -> Option<KeyStats> {
        let days = input.u64()?;
        if days > 366 {
            return None;
        }
        let mut stats = KeyStats::default();
        for _ in 0..days {
            let day = input.u64()?;
            let mut counts = [0u16; 24];
            for count in &mut counts {
                *count = input.u16()?;
            }
            stats.days.push((day, counts));
        }
        stats.accesses = input.u64()?;
        stats.first_ms = input.u64()?;
        stats.last_ms = input.u64()?;
        stats.gaps = input.u64()?;
        stats.gap_mean = input.f64()?;
        stats.gap_m2 = input.f64()?;
        stats.l1_hits = input.u64()?;
        stats.l2_hits = input.u64()?;
        stats.misses = input.u64()?;
        stats.size_total = input.u64()?;
        stats.latency_total_us = input.u64()?;
        if input.u64()? != GAP_BUCKETS as u64 {
            return None;
        }
        for bucket in &mut stats.gap_histogram {
            *bucket = input.u16()?;
        }
        Some(stats)
    }
}

/// Twice the base-2 logarithm of a gap, rounded down.
fn bucket_of(gap: u64) -> usize {
    let gap = gap.max(1);
    let octave = 63 - gap.leading_zeros() as usize;
    // The upper half of an octave starts at 2^octave * sqrt(2).
    let upper = (gap as f64) >= (1u64 << octave) as f64 * std::f64::consts::SQRT_2;
    (2 * octave + usize::from(upper)).min(GAP_BUCKETS - 1)
}

fn median_bucket(histogram: &[u16]) -> usize {
    let total: u64 = histogram.iter().map(|count| u64::from(*count)).sum();
    let mut seen = 0;
    for (bucket, count) in histogram.iter().enumerate() {
        seen += u64::from(*count);
        if seen * 2 >= total {
            return bucket;
        }
    }
    GAP_BUCKETS - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u64 = 20_000 * DAY_MS;

    #[test]
    fn a_periodic_key_predicts_its_next_access() {
        let mut stats = KeyStats::default();
        for i in 0..30 {
            stats.record(START + i * 600_000, 7, Outcome::L2Hit, 10, 100);
        }
        let verdict = stats.classify(START + 29 * 600_000);
        assert_eq!(verdict.class, Class::Periodic);
        assert_eq!(verdict.period_ms, Some(600_000));
        assert_eq!(verdict.next_ms, Some(START + 30 * 600_000));
        assert!(verdict.predictability > 0.9, "{verdict:?}");
    }

    #[test]
    fn a_daily_key_is_expected_at_its_hour_tomorrow() {
        let mut stats = KeyStats::default();
        for day in 0..5 {
            for minute in [5, 20, 40] {
                stats.record(
                    START + day * DAY_MS + 9 * HOUR_MS + minute * 60_000,
                    7,
                    Outcome::Miss,
                    10,
                    100,
                );
            }
        }
        let now = START + 4 * DAY_MS + 12 * HOUR_MS;
        let verdict = stats.classify(now);
        assert_eq!(verdict.class, Class::Daily);
        assert_eq!(verdict.hours, vec![9]);
        assert_eq!(verdict.next_ms, Some(START + 5 * DAY_MS + 9 * HOUR_MS));
        assert_eq!(stats.hourly()[9], 15);
    }

    #[test]
    fn the_ring_keeps_only_the_last_days() {
        let mut stats = KeyStats::default();
        for day in 0..10 {
            stats.record(START + day * DAY_MS + 3 * HOUR_MS, 7, Outcome::L2Hit, 10, 100);
        }
        assert_eq!(stats.hourly()[3], 7, "the three oldest days are gone");
        assert_eq!(stats.accesses, 10);
    }
}
