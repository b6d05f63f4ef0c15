//! AUTH both ways: the proxy authenticating to Redis with the credentials in
//! its upstream URL, and clients authenticating to the proxy.

mod common;

use std::time::{Duration, Instant};

use auracache::config::{Role, UserConfig};
use common::{Proxy, RawClient, RedisServer};
use sha2::{Digest, Sha256};

const NOAUTH: &str = "-NOAUTH Authentication required.\r\n";
const WRONGPASS: &str = "-WRONGPASS invalid username-password pair or user is disabled.\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_authenticates_to_redis_with_the_url_credentials() {
    let server = RedisServer::start_with(&["--requirepass", "s3cret"]);
    let port = server.port();

    // Password only (the default user).
    let proxy = Proxy::start(&format!("redis://:s3cret@127.0.0.1:{port}")).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET k v").await, "+OK\r\n");
    assert_eq!(client.cmd("GET k").await, "$1\r\nv\r\n");

    // An ACL user.
    let mut admin = RawClient::connect(server.addr()).await;
    assert_eq!(admin.cmd("AUTH s3cret").await, "+OK\r\n");
    assert_eq!(admin.cmd("ACL SETUSER alice on >pw ~* +@all").await, "+OK\r\n");
    let proxy = Proxy::start(&format!("redis://alice:pw@127.0.0.1:{port}/3")).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("SET k in3").await, "+OK\r\n");
    assert_eq!(client.cmd("ACL WHOAMI").await, "$5\r\nalice\r\n");
    assert_eq!(admin.cmd("SELECT 3").await, "+OK\r\n");
    assert_eq!(admin.cmd("GET k").await, "$3\r\nin3\r\n", "the URL's database is used");

    // Wrong credentials: a prompt error naming the reason, not a hang.
    let proxy = Proxy::start(&format!("redis://:wrong@127.0.0.1:{port}")).await;
    let mut client = proxy.raw().await;
    let started = Instant::now();
    let reply = client.cmd("GET k").await;
    assert!(reply.starts_with("-ERR upstream unavailable: "), "{reply:?}");
    assert!(reply.contains("WRONGPASS"), "the reason is Redis's: {reply:?}");
    assert!(started.elapsed() < Duration::from_secs(5));

    // No credentials configured: the proxy is transparent to Redis's own
    // authentication. The client sees Redis's NOAUTH and may AUTH itself
    // (which gives it its own upstream connection).
    let proxy = Proxy::start(&server.url()).await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("GET k").await, NOAUTH);
    assert_eq!(client.cmd("AUTH wrong").await, WRONGPASS);
    assert_eq!(client.cmd("AUTH s3cret").await, "+OK\r\n");
    assert_eq!(client.cmd("GET k").await, "$1\r\nv\r\n");
    assert_eq!(proxy.handle().stats().upstream_dedicated(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_must_authenticate_when_the_proxy_has_a_password() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), |config| config.auth.password = Some("pw".into())).await;
    let mut client = proxy.raw().await;

    // Redis with requirepass answers the same way before AUTH.
    let protected = RedisServer::start_with(&["--requirepass", "pw"]);
    let mut direct = RawClient::connect(protected.addr()).await;
    for line in ["GET k", "PING", "SELECT 1"] {
        assert_eq!(client.cmd(line).await, NOAUTH, "{line}");
        assert_eq!(direct.cmd(line).await, NOAUTH, "Redis: {line}");
    }
    assert_eq!(client.cmd("AUTH nope").await, WRONGPASS);
    assert_eq!(direct.cmd("AUTH nope").await, WRONGPASS);
    assert_eq!(client.cmd("AUTH default nope").await, WRONGPASS);
    assert_eq!(client.cmd("GET k").await, NOAUTH, "still not authenticated");
    assert_eq!(client.cmd("AUTH pw").await, "+OK\r\n");
    assert_eq!(client.cmd("SET k v").await, "+OK\r\n");
    assert_eq!(client.cmd("GET k").await, "$1\r\nv\r\n");

    // HELLO with AUTH authenticates and switches protocol in one step.
    let mut other = proxy.raw().await;
    let hello = other.cmd("HELLO 3 AUTH default pw").await;
    assert!(hello.starts_with('%'), "{hello}");
    assert_eq!(other.cmd("GET k").await, "$1\r\nv\r\n");
    let mut refused = proxy.raw().await;
    let reply = refused.cmd("HELLO 3 AUTH default nope").await;
    assert_eq!(reply, WRONGPASS);
    assert!(refused.cmd("HELLO 3").await.starts_with("-NOAUTH"));

    // The redis crate with the password in its URL.
    let url = format!("redis://:pw@{}", proxy.addr());
    let mut connection = common::connect(&url).await;
    let value: String = redis::cmd("GET").arg("k").query_async(&mut connection).await.unwrap();
    assert_eq!(value, "v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_users_authenticate_with_hashed_passwords() {
    let server = RedisServer::start();
    let hash = hex::encode(Sha256::digest(b"bobpw"));
    let proxy = Proxy::start_with(&server.url(), |config| {
        config.auth.users.push(UserConfig {
            name: "bob".into(),
            password_sha256: hash,
            role: Role::User,
        })
    })
    .await;
    let mut client = proxy.raw().await;
    assert_eq!(client.cmd("GET k").await, NOAUTH);
    assert_eq!(client.cmd("AUTH bob wrong").await, WRONGPASS);
    assert_eq!(client.cmd("AUTH alice bobpw").await, WRONGPASS);
    assert_eq!(client.cmd("AUTH bob bobpw").await, "+OK\r\n");
    assert_eq!(client.cmd("GET k").await, "$-1\r\n");

    let url = format!("redis://bob:bobpw@{}", proxy.addr());
    let mut connection = common::connect(&url).await;
    let pong: String = redis::cmd("PING").query_async(&mut connection).await.unwrap();
    assert_eq!(pong, "PONG");
}
