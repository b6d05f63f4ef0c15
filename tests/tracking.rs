//! The L1 store kept coherent by Redis's invalidation messages: writes made
//! directly on Redis (not through the proxy) drop cached replies, FLUSHALL
//! empties the store, and a lost tracking connection turns caching off until
//! tracking is back.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use auracache::cache::tracking::{self, TRACKING_CONNECTION_NAME, TrackerConfig};
use auracache::cache::{CacheKey, CachedReply, L1Limits, L1Store, Lookup, Namespaces, Rules, Shape};
use auracache::clock::SystemClock;
use auracache::config::UpstreamUrl;
use auracache::protocol::ReplyLimits;
use auracache::stats::Stats;
use auracache::upstream::Upstream;
use bytes::Bytes;
use common::{DEADLINE, RawClient, RedisServer};

fn key(db: u32, name: &str) -> CacheKey {
    CacheKey::new(db, Bytes::copy_from_slice(name.as_bytes()), Shape::String)
}

/// Stores a reply for `key` as a fill would; false if the store refused.
fn fill(store: &L1Store, key: &CacheKey) -> bool {
    match store.lookup(key) {
        Lookup::Miss(ticket) => store.complete(
            ticket,
            CachedReply::same(Bytes::from_static(b"$3\r\nold\r\n")),
            Duration::from_secs(600),
        ),
        Lookup::Hit(_) => true,
        Lookup::Wait(_) => panic!("no other fill runs in this test"),
        Lookup::Pass => false,
    }
}

fn cached(store: &L1Store, key: &CacheKey) -> bool {
    match store.lookup(key) {
        Lookup::Hit(_) => true,
        Lookup::Miss(ticket) => {
            store.abandon(ticket);
            false
        }
        Lookup::Wait(_) | Lookup::Pass => false,
    }
}

async fn wait_for(what: &str, mut check: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !check() {
        assert!(started.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    started.elapsed()
}

struct Tracked {
    store: Arc<L1Store>,
    active: tokio::sync::watch::Receiver<bool>,
    _trigger: auracache::shutdown::ShutdownTrigger,
}

fn start_tracker(server: &RedisServer) -> Tracked {
    start_tracker_with(server, Vec::new())
}

fn start_tracker_with(server: &RedisServer, prefixes: Vec<Bytes>) -> Tracked {
    let store = Arc::new(L1Store::new(
        L1Limits {
            max_bytes: 1 << 20,
            max_entry_bytes: 4096,
            estimated_entries: 100,
            fill_on_first_miss: true,
        },
        Arc::new(Namespaces::uniform(Rules::test_default())),
        Arc::new(SystemClock),
    ));
    let (trigger, shutdown) = auracache::shutdown::channel();
    let config = TrackerConfig {
        target: Arc::new(Upstream {
            url: UpstreamUrl::parse(&server.url()).unwrap(),
            tls: None,
        }),
        prefixes,
        connect_timeout: Duration::from_secs(2),
        max_backoff: Duration::from_millis(100),
        limits: ReplyLimits {
            max_nesting_depth: 64,
            max_bulk_bytes: 1 << 20,
        },
        versions: None,
        cluster: None,
    };
    let active = tracking::start(config, store.clone(), Arc::new(Stats::default()), shutdown);
    Tracked {
        store,
        active,
        _trigger: trigger,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_writes_flushes_and_a_lost_connection_reach_the_store() {
    let server = RedisServer::start();
    let tracked = start_tracker(&server);
    let store = &tracked.store;
    let active = tracked.active.clone();
    wait_for("tracking to start", || *active.borrow()).await;
    assert!(store.is_accepting());
    let mut direct = RawClient::connect(server.addr()).await;

    // A write made straight on Redis drops the cached reply.
    assert!(fill(store, &key(0, "k")));
    assert!(fill(store, &key(0, "untouched")));
    assert_eq!(direct.cmd("SET k new").await, "+OK\r\n");
    let delay = wait_for("the invalidation of k", || !cached(store, &key(0, "k"))).await;
    eprintln!("invalidation arrived {delay:?} after the direct write's reply");
    assert!(cached(store, &key(0, "untouched")));

    // Messages name keys, not databases: db 3's copy goes too.
    assert!(fill(store, &key(3, "k3")));
    assert_eq!(direct.cmd("SELECT 3").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET k3 v").await, "+OK\r\n");
    wait_for("the invalidation of k3 in db 3", || !cached(store, &key(3, "k3"))).await;

    // Expiry in Redis is a write too: after the SET's own invalidation,
    // a fresh copy is dropped again when Redis expires the key.
    assert!(fill(store, &key(3, "short")));
    assert_eq!(direct.cmd("SET short v PX 300").await, "+OK\r\n");
    wait_for("the SET's invalidation", || !cached(store, &key(3, "short"))).await;
    assert!(fill(store, &key(3, "short")));
    let expired = wait_for("the expiry's invalidation", || !cached(store, &key(3, "short"))).await;
    eprintln!("expiry invalidation arrived after {expired:?}");

    // FLUSHALL empties everything.
    assert!(fill(store, &key(0, "a")));
    assert_eq!(direct.cmd("FLUSHALL").await, "+OK\r\n");
    wait_for("FLUSHALL to empty the store", || store.is_empty()).await;

    // Killing the tracking connection empties the store and stops caching
    // until tracking is back; then invalidations flow again.
    assert!(fill(store, &key(0, "b")));
    let list = direct.cmd("CLIENT LIST").await;
    let id = list
        .lines()
        .find(|line| line.contains(&format!("name={TRACKING_CONNECTION_NAME}")))
        .and_then(|line| line.split(' ').find_map(|field| field.strip_prefix("id=")))
        .expect("the tracking connection is in CLIENT LIST")
        .to_string();
    assert_eq!(direct.cmd(&format!("CLIENT KILL ID {id}")).await, ":1\r\n");
    // Only the kill can empty it (nothing else writes b); the reconnection
    // may already be done when this looks, so the two are checked apart.
    wait_for("the store to be emptied", || store.is_empty()).await;
    let started = std::time::Instant::now();
    loop {
        let list = direct.cmd("CLIENT LIST").await;
        let back = list.lines().any(|line| {
            line.contains(&format!("name={TRACKING_CONNECTION_NAME}")) && !line.contains(&format!("id={id} "))
        });
        if back {
            break;
        }
        assert!(
            started.elapsed() < common::DEADLINE,
            "no new tracking connection: {list}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    wait_for("tracking to come back", || *active.borrow()).await;
    assert!(fill(store, &key(0, "b")));
    assert_eq!(direct.cmd("SELECT 0").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET b changed").await, "+OK\r\n");
    wait_for("invalidations after the reconnect", || !cached(store, &key(0, "b"))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_stored_while_tracking_is_down() {
    let mut server = RedisServer::start();
    let tracked = start_tracker(&server);
    let store = &tracked.store;
    let active = tracked.active.clone();
    wait_for("tracking to start", || *active.borrow()).await;
    server.kill();
    wait_for("tracking to be reported down", || !*active.borrow()).await;
    assert!(!store.is_accepting());
    assert!(!fill(store, &key(0, "k")), "a fill while tracking is down is not kept");
    assert!(store.is_empty());
    server.restart();
    wait_for("tracking to come back", || *active.borrow()).await;
    assert!(fill(store, &key(0, "k")));
}

/// With prefixes, Redis sends invalidations only for keys under them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracking_can_be_limited_to_namespace_prefixes() {
    let server = RedisServer::start();
    let tracked = start_tracker_with(&server, vec![Bytes::from_static(b"users:")]);
    let store = &tracked.store;
    let active = tracked.active.clone();
    wait_for("tracking to start", || *active.borrow()).await;
    let mut direct = RawClient::connect(server.addr()).await;
    assert!(fill(store, &key(0, "other:1")));
    assert!(fill(store, &key(0, "users:1")));
    assert_eq!(direct.cmd("SET other:1 x").await, "+OK\r\n");
    assert_eq!(direct.cmd("SET users:1 x").await, "+OK\r\n");
    wait_for("the invalidation of users:1", || !cached(store, &key(0, "users:1"))).await;
    // users:1's message came after other:1's write: none was sent for it.
    assert!(
        cached(store, &key(0, "other:1")),
        "keys outside the prefixes are not tracked"
    );
    let list = direct.cmd("CLIENT LIST").await;
    let tracking = list
        .lines()
        .find(|line| line.contains(&format!("name={TRACKING_CONNECTION_NAME}")))
        .expect("the tracking connection is listed");
    assert!(tracking.contains("flags=t"), "{tracking}");
}
