#!/bin/bash
# SPDX-License-Identifier: MIT
# Builds the Hydra container image (packaging/container/README.md) from a CMake build directory: stages hydrad,
# hydractl and hydra-entrypoint in a scratch build context and runs `podman build` (or buildah, or docker) on
# the Dockerfile next to this script.
#
# Usage: build-image.sh [--tool podman|buildah|docker] [--tag IMAGE] BUILD_DIR [-- BUILD-OPTIONS...]
#   BUILD_DIR      holds hydrad and hydractl (e.g. build/)
#   --tag IMAGE    default localhost/hydra/isolated-vm:latest
#   --tool TOOL    default: the first of podman, buildah, docker found
#   BUILD-OPTIONS  passed on, e.g. --build-arg BASE=localhost/debian:bookworm --network host
set -euo pipefail

HERE=$(dirname "$(readlink -f "$0")")
TAG=localhost/hydra/isolated-vm:latest
TOOL=
BUILD_DIR=

die() {
    echo "build-image: $*" >&2
    exit 2
}

while [ $# -gt 0 ]; do
    case $1 in
    --tool) TOOL=${2:?--tool needs a value}; shift 2 ;;
    --tag) TAG=${2:?--tag needs a value}; shift 2 ;;
    -h | --help) sed -n '3,11s/^# \{0,1\}//p' "$0"; exit 0 ;;
    --) shift; break ;;
    -*) die "unknown option '$1' (see --help)" ;;
    *) [ -z "$BUILD_DIR" ] || die "unexpected argument '$1'"; BUILD_DIR=$1; shift ;;
    esac
done
[ -n "$BUILD_DIR" ] || die "missing BUILD_DIR (see --help)"
for f in hydrad hydractl; do
    [ -x "$BUILD_DIR/$f" ] || die "$BUILD_DIR/$f is not an executable: build first (cmake --build $BUILD_DIR)"
done
if [ -z "$TOOL" ]; then
    for t in podman buildah docker; do
        if command -v "$t" >/dev/null; then TOOL=$t; break; fi
    done
    [ -n "$TOOL" ] || die "none of podman, buildah, docker found (apt-get install podman)"
fi

CTX=$(mktemp -d /tmp/hydra-image-context.XXXXXX)
trap 'rm -rf "$CTX"' EXIT
cp "$BUILD_DIR/hydrad" "$BUILD_DIR/hydractl" "$HERE/hydra-entrypoint" "$CTX/"
case $TOOL in
buildah) exec_build=(buildah bud --layers) ;;
*) exec_build=("$TOOL" build) ;;
esac
"${exec_build[@]}" -f "$HERE/Dockerfile" -t "$TAG" "$@" "$CTX"
