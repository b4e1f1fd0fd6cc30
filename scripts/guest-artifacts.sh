#!/usr/bin/env bash
# Builds the Linux guest artifacts that VMM and daemon tests boot: the Debian cloud kernel
# (bzImage) and a busybox initramfs whose /init mounts proc, sys and dev, prints a ready line
# and powers off.
#
# Idempotent and cached under .cache/guest/ (or $PADDOCK_GUEST_CACHE): the first run downloads
# the packages with `apt-get download`; every run checks the cache against the SHA-256 sums
# recorded in SHA256SUMS, so once cached it works offline. Prints the paths as
#   kernel=PATH
#   initramfs=PATH
# Set PADDOCK_KERNEL_PACKAGE to a real linux-image-*-cloud-amd64 package (optionally
# NAME=VERSION) to pin one instead of following linux-image-cloud-amd64.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cache=${PADDOCK_GUEST_CACHE:-$root/.cache/guest}
ready_line="paddock-initramfs: ready"
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# One builder at a time (tests in several processes may call this together).
exec 9>"$cache/.lock"
flock 9

kernel=$cache/vmlinuz
initramfs=$cache/initramfs.cpio.gz
sums=$cache/SHA256SUMS

print_paths() {
    echo "kernel=$kernel"
    echo "initramfs=$initramfs"
}

if [ -f "$sums" ] && [ -f "$kernel" ] && [ -f "$initramfs" ]; then
    if (cd "$cache" && sha256sum --quiet --strict -c SHA256SUMS); then
        print_paths
        exit 0
    fi
    echo "guest-artifacts: cache does not match SHA256SUMS; rebuilding" >&2
fi
rm -f "$sums" "$kernel" "$initramfs"

debs=$cache/debs
mkdir -p "$debs"
apt_opts=(-q)
# As root, apt's download sandbox user cannot write into the cache; download as root.
[ "$(id -u)" -ne 0 ] || apt_opts+=(-o APT::Sandbox::User=root)

# Downloads package $1 (NAME or NAME=VERSION) into $debs unless a .deb of it is there; prints
# the .deb's path.
fetch_deb() {
    local spec=$1 name=${1%%=*} found
    found=$(find "$debs" -maxdepth 1 -name "${name}_*_*.deb" | sort | tail -n 1)
    if [ -z "$found" ]; then
        if ! (cd "$debs" && apt-get download "${apt_opts[@]}" "$spec" >&2); then
            # A fresh machine may have no package lists yet: refresh them once, as root.
            [ "$(id -u)" -eq 0 ] && [ -z "${lists_refreshed:-}" ] && apt-get update -qq >&2 || true
            lists_refreshed=1
            (cd "$debs" && apt-get download "${apt_opts[@]}" "$spec" >&2) || {
                echo "guest-artifacts: apt-get download $spec failed" >&2
                exit 1
            }
        fi
        found=$(find "$debs" -maxdepth 1 -name "${name}_*_*.deb" | sort | tail -n 1)
    fi
    [ -n "$found" ] || { echo "guest-artifacts: no .deb for $spec" >&2; exit 1; }
    echo "$found"
}

# The kernel: the metapackage names the real package in its Depends.
real=${PADDOCK_KERNEL_PACKAGE:-}
if [ -z "$real" ]; then
    meta=$(fetch_deb linux-image-cloud-amd64)
    real=$(dpkg-deb -f "$meta" Depends | tr ',' '\n' |
        sed -n 's/^ *\(linux-image-[0-9][^ ]*-cloud-amd64\)\( *(= *\([^)]*\))\)\?.*/\1=\3/p' |
        head -n 1)
    real=${real%=}
    [ -n "$real" ] || { echo "guest-artifacts: $meta names no linux-image-*-cloud-amd64" >&2; exit 1; }
fi
kdeb=$(fetch_deb "$real")
bdeb=$(fetch_deb busybox-static)

work=$(mktemp -d "$cache/.work.XXXXXX")
trap 'rm -rf "$work"' EXIT

# vmlinuz only: modules stay in the package until the initramfs needs them.
dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$work" --wildcards './boot/vmlinuz-*'
vmlinuz=$(find "$work/boot" -name 'vmlinuz-*' | head -n 1)
[ -n "$vmlinuz" ] || { echo "guest-artifacts: $kdeb has no /boot/vmlinuz-*" >&2; exit 1; }
cp "$vmlinuz" "$kernel.tmp"
release=${vmlinuz##*/vmlinuz-}

dpkg-deb --fsys-tarfile "$bdeb" | tar -x -C "$work" ./bin/busybox
[ -x "$work/bin/busybox" ] || { echo "guest-artifacts: $bdeb has no /bin/busybox" >&2; exit 1; }

cat >"$work/init" <<EOF
#!/bin/sh
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
echo "$ready_line kernel=\$(/bin/busybox uname -r) cpus=\$(/bin/busybox nproc)"
/bin/busybox poweroff -f
echo "paddock-initramfs: poweroff failed"
EOF

# A cpio "newc" archive written entry by entry: deterministic (inode numbers, owner root,
# mtime 0) and needs neither root nor a cpio tool.
ino=0
cpio_entry() { # name mode [file-with-data | -link target]
    local name=$1 mode=$2 size=0 namesize
    ino=$((ino + 1))
    if [ $# -ge 3 ]; then
        if [ "$3" = -link ]; then size=${#4}; else size=$(stat -c %s "$3"); fi
    fi
    namesize=$((${#name} + 1))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$ino" "$mode" 0 0 1 0 "$size" 0 0 0 0 "$namesize" 0
    printf '%s\0' "$name"
    head -c $(((4 - (110 + namesize) % 4) % 4)) /dev/zero
    if [ $# -ge 3 ]; then
        if [ "$3" = -link ]; then printf '%s' "$4"; else cat "$3"; fi
        head -c $(((4 - size % 4) % 4)) /dev/zero
    fi
}
{
    for d in bin dev proc sys sbin; do cpio_entry "$d" $((0040755)); done
    cpio_entry bin/busybox $((0100755)) "$work/bin/busybox"
    cpio_entry bin/sh $((0120777)) -link busybox
    cpio_entry init $((0100755)) "$work/init"
    ino=-1
    cpio_entry TRAILER!!! 0
} | gzip -9 -n >"$initramfs.tmp"

mv "$kernel.tmp" "$kernel"
mv "$initramfs.tmp" "$initramfs"
cat >"$cache/VERSIONS" <<EOF
kernel-package=$(basename "$kdeb")
kernel-release=$release
busybox-package=$(basename "$bdeb")
EOF
(cd "$cache" && sha256sum vmlinuz initramfs.cpio.gz VERSIONS debs/*.deb >SHA256SUMS.tmp &&
    mv SHA256SUMS.tmp SHA256SUMS)
echo "guest-artifacts: built from $(basename "$kdeb") and $(basename "$bdeb")" >&2
print_paths
