#!/usr/bin/env python3
"""Writes v1.ovl, the golden overlay of format version 1, from the spec in
docs/formats/overlay.md (an implementation independent of the Rust one).

An overlay of a 16 KiB image in 4 KiB blocks, belonging to the snapshot
whose id is 32 bytes of 0xab. Slot 0 holds generation 1 (block 1 written),
slot 1 generation 2 (blocks 1 and 3 written): the reader must pick slot 1.
Block 1 is 0x11 bytes, block 3 0xff bytes; blocks 0 and 2 are holes.

Needs python3 with the blake3 module (pip install blake3).
"""
import struct
import blake3

SIZE, BLOCK = 16 * 1024, 4096
SNAP = b"\xab" * 32
blocks = -(-SIZE // BLOCK)
map_len = -(-blocks // 8)
slot_len = -(-(128 + map_len) // 4096) * 4096
data_offset = -(-(2 * slot_len) // BLOCK) * BLOCK


def slot(generation, written):
    bitmap = bytearray(map_len)
    for i in written:
        bitmap[i // 8] |= 1 << (i % 8)
    head = b"DDLTOVL\0" + struct.pack("<IIQ", 1, BLOCK, SIZE) + SNAP
    head += struct.pack("<QQ", generation, data_offset) + bytes(24)
    assert len(head) == 96
    out = head + blake3.blake3(head + bytes(bitmap)).digest() + bytes(bitmap)
    return out + bytes(slot_len - len(out))


f = bytearray(data_offset + blocks * BLOCK)
f[0:slot_len] = slot(1, [1])
f[slot_len:2 * slot_len] = slot(2, [1, 3])
f[data_offset + BLOCK:data_offset + 2 * BLOCK] = b"\x11" * BLOCK
f[data_offset + 3 * BLOCK:data_offset + 4 * BLOCK] = b"\xff" * BLOCK
open("v1.ovl", "wb").write(f)
