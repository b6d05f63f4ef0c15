//! Keys as the client names them and as Redis stores them (issue #6).
//!
//! - [`table`]: where each command's key arguments are, from Redis's
//!   `COMMAND` key specifications (with a built-in copy of Redis 7.0's);
//! - [`glob`]: Redis's glob matching, for KEYS/SCAN patterns;
//! - [`versions`]: the per-namespace version of each key, the rewrite of
//!   requests and replies, and migration from fallback versions.

pub mod admin;
pub mod glob;
pub mod table;
pub mod versions;
