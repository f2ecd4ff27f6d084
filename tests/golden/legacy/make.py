#!/usr/bin/env python3
"""Makes the golden files of the foreign diff-dd formats in this directory.

Usage (from the repository root):

    python3 tests/golden/legacy/make.py "$(scripts/pydiffdd-venv | tail -n 1)"

The argument is the `diff-dd` executable of the Python diff-dd 1.0.4; its
real output is kept as new.diffdd-py-b8192. The C++ diff-dd files are built
here byte by byte from the format description (docs/formats/diff-dd.md),
with the C++ tool's algorithm for choosing v2 records. Everything is
deterministic: running this again must give identical files (check with
`git status`).
"""

import hashlib
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SIZE = 12288  # 24 sectors of 512; 1.5 blocks of 8192 (the last one short)


def stream(label, n):
    """n deterministic pseudo-random bytes (SHA-256 in counter mode)."""
    out = b"".join(
        hashlib.sha256(b"%s %d" % (label, i)).digest() for i in range((n + 31) // 32)
    )
    return out[:n]


def make_old_new():
    old = stream(b"diskdelta legacy golden old", SIZE)
    new = bytearray(old)
    new[0] ^= 0xFF  # first byte
    new[1000:1600] = stream(b"diskdelta legacy golden new", 600)
    new[2560:3072] = bytes(512)  # sector 5 zeroed
    new[5000] ^= 0x01  # two changes 9 bytes apart: one v2 record
    new[5010] ^= 0x80
    new[8000:8400] = b"\xab" * 400  # across the 8192-byte block boundary
    new[SIZE - 1] ^= 0x55  # last byte
    return old, bytes(new)


def diff_runs(old, new):
    """[start, end) runs of differing bytes, as the C++ tool finds them."""
    runs = []
    i = 0
    while i < len(new):
        if old[i] != new[i]:
            start = i
            while i < len(new) and old[i] != new[i]:
                i += 1
            runs.append([start, i])
        else:
            i += 1
    return runs


def cpp_v2(old, new):
    """C++ diff-dd `create`: the 14-byte header, then runs merged when the
    gap between them is at most one record header (12 bytes)."""
    merged = []
    for start, end in diff_runs(old, new):
        if merged and start - merged[-1][1] <= 12:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    out = bytearray(b"diff-dd image" + bytes([2]))
    for start, end in merged:
        out += struct.pack(">QI", start, end - start) + new[start:end]
    return bytes(out)


def cpp_v1(old, new, sector=512):
    """C++ diff-dd format v1: LE u64 offset + sector, per changed sector."""
    out = bytearray()
    for off in range(0, len(new), sector):
        if old[off : off + sector] != new[off : off + sector]:
            out += struct.pack("<Q", off) + new[off : off + sector]
    return bytes(out)


def py_reference(new, block_size):
    """What Python diff-dd 1.0.4 `CreateDiff.start` writes, for checking."""
    out = bytearray(32768)
    n = 0
    for off in range(0, len(new), block_size):
        out += struct.pack("<Q", n) + new[off : off + block_size]
        n += 1
    out += struct.pack("<Q", n)
    return bytes(out)


def write(name, data):
    with open(os.path.join(HERE, name), "wb") as f:
        f.write(data)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    diffdd = sys.argv[1]
    old, new = make_old_new()
    write("old.img", old)
    write("new.img", new)
    write("new.diffdd-v2", cpp_v2(old, new))
    write("new.diffdd-v1-s512", cpp_v1(old, new))

    out = os.path.join(HERE, "new.diffdd-py-b8192")
    subprocess.run(
        [
            diffdd,
            "--if", os.path.join(HERE, "old.img"),
            "--df", os.path.join(HERE, "new.img"),
            "--of", out,
            "-b", "8192",
        ],
        check=True,
    )
    with open(out, "rb") as f:
        real = f.read()
    if real != py_reference(new, 8192):
        sys.exit("the real Python diff-dd output differs from the documented layout")


if __name__ == "__main__":
    main()
