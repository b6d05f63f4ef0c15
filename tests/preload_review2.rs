//! A second review of the preloader (issue #8), of its final state: what
//! the first review (tests/preload_review.rs) left. Each test runs against
//! a real Redis, the proxy on a manual clock (the fixture of
//! tests/preload.rs).

mod common;

use common::preload::*;

use std::sync::atomic::Ordering;
use std::time::Duration;

use auracache::cache::Shape;
use auracache::config::Config;
use common::values::int;
use common::{Proxy, RawClient, RedisServer, redis_calls};

/// A hash of one field whose HGETALL reply (about 2 KB, ~4.3 KB weighed
/// with its RESP3 twin) fits `max_entry_bytes = 4096` (with the store's
/// allowance for the key) on its own, but not beside a copy of its field
/// as an HGET reply (~6.4 KB).
const FIELD_BYTES: usize = 2000;

fn small_entries(config: &mut Config) {
    config.memory_cache.max_entry_bytes = 4096;
}

/// `complete_read` now goes through `complete_read_for`, which derives a
/// hash's fields beside *every* HashAll fill (a client's RESP2 HGETALL
/// too, not only the preloader's), and `complete_with` then refuses the
/// whole entry when HGETALL + fields exceed the largest entry: an HGETALL
/// that L1 cached before the preloader (and still caches for a RESP3
/// client, whose `%` reply derives no fields) is now never cached for a
/// RESP2 client, counted as `too_large`, and every read goes to Redis.
#[tokio::test]
async fn a_resp2_hgetall_that_fits_l1_is_still_cached() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::l1_eager(config);
        small_entries(config);
        config.preload.enabled = false;
    })
    .await;
    let mut direct = RawClient::connect(server.addr()).await;
    let value = "x".repeat(FIELD_BYTES);
    direct.cmd(&format!("HSET wide:1 f {value}")).await;
    direct.cmd(&format!("HSET wide:3 f {value}")).await;
    let mut resp2 = proxy.raw().await;
    let mut resp3 = proxy.raw().await;
    resp3.cmd("HELLO 3").await;
    // Redis's invalidations of the HSETs have been applied (a late one
    // would drop the first fill).
    common::settle(&proxy, &mut resp2, &mut direct).await;
    async fn cached(proxy: &Proxy, client: &mut RawClient, key: &str) -> bool {
        // Up to a few tries: the first fills, a later one must hit.
        for _ in 0..5 {
            client.cmd(&format!("HGETALL {key}")).await;
            let before = common::l1_hits(proxy);
            client.cmd(&format!("HGETALL {key}")).await;
            if common::l1_hits(proxy) > before {
                return true;
            }
        }
        false
    }
    assert!(
        cached(&proxy, &mut resp3, "wide:3").await,
        "control: a RESP3 HGETALL is cached"
    );
    let too_large = proxy
        .handle()
        .l1()
        .unwrap()
        .store
        .stats()
        .too_large
        .load(Ordering::Relaxed);
    assert!(
        cached(&proxy, &mut resp2, "wide:1").await,
        "the same HGETALL over RESP2 is never cached (too_large {} -> {})",
        too_large,
        proxy
            .handle()
            .l1()
            .unwrap()
            .store
            .stats()
            .too_large
            .load(Ordering::Relaxed)
    );
}

/// The preloader's side of the same: a predicted hash whose HGETALL fits
/// L1 is fetched every run and never stored (`skipped`), because its
/// derived fields do not fit beside it.
#[tokio::test]
async fn a_predicted_hash_that_fits_l1_is_preloaded() {
    let mut fixture = Fixture::start(small_entries).await;
    let value = "y".repeat(FIELD_BYTES);
    fixture.direct.cmd(&format!("HSET wide:2 f {value}")).await;
    fixture.train("HGETALL", &["wide:2"], 10 * MINUTE, 20).await;
    let run = fixture.run().await;
    assert_eq!(int(&run["selected"]), 1, "{run:?}");
    assert_eq!(int(&run["fetched"]), 1, "stored nothing: {run:?}");
    assert!(fixture.held_in(0, "wide:2", &Shape::HashAll).is_some());
}

/// `preloads` ("stored" in STATUS, `preload_stored` in INFO) once counted
/// every store while a key preloaded again before a hit kept its first
/// mark, so `waste / stored` under-reported waste. Now a store or an
/// extension that carries an unused mark on is not a new preload: every
/// stored preload ends as a hit or as waste.
#[tokio::test]
async fn every_stored_preload_ends_as_a_hit_or_as_waste() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("SET note:1 n").await;
    fixture.train("GET", &["note:1"], 10 * MINUTE, 20).await;
    assert_eq!(int(&fixture.run().await["fetched"]), 1);
    // Ten minutes on, unread: held a day, needed a day and a period: the
    // run makes it last (the same bet, extended).
    fixture.clock.advance(10 * MINUTE);
    assert_eq!(int(&fixture.run().await["extended"]), 1);
    // Never read; everything expires and is swept.
    fixture.clock.advance(3 * 24 * HOUR);
    let l1 = fixture.proxy.handle().l1().expect("L1 on").clone();
    l1.store.sweep();
    assert!(l1.store.is_empty());
    let stats = l1.store.stats();
    let stored = stats.preloads.load(Ordering::Relaxed);
    let hits = stats.preload_hits.load(Ordering::Relaxed);
    let waste = stats.preload_waste.load(Ordering::Relaxed);
    assert_eq!((stored, hits, waste), (1, 0, 1));
}

/// A predicted key whose value is larger than L1 keeps is fetched (GET of
/// the whole value, up to Redis's 512 MB, `max_concurrent` at once) on
/// every run, only to be refused by the store (`too_large`, counted as
/// `skipped`): pure load on Redis and the proxy, forever. The engine
/// already knows the reads' mean size (`Insight::mean_size`); the first
/// refusal could be remembered too.
#[tokio::test]
async fn a_value_too_large_for_l1_is_not_fetched_on_every_run() {
    let mut fixture = Fixture::start(small_entries).await;
    let value = "z".repeat(20_000);
    fixture.direct.cmd(&format!("SET blob:1 {value}")).await;
    fixture.train("GET", &["blob:1"], 10 * MINUTE, 20).await;
    let gets = redis_calls(&mut fixture.direct, "get").await;
    let mut selected = 0;
    for _ in 0..3 {
        let run = fixture.run().await;
        assert_eq!(int(&run["errors"]), 0, "{run:?}");
        selected += int(&run["selected"]);
        fixture.clock.advance(10 * MINUTE);
    }
    assert!(selected >= 3, "the key is predicted every run");
    let fetches = redis_calls(&mut fixture.direct, "get").await - gets;
    assert!(
        fetches <= 1,
        "{fetches} GETs of a 20 KB value L1 (max_entry_bytes 4096) can never keep, in 3 runs"
    );
    assert!(fixture.held_in(0, "blob:1", &Shape::String).is_none());
}

/// Guard: with `compression.hashes`, HGET and HMGET answered from the
/// fields the preloader derived from a compressed hash are Redis's bytes
/// for the original values, in RESP2 and RESP3, without reaching Redis.
#[tokio::test]
async fn derived_fields_of_a_compressed_hash_answer_as_redis_would() {
    let mut fixture = Fixture::start(|config| {
        config.compression.enabled = true;
        config.compression.hashes = true;
        config.compression.threshold = 16;
    })
    .await;
    let body = "lorem-ipsum-".repeat(40);
    let write: [&[u8]; 8] = [b"HSET", b"doc:9", b"body", body.as_bytes(), b"n", b"1", b"empty", b""];
    fixture.client.command(&write).await;
    // A reference Redis holding the original values.
    let reference = RedisServer::start();
    let mut plain2 = RawClient::connect(reference.addr()).await;
    plain2.command(&write).await;
    let mut plain3 = RawClient::connect(reference.addr()).await;
    plain3.cmd("HELLO 3").await;
    // Stored compressed in Redis.
    assert_ne!(
        fixture.direct.cmd("HSTRLEN doc:9 body").await,
        format!(":{}\r\n", body.len())
    );
    fixture.train("HGET", &["doc:9 body"], 10 * MINUTE, 20).await;
    let run = fixture.run().await;
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
    let mut proxied3 = fixture.proxy.raw().await;
    proxied3.cmd("HELLO 3").await;
    let before = redis_calls(&mut fixture.direct, "hget").await + redis_calls(&mut fixture.direct, "hmget").await;
    for line in [
        "HGET doc:9 body",
        "HGET doc:9 n",
        "HGET doc:9 empty",
        "HMGET doc:9 n body empty",
    ] {
        let proxied = fixture.client.cmd(line).await;
        assert_eq!(proxied, plain2.cmd(line).await, "RESP2 {line}");
        let proxied = proxied3.cmd(line).await;
        assert_eq!(proxied, plain3.cmd(line).await, "RESP3 {line}");
    }
    let after = redis_calls(&mut fixture.direct, "hget").await + redis_calls(&mut fixture.direct, "hmget").await;
    assert_eq!(after, before, "answered from L1");
}

/// Peak hours are believed "once a whole day's load has been seen"
/// (`MIN_LOAD_DAYS` = 2 in `run`), but `Patterns::load_days` is the number
/// of calendar days with *any* load: a proxy started at 23:30 has "two
/// days" at midnight. Its 50 minutes of load all fall in hours 23 and 0,
/// so both are "peaks" (each well over 1.5x the 24-hour mean), and the run
/// at 00:20 counts as busy: paced to `peak_share` of the reads per second
/// (with 0: everything deferred) though the proxy has seen under an hour.
#[tokio::test]
async fn less_than_a_day_of_load_does_not_make_peak_hours() {
    let mut fixture = Fixture::start_at(START_MS + 23 * 3_600_000 + 30 * 60_000, |config| {
        config.preload.peak_share = 0.0;
    })
    .await;
    fixture.direct.cmd("SET tick:1 t").await;
    fixture.train("GET", &["tick:1"], 2 * MINUTE, 25).await;
    let patterns = fixture.proxy.handle().patterns().expect("engine on").clone();
    // Every read recorded (and the load with it) before the run looks.
    let waited = patterns.clone();
    let recorded = tokio::task::spawn_blocking(move || waited.recorded(Duration::from_secs(5)))
        .await
        .unwrap();
    assert!(recorded, "the engine recorded the reads");
    let (_, peaks) = patterns.peaks();
    let run = fixture.run().await;
    assert_eq!(
        int(&run["last_run_busy"]),
        0,
        "50 minutes after start, load_days {} and peak hours {peaks:?}: {run:?}",
        patterns.load_days()
    );
    assert_eq!(int(&run["deferred"]), 0, "{run:?}");
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
}
