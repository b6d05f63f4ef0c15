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

pub mod store;
pub mod tracking;
pub mod writes;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;

pub use store::{CacheKey, CachedReply, FillTicket, L1Limits, L1Stats, L1Store, Lookup, Shape};
pub use writes::{ByName, WriteTable, Written};

use crate::config::MemoryCacheConfig;
use crate::protocol::Command;

/// The L1 level as the sessions use it.
#[derive(Debug)]
pub struct L1 {
    pub store: Arc<L1Store>,
    writes: OnceLock<WriteTable>,
    default_ttl: Duration,
    nil_ttl: Duration,
}

impl L1 {
    pub fn new(config: &MemoryCacheConfig, store: Arc<L1Store>) -> L1 {
        L1 {
            store,
            writes: OnceLock::new(),
            default_ttl: Duration::from_secs(config.default_ttl),
            nil_ttl: Duration::from_secs(config.nil_ttl),
        }
    }

    /// Installs the write table learned from Redis; caching starts then.
    pub fn set_writes(&self, table: WriteTable) {
        let _ = self.writes.set(table);
    }

    /// True when reads may be answered and filled: the write table is known
    /// and Redis's invalidations are flowing.
    pub fn ready(&self) -> bool {
        self.writes.get().is_some() && self.store.is_accepting()
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

    /// Drops what `written` may have changed in database `db`.
    pub fn invalidate(&self, db: u32, written: &Written) {
        match written {
            Written::Nothing => {}
            Written::Keys(keys) => keys.iter().for_each(|key| self.store.invalidate(db, key)),
            Written::KeysEverywhere(keys) => keys.iter().for_each(|key| self.store.invalidate_everywhere(key)),
            Written::Database => self.store.flush_db(db),
            Written::Everything => self.store.flush(),
        }
    }

    /// Completes a GET fill from Redis's replies to `GET key` and `PTTL key`
    /// (in the protocol the fill was sent in). Errors and replies that do
    /// not fit are not kept; waiters are released either way.
    pub fn complete_get(&self, ticket: FillTicket, get: &Bytes, pttl: &[u8]) -> bool {
        let remaining = parse_integer_reply(pttl);
        let nil = get.as_ref() == b"$-1\r\n" || get.as_ref() == b"_\r\n";
        let (reply, ttl) = if nil {
            (
                CachedReply::new(Bytes::from_static(b"$-1\r\n"), Bytes::from_static(b"_\r\n")),
                self.nil_ttl,
            )
        } else if get.first() == Some(&b'$') && remaining != Some(-2) {
            (CachedReply::same(get.clone()), self.default_ttl)
        } else {
            // An error (WRONGTYPE), or the key vanished between the two.
            self.store.abandon(ticket);
            return false;
        };
        let ttl = match remaining {
            // Never outlive the key in Redis: counted from before Redis was
            // asked (see FillTicket), less PTTL's rounding.
            Some(ms) if ms >= 0 => ttl.min(Duration::from_millis(ms as u64).saturating_sub(Duration::from_millis(1))),
            Some(-1) | Some(-2) => ttl,
            _ => Duration::ZERO,
        };
        self.store.complete(ticket, reply, ttl)
    }
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
            },
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
            Lookup::Wait(_) => None,
        }
    }

    #[test]
    fn an_entry_never_outlives_the_key_in_redis() {
        let (l1, clock) = l1();
        let t = ticket(&l1, "k");
        assert!(l1.complete_get(t, &Bytes::from_static(b"$1\r\nv\r\n"), b":1500\r\n"));
        clock.advance(Duration::from_millis(1498));
        assert!(hit(&l1, "k").is_some());
        clock.advance(Duration::from_millis(1));
        assert!(hit(&l1, "k").is_none(), "gone before Redis's 1500 ms are up");
    }

    #[test]
    fn nil_is_cached_briefly_in_both_protocols() {
        let (l1, clock) = l1();
        let t = ticket(&l1, "missing");
        assert!(l1.complete_get(t, &Bytes::from_static(b"_\r\n"), b":-2\r\n"));
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
    fn errors_and_vanished_keys_are_not_cached() {
        let (l1, _) = l1();
        let t = ticket(&l1, "h");
        let wrongtype = Bytes::from_static(b"-WRONGTYPE Operation against a key holding the wrong kind of value\r\n");
        assert!(!l1.complete_get(t, &wrongtype, b":-1\r\n"));
        let t = ticket(&l1, "gone");
        assert!(!l1.complete_get(t, &Bytes::from_static(b"$1\r\nv\r\n"), b":-2\r\n"));
        assert!(l1.store.is_empty());
    }
}
