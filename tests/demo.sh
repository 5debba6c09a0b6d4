#!/bin/bash
# The demo: hydrad supervising the tiny test guest as the isolated VM. Builds Hydra and the guest if needed,
# starts hydrad (state and sockets under build/demo/), registers, starts, shows status and the guest's
# console, stops, and shuts hydrad down.
set -euo pipefail
cd "$(dirname "$0")/.."
B=$PWD/build
D=$B/demo

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "building hydrad and hydractl"
cmake -S . -B build -G Ninja -DHYDRA_GUEST_DIR="$B/guest" >/dev/null
cmake --build build >/dev/null
say "building the tiny guest (Debian kernel + busybox initramfs) into build/guest"
tests/guest/build-guest.sh "$B/guest"

rm -rf "$D"
mkdir -p "$D"
cat >"$D/isolated.ini" <<INI
[vm]
cpus = 1
memory = 256M
; the demo forces TCG: a Linux guest can hang under nested KVM
accel = tcg

[kernel]
path = $B/guest/vmlinuz
initrd = $B/guest/initrd.img
cmdline = console=ttyS0 panic=-1

[network]
forward = 127.0.0.1:18080:80
INI

say "starting hydrad (log: build/demo/hydrad.log)"
"$B/hydrad" --state-dir "$D/state" --run-dir "$D/run" >"$D/hydrad.log" 2>&1 &
HYDRAD_PID=$!
trap 'kill $HYDRAD_PID 2>/dev/null || true' EXIT
export HYDRA_SOCKET=$D/run/hydra.sock
for _ in $(seq 50); do "$B/hydractl" health >/dev/null 2>&1 && break; sleep 0.1; done
"$B/hydractl" health

say "hydractl register isolated --spec build/demo/isolated.ini"
"$B/hydractl" register isolated --spec "$D/isolated.ini"
say "hydractl plan isolated (the QEMU command line)"
"$B/hydractl" plan isolated
say "hydractl start isolated"
"$B/hydractl" start isolated
"$B/hydractl" status isolated

say "waiting for the guest to boot (TCG: a few seconds)"
for _ in $(seq 600); do
    grep -q "hydra-guest: booted" "$D/state/isolated/console.log" 2>/dev/null && break
    sleep 0.2
done
say "the guest's console (build/demo/state/isolated/console.log), hydra-guest lines"
grep "hydra-guest" "$D/state/isolated/console.log" || true
say "the guest's web server through the forward 127.0.0.1:18080"
/usr/bin/python3 -c 'import urllib.request; print(urllib.request.urlopen("http://127.0.0.1:18080/", timeout=5).read().decode().strip())' \
    || echo "(not reachable)"

say "hydractl stop isolated (ACPI power button; the guest powers itself off)"
"$B/hydractl" stop isolated
"$B/hydractl" status isolated
grep "hydra-guest: powering off" "$D/state/isolated/console.log" || true

say "stopping hydrad (SIGTERM)"
kill -TERM $HYDRAD_PID
wait $HYDRAD_PID
trap - EXIT
echo "hydrad exited with status $?; the demo is over."
