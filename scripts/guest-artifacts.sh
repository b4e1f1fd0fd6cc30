#!/usr/bin/env bash
# Builds the Linux guest artifacts that VMM and daemon tests boot: the Debian cloud kernel
# (bzImage) and a busybox initramfs. Its /init mounts proc, sys and dev, loads the virtio
# modules (virtio_pci, virtio_blk, virtio_net, virtio_rng, virtio_console) and the ACPI power
# button with their dependencies, all taken from the same linux-image package, brings network
# interfaces up, prints one line per disk and NIC; with `paddock.dhcp=1` on the kernel command
# line it asks each NIC's address of a DHCP server (busybox `udhcpc`, its default script
# /usr/share/udhcpc/default.script sets the leased address) and prints
#   paddock-initramfs: ip eth0 10.77.0.53       (or: paddock-initramfs: dhcp eth0 failed)
# then the ready line
#   paddock-initramfs: ready kernel=RELEASE cpus=N disks=vda,vdb net=eth0
# and then:
#   - with `paddock.poweroff=1` on the kernel command line, powers off at once (the old
#     behaviour: the VM exits with status 0 after the ready line);
#   - otherwise waits, and powers off when the ACPI power button is pressed (QEMU's
#     system_powerdown, paddock-vmm's power-button).
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

# A cache built by another version of this script is rebuilt (the debs stay).
script_sum=$(sha256sum "$root/scripts/guest-artifacts.sh" | cut -d' ' -f1)
if [ -f "$sums" ] && [ -f "$kernel" ] && [ -f "$initramfs" ]; then
    if (cd "$cache" && sha256sum --quiet --strict -c SHA256SUMS) &&
        grep -qx "script-sha256=$script_sum" "$cache/VERSIONS"; then
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

dpkg-deb --fsys-tarfile "$kdeb" | tar -x -C "$work" --wildcards './boot/vmlinuz-*' './lib/modules/*'
vmlinuz=$(find "$work/boot" -name 'vmlinuz-*' | head -n 1)
[ -n "$vmlinuz" ] || { echo "guest-artifacts: $kdeb has no /boot/vmlinuz-*" >&2; exit 1; }
cp "$vmlinuz" "$kernel.tmp"
release=${vmlinuz##*/vmlinuz-}

dpkg-deb --fsys-tarfile "$bdeb" | tar -x -C "$work" ./bin/busybox
[ -x "$work/bin/busybox" ] || { echo "guest-artifacts: $bdeb has no /bin/busybox" >&2; exit 1; }

# The package carries no modules.dep (the postinst runs depmod): make one with the static
# busybox's depmod (runs on any x86_64 host), then take each wanted module with its
# dependencies, dependencies first. Module files may be .ko, .ko.xz or .ko.zst; busybox insmod
# takes plain .ko, so compressed ones are decompressed here.
moddir=$work/lib/modules/$release
[ -d "$moddir" ] || { echo "guest-artifacts: $kdeb has no /lib/modules/$release" >&2; exit 1; }
"$work/bin/busybox" depmod -b "$work" "$release"
[ -s "$moddir/modules.dep" ] || { echo "guest-artifacts: depmod made no modules.dep" >&2; exit 1; }
wanted="virtio_pci virtio_blk virtio_net virtio_rng virtio_console button evdev"
mkdir -p "$work/mods"
order=()
seen=" "
# Module name of a modules.dep path: basename without .ko[.xz|.zst|.gz], '-' as '_'.
modname() { local b=${1##*/}; b=${b%%.ko*}; echo "${b//-/_}"; }
add_module() { # path relative to $moddir
    local rel=$1 name
    name=$(modname "$rel")
    case $seen in *" $name "*) return ;; esac
    seen="$seen$name "
    case $rel in
    *.ko) cp "$moddir/$rel" "$work/mods/$name.ko" ;;
    *.ko.xz) xz -dc "$moddir/$rel" >"$work/mods/$name.ko" ;;
    *.ko.zst) zstd -qdc "$moddir/$rel" >"$work/mods/$name.ko" ;;
    *.ko.gz) gzip -dc "$moddir/$rel" >"$work/mods/$name.ko" ;;
    *) echo "guest-artifacts: unknown module file $rel" >&2; exit 1 ;;
    esac
    order+=("$name")
}
for want in $wanted; do
    line=$(while IFS= read -r l; do
        [ "$(modname "${l%%:*}")" = "$want" ] && { echo "$l"; break; }
    done <"$moddir/modules.dep")
    [ -n "$line" ] || { echo "guest-artifacts: no module $want in $release" >&2; exit 1; }
    # modules.dep lists the whole closure, the first needing the later ones: load reversed.
    read -r -a deps <<<"${line#*:}"
    for ((i = ${#deps[@]} - 1; i >= 0; i--)); do add_module "${deps[i]}"; done
    add_module "${line%%:*}"
done
printf '%s\n' "${order[@]}" >"$work/modules"

cat >"$work/init" <<EOF
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
while read -r m; do
    insmod /lib/modules/\$m.ko || echo "paddock-initramfs: insmod \$m failed"
done </etc/modules
disks=
for d in /sys/block/*; do
    n=\${d##*/}
    case \$n in loop* | ram* | "*") continue ;; esac
    echo "paddock-initramfs: disk \$n serial=\$(cat \$d/serial 2>/dev/null) ro=\$(cat \$d/ro) sectors=\$(cat \$d/size)"
    disks=\${disks:+\$disks,}\$n
done
net=
for d in /sys/class/net/*; do
    n=\${d##*/}
    case \$n in lo | "*") continue ;; esac
    ip link set "\$n" up
    echo "paddock-initramfs: nic \$n mac=\$(cat \$d/address)"
    net=\${net:+\$net,}\$n
done
case " \$(cat /proc/cmdline) " in
*" paddock.dhcp=1 "*)
    for n in \$(echo "\$net" | tr , ' '); do
        rm -f /run/udhcpc.\$n
        if udhcpc -i "\$n" -n -q -t 5 -T 2 -s /usr/share/udhcpc/default.script &&
            [ -s /run/udhcpc.\$n ]; then
            echo "paddock-initramfs: ip \$n \$(cat /run/udhcpc.\$n)"
        else
            echo "paddock-initramfs: dhcp \$n failed"
        fi
    done
    ;;
esac
ready="$ready_line kernel=\$(uname -r) cpus=\$(nproc) disks=\$disks net=\$net"
case " \$(cat /proc/cmdline) " in
*" paddock.poweroff=1 "*)
    echo "\$ready"
    poweroff -f
    echo "paddock-initramfs: poweroff failed"
    ;;
esac
# The ACPI power button (input device "Power Button"): one key event powers off. The ready
# line comes once a process holds each device open, so no press after it is lost.
for e in /sys/class/input/event*; do
    [ "\$(cat \$e/device/name 2>/dev/null)" = "Power Button" ] || continue
    ev=/dev/input/\${e##*/}
    (dd if=\$ev of=/dev/null bs=24 count=1 2>/dev/null && echo "paddock-initramfs: power button" && poweroff -f) &
    i=0
    until ls -l /proc/[0-9]*/fd 2>/dev/null | grep -q "\$ev"; do
        i=\$((i + 1))
        [ \$i -lt 500 ] || { echo "paddock-initramfs: watcher did not open \$ev"; break; }
        usleep 10000
    done
done
echo "\$ready"
while :; do sleep 3600; done
EOF

# udhcpc's script: sets the leased address (and a default route) and records the address in
# /run/udhcpc.IFACE for /init to print.
cat >"$work/udhcpc.script" <<'EOF'
#!/bin/sh
case $1 in
deconfig)
    ip -4 addr flush dev "$interface"
    ip link set "$interface" up
    ;;
bound | renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    [ -z "$router" ] || ip route replace default via "${router%% *}" dev "$interface"
    echo "$ip" >"/run/udhcpc.$interface"
    ;;
esac
exit 0
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
    for d in bin dev etc lib lib/modules proc run sys sbin usr usr/share usr/share/udhcpc; do
        cpio_entry "$d" $((0040755))
    done
    cpio_entry bin/busybox $((0100755)) "$work/bin/busybox"
    cpio_entry bin/sh $((0120777)) -link busybox
    cpio_entry etc/modules $((0100644)) "$work/modules"
    for m in "${order[@]}"; do cpio_entry "lib/modules/$m.ko" $((0100644)) "$work/mods/$m.ko"; done
    cpio_entry init $((0100755)) "$work/init"
    cpio_entry usr/share/udhcpc/default.script $((0100755)) "$work/udhcpc.script"
    ino=-1
    cpio_entry TRAILER!!! 0
} | gzip -9 -n >"$initramfs.tmp"

mv "$kernel.tmp" "$kernel"
mv "$initramfs.tmp" "$initramfs"
cat >"$cache/VERSIONS" <<EOF
kernel-package=$(basename "$kdeb")
kernel-release=$release
busybox-package=$(basename "$bdeb")
modules=$(echo "${order[@]}")
script-sha256=$script_sum
EOF
(cd "$cache" && sha256sum vmlinuz initramfs.cpio.gz VERSIONS debs/*.deb >SHA256SUMS.tmp &&
    mv SHA256SUMS.tmp SHA256SUMS)
echo "guest-artifacts: built from $(basename "$kdeb") and $(basename "$bdeb")" >&2
print_paths
