#!/bin/bash
# SPDX-License-Identifier: MIT
# The Debian package, as CI checks it (issue 13): packaging/build-deb.sh builds it (compiling hydrad and hydractl
# once); its file list is the one below; dpkg -x into a scratch root: the binaries run from there, the man pages
# render without a warning, the completion loads, sysusers.d and tmpfiles.d apply to the scratch root, and
# `systemd-analyze verify --root` passes on the units without a word; lintian reports no error (its warnings are
# printed); `cmake --install` of the same build tree installs exactly the package's files, with the same contents
# (but debhelper's own changelog and copyright, and its compression and stripping). The package is kept in
# /var/cache/hydra-e2e/deb for test_systemd.sh, which installs it under a real systemd.
# Prints "ok - ..."/"not ok - ..." lines, then "N passed, N failed". Label "package" (tests/run-all.sh).
set -uo pipefail

SRC=${HYDRA_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}
for tool in dpkg-buildpackage dh lintian systemd-analyze systemd-sysusers systemd-tmpfiles man groff lexgrog; do
    if ! command -v "$tool" >/dev/null; then
        echo "SKIP: $tool is missing (packaging/install-deps.sh installs it)"
        exit 77
    fi
done

# What the package holds (files and symbolic links; the directories follow from them), with their modes.
EXPECTED_FILES='-rw-r--r-- etc/hydra/hydrad.conf
-rw-r--r-- lib/systemd/system/hydrad.service
-rw-r--r-- lib/systemd/system/hydrad.socket
-rwxr-xr-x usr/bin/hydractl
-rwxr-xr-x usr/bin/hydrad
-rw-r--r-- usr/lib/sysusers.d/hydra.conf
-rw-r--r-- usr/lib/tmpfiles.d/hydra.conf
-rw-r--r-- usr/share/bash-completion/completions/hydractl
-rw-r--r-- usr/share/doc/hydra-vm/README.md.gz
-rw-r--r-- usr/share/doc/hydra-vm/SPEC-FORMAT.md.gz
-rw-r--r-- usr/share/doc/hydra-vm/changelog.gz
-rw-r--r-- usr/share/doc/hydra-vm/copyright
-rw-r--r-- usr/share/doc/hydra-vm/example-isolated.ini
-rw-r--r-- usr/share/hydra/proto/hydra/v1/hydra.proto
-rw-r--r-- usr/share/man/man1/hydractl.1.gz
-rw-r--r-- usr/share/man/man5/hydra-spec.5.gz
-rw-r--r-- usr/share/man/man8/hydrad.8.gz'
# Debian's own, not CMake's.
DEBIAN_ONLY='usr/share/doc/hydra-vm/changelog.gz
usr/share/doc/hydra-vm/copyright'

passed=0 failed=0
ok() { echo "ok - $1"; passed=$((passed + 1)); }
not_ok() { echo "not ok - $1"; failed=$((failed + 1)); }
indent() { printf '%s\n' "$2" | sed "s/^/$1/"; } # PREFIX TEXT
check() { if [ "$2" = "$3" ]; then ok "$1"; else not_ok "$1"; diff <(echo "$2") <(echo "$3") | sed 's/^/#   /'; fi; }

start=$SECONDS
scratch=$(mktemp -d /tmp/hydra-test-deb.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

# --- build ---
if ! deb=$("$SRC/packaging/build-deb.sh" -o "$scratch/out" -w "$scratch/work"); then
    not_ok "packaging/build-deb.sh builds the package"
    echo "0 passed, 1 failed"
    exit 1
fi
ok "packaging/build-deb.sh built $(basename "$deb") in $((SECONDS - start)) s"
# Kept for test_systemd.sh, which installs the same tree's package under a real systemd.
T=$scratch
. "$SRC/tests/packaging/podman_lib.sh"
store_deb "$SRC" "$deb"
version=$(dpkg-deb -f "$deb" Version)
grep -E ': (warning|error): ' "$scratch/work/dpkg-buildpackage.log" | sed 's/^/# build: /'

# --- the file list ---
files=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { sub(/^\.\//, "", $6); print $1, $6 }' | sort -k2)
check "dpkg-deb -c: the expected files and modes" "$EXPECTED_FILES" "$files"
check "conffiles: /etc/hydra/hydrad.conf" "/etc/hydra/hydrad.conf" "$(dpkg-deb --ctrl-tarfile "$deb" |
    tar -xOf - ./conffiles 2>/dev/null)"
postinst=$(dpkg-deb --ctrl-tarfile "$deb" | tar -xOf - ./postinst)
order=$(grep -noE 'systemd-sysusers|systemd-tmpfiles|deb-systemd-invoke' <<<"$postinst" | cut -d: -f2 | uniq | tr '\n' ' ')
check "postinst: users, then directories, then the units started" \
    "systemd-sysusers systemd-tmpfiles deb-systemd-invoke " "$order"

# --- extracted into a scratch root ---
root=$scratch/root
dpkg -x "$deb" "$root"
check "hydrad --version from the package says its version" "hydrad $version" "$("$root/usr/bin/hydrad" --version 2>&1)"
if "$root/usr/bin/hydrad" --help | grep -q '^Usage: hydrad'; then ok "hydrad --help"; else not_ok "hydrad --help"; fi
if "$root/usr/bin/hydractl" --help | grep -q '^Usage: hydractl'; then ok "hydractl --help"; else not_ok "hydractl --help"; fi
unit=$root/lib/systemd/system/hydrad.service
exec_start=$(sed -n 's/^ExecStart=//p' "$unit")
check "the unit runs the packaged hydrad on the packaged config" "/usr/bin/hydrad --config /etc/hydra/hydrad.conf" \
    "$exec_start"

# Man pages: lintian's own check (man --warnings), groff's warnings, and a NAME line whatis can read.
for page in "$root"/usr/share/man/man*/*; do
    name=$(basename "$page" .gz)
    out=$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null)
    out+=$(zcat "$page" | groff -ww -z -man 2>&1)
    lines=$(MANWIDTH=80 man -l "$page" 2>/dev/null | wc -l)
    if [ -z "$out" ] && [ "$lines" -gt 20 ] && lexgrog "$page" >/dev/null; then
        ok "man page $name renders ($lines lines) without a warning"
    else
        not_ok "man page $name renders without a warning"
        indent '#   ' "$out"
    fi
done
if bash -c '. "$1" && complete -p hydractl' _ "$root/usr/share/bash-completion/completions/hydractl" |
    grep -q -- '-F _hydractl hydractl'; then
    ok "the packaged completion registers _hydractl"
else
    not_ok "the packaged completion registers _hydractl"
fi

# sysusers.d and tmpfiles.d, applied to a copy of the root; systemd-analyze verify there (with the host's own
# units, which hydrad's name: sysinit.target, sockets.target, ...).
vroot=$scratch/verify
cp -a "$root" "$vroot"
mkdir -p "$vroot/etc"
cp -rn /lib/systemd/system/. "$vroot/lib/systemd/system/"
if systemd-sysusers --root="$vroot" >/dev/null 2>&1 && grep -q '^hydra:' "$vroot/etc/group" &&
    grep -q '^hydra-qemu:' "$vroot/etc/passwd"; then
    ok "sysusers.d: group hydra and user hydra-qemu"
else
    not_ok "sysusers.d: group hydra and user hydra-qemu"
fi
gid=$(awk -F: '$1 == "hydra" { print $3 }' "$vroot/etc/group")
out=$(systemd-tmpfiles --root="$vroot" --create 2>&1)
check "tmpfiles.d: /run/hydra 0750 and /var/lib/hydra 0751 (QEMU as hydra-qemu passes), root:hydra, no complaint" \
    "$(printf '750 0 %s\n751 0 %s\n' "$gid" "$gid")" \
    "$(stat -c '%a %u %g' "$vroot/run/hydra" "$vroot/var/lib/hydra" 2>&1)$out"
out=$(MANPATH=$vroot/usr/share/man systemd-analyze verify --root="$vroot" hydrad.service hydrad.socket 2>&1)
r=$?
if [ $r -eq 0 ] && [ -z "$out" ]; then
    ok "systemd-analyze verify --root: hydrad.service and hydrad.socket, no error or warning"
else
    not_ok "systemd-analyze verify --root (exit $r)"
    indent '#   ' "$out"
fi

# A wrong setting in the unit (a misspelt key, a bad value) is named by the same verify: the check above is not
# blind to it.
unit=$vroot/lib/systemd/system/hydrad.service
cp "$unit" "$scratch/hydrad.service.good"
sed -i 's/^WatchdogSec=30$/WatchdogSecs=30/; s/^KillMode=process$/KillMode=proces/' "$unit"
out=$(systemd-analyze verify --root="$vroot" hydrad.service 2>&1)
if grep -q "Unknown key 'WatchdogSecs'" <<<"$out" && grep -q "kill mode specification, ignoring: proces" <<<"$out"; then
    ok "systemd-analyze verify names a misspelt key and a bad value in hydrad.service"
else
    not_ok "systemd-analyze verify names a misspelt key and a bad value in hydrad.service"
    indent '#   ' "$out"
fi
cp "$scratch/hydrad.service.good" "$unit"

# --- lintian ---
lint=$(lintian --fail-on error --display-info "$deb" 2>&1)
r=$?
out=$(grep -v 'running with root privileges' <<<"$lint")
[ -n "$out" ] && indent '# lintian: ' "$out"
if [ $r -eq 0 ] && ! grep -q '^E:' <<<"$out"; then
    ok "lintian: no error ($(grep -c '^W:' <<<"$out") warnings)"
else
    not_ok "lintian: errors"
fi

# --- cmake --install of the same build tree ---
build=$(echo "$scratch/work"/*/obj-*)
cm=$scratch/cmake-install
if DESTDIR=$cm cmake --install "$build" --prefix /usr >/dev/null; then
    ok "cmake --install $(basename "$build") --prefix /usr"
else
    not_ok "cmake --install $(basename "$build") --prefix /usr"
fi
# The package's names without debhelper's .gz (man pages, long docs) and its own files.
deb_set=$(awk '{ print $2 }' <<<"$files" | grep -vxF "$DEBIAN_ONLY" | sed -E 's#^(usr/share/(man|doc)/.*)\.gz$#\1#' | sort)
cm_set=$(cd "$cm" && find . ! -type d | sed 's#^\./##' | sort)
check "cmake --install installs the package's files" "$deb_set" "$cm_set"
same=1
while read -r f; do
    case $f in usr/bin/*) continue ;; esac # stripped by dh_strip
    if [ -f "$root/$f.gz" ] && [[ $f == usr/share/* ]]; then
        cmp -s <(zcat "$root/$f.gz") "$cm/$f" || { echo "#   differs: $f"; same=0; }
    else
        cmp -s "$root/$f" "$cm/$f" || { echo "#   differs: $f"; same=0; }
    fi
    [ "$(stat -c %a "$cm/$f")" = "$(stat -c %a "$root/$f"* | head -1)" ] || { echo "#   mode differs: $f"; same=0; }
done <<<"$cm_set"
if [ $same = 1 ]; then ok "... with the same contents and modes"; else not_ok "... with the same contents and modes"; fi

echo "# test_deb: $((SECONDS - start)) s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
