#!/usr/bin/env bash
# DNS benchmark: palisade-dns side by side with unbound and dnsmasq, on
# loopback only, in one run.
#
#   bench/dns/run.sh [--seconds N] [--rounds N] [--names N] [--threads N] [--base BIN] [--only "palisade unbound dnsmasq"]
#
# For each resolver: start it with the same 1M-name blocklist (unbound:
# local-zone always_nxdomain; dnsmasq: address=/name/; palisade: plain list),
# measure the list load time (process start -> first answer for a listed name),
# then with dnsperf (-l N each; interleaved rounds, median and min-max over
# the rounds): cache hits (1000 names, warmed first),
# blocked names (200k queries over the list), cache misses (unique names,
# forwarded to the local test authority palisade-dns-testauth on
# 127.0.0.1:5399), and resident memory (VmRSS after load, VmHWM at the end).
# palisade and unbound get the same number of threads (--threads, default 2:
# palisaded's runtime has 2 workers); dnsmasq is single-threaded. --base BIN
# adds another palisade-dns-serve binary (e.g. a build of main) as "base", for
# before/after figures in the same run.
# Every process is started and stopped by this script (by PID).
# Needs: dnsperf unbound dnsmasq-base python3 (tests/packages.txt).
set -euo pipefail

SECONDS_PER_RUN=10
ROUNDS=5
NAMES=1000000
THREADS=2
BASE=
ONLY="palisade unbound dnsmasq"
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) SECONDS_PER_RUN=$2; shift 2 ;;
        --rounds) ROUNDS=$2; shift 2 ;;
        --names) NAMES=$2; shift 2 ;;
        --only) ONLY=$2; shift 2 ;;
        --threads) THREADS=$2; shift 2 ;;
        --base) BASE=$2; shift 2 ;;
        *) echo "usage: $0 [--seconds N] [--rounds N] [--names N] [--threads N] [--base BIN] [--only LIST]" >&2; exit 2 ;;
    esac
done

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d /tmp/palisade-dnsbench.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && kill "$p" 2>/dev/null || true
    done
    for p in "${PIDS[@]:-}"; do
        [ -n "$p" ] && wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

for tool in dnsperf unbound dnsmasq python3; do
    command -v "$tool" >/dev/null || { echo "missing $tool (see tests/packages.txt)" >&2; exit 1; }
done

echo "== building palisade-dns and the test authority (release)"
(cd "$ROOT" && cargo build --release -q -p palisade-dns -p palisade-dns-testauth --bins)
SERVE=$TARGET/release/palisade-dns-serve
AUTH=$TARGET/release/palisade-dns-testauth

echo "== generating $NAMES names (deterministic)"
python3 "$ROOT/bench/dns/gen_blocklist.py" "$WORK" --names "$NAMES"
PROBE=$(sed -n 2p "$WORK/blocklist.txt")

AUTH_PORT=5399
"$AUTH" --listen 127.0.0.1:$AUTH_PORT 2>"$WORK/auth.log" &
PIDS+=($!)

# probe PORT NAME TIMEOUT_S [START_EPOCH]: wait for an answer; print the
# seconds since START_EPOCH (default: now), i.e. since the resolver was started.
probe() {
    python3 - "$1" "$2" "$3" "${4:-}" <<'EOF'
import socket, struct, sys, time
port, name, limit = int(sys.argv[1]), sys.argv[2], float(sys.argv[3])
start = float(sys.argv[4]) if sys.argv[4] else time.time()
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.05)
t0 = time.monotonic()
while time.monotonic() - t0 < limit:
    try:
        s.sendto(q, ("127.0.0.1", port))
        d, _ = s.recvfrom(4096)
        if d[:2] == b"\x42\x42":
            print("%.2f" % (time.time() - start))
            sys.exit(0)
    except OSError:
        time.sleep(0.01)
print("timeout")
sys.exit(1)
EOF
}

probe $AUTH_PORT h0.miss.test 10 >/dev/null || { echo "test authority did not start" >&2; cat "$WORK/auth.log" >&2; exit 1; }

rss_kb() { awk '/^VmRSS/ {print $2}' /proc/"$1"/status; }
hwm_kb() { awk '/^VmHWM/ {print $2}' /proc/"$1"/status; }

cpu_ticks() { awk '{print $14 + $15}' /proc/"$1"/stat; }
TCK=$(getconf CLK_TCK)
DNSPERF_ARGS=(-c 32 -q 500 -T "${DNSPERF_THREADS:-1}" -t 2)

# perf PORT FILE PID -> "qps cpu%" (cpu: the resolver's CPU use during the run,
# 100% = one core; a resolver far below its cores is not the bottleneck)
perf() {
    local out t0 t1
    t0=$(cpu_ticks "$3")
    out=$(dnsperf -s 127.0.0.1 -p "$1" -d "$2" -l "$SECONDS_PER_RUN" "${DNSPERF_ARGS[@]}" 2>&1) || true
    t1=$(cpu_ticks "$3")
    local qps cpu
    qps=$(echo "$out" | awk '/Queries per second:/ {printf "%d", $4}')
    cpu=$(( (t1 - t0) * 100 / (TCK * SECONDS_PER_RUN) ))
    echo "${qps:-0} ${cpu}"
}

[ -n "$BASE" ] && ONLY="$ONLY base"
declare -A LOAD RSS HWML PID PORT ALL

# start_one NAME PORT PID: wait for the first answer (load time), record memory,
# warm the cache with the hit set (twice, so every name is cached).
start_one() {
    local name=$1 port=$2 pid=$3
    local load
    load=$(probe "$port" "$PROBE" 180 "$T0") || { echo "$name did not answer" >&2; return 1; }
    LOAD[$name]=$load
    RSS[$name]=$(( $(rss_kb "$pid") / 1024 ))
    HWML[$name]=$(( $(hwm_kb "$pid") / 1024 ))
    PID[$name]=$pid
    PORT[$name]=$port
    dnsperf -s 127.0.0.1 -p "$port" -d "$WORK/q-hits.txt" -n 2 -c 4 -q 100 >/dev/null 2>&1 || true
}

for r in $ONLY; do
    echo "== starting $r"
    case $r in
        palisade|base)
            cat >"$WORK/palisade.toml" <<EOF
block_mode = "nxdomain"
cache_entries = 65536
rate_limit_qps = 0
[[upstream]]
address = "127.0.0.1:$AUTH_PORT"
protocol = "udp"
[list.bench]
path = "$WORK/blocklist.txt"
[tier.default]
lists = ["bench"]
EOF
            bin=$SERVE; port=5300
            [ "$r" = base ] && { bin=$BASE; port=5303; }
            T0=$(date +%s.%N)
            "$bin" --config "$WORK/palisade.toml" --listen 127.0.0.1:$port --threads "$THREADS" 2>"$WORK/$r.log" &
            pid=$!; PIDS+=($pid)
            start_one "$r" $port $pid
            grep -o "lists loaded in [0-9]* ms" "$WORK/$r.log" | sed "s/^/   $r: /" || true
            ;;
        unbound)
            cat >"$WORK/unbound.conf" <<EOF
server:
    interface: 127.0.0.1
    port: 5301
    do-daemonize: no
    username: ""
    chroot: ""
    directory: "$WORK"
    pidfile: ""
    use-syslog: no
    logfile: ""
    verbosity: 0
    num-threads: $THREADS
    so-reuseport: yes
    access-control: 127.0.0.0/8 allow
    do-not-query-localhost: no
    module-config: "iterator"
    qname-minimisation: no
    local-zone: "test." nodefault
    include: "$WORK/unbound-blocklist.conf"
forward-zone:
    name: "."
    forward-addr: 127.0.0.1@$AUTH_PORT
EOF
            T0=$(date +%s.%N)
            unbound -c "$WORK/unbound.conf" 2>"$WORK/unbound.log" &
            pid=$!; PIDS+=($pid)
            start_one unbound 5301 $pid
            ;;
        dnsmasq)
            T0=$(date +%s.%N)
            dnsmasq --keep-in-foreground --no-daemon --user=root --port=5302 --listen-address=127.0.0.1 \
                --bind-interfaces --no-resolv --no-hosts --server=127.0.0.1#$AUTH_PORT --cache-size=10000 \
                --dns-forward-max=1000 --log-facility=/dev/null --pid-file= \
                --conf-file="$WORK/dnsmasq-blocklist.conf" 2>"$WORK/dnsmasq.log" &
            pid=$!; PIDS+=($pid)
            start_one dnsmasq 5302 $pid
            ;;
    esac
done

# Interleaved rounds: each scenario runs against every resolver in turn, so
# background load on a shared machine hits all of them alike; each cell is
# the median (min-max) of its rounds.
for round in $(seq 1 "$ROUNDS"); do
    sed "s/^/r$round-/" "$WORK/q-misses.txt" >"$WORK/q-misses-$round.txt"
    for scen in hits blocked misses; do
        file=$WORK/q-$scen.txt
        [ "$scen" = misses ] && file=$WORK/q-misses-$round.txt
        for r in $ONLY; do
            [ -n "${PID[$r]:-}" ] || continue
            # shellcheck disable=SC2046
            set -- $(perf "${PORT[$r]}" "$file" "${PID[$r]}")
            echo "   round $round $scen $r: $1 QPS, cpu $2%"
            ALL[$r.$scen]="${ALL[$r.$scen]:-} $1:$2"
        done
    done
done

# med "q:c q:c ...": "median_qps (min-max) median_cpu"
med() {
    echo "$1" | tr ' ' '\n' | grep . | sort -t: -k1,1n | awk -F: '{q[NR]=$1; c[NR]=$2} END {m=int((NR+1)/2); printf "%d (%d-%d) %d", q[m], q[1], q[NR], c[m]}'
}

echo
echo "DNS benchmark: $NAMES blocked names, dnsperf -l $SECONDS_PER_RUN ${DNSPERF_ARGS[*]}, median (min-max) of $ROUNDS interleaved rounds, loopback, $(nproc) cores, $THREADS threads for palisade and unbound"
printf "%-10s %7s %7s %9s %8s %26s %26s %26s\n" resolver "load s" "RSS MB" "load peak" "peak MB" "hits QPS (cpu)" "blocked QPS (cpu)" "misses QPS (cpu)"
for r in $ONLY; do
    [ -n "${PID[$r]:-}" ] || { echo "$r: did not start"; continue; }
    hwm=$(( $(hwm_kb "${PID[$r]}") / 1024 ))
    cells=()
    for scen in hits blocked misses; do
        # shellcheck disable=SC2046
        set -- $(med "${ALL[$r.$scen]:-0:0}")
        cells+=("$(printf "%s %s (%s%%)" "$1" "$2" "$3")")
    done
    printf "%-10s %7s %7s %9s %8s %26s %26s %26s\n" "$r" "${LOAD[$r]}" "${RSS[$r]}" "${HWML[$r]}" "$hwm" "${cells[0]}" "${cells[1]}" "${cells[2]}"
done
echo "(load s: start to first answer for a listed name; RSS after load; load peak: VmHWM"
echo " after load; peak MB: VmHWM at the end, cache full; cpu: resolver CPU, 100% = 1 core, median round)"
