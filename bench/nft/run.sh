#!/usr/bin/env bash
# Drift-check cost. As root: bench/nft/run.sh [PASSES] [ROUNDS]
# CPU time (user + system, this process and its children) per no-change
# reconcile pass and per `status` call of the engine with the real firewall,
# reading the live table with `nft -j list` (spawned) and over netlink, side
# by side; median (min-max) over ROUNDS rounds of PASSES calls. Runs in a
# private network namespace (unshare -n); no packet is sent.
set -euo pipefail
cd "$(dirname "$0")/../.."
PASSES=${1:-50}
ROUNDS=${2:-5}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build -q --release -p palisade-core --example nft_read_bench
unshare -n sh -c "ip link set lo up && exec $CARGO_TARGET_DIR/release/examples/nft_read_bench --passes $PASSES --rounds $ROUNDS"
