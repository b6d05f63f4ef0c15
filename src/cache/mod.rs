//! The L1 cache level (issue #4): reads answered in-process.
//!
//! - [`store`] holds ready-to-write replies with deadlines, bounded in bytes,
//!   and the fill bookkeeping that keeps them coherent (an invalidation voids
//!   a fill in flight; concurrent misses share one fill).
//! - [`tracking`] applies Redis's invalidation messages (writes that do not
//!   pass through the proxy) and turns the store off while they cannot flow.
//! - [`writes`] says which keys a command writes, so a write through the
//!   proxy invalidates before its reply reaches the client.
//!
//! [`L1`] bundles them for the session: what to look up, what a fill's
//! replies mean, what a write invalidates.

pub mod namespaces;
pub mod store;
pub mod tracking;
pub mod writes;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

pub use namespaces::{Namespace, Namespaces, Rules, UNNAMED};
pub use store::{CacheKey, CachedReply, FillTicket, L1Limits, L1Stats, L1Store, Lookup, NoPreload, Shape};
pub use writes::{ByName, WriteTable, Written};

use crate::config::MemoryCacheConfig;
use crate::protocol::Command;

/// The L1 level as the sessions use it.
#[derive(Debug)]
pub struct L1 {
    pub store: Arc<L1Store>,
    writes: OnceLock<WriteTable>,
    /// How long "no such key" is kept, in milliseconds (`memory_cache.nil_ttl`;
    /// `PROXY CONFIG SET` changes it, for fills from then on).
    nil_ttl_ms: AtomicU64,
    /// Some namespace is cached without Redis's invalidations.
    any_ttl_only: bool,
}

impl L1 {
    pub fn new(config: &MemoryCacheConfig, store: Arc<L1Store>) -> L1 {
        L1 {
            any_ttl_only: store.namespaces().any_ttl_only(),
            store,
            writes: OnceLock::new(),
            nil_ttl_ms: AtomicU64::new(config.nil_ttl.saturating_mul(1000)),
        }
    }

    /// Takes `config`'s TTLs and bounds in the running proxy (`PROXY
    /// CONFIG SET memory_cache.*`): nil TTL and namespace TTLs for fills
    /// from now on (what is stored keeps its expiry), entry bounds and
    /// byte bounds at once (see [`L1Store::reconfigure`] and
    /// [`L1Store::set_limits`]).
    pub fn reconfigure(&self, config: &crate::config::Config) {
        let cache = &config.memory_cache;
        self.nil_ttl_ms
            .store(cache.nil_ttl.saturating_mul(1000), Ordering::Relaxed);
        self.store.reconfigure(config);
        self.store.set_limits(cache.max_bytes, cache.max_entry_bytes);
    }

    fn nil_ttl(&self) -> Duration {
        Duration::from_millis(self.nil_ttl_ms.load(Ordering::Relaxed))
    }

    /// Installs the write table learned from Redis; caching starts then.
    pub fn set_writes(&self, table: WriteTable) {
        let _ = self.writes.set(table);
    }

    /// True when reads may be answered and filled: the write table is known
    /// and Redis's invalidations are flowing (or some namespace does not
    /// need them, or may be served stale while Redis is down; the store
    /// decides per key).
    pub fn ready(&self) -> bool {
        self.writes.get().is_some() && (self.store.is_accepting() || self.any_ttl_only || self.store.serves_stale())
    }

    /// What a command's name says about the keys it writes. Until the
    /// table is known, anything needs its arguments looked at.
    pub fn by_name(&self, name: &[u8]) -> ByName {
        match self.writes.get() {
            Some(table) => table.by_name(name),
            None => ByName::NeedsArguments,
        }
    }

    /// What a command (arguments decoded) may change; until the table is
    /// known, possibly anything in its database.
    pub fn written(&self, command: &Command) -> Written {
        match self.writes.get() {
            Some(table) => table.written(command),
            None => Written::Database,
        }
    }

    /// A write through the proxy is about to go to Redis: what it may
    /// change is dropped now, and neither filled nor waited for until the
    /// returned guard is dropped (when Redis has answered), which drops it
    /// again.
    pub fn write_started(&self, db: u32, written: Written) -> WriteGuard {
        self.store.write_started(db, &written);
        WriteGuard {
            store: self.store.clone(),
            db,
            written,
        }
    }

    /// Completes a fill from Redis's replies to the read (GET, HGET,
    /// HGETALL) and to `PTTL key`, in the protocol the fill was sent in; the
    /// other protocol's encoding is derived. Errors and replies that do not
    /// fit are not kept; waiters are released either way.
    pub fn complete_read(&self, ticket: FillTicket, read: &Bytes, pttl: &[u8]) -> bool {
        let ttl = ticket.namespace().rules().ttl;
        self.complete_read_with(ticket, read, pttl, ttl, Vec::new())
    }

    /// [`Self::complete_read`] keeping a value for `wanted` (still never
    /// beyond Redis's TTL): the preloader's fills cover a predicted read.
    /// A hash's fields (up to [`MAX_DERIVED_FIELDS`]) are kept beside its
    /// HGETALL, so the HGET and HMGET reads it was predicted from hit too.
    pub fn complete_read_for(&self, ticket: FillTicket, read: &Bytes, pttl: &[u8], wanted: Duration) -> bool {
        let fields = match ticket.shape() {
            Shape::HashAll => hash_fields(read).unwrap_or_default(),
            _ => Vec::new(),
        };
        self.complete_read_with(ticket, read, pttl, wanted, fields)
    }

    fn complete_read_with(
        &self,
        ticket: FillTicket,
        read: &Bytes,
        pttl: &[u8],
        wanted: Duration,
        also: Vec<(Shape, CachedReply)>,
    ) -> bool {
        let remaining = parse_integer_reply(pttl);
        let Some(reply) = both_protocols(read) else {
            // An error (WRONGTYPE) or a reply L1 does not keep.
            self.store.abandon(ticket);
            return false;
        };
        let nil = read.as_ref() == b"$-1\r\n" || read.as_ref() == b"_\r\n";
        let empty = read.as_ref() == b"*0\r\n" || read.as_ref() == b"%0\r\n";
        // MGET answers nil for a key of another type, where GET answers
        // WRONGTYPE: a string nil is kept only if the key does not exist.
        if nil && *ticket.shape() == Shape::String && remaining != Some(-2) {
            self.store.abandon(ticket);
            return false;
        }
        let namespace_ttl = ticket.namespace().rules().ttl;
        let ttl = match remaining {
            _ if nil => self.nil_ttl().min(namespace_ttl),
            // HGETALL of a missing key: an empty hash, cached like nil.
            Some(-2) if empty => self.nil_ttl().min(namespace_ttl),
            // A value, but the key vanished between the two commands.
            Some(-2) => {
                self.store.abandon(ticket);
                return false;
            }
            _ => wanted,
        };
        // Never outlive the key in Redis: counted from before Redis was
        // asked (see FillTicket), less PTTL's rounding. A nil (or an empty
        // hash) is never made to last longer than it was kept.
        let limit = match remaining {
            _ if nil || empty => Some(ttl),
            Some(ms) if ms >= 0 => Some(Duration::from_millis(ms as u64).saturating_sub(Duration::from_millis(1))),
            Some(-1) => None,
            _ => Some(Duration::ZERO),
        };
        let ttl = limit.map_or(ttl, |limit| ttl.min(limit));
        self.store.complete_with(ticket, reply, also, ttl, limit)
    }
}

/// Most fields of a hash kept beside its HGETALL by the preloader.
pub const MAX_DERIVED_FIELDS: usize = 64;

/// An HGETALL reply's fields as HGET replies, if it is a flat array of at
/// most [`MAX_DERIVED_FIELDS`] field/value bulk strings.
fn hash_fields(reply: &[u8]) -> Option<Vec<(Shape, CachedReply)>> {
    let (count, mut rest) = header(reply, b'*')?;
    if !count.is_multiple_of(2) || count / 2 > MAX_DERIVED_FIELDS {
        return None;
    }
    let mut fields = Vec::with_capacity(count / 2);
    for _ in 0..count / 2 {
        let (field, at_value) = bulk(rest)?;
        let (_, after) = bulk(at_value)?;
        // The value's frame is the HGET reply, in either protocol.
        let value_frame = &at_value[..at_value.len() - after.len()];
        fields.push((
            Shape::HashField(Bytes::copy_from_slice(field)),
            CachedReply::same(Bytes::copy_from_slice(value_frame)),
        ));
        rest = after;
    }
    rest.is_empty().then_some(fields)
}

/// `<kind><n>\r\n`: n and what follows.
fn header(bytes: &[u8], kind: u8) -> Option<(usize, &[u8])> {
    if bytes.first() != Some(&kind) {
        return None;
    }
    let end = memchr::memchr(b'\n', bytes)?;
    let count = std::str::from_utf8(bytes.get(1..end.checked_sub(1)?)?)
        .ok()?
        .parse()
        .ok()?;
    Some((count, &bytes[end + 1..]))
}

/// A bulk string's bytes and what follows it.
fn bulk(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let (len, rest) = header(bytes, b'$')?;
    let value = rest.get(..len)?;
    (rest.get(len..len + 2)? == b"\r\n").then(|| (value, &rest[len + 2..]))
}

/// A write in flight (see [`L1::write_started`]); dropping it ends it.
#[derive(Debug)]
pub struct WriteGuard {
    store: Arc<L1Store>,
    db: u32,
    written: Written,
}

impl Drop for WriteGuard {
    fn drop(&mut self) {
        self.store.write_done(self.db, &self.written);
    }
}

/// A read's reply in both protocols, if L1 keeps replies of its kind: a
/// bulk string, nil, or a flat array/map of bulk strings (HGETALL).
///
/// The reply is copied: `reply` is a slice of the upstream read buffer, and
/// an entry holding a slice would keep that whole buffer (up to a batch of
/// other clients' replies) alive, so `max_bytes` would not bound memory.
fn both_protocols(reply: &Bytes) -> Option<CachedReply> {
    match reply.first()? {
        b'$' if reply.as_ref() == b"$-1\r\n" => Some(nil_reply()),
        b'_' => Some(nil_reply()),
        b'$' => Some(CachedReply::same(Bytes::copy_from_slice(reply))),
        kind @ (b'*' | b'%') => {
            let line_end = memchr::memchr(b'\n', reply)?;
            let count: usize = std::str::from_utf8(&reply[1..line_end - 1]).ok()?.parse().ok()?;
            let body = &reply[line_end + 1..];
            // Only flat lists of bulk strings (what HGETALL answers).
            let (pairs, resp2, resp3) = if *kind == b'*' {
                if !count.is_multiple_of(2) {
                    return None;
                }
                (count / 2, Bytes::copy_from_slice(reply), None)
            } else {
                (count, Bytes::new(), Some(Bytes::copy_from_slice(reply)))
            };
            let mut other = format!(
                "{}{}\r\n",
                if *kind == b'*' { '%' } else { '*' },
                if *kind == b'*' { pairs } else { pairs * 2 }
            )
            .into_bytes();
            other.extend_from_slice(body);
            let other = Bytes::from(other);
            Some(match resp3 {
                None => CachedReply::new(resp2, other),
                Some(resp3) => CachedReply::new(other, resp3),
            })
        }
        _ => None,
    }
}

fn nil_reply() -> CachedReply {
    CachedReply::new(Bytes::from_static(b"$-1\r\n"), Bytes::from_static(b"_\r\n"))
}

/// `:<n>\r\n` as a number.
fn parse_integer_reply(reply: &[u8]) -> Option<i64> {
    let text = reply.strip_prefix(b":")?.strip_suffix(b"\r\n")?;
    std::str::from_utf8(text).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn l1() -> (L1, ManualClock) {
        let clock = ManualClock::default();
        let store = Arc::new(L1Store::new(
            L1Limits {
                max_bytes: 1 << 20,
                max_entry_bytes: 4096,
                estimated_entries: 100,
                fill_on_first_miss: true,
            },
            Arc::new(Namespaces::uniform(Rules::test_default())),
            Arc::new(clock.clone()),
        ));
        let config = MemoryCacheConfig {
            default_ttl: 60,
            nil_ttl: 5,
            ..MemoryCacheConfig::default()
        };
        (L1::new(&config, store), clock)
    }

    fn ticket(l1: &L1, key: &str) -> FillTicket {
        match l1
            .store
            .lookup(&CacheKey::new(0, Bytes::copy_from_slice(key.as_bytes()), Shape::String))
        {
            Lookup::Miss(ticket) => ticket,
            other => panic!("expected a miss, got {other:?}"),
        }
    }

    fn hit(l1: &L1, key: &str) -> Option<CachedReply> {
        match l1
            .store
            .lookup(&CacheKey::new(0, Bytes::copy_from_slice(key.as_bytes()), Shape::String))
        {
            Lookup::Hit(reply) => Some(reply),
            Lookup::Miss(ticket) => {
                l1.store.abandon(ticket);
                None
            }
            Lookup::Wait(_) | Lookup::Pass => None,
        }
    }

    #[test]
    fn an_entry_never_outlives_the_key_in_redis() {
        let (l1, clock) = l1();
        let t = ticket(&l1, "k");
        assert!(l1.complete_read(t, &Bytes::from_static(b"$1\r\nv\r\n"), b":1500\r\n"));
        clock.advance(Duration::from_millis(1498));
        assert!(hit(&l1, "k").is_some());
        clock.advance(Duration::from_millis(1));
        assert!(hit(&l1, "k").is_none(), "gone before Redis's 1500 ms are up");
    }

    #[test]
    fn nil_is_cached_briefly_in_both_protocols() {
        let (l1, clock) = l1();
        let t = ticket(&l1, "missing");
        assert!(l1.complete_read(t, &Bytes::from_static(b"_\r\n"), b":-2\r\n"));
        let reply = hit(&l1, "missing").unwrap();
        assert_eq!(
            reply.for_protocol(crate::protocol::Protocol::Resp2).as_ref(),
            b"$-1\r\n"
        );
        assert_eq!(reply.for_protocol(crate::protocol::Protocol::Resp3).as_ref(), b"_\r\n");
        clock.advance(Duration::from_secs(5));
        assert!(hit(&l1, "missing").is_none());
    }

    #[test]
    fn hgetall_is_kept_in_both_protocols() {
        let resp2 = Bytes::from_static(b"*4\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n");
        let resp3 = Bytes::from_static(b"%2\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n");
        for read in [&resp2, &resp3] {
            let reply = both_protocols(read).unwrap();
            assert_eq!(reply.for_protocol(crate::protocol::Protocol::Resp2), &resp2);
            assert_eq!(reply.for_protocol(crate::protocol::Protocol::Resp3), &resp3);
        }
        let empty = both_protocols(&Bytes::from_static(b"*0\r\n")).unwrap();
        assert_eq!(empty.for_protocol(crate::protocol::Protocol::Resp3).as_ref(), b"%0\r\n");
        assert!(both_protocols(&Bytes::from_static(b"*3\r\n:1\r\n:2\r\n:3\r\n")).is_none());
        assert!(both_protocols(&Bytes::from_static(b"-WRONGTYPE x\r\n")).is_none());
    }

    /// An entry must not pin the read buffer its reply came in: the byte
    /// bound counts the entry's own bytes only.
    #[test]
    fn a_cached_reply_owns_its_bytes() {
        let buffer = Bytes::from(
            [
                b"$1\r\nv\r\n".as_slice(),
                b"*2\r\n$1\r\na\r\n$1\r\n1\r\n",
                &[b'x'; 64 * 1024],
            ]
            .concat(),
        );
        let inside = |bytes: &Bytes| buffer.as_ptr_range().contains(&bytes.as_ptr());
        let (l1, _) = l1();
        let t = ticket(&l1, "k");
        assert!(l1.complete_read(t, &buffer.slice(0..7), b":-1\r\n"));
        let reply = hit(&l1, "k").unwrap();
        assert_eq!(
            reply.for_protocol(crate::protocol::Protocol::Resp2).as_ref(),
            b"$1\r\nv\r\n"
        );
        assert!(!inside(reply.for_protocol(crate::protocol::Protocol::Resp2)));
        let hash = both_protocols(&buffer.slice(7..29)).unwrap();
        for protocol in [crate::protocol::Protocol::Resp2, crate::protocol::Protocol::Resp3] {
            assert!(
                !inside(hash.for_protocol(protocol)),
                "{protocol:?} encoding is a slice of the read buffer"
            );
        }
    }

    #[test]
    fn errors_and_vanished_keys_are_not_cached() {
        let (l1, _) = l1();
        let t = ticket(&l1, "h");
        let wrongtype = Bytes::from_static(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
        assert!(!l1.complete_read(t, &wrongtype, b":-1\r\n"));
        let t = ticket(&l1, "gone");
        assert!(!l1.complete_read(t, &Bytes::from_static(b"$1\r\nv\r\n"), b":-2\r\n"));
        assert!(l1.store.is_empty());
    }
}
