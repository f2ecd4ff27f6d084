#!/usr/bin/env python3
"""Writes the client sides of NBD sessions that seed the nbd_server fuzz
target (fuzz/fuzz_targets/nbd_server.rs; scripts/fuzz puts the target's
mode byte in front). Encoded from the protocol document, independently of
src/nbd/proto.rs. Run here: python3 make.py

- session-read.bin: fixed newstyle + no zeroes, LIST, STRUCTURED_REPLY,
  LIST_META_CONTEXT and SET_META_CONTEXT base:allocation, INFO, GO "disk";
  then READ, BLOCK_STATUS, CACHE, FLUSH, a READ past the end, DISC.
- session-write.bin: GO "disk" without structured replies; WRITE (with FUA),
  WRITE_ZEROES, TRIM, READ, FLUSH, DISC.
- session-export-name.bin: the old EXPORT_NAME option, then READ and DISC.
"""
import struct

OPTS = 0x49484156454F5054
REQ = 0x25609513


def opt(o, payload=b""):
    return struct.pack(">QII", OPTS, o, len(payload)) + payload


def s32(s):
    return struct.pack(">I", len(s)) + s


def req(cmd, cookie, off, length, flags=0, payload=b""):
    return struct.pack(">IHHQQI", REQ, flags, cmd, cookie, off, length) + payload


hello = struct.pack(">I", 3)
meta = s32(b"disk") + struct.pack(">I", 1) + s32(b"base:allocation")
info = s32(b"disk") + struct.pack(">HHH", 2, 1, 2)
read = (hello + opt(3) + opt(8) + opt(9, meta) + opt(10, meta) + opt(6, info)
        + opt(7, s32(b"disk") + struct.pack(">H", 0))
        + req(0, 1, 0, 4096) + req(7, 2, 0, 65536) + req(5, 3, 4096, 8192)
        + req(3, 4, 0, 0) + req(0, 5, 65000, 4096) + req(2, 6, 0, 0))
write = (hello + opt(7, s32(b"disk") + struct.pack(">H", 0))
         + req(1, 1, 100, 16, flags=1, payload=b"\x41" * 16)
         + req(6, 2, 4096, 4096) + req(4, 3, 8192, 4096)
         + req(0, 4, 0, 512) + req(3, 5, 0, 0) + req(2, 6, 0, 0))
export_name = hello + opt(1, b"disk") + req(0, 1, 0, 512) + req(2, 2, 0, 0)
for name, data in [("session-read.bin", read), ("session-write.bin", write),
                   ("session-export-name.bin", export_name)]:
    open(name, "wb").write(data)
