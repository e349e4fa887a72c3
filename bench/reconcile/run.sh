#!/usr/bin/env bash
# Kernel-backend reconcile in the guest: palisaded's whole peer path (parse,
# validate, observe, plan, apply) against `wg syncconf` with its file, on the
# guest kernel's WireGuard, in one boot of one QEMU guest (TCG, no network).
#
#   sudo bench/reconcile/run.sh [--sizes 10000,100000] [--rounds 5] [--cache DIR] [--image RAW]
#
# Builds the bench image variant (unless --image): the qemu-x86_64 board plus
# a pin of wireguard-tools, so the root has /usr/bin/wg (image/src/stages/
# rootfs.rs installs wg only for a board that pins it; production boards do
# not). Before the boot, slot A's entry on a copy of the image gets
# `palisade.bench_reconcile=SIZES palisade.bench_reconcile_rounds=R` (the
# hook in firmware/daemon/src/bench_reconcile.rs, run by palisaded on its own
# interface pbench0). For each size: from empty,
# no change, 1 % change; median (min-max) over the rounds, side by side.
# --cache: a directory of .debs to start from (copied; e.g. out/debs).
set -euo pipefail
cd "$(dirname "$0")/../.."
sizes=10000,100000
rounds=5
cache=
image=
while [ $# -gt 0 ]; do
    case "$1" in
        --sizes) sizes=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --cache) cache=$2; shift 2 ;;
        --image) image=$2; shift 2 ;;
        *) echo "usage: $0 [--sizes N,N] [--rounds R] [--cache DIR] [--image RAW]" >&2; exit 2 ;;
    esac
done
out=$PWD/out/bench-reconcile
dir=$(mktemp -d /tmp/palisade-bench-reconcile.XXXXXX)
cleanup() {
    [ -f "$dir/qemu.pid" ] && kill "$(cat "$dir/qemu.pid")" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

if [ -z "$image" ]; then
    wgv=$(apt-cache policy wireguard-tools | awk '/Candidate:/ {print $2}')
    [ -n "$wgv" ] && [ "$wgv" != "(none)" ] || { echo "bench/reconcile: no wireguard-tools candidate in apt" >&2; exit 1; }
    cp board/boards/qemu-x86_64.toml "$dir/board.toml"
    printf '\n# bench variant: wg for `wg syncconf` (bench/reconcile/run.sh)\n[[package]]\nname = "wireguard-tools"\nversion = "%s"\n' "$wgv" >>"$dir/board.toml"
    mkdir -p "$out/debs"
    [ -n "$cache" ] && cp -n "$cache"/*.deb "$out/debs/" 2>/dev/null || true
    echo "== building the bench image (wireguard-tools $wgv)"
    cargo run --locked -q -p palisade-image -- build --board-file "$dir/board.toml" --out "$out" --cache "$out/debs" --no-qcow2
    image=$out/palisade-qemu-x86_64.raw
fi
cp --sparse=always "$image" "$dir/disk.raw"
# The ESP's byte offset (partition named esp), for mtools.
off=$(sfdisk -J "$dir/disk.raw" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
p = next(p for p in t["partitions"] if p.get("name") == "esp")
print(p["start"] * t.get("sectorsize", 512))')
export MTOOLS_SKIP_CHECK=1
entry=$(mdir -b -i "$dir/disk.raw@@$off" ::/loader/entries | sed -n 's#.*/\(palisade-a[^/]*\.conf\)$#\1#p' | head -1)
[ -n "$entry" ] || { echo "bench/reconcile: no slot A entry" >&2; exit 1; }
mtype -i "$dir/disk.raw@@$off" "::/loader/entries/$entry" \
    | sed -e 's/ palisade\.bench_reconcile[^ ]*//g' \
        -e "s/^options .*/& palisade.bench_reconcile=$sizes palisade.bench_reconcile_rounds=$rounds/" >"$dir/entry.conf"
grep "^options" "$dir/entry.conf"
mcopy -o -i "$dir/disk.raw@@$off" "$dir/entry.conf" "::/loader/entries/$entry"
echo "== booting (2 GiB, TCG); results on the console"
qemu/boot.sh "$dir/disk.raw" --serial "$dir/console.log" --pidfile "$dir/qemu.pid" --no-reboot --mem 2048 >/dev/null 2>&1 &
for _ in $(seq 1 5400); do
    if grep -q "bench: reconcile done" "$dir/console.log" 2>/dev/null; then
        grep "bench: reconcile" "$dir/console.log" | sed 's/^.*bench: /bench: /'
        exit 0
    fi
    if grep -q "ERROR.*bench: reconcile" "$dir/console.log" 2>/dev/null; then
        grep "bench: reconcile" "$dir/console.log" | sed 's/^.*bench: /bench: /' >&2
        exit 1
    fi
    sleep 1
done
echo "bench/reconcile: no result within 90 min; console tail:" >&2
tail -20 "$dir/console.log" >&2
exit 1
