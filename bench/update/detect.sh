#!/usr/bin/env bash
# Time for a node to notice a published update at the default poll interval
# (300 s + 0..20 % jitter): the real palisaded in a network namespace polling
# a file:// repository, a new image published at a random moment of each round
# (tests/tests/bench_update_detect.rs). Bounded: ROUNDS x at most 12 min.
#
#   sudo bench/update/detect.sh [ROUNDS]     (default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --locked -q -p palisaded -p palisade-cli -p palisade-fleet
target=${CARGO_TARGET_DIR:-$PWD/target}
BENCH_ROUNDS=${1:-3} PALISADED_BIN=$target/debug/palisaded PALISADE_BIN=$target/debug/palisade \
    PALISADE_FLEET_BIN=$target/debug/palisade-fleet \
    cargo test --locked -q -p palisade-tests --test bench_update_detect -- --ignored --nocapture 2>&1 \
    | grep -E "^(round|time to detect)"
