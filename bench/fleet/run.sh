#!/usr/bin/env bash
# Fleet trust figures (tests/tests/bench_fleet.rs): publication to effect at
# the default 60 s poll (config change, grant revocation, node revocation;
# ROUNDS each), and the apply time and RSS of a node with 10 000 grants.
# The real palisaded in a network namespace, a file:// repository published
# with palisade-fleet. Bounded: each round at most 150 s (about 25 min for 5).
#
#   sudo bench/fleet/run.sh [ROUNDS]     (default 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --locked -q --release -p palisaded -p palisade-cli -p palisade-fleet
target=${CARGO_TARGET_DIR:-$PWD/target}
export BENCH_ROUNDS=${1:-5} PALISADED_BIN=$target/release/palisaded PALISADE_BIN=$target/release/palisade \
    PALISADE_FLEET_BIN=$target/release/palisade-fleet
cargo test --locked -q -p palisade-tests --test bench_fleet -- --ignored --nocapture --test-threads=1 2>&1 \
    | grep -E "^(round|config change|grant revocation|node revocation|publication|palisade-fleet grant bulk|10000 grants)"
