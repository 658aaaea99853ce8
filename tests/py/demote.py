#!/usr/bin/python3
"""Demote the primary under load and check what clients see.

    demote.py --uri URI --addr tcp:HOST:PORT --export NAME --log LOG -- DEMOTE-CMD...

One client keeps 32 versioned writes (vblock.py) in flight; once a few hundred are
acknowledged, DEMOTE-CMD (e.g. `hastctl role secondary r0`) runs. Checks:
  - every write completes OK or with ESHUTDOWN (never EIO or another error, and the
    connection is not dropped before an ESHUTDOWN was sent);
  - once a request got ESHUTDOWN, later ones do too (or the server closes);
  - an idle client connected before the demotion gets ESHUTDOWN on its next write;
  - a new client can no longer open the export (GO fails), and LIST omits it.
LOG gets "I lba seq" for submitted and "D lba seq" for acknowledged writes, so
versioned_check.py can verify after re-promotion that every acknowledged write is
there. Prints one line per check; exit 1 if any failed.
"""

import argparse
import errno
import os
import subprocess
import sys
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdraw  # noqa: E402
import vblock  # noqa: E402

FIRST_LBA = 8192
BLOCKS = 2048
INFLIGHT = 32
ACKED_BEFORE_DEMOTE = 300
RUN_TIMEOUT_S = 60
ERRORS_WANTED = 20

FAILED = []


def check(name, ok, detail):
    print("%-4s %-44s %s" % ("ok" if ok else "FAIL", name, detail), flush=True)
    if not ok:
        FAILED.append(name)


def errnum(e):
    return getattr(e, "errnum", None) or 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--uri", required=True)
    p.add_argument("--addr", required=True)
    p.add_argument("--export", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("cmd", nargs=argparse.REMAINDER)
    a = p.parse_args()
    cmd = a.cmd[1:] if a.cmd and a.cmd[0] == "--" else a.cmd
    if not cmd:
        p.error("no demote command given")

    idle = nbd.NBD()
    idle.connect_uri(a.uri)
    busy = nbd.NBD()
    busy.connect_uri(a.uri)
    log = open(a.log, "w")

    inflight = {}
    outcomes = {}  # name -> count
    seq = 0
    lba_next = 0
    acked = 0
    errors_seen = 0
    # Requests are admitted in the order they arrive on the connection, so once one
    # got ESHUTDOWN no later-submitted one may succeed.
    max_ok_seq = 0
    min_err_seq = None
    demoter = None
    demote_started_at_ack = None
    sent_before_first_err = None
    dead = False
    deadline = time.monotonic() + RUN_TIMEOUT_S

    while time.monotonic() < deadline and not dead:
        if demoter is None and acked >= ACKED_BEFORE_DEMOTE:
            demoter = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            demote_started_at_ack = acked
        while len(inflight) < INFLIGHT and errors_seen < ERRORS_WANTED:
            lba = FIRST_LBA + lba_next % BLOCKS
            lba_next += 1
            if any(v[0] == lba for v in inflight.values()):
                break
            seq += 1
            buf = vblock.make(lba, seq)
            log.write("I %d %d\n" % (lba, seq))
            try:
                cookie = busy.aio_pwrite(buf, lba * vblock.BLOCK)
            except nbd.Error:
                dead = True
                break
            inflight[cookie] = (lba, seq, buf)
        if not inflight:
            break
        try:
            busy.poll(1000)
        except nbd.Error:
            dead = True
        while inflight:
            try:
                k = busy.aio_peek_command_completed()
            except nbd.Error:
                break
            if k <= 0:
                break
            lba, s, _ = inflight.pop(k)
            try:
                busy.aio_command_completed(k)
                name = "OK"
            except nbd.Error as e:
                n = errnum(e)
                if busy.aio_is_dead() or busy.aio_is_closed():
                    name = "closed"
                else:
                    name = errno.errorcode.get(n, str(n))
            outcomes[name] = outcomes.get(name, 0) + 1
            if name == "OK":
                acked += 1
                log.write("D %d %d\n" % (lba, s))
                max_ok_seq = max(max_ok_seq, s)
            else:
                errors_seen += 1
                min_err_seq = s if min_err_seq is None else min(min_err_seq, s)
                if sent_before_first_err is None:
                    # Everything sent from now on reaches the server after it
                    # closed the export; what is already in flight may end
                    # either way (NBD orders no in-flight requests).
                    sent_before_first_err = seq
        if busy.aio_is_dead() or busy.aio_is_closed():
            dead = True
        if errors_seen >= ERRORS_WANTED and demoter is not None and demoter.poll() is not None:
            break
    log.flush()
    os.fsync(log.fileno())
    log.close()

    if demoter is None:
        check("demote_command_ran", False, "only %d writes acknowledged in %d s"
              % (acked, RUN_TIMEOUT_S))
        sys.exit(1)
    try:
        out, err = demoter.communicate(timeout=60)
        rc = demoter.returncode
    except subprocess.TimeoutExpired:
        demoter.kill()
        out, err = demoter.communicate()
        rc = "timeout"
    check("demote_command_exit_0", rc == 0, "rc=%s stderr=%s" % (rc, err.decode().strip()))
    check("writes_in_flight_end_ok_or_eshutdown",
          set(outcomes) <= {"OK", "ESHUTDOWN", "closed"} and outcomes.get("ESHUTDOWN", 0) > 0,
          "outcomes=%s (demotion started after %d acks)" % (outcomes, demote_started_at_ack))
    check("no_success_sent_after_first_eshutdown",
          sent_before_first_err is None or max_ok_seq <= sent_before_first_err,
          "last acknowledged write #%d, first refusal seen when #%s was the last sent"
          % (max_ok_seq, sent_before_first_err))

    # The idle connection: its next requests get ESHUTDOWN.
    try:
        idle.pwrite(vblock.make(FIRST_LBA + BLOCKS, 1), (FIRST_LBA + BLOCKS) * vblock.BLOCK)
        got = "OK"
    except nbd.Error as e:
        got = "closed" if idle.aio_is_dead() else errno.errorcode.get(errnum(e), str(errnum(e)))
    check("idle_connection_write_gets_eshutdown", got == "ESHUTDOWN", "got %s" % got)

    try:
        h = nbd.NBD()
        h.connect_uri(a.uri)
        h.shutdown()
        got = "connected"
    except nbd.Error as e:
        got = "refused: %s" % e
    check("new_connection_cannot_open_export", got != "connected", got)

    addr = nbdraw.parse_addr(a.addr)
    try:
        c = nbdraw.Conn(addr)
        c.handshake()
        typ, names = c.opt_list()
        gotyp, _ = c.opt_go(a.export)
        c.close()
        check("list_omits_export", a.export not in names, "%s %s" % (nbdraw.rep_name(typ), names))
        check("go_refused", gotyp & nbdraw.REP_ERR != 0, nbdraw.rep_name(gotyp))
    except (nbdraw.Closed, nbdraw.Timeout, nbdraw.ProtocolError, OSError) as e:
        check("handshake_after_demotion", False, "%s: %s" % (type(e).__name__, e))

    print("%d acknowledged writes logged" % acked)
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
