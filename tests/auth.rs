//! Authentication both ways: the proxy to Redis (credentials in the upstream
//! URL) and clients to the proxy (`[auth]`), compared with what Redis with
//! `requirepass` answers where it can be.

mod common;

use std::time::{Duration, Instant};

use auracache::config::{Role, UserConfig};
use common::{Proxy, RawClient, RedisServer, same_as_redis};
use sha2::{Digest, Sha256};

const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";
/// The start of Redis's answer to HELLO before authentication (the rest of
/// the sentence differs between Redis versions).
const NOAUTH_HELLO: &str = "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO ";
/// How soon a misconfigured upstream must be reported (connect timeout is 2 s).
const PROMPTLY: Duration = Duration::from_secs(5);

/// A proxy whose clients must `AUTH pw`, in front of a Redis without a password.
async fn proxy_with_password(server: &RedisServer) -> Proxy {
    Proxy::start_with(&server.url(), |config| config.auth.password = Some("pw".into())).await
}

/// A proxy with one hashed user, bob/bobpw, and no default password.
async fn proxy_with_bob(server: &RedisServer) -> Proxy {
    let hash = hex::encode(Sha256::digest(b"bobpw"));
    Proxy::start_with(&server.url(), |config| {
        config.auth.users.push(UserConfig {
            name: "bob".into(),
            password_sha256: hash,
            role: Role::User,
        })
    })
    .await
}

// ---------------------------------------------------------------------------
// The proxy authenticating to Redis
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_requirepass_from_the_url_serves_every_kind_of_connection() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let mut unauthenticated = RawClient::connect(server.addr()).await;
    assert_eq!(
        unauthenticated.cmd("GET k").await,
        NOAUTH,
        "Redis really wants a password"
    );

    let proxy = Proxy::start(&format!("redis://:s3cret@127.0.0.1:{}", server.port())).await;
    let mut client = proxy.raw().await;
    // Pooled RESP2 connections.
    assert_eq!(client.cmd("SET k v").await, "+OK\r\n");
    assert_eq!(client.cmd("GET k").await, "$1\r\nv\r\n");
    assert_eq!(client.cmd("ACL WHOAMI").await, "$7\r\ndefault\r\n");
    // The client's own connection (MULTI) authenticates too.
    assert_eq!(client.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(client.cmd("GET k").await, "+QUEUED\r\n");
    assert_eq!(client.cmd("EXEC").await, "*1\r\n$1\r\nv\r\n");
    // So do pooled RESP3 connections.
    let mut resp3 = proxy.raw().await;
    assert!(resp3.cmd("HELLO 3").await.contains("$5\r\nproto\r\n:3\r\n"));
    assert_eq!(resp3.cmd("GET k").await, "$1\r\nv\r\n");
    assert_eq!(resp3.cmd("GET missing").await, "_\r\n");
    // And a subscriber's connection.
    let mut subscriber = proxy.raw().await;
    assert_eq!(
        subscriber.cmd("SUBSCRIBE ch").await,
        "*3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n"
    );
    assert_eq!(client.cmd("PUBLISH ch hi").await, ":1\r\n");
    assert_eq!(
        subscriber.read_reply().await,
        b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$2\r\nhi\r\n"
    );

    // The redis crate through the proxy needs no password of its own.
    let mut connection = proxy.client().await;
    let value: String = redis::cmd("GET").arg("k").query_async(&mut connection).await.unwrap();
    assert_eq!(value, "v");
    assert_eq!(proxy.handle().stats().upstream_errors(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_acl_user_from_the_url() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let mut admin = RawClient::connect(server.addr()).await;
    assert_eq!(admin.cmd("AUTH s3cret").await, "+OK\r\n");
    assert_eq!(admin.cmd("ACL SETUSER alice on >pw ~* +@all").await, "+OK\r\n");

    let proxy = Proxy::start(&format!("redis://alice:pw@127.0.0.1:{}", server.port())).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET owner alice").await, "+OK\r\n");
    assert_eq!(client.cmd("GET owner").await, "$5\r\nalice\r\n");
    assert_eq!(client.cmd("ACL WHOAMI").await, "$5\r\nalice\r\n");
    assert_eq!(
        admin.cmd("GET owner").await,
        "$5\r\nalice\r\n",
        "written to Redis itself"
    );
    // Own connection and RESP3 connections log in as alice too.
    assert_eq!(client.cmd("WATCH owner").await, "+OK\r\n");
    assert_eq!(client.cmd("ACL WHOAMI").await, "$5\r\nalice\r\n");
    let mut resp3 = proxy.raw().await;
    assert!(resp3.cmd("HELLO 3").await.starts_with('%'));
    assert_eq!(resp3.cmd("ACL WHOAMI").await, "$5\r\nalice\r\n");

    // Redis's connections for the proxy are all alice's.
    let list = admin.cmd("CLIENT LIST").await;
    let proxy_lines: Vec<&str> = list.lines().filter(|line| line.contains(" user=alice ")).collect();
    assert!(proxy_lines.len() >= 3, "pooled RESP2, RESP3 and dedicated: {list}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_upstream_credentials_give_a_prompt_error_not_a_hang() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let mut admin = RawClient::connect(server.addr()).await;
    assert_eq!(admin.cmd("AUTH s3cret").await, "+OK\r\n");
    assert_eq!(admin.cmd("ACL SETUSER alice on >pw ~* +@all").await, "+OK\r\n");

    for url in [
        format!("redis://:wrong@127.0.0.1:{}", server.port()),
        format!("redis://alice:wrong@127.0.0.1:{}", server.port()),
        format!("redis://nobody:pw@127.0.0.1:{}", server.port()),
    ] {
        let proxy = Proxy::start(&url).await;
        let mut client = proxy.raw().await;
        for line in ["GET k", "SET k v", "MULTI", "SUBSCRIBE ch"] {
            let started = Instant::now();
            let reply = client.cmd(line).await;
            assert!(
                reply.starts_with("-ERR upstream unavailable: "),
                "{url} {line}: {reply:?}"
            );
            assert!(
                reply.contains("WRONGPASS"),
                "{url} {line}: Redis's reason is kept: {reply:?}"
            );
            assert!(
                started.elapsed() < PROMPTLY,
                "{url} {line}: took {:?}",
                started.elapsed()
            );
        }
        // The client is still there and told the same again.
        let reply = client.cmd("PING").await;
        assert!(reply.starts_with("-ERR upstream unavailable: "), "{reply:?}");
        assert!(proxy.handle().stats().upstream_errors() >= 1);
        assert_eq!(proxy.handle().stats().upstream_dedicated(), 0);
    }
    assert_eq!(admin.cmd("GET k").await, "$-1\r\n", "nothing was written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_proxy_auth_a_client_authenticates_to_redis_itself() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let proxy = Proxy::start(&server.url()).await;
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let replies = same_as_redis(
        &mut direct,
        &mut proxied,
        &["GET k", "AUTH wrong", "GET k", "AUTH s3cret", "SET k v", "GET k"],
    )
    .await;
    assert_eq!(replies[0], NOAUTH);
    assert_eq!(replies[1], WRONGPASS);
    assert_eq!(replies[5], "$1\r\nv\r\n");
}

/// What RESP3 clients (redis-py with protocol=3, ...) send to log in to
/// Redis: HELLO 3 AUTH. Through a proxy without its own `[auth]`, Redis must
/// see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_proxy_auth_hello_3_auth_reaches_redis() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let proxy = Proxy::start(&server.url()).await;
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    let hello = proxied.cmd("HELLO 3 AUTH default s3cret").await;
    assert!(hello.starts_with("%7\r\n"), "{hello:?}");
    assert!(direct.cmd("HELLO 3 AUTH default s3cret").await.starts_with("%7\r\n"));
    let replies = same_as_redis(&mut direct, &mut proxied, &["SET k v", "GET k", "GET missing"]).await;
    assert_eq!(replies[2], "_\r\n");
}

// ---------------------------------------------------------------------------
// Clients authenticating to the proxy
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_password_refuses_commands_until_auth_like_redis() {
    let server = RedisServer::start();
    let proxy = proxy_with_password(&server).await;
    let mut proxied = proxy.raw().await;
    // Redis protecting itself the same way, for comparison.
    let protected = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut direct = RawClient::connect(protected.addr()).await;

    // Before AUTH everything is refused with exactly Redis's words, PING
    // included (it is not one of the commands allowed before AUTH).
    let replies = same_as_redis(
        &mut direct,
        &mut proxied,
        &[
            "GET k",
            "PING",
            "SET k v",
            "SELECT 1",
            "MULTI",
            "SUBSCRIBE ch",
            "CLIENT ID",
        ],
    )
    .await;
    assert!(replies.iter().all(|reply| reply == NOAUTH), "{replies:?}");
    assert_eq!(proxy.handle().stats().upstream_dedicated(), 0, "nothing reached Redis");

    // A wrong password is WRONGPASS, and still nothing else works.
    let replies = same_as_redis(
        &mut direct,
        &mut proxied,
        &["AUTH nope", "AUTH default nope", "GET k", "AUTH"],
    )
    .await;
    assert_eq!(replies[0], WRONGPASS);
    assert_eq!(replies[1], WRONGPASS);
    assert_eq!(replies[2], NOAUTH);
    assert_eq!(replies[3], "-ERR wrong number of arguments for 'auth' command\r\n");

    // The right one lets commands through.
    assert_eq!(proxied.cmd("AUTH pw").await, "+OK\r\n");
    assert_eq!(proxied.cmd("SET k v").await, "+OK\r\n");
    assert_eq!(proxied.cmd("GET k").await, "$1\r\nv\r\n");
    assert_eq!(proxied.cmd("PING").await, "+PONG\r\n");
    let mut behind = RawClient::connect(server.addr()).await;
    assert_eq!(
        behind.cmd("GET k").await,
        "$1\r\nv\r\n",
        "reached the Redis behind the proxy"
    );

    // A later wrong AUTH is refused but does not log the client out (Redis
    // does the same).
    assert_eq!(direct.cmd("AUTH pw").await, "+OK\r\n");
    let replies = same_as_redis(&mut direct, &mut proxied, &["AUTH nope", "PING", "AUTH default pw"]).await;
    assert_eq!(replies, [WRONGPASS, "+PONG\r\n", "+OK\r\n"]);

    // Authentication belongs to the connection: a new client starts over.
    let mut other = proxy.raw().await;
    assert_eq!(other.cmd("GET k").await, NOAUTH);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_pipelined_with_commands_applies_in_order() {
    let server = RedisServer::start();
    let proxy = proxy_with_password(&server).await;
    let mut client = proxy.raw().await;
    let wire = [
        common::encode(&[b"SET", b"k", b"early"]),
        common::encode(&[b"AUTH", b"pw"]),
        common::encode(&[b"SET", b"k", b"late"]),
        common::encode(&[b"GET", b"k"]),
    ]
    .concat();
    client.send(&wire).await;
    for expected in [NOAUTH, "+OK\r\n", "+OK\r\n", "$4\r\nlate\r\n"] {
        assert_eq!(String::from_utf8(client.read_reply().await).unwrap(), expected);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quit_before_auth_answers_ok_and_closes_like_redis() {
    let server = RedisServer::start();
    let proxy = proxy_with_password(&server).await;
    let protected = RedisServer::start_with(&["--requirepass", "pw"]);
    for (mut client, label) in [
        (proxy.raw().await, "proxy"),
        (RawClient::connect(protected.addr()).await, "Redis"),
    ] {
        client.send_command(&[b"QUIT"]).await;
        assert_eq!(client.read_until_closed().await, b"+OK\r\n", "{label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_3_with_auth_logs_in_and_switches_protocol_in_one_step() {
    let server = RedisServer::start();
    let proxy = proxy_with_password(&server).await;
    let protected = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut seed = RawClient::connect(server.addr()).await;
    assert_eq!(seed.cmd("HSET h f v").await, ":1\r\n");
    assert_eq!(seed.cmd("ZADD z 0.5 m").await, ":1\r\n");

    // Before authenticating, HELLO alone is refused (Redis words the rest of
    // the sentence differently between versions, so the start is compared).
    let mut client = proxy.raw().await;
    let mut direct = RawClient::connect(protected.addr()).await;
    let from_proxy = client.cmd("HELLO 3").await;
    assert!(from_proxy.starts_with(NOAUTH_HELLO), "{from_proxy:?}");
    assert!(direct.cmd("HELLO 3").await.starts_with(NOAUTH_HELLO));
    // Wrong credentials: WRONGPASS, still RESP2 and unauthenticated.
    let replies = same_as_redis(
        &mut direct,
        &mut client,
        &["HELLO 3 AUTH default nope", "GET k", "HELLO 3 AUTH nobody pw"],
    )
    .await;
    assert_eq!(replies, [WRONGPASS, NOAUTH, WRONGPASS]);

    // The right credentials: Redis's HELLO map, RESP3 from then on.
    let hello = client.cmd("HELLO 3 AUTH default pw").await;
    assert!(hello.starts_with("%7\r\n"), "{hello:?}");
    for field in [
        "$6\r\nserver\r\n$5\r\nredis\r\n",
        "$5\r\nproto\r\n:3\r\n",
        "$7\r\nversion\r\n",
    ] {
        assert!(hello.contains(field), "{hello:?} lacks {field:?}");
    }
    assert_eq!(client.cmd("HGETALL h").await, "%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(client.cmd("ZSCORE z m").await, ",0.5\r\n");
    assert_eq!(client.cmd("GET missing").await, "_\r\n");
    // HELLO again needs no AUTH now, and goes back to RESP2.
    assert!(client.cmd("HELLO 2").await.starts_with("*14\r\n"));
    assert_eq!(client.cmd("GET missing").await, "$-1\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hashed_users_authenticate_by_name() {
    let server = RedisServer::start();
    let proxy = proxy_with_bob(&server).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("GET k").await, NOAUTH);
    assert_eq!(client.cmd("PING").await, NOAUTH);
    assert_eq!(client.cmd("AUTH bob wrong").await, WRONGPASS);
    assert_eq!(
        client.cmd("AUTH bob BOBPW").await,
        WRONGPASS,
        "passwords are case-sensitive"
    );
    assert_eq!(client.cmd("AUTH BOB bobpw").await, WRONGPASS, "so are user names");
    assert_eq!(client.cmd("AUTH carol bobpw").await, WRONGPASS, "unknown user");
    assert_eq!(client.cmd("AUTH bobpw").await, WRONGPASS, "no default password is set");
    assert_eq!(client.cmd("AUTH default bobpw").await, WRONGPASS);
    assert_eq!(client.cmd("GET k").await, NOAUTH);
    assert_eq!(client.cmd("AUTH bob bobpw").await, "+OK\r\n");
    assert_eq!(client.cmd("SET k bob").await, "+OK\r\n");
    assert_eq!(client.cmd("GET k").await, "$3\r\nbob\r\n");

    // HELLO 3 AUTH with the named user.
    let mut resp3 = proxy.raw().await;
    assert_eq!(resp3.cmd("HELLO 3 AUTH bob wrong").await, WRONGPASS);
    assert!(resp3.cmd("HELLO 3 AUTH bob bobpw").await.starts_with("%7\r\n"));
    assert_eq!(resp3.cmd("GET missing").await, "_\r\n");

    // The redis crate with user and password in the URL.
    let mut connection = common::connect(&format!("redis://bob:bobpw@{}", proxy.addr())).await;
    let value: String = redis::cmd("GET").arg("k").query_async(&mut connection).await.unwrap();
    assert_eq!(value, "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_crate_with_the_password_in_its_url() {
    let server = RedisServer::start();
    let proxy = proxy_with_password(&server).await;

    let mut connection = common::connect(&format!("redis://:pw@{}", proxy.addr())).await;
    let _: () = redis::cmd("SET")
        .arg("crate")
        .arg("ok")
        .query_async(&mut connection)
        .await
        .unwrap();
    let value: String = redis::cmd("GET")
        .arg("crate")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value, "ok");
    let counted: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("counter", 2)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(counted, Some((2,)));
    // The same with the explicit default user, and in RESP3.
    let mut connection = common::connect(&format!("redis://default:pw@{}/0?protocol=resp3", proxy.addr())).await;
    let value: String = redis::cmd("GET")
        .arg("crate")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value, "ok");

    // No password or a wrong one: the crate gets Redis's errors.
    let mut connection = proxy.client().await;
    let error = redis::cmd("GET")
        .arg("crate")
        .query_async::<Option<String>>(&mut connection)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("NOAUTH"), "{error}");
    // A wrong password fails the connection as Redis's own WRONGPASS does.
    let protected = RedisServer::start_with(&["--requirepass", "pw"]);
    for addr in [proxy.addr(), protected.addr()] {
        let client = redis::Client::open(format!("redis://:wrong@{addr}")).unwrap();
        let attempt = tokio::time::timeout(common::DEADLINE, client.get_multiplexed_async_connection())
            .await
            .expect("refused promptly, not hung");
        let error = attempt.expect_err("a wrong password must not connect");
        assert_eq!(error.kind(), redis::ErrorKind::AuthenticationFailed, "{addr}: {error}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_password_and_upstream_password_are_separate() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let proxy = Proxy::start_with(&format!("redis://:s3cret@127.0.0.1:{}", server.port()), |config| {
        config.auth.password = Some("pw".into())
    })
    .await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("GET k").await, NOAUTH);
    assert_eq!(
        client.cmd("AUTH s3cret").await,
        WRONGPASS,
        "Redis's password is not the proxy's"
    );
    assert_eq!(client.cmd("AUTH pw").await, "+OK\r\n");
    assert_eq!(client.cmd("SET k v").await, "+OK\r\n");
    assert_eq!(client.cmd("ACL WHOAMI").await, "$7\r\ndefault\r\n");
    // The client's own connection uses the URL's credentials, not the client's.
    assert_eq!(client.cmd("MULTI").await, "+OK\r\n");
    assert_eq!(client.cmd("GET k").await, "+QUEUED\r\n");
    assert_eq!(client.cmd("EXEC").await, "*1\r\n$1\r\nv\r\n");
}

// ---------------------------------------------------------------------------
// Corners where the proxy answers for Redis
// ---------------------------------------------------------------------------

/// `AUTH` with too many arguments: Redis says syntax error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_with_too_many_arguments_errors_like_redis() {
    let server = RedisServer::start();
    let proxy = proxy_with_password(&server).await;
    let protected = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(protected.addr()).await;
    same_as_redis(&mut direct, &mut proxied, &["AUTH a b c", "GET k"]).await;
}

/// `HELLO 4 AUTH default pw`: Redis refuses the version before looking at
/// the credentials, so the client is not logged in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_with_an_unsupported_version_does_not_log_in() {
    let server = RedisServer::start();
    let proxy = proxy_with_password(&server).await;
    let protected = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(protected.addr()).await;
    let replies = same_as_redis(&mut direct, &mut proxied, &["HELLO 4 AUTH default pw", "GET k"]).await;
    assert_eq!(replies, ["-NOPROTO unsupported protocol version\r\n", NOAUTH]);
}

/// RESET is allowed before AUTH and, when the default user needs a
/// password, logs the client out (Redis's `clientSetDefaultAuth`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_logs_the_client_out_like_redis() {
    let server = RedisServer::start();
    let proxy = proxy_with_password(&server).await;
    let protected = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(protected.addr()).await;
    let replies = same_as_redis(
        &mut direct,
        &mut proxied,
        &["RESET", "AUTH pw", "GET k", "RESET", "GET k"],
    )
    .await;
    assert_eq!(replies, ["+RESET\r\n", "+OK\r\n", "$-1\r\n", "+RESET\r\n", NOAUTH]);
}

/// A HELLO whose AUTH Redis refuses changes nothing, protocol included.
/// Here the proxy does not authenticate clients and logs in to Redis with
/// the URL's credentials, so the client's HELLO ... AUTH goes to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_refused_for_its_credentials_keeps_the_protocol() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let proxy = Proxy::start(&format!("redis://:s3cret@127.0.0.1:{}", server.port())).await;
    let mut proxied = proxy.raw().await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert_eq!(direct.cmd("AUTH s3cret").await, "+OK\r\n");
    let replies = same_as_redis(
        &mut direct,
        &mut proxied,
        &["HELLO 3 AUTH default wrong", "GET missing"],
    )
    .await;
    assert_eq!(replies, [WRONGPASS, "$-1\r\n"]);
}
