//! The preloader's tests' set-up: a Redis, the proxy in front of it on a
//! manual clock (whose wall time can also be stepped back) with L1 and the
//! pattern engine on, a client of each, and the engine taught keys' rhythms.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use auracache::cache::Shape;
use auracache::clock::{Clock, ManualClock};
use auracache::config::Config;
use redis::Value;

use super::values::fields;
use super::{Proxy, RawClient, RedisServer, poll_until_async, redis_calls};

/// Day 20,000 since the epoch, midnight UTC.
pub const START_MS: u64 = 20_000 * 86_400_000;
pub const MINUTE: Duration = Duration::from_secs(60);
pub const HOUR: Duration = Duration::from_secs(3600);

/// A manual clock whose wall time can also be stepped back (as NTP steps
/// the system's), while its monotonic time only moves forward.
#[derive(Debug, Clone)]
pub struct SteppedClock {
    manual: ManualClock,
    back_ms: Arc<AtomicU64>,
}

impl SteppedClock {
    pub fn starting_at(unix_ms: u64) -> SteppedClock {
        SteppedClock {
            manual: ManualClock::starting_at(unix_ms),
            back_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    pub fn advance(&self, by: Duration) {
        self.manual.advance(by);
    }

    pub fn step_wall_back(&self, by: Duration) {
        self.back_ms.fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }
}

impl Clock for SteppedClock {
    fn now(&self) -> Instant {
        self.manual.now()
    }

    fn unix_ms(&self) -> u64 {
        self.manual.unix_ms() - self.back_ms.load(Ordering::SeqCst)
    }
}

pub struct Fixture {
    pub server: RedisServer,
    pub proxy: Proxy,
    pub clock: SteppedClock,
    /// Through the proxy, and straight to Redis.
    pub client: RawClient,
    pub direct: RawClient,
    /// Reads sent through `client`, for [`Fixture::recorded`].
    pub reads: u64,
}

impl Fixture {
    pub async fn start(tweak: impl FnOnce(&mut Config)) -> Fixture {
        Fixture::start_at(START_MS, tweak).await
    }

    pub async fn start_at(start_ms: u64, tweak: impl FnOnce(&mut Config)) -> Fixture {
        let server = RedisServer::start();
        let clock = SteppedClock::starting_at(start_ms);
        let proxy = Proxy::start_with_clock(&server.url(), Arc::new(clock.clone()), |config| {
            config.memory_cache.enabled = true;
            // A run a day: no scheduled run comes while a test trains the
            // engine for a few hours (the tests of the schedule set theirs).
            config.preload.interval_minutes = 1440.0;
            tweak(config);
        })
        .await;
        let client = RawClient::connect(proxy.addr()).await;
        let direct = RawClient::connect(server.addr()).await;
        let l1 = proxy.handle().l1().expect("L1 on").clone();
        poll_until_async("L1 ready", || {
            let l1 = l1.clone();
            async move { l1.ready() }
        })
        .await;
        Fixture {
            server,
            proxy,
            clock,
            client,
            direct,
            reads: 0,
        }
    }

    /// `command args` through the proxy, counted as a read.
    pub async fn read(&mut self, command: &str, args: &str) -> String {
        self.reads += 1;
        self.client.cmd(&format!("{command} {args}")).await
    }

    /// Teaches the engine that each of `keys` is read with `command` every
    /// `period`, `times` times (the clock moves on by `period` after each
    /// round).
    pub async fn train(&mut self, command: &str, keys: &[&str], period: Duration, times: usize) {
        for _ in 0..times {
            for key in keys {
                self.read(command, key).await;
            }
            self.clock.advance(period);
        }
        self.recorded().await;
    }

    /// [`Fixture::train`] with GET.
    pub async fn train_periodic(&mut self, keys: &[String], period: Duration, times: usize) {
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.train("GET", &keys, period, times).await;
    }

    /// Waits until the engine has been handed every read sent.
    pub async fn recorded(&mut self) {
        let reads = self.reads;
        let patterns = self.proxy.handle().patterns().expect("engine on").clone();
        poll_until_async("every read handed to the engine", || {
            let patterns = patterns.clone();
            async move { patterns.reads_offered() >= reads }
        })
        .await;
    }

    /// `PROXY PRELOAD RUN`: the run's status fields.
    pub async fn run(&mut self) -> BTreeMap<String, Value> {
        status_of(&self.proxy, "RUN").await
    }

    pub async fn status(&mut self) -> BTreeMap<String, Value> {
        status_of(&self.proxy, "STATUS").await
    }

    /// How long L1 holds `key`'s GET reply (database 0) for, if it does.
    pub fn held(&self, key: &str) -> Option<Duration> {
        self.held_in(0, key, &Shape::String)
    }

    /// How long L1 holds `key`'s `shape` reply in `db` for, if it does.
    pub fn held_in(&self, db: u32, key: &str, shape: &Shape) -> Option<Duration> {
        let l1 = self.proxy.handle().l1().expect("L1 on");
        l1.store.remaining(db, key.as_bytes(), shape)
    }

    /// Whether a client's GET of `key` reached Redis (its reply checked).
    pub async fn get_reaches_redis(&mut self, key: &str, expected: &str) -> bool {
        let before = redis_calls(&mut self.direct, "get").await;
        assert_eq!(self.read("GET", key).await, expected, "GET {key}");
        redis_calls(&mut self.direct, "get").await > before
    }

    pub async fn info(&mut self) -> String {
        self.client.cmd("INFO cache").await
    }
}

/// `PROXY PRELOAD <what>` on a new connection: its fields.
pub async fn status_of(proxy: &Proxy, what: &str) -> BTreeMap<String, Value> {
    let mut connection = proxy.client().await;
    let reply: Value = redis::cmd("PROXY")
        .arg("PRELOAD")
        .arg(what)
        .query_async(&mut connection)
        .await
        .unwrap_or_else(|error| panic!("PROXY PRELOAD {what}: {error}"));
    fields(reply)
}

/// `value` as a RESP bulk string.
pub fn bulk(value: &str) -> String {
    format!("${}\r\n{value}\r\n", value.len())
}
