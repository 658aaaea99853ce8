#!/usr/bin/python3
"""Write and read back one 4 KiB block at a time through an NBD URI, for ever
(until --stop-file exists or --duration passes), logging each outcome: the
probe of tests/connector.rs for what a client of hastcd's endpoint sees while
the cluster behind it comes and goes.

    endpoint_io.py --uri URI --log FILE [--stop-file PATH] [--duration 300]
                   [--interval 0.1] [--blocks 256] [--first-lba 0]

One round: write a block made of (round number, time) at the next LBA of the
range, with FUA, then read it back and compare. Log lines (flushed at once;
t = time.time()):

    connect <t>                      a connection (first, or after a loss)
    ok <t_start> <t_end>             the round wrote and read back its block
    err <t_start> <t_end> <ERRNO>    the server answered a request with an error
    mismatch <t> <lba>               the block read back is not the one written
    lost <t> <message>               the connection broke; reconnecting

Rounds follow each other after --interval (also after an error, so a server
failing fast does not flood the log). Prints one JSON line at the end:
rounds, ok, errors by errno name, connections, mismatches. Exit 0 unless a
mismatch was seen (1) or the arguments were bad (2).
"""

import argparse
import errno
import json
import os
import struct
import sys
import time

import nbd

BLOCK = 4096
RECONNECT_S = 0.2


def errname(e):
    n = getattr(e, "errnum", None)
    if isinstance(n, int) and n in errno.errorcode:
        return errno.errorcode[n]
    return "EUNKNOWN"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--uri", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--stop-file")
    p.add_argument("--duration", type=float, default=300.0)
    p.add_argument("--interval", type=float, default=0.1)
    p.add_argument("--blocks", type=int, default=256)
    p.add_argument("--first-lba", type=int, default=0)
    a = p.parse_args()
    if a.blocks < 1 or a.interval < 0:
        return 2
    log = open(a.log, "a", buffering=1)

    def line(*f):
        log.write(" ".join(str(x) for x in f) + "\n")
        log.flush()

    end = time.monotonic() + a.duration
    h = None
    rounds = oks = conns = mismatches = 0
    errors = {}
    while time.monotonic() < end:
        if a.stop_file and os.path.exists(a.stop_file):
            break
        if h is None:
            try:
                h = nbd.NBD()
                h.connect_uri(a.uri)
                conns += 1
                line("connect", time.time())
            except nbd.Error as e:
                h = None
                line("lost", time.time(), str(e).replace("\n", " "))
                time.sleep(RECONNECT_S)
                continue
        lba = a.first_lba + rounds % a.blocks
        data = (struct.pack(">Qd", rounds, time.time()) * (BLOCK // 16))[:BLOCK]
        rounds += 1
        t0 = time.time()
        try:
            h.pwrite(data, lba * BLOCK, nbd.CMD_FLAG_FUA)
            got = h.pread(BLOCK, lba * BLOCK)
            if got != data:
                mismatches += 1
                line("mismatch", time.time(), lba)
            else:
                oks += 1
                line("ok", t0, time.time())
        except nbd.Error as e:
            # A dead connection shows as an error too: tell them apart.
            alive = True
            try:
                alive = not h.aio_is_dead() and not h.aio_is_closed()
            except nbd.Error:
                alive = False
            if alive:
                name = errname(e)
                errors[name] = errors.get(name, 0) + 1
                line("err", t0, time.time(), name)
            else:
                line("lost", time.time(), str(e).replace("\n", " "))
                h = None
        time.sleep(a.interval)
    print(json.dumps({"rounds": rounds, "ok": oks, "errors": errors,
                      "connections": conns, "mismatches": mismatches}))
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
