//! The L1 level through the proxy: GET answered in-process, and never a
//! value Redis would no longer return (writes through the proxy, writes
//! straight to Redis, expiry, FLUSHALL, transactions, databases).

mod common;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::{DEADLINE, Proxy, RawClient, RedisServer};

async fn proxy_with_l1(server: &RedisServer) -> Proxy {
    let proxy = Proxy::start_with(&server.url(), common::l1_eager).await;
    let l1 = proxy.handle().l1().expect("L1 enabled").clone();
    common::poll_until("L1 to be ready (tracking on, command table known)", || l1.ready());
    proxy
}

fn stats(proxy: &Proxy) -> std::sync::Arc<auracache::cache::L1Stats> {
    proxy.handle().l1().unwrap().store.stats().clone()
}

fn hits(proxy: &Proxy) -> u64 {
    proxy.handle().l1().unwrap().store.stats().hits.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_gets_are_answered_without_redis() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("SET k hello").await, "+OK\r\n");
    // Redis's invalidation of the SET may drop the first fill (it arrives
    // on another connection); from the first hit on, Redis is not asked.
    common::read_until_cached(&proxy, &mut client, "k").await;
    let gets = common::redis_calls(&mut direct, "get").await;
    let (hits_before, misses) = (hits(&proxy), stats(&proxy).misses.load(Ordering::Relaxed));
    for _ in 0..4 {
        assert_eq!(client.cmd("GET k").await, "$5\r\nhello\r\n");
    }
    assert_eq!(
        common::redis_calls(&mut direct, "get").await,
        gets,
        "four hits, no read"
    );
    assert_eq!(hits(&proxy), hits_before + 4);
    // An operator sees the same through INFO cache.
    let info = client.cmd("INFO cache").await;
    let ratio = (hits_before + 4) as f64 / (hits_before + 4 + misses) as f64;
    for field in [
        "l1_enabled:1\r\n".to_string(),
        "l1_ready:1\r\n".to_string(),
        format!("l1_hits:{}\r\n", hits_before + 4),
        format!("l1_misses:{misses}\r\n"),
        format!("l1_hit_ratio:{ratio:.4}\r\n"),
        "l1_entries:1\r\n".to_string(),
    ] {
        assert!(info.contains(&field), "{field:?} missing from {info}");
    }
    // The hidden PTTL of the fill never reaches the client, even in a pipeline.
    let mut other = proxy.raw().await;
    other
        .send(
            &[
                common::encode(&[b"GET", b"x"]),
                common::encode(&[b"PING"]),
                common::encode(&[b"GET", b"k"]),
            ]
            .concat(),
        )
        .await;
    assert_eq!(other.read_reply().await, b"$-1\r\n");
    assert_eq!(other.read_reply().await, b"+PONG\r\n");
    assert_eq!(other.read_reply().await, b"$5\r\nhello\r\n");
    // RESP3 clients get RESP3 nil from the same cached entry.
    assert!(other.cmd("HELLO 3").await.starts_with('%'));
    assert_eq!(other.cmd("GET x").await, "_\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_proxy_are_read_at_once_by_every_client() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut reader = proxy.raw().await;
    let mut writer = proxy.raw().await;
    assert_eq!(writer.cmd("SET k v1").await, "+OK\r\n");
    assert_eq!(reader.cmd("GET k").await, "$2\r\nv1\r\n");
    assert_eq!(reader.cmd("GET k").await, "$2\r\nv1\r\n");
    for (write, expected) in [
        ("SET k v2", "$2\r\nv2\r\n"),
        ("APPEND k x", "$3\r\nv2x\r\n"),
        ("DEL k", "$-1\r\n"),
        ("MSET a 1 k v3", "$2\r\nv3\r\n"),
        ("RENAME k k2", "$-1\r\n"),
    ] {
        writer.cmd(write).await;
        assert_eq!(reader.cmd("GET k").await, expected, "after {write}");
        assert_eq!(reader.cmd("GET k").await, expected, "after {write}, cached");
    }
    // A transaction's writes count when EXEC runs them.
    assert_eq!(reader.cmd("GET k2").await, "$2\r\nv3\r\n");
    assert_eq!(writer.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(writer.cmd("SET k2 in-tx").await, "+QUEUED\r\n");
    assert_eq!(reader.cmd("GET k2").await, "$2\r\nv3\r\n", "not yet executed");
    assert!(writer.cmd("EXEC").await.starts_with("*1"));
    assert_eq!(reader.cmd("GET k2").await, "$5\r\nin-tx\r\n");
    // A script's declared keys, and FLUSHALL.
    let script: &[u8] = b"return redis.call('SET', KEYS[1], ARGV[1])";
    writer.command(&[b"EVAL", script, b"1", b"k2", b"scripted"]).await;
    assert_eq!(reader.cmd("GET k2").await, "$8\r\nscripted\r\n");
    assert_eq!(writer.cmd("FLUSHALL").await, "+OK\r\n");
    assert_eq!(reader.cmd("GET k2").await, "$-1\r\n");
    // The same client's pipeline: write then read.
    reader
        .send(&[common::encode(&[b"SET", b"p", b"1"]), common::encode(&[b"GET", b"p"])].concat())
        .await;
    assert_eq!(reader.read_reply().await, b"+OK\r\n");
    assert_eq!(reader.read_reply().await, b"$1\r\n1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_straight_to_redis_are_seen_after_the_invalidation() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("SET k old").await, "+OK\r\n");
    assert_eq!(
        common::read_until_cached(&proxy, &mut client, "k").await,
        "$3\r\nold\r\n"
    );
    assert_eq!(direct.cmd("SET k new").await, "+OK\r\n");
    let written = Instant::now();
    client.cmd_until("GET k", "$3\r\nnew\r\n").await;
    eprintln!("a direct write was visible through L1 after {:?}", written.elapsed());
    // Nil is cached too, and a direct write replaces it.
    assert_eq!(common::read_until_cached(&proxy, &mut client, "fresh").await, "$-1\r\n");
    assert_eq!(direct.cmd("SET fresh here").await, "+OK\r\n");
    client.cmd_until("GET fresh", "$4\r\nhere\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_never_outlives_its_key() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("SET k v PX 300").await, "+OK\r\n");
    assert_eq!(client.cmd("GET k").await, "$1\r\nv\r\n");
    assert_eq!(client.cmd("GET k").await, "$1\r\nv\r\n");
    // As soon as Redis no longer has it, neither does the proxy.
    let started = Instant::now();
    loop {
        let from_redis = direct.cmd("GET k").await;
        let through_proxy = client.cmd("GET k").await;
        if from_redis == "$-1\r\n" {
            assert_eq!(through_proxy, "$-1\r\n", "L1 served an expired key");
            break;
        }
        assert!(started.elapsed() < DEADLINE);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_are_kept_apart_and_transactions_bypass_l1() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut zero = proxy.raw().await;
    let mut one = proxy.raw().await;
    assert_eq!(one.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(zero.cmd("SET k zero").await, "+OK\r\n");
    assert_eq!(one.cmd("SET k one").await, "+OK\r\n");
    for _ in 0..2 {
        assert_eq!(zero.cmd("GET k").await, "$4\r\nzero\r\n");
        assert_eq!(one.cmd("GET k").await, "$3\r\none\r\n");
    }
    let hits_before = hits(&proxy);
    assert_eq!(zero.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(zero.cmd("GET k").await, "+QUEUED\r\n");
    assert_eq!(zero.cmd("EXEC").await, "*1\r\n$4\r\nzero\r\n");
    assert_eq!(hits(&proxy), hits_before, "no L1 inside MULTI");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_max_bytes() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::l1_eager(config);
        config.memory_cache.max_bytes = 256 * 1024;
        config.memory_cache.max_entry_bytes = 16 * 1024;
    })
    .await;
    let l1 = proxy.handle().l1().unwrap().clone();
    common::poll_until("L1 ready", || l1.ready());
    let mut client = proxy.raw().await;
    // Ten times max_bytes of distinct values.
    for i in 0..2600 {
        let key = format!("key:{i}");
        let value = format!("{i:0>1000}");
        client.command(&[b"SET", key.as_bytes(), value.as_bytes()]).await;
        assert_eq!(client.command(&[b"GET", key.as_bytes()]).await.len(), 1000 + 9);
        assert!(
            l1.store.bytes() <= l1.store.capacity(),
            "{} > {}",
            l1.store.bytes(),
            l1.store.capacity()
        );
    }
    assert!(l1.store.stats().evictions.load(Ordering::Relaxed) > 0);
    assert!(!l1.store.is_empty());
}

/// Concurrent misses for one key share one read: every client gets the
/// value, and each GET Redis did not see was a hit or a shared fill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_share_one_upstream_read() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("SET hot value").await, "+OK\r\n");
    let gets_before = common::redis_calls(&mut direct, "get").await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(proxy.raw().await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for mut client in clients {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            client.cmd("GET hot").await
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), "$5\r\nvalue\r\n");
    }
    let redis_gets = common::redis_calls(&mut direct, "get").await - gets_before;
    let stats = proxy.handle().l1().unwrap().store.stats().clone();
    let served_locally = stats.hits.load(Ordering::Relaxed) + stats.coalesced_waits.load(Ordering::Relaxed);
    assert!(redis_gets >= 1);
    assert_eq!(
        redis_gets + served_locally,
        50,
        "{redis_gets} reads, {served_locally} local"
    );
    eprintln!(
        "50 concurrent GETs: {redis_gets} reached Redis, {} shared a fill, {} hit",
        stats.coalesced_waits.load(Ordering::Relaxed),
        stats.hits.load(Ordering::Relaxed)
    );
}

/// HGET and HGETALL are cached per shape of the key, in both protocols,
/// and any write to the hash drops them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_reads_are_cached_and_invalidated_together() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut client = proxy.raw().await;
    let mut resp3 = proxy.raw().await;
    assert!(resp3.cmd("HELLO 3").await.starts_with('%'));
    let mut writer = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(writer.cmd("HSET h a 1 b 2").await, ":2\r\n");
    common::settle(&proxy, &mut client, &mut direct).await;
    let all2 = "*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n";
    let all3 = "%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n";
    for _ in 0..3 {
        assert_eq!(client.cmd("HGETALL h").await, all2);
        assert_eq!(resp3.cmd("HGETALL h").await, all3);
        assert_eq!(client.cmd("HGET h a").await, "$1\r\n1\r\n");
        assert_eq!(client.cmd("HGET h nope").await, "$-1\r\n");
        assert_eq!(resp3.cmd("HGET h nope").await, "_\r\n");
        assert_eq!(client.cmd("HGETALL missing").await, "*0\r\n");
        assert_eq!(resp3.cmd("HGETALL missing").await, "%0\r\n");
    }
    let hits_before = hits(&proxy);
    assert!(hits_before >= 12, "{hits_before}");
    assert_eq!(writer.cmd("HSET h a 9").await, ":0\r\n");
    assert_eq!(client.cmd("HGET h a").await, "$1\r\n9\r\n");
    assert!(client.cmd("HGETALL h").await.contains("$1\r\n9\r\n"));
    // A hash changed straight on Redis, and a key that changes type.
    assert_eq!(direct.cmd("HDEL h b").await, ":1\r\n");
    client.cmd_until("HGETALL h", "*2\r\n$1\r\na\r\n$1\r\n9\r\n").await;
    assert_eq!(writer.cmd("SET s v").await, "+OK\r\n");
    assert!(client.cmd("HGET s f").await.starts_with("-WRONGTYPE"));
    assert!(
        client.cmd("HGET s f").await.starts_with("-WRONGTYPE"),
        "errors are not cached"
    );
}

/// MGET with some keys in L1 asks Redis only for the others and merges the
/// answer in order; with all of them in L1 it does not ask at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_forwards_only_the_missing_keys() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("MSET a 1 b 2 c 3").await, "+OK\r\n");
    common::settle(&proxy, &mut client, &mut direct).await;
    assert_eq!(client.cmd("GET a").await, "$1\r\n1\r\n");
    assert_eq!(client.cmd("GET c").await, "$1\r\n3\r\n");
    assert_eq!(client.cmd("GET nope").await, "$-1\r\n");
    let hits_before = hits(&proxy);
    assert_eq!(direct.cmd("CONFIG SET slowlog-log-slower-than 0").await, "+OK\r\n");
    assert_eq!(direct.cmd("SLOWLOG RESET").await, "+OK\r\n");
    let expected = "*5\r\n$1\r\n1\r\n$1\r\n2\r\n$1\r\n3\r\n$-1\r\n$-1\r\n";
    assert_eq!(client.cmd("MGET a b c d nope").await, expected);
    assert_eq!(hits(&proxy) - hits_before, 3, "a, c and nope came from L1");
    // What Redis ran: MGET of the two keys L1 lacked, nothing more.
    let log = direct.cmd("SLOWLOG GET 20").await;
    assert!(
        log.contains("*3\r\n$4\r\nMGET\r\n$1\r\nb\r\n$1\r\nd\r\n"),
        "Redis's slow log shows no `MGET b d`: {log:?}"
    );
    assert_eq!(log.matches("MGET").count(), 1, "{log:?}");
    assert_eq!(direct.cmd("CONFIG SET slowlog-log-slower-than 10000").await, "+OK\r\n");
    assert_eq!(direct.cmd("MGET a b c d nope").await, expected, "the same as Redis");
    // All in L1: Redis is not asked.
    let mgets = common::redis_calls(&mut direct, "mget").await;
    assert_eq!(
        client.cmd("MGET c a nope a").await,
        "*4\r\n$1\r\n3\r\n$1\r\n1\r\n$-1\r\n$1\r\n1\r\n"
    );
    assert_eq!(common::redis_calls(&mut direct, "mget").await, mgets);
    // RESP3, and a pipeline mixing a partial MGET with a GET fill.
    let mut resp3 = proxy.raw().await;
    assert!(resp3.cmd("HELLO 3").await.starts_with('%'));
    resp3
        .send(
            &[
                common::encode(&[b"MGET", b"a", b"b", b"nope"]),
                common::encode(&[b"GET", b"b"]),
                common::encode(&[b"MGET", b"b", b"zz"]),
                common::encode(&[b"PING"]),
            ]
            .concat(),
        )
        .await;
    assert_eq!(resp3.read_reply().await, b"*3\r\n$1\r\n1\r\n$1\r\n2\r\n_\r\n");
    assert_eq!(resp3.read_reply().await, b"$1\r\n2\r\n");
    assert_eq!(resp3.read_reply().await, b"*2\r\n$1\r\n2\r\n_\r\n");
    assert_eq!(resp3.read_reply().await, b"+PONG\r\n");
    // A write to one of the keys is seen at once.
    assert_eq!(client.cmd("SET c 33").await, "+OK\r\n");
    assert_eq!(client.cmd("MGET a c").await, "*2\r\n$1\r\n1\r\n$2\r\n33\r\n");
}

/// HMGET takes the fields L1 holds (from HGETs) and asks Redis for the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hmget_forwards_only_the_missing_fields() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("HSET h a 1 b 2 c 3").await, ":3\r\n");
    common::settle(&proxy, &mut client, &mut direct).await;
    assert_eq!(client.cmd("HGET h a").await, "$1\r\n1\r\n");
    assert_eq!(client.cmd("HGET h zz").await, "$-1\r\n");
    let hits_before = hits(&proxy);
    let expected = "*4\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n$1\r\n3\r\n";
    assert_eq!(client.cmd("HMGET h a b zz c").await, expected);
    assert_eq!(direct.cmd("HMGET h a b zz c").await, expected, "the same as Redis");
    assert_eq!(hits(&proxy) - hits_before, 2, "a and zz came from L1");
    assert_eq!(client.cmd("HSET h a 10").await, ":0\r\n");
    assert_eq!(client.cmd("HMGET h a zz").await, "*2\r\n$2\r\n10\r\n$-1\r\n");
    assert!(
        client.cmd("HMGET s x").await.starts_with("*1"),
        "a missing key: nils, from Redis"
    );
}

/// MGET and HMGET fill L1 with what Redis answers for the items it lacked
/// (one hidden PTTL per key), so later GETs, HGETs and MGETs are answered
/// in-process; a nil for a key of another type is never kept as GET's
/// answer (GET says WRONGTYPE there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_and_hmget_fill_what_they_read() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("MSET x 1 y 2").await, "+OK\r\n");
    assert_eq!(client.cmd("HSET hh f 1 g 2").await, ":2\r\n");
    common::settle(&proxy, &mut client, &mut direct).await;
    let expected = "*4\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n$-1\r\n";
    assert_eq!(client.cmd("MGET x y hh missing").await, expected);
    assert_eq!(direct.cmd("MGET x y hh missing").await, expected);
    let mgets = common::redis_calls(&mut direct, "mget").await;
    assert_eq!(
        client.cmd("MGET y missing x").await,
        "*3\r\n$1\r\n2\r\n$-1\r\n$1\r\n1\r\n"
    );
    assert_eq!(client.cmd("GET x").await, "$1\r\n1\r\n");
    assert_eq!(common::redis_calls(&mut direct, "mget").await, mgets, "all from L1");
    assert!(client.cmd("GET hh").await.starts_with("-WRONGTYPE"));
    assert!(
        client.cmd("GET hh").await.starts_with("-WRONGTYPE"),
        "still Redis's answer"
    );

    let hits_before = hits(&proxy);
    let expected = "*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n";
    assert_eq!(client.cmd("HMGET hh f g nofield").await, expected);
    assert_eq!(client.cmd("HMGET hh f g nofield").await, expected);
    assert_eq!(client.cmd("HGET hh g").await, "$1\r\n2\r\n");
    assert_eq!(
        hits(&proxy) - hits_before,
        4,
        "the second HMGET and the HGET came from L1"
    );
    assert!(client.cmd("HMGET x f").await.starts_with("-WRONGTYPE"));

    // RESP3 nils, and a write between two MGETs of one pipeline.
    let mut resp3 = proxy.raw().await;
    assert!(resp3.cmd("HELLO 3").await.starts_with('%'));
    resp3
        .send(
            &[
                common::encode(&[b"MGET", b"x", b"q"]),
                common::encode(&[b"SET", b"q", b"5"]),
                common::encode(&[b"MGET", b"q", b"x"]),
                common::encode(&[b"HMGET", b"hh", b"g", b"f"]),
            ]
            .concat(),
        )
        .await;
    assert_eq!(resp3.read_reply().await, b"*2\r\n$1\r\n1\r\n_\r\n");
    assert_eq!(resp3.read_reply().await, b"+OK\r\n");
    assert_eq!(resp3.read_reply().await, b"*2\r\n$1\r\n5\r\n$1\r\n1\r\n");
    assert_eq!(resp3.read_reply().await, b"*2\r\n$1\r\n2\r\n$1\r\n1\r\n");
    assert_eq!(client.cmd("MGET q x").await, "*2\r\n$1\r\n5\r\n$1\r\n1\r\n");
}

/// A TTL set later (through the proxy or straight on Redis) shortens what
/// L1 keeps: once Redis has expired the key, the proxy answers nil too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expire_set_later_is_honoured() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    for (key, setter) in [("via-proxy", 0), ("direct", 1), ("set-ex", 2)] {
        assert_eq!(client.cmd(&format!("SET {key} v")).await, "+OK\r\n");
        for _ in 0..2 {
            assert_eq!(client.cmd(&format!("GET {key}")).await, "$1\r\nv\r\n");
        }
        match setter {
            0 => assert_eq!(client.cmd(&format!("PEXPIRE {key} 100")).await, ":1\r\n"),
            1 => assert_eq!(direct.cmd(&format!("PEXPIRE {key} 100")).await, ":1\r\n"),
            _ => assert_eq!(client.cmd(&format!("SET {key} v PX 100")).await, "+OK\r\n"),
        }
        // Filled again with the new TTL (or still invalidated).
        assert_eq!(client.cmd(&format!("GET {key}")).await, "$1\r\nv\r\n");
        let started = Instant::now();
        loop {
            let from_redis = direct.cmd(&format!("GET {key}")).await;
            let through_proxy = client.cmd(&format!("GET {key}")).await;
            if from_redis == "$-1\r\n" {
                assert_eq!(through_proxy, "$-1\r\n", "{key}: L1 outlived the key");
                break;
            }
            assert!(started.elapsed() < DEADLINE);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // PERSIST: the key stays, and so may the cached value.
    assert_eq!(client.cmd("SET p v PX 200").await, "+OK\r\n");
    client.cmd("GET p").await;
    assert_eq!(client.cmd("PERSIST p").await, ":1\r\n");
    assert_eq!(client.cmd("GET p").await, "$1\r\nv\r\n");
    assert_eq!(direct.cmd("PTTL p").await, ":-1\r\n");
}

/// Killing the tracking connection on Redis empties L1; once tracking is
/// back, direct writes are seen again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_tracking_connection_empties_l1() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let l1 = proxy.handle().l1().unwrap().clone();
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("SET k old").await, "+OK\r\n");
    // (Redis's invalidation of the SET may drop the first fill.)
    common::read_until_cached(&proxy, &mut client, "k").await;
    assert_eq!(l1.store.len(), 1);
    let list = direct.cmd("CLIENT LIST").await;
    let id = list
        .lines()
        .find(|line| line.contains("name=auracache:tracking"))
        .and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .expect("the tracking connection is in CLIENT LIST")
        .to_string();
    assert_eq!(direct.cmd(&format!("CLIENT KILL ID {id}")).await, ":1\r\n");
    common::poll_until("L1 to be emptied", || l1.store.is_empty());
    common::poll_until("tracking to come back", || l1.ready());
    for _ in 0..2 {
        assert_eq!(client.cmd("GET k").await, "$3\r\nold\r\n");
    }
    assert_eq!(direct.cmd("SET k new").await, "+OK\r\n");
    client.cmd_until("GET k", "$3\r\nnew\r\n").await;
}

/// A client that WATCHes, or has its own CLIENT TRACKING, reads Redis
/// itself: L1 would hide from it the state its connection depends on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_and_client_tracking_bypass_l1() {
    let server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut filler = proxy.raw().await;
    assert_eq!(filler.cmd("SET k v").await, "+OK\r\n");
    assert_eq!(common::read_until_cached(&proxy, &mut filler, "k").await, "$1\r\nv\r\n");

    let mut watcher = proxy.raw().await;
    assert_eq!(watcher.cmd("WATCH k").await, "+OK\r\n");
    let mut tracker = proxy.raw().await;
    assert!(tracker.cmd("HELLO 3").await.starts_with('%'));
    assert_eq!(tracker.cmd("CLIENT TRACKING ON").await, "+OK\r\n");
    let before = hits(&proxy);
    for _ in 0..3 {
        assert_eq!(watcher.cmd("GET k").await, "$1\r\nv\r\n");
        assert_eq!(tracker.cmd("GET k").await, "$1\r\nv\r\n");
    }
    assert_eq!(hits(&proxy), before, "no L1 answers after WATCH or CLIENT TRACKING");
    // The tracking client gets Redis's own invalidation for the key it read.
    assert_eq!(filler.cmd("SET k w").await, "+OK\r\n");
    let push = String::from_utf8_lossy(&tracker.read_reply().await).into_owned();
    assert!(
        push.starts_with(">2\r\n$10\r\ninvalidate\r\n") && push.contains("$1\r\nk\r\n"),
        "{push:?}"
    );
}

/// MEMORY_CACHE_ENABLED=false: no L1 at all, every GET reaches Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_off_sends_every_read_to_redis() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        config
            .apply_environment([("MEMORY_CACHE_ENABLED".to_string(), "false".to_string())])
            .unwrap();
    })
    .await;
    assert!(proxy.handle().l1().is_none());
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("SET k v").await, "+OK\r\n");
    for _ in 0..5 {
        assert_eq!(client.cmd("GET k").await, "$1\r\nv\r\n");
    }
    assert_eq!(common::redis_calls(&mut direct, "get").await, 5);
    let info = client.cmd("INFO cache").await;
    assert!(info.contains("l1_enabled:0\r\n") && !info.contains("l1_hits"), "{info}");
}

/// `nil_ttl = 0`: "no such key" is never cached, values still are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nil_caching_can_be_turned_off() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::l1_eager(config);
        config.memory_cache.nil_ttl = 0;
    })
    .await;
    let l1 = proxy.handle().l1().unwrap().clone();
    common::poll_until("L1 ready", || l1.ready());
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    for _ in 0..3 {
        assert_eq!(client.cmd("GET missing").await, "$-1\r\n");
    }
    assert_eq!(
        common::redis_calls(&mut direct, "get").await,
        3,
        "every miss asked Redis"
    );
    assert_eq!(client.cmd("SET k v").await, "+OK\r\n");
    for _ in 0..3 {
        assert_eq!(client.cmd("GET k").await, "$1\r\nv\r\n");
    }
    assert_eq!(common::redis_calls(&mut direct, "get").await, 4, "the value is cached");
}

/// The proxy's own commands write nothing: Redis does not know PROXY, and
/// an unknown command used to count as writing the whole database, so
/// `PROXY PATTERNS` emptied the client's database in L1.
#[tokio::test]
async fn proxy_commands_leave_l1_alone() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), common::l1_eager).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client.cmd("SET k v").await;
    common::read_until_cached(&proxy, &mut client, "k").await;
    for command in [
        "PROXY PATTERNS",
        "PROXY PATTERNS PEAKS",
        "PROXY HELP",
        "PROXY PRELOAD STATUS",
        "INFO cache",
    ] {
        client.cmd(command).await;
        let before = common::l1_hits(&proxy);
        assert_eq!(client.cmd("GET k").await, "$1\r\nv\r\n");
        assert_eq!(common::l1_hits(&proxy), before + 1, "after {command}");
    }
}

/// A batch that could not be sent (Redis down) is answered with errors and
/// is not owed any more: once Redis is back, L1 serves this client again
/// (it used to wait forever for the failed batch's replies, so the client
/// never had an L1 hit again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_served_errors_while_redis_was_down_gets_l1_hits_again() {
    let mut server = RedisServer::start();
    let proxy = proxy_with_l1(&server).await;
    let mut client = proxy.raw().await;
    server.kill();
    let started = Instant::now();
    while !client.cmd("GET k").await.starts_with("-ERR upstream unavailable") {
        assert!(started.elapsed() < DEADLINE, "the proxy never saw Redis go");
    }
    server.restart();
    client.cmd_until("SET k v", "+OK\r\n").await;
    let l1 = proxy.handle().l1().unwrap().clone();
    common::poll_until("L1 to be ready again", || l1.ready());
    assert_eq!(common::read_until_cached(&proxy, &mut client, "k").await, "$1\r\nv\r\n");
}
