#!/usr/bin/env bash
# Failover time with default settings (issue 4, SPEC §5): in three network
# namespaces (two data nodes running hastd + hastmon, a witness running
# hastmon) and a client writing to whichever node is primary, kill -9 every
# daemon of the primary, time until the other node exports the resource as
# primary, restart the killed node, wait until it is back in sync, check that
# no acknowledged write was lost, repeat. Prints each trial and the median and
# p99 over all trials. Needs root (network namespaces, iptables).
#
#   bench/failover.sh              # 20 trials
#   HAST_HA_TRIALS=50 bench/failover.sh
#
# Also: long runs of random fault schedules (seeded; a failure prints the seed
# and the schedule to replay with HAST_HA_SEED):
#   HAST_HA_FAULTS=100 bench/failover.sh random
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
export HAST_HA_TRIALS=${HAST_HA_TRIALS:-20}
LOG=${BENCH_LOG:-${TMPDIR:-/tmp}/hast-failover-$$.log}
case ${1:-time} in
time) test=(failover_time -- --ignored) ;;
random) test=(random_fault_schedules --) ;;
*)
    echo "usage: bench/failover.sh [time|random]" >&2
    exit 64 ;;
esac
status=0
cargo test --release --test hastmon "${test[@]}" --nocapture --test-threads=1 >"$LOG" 2>&1 || status=$?
grep -E "random schedule|took over|failover time|check \{|panicked" "$LOG" | cut -c1-160 || true
if [ "$status" -ne 0 ]; then
    echo "FAILED (exit $status); the whole output: $LOG" >&2
    exit "$status"
fi
rm -f "$LOG"
