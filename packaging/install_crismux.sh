#!/bin/bash
# SPDX-License-Identifier: MIT
# install_crismux.sh: puts crismux (github.com/smarter-project/crismux, a CRI multiplexer) between k3s and its
# containerd on a k3s node, so that pods of runtime class "nelly" go to Hydra's isolated VM. packaging/README.md
# describes the verbs, the variables and the exit codes; `install_crismux.sh --help` prints them.
#
# install: k3s's own containerd as a unit of its own (containerd-k3s, with a copy of k3s's config.toml whose socket
# is moved aside), the crismux binary, its config.yaml (default -> that containerd, nelly -> NELLY_ENDPOINT) and its
# unit, and the k3s unit switched to crismux's socket; then daemon-reload, enable, restart. Everything is checked
# before anything is touched; each file is written beside its target and renamed; a failure puts back what the run
# changed; a second install changes nothing. remove undoes it (the k3s unit back byte for byte from the pristine
# copy install kept). status tells installed, absent and partial apart.
set -uo pipefail

PROG=install_crismux.sh
: "${DEBUG:=0}"
[[ $DEBUG =~ ^[0-9]+$ ]] || DEBUG=1
[ "$DEBUG" -gt 0 ] && set -x

# Whether the caller chose the nelly endpoint (status then checks config.yaml against it).
NELLY_CHOSEN=0
[ -n "${NELLY_ENDPOINT:-}${NELLY_HOSTNAME:-}${NELLY_PORT:-}" ] && NELLY_CHOSEN=1

# Files this script creates get 0644 (the executable: 0755).
umask 022

case ${HOSTTYPE:-} in
x86_64) default_arch=amd64 ;;
aarch64) default_arch=arm64 ;;
*) default_arch=${HOSTTYPE:-$(uname -m)} ;;
esac
: "${CRISMUX_ARCH:=$default_arch}"
: "${SYSTEMD_DIR:=/etc/systemd/system}"
: "${K3S_SERVICE_FILE:=$SYSTEMD_DIR/k3s.service}"
: "${K3S_DATA_DIR:=/var/lib/rancher/k3s}"
: "${K3S_SOCKET_DIR:=/run/k3s/containerd}"
: "${CRISMUX_SERVICE_FILE:=$SYSTEMD_DIR/crismux.service}"
: "${CRISMUX_CONFIG_DIR:=$K3S_DATA_DIR/agent/etc/crismux}"
: "${CRISMUX_CONFIG_FILE:=$CRISMUX_CONFIG_DIR/config.yaml}"
: "${CRISMUX_EXECUTABLE_FILE:=$K3S_DATA_DIR/data/current/bin/crismux}"
: "${CRISMUX_SOCKET_FILE:=$K3S_SOCKET_DIR/crismux.sock}"
: "${CRISMUX_VERSION:=v1.2.2}"
: "${CRISMUX_ARTIFACT_URL:=https://github.com/smarter-project/crismux/releases/download/$CRISMUX_VERSION/crismux-$CRISMUX_VERSION-linux-$CRISMUX_ARCH.tar.gz}"
: "${CRISMUX_ARTIFACT_LOCAL:=}"
: "${CRISMUX_SHA256:=}"
: "${CONTAINERD_SERVICE_NAME:=containerd-k3s}"
: "${CONTAINERD_SERVICE_FILE:=$SYSTEMD_DIR/$CONTAINERD_SERVICE_NAME.service}"
: "${CONTAINERD_K3S_EXECUTABLE:=$K3S_DATA_DIR/data/current/bin/containerd}"
: "${CONTAINERD_K3S_CONFIG:=$K3S_DATA_DIR/agent/etc/containerd/config.toml}"
: "${CONTAINERD_K3S_CRIS_CONFIG:=$K3S_DATA_DIR/agent/etc/containerd/config-crismux.toml}"
: "${CONTAINERD_SOCKET_FILE:=$K3S_SOCKET_DIR/containerd-crismux.sock}"
: "${NELLY_HOSTNAME:=localhost}"
: "${NELLY_PORT:=35000}"
: "${NELLY_ENDPOINT:=}"
: "${SYSTEMCTL:=systemctl}"
: "${DOWNLOADER:=}"

PATH_VARS=(SYSTEMD_DIR K3S_SERVICE_FILE K3S_DATA_DIR K3S_SOCKET_DIR CRISMUX_SERVICE_FILE CRISMUX_CONFIG_DIR
    CRISMUX_CONFIG_FILE CRISMUX_EXECUTABLE_FILE CRISMUX_SOCKET_FILE CONTAINERD_SERVICE_FILE
    CONTAINERD_K3S_EXECUTABLE CONTAINERD_K3S_CONFIG CONTAINERD_K3S_CRIS_CONFIG CONTAINERD_SOCKET_FILE)

usage() {
    cat <<EOF
Usage: $PROG install|remove|status [--json] | --help

Puts crismux between k3s and its containerd on a k3s node: k3s's containerd runs as $CONTAINERD_SERVICE_NAME.service,
crismux as crismux.service (runtime "default" -> that containerd, "nelly" -> NELLY_ENDPOINT), and k3s talks to
crismux (--container-runtime-endpoint).

  install   install (a second install changes nothing); all checks come before any change
  remove    undo install: the k3s unit restored byte for byte, what install created removed (alias: clean)
  status    installed (exit 0), absent (exit 3) or partial (exit 1, naming each piece); --json (alias: verify)

Variables (default):
  NELLY_ENDPOINT            tcp:HOST:PORT or unix:/ABSOLUTE/PATH; wins over the next two
  NELLY_HOSTNAME, NELLY_PORT  the tcp endpoint when NELLY_ENDPOINT is unset (localhost, 35000)
  CRISMUX_ARTIFACT_LOCAL    a crismux binary or .tar.gz on this machine; used if set, else CRISMUX_ARTIFACT_URL
  CRISMUX_ARTIFACT_URL      ($CRISMUX_ARTIFACT_URL)
                a .tar.gz holding crismux-\$CRISMUX_VERSION-linux-\$CRISMUX_ARCH, or a plain binary
  CRISMUX_VERSION, CRISMUX_ARCH  ($CRISMUX_VERSION, $CRISMUX_ARCH)
  CRISMUX_SHA256            sha256 of the artifact (download or local file); a mismatch installs nothing
  DOWNLOADER                wget or curl (the first installed)
  SYSTEMCTL                 the systemctl command ($SYSTEMCTL)
  SYSTEMD_DIR, K3S_SERVICE_FILE, K3S_DATA_DIR, K3S_SOCKET_DIR, CRISMUX_SERVICE_FILE, CRISMUX_CONFIG_DIR,
  CRISMUX_CONFIG_FILE, CRISMUX_EXECUTABLE_FILE, CRISMUX_SOCKET_FILE, CONTAINERD_SERVICE_NAME,
  CONTAINERD_SERVICE_FILE, CONTAINERD_K3S_EXECUTABLE, CONTAINERD_K3S_CONFIG, CONTAINERD_K3S_CRIS_CONFIG,
  CONTAINERD_SOCKET_FILE    where things are (the reference installer's defaults)
  DEBUG                     >0: trace (set -x)

Exit codes: 0 done / installed, 1 error (nothing changed) / partial, 2 usage or invalid variable, 3 absent.
EOF
}

# --- messages ---

say() { printf '%s: %s\n' "$PROG" "$*"; }
err() { printf '%s: error: %s\n' "$PROG" "$*" >&2; }
# A value from outside, printed so that it stays on one line.
q() { printf '%q' "$1"; }
usage_error() {
    err "$*"
    exit 2
}
die() {
    err "$*"
    rollback
    exit 1
}
# bad_setting VARIABLE WHY: a usage error naming the variable and its value (quoted to stay on one line).
bad_setting() {
    local v
    printf -v v '%q' "${!1}"
    usage_error "$1=$v $2"
}

# --- validation ---

# Paths go into unit files (where % and quotes mean something) and YAML: a conservative alphabet.
RE_PATH='^/[A-Za-z0-9._/+@,:=-]*$'
RE_HOST='^[A-Za-z0-9]([A-Za-z0-9.-]{0,251}[A-Za-z0-9])?$'
RE_IPV4='^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$'
RE_PORT='^[1-9][0-9]{0,4}$'

valid_path() { [[ $1 =~ $RE_PATH ]]; }

valid_host() {
    local h=$1 i
    [[ $h =~ $RE_HOST && $h != *..* ]] || return 1
    if [[ $h =~ ^[0-9.]+$ ]]; then
        [[ $h =~ $RE_IPV4 ]] || return 1
        for i in 1 2 3 4; do
            [ $((10#${BASH_REMATCH[i]})) -le 255 ] || return 1
        done
    fi
    return 0
}

valid_port() { [[ $1 =~ $RE_PORT ]] && [ "$1" -le 65535 ]; }

# parse_endpoint VALUE: sets NELLY to the endpoint as crismux's config.yaml spells it ("tcp:HOST:PORT",
# "unix:///PATH"), or sets WHY and returns 1.
parse_endpoint() {
    local ep=$1 rest host port path
    case $ep in
    tcp:*)
        rest=${ep#tcp:}
        if [[ $rest != *:* ]]; then
            WHY="no :PORT"
            return 1
        fi
        host=${rest%:*} port=${rest##*:}
        if ! valid_host "$host"; then
            printf -v WHY 'host %q is not a host name or IPv4 address' "$host"
            return 1
        fi
        if ! valid_port "$port"; then
            printf -v WHY 'port %q is not in 1-65535' "$port"
            return 1
        fi
        NELLY="tcp:$host:$port"
        ;;
    unix:*)
        path=${ep#unix:}
        [[ $path == ///* ]] && path=${path#//}
        if ! valid_path "$path" || [[ $path == */ ]]; then
            printf -v WHY '%q is not an absolute socket path of [A-Za-z0-9._/+@,:=-]' "$path"
            return 1
        fi
        NELLY="unix://$path"
        ;;
    *)
        WHY="not tcp:HOST:PORT or unix:/ABSOLUTE/PATH"
        return 1
        ;;
    esac
}

validate_settings() {
    local v
    for v in "${PATH_VARS[@]}"; do
        valid_path "${!v}" ||
            bad_setting "$v" "is not an absolute path of [A-Za-z0-9._/+@,:=-] (it goes into unit files and YAML)"
    done
    [[ $CONTAINERD_SERVICE_NAME =~ ^[A-Za-z0-9:_.@-]+$ ]] ||
        bad_setting CONTAINERD_SERVICE_NAME "is not a unit name"
    [[ $CONTAINERD_SERVICE_FILE == *.service && $CRISMUX_SERVICE_FILE == *.service && $K3S_SERVICE_FILE == *.service ]] ||
        usage_error "CONTAINERD_SERVICE_FILE, CRISMUX_SERVICE_FILE and K3S_SERVICE_FILE must end in .service"
    [[ $CRISMUX_VERSION =~ ^[A-Za-z0-9._+-]+$ ]] || bad_setting CRISMUX_VERSION "is not a version"
    [[ $CRISMUX_ARCH =~ ^[A-Za-z0-9._-]+$ ]] || bad_setting CRISMUX_ARCH "is not an architecture"
    [[ -z $CRISMUX_SHA256 || $CRISMUX_SHA256 =~ ^[0-9a-fA-F]{64}$ ]] ||
        bad_setting CRISMUX_SHA256 "is not 64 hex digits"
    [[ -n $CRISMUX_ARTIFACT_LOCAL || $CRISMUX_ARTIFACT_URL =~ ^https?://[^[:space:]\"\'\\]+$ ]] ||
        bad_setting CRISMUX_ARTIFACT_URL "is not an http(s) URL"
    [[ -z $DOWNLOADER || $DOWNLOADER == wget || $DOWNLOADER == curl ]] ||
        bad_setting DOWNLOADER "is not wget or curl"
    if [ -n "$NELLY_ENDPOINT" ]; then
        parse_endpoint "$NELLY_ENDPOINT" || bad_setting NELLY_ENDPOINT "is invalid: $WHY"
    else
        valid_host "$NELLY_HOSTNAME" ||
            bad_setting NELLY_HOSTNAME "is not a host name or IPv4 address"
        valid_port "$NELLY_PORT" || bad_setting NELLY_PORT "is not in 1-65535"
        NELLY="tcp:$NELLY_HOSTNAME:$NELLY_PORT"
    fi
    K3S_ORIG=$K3S_SERVICE_FILE.hydra-orig
    K3S_UNIT=${K3S_SERVICE_FILE##*/}
    CRISMUX_UNIT=${CRISMUX_SERVICE_FILE##*/}
    CONTAINERD_UNIT=${CONTAINERD_SERVICE_FILE##*/}
}

# --- files: read without subprocesses, written beside their target and renamed, with a journal to roll back ---

JOURNAL=() # undo steps "OP<TAB>A<TAB>B" (rm A, rmdir A, mv A B, ln A B); rollback runs them last first
BAKS=()    # hard links holding replaced contents; removed when the run's changes stay
TMPS=()    # temporary files; whichever still exists at exit is removed
ARMED=0
WORK=

# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local f
    for f in "${TMPS[@]}"; do
        [ ! -e "$f" ] || rm -f -- "$f"
    done
    [ -z "$WORK" ] || rm -rf -- "$WORK"
}
trap cleanup EXIT
trap 'err "interrupted"; rollback; exit 130' INT TERM HUP

undo() { JOURNAL+=("$1"$'\t'"$2"$'\t'"${3:-}"); }

rollback() {
    local i op a b ok=1
    [ "$ARMED" -eq 1 ] || return 0
    ARMED=0
    for ((i = ${#JOURNAL[@]} - 1; i >= 0; i--)); do
        IFS=$'\t' read -r op a b <<<"${JOURNAL[i]}"
        case $op in
        rm) rm -f -- "$a" ;;
        rmdir) rmdir -- "$a" ;;
        mv) mv -f -- "$a" "$b" ;;
        ln) ln -f -- "$a" "$b" ;;
        esac || ok=0
    done
    if [ "$ok" -eq 1 ]; then
        err "rolled back: every file is as it was before this run"
    else
        err "rollback incomplete: check the files named above"
    fi
}

# The run's changes stay.
commit() {
    [ "${#BAKS[@]}" -eq 0 ] || rm -f -- "${BAKS[@]}"
    JOURNAL=() BAKS=()
    ARMED=0
}

# slurp VAR FILE: VAR = the bytes of FILE (a text file: no NUL).
slurp() {
    printf -v "$1" '%s' ''
    [ -r "$2" ] || return 1
    IFS= read -r -d '' "$1" <"$2"
    return 0
}

# tmp_name PATH: TMP = a temporary name in PATH's directory.
tmp_name() {
    TMP=${1%/*}/.${1##*/}.hydra-new.$$
    TMPS+=("$TMP")
}

# keep_old PATH: PATH's current content stays reachable (a hard link beside it) until commit.
keep_old() {
    local bak=${1%/*}/.${1##*/}.hydra-bak.$$
    ln -f -- "$1" "$bak" || die "cannot keep a rollback link $bak of $1"
    BAKS+=("$bak")
    undo mv "$bak" "$1"
}

# replace TMP PATH: renames TMP over PATH.
replace() {
    if [ -e "$2" ]; then keep_old "$2"; else undo rm "$2"; fi
    mv -f -- "$1" "$2" || die "cannot rename $1 to $2"
}

# put_text TEXT PATH
put_text() {
    tmp_name "$2"
    printf '%s' "$1" >"$TMP" || die "cannot write $TMP"
    replace "$TMP" "$2"
}

# put_exe FILE PATH
put_exe() {
    tmp_name "$2"
    install -m 755 -T -- "$1" "$TMP" || die "cannot write $TMP"
    replace "$TMP" "$2"
}

# has_text PATH TEXT: PATH holds exactly TEXT.
has_text() {
    local cur
    [ -f "$1" ] && slurp cur "$1" && [ "$cur" = "$2" ]
}

# --- what install writes ---

gen_containerd_unit() {
    local bin=${CONTAINERD_K3S_EXECUTABLE%/*}
    IFS= read -r -d '' T_CUNIT <<END_UNIT
# Written by install_crismux.sh: k3s's containerd, run on its own so that crismux can stand in front of it.
[Unit]
Description=containerd of k3s, behind crismux
Documentation=https://github.com/smarter-project/crismux
Wants=network-online.target
After=network-online.target

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
Environment=PATH=$bin:$bin/aux:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ExecStartPre=-/sbin/modprobe overlay
ExecStart=$CONTAINERD_K3S_EXECUTABLE -c $CONTAINERD_K3S_CRIS_CONFIG
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
END_UNIT
    return 0
}

gen_crismux_unit() {
    IFS= read -r -d '' T_MUNIT <<END_UNIT
# Written by install_crismux.sh: crismux, the CRI multiplexer k3s talks to.
[Unit]
Description=crismux, the CRI multiplexer in front of k3s's containerd
Documentation=https://github.com/smarter-project/crismux
Wants=network-online.target $CONTAINERD_UNIT
After=network-online.target $CONTAINERD_UNIT

[Install]
WantedBy=multi-user.target

[Service]
Type=exec
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
ExecStart=$CRISMUX_EXECUTABLE_FILE -config $CRISMUX_CONFIG_FILE -socket $CRISMUX_SOCKET_FILE
Restart=always
RestartSec=5s
END_UNIT
    return 0
}

# gen_crismux_config ENDPOINT
gen_crismux_config() {
    IFS= read -r -d '' T_YAML <<END_YAML
# Written by install_crismux.sh. "default": k3s's containerd; "nelly": the runtime class of Hydra's isolated VM.
runtimes:
  default: "unix://$CONTAINERD_SOCKET_FILE"
  nelly: "$1"
END_YAML
    return 0
}

# gen_containerd_config: T_TOML = k3s's config.toml (K3S_TOML) with its socket moved to CONTAINERD_SOCKET_FILE.
gen_containerd_config() {
    slurp K3S_TOML "$CONTAINERD_K3S_CONFIG" || return 1
    T_TOML=${K3S_TOML//"$K3S_SOCKET_DIR/containerd.sock"/"$CONTAINERD_SOCKET_FILE"}
}

RE_EXECSTART='^ExecStart=.*[[:space:]]\\$'
RE_SUBCOMMAND='^[[:space:]]+(server|agent)[[:space:]]+\\$'

# edit_k3s_unit FILE: EDITED = FILE with crismux's socket as --container-runtime-endpoint (two argument lines right
# after the "server \" line of ExecStart, spelled as get.k3s.io spells arguments) and After=CRISMUX_UNIT (after
# After=network-online.target, else after [Unit]). Fails if FILE has no such lines.
edit_k3s_unit() {
    local line prev='' flag=0 after=0 anchor='[Unit]' all
    EDITED=
    slurp all "$1" || return 1
    [[ $'\n'$all == *$'\nAfter=network-online.target\n'* ]] && anchor=After=network-online.target
    while IFS= read -r line || [ -n "$line" ]; do
        EDITED+=$line$'\n'
        if [ "$after" -eq 0 ] && [ "$line" = "$anchor" ]; then
            EDITED+="After=$CRISMUX_UNIT"$'\n'
            after=1
        fi
        if [ "$flag" -eq 0 ] && [[ $prev =~ $RE_EXECSTART && $line =~ $RE_SUBCOMMAND ]]; then
            EDITED+=$'\t'"'--container-runtime-endpoint' \\"$'\n\t'"'$CRISMUX_SOCKET_FILE' \\"$'\n'
            flag=1
        fi
        prev=$line
    done <"$1"
    [ "$flag" -eq 1 ] && [ "$after" -eq 1 ]
}

# classify_k3s: K3S_STATE is one of
#   missing     no k3s unit: k3s is not installed
#   switched    the unit is exactly what install makes of the pristine copy
#   unswitched  no --container-runtime-endpoint, and a "server \" line to edit (K3S_EDITED: the edited unit)
#   noedit      no --container-runtime-endpoint, and nothing install can edit
#   foreign     --container-runtime-endpoint to something else, no pristine copy
#   ours-nocopy --container-runtime-endpoint to crismux's socket, but no pristine copy to restore
#   changed     a pristine copy, but the unit has a --container-runtime-endpoint install did not write
# K3S_COPY is 1 if the pristine copy exists; K3S_TEXT is the unit's content.
classify_k3s() {
    local re="--container-runtime-endpoint['\"]?[[:space:]=]*['\"]?([^'\"[:space:]]+)" flat
    K3S_COPY=0 K3S_EDITED='' K3S_FOREIGN_ENDPOINT='' K3S_TEXT=''
    [ -e "$K3S_ORIG" ] && K3S_COPY=1
    if [ ! -e "$K3S_SERVICE_FILE" ]; then
        K3S_STATE=missing
        return 0
    fi
    slurp K3S_TEXT "$K3S_SERVICE_FILE" || die "cannot read the k3s unit $K3S_SERVICE_FILE"
    if [ "$K3S_COPY" -eq 1 ] && edit_k3s_unit "$K3S_ORIG" && [ "$EDITED" = "$K3S_TEXT" ]; then
        K3S_STATE=switched
    elif [[ $K3S_TEXT == *--container-runtime-endpoint* ]]; then
        flat=${K3S_TEXT//$'\n'/ }
        flat=${flat//\\/ }
        [[ $flat =~ $re ]] && K3S_FOREIGN_ENDPOINT=${BASH_REMATCH[1]}
        if [ "$K3S_COPY" -eq 1 ]; then
            K3S_STATE=changed
        elif [ "${K3S_FOREIGN_ENDPOINT#unix://}" = "$CRISMUX_SOCKET_FILE" ]; then
            K3S_STATE='ours-nocopy'
        else
            K3S_STATE=foreign
        fi
    elif edit_k3s_unit "$K3S_SERVICE_FILE"; then
        K3S_STATE=unswitched K3S_EDITED=$EDITED
    else
        K3S_STATE=noedit
    fi
}

k3s_problem() {
    case $K3S_STATE in
    missing) printf 'k3s is not installed: %s not found' "$K3S_SERVICE_FILE" ;;
    foreign)
        printf "k3s unit %s was already edited by something else: it has --container-runtime-endpoint %s, not crismux's %s" \
            "$K3S_SERVICE_FILE" "$(q "$K3S_FOREIGN_ENDPOINT")" "$CRISMUX_SOCKET_FILE"
        ;;
    ours-nocopy)
        printf 'k3s unit %s already points at crismux (%s) but its pristine copy %s is missing: edited by something else, cannot be restored' \
            "$K3S_SERVICE_FILE" "$CRISMUX_SOCKET_FILE" "$K3S_ORIG"
        ;;
    changed) printf "k3s unit %s was changed since install: it is not %s with crismux's edit" "$K3S_SERVICE_FILE" "$K3S_ORIG" ;;
    noedit)
        printf 'k3s unit %s cannot be edited: no "server \\" (or "agent \\") line after ExecStart=... \\ (or no [Unit] section)' \
            "$K3S_SERVICE_FILE"
        ;;
    esac
}

# --- preflight helpers ---

# need_dir_writable DIR WHAT
need_dir_writable() {
    [ -d "$1" ] || die "directory $1 (for $2) does not exist"
    if ! { [ -w "$1" ] && [ -x "$1" ]; }; then
        die "directory $1 (for $2) is not writable"
    fi
}

# need_replaceable FILE WHAT: FILE can be created, replaced or removed.
need_replaceable() {
    need_dir_writable "${1%/*}" "$2"
    [ ! -e "$1" ] || [ -w "$1" ] || die "$1 ($2) is not writable"
}

# downloader: DL = wget or curl (DOWNLOADER, else the first installed).
downloader() {
    local d
    for d in ${DOWNLOADER:-wget curl}; do
        if command -v "$d" >/dev/null; then
            DL=$d
            return 0
        fi
    done
    return 1
}

wget_reason() {
    case $1 in
    3) echo "file I/O error" ;;
    4) echo "network failure" ;;
    5) echo "TLS verification failure" ;;
    6) echo "authentication failure" ;;
    7) echo "protocol error" ;;
    8) echo "the server answered with an error" ;;
    *) echo "wget failed" ;;
    esac
}

make_work() {
    [ -n "$WORK" ] && return 0
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/install_crismux.XXXXXX") || die "cannot create a temporary directory"
}

# fetch_artifact: BINARY = the crismux binary, from CRISMUX_ARTIFACT_LOCAL if set, else downloaded; checked against
# CRISMUX_SHA256 if set; unpacked if a .tar.gz.
fetch_artifact() {
    local src from name rc msg sum member
    if [ -n "$CRISMUX_ARTIFACT_LOCAL" ]; then
        src=$CRISMUX_ARTIFACT_LOCAL name=$src
        printf -v from 'CRISMUX_ARTIFACT_LOCAL %q' "$src"
        if ! { [ -f "$src" ] && [ -r "$src" ]; }; then
            die "$from is not a readable file"
        fi
    else
        name=${CRISMUX_ARTIFACT_URL%%[?#]*} from=$CRISMUX_ARTIFACT_URL
        downloader ||
            die "cannot download crismux from $from: ${DOWNLOADER:-neither wget nor curl} is not installed (or set CRISMUX_ARTIFACT_LOCAL)"
        make_work
        src=$WORK/download
        if [ "$DL" = wget ]; then
            wget -q --tries=2 --timeout=30 -O "$src" -- "$CRISMUX_ARTIFACT_URL" 2>"$WORK/dl.err"
            rc=$?
            msg=$(wget_reason "$rc")
        else
            curl -fsS --retry 1 --connect-timeout 30 -L -o "$src" -- "$CRISMUX_ARTIFACT_URL" 2>"$WORK/dl.err"
            rc=$?
            slurp msg "$WORK/dl.err"
            msg=${msg%$'\n'}
            msg=${msg##*$'\n'}
            msg=${msg#curl: }
        fi
        [ "$rc" -eq 0 ] || die "cannot download crismux from $from: $DL exit $rc (${msg:-failed})"
    fi
    if [ -n "$CRISMUX_SHA256" ]; then
        sum=$(sha256sum <"$src") || die "cannot read $from"
        sum=${sum%% *}
        [ "$sum" = "${CRISMUX_SHA256,,}" ] ||
            die "checksum mismatch for crismux from $from: sha256 is $sum, CRISMUX_SHA256 is ${CRISMUX_SHA256,,}"
    fi
    case $name in
    *.tar.gz | *.tgz)
        member=crismux-$CRISMUX_VERSION-linux-$CRISMUX_ARCH
        make_work
        if ! { mkdir "$WORK/x" && tar -xzf "$src" -C "$WORK/x" 2>/dev/null; }; then
            die "crismux from $from is not a readable .tar.gz"
        fi
        [ -f "$WORK/x/$member" ] || die "crismux from $from has no file $member (CRISMUX_VERSION, CRISMUX_ARCH)"
        BINARY=$WORK/x/$member
        ;;
    *) BINARY=$src ;;
    esac
    [ -s "$BINARY" ] || die "crismux from $from is empty"
}

# --- systemctl ---

declare -A UFS ACT SUB NDR
# query UNIT...: UFS, ACT, SUB and NDR [UNIT] (UnitFileState, ActiveState, SubState, NeedDaemonReload) from one
# `systemctl show` (one block of properties per unit, in order, blank lines between them).
query() {
    local out line i=1 u
    for u in "$@"; do
        UFS[$u]='' ACT[$u]='' SUB[$u]='' NDR[$u]=''
    done
    out=$("$SYSTEMCTL" show -p UnitFileState -p ActiveState -p SubState -p NeedDaemonReload "$@" 2>/dev/null) || return 0
    while IFS= read -r line; do
        u=${!i:-}
        case $line in
        '') i=$((i + 1)) ;;
        UnitFileState=*) UFS[$u]=${line#*=} ;;
        ActiveState=*) ACT[$u]=${line#*=} ;;
        SubState=*) SUB[$u]=${line#*=} ;;
        NeedDaemonReload=*) NDR[$u]=${line#*=} ;;
        esac
    done <<<"$out"
}

sctl() {
    "$SYSTEMCTL" "$@" || die "systemctl $* failed"
}

# --- verbs ---

do_install() {
    local f u changed=() units_changed=0 k3s_changed=0 reload=0 make_dir=0 restart_c=0 restart_m=0
    # Preflight: nothing below changes anything until ARMED=1.
    classify_k3s
    case $K3S_STATE in
    switched | unswitched) ;;
    *) die "$(k3s_problem)" ;;
    esac
    [ -f "$CONTAINERD_K3S_CONFIG" ] || die "k3s's containerd config $CONTAINERD_K3S_CONFIG not found (has k3s run once?)"
    gen_containerd_config || die "cannot read $CONTAINERD_K3S_CONFIG"
    [ "$T_TOML" != "$K3S_TOML" ] ||
        die "k3s's containerd config $CONTAINERD_K3S_CONFIG does not name $K3S_SOCKET_DIR/containerd.sock"
    [ -x "$CONTAINERD_K3S_EXECUTABLE" ] || die "k3s's containerd $CONTAINERD_K3S_EXECUTABLE not found"
    [ -d "$CRISMUX_CONFIG_DIR" ] || [ ! -e "$CRISMUX_CONFIG_DIR" ] || die "$CRISMUX_CONFIG_DIR is not a directory"
    fetch_artifact
    gen_containerd_unit
    gen_crismux_config "$NELLY"
    gen_crismux_unit

    # The plan: the files whose content is not already what install writes.
    local -A dst=([exe]=$CRISMUX_EXECUTABLE_FILE [yaml]=$CRISMUX_CONFIG_FILE [toml]=$CONTAINERD_K3S_CRIS_CONFIG
        [cunit]=$CONTAINERD_SERVICE_FILE [munit]=$CRISMUX_SERVICE_FILE)
    local -A text=([yaml]=$T_YAML [toml]=$T_TOML [cunit]=$T_CUNIT [munit]=$T_MUNIT)
    local -A what=([exe]="crismux executable" [yaml]="crismux config" [toml]="containerd-k3s config"
        [cunit]="containerd-k3s unit" [munit]="crismux unit")
    if ! { [ -f "$CRISMUX_EXECUTABLE_FILE" ] && [ -x "$CRISMUX_EXECUTABLE_FILE" ] &&
        cmp -s -- "$BINARY" "$CRISMUX_EXECUTABLE_FILE"; }; then
        changed+=(exe)
    fi
    for f in yaml toml cunit munit; do
        has_text "${dst[$f]}" "${text[$f]}" || changed+=("$f")
    done
    [ "$K3S_STATE" = unswitched ] && k3s_changed=1
    [ -d "$CRISMUX_CONFIG_DIR" ] || make_dir=1
    for f in "${changed[@]}"; do
        if [ "$make_dir" -eq 1 ] && [ "${dst[$f]%/*}" = "$CRISMUX_CONFIG_DIR" ]; then
            need_dir_writable "${CRISMUX_CONFIG_DIR%/*}" "${what[$f]}"
        else
            need_replaceable "${dst[$f]}" "${what[$f]}"
        fi
    done
    if [ "$k3s_changed" -eq 1 ]; then
        need_replaceable "$K3S_SERVICE_FILE" "k3s unit"
        need_replaceable "$K3S_ORIG" "pristine copy of the k3s unit"
    fi

    # Changes.
    ARMED=1
    if [ "${#changed[@]}" -gt 0 ] && [ "$make_dir" -eq 1 ]; then
        mkdir -- "$CRISMUX_CONFIG_DIR" || die "cannot create $CRISMUX_CONFIG_DIR"
        undo rmdir "$CRISMUX_CONFIG_DIR"
    fi
    for f in "${changed[@]}"; do
        if [ "$f" = exe ]; then
            put_exe "$BINARY" "${dst[$f]}"
        else
            put_text "${text[$f]}" "${dst[$f]}"
            [[ $f == *unit ]] && units_changed=1
        fi
        say "wrote ${what[$f]} ${dst[$f]}"
    done
    if [ "$k3s_changed" -eq 1 ]; then
        # The pristine copy is the original file itself (a hard link: bytes, mode, owner and times kept); the edited
        # unit is a new file (mode and owner copied) renamed over the unit's name.
        if [ "$K3S_COPY" -eq 0 ]; then
            ln -- "$K3S_SERVICE_FILE" "$K3S_ORIG" || die "cannot link $K3S_SERVICE_FILE to $K3S_ORIG"
            undo rm "$K3S_ORIG"
        elif ! has_text "$K3S_ORIG" "$K3S_TEXT"; then
            keep_old "$K3S_ORIG"
            ln -f -- "$K3S_SERVICE_FILE" "$K3S_ORIG" || die "cannot link $K3S_SERVICE_FILE to $K3S_ORIG"
        fi
        tmp_name "$K3S_SERVICE_FILE"
        cp -p -- "$K3S_SERVICE_FILE" "$TMP" || die "cannot write $TMP"
        printf '%s' "$K3S_EDITED" >"$TMP" || die "cannot write $TMP"
        replace "$TMP" "$K3S_SERVICE_FILE"
        say "switched k3s unit $K3S_SERVICE_FILE to crismux's socket $CRISMUX_SOCKET_FILE (pristine copy: $K3S_ORIG)"
        units_changed=1
    fi

    # systemd. A failed daemon-reload still rolls the files back; a later failure leaves them installed (install
    # again converges: it enables what is not, starts what does not run).
    if [ "$k3s_changed" -eq 0 ]; then
        query "$CONTAINERD_UNIT" "$CRISMUX_UNIT"
        [[ ${NDR[$CONTAINERD_UNIT]} != yes && ${NDR[$CRISMUX_UNIT]} != yes ]] || reload=1
    fi
    if [ "$units_changed" -eq 1 ] || [ "$reload" -eq 1 ]; then
        "$SYSTEMCTL" daemon-reload || die "systemctl daemon-reload failed"
    fi
    commit
    if [ "$k3s_changed" -eq 1 ]; then
        # systemctl stop returns once k3s is stopped (its job done); then k3s starts on crismux.
        sctl stop "$K3S_UNIT"
        sctl enable "$CONTAINERD_UNIT" "$CRISMUX_UNIT"
        sctl start "$CONTAINERD_UNIT" "$CRISMUX_UNIT" "$K3S_UNIT"
    else
        for f in "${changed[@]}"; do
            case $f in
            toml | cunit) restart_c=1 ;;
            *) restart_m=1 ;;
            esac
        done
        for u in "$CONTAINERD_UNIT" "$CRISMUX_UNIT"; do
            [ "${UFS[$u]}" = enabled ] || sctl enable "$u"
        done
        if [ "$restart_c" -eq 1 ]; then
            sctl restart "$CONTAINERD_UNIT"
        elif [ "${ACT[$CONTAINERD_UNIT]}" != active ]; then
            sctl start "$CONTAINERD_UNIT"
        fi
        if [ "$restart_m" -eq 1 ]; then
            sctl restart "$CRISMUX_UNIT"
        elif [ "${ACT[$CRISMUX_UNIT]}" != active ]; then
            sctl start "$CRISMUX_UNIT"
        fi
    fi
    if [ "${#changed[@]}" -eq 0 ] && [ "$k3s_changed" -eq 0 ]; then
        say "crismux is already installed (nelly -> $NELLY); nothing changed"
    else
        say "crismux installed (nelly -> $NELLY)"
    fi
}

# set_aside PATH: moves PATH to a name beside it (rollback moves it back, commit removes it).
set_aside() {
    local bak=${1%/*}/.${1##*/}.hydra-bak.$$
    mv -f -- "$1" "$bak" || die "cannot remove $1"
    BAKS+=("$bak")
    undo mv "$bak" "$1"
}

do_remove() {
    local f u restore=0 drop_copy=0 units=0 present=() enabled=() running=()
    classify_k3s
    case $K3S_STATE in
    changed | ours-nocopy) die "$(k3s_problem); nothing removed" ;;
    switched) restore=1 ;;
    *) [ "$K3S_COPY" -eq 0 ] || drop_copy=1 ;;
    esac
    for f in "$CRISMUX_EXECUTABLE_FILE" "$CRISMUX_CONFIG_FILE" "$CONTAINERD_K3S_CRIS_CONFIG" \
        "$CONTAINERD_SERVICE_FILE" "$CRISMUX_SERVICE_FILE"; do
        [ ! -e "$f" ] || present+=("$f")
    done
    if [ "${#present[@]}" -eq 0 ] && [ "$restore" -eq 0 ] && [ "$drop_copy" -eq 0 ]; then
        say "crismux is not installed: nothing to remove"
        return 0
    fi
    for f in "${present[@]}"; do
        need_replaceable "$f" "removal"
    done
    if [ "$restore" -eq 1 ] || [ "$drop_copy" -eq 1 ]; then
        need_replaceable "$K3S_ORIG" "pristine copy of the k3s unit"
    fi
    [ "$restore" -eq 0 ] || need_replaceable "$K3S_SERVICE_FILE" "k3s unit"

    # Stop and disable crismux and containerd-k3s while their unit files still exist.
    query "$CRISMUX_UNIT" "$CONTAINERD_UNIT"
    for u in "$CRISMUX_UNIT" "$CONTAINERD_UNIT"; do
        [ "${UFS[$u]}" != enabled ] || enabled+=("$u")
        case ${ACT[$u]} in
        active | activating | deactivating | reloading) running+=("$u") ;;
        esac
    done
    [ "${#enabled[@]}" -eq 0 ] || sctl disable "${enabled[@]}"
    [ "${#running[@]}" -eq 0 ] || sctl stop "${running[@]}"

    ARMED=1
    for f in "${present[@]}"; do
        set_aside "$f"
        say "removed $f"
        [[ $f != *.service ]] || units=1
    done
    if [ "$restore" -eq 1 ]; then
        keep_old "$K3S_SERVICE_FILE"
        mv -f -- "$K3S_ORIG" "$K3S_SERVICE_FILE" || die "cannot rename $K3S_ORIG to $K3S_SERVICE_FILE"
        undo ln "$K3S_SERVICE_FILE" "$K3S_ORIG"
        say "restored k3s unit $K3S_SERVICE_FILE from $K3S_ORIG"
        units=1
    elif [ "$drop_copy" -eq 1 ]; then
        set_aside "$K3S_ORIG"
        say "removed the left-over $K3S_ORIG (the k3s unit is not switched to crismux)"
    fi
    if [ "$units" -eq 1 ]; then
        "$SYSTEMCTL" daemon-reload || die "systemctl daemon-reload failed"
    fi
    commit
    # What crismux left: its socket; and the config directory once empty.
    [ ! -S "$CRISMUX_SOCKET_FILE" ] || rm -f -- "$CRISMUX_SOCKET_FILE"
    [ ! -d "$CRISMUX_CONFIG_DIR" ] || rmdir -- "$CRISMUX_CONFIG_DIR" 2>/dev/null
    [ "$restore" -eq 0 ] || sctl restart "$K3S_UNIT"
    say "crismux removed"
}

# --- status ---

PIECES=() # name|path|state|detail

piece() { PIECES+=("$1|$2|$3|$4"); }

# text_piece NAME PATH EXPECTED-TEXT
text_piece() {
    if [ ! -e "$2" ]; then
        piece "$1" "$2" missing ""
    elif ! has_text "$2" "$3"; then
        piece "$1" "$2" differs "not what install writes"
    else
        piece "$1" "$2" ok ""
    fi
}

json_str() {
    local s=$1
    s=${s//\\/\\\\}
    s=${s//\"/\\\"}
    s=${s//$'\n'/\\n}
    s=${s//$'\t'/\\t}
    printf '"%s"' "$s"
}

do_status() {
    local json=$1 p name path state detail ours=0 bad=() overall code yaml nelly_in_file='' u sep=''
    local re_nelly=$'\n''  nelly: "([^"'$'\n'']*)"'$'\n'
    classify_k3s
    case $K3S_STATE in
    switched) piece "k3s unit" "$K3S_SERVICE_FILE" ok "switched to $CRISMUX_SOCKET_FILE" ;;
    missing) piece "k3s unit" "$K3S_SERVICE_FILE" missing "k3s is not installed" ;;
    unswitched) piece "k3s unit" "$K3S_SERVICE_FILE" missing "not switched to crismux" ;;
    noedit) piece "k3s unit" "$K3S_SERVICE_FILE" missing "not switched to crismux, and no \"server \\\" line to edit" ;;
    foreign) piece "k3s unit" "$K3S_SERVICE_FILE" foreign "edited by something else: --container-runtime-endpoint $K3S_FOREIGN_ENDPOINT" ;;
    ours-nocopy) piece "k3s unit" "$K3S_SERVICE_FILE" foreign "points at crismux but has no pristine copy" ;;
    changed) piece "k3s unit" "$K3S_SERVICE_FILE" differs "changed since install (not the pristine copy with crismux's edit)" ;;
    esac
    if [ "$K3S_COPY" -eq 0 ]; then
        piece "pristine copy" "$K3S_ORIG" missing ""
    elif [ "$K3S_STATE" = switched ] || [ "$K3S_STATE" = changed ]; then
        piece "pristine copy" "$K3S_ORIG" ok ""
    else
        piece "pristine copy" "$K3S_ORIG" extra "left over: the k3s unit is not switched to crismux"
    fi
    if gen_containerd_config; then
        text_piece "containerd-k3s config" "$CONTAINERD_K3S_CRIS_CONFIG" "$T_TOML"
    elif [ -e "$CONTAINERD_K3S_CRIS_CONFIG" ]; then
        piece "containerd-k3s config" "$CONTAINERD_K3S_CRIS_CONFIG" differs "k3s's $CONTAINERD_K3S_CONFIG is missing"
    else
        piece "containerd-k3s config" "$CONTAINERD_K3S_CRIS_CONFIG" missing ""
    fi
    gen_containerd_unit
    text_piece "containerd-k3s unit" "$CONTAINERD_SERVICE_FILE" "$T_CUNIT"
    if [ ! -e "$CRISMUX_EXECUTABLE_FILE" ]; then
        piece "crismux executable" "$CRISMUX_EXECUTABLE_FILE" missing ""
    elif [ ! -f "$CRISMUX_EXECUTABLE_FILE" ] || [ ! -x "$CRISMUX_EXECUTABLE_FILE" ]; then
        piece "crismux executable" "$CRISMUX_EXECUTABLE_FILE" differs "not an executable file"
    else
        piece "crismux executable" "$CRISMUX_EXECUTABLE_FILE" ok ""
    fi
    # config.yaml: against the endpoint the caller chose, else against the (valid) endpoint the file names.
    if [ -e "$CRISMUX_CONFIG_FILE" ]; then
        slurp yaml "$CRISMUX_CONFIG_FILE"
        [[ $yaml =~ $re_nelly ]] && nelly_in_file=${BASH_REMATCH[1]}
        if [ "$NELLY_CHOSEN" -eq 1 ]; then
            gen_crismux_config "$NELLY"
        elif [ -n "$nelly_in_file" ] && parse_endpoint "$nelly_in_file" && [ "$NELLY" = "$nelly_in_file" ]; then
            gen_crismux_config "$nelly_in_file"
        else
            T_YAML=''
        fi
        if [ "$yaml" = "$T_YAML" ]; then
            piece "crismux config" "$CRISMUX_CONFIG_FILE" ok "nelly -> $nelly_in_file"
        else
            piece "crismux config" "$CRISMUX_CONFIG_FILE" differs "not what install writes (nelly -> ${nelly_in_file:-?})"
        fi
    else
        piece "crismux config" "$CRISMUX_CONFIG_FILE" missing ""
    fi
    gen_crismux_unit
    text_piece "crismux unit" "$CRISMUX_SERVICE_FILE" "$T_MUNIT"

    # installed: every piece ok. absent: none of install's pieces (a unit edited by something else is not ours).
    overall=installed
    for p in "${PIECES[@]}"; do
        IFS='|' read -r name path state detail <<<"$p"
        if [ "$state" != ok ]; then
            overall=partial
            bad+=("$name $state")
        fi
        [ "$state" = missing ] || [ "$K3S_STATE:$name" = "foreign:k3s unit" ] || ours=1
    done
    [ "$ours" -eq 1 ] || overall=absent
    case $overall in
    installed) code=0 ;;
    absent) code=3 ;;
    *) code=1 ;;
    esac
    query "$K3S_UNIT" "$CONTAINERD_UNIT" "$CRISMUX_UNIT"

    if [ "$json" -eq 1 ]; then
        printf '{"state":%s,"exit":%d,"pieces":[' "$(json_str "$overall")" "$code"
        for p in "${PIECES[@]}"; do
            IFS='|' read -r name path state detail <<<"$p"
            printf '%s{"name":%s,"path":%s,"state":%s,"detail":%s}' "$sep" "$(json_str "$name")" \
                "$(json_str "$path")" "$(json_str "$state")" "$(json_str "$detail")"
            sep=,
        done
        printf '],"units":['
        sep=''
        for u in "$K3S_UNIT" "$CONTAINERD_UNIT" "$CRISMUX_UNIT"; do
            printf '%s{"unit":%s,"UnitFileState":%s,"ActiveState":%s,"SubState":%s}' "$sep" "$(json_str "$u")" \
                "$(json_str "${UFS[$u]}")" "$(json_str "${ACT[$u]}")" "$(json_str "${SUB[$u]}")"
            sep=,
        done
        printf ']}\n'
        return "$code"
    fi
    case $overall in
    installed) echo "crismux is installed" ;;
    absent)
        case $K3S_STATE in
        missing) echo "crismux is not installed (k3s is not installed)" ;;
        foreign) echo "crismux is not installed (the k3s unit was edited by something else)" ;;
        *) echo "crismux is not installed" ;;
        esac
        ;;
    partial)
        local IFS=';'
        echo "crismux is partially installed:${bad[*]/#/ }"
        unset IFS
        ;;
    esac
    for p in "${PIECES[@]}"; do
        IFS='|' read -r name path state detail <<<"$p"
        printf '  %-8s %-22s %s%s\n' "$state" "$name" "$path" "${detail:+ ($detail)}"
    done
    for u in "$K3S_UNIT" "$CONTAINERD_UNIT" "$CRISMUX_UNIT"; do
        printf '  %s: %s, %s (%s)\n' "$u" "${UFS[$u]:-unknown}" "${ACT[$u]:-unknown}" "${SUB[$u]:-unknown}"
    done
    return "$code"
}

# --- main ---

verb='' json=0
for arg in "$@"; do
    case $arg in
    -h | --help | help)
        usage
        exit 0
        ;;
    --json) json=1 ;;
    install | remove | status | clean | verify)
        [ -z "$verb" ] || usage_error "one verb only (try --help)"
        case $arg in
        clean) verb=remove ;;
        verify) verb=status ;;
        *) verb=$arg ;;
        esac
        ;;
    *) usage_error "unknown argument $(q "$arg") (try --help)" ;;
    esac
done
[ -n "$verb" ] || usage_error "no verb: install, remove or status (try --help)"
[ "$json" -eq 0 ] || [ "$verb" = status ] || usage_error "--json goes with status only"
validate_settings
case $verb in
install) do_install ;;
remove) do_remove ;;
status)
    do_status "$json"
    exit $?
    ;;
esac
exit 0
