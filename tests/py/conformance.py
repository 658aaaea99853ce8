#!/usr/bin/python3
"""NBD conformance probe: bad requests and broken handshakes, checked against the
errors the NBD protocol (doc/proto.md of NetworkBlockDevice/nbd) prescribes.

Run by tests/nbd_conformance.rs with /usr/bin/python3 (Debian's python3-libnbd).

    conformance.py --addr tcp:127.0.0.1:PORT --export r0 [--group G]... [--observe]
                   [--json OUT]

Groups: commands (libnbd with strict mode off), raw (hand-made requests),
handshake (hand-made negotiation), multiconn. After every bad request the same
connection must still serve a good read of a sentinel block, and a bystander client
connected in parallel must be unaffected. Prints one line per case; with --json
writes {case: observed}. Exit status 1 if any case failed, unless --observe (used to
record what a reference server such as qemu-nbd answers).

The export's contents are overwritten.
"""

import argparse
import errno
import json
import os
import random
import struct
import sys
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import nbdraw  # noqa: E402
from nbdraw import (EINVAL, ENOSPC, ENOTSUP, EOVERFLOW)  # noqa: E402

BLOCK = 4096
# Where test data lives (offsets in the export).
SENTINEL_OFF = 0
BYSTANDER_OFF = 1 << 20
SCRATCH_OFF = 2 << 20
DOS_LIMIT = 1 << 25  # payloads above this MAY be treated as denial of service
LIBNBD_REQUEST_MAX = 64 << 20

RESULTS = []  # (group, case, ok, observed, expected)
RNG = random.Random(1234)


def pattern(tag, length=BLOCK):
    seed = (tag * 2654435761) & 0xFFFFFFFF
    r = random.Random(seed)
    return r.randbytes(length)


def nbd_errno(e):
    return getattr(e, "errnum", None) or getattr(e, "errno", None) or 0


def ename(num):
    if num is None:
        return "None"
    return errno.errorcode.get(num, str(num))


def record(group, case, ok, observed, expected):
    RESULTS.append((group, case, bool(ok), observed, expected))
    print("%-4s %-10s %-34s observed=%-24s expected=%s" % (
        "ok" if ok else "FAIL", group, case, observed, expected), flush=True)


class Target:
    def __init__(self, addr, export):
        self.addr = nbdraw.parse_addr(addr)
        self.export = export
        if self.addr[0] == "tcp":
            self.uri = "nbd://%s:%d/%s" % (self.addr[1], self.addr[2], export)
        else:
            self.uri = "nbd+unix:///%s?socket=%s" % (export, self.addr[1])

    def handle(self, strict=True):
        h = nbd.NBD()
        h.add_meta_context("base:allocation")
        if not strict:
            h.set_strict_mode(0)
        h.connect_uri(self.uri)
        return h

    def raw(self, timeout=10.0):
        return nbdraw.Conn(self.addr, timeout)


class Session:
    """The connection under test (strict mode off) and a bystander."""

    def __init__(self, t):
        self.t = t
        self.h = t.handle(strict=False)
        self.bystander = t.handle(strict=True)
        self.size = self.h.get_size()
        self.min_bs = self.h.get_block_size(nbd.SIZE_MINIMUM) or 1
        self.max_bs = self.h.get_block_size(nbd.SIZE_MAXIMUM) or 0
        self.sentinel = pattern(1)
        self.h.pwrite(self.sentinel, SENTINEL_OFF, nbd.CMD_FLAG_FUA)
        self.byst_n = 0
        self.reconnects = 0

    def alive(self):
        """The connection under test still serves a good read of the sentinel."""
        try:
            return self.h.pread(BLOCK, SENTINEL_OFF) == self.sentinel
        except nbd.Error:
            return False

    def reconnect(self):
        try:
            self.h.shutdown()
        except nbd.Error:
            pass
        self.h = self.t.handle(strict=False)
        self.reconnects += 1

    def bystander_ok(self):
        """The parallel client writes and reads back a fresh block."""
        self.byst_n += 1
        data = pattern(1000 + self.byst_n)
        try:
            self.bystander.pwrite(data, BYSTANDER_OFF)
            return self.bystander.pread(BLOCK, BYSTANDER_OFF) == data
        except nbd.Error:
            return False

    def attempt(self, fn):
        """Run fn(h); returns 'OK' or the errno name or 'closed'."""
        try:
            fn(self.h)
            return "OK"
        except nbd.Error as e:
            n = nbd_errno(e)
            if self.h.aio_is_dead() or self.h.aio_is_closed():
                return "closed"
            return ename(n) if n else "error:" + str(e)

    def case(self, group, name, fn, accept, expected, check_data=None,
             may_close=False):
        """Run one bad request. accept: set of acceptable observations.
        check_data: callable returning True if the export content is as it must be
        afterwards. may_close: a hard disconnect of this connection is allowed."""
        observed = self.attempt(fn)
        ok = observed in accept
        notes = []
        if observed == "closed":
            if not may_close:
                ok = False
                notes.append("connection dropped")
            self.reconnect()
        elif not self.alive():
            ok = False
            notes.append("connection no longer serves reads")
            self.reconnect()
        if check_data is not None and not check_data():
            ok = False
            notes.append("export content changed")
        if not self.bystander_ok():
            ok = False
            notes.append("bystander affected")
        record(group, name, ok, observed + ("" if not notes else " (" + ", ".join(notes) + ")"),
               expected)
        return observed


def block_unchanged(sess, off, data):
    def check():
        return sess.bystander.pread(len(data), off) == data
    return check


def group_commands(t):
    s = Session(t)
    size = s.size
    g = "commands"
    record(g, "export_size_aligned", size % s.min_bs == 0, "size=%d min=%d" % (size, s.min_bs),
           "size multiple of minimum block size")

    last = pattern(2)
    s.bystander.pwrite(last, size - BLOCK, nbd.CMD_FLAG_FUA)
    keep_last = block_unchanged(s, size - BLOCK, last)

    s.case(g, "read_beyond_end", lambda h: h.pread(BLOCK, size), {"EINVAL"}, "EINVAL")
    s.case(g, "read_straddling_end", lambda h: h.pread(2 * BLOCK, size - BLOCK), {"EINVAL"},
           "EINVAL")
    s.case(g, "read_offset_wraps_u64", lambda h: h.pread(2 * BLOCK, 2**64 - BLOCK), {"EINVAL"},
           "EINVAL")
    s.case(g, "write_beyond_end", lambda h: h.pwrite(pattern(3), size), {"ENOSPC"}, "ENOSPC",
           keep_last)
    s.case(g, "write_straddling_end", lambda h: h.pwrite(pattern(4, 2 * BLOCK), size - BLOCK),
           {"ENOSPC"}, "ENOSPC (and last block untouched)", keep_last)
    s.case(g, "write_offset_wraps_u64", lambda h: h.pwrite(pattern(5, 2 * BLOCK), 2**64 - BLOCK),
           {"ENOSPC", "EINVAL"}, "ENOSPC|EINVAL", keep_last)
    s.case(g, "write_zeroes_beyond_end", lambda h: h.zero(BLOCK, size), {"ENOSPC"}, "ENOSPC",
           keep_last)
    s.case(g, "write_zeroes_straddling", lambda h: h.zero(2 * BLOCK, size - BLOCK), {"ENOSPC"},
           "ENOSPC (and last block untouched)", keep_last)
    s.case(g, "trim_beyond_end", lambda h: h.trim(BLOCK, size), {"EINVAL"}, "EINVAL", keep_last)
    s.case(g, "cache_beyond_end", lambda h: h.cache(BLOCK, size), {"EINVAL"}, "EINVAL")
    s.case(g, "block_status_beyond_end",
           lambda h: h.block_status(BLOCK, size, lambda *a: 0), {"EINVAL"}, "EINVAL")

    scratch = pattern(6)
    s.bystander.pwrite(scratch, SCRATCH_OFF, nbd.CMD_FLAG_FUA)
    keep_scratch = block_unchanged(s, SCRATCH_OFF, scratch)
    s.case(g, "read_unknown_flag", lambda h: h.pread(BLOCK, SCRATCH_OFF, 1 << 10), {"EINVAL"},
           "EINVAL")
    s.case(g, "write_unknown_flag", lambda h: h.pwrite(pattern(7), SCRATCH_OFF, 1 << 10),
           {"EINVAL"}, "EINVAL (and data untouched)", keep_scratch)
    s.case(g, "read_with_no_hole_flag", lambda h: h.pread(BLOCK, SCRATCH_OFF, nbd.CMD_FLAG_NO_HOLE),
           {"EINVAL"}, "EINVAL (flag not applicable)")
    s.case(g, "write_with_fast_zero_flag",
           lambda h: h.pwrite(pattern(8), SCRATCH_OFF, nbd.CMD_FLAG_FAST_ZERO), {"EINVAL"},
           "EINVAL (and data untouched)", keep_scratch)
    s.case(g, "flush_unknown_flag", lambda h: h.flush(1 << 12), {"EINVAL"}, "EINVAL")
    s.case(g, "read_with_fua_flag", lambda h: h.pread(BLOCK, SCRATCH_OFF, nbd.CMD_FLAG_FUA),
           {"OK"}, "OK (FUA is valid on every command)")
    s.case(g, "flush_with_fua_flag", lambda h: h.flush(nbd.CMD_FLAG_FUA), {"OK"}, "OK")

    if s.min_bs > 1:
        s.case(g, "read_unaligned", lambda h: h.pread(s.min_bs, SCRATCH_OFF + 1), {"EINVAL"},
               "EINVAL (min block %d)" % s.min_bs)
        s.case(g, "write_unaligned", lambda h: h.pwrite(pattern(9, s.min_bs), SCRATCH_OFF + 1),
               {"EINVAL"}, "EINVAL (and data untouched)", keep_scratch)
    else:
        def unaligned_rw(h):
            h.pwrite(b"hast", SCRATCH_OFF + 3)
            if h.pread(6, SCRATCH_OFF + 2) != scratch[2:3] + b"hast" + scratch[7:8]:
                raise nbd.Error("unaligned read-back mismatch", 0)
        s.case(g, "unaligned_read_write_min1", unaligned_rw, {"OK"},
               "OK (minimum block size 1)")
        s.bystander.pwrite(scratch, SCRATCH_OFF, nbd.CMD_FLAG_FUA)

    # Zero-length requests: behaviour unspecified, but the server SHOULD NOT disconnect.
    any_answer = {"OK", "EINVAL", "ENOSPC"}
    s.case(g, "read_zero_length", lambda h: h.pread(0, SCRATCH_OFF), any_answer,
           "any error or OK, no disconnect")
    s.case(g, "write_zero_length", lambda h: h.pwrite(b"", SCRATCH_OFF), any_answer,
           "any error or OK, no disconnect", keep_scratch)
    s.case(g, "trim_zero_length", lambda h: h.trim(0, SCRATCH_OFF), any_answer,
           "any error or OK, no disconnect", keep_scratch)

    # Oversize requests (beyond the advertised maximum payload).
    if 0 < s.max_bs < LIBNBD_REQUEST_MAX - BLOCK and s.max_bs + BLOCK <= size - SCRATCH_OFF:
        over = s.max_bs + BLOCK
        may_close = over > DOS_LIMIT
        accept = {"EINVAL", "EOVERFLOW"} | ({"closed"} if may_close else set())
        s.case(g, "read_oversize", lambda h: h.pread(over, SCRATCH_OFF), accept,
               "EINVAL|EOVERFLOW" + (" or hard disconnect (> 2^25)" if may_close else ""),
               may_close=may_close)
        s.case(g, "write_oversize", lambda h: h.pwrite(pattern(10, over), SCRATCH_OFF), accept,
               "EINVAL|EOVERFLOW (and data untouched)"
               + (" or hard disconnect (> 2^25)" if may_close else ""),
               keep_scratch, may_close=may_close)
        big = min(2 * s.max_bs + BLOCK, (size - SCRATCH_OFF) // BLOCK * BLOCK)
        s.case(g, "trim_longer_than_max_payload", lambda h: h.trim(big, SCRATCH_OFF),
               {"OK", "EINVAL", "EOVERFLOW"}, "OK|EINVAL|EOVERFLOW, no disconnect")
        s.bystander.pwrite(scratch, SCRATCH_OFF, nbd.CMD_FLAG_FUA)
        s.case(g, "zero_longer_than_max_payload", lambda h: h.zero(big, SCRATCH_OFF),
               {"OK", "EINVAL", "EOVERFLOW"}, "OK|EINVAL|EOVERFLOW, no disconnect")
    else:
        record(g, "oversize_requests", True, "max payload %d" % s.max_bs,
               "skipped: no usable maximum payload advertised")

    # Good requests of the less common kinds: CACHE and BLOCK_STATUS.
    s.case(g, "cache_in_range", lambda h: h.cache(1 << 20, SCRATCH_OFF), {"OK"}, "OK")
    data4 = pattern(13, 4 * BLOCK)
    s.bystander.pwrite(data4, SCRATCH_OFF, nbd.CMD_FLAG_FUA)

    def block_status_in_range(h):
        got = []

        def cb(ctx, off, entries, err):
            got.append((ctx, off, list(entries)))
            return 0
        h.block_status(8 * BLOCK, SCRATCH_OFF, cb)
        h.block_status(8 * BLOCK, SCRATCH_OFF, cb, nbd.CMD_FLAG_REQ_ONE)
        if len(got) != 2 or any(c != "base:allocation" or o != SCRATCH_OFF for c, o, _ in got):
            raise nbd.Error("block status answers %r" % (got,), 0)
        for _, _, ent in got:
            lens, flags = ent[0::2], ent[1::2]
            if not lens or any(n <= 0 for n in lens) or any(f & ~3 for f in flags):
                raise nbd.Error("bad extents %r" % (ent,), 0)
            # The first 4 blocks hold non-zero data: they must not be reported ZERO.
            covered = 0
            for n, f in zip(lens, flags):
                if covered < 4 * BLOCK and f & 2:
                    raise nbd.Error("written data reported as reading zero: %r" % (ent,), 0)
                covered += n
        if len(got[1][2]) != 2:
            raise nbd.Error("REQ_ONE answered %d extents" % (len(got[1][2]) // 2), 0)
    s.case(g, "block_status_in_range", block_status_in_range, {"OK"},
           "extents from the offset, data not ZERO, REQ_ONE gives one")

    # WRITE_ZEROES semantics.
    s.bystander.pwrite(pattern(11, 4 * BLOCK), SCRATCH_OFF, nbd.CMD_FLAG_FUA)

    def zero_no_hole(h):
        h.zero(4 * BLOCK, SCRATCH_OFF, nbd.CMD_FLAG_NO_HOLE | nbd.CMD_FLAG_FUA)
        if h.pread(4 * BLOCK, SCRATCH_OFF) != bytes(4 * BLOCK):
            raise nbd.Error("zeroed range does not read back as zeroes", 0)
    s.case(g, "write_zeroes_no_hole_reads_zero", zero_no_hole, {"OK"}, "OK and zeroes")

    if s.h.can_fast_zero():
        before = pattern(12, 4 * BLOCK)
        s.bystander.pwrite(before, SCRATCH_OFF, nbd.CMD_FLAG_FUA)
        outcome = {}

        def fast_zero(h):
            try:
                h.zero(4 * BLOCK, SCRATCH_OFF, nbd.CMD_FLAG_FAST_ZERO)
                outcome["r"] = "OK"
            except nbd.Error as e:
                outcome["r"] = ename(nbd_errno(e))
                raise

        def fast_zero_content():
            now = s.bystander.pread(4 * BLOCK, SCRATCH_OFF)
            if outcome.get("r") == "OK":
                return now == bytes(4 * BLOCK)
            return now == before  # ENOTSUP SHOULD NOT alter the contents
        s.case(g, "write_zeroes_fast_zero", fast_zero, {"OK", "ENOTSUP"},
               "OK (zeroed) or ENOTSUP (untouched)", fast_zero_content)

    s.h.shutdown()
    s.bystander.shutdown()


def raw_session(t, structured=True, timeout=10.0):
    c = t.raw(timeout)
    info = c.connect_export(t.export, structured=structured)
    return c, info


def group_raw(t):
    g = "raw"
    byst = t.handle()
    size = byst.get_size()
    sentinel = byst.pread(BLOCK, SENTINEL_OFF)
    counter = [0]

    def bystander_ok():
        counter[0] += 1
        data = pattern(5000 + counter[0])
        try:
            byst.pwrite(data, BYSTANDER_OFF)
            return byst.pread(BLOCK, BYSTANDER_OFF) == data
        except nbd.Error:
            return False

    def conn_alive(c):
        try:
            r = c.read(SENTINEL_OFF, BLOCK)
            return r["error"] == 0 and r["data"] == sentinel
        except (nbdraw.Closed, nbdraw.Timeout, nbdraw.ProtocolError):
            return False

    def finish(name, c, ok, observed, expected, must_live=True):
        notes = []
        if must_live and not conn_alive(c):
            ok = False
            notes.append("connection no longer serves reads")
        if not bystander_ok():
            ok = False
            notes.append("bystander affected")
        record(g, name, ok, observed + ("" if not notes else " (" + ", ".join(notes) + ")"),
               expected)
        c.close()

    for structured in (True, False):
        kind = "structured" if structured else "simple"
        for cmd in (0x42, 0xFFFF):
            c, _ = raw_session(t, structured)
            r = c.request(cmd, SCRATCH_OFF, BLOCK)
            obs = nbdraw.errno_name(r["error"])
            finish("unknown_command_%#x_%s" % (cmd, kind), c, r["error"] == EINVAL, obs,
                   "EINVAL")
        c, _ = raw_session(t, structured)
        r = c.read(size, BLOCK)
        finish("read_beyond_end_%s" % kind, c, r["error"] == EINVAL and not r["data"],
               nbdraw.errno_name(r["error"]), "EINVAL, no payload")

    c, _ = raw_session(t)
    r = c.request(nbdraw.CMD_FLUSH, 0, 0, flags=1 << 15)
    finish("flush_unknown_flag_bit15", c, r["error"] == EINVAL, nbdraw.errno_name(r["error"]),
           "EINVAL")

    # A write with a bad flag still carries its payload: the server must consume it
    # and stay in sync.
    c, _ = raw_session(t)
    before = byst.pread(BLOCK, SCRATCH_OFF)
    r = c.write(SCRATCH_OFF, pattern(20), flags=1 << 9)
    unchanged = byst.pread(BLOCK, SCRATCH_OFF) == before
    finish("write_unknown_flag_keeps_stream_in_sync", c, r["error"] == EINVAL and unchanged,
           nbdraw.errno_name(r["error"]) + ("" if unchanged else " data changed"),
           "EINVAL, data untouched, next request parsed")

    c, _ = raw_session(t)
    r = c.request(nbdraw.CMD_TRIM, size - BLOCK, 2 * BLOCK)
    finish("trim_straddling_end", c, r["error"] == EINVAL, nbdraw.errno_name(r["error"]),
           "EINVAL")

    # Many requests in flight on one connection: every cookie answered once, right data.
    c, _ = raw_session(t)
    blocks = {}
    wr = []
    for i in range(64):
        data = pattern(3000 + i)
        blocks[i] = data
        wr.append(c.send_request(nbdraw.CMD_WRITE, SCRATCH_OFF + i * BLOCK, BLOCK,
                                 payload=data))
    got = {}
    for _ in wr:
        r = c.read_reply()
        got[r["cookie"]] = r["error"]
    ok = sorted(got) == sorted(wr) and all(e == 0 for e in got.values())
    rd = {}
    for i in range(64):
        rd[c.send_request(nbdraw.CMD_READ, SCRATCH_OFF + i * BLOCK, BLOCK)] = i
    bad = 0
    for _ in range(64):
        r = c.read_reply()
        i = rd.pop(r["cookie"], None)
        if i is None or r["error"] or r["data"] != blocks[i]:
            bad += 1
    ok = ok and bad == 0 and not rd
    finish("pipelined_64_writes_then_64_reads", c, ok, "bad=%d missing=%d" % (bad, len(rd)),
           "all answered, data right")

    # DISC with a write outstanding: the server MUST handle outstanding requests.
    c, _ = raw_session(t)
    data = pattern(21)
    c.send_request(nbdraw.CMD_WRITE, SCRATCH_OFF, BLOCK, payload=data)
    c.disc()
    closed = c.wait_closed(10.0)
    c.close()
    landed = byst.pread(BLOCK, SCRATCH_OFF) == data
    record(g, "disc_after_write_handles_it", closed and landed and bystander_ok(),
           "closed=%s landed=%s" % (closed, landed), "connection closed, write applied")

    # Bad request magic: nothing after it can be parsed; hard disconnect expected.
    c, _ = raw_session(t)
    c.send_request(nbdraw.CMD_READ, 0, BLOCK, magic=0xDEADBEEF)
    closed = c.wait_closed(10.0)
    record(g, "bad_request_magic_closes", closed and bystander_ok(),
           "closed" if closed else "still open", "hard disconnect of this connection only")
    c.close()

    # A write header announcing a huge payload, then nothing: must not allocate it;
    # closing is fine, so is waiting; either way other clients go on.
    c, _ = raw_session(t, timeout=3.0)
    c.send(struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, 0, nbdraw.CMD_WRITE, 99, SCRATCH_OFF,
                       0xFFFFFFF0))
    closed = c.wait_closed(3.0)
    c.close()
    record(g, "write_header_4GiB_no_payload", bystander_ok(),
           "closed" if closed else "waiting", "no crash, other clients unaffected")

    # Truncated write payload, then the client vanishes.
    c, _ = raw_session(t)
    c.send(struct.pack(">IHHQQI", nbdraw.REQUEST_MAGIC, 0, nbdraw.CMD_WRITE, 7, SCRATCH_OFF,
                       65536) + bytes(1000))
    c.close()
    time.sleep(0.2)
    record(g, "write_truncated_then_close", bystander_ok(), "sent", "other clients unaffected")

    # Requests after DISC-less hard close with many in flight.
    c, _ = raw_session(t)
    for i in range(32):
        c.send_request(nbdraw.CMD_READ, SCRATCH_OFF, 1 << 20)
    c.close()
    time.sleep(0.2)
    record(g, "close_with_32_reads_in_flight", bystander_ok(), "closed by client",
           "other clients unaffected")
    byst.shutdown()


def group_handshake(t):
    g = "handshake"
    byst = t.handle()
    counter = [0]
    name = t.export.encode()

    def bystander_ok():
        counter[0] += 1
        data = pattern(7000 + counter[0])
        try:
            byst.pwrite(data, BYSTANDER_OFF)
            return byst.pread(BLOCK, BYSTANDER_OFF) == data
        except nbd.Error:
            return False

    def new_conn_works():
        try:
            h = t.handle()
            ok = h.get_size() > 0
            h.shutdown()
            return ok
        except nbd.Error:
            return False

    def case(case_name, expected, fn):
        """fn() -> (ok, observed); a protocol exception fails the case only."""
        try:
            ok, observed = fn()
        except (nbdraw.Closed, nbdraw.Timeout, nbdraw.ProtocolError, OSError) as e:
            ok, observed = False, "%s: %s" % (type(e).__name__, e)
        extra = []
        if not bystander_ok():
            ok = False
            extra.append("bystander affected")
        if not new_conn_works():
            ok = False
            extra.append("new connections fail")
        record(g, case_name, ok,
               observed + ("" if not extra else " (" + ", ".join(extra) + ")"), expected)

    def go_after(c):
        typ, info = c.opt_go(t.export)
        if typ != nbdraw.REP_ACK:
            return False
        r = c.read(SENTINEL_OFF, BLOCK)
        return r["error"] == 0 and len(r["data"]) == BLOCK

    def expect_close(prepare):
        def fn():
            c = t.raw()
            try:
                prepare(c)
                closed = c.wait_closed(10.0)
            finally:
                c.close()
            return closed, "closed" if closed else "open"
        return fn

    def option_then_go(opt, data, want):
        def fn():
            c = t.raw()
            try:
                c.handshake()
                _, typ = c.option(opt, data)
                return typ == want and go_after(c), nbdraw.rep_name(typ)
            finally:
                c.close()
        return fn

    def fixed_newstyle():
        c = t.raw()
        try:
            hflags = c.greeting()
        finally:
            c.close()
        return hflags & nbdraw.FLAG_FIXED_NEWSTYLE != 0, "hflags=%#x" % hflags
    case("server_offers_fixed_newstyle", "FIXED_NEWSTYLE set", fixed_newstyle)

    case("unknown_client_flags_close", "server MUST close", expect_close(
        lambda c: c.handshake(client_flags=nbdraw.FLAG_FIXED_NEWSTYLE | (1 << 31))))

    def garbage(c):
        c.greeting()
        c.send(bytes(RNG.getrandbits(8) for _ in range(200)))
    case("garbage_after_greeting_closes", "closed", expect_close(garbage))

    def bad_magic(c):
        c.handshake()
        c.send_option(nbdraw.OPT_GO, nbdraw.Conn.name_data(t.export), magic=0x0102030405060708)
    case("bad_option_magic_closes", "closed", expect_close(bad_magic))

    case("unknown_option_err_unsup_then_go", "ERR_UNSUP, then GO works",
         option_then_go(0x7FF, b"", nbdraw.REP_ERR_UNSUP))

    # A server may bound how long a client negotiates (nbdkit closes after 32
    # options): every answer must be ERR_UNSUP until then, and the bound must not
    # be so tight that real clients (a dozen options) hit it.
    def many_options():
        c = t.raw()
        try:
            c.handshake()
            types = set()
            sent = 0
            closed = False
            for i in range(500):
                try:
                    _, typ = c.option(0x1000 + i)
                except nbdraw.Closed:
                    closed = True
                    break
                types.add(typ)
                sent += 1
            ok = types == {nbdraw.REP_ERR_UNSUP} and (sent >= 16 if closed else go_after(c))
        finally:
            c.close()
        return ok, "%s x%d%s" % (",".join(nbdraw.rep_name(x) for x in types), sent,
                                 " then closed" if closed else "")
    case("many_unknown_options", "ERR_UNSUP each time (closing after >= 16 allowed)",
         many_options)

    case("extended_headers_err_unsup", "ERR_UNSUP (docs/overview.md s2, until implemented), then GO works",
         option_then_go(nbdraw.OPT_EXTENDED_HEADERS, b"", nbdraw.REP_ERR_UNSUP))
    case("list_with_data_err_invalid", "ERR_INVALID, then GO works",
         option_then_go(nbdraw.OPT_LIST, b"junk", nbdraw.REP_ERR_INVALID))
    case("structured_reply_with_data_err_invalid", "ERR_INVALID, then GO works",
         option_then_go(nbdraw.OPT_STRUCTURED_REPLY, b"junk", nbdraw.REP_ERR_INVALID))
    case("go_unknown_export_err_unknown", "ERR_UNKNOWN, then GO works",
         option_then_go(nbdraw.OPT_GO, nbdraw.Conn.name_data("no-such-export"),
                        nbdraw.REP_ERR_UNKNOWN))
    case("go_name_length_overruns_option", "ERR_INVALID, then GO works",
         option_then_go(nbdraw.OPT_GO,
                        struct.pack(">I", len(name) + 100) + name + struct.pack(">H", 0),
                        nbdraw.REP_ERR_INVALID))
    case("go_info_count_overruns_option", "ERR_INVALID, then GO works",
         option_then_go(nbdraw.OPT_GO,
                        struct.pack(">I", len(name)) + name + struct.pack(">H", 7),
                        nbdraw.REP_ERR_INVALID))

    def huge_option(opt):
        def fn():
            c = t.raw(timeout=5.0)
            try:
                c.handshake()
                c.send_option(opt, b"", length=0xFFFFFFF0)
                try:
                    _, typ, _ = c.read_option_reply()
                    return bool(typ & nbdraw.REP_ERR), nbdraw.rep_name(typ)
                except nbdraw.Closed:
                    return True, "closed"
                except nbdraw.Timeout:
                    return False, "no answer in 5 s"
            finally:
                c.close()
        return fn
    case("option_length_4GiB_unknown", "error reply or close, no allocation", huge_option(0x7FE))
    case("option_length_4GiB_go", "error reply or close, no allocation",
         huge_option(nbdraw.OPT_GO))

    def list_shows():
        c = t.raw()
        try:
            c.handshake()
            typ, names = c.opt_list()
        finally:
            c.close()
        return typ == nbdraw.REP_ACK and t.export in names, "%s %s" % (
            nbdraw.rep_name(typ), names)
    case("list_shows_export", "ACK, export listed", list_shows)

    def info_then_go():
        c = t.raw()
        try:
            c.handshake()
            replies, typ = c.option(nbdraw.OPT_INFO,
                                    c.name_data(t.export, (nbdraw.INFO_BLOCK_SIZE,)))
            sizes = [d for tt, d in replies if tt == nbdraw.REP_INFO and d[:2] == b"\x00\x00"]
            return typ == nbdraw.REP_ACK and len(sizes) == 1 and go_after(c), nbdraw.rep_name(typ)
        finally:
            c.close()
    case("info_then_go_on_same_connection", "ACK with NBD_INFO_EXPORT, then GO works",
         info_then_go)

    # Oldstyle entry into transmission with EXPORT_NAME, without NO_ZEROES.
    def export_name():
        c = t.raw()
        try:
            c.handshake(client_flags=nbdraw.FLAG_FIXED_NEWSTYLE)
            c.send_option(nbdraw.OPT_EXPORT_NAME, name)
            esize, tflags = struct.unpack(">QH", c.recv_exact(10))
            zeros = c.recv_exact(124)
            r = c.read(SENTINEL_OFF, BLOCK)
        finally:
            c.close()
        ok = zeros == bytes(124) and esize == byst.get_size() and r["error"] == 0
        return ok, "size=%d zeros=%s" % (esize, zeros == bytes(124))
    case("export_name_without_no_zeroes", "size, flags, 124 zero bytes, then reads",
         export_name)

    def export_name_unknown(c):
        c.handshake()
        c.send_option(nbdraw.OPT_EXPORT_NAME, b"no-such-export")
    case("export_name_unknown_closes", "server MUST terminate the session",
         expect_close(export_name_unknown))

    def abort():
        c = t.raw()
        try:
            c.handshake()
            c.send_option(nbdraw.OPT_ABORT)
            try:
                _, typ, _ = c.read_option_reply()
                return typ == nbdraw.REP_ACK, nbdraw.rep_name(typ)
            except nbdraw.Closed:
                return True, "closed"
        finally:
            c.close()
    case("abort", "ACK or close", abort)

    def vanishing():
        for i in range(20):
            c = t.raw()
            if i % 2:
                c.greeting()
            c.close()
        c = t.raw()
        c.handshake()
        c.send(struct.pack(">QI", nbdraw.IHAVEOPT, nbdraw.OPT_GO))  # half an option header
        c.close()
        return True, "21 connections dropped"
    case("clients_vanishing_mid_handshake", "server keeps serving", vanishing)
    byst.shutdown()


def group_multiconn(t):
    g = "multiconn"
    a = t.handle()
    if not a.can_multi_conn():
        record(g, "can_multi_conn", True, "false", "nothing to check")
        a.shutdown()
        return
    b = t.handle()
    c = t.handle()
    bad = 0
    for i in range(64):
        data = pattern(9000 + i)
        off = SCRATCH_OFF + i * BLOCK
        a.pwrite(data, off)
        b.flush()
        if c.pread(BLOCK, off) != data:
            bad += 1
    record(g, "write_a_flush_b_read_c", bad == 0, "mismatches=%d" % bad,
           "every acknowledged write visible on every connection")
    for h in (a, b, c):
        h.shutdown()


GROUPS = {
    "commands": group_commands,
    "raw": group_raw,
    "handshake": group_handshake,
    "multiconn": group_multiconn,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--addr", required=True, help="tcp:HOST:PORT or unix:PATH")
    p.add_argument("--export", required=True)
    p.add_argument("--group", action="append", choices=sorted(GROUPS))
    p.add_argument("--observe", action="store_true", help="report only, never fail")
    p.add_argument("--json", help="write {group/case: observed} here")
    a = p.parse_args()
    t = Target(a.addr, a.export)
    for g in a.group or ["commands", "raw", "handshake", "multiconn"]:
        try:
            GROUPS[g](t)
        except Exception as e:  # a crash of the script is a failure of the group
            record(g, "group_completed", False, "%s: %s" % (type(e).__name__, e), "no exception")
    failed = [r for r in RESULTS if not r[2]]
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"%s/%s" % (r[0], r[1]): {"ok": r[2], "observed": r[3]} for r in RESULTS},
                      f, indent=1, sort_keys=True)
    print("%d cases, %d failed" % (len(RESULTS), len(failed)))
    if failed and not a.observe:
        for r in failed:
            print("FAILED: %s/%s: observed %s, expected %s" % (r[0], r[1], r[3], r[4]))
        sys.exit(1)


if __name__ == "__main__":
    main()
