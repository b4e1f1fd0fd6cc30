#!/usr/bin/env bash
# Runs cargo-fuzz targets for a fixed time each and prints a Markdown table of the figures
# (executions, corpus size, findings) for docs/FUZZING.md. Findings are left in
# fuzz/artifacts/<target>/; once fixed, add them to fuzz/regressions/<target>/.
#
# Usage: fuzz/run.sh [--seconds N] [--jobs J] [target ...]   (default: all targets, 600 s)
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=600
JOBS=1
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) SECONDS_EACH=$2; shift 2 ;;
        --jobs) JOBS=$2; shift 2 ;;
        *) break ;;
    esac
done
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(qcow2 vmdk vpc vhdx vdi raw probe)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# Stable Rust: no sanitizer (the disk crate forbids unsafe code), coverage instrumentation only.
cargo fuzz build -s none "${targets[@]/#/--bin=}" >/dev/null 2>&1 || cargo fuzz build -s none
run_one() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    cp -n "seeds/$t"/* "corpus/$t"/ 2>/dev/null || true
    local log; log=$(mktemp)
    cargo fuzz run -s none "$t" "corpus/$t" -- -max_total_time="$SECONDS_EACH" -max_len=65536 \
        -rss_limit_mb=1024 -timeout=10 -artifact_prefix="artifacts/$t/" >"$log" 2>&1 || true
    local runs; runs=$(grep -oE 'Done [0-9]+ runs' "$log" | grep -oE '[0-9]+' | tail -1)
    local found; found=$(find "artifacts/$t" -type f | wc -l)
    local corp; corp=$(find "corpus/$t" -type f | wc -l)
    echo "| $t | $SECONDS_EACH | ${runs:-?} | $corp | $found |"
    [ "$found" -eq 0 ] || tail -30 "$log" >&2
    rm -f "$log"
}
echo "| target | seconds | executions | corpus | findings |"
echo "|---|---:|---:|---:|---:|"
export -f run_one; export SECONDS_EACH
printf '%s\n' "${targets[@]}" | xargs -P "$JOBS" -I{} bash -c 'run_one {}'
