#!/usr/bin/python3
"""Check versioned blocks after a crash against the writers' logs.

    versioned_check.py --uri URI --log LOG [--log LOG ...]

For every LBA a log mentions, the block read back must be intact, name that LBA,
and hold a version that was submitted for it and is not older than the newest one
logged durable. An LBA never made durable may also read as zeroes.
Prints a JSON summary; exit 1 on any violation.
"""

import argparse
import json
import os
import sys

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vblock  # noqa: E402

BATCH = 64


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--uri", required=True)
    p.add_argument("--log", action="append", required=True)
    a = p.parse_args()
    issued, durable = vblock.read_logs(a.log)
    h = nbd.NBD()
    h.connect_uri(a.uri)
    lbas = sorted(issued)
    stats = {"lbas": len(lbas), "durable_lbas": len(durable), "newer_than_durable": 0,
             "zero": 0, "violations": 0}
    violations = []
    for i in range(0, len(lbas), BATCH):
        batch = lbas[i:i + BATCH]
        bufs = {}
        for lba in batch:
            buf = nbd.Buffer(vblock.BLOCK)
            bufs[lba] = (h.aio_pread(buf, lba * vblock.BLOCK), buf)
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for lba in batch:
            cookie, buf = bufs[lba]
            h.aio_command_completed(cookie)
            kind, x, seq = vblock.parse(buf.to_bytearray())
            need = durable.get(lba)
            problem = None
            if kind == "zero":
                stats["zero"] += 1
                if need is not None:
                    problem = "reads zeroes, durable version %d lost" % need
            elif kind == "corrupt":
                problem = "corrupt block: %s" % x
            elif x != lba:
                problem = "holds the block of LBA %d" % x
            elif seq not in issued[lba]:
                problem = "holds version %d never submitted for it" % seq
            elif need is not None and seq < need:
                problem = "holds version %d, older than durable version %d" % (seq, need)
            elif need is not None and seq > need:
                stats["newer_than_durable"] += 1
            if problem:
                violations.append("LBA %d: %s" % (lba, problem))
    stats["violations"] = len(violations)
    print(json.dumps(stats), flush=True)
    for v in violations[:50]:
        print("VIOLATION " + v)
    sys.exit(1 if violations else 0)


if __name__ == "__main__":
    main()
