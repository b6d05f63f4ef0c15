//! L1 under races: each test sets up an interleaving that once produced a
//! wrong answer (found by review) and asserts what Redis itself would
//! answer: lost fill tickets, a client that does not read, writes racing
//! fills (in flight until Redis answers), reads overtaking earlier
//! commands, SELECT/MULTI/RESET state, write-table corner cases, and a
//! randomized pipeline comparison against a twin Redis. Slow Lua scripts
//! hold a connection busy to make the interleavings deterministic.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use auracache::cache::L1Stats;
use auracache::config::{Config, Consistency};
use common::{Proxy, RawClient, RedisServer};

/// Keeps Redis busy for 600 ms by its own clock (TIME advances inside a
/// script), however fast the machine: a loop count would finish sooner on
/// a faster one.
const SLOW_SCRIPT: &[u8] = b"local t = redis.call('TIME') \
    local start = t[1] * 1000000 + t[2] \
    repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] - start > 600000 \
    return 1";

async fn start_l1(server: &RedisServer, tweak: impl FnOnce(&mut Config)) -> Proxy {
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::l1_eager(config);
        tweak(config);
    })
    .await;
    let l1 = proxy.handle().l1().expect("L1 enabled").clone();
    common::poll_until("L1 to be ready", || l1.ready());
    proxy
}

/// One of L1's counters now.
fn counter(proxy: &Proxy, which: fn(&L1Stats) -> &AtomicU64) -> u64 {
    which(proxy.handle().l1().expect("L1 enabled").store.stats()).load(Ordering::Relaxed)
}

/// Waits until an L1 counter has passed `from`: the proxy has handled the
/// request that moves it (a lookup, an invalidation), even while Redis is
/// busy and cannot be asked.
fn until_counter_passes(proxy: &Proxy, what: &str, which: fn(&L1Stats) -> &AtomicU64, from: u64) {
    common::poll_until(what, || counter(proxy, which) > from);
}

/// Waits until `count` clients are blocked in Redis (BLPOP, BLMOVE).
async fn until_blocked(server: &RedisServer, count: usize) {
    let mut direct = RawClient::connect(server.addr()).await;
    let line = format!("blocked_clients:{count}\r\n");
    let started = Instant::now();
    while !direct.cmd("INFO clients").await.contains(&line) {
        assert!(started.elapsed() < common::DEADLINE, "timed out waiting for {line:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Redis's count of calls of `command` (lower case), on a connection of its own.
async fn calls(server: &RedisServer, command: &str) -> u64 {
    common::redis_calls(&mut RawClient::connect(server.addr()).await, command).await
}

fn ttl_only(config: &mut Config) {
    config.memory_cache.consistency = Consistency::TtlOnly;
}

/// Sends every line in one write, reads one reply per line.
async fn pipeline(client: &mut RawClient, lines: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for line in lines {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        out.extend(common::encode(&args));
    }
    client.send(&out).await;
    let mut replies = Vec::new();
    for _ in lines {
        replies.push(String::from_utf8_lossy(&client.read_reply().await).into_owned());
    }
    replies
}

async fn cache(client: &mut RawClient, key: &str) -> String {
    client.cmd(&format!("GET {key}")).await;
    client.cmd(&format!("GET {key}")).await
}

// ---------------------------------------------------------------------
// Fill tickets leaked: MGET/HMGET fills are not abandoned when the batch
// fails, so the key stays "being filled" forever: every later miss waits
// pool.connect_timeout_ms and the key is never cached again.
// ---------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mget_fill_is_released_when_its_batch_fails() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, |config| {
        // A reply over the limit breaks the pooled connection (any
        // connection loss does the same).
        config.limits.max_bulk_bytes = 1024;
    })
    .await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("SET a 1").await, "+OK\r\n");
    let big = "x".repeat(4096);
    assert_eq!(direct.cmd(&format!("SET big {big}")).await, "+OK\r\n");
    let mut client = proxy.raw().await;
    let reply = client.cmd("MGET a big").await;
    assert!(reply.starts_with("-ERR upstream unavailable"), "{reply}");
    // The pooled connection comes back within ~100 ms.
    let mut other = proxy.raw().await;
    other.cmd_until("PING", "+PONG\r\n").await;
    let mut took = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(other.cmd("GET a").await, "$1\r\n1\r\n");
        took.push(started.elapsed());
    }
    assert!(
        took.iter().all(|t| *t < Duration::from_millis(500)),
        "GET a took {took:?} (each waited on a fill that will never complete)"
    );
}

// ---------------------------------------------------------------------
// A client that does not read its replies holds a fill forever: fills are
// completed by the client's reply writer, so every other client's miss of
// that key waits pool.connect_timeout_ms, indefinitely.
// ---------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_does_not_stall_other_clients_reads() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut direct = RawClient::connect(server.addr()).await;
    let big = "x".repeat(900 * 1024);
    assert_eq!(direct.cmd(&format!("SET big {big}")).await, "+OK\r\n");
    assert_eq!(direct.cmd("SET k v").await, "+OK\r\n");
    let mut slow = proxy.raw().await;
    cache(&mut slow, "big").await;
    // ~30 MB of replies it will never read, then a miss of k.
    let mut lines = vec!["GET big"; 32];
    lines.push("GET k");
    let mut out = Vec::new();
    for line in &lines {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        out.extend(common::encode(&args));
    }
    let pttls = calls(&server, "pttl").await;
    slow.send(&out).await;
    // The slow client's fill of k (GET k and its hidden PTTL) has run.
    common::poll_until_async("the slow client's fill of k to reach Redis", || {
        let calls = calls(&server, "pttl");
        async move { calls.await > pttls }
    })
    .await;
    let mut other = proxy.raw().await;
    for round in 0..3 {
        let started = Instant::now();
        assert_eq!(other.cmd("GET k").await, "$1\r\nv\r\n");
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(500),
            "round {round}: GET k took {took:?} behind another client's unread fill"
        );
    }
    drop(slow);
}

// ---------------------------------------------------------------------
// Writes the WriteTable does not see. Pipelined, the following read is
// answered from L1 before the write even runs, so Redis's invalidation
// message cannot help.
// ---------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pfcount_rewrites_the_value_it_reads() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut direct = RawClient::connect(server.addr()).await;
    direct.cmd("PFADD hll a b c d e").await;
    let mut client = proxy.raw().await;
    client.command(&[b"GET", b"hll"]).await;
    let before = client.command(&[b"GET", b"hll"]).await;
    let mut out = common::encode(&[b"PFCOUNT", b"hll"]);
    out.extend(common::encode(&[b"GET", b"hll"]));
    client.send(&out).await;
    assert_eq!(client.read_reply().await, b":5\r\n");
    let proxied = client.read_reply().await;
    let actual = direct.command(&[b"GET", b"hll"]).await;
    assert_ne!(before, actual, "PFCOUNT rewrote the HLL header");
    assert_eq!(proxied, actual, "GET after PFCOUNT answered the old bytes from L1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xgroup_create_mkstream_is_a_write() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut client = proxy.raw().await;
    assert_eq!(cache(&mut client, "s").await, "$-1\r\n");
    let replies = pipeline(&mut client, &["XGROUP CREATE s g $ MKSTREAM", "GET s"]).await;
    assert_eq!(replies[0], "+OK\r\n");
    assert!(
        replies[1].starts_with("-WRONGTYPE"),
        "GET s after MKSTREAM: {:?}",
        replies[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eval_with_undeclared_key_then_get_in_one_pipeline() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut client = proxy.raw().await;
    client.cmd("SET k old").await;
    assert_eq!(cache(&mut client, "k").await, "$3\r\nold\r\n");
    let mut out = common::encode(&[b"EVAL", b"redis.call('set','k','new') return 1", b"0"]);
    out.extend(common::encode(&[b"GET", b"k"]));
    client.send(&out).await;
    assert_eq!(client.read_reply().await, b":1\r\n");
    assert_eq!(String::from_utf8_lossy(&client.read_reply().await), "$3\r\nnew\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sort_store_of_a_key_named_store() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut client = proxy.raw().await;
    client.cmd("RPUSH store 3 1 2").await;
    client.cmd("SET dst x").await;
    assert_eq!(cache(&mut client, "dst").await, "$1\r\nx\r\n");
    let replies = pipeline(&mut client, &["SORT store STORE dst", "GET dst"]).await;
    assert_eq!(replies[0], ":3\r\n");
    assert!(
        replies[1].starts_with("-WRONGTYPE"),
        "GET dst after SORT..STORE: {:?}",
        replies[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn georadiusbymember_store_with_a_member_named_store() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut client = proxy.raw().await;
    client
        .cmd("GEOADD places 13.361389 38.115556 store 15.087269 37.502669 other")
        .await;
    client.cmd("SET near x").await;
    assert_eq!(cache(&mut client, "near").await, "$1\r\nx\r\n");
    let replies = pipeline(
        &mut client,
        &["GEORADIUSBYMEMBER places store 500 km STORE near", "GET near"],
    )
    .await;
    assert_eq!(replies[0], ":2\r\n");
    assert!(
        replies[1].starts_with("-WRONGTYPE"),
        "GET near after STORE: {:?}",
        replies[1]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_keys_removes_the_source_keys() {
    let server = RedisServer::start();
    let target = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut client = proxy.raw().await;
    client.cmd("SET m1 v").await;
    assert_eq!(cache(&mut client, "m1").await, "$1\r\nv\r\n");
    let migrate = format!("MIGRATE 127.0.0.1 {} \"\" 0 5000 KEYS m1", target.port());
    let mut out = common::encode(&[
        b"MIGRATE",
        b"127.0.0.1",
        target.port().to_string().as_bytes(),
        b"",
        b"0",
        b"5000",
        b"KEYS",
        b"m1",
    ]);
    out.extend(common::encode(&[b"GET", b"m1"]));
    client.send(&out).await;
    assert_eq!(client.read_reply().await, b"+OK\r\n", "{migrate}");
    assert_eq!(
        String::from_utf8_lossy(&client.read_reply().await),
        "$-1\r\n",
        "m1 was moved away"
    );
}

// ---------------------------------------------------------------------
// The session's database drifts from its own connection's: a refused
// SELECT (or one queued in a discarded MULTI) still moves `self.db`, so
// the client's writes invalidate the wrong database. ttl-only: a write
// through the proxy must be read at once.
// ---------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_select_on_own_connection_keeps_invalidating_the_right_db() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, ttl_only).await;
    let mut reader = proxy.raw().await;
    let mut writer = proxy.raw().await;
    assert_eq!(writer.cmd("SET k old").await, "+OK\r\n");
    assert_eq!(cache(&mut reader, "k").await, "$3\r\nold\r\n");
    assert_eq!(writer.cmd("CLIENT SETNAME w").await, "+OK\r\n");
    assert!(writer.cmd("SELECT 99").await.starts_with("-ERR"));
    assert_eq!(writer.cmd("SET k new").await, "+OK\r\n");
    assert_eq!(reader.cmd("GET k").await, "$3\r\nnew\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_in_a_discarded_multi_keeps_invalidating_the_right_db() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, ttl_only).await;
    let mut reader = proxy.raw().await;
    let mut writer = proxy.raw().await;
    assert_eq!(writer.cmd("SET k old").await, "+OK\r\n");
    assert_eq!(cache(&mut reader, "k").await, "$3\r\nold\r\n");
    assert_eq!(writer.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(writer.cmd("SELECT 1").await, "+QUEUED\r\n");
    assert_eq!(writer.cmd("DISCARD").await, "+OK\r\n");
    assert_eq!(writer.cmd("SET k new").await, "+OK\r\n");
    assert_eq!(reader.cmd("GET k").await, "$3\r\nnew\r\n");
}

// ---------------------------------------------------------------------
// Writes whose "invalidate again once Redis ran it" is lost. A blocked
// command in front makes the window deterministic: another client fills
// the old value after the early invalidation, before the write runs.
// ---------------------------------------------------------------------
async fn write_behind_a_block(
    server: &RedisServer,
    writer: &mut RawClient,
    reader: &mut RawClient,
    prelude: &[&str],
) -> String {
    let mut out = Vec::new();
    for line in prelude.iter().chain(["BLPOP nothing 1", "SET k new"].iter()) {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        out.extend(common::encode(&args));
    }
    writer.send(&out).await;
    until_blocked(server, 1).await;
    // Fills the old value while SET waits behind BLPOP.
    assert_eq!(reader.cmd("GET k").await, "$3\r\nold\r\n");
    for _ in 0..prelude.len() + 2 {
        writer.read_reply().await;
    }
    reader.cmd("GET k").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_write_behind_a_block_is_reinvalidated() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, ttl_only).await;
    let mut reader = proxy.raw().await;
    let mut writer = proxy.raw().await;
    writer.cmd("SET k old").await;
    assert_eq!(writer.cmd("CLIENT SETNAME w").await, "+OK\r\n");
    assert_eq!(
        write_behind_a_block(&server, &mut writer, &mut reader, &[]).await,
        "$3\r\nnew\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_ends_the_transaction_for_l1_too() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, ttl_only).await;
    let mut reader = proxy.raw().await;
    let mut writer = proxy.raw().await;
    writer.cmd("SET k old").await;
    assert_eq!(writer.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(writer.cmd("RESET").await, "+RESET\r\n");
    assert_eq!(
        write_behind_a_block(&server, &mut writer, &mut reader, &[]).await,
        "$3\r\nnew\r\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_write_after_a_pooled_command_is_reinvalidated() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, ttl_only).await;
    let mut reader = proxy.raw().await;
    let mut writer = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    // PING goes to the pooled lane; BLMOVE's invalidation is attached to
    // that batch, which is answered before BLMOVE even runs.
    let mut out = common::encode(&[b"PING"]);
    out.extend(common::encode(&[b"BLMOVE", b"src", b"dst", b"LEFT", b"LEFT", b"5"]));
    writer.send(&out).await;
    assert_eq!(writer.read_reply().await, b"+PONG\r\n");
    until_blocked(&server, 1).await;
    assert_eq!(cache(&mut reader, "dst").await, "$-1\r\n");
    direct.cmd("LPUSH src x").await;
    assert_eq!(writer.read_reply().await, b"$1\r\nx\r\n");
    let reply = reader.cmd("GET dst").await;
    assert!(reply.starts_with("-WRONGTYPE"), "GET dst after BLMOVE: {reply:?}");
}

// ---------------------------------------------------------------------
// An MGET behind the client's own unanswered commands is read whole from
// Redis (L1 would answer part of it ahead of them), so it cannot mix the
// cached `a` with a `b` written after it.
// ---------------------------------------------------------------------
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mget_behind_pending_commands_is_read_whole_from_redis() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut reader = proxy.raw().await; // pooled slot A
    let mut writer = proxy.raw().await; // pooled slot B
    writer.cmd("MSET a 1 b 1").await;
    assert_eq!(cache(&mut reader, "a").await, "$1\r\n1\r\n");
    // The reader's pooled connection is busy with a slow script ...
    reader.send(&common::encode(&[b"EVAL", SLOW_SCRIPT, b"0"])).await;
    // ... the reader asks for a and b (a from L1) ...
    let misses = counter(&proxy, |stats| &stats.misses);
    reader.send(&common::encode(&[b"MGET", b"a", b"b"])).await;
    until_counter_passes(&proxy, "the proxy to look the MGET up", |stats| &stats.misses, misses);
    // ... and another client writes both, atomically, through the proxy.
    let write = tokio::spawn(async move { writer.cmd("MSET a 2 b 2").await });
    assert_eq!(reader.read_reply().await, b":1\r\n");
    let mget = String::from_utf8_lossy(&reader.read_reply().await).into_owned();
    assert_eq!(write.await.unwrap(), "+OK\r\n");
    assert!(
        mget == "*2\r\n$1\r\n1\r\n$1\r\n1\r\n" || mget == "*2\r\n$1\r\n2\r\n$1\r\n2\r\n",
        "MGET a b answered a state that never existed: {mget:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_blocking_write_alone_is_reinvalidated() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, ttl_only).await;
    let mut reader = proxy.raw().await;
    let mut writer = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    writer
        .send(&common::encode(&[b"BLMOVE", b"src", b"dst", b"LEFT", b"LEFT", b"5"]))
        .await;
    until_blocked(&server, 1).await;
    assert_eq!(cache(&mut reader, "dst").await, "$-1\r\n");
    direct.cmd("LPUSH src x").await;
    assert_eq!(writer.read_reply().await, b"$1\r\nx\r\n");
    let reply = reader.cmd("GET dst").await;
    assert!(reply.starts_with("-WRONGTYPE"), "GET dst after BLMOVE: {reply:?}");
}

/// A client that goes away (RST) while its writer owes replies: the fill
/// in a slot never processed is dropped without being abandoned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_resets_does_not_poison_a_key() {
    use tokio::io::AsyncWriteExt;
    let server = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut direct = RawClient::connect(server.addr()).await;
    let big = "x".repeat(900 * 1024);
    assert_eq!(direct.cmd(&format!("SET big {big}")).await, "+OK\r\n");
    assert_eq!(direct.cmd("SET k v").await, "+OK\r\n");
    let mut warm = proxy.raw().await;
    cache(&mut warm, "big").await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr()).await.unwrap();
    let mut out = Vec::new();
    for _ in 0..32 {
        out.extend(common::encode(&[b"GET", b"big"]));
    }
    out.extend(common::encode(&[b"GET", b"k"]));
    // The fill of big already ran a PTTL: wait for the one of k's fill.
    let pttls = calls(&server, "pttl").await;
    stream.write_all(&out).await.unwrap();
    common::poll_until_async("the fill of k to reach Redis", || {
        let calls = calls(&server, "pttl");
        async move { calls.await > pttls }
    })
    .await;
    // An abortive close (RST), as a crashed client's.
    #[allow(deprecated)] // SO_LINGER 0 is the point: the close is an RST.
    stream.set_linger(Some(Duration::ZERO)).unwrap();
    drop(stream);
    common::poll_until_async("the proxy to drop the client", || {
        let warm = proxy.raw();
        async move { warm.await.cmd("INFO cache").await.contains("clients_connected:2\r\n") }
    })
    .await;
    let mut took = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(warm.cmd("GET k").await, "$1\r\nv\r\n");
        took.push(started.elapsed());
    }
    assert!(
        took.iter().all(|t| *t < Duration::from_millis(500)),
        "GET k took {took:?} long after the client that held its fill was gone"
    );
}

/// Differential: the same random pipelines against a Redis behind the
/// proxy and an identical Redis directly; every reply must match byte for
/// byte (hits, misses with hidden PTTLs, partial MGET/HMGET, writes,
/// errors, SELECT, type changes).
async fn differential(resp3: bool, seed: u64) {
    let behind = RedisServer::start();
    let twin = RedisServer::start();
    let proxy = start_l1(&behind, |_| {}).await;
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(twin.addr()).await;
    if resp3 {
        proxied.cmd("HELLO 3").await;
        direct.cmd("HELLO 3").await;
    }
    let mut state = seed | 1;
    let mut next = move |n: u64| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    };
    for round in 0..300 {
        let mut lines = Vec::new();
        for _ in 0..(1 + next(40)) {
            let k = |r: u64| format!("k{r}");
            let (a, b, c) = (next(5), next(5), next(5));
            let (h, f, g) = (next(3), next(4), next(4));
            let v = next(1000);
            let line = match next(30) {
                0..=5 => format!("GET {}", k(a)),
                6..=8 => format!("MGET {} {} {}", k(a), k(b), k(c)),
                9..=10 => format!("HGET h{h} f{f}"),
                11..=12 => format!("HMGET h{h} f{f} f{g}"),
                13..=14 => format!("HGETALL h{h}"),
                15 => format!("SET {} v{v}", k(a)),
                16 => format!("DEL {}", k(a)),
                17 => format!("HSET h{h} f{f} v{v}"),
                18 => format!("HDEL h{h} f{f}"),
                19 => format!("INCR {}", k(a)),
                20 => format!("LPUSH {} x", k(a)),
                21 => format!("HSET {} f{f} v", k(a)),
                22 => format!("EXPIRE {} 1000", k(a)),
                23 => format!("GETDEL {}", k(a)),
                24 => format!("SELECT {}", next(2)),
                25 => format!("MSET {} m{v} {} n{v}", k(a), k(b)),
                26 => "NOSUCHCOMMAND x".to_string(),
                27 => format!("DEL h{h}"),
                28 => format!("HGET h{h}"),
                _ => {
                    if next(10) == 0 {
                        "FLUSHDB".to_string()
                    } else {
                        format!("GET {}", k(b))
                    }
                }
            };
            lines.push(line);
        }
        let refs: Vec<&str> = lines.iter().map(String::as_str).collect();
        let from_proxy = pipeline(&mut proxied, &refs).await;
        let from_redis = pipeline(&mut direct, &refs).await;
        for (i, (p, r)) in from_proxy.iter().zip(&from_redis).enumerate() {
            assert_eq!(p, r, "round {round}, command {i} {:?} of {lines:?}", lines[i]);
        }
    }
    let info = proxied.cmd("INFO cache").await;
    let hits = info
        .lines()
        .find_map(|line| line.strip_prefix("l1_hits:"))
        .unwrap_or("0")
        .trim()
        .to_string();
    // Hits come only at the start of a pipeline (a read may not overtake
    // the client's earlier commands), so fewer than the reads.
    assert!(hits.parse::<u64>().unwrap() > 10, "L1 was exercised: {hits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_pipelines_resp2() {
    differential(false, 0x9e3779b97f4a7c15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn differential_pipelines_resp3() {
    differential(true, 0x1234567).await;
}

/// A client's own pipelined write, then its read of the key: the read
/// waits on another client's fill that was issued after the write was
/// noted but ran in Redis before the write; the waiter takes that old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_its_own_write_never_waits_on_an_older_fill() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut me = proxy.raw().await; // pooled slot A
    let mut other = proxy.raw().await; // pooled slot B
    assert_eq!(me.cmd("SET k old").await, "+OK\r\n");
    // My connection to Redis is busy for a while ...
    me.send(&common::encode(&[b"EVAL", SLOW_SCRIPT, b"0"])).await;
    // ... I write k (noted now, sent when the script is answered) ...
    let invalidations = counter(&proxy, |stats| &stats.invalidations);
    me.send(&common::encode(&[b"SET", b"k", b"new"])).await;
    until_counter_passes(
        &proxy,
        "the SET to be noted",
        |stats| &stats.invalidations,
        invalidations,
    );
    // ... another client misses k and starts a fill on its own connection ...
    let misses = counter(&proxy, |stats| &stats.misses);
    let other_read = tokio::spawn(async move { other.cmd("GET k").await });
    until_counter_passes(&proxy, "the other client's miss", |stats| &stats.misses, misses);
    // ... and I read k back.
    me.send(&common::encode(&[b"GET", b"k"])).await;
    assert_eq!(me.read_reply().await, b":1\r\n");
    assert_eq!(me.read_reply().await, b"+OK\r\n");
    let mine = String::from_utf8_lossy(&me.read_reply().await).into_owned();
    let theirs = other_read.await.unwrap();
    let info = me.cmd("INFO cache").await;
    let stats: Vec<&str> = info.lines().filter(|l| l.starts_with("l1_")).collect();
    eprintln!("other read {theirs:?}; {stats:?}");
    assert_eq!(mine, "$3\r\nnew\r\n", "GET after my own SET in the same pipeline");
}

/// A hit is answered as of when the pipeline was read, before the earlier
/// pipelined commands run: a key that expires meanwhile is still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_hit_does_not_precede_earlier_commands() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET b v PX 400").await, "+OK\r\n");
    assert_eq!(cache(&mut client, "b").await, "$1\r\nv\r\n");
    let mut out = common::encode(&[b"EVAL", SLOW_SCRIPT, b"0"]);
    out.extend(common::encode(&[b"EXISTS", b"b"]));
    out.extend(common::encode(&[b"GET", b"b"]));
    let started = Instant::now();
    client.send(&out).await;
    assert_eq!(client.read_reply().await, b":1\r\n");
    let took = started.elapsed();
    let exists = String::from_utf8_lossy(&client.read_reply().await).into_owned();
    let get = String::from_utf8_lossy(&client.read_reply().await).into_owned();
    assert!(took > Duration::from_millis(500), "script took {took:?}");
    assert_eq!(exists, ":0\r\n");
    assert_eq!(get, "$-1\r\n", "EXISTS b said 0, then GET b answered a value");
}

/// Entries filled by a RESP2 client read by a RESP3 one and the reverse,
/// compared with Redis's own RESP3/RESP2 replies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_protocol_hits_match_redis() {
    let server = RedisServer::start();
    let proxy = start_l1(&server, |_| {}).await;
    let mut direct2 = RawClient::connect(server.addr()).await;
    let mut direct3 = RawClient::connect(server.addr()).await;
    direct3.cmd("HELLO 3").await;
    direct2.cmd("HSET h a 1 b 2").await;
    direct2.cmd("SET s v").await;
    let reads = [
        "GET s",
        "GET none",
        "HGET h a",
        "HGET h zz",
        "HGET nohash a",
        "HGETALL h",
        "HGETALL nohash",
        "MGET s none s",
        "HMGET h a zz b",
        "HMGET nohash a b",
    ];
    for (filler_resp3, reader_resp3) in [(false, true), (true, false)] {
        direct2.cmd("FLUSHALL").await; // also empties L1 (null invalidation)
        direct2.cmd("HSET h a 1 b 2").await;
        direct2.cmd("SET s v").await;
        let l1 = proxy.handle().l1().unwrap().clone();
        common::poll_until("FLUSHALL to empty L1", || l1.store.is_empty());
        let mut filler = proxy.raw().await;
        let mut reader = proxy.raw().await;
        if filler_resp3 {
            filler.cmd("HELLO 3").await;
        }
        if reader_resp3 {
            reader.cmd("HELLO 3").await;
        }
        for line in reads {
            filler.cmd(line).await;
        }
        for line in reads {
            let expected = if reader_resp3 {
                direct3.cmd(line).await
            } else {
                direct2.cmd(line).await
            };
            assert_eq!(reader.cmd(line).await, expected, "{line} (filler resp3 {filler_resp3})");
        }
    }
}
