#!/usr/bin/env bash
# Many live clients against one QEMU node (tests/tests/bench_load.rs):
# pal-loadgen (bench/loadgen) runs COUNTS userspace WireGuard clients from the
# bed's internet namespace against the image booted with their peers, ROUNDS
# rounds per count, and reports handshake rate, goodput, per-client fairness,
# DNS latency and the QEMU process's CPU and RSS; the bed's wireguard-go
# clients' isolation probes run during each round's flows and must pass.
# TCG here: the boot with 10k peers and each 10k ramp take minutes.
#
#   sudo bench/load/run.sh [COUNTS] [ROUNDS]     (default 1000,10000 and 3)
#
# Environment: PALISADE_IMAGE (default out/palisade-qemu-x86_64.raw),
# BENCH_HANDSHAKE_RATE (initiations/s, default 200), BENCH_DURATION (seconds
# of flows per round, default 60, at least one client round), BENCH_HTTP_PATH (`/` or `/big`),
# BENCH_ROUND_RATE (client rounds per second over all clients, default 100:
# each round one DNS query, one UDP echo, one HTTP GET).
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-$PWD/target}
export PALISADE_IMAGE=${PALISADE_IMAGE:-$PWD/out/palisade-qemu-x86_64.raw}
CARGO_INCREMENTAL=0 cargo build --locked -q --release -p palisade-loadgen
export PAL_LOADGEN_BIN=$target/release/pal-loadgen
export BENCH_LOAD_COUNTS=${1:-1000,10000} BENCH_ROUNDS=${2:-3}
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo test --locked -q -p palisade-tests --test bench_load -- --ignored --nocapture --test-threads=1 2>&1 \
    | grep -vE "^(running|test result|$)"
