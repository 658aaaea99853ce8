#!/usr/bin/env bash
# Where a server spends its CPU on one workload: hastd (`remote none`) and
# `nbdkit file` side by side, each profiled with `perf record -g` while fio
# drives it, then the hottest symbols of each and the system calls per request
# (issue 15: "find where the time goes").
#
#   bench/profile.sh                    # 1 MiB sequential reads at QD4
#   bench/profile.sh randwrite 4k 1     # fio's rw, block size, queue depth
#
# Prints, per server: IOPS, server CPU per request (task-clock over the
# profiled seconds), its context switches (sleeps) and CPU migrations per
# request, the top 15 symbols (self time), and the calls per request of the
# system calls that move data or wake threads. With BENCH_KEEP=1 the
# perf.data files stay in the work dir for `perf report -i` (and for a flame
# graph: `perf script -i FILE | inferno-collapse-perf | inferno-flamegraph`).
# Needs: cargo, fio (nbd engine), nbdkit, nbdinfo, perf, python3. Environment:
# BENCH_SIZE (1G), BENCH_SECONDS (5), BENCH_DIR (/var/tmp), BENCH_KEEP=1.

set -euo pipefail

RW=${1:-read}
BS=${2:-1M}
QD=${3:-4}
SIZE=${BENCH_SIZE:-1G}
SECS=${BENCH_SECONDS:-5}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_need cargo fio nbdkit nbdinfo perf
bench_init profile
bench_build

single "$WORK/hastd" "bench:$SIZE"
nbdkit_export "$WORK/nbdkit" "$SIZE"
declare -A URI=([hastd]=nbd://127.0.0.1:$SINGLE_PORT/bench [nbdkit-file]=$NBDKIT_URI)
declare -A PID=([hastd]=$SINGLE_PID [nbdkit-file]=$NBDKIT_PID)
SERVERS=(hastd nbdkit-file)
DATASIZE=$(smallest_size)
fill_servers

SYSCALLS="writev write sendto sendmsg read recvfrom pread64 preadv2 pwrite64 futex epoll_wait io_uring_enter"
for s in "${SERVERS[@]}"; do
    echo "== $RW $BS QD$QD on $s" >&2
    sync
    fio --name=p --ioengine=nbd --uri="${URI[$s]}" --rw="$RW" --bs="$BS" --iodepth="$QD" \
        --size="$DATASIZE" --time_based --runtime=$((2 * SECS + 3)) --randrepeat=0 \
        --norandommap --output-format=json --output="$WORK/$s.json" >/dev/null &
    fio_pid=$!
    sleep 1
    perf record -q -F 1999 -g -p "${PID[$s]}" -o "$WORK/$s.perf.data" -- sleep "$SECS" 2>/dev/null
    events=()
    for c in $SYSCALLS; do events+=(-e "syscalls:sys_enter_$c"); done
    perf stat -x, -e task-clock,context-switches,cpu-migrations "${events[@]}" -p "${PID[$s]}" -o "$WORK/$s.stat" -- sleep "$SECS"
    wait "$fio_pid"
done

echo
echo "hast profile: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, $RW $BS QD$QD, ${SECS} s"
for s in "${SERVERS[@]}"; do
    "$PY" - "$WORK" "$s" "$SECS" "$RW" <<'P'
import json, sys
work, s, secs, rw = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
text = open("%s/%s.json" % (work, s)).read()
job = json.loads(text[text.index("{"):])["jobs"][0]
d = job["read"] if job["read"]["total_ios"] else job["write"]
iops = d["iops"]
stat = {}
for line in open("%s/%s.stat" % (work, s)):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "", 1).isdigit():
        stat[f[2].replace("syscalls:sys_enter_", "")] = float(f[0])
reqs = iops * secs
print("\n### %s: %.0f IOPS, %.1f us CPU per request" % (s, iops, stat.get("task-clock", 0) * 1000 / reqs))
sched = ("context-switches", "cpu-migrations")
print("sleeps and moves per request: %s" % ", ".join(
    "%s %.2f" % (k, stat.get(k, 0) / reqs) for k in sched))
calls = ", ".join("%s %.2f" % (k, v / reqs) for k, v in stat.items()
                  if k != "task-clock" and k not in sched and v)
print("system calls per request: %s" % (calls or "none counted"))
P
    perf report -i "$WORK/$s.perf.data" --no-children --sort sym --stdio 2>/dev/null |
        grep -E '^ +[0-9]' | sed -n '1,15p'
done
