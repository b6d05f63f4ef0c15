#!/usr/bin/env bash
# Soak test: a release proxy (L1 bounded by memory_cache.max_bytes,
# compression and the pattern engine on, as in production) in front of a
# local redis-server, under a mixed workload from SOAK_CLIENTS connections
# for SOAK_SECONDS, every reply checked (examples/soak.rs). The proxy's RSS,
# threads and open fds are sampled every SOAK_SAMPLE_SECONDS; at the end it
# prints the RSS series summary (and its second half's trend), throughput,
# errors and wrong values, and a verdict, and writes them to
# target/soak/latest.txt. Exits 1 when the run fails: any error or wrong
# value, RSS above L1's max_bytes + SOAK_OVERHEAD_MIB, the second half's
# trend (of RSS beyond what L1 and the pattern engine account for) adding
# more than SOAK_GROWTH_LIMIT_MIB over the run, or an ERROR in the proxy's
# log. README "Soak test" explains the bounds.
#
#   scripts/soak.sh                                # 30 min, 1,000 clients
#   SOAK_SECONDS=300 scripts/soak.sh               # 5 min
#   SOAK_SECONDS=15 SOAK_CLIENTS=100 SOAK_SAMPLE_SECONDS=1 scripts/soak.sh
#   SOAK_PROXY_BIN=... SOAK_GENERATOR_BIN=... scripts/soak.sh
#                                                  # use these builds (no cargo build)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_packages redis-server=redis-server redis-cli=redis-tools

seconds="${SOAK_SECONDS:-1800}"
clients="${SOAK_CLIENTS:-1000}"
sample_seconds="${SOAK_SAMPLE_SECONDS:-10}"
l1_bytes="${SOAK_L1_BYTES:-67108864}"
# RSS may hold L1's max_bytes plus this overhead (README "Soak test"):
# 16 MiB for the runtime, 96 MiB for the pattern engine at its default
# bound of 100,000 keys, 256 KiB per client connection.
overhead_mib="${SOAK_OVERHEAD_MIB:-$((112 + clients / 4))}"
# The second half's trend of RSS beyond L1's and the pattern engine's own
# bytes may add at most this over the run.
growth_mib="${SOAK_GROWTH_LIMIT_MIB:-32}"
output="${SOAK_OUTPUT:-target/soak/latest.txt}"
# One request in this many, per client, is followed by a reconnect.
reconnect_every="${SOAK_RECONNECT_EVERY:-5000}"

# The proxy and the generator each hold one descriptor per client, plus a
# few (Redis, the pool, the admin listener, the runtime).
needed=$((clients + 256))
current="$(ulimit -n)"
if [ "$current" != unlimited ] && [ "$current" -lt "$needed" ]; then
    if ulimit -n "$needed" 2>/dev/null; then
        echo "soak: raised ulimit -n from $current to $needed for $clients clients" >&2
    else
        echo "soak: $clients clients need $needed open files, but ulimit -n is $current and cannot be" \
            "raised (hard limit $(ulimit -Hn)); raise the hard limit or lower SOAK_CLIENTS" >&2
        exit 2
    fi
fi

work="$(mktemp -d)"
pids=()
trap 'stop_started "$work"' EXIT

if [ -n "${SOAK_PROXY_BIN:-}" ]; then
    proxy_bin="$SOAK_PROXY_BIN"
    generator="${SOAK_GENERATOR_BIN:?SOAK_GENERATOR_BIN goes with SOAK_PROXY_BIN}"
else
    cargo build --release --locked >&2
    cargo build --release --locked --example soak >&2
    proxy_bin=target/release/auracache
    generator=target/release/examples/soak
fi

start_redis "$work"
redis_pid="${pids[-1]}"

# A production-like configuration: every stage on, L1 bounded by bytes
# alone (so max_bytes is the bound that binds), the HTTP admin listening,
# the preloader running every minute so it runs during the soak too.
proxy_port="$(free_port)"
admin_port="$(free_port)"
cat >"$work/soak.toml" <<TOML
listen = "127.0.0.1:$proxy_port"
upstream = "redis://127.0.0.1:$redis_port"

[limits]
max_clients = $((clients + 100))

[log]
level = "warn"

[memory_cache]
enabled = true
max_bytes = $l1_bytes
size_per_namespace = 0

[compression]
enabled = true
hashes = true

[patterns]
enabled = true

[preload]
enabled = true
interval_minutes = 1

[admin]
listen = "127.0.0.1:$admin_port"
TOML
"$proxy_bin" --config "$work/soak.toml" 2>"$work/auracache.log" &
pids+=($!)
proxy_pid=$!
wait_for "$proxy_port"
for _ in $(seq 200); do
    redis-cli -p "$proxy_port" info cache | grep -q "l1_ready:1" && break
    sleep 0.05
done

mkdir -p "$(dirname "$output")"
echo "soak: $clients clients for $seconds s, a sample every $sample_seconds s; proxy pid $proxy_pid on port $proxy_port, Redis (pid $redis_pid) on $redis_port" >&2
status=0
"$generator" --proxy-port "$proxy_port" --pid "$proxy_pid" --redis-port "$redis_port" \
    --seconds "$seconds" --clients "$clients" --sample-seconds "$sample_seconds" \
    --l1-bytes "$l1_bytes" --overhead-bytes $((overhead_mib << 20)) \
    --growth-limit-bytes $((growth_mib << 20)) --reconnect-every "$reconnect_every" \
    | tee "$output" || status=$?

if ! kill -0 "$proxy_pid" 2>/dev/null; then
    echo "soak: the proxy exited during the run; its log:" | tee -a "$output"
    tail -20 "$work/auracache.log" | tee -a "$output"
    status=1
fi
errors="$(grep -c ' ERROR ' "$work/auracache.log" || true)"
warnings="$(grep -c ' WARN ' "$work/auracache.log" || true)"
echo "proxy log: $errors ERROR and $warnings WARN lines" | tee -a "$output"
grep -E ' (ERROR|WARN) ' "$work/auracache.log" | head -5 | tee -a "$output" || true
if [ "$errors" -gt 0 ]; then
    echo "verdict: FAIL: the proxy logged $errors errors" | tee -a "$output"
    status=1
fi
exit "$status"
