#!/usr/bin/env bash
# Metrics endpoint figures (tests/tests/bench_metrics.rs): scrape round trip
# over mutual TLS from the mesh host, on a new connection each (TCP + TLS 1.3
# handshake with client certificate + GET /metrics) and on one kept-alive
# connection (SCRAPES each, median/min/max), and palisaded's RSS with the
# endpoint on and off (ROUNDS each). The real palisaded in a network
# namespace with two WireGuard clients. About 1 minute.
#
#   sudo bench/metrics/run.sh [SCRAPES] [ROUNDS]     (default 30, 3)
#
# PALISADED_BIN, PALISADE_BIN, PALISADE_FLEET_BIN given: those binaries (e.g.
# the image build's node profile, target/x86_64-unknown-linux-gnu/node/),
# else a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-$PWD/target}
if [ -z "${PALISADED_BIN:-}" ]; then
    CARGO_INCREMENTAL=0 cargo build --locked -q --release -p palisaded -p palisade-cli -p palisade-fleet
    export PALISADED_BIN=$target/release/palisaded PALISADE_BIN=$target/release/palisade \
        PALISADE_FLEET_BIN=$target/release/palisade-fleet
fi
export BENCH_SCRAPES=${1:-30} BENCH_ROUNDS=${2:-3}
cargo test --locked -q -p palisade-tests --test bench_metrics -- --ignored --nocapture --test-threads=1 2>&1 \
    | grep -E "^(latency|round|RSS)"
