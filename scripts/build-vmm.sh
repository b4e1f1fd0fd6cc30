#!/usr/bin/env bash
# Builds paddock-vmm as deployed and benchmarked: [profile.vmm] (release with panic=abort,
# fat LTO, one codegen unit) and glibc linked statically (static-pie), which keeps the
# per-VM resident memory under 3 MiB (no ld.so, no shared libc pages faulted in around each
# call). --target is explicit so RUSTFLAGS reach only paddock-vmm's crates, not build scripts
# or proc macros, and the output lands apart from the ordinary host builds.
# Prints the binary's path. Usage: scripts/build-vmm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TRIPLE=x86_64-unknown-linux-gnu
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --locked --profile vmm -p paddock-vmm --target "$TRIPLE" >&2
echo "$TARGET/$TRIPLE/vmm/paddock-vmm"
