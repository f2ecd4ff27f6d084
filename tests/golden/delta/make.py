#!/usr/bin/env python3
"""Makes the golden files of the native delta format, versions 1, 2 and 3.

Usage (from the repository root, after `cargo build`):

    python3 tests/golden/delta/make.py [path/to/diskdelta]

The default executable is `target/debug/diskdelta`. The inputs (`*.img`)
are made here from SHA-256 in counter mode; the deltas (`*.delta`) are the
real output of `diskdelta diff` on them. Every `*.delta` also gets a
`*.json` description written by the independent parser at the end of this
script (it follows `docs/formats/delta.md`, checks every structural rule
it can without BLAKE3 or zstd, checks every copy record's bytes against
OLD and NEW, and rebuilds NEW from OLD where the records are raw, zero or
copy), and the smallest one a `*.hex` dump.

Everything is deterministic: running this again with the same zstd must
give identical files (check with `git status`). The files are pinned
forever: once committed, a reader that stops decoding one of them is a
regression; a format change adds new files, it never rewrites these.
"""

import hashlib
import json
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(HERE)))

TINY_TAIL = b"diskdelta v1 golden: the NEW tail\n"  # 34 bytes
TEXT = b"diskdelta golden: a compressible line of text. "
V3_BLOCK = 1024  # the block size of the version 3 pair (`-b 1K`)


def stream(label, n):
    """n deterministic pseudo-random bytes (SHA-256 in counter mode)."""
    out = b"".join(
        hashlib.sha256(b"%s %d" % (label, i)).digest() for i in range((n + 31) // 32)
    )
    return out[:n]


def make_inputs():
    """The images, by name. See README.md for what differs where."""
    old = stream(b"diskdelta delta golden old", 6000)

    grown = bytearray(old)
    grown[700] ^= 0x01  # one bit in block 1 (512-byte blocks)
    grown[2000:2600] = stream(b"diskdelta delta golden grown run", 600)
    grown += stream(b"diskdelta delta golden grown tail", 1000)  # 6000..7000
    grown += bytes(680)  # 7000..7680: zeros, as zero-extension gives

    shrunk = bytearray(old[:4500])  # 1 KiB blocks: 0..3 full, 4 short
    shrunk[1024:2048] = bytes(1024)  # block 1 zeroed
    shrunk[2048:3072] = (TEXT * 22)[:1024]  # block 2: compresses
    shrunk[4200] ^= 0xFF  # block 4 (4096..4500): random, does not compress

    tiny_old = stream(b"diskdelta delta golden tiny old", 1024 + len(TINY_TAIL))
    tiny_new = tiny_old[:512] + bytes(512) + TINY_TAIL

    # Version 3: moved blocks. OLD's blocks 7 and 8 (1 KiB) move to 20 and
    # 21, whose OLD content moves on to 40 and 41; the blocks left behind
    # (7, 8) and 42, 43 are freed (zeros); one bit flips in block 1 and a
    # text tail grows NEW. Changes lie more than 16 KiB apart, or are
    # separated by zeros, so that the writer does not join them.
    b = V3_BLOCK
    v3_old = stream(b"diskdelta delta golden v3 old", 44 * b)
    v3_new = bytearray(v3_old)
    v3_new[b + 76] ^= 0x01  # byte 1100, block 1
    v3_new[7 * b : 9 * b] = bytes(2 * b)  # blocks 7, 8 freed
    v3_new[20 * b : 22 * b] = v3_old[7 * b : 9 * b]  # 7, 8 moved to 20, 21
    v3_new[40 * b : 42 * b] = v3_old[20 * b : 22 * b]  # 20, 21 moved to 40, 41
    v3_new[42 * b : 44 * b] = bytes(2 * b)  # blocks 42, 43 freed
    v3_new += (TEXT * 22)[:1000]  # 45056..46056: compresses, past OLD's end

    return {
        "old.img": old,
        "new-grown.img": bytes(grown),
        "new-shrunk.img": bytes(shrunk),
        "tiny-old.img": tiny_old,
        "tiny-new.img": tiny_new,
        # What a change tracker reports for the tiny pair: the zeroed
        # block and the tail.
        "tiny-ranges.txt": b"512 546\n",
        "v3-old.img": v3_old,
        "v3-new.img": bytes(v3_new),
    }


# (delta, OLD, NEW, diff options, NEW from a pipe and the delta to a pipe).
# Version 1 files were made when version 1 was the default; they are made
# with `--format diskdelta-v1` now (not shown in their "made_by", which is
# the command of the time).
V1_FORMAT = ["--format", "diskdelta-v1"]
DELTAS = [
    ("tiny-none.delta", "tiny-old.img", "tiny-new.img", ["-b", "512", "--compress", "none"], False),
    ("grown-none.delta", "old.img", "new-grown.img", ["-b", "512", "--compress", "none"], False),
    ("shrunk-zstd.delta", "old.img", "new-shrunk.img", ["-b", "1K"], False),
    ("grown-pipe-zstd.delta", "old.img", "new-grown.img", ["-b", "512"], True),
    # Change-tracked: OLD is not read; no OLD digest, NEW digest all zero.
    (
        "tiny-tracked-none.delta",
        "tiny-old.img",
        "tiny-new.img",
        ["-b", "512", "--compress", "none", "--changed-ranges", os.path.join(HERE, "tiny-ranges.txt")],
        False,
    ),
]
# Version 2: records compressed against OLD ("zstd-ref"). Made when
# version 2 was the default; made with `--format diskdelta-v2` now.
V2_FORMAT = ["--format", "diskdelta-v2"]
DELTAS_V2 = [
    # Byte 700 flipped in random data: only OLD makes it compressible.
    ("v2-grown-zstd.delta", "old.img", "new-grown.img", ["-b", "512"], False),
    # A zero, a plain zstd (text over random OLD) and a zstd-ref record.
    ("v2-shrunk-zstd.delta", "old.img", "new-shrunk.img", ["-b", "1K"], False),
]
# Version 3 (the default): copy records, for blocks NEW holds that OLD has
# at another offset.
DELTAS_V3 = [
    # Two copies (20 <- 7, 40 <- 20: the second reads OLD's block 20, which
    # the first overwrites), zeros, a zstd-ref and a zstd record.
    ("v3-moved-zstd.delta", "v3-old.img", "v3-new.img", ["-b", "1K"], False),
]


def run_diff(exe, name, old, new, options, piped):
    path = os.path.join(HERE, name)
    old_path = os.path.join(HERE, old)
    new_path = os.path.join(HERE, new)
    if piped:
        # `cat NEW | diskdelta diff OLD - > DELTA`: NEW comes from a pipe, so
        # its size is unknown when the header is written, and the delta goes
        # to a pipe (subprocess.PIPE), not to a file.
        with open(new_path, "rb") as f:
            data = f.read()
        out = subprocess.run(
            [exe, "diff", "-q", *options, old_path, "-"],
            input=data,
            stdout=subprocess.PIPE,
            check=True,
        ).stdout
        with open(path, "wb") as f:
            f.write(out)
    else:
        if os.path.exists(path):
            os.remove(path)
        inputs = [new_path] if "--changed-ranges" in options else [old_path, new_path]
        subprocess.run([exe, "diff", "-q", *options, *inputs, "-o", path], check=True)
    with open(path, "rb") as f:
        return f.read()


# --- An independent parser of the format (docs/formats/delta.md) ---------

KINDS = {1: "raw", 2: "zstd", 3: "zero", 4: "zstd-ref", 5: "copy", 255: "end"}
WINDOW = 1 << 20
MAX_RECORD_LEN = 16 << 20
FLAG_COPIES = 8


def describe(delta, old, new):
    """The delta's fields as a dict; asserts the structural rules, checks
    copy records against OLD and NEW, and rebuilds NEW from OLD when no
    record is zstd."""
    assert delta[0:8] == b"DSKDELTA", "magic"
    version, header_len, flags, block_size, reserved = struct.unpack_from("<HHIII", delta, 8)
    old_size, new_size = struct.unpack_from("<QQ", delta, 24)
    assert version in (1, 2, 3) and header_len == 64, "version/header length"
    assert flags & ~(15 if version == 3 else 7) == 0, "unknown flags"
    assert block_size >= 512 and block_size & (block_size - 1) == 0, "block size"
    assert reserved == 0 and delta[40:56] == bytes(16), "reserved"
    assert flags & 1 or old_size == 0
    assert flags & 2 or new_size == 0
    header = {
        "version": version,
        "header_length": header_len,
        "flags": flags,
        "block_size": block_size,
        "old_size": old_size if flags & 1 else None,
        "new_size": new_size if flags & 2 else None,
        "change_tracked": bool(flags & 4),
        "header_check": delta[56:64].hex(),
    }
    if version == 3:
        header["copies"] = bool(flags & FLAG_COPIES)
    pos = 64
    records = []
    last_end = 0
    while True:
        kind, r1, r2, r3, stored = struct.unpack_from("<BBBBI", delta, pos)
        offset, length = struct.unpack_from("<QQ", delta, pos + 8)
        checksum = delta[pos + 24 : pos + 56]
        assert (r1, r2, r3) == (0, 0, 0), "record reserved"
        entry = {
            "at": pos,
            "kind": KINDS[kind],
            "stored_length": stored,
            "offset": offset,
            "length": length,
            "checksum": checksum.hex(),
        }
        payload = delta[pos + 56 : pos + 56 + stored]
        assert len(payload) == stored, "truncated"
        pos += 56 + stored
        if kind == 255:
            assert offset == 0 and length == 0
            end_record = entry
            break
        assert length > 0 and offset >= last_end, "order"
        assert kind != 1 or stored == length
        assert kind != 2 or 0 < stored < length
        assert kind != 3 or stored == 0
        assert kind != 4 or (version >= 2 and 0 < stored < length)
        assert kind != 4 or offset // WINDOW == (offset + length - 1) // WINDOW, "window"
        assert kind != 5 or version == 3, "unknown record kind 5"
        assert kind != 5 or flags & FLAG_COPIES, "copy record without the flag"
        assert kind != 5 or stored == 8, "copy payload"
        assert kind == 3 or length <= MAX_RECORD_LEN, "record length"
        if kind == 5:
            (source,) = struct.unpack_from("<Q", payload, 0)
            assert source + length < 1 << 64 and (not flags & 1 or source + length <= old_size)
            # OLD before any record of the delta: the copied bytes are
            # OLD's at the source, and they are NEW's at the offset.
            assert source + length <= len(old), "copy past OLD's end"
            assert old[source : source + length] == new[offset : offset + length], "copy bytes"
            entry["source"] = source
        last_end = offset + length
        entry["payload"] = payload
        records.append(entry)
    assert pos == len(delta), "trailing data"
    body = delta[end_record["at"] + 56 :]
    t_old, t_new, count, changed, stored_sum = struct.unpack_from("<QQQQQ", body, 0)
    samples_n, t_reserved = struct.unpack_from("<II", body, 168)
    assert len(body) == 176 + 40 * samples_n and t_reserved == 0
    assert count == len(records)
    assert changed == sum(r["length"] for r in records)
    assert stored_sum == sum(r["stored_length"] for r in records)
    assert header["old_size"] in (None, t_old) and header["new_size"] in (None, t_new)
    assert last_end <= t_new
    assert all(r.get("source", 0) + r["length"] <= t_old for r in records if r["kind"] == "copy")
    samples = []
    for i in range(samples_n):
        at = 176 + 40 * i
        (block,) = struct.unpack_from("<Q", body, at)
        digest = body[at + 8 : at + 40]
        samples.append({"block": block, "blake3": digest.hex()})
    trailer = {
        "old_size": t_old,
        "new_size": t_new,
        "record_count": count,
        "changed_bytes": changed,
        "stored_bytes": stored_sum,
        "old_digest": body[40:72].hex(),
        "new_digest": body[72:104].hex(),
        "records_digest": body[104:136].hex(),
        "header_digest": body[136:168].hex(),
        "samples": samples,
    }
    rebuilt = None
    if all(r["kind"] not in ("zstd", "zstd-ref") for r in records):
        new = bytearray(old[:t_new]) + bytes(max(0, t_new - len(old)))
        for r in records:
            if r["kind"] == "raw":
                data = r["payload"]
            elif r["kind"] == "copy":
                data = old[r["source"] : r["source"] + r["length"]]  # OLD, not `new`
            else:
                data = bytes(r["length"])
            new[r["offset"] : r["offset"] + r["length"]] = data
        rebuilt = bytes(new)
    for r in records:
        del r["payload"]
    end_record["trailer_length"] = end_record.pop("stored_length")
    return {
        "size": len(delta),
        "header": header,
        "records": records,
        "end_record": end_record,
        "trailer": trailer,
    }, rebuilt


def hexdump(data):
    lines = []
    for at in range(0, len(data), 16):
        row = data[at : at + 16]
        left = " ".join("%02x" % b for b in row[:8])
        right = " ".join("%02x" % b for b in row[8:])
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append("%08x  %-23s  %-23s  |%s|" % (at, left, right, text))
    return "\n".join(lines) + "\n"


def write(name, data):
    mode = "w" if isinstance(data, str) else "wb"
    with open(os.path.join(HERE, name), mode) as f:
        f.write(data)


def main():
    if len(sys.argv) > 2:
        sys.exit(__doc__)
    exe = sys.argv[1] if len(sys.argv) == 2 else os.path.join(ROOT, "target/debug/diskdelta")
    images = make_inputs()
    for name, data in images.items():
        write(name, data)
    made = (
        [(d, V1_FORMAT) for d in DELTAS]
        + [(d, V2_FORMAT) for d in DELTAS_V2]
        + [(d, []) for d in DELTAS_V3]
    )
    for (name, old, new, options, piped), hidden in made:
        delta = run_diff(exe, name, old, new, options + hidden, piped)
        desc, rebuilt = describe(delta, images[old], images[new])
        shown = [os.path.basename(o) if o.startswith(HERE) else o for o in options]
        desc = {
            "made_by": "diskdelta diff %s%s"
            % (
                "" if not piped else "(NEW from a pipe, delta to a pipe) ",
                " ".join(
                    shown
                    + ([] if "--changed-ranges" in options else [old])
                    + ["-" if piped else new]
                ),
            ),
            "old": old,
            "new": new,
            **desc,
        }
        if rebuilt is not None and rebuilt != images[new]:
            sys.exit("%s: OLD + records is not NEW" % name)
        stem = name[: -len(".delta")]
        write(stem + ".json", json.dumps(desc, indent=1) + "\n")
        if name == "tiny-none.delta":
            write(stem + ".hex", hexdump(delta))


if __name__ == "__main__":
    main()
