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
}
