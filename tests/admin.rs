//! What the proxy answers itself: `INFO cache` (its connection counts must
//! match what Redis sees) and the commands it refuses.

mod common;

use common::{Proxy, RawClient, RedisServer};

/// Dedicated connections exist only while their client does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dedicated_connections_are_counted_and_released() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let stats = proxy.handle().stats().clone();
    let mut clients = Vec::new();
    for _ in 0..3 {
        let mut client = proxy.raw().await;
        assert_eq!(client.cmd("MULTI").await, "+OK\r\n");
        clients.push(client);
    }
    assert_eq!(stats.upstream_dedicated(), 3);
    let mut direct = RawClient::connect(server.addr()).await;
    let list = direct.cmd("CLIENT LIST").await;
    let pooled = list.lines().filter(|line| line.contains("name=auracache:pool")).count();
    let dedicated = list.lines().filter(|line| line.contains("cmd=multi")).count();
    assert_eq!(dedicated, 3, "{list}");

    // The same numbers, as an operator reads them through the proxy.
    let mut operator = proxy.raw().await;
    let info = operator.cmd("INFO cache").await;
    assert!(info.contains("# Cache\r\n"), "{info}");
    assert!(info.contains("upstream_connections_dedicated:3\r\n"), "{info}");
    assert!(
        info.contains(&format!("upstream_connections_pooled:{pooled}\r\n")),
        "{info}"
    );
    assert!(info.contains("clients_connected:4\r\n"), "{info}");

    drop(clients);
    common::poll_until("dedicated connections to close", || stats.upstream_dedicated() == 0);
    assert!(
        operator
            .cmd("INFO cache")
            .await
            .contains("upstream_connections_dedicated:0\r\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_commands_are_refused_by_name() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut client = proxy.raw().await;
    assert_eq!(
        client.cmd("SYNC").await,
        "-ERR SYNC is not supported by auracache: replication is not proxied; connect replicas to Redis directly\r\n"
    );
    assert!(
        client
            .cmd("psync ? -1")
            .await
            .starts_with("-ERR PSYNC is not supported by auracache: ")
    );
    assert_eq!(client.cmd("PING").await, "+PONG\r\n", "the client stays usable");
}

/// `INFO`, `INFO all` and `INFO everything` answer Redis's sections with
/// the proxy's `# Cache` appended, in the reply type Redis uses (a bulk
/// string in RESP2, a verbatim string in RESP3), so INFO parsers read both;
/// other sections are Redis's alone, and INFO queued in MULTI is Redis's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_appends_the_cache_section_to_redis_sections() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    for command in ["INFO", "INFO all", "INFO everything"] {
        let reply = client.cmd(command).await;
        let (header, body) = reply.split_once("\r\n").expect("a bulk string");
        let len: usize = header.strip_prefix('$').expect("bulk").parse().expect("length");
        assert_eq!(body.len(), len + 2, "{command}: length matches");
        assert!(body.contains("# Server\r\n"), "{command}");
        assert!(body.contains("redis_version:"), "{command}");
        let cache = body
            .find("\r\n# Cache\r\n")
            .expect("the cache section, after a blank line");
        assert!(body[cache..].contains("l1_enabled:"), "{command}");
        assert!(body[cache..].contains("tracking_connected:"), "{command}");
        assert!(body.ends_with("\r\n\r\n") || body.ends_with("\r\n"), "{command}");
    }
    // Several sections, one of them ours: Redis's, then ours.
    let both = client.cmd("INFO server cache").await;
    assert!(
        both.contains("redis_version:") && both.contains("# Cache\r\n"),
        "{both}"
    );
    assert!(!both.contains("# Clients"), "only the sections asked for: {both}");
    // The sections a client asks for by name are Redis's.
    let server_only = client.cmd("INFO server").await;
    assert!(server_only.contains("redis_version:") && !server_only.contains("# Cache"));
    // RESP3: a verbatim string, still with the section.
    let mut resp3 = RawClient::connect(proxy.addr()).await;
    resp3.cmd("HELLO 3").await;
    let reply = resp3.cmd("INFO").await;
    let (header, body) = reply.split_once("\r\n").expect("a verbatim string");
    let len: usize = header.strip_prefix('=').expect("verbatim").parse().expect("length");
    assert_eq!(body.len(), len + 2);
    assert!(body.starts_with("txt:") && body.contains("# Cache\r\n"));
    // Queued in MULTI: Redis's own answer in EXEC's array.
    assert_eq!(client.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(client.cmd("INFO").await, "+QUEUED\r\n");
    let exec = client.cmd("EXEC").await;
    assert!(exec.contains("redis_version:") && !exec.contains("# Cache"));
    // redis-cli reads it as it reads Redis's.
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &proxy.addr().port().to_string(), "INFO"])
        .output()
        .expect("redis-cli runs");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.contains("# Cache") && text.contains("redis_version:"), "{text}");
}

/// `PROXY FLUSHL1 [namespace]` drops what L1 holds (of one namespace)
/// and answers how many keys it dropped; Redis keeps its data, and the
/// next read of a dropped key goes to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushl1_drops_l1_entries_of_one_namespace_or_all() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), common::l1_eager).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    let mut direct = RawClient::connect(server.addr()).await;
    for key in ["user:1", "user:2", "report:1"] {
        direct.cmd(&format!("SET {key} v")).await;
        common::read_until_cached(&proxy, &mut client, key).await;
    }
    assert_eq!(client.cmd("PROXY FLUSHL1 user").await, ":2\r\n");
    let gets = common::redis_calls(&mut direct, "get").await;
    assert_eq!(client.cmd("GET user:1").await, "$1\r\nv\r\n");
    assert_eq!(
        common::redis_calls(&mut direct, "get").await,
        gets + 1,
        "user:1 read from Redis"
    );
    let hits = common::l1_hits(&proxy);
    assert_eq!(client.cmd("GET report:1").await, "$1\r\nv\r\n");
    assert_eq!(common::l1_hits(&proxy), hits + 1, "report:1 still in L1");
    // All of it (report:1, and user:1 if its read filled again).
    let dropped = client.cmd("PROXY FLUSHL1").await;
    assert!(dropped == ":1\r\n" || dropped == ":2\r\n", "{dropped}");
    assert_eq!(proxy.handle().l1().expect("L1 on").store.len(), 0);
    assert_eq!(direct.cmd("DBSIZE").await, ":3\r\n", "Redis keeps its data");
    assert_eq!(client.cmd("PROXY FLUSHL1 a b").await.chars().next(), Some('-'));
}

/// `PROXY EXPLAIN key` says where a client's key lives: the stored name and
/// version it resolves to, its type, TTL, stored size and codec in Redis,
/// what L1 holds of it and for how long, and its pattern class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_says_where_a_key_lives_and_how() {
    use common::values::{fields, int, text};
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::values::eager(config);
        config.compression.enabled = true;
        config.compression.threshold = 64;
        config.namespaces.insert(
            "doc".into(),
            auracache::config::NamespaceConfig {
                version: Some(2),
                ..Default::default()
            },
        );
    })
    .await;
    let mut client = RawClient::connect(proxy.addr()).await;
    let value = "lorem-ipsum-".repeat(100);
    assert_eq!(client.cmd(&format!("SET doc:1 {value}")).await, "+OK\r\n");
    common::read_until_cached(&proxy, &mut client, "doc:1").await;
    let connection = proxy.client().await;
    let explain = |key: &'static str| {
        let mut connection = connection.clone();
        async move {
            let reply: redis::Value = redis::cmd("PROXY")
                .arg("EXPLAIN")
                .arg(key)
                .query_async(&mut connection)
                .await
                .expect("PROXY EXPLAIN answers");
            fields(reply)
        }
    };
    let doc = explain("doc:1").await;
    assert_eq!(text(&doc["key"]), "doc:1");
    assert_eq!(text(&doc["namespace"]), "doc");
    assert_eq!(text(&doc["stored_key"]), "v2:doc:1");
    assert_eq!(int(&doc["version"]), 2);
    assert_eq!(text(&doc["type"]), "string");
    assert_eq!(int(&doc["redis_ttl_ms"]), -1);
    assert_eq!(text(&doc["codec"]), "zstd");
    assert_eq!(int(&doc["original_bytes"]), value.len() as i64);
    assert!(int(&doc["stored_bytes"]) < value.len() as i64 / 4, "{doc:?}");
    assert_eq!(
        doc["l1_cached"],
        redis::Value::Array(vec![redis::Value::BulkString(b"string".to_vec())])
    );
    assert!(int(&doc["l1_ttl_ms"]) > 0);
    common::poll_until_async("the engine has heard doc:1", || {
        let explain = explain("doc:1");
        async move {
            explain
                .await
                .get("pattern_class")
                .is_some_and(|class| *class != redis::Value::Nil)
        }
    })
    .await;
    // A key nobody wrote, unversioned, never read.
    let none = explain("plain:9").await;
    assert_eq!(text(&none["stored_key"]), "plain:9");
    assert_eq!(none["version"], redis::Value::Nil);
    assert_eq!(text(&none["type"]), "none");
    assert_eq!(int(&none["redis_ttl_ms"]), -2);
    assert_eq!(none["codec"], redis::Value::Nil);
    assert_eq!(none["l1_cached"], redis::Value::Array(vec![]));
    assert_eq!(none["pattern_class"], redis::Value::Nil);
    // A hash: no string size or codec.
    client.cmd("HSET h:1 f v").await;
    let hash = explain("h:1").await;
    assert_eq!(text(&hash["type"]), "hash");
    assert_eq!(hash["codec"], redis::Value::Nil);
}

/// `PROXY CONFIG GET pattern` answers the effective settings whose dotted
/// names match the glob, as Redis's CONFIG GET does (name/value pairs; a
/// map in RESP3), with secrets hidden.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_get_lists_settings_by_glob_with_secrets_hidden() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        config.auth.password = Some("s3cret".into());
        config.preload.max_concurrent = 7;
    })
    .await;
    let mut client = RawClient::connect(proxy.addr()).await;
    assert_eq!(client.cmd("AUTH s3cret").await, "+OK\r\n");
    let reply = client.cmd("PROXY CONFIG GET preload.max_concurrent").await;
    assert_eq!(reply, "*2\r\n$22\r\npreload.max_concurrent\r\n$1\r\n7\r\n");
    let preload = client.cmd("PROXY CONFIG GET PRELOAD.*").await;
    assert!(preload.starts_with("*16\r\n"), "eight preload settings: {preload}");
    assert!(
        preload.contains("preload.interval_minutes\r\n$4\r\n30.0\r\n"),
        "{preload}"
    );
    let all = client.cmd("PROXY CONFIG GET *").await;
    assert!(all.contains("auth.password\r\n$8\r\n<hidden>\r\n"), "{all}");
    assert!(!all.contains("s3cret"), "{all}");
    assert_eq!(client.cmd("PROXY CONFIG GET nothing.like.this").await, "*0\r\n");
    client.cmd("HELLO 3").await;
    let map = client.cmd("PROXY CONFIG GET preload.enabled").await;
    assert_eq!(map, "%1\r\n$15\r\npreload.enabled\r\n$4\r\ntrue\r\n");
}

/// `PROXY STATS` answers INFO cache's fields as a map; `PROXY STATS RESET`
/// sets the counters back to zero and leaves the gauges.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_answers_the_counters_and_reset_zeroes_them() {
    use common::values::{fields, text};
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), common::l1_eager).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client.cmd("SET k v").await;
    common::read_until_cached(&proxy, &mut client, "k").await;
    let stats = |proxy: &Proxy| {
        let proxy_url = proxy.url();
        async move {
            let mut connection = common::connect(&proxy_url).await;
            let reply: redis::Value = redis::cmd("PROXY")
                .arg("STATS")
                .query_async(&mut connection)
                .await
                .expect("PROXY STATS answers");
            fields(reply)
        }
    };
    let before = stats(&proxy).await;
    assert!(text(&before["l1_hits"]).parse::<u64>().unwrap() >= 1, "{before:?}");
    assert_eq!(text(&before["l1_entries"]), "1");
    assert_eq!(client.cmd("PROXY STATS RESET").await, "+OK\r\n");
    let after = stats(&proxy).await;
    assert_eq!(text(&after["l1_hits"]), "0", "{after:?}");
    assert_eq!(text(&after["l1_misses"]), "0");
    assert_eq!(text(&after["l1_entries"]), "1", "a gauge stays");
    assert_eq!(client.cmd("GET k").await, "$1\r\nv\r\n");
    assert_eq!(text(&stats(&proxy).await["l1_hits"]), "1");
}

/// `PROXY CONFIG SET` changes the pattern engine's budget and its minimum
/// reads in the running proxy: the next query and measuring window use them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_set_changes_the_pattern_engine_without_a_restart() {
    use common::values::info_field;
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| config.memory_cache.enabled = false).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client.cmd("SET once v").await;
    client.cmd("GET once").await;
    common::poll_until_async("the read recorded", || {
        let patterns = proxy.handle().patterns().expect("engine on").clone();
        async move { patterns.stats().events.load(std::sync::atomic::Ordering::Relaxed) >= 1 }
    })
    .await;
    // One read is below the default minimum of 10: not listed.
    assert_eq!(client.cmd("PROXY PATTERNS").await, "*0\r\n");
    assert_eq!(
        client.cmd("PROXY CONFIG SET patterns.min_access_count 1").await,
        "+OK\r\n"
    );
    let proxy_url = proxy.url();
    common::poll_until_async("the key listed from its first read", || {
        let proxy_url = proxy_url.clone();
        async move {
            let mut connection = common::connect(&proxy_url).await;
            let listed: redis::Value = redis::cmd("PROXY")
                .arg("PATTERNS")
                .query_async(&mut connection)
                .await
                .expect("PATTERNS");
            format!("{listed:?}").contains("once")
        }
    })
    .await;
    assert_eq!(
        client.cmd("PROXY CONFIG SET patterns.max_events_per_sec 123").await,
        "+OK\r\n"
    );
    let info = client.cmd("INFO cache").await;
    assert_eq!(info_field(&info, "pattern_max_events_per_sec"), "123");
    let refused = client.cmd("PROXY CONFIG SET patterns.max_keys 5").await;
    assert!(
        refused.starts_with("-ERR patterns.max_keys cannot change while the proxy runs"),
        "{refused}"
    );
}

/// `redis-cli INFO cache` through the proxy lists every field an operator
/// reads, with every stage on, each a number (INFO parsers read
/// `field:value` lines).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cli_info_cache_lists_every_field() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::values::eager(config);
        config.compression.enabled = true;
        config.compression.threshold = 16;
        config.patterns.enabled = true;
        config.preload.enabled = true;
    })
    .await;
    let mut client = RawClient::connect(proxy.addr()).await;
    let long = "abc".repeat(100);
    assert_eq!(client.cmd(&format!("SET doc:1 {long}")).await, "+OK\r\n");
    common::read_until_cached(&proxy, &mut client, "doc:1").await;
    client.cmd("GET doc:2").await;
    let output = std::process::Command::new("redis-cli")
        .args(["-p", &proxy.addr().port().to_string(), "INFO", "cache"])
        .output()
        .expect("redis-cli is installed (scripts/test.sh installs redis-tools)");
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).expect("UTF-8");
    assert!(text.starts_with("# Cache\r\n"), "{text}");
    let fields: std::collections::HashMap<&str, &str> = text
        .lines()
        .skip(1)
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            line.trim_end()
                .split_once(':')
                .unwrap_or_else(|| panic!("field:value: {line}"))
        })
        .collect();
    let mut expected = vec![
        "l1_hits",
        "l1_misses",
        "l1_hit_ratio",
        "l1_entries",
        "l1_bytes",
        "l1_max_bytes",
        "l1_evictions",
        "l1_invalidations",
        "l2_hits",
        "l2_misses",
        "write_latency_p50_us",
        "write_latency_p99_us",
        "compression_values",
        "compression_bytes_in",
        "compression_bytes_out",
        "compression_ratio",
        "compression_ratio_zstd",
        "pattern_keys_tracked",
        "pattern_events_dropped",
        "preload_last_run",
        "preload_hits",
        "preload_waste",
        "upstream_connections_pooled",
        "upstream_connections_dedicated",
        "upstream_errors",
        "tracking_connected",
    ];
    let latencies: Vec<String> = ["l1", "l2", "miss"]
        .iter()
        .flat_map(|level| ["p50", "p99"].map(|q| format!("read_latency_{level}_{q}_us")))
        .collect();
    expected.extend(latencies.iter().map(String::as_str));
    for field in expected {
        let value = fields.get(field).unwrap_or_else(|| panic!("{field} in {text}"));
        assert!(value.parse::<f64>().is_ok(), "{field}:{value}");
    }
    assert_eq!(fields["tracking_connected"], "1");
    // doc:1, and doc:2's "no such key" (kept memory_cache.nil_ttl).
    assert_eq!(fields["l1_entries"], "2", "{text}");
    assert_eq!(fields["compression_values"], "1", "{text}");
    // stored / original: 300 repeated bytes shrink well.
    let ratio: f64 = fields["compression_ratio_zstd"].parse().unwrap();
    assert!(ratio > 0.0 && ratio < 0.5, "{text}");
    assert!(fields["l2_misses"].parse::<u64>().unwrap() >= 1, "{text}");
    // The redis crate's INFO parser reads the whole INFO, Redis's sections and ours.
    let mut connection = proxy.client().await;
    let info: redis::InfoDict = redis::cmd("INFO").query_async(&mut connection).await.expect("INFO");
    assert!(info.get::<String>("redis_version").is_some());
    assert_eq!(info.get::<u64>("l1_entries"), Some(2));
    assert!(info.get::<f64>("read_latency_l2_p99_us").is_some_and(|p99| p99 > 0.0));
}
