# Helpers shared by the benchmark scripts (sourced, not run).
# Expects PY (a python3) to be set. Sets WORK (a fresh work dir under
# BENCH_DIR, default /var/tmp) and PIDS (processes to stop by PID on exit).

# bench_init NAME: the work dir and the exit trap.
bench_init() {
    BENCH_NAME=$1
    WORK=$(mktemp -d "${BENCH_DIR:-/var/tmp}/hast-$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# Stops every process in PIDS by its PID (TERM, then KILL after 10 s) and
# removes the work dir unless BENCH_KEEP is set.
bench_cleanup() {
    local pid i
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || continue
        for i in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [ -n "${BENCH_KEEP:-}" ]; then
        echo "work dir kept: $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}

free_port() {
    "$PY" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_export URI SECONDS: until nbdinfo can open the export.
wait_export() {
    local uri=$1 deadline=$((SECONDS + $2))
    until nbdinfo --size "$uri" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "$BENCH_NAME: $uri not served after $2 s" >&2
            return 1
        fi
        sleep 0.2
    done
}
