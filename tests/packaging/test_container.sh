#!/bin/bash
# packaging/container: builds the image with podman (Debian's) from a Debian 12 base made offline with mmdebstrap
# and `podman import` (cached, with podman's storage and so its layer cache, in $HYDRA_CONTAINER_CACHE, default
# /var/cache/hydra-e2e/container), then runs it:
#   - spec files (HYDRA_SPEC_DIR): the tiny test guest boots inside the container under TCG, its console reaches
#     the container's log, a stop (SIGTERM to the entrypoint) powers the guest off and the container exits 0;
#   - start-vm.sh's variables (`docker run -e ...`): the entrypoint registers the isolated VM from them and GetVm
#     (hydractl status --json) shows them in the spec;
#   - a bad variable (start-vm.sh's or the entrypoint's), HYDRA_ACCEL=kvm without /dev/kvm: exit 2, a message
#     naming it.
# Environment (ctest sets them): HYDRAD, HYDRACTL (their directory is the build directory the image copies),
# HYDRA_GUEST_DIR (default BUILD_DIR/guest). Needs root, podman and mmdebstrap (packaging/install-deps.sh); skips (77) without them.
# A warm run (base and package layers cached) takes about 30 s; a cold one a few minutes (mmdebstrap, apt-get).
set -uo pipefail

: "${HYDRAD:?HYDRAD must name the hydrad binary}"
: "${HYDRACTL:?HYDRACTL must name the hydractl binary}"
SRC=$(cd "$(dirname "$0")/../.." && pwd)
# ok/not_ok, podman's storage in the cache, the base image (tests/packaging/podman_lib.sh).
. "$SRC/tests/packaging/podman_lib.sh"
require_podman "podman's storage, mmdebstrap"
BUILD_DIR=$(dirname "$(readlink -f "$HYDRAD")")
[ "$(dirname "$(readlink -f "$HYDRACTL")")" = "$BUILD_DIR" ] || skip "hydrad and hydractl are not in one build directory"
# The tiny test guest (tests/guest/build-guest.sh; ctest's guest fixture builds it): the build's default place.
HYDRA_GUEST_DIR=${HYDRA_GUEST_DIR:-$BUILD_DIR/guest}
{ [ -f "$HYDRA_GUEST_DIR/vmlinuz" ] && [ -f "$HYDRA_GUEST_DIR/initrd.img" ]; } ||
    skip "no test guest in $HYDRA_GUEST_DIR (tests/guest/build-guest.sh $HYDRA_GUEST_DIR)"

T=$(mktemp -d /tmp/hydra-container-test.XXXXXX)
NAME=hydra-test-$$
cleanup() {
    local c
    for c in $(podman ps -a --format '{{.Names}}' 2>/dev/null | grep "^$NAME-"); do
        podman rm -f -t 0 "$c" >/dev/null 2>&1
    done
    [ -n "${HYDRA_KEEP_TEST_DIR:-}" ] || rm -rf "$T"
}
trap cleanup EXIT

podman_setup
if ! build_base; then
    echo "$PASS passed, $FAIL failed"
    exit 1
fi

# --- the image: loose binaries from the build directory; an ASan build needs its run-time libraries too ---
# The sanitizers' libraries (and libatomic, which they bring) by the host's package names; a normal build needs
# none: the Dockerfile's RUNTIME_LIBS must cover it (a missing library fails the runs below).
extra=$(ldd "$HYDRAD" "$HYDRACTL" | awk '/lib(asan|ubsan|atomic)\./ {print $3}' | sort -u | xargs -r readlink -f |
    xargs -r dpkg -S | cut -d: -f1 | sort -u | tr '\n' ' ')
# One tag per variant, so that each keeps its package layer cached (older builds' images are pruned).
IMAGE=localhost/hydra-test/isolated-vm:test${extra:+-sanitizers}
t=$SECONDS
if "$SRC/packaging/container/build-image.sh" --tool podman --tag "$IMAGE" "$BUILD_DIR" -- \
    --build-arg BASE="$BASE" --build-arg EXTRA_PACKAGES="$extra" --network host --layers >"$T/build.log" 2>&1; then
    ok "podman build of packaging/container/Dockerfile ($((SECONDS - t)) s)"
else
    cat "$T/build.log" >&2
    not_ok "podman build of packaging/container/Dockerfile"
    echo "$PASS passed, $FAIL failed"
    exit 1
fi
exec 9>&- # the image is ours now (a parallel run would only retag it with the same layers)
# Only the newest test image is kept: dangling ones from older builds go.
podman image prune -f >/dev/null 2>&1

# Runs the image: run NAME-SUFFIX [podman run options] -- [no command]. No network (QEMU's user network needs
# none, and no port of the host is taken); the guest directory read-only at /guest.
run() {
    local suffix=$1
    shift
    podman run -d --name "$NAME-$suffix" --network none -v "$HYDRA_GUEST_DIR:/guest:ro" "$@" "$IMAGE" >/dev/null
}
logs() { podman logs "$NAME-$1" 2>&1; }
# log_has SUFFIX PATTERN: the container's log matches (grep -E; reads it all: no SIGPIPE under pipefail).
log_has() { logs "$1" | grep -E -- "$2" >/dev/null; }
# wait_exit SUFFIX SECONDS: prints the exit code once the container has stopped.
wait_exit() {
    local deadline=$((SECONDS + $2)) state
    while state=$(podman inspect --format '{{.State.Status}}' "$NAME-$1" 2>/dev/null); do
        if [ "$state" = exited ] || [ "$state" = stopped ]; then
            podman inspect --format '{{.State.ExitCode}}' "$NAME-$1"
            return 0
        fi
        [ $SECONDS -lt $deadline ] || { echo timeout; return 1; }
        sleep 0.3
    done
    echo gone
    return 1
}
# wait_log SUFFIX SECONDS PATTERN: the container's log matches PATTERN (grep -E) before SECONDS pass.
wait_log() {
    local deadline=$((SECONDS + $2))
    until log_has "$1" "$3"; do
        [ $SECONDS -lt $deadline ] || return 1
        sleep 0.3
    done
}
show() { echo "# log of $1:"; logs "$1" | sed 's/^/#   /' | tail -40; }

# --- spec files: the tiny guest boots in the container; SIGTERM powers it off, exit 0 ---
mkdir -p "$T/specs"
cat >"$T/specs/isolated.ini" <<INI
[vm]
cpus = 1
memory = 256M
accel = tcg

[kernel]
path = /guest/vmlinuz
initrd = /guest/initrd.img
cmdline = console=ttyS0 panic=-1
INI
t=$SECONDS
run boot -v "$T/specs:/etc/hydra/specs:ro" -e HYDRA_SPEC_DIR=/etc/hydra/specs -e HYDRA_ACCEL=tcg
if wait_log boot 90 "hydra-guest: booted"; then
    ok "HYDRA_SPEC_DIR: the tiny guest boots in the container, its console in the container's log ($((SECONDS - t)) s)"
else
    show boot
    not_ok "HYDRA_SPEC_DIR: the tiny guest boots in the container"
fi
if podman exec "$NAME-boot" hydractl status isolated 2>&1 | grep -E "^state: +running" >/dev/null; then
    ok "hydractl status in the container: isolated is running"
else
    podman exec "$NAME-boot" hydractl status isolated 2>&1 | sed 's/^/#   /'
    not_ok "hydractl status in the container: isolated is running"
fi
podman kill --signal TERM "$NAME-boot" >/dev/null
rc=$(wait_exit boot 60)
if [ "$rc" = 0 ] && log_has boot "hydra-guest: powering off" && log_has boot "SIGTERM: stopping hydrad"; then
    ok "SIGTERM: hydrad powers the guest off and the container exits 0"
else
    show boot
    not_ok "SIGTERM: hydrad powers the guest off and the container exits 0 (exit: $rc)"
fi

# --- start-vm.sh's variables, as in the reference's `docker run -e ... -v $(pwd)/image:/root/image`: register,
# GetVm shows them, the state is in the mounted directory ---
KEY="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHydraContainerTestKeyOnly0000000000000000 test@hydra"
mkdir -p "$T/image"
run env -v "$T/image:/root/image" -e HYDRA_START=0 -e VM_HOSTNAME=ctr-isolated -e VM_USERNAME=hailhydra -e KVM_CPU=3 -e KVM_MEMORY=2 \
    -e DEFAULT_KVM_DISK_SIZE=5 -e "VM_SSH_AUTHORIZED_KEY=$KEY" -e DEFAULT_KVM_PORTS_REDIRECT="30800:8000;30801:8001" \
    -e DEFAULT_IMAGE_SOURCE_URL=file:///guest -e DEFAULT_IMAGE=disk.qcow2
if wait_log env 30 "hydrad is serving"; then
    ok "the environment: hydrad up, 'isolated' registered from the variables"
else
    show env
    not_ok "the environment: hydrad up, 'isolated' registered from the variables"
fi
podman exec "$NAME-env" hydractl --json status isolated >"$T/status.json" 2>&1
if /usr/bin/python3 - "$T/status.json" "$KEY" <<'EOF'; then
import json, sys
vm = json.load(open(sys.argv[1]))
s = vm["spec"]
want = {
    ("guest", "hostname"): "ctr-isolated", ("guest", "username"): "hailhydra", ("cpus",): 3,
    ("memory_mib",): 2048, ("disk_size_gib",): 5, ("image", "url"): "file:///guest/disk.qcow2",
}
for path, v in want.items():
    got = s
    for k in path:
        got = got.get(k) if isinstance(got, dict) else None
    if str(got) != str(v):
        sys.exit("%s: %r, want %r" % (".".join(path), got, v))
if sys.argv[2] not in s["guest"].get("ssh_authorized_keys", []):
    sys.exit("guest.ssh_authorized_keys: %r" % s["guest"].get("ssh_authorized_keys"))
fwd = sorted((f.get("host_port"), f.get("guest_port")) for f in s["forwards"])
if (30800, 8000) not in fwd or (30801, 8001) not in fwd:
    sys.exit("network.forwards: %r" % fwd)
EOF
    ok "GetVm shows the variables in the spec (hostname, user, cpus, memory, disk, image, key, forwards)"
else
    sed 's/^/#   /' "$T/status.json" | head -20
    not_ok "GetVm shows the variables in the spec"
fi
if [ -f "$T/image/isolated/spec.pb" ] && log_has env "/root/image is a mount point .*: hydrad keeps its state there"; then
    ok "the reference's -v DIR:/root/image: hydrad keeps its state there"
else
    find "$T/image" | sed 's/^/#   /'
    not_ok "the reference's -v DIR:/root/image: hydrad keeps its state there"
fi
if log_has env "warning: /dev/kvm is not usable in this container \\(pass --device /dev/kvm\\)"; then
    ok "no /dev/kvm: a warning says the VM would run under TCG"
elif [ -c /dev/kvm ]; then
    ok "no /dev/kvm warning expected (this machine has /dev/kvm; the container has no --device)"
else
    show env
    not_ok "no /dev/kvm: a warning says the VM would run under TCG"
fi
t=$SECONDS
podman stop -t 30 "$NAME-env" >/dev/null
rc=$(wait_exit env 40)
if [ "$rc" = 0 ]; then ok "podman stop: exit 0 ($((SECONDS - t)) s)"; else show env; not_ok "podman stop: exit 0 (exit: $rc)"; fi

# --- bad variables: exit 2, the message names the variable ---
bad() { # bad SUFFIX DESCRIPTION PATTERN -e VAR=VALUE...
    local suffix=$1 desc=$2 pattern=$3 rc
    shift 3
    run "$suffix" "$@"
    rc=$(wait_exit "$suffix" 30)
    if [ "$rc" = 2 ] && log_has "$suffix" "$pattern"; then
        ok "$desc: exit 2, '$(logs "$suffix" | grep -E -m1 -- "$pattern")'"
    else
        show "$suffix"
        not_ok "$desc: exit 2 and a message matching '$pattern' (exit: $rc)"
    fi
}
bad badcpu "KVM_CPU=two" "^hydractl: --from-env: KVM_CPU: 'two' is not a whole number" -e KVM_CPU=two
bad badports "DEFAULT_KVM_PORTS_REDIRECT=8080" \
    "^hydractl: --from-env: DEFAULT_KVM_PORTS_REDIRECT: '8080' is not HOST_PORT:GUEST_PORT" \
    -e DEFAULT_KVM_PORTS_REDIRECT=8080
if log_has badcpu "cannot register 'isolated' from the environment"; then
    ok "the entrypoint says which step failed"
else
    not_ok "the entrypoint says which step failed"
fi
bad badrole "HYDRA_ROLE=guest" "^hydra-entrypoint: HYDRA_ROLE: 'guest' is not a role" -e HYDRA_ROLE=guest
if [ ! -c /dev/kvm ]; then
    bad nokvm "HYDRA_ACCEL=kvm without /dev/kvm" "HYDRA_ACCEL=kvm but /dev/kvm is not usable.*--device /dev/kvm" \
        -e HYDRA_ACCEL=kvm
fi

echo "# $((SECONDS - T0)) s in all"
echo "$PASS passed, $FAIL failed"
[ $FAIL -eq 0 ]
