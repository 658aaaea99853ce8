#!/usr/bin/python3
"""Write versioned blocks (see vblock.py) with many requests in flight, some with
FUA, with a FLUSH every few hundred writes, and log which writes are durable.

    versioned_writer.py --uri URI --first-lba A --blocks N --log LOG --seq-base B
                        [--seed S] [--inflight 64] [--fua-one-in 8]
                        [--flush-every 256] [--duration 120]
                        [--ack-is-durable] [--stop-file PATH]

Log lines (appended, fsync'd after each batch of completions):
    I lba seq   the write was submitted (written before submission)
    D lba seq   the write is durable: acknowledged with FUA, or acknowledged before
                a FLUSH was sent that then completed successfully
With --ack-is-durable every acknowledged write is logged D: for tests where an
acknowledgement must survive (fullsync failover, a killed process whose page cache
survives). --stop-file ends the run (as the deadline does) once PATH exists.
At most one write per LBA is in flight, so after a crash an LBA must hold its
newest durable version or a later submitted one, never older, never torn.

Runs until --duration or until the server goes away (the test kills it), then
prints a JSON summary. Exit 0 when the connection was lost or the time ran out;
exit 2 if the server answered a request with an error while still connected.
"""

import argparse
import errno
import json
import os
import random
import sys
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vblock  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--uri", required=True)
    p.add_argument("--first-lba", type=int, required=True)
    p.add_argument("--blocks", type=int, required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--seq-base", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inflight", type=int, default=64)
    p.add_argument("--fua-one-in", type=int, default=8)
    p.add_argument("--flush-every", type=int, default=256)
    p.add_argument("--duration", type=float, default=120.0)
    p.add_argument("--ack-is-durable", action="store_true")
    p.add_argument("--stop-file")
    a = p.parse_args()

    rng = random.Random(a.seed)
    h = nbd.NBD()
    h.connect_uri(a.uri)
    log = open(a.log, "a")
    summary = {"issued": 0, "acked": 0, "durable": 0, "flushes": 0, "fua": 0, "end": None,
               "max_latency_s": 0.0}
    submitted = {}       # cookie -> submission time (monotonic)

    inflight = {}        # cookie -> (lba, seq, fua, buf)
    flushes = {}         # cookie -> {lba: seq} covered by that flush
    acked = {}           # lba -> seq acknowledged without FUA since the last FLUSH was sent
    busy = set()
    seq = a.seq_base
    since_flush = 0
    deadline = time.monotonic() + a.duration
    server_error = None

    def sync_log():
        log.flush()
        os.fsync(log.fileno())

    def lost(err):
        """A command failed because the connection went away, not by a reply.

        libnbd retires everything in flight with ENOTCONN when the server
        closes (CLOSED) or the socket breaks (DEAD); either may be seen first.
        """
        # nbd.Error.errno is the symbolic name ("ENOTCONN") in libnbd's
        # Python binding; accept the number too.
        code = getattr(err, "errno", None)
        return (h.aio_is_dead() or h.aio_is_closed()
                or code in ("ENOTCONN", errno.ENOTCONN))

    def retire():
        """Retire completed commands; returns False once the connection is gone."""
        nonlocal server_error
        wrote = False
        while inflight or flushes:
            try:
                k = h.aio_peek_command_completed()
            except nbd.Error:
                break
            if k <= 0:
                break
            try:
                ok = h.aio_command_completed(k)
                err = None
            except nbd.Error as e:
                ok, err = False, e
            t_sub = submitted.pop(k, None)
            if ok and t_sub is not None:
                summary["max_latency_s"] = max(summary["max_latency_s"],
                                               time.monotonic() - t_sub)
            if k in inflight:
                lba, s, fua, _buf = inflight.pop(k)
                busy.discard(lba)
                if ok:
                    summary["acked"] += 1
                    if fua or a.ack_is_durable:
                        log.write("D %d %d\n" % (lba, s))
                        summary["durable"] += 1
                        wrote = True
                    else:
                        acked[lba] = s
                elif not lost(err) and server_error is None:
                    server_error = "write lba %d: %s" % (lba, err)
            elif k in flushes:
                covered = flushes.pop(k)
                if ok:
                    summary["flushes"] += 1
                    for lba, s in covered.items():
                        log.write("D %d %d\n" % (lba, s))
                    summary["durable"] += len(covered)
                    wrote = True
                elif not lost(err) and server_error is None:
                    server_error = "flush: %s" % err
        if wrote:
            sync_log()
        return not (h.aio_is_dead() or h.aio_is_closed())

    try:
        while (time.monotonic() < deadline and server_error is None
               and not (a.stop_file and os.path.exists(a.stop_file))):
            while len(inflight) < a.inflight:
                lba = None
                for _ in range(16):
                    cand = a.first_lba + rng.randrange(a.blocks)
                    if cand not in busy:
                        lba = cand
                        break
                if lba is None:
                    break
                seq += 1
                fua = rng.randrange(a.fua_one_in) == 0
                buf = vblock.make(lba, seq)
                log.write("I %d %d\n" % (lba, seq))
                log.flush()
                cookie = h.aio_pwrite(buf, lba * vblock.BLOCK,
                                      flags=nbd.CMD_FLAG_FUA if fua else 0)
                inflight[cookie] = (lba, seq, fua, buf)
                submitted[cookie] = time.monotonic()
                busy.add(lba)
                summary["issued"] += 1
                summary["fua"] += int(fua)
                since_flush += 1
                if since_flush >= a.flush_every:
                    since_flush = 0
                    covered = dict(acked)
                    acked.clear()
                    cookie = h.aio_flush()
                    flushes[cookie] = covered
                    submitted[cookie] = time.monotonic()
            h.poll(1000)
            if not retire():
                summary["end"] = "connection lost"
                break
        else:
            if server_error is None:
                summary["end"] = "deadline"
                if a.stop_file and os.path.exists(a.stop_file):
                    # Asked to stop: let what is in flight complete (bounded).
                    summary["end"] = "stopped"
                    drain_until = time.monotonic() + 60
                    while (inflight or flushes) and time.monotonic() < drain_until:
                        h.poll(1000)
                        if not retire():
                            summary["end"] = "connection lost"
                            break
    except nbd.Error as e:
        if h.aio_is_dead() or h.aio_is_closed():
            summary["end"] = "connection lost"
        else:
            server_error = str(e)
    retire()
    sync_log()
    if submitted:
        summary["still_in_flight"] = len(submitted)
        summary["oldest_in_flight_s"] = time.monotonic() - min(submitted.values())
    if server_error is not None:
        summary["end"] = "server error: " + server_error
    print(json.dumps(summary), flush=True)
    sys.exit(2 if server_error is not None else 0)


if __name__ == "__main__":
    main()
