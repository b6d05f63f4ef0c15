//! Settings, layered: built-in defaults < `proxy.toml` < environment <
//! command-line flags. Every setting has one dotted name (`limits.max_clients`)
//! used by the file, the environment table, flags and error messages, and one
//! setter ([`Config::set`]) that parses and checks it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Why a configuration was refused. The message names the setting, the
/// value and what is allowed, so it can be fixed without reading code.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("invalid setting {name} = {value:?}: {allowed}")]
    Invalid {
        name: String,
        value: String,
        allowed: String,
    },
    #[error("unknown setting {0}")]
    Unknown(String),
    #[error("cannot read config file {path}: {reason}")]
    File { path: String, reason: String },
}

pub(crate) fn invalid(name: &str, value: &str, allowed: &str) -> ConfigError {
    ConfigError::Invalid {
        name: name.to_string(),
        value: value.to_string(),
        allowed: allowed.to_string(),
    }
}

/// The whole configuration. Field names are the names in `proxy.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address clients connect to.
    pub listen: String,
    /// The Redis behind the proxy: `redis://[user:password@]host:port[/db]`,
    /// or `rediss://...` for TLS (set up by `[upstream_tls]`).
    pub upstream: String,
    /// Threads serving clients: 1 = a single-threaded event loop (the
    /// default; no cross-thread wake-ups, best where the proxy shares a few
    /// cores with Redis), 0 = one per CPU core, N = N.
    pub threads: usize,
    pub pool: PoolConfig,
    pub limits: LimitsConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub memory_cache: MemoryCacheConfig,
    pub compression: CompressionConfig,
    pub versioning: VersioningConfig,
    pub patterns: PatternsConfig,
    pub preload: PreloadConfig,
    pub admin: AdminConfig,
    /// TLS for clients: with a certificate and key, `listen` speaks TLS only.
    pub tls: TlsConfig,
    /// TLS to a `rediss://` upstream.
    pub upstream_tls: UpstreamTlsConfig,
    /// Separates a key's namespace from the rest (`user` in `user:42`).
    pub namespace_separator: String,
    /// Per-namespace overrides: `[namespaces.<name>]`.
    pub namespaces: BTreeMap<String, NamespaceConfig>,
}

/// How L1 keeps a namespace's entries coherent with Redis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Consistency {
    /// Writes through the proxy invalidate at once, writes elsewhere as
    /// soon as Redis's invalidation message arrives; nothing is cached
    /// while those messages cannot flow.
    #[default]
    Strict,
    /// No invalidation messages (for Redis servers that refuse CLIENT
    /// TRACKING): writes through this proxy still invalidate, writes
    /// elsewhere are seen at most the namespace's L1 TTL late.
    TtlOnly,
}

impl Consistency {
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Strict => "strict",
            Consistency::TtlOnly => "ttl-only",
        }
    }
}

/// Overrides for the keys of one namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NamespaceConfig {
    /// L1 TTL in seconds (0 = not cached); default memory_cache.default_ttl.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_cache_ttl: Option<u64>,
    /// Most keys cached; default memory_cache.size_per_namespace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_cache_size: Option<u64>,
    /// strict or ttl-only; default memory_cache.consistency.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub consistency: Option<Consistency>,
    /// While Redis is down, reads may be answered from L1 entries up to
    /// this many seconds past their TTL (or kept since invalidations
    /// stopped); 0 (the default) = never.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serve_stale_max_secs: Option<u64>,
    /// Compress this namespace's values; default compression.enabled.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_enabled: Option<bool>,
    /// Default compression.algorithm.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_algorithm: Option<CompressionAlgorithm>,
    /// Default compression.level.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_level: Option<i32>,
    /// Default compression.threshold.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compression_threshold: Option<usize>,
    /// The version this namespace's keys are stored under
    /// (`versioning.key_pattern`); none = keys pass through unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Older versions a read falls back to, in order (with `version`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fallback_versions: Vec<u32>,
    /// After the fallback versions, the key's own unversioned name (for a
    /// namespace getting its first version; default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fallback_unversioned: Option<bool>,
    /// A key found in a fallback version is copied to the current one
    /// (default true); false: served from the old version as it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub migrate_on_read: Option<bool>,
    /// A read's migration moves the key rather than copying it (default
    /// false: the old version stays until the key is written, deleted or
    /// cleaned up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delete_old_on_migrate: Option<bool>,
}

/// Key versioning (issue #6): how a versioned namespace's keys are named in
/// Redis. Each namespace's versions are in `[namespaces.<name>]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VersioningConfig {
    /// The stored name of a key: `{version}` and `{key}` each once.
    pub key_pattern: String,
    /// Keys remembered as having left their old versions behind (their
    /// reads skip the migration script); bounded, least used forgotten.
    pub remembered_keys: usize,
}

/// The pattern engine (issue #7): which keys are read when, learned off
/// the request path.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PatternsConfig {
    /// Record reads and learn from them (PATTERN_ANALYSIS_ENABLED).
    pub enabled: bool,
    /// Days of hour-of-day history per key, 1 to 366 (PATTERN_HISTORY_DAYS).
    pub history_days: usize,
    /// Reads before a key is classified (PATTERN_MIN_ACCESS_COUNT).
    pub min_access_count: u64,
    /// Most keys tracked (the heavy hitters; the rest are not kept).
    pub max_keys: usize,
    /// Where the model is saved and restored from; "" = not saved.
    pub state_path: String,
    /// Seconds between saves of the model (it is saved on shutdown too).
    pub snapshot_interval_secs: u64,
    /// Events queued for the engine at most; beyond that they are dropped
    /// (and counted), never waited for.
    pub queue_events: usize,
    /// Reads per second the engine learns from at most: beyond it, it
    /// learns a fixed share of the keys (1/2, 1/4, ... chosen by their
    /// hash, so each learned key's history is whole). 0 = no bound.
    pub max_events_per_sec: u64,
}

impl Default for PatternsConfig {
    fn default() -> Self {
        PatternsConfig {
            enabled: true,
            history_days: 7,
            min_access_count: 10,
            max_keys: 100_000,
            state_path: String::new(),
            snapshot_interval_secs: 300,
            queue_events: 65_536,
            max_events_per_sec: 50_000,
        }
    }
}

/// The preloader (issue #8): keys the pattern engine predicts are read
/// soon are fetched into L1 before they are asked for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreloadConfig {
    /// Preload at all (CACHE_PRELOAD_ENABLED); needs L1 and the pattern engine.
    pub enabled: bool,
    /// Minutes between runs (CACHE_PRELOAD_INTERVAL_MINUTES); fractions
    /// give seconds (0.5 = 30 s), from one second to a year.
    pub interval_minutes: f64,
    /// Least priority (1-10) a key needs to be preloaded
    /// (CACHE_PRELOAD_PRIORITY_THRESHOLD).
    pub priority_threshold: u8,
    /// Fetches in flight at most.
    pub max_concurrent: usize,
    /// Most keys one run fetches.
    pub max_keys_per_run: usize,
    /// Where keys predicted but absent in Redis are announced (PUBLISH, the
    /// key as the message); "" = not announced.
    pub miss_channel: String,
    /// While the proxy is busy (a peak hour, or more reads per second than
    /// `busy_reads_per_sec`), fetches per second stay within this share of
    /// the clients' reads per second; 0 = none then (deferred to a quiet run).
    pub peak_share: f64,
    /// Reads per second above which the proxy counts as busy whatever the
    /// hour; 0 = only the learned peak hours count.
    pub busy_reads_per_sec: u64,
}

/// A year, the longest interval between preload runs.
const MAX_PRELOAD_MINUTES: f64 = 366.0 * 24.0 * 60.0;
const PRELOAD_INTERVAL: &str = "expected minutes from 0.0167 (one second) to 527040 (a year), for example 30 or 0.5";
/// Most preload fetches in flight.
const MAX_PRELOAD_CONCURRENT: usize = 10_000;

impl PreloadConfig {
    /// The interval between runs, to the second.
    pub fn interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs((self.interval_minutes * 60.0).round().max(1.0) as u64)
    }
}

impl Default for PreloadConfig {
    fn default() -> Self {
        PreloadConfig {
            enabled: true,
            interval_minutes: 30.0,
            priority_threshold: 5,
            max_concurrent: 20,
            max_keys_per_run: 10_000,
            miss_channel: String::new(),
            peak_share: 0.05,
            busy_reads_per_sec: 0,
        }
    }
}

impl Default for VersioningConfig {
    fn default() -> Self {
        VersioningConfig {
            key_pattern: "v{version}:{key}".into(),
            remembered_keys: 100_000,
        }
    }
}

/// A compression algorithm for stored values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    #[default]
    Zstd,
    Gzip,
    Zlib,
}

impl CompressionAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            CompressionAlgorithm::Zstd => "zstd",
            CompressionAlgorithm::Gzip => "gzip",
            CompressionAlgorithm::Zlib => "zlib",
        }
    }

    /// The levels it accepts (zstd's negative levels are its fastest).
    pub fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            CompressionAlgorithm::Zstd => -7..=22,
            CompressionAlgorithm::Gzip | CompressionAlgorithm::Zlib => 0..=9,
        }
    }

    fn parse(name: &str, value: &str) -> Result<CompressionAlgorithm, ConfigError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "zstd" => Ok(CompressionAlgorithm::Zstd),
            "gzip" => Ok(CompressionAlgorithm::Gzip),
            "zlib" => Ok(CompressionAlgorithm::Zlib),
            _ => Err(invalid(name, value, "expected zstd, gzip or zlib")),
        }
    }
}

/// Transparent compression of string values stored in Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CompressionConfig {
    /// Compress values on their way to Redis (and decode them back).
    pub enabled: bool,
    /// Values shorter than this (bytes) are stored as they are.
    pub threshold: usize,
    pub algorithm: CompressionAlgorithm,
    /// zstd -7..=22, gzip/zlib 0..=9.
    pub level: i32,
    /// Store raw unless compression saves at least this fraction.
    pub min_savings: f64,
    /// Compress hash field values too (HSET, HSETNX, HMSET; read back by
    /// HGET, HMGET, HGETALL, HVALS, HRANDFIELD, HSCAN, HSTRLEN).
    pub hashes: bool,
}

impl Default for CompressionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            threshold: 1024,
            algorithm: CompressionAlgorithm::Zstd,
            level: 3,
            min_savings: 0.1,
            hashes: false,
        }
    }
}

/// The L1 cache level.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryCacheConfig {
    /// Answer reads from the in-process cache.
    pub enabled: bool,
    /// Bytes all entries may cost together (keys + replies + overhead).
    pub max_bytes: u64,
    /// Largest reply worth caching.
    pub max_entry_bytes: u64,
    /// Longest an entry is kept (seconds); never beyond the key's TTL in Redis.
    pub default_ttl: u64,
    /// How long "no such key" is cached (seconds); 0 = not at all.
    pub nil_ttl: u64,
    /// Most keys cached per namespace; 0 = bounded by bytes only.
    pub size_per_namespace: u64,
    /// strict or ttl-only, for namespaces without their own.
    pub consistency: Consistency,
    /// Limit Redis's invalidation messages to the strict namespaces
    /// configured in `[namespaces.*]` (CLIENT TRACKING ... PREFIX); keys of
    /// other namespaces are then cached only if those are ttl-only.
    pub tracking_prefixes: bool,
    /// Namespaces counted and bounded separately; keys of further ones
    /// share one overflow namespace.
    pub max_namespaces: usize,
    /// Fill a key on its first miss; otherwise on its second read within
    /// the frequency sketch's window, so keys read once never cost a fill.
    pub fill_on_first_miss: bool,
}

impl Default for MemoryCacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 1024 * 1024,
            default_ttl: 60,
            nil_ttl: 5,
            size_per_namespace: 1000,
            consistency: Consistency::Strict,
            tracking_prefixes: false,
            max_namespaces: 256,
            fill_on_first_miss: false,
        }
    }
}

/// Upstream connections.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PoolConfig {
    /// Pipelined upstream connections shared by clients, per (database, protocol).
    pub size: usize,
    /// How long one connection attempt to Redis may take.
    pub connect_timeout_ms: u64,
    /// Longest wait between reconnection attempts (backoff doubles up to it).
    pub max_backoff_ms: u64,
    /// With replies owed on a pooled connection, the longest Redis may send
    /// nothing before the connection is closed and what was owed fails
    /// (then it reconnects); 0 = wait as long as it takes.
    pub reply_timeout_ms: u64,
    /// With a `redis-cluster://` upstream, how often the slot map is asked
    /// for again (it is also refreshed at once on MOVED and on a node lost).
    pub cluster_refresh_ms: u64,
}

/// Protection against bad or greedy clients. Defaults mirror Redis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Most clients connected at once (Redis `maxclients`).
    pub max_clients: usize,
    /// Largest bulk string in a request or reply (Redis `proto-max-bulk-len`).
    pub max_bulk_bytes: usize,
    /// Most arguments in one request.
    pub max_multibulk_len: usize,
    /// Longest inline (telnet-style) command line.
    pub max_inline_bytes: usize,
    /// Deepest nesting accepted in a reply from Redis.
    pub max_nesting_depth: usize,
    /// Most unparsed bytes buffered for one client (Redis `client-query-buffer-limit`).
    pub max_query_buffer_bytes: usize,
    /// Most reply bytes held for one client that it has not read: past
    /// this the client is cut off (Redis `client-output-buffer-limit`).
    pub max_output_bytes: usize,
    /// Close clients idle this long (seconds); 0 = never (Redis `timeout`).
    pub idle_timeout_secs: u64,
    /// On shutdown, how long in-flight replies may take to drain.
    pub drain_timeout_ms: u64,
    /// Largest value a compressed envelope may declare: a larger one is a
    /// decompression bomb, refused with an error.
    pub max_value_bytes: u64,
}

/// Client authentication to the proxy. Empty = clients need not authenticate.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Password of the `default` user (`AUTH <password>`).
    pub password: Option<String>,
    /// Named users (`AUTH <name> <password>`).
    pub users: Vec<UserConfig>,
}

/// One named user of the proxy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    pub name: String,
    /// Hex SHA-256 of the password, so the file holds no secret.
    pub password_sha256: String,
    #[serde(default)]
    pub role: Role,
}

/// What a user may do; admin commands will require `Admin`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    #[default]
    User,
}

/// The HTTP admin surface (issue #9): health, metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Where it listens (loopback by default); "" = off.
    pub listen: String,
    /// Seconds between the samples of traffic the dashboard and
    /// `/performance` chart (the last 180 are kept).
    pub history_interval_secs: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: "127.0.0.1:9121".into(),
            history_interval_secs: 10,
        }
    }
}

/// TLS on the client listener. With `cert` and `key` set, every client
/// connection must complete a TLS handshake first (like Redis with
/// `tls-port` and `port 0`); file contents are never shown, paths are.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain the proxy presents; "" = no TLS.
    pub cert: String,
    /// PEM private key of `cert` (PKCS#8, PKCS#1 or SEC1).
    pub key: String,
    /// PEM CA certificates: when set, a client must present a certificate
    /// one of them signed, or its handshake is refused; "" = none asked.
    pub client_ca: String,
    /// A client that has not completed its handshake by then is dropped.
    pub handshake_timeout_ms: u64,
}

impl TlsConfig {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        !self.cert.is_empty() || !self.key.is_empty()
    }
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: String::new(),
            key: String::new(),
            client_ca: String::new(),
            handshake_timeout_ms: 10_000,
        }
    }
}

/// TLS to a `rediss://` upstream, used by every upstream connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamTlsConfig {
    /// PEM CA certificates Redis's certificate must chain to; "" = the
    /// system's roots.
    pub ca: String,
    /// Name sent as SNI and checked against Redis's certificate; "" = the
    /// upstream URL's host (a DNS name or an IP address).
    pub sni: String,
    /// PEM client certificate chain, for a Redis with `tls-auth-clients yes`.
    pub cert: String,
    /// PEM private key of `cert`.
    pub key: String,
}

impl UpstreamTlsConfig {
    /// The settings that are set: (dotted name, value).
    fn set_settings(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("upstream_tls.ca", &self.ca),
            ("upstream_tls.sni", &self.sni),
            ("upstream_tls.cert", &self.cert),
            ("upstream_tls.key", &self.key),
        ]
        .into_iter()
        .map(|(name, value)| (name, value.as_str()))
        .filter(|(_, value)| !value.is_empty())
    }
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// error, warn, info, debug or trace.
    pub level: String,
    /// text or json.
    pub format: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:6380".into(),
            upstream: "redis://127.0.0.1:6379".into(),
            threads: 1,
            pool: PoolConfig::default(),
            limits: LimitsConfig::default(),
            auth: AuthConfig::default(),
            log: LogConfig::default(),
            memory_cache: MemoryCacheConfig::default(),
            compression: CompressionConfig::default(),
            versioning: VersioningConfig::default(),
            patterns: PatternsConfig::default(),
            preload: PreloadConfig::default(),
            admin: AdminConfig::default(),
            tls: TlsConfig::default(),
            upstream_tls: UpstreamTlsConfig::default(),
            namespace_separator: ":".into(),
            namespaces: BTreeMap::new(),
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            size: 2,
            connect_timeout_ms: 2000,
            reply_timeout_ms: 0,
            cluster_refresh_ms: 5_000,
            max_backoff_ms: 1000,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_clients: 10_000,
            max_bulk_bytes: 512 * 1024 * 1024,
            max_multibulk_len: 1024 * 1024,
            max_inline_bytes: 64 * 1024,
            max_nesting_depth: 1024,
            max_query_buffer_bytes: 1024 * 1024 * 1024,
            max_output_bytes: 1024 * 1024 * 1024,
            idle_timeout_secs: 0,
            drain_timeout_ms: 5000,
            max_value_bytes: 512 * 1024 * 1024,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// Environment variables and the settings they set.
pub const ENVIRONMENT: &[(&str, &str)] = &[
    ("AURACACHE_LISTEN", "listen"),
    ("AURACACHE_ADMIN_LISTEN", "admin.listen"),
    ("AURACACHE_ADMIN_HISTORY_INTERVAL_SECS", "admin.history_interval_secs"),
    ("AURACACHE_UPSTREAM", "upstream"),
    ("AURACACHE_THREADS", "threads"),
    ("AURACACHE_POOL_SIZE", "pool.size"),
    ("AURACACHE_CONNECT_TIMEOUT_MS", "pool.connect_timeout_ms"),
    ("AURACACHE_REPLY_TIMEOUT_MS", "pool.reply_timeout_ms"),
    ("AURACACHE_CLUSTER_REFRESH_MS", "pool.cluster_refresh_ms"),
    ("AURACACHE_MAX_BACKOFF_MS", "pool.max_backoff_ms"),
    ("AURACACHE_MAX_CLIENTS", "limits.max_clients"),
    ("AURACACHE_MAX_BULK_BYTES", "limits.max_bulk_bytes"),
    ("AURACACHE_MAX_MULTIBULK_LEN", "limits.max_multibulk_len"),
    ("AURACACHE_MAX_INLINE_BYTES", "limits.max_inline_bytes"),
    ("AURACACHE_MAX_NESTING_DEPTH", "limits.max_nesting_depth"),
    ("AURACACHE_MAX_QUERY_BUFFER_BYTES", "limits.max_query_buffer_bytes"),
    ("AURACACHE_MAX_OUTPUT_BYTES", "limits.max_output_bytes"),
    ("AURACACHE_IDLE_TIMEOUT_SECS", "limits.idle_timeout_secs"),
    ("AURACACHE_DRAIN_TIMEOUT_MS", "limits.drain_timeout_ms"),
    ("AURACACHE_AUTH_PASSWORD", "auth.password"),
    ("AURACACHE_LOG_LEVEL", "log.level"),
    ("AURACACHE_LOG_FORMAT", "log.format"),
    ("MEMORY_CACHE_ENABLED", "memory_cache.enabled"),
    ("MEMORY_CACHE_DEFAULT_TTL", "memory_cache.default_ttl"),
    ("AURACACHE_MEMORY_CACHE_MAX_BYTES", "memory_cache.max_bytes"),
    ("AURACACHE_MEMORY_CACHE_MAX_ENTRY_BYTES", "memory_cache.max_entry_bytes"),
    ("AURACACHE_MEMORY_CACHE_NIL_TTL", "memory_cache.nil_ttl"),
    ("MEMORY_CACHE_SIZE_PER_NAMESPACE", "memory_cache.size_per_namespace"),
    ("AURACACHE_MEMORY_CACHE_CONSISTENCY", "memory_cache.consistency"),
    (
        "AURACACHE_MEMORY_CACHE_TRACKING_PREFIXES",
        "memory_cache.tracking_prefixes",
    ),
    ("AURACACHE_MEMORY_CACHE_MAX_NAMESPACES", "memory_cache.max_namespaces"),
    (
        "AURACACHE_MEMORY_CACHE_FILL_ON_FIRST_MISS",
        "memory_cache.fill_on_first_miss",
    ),
    ("AURACACHE_MAX_VALUE_BYTES", "limits.max_value_bytes"),
    ("CACHE_COMPRESSION_ENABLED", "compression.enabled"),
    ("CACHE_COMPRESSION_THRESHOLD", "compression.threshold"),
    ("CACHE_COMPRESSION_ALGORITHM", "compression.algorithm"),
    ("AURACACHE_COMPRESSION_LEVEL", "compression.level"),
    ("AURACACHE_COMPRESSION_MIN_SAVINGS", "compression.min_savings"),
    ("AURACACHE_COMPRESSION_HASHES", "compression.hashes"),
    ("AURACACHE_NAMESPACE_SEPARATOR", "namespace_separator"),
    ("AURACACHE_VERSIONING_KEY_PATTERN", "versioning.key_pattern"),
    ("AURACACHE_VERSIONING_REMEMBERED_KEYS", "versioning.remembered_keys"),
    ("PATTERN_ANALYSIS_ENABLED", "patterns.enabled"),
    ("PATTERN_HISTORY_DAYS", "patterns.history_days"),
    ("PATTERN_MIN_ACCESS_COUNT", "patterns.min_access_count"),
    ("AURACACHE_PATTERNS_MAX_KEYS", "patterns.max_keys"),
    ("AURACACHE_PATTERNS_STATE_PATH", "patterns.state_path"),
    (
        "AURACACHE_PATTERNS_SNAPSHOT_INTERVAL_SECS",
        "patterns.snapshot_interval_secs",
    ),
    ("AURACACHE_PATTERNS_QUEUE_EVENTS", "patterns.queue_events"),
    ("AURACACHE_PATTERNS_MAX_EVENTS_PER_SEC", "patterns.max_events_per_sec"),
    ("CACHE_PRELOAD_ENABLED", "preload.enabled"),
    ("CACHE_PRELOAD_INTERVAL_MINUTES", "preload.interval_minutes"),
    ("CACHE_PRELOAD_PRIORITY_THRESHOLD", "preload.priority_threshold"),
    ("AURACACHE_PRELOAD_MAX_CONCURRENT", "preload.max_concurrent"),
    ("AURACACHE_PRELOAD_MAX_KEYS_PER_RUN", "preload.max_keys_per_run"),
    ("AURACACHE_PRELOAD_MISS_CHANNEL", "preload.miss_channel"),
    ("AURACACHE_PRELOAD_PEAK_SHARE", "preload.peak_share"),
    ("AURACACHE_PRELOAD_BUSY_READS_PER_SEC", "preload.busy_reads_per_sec"),
    ("AURACACHE_TLS_CERT", "tls.cert"),
    ("AURACACHE_TLS_KEY", "tls.key"),
    ("AURACACHE_TLS_CLIENT_CA", "tls.client_ca"),
    ("AURACACHE_TLS_HANDSHAKE_TIMEOUT_MS", "tls.handshake_timeout_ms"),
    ("AURACACHE_UPSTREAM_TLS_CA", "upstream_tls.ca"),
    ("AURACACHE_UPSTREAM_TLS_SNI", "upstream_tls.sni"),
    ("AURACACHE_UPSTREAM_TLS_CERT", "upstream_tls.cert"),
    ("AURACACHE_UPSTREAM_TLS_KEY", "upstream_tls.key"),
];

impl Config {
    /// Reads a `proxy.toml`. Unknown keys are refused, so a typo is caught.
    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::File {
            path: path.display().to_string(),
            reason: error.to_string(),
        })?;
        Config::from_toml(&text).map_err(|reason| ConfigError::File {
            path: path.display().to_string(),
            reason,
        })
    }

    /// Parses TOML text; the error is toml's, which names the key and line.
    pub fn from_toml(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|error| error.to_string().trim().replace('\n', " "))?;
        Ok(config)
    }

    /// Applies the environment layer from `vars` (name, value) pairs.
    pub fn apply_environment<I>(&mut self, vars: I) -> Result<(), ConfigError>
    where
        I: IntoIterator<Item = (String, String)>,
    {
        let vars: BTreeMap<String, String> = vars.into_iter().collect();
        for (variable, setting) in ENVIRONMENT {
            if let Some(value) = vars.get(*variable) {
                self.set(setting, value)?;
            }
        }
        Ok(())
    }

    /// Sets one setting from its text form, checking it.
    pub fn set(&mut self, name: &str, value: &str) -> Result<(), ConfigError> {
        let whole = |minimum: u64| -> Result<u64, ConfigError> {
            value
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|number| *number >= minimum)
                .ok_or_else(|| invalid(name, value, &format!("expected a whole number >= {minimum}")))
        };
        let boolean = || -> Result<bool, ConfigError> {
            match value.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(invalid(name, value, "expected true or false")),
            }
        };
        match name {
            "listen" => self.listen = value.to_string(),
            "admin.listen" => self.admin.listen = value.trim().to_string(),
            "admin.history_interval_secs" => self.admin.history_interval_secs = whole(1)?,
            "upstream" => self.upstream = value.to_string(),
            "threads" => self.threads = whole(0)? as usize,
            "pool.size" => self.pool.size = whole(1)? as usize,
            "pool.connect_timeout_ms" => self.pool.connect_timeout_ms = whole(1)?,
            "pool.reply_timeout_ms" => self.pool.reply_timeout_ms = whole(0)?,
            "pool.cluster_refresh_ms" => self.pool.cluster_refresh_ms = whole(100)?,
            "pool.max_backoff_ms" => self.pool.max_backoff_ms = whole(1)?,
            "limits.max_clients" => self.limits.max_clients = whole(1)? as usize,
            "limits.max_bulk_bytes" => self.limits.max_bulk_bytes = whole(1)? as usize,
            "limits.max_multibulk_len" => self.limits.max_multibulk_len = whole(1)? as usize,
            "limits.max_inline_bytes" => self.limits.max_inline_bytes = whole(16)? as usize,
            "limits.max_nesting_depth" => self.limits.max_nesting_depth = whole(1)? as usize,
            "limits.max_query_buffer_bytes" => self.limits.max_query_buffer_bytes = whole(1024)? as usize,
            "limits.max_output_bytes" => self.limits.max_output_bytes = whole(1024)? as usize,
            "limits.idle_timeout_secs" => self.limits.idle_timeout_secs = whole(0)?,
            "limits.drain_timeout_ms" => self.limits.drain_timeout_ms = whole(0)?,
            "auth.password" => {
                self.auth.password = if value.is_empty() {
                    None
                } else {
                    Some(value.to_string())
                }
            }
            "log.level" => self.log.level = value.to_string(),
            "log.format" => self.log.format = value.to_string(),
            "memory_cache.enabled" => self.memory_cache.enabled = boolean()?,
            "memory_cache.tracking_prefixes" => self.memory_cache.tracking_prefixes = boolean()?,
            "memory_cache.fill_on_first_miss" => self.memory_cache.fill_on_first_miss = boolean()?,
            "memory_cache.size_per_namespace" => self.memory_cache.size_per_namespace = whole(0)?,
            "memory_cache.max_namespaces" => self.memory_cache.max_namespaces = whole(1)? as usize,
            "memory_cache.consistency" => {
                self.memory_cache.consistency = match value.trim().to_ascii_lowercase().as_str() {
                    "strict" => Consistency::Strict,
                    "ttl-only" => Consistency::TtlOnly,
                    _ => return Err(invalid(name, value, "expected strict or ttl-only")),
                }
            }
            "namespace_separator" => self.namespace_separator = value.to_string(),
            "memory_cache.max_bytes" => self.memory_cache.max_bytes = whole(1024)?,
            "memory_cache.max_entry_bytes" => self.memory_cache.max_entry_bytes = whole(1)?,
            "memory_cache.default_ttl" => self.memory_cache.default_ttl = whole(0)?,
            "memory_cache.nil_ttl" => self.memory_cache.nil_ttl = whole(0)?,
            "limits.max_value_bytes" => self.limits.max_value_bytes = whole(1)?,
            "compression.enabled" => self.compression.enabled = boolean()?,
            "compression.hashes" => self.compression.hashes = boolean()?,
            "versioning.key_pattern" => self.versioning.key_pattern = value.to_string(),
            "versioning.remembered_keys" => self.versioning.remembered_keys = whole(0)? as usize,
            "patterns.enabled" => self.patterns.enabled = boolean()?,
            "patterns.history_days" => self.patterns.history_days = whole(1)? as usize,
            "patterns.min_access_count" => self.patterns.min_access_count = whole(1)?,
            "patterns.max_keys" => self.patterns.max_keys = whole(1)? as usize,
            "patterns.state_path" => self.patterns.state_path = value.to_string(),
            "patterns.snapshot_interval_secs" => self.patterns.snapshot_interval_secs = whole(1)?,
            "patterns.queue_events" => self.patterns.queue_events = whole(1)? as usize,
            "patterns.max_events_per_sec" => self.patterns.max_events_per_sec = whole(0)?,
            "preload.enabled" => self.preload.enabled = boolean()?,
            "preload.interval_minutes" => {
                self.preload.interval_minutes = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(name, value, PRELOAD_INTERVAL))?
            }
            "preload.priority_threshold" => {
                self.preload.priority_threshold = value
                    .trim()
                    .parse::<u8>()
                    .ok()
                    .filter(|threshold| (1..=10).contains(threshold))
                    .ok_or_else(|| invalid(name, value, "expected a whole number from 1 to 10"))?
            }
            "preload.max_concurrent" => self.preload.max_concurrent = whole(1)? as usize,
            "preload.max_keys_per_run" => self.preload.max_keys_per_run = whole(1)? as usize,
            "preload.miss_channel" => self.preload.miss_channel = value.to_string(),
            "preload.peak_share" => {
                self.preload.peak_share = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(name, value, "expected a fraction from 0 to 1"))?
            }
            "preload.busy_reads_per_sec" => self.preload.busy_reads_per_sec = whole(0)?,
            "tls.cert" => self.tls.cert = value.trim().to_string(),
            "tls.key" => self.tls.key = value.trim().to_string(),
            "tls.client_ca" => self.tls.client_ca = value.trim().to_string(),
            "tls.handshake_timeout_ms" => self.tls.handshake_timeout_ms = whole(1)?,
            "upstream_tls.ca" => self.upstream_tls.ca = value.trim().to_string(),
            "upstream_tls.sni" => self.upstream_tls.sni = value.trim().to_string(),
            "upstream_tls.cert" => self.upstream_tls.cert = value.trim().to_string(),
            "upstream_tls.key" => self.upstream_tls.key = value.trim().to_string(),
            "compression.threshold" => self.compression.threshold = whole(1)? as usize,
            "compression.algorithm" => self.compression.algorithm = CompressionAlgorithm::parse(name, value)?,
            "compression.level" => {
                self.compression.level = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(name, value, "expected a whole number (zstd -7..=22, gzip/zlib 0..=9)"))?
            }
            "compression.min_savings" => {
                self.compression.min_savings = value
                    .trim()
                    .parse()
                    .map_err(|_| invalid(name, value, "expected a fraction from 0 up to (not including) 1"))?
            }
            _ => return Err(ConfigError::Unknown(name.to_string())),
        }
        self.check_one(name)
    }

    /// Checks every setting, including those a file set directly.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for name in [
            "listen",
            "admin.listen",
            "upstream",
            "pool.size",
            "limits.max_clients",
            "limits.max_inline_bytes",
            "limits.max_output_bytes",
            "auth.users",
            "log.level",
            "log.format",
            "memory_cache.max_bytes",
            "memory_cache.max_namespaces",
            "compression.level",
            "compression.min_savings",
            "versioning.key_pattern",
            "patterns.history_days",
            "patterns.min_access_count",
            "patterns.max_keys",
            "patterns.snapshot_interval_secs",
            "patterns.queue_events",
            "preload.interval_minutes",
            "preload.priority_threshold",
            "preload.max_concurrent",
            "preload.max_keys_per_run",
            "preload.peak_share",
            "namespace_separator",
            "namespaces",
            "tls",
            "upstream_tls",
        ] {
            self.check_one(name)?;
        }
        Ok(())
    }

    fn check_one(&self, name: &str) -> Result<(), ConfigError> {
        match name {
            "admin.listen"
                if !self.admin.listen.is_empty()
                    && self.admin.listen.parse::<SocketAddr>().is_err()
                    && !looks_like_host_port(&self.admin.listen) =>
            {
                return Err(invalid(
                    name,
                    &self.admin.listen,
                    "expected host:port, for example 127.0.0.1:9121, or \"\" for off",
                ));
            }
            "listen" if self.listen.parse::<SocketAddr>().is_err() && !looks_like_host_port(&self.listen) => {
                return Err(invalid(
                    name,
                    &self.listen,
                    "expected host:port, for example 127.0.0.1:6380",
                ));
            }
            "upstream" => {
                UpstreamUrl::parse(&self.upstream)
                    .map_err(|allowed| invalid(name, &self.upstream_redacted(), &allowed))?;
            }
            "pool.size" if self.pool.size == 0 => {
                return Err(invalid(name, "0", "expected a whole number >= 1"));
            }
            "limits.max_clients" if self.limits.max_clients == 0 => {
                return Err(invalid(name, "0", "expected a whole number >= 1"));
            }
            "limits.max_inline_bytes" if self.limits.max_inline_bytes < 16 => {
                return Err(invalid(
                    name,
                    &self.limits.max_inline_bytes.to_string(),
                    "expected a whole number >= 16",
                ));
            }
            "limits.max_output_bytes" if self.limits.max_output_bytes < 1024 => {
                return Err(invalid(
                    name,
                    &self.limits.max_output_bytes.to_string(),
                    "expected a whole number >= 1024",
                ));
            }
            "auth.users" => {
                for user in &self.auth.users {
                    let valid =
                        user.password_sha256.len() == 64 && user.password_sha256.bytes().all(|b| b.is_ascii_hexdigit());
                    if !valid {
                        return Err(invalid(
                            &format!("auth.users[{}].password_sha256", user.name),
                            "<hidden>",
                            "expected 64 hex digits (sha256sum of the password)",
                        ));
                    }
                }
            }
            "log.level" if !["error", "warn", "info", "debug", "trace"].contains(&self.log.level.as_str()) => {
                return Err(invalid(
                    name,
                    &self.log.level,
                    "expected error, warn, info, debug or trace",
                ));
            }
            "memory_cache.max_bytes" if self.memory_cache.max_entry_bytes >= self.memory_cache.max_bytes => {
                return Err(invalid(
                    "memory_cache.max_entry_bytes",
                    &self.memory_cache.max_entry_bytes.to_string(),
                    &format!(
                        "expected less than memory_cache.max_bytes ({})",
                        self.memory_cache.max_bytes
                    ),
                ));
            }
            "memory_cache.max_namespaces" if self.memory_cache.max_namespaces == 0 => {
                return Err(invalid(name, "0", "expected a whole number >= 1"));
            }
            "namespace_separator" if self.namespace_separator.len() != 1 => {
                return Err(invalid(
                    name,
                    &self.namespace_separator,
                    "expected exactly one ASCII character, for example \":\"",
                ));
            }
            "namespaces" => {
                for (namespace, overrides) in &self.namespaces {
                    let algorithm = overrides.compression_algorithm.unwrap_or(self.compression.algorithm);
                    let level = overrides.compression_level.unwrap_or(self.compression.level);
                    if !algorithm.levels().contains(&level) {
                        return Err(invalid(
                            &format!("namespaces.{namespace}.compression_level"),
                            &level.to_string(),
                            &format!("expected {:?} for {}", algorithm.levels(), algorithm.as_str()),
                        ));
                    }
                    if overrides.compression_threshold == Some(0) {
                        return Err(invalid(
                            &format!("namespaces.{namespace}.compression_threshold"),
                            "0",
                            "expected a whole number >= 1",
                        ));
                    }
                }
                for (namespace, overrides) in &self.namespaces {
                    let versioned = overrides.version.is_some();
                    let set_without_version = !overrides.fallback_versions.is_empty()
                        || overrides.fallback_unversioned.is_some()
                        || overrides.migrate_on_read.is_some()
                        || overrides.delete_old_on_migrate.is_some();
                    if !versioned && set_without_version {
                        return Err(invalid(
                            &format!("namespaces.{namespace}.version"),
                            "(none)",
                            "expected a version when fallback_versions, fallback_unversioned, migrate_on_read or delete_old_on_migrate is set",
                        ));
                    }
                    if let Some(version) = overrides.version {
                        let mut seen = vec![version];
                        for fallback in &overrides.fallback_versions {
                            if seen.contains(fallback) {
                                return Err(invalid(
                                    &format!("namespaces.{namespace}.fallback_versions"),
                                    &format!("{:?}", overrides.fallback_versions),
                                    "expected versions other than the current one, each once",
                                ));
                            }
                            seen.push(*fallback);
                        }
                    }
                }
                for namespace in self.namespaces.keys() {
                    if namespace.is_empty() || namespace.contains(self.namespace_separator.as_str()) {
                        return Err(invalid(
                            &format!("namespaces.{namespace}"),
                            namespace,
                            &format!(
                                "expected a non-empty namespace name without the separator {:?}",
                                self.namespace_separator
                            ),
                        ));
                    }
                }
            }
            "compression.level" | "compression.algorithm"
                if !self.compression.algorithm.levels().contains(&self.compression.level) =>
            {
                let algorithm = self.compression.algorithm;
                return Err(invalid(
                    "compression.level",
                    &self.compression.level.to_string(),
                    &format!("expected {:?} for {}", algorithm.levels(), algorithm.as_str()),
                ));
            }
            "compression.min_savings" if !(0.0..1.0).contains(&self.compression.min_savings) => {
                return Err(invalid(
                    name,
                    &self.compression.min_savings.to_string(),
                    "expected a fraction from 0 up to (not including) 1",
                ));
            }
            "patterns.history_days" if !(1..=366).contains(&self.patterns.history_days) => {
                return Err(invalid(
                    name,
                    &self.patterns.history_days.to_string(),
                    "expected a whole number of days from 1 to 366",
                ));
            }
            "patterns.min_access_count" if self.patterns.min_access_count == 0 => {
                return Err(invalid(name, "0", "expected a whole number >= 1"));
            }
            "patterns.max_keys" if self.patterns.max_keys == 0 => {
                return Err(invalid(name, "0", "expected a whole number >= 1"));
            }
            "patterns.snapshot_interval_secs" if self.patterns.snapshot_interval_secs == 0 => {
                return Err(invalid(name, "0", "expected a whole number of seconds >= 1"));
            }
            "patterns.queue_events" if self.patterns.queue_events == 0 => {
                return Err(invalid(name, "0", "expected a whole number >= 1"));
            }
            "preload.interval_minutes"
                if !(1.0 / 60.0..=MAX_PRELOAD_MINUTES).contains(&self.preload.interval_minutes) =>
            {
                return Err(invalid(
                    name,
                    &self.preload.interval_minutes.to_string(),
                    PRELOAD_INTERVAL,
                ));
            }
            "preload.max_concurrent" if self.preload.max_concurrent > MAX_PRELOAD_CONCURRENT => {
                return Err(invalid(
                    name,
                    &self.preload.max_concurrent.to_string(),
                    "expected a whole number from 1 to 10000",
                ));
            }
            "preload.priority_threshold" if !(1..=10).contains(&self.preload.priority_threshold) => {
                return Err(invalid(
                    name,
                    &self.preload.priority_threshold.to_string(),
                    "expected a whole number from 1 to 10",
                ));
            }
            "preload.max_concurrent" if self.preload.max_concurrent == 0 => {
                return Err(invalid(name, "0", "expected a whole number >= 1"));
            }
            "preload.max_keys_per_run" if self.preload.max_keys_per_run == 0 => {
                return Err(invalid(name, "0", "expected a whole number >= 1"));
            }
            "preload.peak_share" if !(0.0..=1.0).contains(&self.preload.peak_share) => {
                return Err(invalid(
                    name,
                    &self.preload.peak_share.to_string(),
                    "expected a fraction from 0 to 1",
                ));
            }
            "versioning.key_pattern" => {
                let pattern = &self.versioning.key_pattern;
                let once = |placeholder: &str| pattern.matches(placeholder).count() == 1;
                // Text between the placeholders tells a version's digits
                // from the key when a stored name is read back.
                let adjacent = pattern.contains("{version}{key}") || pattern.contains("{key}{version}");
                // Nor may a digit touch the version's: it would read as part of it.
                let (before, after) = pattern.split_once("{version}").unwrap_or_default();
                let digit_next =
                    before.ends_with(|c: char| c.is_ascii_digit()) || after.starts_with(|c: char| c.is_ascii_digit());
                if !once("{version}") || !once("{key}") || adjacent || digit_next {
                    return Err(invalid(
                        name,
                        pattern,
                        "expected {version} and {key} once each, with text between them and no digit next to {version}, for example v{version}:{key}",
                    ));
                }
            }
            // Pairs are checked on the whole configuration only: the
            // environment sets tls.cert before tls.key.
            "tls" => {
                let tls = &self.tls;
                if tls.cert.is_empty() && !tls.key.is_empty() {
                    return Err(invalid(
                        "tls.cert",
                        "",
                        "expected a PEM certificate file, since tls.key is set",
                    ));
                }
                if tls.key.is_empty() && !tls.cert.is_empty() {
                    return Err(invalid(
                        "tls.key",
                        "",
                        "expected a PEM private key file, since tls.cert is set",
                    ));
                }
                if !tls.client_ca.is_empty() && !tls.enabled() {
                    return Err(invalid(
                        "tls.client_ca",
                        &tls.client_ca,
                        "only used with tls.cert and tls.key set (clients are asked for a certificate over TLS)",
                    ));
                }
            }
            "upstream_tls" => {
                let tls = &self.upstream_tls;
                if tls.cert.is_empty() && !tls.key.is_empty() {
                    return Err(invalid(
                        "upstream_tls.cert",
                        "",
                        "expected a PEM certificate file, since upstream_tls.key is set",
                    ));
                }
                if tls.key.is_empty() && !tls.cert.is_empty() {
                    return Err(invalid(
                        "upstream_tls.key",
                        "",
                        "expected a PEM private key file, since upstream_tls.cert is set",
                    ));
                }
                // Plain text where TLS was meant must not pass unnoticed.
                let secure = UpstreamUrl::parse(&self.upstream).is_ok_and(|url| url.tls);
                if let Some((name, value)) = tls.set_settings().next()
                    && !secure
                {
                    return Err(invalid(
                        name,
                        value,
                        &format!(
                            "only used with a rediss:// upstream, and upstream is {}",
                            self.upstream_redacted()
                        ),
                    ));
                }
            }
            "log.format" if !["text", "json"].contains(&self.log.format.as_str()) => {
                return Err(invalid(name, &self.log.format, "expected text or json"));
            }
            _ => {}
        }
        Ok(())
    }

    /// The upstream URL with any password replaced, for logs and output.
    pub fn upstream_redacted(&self) -> String {
        match UpstreamUrl::parse(&self.upstream) {
            Ok(url) => url.redacted(),
            Err(_) => self.upstream.clone(),
        }
    }

    /// The effective configuration as TOML, secrets hidden.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string(&self.shown()).unwrap_or_else(|error| format!("# cannot render configuration: {error}\n"))
    }

    /// This configuration with its secrets hidden.
    fn shown(&self) -> Config {
        let mut shown = self.clone();
        shown.upstream = self.upstream_redacted();
        if shown.auth.password.is_some() {
            shown.auth.password = Some("<hidden>".into());
        }
        for user in &mut shown.auth.users {
            user.password_sha256 = "<hidden>".into();
        }
        shown
    }
}

impl Config {
    /// Every setting as (dotted name, value), secrets hidden, in name
    /// order: `PROXY CONFIG GET`. Strings are shown bare, other values as
    /// JSON writes them (an unset one empty).
    pub fn settings_redacted(&self) -> Vec<(String, String)> {
        fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
            match value {
                serde_json::Value::Object(table) => {
                    for (name, value) in table {
                        let name = if prefix.is_empty() {
                            name.clone()
                        } else {
                            format!("{prefix}.{name}")
                        };
                        flatten(&name, value, out);
                    }
                }
                serde_json::Value::String(text) => out.push((prefix.to_string(), text.clone())),
                // An unset option (auth.password) is shown empty.
                serde_json::Value::Null => out.push((prefix.to_string(), String::new())),
                other => out.push((prefix.to_string(), other.to_string())),
            }
        }
        let mut out = Vec::new();
        // (JSON, not TOML: TOML's integers stop at i64::MAX.)
        if let Ok(value) = serde_json::to_value(self.shown()) {
            flatten("", &value, &mut out);
        }
        out.sort();
        out
    }
}

fn looks_like_host_port(text: &str) -> bool {
    match text.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok(),
        None => false,
    }
}

/// A parsed `redis://`, `rediss://` or `redis-cluster://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// `rediss://`: every connection speaks TLS (`[upstream_tls]`).
    pub tls: bool,
    /// The node connected to (a cluster's first seed).
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub db: u32,
    /// `redis-cluster://h1:p1,h2:p2`: the seed nodes (host, port) the slot
    /// map is first asked of; empty for a single Redis.
    pub seeds: Vec<(String, u16)>,
}

impl UpstreamUrl {
    /// Parses `redis[s]://[user:password@]host[:port][/db]`; the error says
    /// what is allowed.
    pub fn parse(text: &str) -> Result<UpstreamUrl, String> {
        for (scheme, single) in [("redis-cluster://", "redis://"), ("rediss-cluster://", "rediss://")] {
            if let Some(rest) = text.strip_prefix(scheme) {
                return UpstreamUrl::parse_cluster(single, rest);
            }
        }
        UpstreamUrl::parse_single(text)
    }

    /// `redis[s]-cluster://[user:password@]host:port,host:port,...`: each
    /// seed parsed as a single node's URL with the same credentials; no
    /// database (a cluster has only 0).
    fn parse_cluster(single: &str, rest: &str) -> Result<UpstreamUrl, String> {
        const ALLOWED: &str =
            "expected redis-cluster://[user:password@]host:port[,host:port...] (rediss-cluster:// for TLS)";
        let (credentials, hosts) = match rest.rfind('@') {
            Some(at) => (&rest[..=at], &rest[at + 1..]),
            None => ("", rest),
        };
        let hosts = hosts.trim_end_matches('/');
        let mut seeds = Vec::new();
        let mut first = None;
        for host in hosts.split(',').map(str::trim).filter(|host| !host.is_empty()) {
            if host.contains('/') {
                return Err(format!("{ALLOWED} (a cluster has no database to choose)"));
            }
            let node = UpstreamUrl::parse_single(&format!("{single}{credentials}{host}"))
                .map_err(|error| format!("{ALLOWED}: seed {host:?}: {error}"))?;
            seeds.push((node.host.clone(), node.port));
            first.get_or_insert(node);
        }
        let mut url = first.ok_or_else(|| format!("{ALLOWED} (no seed node)"))?;
        url.seeds = seeds;
        Ok(url)
    }

    /// Whether this is a Redis Cluster (`redis-cluster://`).
    pub fn is_cluster(&self) -> bool {
        !self.seeds.is_empty()
    }

    /// The same credentials and TLS, for one node at `host:port` (a
    /// cluster's node): a single-node URL.
    pub fn node(&self, host: &str, port: u16) -> UpstreamUrl {
        UpstreamUrl {
            host: host.to_string(),
            port,
            seeds: Vec::new(),
            ..self.clone()
        }
    }

    fn parse_single(text: &str) -> Result<UpstreamUrl, String> {
        const ALLOWED: &str = "expected redis://[user:password@]host:port[/db] (rediss:// for TLS, \
             redis-cluster://host:port,host:port for a Redis Cluster)";
        let url = url::Url::parse(text).map_err(|error| format!("{ALLOWED} ({error})"))?;
        let tls = match url.scheme() {
            "redis" => false,
            "rediss" => true,
            other => return Err(format!("{ALLOWED}, not scheme {other:?}")),
        };
        let host = url
            .host_str()
            .filter(|host| !host.is_empty())
            .ok_or_else(|| format!("{ALLOWED} (no host)"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let decode = |text: &str| {
            url::form_urlencoded::parse(format!("x={}", text.replace('+', "%2B")).as_bytes())
                .next()
                .map(|(_, value)| value.into_owned())
                .unwrap_or_default()
        };
        let username = Some(url.username()).filter(|name| !name.is_empty()).map(decode);
        let password = url.password().map(decode);
        let db = match url.path().trim_start_matches('/') {
            "" => 0,
            path => path
                .parse::<u32>()
                .map_err(|_| format!("{ALLOWED} (database {path:?} is not a number)"))?,
        };
        Ok(UpstreamUrl {
            tls,
            host,
            port: url.port().unwrap_or(6379),
            username,
            password,
            db,
            seeds: Vec::new(),
        })
    }

    /// host:port for connecting.
    pub fn address(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The URL with the password hidden.
    pub fn redacted(&self) -> String {
        let credentials = match (&self.username, &self.password) {
            (Some(user), Some(_)) => format!("{user}:<hidden>@"),
            (None, Some(_)) => ":<hidden>@".to_string(),
            (Some(user), None) => format!("{user}@"),
            (None, None) => String::new(),
        };
        let scheme = if self.tls { "rediss" } else { "redis" };
        if self.is_cluster() {
            let seeds: Vec<String> = self
                .seeds
                .iter()
                .map(|(host, port)| self.node(host, *port).address())
                .collect();
            return format!("{scheme}-cluster://{credentials}{}", seeds.join(","));
        }
        format!("{scheme}://{credentials}{}/{}", self.address(), self.db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn layers_apply_in_order_defaults_file_environment() {
        let mut config = Config::from_toml("listen = \"127.0.0.1:7000\"\n[pool]\nsize = 7\n").unwrap();
        assert_eq!(config.listen, "127.0.0.1:7000");
        assert_eq!(config.pool.size, 7);
        assert_eq!(config.limits.max_clients, 10_000, "untouched settings keep defaults");
        config
            .apply_environment(env(&[("AURACACHE_LISTEN", "127.0.0.1:7001"), ("UNRELATED", "x")]))
            .unwrap();
        assert_eq!(config.listen, "127.0.0.1:7001");
        assert_eq!(config.pool.size, 7);
        config.set("listen", "127.0.0.1:7002").unwrap();
        assert_eq!(config.listen, "127.0.0.1:7002");
    }

    #[test]
    fn invalid_values_name_setting_value_and_what_is_allowed() {
        let mut config = Config::default();
        let error = config
            .apply_environment(env(&[("AURACACHE_MAX_CLIENTS", "abc")]))
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid setting limits.max_clients = \"abc\": expected a whole number >= 1"
        );
        let error = config.set("log.format", "xml").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid setting log.format = \"xml\": expected text or json"
        );
        assert!(
            config
                .set("upstream", "http://x")
                .unwrap_err()
                .to_string()
                .contains("upstream")
        );
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let error = Config::from_toml("[limits]\nmax_client = 3\n").unwrap_err();
        assert!(error.contains("max_client"), "{error}");
    }

    #[test]
    fn upstream_url_forms() {
        let url = UpstreamUrl::parse("redis://alice:p%40ss@10.0.0.1:6400/3").unwrap();
        assert_eq!(
            (
                url.host.as_str(),
                url.port,
                url.username.as_deref(),
                url.password.as_deref(),
                url.db
            ),
            ("10.0.0.1", 6400, Some("alice"), Some("p@ss"), 3)
        );
        let url = UpstreamUrl::parse("redis://:secret@localhost").unwrap();
        assert_eq!(
            (url.port, url.username.clone(), url.password.as_deref()),
            (6379, None, Some("secret"))
        );
        assert_eq!(url.redacted(), "redis://:<hidden>@localhost:6379/0");
        assert!(UpstreamUrl::parse("redis://h:1/notanumber").is_err());
        assert!(!url.tls);
        let url = UpstreamUrl::parse("rediss://:secret@127.0.0.1:6390/2").unwrap();
        assert!(url.tls);
        assert_eq!(url.redacted(), "rediss://:<hidden>@127.0.0.1:6390/2");
    }

    #[test]
    fn cluster_urls_name_their_seeds_with_shared_credentials() {
        let url = UpstreamUrl::parse("redis-cluster://app:p%40ss@10.0.0.1:7000,10.0.0.2:7001, [::1]:7002").unwrap();
        assert!(url.is_cluster() && !url.tls);
        assert_eq!(
            url.seeds,
            vec![
                ("10.0.0.1".to_string(), 7000),
                ("10.0.0.2".to_string(), 7001),
                ("::1".to_string(), 7002)
            ]
        );
        assert_eq!((url.host.as_str(), url.port, url.db), ("10.0.0.1", 7000, 0));
        assert_eq!(
            (url.username.as_deref(), url.password.as_deref()),
            (Some("app"), Some("p@ss"))
        );
        assert_eq!(
            url.redacted(),
            "redis-cluster://app:<hidden>@10.0.0.1:7000,10.0.0.2:7001,[::1]:7002"
        );
        let node = url.node("10.0.0.9", 7005);
        assert!(!node.is_cluster());
        assert_eq!(node.redacted(), "redis://app:<hidden>@10.0.0.9:7005/0");
        assert!(UpstreamUrl::parse("rediss-cluster://h:1").unwrap().tls);
        for refused in [
            "redis-cluster://",
            "redis-cluster://h:1/2",
            "redis-cluster://h:notaport",
        ] {
            assert!(UpstreamUrl::parse(refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn tls_settings_come_in_pairs_and_upstream_tls_needs_rediss() {
        let mut config = Config::default();
        // The environment sets tls.cert before tls.key: neither alone is refused then.
        config
            .apply_environment(env(&[
                ("AURACACHE_TLS_CERT", "/etc/auracache/cert.pem"),
                ("AURACACHE_TLS_KEY", "/etc/auracache/key.pem"),
            ]))
            .unwrap();
        assert!(config.tls.enabled());
        config.validate().unwrap();
        config.tls.key.clear();
        assert_eq!(
            config.validate().unwrap_err().to_string(),
            "invalid setting tls.key = \"\": expected a PEM private key file, since tls.cert is set"
        );
        let mut config = Config::default();
        config.tls.client_ca = "/ca.pem".into();
        assert!(config.validate().unwrap_err().to_string().contains("tls.client_ca"));
        let mut config = Config::default();
        config.upstream_tls.ca = "/ca.pem".into();
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("upstream_tls.ca") && error.contains("only used with a rediss:// upstream"),
            "{error}"
        );
        config.upstream = "rediss://127.0.0.1:6390".into();
        config.validate().unwrap();
        config.upstream_tls.key = "/key.pem".into();
        assert!(config.validate().unwrap_err().to_string().contains("upstream_tls.cert"));
    }

    #[test]
    fn printed_configuration_hides_secrets() {
        let mut config = Config {
            upstream: "redis://u:topsecret@127.0.0.1:6379".into(),
            ..Config::default()
        };
        config.auth.password = Some("hunter2".into());
        let shown = config.to_redacted_toml();
        assert!(!shown.contains("topsecret") && !shown.contains("hunter2"), "{shown}");
        assert!(Config::from_toml(&shown).is_ok(), "printed config parses back");
    }

    #[test]
    fn namespace_sections_override_the_memory_cache_defaults() {
        let config = Config::from_toml(
            "[memory_cache]\nsize_per_namespace = 10\n[namespaces.reports]\nmemory_cache_ttl = 300\nconsistency = \"ttl-only\"\n",
        )
        .unwrap();
        config.validate().unwrap();
        let reports = &config.namespaces["reports"];
        assert_eq!(reports.memory_cache_ttl, Some(300));
        assert_eq!(reports.consistency, Some(Consistency::TtlOnly));
        assert_eq!(reports.memory_cache_size, None);
        let error = Config::from_toml("[namespaces.reports]\nconsistency = \"eventual\"\n").unwrap_err();
        assert!(error.contains("strict") && error.contains("ttl-only"), "{error}");
        let error = Config::from_toml("[namespaces.reports]\nttl = 3\n").unwrap_err();
        assert!(error.contains("ttl"), "{error}");
        let bad = Config::from_toml("[namespaces.\"a:b\"]\nmemory_cache_ttl = 1\n").unwrap();
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "invalid setting namespaces.a:b = \"a:b\": expected a non-empty namespace name without the separator \":\""
        );
        let mut config = Config::default();
        config
            .apply_environment(env(&[
                ("MEMORY_CACHE_SIZE_PER_NAMESPACE", "0"),
                ("AURACACHE_MEMORY_CACHE_CONSISTENCY", "ttl-only"),
            ]))
            .unwrap();
        assert_eq!(config.memory_cache.size_per_namespace, 0);
        assert_eq!(config.memory_cache.consistency, Consistency::TtlOnly);
        assert!(config.set("memory_cache.consistency", "loose").is_err());
        assert!(config.set("namespace_separator", "::").is_err());
        let shown = config.to_redacted_toml();
        assert!(Config::from_toml(&shown).is_ok(), "{shown}");
    }

    /// The original system's names, and the defaults the issue fixes:
    /// L1 on, 1000 entries per namespace, 60 s, nil cached briefly.
    #[test]
    fn memory_cache_defaults_and_the_original_environment_names() {
        let defaults = Config::default().memory_cache;
        assert!(defaults.enabled);
        assert_eq!(defaults.size_per_namespace, 1000);
        assert_eq!(defaults.default_ttl, 60);
        assert!(defaults.nil_ttl > 0 && defaults.nil_ttl < defaults.default_ttl);
        let mut config = Config::default();
        config
            .apply_environment(env(&[
                ("MEMORY_CACHE_ENABLED", "false"),
                ("MEMORY_CACHE_DEFAULT_TTL", "300"),
                ("MEMORY_CACHE_SIZE_PER_NAMESPACE", "50"),
            ]))
            .unwrap();
        assert!(!config.memory_cache.enabled);
        assert_eq!(config.memory_cache.default_ttl, 300);
        assert_eq!(config.memory_cache.size_per_namespace, 50);
        let error = Config::default()
            .apply_environment(env(&[("MEMORY_CACHE_ENABLED", "maybe")]))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("memory_cache.enabled") && error.contains("maybe"),
            "{error}"
        );
    }

    #[test]
    fn versioning_settings_are_checked() {
        let config = Config::from_toml(
            "[versioning]\nkey_pattern = \"{key}@v{version}\"\n[namespaces.user]\nversion = 2\nfallback_versions = [1, 0]\nmigrate_on_read = false\n",
        )
        .unwrap();
        config.validate().unwrap();
        let user = &config.namespaces["user"];
        assert_eq!((user.version, user.fallback_versions.clone()), (Some(2), vec![1, 0]));
        for (toml, message) in [
            (
                "[versioning]\nkey_pattern = \"v{version}{key}\"\n",
                "with text between them",
            ),
            ("[versioning]\nkey_pattern = \"{key}\"\n", "once each"),
            (
                "[versioning]\nkey_pattern = \"v{version}1:{key}\"\n",
                "no digit next to",
            ),
            (
                "[namespaces.user]\nfallback_versions = [1]\n",
                "expected a version when",
            ),
            (
                "[namespaces.user]\nfallback_unversioned = true\n",
                "expected a version when",
            ),
            (
                "[namespaces.user]\nversion = 2\nfallback_versions = [1, 2]\n",
                "other than the current one",
            ),
        ] {
            let error = Config::from_toml(toml).unwrap().validate().unwrap_err().to_string();
            assert!(error.contains(message), "{toml}: {error}");
        }
        let mut config = Config::default();
        config
            .apply_environment(env(&[("AURACACHE_VERSIONING_KEY_PATTERN", "{key}:ver{version}")]))
            .unwrap();
        assert_eq!(config.versioning.key_pattern, "{key}:ver{version}");
    }
}
