#!/usr/bin/env bash
# The preloader's evaluation (issue #8): a seeded week of reads (daily,
# periodic, burst, constant and random keys, and an evening peak) replayed
# through the proxy on a fast-driven manual clock against a real
# redis-server, preloading off and then on; prints the figures against the
# original system's claims. Usage: scripts/preload-eval.sh [seed]
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null; then
    echo "installing redis-server (apt-get)" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq redis-server redis-tools >/dev/null
fi

cargo run --quiet --release --example preload_eval -- "${1:-7}"
