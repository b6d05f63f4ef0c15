//! The pattern engine (issue #7, in progress): how each key is used,
//! learned off the request path within a fixed memory budget.
//!
//! - [`topk`]: the heavy-hitter structure that bounds how many keys are
//!   tracked, whatever the key space.

pub mod topk;
