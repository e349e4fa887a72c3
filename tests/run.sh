#!/usr/bin/env bash
# The whole test suite: `sudo ./tests/run.sh` (CI: .ci/run calls exactly this).
# Tiers: unit tests (no root), namespace tests (root, real nft + wireguard-go),
# QEMU end-to-end tests (root, the real image).
set -euo pipefail
cd "$(dirname "$0")/.."
./tests/deps.sh
[ "$(id -u)" -eq 0 ] || { echo "run.sh: the namespace and QEMU tiers need root (sudo ./tests/run.sh)" >&2; exit 1; }

echo "== tier 1: unit tests (cargo test --workspace)"
cargo test --workspace --locked

echo "== tier 2: namespace tests (real nftables, wireguard-go peers)"
cargo test -p palisade-tests --locked -- --ignored --test-threads=1
