# Shared by the integration tests: a private hydrad in a temporary directory, hydractl against it, TAP-like
# output and a closing "N passed, N failed" line. Sourced, not run.
#
# Environment (set by ctest): HYDRAD, HYDRACTL, HYDRA_GUEST_DIR (vmlinuz + initrd.img from
# tests/guest/build-guest.sh), HYDRA_PYTHONPATH. With an ASan build of hydrad (-DHYDRA_ASAN=ON), a leak or a
# memory error makes hydrad exit non-zero, which stop_hydrad reports as a failure.
set -euo pipefail

: "${HYDRAD:?HYDRAD must name the hydrad binary}"
: "${HYDRACTL:?HYDRACTL must name the hydractl binary}"
: "${HYDRA_GUEST_DIR:?HYDRA_GUEST_DIR must name the test guest directory}"

PY=/usr/bin/python3
T=$(mktemp -d /tmp/hydra-test.XXXXXX)
STATE=$T/state
RUN=$T/run
SOCK=$RUN/hydra.sock
HYDRAD_PID=
HYDRAD_LOG=$T/hydrad.log
PASS=0
FAIL=0

ok() { PASS=$((PASS + 1)); echo "ok - $*"; }
not_ok() { FAIL=$((FAIL + 1)); echo "not ok - $*"; }
# check DESCRIPTION COMMAND...: passes if the command succeeds.
check() {
    local desc=$1
    shift
    if "$@"; then ok "$desc"; else not_ok "$desc"; fi
}
ctl() { "$HYDRACTL" --socket "$SOCK" "$@"; }

# json FIELD.PATH < json: prints one value ("null" for null/missing).
json() {
    $PY -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    v = v.get(k) if isinstance(v, dict) else None
print("null" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else v))' "$1"
}

# wait_until SECONDS COMMAND...: polls every 0.2 s.
wait_until() {
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.2
    done
}

console_count() { # console_count ROLE PATTERN
    local f=$STATE/$1/console.log
    [ -f "$f" ] || { echo 0; return; }
    grep -c -- "$2" "$f" || true
}

# console_has ROLE PATTERN N: the pattern appears at least N times (a command for wait_until, which polls it).
console_has() { test "$(console_count "$1" "$2")" -ge "$3"; }

free_port() {
    $PY -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

start_hydrad() {
    "$HYDRAD" --state-dir "$STATE" --run-dir "$RUN" --log-level debug "$@" >>"$HYDRAD_LOG" 2>&1 &
    HYDRAD_PID=$!
    if ! wait_until 60 ctl health >/dev/null 2>&1; then
        echo "hydrad did not come up; its log:" >&2
        cat "$HYDRAD_LOG" >&2
        return 1
    fi
}

# stop_hydrad: SIGTERM, wait; returns hydrad's exit status (non-zero under ASan for a leak or memory error).
stop_hydrad() {
    local rc=0
    [ -n "$HYDRAD_PID" ] || return 0
    kill -TERM "$HYDRAD_PID" 2>/dev/null || true
    wait "$HYDRAD_PID" || rc=$?
    HYDRAD_PID=
    if [ $rc -ne 0 ]; then
        echo "hydrad exited with status $rc; the end of its log:" >&2
        tail -n 60 "$HYDRAD_LOG" >&2
    fi
    return $rc
}

dump_logs() {
    echo "--- hydrad log ---"
    tail -n 80 "$HYDRAD_LOG" 2>/dev/null || true
    for f in "$STATE"/*/console.log "$STATE"/*/qemu.log; do
        [ -f "$f" ] || continue
        echo "--- $f ---"
        tail -n 30 "$f"
    done
}

# The processes that run in a directory under DIR (hydrad starts QEMU in its VM's state directory) or name a path
# under DIR in their arguments (helpers, servers, QEMU's disks).
pids_under() { # pids_under DIR
    local p cwd
    for p in /proc/[0-9]*; do
        cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
        [[ $cwd == "$1"/* ]] && echo "${p#/proc/}"
    done
    pgrep -f -- "$1/" || true
}
kill_under() { # kill_under DIR: SIGKILL to pids_under DIR
    local pids
    pids=$(pids_under "$1" | sort -u | grep -vx "$$" || true)
    [ -z "$pids" ] || kill -KILL $pids 2>/dev/null || true
}

cleanup() {
    local rc=$?
    if [ -n "$HYDRAD_PID" ]; then
        kill -KILL "$HYDRAD_PID" 2>/dev/null || true
        wait "$HYDRAD_PID" 2>/dev/null || true
    fi
    # No QEMU of ours may outlive the test.
    kill_under "$T"
    if [ $FAIL -ne 0 ] || [ $rc -ne 0 ]; then dump_logs; fi
    [ -n "${HYDRA_KEEP_TEST_DIR:-}" ] || rm -rf "$T"
}
trap cleanup EXIT

# A spec for the tiny guest: TCG (a Linux guest can hang under nested KVM), bare kernel boot.
write_guest_spec() { # write_guest_spec FILE [EXTRA INI LINES...]
    local f=$1
    shift
    cat >"$f" <<INI
[vm]
cpus = 1
memory = 256M
accel = tcg

[kernel]
path = $HYDRA_GUEST_DIR/vmlinuz
initrd = $HYDRA_GUEST_DIR/initrd.img
cmdline = console=ttyS0 panic=-1
INI
    for line in "$@"; do echo "$line" >>"$f"; done
}

finish() {
    echo "$PASS passed, $FAIL failed"
    [ $FAIL -eq 0 ]
}
