#!/usr/bin/env bash
# Runs every test: unit tests, integration tests against a real redis-server
# (started by the test harness on free ports), and the benches' compile check.
# Installs redis-server, redis-tools and chromium (tests/dashboard.rs draws
# the dashboard in headless Chromium) first when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
ensure_packages redis-server=redis-server redis-cli=redis-tools chromium=chromium
cargo test --all-targets --locked "$@"
