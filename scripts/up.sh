#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds Paddock, and runs the main job: paddockd on a local
# state directory (.cache/up/) with a demo VM under paddock-vmm, whose console output is shown.
# The daemon is left running; the last lines say how to use `paddock` against it.
#
# The demo VM runs a Paddock test guest, which prints who and where it is and powers off (ACPI
# S5), so the VM ends in the stopped state: on this project's development machines KVM is nested
# through PVM, where stock Linux kernels cannot run under any VMM. (Linux guests run under the
# QEMU driver, `crates/qemu`, which the daemon does not drive yet.)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
bash scripts/setup.sh
echo "== building (release)"
cargo build --locked --release -p paddock -p paddockd -p paddock-vmm
(cd crates/testguest && cargo build --release --quiet)
bin=$root/target/release
state=$root/.cache/up/state
run=$root/.cache/up/run
sock=$run/paddockd.sock
mkdir -p "$state" "$run"
export PADDOCK_SOCKET=$sock

if ! "$bin/paddock" vm list >/dev/null 2>&1; then
    echo "== starting paddockd (state $state, socket $sock)"
    setsid "$bin/paddockd" --socket "$sock" --state-dir "$state" --run-dir "$run" \
        --vmm "$bin/paddock-vmm" >"$root/.cache/up/paddockd.log" 2>&1 < /dev/null &
    for _ in $(seq 100); do
        "$bin/paddock" vm list >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$bin/paddock" vm list >/dev/null || { echo "paddockd did not start; see .cache/up/paddockd.log" >&2; exit 1; }
fi

if ! "$bin/paddock" vm show demo >/dev/null 2>&1; then
    cat > "$root/.cache/up/demo.json" <<JSON
{
  "name": "demo",
  "cpus": {"count": 1},
  "memory": {"size_mib": 128},
  "boot": {"kind": "kernel", "kernel": "$root/crates/testguest/target/release/hello",
           "cmdline": "paddock.demo=1"}
}
JSON
    "$bin/paddock" vm define -f "$root/.cache/up/demo.json"
fi
state_now=$("$bin/paddock" vm show demo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
[ "$state_now" = running ] || "$bin/paddock" vm start demo
"$bin/paddock" vm list
echo "== console of the demo VM"
for _ in $(seq 50); do
    out=$("$bin/paddock" vm console demo)
    case $out in *Hello*) break ;; esac
    sleep 0.1
done
printf '%s\n' "$out"
"$bin/paddock" vm list
cat <<MSG

paddockd is running (log: .cache/up/paddockd.log). Use it with:
    export PADDOCK_SOCKET=$sock
    $bin/paddock vm list
    $bin/paddock vm start demo && $bin/paddock vm console demo
    $bin/paddock vm delete demo
    $bin/paddock image --help        # the disk engine works without the daemon
Stop the daemon with: pkill -f '$bin/paddockd' (its VMs keep running; a restart re-attaches).
MSG
