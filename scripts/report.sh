#!/usr/bin/env bash
# The original system's two tables, measured: a realistic mixed workload
# (read-heavy, a hot set, compressible values of five data types) through
# auracache in front of a local redis-server, then, from the proxy's own
# statistics (INFO cache), compression per data type and multi-level cache
# performance (L1 hit %, L2 hit %, miss %, average read and write latency).
# Prints the tables and writes them to target/report.md.
#
#   scripts/report.sh                      # 20 s, 16 clients
#   SECONDS_RUN=60 CLIENTS=64 scripts/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_packages redis-server=redis-server redis-cli=redis-tools

work="$(mktemp -d)"
pids=()
trap 'stop_started "$work"' EXIT

cargo build --release --locked --example report >&2
cargo build --release --locked >&2

start_redis "$work"

proxy_port="$(free_port)"
CACHE_COMPRESSION_ENABLED=true AURACACHE_ADMIN_LISTEN="" \
    target/release/auracache --listen "127.0.0.1:$proxy_port" --upstream "redis://127.0.0.1:$redis_port" \
    --log-level warn 2>"$work/auracache.log" &
pids+=($!)
wait_for "$proxy_port"

mkdir -p target
target/release/examples/report "$proxy_port" "${SECONDS_RUN:-20}" "${CLIENTS:-16}" | tee target/report.md
