#!/usr/bin/env bash
# paddockd benchmark, with libvirt (Debian's libvirt-daemon-system, started here) as the peer
# in the same run:
#   - define 1,000 VMs (paddockd) and 1,000 domains (libvirt);
#   - API p50/p99 for list and show with 1,000 defined (Python client on the Unix socket vs the
#     libvirt Python binding), and through the CLIs (`paddock` vs `virsh`);
#   - start latency: the VMM by hand vs `paddock vm start` (paddock-vmm driver), and QEMU by
#     hand vs `paddock vm start` (QEMU driver) vs `virsh start` (same QEMU, same guest);
#   - 50 concurrent starts of test-guest VMs on paddock-vmm.
# Usage: bench/daemon.sh [--vms N] [--runs N] [--no-libvirt]
# Timings never gate tests; the table goes into docs/SPECIFICATION.md by hand.
set -euo pipefail
cd "$(dirname "$0")/.."
VMS=1000
RUNS=20
LIBVIRT=1
while [ $# -gt 0 ]; do
    case $1 in
        --vms) VMS=$2; shift 2 ;;
        --runs) RUNS=$2; shift 2 ;;
        --no-libvirt) LIBVIRT=0; shift ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
bash scripts/setup.sh >/dev/null
if [ "$LIBVIRT" = 1 ]; then
    if ! command -v virsh >/dev/null || ! /usr/bin/python3 -c 'import libvirt' 2>/dev/null; then
        echo "== installing libvirt (peer)"
        # --no-install-recommends keeps the backports QEMU and qemu-img in place.
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            libvirt-daemon-system libvirt-clients python3-libvirt >/dev/null
    fi
    # libvirt re-probes QEMU (about 10 s) on every define while the libvirt-qemu user cannot
    # open /dev/kvm: give it Debian's udev default (root:kvm 0660) where udev did not.
    if [ "$(stat -c %G:%a /dev/kvm 2>/dev/null)" = root:600 ]; then
        echo "== /dev/kvm: root:kvm 0660 (Debian's default) so libvirt's QEMU user can use it"
        chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
    fi
    pgrep -x virtlogd >/dev/null || virtlogd -d
    # libvirtd under a child subreaper: the QEMU processes it probes daemonize, and where PID 1
    # does not reap orphans their zombies stall libvirtd for minutes.
    pgrep -x libvirtd >/dev/null || setsid /usr/bin/python3 -c '
import ctypes, os, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
child = os.fork()
if child == 0:
    os.execvp("libvirtd", ["libvirtd"])
while True:
    try:
        if os.wait()[0] == child:
            break
    except ChildProcessError:
        break
' >/dev/null 2>&1 </dev/null &
    for _ in $(seq 100); do virsh -c qemu:///system version >/dev/null 2>&1 && break; sleep 0.1; done
fi
echo "== building (release)"
cargo build --locked --release -q -p paddock -p paddockd -p paddock-vmm
(cd crates/testguest && cargo build --release -q)
# Debian's python3 carries the libvirt binding (python3-libvirt).
exec /usr/bin/python3 bench/daemon.py --bin target/release --guest crates/testguest/target/release/wait \
    --vms "$VMS" --runs "$RUNS" --libvirt "$LIBVIRT"
