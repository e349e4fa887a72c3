#!/usr/bin/env bash
# The Palisade demo: build the image, boot it in QEMU (TCG) inside a network-namespace
# test bed, connect a wireguard-go client, show the handshake, a resolved and a
# blocked name, a page fetched through the exit, and a client config with a QR code.
#
#   sudo ./qemu/demo.sh [IMAGE]
#
# IMAGE (or $PALISADE_IMAGE): a raw disk image; without it the image is built first
# (out/palisade-qemu-x86_64.raw). Everything stays on this machine: namespaces with
# documentation addresses (203.0.113.0/24, 2001:db8:113::/64); they and every process
# the demo started are removed at the end, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
./tests/deps.sh
[ "$(id -u)" -eq 0 ] || { echo "demo.sh: needs root for network namespaces (sudo ./qemu/demo.sh)" >&2; exit 1; }

image=${1:-${PALISADE_IMAGE:-}}
if [ -z "$image" ]; then
    echo "== building the image (palisade-image build --board qemu-x86_64 --out out)"
    cargo run -q --locked -p palisade-image -- build --board qemu-x86_64 --out out
    image=out/palisade-qemu-x86_64.raw
fi
[ -f "$image" ] || { echo "demo.sh: no image at $image" >&2; exit 1; }

echo "== building the demo driver"
cargo build -q --locked -p palisade-tests --bins
target=${CARGO_TARGET_DIR:-target}
exec "$target/debug/pal-demo" "$image"
