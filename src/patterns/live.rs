//! The pattern engine at run time: the request path's feed (a bounded
//! queue it never waits on), the thread that owns the model, and the
//! snapshot file that carries the model across restarts.
//!
//! Sessions hand over their reads in batches ([`Patterns::feed`]); when
//! `queue_events` are already waiting, a batch is dropped and counted.
//! One thread records them, refreshes the gauges `INFO cache` shows, and
//! saves the model every `snapshot_interval_secs` (on the clock, so a
//! test moving a manual clock moves the schedule) and when the proxy stops.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use crate::cache::UNNAMED;
use crate::clock::Clock;
use crate::config::PatternsConfig;

use super::engine::{Engine, Event, Insight, Settings};

/// How often the thread wakes when no events come (to save on schedule).
const IDLE_WAKE: Duration = Duration::from_millis(500);
/// How often the bytes gauge is recomputed (it walks every tracked key).
const BYTES_REFRESH: Duration = Duration::from_secs(1);
/// Most queued batches recorded under one hold of the model's lock.
const BATCHES_PER_LOCK: usize = 64;

enum Message {
    Events(Vec<Event>),
    /// Save the model now; the result goes back.
    Save(mpsc::Sender<Result<usize, String>>),
}

/// Counters and gauges of the engine (`INFO cache`'s `pattern_*`).
#[derive(Debug, Default)]
pub struct PatternStats {
    /// Events handed to the engine, and those dropped because the queue
    /// was full.
    pub events: AtomicU64,
    pub dropped: AtomicU64,
    /// Keys tracked now, and the model's bytes (refreshed every second).
    pub tracked: AtomicU64,
    pub bytes: AtomicU64,
    pub snapshots_written: AtomicU64,
    pub snapshot_errors: AtomicU64,
    /// Wall time (ms) of the last snapshot written; 0 = none yet.
    pub last_snapshot_ms: AtomicU64,
    /// Keys the model started with from a snapshot.
    pub restored_keys: AtomicU64,
}

/// What the model and its thread share.
struct Inner {
    engine: Mutex<Engine>,
    stats: PatternStats,
    queued: AtomicUsize,
    clock: Arc<dyn Clock>,
    state_path: Option<PathBuf>,
    interval: Duration,
}

impl Inner {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        self.engine.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Writes the model to the state file (a temporary file renamed over
    /// it, so a crash mid-write leaves the previous snapshot).
    fn save(&self) -> Result<usize, String> {
        let Some(path) = &self.state_path else {
            return Err("no patterns.state_path is configured".into());
        };
        let bytes = self.engine().snapshot();
        let written = write_atomically(path, &bytes);
        match &written {
            Ok(()) => {
                self.stats.snapshots_written.fetch_add(1, Ordering::Relaxed);
                self.stats
                    .last_snapshot_ms
                    .store(self.clock.unix_ms(), Ordering::Relaxed);
            }
            Err(reason) => {
                self.stats.snapshot_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("pattern snapshot not written to {}: {reason}", path.display());
            }
        }
        written.map(|()| bytes.len())
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), String> {
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    std::fs::write(&temporary, bytes).map_err(|error| error.to_string())?;
    std::fs::rename(&temporary, path).map_err(|error| error.to_string())
}

/// The running engine: what sessions feed and admin commands ask.
pub struct Patterns {
    inner: Arc<Inner>,
    sender: Mutex<Option<mpsc::Sender<Message>>>,
    capacity: usize,
    separator: u8,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Which keys `PROXY PATTERNS` lists.
#[derive(Debug, Clone)]
pub struct Query {
    pub count: usize,
    pub namespace: Option<Vec<u8>>,
    pub min_priority: u8,
}

impl Patterns {
    /// Starts the engine: the model restored from `state_path` when it
    /// holds a snapshot this build reads (anything else is reported and
    /// ignored), and its thread.
    pub fn start(config: &PatternsConfig, separator: u8, clock: Arc<dyn Clock>) -> Arc<Patterns> {
        let settings = Settings {
            max_keys: config.max_keys,
            history_days: config.history_days,
            min_accesses: config.min_access_count,
        };
        let state_path = (!config.state_path.is_empty()).then(|| PathBuf::from(&config.state_path));
        let engine = state_path
            .as_deref()
            .and_then(|path| restore(settings, path))
            .unwrap_or_else(|| Engine::new(settings));
        let stats = PatternStats::default();
        stats.restored_keys.store(engine.tracked() as u64, Ordering::Relaxed);
        stats.tracked.store(engine.tracked() as u64, Ordering::Relaxed);
        stats.bytes.store(engine.bytes() as u64, Ordering::Relaxed);
        let inner = Arc::new(Inner {
            engine: Mutex::new(engine),
            stats,
            queued: AtomicUsize::new(0),
            clock,
            state_path,
            interval: Duration::from_secs(config.snapshot_interval_secs),
        });
        let (sender, receiver) = mpsc::channel();
        let worker = inner.clone();
        let thread = std::thread::Builder::new()
            .name("auracache-patterns".into())
            .spawn(move || run(&worker, &receiver))
            .expect("the pattern engine's thread starts");
        Arc::new(Patterns {
            inner,
            sender: Mutex::new(Some(sender)),
            capacity: config.queue_events,
            separator,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Wall time now, milliseconds (events' time).
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.unix_ms()
    }

    /// Hands events to the engine without waiting: if the queue already
    /// holds `queue_events`, they are dropped and counted.
    pub fn feed(&self, events: Vec<Event>) {
        let count = events.len();
        if count == 0 {
            return;
        }
        let stats = &self.inner.stats;
        let before = self.inner.queued.fetch_add(count, Ordering::Relaxed);
        let sent = before + count <= self.capacity
            && self
                .sender
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .as_ref()
                .is_some_and(|sender| sender.send(Message::Events(events)).is_ok());
        if sent {
            stats.events.fetch_add(count as u64, Ordering::Relaxed);
        } else {
            self.inner.queued.fetch_sub(count, Ordering::Relaxed);
            stats.dropped.fetch_add(count as u64, Ordering::Relaxed);
        }
    }

    pub fn stats(&self) -> &PatternStats {
        &self.inner.stats
    }

    /// Events waiting for the engine now.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    pub fn max_keys(&self) -> usize {
        self.inner.engine().settings().max_keys
    }

    /// The namespace of `key`, as L1 names it.
    pub fn namespace_of<'a>(&self, key: &'a [u8]) -> &'a [u8] {
        match memchr::memchr(self.separator, key) {
            Some(end) => &key[..end],
            None => UNNAMED.as_bytes(),
        }
    }

    /// The top keys for `query`, highest priority first. Walks every
    /// tracked key: call it off the event loop.
    pub fn top(&self, query: &Query) -> Vec<Insight> {
        let now = self.now_ms();
        let engine = self.inner.engine();
        let mut ranked = engine.ranked(
            now,
            |key| {
                query
                    .namespace
                    .as_deref()
                    .is_none_or(|namespace| self.namespace_of(key) == namespace)
            },
            |insight| insight.priority >= query.min_priority,
        );
        ranked.truncate(query.count);
        ranked
    }

    /// The global load per hour of the day and the peak hours.
    pub fn peaks(&self) -> ([u64; 24], Vec<u8>) {
        let engine = self.inner.engine();
        (engine.hourly_load(), engine.peaks())
    }

    /// Saves the model now (after the events already queued); the
    /// snapshot's size.
    pub fn save(&self) -> Result<usize, String> {
        let (reply, answer) = mpsc::channel();
        let sent = self
            .sender
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
            .is_some_and(|sender| sender.send(Message::Save(reply)).is_ok());
        if !sent {
            return Err("the pattern engine has stopped".into());
        }
        answer
            .recv()
            .unwrap_or_else(|_| Err("the pattern engine has stopped".into()))
    }

    /// Stops the engine: the events queued are recorded, the model saved
    /// (when a state path is configured), the thread joined. Later events
    /// are dropped.
    pub fn stop(&self) {
        drop(
            self.sender
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

impl Drop for Patterns {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The model in `path`, if it holds one this build reads; otherwise the
/// reason is logged and the engine starts empty.
fn restore(settings: Settings, path: &Path) -> Option<Engine> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!("no pattern snapshot at {} yet: learning from scratch", path.display());
            return None;
        }
        Err(error) => {
            tracing::warn!(
                "pattern snapshot at {} not read ({error}): learning from scratch",
                path.display()
            );
            return None;
        }
    };
    match Engine::restore(settings, &bytes) {
        Ok(engine) => {
            tracing::info!(
                "pattern model restored from {}: {} keys, {} events",
                path.display(),
                engine.tracked(),
                engine.events()
            );
            Some(engine)
        }
        Err(error) => {
            tracing::warn!(
                "pattern snapshot at {} ignored ({error}): learning from scratch; it will be overwritten",
                path.display()
            );
            None
        }
    }
}

/// The engine's thread: records events, refreshes the gauges, saves on
/// schedule; on the last sender's drop, saves once more and ends.
fn run(inner: &Inner, receiver: &mpsc::Receiver<Message>) {
    let mut next_save = inner.clock.now() + inner.interval;
    let mut bytes_refreshed = Instant::now();
    loop {
        let first = match receiver.recv_timeout(IDLE_WAKE) {
            Ok(message) => Some(message),
            Err(mpsc::RecvTimeoutError::Timeout) => None,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let mut saves = Vec::new();
        if let Some(first) = first {
            let mut engine = inner.engine();
            let mut next = Some(first);
            let mut batches = 0;
            while let Some(message) = next.take() {
                match message {
                    Message::Events(events) => {
                        inner.queued.fetch_sub(events.len(), Ordering::Relaxed);
                        events.iter().for_each(|event| engine.record(event));
                    }
                    Message::Save(reply) => saves.push(reply),
                }
                batches += 1;
                if batches < BATCHES_PER_LOCK {
                    next = receiver.try_recv().ok();
                }
            }
            inner.stats.tracked.store(engine.tracked() as u64, Ordering::Relaxed);
        }
        if bytes_refreshed.elapsed() >= BYTES_REFRESH {
            let bytes = inner.engine().bytes();
            inner.stats.bytes.store(bytes as u64, Ordering::Relaxed);
            bytes_refreshed = Instant::now();
        }
        for reply in saves {
            let _ = reply.send(inner.save());
        }
        if inner.clock.now() >= next_save {
            next_save = inner.clock.now() + inner.interval;
            if inner.state_path.is_some() {
                let _ = inner.save();
            }
        }
    }
    inner
        .stats
        .bytes
        .store(inner.engine().bytes() as u64, Ordering::Relaxed);
    if inner.state_path.is_some() {
        let _ = inner.save();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::patterns::engine::Outcome;
    use bytes::Bytes;

    fn config(state_path: &str) -> PatternsConfig {
        PatternsConfig {
            state_path: state_path.into(),
            queue_events: 100,
            min_access_count: 3,
            ..PatternsConfig::default()
        }
    }

    fn reads(key: &str, count: usize, at_ms: u64) -> Vec<Event> {
        (0..count)
            .map(|i| Event {
                key: Bytes::copy_from_slice(key.as_bytes()),
                at_ms: at_ms + i as u64 * 60_000,
                outcome: Outcome::L2Hit,
                latency_us: 200,
                size: 10,
            })
            .collect()
    }

    fn wait_for(what: &str, check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !check() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting() {
        let patterns = Patterns::start(&config(""), b':', Arc::new(ManualClock::default()));
        // Hold the model's lock: the thread cannot drain the queue.
        let engine = patterns.inner.engine();
        patterns.feed(reads("a:1", 60, 0));
        patterns.feed(reads("a:2", 60, 0));
        assert_eq!(patterns.stats().events.load(Ordering::Relaxed), 60);
        assert_eq!(patterns.stats().dropped.load(Ordering::Relaxed), 60);
        drop(engine);
        wait_for("the queue to drain", || patterns.queued() == 0);
        wait_for("a:1 to be tracked", || {
            patterns.stats().tracked.load(Ordering::Relaxed) == 1
        });
        let top = patterns.top(&Query {
            count: 10,
            namespace: None,
            min_priority: 1,
        });
        assert_eq!(top.len(), 1);
        assert_eq!(&top[0].key[..], b"a:1");
        assert_eq!(top[0].accesses, 60);
    }

    #[test]
    fn the_model_is_saved_on_stop_and_restored_and_a_bad_file_is_ignored() {
        let directory = std::env::temp_dir().join(format!("auracache-live-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("patterns.snap");
        let path_text = path.to_str().unwrap();
        let clock = Arc::new(ManualClock::default());
        let patterns = Patterns::start(&config(path_text), b':', clock.clone());
        patterns.feed(reads("user:1", 20, 1_000));
        patterns.feed(reads("order:9", 5, 1_000));
        patterns.stop();
        assert_eq!(patterns.stats().snapshots_written.load(Ordering::Relaxed), 1);
        let restored = Patterns::start(&config(path_text), b':', clock.clone());
        assert_eq!(restored.stats().restored_keys.load(Ordering::Relaxed), 2);
        let only_users = restored.top(&Query {
            count: 10,
            namespace: Some(b"user".to_vec()),
            min_priority: 1,
        });
        assert_eq!(only_users.len(), 1);
        assert_eq!((&only_users[0].key[..], only_users[0].accesses), (&b"user:1"[..], 20));
        drop(restored);
        std::fs::write(&path, b"not a snapshot at all").unwrap();
        let fresh = Patterns::start(&config(path_text), b':', clock);
        assert_eq!(fresh.stats().restored_keys.load(Ordering::Relaxed), 0);
        assert_eq!(fresh.save(), Ok(std::fs::read(&path).unwrap().len()));
        drop(fresh);
        std::fs::remove_dir_all(&directory).unwrap();
    }

    #[test]
    fn snapshots_follow_the_clock() {
        let directory = std::env::temp_dir().join(format!("auracache-live-clock-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("patterns.snap");
        let clock = Arc::new(ManualClock::default());
        let patterns = Patterns::start(&config(path.to_str().unwrap()), b':', clock.clone());
        patterns.feed(reads("k:1", 3, 0));
        wait_for("k:1 to be tracked", || {
            patterns.stats().tracked.load(Ordering::Relaxed) == 1
        });
        assert_eq!(patterns.stats().snapshots_written.load(Ordering::Relaxed), 0);
        clock.advance(Duration::from_secs(301));
        wait_for("a scheduled snapshot", || {
            patterns.stats().snapshots_written.load(Ordering::Relaxed) == 1
        });
        assert!(path.exists());
        drop(patterns);
        std::fs::remove_dir_all(&directory).unwrap();
    }
}
