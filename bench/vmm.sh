#!/usr/bin/env bash
# paddock-vmm benchmark: start time, memory overhead, virtio-blk throughput, VM churn.
# QEMU (-M microvm with KVM) boots the same test guest in the same run where it can, and the
# ratio is printed. Usage: bench/vmm.sh [--runs N] [--qemu PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=30
QEMU=$(command -v qemu-system-x86_64 || true)
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --qemu) QEMU=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
[ -e /dev/kvm ] || { echo "bench/vmm.sh: /dev/kvm is missing; nothing to measure" >&2; exit 0; }
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
# The VMM as deployed: scripts/build-vmm.sh ([profile.vmm], statically linked).
VMM=$(scripts/build-vmm.sh 2>/dev/null)
cargo build --release --manifest-path crates/testguest/Cargo.toml --target-dir "$TARGET/testguest" >/dev/null 2>&1
# The host-side limit for the virtio-blk rows: a native pread loop (crates/vmm/examples/host_read.rs).
cargo build --locked --release -p paddock-vmm --example host_read >/dev/null 2>&1
python3 - "$VMM" "$TARGET/testguest/release" "$RUNS" "$QEMU" "$TARGET/release/examples/host_read" <<'PY'
import os, statistics, subprocess, sys, time, tempfile, datetime
vmm, guests, runs, qemu, host_reader = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
hello = os.path.join(guests, "hello")

def boot(cmd):
    """Seconds to the first serial byte and to exit, and the exit status."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    first = p.stdout.read(1)
    t1 = time.perf_counter()
    p.stdout.read()
    rc = p.wait()
    t2 = time.perf_counter()
    return (t1 - t0 if first else float("nan")), t2 - t0, rc

ours = [vmm, "--kernel", hello, "--memory", "128M", "--debug-exit"]
# `-cpu host` alone fails under nested PVM (KVM refuses MSR 0x10a, arch-capabilities).
theirs = ["timeout", "20", qemu, "-M", "microvm,x-option-roms=off,rtc=off,pic=off,pit=off", "-enable-kvm", "-cpu", "host,-arch-capabilities",
          "-m", "128M", "-nodefaults", "-no-user-config", "-display", "none", "-serial", "stdio",
          "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", hello] if qemu else None
rows = []
def med(xs): return statistics.median(xs)
def p(xs, q): xs = sorted(xs); return xs[min(len(xs)-1, int(q*len(xs)))]

# (a) start time
o = [boot(ours) for _ in range(runs)]
assert all(r[2] == 0 for r in o), "hello guest failed under paddock-vmm"
q = None
if theirs:
    probe = boot(theirs)
    # isa-debug-exit maps status s to (s << 1) | 1: the hello guest's 0 becomes 1.
    if probe[2] == 1:
        q = [boot(theirs) for _ in range(runs)]
    else:
        print(f"QEMU microvm could not run the test guest here (exit {probe[2]}, 124 = no exit within 20 s); QEMU columns skipped", file=sys.stderr)
def row(name, ours_v, qemu_v, unit, fmt="{:.2f}", lower_better=True):
    ratio = (qemu_v / ours_v if lower_better else ours_v / qemu_v) if (qemu_v and ours_v) else None
    rows.append((name, fmt.format(ours_v) + " " + unit, (fmt.format(qemu_v) + " " + unit) if qemu_v else "-", f"{ratio:.1f}x" if ratio else "-"))
row("start to first serial byte (median)", med([r[0] for r in o]) * 1e3, q and med([r[0] for r in q]) * 1e3, "ms")
row("start to exit (median)", med([r[1] for r in o]) * 1e3, q and med([r[1] for r in q]) * 1e3, "ms")
row("start to exit (p99)", p([r[1] for r in o], 0.99) * 1e3, q and p([r[1] for r in q], 0.99) * 1e3, "ms")
# --async-teardown: a helper process destroys the VM after the VMM has exited.
a = [boot(ours + ["--async-teardown"]) for _ in range(runs)]
assert all(r[2] == 0 for r in a), "hello guest failed under paddock-vmm --async-teardown"
row("start to exit, --async-teardown (median)", med([r[1] for r in a]) * 1e3, None, "ms")
row("start to exit, --async-teardown (p99)", p([r[1] for r in a], 0.99) * 1e3, None, "ms")

# (b) memory overhead with a 512 MiB guest: peak RSS minus the guest pages the hello guest
# touches (its ELF image, the boot tables and page tables: measured from the ELF below).
def peak_rss(cmd):
    r = subprocess.run(["/usr/bin/time", "-f", "%M"] + cmd, capture_output=True, text=True)
    return int(r.stderr.strip().splitlines()[-1]) / 1024
elf_mem = 0
out = subprocess.run(["readelf", "-lW", hello], capture_output=True, text=True).stdout
for line in out.splitlines():
    f = line.split()
    if f and f[0] == "LOAD":
        elf_mem += int(f[5], 16)
touched = elf_mem / 2**20 + 0.1  # + zero page, cmdline, GDT and the 3 boot page-table pages
rss = med([peak_rss([vmm, "--kernel", hello, "--memory", "512M", "--debug-exit"]) for _ in range(5)])
qrss = None
if q:
    qrss = med([peak_rss(theirs[:theirs.index("-m") + 1] + ["512M"] + theirs[theirs.index("-m") + 2:]) for _ in range(5)])
row("VMM overhead, 512 MiB guest (peak RSS - guest touched)", rss - touched, qrss and qrss - touched, "MiB")
# Private memory: anonymous RSS of a running VM (the wait guest spins after its ready line)
# minus the guest pages it touched; the rest of the RSS is shared text (the binary, libc).
w = subprocess.Popen([vmm, "--kernel", os.path.join(guests, "wait"), "--memory", "512M", "--debug-exit"],
                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
w.stdout.readline()
anon = 0
with open(f"/proc/{w.pid}/smaps_rollup") as f:
    for line in f:
        if line.startswith("Anonymous:"):
            anon = int(line.split()[1]) / 1024
w.kill(); w.wait()
rows.append(("VMM private memory, 512 MiB guest (anonymous RSS - guest touched)", f"{anon - touched:.2f} MiB", "-", "-"))

# (c) virtio-blk throughput against reading the same file on the host (page cache)
with tempfile.TemporaryDirectory(dir="/dev/shm") as d:
    disk = os.path.join(d, "disk.raw")
    with open(disk, "wb") as f:
        f.write(os.urandom(256 << 20))
    def guest_rate(extra):
        cmd = [vmm, "--kernel", os.path.join(guests, "blkbench"), "--memory", "256M", "--debug-exit",
               "--disk", f"path={disk},format=raw", "--cmdline", extra]
        p_ = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        start = None
        for line in p_.stdout:
            if "BENCH start" in line:
                start = time.perf_counter()
            if line.startswith("BENCH done"):
                el = time.perf_counter() - start
            if line.startswith("BENCH result"):
                nbytes = int(line.split("bytes=")[1])
        p_.wait()
        return nbytes / el / 2**20
    # The host figure: one native thread of pread into one reused page-aligned buffer,
    # the same block size and as many blocks as the guest reads (random: the same count at
    # random 4 KiB-aligned offsets).
    def host_read(mode, block, count):
        out = subprocess.run([host_reader, disk, mode, str(block), str(count)], capture_output=True, text=True, check=True)
        return float(out.stdout)
    def host_seq():
        return host_read("seq", 128 << 10, 2048)
    def host_rand():
        return host_read("rand", 4096, 65536)
    hs = med([host_seq() for _ in range(5)])
    hr = med([host_rand() for _ in range(5)])
    # The blkbench guest keeps QD requests in flight (refilling as they complete) on a
    # 256-entry queue with EVENT_IDX; the host figures are measured again around each row.
    for qd in (1, 4, 32, 128):
        if qd <= 64:
            gs = med([guest_rate(f"blkbench.mib=256 blkbench.qd={qd}") for _ in range(5)])
            hs = med([host_seq() for _ in range(3)] + [hs])
            rows.append((f"virtio-blk sequential 128 KiB reads, QD{qd}", f"{gs:.0f} MiB/s", f"host {hs:.0f} MiB/s (native pread, 1 thread)", f"{gs/hs*100:.0f}% of host"))
        if qd == 4:
            # A Linux guest's 128 KiB request arrives as 32 page-sized descriptors: one
            # vectored read each. 7 such requests fill the 256-entry queue.
            gv = med([guest_rate("blkbench.mib=256 blkbench.qd=7 blkbench.segs=32") for _ in range(5)])
            rows.append(("virtio-blk sequential 128 KiB reads in 32 segments, QD7", f"{gv:.0f} MiB/s", f"host {hs:.0f} MiB/s (native pread, 1 thread)", f"{gv/hs*100:.0f}% of host"))
        gr = med([guest_rate(f"blkbench.mib=256 blkbench.rand=1 blkbench.qd={qd}") for _ in range(5)])
        hr = med([host_rand() for _ in range(3)] + [hr])
        rows.append((f"virtio-blk random 4 KiB reads, QD{qd}", f"{gr:.0f} MiB/s ({gr*256:.0f} IOPS)", f"host {hr:.0f} MiB/s (native pread, 1 thread)", f"{gr/hr*100:.0f}% of host"))

# (d) 100 VMs started and stopped, 8 at a time
t = time.perf_counter()
procs = []
for i in range(100):
    procs.append(subprocess.Popen(ours, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    if len(procs) >= 8:
        procs.pop(0).wait()
for pr in procs: pr.wait()
el = time.perf_counter() - t
row("100 VMs started and stopped (8 in flight)", 100 / el, None, "VMs/s", lower_better=False)

print(f"paddock-vmm benchmark ({datetime.date.today()}, {os.cpu_count()} CPUs, KVM nested through PVM, {runs} runs)")
print("| measure | paddock-vmm | QEMU microvm / host | ratio |")
print("|---|---:|---:|---:|")
for r in rows:
    print("| " + " | ".join(r) + " |")
PY
