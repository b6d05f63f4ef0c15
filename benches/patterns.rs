//! Cost of recording one event in the pattern engine's model (on its own
//! thread, off the request path, but on the machine's cores all the same).
//!
//! `cargo bench --bench patterns` measures; under `cargo test` (no `--bench`
//! argument) it runs each case briefly as a smoke test.

use std::hint::black_box;
use std::time::Instant;

use auracache::patterns::engine::{Engine, Event, Outcome, Settings};
use auracache::patterns::trace::Rng;
use bytes::Bytes;

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let events = if measuring { 2_000_000 } else { 10_000 };
    for (label, keyspace) in [
        ("1,000 hot keys", 1_000u64),
        ("100,000 keys", 100_000),
        ("10,000,000 keys (churn)", 10_000_000),
    ] {
        let mut rng = Rng::new(1);
        let batch: Vec<Event> = (0..events)
            .map(|i| Event {
                db: 0,
                key: Bytes::from(format!("key:{:08}", rng.between(0, keyspace))),
                at_ms: 1_700_000_000_000 + i as u64 * 3,
                outcome: Outcome::L2Hit,
                latency_us: 150,
                size: 100,
            })
            .collect();
        let mut engine = Engine::new(Settings::default());
        let started = Instant::now();
        for event in &batch {
            engine.record(black_box(event));
        }
        let elapsed = started.elapsed();
        println!(
            "record, {label}: {:.0} ns/event ({} tracked, {} bytes)",
            elapsed.as_nanos() as f64 / events as f64,
            engine.tracked(),
            engine.bytes()
        );
    }
}
