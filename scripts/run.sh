#!/usr/bin/env bash
# Starts auracache in front of a Redis, for trying it out.
#
#   scripts/run.sh                  # throwaway local Redis on 6379 (or a free port), proxy on 6380
#   AURACACHE_UPSTREAM=redis://host:6379 scripts/run.sh   # in front of an existing Redis
#
# Any arguments are passed to auracache (e.g. --config proxy.toml). Ctrl-C stops both.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_packages redis-server=redis-server redis-cli=redis-tools

listen="${AURACACHE_LISTEN:-127.0.0.1:6380}"
redis_pid=""
workdir=""
cleanup() {
    [ -n "$redis_pid" ] && kill "$redis_pid" 2>/dev/null && wait "$redis_pid" 2>/dev/null
    [ -n "$workdir" ] && rm -rf "$workdir"
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM

upstream_configured=0
[ -n "${AURACACHE_UPSTREAM:-}" ] && upstream_configured=1
for arg in "$@"; do
    case "$arg" in --upstream*|--config*) upstream_configured=1 ;; esac
done

if [ "$upstream_configured" -eq 0 ]; then
    port=6379
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do port=$((port + 1)); done
    workdir="$(mktemp -d)"
    redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$workdir" \
        --logfile "$workdir/redis.log" &
    redis_pid=$!
    for _ in $(seq 100); do
        redis-cli -p "$port" ping >/dev/null 2>&1 && break
        sleep 0.1
    done
    redis-cli -p "$port" ping >/dev/null || { echo "redis-server did not start; see $workdir/redis.log" >&2; exit 1; }
    export AURACACHE_UPSTREAM="redis://127.0.0.1:$port"
    echo "started a throwaway redis-server on 127.0.0.1:$port (stopped with the proxy)"
fi

cargo build --release --locked
echo "auracache listening on $listen; connect with: redis-cli -p ${listen##*:}"
AURACACHE_LISTEN="$listen" target/release/auracache "$@" &
proxy_pid=$!
trap 'kill -INT "$proxy_pid" 2>/dev/null; wait "$proxy_pid"; exit 0' INT TERM
wait "$proxy_pid"
