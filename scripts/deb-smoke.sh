#!/usr/bin/env bash
# The Debian package, end to end, as an operator gets it: `make deb` (a
# release build and cargo-deb), `dpkg -i`, then a smoke test with the
# installed binaries and paths only (/usr/sbin, the manual pages, the
# completions, the units, the exec script), then `dpkg -r`, leaving the
# machine as it was. Needs root, cargo-deb and dpkg; scripts/test.sh runs it
# as a step and reports it in its summary.
#
#   scripts/deb-smoke.sh
#
# Prints the time `make deb` took. Exit 0 only if every check passed.

set -euo pipefail
cd "$(dirname "$0")/.."

fail() {
    echo "deb-smoke: FAILED: $*" >&2
    exit 1
}

[ "$(id -u)" = 0 ] || fail "needs root (dpkg -i)"
command -v dpkg >/dev/null || fail "dpkg not found"
cargo deb --version >/dev/null 2>&1 || fail "cargo-deb not installed (cargo install cargo-deb --locked)"
command -v man >/dev/null || fail "man not found (man-db)"
command -v systemd-analyze >/dev/null || fail "systemd-analyze not found (systemd)"
if dpkg -s hast >/dev/null 2>&1; then
    fail "a hast package is already installed; dpkg -r hast first"
fi

TARGET_DIR=${CARGO_TARGET_DIR:-target}
tmp=$(mktemp -d /tmp/hast-deb-smoke.XXXXXX)
hastd_pid=
installed=
cleanup() {
    if [ -n "$hastd_pid" ] && kill -0 "$hastd_pid" 2>/dev/null; then
        kill -KILL "$hastd_pid" 2>/dev/null || true
    fi
    if [ -n "$installed" ]; then
        dpkg -r hast >/dev/null 2>&1 || echo "deb-smoke: dpkg -r hast failed" >&2
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

echo "--- make deb"
start=$(date +%s)
make deb
echo "deb-smoke: make deb took $(($(date +%s) - start)) s"
deb=$(ls -t "$TARGET_DIR"/debian/hast_*.deb | head -n 1)
[ -f "$deb" ] || fail "no package in $TARGET_DIR/debian"

echo "--- the package: $deb"
dpkg-deb --info "$deb"
# Nothing runs at install: no maintainer scripts, nothing in /etc.
for s in preinst postinst prerm postrm; do
    if dpkg-deb --info "$deb" "$s" >/dev/null 2>&1; then
        fail "the package has a $s script"
    fi
done
contents=$(dpkg-deb --contents "$deb")
if grep -q ' \./etc/' <<<"$contents"; then
    fail "the package writes to /etc"
fi

echo "--- dpkg -i"
dpkg -i "$deb"
installed=1
for f in /usr/sbin/hastd /usr/sbin/hastctl /usr/sbin/hastmon /usr/sbin/hastmonctl \
    /usr/sbin/hastcd /usr/sbin/hastcctl /usr/libexec/hast/hastmon-hastd \
    /lib/systemd/system/hastd.service /lib/systemd/system/hastmon.service \
    /lib/systemd/system/hastcd.service /usr/share/dbus-1/system.d/org.hast.connector.conf \
    /usr/share/doc/hast/examples/hastmon.conf.example /usr/share/doc/hast/examples/hastcd.conf \
    /usr/share/bash-completion/completions/hastctl; do
    [ -e "$f" ] || fail "$f not installed"
done
[ -x /usr/libexec/hast/hastmon-hastd ] || fail "hastmon-hastd not executable"
grep -q '^exec /usr/libexec/hast/hastmon-hastd$' /usr/share/doc/hast/examples/hastmon.conf.example ||
    fail "the example hastmon.conf does not name the installed exec script"
for u in hastd hastmon hastcd; do
    [ ! -e "/etc/systemd/system/multi-user.target.wants/$u.service" ] || fail "$u.service enabled by the package"
done

echo "--- the installed binaries"
/usr/sbin/hastd -h | grep -q 'Usage: hastd' || fail "hastd -h"
for b in hastd hastctl hastmon hastmonctl hastcd hastcctl; do
    "/usr/sbin/$b" --version >/dev/null || fail "$b --version"
done

echo "--- manual pages"
for p in hastd hastctl hastmon hastmonctl; do
    path=$(man -w "$p") || fail "man -w $p"
    case $path in /usr/share/man/man8/"$p".8.gz) ;; *) fail "man -w $p: $path" ;; esac
done
for p in hast.conf hastmon.conf; do
    path=$(man -w 5 "$p") || fail "man -w 5 $p"
    case $path in /usr/share/man/man5/"$p".5.gz) ;; *) fail "man -w 5 $p: $path" ;; esac
done
MANWIDTH=80 man hastctl 2>/dev/null | grep -q 'Highly Available Storage control utility' || fail "man hastctl"

echo "--- systemd-analyze verify"
# Only our units' own lines count: the machine's other units may warn.
verify=$(systemd-analyze verify /lib/systemd/system/hastd.service \
    /lib/systemd/system/hastmon.service /lib/systemd/system/hastcd.service 2>&1) || true
echo "$verify"
if grep -E '(hastd|hastmon|hastcd)\.service' <<<"$verify" | grep -v 'Cannot add dependency job'; then
    fail "systemd-analyze verify complains about our units"
fi

echo "--- hastd and hastctl from /usr/sbin on a one-node resource"
port=$((20000 + RANDOM % 20000))
cat >"$tmp/hast.conf" <<CONF
control uds://$tmp/hastctl.sock
pidfile $tmp/hastd.pid
state_dir $tmp/state
nbd_socket_dir $tmp/nbd
listen tcp://127.0.0.1:$port
resource smoke {
	on smokenode {
		local $tmp/smoke.img
		remote none
	}
}
CONF
mkdir -p "$tmp/state" "$tmp/nbd"
truncate -s 64M "$tmp/smoke.img"
ctl() { timeout 30 /usr/sbin/hastctl -c "$tmp/hast.conf" --node smokenode "$@"; }
ctl create smoke
/usr/sbin/hastd -F -c "$tmp/hast.conf" --node smokenode >"$tmp/hastd.log" 2>&1 &
hastd_pid=$!
for _ in $(seq 100); do
    [ -S "$tmp/hastctl.sock" ] && break
    kill -0 "$hastd_pid" 2>/dev/null || { cat "$tmp/hastd.log"; fail "hastd exited"; }
    sleep 0.1
done
[ -S "$tmp/hastctl.sock" ] || { cat "$tmp/hastd.log"; fail "no control socket after 10 s"; }
ctl role primary smoke
status=$(ctl status smoke)
echo "$status"
grep -q 'primary' <<<"$status" || fail "hastctl status: not primary"
[ -S "$tmp/nbd/smoke.nbd" ] || fail "no NBD export at $tmp/nbd/smoke.nbd"
ctl list smoke >/dev/null || fail "hastctl list"
kill -TERM "$hastd_pid"
for _ in $(seq 100); do
    kill -0 "$hastd_pid" 2>/dev/null || break
    sleep 0.1
done
if kill -0 "$hastd_pid" 2>/dev/null; then
    cat "$tmp/hastd.log"
    fail "hastd still running 10 s after SIGTERM"
fi
wait "$hastd_pid" || { cat "$tmp/hastd.log"; fail "hastd exited non-zero on SIGTERM"; }
hastd_pid=

echo "--- dpkg -r"
dpkg -r hast
installed=
[ ! -e /usr/sbin/hastd ] || fail "/usr/sbin/hastd left after dpkg -r"
[ ! -e /usr/share/man/man8/hastctl.8.gz ] || fail "hastctl.8.gz left after dpkg -r"
echo "deb-smoke: ok"
