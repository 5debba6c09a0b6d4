#!/bin/bash
# Issue 9, item 3, and issue 13: adoption of a QEMU that a previous hydrad spawned but never recorded must not take a
# stranger's process. Issue 9 matched QEMU's `-chardev` console argument; since issue 13 hydrad binds the console
# socket itself and passes it (QEMU may run as another user, and writes nothing in the run directory), so the QEMU
# is found by what only it can have: the QMP socket hydrad bound at RUN/isolated/qmp.sock, held as fd 3, by the
# configured QEMU binary, with hydrad's uid (or qemu_user's). No QEMU runs here: the "QEMU" binary is configured to
# be python3, so a stand-in can hold the socket (the positive control) while each attack breaks one rule.
. "$(dirname "$0")/lib.sh"

PYREAL=$(readlink -f "$PY")
QMP=$RUN/isolated/qmp.sock
printf '[hydrad]\nqemu_x86_64 = %s\n' "$PYREAL" >"$T/hydrad.conf"
chmod 755 "$T"   # the unprivileged stand-in runs from here

# hold PATH FD EXEC...: binds a listening socket at PATH, puts it at FD, and execs EXEC... (which inherits it).
HOLD='import os, socket, sys
s = socket.socket(socket.AF_UNIX)
s.bind(sys.argv[1])
s.listen()
fd = int(sys.argv[2])
if s.fileno() != fd:
    os.dup2(s.fileno(), fd)
os.set_inheritable(fd, True)
os.execv(sys.argv[3], sys.argv[3:])'
hold() { exec "$PYREAL" -c "$HOLD" "$@"; }  # run in the background: the subshell becomes the stand-in
SLEEP=(-c 'import time; time.sleep(300)')

holds_socket() { [[ $(readlink "/proc/$1/fd/$2") == socket:* ]]; }
state_of() { ctl --json status isolated | json state; }
adopted() { grep -q "QEMU (pid $1) was started by the previous hydrad but not recorded" "$HYDRAD_LOG"; }
stranger=

start_hydrad -c "$T/hydrad.conf"
write_guest_spec "$T/isolated.ini"
ctl register isolated --spec "$T/isolated.ini" >/dev/null
stop_hydrad
mkdir -p "$RUN/isolated"

# attack ATTACK_NAME COMMAND...: runs the command as the stranger, restarts hydrad, and checks nothing was taken.
attack() {
    local name=$1
    shift
    rm -f "$QMP"
    "$@" &
    stranger=$!
    sleep 0.5
    check "$name: the stand-in runs" kill -0 "$stranger"
    # A stand-in made by hold really holds the socket at the fd it was given (else the attack proves nothing).
    [ "$1" != hold ] || check "$name: the stand-in holds a socket as fd $3" holds_socket "$stranger" "$3"
    start_hydrad -c "$T/hydrad.conf"
    check "$name: not adopted" bash -c "! grep -q 'pid $stranger' '$HYDRAD_LOG'"
    check "$name: the VM is still merely registered ($(state_of))" test "$(state_of)" = defined
    check "$name: no last_error" test "$(ctl --json status isolated | json last_error)" = null
    stop_hydrad
    check "$name: the stranger's process is untouched" kill -0 "$stranger"
    kill -KILL "$stranger"
    wait "$stranger" 2>/dev/null || true
}

attack "a process that only mentions the path" perl -e "sleep 300" "$QMP" -chardev "socket,id=qmp,fd=3"
attack "another executable holding the socket as fd 3" hold "$QMP" 3 /usr/bin/perl -e "sleep 300"
attack "the QEMU binary holding a socket bound elsewhere as fd 3" hold "$T/elsewhere.sock" 3 "$PYREAL" "${SLEEP[@]}"
attack "the QEMU binary holding the socket, but not as fd 3" hold "$QMP" 5 "$PYREAL" "${SLEEP[@]}"
attack "the QEMU binary holding the socket as fd 3, but another uid (no qemu_user)" \
    hold "$QMP" 3 /usr/bin/setpriv --reuid=65534 --regid=65534 --clear-groups "$PYREAL" "${SLEEP[@]}"

# The positive control: our uid, the configured binary, the socket at fd 3: this is what a QEMU spawned by a hydrad
# that died before recording it looks like, and it is taken back.
rm -f "$QMP"
hold "$QMP" 3 "$PYREAL" "${SLEEP[@]}" &
stranger=$!
sleep 0.5
check "the positive control holds a socket as fd 3" holds_socket "$stranger" 3
start_hydrad -c "$T/hydrad.conf"
check "the exact match (binary, socket as fd 3, uid) is adopted" wait_until 10 adopted "$stranger"
stop_hydrad || true
kill -KILL "$stranger" 2>/dev/null || true
wait "$stranger" 2>/dev/null || true

finish
