#!/usr/bin/python3
"""Check a cluster run: the data read back through the current primary against
follow_writer.py histories, hastd's role changes against "one primary per epoch",
acknowledgements against who was primary, and two component files against each
other.

    cluster_check.py [--uri URI] [--history FILE ...]
                     [--hastd-log NODE=FILE ...] [--node-uri NODE=URI ...]
                     [--resource NAME] [--slack 1.0]
                     [--compare FILE_A FILE_B --offset BYTES]

Data (--uri with --history): every LBA a history mentions is read through URI and
must be a valid versioned block (vblock.py) of that LBA, else CORRUPT (torn,
misplaced, garbage); its version must not be older than the newest one
acknowledged durable (an "ok ... 1" or "durable" line), else LOST (zeroes count
as older); and it must be a version invoked for that LBA, else PHANTOM. An LBA
never made durable may read as zeroes. --history without --uri reads nothing and
only checks its acknowledgements against the roles.

Roles (--hastd-log NODE=FILE): hastd's lines
    <RFC3339 time> <LEVEL> role changed resource=<r> role=<role> [epoch=<n>]
give each node's primary intervals: from role=primary to the next role change of
the resource, or to a restart/kill marker of the test harness ("=== ..." lines,
which carry no time: the interval then ends at the next timestamped line, an
upper bound, or stays open if there is none); an interval still open when the
log ends stays open (the node is still primary). Two different nodes
primary with the same epoch: SPLIT-BRAIN. With --node-uri NODE=URI, every "ok"
of a history from URI must fall inside one of NODE's primary intervals, else
ACK-OUTSIDE-PRIMARY (within --slack seconds of an interval it is a warning only:
log and history timestamps are taken at slightly different moments). Only lines
of --resource count (default: the export name of --uri, else every resource).

Compare (--compare A B --offset N): the data areas from byte N on must be equal,
else DIFFER with the first differing offset and the number of differing 4 KiB
blocks.

Output: one JSON line (counts of each violation kind, LBAs checked, acks,
durable LBAs, primary intervals), then one line per violation (at most 50) and
per warning (at most 20). Exit 0 without violations, 1 with any, 2 for a usage
or I/O error.
"""

import argparse
import datetime
import json
import os
import re
import sys
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import vblock  # noqa: E402

KINDS = ("CORRUPT", "LOST", "PHANTOM", "SPLIT-BRAIN", "ACK-OUTSIDE-PRIMARY", "DIFFER")
DETAILS_MAX = 50
WARNINGS_MAX = 20
READ_BATCH = 64
COMPARE_CHUNK = 1 << 20

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)?)\s+"
    r"(?P<level>[A-Z]+)\s+(?P<rest>.*)$")
TS = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:?\d\d)?$")
FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|[^\s,}]+)')


class UsageError(Exception):
    pass


def parse_ts(text):
    """RFC 3339 -> seconds since the epoch (naive times are taken as UTC)."""
    m = TS.match(text)
    if not m:
        return None
    base, frac, zone = m.groups()
    try:
        dt = datetime.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    offset = 0
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        hh, mm = zone[1:3], zone[-2:]
        offset = sign * (int(hh) * 3600 + int(mm) * 60)
    t = dt.replace(tzinfo=datetime.timezone.utc).timestamp() - offset
    if frac:
        t += int(frac) / (10 ** len(frac))
    return t


def parse_fields(rest):
    out = {}
    for k, v in FIELD.findall(rest):
        if v.startswith('"'):
            v = v[1:-1]
        out[k] = v
    return out


def primary_intervals(lines, resource):
    """Role-change lines of one node -> [{"resource", "start", "end", "epoch",
    "end_reason"}], one open interval per resource at a time. Pure: `lines` is
    the log text split in lines; resource None takes every resource."""
    intervals = []
    open_ivs = {}      # resource -> its open interval
    ended = []         # intervals whose process ended, waiting for an upper bound
    for raw in lines:
        line = ANSI.sub("", raw.rstrip("\n"))
        if line.startswith("==="):
            # The harness marks a start, exit or kill of the daemon: whatever role
            # the node had ended with the previous process. The marker carries no
            # time: the process may have served until just before it, so the end
            # is bounded by the next timestamp (the restarted daemon's first line).
            for iv in open_ivs.values():
                iv["end_reason"] = "killed" if "killed" in line else "exited"
                ended.append(iv)
            open_ivs = {}
            continue
        m = LOG_LINE.match(line)
        if not m:
            continue
        t = parse_ts(m.group("ts"))
        if t is None:
            continue
        for iv in ended:
            iv["end"] = t
            intervals.append(iv)
        ended = []
        rest = m.group("rest")
        if "role changed" not in rest:
            continue
        f = parse_fields(rest)
        res = f.get("resource")
        if resource is not None and res != resource:
            continue
        role = f.get("role")
        try:
            epoch = int(f["epoch"]) if "epoch" in f else None
        except ValueError:
            epoch = None
        iv = open_ivs.pop(res, None)
        if iv is not None:
            iv["end"] = t
            iv["end_reason"] = "role=%s" % role
            intervals.append(iv)
        if role == "primary":
            open_ivs[res] = {"resource": res, "start": t, "end": None, "epoch": epoch,
                             "end_reason": None}
    for iv in ended:
        iv["end_reason"] += " (end unknown: no later log line)"
        intervals.append(iv)
    for iv in open_ivs.values():
        iv["end_reason"] = "still primary at end of log"
        intervals.append(iv)
    intervals.sort(key=lambda iv: iv["start"])
    return intervals


def split_brains(per_node):
    """{node: intervals} -> [(resource, epoch, [nodes])] for every epoch of a
    resource in which two or more nodes were primary."""
    by_epoch = {}
    for node, ivs in per_node.items():
        for iv in ivs:
            if iv["epoch"] is not None:
                key = (iv.get("resource") or "", iv["epoch"])
                by_epoch.setdefault(key, set()).add(node)
    return [(r, e, sorted(n)) for (r, e), n in sorted(by_epoch.items()) if len(n) > 1]


def distance_outside(t, intervals):
    """0 if t is inside an interval, else the distance to the nearest one
    (None without intervals)."""
    best = None
    for iv in intervals:
        start = iv["start"]
        end = iv["end"] if iv["end"] is not None else float("inf")
        if start <= t <= end:
            return 0.0
        d = start - t if t < start else t - end
        best = d if best is None else min(best, d)
    return best


def read_histories(paths):
    """-> (invoked {lba: set(seq)}, durable {lba: max seq}, oks [(t, uri, lba, seq)],
    counts). Lines without a trailing newline (a killed writer) are ignored."""
    invoked, durable, oks = {}, {}, []
    counts = {"invoked": 0, "acked": 0, "failed": 0, "durable_acks": 0, "malformed": 0}
    for path in paths:
        with open(path) as f:
            for line in f:
                if not line.endswith("\n"):
                    continue
                p = line.split()
                try:
                    kind = p[0]
                    if kind == "invoke" and len(p) == 5:
                        invoked.setdefault(int(p[3]), set()).add(int(p[4]))
                        counts["invoked"] += 1
                    elif kind == "ok" and len(p) == 6:
                        lba, seq = int(p[3]), int(p[4])
                        oks.append((float(p[1]), p[2], lba, seq))
                        counts["acked"] += 1
                        if p[5] == "1":
                            durable[lba] = max(durable.get(lba, -1), seq)
                            counts["durable_acks"] += 1
                    elif kind == "durable" and len(p) == 5:
                        lba, seq = int(p[3]), int(p[4])
                        durable[lba] = max(durable.get(lba, -1), seq)
                        counts["durable_acks"] += 1
                    elif kind == "fail" and len(p) == 6:
                        counts["failed"] += 1
                    elif kind in ("connect", "disconnect"):
                        pass
                    else:
                        counts["malformed"] += 1
                except (ValueError, IndexError):
                    counts["malformed"] += 1
    return invoked, durable, oks, counts


def judge_block(lba, block, invoked, durable):
    """(kind, message) of a violation for the block read at lba, or (None, state)
    with state "zero", "durable" (the durable version), "newer" or "not-durable"."""
    kind, x, seq = vblock.parse(block)
    need = durable.get(lba)
    if kind == "zero":
        if need is not None:
            return "LOST", "LBA %d reads zeroes; durable version %d lost" % (lba, need)
        return None, "zero"
    if kind == "corrupt":
        return "CORRUPT", "LBA %d holds a torn or garbage block (%s)" % (lba, x)
    if x != lba:
        return "CORRUPT", "LBA %d holds the block of LBA %d (version %d)" % (lba, x, seq)
    if need is not None and seq < need:
        return "LOST", "LBA %d holds version %d, older than durable version %d" % (
            lba, seq, need)
    if seq not in invoked.get(lba, ()):
        return "PHANTOM", "LBA %d holds version %d, never invoked for it" % (lba, seq)
    if need is None:
        return None, "not-durable"
    return None, "durable" if seq == need else "newer"


def read_blocks(uri, lbas):
    """Yield (lba, bytes) for every lba, read through uri in batches."""
    import nbd
    h = nbd.NBD()
    h.connect_uri(uri)
    for i in range(0, len(lbas), READ_BATCH):
        batch = lbas[i:i + READ_BATCH]
        pending = []
        for lba in batch:
            buf = nbd.Buffer(vblock.BLOCK)
            pending.append((lba, h.aio_pread(buf, lba * vblock.BLOCK), buf))
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for lba, cookie, buf in pending:
            h.aio_command_completed(cookie)
            yield lba, bytes(buf.to_bytearray())
    h.shutdown()


def compare_files(path_a, path_b, offset):
    """(first differing absolute offset or None, differing 4 KiB blocks, sizes)."""
    size_a, size_b = os.path.getsize(path_a), os.path.getsize(path_b)
    first, blocks = None, 0
    with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
        fa.seek(offset)
        fb.seek(offset)
        pos = offset
        while True:
            a = fa.read(COMPARE_CHUNK)
            b = fb.read(COMPARE_CHUNK)
            if not a and not b:
                break
            n = max(len(a), len(b))
            for i in range(0, n, vblock.BLOCK):
                ba, bb = a[i:i + vblock.BLOCK], b[i:i + vblock.BLOCK]
                if ba != bb:
                    blocks += 1
                    if first is None:
                        j = 0
                        while j < min(len(ba), len(bb)) and ba[j] == bb[j]:
                            j += 1
                        first = pos + i + j
            pos += n
    return first, blocks, (size_a, size_b)


def split_pair(text, what):
    name, sep, value = text.partition("=")
    if not sep or not name or not value:
        raise UsageError("%s wants NAME=VALUE, got %r" % (what, text))
    return name, value


def fmt_t(t):
    if t is None:
        return "open"
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ")


def check(a):
    violations = {k: [] for k in KINDS}
    warnings = []
    summary = {"lbas": 0, "acked": 0, "durable_lbas": 0}

    resource = a.resource
    if resource is None and a.uri:
        path = urllib.parse.urlparse(a.uri).path.lstrip("/")
        resource = path or None

    oks = []
    if a.history:
        invoked, durable, oks, counts = read_histories(a.history)
        summary.update(counts)
        summary["durable_lbas"] = len(durable)
        lbas = sorted(set(invoked) | set(durable))
        if a.uri:
            summary["lbas"] = len(lbas)
            states = {}
            for lba, block in read_blocks(a.uri, lbas):
                kind, msg = judge_block(lba, block, invoked, durable)
                if kind:
                    violations[kind].append(msg)
                else:
                    states[msg] = states.get(msg, 0) + 1
            summary["blocks"] = states
        if counts["malformed"]:
            warnings.append("%d malformed history lines ignored" % counts["malformed"])

    per_node = {}
    for spec in a.hastd_log or []:
        node, path = split_pair(spec, "--hastd-log")
        with open(path, errors="replace") as f:
            per_node.setdefault(node, []).extend(primary_intervals(f, resource))
    summary["primary_intervals"] = {
        n: [[iv["resource"], fmt_t(iv["start"]), fmt_t(iv["end"]), iv["epoch"]] for iv in ivs]
        for n, ivs in per_node.items()}
    for res, epoch, nodes in split_brains(per_node):
        violations["SPLIT-BRAIN"].append(
            "resource %s epoch %d: primary on %s" % (res, epoch, ", ".join(nodes)))
    no_epoch = sum(1 for ivs in per_node.values() for iv in ivs if iv["epoch"] is None)
    if no_epoch:
        warnings.append("%d primary intervals without an epoch field (not checked for "
                        "split-brain)" % no_epoch)
    # Two nodes primary at the same time in different epochs is legal (the older
    # one is fenced) but worth seeing.
    nodes = sorted(per_node)
    for i, n1 in enumerate(nodes):
        for n2 in nodes[i + 1:]:
            for x in per_node[n1]:
                for y in per_node[n2]:
                    if x["resource"] != y["resource"]:
                        continue
                    xe = x["end"] if x["end"] is not None else float("inf")
                    ye = y["end"] if y["end"] is not None else float("inf")
                    lo, hi = max(x["start"], y["start"]), min(xe, ye)
                    if lo < hi:
                        warnings.append("%s (epoch %s) and %s (epoch %s) both primary "
                                        "from %s to %s" % (n1, x["epoch"], n2, y["epoch"],
                                                           fmt_t(lo), fmt_t(hi)))

    uri_node = {}
    for spec in a.node_uri or []:
        node, uri = split_pair(spec, "--node-uri")
        if node not in per_node:
            raise UsageError("--node-uri %s: no --hastd-log for node %s" % (spec, node))
        uri_node[uri] = node
    unmapped = set()
    near = 0
    for t, uri, lba, seq in oks:
        node = uri_node.get(uri)
        if node is None:
            if per_node:
                unmapped.add(uri)
            continue
        d = distance_outside(t, per_node[node])
        if d == 0.0:
            continue
        where = "no primary interval at all" if d is None else "%.3f s outside" % d
        if d is not None and d <= a.slack:
            near += 1
            if near <= 3:
                warnings.append("ack of LBA %d version %d from %s at %s is %s its primary "
                                "intervals (within slack)" % (lba, seq, node, fmt_t(t), where))
            continue
        violations["ACK-OUTSIDE-PRIMARY"].append(
            "LBA %d version %d acknowledged by %s at %s: %s" % (lba, seq, node, fmt_t(t),
                                                               where))
    if near > 3:
        warnings.append("%d acks within slack of a primary interval in all" % near)
    for uri in sorted(unmapped):
        warnings.append("acks from %s not checked against roles (no --node-uri)" % uri)

    if a.compare:
        first, blocks, sizes = compare_files(a.compare[0], a.compare[1], a.offset)
        summary["compare"] = {"first_difference": first, "differing_blocks": blocks,
                              "sizes": list(sizes)}
        if blocks or sizes[0] != sizes[1]:
            violations["DIFFER"].append(
                "%s and %s differ from offset %d on: first difference at %s, %d differing "
                "4 KiB blocks, sizes %d and %d" % (a.compare[0], a.compare[1], a.offset,
                                                   first, blocks, sizes[0], sizes[1]))

    summary["violations"] = {k: len(v) for k, v in violations.items()}
    summary["warnings"] = len(warnings)
    return summary, violations, warnings


def self_test():
    """Table tests of the pure parts (run by tests/cluster_tools.rs)."""
    T0 = 1795000000.0  # 2026-11-18T11:06:40Z
    for text, want in [
        ("2026-11-18T11:06:40Z", T0),
        ("2026-11-18T11:06:40.250000Z", T0 + 0.25),
        ("2026-11-18T11:06:40.123456789Z", T0 + 0.123456789),
        ("2026-11-18T12:06:40+01:00", T0),
        ("2026-11-18T11:06:40", T0),
        ("2026-13-17T09:46:40Z", None),
        ("yesterday", None),
    ]:
        got = parse_ts(text)
        assert (got is None and want is None) or abs(got - want) < 1e-6, (text, got, want)
    for rest, want in [
        ("role changed resource=r0 role=primary epoch=3",
         {"resource": "r0", "role": "primary", "epoch": "3"}),
        ('role changed resource="r0" role=secondary', {"resource": "r0", "role": "secondary"}),
        ("res{name=r0}: role changed role=init", {"name": "r0", "role": "init"}),
    ]:
        assert parse_fields(rest) == want, (rest, parse_fields(rest))
    log = [
        "=== /bin/hastd -F\n",
        "2026-11-18T11:06:40.000000Z  INFO role changed resource=r0 role=secondary\n",
        "2026-11-18T11:06:41.000000Z  INFO role changed resource=r1 role=primary epoch=9\n",
        "2026-11-18T11:06:42.000000Z  INFO role changed resource=r0 role=primary epoch=2\n",
        "2026-11-18T11:06:43.000000Z  WARN something else\n",
        "=== hastd killed: signal: 9 (SIGKILL)\n",
        "=== /bin/hastd -F\n",
        "\x1b[2m2026-11-18T11:06:50.000000Z\x1b[0m \x1b[32m INFO\x1b[0m role changed "
        "resource=r0 role=primary epoch=4\n",
        "2026-11-18T11:06:55.000000Z  INFO role changed resource=r0 role=secondary epoch=4\n",
        "2026-11-18T11:06:56.000000Z  INFO role changed resource=r0 role=primary\n",
    ]
    ivs = primary_intervals(log, "r0")
    got = [(iv["start"] - T0, None if iv["end"] is None else iv["end"] - T0, iv["epoch"],
            iv["end_reason"]) for iv in ivs]
    assert got == [(2.0, 10.0, 2, "killed"), (10.0, 15.0, 4, "role=secondary"),
                   (16.0, None, None, "still primary at end of log")], got
    tail = primary_intervals(log[:4] + ["=== hastd killed: signal: 9 (SIGKILL)\n"], "r0")
    assert [(iv["end"], iv["end_reason"]) for iv in tail] == [
        (None, "killed (end unknown: no later log line)")], tail
    every = [(iv["resource"], iv["start"] - T0, iv["epoch"])
             for iv in primary_intervals(log, None)]
    assert every == [("r1", 1.0, 9), ("r0", 2.0, 2), ("r0", 10.0, 4), ("r0", 16.0, None)], \
        every
    iv = lambda s, e, ep, r="r0": {"resource": r, "start": s, "end": e, "epoch": ep}  # noqa
    for per_node, want in [
        ({"a": [iv(0, 1, 1)], "b": [iv(2, 3, 2)]}, []),
        ({"a": [iv(0, 1, 3)], "b": [iv(5, 6, 3)]}, [("r0", 3, ["a", "b"])]),
        ({"a": [iv(0, 1, 3), iv(2, 3, 3)]}, []),
        ({"a": [iv(0, 1, None)], "b": [iv(0, 1, None)]}, []),
        ({"a": [iv(0, 1, 3)], "b": [iv(0, 1, 3, "r1")]}, []),
        ({"a": [iv(0, 1, 1)], "b": [iv(0, 1, 2)], "w": [iv(0, 1, 2)]},
         [("r0", 2, ["b", "w"])]),
    ]:
        assert split_brains(per_node) == want, (per_node, split_brains(per_node))
    for t, ivs, want in [
        (5.0, [iv(0, 10, 1)], 0.0),
        (10.5, [iv(0, 10, 1)], 0.5),
        (-2.0, [iv(0, 10, 1), iv(20, None, 2)], 2.0),
        (1e12, [iv(20, None, 2)], 0.0),
        (15.0, [iv(0, 10, 1), iv(16, 20, 2)], 1.0),
        (1.0, [], None),
    ]:
        assert distance_outside(t, ivs) == want, (t, ivs)
    blk = vblock.make(7, 100)
    inv = {7: {90, 100, 110}}
    for lba, block, durable, want in [
        (7, blk, {7: 100}, (None, "durable")),
        (7, blk, {7: 90}, (None, "newer")),
        (7, blk, {}, (None, "not-durable")),
        (7, vblock.ZERO, {}, (None, "zero")),
        (7, vblock.ZERO, {7: 90}, ("LOST", None)),
        (7, blk, {7: 110}, ("LOST", None)),
        (7, vblock.make(7, 105), {7: 100}, ("PHANTOM", None)),
        (8, blk, {}, ("CORRUPT", None)),
        (7, blk[:100] + b"x" + blk[101:], {}, ("CORRUPT", None)),
        (7, blk[:2048] + vblock.make(7, 110)[2048:], {}, ("CORRUPT", None)),
    ]:
        kind, msg = judge_block(lba, block, inv, durable)
        assert kind == want[0] and (want[1] is None or msg == want[1]), (lba, durable, kind, msg)
    print("self-test ok")


def main():
    if sys.argv[1:] == ["--self-test"]:
        self_test()
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--uri")
    p.add_argument("--history", action="append")
    p.add_argument("--hastd-log", action="append")
    p.add_argument("--node-uri", action="append")
    p.add_argument("--resource")
    p.add_argument("--slack", type=float, default=1.0)
    p.add_argument("--compare", nargs=2, metavar=("FILE_A", "FILE_B"))
    p.add_argument("--offset", type=int)
    a = p.parse_args()
    if a.uri and not a.history:
        p.error("--uri needs --history (the LBAs to read and what they must hold)")
    if a.compare and a.offset is None:
        p.error("--compare needs --offset (the data offset: metadata size)")
    if a.offset is not None and a.offset < 0:
        p.error("--offset must not be negative")
    if not (a.history or a.hastd_log or a.compare):
        p.error("nothing to check: give --uri/--history, --hastd-log or --compare")
    try:
        summary, violations, warnings = check(a)
    except UsageError as e:
        p.error(str(e))
    except OSError as e:
        sys.stderr.write("cluster_check: %s\n" % e)
        sys.exit(2)
    except Exception as e:  # libnbd errors: cannot read through the URI
        if type(e).__module__ == "nbd":
            sys.stderr.write("cluster_check: reading %s: %s\n" % (a.uri, e))
            sys.exit(2)
        raise
    print(json.dumps(summary), flush=True)
    shown = 0
    for kind in KINDS:
        for msg in violations[kind]:
            if shown >= DETAILS_MAX:
                break
            print("%s %s" % (kind, msg))
            shown += 1
    total = sum(len(v) for v in violations.values())
    if total > shown:
        print("... %d more violations" % (total - shown))
    for w in warnings[:WARNINGS_MAX]:
        print("WARNING " + w)
    sys.exit(1 if total else 0)


if __name__ == "__main__":
    try:
        main()
    except SystemExit:
        raise
    except BaseException:
        # A bug, not a finding: never let it look like exit 1 (violations).
        import traceback
        traceback.print_exc()
        sys.exit(2)
