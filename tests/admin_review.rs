//! A review of the admin surface (issue #9): PROXY EXPLAIN, PROXY CONFIG GET,
//! PROXY STATS RESET and the HTTP /health endpoint.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::values::{fields, text};
use common::{Proxy, RawClient, RedisServer};

/// `GET path`: the status code and the body.
async fn get(admin: SocketAddr, path: &str) -> (u16, String) {
    let (status, _, body) = common::http_get(admin, path).await;
    (status, body)
}

/// A client that authenticated to Redis itself (proxy auth off: AUTH goes
/// to Redis on the client's own connection) as an ACL user limited to
/// `allowed:*` must not learn, through PROXY EXPLAIN, what Redis refuses to
/// tell it: EXPLAIN runs TYPE/PTTL/STRLEN/GETRANGE on a pooled connection
/// (the proxy's own, unrestricted credentials) instead of the client's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_does_not_bypass_the_clients_redis_acl() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(
        direct.cmd("ACL SETUSER limited on >pw ~allowed:* +@all").await,
        "+OK\r\n"
    );
    assert_eq!(direct.cmd("SET secret:1 hunter2-hunter2").await, "+OK\r\n");
    let proxy = Proxy::start(&server.url()).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("AUTH limited pw").await, "+OK\r\n");
    let refused = client.cmd("STRLEN secret:1").await;
    assert!(
        refused.starts_with("-NOPERM"),
        "Redis refuses the key to this user: {refused}"
    );
    let explain = client.cmd("PROXY EXPLAIN secret:1").await;
    assert!(
        explain.starts_with('-') || !(explain.contains("string") || explain.contains(":15\r\n")),
        "EXPLAIN told a user Redis refuses the key to its type and size: {explain:?}"
    );
}

/// /health must say the upstream is unavailable when Redis stops answering
/// (a hung or partitioned Redis: SIGSTOP here), not only when its socket
/// closes: it only checks that pool slot 0 holds a connection not yet seen
/// closed, and never asks Redis anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_unavailable_while_redis_does_not_answer() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        config.admin.listen = "127.0.0.1:0".into();
    })
    .await;
    let admin = proxy.handle().admin_addr().expect("the HTTP admin is on");
    common::poll_until_async("healthy", || async move { get(admin, "/health").await.0 == 200 }).await;
    let mut direct = RawClient::connect(server.addr()).await;
    let info = direct.cmd("INFO server").await;
    let pid = common::values::info_field(&info, "process_id");

    /// Lets Redis run again however the test ends.
    struct Resume(String);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill").args(["-CONT", &self.0]).status();
        }
    }
    let status = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let _resume = Resume(pid);

    // A client through the proxy gets nothing back now.
    let mut client = proxy.raw().await;
    client.send(&common::encode(&[b"PING"])).await;
    let ping = tokio::time::timeout(Duration::from_millis(500), client.next_reply()).await;
    assert!(ping.is_err(), "Redis is stopped: {ping:?}");

    let health = tokio::time::timeout(Duration::from_secs(5), get(admin, "/health")).await;
    match health {
        Ok((status, body)) => assert_eq!(status, 503, "/health while Redis answers nothing: {body}"),
        Err(_) => panic!("/health did not answer within 5 s while Redis answers nothing"),
    }
}

/// PROXY CONFIG GET must show the effective settings. With one u64 setting
/// above i64::MAX (here limits.max_value_bytes = u64::MAX, "no limit"),
/// `toml::Value::try_from` in `settings_redacted` fails (TOML integers are
/// i64) and the error is swallowed: every pattern answers an empty list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_get_reports_the_effective_settings_with_a_huge_value() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        config.limits.max_value_bytes = u64::MAX;
        config.preload.max_concurrent = 7;
    })
    .await;
    let mut client = proxy.raw().await;
    assert_eq!(
        client.cmd("PROXY CONFIG GET preload.max_concurrent").await,
        "*2\r\n$22\r\npreload.max_concurrent\r\n$1\r\n7\r\n"
    );
    let upstream = client.cmd("PROXY CONFIG GET upstream").await;
    assert!(upstream.contains(&server.port().to_string()), "{upstream}");
}

/// PROXY STATS RESET sets "every counter back to zero": preload_runs (a
/// counter, `auracache_preload_runs_total` in /metrics) stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_reset_zeroes_preload_runs() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        common::values::eager(config);
        config.preload.enabled = true;
    })
    .await;
    let mut client = proxy.raw().await;
    let run = client.cmd("PROXY PRELOAD RUN").await;
    assert!(run.starts_with('*') || run.starts_with('%'), "{run}");
    let stats = |proxy_url: String| async move {
        let mut connection = common::connect(&proxy_url).await;
        let reply: redis::Value = redis::cmd("PROXY")
            .arg("STATS")
            .query_async(&mut connection)
            .await
            .expect("PROXY STATS answers");
        fields(reply)
    };
    assert_eq!(text(&stats(proxy.url()).await["preload_runs"]), "1");
    assert_eq!(client.cmd("PROXY STATS RESET").await, "+OK\r\n");
    assert_eq!(text(&stats(proxy.url()).await["preload_runs"]), "0", "a counter");
}
