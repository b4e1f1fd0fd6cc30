#!/usr/bin/env bash
# The disk-image engine on a 1 GiB demo disk: converted through every format in turn, each step
# verified with `paddock image compare` and `qemu-img compare`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --locked --release -p paddock
bin=target/release/paddock
demo=${PADDOCK_DEMO_DIR:-.cache/demo-disk}
rm -rf "$demo" && mkdir -p "$demo"
# A 1 GiB demo disk with some data, holes and text.
truncate -s 1G "$demo/disk.raw"
head -c 64M /dev/urandom | dd of="$demo/disk.raw" conv=notrunc bs=1M seek=100 status=none
python3 -c 'import sys; sys.stdout.buffer.write((b"paddock demo disk\n" * 500000)[: 8 << 20])' |
    dd of="$demo/disk.raw" conv=notrunc bs=1M seek=500 status=none
"$bin" image info "$demo/disk.raw"
prev="$demo/disk.raw"; prevfmt=raw
for spec in "qcow2:" "vmdk:subformat=streamOptimized" "vhdx:" "vpc:" "vdi:" "qcow2:compression_type=zstd"; do
    fmt=${spec%%:*}; opt=${spec#*:}
    out="$demo/disk-$fmt${opt:+-${opt##*=}}.$fmt"
    args=(-O "$fmt"); [ -n "$opt" ] && args+=(-o "$opt")
    [ "$opt" = compression_type=zstd ] && args+=(-c)
    echo "== $prevfmt -> $fmt ${opt}"
    "$bin" image convert -p -f "$prevfmt" "${args[@]}" "$prev" "$out"
    "$bin" image compare -f raw "$demo/disk.raw" "$out"
    qemu-img compare -f raw "$demo/disk.raw" "$out" >/dev/null && echo "qemu-img agrees"
    prev=$out; prevfmt=$fmt
done
"$bin" image info "$prev"
echo
echo "Demo images are in $demo. Try: $bin image --help"
