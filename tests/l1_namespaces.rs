//! L1 per namespace (the key's part before `:`): own TTL, own entry bound,
//! own counters in INFO cache; `ttl-only` namespaces cached where Redis
//! refuses CLIENT TRACKING; tracking limited to namespace prefixes; and the
//! default admission (a key is filled on its second miss). L1 time is a
//! ManualClock, so TTLs pass without sleeping.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use auracache::clock::ManualClock;
use auracache::config::{Config, Consistency, NamespaceConfig};
use common::{Proxy, RawClient, RedisServer};

async fn start(server: &RedisServer, clock: &ManualClock, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let proxy = Proxy::start_with_clock(&server.url(), Arc::new(clock.clone()), |config| {
        config.memory_cache.enabled = true;
        tweak(config);
    })
    .await;
    let l1 = proxy.handle().l1().expect("L1 enabled").clone();
    common::poll_until("L1 to be ready", || l1.ready());
    proxy
}

/// The `l1_namespace_<name>` line of INFO cache.
async fn namespace_line(client: &mut RawClient, name: &str) -> String {
    let info = client.cmd("INFO cache").await;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("l1_namespace_{name}:")))
        .unwrap_or_else(|| panic!("no line for namespace {name} in {info}"))
        .to_string()
}

fn field(line: &str, name: &str) -> String {
    line.split(',')
        .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name} in {line}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_is_filled_on_its_second_miss_and_hit_from_the_third_read() {
    let server = RedisServer::start();
    let clock = ManualClock::default();
    let proxy = start(&server, &clock, |_| {}).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("SET user:1 alice").await, "+OK\r\n");
    for _ in 0..4 {
        assert_eq!(client.cmd("GET user:1").await, "$5\r\nalice\r\n");
    }
    assert_eq!(
        common::redis_calls(&mut direct, "get").await,
        2,
        "a plain miss, then the fill"
    );
    assert_eq!(
        common::redis_calls(&mut direct, "pttl").await,
        1,
        "only the fill asks for the TTL"
    );
    let line = namespace_line(&mut client, "user").await;
    assert_eq!(
        (field(&line, "hits"), field(&line, "misses"), field(&line, "entries")),
        ("2".into(), "2".into(), "1".into()),
        "{line}"
    );
    // Keys read once (a scan over many keys) cost Redis nothing extra.
    for i in 0..50 {
        client.cmd(&format!("GET once:{i}")).await;
    }
    assert_eq!(common::redis_calls(&mut direct, "pttl").await, 1);
    assert_eq!(field(&namespace_line(&mut client, "once").await, "entries"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_have_their_own_ttl_and_entry_bound() {
    let server = RedisServer::start();
    let clock = ManualClock::default();
    let proxy = start(&server, &clock, |config| {
        config.memory_cache.fill_on_first_miss = true;
        config.memory_cache.default_ttl = 60;
        config.namespaces.insert(
            "short".into(),
            NamespaceConfig {
                memory_cache_ttl: Some(2),
                ..NamespaceConfig::default()
            },
        );
        config.namespaces.insert(
            "small".into(),
            NamespaceConfig {
                memory_cache_size: Some(3),
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let l1 = proxy.handle().l1().unwrap().clone();
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    for key in ["short:a", "long:a"] {
        assert_eq!(client.cmd(&format!("SET {key} v")).await, "+OK\r\n");
    }
    common::settle(&proxy, &mut client, &mut direct).await;
    for key in ["short:a", "long:a"] {
        client.cmd(&format!("GET {key}")).await;
    }
    clock.advance(Duration::from_millis(1999));
    let gets = common::redis_calls(&mut direct, "get").await;
    client.cmd("GET short:a").await;
    client.cmd("GET long:a").await;
    assert_eq!(common::redis_calls(&mut direct, "get").await, gets, "both still cached");
    clock.advance(Duration::from_millis(1));
    client.cmd("GET short:a").await;
    client.cmd("GET long:a").await;
    assert_eq!(
        common::redis_calls(&mut direct, "get").await,
        gets + 1,
        "short:a expired after its 2 s"
    );
    assert_eq!(field(&namespace_line(&mut client, "short").await, "ttl"), "2");

    // Once the namespace is full, a newcomer gets in when it has been read
    // more often than the oldest entry (here: its second read).
    // (small:0-2 are read once each; small:3 and small:4 twice.)
    // Written first, and Redis's invalidations of the writes applied, so
    // none arrives late and drops a fill the counts rely on.
    for i in 0..5 {
        assert_eq!(client.cmd(&format!("SET small:{i} v{i}")).await, "+OK\r\n");
    }
    common::settle(&proxy, &mut client, &mut direct).await;
    for i in 0..5 {
        for _ in 0..(if i < 3 { 1 } else { 2 }) {
            assert_eq!(client.cmd(&format!("GET small:{i}")).await, format!("$2\r\nv{i}\r\n"));
        }
    }
    let small = l1.store.namespaces().of(b"small:");
    assert_eq!(small.entries.load(Ordering::Relaxed), 3);
    let line = namespace_line(&mut client, "small").await;
    assert_eq!(
        (field(&line, "entries"), field(&line, "max_entries")),
        ("3".into(), "3".into())
    );
    assert_eq!(field(&line, "evictions"), "2", "{line}");
    // The newest keys stay; evicted ones are read from Redis, correctly.
    let gets = common::redis_calls(&mut direct, "get").await;
    assert_eq!(client.cmd("GET small:4").await, "$2\r\nv4\r\n");
    assert_eq!(common::redis_calls(&mut direct, "get").await, gets);
    assert_eq!(client.cmd("GET small:0").await, "$2\r\nv0\r\n");
    assert_eq!(common::redis_calls(&mut direct, "get").await, gets + 1);
}

/// Redis refusing CLIENT TRACKING (an ACL here): strict namespaces are not
/// cached, ttl-only ones are, and a direct write is seen at most their TTL
/// late; a write through the proxy is seen at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_only_namespaces_are_cached_where_tracking_is_refused() {
    let server = RedisServer::start_with(&[
        "--user",
        "default",
        "on",
        "nopass",
        "~*",
        "&*",
        "+@all",
        "-client|tracking",
    ]);
    let clock = ManualClock::default();
    let proxy = Proxy::start_with_clock(&server.url(), Arc::new(clock.clone()), |config| {
        config.memory_cache.enabled = true;
        config.memory_cache.fill_on_first_miss = true;
        config.namespaces.insert(
            "feed".into(),
            NamespaceConfig {
                memory_cache_ttl: Some(5),
                consistency: Some(Consistency::TtlOnly),
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let l1 = proxy.handle().l1().unwrap().clone();
    common::poll_until("L1 to be ready for ttl-only keys", || l1.ready());
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("SET feed:1 old").await, "+OK\r\n");
    assert_eq!(client.cmd("SET user:1 old").await, "+OK\r\n");
    for _ in 0..3 {
        client.cmd("GET feed:1").await;
        client.cmd("GET user:1").await;
    }
    let feed = namespace_line(&mut client, "feed").await;
    let user = namespace_line(&mut client, "user").await;
    assert_eq!(field(&feed, "hits"), "2", "{feed}");
    assert_eq!(field(&user, "hits"), "0", "strict keys need tracking: {user}");
    assert_eq!(field(&feed, "consistency"), "ttl-only");

    // A direct write: the cached value may be served until the TTL ends.
    assert_eq!(direct.cmd("SET feed:1 new").await, "+OK\r\n");
    assert_eq!(client.cmd("GET feed:1").await, "$3\r\nold\r\n");
    clock.advance(Duration::from_secs(5));
    assert_eq!(client.cmd("GET feed:1").await, "$3\r\nnew\r\n");
    // A write through the proxy is read back at once.
    assert_eq!(client.cmd("GET feed:1").await, "$3\r\nnew\r\n");
    assert_eq!(client.cmd("SET feed:1 newer").await, "+OK\r\n");
    assert_eq!(client.cmd("GET feed:1").await, "$5\r\nnewer\r\n");
}

/// Tracking limited to the configured namespaces' prefixes: only their
/// keys are cached (others would get no invalidations), and direct writes
/// to them are seen once Redis's message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_prefixes_limit_caching_to_the_tracked_namespaces() {
    let server = RedisServer::start();
    let clock = ManualClock::default();
    let proxy = start(&server, &clock, |config| {
        config.memory_cache.fill_on_first_miss = true;
        config.memory_cache.tracking_prefixes = true;
        config.namespaces.insert("users".into(), NamespaceConfig::default());
    })
    .await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let list = direct.cmd("CLIENT LIST").await;
    assert!(list.contains("name=auracache:tracking"), "{list}");
    for key in ["users:1", "other:1"] {
        assert_eq!(client.cmd(&format!("SET {key} a")).await, "+OK\r\n");
    }
    // Redis's invalidations of the writes applied first (a late one would
    // drop a fill the hit count relies on).
    common::settle_on(&proxy, &mut client, &mut direct, "users:sentinel").await;
    let hits_before: u64 = field(&namespace_line(&mut client, "users").await, "hits")
        .parse()
        .unwrap();
    for key in ["users:1", "other:1"] {
        for _ in 0..3 {
            assert_eq!(client.cmd(&format!("GET {key}")).await, "$1\r\na\r\n");
        }
    }
    let hits: u64 = field(&namespace_line(&mut client, "users").await, "hits")
        .parse()
        .unwrap();
    assert_eq!(hits - hits_before, 2, "users:1 filled once, then hit twice");
    assert_eq!(field(&namespace_line(&mut client, "other").await, "hits"), "0");
    assert_eq!(direct.cmd("SET users:1 b").await, "+OK\r\n");
    client.cmd_until("GET users:1", "$1\r\nb\r\n").await;
}
