#!/usr/bin/env bash
# The summary step of scripts/test.sh, apart so that tests/test_script.rs can
# feed it a made-up log: one line per test binary, every skipped test and step
# by name, then the totals `N passed, N failed, N skipped, N ignored`.
#
#   scripts/test-summary.sh TEST_LOG STEPS_FILE
#
# TEST_LOG is cargo test's output (stdout and stderr). A test that skipped
# itself (hast-testkit's require_* outside CI) printed `*** SKIPPED: NAME :
# WHY ***` and libtest still counted it as passed: it is moved from passed to
# skipped here. STEPS_FILE holds one line per step that is not a cargo test
# (fuzz targets, the Debian package): `ok: WHAT`, `FAILED: WHAT` or
# `SKIPPED: WHAT`.
#
# Exit status: 1 if anything failed, 2 if nothing failed but something was
# skipped (the last line then says so: never "ALL PASSED"), 0 if all ran and
# passed.

set -uo pipefail
log=$1
steps=$2

# "Running unittests src/lib.rs (target/debug/deps/hast_meta-0123abcd)" -> "hast_meta src/lib.rs"
awk '/^ *Running / { path = $NF; gsub(/[()]/, "", path); n = split(path, p, "/");
                     crate = p[n]; sub(/-[0-9a-f]+$/, "", crate);
                     src = ($2 == "unittests") ? $3 : $2; bin = crate " " src }
     /^ *Doc-tests / { bin = $2 " doc-tests" }
     /^test result:/ { printf "%-40s %s\n", bin, $0 }' "$log"

# libtest's "test result: ok. 12 passed; 0 failed; 3 ignored; ..." lines.
read -r passed failed ignored < <(awk '/^test result:/ {
        for (i = 1; i <= NF; i++) {
            v = $(i - 1) + 0
            if ($i ~ /^passed/) p += v
            if ($i ~ /^failed/) f += v
            if ($i ~ /^ignored/) g += v
        }
    } END { printf "%d %d %d\n", p, f, g }' "$log")

# One skipped test per distinct name (both runs of a test may skip it).
mapfile -t skipped_tests < <(sed -n 's/.*\*\*\* SKIPPED: \(.*\) \*\*\*.*/\1/p' "$log" | sort -u)
mapfile -t skipped_steps < <(sed -n 's/^SKIPPED: //p' "$steps")
mapfile -t failed_steps < <(sed -n 's/^FAILED: //p' "$steps")
ok_steps=$(grep -c '^ok: ' "$steps")

for s in "${skipped_tests[@]}"; do echo "SKIPPED test: $s"; done
for s in "${skipped_steps[@]}"; do echo "SKIPPED step: $s"; done
for s in "${failed_steps[@]}"; do echo "FAILED step: $s"; done
grep '^ok: ' "$steps" || true

n_skipped_tests=${#skipped_tests[@]}
passed=$((passed - n_skipped_tests + ok_steps))
failed=$((failed + ${#failed_steps[@]}))
skipped=$((n_skipped_tests + ${#skipped_steps[@]}))
echo "$passed passed, $failed failed, $skipped skipped, $ignored ignored"
if [ "$failed" != 0 ]; then
    exit 1
elif [ "$skipped" != 0 ]; then
    echo "NOT ALL RAN: $skipped skipped (listed above); install what they need (.ci/run) or run as root"
    exit 2
fi
echo "ALL PASSED"
