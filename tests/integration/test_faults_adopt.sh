#!/bin/bash
# Issue 9, item 3: adoption of a QEMU that a previous hydrad spawned but never recorded must not take a stranger's
# process. hydrad looks for it by its console chardev; any local user could run a process that merely mentions the
# path (`perl -e 'sleep 100' RUN/isolated/qemu-console.sock`), and hydrad used to adopt it, SIGTERM it and mark the VM failed.
# Now only a process with hydrad's uid, running the configured QEMU binary, with the exact `-chardev` argument
# hydrad writes is taken. No QEMU runs here: the "QEMU" binary is configured to be python3, so a stand-in process
# can carry the exact argument (the positive control) while each of the four attacks breaks one rule.
. "$(dirname "$0")/lib.sh"

PYREAL=$(readlink -f "$PY")
CONSOLE=$RUN/isolated/qemu-console.sock
CHARDEV="socket,id=console,path=$CONSOLE,server=on,wait=off"
printf '[hydrad]\nqemu_x86_64 = %s\n' "$PYREAL" >"$T/hydrad.conf"
chmod 755 "$T"   # the unprivileged stand-in runs from here

state_of() { ctl --json status isolated | json state; }
adopted() { grep -q "QEMU (pid $1) was started by the previous hydrad but not recorded" "$HYDRAD_LOG"; }
stranger=

start_hydrad -c "$T/hydrad.conf"
write_guest_spec "$T/isolated.ini"
ctl register isolated --spec "$T/isolated.ini" >/dev/null
stop_hydrad

# attack ATTACK_NAME COMMAND...: runs the command as the stranger, restarts hydrad, and checks nothing was taken.
attack() {
    local name=$1
    shift
    "$@" &
    stranger=$!
    sleep 0.3
    check "$name: the stand-in runs" kill -0 "$stranger"
    start_hydrad -c "$T/hydrad.conf"
    check "$name: not adopted" bash -c "! grep -q 'pid $stranger' '$HYDRAD_LOG'"
    check "$name: the VM is still merely registered ($(state_of))" test "$(state_of)" = defined
    check "$name: no last_error" test "$(ctl --json status isolated | json last_error)" = null
    stop_hydrad
    check "$name: the stranger's process is untouched" kill -0 "$stranger"
    kill -KILL "$stranger"
    wait "$stranger" 2>/dev/null || true
}

attack "a process that only mentions the path" perl -e "sleep 300" "$CONSOLE"
attack "another executable with the exact -chardev" perl -e 'sleep 300' -- -chardev "$CHARDEV"
attack "the QEMU binary and the exact -chardev, but another uid" \
    setpriv --reuid=65534 --regid=65534 --clear-groups "$PYREAL" -c 'import time; time.sleep(300)' -chardev "$CHARDEV"
attack "the path inside a longer -chardev value" "$PYREAL" -c 'import time; time.sleep(300)' -chardev "$CHARDEV,x=y"

# The positive control: our uid, the configured binary, the exact argument: this is what a QEMU spawned by a hydrad
# that died before recording it looks like, and it is taken back.
"$PYREAL" -c 'import time; time.sleep(300)' -chardev "$CHARDEV" &
stranger=$!
sleep 0.3
start_hydrad -c "$T/hydrad.conf"
check "the exact match (uid, binary, argument) is adopted" wait_until 10 adopted "$stranger"
stop_hydrad || true
kill -KILL "$stranger" 2>/dev/null || true
wait "$stranger" 2>/dev/null || true

finish
