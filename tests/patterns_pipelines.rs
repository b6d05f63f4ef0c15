//! Pattern events in mixed pipelines (regressions from a review): each read
//! heard at its own reply position, in its database, once, with errors,
//! transactions, SELECT, versioned names, partly cached MGET/HMGET, batches
//! longer than one, RESP3 scalars through L1 fills, and sampling.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use auracache::config::Config;
use common::values::{fields, int, text};
use common::{Proxy, RawClient, RedisServer};
use redis::Value;

/// (db, key) -> (accesses, l1_hits, l2_hits, misses)
type Seen = BTreeMap<(i64, String), (i64, i64, i64, i64)>;

async fn seen(client: &mut RawClient) -> Seen {
    let reply = client.command(&[b"PROXY", b"PATTERNS", b"COUNT", b"10000"]).await;
    let value = redis::parse_redis_value(&reply).unwrap();
    let Value::Array(entries) = value else {
        panic!("{value:?}")
    };
    entries
        .into_iter()
        .map(fields)
        .map(|e| {
            (
                (int(&e["db"]), text(&e["key"])),
                (
                    int(&e["accesses"]),
                    int(&e["l1_hits"]),
                    int(&e["l2_hits"]),
                    int(&e["misses"]),
                ),
            )
        })
        .collect()
}

async fn recorded(client: &mut RawClient, total: i64) -> Seen {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = seen(client).await;
        let n: i64 = s.values().map(|v| v.0).sum();
        if n >= total || std::time::Instant::now() > deadline {
            // a little more time for any extra (double counted) events
            tokio::time::sleep(Duration::from_millis(200)).await;
            return seen(client).await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn quiet(config: &mut Config) {
    config.memory_cache.enabled = false;
    config.patterns.min_access_count = 1;
}

async fn pipeline(client: &mut RawClient, commands: &[&[&[u8]]]) -> Vec<Vec<u8>> {
    let mut bytes = Vec::new();
    for c in commands {
        bytes.extend_from_slice(&common::encode(c));
    }
    client.send(&bytes).await;
    let mut out = Vec::new();
    for _ in commands {
        out.push(client.read_reply().await);
    }
    out
}

async fn seed(server: &RedisServer) {
    let mut direct = RawClient::connect(server.addr()).await;
    direct.cmd("SET a va").await;
    direct.cmd("SET b vb").await;
    direct.cmd("HSET h f1 v1").await;
    direct.cmd("SELECT 2").await;
    direct.cmd("SET b2 x").await;
}

fn expected_mixed() -> Seen {
    let mut e = Seen::new();
    e.insert((0, "a".into()), (1, 0, 1, 0));
    e.insert((0, "b".into()), (1, 0, 1, 0));
    e.insert((0, "c".into()), (2, 0, 0, 2));
    e.insert((0, "h".into()), (1, 0, 1, 0));
    e.insert((2, "a".into()), (2, 0, 0, 2));
    e.insert((2, "b2".into()), (1, 0, 1, 0));
    e
}

const MIXED: &[&[&[u8]]] = &[
    &[b"GET", b"a"],
    &[b"MGET", b"b", b"c"],
    &[b"HGET", b"a", b"x"], // WRONGTYPE: not an access
    &[b"HMGET", b"h", b"f1", b"f2"],
    &[b"GET", b"h"], // WRONGTYPE
    &[b"GET", b"c"],
    &[b"SELECT", b"2"],
    &[b"GET", b"a"],
    &[b"MGET", b"a", b"b2"],
];

#[tokio::test]
async fn mixed_pipeline_l1_off() {
    let server = RedisServer::start();
    seed(&server).await;
    let proxy = Proxy::start_with(&server.url(), quiet).await;
    let mut client = proxy.raw().await;
    let replies = pipeline(&mut client, MIXED).await;
    assert!(replies[2].starts_with(b"-WRONGTYPE"));
    let mut admin = proxy.raw().await;
    assert_eq!(recorded(&mut admin, 8).await, expected_mixed());
}

#[tokio::test]
async fn mixed_pipeline_resp3_l1_off() {
    let server = RedisServer::start();
    seed(&server).await;
    let proxy = Proxy::start_with(&server.url(), quiet).await;
    let mut client = proxy.raw().await;
    assert!(client.cmd("HELLO 3").await.starts_with('%'));
    pipeline(&mut client, MIXED).await;
    let mut admin = proxy.raw().await;
    assert_eq!(recorded(&mut admin, 8).await, expected_mixed());
}

#[tokio::test]
async fn mixed_pipeline_l1_on_first_round() {
    let server = RedisServer::start();
    seed(&server).await;
    let proxy = Proxy::start_with(&server.url(), common::values::eager).await;
    let mut client = proxy.raw().await;
    let replies = pipeline(&mut client, MIXED).await;
    assert_eq!(replies[1], b"*2\r\n$2\r\nvb\r\n$-1\r\n");
    let mut admin = proxy.raw().await;
    let got = recorded(&mut admin, 8).await;
    // Totals per (db, key): L1 may answer the repeat GET c from a nil fill.
    let totals: BTreeMap<_, _> = got.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    let want: BTreeMap<_, _> = expected_mixed().iter().map(|(k, v)| (k.clone(), v.0)).collect();
    assert_eq!(totals, want, "{got:?}");
}

#[tokio::test]
async fn mixed_pipeline_l1_on_partial_hits() {
    let server = RedisServer::start();
    seed(&server).await;
    let proxy = Proxy::start_with(&server.url(), common::values::eager).await;
    let mut client = proxy.raw().await;
    // warm a and h:f1 in L1
    common::read_until_cached(&proxy, &mut client, "a").await;
    let mut admin = proxy.raw().await;
    let before: i64 = recorded(&mut admin, 1).await.values().map(|v| v.0).sum();
    let replies = pipeline(
        &mut client,
        &[
            &[b"MGET", b"a", b"c", b"b"],
            &[b"GET", b"zz"],
            &[b"MGET", b"c", b"a"],
            &[b"HMGET", b"h", b"f1", b"nope"],
        ],
    )
    .await;
    assert_eq!(replies[0], b"*3\r\n$2\r\nva\r\n$-1\r\n$2\r\nvb\r\n");
    assert_eq!(replies[2], b"*2\r\n$-1\r\n$2\r\nva\r\n");
    let got = recorded(&mut admin, before + 7).await;
    let total: i64 = got.values().map(|v| v.0).sum();
    assert_eq!(total, before + 7, "{got:?}");
    assert_eq!(got[&(0, "b".into())], (1, 0, 1, 0), "{got:?}");
    assert_eq!(got[&(0, "zz".into())], (1, 0, 0, 1), "{got:?}");
    assert_eq!(got[&(0, "h".into())], (1, 0, 1, 0), "{got:?}");
}

#[tokio::test]
async fn reads_in_a_transaction_pipeline() {
    let server = RedisServer::start();
    seed(&server).await;
    let proxy = Proxy::start_with(&server.url(), quiet).await;
    let mut client = proxy.raw().await;
    pipeline(
        &mut client,
        &[
            &[b"GET", b"a"],
            &[b"MULTI"],
            &[b"GET", b"b"],
            &[b"EXEC"],
            &[b"MGET", b"c", b"b"],
            &[b"SELECT", b"2"],
            &[b"GET", b"b2"],
        ],
    )
    .await;
    let mut admin = proxy.raw().await;
    let got = recorded(&mut admin, 4).await;
    let mut want = Seen::new();
    want.insert((0, "a".into()), (1, 0, 1, 0));
    want.insert((0, "b".into()), (1, 0, 1, 0));
    want.insert((0, "c".into()), (1, 0, 0, 1));
    want.insert((2, "b2".into()), (1, 0, 1, 0));
    assert_eq!(got, want);
}

fn versioned(config: &mut Config) {
    let app = config.namespaces.entry("app".into()).or_default();
    app.version = Some(2);
    app.fallback_versions = vec![1];
    config.patterns.min_access_count = 1;
}

async fn versioned_pipeline(l1: bool) {
    let server = RedisServer::start();
    {
        let mut direct = RawClient::connect(server.addr()).await;
        direct.cmd("SET v1:app:old o").await;
        direct.cmd("SET plain:p p").await;
    }
    let proxy = Proxy::start_with(&server.url(), |config| {
        versioned(config);
        if l1 {
            common::l1_eager(config);
        } else {
            config.memory_cache.enabled = false;
        }
    })
    .await;
    let versions = proxy.handle().versions().expect("versioning on").clone();
    common::poll_until("key table", || versions.table_learned());
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET app:new n").await, "+OK\r\n");
    assert_eq!(client.cmd("HSET app:h f v").await, ":1\r\n");
    let replies = pipeline(
        &mut client,
        &[
            &[b"GET", b"app:old"],
            &[b"MGET", b"plain:p", b"app:new", b"app:none"],
            &[b"GET", b"app:h"],
            &[b"HMGET", b"app:h", b"f", b"g"],
            &[b"GET", b"app:none"],
            &[b"SELECT", b"1"],
            &[b"GET", b"app:new"],
        ],
    )
    .await;
    assert_eq!(replies[0], b"$1\r\no\r\n");
    assert_eq!(replies[1], b"*3\r\n$1\r\np\r\n$1\r\nn\r\n$-1\r\n");
    let mut admin = proxy.raw().await;
    let got = recorded(&mut admin, 7).await;
    let totals: BTreeMap<_, _> = got.iter().map(|(k, v)| (k.clone(), v.0)).collect();
    let mut want = BTreeMap::new();
    want.insert((0, "app:old".to_string()), 1);
    want.insert((0, "plain:p".to_string()), 1);
    want.insert((0, "app:new".to_string()), 1);
    want.insert((0, "app:none".to_string()), 2);
    want.insert((0, "app:h".to_string()), 1);
    want.insert((1, "app:new".to_string()), 1);
    assert_eq!(totals, want, "{got:?}");
    if !l1 {
        assert_eq!(got[&(0, "app:old".into())], (1, 0, 1, 0), "{got:?}");
        assert_eq!(got[&(0, "app:new".into())], (1, 0, 1, 0), "{got:?}");
        assert_eq!(got[&(0, "app:none".into())], (2, 0, 0, 2), "{got:?}");
        assert_eq!(got[&(1, "app:new".into())], (1, 0, 0, 1), "{got:?}");
        assert_eq!(got[&(0, "app:h".into())], (1, 0, 1, 0), "{got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_pipeline_l1_off() {
    versioned_pipeline(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versioned_pipeline_l1_on() {
    versioned_pipeline(true).await;
}

/// RESP3 replies of every scalar kind between L1 fills and merges: the
/// client's replies equal Redis's.
#[tokio::test]
async fn resp3_scalars_between_l1_fills_reach_the_client_intact() {
    let direct_server = RedisServer::start();
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), common::values::eager).await;
    let mut direct = RawClient::connect(direct_server.addr()).await;
    let mut proxied = proxy.raw().await;
    for c in [&mut direct, &mut proxied] {
        assert!(c.cmd("HELLO 3").await.starts_with('%'));
        c.cmd("SET k1 one").await;
        c.cmd("SET k2 \r\n").await;
        c.cmd("HSET h f a").await;
        c.cmd("SET empty \"\"").await;
    }
    // A value with CRLF inside, and an empty one.
    for c in [&mut direct, &mut proxied] {
        c.command(&[b"SET", b"crlf", b"a\r\n:1\r\n$3\r\n"]).await;
        c.command(&[b"SET", b"empty", b""]).await;
    }
    let script = |s: &'static str| -> Vec<&'static [u8]> { vec![b"EVAL", s.as_bytes(), b"0"] };
    let d = script("redis.setresp(3); return {double=3.14}");
    let bn = script("redis.setresp(3); return {big_number='123456789012345678901234567890'}");
    let t = script("redis.setresp(3); return true");
    let nil = script("redis.setresp(3); return nil");
    let vs = script("redis.setresp(3); return {verbatim_string={format='txt', string='a\\r\\nb'}}");
    let err = script("return redis.error_reply('MY err')");
    let commands: Vec<Vec<&[u8]>> = vec![
        d.clone(),
        vec![b"GET", b"k1"],
        bn.clone(),
        vec![b"GET", b"crlf"],
        t.clone(),
        vec![b"MGET", b"k1", b"crlf", b"empty", b"missing"],
        vs.clone(),
        vec![b"GET", b"empty"],
        nil.clone(),
        vec![b"HMGET", b"h", b"f", b"g"],
        err.clone(),
        vec![b"HGETALL", b"h"],
        vec![b"ZSCORE", b"nozset", b"m"],
        vec![b"GET", b"missing"],
        vec![b"HGET", b"h", b"f"],
    ];
    let refs: Vec<&[&[u8]]> = commands.iter().map(|c| c.as_slice()).collect();
    for round in 0..3 {
        let want = pipeline(&mut direct, &refs).await;
        let got = pipeline(&mut proxied, &refs).await;
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            assert_eq!(
                String::from_utf8_lossy(g),
                String::from_utf8_lossy(w),
                "round {round}, reply {i}"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// More commands than one batch holds, alternating hits and misses.
#[tokio::test]
async fn a_pipeline_longer_than_a_batch_counts_every_read_once() {
    let server = RedisServer::start();
    {
        let mut direct = RawClient::connect(server.addr()).await;
        for i in 0..600 {
            if i % 2 == 0 {
                direct.cmd(&format!("SET k:{i} v")).await;
            }
        }
    }
    let proxy = Proxy::start_with(&server.url(), quiet).await;
    let mut client = proxy.raw().await;
    let names: Vec<String> = (0..600).map(|i| format!("k:{i}")).collect();
    let commands: Vec<Vec<&[u8]>> = names.iter().map(|n| vec![&b"GET"[..], n.as_bytes()]).collect();
    let refs: Vec<&[&[u8]]> = commands.iter().map(|c| c.as_slice()).collect();
    pipeline(&mut client, &refs).await;
    let mut admin = proxy.raw().await;
    let got = recorded(&mut admin, 600).await;
    assert_eq!(got.len(), 600);
    for (i, name) in names.iter().enumerate() {
        let want = if i % 2 == 0 { (1, 0, 1, 0) } else { (1, 0, 0, 1) };
        assert_eq!(got[&(0, name.clone())], want, "{name}");
    }
}

async fn info_number(client: &mut RawClient, name: &str) -> u64 {
    let info = client.cmd("INFO cache").await;
    common::values::info_field(&info, name).parse().unwrap()
}

/// Under a small budget, every read offered is recorded, sampled out or
/// dropped: exactly once (L1 off and on, GETs and MGETs).
#[tokio::test]
async fn every_read_offered_is_accounted_once_under_sampling() {
    for l1 in [false, true] {
        let server = RedisServer::start();
        let proxy = Proxy::start_with(&server.url(), |config| {
            if l1 {
                common::l1_eager(config);
            } else {
                config.memory_cache.enabled = false;
            }
            config.patterns.min_access_count = 1;
            config.patterns.max_events_per_sec = 200;
        })
        .await;
        let mut client = proxy.raw().await;
        let mut offered = 0u64;
        for round in 0..20 {
            let names: Vec<String> = (0..100).map(|i| format!("k:{round}:{i}")).collect();
            let mut commands: Vec<Vec<&[u8]>> = names.iter().map(|n| vec![&b"GET"[..], n.as_bytes()]).collect();
            commands.push(vec![
                b"MGET",
                names[0].as_bytes(),
                names[1].as_bytes(),
                names[2].as_bytes(),
            ]);
            offered += 103;
            let refs: Vec<&[&[u8]]> = commands.iter().map(|c| c.as_slice()).collect();
            pipeline(&mut client, &refs).await;
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
        let mut admin = proxy.raw().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let events = info_number(&mut admin, "pattern_events").await;
        let dropped = info_number(&mut admin, "pattern_events_dropped").await;
        let sampled = info_number(&mut admin, "pattern_events_sampled_out").await;
        assert!(sampled > 0, "l1 {l1}: sampling engaged");
        assert_eq!(
            events + dropped + sampled,
            offered,
            "l1 {l1}: {events} + {dropped} + {sampled}"
        );
        let recorded: i64 = seen(&mut admin).await.values().map(|v| v.0).sum();
        assert_eq!(recorded as u64, events, "l1 {l1}");
    }
}

/// On the client's own connection, SELECT goes to Redis in the pipeline;
/// reads after it are of the new db (a refused SELECT changes nothing).
#[tokio::test]
async fn dedicated_connection_select_in_a_pipeline() {
    let server = RedisServer::start();
    seed(&server).await;
    let proxy = Proxy::start_with(&server.url(), quiet).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("CLIENT SETNAME me").await, "+OK\r\n");
    let replies = pipeline(
        &mut client,
        &[
            &[b"GET", b"a"],
            &[b"SELECT", b"2"],
            &[b"MGET", b"a", b"b2"],
            &[b"SELECT", b"99"],
            &[b"GET", b"b2"],
        ],
    )
    .await;
    assert!(replies[3].starts_with(b"-"));
    let mut admin = proxy.raw().await;
    let got = recorded(&mut admin, 4).await;
    let mut want = Seen::new();
    want.insert((0, "a".into()), (1, 0, 1, 0));
    want.insert((2, "a".into()), (1, 0, 0, 1));
    want.insert((2, "b2".into()), (2, 0, 2, 0));
    assert_eq!(got, want);
}
