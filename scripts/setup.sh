#!/usr/bin/env bash
# Installs what Paddock's build and tests need on a Debian (bookworm) machine. Idempotent: a
# stamp under .cache/ records a completed setup, so reruns take well under a second.
#
# QEMU: qemu-img and qemu-system-x86 must come from the same release. Debian bookworm's
# qemu-system-x86 (7.2) replaces a newer qemu-utils (and with it qemu-img), so both are taken
# from bookworm-backports (QEMU 10), through a private apt source list that leaves the
# machine's own sources untouched. qemu-system-x86 runs the Linux guests of the QEMU driver's
# tests (TCG); PADDOCK_QEMU_SYSTEM=0 skips it on machines that only build.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
stamp=.cache/setup-v4.stamp
want_system=${PADDOCK_QEMU_SYSTEM:-1}
have() { command -v "$1" >/dev/null; }
if [ -f "$stamp" ] && have qemu-img && { [ "$want_system" = 0 ] || have qemu-system-x86_64; }; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt_dir=$PWD/.cache/apt
if ! have qemu-img || { [ "$want_system" != 0 ] && ! have qemu-system-x86_64; }; then
    mkdir -p "$apt_dir/lists/partial"
    codename=$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")
    cat > "$apt_dir/sources.list" <<LIST
deb http://deb.debian.org/debian $codename main
deb http://deb.debian.org/debian $codename-updates main
deb http://deb.debian.org/debian-security $codename-security main
deb http://deb.debian.org/debian $codename-backports main
LIST
    apt_opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o Dir::Etc::sourceparts=- -o "Dir::State::lists=$apt_dir/lists")
    apt-get "${apt_opts[@]}" update -qq
    pkgs=(qemu-utils)
    [ "$want_system" = 0 ] || pkgs+=(qemu-system-x86)
    echo "setup: installing ${pkgs[*]} from $codename-backports"
    apt-get "${apt_opts[@]}" install -y -qq --no-install-recommends -t "$codename-backports" "${pkgs[@]}" >/dev/null
fi
# Build tools, and what the VMM, QEMU and daemon tests use: ip (network namespaces), readelf;
# managed networks: nft (NAT), dnsmasq (DHCP), busybox (udhcpc in the DHCP test).
missing=()
have cc || missing+=(gcc)
have ip || missing+=(iproute2)
have readelf || missing+=(binutils)
have cpio || missing+=(cpio)
have xz || missing+=(xz-utils)
have nft || missing+=(nftables)
have dnsmasq || missing+=(dnsmasq-base)
have busybox || missing+=(busybox-static)
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
have cargo || { echo "setup: cargo is missing; install Rust with rustup first" >&2; exit 1; }
qemu-img --version | head -1
touch "$stamp"
