#!/usr/bin/env bash
# Slot write throughput in the guest: palisaded's slot writer against busybox
# `dd bs=1M conv=fsync` of the same bytes to the same partition, in the same
# boot of the same QEMU guest (TCG, virtio-blk), alternating, ROUNDS each.
# palisaded writes a verified in-memory image (hashed as it was downloaded),
# head last, then fdatasync: "write" is that, like for like with dd; "write +
# read-back check" adds dropping the page cache and reading the slot back to
# compare it byte for byte.
#
#   sudo bench/update/run.sh [ROUNDS]     (default 5)
#
# The guest gets `palisade.bench_slot_write=ROUNDS` on slot A's entry (the
# hook in firmware/daemon/src/update.rs) and no network at all (no tap).
# Env: PALISADE_IMAGE (default out/palisade-qemu-x86_64.raw).
set -euo pipefail
cd "$(dirname "$0")/../.."
rounds=${1:-5}
img=${PALISADE_IMAGE:-out/palisade-qemu-x86_64.raw}
[ -f "$img" ] || { echo "bench/update: no image $img (build it: cargo run -p palisade-image -- build --board qemu-x86_64 --out out)" >&2; exit 1; }
dir=$(mktemp -d /tmp/palisade-bench-update.XXXXXX)
cleanup() {
    [ -f "$dir/qemu.pid" ] && kill "$(cat "$dir/qemu.pid")" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
cp --sparse=always "$img" "$dir/disk.raw"
# The ESP's byte offset (partition named esp), for mtools.
off=$(sfdisk -J "$dir/disk.raw" | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
p = next(p for p in t["partitions"] if p.get("name") == "esp")
print(p["start"] * t.get("sectorsize", 512))')
export MTOOLS_SKIP_CHECK=1
entry=$(mdir -b -i "$dir/disk.raw@@$off" ::/loader/entries | sed -n 's#.*/\(palisade-a[^/]*\.conf\)$#\1#p' | head -1)
[ -n "$entry" ] || { echo "bench/update: no slot A entry" >&2; exit 1; }
mtype -i "$dir/disk.raw@@$off" "::/loader/entries/$entry" \
    | sed "s/^options .*/& palisade.bench_slot_write=$rounds/" > "$dir/entry.conf"
mcopy -o -i "$dir/disk.raw@@$off" "$dir/entry.conf" "::/loader/entries/$entry"
qemu/boot.sh "$dir/disk.raw" --serial "$dir/console.log" --pidfile "$dir/qemu.pid" --no-reboot >/dev/null 2>&1 &
for _ in $(seq 1 900); do
    if grep -q "bench: slot write of" "$dir/console.log" 2>/dev/null; then
        grep "bench: slot write of" "$dir/console.log" | sed 's/^.*bench: /bench: /'
        exit 0
    fi
    if grep -q "bench: slot write: " "$dir/console.log" 2>/dev/null; then
        grep "bench: slot write: " "$dir/console.log" >&2
        exit 1
    fi
    sleep 1
done
echo "bench/update: no result within 900 s; console tail:" >&2
tail -20 "$dir/console.log" >&2
exit 1
