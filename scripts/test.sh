#!/usr/bin/env bash
# Runs every quality gate and the whole test suite: formatting, clippy with -D warnings, then
# the tests (unit, qemu-img agreement, crash, fuzz-corpus replay) with the locked lockfile.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings
# The test guests are their own no_std workspace (crates/testguest): the same two gates.
echo "== test guests: cargo fmt --check, cargo clippy -D warnings"
cargo fmt --manifest-path crates/testguest/Cargo.toml -- --check
cargo clippy --locked --release --manifest-path crates/testguest/Cargo.toml \
    --target-dir "${CARGO_TARGET_DIR:-$PWD/target}/testguest" -- -D warnings
echo "== cargo test"
cargo test --locked --workspace
