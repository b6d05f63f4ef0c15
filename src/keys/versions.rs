//! Key versioning (issue #6): a versioned namespace's keys are stored
//! under their namespace's current version (`v2:user:1` for the client's
//! `user:1`, by `versioning.key_pattern`), reads fall back to older
//! versions and migrate what they find, and replies that name keys are
//! mapped back, so the client never sees a version.
//!
//! Rules that hold everywhere:
//!
//! - Every key argument is rewritten, at the positions [`KeyTable`] gives;
//!   a command whose keys cannot be placed is refused, never forwarded
//!   with a client key.
//! - Before a command touches a versioned key, one script (see
//!   [`MIGRATE_SCRIPT`]) makes the current version hold the key's value:
//!   if it is missing there, the first fallback version that has it is
//!   copied (a read) or moved (a write, or a read with
//!   `delete_old_on_migrate`), with its TTL and type; a write also unlinks
//!   every other fallback version. So a key written or deleted through the
//!   proxy can never come back from an older version.
//! - A stored key maps back to a client key only if it is in a version the
//!   namespace serves (current or fallback); anything else is hidden.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};

use super::glob;
use super::table::{KeyArg, KeyKind, KeyTable, KeyUse, Keys};
use crate::codec::strings::encode_bulk;
use crate::config::Config;

/// Makes each key's current version hold its value. KEYS: per key, its
/// current stored name then its fallbacks; ARGV: per key, a mode letter
/// (`r` copy, `d` move, `w` move and unlink the other fallbacks), the
/// number of names, and for a key of another database `@<db>:<home>`. Fallbacks older than the one brought over are
/// unlinked (they are shadowed, and must not come back when it expires).
/// A copy Redis refuses (memory) becomes a move. Answers, per key, 0 (no
/// version has it), 1 (copied), 2 (moved) or 3 (the current one has it).
pub const MIGRATE_SCRIPT: &str = "\
local at, done = 1, {}
for group = 1, #ARGV do
  local mode, size, db, home = string.match(ARGV[group], '^(%a)(%d+)@?(%d*):?(%d*)$')
  size = tonumber(size)
  local elsewhere, result = db ~= '', 0
  -- No such database: nothing to do there; the command fails as Redis says.
  local skip = elsewhere and redis.pcall('SELECT', db).err ~= nil
  if not skip then
    local current, found = KEYS[at], at + size
    result = 3
    if redis.call('EXISTS', current) == 0 then
      result = 0
      for i = at + 1, at + size - 1 do
        if redis.call('EXISTS', KEYS[i]) == 1 then
          found = i
          if mode == 'r' and type(redis.pcall('COPY', KEYS[i], current)) ~= 'table' then result = 1
          else redis.call('RENAME', KEYS[i], current) result = 2 end
          break
        end
      end
    end
    local from = found + 1
    if mode == 'w' then from = at + 1 end
    if from <= at + size - 1 then
      redis.call('UNLINK', unpack(KEYS, from, at + size - 1))
    end
    if elsewhere then redis.call('SELECT', home) end
  end
  done[group] = result
  at = at + size
end
return done";

/// Which version of each key exists, without changing anything (reads of
/// namespaces with `migrate_on_read = false`). Same KEYS and ARGV as
/// [`MIGRATE_SCRIPT`]; answers, per key, the position of the first name
/// that exists (0 also when none does).
pub const FIND_SCRIPT: &str = "\
local at, found = 1, {}
for group = 1, #ARGV do
  local size = tonumber(string.match(ARGV[group], '^%a(%d+)'))
  found[group] = 0
  for i = at, at + size - 1 do
    if redis.call('EXISTS', KEYS[i]) == 1 then found[group] = i - at break end
  end
  at = at + size
end
return found";

/// The stored form of a key: `versioning.key_pattern` split around its
/// placeholders.
#[derive(Debug, Clone)]
pub struct KeyPattern {
    /// Text before the first placeholder, between them, after the last.
    before: Vec<u8>,
    between: Vec<u8>,
    after: Vec<u8>,
    /// `{version}` comes before `{key}`.
    version_first: bool,
    source: String,
    /// In front of a Redis Cluster: a key without a hash tag is stored
    /// inside one (`v2:{user:1}`), so all its versions are in its slot and
    /// a migration stays on one master (see [`ClusterForm`]).
    wrap: bool,
}

/// How a key is written in its stored name in front of a Redis Cluster,
/// so that every version of it is in the key's own slot and the name reads
/// back unambiguously:
///
/// - a key without `}` (Redis hashes it whole) goes inside braces, which
///   make the whole key the tag: `user:1` as `{user:1}`;
/// - a key that is itself `{X}` followed by `}`s (X not empty, without
///   `}`; its tag is X) gets one more `}`, which keeps the tag: `{user1}`
///   as `{user1}}`, so no wrapped key is mistaken for it;
/// - any other key is written as it is (`{user1}:a` keeps its tag).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterForm {
    Wrapped,
    Closed,
    AsIs,
}

impl ClusterForm {
    pub fn of(key: &[u8]) -> ClusterForm {
        if braced(key).is_some() {
            ClusterForm::Closed
        } else if !key.is_empty() && !key.contains(&b'}') {
            ClusterForm::Wrapped
        } else {
            ClusterForm::AsIs
        }
    }
}

/// For `{X}` followed by any number of `}` (X not empty, without `}`): the
/// number of `}` after the tag's.
fn braced(key: &[u8]) -> Option<usize> {
    let rest = key.strip_prefix(b"{")?;
    let close = memchr::memchr(b'}', rest).filter(|close| *close > 0)?;
    let after = &rest[close + 1..];
    after.iter().all(|&byte| byte == b'}').then_some(after.len())
}

/// The client key a stored name's key part stands for (the inverse of
/// [`ClusterForm`]); None for a key part no key is stored as.
fn cluster_key(stored: &[u8]) -> Option<&[u8]> {
    match braced(stored) {
        Some(0) => Some(&stored[1..stored.len() - 1]),
        Some(_) => Some(&stored[..stored.len() - 1]),
        None if !stored.is_empty() && !stored.contains(&b'}') => None,
        None => Some(stored),
    }
}

impl KeyPattern {
    /// From a validated pattern (`{version}` and `{key}` once each).
    pub fn parse(pattern: &str) -> KeyPattern {
        let version_at = pattern.find("{version}").unwrap_or(0);
        let key_at = pattern.find("{key}").unwrap_or(0);
        let (first_end, second_at, second_len) = if version_at < key_at {
            (version_at + "{version}".len(), key_at, "{key}".len())
        } else {
            (key_at + "{key}".len(), version_at, "{version}".len())
        };
        KeyPattern {
            before: pattern.as_bytes()[..version_at.min(key_at)].to_vec(),
            between: pattern.as_bytes()[first_end..second_at].to_vec(),
            after: pattern.as_bytes()[second_at + second_len..].to_vec(),
            version_first: version_at < key_at,
            source: pattern.to_string(),
            wrap: false,
        }
    }

    /// The same pattern for a Redis Cluster: keys without a hash tag are
    /// stored inside one.
    pub fn for_cluster(mut self) -> KeyPattern {
        self.wrap = true;
        self
    }

    /// The pattern as configured.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// `key` stored under `version`.
    pub fn stored(&self, version: u32, key: &[u8]) -> Bytes {
        let version = version.to_string();
        let mut out =
            BytesMut::with_capacity(self.before.len() + self.between.len() + self.after.len() + 12 + key.len());
        let form = if self.wrap {
            ClusterForm::of(key)
        } else {
            ClusterForm::AsIs
        };
        let key_part = |out: &mut BytesMut| match form {
            ClusterForm::Wrapped => {
                out.extend_from_slice(b"{");
                out.extend_from_slice(key);
                out.extend_from_slice(b"}");
            }
            ClusterForm::Closed => {
                out.extend_from_slice(key);
                out.extend_from_slice(b"}");
            }
            ClusterForm::AsIs => out.extend_from_slice(key),
        };
        out.extend_from_slice(&self.before);
        if self.version_first {
            out.extend_from_slice(version.as_bytes());
            out.extend_from_slice(&self.between);
            key_part(&mut out);
        } else {
            key_part(&mut out);
            out.extend_from_slice(&self.between);
            out.extend_from_slice(version.as_bytes());
        }
        out.extend_from_slice(&self.after);
        out.freeze()
    }

    /// The version and client key of a stored name in this pattern's form.
    pub fn parse_stored<'a>(&self, stored: &'a [u8]) -> Option<(u32, &'a [u8])> {
        let inner = stored.strip_prefix(self.before.as_slice())?;
        let inner = inner.strip_suffix(self.after.as_slice())?;
        let (version, key) = if self.version_first {
            let digits = inner.iter().take_while(|byte| byte.is_ascii_digit()).count();
            let version = canonical_u32(&inner[..digits])?;
            let key = inner[digits..].strip_prefix(self.between.as_slice())?;
            (version, key)
        } else {
            let digits = inner.iter().rev().take_while(|byte| byte.is_ascii_digit()).count();
            let version = canonical_u32(&inner[inner.len() - digits..])?;
            let key = inner[..inner.len() - digits].strip_suffix(self.between.as_slice())?;
            (version, key)
        };
        if !self.wrap {
            return Some((version, key));
        }
        Some((version, cluster_key(key)?))
    }

    /// A glob matching the stored names, in every version, of the keys the
    /// client's `pattern` matches.
    fn glob_all_versions(&self, pattern: &[u8]) -> Vec<u8> {
        let mut out = glob::escape(&self.before);
        // In a cluster the key may be inside braces: a `*` either side
        // matches them (the reply is filtered by the client's pattern).
        let key_part = |out: &mut Vec<u8>| {
            if self.wrap {
                out.push(b'*');
            }
            out.extend_from_slice(pattern);
            if self.wrap {
                out.push(b'*');
            }
        };
        if self.version_first {
            out.push(b'*');
            out.extend(glob::escape(&self.between));
            key_part(&mut out);
        } else {
            key_part(&mut out);
            out.extend(glob::escape(&self.between));
            out.push(b'*');
        }
        out.extend(glob::escape(&self.after));
        out
    }

    /// Every stored name of the keys of `namespace` (`user:`), any version.
    pub fn glob_namespace(&self, namespace_prefix: &[u8]) -> Vec<u8> {
        let mut pattern = glob::escape(namespace_prefix);
        pattern.push(b'*');
        self.glob_all_versions(&pattern)
    }

    /// The prefixes the stored keys of `namespace_prefix` in `version`
    /// start with: one, or in a cluster also the wrapped form's.
    pub fn stored_prefixes(&self, version: u32, namespace_prefix: &[u8]) -> Vec<Vec<u8>> {
        let mut out = self.before.clone();
        if self.version_first {
            out.extend_from_slice(version.to_string().as_bytes());
            out.extend_from_slice(&self.between);
        }
        let mut wrapped = out.clone();
        out.extend_from_slice(namespace_prefix);
        if !self.wrap {
            return vec![out];
        }
        wrapped.push(b'{');
        wrapped.extend_from_slice(namespace_prefix);
        vec![out, wrapped]
    }
}

/// A version number as written by [`KeyPattern::stored`]: digits, no
/// leading zero.
fn canonical_u32(digits: &[u8]) -> Option<u32> {
    match digits {
        [] => None,
        [b'0', _, ..] => None,
        _ => std::str::from_utf8(digits).ok()?.parse().ok(),
    }
}

/// One versioned namespace: its versions and counters.
#[derive(Debug)]
pub struct NamespaceVersions {
    pub name: String,
    pub current: u32,
    /// Older versions, in the order reads try them.
    pub fallbacks: Vec<u32>,
    /// After them, the key's own unversioned name (a namespace getting its
    /// first version keeps its existing keys).
    pub fallback_unversioned: bool,
    pub migrate_on_read: bool,
    pub delete_old_on_migrate: bool,
    /// Keys copied or moved to the current version.
    pub migrated: AtomicU64,
    /// Reads that found their key only in a fallback version.
    pub fallback_hits: AtomicU64,
    /// Migration scripts Redis refused (OOM, ...).
    pub migration_errors: AtomicU64,
}

impl NamespaceVersions {
    fn serves(&self, version: u32) -> bool {
        version == self.current || self.fallbacks.contains(&version)
    }

    /// Whether any older name is looked at (so commands migrate).
    pub fn has_fallbacks(&self) -> bool {
        !self.fallbacks.is_empty() || self.fallback_unversioned
    }

    /// The names of `key` a migration looks at: the current one, then each
    /// fallback in order (the unversioned name last).
    fn names(&self, pattern: &KeyPattern, key: &[u8]) -> Vec<Bytes> {
        let mut names = Vec::with_capacity(2 + self.fallbacks.len());
        names.push(pattern.stored(self.current, key));
        names.extend(self.fallbacks.iter().map(|fallback| pattern.stored(*fallback, key)));
        if self.fallback_unversioned {
            names.push(Bytes::copy_from_slice(key));
        }
        names
    }
}

/// What a stored key is to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mapped<'a> {
    /// It is the client's key of this name.
    Visible(&'a [u8]),
    /// No client key reaches it (another version, or an unversioned name
    /// in a versioned namespace).
    Hidden,
}

/// How a reply that names keys is mapped back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyReply {
    /// KEYS: an array of names, kept if visible and matching the client's
    /// pattern, each once.
    Keys(Bytes),
    /// SCAN: `[cursor, names]`, names kept as for KEYS (`None`: no MATCH).
    Scan(Option<Bytes>),
    /// RANDOMKEY: one name (a hidden one becomes nil).
    Random,
    /// BLPOP, BZPOPMIN, LMPOP, ...: the array's first element is a key.
    First,
    /// XREAD/XREADGROUP: per stream, its name first (RESP2 arrays of pairs,
    /// RESP3 a map).
    Streams,
    /// PUBSUB CHANNELS: channel names, keyspace ones mapped back (hidden
    /// ones left out) and matched against the client's pattern.
    Channels(Option<Bytes>),
    /// PUBSUB NUMSUB: (channel, count) pairs, keyspace channels mapped back.
    NumSub,
    /// EXEC's array: how each queued command's element is mapped back.
    Exec(Vec<Option<KeyReply>>),
    /// A command the proxy refused, sent to Redis as one Redis refuses
    /// too (so it keeps its place, and EXEC aborts): the client gets this.
    Refused(Bytes),
}

/// The keys of one command to migrate before it runs.
#[derive(Debug, Clone, Default)]
pub struct Migration {
    keys: Vec<Bytes>,
    groups: Vec<Bytes>,
    /// Per group: its namespace, and whether a read asked.
    owners: Vec<(Arc<NamespaceVersions>, KeyUse)>,
    /// Per group: the (database, client key) it is about, and where what
    /// the script finds is remembered.
    subjects: Vec<(u32, Bytes)>,
    remembered: Option<Arc<Remembered>>,
    /// The forgettings when it was planned.
    generation: u64,
}

/// The (database, client key)s known to have left their old versions
/// behind: the current version held them when last looked at, or a write
/// through the proxy unlinked the older ones. Their reads need no
/// migration: whatever happens to the current name since (a delete, an
/// expiry, a write) leaves no older name to bring back (a write's migration
/// unlinks them, a read's copy expires with its source). Bounded; forgotten
/// when databases move (SWAPDB, FLUSHALL, FLUSHDB).
#[derive(Debug)]
pub struct Remembered {
    keys: Option<quick_cache::sync::Cache<(u32, Bytes), ()>>,
    /// Forgettings so far: what a migration planned before the last one
    /// found is not remembered (it may describe databases since moved).
    generation: AtomicU64,
}

impl Remembered {
    /// Up to `capacity` keys; 0 remembers none (every command migrates).
    fn new(capacity: usize) -> Remembered {
        Remembered {
            keys: (capacity > 0).then(|| quick_cache::sync::Cache::new(capacity)),
            generation: AtomicU64::new(0),
        }
    }

    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn contains(&self, db: u32, key: &Bytes) -> bool {
        self.keys
            .as_ref()
            .is_some_and(|keys| keys.get(&(db, key.clone())).is_some())
    }

    /// Remembers a key, unless a forgetting came after `planned`.
    fn insert(&self, db: u32, key: Bytes, planned: u64) {
        if let Some(keys) = &self.keys
            && self.generation() == planned
        {
            keys.insert((db, key), ());
        }
    }

    pub fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Some(keys) = &self.keys {
            keys.clear();
        }
    }
}

impl Migration {
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// The script call (EVAL, so no script cache is relied upon).
    pub fn request(&self, script: &str) -> Bytes {
        let mut args: Vec<Bytes> = Vec::with_capacity(3 + self.keys.len() + self.groups.len());
        args.push(Bytes::from_static(b"EVAL"));
        args.push(Bytes::copy_from_slice(script.as_bytes()));
        args.push(Bytes::from(self.keys.len().to_string()));
        args.extend(self.keys.iter().cloned());
        args.extend(self.groups.iter().cloned());
        crate::protocol::Command::from_args(args).wire().clone()
    }

    /// Whether every key is only read (a failed migration may then turn
    /// the command's reply into its error).
    pub fn read_only(&self) -> bool {
        self.owners.iter().all(|(_, usage)| *usage == KeyUse::Read)
    }

    /// Counts what the script's reply says it did; false if Redis refused it.
    pub fn count(&self, reply: &[u8]) -> bool {
        if reply.first() == Some(&b'-') || reply.first() == Some(&b'!') {
            for (owner, _) in &self.owners {
                owner.migration_errors.fetch_add(1, Ordering::Relaxed);
            }
            tracing::debug!(reply = %String::from_utf8_lossy(reply).trim_end(), "version migration failed");
            return false;
        }
        let results = integers(reply);
        for (group, ((owner, usage), result)) in self.owners.iter().zip(&results).enumerate() {
            if matches!(result, 1 | 2) {
                owner.migrated.fetch_add(1, Ordering::Relaxed);
                if *usage == KeyUse::Read {
                    owner.fallback_hits.fetch_add(1, Ordering::Relaxed);
                }
            }
            // Found in the current version now, or its old names unlinked.
            let settled = *result != 0 || *usage == KeyUse::Write;
            if let (true, Some(remembered), Some((db, key))) = (settled, &self.remembered, self.subjects.get(group)) {
                remembered.insert(*db, key.clone(), self.generation);
            }
        }
        true
    }

    /// After [`FIND_SCRIPT`] answered `found` (per group, which name
    /// exists): each read of a namespace that does not migrate on read is
    /// pointed at the version that has the key (`args[positions[group]]`),
    /// and only the other groups are left to migrate. Answers the fallback
    /// names the command now reads (fallback hits are counted by the caller
    /// once the read stands).
    pub fn apply_found(&mut self, found: &[i64], args: &mut [Bytes], positions: &[usize]) -> Vec<OldName> {
        let mut kept = Migration::default();
        let mut old_names = Vec::new();
        let mut at = 0;
        for (group, (owner, usage)) in self.owners.iter().enumerate() {
            let size = 1 + owner.fallbacks.len() + usize::from(owner.fallback_unversioned);
            let names = &self.keys[at..at + size];
            at += size;
            if *usage == KeyUse::Read && !owner.migrate_on_read {
                let which = found.get(group).copied().unwrap_or(0).clamp(0, size as i64 - 1) as usize;
                if which > 0 {
                    old_names.push((names[which].clone(), owner.clone()));
                }
                if let Some(&position) = positions.get(group)
                    && let Some(arg) = args.get_mut(position)
                {
                    *arg = names[which].clone();
                }
                continue;
            }
            kept.keys.extend_from_slice(names);
            kept.groups.push(self.groups[group].clone());
            kept.owners.push((owner.clone(), *usage));
            kept.subjects.extend(self.subjects.get(group).cloned());
        }
        kept.remembered = self.remembered.take();
        kept.generation = self.generation;
        *self = kept;
        old_names
    }

    /// Groups of reads whose namespace serves old versions without
    /// migrating, for [`FIND_SCRIPT`].
    fn unmigrated_reads(&self) -> bool {
        self.owners
            .iter()
            .any(|(owner, usage)| *usage == KeyUse::Read && !owner.migrate_on_read)
    }
}

/// A fallback version's name a read is pointed at, and its namespace.
pub type OldName = (Bytes, Arc<NamespaceVersions>);

/// A command with its keys rewritten.
#[derive(Debug, Default)]
pub struct Rewritten {
    /// The new arguments, if any changed.
    pub args: Option<Vec<Bytes>>,
    /// What to migrate first.
    pub migration: Migration,
    /// How its reply is mapped back.
    pub reply: Option<KeyReply>,
    /// Reads to resolve before sending (`migrate_on_read = false`): the
    /// argument positions of each group, in order.
    pub resolve: Option<Vec<usize>>,
    /// The upstream's table does not know the command: perhaps a module
    /// loaded since; ask Redis (`COMMAND INFO`) before forwarding it.
    pub unknown: bool,
}

/// The versioning stage: the pattern, each versioned namespace, and the
/// key table learned from Redis.
#[derive(Debug)]
pub struct Versioning {
    pattern: KeyPattern,
    separator: u8,
    namespaces: HashMap<Vec<u8>, Arc<NamespaceVersions>>,
    table: RwLock<Arc<KeyTable>>,
    /// The table came from this Redis (not the built-in copy).
    learned: std::sync::atomic::AtomicBool,
    /// Cleanups run so far, by namespace.
    pub cleanups: std::sync::Mutex<HashMap<String, Arc<Cleanup>>>,
    /// Keys whose reads need no migration (see [`Remembered`]).
    remembered: Arc<Remembered>,
    /// Command names Redis said it does not know, and when (so a typo sent
    /// in a loop costs one `COMMAND INFO` per few seconds, not one each).
    unknown: std::sync::Mutex<HashMap<Vec<u8>, std::time::Instant>>,
}

/// How long a name Redis did not know is taken as still unknown.
const UNKNOWN_FOR: std::time::Duration = std::time::Duration::from_secs(10);
/// Most unknown names remembered (then all are forgotten).
const MAX_UNKNOWN: usize = 1024;

/// Progress of one `PROXY VERSION CLEANUP`.
#[derive(Debug, Default)]
pub struct Cleanup {
    pub below: AtomicU64,
    pub scanned: AtomicU64,
    pub removed: AtomicU64,
    pub done: std::sync::atomic::AtomicBool,
    pub error: std::sync::Mutex<Option<String>>,
}

impl Cleanup {
    pub fn error(&self) -> Option<String> {
        lock(&self.error).clone()
    }

    pub fn set_error(&self, error: String) {
        *lock(&self.error) = Some(error);
    }
}

/// The refusal of a command whose keys cannot be rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl Versioning {
    /// The stage, if any namespace is versioned.
    pub fn from_config(config: &Config) -> Option<Versioning> {
        let namespaces: HashMap<Vec<u8>, Arc<NamespaceVersions>> = config
            .namespaces
            .iter()
            .filter_map(|(name, overrides)| {
                let current = overrides.version?;
                Some((
                    name.as_bytes().to_vec(),
                    Arc::new(NamespaceVersions {
                        name: name.clone(),
                        current,
                        fallbacks: overrides.fallback_versions.clone(),
                        fallback_unversioned: overrides.fallback_unversioned.unwrap_or(false),
                        migrate_on_read: overrides.migrate_on_read.unwrap_or(true),
                        delete_old_on_migrate: overrides.delete_old_on_migrate.unwrap_or(false),
                        migrated: AtomicU64::new(0),
                        fallback_hits: AtomicU64::new(0),
                        migration_errors: AtomicU64::new(0),
                    }),
                ))
            })
            .collect();
        if namespaces.is_empty() {
            return None;
        }
        Some(Versioning {
            pattern: {
                let pattern = KeyPattern::parse(&config.versioning.key_pattern);
                let cluster = crate::config::UpstreamUrl::parse(&config.upstream).is_ok_and(|url| url.is_cluster());
                if cluster { pattern.for_cluster() } else { pattern }
            },
            separator: config.namespace_separator.as_bytes().first().copied().unwrap_or(b':'),
            namespaces,
            table: RwLock::new(Arc::new(KeyTable::builtin())),
            learned: std::sync::atomic::AtomicBool::new(false),
            cleanups: std::sync::Mutex::new(HashMap::new()),
            unknown: std::sync::Mutex::new(HashMap::new()),
            remembered: Arc::new(Remembered::new(config.versioning.remembered_keys)),
        })
    }

    /// Installs the key table read from the upstream's `COMMAND`.
    pub fn set_table(&self, table: KeyTable) {
        *self.table.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(table);
        self.learned.store(true, Ordering::Release);
    }

    /// Forgets which keys left their old versions behind (databases moved).
    pub fn forget_all(&self) {
        self.remembered.forget_all();
    }

    /// Whether Redis said a moment ago that it does not know this command.
    pub fn recently_unknown(&self, name: &[u8]) -> bool {
        let lower = name.to_ascii_lowercase();
        lock(&self.unknown)
            .get(&lower)
            .is_some_and(|asked| asked.elapsed() < UNKNOWN_FOR)
    }

    pub fn note_unknown(&self, name: &[u8]) {
        let mut unknown = lock(&self.unknown);
        if unknown.len() >= MAX_UNKNOWN {
            unknown.clear();
        }
        unknown.insert(name.to_ascii_lowercase(), std::time::Instant::now());
    }

    /// Adds what `COMMAND INFO` told of commands the table lacked.
    pub fn learn(&self, more: KeyTable) {
        let mut table = self.table.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut merged = (**table).clone();
        merged.merge(more);
        *table = Arc::new(merged);
    }

    /// Whether the key table is the upstream's own (else the built-in one).
    pub fn table_learned(&self) -> bool {
        self.learned.load(Ordering::Acquire)
    }

    pub fn pattern(&self) -> &KeyPattern {
        &self.pattern
    }

    /// The versioned namespaces, sorted by name.
    pub fn namespaces(&self) -> Vec<Arc<NamespaceVersions>> {
        let mut all: Vec<_> = self.namespaces.values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    pub fn namespace(&self, name: &str) -> Option<Arc<NamespaceVersions>> {
        self.namespaces.get(name.as_bytes()).cloned()
    }

    pub fn separator(&self) -> u8 {
        self.separator
    }

    /// The latest cleanup of a namespace, running or done.
    pub fn cleanup_of(&self, name: &str) -> Option<Arc<Cleanup>> {
        lock(&self.cleanups).get(name).cloned()
    }

    /// Registers a cleanup; refused while another of the namespace runs.
    pub fn start_cleanup(&self, name: &str, progress: Arc<Cleanup>) -> Result<(), String> {
        let mut cleanups = lock(&self.cleanups);
        if cleanups
            .get(name)
            .is_some_and(|running| !running.done.load(Ordering::Acquire))
        {
            return Err(format!("ERR a cleanup of namespace '{name}' is already running"));
        }
        cleanups.insert(name.to_string(), progress);
        Ok(())
    }

    /// The version of a stored name of `namespace`'s keys.
    pub fn version_in(&self, namespace: &NamespaceVersions, stored: &[u8]) -> Option<u32> {
        let (version, key) = self.pattern.parse_stored(stored)?;
        let versioned = self.namespace_of(key)?;
        (versioned.name == namespace.name).then_some(version)
    }

    /// Whether `stored` is an unversioned name of `namespace`'s keys.
    pub fn is_unversioned_in(&self, namespace: &NamespaceVersions, stored: &[u8]) -> bool {
        self.pattern.parse_stored(stored).is_none()
            && self
                .namespace_of(stored)
                .is_some_and(|versioned| versioned.name == namespace.name)
    }

    /// The versioned namespace an unversioned stored name belongs to.
    pub fn unversioned_namespace(&self, stored: &[u8]) -> Option<String> {
        if self.pattern.parse_stored(stored).is_some() {
            return None;
        }
        self.namespace_of(stored).map(|namespace| namespace.name.clone())
    }

    /// The versioned namespace and version of a stored name.
    pub fn namespace_and_version(&self, stored: &[u8]) -> Option<(String, u32)> {
        let (version, key) = self.pattern.parse_stored(stored)?;
        Some((self.namespace_of(key)?.name.clone(), version))
    }

    /// The versioned namespace `key` belongs to.
    fn namespace_of(&self, key: &[u8]) -> Option<&Arc<NamespaceVersions>> {
        let end = memchr::memchr(self.separator, key)?;
        self.namespaces.get(&key[..end])
    }

    /// Whether reads of `key` may be served from an old version without
    /// migrating it (`migrate_on_read = false` with fallbacks).
    pub fn reads_unmigrated(&self, key: &[u8]) -> bool {
        self.namespace_of(key)
            .is_some_and(|namespace| !namespace.migrate_on_read && namespace.has_fallbacks())
    }

    /// Every name the client's `key` may be stored under, in the order
    /// reads try them: the current version's, then the fallbacks' (the
    /// unversioned name last); the key itself outside versioned namespaces.
    pub fn candidates(&self, key: &[u8]) -> Vec<Bytes> {
        match self.namespace_of(key) {
            Some(namespace) => namespace.names(&self.pattern, key),
            None => vec![Bytes::copy_from_slice(key)],
        }
    }

    /// The name Redis stores the client's `key` under now.
    pub fn stored(&self, key: &[u8]) -> Bytes {
        match self.namespace_of(key) {
            Some(namespace) => self.pattern.stored(namespace.current, key),
            None => Bytes::copy_from_slice(key),
        }
    }

    /// Whether a stored name is in its namespace's current version (or is
    /// not versioned at all).
    pub fn is_current(&self, stored: &[u8]) -> bool {
        match self.pattern.parse_stored(stored) {
            Some((version, key)) => self
                .namespace_of(key)
                .is_none_or(|namespace| namespace.current == version),
            // An unversioned name inside a versioned namespace is old.
            None => self.namespace_of(stored).is_none(),
        }
    }

    /// Whether an unversioned client key reads as a stored name of a
    /// versioned namespace (so that, kept as it is, it would be that key).
    fn looks_stored(&self, key: &[u8]) -> bool {
        self.pattern
            .parse_stored(key)
            .is_some_and(|(_, inner)| self.namespace_of(inner).is_some())
    }

    /// What a stored key is to the client.
    pub fn client_key<'a>(&self, stored: &'a [u8]) -> Mapped<'a> {
        if let Some((version, key)) = self.pattern.parse_stored(stored)
            && let Some(namespace) = self.namespace_of(key)
        {
            return if namespace.serves(version) {
                Mapped::Visible(key)
            } else {
                Mapped::Hidden
            };
        }
        match self.namespace_of(stored) {
            // A namespace's unversioned names are a fallback if configured so.
            Some(namespace) if namespace.fallback_unversioned => Mapped::Visible(stored),
            Some(_) => Mapped::Hidden,
            None => Mapped::Visible(stored),
        }
    }

    /// Stored-name prefixes for CLIENT TRACKING's PREFIX option covering a
    /// client's `prefix` (`user:`, `user:42:`, or `us` which may begin a
    /// versioned namespace's name); None if it stays as it is.
    pub fn tracking_prefixes(&self, prefix: &[u8]) -> Option<Vec<Bytes>> {
        let served = |namespace: &NamespaceVersions| {
            std::iter::once(namespace.current)
                .chain(namespace.fallbacks.iter().copied())
                .collect::<Vec<u32>>()
        };
        let mut prefixes: Vec<Bytes> = Vec::new();
        match memchr::memchr(self.separator, prefix) {
            Some(end) => {
                let namespace = self.namespaces.get(&prefix[..end])?;
                for version in served(namespace) {
                    prefixes.extend(
                        self.pattern
                            .stored_prefixes(version, prefix)
                            .into_iter()
                            .map(Bytes::from),
                    );
                }
                if namespace.fallback_unversioned {
                    prefixes.push(Bytes::copy_from_slice(prefix));
                }
            }
            None => {
                prefixes.push(Bytes::copy_from_slice(prefix));
                for (name, namespace) in &self.namespaces {
                    if !name.starts_with(prefix) {
                        continue;
                    }
                    let mut namespace_prefix = name.clone();
                    namespace_prefix.push(self.separator);
                    for version in served(namespace) {
                        prefixes.extend(
                            self.pattern
                                .stored_prefixes(version, &namespace_prefix)
                                .into_iter()
                                .map(Bytes::from),
                        );
                    }
                    if namespace.fallback_unversioned {
                        prefixes.push(Bytes::from(namespace_prefix));
                    }
                }
                if prefixes.len() == 1 {
                    return None;
                }
            }
        }
        Some(without_overlaps(prefixes))
    }

    /// Every stored prefix for a list of client prefixes, none a prefix of
    /// another (Redis refuses overlapping prefixes).
    pub fn stored_tracking_prefixes(&self, prefixes: &[Bytes]) -> Vec<Bytes> {
        let stored = prefixes
            .iter()
            .flat_map(|prefix| self.tracking_prefixes(prefix).unwrap_or_else(|| vec![prefix.clone()]))
            .collect();
        without_overlaps(stored)
    }

    /// Rewrites a command's keys (arguments decoded), sent in database
    /// `db`; `in_transaction` because a resolve cannot wait inside MULTI.
    pub fn rewrite(&self, args: &[Bytes], in_transaction: bool, db: u32) -> Result<Rewritten, Refusal> {
        let Some(name) = args.first() else {
            return Ok(Rewritten::default());
        };
        let mut out = Rewritten {
            reply: reply_of(name, args),
            ..Rewritten::default()
        };
        if let Some(KeyReply::Keys(_) | KeyReply::Scan(_)) = &out.reply {
            out.args = self.rewrite_match(name, args);
            return Ok(out);
        }
        if let Some(KeyReply::Channels(_) | KeyReply::NumSub) = &out.reply {
            let patterns = matches!(out.reply, Some(KeyReply::Channels(_)));
            let mut rewritten = args.to_vec();
            for arg in rewritten.iter_mut().skip(2) {
                if let Some(stored) = self.keyspace_channel(arg, patterns) {
                    *arg = stored;
                }
            }
            out.args = Some(rewritten);
            return Ok(out);
        }
        if let Some(nested_at) = guarded_command(args) {
            return self.rewrite_guarded(args, nested_at, in_transaction, db);
        }
        let table = self
            .table
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let positions = match table.keys(args) {
            Keys::At(positions) => positions,
            // Redis refuses it before it touches a key.
            Keys::Malformed => return Ok(out),
            Keys::Unknown if self.table_learned() => {
                out.unknown = true;
                return Ok(out);
            }
            Keys::Unknown | Keys::Unplaceable => {
                return Err(Refusal(format!(
                    "ERR auracache: {} has keys whose positions are unknown; it is refused while key versioning is on",
                    String::from_utf8_lossy(name).to_uppercase()
                )));
            }
        };
        let mut rewritten: Option<Vec<Bytes>> = None;
        let mut resolve = Vec::new();
        for KeyArg { index, usage, kind } in positions {
            let Some(key) = args.get(index) else { continue };
            let stored = match kind {
                KeyKind::Name => {
                    let Some(namespace) = self.namespace_of(key) else {
                        if self.looks_stored(key) {
                            return Err(Refusal(format!(
                                "ERR auracache: the key '{}' has the form of a versioned stored name; with key versioning on it would alias a versioned key",
                                String::from_utf8_lossy(key)
                            )));
                        }
                        continue;
                    };
                    if namespace.fallback_unversioned && self.looks_stored(key) {
                        // Its unversioned name would be another key's stored one.
                        return Err(Refusal(format!(
                            "ERR auracache: the key '{}' has the form of a versioned stored name; with key versioning on it would alias a versioned key",
                            String::from_utf8_lossy(key)
                        )));
                    }
                    let settled = usage == KeyUse::Read && self.remembered.contains(db, key);
                    if namespace.has_fallbacks() && !settled {
                        let mode = match usage {
                            KeyUse::Read if !namespace.migrate_on_read => 'r',
                            KeyUse::Read if namespace.delete_old_on_migrate => 'd',
                            KeyUse::Read => 'r',
                            KeyUse::Write => 'w',
                        };
                        let names = namespace.names(&self.pattern, key);
                        out.migration.groups.push(Bytes::from(format!("{mode}{}", names.len())));
                        out.migration.keys.extend(names);
                        out.migration.subjects.push((db, key.clone()));
                        out.migration.owners.push((namespace.clone(), usage));
                        resolve.push(index);
                    }
                    self.pattern.stored(namespace.current, key)
                }
                KeyKind::Pattern => match self.rewrite_sort_pattern(key)? {
                    Some(stored) => stored,
                    None => continue,
                },
            };
            rewritten.get_or_insert_with(|| args.to_vec())[index] = stored;
        }
        self.migrate_in_other_database(args, db, &mut out.migration);
        if !out.migration.is_empty() {
            out.migration.generation = self.remembered.generation();
            out.migration.remembered = Some(self.remembered.clone());
        }
        if moves_databases(name) {
            // Forgotten now, and again when Redis has run it (the session
            // sees to that), so nothing planned before it is remembered.
            self.forget_all();
        }
        // A command that also writes moves its keys to the current version
        // first; pointing its reads at an old name would read a moved key.
        // WATCH must watch the name later writes use, and a blocking read
        // must wait on it: both migrate.
        let waits = [&b"WATCH"[..], b"XREAD", b"XREADGROUP"]
            .iter()
            .any(|candidate| name.eq_ignore_ascii_case(candidate));
        if out.migration.unmigrated_reads() && out.migration.read_only() && !in_transaction && !waits {
            out.resolve = Some(resolve);
        }
        out.args = rewritten;
        Ok(out)
    }

    /// MOVE key db and COPY ... DB db reach a key in another database: it
    /// is migrated there too (so MOVE/COPY see it as Redis would).
    fn migrate_in_other_database(&self, args: &[Bytes], home: u32, migration: &mut Migration) {
        let name = &args[0];
        let (key, target) = if name.eq_ignore_ascii_case(b"MOVE") && args.len() == 3 {
            (&args[1], &args[2])
        } else if name.eq_ignore_ascii_case(b"COPY") && args.len() >= 5 {
            let Some(at) = args[3..].iter().position(|arg| arg.eq_ignore_ascii_case(b"DB")) else {
                return;
            };
            let Some(target) = args.get(3 + at + 1) else {
                return;
            };
            (&args[2], target)
        } else {
            return;
        };
        let Some(target) = std::str::from_utf8(target).ok().and_then(|db| db.parse::<u32>().ok()) else {
            return;
        };
        let Some(namespace) = self.namespace_of(key) else {
            return;
        };
        if !namespace.has_fallbacks() || target == home {
            return;
        }
        let names = namespace.names(&self.pattern, key);
        migration
            .groups
            .push(Bytes::from(format!("w{}@{target}:{home}", names.len())));
        migration.keys.extend(names);
        migration.owners.push((namespace.clone(), KeyUse::Write));
        migration.subjects.push((target, key.clone()));
    }

    /// Compression's guard script runs the client's command from its ARGV
    /// (`nested_at` on): that command's keys are rewritten (and migrated)
    /// as its own, the script's KEYS with them.
    fn rewrite_guarded(
        &self,
        args: &[Bytes],
        nested_at: usize,
        in_transaction: bool,
        db: u32,
    ) -> Result<Rewritten, Refusal> {
        let mut out = self.rewrite(&args[nested_at..], in_transaction, db)?;
        let nested = out.args.take().unwrap_or_else(|| args[nested_at..].to_vec());
        let mut all = args[..3].to_vec();
        for (position, arg) in args[..nested_at].iter().enumerate().skip(3) {
            let is_key = position < 3 + key_count(args).unwrap_or(0);
            all.push(if is_key { self.stored(arg) } else { arg.clone() });
        }
        all.extend(nested);
        out.args = Some(all);
        out.resolve = None;
        Ok(out)
    }

    /// A SORT BY/GET pattern's key part (before `->`) in the current
    /// version of its namespace; refused when the namespace depends on the
    /// element (a `*` before the first separator).
    fn rewrite_sort_pattern(&self, pattern: &[u8]) -> Result<Option<Bytes>, Refusal> {
        let star = memchr::memchr(b'*', pattern).unwrap_or(pattern.len());
        let key_end = memchr::memmem::find(&pattern[star..], b"->").map_or(pattern.len(), |at| star + at);
        let (key_part, field) = pattern.split_at(key_end);
        match memchr::memchr(self.separator, key_part) {
            Some(end) if end < star => match self.namespaces.get(&key_part[..end]) {
                Some(namespace) => {
                    let mut stored = self.pattern.stored(namespace.current, key_part).to_vec();
                    stored.extend_from_slice(field);
                    Ok(Some(Bytes::from(stored)))
                }
                None if self.looks_stored(key_part) => Err(Refusal(format!(
                    "ERR auracache: the SORT pattern '{}' has the form of a versioned stored name",
                    String::from_utf8_lossy(pattern)
                ))),
                None => Ok(None),
            },
            _ => Err(Refusal(format!(
                "ERR auracache: the SORT pattern '{}' names keys of any namespace; with key versioning on, a BY/GET pattern must start with its namespace",
                String::from_utf8_lossy(pattern)
            ))),
        }
    }

    /// KEYS/SCAN: the pattern Redis matches, a superset of the stored names
    /// of the keys the client's pattern matches (the reply is filtered by
    /// the client's own pattern afterwards).
    fn rewrite_match(&self, name: &[u8], args: &[Bytes]) -> Option<Vec<Bytes>> {
        let at = if name.eq_ignore_ascii_case(b"KEYS") {
            1
        } else {
            match_position(args)?
        };
        let pattern = args.get(at)?;
        let server = self.server_pattern(pattern);
        if server == pattern.as_ref() {
            return None;
        }
        let mut args = args.to_vec();
        args[at] = Bytes::from(server);
        Some(args)
    }

    fn server_pattern(&self, pattern: &[u8]) -> Vec<u8> {
        if !closed(pattern) {
            // Text after it would change its meaning: match everything, and
            // filter by the client's pattern on the way back.
            return b"*".to_vec();
        }
        let (prefix, _) = glob::literal_prefix(pattern);
        match memchr::memchr(self.separator, &prefix) {
            Some(end) => match self.namespaces.get(&prefix[..end]) {
                // Its unversioned names too: no one glob covers both forms.
                Some(namespace) if namespace.fallback_unversioned => b"*".to_vec(),
                Some(_) => self.pattern.glob_all_versions(pattern),
                None => pattern.to_vec(),
            },
            // The namespace is not fixed: any versioned one may match
            // unless the literal prefix rules them all out.
            None if self.namespaces.keys().any(|name| name.starts_with(&prefix)) => b"*".to_vec(),
            None => pattern.to_vec(),
        }
    }

    /// A reply mapped back for the client; None if it is unchanged.
    pub fn map_reply(&self, how: &KeyReply, frame: &[u8]) -> Option<Bytes> {
        match how {
            KeyReply::Keys(pattern) => self.map_names(frame, Some(pattern), true),
            KeyReply::Scan(pattern) => {
                let (kind, children, header) = aggregate(frame)?;
                if kind != b'*' || children.len() != 2 {
                    return None;
                }
                let (start, end) = children[1];
                let names = self.map_names(&frame[start..end], pattern.as_ref(), false)?;
                let mut out = BytesMut::with_capacity(frame.len());
                out.extend_from_slice(&frame[..header]);
                out.extend_from_slice(&frame[children[0].0..children[0].1]);
                out.extend_from_slice(&names);
                Some(out.freeze())
            }
            KeyReply::Random => {
                let stored = bulk(frame)?;
                match self.client_key(stored) {
                    Mapped::Visible(key) if key.len() == stored.len() => None,
                    Mapped::Visible(key) => Some(encode_bulk(key)),
                    Mapped::Hidden => Some(Bytes::from_static(b"$-1\r\n")),
                }
            }
            KeyReply::First => {
                let (kind, children, _) = aggregate(frame)?;
                if !matches!(kind, b'*' | b'>') || children.is_empty() {
                    return None;
                }
                self.replace_children(frame, &children, &[0])
            }
            KeyReply::Refused(refusal) => Some(refusal.clone()),
            KeyReply::Exec(queued) => {
                let (kind, children, header) = aggregate(frame)?;
                if kind != b'*' || children.len() != queued.len() {
                    return None;
                }
                let mut out = BytesMut::with_capacity(frame.len());
                out.extend_from_slice(&frame[..header]);
                for (how, (start, end)) in queued.iter().zip(children) {
                    let element = &frame[start..end];
                    match how.as_ref().and_then(|how| self.map_reply(how, element)) {
                        Some(mapped) => out.extend_from_slice(&mapped),
                        None => out.extend_from_slice(element),
                    }
                }
                Some(out.freeze())
            }
            KeyReply::Channels(pattern) => {
                let (kind, children, _) = aggregate(frame)?;
                if kind != b'*' {
                    return None;
                }
                let mut kept = Vec::with_capacity(children.len());
                for (start, end) in children {
                    let channel = self.client_channel(bulk(&frame[start..end])?)?;
                    if let Some(channel) =
                        channel.filter(|channel| pattern.as_ref().is_none_or(|p| glob::matches(p, channel)))
                    {
                        kept.push(encode_bulk(&channel));
                    }
                }
                let mut out = BytesMut::with_capacity(frame.len());
                out.extend_from_slice(format!("*{}\r\n", kept.len()).as_bytes());
                kept.iter().for_each(|channel| out.extend_from_slice(channel));
                Some(out.freeze())
            }
            KeyReply::NumSub => {
                // RESP2 a flat array, RESP3 a map: channels at even places.
                let (_, children, _) = aggregate(frame)?;
                let mut out = BytesMut::with_capacity(frame.len());
                out.extend_from_slice(&frame[..children.first()?.0]);
                for (position, (start, end)) in children.into_iter().enumerate() {
                    let element = &frame[start..end];
                    let mapped = if position % 2 == 0 {
                        bulk(element).and_then(|channel| self.client_channel(channel)).flatten()
                    } else {
                        None
                    };
                    match mapped {
                        Some(channel) => out.extend_from_slice(&encode_bulk(&channel)),
                        None => out.extend_from_slice(element),
                    }
                }
                Some(out.freeze())
            }
            KeyReply::Streams => {
                let (kind, children, _) = aggregate(frame)?;
                match kind {
                    b'%' => {
                        let keys: Vec<usize> = (0..children.len()).step_by(2).collect();
                        self.replace_children(frame, &children, &keys)
                    }
                    b'*' => {
                        let mut out = BytesMut::with_capacity(frame.len());
                        out.extend_from_slice(&frame[..children.first()?.0]);
                        let mut changed = false;
                        for &(start, end) in &children {
                            let pair = &frame[start..end];
                            match aggregate(pair).and_then(|(_, inner, _)| self.replace_children(pair, &inner, &[0])) {
                                Some(mapped) => {
                                    changed = true;
                                    out.extend_from_slice(&mapped);
                                }
                                None => out.extend_from_slice(pair),
                            }
                        }
                        changed.then(|| out.freeze())
                    }
                    _ => None,
                }
            }
        }
    }

    /// An array of names with hidden ones left out, the rest mapped back
    /// (and matched against the client's pattern; each once if `dedupe`).
    fn map_names(&self, frame: &[u8], pattern: Option<&Bytes>, dedupe: bool) -> Option<Bytes> {
        let (kind, children, _) = aggregate(frame)?;
        if kind != b'*' {
            return None;
        }
        let mut seen = std::collections::HashSet::new();
        let mut kept: Vec<&[u8]> = Vec::with_capacity(children.len());
        for (start, end) in children {
            let stored = bulk(&frame[start..end])?;
            let Mapped::Visible(key) = self.client_key(stored) else {
                continue;
            };
            if pattern.is_some_and(|pattern| !glob::matches(pattern, key)) {
                continue;
            }
            if dedupe && !seen.insert(key) {
                continue;
            }
            kept.push(key);
        }
        let mut out = BytesMut::with_capacity(frame.len());
        out.extend_from_slice(format!("*{}\r\n", kept.len()).as_bytes());
        for key in kept {
            out.extend_from_slice(&encode_bulk(key));
        }
        Some(out.freeze())
    }

    /// `frame` with the bulk children at `which` mapped back.
    fn replace_children(&self, frame: &[u8], children: &[(usize, usize)], which: &[usize]) -> Option<Bytes> {
        let mut out = BytesMut::with_capacity(frame.len());
        let mut copied = 0;
        for &index in which {
            let (start, end) = *children.get(index)?;
            let Some(stored) = bulk(&frame[start..end]) else {
                continue;
            };
            let Mapped::Visible(key) = self.client_key(stored) else {
                continue;
            };
            if key.len() == stored.len() {
                continue;
            }
            out.extend_from_slice(&frame[copied..start]);
            out.extend_from_slice(&encode_bulk(key));
            copied = end;
        }
        if copied == 0 {
            return None;
        }
        out.extend_from_slice(&frame[copied..]);
        Some(out.freeze())
    }

    /// A channel name as the client knows it: a keyspace channel mapped
    /// back (Some(None) if no client key reaches it), others as they are.
    fn client_channel(&self, channel: &[u8]) -> Option<Option<Bytes>> {
        let Some((prefix, stored)) = split_keyspace(channel) else {
            return Some(Some(Bytes::copy_from_slice(channel)));
        };
        Some(match self.client_key(stored) {
            Mapped::Visible(key) => Some(Bytes::from([prefix, key].concat())),
            Mapped::Hidden => None,
        })
    }

    /// A keyspace-notification channel (`__keyspace@0__:<stored>`) or
    /// pattern for the client's key (or pattern) in it; None if the
    /// channel is not a keyspace one.
    pub fn keyspace_channel(&self, channel: &[u8], is_pattern: bool) -> Option<Bytes> {
        let (prefix, key) = split_keyspace(channel)?;
        let rewritten = if is_pattern {
            self.server_pattern(key)
        } else {
            self.stored(key).to_vec()
        };
        let mut out = prefix.to_vec();
        out.extend_from_slice(&rewritten);
        Some(Bytes::from(out))
    }
}

/// A piped client's keyspace subscriptions (each stored channel or
/// pattern, and the client's own it was rewritten from) and its own
/// CLIENT TRACKING prefixes.
#[derive(Debug, Default)]
pub struct Subscriptions {
    channels: std::sync::Mutex<HashMap<Bytes, Bytes>>,
    tracking_prefixes: std::sync::Mutex<Vec<Bytes>>,
    /// How each reply still owed names keys, in order (commands other
    /// than (un)subscriptions get one reply each on a pipe).
    replies: std::sync::Mutex<std::collections::VecDeque<Option<KeyReply>>>,
    /// MONITOR or CLIENT REPLY: replies no longer pair with commands.
    unpaired: std::sync::atomic::AtomicBool,
    /// The connection speaks RESP3 (messages arrive as pushes).
    resp3: std::sync::atomic::AtomicBool,
    /// RESETs so far (the mapper forgets its own state at each).
    resets: AtomicU64,
}

impl Subscriptions {
    pub fn remember(&self, stored: Bytes, client: Bytes) {
        lock(&self.channels).insert(stored, client);
    }

    /// The client's BCAST prefixes (added to those before, or all dropped
    /// with `off`): its invalidations name only keys with one.
    pub fn track_prefixes(&self, prefixes: Vec<Bytes>, off: bool) {
        let mut tracked = lock(&self.tracking_prefixes);
        if off {
            tracked.clear();
        }
        for prefix in prefixes {
            if !tracked.contains(&prefix) {
                tracked.push(prefix);
            }
        }
    }

    pub fn set_resp3(&self, resp3: bool) {
        self.resp3.store(resp3, Ordering::Release);
    }

    /// RESET: no subscriptions, tracking or MONITOR any more, RESP2.
    pub fn reset(&self) {
        lock(&self.channels).clear();
        lock(&self.tracking_prefixes).clear();
        lock(&self.replies).clear();
        self.unpaired.store(false, Ordering::Release);
        self.set_resp3(false);
        self.resets.fetch_add(1, Ordering::AcqRel);
    }

    /// A command was piped: its reply, when it comes, is mapped so.
    pub fn expect_reply(&self, how: Option<KeyReply>) {
        if !self.unpaired.load(Ordering::Acquire) {
            lock(&self.replies).push_back(how);
        }
    }

    pub fn stop_pairing(&self) {
        self.unpaired.store(true, Ordering::Release);
        lock(&self.replies).clear();
    }

    /// How the next reply names keys (None once replies stopped pairing).
    fn next_reply(&self) -> Option<KeyReply> {
        if self.unpaired.load(Ordering::Acquire) {
            return None;
        }
        lock(&self.replies).pop_front().flatten()
    }

    fn client(&self, stored: &[u8]) -> Option<Bytes> {
        lock(&self.channels).get(stored).cloned()
    }

    fn tracked(&self, key: &[u8]) -> bool {
        let prefixes = lock(&self.tracking_prefixes);
        prefixes.is_empty() || prefixes.iter().any(|prefix| key.starts_with(prefix))
    }
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Maps back, frame by frame, what Redis sends a piped client: pub/sub
/// messages and confirmations on keyspace channels, keyevent payloads,
/// invalidations (RESP3 pushes, or RESP2 `__redis__:invalidate` messages).
/// Only pushes, and in RESP2 the frames of a subscribed connection, are
/// looked at, never replies. Messages about names no client key reaches
/// are left out, and so are keyspace events of fallback versions (a
/// migration's RENAME/UNLINK of the old name, and the `rename_to` that
/// follows it).
pub struct PipeMapper {
    versions: Arc<Versioning>,
    subscriptions: Arc<Subscriptions>,
    pending: BytesMut,
    scanner: crate::protocol::ReplyScanner,
    /// A RESP2 connection's subscriptions (channels and patterns, and
    /// shard channels, counted apart by Redis): while any, it is in
    /// subscribed mode (messages arrive as arrays).
    subscribed: [bool; 2],
    /// The RESETs seen.
    resets: u64,
    /// The client key of a `rename_from` left out, per channel kind
    /// (keyspace, keyevent): the `rename_to` after it is a migration's too.
    renamed: [Option<Bytes>; 2],
}

/// What becomes of one frame.
enum Fate {
    Unchanged,
    Dropped,
    Replaced(Bytes),
}

impl PipeMapper {
    pub fn new(versions: Arc<Versioning>, subscriptions: Arc<Subscriptions>, resp3: bool) -> PipeMapper {
        subscriptions.set_resp3(resp3);
        PipeMapper {
            versions,
            subscriptions,
            pending: BytesMut::new(),
            scanner: crate::protocol::ReplyScanner::new(crate::protocol::ReplyLimits {
                max_nesting_depth: usize::MAX,
                max_bulk_bytes: usize::MAX,
            }),
            subscribed: [false, false],
            resets: 0,
            renamed: [None, None],
        }
    }

    /// The complete frames in what has arrived so far, mapped back.
    pub fn feed(&mut self, data: &[u8]) -> Vec<Bytes> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        loop {
            let length = match self.scanner.scan(&self.pending) {
                Ok(Some(frame)) => frame.len,
                Ok(None) => return out,
                // Not RESP: pass everything on as it is.
                Err(_) => {
                    out.push(self.pending.split().freeze());
                    return out;
                }
            };
            let frame = self.pending.split_to(length).freeze();
            match self.map_frame(&frame) {
                Fate::Unchanged => out.push(frame),
                Fate::Replaced(mapped) => out.push(mapped),
                Fate::Dropped => {}
            }
        }
    }

    fn map_frame(&mut self, frame: &[u8]) -> Fate {
        let resets = self.subscriptions.resets.load(Ordering::Acquire);
        if resets != self.resets {
            (self.resets, self.subscribed, self.renamed) = (resets, [false, false], [None, None]);
        }
        if self.is_reply(frame) {
            return match self.subscriptions.next_reply() {
                Some(how) => match self.versions.map_reply(&how, frame) {
                    Some(mapped) => Fate::Replaced(mapped),
                    None => Fate::Unchanged,
                },
                None => Fate::Unchanged,
            };
        }
        let Some((kind, children, header)) = aggregate(frame) else {
            return Fate::Unchanged;
        };
        if !matches!(kind, b'*' | b'>') || children.len() < 2 {
            return Fate::Unchanged;
        }
        let part =
            |index: usize| -> Option<&[u8]> { children.get(index).and_then(|&(start, end)| bulk(&frame[start..end])) };
        let Some(word) = part(0).map(<[u8]>::to_ascii_lowercase) else {
            return Fate::Unchanged;
        };
        let confirmation = matches!(
            word.as_slice(),
            b"subscribe" | b"unsubscribe" | b"psubscribe" | b"punsubscribe" | b"ssubscribe" | b"sunsubscribe"
        ) && children.len() == 3;
        if confirmation {
            // RESP2 (or RESP3, before a HELLO 2): subscribed while a count
            // Redis gives is not zero.
            let (start, end) = children[2];
            let shard = word == b"ssubscribe" || word == b"sunsubscribe";
            self.subscribed[usize::from(shard)] = !matches!(&frame[start..end], b":0\r\n");
        } else if kind == b'*' && !self.subscribed.contains(&true) {
            return Fate::Unchanged;
        }
        let mut replacements: Vec<(usize, Bytes)> = Vec::new();
        let fate = match word.as_slice() {
            _ if confirmation => {
                if let Some(client) = part(1).and_then(|stored| self.subscriptions.client(stored)) {
                    replacements.push((1, encode_bulk(&client)));
                }
                None
            }
            b"message" | b"pmessage" if children.len() == 3 + usize::from(word == b"pmessage") => {
                self.map_message(frame, &children, &mut replacements)
            }
            b"invalidate" if kind == b'>' && children.len() == 2 => {
                let (start, end) = children[1];
                match self.map_keys(&frame[start..end]) {
                    Some(Some(keys)) => {
                        replacements.push((1, keys));
                        None
                    }
                    Some(None) => Some(Fate::Dropped),
                    None => None,
                }
            }
            _ => None,
        };
        if let Some(fate) = fate {
            return fate;
        }
        if replacements.is_empty() {
            return Fate::Unchanged;
        }
        replacements.sort_by_key(|(index, _)| *index);
        let mut out = BytesMut::with_capacity(frame.len());
        out.extend_from_slice(&frame[..header]);
        let mut replacements = replacements.into_iter().peekable();
        for (index, (start, end)) in children.iter().enumerate() {
            match replacements.next_if(|(at, _)| *at == index) {
                Some((_, replacement)) => out.extend_from_slice(&replacement),
                None => out.extend_from_slice(&frame[*start..*end]),
            }
        }
        Fate::Replaced(out.freeze())
    }

    /// Whether a frame answers a command (rather than being a push, or a
    /// RESP2 subscribed connection's message or confirmation).
    fn is_reply(&self, frame: &[u8]) -> bool {
        match frame.first() {
            Some(b'>') => false,
            Some(b'*') if !self.subscriptions.resp3.load(Ordering::Acquire) => {
                let Some((_, children, _)) = aggregate(frame) else {
                    return true;
                };
                let part = |index: usize| children.get(index).map(|&(start, end)| &frame[start..end]);
                let word = part(0).and_then(bulk).map(<[u8]>::to_ascii_lowercase);
                let confirmation = children.len() == 3
                    && part(2).is_some_and(|count| count.starts_with(b":"))
                    && matches!(
                        word.as_deref(),
                        Some(
                            b"subscribe"
                                | b"unsubscribe"
                                | b"psubscribe"
                                | b"punsubscribe"
                                | b"ssubscribe"
                                | b"sunsubscribe"
                        )
                    );
                let message = self.subscribed.contains(&true)
                    && matches!(word.as_deref(), Some(b"message" | b"pmessage" | b"smessage"));
                !(confirmation || message)
            }
            _ => true,
        }
    }

    /// A message's channel (and pattern, and payload) mapped back;
    /// Some(Dropped) if the client must not see it.
    fn map_message(
        &mut self,
        frame: &[u8],
        children: &[(usize, usize)],
        replacements: &mut Vec<(usize, Bytes)>,
    ) -> Option<Fate> {
        let part =
            |index: usize| -> Option<&[u8]> { children.get(index).and_then(|&(start, end)| bulk(&frame[start..end])) };
        let pmessage = children.len() == 4;
        let channel_at = children.len() - 2;
        let channel = part(channel_at)?;
        let client_pattern = if pmessage {
            part(1).and_then(|pattern| self.subscriptions.client(pattern))
        } else {
            None
        };
        if let Some(pattern) = &client_pattern {
            replacements.push((1, encode_bulk(pattern)));
        }
        let mut shown_channel = Bytes::copy_from_slice(channel);
        if channel == b"__redis__:invalidate" {
            // RESP2 tracking, redirected here: the payload lists the keys.
            let (start, end) = children[channel_at + 1];
            match self.map_keys(&frame[start..end]) {
                Some(Some(keys)) => replacements.push((channel_at + 1, keys)),
                Some(None) => return Some(Fate::Dropped),
                None => {}
            }
        } else if let Some((prefix, stored)) = split_keyspace(channel) {
            let event = part(channel_at + 1).unwrap_or_default();
            let Some(key) = self.event_key(0, stored, event) else {
                return Some(Fate::Dropped);
            };
            if key.len() != stored.len() {
                shown_channel = Bytes::from([prefix, &key[..]].concat());
                replacements.push((channel_at, encode_bulk(&shown_channel)));
            }
        } else if channel.starts_with(b"__keyevent@") {
            let stored = part(channel_at + 1)?;
            let event = channel.rsplit(|byte| *byte == b':').next().unwrap_or_default();
            let Some(key) = self.event_key(1, stored, event) else {
                return Some(Fate::Dropped);
            };
            if key.len() != stored.len() {
                replacements.push((channel_at + 1, encode_bulk(&key)));
            }
        }
        if let Some(pattern) = client_pattern
            && !glob::matches(&pattern, &shown_channel)
        {
            // The pattern Redis matched was wider than the client's.
            return Some(Fate::Dropped);
        }
        None
    }

    /// The client key a keyspace event names, or None when the client must
    /// not hear of it: a name no client key reaches, a fallback version's
    /// name, or the `rename_to` of a migration whose `rename_from` was left out.
    fn event_key(&mut self, kind: usize, stored: &[u8], event: &[u8]) -> Option<Bytes> {
        let versions = &self.versions;
        let (key, current) = match versions.client_key(stored) {
            Mapped::Hidden => return None,
            Mapped::Visible(key) => (Bytes::copy_from_slice(key), versions.is_current(stored)),
        };
        let renamed = self.renamed[kind].take();
        if !current {
            if event == b"rename_from" {
                self.renamed[kind] = Some(key);
            }
            return None;
        }
        if event == b"rename_to" && renamed.as_ref() == Some(&key) {
            return None;
        }
        Some(key)
    }

    /// An invalidation's array of stored keys mapped back (and limited to
    /// the client's BCAST prefixes): None if it is not an array of names,
    /// Some(None) if no key is left.
    fn map_keys(&self, keys: &[u8]) -> Option<Option<Bytes>> {
        let (_, items, _) = aggregate(keys)?;
        let mut kept: Vec<Bytes> = Vec::with_capacity(items.len());
        for (start, end) in &items {
            match self.versions.client_key(bulk(&keys[*start..*end])?) {
                Mapped::Visible(key) if self.subscriptions.tracked(key) => kept.push(encode_bulk(key)),
                _ => {}
            }
        }
        if kept.is_empty() {
            return Some(None);
        }
        let mut array = BytesMut::new();
        array.extend_from_slice(format!("*{}\r\n", kept.len()).as_bytes());
        kept.iter().for_each(|key| array.extend_from_slice(key));
        Some(Some(array.freeze()))
    }
}

/// Sorted, each once, and none that a shorter one in the list covers.
fn without_overlaps(mut prefixes: Vec<Bytes>) -> Vec<Bytes> {
    prefixes.sort();
    prefixes.dedup();
    let mut kept: Vec<Bytes> = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        // Sorted, so a covering prefix comes just before what it covers.
        if kept.last().is_none_or(|shorter| !prefix.starts_with(shorter)) {
            kept.push(prefix);
        }
    }
    kept
}

/// `__keyspace@<db>__:` and the key after it.
pub fn split_keyspace(channel: &[u8]) -> Option<(&[u8], &[u8])> {
    if !channel.starts_with(b"__keyspace@") {
        return None;
    }
    let end = memchr::memmem::find(channel, b"__:")? + 3;
    Some(channel.split_at(end))
}

/// Where the client's command starts in a call of compression's guard
/// script (`EVAL[_RO] <guard> numkeys keys... magic name error command...`).
fn guarded_command(args: &[Bytes]) -> Option<usize> {
    let name = args.first()?;
    if !(name.eq_ignore_ascii_case(b"EVAL") || name.eq_ignore_ascii_case(b"EVAL_RO")) {
        return None;
    }
    if args.get(1)?.as_ref() != crate::codec::strings::GUARD_SCRIPT.as_bytes() {
        return None;
    }
    let at = 3 + key_count(args)? + 3;
    (at < args.len()).then_some(at)
}

/// An EVAL's numkeys.
fn key_count(args: &[Bytes]) -> Option<usize> {
    std::str::from_utf8(args.get(2)?).ok()?.parse().ok()
}

/// Whether a command moves or empties databases (what [`Remembered`]
/// knows then no longer holds).
pub fn moves_databases(name: &[u8]) -> bool {
    ["SWAPDB", "FLUSHALL", "FLUSHDB"]
        .iter()
        .any(|moving| name.eq_ignore_ascii_case(moving.as_bytes()))
}

/// How a command's reply names keys, by its name.
fn reply_of(name: &[u8], args: &[Bytes]) -> Option<KeyReply> {
    let is = |candidate: &str| name.eq_ignore_ascii_case(candidate.as_bytes());
    if is("KEYS") {
        return Some(KeyReply::Keys(args.get(1)?.clone()));
    }
    if is("SCAN") {
        return Some(KeyReply::Scan(
            match_position(args).and_then(|at| args.get(at)).cloned(),
        ));
    }
    if is("RANDOMKEY") {
        return Some(KeyReply::Random);
    }
    if [
        "BLPOP", "BRPOP", "BZPOPMIN", "BZPOPMAX", "BLMPOP", "BZMPOP", "LMPOP", "ZMPOP",
    ]
    .iter()
    .any(|candidate| is(candidate))
    {
        return Some(KeyReply::First);
    }
    if is("XREAD") || is("XREADGROUP") {
        return Some(KeyReply::Streams);
    }
    if is("PUBSUB") {
        let sub = args.get(1)?;
        if sub.eq_ignore_ascii_case(b"CHANNELS") {
            return Some(KeyReply::Channels(args.get(2).cloned()));
        }
        if sub.eq_ignore_ascii_case(b"NUMSUB") {
            return Some(KeyReply::NumSub);
        }
    }
    None
}

/// Where SCAN's MATCH pattern is (options after the cursor, in pairs; the
/// last MATCH wins, as in Redis).
fn match_position(args: &[Bytes]) -> Option<usize> {
    let mut index = 2;
    let mut found = None;
    while index + 1 < args.len() {
        if args[index].eq_ignore_ascii_case(b"MATCH") {
            found = Some(index + 1);
        }
        index += 2;
    }
    found
}

/// Whether text appended after `pattern` is read as text: no class left
/// open, no escape left dangling.
fn closed(pattern: &[u8]) -> bool {
    let mut index = 0;
    let mut in_class = false;
    while index < pattern.len() {
        match pattern[index] {
            b'\\' if index + 1 == pattern.len() => return false,
            b'\\' => index += 1,
            b'[' if !in_class => in_class = true,
            b']' if in_class => in_class = false,
            _ => {}
        }
        index += 1;
    }
    !in_class
}

/// The integers of an array reply (`*2\r\n:0\r\n:1\r\n`).
pub fn integers(reply: &[u8]) -> Vec<i64> {
    reply
        .split(|byte| *byte == b'\n')
        .filter_map(|line| line.strip_prefix(b":"))
        .filter_map(|line| {
            std::str::from_utf8(line.strip_suffix(b"\r").unwrap_or(line))
                .ok()?
                .parse()
                .ok()
        })
        .collect()
}

/// See [`aggregate`].
pub type Aggregate = (u8, Vec<(usize, usize)>, usize);

/// An aggregate reply's kind (`*`, `%`, `>`, `~`), its children's
/// (start, end) in `frame` (a map's keys and values alternate), and where
/// its header ends.
pub fn aggregate(frame: &[u8]) -> Option<Aggregate> {
    let kind = *frame.first()?;
    if !matches!(kind, b'*' | b'%' | b'>' | b'~') {
        return None;
    }
    let line_end = memchr::memchr(b'\n', frame)?;
    let count: i64 = std::str::from_utf8(frame.get(1..line_end.checked_sub(1)?)?)
        .ok()?
        .parse()
        .ok()?;
    if count < 0 {
        return None;
    }
    let children = if kind == b'%' {
        count as usize * 2
    } else {
        count as usize
    };
    let header = line_end + 1;
    let mut scanner = crate::protocol::ReplyScanner::new(crate::protocol::ReplyLimits {
        max_nesting_depth: usize::MAX,
        max_bulk_bytes: usize::MAX,
    });
    let mut out = Vec::with_capacity(children);
    let mut offset = header;
    for _ in 0..children {
        let frame_len = match scanner.scan(frame.get(offset..)?) {
            Ok(Some(found)) => found.len,
            _ => return None,
        };
        out.push((offset, offset + frame_len));
        offset += frame_len;
    }
    Some((kind, out, header))
}

/// A SCAN reply's next cursor and names; None if it is not one.
pub fn scan_page(reply: &[u8]) -> Option<(Bytes, Vec<Bytes>)> {
    let (_, parts, _) = aggregate(reply)?;
    let [(cursor_start, cursor_end), (keys_start, keys_end)] = parts[..] else {
        return None;
    };
    let cursor = bulk(&reply[cursor_start..cursor_end])?;
    let keys_frame = &reply[keys_start..keys_end];
    let (_, items, _) = aggregate(keys_frame)?;
    let keys = items
        .iter()
        .map(|&(start, end)| bulk(&keys_frame[start..end]).map(Bytes::copy_from_slice))
        .collect::<Option<Vec<Bytes>>>()?;
    Some((Bytes::copy_from_slice(cursor), keys))
}

/// A bulk or simple string's content.
pub fn bulk(frame: &[u8]) -> Option<&[u8]> {
    let line_end = memchr::memchr(b'\n', frame)?;
    match frame.first()? {
        b'$' => {
            let length: usize = std::str::from_utf8(frame.get(1..line_end - 1)?).ok()?.parse().ok()?;
            frame.get(line_end + 1..line_end + 1 + length)
        }
        b'+' => frame.get(1..line_end - 1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_a_cluster_every_version_of_a_key_is_in_the_keys_own_slot() {
        use crate::upstream::cluster::key_slot;
        let pattern = KeyPattern::parse("v{version}:{key}").for_cluster();
        for (key, stored) in [
            (&b"user:1"[..], &b"v2:{user:1}"[..]),
            (b"{user1}:a", b"v2:{user1}:a"),
            (b"{foo}", b"v2:{foo}}"),
            (b"{foo}}", b"v2:{foo}}}"),
            (b"{{user1}:a}", b"v2:{{user1}:a}"),
            (b"a}b", b"v2:a}b"),
            (b"x{", b"v2:{x{}"),
        ] {
            assert_eq!(&pattern.stored(2, key)[..], stored, "{}", String::from_utf8_lossy(key));
            assert_eq!(
                pattern.parse_stored(stored),
                Some((2, key)),
                "{}",
                String::from_utf8_lossy(stored)
            );
            if key != b"a}b" {
                // (A `}` without a tag cannot be wrapped: its versions'
                // slots differ, a limitation the README states.)
                assert_eq!(key_slot(&pattern.stored(1, key)), key_slot(&pattern.stored(7, key)));
            }
        }
        // Tagged or hashed whole, the slot is the client key's own.
        for key in [&b"user:1"[..], b"{user1}:a", b"x{", b"{foo}", b"{foo}}", b"{{user1}:a}"] {
            assert_eq!(key_slot(&pattern.stored(2, key)), key_slot(key));
        }
        // Every key over `a{}` up to 7 bytes reads back from its stored
        // name, and every name that reads back is that key's stored name
        // (so no two keys share one).
        let mut keys: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..7 {
            let longer: Vec<Vec<u8>> = keys
                .iter()
                .filter(|key| key.len() == keys.last().map_or(0, Vec::len))
                .flat_map(|key| b"a{}".iter().map(move |byte| [key.as_slice(), &[*byte]].concat()))
                .collect();
            keys.extend(longer);
        }
        for key in &keys {
            let stored = pattern.stored(3, key);
            assert_eq!(
                pattern.parse_stored(&stored),
                Some((3, key.as_slice())),
                "{}",
                String::from_utf8_lossy(key)
            );
            let name = [b"v3:".as_slice(), key].concat();
            if let Some((_, read)) = pattern.parse_stored(&name) {
                assert_eq!(
                    &pattern.stored(3, read)[..],
                    name.as_slice(),
                    "{}",
                    String::from_utf8_lossy(&name)
                );
            }
        }
        // A name in neither form is no stored name.
        assert_eq!(pattern.parse_stored(b"v2:user:1"), None);
        assert_eq!(pattern.parse_stored(b"v2:x"), None);
        // Outside a cluster nothing is wrapped.
        assert_eq!(
            &KeyPattern::parse("v{version}:{key}").stored(2, b"user:1")[..],
            b"v2:user:1"
        );
    }

    #[test]
    fn in_a_cluster_a_key_framed_in_braces_stays_in_its_tags_slot() {
        use crate::upstream::cluster::key_slot;
        // Redis Cluster puts `{user1}` and `{user1}:a` in one slot (tag
        // `user1`): through versioning they must stay together, or a
        // transaction or RENAME over both gets CROSSSLOT.
        let pattern = KeyPattern::parse("v{version}:{key}").for_cluster();
        assert_eq!(key_slot(b"{user1}"), key_slot(b"{user1}:a"));
        assert_eq!(
            key_slot(&pattern.stored(2, b"{user1}")),
            key_slot(&pattern.stored(2, b"{user1}:a"))
        );
    }

    fn versioning(pattern: &str) -> Versioning {
        let mut config = Config::default();
        config.versioning.key_pattern = pattern.into();
        let user = config.namespaces.entry("user".into()).or_default();
        user.version = Some(2);
        user.fallback_versions = vec![1];
        Versioning::from_config(&config).unwrap()
    }

    fn args(words: &str) -> Vec<Bytes> {
        words
            .split_whitespace()
            .map(|word| Bytes::copy_from_slice(word.as_bytes()))
            .collect()
    }

    #[test]
    fn stored_names_round_trip_in_either_order() {
        for (pattern, stored) in [("v{version}:{key}", "v2:user:1"), ("{key}@v{version}", "user:1@v2")] {
            let versions = versioning(pattern);
            assert_eq!(versions.stored(b"user:1"), Bytes::from(stored));
            assert_eq!(versions.client_key(stored.as_bytes()), Mapped::Visible(b"user:1"));
            assert_eq!(versions.stored(b"session:1"), Bytes::from_static(b"session:1"));
        }
        let versions = versioning("v{version}:{key}");
        assert_eq!(versions.client_key(b"v1:user:1"), Mapped::Visible(b"user:1"));
        assert_eq!(versions.client_key(b"v3:user:1"), Mapped::Hidden, "another version");
        // Not a version number as written: a key of the unversioned "v02".
        assert_eq!(versions.client_key(b"v02:user:1"), Mapped::Visible(b"v02:user:1"));
        assert_eq!(versions.client_key(b"user:1"), Mapped::Hidden, "unreachable");
        assert_eq!(versions.client_key(b"v2:session:1"), Mapped::Visible(b"v2:session:1"));
        assert_eq!(versions.client_key(b"plain"), Mapped::Visible(b"plain"));
    }

    #[test]
    fn keys_and_scan_patterns_cover_every_version() {
        let versions = versioning("v{version}:{key}");
        assert_eq!(versions.server_pattern(b"user:*"), b"v*:user:*".to_vec());
        assert_eq!(versions.server_pattern(b"session:*"), b"session:*".to_vec());
        assert_eq!(versions.server_pattern(b"u*"), b"*".to_vec());
        assert_eq!(versions.server_pattern(b"x*"), b"x*".to_vec());
        let scan = versions
            .rewrite(&args("SCAN 0 COUNT 10 MATCH user:1*"), false, 0)
            .unwrap();
        assert_eq!(scan.args.unwrap()[5], Bytes::from_static(b"v*:user:1*"));
    }

    #[test]
    fn replies_are_mapped_back_and_filtered() {
        let versions = versioning("v{version}:{key}");
        let keys =
            b"*5\r\n$9\r\nv2:user:1\r\n$9\r\nv1:user:1\r\n$9\r\nv3:user:2\r\n$9\r\nsession:1\r\n$6\r\nuser:9\r\n";
        let mapped = versions
            .map_reply(&KeyReply::Keys(Bytes::from_static(b"*")), keys)
            .unwrap();
        assert_eq!(&mapped[..], b"*2\r\n$6\r\nuser:1\r\n$9\r\nsession:1\r\n");
        let mapped = versions
            .map_reply(&KeyReply::Keys(Bytes::from_static(b"s*")), keys)
            .unwrap();
        assert_eq!(&mapped[..], b"*1\r\n$9\r\nsession:1\r\n");
        let scan = b"*2\r\n$2\r\n17\r\n*1\r\n$9\r\nv2:user:1\r\n";
        let mapped = versions.map_reply(&KeyReply::Scan(None), scan).unwrap();
        assert_eq!(&mapped[..], b"*2\r\n$2\r\n17\r\n*1\r\n$6\r\nuser:1\r\n");
        let popped = b"*2\r\n$9\r\nv2:user:1\r\n$1\r\nx\r\n";
        assert_eq!(
            &versions.map_reply(&KeyReply::First, popped).unwrap()[..],
            b"*2\r\n$6\r\nuser:1\r\n$1\r\nx\r\n"
        );
        assert_eq!(versions.map_reply(&KeyReply::First, b"*-1\r\n"), None);
        let streams = b"%1\r\n$9\r\nv2:user:s\r\n*0\r\n";
        assert_eq!(
            &versions.map_reply(&KeyReply::Streams, streams).unwrap()[..],
            b"%1\r\n$6\r\nuser:s\r\n*0\r\n"
        );
        let streams = b"*1\r\n*2\r\n$9\r\nv2:user:s\r\n*0\r\n";
        assert_eq!(
            &versions.map_reply(&KeyReply::Streams, streams).unwrap()[..],
            b"*1\r\n*2\r\n$6\r\nuser:s\r\n*0\r\n"
        );
        assert_eq!(
            &versions.map_reply(&KeyReply::Random, b"$9\r\nv3:user:1\r\n").unwrap()[..],
            b"$-1\r\n"
        );
    }

    #[test]
    fn writes_migrate_every_fallback_and_reads_copy() {
        let versions = versioning("v{version}:{key}");
        let set = versions.rewrite(&args("SET user:1 x"), false, 0).unwrap();
        assert_eq!(set.args.unwrap(), args("SET v2:user:1 x"));
        assert_eq!(set.migration.keys, args("v2:user:1 v1:user:1"));
        assert_eq!(set.migration.groups, args("w2"));
        let get = versions.rewrite(&args("GET user:1"), false, 0).unwrap();
        assert_eq!(get.migration.groups, args("r2"));
        let plain = versions.rewrite(&args("GET session:1"), false, 0).unwrap();
        assert!(plain.args.is_none() && plain.migration.is_empty());
    }

    #[test]
    fn keys_the_table_cannot_place_are_refused() {
        let versions = versioning("v{version}:{key}");
        // A Redis-6-style entry: movable keys, no key specifications, and
        // no built-in entry of that name.
        let reply = b"*1\r\n*6\r\n$9\r\nmodule.mv\r\n:-2\r\n*2\r\n+write\r\n+movablekeys\r\n:0\r\n:0\r\n:0\r\n";
        versions.set_table(KeyTable::from_command_reply(reply).unwrap());
        let refused = versions.rewrite(&args("MODULE.MV user:1"), false, 0).unwrap_err();
        assert!(
            refused.0.contains("MODULE.MV has keys whose positions are unknown"),
            "{refused:?}"
        );
        // Not in the upstream's table at all: Redis answers it (unknown command).
        assert!(
            versions
                .rewrite(&args("NOSUCH user:1"), false, 0)
                .unwrap()
                .args
                .is_none()
        );
    }

    #[test]
    fn tracking_prefixes_name_every_served_version() {
        let versions = versioning("v{version}:{key}");
        assert_eq!(
            versions.tracking_prefixes(b"user:").unwrap(),
            vec![Bytes::from_static(b"v1:user:"), Bytes::from_static(b"v2:user:")]
        );
        assert_eq!(versions.tracking_prefixes(b"session:"), None);
        let suffixed = versioning("{key}@v{version}");
        assert_eq!(
            suffixed.tracking_prefixes(b"user:").unwrap(),
            vec![Bytes::from_static(b"user:")]
        );
    }

    #[test]
    fn sort_patterns_need_their_namespace() {
        let versions = versioning("v{version}:{key}");
        assert_eq!(
            versions.rewrite_sort_pattern(b"user:*->name").unwrap(),
            Some(Bytes::from_static(b"v2:user:*->name"))
        );
        assert_eq!(versions.rewrite_sort_pattern(b"other:*").unwrap(), None);
        assert!(versions.rewrite_sort_pattern(b"*:weight").is_err());
    }
}
