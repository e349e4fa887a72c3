#!/usr/bin/env bash
# The "internet" side of the QEMU test bed: a namespace with a bridge
# 203.0.113.1/24 and a tap for the guest uplink (the guest is 203.0.113.10).
#
#   qemu/testbed.sh up ID      creates netns pal-inet-ID, bridge pbr0 (203.0.113.1/24,
#                              2001:db8:113::1/64) and tap ptapID on it; prints
#                              "NETNS=pal-inet-ID TAP=ptapID"
#   qemu/testbed.sh down ID    deletes the namespace (and with it the bridge and tap)
#
# ID: a short unique token (e.g. the caller's pid). Needs root.
set -euo pipefail
cmd=${1:-}; id=${2:-}
[ -n "$cmd" ] && [ -n "$id" ] || { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
ns=pal-inet-$id
tap=ptap$id
[ ${#tap} -le 15 ] || { echo "testbed.sh: ID too long for an interface name" >&2; exit 2; }
case "$cmd" in
    up)
        ip netns add "$ns"
        trap 'ip netns del "$ns" 2>/dev/null || true' ERR
        ip -n "$ns" link set lo up
        ip -n "$ns" link add pbr0 type bridge
        ip -n "$ns" addr add 203.0.113.1/24 dev pbr0
        ip -n "$ns" addr add 2001:db8:113::1/64 dev pbr0 nodad
        ip -n "$ns" link set pbr0 up
        ip -n "$ns" tuntap add dev "$tap" mode tap
        ip -n "$ns" link set "$tap" master pbr0
        ip -n "$ns" link set "$tap" up
        echo "NETNS=$ns TAP=$tap"
        ;;
    down)
        ip netns del "$ns" 2>/dev/null || true
        ;;
    *) echo "testbed.sh: unknown command $cmd" >&2; exit 2 ;;
esac
