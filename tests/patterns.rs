//! The pattern engine through the proxy: every cached-kind read becomes an
//! event with its outcome; `PROXY PATTERNS` (and PEAKS, SAVE) answer from
//! the model; a week replayed on a manual clock is classified; the model
//! survives a restart, and a bad snapshot is ignored; with the engine off,
//! nothing is recorded.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use auracache::clock::ManualClock;
use auracache::config::Config;
use common::values::{fields, info_field, int, ints, quiet, text};
use common::{Proxy, RawClient, RedisServer};
use redis::Value;

/// Day 20,000 since the epoch (2024-10-04), midnight UTC.
const START_MS: u64 = 20_000 * 86_400_000;

/// `PROXY PATTERNS <args>`: one field map per key, in the reply's order.
async fn top(client: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> Vec<BTreeMap<String, Value>> {
    let mut command = redis::cmd("PROXY");
    command.arg("PATTERNS");
    for arg in args {
        command.arg(*arg);
    }
    let reply: Value = command.query_async(client).await.expect("PROXY PATTERNS answers");
    let Value::Array(entries) = reply else {
        panic!("an array of keys: {reply:?}");
    };
    entries.into_iter().map(fields).collect()
}

fn by_key(entries: &[BTreeMap<String, Value>]) -> BTreeMap<String, BTreeMap<String, Value>> {
    entries
        .iter()
        .map(|entry| (text(&entry["key"]), entry.clone()))
        .collect()
}

/// [`recorded_entries`] by key name.
async fn recorded(
    client: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
    total: i64,
) -> BTreeMap<String, BTreeMap<String, Value>> {
    by_key(&recorded_entries(client, args, total).await)
}

/// Polls `PROXY PATTERNS <args>` until the engine has recorded `total`
/// accesses; its entries.
async fn recorded_entries(
    client: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
    total: i64,
) -> Vec<BTreeMap<String, Value>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let entries = top(client, args).await;
        let seen: i64 = entries.iter().map(|entry| int(&entry["accesses"])).sum();
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

#[tokio::test]
async fn every_cached_kind_of_read_is_an_event_with_its_outcome() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    direct.cmd("SET user:1 alice").await;
    direct.cmd("HSET user:2 f v").await;
    let proxy = Proxy::start_with(&server.url(), quiet).await;
    let mut client = proxy.raw().await;
    for _ in 0..3 {
        assert_eq!(client.cmd("GET user:1").await, "$5\r\nalice\r\n");
    }
    client.cmd("GET user:missing").await;
    client.cmd("GET user:missing").await;
    client.cmd("MGET user:1 user:missing").await;
    client.cmd("HGET user:2 f").await;
    client.cmd("HGETALL user:2").await;
    client.cmd("HMGET user:2 f g").await;
    client.cmd("HMGET user:none a b").await;
    client.cmd("HGETALL user:none").await;
    // Not reads the cache serves, or not reads at all: no events.
    client.cmd("SET user:1 bob").await;
    client.cmd("STRLEN user:1").await;
    client.cmd("MULTI").await;
    client.cmd("GET user:queued").await;
    client.cmd("EXEC").await;
    // An error reply is not an access.
    client.cmd("GET user:2").await;
    let mut redis_client = proxy.client().await;
    let keys = recorded(&mut redis_client, &["COUNT", "100"], 12).await;
    let outcomes = |key: &str| {
        let entry = &keys[key];
        (
            int(&entry["accesses"]),
            int(&entry["l1_hits"]),
            int(&entry["l2_hits"]),
            int(&entry["misses"]),
        )
    };
    assert_eq!(outcomes("user:1"), (4, 0, 4, 0));
    assert_eq!(outcomes("user:missing"), (3, 0, 0, 3));
    assert_eq!(outcomes("user:2"), (3, 0, 3, 0));
    assert_eq!(outcomes("user:none"), (2, 0, 0, 2));
    assert_eq!(keys.len(), 4, "{keys:?}");
    let alice = &keys["user:1"];
    assert_eq!(text(&alice["namespace"]), "user");
    assert!(int(&alice["mean_latency_us"]) > 0, "{alice:?}");
    // "$5\r\nalice\r\n" is 11 bytes.
    assert_eq!(int(&alice["mean_size"]), 11);
    assert_eq!(ints(&alice["hourly"]).len(), 24);
    assert_eq!(ints(&alice["hourly"]).iter().sum::<i64>(), 4);
    let info = client.cmd("INFO cache").await;
    assert_eq!(info_field(&info, "pattern_enabled"), "1");
    assert_eq!(info_field(&info, "pattern_events"), "12");
    assert_eq!(info_field(&info, "pattern_events_dropped"), "0");
    assert_eq!(info_field(&info, "pattern_max_keys"), "100000");
    common::poll_until_async("the tracked keys and bytes gauges", || async {
        let info = proxy.raw().await.cmd("INFO cache").await;
        info_field(&info, "pattern_keys_tracked") == "4" && info_field(&info, "pattern_bytes") != "0"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_hits_are_events_too() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    direct.cmd("SET page:home hello").await;
    direct.cmd("SET page:about world").await;
    let proxy = Proxy::start_with(&server.url(), common::values::eager).await;
    let l1 = proxy.handle().l1().expect("L1 on").clone();
    common::poll_until("L1 to be ready", || l1.ready());
    let mut client = proxy.raw().await;
    let hits = || l1.store.stats().hits.load(std::sync::atomic::Ordering::Relaxed);
    let mut reads = 0;
    while hits() == 0 {
        assert_eq!(client.cmd("GET page:home").await, "$5\r\nhello\r\n");
        reads += 1;
        assert!(reads < 10_000, "page:home is never cached");
    }
    // The fast path (a pipelined run of GETs), then MGET with one item
    // cached and one not.
    let pipelined: Vec<u8> = (0..5).flat_map(|_| common::encode(&[b"GET", b"page:home"])).collect();
    client.send(&pipelined).await;
    for _ in 0..5 {
        assert_eq!(client.read_reply().await, b"$5\r\nhello\r\n");
    }
    reads += 5;
    assert_eq!(
        client.cmd("MGET page:home page:about").await,
        "*2\r\n$5\r\nhello\r\n$5\r\nworld\r\n"
    );
    let mut redis_client = proxy.client().await;
    let keys = recorded(&mut redis_client, &[], reads + 2).await;
    let home = &keys["page:home"];
    assert_eq!(int(&home["accesses"]), reads + 1);
    assert_eq!(
        int(&home["l1_hits"]) as u64,
        hits(),
        "every L1 hit is heard once: {home:?}"
    );
    assert!(int(&home["l1_hits"]) >= 7, "{home:?}");
    assert_eq!(
        int(&home["l1_hits"]) + int(&home["l2_hits"]) + int(&home["misses"]),
        reads + 1
    );
    let about = &keys["page:about"];
    assert_eq!((int(&about["l2_hits"]), int(&about["l1_hits"])), (1, 0));
}

/// A week of reads on a manual clock, through the proxy: a key read every
/// 30 minutes, one at 09:00 every day, one steadily all day, and a crowd of
/// keys read at 18:00. The engine classifies each and finds 18:00 as the
/// peak.
#[tokio::test]
async fn a_week_replayed_on_the_clock_is_classified_and_its_peak_found() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    direct.cmd("MSET feed:latest a report:daily b stats:live c").await;
    let clock = ManualClock::starting_at(START_MS);
    let proxy = Proxy::start_with_clock(&server.url(), Arc::new(clock.clone()), |config| {
        config.memory_cache.enabled = false;
    })
    .await;
    let mut client = proxy.raw().await;
    let mut reads = 0;
    let mut now = 0u64;
    let mut read_at = |at: u64, key: String| {
        assert!(at >= now, "time moves forward");
        clock.advance(Duration::from_millis(at - now));
        now = at;
        reads += 1;
        key
    };
    let minute = 60_000u64;
    let mut schedule: Vec<(u64, String)> = Vec::new();
    let mut rng = auracache::patterns::trace::Rng::new(17);
    for day in 0..7u64 {
        let midnight = day * 24 * 60 * minute;
        for slot in 0..48u64 {
            schedule.push((midnight + slot * 30 * minute + 7 * minute, "feed:latest".into()));
        }
        for offset in [0, 3, 8] {
            schedule.push((midnight + 9 * 60 * minute + offset * minute, "report:daily".into()));
        }
        // Four reads in every hour, at random minutes.
        for hour in 0..24u64 {
            for _ in 0..4 {
                let at = midnight + hour * 60 * minute + rng.between(0, 60 * minute);
                schedule.push((at, "stats:live".into()));
            }
        }
        for i in 0..150u64 {
            schedule.push((midnight + 18 * 60 * minute + i * 20_000, format!("crowd:{}", i % 40)));
        }
    }
    schedule.sort();
    for (at, key) in schedule {
        let key = read_at(at, key);
        client.cmd(&format!("GET {key}")).await;
    }
    let mut redis_client = proxy.client().await;
    // min_access_count is 10: every key here has more.
    let keys = recorded(&mut redis_client, &["COUNT", "100"], reads).await;
    let class = |key: &str| text(&keys[key]["class"]);
    assert_eq!(class("feed:latest"), "periodic");
    assert_eq!(class("report:daily"), "daily");
    assert_eq!(class("stats:live"), "constant");
    let feed = &keys["feed:latest"];
    assert_eq!(int(&feed["period_ms"]), 30 * minute as i64);
    assert_eq!(
        int(&feed["next_access_ms"]),
        int(&feed["last_access_ms"]) + 30 * minute as i64
    );
    assert_eq!(ints(&keys["report:daily"]["peak_hours"]), vec![9]);
    let priority = |key: &str| int(&keys[key]["priority"]);
    assert!(priority("feed:latest") > priority("crowd:0"), "{keys:?}");
    // Filters: one namespace; the most predictable only; a count.
    let reports = top(&mut redis_client, &["NAMESPACE", "report"]).await;
    assert_eq!(reports.len(), 1);
    assert_eq!(text(&reports[0]["key"]), "report:daily");
    let threshold = priority("feed:latest");
    let high = top(
        &mut redis_client,
        &["MINPRIORITY", &threshold.to_string(), "COUNT", "100"],
    )
    .await;
    assert!(high.iter().all(|entry| int(&entry["priority"]) >= threshold));
    assert!(by_key(&high).contains_key("feed:latest"));
    assert!(!by_key(&high).contains_key("crowd:0"));
    assert_eq!(top(&mut redis_client, &["COUNT", "2"]).await.len(), 2);
    // Peaks: 18:00 only.
    let peaks: Value = redis::cmd("PROXY")
        .arg("PATTERNS")
        .arg("PEAKS")
        .query_async(&mut redis_client)
        .await
        .unwrap();
    let peaks = fields(peaks);
    assert_eq!(ints(&peaks["peak_hours"]), vec![18]);
    let load = ints(&peaks["hourly_load"]);
    assert_eq!(load.iter().sum::<i64>(), reads);
    assert_eq!(int(&peaks["events"]), reads);
    let info = client.cmd("INFO cache").await;
    assert_eq!(info_field(&info, "pattern_peak_hours"), "18");
    // Bad options are refused with the syntax.
    for bad in [
        "PROXY PATTERNS COUNT 0",
        "PROXY PATTERNS SORT x",
        "PROXY PATTERNS PEAKS NOW",
    ] {
        let reply = client.cmd(bad).await;
        assert!(reply.starts_with("-ERR"), "{bad}: {reply}");
    }
}

#[tokio::test]
async fn resp3_clients_get_maps() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), quiet).await;
    let mut client = proxy.raw().await;
    client.cmd("HELLO 3").await;
    client.cmd("GET some:key").await;
    let mut redis_client = proxy.client().await;
    recorded(&mut redis_client, &[], 1).await;
    let entries = client.cmd("PROXY PATTERNS").await;
    assert!(
        entries.starts_with("*1\r\n%18\r\n$3\r\nkey\r\n$8\r\nsome:key\r\n$2\r\ndb\r\n:0\r\n"),
        "{entries}"
    );
    assert!(entries.contains("$14\r\npredictability\r\n,"), "a double: {entries}");
    assert!(entries.contains("$14\r\nnext_access_ms\r\n_\r\n"), "a null: {entries}");
    let peaks = client.cmd("PROXY PATTERNS PEAKS").await;
    assert!(peaks.starts_with("%4\r\n$10\r\npeak_hours\r\n"), "{peaks}");
}

#[tokio::test]
async fn with_the_engine_off_nothing_is_recorded() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| config.patterns.enabled = false).await;
    assert!(proxy.handle().patterns().is_none());
    let mut client = proxy.raw().await;
    client.cmd("GET a:1").await;
    let info = client.cmd("INFO cache").await;
    assert_eq!(info_field(&info, "pattern_enabled"), "0");
    assert!(!info.contains("pattern_events"), "{info}");
    let reply = client.cmd("PROXY PATTERNS").await;
    assert!(reply.starts_with("-ERR the pattern engine is off"), "{reply}");
}

#[tokio::test]
async fn the_model_survives_a_restart_and_a_bad_snapshot_is_ignored() {
    let server = RedisServer::start();
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("patterns.snap");
    let with_state = |config: &mut Config| {
        quiet(config);
        config.patterns.state_path = path.to_str().unwrap().to_string();
    };
    let proxy = Proxy::start_with(&server.url(), with_state).await;
    let mut client = proxy.raw().await;
    for _ in 0..4 {
        client.cmd("GET cart:7").await;
    }
    let mut redis_client = proxy.client().await;
    recorded(&mut redis_client, &[], 4).await;
    drop(client);
    drop(redis_client);
    proxy.shutdown().await;
    assert!(path.exists(), "written on shutdown");

    let proxy = Proxy::start_with(&server.url(), with_state).await;
    let mut redis_client = proxy.client().await;
    let keys = by_key(&top(&mut redis_client, &[]).await);
    assert_eq!(int(&keys["cart:7"]["accesses"]), 4, "{keys:?}");
    let mut client = proxy.raw().await;
    let info = client.cmd("INFO cache").await;
    assert_eq!(info_field(&info, "pattern_restored_keys"), "1");
    // Learning goes on from where it was.
    client.cmd("GET cart:7").await;
    recorded(&mut redis_client, &[], 5).await;
    assert_eq!(client.cmd("PROXY PATTERNS SAVE").await, "+OK\r\n");
    let saved = std::fs::read(&path).unwrap();
    drop(client);
    drop(redis_client);
    proxy.shutdown().await;

    for bad in [b"garbage, not a model".to_vec(), saved[..saved.len() / 2].to_vec()] {
        std::fs::write(&path, &bad).unwrap();
        let proxy = Proxy::start_with(&server.url(), with_state).await;
        let mut client = proxy.raw().await;
        assert_eq!(client.cmd("GET cart:7").await, "$-1\r\n", "serves as usual");
        let info = client.cmd("INFO cache").await;
        assert_eq!(info_field(&info, "pattern_restored_keys"), "0");
        let mut redis_client = proxy.client().await;
        recorded(&mut redis_client, &[], 1).await;
        drop(client);
        drop(redis_client);
        proxy.shutdown().await;
        // The bad file was replaced by a good snapshot on shutdown.
        assert_ne!(std::fs::read(&path).unwrap(), bad);
    }
}

#[tokio::test]
async fn saving_needs_a_path_and_with_authentication_the_admin_role() {
    use auracache::config::{Role, UserConfig};
    use sha2::{Digest, Sha256};
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), quiet).await;
    let mut client = proxy.raw().await;
    let reply = client.cmd("PROXY PATTERNS SAVE").await;
    assert!(reply.contains("no patterns.state_path"), "{reply}");
    proxy.shutdown().await;

    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("patterns.snap");
    let proxy = Proxy::start_with(&server.url(), |config| {
        quiet(config);
        config.patterns.state_path = path.to_str().unwrap().to_string();
        for (name, role) in [("reader", Role::User), ("operator", Role::Admin)] {
            config.auth.users.push(UserConfig {
                name: name.into(),
                password_sha256: hex::encode(Sha256::digest(b"secret")),
                role,
            });
        }
    })
    .await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("AUTH reader secret").await, "+OK\r\n");
    let reply = client.cmd("PROXY PATTERNS SAVE").await;
    assert!(reply.starts_with("-NOPERM"), "{reply}");
    assert!(
        client.cmd("PROXY PATTERNS").await.starts_with('*'),
        "reading is allowed"
    );
    assert_eq!(client.cmd("AUTH operator secret").await, "+OK\r\n");
    assert_eq!(client.cmd("PROXY PATTERNS SAVE").await, "+OK\r\n");
    assert!(path.exists());
}

/// A key name in two databases is two keys, each with its own history, and
/// each listed with its database.
#[tokio::test]
async fn the_same_name_in_two_databases_is_two_keys() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), quiet).await;
    let mut client = proxy.raw().await;
    client.cmd("GET shared:name").await;
    assert_eq!(client.cmd("SELECT 3").await, "+OK\r\n");
    for _ in 0..3 {
        client.cmd("GET shared:name").await;
    }
    let mut redis_client = proxy.client().await;
    let entries = recorded_entries(&mut redis_client, &[], 4).await;
    let mut seen: Vec<(i64, String, i64)> = entries
        .iter()
        .map(|entry| (int(&entry["db"]), text(&entry["key"]), int(&entry["accesses"])))
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        vec![(0, "shared:name".to_string(), 1), (3, "shared:name".to_string(), 3)]
    );
}
