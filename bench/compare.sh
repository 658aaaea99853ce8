#!/usr/bin/env bash
# Benchmark hastd (one node, `remote none`) against qemu-nbd and nbdkit serving the
# same kind of file, in ONE run on this machine (docs/overview.md §11, issue 2).
#
#   bench/compare.sh            # 4 GiB files, 20 s per figure
#   BENCH_SIZE=1G BENCH_RUNTIME=5 bench/compare.sh     # quick look
#
# Every server gets its own sparse file of BENCH_SIZE, filled once through NBD
# (1 MiB sequential writes) so reads hit data, not holes. qemu-nbd runs with the
# page cache in writeback mode (--cache=writeback -f raw --aio=threads), nbdkit's
# file plugin with its default cache (the page cache), hastd with `remote none`.
# Each workload is run against the three servers in turn (interleaved, so drift
# in the machine's state hits all three alike) with fio --ioengine=nbd:
#
#   4 KiB random read  QD32        4 KiB random write QD32
#   1 MiB sequential read QD4      1 MiB sequential write QD4
#   4 KiB random write QD1 (latency)
#
# and a table prints IOPS, MiB/s, mean and p99 completion latency, and the ratio
# hastd/qemu-nbd. Goal (unreplicated): ratio >= 1.0 for IOPS and MiB/s, <= 1.0
# for latency. hastd is built in release mode first. Every process started here is
# stopped by its PID on exit. Needs: cargo, fio (with the nbd engine), qemu-nbd,
# nbdkit, nbdinfo, python3.
#
# Environment: BENCH_SIZE (4G), BENCH_RUNTIME (seconds per figure, 20),
# BENCH_RAMP (seconds, 2), BENCH_DIR (where the files go, /var/tmp),
# BENCH_KEEP=1 (keep the work dir with fio's JSON), CARGO_TARGET_DIR.

set -euo pipefail

SIZE=${BENCH_SIZE:-4G}
RUNTIME=${BENCH_RUNTIME:-20}
RAMP=${BENCH_RAMP:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"
bench_need cargo fio qemu-nbd nbdkit nbdinfo
fio --enghelp 2>/dev/null | grep -qw nbd || { echo "compare.sh: this fio has no nbd engine" >&2; exit 69; }
bench_init bench
bench_build

# ---- hastd ------------------------------------------------------------------
H=$WORK/hastd
mkdir -p "$H/nbd" "$H/state"
truncate -s "$SIZE" "$H/bench.img"
HPORT=$(free_port)
cat >"$H/hast.conf" <<EOF
control uds://$H/ctl.sock
pidfile $H/hastd.pid
nbd_listen tcp://127.0.0.1:$HPORT
nbd_socket_dir $H/nbd
state_dir $H/state
listen tcp://127.0.0.1:$(free_port)
resource bench {
    on benchnode {
        local $H/bench.img
        remote none
    }
}
EOF
"$HASTCTL" create -c "$H/hast.conf" --node benchnode bench
"$HASTD" -F -c "$H/hast.conf" --node benchnode 2>"$H/hastd.log" &
PIDS+=($!)
for i in $(seq 100); do [ -S "$H/ctl.sock" ] && break; sleep 0.1; done
"$HASTCTL" role -c "$H/hast.conf" --node benchnode primary bench
HURI=nbd://127.0.0.1:$HPORT/bench
wait_export "$HURI" 20

# ---- qemu-nbd ---------------------------------------------------------------
qemu_export "$WORK/qemu" "$SIZE"
QURI=$QEMU_URI

# ---- nbdkit file ------------------------------------------------------------
K=$WORK/nbdkit
mkdir -p "$K"
truncate -s "$SIZE" "$K/bench.img"
KPORT=$(free_port)
nbdkit -f -i 127.0.0.1 -p "$KPORT" file file="$K/bench.img" 2>"$K/nbdkit.log" &
PIDS+=($!)
KURI=nbd://127.0.0.1:$KPORT/
wait_export "$KURI" 20

SERVERS=(hastd qemu-nbd nbdkit)
declare -A URI=([hastd]=$HURI [qemu-nbd]=$QURI [nbdkit]=$KURI)
# The data size differs a little (hastd keeps its metadata in the file): use the
# smallest, so every server sees the same offsets.
DATASIZE=$(smallest_size)

echo "== filling the three ${SIZE} files through NBD" >&2
fill_servers

# name rw bs iodepth
WORKLOADS=(
    "randread-4k-qd32 randread 4k 32"
    "randwrite-4k-qd32 randwrite 4k 32"
    "seqread-1m-qd4 read 1M 4"
    "seqwrite-1m-qd4 write 1M 4"
    "randwrite-4k-qd1 randwrite 4k 1"
)
run_workloads

echo
echo "hast bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, file ${SIZE}, ${RUNTIME} s per figure"
"$PY" - "$WORK" <<'EOF'
import json, sys
work = sys.argv[1]
servers = ["hastd", "qemu-nbd", "nbdkit"]
workloads = [("randread-4k-qd32", "read", "4 KiB rand read QD32"),
             ("randwrite-4k-qd32", "write", "4 KiB rand write QD32"),
             ("seqread-1m-qd4", "read", "1 MiB seq read QD4"),
             ("seqwrite-1m-qd4", "write", "1 MiB seq write QD4"),
             ("randwrite-4k-qd1", "write", "4 KiB write QD1")]
def figures(name, server, rw):
    with open("%s/%s-%s.json" % (work, name, server)) as f:
        text = f.read()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    if job.get("error"):
        raise SystemExit("fio reported error %s for %s on %s" % (job["error"], name, server))
    d = job[rw]
    pct = d["clat_ns"].get("percentile", {})
    return {"IOPS": d["iops"], "MiB/s": d["bw"] / 1024.0,
            "lat mean us": d["clat_ns"]["mean"] / 1000.0,
            "lat p99 us": pct.get("99.000000", 0) / 1000.0}
print("| workload | figure | hastd | qemu-nbd | nbdkit | hastd/qemu-nbd |")
print("|---|---|---:|---:|---:|---:|")
for name, rw, label in workloads:
    f = {s: figures(name, s, rw) for s in servers}
    keys = ["IOPS", "MiB/s", "lat mean us", "lat p99 us"]
    for k in keys:
        q = f["qemu-nbd"][k]
        ratio = f["hastd"][k] / q if q else float("nan")
        higher_is_better = k in ("IOPS", "MiB/s")
        ok = ratio >= 1.0 if higher_is_better else ratio <= 1.0
        fmt = "%.0f" if k == "IOPS" else "%.1f"
        print("| %s | %s | %s | %s | %s | %.2f%s |" % (
            label, k, fmt % f["hastd"][k], fmt % f["qemu-nbd"][k], fmt % f["nbdkit"][k],
            ratio, "" if ok else " (below)"))
        label = ""
print()
print("ratio = hastd / qemu-nbd; goal >= 1.00 for IOPS and MiB/s, <= 1.00 for latency.")
EOF
