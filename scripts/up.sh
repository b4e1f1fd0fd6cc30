#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds Paddock, and runs the main job: paddockd on a local
# state directory (.cache/up/) with a demo VM (Debian), whose console output is shown.
# The daemon is left running; the last lines say how to use `paddock` against it.
#
# The demo VM is Debian's cloud kernel with a busybox initramfs (scripts/guest-artifacts.sh)
# on the QEMU driver, with a disk from the `default` storage pool: `accel: auto` picks KVM where
# the host can run Linux guests and TCG (software CPU, a few seconds to userspace) where it
# cannot, such as this project's development machines, whose KVM is nested through PVM.
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

eval "$(bash scripts/guest-artifacts.sh | grep -E '^(kernel|initramfs)=')"
"$bin/paddock" pool show default >/dev/null 2>&1 ||
    "$bin/paddock" pool define default "$root/.cache/up/pool"
"$bin/paddock" volume show default demo-disk >/dev/null 2>&1 ||
    "$bin/paddock" volume create default demo-disk --size 64M --format qcow2
if ! "$bin/paddock" vm show demo >/dev/null 2>&1; then
    cat > "$root/.cache/up/demo.json" <<JSON
{
  "name": "demo",
  "driver": "qemu",
  "cpus": {"count": 1},
  "memory": {"size_mib": 256},
  "boot": {"kind": "kernel", "kernel": "$kernel", "initramfs": "$initramfs",
           "cmdline": "console=ttyS0"},
  "disks": [{"volume": "default/demo-disk", "serial": "DEMO-DISK"}]
}
JSON
    "$bin/paddock" vm define -f "$root/.cache/up/demo.json"
fi
state_now=$("$bin/paddock" vm show demo --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
[ "$state_now" = running ] || "$bin/paddock" vm start demo
echo "== console of the demo VM (Debian kernel, busybox userland)"
out=
for _ in $(seq 600); do
    out=$("$bin/paddock" vm console demo --log)
    case $out in *"paddock-initramfs: ready"*) break ;; esac
    sleep 0.1
done
printf '%s\n' "$out" | tail -n 25
"$bin/paddock" vm list
"$bin/paddock" volume list default
cat <<MSG

paddockd is running (log: .cache/up/paddockd.log). Use it with:
    export PADDOCK_SOCKET=$sock
    $bin/paddock vm list
    $bin/paddock vm console demo            # interactive; Ctrl-] detaches
    $bin/paddock vm stop demo && $bin/paddock vm start demo
    $bin/paddock pool list && $bin/paddock volume list default
    $bin/paddock network define lan --ipv4 10.77.0.1/24 --nat --dhcp 10.77.0.50-10.77.0.99
    $bin/paddock vm delete demo
    $bin/paddock image --help        # the disk engine works without the daemon
Stop the daemon with: pkill -f '$bin/paddockd' (its VMs keep running; a restart re-attaches).
MSG
