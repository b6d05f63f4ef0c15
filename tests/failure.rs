//! Failure and limits: an unreachable or restarted Redis, malformed and
//! oversized input, too many clients, idle clients, graceful shutdown. Each
//! failure affects only the client concerned and never loses a reply.

mod common;

use std::time::{Duration, Instant};

use common::{DEADLINE, Proxy, RawClient, RedisServer};

const UNAVAILABLE: &str = "-ERR upstream unavailable: ";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_killed_and_restarted_mid_run() {
    let mut server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut client = proxy.raw().await;
    let mut bystander = proxy.raw().await;
    assert_eq!(client.cmd("SET before 1").await, "+OK\r\n");

    server.kill();
    let started = Instant::now();
    let reply = client.cmd("GET before").await;
    assert!(reply.starts_with(UNAVAILABLE), "got {reply:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "error took {:?}",
        started.elapsed()
    );
    // A pipeline while Redis is down: one error per command, in order.
    client
        .send(&[common::encode(&[b"PING"]), common::encode(&[b"GET", b"x"])].concat())
        .await;
    for _ in 0..2 {
        let reply = String::from_utf8(client.read_reply().await).unwrap();
        assert!(reply.starts_with(UNAVAILABLE), "got {reply:?}");
    }

    server.restart();
    // The proxy reconnects by itself; the same client connections work again.
    client.cmd_until("SET after 2", "+OK\r\n").await;
    assert_eq!(client.cmd("GET after").await, "$1\r\n2\r\n");
    // The bystander is pinned to another pooled connection, which comes
    // back on its own schedule (its reconnection backoff).
    bystander.cmd_until("GET after", "$1\r\n2\r\n").await;
    assert!(proxy.handle().stats().upstream_errors() >= 1);
}

/// A command in flight when its connection breaks gets an error reply, and
/// the commands queued behind it are not answered with someone else's reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_in_flight_when_redis_dies_get_errors() {
    let mut server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start_with(&server.url(), |config| config.pool.size = 1).await;
    let mut sleeper = proxy.raw().await;
    let mut other = proxy.raw().await;
    assert_eq!(other.cmd("PING").await, "+PONG\r\n");
    // One client's pipeline: a command Redis will be busy with, and one
    // queued behind it.
    sleeper
        .send(
            &[
                common::encode(&[b"DEBUG", b"SLEEP", b"5"]),
                common::encode(&[b"SET", b"queued", b"1"]),
            ]
            .concat(),
        )
        .await;
    // Give the pipeline time to reach Redis (had it not, it must get the
    // same errors); another client's command queues behind it meanwhile.
    tokio::time::sleep(Duration::from_millis(100)).await;
    other.send(&common::encode(&[b"SET", b"other", b"1"])).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let started = Instant::now();
    server.kill();
    for (client, replies) in [(&mut sleeper, 2), (&mut other, 1)] {
        for _ in 0..replies {
            let reply = String::from_utf8(client.read_reply().await).unwrap();
            assert!(reply.starts_with(UNAVAILABLE), "got {reply:?}");
        }
    }
    assert!(started.elapsed() < Duration::from_secs(3));
    server.restart();
    other.cmd_until("PING", "+PONG\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_then_coming_up() {
    let port = common::free_port();
    let proxy = Proxy::start(&format!("redis://127.0.0.1:{port}")).await;
    let mut client = proxy.raw().await;
    let started = Instant::now();
    let reply = client.cmd("GET k").await;
    assert!(reply.starts_with(UNAVAILABLE), "got {reply:?}");
    assert!(reply.contains("refused"), "the reason is given: {reply:?}");
    assert!(started.elapsed() < Duration::from_secs(3));

    // Redis appears on that port later.
    let server = RedisServer::start_on(port);
    client.cmd_until("SET k v", "+OK\r\n").await;
    assert_eq!(client.cmd("GET k").await, "$1\r\nv\r\n");
    drop(server);
}

/// Malformed input gets Redis's protocol error and closes that client only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_that_client() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut bystander = proxy.raw().await;
    // The bystander has a pipeline in progress the whole time.
    bystander.send(&common::encode(&[b"SET", b"b", b"1"])).await;
    for input in [
        &b"*abc\r\n"[..],
        b"*2\r\n$3\r\nGET\r\n$x\r\n",
        b"*1\r\n*1\r\n$4\r\nPING\r\n",
    ] {
        let mut direct = RawClient::connect(server.addr()).await;
        direct.send(input).await;
        let from_redis = direct.read_until_closed().await;
        let mut client = proxy.raw().await;
        client.send(input).await;
        let from_proxy = client.read_until_closed().await;
        let from_proxy = String::from_utf8_lossy(&from_proxy);
        let from_redis = String::from_utf8_lossy(&from_redis);
        assert!(
            from_proxy.starts_with("-ERR Protocol error: "),
            "{input:?}: proxy sent {from_proxy:?}"
        );
        assert_eq!(from_proxy, from_redis, "{input:?}: Redis's wording");
    }
    // A negative or zero multibulk length is an empty request to Redis.
    let mut client = proxy.raw().await;
    client.send(b"*-5\r\n*0\r\n").await;
    assert_eq!(client.cmd("PING").await, "+PONG\r\n");
    assert_eq!(bystander.read_reply().await, b"+OK\r\n");
    assert_eq!(bystander.cmd("GET b").await, "$1\r\n1\r\n");
    assert!(proxy.handle().stats().protocol_errors() >= 3);
}

/// Oversized input is refused before it is buffered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| {
        config.limits.max_bulk_bytes = 1024;
        config.limits.max_multibulk_len = 16;
        config.limits.max_inline_bytes = 64;
        config.limits.max_query_buffer_bytes = 4096;
    })
    .await;
    let cases: [(&[u8], &str); 4] = [
        (
            b"*2\r\n$3\r\nGET\r\n$2000\r\n",
            "-ERR Protocol error: invalid bulk length",
        ),
        (b"*17\r\n", "-ERR Protocol error: invalid multibulk length"),
        (&[b'A'; 100], "-ERR Protocol error: too big inline request"),
        (
            b"*2\r\n$3\r\nGET\r\n$-7\r\n",
            "-ERR Protocol error: invalid bulk length",
        ),
    ];
    for (input, expected) in cases {
        let mut client = proxy.raw().await;
        client.send(input).await;
        let sent = client.read_until_closed().await;
        assert_eq!(String::from_utf8_lossy(&sent), format!("{expected}\r\n"));
    }
    // Many small complete commands never count against the query buffer;
    // an unfinished request larger than it does.
    let mut client = proxy.raw().await;
    let mut wire = Vec::new();
    for _ in 0..1000 {
        wire.extend_from_slice(&common::encode(&[b"PING"]));
    }
    client.send(&wire).await;
    for _ in 0..1000 {
        assert_eq!(client.read_reply().await, b"+PONG\r\n");
    }
    let mut greedy = proxy.raw().await;
    let mut wire = b"*6\r\n$3\r\nDEL\r\n".to_vec();
    for _ in 0..5 {
        wire.extend_from_slice(&[b"$1000\r\n".as_slice(), &[b'k'; 1000], b"\r\n"].concat());
    }
    greedy.send(&wire[..wire.len() - 10]).await;
    let sent = greedy.read_until_closed().await;
    assert!(
        String::from_utf8_lossy(&sent).starts_with("-ERR Protocol error: query buffer limit"),
        "{:?}",
        String::from_utf8_lossy(&sent)
    );
    assert_eq!(client.cmd("PING").await, "+PONG\r\n");
}

/// A reply nested deeper than the limit is refused without overflowing the
/// stack; the client gets an error for that command, nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_nested_beyond_the_limit_are_refused() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| config.limits.max_nesting_depth = 8).await;
    let mut client = proxy.raw().await;
    let nested: &[u8] = b"local t = {1} for i = 1, 20 do t = {t} end return t";
    let shallow: &[u8] = b"local t = {1} for i = 1, 3 do t = {t} end return t";
    assert_eq!(
        client.command(&[b"EVAL", shallow, b"0"]).await,
        b"*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n"
    );
    let reply = String::from_utf8(client.command(&[b"EVAL", nested, b"0"]).await).unwrap();
    assert!(reply.starts_with("-ERR "), "got {reply:?}");
    client.cmd_until("PING", "+PONG\r\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_rejects_the_extra_client_only() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| config.limits.max_clients = 2).await;
    let mut first = proxy.raw().await;
    let mut second = proxy.raw().await;
    assert_eq!(first.cmd("PING").await, "+PONG\r\n");
    assert_eq!(second.cmd("PING").await, "+PONG\r\n");
    let mut third = proxy.raw().await;
    assert_eq!(
        String::from_utf8_lossy(&third.read_until_closed().await),
        "-ERR max number of clients reached\r\n"
    );
    assert_eq!(proxy.handle().stats().clients_rejected(), 1);
    assert_eq!(first.cmd("PING").await, "+PONG\r\n");
    drop(second);
    common::poll_until("the slot to free up", || proxy.handle().stats().clients() == 1);
    let mut fourth = proxy.raw().await;
    assert_eq!(fourth.cmd("PING").await, "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_clients_are_closed_after_the_timeout() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| config.limits.idle_timeout_secs = 1).await;
    let mut idle = proxy.raw().await;
    assert_eq!(idle.cmd("PING").await, "+PONG\r\n");
    let started = Instant::now();
    assert!(idle.read_until_closed().await.is_empty());
    assert!(started.elapsed() >= Duration::from_millis(900));
    assert!(started.elapsed() < DEADLINE);
}

/// Shutdown stops accepting and lets in-flight replies reach their clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_replies() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let addr = proxy.addr();
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET k v").await, "+OK\r\n");
    // A reply still owed when shutdown begins: BLPOP times out in 300 ms.
    client.send_command(&[b"BLPOP", b"nothing", b"0.3"]).await;
    let mut direct = RawClient::connect(server.addr()).await;
    direct.cmd_until_contains("INFO clients", "blocked_clients:1").await;
    proxy.shutdown().await;
    assert_eq!(client.read_reply().await, b"*-1\r\n");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("GET k").await, "$1\r\nv\r\n");
}

/// A reply that would never come (BLPOP 0) does not hold shutdown beyond the
/// drain timeout, and Redis is not left with a blocked client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_gives_up_on_blocked_clients_after_the_drain_timeout() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| config.limits.drain_timeout_ms = 200).await;
    let mut blocked = proxy.raw().await;
    blocked.send_command(&[b"BLPOP", b"never", b"0"]).await;
    let mut direct = RawClient::connect(server.addr()).await;
    direct.cmd_until_contains("INFO clients", "blocked_clients:1").await;
    let started = Instant::now();
    proxy.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    blocked.read_until_closed().await;
    direct.cmd_until_contains("INFO clients", "blocked_clients:0").await;
}

/// When a pooled connection's reader stops (here: a reply over the size
/// limit), the commands queued behind it get errors and are never sent to
/// Redis, and the pool recovers with a new connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_reply_fails_the_connection_without_running_queued_commands() {
    let server = RedisServer::start_with(&["--enable-debug-command", "yes"]);
    let proxy = Proxy::start_with(&server.url(), |config| {
        config.pool.size = 1;
        config.limits.max_bulk_bytes = 1024;
    })
    .await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("SETRANGE big 5000 x").await, ":5001\r\n");
    let mut client = proxy.raw().await;
    let mut others = Vec::new();
    for _ in 0..20 {
        others.push(proxy.raw().await);
    }
    // Redis is busy while the oversized reply is still to come...
    client
        .send(
            &[
                common::encode(&[b"DEBUG", b"SLEEP", b"0.5"]),
                common::encode(&[b"GET", b"big"]),
            ]
            .concat(),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    // ...and other clients' commands queue behind it on the same connection.
    for other in &mut others {
        other.send_command(&[b"INCR", b"counter"]).await;
    }
    // A batch's replies are delivered together, so both commands of the
    // client's pipeline report the failure.
    for _ in 0..2 {
        let reply = String::from_utf8(client.read_reply().await).unwrap();
        assert!(reply.starts_with(UNAVAILABLE), "{reply:?}");
        assert!(reply.contains("max_bulk_bytes"), "the reason is named: {reply:?}");
    }
    for other in &mut others {
        let reply = String::from_utf8(other.read_reply().await).unwrap();
        assert!(reply.starts_with(UNAVAILABLE), "{reply:?}");
    }
    assert_eq!(direct.cmd("GET counter").await, "$-1\r\n", "no INCR reached Redis");
    client.cmd_until("INCR counter", ":1\r\n").await;
}

/// `pool.reply_timeout_ms`: while Redis is paused (SIGSTOP) with replies
/// owed on a pooled connection, those requests fail with the reason once
/// Redis has said nothing for the timeout, in order, and the pool
/// reconnects once Redis is back. Off (0), the same requests wait for
/// Redis, as they would on Redis itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_redis_fails_owed_requests_after_the_reply_timeout() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    let info = direct.cmd("INFO server").await;
    let pid: i32 = common::values::info_field(&info, "process_id").parse().expect("pid");
    let proxy = Proxy::start_with(&server.url(), |config| {
        config.memory_cache.enabled = false;
        config.pool.reply_timeout_ms = 300;
        config.pool.connect_timeout_ms = 300;
    })
    .await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET k v").await, "+OK\r\n");
    // SAFETY: kill(2) on the redis-server this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let started = Instant::now();
    let mut pipeline = common::encode(&[b"GET", b"k"]);
    pipeline.extend(common::encode(&[b"SET", b"k", b"w"]));
    client.send(&pipeline).await;
    let replies = tokio::time::timeout(DEADLINE, async {
        let first = String::from_utf8(client.read_reply().await).unwrap();
        (first, String::from_utf8(client.read_reply().await).unwrap())
    })
    .await;
    let waited = started.elapsed();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0);
    let (first, second) = replies.expect("the owed requests failed instead of waiting for Redis");
    assert!(
        first.starts_with("-ERR upstream unavailable: no reply from Redis within 300 ms"),
        "{first:?}"
    );
    assert!(second.starts_with(UNAVAILABLE), "{second:?}");
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
        "failed after {waited:?}"
    );
    // Back: the pool reconnects, and the SET (which Redis may or may not
    // have run before the pause ended) is visible either way.
    client.cmd_until("PING", "+PONG\r\n").await;
    let value = client.cmd("GET k").await;
    assert!(value == "$1\r\nv\r\n" || value == "$1\r\nw\r\n", "{value:?}");
    assert_eq!(value, direct.cmd("GET k").await);
}
