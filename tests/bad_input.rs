//! Bad input (issue #10), each case sent to Redis itself and through the
//! proxy: lengths of 2^63 and beyond, a 1 GB bulk announced, arrays nested
//! 10,000 deep, binary junk, an inline line longer than the limit, and a
//! slow client sending one byte at a time. Each gets Redis's own error (or
//! is served, as Redis serves it) on that connection only, while a
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
