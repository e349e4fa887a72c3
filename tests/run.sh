#!/usr/bin/env bash
# The whole test suite: `sudo ./tests/run.sh` (CI: .ci/run calls exactly this).
# Tiers (docs/testing.md): unit tests (no root); namespace tests (root, real
# nftables, wireguard-go peers, real packets); the image under QEMU (root).
# Nothing here sends a packet outside this machine.
set -euo pipefail
cd "$(dirname "$0")/.."
./tests/deps.sh
[ "$(id -u)" -eq 0 ] || { echo "run.sh: the namespace and QEMU tiers need root (sudo ./tests/run.sh)" >&2; exit 1; }
export CARGO_TERM_COLOR=never
# A clean run gains nothing from incremental state (it was a fifth of target/).
if [ "${CI:-}" = true ]; then export CARGO_INCREMENTAL=0; fi
target=${CARGO_TARGET_DIR:-$PWD/target}
started=$SECONDS
stage() { echo; echo "== [$((SECONDS - started))s] $* ($(free_gb) GB free under target/)"; }
free_gb() { mkdir -p "$target" && df -BG --output=avail "$target" | tail -1 | tr -dc 0-9; }
# A clean run leaves about 4.5 GB under target/ and 0.5 GB under out/, and
# the QEMU tier copies images; a full disk shows up late and cryptically (a
# linker's SIGBUS), so say it first.
need_gb=${PALISADE_SUITE_MIN_FREE_GB:-8}
[ "$(free_gb)" -ge "$need_gb" ] || { echo "run.sh: only $(free_gb) GB free under $target; the suite needs about $need_gb GB (PALISADE_SUITE_MIN_FREE_GB overrides)" >&2; exit 1; }

stage "tier 1: lints (clippy, warnings are errors) and unit tests (cargo test --workspace)"
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked

stage "tier 2a: nft loads the rendered ruleset; the DNS service binds port 53 (private network namespace)"
unshare -n sh -c 'ip link set lo up && exec cargo test --locked -p palisade-core -p palisade-dns -- --ignored'

stage "tier 2b: namespace tests (palisaded + wireguard-go clients, real nftables)"
cargo build --locked -p palisaded -p palisade-cli -p palisade-fleet -p palisade-client
# The QEMU tier uses the same binaries (the tests would otherwise build their own).
export PALISADE_FLEET_BIN=$target/debug/palisade-fleet PALISADE_CLIENT_BIN=$target/debug/palisade-client \
    PALISADED_BIN=$target/debug/palisaded PALISADE_BIN=$target/debug/palisade
cargo test -p palisade-tests --locked --test 'netns_*' --test 'dns_*' -- --ignored --test-threads=1

stage "tier 3: the image under QEMU (build, boot, end to end, zero-log scan)"
cargo run --locked -q -p palisade-image -- build --board qemu-x86_64 --out out --cache out/debs
PALISADE_IMAGE=$PWD/out/palisade-qemu-x86_64.raw \
    cargo test -p palisade-tests --locked --test 'e2e_*' --test 'image_*' -- --ignored --test-threads=1 --nocapture

stage "all tiers passed"
