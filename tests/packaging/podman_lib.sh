# shellcheck shell=bash
# SPDX-License-Identifier: MIT
# Sourced by the packaging tests that run podman (test_container.sh, test_systemd.sh): TAP-like ok/not_ok and the
# counts, podman's storage and settings in the shared cache, the Debian 12 base image made offline with
# mmdebstrap, and the Debian package of the source tree, built once per tree content. The caller sets T (its
# scratch directory). test_deb.sh sources it for the package cache only, after its own ok/not_ok.

PASS=0
FAIL=0
T0=$SECONDS
if ! declare -F ok >/dev/null; then
    ok() { PASS=$((PASS + 1)); echo "ok - $*"; }
    not_ok() { FAIL=$((FAIL + 1)); echo "not ok - $*"; }
fi
skip() { echo "skip: $*"; exit 77; }
# require_podman WHY: exit 77 (skipped) unless root, podman and mmdebstrap are there.
require_podman() {
    [ "$(id -u)" -eq 0 ] || skip "needs root ($1)"
    command -v podman >/dev/null || skip "podman is not installed (packaging/install-deps.sh)"
    command -v mmdebstrap >/dev/null || skip "mmdebstrap is not installed (packaging/install-deps.sh)"
}

CACHE=${HYDRA_CONTAINER_CACHE:-/var/cache/hydra-e2e/container}
DEB_CACHE=${HYDRA_DEB_CACHE:-/var/cache/hydra-e2e/deb}
BASE=localhost/hydra-test/debian:bookworm

# Our own storage (the cache, shared by runs and by both tests) and settings: the ulimits podman would set by
# default (nofile 1048576) are above this machine's hard limits, which a container may not raise.
podman_setup() {
    local nofile nproc
    mkdir -p "$CACHE"
    cat >"$T/storage.conf" <<EOF
[storage]
driver = "overlay"
graphroot = "$CACHE/storage"
runroot = "/run/hydra-container-test/storage"
EOF
    nofile=$(ulimit -Hn)
    nproc=$(ulimit -Hu)
    [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
    cat >"$T/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
EOF
    export CONTAINERS_STORAGE_CONF=$T/storage.conf CONTAINERS_CONF=$T/containers.conf
}

# The base image: Debian 12 from mmdebstrap (its sources are the host's mirror), imported once. Takes the cache's
# lock (fd 9), which the caller keeps while it builds on the base and then closes (exec 9>&-).
build_base() {
    local key t
    local sources=("deb http://deb.debian.org/debian bookworm main"
        "deb http://deb.debian.org/debian bookworm-updates main"
        "deb http://deb.debian.org/debian-security bookworm-security main")
    key=$(printf '%s\n' minbase "${sources[@]}" | sha256sum | cut -c1-16)
    exec 9>"$CACHE/.lock"
    flock 9 # one builder at a time; the layers are then shared
    [ "$(podman image inspect --format '{{index .Labels "hydra.base-key"}}' "$BASE" 2>/dev/null)" != "$key" ] ||
        return 0
    echo "# building the base image (mmdebstrap bookworm, minbase; cached in $CACHE)"
    t=$SECONDS
    if ! mmdebstrap --variant=minbase --quiet bookworm "$T/base.tar" "${sources[@]}" >"$T/mmdebstrap.log" 2>&1; then
        cat "$T/mmdebstrap.log" >&2
        not_ok "mmdebstrap bookworm"
        return 1
    fi
    podman import --change "LABEL hydra.base-key=$key" --change 'CMD ["/bin/bash"]' "$T/base.tar" "$BASE" \
        >/dev/null
    rm -f "$T/base.tar"
    echo "# base image in $((SECONDS - t)) s"
}

# deb_key SRC: a key for the files packaging/build-deb.sh copies (git's tracked and untracked-but-not-ignored
# files), by their contents; empty outside a git checkout.
deb_key() {
    git -C "$1" rev-parse --is-inside-work-tree >/dev/null 2>&1 || return 0
    (cd "$1" && git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
        xargs -0 sha256sum | sha256sum | cut -c1-16)
}

# store_deb SRC DEB: keeps DEB as the package of SRC's tree (test_deb.sh builds it; test_systemd.sh reuses it).
# Only the newest few trees' packages are kept.
store_deb() {
    local key
    key=$(deb_key "$1")
    [ -n "$key" ] || return 0
    mkdir -p "$DEB_CACHE/$key.tmp.$$" 2>/dev/null && cp "$2" "$DEB_CACHE/$key.tmp.$$/" &&
        { rm -rf "${DEB_CACHE:?}/$key"; mv "$DEB_CACHE/$key.tmp.$$" "$DEB_CACHE/$key"; }
    ls -1dt "$DEB_CACHE"/*/ 2>/dev/null | tail -n +4 | xargs -r rm -rf
}

# cached_deb SRC: prints the path of the package of SRC's tree, built with packaging/build-deb.sh unless the cache
# has it.
cached_deb() {
    local key deb
    key=$(deb_key "$1")
    deb=$(ls "$DEB_CACHE/$key"/hydra-vm_*.deb 2>/dev/null | head -1)
    if [ -z "$key" ] || [ -z "$deb" ]; then
        echo "# building the package (packaging/build-deb.sh; cached in $DEB_CACHE)" >&2
        deb=$("$1/packaging/build-deb.sh" -o "$T/deb") || return 1
        store_deb "$1" "$deb"
    fi
    echo "$deb"
}
