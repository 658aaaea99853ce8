#!/usr/bin/python3
"""Write versioned blocks (see vblock.py) to whichever node is primary, follow the
primary across failovers, and record every operation in a history file.

    follow_writer.py --uri URI [--uri URI ...] --history FILE
                     [--first-lba 0] [--blocks 4096] [--seq-base 0] [--seed 0]
                     [--inflight 16] [--fua-one-in 8] [--flush-every 128]
                     [--flush-interval 0.5] [--request-timeout 5] [--probe-after 1]
                     [--connect-timeout 2] [--reconnect-timeout 60]
                     [--duration 120] [--stop-file PATH] [--ack-is-durable]

Connection: every --uri (one per data node) is tried at the same time, each
retried 100 ms after a refusal (a non-primary has no export, so NBD_OPT_GO fails)
or after --connect-timeout without an answer (a partitioned node drops the SYN);
the first to accept is used. On a lost connection, an error reply, or a request
unanswered for --request-timeout seconds (a frozen or partitioned primary), the
connection is dropped and the writer looks for a primary again; it gives up after
--reconnect-timeout seconds without one. Meanwhile, once a request has waited
--probe-after seconds, the other URIs are probed (without blocking the writes in
flight): only a primary exports, so one that accepts means the node this writer
uses was replaced (frozen, cut off, stuck in its disk), and the writer moves to it
at once, abandoning what is in flight — as a connector following the primary would.

History (appended, line-buffered so every line is in the kernel before the
request it announces is sent; fsync'd in batches), t = time.time():
    connect <t> <uri>
    disconnect <t> <uri> <reason>
    invoke <t> <uri> <lba> <seq>              written before the write is sent
    ok <t> <uri> <lba> <seq> <durable 0|1>    acknowledged; durable: with FUA, or
                                              --ack-is-durable (fullsync)
    durable <t> <uri> <lba> <seq>             an acknowledged write became durable:
                                              a FLUSH sent after its ack completed
    fail <t> <uri> <lba> <seq> <errno-name>   error reply, ENOTCONN (connection
                                              lost), ETIMEDOUT (abandoned) or
                                              EMOVED (abandoned: a primary elsewhere)
A failed write's outcome is unknown: its LBA may hold the old or the new version.
At most one write per LBA is in flight, and an LBA with a failed write is never
written again in this run (a write abandoned on a live server may still be
applied late, after a newer one sent on another connection), so every LBA's
newest durable version is well defined. Several writers on one device need
disjoint LBA ranges or distinct --seq-base values.

Ends at --duration or once --stop-file exists: stops issuing, lets what is in
flight complete (bounded), sends a last FLUSH, and prints a JSON summary: issued,
acked, failed, durable, reconnects, acks per node, the longest time without any
acknowledgement (max_no_ack_s) and every outage: from the last ack before the
loss (start), when the loss was noticed (lost), the reconnection, and the first
ack after it (end); after_loss_s is the failover time as this client sees it.
Exit 0 (also when it gave up reconnecting: see "end"); 2 for a usage error or a
bug.
"""

import argparse
import errno
import json
import os
import random
import select
import signal
import sys
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vblock  # noqa: E402

RETRY_S = 0.1            # between connection attempts to one URI
POLL_MS = 50             # longest single wait in every loop
FSYNC_EVERY_S = 0.05     # history fsync batching
DRAIN_BOUND_S = 30.0     # at the end: wait this long at most for requests in flight


def now():
    return time.time()


def mono():
    return time.monotonic()


def errname(e):
    """The errno name of an nbd.Error (libnbd's .errnum, else its .errno text)."""
    n = getattr(e, "errnum", None)
    if isinstance(n, int) and n in errno.errorcode:
        return errno.errorcode[n]
    s = getattr(e, "errno", None)
    if isinstance(s, str) and s:
        return s
    return "EUNKNOWN"


class History:
    def __init__(self, path):
        self.f = open(path, "a", buffering=1)
        self.dirty = False
        self.synced = mono()

    def line(self, *fields):
        self.f.write(" ".join(str(x) for x in fields) + "\n")
        self.dirty = True

    def sync(self, force=False):
        if self.dirty and (force or mono() - self.synced >= FSYNC_EVERY_S):
            self.f.flush()
            os.fsync(self.f.fileno())
            self.dirty = False
            self.synced = mono()


class Connector:
    """Connect to every URI at once; the first to pass NBD_OPT_GO wins."""

    def __init__(self, uris, connect_timeout):
        self.uris = uris
        self.connect_timeout = connect_timeout
        self.last_error = {}

    def connect(self, give_up_at, should_stop):
        """Returns (uri, handle) or (None, None) at give_up_at / should_stop()."""
        attempts = self.new_attempts()
        try:
            while mono() < give_up_at and not should_stop():
                won = self.step(attempts)
                if won is not None:
                    return won
                self._wait(attempts, POLL_MS)
            return None, None
        finally:
            # Losers are dropped: closing a libnbd handle closes its socket.
            for a in attempts.values():
                a[0] = None

    def new_attempts(self):
        return {u: [None, 0.0, 0.0] for u in self.uris}   # handle, started, next try

    def step(self, attempts):
        """Advances every attempt once; (uri, handle) of one that is ready."""
        t = mono()
        for u, a in attempts.items():
            h = a[0]
            if h is None:
                if t >= a[2]:
                    h = nbd.NBD()
                    try:
                        h.aio_connect_uri(u)
                        a[0], a[1] = h, t
                    except nbd.Error as e:
                        self.last_error[u] = str(e)
                        a[2] = t + RETRY_S
                continue
            if h.aio_is_ready():
                a[0] = None
                return u, h
            if h.aio_is_dead() or h.aio_is_closed():
                self.last_error.setdefault(u, "connection failed")
                a[0], a[2] = None, t + RETRY_S
            elif t - a[1] > self.connect_timeout:
                self.last_error[u] = "no answer within %.1f s" % self.connect_timeout
                a[0], a[2] = None, t
        return None

    def probe(self, attempts):
        """One non-blocking round of attempts: (uri, handle) of one ready."""
        won = self.step(attempts)
        if won is None:
            self._wait(attempts, 0)
        return won

    def _wait(self, attempts, wait_ms):
        poller = select.poll()
        fds = {}
        for u, a in attempts.items():
            h = a[0]
            if h is None:
                continue
            try:
                d = h.aio_get_direction()
                fd = h.aio_get_fd()
            except nbd.Error as e:
                self.last_error[u] = str(e)
                a[0], a[2] = None, mono() + RETRY_S
                continue
            ev = 0
            if d & nbd.AIO_DIRECTION_READ:
                ev |= select.POLLIN
            if d & nbd.AIO_DIRECTION_WRITE:
                ev |= select.POLLOUT
            if ev:
                poller.register(fd, ev)
                fds[fd] = (u, a)
        if not fds:
            time.sleep(wait_ms / 1000.0)
            return
        for fd, rev in poller.poll(wait_ms):
            u, a = fds[fd]
            h = a[0]
            try:
                d = h.aio_get_direction()
                bad = select.POLLHUP | select.POLLERR
                if d & nbd.AIO_DIRECTION_READ and rev & (select.POLLIN | bad):
                    h.aio_notify_read()
                elif d & nbd.AIO_DIRECTION_WRITE and rev & (select.POLLOUT | bad):
                    h.aio_notify_write()
            except nbd.Error as e:
                self.last_error[u] = str(e)
                a[0], a[2] = None, mono() + RETRY_S


class Writer:
    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.hist = History(a.history)
        self.connector = Connector(a.uri, a.connect_timeout)
        self.seq = a.seq_base
        # LBAs free to write: a list with swap-remove for O(1) random picks.
        self.free = list(range(a.first_lba, a.first_lba + a.blocks))
        self.quarantined = 0
        self.stop_asked = False
        self.t0 = mono()
        self.deadline = self.t0 + a.duration
        self.s = {"issued": 0, "acked": 0, "failed": 0, "durable": 0, "fua": 0,
                  "flushes": 0, "flush_failures": 0, "connects": 0, "reconnects": 0,
                  "acks_per_node": {}, "max_no_ack_s": 0.0, "outages": [],
                  "first_ack_s": None, "end": None}
        self.last_ack_mono = None
        self.last_ack_wall = None
        self.outage = None          # the open outage record, until its first ack
        self.handover = None        # (uri, handle) a probe found while stalled

    # -- stopping -----------------------------------------------------------

    def should_stop(self):
        if self.stop_asked or mono() >= self.deadline:
            return True
        if self.a.stop_file and os.path.exists(self.a.stop_file):
            return True
        return False

    # -- bookkeeping --------------------------------------------------------

    def note_ack(self, uri):
        t = mono()
        gap_from = self.last_ack_mono if self.last_ack_mono is not None else self.t0
        self.s["max_no_ack_s"] = max(self.s["max_no_ack_s"], t - gap_from)
        if self.s["first_ack_s"] is None:
            self.s["first_ack_s"] = round(t - self.t0, 3)
        self.last_ack_mono, self.last_ack_wall = t, now()
        self.s["acked"] += 1
        per = self.s["acks_per_node"]
        per[uri] = per.get(uri, 0) + 1
        if self.outage is not None:
            o = self.outage
            o["end"] = self.last_ack_wall
            o["no_ack_s"] = round(t - o.pop("_start_mono"), 3)
            o["after_loss_s"] = round(t - o.pop("_lost_mono"), 3)
            self.s["outages"].append(o)
            self.outage = None
            sys.stderr.write("first ack on %s %.3f s after the loss\n" % (uri, o["after_loss_s"]))

    def open_outage(self, uri, reason):
        if self.outage is not None:
            return
        t = mono()
        start_mono = self.last_ack_mono if self.last_ack_mono is not None else t
        self.outage = {"from": uri, "reason": reason,
                       "start": self.last_ack_wall if self.last_ack_wall is not None else now(),
                       "lost": now(), "reconnected": None, "to": None, "end": None,
                       "_start_mono": start_mono, "_lost_mono": t}

    def pick_lba(self):
        if not self.free:
            return None
        i = self.rng.randrange(len(self.free))
        self.free[i], self.free[-1] = self.free[-1], self.free[i]
        return self.free.pop()

    # -- one connection -----------------------------------------------------

    def run_connection(self, uri, h):
        """Write through h until the connection fails or the run ends. Returns
        None when the run ended normally, else the reason the connection went."""
        a, hist = self.a, self.hist
        inflight = {}      # cookie -> (lba, seq, fua, buf, submitted mono)
        flushes = {}       # cookie -> ({lba: seq} covered, submitted mono)
        unflushed = {}     # lba -> seq acked without FUA since the last FLUSH was sent
        since_flush, last_flush = 0, mono()
        failure = None     # the reason to leave this connection, once known
        stop_by = 0.0      # with stopping: the bound on draining
        stopping = False
        final_flush_sent = False
        others = Connector([u for u in a.uri if u != uri], a.connect_timeout)
        probes = None      # attempts on the other URIs while a request is stalled

        def send_flush():
            nonlocal since_flush, last_flush
            covered = dict(unflushed)
            unflushed.clear()
            since_flush, last_flush = 0, mono()
            flushes[h.aio_flush()] = (covered, mono())

        def retire():
            nonlocal failure
            while inflight or flushes:
                try:
                    k = h.aio_peek_command_completed()
                except nbd.Error:
                    return
                if k <= 0:
                    return
                try:
                    h.aio_command_completed(k)
                    err = None
                except nbd.Error as e:
                    err = errname(e)
                if k in inflight:
                    lba, seq, fua, _buf, _t = inflight.pop(k)
                    if err is None:
                        durable = 1 if (fua or a.ack_is_durable) else 0
                        hist.line("ok", "%.6f" % now(), uri, lba, seq, durable)
                        self.note_ack(uri)
                        if durable:
                            self.s["durable"] += 1
                        else:
                            unflushed[lba] = seq
                        self.free.append(lba)
                    else:
                        hist.line("fail", "%.6f" % now(), uri, lba, seq, err)
                        self.s["failed"] += 1
                        self.quarantined += 1
                        failure = failure or err
                elif k in flushes:
                    covered, _t = flushes.pop(k)
                    if err is None:
                        self.s["flushes"] += 1
                        for lba, seq in covered.items():
                            hist.line("durable", "%.6f" % now(), uri, lba, seq)
                        self.s["durable"] += len(covered)
                    else:
                        self.s["flush_failures"] += 1
                        failure = failure or err

        try:
            while True:
                if failure is None and not stopping and self.should_stop():
                    stopping = True
                    stop_by = mono() + min(DRAIN_BOUND_S, a.request_timeout * 2)
                if failure is None and not stopping:
                    while len(inflight) < a.inflight:
                        lba = self.pick_lba()
                        if lba is None:
                            break
                        self.seq += 1
                        fua = self.rng.randrange(a.fua_one_in) == 0
                        buf = vblock.make(lba, self.seq)
                        hist.line("invoke", "%.6f" % now(), uri, lba, self.seq)
                        cookie = h.aio_pwrite(buf, lba * vblock.BLOCK,
                                              flags=nbd.CMD_FLAG_FUA if fua else 0)
                        inflight[cookie] = (lba, self.seq, fua, buf, mono())
                        self.s["issued"] += 1
                        self.s["fua"] += int(fua)
                        since_flush += 1
                    if not inflight and not self.free:
                        self.s["end"] = "no LBA left to write (all failed once)"
                        stopping = True
                        stop_by = mono() + DRAIN_BOUND_S
                    if unflushed and (since_flush >= a.flush_every
                                      or mono() - last_flush >= a.flush_interval):
                        send_flush()
                if stopping and failure is None and not inflight and not flushes:
                    if unflushed and not final_flush_sent:
                        final_flush_sent = True
                        send_flush()
                    else:
                        return None
                if stopping and mono() >= stop_by:
                    failure = failure or "ETIMEDOUT"
                    break
                try:
                    h.poll(POLL_MS)
                except nbd.Error as e:
                    if errname(e) != "EINTR":
                        failure = failure or ("ENOTCONN" if (h.aio_is_dead() or h.aio_is_closed())
                                              else errname(e))
                retire()
                hist.sync()
                if h.aio_is_dead() or h.aio_is_closed():
                    failure = failure or "ENOTCONN"
                oldest = min([v[4] for v in inflight.values()] +
                             [v[1] for v in flushes.values()], default=None)
                if oldest is not None and mono() - oldest > a.request_timeout:
                    failure = failure or "ETIMEDOUT"
                    break
                if (oldest is not None and not stopping and others.uris
                        and mono() - oldest > a.probe_after):
                    probes = probes if probes is not None else others.new_attempts()
                    won = others.probe(probes)
                    if won is not None:
                        self.handover = won
                        failure = failure or "EMOVED"
                        break
                elif probes is not None:
                    for p in probes.values():
                        p[0] = None
                    probes = None
                if failure is not None and (not (inflight or flushes) or h.aio_is_dead()
                                            or h.aio_is_closed()):
                    break
                if failure is not None and not stopping:
                    # Let the other requests finish (bounded by request_timeout).
                    stopping = True
                    stop_by = mono() + a.request_timeout
        except nbd.Error as e:
            failure = failure or errname(e)
        retire()
        # What libnbd did not retire is abandoned: its outcome is unknown.
        reason = failure or "ENOTCONN"
        for lba, seq, _fua, _buf, _t in inflight.values():
            hist.line("fail", "%.6f" % now(), uri, lba, seq, reason)
            self.s["failed"] += 1
            self.quarantined += 1
        if flushes:
            self.s["flush_failures"] += len(flushes)
        return reason

    # -- the run ------------------------------------------------------------

    def run(self):
        while not self.should_stop():
            give_up = mono() + self.a.reconnect_timeout
            if self.handover is not None:
                (uri, h), self.handover = self.handover, None
            else:
                uri, h = self.connector.connect(give_up, self.should_stop)
            if h is None:
                if not self.should_stop():
                    self.s["end"] = ("gave up: no URI accepted within %.0f s: %s"
                                     % (self.a.reconnect_timeout,
                                        json.dumps(self.connector.last_error)))
                break
            self.s["connects"] += 1
            if self.s["connects"] > 1:
                self.s["reconnects"] += 1
            self.hist.line("connect", "%.6f" % now(), uri)
            self.hist.sync(force=True)
            sys.stderr.write("connected to %s\n" % uri)
            if self.outage is not None and self.outage["to"] is None:
                self.outage["to"], self.outage["reconnected"] = uri, now()
            reason = self.run_connection(uri, h)
            del h
            if reason is None:
                self.hist.line("disconnect", "%.6f" % now(), uri, "end")
                break
            self.hist.line("disconnect", "%.6f" % now(), uri, reason)
            self.hist.sync(force=True)
            sys.stderr.write("lost %s: %s\n" % (uri, reason))
            self.open_outage(uri, reason)
            if self.s["end"] is not None:
                break
        self.hist.sync(force=True)
        t = mono()
        if self.outage is not None:
            # Unresolved: the writer stopped or gave up before any ack came back.
            o = self.outage
            o["no_ack_s"] = round(t - o.pop("_start_mono"), 3)
            o["after_loss_s"] = None
            o.pop("_lost_mono", None)
            self.s["outages"].append(o)
            self.outage = None
            self.s["max_no_ack_s"] = max(self.s["max_no_ack_s"], o["no_ack_s"])
        self.s["max_no_ack_s"] = round(self.s["max_no_ack_s"], 3)
        if self.s["end"] is None:
            self.s["end"] = "stopped" if self.stop_asked or (
                self.a.stop_file and os.path.exists(self.a.stop_file)) else "deadline"
        if self.s["connects"] == 0 and not self.s["end"].startswith("gave up"):
            self.s["end"] = "never connected: " + self.s["end"]
        self.s["quarantined_lbas"] = self.quarantined
        self.s["duration_s"] = round(t - self.t0, 3)
        self.s["last_errors"] = self.connector.last_error
        return self.s


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--uri", action="append", required=True)
    p.add_argument("--history", required=True)
    p.add_argument("--first-lba", type=int, default=0)
    p.add_argument("--blocks", type=int, default=4096)
    p.add_argument("--seq-base", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--inflight", type=int, default=16)
    p.add_argument("--fua-one-in", type=int, default=8)
    p.add_argument("--flush-every", type=int, default=128)
    p.add_argument("--flush-interval", type=float, default=0.5)
    p.add_argument("--request-timeout", type=float, default=5.0)
    p.add_argument("--probe-after", type=float, default=1.0)
    p.add_argument("--connect-timeout", type=float, default=2.0)
    p.add_argument("--reconnect-timeout", type=float, default=60.0)
    p.add_argument("--duration", type=float, default=120.0)
    p.add_argument("--stop-file")
    p.add_argument("--ack-is-durable", action="store_true")
    a = p.parse_args()
    for name in ("inflight", "fua_one_in", "flush_every", "blocks"):
        if getattr(a, name) < 1:
            p.error("--%s must be at least 1" % name.replace("_", "-"))
    if a.first_lba < 0 or a.seq_base < 0:
        p.error("--first-lba and --seq-base must not be negative")
    for name in ("request_timeout", "connect_timeout", "reconnect_timeout", "flush_interval"):
        if getattr(a, name) <= 0:
            p.error("--%s must be positive" % name.replace("_", "-"))
    try:
        w = Writer(a)
    except OSError as e:
        sys.stderr.write("follow_writer: %s\n" % e)
        sys.exit(2)

    def on_term(_sig, _frame):
        w.stop_asked = True
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    summary = w.run()
    print(json.dumps(summary), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException:
        # A bug, not a finding: exit 2, as for a usage error.
        import traceback
        traceback.print_exc()
        sys.exit(2)
