//! Key versioning (issue #6), always against real Redis: replies through a
//! proxy that versions a namespace equal plain Redis's; Redis itself holds
//! `v2:` names; old versions are served, migrated with their TTL and type,
//! never resurrected after a delete; cleanup removes exactly the old
//! versions; a version bump under concurrent load loses nothing.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use auracache::config::Config;
use common::{Proxy, RawClient, RedisServer};
use tokio::sync::RwLock;

/// `app` stored as v2 with fallback v1 (so every command runs its hidden
/// migration); `plain` is not versioned.
fn versioned(config: &mut Config, version: u32, fallbacks: &[u32]) {
    let app = config.namespaces.entry("app".into()).or_default();
    app.version = Some(version);
    app.fallback_versions = fallbacks.to_vec();
}

/// A direct connection and a proxied one, each to its own fresh Redis.
struct Pair {
    direct: RawClient,
    proxied: RawClient,
    proxy: Proxy,
    servers: (RedisServer, RedisServer),
}

impl Pair {
    async fn new(protocol: u8, tweak: impl FnOnce(&mut Config)) -> Pair {
        let direct_server = RedisServer::start();
        let proxied_server = RedisServer::start();
        let proxy = Proxy::start_with(&proxied_server.url(), |config| {
            config.memory_cache.enabled = false;
            versioned(config, 2, &[1]);
            tweak(config);
        })
        .await;
        wait_for_table(&proxy);
        let mut pair = Pair {
            direct: RawClient::connect(direct_server.addr()).await,
            proxied: proxy.raw().await,
            proxy,
            servers: (direct_server, proxied_server),
        };
        if protocol == 3 {
            assert!(pair.direct.cmd("HELLO 3").await.starts_with('%'));
            assert!(pair.proxied.cmd("HELLO 3").await.starts_with('%'));
        }
        pair
    }

    async fn check(&mut self, args: &[&[u8]]) -> String {
        let direct = String::from_utf8_lossy(&self.direct.command(args).await).into_owned();
        let proxied = String::from_utf8_lossy(&self.proxied.command(args).await).into_owned();
        assert_eq!(
            proxied,
            direct,
            "reply to {:?} differs (left: proxy, right: Redis)",
            args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>()
        );
        direct
    }

    async fn lines(&mut self, lines: &[&str]) {
        for line in lines {
            let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
            self.check(&args).await;
        }
    }

    /// Replies whose order is Redis's hash order (KEYS, SCAN pages):
    /// compared as sorted lines.
    async fn check_unordered(&mut self, line: &str) -> Vec<String> {
        let sorted = |reply: String| {
            let mut lines: Vec<String> = reply.split("\r\n").map(str::to_string).collect();
            lines.sort();
            lines
        };
        let direct = sorted(self.direct.cmd(line).await);
        let proxied = sorted(self.proxied.cmd(line).await);
        assert_eq!(proxied, direct, "{line:?} (left: proxy, right: Redis)");
        direct
    }
}

/// Versioning starts on the built-in table; the tests run on Redis's own.
fn wait_for_table(proxy: &Proxy) {
    let versions = proxy.handle().versions().expect("versioning on").clone();
    common::poll_until("the key table from Redis", || versions.table_learned());
}

async fn every_key(client: &mut RawClient, pattern: &str) -> Vec<String> {
    let mut cursor = "0".to_string();
    let mut keys = Vec::new();
    loop {
        let reply = client.cmd(&format!("SCAN {cursor} MATCH {pattern} COUNT 5")).await;
        let lines: Vec<&str> = reply.split("\r\n").collect();
        cursor = lines[2].to_string();
        keys.extend(
            lines[4..]
                .iter()
                .filter(|line| !line.starts_with('$') && !line.is_empty())
                .map(|line| line.to_string()),
        );
        if cursor == "0" {
            break;
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

async fn families(pair: &mut Pair) {
    // Compression refuses SORT ... GET ... STORE (issue #5); the rest of
    // SORT is checked either way.
    if pair.proxy.handle().compression().is_none() {
        pair.lines(&[
            "RPUSH app:sort0 3 1 2",
            "MSET app:w_1 30 app:w_2 10 app:w_3 20 app:o_1 one app:o_2 two app:o_3 three",
            "SORT app:sort0 BY app:w_* GET app:o_* STORE app:sorted",
            "LRANGE app:sorted 0 -1",
        ])
        .await;
    }
    pair.lines(&[
        "SET app:s1 hello",
        "GET app:s1",
        "GET app:missing",
        "SET app:s1 world XX GET",
        "APPEND app:s1 !!",
        "STRLEN app:s1",
        "GETRANGE app:s1 1 3",
        "MSET app:m1 a plain:m2 b app:m3 c",
        "MGET app:m1 plain:m2 app:nope app:m3",
        "INCR app:n",
        "INCRBYFLOAT app:f 1.5",
        "GETDEL app:m1",
        "GETEX app:m3 PERSIST",
        "LCS app:s1 app:m3",
        "SETBIT app:b 7 1",
        "BITCOUNT app:b",
        "BITOP OR app:bo app:b app:b",
        "TYPE app:s1",
        "EXISTS app:s1 app:m1 plain:m2 app:m3",
        "RENAME app:m3 app:m3b",
        "COPY app:m3b app:m3c",
        "TOUCH app:m3b app:m3c app:none",
        "OBJECT ENCODING app:s1",
        "DEL app:m3b app:nope plain:m2",
        "UNLINK app:m3c",
        "HSET app:h f1 v1 f2 v2 f3 3",
        "HGET app:h f1",
        "HMGET app:h f1 nope f2",
        "HGETALL app:h",
        "HINCRBY app:h f3 4",
        "HDEL app:h f2",
        "HSCAN app:h 0",
        "RPUSH app:l c a b",
        "LRANGE app:l 0 -1",
        "LMOVE app:l app:l2 LEFT RIGHT",
        "LMPOP 2 app:none app:l LEFT COUNT 1",
        "BLPOP app:none app:l2 0.01",
        "BLMPOP 0.01 2 app:none app:l RIGHT",
        "BLPOP app:none 0.01",
        "RPUSH app:sort 3 1 2",
        "MSET app:w_1 30 app:w_2 10 app:w_3 20 app:o_1 one app:o_2 two app:o_3 three",
        "SORT app:sort BY app:w_* GET app:o_* GET #",
        "SORT_RO app:sort BY nosort",
        "SADD app:ss a b c",
        "SADD app:ss2 c d",
        "SINTERCARD 2 app:ss app:ss2",
        "SINTERSTORE app:si app:ss app:ss2",
        "SMEMBERS app:si",
        "SMOVE app:ss app:ss2 a",
        "ZADD app:z 1 a 2 b 3.5 c",
        "ZADD app:z2 10 x",
        "ZUNIONSTORE app:zu 2 app:z app:z2 WEIGHTS 1 2",
        "ZRANGE app:zu 0 -1 WITHSCORES",
        "ZINTER 2 app:z app:zu WITHSCORES",
        "ZDIFF 2 app:zu app:z",
        "ZRANGESTORE app:zr app:zu 0 1",
        "ZMPOP 1 app:zr MIN",
        "BZPOPMIN app:none app:zu 0.01",
        "BZMPOP 0.01 1 app:zu MAX COUNT 2",
        "PFADD app:hll a b c",
        "PFMERGE app:hll2 app:hll",
        "PFCOUNT app:hll app:hll2",
        "GEOADD app:g 13.361389 38.115556 Palermo 15.087269 37.502669 Catania",
        "GEODIST app:g Palermo Catania",
        "GEOSEARCHSTORE app:gs app:g FROMMEMBER Palermo BYRADIUS 200 km ASC",
        "ZRANGE app:gs 0 -1",
        "XADD app:st 1-1 f v",
        "XADD app:st 2-1 f w",
        "XADD plain:st 1-1 f v",
        "XREAD COUNT 10 STREAMS app:st plain:st 0 0",
        "XGROUP CREATE app:st grp 0",
        "XREADGROUP GROUP grp c1 COUNT 1 STREAMS app:st >",
        "XINFO GROUPS app:st",
        "XAUTOCLAIM app:st grp c2 0 0-0",
        "XACK app:st grp 1-1",
        "SET app:e v EXAT 4102444800",
        "EXPIRETIME app:e",
        "PERSIST app:e",
        "EXPIRE app:e 100 GT",
    ])
    .await;
    // Long enough to be stored compressed when compression is on: APPEND
    // and SETRANGE then read, patch and write back under versioning too.
    let long = "abcdefgh".repeat(300);
    pair.check(&[b"SET", b"app:big", long.as_bytes()]).await;
    pair.lines(&[
        "APPEND app:big tail",
        "SETRANGE app:big 3 XY",
        "STRLEN app:big",
        "GETRANGE app:big 0 9",
        "GETRANGE app:big -6 -1",
    ])
    .await;
    pair.check(&[b"GET", b"app:big"]).await;
    for script in [
        &b"return redis.call('GET', KEYS[1])"[..],
        b"return redis.call('INCRBY', KEYS[2], 5)",
        b"return redis.call('EXISTS', KEYS[1], KEYS[2])",
    ] {
        pair.check(&[b"EVAL", script, b"2", b"app:s1", b"app:n"]).await;
    }
    pair.check(&[b"EVAL_RO", b"return redis.call('GET', KEYS[1])", b"1", b"app:s1"])
        .await;
    pair.check(&[
        b"FUNCTION",
        b"LOAD",
        b"#!lua name=t\nredis.register_function('g', function(k) return redis.call('GET', k[1]) end)",
    ])
    .await;
    pair.lines(&["FCALL g 1 app:s1", "FCALL g 1 app:nope"]).await;
    pair.lines(&[
        "MULTI",
        "SET app:t 1",
        "INCR app:t",
        "GET plain:none",
        "LPUSH app:t x",
        "BLPOP app:none 0.01",
        "EXEC",
        "MULTI",
        "SET app:t 5",
        "DISCARD",
        "GET app:t",
        "WATCH app:t",
        "MULTI",
        "GET app:t",
        "EXEC",
    ])
    .await;
    // Reply order is Redis's hash order: compared as sets.
    pair.check_unordered("KEYS app:*").await;
    pair.check_unordered("KEYS *").await;
    pair.check_unordered("KEYS app:?1").await;
    pair.check_unordered("KEYS plain:*").await;
    pair.check_unordered("KEYS a[p]p:s*").await;
    let direct = every_key(&mut pair.direct, "app:*").await;
    let proxied = every_key(&mut pair.proxied, "app:*").await;
    assert!(direct.len() > 20, "{direct:?}");
    assert_eq!(proxied, direct);
    assert_eq!(
        every_key(&mut pair.proxied, "*").await,
        every_key(&mut pair.direct, "*").await
    );
    pair.lines(&["DBSIZE", "FLUSHDB", "RANDOMKEY", "SET app:only v", "RANDOMKEY"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_families_match_plain_redis_in_resp2() {
    let mut pair = Pair::new(2, |_| {}).await;
    families(&mut pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_families_match_plain_redis_in_resp3() {
    let mut pair = Pair::new(3, |_| {}).await;
    families(&mut pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_families_match_plain_redis_with_l1_and_compression() {
    let mut pair = Pair::new(2, |config| {
        common::l1_eager(config);
        config.compression.enabled = true;
        config.compression.threshold = 8;
    })
    .await;
    let l1 = pair.proxy.handle().l1().expect("L1 on").clone();
    common::poll_until("L1 to be ready", || l1.ready());
    families(&mut pair).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_the_current_version_and_the_client_never_sees_it() {
    let pair = Pair::new(2, |_| {}).await;
    let (mut proxied, mut direct) = (pair.proxied, RawClient::connect(pair.servers.1.addr()).await);
    assert_eq!(proxied.cmd("SET app:x 1").await, "+OK\r\n");
    assert_eq!(proxied.cmd("SET plain:y 1").await, "+OK\r\n");
    assert_eq!(direct.cmd("EXISTS v2:app:x plain:y app:x").await, ":2\r\n");
    // Subcommands name the key too (Redis would answer nil for a missing one).
    assert!(proxied.cmd("MEMORY USAGE app:x").await.starts_with(':'));
    assert_eq!(proxied.cmd("OBJECT ENCODING app:x").await, "$3\r\nint\r\n");
    assert_eq!(proxied.cmd("KEYS *app*").await, "*1\r\n$5\r\napp:x\r\n");
    // A key of a version the namespace does not serve is invisible.
    assert_eq!(direct.cmd("SET v7:app:z 1").await, "+OK\r\n");
    assert_eq!(proxied.cmd("GET app:z").await, "$-1\r\n");
    assert!(!proxied.cmd("KEYS *").await.contains("z"));
    // A SORT pattern whose namespace depends on the element is refused.
    let refused = proxied.cmd("SORT app:l BY *:w").await;
    assert!(refused.starts_with("-ERR auracache: the SORT pattern"), "{refused}");
}

/// Seeds every data type directly as v1, with a TTL.
async fn seed_v1(direct: &mut RawClient) {
    for line in [
        "SET v1:app:str hello",
        "HSET v1:app:hash f v g w",
        "RPUSH v1:app:list a b c",
        "SADD v1:app:set x y",
        "ZADD v1:app:zset 1 a 2 b",
        "XADD v1:app:stream 1-1 f v",
    ] {
        let reply = direct.cmd(line).await;
        assert!(!reply.starts_with('-'), "{line}: {reply}");
        let key = line.split_whitespace().nth(1).unwrap();
        assert_eq!(direct.cmd(&format!("PEXPIRE {key} 500000")).await, ":1\r\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_versions_are_served_and_migrated_with_their_type_and_ttl() {
    let pair = Pair::new(2, |_| {}).await;
    let (mut proxied, mut direct) = (pair.proxied, RawClient::connect(pair.servers.1.addr()).await);
    seed_v1(&mut direct).await;
    let reads = [
        ("GET app:str", "$5\r\nhello\r\n"),
        ("HGETALL app:hash", "*4\r\n$1\r\nf\r\n$1\r\nv\r\n$1\r\ng\r\n$1\r\nw\r\n"),
        ("LRANGE app:list 0 -1", "*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"),
        ("SCARD app:set", ":2\r\n"),
        ("ZRANGE app:zset 0 -1", "*2\r\n$1\r\na\r\n$1\r\nb\r\n"),
        ("XLEN app:stream", ":1\r\n"),
    ];
    for (line, expected) in reads {
        assert_eq!(proxied.cmd(line).await, expected, "{line}");
    }
    for (key, kind) in [
        ("str", "string"),
        ("hash", "hash"),
        ("list", "list"),
        ("set", "set"),
        ("zset", "zset"),
        ("stream", "stream"),
    ] {
        assert_eq!(direct.cmd(&format!("TYPE v2:app:{key}")).await, format!("+{kind}\r\n"));
        let ttl: i64 = direct.cmd(&format!("PTTL v2:app:{key}")).await[1..]
            .trim()
            .parse()
            .unwrap();
        assert!((1..=500_000).contains(&ttl), "{key}: the TTL is kept ({ttl})");
        // Copied, not moved: the old version stays (delete_old_on_migrate off).
        assert_eq!(direct.cmd(&format!("EXISTS v1:app:{key}")).await, ":1\r\n");
    }
    let status = proxied.cmd("PROXY VERSION STATUS app").await;
    for field in [
        "version:2",
        "fallback_versions:1",
        "keys_migrated:6",
        "fallback_hits:6",
        "keys_v2:6",
        "keys_v1:6",
    ] {
        assert!(status.contains(field), "{field} in {status}");
    }
    // Written now: the older version is unlinked, so it cannot come back.
    assert_eq!(proxied.cmd("SET app:str new PX 50").await, "+OK\r\n");
    assert_eq!(direct.cmd("EXISTS v1:app:str").await, ":0\r\n");
    proxied.cmd_until("GET app:str", "$-1\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_keys_never_come_back_from_an_old_version() {
    let pair = Pair::new(2, |_| {}).await;
    let (mut proxied, mut direct) = (pair.proxied, RawClient::connect(pair.servers.1.addr()).await);
    seed_v1(&mut direct).await;
    // Deleted before ever being read: every version goes.
    assert_eq!(proxied.cmd("DEL app:str app:hash app:none").await, ":2\r\n");
    assert_eq!(proxied.cmd("UNLINK app:set").await, ":1\r\n");
    assert!(proxied.cmd("GETDEL app:zset").await.starts_with("-WRONGTYPE"));
    assert_eq!(proxied.cmd("DEL app:zset").await, ":1\r\n");
    // Emptied by a pop: Redis deletes the key; the old list must not return.
    assert_eq!(
        proxied.cmd("LPOP app:list 3").await,
        "*3\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n"
    );
    for key in ["str", "hash", "set", "zset", "list"] {
        assert_eq!(proxied.cmd(&format!("EXISTS app:{key}")).await, ":0\r\n", "{key}");
        assert_eq!(
            direct.cmd(&format!("EXISTS v1:app:{key} v2:app:{key}")).await,
            ":0\r\n",
            "{key}"
        );
    }
    assert_eq!(proxied.cmd("GET app:str").await, "$-1\r\n");
    assert_eq!(proxied.cmd("LRANGE app:list 0 -1").await, "*0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moving_migration_leaves_no_old_version() {
    let pair = Pair::new(2, |config| {
        config.namespaces.get_mut("app").unwrap().delete_old_on_migrate = Some(true);
    })
    .await;
    let (mut proxied, mut direct) = (pair.proxied, RawClient::connect(pair.servers.1.addr()).await);
    seed_v1(&mut direct).await;
    assert_eq!(proxied.cmd("GET app:str").await, "$5\r\nhello\r\n");
    assert_eq!(direct.cmd("EXISTS v1:app:str v2:app:str").await, ":1\r\n");
    assert_eq!(direct.cmd("EXISTS v2:app:str").await, ":1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrate_on_read_old_versions_are_read_in_place() {
    let pair = Pair::new(2, |config| {
        common::l1_eager(config);
        config.namespaces.get_mut("app").unwrap().migrate_on_read = Some(false);
    })
    .await;
    let (mut proxied, mut direct) = (pair.proxied, RawClient::connect(pair.servers.1.addr()).await);
    seed_v1(&mut direct).await;
    assert_eq!(proxied.cmd("GET app:str").await, "$5\r\nhello\r\n");
    assert_eq!(proxied.cmd("GET app:str").await, "$5\r\nhello\r\n");
    assert_eq!(
        proxied.cmd("MGET app:str app:none").await,
        "*2\r\n$5\r\nhello\r\n$-1\r\n"
    );
    assert_eq!(proxied.cmd("HGET app:hash f").await, "$1\r\nv\r\n");
    assert_eq!(direct.cmd("EXISTS v2:app:str v2:app:hash").await, ":0\r\n");
    let status = proxied.cmd("PROXY VERSION STATUS app").await;
    assert!(status.contains("keys_migrated:0"), "{status}");
    assert!(status.contains("fallback_hits:4"), "{status}");
    // A write still moves the key to the current version.
    assert_eq!(proxied.cmd("APPEND app:str !").await, ":6\r\n");
    assert_eq!(direct.cmd("EXISTS v1:app:str").await, ":0\r\n");
    assert_eq!(direct.cmd("GET v2:app:str").await, "$6\r\nhello!\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_exactly_the_old_versions() {
    let pair = Pair::new(2, |_| {}).await;
    let (mut proxied, mut direct) = (pair.proxied, RawClient::connect(pair.servers.1.addr()).await);
    for i in 0..700 {
        for version in [0, 1, 2, 3] {
            direct.cmd(&format!("SET v{version}:app:k{i} x")).await;
        }
        direct.cmd(&format!("SET v0:other:k{i} x")).await;
    }
    direct.cmd("SET app:raw x").await;
    direct.cmd("SET plain x").await;
    let reply = proxied.cmd("PROXY VERSION CLEANUP app").await;
    assert!(reply.contains("removed 700 keys"), "{reply}");
    assert_eq!(direct.cmd("DBSIZE").await, ":2802\r\n");
    assert_eq!(
        direct.cmd("EXISTS v0:app:k5 v1:app:k5 v2:app:k5 v3:app:k5").await,
        ":3\r\n"
    );
    let reply = proxied.cmd("PROXY VERSION CLEANUP app KEEP 1").await;
    assert!(reply.contains("removed 700 keys"), "{reply}");
    assert_eq!(direct.cmd("EXISTS v1:app:k5 v2:app:k5 v3:app:k5").await, ":2\r\n");
    assert_eq!(direct.cmd("EXISTS v0:other:k5 app:raw plain").await, ":3\r\n");
    let status = proxied.cmd("PROXY VERSION STATUS").await;
    for field in [
        "keys_v2:700",
        "keys_v1:0",
        "keys_v3:700 (not served)",
        "cleanup:done",
        "cleanup_removed:700",
    ] {
        assert!(status.contains(field), "{field} in {status}");
    }
    assert!(
        proxied
            .cmd("PROXY VERSION CLEANUP plain")
            .await
            .starts_with("-ERR namespace 'plain' is not versioned")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_entries_are_client_keys_and_direct_writes_invalidate_them() {
    let pair = Pair::new(2, common::l1_eager).await;
    let l1 = pair.proxy.handle().l1().expect("L1 on").clone();
    common::poll_until("L1 to be ready", || l1.ready());
    let (mut proxied, mut direct) = (pair.proxied, RawClient::connect(pair.servers.1.addr()).await);
    assert_eq!(proxied.cmd("SET app:c one").await, "+OK\r\n");
    common::poll_until_async("app:c to be cached", || {
        let l1 = l1.clone();
        let addr = pair.proxy.addr();
        async move {
            let mut client = RawClient::connect(addr).await;
            client.cmd("GET app:c").await;
            l1.store
                .hit_at(0, b"app:c", &auracache::cache::Shape::String, std::time::Instant::now())
                .is_some()
        }
    })
    .await;
    assert_eq!(direct.cmd("SET v2:app:c two").await, "+OK\r\n");
    proxied.cmd_until("GET app:c", "$3\r\ntwo\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_pops_and_keyspace_notifications_name_client_keys() {
    let pair = Pair::new(2, |_| {}).await;
    let mut direct = RawClient::connect(pair.servers.1.addr()).await;
    assert_eq!(direct.cmd("CONFIG SET notify-keyspace-events KEA").await, "+OK\r\n");
    let mut waiter = pair.proxy.raw().await;
    waiter.send_command(&[b"BLPOP", b"app:q", b"5"]).await;
    let mut subscriber = pair.proxy.raw().await;
    assert_eq!(
        subscriber.cmd("SUBSCRIBE __keyspace@0__:app:q").await,
        "*3\r\n$9\r\nsubscribe\r\n$20\r\n__keyspace@0__:app:q\r\n:1\r\n"
    );
    let mut events = pair.proxy.raw().await;
    let confirmed = events.cmd("PSUBSCRIBE __keyevent@0__:rpush").await;
    assert!(confirmed.contains("__keyevent@0__:rpush"), "{confirmed}");
    common::poll_until_async("BLPOP to block in Redis", || {
        let addr = pair.servers.1.addr();
        async move {
            let mut probe = RawClient::connect(addr).await;
            probe.cmd("INFO clients").await.contains("blocked_clients:1")
        }
    })
    .await;
    let mut writer = pair.proxy.raw().await;
    assert_eq!(writer.cmd("RPUSH app:q v").await, ":1\r\n");
    assert_eq!(
        String::from_utf8_lossy(&waiter.read_reply().await),
        "*2\r\n$5\r\napp:q\r\n$1\r\nv\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&subscriber.read_reply().await),
        "*3\r\n$7\r\nmessage\r\n$20\r\n__keyspace@0__:app:q\r\n$5\r\nrpush\r\n"
    );
    assert_eq!(
        String::from_utf8_lossy(&events.read_reply().await),
        "*4\r\n$8\r\npmessage\r\n$20\r\n__keyevent@0__:rpush\r\n$20\r\n__keyevent@0__:rpush\r\n$5\r\napp:q\r\n"
    );
}

/// One writer's keys and what it last had acknowledged for each.
type Model = HashMap<String, Option<String>>;

/// Several clients write, delete and read their own keys while the
/// deployment moves from a v1 proxy to a v2 proxy (fallback v1): every
/// read must see the last acknowledged write, and a deleted key must stay
/// deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_bump_under_load_loses_no_write_and_resurrects_no_key() {
    let server = RedisServer::start();
    let old = Proxy::start_with(&server.url(), |config| {
        common::l1_eager(config);
        versioned(config, 1, &[]);
    })
    .await;
    let current = Arc::new(RwLock::new(old.addr()));
    let bumped = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for writer in 0..4 {
        let (current, bumped) = (current.clone(), bumped.clone());
        tasks.push(tokio::spawn(async move {
            let mut model = Model::new();
            let mut client = RawClient::connect(*current.read().await).await;
            let mut state = writer as u64 + 1;
            let mut operations = 0;
            let mut after_bump = 0;
            while after_bump < 300 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let key = format!("app:w{writer}:{}", state % 16);
                let line = match state % 5 {
                    0 => format!("DEL {key}"),
                    1 | 2 => format!("SET {key} {operations}"),
                    _ => format!("GET {key}"),
                };
                // A proxy going away mid-command: reconnect to the current
                // one and repeat (every operation here is idempotent).
                let reply = loop {
                    match tokio::time::timeout(common::DEADLINE, client.try_cmd(&line)).await {
                        Ok(Some(reply)) => break reply,
                        _ => client = RawClient::connect(*current.read().await).await,
                    }
                };
                if line.starts_with("GET") {
                    let expected = match model.get(&key).cloned().flatten() {
                        Some(value) => format!("${}\r\n{value}\r\n", value.len()),
                        None => "$-1\r\n".to_string(),
                    };
                    assert_eq!(reply, expected, "{line} after {operations} operations");
                } else if line.starts_with("SET") {
                    assert_eq!(reply, "+OK\r\n");
                    model.insert(key, Some(operations.to_string()));
                } else {
                    model.insert(key, None);
                }
                operations += 1;
                if bumped.load(Ordering::Acquire) {
                    after_bump += 1;
                }
            }
            operations
        }));
    }
    // Let the old deployment take some load, then replace it.
    common::poll_until_async("load through the v1 proxy", || {
        let addr = server.addr();
        async move {
            let mut probe = RawClient::connect(addr).await;
            let reply = probe.cmd("INFO commandstats").await;
            reply
                .lines()
                .find(|line| line.starts_with("cmdstat_set:"))
                .and_then(|line| line.split(['=', ',']).nth(1)?.parse::<u64>().ok())
                .is_some_and(|calls| calls > 200)
        }
    })
    .await;
    let new = Proxy::start_with(&server.url(), |config| {
        common::l1_eager(config);
        versioned(config, 2, &[1]);
    })
    .await;
    wait_for_table(&new);
    {
        let mut address = current.write().await;
        *address = new.addr();
        // The old proxy drains what it was sent, then closes its clients.
        old.shutdown().await;
    }
    bumped.store(true, Ordering::Release);
    let mut total = 0;
    for task in tasks {
        total += task.await.expect("a writer saw only acknowledged writes");
    }
    eprintln!("version bump under load: {total} operations, all reads as acknowledged");
    assert!(total > 1200, "{total} operations");
    let status = new.raw().await.cmd("PROXY VERSION STATUS app").await;
    assert!(!status.contains("keys_migrated:0\r\n"), "keys were migrated: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reads_of_an_old_key_migrate_it_once() {
    let pair = Pair::new(2, |config| config.pool.size = 4).await;
    let mut direct = RawClient::connect(pair.servers.1.addr()).await;
    for round in 0..5 {
        let key = format!("app:hot{round}");
        assert_eq!(direct.cmd(&format!("HSET v1:{key} f v g w")).await, ":2\r\n");
        let mut readers = Vec::new();
        for _ in 0..8 {
            let (addr, key) = (pair.proxy.addr(), key.clone());
            readers.push(tokio::spawn(async move {
                let mut client = RawClient::connect(addr).await;
                client.cmd(&format!("HGETALL {key}")).await
            }));
        }
        for reader in readers {
            assert_eq!(
                reader.await.unwrap(),
                "*4\r\n$1\r\nf\r\n$1\r\nv\r\n$1\r\ng\r\n$1\r\nw\r\n"
            );
        }
        assert_eq!(direct.cmd(&format!("HLEN v2:{key}")).await, ":2\r\n");
    }
    let status = pair.proxy.raw().await.cmd("PROXY VERSION STATUS app").await;
    assert!(
        status.contains("keys_migrated:5\r\n"),
        "one migration per key: {status}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_estimates_large_databases_by_sampling() {
    let pair = Pair::new(2, |_| {}).await;
    let mut direct = RawClient::connect(pair.servers.1.addr()).await;
    // 6,000 old keys among 18,000: a third of what RANDOMKEY draws.
    for chunk in 0..18 {
        let mut args: Vec<Vec<u8>> = vec![b"MSET".to_vec()];
        for i in 0..1000 {
            let key = match chunk % 3 {
                0 => format!("v1:app:k{chunk}-{i}"),
                _ => format!("plain:k{chunk}-{i}"),
            };
            args.push(key.into_bytes());
            args.push(b"x".to_vec());
        }
        let args: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        assert_eq!(direct.command(&args).await, b"+OK\r\n");
    }
    let status = pair.proxy.raw().await.cmd("PROXY VERSION STATUS app").await;
    assert!(
        status.contains("keys_counted:estimated from 400 samples of 18000 keys"),
        "{status}"
    );
    let estimate: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("keys_v1:"))
        .and_then(|count| count.parse().ok())
        .expect("keys_v1 in STATUS");
    // Binomial(400, 1/3): 3,000..9,000 is beyond six standard deviations.
    assert!((3_000..=9_000).contains(&estimate), "{estimate} in {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_piped_resp3_client_reads_and_is_told_with_client_keys() {
    let pair = Pair::new(3, |_| {}).await;
    let mut direct = RawClient::connect(pair.servers.1.addr()).await;
    assert_eq!(direct.cmd("CONFIG SET notify-keyspace-events KEA").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET v1:app:old value").await, "+OK\r\n");
    let mut client = pair.proxied;
    let confirmed = client.cmd("SUBSCRIBE __keyspace@0__:app:new").await;
    assert_eq!(
        confirmed,
        ">3\r\n$9\r\nsubscribe\r\n$22\r\n__keyspace@0__:app:new\r\n:1\r\n"
    );
    // Piped now: its GET is rewritten, the old version migrated first.
    assert_eq!(client.cmd("GET app:old").await, "$5\r\nvalue\r\n");
    assert_eq!(direct.cmd("EXISTS v2:app:old").await, ":1\r\n");
    assert_eq!(direct.cmd("SET v2:app:new 1").await, "+OK\r\n");
    assert_eq!(
        String::from_utf8_lossy(&client.read_reply().await),
        ">3\r\n$7\r\nmessage\r\n$22\r\n__keyspace@0__:app:new\r\n$3\r\nset\r\n"
    );
    // Its own tracking of the namespace's prefix covers the stored names of
    // every served version, and names the client's keys.
    let mut tracked = pair.proxy.raw().await;
    assert!(tracked.cmd("HELLO 3").await.starts_with('%'));
    assert_eq!(tracked.cmd("CLIENT TRACKING ON BCAST PREFIX app:").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET v1:app:moved x").await, "+OK\r\n");
    let mut writer = pair.proxy.raw().await;
    assert_eq!(writer.cmd("SET app:moved y").await, "+OK\r\n");
    let push = String::from_utf8_lossy(&tracked.read_reply().await).into_owned();
    assert_eq!(push, ">2\r\n$10\r\ninvalidate\r\n*1\r\n$9\r\napp:moved\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_values_of_an_old_version_migrate_and_stay_transparent() {
    let server = RedisServer::start();
    let compressed = |config: &mut Config| {
        config.compression.enabled = true;
        config.compression.threshold = 64;
    };
    let old = Proxy::start_with(&server.url(), |config| {
        compressed(config);
        versioned(config, 1, &[]);
    })
    .await;
    wait_for_table(&old);
    let long = "abcdefghij".repeat(100);
    let mut client = old.raw().await;
    assert_eq!(client.command(&[b"SET", b"app:doc", long.as_bytes()]).await, b"+OK\r\n");
    old.shutdown().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let stored = direct.command(&[b"GET", b"v1:app:doc"]).await;
    assert!(stored.len() < 200, "stored compressed under v1: {} bytes", stored.len());
    let new = Proxy::start_with(&server.url(), |config| {
        compressed(config);
        versioned(config, 2, &[1]);
    })
    .await;
    wait_for_table(&new);
    let mut client = new.raw().await;
    assert_eq!(client.cmd("STRLEN app:doc").await, ":1000\r\n");
    assert_eq!(client.cmd("APPEND app:doc !").await, ":1001\r\n");
    let expected = format!("$1001\r\n{long}!\r\n");
    assert_eq!(client.cmd("GET app:doc").await, expected);
    assert_eq!(direct.cmd("EXISTS v1:app:doc").await, ":0\r\n", "the write moved it");
    let stored = direct.command(&[b"GET", b"v2:app:doc"]).await;
    assert!(stored.len() < 200, "stored compressed under v2: {} bytes", stored.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_the_table_lacks_is_looked_up_before_it_is_forwarded() {
    let pair = Pair::new(2, |_| {}).await;
    let versions = pair.proxy.handle().versions().unwrap().clone();
    // As if GET and MULTI-queued HSET came with a module loaded after the
    // table was read: the table knows only PING.
    let only_ping = b"*1\r\n*6\r\n$4\r\nping\r\n:-1\r\n*1\r\n+fast\r\n:0\r\n:0\r\n:0\r\n";
    versions.set_table(auracache::keys::table::KeyTable::from_command_reply(only_ping).unwrap());
    let (mut proxied, mut direct) = (pair.proxied, RawClient::connect(pair.servers.1.addr()).await);
    assert_eq!(proxied.cmd("SET app:k v").await, "+OK\r\n");
    assert_eq!(proxied.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(proxied.cmd("HSET app:h f v").await, "+QUEUED\r\n");
    assert_eq!(proxied.cmd("EXEC").await, "*1\r\n:1\r\n");
    assert_eq!(direct.cmd("EXISTS v2:app:k v2:app:h app:k app:h").await, ":2\r\n");
    // Unknown to Redis too: Redis's own error.
    assert!(
        proxied
            .cmd("NOSUCH app:k")
            .await
            .starts_with("-ERR unknown command 'NOSUCH'")
    );
}

/// A namespace getting its first version keeps its existing keys: with
/// `fallback_unversioned`, their own names are the oldest fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_version_keeps_the_unversioned_keys() {
    let pair = Pair::new(2, |config| {
        let app = config.namespaces.get_mut("app").unwrap();
        app.version = Some(1);
        app.fallback_versions = Vec::new();
        app.fallback_unversioned = Some(true);
    })
    .await;
    let (mut proxied, mut direct) = (pair.proxied, RawClient::connect(pair.servers.1.addr()).await);
    for line in [
        "HSET app:a f v",
        "SET app:b old PX 500000",
        "SET app:c kept",
        "SET other:x 1",
    ] {
        assert!(!direct.cmd(line).await.starts_with('-'), "{line}");
    }
    let mut keys: Vec<String> = proxied
        .cmd("KEYS app:*")
        .await
        .split("\r\n")
        .map(str::to_string)
        .collect();
    keys.sort();
    assert_eq!(keys, ["", "$5", "$5", "$5", "*3", "app:a", "app:b", "app:c"]);
    assert_eq!(proxied.cmd("HGETALL app:a").await, "*2\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(direct.cmd("EXISTS v1:app:a app:a").await, ":2\r\n", "copied to v1");
    let ttl: i64 = direct.cmd("PTTL v1:app:a").await[1..].trim().parse().unwrap();
    assert_eq!(ttl, -1, "no TTL, as the original");
    assert_eq!(proxied.cmd("GET app:b").await, "$3\r\nold\r\n");
    assert_eq!(proxied.cmd("SET app:b new").await, "+OK\r\n");
    assert_eq!(
        direct.cmd("EXISTS app:b").await,
        ":0\r\n",
        "a write unlinks the old name"
    );
    assert_eq!(proxied.cmd("DEL app:a").await, ":1\r\n");
    assert_eq!(direct.cmd("EXISTS app:a v1:app:a").await, ":0\r\n");
    let status = proxied.cmd("PROXY VERSION STATUS app").await;
    for field in ["fallback_unversioned:yes", "keys_v1:1", "keys_unversioned:1"] {
        assert!(status.contains(field), "{field} in {status}");
    }
    let reply = proxied.cmd("PROXY VERSION CLEANUP app KEEP 1").await;
    assert!(reply.contains("removed 1 keys"), "{reply}");
    assert_eq!(direct.cmd("EXISTS app:c other:x v1:app:b").await, ":2\r\n");
    assert_eq!(proxied.cmd("GET app:c").await, "$-1\r\n", "cleaned up");
}

/// Reads of a key known to have left its old versions behind carry no
/// migration script; SWAPDB through the proxy forgets what it knew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settled_keys_are_read_without_the_migration_script() {
    let pair = Pair::new(2, |_| {}).await;
    let (mut proxied, mut direct) = (pair.proxied, RawClient::connect(pair.servers.1.addr()).await);
    assert_eq!(direct.cmd("SET v1:app:old x").await, "+OK\r\n");
    assert_eq!(proxied.cmd("SET app:new y").await, "+OK\r\n");
    assert_eq!(proxied.cmd("GET app:old").await, "$1\r\nx\r\n");
    let scripts = common::redis_calls(&mut direct, "eval").await;
    for _ in 0..5 {
        assert_eq!(proxied.cmd("GET app:old").await, "$1\r\nx\r\n");
        assert_eq!(proxied.cmd("GET app:new").await, "$1\r\ny\r\n");
    }
    assert_eq!(
        common::redis_calls(&mut direct, "eval").await,
        scripts,
        "no script for settled keys"
    );
    // A key absent from every version is looked for each time.
    proxied.cmd("GET app:none").await;
    assert_eq!(common::redis_calls(&mut direct, "eval").await, scripts + 1);
    // After SWAPDB the database holds other data: looked at again.
    assert_eq!(proxied.cmd("SWAPDB 0 1").await, "+OK\r\n");
    assert_eq!(proxied.cmd("SWAPDB 0 1").await, "+OK\r\n");
    assert_eq!(proxied.cmd("GET app:new").await, "$1\r\ny\r\n");
    assert_eq!(common::redis_calls(&mut direct, "eval").await, scripts + 2);
}
