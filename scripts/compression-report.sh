#!/usr/bin/env bash
# The compression report: three realistic data sets (JSON reports ~10 MB,
# log entries ~5 MB, analytics ~25 MB; generated deterministically) stored
# through auracache with zstd, gzip and zlib, measured in Redis itself.
# Prints a table (and writes it to target/compression-report.md).
#
#   scripts/compression-report.sh
#   ZSTD_LEVEL=19 DEFLATE_LEVEL=9 scripts/compression-report.sh   # other levels (defaults 3 and 6)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_packages redis-server=redis-server redis-cli=redis-tools

work="$(mktemp -d)"
pids=()
trap 'stop_started "$work"' EXIT

cargo build --release --locked --example compression_report >&2
cargo build --release --locked >&2

start_redis "$work"

proxies=()
for algorithm in zstd gzip zlib; do
    port="$(free_port)"
    case "$algorithm" in
        zstd) level="${ZSTD_LEVEL:-3}" ;;
        *) level="${DEFLATE_LEVEL:-6}" ;;
    esac
    CACHE_COMPRESSION_ENABLED=true CACHE_COMPRESSION_ALGORITHM="$algorithm" AURACACHE_COMPRESSION_LEVEL="$level" \
        target/release/auracache --listen "127.0.0.1:$port" --upstream "redis://127.0.0.1:$redis_port" \
        --log-level warn 2>"$work/auracache-$algorithm.log" &
    pids+=($!)
    wait_for "$port"
    proxies+=("$algorithm:$level=$port")
done

mkdir -p target
target/release/examples/compression_report "$redis_port" "${proxies[@]}" \
    | tee target/compression-report.md
