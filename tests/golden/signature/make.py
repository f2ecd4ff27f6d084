#!/usr/bin/env python3
"""Makes the signature golden files from the delta goldens' images.

Run from anywhere after `cargo build`; it uses target/debug/diskdelta.
Pinned forever: running it again must leave `git status` clean.
"""
import json
import pathlib
import subprocess

here = pathlib.Path(__file__).resolve().parent
root = here.parent.parent.parent
exe = root / "target" / "debug" / "diskdelta"
old = here.parent / "delta" / "old.img"


def run(args, **kw):
    subprocess.run([str(exe), *args], check=True, **kw)


# Fixed seeds (a hidden option): signatures otherwise get a random one.
run(["signature", "-q", "-b", "512", "--seed", "1", str(old), "-o", str(here / "old-512.sig")])
with open(old, "rb") as src, open(here / "old-pipe-1k.sig", "wb") as out:
    # From a pipe: the header carries no image size.
    cat = subprocess.Popen(["cat"], stdin=src, stdout=subprocess.PIPE)
    run(["signature", "-q", "-b", "1K", "--seed", "18446744073709551557", "-"],
        stdin=cat.stdout, stdout=out)
    cat.wait()
for name, block in [("old-512.sig", 512), ("old-pipe-1k.sig", 1024)]:
    summary = {
        "image": "../delta/old.img",
        "image_size": old.stat().st_size,
        "block_size": block,
        "blocks": -(-old.stat().st_size // block),
        "signature_bytes": (here / name).stat().st_size,
    }
    (here / name.replace(".sig", ".json")).write_text(json.dumps(summary, indent=2) + "\n")
