//! Several proxies in front of one Redis stay coherent with each other.
//! Each proxy has its own L1; a write through one of them (or straight to
//! Redis) reaches the others' L1 only as Redis's invalidation message on
//! their tracking connections. So a reply cached in one proxy may still be
//! served for at most the invalidation delay after another proxy
//! acknowledged a write, and never after. These tests measure that delay
//! and bound it: for every kind of write, for writes that bypass the
//! proxies, under concurrent load through three proxies, and across one
//! proxy's tracking connection being killed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use auracache::cache::tracking::TRACKING_CONNECTION_NAME;
use common::{Proxy, RawClient, RedisServer, cmd_until_cached, l1_eager, l1_hits, poll_until_async, settle, settle_on};

/// How long after a write's acknowledgement another proxy may still answer
/// with what the write replaced. A sanity bound for a loaded machine, not a
/// speed goal: the delays measured are printed, and are far below it.
const INVALIDATION_BOUND: Duration = Duration::from_secs(2);

/// A proxy with L1 filling on the first miss, once it caches: its command
/// table is known and its tracking connection confirmed.
async fn start_proxy(server: &RedisServer) -> Proxy {
    let proxy = Proxy::start_with(&server.url(), l1_eager).await;
    let l1 = proxy.handle().l1().expect("L1 on").clone();
    poll_until_async("L1 to be ready with tracking on", || {
        let ready = l1.ready() && l1.store.is_accepting();
        async move { ready }
    })
    .await;
    proxy
}

fn tracking_on(proxy: &Proxy) -> bool {
    proxy.handle().l1().expect("L1 on").store.is_accepting()
}

fn l1_entries(proxy: &Proxy) -> usize {
    proxy.handle().l1().expect("L1 on").store.len()
}

/// Reading through a proxy after a write made elsewhere.
struct Converged {
    /// From the write's acknowledgement to the end of the first read that
    /// saw its effect.
    delay: Duration,
    /// Replies before that one that were still from before the write.
    stale_replies: usize,
}

/// Repeats `line` through `client` until the reply is `new`. Fails if a
/// reply is neither that nor one `may_be_old` accepts (a value from
/// nowhere), or if the old value is still answered [`INVALIDATION_BOUND`]
/// after `acked`.
async fn converge(
    client: &mut RawClient,
    line: &str,
    new: &str,
    acked: Instant,
    may_be_old: impl Fn(&str) -> bool,
) -> Converged {
    let mut stale_replies = 0;
    loop {
        let reply = client.cmd(line).await;
        if reply == new {
            return Converged {
                delay: acked.elapsed(),
                stale_replies,
            };
        }
        assert!(
            may_be_old(&reply),
            "{line:?} answered {reply:?}: neither {new:?} nor a value from before the write"
        );
        stale_replies += 1;
        assert!(
            acked.elapsed() < INVALIDATION_BOUND,
            "{line:?} still answered {reply:?} {:?} after a write elsewhere was acknowledged (expected {new:?})",
            acked.elapsed()
        );
    }
}

/// "min / median / max" of some delays.
fn spread(delays: &mut [Duration]) -> String {
    delays.sort();
    match (delays.first(), delays.last()) {
        (Some(min), Some(max)) => format!("min {min:?} / median {:?} / max {max:?}", delays[delays.len() / 2]),
        _ => "none".to_string(),
    }
}

fn bulk(value: &str) -> String {
    format!("${}\r\n{value}\r\n", value.len())
}

/// Redis's CLIENT LIST ids of the tracking connections (every proxy's).
async fn tracking_ids(direct: &mut RawClient) -> Vec<String> {
    let name = format!("name={TRACKING_CONNECTION_NAME}");
    direct
        .cmd("CLIENT LIST")
        .await
        .lines()
        .filter(|line| line.split(' ').any(|field| field == name))
        .filter_map(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .map(str::to_string)
        .collect()
}

/// A key cached in one proxy's L1 and then written through the other is
/// read new within the invalidation delay; 200 rounds, in both directions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_proxy_reaches_the_l1_of_the_other() {
    let server = RedisServer::start();
    let proxies = [start_proxy(&server).await, start_proxy(&server).await];
    let mut clients = [proxies[0].raw().await, proxies[1].raw().await];
    let mut delays = Vec::new();
    let mut dropped = Vec::new();
    let mut stale_replies = 0;
    // The key does not exist at first: a cached nil must go too.
    let mut current = "$-1\r\n".to_string();
    for round in 0..200 {
        // Even rounds write through A and read through B; odd ones the other way.
        let (writer, reader) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
        // Until the reader's L1 hit count rises on it.
        let cached = cmd_until_cached(&proxies[reader], &mut clients[reader], "GET mp:k").await;
        assert_eq!(cached, current, "round {round}: the reader cached what Redis held");
        let value = format!("v{round}");
        assert_eq!(clients[writer].cmd(&format!("SET mp:k {value}")).await, "+OK\r\n");
        let acked = Instant::now();
        // The reader's L1 holds this one key: when it is empty, the
        // invalidation has been applied (often before the write's reply is
        // read here: Redis sends its message first).
        while l1_entries(&proxies[reader]) > 0 {
            assert!(
                acked.elapsed() < INVALIDATION_BOUND,
                "round {round}: the reader's L1 still holds mp:k"
            );
            tokio::task::yield_now().await;
        }
        dropped.push(acked.elapsed());
        let new = bulk(&value);
        let seen = converge(&mut clients[reader], "GET mp:k", &new, acked, |reply| reply == current).await;
        delays.push(seen.delay);
        stale_replies += seen.stale_replies;
        current = new;
    }
    eprintln!(
        "a write through one proxy, read through the other, 200 rounds: the reader's L1 dropped the key {} \
         after the write's reply; the reader read the new value {} after it; {stale_replies} replies still old",
        spread(&mut dropped),
        spread(&mut delays)
    );
}

/// One kind of write: what Redis holds first, the reads the other proxy
/// caches, and the write made through the first.
struct Case {
    name: &'static str,
    db: u32,
    resp3: bool,
    setup: &'static [&'static str],
    reads: &'static [&'static str],
    write: &'static [&'static str],
}

const fn case(
    name: &'static str,
    setup: &'static [&'static str],
    reads: &'static [&'static str],
    write: &'static [&'static str],
) -> Case {
    Case {
        name,
        db: 0,
        resp3: false,
        setup,
        reads,
        write,
    }
}

const CASES: &[Case] = &[
    case("DEL", &["SET del:k v"], &["GET del:k"], &["DEL del:k"]),
    case(
        "UNLINK of two keys",
        &["SET unlink:a 1", "SET unlink:b 2"],
        &["GET unlink:a", "GET unlink:b"],
        &["UNLINK unlink:a unlink:b"],
    ),
    case("GETDEL", &["SET getdel:k v"], &["GET getdel:k"], &["GETDEL getdel:k"]),
    case(
        "PEXPIREAT in the past",
        &["SET pexpireat:k v"],
        &["GET pexpireat:k"],
        &["PEXPIREAT pexpireat:k 1"],
    ),
    case(
        "EXPIRE with a negative time",
        &["SET expire:k v"],
        &["GET expire:k"],
        &["EXPIRE expire:k -5"],
    ),
    case(
        "GETEX PXAT in the past",
        &["SET getex:k v"],
        &["GET getex:k"],
        &["GETEX getex:k PXAT 1"],
    ),
    case(
        "SET ... GET",
        &["SET setget:k old"],
        &["GET setget:k"],
        &["SET setget:k new GET"],
    ),
    case(
        "SETEX",
        &["SET setex:k old"],
        &["GET setex:k"],
        &["SETEX setex:k 100 new"],
    ),
    case(
        "HSET on a hash cached by HGETALL",
        &["HSET hall:h a 1 b 2"],
        &["HGETALL hall:h"],
        &["HSET hall:h a 10 c 3"],
    ),
    Case {
        name: "HSET on a hash cached by HGETALL in RESP3",
        resp3: true,
        ..case(
            "",
            &["HSET hall3:h a 1 b 2"],
            &["HGETALL hall3:h"],
            &["HSET hall3:h a 10 c 3"],
        )
    },
    case(
        "HSET on a hash cached by HGET",
        &["HSET hget:h a 1 b 2"],
        &["HGET hget:h a", "HGET hget:h b", "HGET hget:h c", "HMGET hget:h c a b"],
        &["HSET hget:h a 10 c 3"],
    ),
    case(
        "HDEL",
        &["HSET hdel:h a 1 b 2"],
        &["HGET hdel:h a", "HGETALL hdel:h"],
        &["HDEL hdel:h a"],
    ),
    case(
        "HINCRBY",
        &["HSET hincr:h n 1"],
        &["HGET hincr:h n"],
        &["HINCRBY hincr:h n 5"],
    ),
    case("INCR", &["SET incr:n 41"], &["GET incr:n"], &["INCR incr:n"]),
    case(
        "MSET of three cached keys",
        &["SET mset:1 a", "SET mset:2 b", "SET mset:3 c"],
        &["GET mset:1", "GET mset:2", "GET mset:3", "MGET mset:3 mset:1 mset:2"],
        &["MSET mset:1 x mset:2 y mset:3 z"],
    ),
    case(
        "APPEND",
        &["SET append:k abc"],
        &["GET append:k"],
        &["APPEND append:k def"],
    ),
    case(
        "SETRANGE",
        &["SET setrange:k abcdef"],
        &["GET setrange:k"],
        &["SETRANGE setrange:k 2 XY"],
    ),
    case(
        "SETBIT",
        &["SET setbit:k a"],
        &["GET setbit:k"],
        &["SETBIT setbit:k 7 0"],
    ),
    case(
        "EVAL writing its declared key",
        &["SET lua:k old"],
        &["GET lua:k"],
        &["EVAL redis.call('SET',KEYS[1],'new') 1 lua:k"],
    ),
    // Undeclared keys are allowed outside a cluster; Redis's message still
    // names the key.
    case(
        "EVAL writing an undeclared key",
        &["SET lua:undeclared old"],
        &["GET lua:undeclared"],
        &["EVAL redis.call('SET','lua:undeclared','new') 0"],
    ),
    case(
        "MULTI/EXEC",
        &["SET tx:k old", "SET tx:n 1"],
        &["GET tx:k", "GET tx:n"],
        &["MULTI", "SET tx:k new", "INCR tx:n", "EXEC"],
    ),
    case(
        "RENAME onto a cached key",
        &["SET rename:src a", "SET rename:dst b"],
        &["GET rename:src", "GET rename:dst"],
        &["RENAME rename:src rename:dst"],
    ),
    case(
        "COPY ... REPLACE",
        &["SET copy:src a", "SET copy:dst b"],
        &["GET copy:dst"],
        &["COPY copy:src copy:dst REPLACE"],
    ),
    case(
        "MOVE to another database",
        &["SET move:k v"],
        &["GET move:k"],
        &["MOVE move:k 1"],
    ),
    Case {
        name: "SET in database 1",
        db: 1,
        ..case("", &["SET db1:k old"], &["GET db1:k"], &["SET db1:k new"])
    },
];

/// Every kind of write through one proxy reaches what the other proxy's L1
/// holds of it within the invalidation delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_write_through_one_proxy_reaches_the_other() {
    let server = RedisServer::start();
    let writer = start_proxy(&server).await;
    let reader = start_proxy(&server).await;
    let mut report = Vec::new();
    for (index, case) in CASES.iter().enumerate() {
        let mut direct = RawClient::connect(server.addr()).await;
        let mut through_a = writer.raw().await;
        let mut through_b = reader.raw().await;
        if case.db != 0 {
            for client in [&mut direct, &mut through_a, &mut through_b] {
                assert_eq!(client.cmd(&format!("SELECT {}", case.db)).await, "+OK\r\n");
            }
        }
        if case.resp3 {
            for client in [&mut direct, &mut through_b] {
                assert!(client.cmd("HELLO 3").await.starts_with('%'));
            }
        }
        for line in case.setup {
            let reply = direct.cmd(line).await;
            assert!(!reply.starts_with('-'), "{}: {line:?} answered {reply:?}", case.name);
        }
        // Redis's messages for the set-up applied, so none drops what B
        // caches next (a sentinel per case: the last one is cached in B).
        settle_on(&reader, &mut through_b, &mut direct, &format!("settle:{index}")).await;
        let mut old = Vec::new();
        for read in case.reads {
            let cached = cmd_until_cached(&reader, &mut through_b, read).await;
            assert_eq!(
                cached,
                direct.cmd(read).await,
                "{}: {read:?} cached as Redis has it",
                case.name
            );
            old.push(cached);
        }
        // All of them are in B's L1 at once.
        for (read, old) in case.reads.iter().zip(&old) {
            let hits = l1_hits(&reader);
            assert_eq!(&through_b.cmd(read).await, old);
            assert!(
                l1_hits(&reader) > hits,
                "{}: {read:?} is an L1 hit in B before the write",
                case.name
            );
        }

        for line in case.write {
            let reply = through_a.cmd(line).await;
            assert!(!reply.starts_with('-'), "{}: {line:?} answered {reply:?}", case.name);
        }
        let acked = Instant::now();
        let mut new = Vec::new();
        for read in case.reads {
            new.push(direct.cmd(read).await);
        }
        assert_ne!(old, new, "{}: the write must change what is read", case.name);

        let mut slowest = Duration::ZERO;
        let mut stale_replies = 0;
        for ((read, old), new) in case.reads.iter().zip(&old).zip(&new) {
            let seen = converge(&mut through_b, read, new, acked, |reply| reply == old).await;
            slowest = slowest.max(seen.delay);
            stale_replies += seen.stale_replies;
        }
        report.push(format!(
            "  {:<44} {} read(s), all new {slowest:?} after the write ({stale_replies} replies still old)",
            case.name,
            case.reads.len()
        ));
    }
    eprintln!("writes through proxy A, read through proxy B:\n{}", report.join("\n"));
}

/// FLUSHDB and FLUSHALL through one proxy leave nothing of the flushed
/// keys in the other's L1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushes_through_one_proxy_empty_the_l1_of_the_other() {
    const KEYS: usize = 200;
    let server = RedisServer::start();
    let writer = start_proxy(&server).await;
    let reader = start_proxy(&server).await;
    let mut direct = RawClient::connect(server.addr()).await;
    let mut in_db1 = RawClient::connect(server.addr()).await;
    let mut through_a = writer.raw().await;
    let mut through_b = reader.raw().await;
    let mut through_b_db1 = reader.raw().await;
    assert_eq!(in_db1.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(through_b_db1.cmd("SELECT 1").await, "+OK\r\n");
    for i in 0..KEYS {
        assert_eq!(direct.cmd(&format!("SET flush:{i} v{i}")).await, "+OK\r\n");
        assert_eq!(in_db1.cmd(&format!("SET flush1:{i} w{i}")).await, "+OK\r\n");
    }
    assert_eq!(direct.cmd("HSET flush:h a 1").await, ":1\r\n");
    settle(&reader, &mut through_b, &mut direct).await;

    // FLUSHDB of database 1: its keys are gone from B, database 0 reads as Redis has it.
    for i in 0..KEYS {
        cmd_until_cached(&reader, &mut through_b_db1, &format!("GET flush1:{i}")).await;
    }
    assert!(l1_entries(&reader) >= KEYS, "B holds database 1's keys");
    assert_eq!(through_a.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(through_a.cmd("FLUSHDB").await, "+OK\r\n");
    let acked = Instant::now();
    let mut first = None;
    for i in 0..KEYS {
        let line = format!("GET flush1:{i}");
        let old = bulk(&format!("w{i}"));
        let seen = converge(&mut through_b_db1, &line, "$-1\r\n", acked, |reply| reply == old).await;
        first.get_or_insert(seen.delay);
    }
    eprintln!(
        "FLUSHDB through A: B read the first key as gone {:?} after it, all {KEYS} (one by one) {:?} after it",
        first.expect("keys"),
        acked.elapsed()
    );
    for i in (0..KEYS).step_by(17) {
        assert_eq!(through_b.cmd(&format!("GET flush:{i}")).await, bulk(&format!("v{i}")));
    }

    // FLUSHALL: every entry of B goes, strings and hashes alike.
    for i in 0..KEYS {
        cmd_until_cached(&reader, &mut through_b, &format!("GET flush:{i}")).await;
    }
    cmd_until_cached(&reader, &mut through_b, "HGETALL flush:h").await;
    cmd_until_cached(&reader, &mut through_b, "HGET flush:h a").await;
    assert!(l1_entries(&reader) > KEYS, "B holds database 0's keys");
    assert_eq!(through_a.cmd("FLUSHALL").await, "+OK\r\n");
    let acked = Instant::now();
    poll_until_async("B's L1 to be emptied by the FLUSHALL", || {
        let empty = l1_entries(&reader) == 0;
        async move { empty }
    })
    .await;
    let emptied = acked.elapsed();
    assert!(
        emptied < INVALIDATION_BOUND,
        "B's L1 emptied {emptied:?} after the FLUSHALL"
    );
    eprintln!("FLUSHALL through A: B's L1 empty after {emptied:?}");
    for i in 0..KEYS {
        assert_eq!(through_b.cmd(&format!("GET flush:{i}")).await, "$-1\r\n");
    }
    assert_eq!(through_b.cmd("HGETALL flush:h").await, "*0\r\n");
    assert_eq!(through_b.cmd("HGET flush:h a").await, "$-1\r\n");
}

/// A write that bypasses both proxies (a client straight to Redis) reaches
/// the L1 of each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_straight_to_redis_reaches_the_l1_of_both_proxies() {
    let server = RedisServer::start();
    let a = start_proxy(&server).await;
    let b = start_proxy(&server).await;
    let mut direct = RawClient::connect(server.addr()).await;
    let mut through_a = a.raw().await;
    let mut through_b = b.raw().await;
    let (mut delays_a, mut delays_b) = (Vec::new(), Vec::new());
    let mut current = "$-1\r\n".to_string();
    for round in 0..100 {
        assert_eq!(cmd_until_cached(&a, &mut through_a, "GET direct:k").await, current);
        assert_eq!(cmd_until_cached(&b, &mut through_b, "GET direct:k").await, current);
        let value = format!("d{round}");
        assert_eq!(direct.cmd(&format!("SET direct:k {value}")).await, "+OK\r\n");
        let acked = Instant::now();
        let new = bulk(&value);
        let (seen_a, seen_b) = tokio::join!(
            converge(&mut through_a, "GET direct:k", &new, acked, |reply| reply == current),
            converge(&mut through_b, "GET direct:k", &new, acked, |reply| reply == current),
        );
        delays_a.push(seen_a.delay);
        delays_b.push(seen_b.delay);
        current = new;
    }
    eprintln!(
        "a write straight to Redis, 100 rounds: proxy A {}; proxy B {}",
        spread(&mut delays_a),
        spread(&mut delays_b)
    );
}

const SEQ_KEYS: usize = 6;
const WRITES_PER_KEY: u64 = 100;
const READERS_PER_PROXY: usize = 2;
/// A writer writes again once the readers have made this many reads in
/// all: about four reads of each key through each proxy per write, so
/// most reads can be L1 hits and some come right after a write elsewhere.
const READS_PER_WRITE: u64 = 4 * (SEQ_KEYS * 3) as u64;

/// What the readers share with the writers.
#[derive(Default)]
struct ReadProgress {
    reads: AtomicU64,
    stop: AtomicBool,
}

/// One acknowledged `SET seq:<key> <seq>`.
struct Write {
    started: Instant,
    acked: Instant,
}

/// One `GET seq:<key>` and the seq it answered.
struct Read {
    key: usize,
    started: Instant,
    ended: Instant,
    seq: u64,
}

/// The only writer of `seq:<key>`: sets 1, 2, ... through a proxy chosen
/// at random (seeded) for each write, each once the readers have read on.
/// Entry `i` of the log is seq `i + 1`.
async fn write_sequence(key: usize, mut clients: Vec<RawClient>, progress: Arc<ReadProgress>) -> Vec<Write> {
    let mut seed = (key as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut log = Vec::new();
    for seq in 1..=WRITES_PER_KEY {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let client = &mut clients[(seed % 3) as usize];
        let started = Instant::now();
        assert_eq!(client.cmd(&format!("SET seq:{key} {seq}")).await, "+OK\r\n");
        log.push(Write {
            started,
            acked: Instant::now(),
        });
        if seq == WRITES_PER_KEY {
            break;
        }
        let mark = progress.reads.load(Ordering::Relaxed);
        poll_until_async("the readers to read on", || {
            let done = progress.reads.load(Ordering::Relaxed) >= mark + READS_PER_WRITE;
            async move { done }
        })
        .await;
    }
    log
}

/// Reads every key in turn through one proxy until told to stop.
async fn read_sequences(mut client: RawClient, first: usize, progress: Arc<ReadProgress>) -> Vec<Read> {
    let mut log = Vec::new();
    let mut key = first;
    while !progress.stop.load(Ordering::Relaxed) {
        key = (key + 1) % SEQ_KEYS;
        let started = Instant::now();
        let reply = client.cmd(&format!("GET seq:{key}")).await;
        let ended = Instant::now();
        let seq = reply
            .split("\r\n")
            .nth(1)
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("GET seq:{key} answered {reply:?}"));
        log.push(Read {
            key,
            started,
            ended,
            seq,
        });
        progress.reads.fetch_add(1, Ordering::Relaxed);
    }
    log
}

/// Three proxies under concurrent load: each key has one writer that goes
/// through a random proxy each time, and readers read every key through
/// every proxy. No read answers a seq that was not yet being written, or
/// one older than a write acknowledged [`INVALIDATION_BOUND`] before the
/// read began; once the writers stop, every proxy answers every key's last
/// seq within the bound (a proxy that missed an invalidation would keep
/// its stale copy for the L1 TTL, a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_proxies_under_concurrent_writes_never_serve_an_invalidated_value() {
    let server = RedisServer::start();
    let proxies = [
        start_proxy(&server).await,
        start_proxy(&server).await,
        start_proxy(&server).await,
    ];
    let mut direct = RawClient::connect(server.addr()).await;
    for key in 0..SEQ_KEYS {
        assert_eq!(direct.cmd(&format!("SET seq:{key} 0")).await, "+OK\r\n");
    }
    for (index, proxy) in proxies.iter().enumerate() {
        settle_on(proxy, &mut proxy.raw().await, &mut direct, &format!("settle:{index}")).await;
    }
    let hits_before: Vec<u64> = proxies.iter().map(l1_hits).collect();

    let progress = Arc::new(ReadProgress::default());
    let mut readers = Vec::new();
    for (index, proxy) in proxies.iter().enumerate() {
        for reader in 0..READERS_PER_PROXY {
            let client = proxy.raw().await;
            let first = index * READERS_PER_PROXY + reader;
            readers.push((index, tokio::spawn(read_sequences(client, first, progress.clone()))));
        }
    }
    let mut writers = Vec::new();
    for key in 0..SEQ_KEYS {
        let mut clients = Vec::new();
        for proxy in &proxies {
            clients.push(proxy.raw().await);
        }
        writers.push(tokio::spawn(write_sequence(key, clients, progress.clone())));
    }
    let started = Instant::now();
    let mut writes = Vec::new();
    for writer in writers {
        writes.push(writer.await.expect("writer"));
    }
    let wrote_for = started.elapsed();
    progress.stop.store(true, Ordering::Relaxed);
    let mut reads = Vec::new();
    for (proxy, reader) in readers {
        reads.push((proxy, reader.await.expect("reader")));
    }

    let mut staleness = Vec::new();
    let mut count = 0;
    for (proxy, log) in &reads {
        let mut last_seen = [0u64; SEQ_KEYS];
        for read in log {
            count += 1;
            let key_writes = &writes[read.key];
            assert!(
                read.seq <= WRITES_PER_KEY,
                "seq:{} = {} was never written",
                read.key,
                read.seq
            );
            if read.seq > 0 {
                let source = &key_writes[read.seq as usize - 1];
                assert!(
                    source.started <= read.ended,
                    "proxy {proxy} answered seq:{} = {} before it was written",
                    read.key,
                    read.seq
                );
            }
            // The first write that replaced the value read, if it was
            // acknowledged before the read began.
            if let Some(next) = key_writes.get(read.seq as usize)
                && next.acked < read.started
            {
                let late = read.started - next.acked;
                assert!(
                    late < INVALIDATION_BOUND,
                    "proxy {proxy} answered seq:{} = {} {late:?} after seq {} was acknowledged",
                    read.key,
                    read.seq,
                    read.seq + 1
                );
                staleness.push(late);
            }
            assert!(
                read.seq >= last_seen[read.key],
                "proxy {proxy} answered seq:{} = {} to a reader that had read {} before",
                read.key,
                read.seq,
                last_seen[read.key]
            );
            last_seen[read.key] = last_seen[read.key].max(read.seq);
        }
    }
    for (index, proxy) in proxies.iter().enumerate() {
        assert!(
            l1_hits(proxy) > hits_before[index],
            "proxy {index} answered reads from L1 during the run"
        );
    }

    // Quiet now: every proxy answers every key's last seq.
    let last = WRITES_PER_KEY.to_string();
    let mut settled = Vec::new();
    for proxy in &proxies {
        let mut client = proxy.raw().await;
        for (key, key_writes) in writes.iter().enumerate() {
            let acked = key_writes.last().expect("writes").acked;
            let line = format!("GET seq:{key}");
            let seen = converge(&mut client, &line, &bulk(&last), acked, |reply| reply.starts_with('$')).await;
            settled.push(seen.delay);
        }
    }
    let stale_reads = staleness.len();
    eprintln!(
        "three proxies: {SEQ_KEYS} keys x {WRITES_PER_KEY} writes in {wrote_for:?}, {count} reads, {} L1 hits; \
         {stale_reads} reads answered a value replaced by a write acknowledged before they began, \
         by {}; \
         then every proxy answered every key's last seq, at most {:?} after that write (checked once the run was over)",
        proxies
            .iter()
            .enumerate()
            .map(|(i, p)| l1_hits(p) - hits_before[i])
            .sum::<u64>(),
        spread(&mut staleness),
        settled.iter().max().expect("keys")
    );
}

/// A proxy whose tracking connection is killed (and kept from coming back)
/// stops answering from L1 and keeps nothing it held; the other proxy goes
/// on as before. A write through the other proxy during the outage is
/// never answered stale by the first, during it or after tracking is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_lost_tracking_never_serves_what_changed_meanwhile() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    let a = start_proxy(&server).await;
    let a_ids = tracking_ids(&mut direct).await;
    assert_eq!(a_ids.len(), 1, "A's tracking connection: {a_ids:?}");
    let a_id = a_ids[0].clone();
    let b = start_proxy(&server).await;
    let ids = tracking_ids(&mut direct).await;
    assert_eq!(ids.len(), 2, "both proxies' tracking connections: {ids:?}");
    let b_id = ids.into_iter().find(|id| *id != a_id).expect("B's tracking connection");

    let mut through_a = a.raw().await;
    let mut through_b = b.raw().await;
    assert_eq!(direct.cmd("SET outage:k v1").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET outage:other x").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET outage:a a1").await, "+OK\r\n");
    settle(&b, &mut through_b, &mut direct).await;
    settle(&a, &mut through_a, &mut direct).await;
    assert_eq!(cmd_until_cached(&b, &mut through_b, "GET outage:k").await, bulk("v1"));
    assert_eq!(
        cmd_until_cached(&b, &mut through_b, "GET outage:other").await,
        bulk("x")
    );
    assert_eq!(cmd_until_cached(&a, &mut through_a, "GET outage:a").await, bulk("a1"));

    // The outage: B's tracking connection killed, and kept from coming
    // back by an ACL that refuses CLIENT TRACKING (A's, set up already, is
    // not asked again).
    assert_eq!(direct.cmd("ACL SETUSER default -client|tracking").await, "+OK\r\n");
    assert_eq!(direct.cmd(&format!("CLIENT KILL ID {b_id}")).await, ":1\r\n");
    poll_until_async("B to notice its tracking connection is gone", || {
        let off = !tracking_on(&b);
        async move { off }
    })
    .await;
    assert_eq!(l1_entries(&b), 0, "B keeps nothing it cached before the outage");

    // A write through A: B answers it from Redis, and nothing from L1.
    assert_eq!(through_a.cmd("SET outage:k v2").await, "+OK\r\n");
    let hits = l1_hits(&b);
    for _ in 0..20 {
        assert_eq!(through_b.cmd("GET outage:k").await, bulk("v2"));
        assert_eq!(through_b.cmd("GET outage:other").await, bulk("x"));
    }
    assert_eq!(l1_hits(&b), hits, "B answers nothing from L1 while tracking is down");
    assert_eq!(l1_entries(&b), 0, "B stores nothing while tracking is down");

    // A is unaffected: same tracking connection, caching, and invalidated
    // by a write straight to Redis.
    assert!(tracking_on(&a));
    assert_eq!(cmd_until_cached(&a, &mut through_a, "GET outage:a").await, bulk("a1"));
    assert_eq!(direct.cmd("SET outage:a a2").await, "+OK\r\n");
    let acked = Instant::now();
    let old = bulk("a1");
    let seen = converge(&mut through_a, "GET outage:a", &bulk("a2"), acked, |reply| reply == old).await;
    eprintln!(
        "during B's outage, A saw a write straight to Redis after {:?}",
        seen.delay
    );
    assert!(
        tracking_ids(&mut direct).await.contains(&a_id),
        "A's tracking connection is the one it had"
    );

    // Tracking back: B answers what the outage's write left, never what it cached before.
    assert_eq!(direct.cmd("ACL SETUSER default +client|tracking").await, "+OK\r\n");
    let down_since = Instant::now();
    poll_until_async("B's tracking to come back", || {
        let on = tracking_on(&b);
        async move { on }
    })
    .await;
    eprintln!(
        "B's tracking back {:?} after CLIENT TRACKING was allowed again",
        down_since.elapsed()
    );
    let ids = tracking_ids(&mut direct).await;
    assert!(
        ids.len() == 2 && ids.contains(&a_id) && !ids.contains(&b_id),
        "A's tracking connection and a new one of B's: {ids:?}"
    );
    assert_eq!(
        through_b.cmd("GET outage:k").await,
        bulk("v2"),
        "B answers the outage's write, not what it cached before"
    );
    assert_eq!(cmd_until_cached(&b, &mut through_b, "GET outage:k").await, bulk("v2"));
    // And invalidations reach B again.
    assert_eq!(through_a.cmd("SET outage:k v3").await, "+OK\r\n");
    let acked = Instant::now();
    let old = bulk("v2");
    converge(&mut through_b, "GET outage:k", &bulk("v3"), acked, |reply| reply == old).await;
}
