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
    let value = |series: &str| {
        samples
            .iter()
            .find(|(name, _)| name == series)
            .map(|(_, value)| *value)
            .unwrap_or_else(|| panic!("{series} in {body}"))
    };
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
