//! Serve-stale (issue #10): while Redis is down, a namespace with
//! `serve_stale_max_secs` may have its reads answered from L1 past their
//! TTL (up to that bound), or from entries kept aside when invalidations
//! stopped; every such answer is counted. Off by default; never while Redis
//! is up; never after a write through the proxy touched the key; and what
//! was kept aside is dropped once Redis (and its invalidations) are back.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use auracache::clock::ManualClock;
use auracache::config::NamespaceConfig;
use common::values::info_field;
use common::{Proxy, RawClient, RedisServer, l1_hits, read_until_cached};

async fn namespace_field(client: &mut RawClient, namespace: &str, field: &str) -> String {
    let info = client.cmd("INFO cache").await;
    let line = info_field(&info, &format!("l1_namespace_{namespace}"));
    line.split(',')
        .find_map(|pair| pair.strip_prefix(&format!("{field}=")))
        .unwrap_or_else(|| panic!("no {field} in {line}"))
        .to_string()
}

/// Reads `line` until the reply satisfies `done`, within the deadline.
async fn cmd_until(client: &mut RawClient, line: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + common::DEADLINE;
    loop {
        let reply = client.cmd(line).await;
        if done(&reply) {
            return reply;
        }
        assert!(Instant::now() < deadline, "{line}: still {reply:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn unavailable(reply: &str) -> bool {
    reply.starts_with("-ERR upstream unavailable")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_served_stale_within_the_bound_only_while_redis_is_down() {
    let mut server = RedisServer::start();
    let clock = ManualClock::default();
    let proxy = Proxy::start_with_clock(&server.url(), Arc::new(clock.clone()), |config| {
        common::l1_eager(config);
        config.namespaces.insert(
            "catalog".into(),
            NamespaceConfig {
                memory_cache_ttl: Some(10),
                serve_stale_max_secs: Some(60),
                ..NamespaceConfig::default()
            },
        );
        config.namespaces.insert(
            "plain".into(),
            NamespaceConfig {
                memory_cache_ttl: Some(10),
                ..NamespaceConfig::default()
            },
        );
    })
    .await;
    let l1 = proxy.handle().l1().expect("L1 on").clone();
    common::poll_until("L1 to be ready", || l1.ready());
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    for key in ["catalog:1", "catalog:2", "catalog:3", "plain:1"] {
        assert_eq!(direct.cmd(&format!("SET {key} old")).await, "+OK\r\n");
        assert_eq!(read_until_cached(&proxy, &mut client, key).await, "$3\r\nold\r\n");
    }
    assert_eq!(namespace_field(&mut client, "catalog", "serve_stale_max").await, "60");
    assert_eq!(namespace_field(&mut client, "plain", "serve_stale_max").await, "0");

    // While Redis is up, an entry past its TTL is never served: Redis is read.
    clock.advance(Duration::from_secs(11));
    let hits = l1_hits(&proxy);
    assert_eq!(client.cmd("GET catalog:3").await, "$3\r\nold\r\n");
    assert_eq!(l1_hits(&proxy), hits, "an expired entry is not an L1 answer");
    assert_eq!(namespace_field(&mut client, "catalog", "stale_served").await, "0");
    // Fresh entries again (catalog:3 was just filled anew, at the new time).
    for key in ["catalog:1", "catalog:2", "plain:1"] {
        read_until_cached(&proxy, &mut client, key).await;
    }

    server.kill();
    // Off by default: the plain namespace answers Redis's absence.
    cmd_until(&mut client, "GET plain:1", unavailable).await;
    assert!(unavailable(&client.cmd("GET plain:1").await));
    // The serve-stale namespace answers what L1 holds, within its TTL...
    assert_eq!(client.cmd("GET catalog:1").await, "$3\r\nold\r\n");
    // ...and past it, up to serve_stale_max_secs.
    clock.advance(Duration::from_secs(30));
    assert_eq!(client.cmd("GET catalog:1").await, "$3\r\nold\r\n");
    assert_eq!(client.cmd("GET catalog:2").await, "$3\r\nold\r\n");
    let served = namespace_field(&mut client, "catalog", "stale_served").await;
    assert_eq!(served, "3");
    assert_eq!(info_field(&client.cmd("INFO cache").await, "l1_stale_served"), "3");
    // A write through the proxy (refused, Redis is down; it may or may not
    // have run) means the entry may be older than the key: never again.
    assert!(unavailable(&client.cmd("SET catalog:2 new").await));
    assert!(unavailable(&client.cmd("GET catalog:2").await));
    // Past the bound, nothing is served.
    clock.advance(Duration::from_secs(50));
    assert!(unavailable(&client.cmd("GET catalog:1").await));
    assert_eq!(namespace_field(&mut client, "catalog", "stale_served").await, "3");

    // Redis is back (without the old data): the proxy reads it again, and
    // nothing kept aside is served.
    server.restart();
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("SET catalog:1 fresh").await, "+OK\r\n");
    cmd_until(&mut client, "GET catalog:1", |reply| reply == "$5\r\nfresh\r\n").await;
    assert_eq!(client.cmd("GET catalog:3").await, "$-1\r\n");
    common::poll_until("invalidations to flow again", || l1.store.is_accepting());
    assert_eq!(namespace_field(&mut client, "catalog", "stale_served").await, "3");
}
