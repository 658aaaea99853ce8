#!/usr/bin/env bash
# Benchmark replicated hastd (two nodes on this machine, sharing its one disk)
# against qemu-nbd, in ONE run (docs/overview.md §11, issue 3), printed as ratios.
#
#   bench/replicated.sh                              # 2 GiB, 15 s per figure
#   BENCH_SIZE=1G BENCH_RUNTIME=5 bench/replicated.sh   # quick look
#
# Part 1: a fullsync pair and a memsync pair (nodea primary, nodeb secondary,
# loopback), one hastd alone (`remote none`), `nbdkit file` and qemu-nbd
# (--cache=writeback --aio=threads), each on its own sparse file filled once;
# fio --ioengine=nbd runs 4 KiB random read/write at QD32, 1 MiB sequential
# write at QD4 and 4 KiB sequential write at QD1 (plus random at QD1, for
# information), interleaved over the servers. Every row prints each pair's
# ratio to the one-node hastd and fullsync's to each peer. Targets (issue 15,
# the pair against one node in the same run): random writes QD32 and 1 MiB
# writes >= 0.5x (both nodes share one disk here), reads >= 0.9x, QD1 write
# latency <= 1.5x.
# The same run also measures what protecting the link costs: two more
# fullsync pairs, `hmac` (a shared secret_file) and `tls` (tls:// addresses,
# self-signed certificates made with openssl, each node pinning the other's;
# no secret_file, so the column is TLS alone), against `fullsync` (neither),
# on 1 MiB sequential write QD4 and 4 KiB write QD1 (median latency).
# Targets (issue 9): tls >= 0.7x plaintext on 1 MiB QD4, tls QD1 latency
# <= 1.25x, hmac within 5%.
# Part 2: full resync of BENCH_SYNC_SIZE (1G) of random data from a primary to a
# fresh secondary, timed from `role secondary` to both sides `complete`,
# against `nbdcopy` of the same data between two qemu-nbd exports. Target:
# resync rate >= 0.8x nbdcopy's.
# Every row also prints what a request costs the machine (CPU per request of
# the whole machine, from /proc/stat, and of the hastd processes, from
# /proc/PID/stat) and the bound that puts on pair/one when the CPUs are the
# limit; and QD1 writes run once more with every process on CPU 0 (no
# cross-CPU wake-ups, nothing overlapped): the pair's work per request against
# one node's.
# Every process started here is stopped by its PID on exit.
# Environment: BENCH_SIZE (2G), BENCH_SYNC_SIZE (1G), BENCH_RUNTIME (15),
# BENCH_ROUNDS (1: each figure the best of that many interleaved runs),
# BENCH_RAMP (2), BENCH_DIR (/var/tmp), BENCH_KEEP=1, CARGO_TARGET_DIR.

set -euo pipefail

SIZE=${BENCH_SIZE:-2G}
SYNC_SIZE=${BENCH_SYNC_SIZE:-1G}
RUNTIME=${BENCH_RUNTIME:-15}
ROUNDS=${BENCH_ROUNDS:-1}
RAMP=${BENCH_RAMP:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_need cargo fio qemu-nbd nbdinfo nbdcopy openssl
bench_init rbench
bench_build

# ---- part 1: I/O through a replicated export -----------------------------------
declare -A URI
for mode in fullsync memsync hmac tls; do
    case $mode in
        hmac | tls) pair "$WORK/$mode" fullsync "$SIZE" $mode ;;
        *) pair "$WORK/$mode" $mode "$SIZE" ;;
    esac
    ctl "$WORK/$mode" nodeb role secondary bench
    ctl "$WORK/$mode" nodea role primary bench
    wait_complete "$WORK/$mode" 120
    # Primary first, then secondary: the report reads them in this order.
    SERVER_PID[$mode]="${PAIR_PID[a]} ${PAIR_PID[b]}"
    URI[$mode]=$(cat "$WORK/$mode/uri")
    wait_export "${URI[$mode]}" 20
done
single "$WORK/single" "bench:$SIZE"
URI[single]=nbd://127.0.0.1:$SINGLE_PORT/bench
SERVER_PID[single]=$SINGLE_PID
nbdkit_export "$WORK/nbdkit" "$SIZE"
URI[nbdkit-file]=$NBDKIT_URI
SERVER_PID[nbdkit-file]=$NBDKIT_PID
qemu_export "$WORK/qemu" "$SIZE"
URI[qemu-nbd]=$QEMU_URI
SERVER_PID[qemu-nbd]=$QEMU_PID
SERVERS=(fullsync memsync hmac tls single nbdkit-file qemu-nbd)
DATASIZE=$(smallest_size)
echo "== filling the ${SIZE} files through NBD" >&2
fill_servers
# The link-protection columns need only the two workloads they report.
WORKLOADS=(
    "seqwrite-1m-qd4 write 1M 4"
    "write-4k-qd1 write 4k 1"
)
run_workloads
SERVERS=(fullsync memsync single nbdkit-file qemu-nbd)
WORKLOADS=(
    "randread-4k-qd32 randread 4k 32"
    "randwrite-4k-qd32 randwrite 4k 32"
    "randwrite-4k-qd1 randwrite 4k 1"
)
run_workloads
# QD1 with every process on CPU 0: no wake-up crosses CPUs and nothing runs
# beside anything else, so the latency is the work one request costs.
SERVERS=(fullsync single)
WORKLOADS=("write-4k-qd1-cpu0 write 4k 1 pin")
run_workloads
# All pairs off: part 2 gets the disk to itself.
for mode in fullsync memsync hmac tls; do
    ctl "$WORK/$mode" nodea role init bench
    ctl "$WORK/$mode" nodeb role init bench
done
"${SINGLE_CTL[@]}" role init bench

# ---- part 2: full resync vs nbdcopy --------------------------------------------
S=$WORK/sync
pair "$S" fullsync "$SYNC_SIZE"
ctl "$S" nodea role primary bench
SURI=$(cat "$S/uri")
wait_export "$SURI" 20
SDATA=$(nbdinfo --size "$SURI")
head -c "$SDATA" /dev/urandom >"$WORK/random.img"
nbdcopy "$WORK/random.img" "$SURI"
sync
ctl "$S" nodeb role secondary bench
# The resync starts when the primary's next connection attempt succeeds (it
# retries with backoff); time the copy itself, from connected to complete.
deadline=$((SECONDS + 60))
until ctl "$S" nodea list --json bench | grep -q '"peer": "connected"'; do
    [ $SECONDS -lt $deadline ] || { echo "replicated.sh: never connected" >&2; exit 1; }
    sleep 0.02
done
t0=$(date +%s.%N)
wait_complete "$S" 600
t1=$(date +%s.%N)
C=$WORK/copy; mkdir -p "$C"
truncate -s "$SDATA" "$C/src.img" "$C/dst.img"
P1=$(free_port); P2=$(free_port)
qemu-nbd -f raw --cache=writeback --aio=threads -t -b 127.0.0.1 -p "$P1" -x src "$C/src.img" 2>/dev/null &
PIDS+=($!)
qemu-nbd -f raw --cache=writeback --aio=threads -t -b 127.0.0.1 -p "$P2" -x dst "$C/dst.img" 2>/dev/null &
PIDS+=($!)
wait_export "nbd://127.0.0.1:$P1/src" 20
wait_export "nbd://127.0.0.1:$P2/dst" 20
nbdcopy "$WORK/random.img" "nbd://127.0.0.1:$P1/src"
sync
t2=$(date +%s.%N)
nbdcopy "nbd://127.0.0.1:$P1/src" "nbd://127.0.0.1:$P2/dst"
sync
t3=$(date +%s.%N)

echo
echo "hast replicated bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, file ${SIZE}, best of ${ROUNDS} x ${RUNTIME} s per figure"
"$PY" - "$WORK" "$SDATA" "$t0" "$t1" "$t2" "$t3" "$(getconf CLK_TCK)" <<'REPORT'
import sys
import fiojson
work, sdata = sys.argv[1], int(sys.argv[2])
t0, t1, t2, t3 = map(float, sys.argv[3:7])
hz = float(sys.argv[7])
# (name, rw, label, figure, target: the pair / one node hastd)
rows = [("randread-4k-qd32", "read", "4 KiB rand read QD32 (IOPS)", "IOPS", 0.9),
        ("randwrite-4k-qd32", "write", "4 KiB rand write QD32 (IOPS)", "IOPS", 0.5),
        ("seqwrite-1m-qd4", "write", "1 MiB seq write QD4 (MiB/s)", "MiB/s", 0.5),
        ("write-4k-qd1", "write", "4 KiB write QD1 mean latency (us)", "lat", 1.5),
        ("randwrite-4k-qd1", "write", "4 KiB random write QD1 mean latency (us)", "lat", None)]
def fig(name, server, rw, key):
    job = fiojson.job("%s/%s-%s.json" % (work, name, server))
    if job.get("error"):
        raise SystemExit("fio error %s for %s on %s" % (job["error"], name, server))
    d = job[rw]
    return {"IOPS": d["iops"], "MiB/s": d["bw"] / 1024.0, "lat": d["clat_ns"]["mean"] / 1000.0}[key]
servers = ["fullsync", "memsync", "single", "nbdkit-file", "qemu-nbd"]
print("| workload | fullsync | memsync | one node | nbdkit file | qemu-nbd | fullsync/one | memsync/one | fullsync/nbdkit | fullsync/qemu | target (pair/one node) |")
print("|---|" + "---:|" * 9 + "---|")
for name, rw, label, key, target in rows:
    v = {s: fig(name, s, rw, key) for s in servers}
    lat = key == "lat"
    ratios = [v[p] / v["single"] for p in ("fullsync", "memsync")]
    peers = [v["fullsync"] / v[p] for p in ("nbdkit-file", "qemu-nbd")]
    if target:
        met = all(r <= target if lat else r >= target for r in ratios)
        goal = "%s %.1fx%s" % ("<=" if lat else ">=", target, "" if met else " (missed)")
    else:
        goal = "(see README)"
    print("| %s | %s | %s | %s |" % (label, " | ".join("%.1f" % v[s] for s in servers),
                                     " | ".join("%.2f" % r for r in ratios + peers), goal))
def cost(name, server, rw):
    """What a run cost: the machine's busy share, its CPU per request (every
    process and softirq, fio's included), hastd's own (both daemons of a
    pair) and the secondary's alone. Over the ramp too, so the requests are
    scaled to it at the measured rate."""
    job = fiojson.job("%s/%s-%s.json" % (work, name, server))
    d = job[rw]
    ios, _ = fiojson.with_ramp(job, d)
    b0, n0, b1, n1 = map(float, open("%s/%s-%s.machine" % (work, name, server)).read().split())
    pids = [l.split() for l in open("%s/%s-%s.cpu" % (work, name, server)) if l.strip()]
    spent = [float(b) - float(a) for _, a, b in pids]
    return {"busy": (b1 - b0) / (n1 - n0), "machine": (b1 - b0) / hz * 1e6 / ios,
            "hastd": sum(spent) * 1e6 / ios,
            "secondary": spent[1] * 1e6 / ios if len(spent) > 1 else None,
            "lat": d["clat_ns"]["mean"] / 1000.0}
print()
print("What a request costs (CPU microseconds per request; machine: every process,")
print("fio's and the kernel's included). CPU bound: for IOPS and MiB/s, one node's machine")
print("CPU per request over the pair's, the most pair/one can reach when the CPUs are the")
print("limit; for latency, the pair's over one node's, the least pair/one can be when one")
print("CPU does all the work in turn (the one-CPU row: nothing overlaps).")
print()
print("| workload | server | machine busy | machine CPU/req | hastd CPU/req | secondary CPU/req | pair/one | CPU bound |")
print("|---|---|---:|---:|---:|---:|---:|---:|")
pairs = ("fullsync", "memsync")
for name, rw, label, key, target in rows[1:4] + [
        ("write-4k-qd1-cpu0", "write", "4 KiB write QD1, one CPU (us)", "lat", 1.5)]:
    # The one-CPU row runs fullsync alone against one node.
    row = pairs[:1] if name.endswith("-cpu0") else pairs
    c = {s: cost(name, s, rw) for s in row + ("single",)}
    for s in c:
        ratio = bound = ""
        if s != "single":
            # Throughput: one node's CPU per request over the pair's (a
            # ceiling); latency: the pair's over one node's (a floor).
            r = fig(name, s, rw, key) / fig(name, "single", rw, key)
            m = c["single"]["machine"] / c[s]["machine"]
            ratio, bound = "%.2f" % r, "%.2f" % (1 / m if key == "lat" else m)
        sec = c[s]["secondary"]
        print("| %s | %s | %.0f%% | %.1f | %.1f | %s | %s | %s |" % (
            label, s, 100 * c[s]["busy"], c[s]["machine"], c[s]["hastd"],
            "%.1f" % sec if sec is not None else "", ratio, bound))
        label = ""
q = cost("write-4k-qd1", "fullsync", "write")
one = cost("write-4k-qd1", "single", "write")
print()
print("QD1: fullsync's secondary spends %.1f us of CPU per request, %.2fx one node's mean" % (q["secondary"], q["secondary"] / one["lat"]))
print("latency (%.1f us); it is on the client's path (the primary waits for its reply)," % one["lat"])
print("so fullsync/one <= 1.5 needs that share <= 0.5 plus what the primary's own write overlaps.")
mib = sdata / 1048576.0
rs, cp = mib / (t1 - t0), mib / (t3 - t2)
print()
print("| full sync of %.0f MiB of random data | MiB/s | seconds |" % mib)
print("|---|---:|---:|")
print("| hastd resync (connected -> complete, both flushed) | %.1f | %.2f |" % (rs, t1 - t0))
print("| nbdcopy qemu-nbd -> qemu-nbd | %.1f | %.2f |" % (cp, t3 - t2))
print("| ratio hastd/nbdcopy (target >= 0.8) | %.2f | |" % (rs / cp))
def median_us(name, server):
    job = fiojson.job("%s/%s-%s.json" % (work, name, server))
    return job["write"]["clat_ns"]["percentile"]["50.000000"] / 1000.0
print()
print("| link protection (fullsync) | plaintext | hmac | tls | hmac/plain | tls/plain | target |")
print("|---|---:|---:|---:|---:|---:|---|")
p, h, t = (fig("seqwrite-1m-qd4", s, "write", "MiB/s") for s in ("fullsync", "hmac", "tls"))
print("| 1 MiB seq write QD4 (MiB/s) | %.1f | %.1f | %.1f | %.2f | %.2f | tls >= 0.7x, hmac >= 0.95x |" % (p, h, t, h / p, t / p))
p, h, t = (median_us("write-4k-qd1", s) for s in ("fullsync", "hmac", "tls"))
print("| 4 KiB write QD1 median latency (us) | %.1f | %.1f | %.1f | %.2f | %.2f | tls <= 1.25x, hmac <= 1.05x |" % (p, h, t, h / p, t / p))
p, h, t = (fig("write-4k-qd1", s, "write", "lat") for s in ("fullsync", "hmac", "tls"))
print("| 4 KiB write QD1 mean latency (us) | %.1f | %.1f | %.1f | %.2f | %.2f | |" % (p, h, t, h / p, t / p))
REPORT
