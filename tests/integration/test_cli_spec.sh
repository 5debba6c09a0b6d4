#!/bin/bash
# hydractl without a daemon: the spec file format (through the hidden `hydractl spec-dump`, which prints the
# hydra.v1.VmSpec that `register` would send, as JSON), the exit codes of bad usage (2) and of an unreachable
# daemon (1, "hydractl: UNAVAILABLE: ..."). Only needs $HYDRACTL (set by ctest).
set -euo pipefail

: "${HYDRACTL:?HYDRACTL must name the hydractl binary}"

unset HYDRA_SOCKET
PY=/usr/bin/python3
T=$(mktemp -d /tmp/hydra-cli-test.XXXXXX)
trap 'rm -rf "$T"' EXIT
PASS=0
FAIL=0

ok() { PASS=$((PASS + 1)); echo "ok - $*"; }
not_ok() { FAIL=$((FAIL + 1)); echo "not ok - $*"; }

# json PATH < json: one value; "null" for null or missing; lists and objects as JSON. PATH: a.b.0.c
json() {
    $PY -c '
import json, sys
v = json.load(sys.stdin)
for k in sys.argv[1].split("."):
    if isinstance(v, list) and k.isdigit():
        v = v[int(k)] if int(k) < len(v) else None
    else:
        v = v.get(k) if isinstance(v, dict) else None
print("null" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else v))' "$1"
}

# expect_value DESC EXPECTED PATH -- HYDRACTL-ARGS...: spec-dump (or any command) succeeds and PATH == EXPECTED.
expect_value() {
    local desc=$1 expected=$2 path=$3 out got
    shift 4
    if ! out=$("$HYDRACTL" "$@" 2>"$T/err"); then
        not_ok "$desc (exit $?: $(cat "$T/err"))"
        return
    fi
    got=$(json "$path" <<<"$out")
    if [ "$got" = "$expected" ]; then ok "$desc"; else not_ok "$desc (expected '$expected', got '$got')"; fi
}

# expect_fail DESC CODE STDERR-REGEX -- HYDRACTL-ARGS...: exits CODE, stderr matches (grep -E), stdout empty.
expect_fail() {
    local desc=$1 code=$2 regex=$3 rc=0
    shift 4
    "$HYDRACTL" "$@" >"$T/out" 2>"$T/err" || rc=$?
    if [ $rc -ne "$code" ]; then
        not_ok "$desc (exit $rc, expected $code; stderr: $(cat "$T/err"))"
    elif ! grep -Eq -- "$regex" "$T/err"; then
        not_ok "$desc (stderr does not match '$regex': $(cat "$T/err"))"
    elif [ -s "$T/out" ]; then
        not_ok "$desc (unexpected output: $(cat "$T/out"))"
    else
        ok "$desc"
    fi
}

# --- a valid spec with relative paths, read from another directory ---
mkdir -p "$T/specs/sub" "$T/elsewhere"
cat >"$T/specs/sub/guest.ini" <<'INI'
# A spec with relative paths: they are relative to this file's directory.
[vm]
cpus = 2
memory = 512M
accel = tcg
arch = x86_64
machine = q35
cpu = qemu64

[kernel]
path = ../kernels/vmlinuz
initrd = ./initrd.img
cmdline = console=ttyS0 panic=-1 ; kept: no inline comments

[disk]
path = /var/lib/images/disk.qcow2

[network]
forward = 127.0.0.1:2222:22
forward = 8080:80/udp
INI
SPEC=$T/specs/sub/guest.ini

cd "$T/elsewhere"
expect_value "cpus" 2 cpus -- spec-dump --spec ../specs/sub/guest.ini
expect_value "memory 512M -> 512 MiB" 512 memory_mib -- spec-dump --spec ../specs/sub/guest.ini
expect_value "accel tcg" tcg accel -- spec-dump --spec ../specs/sub/guest.ini
expect_value "arch" x86_64 arch -- spec-dump --spec ../specs/sub/guest.ini
expect_value "machine" q35 machine -- spec-dump --spec ../specs/sub/guest.ini
expect_value "cpu -> cpu_model" qemu64 cpu_model -- spec-dump --spec ../specs/sub/guest.ini
expect_value "relative kernel path resolved against the spec's directory" "$T/specs/kernels/vmlinuz" \
    kernel.kernel -- spec-dump --spec ../specs/sub/guest.ini
expect_value "relative initrd path resolved against the spec's directory" "$T/specs/sub/initrd.img" \
    kernel.initrd -- spec-dump --spec ../specs/sub/guest.ini
expect_value "an absolute path is kept" /var/lib/images/disk.qcow2 disk -- spec-dump --spec "$SPEC"
expect_value "cmdline taken literally (';' is not a comment)" "console=ttyS0 panic=-1 ; kept: no inline comments" \
    kernel.cmdline -- spec-dump --spec "$SPEC"
N=$("$HYDRACTL" spec-dump --spec "$SPEC" | $PY -c 'import json,sys; print(len(json.load(sys.stdin)["forwards"]))')
if [ "$N" = 2 ]; then ok "two forward lines -> two forwards"; else not_ok "two forward lines -> two forwards ($N)"; fi
expect_value "forward host_addr" 127.0.0.1 forwards.0.host_addr -- spec-dump --spec "$SPEC"
expect_value "forward host_port" 2222 forwards.0.host_port -- spec-dump --spec "$SPEC"
expect_value "forward guest_port" 22 forwards.0.guest_port -- spec-dump --spec "$SPEC"
expect_value "forward protocol defaults to tcp" tcp forwards.0.protocol -- spec-dump --spec "$SPEC"
expect_value "forward without an address leaves it to the daemon (127.0.0.1)" null forwards.1.host_addr \
    -- spec-dump --spec "$SPEC"
expect_value "forward /udp" udp forwards.1.protocol -- spec-dump --spec "$SPEC"

# --- memory sizes ---
for pair in 512:512 512M:512 512m:512 2G:2048 2GiB:2048 1T:1048576 1048576K:1024 64MB:64; do
    expect_value "memory $pair" "${pair#*:}" memory_mib -- spec-dump --spec "$SPEC" --set "vm.memory=${pair%%:*}"
done
expect_fail "memory 1000K (not whole MiB) refused" 2 "vm.memory: '1000K' is not a whole number of MiB" \
    -- spec-dump --spec "$SPEC" --set vm.memory=1000K
expect_fail "memory 1.5G refused" 2 "vm.memory: '1.5G' is not a size" -- spec-dump --set vm.memory=1.5G
expect_fail "memory 2X refused" 2 "vm.memory: '2X' is not a size" -- spec-dump --set vm.memory=2X

# --- --set ---
expect_value "--set overrides a key" 4 cpus -- spec-dump --spec "$SPEC" --set vm.cpus=4
expect_value "the last --set wins" 8 cpus -- spec-dump --spec "$SPEC" --set vm.cpus=4 --set vm.cpus=8
N=$("$HYDRACTL" spec-dump --spec "$SPEC" --set network.forward=0.0.0.0:9000:90 |
    $PY -c 'import json,sys; f=json.load(sys.stdin)["forwards"]; print(len(f), f[2]["host_addr"], f[2]["host_port"])')
if [ "$N" = "3 0.0.0.0 9000" ]; then ok "--set network.forward appends a third forward"; else
    not_ok "--set network.forward appends a third forward ($N)"; fi
N=$("$HYDRACTL" spec-dump --spec "$SPEC" --set network.forward= --set network.forward=1:2 |
    $PY -c 'import json,sys; f=json.load(sys.stdin)["forwards"]; print(len(f), f[0]["host_port"])')
if [ "$N" = "1 1" ]; then ok "--set network.forward= clears the list"; else not_ok "--set network.forward= clears ($N)"; fi
expect_value "--set with an empty value resets a key" null kernel.initrd -- spec-dump --spec "$SPEC" --set kernel.initrd=
expect_value "--set relative path: relative to the current directory" "$T/elsewhere/k/vmlinuz" kernel.kernel \
    -- spec-dump --spec "$SPEC" --set kernel.path=./k/vmlinuz
expect_value "--set without a spec file" kvm accel -- spec-dump --set vm.accel=kvm
expect_fail "--set unknown key" 2 "--set 'vm.cores=2': unknown key 'cores' in \[vm\]" \
    -- spec-dump --spec "$SPEC" --set vm.cores=2
expect_fail "--set without '='" 2 "expected SECTION.KEY=VALUE" -- spec-dump --set vm.cpus
expect_fail "--set without a section" 2 "expected SECTION.KEY=VALUE" -- spec-dump --set cpus=2
expect_fail "--set bad accel" 2 "vm.accel: 'xen' is not an accelerator \(allowed: auto, kvm, tcg\)" \
    -- spec-dump --set vm.accel=xen

# --- errors in the file: exit 2, FILE:LINE ---
BAD=$T/bad.ini
printf '[vm]\ncpus = 2\ncpu_count = 3\n' >"$BAD"
expect_fail "unknown key names file:line and the key" 2 "^hydractl: $BAD:3: unknown key 'cpu_count' in \[vm\]" \
    -- spec-dump --spec "$BAD"
expect_fail "register refuses it the same way (no daemon needed)" 2 "^hydractl: $BAD:3: unknown key 'cpu_count'" \
    -- --socket "$T/none.sock" register isolated --spec "$BAD"
printf '[vm]\ncpus = 2\n\n[netwrok]\nforward = 1:2\n' >"$BAD"
expect_fail "unknown section names file:line" 2 "^hydractl: $BAD:5: unknown section \[netwrok\]" -- spec-dump --spec "$BAD"
printf '# comment\n[vm]\ncpus = two\n' >"$BAD"
expect_fail "bad number names file:line" 2 "^hydractl: $BAD:3: vm.cpus: 'two' is not a number" -- spec-dump --spec "$BAD"
printf '[vm]\ncpus = 2\ncpus = 3\n' >"$BAD"
expect_fail "a key set twice" 2 "^hydractl: $BAD:3: vm.cpus: already set on line 2" -- spec-dump --spec "$BAD"
printf '[network]\nforward = 70000:22\n' >"$BAD"
expect_fail "port out of range" 2 "^hydractl: $BAD:2: network.forward: host port 70000 is out of range" \
    -- spec-dump --spec "$BAD"
printf '[network]\nforward = 2222\n' >"$BAD"
expect_fail "malformed forward" 2 "^hydractl: $BAD:2: network.forward: '2222' is not \[HOST_ADDR:\]HOST_PORT:GUEST_PORT" \
    -- spec-dump --spec "$BAD"
printf '[vm]\n[kernel\n' >"$BAD"
expect_fail "syntax error names file:line" 2 "^hydractl: $BAD:2: syntax error" -- spec-dump --spec "$BAD"
printf 'cpus = 2\n' >"$BAD"
expect_fail "a key outside any section" 2 "^hydractl: $BAD:1: key 'cpus' outside any section" -- spec-dump --spec "$BAD"
expect_fail "missing file" 2 "^hydractl: $T/missing.ini: No such file or directory" -- spec-dump --spec "$T/missing.ini"
expect_fail "a directory" 2 "^hydractl: $T: cannot read" -- spec-dump --spec "$T"

# --- odd but valid files ---
{ echo "[kernel]"; printf 'cmdline = '; for i in $(seq 1 80); do printf 'opt%d=value ' "$i"; done; echo; } >"$T/long.ini"
N=$("$HYDRACTL" spec-dump --spec "$T/long.ini" | $PY -c 'import json,sys; print(len(json.load(sys.stdin)["kernel"]["cmdline"]))')
if [ "$N" -gt 800 ]; then ok "a long kernel command line is kept whole ($N bytes)"; else not_ok "long cmdline ($N)"; fi
printf '\xef\xbb\xbf[vm]\r\ncpus = 3\r\n  memory = 1G\r\n' >"$T/crlf.ini"
expect_value "BOM, CRLF and indented keys" 1024 memory_mib -- spec-dump --spec "$T/crlf.ini"
expect_value "spec from standard input (--spec -)" 5 cpus -- spec-dump --spec - <<<$'[vm]\ncpus = 5'
if [ -n "${HYDRA_SOURCE_DIR:-}" ] && [ -f "$HYDRA_SOURCE_DIR/packaging/example-isolated.ini" ]; then
    expect_value "packaging/example-isolated.ini parses" 1024 memory_mib \
        -- spec-dump --spec "$HYDRA_SOURCE_DIR/packaging/example-isolated.ini"
fi

# --- bad usage: exit 2, a hint naming --help ---
expect_fail "no command" 2 "missing COMMAND.*--help" --
expect_fail "unknown command" 2 "unknown command 'frobnicate'.*--help" -- frobnicate
expect_fail "unknown global option" 2 "unknown option '--frob'.*--help" -- --frob list
expect_fail "--socket without a value" 2 "option '--socket' needs a value" -- --socket
expect_fail "bad global --timeout" 2 "--timeout: 'soon' is not a positive number" -- --timeout soon list
expect_fail "register without ROLE" 2 "register: missing ROLE.*--help" -- register --spec "$SPEC"
expect_fail "register without --spec" 2 "register: missing --spec FILE" -- register isolated
expect_fail "unknown role" 2 "unknown role 'guest' \(expected host or isolated\)" -- start guest
expect_fail "two roles" 2 "unexpected argument 'host'" -- stop isolated host
expect_fail "start --wait ready is not supported yet" 2 "--wait ready is not supported yet" -- start isolated --wait ready
expect_fail "start --wait bogus" 2 "--wait: 'bogus' is not one of" -- start isolated --wait bogus
expect_fail "stop --timeout 0" 2 "--timeout: '0' is not a whole number of seconds" -- stop isolated --timeout 0
expect_fail "stop --timeout -5" 2 "--timeout: '-5' is not a whole number" -- stop isolated --timeout -5
expect_fail "unknown command option" 2 "stop: unknown option '--frce'.*hydractl stop --help" -- stop isolated --frce
expect_fail "list takes no argument" 2 "list: unexpected argument 'isolated'" -- list isolated
expect_fail "plan needs ROLE" 2 "plan: missing ROLE" -- plan
if "$HYDRACTL" --help | grep -q "register ROLE --spec FILE"; then ok "--help"; else not_ok "--help"; fi
if "$HYDRACTL" start --help | grep -q -- "--wait running"; then ok "start --help"; else not_ok "start --help"; fi

# --- no daemon: exit 1, UNAVAILABLE naming the socket ---
expect_fail "unreachable socket: exit 1, UNAVAILABLE" 1 "^hydractl: UNAVAILABLE: cannot reach hydrad at $T/none.sock: " \
    -- --socket "$T/none.sock" list
HYDRA_SOCKET=$T/env.sock expect_fail "\$HYDRA_SOCKET is the default socket" 1 "^hydractl: UNAVAILABLE: cannot reach hydrad at $T/env.sock" \
    -- status isolated < /dev/null
touch "$T/not-a-socket"
expect_fail "a file that is not a socket" 1 "^hydractl: UNAVAILABLE: cannot reach hydrad at $T/not-a-socket: " \
    -- --socket "$T/not-a-socket" health
expect_fail "watch against no daemon" 1 "^hydractl: UNAVAILABLE: " -- --socket "$T/none.sock" watch
$PY -c 'import socket,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$T/stale.sock"
expect_fail "a stale socket (nobody listening)" 1 "^hydractl: UNAVAILABLE: cannot reach hydrad at $T/stale.sock: Connection refused" \
    -- --socket "$T/stale.sock" start isolated

echo "$PASS passed, $FAIL failed"
[ $FAIL -eq 0 ]
