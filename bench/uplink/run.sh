#!/usr/bin/env bash
# Uplink failover figures (tests/tests/bench_uplink.rs): palisaded with two
# uplinks in network namespaces, a wireguard-go client streaming UDP through
# it; ROUNDS failovers by link down and ROUNDS by a silent black hole, each
# timed from the cut to the node's switch and to the client's stream answered
# through the second uplink (median, min, worst against the 3 s goal); then
# the probes' cost (echo requests/s, palisaded CPU with and without probes).
# Product probe defaults (500 ms, 400 ms, fall 3, rise 3). About 4 minutes.
#
#   sudo bench/uplink/run.sh [ROUNDS]     (default 10)
#
# PALISADED_BIN, PALISADE_BIN given: those binaries, else a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-$PWD/target}
if [ -z "${PALISADED_BIN:-}" ]; then
    CARGO_INCREMENTAL=0 cargo build --locked -q --release -p palisaded -p palisade-cli
    export PALISADED_BIN=$target/release/palisaded PALISADE_BIN=$target/release/palisade
fi
export BENCH_ROUNDS=${1:-10}
cargo test --locked -q -p palisade-tests --test bench_uplink -- --ignored --nocapture --test-threads=1 2>&1 \
    | grep -E "^(round|link down|black hole|probe cost|palisaded CPU)"
