#!/usr/bin/env bash
# Installs what Paddock's build and tests need on a Debian machine. Idempotent: a stamp under
# .cache/ records what was installed, so reruns take well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .cache
stamp=.cache/setup-v1.stamp
if [ -f "$stamp" ] && command -v qemu-img >/dev/null; then
    exit 0
fi
need=()
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v cc >/dev/null || need+=(gcc)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # qemu-utils is named explicitly so qemu-img stays when qemu-system-x86 is installed.
    apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v cargo >/dev/null || { echo "setup: cargo is missing; install Rust with rustup first" >&2; exit 1; }
qemu-img --version | head -1
touch "$stamp"
