#!/usr/bin/env bash
# THE test command (README, and .ci/run calls it): formatting, lints, every test —
# unit, integration tests that drive real hastd/hastctl processes with real NBD
# clients (qemu-io, nbdinfo, nbdcopy, nbdfuse, fio, python3-libnbd), the root-only
# ext4-over-nbdfuse test — then a short fuzz smoke run of every fuzz target, and
# the Debian package built, installed and smoke-tested (scripts/deb-smoke.sh).
#
#   scripts/test.sh
#
# Environment:
#   CI=true               nothing may be skipped: a missing tool or root fails
#   HAST_FUZZ_SECONDS=20  time per fuzz target
#   HAST_TEST_THREADS=N   passed to the test harness as --test-threads
#   HAST_CRASH_ROUNDS=3   rounds of the kill -9 test (tests/crash.rs)
#   HAST_KEEP_TMP=1       keep the test nodes' directories (logs, configs, images)
#
# Ends with the summary line of every test binary, every skipped test and step
# by name and `N passed, N failed, N skipped, N ignored` (scripts/test-summary.sh).
# Exit status: 0 all ran and passed, 1 something failed, 2 nothing failed but
# something skipped (outside CI only: there a skip is a failure).

set -uo pipefail
cd "$(dirname "$0")/.."

FUZZ_SECONDS=${HAST_FUZZ_SECONDS:-20}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
mkdir -p "$TARGET_DIR"
TEST_LOG=$TARGET_DIR/test-output.log

in_ci() {
    case "${CI:-}" in "" | 0 | false | FALSE | False) return 1 ;; *) return 0 ;; esac
}

step() {
    printf '\n==> %s\n' "$*"
}

# Steps other than cargo test, one line each for scripts/test-summary.sh:
# "ok: WHAT", "FAILED: WHAT" or "SKIPPED: WHAT".
STEPS=$TARGET_DIR/test-steps.txt
: >"$STEPS"
skip_or_fail() {
    if in_ci; then
        echo "ERROR: $1 (CI must run everything)" >&2
        exit 1
    fi
    echo "*** SKIPPED: $1 ***" >&2
    echo "SKIPPED: $1" >>"$STEPS"
}

step "cargo fmt --all -- --check"
cargo fmt --all -- --check || { echo "formatting differs: run cargo fmt --all" >&2; exit 1; }

step "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -- -D warnings || exit 1

if [ "$(id -u)" != 0 ]; then
    # Not a skip of its own: each test that needs root says SKIPPED and is counted.
    in_ci && { echo "ERROR: not root (CI must run everything)" >&2; exit 1; }
    echo "note: not root: the tests that mount, use namespaces or iptables will skip themselves" >&2
fi

step "cargo test --workspace"
test_args=()
if [ -n "${HAST_TEST_THREADS:-}" ]; then
    test_args=(-- "--test-threads=$HAST_TEST_THREADS")
fi
cargo test --workspace --no-fail-fast "${test_args[@]}" 2>&1 | tee "$TEST_LOG"
test_rc=${PIPESTATUS[0]}

# hastd runs on one thread unless TOKIO_WORKER_THREADS asks for a pool (README):
# the replication, kill -9 and failover tests again with a pool of two.
step "hastd with TOKIO_WORKER_THREADS=2: replication, crash, failover"
TOKIO_WORKER_THREADS=2 cargo test --no-fail-fast --test replication --test crash --test failover \
    "${test_args[@]}" 2>&1 | tee -a "$TEST_LOG"
[ "${PIPESTATUS[0]}" = 0 ] || test_rc=1

fuzz_rc=0
step "fuzz smoke: ${FUZZ_SECONDS} s per target"
# cargo-fuzz needs nightly flags (-Zsanitizer). Use the nightly toolchain when
# the machine has one; otherwise the stable compiler with RUSTC_BOOTSTRAP=1,
# which accepts the same flags (no toolchain download needed).
if cargo +nightly --version >/dev/null 2>&1; then
    fuzz_cargo=(cargo +nightly)
else
    echo "fuzz smoke: no nightly toolchain, using stable with RUSTC_BOOTSTRAP=1"
    export RUSTC_BOOTSTRAP=1
    fuzz_cargo=(cargo)
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    skip_or_fail "fuzz smoke: cargo-fuzz not installed (cargo install cargo-fuzz --locked)"
else
    targets=$("${fuzz_cargo[@]}" fuzz list 2>/dev/null)
    if [ -z "$targets" ]; then
        skip_or_fail "fuzz smoke: no fuzz targets found"
    fi
    if [ -n "$targets" ] && ! "${fuzz_cargo[@]}" fuzz build; then
        fuzz_rc=1
        echo "FAILED: fuzz build" >>"$STEPS"
    elif [ -n "$targets" ]; then
        for t in $targets; do
            echo "--- fuzz target $t (log: $TARGET_DIR/fuzz-$t.log)"
            "${fuzz_cargo[@]}" fuzz run "$t" -- -max_total_time="$FUZZ_SECONDS" \
                -print_final_stats=1 >"$TARGET_DIR/fuzz-$t.log" 2>&1
            rc=$?
            tail -n 5 "$TARGET_DIR/fuzz-$t.log"
            if [ "$rc" = 0 ]; then
                echo "ok: fuzz $t (${FUZZ_SECONDS} s)" >>"$STEPS"
            else
                echo "FAILED: fuzz $t (exit $rc; see fuzz/artifacts/$t)" >>"$STEPS"
                fuzz_rc=1
            fi
        done
    fi
fi

# The Debian package as an operator installs it (README "Install"): a release
# build, cargo-deb, dpkg -i, a smoke test of the installed paths, dpkg -r.
deb_rc=0
step "Debian package: scripts/deb-smoke.sh (log: $TARGET_DIR/deb-smoke.log)"
if [ "$(id -u)" != 0 ]; then
    skip_or_fail "Debian package: not root (dpkg -i)"
elif ! cargo deb --version >/dev/null 2>&1; then
    skip_or_fail "Debian package: cargo-deb not installed (cargo install cargo-deb --locked)"
else
    deb_start=$(date +%s)
    scripts/deb-smoke.sh 2>&1 | tee "$TARGET_DIR/deb-smoke.log"
    if [ "${PIPESTATUS[0]}" = 0 ]; then
        echo "ok: deb package (build, dpkg -i, smoke test, dpkg -r; $(($(date +%s) - deb_start)) s)" >>"$STEPS"
    else
        deb_rc=1
        echo "FAILED: deb package ($(grep -m1 'deb-smoke: FAILED' "$TARGET_DIR/deb-smoke.log" || echo "see $TARGET_DIR/deb-smoke.log"))" >>"$STEPS"
    fi
fi

step "summary"
# One line per test binary, every skipped test and step by name, then
# "N passed, N failed, N skipped, N ignored". Never "ALL PASSED" when
# something skipped (exit 2 then, outside CI; in CI a skip already failed).
scripts/test-summary.sh "$TEST_LOG" "$STEPS"
summary_rc=$?
if [ "$test_rc" != 0 ] || [ "$fuzz_rc" != 0 ] || [ "$deb_rc" != 0 ] || [ "$summary_rc" = 1 ]; then
    echo "FAILED (cargo test exit $test_rc, fuzz $fuzz_rc, deb $deb_rc; full test output in $TEST_LOG)"
    exit 1
fi
exit "$summary_rc"
