#!/usr/bin/env bash
# Image size and boot-to-ready time: Palisade vs a stock Debian image doing the same
# job, side by side in one run, same kernel, same QEMU flags (qemu/boot.sh: OVMF +
# systemd-boot, TCG, virtio, uplink on a tap in a private namespace).
#
#   sudo bench/image/run.sh [RUNS]        (default 2 boots of each image)
#
# Stock Debian: mmdebstrap --variant=minbase bookworm + systemd + systemd-boot's ESP
# + linux-image-6.1.0-56-cloud-amd64 (the Palisade board's kernel) + initramfs-tools +
# wireguard-tools + nftables + unbound; systemd-networkd puts 203.0.113.10/24 on the
# uplink, wg-quick@wg0 brings WireGuard up, nftables.service loads a ruleset, unbound
# runs. "Ready" = a oneshot unit ordered after all of them prints BENCH-READY on the
# console; for Palisade, palisaded's health gate prints "palisade-init: ready:"
# (WireGuard up, firewall loaded and verified). Time = QEMU process start -> marker
# on the serial console, wall clock.
#
# Env: PALISADE_IMAGE (skip building Palisade), BENCH_DIR (work dir, default
# target/bench-image), KEEP=1 (keep the Debian image for reuse).
set -euo pipefail
cd "$(dirname "$0")/../.."
ws=$PWD
runs=${1:-2}
[ "$(id -u)" -eq 0 ] || { echo "bench/image: needs root (mmdebstrap, namespaces)" >&2; exit 1; }
dir=${BENCH_DIR:-$ws/target/bench-image}
mkdir -p "$dir"
id=bi$$
cleanup() {
    [ -f "$dir/qemu.pid" ] && kill "$(cat "$dir/qemu.pid")" 2>/dev/null || true
    "$ws/qemu/testbed.sh" down "$id" >/dev/null 2>&1 || true
}
trap cleanup EXIT

kernel_pkg=$(sed -n 's/^package = "\(linux-image-.*\)"/\1/p' board/boards/qemu-x86_64.toml)
kernel_ver=$(awk '/^\[kernel\]/{k=1} k && /^version/{gsub(/"/,"",$3); print $3; exit}' board/boards/qemu-x86_64.toml)
kernel_rel=${kernel_pkg#linux-image-}
sdboot_ver=$(awk '/name = "systemd-boot-efi"/{getline; gsub(/"/,"",$3); print $3}' board/boards/qemu-x86_64.toml)

# --- Palisade image
if [ -n "${PALISADE_IMAGE:-}" ]; then
    pal=$(readlink -f "$PALISADE_IMAGE")
else
    echo "== building the Palisade image"
    cargo run -q --locked -p palisade-image -- build --out "$dir/palisade" --no-qcow2
    pal=$(readlink -f "$dir/palisade/palisade-qemu-x86_64.raw")
fi

# --- stock Debian image
deb=$dir/debian.raw
if [ ! -f "$deb" ] || [ -z "${KEEP:-}" ]; then
    echo "== building the stock Debian image (mmdebstrap minbase + systemd + wireguard-tools + nftables + unbound)"
    root=$dir/debian-root
    rm -rf "$root" "$dir/debian-esp"
    mmdebstrap --variant=minbase --mode=root \
        --include="systemd,systemd-sysv,udev,initramfs-tools,$kernel_pkg=$kernel_ver,wireguard-tools,nftables,unbound,iproute2" \
        --customize-hook='chroot "$1" systemctl enable systemd-networkd nftables unbound' \
        bookworm "$root" \
        "deb http://deb.debian.org/debian bookworm main" \
        "deb http://deb.debian.org/debian bookworm-updates main" \
        "deb http://deb.debian.org/debian-security bookworm-security main" \
        > "$dir/mmdebstrap.log" 2>&1 || { tail -30 "$dir/mmdebstrap.log" >&2; exit 1; }
    # Same job as the Palisade node: uplink address, WireGuard wg0, a firewall, a resolver.
    cat > "$root/etc/systemd/network/10-uplink.network" <<'NET'
[Match]
Name=eth0
[Network]
Address=203.0.113.10/24
Gateway=203.0.113.1
NET
    key=$(wg genkey)
    mkdir -p "$root/etc/wireguard"
    printf '[Interface]\nAddress = 10.66.0.1/16, fd66::1/64\nListenPort = 51820\nPrivateKey = %s\n' "$key" > "$root/etc/wireguard/wg0.conf"
    chmod 600 "$root/etc/wireguard/wg0.conf"
    chroot "$root" systemctl enable wg-quick@wg0 >/dev/null 2>&1
    cat > "$root/etc/nftables.conf" <<'NFT'
#!/usr/sbin/nft -f
flush ruleset
table inet filter {
    chain input { type filter hook input priority 0; policy drop;
        ct state established,related accept; iif lo accept; udp dport 51820 accept;
        iifname "wg0" udp dport 53 accept; iifname "wg0" tcp dport 53 accept; }
    chain forward { type filter hook forward priority 0; policy drop;
        iifname "wg0" oifname "eth0" accept; ct state established,related accept; }
}
table inet nat {
    chain post { type nat hook postrouting priority 100; oifname "eth0" masquerade; }
}
NFT
    # No network at build or boot time to fetch the DNSSEC root anchor: run without it.
    rm -f "$root/etc/unbound/unbound.conf.d/root-auto-trust-anchor-file.conf"
    printf 'server:\n  interface: 10.66.0.1\n  ip-freebind: yes\n  access-control: 10.66.0.0/16 allow\n' > "$root/etc/unbound/unbound.conf.d/bench.conf"
    cat > "$root/etc/systemd/system/bench-ready.service" <<'UNIT'
[Unit]
Description=bench: everything up
Wants=wg-quick@wg0.service nftables.service unbound.service
After=wg-quick@wg0.service nftables.service unbound.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'echo BENCH-READY > /dev/ttyS0'
[Install]
WantedBy=multi-user.target
UNIT
    chroot "$root" systemctl enable bench-ready.service >/dev/null 2>&1
    echo "root:bench" | chroot "$root" chpasswd 2>/dev/null || true
    rm -rf "$root/var/cache/apt/archives/"*.deb "$root/var/lib/apt/lists/"*
    # ESP: the same systemd-boot, one BLS entry, the same kernel.
    esp=$dir/debian-esp
    mkdir -p "$esp/EFI/BOOT" "$esp/EFI/systemd" "$esp/loader/entries" "$esp/debian"
    (cd "$dir" && apt-get download -q -o APT::Sandbox::User=root "systemd-boot-efi=$sdboot_ver" >/dev/null && dpkg-deb -x systemd-boot-efi_*.deb sdboot)
    cp "$dir/sdboot/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$esp/EFI/BOOT/BOOTX64.EFI"
    cp "$dir/sdboot/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$esp/EFI/systemd/"
    cp "$root/boot/vmlinuz-$kernel_rel" "$esp/debian/vmlinuz"
    cp "$root/boot/initrd.img-$kernel_rel" "$esp/debian/initrd.img"
    printf 'timeout 0\ndefault debian*\nconsole-mode keep\n' > "$esp/loader/loader.conf"
    printf 'title Debian\nlinux /debian/vmlinuz\ninitrd /debian/initrd.img\noptions root=PARTLABEL=debian-root rw console=ttyS0,115200 net.ifnames=0 quiet loglevel=4 panic=10\n' > "$esp/loader/entries/debian.conf"
    esp_mib=48
    root_mib=$(( $(du -sm "$root" | cut -f1) * 115 / 100 + 64 ))
    truncate -s 0 "$dir/esp.img"; truncate -s ${esp_mib}M "$dir/esp.img"
    mkfs.vfat -n ESP "$dir/esp.img" >/dev/null
    export MTOOLS_SKIP_CHECK=1
    (cd "$esp" && for d in $(find . -mindepth 1 -type d | sort); do mmd -i "$dir/esp.img" "::/${d#./}"; done
     for f in $(find . -type f | sort); do mcopy -i "$dir/esp.img" "$f" "::/${f#./}"; done)
    truncate -s 0 "$dir/root.img"; truncate -s ${root_mib}M "$dir/root.img"
    mkfs.ext4 -q -F -L debian-root -d "$root" "$dir/root.img"
    total=$(( esp_mib + root_mib + 2 ))
    rm -f "$deb"; truncate -s ${total}M "$deb"
    printf 'label: gpt\nstart=2048, size=%d, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name="esp"\nsize=%d, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name="debian-root"\n' \
        $((esp_mib * 2048)) $((root_mib * 2048)) | sfdisk --quiet --no-reread --no-tell-kernel "$deb"
    dd if="$dir/esp.img" of="$deb" bs=1M seek=1 conv=notrunc,sparse status=none
    dd if="$dir/root.img" of="$deb" bs=1M seek=$((1 + esp_mib)) conv=notrunc,sparse status=none
    rm -f "$dir/esp.img" "$dir/root.img"
fi

# --- sizes
size() { stat -c %s "$1"; }
zst() { zstd -q -10 -T2 -c "$1" | wc -c; }
xzs() { xz -6 -T2 -c "$1" | wc -c; }
echo "== sizes (bytes)"
pal_raw=$(size "$pal"); deb_raw=$(size "$deb")
pal_zst=$(zst "$pal"); deb_zst=$(zst "$deb")
pal_xz=$(xzs "$pal"); deb_xz=$(xzs "$deb")
pal_used=$(du -B1 "$pal" | cut -f1); deb_used=$(du -B1 "$deb" | cut -f1)
printf '%-22s %14s %14s %8s\n' metric palisade debian ratio
for m in raw:$pal_raw:$deb_raw allocated:$pal_used:$deb_used zstd-10:$pal_zst:$deb_zst xz-6:$pal_xz:$deb_xz; do
    IFS=: read -r n a b <<<"$m"
    printf '%-22s %14d %14d %8s\n' "$n" "$a" "$b" "$(awk -v a="$a" -v b="$b" 'BEGIN{printf "%.3f", a/b}')"
done

# --- boot to ready
"$ws/qemu/testbed.sh" up "$id" >/dev/null
boot_time() { # IMAGE MARKER -> seconds
    local img=$1 marker=$2 copy=$dir/boot-copy.raw serial=$dir/serial.log
    cp --sparse=always "$img" "$copy"; rm -f "$serial" "$dir/qemu.pid"
    local t0; t0=$(date +%s.%N)
    "$ws/qemu/boot.sh" "$copy" --netns "pal-inet-$id" --tap "ptap$id" --serial "$serial" --pidfile "$dir/qemu.pid" >/dev/null 2>&1 &
    local qpid=$! t
    while :; do
        if grep -q "$marker" "$serial" 2>/dev/null; then t=$(date +%s.%N); break; fi
        if (( $(date +%s) - ${t0%.*} > 600 )); then t=; break; fi
        sleep 0.1
    done
    kill "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null || true
    rm -f "$copy" "$dir/qemu.pid"
    [ -n "$t" ] && awk -v a="$t0" -v b="$t" 'BEGIN{printf "%.1f", b-a}' || echo "timeout"
}
echo "== boot: QEMU start -> ready (TCG, same flags; $runs run(s) each, alternating)"
printf '%-6s %12s %12s\n' run palisade debian
for r in $(seq 1 "$runs"); do
    p=$(boot_time "$pal" "palisade-init: ready:")
    d=$(boot_time "$deb" "BENCH-READY")
    printf '%-6s %11ss %11ss\n' "$r" "$p" "$d"
done
