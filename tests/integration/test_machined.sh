#!/bin/bash
# Each QEMU in a scope of its own, registered with systemd-machined (issue 13, item 2), against a private
# dbus-daemon and the fake machined of tests/test_machine.c (sd-bus; it records every CreateMachine it gets): hydrad
# with machined = yes sends CreateMachine for hydra-isolated with QEMU's pid, the spec's limits and the unit's device
# allow-list; a refusal leaves the VM running with one warning; a restarted hydrad asks nothing for the QEMUs it
# adopts; without systemd as PID 1 (machined = auto), hydrad says once that QEMU runs as its child, and that a spec's
# limits are not applied.
. "$(dirname "$0")/lib.sh"

FAKE=$(dirname "$HYDRAD")/test_machine
if [ ! -x /usr/bin/dbus-daemon ] || [ ! -x "$FAKE" ]; then
    echo "SKIP: needs /usr/bin/dbus-daemon and $FAKE (the fake machined)"
    exit 77
fi

# A private bus on which anyone may own any name (the cleanup's kill_under "$T" ends it and the fake).
cat >"$T/bus.conf" <<EOF
<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>custom</type>
  <listen>unix:path=$T/bus</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
EOF
/usr/bin/dbus-daemon --nofork --nopidfile --config-file="$T/bus.conf" 2>>"$T/dbus.log" &
wait_until 10 test -S "$T/bus"
export DBUS_SYSTEM_BUS_ADDRESS=unix:path=$T/bus

FAKE_PID=
start_fake() { # start_fake [--fail]
    [ -z "$FAKE_PID" ] || { kill "$FAKE_PID"; wait "$FAKE_PID" 2>/dev/null || true; }
    : >"$T/fake.out"
    "$FAKE" fake-machined "$T/calls" "$@" >"$T/fake.out" 2>&1 &
    FAKE_PID=$!
    wait_until 10 grep -q ready "$T/fake.out"
}
calls() { grep -c "^CreateMachine" "$T/calls" 2>/dev/null || true; }
state_is() { test "$(ctl --json status "$1" | json state)" = "$2"; }

printf '[hydrad]\nmachined = yes\n' >"$T/yes.conf"
start_fake
start_hydrad --config "$T/yes.conf"
check "machined = yes: no word of a missing systemd" sh -c "! grep -q 'systemd is not PID 1' '$HYDRAD_LOG'"

# 1. CreateMachine with QEMU's pid, class vm, and the limits as systemd's properties.
write_guest_spec "$T/isolated.ini" "[resources]" "cpu_quota = 150%" "memory_max = 1G"
ctl register isolated --spec "$T/isolated.ini" >/dev/null
check "isolated starts" ctl start isolated --wait running --timeout 60
ISO=$(ctl --json status isolated | json pid)
# The scope gets hydrad.service's device allow-list too (it is outside the unit's cgroup).
DEVICES="DevicePolicy=s:closed,DeviceAllow=a(ss):/dev/kvm rw;/dev/net/tun rw;/dev/vhost-net rw;/dev/vhost-vsock rw"
LINE="CreateMachine name=hydra-isolated id_len=0 service=hydra class=vm leader=$ISO root= props=CPUQuotaPerSecUSec=t:1500000,MemoryMax=t:1073741824,$DEVICES"
check "machined was asked for hydra-isolated, leader QEMU's pid $ISO, CPUQuota=150%, MemoryMax=1G, the device list" \
    wait_until 20 grep -qxF "$LINE" "$T/calls"
check "hydrad logs the registration and the scope" wait_until 10 grep -qF \
    "registered with systemd-machined as 'hydra-isolated' (scope machine-hydra\\x2disolated.scope in machine.slice, CPUQuota=150%, MemoryMax=1073741824)" \
    "$HYDRAD_LOG"

check "GetVm shows the machine and its scope" test "$(ctl --json status isolated | json machine) $(ctl --json status isolated | json machine_scope)" = 'hydra-isolated machine-hydra\x2disolated.scope'
status_shows_machine() { ctl status isolated | grep -qxF 'machine:         hydra-isolated (systemd-machined; scope machine-hydra\x2disolated.scope)'; }
check "hydractl status shows them" status_shows_machine

# 2. machined refuses: one warning naming why, and the VM runs on.
start_fake --fail
write_guest_spec "$T/host.ini"
ctl register host --spec "$T/host.ini" >/dev/null
check "host starts although machined refuses it" ctl start host --wait running --timeout 60
HOST=$(ctl --json status host | json pid)
check "machined was asked for hydra-host (no limits: the device list only)" wait_until 20 grep -qxF \
    "CreateMachine name=hydra-host id_len=0 service=hydra class=vm leader=$HOST root= props=$DEVICES" "$T/calls"
check "one warning names machined's refusal" wait_until 10 sh -c \
    "test \$(grep -c \"VM 'host': QEMU (pid $HOST) is not in a scope of its own nor registered with systemd-machined: .*AccessDenied: the fake machined refuses 'hydra-host'; it runs on as hydrad's child\" '$HYDRAD_LOG') -eq 1"
sleep 1
check "host's QEMU still runs" kill -0 "$HOST"
check "same pid" test "$(ctl --json status host | json pid)" = "$HOST"
check "host is running" state_is host running
check "GetVm shows no machine for host" test "$(ctl --json status host | json machine)" = null

# 3. A restarted hydrad adopts both QEMUs and asks machined nothing: they are where they were.
start_fake
BEFORE=$(calls)
check "hydrad stops (the VMs stay)" stop_hydrad
start_hydrad --config "$T/yes.conf"
check "isolated adopted, same pid" test "$(ctl --json status isolated | json pid)" = "$ISO"
sleep 1
check "no CreateMachine for the adopted QEMUs" test "$(calls)" = "$BEFORE"
check "hydrad stops again" stop_hydrad

# 4. machined = auto on a host without systemd as PID 1: said once at start, and a spec's limits are not applied.
if [ -d /run/systemd/system ]; then
    echo "# systemd is PID 1 here: the fallback of machined = auto is left to tests/test_machine.c"
else
    : >"$HYDRAD_LOG"
    start_hydrad
    check "auto without systemd: said once at start" test "$(grep -c \
        "systemd is not PID 1: QEMU runs as hydrad's child without a scope or machined registration" "$HYDRAD_LOG")" -eq 1
    check "isolated stops" ctl stop isolated --force --timeout 60
    check "isolated starts as hydrad's child" ctl start isolated --wait running --timeout 60
    check "its limits are not applied, and the log says why" grep -qF \
        "VM 'isolated': the spec's resources (CPUQuota=150%, MemoryMax=1073741824) are not applied: systemd is not PID 1" \
        "$HYDRAD_LOG"
    check "still said once" test "$(grep -c "systemd is not PID 1: QEMU runs" "$HYDRAD_LOG")" -eq 1
    check "hydrad stops" stop_hydrad
fi

finish
