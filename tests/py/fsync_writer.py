#!/usr/bin/python3
"""Create files with known contents in a mounted filesystem, fsync each one and
its directory, and log every file made durable, every error and when each
operation ran: the workload of the connector's promise (tests/connector.rs).

    fsync_writer.py --dir DIR --log FILE [--stop-file PATH] [--seed 0]
                    [--min-size 512] [--max-size 32768] [--keep 1500]
                    [--files-per-dir 200] [--duration 600] [--errors-max 50]

One operation: open DIR/dNNNN/fNNNNNNN with O_CREAT|O_EXCL, write random bytes,
fsync the file, close it, fsync its directory (and the top directory when the
subdirectory is new). Once more than --keep files are live, the oldest is
unlinked and its directory fsynced, so a long run does not fill the
filesystem. Log (appended, flushed after every line; t = time.time()):

    ok <t_start> <t_end> <relpath> <size> <sha256>   durable from t_end on
    rm <t_start> <t_end> <relpath>                   unlinked, directory fsynced
    error <t> <relpath> <errno-name> <message>       the operation failed

An error does not stop the writer (the test must see every one, and the time
I/O came back if it does): it waits 100 ms and goes on with a new file; after
--errors-max errors it exits 1. Stops at --duration or once --stop-file
exists, and prints one JSON line: files, removed, errors, the longest single
operation (max_op_s) and the longest time between two completed operations
(max_gap_s). Exit 0 without errors, 1 with any, 2 for a usage error.
"""

import argparse
import errno
import hashlib
import json
import os
import random
import sys
import time

ERROR_PAUSE_S = 0.1


def errname(e):
    return errno.errorcode.get(e.errno, "EUNKNOWN") if e.errno else "EUNKNOWN"


def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Log:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)

    def line(self, *fields):
        self.f.write(" ".join(str(x) for x in fields) + "\n")
        self.f.flush()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--stop-file")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-size", type=int, default=512)
    p.add_argument("--max-size", type=int, default=32768)
    p.add_argument("--keep", type=int, default=1500)
    p.add_argument("--files-per-dir", type=int, default=200)
    p.add_argument("--duration", type=float, default=600.0)
    p.add_argument("--errors-max", type=int, default=50)
    a = p.parse_args()
    if a.min_size < 0 or a.max_size < a.min_size or a.keep < 1 or a.files_per_dir < 1:
        print("fsync_writer: bad sizes or counts", file=sys.stderr)
        return 2

    rng = random.Random(a.seed)
    log = Log(a.log)
    live = []          # relpaths, oldest first
    n = files = removed = errors = 0
    max_op = max_gap = 0.0
    last_done = time.time()
    end = time.monotonic() + a.duration

    def done(t_end):
        nonlocal last_done, max_gap
        max_gap = max(max_gap, t_end - last_done)
        last_done = t_end

    while time.monotonic() < end and errors < a.errors_max:
        if a.stop_file and os.path.exists(a.stop_file):
            break
        if len(live) > a.keep:
            rel = live[0]
            t0 = time.time()
            try:
                os.unlink(os.path.join(a.dir, rel))
                fsync_dir(os.path.join(a.dir, os.path.dirname(rel)))
            except OSError as e:
                errors += 1
                log.line("error", time.time(), rel, errname(e), str(e).replace("\n", " "))
                time.sleep(ERROR_PAUSE_S)
                continue
            t1 = time.time()
            live.pop(0)
            removed += 1
            log.line("rm", t0, t1, rel)
            max_op = max(max_op, t1 - t0)
            done(t1)
            continue
        sub = "d%04d" % (n // a.files_per_dir)
        rel = "%s/f%07d" % (sub, n)
        n += 1
        size = rng.randint(a.min_size, a.max_size)
        data = rng.randbytes(size)
        t0 = time.time()
        try:
            d = os.path.join(a.dir, sub)
            new_dir = not os.path.isdir(d)
            if new_dir:
                os.mkdir(d)
            fd = os.open(os.path.join(a.dir, rel), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(d)
            if new_dir:
                fsync_dir(a.dir)
        except OSError as e:
            errors += 1
            log.line("error", time.time(), rel, errname(e), str(e).replace("\n", " "))
            time.sleep(ERROR_PAUSE_S)
            continue
        t1 = time.time()
        live.append(rel)
        files += 1
        log.line("ok", t0, t1, rel, size, hashlib.sha256(data).hexdigest())
        max_op = max(max_op, t1 - t0)
        done(t1)

    print(json.dumps({"files": files, "removed": removed, "errors": errors,
                      "live": len(live), "max_op_s": round(max_op, 3),
                      "max_gap_s": round(max_gap, 3)}))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
