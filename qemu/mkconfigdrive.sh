#!/usr/bin/env bash
# Make a config drive: a small FAT image holding palisade/node.toml (and, if given,
# palisade/peers.toml is NOT copied: peers live on the state partition). No mounts.
#
#   qemu/mkconfigdrive.sh NODE_TOML OUT.img [FLEET_ROOT_JSON]
#
# With FLEET_ROOT_JSON, the fleet's TUF root metadata goes along as
# palisade/fleet-root.json: the node trusts it for signed updates (docs/updates.md).
#
# Attach it with `qemu/boot.sh IMAGE --config-drive OUT.img`; on boot palisaded copies
# it to the state partition (a config drive wins over the state copy and the image seed).
set -euo pipefail
[ $# -eq 2 ] || [ $# -eq 3 ] || { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
src=$1 out=$2 root=${3:-}
[ -f "$src" ] || { echo "mkconfigdrive.sh: no file $src" >&2; exit 1; }
rm -f "$out"
truncate -s 4M "$out"
mkfs.vfat -n PALCFG "$out" >/dev/null
export MTOOLS_SKIP_CHECK=1
mmd -i "$out" ::/palisade
mcopy -i "$out" "$src" ::/palisade/node.toml
if [ -n "$root" ]; then
    [ -f "$root" ] || { echo "mkconfigdrive.sh: no file $root" >&2; exit 1; }
    mcopy -i "$out" "$root" ::/palisade/fleet-root.json
fi
