//! The pattern engine (issue #7, in progress): how each key is used,
//! learned off the request path within a fixed memory budget.
//!
//! - [`topk`]: the heavy-hitter structure that bounds how many keys are
//!   tracked, whatever the key space;
//! - [`model`]: a key's history (hour-of-day counts per day, gaps) and its
//!   classification (daily, periodic, burst, constant, irregular) with a
//!   predictability and a next expected access;
//! - [`trace`]: a seeded week-long workload of known classes, for checking
//!   the classifier (and later the preloader).
//!
//! Not yet: the event queue from the request path, priorities, peak hours,
//! snapshots, `PROXY PATTERNS`.

pub mod model;
pub mod topk;
pub mod trace;
