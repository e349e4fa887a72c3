#!/usr/bin/env bash
# Watchdog recovery figures (tests/tests/bench_board.rs): one QEMU guest of the
# qemu-x86_64 board; each round hangs palisaded (SIGSTOP through the test-hook
# port) and times the watchdog firing, the next boot, the health gate and the
# node serving a wireguard-go client again. Bounded: ROUNDS rounds, each at most
# 300 s (about 1 minute each under TCG).
#
#   sudo bench/board/run.sh [ROUNDS]     (default 5)
#
# PALISADE_IMAGE given: that image, else the one tests/run.sh builds (out/).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PALISADE_IMAGE=${PALISADE_IMAGE:-$PWD/out/palisade-qemu-x86_64.raw}
[ -f "$PALISADE_IMAGE" ] || { echo "no image at $PALISADE_IMAGE: build it (cargo run -p palisade-image -- build --board qemu-x86_64 --out out)" >&2; exit 2; }
export BENCH_ROUNDS=${1:-5}
cargo test --locked -q -p palisade-tests --test bench_board -- --ignored --nocapture --test-threads=1 2>&1 \
    | grep -E "^(round|hang)"
