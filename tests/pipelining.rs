//! Pipelines and concurrency: replies in request order, no per-command round
//! trip, and many clients multiplexed over a few upstream connections.

mod common;

use common::{Proxy, RawClient, RedisServer};

/// 10,000 mixed commands written in one go, compared reply by reply with
/// what Redis answers to the same bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_mixed_commands_in_one_pipeline() {
    let direct_server = RedisServer::start();
    let proxied_server = RedisServer::start();
    let proxy = Proxy::start(&proxied_server.url()).await;
    let mut wire = Vec::new();
    for i in 0..10_000u32 {
        let key = format!("k{}", i % 97);
        let value = format!("v{i}");
        let args: Vec<&[u8]> = match i % 10 {
            0 => vec![b"SET", key.as_bytes(), value.as_bytes()],
            1 => vec![b"GET", key.as_bytes()],
            2 => vec![b"INCR", b"counter"],
            3 => vec![b"LPUSH", b"list", value.as_bytes()],
            4 => vec![b"LRANGE", b"list", b"0", b"2"],
            5 => vec![b"HSET", b"hash", key.as_bytes(), value.as_bytes()],
            6 => vec![b"HGET", b"hash", key.as_bytes()],
            7 => vec![b"INCR", b"list"], // WRONGTYPE error, in order
            8 => vec![b"MGET", key.as_bytes(), b"counter", b"missing"],
            _ => vec![b"PING"],
        };
        wire.extend_from_slice(&common::encode(&args));
    }
    let mut direct = RawClient::connect(direct_server.addr()).await;
    let mut proxied = proxy.raw().await;
    // Written concurrently with reading, as a client that does not wait.
    let (direct_replies, proxied_replies) = tokio::join!(
        write_then_read(&mut direct, &wire, 10_000),
        write_then_read(&mut proxied, &wire, 10_000)
    );
    for (index, (d, p)) in direct_replies.iter().zip(&proxied_replies).enumerate() {
        assert_eq!(
            String::from_utf8_lossy(p),
            String::from_utf8_lossy(d),
            "reply {index} differs"
        );
    }
    assert_eq!(proxied_replies.len(), 10_000);
    assert_eq!(proxied_replies.last().unwrap(), b"+PONG\r\n");
}

async fn write_then_read(client: &mut RawClient, wire: &[u8], count: usize) -> Vec<Vec<u8>> {
    client.send(wire).await;
    let mut replies = Vec::with_capacity(count);
    for _ in 0..count {
        replies.push(client.read_reply().await);
    }
    replies
}

/// A pipeline is forwarded as a pipeline: Redis reads the 2,000 commands in
/// a handful of reads, not one read (one round trip) per command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_are_forwarded_without_a_round_trip_per_command() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("PING").await, "+PONG\r\n");
    let reads_before = reads_processed(&mut direct).await;
    let mut wire = Vec::new();
    for i in 0..2_000 {
        wire.extend_from_slice(&common::encode(&[b"SET", format!("p{i}").as_bytes(), b"v"]));
    }
    client.send(&wire).await;
    for _ in 0..2_000 {
        assert_eq!(client.read_reply().await, b"+OK\r\n");
    }
    let reads = reads_processed(&mut direct).await - reads_before;
    assert!(
        reads < 200,
        "Redis needed {reads} reads for 2,000 pipelined commands; a round trip per command would be 2,000"
    );
    assert_eq!(direct.cmd("DBSIZE").await, ":2000\r\n");
}

/// Redis's count of socket reads that carried commands (INFO stats).
async fn reads_processed(client: &mut RawClient) -> i64 {
    let info = client.cmd("INFO stats").await;
    info.lines()
        .find_map(|line| line.strip_prefix("total_reads_processed:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("total_reads_processed in INFO stats")
}

/// 200 clients at once, each with its own pipeline; every reply is its own,
/// and Redis sees only the pool's few connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_clients_share_a_small_pool() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| config.pool.size = 3).await;
    let mut tasks = Vec::new();
    for client_index in 0..200u32 {
        let addr = proxy.addr();
        tasks.push(tokio::spawn(async move {
            let mut client = RawClient::connect(addr).await;
            let key = format!("c{client_index}");
            let mut wire = Vec::new();
            for round in 0..50u32 {
                let value = format!("{client_index}:{round}");
                wire.extend_from_slice(&common::encode(&[b"SET", key.as_bytes(), value.as_bytes()]));
                wire.extend_from_slice(&common::encode(&[b"GET", key.as_bytes()]));
                wire.extend_from_slice(&common::encode(&[b"INCR", b"shared"]));
            }
            client.send(&wire).await;
            for round in 0..50u32 {
                assert_eq!(client.read_reply().await, b"+OK\r\n");
                let value = format!("{client_index}:{round}");
                let expected = format!("${}\r\n{value}\r\n", value.len());
                assert_eq!(String::from_utf8(client.read_reply().await).unwrap(), expected);
                assert!(client.read_reply().await.starts_with(b":"));
            }
            client
        }));
    }
    let mut clients = Vec::new();
    for task in tasks {
        clients.push(task.await.expect("client task"));
    }
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("GET shared").await, "$5\r\n10000\r\n");

    // All 200 clients are still connected, yet Redis sees the pool only.
    let list = direct.cmd("CLIENT LIST").await;
    let pooled = list.lines().filter(|line| line.contains("name=auracache:pool")).count();
    // The L1 level's tracking connection is the proxy's one other connection.
    let tracking = list
        .lines()
        .filter(|line| line.contains("name=auracache:tracking"))
        .count();
    assert!(tracking <= 1, "{list}");
    let others = list.lines().filter(|line| line.contains("addr=")).count() - pooled - tracking;
    assert!(
        (1..=3).contains(&pooled),
        "expected at most 3 pooled connections, CLIENT LIST:\n{list}"
    );
    assert_eq!(others, 1, "only this direct client besides the pool:\n{list}");
    assert_eq!(proxy.handle().stats().clients(), 200);
    assert_eq!(proxy.handle().stats().upstream_dedicated(), 0);
    assert!(proxy.handle().stats().upstream_pooled() <= 3);
    drop(clients);
}

/// Large values in both directions, split across many reads, in a pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_keep_their_place_in_a_pipeline() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut client = proxy.raw().await;
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut wire = common::encode(&[b"SET", b"big", &big]);
    wire.extend_from_slice(&common::encode(&[b"GET", b"big"]));
    wire.extend_from_slice(&common::encode(&[b"STRLEN", b"big"]));
    wire.extend_from_slice(&common::encode(&[b"GET", b"big"]));
    client.send(&wire).await;
    assert_eq!(client.read_reply().await, b"+OK\r\n");
    let mut expected = format!("${}\r\n", big.len()).into_bytes();
    expected.extend_from_slice(&big);
    expected.extend_from_slice(b"\r\n");
    assert!(client.read_reply().await == expected, "first GET returns the value");
    assert_eq!(client.read_reply().await, b":3000000\r\n");
    assert!(client.read_reply().await == expected, "second GET returns the value");
}
