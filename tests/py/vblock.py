"""Versioned 4 KiB blocks: each block says which LBA and which write (sequence
number) it is, and carries a SHA-256 of itself, so a reader can tell a block that
is intact and which version it holds, from one that is stale, misplaced or torn.

Layout (big-endian):
    0..8      b"HASTVBLK"
    8..16     LBA (block number)
    16..24    sequence number of the write
    24..4064  filler derived from (LBA, sequence)
    4064..4096 SHA-256 of bytes 0..4064
"""

import hashlib
import struct

BLOCK = 4096
MAGIC = b"HASTVBLK"
_BODY = BLOCK - 32
ZERO = bytes(BLOCK)


def make(lba, seq):
    head = MAGIC + struct.pack(">QQ", lba, seq)
    filler = (hashlib.sha256(head).digest() * (_BODY // 32 + 1))[:_BODY - len(head)]
    body = head + filler
    assert len(body) == _BODY
    return body + hashlib.sha256(body).digest()


def parse(block):
    """Returns ("zero", None, None), ("ok", lba, seq) or ("corrupt", reason, None)."""
    if len(block) != BLOCK:
        return ("corrupt", "length %d" % len(block), None)
    if block == ZERO:
        return ("zero", None, None)
    body, digest = block[:_BODY], block[_BODY:]
    if body[:8] != MAGIC:
        return ("corrupt", "no magic", None)
    if hashlib.sha256(body).digest() != digest:
        return ("corrupt", "checksum mismatch", None)
    lba, seq = struct.unpack(">QQ", body[8:24])
    if make(lba, seq) != block:
        return ("corrupt", "filler mismatch", None)
    return ("ok", lba, seq)


def read_logs(paths):
    """Parse writer logs: returns (issued: lba -> set(seq), durable: lba -> max seq).
    Lines: "I lba seq" (submitted), "D lba seq" (acknowledged durable: with FUA, or
    acknowledged before a FLUSH that completed). A torn last line is ignored."""
    issued, durable = {}, {}
    for path in paths:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) != 3 or not line.endswith("\n"):
                    continue
                kind, lba, seq = parts[0], int(parts[1]), int(parts[2])
                if kind == "I":
                    issued.setdefault(lba, set()).add(seq)
                elif kind == "D":
                    durable[lba] = max(durable.get(lba, -1), seq)
    return issued, durable
