//! The pattern engine (issue #7, in progress): how each key is used,
//! learned off the request path within a fixed memory budget.
//!
//! - [`topk`]: the heavy-hitter structure that bounds how many keys are
//!   tracked, whatever the key space;
//! - [`engine`]: the model of the key space: tracked keys' histories,
//!   the global hourly load and peak hours, priorities and rankings;
//! - [`model`]: a key's history (hour-of-day counts per day, gaps) and its
//!   classification (daily, periodic, burst, constant, irregular) with a
//!   predictability and a next expected access;
//! - [`trace`]: a seeded week-long workload of known classes, for checking
//!   the classifier (and later the preloader).
//!
//! - [`live`]: the engine at run time: the request path's bounded feed
//!   (never waited on; a full queue drops and counts), the thread that
//!   owns the model, the snapshot file (written on schedule and on stop,
//!   restored at start-up);
//! - [`report`]: `PROXY PATTERNS` and `PROXY PATTERNS PEAKS` replies.

pub mod engine;
pub mod live;
pub mod model;
pub mod report;
pub mod topk;
pub mod trace;
