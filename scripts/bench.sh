#!/usr/bin/env bash
# Benchmark: redis-benchmark against Redis directly, through auracache with
# L1 off (pure pass-through), through auracache as configured by default (L1
# on) and (when nutcracker is installed) through twemproxy, in the same run,
# alternating targets round by round. Prints a table of median ops/s,
# p50 and p99 latency and each proxy's ratio to direct Redis, and writes it
# to target/bench/latest.md.
#
# The pattern engine is on by default in every auracache target; the
# "patterns" section runs the GET workloads with it on and off.
#
#   scripts/bench.sh                 # 3 rounds
#   ROUNDS=5 REQUESTS=200000 scripts/bench.sh
#   SECTIONS=patterns ROUNDS=7 scripts/bench.sh
#   BASELINE=/path/to/older/auracache SECTIONS=patterns scripts/bench.sh
#                                    # the patterns section also runs an older build
#   SECTIONS=slowreaders scripts/bench.sh
#                                    # a bystander's throughput while clients never read
#   scripts/bench.sh --cluster       # the "cluster" section alone (= SECTIONS=cluster;
#                                    # with SECTIONS set, --cluster adds it)
#
# The cluster section starts a 3-master Redis Cluster beside the single
# Redis and compares, for SET, GET and MGET of 10 random keys at -P 1 and
# -P 16: the single Redis directly, auracache (L1 off) in front of it,
# auracache (L1 off) in front of the cluster (upstream =
# "redis-cluster://..."), and redis-benchmark --cluster straight to the
# cluster (no MGET there: its keys span slots, which one connection to a
# cluster cannot ask for). Ratios are against the single Redis and against
# auracache in front of it. If auracache does not start, or does not serve
# keys on every master, with the cluster behind it, the run says so and
# exits non-zero instead of printing figures. The section is not in the
# default SECTIONS.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_packages redis-server=redis-server redis-benchmark=redis-tools

cluster_flag=""
for arg in "$@"; do
    case "$arg" in
        --cluster) cluster_flag=1 ;;
        *)
            echo "usage: scripts/bench.sh [--cluster]  (settings: ROUNDS, REQUESTS, SECTIONS, BASELINE, SLOW_PAUSE_MS)" >&2
            exit 2
            ;;
    esac
done

rounds="${ROUNDS:-3}"
sections="${SECTIONS:-passthrough l1 compression patterns slowreaders}"
[ -n "$cluster_flag" ] && sections="${SECTIONS:-} cluster"
requests="${REQUESTS:-100000}"
out_dir="target/bench"
mkdir -p "$out_dir"
work="$(mktemp -d)"
pids=()
trap 'stop_started "$work"' EXIT

# Requests per run: a pipelined run answers about ten times as many per
# second, so it gets more of them; otherwise it lasts a tenth of a second
# and connection set-up weighs in its figure.
requests_for() {
    if [ "$1" -eq 1 ]; then echo $((requests / 2)); else echo $((requests * 5)); fi
}

# CPU time (clock ticks, user + system) the given processes have used.
cpu_ticks() {
    local total=0 pid fields
    for pid in "$@"; do
        read -r -a fields <"/proc/$pid/stat"
        total=$((total + fields[13] + fields[14]))
    done
    echo "$total"
}
tick_us=$((1000000 / $(getconf CLK_TCK)))

# One redis-benchmark run against a target: its CSV line, then the CPU
# microseconds the target's processes spent per request.
#   run_benchmark <target name> <requests> <redis-benchmark arguments...>
run_benchmark() {
    local name="$1" n="$2" before line
    shift 2
    before="$(cpu_ticks ${serving[$name]})"
    # Options first: a custom command (MGET ...) ends the arguments. Only
    # the CSV lines: --cluster prints the masters it found before them.
    line="$(redis-benchmark -n "$n" --csv -q "$@" | grep '^"' | grep -v '^"test"' | head -1)"
    if [ -z "$line" ]; then
        echo "redis-benchmark $* against $name gave no result" >&2
        exit 1
    fi
    echo "$line,\"$(python3 -c "print(f'{($(cpu_ticks ${serving[$name]}) - $before) * $tick_us / $n:.3f}')")\""
}

cargo build --release --locked >&2

redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" \
    --logfile "$work/redis.log" &
pids+=($!)
redis_pid=$!
wait_for "$redis_port"

proxy_port="$(free_port)"
MEMORY_CACHE_ENABLED=false target/release/auracache --listen "127.0.0.1:$proxy_port" \
    --upstream "redis://127.0.0.1:$redis_port" --log-level warn 2>"$work/auracache.log" &
pids+=($!)
proxy_pid=$!
wait_for "$proxy_port"
# Compression on, L1 off: every GET decompresses.
zip_port="$(free_port)"
MEMORY_CACHE_ENABLED=false CACHE_COMPRESSION_ENABLED=true target/release/auracache --listen "127.0.0.1:$zip_port" \
    --upstream "redis://127.0.0.1:$redis_port" --log-level warn 2>"$work/auracache-zip.log" &
pids+=($!)
zip_pid=$!
wait_for "$zip_port"
# The default configuration: L1 on (a key is filled on its second miss).
l1_port="$(free_port)"
target/release/auracache --listen "127.0.0.1:$l1_port" --upstream "redis://127.0.0.1:$redis_port" \
    --log-level warn 2>"$work/auracache-l1.log" &
pids+=($!)
l1_pid=$!
wait_for "$l1_port"
for _ in $(seq 100); do
    redis-cli -p "$l1_port" info cache | grep -q "l1_ready:1" && break
    sleep 0.05
done

# The same two configurations with the pattern engine off.
nopat_port="$(free_port)"
MEMORY_CACHE_ENABLED=false PATTERN_ANALYSIS_ENABLED=false target/release/auracache --listen "127.0.0.1:$nopat_port" \
    --upstream "redis://127.0.0.1:$redis_port" --log-level warn 2>"$work/auracache-nopat.log" &
pids+=($!)
nopat_pid=$!
wait_for "$nopat_port"
l1_nopat_port="$(free_port)"
PATTERN_ANALYSIS_ENABLED=false target/release/auracache --listen "127.0.0.1:$l1_nopat_port" \
    --upstream "redis://127.0.0.1:$redis_port" --log-level warn 2>"$work/auracache-l1-nopat.log" &
pids+=($!)
l1_nopat_pid=$!
wait_for "$l1_nopat_port"
for _ in $(seq 100); do
    redis-cli -p "$l1_nopat_port" info cache | grep -q "l1_ready:1" && break
    sleep 0.05
done

targets=("direct:$redis_port" "auracache:$proxy_port" "auracache+L1:$l1_port")
# The processes that serve each target: their CPU time per request is the
# figure that does not move with the machine's speed.
declare -A serving=([direct]="$redis_pid" [auracache]="$proxy_pid $redis_pid" [auracache+L1]="$l1_pid $redis_pid"
    [auracache+zstd]="$zip_pid $redis_pid" [auracache-patterns]="$nopat_pid $redis_pid"
    [auracache+L1-patterns]="$l1_nopat_pid $redis_pid")
if command -v nutcracker >/dev/null 2>&1; then
    twem_port="$(free_port)"
    cat >"$work/nutcracker.yml" <<YML
bench:
  listen: 127.0.0.1:$twem_port
  redis: true
  hash: fnv1a_64
  distribution: ketama
  preconnect: true
  servers:
    - 127.0.0.1:$redis_port:1
YML
    nutcracker -c "$work/nutcracker.yml" -o "$work/nutcracker.log" &
    pids+=($!)
    serving[twemproxy]="$! $redis_pid"
    wait_for "$twem_port"
    targets+=("twemproxy:$twem_port")
else
    echo "nutcracker not installed: no twemproxy column (apt-get install -y nutcracker)" >&2
fi

# Rows: SET before GET so that GET reads values of the row's size.
rows=()
for size in 100 10000; do
    for test in set get; do
        for pipeline in 1 16; do
            rows+=("$test:$pipeline:$size")
        done
    done
done

results="$work/results.csv"
touch "$results"
for round in $(seq "$rounds"); do
    [[ " $sections " == *" passthrough "* ]] || break
    for row in "${rows[@]}"; do
        IFS=: read -r test pipeline size <<<"$row"
        # Rotate which target goes first so that none is always warmest.
        count=${#targets[@]}
        for offset in $(seq 0 $((count - 1))); do
            target="${targets[$(((round + offset) % count))]}"
            name="${target%%:*}"
            port="${target##*:}"
            n="$(requests_for "$pipeline")"
            line="$(run_benchmark "$name" "$n" -p "$port" -t "$test" -c 50 -P "$pipeline" -d "$size" -r 100000)"
            echo "$round,$test,$pipeline,$size,$name,$line" >>"$results"
            echo "round $round $test -P $pipeline -d $size $name: $line" >&2
        done
    done
done

# render <results csv> <markdown file> <caption> [targets] [bases]: the
# table of a section's results, printed and appended to the file. Targets
# (space-separated, in column order; by default the passthrough section's)
# without results are left out; each base (by default "direct") gets a
# ratio column for every target that is not a base up to it. A target
# with no run for a row (MGET on the cluster directly) shows "-".
render() {
    python3 - "$1" "$2" "$3" "${4:-direct auracache twemproxy auracache+L1 auracache+zstd}" "${5:-direct}" <<'PY'
import csv, statistics, sys
rows = {}
for rec in csv.reader(open(sys.argv[1])):
    rnd, test, pipeline, size, target, _name, rps, avg, mn, p50, p95, p99, mx, cpu = rec
    key = (test.upper(), int(pipeline), int(size))
    rows.setdefault(key, {}).setdefault(target, []).append((float(rps), float(p50), float(p99), float(cpu)))
if not rows:
    sys.exit(0)
targets = [t for t in sys.argv[4].split() if any(t in v for v in rows.values())]
bases = sys.argv[5].split()
ratios = [(t, b) for i, b in enumerate(bases) for t in targets if t not in bases[:i + 1]]
med = lambda xs, i: statistics.median(x[i] for x in xs)
head = "| command | -P | -d | " + " | ".join(f"{t} ops/s" for t in targets)
head += " | " + " | ".join(f"{t}/{b}" for t, b in ratios)
head += " | p50 ms (" + "/".join(targets) + ") | p99 ms (" + "/".join(targets) + ")"
head += " | server CPU us/req (" + "/".join(targets) + ") |"
lines = [head, "|" + "---|" * (head.count("|") - 1)]
order = sorted(rows, key=lambda k: (k[2], k[0] != "SET", k[0] != "GET", k[1]))
for key in order:
    data = rows[key]
    ops = {t: med(data[t], 0) for t in targets if t in data}
    each = lambda i, form: "/".join(format(med(data[t], i), form) if t in data else "-" for t in targets)
    cells = [key[0], str(key[1]), str(key[2])]
    cells += [f"{ops[t]:,.0f}" if t in ops else "-" for t in targets]
    cells += [f"{ops[t] / ops[b]:.2f}x" if t in ops and b in ops else "-" for t, b in ratios]
    cells.append(each(1, ".3f"))
    cells.append(each(2, ".3f"))
    cells.append(each(3, ".2f"))
    lines.append("| " + " | ".join(cells) + " |")
rounds = max(len(v) for d in rows.values() for v in d.values())
lines.append("")
lines.append(f"{sys.argv[3]}; median of {rounds} rounds; redis-benchmark -c 50; targets alternate within each round; server CPU = user + system time of the serving processes (the proxy and Redis behind it) per request")
text = "\n".join(lines) + "\n"
with open(sys.argv[2], "a") as out:
    out.write(text + "\n")
print(text)
PY
}

: >"$out_dir/latest.md"
render "$results" "$out_dir/latest.md" "random keys, key space 100,000 (auracache = L1 off, auracache+L1 = defaults)"

# L1: a hot key set that fits the cache, and a 90/10 read/write mix.
if [[ " $sections " == *" l1 "* ]]; then
    l1_results="$work/l1.csv"
    : >"$l1_results"
    hot=1000
    for size in 100 10000; do
        redis-benchmark -p "$redis_port" -t set -c 50 -d "$size" -r "$hot" -n $((hot * 20)) -q >/dev/null
        for round in $(seq "$rounds"); do
            for pipeline in 1 16; do
                for target in "direct:$redis_port" "auracache+L1:$l1_port"; do
                    name="${target%%:*}"
                    port="${target##*:}"
                    n="$(requests_for "$pipeline")"
                    line="$(run_benchmark "$name" "$n" -p "$port" -t get -c 50 -P "$pipeline" -d "$size" -r "$hot")"
                    echo "$round,get-hot,$pipeline,$size,$name,$line" >>"$l1_results"
                    echo "L1 round $round GET hot -P $pipeline -d $size $name: $line" >&2
                done
            done
            # 90/10: 45 readers and 5 writers at once; ops/s summed, latency of the reads.
            for target in "direct:$redis_port" "auracache+L1:$l1_port"; do
                name="${target%%:*}"
                port="${target##*:}"
                before="$(cpu_ticks ${serving[$name]})"
                redis-benchmark -p "$port" -t set -c 5 -d "$size" -r "$hot" -n $((requests / 20)) --csv -q \
                    | grep -v '^"test"' | head -1 >"$work/mix-set.csv" &
                reads="$(redis-benchmark -p "$port" -t get -c 45 -d "$size" -r "$hot" -n $((requests * 9 / 20)) \
                    --csv -q | grep -v '^"test"' | head -1)"
                wait $!
                ticks=$(($(cpu_ticks ${serving[$name]}) - before))
                line="$(python3 - "$reads" "$(cat "$work/mix-set.csv")" "$((ticks * tick_us))" "$((requests / 2))" <<'PY'
import csv, sys
r = next(csv.reader([sys.argv[1]]))
w = next(csv.reader([sys.argv[2]]))
r[1] = f"{float(r[1]) + float(w[1]):.2f}"
r[0] = "MIX"
r.append(f"{int(sys.argv[3]) / int(sys.argv[4]):.3f}")
print(",".join(f'"{x}"' for x in r))
PY
)"
                echo "$round,mix-90-10,1,$size,$name,$line" >>"$l1_results"
                echo "L1 round $round mix 90/10 -d $size $name: $line" >&2
            done
        done
    done
    render "$l1_results" "$out_dir/latest.md" "L1: hot set of $hot keys (GET-HOT), and 90/10 GET/SET mix (MIX, -P 1)"
fi

# Compression: SET and GET of 10 KB and 100 KB values (redis-benchmark's
# payload, which zstd stores in about three quarters of its size), direct versus
# through auracache with compression on (L1 off, so every GET decodes), and
# the bytes Redis received for the SETs and sent for the GETs.
if [[ " $sections " == *" compression "* ]]; then
    zip_results="$work/zip.csv"
    : >"$zip_results"
    net_bytes() {
        redis-cli -p "$redis_port" info stats | tr -d '\r' | grep "^$1:" | cut -d: -f2
    }
    for size in 10000 100000; do
        n=$((requests / 5))
        [ "$size" -eq 100000 ] && n=$((requests / 20))
        for round in $(seq "$rounds"); do
            for target in "direct:$redis_port" "auracache+zstd:$zip_port"; do
                name="${target%%:*}"
                port="${target##*:}"
                for test in set get; do
                    counter=total_net_input_bytes
                    [ "$test" = get ] && counter=total_net_output_bytes
                    before="$(net_bytes "$counter")"
                    line="$(run_benchmark "$name" "$n" -p "$port" -t "$test" -c 50 -d "$size" -r 1000)"
                    moved=$(($(net_bytes "$counter") - before))
                    echo "$round,$test,1,$size,$name,$line" >>"$zip_results"
                    echo "compression round $round $test -d $size $name: $line; Redis moved $((moved / n)) bytes per request" >&2
                    echo "$test,$size,$name,$((moved / n))" >>"$work/zip-bytes.csv"
                done
            done
        done
    done
    render "$zip_results" "$out_dir/latest.md" "compression: -P 1, 1,000 keys; auracache+zstd = compression on (zstd level 3), L1 off"
    python3 - "$work/zip-bytes.csv" <<'PY' | tee -a "$out_dir/latest.md"
import csv, statistics, sys
rows = {}
for test, size, name, moved in csv.reader(open(sys.argv[1])):
    rows.setdefault((test.upper(), int(size)), {}).setdefault(name, []).append(int(moved))
print("| command | -d | bytes Redis moved per request, direct | through auracache+zstd | ratio |")
print("|---|---|---|---|---|")
for (test, size), by in sorted(rows.items(), key=lambda item: (item[0][1], item[0][0] != "SET")):
    direct, zipped = statistics.median(by["direct"]), statistics.median(by["auracache+zstd"])
    print(f"| {test} | {size} | {direct:,.0f} | {zipped:,.0f} | {zipped / direct:.3f} |")
PY
fi

# Pattern engine: the GET workloads with the engine on (the default) and
# off, in the same run: random keys with L1 off (every GET is read from
# Redis and heard with its reply), and a hot set with L1 on (GETs answered
# by L1's fast path, each one an event).
if [[ " $sections " == *" patterns "* ]]; then
    pat_results="$work/patterns.csv"
    : >"$pat_results"
    # What the engine took, sampled out and dropped during this section.
    engine_counts() {
        redis-cli -p "$1" info cache | tr -d '\r' | awk -F: '
            $1 == "pattern_events" { events = $2 } $1 == "pattern_events_dropped" { dropped = $2 }
            $1 == "pattern_events_sampled_out" { sampled = $2 }
            END { print events + 0, dropped + 0, sampled + 0 }'
    }
    # An older build (BASELINE), with L1 off and on, as a before figure.
    baseline_random=() baseline_hot=()
    if [ -n "${BASELINE:-}" ]; then
        base_port="$(free_port)"
        MEMORY_CACHE_ENABLED=false "$BASELINE" --listen "127.0.0.1:$base_port" \
            --upstream "redis://127.0.0.1:$redis_port" --log-level warn 2>"$work/baseline.log" &
        pids+=($!)
        serving[baseline]="$! $redis_pid"
        wait_for "$base_port"
        base_l1_port="$(free_port)"
        "$BASELINE" --listen "127.0.0.1:$base_l1_port" \
            --upstream "redis://127.0.0.1:$redis_port" --log-level warn 2>"$work/baseline-l1.log" &
        pids+=($!)
        serving[baseline+L1]="$! $redis_pid"
        wait_for "$base_l1_port"
        baseline_random=("baseline:$base_port") baseline_hot=("baseline+L1:$base_l1_port")
    fi
    read -r random_events_before random_dropped_before random_sampled_before <<<"$(engine_counts "$proxy_port")"
    read -r hot_events_before hot_dropped_before hot_sampled_before <<<"$(engine_counts "$l1_port")"
    redis-benchmark -p "$redis_port" -t set -c 50 -d 100 -r 100000 -n 200000 -q >/dev/null
    for round in $(seq "$rounds"); do
        for pipeline in 1 16; do
            for workload in random hot; do
                if [ "$workload" = random ]; then
                    keyspace=100000
                    pair=("auracache:$proxy_port" "auracache-patterns:$nopat_port" "${baseline_random[@]}")
                else
                    keyspace=1000
                    pair=("auracache+L1:$l1_port" "auracache+L1-patterns:$l1_nopat_port" "${baseline_hot[@]}")
                fi
                row=("direct:$redis_port" "${pair[@]}")
                if [ $((round % 2)) -eq 0 ]; then
                    row=()
                    for ((i = ${#pair[@]} - 1; i >= 0; i--)); do row+=("${pair[$i]}"); done
                    row+=("direct:$redis_port")
                fi
                for target in "${row[@]}"; do
                    name="${target%%:*}"
                    port="${target##*:}"
                    n="$(requests_for "$pipeline")"
                    line="$(run_benchmark "$name" "$n" -p "$port" -t get -c 50 -P "$pipeline" -d 100 -r "$keyspace")"
                    echo "$round,$workload,$pipeline,100,$name,$line" >>"$pat_results"
                    echo "patterns round $round GET $workload -P $pipeline $name: $line" >&2
                done
            done
        done
    done
    python3 - "$pat_results" <<'PY' | tee -a "$out_dir/latest.md"
import csv, statistics, sys
rows = {}
for rec in csv.reader(open(sys.argv[1])):
    rnd, workload, pipeline, size, target, _name, rps, avg, mn, p50, p95, p99, mx, cpu = rec
    rows.setdefault((workload, int(pipeline)), {}).setdefault(target, []).append((float(rps), float(cpu)))
med = lambda xs, i: statistics.median(x[i] for x in xs)
baseline = any(t.startswith("baseline") for d in rows.values() for t in d)
head = "| GET workload | -P | direct ops/s | engine off ops/s | engine on ops/s |"
head += " baseline ops/s | baseline/direct |" if baseline else ""
head += " off/direct | on/direct | on/off | server CPU us/req off/on |"
print(head)
print("|" + "---|" * (head.count("|") - 1))
for (workload, pipeline), data in sorted(rows.items()):
    on_name = "auracache" if workload == "random" else "auracache+L1"
    off_name = on_name + "-patterns"
    base_name = "baseline" if workload == "random" else "baseline+L1"
    direct, off, on = (med(data[t], 0) for t in ("direct", off_name, on_name))
    label = "random keys, L1 off" if workload == "random" else "hot set of 1,000, L1 on"
    line = f"| {label} | {pipeline} | {direct:,.0f} | {off:,.0f} | {on:,.0f} |"
    if baseline:
        base = med(data[base_name], 0)
        line += f" {base:,.0f} | {base / direct:.2f}x |"
    line += f" {off / direct:.2f}x | {on / direct:.2f}x | {on / off:.3f} | {med(data[off_name], 1):.2f}/{med(data[on_name], 1):.2f} |"
    print(line)
rounds = max(len(v) for d in rows.values() for v in d.values())
print()
print(f"pattern engine on vs off; -d 100, -c 50; median of {rounds} rounds, targets alternating; server CPU = the proxy's threads (the engine's included) and Redis, per request")
PY
    read -r random_events random_dropped random_sampled <<<"$(engine_counts "$proxy_port")"
    read -r hot_events hot_dropped hot_sampled <<<"$(engine_counts "$l1_port")"
    python3 - "$((random_events - random_events_before))" "$((random_dropped - random_dropped_before))" \
        "$((random_sampled - random_sampled_before))" "$((hot_events - hot_events_before))" \
        "$((hot_dropped - hot_dropped_before))" "$((hot_sampled - hot_sampled_before))" <<'PY' | tee -a "$out_dir/latest.md"
import sys
values = list(map(int, sys.argv[1:]))
for label, (taken, dropped, sampled) in (("random keys, L1 off", values[:3]), ("hot set, L1 on", values[3:])):
    total = taken + dropped + sampled
    share = lambda part: f"{part / total:.1%}" if total else "0.0%"
    print(f"engine on, {label}: {total:,} reads; recorded {taken:,}, sampled out {sampled:,} ({share(sampled)}), dropped {dropped:,} ({share(dropped)})")
print()
PY
fi

# Slow readers: clients that ask for 100 KB replies and never read them
# (examples/never_reads.rs: 8 connections, each reconnecting a second
# after it is cut off; SLOW_PAUSE_MS=0 makes it a reconnect storm)
# against a proxy with limits.max_output_bytes = 8 MiB, and a bystander's
# redis-benchmark GETs through the same proxy with and without them, in
# the same run. Also the proxy's largest RSS while they ran.
if [[ " $sections " == *" slowreaders "* ]]; then
    cargo build --release --locked --example never_reads >&2
    slow_port="$(free_port)"
    AURACACHE_MAX_OUTPUT_BYTES=8388608 target/release/auracache --listen "127.0.0.1:$slow_port" \
        --upstream "redis://127.0.0.1:$redis_port" --log-level error 2>"$work/auracache-slow.log" &
    pids+=($!)
    slow_pid=$!
    serving[auracache-slow]="$slow_pid $redis_pid"
    wait_for "$slow_port"
    head -c 100000 /dev/urandom | redis-cli -p "$redis_port" -x set slowreader:big >/dev/null
    redis-benchmark -p "$redis_port" -t set -c 50 -d 100 -r 100000 -n 200000 -q >/dev/null
    slow_results="$work/slow.csv"
    : >"$slow_results"
    most_rss=0
    for round in $(seq "$rounds"); do
        for flood in off on; do
            flooder=""
            if [ "$flood" = on ]; then
                target/release/examples/never_reads "127.0.0.1:$slow_port" slowreader:big 8 "${SLOW_PAUSE_MS:-1000}" \
                    >"$work/never_reads.log" &
                flooder=$!
                sleep 1
            fi
            for pipeline in 1 16; do
                for target in "direct:$redis_port" "auracache-slow:$slow_port"; do
                    name="${target%%:*}"
                    port="${target##*:}"
                    [ "$flood" = on ] && [ "$name" = direct ] && continue
                    n="$(requests_for "$pipeline")"
                    line="$(run_benchmark "$name" "$n" -p "$port" -t get -c 50 -P "$pipeline" -d 100 -r 100000)"
                    echo "$round,$flood,$pipeline,100,$name,$line" >>"$slow_results"
                    echo "slow readers round $round flood $flood GET -P $pipeline $name: $line" >&2
                    rss="$(awk '/^VmRSS:/ { print $2 }' "/proc/$slow_pid/status")"
                    [ "$rss" -gt "$most_rss" ] && most_rss="$rss"
                done
            done
            if [ -n "$flooder" ]; then
                kill "$flooder"
                wait "$flooder" 2>/dev/null || true
                echo "slow readers round $round: $(tail -1 "$work/never_reads.log")" >&2
            fi
        done
    done
    cut_offs="$(redis-cli -p "$slow_port" info cache | tr -d '\r' | awk -F: '$1 == "output_limit_disconnects" { print $2 }')"
    python3 - "$slow_results" "$cut_offs" "$most_rss" "${SLOW_PAUSE_MS:-1000}" <<'PY' | tee -a "$out_dir/latest.md"
import csv, statistics, sys
rows = {}
for rec in csv.reader(open(sys.argv[1])):
    rnd, flood, pipeline, size, target, _name, rps, avg, mn, p50, p95, p99, mx, cpu = rec
    rows.setdefault(int(pipeline), {}).setdefault((target, flood), []).append((float(rps), float(p99)))
med = lambda xs, i: statistics.median(x[i] for x in xs)
print("| bystander GET | -P | direct ops/s | proxy ops/s, no slow readers | proxy ops/s, 8 slow readers | with/without | proxy/direct without | proxy/direct with | p99 ms without/with |")
print("|---|---|---|---|---|---|---|---|---|")
for pipeline, data in sorted(rows.items()):
    direct = med(data[("direct", "off")], 0)
    off, on = med(data[("auracache-slow", "off")], 0), med(data[("auracache-slow", "on")], 0)
    p99 = f"{med(data[('auracache-slow', 'off')], 1):.3f}/{med(data[('auracache-slow', 'on')], 1):.3f}"
    print(f"| random keys | {pipeline} | {direct:,.0f} | {off:,.0f} | {on:,.0f} | {on / off:.2f} | {off / direct:.2f}x | {on / direct:.2f}x | {p99} |")
rounds = max(len(v) for d in rows.values() for v in d.values())
print()
print(f"slow readers: 8 connections sending GETRANGE of a 100 KB value without reading, cut off at limits.max_output_bytes = 8 MiB and reconnecting {sys.argv[4]} ms later ({sys.argv[2]} cut-offs); proxy RSS at most {int(sys.argv[3]) // 1024} MiB; median of {rounds} rounds")
print()
PY
fi

# Cluster: a 3-master Redis Cluster (no replicas) beside the single Redis;
# the single Redis directly, auracache (L1 off) in front of it, auracache
# (L1 off) in front of the cluster, and redis-benchmark --cluster straight
# to the masters (each of its clients talks to one master, with keys of
# that master's slots) as the reference for the cluster without a proxy.
if [[ " $sections " == *" cluster "* ]]; then
    start_cluster "$work" 3 0
    cluster_proxy_port="$(free_port)"
    cluster_proxy_log="$work/auracache-cluster.log"
    MEMORY_CACHE_ENABLED=false target/release/auracache --listen "127.0.0.1:$cluster_proxy_port" \
        --upstream "redis-cluster://$cluster_seeds" --log-level warn 2>"$cluster_proxy_log" &
    pids+=($!)
    cluster_proxy_pid=$!
    # No figures from a proxy that does not serve the cluster: it must start,
    # store keys where the cluster itself finds them (keys of every master),
    # and answer an MGET across them.
    cluster_proxy_fails() {
        echo "auracache in front of the Redis Cluster (upstream redis-cluster://$cluster_seeds) $1;" \
            "no cluster figures. Its log ends:" >&2
        tail -5 "$cluster_proxy_log" >&2
        exit 1
    }
    for _ in $(seq 200); do
        kill -0 "$cluster_proxy_pid" 2>/dev/null || cluster_proxy_fails "exited at start"
        [ "$(redis-cli -p "$cluster_proxy_port" ping 2>/dev/null)" = PONG ] && break
        sleep 0.05
    done
    [ "$(redis-cli -p "$cluster_proxy_port" ping 2>/dev/null)" = PONG ] || cluster_proxy_fails "does not answer PING in 10 s"
    probe_keys=() probe_values=()
    for i in $(seq 0 29); do
        key="bench:probe:$i"
        reply="$(redis-cli -p "$cluster_proxy_port" set "$key" "value $i" 2>&1)"
        [ "$reply" = OK ] || cluster_proxy_fails "answered SET $key with: $reply"
        reply="$(redis-cli -c -p "${cluster_ports[0]}" get "$key" 2>&1)"
        [ "$reply" = "value $i" ] || cluster_proxy_fails "answered OK to SET $key, but the cluster has: $reply"
        reply="$(redis-cli -p "$cluster_proxy_port" get "$key" 2>&1)"
        [ "$reply" = "value $i" ] || cluster_proxy_fails "answered GET $key with: $reply"
        probe_keys+=("$key")
        probe_values+=("value $i")
    done
    reply="$(redis-cli -p "$cluster_proxy_port" mget "${probe_keys[@]}" 2>&1)"
    [ "$reply" = "$(printf '%s\n' "${probe_values[@]}")" ] \
        || cluster_proxy_fails "answered MGET of 30 keys across the masters with: $(head -3 <<<"$reply")"
    echo "auracache in front of the cluster serves (SET, GET and MGET of keys on every master)" >&2

    serving[cluster]="${cluster_pids[*]}"
    serving[auracache@cluster]="$cluster_proxy_pid ${cluster_pids[*]}"
    declare -A cluster_target=([direct]="-p $redis_port" [auracache]="-p $proxy_port"
        [auracache@cluster]="-p $cluster_proxy_port" [cluster]="--cluster -p ${cluster_ports[0]}")
    cluster_names=(direct auracache auracache@cluster cluster)
    # MGET of 10 random keys: redis-benchmark draws each __rand_int__ anew.
    mget=(mget)
    for _ in $(seq 10); do mget+=("key:__rand_int__"); done
    # Every key of the key space there before the first round, so GET and
    # MGET read values in every round (the cluster's own keys for --cluster).
    redis-benchmark -p "$redis_port" -t set -c 50 -P 16 -d 100 -r 100000 -n 400000 -q >/dev/null
    redis-benchmark -p "$cluster_proxy_port" -t set -c 50 -P 16 -d 100 -r 100000 -n 400000 -q >/dev/null
    redis-benchmark --cluster -p "${cluster_ports[0]}" -t set -c 50 -P 16 -d 100 -r 100000 -n 1200000 -q >/dev/null
    cluster_results="$work/cluster.csv"
    : >"$cluster_results"
    for round in $(seq "$rounds"); do
        for pipeline in 1 16; do
            for test in set get mget; do
                count=${#cluster_names[@]}
                for offset in $(seq 0 $((count - 1))); do
                    name="${cluster_names[$(((round + offset) % count))]}"
                    workload=(-t "$test")
                    if [ "$test" = mget ]; then
                        # Its keys span slots: the cluster answers CROSSSLOT.
                        [ "$name" = cluster ] && continue
                        workload=("${mget[@]}")
                    fi
                    read -r -a target_args <<<"${cluster_target[$name]}"
                    n="$(requests_for "$pipeline")"
                    line="$(run_benchmark "$name" "$n" "${target_args[@]}" -c 50 -P "$pipeline" -d 100 -r 100000 \
                        "${workload[@]}")"
                    echo "$round,$test,$pipeline,100,$name,$line" >>"$cluster_results"
                    echo "cluster round $round $test -P $pipeline $name: $line" >&2
                done
            done
        done
    done
    render "$cluster_results" "$out_dir/latest.md" \
        "cluster: a 3-master Redis Cluster (no replicas) beside a single Redis; random keys, key space 100,000, pre-filled; MGET = 10 keys; auracache = L1 off in front of the single Redis, auracache@cluster = L1 off in front of the cluster, cluster = redis-benchmark --cluster straight to its masters (no MGET: its keys span slots)" \
        "direct auracache auracache@cluster cluster" "direct auracache"
fi
