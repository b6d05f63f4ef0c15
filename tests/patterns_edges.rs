//! The pattern engine's edges (regressions from a review of issue #7):
//! events in every read path (pipelines mixing errors and transactions,
//! a client's own connection, versioned names, compressed values, a partly
//! cached HMGET), every read accounted for (recorded, dropped or sampled
//! out), PROXY PATTERNS options in both protocols, snapshots (unwritable
//! paths, bad files, other settings on restore, the reads just before a
//! shutdown), and settings at their extremes.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use auracache::clock::ManualClock;
use auracache::config::Config;
use auracache::patterns::engine::{Engine, Event, Outcome, Settings};
use bytes::Bytes;
use common::values::{fields, info_field, int, ints, quiet, text};
use common::{Proxy, RawClient, RedisServer};
use redis::Value;

/// Day 20,000 since the epoch, midnight UTC.
const START_MS: u64 = 20_000 * 86_400_000;
const HOUR_MS: u64 = 3_600_000;
const DAY_MS: u64 = 24 * HOUR_MS;

type Entries = BTreeMap<String, BTreeMap<String, Value>>;

/// `PROXY PATTERNS COUNT 10000 <args>` through a raw client, parsed with
/// the redis crate's own parser: entries by key.
async fn top(client: &mut RawClient, args: &str) -> Entries {
    let reply = client
        .command(
            &format!("PROXY PATTERNS COUNT 10000 {args}")
                .split_whitespace()
                .map(str::as_bytes)
                .collect::<Vec<_>>(),
        )
        .await;
    let value = redis::parse_redis_value(&reply).unwrap_or_else(|error| {
        panic!(
            "PROXY PATTERNS is valid RESP ({error}): {:?}",
            String::from_utf8_lossy(&reply)
        )
    });
    let Value::Array(entries) = value else {
        panic!("an array of keys: {value:?}");
    };
    entries
        .into_iter()
        .map(fields)
        .map(|entry| (text(&entry["key"]), entry))
        .collect()
}

fn accesses(entries: &Entries) -> i64 {
    entries.values().map(|entry| int(&entry["accesses"])).sum()
}

/// Polls `PROXY PATTERNS` until `total` accesses are recorded (fails if
/// more are).
async fn recorded(client: &mut RawClient, total: i64) -> Entries {
    let deadline = std::time::Instant::now() + common::DEADLINE;
    loop {
        let entries = top(client, "").await;
        let seen = accesses(&entries);
        if seen == total {
            return entries;
        }
        assert!(
            seen < total && std::time::Instant::now() < deadline,
            "{seen} accesses recorded, expected {total}: {entries:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// (accesses, l1_hits, l2_hits, misses) of `key`.
fn outcomes(entries: &Entries, key: &str) -> (i64, i64, i64, i64) {
    let entry = entries
        .get(key)
        .unwrap_or_else(|| panic!("{key} is tracked: {:?}", entries.keys().collect::<Vec<_>>()));
    (
        int(&entry["accesses"]),
        int(&entry["l1_hits"]),
        int(&entry["l2_hits"]),
        int(&entry["misses"]),
    )
}

async fn info_number(client: &mut RawClient, name: &str) -> u64 {
    let info = client.cmd("INFO cache").await;
    info_field(&info, name).parse().unwrap()
}

/// Reads `GET key` (or HGET) until L1 answers it.
async fn until_l1_hit(proxy: &Proxy, client: &mut RawClient, line: &str) -> i64 {
    let mut reads = 0;
    loop {
        let before = common::l1_hits(proxy);
        client.cmd(line).await;
        reads += 1;
        if common::l1_hits(proxy) > before {
            return reads;
        }
        assert!(reads < 10_000, "{line} never became an L1 hit");
    }
}

// ---------------------------------------------------------------------
// Events: outcomes and counts
// ---------------------------------------------------------------------

/// HMGET h f1 f2 where L1 holds f1 and Redis has no f2: the client gets a
/// value, so the read of h is not a miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmget_partly_from_l1_with_the_rest_absent_is_not_a_miss() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    direct.cmd("HSET shop:1 name widget").await;
    let proxy = Proxy::start_with(&server.url(), common::values::eager).await;
    let l1 = proxy.handle().l1().expect("L1 on").clone();
    common::poll_until("L1 to be ready", || l1.ready());
    let mut client = proxy.raw().await;
    let reads = until_l1_hit(&proxy, &mut client, "HGET shop:1 name").await;
    assert_eq!(
        client.cmd("HMGET shop:1 name colour").await,
        "*2\r\n$6\r\nwidget\r\n$-1\r\n"
    );
    let entries = recorded(&mut client, reads + 1).await;
    let (total, l1_hits, l2_hits, misses) = outcomes(&entries, "shop:1");
    assert_eq!(total, reads + 1);
    assert_eq!(
        misses, 0,
        "every read of shop:1 answered a value (l1 {l1_hits}, l2 {l2_hits}, misses {misses})"
    );
}

/// A pipeline mixing writes, reads, errors and a transaction: replies
/// byte-identical to Redis's, and exactly one event per key read outside
/// the transaction, with its outcome; errors are not accesses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_pipeline_is_transparent_and_counted_once_per_key() {
    for protocol in [2, 3] {
        let direct_server = RedisServer::start();
        let server = RedisServer::start();
        let proxy = Proxy::start_with(&server.url(), common::values::eager).await;
        let l1 = proxy.handle().l1().expect("L1 on").clone();
        common::poll_until("L1 to be ready", || l1.ready());
        let mut direct = RawClient::connect(direct_server.addr()).await;
        let mut proxied = proxy.raw().await;
        if protocol == 3 {
            direct.cmd("HELLO 3").await;
            proxied.cmd("HELLO 3").await;
        }
        let lines = [
            "SET k:a 1",
            "HSET k:h f v g w",
            "GET k:a",
            "GET k:h",
            "HGET k:a f",
            "MGET k:a k:b k:h",
            "HMGET k:h f nope",
            "HGETALL k:h",
            "HGETALL k:none",
            "MULTI",
            "GET k:a",
            "EXEC",
            "SET k:b 2",
            "GET k:b",
            "HMGET k:none x y",
            "GET k:a",
        ];
        let pipeline: Vec<u8> = lines
            .iter()
            .flat_map(|line| common::encode(&line.split_whitespace().map(str::as_bytes).collect::<Vec<_>>()))
            .collect();
        direct.send(&pipeline).await;
        proxied.send(&pipeline).await;
        for line in lines {
            let from_redis = direct.read_reply().await;
            let from_proxy = proxied.read_reply().await;
            assert_eq!(
                String::from_utf8_lossy(&from_proxy),
                String::from_utf8_lossy(&from_redis),
                "RESP{protocol} {line}"
            );
        }
        // k:a: GET, MGET, GET = 3 (HGET's WRONGTYPE and the queued GET are
        // not); k:b: MGET (nil), GET = 2; k:h: MGET (nil, a hash), HMGET,
        // HGETALL = 3 (GET's WRONGTYPE is not); k:none: 2.
        let entries = recorded(&mut proxied, 10).await;
        assert_eq!(outcomes(&entries, "k:a"), (3, 0, 3, 0), "RESP{protocol}");
        assert_eq!(outcomes(&entries, "k:b"), (2, 0, 1, 1), "RESP{protocol}");
        assert_eq!(outcomes(&entries, "k:h"), (3, 0, 2, 1), "RESP{protocol}");
        assert_eq!(outcomes(&entries, "k:none"), (2, 0, 0, 2), "RESP{protocol}");
        assert_eq!(
            entries.len(),
            4,
            "RESP{protocol}: {:?}",
            entries.keys().collect::<Vec<_>>()
        );
    }
}

/// A client with its own upstream connection (after CLIENT SETNAME) reads
/// there; each read is one event.
#[tokio::test]
async fn reads_on_a_clients_own_connection_are_events() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), quiet).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("CLIENT SETNAME me").await, "+OK\r\n");
    client.cmd("SET own:1 x").await;
    client.cmd("GET own:1").await;
    client.cmd("MGET own:1 own:2").await;
    client.cmd("HGETALL own:3").await;
    let entries = recorded(&mut client, 4).await;
    assert_eq!(outcomes(&entries, "own:1"), (2, 0, 2, 0));
    assert_eq!(outcomes(&entries, "own:2"), (1, 0, 0, 1));
    assert_eq!(outcomes(&entries, "own:3"), (1, 0, 0, 1));
}

// ---------------------------------------------------------------------
// Versioning and compression
// ---------------------------------------------------------------------

fn versioned(config: &mut Config, migrate: bool) {
    quiet(config);
    let app = config.namespaces.entry("app".into()).or_default();
    app.version = Some(2);
    app.fallback_versions = vec![1];
    if !migrate {
        app.migrate_on_read = Some(false);
    }
}

/// Reads of a versioned namespace are the client's key names, whether the
/// value is migrated from the old version or served from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_reads_are_recorded_under_the_clients_names() {
    for (migrate, l1) in [(true, false), (false, false), (true, true), (false, true)] {
        let server = RedisServer::start();
        let mut direct = RawClient::connect(server.addr()).await;
        direct.cmd("SET v1:app:old value").await;
        direct.cmd("SET v2:app:new value").await;
        direct.cmd("HSET v1:app:hash f v").await;
        let proxy = Proxy::start_with(&server.url(), |config| {
            versioned(config, migrate);
            if l1 {
                common::l1_eager(config);
            }
        })
        .await;
        let versions = proxy.handle().versions().expect("versioning on").clone();
        common::poll_until("the key table from Redis", || versions.table_learned());
        if let Some(l1) = proxy.handle().l1() {
            let l1 = l1.clone();
            common::poll_until("L1 to be ready", || l1.ready());
        }
        let mut client = proxy.raw().await;
        assert_eq!(client.cmd("GET app:old").await, "$5\r\nvalue\r\n");
        assert_eq!(client.cmd("GET app:new").await, "$5\r\nvalue\r\n");
        assert_eq!(
            client.cmd("MGET app:old app:new app:none").await,
            "*3\r\n$5\r\nvalue\r\n$5\r\nvalue\r\n$-1\r\n"
        );
        assert_eq!(client.cmd("HGET app:hash f").await, "$1\r\nv\r\n");
        assert_eq!(client.cmd("HMGET app:hash f g").await, "*2\r\n$1\r\nv\r\n$-1\r\n");
        let entries = recorded(&mut client, 7).await;
        let names: Vec<&String> = entries.keys().collect();
        assert_eq!(
            names,
            vec!["app:hash", "app:new", "app:none", "app:old"],
            "migrate_on_read {migrate}, L1 {l1}"
        );
        assert_eq!(
            outcomes(&entries, "app:old"),
            (2, 0, 2, 0),
            "migrate_on_read {migrate}, L1 {l1}"
        );
        assert_eq!(
            outcomes(&entries, "app:none"),
            (1, 0, 0, 1),
            "migrate_on_read {migrate}, L1 {l1}"
        );
        assert_eq!(
            outcomes(&entries, "app:hash"),
            (2, 0, 2, 0),
            "migrate_on_read {migrate}, L1 {l1}"
        );
        assert_eq!(text(&entries["app:old"]["namespace"]), "app");
    }
}

/// With compression on, the size of a read is what the client got (the
/// decoded reply), not the stored envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_values_count_at_their_decoded_size() {
    for l1 in [false, true] {
        let server = RedisServer::start();
        let proxy = Proxy::start_with(&server.url(), |config| {
            quiet(config);
            if l1 {
                common::l1_eager(config);
            }
            config.compression.enabled = true;
            config.compression.threshold = 64;
        })
        .await;
        if let Some(l1) = proxy.handle().l1() {
            let l1 = l1.clone();
            common::poll_until("L1 to be ready", || l1.ready());
        }
        let mut client = proxy.raw().await;
        let value = "a".repeat(5_000);
        assert_eq!(client.cmd(&format!("SET big:1 {value}")).await, "+OK\r\n");
        let mut direct = RawClient::connect(server.addr()).await;
        let stored = direct.cmd("STRLEN big:1").await;
        assert_ne!(stored, ":5000\r\n", "stored compressed");
        let expected = format!("$5000\r\n{value}\r\n");
        let mut reads = 0;
        for _ in 0..3 {
            assert_eq!(client.cmd("GET big:1").await, expected);
            reads += 1;
        }
        let entries = recorded(&mut client, reads).await;
        assert_eq!(
            int(&entries["big:1"]["mean_size"]),
            expected.len() as i64,
            "L1 {l1}: {:?}",
            entries["big:1"]
        );
    }
}

// ---------------------------------------------------------------------
// Snapshots
// ---------------------------------------------------------------------

fn with_state(path: &std::path::Path, max_keys: usize) -> impl FnOnce(&mut Config) + '_ {
    move |config: &mut Config| {
        quiet(config);
        config.patterns.max_keys = max_keys;
        config.patterns.state_path = path.to_str().unwrap().to_string();
    }
}

/// A snapshot restored with a smaller `patterns.max_keys` keeps the most
/// read keys (the heavy hitters the bound is for), not whichever keys
/// came first.
#[tokio::test]
async fn a_smaller_max_keys_on_restore_keeps_the_most_read_keys() {
    let server = RedisServer::start();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("patterns.snap");
    let proxy = Proxy::start_with(&server.url(), with_state(&path, 100)).await;
    let mut client = proxy.raw().await;
    for i in 0..50 {
        client.cmd(&format!("GET cold:{i}")).await;
    }
    for _ in 0..30 {
        client.cmd("GET hot:a").await;
    }
    recorded(&mut client, 80).await;
    drop(client);
    proxy.shutdown().await;

    let proxy = Proxy::start_with(&server.url(), with_state(&path, 10)).await;
    let mut client = proxy.raw().await;
    assert_eq!(info_number(&mut client, "pattern_restored_keys").await, 10);
    let entries = top(&mut client, "").await;
    assert!(
        entries.contains_key("hot:a"),
        "the most read key survives the smaller bound: {:?}",
        entries.keys().collect::<Vec<_>>()
    );
}

/// Shutdown right after the last reads: they are in the saved model.
#[tokio::test]
async fn shutdown_saves_the_reads_just_before_it() {
    let server = RedisServer::start();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("patterns.snap");
    let proxy = Proxy::start_with(&server.url(), with_state(&path, 100)).await;
    let mut client = proxy.raw().await;
    for _ in 0..5 {
        client.cmd("GET last:1").await;
    }
    drop(client);
    tokio::time::timeout(common::DEADLINE, proxy.shutdown())
        .await
        .expect("shutdown ends");
    let proxy = Proxy::start_with(&server.url(), with_state(&path, 100)).await;
    let mut client = proxy.raw().await;
    let entries = top(&mut client, "").await;
    assert_eq!(outcomes(&entries, "last:1"), (5, 0, 0, 5));
}

/// A state path whose directory does not exist: the proxy serves, SAVE
/// says why it could not, the error is counted, shutdown does not hang.
#[tokio::test]
async fn an_unwritable_state_path_is_reported_not_fatal() {
    let server = RedisServer::start();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("missing").join("patterns.snap");
    let proxy = Proxy::start_with(&server.url(), with_state(&path, 100)).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("GET a:1").await, "$-1\r\n");
    let reply = client.cmd("PROXY PATTERNS SAVE").await;
    assert!(reply.starts_with("-ERR pattern snapshot not written"), "{reply}");
    assert!(info_number(&mut client, "pattern_snapshot_errors").await >= 1);
    assert_eq!(info_number(&mut client, "pattern_snapshots_written").await, 0);
    drop(client);
    tokio::time::timeout(common::DEADLINE, proxy.shutdown())
        .await
        .expect("shutdown ends");
}

/// Empty, foreign, truncated, damaged and newer-version files: each
/// ignored at start-up (the proxy serves and learns afresh).
#[tokio::test]
async fn bad_snapshots_of_every_kind_are_ignored() {
    let server = RedisServer::start();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("patterns.snap");
    let proxy = Proxy::start_with(&server.url(), with_state(&path, 100)).await;
    let mut client = proxy.raw().await;
    for _ in 0..3 {
        client.cmd("GET good:1").await;
    }
    recorded(&mut client, 3).await;
    assert_eq!(client.cmd("PROXY PATTERNS SAVE").await, "+OK\r\n");
    drop(client);
    proxy.shutdown().await;
    let good = std::fs::read(&path).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x55;
    let mut bad_version = good.clone();
    bad_version[8] = 0xee;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("magic only", good[..8].to_vec()),
        ("truncated header", good[..20].to_vec()),
        ("truncated", good[..good.len() - 1].to_vec()),
        ("flipped", flipped),
        ("version", bad_version),
        ("json", b"{\"keys\": []}".to_vec()),
    ];
    for (name, bytes) in cases {
        std::fs::write(&path, &bytes).unwrap();
        let proxy = Proxy::start_with(&server.url(), with_state(&path, 100)).await;
        let mut client = proxy.raw().await;
        assert_eq!(client.cmd("GET good:1").await, "$-1\r\n", "{name}");
        assert_eq!(info_number(&mut client, "pattern_restored_keys").await, 0, "{name}");
        recorded(&mut client, 1).await;
        drop(client);
        proxy.shutdown().await;
    }
}

// ---------------------------------------------------------------------
// The model across a restore (library level)
// ---------------------------------------------------------------------

fn read(engine: &mut Engine, key: &str, at_ms: u64) {
    engine.record(&Event {
        db: 0,
        key: Bytes::copy_from_slice(key.as_bytes()),
        at_ms,
        outcome: Outcome::L2Hit,
        latency_us: 100,
        size: 10,
    });
}

/// A daily key (09:00 and 09:30 every day) read for two weeks: a model
/// saved and restored after a week, then fed the second week, says the
/// same of the key as the model that never stopped.
#[test]
fn a_restored_model_learns_on_as_if_it_had_never_stopped() {
    let settings = Settings::default();
    let mut original = Engine::new(settings);
    let days = 14u64;
    let reads = |day: u64| {
        [
            START_MS + day * DAY_MS + 9 * HOUR_MS,
            START_MS + day * DAY_MS + 9 * HOUR_MS + 1_800_000,
        ]
    };
    for day in 0..8 {
        for at in reads(day) {
            read(&mut original, "report:daily", at);
        }
    }
    let mut restored = Engine::restore(settings, &original.snapshot()).expect("restores");
    for day in 8..days {
        for at in reads(day) {
            read(&mut original, "report:daily", at);
            read(&mut restored, "report:daily", at);
        }
    }
    let now = START_MS + days * DAY_MS;
    let before = original.insight(0, b"report:daily", now).unwrap();
    let after = restored.insight(0, b"report:daily", now).unwrap();
    assert_eq!(before.hourly[9], 14, "the original keeps 7 days of 2 reads at 09:00");
    assert_eq!(after.hourly, before.hourly, "hour-of-day counts after the restore");
    assert_eq!(after.verdict, before.verdict);
    assert_eq!(after.accesses, before.accesses);
}

/// A snapshot restored with fewer history days keeps the newest days of
/// the global hourly load, as it does of each key's.
#[test]
fn fewer_history_days_on_restore_keep_the_newest_days_of_the_load() {
    let mut engine = Engine::new(Settings::default());
    for day in 0..7 {
        for hour in [9, 18] {
            read(&mut engine, "k:1", START_MS + day * DAY_MS + hour * HOUR_MS);
        }
    }
    let shorter = Settings {
        history_days: 3,
        ..Settings::default()
    };
    let restored = Engine::restore(shorter, &engine.snapshot()).expect("restores");
    let now = START_MS + 7 * DAY_MS;
    let key = restored.insight(0, b"k:1", now).unwrap();
    assert_eq!((key.hourly[9], key.hourly[18]), (3, 3), "the key's last 3 days");
    let load = restored.hourly_load();
    assert_eq!(
        (load[9], load[18]),
        (3, 3),
        "the global load's last 3 days (peaks {:?})",
        restored.peaks()
    );
}

// ---------------------------------------------------------------------
// Counters, sampling, clock, PROXY PATTERNS options
// ---------------------------------------------------------------------

/// Every read is either recorded, dropped or sampled out: with L1 on (the
/// fast path, read-through, MGET partly cached), a small reads-per-second
/// budget and a small queue, the three counters add up to the reads sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_is_recorded_dropped_or_sampled_out() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    for i in 0..200 {
        direct.cmd(&format!("SET s:{i} v{i}")).await;
    }
    direct.cmd("HSET h:1 a 1 b 2").await;
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::l1_eager(config);
        config.patterns.min_access_count = 1;
        config.patterns.max_events_per_sec = 200;
        config.patterns.queue_events = 500;
    })
    .await;
    let l1 = proxy.handle().l1().expect("L1 on").clone();
    common::poll_until("L1 to be ready", || l1.ready());
    let mut client = proxy.raw().await;
    let mut reads = 0u64;
    let started = std::time::Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_millis(2_500) {
        let mut pipeline = Vec::new();
        let mut replies = 0;
        for i in 0..50 {
            let key = format!("s:{}", (round * 7 + i) % 200);
            pipeline.extend(common::encode(&[b"GET", key.as_bytes()]));
            reads += 1;
            replies += 1;
        }
        let (a, b) = (format!("s:{}", round % 200), format!("s:{}", (round + 1) % 200));
        pipeline.extend(common::encode(&[b"MGET", a.as_bytes(), b.as_bytes(), b"s:none"]));
        reads += 3;
        pipeline.extend(common::encode(&[b"HMGET", b"h:1", b"a", b"b"]));
        pipeline.extend(common::encode(&[b"HGET", b"h:1", b"a"]));
        pipeline.extend(common::encode(&[b"HGETALL", b"h:1"]));
        reads += 3;
        replies += 4;
        client.send(&pipeline).await;
        for _ in 0..replies {
            client.read_reply().await;
        }
        round += 1;
    }
    let mut info_client = proxy.raw().await;
    let deadline = std::time::Instant::now() + common::DEADLINE;
    loop {
        let events = info_number(&mut info_client, "pattern_events").await;
        let dropped = info_number(&mut info_client, "pattern_events_dropped").await;
        let sampled = info_number(&mut info_client, "pattern_events_sampled_out").await;
        if events + dropped + sampled == reads {
            assert!(sampled > 0, "over the budget, keys are sampled out");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "events {events} + dropped {dropped} + sampled out {sampled} != {reads} reads"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let info = info_client.cmd("INFO cache").await;
    let share: f64 = info_field(&info, "pattern_sampled_share").parse().unwrap();
    assert!(share < 1.0, "{info}");
}

/// Event times are the clock's wall time (a manual clock moves them).
#[tokio::test]
async fn event_times_follow_the_manual_clock() {
    let server = RedisServer::start();
    let clock = ManualClock::starting_at(START_MS + 5 * HOUR_MS);
    let proxy = Proxy::start_with_clock(&server.url(), Arc::new(clock.clone()), quiet).await;
    let mut client = proxy.raw().await;
    client.cmd("GET t:1").await;
    clock.advance(Duration::from_millis(2 * HOUR_MS));
    client.cmd("MGET t:1 t:2").await;
    let entries = recorded(&mut client, 3).await;
    let t1 = &entries["t:1"];
    assert_eq!(int(&t1["last_access_ms"]) as u64, START_MS + 7 * HOUR_MS);
    let hourly = ints(&t1["hourly"]);
    assert_eq!((hourly[5], hourly[7]), (1, 1), "{hourly:?}");
}

/// COUNT bounds, MINPRIORITY bounds, unknown options, NAMESPACE of keys
/// without a separator, PEAKS: every reply valid RESP in both protocols.
#[tokio::test]
async fn proxy_patterns_options_and_encodings() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), quiet).await;
    for protocol in [2, 3] {
        let mut client = proxy.raw().await;
        if protocol == 3 {
            client.cmd("HELLO 3").await;
        }
        client.cmd("GET plain").await;
        client.cmd("GET ns:1").await;
        let entries = recorded(&mut client, 2 * (protocol as i64 - 1)).await;
        assert_eq!(text(&entries["plain"]["namespace"]), "(none)");
        let none = top(&mut client, "NAMESPACE (none)").await;
        assert_eq!(none.keys().collect::<Vec<_>>(), vec!["plain"], "RESP{protocol}");
        let ns = top(&mut client, "NAMESPACE ns").await;
        assert_eq!(ns.keys().collect::<Vec<_>>(), vec!["ns:1"], "RESP{protocol}");
        for (line, good) in [
            ("PROXY PATTERNS COUNT 1", true),
            ("PROXY PATTERNS COUNT 10000", true),
            ("PROXY PATTERNS COUNT 10001", false),
            ("PROXY PATTERNS COUNT -1", false),
            ("PROXY PATTERNS MINPRIORITY 0", false),
            ("PROXY PATTERNS MINPRIORITY 10", true),
            ("PROXY PATTERNS MINPRIORITY 11", false),
            ("PROXY PATTERNS count 2 minpriority 1 namespace ns", true),
            ("PROXY PATTERNS COUNT", false),
            ("PROXY PATTERNS FOO bar", false),
            ("PROXY PATTERNS SAVE now", false),
            ("PROXY PATTERNS peaks", true),
        ] {
            let reply = client.cmd(line).await;
            assert_eq!(!reply.starts_with('-'), good, "RESP{protocol} {line}: {reply}");
            redis::parse_redis_value(reply.as_bytes())
                .unwrap_or_else(|error| panic!("RESP{protocol} {line}: {error}: {reply}"));
        }
        assert_eq!(top(&mut client, "COUNT 1").await.len(), 1);
        let peaks = client.command(&[b"PROXY", b"PATTERNS", b"PEAKS"]).await;
        let peaks = fields(redis::parse_redis_value(&peaks).unwrap());
        assert_eq!(int(&peaks["events"]), 2 * (protocol as i64 - 1));
        assert_eq!(ints(&peaks["hourly_load"]).len(), 24);
    }
}

// ---------------------------------------------------------------------
// The request path never waits for the engine
// ---------------------------------------------------------------------

// ---------------------------------------------------------------------
// Settings a configuration file may give
// ---------------------------------------------------------------------

/// Runs `test` on its own runtime, shut down without waiting for its
/// blocking tasks (a stuck one would otherwise hang the test binary).
fn on_own_runtime<F: std::future::Future<Output = ()>>(test: F) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(test)));
    runtime.shutdown_background();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// A very large queue bound (the setting accepts any whole number >= 1):
/// reads are still answered and recorded.
#[test]
fn a_huge_queue_bound_still_serves_and_records() {
    on_own_runtime(async {
        let server = RedisServer::start();
        let proxy = Proxy::start_with(&server.url(), |config| {
            quiet(config);
            config.patterns.queue_events = usize::MAX / 16;
        })
        .await;
        let mut client = proxy.raw().await;
        let reply = tokio::time::timeout(Duration::from_secs(5), client.try_cmd("GET q:1")).await;
        assert_eq!(reply, Ok(Some("$-1\r\n".to_string())), "GET answered");
        recorded(&mut client, 1).await;
        std::mem::forget(proxy);
    });
}

/// A very long snapshot interval (the setting accepts any whole number of
/// seconds >= 1, e.g. u64::MAX for "only on shutdown"): the engine still
/// runs, and PROXY PATTERNS SAVE answers rather than hanging.
#[test]
fn a_huge_snapshot_interval_keeps_the_engine_running() {
    on_own_runtime(async {
        let server = RedisServer::start();
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("patterns.snap");
        let proxy = Proxy::start_with(&server.url(), |config| {
            with_state(&path, 100)(config);
            config.patterns.snapshot_interval_secs = u64::MAX;
        })
        .await;
        let mut client = proxy.raw().await;
        client.cmd("GET i:1").await;
        let saved = tokio::time::timeout(Duration::from_secs(5), client.try_cmd("PROXY PATTERNS SAVE")).await;
        assert_eq!(saved, Ok(Some("+OK\r\n".to_string())), "SAVE answered");
        recorded(&mut client, 1).await;
        std::mem::forget(proxy);
    });
}

/// Several clients reading the same few keys at once through L1 (fills
/// shared, the fast path, MGETs partly cached): one event per key read,
/// no more, no fewer; and the tracked keys stay within max_keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_are_counted_exactly_and_within_max_keys() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    for i in 0..3 {
        direct.cmd(&format!("SET c:{i} value{i}")).await;
    }
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::l1_eager(config);
        config.patterns.min_access_count = 1;
        config.patterns.max_keys = 8;
    })
    .await;
    let l1 = proxy.handle().l1().expect("L1 on").clone();
    common::poll_until("L1 to be ready", || l1.ready());
    let mut tasks = Vec::new();
    for client in 0..4u64 {
        let addr = proxy.addr();
        tasks.push(tokio::spawn(async move {
            let mut raw = RawClient::connect(addr).await;
            let mut reads = 0u64;
            for round in 0..100u64 {
                let key = format!("c:{}", (round + client) % 3);
                let mut pipeline = common::encode(&[b"GET", key.as_bytes()]);
                pipeline.extend(common::encode(&[b"GET", key.as_bytes()]));
                pipeline.extend(common::encode(&[b"MGET", b"c:0", b"c:1", b"c:2"]));
                raw.send(&pipeline).await;
                for _ in 0..3 {
                    raw.read_reply().await;
                }
                reads += 5;
            }
            reads
        }));
    }
    let mut reads = 0;
    for task in tasks {
        reads += task.await.unwrap();
    }
    // Then 20 keys read once each: at most 8 are tracked.
    let mut client = proxy.raw().await;
    for i in 0..20 {
        client.cmd(&format!("GET other:{i}")).await;
    }
    reads += 20;
    let mut info = proxy.raw().await;
    let deadline = std::time::Instant::now() + common::DEADLINE;
    while info_number(&mut info, "pattern_events").await + info_number(&mut info, "pattern_events_dropped").await
        < reads
    {
        assert!(std::time::Instant::now() < deadline, "every read reaches the engine");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(info_number(&mut info, "pattern_events").await, reads);
    assert_eq!(info_number(&mut info, "pattern_events_dropped").await, 0);
    while info_number(&mut info, "pattern_keys_tracked").await != 8 {
        assert!(std::time::Instant::now() < deadline, "the tracked keys gauge");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(top(&mut client, "").await.len(), 8);
}
