//! auracache: a RESP-compatible caching proxy for Redis.
//!
//! A request's path, stage by stage (see ARCHITECTURE.md):
//!
//! - [`server`] accepts a client (over [`tls`] when configured; either way
//!   a [`stream::Stream`]) and starts a [`session`] for it;
//! - [`protocol`] finds frames (with limits) and decodes [`protocol::Command`]s;
//! - [`command`] classifies each command (shared, stateful, streaming, local);
//! - [`auth`] and [`admin`] answer what the proxy answers itself;
//! - [`cache`] (L1) answers reads in-process and keeps coherent with Redis;
//! - [`codec`] compresses values on their way to Redis and decodes them
//!   back (the stored format is [`codec::envelope`]);
//! - [`keys`] rewrites key names into their namespace's version (and
//!   replies back), migrating keys from older versions;
//! - [`upstream`] carries the rest to Redis over pooled or dedicated
//!   pipelined connections, and the session writes replies in request order.
//!
//! [`config`] holds the layered settings, [`stats`] the counters, and
//! [`shutdown`] the graceful-stop signal.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod clock;
pub mod codec;
pub mod command;
pub mod config;
pub mod gather;
pub mod http;
pub mod keys;
pub mod levels;
pub mod output;
pub mod patterns;
pub mod preload;
pub mod protocol;
pub mod server;
pub mod session;
pub mod shutdown;
pub mod stats;
pub mod stream;
pub mod tls;
pub mod upstream;

pub use server::{Server, ServerHandle, StartError};
