#!/usr/bin/env bash
# Client failover time (tests/tests/bench_failover.rs): two palisaded nodes
# in network namespaces, palisade-client (wireguard-go) with a UDP stream
# every 50 ms; ROUNDS times the client's node is killed (alternating) and
# the time to the first answer through the other node is measured; median,
# min and worst against the 5 s goal. About 5 s a round. With an image
# (PALISADE_IMAGE, default out/palisade-qemu-x86_64.raw when it exists) the
# same again with node 1 the QEMU guest (QEMU killed; about a minute to
# boot it again after each of its rounds).
#
#   sudo bench/failover/run.sh [ROUNDS]     (default 10)
#
# PALISADED_BIN, PALISADE_BIN, PALISADE_FLEET_BIN, PALISADE_CLIENT_BIN
# given: those binaries, else a release build.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-$PWD/target}
if [ -z "${PALISADED_BIN:-}" ]; then
    CARGO_INCREMENTAL=0 cargo build --locked -q --release -p palisaded -p palisade-cli -p palisade-fleet -p palisade-client
    export PALISADED_BIN=$target/release/palisaded PALISADE_BIN=$target/release/palisade \
        PALISADE_FLEET_BIN=$target/release/palisade-fleet PALISADE_CLIENT_BIN=$target/release/palisade-client
fi
export BENCH_ROUNDS=${1:-10}
cargo test --locked -q -p palisade-tests --test bench_failover -- --ignored --nocapture --test-threads=1 \
    --exact bench_client_failover 2>&1 | grep -E "^(round|client failover)"
image=${PALISADE_IMAGE:-$PWD/out/palisade-qemu-x86_64.raw}
if [ -f "$image" ]; then
    PALISADE_IMAGE=$image cargo test --locked -q -p palisade-tests --test bench_failover -- --ignored --nocapture \
        --test-threads=1 --exact bench_client_failover_qemu 2>&1 | grep -E "^(round|client failover|thread|failover bed)"
else
    echo "no image at $image: QEMU variant skipped (build it: see README)"
fi
