//! The preloader's evaluation on a smaller trace (five days), its targets
//! that do not depend on timing asserted: predictable keys preloaded before
//! their reads, the peak hours' hit rate raised, little waste. Latency is
//! printed, not asserted (speed belongs in `scripts/preload-eval.sh`, the
//! full week).

#[path = "common/preload_eval.rs"]
mod eval;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preloading_beats_the_original_figures_on_a_seeded_trace() {
    let figures = eval::evaluate(&eval::Settings::small(11)).await;
    let table = figures.table();
    eprintln!("{table}");
    assert!(figures.key_share() > 0.92, "{table}");
    assert!(figures.peak_hit_rate_on - figures.peak_hit_rate_off > 0.15, "{table}");
    assert!(figures.waste_share() < 0.20, "{table}");
}
