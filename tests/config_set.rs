//! `PROXY CONFIG SET` of compression and L1 settings: each takes effect in
//! the running proxy, seen from outside (what Redis stores, what reaches
//! Redis, what INFO cache says), and what cannot change safely is refused
//! with the reason. L1 time is a ManualClock where TTLs matter.

mod common;

use std::sync::Arc;
use std::time::Duration;

use auracache::clock::ManualClock;
use auracache::codec::{Codec, envelope};
use auracache::config::{CompressionAlgorithm, Config, NamespaceConfig};
use common::values::info_field;
use common::{Proxy, RawClient, RedisServer};

/// A value zstd, gzip and zlib all shrink well (about 600 bytes).
fn compressible() -> String {
    "lorem-ipsum-dolor-".repeat(34)
}

/// The bytes Redis holds for `key` (read straight from Redis).
async fn stored(direct: &mut RawClient, key: &str) -> Vec<u8> {
    let reply = direct.command(&[b"GET", key.as_bytes()]).await;
    let header_end = reply.iter().position(|byte| *byte == b'\n').expect("a bulk string") + 1;
    assert_eq!(reply[0], b'$', "{:?}", String::from_utf8_lossy(&reply));
    reply[header_end..reply.len() - 2].to_vec()
}

/// The codec of the envelope Redis holds for `key`, or None if it is stored raw.
async fn codec_in_redis(direct: &mut RawClient, key: &str) -> Option<Codec> {
    envelope::parse_header(&stored(direct, key).await).map(|header| header.codec)
}

/// `SET key value` through the proxy.
async fn set(client: &mut RawClient, key: &str, value: &str) {
    assert_eq!(
        client.command(&[b"SET", key.as_bytes(), value.as_bytes()]).await,
        b"+OK\r\n"
    );
}

/// `GET key` through the proxy is `value`, byte for byte.
async fn assert_reads(client: &mut RawClient, key: &str, value: &str) {
    let expected = format!("${}\r\n{value}\r\n", value.len());
    assert_eq!(client.cmd(&format!("GET {key}")).await, expected, "GET {key}");
}

/// `PROXY CONFIG GET name`'s value.
async fn config_get(client: &mut RawClient, name: &str) -> String {
    let reply = client.cmd(&format!("PROXY CONFIG GET {name}")).await;
    let lines: Vec<&str> = reply.split("\r\n").collect();
    assert_eq!(lines[0], "*2", "{name}: {reply}");
    lines[4].to_string()
}

/// The `l1_namespace_<name>` line's `field`.
async fn namespace_field(client: &mut RawClient, namespace: &str, field: &str) -> String {
    let info = client.cmd("INFO cache").await;
    let line = info_field(&info, &format!("l1_namespace_{namespace}"));
    line.split(',')
        .find_map(|pair| pair.strip_prefix(&format!("{field}=")))
        .unwrap_or_else(|| panic!("no {field} in {line}"))
        .to_string()
}

/// Compression on (and L1 off: every read is Redis's bytes, decoded).
fn compressing(config: &mut Config) {
    config.memory_cache.enabled = false;
    config.compression.enabled = true;
}

/// A lowered threshold compresses values written from then on; a value
/// stored raw before stays raw, and both read back as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_compression_threshold_compresses_new_writes() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), compressing).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let value = compressible();
    assert!(value.len() < 1024, "below the default threshold");
    set(&mut client, "doc:before", &value).await;
    assert_eq!(stored(&mut direct, "doc:before").await, value.as_bytes(), "stored raw");
    assert_eq!(client.cmd("PROXY CONFIG SET compression.threshold 64").await, "+OK\r\n");
    assert_eq!(config_get(&mut client, "compression.threshold").await, "64");
    set(&mut client, "doc:after", &value).await;
    assert_eq!(codec_in_redis(&mut direct, "doc:after").await, Some(Codec::Zstd));
    assert!(stored(&mut direct, "doc:after").await.len() < value.len() / 2);
    assert_eq!(codec_in_redis(&mut direct, "doc:before").await, None, "not rewritten");
    assert_reads(&mut client, "doc:after", &value).await;
    assert_reads(&mut client, "doc:before", &value).await;
}

/// Compression turned off at run time: new values go raw, values stored
/// compressed are still decoded; turned on again, new values compress.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_turns_off_and_on_and_stored_envelopes_still_decode() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        compressing(config);
        config.compression.threshold = 64;
    })
    .await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let value = compressible();
    set(&mut client, "doc:1", &value).await;
    assert_eq!(codec_in_redis(&mut direct, "doc:1").await, Some(Codec::Zstd));
    assert_eq!(
        client.cmd("PROXY CONFIG SET compression.enabled false").await,
        "+OK\r\n"
    );
    assert_eq!(config_get(&mut client, "compression.enabled").await, "false");
    assert_eq!(info_field(&client.cmd("INFO cache").await, "compression_enabled"), "0");
    set(&mut client, "doc:2", &value).await;
    assert_eq!(stored(&mut direct, "doc:2").await, value.as_bytes(), "stored raw");
    assert_reads(&mut client, "doc:1", &value).await;
    assert_reads(&mut client, "doc:2", &value).await;
    // A raw value that begins like an envelope is still escaped.
    let tricky = [&envelope::MAGIC[..], b"\x01\x01tricky"].concat();
    assert_eq!(client.command(&[b"SET", b"doc:tricky", &tricky]).await, b"+OK\r\n");
    assert_eq!(codec_in_redis(&mut direct, "doc:tricky").await, Some(Codec::Stored));
    let mut expected = format!("${}\r\n", tricky.len()).into_bytes();
    expected.extend_from_slice(&tricky);
    expected.extend_from_slice(b"\r\n");
    assert_eq!(client.command(&[b"GET", b"doc:tricky"]).await, expected);
    assert_eq!(client.cmd("PROXY CONFIG SET compression.enabled true").await, "+OK\r\n");
    set(&mut client, "doc:3", &value).await;
    assert_eq!(codec_in_redis(&mut direct, "doc:3").await, Some(Codec::Zstd));
    assert_reads(&mut client, "doc:3", &value).await;
}

/// The algorithm, level and minimum savings change for new writes; a
/// level the algorithm does not have is refused, naming the setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_algorithm_level_and_savings_change_for_new_writes() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        compressing(config);
        config.compression.threshold = 64;
    })
    .await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let value = compressible();
    assert_eq!(
        client.cmd("PROXY CONFIG SET compression.algorithm gzip").await,
        "+OK\r\n"
    );
    set(&mut client, "doc:gzip", &value).await;
    assert_eq!(codec_in_redis(&mut direct, "doc:gzip").await, Some(Codec::Gzip));
    assert_eq!(client.cmd("PROXY CONFIG SET compression.level 9").await, "+OK\r\n");
    assert_eq!(config_get(&mut client, "compression.level").await, "9");
    let refused = client.cmd("PROXY CONFIG SET compression.level 15").await;
    assert!(
        refused.starts_with("-ERR invalid setting compression.level = \"15\"") && refused.contains("gzip"),
        "{refused}"
    );
    assert_eq!(config_get(&mut client, "compression.level").await, "9", "unchanged");
    assert_eq!(
        client.cmd("PROXY CONFIG SET compression.algorithm zlib").await,
        "+OK\r\n"
    );
    set(&mut client, "doc:zlib", &value).await;
    assert_eq!(codec_in_redis(&mut direct, "doc:zlib").await, Some(Codec::Zlib));
    assert_eq!(
        client.cmd("PROXY CONFIG SET compression.algorithm zstd").await,
        "+OK\r\n"
    );
    assert_eq!(client.cmd("PROXY CONFIG SET compression.level 19").await, "+OK\r\n");
    // gzip has no level 19: the pair is checked as at start-up.
    let refused = client.cmd("PROXY CONFIG SET compression.algorithm gzip").await;
    assert!(
        refused.starts_with("-ERR invalid setting compression.level = \"19\""),
        "{refused}"
    );
    assert_eq!(config_get(&mut client, "compression.algorithm").await, "zstd");
    set(&mut client, "doc:zstd", &value).await;
    assert_eq!(codec_in_redis(&mut direct, "doc:zstd").await, Some(Codec::Zstd));
    // Demand more savings than the value gives: it is stored raw.
    assert_eq!(
        client.cmd("PROXY CONFIG SET compression.min_savings 0.999").await,
        "+OK\r\n"
    );
    set(&mut client, "doc:raw", &value).await;
    assert_eq!(codec_in_redis(&mut direct, "doc:raw").await, None);
    for key in ["doc:gzip", "doc:zlib", "doc:zstd", "doc:raw"] {
        assert_reads(&mut client, key, &value).await;
    }
}

/// A namespace's own compression settings keep winning over a changed
/// default; its settings it does not set follow the new default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_compression_overrides_win_over_a_changed_default() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        compressing(config);
        config.namespaces.insert(
            "logs".into(),
            NamespaceConfig {
                compression_threshold: Some(100_000),
                ..NamespaceConfig::default()
            },
        );
        config.namespaces.insert(
            "archive".into(),
            NamespaceConfig {
                compression_algorithm: Some(CompressionAlgorithm::Zlib),
                ..NamespaceConfig::default()
            },
        );
        config.namespaces.insert(
            "raw".into(),
            NamespaceConfig {
                compression_enabled: Some(false),
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    for setting in ["compression.threshold 64", "compression.algorithm gzip"] {
        assert_eq!(
            client.cmd(&format!("PROXY CONFIG SET {setting}")).await,
            "+OK\r\n",
            "{setting}"
        );
    }
    let value = compressible();
    for key in ["user:1", "logs:1", "archive:1", "raw:1"] {
        set(&mut client, key, &value).await;
    }
    assert_eq!(
        codec_in_redis(&mut direct, "user:1").await,
        Some(Codec::Gzip),
        "the new default"
    );
    assert_eq!(codec_in_redis(&mut direct, "logs:1").await, None, "its own threshold");
    assert_eq!(
        codec_in_redis(&mut direct, "archive:1").await,
        Some(Codec::Zlib),
        "its own algorithm, the new threshold"
    );
    assert_eq!(codec_in_redis(&mut direct, "raw:1").await, None, "its own switch");
    for key in ["user:1", "logs:1", "archive:1", "raw:1"] {
        assert_reads(&mut client, key, &value).await;
    }
}

/// Started with compression off, the proxy does not decode what Redis
/// holds, so compression cannot be turned on while it runs: refused, with
/// what to do instead, and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_settings_are_refused_when_compression_was_off_at_start_up() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| config.memory_cache.enabled = false).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    for setting in [
        "compression.enabled true",
        "compression.threshold 64",
        "compression.level 5",
    ] {
        let refused = client.cmd(&format!("PROXY CONFIG SET {setting}")).await;
        assert!(
            refused.starts_with("-ERR compression was off at start-up")
                && refused.contains("needs a restart with compression.enabled = true"),
            "{setting}: {refused}"
        );
    }
    assert_eq!(config_get(&mut client, "compression.enabled").await, "false");
    let value = "x".repeat(4096);
    set(&mut client, "doc:1", &value).await;
    assert_eq!(stored(&mut direct, "doc:1").await, value.as_bytes());
}

/// L1 with the first miss filling, on a manual clock.
async fn start_l1(server: &RedisServer, clock: &ManualClock, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let proxy = Proxy::start_with_clock(&server.url(), Arc::new(clock.clone()), |config| {
        common::l1_eager(config);
        tweak(config);
    })
    .await;
    let l1 = proxy.handle().l1().expect("L1 on").clone();
    common::poll_until("L1 to be ready", || l1.ready());
    proxy
}

/// A new default TTL applies to entries stored from then on, in every
/// namespace without its own; a namespace with its own keeps it. 0 is
/// refused (it would change whether L1 needs Redis's invalidations).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_default_ttl_applies_to_entries_stored_from_then_on() {
    let server = RedisServer::start();
    let clock = ManualClock::default();
    let proxy = start_l1(&server, &clock, |config| {
        config.memory_cache.default_ttl = 60;
        config.namespaces.insert(
            "own".into(),
            NamespaceConfig {
                memory_cache_ttl: Some(60),
                ..NamespaceConfig::default()
            },
        );
        config.namespaces.insert("follows".into(), NamespaceConfig::default());
    })
    .await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let keys = ["user:1", "follows:1", "own:1"];
    for key in keys {
        set(&mut client, key, "v").await;
    }
    common::settle(&proxy, &mut client, &mut direct).await;
    // Known before the change (user), configured without a TTL (follows):
    // both take the new default.
    client.cmd("GET user:0").await;
    assert_eq!(
        client.cmd("PROXY CONFIG SET memory_cache.default_ttl 5").await,
        "+OK\r\n"
    );
    assert_eq!(config_get(&mut client, "memory_cache.default_ttl").await, "5");
    assert_eq!(namespace_field(&mut client, "user", "ttl").await, "5");
    for key in keys {
        common::read_until_cached(&proxy, &mut client, key).await;
    }
    clock.advance(Duration::from_millis(4999));
    let gets = common::redis_calls(&mut direct, "get").await;
    for key in keys {
        assert_reads(&mut client, key, "v").await;
    }
    assert_eq!(common::redis_calls(&mut direct, "get").await, gets, "all still L1 hits");
    clock.advance(Duration::from_millis(1));
    for key in keys {
        assert_reads(&mut client, key, "v").await;
    }
    assert_eq!(
        common::redis_calls(&mut direct, "get").await,
        gets + 2,
        "user:1 and follows:1 expired after the new 5 s, own:1 keeps its 60 s"
    );
    for setting in ["memory_cache.default_ttl 0", "memory_cache.default_ttl 00"] {
        let refused = client.cmd(&format!("PROXY CONFIG SET {setting}")).await;
        assert!(
            refused.starts_with("-ERR memory_cache.default_ttl cannot change from 5 to 0 while the proxy runs")
                && refused.contains("restart"),
            "{refused}"
        );
    }
    assert_eq!(config_get(&mut client, "memory_cache.default_ttl").await, "5");
    let refused = client.cmd("PROXY CONFIG SET memory_cache.default_ttl soon").await;
    assert!(
        refused.starts_with("-ERR invalid setting memory_cache.default_ttl"),
        "{refused}"
    );
}

/// A new nil TTL applies to "no such key" stored from then on; 0 stops
/// caching it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_nil_ttl_applies_to_missing_keys_from_then_on() {
    let server = RedisServer::start();
    let clock = ManualClock::default();
    let proxy = start_l1(&server, &clock, |config| config.memory_cache.nil_ttl = 30).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("PROXY CONFIG SET memory_cache.nil_ttl 1").await, "+OK\r\n");
    assert_eq!(config_get(&mut client, "memory_cache.nil_ttl").await, "1");
    assert_eq!(
        common::read_until_cached(&proxy, &mut client, "missing:1").await,
        "$-1\r\n"
    );
    clock.advance(Duration::from_millis(999));
    let gets = common::redis_calls(&mut direct, "get").await;
    assert_eq!(client.cmd("GET missing:1").await, "$-1\r\n");
    assert_eq!(common::redis_calls(&mut direct, "get").await, gets, "still cached");
    clock.advance(Duration::from_millis(1));
    assert_eq!(client.cmd("GET missing:1").await, "$-1\r\n");
    assert_eq!(
        common::redis_calls(&mut direct, "get").await,
        gets + 1,
        "expired after the new 1 s, not the 30 s it started with"
    );
    assert_eq!(client.cmd("PROXY CONFIG SET memory_cache.nil_ttl 0").await, "+OK\r\n");
    let hits = common::l1_hits(&proxy);
    for _ in 0..3 {
        assert_eq!(client.cmd("GET missing:2").await, "$-1\r\n");
    }
    assert_eq!(common::l1_hits(&proxy), hits, "a missing key is no longer cached");
}

/// A lowered entry bound applies at once (the oldest keys go) to every
/// namespace without its own, including one that had no bound, and keeps
/// holding as keys come; a namespace with its own size keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_size_per_namespace_bounds_namespaces_at_once() {
    let server = RedisServer::start();
    let clock = ManualClock::default();
    let proxy = start_l1(&server, &clock, |config| {
        config.namespaces.insert(
            "own".into(),
            NamespaceConfig {
                memory_cache_size: Some(8),
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    for i in 0..6 {
        for namespace in ["user", "own"] {
            set(&mut client, &format!("{namespace}:{i}"), "v").await;
        }
    }
    common::settle(&proxy, &mut client, &mut direct).await;
    for i in 0..6 {
        for namespace in ["user", "own"] {
            common::read_until_cached(&proxy, &mut client, &format!("{namespace}:{i}")).await;
        }
    }
    assert_eq!(namespace_field(&mut client, "user", "entries").await, "6");
    assert_eq!(
        client.cmd("PROXY CONFIG SET memory_cache.size_per_namespace 3").await,
        "+OK\r\n"
    );
    assert_eq!(config_get(&mut client, "memory_cache.size_per_namespace").await, "3");
    assert_eq!(namespace_field(&mut client, "user", "entries").await, "3");
    assert_eq!(namespace_field(&mut client, "user", "max_entries").await, "3");
    assert_eq!(namespace_field(&mut client, "user", "evictions").await, "3");
    assert_eq!(namespace_field(&mut client, "own", "entries").await, "6", "its own 8");
    // More keys, each read until it is admitted: still 3.
    for i in 6..10 {
        let key = format!("user:{i}");
        set(&mut client, &key, "v").await;
        common::settle(&proxy, &mut client, &mut direct).await;
        common::read_until_cached(&proxy, &mut client, &key).await;
        assert_eq!(namespace_field(&mut client, "user", "entries").await, "3", "{key}");
    }
    let refused = client.cmd("PROXY CONFIG SET memory_cache.size_per_namespace -1").await;
    assert!(
        refused.starts_with("-ERR invalid setting memory_cache.size_per_namespace"),
        "{refused}"
    );
}

/// A lowered byte bound evicts down to it at once, INFO cache shows the
/// new bound, and the namespaces' bytes still add up to L1's. The largest
/// entry comes down with it to what one shard can hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_max_bytes_evicts_down_to_the_new_bound() {
    let server = RedisServer::start();
    let clock = ManualClock::default();
    let proxy = start_l1(&server, &clock, |_| {}).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let value = "v".repeat(2000);
    for i in 0..200 {
        let key = format!("user:{i}");
        assert_eq!(
            direct.command(&[b"SET", key.as_bytes(), value.as_bytes()]).await,
            b"+OK\r\n"
        );
    }
    common::settle(&proxy, &mut client, &mut direct).await;
    for i in 0..200 {
        common::read_until_cached(&proxy, &mut client, &format!("user:{i}")).await;
    }
    let info = client.cmd("INFO cache").await;
    assert!(
        info_field(&info, "l1_bytes").parse::<u64>().unwrap() > 400_000,
        "{info}"
    );
    // The largest entry (1 MB by default) comes down with the bound, to
    // one shard's share, and CONFIG GET says so.
    assert_eq!(
        client.cmd("PROXY CONFIG SET memory_cache.max_bytes 262144").await,
        "+OK\r\n"
    );
    let largest: u64 = config_get(&mut client, "memory_cache.max_entry_bytes")
        .await
        .parse()
        .unwrap();
    assert!(largest > 0 && largest < 262_144 / 4, "{largest}");
    assert_eq!(config_get(&mut client, "memory_cache.max_bytes").await, "262144");
    let info = client.cmd("INFO cache").await;
    let bytes: u64 = info_field(&info, "l1_bytes").parse().unwrap();
    assert!(bytes <= 262_144, "{info}");
    assert_eq!(info_field(&info, "l1_max_bytes"), "262144");
    assert!(info_field(&info, "l1_evictions").parse::<u64>().unwrap() > 0, "{info}");
    let in_namespaces: u64 = ["user", "settle"]
        .iter()
        .map(|namespace| {
            let line = info_field(&info, &format!("l1_namespace_{namespace}"));
            line.split(',')
                .find_map(|pair| pair.strip_prefix("bytes="))
                .expect("bytes")
                .parse::<u64>()
                .unwrap()
        })
        .sum();
    assert_eq!(in_namespaces, bytes, "the namespaces' bytes are L1's: {info}");
    // Values keep being cached within the new bound.
    common::read_until_cached(&proxy, &mut client, "user:0").await;
    let bytes: u64 = info_field(&client.cmd("INFO cache").await, "l1_bytes").parse().unwrap();
    assert!(bytes <= 262_144);
    let refused = client.cmd("PROXY CONFIG SET memory_cache.max_bytes 100").await;
    assert!(
        refused.starts_with("-ERR invalid setting memory_cache.max_bytes = \"100\": expected a whole number >= 1024"),
        "{refused}"
    );
}

/// A lowered largest entry drops what is above it at once, and larger
/// values are not cached from then on (counted as too large); smaller
/// ones still are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_max_entry_bytes_stops_caching_larger_values() {
    let server = RedisServer::start();
    let clock = ManualClock::default();
    let proxy = start_l1(&server, &clock, |_| {}).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let big = "b".repeat(5000);
    set(&mut client, "doc:big", &big).await;
    set(&mut client, "doc:small", "s").await;
    common::settle(&proxy, &mut client, &mut direct).await;
    common::read_until_cached(&proxy, &mut client, "doc:big").await;
    assert_eq!(
        client.cmd("PROXY CONFIG SET memory_cache.max_entry_bytes 1000").await,
        "+OK\r\n"
    );
    assert_eq!(config_get(&mut client, "memory_cache.max_entry_bytes").await, "1000");
    let gets = common::redis_calls(&mut direct, "get").await;
    for _ in 0..3 {
        assert_reads(&mut client, "doc:big", &big).await;
    }
    assert_eq!(
        common::redis_calls(&mut direct, "get").await,
        gets + 3,
        "dropped at once, and not cached again"
    );
    assert!(
        namespace_field(&mut client, "doc", "too_large")
            .await
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    common::read_until_cached(&proxy, &mut client, "doc:small").await;
}

/// With L1 off there is nothing for memory_cache.* to change: refused,
/// saying so; and a setting that cannot change at run time is refused
/// with the list of those that can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cache_settings_are_refused_when_l1_is_off() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| config.memory_cache.enabled = false).await;
    let mut client = proxy.raw().await;
    for setting in ["memory_cache.default_ttl 10", "memory_cache.max_bytes 2097152"] {
        let refused = client.cmd(&format!("PROXY CONFIG SET {setting}")).await;
        let name = setting.split(' ').next().unwrap();
        assert_eq!(
            refused,
            format!(
                "-ERR L1 (memory_cache.enabled) is off (it is turned on at start-up): {name} has nothing to change\r\n"
            )
        );
    }
    assert_eq!(config_get(&mut client, "memory_cache.default_ttl").await, "60");
    let fixed = client.cmd("PROXY CONFIG SET memory_cache.max_namespaces 10").await;
    assert!(
        fixed.starts_with("-ERR memory_cache.max_namespaces cannot change while the proxy runs")
            && fixed.contains("memory_cache.max_bytes")
            && fixed.contains("compression.threshold"),
        "{fixed}"
    );
}
