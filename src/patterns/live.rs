//! The pattern engine at run time: the request path's feed, the thread
//! that owns the model, and the snapshot file that carries the model
//! across restarts.
//!
//! Sessions send their reads, a batch per pipeline, down a channel
//! ([`Patterns::feed`]): a send takes no lock and wakes nobody (the
//! engine's thread polls). Beyond `queue_events` waiting, reads are dropped
//! and counted. Every few milliseconds the engine's thread records what
//! came, refreshes the gauges `INFO cache` shows, and saves the model every
//! `snapshot_interval_secs` (on the clock, so a test moving a manual clock
//! moves the schedule) and when it stops.
//!
//! The engine's work is bounded two ways, so it never takes the CPU the
//! proxy and Redis need:
//! - a budget of reads per second (`max_events_per_sec`): beyond it the
//!   engine learns a fixed share of the keys ([`Sampler`]: those whose
//!   hash has its top `shift` bits clear, 1/2, 1/4, ...; the share is
//!   re-decided every 100 ms by the request path, with hysteresis), so each learned key's
//!   history stays whole; the reads of the others are counted as sampled
//!   out;
//! - its thread runs at the idle scheduling class (Linux `SCHED_IDLE`): on
//!   a saturated machine it falls behind, the queue fills and events are
//!   dropped (counted).

use std::hash::BuildHasher;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use crate::cache::UNNAMED;
use crate::clock::Clock;
use crate::config::PatternsConfig;

use super::engine::{Engine, Insight, Outcome, Settings};

/// How often the thread takes the events waiting (and checks its schedule).
const DRAIN_EVERY: Duration = Duration::from_millis(10);
/// How often the bytes gauge is refreshed.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long the reads offered are counted before the sampling share is
/// decided again (ms).
const TUNE_EVERY_MS: u64 = 100;
/// The smallest share of keys learned under load: 1 in 2^MAX_SHIFT.
const MAX_SHIFT: u32 = 16;

/// Which keys the engine learns from: all (`shift` 0), or those whose
/// hash (foldhash, fixed seed) has its top `shift` bits clear.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sampler {
    shift: u32,
}

impl Sampler {
    pub fn keeps(self, key: &[u8]) -> bool {
        self.shift == 0 || foldhash::fast::FixedState::with_seed(0x5eed).hash_one(key) >> (64 - self.shift) == 0
    }
}

/// The sampling shift for `rate` reads a second within `budget` (0 = no
/// bound): the smallest that fits, moved down only when the next one down
/// would use at most 80% of the budget (so it does not flap).
fn next_shift(shift: u32, rate: f64, budget: u64) -> u32 {
    if budget == 0 {
        return 0;
    }
    let budget = budget as f64;
    let kept = |shift: u32| rate / f64::from(1u32 << shift);
    let mut shift = shift.min(MAX_SHIFT);
    while shift < MAX_SHIFT && kept(shift) > budget {
        shift += 1;
    }
    while shift > 0 && kept(shift - 1) <= budget * 0.8 {
        shift -= 1;
    }
    shift
}

/// Reads on their way to the engine: their keys side by side in one
/// buffer (no allocation per read, and no buffer of a client's kept
/// alive), and what else each read carries.
#[derive(Debug, Default)]
pub struct Reads {
    keys: Vec<u8>,
    reads: Vec<Read>,
    /// Which keys to keep, and the reads of the others left out.
    sampler: Sampler,
    sampled_out: u64,
    /// For reads pushed awaiting their reply (one per read, in order):
    /// the reply's position in its batch and how it tells the outcome.
    awaited: Vec<(u32, Awaited)>,
}

/// How a read's reply will tell its outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    /// The whole reply: nil (or an empty array or map) is a miss.
    Whole,
    /// An HMGET's reply to `asked` fields, L1 having answered the others
    /// (with a value among them, and their size).
    Fields {
        asked: u32,
        cached_found: bool,
        cached_size: u32,
    },
    /// Item `item` of an array reply of `of` items (MGET).
    Item { item: u32, of: u32 },
}

#[derive(Debug, Clone, Copy)]
struct Read {
    db: u32,
    key_start: u32,
    key_len: u32,
    at_ms: u64,
    latency_us: u32,
    size: u32,
    outcome: Outcome,
}

/// Most bytes of keys waiting per event allowed in the queue, on average
/// (the queue's bound in bytes is `queue_events` times this).
const KEY_BYTES_PER_EVENT: usize = 256;

impl Reads {
    /// Reads kept by `sampler`.
    pub fn new(sampler: Sampler) -> Reads {
        Reads {
            sampler,
            ..Reads::default()
        }
    }

    /// From now on, keeps the reads `sampler` keeps.
    pub fn sample_with(&mut self, sampler: Sampler) {
        self.sampler = sampler;
    }

    /// Whether reads of `key` are kept; if not, one is counted as sampled
    /// out (for a read to be heard of later, with its reply).
    pub fn admits(&mut self, key: &[u8]) -> bool {
        let keeps = self.sampler.keeps(key);
        if !keeps {
            self.sampled_out += 1;
        }
        keeps
    }

    /// One read of `key` in database `db` at `at_ms` (wall time), answered
    /// so, taking `latency_us`, its reply `size` bytes; counted as sampled
    /// out if the sampler does not keep its key.
    pub fn push(&mut self, db: u32, key: &[u8], at_ms: u64, outcome: Outcome, latency_us: u32, size: usize) {
        if self.admits(key) {
            self.record(db, key, at_ms, outcome, latency_us, size);
        }
    }

    fn record(&mut self, db: u32, key: &[u8], at_ms: u64, outcome: Outcome, latency_us: u32, size: usize) {
        let Ok(key_len) = u32::try_from(key.len()) else {
            return;
        };
        let key_start = self.keys.len() as u32;
        if key_start.checked_add(key_len).is_none() {
            return;
        }
        self.keys.extend_from_slice(key);
        self.reads.push(Read {
            db,
            key_start,
            key_len,
            at_ms,
            latency_us,
            size: size.min(u32::MAX as usize) as u32,
            outcome,
        });
    }

    pub fn len(&self) -> usize {
        self.reads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.reads.is_empty()
    }

    /// Empties it, keeping its allocations (and its sampler).
    fn clear(&mut self) {
        self.keys.clear();
        self.reads.clear();
        self.awaited.clear();
        self.sampled_out = 0;
    }

    /// A read of `key` at `at_ms` whose outcome the reply at position
    /// `reply` of its batch will tell ([`Reads::settle`]); nothing (but a
    /// count) if the sampler leaves the key out, unless `admitted` says it
    /// was asked already.
    pub fn push_awaited(&mut self, db: u32, key: &[u8], at_ms: u64, reply: usize, awaited: Awaited, admitted: bool) {
        if !admitted && !self.admits(key) {
            return;
        }
        let before = self.reads.len();
        self.record(db, key, at_ms, Outcome::L2Hit, 0, 0);
        if self.reads.len() > before {
            self.awaited.push((reply.min(u32::MAX as usize) as u32, awaited));
        }
    }

    /// Whether reads wait for their replies.
    pub fn awaits(&self) -> bool {
        !self.awaited.is_empty()
    }

    /// Gives each awaited read its outcome and size from `tell(reply
    /// position, how)` (called in reply order), and the batch's latency;
    /// a read told None (an error reply) is not an access and is left out.
    /// Every read here must have been pushed awaiting.
    pub fn settle(&mut self, latency_us: u32, mut tell: impl FnMut(u32, Awaited) -> Option<(Outcome, usize)>) {
        let awaited = std::mem::take(&mut self.awaited);
        let mut told = awaited.iter().map(|(reply, how)| tell(*reply, *how));
        self.reads.retain_mut(|read| match told.next().flatten() {
            Some((outcome, size)) => {
                read.outcome = outcome;
                read.size = size.min(u32::MAX as usize) as u32;
                read.latency_us = latency_us;
                true
            }
            None => false,
        });
        drop(told);
        self.awaited = awaited;
        self.awaited.clear();
    }

    /// No reads kept and none sampled out: nothing to tell the engine.
    pub fn is_untouched(&self) -> bool {
        self.reads.is_empty() && self.sampled_out == 0
    }

    fn each(&self, mut visit: impl FnMut(&[u8], &Read)) {
        for read in &self.reads {
            let from = read.key_start as usize;
            visit(&self.keys[from..from + read.key_len as usize], read);
        }
    }
}

/// Counters and gauges of the engine (`INFO cache`'s `pattern_*`).
#[derive(Debug, Default)]
pub struct PatternStats {
    /// Events handed to the engine, and those dropped because the queue
    /// was full (or the engine had stopped).
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
    /// Reads left out by sampling (the engine over its budget).
    pub sampled_out: AtomicU64,
}

impl PatternStats {
    /// The counters (not the gauges) back to zero (`PROXY STATS RESET`).
    pub fn reset(&self) {
        for counter in [
            &self.events,
            &self.dropped,
            &self.snapshots_written,
            &self.snapshot_errors,
            &self.sampled_out,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// Emptied batches kept for reuse, at most.
const SPARES: usize = 256;
/// How long `PROXY PATTERNS SAVE` waits for the engine's thread.
const SAVE_WAIT: Duration = Duration::from_secs(30);

/// What the model and its thread share.
struct Inner {
    engine: Mutex<Engine>,
    /// Batches of reads on their way to the engine (only its thread takes
    /// them), and the reads and key bytes they hold.
    batches: Mutex<mpsc::Receiver<Reads>>,
    queued: AtomicUsize,
    queued_key_bytes: AtomicUsize,
    /// Emptied batches, for sessions to fill again (no allocation, and no
    /// freeing on this thread of what a session's thread allocated).
    spares: Mutex<Vec<Reads>>,
    /// The hourly load and peak hours as of the last events recorded, for
    /// readers that must not wait for the engine.
    load: Mutex<([u64; 24], Vec<u8>)>,
    /// Days the hourly load has been seen on.
    load_days: AtomicU64,
    max_keys: usize,
    /// Saves asked for (`PROXY PATTERNS SAVE`), answered by the thread.
    saves: Mutex<Vec<mpsc::Sender<Result<usize, String>>>>,
    /// Callers waiting for the reads sent before they asked to be recorded.
    barriers: Mutex<Vec<mpsc::Sender<()>>>,
    stopping: AtomicBool,
    /// The sampling shift now, the budget it keeps to, and the reads
    /// offered since the start of the current measuring window (wall ms).
    shift: AtomicU32,
    budget: AtomicU64,
    /// Reads before a key is classified, as set now (the queries pass it on
    /// to the engine, whose lock they hold anyway).
    min_accesses: AtomicU64,
    window_start_ms: AtomicU64,
    window_offered: AtomicU64,
    stats: PatternStats,
    clock: Arc<dyn Clock>,
    state_path: Option<PathBuf>,
    interval: Duration,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Inner {
    fn engine(&self) -> MutexGuard<'_, Engine> {
        lock(&self.engine)
    }

    /// The engine for a query, with the settings queries read now.
    fn engine_for_query(&self) -> MutexGuard<'_, Engine> {
        let mut engine = self.engine();
        engine.set_min_accesses(self.min_accesses.load(Ordering::Relaxed));
        engine
    }

    /// Records the reads that came; how many.
    fn drain(&self) -> usize {
        let batches = lock(&self.batches);
        let Ok(first) = batches.try_recv() else {
            return 0;
        };
        let mut engine = self.engine();
        let mut count = 0;
        let mut emptied = Vec::new();
        for mut batch in std::iter::once(first).chain(std::iter::from_fn(|| batches.try_recv().ok())) {
            batch.each(|key, read| {
                engine.record_read(read.db, key, read.at_ms, read.outcome, read.latency_us, read.size)
            });
            self.queued.fetch_sub(batch.len(), Ordering::Relaxed);
            self.queued_key_bytes.fetch_sub(batch.keys.len(), Ordering::Relaxed);
            count += batch.len();
            batch.clear();
            emptied.push(batch);
        }
        self.stats.tracked.store(engine.tracked() as u64, Ordering::Relaxed);
        *lock(&self.load) = (engine.hourly_load(), engine.peaks());
        self.load_days.store(engine.days_seen() as u64, Ordering::Relaxed);
        drop(engine);
        let mut spares = lock(&self.spares);
        let room = SPARES.saturating_sub(spares.len());
        spares.extend(emptied.into_iter().take(room));
        count
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
    sender: mpsc::Sender<Reads>,
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
        let patterns = Patterns::without_thread(config, separator, clock);
        let worker = patterns.inner.clone();
        let thread = std::thread::Builder::new()
            .name("auracache-patterns".into())
            .spawn(move || run(&worker))
            .expect("the pattern engine's thread starts");
        *lock(&patterns.thread) = Some(thread);
        Arc::new(patterns)
    }

    /// The engine with nothing yet taking its events.
    fn without_thread(config: &PatternsConfig, separator: u8, clock: Arc<dyn Clock>) -> Patterns {
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
        let load = (engine.hourly_load(), engine.peaks());
        let days_seen = engine.days_seen();
        let (sender, batches) = mpsc::channel();
        let inner = Arc::new(Inner {
            engine: Mutex::new(engine),
            batches: Mutex::new(batches),
            queued: AtomicUsize::new(0),
            queued_key_bytes: AtomicUsize::new(0),
            spares: Mutex::new(Vec::new()),
            load: Mutex::new(load),
            load_days: AtomicU64::new(days_seen as u64),
            max_keys: config.max_keys,
            saves: Mutex::new(Vec::new()),
            barriers: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            shift: AtomicU32::new(0),
            budget: AtomicU64::new(config.max_events_per_sec),
            min_accesses: AtomicU64::new(config.min_access_count),
            window_start_ms: AtomicU64::new(0),
            window_offered: AtomicU64::new(0),
            stats,
            clock,
            state_path,
            interval: Duration::from_secs(config.snapshot_interval_secs),
        });
        Patterns {
            inner,
            sender,
            capacity: config.queue_events,
            separator,
            thread: Mutex::new(None),
        }
    }

    /// Wall time now, milliseconds (events' time).
    pub fn now_ms(&self) -> u64 {
        self.inner.clock.unix_ms()
    }

    /// Hands `reads` to the engine, leaving `reads` empty (an emptied
    /// batch, with the sampler of now): see [`Patterns::send`].
    pub fn feed(&self, reads: &mut Reads) {
        if reads.is_untouched() {
            return;
        }
        let next = self.batch_like(reads.keys.len(), reads.len());
        self.send(std::mem::replace(reads, next));
    }

    /// Hands a batch of reads to the engine: sent down the channel, without
    /// a lock or a wake-up. What does not fit in `queue_events` (or in their
    /// keys' bytes bound) is dropped; every drop is counted.
    pub fn send(&self, mut batch: Reads) {
        let stats = &self.inner.stats;
        // The reads' own time, when they have one, saves reading the clock.
        let now = batch.reads.last().map_or_else(|| self.now_ms(), |read| read.at_ms);
        self.tune(batch.len() as u64 + batch.sampled_out, now);
        if batch.sampled_out > 0 {
            stats.sampled_out.fetch_add(batch.sampled_out, Ordering::Relaxed);
            batch.sampled_out = 0;
        }
        let count = batch.len();
        if count == 0 {
            return;
        }
        let inner = &self.inner;
        let waiting = inner.queued.load(Ordering::Relaxed);
        let key_bytes = inner.queued_key_bytes.load(Ordering::Relaxed) + batch.keys.len();
        let mut taken = count.min(self.capacity.saturating_sub(waiting));
        if inner.stopping.load(Ordering::Relaxed) || key_bytes > self.capacity.saturating_mul(KEY_BYTES_PER_EVENT) {
            taken = 0;
        }
        batch.reads.truncate(taken);
        if taken > 0 {
            // Counted before it is sent: the engine's thread takes it off.
            let key_bytes = batch.keys.len();
            inner.queued.fetch_add(taken, Ordering::Relaxed);
            inner.queued_key_bytes.fetch_add(key_bytes, Ordering::Relaxed);
            if self.sender.send(batch).is_err() {
                inner.queued.fetch_sub(taken, Ordering::Relaxed);
                inner.queued_key_bytes.fetch_sub(key_bytes, Ordering::Relaxed);
                taken = 0;
            }
        }
        stats.events.fetch_add(taken as u64, Ordering::Relaxed);
        if taken < count {
            stats.dropped.fetch_add((count - taken) as u64, Ordering::Relaxed);
        }
    }

    /// Counts `offered` reads in the measuring window; once the window is
    /// `TUNE_EVERY_MS` old, decides the sampling share from its rate and
    /// starts the next (on the request path, so the share follows the load
    /// within a window, whatever the engine's thread gets of the CPU).
    fn tune(&self, offered: u64, now: u64) {
        let inner = &self.inner;
        let budget = inner.budget.load(Ordering::Relaxed);
        if budget == 0 {
            return;
        }
        let start = inner.window_start_ms.load(Ordering::Relaxed);
        inner.window_offered.fetch_add(offered, Ordering::Relaxed);
        let elapsed = now.saturating_sub(start);
        if elapsed < TUNE_EVERY_MS
            || inner
                .window_start_ms
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        // Every read counted up to now is this window's (none lost to a
        // session counting meanwhile).
        let total = inner.window_offered.swap(0, Ordering::Relaxed);
        let rate = total as f64 * 1_000.0 / elapsed as f64;
        let shift = inner.shift.load(Ordering::Relaxed);
        inner.shift.store(next_shift(shift, rate, budget), Ordering::Relaxed);
    }

    /// An empty batch of reads with the sampler of now: an emptied one if
    /// one is at hand (never waited for), otherwise new.
    pub fn batch(&self) -> Reads {
        self.batch_like(0, 0)
    }

    fn batch_like(&self, key_bytes: usize, count: usize) -> Reads {
        let spare = match self.inner.spares.try_lock() {
            Ok(mut spares) => spares.pop(),
            Err(_) => None,
        };
        let mut batch = spare.unwrap_or_else(|| Reads {
            keys: Vec::with_capacity(key_bytes),
            reads: Vec::with_capacity(count),
            ..Reads::default()
        });
        batch.sampler = self.sampler();
        batch
    }

    pub fn stats(&self) -> &PatternStats {
        &self.inner.stats
    }

    /// Which keys to record reads of, now.
    pub fn sampler(&self) -> Sampler {
        Sampler {
            shift: self.inner.shift.load(Ordering::Relaxed),
        }
    }

    /// The share of keys learned now (1, 1/2, 1/4, ...).
    pub fn sampled_share(&self) -> f64 {
        1.0 / f64::from(1u32 << self.sampler().shift)
    }

    /// The reads-per-second budget (0 = none).
    pub fn budget(&self) -> u64 {
        self.inner.budget.load(Ordering::Relaxed)
    }

    /// Events waiting for the engine now.
    pub fn queued(&self) -> usize {
        self.inner.queued.load(Ordering::Relaxed)
    }

    pub fn max_keys(&self) -> usize {
        self.inner.max_keys
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
        let engine = self.inner.engine_for_query();
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

    /// The keys with at least `min_priority` that `keep` wants (the
    /// preloader: those predicted to be read soon), highest priority
    /// first, at most `count`. Walks every tracked key: call it off the
    /// event loop.
    pub fn due(&self, now_ms: u64, min_priority: u8, count: usize, keep: impl Fn(&Insight) -> bool) -> Vec<Insight> {
        let engine = self.inner.engine_for_query();
        let mut due = engine.ranked(
            now_ms,
            |_| true,
            |insight| insight.priority >= min_priority && keep(insight),
        );
        due.truncate(count);
        due
    }

    /// A new reads-per-second budget (`PROXY CONFIG SET
    /// patterns.max_events_per_sec`), kept from the next measuring window.
    pub fn set_budget(&self, budget: u64) {
        self.inner.budget.store(budget, Ordering::Relaxed);
    }

    /// A new least number of reads before a key is classified (`PROXY
    /// CONFIG SET patterns.min_access_count`): the next query uses it.
    pub fn set_min_accesses(&self, min_accesses: u64) {
        self.inner.min_accesses.store(min_accesses.max(1), Ordering::Relaxed);
    }

    /// What the engine says of one key now (enough accesses to say it).
    /// Takes the model's lock: call it off the event loop.
    pub fn insight(&self, db: u32, key: &[u8]) -> Option<Insight> {
        self.inner.engine_for_query().insight(db, key, self.now_ms())
    }

    /// Waits (at most `wait`) until the engine has recorded the reads sent
    /// before the call; false if it did not answer in time.
    pub fn recorded(&self, wait: Duration) -> bool {
        let (reply, answer) = mpsc::channel();
        lock(&self.inner.barriers).push(reply);
        match lock(&self.thread).as_ref() {
            Some(thread) if !thread.is_finished() => thread.thread().unpark(),
            _ => return false,
        }
        answer.recv_timeout(wait).is_ok()
    }

    /// Days the hourly load (and so the peak hours) was learned on.
    pub fn load_days(&self) -> u64 {
        self.inner.load_days.load(Ordering::Relaxed)
    }

    /// Client reads seen so far, learned from or not (the proxy's read load).
    pub fn reads_offered(&self) -> u64 {
        let stats = &self.inner.stats;
        stats.events.load(Ordering::Relaxed)
            + stats.dropped.load(Ordering::Relaxed)
            + stats.sampled_out.load(Ordering::Relaxed)
    }

    /// The global load per hour of the day and the peak hours, as of the
    /// last events recorded (never waits for the engine).
    pub fn peaks(&self) -> ([u64; 24], Vec<u8>) {
        lock(&self.inner.load).clone()
    }

    /// Saves the model now (after the events already waiting); the
    /// snapshot's size. Blocks until the engine's thread has written it.
    pub fn save(&self) -> Result<usize, String> {
        let stopped = || Err("the pattern engine has stopped".to_string());
        let (reply, answer) = mpsc::channel();
        lock(&self.inner.saves).push(reply);
        match lock(&self.thread).as_ref() {
            Some(thread) if !thread.is_finished() => thread.thread().unpark(),
            _ => return stopped(),
        }
        answer
            .recv_timeout(SAVE_WAIT)
            .unwrap_or_else(|_| Err("the pattern engine did not answer in time".to_string()))
    }

    /// Stops the engine: the events waiting are recorded, the model saved
    /// (when a state path is configured), the thread joined. Later events
    /// are dropped.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        let thread = lock(&self.thread).take();
        if let Some(thread) = thread {
            thread.thread().unpark();
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

/// Moves the calling thread to the idle scheduling class, where it runs
/// only on CPU time no other thread wants.
#[cfg(target_os = "linux")]
fn run_when_idle() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: with pid 0, sched_setscheduler changes the calling thread's
    // policy only; `param` is a valid sched_param for the call's duration.
    let result = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
    if result != 0 {
        tracing::debug!(
            "the pattern engine's thread keeps its priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn run_when_idle() {}

/// The engine's thread: records the events waiting, refreshes the
/// gauges, saves when asked and on schedule; when stopping, records the
/// last events, saves once more and ends.
fn run(inner: &Inner) {
    run_when_idle();
    // None: an interval too long to reach.
    let mut next_save = inner.clock.now().checked_add(inner.interval);
    let mut refreshed = Instant::now();
    loop {
        std::thread::park_timeout(DRAIN_EVERY);
        let stopping = inner.stopping.load(Ordering::Relaxed);
        // Taken before the drain: whoever waits sent its reads before this.
        let barriers = std::mem::take(&mut *lock(&inner.barriers));
        // A bug in recording must not end learning for good (nor leave a
        // SAVE waiting): it is logged, and the next round goes on.
        let recorded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.drain()));
        if recorded.is_err() {
            tracing::error!("the pattern engine failed recording a batch of reads; they are lost");
        }
        for waiting in barriers {
            let _ = waiting.send(());
        }
        if refreshed.elapsed() >= REFRESH_EVERY {
            let bytes = inner.engine().bytes();
            inner.stats.bytes.store(bytes as u64, Ordering::Relaxed);
            refreshed = Instant::now();
        }
        let saves = std::mem::take(&mut *lock(&inner.saves));
        for reply in saves {
            let _ = reply.send(inner.save());
        }
        if stopping {
            break;
        }
        if next_save.is_some_and(|at| inner.clock.now() >= at) {
            next_save = inner.clock.now().checked_add(inner.interval);
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
    // Saves asked for after the last look: the thread is gone.
    lock(&inner.saves).clear();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn config(state_path: &str) -> PatternsConfig {
        PatternsConfig {
            state_path: state_path.into(),
            queue_events: 100,
            min_access_count: 3,
            ..PatternsConfig::default()
        }
    }

    fn reads(key: &str, count: usize, at_ms: u64) -> Reads {
        let mut reads = Reads::default();
        for i in 0..count {
            reads.push(0, key.as_bytes(), at_ms + i as u64 * 60_000, Outcome::L2Hit, 200, 10);
        }
        reads
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
        // Nothing takes the events until the test says so.
        let patterns = Patterns::without_thread(&config(""), b':', Arc::new(ManualClock::default()));
        let mut first = reads("a:1", 60, 0);
        patterns.feed(&mut first);
        let mut second = reads("a:2", 60, 0);
        patterns.feed(&mut second);
        assert!(first.is_empty() && second.is_empty(), "taken or dropped, never kept");
        assert_eq!(patterns.stats().events.load(Ordering::Relaxed), 100);
        assert_eq!(patterns.stats().dropped.load(Ordering::Relaxed), 20);
        assert_eq!(patterns.queued(), 100);
        assert_eq!(patterns.inner.drain(), 100);
        assert_eq!(patterns.queued(), 0);
        let top = patterns.top(&Query {
            count: 10,
            namespace: None,
            min_priority: 1,
        });
        let accesses: Vec<(&[u8], u64)> = top.iter().map(|insight| (&insight.key[..], insight.accesses)).collect();
        assert_eq!(accesses, vec![(&b"a:1"[..], 60), (&b"a:2"[..], 40)]);
    }

    /// What the event loop asks (INFO's gauges, PEAKS, handing reads
    /// over) never waits for the model's lock, which a ranking or a
    /// snapshot holds for a while.
    #[test]
    fn readers_on_the_event_loop_never_wait_for_the_model() {
        let patterns = Arc::new(Patterns::without_thread(
            &config(""),
            b':',
            Arc::new(ManualClock::default()),
        ));
        let held = patterns.inner.engine();
        let asker = patterns.clone();
        let (done, finished) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = (asker.peaks(), asker.max_keys(), asker.queued(), asker.sampled_share());
            asker.feed(&mut reads("a:1", 5, 0));
            let _ = done.send(asker.queued());
        });
        let queued = finished
            .recv_timeout(Duration::from_secs(10))
            .expect("answered while the model is locked");
        assert_eq!(queued, 5);
        drop(held);
    }

    #[test]
    fn over_budget_the_engine_learns_a_fixed_share_of_keys_each_in_full() {
        // The shift fits the rate in the budget, and comes down only with
        // room to spare.
        assert_eq!(next_shift(0, 50_000.0, 100_000), 0);
        assert_eq!(next_shift(0, 150_000.0, 100_000), 1);
        assert_eq!(next_shift(0, 1_000_000.0, 100_000), 4);
        assert_eq!(
            next_shift(4, 170_000.0, 100_000),
            2,
            "85,000 at 1/2 is over 80% of the budget"
        );
        assert_eq!(next_shift(4, 150_000.0, 100_000), 1, "75,000 at 1/2 is not");
        assert_eq!(next_shift(1, 170_000.0, 100_000), 1, "170,000 at 1/1 does not");
        assert_eq!(next_shift(1, 90_000.0, 100_000), 1, "90,000 is over 80% of the budget");
        assert_eq!(next_shift(1, 70_000.0, 100_000), 0);
        assert_eq!(next_shift(3, 1e12, 100_000), MAX_SHIFT);
        assert_eq!(next_shift(5, 1e9, 0), 0, "no budget, no sampling");
        // A sampler keeps about 1 in 2^shift keys, always the same ones,
        // and a key kept at a higher shift is kept at every lower one.
        let keys: Vec<String> = (0..20_000).map(|i| format!("user:{i}")).collect();
        let kept = |shift: u32| -> Vec<&String> {
            keys.iter()
                .filter(|key| Sampler { shift }.keeps(key.as_bytes()))
                .collect()
        };
        assert_eq!(kept(0).len(), 20_000);
        let quarter = kept(2);
        assert!((4_500..5_500).contains(&quarter.len()), "{}", quarter.len());
        assert_eq!(kept(2), quarter, "the same keys every time");
        assert!(kept(3).iter().all(|key| quarter.contains(key)));
        let mut reads = Reads::new(Sampler { shift: 2 });
        for key in &keys {
            reads.push(0, key.as_bytes(), 0, Outcome::L2Hit, 0, 1);
        }
        assert_eq!(
            (reads.len(), reads.sampled_out as usize),
            (quarter.len(), 20_000 - quarter.len())
        );
        let patterns = Patterns::without_thread(&config(""), b':', Arc::new(ManualClock::default()));
        patterns.feed(&mut reads);
        assert_eq!(
            patterns.stats().sampled_out.load(Ordering::Relaxed) as usize,
            20_000 - quarter.len()
        );
    }

    #[test]
    fn the_share_follows_the_reads_offered_per_window() {
        let clock = ManualClock::default();
        let mut settings = config("");
        settings.queue_events = 1_000_000;
        settings.max_events_per_sec = 100_000;
        let patterns = Patterns::without_thread(&settings, b':', Arc::new(clock.clone()));
        let offer = |count: usize| {
            let mut batch = patterns.batch();
            for i in 0..count {
                batch.push(0, format!("k:{i}").as_bytes(), clock.unix_ms(), Outcome::L2Hit, 0, 1);
            }
            patterns.feed(&mut batch);
        };
        offer(1);
        assert_eq!(patterns.sampler().shift, 0);
        // 50,000 reads closing a window of 100 ms: 500,000 a second, of
        // which 1/8 fits 100,000.
        clock.advance(Duration::from_millis(100));
        offer(50_000);
        assert_eq!(patterns.sampler().shift, 3);
        assert_eq!(patterns.sampled_share(), 0.125);
        // Within a window, nothing changes.
        clock.advance(Duration::from_millis(50));
        offer(1);
        assert_eq!(patterns.sampler().shift, 3);
        // A quiet window: the share comes back (with room to spare).
        clock.advance(Duration::from_millis(50));
        offer(1);
        assert_eq!(patterns.sampler().shift, 0);
    }

    #[test]
    fn the_model_is_saved_on_stop_and_restored_and_a_bad_file_is_ignored() {
        let directory = std::env::temp_dir().join(format!("auracache-live-{}", std::process::id()));
        std::fs::create_dir_all(&directory).unwrap();
        let path = directory.join("patterns.snap");
        let path_text = path.to_str().unwrap();
        let clock = Arc::new(ManualClock::default());
        let patterns = Patterns::start(&config(path_text), b':', clock.clone());
        patterns.feed(&mut reads("user:1", 20, 1_000));
        patterns.feed(&mut reads("order:9", 5, 1_000));
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
        patterns.feed(&mut reads("k:1", 3, 0));
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
