//! Redis Cluster as the upstream: a real local cluster of redis-server
//! processes (`tests/common/cluster.rs`), the proxy in front of it
//! (`redis-cluster://`), and its replies compared with what a single Redis
//! answers for the same commands, or, where a cluster answers otherwise
//! (CROSSSLOT), with what the cluster itself answers.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cluster::RedisCluster;
use common::{DEADLINE, Proxy, RawClient, RedisServer};

/// A client of a single Redis and a client of the proxy in front of a
/// cluster; the same commands must get the same replies.
struct Pair {
    single: RawClient,
    proxied: RawClient,
    _proxy: Proxy,
    cluster: RedisCluster,
    _single: RedisServer,
}

impl Pair {
    async fn new(protocol: u8, l1: bool) -> Pair {
        let cluster = RedisCluster::start(3, 0);
        let single = RedisServer::start();
        let proxy = Proxy::start_with(&cluster.url(), |config| {
            config.memory_cache.enabled = false;
            if l1 {
                common::l1_eager(config);
            }
        })
        .await;
        if let Some(level) = proxy.handle().l1() {
            common::poll_until("L1 to be ready", || level.ready());
        }
        let mut pair = Pair {
            single: RawClient::connect(single.addr()).await,
            proxied: proxy.raw().await,
            _proxy: proxy,
            cluster,
            _single: single,
        };
        if protocol == 3 {
            assert!(pair.single.cmd("HELLO 3").await.starts_with('%'));
            assert!(pair.proxied.cmd("HELLO 3").await.starts_with('%'));
        }
        pair
    }

    async fn check(&mut self, args: &[&[u8]]) -> Vec<u8> {
        let single = self.single.command(args).await;
        let proxied = self.proxied.command(args).await;
        assert_eq!(
            String::from_utf8_lossy(&proxied),
            String::from_utf8_lossy(&single),
            "reply to {:?} differs (left: proxy before the cluster, right: a single Redis)",
            args.iter().map(|a| String::from_utf8_lossy(a)).collect::<Vec<_>>()
        );
        single
    }

    /// Sends `commands` as one pipeline to both sides and requires the
    /// same replies, in order.
    async fn pipeline(&mut self, commands: &[String], what: &str) {
        let mut wire = Vec::new();
        for command in commands {
            let args: Vec<&[u8]> = command.split_whitespace().map(str::as_bytes).collect();
            wire.extend(common::encode(&args));
        }
        self.single.send(&wire).await;
        self.proxied.send(&wire).await;
        for command in commands {
            let single = self.single.read_reply().await;
            let proxied = self.proxied.read_reply().await;
            assert_eq!(
                String::from_utf8_lossy(&proxied),
                String::from_utf8_lossy(&single),
                "{command} {what}"
            );
        }
    }

    async fn lines(&mut self, lines: &[&str]) {
        for line in lines {
            let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
            self.check(&args).await;
        }
    }
}

/// Keys that land on every master of `cluster`, `per_master` each.
fn keys_on_every_master(cluster: &RedisCluster, prefix: &str, per_master: usize) -> Vec<String> {
    let masters = cluster.masters();
    let mut by_master: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    let mut index = 0;
    while by_master.len() < masters.len() || by_master.values().any(|keys| keys.len() < per_master) {
        let key = format!("{prefix}{index}");
        index += 1;
        let owner = cluster.owner_of_slot(RedisCluster::slot_of(key.as_bytes()));
        let keys = by_master.entry(owner).or_default();
        if keys.len() < per_master {
            keys.push(key);
        }
    }
    // Interleaved, so neighbours are on different masters.
    let mut out = Vec::new();
    for round in 0..per_master {
        for keys in by_master.values() {
            out.push(keys[round].clone());
        }
    }
    out
}

async fn command_families(pair: &mut Pair) {
    // Single-key commands of every type; multi-key ones inside one hash
    // tag, as a cluster's clients write them.
    pair.lines(&[
        "SET s1 hello",
        "GET s1",
        "GET missing",
        "SET s1 world XX GET",
        "APPEND s1 !!",
        "STRLEN s1",
        "GETRANGE s1 1 3",
        "INCRBY n 41",
        "INCRBYFLOAT f 1.5",
        "GETDEL n",
        "SETBIT b 7 1",
        "BITCOUNT b",
        "TYPE s1",
        "MSETNX {t}m1 z {t}m9 z",
        "RENAME {t}m1 {t}m2",
        "LCS {t}m2 {t}m9",
        "HSET h f1 v1 f2 v2 f3 3",
        "HGET h f1",
        "HMGET h f1 nope f2",
        "HGETALL h",
        "HINCRBY h f3 4",
        "HDEL h f2",
        "RPUSH {l}a a b c d e",
        "LMOVE {l}a {l}b LEFT RIGHT",
        "LRANGE {l}a 0 -1",
        "LRANGE {l}b 0 -1",
        "BLPOP {l}b 0.01",
        "BLPOP {l}b 0.01",
        "SADD {s}1 3 1 2",
        "SADD {s}2 2 3 4",
        "SINTER {s}1 {s}2",
        "SUNIONSTORE {s}3 {s}1 {s}2",
        "SCARD {s}3",
        "ZADD z 1 a 2 b 3.5 c",
        "ZRANGE z 0 -1 WITHSCORES",
        "ZINCRBY z 2 a",
        "ZPOPMIN z",
        "XADD st 1-1 f v",
        "XRANGE st - +",
        "XREAD COUNT 10 STREAMS st 0",
        "SET e v EXAT 4102444800",
        "EXPIRETIME e",
        "PERSIST e",
        "EVAL return 1 0",
        "PING",
        "ECHO hello",
        "NOSUCHCOMMAND a b",
        "GET",
        "LPUSH s1 x",
    ])
    .await;
    let large = vec![b'x'; 200_000];
    pair.check(&[b"SET", b"large", &large]).await;
    pair.check(&[b"GET", b"large"]).await;
    pair.check(&[b"EVAL", b"return redis.call('INCRBY', KEYS[1], 5)", b"1", b"cnt"])
        .await;
    pair.lines(&[
        "MULTI",
        "SET {t}x 1",
        "INCR {t}x",
        "LPUSH {t}x y",
        "EXEC",
        "MULTI",
        "SET {t}x 5",
        "DISCARD",
        "GET {t}x",
        "EXEC",
        "DISCARD",
        "MULTI",
        "EXEC",
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_through_the_cluster_match_a_single_redis_in_resp2_and_resp3() {
    for protocol in [2, 3] {
        let mut pair = Pair::new(protocol, false).await;
        command_families(&mut pair).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_commands_across_masters_are_split_and_merged_as_one_redis_answers() {
    let mut pair = Pair::new(2, false).await;
    let keys = keys_on_every_master(&pair.cluster, "mk:", 3);
    let masters: BTreeSet<u16> = keys
        .iter()
        .map(|key| pair.cluster.owner_of_slot(RedisCluster::slot_of(key.as_bytes())))
        .collect();
    assert_eq!(masters.len(), 3, "the keys span every master");
    let joined = keys.join(" ");
    let pairs: String = keys.iter().map(|key| format!("{key} v-{key} ")).collect();
    let first_half = keys[..4].join(" ");
    pair.lines(&[
        &format!("MGET {joined} nope"),
        &format!("MSET {pairs}"),
        &format!("MGET {joined} nope {joined}"),
        &format!("EXISTS {joined} nope {first_half}"),
        &format!("TOUCH {joined} nope"),
        &format!("DEL {first_half} nope"),
        &format!("MGET {joined}"),
        &format!("UNLINK {joined}"),
        &format!("EXISTS {joined}"),
    ])
    .await;
    // The same in one pipeline, replies in order.
    let commands = [
        format!("MSET {pairs}"),
        format!("MGET {joined}"),
        format!("DEL {first_half}"),
        format!("GET {}", keys[5]),
        format!("EXISTS {joined}"),
    ];
    pair.pipeline(&commands, "in a pipeline").await;
    // A wrong type in one master's part: the error, as Redis gives it.
    pair.lines(&[&format!("LPUSH {} x", keys[2]), &format!("MGET {joined}")])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_scan_dbsize_and_flushes_cover_every_master() {
    let mut pair = Pair::new(2, false).await;
    let keys = keys_on_every_master(&pair.cluster, "fan:", 20);
    for key in &keys {
        pair.lines(&[&format!("SET {key} v")]).await;
    }
    pair.lines(&["DBSIZE"]).await;
    let sorted = |reply: String| {
        let mut items: Vec<String> = reply
            .split("\r\n")
            .filter(|line| !line.is_empty() && !line.starts_with(['*', '$']))
            .map(str::to_string)
            .collect();
        items.sort();
        items
    };
    let single = sorted(pair.single.cmd("KEYS fan:*").await);
    assert_eq!(single.len(), 60);
    assert_eq!(sorted(pair.proxied.cmd("KEYS fan:*").await), single);
    // SCAN visits every key of every master exactly once, with any COUNT.
    for count in [1, 7, 1000] {
        let mut cursor = "0".to_string();
        let mut seen = Vec::new();
        let mut calls = 0;
        loop {
            let reply = pair
                .proxied
                .cmd(&format!("SCAN {cursor} MATCH fan:* COUNT {count}"))
                .await;
            let mut lines = reply.split("\r\n");
            assert_eq!(lines.next(), Some("*2"), "{reply}");
            lines.next();
            cursor = lines.next().expect("cursor").to_string();
            seen.extend(
                lines
                    .skip(1)
                    .filter(|line| !line.is_empty() && !line.starts_with('$'))
                    .map(str::to_string),
            );
            calls += 1;
            assert!(calls < 10_000, "SCAN never ended");
            if cursor == "0" {
                break;
            }
        }
        seen.sort();
        assert_eq!(seen, single, "SCAN COUNT {count} visits every key once");
    }
    let random = pair.proxied.cmd("RANDOMKEY").await;
    assert!(random.contains("fan:"), "{random}");
    pair.lines(&[
        "FLUSHALL",
        "DBSIZE",
        "RANDOMKEY",
        "KEYS *",
        "SET after 1",
        "FLUSHDB",
        "DBSIZE",
    ])
    .await;
    for port in pair.cluster.masters() {
        assert_eq!(pair.cluster.cli(port, &["DBSIZE"]), "0", "master {port} was flushed");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_slot_commands_get_the_clusters_own_crossslot_error() {
    let pair = Pair::new(2, false).await;
    let mut proxied = pair.proxied;
    let keys = keys_on_every_master(&pair.cluster, "x:", 1);
    let (a, b) = (&keys[0], &keys[1]);
    for command in [
        format!("RENAME {a} {b}"),
        format!("SUNIONSTORE {a} {a} {b}"),
        format!("LMOVE {a} {b} LEFT RIGHT"),
        format!("MSETNX {a} 1 {b} 2"),
    ] {
        let args: Vec<&str> = command.split_whitespace().collect();
        let owner = pair.cluster.owner_of_slot(RedisCluster::slot_of(a.as_bytes()));
        let from_cluster = pair.cluster.try_cli(owner, &args).expect_err("the cluster refuses it");
        assert!(
            from_cluster.starts_with("CROSSSLOT"),
            "{command}: the cluster says {from_cluster}"
        );
        assert_eq!(
            proxied.cmd(&command).await,
            format!("-{from_cluster}\r\n"),
            "{command} through the proxy"
        );
    }
    // MSET with a key and no value across slots: the cluster's CROSSSLOT
    // (the proxy's planner once panicked on it and dropped the client),
    // and no pair of it is set.
    let command = format!("MSET {a} 1 {b}");
    let args: Vec<&str> = command.split_whitespace().collect();
    let owner = pair.cluster.owner_of_slot(RedisCluster::slot_of(a.as_bytes()));
    let from_cluster = pair.cluster.try_cli(owner, &args).expect_err("the cluster refuses it");
    assert_eq!(proxied.cmd(&command).await, format!("-{from_cluster}\r\n"), "{command}");
    assert_eq!(
        pair.cluster.direct(&["EXISTS", a]),
        "0",
        "nothing of the refused MSET ran"
    );
    assert_eq!(proxied.cmd("PING").await, "+PONG\r\n", "the client is still served");
    // A transaction spanning masters is refused inside, and so aborted.
    assert_eq!(proxied.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(proxied.cmd(&format!("SET {a} 1")).await, "+QUEUED\r\n");
    assert!(proxied.cmd(&format!("SET {b} 1")).await.starts_with("-CROSSSLOT"));
    assert!(proxied.cmd("EXEC").await.starts_with("-EXECABORT"));
    assert_eq!(
        pair.cluster.direct(&["EXISTS", a]),
        "0",
        "nothing of the aborted transaction ran"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_blocking_commands_and_subscribers_work_on_every_master() {
    let cluster = RedisCluster::start(3, 0);
    let proxy = Proxy::start(&cluster.url()).await;
    let tagged = keys_on_every_master(&cluster, "tag", 1);
    for tag in &tagged {
        // A transaction on the master of its keys' tag.
        let mut client = proxy.raw().await;
        assert_eq!(client.cmd(&format!("WATCH {{{tag}}}w")).await, "+OK\r\n");
        assert_eq!(client.cmd("MULTI").await, "+OK\r\n");
        assert_eq!(client.cmd(&format!("SET {{{tag}}}a 1")).await, "+QUEUED\r\n");
        assert_eq!(client.cmd(&format!("INCR {{{tag}}}b")).await, "+QUEUED\r\n");
        assert_eq!(client.cmd("EXEC").await, "*2\r\n+OK\r\n:1\r\n");
        assert_eq!(cluster.direct(&["GET", &format!("{{{tag}}}a")]), "1");
        // WATCH sees another client's write.
        assert_eq!(client.cmd(&format!("WATCH {{{tag}}}a")).await, "+OK\r\n");
        let mut other = proxy.raw().await;
        assert_eq!(other.cmd(&format!("SET {{{tag}}}a 2")).await, "+OK\r\n");
        assert_eq!(client.cmd("MULTI").await, "+OK\r\n");
        assert_eq!(client.cmd(&format!("SET {{{tag}}}a 3")).await, "+QUEUED\r\n");
        assert_eq!(client.cmd("EXEC").await, "*-1\r\n", "the watched key changed");
        assert_eq!(cluster.direct(&["GET", &format!("{{{tag}}}a")]), "2");
        // A blocked client is woken by a push through another client.
        let mut blocked = proxy.raw().await;
        blocked
            .send_command(&[b"BLPOP", format!("{{{tag}}}q").as_bytes(), b"5"])
            .await;
        common::poll_until_async("the BLPOP to block", || async {
            cluster
                .masters()
                .iter()
                .any(|port| cluster.cli(*port, &["INFO", "clients"]).contains("blocked_clients:1"))
        })
        .await;
        assert_eq!(other.cmd(&format!("RPUSH {{{tag}}}q job")).await, ":1\r\n");
        let key = format!("{{{tag}}}q");
        assert_eq!(
            String::from_utf8_lossy(&blocked.read_reply().await),
            format!("*2\r\n${}\r\n{key}\r\n$3\r\njob\r\n", key.len())
        );
        // After a blocking command, the next command to another master.
        let elsewhere = &tagged[(tagged.iter().position(|t| t == tag).unwrap() + 1) % tagged.len()];
        assert_eq!(blocked.cmd(&format!("SET {{{elsewhere}}}z 1")).await, "+OK\r\n");
        assert_eq!(blocked.cmd(&format!("GET {{{tag}}}a")).await, "$1\r\n2\r\n");
    }
    // SUBSCRIBE hears a PUBLISH made anywhere in the cluster.
    let mut subscriber = proxy.raw().await;
    assert!(subscriber.cmd("SUBSCRIBE news").await.contains("subscribe"));
    for port in cluster.masters() {
        // Each master counts only its own subscribers; the message still
        // travels the cluster bus to every node.
        cluster.cli(port, &["PUBLISH", "news", "hi"]);
        assert_eq!(
            String::from_utf8_lossy(&subscriber.read_reply().await),
            "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$2\r\nhi\r\n"
        );
    }
    // SSUBSCRIBE is on the master of its shard channel, on every master.
    for tag in &tagged {
        let channel = format!("{{{tag}}}chan");
        let mut subscriber = proxy.raw().await;
        let confirmed = subscriber.cmd(&format!("SSUBSCRIBE {channel}")).await;
        assert!(confirmed.contains("ssubscribe"), "{confirmed}");
        let mut publisher = proxy.raw().await;
        assert_eq!(publisher.cmd(&format!("SPUBLISH {channel} hello")).await, ":1\r\n");
        assert_eq!(
            String::from_utf8_lossy(&subscriber.read_reply().await),
            format!(
                "*3\r\n$8\r\nsmessage\r\n${}\r\n{channel}\r\n$5\r\nhello\r\n",
                channel.len()
            )
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_crate_works_through_the_proxy_as_with_one_redis() {
    let cluster = RedisCluster::start(3, 0);
    let proxy = Proxy::start(&cluster.url()).await;
    let mut connection = proxy.client().await;
    let keys = keys_on_every_master(&cluster, "rc:", 4);
    let pairs: Vec<(String, String)> = keys
        .iter()
        .map(|key| (key.clone(), format!("value of {key}")))
        .collect();
    let () = redis::cmd("MSET")
        .arg(&pairs)
        .query_async(&mut connection)
        .await
        .unwrap();
    let values: Vec<String> = redis::cmd("MGET")
        .arg(&keys)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(values, pairs.iter().map(|(_, value)| value.clone()).collect::<Vec<_>>());
    // An atomic pipeline (MULTI ... EXEC in one write) within a tag.
    let (a, b): (i64, i64) = redis::pipe()
        .atomic()
        .incr("{rc}n", 1)
        .incr("{rc}n", 2)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!((a, b), (1, 3));
    let deleted: i64 = redis::cmd("DEL").arg(&keys).query_async(&mut connection).await.unwrap();
    assert_eq!(deleted, keys.len() as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_keys_keep_their_hash_tags_and_migrate_on_one_master() {
    let cluster = RedisCluster::start(3, 0);
    // Version 1's names, as an older deployment wrote them.
    assert_eq!(cluster.direct(&["SET", "v1:{user1}:a", "old-a"]), "OK");
    assert_eq!(cluster.direct(&["SET", "v1:{user1}:b", "old-b"]), "OK");
    let proxy = Proxy::start_with(&cluster.url(), |config| {
        config.versioning.key_pattern = "v{version}:{key}".into();
        let namespace = config.namespaces.entry("{user1}".into()).or_default();
        namespace.version = Some(2);
        namespace.fallback_versions = vec![1];
    })
    .await;
    let mut client = proxy.raw().await;
    // Read through the fallback: migrated to v2 on user1's master.
    assert_eq!(client.cmd("GET {user1}:a").await, "$5\r\nold-a\r\n");
    assert_eq!(cluster.direct(&["GET", "v2:{user1}:a"]), "old-a");
    // Multi-key commands inside the tag work as on one Redis.
    assert_eq!(client.cmd("RENAME {user1}:b {user1}:c").await, "+OK\r\n");
    assert_eq!(
        client.cmd("MGET {user1}:a {user1}:c").await,
        "*2\r\n$5\r\nold-a\r\n$5\r\nold-b\r\n"
    );
    assert_eq!(cluster.direct(&["GET", "v2:{user1}:c"]), "old-b");
    assert_eq!(cluster.direct(&["EXISTS", "v1:{user1}:b"]), "0");
    let slot = RedisCluster::slot_of(b"user1");
    for stored in ["v2:{user1}:a", "v2:{user1}:c", "v1:{user1}:a"] {
        assert_eq!(RedisCluster::slot_of(stored.as_bytes()), slot);
    }
    // The client never sees a version.
    let keys = client.cmd("KEYS *").await;
    assert!(!keys.contains("v2:") && keys.contains("{user1}:a"), "{keys}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn l1_is_invalidated_by_writes_on_every_master_and_dropped_when_a_tracking_connection_is_lost() {
    let cluster = RedisCluster::start(3, 0);
    let proxy = Proxy::start_with(&cluster.url(), common::l1_eager).await;
    let l1 = proxy.handle().l1().expect("L1 on");
    common::poll_until("L1 to be ready", || l1.ready());
    for port in cluster.masters() {
        let clients = cluster.cli(port, &["CLIENT", "LIST"]);
        assert!(
            clients.contains("name=auracache:tracking"),
            "master {port} has a tracking connection"
        );
    }
    let keys = keys_on_every_master(&cluster, "l1:", 2);
    let mut client = proxy.raw().await;
    for key in &keys {
        cluster.direct(&["SET", key, "v1"]);
        assert_eq!(
            common::read_until_cached(&proxy, &mut client, key).await,
            "$2\r\nv1\r\n"
        );
    }
    // A write made straight on each key's master reaches L1.
    for key in &keys {
        cluster.direct(&["SET", key, "v2"]);
        client.cmd_until(&format!("GET {key}"), "$2\r\nv2\r\n").await;
        assert_eq!(
            common::read_until_cached(&proxy, &mut client, key).await,
            "$2\r\nv2\r\n"
        );
    }
    // One master's tracking connection killed: nothing cached is served
    // until every master tracks again, and then what changed meanwhile is seen.
    let victim = cluster.owner_of_slot(RedisCluster::slot_of(keys[0].as_bytes()));
    let list = cluster.cli(victim, &["CLIENT", "LIST"]);
    let id = list
        .lines()
        .find(|line| line.contains("name=auracache:tracking"))
        .and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .expect("the tracking connection's id")
        .to_string();
    assert_eq!(cluster.cli(victim, &["CLIENT", "KILL", "ID", &id]), "1");
    common::poll_until("L1 to stop while tracking is down", || {
        !l1.store.is_accepting() || l1.store.is_empty()
    });
    for key in &keys {
        cluster.direct(&["SET", key, "v3"]);
    }
    common::poll_until("L1 to be ready again", || l1.ready());
    for key in &keys {
        assert_eq!(client.cmd(&format!("GET {key}")).await, "$2\r\nv3\r\n");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_proxies_in_front_of_one_cluster_stay_coherent() {
    let cluster = RedisCluster::start(3, 0);
    let first = Proxy::start_with(&cluster.url(), common::l1_eager).await;
    let second = Proxy::start_with(&cluster.url(), common::l1_eager).await;
    for proxy in [&first, &second] {
        let l1 = proxy.handle().l1().expect("L1 on");
        common::poll_until("L1 to be ready", || l1.ready());
    }
    let keys = keys_on_every_master(&cluster, "two:", 3);
    let mut writer = first.raw().await;
    let mut reader = second.raw().await;
    let mut slowest = Duration::ZERO;
    for round in 0..20 {
        for key in &keys {
            let old = format!("r{round}");
            assert_eq!(writer.cmd(&format!("SET {key} {old}")).await, "+OK\r\n");
            let expected = format!("${}\r\n{old}\r\n", old.len());
            reader.cmd_until(&format!("GET {key}"), &expected).await;
            assert_eq!(common::read_until_cached(&second, &mut reader, key).await, expected);
            let new = format!("w{round}");
            assert_eq!(writer.cmd(&format!("SET {key} {new}")).await, "+OK\r\n");
            let written = Instant::now();
            let expected = format!("${}\r\n{new}\r\n", new.len());
            loop {
                let reply = reader.cmd(&format!("GET {key}")).await;
                if reply == expected {
                    break;
                }
                assert_eq!(
                    reply,
                    format!("${}\r\n{old}\r\n", old.len()),
                    "only the old value, until the invalidation"
                );
                assert!(
                    written.elapsed() < Duration::from_secs(2),
                    "{key} still old 2 s after the write"
                );
            }
            slowest = slowest.max(written.elapsed());
        }
    }
    println!("slowest invalidation between the proxies: {slowest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_and_ask_redirects_are_followed_while_a_slot_migrates() {
    let cluster = RedisCluster::start(3, 0);
    let proxy = Proxy::start_with(&cluster.url(), |config| {
        common::l1_eager(config);
        // Only redirects tell the proxy of the move, not its timer.
        config.pool.cluster_refresh_ms = 600_000;
    })
    .await;
    let l1 = proxy.handle().l1().expect("L1 on");
    common::poll_until("L1 to be ready", || l1.ready());
    let mut client = proxy.raw().await;
    let slot = RedisCluster::slot_of(b"mig");
    let source = cluster.owner_of_slot(slot);
    let target = *cluster.masters().iter().find(|port| **port != source).unwrap();
    assert_eq!(client.cmd("SET {mig}kept v1").await, "+OK\r\n");
    assert_eq!(client.cmd("SET {mig}moved v1").await, "+OK\r\n");
    common::read_until_cached(&proxy, &mut client, "{mig}kept").await;
    cluster.begin_migration(slot, source, target);
    // A key the source still has is answered there; one it lacks is asked
    // for on the target (ASK).
    cluster.cli(
        source,
        &[
            "MIGRATE",
            "127.0.0.1",
            &target.to_string(),
            "",
            "0",
            "5000",
            "KEYS",
            "{mig}moved",
        ],
    );
    // On another master: a batch for both goes to two masters at once.
    let other = keys_on_every_master(&cluster, "other:", 1)
        .into_iter()
        .find(|key| cluster.owner_of_slot(RedisCluster::slot_of(key.as_bytes())) != source)
        .unwrap();
    assert_eq!(client.cmd(&format!("SET {other} o")).await, "+OK\r\n");
    assert_eq!(
        client.cmd(&format!("MGET {{mig}}moved {other} {{mig}}kept")).await,
        "*3\r\n$2\r\nv1\r\n$1\r\no\r\n$2\r\nv1\r\n",
        "an MGET split over two masters, one part through ASK"
    );
    assert_eq!(client.cmd("GET {mig}moved").await, "$2\r\nv1\r\n", "through ASK");
    assert_eq!(
        client.cmd("SET {mig}new v1").await,
        "+OK\r\n",
        "a new key lands on the target"
    );
    assert_eq!(client.cmd("GET {mig}kept").await, "$2\r\nv1\r\n");
    cluster.finish_migration(slot, source, target);
    // The slot is the target's now: MOVED, followed (here in a pipeline
    // spread over two masters), and the map updated.
    let pipeline = [
        common::encode(&[b"GET", b"{mig}new"]),
        common::encode(&[b"GET", other.as_bytes()]),
        common::encode(&[b"SET", b"{mig}new", b"v1"]),
    ]
    .concat();
    client.send(&pipeline).await;
    assert_eq!(String::from_utf8_lossy(&client.read_reply().await), "$2\r\nv1\r\n");
    assert_eq!(String::from_utf8_lossy(&client.read_reply().await), "$1\r\no\r\n");
    assert_eq!(String::from_utf8_lossy(&client.read_reply().await), "+OK\r\n");
    assert_eq!(client.cmd("GET {mig}new").await, "$2\r\nv1\r\n");
    assert_eq!(client.cmd("GET {mig}kept").await, "$2\r\nv1\r\n");
    // A write on the new owner is seen (L1 was emptied by the map change,
    // and the new owner's tracking covers the slot).
    cluster.cli(target, &["SET", "{mig}kept", "v2"]);
    client.cmd_until("GET {mig}kept", "$2\r\nv2\r\n").await;
    let info = client.cmd("INFO cache").await;
    let redirects: u64 = common::values::info_field(&info, "cluster_redirects").parse().unwrap();
    assert!(redirects >= 2, "MOVED and ASK were followed: {info}");
}

/// Writers (one per key, increasing values), readers and an L1 while the
/// cluster changes under them: no acknowledged write is lost, no read goes
/// back in time.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Counts>>,
    last_acked: Arc<std::sync::Mutex<BTreeMap<String, u64>>>,
}

#[derive(Debug, Default)]
struct Counts {
    writes: u64,
    reads: u64,
    errors: u64,
    stale: u64,
    first_error: Option<String>,
}

impl Load {
    async fn start(proxy: &Proxy, keys: &[String]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let last_acked: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
        let mut tasks = Vec::new();
        let floor: Arc<BTreeMap<String, AtomicU64>> =
            Arc::new(keys.iter().map(|key| (key.clone(), AtomicU64::new(0))).collect());
        for chunk in keys.chunks(keys.len().div_ceil(4)) {
            let mut client = proxy.raw().await;
            let chunk = chunk.to_vec();
            let stop = stop.clone();
            let acked = last_acked.clone();
            let floor = floor.clone();
            tasks.push(tokio::spawn(async move {
                let mut counts = Counts::default();
                let mut seq = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    for key in &chunk {
                        let reply = client.cmd(&format!("SET {key} {seq}")).await;
                        if reply == "+OK\r\n" {
                            counts.writes += 1;
                            acked.lock().unwrap().insert(key.clone(), seq);
                            floor[key].store(seq, Ordering::Release);
                        } else {
                            counts.errors += 1;
                            counts.first_error.get_or_insert(reply);
                        }
                    }
                }
                counts
            }));
        }
        for _ in 0..3 {
            let mut client = proxy.raw().await;
            let keys = keys.to_vec();
            let stop = stop.clone();
            let floor = floor.clone();
            tasks.push(tokio::spawn(async move {
                let mut counts = Counts::default();
                while !stop.load(Ordering::Relaxed) {
                    for key in &keys {
                        let before = floor[key].load(Ordering::Acquire);
                        let reply = client.cmd(&format!("GET {key}")).await;
                        counts.reads += 1;
                        let value = reply.split("\r\n").nth(1).and_then(|value| value.parse::<u64>().ok());
                        match value {
                            Some(value) if value < before => {
                                counts.stale += 1;
                                counts
                                    .first_error
                                    .get_or_insert(format!("{key} read {value} after {before} was acknowledged"));
                            }
                            Some(_) => {}
                            None if reply == "$-1\r\n" && before == 0 => {}
                            None => {
                                counts.errors += 1;
                                counts.first_error.get_or_insert(reply);
                            }
                        }
                    }
                }
                counts
            }));
        }
        Load {
            stop,
            tasks,
            last_acked,
        }
    }

    async fn stop(self) -> (Counts, BTreeMap<String, u64>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = Counts::default();
        for task in self.tasks {
            let counts = task.await.expect("load task");
            total.writes += counts.writes;
            total.reads += counts.reads;
            total.errors += counts.errors;
            total.stale += counts.stale;
            if total.first_error.is_none() {
                total.first_error = counts.first_error;
            }
        }
        let acked = self.last_acked.lock().unwrap().clone();
        (total, acked)
    }
}

/// Every acknowledged write is in the cluster (read on the key's master).
fn assert_all_acked_writes_kept(cluster: &RedisCluster, acked: &BTreeMap<String, u64>) {
    for (key, seq) in acked {
        let stored: u64 = cluster.direct(&["GET", key]).parse().unwrap_or(0);
        assert!(
            stored >= *seq,
            "{key}: the cluster has {stored}, {seq} was acknowledged"
        );
    }
}

/// Runs `change` (blocking) while the load runs, then checks the load.
async fn under_load(
    proxy: &Proxy,
    cluster: RedisCluster,
    keys: &[String],
    change: impl FnOnce(&RedisCluster) + Send + 'static,
) -> (Counts, RedisCluster) {
    let load = Load::start(proxy, keys).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let cluster = tokio::task::spawn_blocking(move || {
        change(&cluster);
        cluster
    })
    .await
    .expect("the change ran");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (counts, acked) = load.stop().await;
    println!("{counts:?}");
    assert_all_acked_writes_kept(&cluster, &acked);
    assert_eq!(counts.stale, 0, "no stale read: {:?}", counts.first_error);
    assert!(counts.writes > 0 && counts.reads > 0, "{counts:?}");
    (counts, cluster)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_reshard_under_load_loses_no_write_and_serves_no_stale_read() {
    let cluster = RedisCluster::start(3, 0);
    let proxy = Proxy::start_with(&cluster.url(), common::l1_eager).await;
    let l1 = proxy.handle().l1().expect("L1 on");
    common::poll_until("L1 to be ready", || l1.ready());
    let keys = keys_on_every_master(&cluster, "rs:", 40);
    let masters = cluster.masters();
    let (from, to) = (masters[0], masters[1]);
    let moved_before: usize = cluster.slots_of(from).iter().map(|(a, b)| (b - a + 1) as usize).sum();
    let (counts, cluster) = under_load(&proxy, cluster, &keys, move |cluster| cluster.reshard(from, to, 1000)).await;
    let moved_after: usize = cluster.slots_of(from).iter().map(|(a, b)| (b - a + 1) as usize).sum();
    assert_eq!(moved_before - moved_after, 1000, "1000 slots moved");
    assert_eq!(counts.errors, 0, "no client saw an error: {:?}", counts.first_error);
    let mut client = proxy.raw().await;
    let info = client.cmd("INFO cache").await;
    assert!(
        common::values::info_field(&info, "cluster_slot_map_changes")
            .parse::<u64>()
            .unwrap()
            >= 2
    );
    assert!(common::l1_hits(&proxy) > 0, "L1 answered reads during the run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_with_replicas_loses_no_acknowledged_write() {
    let cluster = RedisCluster::start(3, 1);
    let proxy = Proxy::start_with(&cluster.url(), common::l1_eager).await;
    let l1 = proxy.handle().l1().expect("L1 on");
    common::poll_until("L1 to be ready", || l1.ready());
    let keys = keys_on_every_master(&cluster, "fo:", 30);
    let victim = cluster.masters()[0];
    let (counts, cluster) = under_load(&proxy, cluster, &keys, move |cluster| {
        cluster.failover(victim);
    })
    .await;
    // A planned failover's switch is followed (MOVED from the old master);
    // at most the moment of the switch fails, with a clear error.
    if let Some(error) = &counts.first_error {
        assert!(
            error.contains("upstream unavailable")
                || error.starts_with("-CLUSTERDOWN")
                || error.starts_with("-TRYAGAIN"),
            "{error}"
        );
    }
    assert!(!cluster.masters().contains(&victim), "the old master is a replica now");
    // Served by the new master, L1 included.
    let mut client = proxy.raw().await;
    for key in &keys {
        assert_eq!(client.cmd(&format!("SET {key} after")).await, "+OK\r\n");
        assert_eq!(client.cmd(&format!("GET {key}")).await, "$5\r\nafter\r\n");
    }
    let started = Instant::now();
    while !l1.ready() {
        assert!(started.elapsed() < DEADLINE, "L1 ready again after the failover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_master_is_replaced_by_its_replica_and_the_proxy_follows() {
    let mut cluster = RedisCluster::start(3, 1);
    let proxy = Proxy::start_with(&cluster.url(), common::l1_eager).await;
    let l1 = proxy.handle().l1().expect("L1 on");
    common::poll_until("L1 to be ready", || l1.ready());
    let keys = keys_on_every_master(&cluster, "kill:", 10);
    let mut client = proxy.raw().await;
    for key in &keys {
        assert_eq!(client.cmd(&format!("SET {key} before")).await, "+OK\r\n");
        common::read_until_cached(&proxy, &mut client, key).await;
    }
    let victim = cluster.owner_of_slot(RedisCluster::slot_of(keys[0].as_bytes()));
    // Every write so far is on the replica before the master dies.
    assert_eq!(cluster.cli(victim, &["WAIT", "1", "5000"]), "1");
    cluster.kill(victim);
    // Its tracking connection is gone: L1 serves nothing until every master
    // tracks again.
    common::poll_until("L1 to stop while a master is lost", || !l1.store.is_accepting());
    let mut errors = 0;
    let started = Instant::now();
    for key in &keys {
        loop {
            let reply = client.cmd(&format!("GET {key}")).await;
            if reply == "$6\r\nbefore\r\n" {
                break;
            }
            assert!(
                reply.contains("upstream unavailable") || reply.starts_with("-CLUSTERDOWN"),
                "while the replica takes over: {reply}"
            );
            errors += 1;
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{key} never served again: {reply}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    cluster.wait_ok();
    assert!(!cluster.masters().contains(&victim));
    for key in &keys {
        assert_eq!(client.cmd(&format!("SET {key} after")).await, "+OK\r\n");
        assert_eq!(client.cmd(&format!("GET {key}")).await, "$5\r\nafter\r\n");
    }
    common::poll_until("L1 to be ready after the failover", || l1.ready());
    assert_eq!(
        common::read_until_cached(&proxy, &mut client, &keys[0]).await,
        "$5\r\nafter\r\n"
    );
    println!(
        "{errors} reads failed while the replica took over, in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_keys_without_a_tag_migrate_on_their_own_master() {
    let cluster = RedisCluster::start(3, 0);
    // Keys on every master, stored by an older deployment as version 1
    // (in a cluster, an untagged key is stored inside a tag: `v1:{user:3}`).
    let keys = keys_on_every_master(&cluster, "user:", 3);
    for key in &keys {
        assert_eq!(
            cluster.direct(&["SET", &format!("v1:{{{key}}}"), &format!("old {key}")]),
            "OK"
        );
    }
    let proxy = Proxy::start_with(&cluster.url(), |config| {
        common::l1_eager(config);
        let namespace = config.namespaces.entry("user".into()).or_default();
        namespace.version = Some(2);
        namespace.fallback_versions = vec![1];
    })
    .await;
    let l1 = proxy.handle().l1().expect("L1 on");
    common::poll_until("L1 to be ready", || l1.ready());
    let mut client = proxy.raw().await;
    for key in &keys {
        let expected = format!("$%d\r\nold {key}\r\n").replace("%d", &(key.len() + 4).to_string());
        // The read migrates it: one script on the key's own master.
        assert_eq!(client.cmd(&format!("GET {key}")).await, expected, "{key}");
        assert_eq!(cluster.direct(&["GET", &format!("v2:{{{key}}}")]), format!("old {key}"));
        assert_eq!(
            RedisCluster::slot_of(format!("v2:{{{key}}}").as_bytes()),
            RedisCluster::slot_of(key.as_bytes())
        );
        // Written through the proxy: the old version is gone.
        assert_eq!(client.cmd(&format!("SET {key} new")).await, "+OK\r\n");
        assert_eq!(cluster.direct(&["EXISTS", &format!("v1:{{{key}}}")]), "0");
        // L1 holds it, and a write to the stored name on its master reaches it.
        assert_eq!(
            common::read_until_cached(&proxy, &mut client, key).await,
            "$3\r\nnew\r\n"
        );
        assert_eq!(cluster.direct(&["SET", &format!("v2:{{{key}}}"), "direct"]), "OK");
        client.cmd_until(&format!("GET {key}"), "$6\r\ndirect\r\n").await;
    }
    // Split commands and fan-out see the client's names only.
    let joined = keys.join(" ");
    let mget = client.cmd(&format!("MGET {joined}")).await;
    assert_eq!(mget.matches("direct").count(), keys.len(), "{mget}");
    let listed = client.cmd("KEYS user:*").await;
    for key in &keys {
        assert!(listed.contains(&format!("{key}\r\n")), "{listed}");
    }
    assert!(!listed.contains("v2:") && !listed.contains('{'), "{listed}");
    assert_eq!(
        client.cmd(&format!("DEL {joined}")).await,
        format!(":{}\r\n", keys.len())
    );
    assert_eq!(client.cmd("DBSIZE").await, ":0\r\n");
}

/// A random command over six keys on different masters (multi-key ones
/// span slots, so they are split).
fn random_command() -> impl proptest::strategy::Strategy<Value = Vec<String>> {
    use proptest::prelude::*;
    let key = (0u8..6).prop_map(|k| format!("key{k}"));
    let value = prop_oneof!["[a-z]{0,6}", "-?[0-9]{1,3}"];
    prop_oneof![
        (key.clone(), value.clone()).prop_map(|(k, v)| vec!["SET".into(), k, v]),
        key.clone().prop_map(|k| vec!["GET".into(), k]),
        key.clone().prop_map(|k| vec!["INCR".into(), k]),
        (key.clone(), value.clone()).prop_map(|(k, v)| vec!["APPEND".into(), k, v]),
        (key.clone(), value.clone()).prop_map(|(k, v)| vec!["LPUSH".into(), k, v]),
        key.clone().prop_map(|k| vec!["RPOP".into(), k]),
        (key.clone(), "f[0-2]", value.clone()).prop_map(|(k, f, v)| vec!["HSET".into(), k, f, v]),
        (key.clone(), "f[0-2]").prop_map(|(k, f)| vec!["HGET".into(), k, f]),
        key.clone().prop_map(|k| vec!["HGETALL".into(), k]),
        prop::collection::vec(key.clone(), 1..5).prop_map(|keys| [vec!["MGET".to_string()], keys].concat()),
        prop::collection::vec((key.clone(), value.clone()), 1..4).prop_map(|pairs| [
            vec!["MSET".to_string()],
            pairs.into_iter().flat_map(|(k, v)| [k, v]).collect()
        ]
        .concat()),
        prop::collection::vec(key.clone(), 1..4).prop_map(|keys| [vec!["EXISTS".to_string()], keys].concat()),
        prop::collection::vec(key.clone(), 1..4).prop_map(|keys| [vec!["DEL".to_string()], keys].concat()),
        prop::collection::vec(key, 1..4).prop_map(|keys| [vec!["UNLINK".to_string()], keys].concat()),
    ]
}

/// Random pipelines through the proxy before the cluster and straight to a
/// single Redis get the same replies, with and without L1.
fn random_pipelines(protocol: u8, l1: bool) {
    use proptest::prelude::*;
    use proptest::test_runner::{Config as ProptestConfig, RngAlgorithm, TestRng, TestRunner};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let pair = std::cell::RefCell::new(runtime.block_on(Pair::new(protocol, l1)));
    let masters: BTreeSet<u16> = (0..6)
        .map(|k| {
            pair.borrow()
                .cluster
                .owner_of_slot(RedisCluster::slot_of(format!("key{k}").as_bytes()))
        })
        .collect();
    assert!(masters.len() >= 2, "the keys span masters");
    let mut runner = TestRunner::new_with_rng(
        ProptestConfig {
            cases: 32,
            failure_persistence: None,
            max_shrink_iters: 0,
            ..ProptestConfig::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &common::seed_bytes(0xC1A5_7E20 + protocol as u64)),
    );
    runner
        .run(
            // With L1, short pipelines and more reads of the same keys, so
            // that it answers some (it answers a read only when the
            // client's earlier commands have been answered).
            &(
                prop::collection::vec(random_command(), 1..if l1 { 60 } else { 30 }),
                1usize..if l1 { 2 } else { 8 },
            ),
            |(commands, pipeline)| {
                let mut guard = pair.borrow_mut();
                let pair: &mut Pair = &mut guard;
                runtime.block_on(async {
                    for group in commands.chunks(pipeline) {
                        let mut wire = Vec::new();
                        for command in group {
                            let args: Vec<&[u8]> = command.iter().map(|arg| arg.as_bytes()).collect();
                            wire.extend(common::encode(&args));
                        }
                        pair.single.send(&wire).await;
                        pair.proxied.send(&wire).await;
                        for command in group {
                            let single = pair.single.read_reply().await;
                            let proxied = pair.proxied.read_reply().await;
                            assert_eq!(
                                String::from_utf8_lossy(&proxied),
                                String::from_utf8_lossy(&single),
                                "{command:?} in {commands:?} (left: proxy before the cluster, right: a single Redis)"
                            );
                        }
                    }
                    assert_eq!(pair.single.cmd("FLUSHALL").await, "+OK\r\n");
                    assert_eq!(pair.proxied.cmd("FLUSHALL").await, "+OK\r\n");
                });
                Ok(())
            },
        )
        .expect("random pipelines get a single Redis's replies through the cluster");
    if l1 {
        let hits = common::l1_hits(&pair.borrow()._proxy);
        assert!(hits > 0, "L1 answered some of the reads");
        println!("L1 answered {hits} reads");
    }
}

#[test]
fn random_pipelines_match_a_single_redis_in_resp2() {
    random_pipelines(2, false);
}

#[test]
fn random_pipelines_match_a_single_redis_in_resp3_with_l1() {
    random_pipelines(3, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_without_cluster_shards_reads_the_map_by_cluster_slots() {
    let cluster = RedisCluster::start(3, 0);
    // The proxy's user may not run CLUSTER SHARDS (as on a Redis before 7,
    // which lacks it): the map comes from CLUSTER SLOTS. ACLs are per node.
    for port in cluster.ports() {
        assert_eq!(
            cluster.cli(
                port,
                &[
                    "ACL",
                    "SETUSER",
                    "proxy",
                    "on",
                    ">s3cret",
                    "~*",
                    "&*",
                    "+@all",
                    "-cluster|shards"
                ]
            ),
            "OK"
        );
    }
    let seeds = cluster
        .url()
        .replace("redis-cluster://", "redis-cluster://proxy:s3cret@");
    let proxy = Proxy::start_with(&seeds, common::l1_eager).await;
    let l1 = proxy.handle().l1().expect("L1 on");
    common::poll_until("L1 to be ready", || l1.ready());
    let mut client = proxy.raw().await;
    let keys = keys_on_every_master(&cluster, "acl:", 2);
    let pairs: String = keys.iter().map(|key| format!("{key} {key} ")).collect();
    assert_eq!(client.cmd(&format!("MSET {pairs}")).await, "+OK\r\n");
    let mget = client.cmd(&format!("MGET {}", keys.join(" "))).await;
    for key in &keys {
        assert!(mget.contains(&format!("\r\n{key}\r\n")), "{mget}");
    }
    let info = client.cmd("INFO cache").await;
    assert_eq!(common::values::info_field(&info, "cluster_masters"), "3", "{info}");
    assert_eq!(
        common::values::info_field(&info, "cluster_slots_served"),
        "16384",
        "{info}"
    );
    // It was refused CLUSTER SHARDS (so the map came from CLUSTER SLOTS),
    // and its connections are the proxy user's.
    let logs: Vec<String> = cluster
        .masters()
        .iter()
        .map(|port| cluster.cli(*port, &["ACL", "LOG"]))
        .collect();
    assert!(logs.iter().any(|log| log.contains("shards")), "{logs:?}");
    for port in cluster.masters() {
        let clients = cluster.cli(port, &["CLIENT", "LIST"]);
        assert!(
            clients
                .lines()
                .any(|line| line.contains("name=auracache:pool") && line.contains("user=proxy")),
            "{clients}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_hello_and_setname_on_own_connections_apply_on_every_master() {
    let cluster = RedisCluster::start(3, 0);
    for port in cluster.masters() {
        cluster.cli(port, &["ACL", "SETUSER", "limited", "on", ">pw", "~allowed*", "+@all"]);
    }
    let proxy = Proxy::start(&cluster.url()).await;
    let keys = keys_on_every_master(&cluster, "other:", 1);
    let denied = "-NOPERM this user has no permissions to access one of the keys used as arguments\r\n";
    // Own connections to two masters opened first (WATCH gives the client
    // its own connection), then AUTH: every master must see the ACL user.
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd(&format!("WATCH {}", keys[1])).await, "+OK\r\n");
    assert_eq!(client.cmd("UNWATCH").await, "+OK\r\n");
    assert_eq!(client.cmd(&format!("GET {}", keys[2])).await, "$-1\r\n");
    assert_eq!(client.cmd("AUTH limited pw").await, "+OK\r\n");
    for key in &keys {
        assert_eq!(
            client.cmd(&format!("SET {key} 1")).await,
            denied,
            "SET {key} as limited"
        );
        assert_eq!(client.cmd(&format!("SET allowed{key} 1")).await, "+OK\r\n");
    }
    // HELLO 3 then: every master answers in RESP3.
    assert!(client.cmd("HELLO 3").await.starts_with('%'));
    for key in &keys {
        assert_eq!(
            client.cmd(&format!("HGETALL allowed-h{key}")).await,
            "%0\r\n",
            "HGETALL on {key}'s master"
        );
    }
    // CLIENT SETNAME names every connection the client has.
    assert_eq!(client.cmd("CLIENT SETNAME reviewer").await, "+OK\r\n");
    for key in &keys {
        client.cmd(&format!("GET allowed{key}")).await;
    }
    for port in cluster.masters() {
        let list = cluster.cli(port, &["CLIENT", "LIST"]);
        let named: Vec<&str> = list.lines().filter(|line| line.contains("user=limited")).collect();
        assert!(!named.is_empty(), "master {port} has the client's connection");
        assert!(
            named.iter().all(|line| line.contains("name=reviewer")),
            "master {port}: {named:?}"
        );
    }
    // AUTH pipelined before a command of another master in one batch.
    let mut piped = proxy.raw().await;
    assert_eq!(piped.cmd(&format!("WATCH {}", keys[2])).await, "+OK\r\n");
    assert_eq!(piped.cmd("UNWATCH").await, "+OK\r\n");
    let mut wire = common::encode(&[b"AUTH", b"limited", b"pw"]);
    for key in &keys {
        wire.extend(common::encode(&[b"SET", key.as_bytes(), b"2"]));
    }
    piped.send(&wire).await;
    assert_eq!(String::from_utf8_lossy(&piped.read_reply().await), "+OK\r\n");
    for key in &keys {
        assert_eq!(
            String::from_utf8_lossy(&piped.read_reply().await),
            denied,
            "pipelined SET {key}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_with_a_transaction_routes_the_commands_around_it_as_usual() {
    let mut pair = Pair::new(2, false).await;
    let keys = keys_on_every_master(&pair.cluster, "tx:", 1);
    let (a, b, c) = (&keys[0], &keys[1], &keys[2]);
    // In one pipeline: commands of other masters before MULTI (after a
    // blocking command, so the client is on its own connections) and
    // after EXEC; only the transaction itself is on its key's master.
    let commands = [
        format!("BLPOP {c} 0.01"),
        format!("RPUSH {a} q"),
        format!("SET {b} 1"),
        format!("WATCH {a}"),
        "MULTI".to_string(),
        format!("LPOP {a}"),
        "EXEC".to_string(),
        format!("GET {b}"),
        format!("MGET {a} {b} {c}"),
        "MULTI".to_string(),
        format!("INCR {c}"),
        "EXEC".to_string(),
        format!("DEL {a} {b} {c}"),
    ];
    pair.pipeline(&commands, "in a pipeline with transactions").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_versioned_key_framed_in_braces_stays_in_its_tags_slot() {
    let cluster = RedisCluster::start(3, 0);
    let proxy = Proxy::start_with(&cluster.url(), |config| {
        // `{user:1}` and `{user:1}:b` are in namespace `{user`, tag `user:1`.
        let namespace = config.namespaces.entry("{user".into()).or_default();
        namespace.version = Some(2);
        namespace.fallback_versions = vec![1];
    })
    .await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET {user:1} a").await, "+OK\r\n");
    assert_eq!(
        cluster.direct(&["GET", "v2:{user:1}}"]),
        "a",
        "stored with one more closing brace"
    );
    // One slot, so single-slot commands over both work as on one Redis.
    assert_eq!(client.cmd("RENAME {user:1} {user:1}:b").await, "+OK\r\n");
    assert_eq!(client.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(client.cmd("SET {user:1} c").await, "+QUEUED\r\n");
    assert_eq!(client.cmd("GET {user:1}:b").await, "+QUEUED\r\n");
    assert_eq!(client.cmd("EXEC").await, "*2\r\n+OK\r\n$1\r\na\r\n");
    let keys = client.cmd("KEYS {user*").await;
    assert!(
        keys.contains("$8\r\n{user:1}\r\n") && keys.contains("$10\r\n{user:1}:b\r\n"),
        "{keys}"
    );
}
