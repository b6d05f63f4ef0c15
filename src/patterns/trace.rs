//! A deterministic (seeded) week-long workload mixing keys of known
//! classes (daily, periodic, burst, constant) with random keys and noise,
//! for checking the classifier and, later, the preloader (issue #7).

use super::model::{Class, DAY_MS, HOUR_MS};

/// One access of the trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    pub at_ms: u64,
    pub key: String,
}

/// The accesses (in time order) and each key's true class (None: random).
pub struct Trace {
    pub accesses: Vec<Access>,
    pub labels: Vec<(String, Option<Class>)>,
    pub start_ms: u64,
    pub end_ms: u64,
}

/// xorshift64*: small, fast and the same everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [low, high).
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low).max(1)
    }
}

/// `per_class` keys of each known class and as many random ones, over
/// `days` days; `noise` of the known keys' accesses are moved to random
/// times.
pub fn generate(seed: u64, per_class: usize, days: u64, noise: f64) -> Trace {
    let mut rng = Rng::new(seed);
    // A Monday at midnight, some way into the epoch.
    let start_ms = 20_000 * DAY_MS;
    let end_ms = start_ms + days * DAY_MS;
    let mut accesses = Vec::new();
    let mut labels = Vec::new();
    let push = |rng: &mut Rng, accesses: &mut Vec<Access>, key: &str, at_ms: u64| {
        let at_ms = if (rng.next_u64() % 10_000) as f64 / 10_000.0 < noise {
            rng.between(start_ms, end_ms)
        } else {
            at_ms
        };
        if at_ms < end_ms {
            accesses.push(Access {
                at_ms,
                key: key.to_string(),
            });
        }
    };
    for index in 0..per_class {
        // Daily: a few accesses within the same hour (or two) on most days.
        let key = format!("daily:{index}");
        let hour = rng.between(0, 24);
        for day in 0..days {
            if rng.next_u64().is_multiple_of(8) {
                continue;
            }
            for _ in 0..rng.between(3, 12) {
                let at = start_ms + day * DAY_MS + hour * HOUR_MS + rng.between(0, HOUR_MS);
                push(&mut rng, &mut accesses, &key, at);
            }
        }
        labels.push((key, Some(Class::Daily)));
        // Periodic: every 1 to 120 minutes, a few percent of jitter.
        let key = format!("periodic:{index}");
        let period = rng.between(60_000, 120 * 60_000);
        let mut at = start_ms + rng.between(0, period);
        while at < end_ms {
            push(&mut rng, &mut accesses, &key, at);
            let jitter = period / 20;
            at += period - jitter + rng.between(0, 2 * jitter + 1);
        }
        labels.push((key, Some(Class::Periodic)));
        // Burst: a handful of dense clusters at random times.
        let key = format!("burst:{index}");
        for _ in 0..rng.between(3, 8) {
            let begin = rng.between(start_ms, end_ms - HOUR_MS);
            for _ in 0..rng.between(15, 40) {
                let at = begin + rng.between(0, 120_000);
                push(&mut rng, &mut accesses, &key, at);
            }
        }
        labels.push((key, Some(Class::Burst)));
        // Constant: a steady random rate (exponential gaps).
        let key = format!("constant:{index}");
        let mean_gap = rng.between(60_000, 20 * 60_000) as f64;
        let mut at = start_ms as f64;
        loop {
            let uniform = (rng.next_u64() % 1_000_000 + 1) as f64 / 1_000_001.0;
            at += -mean_gap * uniform.ln();
            if at as u64 >= end_ms {
                break;
            }
            push(&mut rng, &mut accesses, &key, at as u64);
        }
        labels.push((key, Some(Class::Constant)));
        // Random: a few accesses at random times.
        let key = format!("random:{index}");
        for _ in 0..rng.between(10, 40) {
            let at = rng.between(start_ms, end_ms);
            push(&mut rng, &mut accesses, &key, at);
        }
        labels.push((key, None));
    }
    accesses.sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then_with(|| a.key.cmp(&b.key)));
    Trace {
        accesses,
        labels,
        start_ms,
        end_ms,
    }
}

/// [`generate`] plus `peak_keys` daily keys read in the hours `peak` (so
/// those hours are the load's peak), each 10 to 30 times on most days:
/// the preloader's evaluation (`scripts/preload-eval.sh`).
pub fn generate_with_peak(
    seed: u64,
    per_class: usize,
    days: u64,
    noise: f64,
    peak: std::ops::Range<u64>,
    peak_keys: usize,
) -> Trace {
    let mut trace = generate(seed, per_class, days, noise);
    let mut rng = Rng::new(seed ^ 0x9e37_79b9);
    for index in 0..peak_keys {
        let key = format!("evening:{index}");
        let hour = rng.between(peak.start, peak.end);
        for day in 0..days {
            if rng.next_u64().is_multiple_of(10) {
                continue;
            }
            for _ in 0..rng.between(10, 30) {
                let at_ms = trace.start_ms + day * DAY_MS + hour * HOUR_MS + rng.between(0, HOUR_MS);
                trace.accesses.push(Access {
                    at_ms,
                    key: key.clone(),
                });
            }
        }
        trace.labels.push((key, Some(Class::Daily)));
    }
    trace
        .accesses
        .sort_by(|a, b| a.at_ms.cmp(&b.at_ms).then_with(|| a.key.cmp(&b.key)));
    trace
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::patterns::model::KeyStats;

    /// The classifier against the trace's known labels: precision and
    /// recall per class at the default settings.
    #[test]
    fn the_classifier_finds_the_known_classes() {
        for seed in [7, 11, 23] {
            classify_trace(seed);
        }
    }

    fn classify_trace(seed: u64) {
        let trace = generate(seed, 60, 7, 0.03);
        let mut stats: HashMap<&str, KeyStats> = HashMap::new();
        for access in &trace.accesses {
            stats.entry(access.key.as_str()).or_default().record(
                access.at_ms,
                7,
                crate::patterns::model::Outcome::Miss,
                100,
                500,
            );
        }
        let mut report = String::new();
        let mut confusion: std::collections::BTreeMap<(String, &str), usize> = Default::default();
        for (key, label) in &trace.labels {
            if let Some(key_stats) = stats.get(key.as_str()).filter(|stats| stats.accesses >= 10) {
                let label = label.map_or("random", Class::as_str).to_string();
                *confusion
                    .entry((label, key_stats.classify(trace.end_ms).class.as_str()))
                    .or_insert(0) += 1;
            }
        }
        report.push_str(&format!("{confusion:?}\n"));
        for class in [Class::Daily, Class::Periodic, Class::Burst, Class::Constant] {
            let (mut true_positive, mut predicted, mut actual) = (0, 0, 0);
            for (key, label) in &trace.labels {
                let Some(key_stats) = stats.get(key.as_str()) else {
                    continue;
                };
                if key_stats.accesses < 10 {
                    continue;
                }
                let verdict = key_stats.classify(trace.end_ms);
                let is = *label == Some(class);
                let said = verdict.class == class;
                actual += usize::from(is);
                predicted += usize::from(said);
                true_positive += usize::from(is && said);
            }
            let precision = true_positive as f64 / predicted.max(1) as f64;
            let recall = true_positive as f64 / actual.max(1) as f64;
            report.push_str(&format!(
                "{}: precision {precision:.2} recall {recall:.2}\n",
                class.as_str()
            ));
            assert!(
                precision >= 0.9 && recall >= 0.9,
                "seed {seed}, {}\n{report}",
                class.as_str()
            );
        }
        eprintln!("seed {seed}\n{report}");
    }
}
