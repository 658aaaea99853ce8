#!/usr/bin/env bash
# What the connector costs and how long its failovers pause I/O (issue 12),
# in ONE run on this machine.
#
#   bench/connector.sh            # io, then pause
#   bench/connector.sh io         # through hastcd vs straight to the primary
#   bench/connector.sh pause      # the failover pause distribution
#   bench/connector.sh control    # the promise's checks without the connector
#   BENCH_SIZE=1G BENCH_RUNTIME=5 bench/connector.sh io     # quick look
#
# io: a fullsync pair on loopback (nodea primary, nodeb secondary, each with
# a discovery listener) and hastcd following it (controllers: both nodes,
# tcp_listen on loopback and a Unix socket_dir). One sparse file of
# BENCH_SIZE, filled once through NBD; then fio --ioengine=nbd runs each
# workload against the three ways in turn (interleaved, so drift in the
# machine's state hits all alike): straight to the primary's NBD port,
# through hastcd's TCP endpoint, through hastcd's Unix endpoint:
#
#   4 KiB random read QD32      4 KiB random write QD32
#   1 MiB sequential write QD4  4 KiB random write QD1 (latency)
#
# Targets: IOPS >= 0.85x straight, 1 MiB sequential >= 0.9x, QD1 mean write
# latency <= 1.3x.
#
# pause: the promise's test (tests/connector.rs) in release mode with
# BENCH_TRIALS faults (default 30; kill -9 of the primary, the primary
# isolated, the primary SIGSTOPped past its lease, in turn) under ext4 on
# hastcd's endpoint, in network namespaces; prints each trial's I/O pause
# (fault -> the end of the longest time without a completed fsync'd file
# operation) and the median / p99 / max. Needs root (namespaces, FUSE, loop).
#
# control: the same workload and checks with nbdfuse straight to the
# primary's NBD address, one kill -9 of the primary: the checks must report
# the broken promise (I/O errors, ext4 read-only); prints what they found.
#
# Every process started here is stopped by its PID on exit.
# Environment: BENCH_SIZE (2G), BENCH_RUNTIME (seconds per figure, 15),
# BENCH_RAMP (2), BENCH_TRIALS (30), BENCH_DIR (/var/tmp), BENCH_KEEP=1,
# BENCH_LOG (where the cargo test output of pause/control goes),
# CARGO_TARGET_DIR.

set -euo pipefail

SIZE=${BENCH_SIZE:-2G}
RUNTIME=${BENCH_RUNTIME:-15}
RAMP=${BENCH_RAMP:-2}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
MODE=${1:-all}
case $MODE in
all | io | pause | control) ;;
*)
    echo "usage: bench/connector.sh [all|io|pause|control]" >&2
    exit 64 ;;
esac

# shellcheck source=bench/lib.sh
. "$ROOT/bench/lib.sh"

# cargo_test NAME [LIBTEST ARGS...]: one test of tests/connector.rs in
# release mode, its output in a log; the lines worth reading are printed.
cargo_test() {
    local name=$1 status=0
    shift
    local log=${BENCH_LOG:-${TMPDIR:-/tmp}/hast-connector-$name-$$.log}
    (cd "$ROOT" && cargo test --release --test connector "$name" -- --exact --nocapture --test-threads=1 "$@") >"$log" 2>&1 || status=$?
    grep -E "^trial [0-9]+|I/O pause over|^\||straight to the primary|^  |fsck|intact|cluster_check|panicked|broken" "$log" |
        cut -c1-240 || true
    if [ "$status" -ne 0 ]; then
        echo "FAILED (exit $status); the whole output: $log" >&2
        return "$status"
    fi
    rm -f "$log"
}

bench_io() {
    bench_need cargo fio nbdinfo
    fio --enghelp 2>/dev/null | grep -qw nbd || { echo "connector.sh: this fio has no nbd engine" >&2; exit 69; }
    bench_init cbench
    bench_build
    local HASTCD=$TARGET/release/hastcd
    [ -x "$HASTCD" ] || { echo "connector.sh: no $HASTCD (src/bin/hastcd.rs)" >&2; exit 69; }

    # ---- the pair ------------------------------------------------------------
    local d=$WORK/pair
    mkdir -p "$d"
    local na nb ra rb da db
    na=$(free_port); nb=$(free_port); ra=$(free_port); rb=$(free_port)
    da=$(free_port); db=$(free_port)
    cat >"$d/hast.conf" <<CONF
on nodea {
    control uds://$d/a.sock
    pidfile $d/a.pid
    nbd_listen tcp://127.0.0.1:$na
    nbd_socket_dir $d/nbda
    state_dir $d/statea
    listen tcp://127.0.0.1:$ra
    discovery_listen tcp://127.0.0.1:$da
}
on nodeb {
    control uds://$d/b.sock
    pidfile $d/b.pid
    nbd_listen tcp://127.0.0.1:$nb
    nbd_socket_dir $d/nbdb
    state_dir $d/stateb
    listen tcp://127.0.0.1:$rb
    discovery_listen tcp://127.0.0.1:$db
}
resource bench {
    replication fullsync
    on nodea {
        local $d/a.img
        remote tcp://127.0.0.1:$rb
    }
    on nodeb {
        local $d/b.img
        remote tcp://127.0.0.1:$ra
    }
}
CONF
    truncate -s "$SIZE" "$d/a.img" "$d/b.img"
    local n i
    for n in nodea nodeb; do
        "$HASTCTL" create -c "$d/hast.conf" --node $n bench
        "$HASTD" -F -c "$d/hast.conf" --node $n 2>"$d/$n.log" &
        PIDS+=($!)
    done
    for n in a b; do
        for i in $(seq 100); do [ -S "$d/$n.sock" ] && break; sleep 0.1; done
    done
    "$HASTCTL" -c "$d/hast.conf" --node nodeb role secondary bench
    "$HASTCTL" -c "$d/hast.conf" --node nodea role primary bench
    local deadline=$((SECONDS + 120))
    until "$HASTCTL" -c "$d/hast.conf" --node nodea status bench | grep -q complete; do
        [ $SECONDS -lt $deadline ] || { echo "connector.sh: the pair is not in sync after 120 s" >&2; exit 1; }
        sleep 0.1
    done

    # ---- hastcd --------------------------------------------------------------
    # socket_dir short: hastcd wants room for a 64-byte resource name in a
    # 107-byte Unix socket path.
    local h=$WORK/hastcd s=$WORK/s tp
    mkdir -p "$h" "$s"
    tp=$(free_port)
    cat >"$h/hastcd.conf" <<CONF
[Global]
ctrl_loss_tmo = 60
poll_interval = 2
socket_dir = $s
tcp_listen = 127.0.0.1:$tp
control_socket = $h/hastcd.sock
dbus = none
[Controllers]
controller = host=127.0.0.1;port=$da
controller = host=127.0.0.1;port=$db
CONF
    "$HASTCD" -f "$h/hastcd.conf" 2>"$h/hastcd.log" &
    PIDS+=($!)

    SERVERS=(direct hastcd-tcp hastcd-unix)
    declare -gA URI=(
        [direct]=nbd://127.0.0.1:$na/bench
        [hastcd-tcp]=nbd://127.0.0.1:$tp/bench
        [hastcd-unix]="nbd+unix:///bench?socket=$s/bench.nbd"
    )
    for n in "${SERVERS[@]}"; do
        wait_export "${URI[$n]}" 30 || { tail -5 "$h/hastcd.log" >&2; exit 1; }
    done
    DATASIZE=$(smallest_size)
    echo "== filling ${SIZE} through NBD" >&2
    SERVERS=(direct)
    fill_servers
    SERVERS=(direct hastcd-tcp hastcd-unix)
    # name rw bs iodepth
    WORKLOADS=(
        "randread-4k-qd32 randread 4k 32"
        "randwrite-4k-qd32 randwrite 4k 32"
        "seqwrite-1m-qd4 write 1M 4"
        "randwrite-4k-qd1 randwrite 4k 1"
    )
    run_workloads

    echo
    echo "hast connector bench: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs, fullsync pair on loopback, ${SIZE}, ${RUNTIME} s per figure"
    "$PY" - "$WORK" <<'REPORT'
import json, sys
work = sys.argv[1]
rows = [("randread-4k-qd32", "read", "4 KiB rand read QD32 (IOPS)", "IOPS", ">=", 0.85),
        ("randwrite-4k-qd32", "write", "4 KiB rand write QD32 (IOPS)", "IOPS", ">=", 0.85),
        ("seqwrite-1m-qd4", "write", "1 MiB seq write QD4 (MiB/s)", "MiB/s", ">=", 0.9),
        ("randwrite-4k-qd1", "write", "4 KiB write QD1 mean latency (us)", "lat", "<=", 1.3),
        ("randwrite-4k-qd1", "write", "4 KiB write QD1 p99 latency (us)", "p99", None, None)]
def fig(name, server, rw, key):
    text = open("%s/%s-%s.json" % (work, name, server)).read()
    job = json.loads(text[text.index("{"):])["jobs"][0]
    if job.get("error"):
        raise SystemExit("fio error %s for %s on %s" % (job["error"], name, server))
    d = job[rw]
    return {"IOPS": d["iops"], "MiB/s": d["bw"] / 1024.0,
            "lat": d["clat_ns"]["mean"] / 1000.0,
            "p99": d["clat_ns"].get("percentile", {}).get("99.000000", 0) / 1000.0}[key]
print("| workload | straight to the primary | hastcd TCP | hastcd Unix | TCP/straight | Unix/straight | target |")
print("|---|---:|---:|---:|---:|---:|---|")
for name, rw, label, key, cmp, target in rows:
    d, t, u = (fig(name, s, rw, key) for s in ("direct", "hastcd-tcp", "hastcd-unix"))
    def mark(r):
        if target is None:
            return "%.2f" % r
        ok = r >= target if cmp == ">=" else r <= target
        return "%.2f%s" % (r, "" if ok else " (missed)")
    goal = "%s %.2fx" % (cmp, target) if target else ""
    print("| %s | %.1f | %.1f | %.1f | %s | %s | %s |" % (label, d, t, u, mark(t / d), mark(u / d), goal))
REPORT
    bench_cleanup
    trap - EXIT
}

if [ "$MODE" = all ] || [ "$MODE" = io ]; then
    bench_io
fi
if [ "$MODE" = all ] || [ "$MODE" = pause ]; then
    echo
    echo "== failover pauses under ext4 on hastcd's endpoint (${BENCH_TRIALS:-30} trials, release build)" >&2
    HAST_CONN_TRIALS=${BENCH_TRIALS:-30} cargo_test the_promise_ext4_never_notices_a_failover
fi
if [ "$MODE" = control ]; then
    echo "== the same workload straight to the primary (no connector): the checks must fail" >&2
    cargo_test control_straight_to_the_primary --ignored
fi
