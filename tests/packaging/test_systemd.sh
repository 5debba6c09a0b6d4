#!/bin/bash
# SPDX-License-Identifier: MIT
# The Debian package under a real systemd (issue 13): Debian 12's systemd boots as PID 1 in a podman container
# (--systemd=always; --privileged and a cgroup namespace of its own, so that systemd can set up the units' mount
# namespaces and delegate the devices controller: the hardening is applied, not skipped as "container manager?").
# Inside: `dpkg -i` of the package (postinst: sysusers, tmpfiles, the units enabled and started); hydrad.socket
# active; a client on the socket activates hydrad.service (Type=notify: active; STATUS= text; WatchdogSec=);
# the tiny test guest boots under TCG under the hardened unit with QEMU as hydra-qemu (hydractl plan says so), and
# each hardening setting is seen applied to its QEMU (mount namespace, NoNewPrivs, seccomp, UTS namespace); the
# device allow-list is hydrad.service's and, exactly the same, that of QEMU's scope; machined registers
# hydra-isolated; `systemctl restart hydrad` leaves QEMU running and the new hydrad adopts it; the journal has VM=
# and HYDRA_STATE=; MemoryDenyWriteExecute=yes in a drop-in stops TCG from starting (the unit's comment).
# Not tried here: /dev/kvm (this machine has none: TCG only), a host VM, cgroup v2.
#
# The image (the mmdebstrap base of test_container.sh, systemd, dbus, systemd-container and the package's
# dependencies) is cached in podman's storage in /var/cache/hydra-e2e/container, keyed by its inputs; the package
# is the one test_deb.sh built for the same tree (/var/cache/hydra-e2e/deb), else built here. Warm: well under a
# minute. Needs root, podman and mmdebstrap (packaging/install-deps.sh); skips (77) without them.
# Environment: HYDRA_GUEST_DIR (the tiny test guest; ctest's guest fixture builds it; default
# HYDRA_BUILD_DIR/guest).
set -uo pipefail

SRC=$(cd "$(dirname "$0")/../.." && pwd)
# ok/not_ok, podman's storage in the cache, the base image, the package (tests/packaging/podman_lib.sh).
. "$SRC/tests/packaging/podman_lib.sh"
require_podman "podman's storage, a privileged container"

T=$(mktemp -d /tmp/hydra-systemd-test.XXXXXX)
NAME=hydra-systemd-test-$$
cleanup() {
    podman rm -f -t 0 "$NAME" >/dev/null 2>&1
    [ -n "${HYDRA_KEEP_TEST_DIR:-}" ] || rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP
finish() {
    [ $FAIL -eq 0 ] || ! podman container exists "$NAME" 2>/dev/null || dump
    echo "# $((SECONDS - T0)) s in all"
    echo "$PASS passed, $FAIL failed"
    [ $FAIL -eq 0 ]
    exit
}

GUEST=${HYDRA_GUEST_DIR:-${HYDRA_BUILD_DIR:+$HYDRA_BUILD_DIR/guest}}
if [ -z "$GUEST" ] || [ ! -f "$GUEST/vmlinuz" ] || [ ! -f "$GUEST/initrd.img" ]; then
    not_ok "the tiny test guest in HYDRA_GUEST_DIR='$GUEST' (tests/guest/build-guest.sh)"
    finish
fi

podman_setup
# Containers of runs that were killed (the trap did not run).
for c in $(podman ps -a --format '{{.Names}}' 2>/dev/null | grep '^hydra-systemd-test-'); do
    kill -0 "${c##*-}" 2>/dev/null || podman rm -f -t 0 "$c" >/dev/null 2>&1
done

# --- the package, the image ---
t=$SECONDS
if deb=$(cached_deb "$SRC"); then
    ok "the package of this tree: $(basename "$deb") ($((SECONDS - t)) s)"
else
    not_ok "packaging/build-deb.sh builds the package"
    finish
fi
build_base || finish
# The package's dependencies (the first of each alternative), installed in the image so that `dpkg -i` runs
# offline: a new dependency makes a new image.
depends=$(dpkg-deb -f "$deb" Depends | tr ',' '\n' | sed 's/|.*//; s/(.*)//; s/ //g' | grep -v '^$' | sort -u | xargs)
cat >"$T/Containerfile" <<EOF
FROM $BASE
RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
    systemd systemd-sysv dbus systemd-container $depends \\
    && apt-get clean && rm -rf /var/lib/apt/lists/*
CMD ["/sbin/init"]
EOF
IMAGE=localhost/hydra-test/systemd:test
key=$( (podman image inspect --format '{{.Id}}' "$BASE"; cat "$T/Containerfile") | sha256sum | cut -c1-16)
if [ "$(podman image inspect --format '{{index .Labels "hydra.systemd-key"}}' "$IMAGE" 2>/dev/null)" != "$key" ]; then
    t=$SECONDS
    if podman build --network host --label "hydra.systemd-key=$key" -t "$IMAGE" -f "$T/Containerfile" "$T" \
        >"$T/build.log" 2>&1; then
        ok "podman build: systemd and the package's dependencies on the base ($((SECONDS - t)) s)"
        podman image prune -f >/dev/null 2>&1
    else
        cat "$T/build.log" >&2
        not_ok "podman build: systemd and the package's dependencies on the base"
        finish
    fi
fi
exec 9>&-

# --- systemd as PID 1 ---
# A cgroup namespace of its own, so that the paths systemd reads in /proc/1/cgroup are those mounted in
# /sys/fs/cgroup (else it leaves the devices controller alone). On cgroup v1, podman's --systemd bind-mounts the
# host's whole name=systemd hierarchy, which in the namespace systemd would take for its own: the container's
# part of it is mounted there instead before systemd starts. The container sees the host's /proc/sys and module
# loading: the units that would write to them stay masked.
podman run -d --name "$NAME" --systemd=always --privileged --cgroupns=private --network none \
    -v "$GUEST:/srv/hydra-guest:ro" "$IMAGE" /bin/sh -c 'mkdir -p /run/cg &&
        mount -t cgroup -o name=systemd cgroup /run/cg && umount -R /sys/fs/cgroup/systemd &&
        mount --move /run/cg /sys/fs/cgroup/systemd && rmdir /run/cg &&
        exec /sbin/init systemd.mask=systemd-sysctl.service systemd.mask=systemd-binfmt.service \
            systemd.mask=systemd-modules-load.service' >/dev/null
in_ctr() { podman exec "$NAME" "$@"; }
dump() {
    echo "# systemctl status hydrad.socket hydrad.service:"
    in_ctr systemctl status --no-pager --lines 0 hydrad.socket hydrad.service 2>&1 | sed 's/^/#   /'
    echo "# journalctl -u hydrad:"
    in_ctr journalctl --no-pager -u hydrad 2>&1 | tail -n 60 | sed 's/^/#   /'
}

for _ in $(seq 1 100); do in_ctr test -S /run/systemd/private && break; sleep 0.3; done
state=$(in_ctr timeout 60 systemctl is-system-running --wait 2>&1)
version=$(in_ctr systemctl --version 2>/dev/null | head -1)
if [ "$state" = running ]; then
    ok "$version boots as PID 1 in the container: $state ($(in_ctr cat /proc/1/comm))"
else
    not_ok "systemd boots as PID 1 in the container: '$state'"
    in_ctr systemctl --failed --no-pager 2>&1 | sed 's/^/#   /'
    podman logs "$NAME" 2>&1 | tail -20 | sed 's/^/#   /'
    finish
fi
# ... in the container's own part of the host's hierarchy
cg=$(grep ':name=systemd:' "/proc/$(podman inspect --format '{{.State.Pid}}' "$NAME")/cgroup" | cut -d: -f3)
if [[ $cg == /?*/init.scope ]]; then
    ok "the container's systemd keeps to its part of the host's cgroup hierarchy ($cg)"
else
    not_ok "the container's systemd keeps to its part of the host's cgroup hierarchy ($cg)"
    finish
fi

# --- dpkg -i: the maintainer scripts for real ---
podman cp "$deb" "$NAME:/root/hydra-vm.deb"
if out=$(in_ctr dpkg -i /root/hydra-vm.deb 2>&1); then
    ok "dpkg -i $(basename "$deb")"
else
    not_ok "dpkg -i $(basename "$deb")"
    echo "$out" | sed 's/^/#   /'
    finish
fi
ids=$(in_ctr sh -c 'getent group hydra | cut -d: -f1; id -nG hydra-qemu; getent passwd hydra-qemu | cut -d: -f6,7')
if [ "$ids" = "$(printf 'hydra\nhydra-qemu kvm\n/var/lib/hydra:/usr/sbin/nologin')" ]; then
    ok "postinst: sysusers made group hydra and user hydra-qemu (in kvm, no shell)"
else
    not_ok "postinst: sysusers made group hydra and user hydra-qemu"
    echo "$ids" | sed 's/^/#   /'
fi
# (/var/lib/hydra lets others pass: QEMU as hydra-qemu reaches its VM's directory through it.)
dirs=$(in_ctr stat -c '%n %a %U %G' /run/hydra /var/lib/hydra)
if [ "$dirs" = "$(printf '/run/hydra 750 root hydra\n/var/lib/hydra 751 root hydra')" ]; then
    ok "postinst: tmpfiles made /run/hydra 0750 and /var/lib/hydra 0751, root:hydra"
else
    not_ok "postinst: tmpfiles made /run/hydra 0750 and /var/lib/hydra 0751, root:hydra"
    echo "$dirs" | sed 's/^/#   /'
fi
en=$(in_ctr systemctl is-enabled hydrad.socket hydrad.service | xargs)
act=$(in_ctr systemctl is-active hydrad.socket)
sock=$(in_ctr stat -c '%a %U %G' /run/hydra/hydra.sock)
if [ "$en" = "enabled enabled" ] && [ "$act" = active ] && [ "$sock" = "660 root hydra" ]; then
    ok "postinst: hydrad.socket and hydrad.service enabled, the socket active, 0660 root:hydra"
else
    not_ok "postinst: units enabled ($en), socket active ($act), 0660 root:hydra ($sock)"
fi

# --- socket activation, Type=notify, STATUS=, the watchdog ---
in_ctr systemctl stop hydrad.service 2>/dev/null
before=$(in_ctr systemctl is-active hydrad.service)
list=$(in_ctr hydractl list 2>&1)
show=$(in_ctr systemctl show -p Type -p ActiveState -p SubState -p WatchdogUSec hydrad.service | sort | xargs)
if [ "$before" = inactive ] && [ "$show" = "ActiveState=active SubState=running Type=notify WatchdogUSec=30s" ]; then
    ok "hydractl list on the socket activates hydrad.service: $show"
else
    not_ok "hydractl list on the socket activates hydrad.service (before: $before; after: $show)"
    echo "$list" | sed 's/^/#   /'
fi
status=$(in_ctr systemctl show -p StatusText --value hydrad.service)
if [ "$status" = "host: not registered; isolated: not registered" ]; then
    ok "StatusText: '$status'"
else
    not_ok "StatusText: '$status'"
fi

# --- the tiny guest under the hardened unit (ProtectHome and PrivateTmp hide /root and /tmp: the spec and the
# guest are under /srv, which hydra-qemu may read: QEMU runs as that user, the package's qemu_user) ---
cat >"$T/isolated.ini" <<INI
[vm]
cpus = 1
memory = 256M
accel = tcg

[kernel]
path = /srv/hydra-guest/vmlinuz
initrd = /srv/hydra-guest/initrd.img
cmdline = console=ttyS0 panic=-1
INI
podman cp "$T/isolated.ini" "$NAME:/srv/isolated.ini"
t=$SECONDS
if out=$(in_ctr sh -c 'hydractl register isolated --spec /srv/isolated.ini &&
        hydractl plan isolated >/root/plan && hydractl start isolated --wait running --timeout 60' 2>&1); then
    ok "hydractl register and start under the hardened unit"
else
    not_ok "hydractl register and start under the hardened unit"
    echo "$out" | sed 's/^/#   /'
    finish
fi
plan=$(in_ctr head -1 /root/plan)
if [ "$plan" = "# QEMU runs as hydra-qemu" ]; then
    ok "hydractl plan isolated: '$plan' (the package's hydrad.conf qemu_user)"
else
    not_ok "hydractl plan isolated: '$plan'"
    in_ctr head -5 /root/plan | sed 's/^/#   /'
fi
booted=
for _ in $(seq 1 180); do
    in_ctr grep -q 'hydra-guest: booted' /var/lib/hydra/isolated/console.log && { booted=1; break; }
    sleep 0.5
done
if [ -n "$booted" ]; then
    ok "the tiny guest boots under TCG ($((SECONDS - t)) s)"
else
    not_ok "the tiny guest boots under TCG"
    in_ctr tail -20 /var/lib/hydra/isolated/console.log | sed 's/^/#   /'
fi
# json KEY: the key of the JSON object on stdin.
json() { /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"; }
qpid=$(in_ctr hydractl --json status isolated | json pid)
status=$(in_ctr systemctl show -p StatusText --value hydrad.service)
case $status in
"host: not registered; isolated: running"*) ok "StatusText: '$status'" ;;
*) not_ok "StatusText with isolated running: '$status'" ;;
esac

# --- each hardening setting, seen applied to QEMU (it inherits hydrad's namespaces, seccomp filters, limits) ---
hpid=$(in_ctr systemctl show -p MainPID --value hydrad.service)
in_ctr cat "/proc/$qpid/mountinfo" >"$T/mountinfo"
in_ctr cat "/proc/$qpid/status" >"$T/status"
# mnt MOUNTPOINT: the root (within its file system) and the options of what is mounted there last.
mnt() { awk -v m="$1" '$5 == m { r = $4; o = $6 } END { print r, o }' "$T/mountinfo"; }
hardening() { # hardening SETTING CONDITION...
    local what=$1
    shift
    if "$@"; then ok "QEMU under $what"; else not_ok "QEMU under $what"; fi
}
ns() { in_ctr readlink "/proc/$1/ns/$2"; }
hardening "its own mount namespace, hydrad's" \
    test "$(ns "$qpid" mnt)" = "$(ns "$hpid" mnt)" -a "$(ns "$qpid" mnt)" != "$(ns 1 mnt)"
hardening "ProtectSystem=strict: / read-only, ReadWritePaths= /var/lib/hydra and /run/hydra writable" \
    eval '[[ $(mnt /) == "/ ro,"* && $(mnt /var/lib/hydra) == *" rw,"* && $(mnt /run/hydra) == *" rw,"* ]]'
hardening "ProtectHome=yes: /home and /root inaccessible" \
    eval '[[ $(mnt /home) == *inaccessible/dir* && $(mnt /root) == *inaccessible/dir* ]]'
hardening "PrivateTmp=yes: /tmp is the unit's own" eval '[[ $(mnt /tmp) == /systemd-private-*-hydrad.service-* ]]'
hardening "ProtectKernelTunables=yes: /proc/sys read-only" eval '[[ $(mnt /proc/sys) == *" ro,"* ]]'
hardening "ProtectControlGroups=yes: /sys/fs/cgroup read-only" eval '[[ $(mnt /sys/fs/cgroup) == *" ro,"* ]]'
hardening "ProtectKernelLogs=yes: /proc/kmsg inaccessible" eval '[[ $(mnt /proc/kmsg) == *inaccessible/reg* ]]'
hardening "ProtectHostname=yes: a UTS namespace of its own" test "$(ns "$qpid" uts)" != "$(ns 1 uts)"
hardening "NoNewPrivileges=yes" grep -qx 'NoNewPrivs:.1' "$T/status"
hardening "the seccomp filters (RestrictAddressFamilies=, RestrictNamespaces=, RestrictRealtime=, \
RestrictSUIDSGID=, LockPersonality=, SystemCallArchitectures=, ProtectClock=, ProtectKernelModules=)" \
    grep -qx 'Seccomp:.2' "$T/status"
hardening "LimitNOFILE=4096" grep -Eq '^Max open files +4096 +4096' <<<"$(in_ctr cat "/proc/$qpid/limits")"
uid=$(in_ctr id -u hydra-qemu)
if [ -n "$uid" ] && [ "$(awk '/^Uid:/ { print $2, $3, $4, $5 }' "$T/status")" = "$uid $uid $uid $uid" ]; then
    ok "QEMU runs as hydra-qemu (uid $uid: real, effective, saved, file system)"
else
    not_ok "QEMU runs as hydra-qemu (uid '$uid'): $(grep '^Uid:' "$T/status")"
fi
# The device allow-list (the devices controller of cgroup v1 here), exactly: DevicePolicy=closed's pseudo-devices
# (systemd 252's list, rwm, and the pts class rw) and each DeviceAllow= device this container has (rw). It is
# hydrad.service's, and machine.c gives QEMU's scope the same (the unit's list does not reach a scope under
# machine.slice).
want=$(in_ctr sh -c 'for d in "/dev/null rwm" "/dev/zero rwm" "/dev/full rwm" "/dev/random rwm" "/dev/urandom rwm" \
        "/dev/tty rwm" "/dev/ptmx rwm" "/run/systemd/inaccessible/chr rwm" "/run/systemd/inaccessible/blk rwm" \
        "/dev/kvm rw" "/dev/net/tun rw" "/dev/vhost-net rw" "/dev/vhost-vsock rw"; do
        set -- $d
        if [ -c "$1" ]; then t=c; elif [ -b "$1" ]; then t=b; else continue; fi
        echo "$t $((0x$(stat -L -c %t "$1"))):$((0x$(stat -L -c %T "$1"))) $2"
    done
    echo "c $(awk "\$2 == \"pts\" { print \$1 }" /proc/devices):* rw"' | sort)
devlist() { in_ctr cat "/sys/fs/cgroup/devices/$1/devices.list" 2>&1 | sort; }
# The unit also allows char-drm (a spec with devices.gpu opens the render node before it is in its scope): every
# device of the drm major, when the kernel has one.
want_unit=$( (echo "$want"; in_ctr awk '$2 == "drm" { print "c " $1 ":* rw" }' /proc/devices) | sort)
unit_devices=$(devlist system.slice/hydrad.service)
if [ "$unit_devices" = "$want_unit" ]; then
    ok "DevicePolicy=closed, DeviceAllow=: hydrad.service's devices.list is the allow-list" \
        "($(wc -l <<<"$want_unit") entries)"
else
    not_ok "DevicePolicy=closed, DeviceAllow=: hydrad.service's devices.list is the allow-list"
    diff <(echo "$want_unit") <(echo "$unit_devices") | sed 's/^/#   /'
fi
scope='machine.slice/machine-hydra\x2disolated.scope'
qemu_cg=$(in_ctr grep ':devices:' "/proc/$qpid/cgroup" | cut -d: -f3)
scope_devices=$(devlist "$scope")
if [ "$qemu_cg" = "/$scope" ] && [ "$scope_devices" = "$want" ]; then
    ok "QEMU's scope has the same device allow-list: $scope's devices.list ($(wc -l <<<"$want") entries)"
else
    not_ok "QEMU's scope has the same device allow-list (QEMU's devices cgroup: '$qemu_cg')"
    diff <(echo "$want") <(echo "$scope_devices") | sed 's/^/#   /'
fi

# --- machined ---
machines=$(in_ctr machinectl list --no-legend 2>&1)
leader=$(in_ctr machinectl show -p Leader -p Class --value hydra-isolated 2>&1 | xargs)
if grep -q '^hydra-isolated *vm *hydra' <<<"$machines" && [ "$leader" = "$qpid vm" ]; then
    ok "machinectl list: hydra-isolated, class vm, leader QEMU ($qpid)"
else
    not_ok "machinectl list: hydra-isolated, class vm, leader QEMU ($qpid): '$leader'"
    echo "$machines" | sed 's/^/#   /'
fi

# --- systemctl restart hydrad: QEMU stays (KillMode=process), the new hydrad adopts it ---
in_ctr systemctl restart hydrad.service
hpid2=$(in_ctr systemctl show -p MainPID --value hydrad.service)
j=$(in_ctr hydractl --json status isolated 2>&1)
if [ "$hpid2" != "$hpid" ] && in_ctr test -d "/proc/$qpid" &&
    [ "$(json state <<<"$j") $(json pid <<<"$j")" = "running $qpid" ] &&
    grep -q "adopting QEMU (pid $qpid)" <<<"$(in_ctr journalctl -u hydrad.service -o cat "_PID=$hpid2")"; then
    ok "systemctl restart hydrad: QEMU $qpid runs on, hydrad $hpid2 adopts it"
else
    not_ok "systemctl restart hydrad: QEMU $qpid runs on, hydrad $hpid2 adopts it"
    echo "$j" | sed 's/^/#   /'
fi

# --- the journal's fields ---
n=$(in_ctr journalctl -u hydrad.service -o cat VM=isolated HYDRA_STATE=running | wc -l)
# (grep reads the whole output: grep -q on a pipe would fail it under pipefail)
if [ "$n" -ge 2 ] && grep -q '^ *PRIORITY=' <<<"$(in_ctr journalctl -u hydrad.service -o verbose VM=isolated)"; then
    ok "journalctl -u hydrad VM=isolated HYDRA_STATE=running: $n entries (start, adoption)"
else
    not_ok "journalctl -u hydrad VM=isolated HYDRA_STATE=running: $n entries"
fi

# --- a setting the unit leaves out: MemoryDenyWriteExecute=yes stops QEMU's TCG (the unit's comment). QEMU is
# started afresh under a drop-in; it must fail, naming mprotect. ---
in_ctr hydractl stop isolated --force >/dev/null 2>&1
in_ctr sh -c 'mkdir -p /etc/systemd/system/hydrad.service.d &&
    printf "[Service]\nMemoryDenyWriteExecute=yes\n" >/etc/systemd/system/hydrad.service.d/mdwe.conf &&
    systemctl daemon-reload && systemctl restart hydrad.service'
out=$(in_ctr hydractl start isolated --wait running --timeout 30 2>&1)
if [ $? -ne 0 ] && grep -q 'mprotect' <<<"$out"; then
    ok "MemoryDenyWriteExecute=yes (left out): QEMU's TCG fails: '$(head -c 150 <<<"$out")'"
else
    not_ok "MemoryDenyWriteExecute=yes (left out): QEMU's TCG fails naming mprotect"
    echo "$out" | sed 's/^/#   /'
fi

finish
