//! The L1 store: ready-to-write replies in a sharded, byte-bounded
//! quick_cache, each with a deadline, plus the bookkeeping that keeps fills
//! honest (a fill that raced an invalidation is voided; concurrent misses
//! for one key share one fill).
//!
//! quick_cache has no notion of time, so every entry carries its deadline and
//! a lookup past it is a miss (and removes the entry); [`L1Store::sweep`]
//! removes expired entries that nobody asks for. quick_cache divides its
//! capacity among shards and silently refuses an entry heavier than a
//! shard's hot share, so the store picks the shard count from the largest
//! entry it will accept and refuses larger ones itself, visibly
//! ([`L1Stats::too_large`]).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quick_cache::sync::Cache;
use quick_cache::{DefaultHashBuilder, Lifecycle, OptionsBuilder, Weighter};
use std::sync::Mutex;

use super::Written;
use super::namespaces::{Membership, Namespace, Namespaces};
use crate::clock::Clock;
use crate::config::Consistency;
use crate::protocol::Protocol;

/// Bytes an entry costs beyond its key and replies: the slot and entry
/// structs, quick_cache's slot and hash table share.
pub const ENTRY_OVERHEAD: u64 = 128;
/// Bytes each cached reply of a key costs beyond its own bytes.
pub const SHAPE_OVERHEAD: u64 = 96;
/// Room for the key (and hash fields) beside a reply of the largest size.
const KEY_ALLOWANCE: u64 = 1024;
/// quick_cache admits an entry only up to this share of a shard's capacity
/// (its default hot allocation, 0.97, with a margin).
const SHARD_ENTRY_SHARE: f64 = 0.95;
/// A deadline this far off is never reached.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
/// Upper bound on shards: more buys nothing on a proxy with few threads.
const MAX_SHARDS: usize = 64;

/// Which read an entry answers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Shape {
    /// GET (and each key of an MGET).
    String,
    /// HGET (and each field of an HMGET).
    HashField(Bytes),
    /// HGETALL.
    HashAll,
}

impl Shape {
    /// The shape with its own copy of any bytes it names: a field read from
    /// a client's request shares that request's whole read buffer, which
    /// an entry would otherwise keep alive for as long as it lives.
    fn owned(&self) -> Shape {
        match self {
            Shape::HashField(field) => Shape::HashField(Bytes::copy_from_slice(field)),
            other => other.clone(),
        }
    }
}

/// What an entry is cached under: (database, key, read shape).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub db: u32,
    pub key: Bytes,
    pub shape: Shape,
}

impl CacheKey {
    pub fn new(db: u32, key: Bytes, shape: Shape) -> Self {
        Self { db, key, shape }
    }
}

/// A reply ready to write in either protocol. For most replies both are the
/// same bytes (one buffer, shared).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedReply {
    resp2: Bytes,
    resp3: Bytes,
}

impl CachedReply {
    pub fn new(resp2: Bytes, resp3: Bytes) -> Self {
        Self { resp2, resp3 }
    }

    /// One encoding that both protocols read the same way.
    pub fn same(bytes: Bytes) -> Self {
        Self {
            resp3: bytes.clone(),
            resp2: bytes,
        }
    }

    pub fn for_protocol(&self, protocol: Protocol) -> &Bytes {
        match protocol {
            Protocol::Resp2 => &self.resp2,
            Protocol::Resp3 => &self.resp3,
        }
    }

    /// Bytes held: a shared buffer counts once.
    fn bytes(&self) -> u64 {
        let shared = self.resp2.as_ptr() == self.resp3.as_ptr() && self.resp2.len() == self.resp3.len();
        (self.resp2.len() + if shared { 0 } else { self.resp3.len() }) as u64
    }
}

/// Where entries live: one per (database, key), holding every cached shape
/// of that key, so that invalidating a key is one removal per database.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Slot {
    db: u32,
    key: Bytes,
}

/// A slot looked up without building one (no reference counts touched).
/// Hashes exactly as [`Slot`] does: the database, then the key's bytes.
#[derive(Hash)]
struct SlotRef<'a> {
    db: u32,
    key: &'a [u8],
}

impl quick_cache::Equivalent<Slot> for SlotRef<'_> {
    fn equivalent(&self, slot: &Slot) -> bool {
        self.db == slot.db && self.key == slot.key.as_ref()
    }
}

/// A cached reply found by [`L1Store::hit`], borrowed from its entry.
#[derive(Debug)]
pub struct Hit {
    entry: Arc<EntryInner>,
    index: usize,
}

impl Hit {
    pub fn for_protocol(&self, protocol: Protocol) -> &Bytes {
        self.entry.shapes[self.index].reply.for_protocol(protocol)
    }
}

#[derive(Debug, Clone)]
struct Cached {
    shape: Shape,
    reply: CachedReply,
    deadline: Instant,
    /// The latest a deadline may be moved to: when the key expires in
    /// Redis, as its fill learned it (None: it has no expiry).
    limit: Option<Instant>,
    /// Set when the preloader brought the reply in (or made it last).
    preloaded: Option<Arc<PreloadMark>>,
}

impl Cached {
    /// A hit on this reply: the first on a preloaded one is counted.
    fn hit(&self, stats: &L1Stats) {
        if let Some(mark) = &self.preloaded
            && mark.unused.load(Ordering::Relaxed)
            && mark.unused.swap(false, Ordering::Relaxed)
        {
            stats.preload_hits.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A preloaded reply's fate: hit at least once, or dropped unused (expired,
/// evicted, invalidated or flushed), which is counted as waste when the
/// last entry holding it goes.
#[derive(Debug)]
struct PreloadMark {
    unused: AtomicBool,
    stats: Arc<L1Stats>,
}

impl Drop for PreloadMark {
    fn drop(&mut self) {
        if *self.unused.get_mut() {
            self.stats.preload_waste.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// quick_cache clones a value on every hit, so the entry sits behind an
/// `Arc`: a hit costs a reference count, not a copy.
#[derive(Debug, Clone)]
struct Entry(Arc<EntryInner>);

/// Every cached shape of one key, counted in its namespace while it lives.
#[derive(Debug)]
struct EntryInner {
    shapes: Box<[Cached]>,
    member: Membership,
}

impl Entry {
    /// Whether the entry is kept at `now`: a reply is live, or (in a
    /// namespace that serves stale while Redis is down) within that grace.
    fn kept_past(&self, now: Instant) -> bool {
        let grace = self.namespace().serve_stale();
        self.0.shapes.iter().any(|cached| cached.deadline + grace > now)
    }

    fn new(slot: &Slot, shapes: Vec<Cached>, namespace: Arc<Namespace>) -> Entry {
        let weight = entry_weight(slot, &shapes);
        Entry(Arc::new(EntryInner {
            shapes: shapes.into(),
            member: Membership::new(namespace, weight),
        }))
    }

    fn namespace(&self) -> &Arc<Namespace> {
        self.0.member.namespace()
    }
}

#[derive(Debug, Clone, Copy)]
struct EntryWeighter;

impl Weighter<Slot, Entry> for EntryWeighter {
    fn weight(&self, slot: &Slot, entry: &Entry) -> u64 {
        entry_weight(slot, &entry.0.shapes)
    }
}

fn entry_weight(slot: &Slot, shapes: &[Cached]) -> u64 {
    slot.key.len() as u64 + shapes.iter().map(shape_weight).sum::<u64>() + ENTRY_OVERHEAD
}

fn shape_weight(cached: &Cached) -> u64 {
    let field = match &cached.shape {
        Shape::HashField(field) => field.len() as u64 + SHAPE_OVERHEAD,
        Shape::String | Shape::HashAll => SHAPE_OVERHEAD,
    };
    field + cached.reply.bytes()
}

/// A reply of `max_entry_bytes`, with room for its key (and fields).
fn wanted_entry_weight(max_entry_bytes: u64) -> u64 {
    max_entry_bytes.saturating_add(ENTRY_OVERHEAD + SHAPE_OVERHEAD + KEY_ALLOWANCE)
}

/// The heaviest entry `cache` takes for `max_entry_bytes`: what quick_cache
/// really made of its capacity decides (it silently refuses an entry above
/// a shard's hot share).
fn heaviest_entry(max_entry_bytes: u64, cache: &EntryCache) -> u64 {
    let shard_share = (cache.shard_capacity() as f64 * SHARD_ENTRY_SHARE) as u64;
    wanted_entry_weight(max_entry_bytes).min(shard_share)
}

/// `max_bytes` rounded down to a whole share per shard (quick_cache
/// rounds each share up), so the shards never hold more than it.
fn within_shards(max_bytes: u64, shards: usize) -> u64 {
    let shards = shards.max(1) as u64;
    (max_bytes - max_bytes % shards).max(shards)
}

/// Counts evictions as quick_cache makes them.
#[derive(Debug, Clone)]
struct CountEvictions(Arc<L1Stats>);

/// The slot an insert stores: quick_cache hands the entry it replaces to
/// the eviction hook too, and that one was replaced, not evicted.
#[derive(Debug, Default)]
struct Inserting(Option<Slot>);

impl Lifecycle<Slot, Entry> for CountEvictions {
    type RequestState = Inserting;

    fn on_evict(&self, state: &mut Self::RequestState, slot: Slot, entry: Entry) {
        if state.0.as_ref() == Some(&slot) {
            return;
        }
        let shapes = entry.0.shapes.len() as u64;
        self.0.evictions.fetch_add(shapes, Ordering::Relaxed);
        entry.namespace().stats.evictions.fetch_add(shapes, Ordering::Relaxed);
    }
}

/// Counters of the L1 level (relaxed atomics; a snapshot is approximate).
#[derive(Debug, Default)]
pub struct L1Stats {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub fills: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub invalidations: AtomicU64,
    /// Fills dropped because an invalidation for their key came first.
    pub fills_voided: AtomicU64,
    /// Misses that waited for another client's fill instead of reading Redis.
    pub coalesced_waits: AtomicU64,
    /// Replies not stored because they exceed the largest entry accepted.
    pub too_large: AtomicU64,
    /// Replies the preloader stored; of those, the ones hit at least once,
    /// and the ones dropped unused (expired, evicted, invalidated).
    pub preloads: AtomicU64,
    pub preload_hits: AtomicU64,
    pub preload_waste: AtomicU64,
    /// Reads answered with a stale entry while Redis was down
    /// (`serve_stale_max_secs`).
    pub stale_served: AtomicU64,
}

impl L1Stats {
    /// Every counter back to zero (`PROXY STATS RESET`).
    pub fn reset(&self) {
        for counter in [
            &self.hits,
            &self.misses,
            &self.fills,
            &self.evictions,
            &self.expirations,
            &self.invalidations,
            &self.fills_voided,
            &self.coalesced_waits,
            &self.too_large,
            &self.preloads,
            &self.preload_hits,
            &self.preload_waste,
            &self.stale_served,
        ] {
            counter.store(0, Ordering::Relaxed);
        }
    }
}

/// Sizes of the store.
#[derive(Debug, Clone, Copy)]
pub struct L1Limits {
    /// Total bytes all entries may cost (key + reply + overhead).
    pub max_bytes: u64,
    /// Largest entry worth caching (a key's replies together).
    pub max_entry_bytes: u64,
    /// Expected number of entries (sizes the hash tables).
    pub estimated_entries: usize,
    /// Fill on a key's first miss rather than its second.
    pub fill_on_first_miss: bool,
}

/// Outcome of a lookup.
#[derive(Debug)]
pub enum Lookup {
    Hit(CachedReply),
    /// Nobody is filling this key: the caller should read Redis and then
    /// [`L1Store::complete`] (or [`L1Store::abandon`]) the ticket.
    Miss(FillTicket),
    /// Another client is reading this key from Redis; wait on the receiver
    /// (it yields the reply, or nothing if that fill was voided).
    Wait(tokio::sync::watch::Receiver<Option<Option<CachedReply>>>),
    /// Not to be cached now (first miss of the key, its namespace is not
    /// cached, or its invalidations are not flowing): read Redis as usual.
    Pass,
}

/// The right to fill one key, voided if the key is invalidated meanwhile.
/// Dropped unused (its batch failed, its client went away), it gives the
/// fill up, so waiters read Redis themselves and the key can fill again.
pub struct FillTicket {
    key: CacheKey,
    namespace: Arc<Namespace>,
    id: u64,
    /// When the miss was seen, before Redis was asked: a TTL Redis reports
    /// counts from a later instant, so counting from here never outlives it.
    started: Instant,
    fills: Arc<Mutex<Fills>>,
    settled: bool,
    /// Issued to the preloader: the reply is marked as preloaded.
    preload: bool,
}

/// Why the preloader may not fill a key now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoPreload {
    /// Its namespace is not cached, or invalidations are not flowing.
    NotCached,
    /// A write of it is on its way, or a client's fill is.
    Busy,
}

impl std::fmt::Debug for FillTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FillTicket")
            .field("key", &self.key)
            .field("id", &self.id)
            .finish()
    }
}

impl Drop for FillTicket {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let mut fills = lock(&self.fills);
        if fills.filling.get(&self.key).is_some_and(|fill| fill.id == self.id)
            && let Some(fill) = fills.filling.remove(&self.key)
        {
            drop(fills);
            fill.void();
        }
    }
}

/// Fills in flight, and writes through the proxy that Redis has not
/// answered yet, under one lock.
#[derive(Default)]
struct Fills {
    filling: HashMap<CacheKey, Fill, DefaultHashBuilder>,
    writing: WritesInFlight,
}

/// Writes sent to Redis and not yet answered, by what they may change.
/// While one covers a key, the key is neither filled nor waited for: a
/// fill could read the value from before the write and outlive it.
#[derive(Default)]
struct WritesInFlight {
    keys: HashMap<u32, HashMap<Bytes, usize, DefaultHashBuilder>, DefaultHashBuilder>,
    everywhere: HashMap<Bytes, usize, DefaultHashBuilder>,
    databases: HashMap<u32, usize, DefaultHashBuilder>,
    all: usize,
}

impl WritesInFlight {
    fn covers(&self, db: u32, key: &[u8]) -> bool {
        self.all > 0
            || self.databases.contains_key(&db)
            || self.everywhere.contains_key(key)
            || self.keys.get(&db).is_some_and(|keys| keys.contains_key(key))
    }

    fn add(&mut self, db: u32, written: &Written) {
        match written {
            Written::Nothing => {}
            Written::Keys(keys) => {
                let in_db = self.keys.entry(db).or_default();
                for key in keys {
                    *in_db.entry(key.clone()).or_default() += 1;
                }
            }
            Written::KeysEverywhere(keys) => {
                for key in keys {
                    *self.everywhere.entry(key.clone()).or_default() += 1;
                }
            }
            Written::Database => *self.databases.entry(db).or_default() += 1,
            Written::Everything => self.all += 1,
        }
    }

    fn remove(&mut self, db: u32, written: &Written) {
        fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize, DefaultHashBuilder>, key: K) {
            if let std::collections::hash_map::Entry::Occupied(mut count) = map.entry(key) {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
        match written {
            Written::Nothing => {}
            Written::Keys(keys) => {
                if let Some(in_db) = self.keys.get_mut(&db) {
                    for key in keys {
                        release(in_db, key.clone());
                    }
                    if in_db.is_empty() {
                        self.keys.remove(&db);
                    }
                }
            }
            Written::KeysEverywhere(keys) => {
                for key in keys {
                    release(&mut self.everywhere, key.clone());
                }
            }
            Written::Database => release(&mut self.databases, db),
            Written::Everything => self.all = self.all.saturating_sub(1),
        }
    }
}

fn lock(fills: &Mutex<Fills>) -> std::sync::MutexGuard<'_, Fills> {
    // A panic while holding the lock leaves the maps consistent (every
    // change is one insert or remove), so a poisoned lock is usable.
    fills.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FillTicket {
    /// The read being filled.
    pub fn shape(&self) -> &Shape {
        &self.key.shape
    }

    /// The namespace of the key being filled.
    pub fn namespace(&self) -> &Arc<Namespace> {
        &self.namespace
    }
}

struct Fill {
    id: u64,
    /// Waiters get `Some(reply)` or `Some(None)` when the fill ends.
    /// Made when the first waiter comes (most fills have none).
    done: Option<tokio::sync::watch::Sender<Option<Option<CachedReply>>>>,
}

impl Fill {
    fn void(self) {
        if let Some(done) = self.done {
            let _ = done.send(Some(None));
        }
    }
}

type EntryCache = Cache<Slot, Entry, EntryWeighter, DefaultHashBuilder, CountEvictions>;

/// The L1 store. Cheap to share (`Arc`).
pub struct L1Store {
    cache: EntryCache,
    namespaces: Arc<Namespaces>,
    /// How often keys were read lately: decides which misses fill.
    frequency: Frequency,
    /// Fill on a key's first miss (when its namespace has room).
    fill_on_first_miss: bool,
    fills: Arc<Mutex<Fills>>,
    next_fill: AtomicU64,
    /// The heaviest entry stored (from `max_entry_bytes` and a shard's
    /// share of `max_bytes`; [`L1Store::set_limits`] changes both).
    max_entry_weight: AtomicU64,
    /// Redis's `databases`: invalidations from Redis name keys, not databases.
    databases: AtomicU32,
    /// False while invalidations from Redis cannot be trusted to arrive (the
    /// tracking connection is down): nothing is stored then.
    accepting: AtomicBool,
    clock: Arc<dyn Clock>,
    stats: Arc<L1Stats>,
    /// `max_bytes` as set; the shards together hold at most this (each
    /// gets an equal whole share, rounded down).
    max_bytes: AtomicU64,
    /// Some namespace has `serve_stale_max_secs` (fixed at start-up).
    serves_stale: bool,
    /// Entries of serve-stale namespaces kept aside when invalidations
    /// stopped (the tracking connection went down): served only while Redis
    /// is down, dropped when tracking is back or a write through the proxy
    /// touches them.
    stale: Mutex<HashMap<Slot, Entry, DefaultHashBuilder>>,
}

impl std::fmt::Debug for L1Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L1Store")
            .field("entries", &self.cache.len())
            .field("weight", &self.cache.weight())
            .field("shards", &self.cache.num_shards())
            .finish()
    }
}

impl L1Store {
    pub fn new(limits: L1Limits, namespaces: Arc<Namespaces>, clock: Arc<dyn Clock>) -> L1Store {
        let stats = Arc::new(L1Stats::default());
        let wanted_entry_weight = wanted_entry_weight(limits.max_entry_bytes);
        // As many shards as keep the largest entry within one shard's share.
        let fitting = (limits.max_bytes as f64 * SHARD_ENTRY_SHARE / wanted_entry_weight as f64).floor() as usize;
        let shards = prev_power_of_two(fitting.clamp(1, MAX_SHARDS));
        let options = OptionsBuilder::new()
            .shards(shards)
            .estimated_items_capacity(limits.estimated_entries.max(16))
            .weight_capacity(within_shards(limits.max_bytes, shards))
            .build()
            .expect("valid cache options");
        let cache = Cache::with_options(
            options,
            EntryWeighter,
            DefaultHashBuilder::default(),
            CountEvictions(stats.clone()),
        );
        let namespaces_serve_stale = namespaces.serve_stale_anywhere();
        L1Store {
            max_entry_weight: AtomicU64::new(heaviest_entry(limits.max_entry_bytes, &cache)),
            frequency: Frequency::new(limits.estimated_entries),
            fill_on_first_miss: limits.fill_on_first_miss,
            namespaces,
            cache,
            fills: Arc::new(Mutex::new(Fills::default())),
            next_fill: AtomicU64::new(1),
            databases: AtomicU32::new(16),
            accepting: AtomicBool::new(true),
            clock,
            stats,
            max_bytes: AtomicU64::new(limits.max_bytes),
            serves_stale: namespaces_serve_stale,
            stale: Mutex::new(HashMap::default()),
        }
    }

    pub fn stats(&self) -> &Arc<L1Stats> {
        &self.stats
    }

    /// New byte bounds in the running store (`PROXY CONFIG SET
    /// memory_cache.max_bytes` / `max_entry_bytes`): a smaller `max_bytes`
    /// evicts at once down to it (quick_cache's eviction, counted as
    /// evictions, each entry leaving its namespace's counts as it goes);
    /// entries heavier than the new largest entry are dropped, counted as
    /// evictions too. The shard count stays as chosen at start-up, so a
    /// `max_bytes` far below the start-up one also caps the largest entry
    /// at a shard's share (`too_large` counts what that refuses).
    pub fn set_limits(&self, max_bytes: u64, max_entry_bytes: u64) {
        // Under the fills lock: a fill stores under the old largest entry
        // before the heavier entries are dropped, or under the new one.
        let _fills = self.lock_fills();
        self.cache
            .set_capacity(within_shards(max_bytes, self.cache.num_shards()));
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        let heaviest = heaviest_entry(max_entry_bytes, &self.cache);
        let before = self.max_entry_weight.swap(heaviest, Ordering::Relaxed);
        if heaviest < before {
            self.cache.retain(|slot, entry| {
                let fits = entry_weight(slot, &entry.0.shapes) <= heaviest;
                if !fits {
                    let shapes = entry.0.shapes.len() as u64;
                    self.stats.evictions.fetch_add(shapes, Ordering::Relaxed);
                    entry.namespace().stats.evictions.fetch_add(shapes, Ordering::Relaxed);
                }
                fits
            });
        }
    }

    /// The heaviest entry stored now (key, replies and overhead).
    fn max_entry_weight(&self) -> u64 {
        self.max_entry_weight.load(Ordering::Relaxed)
    }

    /// New namespace TTLs and entry bounds from `config` (`PROXY CONFIG
    /// SET memory_cache.default_ttl` / `size_per_namespace`, see
    /// [`Namespaces::reconfigure`]). A TTL applies to what is stored from
    /// now on; an entry bound at once: each namespace over its bound
    /// evicts its oldest keys down to it (one that had no bound kept no
    /// order, so its keys are listed first, oldest unknown).
    pub fn reconfigure(&self, config: &crate::config::Config) {
        // Under the fills lock, as fills make room: no fill sees half of it.
        let _fills = self.lock_fills();
        let newly_bounded = self.namespaces.reconfigure(config);
        if !newly_bounded.is_empty() {
            for namespace in &newly_bounded {
                namespace
                    .order
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clear();
            }
            for (slot, entry) in self.cache.iter() {
                if let Some(namespace) = newly_bounded
                    .iter()
                    .find(|namespace| Arc::ptr_eq(namespace, entry.namespace()))
                {
                    let mut order = namespace.order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    order.push_back((slot.db, slot.key));
                }
            }
        }
        for namespace in self.namespaces.all() {
            let max_entries = namespace.rules().max_entries;
            if max_entries > 0 {
                let mut order = namespace.order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                self.evict_oldest(&namespace, &mut order, max_entries);
            }
        }
    }

    /// Whether the store may keep what fills bring in namespaces that
    /// rely on Redis's invalidations. Either way those start empty: what
    /// was cached before tracking (re)started may be stale.
    pub fn set_accepting(&self, accepting: bool) {
        let mut fills = self.lock_fills();
        self.accepting.store(accepting, Ordering::Release);
        // Fills issued before this moment read Redis before it: void them.
        for (_, fill) in fills.filling.drain() {
            fill.void();
        }
        if self.serves_stale {
            let mut stale = self.lock_stale();
            if accepting {
                // Invalidations flow again, and may not cover what changed
                // while they did not: nothing kept aside is served.
                stale.clear();
            } else {
                for (slot, entry) in self.cache.iter() {
                    let namespace = entry.namespace();
                    if !namespace.serve_stale().is_zero() && namespace.rules().consistency == Consistency::Strict {
                        stale.insert(slot, entry);
                    }
                }
            }
        }
        self.cache
            .retain(|_, entry| entry.namespace().rules().consistency == Consistency::TtlOnly);
    }

    fn lock_stale(&self) -> std::sync::MutexGuard<'_, HashMap<Slot, Entry, DefaultHashBuilder>> {
        self.stale.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether some namespace may be served stale while Redis is down.
    pub fn serves_stale(&self) -> bool {
        self.serves_stale
    }

    /// For a read while Redis is down: the reply cached for `key` if its
    /// namespace serves stale and the reply is at most the namespace's
    /// `serve_stale_max_secs` past its deadline (an entry kept aside when
    /// invalidations stopped counts too), counted as served stale.
    pub fn stale(&self, key: &CacheKey) -> Option<CachedReply> {
        if !self.serves_stale {
            return None;
        }
        let slot = SlotRef {
            db: key.db,
            key: &key.key,
        };
        let now = self.clock.now();
        let usable = |entry: &Entry| {
            let grace = entry.namespace().serve_stale();
            if grace.is_zero() {
                return None;
            }
            let cached = entry.0.shapes.iter().find(|cached| cached.shape == key.shape)?;
            (cached.deadline + grace > now).then(|| cached.reply.clone())
        };
        let found = self.cache.peek(&slot).and_then(|entry| Some((usable(&entry)?, entry)));
        let found = found.or_else(|| {
            let stale = self.lock_stale();
            let entry = stale.get(&Slot {
                db: key.db,
                key: key.key.clone(),
            })?;
            Some((usable(entry)?, entry.clone()))
        });
        let (reply, entry) = found?;
        self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
        entry.namespace().stats.stale_served.fetch_add(1, Ordering::Relaxed);
        Some(reply)
    }

    /// Drops what was kept aside for serving stale that `keep` refuses.
    fn forget_stale(&self, keep: impl Fn(&Slot, &Entry) -> bool) {
        if self.serves_stale {
            self.lock_stale().retain(|slot, entry| keep(slot, entry));
        }
    }

    pub fn is_accepting(&self) -> bool {
        self.accepting.load(Ordering::Acquire)
    }

    /// Tells the store how many databases Redis has.
    pub fn set_databases(&self, databases: u32) {
        self.databases.store(databases.max(1), Ordering::Relaxed);
    }

    /// Keys with at least one cached reply.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    /// Bytes held, as weighed (keys + replies + overhead).
    pub fn bytes(&self) -> u64 {
        self.cache.weight()
    }

    /// The total byte bound.
    /// The byte bound as set (the shards' shares add up to at most this).
    pub fn capacity(&self) -> u64 {
        self.max_bytes.load(Ordering::Relaxed)
    }

    /// The shard count (fixed at start-up).
    pub fn shards(&self) -> usize {
        self.cache.num_shards()
    }

    /// The largest `max_entry_bytes` L1 can honour under `max_bytes`: an
    /// entry must fit in one shard's share, and the shard count is chosen
    /// at start-up.
    pub fn largest_entry_possible(&self, max_bytes: u64) -> u64 {
        let shards = self.cache.num_shards() as u64;
        let share = (within_shards(max_bytes, shards as usize) / shards) as f64 * SHARD_ENTRY_SHARE;
        (share as u64).saturating_sub(wanted_entry_weight(0))
    }

    /// The fast path: a live cached reply for (db, key, shape), if any,
    /// counted as a hit. Nothing is counted otherwise; call [`Self::lookup`].
    pub fn hit(&self, db: u32, key: &[u8], shape: &Shape) -> Option<Hit> {
        self.hit_at(db, key, shape, self.clock.now())
    }

    /// [`Self::hit`] as of `now`: a request read at `now` may be answered
    /// with what was live then (one clock read serves a pipeline).
    pub fn hit_at(&self, db: u32, key: &[u8], shape: &Shape, now: Instant) -> Option<Hit> {
        let Entry(entry) = self.cache.get(&SlotRef { db, key })?;
        let index = entry.shapes.iter().position(|cached| cached.shape == *shape)?;
        if entry.shapes[index].deadline <= now {
            return None;
        }
        entry.shapes[index].hit(&self.stats);
        self.stats.hits.fetch_add(1, Ordering::Relaxed);
        entry.member.namespace().stats.hits.fetch_add(1, Ordering::Relaxed);
        self.frequency.record(self.frequency.hash(db, key));
        Some(Hit { entry, index })
    }

    /// A cached reply for `key`, or what to do instead.
    pub fn lookup(&self, key: &CacheKey) -> Lookup {
        self.lookup_with(key, true)
    }

    /// A read that must not be answered from L1 (it has to take effect
    /// after commands still on their way to Redis): `Miss` if it should
    /// fill, else `Pass`; never `Hit` or `Wait`.
    pub fn lookup_to_fill(&self, key: &CacheKey) -> Lookup {
        self.lookup_with(key, false)
    }

    fn lookup_with(&self, key: &CacheKey, serve: bool) -> Lookup {
        let found = if serve {
            self.cache.get(&SlotRef {
                db: key.db,
                key: &key.key,
            })
        } else {
            None
        };
        let namespace = match found {
            Some(entry) => {
                let namespace = entry.namespace();
                let now = self.clock.now();
                if let Some(cached) = entry.0.shapes.iter().find(|cached| cached.shape == key.shape)
                    && cached.deadline > now
                {
                    cached.hit(&self.stats);
                    count(&self.stats, namespace, |stats| &stats.hits);
                    self.frequency.record(self.frequency.hash(key.db, &key.key));
                    return Lookup::Hit(cached.reply.clone());
                }
                self.remove_if_expired(key.db, &key.key, &entry, now);
                namespace.clone()
            }
            None => self.namespaces.of(&key.key),
        };
        count(&self.stats, &namespace, |stats| &stats.misses);
        if !namespace.rules().cacheable(self.accepting.load(Ordering::Acquire)) {
            return Lookup::Pass;
        }
        let mut fills = self.lock_fills();
        if fills.writing.covers(key.db, &key.key) {
            // A write of it is on its way: Redis answers this read.
            return Lookup::Pass;
        }
        if let Some(fill) = fills.filling.get_mut(key) {
            if !serve {
                return Lookup::Pass;
            }
            count(&self.stats, &namespace, |stats| &stats.coalesced_waits);
            let done = fill.done.get_or_insert_with(|| tokio::sync::watch::channel(None).0);
            return Lookup::Wait(done.subscribe());
        }
        if !self.admit(key, &namespace) {
            return Lookup::Pass;
        }
        Lookup::Miss(self.issue(&mut fills, key, namespace, false))
    }

    /// A fill ticket for `key`, recorded as in flight (under the fills lock).
    fn issue(&self, fills: &mut Fills, key: &CacheKey, namespace: Arc<Namespace>, preload: bool) -> FillTicket {
        let id = self.next_fill.fetch_add(1, Ordering::Relaxed);
        fills.filling.insert(key.clone(), Fill { id, done: None });
        FillTicket {
            key: key.clone(),
            namespace,
            id,
            started: self.clock.now(),
            fills: self.fills.clone(),
            settled: false,
            preload,
        }
    }

    /// The right to fill `key` for the preloader: no admission (the pattern
    /// engine chose the key), but the same guards as a client's fill (no
    /// write of it in flight, no other fill, invalidations flowing).
    pub fn preload_ticket(&self, key: &CacheKey) -> Result<FillTicket, NoPreload> {
        let namespace = self.namespaces.of(&key.key);
        if !namespace.rules().cacheable(self.accepting.load(Ordering::Acquire)) {
            return Err(NoPreload::NotCached);
        }
        let mut fills = self.lock_fills();
        if fills.writing.covers(key.db, &key.key) || fills.filling.contains_key(key) {
            return Err(NoPreload::Busy);
        }
        Ok(self.issue(&mut fills, key, namespace, true))
    }

    /// How long the cached reply for (db, key, shape) has left, if any.
    pub fn remaining(&self, db: u32, key: &[u8], shape: &Shape) -> Option<Duration> {
        let Entry(entry) = self.cache.get(&SlotRef { db, key })?;
        let cached = entry.shapes.iter().find(|cached| cached.shape == *shape)?;
        let now = self.clock.now();
        (cached.deadline > now).then(|| cached.deadline - now)
    }

    /// Whether a miss of `key` should fill (TinyLFU's admission): not on a
    /// key's first miss in the window (unless `fill_on_first_miss`), and,
    /// when its namespace is at its entry bound, only if the key has been
    /// read more often lately than the entry that would make room for it
    /// (which otherwise goes to the back of the line). Keys read once, and
    /// key spaces far larger than the bound, so cost Redis no fills.
    fn admit(&self, key: &CacheKey, namespace: &Namespace) -> bool {
        let hash = self.frequency.hash(key.db, &key.key);
        let seen = self.frequency.record(hash);
        if seen == 0 && !self.fill_on_first_miss {
            return false;
        }
        let max_entries = namespace.rules().max_entries;
        if max_entries == 0 || namespace.entries.load(Ordering::Relaxed) < max_entries {
            return true;
        }
        let mut order = namespace.order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some((db, victim)) = order.pop_front() else {
            return true;
        };
        let victim_frequency = self.frequency.estimate(self.frequency.hash(db, &victim));
        // Ties keep what is cached (so a key space read uniformly, every
        // counter saturated, does not churn).
        let admitted = (seen + 1).min(MAX_FREQUENCY) > victim_frequency;
        if admitted {
            order.push_front((db, victim));
        } else {
            order.push_back((db, victim));
        }
        admitted
    }

    /// Stores what Redis answered for a ticket's key, for at most `ttl`,
    /// unless the key was invalidated since the ticket was issued. Waiters
    /// get the reply either way (it is what Redis answered them too).
    /// Returns whether the reply was stored.
    pub fn complete(&self, ticket: FillTicket, reply: CachedReply, ttl: Duration) -> bool {
        self.complete_with(ticket, reply, Vec::new(), ttl, Some(ttl))
    }

    /// [`Self::complete`], storing `also` beside the ticket's reply, for as
    /// long (a hash's fields beside its HGETALL, from the same reply; left
    /// out if they would make the entry too large), and noting that the
    /// key lives at most `limit` in Redis (None: it has no expiry), which
    /// [`Self::extend`] keeps to.
    pub fn complete_with(
        &self,
        mut ticket: FillTicket,
        reply: CachedReply,
        mut also: Vec<(Shape, CachedReply)>,
        ttl: Duration,
        limit: Option<Duration>,
    ) -> bool {
        ticket.settled = true;
        let now = self.clock.now();
        // Copied: the key came from the client's request, and a slice of it
        // would keep the request's whole read buffer (16 KB or more) alive
        // with the entry, outside L1's byte bound.
        let slot = Slot {
            db: ticket.key.db,
            key: Bytes::copy_from_slice(&ticket.key.key),
        };
        let namespace = ticket.namespace.clone();
        // The insert happens under the lock invalidations take, so an
        // invalidation is either before it (and voided the fill) or after it
        // (and removes the entry).
        let mut fills = self.lock_fills();
        let fill = match fills.filling.get(&ticket.key) {
            Some(fill) if fill.id == ticket.id => fills.filling.remove(&ticket.key),
            _ => None,
        };
        let Some(fill) = fill else {
            drop(fills);
            count(&self.stats, &namespace, |stats| &stats.fills_voided);
            return false;
        };
        let existing = self.cache.get(&slot);
        let replaced =
            |cached: &Cached| cached.shape == ticket.key.shape || also.iter().any(|(shape, _)| *shape == cached.shape);
        let mut shapes: Vec<Cached> = existing
            .as_ref()
            .map(|entry| {
                entry
                    .0
                    .shapes
                    .iter()
                    .filter(|cached| cached.deadline > now && !replaced(cached))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        // (A TTL too long to add is as good as forever.)
        let deadline = ticket
            .started
            .checked_add(ttl)
            .or_else(|| ticket.started.checked_add(FOREVER))
            .unwrap_or(ticket.started);
        let limit = limit.map(|limit| ticket.started.checked_add(limit).unwrap_or(deadline));
        let cacheable = deadline > now && namespace.rules().cacheable(self.accepting.load(Ordering::Acquire));
        let kept = shapes.len();
        let cached = |shape: Shape, reply: CachedReply| Cached {
            shape,
            reply,
            deadline,
            limit,
            preloaded: None,
        };
        shapes.push(cached(ticket.key.shape.owned(), reply.clone()));
        let alone = entry_weight(&slot, &shapes);
        let extra: u64 = also
            .iter()
            .map(|(shape, reply)| shape_weight(&cached(shape.clone(), reply.clone())))
            .sum();
        let max_entry_weight = self.max_entry_weight();
        if alone + extra > max_entry_weight {
            also.clear();
        }
        shapes.extend(also.into_iter().map(|(shape, reply)| cached(shape.owned(), reply)));
        let fits = entry_weight(&slot, &shapes) <= max_entry_weight;
        let mut new_bet = false;
        if ticket.preload && cacheable && fits {
            // Preloaded again before any hit: the same bet, extended (one
            // waste at most); otherwise a new one.
            let unused = existing.as_ref().and_then(|entry| {
                entry
                    .0
                    .shapes
                    .iter()
                    .find(|cached| cached.shape == ticket.key.shape && cached.deadline > now)
                    .and_then(|cached| cached.preloaded.clone())
                    .filter(|mark| mark.unused.load(Ordering::Relaxed))
            });
            new_bet = unused.is_none();
            let mark = unused.unwrap_or_else(|| self.new_mark());
            for cached in &mut shapes[kept..] {
                cached.preloaded = Some(mark.clone());
            }
        }
        if cacheable && fits {
            let new_key = existing.is_none();
            drop(existing);
            if new_key {
                self.make_room(&namespace, &slot);
            }
            let entry = Entry::new(&slot, shapes, namespace.clone());
            self.insert(slot, entry);
        }
        drop(fills);
        if let Some(done) = fill.done {
            let _ = done.send(Some(Some(reply)));
        }
        if cacheable && fits {
            count(&self.stats, &namespace, |stats| &stats.fills);
            if new_bet {
                self.stats.preloads.fetch_add(1, Ordering::Relaxed);
            }
        } else if cacheable {
            count(&self.stats, &namespace, |stats| &stats.too_large);
        }
        cacheable && fits
    }

    fn new_mark(&self) -> Arc<PreloadMark> {
        Arc::new(PreloadMark {
            unused: AtomicBool::new(true),
            stats: self.stats.clone(),
        })
    }

    /// Makes every live reply of (db, key) last until `until` (each at most
    /// until its key expires in Redis, as its fill learned it), marked as
    /// preloaded: the preloader's way to keep what L1 holds for a predicted
    /// read without asking Redis again. Only in namespaces kept coherent
    /// by invalidations (a `ttl-only` one's TTL is its staleness bound),
    /// and not while a write or a fill of the key is in flight. Returns
    /// whether it did (a fetch now would last no longer: Redis's TTL
    /// caps both).
    pub fn extend(&self, db: u32, key: &[u8], until: Instant) -> bool {
        let fills = self.lock_fills();
        if fills.writing.covers(db, key) || fills.filling.keys().any(|fill| fill.db == db && fill.key == key) {
            return false;
        }
        let Some(Entry(entry)) = self.cache.get(&SlotRef { db, key }) else {
            return false;
        };
        let namespace = entry.member.namespace().clone();
        if namespace.rules().consistency != Consistency::Strict || !self.accepting.load(Ordering::Acquire) {
            return false;
        }
        let now = self.clock.now();
        let mut shapes: Vec<Cached> = entry
            .shapes
            .iter()
            .filter(|cached| cached.deadline > now)
            .cloned()
            .collect();
        if shapes.is_empty() {
            return false;
        }
        let unused = shapes.iter().find_map(|cached| {
            cached
                .preloaded
                .clone()
                .filter(|mark| mark.unused.load(Ordering::Relaxed))
        });
        let new_bet = unused.is_none();
        let mark = unused.unwrap_or_else(|| self.new_mark());
        for cached in &mut shapes {
            let deadline = cached.limit.map_or(until, |limit| limit.min(until));
            cached.deadline = cached.deadline.max(deadline);
            cached.preloaded = Some(mark.clone());
        }
        let slot = Slot {
            db,
            key: Bytes::copy_from_slice(key),
        };
        let replacement = Entry::new(&slot, shapes, namespace);
        drop(entry);
        self.insert(slot, replacement);
        drop(fills);
        if new_bet {
            self.stats.preloads.fetch_add(1, Ordering::Relaxed);
        }
        true
    }

    /// Keeps a namespace within its entry bound before `slot` joins it:
    /// evicts its oldest stored keys. Called under the fills lock.
    fn make_room(&self, namespace: &Namespace, slot: &Slot) {
        let max_entries = namespace.rules().max_entries;
        if max_entries == 0 {
            return;
        }
        let mut order = namespace.order.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        self.evict_oldest(namespace, &mut order, max_entries - 1);
        order.push_back((slot.db, slot.key.clone()));
        // Keys removed by other means stay listed until popped; when they
        // are most of the list, keep only the stored ones, once each.
        if order.len() as u64 > 2 * max_entries + 64 {
            let mut seen = std::collections::HashSet::new();
            let mut kept: std::collections::VecDeque<(u32, Bytes)> = order
                .drain(..)
                .rev()
                .filter(|(db, key)| {
                    self.cache.contains_key(&SlotRef { db: *db, key }) && seen.insert((*db, key.clone()))
                })
                .collect();
            kept.make_contiguous().reverse();
            *order = kept;
        }
    }

    /// Evicts a namespace's oldest stored keys (`order`, its list) until
    /// it holds at most `keep`. Called under the fills lock.
    fn evict_oldest(&self, namespace: &Namespace, order: &mut std::collections::VecDeque<(u32, Bytes)>, keep: u64) {
        while namespace.entries.load(Ordering::Relaxed) > keep {
            let Some((db, key)) = order.pop_front() else {
                break;
            };
            if let Some((_, entry)) = self.cache.remove(&SlotRef { db, key: &key }) {
                let shapes = entry.0.shapes.len() as u64;
                self.stats.evictions.fetch_add(shapes, Ordering::Relaxed);
                namespace.stats.evictions.fetch_add(shapes, Ordering::Relaxed);
            }
        }
    }

    /// Stores `entry` in `slot`; what it replaces is not an eviction.
    fn insert(&self, slot: Slot, entry: Entry) {
        let mut inserting = Inserting(Some(slot.clone()));
        self.cache.insert_with_lifecycle(slot, entry, &mut inserting);
    }

    fn lock_fills(&self) -> std::sync::MutexGuard<'_, Fills> {
        lock(&self.fills)
    }

    /// Gives up a fill (Redis failed): waiters are released to read Redis
    /// themselves. (Dropping the ticket does the same.)
    pub fn abandon(&self, ticket: FillTicket) {
        drop(ticket);
    }

    /// A write through the proxy is about to be sent: drops what it may
    /// change, and keeps the keys from being filled until [`Self::write_done`].
    pub fn write_started(&self, db: u32, written: &Written) {
        self.lock_fills().writing.add(db, written);
        self.invalidate_written(db, written);
    }

    /// Redis has answered a write (or its connection failed): drops again
    /// what a read racing it may have stored, and lets the keys fill again.
    pub fn write_done(&self, db: u32, written: &Written) {
        self.invalidate_written(db, written);
        self.lock_fills().writing.remove(db, written);
    }

    /// Drops what `written` may have changed in database `db`.
    pub fn invalidate_written(&self, db: u32, written: &Written) {
        match written {
            Written::Nothing => {}
            Written::Keys(keys) => keys.iter().for_each(|key| self.invalidate(db, key)),
            Written::KeysEverywhere(keys) => keys.iter().for_each(|key| self.invalidate_everywhere(key)),
            Written::Database => self.flush_db(db),
            Written::Everything => self.flush(),
        }
    }

    /// Drops every cached reply of `key` in `db` (a write through the proxy)
    /// and voids fills of it in flight.
    pub fn invalidate(&self, db: u32, key: &Bytes) {
        self.invalidate_where(key, Some(db));
    }

    /// Drops `key` in every database (Redis's invalidation messages do not
    /// name the database).
    pub fn invalidate_everywhere(&self, key: &Bytes) {
        self.invalidate_where(key, None);
    }

    fn invalidate_where(&self, key: &Bytes, db: Option<u32>) {
        let mut fills = self.lock_fills();
        let voided: Vec<CacheKey> = fills
            .filling
            .keys()
            .filter(|cached| cached.key == *key && db.is_none_or(|db| cached.db == db))
            .cloned()
            .collect();
        for cached in &voided {
            if let Some(fill) = fills.filling.remove(cached) {
                fill.void();
            }
        }
        let databases = match db {
            Some(db) => db..db + 1,
            None => 0..self.databases.load(Ordering::Relaxed),
        };
        for db in databases {
            self.cache.remove(&SlotRef { db, key });
        }
        self.forget_stale(|slot, _| slot.key != *key || db.is_some_and(|db| slot.db != db));
        drop(fills);
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        if let Some(namespace) = self.namespaces.find(key) {
            namespace.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Drops everything in `db` (FLUSHDB through the proxy).
    pub fn flush_db(&self, db: u32) {
        let mut fills = self.lock_fills();
        fills.filling.retain(|cached, _| cached.db != db);
        self.cache.retain(|slot, _| slot.db != db);
        self.forget_stale(|slot, _| slot.db != db);
        drop(fills);
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops everything (FLUSHALL, a null invalidation) and voids every
    /// fill in flight.
    pub fn flush(&self) {
        let mut fills = self.lock_fills();
        for (_, fill) in fills.filling.drain() {
            fill.void();
        }
        self.cache.clear();
        self.forget_stale(|_, _| false);
        drop(fills);
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
    }

    /// Drops every entry of the namespace `name` (`PROXY FLUSHL1 name`),
    /// and voids its fills in flight; returns how many keys were dropped.
    pub fn flush_namespace(&self, name: &str) -> usize {
        let mut fills = self.lock_fills();
        let voided: Vec<CacheKey> = fills
            .filling
            .keys()
            .filter(|cached| self.namespaces.of(&cached.key).name() == name)
            .cloned()
            .collect();
        for cached in &voided {
            if let Some(fill) = fills.filling.remove(cached) {
                fill.void();
            }
        }
        let dropped = AtomicUsize::new(0);
        self.cache.retain(|_, entry| {
            let keep = entry.namespace().name() != name;
            if !keep {
                dropped.fetch_add(1, Ordering::Relaxed);
            }
            keep
        });
        self.forget_stale(|_, entry| entry.namespace().name() != name);
        drop(fills);
        self.stats.invalidations.fetch_add(1, Ordering::Relaxed);
        dropped.into_inner()
    }

    /// Removes entries whose every reply has expired; returns how many.
    /// (An expired reply beside a live one is skipped by lookups and
    /// dropped by the next fill of that key.)
    pub fn sweep(&self) -> usize {
        let now = self.clock.now();
        let removed = std::sync::atomic::AtomicUsize::new(0);
        self.cache.retain(|_, entry| {
            let live = entry.kept_past(now);
            if !live {
                let shapes = entry.0.shapes.len();
                removed.fetch_add(shapes, Ordering::Relaxed);
                entry
                    .namespace()
                    .stats
                    .expirations
                    .fetch_add(shapes as u64, Ordering::Relaxed);
            }
            live
        });
        let removed = removed.into_inner();
        self.stats.expirations.fetch_add(removed as u64, Ordering::Relaxed);
        removed
    }

    /// Drops `entry` if none of its shapes is live any more (and it is
    /// still the key's entry), counting its expirations once: later lookups
    /// find nothing, and the sweep never sees it.
    fn remove_if_expired(&self, db: u32, key: &[u8], entry: &Entry, now: Instant) {
        if entry.kept_past(now) {
            return;
        }
        let removed = self
            .cache
            .remove_if(&SlotRef { db, key }, |current| Arc::ptr_eq(&current.0, &entry.0));
        if removed.is_some() {
            let shapes = entry.0.shapes.len() as u64;
            self.stats.expirations.fetch_add(shapes, Ordering::Relaxed);
            entry.namespace().stats.expirations.fetch_add(shapes, Ordering::Relaxed);
        }
    }

    /// The store's time.
    pub fn now(&self) -> Instant {
        self.clock.now()
    }

    /// The namespaces of the cached keys.
    pub fn namespaces(&self) -> &Arc<Namespaces> {
        &self.namespaces
    }

    /// The largest reply (in bytes, for a key of `key_len` bytes) the store
    /// accepts as a key's only cached reply.
    pub fn max_reply_bytes(&self, key_len: usize) -> u64 {
        self.max_entry_weight()
            .saturating_sub(ENTRY_OVERHEAD + SHAPE_OVERHEAD + key_len as u64)
    }
}

/// Adds one to a counter in the totals and in the key's namespace.
fn count(total: &L1Stats, namespace: &Namespace, counter: impl Fn(&L1Stats) -> &AtomicU64) {
    counter(total).fetch_add(1, Ordering::Relaxed);
    counter(&namespace.stats).fetch_add(1, Ordering::Relaxed);
}

/// How often keys were read lately, approximately (a count-min sketch of
/// 4-bit counters, TinyLFU's): four counters per key, the smallest is the
/// estimate; every counter is halved after `10 x counters` reads, so old
/// popularity fades. Updates are plain loads and stores: a lost increment
/// under a race only makes an estimate a little low.
struct Frequency {
    counters: Box<[AtomicU8]>,
    reads: AtomicUsize,
    hasher: DefaultHashBuilder,
}

const MAX_FREQUENCY: u8 = 15;

impl Frequency {
    fn new(estimated_entries: usize) -> Frequency {
        let size = (estimated_entries * 4).next_power_of_two().clamp(4096, 1 << 22);
        Frequency {
            counters: (0..size).map(|_| AtomicU8::new(0)).collect(),
            reads: AtomicUsize::new(0),
            hasher: DefaultHashBuilder::default(),
        }
    }

    fn hash(&self, db: u32, key: &[u8]) -> u64 {
        self.hasher.hash_one((db, key))
    }

    fn slots(&self, hash: u64) -> [usize; 4] {
        let mask = self.counters.len() - 1;
        let mixed = hash.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        [
            hash as usize,
            (hash >> 32) as usize,
            mixed as usize,
            (mixed >> 32) as usize,
        ]
        .map(|slot| slot & mask)
    }

    fn estimate(&self, hash: u64) -> u8 {
        self.slots(hash)
            .iter()
            .map(|&slot| self.counters[slot].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0)
    }

    /// Counts a read of `hash` (conservative update: only the smallest
    /// counters grow); returns the estimate before it.
    fn record(&self, hash: u64) -> u8 {
        let slots = self.slots(hash);
        let before = slots
            .iter()
            .map(|&slot| self.counters[slot].load(Ordering::Relaxed))
            .min()
            .unwrap_or(0);
        if before < MAX_FREQUENCY {
            for slot in slots {
                let counter = &self.counters[slot];
                if counter.load(Ordering::Relaxed) == before {
                    counter.store(before + 1, Ordering::Relaxed);
                }
            }
        }
        let reads = self.reads.load(Ordering::Relaxed) + 1;
        if reads >= self.counters.len() * 10 {
            for counter in self.counters.iter() {
                counter.store(counter.load(Ordering::Relaxed) / 2, Ordering::Relaxed);
            }
            self.reads.store(0, Ordering::Relaxed);
        } else {
            self.reads.store(reads, Ordering::Relaxed);
        }
        before
    }
}

fn prev_power_of_two(n: usize) -> usize {
    if n.is_power_of_two() {
        n
    } else {
        n.next_power_of_two() / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::Rules;
    use crate::clock::ManualClock;
    use std::collections::HashMap;

    fn store(max_bytes: u64, max_entry_bytes: u64) -> (L1Store, ManualClock) {
        let clock = ManualClock::default();
        let store = L1Store::new(
            L1Limits {
                max_bytes,
                max_entry_bytes,
                estimated_entries: 1000,
                fill_on_first_miss: true,
            },
            Arc::new(Namespaces::uniform(Rules::test_default())),
            Arc::new(clock.clone()),
        );
        (store, clock)
    }

    fn key(name: &str) -> CacheKey {
        CacheKey::new(0, Bytes::copy_from_slice(name.as_bytes()), Shape::String)
    }

    fn bulk(value: &[u8]) -> CachedReply {
        let mut bytes = format!("${}\r\n", value.len()).into_bytes();
        bytes.extend_from_slice(value);
        bytes.extend_from_slice(b"\r\n");
        CachedReply::same(Bytes::from(bytes))
    }

    fn fill(store: &L1Store, name: &str, value: &[u8], ttl: Duration) -> bool {
        match store.lookup(&key(name)) {
            Lookup::Miss(ticket) => store.complete(ticket, bulk(value), ttl),
            other => panic!("expected a miss, got {other:?}"),
        }
    }

    #[test]
    fn a_fill_is_a_hit_until_its_deadline() {
        let (store, clock) = store(1 << 20, 1024);
        assert!(fill(&store, "k", b"v", Duration::from_secs(60)));
        assert!(matches!(store.lookup(&key("k")), Lookup::Hit(reply) if reply == bulk(b"v")));
        clock.advance(Duration::from_millis(59_999));
        assert!(matches!(store.lookup(&key("k")), Lookup::Hit(_)));
        clock.advance(Duration::from_millis(1));
        let Lookup::Miss(ticket) = store.lookup(&key("k")) else {
            panic!("expired entries are misses");
        };
        store.abandon(ticket);
        assert_eq!(store.stats().expirations.load(Ordering::Relaxed), 1);
        // The lookup that found it expired dropped it: counted once.
        assert!(store.is_empty());
        let Lookup::Miss(ticket) = store.lookup(&key("k")) else {
            panic!("expired entries are misses");
        };
        store.abandon(ticket);
        assert_eq!(store.sweep(), 0);
        assert_eq!(store.stats().expirations.load(Ordering::Relaxed), 1);
    }

    /// A second shape of a key (its hash beside its string) re-stores the
    /// key's entry: quick_cache reports the entry replaced, which is no
    /// eviction.
    #[test]
    fn storing_another_shape_of_a_key_is_not_an_eviction() {
        let (store, _) = store(1 << 20, 1024);
        assert!(fill(&store, "k", b"v", Duration::from_secs(60)));
        let hash = CacheKey::new(0, Bytes::from_static(b"k"), Shape::HashAll);
        let Lookup::Miss(ticket) = store.lookup(&hash) else {
            panic!("the hash shape is not cached yet");
        };
        assert!(store.complete(ticket, bulk(b"h"), Duration::from_secs(60)));
        assert!(matches!(store.lookup(&key("k")), Lookup::Hit(_)));
        assert!(matches!(store.lookup(&hash), Lookup::Hit(_)));
        assert_eq!(store.stats().evictions.load(Ordering::Relaxed), 0);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn the_sweep_counts_each_expired_entry_once() {
        let (store, clock) = store(1 << 20, 1024);
        assert!(fill(&store, "a", b"1", Duration::from_secs(1)));
        assert!(fill(&store, "b", b"2", Duration::from_secs(60)));
        clock.advance(Duration::from_secs(1));
        assert_eq!(store.sweep(), 1);
        assert_eq!(store.sweep(), 0);
        assert_eq!(store.stats().expirations.load(Ordering::Relaxed), 1);
        assert!(matches!(store.lookup(&key("b")), Lookup::Hit(_)));
    }

    #[test]
    fn an_invalidation_during_a_fill_voids_it() {
        let (store, _) = store(1 << 20, 1024);
        let Lookup::Miss(ticket) = store.lookup(&key("k")) else {
            panic!("miss");
        };
        store.invalidate(0, &Bytes::from_static(b"k"));
        assert!(!store.complete(ticket, bulk(b"stale"), Duration::from_secs(60)));
        assert_eq!(store.stats().fills_voided.load(Ordering::Relaxed), 1);
        assert!(matches!(store.lookup(&key("k")), Lookup::Miss(_)));
    }

    #[tokio::test]
    async fn concurrent_misses_share_one_fill() {
        let (store, _) = store(1 << 20, 1024);
        let Lookup::Miss(ticket) = store.lookup(&key("k")) else {
            panic!("miss");
        };
        let Lookup::Wait(mut waiter) = store.lookup(&key("k")) else {
            panic!("the second miss waits");
        };
        store.complete(ticket, bulk(b"v"), Duration::from_secs(1));
        waiter.changed().await.unwrap();
        assert_eq!(*waiter.borrow(), Some(Some(bulk(b"v"))));
        assert_eq!(store.stats().coalesced_waits.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn invalidating_a_hash_drops_every_shape_of_it() {
        let (store, _) = store(1 << 20, 1024);
        let hash = Bytes::from_static(b"h");
        for shape in [Shape::HashAll, Shape::HashField(Bytes::from_static(b"f"))] {
            let cache_key = CacheKey::new(0, hash.clone(), shape);
            let Lookup::Miss(ticket) = store.lookup(&cache_key) else {
                panic!("miss");
            };
            assert!(store.complete(ticket, bulk(b"x"), Duration::from_secs(60)));
        }
        let other_db = CacheKey::new(1, hash.clone(), Shape::HashAll);
        let Lookup::Miss(ticket) = store.lookup(&other_db) else {
            panic!("miss");
        };
        assert!(store.complete(ticket, bulk(b"y"), Duration::from_secs(60)));
        store.invalidate(0, &hash);
        assert_eq!(store.len(), 1, "only database 1's entry is left");
        assert!(matches!(store.lookup(&other_db), Lookup::Hit(_)));
    }

    #[test]
    fn redis_invalidations_reach_every_database_and_every_shape() {
        let (store, _) = store(1 << 20, 1024);
        store.set_databases(4);
        let name = Bytes::from_static(b"k");
        for db in 0..4 {
            for shape in [Shape::String, Shape::HashField(Bytes::from_static(b"f"))] {
                let Lookup::Miss(ticket) = store.lookup(&CacheKey::new(db, name.clone(), shape)) else {
                    panic!("miss");
                };
                assert!(store.complete(ticket, bulk(b"v"), Duration::from_secs(60)));
            }
        }
        assert_eq!(store.len(), 4, "one entry per database holds both shapes");
        let Lookup::Miss(in_flight) = store.lookup(&CacheKey::new(2, name.clone(), Shape::HashAll)) else {
            panic!("miss");
        };
        store.invalidate_everywhere(&name);
        assert!(store.is_empty());
        assert!(!store.complete(in_flight, bulk(b"old"), Duration::from_secs(60)));
    }

    /// quick_cache silently refuses an entry heavier than a shard's share;
    /// the store sizes shards so that the largest accepted entry fits, and
    /// counts the larger ones it refuses.
    #[test]
    fn the_largest_accepted_entry_is_really_stored() {
        for (max_bytes, max_entry) in [(1 << 20, 64 * 1024), (256 * 1024, 200 * 1024), (64 << 20, 1 << 20)] {
            let (store, _) = store(max_bytes, max_entry);
            let largest = store.max_reply_bytes(3) as usize - 16;
            assert!(
                largest as u64 >= max_entry.min(max_bytes / 2),
                "{max_bytes}/{max_entry}: {largest}"
            );
            let value = vec![b'x'; largest];
            assert!(
                fill(&store, "big", &value, Duration::from_secs(60)),
                "{max_bytes}/{max_entry}"
            );
            assert!(
                matches!(store.lookup(&key("big")), Lookup::Hit(_)),
                "{max_bytes}/{max_entry}: an accepted entry is found again"
            );
            let too_big = vec![b'x'; store.max_reply_bytes(4) as usize + 1];
            assert!(!fill(&store, "huge", &too_big, Duration::from_secs(60)));
            assert_eq!(store.stats().too_large.load(Ordering::Relaxed), 1);
        }
    }

    #[test]
    fn memory_stays_within_the_bound() {
        let (store, _) = store(256 * 1024, 4096);
        for i in 0..5000 {
            fill(&store, &format!("key:{i}"), &[b'v'; 500], Duration::from_secs(60));
            assert!(store.bytes() <= store.capacity(), "after {i}: {}", store.bytes());
        }
        assert!(store.stats().evictions.load(Ordering::Relaxed) > 0);
        assert!(store.len() < 5000);
    }

    #[test]
    fn sweep_removes_expired_entries_nobody_asks_for() {
        let (store, clock) = store(1 << 20, 1024);
        fill(&store, "short", b"v", Duration::from_secs(1));
        fill(&store, "long", b"v", Duration::from_secs(100));
        clock.advance(Duration::from_secs(2));
        assert_eq!(store.sweep(), 1);
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn flush_empties_and_voids_fills() {
        let (store, _) = store(1 << 20, 1024);
        fill(&store, "a", b"v", Duration::from_secs(60));
        let Lookup::Miss(ticket) = store.lookup(&key("b")) else {
            panic!("miss");
        };
        store.flush();
        assert!(store.is_empty());
        assert!(!store.complete(ticket, bulk(b"v"), Duration::from_secs(60)));
    }

    fn store_in(namespaces: Namespaces, fill_on_first_miss: bool) -> L1Store {
        L1Store::new(
            L1Limits {
                max_bytes: 1 << 20,
                max_entry_bytes: 1024,
                estimated_entries: 1000,
                fill_on_first_miss,
            },
            Arc::new(namespaces),
            Arc::new(ManualClock::default()),
        )
    }

    fn fill_key(store: &L1Store, name: &str) -> bool {
        match store.lookup(&key(name)) {
            Lookup::Miss(ticket) => store.complete(ticket, bulk(b"v"), Duration::from_secs(60)),
            _ => false,
        }
    }

    fn rules(max_entries: u64, consistency: Consistency) -> Rules {
        Rules {
            max_entries,
            consistency,
            ..Rules::test_default()
        }
    }

    /// (A newcomer read as often as the oldest entry waits for its next
    /// read: ties keep what is cached.)
    #[test]
    fn each_namespace_keeps_at_most_its_entry_bound_oldest_out_first() {
        let configured = HashMap::from([(Bytes::from_static(b"small"), rules(3, Consistency::Strict))]);
        let store = store_in(
            Namespaces::new(b':', 16, rules(100, Consistency::Strict), configured),
            true,
        );
        for i in 0..5 {
            let name = format!("small:{i}");
            assert!(fill_key(&store, &name) || fill_key(&store, &name), "{name}");
            assert!(fill_key(&store, &format!("big:{i}")));
        }
        let small = store.namespaces().of(b"small:x");
        assert_eq!(small.entries.load(Ordering::Relaxed), 3);
        assert_eq!(small.stats.evictions.load(Ordering::Relaxed), 2);
        assert!(store.hit(0, b"small:4", &Shape::String).is_some());
        assert!(
            store.hit(0, b"small:0", &Shape::String).is_none(),
            "the oldest went first"
        );
        assert_eq!(store.namespaces().of(b"big:x").entries.load(Ordering::Relaxed), 5);
        // Re-filling a key that is still cached does not count twice.
        store.invalidate(0, &Bytes::from_static(b"small:4"));
        for _ in 0..100 {
            assert!(fill_key(&store, "small:4"));
            store.invalidate(0, &Bytes::from_static(b"small:4"));
        }
        assert!(
            small.order.lock().unwrap().len() <= 2 * 3 + 64,
            "the order list stays bounded"
        );
    }

    /// `PROXY CONFIG SET memory_cache.size_per_namespace`: a lower bound
    /// evicts the oldest keys at once, and a namespace that had none (so
    /// kept no order) is brought within its new one too.
    #[test]
    fn a_lowered_entry_bound_evicts_at_once_even_from_an_unbounded_namespace() {
        let mut config = crate::config::Config::default();
        config.memory_cache.size_per_namespace = 0;
        config.namespaces.insert(
            "small".into(),
            crate::config::NamespaceConfig {
                memory_cache_size: Some(5),
                ..Default::default()
            },
        );
        let store = store_in(Namespaces::from_config(&config), true);
        for i in 0..5 {
            assert!(fill_key(&store, &format!("small:{i}")));
            assert!(fill_key(&store, &format!("wide:{i}")));
        }
        config.memory_cache.size_per_namespace = 2;
        config.namespaces.get_mut("small").unwrap().memory_cache_size = Some(3);
        store.reconfigure(&config);
        let (small, wide) = (store.namespaces().of(b"small:"), store.namespaces().of(b"wide:"));
        assert_eq!(small.entries.load(Ordering::Relaxed), 3);
        assert!(
            store.hit(0, b"small:0", &Shape::String).is_none(),
            "the oldest went first"
        );
        assert!(store.hit(0, b"small:4", &Shape::String).is_some());
        assert_eq!(wide.entries.load(Ordering::Relaxed), 2);
        assert_eq!(wide.stats.evictions.load(Ordering::Relaxed), 3);
        assert_eq!(store.len(), 5);
        // And it stays bounded as keys keep coming (read often enough to
        // be admitted into a full namespace).
        for i in 5..10 {
            let name = format!("wide:{i}");
            assert!((0..12).any(|_| fill_key(&store, &name)), "{name}");
            assert_eq!(wide.entries.load(Ordering::Relaxed), 2);
        }
        assert!(store.hit(0, b"wide:9", &Shape::String).is_some());
    }

    /// `PROXY CONFIG SET memory_cache.max_bytes` / `max_entry_bytes`: the
    /// bound shrinks at once (evictions counted, namespace bytes still the
    /// store's), and an entry larger than the new largest goes and is no
    /// longer stored.
    #[test]
    fn lowered_byte_bounds_evict_at_once_and_keep_the_counts() {
        let (store, _) = store(1 << 20, 8192);
        for i in 0..300 {
            fill(&store, &format!("n:{i}"), &[b'v'; 3000], Duration::from_secs(60));
        }
        let namespace = store.namespaces().of(b"n:");
        let before = store.bytes();
        assert!(before > 256 * 1024, "{before}");
        store.set_limits(256 * 1024, 8192);
        assert!(store.bytes() <= 256 * 1024, "{}", store.bytes());
        assert_eq!(store.capacity(), 256 * 1024);
        assert_eq!(namespace.bytes.load(Ordering::Relaxed), store.bytes());
        assert_eq!(namespace.entries.load(Ordering::Relaxed), store.len() as u64);
        assert!(!store.is_empty());
        assert!(store.stats().evictions.load(Ordering::Relaxed) > 0);
        store.set_limits(256 * 1024, 1000);
        assert_eq!(store.len(), 0, "every 3000-byte value is above the new largest");
        assert_eq!(namespace.bytes.load(Ordering::Relaxed), 0);
        assert!(!fill(&store, "n:big", &[b'v'; 3000], Duration::from_secs(60)));
        assert!(fill(&store, "n:small", &[b'v'; 900], Duration::from_secs(60)));
    }

    #[test]
    fn namespace_counters_add_up_to_the_totals() {
        let store = store_in(Namespaces::uniform(Rules::test_default()), true);
        fill_key(&store, "a:1");
        fill_key(&store, "a:2");
        fill_key(&store, "b:1");
        store.hit(0, b"a:1", &Shape::String).unwrap();
        let (a, b) = (store.namespaces().of(b"a:"), store.namespaces().of(b"b:"));
        assert_eq!(a.stats.misses.load(Ordering::Relaxed), 2);
        assert_eq!(a.stats.hits.load(Ordering::Relaxed), 1);
        assert_eq!(b.stats.fills.load(Ordering::Relaxed), 1);
        assert_eq!(
            a.bytes.load(Ordering::Relaxed) + b.bytes.load(Ordering::Relaxed),
            store.bytes(),
            "namespace bytes are the store's bytes"
        );
        store.invalidate(0, &Bytes::from_static(b"a:1"));
        assert_eq!(a.entries.load(Ordering::Relaxed), 1);
        assert_eq!(a.stats.invalidations.load(Ordering::Relaxed), 1);
        store.flush();
        assert_eq!(a.entries.load(Ordering::Relaxed) + b.entries.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_key_is_filled_on_its_second_miss_unless_told_otherwise() {
        let store = store_in(Namespaces::uniform(Rules::test_default()), false);
        assert!(
            matches!(store.lookup(&key("once")), Lookup::Pass),
            "the first miss only counts"
        );
        assert!(fill_key(&store, "once"), "the second miss fills");
        assert!(store.hit(0, b"once", &Shape::String).is_some());
        // Popularity fades: after enough reads of others, k0 is new again.
        let touch = |name: &str| {
            if let Lookup::Miss(ticket) = store.lookup(&key(name)) {
                store.abandon(ticket);
            }
        };
        touch("k0");
        touch("other");
        while store.frequency.reads.load(Ordering::Relaxed) > 0 {
            touch("other");
        }
        assert!(matches!(store.lookup(&key("k0")), Lookup::Pass), "forgotten");
    }

    /// A namespace at its bound takes a key only if it is read more often
    /// than the entry that would leave: a hot set stays, a stream of
    /// one-off keys costs no fills.
    #[test]
    fn a_full_namespace_admits_only_keys_more_popular_than_its_oldest() {
        let configured = HashMap::from([(Bytes::from_static(b"ns"), rules(2, Consistency::Strict))]);
        let store = store_in(Namespaces::new(b':', 16, Rules::test_default(), configured), false);
        for hot in ["ns:a", "ns:b"] {
            let _ = store.lookup(&key(hot));
            assert!(fill_key(&store, hot));
            for _ in 0..5 {
                assert!(store.hit(0, hot.as_bytes(), &Shape::String).is_some());
            }
        }
        for i in 0..100 {
            let cold = format!("ns:cold{i}");
            assert!(matches!(store.lookup(&key(&cold)), Lookup::Pass));
            assert!(
                matches!(store.lookup(&key(&cold)), Lookup::Pass),
                "{cold} is less read than a and b"
            );
        }
        assert!(store.hit(0, b"ns:a", &Shape::String).is_some());
        assert!(store.hit(0, b"ns:b", &Shape::String).is_some());
        // A key read more than the hot ones gets in.
        let rising = key("ns:rising");
        let admitted = (0..15).any(|_| match store.lookup(&rising) {
            Lookup::Miss(ticket) => store.complete(ticket, bulk(b"v"), Duration::from_secs(60)),
            _ => false,
        });
        assert!(admitted, "a key read often enough is admitted");
        assert_eq!(store.namespaces().of(b"ns:").entries.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn ttl_only_namespaces_outlive_lost_invalidations_strict_ones_do_not() {
        let configured = HashMap::from([(Bytes::from_static(b"feed"), rules(0, Consistency::TtlOnly))]);
        let store = store_in(Namespaces::new(b':', 16, Rules::test_default(), configured), true);
        assert!(fill_key(&store, "feed:1"));
        assert!(fill_key(&store, "user:1"));
        store.set_accepting(false);
        assert!(store.hit(0, b"feed:1", &Shape::String).is_some());
        assert!(store.hit(0, b"user:1", &Shape::String).is_none());
        assert!(
            matches!(store.lookup(&key("user:1")), Lookup::Pass),
            "strict keys are not filled"
        );
        assert!(fill_key(&store, "feed:2"));
        // Writes through the proxy still invalidate ttl-only keys.
        store.invalidate(0, &Bytes::from_static(b"feed:1"));
        assert!(store.hit(0, b"feed:1", &Shape::String).is_none());
    }

    #[test]
    fn a_namespace_with_ttl_zero_is_not_cached() {
        let configured = HashMap::from([(
            Bytes::from_static(b"live"),
            Rules {
                ttl: Duration::ZERO,
                ..Rules::test_default()
            },
        )]);
        let store = store_in(Namespaces::new(b':', 16, Rules::test_default(), configured), true);
        assert!(matches!(store.lookup(&key("live:1")), Lookup::Pass));
        assert!(fill_key(&store, "other:1"));
    }

    /// Entries of a serve-stale namespace are kept aside when invalidations
    /// stop, served by `stale` within the grace past their deadline, and
    /// dropped by a write of the key or when invalidations flow again.
    #[test]
    fn stale_entries_are_kept_aside_until_invalidations_flow_again() {
        let stale_rules = Rules {
            serve_stale: Duration::from_secs(30),
            ..Rules::test_default()
        };
        let configured = HashMap::from([(Bytes::from_static(b"keep"), stale_rules)]);
        let store = store_in(Namespaces::new(b':', 16, Rules::test_default(), configured), true);
        assert!(store.serves_stale());
        for name in ["keep:1", "keep:2", "other:1"] {
            assert!(fill_key(&store, name));
        }
        store.set_accepting(false);
        assert!(store.is_empty(), "nothing is served as usual");
        assert!(store.stale(&key("keep:1")).is_some());
        assert!(store.stale(&key("other:1")).is_none(), "not a serve-stale namespace");
        store.invalidate(0, &Bytes::from_static(b"keep:2"));
        assert!(store.stale(&key("keep:2")).is_none(), "a write drops it");
        assert_eq!(store.stats().stale_served.load(Ordering::Relaxed), 1);
        store.set_accepting(true);
        assert!(
            store.stale(&key("keep:1")).is_none(),
            "tracking is back: nothing kept aside"
        );
    }
}
