//! Randomized coherence of L1: writers through the proxy and straight to
//! Redis, readers through the proxy, on a few keys. Every value read must
//! have been current at some instant during the read; for a value that a
//! direct write had already replaced, at most one invalidation delay
//! earlier. Reports the worst staleness seen.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Proxy, RawClient, RedisServer};
use tokio::sync::Mutex;

const KEYS: usize = 4;

#[derive(Debug, Clone)]
struct Write {
    key: usize,
    value: String,
    start: Instant,
    end: Instant,
    direct: bool,
}

#[derive(Debug)]
struct Read {
    key: usize,
    value: Option<String>,
    start: Instant,
    end: Instant,
}

/// Read-your-writes across connections, with L1 in the way: `reader` caches
/// a key only `writer` writes, `writer` changes it, `reader` must see the
/// change at once.
async fn read_your_writes(mut writer: RawClient, mut reader: RawClient, name: String, rounds: usize) {
    let key = format!("own:{name}");
    let mut expected = "$-1\r\n".to_string();
    for round in 0..rounds {
        assert_eq!(
            String::from_utf8(reader.command(&[b"GET", key.as_bytes()]).await).unwrap(),
            expected
        );
        assert_eq!(
            String::from_utf8(reader.command(&[b"GET", key.as_bytes()]).await).unwrap(),
            expected
        );
        let value = format!("{name}-{round}");
        writer.command(&[b"SET", key.as_bytes(), value.as_bytes()]).await;
        expected = format!("${}\r\n{value}\r\n", value.len());
        assert_eq!(
            String::from_utf8(reader.command(&[b"GET", key.as_bytes()]).await).unwrap(),
            expected,
            "round {round}: a write through the proxy was not read at once"
        );
    }
}

async fn writer(mut client: RawClient, name: String, direct: bool, writes: usize, log: Arc<Mutex<Vec<Write>>>) {
    let mut seed = name.bytes().map(u64::from).sum::<u64>() | 1;
    for seq in 0..writes {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let key = (seed % KEYS as u64) as usize;
        let value = format!("{name}-{seq}");
        let start = Instant::now();
        let reply = client
            .command(&[b"SET", format!("key{key}").as_bytes(), value.as_bytes()])
            .await;
        let end = Instant::now();
        assert_eq!(reply, b"+OK\r\n");
        log.lock().await.push(Write {
            key,
            value,
            start,
            end,
            direct,
        });
        if seq % 8 == 0 {
            tokio::task::yield_now().await;
        }
    }
}

async fn reader(mut client: RawClient, reads: usize, log: Arc<Mutex<Vec<Read>>>) {
    for i in 0..reads {
        let key = i % KEYS;
        let start = Instant::now();
        let reply = client.command(&[b"GET", format!("key{key}").as_bytes()]).await;
        let end = Instant::now();
        let text = String::from_utf8(reply).unwrap();
        let value = if text == "$-1\r\n" {
            None
        } else {
            Some(text.split("\r\n").nth(1).unwrap().to_string())
        };
        log.lock().await.push(Read { key, value, start, end });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_never_staler_than_the_invalidation_delay() {
    let server = RedisServer::start();
    let proxy = Proxy::start_with(&server.url(), common::l1_eager).await;
    let l1 = proxy.handle().l1().unwrap().clone();
    common::poll_until("L1 ready", || l1.ready());

    let writes = Arc::new(Mutex::new(Vec::new()));
    let reads = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for (name, direct) in [("proxy-a", false), ("proxy-b", false), ("direct-c", true)] {
        let client = if direct {
            RawClient::connect(server.addr()).await
        } else {
            proxy.raw().await
        };
        tasks.push(tokio::spawn(writer(
            client,
            name.to_string(),
            direct,
            400,
            writes.clone(),
        )));
    }
    for _ in 0..4 {
        tasks.push(tokio::spawn(reader(proxy.raw().await, 800, reads.clone())));
    }
    for name in ["ryw-1", "ryw-2"] {
        let (writer, reader) = (proxy.raw().await, proxy.raw().await);
        tasks.push(tokio::spawn(read_your_writes(writer, reader, name.to_string(), 300)));
    }
    for task in tasks {
        task.await.unwrap();
    }

    let writes = writes.lock().await.clone();
    let reads = reads.lock().await;
    let stats = l1.store.stats();
    let hits = stats.hits.load(std::sync::atomic::Ordering::Relaxed);
    assert!(hits > 0, "the test must exercise L1 hits");
    let mut worst = Duration::ZERO;
    let mut worst_proxy = Duration::ZERO;
    for read in reads.iter() {
        let source = read.value.as_ref().map(|value| {
            writes
                .iter()
                .find(|w| &w.value == value)
                .expect("a value someone wrote")
        });
        if let Some(source) = source {
            // No value from the future: its write began before the read ended.
            assert!(
                source.start <= read.end && source.key == read.key,
                "{read:?} returned {source:?}"
            );
        }
        // Writes to this key that certainly came after the value read (they
        // started after its write ended) and had finished before the read.
        for later in writes.iter().filter(|w| w.key == read.key && w.end < read.start) {
            let after_source = match source {
                Some(source) => later.start > source.end,
                None => true,
            };
            if !after_source {
                continue;
            }
            let staleness = read.start - later.end;
            if later.direct {
                worst = worst.max(staleness);
            } else {
                worst_proxy = worst_proxy.max(staleness);
            }
        }
    }
    eprintln!(
        "{} reads, {hits} L1 hits, {} fills voided; worst staleness: {worst_proxy:?} after a proxy write, {worst:?} after a direct write",
        reads.len(),
        stats.fills_voided.load(std::sync::atomic::Ordering::Relaxed)
    );
    assert_eq!(
        worst_proxy,
        Duration::ZERO,
        "a write through the proxy was not read at once"
    );
    assert!(worst < Duration::from_millis(500), "direct writes seen {worst:?} late");
}
