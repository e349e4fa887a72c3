#!/usr/bin/env bash
# Boot a Palisade disk image under QEMU (UEFI: OVMF + systemd-boot, TCG, virtio).
#
#   qemu/boot.sh IMAGE [options]
#     --netns NS          run QEMU inside network namespace NS (the tap lives there)
#     --tap TAP           guest uplink on tap TAP (must exist, see qemu/testbed.sh);
#                         without --tap the guest has no network at all
#     --mac MAC           uplink MAC (default 52:54:00:50:41:01)
#     --serial LOG        serial console to LOG (default: stdio)
#     --serial-pty        with --serial: the console is also a pty (its path is
#                         printed on stderr: "char device redirected to /dev/pts/N
#                         (label ser0)"), which a host tool opens like a USB serial
#                         adapter (palisade-fleet enrol --serial); LOG records output
#     --pidfile FILE      QEMU writes its pid here (kill it by that pid)
#     --monitor SOCK      QEMU monitor on a Unix socket (e.g. `sendkey ctrl-alt-delete`)
#     --config-drive IMG  attach IMG read-only as a config drive (qemu/mkconfigdrive.sh)
#     --vars FILE         OVMF variable store to use (default: a fresh copy next to the
#                         pidfile or in $TMPDIR; boot counting itself lives on the ESP)
#     --mem MB            guest memory (default 512)
#     --smp N             guest CPUs (default 2)
#     --snapshot          do not write to IMAGE (writes go to a temporary overlay)
#     --no-reboot         exit QEMU when the guest reboots (clean shutdown for tests:
#                         monitor `sendkey ctrl-alt-delete` makes palisaded stop and reboot)
#     --hw KIND           virtio (default): virtio disk, NIC and RNG (the qemu-x86_64 board);
#                         appliance: the x86-appliance board's hardware: the disk (and
#                         the config drive, a second disk) on AHCI, the uplink on an
#                         e1000e NIC, an i6300esb watchdog (q35's ICH9 TCO is there too;
#                         the board loads i6300esb first, so it is /dev/watchdog), no
#                         virtio device at all
#     --led FILE          the status LED: virtio-serial port `palisade.led` written to
#                         FILE (lines `state <name>`, `led on`, `led off`; docs/board.md)
#     --test-port SOCK    virtio-serial port `palisade.test` on a Unix socket (server,
#                         no wait): test hooks, read by PID 1 only with
#                         palisade.test_hooks=1 (docs/testing.md)
#     --qmp SOCK          QMP on a Unix socket (e.g. input-send-event: the reset button)
#
# The script execs QEMU, so its pid is QEMU's pid. No user networking is used.
set -euo pipefail

usage() { sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
[ $# -ge 1 ] || usage
image=$1; shift
netns= tap= mac=52:54:00:50:41:01 serial= pidfile= monitor= cfgdrive= vars= mem=512 smp=2 snapshot= noreboot= serialpty= hw=virtio led= testport= qmp=
while [ $# -gt 0 ]; do
    case "$1" in
        --netns) netns=$2; shift 2 ;;
        --tap) tap=$2; shift 2 ;;
        --mac) mac=$2; shift 2 ;;
        --serial) serial=$2; shift 2 ;;
        --serial-pty) serialpty=1; shift ;;
        --pidfile) pidfile=$2; shift 2 ;;
        --monitor) monitor=$2; shift 2 ;;
        --config-drive) cfgdrive=$2; shift 2 ;;
        --vars) vars=$2; shift 2 ;;
        --mem) mem=$2; shift 2 ;;
        --smp) smp=$2; shift 2 ;;
        --snapshot) snapshot=1; shift ;;
        --no-reboot) noreboot=1; shift ;;
        --hw) hw=$2; shift 2 ;;
        --led) led=$2; shift 2 ;;
        --test-port) testport=$2; shift 2 ;;
        --qmp) qmp=$2; shift 2 ;;
        -h|--help) usage ;;
        *) echo "boot.sh: unknown option $1" >&2; usage ;;
    esac
done
[ -f "$image" ] || { echo "boot.sh: no image $image" >&2; exit 1; }
case "$hw" in virtio|appliance) ;; *) echo "boot.sh: --hw $hw: expected virtio or appliance" >&2; exit 2 ;; esac

ovmf_dir=/usr/share/OVMF
code=$ovmf_dir/OVMF_CODE_4M.fd
[ -f "$code" ] || { echo "boot.sh: $code missing (apt-get install ovmf)" >&2; exit 1; }
if [ -z "$vars" ]; then
    base=${pidfile:+$(dirname "$pidfile")}
    base=${base:-${TMPDIR:-/tmp}}
    vars=$(mktemp -p "$base" palisade-ovmf-vars.XXXXXX)
    cp "$ovmf_dir/OVMF_VARS_4M.fd" "$vars"
fi

fmt=raw
case "$image" in *.qcow2) fmt=qcow2 ;; esac

args=(
    -name palisade
    -machine q35,accel=tcg
    -cpu max
    -m "$mem" -smp "$smp"
    -drive "if=pflash,format=raw,unit=0,readonly=on,file=$code"
    -drive "if=pflash,format=raw,unit=1,file=$vars"
    -display none
    -vga none
)
if [ "$hw" = appliance ]; then
    args+=(
        -drive "if=none,id=disk0,format=$fmt,file=$image,cache=unsafe${snapshot:+,snapshot=on}"
        -device ahci,id=ahci
        -device ide-hd,drive=disk0,bus=ahci.0,bootindex=1
        -device i6300esb
    )
    nic=e1000e
else
    args+=(
        -drive "if=virtio,format=$fmt,file=$image,cache=unsafe${snapshot:+,snapshot=on}"
        -device virtio-rng-pci
    )
    nic=virtio-net-pci
fi
if [ -n "$tap" ]; then
    args+=(-netdev "tap,id=up0,ifname=$tap,script=no,downscript=no" -device "$nic,netdev=up0,mac=$mac")
else
    args+=(-nic none)
fi
if [ -n "$serial" ] && [ -n "$serialpty" ]; then
    args+=(-chardev "pty,id=ser0,logfile=$serial" -serial chardev:ser0)
elif [ -n "$serial" ]; then
    args+=(-serial "file:$serial")
else
    args+=(-serial stdio)
fi
[ -n "$pidfile" ] && args+=(-pidfile "$pidfile")
[ -n "$monitor" ] && args+=(-monitor "unix:$monitor,server,nowait")
if [ -n "$cfgdrive" ] && [ "$hw" = appliance ]; then
    # A second SATA disk. ide-hd cannot be read-only: snapshot=on keeps the file unchanged.
    args+=(-drive "if=none,id=cfg0,format=raw,snapshot=on,file=$cfgdrive" -device ide-hd,drive=cfg0,bus=ahci.1)
elif [ -n "$cfgdrive" ]; then
    args+=(-drive "if=virtio,format=raw,readonly=on,file=$cfgdrive")
fi
[ -n "$noreboot" ] && args+=(-no-reboot)
if [ -n "$led" ] || [ -n "$testport" ]; then
    args+=(-device virtio-serial-pci,id=vser0)
fi
if [ -n "$led" ]; then
    args+=(-chardev "file,id=led0,path=$led" -device "virtserialport,bus=vser0.0,chardev=led0,name=palisade.led")
fi
if [ -n "$testport" ]; then
    args+=(-chardev "socket,id=test0,path=$testport,server=on,wait=off" -device "virtserialport,bus=vser0.0,chardev=test0,name=palisade.test")
fi
[ -n "$qmp" ] && args+=(-qmp "unix:$qmp,server=on,wait=off")

if [ -n "$netns" ]; then
    exec ip netns exec "$netns" qemu-system-x86_64 "${args[@]}"
fi
exec qemu-system-x86_64 "${args[@]}"
