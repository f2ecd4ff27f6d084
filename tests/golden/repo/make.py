#!/usr/bin/env python3
"""Makes the golden repository of format version 1 (see README.md).

Usage (from the repository root, after `cargo build`, as root):

    python3 tests/golden/repo/make.py [path/to/diskdelta]

The default executable is `target/debug/diskdelta`. The two images are made
here from SHA-256 in counter mode and text; the repository under `repo/` is
the real output of `diskdelta init` and two `diskdelta backup`s of them,
run in a UTS namespace (`unshare --uts`) whose host name is `golden`, with
fixed `--time`, so that nothing of the machine enters the files.

Only `repo/config` differs from run to run (a random repository id and the
creation time). Every other file is the same again as long as zstd
compresses the same way. The files are pinned forever: once committed, a
reader that stops decoding one of them is a regression; a format change adds
new files next to these, it never rewrites them.
"""

import hashlib
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))
CHUNK = 16 * 1024


def stream(label, n):
    """n deterministic pseudo-random bytes (SHA-256 in counter mode)."""
    out = b"".join(
        hashlib.sha256(b"%s %d" % (label, i)).digest() for i in range((n + 31) // 32)
    )
    return out[:n]


def text(line, n):
    return (line * (n // len(line) + 1))[:n]


def make_images():
    a = text(b"diskdelta golden repository, chunk A: compressible text.\n", CHUNK)
    b = text(b"diskdelta golden repository, chunk B: other text.\n", CHUNK)
    r = stream(b"diskdelta golden repository random", CHUNK)
    tail = text(b"the tail of the image, shorter than a chunk.\n", 1000)
    zero = bytes(CHUNK)
    # one.img: text, zeros, random (stored raw), the text again (dedup),
    # a short tail (zstd).
    one = a + zero + r + a + tail
    # two.img: chunk 1 is new text, chunk 3 zeros; the rest as in one.img.
    two = a + b + r + zero + tail
    return {"one.img": one, "two.img": two}


def run(exe, *args):
    cmd = ["unshare", "--uts", "sh", "-c", 'hostname golden && exec "$@"', "sh", exe, *args]
    subprocess.run(cmd, cwd=HERE, check=True)


def main():
    exe = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "target/debug/diskdelta"))
    for name, data in make_images().items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
    repo = os.path.join(HERE, "repo")
    shutil.rmtree(repo, ignore_errors=True)
    run(exe, "init", "-q", "-r", "repo", "--chunk-size", "16K")
    run(exe, "backup", "-q", "-r", "repo", "one.img", "--name", "golden",
        "--tag", "golden", "--tag", "v1", "--time", "2026-01-02T03:04:05Z")
    run(exe, "backup", "-q", "-r", "repo", "two.img", "--name", "golden",
        "--time", "2026-01-03")
    # Empty directories are not kept by git.
    shutil.rmtree(os.path.join(repo, "locks"), ignore_errors=True)
    for dirpath, _, files in sorted(os.walk(repo)):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            print("%7d  %s" % (os.path.getsize(p), os.path.relpath(p, HERE)))


if __name__ == "__main__":
    main()
