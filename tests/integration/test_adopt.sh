#!/bin/bash
# Re-adoption (issue 4, item 1) with real processes: hydrad is killed with SIGKILL while both VMs run, during a
# stop, and while a QEMU is frozen; the restarted hydrad adopts the same QEMU processes (pid + start time + QMP
# reconnect) without restarting the guests, records a QEMU that died meanwhile as lost, finishes a stop that was
# in progress, and never leaves a QEMU behind.
. "$(dirname "$0")/lib.sh"

qemu_count() { pids_under "$STATE" | sort -u | wc -l; }  # QEMU runs in its VM's state directory
state_of() { ctl --json status "$1" | json state; }
state_is() { test "$(state_of "$1")" = "$2"; }
both_booted() { console_has isolated 'hydra-guest: booted' 1 && console_has host 'hydra-guest: booted' 1; }
# Gone, or a zombie nobody reaped yet (an adopted QEMU is not our child: init reaps it, sometimes late).
gone() { ! kill -0 "$1" 2>/dev/null || grep -q '^[0-9]* (.*) Z' "/proc/$1/stat" 2>/dev/null; }
kill_hydrad() {
    kill -KILL "$HYDRAD_PID"
    wait "$HYDRAD_PID" 2>/dev/null || true
    HYDRAD_PID=
}

start_hydrad
for role in isolated host; do
    write_guest_spec "$T/$role.ini"
    ctl register "$role" --spec "$T/$role.ini" >/dev/null
    ctl start "$role" >/dev/null
done
check "both guests boot" wait_until 120 both_booted
ISO=$(ctl --json status isolated | json pid)
HOST=$(ctl --json status host | json pid)
check "the runtime state is recorded (pid and start time)" sh -c "grep -q '\"pid\":$ISO' $RUN/isolated/runtime.json && grep -q start_time $RUN/isolated/runtime.json"
check "the runtime record is private (0600)" test "$(stat -c %a "$RUN/isolated/runtime.json")" = 600

# 1. SIGKILL of hydrad while both VMs run: the new hydrad adopts both, the guests keep running.
kill_hydrad
check "the QEMUs survive hydrad's death" sh -c "kill -0 $ISO && kill -0 $HOST"
start_hydrad
J=$(ctl --json status isolated)
check "isolated: adopted, running, same pid" test "$(echo "$J" | json state)/$(echo "$J" | json pid)" = "running/$ISO"
check "host: adopted, running, same pid" test "$(ctl --json status host | json pid)" = "$HOST"
check "no QEMU was started or lost: still two" test "$(qemu_count)" -eq 2
check "the guests were not restarted (one boot each)" sh -c "test $(console_count isolated 'hydra-guest: booted') -eq 1 && test $(console_count host 'hydra-guest: booted') -eq 1"
check "the adoption is logged" grep -q "adopting QEMU (pid $ISO)" "$HYDRAD_LOG"
UP=$(ctl --json status isolated | json uptime_usec)
check "uptime counts from the original spawn, not the adoption" test "$UP" -gt 1000000

# A graceful stop of an adopted VM goes through QMP, as for our own child.
check "stop an adopted VM gracefully" ctl stop isolated --timeout 60
J=$(ctl --json status isolated)
check "adopted VM: stopped by the guest (ACPI power-off over the new QMP connection)" test "$(echo "$J" | json state)/$(echo "$J" | json last_exit.reason)" = stopped/guest-shutdown
check "the guest powered itself off" test "$(console_count isolated 'hydra-guest: powering off')" -ge 1
check "its QEMU is gone" gone "$ISO"
check "its runtime record is removed" test ! -e "$RUN/isolated/runtime.json"

# 2. A QEMU that dies while hydrad is down: recorded as lost, not mistaken for anything else.
kill_hydrad
kill -KILL "$HOST"
sleep 0.5
start_hydrad
J=$(ctl --json status host)
check "host: crashed, reason lost" test "$(echo "$J" | json state)/$(echo "$J" | json last_exit.reason)" = crashed/lost
check "the error names the pid and says the status is unknown" grep -q "pid $HOST.*unknown" <<<"$(echo "$J" | json last_error)"
check "its stale runtime record is gone" test ! -e "$RUN/host/runtime.json"
check "the lost VM starts again" ctl start host
check "and boots" wait_until 120 console_has host 'hydra-guest: booted' 2

# 3. SIGKILL of hydrad during a stop: the next hydrad finishes it. The guest ignores the ACPI button (acpi=off),
#    so the stop is still waiting for it when hydrad dies; the next hydrad (stop_timeout 2 s) finishes it.
write_guest_spec "$T/deaf.ini"
sed -i 's/^cmdline = .*/cmdline = console=ttyS0 panic=-1 acpi=off/' "$T/deaf.ini"
ctl register isolated --spec "$T/deaf.ini" >/dev/null
ctl start isolated >/dev/null
check "isolated boots again (deaf to ACPI)" wait_until 120 console_has isolated 'hydra-guest: booted' 2
ISO=$(ctl --json status isolated | json pid)
ctl stop isolated --timeout 60 >/dev/null 2>&1 &
STOPPER=$!
check "the stop is recorded in the runtime state" wait_until 10 grep -q '"state":"stopping"' "$RUN/isolated/runtime.json"
kill_hydrad
wait $STOPPER 2>/dev/null || true
check "the QEMU outlives hydrad mid-stop" kill -0 "$ISO"
printf '[hydrad]\nstop_timeout = 2\n' >"$T/hydrad.conf"
start_hydrad --config "$T/hydrad.conf"
check "the interrupted stop is finished" wait_until 60 state_is isolated stopped
check "by quit, after the guest ignored the power button" test "$(ctl --json status isolated | json last_exit.reason)" = quit
check "no QEMU of isolated is left" wait_until 10 gone "$ISO"
check "the finish is logged" grep -q "finishing the stop that was in progress" "$HYDRAD_LOG"

# The resting state survives a restart.
stop_hydrad
start_hydrad
J=$(ctl --json status isolated)
check "after a restart: still stopped with its last exit (not 'defined')" test "$(echo "$J" | json state)/$(echo "$J" | json last_exit.reason)" = stopped/quit

# 4. A frozen QEMU (SIGSTOP) cannot answer QMP: the adoption fails with a reason and the process is stopped, not
#    left behind; the API answers meanwhile.
HOST=$(ctl --json status host | json pid)
kill_hydrad
kill -STOP "$HOST"
start_hydrad
check "the API answers while QMP of the adopted QEMU times out" ctl health
check "the frozen QEMU's adoption fails (QMP timeout): failed" wait_until 60 state_is host failed
check "the reason names the QMP failure" grep -qi qmp <<<"$(ctl --json status host | json last_error)"
check "the frozen QEMU is killed, not orphaned" wait_until 30 gone "$HOST"

check "no QEMU left at all" test "$(qemu_count)" -eq 0
check "hydrad exits cleanly" stop_hydrad
finish
