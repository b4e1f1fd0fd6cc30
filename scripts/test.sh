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
echo "== cargo test"
cargo test --locked --workspace
