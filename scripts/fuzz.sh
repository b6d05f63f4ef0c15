#!/usr/bin/env bash
# Fuzzes the proxy's input paths with cargo-fuzz (libFuzzer): the request
# frame reader, the reply frame reader, the compression envelope decoder
# and the key rewriter (fuzz/fuzz_targets/). Each target starts from its
# seed corpus in fuzz/corpus/<target>/ (crashes found and fixed are kept
# there as regressions) and runs for FUZZ_SECONDS (default 60). Not run
# by CI. A crash stops the script and leaves its input in
# fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh                          # every target, 60 s each
#   FUZZ_SECONDS=600 scripts/fuzz.sh envelope
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-60}"
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(request_frames reply_frames envelope key_rewrite)
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz (cargo install)" >&2
    cargo install cargo-fuzz --locked >&2
fi
# libFuzzer's instrumentation needs -Z flags: the stable toolchain accepts
# them with RUSTC_BOOTSTRAP (no nightly is needed).
export RUSTC_BOOTSTRAP=1
for target in "${targets[@]}"; do
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    # A working copy, so new inputs the run finds do not pile up in git.
    work="$(mktemp -d)"
    cp -r "$corpus/." "$work/"
    echo "== $target: $seconds s from $(ls "$corpus" | wc -l) seeds" >&2
    status=0
    cargo fuzz run "$target" "$work" -- -max_total_time="$seconds" -max_len=4096 -print_final_stats=1 \
        >"$work.log" 2>&1 || status=$?
    grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss|SUMMARY)|panicked|^  (left|right)" "$work.log" >&2 || true
    rm -f "$work.log"
    rm -rf "$work"
    if [ "$status" -ne 0 ]; then
        echo "$target: crashed (input in fuzz/artifacts/$target/)" >&2
        exit "$status"
    fi
done
