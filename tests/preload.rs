//! The preloader against a real Redis, on a manual clock: which keys a run
//! selects (predicted before the horizon, priority at the threshold, not
//! already held long enough), the bound on fetches in flight, TTLs never
//! beyond Redis's, warming before a peak and deferring while busy, values
//! decoded (compression, versioning) and hashes, absent keys announced,
//! and the counters of hits and waste.

mod common;

use common::preload::*;

use std::sync::atomic::Ordering;
use std::time::Duration;

use auracache::clock::Clock;
use auracache::config::{NamespaceConfig, Role, UserConfig};
use common::values::{info_field, int};
use common::{Proxy, RawClient, RedisServer, poll_until_async, redis_calls};
use sha2::{Digest, Sha256};

fn keys(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|i| format!("{prefix}:{i}")).collect()
}

#[tokio::test]
async fn a_predicted_key_is_fetched_before_its_read_and_the_read_is_an_l1_hit() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("SET report:1 monthly").await;
    fixture.direct.cmd("SET report:idle once").await;
    // report:1 every 10 minutes; report:idle read too seldom to predict.
    fixture.read("GET", "report:idle").await;
    fixture.train_periodic(&["report:1".to_string()], 10 * MINUTE, 20).await;
    // Its L1 entry (60 s) has long expired: the next read would miss.
    assert!(fixture.held("report:1").is_none());
    let run = fixture.run().await;
    assert_eq!(int(&run["selected"]), 1, "{run:?}");
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
    assert_eq!(int(&run["errors"]), 0, "{run:?}");
    // Held through the next run (a day away) and one period more.
    let held = fixture.held("report:1").expect("preloaded");
    assert!(held > 24 * HOUR && held <= 24 * HOUR + 10 * MINUTE, "{held:?}");
    assert!(fixture.held("report:idle").is_none());
    // The predicted read comes: L1 answers it, Redis never sees it.
    fixture.clock.advance(10 * MINUTE);
    assert!(!fixture.get_reaches_redis("report:1", &bulk("monthly")).await);
    let info = fixture.info().await;
    assert_eq!(info_field(&info, "preload_stored"), "1", "{info}");
    assert_eq!(info_field(&info, "preload_hits"), "1", "{info}");
    assert_eq!(info_field(&info, "preload_waste"), "0", "{info}");
    assert_eq!(info_field(&info, "preload_hit_ratio"), "1.0000", "{info}");
    // A second read of the same entry is not a second preload hit.
    assert!(!fixture.get_reaches_redis("report:1", &bulk("monthly")).await);
    let status = fixture.status().await;
    assert_eq!(int(&status["hits"]), 1, "{status:?}");
    assert_eq!(int(&status["runs"]), 1, "{status:?}");
}

#[tokio::test]
async fn a_run_on_the_clock_without_being_asked() {
    let mut fixture = Fixture::start(|config| config.preload.interval_minutes = 10.0).await;
    fixture.direct.cmd("SET feed:1 x").await;
    fixture.train_periodic(&["feed:1".to_string()], 5 * MINUTE, 20).await;
    // 100 minutes have passed on the clock: runs were due all along (with
    // nothing to predict at first). The one after the training, on the
    // clock, preloads feed:1 (its next read is due now).
    let preload = fixture.proxy.handle().preload().expect("preloader on").clone();
    let trained_at = fixture.clock.unix_ms();
    fixture.clock.advance(10 * MINUTE);
    poll_until_async("a scheduled run after the training", || {
        let preload = preload.clone();
        async move { preload.last().is_some_and(|run| run.started_ms > trained_at) }
    })
    .await;
    assert!(fixture.held("feed:1").is_some());
    let status = fixture.status().await;
    let next = int(&status["next_run_ms"]) as u64;
    let last = int(&status["last_run_ms"]) as u64;
    assert_eq!(next, last + 600_000, "{status:?}");
}

#[tokio::test]
async fn held_long_enough_is_left_alone_and_held_too_briefly_is_made_to_last() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("SET tile:1 t").await;
    fixture.train_periodic(&["tile:1".to_string()], 10 * MINUTE, 20).await;
    let first = fixture.run().await;
    assert_eq!(int(&first["fetched"]), 1, "{first:?}");
    let gets = redis_calls(&mut fixture.direct, "get").await;
    let again = fixture.run().await;
    assert_eq!(int(&again["selected"]), 1, "{again:?}");
    assert_eq!(int(&again["already_cached"]), 1, "{again:?}");
    assert_eq!(int(&again["fetched"]), 0, "{again:?}");
    assert_eq!(redis_calls(&mut fixture.direct, "get").await, gets);
    // The predicted read now, and 10 minutes on the entry has a day left,
    // less than a run then needs (through its next run and a period).
    fixture.read("GET", "tile:1").await;
    fixture.clock.advance(10 * MINUTE);
    fixture.recorded().await;
    let before = fixture.held("tile:1").expect("held");
    let later = fixture.run().await;
    // Made to last without asking Redis (the key has no TTL there).
    assert_eq!(int(&later["extended"]), 1, "{later:?}");
    assert_eq!(int(&later["fetched"]), 0, "{later:?}");
    assert_eq!(redis_calls(&mut fixture.direct, "get").await, gets);
    let after = fixture.held("tile:1").expect("held");
    assert!(after > before + 5 * MINUTE, "{before:?} -> {after:?}");
    // A key with a TTL in Redis is made to last no longer than it.
    fixture.direct.cmd("SET tile:2 t EX 1000").await;
    fixture.read("GET", "tile:2").await;
    fixture.read("GET", "tile:2").await;
    let l1 = fixture.proxy.handle().l1().expect("L1 on").clone();
    let until = l1.store.now() + 3 * HOUR;
    assert!(l1.store.extend(0, b"tile:2", until));
    let held = fixture.held("tile:2").expect("held");
    assert!(held <= Duration::from_secs(1000), "{held:?}");
    assert!(held > Duration::from_secs(900), "{held:?}");
}

#[tokio::test]
async fn the_l1_ttl_never_outlives_the_key_in_redis() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("SET session:1 s").await;
    fixture
        .train_periodic(&["session:1".to_string()], 10 * MINUTE, 20)
        .await;
    // Redis keeps it 90 more seconds (Redis's own clock): so does L1.
    fixture.direct.cmd("PEXPIRE session:1 90000").await;
    let run = fixture.run().await;
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
    let held = fixture.held("session:1").expect("preloaded");
    assert!(held <= Duration::from_secs(90), "{held:?}");
    assert!(held > Duration::from_secs(80), "{held:?}");
}

#[tokio::test]
async fn a_ttl_only_namespace_keeps_its_staleness_bound() {
    let mut fixture = Fixture::start(|config| {
        config.namespaces.insert(
            "prices".into(),
            NamespaceConfig {
                consistency: Some(auracache::config::Consistency::TtlOnly),
                memory_cache_ttl: Some(120),
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    fixture.direct.cmd("SET prices:1 9").await;
    fixture.train_periodic(&["prices:1".to_string()], 10 * MINUTE, 20).await;
    let run = fixture.run().await;
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
    let held = fixture.held("prices:1").expect("preloaded");
    assert!(held <= Duration::from_secs(120), "{held:?}");
}

#[tokio::test]
async fn fetches_in_flight_stay_within_max_concurrent() {
    let mut fixture = Fixture::start(|config| config.preload.max_concurrent = 3).await;
    let names = keys("page", 40);
    for name in &names {
        fixture.direct.cmd(&format!("SET {name} body")).await;
    }
    fixture.train_periodic(&names, 10 * MINUTE, 15).await;
    // Redis holds every command for a while: fetches pile up to the bound.
    fixture.direct.cmd("CLIENT PAUSE 300 ALL").await;
    let run = fixture.run().await;
    assert_eq!(int(&run["selected"]), 40, "{run:?}");
    assert_eq!(int(&run["fetched"]), 40, "{run:?}");
    assert_eq!(int(&run["max_in_flight"]), 3, "{run:?}");
}

#[tokio::test]
async fn a_quiet_run_warms_the_coming_peak_and_a_busy_one_defers() {
    // The clock at day 0 18:00; five keys read five times between 18:00
    // and 18:50 (unevenly: not on a period) on four days: hour 18 is the
    // peak, and each key is read daily at 18.
    let mut fixture = Fixture::start_at(START_MS + 18 * 3_600_000, |config| {
        config.preload.peak_share = 0.0;
        config.preload.interval_minutes = 30.0;
    })
    .await;
    let names = keys("evening", 5);
    for name in &names {
        fixture.direct.cmd(&format!("SET {name} e")).await;
    }
    for day in 0..4 {
        for step in [3, 12, 16, 19] {
            for name in &names {
                fixture.read("GET", name).await;
            }
            fixture.clock.advance(step * MINUTE);
        }
        for name in &names {
            fixture.read("GET", name).await;
        }
        // To 18:00 the next day.
        if day < 3 {
            fixture.clock.advance(24 * HOUR - 50 * MINUTE);
        }
    }
    fixture.recorded().await;
    // Day 3, 18:50 -> day 4, 16:00: the next run (16:30) is no peak, and
    // the keys' next read (18:00) is beyond it.
    fixture.clock.advance(21 * HOUR + 10 * MINUTE);
    let early = fixture.run().await;
    assert_eq!(int(&early["last_run_busy"]), 0, "{early:?}");
    assert_eq!(int(&early["selected"]), 0, "{early:?}");
    assert!(names.iter().all(|name| fixture.held(name).is_none()));
    // 17:35: the next run (18:05) falls in the peak: warm it now (the
    // schedule may have run just before RUN did: either way they are held).
    fixture.clock.advance(95 * MINUTE);
    let before = fixture.run().await;
    assert_eq!(int(&before["last_run_busy"]), 0, "{before:?}");
    assert_eq!(int(&before["stored"]), 5, "{before:?}");
    assert_eq!(
        int(&before["fetched"]) + int(&before["already_cached"]),
        5,
        "{before:?}"
    );
    assert!(int(&before["last_run_horizon_ms"]) as u64 >= START_MS + 4 * 86_400_000 + 19 * 3_600_000);
    for name in &names {
        let held = fixture.held(name).expect("warmed");
        // Through the peak hour (19:00), from 17:35.
        assert!(held >= 85 * MINUTE, "{name}: {held:?}");
    }
    // The peak's reads are L1 hits.
    fixture.clock.advance(30 * MINUTE);
    for name in names.clone() {
        assert!(!fixture.get_reaches_redis(&name, &bulk("e")).await, "{name}");
    }
    // In the peak hour, a run with work to do defers it (peak_share 0).
    fixture.direct.cmd("SET evening:late l").await;
    fixture
        .train_periodic(&["evening:late".to_string()], 2 * MINUTE, 12)
        .await;
    let busy = fixture.run().await;
    assert_eq!(int(&busy["last_run_busy"]), 1, "{busy:?}");
    assert!(int(&busy["deferred"]) >= 1, "{busy:?}");
    assert_eq!(int(&busy["fetched"]), 0, "{busy:?}");
    assert!(int(&busy["total_deferred"]) >= 1, "{busy:?}");
}

#[tokio::test]
async fn reads_per_second_over_the_bound_count_as_busy() {
    let mut fixture = Fixture::start(|config| {
        config.preload.busy_reads_per_sec = 20;
        config.preload.peak_share = 0.0;
    })
    .await;
    fixture.direct.cmd("SET chart:1 c").await;
    fixture.train_periodic(&["chart:1".to_string()], 10 * MINUTE, 20).await;
    // A burst of reads of another key, then a run while it is fresh.
    fixture.direct.cmd("SET noise n").await;
    let preload = fixture.proxy.handle().preload().expect("preloader on").clone();
    let mut busy = None;
    for _ in 0..20 {
        for _ in 0..400 {
            fixture.read("GET", "noise").await;
        }
        let run = fixture.run().await;
        if int(&run["last_run_busy"]) == 1 {
            busy = Some(run);
            break;
        }
    }
    let busy = busy.expect("a run during 400 quick reads counts as busy");
    assert_eq!(int(&busy["fetched"]), 0, "{busy:?}");
    assert_eq!(int(&busy["deferred"]), 1, "{busy:?}");
    // Once the reads stop, a run is quiet and fetches it.
    let mut quiet = None;
    for _ in 0..100 {
        let run = fixture.run().await;
        if int(&run["last_run_busy"]) == 0 {
            quiet = Some(run);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let quiet = quiet.expect("a quiet run after the burst");
    assert_eq!(int(&quiet["fetched"]), 1, "{quiet:?}");
    assert!(preload.stats().deferred.load(Ordering::Relaxed) >= 1);
}

#[tokio::test]
async fn preloaded_values_are_what_the_client_reads_compressed_and_versioned() {
    let mut fixture = Fixture::start(|config| {
        config.compression.enabled = true;
        config.compression.threshold = 64;
        config.namespaces.insert(
            "doc".into(),
            NamespaceConfig {
                version: Some(2),
                fallback_versions: vec![1],
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let value = "lorem-ipsum-".repeat(50);
    assert_eq!(fixture.client.cmd(&format!("SET doc:1 {value}")).await, "+OK\r\n");
    // Stored compressed under its versioned name.
    let stored = fixture.direct.cmd("STRLEN v2:doc:1").await;
    assert!(stored.trim_start_matches(':').trim().parse::<usize>().unwrap() < value.len());
    // An old version of another key, migrated by the preloader's read.
    fixture.direct.cmd(&format!("SET v1:doc:2 {value}")).await;
    fixture
        .train_periodic(&["doc:1".to_string(), "doc:2".to_string()], 10 * MINUTE, 20)
        .await;
    let run = fixture.run().await;
    assert_eq!(int(&run["fetched"]), 2, "{run:?}");
    fixture.clock.advance(10 * MINUTE);
    assert!(!fixture.get_reaches_redis("doc:1", &bulk(&value)).await);
    assert!(!fixture.get_reaches_redis("doc:2", &bulk(&value)).await);
}

#[tokio::test]
async fn a_hash_is_preloaded_for_hgetall_in_both_protocols() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("HSET profile:1 name ada lang en").await;
    for _ in 0..20 {
        fixture.read("HGETALL", "profile:1").await;
        fixture.clock.advance(10 * MINUTE);
    }
    fixture.recorded().await;
    let run = fixture.run().await;
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
    let before = redis_calls(&mut fixture.direct, "hgetall").await;
    let resp2 = fixture.client.cmd("HGETALL profile:1").await;
    let mut resp3_client = RawClient::connect(fixture.proxy.addr()).await;
    resp3_client.cmd("HELLO 3").await;
    let resp3 = resp3_client.cmd("HGETALL profile:1").await;
    assert_eq!(redis_calls(&mut fixture.direct, "hgetall").await, before);
    let mut direct3 = RawClient::connect(fixture.server.addr()).await;
    direct3.cmd("HELLO 3").await;
    assert_eq!(resp2, fixture.direct.cmd("HGETALL profile:1").await);
    assert_eq!(resp3, direct3.cmd("HGETALL profile:1").await);
}

#[tokio::test]
async fn a_predicted_key_absent_in_redis_is_counted_and_announced() {
    let mut fixture = Fixture::start(|config| config.preload.miss_channel = "regenerate".into()).await;
    fixture.direct.cmd("SET thumb:1 x").await;
    fixture.train_periodic(&["thumb:1".to_string()], 10 * MINUTE, 20).await;
    fixture.direct.cmd("DEL thumb:1").await;
    let mut subscriber = RawClient::connect(fixture.server.addr()).await;
    subscriber.cmd("SUBSCRIBE regenerate").await;
    let run = fixture.run().await;
    assert_eq!(int(&run["absent"]), 1, "{run:?}");
    assert_eq!(int(&run["announced"]), 1, "{run:?}");
    assert_eq!(int(&run["fetched"]), 0, "{run:?}");
    let message = subscriber.read_reply().await;
    assert_eq!(
        String::from_utf8_lossy(&message),
        "*3\r\n$7\r\nmessage\r\n$10\r\nregenerate\r\n$7\r\nthumb:1\r\n"
    );
    assert!(fixture.held("thumb:1").is_none());
    assert_eq!(info_field(&fixture.info().await, "preload_absent"), "1");
}

#[tokio::test]
async fn a_write_after_the_preload_is_seen_and_the_unused_entry_is_waste() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("SET quote:1 old").await;
    fixture.train_periodic(&["quote:1".to_string()], 10 * MINUTE, 20).await;
    let run = fixture.run().await;
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
    // Another client writes it straight on Redis: tracking drops the entry.
    fixture.direct.cmd("SET quote:1 new").await;
    fixture.client.cmd_until("GET quote:1", &bulk("new")).await;
    let info = fixture.info().await;
    assert_eq!(info_field(&info, "preload_waste"), "1", "{info}");
    assert_eq!(info_field(&info, "preload_hits"), "0", "{info}");
}

#[tokio::test]
async fn an_entry_expiring_unused_is_waste() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("SET banner:1 b").await;
    fixture.train_periodic(&["banner:1".to_string()], 10 * MINUTE, 20).await;
    assert_eq!(int(&fixture.run().await["fetched"]), 1);
    // The read never comes; the entry (held for a day) expires and is swept.
    fixture.clock.advance(25 * HOUR);
    let l1 = fixture.proxy.handle().l1().expect("L1 on").clone();
    l1.store.sweep();
    let info = fixture.info().await;
    assert_eq!(info_field(&info, "preload_waste"), "1", "{info}");
    assert_eq!(info_field(&info, "preload_hit_ratio"), "0.0000", "{info}");
}

#[tokio::test]
async fn with_the_preloader_off_nothing_runs_and_the_commands_say_why() {
    let mut fixture = Fixture::start(|config| config.preload.enabled = false).await;
    let status = fixture.client.cmd("PROXY PRELOAD STATUS").await;
    assert!(status.contains("preload.enabled = false"), "{status}");
    assert_eq!(info_field(&fixture.info().await, "preload_enabled"), "0");
    assert!(fixture.proxy.handle().preload().is_none());
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| config.memory_cache.enabled = false).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    let reply = client.cmd("PROXY PRELOAD RUN").await;
    assert!(reply.contains("needs memory_cache.enabled"), "{reply}");
}

#[tokio::test]
async fn run_needs_the_admin_role_when_clients_authenticate() {
    let hash = hex::encode(Sha256::digest(b"secret"));
    let fixture = Fixture::start(|config| {
        for (name, role) in [("ops", Role::Admin), ("app", Role::User)] {
            config.auth.users.push(UserConfig {
                name: name.into(),
                password_sha256: hash.clone(),
                role,
            });
        }
    })
    .await;
    let mut app = RawClient::connect(fixture.proxy.addr()).await;
    assert_eq!(app.cmd("AUTH app secret").await, "+OK\r\n");
    assert!(app.cmd("PROXY PRELOAD RUN").await.starts_with("-NOPERM"));
    assert!(app.cmd("PROXY PRELOAD STATUS").await.starts_with('*'));
    let mut ops = RawClient::connect(fixture.proxy.addr()).await;
    assert_eq!(ops.cmd("AUTH ops secret").await, "+OK\r\n");
    assert!(ops.cmd("PROXY PRELOAD RUN").await.starts_with('*'));
}

/// `PROXY CONFIG SET` changes the preloader's settings in the running
/// proxy, from its next run, and refuses what cannot change, naming it.
#[tokio::test]
async fn config_set_changes_the_preloader_without_a_restart() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("SET card:1 c").await;
    fixture.train_periodic(&["card:1".to_string()], 10 * MINUTE, 20).await;
    let client = &mut fixture.client;
    assert_eq!(
        client.cmd("PROXY CONFIG SET preload.priority_threshold 10").await,
        "+OK\r\n"
    );
    assert_eq!(
        client.cmd("PROXY CONFIG GET preload.priority_threshold").await,
        "*2\r\n$26\r\npreload.priority_threshold\r\n$2\r\n10\r\n"
    );
    let strict = fixture.run().await;
    assert_eq!(int(&strict["priority_threshold"]), 10, "{strict:?}");
    assert_eq!(int(&strict["selected"]), 0, "{strict:?}");
    let client = &mut fixture.client;
    assert_eq!(
        client.cmd("PROXY CONFIG SET preload.priority_threshold 5").await,
        "+OK\r\n"
    );
    let run = fixture.run().await;
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
    // A new interval: the next run one new interval from now.
    let client = &mut fixture.client;
    assert_eq!(
        client.cmd("PROXY CONFIG SET preload.interval_minutes 10").await,
        "+OK\r\n"
    );
    let preload = fixture.proxy.handle().preload().expect("preloader on").clone();
    poll_until_async("the new interval scheduled", || {
        let preload = preload.clone();
        async move { preload.config().interval() == Duration::from_secs(600) }
    })
    .await;
    let status = fixture.status().await;
    let next_in = int(&status["next_run_in_s"]);
    assert!(next_in <= 600, "{status:?}");
    // Refused: a bad value, and a setting that needs a restart.
    let client = &mut fixture.client;
    let bad = client.cmd("PROXY CONFIG SET preload.priority_threshold 11").await;
    assert!(
        bad.starts_with("-ERR invalid setting preload.priority_threshold"),
        "{bad}"
    );
    let fixed = client.cmd("PROXY CONFIG SET memory_cache.max_namespaces 10").await;
    assert!(
        fixed.starts_with("-ERR memory_cache.max_namespaces cannot change while the proxy runs"),
        "{fixed}"
    );
    let unknown = client.cmd("PROXY CONFIG SET no.such 1").await;
    assert!(unknown.starts_with("-ERR"), "{unknown}");
    assert_eq!(int(&fixture.status().await["priority_threshold"]), 5);
}
