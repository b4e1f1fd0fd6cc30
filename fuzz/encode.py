#!/usr/bin/env python3
"""Encodes an image file as a fuzz input (see paddock_disk::fuzzing::decode):
total_len u32 LE, then segments of (gap u32 LE, len u16 LE, bytes) covering the non-zero runs."""
import struct, sys

def encode(data: bytes) -> bytes:
    out = bytearray(struct.pack("<I", len(data)))
    pos, at, n = 0, 0, len(data)
    while pos < n:
        while pos < n and data[pos] == 0:
            pos += 1
        if pos >= n:
            break
        start = pos
        zeros = 0
        while pos < n and pos - start < 0xFFFF:
            zeros = zeros + 1 if data[pos] == 0 else 0
            pos += 1
            if zeros >= 32:
                break
        end = pos - zeros
        out += struct.pack("<IH", start - at, end - start) + data[start:end]
        at = end
    return bytes(out)

if __name__ == "__main__":
    src, dst = sys.argv[1], sys.argv[2]
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(encode(data))
