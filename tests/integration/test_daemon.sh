#!/bin/bash
# hydrad as a daemon: its socket, its exit, launch failures and what survives a restart.
. "$(dirname "$0")/lib.sh"

mkdir -p "$RUN"

# A stale socket file from a dead daemon is replaced.
$PY -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$SOCK"
check "a stale socket file exists before start" test -S "$SOCK"
start_hydrad
check "hydrad replaced the stale socket and serves" ctl health
check "it said so in its log" grep -q "replacing stale socket" "$HYDRAD_LOG"

# A second daemon on the same socket is refused and the first keeps serving.
set +e
OUT=$("$HYDRAD" --state-dir "$STATE" --run-dir "$RUN" 2>&1); RC=$?
set -e
check "a second hydrad on the same socket exits non-zero" test $RC -ne 0
check "... saying another hydrad serves the socket" grep -q "already serving" <<<"$OUT"
check "the first one still answers" ctl health
check "socket mode is 0660" test "$(stat -c %a "$SOCK")" = 660

# Bad usage of the daemon itself.
set +e
OUT=$("$HYDRAD" --log-level loud 2>&1); RC=$?
set -e
check "hydrad --log-level loud: exit 2" test $RC -eq 2
check "... naming the value" grep -q "log_level: 'loud'" <<<"$OUT"

# QEMU refusing its options: StartVm fails with QEMU's own words.
SPEC=$T/bad-machine.ini
write_guest_spec "$SPEC"
sed -i 's/^accel = tcg/accel = tcg\nmachine = no-such-machine/' "$SPEC"
check "register a spec QEMU will refuse" ctl register host --spec "$SPEC"
set +e
OUT=$(ctl start host 2>&1); RC=$?
set -e
check "start fails: exit 1" test $RC -eq 1
check "the error carries QEMU's stderr" grep -q "qemu-system-x86_64: unsupported machine type" <<<"$OUT"
echo "# $OUT"
J=$(ctl --json status host)
check "state failed" test "$(echo "$J" | json state)" = failed
check "last_error carries it too" grep -q "unsupported machine type" <<<"$(echo "$J" | json last_error)"
check "exit reason launch-failed" test "$(echo "$J" | json last_exit.reason)" = launch-failed

# A missing kernel is caught before QEMU runs.
SPEC2=$T/missing-kernel.ini
write_guest_spec "$SPEC2"
sed -i "s|^path = .*|path = $T/no-such-vmlinuz|" "$SPEC2"
check "register a spec with a missing kernel" ctl register host --spec "$SPEC2"
set +e
OUT=$(ctl start host 2>&1); RC=$?
set -e
echo "# $OUT"
check "start with a missing kernel fails: exit 1" test $RC -eq 1
check "... FAILED_PRECONDITION naming the kernel file" grep -q "FAILED_PRECONDITION: kernel .*no-such-vmlinuz" <<<"$OUT"

# on-exit = leave (default): SIGTERM leaves the VM running; the spec is still there after a restart.
SPEC3=$T/isolated.ini
write_guest_spec "$SPEC3"
check "register isolated" ctl register isolated --spec "$SPEC3"
check "start isolated" ctl start isolated
PID=$(ctl --json status isolated | json pid)
check "hydrad exits 0 on SIGTERM" stop_hydrad
check "the VM is left running" kill -0 "$PID"
check "the socket file is removed on exit" test ! -e "$SOCK"
kill -KILL "$PID"
start_hydrad
check "after a restart the spec is still registered" test "$(ctl --json status isolated | json state)" = defined
check "... with the same kernel" grep -q "$HYDRA_GUEST_DIR/vmlinuz" <<<"$(ctl --json status isolated)"
check "stop hydrad" stop_hydrad

# on-exit = stop: SIGTERM stops the VMs gracefully first.
start_hydrad --on-exit stop
check "start isolated" ctl start isolated
PID=$(ctl --json status isolated | json pid)
check "the guest boots" wait_until 120 console_has isolated 'hydra-guest: booted' 1
check "hydrad --on-exit stop exits 0 on SIGTERM" stop_hydrad
check "the VM was stopped" sh -c "! kill -0 $PID 2>/dev/null"
check "gracefully: the guest powered off" test "$(console_count isolated 'hydra-guest: powering off')" -ge 1

finish
