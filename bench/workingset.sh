#!/usr/bin/env bash
# The activemap's working set (issue 15): what `keepdirty` buys and what it costs.
#
#   bench/workingset.sh                                  # 4 GiB set, 20 s per figure
#   BENCH_SET=1G BENCH_RUNTIME=5 bench/workingset.sh     # quick look
#
# A primary marks an extent dirty on disk (a synchronous metadata write) before
# the first write to it, and keeps the `keepdirty` most recently written extents
# dirty, so that writes to them pay nothing more. A random writer spread over more
# extents than that pays the metadata write again and again; after a crash of the
# primary every extent kept dirty is resynced. For each keepdirty K in
# BENCH_KEEPDIRTY ("64 2048": FreeBSD's default and hast's since issue 15,
# 2048 x 2 MiB = 4 GiB):
#
# 1. a fullsync pair on this machine (files of BENCH_SET + 64 MiB, the first
#    BENCH_SET written once with 1 MiB writes so every extent holds data);
#    fio 4 KiB random writes at QD1 over the first BENCH_SET, BENCH_WARM s to
#    reach steady state, then BENCH_RUNTIME s measured: IOPS, mean and p99
#    latency;
# 2. 12 s without writes (the idle barrier, every 10 s, clears every extent but
#    the kept ones), then kill -9 of the primary's hastd, restart, `role primary`
#    again: the resync of every extent its activemap still had marked dirty,
#    timed from the promotion to both sides `complete`, with its bytes. (Under a
#    writer that never stops, every extent written since the last barrier is
#    dirty as well, whatever keepdirty is.)
#
# Every process started here is stopped by its PID on exit. Needs: cargo, fio
# (nbd engine), nbdinfo, python3. Environment: BENCH_SET (4G), BENCH_KEEPDIRTY,
# BENCH_WARM (10), BENCH_RUNTIME (20), BENCH_DIR (/var/tmp), BENCH_KEEP=1,
# CARGO_TARGET_DIR.

set -euo pipefail

SET=${BENCH_SET:-4G}
KEEP=${BENCH_KEEPDIRTY:-64 2048}
WARM=${BENCH_WARM:-10}
RUNTIME=${BENCH_RUNTIME:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_need cargo fio nbdinfo
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "workingset.sh: this fio has no nbd engine" >&2; exit 69; }
bench_init workingset
bench_build

set_bytes=$(numfmt --from=iec "$SET")
file_bytes=$((set_bytes + 64 * 1024 * 1024))

for k in $KEEP; do
    d=$WORK/k$k
    echo "== keepdirty $k: a fullsync pair, $SET written" >&2
    pair "$d" fullsync "$file_bytes" plain "-k $k"
    ctl "$d" nodeb role secondary bench
    ctl "$d" nodea role primary bench
    wait_complete "$d" 600
    uri=$(cat "$d/uri")
    wait_export "$uri" 20
    fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=8 \
        --size="$SET" --output="$d/fill.txt" >/dev/null
    echo "== keepdirty $k: 4 KiB random writes at QD1 over $SET" >&2
    sync
    fio --name=qd1 --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=1 \
        --size="$SET" --time_based --runtime="$RUNTIME" --ramp_time="$WARM" --randrepeat=0 \
        --norandommap --output-format=json --output="$d/qd1.json" >/dev/null
    # Quiet for longer than the idle barrier's 10 s: the activemap clears every
    # extent but the `keepdirty` kept ones, as a primary that moved on from a
    # burst would. What stays dirty is what a crash now costs.
    sleep 12
    echo "== keepdirty $k: kill -9 of the primary, restart, resync" >&2
    kill -KILL "${PAIR_PID[a]}"
    wait "${PAIR_PID[a]}" 2>/dev/null || true
    pair_start "$d" nodea
    # The killed daemon's socket file is still there: wait for an answer.
    for i in $(seq 100); do ctl "$d" nodea status bench >/dev/null 2>&1 && break; sleep 0.1; done
    start=$(date +%s.%N)
    ctl "$d" nodea role primary bench
    wait_complete "$d" 1800
    end=$(date +%s.%N)
    ctl "$d" nodea list --json bench >"$d/list.json"
    echo "$start $end" >"$d/resync.time"
    # Both daemons stopped now: the next pair has the disk and the cores to itself.
    for n in a b; do kill -TERM "${PAIR_PID[$n]}"; wait "${PAIR_PID[$n]}" 2>/dev/null || true; done
    rm -f "$d/a.img" "$d/b.img"
done

"$PY" - "$WORK" "$KEEP" "$SET" <<'EOF'
import json, sys
work, keeps, wset = sys.argv[1], sys.argv[2].split(), sys.argv[3]
print(f"Random 4 KiB writes at QD1 over a {wset} working set (fullsync pair), and the resync")
print("after 12 s without writes and a kill -9 of the primary")
print(f"{'keepdirty':>10}{'kept dirty':>12}{'IOPS':>9}{'mean µs':>10}{'p99 µs':>10}"
      f"{'resynced':>12}{'resync s':>10}")
for k in keeps:
    d = f"{work}/k{k}"
    w = json.load(open(f"{d}/qd1.json"))["jobs"][0]["write"]
    lst = json.load(open(f"{d}/list.json"))
    r = lst["resources"][0]
    meta = r.get("meta", r)
    kept = int(k) * int(meta.get("extentsize", 2 << 20)) / 2**20
    start, end = (float(x) for x in open(f"{d}/resync.time").read().split())
    resynced = r.get("stats", r).get("resynced_bytes", 0) / 2**20
    print(f"{k:>10}{kept:>9.0f} MiB{w['iops']:>9.0f}{w['clat_ns']['mean'] / 1000:>10.1f}"
          f"{w['clat_ns']['percentile']['99.000000'] / 1000:>10.1f}"
          f"{resynced:>8.0f} MiB{end - start:>10.1f}")
EOF
