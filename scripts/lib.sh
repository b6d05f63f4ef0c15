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
