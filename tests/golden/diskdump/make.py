#!/usr/bin/env python3
"""Makes the diskdump 0.1.5 golden store in tests/golden/diskdump/ with the
real tool (PyPI `diskdump==0.1.5`, from scripts/diskdump-venv).

Usage: python3 tests/golden/diskdump/make.py DISKDUMP_EXECUTABLE

Deterministic (SHA-256 counter mode, fixed --date values): running it again
must leave `git status` clean, as long as the lz4 package compresses the
same way (see README.md).
"""
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
STORE = os.path.join(HERE, "store")
SMALL_BLOCK = 4096


def text(label: bytes, length: int) -> bytes:
    """Compressible bytes: numbered text lines."""
    out = bytearray()
    line = 0
    while len(out) < length:
        out += b"diskdump golden %s line %04d\n" % (label, line)
        line += 1
    return bytes(out[:length])


def noise(label: bytes, length: int) -> bytes:
    """Incompressible bytes: SHA-256 in counter mode."""
    out = bytearray()
    counter = 0
    while len(out) < length:
        out += hashlib.sha256(b"%s %d" % (label, counter)).digest()
        counter += 1
    return bytes(out[:length])


def small_image() -> bytes:
    """17384 bytes, block size 4096: text, zeros, noise, block 0 again, and
    a short last block of 1000 bytes."""
    block0 = text(b"small block 0", SMALL_BLOCK)
    return (
        block0
        + bytes(SMALL_BLOCK)
        + noise(b"small block 2", SMALL_BLOCK)
        + block0
        + text(b"small tail", 1000)
    )


def big_image() -> bytes:
    """263144 bytes, the default block size 131072: a text block that
    repeats every 40000 bytes, a zero block, 1000 bytes. The text block's
    file holds two linked 64 KiB lz4 blocks, the second made of matches
    into the first (lz4 offsets reach back 65535 bytes): only a decoder that
    keeps the previous block's window decodes it."""
    period = text(b"big block 0", 40000)
    return (period * 4)[:131072] + bytes(131072) + text(b"big tail", 1000)


def frame_blocks(frame: bytes) -> tuple:
    """(FLG byte, compressed sizes of the data blocks) of one LZ4 frame as
    python-lz4 writes it: magic, FLG, BD, 8-byte content size, HC, blocks,
    a zero end mark and nothing after it."""
    assert frame[:4] == b"\x04\x22\x4d\x18", frame[:4].hex()
    flg, bd = frame[4], frame[5]
    # Version 01, content size present, no checksums, no dictionary id;
    # BD: 64 KiB maximum block size.
    assert flg & 0xDF == 0x48 and bd == 0x40, (hex(flg), hex(bd))
    pos = 15
    sizes = []
    while True:
        word = int.from_bytes(frame[pos:pos + 4], "little")
        pos += 4
        if word == 0:
            break
        size = word & 0x7FFFFFFF
        sizes.append(size)
        pos += size
    assert pos == len(frame), (pos, len(frame))
    return flg, sizes


def run(tool: str, *args: str) -> None:
    env = dict(os.environ, DISKDUMP_BASE=STORE)
    subprocess.run([tool, *args], check=True, env=env, stdout=subprocess.DEVNULL)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    tool = sys.argv[1]

    small = small_image()
    with open(os.path.join(HERE, "small.img"), "wb") as f:
        f.write(small)

    shutil.rmtree(STORE, ignore_errors=True)
    os.makedirs(STORE)
    with tempfile.TemporaryDirectory() as tmp:
        big_path = os.path.join(tmp, "big.img")
        with open(big_path, "wb") as f:
            f.write(big_image())
        # --block-size belongs to the top-level parser, before `import`.
        run(tool, "--block-size", str(SMALL_BLOCK), "import",
            os.path.join(HERE, "small.img"),
            "--as", "golden:/dev/vda", "--date", "2026-04-24T10:00:00+00:00")
        run(tool, "import", big_path,
            "--as", "golden:/dev/vda", "--date", "2026-04-25")

        # The real restore gives the images back.
        for version, image in ((0, small), (1, big_image())):
            out = os.path.join(tmp, f"restored-{version}.img")
            run(tool, "restore", f"golden.vda/{version}.manifest", "-o", out)
            with open(out, "rb") as f:
                assert f.read() == image, f"restore of manifest {version} differs"

    # The SQLite index of stored blocks is a cache that `diskdump reindex`
    # rebuilds from the block files; readers do not need it, and its bytes
    # depend on the SQLite version.
    os.remove(os.path.join(STORE, ".blockstore", "blocks.db"))

    base = os.path.join(STORE, ".blockstore")
    with open(os.path.join(base, "config.json")) as f:
        config = json.load(f)
    # The first import created the store: its block size stays in the config.
    assert config == {"block_size": 4096, "hash_algo": "sha256", "version": 1}, config

    frames = {}
    for root, _dirs, files in os.walk(base):
        for name in files:
            if name.endswith(".lz4"):
                with open(os.path.join(root, name), "rb") as f:
                    frames[name[:-4]] = frame_blocks(f.read())
    # small: text, zeros, noise, tail; big: text, zeros, tail.
    assert len(frames) == 7, sorted(frames)
    for data in (*split(small_image(), SMALL_BLOCK), *split(big_image(), 131072)):
        flg, sizes = frames[hashlib.sha256(data).hexdigest()]
        # One 64 KiB lz4 block: independent (FLG bit 5); more: linked.
        assert flg == (0x68 if len(data) <= 65536 else 0x48), (len(data), hex(flg))
        assert len(sizes) == -(-len(data) // 65536), (len(data), sizes)
    flg, sizes = frames[hashlib.sha256(big_image()[:131072]).hexdigest()]
    # Independent blocks would take about as much as the first one.
    assert sizes[1] < 1000, sizes


def split(image: bytes, block_size: int) -> list:
    return [image[i:i + block_size] for i in range(0, len(image), block_size)]


if __name__ == "__main__":
    main()
