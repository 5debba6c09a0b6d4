#!/bin/bash
# The whole life of a VM through hydractl, on a real QEMU under TCG: register, start, running, the guest
# boots, graceful stop (guest-shutdown), start again, forced stop, destroy.
. "$(dirname "$0")/lib.sh"

start_hydrad
SPEC=$T/isolated.ini
PORT=$(free_port)
write_guest_spec "$SPEC" "[network]" "forward = 127.0.0.1:$PORT:22"

check "register succeeds" ctl register isolated --spec "$SPEC"
check "status is defined" test "$(ctl --json status isolated | json state)" = defined

check "start returns once running" ctl start isolated --wait running --timeout 60
J=$(ctl --json status isolated)
PID=$(echo "$J" | json pid)
check "status is running" test "$(echo "$J" | json state)" = running
check "pid is a live qemu" sh -c "kill -0 $PID && grep -q qemu-system /proc/$PID/cmdline"
check "the forward is bound on 127.0.0.1:$PORT by qemu" sh -c "ss -Htlnp 'sport = :$PORT' | grep -q '127.0.0.1:$PORT.*pid=$PID'"
check "start while running is a no-op returning the same pid" \
    test "$(ctl --json start isolated | json pid)" = "$PID"
check "the guest boots (console log)" wait_until 120 console_has isolated 'hydra-guest: booted' 1

check "graceful stop" ctl stop isolated --timeout 60
J=$(ctl --json status isolated)
check "state is stopped" test "$(echo "$J" | json state)" = stopped
check "exit reason is guest-shutdown" test "$(echo "$J" | json last_exit.reason)" = guest-shutdown
check "exit code is 0" test "$(echo "$J" | json last_exit.code)" = 0
check "the guest powered itself off" test "$(console_count isolated 'hydra-guest: powering off')" -ge 1
check "qemu is gone" sh -c "! kill -0 $PID 2>/dev/null"
check "the QMP socket is gone" test ! -e "$RUN/isolated/qmp.sock"

check "start again" ctl start isolated
PID2=$(ctl --json status isolated | json pid)
check "a new pid" test "$PID2" != "$PID"
check "the guest boots again" wait_until 120 console_has isolated 'hydra-guest: booted' 2
check "stop --force" ctl stop isolated --force
J=$(ctl --json status isolated)
check "forced stop skips ACPI: reason quit" test "$(echo "$J" | json last_exit.reason)" = quit
check "no power-off message from the forced stop" test "$(console_count isolated 'hydra-guest: powering off')" -eq 1

check "stop when stopped is a no-op" ctl stop isolated
check "destroy" ctl destroy isolated
set +e
OUT=$(ctl status isolated 2>&1); RC=$?
set -e
check "status after destroy: exit 1" test $RC -eq 1
check "status after destroy: NOT_FOUND" grep -q "NOT_FOUND" <<<"$OUT"
check "the state directory is gone" test ! -e "$STATE/isolated"

# Destroy a running VM: forced stop, then removal.
check "register again" ctl register isolated --spec "$SPEC"
check "start" ctl start isolated
PID3=$(ctl --json status isolated | json pid)
check "destroy a running VM" ctl destroy isolated
check "its qemu is gone" sh -c "! kill -0 $PID3 2>/dev/null"

check "hydrad exits 0 on SIGTERM" stop_hydrad
finish
