#!/bin/bash
# SPDX-License-Identifier: MIT
# Builds the Debian package from packaging/debian/, out of tree: copies the source tree (git's tracked and
# untracked-but-not-ignored files) into WORKDIR/hydra-vm-VERSION with debian/ beside it, runs
# `dpkg-buildpackage -us -uc -b` there (DEB_BUILD_OPTIONS "nocheck parallel=2 noddebs" unless set: the tests run
# in tests/run-all.sh, not in the package build), copies the .deb into OUTDIR and prints its path.
#
#   packaging/build-deb.sh [-o OUTDIR] [-w WORKDIR]
#
# OUTDIR: where the .deb goes (default: the current directory). WORKDIR: where it is built (default: a temporary
# directory, removed afterwards; a given one is kept, with the build log dpkg-buildpackage.log and CMake's build
# tree in hydra-vm-VERSION/obj-*). Needs dpkg-dev, debhelper and the build dependencies (packaging/install-deps.sh).
set -euo pipefail

usage() {
    echo "usage: $0 [-o OUTDIR] [-w WORKDIR]" >&2
    exit 2
}

SRC=$(cd "$(dirname "$0")/.." && pwd)
outdir=$PWD
workdir=
while getopts "o:w:h" opt; do
    case $opt in
        o) outdir=$OPTARG ;;
        w) workdir=$OPTARG ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[ $# -eq 0 ] || usage

for tool in dpkg-buildpackage dpkg-parsechangelog dh; do
    if ! command -v "$tool" >/dev/null; then
        echo "build-deb: $tool is missing (apt-get install dpkg-dev debhelper; packaging/install-deps.sh)" >&2
        exit 1
    fi
done
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

if [ -z "$workdir" ]; then
    workdir=$(mktemp -d /tmp/hydra-deb.XXXXXX)
    trap 'rm -rf "$workdir"' EXIT
else
    mkdir -p "$workdir"
    workdir=$(cd "$workdir" && pwd)
fi

changelog=$SRC/packaging/debian/changelog
name=$(dpkg-parsechangelog -l "$changelog" -S Source)
version=$(dpkg-parsechangelog -l "$changelog" -S Version)
tree=$workdir/$name-$version
rm -rf "$tree"
mkdir -p "$tree"

# The sources as git sees them (build directories and other ignored files left out); without git, the tree minus
# build*/ directories.
if git -C "$SRC" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$SRC" ls-files -z --cached --others --exclude-standard |
        (cd "$SRC" && while IFS= read -r -d '' f; do [ -e "$f" ] && printf '%s\0' "$f"; done) |
        tar -C "$SRC" --null -T - -cf - | tar -C "$tree" -xf -
else
    tar -C "$SRC" --exclude='./build*' --exclude=./.git -cf - . | tar -C "$tree" -xf -
fi
rm -rf "$tree/debian"
cp -a "$SRC/packaging/debian" "$tree/debian"

echo "build-deb: building $name $version in $tree (log: $workdir/dpkg-buildpackage.log)" >&2
export DEB_BUILD_OPTIONS=${DEB_BUILD_OPTIONS:-nocheck parallel=2 noddebs}
if ! (cd "$tree" && dpkg-buildpackage -us -uc -b) >"$workdir/dpkg-buildpackage.log" 2>&1; then
    tail -n 40 "$workdir/dpkg-buildpackage.log" >&2
    echo "build-deb: dpkg-buildpackage failed (the last 40 lines above)" >&2
    exit 1
fi

arch=$(dpkg-architecture -qDEB_HOST_ARCH)
deb=$name\_$version\_$arch.deb
if [ ! -f "$workdir/$deb" ]; then
    echo "build-deb: dpkg-buildpackage made no $deb" >&2
    exit 1
fi
cp "$workdir/$deb" "$outdir/$deb"
echo "$outdir/$deb"
