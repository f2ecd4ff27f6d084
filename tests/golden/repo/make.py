#!/usr/bin/env python3
"""Makes the golden repository of format version 1 (see README.md).

Usage (from the repository root, after `cargo build`, as root):

    python3 tests/golden/repo/make.py [path/to/diskdelta]
    python3 tests/golden/repo/make.py --encrypted [path/to/diskdelta]

The second form makes the golden encrypted repository (format version 2)
in `tests/golden/repo-encrypted/repo` from the same two images, with the
password `golden-password` and the cheapest Argon2 parameters
(`DISKDELTA_TESTONLY_WEAKEN_KDF=1`, so the test opens it at once). Its
master key, nonces and so every byte are random: it can never be made
again, which is why it is kept.

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


PASSWORD = "golden-password"


def run(exe, cwd, *args):
    cmd = ["unshare", "--uts", "sh", "-c", 'hostname golden && exec "$@"', "sh", exe, *args]
    env = dict(os.environ, DISKDELTA_PASSWORD=PASSWORD, DISKDELTA_TESTONLY_WEAKEN_KDF="1")
    subprocess.run(cmd, cwd=cwd, check=True, env=env)


def main():
    args = sys.argv[1:]
    encrypted = "--encrypted" in args
    args = [a for a in args if a != "--encrypted"]
    exe = os.path.abspath(args[0] if args else os.path.join(ROOT, "target/debug/diskdelta"))
    for name, data in make_images().items():
        with open(os.path.join(HERE, name), "wb") as f:
            f.write(data)
    out = os.path.join(os.path.dirname(HERE), "repo-encrypted") if encrypted else HERE
    os.makedirs(out, exist_ok=True)
    repo = os.path.join(out, "repo")
    shutil.rmtree(repo, ignore_errors=True)
    # The snapshots record the source as given: "one.img", "two.img".
    if encrypted:
        for name in ("one.img", "two.img"):
            shutil.copyfile(os.path.join(HERE, name), os.path.join(out, name))
    images = ["one.img", "two.img"]
    # Format version 1 is the plain repository.
    run(exe, out, "init", "-q", "-r", "repo", "--chunk-size", "16K",
        *([] if encrypted else ["--no-encryption"]))
    run(exe, out, "backup", "-q", "-r", "repo", images[0], "--name", "golden",
        "--tag", "golden", "--tag", "v1", "--time", "2026-01-02T03:04:05Z")
    run(exe, out, "backup", "-q", "-r", "repo", images[1], "--name", "golden",
        "--time", "2026-01-03")
    if encrypted:
        for name in images:
            os.remove(os.path.join(out, name))
    # Empty directories are not kept by git.
    shutil.rmtree(os.path.join(repo, "locks"), ignore_errors=True)
    for dirpath, _, files in sorted(os.walk(repo)):
        for f in sorted(files):
            p = os.path.join(dirpath, f)
            print("%7d  %s" % (os.path.getsize(p), os.path.relpath(p, out)))


if __name__ == "__main__":
    main()
