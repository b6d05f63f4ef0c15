//! Transparent compression (issue #5): what a value becomes on its way to
//! Redis, and back.
//!
//! - [`envelope`] is the stored format (persistent data, pinned by golden
//!   tests).
//! - [`Policy::encode`] decides, per value, whether it is compressed,
//!   escaped (a raw value that begins with the magic) or stored as it is,
//!   and says why ([`Outcome`]).
//! - [`CompressionStats`] counts it per codec and namespace.
//!
//! Values Redis interprets by their content are never compressed, so every
//! command that reads them answers exactly as for the original: numbers
//! (INCR/DECR/INCRBYFLOAT, SORT BY weights) and HyperLogLogs (PF*). A value
//! that is not a number stays one that is not a number once compressed, so
//! those commands give Redis's own error either way.
//!
//! [`strings`] applies it to the string commands (SET family encoded, GET
//! family decoded, APPEND/SETRANGE as a read-modify-write).

pub mod envelope;
pub mod strings;

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

pub use envelope::{Codec, DecodeError};

use crate::stats::Histogram;

/// Redis's longest number string (MAX_LONG_DOUBLE_CHARS in util.h): a
/// longer value is never read as a number.
const LONGEST_NUMBER: usize = 5 * 1024;

/// `value` compressed with `codec` at `level` (zstd: 1..=22 and negative
/// fast levels; gzip/zlib: clamped to 0..=9). `Codec::Stored` copies.
pub fn compress(codec: Codec, level: i32, value: &[u8]) -> Vec<u8> {
    match codec {
        Codec::Stored => value.to_vec(),
        // Only an invalid level can fail, and configuration validates it;
        // the default level then still gives valid output.
        Codec::Zstd => zstd_compress(value, level)
            .or_else(|_| zstd_compress(value, zstd::DEFAULT_COMPRESSION_LEVEL))
            .unwrap_or_else(|_| value.to_vec()),
        Codec::Gzip => deflate(flate2::write::GzEncoder::new(Vec::new(), flate_level(level)), value),
        Codec::Zlib => deflate(flate2::write::ZlibEncoder::new(Vec::new(), flate_level(level)), value),
    }
}

thread_local! {
    /// One zstd compression context per thread, kept between values: a new
    /// context per value (what `zstd::bulk::compress` does) costs more than
    /// compressing a 10 KB value.
    static ZSTD_COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
}

fn zstd_compress(value: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    ZSTD_COMPRESSOR.with(|cell| {
        let mut slot = cell.borrow_mut();
        match slot.as_mut() {
            Some((current, compressor)) if *current == level => compressor.compress(value),
            _ => {
                let mut compressor = zstd::bulk::Compressor::new(level)?;
                let compressed = compressor.compress(value);
                *slot = Some((level, compressor));
                compressed
            }
        }
    })
}

fn flate_level(level: i32) -> flate2::Compression {
    flate2::Compression::new(level.clamp(0, 9) as u32)
}

/// Writing to a Vec cannot fail, so neither can these encoders.
fn deflate<W: Write + Finish>(mut encoder: W, value: &[u8]) -> Vec<u8> {
    let _ = encoder.write_all(value);
    encoder.finish_vec()
}

trait Finish {
    fn finish_vec(self) -> Vec<u8>;
}

impl Finish for flate2::write::GzEncoder<Vec<u8>> {
    fn finish_vec(self) -> Vec<u8> {
        self.finish().unwrap_or_default()
    }
}

impl Finish for flate2::write::ZlibEncoder<Vec<u8>> {
    fn finish_vec(self) -> Vec<u8> {
        self.finish().unwrap_or_default()
    }
}

/// How one namespace's values are encoded.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    pub enabled: bool,
    /// Zstd, Gzip or Zlib.
    pub codec: Codec,
    pub level: i32,
    /// Values shorter than this are stored as they are.
    pub threshold: usize,
    /// Store raw unless compression saves at least this fraction.
    pub min_savings: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            enabled: true,
            codec: Codec::Zstd,
            level: 3,
            threshold: 1024,
            min_savings: 0.1,
        }
    }
}

/// What [`Policy::encode`] did with a value, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Stored compressed.
    Compressed,
    /// Stored as is: compression is off for its namespace.
    Disabled,
    /// Stored as is: shorter than the threshold.
    BelowThreshold,
    /// Stored as is: Redis reads it by content (a number, a HyperLogLog).
    Interpreted,
    /// Stored as is: compression saved less than `min_savings`.
    PoorSavings,
    /// Stored behind a header, as is: it begins with the magic.
    Escaped,
}

impl Policy {
    /// What to store for `value`, and why. The bytes are borrowed when the
    /// value is stored as it is.
    pub fn encode<'a>(&self, value: &'a [u8]) -> (Cow<'a, [u8]>, Outcome) {
        let raw = |outcome| {
            if envelope::starts_with_magic(value) {
                (Cow::Owned(envelope::escape(value)), Outcome::Escaped)
            } else {
                (Cow::Borrowed(value), outcome)
            }
        };
        if !self.enabled {
            return raw(Outcome::Disabled);
        }
        if value.len() < self.threshold.max(1) {
            return raw(Outcome::BelowThreshold);
        }
        if is_interpreted_by_redis(value) {
            return raw(Outcome::Interpreted);
        }
        let payload = compress(self.codec, self.level, value);
        let stored = envelope::wrap(self.codec, value.len() as u64, &payload);
        let most = value.len() as f64 * (1.0 - self.min_savings);
        if stored.len() as f64 > most || stored.len() >= value.len() {
            return raw(Outcome::PoorSavings);
        }
        (Cow::Owned(stored), Outcome::Compressed)
    }
}

/// Whether Redis gives `value` a meaning of its own: a HyperLogLog (its
/// "HYLL" header), or a string `strtold` would read whole as a number
/// (what INCR, INCRBYFLOAT and SORT weights accept; no leading space, as
/// Redis refuses one). Errs towards yes: such a value is merely not
/// compressed.
pub fn is_interpreted_by_redis(value: &[u8]) -> bool {
    value.starts_with(b"HYLL") || (value.len() < LONGEST_NUMBER && looks_like_number(value))
}

/// `strtold`'s grammar, whole-string: [sign] (decimal [exponent] | 0x hex
/// [p exponent] | inf | infinity | nan[(...)]).
fn looks_like_number(value: &[u8]) -> bool {
    let text = match value.first() {
        Some(b'+' | b'-') => &value[1..],
        _ => value,
    };
    let lower = text.to_ascii_lowercase();
    if lower == b"inf" || lower == b"infinity" || lower.starts_with(b"nan") {
        return true;
    }
    let (digits, exponent_mark): (&[u8], u8) = match lower.strip_prefix(b"0x") {
        Some(hex) => (hex, b'p'),
        None => (&lower, b'e'),
    };
    let is_digit = |byte: &u8| {
        if exponent_mark == b'p' {
            byte.is_ascii_hexdigit()
        } else {
            byte.is_ascii_digit()
        }
    };
    let (mantissa, exponent) = match digits.iter().position(|byte| *byte == exponent_mark) {
        Some(at) => (&digits[..at], Some(&digits[at + 1..])),
        None => (digits, None),
    };
    let mut seen_digit = false;
    let mut seen_dot = false;
    for byte in mantissa {
        match byte {
            b'.' if !seen_dot => seen_dot = true,
            byte if is_digit(byte) => seen_digit = true,
            _ => return false,
        }
    }
    if !seen_digit {
        return false;
    }
    match exponent {
        None => true,
        Some(exponent) => {
            let exponent = exponent
                .strip_prefix(b"+")
                .or_else(|| exponent.strip_prefix(b"-"))
                .unwrap_or(exponent);
            !exponent.is_empty() && exponent.iter().all(u8::is_ascii_digit)
        }
    }
}

/// The compression stage as the session uses it: each namespace's policy,
/// the statistics, and the bomb limit.
///
/// The policies change at run time (`PROXY CONFIG SET compression.*`,
/// [`Compression::set_policies`]); a write copies its namespace's policy
/// out under a read lock and encodes without it. Decoding reads no policy:
/// an envelope says how it was made, so values stored under an earlier
/// policy (or with compression since turned off) still decode.
#[derive(Debug)]
pub struct Compression {
    policies: RwLock<Policies>,
    separator: u8,
    /// Largest original length an envelope may declare.
    pub limit: u64,
    /// Hash field values are compressed too.
    pub hashes: bool,
    pub stats: CompressionStats,
}

/// The default policy and each configured namespace's.
#[derive(Debug)]
struct Policies {
    default: Policy,
    namespaces: HashMap<String, Policy>,
}

impl Policies {
    /// The policies `config` gives: `[compression]` for every namespace,
    /// a `[namespaces.<name>]` section's own settings winning over it.
    fn from_config(config: &crate::config::Config) -> Policies {
        let codec = |algorithm: crate::config::CompressionAlgorithm| match algorithm {
            crate::config::CompressionAlgorithm::Zstd => Codec::Zstd,
            crate::config::CompressionAlgorithm::Gzip => Codec::Gzip,
            crate::config::CompressionAlgorithm::Zlib => Codec::Zlib,
        };
        let settings = &config.compression;
        let default = Policy {
            enabled: settings.enabled,
            codec: codec(settings.algorithm),
            level: settings.level,
            threshold: settings.threshold,
            min_savings: settings.min_savings,
        };
        let namespaces = config
            .namespaces
            .iter()
            .map(|(name, overrides)| {
                let policy = Policy {
                    enabled: overrides.compression_enabled.unwrap_or(default.enabled),
                    codec: overrides.compression_algorithm.map(codec).unwrap_or(default.codec),
                    level: overrides.compression_level.unwrap_or(default.level),
                    threshold: overrides.compression_threshold.unwrap_or(default.threshold),
                    min_savings: default.min_savings,
                };
                (name.clone(), policy)
            })
            .collect();
        Policies { default, namespaces }
    }
}

/// The namespace of keys without a separator.
pub const NO_NAMESPACE: &str = "(none)";

impl Compression {
    pub fn new(config: &crate::config::Config) -> Compression {
        Compression {
            policies: RwLock::new(Policies::from_config(config)),
            separator: config.namespace_separator.as_bytes().first().copied().unwrap_or(b':'),
            limit: config.limits.max_value_bytes,
            hashes: config.compression.hashes,
            stats: CompressionStats::new(config.memory_cache.max_namespaces),
        }
    }

    /// Encodes values from now on as `config` says (`PROXY CONFIG SET
    /// compression.*`): the default policy and each namespace's, rebuilt,
    /// so a namespace's own settings keep winning over a changed default.
    /// Writes already planned keep the policy they read.
    pub fn set_policies(&self, config: &crate::config::Config) {
        *self.policies.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Policies::from_config(config);
    }

    /// Whether any namespace compresses (otherwise the stage only decodes
    /// what earlier configurations stored, and escapes).
    pub fn compresses(&self) -> bool {
        let policies = self.read_policies();
        policies.default.enabled || policies.namespaces.values().any(|policy| policy.enabled)
    }

    fn read_policies(&self) -> std::sync::RwLockReadGuard<'_, Policies> {
        // Every change is one assignment: a poisoned lock still holds a whole value.
        self.policies.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A key's namespace: its part before the separator.
    pub fn namespace_of<'a>(&self, key: &'a [u8]) -> &'a str {
        match memchr::memchr(self.separator, key) {
            Some(at) => std::str::from_utf8(&key[..at]).unwrap_or(OTHER_NAMESPACE),
            None => NO_NAMESPACE,
        }
    }

    /// `namespace`'s policy now (a copy: the lock is not held while encoding).
    fn policy(&self, namespace: &str) -> Policy {
        let policies = self.read_policies();
        *policies.namespaces.get(namespace).unwrap_or(&policies.default)
    }

    /// What to store for `value` under `key` (None: the value as it is),
    /// counted in its namespace.
    pub fn encode(&self, key: &[u8], value: &[u8]) -> Option<bytes::Bytes> {
        if value.len() as u64 > self.limit {
            // Its envelope would declare more than reads accept: it stays raw.
            return None;
        }
        let namespace = self.namespace_of(key);
        match self.stats.encode(&self.policy(namespace), namespace, value) {
            Cow::Borrowed(_) => None,
            Cow::Owned(stored) => Some(bytes::Bytes::from(stored)),
        }
    }

    /// The value Redis holds for `key` decoded: `Ok(None)` when it is not
    /// an envelope; the error's text for the client otherwise.
    pub fn decode(&self, key: &[u8], stored: &[u8]) -> Result<Option<Vec<u8>>, String> {
        self.stats
            .decode(self.namespace_of(key), stored, self.limit)
            .map_err(|error| error.to_string())
    }
}

/// Counters of one codec in one namespace.
#[derive(Debug, Default)]
pub struct CodecStats {
    /// Values stored compressed.
    pub compressed: AtomicU64,
    /// Values stored as they are, by reason.
    pub below_threshold: AtomicU64,
    pub poor_savings: AtomicU64,
    pub interpreted: AtomicU64,
    pub escaped: AtomicU64,
    /// Bytes of the compressed values before and after.
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    /// Envelopes decoded, and those that could not be.
    pub decoded: AtomicU64,
    pub decode_errors: AtomicU64,
    /// Nanoseconds per compression and per decompression.
    pub compress_ns: Histogram,
    pub decompress_ns: Histogram,
}

impl CodecStats {
    /// What it counts, as [`Totals`].
    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        totals.add(self);
        totals
    }

    /// Stored bytes per original byte of the compressed values (1 when none).
    pub fn ratio(&self) -> f64 {
        self.totals().ratio()
    }
}

/// Values compressed and their bytes before and after, summed over
/// (codec, namespace) counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub values: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
}

impl Totals {
    pub fn add(&mut self, stats: &CodecStats) {
        self.values += stats.compressed.load(Ordering::Relaxed);
        self.bytes_in += stats.bytes_in.load(Ordering::Relaxed);
        self.bytes_out += stats.bytes_out.load(Ordering::Relaxed);
    }

    /// Stored bytes per original byte (1 when nothing was compressed).
    pub fn ratio(&self) -> f64 {
        if self.bytes_in == 0 {
            1.0
        } else {
            self.bytes_out as f64 / self.bytes_in as f64
        }
    }

    pub fn saved_bytes(&self) -> u64 {
        self.bytes_in.saturating_sub(self.bytes_out)
    }
}

/// The namespace that counts everything beyond `max_namespaces`.
pub const OTHER_NAMESPACE: &str = "(other)";

/// Compression counters per (codec, namespace), bounded in namespaces.
#[derive(Debug)]
pub struct CompressionStats {
    max_namespaces: usize,
    by: Mutex<HashMap<Codec, ByNamespace>>,
}

/// One codec's counters, per namespace.
type ByNamespace = HashMap<Arc<str>, Arc<CodecStats>>;

impl CompressionStats {
    /// Forgets every codec's and namespace's counters (`PROXY STATS RESET`).
    pub fn reset(&self) {
        self.by.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clear();
    }

    pub fn new(max_namespaces: usize) -> CompressionStats {
        CompressionStats {
            max_namespaces: max_namespaces.max(1),
            by: Mutex::new(HashMap::new()),
        }
    }

    /// The counters of `codec` in `namespace` (in `(other)` once
    /// `max_namespaces` namespaces are counted).
    pub fn of(&self, codec: Codec, namespace: &str) -> Arc<CodecStats> {
        let mut by = self.by.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(stats) = by.get(&codec).and_then(|names| names.get(namespace)) {
            return stats.clone();
        }
        // A namespace seen first: counted as itself while there is room.
        let known: std::collections::HashSet<&Arc<str>> = by.values().flat_map(HashMap::keys).collect();
        let room = known.len() < self.max_namespaces || known.iter().any(|name| name.as_ref() == namespace);
        let name: Arc<str> = Arc::from(if room { namespace } else { OTHER_NAMESPACE });
        by.entry(codec).or_default().entry(name).or_default().clone()
    }

    /// Every (codec, namespace) counted so far, summed.
    pub fn totals(&self) -> Totals {
        let mut totals = Totals::default();
        for (_, _, stats) in self.snapshot() {
            totals.add(&stats);
        }
        totals
    }

    /// Every (codec, namespace) counted so far, sorted.
    pub fn snapshot(&self) -> Vec<(Codec, Arc<str>, Arc<CodecStats>)> {
        let by = self.by.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut all: Vec<_> = by
            .iter()
            .flat_map(|(codec, names)| names.iter().map(|(name, stats)| (*codec, name.clone(), stats.clone())))
            .collect();
        all.sort_by(|a, b| (a.0.id(), &a.1).cmp(&(b.0.id(), &b.1)));
        all
    }

    /// Encodes `value` for `namespace` under `policy`, counting what happened.
    pub fn encode<'a>(&self, policy: &Policy, namespace: &str, value: &'a [u8]) -> Cow<'a, [u8]> {
        // Only what may be compressed is timed (a clock read per value).
        let started = (value.len() >= policy.threshold).then(Instant::now);
        let (stored, outcome) = policy.encode(value);
        let stats = self.of(policy.codec, namespace);
        let counter = match outcome {
            Outcome::Compressed => {
                if let Some(started) = started {
                    stats.compress_ns.record(started.elapsed(), 1);
                }
                stats.bytes_in.fetch_add(value.len() as u64, Ordering::Relaxed);
                stats.bytes_out.fetch_add(stored.len() as u64, Ordering::Relaxed);
                &stats.compressed
            }
            Outcome::Disabled | Outcome::BelowThreshold => &stats.below_threshold,
            Outcome::Interpreted => &stats.interpreted,
            Outcome::PoorSavings => &stats.poor_savings,
            Outcome::Escaped => &stats.escaped,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        stored
    }

    /// Decodes what Redis holds for a key of `namespace`: `Ok(None)` when it
    /// is not an envelope (the bytes are the value).
    pub fn decode(&self, namespace: &str, stored: &[u8], limit: u64) -> Result<Option<Vec<u8>>, DecodeError> {
        let Some(header) = envelope::parse_header(stored) else {
            return Ok(None);
        };
        let started = Instant::now();
        let result = envelope::decode(stored, limit);
        let stats = self.of(header.codec, namespace);
        match &result {
            Ok(_) => {
                stats.decompress_ns.record(started.elapsed(), 1);
                stats.decoded.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {
                stats.decode_errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(records: usize) -> Vec<u8> {
        let mut out = String::from("[");
        for i in 0..records {
            out.push_str(&format!(
                "{{\"id\":{i},\"user\":\"user-{}\",\"event\":\"page_view\",\"ts\":\"2026-12-01T12:{:02}:00Z\"}},",
                i % 17,
                i % 60
            ));
        }
        out.push(']');
        out.into_bytes()
    }

    #[test]
    fn compressible_values_are_compressed_with_each_codec() {
        let value = json(100);
        for codec in [Codec::Zstd, Codec::Gzip, Codec::Zlib] {
            let policy = Policy {
                codec,
                ..Policy::default()
            };
            let (stored, outcome) = policy.encode(&value);
            assert_eq!(outcome, Outcome::Compressed, "{codec:?}");
            assert!(
                stored.len() * 4 < value.len(),
                "{codec:?}: {} of {}",
                stored.len(),
                value.len()
            );
            assert_eq!(envelope::decode(&stored, 1 << 20), Ok(Some(value.clone())));
        }
    }

    #[test]
    fn what_stays_raw_says_why() {
        let policy = Policy::default();
        let short = b"short".to_vec();
        assert_eq!(
            policy.encode(&short),
            (Cow::Borrowed(&short[..]), Outcome::BelowThreshold)
        );
        // Incompressible: random-looking bytes.
        let mut seed = 0x9e3779b97f4a7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        assert_eq!(policy.encode(&noise).1, Outcome::PoorSavings);
        let off = Policy {
            enabled: false,
            ..Policy::default()
        };
        assert_eq!(off.encode(&json(100)).1, Outcome::Disabled);
        // A long number stays a number: INCRBYFLOAT must still read it.
        let number = format!("{}.5", "1".repeat(2000));
        assert_eq!(policy.encode(number.as_bytes()).1, Outcome::Interpreted);
        let mut hll = b"HYLL".to_vec();
        hll.extend(std::iter::repeat_n(0u8, 4000));
        assert_eq!(policy.encode(&hll).1, Outcome::Interpreted);
    }

    #[test]
    fn raw_values_that_begin_with_the_magic_are_escaped() {
        for policy in [
            Policy::default(),
            Policy {
                enabled: false,
                ..Policy::default()
            },
        ] {
            let tricky = [&envelope::MAGIC[..], b"\x01\x00\x01x"].concat();
            let (stored, outcome) = policy.encode(&tricky);
            assert_eq!(outcome, Outcome::Escaped);
            assert_eq!(envelope::decode(&stored, 1 << 20), Ok(Some(tricky.clone())));
        }
    }

    #[test]
    fn numbers_are_recognised_as_strtold_reads_them() {
        for number in [
            "0",
            "-12",
            "+3",
            "1.5",
            ".5",
            "5.",
            "1e10",
            "-1.5E-3",
            "0x1A",
            "0x1.8p3",
            "inf",
            "-Infinity",
            "nan",
            "123456789012345678901234567890",
        ] {
            assert!(is_interpreted_by_redis(number.as_bytes()), "{number}");
        }
        for text in [
            "", " 1", "1 ", "1e", "e5", ".", "-", "1.2.3", "12a", "0x", "abc", "deadbeef", "1,5",
        ] {
            assert!(!is_interpreted_by_redis(text.as_bytes()), "{text:?}");
        }
    }

    /// `PROXY CONFIG SET compression.*` rebuilds the policies: the new
    /// default applies to namespaces without their own settings, and a
    /// namespace's own keep winning.
    #[test]
    fn changed_policies_keep_namespace_overrides() {
        let mut config = crate::config::Config::default();
        config.compression.enabled = true;
        config.namespaces.insert(
            "logs".into(),
            crate::config::NamespaceConfig {
                compression_threshold: Some(10_000),
                compression_algorithm: Some(crate::config::CompressionAlgorithm::Zlib),
                ..Default::default()
            },
        );
        let compression = Compression::new(&config);
        let value = json(10);
        assert!(value.len() < 1024, "{}", value.len());
        assert_eq!(compression.encode(b"user:1", &value), None, "below the threshold");
        config.compression.threshold = 64;
        config.compression.algorithm = crate::config::CompressionAlgorithm::Gzip;
        compression.set_policies(&config);
        let stored = compression.encode(b"user:1", &value).expect("compressed now");
        assert_eq!(
            envelope::parse_header(&stored).map(|header| header.codec),
            Some(Codec::Gzip)
        );
        assert_eq!(compression.encode(b"logs:1", &value), None, "logs keeps its threshold");
        assert_eq!(compression.policy("logs").codec, Codec::Zlib, "and its algorithm");
        config.compression.enabled = false;
        compression.set_policies(&config);
        assert!(!compression.compresses());
        assert_eq!(compression.encode(b"user:1", &value), None);
        assert_eq!(compression.decode(b"user:1", &stored), Ok(Some(value)), "still decoded");
    }

    #[test]
    fn statistics_count_per_codec_and_namespace() {
        let stats = CompressionStats::new(2);
        let policy = Policy::default();
        let value = json(100);
        let stored = stats.encode(&policy, "reports", &value).into_owned();
        stats.encode(&policy, "reports", b"tiny");
        assert_eq!(stats.decode("reports", &stored, 1 << 20), Ok(Some(value.clone())));
        assert_eq!(stats.decode("reports", b"plain", 1 << 20), Ok(None));
        assert!(stats.decode("reports", &stored[..stored.len() - 3], 1 << 20).is_err());
        let reports = stats.of(Codec::Zstd, "reports");
        assert_eq!(reports.compressed.load(Ordering::Relaxed), 1);
        assert_eq!(reports.below_threshold.load(Ordering::Relaxed), 1);
        assert_eq!(reports.bytes_in.load(Ordering::Relaxed), value.len() as u64);
        assert_eq!(reports.bytes_out.load(Ordering::Relaxed), stored.len() as u64);
        assert!(reports.ratio() < 0.25);
        assert_eq!(reports.decoded.load(Ordering::Relaxed), 1);
        assert_eq!(reports.decode_errors.load(Ordering::Relaxed), 1);
        let compress = reports.compress_ns.snapshot();
        assert_eq!(compress.count(), 1);
        assert!(compress.quantile_us(0.99) > 0.0);
        // Bounded: a third namespace is counted in (other).
        stats.encode(&policy, "logs", b"x");
        stats.encode(&policy, "users", b"x");
        let names: Vec<_> = stats
            .snapshot()
            .into_iter()
            .map(|(_, name, _)| name.to_string())
            .collect();
        assert_eq!(names, ["(other)", "logs", "reports"]);
    }
}
