#!/usr/bin/env bash
# Side-by-side conversion benchmark: `paddock image convert` against `qemu-img convert`.
#
# Builds a 4 GiB source image holding about 1.5 GiB of mixed data (random, text, allocated
# zeroes; the rest holes), makes every input format with qemu-img, then times both tools on
# each pair, interleaved, RUNS times each, writing to tmpfs. Both tools flush at the end
# (their default writeback mode). Prints median seconds, peak RSS, output sizes (allocated
# bytes, so a sparse raw output counts its data only; for compressed pairs, the compression
# ratio), the throughput ratio, and a write floor: the time `dd` takes to write as many bytes
# as paddock's output allocates into one tmpfs file, which no converter writing that output
# can beat (every byte a tmpfs file receives costs a page allocation and a copy in the
# kernel, under the inode's write lock).
#
# Usage: bench/convert.sh [--runs N] [--work DIR] [--out DIR] [--pairs "raw:qcow2 ..."]
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=5
WORK=.cache/bench-convert
OUT=/dev/shm/paddock-bench
PAIRS="raw:qcow2 qcow2:raw qcow2:vmdk-stream vmdk:qcow2 vhdx:qcow2 vpc:qcow2 vdi:qcow2 raw:qcow2-zstd"
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --work) WORK=$2; shift 2 ;;
        --out) OUT=$2; shift 2 ;;
        --pairs) PAIRS=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
cargo build --locked --release -p paddock >/dev/null
PADDOCK=${CARGO_TARGET_DIR:-$PWD/target}/release/paddock
mkdir -p "$WORK" "$OUT"

src=$WORK/source.raw
if [ ! -f "$WORK/.ready" ]; then
    echo "bench: building the 4 GiB source with ~1.5 GiB of mixed data" >&2
    rm -f "$src"; truncate -s 4G "$src"
    # 512 MiB random (incompressible) in 64 MiB pieces spread over the disk.
    for i in 0 1 2 3 4 5 6 7; do
        head -c 64M /dev/urandom | dd of="$src" bs=1M seek=$((i * 480)) conv=notrunc status=none
    done
    # 640 MiB of text-like data (compressible).
    python3 - "$src" <<'PY'
import sys, random
random.seed(1)
words = [w.encode() for w in "the kernel driver block device sector cluster grain table qemu paddock virtual machine migrate snapshot".split()]
chunk = b" ".join(random.choice(words) for _ in range(2_000_000))[: 8 << 20]
with open(sys.argv[1], "r+b") as f:
    for i in range(80):
        f.seek((64 + i * 40) << 20)
        f.write(chunk)
PY
    # 384 MiB of allocated zeroes.
    dd if=/dev/zero of="$src" bs=1M seek=3600 count=384 conv=notrunc status=none
    for fmt in qcow2 vmdk vhdx vpc vdi; do
        qemu-img convert -f raw -O "$fmt" "$src" "$WORK/source.$fmt"
    done
    touch "$WORK/.ready"
fi

python3 - "$PADDOCK" "$WORK" "$OUT" "$RUNS" $PAIRS <<'PY'
import os, statistics, subprocess, sys, datetime
paddock, work, out, runs, pairs = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5:]
targets = {
    "raw": ("raw", []), "qcow2": ("qcow2", []),
    "vmdk-stream": ("vmdk", ["-o", "subformat=streamOptimized"]),
    "qcow2-zstd": ("qcow2", ["-c", "-o", "compression_type=zstd"]),
}
def timed(cmd):
    r = subprocess.run(["/usr/bin/time", "-f", "%e %M"] + cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    secs, kb = r.stderr.strip().splitlines()[-1].split()
    return float(secs), int(kb)
rows = []
print(f"{'pair':<20}{'qemu-img s':>12}{'paddock s':>12}{'ratio':>8}{'floor s':>9}{'qemu MiB':>10}{'paddock MiB':>12}{'qemu out':>10}{'paddock out':>12}")
for pair in pairs:
    s, t = pair.split(":")
    fmt, extra = targets[t]
    src = os.path.join(work, "source." + s)
    res = {"qemu-img": [], "paddock": [], "floor": []}
    mem = {"qemu-img": 0, "paddock": 0}
    size = {"qemu-img": 0, "paddock": 0}
    for i in range(runs):
        order = ["qemu-img", "paddock"] if i % 2 == 0 else ["paddock", "qemu-img"]
        for tool in order:
            dst = os.path.join(out, f"{tool}.{fmt}")
            for f in os.listdir(out):
                os.remove(os.path.join(out, f))
            cmd = [tool if tool == "qemu-img" else paddock]
            cmd += ([] if tool == "qemu-img" else ["image"]) + ["convert", "-f", s, "-O", fmt] + extra + [src, dst]
            secs, kb = timed(cmd)
            res[tool].append(secs)
            mem[tool] = max(mem[tool], kb)
            size[tool] = os.stat(dst).st_blocks * 512
        # The write floor: the kernel's cost of writing as many bytes as paddock's output
        # allocates into one tmpfs file (dd from /dev/zero, 2 MiB writes, one thread, synced).
        for f in os.listdir(out):
            os.remove(os.path.join(out, f))
        count = max(1, size["paddock"] >> 21)
        secs, _ = timed(["dd", "if=/dev/zero", f"of={os.path.join(out, 'floor')}", "bs=2M",
                         f"count={count}", "conv=fsync", "status=none"])
        res["floor"].append(secs)
    q, p = statistics.median(res["qemu-img"]), statistics.median(res["paddock"])
    fl = statistics.median(res["floor"])
    ratio = q / p if p > 0 else float("inf")
    row = (pair, q, p, ratio, fl, mem["qemu-img"] / 1024, mem["paddock"] / 1024,
           size["qemu-img"] / 2**20, size["paddock"] / 2**20)
    rows.append(row)
    print(f"{pair:<20}{q:>12.3f}{p:>12.3f}{ratio:>7.2f}x{fl:>9.3f}{row[5]:>10.1f}{row[6]:>12.1f}{row[7]:>10.0f}{row[8]:>12.0f}", flush=True)
for f in os.listdir(out):
    os.remove(os.path.join(out, f))
load = os.getloadavg()
print()
print(f"Markdown ({datetime.date.today()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} at the end, {runs} runs each, medians, output on tmpfs, both flushing):")
print("| pair | qemu-img (s) | paddock (s) | speed-up | write floor (s) | qemu-img peak RSS (MiB) | paddock peak RSS (MiB) | qemu-img output (MiB) | paddock output (MiB) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r[0]} | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.2f}x | {r[4]:.3f} | {r[5]:.1f} | {r[6]:.1f} | {r[7]:.0f} | {r[8]:.0f} |")
PY
