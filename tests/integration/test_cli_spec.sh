#!/bin/bash
# hydractl without a daemon: the spec file format (through the hidden `hydractl spec-dump`, which prints the
# hydra.v1.VmSpec that `register` would send, as JSON), `--from-env` (start-vm.sh's variables and the presets of
# its wrappers), secrets, the exit codes of bad usage (2) and of an unreachable daemon (1, "hydractl: UNAVAILABLE:
# ..."). Only needs $HYDRACTL (set by ctest). With $HYDRA_PYTHONPATH and python3-grpcio, also start's progress and
# --wait ready, status (readiness, sockets, next restart), list, plan, watch (readiness and lost events), logs,
# console and register's password hash against a scripted fake hydrad.
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
    # The pair a user copies (README, "Kubernetes: the nelly RuntimeClass").
    expect_value "packaging/host.ini parses: k3s, diod and crismux" True software.k3s_diod \
        -- spec-dump --spec "$HYDRA_SOURCE_DIR/packaging/host.ini"
    expect_value "packaging/isolated.ini parses: it starts after the host VM" host supervision.start_after \
        -- spec-dump --spec "$HYDRA_SOURCE_DIR/packaging/isolated.ini"
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
expect_fail "start --wait ready is accepted (then the call fails: no daemon)" 1 "^hydractl: UNAVAILABLE: " \
    -- --socket "$T/none.sock" start isolated --wait ready
expect_fail "start --wait bogus" 2 "start: --wait: 'bogus' is not one of: running, ready" -- start isolated --wait bogus
expect_fail "start --wait without a value" 2 "option '--wait' needs a value" -- start isolated --wait
expect_fail "logs needs ROLE" 2 "logs: missing ROLE" -- logs
expect_fail "logs --tail 0" 2 "logs: --tail: '0' is not a number of bytes" -- logs isolated --tail 0
expect_fail "logs --tail lots" 2 "logs: --tail: 'lots' is not a number of bytes" -- logs isolated --tail lots
expect_fail "logs -x" 2 "logs: unknown option '-x'" -- logs isolated -x
expect_fail "console needs ROLE" 2 "console: missing ROLE" -- console
expect_fail "console --linger -2" 2 "console: --linger: '-2' is not a number of seconds" -- console isolated --linger -2
expect_fail "logs against no daemon" 1 "^hydractl: UNAVAILABLE: " -- --socket "$T/none.sock" logs isolated
expect_fail "console against no daemon" 1 "^hydractl: UNAVAILABLE: " -- --socket "$T/none.sock" console isolated
expect_fail "stop --timeout 0" 2 "--timeout: '0' is not a whole number of seconds" -- stop isolated --timeout 0
expect_fail "stop --timeout -5" 2 "--timeout: '-5' is not a whole number" -- stop isolated --timeout -5
expect_fail "unknown command option" 2 "stop: unknown option '--frce'.*hydractl stop --help" -- stop isolated --frce
expect_fail "list takes no argument" 2 "list: unexpected argument 'isolated'" -- list isolated
expect_fail "plan needs ROLE" 2 "plan: missing ROLE" -- plan
if "$HYDRACTL" --help | grep -q "register ROLE --spec FILE"; then ok "--help"; else not_ok "--help"; fi
if "$HYDRACTL" register --help | grep -q -- "--from-env"; then ok "register --help names --from-env"; else
    not_ok "register --help names --from-env"; fi
if "$HYDRACTL" start --help | grep -q -- "--wait running" && "$HYDRACTL" start --help | grep -q -- "--wait ready"; then
    ok "start --help"; else not_ok "start --help"; fi
if "$HYDRACTL" --help | grep -q "logs ROLE \[-f|--follow\] \[--tail BYTES\]" &&
    "$HYDRACTL" --help | grep -q "Attach to the serial console (Ctrl-\] detaches)"; then ok "--help lists logs and console"; else
    not_ok "--help lists logs and console"; fi

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


# --- every key of every section, round-tripped through spec-dump ---
mkdir -p "$T/full/fw"
printf 'ssh-ed25519 AAAAC3NzaKEY1 one@host\n# a comment\n\nssh-rsa AAAAB3NzaKEY2 two@host\n' >"$T/full/keys.pub"
cat >"$T/full/full.ini" <<'INI'
[vm]
cpus = 4
memory = 2G
disk_size = 3G

[firmware]
code = fw/OVMF_CODE.fd
vars = /usr/share/OVMF/OVMF_VARS.fd

[image]
url = https://cloud.debian.org/images/cloud/trixie/latest/debian-13-generic-amd64.qcow2
checksum = sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF
sums_url = https://cloud.debian.org/images/cloud/trixie/latest/SHA512SUMS
user = imageuser
password = image-password-XYZZY
token = image-token-XYZZY
token_header = X-Image-Token
keep_pristine = yes
reuse_disk_on_change = on

[bare]
url = file:///srv/artifacts/rimdworkspace.tar.gz
checksum = sha512:00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
sums_url = http://artifacts.example/SHA256SUMS
user = bareuser
password = bare-password-XYZZY
token = bare-token-XYZZY
token_header = PRIVATE-TOKEN
dir = rimdworkspace_Q2_2026_1
kernel = Image.gz
kernel_version = -6.16
initrd = initramfs.linux_arm64.cpio
rootfs = something.qcow2
encrypted_tools = TRUE
cmdline = ENABLE_SSH=true quiet

[guest]
username = alice
password = guest password XYZZY
hostname = hydra-isolated.example
ssh_authorized_key = ssh-ed25519 AAAAinline inline@host
ssh_key_file = keys.pub

[software]
containerd_proxy = false
csi_grpc_proxy_url = https://example.com/csi-grpc-proxy-linux-
k3s_diod = 1
k3s_version = v1.30.0+k3s1
kernel_package = linux-image-6.12.0-1-amd64
extra_deb = https://example.com/a.deb
extra_deb = https://example.com/b.deb
reboot_after_install = true
package_update = yes
package_upgrade = no
sandbox_image = registry.example.org/pause:3.9
sandbox_image_url = http://10.0.2.2:8080/pause.tar
crismux_url = http://10.0.2.2:8080/crismux
crismux_sha256 = 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

[network]
forward = 2222:22
guest_ip = 10.0.2.16
gateway = 10.0.2.1
dns = 1.1.1.1
prefix_len = 16
mac = 52:54:00:12:34:56

[shares]
kubelet = tcp
kubelet_host_dir = k3s-var
diod_port = 30565
share = data:/mnt/data
share = /srv/x:/mnt/x

[devices]
vsock = true
vsock_cid = 7
gpu = true
gpu_vram = 8G
shmem = ivshmem
shmem_size = 2048M
shmem_path = /dev/shm/hydra

[supervision]
restart = on-failure
max_restarts = 7
restart_window = 15m
autostart = true
stop_timeout = 90
probe = console
probe_pattern = ^hydra login: *$
ready_timeout = 5m
INI
chmod 600 "$T/full/full.ini"
if FULL=$("$HYDRACTL" spec-dump --spec "$T/full/full.ini" 2>"$T/err"); then ok "a spec with every key parses"; else
    not_ok "a spec with every key parses: $(cat "$T/err")"; FULL='{}'; fi
if [ -s "$T/err" ]; then not_ok "a mode-0600 spec with secrets: no warning ($(cat "$T/err"))"; else
    ok "a mode-0600 spec with secrets: no warning"; fi
while IFS='|' read -r path expected; do
    [ -n "$path" ] || continue
    got=$(json "$path" <<<"$FULL")
    if [ "$got" = "$expected" ]; then ok "round trip: $path"; else
        not_ok "round trip: $path (expected '$expected', got '$got')"; fi
done <<EOF
cpus|4
memory_mib|2048
disk_size_gib|3
firmware.code|$T/full/fw/OVMF_CODE.fd
firmware.vars|/usr/share/OVMF/OVMF_VARS.fd
image.url|https://cloud.debian.org/images/cloud/trixie/latest/debian-13-generic-amd64.qcow2
image.checksum|sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF
image.sums_url|https://cloud.debian.org/images/cloud/trixie/latest/SHA512SUMS
image.user|imageuser
image.password|(set)
image.token|(set)
image.token_header|X-Image-Token
keep_pristine|True
reuse_disk_on_change|True
bare.artifact.url|file:///srv/artifacts/rimdworkspace.tar.gz
bare.artifact.checksum|sha512:00000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000
bare.artifact.sums_url|http://artifacts.example/SHA256SUMS
bare.artifact.user|bareuser
bare.artifact.password|(set)
bare.artifact.token|(set)
bare.artifact.token_header|PRIVATE-TOKEN
bare.dir|rimdworkspace_Q2_2026_1
bare.kernel|Image.gz
bare.kernel_version|-6.16
bare.initrd|initramfs.linux_arm64.cpio
bare.rootfs|something.qcow2
bare.encrypted_tools|True
kernel.cmdline|ENABLE_SSH=true quiet
kernel.kernel|null
guest.username|alice
guest.password|null
guest.hostname|hydra-isolated.example
guest.ssh_authorized_keys|["ssh-ed25519 AAAAinline inline@host", "ssh-ed25519 AAAAC3NzaKEY1 one@host", "ssh-rsa AAAAB3NzaKEY2 two@host"]
software.disable_containerd_proxy|True
software.csi_grpc_proxy_url|https://example.com/csi-grpc-proxy-linux-
software.k3s_diod|True
software.k3s_version|v1.30.0+k3s1
software.kernel_package|linux-image-6.12.0-1-amd64
software.extra_debs|["https://example.com/a.deb", "https://example.com/b.deb"]
software.reboot_after_install|True
software.package_update|True
software.package_upgrade|False
software.sandbox_image|registry.example.org/pause:3.9
software.sandbox_image_url|http://10.0.2.2:8080/pause.tar
software.crismux_url|http://10.0.2.2:8080/crismux
software.crismux_sha256|9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
forwards.0.host_port|2222
network.guest_ip|10.0.2.16
network.gateway|10.0.2.1
network.dns|1.1.1.1
network.prefix_len|16
network.mac|52:54:00:12:34:56
shares.kubelet|tcp
shares.kubelet_host_dir|$T/full/k3s-var
shares.diod_port|30565
shares.extra|[{"host_path": "$T/full/data", "guest_path": "/mnt/data"}, {"host_path": "/srv/x", "guest_path": "/mnt/x"}]
devices.vsock|True
devices.vsock_cid|7
devices.gpu|True
devices.gpu_vram_gib|8
devices.shmem|ivshmem
devices.shmem_size_gib|2
devices.shmem_path|/dev/shm/hydra
supervision.restart|on-failure
supervision.max_restarts|7
supervision.restart_window|900
supervision.autostart|True
supervision.stop_timeout|90
supervision.probe|console
supervision.probe_pattern|^hydra login: *$
supervision.probe_port|0
supervision.ready_timeout|300
EOF
HASH=$(json guest.password_hash <<<"$FULL")
if [[ $HASH == '$y$'* ]] && $PY -W ignore -c 'import crypt,sys; sys.exit(crypt.crypt(sys.argv[1], sys.argv[2]) != sys.argv[2])' \
    "guest password XYZZY" "$HASH"; then ok "guest.password is sent as a yescrypt hash of it"; else
    not_ok "guest.password is sent as a yescrypt hash of it ($HASH)"; fi
if grep -q XYZZY <<<"$FULL"; then not_ok "spec-dump shows no secret"; else ok "spec-dump shows no secret"; fi
H2=$("$HYDRACTL" spec-dump --spec "$T/full/full.ini" | json guest.password_hash)
if [ "$H2" != "$HASH" ]; then ok "spec-dump salts anew each time"; else not_ok "spec-dump salts anew each time"; fi
expect_value "containerd_proxy = yes: not disabled" False software.disable_containerd_proxy \
    -- spec-dump --set software.containerd_proxy=yes --set software.k3s_diod=yes
expect_value "shares.kubelet = none" none shares.kubelet -- spec-dump --set shares.kubelet=none
expect_value "shmem nvdimm" nvdimm devices.shmem -- spec-dump --set devices.shmem=nvdimm
expect_value "disk_size: a plain number is GiB" 25 disk_size_gib -- spec-dump --set vm.disk_size=25
expect_value "disk_size 1T" 1024 disk_size_gib -- spec-dump --set vm.disk_size=1T
expect_value "--set extra_deb= clears the list" "[]" software.extra_debs \
    -- spec-dump --spec "$T/full/full.ini" --set software.extra_deb= --set software.k3s_diod=0
expect_value "--set guest.ssh_authorized_key= clears the keys" "[]" guest.ssh_authorized_keys \
    -- spec-dump --spec "$T/full/full.ini" --set guest.ssh_authorized_key=
expect_value "sections whose keys were all reset are not sent" null devices \
    -- spec-dump --set devices.gpu=true --set devices.gpu=
expect_value "password_hash given as is" '$6$salt$abc' guest.password_hash -- spec-dump --set 'guest.password_hash=$6$salt$abc'

# [supervision]: every value of the enums, durations with units, --set.
for v in no on-failure always; do
    expect_value "supervision.restart = $v" "$v" supervision.restart -- spec-dump --set "supervision.restart=$v" \
        --set supervision.autostart=yes
done
for v in console tcp containerd none; do
    expect_value "supervision.probe = $v" "$v" supervision.probe -- spec-dump --set "supervision.probe=$v" \
        --set supervision.autostart=yes
done
for pair in 600:600 45s:45 10m:600 2h:7200 7d:604800; do
    expect_value "supervision.restart_window ${pair%%:*}" "${pair#*:}" supervision.restart_window \
        -- spec-dump --set "supervision.restart_window=${pair%%:*}"
done
expect_value "supervision.stop_timeout 1h" 3600 supervision.stop_timeout -- spec-dump --set supervision.stop_timeout=1h
expect_value "supervision.ready_timeout 1d" 86400 supervision.ready_timeout -- spec-dump --set supervision.ready_timeout=1d
expect_value "supervision.max_restarts 1000" 1000 supervision.max_restarts -- spec-dump --set supervision.max_restarts=1000
expect_value "supervision.probe_port" 35000 supervision.probe_port \
    -- spec-dump --set supervision.probe=containerd --set supervision.probe_port=35000
expect_value "supervision.autostart = no and nothing else: no [supervision] sent" null supervision \
    -- spec-dump --set supervision.autostart=no
expect_value "supervision.restart = no and nothing else: no [supervision] sent" null supervision \
    -- spec-dump --set supervision.restart=no
expect_value "--set supervision.restart= resets it" null supervision \
    -- spec-dump --set supervision.restart=always --set supervision.restart=
expect_value "a [supervision] key set: the others are their defaults" '{"restart": "always", "max_restarts": 0, "restart_window": 0, "autostart": false, "stop_timeout": 0, "probe": "console", "probe_pattern": null, "probe_port": 0, "ready_timeout": 0, "start_after": null}' \
    supervision -- spec-dump --set supervision.restart=always
expect_fail "--set supervision.restart=sometimes" 2 \
    "^hydractl: --set 'supervision.restart=sometimes': supervision.restart: 'sometimes' is not a restart policy \(allowed: no, on-failure, always\)$" \
    -- spec-dump --set supervision.restart=sometimes
expect_fail "--set supervision.retries" 2 \
    "^hydractl: --set 'supervision.retries=3': unknown key 'retries' in \[supervision\] \(known: restart, max_restarts, restart_window, autostart, stop_timeout, probe, probe_pattern, probe_port, ready_timeout, start_after\)$" \
    -- spec-dump --set supervision.retries=3
printf '[supervision]\nrestart = always\nrestart = no\n' >"$BAD"
expect_fail "supervision.restart set twice" 2 "^hydractl: $BAD:3: supervision.restart: already set on line 2" -- spec-dump --spec "$BAD"
printf '[supervisor]\nrestart = always\n' >"$BAD"
expect_fail "[supervisor]: the known sections include supervision" 2 "^hydractl: $BAD:2: unknown section \[supervisor\] \(known: .*devices, supervision, resources\)" \
    -- spec-dump --spec "$BAD"
# [resources] (issue 13): systemd's CPUQuota= and MemoryMax= for QEMU's scope, as the API's numbers.
expect_value "resources.cpu_quota 150%" 150 resources.cpu_quota_percent -- spec-dump --set resources.cpu_quota=150%
expect_value "resources.memory_max 3G is bytes" 3221225472 resources.memory_max_bytes -- spec-dump --set resources.memory_max=3G
expect_value "resources.memory_max without a unit is bytes (as MemoryMax=)" 1610612736 resources.memory_max_bytes \
    -- spec-dump --set resources.memory_max=1610612736
expect_value "no [resources] key: none sent" null resources -- spec-dump --set vm.cpus=2

# --- bad values: FILE:LINE, the key, the value, what is allowed ---
while IFS='|' read -r section key value regex; do
    [ -n "$section" ] || continue
    printf '# line 1\n[%s]\n%s = %s\n' "$section" "$key" "$value" >"$BAD"
    expect_fail "bad $section.$key '$value'" 2 "^hydractl: $BAD:3: $section\\.$key: $regex" -- spec-dump --spec "$BAD"
done <<'EOF'
vm|disk_size|1500M|'1500M' is not a whole number of GiB
vm|disk_size|lots|'lots' is not a size
vm|arch|riscv64|'riscv64' is not an architecture \(allowed: x86_64, aarch64\)
vm|machine|pc q35|'pc q35' is not one word
image|url|ftp://example.com/x.qcow2|'ftp://example.com/x.qcow2' is not a URL \(allowed: http
image|url|https://|'https://' is not a URL
image|checksum|sha256:1234|'sha256:1234' is not a checksum \(allowed: sha256:64 hex digits
image|checksum|md5:d41d8cd98f00b204e9800998ecf8427e|'md5:d41d8cd98f00b204e9800998ecf8427e' is not a checksum
image|sums_url|SHA512SUMS|'SHA512SUMS' is not a URL
image|token_header|Private Token|'Private Token' is not an HTTP header name
image|keep_pristine|maybe|'maybe' is not a boolean \(allowed: true, false, yes, no, on, off, 1, 0\)
image|reuse_disk_on_change|2|'2' is not a boolean
bare|url|rimd.tar.gz|'rimd.tar.gz' is not a URL
bare|encrypted_tools|enabled|'enabled' is not a boolean
bare|kernel|../Image.gz|'../Image.gz' is not a name inside the archive
bare|rootfs|/abs/rootfs.qcow2|'/abs/rootfs.qcow2' is not a name inside the archive
bare|kernel_version|-6 16|'-6 16' is not one word
guest|username|Alice|'Alice' is not a valid user name \(allowed: up to 32 of a-z
guest|hostname|my_vm|'my_vm' contains '_' \(allowed: letters, digits, '-' and '.'\)
guest|hostname|-vm|'-vm' has a label starting or ending with '-'
guest|hostname|vm-|'vm-' has a label starting or ending with '-'
guest|password_hash|hailhydra|not a crypt\(3\) hash
guest|ssh_authorized_key|AAAAC3Nza|'AAAAC3Nza' is not an OpenSSH public key
software|containerd_proxy|sometimes|'sometimes' is not a boolean
software|k3s_diod|y|'y' is not a boolean
software|package_update|sometimes|'sometimes' is not a boolean \(allowed: true, false, yes, no, on, off, 1, 0\)
software|package_upgrade|2|'2' is not a boolean
software|sandbox_image|pause"x|'pause.+x' contains '"' \(allowed: an image reference
software|sandbox_image|-pause|'-pause' is not an image reference
software|sandbox_image_url|file:///p.tar|'file:///p.tar' has an unsupported scheme \(allowed: http://, https://\)
software|crismux_url|http://x/cris mux|'http://x/cris mux' contains a space
software|crismux_sha256|abc|'abc' is not a SHA-256 digest \(allowed: 64 hex digits\)
software|kernel_package|Linux-Image|'Linux-Image' is not a Debian package name
software|extra_deb|/tmp/x.deb|'/tmp/x.deb' has an unsupported scheme \(allowed: http://, https://\)
software|csi_grpc_proxy_url|github.com/x|'github.com/x' has an unsupported scheme
software|k3s_version|v1.32 k3s1|'v1.32 k3s1' contains a space \(allowed: a k3s release
software|extra_deb|http://x/a.deb#}]|'http://x/a.deb#REDACTED' contains '}' \(allowed: an http:// or https:// URL
software|k3s_version|-rc1|'-rc1' is not a k3s release
network|guest_ip|10.0.2|'10.0.2' is not an IPv4 address
network|gateway|10.0.2.256|'10.0.2.256' is not an IPv4 address
network|dns|dns.example|'dns.example' is not an IPv4 address
network|prefix_len|33|'33' is not a prefix length \(allowed: 1-30\)
network|prefix_len|0|'0' is not a prefix length
network|mac|52:54:00:12:34|'52:54:00:12:34' is not a unicast MAC address
network|mac|01:00:5e:00:00:01|'01:00:5e:00:00:01' is not a unicast MAC address
shares|kubelet|9p|'9p' is not a way to share the kubelet directories \(allowed: virtio, tcp, none\)
shares|diod_port|70000|'70000' is not a port \(allowed: 1-65535\)
shares|share|/srv/data|'/srv/data' is not HOST_PATH:GUEST_PATH
shares|share|/srv/data:mnt|'mnt' is not an absolute path below /
shares|share|/srv/data:/mnt/a=b|'/mnt/a=b' contains '='
shares|share|/srv/data:/mnt/100%|'/mnt/100%' contains '%'
devices|vsock|please|'please' is not a boolean
devices|vsock_cid|2|'2' is not a guest CID \(allowed: 3-4294967294\)
devices|gpu_vram|512M|'512M' is not a whole number of GiB
devices|shmem|dax|'dax' is not a shared memory type \(allowed: none, nvdimm, ivshmem\)
devices|shmem_size|1.5G|'1.5G' is not a size
supervision|restart|on-crash|'on-crash' is not a restart policy \(allowed: no, on-failure, always\)
supervision|restart|On-Failure|'On-Failure' is not a restart policy
supervision|max_restarts|0|'0' is not a number of restarts \(allowed: 1-1000\)
supervision|max_restarts|1001|'1001' is not a number of restarts \(allowed: 1-1000\)
supervision|max_restarts|five|'five' is not a number of restarts
supervision|restart_window|0|'0' is not a duration \(allowed: 1-604800 seconds
supervision|restart_window|8d|'8d' is not a duration \(allowed: 1-604800 seconds
supervision|restart_window|10 m|'10 m' is not a duration
supervision|restart_window|1.5h|'1.5h' is not a duration
supervision|restart_window|10x|'10x' is not a duration
supervision|autostart|sometimes|'sometimes' is not a boolean \(allowed: true, false, yes, no, on, off, 1, 0\)
supervision|stop_timeout|2h|'2h' is not a duration \(allowed: 1-3600 seconds
supervision|stop_timeout|-5|'-5' is not a duration
supervision|probe|ssh|'ssh' is not a readiness probe \(allowed: console, tcp, containerd, none\)
supervision|probe_pattern|login: (|'login: \(' is not a POSIX extended regular expression
supervision|probe_port|0|'0' is not a port \(allowed: 1-65535\)
supervision|probe_port|65536|'65536' is not a port \(allowed: 1-65535\)
supervision|ready_timeout|0|'0' is not a duration \(allowed: 1-86400 seconds
supervision|ready_timeout|2d|'2d' is not a duration \(allowed: 1-86400 seconds
resources|cpu_quota|150|'150' is not a CPU quota \(expected a percentage of one CPU's time, as systemd's CPUQuota=, e.g. 150%\)
resources|cpu_quota|1.5|'1.5' is not a CPU quota
resources|cpu_quota|0%|'0%' is out of range \(allowed: 1%-25500%
resources|cpu_quota|25501%|'25501%' is out of range \(allowed: 1%-25500%
resources|memory_max|0|'0' is out of range \(allowed: more than 0
resources|memory_max|1.5G|'1.5G' is not a size \(expected bytes, or a number with a K, M, G or T suffix, e.g. 3G\)
resources|memory_max|lots|'lots' is not a size
EOF
printf '[kernel]\ncmdline = a\n[bare]\ncmdline = b\n' >"$BAD"
expect_fail "[kernel] cmdline and [bare] cmdline are one field" 2 \
    "^hydractl: $BAD:4: bare.cmdline: already set on line 2 \\(as kernel.cmdline" -- spec-dump --spec "$BAD"
printf '[guest]\nssh_key_file = no-such.pub\n' >"$BAD"
expect_fail "ssh_key_file that does not exist" 2 "^hydractl: $BAD:2: guest.ssh_key_file: cannot read '$T/no-such.pub'" \
    -- spec-dump --spec "$BAD"
printf 'not a key\n' >"$T/notakey.pub"
printf '[guest]\nssh_key_file = notakey.pub\n' >"$BAD"
expect_fail "ssh_key_file that holds no key" 2 "^hydractl: $BAD:2: guest.ssh_key_file: '$T/notakey.pub' is not an OpenSSH public key file" \
    -- spec-dump --spec "$BAD"
printf '[guest]\npassword = x\npassword_hash = $6$a$b\n' >"$BAD"
chmod 600 "$BAD"
expect_fail "password and password_hash together" 2 "^hydractl: $BAD: guest.password and guest.password_hash are both set" \
    -- spec-dump --spec "$BAD"
expect_fail "--set value with a newline" 2 "kernel.cmdline: 'quiet\\\\nrw' holds a control character" \
    -- spec-dump --set "kernel.cmdline=quiet
rw"

# --- what the file cannot carry: NUL bytes, invalid UTF-8; 0 for cpus/memory (the default on the wire) ---
printf '[vm]\ncpus = 1\n[guest]\nhostname = a\0b\n' >"$BAD"
expect_fail "a NUL byte in a value names file:line and the key" 2 "^hydractl: $BAD:4: guest.hostname: the value holds a NUL byte" \
    -- spec-dump --spec "$BAD"
printf '[guest]\npassword = sec\0ret' >"$BAD"
chmod 600 "$BAD"
expect_fail "a NUL byte in a password (last line, no newline): named, never shown" 2 \
    "^hydractl: $BAD:2: guest.password: the value holds a NUL byte$" -- spec-dump --spec "$BAD"
printf '[vm]\n# a comment \0 with a NUL\ncpus = 1\n' >"$BAD"
expect_fail "a NUL byte in a comment" 2 "^hydractl: $BAD:2: the line holds a NUL byte" -- spec-dump --spec "$BAD"
printf '[vm]\ncpus = 1\n[gu\0est]\n' >"$BAD"
expect_fail "a NUL byte in a section header" 2 "^hydractl: $BAD:3: the line holds a NUL byte" -- spec-dump --spec "$BAD"
printf '[vm]\ncpus = 1\n[guest]\nhostname = caf\xe9\n' >"$BAD"
expect_fail "invalid UTF-8 (Latin-1) names file:line and the key" 2 "^hydractl: $BAD:4: guest.hostname: the value is not valid UTF-8$" \
    -- spec-dump --spec "$BAD"
printf '[kernel]\ncmdline = quiet \xed\xa0\x80\n' >"$BAD"
expect_fail "a UTF-8-encoded surrogate is refused" 2 "^hydractl: $BAD:2: kernel.cmdline: the value is not valid UTF-8$" \
    -- spec-dump --spec "$BAD"
printf '[kernel]\ncmdline = quiet \xc0\xaf\n' >"$BAD"
expect_fail "an overlong UTF-8 form is refused" 2 "^hydractl: $BAD:2: kernel.cmdline: the value is not valid UTF-8$" \
    -- spec-dump --spec "$BAD"
expect_value "valid UTF-8 is kept" "console=ttyS0 été" kernel.cmdline -- spec-dump --set "kernel.cmdline=console=ttyS0 été"
printf '[vm]\ncpus = 0\n' >"$BAD"
expect_fail "cpus = 0 refused (it would silently mean the default)" 2 "^hydractl: $BAD:2: vm.cpus: '0' is out of range \(allowed: 1-255\)" \
    -- spec-dump --spec "$BAD"
expect_fail "cpus = 256 refused" 2 "vm.cpus: '256' is out of range \(allowed: 1-255\)" -- spec-dump --set vm.cpus=256
expect_value "cpus = 255 accepted" 255 cpus -- spec-dump --set vm.cpus=255
printf '[vm]\nmemory = 0\n' >"$BAD"
expect_fail "memory = 0 refused" 2 "^hydractl: $BAD:2: vm.memory: '0' is out of range \(allowed: at least 64M" \
    -- spec-dump --spec "$BAD"
expect_fail "memory = 0G refused" 2 "vm.memory: '0G' is out of range" -- spec-dump --set vm.memory=0G
$PY -c 'import sys; open(sys.argv[1], "w").write("[guest]\npassword = " + "p" * 512 + "\n")' "$BAD"
expect_fail "a 512-byte password: exit 2 naming the limit (no daemon needed)" 2 \
    "^hydractl: $BAD:2: guest.password: the password is longer than 511 bytes$" \
    -- --socket "$T/none.sock" register isolated --spec "$BAD"
$PY -c 'import sys; open(sys.argv[1], "w").write("[guest]\npassword = " + "p" * 511 + "\n")' "$BAD"
expect_fail "a 511-byte password is taken (then the call fails: no daemon)" 1 "^hydractl: UNAVAILABLE: " \
    -- --socket "$T/none.sock" register isolated --spec "$BAD"
LONG_SOCK=$T/$(printf 's%.0s' $(seq 1 120)).sock
expect_fail "a --socket path over 107 bytes: exit 2, too long" 2 \
    "^hydractl: socket path '$LONG_SOCK' is too long \(${#LONG_SOCK} bytes, the limit is 107\)" -- --socket "$LONG_SOCK" list
HYDRA_SOCKET=$LONG_SOCK expect_fail "\$HYDRA_SOCKET over 107 bytes: the same" 2 "socket path '$LONG_SOCK' is too long" -- list

# --- secrets: never on the command line, never shown; a readable file gets a warning ---
for key in image.password image.token bare.password bare.token guest.password; do
    expect_fail "--set $key refused" 2 "^hydractl: --set $key: secrets are not accepted on the command line: put them in the spec file \\(mode 0600\\) or use --from-env$" \
        -- spec-dump --set "$key=TOPSECRET"
    if grep -q TOPSECRET "$T/err"; then not_ok "--set $key: the value is not echoed"; else
        ok "--set $key: the value is not echoed"; fi
done
expect_fail "register refuses a secret in --set before calling hydrad" 2 "secrets are not accepted" \
    -- --socket "$T/none.sock" register isolated --spec "$SPEC" --set bare.token=TOPSECRET
printf '[bare]\nurl = https://example.com/a.tar.gz\ntoken = TOPSECRET\n' >"$T/secret.ini"
chmod 644 "$T/secret.ini"
"$HYDRACTL" spec-dump --spec "$T/secret.ini" >"$T/out" 2>"$T/err" || true
if grep -q "^hydractl: warning: $T/secret.ini holds secrets (bare.token) but other users may read it (mode 0644): chmod 600" "$T/err"; then
    ok "a world-readable spec with a secret: warning"; else not_ok "a world-readable spec with a secret: warning ($(cat "$T/err"))"; fi
if grep -q TOPSECRET "$T/out" "$T/err"; then not_ok "the token is not printed"; else ok "the token is not printed"; fi
chmod 600 "$T/secret.ini"
"$HYDRACTL" spec-dump --spec "$T/secret.ini" >"$T/out" 2>"$T/err" || true
if [ -s "$T/err" ]; then not_ok "mode 0600: no warning ($(cat "$T/err"))"; else ok "mode 0600: no warning"; fi

# --- --from-env: start-vm.sh's variables, with its defaults and its wrappers' presets ---
ARCH_M=$(uname -m)
case $ARCH_M in x86_64) DEBARCH=amd64 ;; aarch64) DEBARCH=arm64 ;; *) DEBARCH=$ARCH_M ;; esac
FAKEBIN=$T/fakebin
mkdir -p "$FAKEBIN" "$T/home"
# The firmware default depends on QEMU's version, as in the script: a fake qemu-system-ARCH says which.
fake_qemu() {
    printf '#!/bin/sh\necho "QEMU emulator version %s (fake)"\necho "Copyright (c) 2003-2024 Fabrice Bellard"\n' "$1" \
        >"$FAKEBIN/qemu-system-$ARCH_M"
    chmod +x "$FAKEBIN/qemu-system-$ARCH_M"
}
fake_qemu 9.2.0
# fromenv PRESET [VAR=VALUE]... : spec-dump --from-env in a clean environment; stdout the JSON, stderr to $T/err.
fromenv() {
    local preset=$1
    shift
    env -i PATH="$FAKEBIN:/usr/bin:/bin" HOME="$T/home" USER=tester "$@" \
        "$HYDRACTL" spec-dump --from-env ${preset:+--preset "$preset"} 2>"$T/err"
}
# env_value DESC EXPECTED PATH PRESET [VAR=VALUE]...
env_value() {
    local desc=$1 expected=$2 path=$3 preset=$4 out got
    shift 4
    if ! out=$(fromenv "$preset" "$@"); then
        not_ok "$desc (exit $?: $(cat "$T/err"))"
        return
    fi
    got=$(json "$path" <<<"$out")
    if [ "$got" = "$expected" ]; then ok "$desc"; else not_ok "$desc (expected '$expected', got '$got')"; fi
}
# env_fail DESC CODE STDERR-REGEX PRESET [VAR=VALUE]...
env_fail() {
    local desc=$1 code=$2 regex=$3 preset=$4 rc=0
    shift 4
    fromenv "$preset" "$@" >"$T/out" || rc=$?
    if [ $rc -ne "$code" ]; then not_ok "$desc (exit $rc, expected $code; stderr: $(cat "$T/err"))"
    elif ! grep -Eq -- "$regex" "$T/err"; then not_ok "$desc (stderr does not match '$regex': $(cat "$T/err"))"
    elif [ -s "$T/out" ]; then not_ok "$desc (unexpected output)"
    else ok "$desc"; fi
}

DEFAULT_HASH=$(openssl passwd -6 -salt 123456 hailhydra)
if [ "$(id -u)" = 0 ]; then K3S_DIR=null; else K3S_DIR=$PWD/k3s-var; fi
# compare_preset PRESET EXPECTED-PYTHON-DICT: the whole spec, field by field.
compare_preset() {
    local preset=$1 expected=$2 out
    if ! out=$(fromenv "$preset"); then not_ok "--from-env --preset $preset (exit $?: $(cat "$T/err"))"; return; fi
    if $PY - "$expected" "$out" <<'PYEOF'; then ok "--from-env --preset $preset: the whole spec"; else not_ok "--from-env --preset $preset: the whole spec"; fi
import json, sys
expected, got = eval(sys.argv[1]), json.loads(sys.argv[2])
bad = [(k, expected.get(k), got.get(k)) for k in sorted(set(expected) | set(got)) if expected.get(k) != got.get(k)]
for k, e, g in bad:
    print(f"#   {k}: expected {json.dumps(e)}\n#   {' ' * len(k)}  got      {json.dumps(g)}")
sys.exit(1 if bad else 0)
PYEOF
}
COMMON="
def fw(h, g): return {'host_addr': '127.0.0.1', 'host_port': h, 'guest_port': g, 'protocol': 'tcp'}
null, true, false = None, True, False
image = {'url': 'https://cloud.debian.org/images/cloud/trixie/20250814-2204/debian-13-generic-$DEBARCH-20250814-2204.qcow2',
         'checksum': None, 'sums_url': 'https://cloud.debian.org/images/cloud/trixie/20250814-2204/SHA512SUMS',
         'user': None, 'password': None, 'token': None, 'token_header': None}
software = {'disable_containerd_proxy': False,
            'csi_grpc_proxy_url': 'https://github.com/democratic-csi/csi-grpc-proxy/releases/download/v0.5.6/csi-grpc-proxy-v0.5.6-linux-',
            'k3s_diod': False, 'k3s_version': 'v1.32.6+k3s1', 'kernel_package': None, 'extra_debs': [],
            'reboot_after_install': False, 'package_update': True, 'package_upgrade': True,
            'sandbox_image': None, 'sandbox_image_url': None, 'crismux_url': None, 'crismux_sha256': None}
network = {'guest_ip': '10.0.2.15', 'gateway': '10.0.2.2', 'dns': '10.0.2.3', 'prefix_len': 24, 'mac': None}
base = {'cpus': 2, 'memory_mib': 8192, 'accel': 'auto', 'arch': '$ARCH_M', 'machine': None, 'cpu_model': None,
        'kernel': None, 'disk': None, 'firmware': None, 'keep_pristine': False, 'reuse_disk_on_change': False,
        'bare': None, 'network': network, 'devices': None}
guest = lambda host: {'username': 'hailhydra', 'password': None, 'password_hash': '$DEFAULT_HASH', 'hostname': host,
                      'ssh_authorized_keys': []}
k3s_dir = None if '$K3S_DIR' == 'null' else '$K3S_DIR'
containerd_ready = {'restart': 'no', 'max_restarts': 0, 'restart_window': 0, 'autostart': False, 'stop_timeout': 0,
                    'probe': 'containerd', 'probe_pattern': None, 'probe_port': 0, 'ready_timeout': 0,
                    'start_after': None}
after_host = dict(containerd_ready, start_after='host')
"
# The common part has statements: exec'd, then the expected spec eval'd in its namespace.
compare_preset_exec() {
    local preset=$1 body=$2
    compare_preset "$preset" "(lambda ns: (exec(compile('''$COMMON''', 'c', 'exec'), ns), eval('''$body''', ns))[1])({})"
}
compare_preset_exec "" "dict(base, forwards=[fw(5555, 22), fw(35000, 35000)], disk_size_gib=3, image=image,
    guest=guest('hydravm'), software=software, supervision=containerd_ready,
    shares=None if k3s_dir is None else {'kubelet': 'virtio', 'kubelet_host_dir': k3s_dir, 'diod_port': 0, 'extra': []})"
compare_preset_exec isolated "dict(base,
    forwards=[fw(30800, 8000), fw(30801, 8001), fw(30802, 8002), fw(5556, 22), fw(35000, 35000)],
    disk_size_gib=16, image=image, guest=guest('hydra-isolated'), software=software, supervision=after_host,
    shares={'kubelet': 'tcp', 'kubelet_host_dir': k3s_dir, 'diod_port': 30564, 'extra': []})"
compare_preset_exec host "dict(base,
    forwards=[fw(6443, 6443), fw(30123, 30123), fw(31883, 31883), fw(30443, 443), fw(30080, 80), fw(30700, 30700),
              fw(30900, 30900), fw(5555, 22), fw(30564, 564)],
    disk_size_gib=25, keep_pristine=True, image=image, guest=guest('hydravm'),
    software=dict(software, disable_containerd_proxy=True, k3s_diod=True),
    shares={'kubelet': 'none', 'kubelet_host_dir': None, 'diod_port': 0, 'extra': []})"
compare_preset_exec isolated-bare "dict(base,
    forwards=[fw(30800, 8000), fw(30801, 8001), fw(30802, 8002), fw(5556, 22), fw(35000, 35000), fw(35001, 35001)],
    disk_size_gib=16, image=None, guest=None, software=None, supervision=after_host,
    bare={'artifact': {'url': 'https://gitlab.arm.com/api/v4/projects/10711/packages/generic/rimdworkspace/Q2_2026_1/rimdworkspace.tar.gz',
                       'checksum': None, 'sums_url': None, 'user': None, 'password': None, 'token': None,
                       'token_header': None},
          'dir': 'rimdworkspace_Q2_2026_1', 'kernel': 'Image.gz', 'kernel_version': '-6.16',
          'initrd': 'initramfs.linux_arm64.cpio', 'rootfs': 'something.qcow2', 'encrypted_tools': False},
    shares={'kubelet': 'tcp', 'kubelet_host_dir': k3s_dir, 'diod_port': 30564, 'extra': []})"
env_value "isolated-crypt: the artifact for the encrypted-image tools" True bare.encrypted_tools isolated-crypt
env_value "isolated-crypt: ... from the rimdworkspace artifact" rimdworkspace_Q2_2026_1 bare.dir isolated-crypt
env_value "isolated-crypt: still a cloud image" "https://cloud.debian.org/images/cloud/trixie/20250814-2204/debian-13-generic-$DEBARCH-20250814-2204.qcow2" \
    image.url isolated-crypt
env_value "isolated-crypt: kubelet shares none" none shares.kubelet isolated-crypt
env_value "the default password hash is openssl passwd -6 -salt 123456 hailhydra" "$DEFAULT_HASH" guest.password_hash isolated
env_value "the environment wins over the preset" other-host guest.hostname isolated VM_HOSTNAME=other-host
env_value "an empty variable takes the default, as := does" hydra-isolated guest.hostname isolated VM_HOSTNAME=

# The token: sent, never printed.
OUT=$(fromenv isolated-bare RIMD_ARTIFACT_URL_TOKEN=glpat-SUPERSECRET-42 RIMD_ARTIFACT_URL_USER=ci RIMD_ARTIFACT_URL_PASS=PASSWORD-SUPERSECRET-42) || true
if [ "$(json bare.artifact.token <<<"$OUT")" = "(set)" ]; then ok "RIMD_ARTIFACT_URL_TOKEN -> bare.artifact.token"; else
    not_ok "RIMD_ARTIFACT_URL_TOKEN -> bare.artifact.token ($OUT)"; fi
if [ "$(json bare.artifact.password <<<"$OUT")" = "(set)" ] && [ "$(json bare.artifact.user <<<"$OUT")" = ci ]; then
    ok "RIMD_ARTIFACT_URL_USER/PASS -> bare.artifact.user/password"; else not_ok "RIMD_ARTIFACT_URL_USER/PASS ($OUT)"; fi
if grep -q SUPERSECRET <<<"$OUT" || grep -q SUPERSECRET "$T/err"; then not_ok "spec-dump never prints the token or the password"; else
    ok "spec-dump never prints the token or the password"; fi
env_value "RIMD_ARTIFACT_URL_PASS without a user is ignored, as the script" null bare.artifact.password isolated-bare \
    RIMD_ARTIFACT_URL_PASS=x
if grep -q "RIMD_ARTIFACT_URL_PASS is ignored without RIMD_ARTIFACT_URL_USER" "$T/err"; then ok "... with a note"; else
    not_ok "... with a note ($(cat "$T/err"))"; fi

# Sizes, machine, accel.
env_value "KVM_CPU" 4 cpus "" KVM_CPU=4
env_value "DEFAULT_KVM_LINUX_CPU" 3 cpus "" DEFAULT_KVM_LINUX_CPU=3
env_value "KVM_MEMORY is GiB" 2048 memory_mib "" KVM_MEMORY=2
env_value "DEFAULT_KVM_LINUX_MEMORY is GiB" 4096 memory_mib "" DEFAULT_KVM_LINUX_MEMORY=4
env_value "DEFAULT_KVM_DISK_SIZE" 40 disk_size_gib "" DEFAULT_KVM_DISK_SIZE=40
env_value "KVM_MACHINE_TYPE" q35 machine "" KVM_MACHINE_TYPE=q35
env_value "KVM_CPU_TYPE" max cpu_model "" KVM_CPU_TYPE=max
env_value "HYDRA_ACCEL" tcg accel "" HYDRA_ACCEL=tcg
env_fail "HYDRA_ACCEL=xen" 2 "HYDRA_ACCEL: 'xen' is not an accelerator \(allowed: auto, kvm, tcg\)" "" HYDRA_ACCEL=xen
env_fail "KVM_CPU=two" 2 "KVM_CPU: 'two' is not a whole number" "" KVM_CPU=two
env_fail "RUN_BARE_KERNEL=yes" 2 "RUN_BARE_KERNEL: 'yes' is not a whole number" "" RUN_BARE_KERNEL=yes

# Firmware: v9 defaults (none) on QEMU >= 9, v7 (OVMF) before; a missing file is an error, as in the script.
touch "$T/OVMF_CODE.fd" "$T/OVMF_VARS.fd"
env_value "QEMU 9: no firmware by default" null firmware "" 
env_value "QEMU 9: DEFAULT_KVM_LINUX_v9_BIOS" "$T/OVMF_CODE.fd" firmware.code "" DEFAULT_KVM_LINUX_v9_BIOS="$T/OVMF_CODE.fd"
env_value "KVM_BIOS and KVM_BIOS_VAR" "$T/OVMF_VARS.fd" firmware.vars "" KVM_BIOS="$T/OVMF_CODE.fd" KVM_BIOS_VAR="$T/OVMF_VARS.fd"
env_fail "KVM_BIOS missing" 2 "KVM_BIOS: firmware '$T/nope.fd' not found" "" KVM_BIOS="$T/nope.fd"
fake_qemu 8.2.2
env_value "QEMU 8: DEFAULT_KVM_LINUX_v7_BIOS" "$T/OVMF_CODE.fd" firmware.code "" DEFAULT_KVM_LINUX_v7_BIOS="$T/OVMF_CODE.fd"
env_fail "QEMU 8: DEFAULT_KVM_LINUX_v7_BIOS missing" 2 "DEFAULT_KVM_LINUX_v7_BIOS: firmware '$T/nope.fd' not found" "" \
    DEFAULT_KVM_LINUX_v7_BIOS="$T/nope.fd"
env_fail "QEMU 8: DEFAULT_KVM_LINUX_v7_BIOS_VAR missing" 2 "DEFAULT_KVM_LINUX_v7_BIOS_VAR: firmware variables '$T/nope.fd' not found" "" \
    DEFAULT_KVM_LINUX_v7_BIOS="$T/OVMF_CODE.fd" DEFAULT_KVM_LINUX_v7_BIOS_VAR="$T/nope.fd"
fake_qemu 9.2.0

# Image and disk policy.
env_value "DEFAULT_IMAGE_SOURCE_URL + DEFAULT_IMAGE" https://mirror.example/img/debian.qcow2.xz image.url "" \
    DEFAULT_IMAGE_SOURCE_URL=https://mirror.example/img/ DEFAULT_IMAGE=debian.qcow2.xz
env_value "no SHA512SUMS off cloud.debian.org" null image.sums_url "" DEFAULT_IMAGE_SOURCE_URL=https://mirror.example/img
env_value "HYDRA_IMAGE_SUMS_URL" http://127.0.0.1:8080/SHA512SUMS image.sums_url "" \
    DEFAULT_IMAGE_SOURCE_URL=https://mirror.example/img HYDRA_IMAGE_SUMS_URL=http://127.0.0.1:8080/SHA512SUMS
env_value "HYDRA_IMAGE_CHECKSUM" "sha512:$(printf '%0128d' 0)" image.checksum "" \
    HYDRA_IMAGE_CHECKSUM="sha512:$(printf '%0128d' 0)"
env_value "HYDRA_IMAGE_CHECKSUM replaces cloud.debian.org's SHA512SUMS" null image.sums_url "" \
    HYDRA_IMAGE_CHECKSUM="sha512:$(printf '%0128d' 0)"
env_fail "HYDRA_IMAGE_CHECKSUM and HYDRA_IMAGE_SUMS_URL" 2 "HYDRA_IMAGE_CHECKSUM and HYDRA_IMAGE_SUMS_URL are both set" "" \
    HYDRA_IMAGE_CHECKSUM=sha256:00 HYDRA_IMAGE_SUMS_URL=http://127.0.0.1/SHA256SUMS
env_fail "HYDRA_IMAGE_SUMS_URL not a URL" 2 "HYDRA_IMAGE_SUMS_URL: 'ftp://x/SUMS' is not a URL" "" \
    HYDRA_IMAGE_SUMS_URL=ftp://x/SUMS
env_value "COPY_IMAGE_BACKUP" True keep_pristine "" COPY_IMAGE_BACKUP=1
env_value "ALWAYS_REUSE_DISK_IMAGE" True reuse_disk_on_change "" ALWAYS_REUSE_DISK_IMAGE=1

# Bare kernel.
env_value "ADDITIONAL_KERNEL_COMMANDLINE (bare)" "ENABLE_DEBUG=1 quiet" kernel.cmdline isolated-bare \
    ADDITIONAL_KERNEL_COMMANDLINE="ENABLE_DEBUG=1 quiet"
env_value "ADDITIONAL_KERNEL_COMMANDLINE is ignored with a cloud image" null kernel isolated ADDITIONAL_KERNEL_COMMANDLINE=quiet
OUT=$(fromenv isolated-bare DEFAULT_RIMD_KERNEL_FILENAME=Image-x DEFAULT_RIMD_KERNEL_VERSION=-7.0 \
    DEFAULT_RIMD_IMAGE_FILENAME=init.cpio DEFAULT_RIMD_FILESYSTEM_FILENAME=root.qcow2 DEFAULT_RIMD_ARTIFACT_DIR=ws \
    DEFAULT_RIMD_ARTIFACT_URL=https://a.example/ws.tar.xz ENABLE_CONTAINERD_RIMD_PROXY=1) || true
GOT=$($PY -c 'import json,sys; b=json.load(sys.stdin)["bare"]; print("|".join(str(x) for x in (b["kernel"], b["kernel_version"], b["initrd"], b["rootfs"], b["dir"], b["artifact"]["url"], b["encrypted_tools"])))' <<<"$OUT")
if [ "$GOT" = "Image-x|-7.0|init.cpio|root.qcow2|ws|https://a.example/ws.tar.xz|True" ]; then ok "DEFAULT_RIMD_* -> bare.*"; else
    not_ok "DEFAULT_RIMD_* -> bare.* ($GOT)"; fi
env_value "ENABLE_VSOCK_LINUX (bare)" True devices.vsock isolated-bare ENABLE_VSOCK_LINUX=1
env_value "ENABLE_VSOCK_LINUX is ignored with a cloud image" null devices isolated ENABLE_VSOCK_LINUX=1

# Guest.
env_value "VM_PASSWORD + VM_SALT: the script's hash (words joined by one space, as its echo)" \
    "$(openssl passwd -6 -salt pepper 'two words')" guest.password_hash "" VM_PASSWORD="  two    words " VM_SALT=pepper
env_value "VM_PASSWORD_ENCRYPTED as is" '$6$x$y' guest.password_hash "" VM_PASSWORD_ENCRYPTED='$6$x$y'
env_value "VM_USERNAME" bob guest.username "" VM_USERNAME=bob
env_value "VM_SSH_AUTHORIZED_KEY" '["ssh-ed25519 AAAAkey me@host"]' guest.ssh_authorized_keys "" \
    VM_SSH_AUTHORIZED_KEY="ssh-ed25519 AAAAkey me@host"
env_value "VM_SSH_KEY_FILENAME" '["ssh-ed25519 AAAAC3NzaKEY1 one@host", "ssh-rsa AAAAB3NzaKEY2 two@host"]' \
    guest.ssh_authorized_keys "" VM_SSH_KEY_FILENAME="$T/full/keys.pub"
env_value "an unreadable VM_SSH_KEY_FILENAME: no key, as the script" '[]' guest.ssh_authorized_keys "" \
    VM_SSH_KEY_FILENAME="$T/nope.pub"
if grep -q "VM_SSH_KEY_FILENAME: cannot read" "$T/err"; then ok "... with a note"; else not_ok "... with a note"; fi
if [ "$(id -u)" != 0 ]; then
    mkdir -p "$T/home/.ssh" && cp "$T/full/keys.pub" "$T/home/.ssh/id_ed25519.pub"
    env_value "not root: the first ~/.ssh/id*.pub" '["ssh-ed25519 AAAAC3NzaKEY1 one@host", "ssh-rsa AAAAB3NzaKEY2 two@host"]' \
        guest.ssh_authorized_keys ""
fi

# Software.
env_value "DEFAULT_KERNEL_VERSION -> linux-image-VERSION-ARCH" "linux-image-6.12.0-1-$DEBARCH" software.kernel_package "" \
    DEFAULT_KERNEL_VERSION=6.12.0-1
env_value "KERNEL_VERSION wins" linux-image-cloud-amd64 software.kernel_package "" DEFAULT_KERNEL_VERSION=6.12.0-1 \
    KERNEL_VERSION=linux-image-cloud-amd64
env_value "INSTALL_ADDITIONAL_DEBS, '\$'-separated" '["http://a.example/x.deb", "https://b.example/y.deb"]' \
    software.extra_debs "" 'INSTALL_ADDITIONAL_DEBS=http://a.example/x.deb$https://b.example/y.deb'
env_value "ENABLE_REBOOT_AFTER_INSTALLATION" True software.reboot_after_install "" ENABLE_REBOOT_AFTER_INSTALLATION=1
# hydrad's HYDRA_PACKAGE_UPDATE/UPGRADE: unset, start-vm.sh's seed (both on); a boolean turns either off.
env_value "HYDRA_PACKAGE_UPDATE unset: package_update on, as start-vm.sh" True software.package_update ""
env_value "HYDRA_PACKAGE_UPGRADE unset: package_upgrade on, as start-vm.sh" True software.package_upgrade isolated
env_value "HYDRA_PACKAGE_UPDATE empty counts as unset" True software.package_update "" HYDRA_PACKAGE_UPDATE=
for pair in no:False NO:False 0:False off:False false:False yes:True 1:True On:True; do
    env_value "HYDRA_PACKAGE_UPDATE=${pair%%:*}" "${pair#*:}" software.package_update host \
        HYDRA_PACKAGE_UPDATE="${pair%%:*}"
    env_value "HYDRA_PACKAGE_UPGRADE=${pair%%:*}" "${pair#*:}" software.package_upgrade "" \
        HYDRA_PACKAGE_UPGRADE="${pair%%:*}"
done
env_value "HYDRA_PACKAGE_UPGRADE=no leaves package_update on" True software.package_update "" HYDRA_PACKAGE_UPGRADE=no
env_value "HYDRA_PACKAGE_UPDATE=no leaves package_upgrade on" True software.package_upgrade "" HYDRA_PACKAGE_UPDATE=no
env_fail "HYDRA_PACKAGE_UPDATE=maybe" 2 "^hydractl: --from-env: HYDRA_PACKAGE_UPDATE: 'maybe' is not a boolean \(allowed: true, false, yes, no, on, off, 1, 0\)$" "" \
    HYDRA_PACKAGE_UPDATE=maybe
env_value "HYDRA_SANDBOX_IMAGE" registry.example.org/pause:3.9 software.sandbox_image isolated \
    HYDRA_SANDBOX_IMAGE=registry.example.org/pause:3.9
env_value "HYDRA_SANDBOX_IMAGE_URL" http://10.0.2.2:18480/pause.tar software.sandbox_image_url isolated \
    HYDRA_SANDBOX_IMAGE_URL=http://10.0.2.2:18480/pause.tar
env_value "CRISMUX_ARTIFACT_URL (the installer's)" http://10.0.2.2:18480/crismux software.crismux_url host \
    CRISMUX_ARTIFACT_URL=http://10.0.2.2:18480/crismux
env_value "CRISMUX_SHA256 (the installer's)" 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08 \
    software.crismux_sha256 host CRISMUX_SHA256=9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
env_fail "HYDRA_SANDBOX_IMAGE with a quote" 2 "HYDRA_SANDBOX_IMAGE: 'pause.+' contains '\"'" "" 'HYDRA_SANDBOX_IMAGE=pause"'
env_fail "CRISMUX_SHA256 too short" 2 "CRISMUX_SHA256: 'abc' is not a SHA-256 digest" host CRISMUX_SHA256=abc
env_fail "HYDRA_PACKAGE_UPGRADE=2" 2 "HYDRA_PACKAGE_UPGRADE: '2' is not a boolean" "" HYDRA_PACKAGE_UPGRADE=2
env_value "RUN_BARE_KERNEL=1: no software, HYDRA_PACKAGE_UPDATE ignored" null software isolated-bare HYDRA_PACKAGE_UPDATE=no
if grep -q "^hydractl: note: HYDRA_PACKAGE_UPDATE and HYDRA_PACKAGE_UPGRADE are ignored with RUN_BARE_KERNEL=1" "$T/err"; then
    ok "RUN_BARE_KERNEL=1: a note says HYDRA_PACKAGE_* are ignored"; else
    not_ok "RUN_BARE_KERNEL=1: a note says HYDRA_PACKAGE_* are ignored ($(cat "$T/err"))"; fi
env_value "K3S_VERSION_INSTALL" v1.31.0+k3s1 software.k3s_version "" K3S_VERSION_INSTALL=v1.31.0+k3s1
# hydrad's rules (common/field.c), so that RegisterVm and StartVm accept what --from-env produced.
env_fail "INSTALL_ADDITIONAL_DEBS with '}'" 2 "INSTALL_ADDITIONAL_DEBS: 'http://x/a.deb#REDACTED' contains '}'" "" \
    'INSTALL_ADDITIONAL_DEBS=http://x/a.deb#}]'
env_fail "DEFAULT_CSI_GRPC_PROXY_URL with '{'" 2 "DEFAULT_CSI_GRPC_PROXY_URL: 'https://x/\{v\}-' contains '\{'" "" \
    'DEFAULT_CSI_GRPC_PROXY_URL=https://x/{v}-'
env_fail "ADDITIONAL_9P_MOUNTS guest path with '='" 2 "ADDITIONAL_9P_MOUNTS \(guest directory\): '/mnt/a=b' contains '='" "" \
    'ADDITIONAL_9P_MOUNTS=/srv/a|/mnt/a=b'
env_value "DEFAULT_CSI_GRPC_PROXY_URL" https://mirror.example/csi- software.csi_grpc_proxy_url "" \
    DEFAULT_CSI_GRPC_PROXY_URL=https://mirror.example/csi-

# Network and forwards.
env_value "DEFAULT_NETWORK_PREFIX" "192.168.7.15" network.guest_ip "" DEFAULT_NETWORK_PREFIX=192.168.7
env_value "DEFAULT_NETWORK_PREFIX: the gateway" "192.168.7.2" network.gateway "" DEFAULT_NETWORK_PREFIX=192.168.7
env_value "DEFAULT_DNS_IP" "9.9.9.9" network.dns "" DEFAULT_DNS_IP=9.9.9.9
env_fail "DEFAULT_DEVICE_IP not an address" 2 "DEFAULT_DEVICE_IP: '10.0.2' is not an IPv4 address" "" DEFAULT_DEVICE_IP=10.0.2
env_value "DEFAULT_KVM_HOST_SSHD_PORT" 2200 forwards.0.host_port "" DEFAULT_KVM_HOST_SSHD_PORT=2200
env_value "DEFAULT_KVM_HOST_CONTAINERD_PORT" 45000 forwards.1.host_port "" DEFAULT_KVM_HOST_CONTAINERD_PORT=45000
env_value "forwards bind 127.0.0.1 (a deliberate fix)" 127.0.0.1 forwards.0.host_addr ""
env_fail "DEFAULT_KVM_PORTS_REDIRECT: a single-digit port, as the script's regex" 2 \
    "DEFAULT_KVM_PORTS_REDIRECT: '8:80' is not HOST_PORT:GUEST_PORT" "" DEFAULT_KVM_PORTS_REDIRECT="8:80"
env_fail "DEFAULT_KVM_PORTS_REDIRECT: a trailing ';'" 2 "DEFAULT_KVM_PORTS_REDIRECT: '' is not HOST_PORT:GUEST_PORT" "" \
    DEFAULT_KVM_PORTS_REDIRECT="80:80;"
env_fail "DEFAULT_KVM_PORTS_REDIRECT: ',' instead of ';'" 2 "DEFAULT_KVM_PORTS_REDIRECT: '80:80,81:81' is not" "" \
    DEFAULT_KVM_PORTS_REDIRECT="80:80,81:81"
env_fail "DEFAULT_KVM_PORTS_REDIRECT: a port above 65535" 2 "'70000:80' is not HOST_PORT:GUEST_PORT" "" \
    DEFAULT_KVM_PORTS_REDIRECT="70000:80"
env_fail "DEFAULT_KVM_HOST_SSHD_PORT bad" 2 "DEFAULT_KVM_HOST_SSHD_PORT: 'ssh:22' is not HOST_PORT:GUEST_PORT" "" \
    DEFAULT_KVM_HOST_SSHD_PORT=ssh

# Shares.
env_value "DISABLE_9P_KUBELET_MOUNTS" none shares.kubelet "" DISABLE_9P_KUBELET_MOUNTS=1
env_value "EXTERNAL_9P_KUBELET_MOUNTS" tcp shares.kubelet "" EXTERNAL_9P_KUBELET_MOUNTS=1
env_value "DIR_K3S_VAR" /srv/k3s shares.kubelet_host_dir "" DIR_K3S_VAR=/srv/k3s
if [ "$(id -u)" = 0 ]; then
    env_value "root: DEFAULT_DIR_K3S_VAR_LINUX_ROOT" /var/k3s shares.kubelet_host_dir "" DEFAULT_DIR_K3S_VAR_LINUX_ROOT=/var/k3s
else
    env_value "not root: DEFAULT_DIR_K3S_VAR_LINUX_NON_ROOT" /home/k3s shares.kubelet_host_dir "" DEFAULT_DIR_K3S_VAR_LINUX_NON_ROOT=/home/k3s
fi
env_value "ADDITIONAL_9P_MOUNTS, '\$'-separated HOST|GUEST" \
    '[{"host_path": "/srv/a", "guest_path": "/mnt/a"}, {"host_path": "/srv/b", "guest_path": "/mnt/b"}]' \
    shares.extra "" 'ADDITIONAL_9P_MOUNTS=/srv/a|/mnt/a$/srv/b|/mnt/b'
env_fail "ADDITIONAL_9P_MOUNTS without '|'" 2 "ADDITIONAL_9P_MOUNTS: '/srv/a' is not HOST_DIR\|GUEST_DIR" "" \
    ADDITIONAL_9P_MOUNTS=/srv/a

# Devices.
env_value "ENABLE_VIRTIO_GPU + DEFAULT_VIRTIO_GPU_VRAM" 8 devices.gpu_vram_gib "" ENABLE_VIRTIO_GPU=1 DEFAULT_VIRTIO_GPU_VRAM=8
env_value "SHMEM_TYPE" nvdimm devices.shmem "" SHMEM_TYPE=nvdimm
env_value "KVM_SHMEM_SIZE" 2 devices.shmem_size_gib "" SHMEM_TYPE=ivshmem KVM_SHMEM_SIZE=2
env_value "the shared memory path is left to hydrad (its state dir), not /dev/shm/shmem-VM_HOSTNAME" null \
    devices.shmem_path isolated SHMEM_TYPE=ivshmem
env_value "DEFAULT_KVM_SHMEM_PATH" /dev/shm/x devices.shmem_path "" SHMEM_TYPE=nvdimm DEFAULT_KVM_SHMEM_PATH=/dev/shm/x
env_fail "SHMEM_TYPE bogus" 2 "SHMEM_TYPE: 'dax' is not a shared memory type \(allowed: none, nvdimm, ivshmem\)" "" SHMEM_TYPE=dax

# Daemon-level, obsolete and unsupported variables: a note each; macOS-only ones: refused.
fromenv "" DEFAULT_DIR_IMAGE=/x DEBUG=1 PIDFILE=/x.pid KVM_DAEMONIZE=1 DRY_RUN_ONLY=1 DEFAULT_KVM_DARWIN_CPU=4 \
    DEFAULT_KVM_UNKNOWN_MEMORY=2 >/dev/null || true
for pattern in "DEFAULT_DIR_IMAGE is not used: .*state_dir" "DEBUG is not used: .*--log-level" \
    "PIDFILE is not needed: hydrad supervises" "KVM_DAEMONIZE is not needed: hydrad supervises" \
    "DRY_RUN_ONLY is not used: 'hydractl plan ROLE'" "DEFAULT_KVM_DARWIN_CPU is for macOS" \
    "DEFAULT_KVM_UNKNOWN_MEMORY is for systems other than"; do
    if grep -q "^hydractl: note: $pattern" "$T/err"; then ok "note: $pattern"; else not_ok "note: $pattern ($(cat "$T/err"))"; fi
done

# hydrad's own variables: HYDRA_RESTART, HYDRA_AUTOSTART, HYDRA_READY_TIMEOUT -> [supervision].
for v in no on-failure always; do
    env_value "HYDRA_RESTART=$v" "$v" supervision.restart "" HYDRA_RESTART="$v" HYDRA_AUTOSTART=1
done
for pair in true:True false:False 1:True 0:False yes:True no:False YES:True On:True off:False; do
    env_value "HYDRA_AUTOSTART=${pair%%:*}" "${pair#*:}" supervision.autostart "" HYDRA_AUTOSTART="${pair%%:*}" \
        HYDRA_RESTART=always
done
env_value "HYDRA_RESTART=always alone: autostart stays off" False supervision.autostart "" HYDRA_RESTART=always
env_value "HYDRA_AUTOSTART=1 alone: restart stays no" no supervision.restart "" HYDRA_AUTOSTART=1
env_value "HYDRA_RESTART and HYDRA_AUTOSTART unset, no proxy: no [supervision]" null supervision "" \
    DISABLE_CONTAINERD_CSI_PROXY=1
env_value "HYDRA_RESTART=no, HYDRA_AUTOSTART=0, no proxy: no [supervision]" null supervision "" HYDRA_RESTART=no \
    HYDRA_AUTOSTART=0 DISABLE_CONTAINERD_CSI_PROXY=1
env_value "HYDRA_RESTART empty counts as unset" null supervision "" HYDRA_RESTART= DISABLE_CONTAINERD_CSI_PROXY=1
env_value "with the containerd proxy, ready means containerd answers" containerd supervision.probe ""
env_value "the isolated preset: probe containerd" containerd supervision.probe isolated
env_value "the host preset (no proxy): the default probe" null supervision host
env_value "HYDRA_RESTART keeps the containerd probe" containerd supervision.probe "" HYDRA_RESTART=always
env_value "HYDRA_RESTART with a preset" on-failure supervision.restart isolated HYDRA_RESTART=on-failure
env_value "HYDRA_READY_TIMEOUT=900" 900 supervision.ready_timeout "" HYDRA_READY_TIMEOUT=900
env_value "HYDRA_READY_TIMEOUT=0: no limit, no [supervision] (no proxy)" null supervision "" HYDRA_READY_TIMEOUT=0 \
    DISABLE_CONTAINERD_CSI_PROXY=1
env_fail "HYDRA_READY_TIMEOUT=15m" 2 "^hydractl: --from-env: HYDRA_READY_TIMEOUT: '15m' is not a number of seconds \(allowed: 0-86400; 0 is no limit\)$" "" \
    HYDRA_READY_TIMEOUT=15m
env_fail "HYDRA_READY_TIMEOUT=86401" 2 "HYDRA_READY_TIMEOUT: '86401' is not a number of seconds" "" HYDRA_READY_TIMEOUT=86401
# start_after: the kubelet shares over 9p/TCP come from the host VM's diod.
env_value "the isolated preset (EXTERNAL_9P_KUBELET_MOUNTS): starts after host" host supervision.start_after isolated
env_value "the isolated-bare preset: starts after host" host supervision.start_after isolated-bare
env_value "EXTERNAL_9P_KUBELET_MOUNTS=1 without a preset: starts after host" host supervision.start_after "" \
    EXTERNAL_9P_KUBELET_MOUNTS=1
env_value "the isolated-crypt preset (no kubelet shares): no start_after" null supervision.start_after isolated-crypt
env_value "the default (virtio shares): no start_after" null supervision.start_after ""
env_value "HYDRA_START_AFTER=none clears the preset's" null supervision.start_after isolated HYDRA_START_AFTER=none
env_value "HYDRA_START_AFTER=host without the shares" host supervision.start_after "" HYDRA_START_AFTER=host
env_fail "HYDRA_START_AFTER=xen" 2 "^hydractl: --from-env: HYDRA_START_AFTER: 'xen' is not a role \(allowed: host, isolated, none\)$" "" \
    HYDRA_START_AFTER=xen
expect_value "supervision.start_after" host supervision.start_after -- spec-dump --set supervision.start_after=host
expect_value "--set supervision.start_after= resets it" null supervision \
    -- spec-dump --set supervision.start_after=host --set supervision.start_after=
expect_fail "--set supervision.start_after=xen" 2 \
    "^hydractl: --set 'supervision.start_after=xen': supervision.start_after: 'xen' is not a role \(allowed: host, isolated: the other VM\)$" \
    -- spec-dump --set supervision.start_after=xen
expect_fail "register isolated starting after itself" 2 \
    "^hydractl: supervision.start_after: 'isolated' is this VM's own role \(allowed: the other VM, host, or empty for none\)$" \
    -- --socket "$T/none.sock" register isolated --spec "$SPEC" --set supervision.start_after=isolated
if fromenv "" HYDRA_RESTART=always HYDRA_AUTOSTART=1 >/dev/null && ! grep -q "HYDRA_RESTART\|HYDRA_AUTOSTART" "$T/err"; then
    ok "HYDRA_RESTART/HYDRA_AUTOSTART: no warning any more"; else not_ok "HYDRA_RESTART/HYDRA_AUTOSTART: no warning ($(cat "$T/err"))"; fi
env_fail "HYDRA_RESTART=sometimes" 2 "^hydractl: --from-env: HYDRA_RESTART: 'sometimes' is not a restart policy \(allowed: no, on-failure, always\)$" "" \
    HYDRA_RESTART=sometimes
env_fail "HYDRA_RESTART=on_failure" 2 "HYDRA_RESTART: 'on_failure' is not a restart policy" "" HYDRA_RESTART=on_failure
env_fail "HYDRA_AUTOSTART=2" 2 "^hydractl: --from-env: HYDRA_AUTOSTART: '2' is not a boolean \(allowed: true, false, yes, no, on, off, 1, 0\)$" "" \
    HYDRA_AUTOSTART=2
env_fail "HYDRA_AUTOSTART=maybe" 2 "HYDRA_AUTOSTART: 'maybe' is not a boolean" "" HYDRA_AUTOSTART=maybe
OUT=$(env -i PATH="$FAKEBIN:/usr/bin:/bin" HOME="$T/home" HYDRA_RESTART=always "$HYDRACTL" spec-dump --from-env \
    --set supervision.restart=on-failure --set supervision.max_restarts=3 2>/dev/null) || true
if [ "$(json supervision.restart <<<"$OUT")|$(json supervision.max_restarts <<<"$OUT")" = "on-failure|3" ]; then
    ok "--set supervision.* applies after HYDRA_RESTART"; else not_ok "--set supervision.* after HYDRA_RESTART ($OUT)"; fi
for var in KRUNKIT_HTTP_PORT=61800 GVPROXY_HTTP_PORT=61801 DEFAULT_GVPROXY=/opt/gvproxy DEFAULT_DIR_TMP_SOCKET=/tmp/s; do
    env_fail "${var%%=*} refused" 2 "${var%%=*} is set: krunkit/gvproxy are macOS only; on Linux hydrad runs QEMU" "" "$var"
done
env_fail "ENABLE_KRUNKIT=1 refused" 2 "ENABLE_KRUNKIT=1: krunkit/gvproxy are macOS only; on Linux hydrad runs QEMU" "" ENABLE_KRUNKIT=1
env_value "ENABLE_KRUNKIT=0 is fine" 2 cpus "" ENABLE_KRUNKIT=0

# --from-env with --set, and the usage rules.
OUT=$(env -i PATH="$FAKEBIN:/usr/bin:/bin" HOME="$T/home" "$HYDRACTL" spec-dump --from-env --preset host --set vm.cpus=6 2>/dev/null | json cpus) || true
if [ "$OUT" = 6 ]; then ok "--set applies after --from-env"; else not_ok "--set applies after --from-env ($OUT)"; fi
expect_fail "--preset without --from-env" 2 "--preset needs --from-env" -- spec-dump --preset host
expect_fail "--spec and --from-env" 2 "--spec and --from-env exclude each other" -- spec-dump --from-env --spec "$SPEC"
expect_fail "an unknown preset" 2 "--preset: 'hots' is not a preset \(known: host, isolated, isolated-bare, isolated-crypt\)" \
    -- spec-dump --from-env --preset hots
expect_fail "register --from-env builds the spec, then calls hydrad" 1 "^hydractl: UNAVAILABLE: " \
    -- --socket "$T/none.sock" register isolated --from-env --preset isolated

# --- against a scripted hydrad: start's progress, status, plan, watch, register's password hash ---
if [ -n "${HYDRA_PYTHONPATH:-}" ] && $PY -c 'import grpc' 2>/dev/null; then
    FAKE=$T/fake
    mkdir -p "$FAKE"
    cat >"$FAKE/fake_hydrad.py" <<'PYEOF'
import crypt, json, os, socket, sys, threading, time
from concurrent import futures
sys.path.insert(0, os.environ["HYDRA_PYTHONPATH"])
import grpc
from hydra.v1 import hydra_pb2 as pb

sock, state = sys.argv[1], sys.argv[2]
STORED_HASH = crypt.crypt("registered password", crypt.mksalt(crypt.METHOD_SHA512))
with open(state + "/stored-hash", "w") as f:
    f.write(STORED_HASH)
starting = threading.Event()
# The serial console log: bytes no terminal filter may touch (escape sequences, CR, invalid UTF-8, NUL).
CONSOLE_LOG = b"\x1b[0;1mSeaBIOS\x1b[0m\r\n" + bytes(range(256)) + b"\nhydra login: "
with open(state + "/console.log", "wb") as f:
    f.write(CONSOLE_LOG)
READY_SINCE, NEXT_RESTART = 1700000000 * 10**6, 1700000123 * 10**6

def vm(role, st):
    v = pb.Vm(role=role, state=st, pid=4242 if st == pb.VM_STATE_RUNNING else 0, spec_generation=3,
              disk_path="/var/lib/hydra/isolated/disk.qcow2", seed_path="/var/lib/hydra/isolated/seed.iso")
    v.spec.guest.password_hash = STORED_HASH
    return v

def mode():
    try:
        with open(state + "/mode") as f:
            return f.read().strip()
    except FileNotFoundError:
        return "preparing"

def get_vm(req, ctx):
    if os.path.exists(state + "/not-registered"):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "isolated is not registered")
    m = mode()
    if m == "ready":  # running, the probe passed, console and CRI sockets
        v = vm(req.role, pb.VM_STATE_RUNNING)
        v.ready, v.ready_since_unix_usec, v.ready_detail = True, READY_SINCE, "containerd v1.7.24"
        v.console_socket, v.cri_socket = state + "/console.sock", "/run/hydra/isolated/containerd.sock"
        return v
    if m == "not-ready":
        v = vm(req.role, pb.VM_STATE_RUNNING)
        v.ready_detail = "connection refused\nby the guest"
        v.console_socket = state + "/console.sock"
        return v
    if m == "crashed":  # a restart is scheduled; a stale ready flag must not show
        v = vm(req.role, pb.VM_STATE_CRASHED)
        v.ready, v.next_restart_unix_usec, v.restart_count = True, NEXT_RESTART, 2
        return v
    v = vm(req.role, pb.VM_STATE_PREPARING)
    v.progress.step, v.progress.what = "download", "https://example.com/img.qcow2"
    v.progress.bytes, v.progress.total, v.progress.rate = 50 << 20, 100 << 20, 5 << 20
    return v

def list_vms(req, ctx):
    host = vm(pb.ROLE_HOST, pb.VM_STATE_STOPPED)
    iso = vm(pb.ROLE_ISOLATED, pb.VM_STATE_RUNNING)
    iso.ready = True
    return pb.ListVmsResponse(vms=[host, iso])

def console_log(req, ctx):
    with open(state + "/console-request.json", "w") as f:
        json.dump({"role": req.role, "follow": req.follow, "tail_bytes": req.tail_bytes}, f)
    data = CONSOLE_LOG[-req.tail_bytes:] if req.tail_bytes else CONSOLE_LOG
    yield pb.ConsoleChunk(data=data[:7])  # split inside an escape sequence: written as is all the same
    yield pb.ConsoleChunk(data=data[7:])
    i = 0
    while req.follow and ctx.is_active():
        yield pb.ConsoleChunk(data=b"follow %d\r\n" % i)
        i += 1
        time.sleep(0.05)

def serve_console():
    # hydrad's console.sock: says hello, then echoes what it gets, as a guest's shell would.
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(state + "/console.sock")
    srv.listen(4)
    while True:
        conn, _ = srv.accept()
        def one(c):
            c.sendall(b"hello from the console\r\n")
            while True:
                d = c.recv(4096)
                if not d:
                    break
                c.sendall(b"echo: " + d)
            c.close()
        threading.Thread(target=one, args=(conn,), daemon=True).start()
threading.Thread(target=serve_console, daemon=True).start()

def register(req, ctx):
    with open(state + "/registered.json", "w") as f:
        json.dump({"password_hash": req.spec.guest.password_hash, "password": req.spec.guest.password}, f)
    return pb.RegisterVmResponse(vm=vm(req.role, pb.VM_STATE_DEFINED), changed=True)

def start(req, ctx):
    with open(state + "/start-wait", "w") as f:
        f.write(pb.WaitFor.Name(req.wait))
    starting.set()
    time.sleep(1.0)
    starting.clear()
    v = vm(req.role, pb.VM_STATE_RUNNING)
    v.ready = req.wait == pb.WAIT_FOR_READY
    return v

def watch(req, ctx):
    ctx.send_initial_metadata(())  # as hydrad: at once
    seq = 0
    def ev(**kw):
        nonlocal seq
        seq += 1
        return pb.Event(seq=seq, time_unix_usec=int(time.time() * 1e6), role=pb.ROLE_ISOLATED, **kw)
    # Events only while StartVm runs: a client that started it before its stream was up would miss them.
    if not starting.wait(10):
        return
    total = 100 << 20
    for i in range(0, 21):
        yield ev(progress=pb.Progress(step="download", what="https://example.com/img.qcow2", bytes=total * i // 20,
                                      total=total, rate=20 << 20))
        time.sleep(0.02)
    yield ev(notice=pb.Notice(message="disk reset: guest configuration changed"))
    yield ev(progress=pb.Progress(step="disk", what="/var/lib/hydra/isolated/disk.qcow2"))
    yield ev(progress=pb.Progress(step="seed", what="/var/lib/hydra/isolated/seed.iso"))
    yield ev(readiness=pb.Readiness(ready=False, detail="connection refused"))
    yield ev(readiness=pb.Readiness(ready=True, detail="containerd v1.7.24"))
    yield ev(lost=pb.Lost(count=3))
    while ctx.is_active():
        time.sleep(0.05)

def plan(req, ctx):
    return pb.PlanVmResponse(argv=["qemu-system-x86_64", "-m", "2048", "-nographic", "-append", "console=ttyS0 quiet"],
                             files=[pb.PlannedFile(path="/var/lib/hydra/isolated/cloud-init/user-data",
                                                   content=b"#cloud-config\nhostname: hydravm\n")])

def u(fn, req, resp):
    return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req.FromString,
                                               response_serializer=resp.SerializeToString)

handlers = {
    "GetVm": u(get_vm, pb.GetVmRequest, pb.Vm),
    "RegisterVm": u(register, pb.RegisterVmRequest, pb.RegisterVmResponse),
    "StartVm": u(start, pb.StartVmRequest, pb.Vm),
    "PlanVm": u(plan, pb.PlanVmRequest, pb.PlanVmResponse),
    "ListVms": u(list_vms, pb.ListVmsRequest, pb.ListVmsResponse),
    "WatchEvents": grpc.unary_stream_rpc_method_handler(watch, request_deserializer=pb.WatchEventsRequest.FromString,
                                                       response_serializer=pb.Event.SerializeToString),
    "ConsoleLog": grpc.unary_stream_rpc_method_handler(console_log,
                                                      request_deserializer=pb.ConsoleLogRequest.FromString,
                                                      response_serializer=pb.ConsoleChunk.SerializeToString),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("hydra.v1.Hydra", handlers),))
server.add_insecure_port("unix:" + sock)
server.start()
open(state + "/ready", "w").close()
server.wait_for_termination()
PYEOF
    $PY -W ignore "$FAKE/fake_hydrad.py" "$FAKE/hydra.sock" "$FAKE" 2>"$FAKE/log" &
    FAKE_PID=$!
    trap 'kill "$FAKE_PID" 2>/dev/null || true; wait "$FAKE_PID" 2>/dev/null || true; rm -rf "$T"' EXIT
    for _ in $(seq 1 100); do [ -e "$FAKE/ready" ] && break; sleep 0.1; done
    fctl() { "$HYDRACTL" --socket "$FAKE/hydra.sock" "$@"; }

    if fctl start isolated >"$T/out" 2>"$T/err"; then ok "start (fake hydrad)"; else not_ok "start (fake hydrad): $(cat "$T/err")"; fi
    if grep -qx "isolated: running (pid 4242)" "$T/out"; then ok "start prints the result on stdout"; else
        not_ok "start prints the result on stdout ($(cat "$T/out"))"; fi
    if grep -qx "hydractl: isolated: download https://example.com/img.qcow2: 0% (0 B of 100.0 MiB, 20.0 MiB/s)" "$T/err" &&
        grep -qx "hydractl: isolated: download https://example.com/img.qcow2: 50% (50.0 MiB of 100.0 MiB, 20.0 MiB/s)" "$T/err" &&
        grep -qx "hydractl: isolated: download https://example.com/img.qcow2: 100% (100.0 MiB of 100.0 MiB, 20.0 MiB/s)" "$T/err"; then
        ok "not a terminal: progress lines on stderr"; else not_ok "not a terminal: progress lines on stderr ($(cat "$T/err"))"; fi
    N=$(grep -c "download" "$T/err" || true)
    if [ "$N" -eq 11 ]; then ok "one line per 10% (21 events, 11 lines)"; else not_ok "one line per 10% ($N lines)"; fi
    if grep -qx "hydractl: isolated: notice: disk reset: guest configuration changed" "$T/err"; then ok "start prints notices"; else
        not_ok "start prints notices"; fi
    if grep -qx "hydractl: isolated: disk /var/lib/hydra/isolated/disk.qcow2" "$T/err" &&
        grep -qx "hydractl: isolated: seed /var/lib/hydra/isolated/seed.iso" "$T/err"; then ok "a line per step"; else
        not_ok "a line per step ($(cat "$T/err"))"; fi
    if fctl --json start isolated >"$T/out" 2>"$T/err" && [ ! -s "$T/err" ] && [ "$(json pid <"$T/out")" = 4242 ]; then
        ok "start --json: the result only"; else not_ok "start --json: the result only ($(cat "$T/err"))"; fi
    if command -v script >/dev/null; then
        script -qec "$HYDRACTL --socket $FAKE/hydra.sock start isolated" /dev/null >"$T/tty" 2>&1 || true
        # Which percentages get drawn depends on timing (at most one redraw per 100 ms): any will do.
        if grep -Eq $'\r'"isolated: download img.qcow2 \[=*>? *\] +[0-9]+%  [0-9.]+ [KMG]?i?B/100.0 MiB" "$T/tty" &&
            grep -q "isolated: running (pid 4242)" "$T/tty"; then
            ok "a terminal: a progress bar redrawn with \\r"; else not_ok "a terminal: a progress bar ($(od -c "$T/tty" | head -5))"; fi
        N=$(tr '\r' '\n' <"$T/tty" | grep -c "download img.qcow2" || true)
        if [ "$N" -lt 21 ]; then ok "the bar is redrawn at most ~10 times a second ($N draws for 21 events)"; else
            not_ok "the bar is redrawn at most ~10 times a second ($N draws)"; fi
    fi

    fctl status isolated >"$T/out" 2>&1 || true
    if grep -qx "disk:            /var/lib/hydra/isolated/disk.qcow2" "$T/out" &&
        grep -qx "seed:            /var/lib/hydra/isolated/seed.iso" "$T/out" &&
        grep -qx "progress:        download https://example.com/img.qcow2: 50% (50.0 MiB of 100.0 MiB, 5.0 MiB/s)" "$T/out"; then
        ok "status shows disk, seed and progress"; else not_ok "status shows disk, seed and progress ($(cat "$T/out"))"; fi
    J=$(fctl --json status isolated 2>&1) || true
    if [ "$(json disk_path <<<"$J")" = /var/lib/hydra/isolated/disk.qcow2 ] && [ "$(json seed_path <<<"$J")" = /var/lib/hydra/isolated/seed.iso ] &&
        [ "$(json progress.step <<<"$J")" = download ] && [ "$(json progress.total <<<"$J")" = 104857600 ]; then
        ok "status --json: disk_path, seed_path, progress"; else not_ok "status --json ($J)"; fi
    fctl plan isolated >"$T/out" 2>&1 || true
    if [ "$(sed -n 2p "$T/out")" = "-m 2048" ] && [ "$(sed -n 3p "$T/out")" = "-nographic" ] &&
        [ "$(sed -n 4p "$T/out")" = "-append console=ttyS0 quiet" ] &&
        grep -qx "# file /var/lib/hydra/isolated/cloud-init/user-data (32 bytes)" "$T/out" && grep -qx "hostname: hydravm" "$T/out"; then
        ok "plan: an option and its value per line, then the files"; else not_ok "plan ($(cat "$T/out"))"; fi
    J=$(fctl --json plan isolated 2>&1) || true
    if [ "$(json argv <<<"$J")" = '["qemu-system-x86_64", "-m", "2048", "-nographic", "-append", "console=ttyS0 quiet"]' ] &&
        grep -q '"content":"#cloud-config' <<<"$J"; then ok "plan --json: argv and files"; else not_ok "plan --json ($J)"; fi
    fctl --timeout 5 watch isolated >"$T/out" 2>&1 &
    W=$!
    fctl --json --timeout 5 watch isolated >"$T/watch.json" 2>&1 &
    WJ=$!
    sleep 1
    fctl start isolated >/dev/null 2>&1 || true
    wait $W || true
    wait $WJ || true
    if grep -q "isolated: download https://example.com/img.qcow2: 50% (50.0 MiB of 100.0 MiB, 20.0 MiB/s)" "$T/out" &&
        grep -q "isolated: notice: disk reset: guest configuration changed" "$T/out"; then ok "watch: progress and notices"; else
        not_ok "watch: progress and notices ($(head -c 600 "$T/out"))"; fi
    if grep -q " isolated: not ready: connection refused$" "$T/out" && grep -q " isolated: ready$" "$T/out" &&
        grep -q " isolated: lost 3 events$" "$T/out"; then ok "watch: readiness and lost events"; else
        not_ok "watch: readiness and lost events ($(tail -n 4 "$T/out"))"; fi
    if $PY - "$T/watch.json" <<'PYEOF'; then ok "watch --json: readiness and lost events"; else not_ok "watch --json: readiness and lost ($(tail -n 3 "$T/watch.json"))"; fi
import json, sys
evs = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
want = [{"type": "readiness", "ready": False, "detail": "connection refused"},
        {"type": "readiness", "ready": True, "detail": "containerd v1.7.24"},
        {"type": "lost", "count": 3}]
got = [{k: e.get(k) for k in w} for e, w in zip([e for e in evs if e["type"] in ("readiness", "lost")], want)]
sys.exit(0 if got == want and all(e["role"] == "isolated" for e in evs) else 1)
PYEOF

    # start --wait ready sends WAIT_FOR_READY; --wait running (the default) WAIT_FOR_RUNNING.
    if fctl start isolated --wait ready >"$T/out" 2>/dev/null && [ "$(cat "$FAKE/start-wait")" = WAIT_FOR_READY ] &&
        grep -qx "isolated: running (pid 4242, ready)" "$T/out"; then ok "start --wait ready: WAIT_FOR_READY"; else
        not_ok "start --wait ready: WAIT_FOR_READY ($(cat "$FAKE/start-wait") $(cat "$T/out"))"; fi
    if fctl start isolated --wait running >/dev/null 2>&1 && [ "$(cat "$FAKE/start-wait")" = WAIT_FOR_RUNNING ]; then
        ok "start --wait running: WAIT_FOR_RUNNING"; else not_ok "start --wait running ($(cat "$FAKE/start-wait"))"; fi

    # status: readiness (only while running), the sockets, the next restart.
    echo ready >"$FAKE/mode"
    fctl status isolated >"$T/out" 2>&1 || true
    SINCE=$(date -d @1700000000 '+%Y-%m-%d %H:%M:%S')
    if grep -qx "ready:           yes (since $SINCE)" "$T/out" &&
        grep -qx "console socket:  $FAKE/console.sock" "$T/out" &&
        grep -qx "cri socket:      /run/hydra/isolated/containerd.sock" "$T/out" &&
        grep -qx "next restart:    -" "$T/out"; then ok "status: ready, since when, the sockets"; else
        not_ok "status: ready, since when, the sockets ($(cat "$T/out"))"; fi
    J=$(fctl --json status isolated 2>&1) || true
    if [ "$(json ready <<<"$J")|$(json ready_since_unix_usec <<<"$J")|$(json ready_detail <<<"$J")|$(json console_socket <<<"$J")|$(json cri_socket <<<"$J")|$(json next_restart_unix_usec <<<"$J")" = \
        "True|1700000000000000|containerd v1.7.24|$FAKE/console.sock|/run/hydra/isolated/containerd.sock|0" ]; then
        ok "status --json: ready, ready_since_unix_usec, ready_detail, console_socket, cri_socket, next_restart_unix_usec"; else
        not_ok "status --json: the new fields ($J)"; fi
    echo not-ready >"$FAKE/mode"
    fctl status isolated >"$T/out" 2>&1 || true
    if grep -qx "ready:           no (connection refused by the guest)" "$T/out" && grep -qx "cri socket:      -" "$T/out"; then
        ok "status: not ready, with what the probe saw (one line)"; else not_ok "status: not ready ($(cat "$T/out"))"; fi
    echo crashed >"$FAKE/mode"
    fctl status isolated >"$T/out" 2>&1 || true
    NEXT=$(date -d @1700000123 '+%Y-%m-%d %H:%M:%S')
    if grep -qx "ready:           -" "$T/out" && grep -qx "next restart:    $NEXT" "$T/out" &&
        grep -qx "console socket:  -" "$T/out" && grep -qx "restarts:        2" "$T/out"; then
        ok "status: not running: ready '-', the next restart"; else not_ok "status: crashed ($(cat "$T/out"))"; fi
    J=$(fctl --json status isolated 2>&1) || true
    if [ "$(json next_restart_unix_usec <<<"$J")|$(json console_socket <<<"$J")" = "1700000123000000|null" ]; then
        ok "status --json: next_restart_unix_usec"; else not_ok "status --json: next_restart_unix_usec ($J)"; fi
    rm -f "$FAKE/mode"
    fctl list >"$T/out" 2>&1 || true
    if grep -Eq "^ROLE +STATE +READY +PID +UPTIME +RESTARTS +LAST EXIT +STARTS AFTER +FORWARDS$" "$T/out" &&
        grep -Eq "^host +stopped +- +- " "$T/out" && grep -Eq "^isolated +running +yes +4242 " "$T/out"; then
        ok "list: a READY column"; else not_ok "list: a READY column ($(cat "$T/out"))"; fi

    # logs: the stored log, byte for byte; --tail; -f until interrupted; a reader that goes away.
    if fctl logs isolated >"$T/log.out" 2>"$T/err" && cmp -s "$T/log.out" "$FAKE/console.log" && [ ! -s "$T/err" ]; then
        ok "logs: the console log, byte for byte"; else not_ok "logs: byte for byte ($(od -c "$T/log.out" | head -3) $(cat "$T/err"))"; fi
    if [ "$(json follow <"$FAKE/console-request.json")|$(json tail_bytes <"$FAKE/console-request.json")|$(json role <"$FAKE/console-request.json")" = "False|0|2" ]; then
        ok "logs: follow false, tail_bytes 0, the role"; else not_ok "logs: the request ($(cat "$FAKE/console-request.json"))"; fi
    if fctl logs isolated --tail 20 >"$T/log.out" 2>"$T/err" && cmp -s "$T/log.out" <(tail -c 20 "$FAKE/console.log") &&
        [ "$(json tail_bytes <"$FAKE/console-request.json")" = 20 ]; then ok "logs --tail 20"; else
        not_ok "logs --tail 20 ($(cat "$FAKE/console-request.json") $(cat "$T/err"))"; fi
    fctl logs host --tail 64K >/dev/null 2>&1 || true
    if [ "$(json tail_bytes <"$FAKE/console-request.json")|$(json role <"$FAKE/console-request.json")" = "65536|1" ]; then
        ok "logs --tail 64K"; else not_ok "logs --tail 64K ($(cat "$FAKE/console-request.json"))"; fi
    for sig in INT TERM; do
        # Not through fctl: $! must be hydractl itself, not a subshell around it.
        "$HYDRACTL" --socket "$FAKE/hydra.sock" logs -f isolated >"$T/log.out" 2>"$T/err" &
        L=$!
        sleep 1.5
        kill -"$sig" $L
        RC=0
        wait $L || RC=$?
        if [ $RC -eq 0 ] && [ ! -s "$T/err" ] && grep -q "follow 3" "$T/log.out" &&
            [ "$(json follow <"$FAKE/console-request.json")" = True ]; then
            ok "logs -f: the log, then what follows, until SIG$sig (exit 0)"; else
            not_ok "logs -f until SIG$sig (exit $RC; $(cat "$T/err"); $(tail -c 100 "$T/log.out" | od -c | head -3))"; fi
    done
    set +o pipefail
    fctl logs --follow isolated 2>"$T/err" | head -c 10 >/dev/null
    RC=${PIPESTATUS[0]}
    set -o pipefail
    if [ "$RC" -eq 0 ] && [ ! -s "$T/err" ]; then ok "logs -f | head: ends quietly, exit 0"; else
        not_ok "logs -f | head (exit $RC: $(cat "$T/err"))"; fi
    if fctl --timeout 1 logs -f isolated >"$T/log.out" 2>"$T/err" && [ ! -s "$T/err" ]; then
        ok "logs -f with the global --timeout: follows that long, exit 0"; else not_ok "logs -f --timeout ($(cat "$T/err"))"; fi

    # console: GetVm's console_socket, then console_attach().
    expect_fail "console of a VM without a console socket: exit 1" 1 \
        "^hydractl: VM 'isolated' has no console socket \(it is not running under this hydrad\)$" \
        -- --socket "$FAKE/hydra.sock" console isolated
    echo ready >"$FAKE/mode"
    if printf 'uname -a\n' | fctl console isolated --linger 1 >"$T/out" 2>"$T/err" &&
        grep -q "hello from the console" "$T/out" && grep -q "echo: uname -a" "$T/out"; then
        ok "console: piped input to the guest, its output back"; else
        not_ok "console: piped input ($(cat "$T/out") $(cat "$T/err"))"; fi
    rm -f "$FAKE/mode"

    # register: the password is hashed by hydractl; the registered hash is reused when it matches.
    printf '[guest]\npassword = registered password\n' >"$FAKE/same.ini"
    printf '[guest]\npassword = another password\n' >"$FAKE/other.ini"
    chmod 600 "$FAKE/same.ini" "$FAKE/other.ini"
    fctl register isolated --spec "$FAKE/same.ini" >/dev/null 2>"$T/err" || true
    if [ "$(json password_hash <"$FAKE/registered.json")" = "$(cat "$FAKE/stored-hash")" ] &&
        [ "$(json password <"$FAKE/registered.json")" = "" ]; then
        ok "register: the same password reuses the registered hash (idempotent), no cleartext sent"; else
        not_ok "register: the same password reuses the registered hash ($(cat "$FAKE/registered.json") $(cat "$T/err"))"; fi
    fctl register isolated --spec "$FAKE/other.ini" >/dev/null 2>"$T/err" || true
    H=$(json password_hash <"$FAKE/registered.json")
    if [[ $H == '$y$'* ]] && $PY -W ignore -c 'import crypt,sys; sys.exit(crypt.crypt(sys.argv[1], sys.argv[2]) != sys.argv[2])' \
        "another password" "$H" && [ "$(json password <"$FAKE/registered.json")" = "" ]; then
        ok "register: a new password, a new yescrypt hash"; else not_ok "register: a new password ($H)"; fi
    touch "$FAKE/not-registered"
    fctl register isolated --spec "$FAKE/same.ini" >/dev/null 2>"$T/err" || true
    H=$(json password_hash <"$FAKE/registered.json")
    if [[ $H == '$y$'* ]]; then ok "register: nothing registered yet, a new hash"; else not_ok "register: nothing registered ($H $(cat "$T/err"))"; fi
    rm -f "$FAKE/not-registered"
    if fctl register isolated --from-env --preset isolated >/dev/null 2>"$T/err" </dev/null &&
        [ "$(json password_hash <"$FAKE/registered.json")" = "$DEFAULT_HASH" ]; then
        ok "register --from-env sends the script's hash"; else not_ok "register --from-env ($(cat "$T/err"))"; fi
else
    echo "# skipped: the fake hydrad needs HYDRA_PYTHONPATH and python3-grpcio"
    SKIPPED=1
fi

echo "$PASS passed, $FAIL failed"
[ $FAIL -eq 0 ] || exit 1
# 77: CTest's SKIP_RETURN_CODE, so that a part not run shows as skipped, not passed.
[ -z "${SKIPPED:-}" ] || exit 77
