//! The preloader (issue #8): every `preload.interval_minutes`, the keys the
//! pattern engine predicts are read before the next run (priority at least
//! `preload.priority_threshold`) and that L1 lacks, or holds too briefly,
//! are fetched through the shared pool and stored in L1 until the
//! predicted read is over (never beyond Redis's TTL).
//!
//! - **What**: [`Preload::plan`] turns the engine's predictions into
//!   fetches, each with the moment its L1 entry must last until.
//! - **When**: a quiet run also warms the keys of the peak hours right after
//!   it; a busy run (a learned peak hour, or more reads per second than
//!   `preload.busy_reads_per_sec`) fetches at most `preload.peak_share` of
//!   the clients' reads per second, and defers the rest.
//! - **How**: each fetch is one batch on a pooled connection (the hidden
//!   migration of a versioned key, the read, its `PTTL`), decoded as a
//!   client's read would be, and stored with a fill ticket: an invalidation
//!   racing it voids it, as it does a client's fill. At most
//!   `preload.max_concurrent` fetches are in flight.
//! - **Did it help**: L1 marks what the preloader stored and counts the
//!   first hit of each (`preload_hits`) and each dropped unused
//!   (`preload_waste`).

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, watch};

use crate::cache::{CacheKey, L1, NoPreload, Shape};
use crate::codec::Compression;
use crate::codec::strings::{self, Plan};
use crate::config::{Consistency, PreloadConfig};
use crate::keys::versions::MIGRATE_SCRIPT;
use crate::patterns::engine::Insight;
use crate::patterns::live::Patterns;
use crate::patterns::model::{Class, HOUR_MS};
use crate::patterns::report::Value;
use crate::protocol::{Command, Protocol};
use crate::session::Shared;
use crate::shutdown::Shutdown;

/// How often the schedule (and the load) is looked at.
const TICK: Duration = Duration::from_millis(100);
/// The read rate is measured over this long.
const LOAD_WINDOW: Duration = Duration::from_secs(1);
/// How long a run waits for the engine to record the reads already sent.
const RECORDED_WAIT: Duration = Duration::from_secs(5);
/// Calendar days with load before the learned peak hours are believed
/// (three: at least one whole day between the first and the last).
const MIN_LOAD_DAYS: u64 = 3;
/// Longest a single fetch may take before it counts as an error.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// What one run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Wall time (ms) the run started and how long it took.
    pub started_ms: u64,
    pub took_ms: u64,
    /// The run counted the proxy as busy (and paced its fetches).
    pub busy: bool,
    /// The clients' reads per second when it started.
    pub reads_per_sec: u64,
    /// Keys predicted to be read up to this wall time (ms) were selected.
    pub horizon_ms: u64,
    /// Predicted keys at or above the threshold, read before the horizon.
    pub selected: u64,
    /// Of those: held in L1 long enough already.
    pub already_cached: u64,
    /// Of those: held in L1, and made to last (no fetch needed).
    pub extended: u64,
    /// Of those: left for a later run, over `max_keys_per_run`.
    pub beyond_max_keys: u64,
    /// Fetched and stored in L1.
    pub fetched: u64,
    /// Absent in Redis (nil, or an empty hash).
    pub absent: u64,
    /// Announced on `preload.miss_channel`.
    pub announced: u64,
    /// Redis or the connection failed, or the reply could not be decoded.
    pub errors: u64,
    /// Not fetched: the run was busy and its rate left no room for them.
    pub deferred: u64,
    /// Not fetched, or not stored: not cacheable now (namespace not cached,
    /// invalidations not flowing, a write or a client's fill in flight, a
    /// read that does not migrate, a value larger than L1 keeps, a
    /// `ttl-only` key read further off than its TTL, a reply voided by a
    /// write, a type L1 does not keep).
    pub skipped: u64,
}

impl Report {
    fn add(&mut self, outcome: Fetched) {
        match outcome {
            Fetched::Stored => self.fetched += 1,
            Fetched::Absent { announced } => {
                self.absent += 1;
                self.announced += u64::from(announced);
            }
            Fetched::Skipped => self.skipped += 1,
            Fetched::Failed => self.errors += 1,
        }
    }
}

/// Totals since start, and the schedule.
#[derive(Debug, Default)]
pub struct PreloadStats {
    pub runs: AtomicU64,
    pub fetched: AtomicU64,
    pub absent: AtomicU64,
    pub errors: AtomicU64,
    pub deferred: AtomicU64,
    /// Wall time (ms) of the next scheduled run.
    pub next_run_ms: AtomicU64,
    /// Fetches in flight now, and the most at once since start.
    pub in_flight: AtomicUsize,
    pub max_in_flight: AtomicUsize,
}

impl PreloadStats {
    /// The totals back to zero (`PROXY STATS RESET`); the schedule stays.
    pub fn reset(&self) {
        for counter in [&self.runs, &self.fetched, &self.absent, &self.errors, &self.deferred] {
            counter.store(0, Ordering::Relaxed);
        }
        self.max_in_flight
            .store(self.in_flight.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The preloader as the rest of the proxy sees it: its schedule, its last
/// run, and a way to ask for a run now.
#[derive(Debug)]
pub struct Preload {
    /// Its settings; `PROXY CONFIG SET` changes them between runs.
    config: Mutex<PreloadConfig>,
    stats: PreloadStats,
    last: Mutex<Option<Report>>,
    wake: Notify,
    /// Runs asked for (`PROXY PRELOAD RUN`), numbered; and the highest
    /// number a finished run had seen asked for when it started.
    requested: AtomicU64,
    served: watch::Sender<u64>,
    /// The preloader's task has ended (the proxy is stopping).
    stopped: AtomicBool,
}

/// What the preloader's task works with.
pub struct Parts {
    pub shared: Arc<Shared>,
    pub l1: Arc<L1>,
    pub patterns: Arc<Patterns>,
}

/// One key to fetch.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetch {
    pub db: u32,
    pub key: Bytes,
    /// Wall time (ms) its entry must last until.
    pub until_ms: u64,
}

/// How one fetch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fetched {
    Stored,
    Absent { announced: bool },
    Skipped,
    Failed,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Preload {
    pub fn new(config: &PreloadConfig) -> Arc<Preload> {
        Arc::new(Preload {
            config: Mutex::new(config.clone()),
            stats: PreloadStats::default(),
            last: Mutex::new(None),
            wake: Notify::new(),
            requested: AtomicU64::new(0),
            served: watch::channel(0).0,
            stopped: AtomicBool::new(false),
        })
    }

    pub fn stats(&self) -> &PreloadStats {
        &self.stats
    }

    /// Its settings now.
    pub fn config(&self) -> PreloadConfig {
        lock(&self.config).clone()
    }

    /// New settings, from the next run on (a new interval from now).
    pub fn set_config(&self, config: PreloadConfig) {
        *lock(&self.config) = config;
        self.wake.notify_one();
    }

    /// The last run's report, if any has run.
    pub fn last(&self) -> Option<Report> {
        lock(&self.last).clone()
    }

    /// Runs now (after the run in progress, if any) and waits for it, at
    /// most `wait`; its report, or None if it did not finish in time.
    pub async fn run_now(&self, wait: Duration) -> Option<Report> {
        let mut served = self.served.subscribe();
        // Served by the first run that starts after this.
        let wanted = self.requested.fetch_add(1, Ordering::AcqRel) + 1;
        self.wake.notify_one();
        tokio::time::timeout(wait, served.wait_for(|served| *served >= wanted))
            .await
            .ok()?
            .ok()?;
        if self.stopped.load(Ordering::Acquire) {
            return None;
        }
        self.last()
    }

    /// Looks at the schedule now rather than at the next tick (a test's
    /// clock moved).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Runs finished so far.
    pub fn runs(&self) -> u64 {
        self.stats.runs.load(Ordering::Acquire)
    }

    /// What a run does with `insight`'s key, as of `now_ms`, for entries
    /// that must cover reads up to `horizon_ms`.
    pub fn choose(insight: &Insight, now_ms: u64, horizon_ms: u64, l1: &L1) -> Choice {
        let Some(next_ms) = expected_next(insight, now_ms).filter(|next| *next <= horizon_ms) else {
            return Choice::NotDue;
        };
        if insight.mean_size > l1.store.max_reply_bytes(insight.key.len()) {
            return Choice::TooLarge;
        }
        let rules = l1.store.namespaces().of(&insight.key).rules();
        let until_ms = covered_until(insight, next_ms, now_ms, horizon_ms, rules.ttl);
        let mut needed = Duration::from_millis(until_ms.saturating_sub(now_ms));
        if rules.consistency == Consistency::TtlOnly {
            // The namespace's TTL bounds its staleness: an entry cannot last
            // beyond it, so one fetched for a read further off is wasted.
            if Duration::from_millis(next_ms.saturating_sub(now_ms)) >= rules.ttl {
                return Choice::TooFar;
            }
            needed = needed.min(rules.ttl);
        }
        let held = [Shape::String, Shape::HashAll]
            .iter()
            .filter_map(|shape| l1.store.remaining(insight.db, &insight.key, shape))
            .max();
        if held.is_some_and(|held| held >= needed) {
            return Choice::Held;
        }
        Choice::Fetch(Fetch {
            db: insight.db,
            key: insight.key.clone(),
            until_ms,
        })
    }
}

/// What a run does with a predicted key.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    /// Not expected before the horizon (or at all).
    NotDue,
    /// L1 holds it long enough already.
    Held,
    /// In a `ttl-only` namespace, read later than its TTL could keep it.
    TooFar,
    /// Its values are larger than L1 keeps (as the engine saw them).
    TooLarge,
    Fetch(Fetch),
}

/// Overdue reads are still expected this many gaps after their time.
const OVERDUE_GAPS: u64 = 3;

/// When `insight`'s key is next expected to be read, from `now_ms` on. A
/// periodic or steady key's read that is overdue (a steady key's gaps vary:
/// a third of them are longer than the mean) is still expected, one gap on
/// from its time, then the next, up to [`OVERDUE_GAPS`] gaps late; after
/// that its rhythm is taken to be broken.
pub fn expected_next(insight: &Insight, now_ms: u64) -> Option<u64> {
    let next = insight.verdict.next_ms?;
    if next >= now_ms {
        return Some(next);
    }
    match insight.verdict.class {
        Class::Periodic | Class::Constant => {
            let gap = gap_of(insight, next).max(1);
            let late = now_ms - next;
            let gaps = late.div_ceil(gap);
            (gaps <= OVERDUE_GAPS).then(|| next.saturating_add(gaps * gap))
        }
        _ => None,
    }
}

/// A periodic key's period, a steady key's mean gap (its next read less
/// its last).
fn gap_of(insight: &Insight, next_ms: u64) -> u64 {
    insight
        .verdict
        .period_ms
        .unwrap_or_else(|| next_ms.saturating_sub(insight.last_ms))
}

/// Until when an entry for `insight`'s key must last, fetched at `now_ms`
/// in a run whose predictions reach `horizon_ms`: through the predicted
/// read (a daily key's hours; half a period or gap after a periodic or
/// steady key's next read), at least one L1 TTL past it, and, for a key read
/// more often than runs come, until one period past the horizon, when the
/// next run takes over.
pub fn covered_until(insight: &Insight, next_ms: u64, now_ms: u64, horizon_ms: u64, ttl: Duration) -> u64 {
    let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
    let through = match insight.verdict.class {
        Class::Daily => next_ms.saturating_add((insight.verdict.hours.len().max(1) as u64) * HOUR_MS),
        Class::Periodic | Class::Constant => {
            let gap = gap_of(insight, insight.verdict.next_ms.unwrap_or(next_ms)).max(1);
            let after_next = next_ms.saturating_add(gap / 2);
            if gap < horizon_ms.saturating_sub(now_ms) {
                after_next.max(horizon_ms.saturating_add(gap))
            } else {
                after_next
            }
        }
        Class::Burst | Class::Irregular => next_ms,
    };
    through.max(next_ms.saturating_add(ttl_ms))
}

/// The end of the hours from `horizon_ms` on that are peak hours (the
/// horizon itself when its hour is not one): a quiet run warms what the
/// coming peak will read, so the peak's own runs have little to do.
pub fn through_peaks(horizon_ms: u64, peaks: &[u8]) -> u64 {
    let mut end = horizon_ms;
    for _ in 0..24 {
        let hour = ((end / HOUR_MS) % 24) as u8;
        if !peaks.contains(&hour) {
            break;
        }
        end = (end / HOUR_MS + 1).saturating_mul(HOUR_MS);
    }
    end
}

/// The clients' reads per second, from the engine's count of reads offered,
/// over about the last second (real time: load is real).
struct Load {
    samples: VecDeque<(tokio::time::Instant, u64)>,
}

impl Load {
    fn new() -> Load {
        Load {
            samples: VecDeque::new(),
        }
    }

    fn sample(&mut self, reads: u64) {
        let now = tokio::time::Instant::now();
        self.samples.push_back((now, reads));
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= LOAD_WINDOW {
            self.samples.pop_front();
        }
    }

    fn per_sec(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(first), Some(last)) if last.0 > first.0 => {
                (last.1 - first.1) as f64 / last.0.duration_since(first.0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

/// Starts the preloader's task.
pub fn start(preload: Arc<Preload>, parts: Parts, shutdown: Shutdown) {
    tokio::spawn(run_loop(preload, Arc::new(parts), shutdown));
}

async fn run_loop(preload: Arc<Preload>, parts: Arc<Parts>, mut shutdown: Shutdown) {
    let mut interval = preload.config().interval();
    let mut interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
    // Scheduled on the monotonic clock (a wall clock stepped back does not
    // hold runs up); the wall time is for predictions and for reports.
    let mut next_at = parts.l1.store.now().checked_add(interval);
    preload
        .stats
        .next_run_ms
        .store(parts.patterns.now_ms().saturating_add(interval_ms), Ordering::Relaxed);
    let mut load = Load::new();
    load.sample(parts.patterns.reads_offered());
    loop {
        tokio::select! {
            _ = tokio::time::sleep(TICK) => {}
            _ = preload.wake.notified() => {}
            _ = shutdown.triggered() => break,
        }
        load.sample(parts.patterns.reads_offered());
        let now = parts.l1.store.now();
        let configured = preload.config().interval();
        if configured != interval {
            // Changed at run time: the next run one new interval from now.
            interval = configured;
            interval_ms = u64::try_from(interval.as_millis()).unwrap_or(u64::MAX);
            next_at = now.checked_add(interval);
            preload
                .stats
                .next_run_ms
                .store(parts.patterns.now_ms().saturating_add(interval_ms), Ordering::Relaxed);
        }
        let asked = preload.requested.load(Ordering::Acquire);
        let due = next_at.is_some_and(|at| now >= at);
        if asked <= *preload.served.borrow() && !due {
            continue;
        }
        let now_ms = parts.patterns.now_ms();
        next_at = now.checked_add(interval);
        let next_run = now_ms.saturating_add(interval_ms);
        preload.stats.next_run_ms.store(next_run, Ordering::Relaxed);
        // A bug in a run must not end preloading for good: it is logged,
        // and the next run goes on.
        let one = tokio::spawn({
            let (preload, parts, reads_per_sec) = (preload.clone(), parts.clone(), load.per_sec());
            async move { run(&preload, &parts, now_ms, next_run, reads_per_sec).await }
        });
        let abort = one.abort_handle();
        let report = tokio::select! {
            report = one => match report {
                Ok(report) => report,
                Err(error) => {
                    tracing::error!("a preload run failed: {error}");
                    Report { started_ms: now_ms, errors: 1, ..Report::default() }
                }
            },
            _ = shutdown.triggered() => {
                abort.abort();
                break;
            }
        };
        let stats = &preload.stats;
        stats.fetched.fetch_add(report.fetched, Ordering::Relaxed);
        stats.absent.fetch_add(report.absent, Ordering::Relaxed);
        stats.errors.fetch_add(report.errors, Ordering::Relaxed);
        stats.deferred.fetch_add(report.deferred, Ordering::Relaxed);
        tracing::debug!(?report, "preload run");
        *lock(&preload.last) = Some(report);
        stats.runs.fetch_add(1, Ordering::Release);
        preload.served.send_modify(|served| *served = (*served).max(asked));
    }
    // Whoever waits for a run gets no report: the proxy is stopping.
    preload.stopped.store(true, Ordering::Release);
    preload.served.send_replace(u64::MAX);
}

/// One run, at `now_ms`, the next one due at `next_run_ms`, with the
/// clients reading `reads_per_sec`.
async fn run(preload: &Arc<Preload>, parts: &Arc<Parts>, now_ms: u64, next_run_ms: u64, reads_per_sec: f64) -> Report {
    let config = &preload.config();
    let started = tokio::time::Instant::now();
    let mut report = Report {
        started_ms: now_ms,
        reads_per_sec: reads_per_sec as u64,
        ..Report::default()
    };
    let patterns = parts.patterns.clone();
    let threshold = config.priority_threshold;
    let max_keys = config.max_keys_per_run;
    // The predictions of the freshest model: the reads sent so far counted.
    let recorded = patterns.clone();
    let _ = tokio::task::spawn_blocking(move || recorded.recorded(RECORDED_WAIT)).await;
    // Peak hours mean something once a whole day's load has been seen.
    let (_, peaks) = patterns.peaks();
    let peaks = if patterns.load_days() >= MIN_LOAD_DAYS {
        peaks
    } else {
        Vec::new()
    };
    let hour = ((now_ms / HOUR_MS) % 24) as u8;
    report.busy =
        peaks.contains(&hour) || (config.busy_reads_per_sec > 0 && reads_per_sec > config.busy_reads_per_sec as f64);
    report.horizon_ms = if report.busy {
        next_run_ms
    } else {
        through_peaks(next_run_ms, &peaks)
    };
    let horizon = report.horizon_ms;
    let l1 = parts.l1.clone();
    // The keys to fetch, best first: those held long enough already do not
    // count against max_keys_per_run.
    let (fetches, counts) = tokio::task::spawn_blocking(move || {
        let (selected, held, skipped, wanted) = (Cell::new(0), Cell::new(0), Cell::new(0), Cell::new(0));
        let due = patterns.due(now_ms, threshold, max_keys, |insight| {
            let fetch = match Preload::choose(insight, now_ms, horizon, &l1) {
                Choice::NotDue => return false,
                Choice::Held => {
                    held.set(held.get() + 1);
                    false
                }
                Choice::TooFar | Choice::TooLarge => {
                    skipped.set(skipped.get() + 1);
                    false
                }
                Choice::Fetch(_) => {
                    wanted.set(wanted.get() + 1);
                    true
                }
            };
            selected.set(selected.get() + 1);
            fetch
        });
        // (Chosen again, for the ranked few only: the ranking sorts after
        // the filter, so the filter cannot keep its fetches in order.)
        let fetches: Vec<Fetch> = due
            .iter()
            .filter_map(|insight| match Preload::choose(insight, now_ms, horizon, &l1) {
                Choice::Fetch(fetch) => Some(fetch),
                _ => None,
            })
            .collect();
        let beyond = wanted.get() - fetches.len() as u64;
        (fetches, (selected.get(), held.get(), skipped.get(), beyond))
    })
    .await
    .unwrap_or_default();
    (
        report.selected,
        report.already_cached,
        report.skipped,
        report.beyond_max_keys,
    ) = counts;
    // What L1 holds already but not long enough is made to last, without
    // asking Redis (its entries are coherent, and capped by Redis's TTL).
    let store = &parts.l1.store;
    let store_now = store.now();
    let fetches: Vec<Fetch> = fetches
        .into_iter()
        .filter(|fetch| {
            let until = store_now + Duration::from_millis(fetch.until_ms.saturating_sub(now_ms));
            let extended = store.extend(fetch.db, &fetch.key, until);
            report.extended += u64::from(extended);
            !extended
        })
        .collect();
    // Busy: at most peak_share of the clients' reads per second.
    let rate = report.busy.then_some(config.peak_share * reads_per_sec);
    if rate.is_some_and(|rate| rate.is_nan() || rate < 1.0) {
        report.deferred = fetches.len() as u64;
        report.took_ms = started.elapsed().as_millis() as u64;
        return report;
    }
    // (At least one a second: checked above; finite, as reads are counted.)
    let gap = rate.map(|rate| Duration::from_secs_f64(1.0 / rate.min(1e9)));
    let permits = Arc::new(Semaphore::new(config.max_concurrent.clamp(1, Semaphore::MAX_PERMITS)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut pace = tokio::time::Instant::now();
    for (index, fetch) in fetches.into_iter().enumerate() {
        if let Some(gap) = gap {
            tokio::time::sleep_until(pace).await;
            pace += gap;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        let parts = parts.clone();
        let preload = preload.clone();
        let miss_channel = config.miss_channel.clone();
        let wanted = Duration::from_millis(fetch.until_ms.saturating_sub(now_ms));
        tasks.spawn(async move {
            let in_flight = InFlight::new(&preload.stats);
            let outcome = tokio::time::timeout(FETCH_TIMEOUT, fetch_one(&parts, &fetch, wanted, index, &miss_channel))
                .await
                .unwrap_or(Fetched::Failed);
            drop(in_flight);
            drop(permit);
            outcome
        });
        while let Some(done) = tasks.try_join_next() {
            report.add(done.unwrap_or(Fetched::Failed));
        }
    }
    while let Some(done) = tasks.join_next().await {
        report.add(done.unwrap_or(Fetched::Failed));
    }
    report.took_ms = started.elapsed().as_millis() as u64;
    report
}

/// A fetch counted in flight for as long as it lives (also when a run is
/// aborted at shutdown).
struct InFlight<'a>(&'a PreloadStats);

impl<'a> InFlight<'a> {
    fn new(stats: &'a PreloadStats) -> InFlight<'a> {
        let now = stats.in_flight.fetch_add(1, Ordering::AcqRel) + 1;
        stats.max_in_flight.fetch_max(now, Ordering::AcqRel);
        InFlight(stats)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Fetches one key into L1: a string with GET, a hash (GET answered
/// WRONGTYPE) with HGETALL; each with its PTTL, after the hidden migration
/// of a versioned key, on pooled connection `index` of the key's database.
async fn fetch_one(parts: &Parts, fetch: &Fetch, wanted: Duration, index: usize, miss_channel: &str) -> Fetched {
    if parts
        .shared
        .versions
        .as_ref()
        .is_some_and(|versions| versions.reads_unmigrated(&fetch.key))
    {
        // Such reads go to an old version in place: L1 does not fill them.
        return Fetched::Skipped;
    }
    let namespace = parts.l1.store.namespaces().of(&fetch.key);
    let wanted = match namespace.rules().consistency {
        // Without invalidations, the namespace's TTL is its staleness bound.
        Consistency::TtlOnly => wanted.min(namespace.rules().ttl),
        Consistency::Strict => wanted,
    };
    let pool = parts.shared.pools.get(fetch.db, Protocol::Resp2);
    let connection = match pool.connection(index as u64).await {
        Ok(connection) => connection,
        Err(_) => return Fetched::Failed,
    };
    for (read, shape) in [(&b"GET"[..], Shape::String), (&b"HGETALL"[..], Shape::HashAll)] {
        let ticket = match parts
            .l1
            .store
            .preload_ticket(&CacheKey::new(fetch.db, fetch.key.clone(), shape.clone()))
        {
            Ok(ticket) => ticket,
            Err(NoPreload::NotCached | NoPreload::Busy) => return Fetched::Skipped,
        };
        let client_args = vec![Bytes::copy_from_slice(read), fetch.key.clone()];
        let (args, migration) = match &parts.shared.versions {
            Some(versions) => match versions.rewrite(&client_args, false, fetch.db) {
                Ok(rewritten) => (
                    rewritten.args.unwrap_or_else(|| client_args.clone()),
                    rewritten.migration,
                ),
                Err(_) => return Fetched::Skipped,
            },
            None => (client_args.clone(), Default::default()),
        };
        let mut request = Vec::new();
        let mut replies = 2;
        if !migration.is_empty() {
            request.extend_from_slice(&migration.request(MIGRATE_SCRIPT));
            replies += 1;
        }
        request.extend_from_slice(Command::from_args(args.clone()).wire());
        request.extend_from_slice(&crate::session::pttl_request(&args[1]));
        let bytes = match connection.send(Bytes::from(request), replies).await.await {
            Ok(Ok(bytes)) => bytes,
            _ => return Fetched::Failed,
        };
        let starts = crate::session::frame_starts(&bytes, replies);
        if starts.len() != replies + 1 {
            return Fetched::Failed;
        }
        let frame = |at: usize| bytes.slice(starts[at]..starts[at + 1]);
        if !migration.is_empty() && !migration.count(&frame(0)) {
            return Fetched::Failed;
        }
        let value = frame(replies - 2);
        let pttl = frame(replies - 1);
        if value.starts_with(b"-WRONGTYPE") && shape == Shape::String {
            // Not a string: perhaps a hash.
            drop(ticket);
            continue;
        }
        if value.starts_with(b"-WRONGTYPE") {
            // A list, a set, ...: nothing L1 keeps.
            return Fetched::Skipped;
        }
        if value.first() == Some(&b'-') {
            return Fetched::Failed;
        }
        if value.as_ref() == b"$-1\r\n" || value.as_ref() == b"*0\r\n" {
            drop(ticket);
            let announced = !miss_channel.is_empty() && announce(&connection, miss_channel, fetch).await;
            return Fetched::Absent { announced };
        }
        let value = match &parts.shared.compression {
            Some(compression) => match decode(compression, &client_args, &value) {
                Ok(value) => value,
                Err(()) => return Fetched::Failed,
            },
            None => value,
        };
        return if parts.l1.complete_read_for(ticket, &value, &pttl, wanted) {
            Fetched::Stored
        } else {
            Fetched::Skipped
        };
    }
    // Neither a string nor a hash: nothing L1 keeps.
    Fetched::Skipped
}

/// The reply as the client would see it (compressed values decoded).
fn decode(compression: &Compression, client_args: &[Bytes], reply: &Bytes) -> Result<Bytes, ()> {
    let context = strings::Context {
        in_transaction: false,
        resp3: false,
        hashes: compression.hashes,
    };
    let mut encode = |key: &[u8], value: &[u8]| compression.encode(key, value);
    let Plan::Forward { decode: Some(how), .. } = strings::plan(client_args, context, &mut encode) else {
        return Ok(reply.clone());
    };
    let key = &client_args[1];
    let mut decode = |stored: &[u8]| compression.decode(key, stored);
    match strings::decode_reply(&how, reply, &mut decode) {
        Ok(Some(decoded)) => Ok(decoded),
        Ok(None) => Ok(reply.clone()),
        Err(_) => Err(()),
    }
}

/// PUBLISHes a key predicted but absent; database N > 0 on `<channel>:N`.
async fn announce(connection: &crate::upstream::UpstreamConnection, channel: &str, fetch: &Fetch) -> bool {
    let channel = if fetch.db == 0 {
        channel.to_string()
    } else {
        format!("{channel}:{}", fetch.db)
    };
    let request = Command::from_args(vec![
        Bytes::from_static(b"PUBLISH"),
        Bytes::from(channel),
        fetch.key.clone(),
    ]);
    matches!(
        connection.send(request.wire().clone(), 1).await.await,
        Ok(Ok(reply)) if reply.first() == Some(&b':')
    )
}

/// `PROXY PRELOAD STATUS` (and RUN's reply): the schedule, the last run,
/// the totals and L1's effectiveness counters, as a flat field/value array
/// in RESP2 and a map in RESP3.
pub fn status_reply(preload: &Preload, l1: &L1, now_ms: u64, protocol: Protocol) -> Bytes {
    let last = preload.last().unwrap_or_default();
    let ran = preload.last().is_some();
    let stats = &preload.stats;
    let next = stats.next_run_ms.load(Ordering::Relaxed);
    let l1_stats = l1.store.stats();
    let hits = l1_stats.preload_hits.load(Ordering::Relaxed);
    let waste = l1_stats.preload_waste.load(Ordering::Relaxed);
    let integer = |value: u64| Value::Integer(i64::try_from(value).unwrap_or(i64::MAX));
    let config = preload.config();
    let reply = Value::Map(vec![
        ("enabled", integer(1)),
        ("interval_secs", integer(config.interval().as_secs())),
        ("priority_threshold", integer(u64::from(config.priority_threshold))),
        ("max_concurrent", integer(config.max_concurrent as u64)),
        ("runs", integer(preload.runs())),
        ("last_run_ms", if ran { integer(last.started_ms) } else { Value::Nil }),
        ("last_run_took_ms", integer(last.took_ms)),
        ("last_run_busy", integer(u64::from(last.busy))),
        ("last_run_reads_per_sec", integer(last.reads_per_sec)),
        ("last_run_horizon_ms", integer(last.horizon_ms)),
        ("next_run_ms", integer(next)),
        (
            "next_run_in_s",
            Value::Integer(
                ((i128::from(next) - i128::from(now_ms)) / 1_000).clamp(i128::from(i64::MIN), i128::from(i64::MAX))
                    as i64,
            ),
        ),
        ("selected", integer(last.selected)),
        ("already_cached", integer(last.already_cached)),
        ("extended", integer(last.extended)),
        ("beyond_max_keys", integer(last.beyond_max_keys)),
        ("fetched", integer(last.fetched)),
        ("absent", integer(last.absent)),
        ("announced", integer(last.announced)),
        ("errors", integer(last.errors)),
        ("deferred", integer(last.deferred)),
        ("skipped", integer(last.skipped)),
        ("total_fetched", integer(stats.fetched.load(Ordering::Relaxed))),
        ("total_absent", integer(stats.absent.load(Ordering::Relaxed))),
        ("total_errors", integer(stats.errors.load(Ordering::Relaxed))),
        ("total_deferred", integer(stats.deferred.load(Ordering::Relaxed))),
        ("stored", integer(l1_stats.preloads.load(Ordering::Relaxed))),
        ("hits", integer(hits)),
        ("waste", integer(waste)),
        ("hit_rate", Value::Double(hit_rate(hits, waste))),
        (
            "max_in_flight",
            integer(stats.max_in_flight.load(Ordering::Relaxed) as u64),
        ),
    ]);
    reply.to_bytes(protocol)
}

/// Of the preloaded entries whose fate is known, the share hit at least once.
pub fn hit_rate(hits: u64, waste: u64) -> f64 {
    if hits + waste == 0 {
        0.0
    } else {
        hits as f64 / (hits + waste) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patterns::model::{DAY_MS, Verdict};

    fn insight(class: Class, next_ms: u64, last_ms: u64, period_ms: Option<u64>, hours: Vec<u8>) -> Insight {
        Insight {
            db: 0,
            key: Bytes::from_static(b"k"),
            accesses: 100,
            verdict: Verdict {
                class,
                predictability: 0.9,
                next_ms: Some(next_ms),
                period_ms,
                hours,
            },
            priority: 8,
            hourly: [0; 24],
            l1_hits: 0,
            l2_hits: 0,
            misses: 0,
            mean_latency_us: 0,
            mean_size: 0,
            last_ms,
        }
    }

    const NOW: u64 = 20_000 * DAY_MS + 17 * HOUR_MS;
    const MINUTE: u64 = 60_000;

    #[test]
    fn entries_cover_the_predicted_read_and_no_more_than_needed() {
        let ttl = Duration::from_secs(60);
        let horizon = NOW + 30 * MINUTE;
        // Daily, read in hours 18 and 19: through the end of hour 19.
        let daily = insight(Class::Daily, NOW + HOUR_MS, NOW - DAY_MS, None, vec![18, 19]);
        assert_eq!(
            covered_until(&daily, NOW + HOUR_MS, NOW, horizon, ttl),
            NOW + 3 * HOUR_MS
        );
        // Periodic, every 90 minutes (longer than runs come): half a period
        // past the read.
        let slow = insight(
            Class::Periodic,
            NOW + 10 * MINUTE,
            NOW - 80 * MINUTE,
            Some(90 * MINUTE),
            vec![],
        );
        assert_eq!(
            covered_until(&slow, NOW + 10 * MINUTE, NOW, horizon, ttl),
            NOW + 55 * MINUTE
        );
        // Every 5 minutes: until the next run has taken over, plus a period.
        let fast = insight(
            Class::Periodic,
            NOW + 2 * MINUTE,
            NOW - 3 * MINUTE,
            Some(5 * MINUTE),
            vec![],
        );
        assert_eq!(
            covered_until(&fast, NOW + 2 * MINUTE, NOW, horizon, ttl),
            horizon + 5 * MINUTE
        );
        // Steady, a read every ~4 minutes (its next read minus its last).
        let steady = insight(Class::Constant, NOW + MINUTE, NOW - 3 * MINUTE, None, vec![]);
        assert_eq!(
            covered_until(&steady, NOW + MINUTE, NOW, horizon, ttl),
            horizon + 4 * MINUTE
        );
        // Never less than one L1 TTL past the read.
        let long_ttl = Duration::from_secs(3 * 3600);
        assert_eq!(
            covered_until(&slow, NOW + 10 * MINUTE, NOW, horizon, long_ttl),
            NOW + 10 * MINUTE + 3 * HOUR_MS
        );
    }

    #[test]
    fn an_overdue_steady_read_is_still_expected_for_a_few_gaps() {
        // Every 10 minutes, due 5 minutes ago: expected 5 minutes on.
        let periodic = insight(
            Class::Periodic,
            NOW - 5 * MINUTE,
            NOW - 15 * MINUTE,
            Some(10 * MINUTE),
            vec![],
        );
        assert_eq!(expected_next(&periodic, NOW), Some(NOW + 5 * MINUTE));
        // Due 25 minutes ago: three gaps late at most.
        let late = insight(
            Class::Periodic,
            NOW - 25 * MINUTE,
            NOW - 35 * MINUTE,
            Some(10 * MINUTE),
            vec![],
        );
        assert_eq!(expected_next(&late, NOW), Some(NOW + 5 * MINUTE));
        let gone = insight(
            Class::Periodic,
            NOW - 31 * MINUTE,
            NOW - 41 * MINUTE,
            Some(10 * MINUTE),
            vec![],
        );
        assert_eq!(expected_next(&gone, NOW), None);
        // Steady: its gap is its next read less its last.
        let steady = insight(Class::Constant, NOW - MINUTE, NOW - 5 * MINUTE, None, vec![]);
        assert_eq!(expected_next(&steady, NOW), Some(NOW + 3 * MINUTE));
        // A daily key's overdue read is tomorrow's (the engine says so).
        let daily = insight(Class::Daily, NOW - MINUTE, NOW - DAY_MS, None, vec![16]);
        assert_eq!(expected_next(&daily, NOW), None);
        // On time: as predicted.
        assert_eq!(expected_next(&periodic, NOW - 6 * MINUTE), Some(NOW - 5 * MINUTE));
    }

    #[test]
    fn a_quiet_run_reaches_through_the_coming_peak() {
        let at_1730 = 20_000 * DAY_MS + 17 * HOUR_MS + 30 * MINUTE;
        // The next run falls in peak hour 18 (and 19): warm through them.
        assert_eq!(
            through_peaks(at_1730 + 30 * MINUTE, &[18, 19]),
            at_1730 + 30 * MINUTE + 2 * HOUR_MS
        );
        // No peak next: the horizon stays.
        assert_eq!(through_peaks(at_1730, &[18, 19]), at_1730);
        // Every hour a peak (a flat load never is, but be safe): one day at most.
        let all: Vec<u8> = (0..24).collect();
        assert!(through_peaks(at_1730, &all) <= at_1730 + DAY_MS);
    }

    #[test]
    fn the_hit_rate_counts_only_settled_preloads() {
        assert_eq!(hit_rate(0, 0), 0.0);
        assert_eq!(hit_rate(9, 1), 0.9);
    }
}
