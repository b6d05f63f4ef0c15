//! The pattern engine's model of the whole key space (issue #7): the
//! tracked keys' histories in a bounded heavy-hitter structure, the global
//! load per hour of the day, and what both say (classes, priorities, peak
//! hours). It is fed events off the request path and answers queries; it
//! never sees a socket.

use bytes::Bytes;

pub use super::model::Outcome;
use super::model::{Class, DAY_MS, HOUR_MS, KeyStats, Verdict};
use super::topk::TopK;

/// One access, as the request path reports it.
#[derive(Debug, Clone)]
pub struct Event {
    /// The database the key is in.
    pub db: u32,
    pub key: Bytes,
    /// Wall time, milliseconds since the epoch.
    pub at_ms: u64,
    pub outcome: Outcome,
    pub latency_us: u32,
    pub size: u32,
}

/// Settings (PATTERN_* in the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Most keys tracked (`patterns.max_keys`).
    pub max_keys: usize,
    /// Days of hour-of-day history per key (PATTERN_HISTORY_DAYS).
    pub history_days: usize,
    /// Accesses before a key is classified (PATTERN_MIN_ACCESS_COUNT).
    pub min_accesses: u64,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            max_keys: 100_000,
            history_days: 7,
            min_accesses: 10,
        }
    }
}

/// What the engine says of one key.
#[derive(Debug, Clone)]
pub struct Insight {
    pub db: u32,
    pub key: Bytes,
    pub accesses: u64,
    pub verdict: Verdict,
    /// 1 (not worth preloading) to 10.
    pub priority: u8,
    pub hourly: [u64; 24],
    pub l1_hits: u64,
    pub l2_hits: u64,
    pub misses: u64,
    /// Mean latency of the reads Redis answered (the cost of an L1 miss).
    pub mean_latency_us: u64,
    pub mean_size: u64,
    pub last_ms: u64,
}

/// The model.
pub struct Engine {
    settings: Settings,
    keys: TopK<KeyStats>,
    /// Per ring day (days since the epoch), accesses per hour.
    load: Vec<(u64, [u64; 24])>,
    events: u64,
}

impl Engine {
    pub fn new(settings: Settings) -> Engine {
        Engine {
            settings,
            keys: TopK::new(settings.max_keys),
            load: vec![(u64::MAX, [0; 24]); settings.history_days.max(1)],
            events: 0,
        }
    }

    pub fn record(&mut self, event: &Event) {
        self.record_read(
            event.db,
            &event.key,
            event.at_ms,
            event.outcome,
            event.latency_us,
            event.size,
        );
    }

    /// Records one access of `key` (what [`Event`] holds, unpacked).
    pub fn record_read(&mut self, db: u32, key: &[u8], at_ms: u64, outcome: Outcome, latency_us: u32, size: u32) {
        self.events += 1;
        let day = at_ms / DAY_MS;
        let hour = ((at_ms % DAY_MS) / HOUR_MS) as usize;
        let slots = self.load.len() as u64;
        let slot = &mut self.load[(day % slots) as usize];
        if slot.0 != day {
            *slot = (day, [0; 24]);
        }
        slot.1[hour] += 1;
        let counter = self.keys.record(db, key);
        counter.value.record(
            at_ms,
            self.settings.history_days,
            outcome,
            u64::from(size),
            u64::from(latency_us),
        );
    }

    /// Events seen.
    pub fn events(&self) -> u64 {
        self.events
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Classifies keys from `min_accesses` reads on (at least 1).
    pub fn set_min_accesses(&mut self, min_accesses: u64) {
        self.settings.min_accesses = min_accesses.max(1);
    }

    /// Keys tracked now.
    pub fn tracked(&self) -> usize {
        self.keys.len()
    }

    /// Bytes the model holds (keys, their histories, the index), counting
    /// every tracked key's history at its full size: a bound, kept without
    /// walking the keys.
    pub fn bytes(&self) -> usize {
        let per_key = TopK::<KeyStats>::bytes_per_counter() + KeyStats::heap_bytes(self.settings.history_days);
        self.keys.len() * per_key + self.keys.key_bytes() + self.load.len() * std::mem::size_of::<(u64, [u64; 24])>()
    }

    /// What the engine says of a tracked key with enough accesses.
    pub fn insight(&self, db: u32, key: &[u8], now_ms: u64) -> Option<Insight> {
        let counter = self.keys.get(db, key)?;
        (counter.value.accesses >= self.settings.min_accesses).then(|| insight_of(counter, now_ms))
    }

    /// The tracked keys with enough accesses, highest priority first (then
    /// most accessed): those whose name passes `wanted` (checked first, it
    /// is cheap) and whose insight passes `keep`.
    pub fn ranked(&self, now_ms: u64, wanted: impl Fn(&[u8]) -> bool, keep: impl Fn(&Insight) -> bool) -> Vec<Insight> {
        let mut all: Vec<Insight> = self
            .keys
            .iter()
            .filter(|counter| counter.value.accesses >= self.settings.min_accesses && wanted(&counter.key))
            .map(|counter| insight_of(counter, now_ms))
            .filter(|insight| keep(insight))
            .collect();
        all.sort_by(|a, b| {
            b.priority
                .cmp(&a.priority)
                .then(b.accesses.cmp(&a.accesses))
                .then_with(|| a.key.cmp(&b.key))
        });
        all
    }

    /// Accesses per hour of the day, over the days kept.
    pub fn hourly_load(&self) -> [u64; 24] {
        let mut hours = [0u64; 24];
        for (day, counts) in &self.load {
            if *day != u64::MAX {
                for (total, count) in hours.iter_mut().zip(counts) {
                    *total += count;
                }
            }
        }
        hours
    }

    /// Days (of those kept) with any load.
    pub fn days_seen(&self) -> usize {
        self.load.iter().filter(|(day, _)| *day != u64::MAX).count()
    }

    /// The peak hours: those with at least 1.5 times the mean hourly load
    /// (none when there is no load).
    pub fn peaks(&self) -> Vec<u8> {
        let load = self.hourly_load();
        let total: u64 = load.iter().sum();
        if total == 0 {
            return Vec::new();
        }
        let threshold = total as f64 / 24.0 * 1.5;
        (0..24u8)
            .filter(|hour| load[*hour as usize] as f64 >= threshold)
            .collect()
    }
}

/// The first bytes of a snapshot file, then its format version.
const SNAPSHOT_MAGIC: &[u8; 8] = b"AURAPATS";
const SNAPSHOT_VERSION: u64 = 3;

/// Why a snapshot was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("not a pattern snapshot (wrong magic)")]
    Foreign,
    #[error("pattern snapshot version {0} is not one this build reads")]
    Version(u64),
    #[error("pattern snapshot is damaged ({0})")]
    Damaged(&'static str),
}

impl Engine {
    /// The model as bytes: magic, version, the hourly load, each tracked
    /// key's counter and history, and a SHA-256 of all of it.
    pub fn snapshot(&self) -> Vec<u8> {
        use sha2::Digest;
        let mut out = Vec::with_capacity(self.bytes());
        out.extend_from_slice(SNAPSHOT_MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&self.events.to_le_bytes());
        out.extend_from_slice(&(self.load.len() as u64).to_le_bytes());
        for (day, counts) in &self.load {
            out.extend_from_slice(&day.to_le_bytes());
            counts
                .iter()
                .for_each(|count| out.extend_from_slice(&count.to_le_bytes()));
        }
        out.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        for counter in self.keys.iter() {
            out.extend_from_slice(&u64::from(counter.db).to_le_bytes());
            out.extend_from_slice(&(counter.key.len() as u64).to_le_bytes());
            out.extend_from_slice(&counter.key);
            out.extend_from_slice(&counter.count.to_le_bytes());
            out.extend_from_slice(&counter.error.to_le_bytes());
            counter.value.encode(&mut out);
        }
        let digest = sha2::Sha256::digest(&out);
        out.extend_from_slice(&digest);
        out
    }

    /// A model from [`Engine::snapshot`]'s bytes, with these settings (keys
    /// beyond `max_keys` are dropped); an error for anything else.
    pub fn restore(settings: Settings, bytes: &[u8]) -> Result<Engine, SnapshotError> {
        use super::model::Reader;
        use sha2::Digest;
        if bytes.len() < SNAPSHOT_MAGIC.len() || &bytes[..SNAPSHOT_MAGIC.len()] != SNAPSHOT_MAGIC {
            return Err(SnapshotError::Foreign);
        }
        if bytes.len() < SNAPSHOT_MAGIC.len() + 8 + 32 {
            return Err(SnapshotError::Damaged("truncated"));
        }
        let (body, digest) = bytes.split_at(bytes.len() - 32);
        let mut input = Reader::new(&body[SNAPSHOT_MAGIC.len()..]);
        let version = input.u64().ok_or(SnapshotError::Damaged("truncated"))?;
        if version != SNAPSHOT_VERSION {
            return Err(SnapshotError::Version(version));
        }
        if sha2::Sha256::digest(body).as_slice() != digest {
            return Err(SnapshotError::Damaged("checksum"));
        }
        let damaged = SnapshotError::Damaged("malformed");
        let mut engine = Engine::new(settings);
        engine.events = input.u64().ok_or(damaged.clone())?;
        let days = input.u64().ok_or(damaged.clone())?;
        if days > 366 {
            return Err(damaged);
        }
        let mut load = Vec::with_capacity(days as usize);
        for _ in 0..days {
            let day = input.u64().ok_or(damaged.clone())?;
            let mut counts = [0u64; 24];
            for count in &mut counts {
                *count = input.u64().ok_or(damaged.clone())?;
            }
            load.push((day, counts));
        }
        // Into this engine's ring (another history_days keeps the newest).
        engine.load = super::model::place_days(load, engine.load.len());
        let keys = input.u64().ok_or(damaged.clone())?;
        let mut counters = Vec::new();
        for _ in 0..keys {
            let db = u32::try_from(input.u64().ok_or(damaged.clone())?).map_err(|_| damaged.clone())?;
            let length = input.u64().ok_or(damaged.clone())? as usize;
            let key = Bytes::copy_from_slice(input.take(length).ok_or(damaged.clone())?);
            let count = input.u64().ok_or(damaged.clone())?;
            let error = input.u64().ok_or(damaged.clone())?;
            let mut value = KeyStats::decode(&mut input).ok_or(damaged.clone())?;
            value.reshape(settings.history_days);
            counters.push(super::topk::Counter {
                db,
                key,
                count,
                error,
                value,
            });
        }
        if !input.is_empty() {
            return Err(damaged);
        }
        // The most counted first: a smaller max_keys keeps those.
        counters.sort_by_key(|counter| std::cmp::Reverse(counter.count));
        counters.into_iter().for_each(|counter| engine.keys.restore(counter));
        Ok(engine)
    }
}

fn insight_of(counter: &super::topk::Counter<KeyStats>, now_ms: u64) -> Insight {
    let stats = &counter.value;
    let verdict = stats.classify(now_ms);
    let priority = priority(&verdict, stats);
    Insight {
        db: counter.db,
        key: counter.key.clone(),
        accesses: stats.accesses,
        verdict,
        priority,
        hourly: stats.hourly(),
        l1_hits: stats.l1_hits,
        l2_hits: stats.l2_hits,
        misses: stats.misses,
        mean_latency_us: stats.mean_latency_us(),
        mean_size: stats.mean_size(),
        last_ms: stats.last_ms,
    }
}

/// 1 to 10: predictability (up to 5), frequency (up to 3: log10 of the
/// accesses), the cost of a miss (up to 2: its latency in ms, and its size
/// in 10 KB); an unpredictable key stays at 3 or below.
fn priority(verdict: &Verdict, stats: &KeyStats) -> u8 {
    let predictability = verdict.predictability * 5.0;
    let frequency = (stats.accesses.max(1) as f64).log10().min(3.0);
    let latency = (stats.mean_latency_us() as f64 / 1_000.0).min(1.0);
    let size = (stats.mean_size() as f64 / 10_240.0).min(1.0);
    let score = (predictability + frequency + latency + size).round().clamp(1.0, 10.0) as u8;
    match verdict.class {
        Class::Irregular | Class::Burst => score.min(3),
        _ => score,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patterns::trace::Rng;

    const START: u64 = 20_000 * DAY_MS;

    fn event(key: &str, at_ms: u64) -> Event {
        Event {
            db: 0,
            key: Bytes::copy_from_slice(key.as_bytes()),
            at_ms,
            outcome: Outcome::Miss,
            latency_us: 800,
            size: 2_000,
        }
    }

    #[test]
    fn a_snapshot_restores_the_model_and_bad_ones_are_refused() {
        let mut engine = Engine::new(Settings::default());
        for i in 0..50 {
            engine.record(&event("periodic:a", START + i * 300_000));
            engine.record(&event(&format!("other:{}", i % 7), START + i * 1_000));
        }
        let snapshot = engine.snapshot();
        let restored = Engine::restore(Settings::default(), &snapshot).expect("restores");
        let now = START + DAY_MS;
        let (before, after) = (
            engine.ranked(now, |_| true, |_| true),
            restored.ranked(now, |_| true, |_| true),
        );
        let summary = |all: &[Insight]| -> Vec<(Bytes, u64, Class, u8)> {
            all.iter()
                .map(|insight| {
                    (
                        insight.key.clone(),
                        insight.accesses,
                        insight.verdict.class,
                        insight.priority,
                    )
                })
                .collect()
        };
        assert_eq!(summary(&after), summary(&before));
        assert_eq!(restored.hourly_load(), engine.hourly_load());
        assert_eq!(restored.events(), engine.events());
        assert_eq!(
            Engine::restore(Settings::default(), b"{\"json\": 1}").err(),
            Some(SnapshotError::Foreign)
        );
        let mut damaged = snapshot.clone();
        let middle = damaged.len() / 2;
        damaged[middle] ^= 0xff;
        assert_eq!(
            Engine::restore(Settings::default(), &damaged).err(),
            Some(SnapshotError::Damaged("checksum"))
        );
        assert_eq!(
            Engine::restore(Settings::default(), &snapshot[..20]).err(),
            Some(SnapshotError::Damaged("truncated"))
        );
        let mut newer = snapshot.clone();
        newer[8] = 9;
        assert_eq!(
            Engine::restore(Settings::default(), &newer).err(),
            Some(SnapshotError::Version(9))
        );
    }

    #[test]
    fn peak_hours_are_found_exactly() {
        let mut engine = Engine::new(Settings::default());
        let mut rng = Rng::new(5);
        for day in 0..7 {
            for hour in 0..24u64 {
                // A quiet base load, and clear peaks at 9-11 and 18.
                let busy = matches!(hour, 9..=11 | 18);
                let count = if busy {
                    rng.between(900, 1_100)
                } else {
                    rng.between(150, 250)
                };
                for _ in 0..count {
                    let at = START + day * DAY_MS + hour * HOUR_MS + rng.between(0, HOUR_MS);
                    engine.record(&event(&format!("k:{}", rng.between(0, 500)), at));
                }
            }
        }
        assert_eq!(engine.peaks(), vec![9, 10, 11, 18]);
    }

    #[test]
    fn predictable_frequent_expensive_keys_rank_first() {
        let mut engine = Engine::new(Settings::default());
        for i in 0..200 {
            engine.record(&event("periodic:a", START + i * 300_000));
        }
        let mut rng = Rng::new(9);
        for _ in 0..20 {
            engine.record(&event("random:b", START + rng.between(0, 7 * DAY_MS)));
        }
        engine.record(&event("rare:c", START));
        let ranked = engine.ranked(START + 7 * DAY_MS, |_| true, |_| true);
        let keys: Vec<&[u8]> = ranked.iter().map(|insight| &insight.key[..]).collect();
        assert_eq!(
            keys,
            vec![&b"periodic:a"[..], b"random:b"],
            "rare:c is below the access minimum"
        );
        assert_eq!(ranked[0].verdict.class, Class::Periodic);
        assert!(ranked[0].priority >= 8, "{:?}", ranked[0]);
        assert!(ranked[1].priority <= 3, "{:?}", ranked[1]);
    }

    /// A million distinct keys (plus a few hot ones) through the engine:
    /// it tracks at most `max_keys`, stays within its budget, and still
    /// holds the hot keys.
    #[test]
    fn a_million_keys_stay_within_the_budget() {
        many_keys_stay_within_the_budget(1_000_000);
    }

    /// The same with ten million keys (about 13 s in a release build:
    /// `cargo test --release --lib ten_million -- --ignored`).
    #[test]
    #[ignore = "long: run in a release build"]
    fn ten_million_keys_stay_within_the_budget() {
        many_keys_stay_within_the_budget(10_000_000);
    }

    fn many_keys_stay_within_the_budget(distinct: u64) {
        let settings = Settings {
            max_keys: 10_000,
            ..Settings::default()
        };
        let mut engine = Engine::new(settings);
        let mut rng = Rng::new(3);
        let mut at = START;
        let mut key = Vec::with_capacity(24);
        for i in 0..distinct {
            at += 10;
            key.clear();
            if i % 8 == 0 {
                key.extend_from_slice(format!("hot:{}", rng.between(0, 50)).as_bytes());
            } else {
                key.extend_from_slice(format!("cold:{i}").as_bytes());
            }
            engine.record(&Event {
                db: 0,
                key: Bytes::copy_from_slice(&key),
                at_ms: at,
                outcome: Outcome::L2Hit,
                latency_us: 300,
                size: 100,
            });
        }
        assert_eq!(engine.tracked(), 10_000);
        // Budget: about 1 KB per tracked key (its hour table and gaps).
        let budget = 10_000 * 1_024;
        eprintln!(
            "{distinct} keys: {} tracked in {} bytes",
            engine.tracked(),
            engine.bytes()
        );
        assert!(engine.bytes() <= budget, "{} bytes", engine.bytes());
        for hot in 0..50 {
            assert!(
                engine.keys.get(0, format!("hot:{hot}").as_bytes()).is_some(),
                "hot:{hot} is tracked"
            );
        }
    }
}
