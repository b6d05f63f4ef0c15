//! `scripts/preload-eval.sh`: the preloader's evaluation over a seeded
//! week (see `tests/common/preload_eval.rs`), figures printed.
//!
//! `cargo run --release --example preload_eval -- [seed]`

#[path = "../tests/common/preload_eval.rs"]
mod eval;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let seed = std::env::args()
        .nth(1)
        .map(|seed| seed.parse().expect("the seed is a whole number"))
        .unwrap_or(7);
    let settings = eval::Settings::week(seed);
    println!("preload evaluation, seed {seed}: {settings:?}");
    let figures = eval::evaluate(&settings).await;
    print!("{}", figures.table());
    println!("\nredis-cli PROXY PRELOAD STATUS after the last read, preloading on:");
    print!("{}", figures.status);
    // The control: is it only that preloaded entries live longer? With a
    // 30-minute TTL in both passes, entries live as long without preloading.
    println!("\nthe same, with L1 keeping entries 30 minutes in both passes:");
    let control = eval::evaluate_with_ttl(&settings, 1800).await;
    print!("{}", control.table());
}
