#!/usr/bin/env bash
# Install the Debian packages of tests/packages.txt and check that every command
# and file the suite needs exists. Idempotent and non-interactive (CI runs it as
# root, with no stdin).
#
#   tests/deps.sh           if a package is missing: install the WHOLE list in one
#                           apt transaction; then check every command and file
#   tests/deps.sh --check   only the check (no apt, no root)
#
# Why the whole list in one transaction, with --no-remove: installing packages
# one by one, or only the missing ones, lets apt remove an installed package to
# satisfy another. A newer qemu-utils (bookworm-backports, 1:10.0) Breaks the
# archive's qemu-system-common (7.2): apt removed qemu-utils to install
# qemu-system-x86, and qemu-img vanished. Asked for every package at once, apt
# must satisfy all of them together, and --no-remove makes it fail instead of
# removing anything. If no such solution exists, the listed packages installed
# at versions newer than the archive's are replaced by the archive's versions
# (explicit versions, --allow-downgrades), again in one transaction.
#
# PALISADE_DEPS_LIST names another list (tests/tests/deps.rs uses it).
set -euo pipefail
here=$(cd "${BASH_SOURCE[0]%/*}" && pwd)
list=${PALISADE_DEPS_LIST:-$here/packages.txt}
mode=install
case "${1:-}" in
    "") ;;
    --check) mode=check ;;
    *) echo "usage: tests/deps.sh [--check]" >&2; exit 2 ;;
esac

# packages.txt: "package  command-or-/path ..." per line; '#' starts a comment.
pkgs=()
declare -A provides=()
while read -r line || [ -n "$line" ]; do
    line=${line%%#*}
    read -r -a f <<<"$line"
    [ ${#f[@]} -gt 0 ] || continue
    pkgs+=("${f[0]}")
    provides[${f[0]}]="${f[*]:1}"
done <"$list"
[ ${#pkgs[@]} -gt 0 ] || { echo "deps: no packages in $list" >&2; exit 1; }

# An executable file named $1 in PATH or an sbin directory (the root tests see
# those). Not `command -v`: bash falls back to a non-executable file.
have_command() {
    local d dirs
    IFS=: read -r -a dirs <<<"$PATH:/usr/local/sbin:/usr/sbin:/sbin"
    for d in "${dirs[@]}"; do
        [ -n "$d" ] && [ -f "$d/$1" ] && [ -x "$d/$1" ] && return 0
    done
    return 1
}

# Every listed command and every listed file must exist; name each one that
# does not, and fail.
check() {
    local missing=() p t
    for p in "${pkgs[@]}"; do
        for t in ${provides[$p]}; do
            if [[ $t == /* ]]; then
                [ -e "$t" ] || missing+=("$t (package $p)")
            else
                have_command "$t" || missing+=("$t (package $p)")
            fi
        done
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "deps: missing after installing $list:" >&2
        printf '  %s\n' "${missing[@]}" >&2
        echo "deps: install them (sudo ./tests/deps.sh) or fix $list" >&2
        return 1
    fi
    echo "deps: ${#pkgs[@]} packages, every listed command and file present"
}

if [ "$mode" = check ]; then
    check
    exit
fi

# The installed version of $1, empty when it is not installed.
installed_version() {
    { dpkg-query -W -f='${Status}\t${Version}' "$1" 2>/dev/null || true; } |
        awk -F'\t' '$1 == "install ok installed" { print $2 }'
}

# The version apt would choose if $1 were not installed: the highest pin
# priority among the configured archives (not the dpkg status), the newest
# version on a tie ("apt-cache policy" lists versions newest first).
archive_version() {
    { apt-cache policy "$1" 2>/dev/null || true; } | awk '
        /^  Version table:/ { table = 1; next }
        !table { next }
        /^ (\*\*\*|   ) [^ ]/ { v = ($1 == "***") ? $2 : $1; next }
        /^        +-?[0-9]+ / {
            if ($2 == "/var/lib/dpkg/status") next
            if (best == "" || $1 + 0 > prio) { prio = $1 + 0; best = v }
        }
        END { print best }'
}

missing=()
for p in "${pkgs[@]}"; do
    [ -n "$(installed_version "$p")" ] || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
    SUDO=()
    [ "$(id -u)" -eq 0 ] || SUDO=(sudo)
    apt=("${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -q -y
        -o DPkg::Lock::Timeout=300
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    echo "deps: missing ${missing[*]}; installing all ${#pkgs[@]} listed packages in one transaction"
    "${apt[@]}" update </dev/null
    if ! "${apt[@]}" install --no-install-recommends --no-remove "${pkgs[@]}" </dev/null; then
        # No solution keeps every installed version. Pin each listed package
        # that is installed newer than the archive has it to the archive's
        # version, and try again, still all at once and removing nothing.
        want=()
        for p in "${pkgs[@]}"; do
            have=$(installed_version "$p")
            arch=$(archive_version "$p")
            if [ -n "$have" ] && [ -n "$arch" ] && dpkg --compare-versions "$have" gt "$arch"; then
                echo "deps: $p $have (installed) conflicts with the archive's packages; replacing it by the archive's $arch"
                want+=("$p=$arch")
            else
                want+=("$p")
            fi
        done
        "${apt[@]}" install --no-install-recommends --no-remove --allow-downgrades "${want[@]}" </dev/null
    fi
fi
command -v cargo >/dev/null || { echo "deps: cargo not found; install Rust (rustup) first" >&2; exit 1; }
check
