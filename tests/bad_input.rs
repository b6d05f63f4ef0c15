//! Bad input (issue #10), each case sent to Redis itself and through the
//! proxy: lengths of 2^63 and beyond, a 1 GB bulk announced, arrays nested
//! 10,000 deep, binary junk, an inline line longer than the limit, and a
//! slow client sending one byte at a time, every truncation of a pipeline,
//! and clients that never read their replies. Each gets Redis's own error
//! (or is served, as Redis serves it) on that connection only, while a
//! bystander's pipelines keep being answered correctly throughout.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Proxy, RawClient, RedisServer, encode};

/// A client sending pipelines of SET/GET through the proxy until told to
/// stop, checking every reply; how many requests it got answered.
fn bystander(
    proxy: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut client = RawClient::connect(proxy).await;
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let value = format!("v{round}");
            let mut pipeline = encode(&[b"SET", b"bystander", value.as_bytes()]);
            pipeline.extend(encode(&[b"GET", b"bystander"]));
            client.send(&pipeline).await;
            assert_eq!(client.read_reply().await, b"+OK\r\n");
            assert_eq!(
                client.read_reply().await,
                format!("${}\r\n{value}\r\n", value.len()).into_bytes()
            );
            answered.fetch_add(2, Ordering::Relaxed);
            round += 1;
        }
    })
}

/// What Redis and the proxy each send back for `input` before closing
/// (or within a second, for a connection either keeps open).
async fn both_answer(server: &RedisServer, proxy: &Proxy, input: &[u8]) -> (String, String) {
    let mut replies = Vec::new();
    for addr in [server.addr(), proxy.addr()] {
        let mut client = RawClient::connect(addr).await;
        client.send(input).await;
        let sent = tokio::time::timeout(Duration::from_secs(1), client.read_until_closed())
            .await
            .unwrap_or_default();
        replies.push(String::from_utf8_lossy(&sent).into_owned());
    }
    let proxy_reply = replies.pop().unwrap();
    (replies.pop().unwrap(), proxy_reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_redis_errors_on_its_connection_only() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let (stop, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let bystanding = bystander(proxy.addr(), stop.clone(), answered.clone());

    let nested: Vec<u8> = b"*1\r\n".repeat(10_000);
    let mut junk = Vec::new();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for _ in 0..4096 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        junk.push(state as u8);
    }
    // Junk that starts like a request, so both read it as one.
    junk[0] = b'*';
    let cases: [(&str, &[u8]); 7] = [
        ("multibulk count of 2^63", b"*9223372036854775808\r\n"),
        ("multibulk count of 2^63 - 1", b"*9223372036854775807\r\n"),
        (
            "bulk length of 2^63 - 1",
            b"*2\r\n$3\r\nGET\r\n$9223372036854775807\r\n",
        ),
        ("bulk length of 2^64", b"*2\r\n$3\r\nGET\r\n$18446744073709551616\r\n"),
        ("negative bulk length", b"*2\r\n$3\r\nGET\r\n$-5\r\n"),
        (
            "a 1 GB bulk announced",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1073741824\r\n",
        ),
        ("arrays nested 10,000 deep", &nested),
    ];
    for (what, input) in cases {
        let (from_redis, from_proxy) = both_answer(&server, &proxy, input).await;
        assert!(
            from_proxy.starts_with("-ERR Protocol error: "),
            "{what}: {from_proxy:?}"
        );
        assert_eq!(from_proxy, from_redis, "{what}: Redis's own error");
    }
    let (from_redis, from_proxy) = both_answer(&server, &proxy, &junk).await;
    assert!(from_proxy.starts_with("-ERR Protocol error"), "junk: {from_proxy:?}");
    assert_eq!(from_proxy, from_redis, "junk: Redis's own error");
    // An inline line past the limit (64 KB) with no end in sight.
    let mut long = RawClient::connect(proxy.addr()).await;
    long.send(&vec![b'A'; 70_000]).await;
    assert_eq!(
        String::from_utf8_lossy(&long.read_until_closed().await),
        "-ERR Protocol error: too big inline request\r\n"
    );

    stop.store(true, Ordering::Relaxed);
    bystanding
        .await
        .expect("the bystander was answered correctly throughout");
    let seconds = started.elapsed().as_secs_f64();
    let count = answered.load(Ordering::Relaxed);
    println!(
        "bystander: {count} requests answered in {seconds:.2} s ({:.0}/s)",
        count as f64 / seconds
    );
    assert!(count > 0);
    assert!(proxy.handle().stats().protocol_errors() >= 9);
}

/// A client that sends a command one byte at a time (slowloris) is served
/// when it completes, as Redis serves it, and holds up no one meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_sending_a_byte_at_a_time_is_served_and_holds_up_no_one() {
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let (stop, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let bystanding = bystander(proxy.addr(), stop.clone(), answered.clone());
    let mut slow = RawClient::connect(proxy.addr()).await;
    let command = encode(&[b"SET", b"slow", b"finally"]);
    let mut answered_meanwhile = Vec::new();
    for byte in &command {
        slow.send(std::slice::from_ref(byte)).await;
        // Whatever the slow client has sent so far, the bystander goes on.
        let before = answered.load(Ordering::Relaxed);
        common::poll_until_async("the bystander answered meanwhile", || {
            let answered = answered.clone();
            async move { answered.load(Ordering::Relaxed) > before }
        })
        .await;
        answered_meanwhile.push(answered.load(Ordering::Relaxed) - before);
    }
    assert_eq!(slow.read_reply().await, b"+OK\r\n");
    assert_eq!(slow.cmd("GET slow").await, "$7\r\nfinally\r\n");
    stop.store(true, Ordering::Relaxed);
    bystanding
        .await
        .expect("the bystander was answered correctly throughout");
    assert_eq!(answered_meanwhile.len(), command.len());
}

/// The proxy's resident memory, from /proc.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the proxy's /proc status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status");
    kib * 1024
}

/// Kills the proxy process when the test ends, however it ends.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A client that sends `count` copies of `command` and reads nothing, with
/// a small receive buffer so that little of what it is owed fits in the
/// kernel. Returns the socket's reading half once everything is sent (or
/// the proxy stopped taking it).
async fn never_reads(proxy: std::net::SocketAddr, command: Vec<u8>, count: usize) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(proxy).await.expect("connect to the proxy");
    let pipeline = command.repeat(100);
    for _ in 0..count / 100 {
        use tokio::io::AsyncWriteExt;
        // Once cut off, the writes fail (or block until the close is seen).
        match tokio::time::timeout(Duration::from_secs(2), stream.write_all(&pipeline)).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    stream
}

/// A client that never reads its replies is cut off once the proxy holds
/// `limits.max_output_bytes` of them (both replies forwarded from Redis and
/// L1's own), as Redis cuts off a client over its output-buffer limit; the
/// proxy's memory stays bounded meanwhile, and a bystander is answered
/// throughout. Each flooder asks for 300 MB of replies: without the limit
/// the proxy would hold them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_cut_off_at_the_output_limit() {
    let server = RedisServer::start();
    let mut direct = RawClient::connect(server.addr()).await;
    let big: Vec<u8> = (0..100_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    assert_eq!(direct.command(&[b"SET", b"big", &big]).await, b"+OK\r\n");

    let port = common::free_port();
    let limit = 1024 * 1024;
    let child = std::process::Command::new(common::binary())
        .args(["--listen", &format!("127.0.0.1:{port}"), "--upstream", &server.url()])
        .env("AURACACHE_ADMIN_LISTEN", "")
        .env("AURACACHE_MAX_OUTPUT_BYTES", limit.to_string())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start auracache");
    let proxy = Running(child);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    common::poll_until("the proxy to listen", || std::net::TcpStream::connect(addr).is_ok());
    let mut admin = RawClient::connect(addr).await;
    // L1 is on: after its first read, `big` is answered from L1.
    admin.cmd_until("EXISTS big", ":1\r\n").await;
    assert_eq!(admin.command(&[b"GET", b"big"]).await.len(), big.len() + 11);
    let deadline = Instant::now() + common::DEADLINE;
    while common::values::info_field(&admin.cmd("INFO cache").await, "l1_answered") == "0" {
        assert!(Instant::now() < deadline, "big never became an L1 hit");
        assert_eq!(admin.command(&[b"GET", b"big"]).await.len(), big.len() + 11);
    }

    let (stop, answered) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)));
    let bystanding = bystander(addr, stop.clone(), answered.clone());
    let rss_before = rss_bytes(proxy.0.id());
    let mut rss_most = rss_before;
    let floods: [(&str, Vec<u8>); 2] = [
        (
            "forwarded replies (GETRANGE)",
            encode(&[b"GETRANGE", b"big", b"0", b"-1"]),
        ),
        ("L1's replies (GET)", encode(&[b"GET", b"big"])),
    ];
    for (round, (what, command)) in floods.iter().enumerate() {
        let flooding = tokio::spawn(never_reads(addr, command.clone(), 3000));
        let before = answered.load(Ordering::Relaxed);
        let cut_off = (round + 1).to_string();
        let deadline = Instant::now() + common::DEADLINE;
        loop {
            rss_most = rss_most.max(rss_bytes(proxy.0.id()));
            let info = admin.cmd("INFO cache").await;
            if common::values::info_field(&info, "output_limit_disconnects") == cut_off {
                break;
            }
            assert!(Instant::now() < deadline, "{what}: the flooder was not cut off: {info}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut flooder = flooding.await.unwrap();
        // What the flooder is shown before the close is a prefix of what it
        // asked for (maybe nothing: like Redis, the proxy drops what the
        // client is owed), and then the connection ends.
        let mut seen = Vec::new();
        use tokio::io::AsyncReadExt;
        let ended = tokio::time::timeout(common::DEADLINE, async {
            loop {
                let mut chunk = vec![0; 1 << 16];
                match flooder.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(read) => seen.extend_from_slice(&chunk[..read]),
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "{what}: the flooder's connection was closed");
        let reply = format!("${}\r\n", big.len()).into_bytes();
        assert!(
            seen.len() < 3000 * big.len() / 2,
            "{what}: most of the replies were dropped"
        );
        assert!(
            seen.is_empty() || seen.starts_with(&reply),
            "{what}: replies in order until the cut"
        );
        common::poll_until_async("the bystander answered meanwhile", || {
            let answered = answered.clone();
            async move { answered.load(Ordering::Relaxed) > before }
        })
        .await;
    }
    stop.store(true, Ordering::Relaxed);
    bystanding
        .await
        .expect("the bystander was answered correctly throughout");
    let grown = rss_most.saturating_sub(rss_before);
    println!(
        "proxy RSS {} MiB before, at most {} MiB while 2 clients asked for 300 MB each without reading",
        rss_before >> 20,
        rss_most >> 20
    );
    assert!(
        grown < 64 << 20,
        "the proxy held what the flooders did not read: RSS grew by {} MiB",
        grown >> 20
    );
    assert_eq!(admin.cmd("GET missing").await, "$-1\r\n", "the proxy goes on serving");
}

/// Truncated frames: every prefix of a pipeline, sent and then the
/// client's side closed, is answered exactly as Redis answers it (the
/// complete commands run and are answered, the cut one never runs), and
/// nothing of the cut command reaches Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_truncation_of_a_request_is_answered_as_redis_answers_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = RedisServer::start();
    let proxy = Proxy::start(&server.url()).await;
    let mut direct = RawClient::connect(server.addr()).await;
    let mut pipeline = encode(&[b"SET", b"first", b"1"]);
    let cut_from = pipeline.len();
    pipeline.extend(encode(&[b"SET", b"second", b"22"]));
    for cut in 1..pipeline.len() {
        let mut answers = Vec::new();
        for addr in [server.addr(), proxy.addr()] {
            assert_eq!(direct.cmd("DEL first second").await.len(), 4);
            let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.write_all(&pipeline[..cut]).await.unwrap();
            stream.shutdown().await.unwrap();
            let mut answer = Vec::new();
            tokio::time::timeout(common::DEADLINE, stream.read_to_end(&mut answer))
                .await
                .expect("the connection is closed")
                .unwrap_or_default();
            let stored = (direct.cmd("EXISTS first").await, direct.cmd("EXISTS second").await);
            answers.push((String::from_utf8_lossy(&answer).into_owned(), stored));
        }
        let expected = if cut >= cut_from { "+OK\r\n" } else { "" };
        assert_eq!(answers[1], answers[0], "cut at {cut}: as Redis");
        assert_eq!(answers[1].0, expected, "cut at {cut}");
        assert_eq!(answers[1].1.1, ":0\r\n", "cut at {cut}: the cut command never ran");
    }
}
