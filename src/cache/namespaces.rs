//! Namespaces: the part of a key before the first separator (`user` in
//! `user:42`). Each has its own L1 rules (TTL, entry bound, consistency)
//! and its own counters. Keys without the separator form the unnamed
//! namespace; once `max_namespaces` are known, keys of new ones share an
//! overflow namespace, so the registry stays bounded whatever the keys.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;

use super::L1Stats;
use crate::config::{Config, Consistency};

/// Name shown for keys without the separator.
pub const UNNAMED: &str = "(none)";
/// Name shown for keys of namespaces beyond `max_namespaces`.
pub const OVERFLOW: &str = "(other)";

/// How L1 treats one namespace's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rules {
    /// Longest an entry lives; zero = not cached.
    pub ttl: Duration,
    /// Most keys with cached replies; 0 = bounded by bytes only.
    pub max_entries: u64,
    pub consistency: Consistency,
    /// Redis's invalidation messages cover these keys (always, unless
    /// tracking is limited to the configured namespaces' prefixes).
    pub tracked: bool,
    /// While Redis is down, entries may be served up to this long past
    /// their deadline (zero: never; `serve_stale_max_secs`).
    pub serve_stale: Duration,
}

impl Rules {
    /// Cached for up to an hour, no entry bound, strict (unit tests).
    pub fn test_default() -> Rules {
        Rules {
            ttl: Duration::from_secs(3600),
            max_entries: 0,
            consistency: Consistency::Strict,
            tracked: true,
            serve_stale: Duration::ZERO,
        }
    }

    /// Whether L1 may keep this namespace's replies while Redis's
    /// invalidations are (`tracking_up`) or are not flowing.
    pub fn cacheable(&self, tracking_up: bool) -> bool {
        !self.ttl.is_zero()
            && match self.consistency {
                Consistency::TtlOnly => true,
                Consistency::Strict => self.tracked && tracking_up,
            }
    }
}

/// One namespace: its rules and counters.
///
/// The TTL and the entry bound change at run time (`PROXY CONFIG SET
/// memory_cache.*`, [`Namespaces::reconfigure`]): they are relaxed atomics,
/// read by fills and lookups without a lock. Consistency and tracking are
/// fixed at start-up (they decide whether the tracking connection runs).
#[derive(Debug)]
pub struct Namespace {
    name: String,
    /// [`UNNAMED`] or [`OVERFLOW`] itself, not a key's namespace of that name.
    reserved: bool,
    /// [`Rules::ttl`] in milliseconds.
    ttl_ms: AtomicU64,
    max_entries: AtomicU64,
    consistency: Consistency,
    tracked: bool,
    serve_stale: Duration,
    pub stats: L1Stats,
    /// Keys with cached replies now (entries count themselves in and out).
    pub entries: AtomicU64,
    /// Bytes those entries cost.
    pub bytes: AtomicU64,
    /// (database, key) in the order they were stored, oldest first: what
    /// the entry bound evicts. May name keys since removed. Kept only while
    /// the namespace has an entry bound.
    pub(super) order: Mutex<VecDeque<(u32, Bytes)>>,
}

impl Namespace {
    fn new(name: String, rules: Rules) -> Namespace {
        Namespace {
            name,
            reserved: false,
            ttl_ms: AtomicU64::new(millis(rules.ttl)),
            max_entries: AtomicU64::new(rules.max_entries),
            consistency: rules.consistency,
            tracked: rules.tracked,
            serve_stale: rules.serve_stale,
            stats: L1Stats::default(),
            entries: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            order: Mutex::new(VecDeque::new()),
        }
    }

    /// Whether this is [`UNNAMED`] or [`OVERFLOW`] (a key's namespace can
    /// be named so too, and is shown escaped).
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long past its deadline an entry may be served while Redis is
    /// down (zero: never).
    pub fn serve_stale(&self) -> Duration {
        self.serve_stale
    }

    /// Its rules now.
    pub fn rules(&self) -> Rules {
        Rules {
            ttl: Duration::from_millis(self.ttl_ms.load(Ordering::Relaxed)),
            max_entries: self.max_entries.load(Ordering::Relaxed),
            consistency: self.consistency,
            tracked: self.tracked,
            serve_stale: self.serve_stale,
        }
    }

    /// Takes `rules`' TTL and entry bound (the rest is fixed at start-up);
    /// answers the entry bound it had.
    fn set_limits(&self, rules: &Rules) -> u64 {
        self.ttl_ms.store(millis(rules.ttl), Ordering::Relaxed);
        self.max_entries.swap(rules.max_entries, Ordering::Relaxed)
    }
}

/// A TTL in whole milliseconds (one too long to count is as good as forever).
fn millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)
}

/// Every namespace seen, by name.
#[derive(Debug)]
pub struct Namespaces {
    separator: u8,
    max_namespaces: usize,
    known: RwLock<Known>,
    unnamed: Arc<Namespace>,
    overflow: Arc<Namespace>,
}

/// The namespaces seen, and the rules a new one gets (both change together,
/// under one lock, so a namespace seen while [`Namespaces::reconfigure`]
/// runs has the new rules either way).
#[derive(Debug)]
struct Known {
    by_name: HashMap<Bytes, Arc<Namespace>, quick_cache::DefaultHashBuilder>,
    /// Rules of namespaces without a section of their own.
    defaults: Rules,
    /// Rules of the namespaces configured in `[namespaces.<name>]`.
    configured: HashMap<Bytes, Rules>,
}

/// The rules `config` gives namespaces without a section of their own,
/// and those of each configured namespace (its own TTL and size, or the
/// defaults).
fn rules_from(config: &Config) -> (Rules, HashMap<Bytes, Rules>) {
    let cache = &config.memory_cache;
    let defaults = Rules {
        ttl: Duration::from_secs(cache.default_ttl),
        max_entries: cache.size_per_namespace,
        consistency: cache.consistency,
        tracked: !cache.tracking_prefixes,
        serve_stale: Duration::ZERO,
    };
    let configured = config
        .namespaces
        .iter()
        .map(|(name, section)| {
            let rules = Rules {
                ttl: Duration::from_secs(section.memory_cache_ttl.unwrap_or(cache.default_ttl)),
                max_entries: section.memory_cache_size.unwrap_or(cache.size_per_namespace),
                consistency: section.consistency.unwrap_or(cache.consistency),
                tracked: true,
                serve_stale: Duration::from_secs(section.serve_stale_max_secs.unwrap_or(0)),
            };
            (Bytes::copy_from_slice(name.as_bytes()), rules)
        })
        .collect();
    (defaults, configured)
}

impl Namespaces {
    pub fn from_config(config: &Config) -> Namespaces {
        let (defaults, configured) = rules_from(config);
        Namespaces::new(
            config.namespace_separator.as_bytes().first().copied().unwrap_or(b':'),
            config.memory_cache.max_namespaces,
            defaults,
            configured,
        )
    }

    pub fn new(separator: u8, max_namespaces: usize, defaults: Rules, configured: HashMap<Bytes, Rules>) -> Namespaces {
        Namespaces {
            separator,
            max_namespaces,
            unnamed: Arc::new(Namespace {
                reserved: true,
                ..Namespace::new(UNNAMED.into(), defaults)
            }),
            overflow: Arc::new(Namespace {
                reserved: true,
                ..Namespace::new(OVERFLOW.into(), overflow_rules(defaults))
            }),
            known: RwLock::new(Known {
                by_name: HashMap::default(),
                defaults,
                configured,
            }),
        }
    }

    /// Whether any namespace may be served stale while Redis is down.
    pub fn serve_stale_anywhere(&self) -> bool {
        let known = self.read();
        !known.defaults.serve_stale.is_zero() || known.configured.values().any(|rules| !rules.serve_stale.is_zero())
    }

    /// Takes the TTLs and entry bounds `config` gives (`PROXY CONFIG SET
    /// memory_cache.default_ttl` or `size_per_namespace`): namespaces with
    /// their own `memory_cache_ttl`/`memory_cache_size` keep them, the
    /// others, known or seen later, take the new defaults. Consistency and
    /// tracking stay as at start-up. Answers the namespaces that had no
    /// entry bound and have one now (they kept no store order).
    pub fn reconfigure(&self, config: &Config) -> Vec<Arc<Namespace>> {
        let (defaults, configured) = rules_from(config);
        let mut known = self.known.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut newly_bounded = Vec::new();
        let mut apply = |namespace: &Arc<Namespace>, rules: &Rules| {
            if namespace.set_limits(rules) == 0 && rules.max_entries > 0 {
                newly_bounded.push(namespace.clone());
            }
        };
        for (name, namespace) in &known.by_name {
            apply(namespace, configured.get(name).unwrap_or(&defaults));
        }
        apply(&self.unnamed, &defaults);
        apply(&self.overflow, &overflow_rules(defaults));
        known.defaults = defaults;
        known.configured = configured;
        newly_bounded
    }

    /// Every key in one namespace with these rules (tests, tools).
    pub fn uniform(rules: Rules) -> Namespaces {
        Namespaces::new(b':', 64, rules, HashMap::new())
    }

    /// The namespace `key` belongs to.
    pub fn of(&self, key: &[u8]) -> Arc<Namespace> {
        let Some(end) = memchr::memchr(self.separator, key) else {
            return self.unnamed.clone();
        };
        let name = &key[..end];
        if let Some(namespace) = self.read().by_name.get(name) {
            return namespace.clone();
        }
        let mut known = self.known.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(namespace) = known.by_name.get(name) {
            return namespace.clone();
        }
        let rules = known.configured.get(name).copied();
        if rules.is_none() && known.by_name.len() >= self.max_namespaces {
            return self.overflow.clone();
        }
        let namespace = Arc::new(Namespace::new(
            String::from_utf8_lossy(name).into_owned(),
            rules.unwrap_or(known.defaults),
        ));
        known.by_name.insert(Bytes::copy_from_slice(name), namespace.clone());
        namespace
    }

    /// The namespace `key` belongs to, if it is one already known (so
    /// counting an invalidation does not register namespaces).
    pub fn find(&self, key: &[u8]) -> Option<Arc<Namespace>> {
        let Some(end) = memchr::memchr(self.separator, key) else {
            return Some(self.unnamed.clone());
        };
        self.read().by_name.get(&key[..end]).cloned()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Known> {
        self.known.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every namespace that has been used, the unnamed and overflow ones
    /// included when used, sorted by name.
    pub fn all(&self) -> Vec<Arc<Namespace>> {
        let mut all: Vec<Arc<Namespace>> = self.read().by_name.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        for special in [&self.unnamed, &self.overflow] {
            let used = special.entries.load(Ordering::Relaxed) > 0
                || special.stats.misses.load(Ordering::Relaxed) > 0
                || special.stats.hits.load(Ordering::Relaxed) > 0;
            if used {
                all.push(special.clone());
            }
        }
        all
    }

    /// Whether any namespace may be cached without Redis's invalidations.
    pub fn any_ttl_only(&self) -> bool {
        let known = self.read();
        known.defaults.consistency == Consistency::TtlOnly
            || known
                .configured
                .values()
                .any(|rules| rules.consistency == Consistency::TtlOnly)
    }

    /// Whether any namespace needs Redis's invalidations to be cached.
    pub fn any_strict(&self) -> bool {
        let known = self.read();
        let strict = |rules: &Rules| rules.consistency == Consistency::Strict && rules.tracked && !rules.ttl.is_zero();
        strict(&known.defaults) || known.configured.values().any(strict)
    }

    /// Key prefixes Redis's invalidations are limited to (`name` + the
    /// separator of each strict configured namespace), or none for every
    /// key.
    pub fn tracking_prefixes(&self) -> Vec<Bytes> {
        let known = self.read();
        if known.defaults.tracked {
            return Vec::new();
        }
        let mut prefixes: Vec<Bytes> = known
            .configured
            .iter()
            .filter(|(_, rules)| rules.consistency == Consistency::Strict && !rules.ttl.is_zero())
            .map(|(name, _)| {
                let mut prefix = name.to_vec();
                prefix.push(self.separator);
                Bytes::from(prefix)
            })
            .collect();
        prefixes.sort();
        prefixes
    }
}

/// The overflow namespace's rules: the defaults, bounded by bytes only.
fn overflow_rules(defaults: Rules) -> Rules {
    Rules {
        max_entries: 0,
        ..defaults
    }
}

/// Drops the namespace's share when the last reference to an entry goes.
#[derive(Debug)]
pub struct Membership {
    namespace: Arc<Namespace>,
    weight: u64,
}

impl Membership {
    pub fn new(namespace: Arc<Namespace>, weight: u64) -> Membership {
        namespace.entries.fetch_add(1, Ordering::Relaxed);
        namespace.bytes.fetch_add(weight, Ordering::Relaxed);
        Membership { namespace, weight }
    }

    pub fn namespace(&self) -> &Arc<Namespace> {
        &self.namespace
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.namespace.entries.fetch_sub(1, Ordering::Relaxed);
        self.namespace.bytes.fetch_sub(self.weight, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(ttl: u64) -> Rules {
        Rules {
            ttl: Duration::from_secs(ttl),
            max_entries: 10,
            consistency: Consistency::Strict,
            tracked: true,
            serve_stale: Duration::ZERO,
        }
    }

    #[test]
    fn a_key_belongs_to_the_part_before_the_separator() {
        let configured = HashMap::from([(Bytes::from_static(b"reports"), rules(300))]);
        let namespaces = Namespaces::new(b':', 2, rules(60), configured);
        assert_eq!(namespaces.of(b"reports:2026:q1").name(), "reports");
        assert_eq!(namespaces.of(b"reports:x").rules().ttl, Duration::from_secs(300));
        assert_eq!(namespaces.of(b"user:1").rules().ttl, Duration::from_secs(60));
        assert_eq!(namespaces.of(b"plain").name(), UNNAMED);
        assert!(Arc::ptr_eq(&namespaces.of(b"user:1"), &namespaces.of(b"user:2")));
    }

    #[test]
    fn the_registry_is_bounded_but_configured_namespaces_always_fit() {
        let configured = HashMap::from([(Bytes::from_static(b"late"), rules(5))]);
        let namespaces = Namespaces::new(b':', 2, rules(60), configured);
        assert_eq!(namespaces.of(b"a:1").name(), "a");
        assert_eq!(namespaces.of(b"b:1").name(), "b");
        assert_eq!(namespaces.of(b"c:1").name(), OVERFLOW);
        assert_eq!(
            namespaces.of(b"c:1").rules().max_entries,
            0,
            "the overflow is bounded by bytes only"
        );
        assert_eq!(namespaces.of(b"late:1").name(), "late");
        assert_eq!(namespaces.of(b"a:2").name(), "a", "known ones stay");
    }

    /// `PROXY CONFIG SET memory_cache.default_ttl` / `size_per_namespace`:
    /// namespaces with their own keep it, the others follow, known or not.
    #[test]
    fn reconfigured_defaults_reach_every_namespace_without_its_own() {
        let mut config = Config::default();
        config.memory_cache.size_per_namespace = 0;
        config.memory_cache.max_namespaces = 3;
        config.namespaces.insert(
            "own".into(),
            crate::config::NamespaceConfig {
                memory_cache_ttl: Some(300),
                memory_cache_size: Some(7),
                ..Default::default()
            },
        );
        config.namespaces.insert("follows".into(), Default::default());
        let namespaces = Namespaces::from_config(&config);
        let (own, follows, user, overflow) = (
            namespaces.of(b"own:1"),
            namespaces.of(b"follows:1"),
            namespaces.of(b"user:1"),
            namespaces.of(b"third:1"),
        );
        assert_eq!(overflow.name(), OVERFLOW);
        config.memory_cache.default_ttl = 5;
        config.memory_cache.size_per_namespace = 3;
        let newly_bounded = namespaces.reconfigure(&config);
        let mut names: Vec<&str> = newly_bounded.iter().map(|namespace| namespace.name()).collect();
        names.sort();
        assert_eq!(names, [UNNAMED, "follows", "user"]);
        assert_eq!(own.rules().ttl, Duration::from_secs(300));
        assert_eq!(own.rules().max_entries, 7);
        for namespace in [&follows, &user, &namespaces.of(b"plain")] {
            assert_eq!(namespace.rules().ttl, Duration::from_secs(5), "{}", namespace.name());
            assert_eq!(namespace.rules().max_entries, 3, "{}", namespace.name());
        }
        assert_eq!(overflow.rules().ttl, Duration::from_secs(5));
        assert_eq!(
            overflow.rules().max_entries,
            0,
            "the overflow stays bounded by bytes only"
        );
        let later = Namespaces::from_config(&Config::default());
        later.reconfigure(&config);
        assert_eq!(later.of(b"seen:later").rules().ttl, Duration::from_secs(5));
    }

    #[test]
    fn memberships_count_entries_and_bytes_in_and_out() {
        let namespaces = Namespaces::uniform(rules(60));
        let namespace = namespaces.of(b"n:1");
        let first = Membership::new(namespace.clone(), 100);
        let second = Membership::new(namespace.clone(), 50);
        assert_eq!(namespace.entries.load(Ordering::Relaxed), 2);
        assert_eq!(namespace.bytes.load(Ordering::Relaxed), 150);
        drop(first);
        assert_eq!(namespace.bytes.load(Ordering::Relaxed), 50);
        drop(second);
        assert_eq!(namespace.entries.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn prefixes_cover_the_strict_configured_namespaces_only_when_asked() {
        let mut ttl_only = rules(60);
        ttl_only.consistency = Consistency::TtlOnly;
        let configured = HashMap::from([
            (Bytes::from_static(b"users"), rules(60)),
            (Bytes::from_static(b"feeds"), ttl_only),
            (Bytes::from_static(b"off"), rules(0)),
        ]);
        let everything = Namespaces::new(b':', 8, rules(60), configured.clone());
        assert!(everything.tracking_prefixes().is_empty());
        let mut defaults = rules(60);
        defaults.tracked = false;
        let limited = Namespaces::new(b':', 8, defaults, configured);
        assert_eq!(limited.tracking_prefixes(), vec![Bytes::from_static(b"users:")]);
        assert!(
            !limited.of(b"other:1").rules().cacheable(true),
            "untracked strict keys are not cached"
        );
        assert!(limited.of(b"users:1").rules().cacheable(true));
        assert!(!limited.of(b"users:1").rules().cacheable(false));
        assert!(
            limited.of(b"feeds:1").rules().cacheable(false),
            "ttl-only needs no tracking"
        );
        assert!(!limited.of(b"off:1").rules().cacheable(true));
    }
}
