//! The HTTP admin surface: `/health` flips when the upstream goes away and
//! comes back, `/metrics` parses as Prometheus (OpenMetrics) text and
//! agrees with `INFO cache`.

mod common;

use std::net::SocketAddr;

use common::values::info_field;
use common::{Proxy, RawClient, RedisServer, http_get as get, poll_until_async};

/// A proxy with L1 on and the HTTP admin on a free port.
async fn proxy_with_admin(server: &RedisServer) -> (Proxy, SocketAddr) {
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::l1_eager(config);
        config.admin.listen = "127.0.0.1:0".into();
    })
    .await;
    let admin = proxy.handle().admin_addr().expect("the HTTP admin is on");
    (proxy, admin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_flips_when_the_upstream_goes_away_and_comes_back() {
    let mut server = RedisServer::start();
    let (proxy, admin) = proxy_with_admin(&server).await;
    poll_until_async("healthy with tracking up", || async move {
        let (status, _, body) = get(admin, "/health").await;
        status == 200 && body.contains(r#""tracking":"up""#)
    })
    .await;
    let (_, head, body) = get(admin, "/health").await;
    assert!(
        head.to_ascii_lowercase().contains("content-type: application/json"),
        "{head}"
    );
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["status"], "ok");
    assert_eq!(health["upstream"], "up");
    server.kill();
    poll_until_async("unhealthy without Redis", || async move {
        let (status, _, body) = get(admin, "/health").await;
        status == 503 && body.contains("upstream unavailable")
    })
    .await;
    let (_, _, body) = get(admin, "/health").await;
    let health: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(health["status"], "unavailable");
    assert!(!health["reasons"].as_array().expect("reasons").is_empty());
    server.restart();
    poll_until_async("healthy again", || async move { get(admin, "/health").await.0 == 200 }).await;
    drop(proxy);
}

/// Every line of an OpenMetrics text exposition: `# TYPE`/`# HELP`/`# UNIT`
/// comments, samples `name{labels} value`, and `# EOF` last. Returns the
/// samples as (name with labels, value).
fn parse_openmetrics(text: &str) -> Vec<(String, f64)> {
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.last(), Some(&"# EOF"), "ends with # EOF");
    let mut samples = Vec::new();
    for line in &lines[..lines.len() - 1] {
        if let Some(comment) = line.strip_prefix("# ") {
            let mut words = comment.splitn(3, ' ');
            let kind = words.next().unwrap_or_default();
            assert!(matches!(kind, "TYPE" | "HELP" | "UNIT"), "{line}");
            let name = words.next().unwrap_or_default();
            assert!(name.starts_with("auracache_"), "{line}");
            if kind == "TYPE" {
                assert!(
                    matches!(words.next(), Some("counter" | "gauge" | "histogram")),
                    "{line}"
                );
            }
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("a sample: {line}"));
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "{line}"
        );
        if name_end < series.len() {
            let labels = &series[name_end..];
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split(',').filter(|pair| !pair.is_empty()) {
                let (key, quoted) = pair.split_once('=').unwrap_or_else(|| panic!("label: {line}"));
                assert!(
                    !key.is_empty() && quoted.starts_with('"') && quoted.ends_with('"'),
                    "{line}"
                );
            }
        }
        samples.push((
            series.to_string(),
            value.parse().unwrap_or_else(|_| panic!("value: {line}")),
        ));
    }
    samples
}

/// The value of `series` (name with labels) among `samples` of `body`.
fn sample(samples: &[(String, f64)], series: &str, body: &str) -> f64 {
    samples
        .iter()
        .find(|(name, _)| name == series)
        .map(|(_, value)| *value)
        .unwrap_or_else(|| panic!("{series} in {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_agree_with_info() {
    let server = RedisServer::start();
    let (proxy, admin) = proxy_with_admin(&server).await;
    let mut client = RawClient::connect(proxy.addr()).await;
    client.cmd("SET user:1 ada").await;
    common::read_until_cached(&proxy, &mut client, "user:1").await;
    for _ in 0..5 {
        assert_eq!(client.cmd("GET user:1").await, "$3\r\nada\r\n");
    }
    let info = client.cmd("INFO cache").await;
    let (status, head, body) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("application/openmetrics-text"),
        "{head}"
    );
    let samples = parse_openmetrics(&body);
    let value = |series: &str| sample(&samples, series, &body);
    let hits = value(r#"auracache_l1_hits_total{namespace="user"}"#);
    let info_hits: f64 = info_field(&info, "l1_hits").parse().expect("a number");
    // INFO was read first; the scrape counts nothing more.
    assert_eq!(hits, info_hits, "{body}");
    assert!(hits >= 6.0);
    assert_eq!(value(r#"auracache_l1_entries{namespace="user"}"#), 1.0);
    assert_eq!(value(r#"auracache_upstream_connections{kind="tracking"}"#), 1.0);
    assert_eq!(value("auracache_clients"), 1.0);
}

/// The JSON endpoints answer the documented fields, consistent with what
/// the test sent: memory per namespace, compression per codec and
/// namespace with a recommendation for values that do not shrink, and the
/// pattern analysis with the keys read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_endpoints_describe_memory_compression_and_patterns() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::values::eager(config);
        config.compression.enabled = true;
        config.compression.threshold = 64;
        config.compression.min_savings = 0.0;
        config.admin.listen = "127.0.0.1:0".into();
    })
    .await;
    let admin = proxy.handle().admin_addr().expect("the HTTP admin is on");
    let mut client = RawClient::connect(proxy.addr()).await;
    let text = "lorem-ipsum-".repeat(100);
    let mut writer = proxy.client().await;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    for i in 0..12 {
        assert_eq!(client.cmd(&format!("SET docs:{i} {text}")).await, "+OK\r\n");
        // Incompressible: xorshift bytes.
        let noise: Vec<u8> = (0..1000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        let () = redis::cmd("SET")
            .arg(format!("logs:{i}"))
            .arg(noise)
            .query_async(&mut writer)
            .await
            .expect("SET");
    }
    common::read_until_cached(&proxy, &mut client, "docs:1").await;
    let json = |path: &'static str| async move {
        let (status, head, body) = get(admin, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(head.to_ascii_lowercase().contains("application/json"), "{head}");
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON")
    };
    let memory = json("/api/v1/monitoring/cache/v2/memory/stats").await;
    assert_eq!(memory["l1"]["enabled"], true);
    assert!(memory["l1"]["entries"].as_u64().unwrap() >= 1, "{memory}");
    let docs = memory["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|namespace| namespace["name"] == "docs")
        .unwrap_or_else(|| panic!("docs listed: {memory}"));
    assert!(
        docs["entries"].as_u64().unwrap() >= 1 && docs["bytes"].as_u64().unwrap() > 0,
        "{docs}"
    );
    for field in [
        "max_entries",
        "ttl_secs",
        "consistency",
        "hits",
        "misses",
        "evictions",
        "expirations",
    ] {
        assert!(!docs[field].is_null(), "{field} in {docs}");
    }
    let compression = json("/api/v1/monitoring/cache/v2/compression/stats").await;
    assert_eq!(compression["enabled"], true);
    let totals = &compression["totals"];
    assert!(
        totals["bytes_out"].as_u64().unwrap() < totals["bytes_in"].as_u64().unwrap(),
        "{compression}"
    );
    assert_eq!(compression["by_algorithm"][0]["algorithm"], "zstd");
    let recommendations = compression["recommendations"].to_string();
    assert!(
        recommendations.contains("namespace logs") && recommendations.contains("disable compression"),
        "{compression}"
    );
    assert!(!recommendations.contains("namespace docs"), "{compression}");
    let patterns = json("/api/v1/monitoring/cache/v2/patterns/analysis").await;
    assert_eq!(patterns["enabled"], true);
    assert_eq!(patterns["hourly_load"].as_array().unwrap().len(), 24);
    common::poll_until_async("docs:1 among the top patterns", || async move {
        let patterns = json("/api/v1/monitoring/cache/v2/patterns/analysis").await;
        patterns["top"]
            .as_array()
            .unwrap()
            .iter()
            .any(|key| key["key"] == "docs:1")
    })
    .await;
    let patterns = json("/api/v1/monitoring/cache/v2/patterns/analysis").await;
    let top = &patterns["top"][0];
    for field in [
        "key",
        "db",
        "namespace",
        "class",
        "predictability",
        "priority",
        "accesses",
        "hourly",
    ] {
        assert!(!top[field].is_null(), "{field} in {top}");
    }
    assert_eq!(patterns["preload"]["enabled"], true);
}

/// Reads per level and writes, with latencies: `INFO cache` counts what
/// the test sent (L1 hits, reads Redis answered with a value, reads it had
/// nothing for, each MGET item on its own, writes), and `/metrics`,
/// `/performance` and `/multi-level/flow` agree with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_counted_per_level_with_latencies_everywhere_alike() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::l1_eager(config);
        config.admin.listen = "127.0.0.1:0".into();
        config.admin.history_interval_secs = 1;
    })
    .await;
    let admin = proxy.handle().admin_addr().expect("the HTTP admin is on");
    let mut client = RawClient::connect(proxy.addr()).await;
    client.cmd("SET user:1 ada").await;
    common::read_until_cached(&proxy, &mut client, "user:1").await;
    assert_eq!(client.cmd("PROXY STATS RESET").await, "+OK\r\n");
    let number = |info: &str, field: &str| -> f64 {
        info_field(info, field)
            .parse()
            .unwrap_or_else(|_| panic!("{field} in {info}"))
    };
    let info = client.cmd("INFO cache").await;
    for field in [
        "reads_total",
        "l2_hits",
        "l2_misses",
        "writes_total",
        "read_latency_l1_p99_us",
    ] {
        assert_eq!(number(&info, field), 0.0, "{field} after RESET: {info}");
    }
    // 2 writes; 5 L1 hits; 1 + 1 L2 hits (GET, an MGET item); 2 misses
    // (GET, an MGET item); an HSET write and an HGETALL miss.
    assert_eq!(client.cmd("SET fresh:1 one").await, "+OK\r\n");
    assert_eq!(client.cmd("SET fresh:2 two").await, "+OK\r\n");
    for _ in 0..5 {
        assert_eq!(client.cmd("GET user:1").await, "$3\r\nada\r\n");
    }
    assert_eq!(client.cmd("GET fresh:1").await, "$3\r\none\r\n");
    assert_eq!(client.cmd("GET nope:1").await, "$-1\r\n");
    assert_eq!(client.cmd("MGET fresh:2 nope:2").await, "*2\r\n$3\r\ntwo\r\n$-1\r\n");
    assert_eq!(client.cmd("HSET h:1 f v").await, ":1\r\n");
    assert_eq!(client.cmd("HGETALL nope:3").await, "*0\r\n");
    let info = client.cmd("INFO cache").await;
    let expected = [
        ("l1_answered", 5.0),
        ("l2_hits", 2.0),
        ("l2_misses", 3.0),
        ("reads_total", 10.0),
        ("writes_total", 3.0),
    ];
    for (field, value) in expected {
        assert_eq!(number(&info, field), value, "{field}: {info}");
    }
    for level in ["l1", "l2", "miss"] {
        let p50 = number(&info, &format!("read_latency_{level}_p50_us"));
        let p99 = number(&info, &format!("read_latency_{level}_p99_us"));
        let avg = number(&info, &format!("read_latency_{level}_avg_us"));
        assert!(p50 > 0.0 && p99 >= p50 && avg > 0.0, "{level}: {info}");
    }
    assert!(number(&info, "write_latency_p99_us") >= number(&info, "write_latency_p50_us"));
    assert!(number(&info, "write_latency_p50_us") > 0.0, "{info}");

    // /metrics: one histogram per level, counts as INFO's.
    let (_, _, body) = get(admin, "/metrics").await;
    let samples = parse_openmetrics(&body);
    let value = |series: &str| sample(&samples, series, &body);
    for (level, count) in [("l1", 5.0), ("l2", 2.0), ("miss", 3.0)] {
        assert_eq!(
            value(&format!(r#"auracache_read_latency_seconds_count{{level="{level}"}}"#)),
            count
        );
        assert_eq!(
            value(&format!(
                r#"auracache_read_latency_seconds_bucket{{le="+Inf",level="{level}"}}"#
            )),
            count,
            "{body}"
        );
        let buckets: Vec<f64> = samples
            .iter()
            .filter(|(name, _)| {
                name.starts_with("auracache_read_latency_seconds_bucket")
                    && name.contains(&format!(r#"level="{level}""#))
            })
            .map(|(_, value)| *value)
            .collect();
        assert!(buckets.len() > 20, "{body}");
        assert!(
            buckets.windows(2).all(|pair| pair[0] <= pair[1]),
            "cumulative: {buckets:?}"
        );
        assert!(value(&format!(r#"auracache_read_latency_seconds_sum{{level="{level}"}}"#)) > 0.0);
    }
    assert_eq!(value("auracache_write_latency_seconds_count"), 3.0);

    let json = |path: &'static str| async move {
        let (status, head, body) = get(admin, path).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(head.to_ascii_lowercase().contains("application/json"), "{head}");
        serde_json::from_str::<serde_json::Value>(&body).expect("JSON")
    };
    // The history samples every second; wait for one with the traffic.
    let performance = {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let performance = json("/api/v1/monitoring/cache/v2/performance").await;
            let sampled: u64 = performance["history"]
                .as_array()
                .expect("history")
                .iter()
                .map(|sample| sample["reads"].as_u64().expect("reads"))
                .sum();
            if sampled == 10 {
                break performance;
            }
            assert!(std::time::Instant::now() < deadline, "history: {performance}");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    assert_eq!(performance["reads"], 10);
    assert_eq!(performance["writes"], 3);
    for (level, reads) in [("l1", 5), ("l2", 2), ("miss", 3)] {
        let entry = &performance["levels"][level];
        assert_eq!(entry["reads"], reads, "{performance}");
        assert!((entry["rate"].as_f64().unwrap() - reads as f64 / 10.0).abs() < 1e-9);
        assert_eq!(performance["hit_rates"][level], entry["rate"]);
        for field in ["count", "p50", "p90", "p99", "mean"] {
            assert!(
                entry["latency_us"][field].as_f64().unwrap() > 0.0,
                "{level}.{field}: {performance}"
            );
        }
    }
    assert_eq!(performance["write_latency_us"]["count"], 3);
    for field in [
        "interval_secs",
        "reads_per_sec",
        "writes_per_sec",
        "average_reads_per_sec",
        "average_writes_per_sec",
    ] {
        assert!(performance["throughput"][field].is_number(), "{field}: {performance}");
    }
    assert_eq!(performance["compression"]["enabled"], false);
    let sample = performance["history"]
        .as_array()
        .unwrap()
        .iter()
        .find(|sample| sample["reads"].as_u64() > Some(0))
        .expect("a sample with reads");
    for field in [
        "at_ms",
        "seconds",
        "writes",
        "reads_per_sec",
        "writes_per_sec",
        "l1_hit_rate",
        "l2_hit_rate",
        "miss_rate",
        "l1_p50_us",
        "l1_p99_us",
        "l2_p50_us",
        "l2_p99_us",
        "miss_p50_us",
        "miss_p99_us",
        "write_p50_us",
        "write_p99_us",
    ] {
        assert!(sample[field].is_number(), "{field}: {sample}");
    }

    let flow = json("/api/v1/monitoring/cache/v2/multi-level/flow").await;
    assert_eq!(flow["reads"], 10);
    assert_eq!(flow["l1"]["hits"], 5);
    assert_eq!(flow["l1"]["misses"], 5);
    assert_eq!(flow["l2"]["requests"], 5);
    assert_eq!(flow["l2"]["hits"], 2);
    assert_eq!(flow["l2"]["misses"], 3);
    assert_eq!(flow["miss"]["count"], 3);
    assert!((flow["l2"]["hit_rate"].as_f64().unwrap() - 0.4).abs() < 1e-9);
    let edges: Vec<(String, String, u64)> = flow["flow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|edge| {
            (
                edge["from"].as_str().unwrap().to_string(),
                edge["to"].as_str().unwrap().to_string(),
                edge["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(edges.contains(&("l1".into(), "l2".into(), 5)), "{flow}");
    assert!(edges.contains(&("l2".into(), "miss".into(), 3)), "{flow}");
    for field in ["reads", "l1_hits", "l2_hits", "misses", "interval_secs"] {
        assert!(flow["rates_per_sec"][field].is_number(), "{field}: {flow}");
    }
}

/// With `[auth]` on, the HTTP admin needs Basic credentials of a user with
/// the admin role (`default` is `auth.password`'s): 401 (with a Basic
/// challenge, so a browser asks) without or with wrong ones, 403 for a
/// user without the role; `/health` stays open for load balancers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_admin_needs_the_admin_role_when_auth_is_on() {
    use base64::Engine;
    use sha2::{Digest, Sha256};
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        config.admin.listen = "127.0.0.1:0".into();
        config.auth.password = Some("pw".into());
        config.auth.users.push(auracache::config::UserConfig {
            name: "bob".into(),
            password_sha256: hex::encode(Sha256::digest(b"bobpw")),
            role: auracache::config::Role::User,
        });
    })
    .await;
    let admin = proxy.handle().admin_addr().expect("the HTTP admin is on");
    let basic = |credentials: &str| {
        format!(
            "Authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    for path in ["/metrics", "/", "/api/v1/monitoring/cache/v2/performance"] {
        let (status, head, _) = common::http_get_with(admin, path, "").await;
        assert_eq!(status, 401, "{path}");
        assert!(head.to_ascii_lowercase().contains("www-authenticate: basic"), "{head}");
        let (status, _, _) = common::http_get_with(admin, path, &basic("default:wrong")).await;
        assert_eq!(status, 401, "{path}: a wrong password");
        let (status, _, _) = common::http_get_with(admin, path, &basic("bob:bobpw")).await;
        assert_eq!(status, 403, "{path}: a user without the admin role");
        let (status, _, _) = common::http_get_with(admin, path, &basic("default:pw")).await;
        assert_eq!(status, 200, "{path}: the admin");
    }
    // Open without credentials: healthy once the tracking connection is up
    // (right after start it may still be connecting: 503, never 401).
    poll_until_async("/health answers without credentials", || async move {
        get(admin, "/health").await.0 == 200
    })
    .await;
}
