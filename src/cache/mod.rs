//! The L1 cache level (issue #4): reads answered in-process.
//!
//! [`store`] holds ready-to-write replies with deadlines, bounded in bytes,
//! and the fill bookkeeping that keeps them coherent (an invalidation voids a
//! fill in flight; concurrent misses share one fill). Not yet wired into the
//! session: the read path, write invalidation and Redis's tracking
//! connection come next.

pub mod store;
pub mod tracking;
pub mod writes;

pub use store::{CacheKey, CachedReply, FillTicket, L1Limits, L1Stats, L1Store, Lookup, Shape};
pub use writes::{WriteTable, Written};
