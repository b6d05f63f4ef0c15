//! A review of the preloader (issue #8): regressions found by reading
//! src/preload.rs and the L1 additions, each against a real Redis, with the
//! proxy on a manual clock (the fixture of tests/preload.rs).

mod common;

use common::preload::*;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use auracache::cache::Shape;
use auracache::config::Config;
use common::values::int;
use common::{Proxy, RedisServer, poll_until_async, redis_calls};

/// `preload.max_keys_per_run` is documented as "most keys one run
/// fetches", but `Patterns::due` truncates the *predictions* to it before
/// `Preload::plan` drops those L1 already holds: once the top N keys are
/// cached, every later run selects the same N, fetches nothing, and the
/// keys ranked below them are never preloaded.
#[tokio::test]
async fn keys_already_cached_do_not_use_up_max_keys_per_run() {
    let mut fixture = Fixture::start(|config| config.preload.max_keys_per_run = 1).await;
    fixture.direct.cmd("SET rank:a a").await;
    fixture.direct.cmd("SET rank:b b").await;
    // Read alike: equal priority and accesses, ranked by name (a first).
    fixture.train("GET", &["rank:a", "rank:b"], 10 * MINUTE, 20).await;
    let first = fixture.run().await;
    assert_eq!(int(&first["fetched"]), 1, "{first:?}");
    // Whichever ranks first (a tie is broken by name, but a loaded machine
    // can sample a read out and break it the other way) is held now.
    let held = |fixture: &Fixture, key: &str| fixture.held_in(0, key, &Shape::String).is_some();
    let (top, next) = if held(&fixture, "rank:a") {
        ("rank:a", "rank:b")
    } else {
        ("rank:b", "rank:a")
    };
    assert!(held(&fixture, top), "one of the two was fetched and held");
    // It is held through the next run: this run's one fetch is the other's.
    let second = fixture.run().await;
    assert_eq!(
        int(&second["fetched"]),
        1,
        "{next} starves behind the cached {top}: {second:?}"
    );
    assert!(held(&fixture, next));
}

/// A predicted key that is neither a string nor a hash (here a list that
/// replaced a string) is "nothing L1 keeps" (`fetch_one`'s own comment),
/// yet the HGETALL's WRONGTYPE takes the `-` error branch first: every run
/// counts it in `errors` / `total_errors` / `preload_errors` (meant for
/// Redis or the connection failing), which an operator alerts on.
#[tokio::test]
async fn a_key_of_another_type_is_skipped_not_an_error() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("SET queue:1 s").await;
    fixture.train("GET", &["queue:1"], 10 * MINUTE, 20).await;
    fixture.direct.cmd("DEL queue:1").await;
    fixture.direct.cmd("RPUSH queue:1 a b c").await;
    let run = fixture.run().await;
    assert_eq!(int(&run["selected"]), 1, "{run:?}");
    assert_eq!(int(&run["errors"]), 0, "a list is not a failure: {run:?}");
    assert_eq!(int(&run["skipped"]), 1, "{run:?}");
}

/// The engine records HGET reads by key; the preloader fetches such a key
/// with HGETALL and stores only the HashAll shape, but an HGET is looked up
/// as Shape::HashField(field) and never served from HashAll. The predicted
/// HGET still reaches Redis, every such preload is waste, and the whole
/// hash is fetched again each run.
#[tokio::test]
async fn a_hash_read_with_hget_is_served_by_its_preload() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("HSET user:1 name ada lang en").await;
    fixture.train("HGET", &["user:1 name"], 10 * MINUTE, 20).await;
    let run = fixture.run().await;
    assert_eq!(int(&run["selected"]), 1, "{run:?}");
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
    fixture.clock.advance(10 * MINUTE);
    let before = redis_calls(&mut fixture.direct, "hget").await;
    assert_eq!(fixture.read("HGET", "user:1 name").await, "$3\r\nada\r\n");
    assert_eq!(
        redis_calls(&mut fixture.direct, "hget").await,
        before,
        "the predicted HGET went to Redis although its key was just preloaded"
    );
}

/// The shared design (DESIGN.md, "Shape of proxy.toml": the names shared
/// by the README, tests and tools) gives `[preload] enabled,
/// interval_minutes, priority_threshold, max_concurrent`: a proxy.toml
/// written to the design starts.
#[tokio::test]
async fn interval_minutes_is_accepted_in_proxy_toml() {
    let server = RedisServer::start();
    let text = format!(
        "listen = \"127.0.0.1:0\"\nupstream = \"{}\"\n[memory_cache]\nenabled = true\n[preload]\nenabled = true\ninterval_minutes = 10\npriority_threshold = 5\nmax_concurrent = 4\n",
        server.url()
    );
    let config = Config::from_toml(&text).unwrap_or_else(|error| panic!("rejected: {error}"));
    assert_eq!(config.preload.interval(), Duration::from_secs(600));
    let proxy = Proxy::start_with(&server.url(), |c| *c = config).await;
    let mut client = proxy.raw().await;
    assert!(client.cmd("PROXY PRELOAD STATUS").await.starts_with('*'));
}

/// The longest interval accepted (a year) still preloads on RUN, without
/// overflowing the horizon's arithmetic, and STATUS shows no negative
/// times (it once wrapped u64 to i64).
#[tokio::test]
async fn a_huge_interval_still_preloads_on_run() {
    let mut fixture = Fixture::start(|config| config.preload.interval_minutes = 366.0 * 24.0 * 60.0).await;
    fixture.direct.cmd("SET slow:1 s").await;
    fixture.train("GET", &["slow:1"], 10 * MINUTE, 20).await;
    let run = fixture.run().await;
    assert_eq!(int(&run["errors"]), 0, "{run:?}");
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
    let status = fixture.status().await;
    assert!(int(&status["next_run_ms"]) >= 0, "{status:?}");
    assert!(int(&status["next_run_in_s"]) >= 0, "{status:?}");
}

/// `preload.max_concurrent` once reached `Semaphore::new` unbounded, which
/// panics above tokio's MAX_PERMITS, so every run failed: now a value over
/// 10,000 is refused at start-up with the setting named, and the largest
/// accepted one preloads.
#[tokio::test]
async fn a_large_max_concurrent_is_refused_and_the_largest_accepted_works() {
    let mut config = Config::default();
    let error = config
        .set("preload.max_concurrent", &usize::MAX.to_string())
        .unwrap_err();
    assert!(error.to_string().contains("preload.max_concurrent"), "{error}");
    assert!(error.to_string().contains("1 to 10000"), "{error}");
    let mut fixture = Fixture::start(|config| config.preload.max_concurrent = 10_000).await;
    fixture.direct.cmd("SET wide:1 w").await;
    fixture.train("GET", &["wide:1"], 10 * MINUTE, 20).await;
    let run = fixture.run().await;
    assert_eq!(int(&run["errors"]), 0, "{run:?}");
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
}

/// The schedule is kept in wall time (`patterns.now_ms()`), so a step of
/// the wall clock backwards (NTP, a VM restored) postpones every
/// scheduled run by the size of the step: here, stepped back an hour with
/// a 10-minute interval, no run comes after 10 minutes of real (monotonic)
/// time. Deadlines should be monotonic (`Clock::now`), as L1's are.
#[tokio::test]
async fn a_wall_clock_step_back_does_not_stall_the_schedule() {
    let fixture = Fixture::start(|config| config.preload.interval_minutes = 10.0).await;
    let preload = fixture.proxy.handle().preload().expect("preloader on").clone();
    fixture.clock.advance(10 * MINUTE);
    preload.poke();
    poll_until_async("the first scheduled run", || {
        let preload = preload.clone();
        async move { preload.runs() >= 1 }
    })
    .await;
    fixture.clock.step_wall_back(60 * MINUTE);
    fixture.clock.advance(10 * MINUTE + Duration::from_secs(1));
    preload.poke();
    let start = Instant::now();
    while preload.runs() < 2 && start.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        preload.runs() >= 2,
        "no run 10 minutes after the last one (interval 600 s): the schedule waits for the wall clock to catch up"
    );
}

/// In a ttl-only namespace the preloaded entry is cut to the namespace's
/// TTL (its staleness bound), but the key is still selected and fetched
/// when its predicted read is further away than that TTL: the entry is
/// certain to expire before the read comes. Each such fetch is a Redis
/// read for nothing, counted as waste. Such keys should be left to a later
/// run (or fetched only when the read falls within the TTL).
#[tokio::test]
async fn a_ttl_only_key_is_not_fetched_when_its_entry_cannot_last_until_the_read() {
    let mut fixture = Fixture::start(|config| {
        config.namespaces.insert(
            "prices".into(),
            auracache::config::NamespaceConfig {
                consistency: Some(auracache::config::Consistency::TtlOnly),
                memory_cache_ttl: Some(60),
                ..Default::default()
            },
        );
    })
    .await;
    fixture.direct.cmd("SET prices:1 9").await;
    // Read every 10 minutes: the next read is ~10 minutes away, the TTL 1.
    fixture.train("GET", &["prices:1"], 10 * MINUTE, 20).await;
    fixture.clock.advance(MINUTE);
    fixture.read("GET", "prices:1").await;
    fixture.recorded().await;
    let run = fixture.run().await;
    let fetched = int(&run["fetched"]);
    fixture.clock.advance(9 * MINUTE);
    let before = redis_calls(&mut fixture.direct, "get").await;
    fixture.read("GET", "prices:1").await;
    let reached = redis_calls(&mut fixture.direct, "get").await > before;
    assert!(
        fetched == 0 || !reached,
        "fetched {fetched} entry of 60 s for a read 10 minutes away: {run:?}"
    );
}

/// Shutdown aborts a run in flight but never tells `run_now`'s waiters:
/// the `served` watch is not advanced (nor its sender dropped), so the
/// client's `PROXY PRELOAD RUN` gets no answer for PRELOAD_RUN_WAIT (300 s)
/// and its session ignores the shutdown meanwhile (it only watches for it
/// between reads), holding the graceful drain to its timeout.
#[tokio::test]
async fn shutdown_answers_a_run_in_flight() {
    let mut fixture = Fixture::start(|config| config.limits.drain_timeout_ms = 200).await;
    fixture.direct.cmd("SET held:1 h").await;
    fixture.train("GET", &["held:1"], 10 * MINUTE, 20).await;
    // Redis holds the preloader's fetch for 3 s: the run stays in flight.
    fixture.direct.cmd("CLIENT PAUSE 3000 ALL").await;
    let mut runner = fixture.proxy.raw().await;
    runner.send_command(&[b"PROXY", b"PRELOAD", b"RUN"]).await;
    let preload = fixture.proxy.handle().preload().expect("preloader on").clone();
    poll_until_async("a fetch in flight", || {
        let preload = preload.clone();
        async move { preload.stats().in_flight.load(Ordering::Relaxed) >= 1 }
    })
    .await;
    let Fixture { proxy, .. } = fixture;
    let shutdown = tokio::spawn(proxy.shutdown());
    // The drain timeout is 200 ms: by 2 s the client has its answer (an
    // error) or its connection closed.
    let answered = tokio::time::timeout(Duration::from_secs(2), runner.next_reply()).await;
    let _ = shutdown.await;
    assert!(
        answered.is_ok(),
        "PROXY PRELOAD RUN neither answered nor closed 2 s after shutdown began"
    );
}

/// A write through the proxy still waiting for Redis (here held by CLIENT
/// PAUSE WRITE) keeps its key from being preloaded: the run must not
/// store the value from before the write. (Guards `preload_ticket`'s
/// in-flight write check.)
#[tokio::test]
async fn a_write_in_flight_is_not_preloaded_over() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("SET quote:1 old").await;
    fixture.train("GET", &["quote:1"], 10 * MINUTE, 20).await;
    let l1 = fixture.proxy.handle().l1().expect("L1 on").clone();
    let invalidations = l1.store.stats().invalidations.load(Ordering::Relaxed);
    fixture.direct.cmd("CLIENT PAUSE 20000 WRITE").await;
    let mut writer = fixture.proxy.raw().await;
    writer.send_command(&[b"SET", b"quote:1", b"new"]).await;
    // The proxy has read the write (and invalidated its key) once the
    // count moves; Redis holds it until UNPAUSE.
    poll_until_async("the write in flight", || {
        let l1 = l1.clone();
        async move { l1.store.stats().invalidations.load(Ordering::Relaxed) > invalidations }
    })
    .await;
    let run = fixture.run().await;
    assert_eq!(int(&run["fetched"]), 0, "{run:?}");
    assert_eq!(int(&run["skipped"]), 1, "{run:?}");
    fixture.direct.cmd("CLIENT UNPAUSE").await;
    assert_eq!(String::from_utf8_lossy(&writer.read_reply().await), "+OK\r\n");
    assert_eq!(fixture.client.cmd("GET quote:1").await, "$3\r\nnew\r\n");
}

/// Guard: a key the engine learned in db 3 is fetched from db 3 (its own
/// pool), held under db 3 only (the same name in db 0 is another value),
/// and dropped by Redis's invalidation (which names no database).
#[tokio::test]
async fn a_key_in_another_database_is_preloaded_there_and_stays_coherent() {
    let mut fixture = Fixture::start(|_| {}).await;
    fixture.direct.cmd("SELECT 3").await;
    fixture.direct.cmd("SET item:1 three").await;
    fixture.direct.cmd("SELECT 0").await;
    fixture.direct.cmd("SET item:1 zero").await;
    assert_eq!(fixture.client.cmd("SELECT 3").await, "+OK\r\n");
    fixture.train("GET", &["item:1"], 10 * MINUTE, 20).await;
    let run = fixture.run().await;
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
    assert!(fixture.held_in(3, "item:1", &Shape::String).is_some());
    assert!(fixture.held_in(0, "item:1", &Shape::String).is_none());
    assert_eq!(fixture.client.cmd("GET item:1").await, "$5\r\nthree\r\n");
    let mut zero = fixture.proxy.raw().await;
    assert_eq!(zero.cmd("GET item:1").await, "$4\r\nzero\r\n");
    // A write straight on Redis in db 3 reaches L1's db-3 entry.
    fixture.direct.cmd("SELECT 3").await;
    fixture.direct.cmd("SET item:1 new").await;
    fixture.client.cmd_until("GET item:1", "$3\r\nnew\r\n").await;
}

/// Guard: with `compression.hashes`, a hash whose field is stored as an
/// envelope is preloaded (over RESP2) decoded, and a RESP3 client's
/// HGETALL from L1 is the map of original values, never the envelope.
#[tokio::test]
async fn a_compressed_hash_is_preloaded_decoded_for_resp3_and_resp2() {
    let mut fixture = Fixture::start(|config| {
        config.compression.enabled = true;
        config.compression.hashes = true;
        config.compression.threshold = 16;
    })
    .await;
    let value = "lorem-ipsum-".repeat(50);
    fixture.client.cmd(&format!("HSET doc:1 body {value} n 1")).await;
    let mut resp3 = fixture.proxy.raw().await;
    resp3.cmd("HELLO 3").await;
    for _ in 0..20 {
        fixture.reads += 1;
        resp3.cmd("HGETALL doc:1").await;
        fixture.clock.advance(10 * MINUTE);
    }
    fixture.recorded().await;
    let direct_val = fixture.direct.cmd("HGET doc:1 body").await;
    assert!(direct_val.len() < value.len());
    let run = fixture.run().await;
    assert_eq!(int(&run["fetched"]), 1, "{run:?}");
    let before = redis_calls(&mut fixture.direct, "hgetall").await;
    let got3 = resp3.cmd("HGETALL doc:1").await;
    let got2 = fixture.client.cmd("HGETALL doc:1").await;
    assert_eq!(redis_calls(&mut fixture.direct, "hgetall").await, before);
    assert_eq!(
        got3,
        format!(
            "%2\r\n$4\r\nbody\r\n${}\r\n{value}\r\n$1\r\nn\r\n$1\r\n1\r\n",
            value.len()
        )
    );
    assert_eq!(
        got2,
        format!(
            "*4\r\n$4\r\nbody\r\n${}\r\n{value}\r\n$1\r\nn\r\n$1\r\n1\r\n",
            value.len()
        )
    );
}
