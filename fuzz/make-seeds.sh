#!/usr/bin/env bash
# Makes the small seed images the fuzz targets start from (committed under fuzz/seeds/).
# Each holds a little data, a zero run and holes, so seeds reach the table-walking code.
set -euo pipefail
cd "$(dirname "$0")"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
raw=$tmp/p.raw
truncate -s 256K "$raw"
printf 'paddock fuzz seed %.0s' {1..64} | dd of="$raw" bs=1 seek=70000 conv=notrunc status=none
head -c 3000 /dev/zero | tr '\0' 'z' | dd of="$raw" bs=1 seek=200000 conv=notrunc status=none
rm -rf seeds && mkdir -p seeds/{qcow2,vmdk,vpc,vhdx,vdi,raw,probe}
cp "$raw" seeds/raw/pattern
q() { qemu-img convert -q -f raw "$@"; }
q -O qcow2 -o cluster_size=4k "$raw" seeds/qcow2/v3-4k
q -O qcow2 -o compat=0.10,cluster_size=512 "$raw" seeds/qcow2/v2-512
q -O qcow2 -c -o cluster_size=4k,compression_type=zstd "$raw" seeds/qcow2/zstd
q -O qcow2 -o cluster_size=8k,refcount_bits=1,lazy_refcounts=on "$raw" seeds/qcow2/rc1-lazy
q -O qcow2 -o cluster_size=16k,extended_l2=on "$raw" seeds/qcow2/extl2
q -O vmdk "$raw" seeds/vmdk/sparse
q -O vmdk -o subformat=streamOptimized "$raw" seeds/vmdk/stream
q -O vpc "$raw" seeds/vpc/dynamic
q -O vpc -o subformat=fixed "$raw" seeds/vpc/fixed
q -O vhdx -o block_size=1M,log_size=1M "$raw" seeds/vhdx/dynamic
q -O vdi "$raw" seeds/vdi/dynamic
q -O vdi -o static=on "$raw" seeds/vdi/static
for f in qcow2/v3-4k vmdk/stream vpc/dynamic vhdx/dynamic vdi/dynamic; do cp "seeds/$f" "seeds/probe/${f//\//-}"; done
# Store seeds in the fuzzers' structured encoding (mostly-zero images become small inputs).
for f in seeds/*/*; do python3 encode.py "$f" "$f.enc" && mv "$f.enc" "$f"; done
du -sh seeds
