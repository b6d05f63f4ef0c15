# shellcheck shell=bash
# Shared by the scripts: make sure the Debian packages a script needs exist.
# Usage: ensure_packages <command>=<package> ...
ensure_packages() {
    local missing=()
    local pair
    for pair in "$@"; do
        command -v "${pair%%=*}" >/dev/null 2>&1 || missing+=("${pair#*=}")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "installing ${missing[*]} (apt-get)" >&2
    local sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    $sudo apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >&2
}

# For scripts that start servers: `pids` holds what they started.
# stop_started <work dir>: ends them and removes the work directory.
stop_started() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$1"
}

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (10 s at most) until something answers PING on port $1.
wait_for() {
    for _ in $(seq 200); do
        redis-cli -p "$1" ping >/dev/null 2>&1 && return 0
        sleep 0.05
    done
    echo "nothing answers on port $1" >&2
    exit 1
}

# start_redis <work dir>: a throwaway redis-server (no persistence) on a
# free port, logging to the work directory, added to `pids`; sets
# `redis_port` and returns once it answers.
start_redis() {
    redis_port="$(free_port)"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$1" \
        --logfile "$1/redis.log" &
    pids+=($!)
    wait_for "$redis_port"
}

# start_cluster <work dir> <masters> <replicas per master>: a throwaway Redis
# Cluster (at least 3 masters, as redis-cli requires) on free ports, each
# node with its own directory under the work directory and no persistence
# (the same settings as start_redis, so the two compare), added to `pids`.
# Returns once every node reports cluster_state:ok and every replica's link
# to its master is up; sets `cluster_ports` (every node), `cluster_pids`
# and `cluster_seeds` ("127.0.0.1:p1,127.0.0.1:p2,..." of the masters), and
# prints the seeds on stderr.
start_cluster() {
    local work="$1" masters="$2" replicas="$3"
    local nodes=$((masters * (1 + replicas))) port bus dir addresses=() taken=" "
    cluster_ports=() cluster_pids=()
    for _ in $(seq "$nodes"); do
        # The cluster bus listens on a port of its own (cluster-port), not on
        # port + 10000, which may be past 65535 or taken.
        port="$(free_port)"
        while [[ "$taken" == *" $port "* ]]; do port="$(free_port)"; done
        taken+="$port "
        bus="$(free_port)"
        while [[ "$taken" == *" $bus "* ]]; do bus="$(free_port)"; done
        taken+="$bus "
        dir="$work/cluster-$port"
        mkdir -p "$dir"
        redis-server --port "$port" --cluster-port "$bus" --bind 127.0.0.1 --cluster-enabled yes \
            --cluster-config-file nodes.conf --cluster-node-timeout 2000 --save "" --appendonly no \
            --repl-diskless-sync-delay 0 \
            --dir "$dir" --logfile "$dir/redis.log" &
        pids+=($!)
        cluster_pids+=($!)
        cluster_ports+=("$port")
        addresses+=("127.0.0.1:$port")
    done
    for port in "${cluster_ports[@]}"; do wait_for "$port"; done
    if ! redis-cli --cluster create "${addresses[@]}" --cluster-replicas "$replicas" --cluster-yes \
        >"$work/cluster-create.log" 2>&1; then
        echo "redis-cli --cluster create failed:" >&2
        tail -20 "$work/cluster-create.log" >&2
        exit 1
    fi
    local waiting
    for _ in $(seq 400); do
        waiting="$(cluster_waiting_for "${cluster_ports[@]}")"
        [ -z "$waiting" ] && break
        sleep 0.05
    done
    if [ -n "$waiting" ]; then
        echo "the Redis Cluster is not ready after 20 s (waiting for$waiting); logs in $work/cluster-*" >&2
        exit 1
    fi
    cluster_seeds="$(redis-cli -p "${cluster_ports[0]}" cluster nodes | tr -d '\r' \
        | awk '$3 ~ /master/ { split($2, a, "@"); print a[1] }' | sort -t: -k2 -n | paste -sd, -)"
    echo "Redis Cluster: $masters masters, $replicas replicas each; seeds $cluster_seeds" >&2
}

# cluster_waiting_for <port>...: what the cluster on those ports still
# lacks before it serves: a node not at cluster_state:ok, a replica whose
# link to its master is down, or nodes that disagree about who is master of
# what (each node's CLUSTER NODES without what differs by design: which
# line is "myself", timings, link states and its own migrating marks).
# Prints nothing once it is ready.
cluster_waiting_for() {
    local port views=""
    for port in "$@"; do
        redis-cli -p "$port" cluster info | grep -q '^cluster_state:ok' || printf ' %s' "$port:cluster_state"
        if redis-cli -p "$port" info replication | grep -q '^role:slave'; then
            redis-cli -p "$port" info replication | grep -q '^master_link_status:up' || printf ' %s' "$port:link"
        fi
        views+="$(redis-cli -p "$port" cluster nodes | tr -d '\r' | awk '{
            sub("myself,", "", $3); split($2, address, "@"); slots = ""
            for (i = 9; i <= NF; i++) if ($i !~ /^\[/) slots = slots " " $i
            print $1, address[1], $3, $4, slots }' | sort | md5sum)"$'\n'
    done
    [ "$(sort -u <<<"$views" | grep -c .)" -eq 1 ] || printf ' %s' "agreement"
}
