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
# An unknown socket_group is a configuration error at start-up (resolved once: the loop never asks NSS), before
# hydrad takes the run directory or adopts anything.
printf '[hydrad]\nsocket_group = hydra-no-such-group\n' >"$T/badgroup.conf"
set +e
OUT=$("$HYDRAD" --config "$T/badgroup.conf" --state-dir "$T/badgroup-state" --run-dir "$T/badgroup-run" 2>&1); RC=$?
set -e
check "hydrad with an unknown socket_group: exit 2" test $RC -eq 2
check "... naming the group" grep -q "socket_group: group 'hydra-no-such-group' does not exist" <<<"$OUT"
check "... before touching its directories" test ! -e "$T/badgroup-run" -a ! -e "$T/badgroup-state"

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
BOOTS=$(console_count isolated "hydra-guest: booted")
OFFS=$(console_count isolated "hydra-guest: powering off")
check "start isolated" ctl start isolated
PID=$(ctl --json status isolated | json pid)
check "hydrad exits 0 on SIGTERM" stop_hydrad
check "the VM is left running" kill -0 "$PID"
check "the socket file is removed on exit" test ! -e "$SOCK"
kill -KILL "$PID"
start_hydrad
# Its QEMU was killed while no hydrad ran: the new one finds the runtime record, sees the process gone, and says so
# (tests/integration/test_adopt.sh covers adoption of a QEMU that still runs).
J=$(ctl --json status isolated)
check "after a restart the spec is still registered; its QEMU is recorded as lost" \
    test "$(echo "$J" | json state)/$(echo "$J" | json last_exit.reason)" = crashed/lost
check "... with the same kernel" grep -q "$HYDRA_GUEST_DIR/vmlinuz" <<<"$(ctl --json status isolated)"
check "stop hydrad" stop_hydrad

# A frozen QEMU (SIGSTOP): the stop escalates through every stage to SIGKILL, and the API stays responsive.
start_hydrad
BOOTS=$(console_count isolated "hydra-guest: booted")
OFFS=$(console_count isolated "hydra-guest: powering off")
check "start isolated" ctl start isolated
PID=$(ctl --json status isolated | json pid)
check "the guest boots" wait_until 120 console_has isolated 'hydra-guest: booted' $((BOOTS + 1))
kill -STOP "$PID"
ctl stop isolated --timeout 1 >"$T/stop.out" 2>&1 &
STOPPER=$!
check "while the stop waits, status answers: stopping" wait_until 5 sh -c "$HYDRACTL --socket $SOCK status isolated | grep -q stopping"
T0=$SECONDS
check "health answers during the stop" ctl health
check "... at once" test $((SECONDS - T0)) -le 1
check "the stop of a frozen QEMU completes" wait "$STOPPER"
J=$(ctl --json status isolated)
check "reason sigkill" test "$(echo "$J" | json last_exit.reason)" = sigkill
check "killed by signal 9" test "$(echo "$J" | json last_exit.signal)" = 9
check "each stage was logged" sh -c "grep -q 'asking the guest to power off' $HYDRAD_LOG && grep -q 'sending QMP quit' $HYDRAD_LOG && grep -q 'sending SIGTERM' $HYDRAD_LOG && grep -q 'sending SIGKILL' $HYDRAD_LOG"

# Peer credentials: even with the socket opened to everyone, a user that is not root, not hydrad's user and
# not in the socket's group is refused by hydrad itself, per call (SO_PEERCRED; daemon/authz.h).
chmod 755 "$T" "$RUN"
chmod 666 "$SOCK"
cp "$HYDRACTL" "$T/hydractl-copy"   # the checkout may sit under a directory closed to nobody
chmod 755 "$T/hydractl-copy"
set +e
OUT=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$T/hydractl-copy" --socket "$SOCK" health 2>&1); RC=$?
set -e
check "an unprivileged peer is refused: exit 1" test $RC -eq 1
check "... PERMISSION_DENIED, saying who may call" grep -q "PERMISSION_DENIED: permission denied: grpc.health.v1.Health/Check needs root or hydrad's own user (uid 0); no socket_group is configured in hydrad.conf (you are uid 65534)" <<<"$OUT"
check "... and hydrad says why" grep -q "permission denied: grpc.health.v1.Health/Check needs root.*(you are uid 65534), pid" "$HYDRAD_LOG"
# A refused peer calling in a loop: one line per 10 s, not one per call (issue 9, item 2).
for _ in $(seq 30); do
    setpriv --reuid=65534 --regid=65534 --clear-groups "$T/hydractl-copy" --socket "$SOCK" health >/dev/null 2>&1 || true
done
sleep 0.5
check "30 refused calls more: no new line yet (rate-limited)" \
    test "$(grep -c 'permission denied: grpc.health' "$HYDRAD_LOG")" -eq 1
check "root still gets in" ctl health
check "stop hydrad" stop_hydrad

# on-exit = stop (from --config): SIGTERM stops the VMs gracefully first.
printf '[hydrad]\non_exit = stop\nlog_level = debug\n' >"$T/hydrad.conf"
start_hydrad --config "$T/hydrad.conf"
BOOTS=$(console_count isolated "hydra-guest: booted")
OFFS=$(console_count isolated "hydra-guest: powering off")
check "start isolated" ctl start isolated
PID=$(ctl --json status isolated | json pid)
check "the guest boots" wait_until 120 console_has isolated 'hydra-guest: booted' $((BOOTS + 1))
check "hydrad (on_exit = stop) exits 0 on SIGTERM" stop_hydrad
check "the VM was stopped" sh -c "! kill -0 $PID 2>/dev/null"
check "gracefully: the guest powered off" test "$(console_count isolated 'hydra-guest: powering off')" -eq $((OFFS + 1))

finish
