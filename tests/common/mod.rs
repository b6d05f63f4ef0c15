//! Test harness: real `redis-server` processes on free ports, the proxy
//! started in-process in front of them, a raw RESP client that sees exact
//! bytes, and polling with a deadline instead of sleeping.

#![allow(dead_code)]

pub mod cluster;
pub mod preload;
pub mod values;

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use auracache::config::Config;
use auracache::protocol::{ReplyLimits, ReplyScanner};
use auracache::{Server, ServerHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single wait in a test may take before it fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

const INSTALL_HINT: &str = "redis-server is not installed: run scripts/test.sh (it installs it), \
     or `apt-get install -y redis-server redis-tools`";

/// A throwaway `redis-server` on a free loopback port; killed on drop.
pub struct RedisServer {
    port: u16,
    /// Listens with TLS only (`--port 0 --tls-port <port>`).
    tls: bool,
    extra: Vec<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments, e.g. `["--requirepass", "x"]`.
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_on_with(free_port(), extra)
    }

    /// Starts on a given port (one a test chose before Redis existed).
    pub fn start_on(port: u16) -> RedisServer {
        RedisServer::start_on_with(port, &[])
    }

    /// Starts speaking TLS only on its port, as Redis with `port 0` and
    /// `tls-port`; `extra` names the files (`--tls-cert-file`, ...).
    pub fn start_tls(extra: &[&str]) -> RedisServer {
        let mut server = RedisServer::new(free_port(), extra);
        server.tls = true;
        server.spawn();
        server
    }

    fn start_on_with(port: u16, extra: &[&str]) -> RedisServer {
        let mut server = RedisServer::new(port, extra);
        server.spawn();
        server
    }

    fn new(port: u16, extra: &[&str]) -> RedisServer {
        RedisServer {
            port,
            tls: false,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            dir: tempfile::tempdir().expect("temporary directory"),
            child: None,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (SIGKILL) and waits until its port refuses connections.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        poll_until("redis-server to stop", || {
            std::net::TcpStream::connect(self.addr()).is_err()
        });
    }

    /// Starts the server again on the same port.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    fn spawn(&mut self) {
        let mut command = Command::new("redis-server");
        let port = self.port.to_string();
        if self.tls {
            command.args(["--port", "0", "--tls-port", &port]);
        } else {
            command.args(["--port", &port]);
        }
        command
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = match command.spawn() {
            Ok(child) => child,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => panic!("{INSTALL_HINT}"),
            Err(error) => panic!("cannot start redis-server: {error}"),
        };
        self.child = Some(child);
        let port = self.port;
        if self.tls {
            // Plain text gets no answer from a TLS port: listening is enough
            // (Redis opens its port once it is ready to serve).
            poll_until("redis-server to listen", || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            return;
        }
        poll_until("redis-server to answer PING", || {
            let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            use std::io::{Read, Write};
            let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
            if stream.write_all(b"PING\r\n").is_err() {
                return false;
            }
            let mut buf = [0u8; 64];
            // Either +PONG or -NOAUTH means the server is up.
            matches!(stream.read(&mut buf), Ok(n) if n > 0)
        });
    }

    /// A `redis` crate client straight to this server.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        connect(&self.url()).await
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("free port")
        .port()
}

/// The proxy, in-process, in front of `upstream`.
pub struct Proxy {
    handle: Option<ServerHandle>,
    addr: SocketAddr,
}

/// L1 on, filling on the first miss and bounded by bytes only, so a test
/// sees a hit on its second read (the defaults are exercised by tests of
/// admission and namespaces).
pub fn l1_eager(config: &mut Config) {
    config.memory_cache.enabled = true;
    config.memory_cache.fill_on_first_miss = true;
    config.memory_cache.size_per_namespace = 0;
}

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        Proxy::start_with(upstream, |_| {}).await
    }

    /// Starts with the configuration adjusted by `tweak`.
    pub async fn start_with(upstream: &str, tweak: impl FnOnce(&mut Config)) -> Proxy {
        Proxy::start_with_clock(upstream, std::sync::Arc::new(auracache::clock::SystemClock), tweak).await
    }

    /// Starts with L1's time read from `clock` (a ManualClock moves it).
    pub async fn start_with_clock(
        upstream: &str,
        clock: std::sync::Arc<dyn auracache::clock::Clock>,
        tweak: impl FnOnce(&mut Config),
    ) -> Proxy {
        let mut config = Config {
            listen: "127.0.0.1:0".into(),
            upstream: upstream.into(),
            ..Config::default()
        };
        config.pool.max_backoff_ms = 100;
        // The HTTP admin is off unless a test turns it on (on port 0).
        config.admin.listen = String::new();
        tweak(&mut config);
        let handle = Server::start_with_clock(config, clock).await.expect("proxy starts");
        let addr = handle.local_addr();
        Proxy {
            handle: Some(handle),
            addr,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    pub fn handle(&self) -> &ServerHandle {
        self.handle.as_ref().expect("running")
    }

    /// A `redis` crate client through the proxy.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        connect(&self.url()).await
    }

    pub async fn raw(&self) -> RawClient {
        RawClient::connect(self.addr).await
    }

    pub async fn shutdown(mut self) {
        if let Some(handle) = self.handle.take() {
            handle.shutdown().await;
        }
    }
}

pub async fn connect(url: &str) -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(url).expect("valid url");
    tokio::time::timeout(DEADLINE, client.get_multiplexed_async_connection())
        .await
        .expect("connect within the deadline")
        .expect("connect")
}

/// A client that writes raw bytes and reads whole replies as exact bytes,
/// over TCP or any other stream (TLS in `tests/tls.rs`).
pub struct RawClient<S = TcpStream> {
    stream: S,
    buffer: Vec<u8>,
    scanner: ReplyScanner,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> RawClient {
        let stream = tokio::time::timeout(DEADLINE, TcpStream::connect(addr))
            .await
            .expect("connect within the deadline")
            .expect("connect");
        stream.set_nodelay(true).ok();
        RawClient::over(stream)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> RawClient<S> {
    /// A client on an established stream.
    pub fn over(stream: S) -> RawClient<S> {
        RawClient {
            stream,
            buffer: Vec::new(),
            scanner: ReplyScanner::new(ReplyLimits {
                max_nesting_depth: 10_000,
                max_bulk_bytes: usize::MAX,
            }),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
        // Nothing for TCP; TLS holds data back until flushed.
        self.stream.flush().await.expect("flush");
    }

    /// Sends one command as a RESP array.
    pub async fn send_command(&mut self, args: &[&[u8]]) {
        self.send(&encode(args)).await;
    }

    /// Reads exactly one reply (push frames included) and returns its bytes.
    pub async fn read_reply(&mut self) -> Vec<u8> {
        match tokio::time::timeout(DEADLINE, self.next_reply()).await {
            Ok(Some(reply)) => reply,
            Ok(None) => panic!(
                "connection closed while waiting for a reply; had {:?}",
                String::from_utf8_lossy(&self.buffer)
            ),
            Err(_) => panic!(
                "no reply within {DEADLINE:?}; had {:?}",
                String::from_utf8_lossy(&self.buffer)
            ),
        }
    }

    /// One reply, or None if the connection closed first.
    pub async fn next_reply(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(frame) = self.scanner.scan(&self.buffer).expect("well-formed reply") {
                let reply: Vec<u8> = self.buffer.drain(..frame.len).collect();
                self.scanner = ReplyScanner::new(ReplyLimits {
                    max_nesting_depth: 10_000,
                    max_bulk_bytes: usize::MAX,
                });
                return Some(reply);
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    pub async fn command(&mut self, args: &[&[u8]]) -> Vec<u8> {
        self.send_command(args).await;
        self.read_reply().await
    }

    /// Convenience: a command from whitespace-separated words.
    pub async fn cmd(&mut self, line: &str) -> String {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        String::from_utf8_lossy(&self.command(&args).await).into_owned()
    }

    /// Like [`RawClient::cmd`], but None if the connection fails or closes
    /// before the reply.
    pub async fn try_cmd(&mut self, line: &str) -> Option<String> {
        let args: Vec<&[u8]> = line.split_whitespace().map(str::as_bytes).collect();
        self.stream.write_all(&encode(&args)).await.ok()?;
        self.stream.flush().await.ok()?;
        let reply = self.next_reply().await?;
        Some(String::from_utf8_lossy(&reply).into_owned())
    }

    /// Repeats `line` until the reply is `expected`, failing after [`DEADLINE`].
    pub async fn cmd_until(&mut self, line: &str, expected: &str) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < DEADLINE {
            last = self.cmd(line).await;
            if last == expected {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{line:?} still answered {last:?} after {DEADLINE:?}, expected {expected:?}");
    }

    /// Repeats `line` until the reply contains `needle`, failing after [`DEADLINE`].
    pub async fn cmd_until_contains(&mut self, line: &str, needle: &str) {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < DEADLINE {
            last = self.cmd(line).await;
            if last.contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("{line:?} still answered {last:?} after {DEADLINE:?}, expected it to contain {needle:?}");
    }

    /// Waits until the server closes the connection; returns what it sent
    /// before closing.
    pub async fn read_until_closed(&mut self) -> Vec<u8> {
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match tokio::time::timeout(DEADLINE, self.stream.read(&mut chunk)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return std::mem::take(&mut self.buffer),
                Ok(Ok(n)) => self.buffer.extend_from_slice(&chunk[..n]),
                Err(_) => panic!(
                    "connection still open after {DEADLINE:?}; had {:?}",
                    String::from_utf8_lossy(&self.buffer)
                ),
            }
        }
    }
}

/// Sends each line to Redis directly and through the proxy, one at a time,
/// and requires byte-identical replies; returns them.
pub async fn same_as_redis(direct: &mut RawClient, proxied: &mut RawClient, lines: &[&str]) -> Vec<String> {
    let mut replies = Vec::new();
    for line in lines {
        let from_redis = direct.cmd(line).await;
        let from_proxy = proxied.cmd(line).await;
        assert_eq!(from_proxy, from_redis, "{line:?} (left: proxy, right: Redis)");
        replies.push(from_proxy);
    }
    replies
}

/// Encodes a command as a RESP array of bulk strings.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Polls `check` until it holds, failing the test after [`DEADLINE`].
pub fn poll_until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    while !check() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Async form of [`poll_until`].
pub async fn poll_until_async<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    while !check().await {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Path of the built `auracache` binary (for tests that run it as a process).
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_auracache"))
}

/// A 32-byte seed for proptest's ChaCha generator from a number, so a
/// random-sequence test runs the same cases every time.
pub fn seed_bytes(seed: u64) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    for chunk in bytes.chunks_mut(8) {
        chunk.copy_from_slice(&seed.to_le_bytes());
    }
    bytes
}

/// How many times Redis has run `command` (lower case), from its own
/// `INFO commandstats`: what reached Redis, whatever the proxy answered.
pub async fn redis_calls(direct: &mut RawClient, command: &str) -> u64 {
    let info = direct.cmd("INFO commandstats").await;
    info.lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|calls| calls.parse().ok())
        .unwrap_or(0)
}

/// L1 hits so far.
pub fn l1_hits(proxy: &Proxy) -> u64 {
    proxy
        .handle()
        .l1()
        .expect("L1 on")
        .store
        .stats()
        .hits
        .load(std::sync::atomic::Ordering::Relaxed)
}

/// Reads `key` until L1 answers it, and returns the value. Redis's own
/// invalidation of the write that made the value may arrive after the
/// first fill and drop it (as it should); the next fill then stays.
pub async fn read_until_cached<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    proxy: &Proxy,
    client: &mut RawClient<S>,
    key: &str,
) -> String {
    cmd_until_cached(proxy, client, &format!("GET {key}")).await
}

/// [`read_until_cached`] for any read L1 answers (`HGET h f`, `HGETALL h`):
/// repeats `line` until L1 answers it, and returns the reply.
pub async fn cmd_until_cached<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    proxy: &Proxy,
    client: &mut RawClient<S>,
    line: &str,
) -> String {
    let started = Instant::now();
    loop {
        let value = client.cmd(line).await;
        let before = l1_hits(proxy);
        assert_eq!(client.cmd(line).await, value);
        if l1_hits(proxy) > before {
            return value;
        }
        assert!(started.elapsed() < DEADLINE, "{line:?} never became an L1 hit");
    }
}

/// Waits until Redis's invalidation messages for every write made so far
/// have been applied: a sentinel key is cached, changed straight on Redis,
/// and read until the change shows. Redis sends its messages in order on
/// the one tracking connection, so the earlier ones are applied too (a
/// late one would otherwise drop a fill a test counts on).
pub async fn settle(proxy: &Proxy, client: &mut RawClient, direct: &mut RawClient) {
    settle_on(proxy, client, direct, "settle:sentinel").await;
}

/// [`settle`] with a sentinel of the caller's choosing (one L1 caches and
/// Redis tracks).
pub async fn settle_on(proxy: &Proxy, client: &mut RawClient, direct: &mut RawClient, sentinel: &str) {
    assert_eq!(direct.cmd(&format!("SET {sentinel} before")).await, "+OK\r\n");
    read_until_cached(proxy, client, sentinel).await;
    assert_eq!(direct.cmd(&format!("SET {sentinel} after")).await, "+OK\r\n");
    client.cmd_until(&format!("GET {sentinel}"), "$5\r\nafter\r\n").await;
}

/// `GET path` over HTTP/1.1 (the HTTP admin): the status code, the
/// headers and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_get_with(addr, path, "").await
}

/// [`http_get`] with extra header lines (each ending in CRLF).
pub async fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).await.expect("the admin listener accepts");
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).await.expect("request sent");
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.expect("response read");
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").expect("headers, then a body");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .expect("a status line");
    (status, head.to_string(), body.to_string())
}
