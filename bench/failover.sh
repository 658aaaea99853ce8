#!/usr/bin/env bash
# Failover time with default settings (issue 4, docs/overview.md §5): in three network
# namespaces (two data nodes running hastd + hastmon, a witness running
# hastmon) and a client writing (fullsync) to whichever node is primary,
# inject one fault, time until the client's writes are acknowledged again,
# heal, wait until the pair is back in sync, check that no acknowledged write
# was lost and that no epoch had two primaries, repeat. One cluster per kind:
#
#   KillPrimary          kill -9 of every daemon of the primary host
#   PausePrimary         SIGSTOP of the primary host's daemons
#   IsolatePrimary       the primary host cut from everyone
#   PausePrimaryHastd    SIGSTOP of hastd alone on the primary
#   PrimaryDiskHang      the primary's disk hangs (nbdkit behind nbdfuse stopped)
#   CutPrimarySecondary  the replication link cut (no takeover: the figure is
#                        how long the primary's writes pause before it goes on
#                        alone)
#
# The figure is fault -> first write acknowledged by the new primary as the
# client sees it (the link cut: fault -> the end of the client's longest pause).
# Prints each trial and a markdown table (kind | trials | median | p99 | max |
# lost acknowledged writes | epochs with two primaries) to paste in README.md.
# Needs root (network namespaces, iptables, FUSE).
#
#   bench/failover.sh                                  # 20 trials per kind
#   HAST_HA_TRIALS=50 bench/failover.sh
#   HAST_HA_KINDS=KillPrimary,PrimaryDiskHang bench/failover.sh
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
cargo test --release --test hastmon "${test[@]}" --exact --nocapture --test-threads=1 >"$LOG" 2>&1 || status=$?
grep -E "random schedule|took over|trial [0-9]+:|exports as primary|failover time|^\||check \{|panicked" "$LOG" |
    grep -vE "trial [0-9]+: (client|check) " | cut -c1-200 || true
if [ "$status" -ne 0 ]; then
    echo "FAILED (exit $status); the whole output: $LOG" >&2
    exit "$status"
fi
rm -f "$LOG"
