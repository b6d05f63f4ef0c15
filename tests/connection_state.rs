//! Commands whose effect lives on the connection: transactions, blocking
//! commands, pub/sub, SELECT, HELLO 3, CLIENT REPLY. Each behaves through the
//! proxy as it does against Redis.

mod common;

use common::{Proxy, RawClient, RedisServer};

/// Sends the same commands straight to Redis and through the proxy, one at a
/// time, and requires identical replies.
async fn same_as_redis(direct: &mut RawClient, proxied: &mut RawClient, lines: &[&str]) {
    for line in lines {
        let from_redis = direct.cmd(line).await;
        let from_proxy = proxied.cmd(line).await;
        assert_eq!(from_proxy, from_redis, "{line:?} (left: proxy, right: Redis)");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_conflict_aborts_the_transaction() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut a = proxy.raw().await;
    let mut b = proxy.raw().await;
    assert_eq!(a.cmd("SET balance 10").await, "+OK\r\n");

    // Without a conflict EXEC runs the queued commands.
    assert_eq!(a.cmd("WATCH balance").await, "+OK\r\n");
    assert_eq!(a.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(a.cmd("INCRBY balance 5").await, "+QUEUED\r\n");
    assert_eq!(a.cmd("EXEC").await, "*1\r\n:15\r\n");

    // Another client changes the watched key: EXEC returns nil, nothing ran.
    assert_eq!(a.cmd("WATCH balance").await, "+OK\r\n");
    assert_eq!(b.cmd("SET balance 100").await, "+OK\r\n");
    assert_eq!(a.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(a.cmd("INCRBY balance 5").await, "+QUEUED\r\n");
    assert_eq!(a.cmd("EXEC").await, "*-1\r\n");
    assert_eq!(b.cmd("GET balance").await, "$3\r\n100\r\n");
    assert!(proxy.handle().stats().upstream_dedicated() >= 1);

    // The same with the redis crate, as an application would write it.
    let mut client = proxy.client().await;
    let mut other = proxy.client().await;
    let _: () = redis::cmd("WATCH")
        .arg("balance")
        .query_async(&mut client)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("balance")
        .arg(7)
        .query_async(&mut other)
        .await
        .unwrap();
    let result: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("balance", 1)
        .query_async(&mut client)
        .await
        .unwrap();
    assert_eq!(result, None, "EXEC after a conflict is nil");
    let result: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("balance", 1)
        .query_async(&mut client)
        .await
        .unwrap();
    assert_eq!(result, Some((8,)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_is_woken_by_a_push_from_another_client() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut blocked = proxy.raw().await;
    let mut pusher = proxy.raw().await;
    let dedicated_before = proxy.handle().stats().upstream_dedicated();

    blocked.send_command(&[b"BLPOP", b"jobs", b"5"]).await;
    // Wait until Redis reports the client blocked, then push.
    let mut direct = RawClient::connect(server.addr()).await;
    direct.cmd_until_contains("INFO clients", "blocked_clients:1").await;
    // Meanwhile the pooled clients are not held up.
    assert_eq!(pusher.cmd("PING").await, "+PONG\r\n");
    assert_eq!(pusher.cmd("RPUSH jobs first").await, ":1\r\n");
    assert_eq!(blocked.read_reply().await, b"*2\r\n$4\r\njobs\r\n$5\r\nfirst\r\n");
    assert_eq!(proxy.handle().stats().upstream_dedicated(), dedicated_before + 1);

    // A timeout answers nil, as Redis does (RESP2: a nil array).
    let mut direct_blocker = RawClient::connect(server.addr()).await;
    let from_redis = direct_blocker.cmd("BLPOP empty 0.05").await;
    assert_eq!(blocked.cmd("BLPOP empty 0.05").await, from_redis);
    assert_eq!(from_redis, "*-1\r\n");

    // When the client leaves, its connection is closed too.
    drop(blocked);
    common::poll_until("the dedicated connection to close", || {
        proxy.handle().stats().upstream_dedicated() == dedicated_before
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_messages_reach_subscribers_in_resp2_and_resp3() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut subscriber = proxy.raw().await;
    let mut publisher = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;

    assert_eq!(
        subscriber.cmd("SUBSCRIBE news").await,
        "*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );
    subscriber.send_command(&[b"PSUBSCRIBE", b"n*"]).await;
    assert_eq!(
        subscriber.read_reply().await,
        b"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:2\r\n"
    );
    direct.cmd_until_contains("PUBSUB NUMSUB news", ":1").await;
    assert_eq!(publisher.cmd("PUBLISH news hello").await, ":2\r\n");
    assert_eq!(
        subscriber.read_reply().await,
        b"*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
    );
    assert_eq!(
        subscriber.read_reply().await,
        b"*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$5\r\nhello\r\n"
    );
    subscriber.send_command(&[b"UNSUBSCRIBE", b"news"]).await;
    assert_eq!(
        subscriber.read_reply().await,
        b"*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:1\r\n"
    );

    // RESP3: messages are push frames, and ordinary commands still work on
    // the same connection, byte for byte as from Redis.
    let mut resp3 = proxy.raw().await;
    let mut resp3_direct = RawClient::connect(server.addr()).await;
    assert!(resp3.cmd("HELLO 3").await.starts_with('%'));
    assert!(resp3_direct.cmd("HELLO 3").await.starts_with('%'));
    same_as_redis(
        &mut resp3_direct,
        &mut resp3,
        &["SUBSCRIBE alerts", "SET k v", "GET k", "GET nope", "PING"],
    )
    .await;
    assert_eq!(publisher.cmd("PUBLISH alerts fire").await, ":2\r\n");
    let expected = b">3\r\n$7\r\nmessage\r\n$6\r\nalerts\r\n$4\r\nfire\r\n";
    assert_eq!(resp3.read_reply().await, expected);
    assert_eq!(resp3_direct.read_reply().await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_isolates_databases() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut one = proxy.raw().await;
    let mut zero = proxy.raw().await;
    assert_eq!(one.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(one.cmd("SET where one").await, "+OK\r\n");
    assert_eq!(zero.cmd("GET where").await, "$-1\r\n");
    assert_eq!(zero.cmd("SET where zero").await, "+OK\r\n");
    assert_eq!(one.cmd("GET where").await, "$3\r\none\r\n");

    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(direct.cmd("GET where").await, "$3\r\none\r\n");
    same_as_redis(
        &mut direct,
        &mut zero,
        &["SELECT 16", "SELECT -1", "SELECT x", "SELECT", "SELECT 1 2"],
    )
    .await;

    // A SELECT in the middle of a pipeline applies exactly there.
    let mut client = proxy.raw().await;
    let wire = [
        common::encode(&[b"SET", b"p", b"in0"]),
        common::encode(&[b"SELECT", b"2"]),
        common::encode(&[b"SET", b"p", b"in2"]),
        common::encode(&[b"GET", b"p"]),
        common::encode(&[b"SELECT", b"0"]),
        common::encode(&[b"GET", b"p"]),
    ]
    .concat();
    client.send(&wire).await;
    for expected in [
        &b"+OK\r\n"[..],
        b"+OK\r\n",
        b"+OK\r\n",
        b"$3\r\nin2\r\n",
        b"+OK\r\n",
        b"$3\r\nin0\r\n",
    ] {
        assert_eq!(client.read_reply().await, expected);
    }
    assert_eq!(direct.cmd("SELECT 2").await, "+OK\r\n");
    assert_eq!(direct.cmd("GET p").await, "$3\r\nin2\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_switches_the_client_to_resp3() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(client.cmd("HSET h a 1").await, ":1\r\n");
    assert_eq!(client.cmd("ZADD z 1.5 m").await, ":1\r\n");

    let hello = client.cmd("HELLO 3").await;
    assert!(hello.starts_with('%'), "{hello}");
    for field in [
        "$6\r\nserver\r\n$5\r\nredis\r\n",
        "$5\r\nproto\r\n:3\r\n",
        "$7\r\nversion\r\n",
    ] {
        assert!(hello.contains(field), "{hello} lacks {field:?}");
    }
    assert!(direct.cmd("HELLO 3").await.starts_with('%'));
    same_as_redis(
        &mut direct,
        &mut client,
        &[
            "HGETALL h",
            "ZSCORE z m",
            "GET nope",
            "SMEMBERS nope",
            "ZRANGE z 0 -1 WITHSCORES",
            "HELLO 4",
        ],
    )
    .await;
    assert_eq!(client.cmd("HGETALL h").await, "%1\r\n$1\r\na\r\n$1\r\n1\r\n");
    assert_eq!(client.cmd("GET nope").await, "_\r\n");

    // Back to RESP2.
    assert!(client.cmd("HELLO 2").await.starts_with('*'));
    assert!(direct.cmd("HELLO 2").await.starts_with('*'));
    same_as_redis(&mut direct, &mut client, &["HGETALL h", "ZSCORE z m", "GET nope"]).await;

    // The redis crate negotiating RESP3 itself.
    let client = redis::Client::open(format!("{}?protocol=resp3", proxy.url())).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let map: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg("h")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(map.get("a").map(String::as_str), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_silences_replies_like_redis() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    for (mut client, label) in [
        (RawClient::connect(server.addr()).await, "Redis"),
        (proxy.raw().await, "proxy"),
    ] {
        let wire = [
            common::encode(&[b"CLIENT", b"REPLY", b"OFF"]),
            common::encode(&[b"SET", b"silent", label.as_bytes()]),
            common::encode(&[b"INCR", b"counter"]),
            common::encode(&[b"CLIENT", b"REPLY", b"ON"]),
            common::encode(&[b"GET", b"silent"]),
        ]
        .concat();
        client.send(&wire).await;
        assert_eq!(client.read_reply().await, b"+OK\r\n", "{label}: CLIENT REPLY ON");
        let expected = format!("${}\r\n{label}\r\n", label.len());
        assert_eq!(
            String::from_utf8(client.read_reply().await).unwrap(),
            expected,
            "{label}"
        );
        // Nothing else arrives.
        client.send_command(&[b"PING"]).await;
        assert_eq!(client.read_reply().await, b"+PONG\r\n", "{label}");
    }
}

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
