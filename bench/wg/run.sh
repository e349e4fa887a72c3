#!/usr/bin/env bash
# Reconcile benchmark. As root: bench/wg/run.sh [PEERS]
# - palisade diff-and-apply vs `wg syncconf` on the same interface, from
#   empty, no change and 1 % change, at PEERS peers (default 10000);
# - nft apply time with PEERS and with 100 peers;
# - peak RSS of palisaded holding PEERS peers, and its `palisade reload` time.
# Uses kernel WireGuard when the kernel has it (the node image), else
# wireguard-go (userspace backend). Everything runs in a private network
# namespace that is deleted on exit; no packet leaves it.
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-10000}
ID=$$
NS=palbench-$ID
IF=pwgb$ID
IF=${IF:0:15}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    ip netns pids "$NS" 2>/dev/null | xargs -r kill 2>/dev/null || true
    ip netns del "$NS" 2>/dev/null || true
    rm -f "/var/run/wireguard/$IF.sock"
    rm -rf "$WORK"
}
trap cleanup EXIT

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build -q --release -p palisade-core --example reconcile_bench
cargo build -q --release -p palisaded -p palisade-cli
BIN=$CARGO_TARGET_DIR/release

ip netns add "$NS"
ip -n "$NS" link set lo up
BACKEND=userspace
if ip -n "$NS" link add pwgprobe type wireguard 2>/dev/null; then
    ip -n "$NS" link del pwgprobe
    BACKEND=kernel
fi
echo "== WireGuard reconcile, $N peers ($BACKEND backend)"
ip netns exec "$NS" "$BIN/examples/reconcile_bench" --iface "$IF" --backend "$BACKEND" --peers "$N"
ip -n "$NS" link del "$IF" 2>/dev/null || true
pkill -f "wireguard-go $IF" 2>/dev/null || true
rm -f "/var/run/wireguard/$IF.sock"

echo "== palisaded with $N peers"
ip -n "$NS" link add eth0 type veth peer name eth0p
ip -n "$NS" addr add 203.0.113.10/24 dev eth0
ip -n "$NS" link set eth0 up
sed -e "s/^interface = \"wg0\"/interface = \"$IF\"/" -e "s/^backend = \"kernel\"/backend = \"$BACKEND\"/" \
    -e 's|^address_v4 = .*|address_v4 = "10.64.0.1/10"|' \
    -e '/^\[\[peer\]\]/,/^$/d' configs/node.toml > "$WORK/node.toml"
"$BIN/examples/reconcile_bench" --peers "$N" --emit-peers "$WORK/peers.toml"
ip netns exec "$NS" "$BIN/palisaded" --state-dir "$WORK" --run-dir "$WORK/run" --reconcile-secs 3600 2> "$WORK/log" &
PIDS+=($!)
DPID=$!
for _ in $(seq 1 600); do [ -S "$WORK/run/palisaded.sock" ] && break; sleep 0.1; done
[ -S "$WORK/run/palisaded.sock" ] || { cat "$WORK/log"; exit 1; }
CLI="ip netns exec $NS $BIN/palisade --socket $WORK/run/palisaded.sock"
$CLI status | grep peers
start=$(date +%s%N); $CLI reload >/dev/null; end=$(date +%s%N)
echo "palisade reload (parse + validate $N peers + no-change reconcile): $(( (end-start)/1000000 )) ms"
echo "palisaded peak RSS (VmHWM): $(awk '/VmHWM/{print $2, $3}' /proc/$DPID/status)"
echo "palisaded RSS now (VmRSS):  $(awk '/VmRSS/{print $2, $3}' /proc/$DPID/status)"
