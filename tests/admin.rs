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
