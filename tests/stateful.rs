//! Connection state through the proxy, checked against what Redis itself
//! answers: WATCH/MULTI/EXEC, blocking commands, pub/sub (RESP2 and RESP3),
//! SELECT, HELLO, CLIENT REPLY, and the accounting of the dedicated upstream
//! connections these need.

mod common;

use std::time::Duration;

use common::{Proxy, RawClient, RedisServer, same_as_redis};

/// Longest a test waits to be sure something has *not* happened.
const QUIET: Duration = Duration::from_millis(100);

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Writes all `commands` in one write, then reads one reply per command.
async fn pipeline(client: &mut RawClient, commands: &[&[&[u8]]]) -> Vec<String> {
    let wire: Vec<u8> = commands.iter().flat_map(|args| common::encode(args)).collect();
    client.send(&wire).await;
    let mut replies = Vec::new();
    for _ in commands {
        replies.push(text(&client.read_reply().await));
    }
    replies
}

/// Fails if a reply arrives within [`QUIET`]: proves that nothing has been
/// answered (yet).
async fn assert_no_reply(client: &mut RawClient, what: &str) {
    if let Ok(reply) = tokio::time::timeout(QUIET, client.next_reply()).await {
        panic!("{what}: expected no reply yet, got {:?}", reply.map(|r| text(&r)));
    }
}

/// A HELLO reply with the connection id blanked out (through the proxy the
/// id is that of the pooled connection that answered).
fn hello_without_id(reply: &str) -> String {
    let marker = "$2\r\nid\r\n:";
    let start = reply.find(marker).unwrap_or_else(|| panic!("no id in {reply:?}")) + marker.len();
    let end = start + reply[start..].find("\r\n").expect("id line ends");
    format!("{}<id>{}", &reply[..start], &reply[end..])
}

// ---------------------------------------------------------------------------
// Transactions
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_conflict_makes_exec_nil_and_no_conflict_runs_it_like_redis() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    // The same script on two clients through the proxy and on two clients
    // straight to Redis; every reply must match byte for byte.
    let (mut a, mut b) = (proxy.raw().await, proxy.raw().await);
    let (mut direct_a, mut direct_b) = (
        RawClient::connect(server.addr()).await,
        RawClient::connect(server.addr()).await,
    );
    for (a, b, key) in [(&mut a, &mut b, "proxied"), (&mut direct_a, &mut direct_b, "direct")] {
        assert_eq!(a.cmd(&format!("SET {key} 1")).await, "+OK\r\n");

        // Conflict: another client writes the watched key before EXEC.
        assert_eq!(a.cmd(&format!("WATCH {key}")).await, "+OK\r\n");
        assert_eq!(b.cmd(&format!("SET {key} 2")).await, "+OK\r\n");
        assert_eq!(a.cmd("MULTI").await, "+OK\r\n");
        assert_eq!(a.cmd(&format!("SET {key} 3")).await, "+QUEUED\r\n");
        assert_eq!(a.cmd(&format!("GET {key}")).await, "+QUEUED\r\n");
        assert_eq!(
            a.cmd("EXEC").await,
            "*-1\r\n",
            "{key}: EXEC after a conflict is a nil array"
        );
        assert_eq!(b.cmd(&format!("GET {key}")).await, "$1\r\n2\r\n", "{key}: nothing ran");

        // No conflict: EXEC answers the array of the queued commands' replies.
        assert_eq!(a.cmd(&format!("WATCH {key}")).await, "+OK\r\n");
        assert_eq!(
            b.cmd(&format!("GET {key}")).await,
            "$1\r\n2\r\n",
            "reading is no conflict"
        );
        assert_eq!(a.cmd("MULTI").await, "+OK\r\n");
        assert_eq!(a.cmd(&format!("SET {key} 3")).await, "+QUEUED\r\n");
        assert_eq!(a.cmd(&format!("INCR {key}")).await, "+QUEUED\r\n");
        assert_eq!(a.cmd(&format!("GET {key}")).await, "+QUEUED\r\n");
        assert_eq!(a.cmd("EXEC").await, "*3\r\n+OK\r\n:4\r\n$1\r\n4\r\n");
        assert_eq!(b.cmd(&format!("GET {key}")).await, "$1\r\n4\r\n");

        // UNWATCH forgets the watch: a later write is no conflict.
        assert_eq!(a.cmd(&format!("WATCH {key}")).await, "+OK\r\n");
        assert_eq!(a.cmd("UNWATCH").await, "+OK\r\n");
        assert_eq!(b.cmd(&format!("SET {key} 9")).await, "+OK\r\n");
        assert_eq!(a.cmd("MULTI").await, "+OK\r\n");
        assert_eq!(a.cmd(&format!("GET {key}")).await, "+QUEUED\r\n");
        assert_eq!(a.cmd("EXEC").await, "*1\r\n$1\r\n9\r\n");
    }

    // Errors inside and around transactions, worded by Redis.
    same_as_redis(
        &mut direct_a,
        &mut a,
        &[
            "EXEC",
            "DISCARD",
            "MULTI",
            "MULTI",
            "SET only-one-arg",
            "INCR proxied",
            "EXEC",
            "GET proxied",
            "MULTI",
            "INCR proxied",
            "DISCARD",
            "GET proxied",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_conflict_with_the_redis_crate() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut client = proxy.client().await;
    let mut other = proxy.client().await;
    let _: () = redis::cmd("SET")
        .arg("stock")
        .arg(5)
        .query_async(&mut client)
        .await
        .unwrap();

    let _: () = redis::cmd("WATCH").arg("stock").query_async(&mut client).await.unwrap();
    let _: () = redis::cmd("DECR").arg("stock").query_async(&mut other).await.unwrap();
    let aborted: Option<(i64, i64)> = redis::pipe()
        .atomic()
        .decr("stock", 1)
        .get("stock")
        .query_async(&mut client)
        .await
        .unwrap();
    assert_eq!(aborted, None, "EXEC after a conflicting write is nil");
    let stock: i64 = redis::cmd("GET").arg("stock").query_async(&mut other).await.unwrap();
    assert_eq!(stock, 4, "only the other client's DECR ran");

    let _: () = redis::cmd("WATCH").arg("stock").query_async(&mut client).await.unwrap();
    let committed: Option<(i64, i64)> = redis::pipe()
        .atomic()
        .decr("stock", 1)
        .get("stock")
        .query_async(&mut client)
        .await
        .unwrap();
    assert_eq!(committed, Some((3, 3)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_transaction_between_pooled_commands_keeps_order() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    // Pooled, then the client's own connection from MULTI on, in one write.
    let script: &[&[&[u8]]] = &[
        &[b"SET", b"n", b"1"],
        &[b"INCR", b"n"],
        &[b"MULTI"],
        &[b"INCR", b"n"],
        &[b"GET", b"n"],
        &[b"EXEC"],
        &[b"GET", b"n"],
    ];
    let from_redis = pipeline(&mut direct, script).await;
    assert_eq!(
        from_redis,
        [
            "+OK\r\n",
            ":2\r\n",
            "+OK\r\n",
            "+QUEUED\r\n",
            "+QUEUED\r\n",
            "*2\r\n:3\r\n$1\r\n3\r\n",
            "$1\r\n3\r\n"
        ]
    );
    assert_eq!(direct.cmd("SET n 1").await, "+OK\r\n");
    assert_eq!(pipeline(&mut proxied, script).await, from_redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_runs_in_the_database_selected_before_it() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET where zero").await, "+OK\r\n");
    assert_eq!(client.cmd("SELECT 3").await, "+OK\r\n");
    assert_eq!(client.cmd("SET where three").await, "+OK\r\n");
    // MULTI gives the client its own connection; it must be in database 3.
    assert_eq!(client.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(client.cmd("GET where").await, "+QUEUED\r\n");
    assert_eq!(client.cmd("EXEC").await, "*1\r\n$5\r\nthree\r\n");
    assert_eq!(client.cmd("GET where").await, "$5\r\nthree\r\n");
    // SELECT on its own connection is Redis's.
    assert_eq!(client.cmd("SELECT 0").await, "+OK\r\n");
    assert_eq!(client.cmd("GET where").await, "$4\r\nzero\r\n");
    assert_eq!(client.cmd("SELECT 16").await, "-ERR DB index is out of range\r\n");
    assert_eq!(client.cmd("GET where").await, "$4\r\nzero\r\n");
}

// ---------------------------------------------------------------------------
// Blocking commands
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_waits_until_another_client_pushes_through_the_proxy() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut blocked = proxy.raw().await;
    let mut pusher = proxy.raw().await;
    let mut observer = RawClient::connect(server.addr()).await;

    blocked.send_command(&[b"BLPOP", b"queue", b"0"]).await;
    // Redis has the client blocked...
    observer
        .cmd_until_contains("INFO clients", "blocked_clients:1\r\n")
        .await;
    // ...and the proxy has not answered it.
    assert_no_reply(&mut blocked, "BLPOP on an empty list").await;
    // Other clients are not held up meanwhile.
    assert_eq!(pusher.cmd("LLEN queue").await, ":0\r\n");

    assert_eq!(pusher.cmd("RPUSH queue job1 job2").await, ":2\r\n");
    assert_eq!(text(&blocked.read_reply().await), "*2\r\n$5\r\nqueue\r\n$4\r\njob1\r\n");
    assert_eq!(pusher.cmd("LRANGE queue 0 -1").await, "*1\r\n$4\r\njob2\r\n");
    observer
        .cmd_until_contains("INFO clients", "blocked_clients:0\r\n")
        .await;

    // An element already there is popped at once; the connection is reused.
    assert_eq!(
        blocked.cmd("BLPOP queue 0").await,
        "*2\r\n$5\r\nqueue\r\n$4\r\njob2\r\n"
    );
    assert_eq!(blocked.cmd("GET other").await, "$-1\r\n", "still usable afterwards");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_in_a_selected_database_is_woken_by_a_push_there() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut blocked = proxy.raw().await;
    let mut pusher = proxy.raw().await;
    let mut observer = RawClient::connect(server.addr()).await;
    assert_eq!(blocked.cmd("SELECT 5").await, "+OK\r\n");
    assert_eq!(pusher.cmd("SELECT 5").await, "+OK\r\n");

    blocked.send_command(&[b"BLPOP", b"q5", b"0"]).await;
    observer
        .cmd_until_contains("INFO clients", "blocked_clients:1\r\n")
        .await;
    // The same key in database 0 is another list.
    assert_eq!(observer.cmd("RPUSH q5 wrong-db").await, ":1\r\n");
    assert_no_reply(&mut blocked, "a push to another database").await;
    assert_eq!(pusher.cmd("RPUSH q5 right-db").await, ":1\r\n");
    assert_eq!(
        text(&blocked.read_reply().await),
        "*2\r\n$2\r\nq5\r\n$8\r\nright-db\r\n"
    );
    assert_eq!(observer.cmd("LLEN q5").await, ":1\r\n", "database 0's list untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blpop_timeout_answers_nil_like_redis_in_resp2_and_resp3() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;

    let replies = same_as_redis(&mut direct, &mut proxied, &["BLPOP nothing 0.05"]).await;
    assert_eq!(replies, ["*-1\r\n"]);
    let replies = same_as_redis(&mut direct, &mut proxied, &["BRPOP nothing other 0.05"]).await;
    assert_eq!(replies, ["*-1\r\n"]);

    // RESP3 on a fresh pair (HELLO first, then the blocking command).
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert!(proxied.cmd("HELLO 3").await.starts_with('%'));
    assert!(direct.cmd("HELLO 3").await.starts_with('%'));
    let replies = same_as_redis(&mut direct, &mut proxied, &["BLPOP nothing 0.05", "GET nothing"]).await;
    assert_eq!(replies, ["_\r\n", "_\r\n"]);
}

// ---------------------------------------------------------------------------
// Pub/sub
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_subscribe_psubscribe_unsubscribe_in_resp2_like_redis() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut subscriber = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let mut publisher = proxy.raw().await;

    // Subscribing: the confirmations are Redis's.
    let replies = same_as_redis(&mut direct, &mut subscriber, &["SUBSCRIBE news"]).await;
    assert_eq!(replies, ["*3\r\n$9\r\nsubscribe\r\n$4\r\nnews\r\n:1\r\n"]);
    let replies = same_as_redis(&mut direct, &mut subscriber, &["PSUBSCRIBE n*"]).await;
    assert_eq!(replies, ["*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:2\r\n"]);

    // A PUBLISH from another proxy client reaches both subscribers, each
    // once for the channel and once for the pattern.
    assert_eq!(publisher.cmd("PUBLISH news hello").await, ":4\r\n");
    for expected in [
        "*3\r\n$7\r\nmessage\r\n$4\r\nnews\r\n$5\r\nhello\r\n",
        "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$5\r\nhello\r\n",
    ] {
        assert_eq!(text(&subscriber.read_reply().await), expected);
        assert_eq!(text(&direct.read_reply().await), expected);
    }
    // A channel only the pattern matches.
    assert_eq!(publisher.cmd("PUBLISH notes x").await, ":2\r\n");
    let expected = "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$5\r\nnotes\r\n$1\r\nx\r\n";
    assert_eq!(text(&subscriber.read_reply().await), expected);
    assert_eq!(text(&direct.read_reply().await), expected);
    // A channel nobody listens to.
    assert_eq!(publisher.cmd("PUBLISH other x").await, ":0\r\n");

    // While subscribed, RESP2 allows only some commands; PING has its own form.
    same_as_redis(&mut direct, &mut subscriber, &["PING", "PING hi", "GET news"]).await;

    // UNSUBSCRIBE leaves the pattern: messages come through it only.
    let replies = same_as_redis(&mut direct, &mut subscriber, &["UNSUBSCRIBE news"]).await;
    assert_eq!(replies, ["*3\r\n$11\r\nunsubscribe\r\n$4\r\nnews\r\n:1\r\n"]);
    assert_eq!(publisher.cmd("PUBLISH news again").await, ":2\r\n");
    let expected = "*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$4\r\nnews\r\n$5\r\nagain\r\n";
    assert_eq!(text(&subscriber.read_reply().await), expected);
    assert_eq!(text(&direct.read_reply().await), expected);

    // Out of pub/sub mode, ordinary commands work again on the connection.
    let replies = same_as_redis(
        &mut direct,
        &mut subscriber,
        &["PUNSUBSCRIBE n*", "SET k v", "GET k", "PING"],
    )
    .await;
    assert_eq!(replies[0], "*3\r\n$12\r\npunsubscribe\r\n$2\r\nn*\r\n:0\r\n");
    assert_eq!(publisher.cmd("PUBLISH news unheard").await, ":0\r\n");
    assert_no_reply(&mut subscriber, "after unsubscribing from everything").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_subscribe_to_several_channels_at_once() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut subscriber = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    // One command, three confirmations: the proxy must pass all of them.
    for client in [&mut subscriber, &mut direct] {
        client.send_command(&[b"SUBSCRIBE", b"a", b"b", b"c"]).await;
    }
    for count in 1..=3 {
        let from_proxy = subscriber.read_reply().await;
        assert_eq!(from_proxy, direct.read_reply().await);
        assert!(
            text(&from_proxy).ends_with(&format!(":{count}\r\n")),
            "{}",
            text(&from_proxy)
        );
    }
    let mut publisher = proxy.raw().await;
    assert_eq!(publisher.cmd("PUBLISH c last").await, ":2\r\n");
    let expected = "*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$4\r\nlast\r\n";
    assert_eq!(text(&subscriber.read_reply().await), expected);
    assert_eq!(text(&direct.read_reply().await), expected);
    // UNSUBSCRIBE without arguments: one confirmation per channel.
    for client in [&mut subscriber, &mut direct] {
        client.send_command(&[b"UNSUBSCRIBE"]).await;
    }
    let mut from_proxy = Vec::new();
    let mut from_redis = Vec::new();
    for _ in 0..3 {
        from_proxy.push(text(&subscriber.read_reply().await));
        from_redis.push(text(&direct.read_reply().await));
    }
    // Redis's order over a set of channels is not fixed; compare as sets.
    from_proxy.sort();
    from_redis.sort();
    assert_eq!(from_proxy, from_redis);
    assert_eq!(subscriber.cmd("PING").await, "+PONG\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_in_resp3_uses_push_frames_and_ordinary_commands_still_work() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut subscriber = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let mut publisher = proxy.raw().await;
    assert_eq!(publisher.cmd("SET k v").await, "+OK\r\n");
    assert_eq!(publisher.cmd("HSET h f 1").await, ":1\r\n");

    let proxied_hello = subscriber.cmd("HELLO 3").await;
    let direct_hello = direct.cmd("HELLO 3").await;
    assert_eq!(hello_without_id(&proxied_hello), hello_without_id(&direct_hello));

    let replies = same_as_redis(&mut direct, &mut subscriber, &["SUBSCRIBE alerts", "PSUBSCRIBE al*"]).await;
    assert_eq!(
        replies,
        [
            ">3\r\n$9\r\nsubscribe\r\n$6\r\nalerts\r\n:1\r\n",
            ">3\r\n$10\r\npsubscribe\r\n$3\r\nal*\r\n:2\r\n",
        ]
    );

    assert_eq!(publisher.cmd("PUBLISH alerts fire").await, ":4\r\n");
    for expected in [
        ">3\r\n$7\r\nmessage\r\n$6\r\nalerts\r\n$4\r\nfire\r\n",
        ">4\r\n$8\r\npmessage\r\n$3\r\nal*\r\n$6\r\nalerts\r\n$4\r\nfire\r\n",
    ] {
        assert_eq!(text(&subscriber.read_reply().await), expected);
        assert_eq!(text(&direct.read_reply().await), expected);
    }

    // In RESP3 a subscribed connection runs any command, in RESP3.
    let replies = same_as_redis(
        &mut direct,
        &mut subscriber,
        &["PING", "GET k", "GET missing", "HGETALL h", "SET k w", "GET k"],
    )
    .await;
    assert_eq!(replies[0], "+PONG\r\n");
    assert_eq!(replies[2], "_\r\n");
    assert_eq!(replies[3], "%1\r\n$1\r\nf\r\n$1\r\n1\r\n");

    // A message in between replies arrives in order as a push frame.
    assert_eq!(publisher.cmd("PUBLISH alerts smoke").await, ":4\r\n");
    for client in [&mut subscriber, &mut direct] {
        client.send_command(&[b"GET", b"k"]).await;
    }
    for expected in [
        ">3\r\n$7\r\nmessage\r\n$6\r\nalerts\r\n$5\r\nsmoke\r\n",
        ">4\r\n$8\r\npmessage\r\n$3\r\nal*\r\n$6\r\nalerts\r\n$5\r\nsmoke\r\n",
        "$1\r\nw\r\n",
    ] {
        assert_eq!(text(&subscriber.read_reply().await), expected);
        assert_eq!(text(&direct.read_reply().await), expected);
    }

    let replies = same_as_redis(
        &mut direct,
        &mut subscriber,
        &["UNSUBSCRIBE alerts", "PUNSUBSCRIBE al*"],
    )
    .await;
    assert_eq!(
        replies,
        [
            ">3\r\n$11\r\nunsubscribe\r\n$6\r\nalerts\r\n:1\r\n",
            ">3\r\n$12\r\npunsubscribe\r\n$3\r\nal*\r\n:0\r\n",
        ]
    );
    assert_eq!(publisher.cmd("PUBLISH alerts gone").await, ":0\r\n");
}

// ---------------------------------------------------------------------------
// SELECT
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_isolates_databases_and_errors_like_redis() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut in_one = proxy.raw().await;
    let mut in_zero = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;

    assert_eq!(in_one.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(in_one.cmd("SET key one").await, "+OK\r\n");
    assert_eq!(in_zero.cmd("GET key").await, "$-1\r\n", "db 1's key is not in db 0");
    assert_eq!(in_zero.cmd("EXISTS key").await, ":0\r\n");
    assert_eq!(in_zero.cmd("SET key zero").await, "+OK\r\n");
    assert_eq!(in_one.cmd("GET key").await, "$3\r\none\r\n");
    assert_eq!(in_zero.cmd("GET key").await, "$4\r\nzero\r\n");
    // Redis agrees on where each key is.
    assert_eq!(direct.cmd("GET key").await, "$4\r\nzero\r\n");
    assert_eq!(direct.cmd("SELECT 1").await, "+OK\r\n");
    assert_eq!(direct.cmd("GET key").await, "$3\r\none\r\n");
    assert_eq!(direct.cmd("DBSIZE").await, ":1\r\n");

    // Failures, worded as Redis words them, and they change nothing.
    let replies = same_as_redis(
        &mut direct,
        &mut in_one,
        &[
            "SELECT 16",
            "SELECT -1",
            "SELECT abc",
            "SELECT",
            "SELECT 1 2",
            "GET key",
        ],
    )
    .await;
    assert_eq!(replies[0], "-ERR DB index is out of range\r\n");
    assert_eq!(replies[1], "-ERR DB index is out of range\r\n");
    assert_eq!(replies[5], "$3\r\none\r\n", "still in db 1 after failed SELECTs");
    assert_eq!(in_one.cmd("SELECT 15").await, "+OK\r\n", "the last database exists");
    assert_eq!(in_one.cmd("DBSIZE").await, ":0\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_in_the_middle_of_a_pipeline_applies_in_order() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    // Database 0 then 2 then 0 again, all in one write; the out-of-range
    // SELECT in between changes nothing.
    let script: &[&[&[u8]]] = &[
        &[b"SET", b"p", b"zero"],
        &[b"SELECT", b"2"],
        &[b"GET", b"p"],
        &[b"SET", b"p", b"two"],
        &[b"GET", b"p"],
        &[b"SELECT", b"99"],
        &[b"SELECT", b"0"],
        &[b"GET", b"p"],
        &[b"SELECT", b"2"],
        &[b"DEL", b"p"],
        &[b"SELECT", b"0"],
    ];
    for client in [&mut direct, &mut proxied] {
        let replies = pipeline(client, script).await;
        assert_eq!(
            replies,
            [
                "+OK\r\n",
                "+OK\r\n",
                "$-1\r\n",
                "+OK\r\n",
                "$3\r\ntwo\r\n",
                "-ERR DB index is out of range\r\n",
                "+OK\r\n",
                "$4\r\nzero\r\n",
                "+OK\r\n",
                ":1\r\n",
                "+OK\r\n",
            ]
        );
    }
    assert_eq!(direct.cmd("GET p").await, "$4\r\nzero\r\n");
}

// ---------------------------------------------------------------------------
// HELLO / RESP3
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_answers_a_map_and_data_replies_become_resp3_like_redis() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("HSET h f1 v1 f2 v2").await, ":2\r\n");
    assert_eq!(direct.cmd("ZADD z 1.5 m 3 n").await, ":2\r\n");
    assert_eq!(direct.cmd("SADD s only").await, ":1\r\n");

    let hello = proxied.cmd("HELLO 3").await;
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    for field in [
        "$6\r\nserver\r\n$5\r\nredis\r\n",
        "$7\r\nversion\r\n$",
        "$5\r\nproto\r\n:3\r\n",
        "$2\r\nid\r\n:",
    ] {
        assert!(hello.contains(field), "{hello:?} lacks {field:?}");
    }
    assert_eq!(hello_without_id(&hello), hello_without_id(&direct.cmd("HELLO 3").await));

    let replies = same_as_redis(
        &mut direct,
        &mut proxied,
        &[
            "HGETALL h",
            "ZSCORE z m",
            "GET missing",
            "HGET h missing",
            "ZRANGE z 0 -1 WITHSCORES",
            "SMEMBERS s",
            "HGETALL missing",
            "ZSCORE z missing",
        ],
    )
    .await;
    assert_eq!(replies[0], "%2\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n");
    assert_eq!(replies[1], ",1.5\r\n");
    assert_eq!(replies[2], "_\r\n");
    assert_eq!(replies[5], "~1\r\n$4\r\nonly\r\n");

    // A transaction on the client's own connection is RESP3 too.
    let replies = same_as_redis(&mut direct, &mut proxied, &["MULTI", "HGETALL h", "ZSCORE z n", "EXEC"]).await;
    assert_eq!(
        replies[3],
        "*2\r\n%2\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n,3\r\n"
    );

    // HELLO 2 goes back, on the client's own connection too.
    let hello = proxied.cmd("HELLO 2").await;
    assert!(hello.starts_with("*14\r\n"), "{hello}");
    assert!(hello.contains("$5\r\nproto\r\n:2\r\n"), "{hello}");
    assert_eq!(hello_without_id(&hello), hello_without_id(&direct.cmd("HELLO 2").await));
    let replies = same_as_redis(&mut direct, &mut proxied, &["HGETALL h", "ZSCORE z m", "GET missing"]).await;
    assert_eq!(
        replies,
        [
            "*4\r\n$2\r\nf1\r\n$2\r\nv1\r\n$2\r\nf2\r\n$2\r\nv2\r\n",
            "$3\r\n1.5\r\n",
            "$-1\r\n"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_then_hello_2_on_pooled_connections() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("ZADD z 2.25 m").await, ":1\r\n");
    for _ in 0..2 {
        assert!(proxied.cmd("HELLO 3").await.contains("$5\r\nproto\r\n:3\r\n"));
        assert!(direct.cmd("HELLO 3").await.contains("$5\r\nproto\r\n:3\r\n"));
        let replies = same_as_redis(&mut direct, &mut proxied, &["ZSCORE z m", "GET missing"]).await;
        assert_eq!(replies, [",2.25\r\n", "_\r\n"]);
        assert!(proxied.cmd("HELLO 2").await.contains("$5\r\nproto\r\n:2\r\n"));
        assert!(direct.cmd("HELLO 2").await.contains("$5\r\nproto\r\n:2\r\n"));
        let replies = same_as_redis(&mut direct, &mut proxied, &["ZSCORE z m", "GET missing"]).await;
        assert_eq!(replies, ["$4\r\n2.25\r\n", "$-1\r\n"]);
    }
    // HELLO without a version answers in the current protocol.
    assert!(proxied.cmd("HELLO").await.starts_with("*14\r\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_refused_by_redis_leaves_the_protocol_unchanged() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    // An unsupported version and a bad option are errors; the client stays
    // in RESP2, as with Redis.
    let replies = same_as_redis(
        &mut direct,
        &mut proxied,
        &["HELLO 4", "GET missing", "HELLO 3 BOGUS", "GET missing"],
    )
    .await;
    assert_eq!(replies[0], "-NOPROTO unsupported protocol version\r\n");
    assert_eq!(replies[3], "$-1\r\n");
}

// ---------------------------------------------------------------------------
// Dedicated upstream connections
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_takes_a_dedicated_connection_until_the_client_leaves() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let stats = proxy.handle().stats().clone();
    let mut bystander = proxy.raw().await;
    assert_eq!(bystander.cmd("SET a 1").await, "+OK\r\n");
    let before = stats.upstream_dedicated();
    assert_eq!(before, 0, "ordinary commands use pooled connections");

    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("GET a").await, "$1\r\n1\r\n");
    assert_eq!(stats.upstream_dedicated(), before, "not before MULTI");
    assert_eq!(client.cmd("MULTI").await, "+OK\r\n");
    common::poll_until("MULTI to take a dedicated connection", || {
        stats.upstream_dedicated() > before
    });
    assert_eq!(stats.upstream_dedicated(), before + 1);
    // EXEC ends the transaction but not the connection's ownership.
    assert_eq!(client.cmd("INCR a").await, "+QUEUED\r\n");
    assert_eq!(client.cmd("EXEC").await, "*1\r\n:2\r\n");
    assert_eq!(stats.upstream_dedicated(), before + 1);

    // Redis sees the connection (CLIENT ID runs on it); it goes when the
    // client goes.
    let id = client.cmd("CLIENT ID").await;
    let line = format!("id={} ", id.trim_start_matches(':').trim_end());
    let mut observer = RawClient::connect(server.addr()).await;
    let list = observer.cmd("CLIENT LIST").await;
    assert!(list.lines().any(|l| l.starts_with(&line)), "{line:?} not in {list}");
    drop(client);
    common::poll_until("the dedicated connection to be released", || {
        stats.upstream_dedicated() == before
    });
    let start = std::time::Instant::now();
    loop {
        let list = observer.cmd("CLIENT LIST").await;
        if !list.lines().any(|l| l.starts_with(&line)) {
            break;
        }
        assert!(start.elapsed() < common::DEADLINE, "Redis still has {line:?}: {list}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bystander.cmd("GET a").await, "$1\r\n2\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_client_leaving_releases_its_dedicated_connection() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let stats = proxy.handle().stats().clone();
    let before = stats.upstream_dedicated();
    let mut observer = RawClient::connect(server.addr()).await;

    let mut blocked = proxy.raw().await;
    blocked.send_command(&[b"BLPOP", b"never", b"0"]).await;
    common::poll_until("BLPOP to take a dedicated connection", || {
        stats.upstream_dedicated() == before + 1
    });
    observer
        .cmd_until_contains("INFO clients", "blocked_clients:1\r\n")
        .await;

    // Leaving while blocked: the upstream connection (and Redis's blocked
    // client) goes too, so a later push is not swallowed by it.
    drop(blocked);
    common::poll_until("the dedicated connection to be released", || {
        stats.upstream_dedicated() == before
    });
    observer
        .cmd_until_contains("INFO clients", "blocked_clients:0\r\n")
        .await;
    let mut pusher = proxy.raw().await;
    assert_eq!(pusher.cmd("RPUSH never kept").await, ":1\r\n");
    assert_eq!(pusher.cmd("LRANGE never 0 -1").await, "*1\r\n$4\r\nkept\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriber_leaving_releases_its_dedicated_connection() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let stats = proxy.handle().stats().clone();
    let before = stats.upstream_dedicated();
    let mut subscriber = proxy.raw().await;
    assert_eq!(
        subscriber.cmd("SUBSCRIBE ch").await,
        "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_eq!(stats.upstream_dedicated(), before + 1);
    drop(subscriber);
    common::poll_until("the dedicated connection to be released", || {
        stats.upstream_dedicated() == before
    });
    let mut publisher = proxy.raw().await;
    publisher.cmd_until("PUBLISH ch x", ":0\r\n").await;
}

// ---------------------------------------------------------------------------
// CLIENT REPLY
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reply_off_on_and_skip_like_redis() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let mut checker = proxy.raw().await;

    for (client, tag) in [(&mut direct, "direct"), (&mut proxied, "proxied")] {
        // One command at a time: OFF and what follows get no reply.
        client.send_command(&[b"CLIENT", b"REPLY", b"OFF"]).await;
        client.send_command(&[b"SET", tag.as_bytes(), b"1"]).await;
        client.send_command(&[b"INCR", tag.as_bytes()]).await;
        client.send_command(&[b"GET", tag.as_bytes()]).await;
        // The commands ran even though nothing was answered.
        checker.cmd_until(&format!("GET {tag}"), "$1\r\n2\r\n").await;
        assert_no_reply(client, &format!("{tag}: while CLIENT REPLY OFF")).await;
        // ON answers +OK, then replies resume.
        assert_eq!(client.cmd("CLIENT REPLY ON").await, "+OK\r\n", "{tag}");
        assert_eq!(client.cmd(&format!("GET {tag}")).await, "$1\r\n2\r\n", "{tag}");

        // SKIP: only the next command goes unanswered.
        // Two of the three commands produce no reply; read the one that does.
        let wire: Vec<u8> = [
            common::encode(&[b"CLIENT", b"REPLY", b"SKIP"]),
            common::encode(&[b"INCR", tag.as_bytes()]),
            common::encode(&[b"INCR", tag.as_bytes()]),
        ]
        .concat();
        client.send(&wire).await;
        assert_eq!(text(&client.read_reply().await), ":4\r\n", "{tag}: after SKIP");
        // Nothing else is owed: the next reply is PING's.
        assert_eq!(client.cmd("PING").await, "+PONG\r\n", "{tag}");
    }
}
