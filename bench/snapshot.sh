#!/usr/bin/env bash
# Benchmark `hastctl snapshot` (issue 14): the time clients are frozen does not
# grow with the volume, and the background copy costs writers little.
#
#   bench/snapshot.sh                          # 10 snapshots per size, 20 s latency runs
#   BENCH_SNAPSHOTS=3 BENCH_RUNTIME=5 bench/snapshot.sh   # quick look
#
# One hastd (`remote none`) with two resources, 1 GiB and 8 GiB, each with its
# first GiB written (so every snapshot copies 1 GiB of data; the rest of the 8 GiB
# one is holes, skipped by the copy).
#
# 1. Frozen time: for each resource, under a 4 KiB random-write load (fio
#    --ioengine=nbd, QD16, over its first GiB), BENCH_SNAPSHOTS snapshots one
#    after the other; median and max of `frozen_ms` (hold of new writes to their
#    release, from `hastctl snapshot --json`) and of the copy time.
# 2. Writers during the copy: fio 4 KiB random writes at QD1 on the 8 GiB
#    resource for BENCH_RUNTIME s, once alone and once while snapshots of it run
#    back to back; mean and p99 completion latency, and their ratio.
#
# Goals: frozen time < 50 ms and the same for both sizes; latency during the
# copy <= 2x without. Every process started here is stopped by its PID on exit.
# Needs: cargo, fio (nbd engine), nbdinfo, python3.
#
# Environment: BENCH_SNAPSHOTS (10), BENCH_RUNTIME (20), BENCH_DIR (/var/tmp),
# BENCH_KEEP=1, CARGO_TARGET_DIR.

set -euo pipefail

SNAPS=${BENCH_SNAPSHOTS:-10}
RUNTIME=${BENCH_RUNTIME:-20}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_need cargo fio nbdinfo
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "snapshot.sh: this fio has no nbd engine" >&2; exit 69; }
bench_init snapshot
bench_build

mkdir -p "$WORK/snaps"
single "$WORK/hastd" g1:1G g8:8G
PORT=$SINGLE_PORT
CTL=("${SINGLE_CTL[@]}")
for r in g1 g8; do
    wait_export "nbd://127.0.0.1:$PORT/$r" 20
    echo "== writing the first GiB of $r" >&2
    fio --name=fill --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/$r" --rw=write --bs=1M \
        --iodepth=8 --size=1G --output="$WORK/fill-$r.txt" >/dev/null
done

# snap RES OUT: one snapshot into a fresh directory, its `done` record appended
# to OUT; the images removed afterwards.
snap() {
    local d
    d=$(mktemp -d "$WORK/snaps/s.XXXXXX")
    "${CTL[@]}" snapshot --json -t 30 -o "$d" "$1" | tail -n 1 >>"$2"
    rm -rf "$d"
}

# load RES SECONDS QD OUT: fio 4 KiB random writes over the first GiB, in the
# background (its PID in LOAD).
load() {
    fio --name=load --ioengine=nbd --uri="nbd://127.0.0.1:$PORT/$1" --rw=randwrite --bs=4k \
        --iodepth="$3" --size=1G --time_based --runtime="$2" --randrepeat=0 --norandommap \
        --output-format=json --output="$4" >/dev/null &
    LOAD=$!
    PIDS+=($LOAD)
}

for r in g1 g8; do
    echo "== $SNAPS snapshots of $r under random writes" >&2
    load "$r" 3600 16 "$WORK/load-$r.json"
    sleep 2
    for i in $(seq "$SNAPS"); do snap "$r" "$WORK/frozen-$r.jsonl"; done
    kill -TERM "$LOAD" 2>/dev/null || true
    wait "$LOAD" 2>/dev/null || true
done

echo "== QD1 random writes on g8, alone ($RUNTIME s)" >&2
sync
load g8 "$RUNTIME" 1 "$WORK/qd1-alone.json"
wait "$LOAD" || true
echo "== QD1 random writes on g8, snapshots of it back to back ($RUNTIME s)" >&2
sync
load g8 "$RUNTIME" 1 "$WORK/qd1-copy.json"
while kill -0 "$LOAD" 2>/dev/null; do snap g8 "$WORK/during.jsonl"; done
wait "$LOAD" || true

"$PY" - "$WORK" <<'EOF'
import json, statistics, sys
work = sys.argv[1]
def records(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.strip()]
print("Frozen time of `hastctl snapshot` under 4 KiB random writes (QD16), ms")
print(f"{'resource':<10}{'snapshots':>10}{'frozen median':>15}{'frozen max':>12}"
      f"{'copy median':>13}{'image written':>15}")
for r, label in (("g1", "1 GiB"), ("g8", "8 GiB")):
    rs = records(f"{work}/frozen-{r}.jsonl")
    fr = [x["frozen_ms"] for x in rs]
    cp = [x["copy_ms"] for x in rs]
    wr = statistics.median(x["images"][0]["written_bytes"] for x in rs) / 2**20
    print(f"{label:<10}{len(rs):>10}{statistics.median(fr):>15}{max(fr):>12}"
          f"{statistics.median(cp):>13}{wr:>12.0f} MiB")
def lat(path):
    j = json.load(open(path))["jobs"][0]["write"]
    clat = j["clat_ns"]
    return clat["mean"] / 1000, clat["percentile"]["99.000000"] / 1000, j["iops"]
a = lat(f"{work}/qd1-alone.json")
c = lat(f"{work}/qd1-copy.json")
n = len(records(f"{work}/during.jsonl"))
print()
print("4 KiB random writes at QD1 on the 8 GiB resource")
print(f"{'':<28}{'mean µs':>10}{'p99 µs':>10}{'IOPS':>10}")
print(f"{'alone':<28}{a[0]:>10.1f}{a[1]:>10.1f}{a[2]:>10.0f}")
print(f"{f'during {n} snapshots':<28}{c[0]:>10.1f}{c[1]:>10.1f}{c[2]:>10.0f}")
print(f"{'ratio (during / alone)':<28}{c[0]/a[0]:>10.2f}{c[1]/a[1]:>10.2f}{c[2]/a[2]:>10.2f}")
EOF
