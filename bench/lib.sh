# Helpers shared by the benchmark scripts (sourced, not run).
# Expects ROOT (the repo) to be set; sets TARGET (CARGO_TARGET_DIR or ROOT/target),
# PY (a python3), WORK (a fresh work dir under BENCH_DIR, default /var/tmp) and PIDS
# (processes to stop by PID on exit); the fio helpers read SERVERS, URI (server
# -> nbd URI), DATASIZE, WORKLOADS, RUNTIME and RAMP.

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
# server -> its PIDs (space-separated: a pair is two daemons), for the CPU each
# run costs it and for pinning (run_workloads); optional.
declare -A SERVER_PID=()
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
# The reports' inline Python imports bench/fiojson.py.
export PYTHONPATH=$ROOT/bench${PYTHONPATH:+:$PYTHONPATH}

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

# bench_need TOOL...: exits 69 (EX_UNAVAILABLE) naming the first missing tool.
bench_need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$(basename "$0"): $tool is not installed" >&2; exit 69; }
    done
}

# bench_build: builds the release binaries under ROOT and sets HASTD and HASTCTL
# (expects ROOT and TARGET).
bench_build() {
    echo "== building hastd (release)" >&2
    (cd "$ROOT" && cargo build --release --bins --quiet)
    HASTD=$TARGET/release/hastd
    HASTCTL=$TARGET/release/hastctl
}

# qemu_export DIR SIZE [AIO]: serves a fresh sparse DIR/bench.img of SIZE with
# qemu-nbd (page cache in writeback mode, --aio=AIO, default threads), waits until
# it answers and sets QEMU_URI and QEMU_PID. Variables rather than stdout, so the
# PID lands in this shell's PIDS.
qemu_export() {
    local d=$1 aio=${3:-threads} port
    mkdir -p "$d"
    truncate -s "$2" "$d/bench.img"
    port=$(free_port)
    qemu-nbd -f raw --cache=writeback --aio="$aio" -t -e 16 -b 127.0.0.1 -p "$port" \
        -x bench "$d/bench.img" 2>"$d/qemu-nbd.log" &
    QEMU_PID=$!
    PIDS+=($QEMU_PID)
    QEMU_URI=nbd://127.0.0.1:$port/bench
    wait_export "$QEMU_URI" 20
}

# single DIR NAME:SIZE...: one hastd (`remote none`, node benchnode) serving a
# fresh sparse DIR/NAME.img of SIZE per resource, every resource primary and
# served; sets SINGLE_PORT (its NBD port), SINGLE_PID and SINGLE_CTL (hastctl
# with the config, an array). Prints nothing.
single() {
    local d=$1 spec name
    shift
    mkdir -p "$d/nbd" "$d/state"
    SINGLE_PORT=$(free_port)
    {
        echo "control uds://$d/ctl.sock"
        echo "pidfile $d/hastd.pid"
        echo "nbd_listen tcp://127.0.0.1:$SINGLE_PORT"
        echo "nbd_socket_dir $d/nbd"
        echo "state_dir $d/state"
        echo "listen tcp://127.0.0.1:$(free_port)"
        for spec in "$@"; do
            name=${spec%%:*}
            truncate -s "${spec#*:}" "$d/$name.img"
            printf 'resource %s {\n    on benchnode {\n        local %s\n        remote none\n    }\n}\n' \
                "$name" "$d/$name.img"
        done
    } >"$d/hast.conf"
    SINGLE_CTL=("$HASTCTL" -c "$d/hast.conf" --node benchnode)
    local names=("${@%%:*}") i
    "${SINGLE_CTL[@]}" create "${names[@]}"
    "$HASTD" -F -c "$d/hast.conf" --node benchnode 2>"$d/hastd.log" &
    SINGLE_PID=$!
    PIDS+=($SINGLE_PID)
    for i in $(seq 100); do [ -S "$d/ctl.sock" ] && break; sleep 0.1; done
    "${SINGLE_CTL[@]}" role primary "${names[@]}"
    for name in "${names[@]}"; do
        wait_export "nbd://127.0.0.1:$SINGLE_PORT/$name" 20
    done
}

# nbdkit_export DIR SIZE: `nbdkit file` serving a fresh sparse DIR/bench.img of
# SIZE (its default cache: the page cache); sets NBDKIT_URI and NBDKIT_PID.
nbdkit_export() {
    local port
    mkdir -p "$1"
    truncate -s "$2" "$1/bench.img"
    port=$(free_port)
    nbdkit -f -i 127.0.0.1 -p "$port" file file="$1/bench.img" 2>"$1/nbdkit.log" &
    NBDKIT_PID=$!
    PIDS+=($NBDKIT_PID)
    NBDKIT_URI=nbd://127.0.0.1:$port/
    wait_export "$NBDKIT_URI" 20
}

# cpu_seconds PID: user + system CPU time the process used so far, in seconds.
cpu_seconds() {
    awk -v hz="$(getconf CLK_TCK)" '{ printf "%.3f\n", ($14 + $15) / hz }' "/proc/$1/stat"
}

# machine_ticks: the whole machine's busy and total CPU time so far, in clock
# ticks ("busy total"; idle, iowait and time stolen by the hypervisor are not
# busy). Softirq work and every process count, fio's included: what a workload
# costs the machine. (/proc/stat's guest columns are already in user and nice.)
machine_ticks() {
    awk '/^cpu / { t = 0; for (i = 2; i <= 9; i++) t += $i; print t - $5 - $6 - $9, t }' /proc/stat
}

# smallest_size: the smallest export size among SERVERS (by URI[server]), so
# every server sees the same offsets whatever metadata it keeps in its file.
smallest_size() {
    local s
    for s in "${SERVERS[@]}"; do nbdinfo --size "${URI[$s]}"; done | sort -n | head -1
}

# fill_servers: writes DATASIZE bytes through every server in SERVERS (1 MiB
# sequential writes), so reads hit data, not holes.
fill_servers() {
    local s
    for s in "${SERVERS[@]}"; do
        fio --name=fill --ioengine=nbd --uri="${URI[$s]}" --rw=write --bs=1M --iodepth=8 \
            --size="$DATASIZE" --output="$WORK/fill-$s.txt" >/dev/null
    done
}

# run_workloads: every WORKLOADS entry ("name rw bs iodepth [pin]") against
# every server in SERVERS in turn (interleaved, so drift in the machine's state
# hits all alike), ROUNDS times (default 1: rounds go round the servers again,
# so a passing disturbance costs one server one round, not the row), fio's
# JSON in WORK/NAME-SERVER.rN.json and the whole machine's CPU ticks before and
# after ("busy total busy total") in WORK/NAME-SERVER.rN.machine; for a server
# with PIDs in SERVER_PID, each PID's CPU seconds before and after ("pid before
# after", a line each) in WORK/NAME-SERVER.rN.cpu. The round with the most
# requests done (for a QD1 row, the lowest mean latency) is each server's figure:
# its files are copied to WORK/NAME-SERVER.json, .machine and .cpu, so every
# figure of a row comes from the same run.
# Each run starts after a `sync`, so no server pays for the writeback of the
# one measured before it. With `pin`, the server (every thread of every PID)
# and fio run on CPU 0 alone for that run: no wake-up crosses CPUs, so what
# remains is the servers' own time per request (servers in SERVER_PID only).
run_workloads() {
    local w s name rw bs qd pin pid r
    for w in "${WORKLOADS[@]}"; do
        read -r name rw bs qd pin <<<"$w"
        for r in $(seq "${ROUNDS:-1}"); do
            for s in "${SERVERS[@]}"; do
                echo "== $name on $s (round $r)" >&2
                run_one "$WORK/$name-$s.r$r"
            done
        done
        for s in "${SERVERS[@]}"; do best_round "$WORK/$name-$s"; done
    done
}

# run_one PREFIX: one fio run of the workload and server run_workloads is at
# (name rw bs qd pin s), its files under PREFIX.
run_one() {
    local out=$1 pids=() cpu0=() on=() m0 pid i
    sync
    read -r -a pids <<<"${SERVER_PID[$s]:-}"
    for pid in "${pids[@]}"; do cpu0+=("$(cpu_seconds "$pid")"); done
    if [ -n "$pin" ] && [ ${#pids[@]} -gt 0 ]; then
        for pid in "${pids[@]}"; do taskset -a -p -c 0 "$pid" >/dev/null; done
        on=(taskset -c 0)
    fi
    m0=$(machine_ticks)
    "${on[@]}" fio --name="$name" --ioengine=nbd --uri="${URI[$s]}" --rw="$rw" --bs="$bs" \
        --iodepth="$qd" --size="$DATASIZE" --time_based --runtime="$RUNTIME" \
        --ramp_time="$RAMP" --randrepeat=0 --norandommap --output-format=json \
        --output="$out.json" >/dev/null
    # CPU over the whole run, ramp included (fio's figures leave the ramp
    # out: the cost per request is over both).
    echo "$m0 $(machine_ticks)" >"$out.machine"
    for i in "${!pids[@]}"; do
        echo "${pids[$i]} ${cpu0[$i]} $(cpu_seconds "${pids[$i]}")"
    done >"$out.cpu"
    [ ${#pids[@]} -gt 0 ] || rm -f "$out.cpu"
    if [ ${#on[@]} -gt 0 ]; then
        for pid in "${pids[@]}"; do taskset -a -p -c "0-$(($(nproc) - 1))" "$pid" >/dev/null; done
    fi
}

# best_round PREFIX: copies the best of PREFIX.rN.* (the most requests done)
# to PREFIX.*.
best_round() {
    local best
    best=$("$PY" - "$1" <<'BEST'
import glob, sys
import fiojson
def done(path):
    job = fiojson.job(path)
    return job["read"]["total_ios"] + job["write"]["total_ios"]
print(max(glob.glob(sys.argv[1] + ".r*.json"), key=done)[:-len(".json")])
BEST
)
    local ext
    for ext in json machine cpu; do
        [ -e "$best.$ext" ] && cp "$best.$ext" "$1.$ext"
    done
    return 0
}

# cert DIR NAME: a self-signed P-256 certificate DIR/NAME.crt and key
# DIR/NAME.key (as docs/security.md makes them); prints its fingerprint.
cert() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 \
        -subj "/CN=$2" -keyout "$1/$2.key" -out "$1/$2.crt" 2>/dev/null
    chmod 600 "$1/$2.key"
    openssl x509 -noout -fingerprint -sha256 -in "$1/$2.crt" | cut -d= -f2
}

# pair DIR MODE SIZE [LINK [CREATE_ARGS]]: writes a two-node config for one
# resource `bench`, creates both components (with CREATE_ARGS, e.g. "-k 2048"),
# starts both daemons (their PIDs in PAIR_PID[a] and PAIR_PID[b]); prints
# nothing. Roles are set by the caller. LINK: plain (default), hmac (a
# secret_file) or tls.
declare -A PAIR_PID=()
pair() {
    local d=$1 mode=$2 size=$3 link=${4:-plain} create_args=${5:-}
    mkdir -p "$d"
    local na nb ra rb scheme=tcp tls_a="" tls_b="" pin_a="" pin_b="" secret=""
    na=$(free_port); nb=$(free_port); ra=$(free_port); rb=$(free_port)
    if [ "$link" = hmac ]; then
        (umask 077; head -c 32 /dev/urandom | base64 >"$d/repl.key")
        secret="secret_file $d/repl.key"
    elif [ "$link" = tls ]; then
        scheme=tls
        tls_a="tls_cert $d/a.crt
    tls_key $d/a.key"
        tls_b="tls_cert $d/b.crt
    tls_key $d/b.key"
        pin_b="tls_peer_fingerprint $(cert "$d" a)"
        pin_a="tls_peer_fingerprint $(cert "$d" b)"
    fi
    cat >"$d/hast.conf" <<CONF
$secret
on nodea {
    control uds://$d/a.sock
    pidfile $d/a.pid
    nbd_listen tcp://127.0.0.1:$na
    nbd_socket_dir $d/nbda
    state_dir $d/statea
    listen $scheme://127.0.0.1:$ra
    $tls_a
}
on nodeb {
    control uds://$d/b.sock
    pidfile $d/b.pid
    nbd_listen tcp://127.0.0.1:$nb
    nbd_socket_dir $d/nbdb
    state_dir $d/stateb
    listen $scheme://127.0.0.1:$rb
    $tls_b
}
resource bench {
    replication $mode
    on nodea {
        local $d/a.img
        remote $scheme://127.0.0.1:$rb
        $pin_a
    }
    on nodeb {
        local $d/b.img
        remote $scheme://127.0.0.1:$ra
        $pin_b
    }
}
CONF
    truncate -s "$size" "$d/a.img" "$d/b.img"
    local n i
    for n in nodea nodeb; do
        # shellcheck disable=SC2086 # CREATE_ARGS is a list of words
        "$HASTCTL" create -c "$d/hast.conf" --node $n $create_args bench
        pair_start "$d" $n
    done
    for n in a b; do
        for i in $(seq 100); do [ -S "$d/$n.sock" ] && break; sleep 0.1; done
    done
    echo "nbd://127.0.0.1:$na/bench" >"$d/uri"
}
# pair_start DIR NODE: starts that node's hastd of the pair in DIR.
pair_start() {
    "$HASTD" -F -c "$1/hast.conf" --node "$2" 2>>"$1/$2.log" &
    PIDS+=($!)
    PAIR_PID[${2#node}]=$!
}
ctl() { local d=$1 n=$2; shift 2; "$HASTCTL" -c "$d/hast.conf" --node "$n" "$@"; }
wait_complete() {
    local d=$1 deadline=$((SECONDS + $2))
    until ctl "$d" nodea status bench | grep -q complete && ctl "$d" nodeb status bench | grep -q complete; do
        [ $SECONDS -lt $deadline ] || { echo "$BENCH_NAME: $d not in sync after $2 s" >&2; return 1; }
        sleep 0.05
    done
}
